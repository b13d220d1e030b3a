// credit_pool: the delivery credits of one agent's instances. Each instance
// takes at most `max_in_flight` deliveries at a time; the partitions and
// replays that send to it take a credit per delivery and the instance gives
// it back when it answers. A sender that finds no credit waits to be woken.
//
// Why shared memory and not messages: every partition of every subscribed
// topic sends to the same instances, so a credit is a claim on a budget they
// share. As messages, each delivery would add a grant and a return to the
// one scheduler thread that runs partitions and builtin instances (a
// delivery is two messages today: deliver and outcome); as atomics, taking
// and giving back cost a compare-and-swap each, and the bounds are asserted
// here. Between nodes (where no memory is shared) credits travel as
// `credit_grant` messages (actors/messages.hpp).
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <vector>

#include "config/assert.hpp"

namespace nerve::actors {

/// Credits of one agent's instances; `Waiter` identifies a sender to wake
/// (an actor handle in the node, anything copyable in tests). Thread-safe.
template <class Waiter>
class basic_credit_pool {
public:
  basic_credit_pool(std::size_t instances, std::uint32_t max_in_flight)
    : max_(max_in_flight), used_(instances) {
    NERVE_ASSERT(instances > 0 && max_in_flight > 0);
    for (auto& u : used_)
      u = std::make_unique<std::atomic<std::uint32_t>>(0);
  }

  /// Takes one credit of the next instance that `is_open` and has room,
  /// round-robin from `rr` (advanced past it). Nothing when none has: then
  /// `waiter` is woken (put in `to_wake` by a later give_back or wake_all)
  /// once one may have room.
  template <class IsOpen>
  [[nodiscard]] std::optional<std::size_t>
  take(std::size_t& rr, IsOpen is_open, const Waiter& waiter, std::vector<Waiter>& to_wake) {
    if (auto i = try_take(rr, is_open))
      return i;
    std::lock_guard<std::mutex> guard{mutex_};
    waiters_.push_back(waiter);
    // A credit may have come back between the scan and the registration:
    // then nobody would wake the waiter, so it is woken now.
    for (std::size_t i = 0; i < used_.size(); ++i)
      if (is_open(i) && used_[i]->load() < max_) {
        to_wake.insert(to_wake.end(), waiters_.begin(), waiters_.end());
        waiters_.clear();
        break;
      }
    return std::nullopt;
  }

  /// Gives back a credit of `instance`; the waiting senders go to `to_wake`.
  void give_back(std::size_t instance, std::vector<Waiter>& to_wake) {
    NERVE_ASSERT(instance < used_.size());
    auto before = used_[instance]->fetch_sub(1);
    NERVE_ASSERT(before > 0 && before <= max_, "credits stay within max_in_flight");
    wake_all(to_wake);
  }

  /// give_back() for a credit taken and returned by its taker at once (a
  /// builtin handler run inline): if reset() voided it meanwhile (the
  /// instance died), there is nothing left to give back.
  void give_back_unless_reset(std::size_t instance, std::vector<Waiter>& to_wake) {
    NERVE_ASSERT(instance < used_.size());
    auto& used = *used_[instance];
    auto cur = used.load();
    while (cur > 0 && !used.compare_exchange_weak(cur, cur - 1)) {
    }
    if (cur > 0)
      wake_all(to_wake);
  }

  /// An instance died: the credits of its deliveries in flight are void (the
  /// senders send those deliveries again). Call once the instance is down.
  void reset(std::size_t instance) {
    NERVE_ASSERT(instance < used_.size());
    used_[instance]->store(0);
  }

  /// Every waiting sender goes to `to_wake` (an instance came up, say).
  void wake_all(std::vector<Waiter>& to_wake) {
    std::lock_guard<std::mutex> guard{mutex_};
    to_wake.insert(to_wake.end(), waiters_.begin(), waiters_.end());
    waiters_.clear();
  }

  /// Forgets every waiting sender (the node stops).
  void clear_waiters() {
    std::lock_guard<std::mutex> guard{mutex_};
    waiters_.clear();
  }

  /// Credits of `instance` taken and not given back.
  [[nodiscard]] std::uint32_t in_flight(std::size_t instance) const {
    return used_[instance]->load();
  }

  [[nodiscard]] std::uint32_t max_in_flight() const { return max_; }

private:
  template <class IsOpen>
  std::optional<std::size_t> try_take(std::size_t& rr, IsOpen& is_open) {
    auto n = used_.size();
    for (std::size_t k = 0; k < n; ++k) {
      auto i = (rr + k) % n;
      if (!is_open(i))
        continue;
      auto& used = *used_[i];
      auto cur = used.load();
      while (cur < max_) {
        if (used.compare_exchange_weak(cur, cur + 1)) {
          rr = i + 1;
          return i;
        }
      }
    }
    return std::nullopt;
  }

  const std::uint32_t max_;
  std::vector<std::unique_ptr<std::atomic<std::uint32_t>>> used_;
  std::mutex mutex_; ///< guards waiters_
  std::vector<Waiter> waiters_;
};

} // namespace nerve::actors
