// The cluster gate (see cluster_gate.hpp): Asio, with OpenSSL for
// cluster.tls, on a thread of its own.
#include "actors/cluster_gate.hpp"

#include <pthread.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <mutex>
#include <string_view>
#include <thread>
#include <type_traits>
#include <unordered_map>
#include <vector>

#include <boost/asio.hpp>
#include <boost/asio/ssl.hpp>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <spdlog/spdlog.h>

namespace nerve::actors {

namespace {

namespace net = boost::asio;
namespace ssl = net::ssl;
using tcp = net::ip::tcp;
using error_code = boost::system::error_code;
using namespace std::chrono_literals;

// BASP message types [caf/io/basp/message_type.hpp].
constexpr std::uint8_t server_handshake = 0x00;
constexpr std::uint8_t client_handshake = 0x01;
constexpr std::uint8_t last_message_type = 0x06; // heartbeat
/// A handshake carries a node id, the application ids and the published
/// actor's interface (under 1 KiB for nerve); this bounds what a peer can
/// make CAF allocate before it said who it is.
constexpr std::uint32_t handshake_payload_bytes_max = 64 * 1024;
/// The first byte of a TLS record carrying a handshake.
constexpr std::uint8_t tls_handshake_record = 0x16;

std::uint32_t read_be32(const std::uint8_t* p) {
  return (std::uint32_t{p[0]} << 24) | (std::uint32_t{p[1]} << 16) | (std::uint32_t{p[2]} << 8)
         | std::uint32_t{p[3]};
}

} // namespace

// -- basp_frame_check ------------------------------------------------------------

std::optional<std::string> basp_frame_check::feed(const std::uint8_t* data, std::size_t n) {
  while (n > 0 && !failed_) {
    if (payload_left_ > 0) {
      auto k = static_cast<std::size_t>(std::min<std::uint64_t>(payload_left_, n));
      payload_left_ -= k;
      data += k;
      n -= k;
      if (payload_left_ == 0)
        ++frames_;
      continue;
    }
    auto k = std::min(header_bytes - header_have_, n);
    std::memcpy(header_.data() + header_have_, data, k);
    header_have_ += k;
    data += k;
    n -= k;
    if (header_have_ < header_bytes)
      break;
    header_have_ = 0;
    failed_ = check_header();
    if (failed_)
      break;
    ++headers_;
    payload_left_ = read_be32(header_.data() + 4);
    if (payload_left_ == 0)
      ++frames_;
  }
  return failed_;
}

std::optional<std::string> basp_frame_check::check_header() const {
  auto op = header_[0];
  auto len = read_be32(header_.data() + 4);
  if (op > last_message_type && headers_ > 0)
    return "a frame has the unknown type " + std::to_string(op);
  if (op > last_message_type)
    return "its first byte, " + std::to_string(op) + ", is no BASP message type"
           + (op == tls_handshake_record
                ? " (it looks like a TLS handshake: this node runs without cluster.tls)"
                : "");
  if (len > payload_bytes_max_)
    return "a frame announces " + std::to_string(len) + " payload bytes, more than the limit of "
           + std::to_string(payload_bytes_max_);
  auto expected = from_dialer_ ? client_handshake : server_handshake;
  auto other = from_dialer_ ? server_handshake : client_handshake;
  if (headers_ == 0 && op != expected)
    return "its first frame is no " + std::string{from_dialer_ ? "client" : "server"}
           + " handshake (type " + std::to_string(op) + ")";
  if (op == other)
    return std::string{"a "} + (from_dialer_ ? "dialing" : "dialed") + " peer sent a "
           + (from_dialer_ ? "server" : "client") + " handshake";
  if (op != expected)
    return std::nullopt;
  // CAF 0.17.6 dereferences the missing payload of such a header (SIGSEGV).
  if (len == 0)
    return "a handshake frame without payload";
  if (len > handshake_payload_bytes_max)
    return "a handshake frame announces " + std::to_string(len) + " payload bytes, more than the "
           + std::to_string(handshake_payload_bytes_max) + " allowed";
  return std::nullopt;
}

namespace {

constexpr std::size_t buffer_bytes = 64 * 1024;

// A member link's frames (cluster wire 3): a kind byte and a big-endian
// payload length, then the payload. The dialer's first frame is a hello
// naming it; then CAF's BASP bytes (in chunks of any size) and nerve's data
// frames interleave.
constexpr std::uint32_t link_wire = 3;
constexpr std::size_t gate_header_bytes = 5;
constexpr std::uint8_t kind_basp = 0;
constexpr std::uint8_t kind_data = 1;
constexpr std::uint8_t kind_hello = 2;
constexpr std::uint32_t basp_chunk_bytes_max = 1U << 20;
constexpr std::uint32_t hello_bytes_max = 512;
constexpr std::string_view hello_magic = "nerve-link/3 ";
/// CAF's end is not read while this much waits for the peer.
constexpr std::size_t local_pause_bytes = 4U << 20;

enum class side { accepted, dialed };

class gate_conn_base {
public:
  virtual ~gate_conn_base() = default;
  virtual void close() = 0;
  /// Queues a data frame for the peer; false once the link closed. Thread-safe.
  virtual bool queue_data(std::string payload) = 0;
};

/// What the gate's connections share; only touched on the gate's thread,
/// but for `links` (under its mutex).
struct gate_shared {
  gate_limits limits;
  std::optional<ssl::context> tls;
  std::string self; ///< this node's id, said in the hello of every dial
  cluster_gate::accepted_fn accepted;
  cluster_gate::data_fn on_data;
  std::size_t live = 0; ///< accepted connections open
  /// The open link to each member that said who it is (dialed, or its hello came).
  std::mutex links_mutex;
  std::unordered_map<std::string, std::weak_ptr<gate_conn_base>> links;

