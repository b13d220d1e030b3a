// Boost.Beast HTTP server. The only translation unit of the server that
// includes Beast, to keep the build fast.
#include "http/server.hpp"

#include <algorithm>
#include <array>
#include <atomic>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <optional>
#include <pthread.h>
#include <thread>
#include <unistd.h>
#include <utility>

#include <boost/asio.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/websocket.hpp>
#include <spdlog/spdlog.h>

#include "actors/publish_lane.hpp"
#include "http/problem.hpp"
#include "http/server_request.hpp"

namespace nerve::http {

namespace net = boost::asio;
namespace beast = boost::beast;
namespace bhttp = beast::http;
namespace ws = beast::websocket;
using tcp = net::ip::tcp;

namespace {

/// How long a connection in a probe slot may take to send its request.
constexpr std::chrono::seconds probe_read_timeout{2};

/// Lets threads outside the server send to a WebSocket until it closes (or
/// the server stops), without touching a session that is gone.
struct ws_gate {
  std::mutex mutex;
  bool open = true;
  void close() {
    std::lock_guard<std::mutex> guard{mutex};
    open = false;
  }
};

/// Connections an event loop takes before the next loop takes any.
constexpr std::size_t fill_first_connections = 32;

/// The connections one event loop serves (HTTP and WebSocket).
using loop_load = std::shared_ptr<std::atomic<std::size_t>>;

/// Counts a connection on the server (its cap) and on its loop while it
/// lives; `server` must outlive it.
class connection_count {
public:
  connection_count(std::atomic<std::size_t>& server, loop_load loop)
    : server_(server), loop_(std::move(loop)) {
    server_.fetch_add(1);
    loop_->fetch_add(1);
  }
  connection_count(const connection_count&) = delete;
  connection_count& operator=(const connection_count&) = delete;
  ~connection_count() {
    loop_->fetch_sub(1);
    server_.fetch_sub(1);
  }
  [[nodiscard]] const loop_load& loop() const { return loop_; }

private:
  std::atomic<std::size_t>& server_;
  loop_load loop_;
};

struct shared_state {
  std::mutex gates_mutex;
  std::vector<std::weak_ptr<ws_gate>> gates;
  server_options opts;
  handler handle;
  std::atomic<std::size_t> connections{0};
  std::atomic<std::size_t> in_flight{0};
  std::atomic<bool> draining{false}; ///< answer what is asked, then close
  std::mutex idle_mutex;
  std::condition_variable idle_cv;

  void request_done() {
    if (in_flight.fetch_sub(1) == 1) {
      std::lock_guard<std::mutex> guard{idle_mutex};
      idle_cv.notify_all();
    }
  }
};

/// A WebSocket a route asked for: frames from the route's source go out in
/// order; what the client sends is read and dropped (pings and the close
/// handshake are answered by Beast).
class ws_session : public std::enable_shared_from_this<ws_session> {
public:
  /// Frames queued for a follower that does not read: past this, it is closed.
  static constexpr std::size_t max_queued = 10000;

  ws_session(beast::tcp_stream stream, std::shared_ptr<shared_state> state, loop_load load,
             std::function<std::shared_ptr<void>(text_sender)> start)
    : ws_(std::move(stream)), state_(std::move(state)),
      counted_(state_->connections, std::move(load)), start_(std::move(start)) {
    std::lock_guard<std::mutex> guard{state_->gates_mutex};
    auto& gates = state_->gates;
    gates.erase(std::remove_if(gates.begin(), gates.end(),
                               [](const std::weak_ptr<ws_gate>& g) { return g.expired(); }),
                gates.end());
    gates.push_back(gate_);
  }

  ~ws_session() { gate_->close(); }

  void run(bhttp::request<bhttp::string_body> req) {
    beast::get_lowest_layer(ws_).expires_never();
    ws_.set_option(ws::stream_base::timeout::suggested(beast::role_type::server));
    ws_.set_option(ws::stream_base::decorator(
      [](ws::response_type& res) { res.set(bhttp::field::server, "nerve/" NERVE_VERSION); }));
    ws_.read_message_max(std::size_t{64} * 1024);
    auto r = std::make_shared<bhttp::request<bhttp::string_body>>(std::move(req));
    ws_.async_accept(*r, [self = shared_from_this(), r](beast::error_code ec) {
      if (ec)
        return self->gate_->close();
      self->subscribe();
      self->read();
    });
  }

private:
  void subscribe() {
    std::weak_ptr<ws_session> weak = shared_from_this();
    auto exec = ws_.get_executor();
    auto gate = gate_;
    source_ = start_([weak, exec, gate](std::string text) {
      std::lock_guard<std::mutex> guard{gate->mutex};
      if (!gate->open)
        return;
      net::post(exec, [weak, text = std::move(text)]() mutable {
        if (auto self = weak.lock())
          self->send(std::move(text));
      });
    });
  }

