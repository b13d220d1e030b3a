// Chosen failures under a running node: a failed WAL write or sync, and a
// failure at each named fault point, is answered as an error, never corrupts
// what was acknowledged before, and the node carries on.
#include <catch2/catch.hpp>

#include <atomic>
#include <chrono>
#include <thread>

#include <spdlog/spdlog.h>

#include "actors/node.hpp"
#include "persistence/event_log.hpp"
#include "tests/faults/faulty_fs.hpp"
#include "tests/faults/node_fault.hpp"
#include "tests/support/temp_dir.hpp"

using namespace nerve;
using namespace std::chrono_literals;
using persistence::fault_action;
using persistence::fault_point;

namespace {

constexpr std::uint32_t partitions = 1;

actors::publish_item item(const std::string& id) {
  return {id, "", "\"data\":1", "test", "faults"};
}

/// Publishes `id` until it is acknowledged or 30 s have passed, and records
/// it; answers its offset. The node may refuse writes for a while after a
/// failure (about 6 s here): the runner retries resume() every second, and
/// the partitions restart with a growing backoff.
std::optional<std::uint64_t> publish_until_ok(actors::node& n, test::acknowledged& acked,
                                              const std::string& id) {
  auto deadline = std::chrono::steady_clock::now() + 30s;
  while (std::chrono::steady_clock::now() < deadline) {
    auto r = test::publish_wait(n, test::fault_topic, {item(id)});
    if (r) {
      acked.events(*r);
      return (*r)[0].offset;
    }
    std::this_thread::sleep_for(20ms); // the runner retries resume() on its own clock
  }
  return std::nullopt;
}

/// Waits until the acker's cursor reaches `end` on partition 0, or 10 s.
bool acks_reach(actors::node& n, std::uint64_t end) {
  auto deadline = std::chrono::steady_clock::now() + 10s;
  while (test::memory_cursors(n, partitions)[0] < end) {
    if (std::chrono::steady_clock::now() > deadline)
      return false;
    std::this_thread::sleep_for(5ms);
  }
  return true;
}

/// A node on a faulty file system in a temp dir, and what it acknowledged.
struct faulty_node {
  test::temp_dir dir;
  std::shared_ptr<test::faulty_fs> fs = std::make_shared<test::faulty_fs>();
  test::acknowledged acked;
  std::unique_ptr<actors::node> node;

  explicit faulty_node(actors::node_hooks hooks = {},
                       const std::vector<std::string>& agent_command = {}) {
    spdlog::set_level(std::getenv("NERVE_FAULT_LOG") ? spdlog::level::info : spdlog::level::off);
    hooks.file_system = fs;
    auto cfg = test::fault_config(dir.sub("data"), partitions);
    if (!agent_command.empty()) {
      cfg.agents[0].kind = config::agent_kind::process;
      cfg.agents[0].command = agent_command;
    }
    auto n = actors::start_node(cfg, hooks);
    REQUIRE(n);
    node = std::move(*n);
  }

  /// Publishes `count` events that must all be acknowledged.
  void publish_ok(const std::string& prefix, int count) {
    for (int i = 0; i < count; ++i) {
      auto r = test::publish_wait(*node, test::fault_topic, {item(prefix + std::to_string(i))});
      REQUIRE(r);
      acked.events(*r);
    }
  }

  /// Publishes one event that must be refused with 503 (retry later).
  void publish_refused(const std::string& id) {
    auto r = test::publish_wait(*node, test::fault_topic, {item(id)});
    REQUIRE_FALSE(r);
    CHECK(r.error().code == actors::errc::unavailable);
  }

  /// Cuts power, stops the node, reboots and checks the log.
  void cut_and_check() {
    fs->power_cut();
    node->shutdown();
    node.reset();
    CHECK(fs->reboot().open_files == 0);
    CHECK(acked.check(dir.sub("data"), partitions));
  }
};

} // namespace

TEST_CASE("a failed WAL append is answered as an error and loses nothing acknowledged",
          "[faults]") {
  faulty_node f;
  f.publish_ok("before-", 5);
  f.fs->fail_append(1, test::file_kind::wal);
  f.publish_refused("failed");
  // The log takes writes again once it rolled to a new WAL.
  CHECK(publish_until_ok(*f.node, f.acked, "after"));
  f.cut_and_check();
}

TEST_CASE("a failed WAL sync is answered as an error and nothing acknowledged is lost",
          "[faults]") {
  faulty_node f;
  f.publish_ok("before-", 5);
  // Linux forgets the pages a failed fsync did not write: the faulty file
  // system never makes them durable, so an event acknowledged later in the
  // same WAL would be lost at the cut. RocksDB stops taking writes after a
  // failed WAL sync (an EIO, unlike a full disk, until a restart): whatever
  // is acknowledged after it must survive all the same.
  f.fs->fail_sync(1, test::file_kind::wal);
  f.publish_refused("failed");
  for (int i = 0; i < 5; ++i)
    if (auto r
        = test::publish_wait(*f.node, test::fault_topic, {item("after-" + std::to_string(i))}))
      f.acked.events(*r);
  f.cut_and_check();
  // A restart takes writes again, at the next dense offset.
  auto n = actors::start_node(test::fault_config(f.dir.sub("data"), partitions));
  REQUIRE(n);
  auto r = test::publish_wait(**n, test::fault_topic, {item("restarted")});
  REQUIRE(r);
  f.acked.events(*r);
  (*n)->shutdown();
  n->reset(); // closes the log
  CHECK(f.acked.check(f.dir.sub("data"), partitions));
}

