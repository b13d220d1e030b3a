// How the Redis protocol listener splits a connection's bytes into
// commands: arrays of bulk strings through hiredis' reader, or inline
// commands (words on a line, as typed in telnet). No sockets here: private
// to resp_server.cpp, and to tests/fuzz/resp_request.cpp, which feeds it
// any bytes.
#pragma once

#include <cstddef>
#include <memory>
#include <string>

#include "http/resp_server.hpp"

namespace nerve::http::resp {

/// Each argument counts this much beyond its length against the request
/// limit: about its framing on the wire and what its parsed copy costs, so
/// that many tiny arguments cannot take more memory than the limit says.
inline constexpr std::size_t per_argument_bytes = 32;

/// The limits of the command being read.
struct read_limits {
  /// Its arguments' lengths, plus per_argument_bytes each.
  std::size_t request_bytes = 0;
  /// An inline command's line.
  std::size_t inline_bytes = 0;
  /// Read before AUTH (when a token is set): arrays of 10 words at most, and
  /// Redis' words for what is refused.
  bool unauthenticated = false;
};

/// Splits the bytes of one connection into commands, in order.
class request_reader {
public:
  request_reader();
  ~request_reader();
  request_reader(const request_reader&) = delete;
  request_reader& operator=(const request_reader&) = delete;

  /// Appends bytes read from the connection.
  void feed(const char* data, std::size_t size);

  enum class status { command, incomplete, error };
  struct result {
    status what = status::incomplete;
    /// A command's words; none for an empty line, "*0" or "*-1" (ignored, as
    /// Redis does).
    args argv;
    /// A protocol error in Redis' words ("invalid bulk length"): the
    /// connection answers it and closes; the reader is not asked again.
    std::string error;
  };
  /// The next command of the bytes fed, under `limits`; incomplete when it
  /// needs more bytes.
  [[nodiscard]] result next(const read_limits& limits);
  /// A command is begun and not complete.
  [[nodiscard]] bool partial() const;

private:
  struct state;
  [[nodiscard]] result read_array(const read_limits& limits);
  [[nodiscard]] result read_inline(const read_limits& limits);
  std::unique_ptr<state> s_;
};

} // namespace nerve::http::resp
