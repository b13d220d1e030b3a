// Private to actors/: message atoms, the messages between partition and
// agent-instance actors, and the spawn functions of the actors. The state
// they share is in node_context.hpp; replay planning in replay_plan.hpp.
#pragma once

#include <chrono>
#include <cstdint>
#include <limits>
#include <memory>
#include <string>

#include <caf/all.hpp>

#include "actors/consumer_group.hpp"
#include "actors/messages.hpp"
#include "actors/node_context.hpp"
#include "actors/replay_plan.hpp"

namespace nerve::actors::detail {

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

/// The message for one of a consumer group's deliveries, from group
/// `group`; the answer names `offset` (a replay sends a token there). The
/// instance answers whoever sent it.
[[nodiscard]] delivery make_delivery(std::size_t group, outgoing_delivery&& out,
                                     std::uint64_t offset);

/// What a builtin handler answers for one delivery of `event`.
struct builtin_answer {
  bool ok = true;
  std::string result; ///< JSON text; empty: none
  std::string error;
};

/// Runs builtin handler `handler` (noop, echo, fail) on `event`: a function
/// call that never blocks, so partitions run it where they dispatch.
[[nodiscard]] builtin_answer run_builtin(const std::string& handler, const std::string& event);

/// Spawns the partition actor of `route`'s partition `p` as a monitored,
/// detached child of `parent`.
caf::actor spawn_partition(caf::local_actor* parent, node_context* ctx,
                           std::shared_ptr<topic_route> route, std::uint32_t p);

/// Spawns instance `i` of `agent` as a monitored, detached child of `parent`.
caf::actor spawn_instance(caf::local_actor* parent, node_context* ctx, agent_ptr agent,
                          std::size_t i);

/// Spawns the actor of running replay `id` as a monitored, detached child.
caf::actor spawn_replay(caf::local_actor* parent, node_context* ctx, const std::string& id);

} // namespace nerve::actors::detail

// The one node-local message that still carries a pointer: a publish job
// carries its HTTP answer and never crosses nodes (between nodes a publish
// is an append_request answered with appended, messages.hpp).
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(nerve::actors::detail::job_ptr)
