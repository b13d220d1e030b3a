// The log opened read-only (what `nerve __dump-log` reads): every stored event
// in topic, partition and offset order, the directory left as it was, and
// events the topics in `meta` do not account for reported, not skipped.
#include <catch2/catch.hpp>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <tuple>

#include <rocksdb/db.h>
#include <rocksdb/write_batch.h>

#include "persistence/event_log.hpp"
#include "persistence/keys.hpp"
#include "persistence/read_only_log.hpp"
#include "tests/support/raw_rocksdb.hpp"
#include "tests/support/temp_dir.hpp"

using namespace nerve::persistence;

namespace {

using visited_event = std::tuple<std::string, std::uint32_t, std::uint64_t, std::string>;

new_event ev(std::string id, std::string key = "") {
  return {std::move(id), std::move(key), "\"data\":1", {}, {}};
}

/// Writes topic "zeta" (created first, so its id is lower) and "alpha", a few
/// events in several partitions of each, and closes the log.
void write_log(const std::string& path) {
  options o;
  o.path = path;
  auto log = event_log::open(o);
  REQUIRE(log);
  auto zeta = (*log)->create_topic("zeta", 2);
  auto alpha = (*log)->create_topic("alpha", 3);
  REQUIRE(zeta);
  REQUIRE(alpha);
  partition_writer z1{**log, *zeta, 1};
  partition_writer a0{**log, *alpha, 0};
  partition_writer a2{**log, *alpha, 2};
  REQUIRE(z1.append({ev("z-0"), ev("z-1", "k")}));
  REQUIRE(a2.append({ev("a2-0")}));
  REQUIRE(a0.append({ev("a0-0"), ev("a0-1"), ev("a0-2")}));
}

std::vector<visited_event> visit_all(const read_only_log& log,
                                     tl::expected<std::uint64_t, error>* result = nullptr) {
  std::vector<visited_event> out;
  auto r = log.visit([&out](const topic_info& topic, std::uint32_t partition, std::uint64_t offset,
                            std::int64_t, std::string_view json) {
    out.emplace_back(topic.name, partition, offset, std::string{json});
  });
  if (result != nullptr)
    *result = r;
  return out;
}

/// {file name: contents} of every file below `path`.
std::map<std::string, std::string> files_below(const std::string& path) {
  std::map<std::string, std::string> out;
  for (const auto& f : std::filesystem::recursive_directory_iterator(path)) {
    std::ifstream in{f.path(), std::ios::binary};
    std::ostringstream text;
    text << in.rdbuf();
    out[f.path().string()] = text.str();
  }
  return out;
}

/// Puts raw records into the events family, past the log's own API.
void put_raw_events(const std::string& path,
                    const std::vector<std::pair<std::string, std::string>>& records) {
  nerve::test::raw_rocksdb raw{path, false};
  for (auto& [key, value] : records)
    REQUIRE(raw.db().Put(rocksdb::WriteOptions{}, raw.family("events"), key, value).ok());
}

/// Puts raw records into a partition's events family, creating the family
/// when the log has none of that name.
void put_raw_family_events(const std::string& path, const std::string& family,
                           const std::vector<std::pair<std::string, std::string>>& records) {
  bool exists = false;
  {
    nerve::test::raw_rocksdb raw{path, false};
    exists = std::find(raw.names().begin(), raw.names().end(), family) != raw.names().end();
    if (!exists) {
      rocksdb::ColumnFamilyHandle* h = nullptr;
      REQUIRE(raw.db().CreateColumnFamily(rocksdb::ColumnFamilyOptions{}, family, &h).ok());
      REQUIRE(raw.db().DestroyColumnFamilyHandle(h).ok());
    }
  }
  nerve::test::raw_rocksdb raw{path, false};
  for (auto& [key, value] : records)
    REQUIRE(raw.db().Put(rocksdb::WriteOptions{}, raw.family(family), key, value).ok());
}

} // namespace

TEST_CASE("a read-only log visits every event by topic name, partition and offset",
          "[unit][persistence]") {
  nerve::test::temp_dir dir;
  auto path = dir.sub("db");
  write_log(path);
  auto before = files_below(path);

  auto log = read_only_log::open(path);
  REQUIRE(log);
  REQUIRE((*log)->topics().size() == 2);
  CHECK((*log)->topics()[0].name == "alpha");
  CHECK((*log)->topics()[1].name == "zeta");

  tl::expected<std::uint64_t, error> result = 0;
  auto seen = visit_all(**log, &result);
  REQUIRE(result);
  CHECK(*result == 6);
  std::vector<std::tuple<std::string, std::uint32_t, std::uint64_t>> where;
  for (auto& [topic, partition, offset, json] : seen) {
    where.emplace_back(topic, partition, offset);
    CHECK(json.find("\"topic\":\"" + topic + "\"") != std::string::npos);
  }
  CHECK(where
        == std::vector<std::tuple<std::string, std::uint32_t, std::uint64_t>>{{"alpha", 0, 0},
                                                                              {"alpha", 0, 1},
                                                                              {"alpha", 0, 2},
                                                                              {"alpha", 2, 0},
                                                                              {"zeta", 1, 0},
                                                                              {"zeta", 1, 1}});
  CHECK(std::get<3>(seen[4]).rfind("{\"id\":\"z-0\"", 0) == 0);

  log->reset();
  CHECK(files_below(path) == before);
}