  /// The newest link to a member takes its frames: a member that dials
  /// again found its previous link dead (a half-open one is closed by CAF's
  /// heartbeat timeout later, and unlink leaves the newer in place).
  void link(const std::string& peer, const std::shared_ptr<gate_conn_base>& conn) {
    std::lock_guard<std::mutex> guard{links_mutex};
    links[peer] = conn;
  }
  void unlink(const std::string& peer, const gate_conn_base* conn) {
    std::lock_guard<std::mutex> guard{links_mutex};
    if (auto it = links.find(peer); it != links.end()) {
      auto now = it->second.lock();
      if (!now || now.get() == conn)
        links.erase(it);
    }
  }
  std::shared_ptr<gate_conn_base> link_of(const std::string& peer) {
    std::lock_guard<std::mutex> guard{links_mutex};
    auto it = links.find(peer);
    return it == links.end() ? nullptr : it->second.lock();
  }
  // Refusals are logged at most once a second: a flood must not flood the log.
  std::chrono::steady_clock::time_point last_refusal_log{};
  std::size_t refusals_unlogged = 0;

  void refused(side s, const std::string& who, const std::string& why) {
    auto now = std::chrono::steady_clock::now();
    if (now - last_refusal_log < 1s) {
      ++refusals_unlogged;
      return;
    }
    auto what = s == side::accepted ? "refused a connection from" : "closed the link to";
    if (refusals_unlogged > 0)
      spdlog::warn("cluster: {} {}: {} ({} more refused since the last such line)", what, who, why,
                   refusals_unlogged);
    else
      spdlog::warn("cluster: {} {}: {}", what, who, why);
    last_refusal_log = now;
    refusals_unlogged = 0;
  }
};

tcp::socket& lowest(tcp::socket& s) {
  return s;
}
tcp::socket& lowest(ssl::stream<tcp::socket>& s) {
  return s.next_layer();
}

/// One connection, accepted or dialed: TCP, TLS with cluster.tls, then
/// nerve's frames both ways until either side ends: the dialer's hello
/// first, then CAF's BASP bytes (checked on the way in) and nerve's data
/// frames, interleaved.
template <class Stream>
class gate_conn final : public gate_conn_base,
                        public std::enable_shared_from_this<gate_conn<Stream>> {
public:
  static constexpr bool tls = !std::is_same_v<Stream, tcp::socket>;

  gate_conn(std::shared_ptr<gate_shared> shared, Stream remote, std::string who, side s,
            std::string peer = {})
    : shared_(std::move(shared)), remote_(std::move(remote)),
      local_(lowest(remote_).get_executor()), timer_(lowest(remote_).get_executor()),
      resolver_(lowest(remote_).get_executor()), who_(std::move(who)), side_(s),
      check_(shared_->limits.frame_bytes_max, s == side::accepted), peer_(std::move(peer)) {
    if (side_ == side::accepted)
      ++shared_->live;
  }

  ~gate_conn() override {
    if (side_ == side::accepted)
      --shared_->live;
  }

  void start_accepted() {
    arm_timer();
    if constexpr (tls)
      handshake(ssl::stream_base::server);
    else
      open();
  }

  void start_dial(const std::string& host, std::uint16_t port, cluster_gate::dialed_fn done) {
    done_ = std::move(done);
    connecting_ = true;
    arm_timer(shared_->limits.connect_timeout);
    resolver_.async_resolve(host, std::to_string(port),
                            [self = this->shared_from_this(),
                             host](const error_code& ec, const tcp::resolver::results_type& found) {
                              if (self->closed_)
                                return;
                              if (ec)
                                return self->fail("cannot resolve " + host + ": " + ec.message());
                              net::async_connect(
                                lowest(self->remote_), found,
                                [self](const error_code& ec, const tcp::endpoint&) {
                                  if (self->closed_)
                                    return;
                                  if (ec)
                                    return self->fail("cannot connect: " + ec.message());
                                  self->connected();
                                });
                            });
  }

  bool queue_data(std::string payload) override {
    if (!open_.load())
      return false;
    queue_frame(kind_data, payload.data(), payload.size());
    return true;
  }

  void close() override {
    if (closed_)
      return;
    closed_ = true;
    open_ = false;
    {
      // No other thread writes to the socket from here on (queue_frame).
      std::lock_guard<std::mutex> guard{out_mutex_};
      direct_ = false;
    }
    if (!peer_.empty())
      shared_->unlink(peer_, this);
    error_code ignored;
    timer_.cancel();
    resolver_.cancel();
    local_.close(ignored);
    lowest(remote_).close(ignored);
  }

private:
  /// Before the link is open, a dial's failure goes to the dialer (which
  /// logs it); later ones, and the accepted side's, are logged here.
  void fail(const std::string& why) {
    if (closed_)
      return;
    if (done_) {
      auto done = std::move(done_);
      done_ = nullptr;
      close();
      return done(tl::make_unexpected(why));
    }
    shared_->refused(side_, who_, why);
    close();
  }

  void arm_timer() { arm_timer(shared_->limits.frame_timeout); }

  /// A frame is due within the timeout of the accept or the last frame
  /// (while connecting: the connection is).
  void arm_timer(std::chrono::milliseconds limit) {
    timer_.expires_after(limit);
    timer_.async_wait([self = this->shared_from_this(), limit](const error_code& ec) {
      if (ec || self->closed_)
        return;
      auto within = limit.count() % 1000 == 0 ? std::to_string(limit.count() / 1000) + " s"
                                              : std::to_string(limit.count()) + " ms";
      if (self->connecting_)
        return self->fail("no TCP connection to " + self->who_ + " within " + within);
      if (tls && !self->handshaken_)
        return self->fail("no TLS handshake within " + within + " (a peer without cluster.tls?)");
      self->fail("no complete frame within " + within);
    });
  }

  void connected() {
    connecting_ = false;
    error_code ignored;
    lowest(remote_).set_option(tcp::no_delay{true}, ignored);
    arm_timer();
    if constexpr (tls)
      handshake(ssl::stream_base::client);
    else
      open();
  }

  void handshake(ssl::stream_base::handshake_type type) {
    remote_.async_handshake(type, [self = this->shared_from_this()](const error_code& ec) {
      if (self->closed_)
        return;
      if (!ec) {
        self->handshaken_ = true;
        return self->open();
      }
      if (ec == net::error::eof || ec == ssl::error::stream_truncated
          || ec == net::error::connection_reset) {
        // The dialer's own TCP probe, a port scan, or a peer refusing us.
        if (self->side_ == side::accepted)
          return self->close();
        return self->fail("the peer closed the connection during the TLS handshake (does it run "
                          "with cluster.tls, with the same CA?)");
      }
      auto why = "TLS handshake failed: " + ec.message();
      if (ec.category() == net::error::get_ssl_category()
          && ERR_GET_REASON(static_cast<unsigned long>(ec.value())) == SSL_R_WRONG_VERSION_NUMBER)
        why += " (the peer answers without TLS: does it run without cluster.tls?)";
      self->fail(why);
    });
  }

  /// The peer is let through: CAF gets its end of a socketpair. On an
  /// accepted link CAF speaks first (a BASP server handshake), but its
  /// words reach the peer only once the peer's hello came: a caller that
  /// is no nerve node (a TLS dialer at a plaintext node, a port scan) is
  /// refused on its first bytes without ever reading ours.
  void open() {
    int fds[2];
    if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) != 0)
      return fail(std::string{"no socketpair for CAF: "} + std::strerror(errno));
    error_code ec;
    local_.assign(net::local::stream_protocol{}, fds[0], ec);
    if (ec) {
      ::close(fds[0]);
      ::close(fds[1]);
      return fail("no socketpair for CAF: " + ec.message());
    }
    open_ = true;
    if constexpr (!tls) {
      std::lock_guard<std::mutex> guard{out_mutex_};
      direct_ = true;
    }
    if (side_ == side::dialed) {
      auto hello = std::string{hello_magic} + shared_->self;
      queue_frame(kind_hello, hello.data(), hello.size());
      shared_->link(peer_, this->shared_from_this());
    }
    read_remote();
    if (side_ == side::accepted)
      return shared_->accepted(fds[1]);
    read_local();
    auto done = std::move(done_);
    done_ = nullptr;
    done(fds[1]);
  }