  void send(std::string text) {
    if (closing_)
      return;
    if (queue_.size() >= max_queued) {
      closing_ = true;
      stop_source();
      ws_.async_close(ws::close_reason{ws::close_code::policy_error, "follower too slow"},
                      [self = shared_from_this()](beast::error_code) {});
      return;
    }
    queue_.push_back(std::move(text));
    if (!writing_)
      write_next();
  }

  void write_next() {
    writing_ = true;
    ws_.text(true);
    ws_.async_write(net::buffer(queue_.front()),
                    [self = shared_from_this()](beast::error_code ec, std::size_t) {
                      self->queue_.pop_front();
                      if (ec)
                        return self->stop_source();
                      if (self->queue_.empty() || self->closing_)
                        self->writing_ = false;
                      else
                        self->write_next();
                    });
  }

  void read() {
    ws_.async_read(buffer_, [self = shared_from_this()](beast::error_code ec, std::size_t) {
      if (ec)
        return self->stop_source(); // closed by the client, or broken
      self->buffer_.consume(self->buffer_.size());
      self->read();
    });
  }

  void stop_source() {
    gate_->close();
    source_.reset();
  }

  ws::stream<beast::tcp_stream> ws_;
  std::shared_ptr<shared_state> state_;
  connection_count counted_; ///< after state_, which holds the server's count
  std::function<std::shared_ptr<void>(text_sender)> start_;
  std::shared_ptr<ws_gate> gate_ = std::make_shared<ws_gate>();
  std::shared_ptr<void> source_;
  std::deque<std::string> queue_;
  beast::flat_buffer buffer_;
  bool writing_ = false;
  bool closing_ = false;
};

class session : public std::enable_shared_from_this<session> {
public:
  session(tcp::socket socket, std::shared_ptr<shared_state> state, loop_load load)
    : stream_(std::move(socket)), state_(std::move(state)),
      counted_(state_->connections, std::move(load)) {
    // Each answer is one send: no reason to hold its last segment back
    // for an acknowledgement (Nagle), as with a batch's longer answer.
    beast::error_code ec;
    stream_.socket().set_option(tcp::no_delay(true), ec);
  }

  void run() {
    net::dispatch(stream_.get_executor(),
                  beast::bind_front_handler(&session::read_header, shared_from_this()));
  }

  /// Answers 503 and closes: the node is at its connection cap.
  void refuse() {
    // On the connection's own event loop, like everything else it does.
    net::dispatch(stream_.get_executor(), [self = shared_from_this()]() mutable {
      self->write(self->over_cap(), false, false);
    });
  }

  /// Serves one probe and closes: a connection over the cap, in the slots
  /// kept for probes (server_options::probe_connections).
  void run_probe_only() {
    probe_only_ = true;
    run();
  }

private:
  /// The connection cap's answer.
  response over_cap() const {
    auto r = problem(503, "too-many-connections", "Service Unavailable",
                     "the server is at its limit of " + std::to_string(state_->opts.max_connections)
                       + " connections; retry shortly");
    r.headers.emplace_back("Retry-After", "1");
    return r;
  }

  /// What a connection over the cap may still ask.
  static bool is_probe(const request& req) {
    if (req.method != "GET" || req.websocket)
      return false;
    for (const char* p : {"/livez", "/readyz", "/health", "/health/detailed", "/metrics"})
      if (req.path == p)
        return true;
    return false;
  }

  void read_header() {
    parser_.emplace();
    // A probe has no body; a probe slot is not held by a slow one.
    limit_parser(*parser_, state_->opts, probe_only_);
    if (buffer_.size() > 0 && parse_buffered())
      return;
    stream_.expires_after(probe_only_ ? std::min<std::chrono::steady_clock::duration>(
                            probe_read_timeout, state_->opts.read_timeout)
                                      : state_->opts.read_timeout);
    bhttp::async_read_header(stream_, buffer_, *parser_,
                             beast::bind_front_handler(&session::on_header, shared_from_this()));
  }

