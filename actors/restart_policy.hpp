// restart_policy: how long a supervisor waits before restarting a child that
// died, and when it gives up. One type for partitions, agent instances,
// replays and process agents' children, configured per use.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>

namespace nerve::actors {

/// Backoff for restarting a child that keeps dying: the delay starts at
/// `initial` (or the first restart is at once), doubles up to `max` while the
/// child keeps dying, and starts over once the child stayed up for `stable`
/// (measured from its last start or death, whichever came later). With
/// `max_restarts`, the policy gives up on the death after that many restarts
/// in a row. Not thread-safe: one supervisor owns it. Time comes in as
/// arguments, so tests drive it without a clock.
class restart_policy {
public:
  using clock = std::chrono::steady_clock;
  using time_point = clock::time_point;

  struct settings {
    bool first_at_once = false;          ///< the first restart of a series waits 0
    std::chrono::milliseconds initial{}; ///< the first wait, doubled on each death after it
    std::chrono::milliseconds max{};     ///< the longest wait
    /// Up (or not dying) this long: the next death starts a new series.
    /// Zero: never starts over.
    std::chrono::milliseconds stable{};
    /// Restarts in a row before giving up; nothing: never gives up.
    std::optional<std::uint32_t> max_restarts;
  };

  explicit restart_policy(settings s) : settings_(s) {}

  /// The child started (again) at `now`: stability is measured from here.
  void started(time_point now) { last_event_ = now; }

  /// The child died at `now`: how long to wait before restarting it, or
  /// nothing when the policy gives up.
  [[nodiscard]] std::optional<std::chrono::milliseconds> on_death(time_point now);

  /// Restarts in the current series (deaths since it started over).
  [[nodiscard]] std::uint32_t restarts() const { return restarts_; }

private:
  settings settings_;
  std::uint32_t restarts_ = 0;
  time_point last_event_{};
};

} // namespace nerve::actors
