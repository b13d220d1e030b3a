// systemd's service notification protocol (sd_notify(3)) for `Type=notify`,
// without libsystemd: one datagram to the socket in $NOTIFY_SOCKET.
#pragma once

#include <string>
#include <string_view>

namespace nerve::runtime {

/// Tells systemd when the server is ready and when it stops. A no-op when
/// the process was not started by a `Type=notify` unit.
class systemd_notifier {
public:
  /// Takes $NOTIFY_SOCKET and unsets it, so that the agents nerve starts do
  /// not inherit it (the unit's NotifyAccess=main ignores them anyway).
  [[nodiscard]] static systemd_notifier from_env();

  /// Sends newline-separated assignments (`READY=1`, `STOPPING=1`,
  /// `STATUS=...`). A failure is logged and otherwise ignored: the server
  /// serves the same, and systemd times the start out if it never hears.
  void notify(std::string_view state) const;

private:
  std::string socket_path_; ///< a path, or `@name` for the abstract namespace
};

} // namespace nerve::runtime