  /// Parses the bytes already in the buffer (a keep-alive client's next
  /// request, read while the previous one was answered) with the parser
  /// read_header() set up. True when that settled the request: whole and
  /// handled, malformed and answered, or its header done and the rest left
  /// to read_body(); false when the header needs more bytes (read_header()
  /// reads on from where the parser is). Beast's composed reads post their
  /// completion through the event loop even when the buffer holds the whole
  /// request, once for the header and once for the body: two trips through
  /// the loop's queue per request, which cost more than the parse.
  bool parse_buffered() {
    beast::error_code ec;
    buffer_.consume(parser_->put(buffer_.data(), ec));
    if (ec == bhttp::error::need_more)
      return false;
    if (ec) {
      on_error(ec);
      return true;
    }
    if (!parser_->is_header_done())
      return false;
    auto& req = parser_->get();
    if (refuse_before_continue(*parser_, state_->opts) || req.count(bhttp::field::expect) > 0) {
      on_header({}, 0); // refused, or 100 Continue first: as a read header is
      return true;
    }
    read_body(); // the body as far as the buffer goes, then from the socket
    return true;
  }

  void on_header(beast::error_code ec, std::size_t) {
    if (ec)
      return on_error(ec);
    stream_.expires_never(); // the header read's timer: the body has its own
    auto& req = parser_->get();
    // Refuse early what would be refused after the upload anyway.
    if (refuse_before_continue(*parser_, state_->opts))
      return on_error(bhttp::error::body_limit);
    if (req[bhttp::field::expect] == "100-continue") {
      auto cont = std::make_shared<bhttp::response<bhttp::empty_body>>(bhttp::status::continue_,
                                                                       req.version());
      bhttp::async_write(stream_, *cont,
                         [self = shared_from_this(), cont](beast::error_code wec, std::size_t) {
                           if (wec)
                             return self->close();
                           self->read_body();
                         });
      return;
    }
    read_body();
  }

  /// Parses the body bytes already buffered, element by element (a chunked
  /// body has several), then reads the rest with reads of the socket itself,
  /// parsing what each brings, within http.read_timeout. Beast's composed read over
  /// the timed stream copied its type-erased executor several times per read
  /// and armed the stream's timer for each; a batch of 100 events takes a
  /// few reads.
  void read_body() {
    body_timed_out_ = false;
    body_timer_armed_ = false;
    on_body_bytes({}); // what the header's read brought first (all of it, or no body)
  }

  void arm_body_timer() {
    body_timer_armed_ = true;
    body_timer_.expires_after(state_->opts.read_timeout);
    body_timer_.async_wait(
      [weak = weak_from_this(), gen = ++body_timer_gen_](beast::error_code ec) {
        auto self = weak.lock();
        // Disarmed or re-armed: the body came just as the timer expired, and
        // this completion was already queued when cancel() came; the socket
        // may be reading the next request now, which it must not cancel.
        if (ec || !self || !self->body_timer_armed_ || self->body_timer_gen_ != gen)
          return;
        self->body_timed_out_ = true;
        beast::error_code ignored;
        self->stream_.socket().cancel(ignored); // the read ends with operation_aborted
      });
  }

  void read_more_body() {
    auto space = buffer_.prepare(beast::read_size_or_throw(buffer_, 65536));
    stream_.socket().async_read_some(
      space, [self = shared_from_this()](beast::error_code ec, std::size_t n) {
        self->buffer_.commit(n);
        self->on_body_bytes(ec);
      });
  }

  void on_body_bytes(beast::error_code ec) {
    if (body_timed_out_)
      ec = beast::error::timeout;
    else if (ec == net::error::eof) {
      parser_->put_eof(ec); // a body cut short: partial_message, as Beast's read says
      if (!ec && !parser_->is_done())
        ec = bhttp::error::partial_message;
    }
    while (!ec && !parser_->is_done() && buffer_.size() > 0) {
      auto n = parser_->put(buffer_.data(), ec);
      buffer_.consume(n);
      if (ec == bhttp::error::need_more || (!ec && n == 0)) {
        ec = {};
        break;
      }
    }
    if (!ec && !parser_->is_done()) {
      if (!body_timer_armed_)
        arm_body_timer();
      return read_more_body();
    }
    if (body_timer_armed_) {
      body_timer_armed_ = false;
      body_timer_.cancel();
    }
    on_read(ec, 0);
  }

