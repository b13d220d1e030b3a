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
// With --partitions P (cluster only) the events are spread over P
// partitions as nerve spreads keyless events (each node takes the next in
// turn), partition p led by node p % 3 (nerve's default topic has its
// leaders on different nodes): every node leads some partitions, follows
// the others, and still keeps one file and one sync thread for all of them,
// as nerve keeps one WAL. That is the floor of nerve's multi-partition row.
//
// With --nodes 1 it is the single-node floor (issue 14): a POST, or an XADD
// over RESP (--resp PORT, parsed by hiredis' reader), is appended and
// answered once its group's fdatasync returned. bench/publish runs it beside
// nerve and Redis.
//
// With --parse beast an HTTP request is read by Beast's request_parser and
// its body checked as JSON by RapidJSON's SAX reader (nerve's parsers; an
// invalid body is answered 400), instead of the search for the blank line
// and Content-Length: what a real parse costs on top of the floor.
//
// With --rocksdb DIR (single node) the log is a RocksDB database instead of
// the file: each pass's events are one WriteBatch (a Put per event, key
// partition and offset) written without sync, and the sync thread calls
// SyncWAL() where it called fdatasync: the least a server must do for the
// guarantee with the storage engine nerve is built on, so the distance
// between the two floors is what RocksDB itself costs here.
//
//   repl_floor --id I --http PORT --cluster P0,P1,P2 --data FILE [--prezero MIB]
//              [--partitions P]
//   repl_floor --nodes 1 --http PORT [--resp PORT] --data FILE [--prezero MIB]
//              [--rocksdb DIR] [--parse beast]
//
// On SIGTERM it prints "events N" (the events in its file or database) and
// exits.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <boost/beast/http.hpp>
#include <hiredis/hiredis.h>
#include <rapidjson/reader.h>
#include <rocksdb/db.h>
#include <rocksdb/write_batch.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <condition_variable>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

