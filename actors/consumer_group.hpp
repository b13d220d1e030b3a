// The delivery engine of one agent's consumer group on one partition: cursor,
// read window, ready queue, per-key order, acks in any order, retries with
// backoff, DLQ hand-off and redelivery. No CAF, no storage, no clock: the
// shell passes the time in, feeds events, and carries out the effects.
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <unordered_map>
#include <variant>
#include <vector>

#include "actors/group_event.hpp"
#include "config/config.hpp"
#include "persistence/delivery_store.hpp"

namespace nerve::actors {

/// Whether an event with these fields passes `f`.
[[nodiscard]] bool filter_matches(const config::agent_filter& f, const std::string& type,
                                  const std::string& source, const std::string& key);

/// initial × 2^(attempt−1), capped at `max`, times `jitter` (0.8..1.2 gives
/// the ±20 % every retry uses).
[[nodiscard]] std::chrono::milliseconds backoff_with(std::chrono::milliseconds initial,
                                                     std::chrono::milliseconds max,
                                                     std::uint32_t attempt, double jitter);

/// Where a group delivers: the names its DLQ entries and delivery ids carry.
struct group_identity {
  std::string topic;
  std::uint32_t topic_id = 0;
  std::uint32_t partition = 0;
  /// Between event id and attempt in delivery ids; empty: the agent's name.
  std::string delivery_tag;
  /// Whose DLQ ids the group's dead letters get; empty: the agent's name.
  std::string dlq_owner;
};

/// Hands out delivery slots. The engine does not own credits: the shell's
/// source takes them from wherever they live (a shared pool, messages).
class credit_source {
public:
  virtual ~credit_source() = default;
  /// Takes one slot; answers the instance it is on, or nothing when all are full.
  [[nodiscard]] virtual std::optional<std::size_t> take() = 0;
};

/// A delivery attempt to send.
struct outgoing_delivery {
  std::size_t instance = 0;
  std::uint64_t offset = 0;
  std::uint32_t attempt = 1;
  std::string delivery_id;
  std::string event_id;
  std::shared_ptr<const std::string> event;
};

/// Stores the pending record (it replaces one at the same offset).
using put_pending = persistence::pending_record;
/// Drops the pending record at an offset.
struct delete_pending {
  std::uint64_t offset = 0;
};
/// Keeps what an ack returned.
struct put_result {
  std::string event_id;
  persistence::stored_result result;
};
/// Keeps the attempts of an ack after retries.
struct put_attempts {
  std::uint64_t offset = 0;
  std::uint32_t attempts = 0;
  std::int64_t at_us = 0;
};
/// A dead letter to hand off to the DLQ. The record waits (its key held,
/// the cursor not past it) until the shell calls `dead_lettered`: the DLQ
/// must hold the entry before the cursor moves past the event.
using dlq_handoff = persistence::dlq_entry;

/// One change of delivery state, in the order it must be written.
using state_change
  = std::variant<put_pending, delete_pending, put_result, put_attempts, dlq_handoff>;

/// A retry (or a held-back one) due at `due_us`; the shell calls
/// `consumer_group::retry_due` then.
struct retry_timer {
  std::uint64_t offset = 0;
  std::int64_t due_us = 0;
  std::uint32_t failed_attempt = 0; ///< the attempt that failed; 0: recovered or held back
};

/// What the engine asks the shell to do. The shell clears it once done;
/// reusing one keeps the vectors' memory.
struct group_effects {
  std::vector<outgoing_delivery> deliveries;
  std::vector<state_change> changes;
  std::vector<retry_timer> timers;

  void clear() {
    deliveries.clear();
    changes.clear();
    timers.clear();
  }
};

/// All-time counts the shell adds to its shared counters (see `take_totals`).
struct group_totals {
  std::uint64_t received = 0; ///< attempts handed to the agent
  std::uint64_t processed = 0;
  std::uint64_t failed = 0;
  std::uint64_t timed_out = 0;
  std::uint64_t retried = 0;
  std::uint64_t dead_lettered = 0;
};

/// What a DLQ retry came to.
enum class redeliver_result { queued, busy };

/// One agent's consumer group on one partition.
class consumer_group {
public:
  /// How long a retry that falls due while the agent is paused waits again.
  static constexpr std::int64_t paused_recheck_us = 200'000;
  /// Fewest records a group holds read and not yet passed.
  static constexpr std::size_t min_window = 256;

