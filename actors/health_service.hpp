// health_service: how a node is doing. The health report and the storage
// report (both run the storage probe, on the query pool), the I/O-free
// snapshot behind GET /metrics, and the liveness and readiness flags.
#pragma once

#include <atomic>
#include <chrono>
#include <optional>
#include <string>

#include "actors/node.hpp"
#include "actors/node_context.hpp"
#include "actors/query_pool.hpp"
#include "actors/query_service.hpp"

namespace nerve::actors::detail {

/// Durations of the log's disk operations (persistence::options::observe_io).
struct io_latency {
  latency_histogram write;
  latency_histogram sync;

  void observe(persistence::io_op op, std::chrono::nanoseconds d) {
    auto us = std::chrono::duration_cast<std::chrono::microseconds>(d).count();
    (op == persistence::io_op::write ? write : sync).observe(us);
  }
};

/// The node's lifecycle as health sees it; the node sets both.
struct lifecycle_flags {
  std::atomic<bool> ready{false};    ///< recovered
  std::atomic<bool> draining{false}; ///< shutting down
};

class health_service {
public:
  health_service(const node_context& ctx, const io_latency& io, const lifecycle_flags& flags,
                 const query_service& queries, query_pool& pool);

  /// Runs the storage probe and gathers the indicators.
  void health(callback<health_report> done);
  /// Storage usage and state (reads the data directory, runs the probe).
  void storage(callback<storage_report> done);
  /// The counters and gauges of GET /metrics (no I/O).
  [[nodiscard]] metrics_snapshot scrape() const;
  /// No I/O: true while storage accepts writes.
  [[nodiscard]] bool healthy_now() const { return ctx_.log->healthy(); }
  /// Recovered and not draining.
  [[nodiscard]] bool ready() const { return flags_.ready.load() && !flags_.draining.load(); }

private:
  struct probe_outcome {
    bool ok = false;
    std::optional<double> latency_ms;
    std::string error;
  };

  /// A real write/read round trip; blocks on the disk.
  [[nodiscard]] probe_outcome probe_storage() const;
  /// Counts instances by state and partitions by their queues into `r`.
  void count_children(health_report& r) const;

  const node_context& ctx_;
  const io_latency& io_;
  const lifecycle_flags& flags_;
  const query_service& queries_;
  query_pool& pool_;
};

} // namespace nerve::actors::detail
