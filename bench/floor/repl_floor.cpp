// repl_floor: the least three processes must do on this machine to give a
// publish nerve R=3's guarantee (issue 13's floor): an HTTP/1.1 keep-alive
// POST of one event to any of three nodes is answered 201 only once the
// event is on disk (written and fdatasync'ed) on all three. Node 0 leads: a
// node that is not the leader forwards the event to it over a TCP link; the
// leader appends it to its file and streams it to the two followers, which
// append it; each node syncs its file once per group (a sync thread, like
// nerve's), followers report their synced end, and the leader answers below
// the least synced end of the three. One epoll thread and one sync thread
// per process; no JSON parsing, no index, no recovery, no failover: not a
// server, a measure of what the hardware allows. bench/replication runs it
// as the "floor R=3" setup beside nerve and JetStream.
//
// With --nodes 1 it is the single-node floor (issue 14): a POST, or an XADD
// over RESP (--resp PORT, parsed by hiredis' reader), is appended and
// answered once its group's fdatasync returned. bench/publish runs it beside
// nerve and Redis.
//
//   repl_floor --id I --http PORT --cluster P0,P1,P2 --data FILE [--prezero MIB]
//   repl_floor --nodes 1 --http PORT [--resp PORT] --data FILE [--prezero MIB]
//
// On SIGTERM it prints "events N" (the events in its file) and exits.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <hiredis/hiredis.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <condition_variable>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <deque>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

namespace {

constexpr int max_nodes = 3;
constexpr std::uint8_t msg_forward = 1; // u64 token, event bytes
constexpr std::uint8_t msg_answer = 2;  // u64 token, u64 offset
constexpr std::uint8_t msg_records = 3; // (u32 length, bytes)*
constexpr std::uint8_t msg_synced = 4;  // u64 events synced

std::atomic<bool> stopping{false};

void die(const std::string& why) {
  std::fprintf(stderr, "repl_floor: %s: %s\n", why.c_str(), std::strerror(errno));
  std::exit(1);
}

void put64(std::string& s, std::uint64_t v) {
  s.append(reinterpret_cast<const char*>(&v), 8);
}
std::uint64_t get64(const char* p) {
  std::uint64_t v = 0;
  std::memcpy(&v, p, 8);
  return v;
}

int listen_on(int port) {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  int one = 1;
  ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<std::uint16_t>(port));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 || ::listen(fd, 512) != 0)
    die("listen on " + std::to_string(port));
  return fd;
}

/// Group commit: the loop asks for "synced up to (bytes, events)", the
/// thread fdatasyncs and reports the events now on disk through an eventfd.
struct syncer {
  int file = -1;
  int wake = -1;
  std::mutex m;
  std::condition_variable cv;
  std::uint64_t want_events = 0, done_events = 0;
  std::thread t;

  void start() {
    wake = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    t = std::thread{[this] {
      ::pthread_setname_np(::pthread_self(), "floor.sync");
      std::unique_lock<std::mutex> g{m};
      for (;;) {
        cv.wait(g, [this] { return stopping || want_events > done_events; });
        if (stopping)
          return;
        auto target = want_events; // everything written before the ask
        g.unlock();
        if (::fdatasync(file) != 0)
          die("fdatasync");
        g.lock();
        done_events = target;
        std::uint64_t one = 1;
        (void)::write(wake, &one, 8);
      }
    }};
  }
  void ask(std::uint64_t events) {
    std::lock_guard<std::mutex> g{m};
    if (events > want_events) {
      want_events = events;
      cv.notify_one();
    }
  }
  std::uint64_t synced() {
    std::lock_guard<std::mutex> g{m};
    return done_events;
  }
};

struct conn {
  int fd = -1;
  bool http = false;
  redisReader* resp = nullptr; ///< a RESP client's reader (hiredis)
  int peer = -1;               ///< cluster link: the node at the other end
  std::string in, out;
  std::uint64_t gen = 0;
  bool wants_out = false; ///< EPOLLOUT is on
};

