// The data directory format 2 on a real RocksDB in a temp dir: ids that say
// where their event is (no by_id entry), by_time runs (one entry per append
// time), and format-1 directories (an entry per event in both indexes)
// opened, read, swept and truncated.
#include <catch2/catch.hpp>

#include <atomic>
#include <map>

#include <nlohmann/json.hpp>
#include <rocksdb/db.h>

#include "persistence/event_log.hpp"
#include "persistence/ids.hpp"
#include "persistence/keys.hpp"
#include "tests/support/raw_rocksdb.hpp"
#include "tests/support/temp_dir.hpp"

using namespace nerve::persistence;

namespace {

std::atomic<std::int64_t> now_us{1'700'000'000'000'000};

options opts_at(const std::string& path) {
  options o;
  o.path = path;
  o.clock = [] { return now_us.load(); };
  return o;
}

std::unique_ptr<event_log> open_log(const std::string& path) {
  auto log = event_log::open(opts_at(path));
  REQUIRE(log);
  return std::move(*log);
}

new_event with_id(std::string id) {
  return {std::move(id), {}, "\"data\":1", {}, {}, false};
}

new_event without_id() {
  return {{}, {}, "\"data\":2", {}, {}, true};
}

/// {key: value} of one column family, read after the log is closed.
std::map<std::string, std::string> family(const std::string& path, const std::string& name) {
  nerve::test::raw_rocksdb raw{path, true};
  auto records = raw.records(name);
  return {records.begin(), records.end()};
}

/// scan_time's runs as (first, last) pairs.
std::vector<std::pair<std::uint64_t, std::uint64_t>> runs(const event_log& log, std::int64_t from,
                                                          std::int64_t to) {
  std::vector<std::pair<std::uint64_t, std::uint64_t>> out;
  auto n = log.scan_time(
    from, to,
    [&out](std::int64_t, std::uint32_t, std::uint32_t, std::uint64_t lo, std::uint64_t hi) {
      out.emplace_back(lo, hi);
      return true;
    });
  REQUIRE(n);
  return out;
}

using run_list = std::vector<std::pair<std::uint64_t, std::uint64_t>>;

} // namespace

TEST_CASE("a located id keeps the UUIDv7 shape and names its place", "[unit][persistence]") {
  const std::int64_t t = 1'700'000'000'123'456;
  auto id = located_uuid_v7(t, 262'143, 1023, (std::uint64_t{1} << 42) - 1);
  REQUIRE(id);
  CHECK(id->size() == 36);
  CHECK((*id)[14] == '7');
  CHECK(std::string{"89ab"}.find((*id)[19]) != std::string::npos);
  // The time bits are the append time's milliseconds, as in any UUIDv7.
  CHECK(id->substr(0, 13) == new_uuid_v7(t).substr(0, 13));
  auto at = locate_id(*id);
  REQUIRE(at);
  CHECK(at->topic_id == 262'143);
  CHECK(at->partition == 1023);
  CHECK(at->offset == (std::uint64_t{1} << 42) - 1);
  for (auto [tid, p, off] : {std::tuple<std::uint32_t, std::uint32_t, std::uint64_t>{0, 0, 0},
                             {1, 2, 3},
                             {77, 0, 123'456'789'012ULL}}) {
    auto a = locate_id(*located_uuid_v7(t, tid, p, off));
    REQUIRE(a);
    CHECK(std::tie(a->topic_id, a->partition, a->offset) == std::tie(tid, p, off));
  }
  // Places an id cannot say: the caller falls back to a random id and by_id.
  CHECK_FALSE(located_uuid_v7(t, 1U << 18, 0, 0));
  CHECK_FALSE(located_uuid_v7(t, 0, 1024, 0));
  CHECK_FALSE(located_uuid_v7(t, 0, 0, std::uint64_t{1} << 42));
  // Random ids never look located; other shapes are not located.
  for (int i = 0; i < 2000; ++i)
    CHECK_FALSE(locate_id(new_uuid_v7(t)));
  auto upper = *id;
  for (auto& c : upper)
    c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  CHECK_FALSE(locate_id(upper));
  CHECK_FALSE(locate_id("order-42"));
  CHECK_FALSE(locate_id(id->substr(0, 35)));
}

TEST_CASE("an event appended without an id is found by the id it got, with no by_id entry",
          "[unit][persistence]") {
  nerve::test::temp_dir dir;
  std::string first_id;
  {
    auto log = open_log(dir.sub("db"));
    auto t = *log->create_topic("orders", 3);
    auto other = *log->create_topic("other", 1);
    partition_writer w{*log, t, 2};
    auto r = w.append({without_id(), with_id("mine"), without_id()});
    REQUIRE(r);
    first_id = (*r)[0].id;
    auto at = locate_id(first_id);
    REQUIRE(at);
    CHECK(at->topic_id == t.id);
    CHECK(at->partition == 2);
    CHECK(at->offset == 0);
    CHECK(locate_id((*r)[2].id)->offset == 2);
    CHECK((*r)[0].json.find("\"id\":\"" + first_id + "\"") == 1);
    auto got = log->get_by_id(first_id);
    REQUIRE(got);
    REQUIRE(*got);
    CHECK(**got == (*r)[0].json);
    // Published again with that id: a duplicate here, a conflict elsewhere.
    auto again = w.append({with_id(first_id)});
    REQUIRE(again);
    CHECK((*again)[0].status == append_status::duplicate);
    CHECK((*again)[0].where.offset == 0);
    CHECK(w.next_offset() == 3);
    partition_writer ow{*log, other, 0};
    auto elsewhere = ow.append({with_id((*r)[2].id)});
    REQUIRE(elsewhere);
    CHECK((*elsewhere)[0].status == append_status::conflict);
    CHECK((*elsewhere)[0].topic == "orders");
    auto topics = log->topics_of({first_id, "mine", "nope", (*r)[2].id});
    REQUIRE(topics);
    CHECK((*topics)[0] == "orders");
    CHECK((*topics)[1] == "orders");
    CHECK_FALSE((*topics)[2]);
    CHECK((*topics)[3] == "orders");
    // An id of that shape naming a place whose event has another id.
    auto forged = *located_uuid_v7(now_us.load(), t.id, 2, 1);
    CHECK_FALSE(*log->get_by_id(forged));
    auto taken = w.append({with_id(forged)});
    REQUIRE(taken);
    CHECK((*taken)[0].status == append_status::appended);
    CHECK((*taken)[0].where.offset == 3);
    CHECK(*log->get_by_id(forged));
  }
  // Only the publishers' ids are in by_id.
  auto by_id = family(dir.sub("db"), "by_id");
  CHECK(by_id.size() == 2);
  CHECK(by_id.count("mine") == 1);
  CHECK(by_id.count(first_id) == 0);
  auto meta = family(dir.sub("db"), "meta");
  CHECK(meta["format"] == "2");
}

TEST_CASE("by_time holds one run per append time, exact for windows and truncation",
          "[unit][persistence]") {
  nerve::test::temp_dir dir;
  auto log = open_log(dir.sub("db"));
  auto t = *log->create_topic("runs", 1);
  const auto base = now_us.load();
  {
    partition_writer w{*log, t, 0};
    REQUIRE(w.begin_epoch(1));
    now_us = base + 10;
    REQUIRE(w.append({without_id(), without_id(), without_id()})); // 0-2
    now_us = base + 20;
    REQUIRE(w.append({without_id(), with_id("x")})); // 3-4
    // The clock did not move: the next batch continues the run.
    REQUIRE(w.append({without_id(), without_id()})); // 5-6
    now_us = base + 30;
    REQUIRE(w.append({without_id()})); // 7
    CHECK(runs(*log, 0, INT64_MAX) == run_list{{0, 2}, {3, 6}, {7, 7}});
    // Half-open windows by append time.
    CHECK(runs(*log, base + 10, base + 20) == run_list{{0, 2}});
    CHECK(runs(*log, base + 11, base + 31) == run_list{{3, 6}, {7, 7}});
    CHECK(runs(*log, base + 21, base + 30).empty());
  }
  {
    // Reopened: the run at the last time is found again and continued.
    partition_writer w{*log, t, 0};
    REQUIRE(w.append({without_id()})); // 8, still at base + 30
    CHECK(runs(*log, base + 30, base + 31) == run_list{{7, 8}});
    // A cut inside a run ends it before the cut.
    REQUIRE(w.truncate_to(5));
    CHECK(runs(*log, 0, INT64_MAX) == run_list{{0, 2}, {3, 4}});
    CHECK(*log->get_by_id("x"));
    REQUIRE(w.truncate_to(4));
    CHECK(runs(*log, 0, INT64_MAX) == run_list{{0, 2}, {3, 3}});
    CHECK_FALSE(*log->get_by_id("x"));
    now_us = base + 40;
    REQUIRE(w.append({with_id("y")})); // 4
    CHECK(runs(*log, 0, INT64_MAX) == run_list{{0, 2}, {3, 3}, {4, 4}});
  }
  // Retention takes whole runs, and by_id entries with them.
  auto n = log->sweep_before(base + 35, 100);
  REQUIRE(n);
  CHECK(*n == 4);
  CHECK(runs(*log, 0, INT64_MAX) == run_list{{4, 4}});
  CHECK(log->stats(t, 0).first_offset == 4);
  n = log->sweep_before(base + 41, 100);
  REQUIRE(n);
  CHECK(*n == 1);
  CHECK_FALSE(*log->get_by_id("y"));
  log.reset();
  CHECK(family(dir.sub("db"), "by_id").empty());
  CHECK(family(dir.sub("db"), "by_time").empty());
}

TEST_CASE("a format-1 directory opens, reads, sweeps and truncates its per-event entries",
          "[unit][persistence]") {
  nerve::test::temp_dir dir;
  const auto base = now_us.load();
  topic_info t;
  {
    auto log = open_log(dir.sub("db"));
    t = *log->create_topic("old", 1);
  }
  // What format 1 wrote for events 0-2 (ids "a", "b", "c"; a random
  // UUIDv7 for the last), one time each: an entry per event in by_time (its
  // value the id) and in by_id, and no format record.
  std::vector<std::string> ids{"a", "b", new_uuid_v7(base)};
  {
    nerve::test::raw_rocksdb raw{dir.sub("db"), false};
    rocksdb::WriteBatch batch;
    for (std::uint64_t o = 0; o < 3; ++o) {
      const auto time = base + 100 + static_cast<std::int64_t>(o);
      std::string value;
      keys::put_u64(value, static_cast<std::uint64_t>(time));
      value += R"({"id":")" + ids[o] + R"(","topic":"old","partition":0,"offset":)"
               + std::to_string(o) + R"(,"data":1})";
      batch.Put(raw.family("events"), keys::event_key(t.id, 0, o), value);
      batch.Put(raw.family("by_time"), keys::time_key(time, t.id, 0, o), ids[o]);
      batch.Put(raw.family("by_id"), ids[o], keys::id_value(t.id, 0, o, time));
    }
    std::string head;
    keys::put_u64(head, 3);
    batch.Put(raw.family("meta"), "head/" + keys::partition_prefix(t.id, 0), head);
    batch.Delete(raw.family("meta"), "format");
    REQUIRE(raw.db().Write(rocksdb::WriteOptions{}, &batch).ok());
  }
  {
    auto log = open_log(dir.sub("db"));
    CHECK(runs(*log, 0, INT64_MAX) == run_list{{0, 0}, {1, 1}, {2, 2}});
    for (const auto& id : ids)
      CHECK(*log->get_by_id(id));
    partition_writer w{*log, t, 0};
    CHECK(w.next_offset() == 3);
    now_us = base + 200;
    auto r = w.append({with_id(ids[2]), without_id(), without_id()});
    REQUIRE(r);
    CHECK((*r)[0].status == append_status::duplicate);
    CHECK(runs(*log, 0, INT64_MAX) == run_list{{0, 0}, {1, 1}, {2, 2}, {3, 4}});
    REQUIRE(w.truncate_to(2));
    CHECK(runs(*log, 0, INT64_MAX) == run_list{{0, 0}, {1, 1}});
    CHECK_FALSE(*log->get_by_id(ids[2]));
    auto n = log->sweep_before(base + 101, 100);
    REQUIRE(n);
    CHECK(*n == 1);
    CHECK_FALSE(*log->get_by_id("a"));
    CHECK(*log->get_by_id("b"));
  }
  auto by_id = family(dir.sub("db"), "by_id");
  CHECK(by_id.size() == 1);
  CHECK(by_id.count("b") == 1);
  CHECK(family(dir.sub("db"), "meta")["format"] == "2");
}

TEST_CASE("a data directory of a newer format is refused, and left as it is",
          "[unit][persistence]") {
  nerve::test::temp_dir dir;
  open_log(dir.sub("db"));
  {
    nerve::test::raw_rocksdb raw{dir.sub("db"), false};
    REQUIRE(raw.db().Put(rocksdb::WriteOptions{}, raw.family("meta"), "format", "3").ok());
  }
  auto log = event_log::open(opts_at(dir.sub("db")));
  REQUIRE_FALSE(log);
  CHECK(log.error().message.find("has format 3") != std::string::npos);
  CHECK(family(dir.sub("db"), "meta")["format"] == "3");
}

TEST_CASE("ids and keys that need escapes are stored as valid JSON", "[unit][persistence]") {
  nerve::test::temp_dir dir;
  auto log = open_log(dir.sub("db"));
  auto t = *log->create_topic("esc", 1);
  partition_writer w{*log, t, 0};
  new_event e = with_id("q\"b\\s\tc");
  e.key = "k\"\n\xc3\xa9/";
  auto r = w.append({e, without_id()});
  REQUIRE(r);
  for (const auto& one : *r) {
    auto j = nlohmann::json::parse(one.json, nullptr, false);
    REQUIRE_FALSE(j.is_discarded());
    CHECK(j["id"] == one.id);
    CHECK(j["topic"] == "esc");
    CHECK(j["offset"] == one.where.offset);
  }
  auto first = nlohmann::json::parse((*r)[0].json);
  CHECK(first["key"] == "k\"\n\xc3\xa9/");
  CHECK((*r)[0].json.find(R"("key":"k\"\n)") != std::string::npos);
  CHECK((*r)[1].json.find("\"key\"") == std::string::npos);
  CHECK(*log->get_by_id("q\"b\\s\tc") == (*r)[0].json);
}
