// The state the actors and services of one node share: partitions and their
// routes, agents and their instances, counters, live tails, and the requests
// the publish path queues on partitions. Owned by the node; outlives the
// actors. Shared counters are atomics so the HTTP side can read them without
// asking an actor. Only caf::actor (a handle) from CAF: services include this
// header, not caf/all.hpp.
#pragma once

#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <shared_mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include <caf/actor.hpp>
#include <nlohmann/json.hpp>

#include "actors/credit_pool.hpp"
#include "actors/group_event.hpp"
#include "actors/node.hpp"
#include "actors/progress_waiters.hpp"
#include "actors/tracing.hpp"
#include "config/config.hpp"
#include "persistence/delivery_store.hpp"
#include "persistence/event_log.hpp"

namespace nerve::actors {
class repl_sessions;
} // namespace nerve::actors

namespace nerve::actors::detail {

using append_outcome = tl::expected<std::vector<persistence::append_result>, persistence::error>;

/// One partition's share of a publish request. Answers exactly once: on
/// flush, or with an error when it is destroyed unanswered (its partition
/// actor died).
struct partition_job {
  std::vector<persistence::new_event> events;
  std::function<void(append_outcome)> done;
  std::atomic<std::uint64_t>* queued = nullptr; ///< the slot's counter
  /// On its way to the partition actor: the slot's partition_slot::to_actor,
  /// given back when the actor takes the job (or the job is dropped).
  std::atomic<std::int64_t>* ticket = nullptr;

  void finish(append_outcome r);
  /// Gives the ticket back, if the job holds one.
  void release_ticket();
  ~partition_job();
};

using job_ptr = std::shared_ptr<partition_job>;

/// Answers each job with its share of `results`, in batch order (spends them).
void answer_jobs(const std::vector<job_ptr>& jobs,
                 std::vector<persistence::append_result>& results);

/// Raises `a` to `v` unless it is higher already: an earlier incarnation of
/// the partition actor may still report a lower offset.
void raise_to(std::atomic<std::uint64_t>& a, std::uint64_t v);

struct partition_slot;
/// A single-node partition's appends below `end` are durable: raises the
/// slot's durable end and each of its groups' ends, before any publisher
/// hears of it (so metrics and each group's lag never lag a 201). Answers
/// whether groups read the partition (then its actor must hear of it).
bool raise_durable(partition_slot& slot, std::uint64_t end);

/// A topic creation request, answered on the runner.
struct create_request {
  std::string topic;
  std::uint32_t partitions = 0; ///< 0: as configured (a peer's home node may say otherwise)
  std::uint32_t id = 0;         ///< 0: the log picks; a replicated topic has the cluster's
  std::function<void(std::optional<std::string>)> done; ///< error text or nothing
};

using create_ptr = std::shared_ptr<create_request>;

/// Bucket upper bounds of latencies, in milliseconds (last: +inf).
inline constexpr std::array<double, 20> latency_bounds_ms
  = {0.1, 0.25, 0.5,  1,    2.5,  5,     10,    25,    50,     100,
     250, 500,  1000, 2500, 5000, 10000, 30000, 60000, 300000, 1e300};

/// A fixed-bucket latency histogram that can be persisted and summed.
struct latency_histogram {
  std::atomic<std::uint64_t> sum_us{0};
  std::array<std::atomic<std::uint64_t>, latency_bounds_ms.size()> buckets{};

  void observe(std::int64_t us);
  [[nodiscard]] nlohmann::json to_json() const;
  void load_json(const nlohmann::json& j);
};

/// All-time counters of one agent on one partition; persisted in `meta`.
struct counters {
  std::atomic<std::uint64_t> received{0}; ///< attempts handed to the agent
  std::atomic<std::uint64_t> processed{0};
  std::atomic<std::uint64_t> failed{0}; ///< failed or timed-out attempts
  std::atomic<std::uint64_t> timed_out{0};
  std::atomic<std::uint64_t> retried{0};
  std::atomic<std::uint64_t> dead_lettered{0};
  latency_histogram processing; ///< each answered attempt, in the agent
  latency_histogram delivery;   ///< append to ack, for events delivered live