  /// A completion handler that goes on with `next(conn, bytes)` unless the
  /// link closed meanwhile or the operation failed (then it closes).
  template <class Next>
  auto then(Next next) {
    return [self = this->shared_from_this(), next](const error_code& ec, std::size_t n) {
      if (self->closed_)
        return;
      if (ec)
        return self->close();
      next(*self, n);
    };
  }

  void read_remote() {
    remote_.async_read_some(net::buffer(in_),
                            then([](gate_conn& c, std::size_t n) { c.pass_in(n); }));
  }

  /// Splits what came from the peer into frames: BASP bytes go (checked)
  /// to CAF, data frames to the node, the hello names the peer.
  void pass_in(std::size_t n) {
    const auto* at = in_.data();
    const auto* end = at + n;
    while (at < end) {
      if (head_have_ < gate_header_bytes) {
        auto k = std::min<std::size_t>(gate_header_bytes - head_have_, end - at);
        std::memcpy(head_.data() + head_have_, at, k);
        head_have_ += k;
        at += k;
        if (head_have_ < gate_header_bytes)
          break;
        if (auto bad = check_frame_head())
          return fail(*bad);
        kind_ = head_[0];
        left_ = read_be32(head_.data() + 1);
        if (left_ == 0 && !frame_done())
          return;
        continue;
      }
      auto k = static_cast<std::size_t>(std::min<std::uint64_t>(left_, end - at));
      if (kind_ == kind_basp) {
        if (auto bad = check_.feed(at, k))
          return fail(*bad);
        to_local_.append(reinterpret_cast<const char*>(at), k);
      } else {
        frame_.append(reinterpret_cast<const char*>(at), k);
      }
      at += k;
      left_ -= k;
      if (left_ == 0 && !frame_done())
        return;
    }
    if (to_local_.empty())
      return read_remote();
    net::async_write(local_, net::buffer(to_local_), then([](gate_conn& c, std::size_t) {
                       c.to_local_.clear();
                       c.read_remote();
                     }));
  }

