// The keyspace (hashes with expiry, Redis 7 semantics) on a real RocksDB in
// a temp dir, with a virtual clock: commands, streams beside hashes, expiry
// and the sweep, SCAN's cursor, durability, reopening and old directories.
#include <catch2/catch.hpp>

#include <algorithm>
#include <atomic>
#include <limits>
#include <map>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <rocksdb/db.h>

#include "persistence/event_log.hpp"
#include "persistence/keyspace.hpp"
#include "tests/support/raw_rocksdb.hpp"
#include "tests/support/temp_dir.hpp"

using namespace nerve::persistence;
using namespace std::string_literals;

namespace {

constexpr std::int64_t start_us = 1'700'000'000'000'000;
constexpr std::int64_t max_i64 = std::numeric_limits<std::int64_t>::max();
constexpr std::int64_t min_i64 = std::numeric_limits<std::int64_t>::min();

/// A log and its keyspace in a temp dir, on a clock the test moves, with a
/// set of stream names the test fills.
struct fixture {
  nerve::test::temp_dir dir;
  std::atomic<std::int64_t> now_us{start_us};
  std::mutex streams_mutex;
  std::set<std::string> streams;
  keyspace_limits limits;
  nerve::config::fsync_policy fsync = nerve::config::fsync_policy::always;
  std::unique_ptr<event_log> log;
  std::unique_ptr<keyspace> ks;

  fixture() { open(); }
  ~fixture() { close(); }

  void open() {
    options o;
    o.path = dir.sub("db");
    o.fsync = fsync;
    o.clock = [this] { return now_us.load(); };
    auto opened = event_log::open(o);
    REQUIRE(opened);
    log = std::move(*opened);
    keyspace_options ko;
    ko.streams.contains = [this](std::string_view name) {
      std::lock_guard<std::mutex> guard{streams_mutex};
      return streams.count(std::string{name}) > 0;
    };
    ko.streams.names = [this] {
      std::lock_guard<std::mutex> guard{streams_mutex};
      return std::vector<std::string>(streams.begin(), streams.end());
    };
    ko.limits = limits;
    ks = std::make_unique<keyspace>(*log, ko);
  }
  void close() {
    ks.reset();
    log.reset();
  }
  void reopen() {
    close();
    open();
  }
  void advance_ms(std::int64_t ms) { now_us += ms * 1000; }
  void add_stream(const std::string& name) {
    std::lock_guard<std::mutex> guard{streams_mutex};
    streams.insert(name);
  }
};

template <class T>
T ok(tl::expected<T, error> r) {
  if (!r)
    FAIL("unexpected error: " << r.error().message);
  return std::move(*r);
}

template <class T>
std::string err(const tl::expected<T, error>& r) {
  REQUIRE_FALSE(r);
  return r.error().message;
}

const std::string wrongtype = "WRONGTYPE Operation against a key holding the wrong kind of value";

std::vector<std::string> sorted(std::vector<std::string> v) {
  std::sort(v.begin(), v.end());
  return v;
}

/// Every key a full SCAN returns, in order, from cursor 0 until 0.
std::vector<std::string> scan_all(keyspace& ks, scan_request r) {
  std::vector<std::string> out;
  r.cursor = 0;
  for (int calls = 0; calls < 100000; ++calls) {
    auto page = ok(ks.scan(r));
    out.insert(out.end(), page.keys.begin(), page.keys.end());
    if (page.cursor == 0)
      return out;
    r.cursor = page.cursor;
  }
  FAIL("SCAN never ended");
  return out;
}

/// Every record of the kv family of a closed log.
std::vector<std::pair<std::string, std::string>> kv_records(const std::string& path) {
  nerve::test::raw_rocksdb raw{path, true};
  return raw.records("kv");
}

} // namespace