  void on_error(beast::error_code ec) {
    if (ec == bhttp::error::end_of_stream || ec == net::error::eof
        || ec == net::error::connection_reset || ec == net::error::operation_aborted)
      return close();
    // A connection in a probe slot that asks anything else (a body says so
    // at once) or takes too long hears of the cap.
    if (probe_only_ && (ec == bhttp::error::body_limit || ec == beast::error::timeout))
      return parser_ && parser_->got_some() ? write(over_cap(), false, false) : close();
    if (ec == beast::error::timeout) {
      // Only a client that started a request hears why it is closed.
      if (parser_ && parser_->got_some())
        return write(problem(408, "request-timeout", "Request Timeout",
                             "the request was not received within "
                               + std::to_string(state_->opts.read_timeout.count()) + " ms"),
                     false, false);
      return close();
    }
    if (ec == bhttp::error::body_limit)
      return write(problem(413, "body-too-large", "Payload Too Large",
                           "the body exceeds http.max_body_bytes ("
                             + std::to_string(state_->opts.max_body_bytes) + " bytes)"),
                   false, false);
    if (ec == bhttp::error::header_limit)
      return write(problem(431, "headers-too-large", "Request Header Fields Too Large",
                           "the request line and headers exceed http.max_header_bytes ("
                             + std::to_string(state_->opts.max_header_bytes) + " bytes)"),
                   false, false);
    write(problem(400, "bad-request", "Bad Request", "malformed HTTP request: " + ec.message()),
          false, false);
  }

  void on_read(beast::error_code ec, std::size_t) {
    if (ec)
      return on_error(ec);
    auto msg = parser_->release();
    parser_.reset();
    // While draining, each connection gets its answer and is then closed.
    keep_alive_ = msg.keep_alive() && !state_->draining.load();
    head_ = msg.method() == bhttp::verb::head;
    auto req = to_request(msg);
    if (req.websocket)
      upgrade_.emplace(std::move(msg));
    if (probe_only_) {
      keep_alive_ = false;
      if (!is_probe(req))
        return write(over_cap(), false, false);
    }
    state_->in_flight.fetch_add(1);
    stream_.expires_never();
    auto self = shared_from_this();
    // A keep-alive request without an upgrade is answered by the thread
    // that has the answer (answer_direct); this thread learns of the next
    // request when its bytes arrive.
    direct_ = keep_alive_ && !req.websocket;
    if (!direct_ && idle_armed_)
      idle_.cancel(); // answered and read on by the loop, with their own timeouts
    if (direct_) {
      std::lock_guard<std::mutex> guard{out_mutex_};
      answering_ = true;
      readable_ = false;
    }
    auto once = std::make_shared<answer_once>(self);
    state_->handle(std::move(req), [once](response r) { once->send(std::move(r)); });
    if (direct_)
      await_next();
  }

  // -- Answers sent by the thread that has them ------------------------------------
  //
  // Posting every answer to this connection's event loop woke its thread once
  // per request (and the post contended for the loop's mutex). Instead, while
  // a request is handled, the loop reads whatever bytes come next into the
  // buffer without parsing them (no other operation touches the socket or the
  // buffer meanwhile), and the answer is written with a non-blocking send on
  // the answering thread, under out_mutex_, which close() takes too. Once the
  // answer is out and bytes of the next request are in the buffer (they may
  // have come with this request, pipelined), the loop parses it as before. A
  // read rather than asio's wait for readability: asio re-arms epoll with an
  // epoll_ctl for every wait, while a read after one that emptied the socket
  // just waits for the edge. An idle timer closes a connection that sends
  // nothing for http.read_timeout after its answer, as the read of the next
  // request did. An answer the socket does not take at once goes through the
  // loop.

  void await_next() {
    if (buffer_.size() > 0) // the next request came with this one: nothing to wait for
      return on_readable({});
    if (!idle_armed_)
      arm_idle(state_->opts.read_timeout);
    auto space = buffer_.prepare(beast::read_size_or_throw(buffer_, 65536));
    stream_.socket().async_read_some(
      space, [self = shared_from_this()](beast::error_code ec, std::size_t n) {
        self->buffer_.commit(n);
        self->on_readable(ec);
      });
  }

