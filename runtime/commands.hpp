// The `nerve` subcommands: `run` (the server) and the clients of its API.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

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

/// `nerve bus streams` (alias `bus list`): the topics with their sizes.
int bus_streams(const client_options& client);

struct inspect_options {
  std::string topic;
  std::optional<std::uint32_t> partition;
  std::optional<std::uint64_t> from_offset;
  std::optional<std::uint32_t> limit;
};

/// `nerve bus inspect TOPIC`: stored events, one partition or all.
int bus_inspect(const client_options& client, const inspect_options& opts);

/// `nerve bus stats`: the bus totals as KEY VALUE lines.
int bus_stats(const client_options& client);

/// `nerve health [--detailed]`: exit_unhealthy when the server says it is
/// unhealthy (or DOWN); degraded still serves, so it exits 0.
int health(const client_options& client, bool detailed);

struct metrics_options {
  std::string topic;
  std::string agent;
  std::string format; ///< table | json | prometheus; empty: table, or json with --json
};

/// `nerve metrics`: per agent and topic counters, or the Prometheus text.
int metrics(const client_options& client, const metrics_options& opts);

/// `nerve storage health`: exit_unhealthy when the storage says unhealthy.
int storage_health(const client_options& client);

/// `nerve cluster status`: the nodes of the cluster.
int cluster_status(const client_options& client);
/// nerve cluster partitions: leaders, epochs, in-sync sets, high watermarks, lag.
int cluster_partitions(const client_options& client);

struct replay_options {
  std::string action; ///< start | status | cancel | list | history
  std::string id;
  std::string from, to;
  std::vector<std::string> topics, agents, events;
  bool dry_run = false;
  bool no_wait = false;
  std::string agent; ///< history: whose
  std::string cursor;
  std::optional<std::uint32_t> limit;
};

/// `nerve replay`: start one (and follow it to the end unless --no-wait),
/// or `status ID`, `cancel ID`, `list`, `history ID --agent A`.
int replay(const client_options& client, const replay_options& opts);

/// Prints "nerve: <message>" on stderr.
void print_error(const std::string& message);

} // namespace nerve::runtime
