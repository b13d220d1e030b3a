// actor_sender: the messages the node's services send to actors, behind an
// interface so that the services compile without CAF. node.cpp implements
// it over the actor system and the runner.
#pragma once

#include <cstdint>
#include <functional>
#include <string>

#include "actors/node_context.hpp"

namespace nerve::actors::detail {

class actor_sender {
public:
  virtual ~actor_sender() = default;

  /// Queues `job` on the current actor of partition `p` of `route`.
  virtual void publish(const topic_route& route, std::uint32_t p, job_ptr job) = 0;

  /// Asks the runner to create a topic (answered through `req`).
  virtual void create_topic(create_ptr req) = 0;

  /// Wakes the actor of `slot`, if it has one; the caller holds
  /// `routing::mutex` (shared).
  virtual void wake(const partition_slot& slot) = 0;

  /// True while the runner runs (from start to shutdown).
  [[nodiscard]] virtual bool runner_running() const = 0;

  /// Asks the runner to start the actor of stored, running replay `id`.
  virtual void start_replay(const std::string& id) = 0;

  /// Asks the runner to cancel replay `id`; `reply` answers once it stopped.
  virtual void cancel_replay(const std::string& id, reply_ptr reply) = 0;

  /// Runs `job` on a thread of its own (a detached actor): long, blocking
  /// work that must hold up neither the query pool nor the partitions.
  virtual void run_detached(std::function<void()> job) = 0;
};

} // namespace nerve::actors::detail