  /// Why a frame header just read ends the link, if it does.
  [[nodiscard]] std::optional<std::string> check_frame_head() const {
    auto kind = head_[0];
    auto len = read_be32(head_.data() + 1);
    bool first = frames_in_ == 0;
    if (first && side_ == side::accepted && kind != kind_hello) {
      if (kind == tls_handshake_record)
        return "its first byte, 22, is no nerve link frame (it looks like a TLS handshake: this "
               "node runs without cluster.tls)";
      return "its first frame is no nerve hello (kind " + std::to_string(kind)
             + "): not a nerve node of cluster wire " + std::to_string(link_wire) + "?";
    }
    if (kind == kind_hello && (!first || side_ == side::dialed))
      return std::string{"a hello frame where none is due"};
    if (kind > kind_hello)
      return "a frame of the unknown kind " + std::to_string(kind);
    auto max = kind == kind_hello  ? hello_bytes_max
               : kind == kind_basp ? basp_chunk_bytes_max
                                   : shared_->limits.frame_bytes_max;
    if (len > max)
      return "a frame announces " + std::to_string(len) + " payload bytes, more than the limit of "
             + std::to_string(max);
    return std::nullopt;
  }

  /// A frame is complete; false when it ended the link.
  bool frame_done() {
    head_have_ = 0;
    ++frames_in_;
    arm_timer();
    if (kind_ == kind_hello) {
      if (frame_.compare(0, hello_magic.size(), hello_magic) != 0
          || frame_.size() == hello_magic.size()) {
        fail("its hello is not a nerve node's (" + std::to_string(frame_.size()) + " bytes)");
        return false;
      }
      peer_ = frame_.substr(hello_magic.size());
      frame_.clear();
      shared_->link(peer_, this->shared_from_this());
      read_local();
      return true;
    }
    if (kind_ == kind_data) {
      if (shared_->on_data)
        shared_->on_data(peer_, std::move(frame_));
      frame_.clear();
    }
    return true;
  }

