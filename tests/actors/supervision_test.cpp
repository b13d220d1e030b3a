// Supervision on CAF's deterministic scheduler: the real runner, partition,
// DLQ, builtin instance and replay actors over a real RocksDB log in a temp
// dir, crashed on purpose and restarted under their restart_policy, in
// virtual time (no sleeps, no wall clock for the waits).
#include <catch2/catch.hpp>

#include "actors/node_context.hpp"
#include "actors/replay_plan.hpp"
#include "actors/replay_storage.hpp"
#include "actors/runner.hpp"
#include "actors/runtime.hpp"
#include "persistence/delivery_store.hpp"
#include "persistence/event_log.hpp"
#include "tests/support/deterministic_system.hpp"
#include "tests/support/temp_dir.hpp"

using namespace nerve;
using namespace nerve::actors;
using namespace std::chrono_literals;

namespace {

constexpr const char* topic_name = "orders";

config::agent_config builtin_agent(const std::string& name, const std::string& handler) {
  config::agent_config a;
  a.name = name;
  a.topics = {topic_name};
  a.kind = config::agent_kind::builtin;
  a.handler = handler;
  a.start = config::start_position::earliest;
  return a;
}

/// A node's state with its runner, every actor on the deterministic
/// scheduler. Members are destroyed in reverse: the actor system first.
struct supervised_node {
  test::temp_dir dir;
  config::config cfg;
  node_hooks hooks;
  std::unique_ptr<persistence::event_log> log;
  std::unique_ptr<persistence::delivery_store> store;
  detail::node_context ctx;
  persistence::topic_info topic;
  test::deterministic_system det;
  runner_actor runner;

  explicit supervised_node(std::vector<config::agent_config> agents) {
    persistence::options o;
    o.path = dir.sub("db");
    o.fsync = config::fsync_policy::never; // no sync thread: answers come inline
    log = std::move(*persistence::event_log::open(o));
    store = std::make_unique<persistence::delivery_store>(*log);
    cfg.agents = std::move(agents);
    ctx.detach_blocking = false;
    ctx.log = log.get();
    ctx.store = store.get();
    ctx.cfg = &cfg;
    ctx.hooks = &hooks;
    for (std::size_t i = 0; i < cfg.agents.size(); ++i) {
      ctx.agents.add(std::make_shared<detail::agent_runtime>(cfg.agents[i], i));
    }
    ctx.publish
      = [](const std::string&, std::vector<publish_item>, callback<std::vector<published>> done) {
          done(tl::make_unexpected(error{errc::unavailable, "no emits in this test"}));
        };
    topic = *log->create_topic(topic_name, 1);
  }

  ~supervised_node() {
    if (!runner)
      return;
    caf::anon_send(runner, stop_atom::value);
    det.run();
    while (det.sched().trigger_timeouts() > 0)
      det.run();
  }

  supervised_node(const supervised_node&) = delete;
  supervised_node& operator=(const supervised_node&) = delete;

  void append(std::size_t n) {
    persistence::partition_writer w{*log, topic, 0};
    std::vector<persistence::new_event> events;
    for (std::size_t i = 0; i < n; ++i)
      events.push_back(
        {"ev-" + std::to_string(w.next_offset() + i), "", "\"data\":1", "", "", false});
    REQUIRE(w.append(events));
  }

  /// Publishes `n` events through the partition actor, as the publish
  /// path does, and runs until they are appended and delivered.
  void publish(std::size_t n) {
    auto job = std::make_shared<detail::partition_job>();
    for (std::size_t i = 0; i < n; ++i)
      job->events.push_back({"pub-" + std::to_string(next_id_++), "", "\"data\":1", "", "", true});
    job->queued = &slot().queued;
    slot().queued += n;
    bool answered = false;
    job->done = [&answered](const detail::append_outcome& r) { answered = r.has_value(); };
    caf::anon_send(partition(), publish_atom::value, std::move(job));
    det.run();
    REQUIRE(answered);
  }

  void start() {
    runner = detail::spawn_runner(det.sys(), &ctx);
    det.run();
  }

  detail::partition_slot& slot() { return *ctx.routes.find(topic_name)->slots[0]; }
  caf::actor partition() { return ctx.routes.actor_of(*ctx.routes.find(topic_name), 0); }

  detail::instance_slot& instance(std::size_t agent = 0) {
    return *ctx.agents.at(agent)->instances[0];
  }

  caf::actor instance_actor(std::size_t agent = 0) {
    std::lock_guard<std::mutex> guard{ctx.agents.at(agent)->mutex};
    return instance(agent).actor;
  }

