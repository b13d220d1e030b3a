// The cluster gate (see cluster_gate.hpp): Asio, with OpenSSL for
// cluster.tls, on a thread of its own.
#include "actors/cluster_gate.hpp"

#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <thread>
#include <type_traits>
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

enum class side { accepted, dialed };

/// What the gate's connections share; only touched on the gate's thread.
struct gate_shared {
  gate_limits limits;
  std::optional<ssl::context> tls;
  cluster_gate::accepted_fn accepted;
  std::size_t live = 0; ///< accepted connections open
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

class gate_conn_base {
public:
  virtual ~gate_conn_base() = default;
  virtual void close() = 0;
};

tcp::socket& lowest(tcp::socket& s) {
  return s;
}
tcp::socket& lowest(ssl::stream<tcp::socket>& s) {
  return s.next_layer();
}

/// One connection, accepted or dialed: TCP, TLS with cluster.tls, then
/// checked bytes from the peer to CAF and CAF's bytes back, until either
/// side ends.
template <class Stream>
class gate_conn final : public gate_conn_base,
                        public std::enable_shared_from_this<gate_conn<Stream>> {
public:
  static constexpr bool tls = !std::is_same_v<Stream, tcp::socket>;

  gate_conn(std::shared_ptr<gate_shared> shared, Stream remote, std::string who, side s)
    : shared_(std::move(shared)), remote_(std::move(remote)),
      local_(lowest(remote_).get_executor()), timer_(lowest(remote_).get_executor()),
      resolver_(lowest(remote_).get_executor()), who_(std::move(who)), side_(s),
      check_(shared_->limits.frame_bytes_max, s == side::accepted) {
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

  void close() override {
    if (closed_)
      return;
    closed_ = true;
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
      self->fail("TLS handshake failed: " + ec.message());
    });
  }

  /// The peer is let through: CAF gets its end of a socketpair. On an
  /// accepted link CAF speaks first (a BASP server handshake).
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
    read_remote();
    read_local();
    if (side_ == side::accepted)
      return shared_->accepted(fds[1]);
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

  void pass_in(std::size_t n) {
    auto frames = check_.frames();
    if (auto bad = check_.feed(in_.data(), n))
      return fail(*bad);
    if (check_.frames() != frames)
      arm_timer();
    net::async_write(local_, net::buffer(in_.data(), n),
                     then([](gate_conn& c, std::size_t) { c.read_remote(); }));
  }

  void read_local() {
    local_.async_read_some(net::buffer(out_), then([](gate_conn& c, std::size_t n) {
                             net::async_write(
                               c.remote_, net::buffer(c.out_.data(), n),
                               c.then([](gate_conn& c, std::size_t) { c.read_local(); }));
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
  bool connecting_ = false;
  bool handshaken_ = false;
  bool closed_ = false;
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
    thread_ = std::thread{[this] { io_.run(); }};
    return std::nullopt;
  }

  void accept(accepted_fn accepted) override {
    net::post(io_, [this, accepted = std::move(accepted)]() mutable {
      shared_->accepted = std::move(accepted);
      accept_next();
    });
  }

  void dial(const std::string& host, std::uint16_t port, dialed_fn done) override {
    net::post(io_, [this, host, port, done = std::move(done)]() mutable {
      auto who = host + ":" + std::to_string(port);
      if (shared_->tls)
        start_dial(std::make_shared<gate_conn<ssl::stream<tcp::socket>>>(
                     shared_, ssl::stream<tcp::socket>{io_, *shared_->tls}, who, side::dialed),
                   host, port, std::move(done));
      else
        start_dial(
          std::make_shared<gate_conn<tcp::socket>>(shared_, tcp::socket{io_}, who, side::dialed),
          host, port, std::move(done));
    });
  }

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
                    gate_limits limits) {
  auto shared = std::make_shared<gate_shared>();
  shared->limits = limits;
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