  /// The idle timer is armed once and stays armed across keep-alive
  /// requests (it checks the time since the last answer when it fires):
  /// cancelling and arming it for every request cost a cancelled
  /// completion through the loop and two timer-queue updates per publish.
  void arm_idle(std::chrono::steady_clock::duration after) {
    idle_armed_ = true;
    idle_.expires_after(after);
    idle_.async_wait([self = shared_from_this()](beast::error_code ec) {
      self->idle_armed_ = false;
      if (ec)
        return;
      std::unique_lock<std::mutex> guard{self->out_mutex_};
      if (!self->open_ || !self->direct_)
        return; // closed, or a request the loop reads and answers with its own timeouts
      auto limit = self->state_->opts.read_timeout;
      if (self->answering_ || self->readable_) { // handled, or the next one is read: not idle
        guard.unlock();
        return self->arm_idle(limit);
      }
      auto idle = std::chrono::steady_clock::now() - self->answered_at_;
      if (idle < limit) {
        guard.unlock();
        return self->arm_idle(limit - idle);
      }
      guard.unlock();
      self->close();
    });
  }

  /// Bytes of the next request are in the buffer, or the read failed (EOF,
  /// reset: said by the next request's read once the answer is out).
  void on_readable(beast::error_code ec) {
    if (ec == net::error::operation_aborted)
      return;
    read_error_ = ec;
    {
      std::lock_guard<std::mutex> guard{out_mutex_};
      readable_ = true;
      if (answering_)
        return; // read once the answer is out
    }
    next_request();
  }

  /// Reads the next request (on the loop), once the answer is out and bytes came.
  void next_request() {
    head_ = false;
    if (auto ec = std::exchange(read_error_, {}))
      return on_error(ec);
    read_header();
  }

  /// Sends the answer from the calling thread; false: the loop must write it.
  bool answer_direct(response& r) {
    auto bytes = plain(r) ? serialize_plain(r) : serialize(*make_response(r, keep_alive_));
    bool read_now = false;
    {
      std::lock_guard<std::mutex> guard{out_mutex_};
      if (!open_) {
        state_->request_done(); // closed meanwhile: nobody to answer
        return true;
      }
      auto sent = ::send(stream_.socket().native_handle(), bytes.data(), bytes.size(),
                         MSG_DONTWAIT | MSG_NOSIGNAL);
      if (sent != static_cast<ssize_t>(bytes.size())) {
        rest_ = sent > 0 ? bytes.substr(static_cast<std::size_t>(sent)) : std::move(bytes);
        return false;
      }
      read_now = answered_locked();
    }
    state_->request_done();
    if (read_now)
      net::post(stream_.get_executor(), [s = shared_from_this()] { s->next_request(); });
    return true;
  }

  /// The answer's bytes as Beast's serializer writes a string body (the
  /// start line, the fields in their order, a blank line, the body), from
  /// the fields Beast holds: its serializer's buffer sequences cost ~3.5k
  /// instructions an answer (callgrind), the text itself a few hundred.
  static std::string serialize(const bhttp::response<bhttp::string_body>& res) {
    std::string out;
    out.reserve(res.body().size() + 256);
    start_text(out, res.version(), res.result_int(), res.reason());
    for (const auto& field : res)
      add_field(out, field.name_string(), field.value());
    out += "\r\n";
    out += res.body();
    return out;
  }

  /// An answer's start line (`reason` empty: Beast's wording of `status`).
  static void start_text(std::string& out, unsigned version, unsigned status,
                         beast::string_view reason) {
    if (reason.empty())
      reason = bhttp::obsolete_reason(bhttp::int_to_status(status));
    out += version == 10 ? "HTTP/1.0 " : "HTTP/1.1 ";
    out += std::to_string(status);
    out += ' ';
    out.append(reason.data(), reason.size());
    out += "\r\n";
  }

  static void add_field(std::string& out, beast::string_view name, beast::string_view value) {
    out.append(name.data(), name.size());
    out += ": ";
    out.append(value.data(), value.size());
    out += "\r\n";
  }

  /// Whether serialize_plain() writes what make_response() and serialize()
  /// would: a keep-alive answer with a body to a request that is not HEAD,
  /// none of whose own fields is one make_response() sets (a field set
  /// twice keeps its last value there), with no value Beast would trim.
  bool plain(const response& r) const {
    if (head_ || !keep_alive_ || (r.status != 200 && r.status != 201 && r.status != 202)
        || !untrimmed(r.content_type))
      return false;
    for (std::size_t i = 0; i < r.headers.size(); ++i) {
      const auto& name = r.headers[i].first;
      if (!untrimmed(r.headers[i].second))
        return false;
      for (const char* set : {"server", "content-type", "content-length", "connection"})
        if (beast::iequals(name, set))
          return false;
      for (std::size_t j = 0; j < i; ++j)
        if (beast::iequals(name, r.headers[j].first))
          return false;
    }
    return true;
  }

