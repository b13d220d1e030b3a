// The Redis protocol listener: Asio connections, each splitting its bytes
// into commands with a request_reader (resp_reader.hpp), running them from
// the command table, and writing replies in command order however late
// their handlers answer. The only translation unit of the listener that
// includes Asio; the reader, the table and the reply encoder are in
// resp_protocol.cpp.
#include "http/resp_server.hpp"

#include <algorithm>
#include <array>
#include <atomic>
#include <cctype>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <deque>
#include <exception>
#include <mutex>
#include <optional>
#include <pthread.h>
#include <thread>
#include <utility>

#include <boost/asio.hpp>
#include <spdlog/spdlog.h>

#include "actors/publish_lane.hpp"
#include "http/resp_reader.hpp"

namespace nerve::http::resp {

namespace net = boost::asio;
using tcp = net::ip::tcp;
using error_code = boost::system::error_code;
using steady = std::chrono::steady_clock;

// -- connections -----------------------------------------------------------------

namespace detail {

/// Lets threads outside a connection reach it until it closes (or the
/// server stops): nothing is posted to a connection's event loop after its
/// gate closed, so nothing reaches a loop that is gone.
struct gate {
  std::mutex mutex;
  bool open = true;
};

/// One command's reply in its connection's queue. `bytes`, `ready` and
/// `close_after` belong to the connection's I/O thread.
struct slot {
  std::string bytes;
  bool ready = false;
  bool close_after = false;
  std::function<void()> cancel; ///< guarded by gate::mutex
};

class connection;

/// A responder's state, shared by its copies.
struct pending {
  std::shared_ptr<gate> gate_;
  std::weak_ptr<connection> conn;
  std::shared_ptr<slot> s;
  net::io_context::executor_type exec;
  protocol proto;
  std::atomic<bool> answered{false};

  pending(std::shared_ptr<gate> g, std::weak_ptr<connection> c, std::shared_ptr<slot> sl,
          net::io_context::executor_type e, protocol p)
    : gate_(std::move(g)), conn(std::move(c)), s(std::move(sl)), exec(std::move(e)), proto(p) {}

  pending(const pending&) = delete;
  pending& operator=(const pending&) = delete;

  ~pending() {
    if (!answered.load())
      deliver(reply{proto}.error("ERR the command could not be completed; retry").take(), false);
  }

  void deliver(std::string bytes, bool close_after);
};

/// What every connection of one server shares.
struct shared_state {
  server_options opts;
  command_table commands;
  std::atomic<std::size_t> connections{0};
  std::atomic<std::uint64_t> next_id{1};
  std::atomic<std::uint16_t> port{0};
  /// Commands read and not yet answered and written, all connections.
  std::atomic<std::size_t> in_flight{0};
  std::mutex idle_mutex;
  std::condition_variable idle_cv;
  std::mutex registry_mutex;
  std::map<std::uint64_t, std::weak_ptr<connection>> registry;

  void done(std::size_t n) {
    if (n != 0 && in_flight.fetch_sub(n) == n) {
      std::lock_guard<std::mutex> guard{idle_mutex};
      idle_cv.notify_all();
    }
  }
};

std::string endpoint_text(const tcp::endpoint& ep) {
  auto addr = ep.address();
  auto host = addr.is_v6() ? "[" + addr.to_string() + "]" : addr.to_string();
  return host + ":" + std::to_string(ep.port());
}

std::int64_t seconds_since(steady::time_point t) {
  return std::chrono::duration_cast<std::chrono::seconds>(steady::now() - t).count();
}

class connection : public std::enable_shared_from_this<connection>, public context {
public:
  connection(tcp::socket socket, std::shared_ptr<shared_state> state, net::io_context& loop)
    : socket_(std::move(socket)), state_(std::move(state)), loop_(loop.get_executor()) {
    info_.id = state_->next_id.fetch_add(1);
    error_code ec;
    if (auto ep = socket_.remote_endpoint(ec); !ec)
      info_.peer = endpoint_text(ep);
    if (auto ep = socket_.local_endpoint(ec); !ec)
      info_.local = endpoint_text(ep);
    socket_.set_option(tcp::no_delay(true), ec);
    authenticated_ = state_->opts.token.empty();
  }

  ~connection() override {
    if (!counted_)
      return;
    state_->connections.fetch_sub(1);
    std::lock_guard<std::mutex> guard{state_->registry_mutex};
    state_->registry.erase(info_.id);
  }

