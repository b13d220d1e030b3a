// Blocking Beast POSTs on worker threads for `http` agents.
#include "actors/agents/http_poster.hpp"

#include <algorithm>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <thread>
#include <vector>

#include <sys/socket.h>

#include <boost/asio/connect.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>

namespace nerve::actors::agents {

namespace net = boost::asio;
namespace beast = boost::beast;
namespace bhttp = beast::http;

namespace {

struct target {
  std::string host;
  std::string port = "80";
  std::string path = "/";
};

target parse_url(const std::string& url) {
  target t;
  auto rest = url.substr(url.find("://") == std::string::npos ? 0 : url.find("://") + 3);
  auto slash = rest.find('/');
  auto hostport = rest.substr(0, slash);
  if (slash != std::string::npos)
    t.path = rest.substr(slash);
  auto colon = hostport.rfind(':');
  t.host = hostport.substr(0, colon);
  if (colon != std::string::npos)
    t.port = hostport.substr(colon + 1);
  return t;
}

/// Largest answer body read from an agent's endpoint.
constexpr std::size_t max_answer_bytes = 16u << 20;

} // namespace

struct http_poster::impl {
  target where;
  std::mutex mutex;
  std::condition_variable cv;
  struct job {
    std::string body;
    std::chrono::milliseconds timeout;
    std::function<void(http_answer)> done;
    std::vector<std::pair<std::string, std::string>> headers;
  };
  std::deque<job> jobs;
  bool stopping = false;
  std::vector<int> active; ///< sockets of requests in progress (mutex)
  std::vector<std::thread> threads;

  /// A worker's connection, kept open between requests while the agent's
  /// endpoint keeps it alive (a connection per delivery cost a handshake, a
  /// TIME_WAIT socket and most of the worker's CPU at low rates).
  struct connection {
    explicit connection(net::io_context& ioc) : stream(ioc) {}
    beast::tcp_stream stream;
    beast::flat_buffer buffer;
  };

  void run() {
    net::io_context ioc;
    std::unique_ptr<connection> conn;
    for (;;) {
      job j;
      {
        std::unique_lock<std::mutex> guard{mutex};
        cv.wait(guard, [this] { return stopping || !jobs.empty(); });
        if (stopping && jobs.empty())
          return;
        j = std::move(jobs.front());
        jobs.pop_front();
      }
      j.done(send(ioc, conn, j));
    }
  }

  /// Registers the socket of a request in progress, so that a stop cuts it
  /// short instead of waiting; false when stopping.
  bool enter(int fd) {
    std::lock_guard<std::mutex> guard{mutex};
    if (stopping)
      return false;
    active.push_back(fd);
    return true;
  }
  void leave(int fd) {
    std::lock_guard<std::mutex> guard{mutex};
    active.erase(std::remove(active.begin(), active.end(), fd), active.end());
  }

  http_answer send(net::io_context& ioc, std::unique_ptr<connection>& conn, const job& j) {
    bhttp::request<bhttp::string_body> req{bhttp::verb::post, where.path, 11};
    req.set(bhttp::field::host, where.host);
    req.set(bhttp::field::user_agent, "nerve/" NERVE_VERSION);
    req.set(bhttp::field::content_type, "application/json");
    for (auto& [name, value] : j.headers)
      req.set(name, value);
    req.body() = j.body;
    req.prepare_payload();
    bool reused = conn != nullptr;
    bool retry = false;
    auto a = exchange(ioc, conn, req, j.timeout, reused, retry);
    if (retry) {
      // The endpoint closed the kept connection while it was idle (its keep-alive
      // timeout) and no byte of an answer came: it goes again on a new one. Were it
      // read after all, the agent sees it twice, as at-least-once allows.
      a = exchange(ioc, conn, req, j.timeout, false, retry);
    }
    return a;
  }

