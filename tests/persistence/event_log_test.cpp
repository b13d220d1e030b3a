// The RocksDB event log on a real database in a temp dir: offsets, order,
// idempotency, recovery, retention and the probe.
#include <catch2/catch.hpp>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <thread>

#include <nlohmann/json.hpp>
#include <rocksdb/write_batch.h>

#include "persistence/delivery_store.hpp"
#include "persistence/event_log.hpp"
#include "persistence/ids.hpp"
#include "persistence/keys.hpp"
#include "tests/support/temp_dir.hpp"

using namespace nerve::persistence;
using json = nlohmann::json;

namespace {

std::atomic<std::int64_t> fake_now{1'700'000'000'000'000};

options opts_for(const nerve::test::temp_dir& dir) {
  options o;
  o.path = dir.sub("db");
  o.clock = [] { return fake_now.load(); };
  return o;
}

new_event ev(std::string id, std::string key = "", const std::string& data = "1") {
  return {std::move(id), std::move(key), "\"data\":" + data, {}, {}};
}

} // namespace

TEST_CASE("keys iterate in numeric order", "[unit][persistence]") {
  CHECK(keys::event_key(1, 0, 255) < keys::event_key(1, 0, 256));
  CHECK(keys::event_key(1, 0, ~0ULL) < keys::event_key(1, 1, 0));
  CHECK(keys::event_key(1, 3, 0) < keys::event_key(2, 0, 0));
  CHECK(keys::time_key(999, 9, 9, 9) < keys::time_key(1000, 0, 0, 0));
  CHECK(keys::get_u64(keys::event_key(7, 8, 123456789012ULL), 8) == 123456789012ULL);
  CHECK(keys::get_u32(keys::event_key(7, 8, 0), 4) == 8);
}

TEST_CASE("appends get dense offsets and read back as stored", "[unit][persistence]") {
  nerve::test::temp_dir dir;
  auto log = event_log::open(opts_for(dir));
  REQUIRE(log);
  auto topic = (*log)->create_topic("orders.created", 2);
  REQUIRE(topic);
  partition_writer w{**log, *topic, 1};
  auto r = w.append({ev("a", "k1", "{\"n\":1}"), ev("b"), ev("c", "", "\"x\"")});
  REQUIRE(r);
  REQUIRE(r->size() == 3);
  for (std::uint64_t i = 0; i < 3; ++i) {
    CHECK((*r)[i].status == append_status::appended);
    CHECK((*r)[i].where.offset == i);
    CHECK((*r)[i].where.partition == 1);
  }
  auto more = w.append({ev("d")});
  REQUIRE(more);
  CHECK((*more)[0].where.offset == 3);
  CHECK(w.next_offset() == 4);

  auto events = (*log)->read(*topic, 1, 0, 100);
  REQUIRE(events);
  REQUIRE(events->size() == 4);
  auto first = json::parse((*events)[0]);
  CHECK(first["id"] == "a");
  CHECK(first["topic"] == "orders.created");
  CHECK(first["partition"] == 1);
  CHECK(first["offset"] == 0);
  CHECK(first["key"] == "k1");
  CHECK(first["data"]["n"] == 1);
  CHECK(first["time"] == format_time_us(fake_now.load()));

  auto page = (*log)->read(*topic, 1, 2, 1);
  REQUIRE(page);
  REQUIRE(page->size() == 1);
  CHECK(json::parse((*page)[0])["id"] == "c");
  CHECK((*log)->read(*topic, 0, 0, 10)->empty());

  auto by_id = (*log)->get_by_id("d");
  REQUIRE(by_id);
  REQUIRE(*by_id);
  CHECK(json::parse(**by_id)["offset"] == 3);
  CHECK_FALSE(*(*log)->get_by_id("nope"));
}

TEST_CASE("a staged append stores the same text whether its results keep it or not",
          "[unit][persistence]") {
  nerve::test::temp_dir dir;
  auto log = event_log::open(opts_for(dir));
  REQUIRE(log);
  auto topic = (*log)->create_topic("lane", 2);
  REQUIRE(topic);
  partition_writer kept{**log, *topic, 0}, bare{**log, *topic, 1};
  // A key that needs escapes, one without data, one with a plain key.
  const std::vector<new_event> events{ev("e1", "k\"1", "{\"n\":[1,2]}"),
                                      new_event{"e2", "", "", {}, {}}, ev("e3", "k3", "\"x\"")};
  std::vector<append_result> results[2];
  int side = 0;
  for (auto* w : {&kept, &bare}) {
    auto mine = events;
    for (auto& e : mine)
      e.id += w == &kept ? "-kept" : "-bare";
    rocksdb::WriteBatch batch;
    auto staged = w->stage_append(mine, batch, w == &kept);
    REQUIRE(staged);
    REQUIRE((*log)->write_batch(batch));
    results[side++] = w->settle(*staged, true);
  }
  for (auto& r : results[1])
    CHECK(r.json.empty()); // not kept
  auto a = (*log)->read(*topic, 0, 0, 10), b = (*log)->read(*topic, 1, 0, 10);
  REQUIRE(a);
  REQUIRE(b);
  REQUIRE(a->size() == 3);
  REQUIRE(b->size() == 3);
  for (std::size_t i = 0; i < 3; ++i) {
    CHECK((*a)[i] == results[0][i].json); // kept: as stored
    auto x = json::parse((*a)[i]), y = json::parse((*b)[i]);
    CHECK(x["id"] == events[i].id + "-kept");
    CHECK(y["id"] == events[i].id + "-bare");
    CHECK(y["partition"] == 1);
    x.erase("id");
    y.erase("id");
    x.erase("partition");
    y.erase("partition");
    CHECK(x == y);
  }
  CHECK(json::parse((*b)[0])["key"] == "k\"1");
  CHECK(json::parse((*b)[1]).count("data") == 0);
  CHECK((*log)->get_by_id("e3-bare"));
}

TEST_CASE("an id appends once: duplicates return the first coordinates", "[unit][persistence]") {
  nerve::test::temp_dir dir;
  auto log = event_log::open(opts_for(dir));
  REQUIRE(log);
  auto orders = *(*log)->create_topic("orders", 2);
  auto other = *(*log)->create_topic("other", 1);
  partition_writer p0{**log, orders, 0};
  partition_writer p1{**log, orders, 1};
  partition_writer o0{**log, other, 0};

  auto r = p0.append({ev("x"), ev("x"), ev("y")});
  REQUIRE(r);
  CHECK((*r)[0].status == append_status::appended);
  CHECK((*r)[1].status == append_status::duplicate);
  CHECK((*r)[1].where.offset == 0);
  CHECK((*r)[2].where.offset == 1); // the duplicate took no offset

  auto again = p1.append({ev("x")});
  REQUIRE(again);
  CHECK((*again)[0].status == append_status::duplicate);
  CHECK((*again)[0].where.partition == 0);
  CHECK(p1.next_offset() == 0);

  auto elsewhere = o0.append({ev("x")});
  REQUIRE(elsewhere);
  CHECK((*elsewhere)[0].status == append_status::conflict);
  CHECK((*elsewhere)[0].topic == "orders");
  CHECK(o0.next_offset() == 0);
}

TEST_CASE("concurrent appends of one id on two partitions store it once", "[unit][persistence]") {
  nerve::test::temp_dir dir;
  auto log = event_log::open(opts_for(dir));
  REQUIRE(log);
  auto t = *(*log)->create_topic("race", 2);
  partition_writer a{**log, t, 0};
  partition_writer b{**log, t, 1};
  constexpr int n = 300;
  std::atomic<int> appended{0};
  auto run = [&](partition_writer& w) {
    for (int i = 0; i < n; ++i) {
      auto r = w.append({ev("id-" + std::to_string(i))});
      REQUIRE(r);
      if ((*r)[0].status == append_status::appended)
        ++appended;
    }
  };
  std::thread ta{[&] { run(a); }};
  std::thread tb{[&] { run(b); }};
  ta.join();
  tb.join();
  CHECK(appended.load() == n);
  CHECK(a.next_offset() + b.next_offset() == n);
}

TEST_CASE("reopening recovers topics, offsets and the node id", "[unit][persistence]") {
  nerve::test::temp_dir dir;
  std::string node;
  {
    auto log = event_log::open(opts_for(dir));
    REQUIRE(log);
    node = (*log)->node_id();
    CHECK(node.rfind("node-", 0) == 0);
    auto t = *(*log)->create_topic("a.b", 3);
    partition_writer w{**log, t, 2};
    for (int i = 0; i < 5; ++i)
      REQUIRE(w.append({ev("e" + std::to_string(i))}));
  }
  auto log = event_log::open(opts_for(dir));
  REQUIRE(log);
  CHECK((*log)->node_id() == node);
  auto t = (*log)->find_topic("a.b");
  REQUIRE(t);
  CHECK(t->partitions == 3);
  partition_writer w{**log, *t, 2};
  CHECK(w.next_offset() == 5);
  auto r = w.append({ev("e0"), ev("e5")});
  REQUIRE(r);
  CHECK((*r)[0].status == append_status::duplicate);
  CHECK((*r)[1].where.offset == 5);
  auto st = (*log)->stats(*t, 2);
  CHECK(st.first_offset == 0);
  CHECK(st.next_offset == 6);
  auto again = (*log)->create_topic("a.b", 9);
  REQUIRE(again);
  CHECK(again->partitions == 3);
}

TEST_CASE("the WAL stays near its cap and nothing is lost when old WALs go",
          "[unit][persistence]") {
  nerve::test::temp_dir dir;
  auto o = opts_for(dir);
  o.max_wal_bytes = 1 << 20;
  // What the WAL files hold, without the zeroes written ahead of the live
  // one (persistence/wal_files.hpp): up to its last byte that is not zero.
  auto wal_bytes = [&] {
    std::uintmax_t total = 0;
    for (auto& f : std::filesystem::directory_iterator{o.path}) {
      if (f.path().extension() != ".log")
        continue;
      std::ifstream in{f.path(), std::ios::binary};
      std::uintmax_t end = f.file_size();
      std::vector<char> window(64 * 1024);
      while (end > 0) {
        auto from = end > window.size() ? end - window.size() : 0;
        in.seekg(static_cast<std::streamoff>(from));
        in.read(window.data(), static_cast<std::streamsize>(end - from));
        auto n = static_cast<std::size_t>(end - from);
        while (n > 0 && window[n - 1] == '\0')
          --n;
        if (n > 0) {
          end = from + n;
          break;
        }
        end = from;
      }
      total += end;
    }
    return total;
  };
  const std::string payload = "\"" + std::string(2000, 'x') + "\"";
  std::uintmax_t settled = 0;
  {
    auto log = event_log::open(o);
    REQUIRE(log);
    auto t = *(*log)->create_topic("big", 1);
    partition_writer w{**log, t, 0};
    // 16 MiB of events, and a little delivery state (another family) with
    // every batch, as partitions write cursors between appends.
    delivery_store store{**log};
    for (int b = 0; b < 80; ++b) {
      std::vector<new_event> batch;
      for (int i = 0; i < 100; ++i)
        batch.push_back(ev("e" + std::to_string(b * 100 + i), "", payload));
      REQUIRE(w.append(batch));
      state_batch s;
      s.put_cursor("agent", t.id, 0, static_cast<std::uint64_t>(b));
      REQUIRE(store.commit(s, false));
    }
    // The flushes that free old WALs run in the background, and RocksDB
    // looks for WALs to delete when writes come: keep writing a little, as
    // a live node does, and give them time.
    for (int i = 0; i < 200 && (settled = wal_bytes()) >= 6U << 20; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds{50});
      state_batch s;
      s.put_cursor("agent", t.id, 0, 79);
      REQUIRE(store.commit(s, false));
    }
  }
  // Without the cap all 16 MiB stay in WAL files; with it, the live WAL
  // varies with when the background flushes ran (1-3 MiB measured).
  CHECK(settled < 6U << 20);
  auto log = event_log::open(o);
  REQUIRE(log);
  auto t = (*log)->find_topic("big");
  REQUIRE(t);
  CHECK((*log)->stats(*t, 0).next_offset == 8000);
  auto first = (*log)->read(*t, 0, 0, 1);
  auto last = (*log)->read(*t, 0, 7999, 1);
  REQUIRE(first);
  REQUIRE(last);
  REQUIRE(first->size() == 1);
  REQUIRE(last->size() == 1);
  CHECK(json::parse((*last)[0])["id"] == "e7999");
  CHECK(json::parse((*first)[0])["data"].get<std::string>().size() == 2000);
  delivery_store store{**log};
  auto cursor = store.cursor("agent", t->id, 0);
  REQUIRE(cursor);
  REQUIRE(*cursor);
  CHECK(**cursor == 79);
}

