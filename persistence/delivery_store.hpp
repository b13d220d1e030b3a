// Delivery state in the log: consumer-group cursors, pending deliveries,
// results, the dead-letter queue and counter snapshots. Partition actors
// stage changes in a `state_batch` and commit it with their group commit.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <tl/expected.hpp>

#include "persistence/event_log.hpp"

namespace nerve::persistence {

/// A delivery that is not simply "below the cursor and acked".
struct pending_record {
  std::uint64_t offset = 0;
  std::uint32_t attempts = 0;       ///< attempts made so far
  bool acked = false;               ///< acked above the cursor, or redelivered below it
  bool redeliver = false;           ///< below the cursor: a DLQ retry to deliver again
  std::int64_t next_attempt_us = 0; ///< when the next attempt is due
  std::int64_t first_failed_us = 0;
  std::int64_t last_failed_us = 0;
  std::string last_error;
};

/// One dead-lettered delivery.
struct dlq_entry {
  std::string id;
  std::string agent;
  std::string topic;
  std::uint32_t topic_id = 0;
  std::uint32_t partition = 0;
  std::uint64_t offset = 0;
  std::string event_id;
  std::string event; ///< the event JSON, kept even after retention removes it
  std::string error;
  std::uint32_t attempts = 0;
  std::int64_t first_failed_us = 0;
  std::int64_t last_failed_us = 0;
};

/// What an agent's successful handling of an event left behind.
struct stored_result {
  std::string result; ///< JSON text; empty when the agent gave none
  std::int64_t stored_us = 0;
  std::uint32_t attempts = 1; ///< attempts it took
};

/// One change of a state_batch, as a leader ships it to its followers.
struct state_op {
  /// The column family: 0 cursors, 1 pending, 2 results, 3 dlq, 4 meta.
  std::uint8_t family = 0;
  bool del = false; ///< a delete (`value` is empty), else a put
  std::string key;
  std::string value;
};

/// What one shipped op does to the DLQ: `put` holds the entry it stores;
/// without it, the op deletes entry `id`.
struct dlq_change {
  std::string id;
  std::optional<dlq_entry> put;
};

/// The DLQ change of `op`; nothing when it is no DLQ op (or an unreadable one).
[[nodiscard]] std::optional<dlq_change> dlq_change_of(const state_op& op);

/// Changes to delivery state, committed atomically.
class state_batch {
public:
  state_batch();
  ~state_batch();
  state_batch(state_batch&&) noexcept;
  state_batch& operator=(state_batch&&) noexcept;

  void put_cursor(const std::string& agent, std::uint32_t topic_id, std::uint32_t partition,
                  std::uint64_t cursor);
  void put_pending(const std::string& agent, std::uint32_t topic_id, std::uint32_t partition,
                   const pending_record& rec);
  void delete_pending(const std::string& agent, std::uint32_t topic_id, std::uint32_t partition,
                      std::uint64_t offset);
  void put_result(const std::string& event_id, const std::string& agent, const stored_result& r);
  /// Records that a delivery was acked after `attempts` (> 1) attempts. A
  /// delivery acked at its first attempt leaves no record: that is the
  /// common case, and the history reads the exceptions with one range scan.
  void put_attempts(const std::string& agent, std::uint32_t topic_id, std::uint32_t partition,
                    std::uint64_t offset, std::uint32_t attempts, std::int64_t now_us);
  void put_dlq(const dlq_entry& e);
  void delete_dlq(const std::string& id);
  void put_meta(const std::string& key, const std::string& value);

  [[nodiscard]] bool empty() const;
  /// Whether the batch holds only cursor and meta (counter) puts: progress
  /// a crash may lose without losing an event (it is delivered again).
  [[nodiscard]] bool progress_only() const;
  [[nodiscard]] std::size_t count() const;

