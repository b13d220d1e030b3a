// The storage side of replicated partitions on real databases in temp dirs:
// topics with given ids.
#include <catch2/catch.hpp>

#include <atomic>
#include <memory>

#include "persistence/event_log.hpp"
#include "tests/support/temp_dir.hpp"

using namespace nerve::persistence;

namespace {

std::atomic<std::int64_t> fake_now{1'700'000'000'000'000};

options opts_at(const std::string& path) {
  options o;
  o.path = path;
  o.clock = [] { return fake_now.load(); };
  return o;
}

std::unique_ptr<event_log> open_log(const std::string& path) {
  auto log = event_log::open(opts_at(path));
  REQUIRE(log);
  return std::move(*log);
}

topic_info topic_with_id(event_log& log, std::uint32_t id, std::uint32_t partitions = 2) {
  auto t = log.create_topic("orders", partitions, id);
  REQUIRE(t);
  REQUIRE(t->id == id);
  return *t;
}

} // namespace

TEST_CASE("a topic created with an id keeps exactly that id, and a conflicting one is refused",
          "[unit][persistence]") {
  nerve::test::temp_dir dir;
  {
    auto log = open_log(dir.sub("db"));
    auto t = topic_with_id(*log, 7, 3);
    CHECK(t.name == "orders");
    CHECK(t.partitions == 3);

    auto again = log->create_topic("orders", 3, 7);
    REQUIRE(again);
    CHECK(again->id == 7);
    CHECK(log->create_topic("orders", 3)->id == 7); // without an id: the existing one

    auto other_id = log->create_topic("orders", 3, 8);
    REQUIRE_FALSE(other_id);
    CHECK(other_id.error().code == errc::conflict);
    CHECK_THAT(other_id.error().message, Catch::Contains("id 7 and 3 partitions")
                                           && Catch::Contains("not id 8 and 3 partitions"));
    auto other_count = log->create_topic("orders", 4, 7);
    REQUIRE_FALSE(other_count);
    CHECK(other_count.error().code == errc::conflict);
    auto taken = log->create_topic("audit", 1, 7);
    REQUIRE_FALSE(taken);
    CHECK(taken.error().code == errc::conflict);
    CHECK_THAT(taken.error().message, Catch::Contains("topic orders has it"));
    for (std::uint32_t bad : {0U, UINT32_MAX}) {
      auto out_of_range = log->create_topic("audit", 1, bad);
      REQUIRE_FALSE(out_of_range);
      CHECK(out_of_range.error().code == errc::invalid);
    }
    CHECK(log->create_topic("audit", 0, 9).error().code == errc::invalid);
    CHECK_FALSE(log->find_topic("audit"));

    // Ids this log assigns itself go past every id it holds.
    CHECK(log->create_topic("local", 1)->id == 8);
    REQUIRE(log->create_topic("big", 1, 20));
  }
  auto log = open_log(dir.sub("db"));
  auto t = log->find_topic("orders");
  REQUIRE(t);
  CHECK(t->id == 7);
  CHECK(log->create_topic("orders", 3, 7));
  CHECK(log->create_topic("orders", 3, 8).error().code == errc::conflict);
  CHECK(log->create_topic("later", 1)->id == 21);
  auto local = log->create_topic("x", 1, 8); // the id of "local"
  REQUIRE_FALSE(local);
  CHECK(local.error().code == errc::conflict);
}