  void read_local() {
    local_.async_read_some(net::buffer(out_), then([](gate_conn& c, std::size_t n) {
                             c.queue_frame(kind_basp, c.out_.data(), n);
                             // CAF writes faster than the peer reads: wait for the queue.
                             bool pause = false;
                             {
                               std::lock_guard<std::mutex> guard{c.out_mutex_};
                               pause = c.queued_bytes_ > local_pause_bytes;
                               c.local_paused_ = pause;
                             }
                             if (!pause)
                               c.read_local();
                           }));
  }

  /// Sends one frame to the peer, or queues it and makes sure a write is
  /// underway. Any thread. Without TLS, a frame that finds nothing queued
  /// or being written is sent right away on the caller's thread (a
  /// non-blocking send under the queue's lock, so frames keep their order):
  /// a partition actor's fetch or answer then costs no wake-up of the
  /// gate's thread. What the socket does not take at once is queued.
  void queue_frame(std::uint8_t kind, const void* data, std::size_t n) {
    std::string f;
    f.reserve(gate_header_bytes + n);
    f.push_back(static_cast<char>(kind));
    for (int i = 0; i < 4; ++i)
      f.push_back(static_cast<char>(static_cast<std::uint32_t>(n) >> (24 - 8 * i)));
    f.append(static_cast<const char*>(data), n);
    bool kick = false;
    {
      std::lock_guard<std::mutex> guard{out_mutex_};
      if (direct_ && !writing_) {
        auto sent = ::send(lowest(remote_).native_handle(), f.data(), f.size(),
                           MSG_DONTWAIT | MSG_NOSIGNAL);
        if (sent == static_cast<ssize_t>(f.size()))
          return;
        if (sent > 0)
          f.erase(0, static_cast<std::size_t>(sent));
        // Else the socket is full or failed: the gate's write says which.
      }
      queued_bytes_ += f.size();
      outbox_.push_back(std::move(f));
      kick = !writing_;
      writing_ = true;
    }
    if (kick)
      net::post(lowest(remote_).get_executor(), [self = this->shared_from_this()] {
        if (!self->closed_)
          self->write_next();
      });
  }