  void crash(const caf::actor& a) {
    REQUIRE(a);
    caf::anon_send_exit(a, caf::exit_reason::kill);
    det.run();
  }

  std::uint64_t cursor(std::size_t agent = 0) { return slot().groups[agent]->cursor.load(); }

private:
  std::size_t next_id_ = 0;
};

} // namespace

TEST_CASE("a crashed partition is restarted at once, then after waits that double and reset",
          "[unit][supervision]") {
  supervised_node node{{builtin_agent("ok", "echo")}};
  node.append(3);
  node.start();
  REQUIRE(node.slot().alive.load());
  CHECK(node.cursor() == 3); // the backlog was delivered and acked
  auto first = node.partition();

  node.crash(first); // the first death in a series: back at once
  REQUIRE(node.slot().alive.load());
  auto second = node.partition();
  CHECK(second != first);

  node.crash(second); // then 100 ms
  CHECK_FALSE(node.slot().alive.load());
  node.det.advance(99ms);
  CHECK_FALSE(node.slot().alive.load());
  node.det.advance(1ms);
  REQUIRE(node.slot().alive.load());

  node.crash(node.partition()); // then 200 ms
  node.det.advance(199ms);
  CHECK_FALSE(node.slot().alive.load());
  node.det.advance(1ms);
  REQUIRE(node.slot().alive.load());

  // A minute without dying: the next death is a new series, back at once.
  node.det.advance(61s);
  node.crash(node.partition());
  CHECK(node.slot().alive.load());
  // Each incarnation rebuilt its cursor from the log.
  node.publish(2);
  CHECK(node.cursor() == 5);
}

TEST_CASE("a crashed DLQ actor is restarted and counts the stored entries again",
          "[unit][supervision]") {
  auto bad = builtin_agent("bad", "fail");
  bad.max_retries = 0;
  supervised_node node{{bad}};
  node.append(4);
  node.start();
  CHECK(node.ctx.dlq_size.load() == 4); // each event failed once, then went to the DLQ
  CHECK(node.cursor() == 4);
  // One entry goes behind the actor's back: only a recount can see it.
  auto entries = node.store->dlq_list("", "", "", 1);
  REQUIRE(entries);
  REQUIRE(entries->size() == 1);
  persistence::state_batch b;
  b.delete_dlq(entries->front().id);
  REQUIRE(node.store->commit(b, false));
  auto first = node.ctx.dlq_actor();
  node.crash(first);
  auto second = node.ctx.dlq_actor();
  REQUIRE(second);
  CHECK(second != first);
  CHECK(node.ctx.dlq_size.load() == 3); // counted again from the store
}

TEST_CASE("a partition stores its dead letters while the DLQ actor restarts, which counts them",
          "[unit][supervision]") {
  auto bad = builtin_agent("bad", "fail");
  bad.max_retries = 0;
  supervised_node node{{bad}};
  node.start();
  // Two deaths in a row: the DLQ actor is back only after 100 ms.
  node.crash(node.ctx.dlq_actor());
  node.crash(node.ctx.dlq_actor());
  REQUIRE_FALSE(node.ctx.dlq_actor());
  node.publish(1);
  // The entry is in the partition's own batch, with the cursor past it.
  CHECK(node.cursor() == 1);
  CHECK(node.slot().groups[0]->totals.dead_lettered.load() == 1);
  auto stored = node.store->dlq_list("", "", "", 10);
  REQUIRE(stored);
  CHECK(stored->size() == 1);
  node.det.advance(100ms); // the DLQ actor is back and counts what is stored
  REQUIRE(node.ctx.dlq_actor());
  CHECK(node.ctx.dlq_size.load() == 1);
}

TEST_CASE("a crashed agent instance is restarted after 200 ms and delivery goes on",
          "[unit][supervision]") {
  supervised_node node{{builtin_agent("ok", "echo")}};
  node.start();
  auto first = node.instance_actor();
  node.crash(first);
  CHECK(node.instance().restarts.load() == 1);
  node.det.advance(199ms);
  CHECK(node.instance_actor() == first); // the handle is replaced on restart
  node.det.advance(1ms);
  auto second = node.instance_actor();
  REQUIRE(second);
  CHECK(second != first);
  node.publish(3);
  CHECK(node.cursor() == 3);
}