  consumer_group(const config::agent_config& agent, group_identity where, std::uint64_t seed);

  // -- recovery and reading -----------------------------------------------------

  /// Starts from a stored cursor and the group's pending records (offset
  /// order). `end` is the partition's durable end; `last_delivered` the
  /// offset last sent, -1 if unknown.
  void recover(std::uint64_t cursor, const std::vector<persistence::pending_record>& pending,
               std::uint64_t end, std::int64_t last_delivered, std::int64_t now_us,
               group_effects& fx);
  /// Raises the durable end: offsets below it may be read.
  void set_end(std::uint64_t end);
  /// How many events the group would read from `next_read()` on (0: none).
  [[nodiscard]] std::uint64_t wanted() const;
  /// Takes the next event read (offsets ascending from `next_read()`).
  void feed(const group_event& e);
  /// The events up to the end are gone (retention): nothing to read there.
  void skip_to_end();
  /// The event at `offset` was read and is not for the group (a resumed
  /// replay settled it already): the cursor passes it like a gap.
  void pass(std::uint64_t offset);
  /// Moves the cursor over done records (after feeding).
  void advance(group_effects& fx);
  /// Offsets queued to send whose event the group does not hold (recovered
  /// or redelivered ones); the shell `load`s each before `dispatch`.
  [[nodiscard]] const std::vector<std::uint64_t>& unloaded() const { return unloaded_; }
  /// Gives the event at `offset`, or null when it is gone: then it is done.
  void load(std::uint64_t offset, const group_event* e, group_effects& fx);

  // -- delivery -----------------------------------------------------------------

  /// While paused, nothing is sent and due retries wait.
  void set_paused(bool paused) { paused_ = paused; }
  /// Sends ready records while `credits` gives slots.
  void dispatch(credit_source& credits, group_effects& fx);
  /// Takes attempt `attempt` of `offset` out of flight: its event, or null
  /// when the answer is stale (after a timeout, a requeue or a restart). The
  /// shell then calls `ack`, `fail` or `hold_for_emit`.
  [[nodiscard]] const std::shared_ptr<const std::string>* answer(std::uint64_t offset,
                                                                 std::uint32_t attempt);
  /// The id of attempt `attempt` of the delivery of event `event_id`:
  /// `<event id>:<agent or delivery tag>:<attempt>`.
  [[nodiscard]] std::string delivery_id(const std::string& event_id, std::uint32_t attempt) const;
  /// The agent handled `offset`; `result` is JSON text or empty. Answers the
  /// latency from append to ack for an event delivered live.
  std::optional<std::int64_t> ack(std::uint64_t offset, const std::string& result,
                                  std::int64_t now_us, group_effects& fx);
  /// The attempt failed: retry later, or hand off to the DLQ after max_retries.
  void fail(std::uint64_t offset, const std::string& error, bool timed_out, std::int64_t now_us,
            group_effects& fx);
  /// The answer's follow-up events are being published: ack or fail comes
  /// after `emitted`.
  void hold_for_emit(std::uint64_t offset);
  /// Whether `offset` still waits for the follow-ups of attempt `attempt`.
  [[nodiscard]] bool emitted(std::uint64_t offset, std::uint32_t attempt) const;
  /// The DLQ stored the dead letter of attempt `attempt` of `offset`: the
  /// delivery is done. Answers false for a stale confirmation.
  bool dead_lettered(std::uint64_t offset, std::uint32_t attempt, group_effects& fx);
  /// A retry timer fired. Answers whether the record is ready to send.
  bool retry_due(std::uint64_t offset, std::int64_t now_us, group_effects& fx);
  /// An instance died: its deliveries in flight are sent again first.
  void requeue(std::size_t instance);
  /// A DLQ retry: delivers `offset` again (below the cursor as a redelivery).
  redeliver_result redeliver(std::uint64_t offset, group_effects& fx);

  // -- what others may read -----------------------------------------------------