  /// Writes everything queued in one go, then what came meanwhile.
  void write_next() {
    bool resume = false;
    {
      std::lock_guard<std::mutex> guard{out_mutex_};
      sending_.clear();
      if (outbox_.empty()) {
        writing_ = false;
        queued_bytes_ = 0;
        resume = local_paused_;
        local_paused_ = false;
      } else {
        sending_.swap(outbox_);
        queued_bytes_ = 0;
      }
    }
    if (sending_.empty()) {
      if (resume)
        read_local();
      return;
    }
    buffers_.clear();
    for (auto& f : sending_)
      buffers_.emplace_back(f.data(), f.size());
    net::async_write(remote_, buffers_, then([](gate_conn& c, std::size_t) {
                       bool resume = false;
                       {
                         std::lock_guard<std::mutex> guard{c.out_mutex_};
                         resume = c.local_paused_ && c.queued_bytes_ <= local_pause_bytes;
                         if (resume)
                           c.local_paused_ = false;
                       }
                       if (resume)
                         c.read_local();
                       c.write_next();
                     }));
  }

  std::shared_ptr<gate_shared> shared_;
  Stream remote_;
  net::local::stream_protocol::socket local_;
  net::steady_timer timer_;
  tcp::resolver resolver_;
  std::string who_;
  side side_;
  basp_frame_check check_;
  cluster_gate::dialed_fn done_;
  std::string peer_; ///< the member at the other end, once known
  bool connecting_ = false;
  bool handshaken_ = false;
  bool closed_ = false;
  std::atomic<bool> open_{false}; ///< frames may be queued (read on any thread)
  // Inbound: the frame being read.
  std::array<std::uint8_t, gate_header_bytes> head_{};
  std::size_t head_have_ = 0;
  std::uint8_t kind_ = 0;
  std::uint64_t left_ = 0;
  std::uint64_t frames_in_ = 0;
  std::string frame_;    ///< a data or hello frame's payload so far
  std::string to_local_; ///< BASP bytes on their way to CAF
  // Outbound: frames queued by any thread, written by the gate's.
  std::mutex out_mutex_;
  std::vector<std::string> outbox_; ///< guarded by out_mutex_
  std::size_t queued_bytes_ = 0;    ///< guarded by out_mutex_
  bool writing_ = false;            ///< a write is underway or posted; guarded by out_mutex_
  bool local_paused_ = false;       ///< CAF's end is not read; guarded by out_mutex_
  bool direct_ = false; ///< frames may be sent on the caller's thread; guarded by out_mutex_
  std::vector<std::string> sending_;
  std::vector<net::const_buffer> buffers_;
  // Not zeroed: memory is touched only as bytes flow.
  std::array<std::uint8_t, buffer_bytes> in_;
  std::array<std::uint8_t, buffer_bytes> out_;
};

class gate_impl final : public cluster_gate {
public:
  explicit gate_impl(std::shared_ptr<gate_shared> shared) : shared_(std::move(shared)) {}

  ~gate_impl() override { stop(); }