  static bool untrimmed(const std::string& value) {
    auto white = [](char c) { return c == ' ' || c == '\t'; };
    return value.empty() || (!white(value.front()) && !white(value.back()));
  }

  /// The text of a plain() answer, written directly: the fields in
  /// make_response()'s order, as Beast prints them.
  /// Building Beast's message first cost an allocation per field on the
  /// thread that answers every request of a sync round.
  static std::string serialize_plain(const response& r) {
    std::string out;
    out.reserve(r.body.size() + 160);
    start_text(out, 11, r.status, {});
    add_field(out, "Server", "nerve/" NERVE_VERSION);
    add_field(out, "Content-Type", r.content_type);
    for (const auto& [name, value] : r.headers)
      add_field(out, name, value);
    add_field(out, "Content-Length", std::to_string(r.body.size()));
    out += "\r\n";
    out += r.body;
    return out;
  }

  /// The answer is out (out_mutex_ held): the idle time counts from now.
  /// True when the next request's bytes came meanwhile, so it is read now.
  bool answered_locked() {
    answering_ = false;
    answered_at_ = std::chrono::steady_clock::now();
    return readable_;
  }

  /// On the loop: writes what answer_direct could not send.
  void finish_direct() {
    net::async_write(stream_.socket(), net::buffer(rest_),
                     [self = shared_from_this()](beast::error_code ec, std::size_t) {
                       self->state_->request_done();
                       if (ec)
                         return self->close();
                       bool read_now = false;
                       {
                         std::lock_guard<std::mutex> guard{self->out_mutex_};
                         read_now = self->answered_locked();
                       }
                       if (read_now)
                         self->next_request();
                     });
  }

  /// Answers a request exactly once: with the handler's response, or with a
  /// 503 when every copy of the responder is gone unanswered (the work was
  /// dropped, e.g. during shutdown), so no client and no drain waits forever.
  struct answer_once {
    std::shared_ptr<session> self;
    std::atomic<bool> done{false};

    explicit answer_once(std::shared_ptr<session> s) : self(std::move(s)) {}

    void send(response r) {
      if (done.exchange(true))
        return;
      if (self->direct_ && !r.websocket) {
        if (!self->answer_direct(r))
          net::post(self->stream_.get_executor(), [s = self] { s->finish_direct(); });
        return;
      }
      net::post(self->stream_.get_executor(), [s = self, r = std::move(r)]() mutable {
        s->write(std::move(r), s->keep_alive_, true);
      });
    }

    ~answer_once() {
      if (!done.load()) {
        auto r = problem(503, "unavailable", "Service Unavailable",
                         "the request could not be completed; retry");
        r.headers.emplace_back("Retry-After", "1");
        send(std::move(r));
      }
    }
  };

  void write(response r, bool keep_alive, bool counted) {
    if (!counted && state_->opts.on_own_answer)
      state_->opts.on_own_answer(r.status);
    if (r.websocket && upgrade_) {
      // The route took the upgrade: the connection becomes a WebSocket.
      auto req = std::move(*upgrade_);
      upgrade_.reset();
      if (counted)
        state_->request_done();
      std::make_shared<ws_session>(std::move(stream_), state_, counted_.loop(),
                                   std::move(r.websocket))
        ->run(std::move(req));
      return;
    }
    upgrade_.reset();
    auto res = make_response(r, keep_alive);
    stream_.expires_after(state_->opts.read_timeout);
    bhttp::async_write(
      stream_, *res,
      [self = shared_from_this(), res, keep_alive, counted](beast::error_code ec, std::size_t) {
        if (counted)
          self->state_->request_done();
        if (ec || !keep_alive)
          return self->close();
        self->head_ = false;
        self->read_header();
      });
  }

  std::shared_ptr<bhttp::response<bhttp::string_body>> make_response(response& r,
                                                                     bool keep_alive) const {
    auto res = std::make_shared<bhttp::response<bhttp::string_body>>();
    res->result(r.status);
    res->version(11);
    res->set(bhttp::field::server, "nerve/" NERVE_VERSION);
    res->set(bhttp::field::content_type, r.content_type);
    for (auto& [name, value] : r.headers)
      res->set(name, value);
    res->keep_alive(keep_alive);
    auto size = r.body.size();
    if (head_) {
      res->content_length(size);
    } else {
      res->body() = std::move(r.body);
      res->prepare_payload();
    }
    return res;
  }