  [[nodiscard]] std::string to_json() const;
  void load_json(const std::string& text);
};

/// One agent's consumer group on one partition, as others may read it.
struct group_stats {
  std::string agent;
  std::size_t agent_index = 0;
  std::atomic<std::uint64_t> cursor{0};
  std::atomic<std::uint64_t> end{0};       ///< the partition's next offset
  std::atomic<std::uint64_t> in_flight{0}; ///< delivered, not answered
  std::atomic<std::uint64_t> waiting_retry{0};
  /// Offsets below the cursor sent again (a DLQ retry) and not yet handed
  /// to an instance: the lag does not show them.
  std::atomic<std::uint64_t> redelivering{0};
  std::atomic<std::int64_t> last_delivered{-1}; ///< offset, -1 before the first
  counters totals;
  /// XGROUP DESTROY took the stream from the group: a partition actor that
  /// starts leaves it out (until XGROUP CREATE makes it again).
  std::atomic<bool> retired{false};
};

enum class instance_state : int { starting, running, restarting, crashed, stopped };

[[nodiscard]] const char* to_string(instance_state s);

/// One instance of an agent. The actor handle changes on restart.
struct instance_slot {
  caf::actor actor; ///< guarded by agent_runtime::mutex
  std::atomic<instance_state> state{instance_state::starting};
  std::atomic<int> pid{0};
  std::atomic<std::uint32_t> restarts{0};
};

/// An agent from the config, with its live instances.
struct agent_runtime {
  /// The agent `c`, the `index`-th configured, with its instance slots.
  agent_runtime(config::agent_config c, std::size_t index);

  config::agent_config cfg;
  std::size_t index = 0;
  std::vector<std::unique_ptr<instance_slot>> instances;
  std::atomic<bool> paused{false};
  std::mutex mutex; ///< guards instance actor handles
  mutable std::mutex topics_mutex;
  std::vector<std::string> added_topics; ///< guarded by topics_mutex (XGROUP CREATE)
  /// Deliveries in flight per instance, within max_in_flight.
  basic_credit_pool<caf::actor> credits;

  /// Whether `topic` matches one of the agent's patterns.
  [[nodiscard]] bool subscribes(const std::string& topic) const;
  /// The agent's topic patterns now: cfg.topics, and for a group made by
  /// XGROUP CREATE the streams added to it since.
  [[nodiscard]] std::vector<std::string> topics() const;
  /// Adds a stream to a group made by XGROUP CREATE.
  void add_topic(const std::string& topic);
  /// Takes a stream from a group made by XGROUP CREATE.
  void remove_topic(const std::string& topic);
  /// Takes one credit from the next instance with room, round-robin from
  /// `rr`; returns the instance index and actor, or nothing when all are full
  /// (then `partition` is woken when one frees up).
  [[nodiscard]] std::optional<std::pair<std::size_t, caf::actor>>
  take_credit(std::size_t& rr, const caf::actor& partition);
  /// Gives a credit back and wakes the partitions that waited for one.
  void return_credit(std::size_t instance);
  /// return_credit() for a builtin delivery answered inline, which races
  /// with a reset of the instance's credits (credit_pool::give_back_unless_reset).
  void return_inline_credit(std::size_t instance);
  /// Wakes the partitions that waited for a credit (an instance came up).
  void wake_all();
  /// Deliveries of `instance` in flight.
  [[nodiscard]] std::uint32_t in_flight(std::size_t instance) const {
    return credits.in_flight(instance);
  }
};

using agent_ptr = std::shared_ptr<agent_runtime>;

/// The node's agents: those of the config, then the groups XGROUP CREATE
/// made (which join while the node runs). Readers take a snapshot; an
/// agent's index is its place in the list and never changes.
class agent_list {
public:
  /// The list at one moment; it stays valid while held (a range-for over
  /// all() holds it for the loop).
  struct snapshot {
    std::shared_ptr<const std::vector<agent_ptr>> list;
    [[nodiscard]] auto begin() const { return list->begin(); }
    [[nodiscard]] auto end() const { return list->end(); }
    [[nodiscard]] std::size_t size() const { return list->size(); }
    [[nodiscard]] const agent_ptr& operator[](std::size_t i) const { return (*list)[i]; }
  };

