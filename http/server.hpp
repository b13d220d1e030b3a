// The HTTP/1.1 server (Boost.Beast behind this header): limits, timeouts, a
// connection cap, keep-alive, and hand-off of parsed requests to a handler
// that answers asynchronously from any thread.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <tl/expected.hpp>

namespace nerve::http {

struct request {
  std::string method; ///< "GET", "POST", ... (HEAD arrives as "GET")
  std::string path;   ///< the target before '?', still percent-encoded
  std::string query;  ///< after '?', still percent-encoded
  std::string body;
  std::string authorization;
  std::string traceparent;      ///< W3C trace context of the caller, if it sent one
  std::int64_t received_ns = 0; ///< Unix time the request was read whole
  bool websocket = false;       ///< a WebSocket upgrade request
  /// Asked by a peer or by this node's own fan-out: answer from this node's
  /// data alone, without a token (never set from the network's HTTP side).
  bool local = false;
};

/// Sends one text frame on a WebSocket; from any thread, never blocks.
using text_sender = std::function<void(std::string)>;

struct response {
  unsigned status = 200;
  std::string content_type = "application/json";
  std::string body;
  std::vector<std::pair<std::string, std::string>> headers;
  /// Set by a route that accepts a WebSocket upgrade: called once the
  /// handshake is done; what it returns is kept until the socket closes.
  std::function<std::shared_ptr<void>(text_sender)> websocket;
};

/// Sends the response; callable once, from any thread.
using responder = std::function<void(response)>;
using handler = std::function<void(request&&, responder)>;

struct server_options {
  std::string host = "127.0.0.1";
  std::uint16_t port = 8000;
  std::size_t max_body_bytes = 1048576;
  std::size_t max_header_bytes = 8192;
  std::size_t max_connections = 1024;
  /// Connections beyond max_connections whose request is still read (for
  /// 2 s at most, no body): it is served only when it is GET (or HEAD) of
  /// /livez, /readyz, /health, /health/detailed or /metrics, else it gets
  /// the cap's 503; the connection closes after it.
  std::size_t probe_connections = 1024;
  std::chrono::milliseconds read_timeout{10000};
  std::size_t threads = 2;
  /// Told the status of every answer the server sends on its own, before
  /// any route (413, 431, a malformed request's 400, the connection cap's
  /// 503), so that request metrics count them too. From I/O threads.
  std::function<void(unsigned status)> on_own_answer;
};

class server {
public:
  server(server_options opts, handler h);
  ~server();
  server(const server&) = delete;
  server& operator=(const server&) = delete;

  /// Binds and starts serving; the error says what could not be bound.
  [[nodiscard]] tl::expected<void, std::string> start();
  /// The bound port (useful with port 0).
  [[nodiscard]] std::uint16_t port() const;
  /// Closes the listening socket; connections in use carry on.
  void stop_accepting();
  /// Waits until no request is being handled, at most `deadline`; false when
  /// requests were still in flight.
  [[nodiscard]] bool wait_idle(std::chrono::milliseconds deadline);
  /// Closes every connection and joins the I/O threads.
  void stop();

private:
  struct impl;
  std::unique_ptr<impl> impl_;
};

} // namespace nerve::http