class floor_node {
public:
  floor_node(int nodes, int id, int http_port, int resp_port, std::vector<int> cluster,
             const std::string& data, std::size_t prezero_mib)
    : nodes_(nodes), id_(id), cluster_(std::move(cluster)) {
    file_ = ::open(data.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (file_ < 0)
      die("open " + data);
    if (prezero_mib > 0) { // written once, so a sync later flushes data only
      std::string zeros(1 << 20, '\0');
      for (std::size_t i = 0; i < prezero_mib; ++i)
        if (::write(file_, zeros.data(), zeros.size()) != static_cast<ssize_t>(zeros.size()))
          die("prezero");
      ::fsync(file_);
    }
    sync_.file = file_;
    sync_.start();
    ep_ = ::epoll_create1(EPOLL_CLOEXEC);
    http_ = listen_on(http_port);
    watch(http_, EPOLLIN);
    if (resp_port > 0) {
      resp_ = listen_on(resp_port);
      watch(resp_, EPOLLIN);
    }
    watch(sync_.wake, EPOLLIN);
    if (nodes_ > 1) {
      link_ = listen_on(cluster_[id_]);
      watch(link_, EPOLLIN);
      for (int j = 0; j < nodes_; ++j)
        if (j != id_)
          dial(j);
    }
  }

  std::uint64_t run() {
    std::array<epoll_event, 256> evs{};
    while (!stopping) {
      int n = ::epoll_wait(ep_, evs.data(), static_cast<int>(evs.size()), 200);
      for (int i = 0; i < n; ++i) {
        int fd = evs[i].data.fd;
        if (fd == http_ || fd == link_ || fd == resp_)
          accept_all(fd);
        else if (fd == sync_.wake)
          on_synced();
        else if (auto it = conns_.find(fd); it != conns_.end()) {
          if (evs[i].events & EPOLLOUT)
            flush(it->second);
          if (evs[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR))
            on_readable(it->second);
        }
      }
      end_of_pass();
    }
    return events_;
  }

private:
  void watch(int fd, std::uint32_t what) {
    epoll_event e{};
    e.events = what;
    e.data.fd = fd;
    ::epoll_ctl(ep_, EPOLL_CTL_ADD, fd, &e);
  }

  void dial(int j) {
    for (int attempt = 0; attempt < 300; ++attempt) {
      int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
      sockaddr_in a{};
      a.sin_family = AF_INET;
      a.sin_port = htons(static_cast<std::uint16_t>(cluster_[j]));
      a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
      if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0) {
        int one = 1;
        ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        auto id = static_cast<char>(id_);
        if (::write(fd, &id, 1) != 1) // who dials: the receiver's first byte
          die("hello");
        ::fcntl(fd, F_SETFL, O_NONBLOCK);
        auto& c = conns_[fd];
        c.fd = fd;
        c.peer = j;
        out_[j] = fd;
        watch(fd, EPOLLIN);
        return;
      }
      ::close(fd);
      std::this_thread::sleep_for(std::chrono::milliseconds{20});
    }
    die("connect to node " + std::to_string(j));
  }