  [[nodiscard]] snapshot all() const {
    std::lock_guard<std::mutex> guard{mutex_};
    return {list_};
  }
  [[nodiscard]] agent_ptr at(std::size_t index) const { return all()[index]; }
  [[nodiscard]] std::size_t size() const { return all().size(); }
  /// Appends `a`, whose index must be size().
  void add(agent_ptr a) {
    std::lock_guard<std::mutex> guard{mutex_};
    auto next = std::make_shared<std::vector<agent_ptr>>(*list_);
    next->push_back(std::move(a));
    list_ = std::move(next);
  }

private:
  mutable std::mutex mutex_;
  std::shared_ptr<const std::vector<agent_ptr>> list_
    = std::make_shared<const std::vector<agent_ptr>>();
};

/// A replicated partition's place in its replica set, as the control plane
/// last read it from etcd (actors/control_plane.hpp).
struct replica_role {
  enum class kind : std::uint8_t { none, leader, follower };
  kind role = kind::none;  ///< none: no leader now, or this node holds no copy
  std::uint32_t epoch = 0; ///< the leader's
  std::string leader;      ///< empty: none
  std::vector<std::string> replicas;
  std::vector<std::string> in_sync;

  [[nodiscard]] bool in_sync_has(const std::string& node) const {
    for (auto& n : in_sync)
      if (n == node)
        return true;
    return false;
  }
};

/// A follower as its leader last heard of it, for GET /v1/cluster/partitions.
struct follower_view {
  std::string node;
  std::uint64_t synced_end = 0;
  std::int64_t last_fetch_us = 0; ///< 0: none in this epoch
};

/// A partition as the publish path sees it. The actor handle changes when
/// the runner restarts the partition; the group stats outlive restarts.
struct partition_slot {
  caf::actor actor; ///< guarded by routing::mutex
  /// The publish lane (publish_lane.hpp): while the partition's actor lends
  /// its writer here (it has nothing of its own to append and no
  /// replication role), publishing threads append with it themselves,
  /// holding lane_mutex, and the actor takes it back (under the same lock)
  /// before anything else touches the writer.
  std::mutex lane_mutex;
  persistence::partition_writer* lane = nullptr; ///< guarded by lane_mutex
  std::atomic<bool> lane_open{false};            ///< lane != nullptr, read without the lock
  /// Consumer groups read the partition: the lane keeps what it appends in
  /// `lane_appended` (offset order, at most lane_appended_max, the oldest
  /// dropped) for the actor's tail cache, which takes them under the lock.
  bool lane_feeds = false;               ///< guarded by lane_mutex
  std::deque<group_event> lane_appended; ///< guarded by lane_mutex
  static constexpr std::size_t lane_appended_max = 4096;
  /// XGROUP CREATE joins sent to the actor and not yet handled: the lane
  /// stays shut meanwhile, so a publish made after XGROUP CREATE's answer
  /// queues behind the join instead of passing it. Guarded by lane_mutex.
  std::uint32_t joins_pending = 0;
  /// Shuts the lane (the caller holds lane_mutex): publishes go to the actor.
  void close_lane() {
    lane = nullptr;
    lane_open.store(false);
  }
  /// Publish jobs on their way to the actor (partition_job::ticket): the
  /// lane opens only when there are none, so a connection's pipelined
  /// publishes never overtake each other between the two paths.
  std::atomic<std::int64_t> to_actor{0};
  std::atomic<std::uint64_t> queued{0};
  std::atomic<std::uint64_t> durable_end{0}; ///< offsets below are appended and durable
  std::atomic<bool> alive{false};
  std::atomic<bool> recovered{false}; ///< its first actor rebuilt its state from the log
  /// One per subscribed agent; XGROUP CREATE adds to it (never removes),
  /// so read it with group_list().
  std::vector<std::unique_ptr<group_stats>> groups; ///< guarded by groups_mutex
  mutable std::mutex groups_mutex;