  connection(const connection&) = delete;
  connection& operator=(const connection&) = delete;

  /// Serves the connection (on its event loop).
  void start() {
    counted_ = true;
    state_->connections.fetch_add(1);
    {
      std::lock_guard<std::mutex> guard{state_->registry_mutex};
      state_->registry.emplace(info_.id, weak_from_this());
    }
    net::dispatch(socket_.get_executor(), [self = shared_from_this()] { self->read(); });
  }

  /// Answers Redis' error for a full server and closes.
  void refuse() {
    net::dispatch(socket_.get_executor(), [self = shared_from_this()] {
      self->closing_ = true;
      self->close_after_write_ = true;
      self->out_ = reply{protocol::resp2}.error("ERR max number of clients reached").take();
      self->write_if_idle();
    });
  }

  /// Closes now (on the event loop): pending commands are cancelled.
  void close() {
    if (closed_)
      return;
    closed_ = true;
    closing_ = true;
    std::vector<std::function<void()>> cancels;
    {
      std::lock_guard<std::mutex> guard{gate_->mutex};
      gate_->open = false;
      for (auto& s : slots_)
        if (!s->ready && s->cancel)
          cancels.push_back(std::move(s->cancel));
    }
    state_->done(std::exchange(outstanding_, 0));
    slots_.clear();
    partial_timer_.cancel();
    linger_timer_.cancel();
    error_code ec;
    socket_.shutdown(tcp::socket::shutdown_both, ec);
    socket_.close(ec);
    for (auto& cancel : cancels)
      cancel();
  }

  /// A handler's answer, on the event loop.
  void complete(const std::shared_ptr<slot>& s, std::string bytes, bool close_after) {
    if (closed_)
      return;
    std::function<void()> unused; // destroyed outside the lock: it may hold responders
    {
      std::lock_guard<std::mutex> guard{gate_->mutex};
      unused = std::move(s->cancel);
    }
    s->bytes = std::move(bytes);
    s->ready = true;
    s->close_after = close_after;
    if (close_after)
      closing_ = true; // read no further command
    if (!parsing_)
      flush();
  }

  [[nodiscard]] const std::shared_ptr<gate>& gate_ref() const { return gate_; }
  [[nodiscard]] const net::io_context::executor_type& executor() const { return loop_; }

  [[nodiscard]] client_view snapshot() const {
    std::lock_guard<std::mutex> guard{info_mutex_};
    client_view v;
    v.id = info_.id;
    v.peer = info_.peer;
    v.local = info_.local;
    v.name = info_.name;
    v.lib_name = info_.lib_name;
    v.lib_ver = info_.lib_ver;
    v.last_command = info_.last_command;
    v.age_s = seconds_since(created_);
    v.idle_s = seconds_since(info_.last_active);
    v.proto = info_.proto;
    return v;
  }

  // -- context --------------------------------------------------------------------

  [[nodiscard]] std::uint64_t client_id() const override { return info_.id; }
  [[nodiscard]] protocol proto() const override { return proto_; }
  void set_proto(protocol p) override {
    proto_ = p;
    std::lock_guard<std::mutex> guard{info_mutex_};
    info_.proto = p;
  }
  [[nodiscard]] bool authenticated() const override { return authenticated_; }
  void set_authenticated(bool yes) override { authenticated_ = yes; }
  [[nodiscard]] client_view view() const override { return snapshot(); }
  void set_name(std::string name) override {
    std::lock_guard<std::mutex> guard{info_mutex_};
    info_.name = std::move(name);
  }
  void set_lib(std::string name, std::string version) override {
    std::lock_guard<std::mutex> guard{info_mutex_};
    if (!name.empty())
      info_.lib_name = std::move(name);
    if (!version.empty())
      info_.lib_ver = std::move(version);
  }
  [[nodiscard]] std::vector<client_view> clients() const override {
    std::vector<std::shared_ptr<connection>> open;
    {
      std::lock_guard<std::mutex> guard{state_->registry_mutex};
      for (auto& [id, weak] : state_->registry)
        if (auto c = weak.lock())
          open.push_back(std::move(c));
    }
    std::vector<client_view> out;
    out.reserve(open.size());
    for (auto& c : open)
      out.push_back(c.get() == this ? snapshot() : c->snapshot());
    return out;
  }
  [[nodiscard]] std::size_t connections() const override { return state_->connections.load(); }
  [[nodiscard]] const server_options& options() const override { return state_->opts; }
  [[nodiscard]] std::uint16_t port() const override { return state_->port.load(); }
  [[nodiscard]] const command_table& commands() const override { return state_->commands; }

private:
  struct info {
    std::uint64_t id = 0;
    std::string peer;
    std::string local;
    std::string name;
    std::string lib_name;
    std::string lib_ver;
    std::string last_command = "NULL";
    steady::time_point last_active = steady::now();
    protocol proto = protocol::resp2;
  };

