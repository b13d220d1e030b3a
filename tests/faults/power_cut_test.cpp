// Seeded power cuts under a running node: whatever the node acknowledged
// (events and acks) survives losing every byte that was not synced, and
// offsets stay dense. NERVE_FAULT_CRASHES sets how many cuts (default 200),
// NERVE_FAULT_SEED replays a failure from the seed it printed.
#include <catch2/catch.hpp>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <random>
#include <thread>

#include <spdlog/spdlog.h>

#include "actors/node.hpp"
#include "tests/faults/faulty_fs.hpp"
#include "tests/faults/node_fault.hpp"
#include "tests/support/temp_dir.hpp"

using namespace nerve;
using persistence::fault_action;
using persistence::fault_point;

namespace {

constexpr std::uint32_t partitions = 3;
/// Crashes in a row on one data directory before a fresh one: later cycles
/// recover from what earlier cuts left, then are cut again.
constexpr int cycles_per_run = 4;
constexpr int publishers = 2;

std::uint64_t env_number(const char* name, std::uint64_t fallback) {
  const char* v = std::getenv(name);
  return v != nullptr && *v != '\0' ? std::strtoull(v, nullptr, 10) : fallback;
}

/// Where one cycle cuts power, drawn from its seed.
struct cut_plan {
  /// While the node starts (recovery: WAL replay, flushes, the MANIFEST),
  /// after a number of file system operations.
  bool during_start = false;
  bool at_fault_point = false; ///< else after a number of file system operations
  fault_point point = fault_point::before_append;
  std::uint64_t nth = 0; ///< the nth operation or the nth time at the point
  bool torn = false;     ///< unsynced tails survive in part (a torn prefix)
  int publishes = 0;     ///< per publisher, at most

  static cut_plan draw(std::mt19937_64& rng) {
    cut_plan p;
    p.publishes = 10 + static_cast<int>(rng() % 60);
    p.during_start = rng() % 4 == 0;
    p.at_fault_point = !p.during_start && rng() % 2 == 0;
    constexpr fault_point points[]
      = {fault_point::before_append, fault_point::before_sync, fault_point::before_cursor_commit};
    p.point = points[rng() % 3];
    // Past the workload now and then: the cut then comes after it, idle.
    auto span = static_cast<std::uint64_t>(p.publishes) * publishers;
    p.nth = 1 + rng() % (p.during_start ? 60 : p.at_fault_point ? span : 4 * span);
    p.torn = rng() % 2 == 0;
    return p;
  }
};

std::ostream& operator<<(std::ostream& os, const cut_plan& p) {
  os << (p.during_start     ? std::string{"cut while starting, after file operation #"}
         : p.at_fault_point ? std::string{"cut at "} + persistence::to_string(p.point) + " #"
                            : std::string{"cut after file operation #"})
     << p.nth << (p.torn ? ", torn tails" : ", synced bytes only") << ", " << p.publishes
     << " publishes per publisher";
  return os;
}

/// One publisher: publishes until power is cut or its share is done, and
/// certifies acks. A cursor read before publish A to partition p is durable
/// once A and a later publish B to p (sent after A's answer) both succeed:
/// the partition writes a cursor no later than with its next append (A's,
/// whose sync covers it; the rule checked here, with B, is the looser one).
void publish_until_cut(actors::node& n, test::faulty_fs& fs, test::acknowledged& acked,
                       std::uint64_t seed, int who, int cycle, int publishes) {
  std::mt19937_64 rng{seed * 31 + static_cast<std::uint64_t>(who)};
  std::vector<std::optional<std::uint64_t>> pending_floor(partitions);
  for (int i = 0; i < publishes && !fs.is_cut(); ++i) {
    auto before = test::memory_cursors(n, partitions);
    std::vector<actors::publish_item> items;
    auto key = "k" + std::to_string(rng() % 16);
    auto count = 1 + rng() % 3;
    for (std::uint64_t j = 0; j < count; ++j)
      items.push_back({"c" + std::to_string(cycle) + "-p" + std::to_string(who) + "-"
                         + std::to_string(i) + "-" + std::to_string(j),
                       key, "\"data\":" + std::to_string(i), "test", "faults"});
    auto r = test::publish_wait(n, test::fault_topic, std::move(items));
    if (!r)
      continue; // not acknowledged: it may or may not survive
    acked.events(*r);
    auto p = (*r)[0].partition;
    if (pending_floor[p])
      acked.cursor(p, *pending_floor[p]);
    pending_floor[p] = before[p];
  }
}

/// Runs one node on `data` until the plan's cut, stops it and reboots its
/// file system. A cut while starting may leave no node to run.
void run_cycle(const std::string& data, const cut_plan& plan, test::acknowledged& acked,
               std::uint64_t seed, int cycle, std::mt19937_64& rng) {
  auto fs = std::make_shared<test::faulty_fs>();
  std::atomic<std::uint64_t> reached{0};
  actors::node_hooks hooks;
  hooks.file_system = fs;
  if (plan.at_fault_point)
    hooks.fault
      = [&plan, &reached, fs = fs.get()](fault_point p, const persistence::fault_context&) {
          if (p == plan.point && ++reached == plan.nth)
            fs->power_cut();
          return fault_action::proceed;
        };
  if (plan.during_start)
    fs->cut_after(plan.nth);
  auto n = actors::start_node(test::fault_config(data, partitions), hooks);
  INFO("starting the node: " << (n ? std::string{"ok"} : n.error()));
  REQUIRE((n || fs->is_cut()));
  if (n) {
    if (!plan.at_fault_point && !plan.during_start)
      fs->cut_after(plan.nth);
    std::vector<std::thread> threads;
    for (int who = 0; who < publishers; ++who)
      threads.emplace_back([&, who] {
        publish_until_cut(**n, *fs, acked, seed + static_cast<std::uint64_t>(cycle), who, cycle,
                          plan.publishes);
      });
    for (auto& t : threads)
      t.join();
    fs->power_cut(); // if the plan's point was not reached: now, idle
    (*n)->shutdown();
    n->reset();
  }
  auto dropped = fs->reboot(plan.torn ? std::optional<std::uint64_t>{rng()} : std::nullopt);
  CHECK(dropped.open_files == 0);
}

} // namespace

