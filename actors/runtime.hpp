// Private to actors/: message atoms and the state shared between the runner,
// partition, agent-instance and DLQ actors of one node. Shared counters are
// atomics so the HTTP side can read them without asking an actor.
#pragma once

#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <limits>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include <caf/all.hpp>
#include <nlohmann/json.hpp>

#include "actors/consumer_group.hpp"
#include "actors/node.hpp"
#include "config/config.hpp"
#include "persistence/delivery_store.hpp"
#include "persistence/event_log.hpp"

namespace nerve::actors::detail {

using publish_atom = caf::atom_constant<caf::atom("publish")>;
using flush_atom = caf::atom_constant<caf::atom("flush")>;
using stop_atom = caf::atom_constant<caf::atom("stop")>;
using create_atom = caf::atom_constant<caf::atom("create")>;
using restart_atom = caf::atom_constant<caf::atom("restart")>;
using sweep_atom = caf::atom_constant<caf::atom("sweep")>;
using ready_atom = caf::atom_constant<caf::atom("ready")>;
using deliver_atom = caf::atom_constant<caf::atom("deliver")>;
using outcome_atom = caf::atom_constant<caf::atom("outcome")>;
using retry_atom = caf::atom_constant<caf::atom("retry")>;
using wake_atom = caf::atom_constant<caf::atom("wake")>;
using emitted_atom = caf::atom_constant<caf::atom("emitted")>;
using requeue_atom = caf::atom_constant<caf::atom("requeue")>;
using redeliver_atom = caf::atom_constant<caf::atom("redeliver")>;
using timeout_atom = caf::atom_constant<caf::atom("timeout")>;
using child_atom = caf::atom_constant<caf::atom("child")>;
using exited_atom = caf::atom_constant<caf::atom("exited")>;
using http_atom = caf::atom_constant<caf::atom("http")>;
using durable_atom = caf::atom_constant<caf::atom("durable")>;
using cancel_atom = caf::atom_constant<caf::atom("cancel")>;
using replay_atom = caf::atom_constant<caf::atom("replay")>;
using resume_atom = caf::atom_constant<caf::atom("resume")>;

using append_outcome = tl::expected<std::vector<persistence::append_result>, persistence::error>;

/// One partition's share of a publish request. Answers exactly once: on
/// flush, or with an error when it is destroyed unanswered (its partition
/// actor died).
struct partition_job {
  std::vector<persistence::new_event> events;
  std::function<void(append_outcome)> done;
  std::atomic<std::uint64_t>* queued = nullptr; ///< the slot's counter

  void finish(append_outcome r);
  ~partition_job();
};

using job_ptr = std::shared_ptr<partition_job>;

/// A topic creation request, answered on the runner.
struct create_request {
  std::string topic;
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
};

enum class instance_state : int { starting, running, restarting, crashed, stopped };

[[nodiscard]] const char* to_string(instance_state s);

/// One instance of an agent. The actor handle changes on restart.
struct instance_slot {
  caf::actor actor; ///< guarded by agent_runtime::mutex
  std::atomic<std::uint32_t> in_flight{0};
  std::atomic<instance_state> state{instance_state::starting};
  std::atomic<int> pid{0};
  std::atomic<std::uint32_t> restarts{0};
  std::chrono::steady_clock::time_point last_crash{}; ///< runner only
};

/// An agent from the config, with its live instances.
struct agent_runtime {
  config::agent_config cfg;
  std::size_t index = 0;
  std::vector<std::unique_ptr<instance_slot>> instances;
  std::atomic<bool> paused{false};
  std::mutex mutex; ///< guards instance actor handles and `waiters`
  std::vector<caf::actor> waiters;

  /// Whether `topic` matches one of the agent's patterns.
  [[nodiscard]] bool subscribes(const std::string& topic) const;
  /// Takes one credit from the next instance with room, round-robin from
  /// `rr`; returns the instance index and actor, or nothing when all are full
  /// (then `partition` is woken when one frees up).
  [[nodiscard]] std::optional<std::pair<std::size_t, caf::actor>>
  take_credit(std::size_t& rr, const caf::actor& partition);
  /// Gives a credit back and wakes the partitions that waited for one.
  void return_credit(std::size_t instance);
  void wake_all();
};

using agent_ptr = std::shared_ptr<agent_runtime>;

/// An agent's shared credits as a consumer_group takes them, at most `cap`
/// in one dispatch; keeps the instance actor each credit came with, for the
/// delivery it becomes (`taken[k]` is that of the k-th delivery).
class agent_credits final : public credit_source {
public:
  agent_credits(agent_runtime& agent, std::size_t& rr, caf::actor me,
                std::vector<caf::actor>& taken,
                std::size_t cap = std::numeric_limits<std::size_t>::max())
    : agent_(agent), rr_(rr), me_(std::move(me)), taken_(taken), cap_(cap) {}