  /// The groups now (they live as long as the slot).
  [[nodiscard]] std::vector<group_stats*> group_list() const {
    std::lock_guard<std::mutex> guard{groups_mutex};
    std::vector<group_stats*> out;
    out.reserve(groups.size());
    for (auto& g : groups)
      out.push_back(g.get());
    return out;
  }
  // Replication (cluster step 2); `role` stays null on a partition that is not replicated.
  mutable std::mutex role_mutex;
  std::shared_ptr<const replica_role> role;     ///< guarded by role_mutex; set by the control plane
  std::atomic<std::uint64_t> high_watermark{0}; ///< below: on every in-sync copy
  std::atomic<std::uint64_t> log_end{0};        ///< this copy's next offset
  /// A follower's copy reached its leader's high watermark (at least once).
  std::atomic<bool> caught_up{false};
  /// A leader handing the partition to its preferred replica: it appends
  /// nothing new (publishes wait for the next leader) and sets `drained`
  /// once every append it made is acknowledged, so the hand-over answers
  /// nothing "indeterminate".
  std::atomic<bool> draining{false};
  std::atomic<bool> drained{false};
  /// The leader epoch the drain is for: a flag left from an earlier
  /// leadership is not this one's.
  std::atomic<std::uint32_t> drain_epoch{0};
  std::vector<follower_view> followers; ///< guarded by role_mutex; leader only

  [[nodiscard]] std::shared_ptr<const replica_role> current_role() const {
    std::lock_guard<std::mutex> guard{role_mutex};
    return role;
  }
};

struct topic_route {
  persistence::topic_info info;
  std::vector<std::unique_ptr<partition_slot>> slots;
  std::atomic<std::uint64_t> round_robin{0};
  /// Counts the progress of the topic's consumer groups (cursor moves,
  /// settled deliveries; this process's life): the `index` of
  /// GET /v1/topics/{t}/groups.
  std::atomic<std::uint64_t> progress{0};
};

struct routing {
  mutable std::shared_mutex mutex;
  std::unordered_map<std::string, std::shared_ptr<topic_route>> topics;

  [[nodiscard]] std::shared_ptr<topic_route> find(const std::string& name) const;
  /// A copy of the current actor of one partition.
  [[nodiscard]] caf::actor actor_of(const topic_route& route, std::uint32_t partition) const;
  /// The replicated role of (topic, p) as the control plane last gave it;
  /// null when the partition is not known here (or not replicated).
  [[nodiscard]] std::shared_ptr<const replica_role> role_of(const std::string& topic,
                                                            std::uint32_t p) const;
};

/// Answers a request made of an actor: empty on success, else the error.
using reply_ptr = std::shared_ptr<std::function<void(std::string)>>;

using publish_fn = std::function<void(const std::string& topic, std::vector<publish_item>,
                                      callback<std::vector<published>>)>;

/// Live tails (WebSocket followers) per topic. Publishing checks `active`
/// first, so a node without followers pays one atomic load per commit.
struct tail_hub {
  struct entry {
    std::string topic;
    tail_sink sink;
  };
  std::mutex mutex;
  std::unordered_map<std::string, std::vector<std::weak_ptr<entry>>> by_topic;
  std::atomic<std::size_t> active{0};