TEST_CASE("HSET counts new fields and HGET reads them back", "[unit][persistence][keyspace]") {
  fixture f;
  auto& ks = *f.ks;
  CHECK(ok(ks.hset("h", {{"a", "1"}, {"b", "2"}, {"a", "3"}})) == 2); // a given twice: new once
  CHECK(ok(ks.hget("h", "a")) == "3");                                // its last value
  CHECK(ok(ks.hget("h", "b")) == "2");
  CHECK(ok(ks.hset("h", {{"b", "20"}, {"c", "30"}})) == 1);
  CHECK(ok(ks.hget("h", "b")) == "20");
  CHECK_FALSE(ok(ks.hget("h", "nope")));
  CHECK_FALSE(ok(ks.hget("missing", "a")));
  CHECK(err(ks.hset("none", {})) == "ERR wrong number of arguments for 'hset' command");
  CHECK(ok(ks.exists({"none"})) == 0);
  CHECK(ok(ks.hlen("h")) == 3);
  CHECK(ok(ks.hlen("missing")) == 0);

  // Binary-safe: NUL bytes, the empty key, field and value.
  const auto bin_key = "k\0ey"s;
  const auto bin_field = "\0\xff"s;
  CHECK(ok(ks.hset(bin_key, {{bin_field, "v\0v"s}, {"", ""}})) == 2);
  CHECK(ok(ks.hget(bin_key, bin_field)) == "v\0v"s);
  CHECK(ok(ks.hget(bin_key, "")) == "");
  CHECK_FALSE(ok(ks.hget("k", bin_field)));
  CHECK(ok(ks.hset("", {{"f", "empty key"}})) == 1);
  CHECK(ok(ks.hget("", "f")) == "empty key");

  // A key that prefixes another keeps its own fields: "a" + field "bc" is
  // not "ab" + field "c".
  CHECK(ok(ks.hset("a", {{"bc", "1"}})) == 1);
  CHECK(ok(ks.hset("ab", {{"c", "2"}})) == 1);
  CHECK(ok(ks.hgetall("a")) == std::vector<field_value>{{"bc", "1"}});
  CHECK(ok(ks.hgetall("ab")) == std::vector<field_value>{{"c", "2"}});
}

TEST_CASE("HGETALL answers pairs in field order, none for a missing key",
          "[unit][persistence][keyspace]") {
  fixture f;
  auto& ks = *f.ks;
  CHECK(ok(ks.hgetall("missing")).empty());
  REQUIRE(ok(ks.hset("h", {{"z", "26"}, {"a", "1"}, {"m", "13"}})) == 3);
  CHECK(ok(ks.hgetall("h")) == std::vector<field_value>{{"a", "1"}, {"m", "13"}, {"z", "26"}});
}

TEST_CASE("HINCRBY adds to integers and refuses what Redis refuses",
          "[unit][persistence][keyspace]") {
  fixture f;
  auto& ks = *f.ks;
  CHECK(ok(ks.hincrby("c", "n", 5)) == 5); // a missing key and field count as 0
  CHECK(ok(ks.hincrby("c", "n", -7)) == -2);
  CHECK(ok(ks.hget("c", "n")) == "-2");
  CHECK(ok(ks.hlen("c")) == 1);
  CHECK(ok(ks.hincrby("c", "m", 1)) == 1);
  CHECK(ok(ks.hlen("c")) == 2);

  for (auto bad : {" 1", "1 ", "+1", "007", "-0", "1.5", "", "abc", "9223372036854775808"}) {
    INFO("stored value '" << bad << "'");
    REQUIRE(ok(ks.hset("c", {{"s", bad}})) >= 0);
    CHECK(err(ks.hincrby("c", "s", 1)) == "ERR hash value is not an integer");
    CHECK(ok(ks.hget("c", "s")) == bad); // unchanged
  }

  REQUIRE(ok(ks.hset("c", {{"big", std::to_string(max_i64)}, {"small", std::to_string(min_i64)}}))
          == 2);
  CHECK(err(ks.hincrby("c", "big", 1)) == "ERR increment or decrement would overflow");
  CHECK(ok(ks.hincrby("c", "big", 0)) == max_i64);
  CHECK(ok(ks.hincrby("c", "big", min_i64)) == -1);
  CHECK(err(ks.hincrby("c", "small", -1)) == "ERR increment or decrement would overflow");
  CHECK(ok(ks.hincrby("c", "small", max_i64)) == -1);
  CHECK(ok(ks.hset("c", {{"m", "-9223372036854775808"}})) == 0);
  CHECK(ok(ks.hincrby("c", "m", 1)) == min_i64 + 1);

  // The increment argument, as the listener parses it.
  CHECK(ok(parse_integer("42")) == 42);
  CHECK(ok(parse_integer("-9223372036854775808")) == min_i64);
  CHECK(ok(parse_integer("0")) == 0);
  for (auto bad : {"+1", " 1", "01", "-0", "1e3", "", "-", "9223372036854775808",
                   "-9223372036854775809", "123456789012345678901"}) {
    INFO("argument '" << bad << "'");
    CHECK(err(parse_integer(bad)) == "ERR value is not an integer or out of range");
  }
}

