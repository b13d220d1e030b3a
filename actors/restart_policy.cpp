// restart_policy: backoff and give-up decisions for restarting dead children.
#include "actors/restart_policy.hpp"

#include <algorithm>

namespace nerve::actors {

std::optional<std::chrono::milliseconds> restart_policy::on_death(time_point now) {
  if (settings_.stable.count() > 0 && now - last_event_ > settings_.stable)
    restarts_ = 0;
  last_event_ = now;
  if (settings_.max_restarts && restarts_ >= *settings_.max_restarts)
    return std::nullopt;
  std::uint32_t n = restarts_++;
  if (settings_.first_at_once) {
    if (n == 0)
      return std::chrono::milliseconds{0};
    --n;
  }
  // Doubled step by step, so a long series cannot overflow the shift.
  auto delay = settings_.initial;
  for (std::uint32_t i = 0; i < n && delay < settings_.max; ++i)
    delay *= 2;
  return std::min(delay, settings_.max);
}

} // namespace nerve::actors