  [[nodiscard]] std::optional<std::string> listen(const std::string& host, std::uint16_t port) {
    error_code ec;
    tcp::endpoint at;
    if (host == "0.0.0.0" || host == "::") {
      at = tcp::endpoint{host == "::" ? tcp::v6() : tcp::v4(), port};
    } else {
      tcp::resolver resolver{io_};
      auto found = resolver.resolve(host, std::to_string(port), ec);
      if (ec || found.empty())
        return "cannot listen on cluster.listen " + host + ":" + std::to_string(port)
               + ": cannot resolve " + host + ": " + ec.message();
      at = found.begin()->endpoint();
    }
    acceptor_.open(at.protocol(), ec);
    if (!ec && at.address().is_v6())
      acceptor_.set_option(net::ip::v6_only{false}, ec);
    if (!ec)
      acceptor_.set_option(net::socket_base::reuse_address{true}, ec);
    if (!ec)
      acceptor_.bind(at, ec);
    if (!ec)
      acceptor_.listen(net::socket_base::max_listen_connections, ec);
    if (!ec)
      port_ = acceptor_.local_endpoint(ec).port();
    if (ec)
      return "cannot listen on cluster.listen " + host + ":" + std::to_string(port) + ": "
             + ec.message();
    thread_ = std::thread{[this] {
      ::pthread_setname_np(::pthread_self(), "nerve.gate");
      io_.run();
    }};
    return std::nullopt;
  }

  void accept(accepted_fn accepted) override {
    net::post(io_, [this, accepted = std::move(accepted)]() mutable {
      shared_->accepted = std::move(accepted);
      accept_next();
    });
  }

  void dial(const std::string& peer, const std::string& host, std::uint16_t port,
            dialed_fn done) override {
    net::post(io_, [this, peer, host, port, done = std::move(done)]() mutable {
      auto who = host + ":" + std::to_string(port);
      if (shared_->tls)
        start_dial(
          std::make_shared<gate_conn<ssl::stream<tcp::socket>>>(
            shared_, ssl::stream<tcp::socket>{io_, *shared_->tls}, who, side::dialed, peer),
          host, port, std::move(done));
      else
        start_dial(std::make_shared<gate_conn<tcp::socket>>(shared_, tcp::socket{io_}, who,
                                                            side::dialed, peer),
                   host, port, std::move(done));
    });
  }

  void on_data(data_fn fn) override { shared_->on_data = std::move(fn); }

  bool send_data(const std::string& peer, std::string payload) override {
    auto conn = shared_->link_of(peer);
    return conn && conn->queue_data(std::move(payload));
  }

  void run(std::function<void()> fn) override { net::post(io_, std::move(fn)); }

  std::uint16_t port() const override { return port_; }

  void stop() override {
    if (!thread_.joinable())
      return;
    // Closing on the gate's thread: peers and CAF see the links end now.
    net::post(io_, [this] {
      error_code ignored;
      acceptor_.close(ignored);
      retry_.cancel();
      for (auto& c : conns_)
        if (auto conn = c.lock())
          conn->close();
      io_.stop();
    });
    thread_.join();
  }

private:
  template <class Conn>
  void start_dial(std::shared_ptr<Conn> conn, const std::string& host, std::uint16_t port,
                  dialed_fn done) {
    track(conn);
    conn->start_dial(host, port, std::move(done));
  }

  void track(std::shared_ptr<gate_conn_base> conn) {
    conns_.erase(std::remove_if(conns_.begin(), conns_.end(), [](auto& c) { return c.expired(); }),
                 conns_.end());
    conns_.push_back(std::move(conn));
  }

  void accept_next() {
    acceptor_.async_accept([this](const error_code& ec, tcp::socket s) {
      if (ec == net::error::operation_aborted)
        return;
      if (ec) {
        // Out of descriptors, most likely: try again shortly, not in a loop.
        spdlog::warn("cluster: cannot accept a connection: {}", ec.message());
        retry_.expires_after(100ms);
        retry_.async_wait([this](const error_code& e) {
          if (!e)
            accept_next();
        });
        return;
      }
      admit(std::move(s));
      accept_next();
    });
  }

