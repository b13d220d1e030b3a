// A CAF actor system on the deterministic test scheduler, driven from
// Catch2: nothing runs until the test says so, and time moves only when the
// test advances it. Actors must not be detached (those get threads).
#pragma once

#include <caf/all.hpp>

#include "actors/messages.hpp"

namespace nerve::test {

struct deterministic_config : caf::actor_system_config {
  deterministic_config() {
    set("scheduler.policy", caf::atom("testing"));
    // One message per job: a test can stop between any two messages.
    set("scheduler.max-throughput", static_cast<std::size_t>(1));
    set("logger.console", caf::atom("none"));
    set("logger.file-verbosity", caf::atom("quiet"));
    actors::register_messages(*this);
  }
};

class deterministic_system {
public:
  deterministic_system()
    : sys_(cfg_), sched_(dynamic_cast<caf::scheduler::test_coordinator&>(sys_.scheduler())),
      self_(sys_, true) {}

  deterministic_system(const deterministic_system&) = delete;
  deterministic_system& operator=(const deterministic_system&) = delete;

  /// Fires what is still scheduled (request timeouts hold their actors
  /// alive, and the system waits for every actor before it ends).
  ~deterministic_system() {
    run();
    while (sched_.trigger_timeouts() > 0)
      run();
  }

  [[nodiscard]] caf::actor_system& sys() { return sys_; }
  [[nodiscard]] caf::scheduler::test_coordinator& sched() { return sched_; }
  /// A blocking actor the test speaks through; its receives never wait once
  /// run() has delivered the answer.
  [[nodiscard]] caf::scoped_actor& self() { return self_; }

  /// Runs every job there is (virtual time stands still); answers how many.
  std::size_t run() { return sched_.run(); }

  /// Moves virtual time on by `d` and runs what that makes due.
  std::size_t advance(caf::timespan d) {
    sched_.advance_time(d);
    return run();
  }

  /// Asks `dest`, runs the system, and answers the reply or the error.
  template <class R, class Dest, class... Ts>
  caf::expected<R> ask(const Dest& dest, Ts&&... xs) {
    auto handle = self_->request(dest, caf::infinite, std::forward<Ts>(xs)...);
    run();
    caf::expected<R> out{caf::sec::request_timeout};
    handle.receive([&](R& x) { out = std::move(x); }, [&](caf::error& e) { out = std::move(e); });
    return out;
  }

private:
  deterministic_config cfg_;
  caf::actor_system sys_;
  caf::scheduler::test_coordinator& sched_;
  caf::scoped_actor self_;
};

} // namespace nerve::test