TEST_CASE("a second process cannot open the same data dir", "[unit][persistence]") {
  nerve::test::temp_dir dir;
  auto first = event_log::open(opts_for(dir));
  REQUIRE(first);
  auto second = event_log::open(opts_for(dir));
  REQUIRE_FALSE(second);
  CHECK(second.error().message.find("in use by another nerve process") != std::string::npos);
}

TEST_CASE("retention deletes events older than the cutoff and nothing newer",
          "[unit][persistence]") {
  nerve::test::temp_dir dir;
  auto log = event_log::open(opts_for(dir));
  REQUIRE(log);
  auto t = *(*log)->create_topic("r", 1);
  partition_writer w{**log, t, 0};
  auto base = fake_now.load();
  for (int i = 0; i < 10; ++i) {
    fake_now = base + std::int64_t{i} * 1000;
    REQUIRE(w.append({ev("r" + std::to_string(i))}));
  }
  auto n = (*log)->sweep_before(base + 4000, 3);
  REQUIRE(n);
  CHECK(*n == 3);
  n = (*log)->sweep_before(base + 4000, 100);
  REQUIRE(n);
  CHECK(*n == 1);
  auto st = (*log)->stats(t, 0);
  CHECK(st.first_offset == 4);
  CHECK(st.next_offset == 10);
  CHECK_FALSE(*(*log)->get_by_id("r3"));
  CHECK(*(*log)->get_by_id("r4"));
  auto rest = (*log)->read(t, 0, 0, 100);
  REQUIRE(rest);
  CHECK(rest->size() == 6);
  fake_now = base + 100000;
}

