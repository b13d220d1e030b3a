// cluster: what a node's services see of its cluster, without CAF. The
// placement of partitions, which peers are up, and the two requests the
// publish path sends to peers: append on the owner, ask a topic's home for
// its partition count. cluster_actor.cpp implements it over CAF io; a
// single node has none (node_context::cluster is null).
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include <caf/actor.hpp>

#include "actors/node.hpp"
#include "actors/placement.hpp"
#include "persistence/event_log.hpp"

namespace nerve::actors {

/// One member as this node sees it.
struct peer_status {
  std::string id;
  std::string address;
  bool self = false;
  bool up = false;
  std::string detail;              ///< why it is down (the last dial's error), if known
  std::int64_t since_us = 0;       ///< when `up` last changed; 0: never
  std::vector<std::string> agents; ///< the agents it runs, as its hello said (self: ours)
  bool known = false;              ///< `agents` is known (self, or a hello came)
};

/// One partition's events, forwarded to the partition's owner.
struct forward_batch {
  std::uint32_t partition = 0;
  std::vector<persistence::new_event> events;
};

/// Per batch, the events as appended (in batch order).
using forward_answer = std::vector<std::vector<persistence::append_result>>;

class cluster_client {
public:
  virtual ~cluster_client() = default;

  [[nodiscard]] virtual const placement& where() const = 0;

  /// True while a link to member `id` is up (always for this node).
  [[nodiscard]] virtual bool up(const std::string& id) const = 0;

  [[nodiscard]] virtual std::vector<peer_status> peers() const = 0;

  /// The member that takes writes for partition `p` of `topic`: its
  /// placement's owner, or with replication its leader ("" while none).
  [[nodiscard]] virtual std::string owner(const std::string& topic, std::uint32_t p) const = 0;

  /// With replication: where owner() learns each partition's leader.
  virtual void set_leaders(std::function<std::string(const std::string&, std::uint32_t)> leader)
    = 0;

  /// Queues a link frame (messages.hpp, link_op) for member `id`, in order
  /// with the ones before; false while there is no link to it. Thread-safe.
  virtual bool send_data(const std::string& id, std::string frame) = 0;

  /// Appends `batches` of `topic` (`partitions` in all) on `owner`, which
  /// owns each batch's partition; answered after the owner's fsync.
  /// Errors: `unavailable` at once when the link is down; `overloaded` when
  /// the peer's credit window is full; after sending, a lost answer is
  /// `unavailable` "indeterminate: retry with the same id".
  virtual void forward(const std::string& owner, const std::string& topic, std::uint32_t partitions,
                       std::vector<forward_batch> batches, callback<forward_answer> done)
    = 0;

  /// Asks member `id` to answer `req` from its own data.
  virtual void call(const std::string& id, peer_request req, callback<peer_response> done) = 0;

  /// Follows `topic` on every other member that is up: their appends reach
  /// `sink` (on an actor thread). Dropping the handle unsubscribes.
  [[nodiscard]] virtual tail_handle tail(const std::string& topic, tail_sink sink) = 0;

  /// The partition count of `topic`, decided (and the topic created) by its
  /// home node `home`.
  virtual void topic_partitions(const std::string& home, const std::string& topic,
                                callback<std::uint32_t> done)
    = 0;
};

} // namespace nerve::actors