TEST_CASE("HDEL counts removed fields and deletes the key with its last field",
          "[unit][persistence][keyspace]") {
  fixture f;
  auto& ks = *f.ks;
  CHECK(ok(ks.hdel("missing", {"a"})) == 0);
  REQUIRE(ok(ks.hset("h", {{"a", "1"}, {"b", "2"}, {"c", "3"}})) == 3);
  REQUIRE(ok(ks.expire("h", 100)));
  CHECK(ok(ks.hdel("h", {"a", "a", "nope"})) == 1); // a field named twice goes once
  CHECK(ok(ks.hlen("h")) == 2);
  CHECK(ok(ks.ttl("h")) == 100); // the expiry stays
  CHECK(ok(ks.hdel("h", {"b", "c"})) == 2);
  CHECK(ok(ks.exists({"h"})) == 0);
  CHECK(ok(ks.type("h")) == key_type::none);
  CHECK(ok(ks.ttl("h")) == -2);
  CHECK(ok(ks.hset("h", {{"x", "1"}})) == 1); // a new key: no expiry, no old fields
  CHECK(ok(ks.ttl("h")) == -1);
  CHECK(ok(ks.hgetall("h")) == std::vector<field_value>{{"x", "1"}});
  REQUIRE(ok(ks.hdel("h", {"x"})) == 1);
  f.close();
  CHECK(kv_records(f.dir.sub("db")).empty()); // metadata, fields and expiry entry all gone
}

TEST_CASE("EXISTS, TYPE and DEL count keys as Redis does", "[unit][persistence][keyspace]") {
  fixture f;
  auto& ks = *f.ks;
  REQUIRE(ok(ks.hset("a", {{"f", "1"}})) == 1);
  REQUIRE(ok(ks.hset("b", {{"f", "1"}, {"g", "2"}})) == 2);
  CHECK(ok(ks.exists({"a", "a", "b", "nope"})) == 3); // a key named twice counts twice
  CHECK(ok(ks.exists({})) == 0);
  CHECK(ok(ks.type("a")) == key_type::hash);
  CHECK(ok(ks.type("nope")) == key_type::none);
  CHECK(type_name(key_type::hash) == "hash");
  CHECK(type_name(key_type::none) == "none");
  CHECK(type_name(key_type::stream) == "stream");
  CHECK(ok(ks.del({"a", "a", "nope"})) == 1); // deleted once
  CHECK(ok(ks.del({"a", "b"})) == 1);
  CHECK(ok(ks.exists({"a", "b"})) == 0);
  CHECK(ok(ks.hgetall("b")).empty());
  CHECK(ok(ks.hset("b", {{"new", "1"}})) == 1); // no field of the deleted key comes back
  CHECK(ok(ks.hgetall("b")) == std::vector<field_value>{{"new", "1"}});
}

TEST_CASE("streams are listed and typed, and hash commands on them are WRONGTYPE",
          "[unit][persistence][keyspace]") {
  fixture f;
  auto& ks = *f.ks;
  f.add_stream("orders");
  REQUIRE(ok(ks.hset("retries", {{"1-0", "2"}})) == 1);
  CHECK(err(ks.hset("orders", {{"f", "v"}})) == wrongtype);
  CHECK(err(ks.hget("orders", "f")) == wrongtype);
  CHECK(err(ks.hgetall("orders")) == wrongtype);
  CHECK(err(ks.hincrby("orders", "f", 1)) == wrongtype);
  CHECK(err(ks.hdel("orders", {"f"})) == wrongtype);
  CHECK(err(ks.hlen("orders")) == wrongtype);
  CHECK(ks.hset("orders", {{"f", "v"}}).error().code == errc::invalid);
  CHECK(ok(ks.exists({"orders", "retries", "orders"})) == 3);
  CHECK(ok(ks.type("orders")) == key_type::stream);
  CHECK(ok(ks.ttl("orders")) == -1);
  CHECK_FALSE(ok(ks.persist("orders")));
  // Topics go by retention: DEL and EXPIRE of one are refused, and a DEL
  // that names one deletes nothing.
  CHECK(err(ks.del({"retries", "orders"})).rfind("ERR DEL refused: 'orders' is a stream", 0) == 0);
  CHECK(ok(ks.exists({"retries"})) == 1);
  CHECK(err(ks.expire("orders", 10)).rfind("ERR EXPIRE refused: 'orders' is a stream", 0) == 0);
  CHECK(sorted(ok(ks.keys("*"))) == std::vector<std::string>{"orders", "retries"});
  CHECK(ok(ks.keys("ord*")) == std::vector<std::string>{"orders"});

  // A hash made before a topic of its name is shadowed by the stream: one
  // key, a stream.
  REQUIRE(ok(ks.hset("later", {{"f", "v"}})) == 1);
  f.add_stream("later");
  CHECK(ok(ks.type("later")) == key_type::stream);
  CHECK(ok(ks.exists({"later"})) == 1);
  CHECK(sorted(ok(ks.keys("*"))) == std::vector<std::string>{"later", "orders", "retries"});
  scan_request all;
  all.count = 1;
  CHECK(sorted(scan_all(ks, all)) == std::vector<std::string>{"later", "orders", "retries"});
  all.type = "STREAM";
  CHECK(sorted(scan_all(ks, all)) == std::vector<std::string>{"later", "orders"});
  all.type = "hash";
  CHECK(scan_all(ks, all) == std::vector<std::string>{"retries"});
  all.type = "string";
  CHECK(scan_all(ks, all).empty());
}

