// ask: a request to an actor from outside the actors (the node's services,
// on HTTP or pool threads) that never blocks the caller: a one-shot actor
// makes the request and hands the answer, or the error, to a callback.
#pragma once

#include <chrono>
#include <functional>
#include <string>
#include <utility>

#include <caf/actor_system.hpp>
#include <caf/event_based_actor.hpp>

#include "actors/messages.hpp"
#include "actors/node.hpp"

namespace nerve::actors {

/// Asks `dest` with `xs...`; `done` runs on an actor thread with the answer
/// of type R, or the error (`unavailable` when `dest` is not running, the
/// request times out, or `dest` dies first; `what` names it then).
template <class R, class Handle, class... Ts>
void ask(caf::actor_system& sys, const Handle& dest, std::chrono::milliseconds timeout,
         const std::string& what, std::function<void(result<R>)> done, Ts... xs) {
  if (!dest)
    return done(tl::make_unexpected(error{errc::unavailable, what + " is not running"}));
  // Every function-based actor nerve spawns takes at least one argument: CAF 0.17
  // dereferences a null std::shared_ptr<std::tuple<>> for one spawned without any
  // (init_fun_factory.hpp), undefined behaviour that the sanitizer build reports.
  sys.spawn(
    [timeout, done = std::move(done), xs...](caf::event_based_actor* self, const Handle& dest) {
      self->request(dest, timeout, xs...)
        .then([done](R& r) { done(std::move(r)); },
              [done](caf::error& e) { done(tl::make_unexpected(from_caf_error(e))); });
    },
    dest);
}

} // namespace nerve::actors