  // -- reading --------------------------------------------------------------------

  [[nodiscard]] bool paused() const {
    return outstanding_ >= state_->opts.max_pending_commands
           || out_.size() + wbuf_.size() >= state_->opts.max_output_bytes;
  }

  void read() {
    if (reading_ || closing_ || paused())
      return;
    reading_ = true;
    socket_.async_read_some(
      net::buffer(rbuf_),
      [self = shared_from_this()](error_code ec, std::size_t n) { self->on_read(ec, n); });
  }

  void on_read(error_code ec, std::size_t n) {
    reading_ = false;
    if (closed_)
      return;
    if (lingering_) {
      constexpr std::size_t drain_bytes_max = 16u << 20;
      drained_ += n;
      if (ec || drained_ > drain_bytes_max)
        return close();
      return drain();
    }
    if (ec) {
      if (ec != net::error::eof)
        return close();
      // The client sent all it will: answer what it asked, then close
      // (within read_timeout, so a command that never answers cannot keep
      // the connection). A command waiting with a cancel hook (a blocking
      // read) means a client that left, as Redis takes it: close now.
      closing_ = true;
      eof_ = true;
      if (outstanding_ == 0 || waiting_with_cancel())
        return close();
      partial_since_ = steady::now();
      arm_partial_timer();
      return;
    }
    reader_.feed(rbuf_.data(), n);
    parse();
  }

  [[nodiscard]] bool waiting_with_cancel() {
    std::lock_guard<std::mutex> guard{gate_->mutex};
    return std::any_of(slots_.begin(), slots_.end(),
                       [](const std::shared_ptr<slot>& s) { return !s->ready && s->cancel; });
  }

  /// Runs every complete command in the input, in order, unless the
  /// connection is closing or has too many replies outstanding.
  void parse() {
    parsing_ = true;
    bool completed = false;
    while (!closing_ && !paused()) {
      auto got = reader_.next(limits());
      if (got.what == request_reader::status::error)
        protocol_error(got.error);
      if (got.what != request_reader::status::command)
        break;
      completed = true;
      if (!got.argv.empty())
        dispatch(std::move(got.argv));
    }
    parsing_ = false;
    track_partial(completed);
    flush();
    read();
  }

  /// The limits of the command being read (the byte limit is lower before AUTH).
  [[nodiscard]] read_limits limits() const {
    auto bytes = authenticated_ ? state_->opts.max_request_bytes
                                : std::min(state_->opts.max_request_bytes,
                                           state_->opts.unauthenticated_request_bytes);
    return {bytes, state_->opts.max_inline_bytes, !authenticated_};
  }

  /// Answers "-ERR Protocol error: <why>" after the replies before it, then
  /// closes, as Redis does.
  void protocol_error(const std::string& why) {
    auto s = std::make_shared<slot>();
    s->bytes = reply{protocol::resp2}.error("ERR Protocol error: " + why).take();
    s->ready = true;
    s->close_after = true;
    slots_.push_back(std::move(s));
    ++outstanding_;
    state_->in_flight.fetch_add(1);
    closing_ = true;
    spdlog::debug("resp: client {} ({}): protocol error: {}", info_.id, info_.peer, why);
  }

  /// A command begun and not complete must complete within read_timeout;
  /// between commands a connection may idle as long as it likes.
  void track_partial(bool completed) {
    bool partial = reader_.partial();
    if (eof_)
      return;
    if (!partial || closing_ || paused()) {
      partial_since_.reset();
      return;
    }
    if (!partial_since_ || completed)
      partial_since_ = steady::now();
    arm_partial_timer();
  }

