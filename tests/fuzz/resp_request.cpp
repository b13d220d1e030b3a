// Fuzzes the Redis protocol listener's request path up to the handlers: any
// bytes as one connection's input (split into reads of any size), through
// the request reader (hiredis' reader with nerve's object functions, and
// inline commands; resp_reader.hpp) and the command table's checks
// (command_table::resolve), as resp_server.cpp runs them; and every word
// that parses as an entry id through resp_ids.hpp. A crash, undefined
// behaviour or a broken invariant below is a finding.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "http/resp_ids.hpp"
#include "http/resp_reader.hpp"
#include "http/resp_server.hpp"

using namespace nerve::http::resp;

namespace {

[[noreturn]] void broken(const char* what, const std::string& detail = {}) {
  std::fprintf(stderr, "resp request path: %s %s\n", what, detail.c_str());
  std::abort();
}

/// The shapes of the server's commands (their handlers need a node, so
/// these run nothing): exact and minimum arities, commands allowed before
/// AUTH, subcommands under a parent that runs alone (COMMAND) or not (CLIENT).
command_table shapes() {
  command_table t;
  t.add({"ping", -1, false, {}, 0, 0, 0, {}, {}});
  t.add({"echo", 2, false, {}, 0, 0, 0, {}, {}});
  t.add({"auth", -2, true, {}, 0, 0, 0, {}, {}});
  t.add({"hello", -1, true, {}, 0, 0, 0, {}, {}});
  t.add({"xadd", -5, false, {}, 1, 1, 1, {}, {}});
  t.add({"xreadgroup", -7, false, {}, 0, 0, 0, {}, {}});
  command client{"client", -2, false, {}, 0, 0, 0, {}, {}};
  client.subcommands.push_back({"client|setname", 3, false, {}, 0, 0, 0, {}, {}});
  client.subcommands.push_back({"client|list", -2, false, {}, 0, 0, 0, {}, {}});
  t.add(std::move(client));
  command cmd{"command", -1, false, {}, 0, 0, 0, [](context&, args&&, responder) {}, {}};
  cmd.subcommands.push_back({"command|info", -2, false, {}, 0, 0, 0, {}, {}});
  t.add(std::move(cmd));
  return t;
}

/// A Redis error reply is one line: '-', the text, CRLF.
void check_error(const std::string& text) {
  if (text.empty())
    broken("an empty error");
  auto bytes = reply{protocol::resp2}.error(text).take();
  if (bytes.find_first_of("\r\n") != bytes.size() - 2)
    broken("an error reply spans lines:", bytes.substr(0, 200));
}

void check_ids(const args& argv) {
  for (auto& word : argv) {
    auto id = parse_id(word);
    if (!id)
      continue;
    auto again = parse_id(format_id(*id));
    if (!again || !(*again == *id))
      broken("an id does not round-trip:", word);
    std::uint32_t partitions = 1 + static_cast<std::uint32_t>(word.size() % 1024);
    auto place = decode_id(*id, partitions);
    auto back
      = place ? encode_id(id->ms, place->partition, place->offset, partitions) : std::nullopt;
    if (!back || !(*back == *id))
      broken("an id's place does not encode back:", word);
  }
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static const command_table table = shapes();
  if (size < 1)
    return 0;
  // The first byte: how many bytes each read takes (0: all) and whether a
  // token is set (commands before AUTH have the lower limits).
  std::size_t chunk = (data[0] & 0x7f) == 0 ? size : (data[0] & 0x7f) * 4u;
  bool authenticated = (data[0] & 0x80) == 0;
  const server_options opts; // the server's defaults
  request_reader reader;
  const char* in = reinterpret_cast<const char*>(data) + 1;
  std::size_t left = size - 1;
  while (left > 0) {
    auto n = std::min(chunk, left);
    reader.feed(in, n);
    in += n;
    left -= n;
    for (;;) {
      read_limits limits{authenticated
                           ? opts.max_request_bytes
                           : std::min(opts.max_request_bytes, opts.unauthenticated_request_bytes),
                         opts.max_inline_bytes, !authenticated};
      auto got = reader.next(limits);
      if (got.what == request_reader::status::error) {
        check_error("ERR Protocol error: " + got.error);
        return 0; // the connection closes
      }
      if (got.what == request_reader::status::incomplete)
        break;
      std::size_t bytes = 0;
      for (auto& a : got.argv)
        bytes += a.size() + per_argument_bytes;
      if (bytes > limits.request_bytes)
        broken("a command over the request limit was read:", std::to_string(bytes));
      if (got.argv.empty())
        continue;
      check_ids(got.argv);
      auto cmd = table.resolve(got.argv, authenticated);
      if (!cmd) {
        check_error(cmd.error());
        continue;
      }
      if ((*cmd)->name == "auth")
        authenticated = true; // as AUTH with the right token
    }
  }
  return 0;
}