  void admit(tcp::socket s) {
    error_code ec;
    auto peer = s.remote_endpoint(ec);
    auto who = ec ? std::string{"an unknown address"}
                  : peer.address().to_string() + ":" + std::to_string(peer.port());
    if (shared_->live >= shared_->limits.connections_max)
      return shared_->refused(side::accepted, who,
                              "already " + std::to_string(shared_->live)
                                + " cluster connections, the most allowed");
    s.set_option(tcp::no_delay{true}, ec);
    if (shared_->tls) {
      auto conn = std::make_shared<gate_conn<ssl::stream<tcp::socket>>>(
        shared_, ssl::stream<tcp::socket>{std::move(s), *shared_->tls}, who, side::accepted);
      track(conn);
      conn->start_accepted();
    } else {
      auto conn
        = std::make_shared<gate_conn<tcp::socket>>(shared_, std::move(s), who, side::accepted);
      track(conn);
      conn->start_accepted();
    }
  }

  net::io_context io_{1};
  // Keeps the thread running between dials until stop.
  net::executor_work_guard<net::io_context::executor_type> work_{io_.get_executor()};
  std::shared_ptr<gate_shared> shared_;
  tcp::acceptor acceptor_{io_};
  net::steady_timer retry_{io_};
  std::vector<std::weak_ptr<gate_conn_base>> conns_;
  std::uint16_t port_ = 0;
  std::thread thread_;
};

/// Both sides of cluster.tls: a peer must show a certificate signed by the
/// cluster CA, and gets ours. No host name is checked: any certificate of
/// the CA is a member's.
tl::expected<ssl::context, std::string> make_tls(const gate_tls_files& files) {
  ssl::context ctx{ssl::context::tls};
  ctx.set_options(ssl::context::default_workarounds | ssl::context::no_sslv2
                  | ssl::context::no_sslv3 | ssl::context::no_tlsv1 | ssl::context::no_tlsv1_1);
  // An encrypted key would make OpenSSL ask on the terminal.
  ctx.set_password_callback([](std::size_t, ssl::context::password_purpose) { return ""; });
  error_code ec;
  ctx.use_certificate_chain_file(files.cert, ec);
  if (ec)
    return tl::make_unexpected("cluster.tls.cert " + files.cert
                               + " is no PEM certificate: " + ec.message());
  ctx.use_private_key_file(files.key, ssl::context::pem, ec);
  if ((ec && ERR_GET_REASON(static_cast<unsigned long>(ec.value())) == X509_R_KEY_VALUES_MISMATCH)
      || (!ec && SSL_CTX_check_private_key(ctx.native_handle()) != 1))
    return tl::make_unexpected("cluster.tls.key " + files.key
                               + " does not belong to the certificate in " + files.cert);
  if (ec)
    return tl::make_unexpected("cluster.tls.key " + files.key
                               + " is no unencrypted PEM private key: " + ec.message());
  ctx.load_verify_file(files.ca, ec);
  if (ec)
    return tl::make_unexpected("cluster.tls.ca " + files.ca
                               + " holds no PEM CA certificate: " + ec.message());
  ctx.set_verify_mode(ssl::verify_peer | ssl::verify_fail_if_no_peer_cert);
  return ctx;
}

} // namespace

tl::expected<std::shared_ptr<cluster_gate>, std::string>
cluster_gate::start(const std::string& host, std::uint16_t port, std::optional<gate_tls_files> tls,
                    gate_limits limits, std::string self) {
  auto shared = std::make_shared<gate_shared>();
  shared->limits = limits;
  shared->self = std::move(self);
  if (tls) {
    auto made = make_tls(*tls);
    if (!made)
      return tl::make_unexpected(made.error());
    shared->tls.emplace(std::move(*made));
  }
  auto gate = std::make_shared<gate_impl>(std::move(shared));
  if (auto err = gate->listen(host, port))
    return tl::make_unexpected(*err);
  return gate;
}

} // namespace nerve::actors
