// control_plane: cluster step 2's view of etcd (docs/architecture.md,
// "Clustering"). One thread per node holds the node's lease, watches the
// cluster's keys, creates replicated topics by txn, runs leader elections
// (a compare-and-swap that bumps the epoch) and in-sync set changes, and
// gives each local partition its role (leader, follower, none). Consensus is
// etcd's; this code only reads it and asks it to compare-and-swap.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "actors/control_keys.hpp"
#include "actors/node.hpp"
#include "actors/node_context.hpp"
#include "actors/placement.hpp"
#include "config/config.hpp"

namespace nerve::actors {

/// One replicated partition as etcd holds it.
struct replicated_partition {
  std::string topic;
  std::uint32_t topic_id = 0;
  std::uint32_t partition = 0;
  control::partition_state state;
  std::string leader_key; ///< the node holding the leader key; empty: none
};

/// What the control plane counted, for /metrics and health.
struct control_stats {
  std::atomic<std::uint64_t> etcd_requests{0};
  std::atomic<std::uint64_t> etcd_errors{0};
  std::atomic<std::uint64_t> leader_changes{0}; ///< elections this node won
  detail::latency_histogram etcd_latency;
  std::atomic<bool> etcd_ok{false};  ///< the last etcd call succeeded
  std::atomic<bool> lease_ok{false}; ///< this node's lease is alive (as far as it knows)
  std::atomic<bool> watching{false}; ///< the watch is running
};

class control_plane {
public:
  virtual ~control_plane() = default;

  /// The node leading (topic, p), or "" while none does.
  [[nodiscard]] virtual std::string leader(const std::string& topic, std::uint32_t p) const = 0;

  /// Creates `topic` in etcd with `partitions` (0: as configured) unless it
  /// exists; answers its cluster-wide id and partition count.
  virtual void ensure_topic(const std::string& topic, std::uint32_t partitions,
                            callback<std::pair<std::uint32_t, std::uint32_t>> done)
    = 0;

  /// Asks for (topic, p)'s in-sync set to become `in_sync`, by this node as
  /// the leader of `epoch`.
  virtual void change_in_sync(const std::string& topic, std::uint32_t p, std::uint32_t epoch,
                              std::vector<std::string> in_sync)
    = 0;

  /// Every replicated partition, as last read from etcd.
  [[nodiscard]] virtual std::vector<replicated_partition> partitions() const = 0;

  [[nodiscard]] virtual const control_stats& stats() const = 0;

  /// Revokes the lease (this node's leaderships end at once) and stops.
  virtual void stop() = 0;
};

/// What the control plane needs of its node.
struct control_deps {
  detail::node_context* ctx = nullptr;
  const config::config* cfg = nullptr;
  placement where;
  /// The data directory was empty at start-up (a new node, or a lost disk):
  /// this node's copies of partitions that already had a leader are not
  /// electable until they caught up once, whatever their in-sync set says.
  bool fresh = false;
  /// Creates a topic on this node with the cluster's id (through the runner).
  std::function<void(detail::create_ptr)> create_local;
};

/// Starts the control plane's thread; it connects to etcd in the background
/// (until it does, no partition has a role here, and publishes get 503).
[[nodiscard]] std::unique_ptr<control_plane> start_control_plane(control_deps deps);

} // namespace nerve::actors
