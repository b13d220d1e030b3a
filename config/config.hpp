// The configuration model of a nerve node, and how it is loaded:
// YAML file, then NERVE_* environment variables, then flags (later wins).
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <tl/expected.hpp>

namespace nerve::config {

using millis = std::chrono::milliseconds;

/// How a partition's appends reach the disk before a publish is acknowledged.
enum class fsync_policy { always, interval, never };

struct http_config {
  std::string listen = "127.0.0.1:8000";
  std::string token;
  std::size_t max_body_bytes = 1048576;
  std::size_t max_header_bytes = 8192;
  std::size_t max_connections = 1024;
  /// Connections over max_connections whose request is still read, so that
  /// probes among them (/livez, /readyz, /health, /health/detailed,
  /// /metrics) are answered; anything else on them gets the cap's 503, and
  /// connections beyond both get it at once.
  std::size_t probe_connections = 1024;
  millis read_timeout{10000};
  std::size_t max_events_per_request = 1000;
  std::size_t threads = 2; ///< I/O threads of the HTTP server
};

struct storage_config {
  fsync_policy fsync = fsync_policy::always;
  millis fsync_interval{100};
  millis retention{7LL * 24 * 3600 * 1000}; ///< 0 keeps events forever
  std::size_t max_batch_events = 1024;      ///< events in one group commit
  std::size_t max_queued_events = 65536;    ///< per partition, then 503
};

struct topic_config {
  std::uint32_t partitions = 4;
};

/// How an agent's handler runs.
enum class agent_kind : std::uint8_t { builtin, process, http, pull };

/// max_in_flight of a pull agent that does not set it: deliveries waiting
/// to be fetched plus those fetched and not yet answered.
inline constexpr std::uint32_t pull_max_in_flight = 256;
/// max_in_flight of a group made by XGROUP CREATE: its pending entries stay
/// until acked or claimed, as on Redis, so it holds more before `>` waits.
inline constexpr std::uint32_t redis_group_max_in_flight = 4096;
/// `ordered_by` of an agent: none, or one delivery in flight per event key.
enum class ordering : std::uint8_t { none, key };
/// Where a new consumer group starts on a partition.
enum class start_position : std::uint8_t { latest, earliest };

struct agent_filter {
  std::optional<std::string> type;
  std::optional<std::string> source;
  std::optional<std::string> key;
};

struct agent_config {
  std::string name;
  std::vector<std::string> topics;
  agent_filter filter;
  agent_kind kind = agent_kind::builtin;
  std::vector<std::string> command;
  std::string url;
  std::string handler;
  std::uint32_t instances = 1;
  std::uint32_t max_in_flight = 16;
  ordering ordered_by = ordering::none;
  std::uint32_t max_retries = 3;
  millis timeout{30000};
  millis backoff_initial{200};
  millis backoff_max{30000};
  start_position start = start_position::latest;
  /// Made by XGROUP CREATE, not the config: Redis' semantics (a delivery
  /// stays pending with its consumer until acked or claimed; no timeout).
  bool redis_group = false;
};

struct health_config {
  std::uint64_t pending_degraded = 10000;
  std::uint64_t dlq_degraded = 100;
  millis storage_latency_degraded{250};
};

/// One configured cluster member: `ID@HOST:PORT`.
struct member {
  std::string id;
  std::string host;
  std::uint16_t port = 0;

  [[nodiscard]] std::string address() const { return host + ":" + std::to_string(port); }
};

struct cluster_config {
  std::string listen;          ///< HOST:PORT of this node's cluster link; empty: single node
  std::vector<member> members; ///< the same list on every node, self included
  std::string tls_cert, tls_key, tls_ca;
  /// etcd client URLs (http://HOST:PORT); needed when replication_factor > 1.
  std::vector<std::string> etcd;
  /// Prefix of every key nerve keeps in etcd: /nerve/<name>/.
  std::string name = "default";
  std::uint32_t replication_factor = 1; ///< copies of each partition (1: step 1, no etcd)
  std::uint32_t min_insync = 1;         ///< fewer in-sync copies than this: publishes get 503
  bool min_insync_set = false;          ///< given explicitly (else derived from the factor)
  /// A follower that has not caught up for this long leaves the in-sync set.
  millis replica_lag{2000};
  /// TTL of this node's etcd lease: a dead leader's partitions are taken over
  /// about this long after it died.
  millis lease_ttl{3000};
  /// A leader hands a partition back to its preferred replica (the first in
  /// placement order) once that one has been in sync this long; 0: never.
  millis leader_rebalance{300000};

