// sd_notify(3) by hand: the protocol is one AF_UNIX datagram, which systemd
// documents as a stable interface for services to implement themselves, so
// nerve needs no libsystemd for it.
#include "runtime/systemd_notify.hpp"

#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstddef>
#include <cstdlib>
#include <cstring>

#include <spdlog/spdlog.h>

namespace nerve::runtime {

systemd_notifier systemd_notifier::from_env() {
  systemd_notifier out;
  if (const char* path = std::getenv("NOTIFY_SOCKET"); path != nullptr) {
    out.socket_path_ = path;
    ::unsetenv("NOTIFY_SOCKET");
  }
  return out;
}

void systemd_notifier::notify(std::string_view state) const {
  if (socket_path_.empty())
    return;
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (socket_path_.size() >= sizeof(addr.sun_path)
      || (socket_path_[0] != '/' && socket_path_[0] != '@')) {
    spdlog::warn("systemd notify: NOTIFY_SOCKET \"{}\" is not a socket path; not notifying",
                 socket_path_);
    return;
  }
  std::memcpy(addr.sun_path, socket_path_.data(), socket_path_.size());
  if (addr.sun_path[0] == '@')
    addr.sun_path[0] = '\0'; // an abstract socket: its name is not NUL-terminated
  auto addr_len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + socket_path_.size());
  int fd = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    spdlog::warn("systemd notify: socket: {}", std::strerror(errno));
    return;
  }
  if (::sendto(fd, state.data(), state.size(), MSG_NOSIGNAL, reinterpret_cast<sockaddr*>(&addr),
               addr_len)
      < 0)
    spdlog::warn("systemd notify: sending to {}: {}", socket_path_, std::strerror(errno));
  ::close(fd);
}

} // namespace nerve::runtime