TEST_CASE("topics_as_streams names a log's topics", "[unit][persistence][keyspace]") {
  fixture f;
  REQUIRE(f.log->create_topic("orders.created", 1));
  auto catalog = topics_as_streams(*f.log);
  CHECK(catalog.contains("orders.created"));
  CHECK_FALSE(catalog.contains("orders"));
  CHECK(catalog.names() == std::vector<std::string>{"orders.created"});
}

TEST_CASE("EXPIRE sets expiries under NX, XX, GT and LT as Redis does",
          "[unit][persistence][keyspace]") {
  fixture f;
  auto& ks = *f.ks;
  auto flags = [](const std::vector<std::string>& words) { return ok(parse_expire_flags(words)); };
  CHECK_FALSE(ok(ks.expire("missing", 10)));
  REQUIRE(ok(ks.hset("k", {{"f", "v"}})) == 1);

  CHECK_FALSE(ok(ks.expire("k", 10, flags({"XX"})))); // no expiry yet
  CHECK_FALSE(ok(ks.expire("k", 10, flags({"gt"})))); // none counts as infinite
  CHECK(ok(ks.expire("k", 100, flags({"lt"}))));      // anything is below infinite
  CHECK(ok(ks.ttl("k")) == 100);
  CHECK_FALSE(ok(ks.expire("k", 50, flags({"nx"}))));
  CHECK_FALSE(ok(ks.expire("k", 50, flags({"gt"}))));
  CHECK_FALSE(ok(ks.expire("k", 100, flags({"gt"})))); // equal is not greater
  CHECK(ok(ks.expire("k", 200, flags({"xx", "gt"}))));
  CHECK(ok(ks.ttl("k")) == 200);
  CHECK_FALSE(ok(ks.expire("k", 300, flags({"lt"}))));
  CHECK(ok(ks.expire("k", 30, flags({"LT", "xx"}))));
  CHECK(ok(ks.ttl("k")) == 30);
  CHECK(ok(ks.expire("k", 40)));
  CHECK(ok(ks.ttl("k")) == 40);
  CHECK_FALSE(ok(ks.expire("k", -1, flags({"gt"})))); // refused: the key stays
  CHECK(ok(ks.exists({"k"})) == 1);

  // A time not after now deletes the key and answers 1.
  CHECK(ok(ks.expire("k", 0)));
  CHECK(ok(ks.exists({"k"})) == 0);
  REQUIRE(ok(ks.hset("k", {{"f", "v"}})) == 1);
  CHECK(ok(ks.expire("k", -5)));
  CHECK(ok(ks.exists({"k"})) == 0);
  CHECK(ok(ks.hgetall("k")).empty());

  // Times that milliseconds cannot hold, even for a missing key.
  const auto invalid = "ERR invalid expire time in 'expire' command";
  CHECK(err(ks.expire("missing", max_i64)) == invalid);
  CHECK(err(ks.expire("missing", max_i64 / 1000)) == invalid); // * 1000 + now overflows
  CHECK(err(ks.expire("missing", min_i64 / 1000 - 1)) == invalid);

  CHECK(err(parse_expire_flags({"foo"})) == "ERR Unsupported option foo");
  CHECK(err(parse_expire_flags({"nx", "xx"}))
        == "ERR NX and XX, GT or LT options at the same time are not compatible");
  CHECK(err(parse_expire_flags({"NX", "gt"}))
        == "ERR NX and XX, GT or LT options at the same time are not compatible");
  CHECK(err(parse_expire_flags({"gt", "lt"}))
        == "ERR GT and LT options at the same time are not compatible");
  CHECK(flags({}).nx == false);
}