  void arm_partial_timer() {
    if (partial_armed_ || !partial_since_)
      return;
    partial_armed_ = true;
    partial_timer_.expires_at(*partial_since_ + state_->opts.read_timeout);
    partial_timer_.async_wait([self = shared_from_this()](error_code ec) {
      self->partial_armed_ = false;
      if (ec || self->closed_ || !self->partial_since_)
        return;
      if (steady::now() - *self->partial_since_ < self->state_->opts.read_timeout)
        return self->arm_partial_timer();
      spdlog::debug("resp: client {} ({}): {} within {} ms; closing", self->info_.id,
                    self->info_.peer, self->eof_ ? "replies not done" : "a command not complete",
                    self->state_->opts.read_timeout.count());
      self->close();
    });
  }

  // -- commands -------------------------------------------------------------------

  void dispatch(args&& argv) {
    auto s = std::make_shared<slot>();
    slots_.push_back(s);
    ++outstanding_;
    state_->in_flight.fetch_add(1);
    responder r{
      std::make_shared<pending>(gate_, weak_from_this(), std::move(s), executor(), proto_)};
    try {
      run_command(std::move(argv), r);
    } catch (const std::exception& e) {
      // A handler's bug must not take the listener down.
      spdlog::error("resp: command failed: {}", e.what());
      r.send(r.make().error(std::string{"ERR internal error: "} + e.what()));
    }
  }

  void run_command(args&& argv, const responder& r) {
    auto found = state_->commands.resolve(argv, authenticated_);
    if (!found)
      return r.send(r.make().error(found.error()));
    const command* cmd = *found;
    {
      std::lock_guard<std::mutex> guard{info_mutex_};
      info_.last_command = cmd->name;
      info_.last_active = steady::now();
    }
    cmd->run(*this, std::move(argv), r);
  }

  // -- writing --------------------------------------------------------------------

  /// Moves the replies that are ready, in command order, to the output.
  void flush() {
    if (closed_)
      return;
    while (!slots_.empty() && slots_.front()->ready && !close_after_write_) {
      auto s = std::move(slots_.front());
      slots_.pop_front();
      out_ += s->bytes;
      ++out_replies_;
      if (s->close_after)
        close_after_write_ = true;
    }
    write_if_idle();
  }

  void write_if_idle() {
    if (writing_ || closed_)
      return;
    if (out_.empty()) {
      if (close_after_write_)
        return linger_close();
      if (eof_ && outstanding_ == 0)
        return close();
      return;
    }
    writing_ = true;
    std::swap(out_, wbuf_);
    wreplies_ = std::exchange(out_replies_, 0);
    net::async_write(
      socket_, net::buffer(wbuf_),
      [self = shared_from_this()](error_code ec, std::size_t) { self->on_written(ec); });
  }

  void on_written(error_code ec) {
    writing_ = false;
    if (closed_)
      return;
    outstanding_ -= wreplies_;
    state_->done(std::exchange(wreplies_, 0));
    wbuf_.clear();
    if (ec)
      return close();
    write_if_idle();
    if (!closed_ && !closing_ && !paused())
      parse(); // commands held back while the replies were many; then reads
  }

  /// After the last reply (QUIT, a protocol error, a full server): stop
  /// sending, then read and drop what the client still sends (bounded), so
  /// that it sees the reply instead of a reset connection.
  void linger_close() {
    if (lingering_)
      return;
    lingering_ = true;
    error_code ec;
    socket_.shutdown(tcp::socket::shutdown_send, ec);
    linger_timer_.expires_after(std::chrono::seconds{2});
    linger_timer_.async_wait([self = shared_from_this()](error_code ec) {
      if (!ec)
        self->close();
    });
    drain();
  }

  /// Reads and drops (on_read), unless a read is under way already.
  void drain() {
    if (reading_)
      return;
    reading_ = true;
    socket_.async_read_some(
      net::buffer(rbuf_),
      [self = shared_from_this()](error_code ec, std::size_t n) { self->on_read(ec, n); });
  }

