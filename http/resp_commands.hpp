// The commands of the Redis protocol listener (docs/redis.md): connection
// commands (PING, HELLO, AUTH, CLIENT, COMMAND, INFO, ...), XADD, which
// publishes through the node, and the keyspace commands (HSET ... SCAN,
// resp_keyspace.cpp), which run on the node's keyspace.
#pragma once

#include <chrono>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "actors/node.hpp"
#include "config/config.hpp"
#include "http/resp_server.hpp"

namespace nerve::http::resp {

/// The version HELLO and INFO report: the Redis release whose commands and
/// replies nerve follows (docs/redis.md).
inline constexpr const char* redis_compatible_version = "7.0.0";

/// The listener's options from the configuration.
[[nodiscard]] server_options options_from(const config::config& cfg);

/// Every command nerve answers today, on `node` (which must outlive the
/// table's handlers). `started` is when the node started (INFO's uptime).
[[nodiscard]] command_table make_commands(actors::node& node,
                                          std::chrono::steady_clock::time_point started);

/// Adds XLEN, XRANGE, XREVRANGE, XREAD, XREADGROUP, XACK, XPENDING, XCLAIM,
/// XAUTOCLAIM, XGROUP and XINFO (resp_streams.cpp) on `node`.
void add_stream_commands(command_table& table, actors::node& node);

/// A whole decimal integer, as Redis' string2ll takes it (no spaces, no '+').
[[nodiscard]] std::optional<long long> parse_integer(std::string_view text);
/// Where XADD asks the keyspace first: Redis answers WRONGTYPE for an XADD
/// to a hash's name. Calls `publish(then)`, which publishes and calls `then`
/// once answered: at once when `name` is a topic already and no keyspace
/// command of the connection waits; else after the connection's earlier
/// keyspace commands, once `name` is known to hold no hash, and when the
/// XADD makes the topic its later keyspace commands and XADDs wait for
/// `then`, so they see the stream. Answers WRONGTYPE (or why the keyspace
/// could not be asked) on `r` itself.
using xadd_gate = std::function<void(context& ctx, const std::string& name, const responder& r,
                                     std::function<void(std::function<void()> then)> publish)>;

/// The keyspace commands and XADD's gate (resp_keyspace.cpp).
struct keyspace_commands {
  /// HSET HGET HGETALL HINCRBY HDEL HLEN EXISTS TYPE DEL EXPIRE TTL PERSIST
  /// KEYS SCAN: each runs on the node's keyspace threads (run_keyspace),
  /// one connection's in command order, and answers Redis 7's replies.
  std::vector<command> commands;
  xadd_gate gate;
};

/// The keyspace commands on `node` (which must outlive them).
[[nodiscard]] keyspace_commands make_keyspace_commands(actors::node& node);

/// A node error as a RESP error text: "TRYAGAIN ..." for what a retry may
/// cure (overloaded, unavailable), "ERR ..." for the rest.
[[nodiscard]] std::string error_text(const actors::error& e);

} // namespace nerve::http::resp