TEST_CASE("TTL rounds as Redis does and expired keys are never visible",
          "[unit][persistence][keyspace]") {
  fixture f;
  auto& ks = *f.ks;
  CHECK(ok(ks.ttl("missing")) == -2);
  REQUIRE(ok(ks.hset("k", {{"f", "v"}, {"g", "w"}})) == 2);
  CHECK(ok(ks.ttl("k")) == -1);
  REQUIRE(ok(ks.expire("k", 10)));
  CHECK(ok(ks.ttl("k")) == 10);
  f.advance_ms(499); // 9.501 s left
  CHECK(ok(ks.ttl("k")) == 10);
  f.advance_ms(2); // 9.499 s left
  CHECK(ok(ks.ttl("k")) == 9);
  CHECK(ok(ks.hset("k", {{"h", "x"}})) == 1); // writes keep the expiry
  CHECK(ok(ks.ttl("k")) == 9);
  f.advance_ms(9499); // the expiry itself: still there, as in Redis
  CHECK(ok(ks.ttl("k")) == 0);
  CHECK(ok(ks.hget("k", "f")) == "v");

  f.advance_ms(1); // past it
  CHECK(ok(ks.ttl("k")) == -2);
  CHECK_FALSE(ok(ks.hget("k", "f")));
  CHECK(ok(ks.hgetall("k")).empty());
  CHECK(ok(ks.hlen("k")) == 0);
  CHECK(ok(ks.exists({"k"})) == 0);
  CHECK(ok(ks.type("k")) == key_type::none);
  CHECK(ok(ks.keys("*")).empty());
  CHECK(scan_all(ks, {}).empty());
  CHECK_FALSE(ok(ks.persist("k")));
  CHECK_FALSE(ok(ks.expire("k", 100)));
  CHECK(ok(ks.hdel("k", {"f"})) == 0);
  CHECK(ok(ks.del({"k"})) == 0);

  // A write to an expired key starts a new one: none of the old fields,
  // no expiry.
  REQUIRE(ok(ks.hset("e", {{"a", "1"}, {"b", "2"}})) == 2);
  REQUIRE(ok(ks.expire("e", 1)));
  f.advance_ms(1001);
  CHECK(ok(ks.hincrby("e", "a", 5)) == 5);
  CHECK(ok(ks.hgetall("e")) == std::vector<field_value>{{"a", "5"}});
  CHECK(ok(ks.ttl("e")) == -1);
  REQUIRE(ok(ks.expire("e", 1)));
  f.advance_ms(1001);
  CHECK(ok(ks.hset("e", {{"c", "3"}})) == 1);
  CHECK(ok(ks.hgetall("e")) == std::vector<field_value>{{"c", "3"}});
}