  /// After refusing a request: stop sending, then read and discard what the
  /// client is still uploading (bounded), so it sees the answer instead of a
  /// reset connection.
  void linger_close() {
    beast::error_code ec;
    stream_.socket().shutdown(tcp::socket::shutdown_send, ec);
    stream_.expires_after(std::chrono::seconds{2});
    drain(std::make_shared<std::array<char, 65536>>(), 0);
  }

  void drain(std::shared_ptr<std::array<char, 65536>> buf, std::size_t total) {
    auto& b = *buf;
    stream_.async_read_some(net::buffer(b), [self = shared_from_this(), buf = std::move(buf),
                                             total](beast::error_code ec, std::size_t n) mutable {
      constexpr std::size_t drain_bytes_max = 16u << 20;
      if (ec || total + n > drain_bytes_max)
        return self->close();
      self->drain(std::move(buf), total + n);
    });
  }

  void close() {
    std::lock_guard<std::mutex> guard{out_mutex_}; // no answer_direct() from here on
    open_ = false;
    idle_.cancel();
    beast::error_code ec;
    stream_.socket().shutdown(tcp::socket::shutdown_send, ec);
    stream_.socket().close(ec);
  }

  beast::tcp_stream stream_;
  net::steady_timer idle_{stream_.get_executor()};
  bool idle_armed_ = false; ///< idle_ has a wait pending (the loop's thread only)
  net::steady_timer body_timer_{stream_.get_executor()}; ///< a body's http.read_timeout
  bool body_timer_armed_ = false;
  std::uint64_t body_timer_gen_ = 0; ///< which arming a timer completion belongs to
  bool body_timed_out_ = false;
  /// The current request is answered by answer_direct (set on the loop
  /// before the handler runs; read by the answering thread after).
  bool direct_ = false;
  bool probe_only_ = false; ///< over the connection cap: probes only
  std::mutex out_mutex_;
  bool open_ = true;       ///< the socket is not closed; guarded by out_mutex_
  bool answering_ = false; ///< a direct answer is due; guarded by out_mutex_
  bool readable_ = false;  ///< the next request's bytes came; guarded by out_mutex_
  std::chrono::steady_clock::time_point answered_at_{}; ///< guarded by out_mutex_
  std::string rest_;             ///< what the socket did not take of a direct answer
  beast::error_code read_error_; ///< of the read after a direct request (the loop's)
  beast::flat_buffer buffer_;
  std::optional<bhttp::request_parser<bhttp::string_body>> parser_;
  std::optional<bhttp::request<bhttp::string_body>> upgrade_; ///< a WebSocket handshake
  std::shared_ptr<shared_state> state_;
  connection_count counted_; ///< after state_, which holds the server's count
  bool keep_alive_ = true;
  bool head_ = false;
};

} // namespace

struct server::impl {
  std::shared_ptr<shared_state> state = std::make_shared<shared_state>();
  /// One event loop per I/O thread, each connection on one of them: two
  /// threads sharing one loop wake each other for every ready socket.
  std::vector<std::unique_ptr<net::io_context>> loops;
  std::vector<loop_load> loads; ///< connections on each loop
  /// Keep the I/O threads running while requests wait for the actors and
  /// nothing else is queued (after the listener closed, say).
  std::vector<net::executor_work_guard<net::io_context::executor_type>> work;
  std::optional<tcp::acceptor> acceptor;
  std::vector<std::thread> threads;
  std::uint16_t port = 0;
  tcp protocol = tcp::v4(); ///< of the listening address
  std::atomic<bool> accepting{false};

  /// The loop of the next connection: the first with fewer than
  /// fill_first_connections, else the one with the fewest. Up to that many
  /// publishers are served by one thread as fast as by two, with less CPU
  /// and fewer syncs per event (each wake-up reads more requests, each pass
  /// appends more of them); more take the second thread's core
  /// (docs/architecture.md, "Threads").
  std::size_t pick_loop() const {
    std::size_t least = 0;
    for (std::size_t i = 0; i < loads.size(); ++i) {
      auto n = loads[i]->load();
      if (n < fill_first_connections)
        return i;
      if (n < loads[least]->load())
        least = i;
    }
    return least;
  }

  /// `s` on `loop`'s reactor instead of its own (closed on failure).
  tcp::socket move_to(tcp::socket s, net::io_context& loop, beast::error_code& ec) const {
    tcp::socket moved{loop};
    auto fd = s.release(ec);
    if (ec)
      return moved;
    if (moved.assign(protocol, fd, ec); ec)
      ::close(fd);
    return moved;
  }