TEST_CASE("a read-only log opens while the log is open for writing", "[unit][persistence]") {
  nerve::test::temp_dir dir;
  options o;
  o.path = dir.sub("db");
  auto writer = event_log::open(o);
  REQUIRE(writer);
  auto topic = (*writer)->create_topic("live", 1);
  REQUIRE(topic);
  partition_writer w{**writer, *topic, 0};
  REQUIRE(w.append({ev("live-0")}));

  auto log = read_only_log::open(o.path);
  REQUIRE(log);
  CHECK(visit_all(**log).size() == 1);
}

TEST_CASE("opening read-only never creates a directory or a log", "[unit][persistence]") {
  nerve::test::temp_dir dir;
  auto missing = read_only_log::open(dir.sub("missing"));
  REQUIRE_FALSE(missing);
  CHECK(missing.error().message.find("does not exist") != std::string::npos);
  CHECK_FALSE(std::filesystem::exists(dir.sub("missing")));

  std::filesystem::create_directories(dir.sub("empty"));
  auto empty = read_only_log::open(dir.sub("empty"));
  REQUIRE_FALSE(empty);
  CHECK(empty.error().message.find("not a nerve data directory") != std::string::npos);
  CHECK(std::filesystem::is_empty(dir.sub("empty")));
}

TEST_CASE("events outside the known topics and partitions fail the visit after the rest",
          "[unit][persistence]") {
  nerve::test::temp_dir dir;
  auto path = dir.sub("db");
  write_log(path);
  const std::string value = std::string(8, '\0') + "{\"id\":\"stray\"}";
  // zeta is topic id 1 with 2 partitions, alpha id 2 with 3; id 9 is no topic.
  auto check_reported = [&path](const std::string& what) {
    auto log = read_only_log::open(path);
    REQUIRE(log);
    tl::expected<std::uint64_t, error> result = 0;
    CHECK(visit_all(**log, &result).size() == 6);
    REQUIRE_FALSE(result);
    CHECK(result.error().message.find(what) != std::string::npos);
  };
  SECTION("a partition past the topic's count") {
    put_raw_events(path, {{keys::event_key(1, 2, 0), value}});
    check_reported("past the topic's 2 partitions");
  }
  SECTION("an unknown topic id before the known ones") {
    put_raw_events(path, {{keys::event_key(0, 0, 0), value}});
    check_reported("an event of no known topic: topic id 0 partition 0 offset 0");
  }
  SECTION("an unknown topic id after the known ones") {
    put_raw_events(path, {{keys::event_key(9, 3, 7), value}});
    check_reported("an event of no known topic: topic id 9 partition 3 offset 7");
  }
  SECTION("a family of a partition past the topic's count") {
    put_raw_family_events(path, "events.1.5", {{keys::event_key(1, 5, 0), value}});
    check_reported("past the topic's 2 partitions, in the family of partition 5");
  }
  SECTION("a family of no known topic") {
    put_raw_family_events(path, "events.9.0", {{keys::event_key(9, 0, 4), value}});
    check_reported("an event of no known topic: topic id 9 partition 0 offset 4");
  }
  SECTION("a key of another partition in a partition's family") {
    put_raw_family_events(path, "events.2.1", {{keys::event_key(2, 0, 5), value}});
    check_reported("an event in the family of alpha/1 that is not of that partition");
  }
  SECTION("a value too short to be an event") {
    put_raw_events(path, {{keys::event_key(2, 1, 0), std::string(8, '\0')}});
    check_reported("corrupt event (alpha: topic id 2 partition 1 offset 0)");
  }
}

TEST_CASE("a read-only log visits a directory whose migration stopped half way in order",
          "[unit][persistence]") {
  nerve::test::temp_dir dir;
  auto path = dir.sub("db");
  write_log(path);
  auto whole = [&path] {
    auto log = read_only_log::open(path);
    REQUIRE(log);
    tl::expected<std::uint64_t, error> result = 0;
    auto seen = visit_all(**log, &result);
    REQUIRE(result);
    return seen;
  };
  auto before = whole();
  REQUIRE(before.size() == 6);
  {
    // alpha (id 2) partition 0: offsets 1 and 2 back in the shared family,
    // as a format-2 directory whose move stopped after offset 0.
    nerve::test::raw_rocksdb raw{path, false};
    rocksdb::WriteBatch batch;
    for (auto& [key, value] : raw.records("events.2.0"))
      if (keys::get_u64(key, 8) > 0) {
        batch.Put(raw.family("events"), key, value);
        batch.Delete(raw.family("events.2.0"), key);
      }
    REQUIRE(raw.db().Write(rocksdb::WriteOptions{}, &batch).ok());
    CHECK(raw.records("events").size() == 2);
  }
  CHECK(whole() == before);
}