TEST_CASE("PERSIST removes an expiry", "[unit][persistence][keyspace]") {
  fixture f;
  auto& ks = *f.ks;
  CHECK_FALSE(ok(ks.persist("missing")));
  REQUIRE(ok(ks.hset("k", {{"f", "v"}})) == 1);
  CHECK_FALSE(ok(ks.persist("k")));
  REQUIRE(ok(ks.expire("k", 5)));
  CHECK(ok(ks.persist("k")));
  CHECK(ok(ks.ttl("k")) == -1);
  f.advance_ms(10'000);
  CHECK(ok(ks.exists({"k"})) == 1);
  CHECK(ok(ks.sweep(1000)).keys == 0); // its expiry entry went with the expiry
}

TEST_CASE("SCAN returns every key once, across changes and a restart",
          "[unit][persistence][keyspace]") {
  fixture f;
  f.fsync = nerve::config::fsync_policy::never; // 600 keys, no fsync each
  f.reopen();
  std::set<std::string> all;
  for (int i = 0; i < 500; ++i) {
    const auto key = "key:" + std::to_string(i);
    REQUIRE(ok(f.ks->hset(key, {{"f", "v"}})) == 1);
    all.insert(key);
  }
  for (int i = 0; i < 20; ++i) {
    f.add_stream("stream:" + std::to_string(i));
    all.insert("stream:" + std::to_string(i));
  }

  SECTION("a full scan, COUNT a hint") {
    for (std::size_t count : {1, 7, 10, 1000}) {
      scan_request r;
      r.count = count;
      auto got = scan_all(*f.ks, r);
      CHECK(std::set<std::string>(got.begin(), got.end()) == all);
      CHECK(got.size() == all.size()); // exactly once each
    }
    scan_request one;
    one.count = 10;
    auto page = ok(f.ks->scan(one));
    CHECK(page.keys.size() == 10); // FNV positions of these names do not collide
    CHECK(page.cursor != 0);
  }

  SECTION("keys there from start to end come back once, whatever changes meanwhile") {
    scan_request r;
    r.count = 13;
    std::vector<std::string> got;
    int round = 0;
    do {
      auto page = ok(f.ks->scan(r));
      got.insert(got.end(), page.keys.begin(), page.keys.end());
      r.cursor = page.cursor;
      // Meanwhile: new keys, and deleted ones (never the stable ones).
      REQUIRE(ok(f.ks->hset("new:" + std::to_string(round), {{"f", "v"}})) == 1);
      if (round < 100)
        REQUIRE(ok(f.ks->del({"key:" + std::to_string(400 + round)})) == 1);
      if (round == 10)
        f.reopen(); // the cursor is a position, valid after a restart
      ++round;
    } while (r.cursor != 0);
    std::map<std::string, int> seen;
    for (auto& k : got)
      ++seen[k];
    for (auto& [k, n] : seen)
      CHECK(n == 1);
    for (int i = 0; i < 400; ++i)
      CHECK(seen.count("key:" + std::to_string(i)) == 1);
    for (int i = 0; i < 20; ++i)
      CHECK(seen.count("stream:" + std::to_string(i)) == 1);
  }

  SECTION("MATCH and TYPE filter what the visited keys show") {
    scan_request r;
    r.match = "key:1?";
    r.count = 5;
    auto got = sorted(scan_all(*f.ks, r));
    std::vector<std::string> want;
    for (int i = 10; i < 20; ++i)
      want.push_back("key:" + std::to_string(i));
    CHECK(got == want);
    r.match = "*";
    r.type = "Stream";
    CHECK(scan_all(*f.ks, r).size() == 20);
    r.type = "list";
    CHECK(scan_all(*f.ks, r).empty());
  }

  SECTION("expired keys are skipped") {
    for (int i = 0; i < 250; ++i)
      REQUIRE(ok(f.ks->expire("key:" + std::to_string(i), 1)));
    f.advance_ms(1001);
    scan_request r;
    r.count = 50;
    CHECK(scan_all(*f.ks, r).size() == 250 + 20);
    CHECK(ok(f.ks->keys("key:*")).size() == 250);
  }
}

TEST_CASE("parse_scan reads SCAN's arguments with Redis' errors", "[unit][persistence][keyspace]") {
  auto r = ok(parse_scan({"123", "MATCH", "a*", "count", "50", "TYPE", "hash"}));
  CHECK(r.cursor == 123);
  CHECK(r.match == "a*");
  CHECK(r.count == 50);
  CHECK(r.type == "hash");
  auto d = ok(parse_scan({"0"}));
  CHECK(d.count == 10);
  CHECK_FALSE(d.match);
  CHECK_FALSE(d.type);
  CHECK(ok(parse_scan({"18446744073709551615"})).cursor == 18446744073709551615ULL);
  CHECK(ok(parse_scan({"-1"})).cursor == 18446744073709551615ULL); // strtoul wraps, as in Redis
  CHECK(ok(parse_scan({"0", "match", "a", "match", "b"})).match == "b"); // the last one
  for (auto bad : {"abc", " 1", "1x", "18446744073709551616"}) {
    INFO("cursor '" << bad << "'");
    CHECK(err(parse_scan({bad})) == "ERR invalid cursor");
  }
  CHECK(err(parse_scan({"0", "count", "0"})) == "ERR syntax error");
  CHECK(err(parse_scan({"0", "count", "-5"})) == "ERR syntax error");
  CHECK(err(parse_scan({"0", "count", "x"})) == "ERR value is not an integer or out of range");
  CHECK(err(parse_scan({"0", "match"})) == "ERR syntax error");
  CHECK(err(parse_scan({"0", "foo", "bar"})) == "ERR syntax error");
  CHECK(err(parse_scan({})) == "ERR wrong number of arguments for 'scan' command");
}

TEST_CASE("the sweep deletes expired keys within its budget", "[unit][persistence][keyspace]") {
  fixture f;
  f.fsync = nerve::config::fsync_policy::never;
  f.reopen();
  auto& ks = *f.ks;
  for (int i = 0; i < 40; ++i) {
    const auto key = "k" + std::to_string(i);
    REQUIRE(ok(ks.hset(key, {{"a", "1"}, {"b", "2"}})) == 2);
    if (i < 30)
      REQUIRE(ok(ks.expire(key, 10 + i % 5)));
  }
  REQUIRE(ok(ks.expire("k0", 100))); // moved later: its first expiry entry went
  CHECK(ok(ks.sweep(1000)).keys == 0);
  f.advance_ms(15'000);          // k1..k29 expired
  auto first = ok(ks.sweep(20)); // a key is 4 records: metadata, 2 fields, expiry entry
  CHECK(first.keys == 5);
  CHECK(first.records == 20);
  CHECK(first.more);
  std::size_t keys = first.keys;
  for (int calls = 0; calls < 100; ++calls) {
    auto next = ok(ks.sweep(20));
    keys += next.keys;
    if (!next.more)
      break;
  }
  CHECK(keys == 29);
  CHECK_FALSE(ok(ks.sweep(20)).more);
  CHECK(ok(ks.exists({"k0"})) == 1);
  CHECK(ok(ks.keys("*")).size() == 11);
  f.close();
  // What is left on disk: 11 keys of 3 records, and k0's expiry entry.
  CHECK(kv_records(f.dir.sub("db")).size() == 11 * 3 + 1);
}

TEST_CASE("keys, fields and expiries survive a reopen", "[unit][persistence][keyspace]") {
  fixture f;
  REQUIRE(ok(f.ks->hset("kept", {{"a", "1"}, {"b", "2"}})) == 2);
  REQUIRE(ok(f.ks->hset("timed", {{"a", "1"}})) == 1);
  REQUIRE(ok(f.ks->expire("timed", 60)));
  REQUIRE(ok(f.ks->hincrby("kept", "n", 41)) == 41);
  f.reopen();
  CHECK(ok(f.ks->hgetall("kept")) == std::vector<field_value>{{"a", "1"}, {"b", "2"}, {"n", "41"}});
  CHECK(ok(f.ks->hlen("kept")) == 3);
  CHECK(ok(f.ks->ttl("timed")) == 60);
  f.advance_ms(60'001);
  f.reopen();
  CHECK(ok(f.ks->exists({"timed", "kept"})) == 1);
  CHECK(ok(f.ks->sweep(100)).keys == 1);
}

TEST_CASE("a data directory made before the keyspace opens and takes keys",
          "[unit][persistence][keyspace]") {
  fixture f;
  auto topic = f.log->create_topic("orders", 1);
  REQUIRE(topic);
  {
    partition_writer w{*f.log, *topic, 0};
    REQUIRE(w.append({{"e1", "", "\"data\":1", {}, {}, false}}));
  }
  const auto path = f.dir.sub("db");
  f.close();
  {
    // As an older nerve left it: no kv family.
    nerve::test::raw_rocksdb raw{path, false};
    REQUIRE(raw.db().DropColumnFamily(raw.family("kv")).ok());
  }
  std::vector<std::string> families;
  REQUIRE(rocksdb::DB::ListColumnFamilies(rocksdb::DBOptions{}, path, &families).ok());
  REQUIRE(std::count(families.begin(), families.end(), "kv") == 0);
  f.open();
  CHECK(f.log->read(*topic, 0, 0, 10)->size() == 1);
  CHECK(ok(f.ks->hset("k", {{"f", "v"}})) == 1);
  f.reopen();
  CHECK(ok(f.ks->hget("k", "f")) == "v");
}

TEST_CASE("keys, fields, values and fields per key are bounded", "[unit][persistence][keyspace]") {
  fixture f;
  f.limits.key_bytes_max = 8;
  f.limits.field_bytes_max = 4;
  f.limits.value_bytes_max = 16;
  f.limits.fields_per_key_max = 3;
  f.reopen();
  auto& ks = *f.ks;
  CHECK(err(ks.hset("123456789", {{"f", "v"}})).rfind("ERR key is 9 bytes", 0) == 0);
  CHECK(err(ks.hset("k", {{"12345", "v"}})).rfind("ERR field is 5 bytes", 0) == 0);
  CHECK(err(ks.hset("k", {{"f", std::string(17, 'v')}})).rfind("ERR value is 17 bytes", 0) == 0);
  CHECK(err(ks.hincrby("k", "12345", 1)).rfind("ERR field is 5 bytes", 0) == 0);
  CHECK(ok(ks.hset("k", {{"a", std::string(16, 'v')}, {"b", ""}, {"c", ""}})) == 3);
  CHECK(err(ks.hset("k", {{"d", "1"}})).rfind("ERR the hash would hold 4 fields", 0) == 0);
  CHECK(err(ks.hincrby("k", "d", 1)).rfind("ERR the hash would hold 4 fields", 0) == 0);
  CHECK(ok(ks.hset("k", {{"a", "1"}, {"b", "2"}})) == 0); // overwriting adds none
  CHECK(ok(ks.hlen("k")) == 3);
  CHECK(ok(ks.exists({"123456789"})) == 0); // reads of longer keys just find nothing
}

TEST_CASE("concurrent HINCRBY and HSET lose no update", "[unit][persistence][keyspace]") {
  fixture f;
  auto& ks = *f.ks;
  constexpr int threads = 4;
  constexpr int each = 50;
  std::vector<std::thread> workers;
  std::atomic<int> failures{0};
  std::atomic<std::int64_t> new_fields{0};
  for (int t = 0; t < threads; ++t)
    workers.emplace_back([&, t] {
      for (int i = 0; i < each; ++i) {
        if (!ks.hincrby("counter", "n", 1))
          ++failures;
        // Every thread sets the same fields: each is new exactly once.
        auto added = ks.hset("set", {{"f" + std::to_string(i), std::to_string(t)}});
        if (!added)
          ++failures;
        else
          new_fields += *added;
      }
    });
  for (auto& w : workers)
    w.join();
  CHECK(failures == 0);
  CHECK(ok(ks.hget("counter", "n")) == std::to_string(threads * each));
  CHECK(new_fields == each);
  CHECK(ok(ks.hlen("set")) == each);
}

TEST_CASE("a write is answered after the WAL sync that holds it", "[unit][persistence][keyspace]") {
  nerve::test::temp_dir dir;
  std::atomic<int> syncs{0};
  std::atomic<bool> fail_sync{false};
  options o;
  o.path = dir.sub("db");
  o.fsync = nerve::config::fsync_policy::always;
  o.observe_io = [&](io_op op, std::chrono::nanoseconds) {
    if (op == io_op::sync)
      ++syncs;
  };
  o.on_fault = [&](fault_point p, const fault_context&) {
    return p == fault_point::before_sync && fail_sync ? fault_action::fail : fault_action::proceed;
  };
  auto log = event_log::open(o);
  REQUIRE(log);
  keyspace ks{**log};
  const int before = syncs;
  REQUIRE(ok(ks.hset("k", {{"f", "v"}})) == 1);
  CHECK(syncs > before);
  const int after_write = syncs;
  CHECK(ok(ks.hget("k", "f")) == "v"); // nothing unsynced: a read does not wait
  CHECK(syncs == after_write);

  fail_sync = true;
  auto failed = ks.hset("k", {{"g", "v"}});
  REQUIRE_FALSE(failed);
  CHECK(failed.error().code == errc::io_error);
  CHECK(failed.error().message.rfind("ERR storage: ", 0) == 0);
  fail_sync = false;
  CHECK(ok(ks.hincrby("k", "n", 1)) == 1);
}

TEST_CASE("HSET rate under fsync always (prints HSET/s; run by hand)", "[.][bench]") {
  fixture f;
  for (int threads : {1, 4, 16}) {
    constexpr auto run_for = std::chrono::seconds{2};
    std::atomic<std::int64_t> done{0};
    std::atomic<bool> stop{false};
    std::vector<std::thread> workers;
    const auto started = std::chrono::steady_clock::now();
    for (int t = 0; t < threads; ++t)
      workers.emplace_back([&, t] {
        for (std::int64_t i = 0; !stop; ++i)
          if (f.ks->hset("retries:" + std::to_string(t), {{std::to_string(i % 100), "1"}}))
            ++done;
      });
    std::this_thread::sleep_for(run_for);
    stop = true;
    for (auto& w : workers)
      w.join();
    const std::chrono::duration<double> took = std::chrono::steady_clock::now() - started;
    WARN(threads << " threads: " << static_cast<std::int64_t>(done / took.count()) << " HSET/s");
  }
}