namespace {

constexpr int max_nodes = 3;
constexpr std::uint32_t max_partitions = 64;
constexpr std::uint8_t msg_forward = 1; // u64 token, u32 partition, event bytes
constexpr std::uint8_t msg_answer = 2;  // u64 token, u64 offset, u32 partition
constexpr std::uint8_t msg_records = 3; // (u32 partition, u32 length, bytes)*
constexpr std::uint8_t msg_synced = 4;  // u64 events synced, one per partition

std::atomic<bool> stopping{false};
bool beast_parse = false; ///< --parse beast

using beast_parser = boost::beast::http::request_parser<boost::beast::http::string_body>;

void die(const std::string& why) {
  std::fprintf(stderr, "repl_floor: %s: %s\n", why.c_str(), std::strerror(errno));
  std::exit(1);
}

void put64(std::string& s, std::uint64_t v) {
  s.append(reinterpret_cast<const char*>(&v), 8);
}
void put32(std::string& s, std::uint32_t v) {
  s.append(reinterpret_cast<const char*>(&v), 4);
}
std::uint32_t get32(const char* p) {
  std::uint32_t v = 0;
  std::memcpy(&v, p, 4);
  return v;
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

/// Group commit: the loop asks for "synced up to these ends" (events per
/// partition), the thread fdatasyncs and reports the ends now on disk
/// through an eventfd.
struct syncer {
  using ends = std::vector<std::uint64_t>;
  int file = -1;
  rocksdb::DB* db = nullptr; ///< --rocksdb: SyncWAL() instead of fdatasync(file)
  int wake = -1;
  std::mutex m;
  std::condition_variable cv;
  ends want, done;
  std::uint64_t want_seq = 0, done_seq = 0;
  std::thread t;

  void start() {
    wake = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    t = std::thread{[this] {
      ::pthread_setname_np(::pthread_self(), "floor.sync");
      std::unique_lock<std::mutex> g{m};
      for (;;) {
        cv.wait(g, [this] { return stopping || want_seq > done_seq; });
        if (stopping)
          return;
        auto target = want; // everything written before the ask
        auto seq = want_seq;
        g.unlock();
        if (db != nullptr) {
          if (!db->SyncWAL().ok())
            die("SyncWAL");
        } else if (::fdatasync(file) != 0) {
          die("fdatasync");
        }
        g.lock();
        done = std::move(target);
        done_seq = seq;
        std::uint64_t one = 1;
        (void)::write(wake, &one, 8);
      }
    }};
  }
  void ask(const ends& written) {
    std::lock_guard<std::mutex> g{m};
    want = written;
    ++want_seq;
    cv.notify_one();
  }
  ends synced() {
    std::lock_guard<std::mutex> g{m};
    return done;
  }
};

struct conn {
  int fd = -1;
  bool http = false;
  redisReader* resp = nullptr; ///< a RESP client's reader (hiredis)
  int peer = -1;               ///< cluster link: the node at the other end
  std::string in, out;
  std::uint64_t gen = 0;
  bool wants_out = false;               ///< EPOLLOUT is on
  std::unique_ptr<beast_parser> parser; ///< --parse beast: the request being read
};

class floor_node {
public:
  floor_node(int nodes, int id, std::uint32_t partitions, int http_port, int resp_port,
             std::vector<int> cluster, const std::string& data, std::size_t prezero_mib,
             const std::string& rocksdb_dir)
    : nodes_(nodes), id_(id), partitions_(partitions), cluster_(std::move(cluster)),
      events_(partitions), waiting_(partitions) {
    for (auto& s : synced_)
      s.assign(partitions, 0);
    if (!rocksdb_dir.empty()) { // nerve's write options: pipelined writes, a large memtable
      rocksdb::Options o;
      o.create_if_missing = true;
      o.enable_pipelined_write = true;
      o.db_write_buffer_size = 256ULL << 20;
      rocksdb::DB* db = nullptr;
      auto st = rocksdb::DB::Open(o, rocksdb_dir, &db);
      if (!st.ok()) {
        errno = 0;
        die("open " + rocksdb_dir + ": " + st.ToString());
      }
      db_.reset(db);
      sync_.db = db;
    }
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
    std::uint64_t all = 0;
    if (db_) { // what the database holds, not what was counted on the way in
      std::unique_ptr<rocksdb::Iterator> it{db_->NewIterator(rocksdb::ReadOptions{})};
      for (it->SeekToFirst(); it->Valid(); it->Next())
        ++all;
      return all;
    }
    for (auto n : events_)
      all += n;
    return all;
  }

private:
  int leader_of(std::uint32_t p) const { return static_cast<int>(p % nodes_); }

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
        append(0, std::move(event), -1, (c.gen << 20) | static_cast<std::uint64_t>(c.fd));
      } else {
        c.out += "-ERR the floor takes XADD only\r\n";
        flush(c);
      }
      freeReplyObject(r);
    }
  }

  /// --parse beast: each request through Beast's parser (limits as
  /// nerve's defaults), its body through RapidJSON's SAX reader.
  void parse_http_beast(conn& c) {
    for (;;) {
      if (!c.parser) {
        c.parser = std::make_unique<beast_parser>();
        c.parser->header_limit(16U << 10);
        c.parser->body_limit(1U << 20);
        c.parser->eager(true);
      }
      boost::system::error_code ec;
      auto used = c.parser->put(boost::asio::buffer(c.in), ec);
      c.in.erase(0, used);
      if (ec == boost::beast::http::error::need_more)
        return;
      if (ec) {
        c.out += "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
        flush(c);
        c.in.clear();
        c.parser.reset();
        return;
      }
      if (!c.parser->is_done()) {
        if (used == 0)
          return;
        continue;
      }
      auto msg = c.parser->release();
      c.parser.reset();
      rapidjson::Reader reader;
      rapidjson::StringStream body{msg.body().c_str()};
      rapidjson::BaseReaderHandler<> ignore;
      auto target = msg.target();
      auto path_at = target.find("/v1/topics/");
      if (msg.method() != boost::beast::http::verb::post || path_at != 0) { // publishes only
        c.out += "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n";
        flush(c);
        continue;
      }
      if (!reader.Parse(body, ignore)) { // one JSON value, nothing after it
        c.out += "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n";
        flush(c);
        continue;
      }
      auto slash = target.find('/', path_at + 11);
      topic_ = std::string{target.substr(path_at + 11, slash - path_at - 11)};
      append(0, std::move(msg.body()), -1, (c.gen << 20) | static_cast<std::uint64_t>(c.fd));
    }
  }

  void parse_http(conn& c) {
    if (beast_parse)
      return parse_http_beast(c);
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
      auto p = static_cast<std::uint32_t>(next_++ % partitions_);
      if (leader_of(p) == id_) {
        append(p, std::move(event), -1, token);
      } else {
        std::string m;
        put64(m, token);
        put32(m, p);
        m += event;
        send(out_[leader_of(p)], msg_forward, m);
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
        append(get32(p + 8), std::string{p + 12, len - 12}, c.peer, get64(p));
      else if (type == msg_answer)
        answer(get64(p), get64(p + 8), get32(p + 16));
      else if (type == msg_records)
        apply(p, len);
      else if (type == msg_synced)
        for (std::uint32_t q = 0; q < partitions_; ++q)
          synced_[c.peer][q] = std::max(synced_[c.peer][q], get64(p + 8 * q));
      at += 5 + len;
    }
    c.in.erase(0, at);
  }

  // Leader of `p`: the event takes p's next offset; it is written, shipped
  // and answered once below p's least synced end (end_of_pass).
  void append(std::uint32_t p, std::string event, int origin, std::uint64_t token) {
    auto offset = events_[p]++;
    if (db_) {
      char key[12];
      for (int i = 0; i < 4; ++i)
        key[i] = static_cast<char>(p >> (24 - 8 * i));
      for (int i = 0; i < 8; ++i)
        key[4 + i] = static_cast<char>(offset >> (56 - 8 * i));
      batch_.Put(rocksdb::Slice{key, sizeof key}, event);
      waiting_[p].push_back({offset, origin, token});
      return;
    }
    auto at = wbuf_.size();
    put32(wbuf_, p);
    put32(wbuf_, static_cast<std::uint32_t>(event.size()));
    wbuf_ += event;
    ship_.append(wbuf_, at, std::string::npos);
    waiting_[p].push_back({offset, origin, token});
  }

  // Follower: the leader's records, appended as they are.
  void apply(const char* p, std::uint32_t len) {
    const char* end = p + len;
    while (p < end) {
      auto q = get32(p);
      auto n = get32(p + 4);
      wbuf_.append(p, 8 + n);
      p += 8 + n;
      ++events_[q];
    }
  }

  void on_synced() {
    std::uint64_t v = 0;
    (void)::read(sync_.wake, &v, 8);
    auto done = sync_.synced();
    if (done.empty())
      return;
    synced_[id_] = done;
    std::string m;
    for (auto end : done)
      put64(m, end);
    for (int j = 0; j < nodes_; ++j)
      if (j != id_ && leads_any(j))
        send(out_[j], msg_synced, m);
  }

  bool leads_any(int node) const {
    return static_cast<std::uint32_t>(node) < std::min<std::uint32_t>(partitions_, nodes_);
  }

  /// What this pass of the loop wrote goes to the file (and, on the leader,
  /// to the followers) in one write each; then the answers it allows.
  void end_of_pass() {
    if (batch_.Count() > 0) {
      if (!db_->Write(rocksdb::WriteOptions{}, &batch_).ok())
        die("rocksdb write");
      batch_.Clear();
      sync_.ask(events_);
    }
    if (!wbuf_.empty()) {
      if (::pwrite(file_, wbuf_.data(), wbuf_.size(), static_cast<off_t>(pos_))
          != static_cast<ssize_t>(wbuf_.size()))
        die("pwrite");
      pos_ += wbuf_.size();
      if (!ship_.empty())
        for (int j = 0; j < nodes_; ++j)
          if (j != id_)
            send(out_[j], msg_records, ship_);
      wbuf_.clear();
      ship_.clear();
      sync_.ask(events_);
    }
    for (std::uint32_t p = 0; p < partitions_; ++p) {
      if (leader_of(p) != id_)
        continue;
      auto hw = synced_[0][p];
      for (int j = 1; j < nodes_; ++j)
        hw = std::min(hw, synced_[j][p]);
      auto& queue = waiting_[p];
      while (!queue.empty() && queue.front().offset < hw) {
        auto w = queue.front();
        queue.pop_front();
        if (w.origin < 0) {
          answer(w.token, w.offset, p);
        } else {
          std::string m;
          put64(m, w.token);
          put64(m, w.offset);
          put32(m, p);
          send(out_[w.origin], msg_answer, m);
        }
      }
    }
  }

  void answer(std::uint64_t token, std::uint64_t offset, std::uint32_t partition) {
    int fd = static_cast<int>(token & 0xFFFFF);
    auto it = conns_.find(fd);
    if (it == conns_.end() || it->second.gen != token >> 20)
      return;
    auto body = R"({"events":[{"id":"floor-)" + std::to_string(offset) + R"(","topic":")" + topic_
                + R"(","partition":)" + std::to_string(partition) + R"(,"offset":)"
                + std::to_string(offset)
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
  std::uint32_t partitions_;
  std::vector<int> cluster_;
  int file_ = -1, ep_ = -1, http_ = -1, link_ = -1, resp_ = -1;
  syncer sync_;
  std::unordered_map<int, conn> conns_;
  std::array<int, max_nodes> out_{-1, -1, -1};
  std::vector<std::uint64_t> events_;                        ///< records per partition here
  std::array<std::vector<std::uint64_t>, max_nodes> synced_; ///< per node, per partition
  std::vector<std::deque<waiting>> waiting_;                 ///< per partition led here
  std::string wbuf_, ship_, topic_; ///< this pass's file bytes; its own records
  std::uint64_t pos_ = 0, gen_ = 0, next_ = 0;
  std::unique_ptr<rocksdb::DB> db_; ///< --rocksdb: the log
  rocksdb::WriteBatch batch_;       ///< this pass's events
};

} // namespace

