// Blocking Beast client used by the CLI subcommands.
#include "http/client.hpp"

#include <boost/asio/connect.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>

namespace nerve::http {

namespace net = boost::asio;
namespace beast = boost::beast;
namespace bhttp = beast::http;

tl::expected<client_response, client_error>
call(const std::string& server, const std::string& method, const std::string& target,
     const std::string& body, const std::string& token, std::chrono::milliseconds timeout) {
  std::string rest = server;
  if (rest.rfind("http://", 0) == 0)
    rest = rest.substr(7);
  else if (rest.find("://") != std::string::npos)
    return tl::make_unexpected(
      client_error{client_errc::bad_url, "--server " + server + ": only http:// is supported"});
  while (!rest.empty() && rest.back() == '/')
    rest.pop_back();
  std::string host = rest;
  std::string port = "80";
  if (auto colon = rest.rfind(':');
      colon != std::string::npos && rest.find(']') == std::string::npos) {
    host = rest.substr(0, colon);
    port = rest.substr(colon + 1);
  }
  if (host.empty() || host.find('/') != std::string::npos)
    return tl::make_unexpected(
      client_error{client_errc::bad_url, "--server " + server + ": expected http://HOST:PORT"});
  try {
    net::io_context ioc;
    net::ip::tcp::resolver resolver{ioc};
    beast::tcp_stream stream{ioc};
    stream.expires_after(timeout);
    stream.connect(resolver.resolve(host, port));
    bhttp::request<bhttp::string_body> req{bhttp::string_to_verb(method), target, 11};
    req.set(bhttp::field::host, host);
    req.set(bhttp::field::user_agent, "nerve-cli/" NERVE_VERSION);
    if (!token.empty())
      req.set(bhttp::field::authorization, "Bearer " + token);
    if (!body.empty()) {
      req.set(bhttp::field::content_type, "application/json");
      req.body() = body;
    }
    req.prepare_payload();
    bhttp::write(stream, req);
    beast::flat_buffer buffer;
    bhttp::response_parser<bhttp::string_body> parser;
    parser.body_limit(1ULL << 30);
    bhttp::read_header(stream, buffer, parser); // then the body: see http_poster.cpp
    bhttp::read(stream, buffer, parser);
    auto res = parser.release();
    beast::error_code ec;
    stream.socket().shutdown(net::ip::tcp::socket::shutdown_both, ec);
    return client_response{res.result_int(), std::string{res[bhttp::field::content_type]},
                           std::move(res.body())};
  } catch (const beast::system_error& e) {
    return tl::make_unexpected(
      client_error{client_errc::unreachable, "cannot reach " + server + ": " + e.code().message()});
  }
}

} // namespace nerve::http