  void accept() {
    // Accepted on the first loop, then placed: the placement sees every
    // connection accepted and closed so far.
    acceptor->async_accept([this](beast::error_code ec, tcp::socket s) {
      if (!accepting.load())
        return;
      auto i = ec ? 0 : pick_loop();
      if (i != 0)
        s = move_to(std::move(s), *loops[i], ec);
      if (!ec) {
        auto sess = std::make_shared<session>(std::move(s), state, loads[i]);
        auto n = state->connections.load();
        if (n <= state->opts.max_connections)
          sess->run();
        else if (n <= state->opts.max_connections + state->opts.probe_connections)
          sess->run_probe_only();
        else
          sess->refuse();
      } else if (ec != net::error::operation_aborted) {
        spdlog::warn("accept failed: {}", ec.message());
      }
      if (accepting.load())
        accept();
    });
  }
};

server::server(server_options opts, handler h) : impl_(std::make_unique<impl>()) {
  impl_->state->opts = std::move(opts);
  impl_->state->handle = std::move(h);
}

server::~server() {
  stop();
}

tl::expected<void, std::string> server::start() {
  auto& opts = impl_->state->opts;
  beast::error_code ec;
  auto host = opts.host == "localhost" ? std::string{"127.0.0.1"} : opts.host;
  auto addr = net::ip::make_address(host, ec);
  if (ec)
    return tl::make_unexpected("http.listen: \"" + opts.host + "\" is not an IP address");
  tcp::endpoint ep{addr, opts.port};
  for (std::size_t i = 0; i < std::max<std::size_t>(1, opts.threads); ++i) {
    impl_->loops.push_back(std::make_unique<net::io_context>(1));
    impl_->loads.push_back(std::make_shared<std::atomic<std::size_t>>(0));
  }
  auto& acc = impl_->acceptor.emplace(*impl_->loops[0]);
  auto where = opts.host + ":" + std::to_string(opts.port);
  if (acc.open(ep.protocol(), ec); ec)
    return tl::make_unexpected("cannot open a socket for " + where + ": " + ec.message());
  acc.set_option(net::socket_base::reuse_address(true), ec);
  if (acc.bind(ep, ec); ec)
    return tl::make_unexpected("cannot listen on " + where + ": " + ec.message());
  if (acc.listen(net::socket_base::max_listen_connections, ec); ec)
    return tl::make_unexpected("cannot listen on " + where + ": " + ec.message());
  impl_->port = acc.local_endpoint().port();
  impl_->protocol = ep.protocol();
  impl_->accepting = true;
  for (auto& loop : impl_->loops)
    impl_->work.push_back(net::make_work_guard(*loop));
  impl_->accept();
  for (auto& loop : impl_->loops)
    impl_->threads.emplace_back([l = loop.get()] {
      ::pthread_setname_np(::pthread_self(), "nerve.http");
      // Publishes read in one pass of this loop are appended together at
      // its end (actors/publish_lane.hpp).
      actors::set_pass_poster([l](std::function<void()> fn) { net::post(*l, std::move(fn)); });
      l->run();
      actors::end_lane_thread();
    });
  return {};
}

std::uint16_t server::port() const {
  return impl_->port;
}

void server::stop_accepting() {
  impl_->state->draining = true;
  if (!impl_->accepting.exchange(false))
    return;
  net::post(*impl_->loops[0], [this] {
    beast::error_code ec;
    if (impl_->acceptor)
      impl_->acceptor->close(ec);
  });
}

bool server::wait_idle(std::chrono::milliseconds deadline) {
  auto& st = *impl_->state;
  std::unique_lock<std::mutex> guard{st.idle_mutex};
  return st.idle_cv.wait_for(guard, deadline, [&] { return st.in_flight.load() == 0; });
}

void server::stop() {
  stop_accepting();
  {
    // Nothing from outside may reach a WebSocket once the threads are gone.
    std::lock_guard<std::mutex> guard{impl_->state->gates_mutex};
    for (auto& g : impl_->state->gates)
      if (auto gate = g.lock())
        gate->close();
  }
  impl_->work.clear();
  for (auto& loop : impl_->loops)
    loop->stop();
  for (auto& t : impl_->threads)
    if (t.joinable())
      t.join();
  impl_->threads.clear();
}

} // namespace nerve::http