TEST_CASE("offsets are not reused after retention removed every event", "[unit][persistence]") {
  nerve::test::temp_dir dir;
  auto base = fake_now.load();
  {
    auto log = event_log::open(opts_for(dir));
    REQUIRE(log);
    auto t = *(*log)->create_topic("gone", 1);
    partition_writer w{**log, t, 0};
    REQUIRE(w.append({ev("g0"), ev("g1"), ev("g2")}));
    auto n = (*log)->sweep_before(base + 1, 100);
    REQUIRE(n);
    CHECK(*n == 3);
  }
  auto log = event_log::open(opts_for(dir));
  REQUIRE(log);
  auto t = *(*log)->find_topic("gone");
  partition_writer w{**log, t, 0};
  CHECK(w.next_offset() == 3);
  auto st = (*log)->stats(t, 0);
  CHECK(st.first_offset == 3);
  CHECK(st.next_offset == 3);
  fake_now = base + 10;
}

TEST_CASE("append time never goes backwards within a partition", "[unit][persistence]") {
  nerve::test::temp_dir dir;
  auto log = event_log::open(opts_for(dir));
  REQUIRE(log);
  auto t = *(*log)->create_topic("clock", 1);
  partition_writer w{**log, t, 0};
  auto base = fake_now.load();
  REQUIRE(w.append({ev("t1")}));
  fake_now = base - 5'000'000; // the wall clock steps back
  auto r = w.append({ev("t2")});
  REQUIRE(r);
  CHECK((*r)[0].where.time_us == base);
  fake_now = base + 10;
}

