// The runner: the actor that supervises a node's partition, agent-instance
// and replay actors (restarting them under their restart_policy), recovers
// and creates topics, runs retention and asks a log that refused writes to
// resume. Supervision only: the node's services do the rest.
#pragma once

#include <caf/fwd.hpp>

#include "actors/messages.hpp"

namespace nerve::actors::detail {

struct node_context;

/// Spawns the runner of the node whose state is `ctx` (detached unless
/// ctx->detach_blocking is off). It starts the DLQ actor, every agent
/// instance and known topic's partitions, and answers `ready_atom` once they
/// are spawned.
[[nodiscard]] runner_actor spawn_runner(caf::actor_system& system, node_context* ctx);

} // namespace nerve::actors::detail
