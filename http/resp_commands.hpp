// The commands of the Redis protocol listener (docs/redis.md): connection
// commands (PING, HELLO, AUTH, CLIENT, COMMAND, INFO, ...) and XADD, which
// publishes through the node.
#pragma once

#include <chrono>

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

/// A node error as a RESP error text: "TRYAGAIN ..." for what a retry may
/// cure (overloaded, unavailable), "ERR ..." for the rest.
[[nodiscard]] std::string error_text(const actors::error& e);

} // namespace nerve::http::resp