TEST_CASE("the probe writes and reads back", "[unit][persistence]") {
  nerve::test::temp_dir dir;
  auto log = event_log::open(opts_for(dir));
  REQUIRE(log);
  auto latency = (*log)->probe();
  REQUIRE(latency);
  CHECK(latency->count() >= 0);
  CHECK((*log)->healthy());
}

TEST_CASE("generated ids have the documented shape", "[unit][persistence]") {
  auto id = new_uuid_v7(1'700'000'000'000'000);
  REQUIRE(id.size() == 36);
  CHECK(id[14] == '7');
  CHECK(std::string{"89ab"}.find(id[19]) != std::string::npos);
  CHECK(new_uuid_v7(1'700'000'000'000'000) != id);
  CHECK(new_uuid_v7(1'700'000'000'000'000).substr(0, 13) == id.substr(0, 13));
  auto trace = new_trace_id();
  CHECK(trace.size() == 32);
  CHECK(trace.find_first_not_of("0123456789abcdef") == std::string::npos);
}

TEST_CASE("acks after retries are read back by offset range and expire with results",
          "[unit][persistence]") {
  nerve::test::temp_dir dir;
  auto o = opts_for(dir);
  o.results_ttl = std::chrono::minutes{1};
  auto log = event_log::open(o);
  REQUIRE(log);
  delivery_store store{**log};
  state_batch b;
  auto now = fake_now.load();
  b.put_attempts("billing", 3, 1, 7, 2, now);
  b.put_attempts("billing", 3, 1, 300, 5, now);
  b.put_attempts("billing", 3, 2, 8, 9, now);   // another partition
  b.put_attempts("billing-x", 3, 1, 8, 9, now); // another agent
  b.put_result("e-1", "billing", {"{\"ok\":1}", now, 3});
  REQUIRE(store.commit(b, false));

  auto all = store.attempts_in("billing", 3, 1, 0, ~0ULL);
  REQUIRE(all);
  REQUIRE(all->size() == 2);
  CHECK((*all)[0] == std::pair<std::uint64_t, std::uint32_t>{7, 2});
  CHECK((*all)[1] == std::pair<std::uint64_t, std::uint32_t>{300, 5});
  auto some = store.attempts_in("billing", 3, 1, 8, 300);
  REQUIRE(some);
  REQUIRE(some->size() == 1);
  CHECK(some->front().first == 300);
  auto none = store.attempts_in("billing", 3, 1, 8, 299);
  REQUIRE(none);
  CHECK(none->empty());
  // Results by event id are untouched by the index next to them.
  auto r = store.result("e-1", "billing");
  REQUIRE(r);
  REQUIRE(*r);
  CHECK((*r)->attempts == 3);

  fake_now += 61'000'000; // past results.ttl
  auto expired = store.attempts_in("billing", 3, 1, 0, ~0ULL);
  REQUIRE(expired);
  CHECK(expired->empty());
}

TEST_CASE("a partition's span of a time window is found by binary search, half-open",
          "[unit][persistence]") {
  nerve::test::temp_dir dir;
  auto log = event_log::open(opts_for(dir));
  REQUIRE(log);
  auto topic = (*log)->create_topic("spans", 2);
  REQUIRE(topic);
  partition_writer w{**log, *topic, 1};
  auto base = fake_now.load();
  std::int64_t t[3];
  for (int b = 0; b < 3; ++b) {
    t[b] = fake_now.load();
    REQUIRE(w.append({ev("s" + std::to_string(2 * b)), ev("s" + std::to_string(2 * b + 1))}));
    fake_now += 100;
  }
  using span = std::optional<std::pair<std::uint64_t, std::uint64_t>>;
  auto check = [&](std::int64_t from, std::int64_t to, span want) {
    auto got = (*log)->time_span(*topic, 1, from, to);
    REQUIRE(got);
    CHECK(*got == want);
  };
  check(t[0], t[1], span{{0, 1}});
  check(t[0] + 1, t[2], span{{2, 3}});
  check(base - 1000, t[2] + 1, span{{0, 5}});
  check(t[1], t[2] + 1000, span{{2, 5}});
  check(t[2] + 1, t[2] + 1000, span{});
  check(t[1], t[1], span{});
  check(base - 1000, t[0], span{});
  auto empty = (*log)->time_span(*topic, 0, base - 1000, t[2] + 1000); // nothing appended
  REQUIRE(empty);
  CHECK(!*empty);
}

TEST_CASE("time spans agree with a linear scan on bursty appends", "[unit][persistence]") {
  nerve::test::temp_dir dir;
  auto log = event_log::open(opts_for(dir));
  REQUIRE(log);
  auto topic = (*log)->create_topic("bursty", 1);
  REQUIRE(topic);
  partition_writer w{**log, *topic, 0};
  std::uint64_t seed = 42;
  auto next = [&seed](std::uint64_t n) {
    seed = seed * 6364136223846793005ULL + 1442695040888963407ULL;
    return (seed >> 33) % n;
  };
  std::vector<std::int64_t> times; // by offset
  for (int b = 0; b < 300; ++b) {
    std::vector<new_event> batch;
    auto n = 1 + next(b % 7 == 0 ? 200 : 5);
    for (std::uint64_t i = 0; i < n; ++i)
      batch.push_back(ev("y" + std::to_string(times.size() + i)));
    auto t = fake_now.load();
    REQUIRE(w.append(batch));
    times.insert(times.end(), n, t);
    fake_now += 1 + static_cast<std::int64_t>(next(b % 11 == 0 ? 100000 : 50));
  }
  using span = std::optional<std::pair<std::uint64_t, std::uint64_t>>;
  for (int k = 0; k < 200; ++k) {
    auto from
      = times.front() - 10 + static_cast<std::int64_t>(next(times.back() - times.front() + 20));
    auto to
      = from + 1 + static_cast<std::int64_t>(next(k % 2 ? 100 : times.back() - times.front()));
    auto lo = std::lower_bound(times.begin(), times.end(), from) - times.begin();
    auto hi = std::lower_bound(times.begin(), times.end(), to) - times.begin();
    span want;
    if (lo < hi)
      want = std::pair<std::uint64_t, std::uint64_t>(lo, hi - 1);
    auto got = (*log)->time_span(*topic, 0, from, to);
    REQUIRE(got);
    CHECK(*got == want);
  }
}
