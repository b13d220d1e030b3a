// A small blocking HTTP/1.1 client for the CLI (Beast behind this header).
#pragma once

#include <chrono>
#include <string>

#include <tl/expected.hpp>

namespace nerve::http {

struct client_response {
  unsigned status = 0;
  std::string content_type;
  std::string body;
};

enum class client_errc {
  bad_url,     ///< the server URL is not http://host:port
  unreachable, ///< cannot connect, or the connection broke
};

struct client_error {
  client_errc code;
  std::string message;
};

/// Sends one request to `server` (http://host[:port]) and reads the answer.
[[nodiscard]] tl::expected<client_response, client_error>
call(const std::string& server, const std::string& method, const std::string& target,
     const std::string& body, const std::string& token,
     std::chrono::milliseconds timeout = std::chrono::seconds{30});

} // namespace nerve::http