TEST_CASE("a crashed replay actor resumes after 1 s, five times, then the replay has failed",
          "[unit][supervision]") {
  auto slow = builtin_agent("slow", "fail");
  slow.max_retries = 1000;
  slow.backoff_initial = std::chrono::hours{1}; // the replay stays running
  slow.backoff_max = std::chrono::hours{1};
  supervised_node node{{slow}};
  node.append(2);
  node.start();
  replay_request req;
  req.from_us = 0;
  req.to_us = std::numeric_limits<std::int64_t>::max();
  auto record = detail::plan_replay(node.ctx, req, "rp-1", 1);
  REQUIRE(record);
  record->state = replay_state::running;
  REQUIRE_FALSE(detail::store_replay(*node.store, *record, false));
  caf::anon_send(node.runner, start_replay_atom::value, std::string{"rp-1"});
  node.det.run();
  auto running = [&node] {
    std::lock_guard<std::mutex> guard{node.ctx.replays_mutex};
    auto it = node.ctx.replays.find("rp-1");
    return it == node.ctx.replays.end() ? caf::actor{} : it->second;
  };
  auto state = [&node] {
    auto stored = detail::load_replay(*node.store, "rp-1");
    REQUIRE(stored);
    return stored->state;
  };
  for (int i = 0; i < 5; ++i) {
    auto a = running();
    REQUIRE(a);
    node.crash(a);
    CHECK_FALSE(running());
    node.det.advance(999ms);
    CHECK_FALSE(running());
    node.det.advance(1ms);
  }
  REQUIRE(running());
  node.crash(running()); // the sixth death: the policy gives up
  node.det.advance(2s);
  CHECK_FALSE(running());
  CHECK(state() == replay_state::failed);
}

TEST_CASE("groups made by XGROUP CREATE are stored and come back after the config's agents",
          "[supervision][groups]") {
  supervised_node n{{builtin_agent("a", "noop")}};
  auto made = [&](const std::string& name, std::vector<std::string> topics, bool earliest) {
    detail::agent_runtime agent{detail::redis_group_config(name, earliest), 9};
    REQUIRE(detail::store_redis_group(*n.store, agent, topics));
  };
  made("group:orders:w", {"orders", "omni-stream:mail"}, true);
  made("a", {"orders"}, false); // a config agent has this name: the config wins
  made("gone", {}, false);      // XGROUP DESTROY took its last stream
  made("group:orders:w", {"orders", "omni-stream:mail"}, true); // stored again: one record
  REQUIRE(detail::load_redis_groups(n.ctx));
  auto all = n.ctx.agents.all();
  REQUIRE(all.size() == 2);
  CHECK(all[0]->cfg.kind == config::agent_kind::builtin);
  auto& g = *all[1];
  CHECK(g.index == 1);
  CHECK(g.cfg.name == "group:orders:w");
  CHECK(g.cfg.kind == config::agent_kind::pull);
  CHECK(g.cfg.redis_group);
  CHECK(g.cfg.start == config::start_position::earliest);
  CHECK(g.cfg.max_in_flight == config::redis_group_max_in_flight);
  CHECK(g.topics() == std::vector<std::string>{"orders", "omni-stream:mail"});
  CHECK(g.subscribes("omni-stream:mail"));
  CHECK_FALSE(g.subscribes("omni-stream"));
  g.remove_topic("orders");
  CHECK_FALSE(g.subscribes("orders"));
}

TEST_CASE("an agent's topic patterns: '*' one token, '>' one or more at the end",
          "[unit][supervision][patterns]") {
  struct row {
    std::vector<std::string> patterns;
    std::vector<std::string> match, miss;
  };
  const std::vector<row> rows = {
    {{"docs.created"}, {"docs.created"}, {"docs", "docs.created.x", "docs.create"}},
    {{"orders.*"}, {"orders.eu"}, {"orders", "orders.eu.de", "order.eu"}},
    {{"a.*.c"}, {"a.b.c"}, {"a.b.d", "a.c"}},
    {{"logs.>"}, {"logs.x", "logs.x.y.z"}, {"logs", "logsx.y"}},
    {{">"}, {"t", "t.u"}, {}},
    {{"*"}, {"t"}, {"t.u"}},
    {{"x", "y.*"}, {"x", "y.z"}, {"z"}},
  };
  for (const auto& r : rows) {
    auto cfg = builtin_agent("p", "noop");
    cfg.topics = r.patterns;
    detail::agent_runtime agent{cfg, 0};
    std::string names;
    for (const auto& p : r.patterns)
      names += (names.empty() ? "" : ", ") + p;
    for (const auto& t : r.match) {
      INFO(names << " matches " << t);
      CHECK(agent.subscribes(t));
    }
    for (const auto& t : r.miss) {
      INFO(names << " does not match " << t);
      CHECK_FALSE(agent.subscribes(t));
    }
  }
}
