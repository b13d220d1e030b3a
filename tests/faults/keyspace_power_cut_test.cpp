// Seeded power cuts under keyspace writers: every HINCRBY, HSET and EXPIRE
// the keyspace answered survives losing every byte that was not synced.
// NERVE_FAULT_CRASHES sets how many cuts (default 40), NERVE_FAULT_SEED
// replays a failure from the seed it printed.
#include <catch2/catch.hpp>

#include <atomic>
#include <cstdlib>
#include <map>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <spdlog/spdlog.h>

#include "persistence/event_log.hpp"
#include "persistence/keyspace.hpp"
#include "tests/faults/faulty_fs.hpp"
#include "tests/support/temp_dir.hpp"

using namespace nerve;
using namespace nerve::persistence;

namespace {

constexpr int writers = 2;
constexpr int ops_per_writer = 150;
constexpr std::int64_t clock_us = 1'700'000'000'000'000;

std::uint64_t env_number(const char* name, std::uint64_t fallback) {
  const char* v = std::getenv(name);
  return v != nullptr && *v != '\0' ? std::strtoull(v, nullptr, 10) : fallback;
}

/// What the keyspace answered, across cycles on one data directory.
struct acknowledged {
  std::mutex mutex;
  std::map<std::string, std::int64_t> counters; ///< key → the largest value answered
  std::map<std::string, bool> markers;          ///< key → whether an EXPIRE was answered
};

options opts_at(const std::string& path, std::shared_ptr<rocksdb::FileSystem> fs) {
  options o;
  o.path = path;
  o.file_system = std::move(fs);
  o.clock = [] { return clock_us; }; // no key expires: the TTLs are days
  return o;
}

/// One writer: increments its counter, sets a marker and gives every other
/// one an expiry, until the disk is cut or its share is done.
void write_until_cut(keyspace& ks, test::faulty_fs& fs, acknowledged& acked, int who, int cycle) {
  const auto counter = "counter:" + std::to_string(who);
  for (int i = 0; i < ops_per_writer && !fs.is_cut(); ++i) {
    if (auto v = ks.hincrby(counter, "n", 1)) {
      std::lock_guard<std::mutex> guard{acked.mutex};
      acked.counters[counter] = std::max(acked.counters[counter], *v);
    }
    const auto marker
      = "done:" + std::to_string(who) + ":" + std::to_string(cycle) + ":" + std::to_string(i);
    if (!ks.hset(marker, {{"attempts", std::to_string(i)}}))
      continue;
    {
      std::lock_guard<std::mutex> guard{acked.mutex};
      acked.markers.emplace(marker, false);
    }
    if (i % 2 == 0 && ks.expire(marker, 86400).value_or(false)) {
      std::lock_guard<std::mutex> guard{acked.mutex};
      acked.markers[marker] = true;
    }
  }
}

} // namespace

TEST_CASE("acknowledged keyspace writes survive power cuts", "[faults]") {
  spdlog::set_level(spdlog::level::off); // a cut disk makes RocksDB complain
  const auto crashes = env_number("NERVE_FAULT_CRASHES", 40);
  const auto seed = env_number("NERVE_FAULT_SEED", std::random_device{}());
  INFO("replay with NERVE_FAULT_SEED=" << seed << " NERVE_FAULT_CRASHES=" << crashes);
  std::mt19937_64 rng{seed};
  test::temp_dir dir;
  const auto data = dir.sub("data");
  acknowledged acked;
  for (std::uint64_t cycle = 0; cycle < crashes; ++cycle) {
    INFO("cycle " << cycle);
    auto fs = std::make_shared<test::faulty_fs>();
    {
      auto log = event_log::open(opts_at(data, fs));
      REQUIRE(log);
      keyspace ks{**log};
      fs->cut_after(1 + rng() % 600);
      std::vector<std::thread> threads;
      for (int who = 0; who < writers; ++who)
        threads.emplace_back(
          [&, who] { write_until_cut(ks, *fs, acked, who, static_cast<int>(cycle)); });
      for (auto& t : threads)
        t.join();
      fs->power_cut(); // if the cut did not come during the writes: now, idle
    }
    const bool torn = rng() % 2 == 0;
    CHECK(fs->reboot(torn ? std::optional<std::uint64_t>{rng()} : std::nullopt).open_files == 0);

    // Every answered write is there after recovery, on the real file system.
    auto log = event_log::open(opts_at(data, nullptr));
    REQUIRE(log);
    keyspace ks{**log};
    for (const auto& [counter, value] : acked.counters) {
      auto stored = ks.hget(counter, "n");
      REQUIRE(stored);
      REQUIRE(*stored);
      CHECK(std::stoll(**stored) >= value);
    }
    for (const auto& [marker, expires] : acked.markers) {
      INFO("marker " << marker);
      auto ttl = ks.ttl(marker);
      REQUIRE(ttl);
      CHECK(*ttl != -2);
      if (expires)
        CHECK(*ttl == 86400);
    }
  }
  WARN(crashes << " power cuts from seed " << seed << "; " << acked.markers.size()
               << " markers acknowledged");
}
