// The `nerve` subcommands: `run` (the server) and the clients of its API.
#pragma once

#include <optional>
#include <string>

#include "config/config.hpp"

namespace nerve::runtime {

/// Exit codes of the CLI (CONTRACT.md section 1).
enum exit_code : int {
  exit_ok = 0,
  exit_failed = 1,
  exit_usage = 2,
  exit_unhealthy = 3,
  exit_unreachable = 4,
};

/// Flags every client subcommand takes.
struct client_options {
  std::string server;
  std::string token;
  bool json = false;
};

/// `nerve run`: serves until SIGTERM or SIGINT, then drains and exits 0.
int run_server(const config::flag_overrides& flags);

struct publish_options {
  std::string topic;
  std::optional<std::string> key, id, type, source, data, data_file;
  bool data_stdin = false;
};

/// `nerve publish`.
int publish(const client_options& client, const publish_options& opts);

/// Prints "nerve: <message>" on stderr.
void print_error(const std::string& message);

} // namespace nerve::runtime