  void accept_all(int lfd) {
    for (;;) {
      int fd = ::accept4(lfd, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
      if (fd < 0)
        return;
      int one = 1;
      ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
      auto& c = conns_[fd];
      c = conn{};
      c.fd = fd;
      c.http = lfd == http_;
      if (lfd == resp_)
        c.resp = redisReaderCreate();
      c.gen = ++gen_;
      watch(fd, EPOLLIN);
    }
  }

  void on_readable(conn& c) {
    char buf[65536];
    for (;;) {
      auto n = ::read(c.fd, buf, sizeof buf);
      if (n > 0) {
        c.in.append(buf, static_cast<std::size_t>(n));
        continue;
      }
      if (n == 0 || errno != EAGAIN) {
        if (c.resp != nullptr)
          redisReaderFree(c.resp);
        ::close(c.fd);
        conns_.erase(c.fd);
        return;
      }
      break;
    }
    if (c.http)
      parse_http(c);
    else if (c.resp != nullptr)
      parse_resp(c);
    else
      parse_link(c);
  }

  /// RESP commands (single node): XADD key id field value... is appended
  /// (its field-value bytes are the event); anything else gets an error.
  void parse_resp(conn& c) {
    redisReaderFeed(c.resp, c.in.data(), c.in.size());
    c.in.clear();
    for (;;) {
      void* got = nullptr;
      if (redisReaderGetReply(c.resp, &got) != REDIS_OK) {
        c.out += "-ERR protocol error\r\n";
        flush(c);
        return;
      }
      if (got == nullptr)
        return;
      auto* r = static_cast<redisReply*>(got);
      bool xadd = r->type == REDIS_REPLY_ARRAY && r->elements >= 5
                  && r->element[0]->type == REDIS_REPLY_STRING
                  && (std::string{r->element[0]->str} == "XADD"
                      || std::string{r->element[0]->str} == "xadd");
      if (xadd) {
        std::string event;
        for (std::size_t i = 3; i < r->elements; ++i)
          event.append(r->element[i]->str, r->element[i]->len);
        append(std::move(event), -1, (c.gen << 20) | static_cast<std::uint64_t>(c.fd));
      } else {
        c.out += "-ERR the floor takes XADD only\r\n";
        flush(c);
      }
      freeReplyObject(r);
    }
  }

  void parse_http(conn& c) {
    for (;;) {
      auto end = c.in.find("\r\n\r\n");
      if (end == std::string::npos)
        return;
      std::size_t length = 0;
      for (const char* key : {"Content-Length:", "content-length:"})
        if (auto at = c.in.find(key); at != std::string::npos && at < end)
          length = std::strtoull(c.in.c_str() + at + std::strlen(key), nullptr, 10);
      if (c.in.size() < end + 4 + length)
        return;
      if (c.in.compare(0, 5, "POST ") != 0) { // only publishes here
        c.in.erase(0, end + 4 + length);
        c.out += "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n";
        flush(c);
        continue;
      }
      auto path_at = c.in.find("/v1/topics/");
      auto slash = c.in.find('/', path_at + 11);
      topic_ = c.in.substr(path_at + 11, slash - path_at - 11);
      std::string event = c.in.substr(end + 4, length);
      c.in.erase(0, end + 4 + length);
      auto token = (c.gen << 20) | static_cast<std::uint64_t>(c.fd);
      if (id_ == 0) {
        append(std::move(event), -1, token);
      } else {
        std::string m;
        put64(m, token);
        m += event;
        send(out_[0], msg_forward, m);
      }
    }
  }

  void parse_link(conn& c) {
    std::size_t at = 0;
    if (c.peer < 0 && !c.in.empty()) {
      c.peer = static_cast<unsigned char>(c.in[0]);
      at = 1;
    }
    while (c.in.size() - at >= 5) {
      std::uint32_t len = 0;
      std::memcpy(&len, c.in.data() + at + 1, 4);
      if (c.in.size() - at - 5 < len)
        break;
      auto type = static_cast<std::uint8_t>(c.in[at]);
      const char* p = c.in.data() + at + 5;
      if (type == msg_forward)
        append(std::string{p + 8, len - 8}, c.peer, get64(p));
      else if (type == msg_answer)
        answer(get64(p), get64(p + 8));
      else if (type == msg_records)
        apply(p, len);
      else if (type == msg_synced)
        synced_[c.peer] = std::max(synced_[c.peer], get64(p));
      at += 5 + len;
    }
    c.in.erase(0, at);
  }

  // Leader: the event takes the next offset; it is written, shipped and
  // answered once below the least synced end (end_of_pass).
  void append(std::string event, int origin, std::uint64_t token) {
    auto offset = events_++;
    std::uint32_t len = static_cast<std::uint32_t>(event.size());
    wbuf_.append(reinterpret_cast<const char*>(&len), 4);
    wbuf_ += event;
    waiting_.push_back({offset, origin, token});
  }

  // Follower: the leader's records, appended as they are.
  void apply(const char* p, std::uint32_t len) {
    const char* end = p + len;
    while (p < end) {
      std::uint32_t n = 0;
      std::memcpy(&n, p, 4);
      wbuf_.append(p, 4 + n);
      p += 4 + n;
      ++events_;
    }
  }

  void on_synced() {
    std::uint64_t v = 0;
    (void)::read(sync_.wake, &v, 8);
    auto done = sync_.synced();
    if (id_ == 0) {
      synced_[0] = done;
    } else {
      std::string m;
      put64(m, done);
      send(out_[0], msg_synced, m);
    }
  }

  /// What this pass of the loop wrote goes to the file (and, on the leader,
  /// to the followers) in one write each; then the answers it allows.
  void end_of_pass() {
    if (!wbuf_.empty()) {
      if (::pwrite(file_, wbuf_.data(), wbuf_.size(), static_cast<off_t>(pos_))
          != static_cast<ssize_t>(wbuf_.size()))
        die("pwrite");
      pos_ += wbuf_.size();
      if (id_ == 0)
        for (int j = 1; j < nodes_; ++j)
          send(out_[j], msg_records, wbuf_);
      wbuf_.clear();
      sync_.ask(events_);
    }
    if (id_ != 0)
      return;
    auto hw = synced_[0];
    for (int j = 1; j < nodes_; ++j)
      hw = std::min(hw, synced_[j]);
    while (!waiting_.empty() && waiting_.front().offset < hw) {
      auto w = waiting_.front();
      waiting_.pop_front();
      if (w.origin < 0) {
        answer(w.token, w.offset);
      } else {
        std::string m;
        put64(m, w.token);
        put64(m, w.offset);
        send(out_[w.origin], msg_answer, m);
      }
    }
  }

  void answer(std::uint64_t token, std::uint64_t offset) {
    int fd = static_cast<int>(token & 0xFFFFF);
    auto it = conns_.find(fd);
    if (it == conns_.end() || it->second.gen != token >> 20)
      return;
    auto body = R"({"events":[{"id":"floor-)" + std::to_string(offset) + R"(","topic":")" + topic_
                + R"(","partition":0,"offset":)" + std::to_string(offset)
                + R"(,"time":"2026-12-03T00:00:00.000000Z","duplicate":false}]})";
    auto& c = it->second;
    if (c.resp != nullptr) { // a stream entry id, as Redis answers XADD
      auto id = std::to_string(1764720000000ULL + offset) + "-0";
      c.out += "$" + std::to_string(id.size()) + "\r\n" + id + "\r\n";
      return flush(c);
    }
    c.out += "HTTP/1.1 201 Created\r\nContent-Type: application/json\r\nContent-Length: "
             + std::to_string(body.size()) + "\r\n\r\n" + body;
    flush(c);
  }

  void send(int fd, std::uint8_t type, const std::string& payload) {
    auto it = conns_.find(fd);
    if (it == conns_.end())
      die("a link is gone");
    auto& c = it->second;
    c.out.push_back(static_cast<char>(type));
    auto len = static_cast<std::uint32_t>(payload.size());
    c.out.append(reinterpret_cast<const char*>(&len), 4);
    c.out += payload;
    flush(c);
  }

  void flush(conn& c) {
    while (!c.out.empty()) {
      auto n = ::send(c.fd, c.out.data(), c.out.size(), MSG_NOSIGNAL);
      if (n <= 0)
        break;
      c.out.erase(0, static_cast<std::size_t>(n));
    }
    if (c.out.empty() == !c.wants_out)
      return;
    c.wants_out = !c.out.empty();
    epoll_event e{};
    e.events = EPOLLIN | (c.wants_out ? static_cast<std::uint32_t>(EPOLLOUT) : 0U);
    e.data.fd = c.fd;
    ::epoll_ctl(ep_, EPOLL_CTL_MOD, c.fd, &e);
  }

  struct waiting {
    std::uint64_t offset;
    int origin;
    std::uint64_t token;
  };

  int nodes_;
  int id_;
  std::vector<int> cluster_;
  int file_ = -1, ep_ = -1, http_ = -1, link_ = -1, resp_ = -1;
  syncer sync_;
  std::unordered_map<int, conn> conns_;
  std::array<int, max_nodes> out_{-1, -1, -1};
  std::array<std::uint64_t, max_nodes> synced_{0, 0, 0};
  std::deque<waiting> waiting_;
  std::string wbuf_, topic_;
  std::uint64_t events_ = 0, pos_ = 0, gen_ = 0;
};

} // namespace

