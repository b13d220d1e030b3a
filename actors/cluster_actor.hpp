// cluster_actor: a node's links to its peers over CAF io. One actor per
// node keeps one link per peer: it dials the members whose id sorts after
// its own (the others dial it), exchanges a `hello` (persistent node id,
// wire version, member-list digest), watches the link (CAF heartbeats) and
// dials again with backoff when it drops. Sockets and TLS are the cluster
// gate's (cluster_gate.hpp): CAF's BASP broker gets each link the gate
// accepts or dials as a socketpair. It answers peers' forwards by
// appending on this node's partitions. The only translation unit that
// includes CAF io.
#pragma once

#include <functional>
#include <memory>
#include <string>

#include <caf/actor.hpp>
#include <caf/fwd.hpp>

#include "actors/cluster.hpp"
#include "config/config.hpp"

namespace nerve::actors {

class repl_sessions;

/// What the cluster actor asks of its node.
struct cluster_ops {
  /// A peer's forward: append on this node's partitions.
  std::function<void(const std::string& topic, std::uint32_t partitions,
                     std::vector<forward_batch> batches, callback<forward_answer> done)>
    append;
  /// The partition count of a topic whose home is this node, creating it.
  std::function<void(const std::string& topic, callback<std::uint32_t> done)> home_topic;
  /// A peer's API request, answered from this node's own data.
  peer_handler api;
  /// Follows this node's appends to a topic (node::tail).
  std::function<tail_handle(const std::string& topic, tail_sink sink)> tail;
  /// The actor of a local partition (a partition_actor), for a follower's fetch.
  std::function<caf::actor(const std::string& topic, std::uint32_t p)> partition;
  /// The node's fetch sessions (with replication; else null).
  std::shared_ptr<repl_sessions> sessions;
};

/// The cluster as the node's services use it, and its lifecycle.
class cluster_service : public cluster_client {
public:
  /// Stops the actor: links close, peers see this node go down.
  virtual void stop() = 0;
};

/// Loads CAF's io module with heartbeats on, before the actor system is
/// built. Only for a cluster.
void configure_cluster(caf::actor_system_config& cfg, const config::config& c);

/// Opens the cluster gate on cluster.listen (with cluster.tls) and spawns
/// the cluster actor behind it. Error: why the port or a TLS file cannot be
/// used.
tl::expected<std::unique_ptr<cluster_service>, std::string>
start_cluster(caf::actor_system& sys, const config::config& cfg, cluster_ops ops);

} // namespace nerve::actors
