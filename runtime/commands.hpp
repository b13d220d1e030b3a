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

/// `nerve agent list | get NAME | pause NAME | resume NAME`.
int agent(const client_options& client, const std::string& action, const std::string& name);

struct dlq_options {
  std::string action; ///< list | show | retry | retry-all | purge
  std::string id;
  std::string agent;
  std::string topic;
  std::size_t limit = 100;
  bool yes = false;
};

/// `nerve dlq ...`.
int dlq(const client_options& client, const dlq_options& opts);

/// `nerve bus groups TOPIC`.
int bus_groups(const client_options& client, const std::string& topic);

/// Prints "nerve: <message>" on stderr.
void print_error(const std::string& message);

} // namespace nerve::runtime
