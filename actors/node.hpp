// The narrow interface between the HTTP layer and the actor runtime of one
// node. No CAF and no RocksDB types cross it; every call returns at once and
// answers through its callback, on an actor thread.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <tl/expected.hpp>

#include "config/config.hpp"

namespace nerve::actors {

/// Errors a caller of the node can react to (each maps to one HTTP status).
enum class errc {
  not_found,   ///< 404
  conflict,    ///< 409: an event id is used on another topic
  overloaded,  ///< 503 + Retry-After: a bounded queue is full
  unavailable, ///< 503: shutting down, or a partition is restarting
  storage,     ///< 500: the log failed to read or write
  invalid,     ///< 400
};

struct error {
  errc code;
  std::string message;
};

template <class T>
using result = tl::expected<T, error>;

template <class T>
using callback = std::function<void(result<T>)>;

/// One event to publish, validated by the caller.
struct publish_item {
  std::string id;       ///< empty: the node generates a UUIDv7
  std::string key;      ///< empty: round-robin over partitions
  std::string fragment; ///< JSON members: "type":..,"trace_id":..,"data":..
  std::string type;     ///< copies of the envelope fields agent filters match on
  std::string source;
};

/// Where a published event now lives.
struct published {
  std::string id;
  std::string topic;
  std::uint32_t partition = 0;
  std::uint64_t offset = 0;
  std::int64_t time_us = 0;
  bool duplicate = false;
};

struct partition_view {
  std::uint32_t partition = 0;
  std::uint64_t first_offset = 0;
  std::uint64_t next_offset = 0;
  std::uint64_t bytes = 0;
};

struct topic_view {
  std::string name;
  std::uint32_t partitions = 0;
  std::vector<partition_view> partition_stats;
};

/// A page of stored events (each one JSON text, as stored).
struct events_page {
  std::vector<std::string> events;
  std::optional<std::uint64_t> next_offset; ///< when one partition was read
};

/// Measured when asked: nothing here is a cached flag except `storage_ok`,
/// which is the last outcome of real writes.
struct health_report {
  bool storage_ok = false;
  std::optional<double> storage_latency_ms; ///< of the write/read probe
  std::string storage_error;
  bool bus_ok = false; ///< every partition actor alive
  std::uint64_t pending_publishes = 0;
  std::uint64_t partitions = 0;
  std::uint64_t agents_running = 0;
  std::uint64_t dlq_size = 0;
};

struct storage_report {
  std::string path;
  std::uint64_t disk_bytes = 0;
  bool ok = false;
  std::string last_error;
  std::string fsync;
};

class node {
public:
  virtual ~node() = default;

  /// Appends `items` to `topic` (created on first publish) and answers once
  /// they are durable per the fsync policy. Items keep their order per
  /// partition.
  virtual void publish(const std::string& topic, std::vector<publish_item> items,
                       callback<std::vector<published>> done)
    = 0;

  virtual void topics(callback<std::vector<topic_view>> done) = 0;

  /// Events of `topic` from `from_offset`; all partitions when none is given.
  virtual void read_events(const std::string& topic, std::optional<std::uint32_t> partition,
                           std::uint64_t from_offset, std::size_t limit, callback<events_page> done)
    = 0;

  /// The stored event with this id (not_found otherwise).
  virtual void get_event(const std::string& id, callback<std::string> done) = 0;

  /// Runs the storage probe and gathers the indicators.
  virtual void health(callback<health_report> done) = 0;

  /// Storage usage and state (reads the data directory).
  virtual void storage(callback<storage_report> done) = 0;

  /// No I/O: true while storage accepts writes and the node is not draining.
  [[nodiscard]] virtual bool healthy_now() const = 0;
  /// Recovered and not draining.
  [[nodiscard]] virtual bool ready() const = 0;

  [[nodiscard]] virtual std::string node_id() const = 0;
  [[nodiscard]] virtual std::string runner_id() const = 0;

  /// Refuses new publishes, answers every queued one, stops the actors and
  /// closes the log. Blocks; call it from outside the actor threads.
  virtual void shutdown() = 0;
};

/// RFC 3339 in UTC with microseconds, as events show their time.
[[nodiscard]] std::string format_time(std::int64_t time_us);

/// A new W3C trace id (32 lowercase hex digits).
[[nodiscard]] std::string new_trace_id();

/// Fault-injection points for tests; production passes none.
struct node_hooks {
  /// Called by a partition actor before each group commit; throwing from it
  /// crashes that actor, as a bug would.
  std::function<void(const std::string& topic, std::uint32_t partition)> before_append;
};

/// Opens the log in `cfg.data_dir`, recovers and starts the runner.
[[nodiscard]] tl::expected<std::unique_ptr<node>, std::string> start_node(const config::config& cfg,
                                                                          node_hooks hooks = {});

} // namespace nerve::actors
