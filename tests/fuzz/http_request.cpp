// Fuzzes the HTTP request path up to the handlers: any bytes as a stream of
// HTTP/1.1 requests (pipelined, split into reads of any size), parsed by
// Beast with the server's limits (server_request.hpp), then each request's
// path matched against the API's route table, its escapes decoded and its
// query parsed (route_table.hpp), as the server and the API do. A crash,
// undefined behaviour or a broken invariant below is a finding.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include <boost/asio/buffer.hpp>
#include <boost/asio/error.hpp>
#include <boost/beast/core.hpp>
#include <nlohmann/json.hpp>

#include "config/config.hpp"
#include "http/problem.hpp"
#include "http/route_table.hpp"
#include "http/server_request.hpp"

using namespace nerve::http;
namespace beast = boost::beast;
namespace bhttp = beast::http;

namespace {

[[noreturn]] void broken(const char* what, const std::string& detail = {}) {
  std::fprintf(stderr, "http request path: %s %s\n", what, detail.c_str());
  std::abort();
}

/// The fuzzer's bytes as a socket that hands out at most `chunk` bytes a read.
class byte_stream {
public:
  byte_stream(const char* data, std::size_t size, std::size_t chunk)
    : data_(data), size_(size), chunk_(chunk) {}

  template <class Buffers>
  std::size_t read_some(const Buffers& buffers, beast::error_code& ec) {
    ec = {};
    if (at_ == size_) {
      ec = boost::asio::error::eof;
      return 0;
    }
    auto n = boost::asio::buffer_copy(
      buffers, boost::asio::buffer(data_ + at_, std::min(chunk_, size_ - at_)));
    at_ += n;
    return n;
  }

  template <class Buffers>
  std::size_t read_some(const Buffers& buffers) {
    beast::error_code ec;
    auto n = read_some(buffers, ec);
    if (ec)
      throw beast::system_error{ec};
    return n;
  }

private:
  const char* data_;
  std::size_t size_;
  std::size_t chunk_;
  std::size_t at_ = 0;
};

/// An answer of the API's own must be JSON whatever bytes the path held.
void check_problem(const response& r) {
  if (!nlohmann::json::accept(r.body))
    broken("a problem body is not JSON:", r.body.substr(0, 200));
}

void check_decode(const std::string& text, bool query) {
  bool ok = false;
  auto out = percent_decode(text, ok, query);
  if (out.size() > text.size())
    broken("percent_decode grew its input:", text.substr(0, 200));
  if (!ok && !out.empty())
    broken("percent_decode failed with output");
  if (ok && text.find('%') == std::string::npos && (!query || text.find('+') == std::string::npos)
      && out != text)
    broken("percent_decode changed text without escapes");
}

/// What the API does with a request before a handler runs (routes.cpp),
/// and what the handlers do with a query (every parameter any route takes).
void route(const route_table& table, const request& req) {
  for (auto& seg : split_path(req.path)) {
    if (seg.empty() || seg.find('/') != std::string::npos)
      broken("a path segment is empty or holds '/'");
    check_decode(seg, false);
  }
  auto m = table.match(req.method, req.path);
  if (!m.path_ok) {
    if (m.hit || !m.allowed.empty())
      broken("a malformed path matched");
    check_problem(problem(400, "bad-path", "Bad Request", "malformed"));
  } else if (m.hit) {
    if (m.hit->method != req.method)
      broken("a route of another method matched");
    std::size_t wanted = 0;
    for (auto& s : m.hit->pattern)
      wanted += s.front() == '{' ? 1 : 0;
    if (m.p.size() != wanted)
      broken("a match's parameters do not fill its pattern");
    for (auto& p : m.p) {
      if (p.empty())
        broken("an empty path parameter");
      // What the handlers check before use: a name that passes holds no
      // byte beyond the rule's (no '/', no escape, no control byte).
      if (nerve::config::valid_topic_name(p) || nerve::config::valid_agent_name(p))
        for (unsigned char c : p)
          if (!(std::isalnum(c) || std::strchr("-_.:", c) != nullptr))
            broken("a name passed the rule with a byte it does not allow:", p);
    }
  } else if (!m.allowed.empty()) {
    if (m.same_path == nullptr || m.allowed.find(req.method + ",") == 0)
      broken("a 405 without a route, or allowing the method asked");
    check_problem(problem(405, "method-not-allowed", "Method Not Allowed",
                          req.method + " is not allowed on " + req.path.substr(0, 256)));
  } else {
    if (m.same_path != nullptr)
      broken("a path's route without its methods");
    check_problem(problem(404, "not-found", "Not Found",
                          "no route " + req.path.substr(0, 256) + "; see docs/api.md"));
  }
  check_decode(req.query, true);
  std::map<std::string, std::string> q;
  auto err = parse_query(
    req.query,
    {"partition", "from_offset", "limit", "agent", "topic", "cursor", "index", "wait_ms"}, q);
  if (err) {
    check_problem(*err);
    return;
  }
  for (auto& [k, v] : q)
    if (v.size() > req.query.size() || ((k == "agent" || k == "topic") && v.empty()))
      broken("a query value longer than the query, or an empty filter");
  std::optional<std::uint64_t> n;
  for (auto [name, max] : {std::pair<const char*, std::uint64_t>{"partition", 1023},
                           {"from_offset", ~0ULL >> 1},
                           {"limit", 1000},
                           {"index", ~0ULL},
                           {"wait_ms", 60000}}) {
    n.reset();
    if (auto e = query_uint(q, name, max, n, 0))
      check_problem(*e);
    else if (n && *n > max)
      broken("query_uint passed a value over its max");
  }
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static const route_table table;
  if (size < 1)
    return 0;
  // The first byte: how many bytes each read returns (1 to 256, 0: all), and
  // whether the connection is in a probe slot (no body allowed).
  std::size_t chunk = data[0] & 0x7f;
  bool probe_only = (data[0] & 0x80) != 0;
  byte_stream stream{reinterpret_cast<const char*>(data) + 1, size - 1,
                     chunk == 0 ? size : chunk * 2};
  const server_options opts; // the server's defaults: 8 KiB of header, 1 MiB of body
  beast::flat_buffer buffer;
  for (int n = 0; n < 64; ++n) { // the server reads until an error or Connection: close
    request_parser parser;
    limit_parser(parser, opts, probe_only);
    beast::error_code ec;
    bhttp::read_header(stream, buffer, parser, ec);
    if (ec)
      break; // answered 400, 413, 431 or closed
    if (refuse_before_continue(parser, opts))
      break; // 413 before the upload
    bhttp::read(stream, buffer, parser, ec);
    if (ec) {
      check_problem(
        problem(400, "bad-request", "Bad Request", "malformed HTTP request: " + ec.message()));
      break;
    }
    auto msg = parser.release();
    if (msg.body().size() > opts.max_body_bytes)
      broken("a body over the limit was read");
    bool keep_alive = msg.keep_alive();
    auto req = to_request(msg);
    if (req.path.find('?') != std::string::npos)
      broken("a path holds '?'");
    route(table, req);
    if (!keep_alive)
      break;
  }
  return 0;
}
