// The runner actor: supervision of partitions, agent instances and
// replays, topic creation, retention and storage resumption.
#include "actors/runner.hpp"

#include <algorithm>
#include <optional>
#include <shared_mutex>
#include <unordered_map>

#include <spdlog/spdlog.h>

#include "actors/dlq_actor.hpp"
#include "actors/replay_storage.hpp"
#include "actors/restart_policy.hpp"
#include "actors/runtime.hpp"
#include "persistence/delivery_store.hpp"
#include "persistence/event_log.hpp"

namespace nerve::actors::detail {

namespace {

/// What a monitored child of the runner is.
struct child_ref {
  std::shared_ptr<topic_route> route; ///< a partition, or
  std::uint32_t partition = 0;
  agent_ptr agent; ///< an agent instance, or
  std::size_t instance = 0;
  std::string replay; ///< a replay's id, or
  bool dlq = false;   ///< the DLQ actor
};

/// A partition that dies is restarted at once the first time, then with a
/// wait doubling from 100 ms to 5 s while it keeps dying within a minute.
const restart_policy::settings partition_restarts{true, std::chrono::milliseconds{100},
                                                  std::chrono::seconds{5}, std::chrono::minutes{1},
                                                  std::nullopt};
/// The DLQ actor restarts like a partition: it rebuilds its counts from
/// the store, and while it is down dead letters wait in their partitions.
const restart_policy::settings& dlq_restarts = partition_restarts;
/// An agent instance that dies is restarted after 200 ms, every time.
const restart_policy::settings instance_restarts{false, std::chrono::milliseconds{200},
                                                 std::chrono::milliseconds{200},
                                                 std::chrono::milliseconds{0}, std::nullopt};
/// A replay actor that crashes resumes after 1 s, 5 times; then it is failed.
const restart_policy::settings replay_restarts{
  false, std::chrono::seconds{1}, std::chrono::seconds{1}, std::chrono::milliseconds{0}, 5U};

struct runner_state {
  node_context* ctx = nullptr;
  std::unordered_map<caf::actor_addr, child_ref> children;
  bool stopping = false;
  /// Restart policies per child; the slots outlive their actors.
  std::unordered_map<const partition_slot*, restart_policy> partition_policies;
  std::unordered_map<const instance_slot*, restart_policy> instance_policies;
  std::unordered_map<std::string, restart_policy> replay_policies;
  restart_policy dlq_policy{dlq_restarts};
  static inline const char* name = "runner";
};

using runner_actor_t = runner_actor::stateful_pointer<runner_state>;

/// The restart policy of child `key`, made from `settings` at its first death.
template <class Key>
restart_policy& policy_for(std::unordered_map<Key, restart_policy>& policies, const Key& key,
                           const restart_policy::settings& settings) {
  return policies.try_emplace(key, settings).first->second;
}

void start_partition(runner_actor_t self, const std::shared_ptr<topic_route>& route,
                     std::uint32_t p) {
  auto& st = self->state;
  auto a = spawn_partition(self, st.ctx, route, p);
  st.children[a.address()] = child_ref{route, p, nullptr, 0, {}};
  {
    std::unique_lock<std::shared_mutex> guard{st.ctx->routes.mutex};
    route->slots[p]->actor = a;
  }
  route->slots[p]->alive = true;
}

void start_dlq(runner_actor_t self) {
  auto& st = self->state;
  dlq_deps deps;
  deps.log = st.ctx->log;
  deps.store = st.ctx->store;
  deps.size_gauge = &st.ctx->dlq_size;
  deps.counted = &st.ctx->dlq_counted;
  deps.find_partition = [ctx = st.ctx](const std::string& topic, std::uint32_t p) {
    auto route = ctx->routes.find(topic);
    if (!route || p >= route->slots.size())
      return caf::actor{};
    return ctx->routes.actor_of(*route, p);
  };
  if (st.ctx->replication)
    deps.lead_of = [ctx = st.ctx](const std::string& topic, std::uint32_t p) -> dlq_lead {
      auto role = ctx->routes.role_of(topic, p);
      if (!role)
        return {false, {}}; // not known here yet: no leader known either
      return {role->role == replica_role::kind::leader, role->leader};
    };
  auto a = caf::actor_cast<caf::actor>(spawn_dlq(self, std::move(deps)));
  child_ref ref;
  ref.dlq = true;
  st.children[a.address()] = ref;
  std::lock_guard<std::mutex> guard{st.ctx->dlq_mutex};
  st.ctx->dlq = a;
}

void start_instance(runner_actor_t self, const agent_ptr& agent, std::size_t i) {
  auto& st = self->state;
  auto a = spawn_instance(self, st.ctx, agent, i);
  st.children[a.address()] = child_ref{nullptr, 0, agent, i, {}};
  std::lock_guard<std::mutex> guard{agent->mutex};
  agent->instances[i]->actor = a;
}

void start_replay(runner_actor_t self, const std::string& id) {
  auto& st = self->state;
  auto a = spawn_replay(self, st.ctx, id);
  child_ref ref;
  ref.replay = id;
  st.children[a.address()] = ref;
  std::lock_guard<std::mutex> guard{st.ctx->replays_mutex};
  st.ctx->replays[id] = a;
}

/// The stored record of a replay whose state is running, if it is.
std::optional<replay_record> running_replay(const node_context& ctx, const std::string& id) {
  auto record = load_replay(*ctx.store, id);
  if (!record) {
    if (record.error().code != errc::not_found)
      spdlog::error("replay={}: {}", id, record.error().message);
    return std::nullopt;
  }
  if (record->state != replay_state::running)
    return std::nullopt;
  return std::move(*record);
}

/// A replay actor ended: done, cancelled, stopped with the node, or crashed.
void on_replay_down(runner_actor_t self, const std::string& id, const caf::error& reason) {
  auto& st = self->state;
  {
    std::lock_guard<std::mutex> guard{st.ctx->replays_mutex};
    st.ctx->replays.erase(id);
  }
  if (st.stopping || !reason)
    return;
  auto running = running_replay(*st.ctx, id);
  if (!running)
    return;
  auto& record = *running;
  auto& policy = policy_for(st.replay_policies, id, replay_restarts);
  auto delay = policy.on_death(self->clock().now());
  if (!delay) {
    record.state = replay_state::failed;
    record.error = "the replay actor crashed " + std::to_string(policy.restarts() + 1)
                   + " times; last: " + caf::to_string(reason);
    record.finished_us = st.ctx->log->opts().clock();
    (void)store_replay(*st.ctx->store, record, true);
    spdlog::error("replay={}: failed: {}", id, record.error);
    return;
  }
  spdlog::warn("replay={}: stopped ({}); resuming from its progress in {} ms", id,
               caf::to_string(reason), delay->count());
  self->delayed_send(self, *delay, start_replay_atom::value, id);
}

/// Cancels a replay: through its actor if it runs, else (it waits to resume
/// after a crash) in its stored record, which keeps it from resuming. Only
/// the runner starts replay actors, so no actor can start in between.
caf::result<caf::ok_atom> cancel_replay(runner_actor_t self, const std::string& id) {
  auto& st = self->state;
  caf::actor running;
  {
    std::lock_guard<std::mutex> guard{st.ctx->replays_mutex};
    if (auto it = st.ctx->replays.find(id); it != st.ctx->replays.end())
      running = it->second;
  }
  if (running) {
    auto rp = self->make_response_promise<caf::ok_atom>();
    self->request(running, caf::infinite, cancel_replay_atom::value)
      .then([rp](caf::ok_atom) mutable { rp.deliver(caf::ok_atom::value); },
            [rp](caf::error&) mutable {
              rp.deliver(caf::ok_atom::value); // it ended meanwhile: nothing runs
            });
    return rp;
  }
  if (auto record = running_replay(*st.ctx, id)) {
    record->state = replay_state::cancelled;
    record->finished_us = st.ctx->log->opts().clock();
    if (auto failed = store_replay(*st.ctx->store, *record, true))
      spdlog::error("replay={}: storing the cancel: {}", id, failed->message);
    else
      spdlog::info("replay={}: cancelled while waiting to resume", id);
  }
  return caf::ok_atom::value;
}

/// Starts the actors of the replays that were running when the node stopped.
void resume_replays(runner_actor_t self) {
  auto stored = load_replays(*self->state.ctx->store);
  if (!stored) {
    spdlog::error("reading replays: {}", stored.error().message);
    return;
  }
  for (auto& record : *stored)
    if (record.state == replay_state::running)
      start_replay(self, record.id);
}

std::shared_ptr<topic_route> open_topic(runner_actor_t self, const persistence::topic_info& t) {
  auto& ctx = *self->state.ctx;
  auto route = std::make_shared<topic_route>();
  route->info = t;
  for (std::uint32_t p = 0; p < t.partitions; ++p) {
    auto slot = std::make_unique<partition_slot>();
    for (auto& agent : ctx.agents.all())
      if (agent->subscribes(t.name)) {
        auto gs = std::make_unique<group_stats>();
        gs->agent = agent->cfg.name;
        gs->agent_index = agent->index;
        slot->groups.push_back(std::move(gs));
      }
    route->slots.push_back(std::move(slot));
  }
  // Publishers see the topic only once every partition has its actor.
  for (std::uint32_t p = 0; p < t.partitions; ++p)
    start_partition(self, route, p);
  {
    std::unique_lock<std::shared_mutex> guard{ctx.routes.mutex};
    ctx.routes.topics[t.name] = route;
  }
  return route;
}

/// XGROUP DESTROY: group `name` (made by XGROUP CREATE) stops reading
/// `topic`: its partitions drop it, then its queue forgets the stream's
/// deliveries. False when the group does not read the stream.
caf::result<bool> destroy_group(runner_actor_t self, const std::string& name,
                                const std::string& topic) {
  auto& ctx = *self->state.ctx;
  auto route = ctx.routes.find(topic);
  if (!route)
    return make_caf_error(errc::not_found, "no stream '" + topic + "'");
  auto agent = find_agent(ctx, name);
  if (!agent || !agent->subscribes(topic))
    return false;
  if (!agent->cfg.redis_group)
    return make_caf_error(errc::invalid,
                          "group '" + name + "' is an agent of the config; remove it there");
  auto topics = agent->topics();
  topics.erase(std::remove(topics.begin(), topics.end(), topic), topics.end());
  if (auto stored = store_redis_group(*ctx.store, *agent, topics); !stored)
    return make_caf_error(errc::storage, stored.error().message);
  agent->remove_topic(topic);
  for (std::uint32_t p = 0; p < route->slots.size(); ++p) {
    for (auto* gs : route->slots[p]->group_list())
      if (gs->agent == name)
        gs->retired = true;
    if (auto actor = ctx.routes.actor_of(*route, p))
      caf::anon_send(actor, leave_group_atom::value, name);
  }
  // After the partitions' messages: the answers this sends find the group
  // gone there.
  caf::actor queue;
  {
    std::lock_guard<std::mutex> guard{agent->mutex};
    queue = agent->instances[0]->actor;
  }
  if (queue)
    caf::anon_send(queue, pull_consumer_atom::value, topic, std::string{}, std::int32_t{-2});
  spdlog::info("group={} topic={}: destroyed by XGROUP DESTROY", name, topic);
  return true;
}

/// How often a log that refuses writes is asked to recover.
constexpr auto storage_resume_every = std::chrono::seconds{1};

void schedule_sweep(runner_actor_t self) {
  auto retention = self->state.ctx->cfg->storage.retention;
  if (retention.count() == 0)
    return;
  auto every = std::min<std::chrono::milliseconds>(retention / 10, std::chrono::seconds{60});
  self->delayed_send(self, std::max(every, std::chrono::milliseconds{100}), sweep_atom::value);
}

/// The DLQ actor stops last: partitions and replays hand it dead letters
/// until they are down.
void stop_dlq_when_alone(runner_actor_t self) {
  auto& st = self->state;
  if (st.children.size() != 1 || !st.children.begin()->second.dlq)
    return;
  self->send_exit(caf::actor_cast<caf::actor>(st.children.begin()->first),
                  caf::exit_reason::user_shutdown);
}

void on_child_down(runner_actor_t self, caf::down_msg& msg) {
  auto& st = self->state;
  auto it = st.children.find(msg.source);
  if (it == st.children.end())
    return;
  auto ref = it->second;
  st.children.erase(it);
  if (ref.route)
    ref.route->slots[ref.partition]->alive = false;
  if (!ref.replay.empty())
    on_replay_down(self, ref.replay, msg.reason);
  if (ref.dlq) {
    std::lock_guard<std::mutex> guard{st.ctx->dlq_mutex};
    st.ctx->dlq = nullptr;
  }
  if (st.stopping) {
    stop_dlq_when_alone(self);
    if (st.children.empty())
      self->quit();
    return;
  }
  if (!ref.replay.empty())
    return;
  if (ref.dlq) {
    auto delay = *st.dlq_policy.on_death(self->clock().now());
    spdlog::warn("dlq: stopped ({}); restarting in {} ms", caf::to_string(msg.reason),
                 delay.count());
    if (delay.count() == 0)
      start_dlq(self);
    else
      self->delayed_send(self, delay, restart_dlq_atom::value);
    return;
  }
  if (ref.route && msg.reason == caf::exit_reason::user_shutdown) {
    // A replicated partition changed role: its successor starts at once.
    start_partition(self, ref.route, ref.partition);
    return;
  }
  if (ref.route) {
    const partition_slot* slot = ref.route->slots[ref.partition].get();
    // Never empty: the policy has no limit of restarts.
    auto delay
      = *policy_for(st.partition_policies, slot, partition_restarts).on_death(self->clock().now());
    spdlog::warn("topic={} partition={}: stopped ({}); restarting in {} ms", ref.route->info.name,
                 ref.partition, caf::to_string(msg.reason), delay.count());
    if (delay.count() == 0)
      start_partition(self, ref.route, ref.partition);
    else
      self->delayed_send(self, delay, restart_partition_atom::value, ref.route->info.name,
                         ref.partition);
    return;
  }
  // An agent instance died: its deliveries in flight go out again.
  auto& slot = *ref.agent->instances[ref.instance];
  slot.state = instance_state::crashed;
  ref.agent->credits.reset(ref.instance);
  ++slot.restarts;
  {
    std::shared_lock<std::shared_mutex> guard{st.ctx->routes.mutex};
    for (auto& [name, route] : st.ctx->routes.topics)
      for (auto& ps : route->slots)
        if (ps->alive)
          caf::anon_send(ps->actor, requeue_atom::value,
                         static_cast<std::uint64_t>(ref.agent->index),
                         static_cast<std::uint64_t>(ref.instance));
  }
  const instance_slot* key = &slot;
  auto delay
    = *policy_for(st.instance_policies, key, instance_restarts).on_death(self->clock().now());
  spdlog::warn("agent={} instance={}: stopped ({}); restarting in {} ms", ref.agent->cfg.name,
               ref.instance, caf::to_string(msg.reason), delay.count());
  self->delayed_send(self, delay, restart_instance_atom::value, ref.agent->cfg.name,
                     static_cast<std::uint32_t>(ref.instance));
}

/// The route of `topic`, created first when there is none (with `n`
/// partitions, 0: as configured, and id `id`, 0: the log picks).
result<std::shared_ptr<topic_route>> open_or_create(runner_actor_t self, const std::string& topic,
                                                    std::uint32_t partitions, std::uint32_t id) {
  auto& st = self->state;
  if (st.stopping)
    return tl::make_unexpected(error{errc::unavailable, "the node is shutting down"});
  if (auto route = st.ctx->routes.find(topic))
    return route;
  auto created = st.ctx->log->create_topic(
    topic, partitions != 0 ? partitions : st.ctx->cfg->partitions_for(topic),
    id != 0 ? std::optional<std::uint32_t>{id} : std::nullopt);
  if (!created)
    return tl::make_unexpected(error{errc::storage, created.error().message});
  auto route = open_topic(self, *created);
  spdlog::info("topic={}: created with {} partitions", created->name, created->partitions);
  return route;
}

caf::result<std::uint32_t> create_topic(runner_actor_t self, const std::string& topic,
                                        std::uint32_t partitions, std::uint32_t id) {
  auto route = open_or_create(self, topic, partitions, id);
  if (!route)
    return make_caf_error(route.error().code, route.error().message);
  return (*route)->info.partitions;
}

/// XGROUP CREATE: group `name` reads `topic` from now on, from its start
/// (`earliest`) or its end; a new group is a pull agent with Redis'
/// semantics, stored so that it is back after a restart. False when the
/// group reads the stream already (BUSYGROUP).
caf::result<bool> create_group(runner_actor_t self, const std::string& name,
                               const std::string& topic, bool earliest, bool mkstream) {
  auto& st = self->state;
  auto& ctx = *st.ctx;
  if (ctx.cfg->cluster.enabled())
    return make_caf_error(errc::invalid,
                          "a cluster's consumer groups are pull agents of the config (XGROUP "
                          "CREATE makes them on a single node)");
  if (!config::valid_agent_name(name))
    return make_caf_error(errc::invalid, "'" + name + "' is not a valid group name");
  auto route = ctx.routes.find(topic);
  if (!route && !mkstream)
    return make_caf_error(errc::not_found, "no stream '" + topic + "'");
  auto agent = find_agent(ctx, name);
  if (agent && agent->subscribes(topic))
    return false;
  if (agent && !agent->cfg.redis_group)
    return make_caf_error(errc::invalid, "group '" + name
                                           + "' is an agent of the config that does not read '"
                                           + topic + "'; add the stream to its topics there");
  if (!route) {
    if (!config::valid_topic_name(topic))
      return make_caf_error(errc::invalid, "'" + topic + "' is not a valid stream name");
    auto made = open_or_create(self, topic, 0, 0);
    if (!made)
      return make_caf_error(made.error().code, made.error().message);
    route = *made;
  }
  bool fresh = !agent;
  if (fresh)
    agent = std::make_shared<agent_runtime>(redis_group_config(name, earliest), ctx.agents.size());
  auto topics = agent->topics();
  topics.push_back(topic);
  if (auto stored = store_redis_group(*ctx.store, *agent, topics); !stored)
    return make_caf_error(errc::storage, stored.error().message);
  agent->add_topic(topic);
  if (fresh) {
    ctx.agents.add(agent);
    start_instance(self, agent, 0);
  }
  // Each partition's actor starts the group; one that restarts meanwhile
  // finds it in its slot. A group destroyed on this stream before has its
  // counters there still.
  for (std::uint32_t p = 0; p < route->slots.size(); ++p) {
    {
      auto& slot = *route->slots[p];
      std::lock_guard<std::mutex> guard{slot.groups_mutex};
      auto it = std::find_if(slot.groups.begin(), slot.groups.end(),
                             [&](auto& gs) { return gs->agent == name; });
      if (it != slot.groups.end()) {
        (*it)->retired = false;
      } else {
        auto gs = std::make_unique<group_stats>();
        gs->agent = name;
        gs->agent_index = agent->index;
        slot.groups.push_back(std::move(gs));
      }
    }
    if (auto actor = ctx.routes.actor_of(*route, p)) {
      {
        // The lane shut until the actor has joined (partition_slot::
        // joins_pending): publishes from here on queue behind the join in
        // the actor's mailbox instead of passing it, so a group made at the
        // end reads every event published after this answer.
        auto& slot = *route->slots[p];
        std::lock_guard<std::mutex> guard{slot.lane_mutex};
        slot.close_lane();
        ++slot.joins_pending;
      }
      caf::anon_send(actor, join_group_atom::value, name, earliest);
    }
  }
  spdlog::info("group={} topic={}: made by XGROUP CREATE, from the stream's {}", name, topic,
               earliest ? "start" : "end");
  return true;
}

/// Retention: removes events older than storage.retention, a chunk at a
/// time, and comes back at once while there is more.
void sweep(runner_actor_t self) {
  auto& st = self->state;
  if (st.stopping)
    return;
  auto cutoff = st.ctx->log->opts().clock() - st.ctx->cfg->storage.retention.count() * 1000;
  constexpr std::size_t chunk = 10000;
  auto n = st.ctx->log->sweep_before(cutoff, chunk);
  if (!n)
    spdlog::error("retention: {}", n.error().message);
  else if (*n > 0)
    spdlog::info("retention removed {} events older than {}", *n,
                 persistence::format_time_us(cutoff));
  if (n && *n == chunk)
    self->send(self, sweep_atom::value);
  else
    schedule_sweep(self);
}

/// The node stops: every child is told to stop; the runner quits once the
/// last one is down.
void stop(runner_actor_t self) {
  auto& st = self->state;
  st.stopping = true;
  if (st.children.empty()) {
    self->quit();
    return;
  }
  stop_dlq_when_alone(self);
  // Partitions first: each commits what its mailbox holds. Agents stop
  // after, so a late answer still finds its partition (or is redelivered).
  {
    std::shared_lock<std::shared_mutex> guard{st.ctx->routes.mutex};
    for (auto& [name, route] : st.ctx->routes.topics)
      for (auto& slot : route->slots)
        if (slot->alive)
          caf::anon_send(slot->actor, stop_atom::value);
  }
  {
    std::lock_guard<std::mutex> guard{st.ctx->replays_mutex};
    for (auto& [id, actor] : st.ctx->replays)
      caf::anon_send(actor, stop_atom::value);
  }
  for (auto& agent : st.ctx->agents.all()) {
    std::lock_guard<std::mutex> guard{agent->mutex};
    for (auto& inst : agent->instances)
      if (inst->actor)
        caf::anon_send(inst->actor, stop_atom::value);
  }
}

runner_actor::behavior_type runner_behavior(runner_actor_t self, node_context* ctx) {
  auto& st = self->state;
  st.ctx = ctx;
  start_dlq(self); // first: partitions hand it their dead letters
  for (auto& agent : ctx->agents.all())
    for (std::size_t i = 0; i < agent->instances.size(); ++i)
      start_instance(self, agent, i);
  for (auto& t : ctx->log->topics())
    open_topic(self, t);
  schedule_sweep(self);
  self->delayed_send(self, storage_resume_every, resume_atom::value);
  resume_replays(self);
  self->set_down_handler([=](caf::down_msg& msg) { on_child_down(self, msg); });
  return {
    [=](ready_atom) { return true; },
    [=](create_topic_atom, const std::string& topic, std::uint32_t partitions, std::uint32_t id) {
      return create_topic(self, topic, partitions, id);
    },
    [=](create_group_atom, const std::string& name, const std::string& topic, bool earliest,
        bool mkstream) { return create_group(self, name, topic, earliest, mkstream); },
    [=](destroy_group_atom, const std::string& name, const std::string& topic) {
      return destroy_group(self, name, topic);
    },
    [=](restart_partition_atom, const std::string& topic, std::uint32_t p) {
      auto& st = self->state;
      if (st.stopping)
        return;
      if (auto route = st.ctx->routes.find(topic); route && !route->slots[p]->alive)
        start_partition(self, route, p);
    },
    [=](restart_instance_atom, const std::string& agent, std::uint32_t i) {
      auto& st = self->state;
      if (st.stopping)
        return;
      for (auto& a : st.ctx->agents.all())
        if (a->cfg.name == agent && i < a->instances.size())
          start_instance(self, a, i);
    },
    [=](restart_dlq_atom) {
      if (!self->state.stopping)
        start_dlq(self);
    },
    [=](start_replay_atom, const std::string& id) {
      // Not one cancelled while it waited to resume.
      if (!self->state.stopping && running_replay(*self->state.ctx, id))
        start_replay(self, id);
    },
    [=](cancel_replay_atom, const std::string& id) { return cancel_replay(self, id); },
    [=](resume_atom) {
      // A log that refused a write (a full disk) takes writes again once
      // RocksDB can flush: partitions that stopped meanwhile are restarted
      // by their supervision and rebuild from the log.
      auto& st = self->state;
      if (st.stopping)
        return;
      st.ctx->log->resume(); // nothing to do while it takes writes
      self->delayed_send(self, storage_resume_every, resume_atom::value);
    },
    [=](sweep_atom) { sweep(self); },
    [=](stop_atom) { stop(self); },
  };
}

} // namespace

runner_actor spawn_runner(caf::actor_system& system, node_context* ctx) {
  // Detached: topic creation and retention sweeps write to the disk, which
  // the scheduler thread of the partitions must never wait for.
  if (ctx->detach_blocking)
    return system.spawn<caf::detached>(runner_behavior, ctx);
  return system.spawn(runner_behavior, ctx);
}

} // namespace nerve::actors::detail