int main(int argc, char** argv) {
  int nodes = max_nodes, id = -1, http = 0, resp = 0;
  std::size_t prezero = 0;
  std::vector<int> cluster;
  std::string data;
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string k = argv[i], v = argv[i + 1];
    if (k == "--id")
      id = std::stoi(v);
    else if (k == "--nodes")
      nodes = std::stoi(v);
    else if (k == "--resp")
      resp = std::stoi(v);
    else if (k == "--http")
      http = std::stoi(v);
    else if (k == "--data")
      data = v;
    else if (k == "--prezero")
      prezero = std::stoul(v);
    else if (k == "--cluster")
      for (std::size_t at = 0; at < v.size();) {
        auto comma = v.find(',', at);
        cluster.push_back(std::stoi(v.substr(at, comma - at)));
        at = comma == std::string::npos ? v.size() : comma + 1;
      }
  }
  if (nodes == 1 && id < 0)
    id = 0;
  bool ok = (nodes == 1 || (nodes == max_nodes && cluster.size() == max_nodes && resp == 0))
            && id >= 0 && id < nodes && http > 0 && !data.empty();
  if (!ok) {
    std::fprintf(stderr, "usage: repl_floor --id 0|1|2 --http PORT --cluster P0,P1,P2 --data FILE "
                         "[--prezero MIB]\n"
                         "       repl_floor --nodes 1 --http PORT [--resp PORT] --data FILE "
                         "[--prezero MIB]\n");
    return 2;
  }
  std::signal(SIGTERM, [](int) { stopping = true; });
  std::signal(SIGINT, [](int) { stopping = true; });
  floor_node node{nodes, id, http, resp, cluster, data, prezero};
  std::fprintf(stderr, "repl_floor: node %d ready on http %d\n", id, http);
  auto n = node.run();
  std::printf("events %llu\n", static_cast<unsigned long long>(n));
  std::fflush(stdout);
  std::_Exit(0); // the sync thread may be in a cv wait
}