TEST_CASE("a failure at a fault point fails that operation, not the node", "[faults]") {
  auto point = GENERATE(fault_point::before_append, fault_point::before_sync,
                        fault_point::before_cursor_commit);
  INFO("failing once at " << persistence::to_string(point));
  std::atomic<int> failures_left{0};
  actors::node_hooks hooks;
  hooks.fault = [&](fault_point p, const persistence::fault_context&) {
    return p == point && failures_left.fetch_sub(1) > 0 ? fault_action::fail
                                                        : fault_action::proceed;
  };
  faulty_node f{hooks};
  f.publish_ok("before-", 3);
  REQUIRE(acks_reach(*f.node, 3));
  failures_left = 1;
  auto r = test::publish_wait(*f.node, test::fault_topic, {item("during")});
  if (point != fault_point::before_cursor_commit) {
    REQUIRE_FALSE(r);
    CHECK(r.error().code == actors::errc::unavailable); // 503: retry later
  } else if (r) {
    // Delivery state is committed by a later flush, which fails: the
    // partition restarts from the log (answering 503 meanwhile) and makes
    // again the deliveries it could not record.
    f.acked.events(*r);
  }
  CHECK(publish_until_ok(*f.node, f.acked, "after"));
  auto deadline = std::chrono::steady_clock::now() + 10s;
  while (failures_left.load() > 0 && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(5ms); // a flush on the counters' timer commits the acks
  CHECK(failures_left.load() <= 0);
  auto last = publish_until_ok(*f.node, f.acked, "last");
  REQUIRE(last);
  // Every event is acked in the end; offsets stayed dense (checked below).
  CHECK(acks_reach(*f.node, *last + 1));
  f.cut_and_check();
}

TEST_CASE("a failed write to a process agent's child restarts it and loses no delivery",
          "[faults]") {
  std::atomic<int> failures_left{0};
  actors::node_hooks hooks;
  hooks.fault = [&](fault_point p, const persistence::fault_context& where) {
    return p == fault_point::child_io && where.subject == test::fault_agent
               && failures_left.fetch_sub(1) > 0
             ? fault_action::fail
             : fault_action::proceed;
  };
  // Acks every event it reads; exits when its stdin closes.
  const std::string acker = "import json, sys\n"
                            "for line in sys.stdin:\n"
                            "    m = json.loads(line)\n"
                            "    print(json.dumps({'type': 'ack', 'delivery': m['delivery']}),"
                            " flush=True)\n";
  faulty_node f{hooks, {"python3", "-c", acker}};
  f.publish_ok("before-", 2);
  REQUIRE(acks_reach(*f.node, 2));
  failures_left = 1; // the next line to the child fails as a broken pipe
  f.publish_ok("during-", 3);
  // The writer gives up, the child sees its stdin close and exits, and the
  // restarted child gets the deliveries in flight again.
  CHECK(acks_reach(*f.node, 5));
  CHECK(failures_left.load() <= 0);
  f.cut_and_check();
}

// Hidden ([.]): it reproduces a known bug by aborting the whole executable
// (docs/architecture.md, "Faults"). Run it alone once the bug is fixed:
//   ./build/tests/nerve_fault_tests '[wal_race]'
TEST_CASE("a WAL append failing while a sync is due does not abort the node", "[.][wal_race]") {
  spdlog::set_level(spdlog::level::off);
  for (int round = 0; round < 200; ++round) {
    INFO("round " << round);
    test::temp_dir dir;
    auto fs = std::make_shared<test::faulty_fs>();
    actors::node_hooks hooks;
    hooks.file_system = fs;
    auto n = actors::start_node(test::fault_config(dir.sub("data"), 4), hooks);
    REQUIRE(n);
    // An append to the fresh WAL fails while an earlier one's sync is due:
    // four publishers on up to four partitions.
    fs->fail_append(1 + static_cast<std::uint64_t>(round) % 8, test::file_kind::wal);
    std::vector<std::thread> publishers;
    for (int who = 0; who < 4; ++who)
      publishers.emplace_back([&n, who] {
        for (int i = 0; i < 4; ++i)
          (void)test::publish_wait(**n, test::fault_topic,
                                   {{"", "key" + std::to_string(who), "\"data\":1", "", ""}});
      });
    for (auto& t : publishers)
      t.join();
    (*n)->shutdown();
  }
}

TEST_CASE("a write failing while the log opens is answered as an error", "[faults]") {
  spdlog::set_level(spdlog::level::off);
  test::temp_dir dir;
  auto fs = std::make_shared<test::faulty_fs>();
  fs->fail_sync(1, test::file_kind::wal); // the node id's synced write on a new log
  persistence::options opts;
  opts.path = dir.sub("data");
  opts.file_system = fs;
  auto log = persistence::event_log::open(opts);
  REQUIRE_FALSE(log);
  CHECK(log.error().code == persistence::errc::io_error);
  // Nothing was acknowledged; the next start opens the log.
  CHECK(fs->reboot().open_files == 0);
  opts.file_system = nullptr;
  CHECK(persistence::event_log::open(opts));
}
