// The DLQ actor: one per node, the only writer of dead-letter state and the
// owner of its counts. Consumer groups hand it dead letters; the admin API
// lists, retries, deletes and purges through it, a page at a time.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <string>

#include <caf/fwd.hpp>
#include <caf/typed_actor.hpp>

#include "actors/messages.hpp"

namespace nerve::persistence {
class event_log;
class delivery_store;
struct dlq_entry;
} // namespace nerve::persistence

namespace nerve::actors {

/// The DLQ actor's interface. Every operation that changes an entry answers
/// once the change is as durable as the node's fsync policy makes publishes.
using dlq_actor = caf::typed_actor<
  /// Stores a dead letter; true when it is a new entry (the same delivery
  /// dead-lettered again keeps one entry and one count).
  caf::replies_to<dlq_put_atom, dead_letter>::with<bool>,
  caf::replies_to<dlq_list_atom, dlq_query>::with<dead_letter_page>,
  caf::replies_to<dlq_get_atom, std::string>::with<dead_letter>,
  /// Hands the entry back to its partition; deletes it once the partition
  /// has queued the delivery.
  caf::replies_to<dlq_retry_atom, std::string>::with<dead_letter>,
  /// Retries every entry the query's names match; answers how many went back.
  caf::replies_to<dlq_retry_all_atom, dlq_query>::with<std::uint64_t>,
  caf::replies_to<dlq_delete_atom, std::string>::with<dead_letter>,
  /// Deletes every entry of an agent (all agents when empty); answers how many.
  caf::replies_to<dlq_purge_atom, std::string>::with<std::uint64_t>,
  caf::replies_to<dlq_count_atom>::with<std::uint64_t>,
  /// Internal: the next page of a long operation.
  caf::reacts_to<dlq_step_atom, std::uint64_t>,
  /// Internal: the sync covering operation `token`'s write finished.
  caf::reacts_to<dlq_synced_atom, std::uint64_t, std::string>,
  /// A partition committed a DLQ entry (a dead letter, or a copy its leader
  /// shipped) / the delete of entry `id`: the actor counts what is stored.
  caf::reacts_to<dlq_noted_atom, dead_letter>, caf::reacts_to<dlq_noted_atom, std::string>,
  /// Internal: the entry count of the partitions this node leads, again.
  caf::reacts_to<tick_atom>>;

/// A stored DLQ entry as the protocol carries it, and back.
[[nodiscard]] dead_letter letter_of(const persistence::dlq_entry& e);
[[nodiscard]] persistence::dlq_entry entry_of(const dead_letter& d);

/// Finds the current actor of a partition; an invalid handle when the topic
/// is not open here or the partition is restarting. A partition answers
/// `(redeliver_atom, agent, offset, dlq_id)` with an empty string once the
/// delivery is queued and its pending record written, or with why not.
using partition_finder = std::function<caf::actor(const std::string& topic, std::uint32_t p)>;

/// Who writes a partition's delivery state, DLQ entries included.
struct dlq_lead {
  bool here = true;   ///< this node: it leads the partition, or it is not replicated
  std::string leader; ///< else the node that leads it; empty: none now (an election)
};

/// What the DLQ actor works with; all of it outlives the actor.
struct dlq_deps {
  persistence::event_log* log = nullptr;
  persistence::delivery_store* store = nullptr;
  partition_finder find_partition;
  /// Set when partitions are replicated (cluster step 2): every copy of a
  /// partition stores its entries, and a node lists, counts, retries and
  /// deletes those of the partitions it leads, through their actors, so the
  /// followers get the changes. Unset: this node writes every entry it has.
  std::function<dlq_lead(const std::string& topic, std::uint32_t p)> lead_of;
  /// The entry count, for readers that must not wait for an actor (health,
  /// /metrics). Only the DLQ actor writes it.
  std::atomic<std::uint64_t>* size_gauge = nullptr;
  /// Set once the stored entries are counted (the node is ready after).
  std::atomic<bool>* counted = nullptr;
  /// How long a partition has to answer a redelivery.
  std::chrono::milliseconds redeliver_timeout{10000};
  /// Entries read per step of a long operation (list pages are the caller's).
  std::uint32_t page_entries = 256;
};

/// Asks the DLQ actor from outside the actors (the node's services): every
/// call returns at once and `done` runs on an actor thread, with the answer
/// or the error (`unavailable` while the DLQ actor restarts or is slow).
class dlq_client {
public:
  /// `current` answers the DLQ actor now running (invalid while it restarts).
  dlq_client(caf::actor_system& sys, std::function<caf::actor()> current);

  void list(const dlq_query& q, callback<dead_letter_page> done);
  void get(const std::string& id, callback<dead_letter> done);
  void retry(const std::string& id, callback<dead_letter> done);
  void retry_all(const dlq_query& q, callback<std::uint64_t> done);
  void remove(const std::string& id, callback<dead_letter> done);
  void purge(const std::string& agent, callback<std::uint64_t> done);

private:
  template <class R, class... Ts>
  void ask(std::chrono::milliseconds timeout, callback<R> done, Ts... xs);

  caf::actor_system& sys_;
  std::function<caf::actor()> current_;
};

/// Spawns the DLQ actor on the scheduler (it never waits for a sync); its
/// state is rebuilt from the store on start.
[[nodiscard]] dlq_actor spawn_dlq(caf::actor_system& sys, dlq_deps deps);
/// The same, as a monitored child of `parent` (the runner supervises it).
[[nodiscard]] dlq_actor spawn_dlq(caf::local_actor* parent, dlq_deps deps);

} // namespace nerve::actors