  tcp::socket socket_;
  std::shared_ptr<shared_state> state_;
  net::io_context::executor_type loop_; ///< the event loop this connection lives on
  std::shared_ptr<gate> gate_ = std::make_shared<gate>();
  request_reader reader_;
  net::steady_timer partial_timer_{socket_.get_executor()};
  net::steady_timer linger_timer_{socket_.get_executor()};
  std::array<char, 16384> rbuf_{};
  std::deque<std::shared_ptr<slot>> slots_; ///< commands read, replies not yet out
  std::string out_;                         ///< replies ready, not yet written
  std::string wbuf_;                        ///< replies being written
  std::size_t out_replies_ = 0;             ///< replies in out_
  std::size_t wreplies_ = 0;                ///< replies in wbuf_
  std::size_t outstanding_ = 0;             ///< slots_ + out_replies_ + wreplies_
  std::optional<steady::time_point> partial_since_;
  protocol proto_ = protocol::resp2;
  bool authenticated_ = false;
  bool counted_ = false;
  bool reading_ = false;
  bool writing_ = false;
  bool parsing_ = false;
  bool closing_ = false;           ///< read no further command
  bool close_after_write_ = false; ///< close once the output is written
  bool lingering_ = false;
  std::size_t drained_ = 0; ///< bytes dropped while lingering
  bool eof_ = false;
  bool closed_ = false;
  bool partial_armed_ = false;
  steady::time_point created_ = steady::now();
  mutable std::mutex info_mutex_;
  info info_; ///< guarded by info_mutex_ but for id, peer, local (set once)
};

void pending::deliver(std::string bytes, bool close_after) {
  {
    std::lock_guard<std::mutex> guard{gate_->mutex};
    // Nothing reaches a closed connection; what closed it ran the cancel
    // hook or will, as the command counts as not answered.
    if (!gate_->open || answered.exchange(true))
      return;
    if (!exec.running_in_this_thread()) {
      net::post(exec, [weak = conn, s = s, bytes = std::move(bytes), close_after]() mutable {
        if (auto c = weak.lock())
          c->complete(s, std::move(bytes), close_after);
      });
      return;
    }
  }
  // On the connection's own loop, which alone closes the gate: answer now.
  if (auto c = conn.lock())
    c->complete(s, std::move(bytes), close_after);
}

} // namespace detail

// -- responder ---------------------------------------------------------------------

protocol responder::proto() const {
  return p_->proto;
}

void responder::send(reply r) const {
  p_->deliver(r.take(), false);
}

void responder::send_then_close(reply r) const {
  p_->deliver(r.take(), true);
}

bool responder::open() const {
  std::lock_guard<std::mutex> guard{p_->gate_->mutex};
  return p_->gate_->open;
}

void responder::on_close(std::function<void()> cancel) const {
  {
    std::lock_guard<std::mutex> guard{p_->gate_->mutex};
    if (p_->answered.load())
      return;
    if (p_->gate_->open) {
      // The one it replaces is destroyed outside the lock: it may hold responders.
      std::swap(p_->s->cancel, cancel);
      return;
    }
  }
  cancel();
}

// -- the server --------------------------------------------------------------------

struct server::impl {
  std::shared_ptr<detail::shared_state> state = std::make_shared<detail::shared_state>();
  /// One event loop per I/O thread, each connection on one of them.
  std::vector<std::unique_ptr<net::io_context>> loops;
  std::vector<net::executor_work_guard<net::io_context::executor_type>> work;
  std::optional<tcp::acceptor> acceptor;
  std::optional<net::steady_timer> accept_retry;
  std::vector<std::thread> threads;
  std::size_t next_loop = 0;
  std::atomic<bool> accepting{false};
  steady::time_point last_accept_warning{};

  void accept() {
    auto& loop = *loops[next_loop++ % loops.size()];
    acceptor->async_accept(loop, [this, &loop](error_code ec, tcp::socket s) {
      if (!accepting.load())
        return;
      if (ec)
        return accept_failed(ec);
      auto conn = std::make_shared<detail::connection>(std::move(s), state, loop);
      if (state->connections.load() >= state->opts.max_connections)
        conn->refuse();
      else
        conn->start();
      accept();
    });
  }

