// A blocking TCP client of a server on 127.0.0.1, for tests of the listeners
// on real sockets (reads time out after 5 s).
#pragma once

#include <arpa/inet.h>
#include <cstdint>
#include <netinet/in.h>
#include <string>
#include <sys/socket.h>
#include <unistd.h>

#include <catch2/catch.hpp>

namespace nerve::test {

class loopback_client {
public:
  explicit loopback_client(std::uint16_t port) : fd_(::socket(AF_INET, SOCK_STREAM, 0)) {
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(port);
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    REQUIRE(::connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
    timeval tv{5, 0};
    ::setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  }
  ~loopback_client() { close(); }
  loopback_client(const loopback_client&) = delete;
  loopback_client& operator=(const loopback_client&) = delete;

  void send(const std::string& bytes) {
    REQUIRE(::send(fd_, bytes.data(), bytes.size(), MSG_NOSIGNAL)
            == static_cast<ssize_t>(bytes.size()));
  }

  /// What one read got: empty at EOF or the timeout.
  std::string read_some() {
    char buf[4096];
    auto got = ::recv(fd_, buf, sizeof buf, 0);
    return got <= 0 ? std::string{} : std::string(buf, static_cast<std::size_t>(got));
  }

  /// Reads until `n` bytes came (or the timeout, or EOF).
  std::string read(std::size_t n) {
    std::string out;
    while (out.size() < n) {
      auto got = read_some();
      if (got.empty())
        break;
      out += got;
    }
    return out;
  }

  void close() {
    if (fd_ >= 0)
      ::close(fd_);
    fd_ = -1;
  }

private:
  int fd_;
};

} // namespace nerve::test
