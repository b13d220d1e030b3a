// Real etcd members for tests: N members as one cluster on free loopback ports in a temp
// dir, each killable with kill -9 and restartable on its data; all killed and removed at the
// end. The binary is $NERVE_ETCD, else /usr/bin/etcd (Debian's etcd-server).
#pragma once

#include "tests/support/temp_dir.hpp"

#include <chrono>
#include <cstdlib>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

namespace nerve::test {

class etcd_cluster {
public:
  /// Starts `members` members as one new cluster and waits until each is healthy.
  explicit etcd_cluster(std::size_t members) {
    binary_ = find_binary();
    for (std::size_t i = 0; i < members; ++i)
      members_.push_back({"m" + std::to_string(i), free_port(), free_port(), -1});
    for (std::size_t i = 0; i < members; ++i)
      start(i);
    for (std::size_t i = 0; i < members; ++i)
      wait_healthy(i);
  }

  ~etcd_cluster() {
    for (std::size_t i = 0; i < members_.size(); ++i)
      kill(i);
  }

  etcd_cluster(const etcd_cluster&) = delete;
  etcd_cluster& operator=(const etcd_cluster&) = delete;

  [[nodiscard]] std::size_t size() const { return members_.size(); }

  /// The client URL of member `i`, "http://127.0.0.1:PORT".
  [[nodiscard]] std::string endpoint(std::size_t i) const {
    return "http://127.0.0.1:" + std::to_string(members_.at(i).client_port);
  }

  [[nodiscard]] std::vector<std::string> endpoints() const {
    std::vector<std::string> out;
    for (std::size_t i = 0; i < members_.size(); ++i)
      out.push_back(endpoint(i));
    return out;
  }

  /// kill -9 of member `i`, waiting until it has exited.
  void kill(std::size_t i) {
    auto& m = members_.at(i);
    if (m.pid <= 0)
      return;
    ::kill(m.pid, SIGKILL);
    int status = 0;
    ::waitpid(m.pid, &status, 0);
    m.pid = -1;
  }

  /// Starts member `i` (again, on the data it has); does not wait for it.
  void start(std::size_t i) {
    auto& m = members_.at(i);
    if (m.pid > 0)
      return;
    std::string cluster;
    for (const auto& other : members_)
      cluster += (cluster.empty() ? "" : ",") + other.name + "=" + peer_url(other);
    std::vector<std::string> args = {binary_,
                                     "--name=" + m.name,
                                     "--data-dir=" + dir_.sub(m.name),
                                     "--listen-client-urls=" + endpoint(i),
                                     "--advertise-client-urls=" + endpoint(i),
                                     "--listen-peer-urls=" + peer_url(m),
                                     "--initial-advertise-peer-urls=" + peer_url(m),
                                     "--initial-cluster=" + cluster,
                                     "--initial-cluster-state=new",
                                     "--initial-cluster-token=" + dir_.str(),
                                     "--logger=zap",
                                     "--log-outputs=stderr"};
    std::vector<char*> argv;
    for (auto& a : args)
      argv.push_back(a.data());
    argv.push_back(nullptr);
    auto log = dir_.sub(m.name + ".log");
    pid_t pid = ::fork();
    if (pid < 0)
      throw std::runtime_error("etcd_cluster: fork failed");
    if (pid == 0) {
      // The child: dies with the test, logs to its file.
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);
      int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
      if (fd >= 0) {
        ::dup2(fd, 1);
        ::dup2(fd, 2);
      }
      ::execv(argv[0], argv.data());
      ::_exit(127);
    }
    m.pid = pid;
  }

  /// Waits until member `i` answers GET /health with {"health":"true"} (it has a leader).
  void wait_healthy(std::size_t i, std::chrono::milliseconds limit = std::chrono::seconds{15}) {
    auto until = std::chrono::steady_clock::now() + limit;
    while (std::chrono::steady_clock::now() < until) {
      if (healthy(i))
        return;
      std::this_thread::sleep_for(std::chrono::milliseconds{50});
    }
    throw std::runtime_error("etcd member " + members_.at(i).name + " at " + endpoint(i)
                             + " is not healthy after " + std::to_string(limit.count())
                             + " ms; its log: " + dir_.sub(members_.at(i).name + ".log"));
  }

  [[nodiscard]] bool healthy(std::size_t i) const {
    return http(i, "GET /health HTTP/1.0\r\n\r\n").find("\"health\":\"true\"") != std::string::npos;
  }

  /// POSTs a JSON body to member `i` and returns the whole answer, headers included, or ""
  /// (for what the client under test has no call for, such as compaction).
  [[nodiscard]] std::string post(std::size_t i, const std::string& path,
                                 const std::string& body) const {
    return http(i, "POST " + path + " HTTP/1.0\r\nContent-Type: application/json\r\n"
                     + "Content-Length: " + std::to_string(body.size()) + "\r\n\r\n" + body);
  }

private:
  struct member {
    std::string name;
    int client_port;
    int peer_port;
    pid_t pid;
  };

  static std::string peer_url(const member& m) {
    return "http://127.0.0.1:" + std::to_string(m.peer_port);
  }

  static std::string find_binary() {
    const char* env = std::getenv("NERVE_ETCD");
    std::string path = env != nullptr && *env != '\0' ? env : "/usr/bin/etcd";
    if (::access(path.c_str(), X_OK) != 0)
      throw std::runtime_error("etcd not found at " + path
                               + ": install Debian's etcd-server (.ci/install-deps does) or set "
                                 "NERVE_ETCD to an etcd 3.4 binary");
    return path;
  }

  /// A loopback port nobody listens on now (the kernel's pick for port 0).
  static int free_port() {
    int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof addr;
    if (fd < 0 || ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0
        || ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
      if (fd >= 0)
        ::close(fd);
      throw std::runtime_error("etcd_cluster: no free loopback port");
    }
    ::close(fd);
    return ntohs(addr.sin_port);
  }

  /// One HTTP/1.0 exchange with member `i` (1 s timeouts); "" when it does not answer.
  std::string http(std::size_t i, const std::string& request) const {
    int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0)
      return {};
    timeval tv{1, 0};
    ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = htons(static_cast<std::uint16_t>(members_.at(i).client_port));
    std::string answer;
    if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0
        && ::send(fd, request.data(), request.size(), MSG_NOSIGNAL)
             == static_cast<ssize_t>(request.size())) {
      char buf[4096];
      for (ssize_t n; (n = ::recv(fd, buf, sizeof buf, 0)) > 0;)
        answer.append(buf, static_cast<std::size_t>(n));
    }
    ::close(fd);
    return answer;
  }

  temp_dir dir_;
  std::string binary_;
  std::vector<member> members_;
};

} // namespace nerve::test