  /// The staged changes in order, byte for byte what commit() writes.
  [[nodiscard]] std::vector<state_op> ops() const;
  /// A batch of shipped changes, for a follower to commit what its leader
  /// did. errc::invalid when an op names no family, or a meta key of the
  /// log's own records (topics, heads, epochs, node id): shipped state never
  /// writes those.
  [[nodiscard]] static tl::expected<state_batch, error> from_ops(std::vector<state_op> ops);

private:
  friend class delivery_store;
  struct impl;
  std::unique_ptr<impl> impl_;
};

class delivery_store {
public:
  explicit delivery_store(event_log& log) : log_(log) {}

  /// Writes the batch; synced when `sync`.
  [[nodiscard]] tl::expected<void, error> commit(state_batch& batch, bool sync);

  /// `writer.append(events)` with `state`'s changes in the same write: one
  /// write (and memtable batch) where a flush would make two. `state_error`
  /// is set when the changes were not written and are gone (a failed write
  /// that carried them, or a fault injected at before_cursor_commit):
  /// memory is then ahead of the log. When the append fails before it
  /// writes, the changes stay in `state` for the next commit.
  [[nodiscard]] tl::expected<std::vector<append_result>, error>
  append_with_state(partition_writer& writer, const std::vector<new_event>& events,
                    state_batch& state, std::optional<error>& state_error);

  [[nodiscard]] tl::expected<std::optional<std::uint64_t>, error>
  cursor(const std::string& agent, std::uint32_t topic_id, std::uint32_t partition) const;

  /// Every pending record of one agent on one partition, in offset order.
  [[nodiscard]] tl::expected<std::vector<pending_record>, error>
  pending(const std::string& agent, std::uint32_t topic_id, std::uint32_t partition) const;

  /// The pending record of one offset, if any.
  [[nodiscard]] tl::expected<std::optional<pending_record>, error>
  pending_at(const std::string& agent, std::uint32_t topic_id, std::uint32_t partition,
             std::uint64_t offset) const;

  [[nodiscard]] tl::expected<std::optional<stored_result>, error>
  result(const std::string& event_id, const std::string& agent) const;

  /// Attempts of the deliveries in [lo, hi] acked after more than one
  /// attempt (see state_batch::put_attempts), kept for results.ttl:
  /// (offset, attempts) in offset order.
  [[nodiscard]] tl::expected<std::vector<std::pair<std::uint64_t, std::uint32_t>>, error>
  attempts_in(const std::string& agent, std::uint32_t topic_id, std::uint32_t partition,
              std::uint64_t lo, std::uint64_t hi) const;

  [[nodiscard]] tl::expected<std::optional<dlq_entry>, error> dlq_get(const std::string& id) const;

  /// DLQ entries in id order after `after_id`, filtered, at most `limit`.
  [[nodiscard]] tl::expected<std::vector<dlq_entry>, error> dlq_list(const std::string& agent,
                                                                     const std::string& topic,
                                                                     const std::string& after_id,
                                                                     std::size_t limit) const;

  [[nodiscard]] tl::expected<std::uint64_t, error> dlq_count() const;

  [[nodiscard]] tl::expected<std::optional<std::string>, error> meta(const std::string& key) const;

  /// Meta records whose key starts with `prefix`: (key, value).
  [[nodiscard]] tl::expected<std::vector<std::pair<std::string, std::string>>, error>
  meta_prefix(const std::string& prefix) const;

  /// The stored event at these coordinates (JSON).
  [[nodiscard]] tl::expected<std::optional<std::string>, error>
  event_at(std::uint32_t topic_id, std::uint32_t partition, std::uint64_t offset) const;

  /// The DLQ id of one agent's delivery of one event: stable, so dead-lettering
  /// the same delivery twice keeps one entry.
  [[nodiscard]] static std::string dlq_id(const std::string& agent, std::uint32_t topic_id,
                                          std::uint32_t partition, std::uint64_t offset);

private:
  /// The error of a fault injected at before_cursor_commit for the batch's
  /// commit (the batch is then cleared); nothing when none is.
  [[nodiscard]] std::optional<error> injected_fault(state_batch& batch) const;
  /// Puts the batch's changes into `wb` and clears it.
  void stage(state_batch& batch, rocksdb::WriteBatch& wb) const;

  event_log& log_;
};

} // namespace nerve::persistence
