// How the server reads a request with Beast: the parser's limits, and the
// parsed message as nerve's request. Private to server.cpp, and to
// tests/fuzz/http_request.cpp, which parses any bytes as the server does.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <utility>

#include <boost/beast/http.hpp>
#include <boost/beast/websocket/rfc6455.hpp>

#include "http/server.hpp"

namespace nerve::http {

using request_parser = boost::beast::http::request_parser<boost::beast::http::string_body>;
using request_message = boost::beast::http::request<boost::beast::http::string_body>;

/// Sets the limits of a new parser: a probe (a connection over the cap) has no body.
inline void limit_parser(request_parser& parser, const server_options& opts, bool probe_only) {
  parser.header_limit(static_cast<std::uint32_t>(opts.max_header_bytes));
  parser.body_limit(probe_only ? 0 : opts.max_body_bytes);
}

/// True when the header says `Expect: 100-continue` with a body over the
/// limit: refused before the client uploads it.
[[nodiscard]] inline bool refuse_before_continue(const request_parser& parser,
                                                 const server_options& opts) {
  auto len = parser.content_length();
  return parser.get()[boost::beast::http::field::expect] == "100-continue" && len
         && *len > opts.max_body_bytes;
}

/// The handler's request from a parsed message, whose body it takes: HEAD
/// is asked as GET, the target is split at its first '?'.
[[nodiscard]] inline request to_request(request_message& msg) {
  request req;
  bool head = msg.method() == boost::beast::http::verb::head;
  req.method = head ? std::string{"GET"} : std::string{msg.method_string()};
  auto target = std::string{msg.target()};
  auto q = target.find('?');
  req.path = target.substr(0, q);
  if (q != std::string::npos)
    req.query = target.substr(q + 1);
  req.body = std::move(msg.body());
  req.authorization = std::string{msg[boost::beast::http::field::authorization]};
  req.traceparent = std::string{msg["traceparent"]};
  req.received_ns = std::chrono::duration_cast<std::chrono::nanoseconds>(
                      std::chrono::system_clock::now().time_since_epoch())
                      .count();
  req.websocket = boost::beast::websocket::is_upgrade(msg);
  return req;
}

} // namespace nerve::http
