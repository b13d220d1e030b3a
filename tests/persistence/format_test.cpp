// The data directory format on a real RocksDB in a temp dir: ids that say
// where their event is (no by_id entry), by_time runs (one entry per append
// time), each partition's events in a family of its own (format 3), and
// format-1 and -2 directories (an entry per event in both indexes; every
// event in one shared family) migrated, read, swept and truncated.
#include <catch2/catch.hpp>

#include <atomic>
#include <map>
#include <tuple>

#include <nlohmann/json.hpp>
#include <rocksdb/db.h>

#include "persistence/event_log.hpp"
#include "persistence/ids.hpp"
#include "persistence/keys.hpp"
#include "persistence/layout.hpp"
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
  CHECK(meta["format"] == "3");
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
  CHECK(family(dir.sub("db"), "meta")["format"] == "3");
  // Migrated: the one event left is in the partition's own family.
  CHECK(family(dir.sub("db"), "events").empty());
  auto own = family(dir.sub("db"), layout::partition_family_name(t.id, 0));
  REQUIRE(own.size() == 1);
  CHECK(own.begin()->first == keys::event_key(t.id, 0, 1));
}

namespace {

/// Moves every event of the closed log at `path` from its partition's
/// family back into the shared one and sets the format to 2: what a
/// format-2 nerve left. With `keep_first` > 0, that many of the lowest keys
/// of each partition stay in the partition's family (a migration that
/// stopped half way, format still 2).
void back_to_format_2(const std::string& path, std::size_t keep_first = 0) {
  nerve::test::raw_rocksdb raw{path, false};
  rocksdb::WriteBatch batch;
  for (const auto& name : raw.names()) {
    if (!layout::parse_partition_family(name))
      continue;
    std::size_t seen = 0;
    for (auto& [key, value] : raw.records(name)) {
      if (seen++ < keep_first)
        continue;
      batch.Put(raw.family("events"), key, value);
      batch.Delete(raw.family(name), key);
    }
  }
  batch.Put(raw.family("meta"), "format", "2");
  REQUIRE(raw.db().Write(rocksdb::WriteOptions{}, &batch).ok());
}

/// Every stored event of the log, as (topic, partition, offset, text).
std::vector<std::tuple<std::string, std::uint32_t, std::uint64_t, std::string>>
all_events(const event_log& log) {
  std::vector<std::tuple<std::string, std::uint32_t, std::uint64_t, std::string>> out;
  for (const auto& t : log.topics())
    for (std::uint32_t p = 0; p < t.partitions; ++p) {
      auto events = log.read(t, p, 0, 1000);
      REQUIRE(events);
      std::uint64_t offset = log.stats(t, p).first_offset;
      for (auto& e : *events)
        out.emplace_back(t.name, p, offset++, e);
    }
  return out;
}

} // namespace

TEST_CASE("a format-2 directory's events move to their partitions' families, also after a "
          "migration that stopped half way",
          "[unit][persistence]") {
  for (std::size_t keep_first : {0, 2}) {
    CAPTURE(keep_first);
    nerve::test::temp_dir dir;
    std::vector<std::tuple<std::string, std::uint32_t, std::uint64_t, std::string>> before;
    std::string stray = keys::event_key(999, 0, 7);
    std::vector<std::string> ids;
    {
      auto log = open_log(dir.sub("db"));
      auto a = *log->create_topic("a", 3);
      auto b = *log->create_topic("b", 2);
      for (std::uint32_t p = 0; p < 3; ++p) {
        partition_writer w{*log, a, p};
        for (int round = 0; round < 3; ++round) {
          auto r = w.append(
            {without_id(), with_id("a" + std::to_string(p) + "-" + std::to_string(round))});
          REQUIRE(r);
          ids.push_back((*r)[0].id);
        }
      }
      partition_writer w{*log, b, 1};
      REQUIRE(w.append({without_id(), without_id(), without_id()}));
      before = all_events(*log);
      REQUIRE(before.size() == 21);
    }
    back_to_format_2(dir.sub("db"), keep_first);
    {
      // An event of no known topic, in the shared family: left there.
      nerve::test::raw_rocksdb raw{dir.sub("db"), false};
      REQUIRE(raw.db().Put(rocksdb::WriteOptions{}, raw.family("events"), stray, "x").ok());
      CHECK(raw.records("events").size() == (keep_first == 0 ? 22 : 22 - 2 * 4));
    }
    {
      auto log = open_log(dir.sub("db"));
      CHECK(all_events(*log) == before);
      for (const auto& id : ids)
        CHECK(*log->get_by_id(id));
      // Appends go on after the moved events.
      auto a = *log->find_topic("a");
      partition_writer w{*log, a, 2};
      CHECK(w.next_offset() == 6);
      auto r = w.append({without_id()});
      REQUIRE(r);
      CHECK((*r)[0].where.offset == 6);
    }
    CHECK(family(dir.sub("db"), "meta")["format"] == "3");
    auto shared = family(dir.sub("db"), "events");
    REQUIRE(shared.size() == 1);
    CHECK(shared.begin()->first == stray);
    CHECK(family(dir.sub("db"), layout::partition_family_name(1, 2)).size() == 7);
  }
}

TEST_CASE("a data directory of a newer format is refused, and left as it is",
          "[unit][persistence]") {
  nerve::test::temp_dir dir;
  open_log(dir.sub("db"));
  {
    nerve::test::raw_rocksdb raw{dir.sub("db"), false};
    REQUIRE(raw.db().Put(rocksdb::WriteOptions{}, raw.family("meta"), "format", "4").ok());
  }
  auto log = event_log::open(opts_at(dir.sub("db")));
  REQUIRE_FALSE(log);
  CHECK(log.error().message.find("has format 4") != std::string::npos);
  CHECK(family(dir.sub("db"), "meta")["format"] == "4");
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

TEST_CASE("an event whose place does not fit an id gets a random one, indexed in by_id",
          "[unit][persistence]") {
  nerve::test::temp_dir dir;
  std::string fits_id;
  std::string beyond_id;
  {
    auto log = open_log(dir.sub("db"));
    // Topic ids take 18 bits of a located id: 262,143 fits, 262,144 does not.
    auto fits = *log->create_topic("fits", 1, 262'143);
    auto beyond = *log->create_topic("beyond", 1, 262'144);
    partition_writer wf{*log, fits, 0};
    partition_writer wb{*log, beyond, 0};
    auto rf = wf.append({without_id()});
    auto rb = wb.append({without_id()});
    REQUIRE(rf);
    REQUIRE(rb);
    fits_id = (*rf)[0].id;
    beyond_id = (*rb)[0].id;
    CHECK(locate_id(fits_id));
    CHECK_FALSE(locate_id(beyond_id));
    auto back = log->get_by_id(beyond_id);
    REQUIRE(back);
    REQUIRE(*back);
    CHECK((*back)->find("\"topic\":\"beyond\"") != std::string::npos);
    CHECK(*log->get_by_id(fits_id));
  }
  auto by_id = family(dir.sub("db"), "by_id");
  CHECK(by_id.size() == 1);
  CHECK(by_id.count(beyond_id) == 1);
}