  /// One request and its answer on `conn`, connecting first unless `reuse`;
  /// `conn` is reset unless the connection may carry the next request.
  http_answer exchange(net::io_context& ioc, std::unique_ptr<connection>& conn,
                       bhttp::request<bhttp::string_body>& req, std::chrono::milliseconds timeout,
                       bool reuse, bool& retry) {
    retry = false;
    http_answer a;
    if (!reuse)
      conn = std::make_unique<connection>(ioc);
    auto& stream = conn->stream;
    auto& buffer = conn->buffer;
    // Asynchronous operations run to completion on this worker's own loop:
    // the stream's expiry bounds only those, and it bounds the whole request
    // (connect, write, read), so an agent that never answers cannot hold a
    // worker beyond `timeout`.
    bhttp::response_parser<bhttp::string_body> parser;
    parser.body_limit(max_answer_bytes);
    beast::error_code result;
    bool registered = false;
    bool answered = false; ///< a byte of the answer came (no retry then)
    auto exchange_on_stream = [&] {
      if (!enter(stream.socket().native_handle())) {
        result = net::error::operation_aborted;
        return;
      }
      registered = true;
      bhttp::async_write(stream, req, [&](beast::error_code ec, std::size_t) {
        if (ec) {
          result = ec;
          return;
        }
        // The header alone first: Beast 1.74's eager read parses on past
        // a Content-Length over the body limit when body bytes came in the
        // same read (its put() drops finish_header's error), so a 40 MB
        // answer was read whole and acked, sometimes.
        bhttp::async_read_header(stream, buffer, parser, [&](beast::error_code ec, std::size_t) {
          if (ec) {
            result = ec;
            return;
          }
          answered = true;
          bhttp::async_read(stream, buffer, parser,
                            [&](beast::error_code ec, std::size_t) { result = ec; });
        });
      });
    };
    stream.expires_after(timeout);
    if (reuse) {
      exchange_on_stream();
    } else {
      net::ip::tcp::resolver resolver{ioc};
      auto endpoints = resolver.resolve(where.host, where.port, result);
      if (!result)
        stream.async_connect(endpoints, [&](beast::error_code ec, const auto&) {
          if (ec) {
            result = ec;
            return;
          }
          exchange_on_stream();
        });
    }
    ioc.restart();
    ioc.run();
    if (registered)
      leave(stream.socket().native_handle());
    if (result) {
      a.status = 0;
      a.timed_out = result == beast::error::timeout;
      a.error = a.timed_out ? "timed out after " + std::to_string(timeout.count()) + " ms"
                : result == bhttp::error::body_limit
                  ? "the answer's body exceeds " + std::to_string(max_answer_bytes) + " bytes"
                  : result.message();
      // A kept connection that failed before any answer may be tried once
      // more (send()); after a failure no connection is in a known state.
      retry = reuse && !answered && !a.timed_out && result != net::error::operation_aborted;
      conn.reset();
      return a;
    }
    auto res = parser.release();
    a.status = res.result_int();
    a.body = std::move(res.body());
    if (!res.keep_alive()) {
      beast::error_code ignored;
      stream.socket().shutdown(net::ip::tcp::socket::shutdown_both, ignored);
      conn.reset();
    } else {
      stream.expires_never();
    }
    return a;
  }
};

http_poster::http_poster(const std::string& url, std::size_t workers)
  : impl_(std::make_unique<impl>()) {
  impl_->where = parse_url(url);
  for (std::size_t i = 0; i < std::max<std::size_t>(1, workers); ++i)
    impl_->threads.emplace_back([this] { impl_->run(); });
}

http_poster::~http_poster() {
  {
    // Stopping: requests not yet sent are dropped and those in progress cut
    // short (their deliveries are not acked, so they go out again after a
    // restart), so a stop never waits for an agent's timeout.
    std::lock_guard<std::mutex> guard{impl_->mutex};
    impl_->stopping = true;
    impl_->jobs.clear();
    for (int fd : impl_->active)
      ::shutdown(fd, SHUT_RDWR);
  }
  impl_->cv.notify_all();
  for (auto& t : impl_->threads)
    t.join();
}

void http_poster::post(std::string body, std::chrono::milliseconds timeout,
                       std::function<void(http_answer)> done,
                       std::vector<std::pair<std::string, std::string>> headers) {
  {
    std::lock_guard<std::mutex> guard{impl_->mutex};
    impl_->jobs.push_back({std::move(body), timeout, std::move(done), std::move(headers)});
  }
  impl_->cv.notify_one();
}

} // namespace nerve::actors::agents