  /// Out of file descriptors, say: warn (once a second at most) and retry
  /// shortly instead of spinning.
  void accept_failed(error_code ec) {
    if (ec == net::error::operation_aborted)
      return;
    if (steady::now() - last_accept_warning > std::chrono::seconds{1}) {
      last_accept_warning = steady::now();
      spdlog::warn("resp: accept failed: {}", ec.message());
    }
    accept_retry->expires_after(std::chrono::milliseconds{100});
    accept_retry->async_wait([this](error_code wec) {
      if (!wec && accepting.load())
        accept();
    });
  }
};

server::server(server_options opts, command_table commands) : impl_(std::make_unique<impl>()) {
  impl_->state->opts = std::move(opts);
  impl_->state->commands = std::move(commands);
}

server::~server() {
  stop();
}

tl::expected<void, std::string> server::start() {
  auto& opts = impl_->state->opts;
  error_code ec;
  auto host = opts.host == "localhost" ? std::string{"127.0.0.1"} : opts.host;
  auto addr = net::ip::make_address(host, ec);
  if (ec)
    return tl::make_unexpected("resp.listen: \"" + opts.host + "\" is not an IP address");
  tcp::endpoint ep{addr, opts.port};
  for (std::size_t i = 0; i < std::max<std::size_t>(1, opts.threads); ++i)
    impl_->loops.push_back(std::make_unique<net::io_context>(1));
  auto& acc = impl_->acceptor.emplace(*impl_->loops[0]);
  impl_->accept_retry.emplace(*impl_->loops[0]);
  auto where = "resp.listen " + opts.host + ":" + std::to_string(opts.port);
  if (acc.open(ep.protocol(), ec); ec)
    return tl::make_unexpected("cannot open a socket for " + where + ": " + ec.message());
  acc.set_option(net::socket_base::reuse_address(true), ec);
  if (acc.bind(ep, ec); ec)
    return tl::make_unexpected("cannot listen on " + where + ": " + ec.message());
  if (acc.listen(net::socket_base::max_listen_connections, ec); ec)
    return tl::make_unexpected("cannot listen on " + where + ": " + ec.message());
  impl_->state->port = acc.local_endpoint().port();
  impl_->accepting = true;
  for (auto& loop : impl_->loops)
    impl_->work.push_back(net::make_work_guard(*loop));
  impl_->accept();
  for (auto& loop : impl_->loops)
    impl_->threads.emplace_back([l = loop.get()] {
      ::pthread_setname_np(::pthread_self(), "nerve.resp");
      // Publishes read in one pass of this loop are appended together at
      // its end (actors/publish_lane.hpp).
      actors::set_pass_poster([l](std::function<void()> fn) { net::post(*l, std::move(fn)); });
      l->run();
      actors::end_lane_thread();
    });
  return {};
}

std::uint16_t server::port() const {
  return impl_->state->port.load();
}

void server::stop_accepting() {
  if (!impl_->accepting.exchange(false))
    return;
  net::post(*impl_->loops[0], [this] {
    error_code ec;
    if (impl_->acceptor)
      impl_->acceptor->close(ec);
    if (impl_->accept_retry)
      impl_->accept_retry->cancel();
  });
}

bool server::wait_idle(std::chrono::milliseconds deadline) {
  auto& st = *impl_->state;
  std::unique_lock<std::mutex> guard{st.idle_mutex};
  return st.idle_cv.wait_for(guard, deadline, [&] { return st.in_flight.load() == 0; });
}

void server::stop() {
  if (impl_->threads.empty())
    return;
  stop_accepting();
  // Each connection closes on its own loop (its pending commands are
  // cancelled there), before that loop stops.
  std::vector<std::shared_ptr<detail::connection>> open;
  {
    std::lock_guard<std::mutex> guard{impl_->state->registry_mutex};
    for (auto& [id, weak] : impl_->state->registry)
      if (auto c = weak.lock())
        open.push_back(std::move(c));
  }
  for (auto& c : open)
    net::post(c->executor(), [c] { c->close(); });
  open.clear();
  for (auto& loop : impl_->loops)
    net::post(*loop, [l = loop.get()] { l->stop(); });
  impl_->work.clear();
  for (auto& t : impl_->threads)
    if (t.joinable())
      t.join();
  impl_->threads.clear();
  // Connections a stopped loop never ran the close of: no answer reaches
  // them from now on (a connection's last reference may go here, and its
  // destructor takes the registry's lock: not under it).
  {
    std::lock_guard<std::mutex> guard{impl_->state->registry_mutex};
    for (auto& [id, weak] : impl_->state->registry)
      if (auto c = weak.lock())
        open.push_back(std::move(c));
  }
  for (auto& c : open) {
    std::lock_guard<std::mutex> gate_guard{c->gate_ref()->mutex};
    c->gate_ref()->open = false;
  }
}

} // namespace nerve::http::resp