int main(int argc, char** argv) {
  int nodes = max_nodes, id = -1, http = 0, resp = 0;
  std::uint32_t partitions = 1;
  std::size_t prezero = 0;
  std::vector<int> cluster;
  std::string data, rocksdb_dir, parse;
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
    else if (k == "--partitions")
      partitions = static_cast<std::uint32_t>(std::stoul(v));
    else if (k == "--rocksdb")
      rocksdb_dir = v;
    else if (k == "--prezero")
      prezero = std::stoul(v);
    else if (k == "--parse")
      parse = v;
    else if (k == "--cluster")
      for (std::size_t at = 0; at < v.size();) {
        auto comma = v.find(',', at);
        cluster.push_back(std::stoi(v.substr(at, comma - at)));
        at = comma == std::string::npos ? v.size() : comma + 1;
      }
  }
  if (nodes == 1 && id < 0)
    id = 0;
  beast_parse = parse == "beast";
  bool ok = (nodes == 1 || (nodes == max_nodes && cluster.size() == max_nodes && resp == 0))
            && id >= 0 && id < nodes && http > 0 && !data.empty() && partitions >= 1
            && partitions <= max_partitions && (nodes > 1 || partitions == 1)
            && (rocksdb_dir.empty() || nodes == 1)
            && (parse.empty() || (beast_parse && nodes == 1));
  if (!ok) {
    std::fprintf(stderr, "usage: repl_floor --id 0|1|2 --http PORT --cluster P0,P1,P2 --data FILE "
                         "[--prezero MIB] [--partitions P]\n"
                         "       repl_floor --nodes 1 --http PORT [--resp PORT] --data FILE "
                         "[--prezero MIB] [--rocksdb DIR] [--parse beast]\n");
    return 2;
  }
  std::signal(SIGTERM, [](int) { stopping = true; });
  std::signal(SIGINT, [](int) { stopping = true; });
  floor_node node{nodes, id, partitions, http, resp, cluster, data, prezero, rocksdb_dir};
  std::fprintf(stderr, "repl_floor: node %d ready on http %d\n", id, http);
  auto n = node.run();
  std::printf("events %llu\n", static_cast<unsigned long long>(n));
  std::fflush(stdout);
  std::_Exit(0); // the sync thread may be in a cv wait
}