  [[nodiscard]] std::shared_ptr<entry> add(const std::string& topic, tail_sink sink);
  /// Hands durable events of `topic` to its followers.
  void deliver(const std::string& topic, const std::vector<std::string>& events);
};

/// What replicated partitions ask of the rest of their node: the control
/// plane (an in-sync set change, by compare-and-swap in etcd) and the links
/// to the other members (a follower fetches from its leader's cluster actor).
struct replication_hooks {
  std::string self; ///< this node's id
  std::uint32_t min_insync = 1;
  std::chrono::milliseconds replica_lag{2000};
  /// Asks for partition (topic, p)'s in-sync set to become `in_sync` in
  /// `epoch`; the outcome comes back as a role change.
  std::function<void(const std::string& topic, std::uint32_t p, std::uint32_t epoch,
                     std::vector<std::string> in_sync)>
    change_in_sync;
  /// Sends a link frame (messages.hpp, link_op) to member `node`; false
  /// while there is no link to it.
  std::function<bool(const std::string& node, std::string frame)> send;
  /// Fetches and their answers go through the node's fetch sessions.
  std::shared_ptr<repl_sessions> sessions;
};

/// What the actors of one node share. Owned by the node; outlives the actors.
struct node_context {
  /// Actors that block (the runner, replays, process and http instances)
  /// get threads of their own. Tests on CAF's deterministic scheduler turn
  /// this off, so that every actor runs there (and use builtin agents only).
  bool detach_blocking = true;
  persistence::event_log* log = nullptr;
  persistence::delivery_store* store = nullptr;
  const config::config* cfg = nullptr;
  const node_hooks* hooks = nullptr;
  agent_list agents;
  routing routes;
  publish_fn publish;
  /// DLQ entries; written only by the DLQ actor (no I/O to read it).
  std::atomic<std::uint64_t> dlq_size{0};
  std::atomic<bool> dlq_counted{false}; ///< the DLQ actor counted the stored entries
  mutable std::mutex dlq_mutex;         ///< guards `dlq`
  caf::actor dlq;                       ///< the DLQ actor now running (changes on restart)

  /// A copy of the DLQ actor's handle; invalid while it restarts.
  [[nodiscard]] caf::actor dlq_actor() const {
    std::lock_guard<std::mutex> guard{dlq_mutex};
    return dlq;
  }
  tail_hub tails;
  /// Requests waiting for a cursor to move (GET groups with wait_ms).
  progress_waiters progress;
  /// Set when partitions are replicated (cluster.replication_factor > 1).
  std::shared_ptr<replication_hooks> replication;
  std::mutex replays_mutex;
  std::unordered_map<std::string, caf::actor> replays; ///< running replay actors by id
  /// OTLP trace export; null when tracing is off (config tracing.otlp.endpoint).
  std::shared_ptr<tracer> tracing;
};

/// meta key of the offset a consumer group started at (its first cursor).
[[nodiscard]] inline std::string group_start_key(const std::string& agent, std::uint32_t topic_id,
                                                 std::uint32_t partition) {
  return "start/" + agent + "/" + std::to_string(topic_id) + "/" + std::to_string(partition);
}

/// The offset an agent's consumer group on a partition started at, if it
/// ever had one there (read from `meta`).
[[nodiscard]] tl::expected<std::optional<std::uint64_t>, error>
group_start(const node_context& ctx, const std::string& agent, std::uint32_t topic_id,
            std::uint32_t partition);

/// A storage failure as the node's callers see it.
[[nodiscard]] inline error from_storage(const persistence::error& e) {
  return {errc::storage, e.message};
}

/// The config of a consumer group XGROUP CREATE makes: a pull agent with
/// Redis' semantics (config::agent_config::redis_group), from the start of
/// its first stream or its end.
[[nodiscard]] config::agent_config redis_group_config(const std::string& name, bool earliest);

/// Stores the definition of group `a` (made by XGROUP CREATE) with its
/// streams `topics`, synced: the group is there again after a restart.
[[nodiscard]] tl::expected<void, persistence::error>
store_redis_group(persistence::delivery_store& store, const agent_runtime& a,
                  const std::vector<std::string>& topics);

/// Appends the stored groups of XGROUP CREATE to `ctx.agents` (after the
/// config's agents); one named like an agent of the config is left out,
/// with a warning: the config wins.
[[nodiscard]] tl::expected<void, persistence::error> load_redis_groups(node_context& ctx);

/// The agent named `name`, or nothing.
[[nodiscard]] inline agent_ptr find_agent(const node_context& ctx, const std::string& name) {
  for (auto& a : ctx.agents.all())
    if (a->cfg.name == name)
      return a;
  return nullptr;
}

} // namespace nerve::actors::detail