TEST_CASE("acknowledged events and acks survive power cuts, and offsets stay dense",
          "[faults][slow]") {
  spdlog::set_level(spdlog::level::off); // a cut disk makes RocksDB and nerve complain
  const auto crashes = env_number("NERVE_FAULT_CRASHES", 200);
  const auto first_seed = env_number("NERVE_FAULT_SEED", std::random_device{}());
  auto started = std::chrono::steady_clock::now();
  std::uint64_t done = 0;
  for (std::uint64_t run = 0; done < crashes; ++run) {
    const auto seed = first_seed + run;
    INFO("replay with NERVE_FAULT_SEED=" << seed << " NERVE_FAULT_CRASHES=" << cycles_per_run);
    test::temp_dir dir;
    auto data = dir.sub("data");
    test::acknowledged acked;
    std::mt19937_64 rng{seed};
    std::vector<cut_plan> plans;
    for (int cycle = 0; cycle < cycles_per_run; ++cycle)
      plans.push_back(cut_plan::draw(rng));
    for (int cycle = 0; cycle < cycles_per_run && done < crashes; ++cycle, ++done) {
      INFO("cycle " << cycle << ": " << plans[cycle]);
      run_cycle(data, plans[cycle], acked, seed, cycle, rng);
      // Checking recovers the log (on the real file system); a cut while
      // starting must meet what the last cut left, so the check waits.
      bool next_starts_cut
        = cycle + 1 < cycles_per_run && plans[cycle + 1].during_start && done + 1 < crashes;
      INFO(acked.size() << " events acknowledged so far");
      if (!next_starts_cut)
        REQUIRE(acked.check(data, partitions));
    }
  }
  auto secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  WARN(done << " power cuts from seed " << first_seed << " in " << secs << " s");
}