  [[nodiscard]] std::uint64_t cursor() const { return cursor_; }
  [[nodiscard]] std::uint64_t next_read() const { return next_read_; }
  [[nodiscard]] std::uint64_t end() const { return end_; }
  /// The cursor if it moved since the last call (to be stored), else nothing.
  [[nodiscard]] std::optional<std::uint64_t> take_cursor();
  /// Whether acks made out of order wait to be stored (`stage_acks`).
  [[nodiscard]] bool holds_acks() const { return !held_acks_.empty(); }
  /// Stages the records of the acks made out of order that the cursor has
  /// not passed yet. They are progress, like the cursor: held back until the
  /// shell commits progress, most are passed by then and never written (a
  /// record and its delete per event were a drain's main write); one lost
  /// in a crash delivers its event again, as at-least-once allows.
  void stage_acks(group_effects& fx);
  /// The counts since the last call.
  [[nodiscard]] group_totals take_totals();
  [[nodiscard]] std::uint64_t in_flight() const { return in_flight_; }
  /// Deliveries in flight on one instance.
  [[nodiscard]] std::uint32_t in_flight_on(std::size_t instance) const {
    return in_flight_by_instance_.at(instance);
  }
  [[nodiscard]] std::uint64_t waiting_retry() const { return waiting_retry_; }
  [[nodiscard]] std::uint64_t redelivering() const { return redelivering_; }
  [[nodiscard]] std::int64_t last_delivered() const { return last_delivered_; }
  [[nodiscard]] std::size_t window() const { return window_; }
  /// The last error of a record not yet passed; empty if none.
  [[nodiscard]] std::string last_error(std::uint64_t offset) const;
  /// The event id of a record not yet passed; empty if none.
  [[nodiscard]] std::string event_id(std::uint64_t offset) const;
  [[nodiscard]] const config::agent_config& agent() const { return agent_; }

private:
  enum class rec_state { ready, in_flight, answered, retry_wait, emitting, dead_lettering, done };

  struct record {
    rec_state state = rec_state::ready;
    std::uint32_t attempts = 0;
    std::shared_ptr<const std::string> event;
    std::string event_id;
    std::string key;
    std::int64_t appended_us = 0; ///< 0: not delivered live, not measured
    std::size_t instance = 0;
    std::int64_t first_failed_us = 0;
    std::int64_t last_failed_us = 0;
    std::string last_error;
    bool below_cursor = false; ///< a DLQ retry of an offset the cursor passed
    bool persisted = false;    ///< a pending record exists in the log
    bool loaded = false;       ///< event, id and key are known
  };

  [[nodiscard]] const record* find(std::uint64_t offset) const;
  record* find(std::uint64_t offset);
  void take_event(record& r, const group_event& e);
  void make_ready(std::uint64_t offset, record& r, bool front = false);
  void finish(std::uint64_t offset, record& r, group_effects& fx);
  void hold_key(const record& r, std::uint64_t offset);
  void release_key(const record& r, std::uint64_t offset);
  [[nodiscard]] bool key_free(const record& r, std::uint64_t offset) const;
  void send(std::uint64_t offset, record& r, std::size_t instance, group_effects& fx);
  void dead_letter_of(std::uint64_t offset, const record& r, group_effects& fx);

  config::agent_config agent_;
  group_identity where_;
  bool ordered_ = false;
  bool filtered_ = false;
  std::size_t window_ = min_window;
  std::mt19937_64 rng_;
  bool paused_ = false;

  std::uint64_t cursor_ = 0;
  std::uint64_t next_read_ = 0;
  std::uint64_t end_ = 0;
  bool cursor_moved_ = false;
  std::map<std::uint64_t, record> recs_;         ///< offsets >= cursor, read and not passed
  std::map<std::uint64_t, record> redeliveries_; ///< offsets < cursor
  std::deque<std::uint64_t> ready_;
  std::deque<std::uint64_t> held_; ///< scratch of `dispatch`: ready, key busy
  std::vector<std::uint64_t> unloaded_;
  std::vector<std::uint64_t> held_acks_; ///< done out of order, not staged (stage_acks)
  /// Ordered groups: the offset holding each key (in flight or waiting to retry).
  std::unordered_map<std::string, std::uint64_t> busy_keys_;
  /// Recovered retries that found their key held, in offset order: each gets
  /// it next, before any later event of the key.
  std::unordered_map<std::string, std::deque<std::uint64_t>> key_waiters_;
  std::vector<std::uint32_t> in_flight_by_instance_;

  group_totals totals_;
  std::uint64_t in_flight_ = 0;
  std::uint64_t waiting_retry_ = 0;
  std::uint64_t redelivering_ = 0;
  std::int64_t last_delivered_ = -1;
};

} // namespace nerve::actors