  [[nodiscard]] bool enabled() const { return !listen.empty(); }
  [[nodiscard]] bool replicated() const { return replication_factor > 1; }
  [[nodiscard]] bool tls() const { return !tls_cert.empty(); }
};

/// The Redis protocol listener (CONTRACT.md section 10; docs/redis.md).
struct resp_config {
  std::string listen;                      ///< HOST:PORT; empty: off
  std::size_t max_connections = 1024;      ///< beyond it: "-ERR max number of clients reached"
  std::size_t max_request_bytes = 1048576; ///< one command, its arguments and framing
  std::size_t threads = 1;                 ///< I/O threads of the listener

  [[nodiscard]] bool enabled() const { return !listen.empty(); }
};

/// OTLP trace export (docs/operations.md, "Traces"); off while the endpoint is empty.
struct tracing_config {
  /// Where spans go: OTLP/HTTP with JSON, http://HOST:PORT (then /v1/traces)
  /// or http://HOST:PORT/PATH, used as given.
  std::string otlp_endpoint;
  std::string service_name = "nerve";
  double sample_ratio = 1.0;    ///< of traces, decided by trace id (whole traces)
  std::size_t max_queue = 2048; ///< spans waiting for export; beyond: dropped, counted
  std::size_t max_batch = 512;  ///< spans per export request
  millis interval{1000};        ///< an export at least this often while spans wait
  millis timeout{5000};         ///< of one export request

  [[nodiscard]] bool enabled() const { return !otlp_endpoint.empty(); }
};

struct log_config {
  std::string level = "info";  ///< trace | debug | info | warn | error | off
  std::string format = "text"; ///< text | json
};

struct config {
  std::string node_id; ///< empty: generated once and kept in the data dir
  std::string data_dir = "./nerve-data";
  http_config http;
  storage_config storage;
  millis results_ttl{24LL * 3600 * 1000};
  topic_config topic_defaults;
  std::map<std::string, topic_config> topics;
  std::vector<agent_config> agents;
  health_config health;
  cluster_config cluster;
  resp_config resp;
  tracing_config tracing;
  log_config log;

  /// Partitions for a new topic: its own entry, else the defaults.
  [[nodiscard]] std::uint32_t partitions_for(const std::string& topic) const;
};

/// Flags of `nerve run` that override the file and the environment.
struct flag_overrides {
  std::optional<std::string> config_file;
  std::optional<std::string> data_dir;
  std::optional<std::string> http_listen;
  std::optional<std::string> node_id;
  std::optional<std::string> cluster_listen;
  std::optional<std::string> cluster_members;
  std::optional<std::string> resp_listen;
};

/// Where the environment comes from (injected so tests need not touch the
/// process environment).
using env_lookup = std::optional<std::string> (*)(const char* name);

/// The process environment.
std::optional<std::string> process_env(const char* name);

/// Loads the configuration. The error is one line naming the key, the value
/// and what is allowed; callers print it and exit with code 2.
[[nodiscard]] tl::expected<config, std::string> load(const flag_overrides& flags,
                                                     env_lookup env = process_env);

/// Parses the YAML text of a config file on top of `base` (no env, no flags).
[[nodiscard]] tl::expected<config, std::string> parse_yaml(const std::string& text,
                                                           config base = {});

/// `text` on one line and harmless to a terminal: control bytes written as
/// escapes (\n, \t, \r, \u001b). Config errors, and the CLI's table cells
/// (which come from publishers), go through it.
[[nodiscard]] std::string one_line(std::string_view text);

/// Parses "250ms", "30s", "15m", "24h", "7d" (a bare number is seconds).
[[nodiscard]] std::optional<millis> parse_duration(const std::string& text);

/// Splits "host:port"; the port must be 0..65535.
[[nodiscard]] std::optional<std::pair<std::string, std::uint16_t>>
split_host_port(const std::string& text);

/// True for a topic name: [A-Za-z0-9_:-]+ tokens joined by '.', at most 255 bytes.
[[nodiscard]] bool valid_topic_name(std::string_view topic);

/// True for an agent name: 1 to 128 of [A-Za-z0-9._:-] (so Redis group names
/// such as group:orders:summarizer are agent names).
[[nodiscard]] bool valid_agent_name(std::string_view name);

/// True for 127.0.0.0/8, ::1 and "localhost".
[[nodiscard]] bool is_loopback_host(const std::string& host);

[[nodiscard]] const char* to_string(fsync_policy policy);
[[nodiscard]] const char* to_string(agent_kind kind);
[[nodiscard]] const char* to_string(ordering o); ///< "" for none
[[nodiscard]] const char* to_string(start_position start);

} // namespace nerve::config