  std::optional<std::size_t> take() override;

private:
  agent_runtime& agent_;
  std::size_t& rr_;
  caf::actor me_;
  std::vector<caf::actor>& taken_;
  std::size_t cap_;
};

/// A delivery attempt, partition → agent instance.
struct delivery {
  caf::actor partition;
  std::size_t group = 0;
  std::size_t instance = 0;
  std::uint64_t offset = 0;
  std::uint32_t attempt = 1;
  std::string delivery_id;
  std::string event_id;
  std::shared_ptr<const std::string> event; ///< the stored event JSON
};

using delivery_ptr = std::shared_ptr<delivery>;

/// The message for one of a consumer group's deliveries, from actor `me`'s
/// group `group`; the answer names `offset` (a replay sends a token there).
[[nodiscard]] delivery_ptr make_delivery(caf::actor me, std::size_t group, outgoing_delivery&& out,
                                         std::uint64_t offset);

/// The answer to a delivery attempt, agent instance → partition.
struct outcome {
  std::size_t group = 0;
  std::size_t instance = 0;
  std::uint64_t offset = 0;
  std::uint32_t attempt = 0;
  bool ok = false;
  bool timed_out = false; ///< not answered within the agent's timeout
  std::string result;     ///< JSON text; empty: none
  std::string emit;       ///< JSON array text of follow-up events; empty: none
  std::string error;
  std::int64_t elapsed_us = 0;
};

using outcome_ptr = std::shared_ptr<outcome>;

/// A partition as the publish path sees it. The actor handle changes when
/// the runner restarts the partition; the group stats outlive restarts.
struct partition_slot {
  caf::actor actor; ///< guarded by routing::mutex
  std::atomic<std::uint64_t> queued{0};
  std::atomic<std::uint64_t> durable_end{0}; ///< offsets below are appended and durable
  std::atomic<bool> alive{false};
  std::atomic<bool> recovered{false}; ///< its first actor rebuilt its state from the log
  std::uint32_t restarts = 0;         ///< runner only
  std::chrono::steady_clock::time_point last_crash{};
  std::vector<std::unique_ptr<group_stats>> groups; ///< one per subscribed agent
};

struct topic_route {
  persistence::topic_info info;
  std::vector<std::unique_ptr<partition_slot>> slots;
  std::atomic<std::uint64_t> round_robin{0};
};

struct routing {
  mutable std::shared_mutex mutex;
  std::unordered_map<std::string, std::shared_ptr<topic_route>> topics;

  [[nodiscard]] std::shared_ptr<topic_route> find(const std::string& name) const;
  /// A copy of the current actor of one partition.
  [[nodiscard]] caf::actor actor_of(const topic_route& route, std::uint32_t partition) const;
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

/// What the actors of one node share. Owned by the node; outlives the actors.
struct node_context {
  persistence::event_log* log = nullptr;
  persistence::delivery_store* store = nullptr;
  const config::config* cfg = nullptr;
  const node_hooks* hooks = nullptr;
  std::vector<agent_ptr> agents;
  routing routes;
  publish_fn publish;
  std::atomic<std::int64_t> dlq_size{0};
  tail_hub tails;
  std::mutex replays_mutex;
  std::unordered_map<std::string, caf::actor> replays; ///< running replay actors by id
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

/// Spawns the partition actor of `route`'s partition `p` as a monitored,
/// detached child of `parent`.
caf::actor spawn_partition(caf::local_actor* parent, node_context* ctx,
                           std::shared_ptr<topic_route> route, std::uint32_t p);

/// Spawns instance `i` of `agent` as a monitored, detached child of `parent`.
caf::actor spawn_instance(caf::local_actor* parent, node_context* ctx, agent_ptr agent,
                          std::size_t i);

/// Exponential backoff with ±20 % jitter: initial × 2^(attempt−1), capped.
[[nodiscard]] std::chrono::milliseconds
backoff(std::chrono::milliseconds initial, std::chrono::milliseconds max, std::uint32_t attempt);

// -- replay (replay.cpp) --------------------------------------------------------

/// meta key of a replay's record.
[[nodiscard]] std::string replay_key(const std::string& id);

/// Selects the window through the by_time index and plans each agent's
/// history; answers the replay's record (not yet stored).
[[nodiscard]] tl::expected<nlohmann::json, error> plan_replay(const node_context& ctx,
                                                              const replay_request& req,
                                                              const std::string& id,
                                                              std::int64_t now_us);

[[nodiscard]] replay_view replay_view_of(const nlohmann::json& record);

/// One page of an agent's history in a planned replay.
[[nodiscard]] tl::expected<history_page, error>
replay_history(const node_context& ctx, const nlohmann::json& record, const std::string& agent,
               const std::string& cursor, std::size_t limit);

/// The cursor of the page after the one at `cursor`, when it can be known
/// without reading: the agent has no filter, so every offset of its ranges is
/// one entry. Nothing otherwise, or after the last page. A wrong guess (the
/// log changed since the plan) costs only work: a page is always built for
/// the cursor it is asked for.
[[nodiscard]] std::optional<std::string>
history_cursor_after(const node_context& ctx, const nlohmann::json& record,
                     const std::string& agent, const std::string& cursor, std::size_t limit);

/// How the live consumer group of `agent` handled one event. `storage_ok`
/// turns false when the state could not be read.
[[nodiscard]] delivery_view live_delivery_state(const node_context& ctx, const agent_runtime& agent,
                                                std::uint32_t topic_id, std::uint32_t partition,
                                                std::uint64_t offset, const std::string& event_id,
                                                std::optional<std::uint64_t> cursor,
                                                bool& storage_ok);

/// Spawns the actor of running replay `id` as a monitored, detached child.
caf::actor spawn_replay(caf::local_actor* parent, node_context* ctx, const std::string& id);

} // namespace nerve::actors::detail

CAF_ALLOW_UNSAFE_MESSAGE_TYPE(nerve::actors::detail::job_ptr)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(nerve::actors::detail::create_ptr)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(nerve::actors::detail::delivery_ptr)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(nerve::actors::detail::outcome_ptr)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(nerve::actors::detail::reply_ptr)
