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
#include "persistence/faults.hpp"

namespace nerve::persistence {
class keyspace;
} // namespace nerve::persistence

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
  /// With not_found from a copy that does not lead the partition the thing
  /// lives in: the node that leads it (problem+json member "leader").
  std::string leader{};
};

class tracer; // actors/tracing.hpp

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
  std::uint32_t partitions = 0; ///< of the topic (Redis entry ids: http/resp_ids.hpp)
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
  bool bus_ok = false;   ///< every partition actor alive, the log takes writes, not draining
  std::string bus_error; ///< why not, when not
  std::uint64_t pending_publishes = 0;
  std::uint64_t partitions = 0;
  std::uint64_t agents_running = 0;    ///< agent instances
  std::uint64_t agents_restarting = 0; ///< waiting to restart after a crash
  std::uint64_t agents_crashed = 0;    ///< stopped unexpectedly, restart not yet scheduled
  std::uint64_t dlq_size = 0;
};

struct instance_view {
  std::size_t id = 0;
  std::string state; ///< starting, running, restarting, crashed, stopped
  int pid = 0;       ///< 0 unless a process agent's child runs
  std::uint32_t restarts = 0;
  std::uint32_t in_flight = 0;
};

struct agent_view {
  std::string name;
  std::string kind;
  std::vector<std::string> topics;
  std::string state; ///< running, restarting, crashed or paused
  std::vector<instance_view> instances;
  std::string config_json; ///< the agent's settings as JSON
};

/// A delivery a pull agent's worker fetched.
struct pulled_delivery {
  std::string delivery; ///< the id to ack or nack
  std::uint32_t attempt = 1;
  std::string event; ///< the stored event JSON
  /// With tracing on: `00-<trace>-<span>-<flags>`, the attempt's span as the
  /// worker's parent (as a process agent's line has it); empty otherwise.
  std::string traceparent;
};

/// A worker's ack (ok) or nack of one delivery it fetched.
struct pull_reply {
  std::string delivery;
  bool ok = true;
  std::string result; ///< JSON text; empty: none
  std::string emit;   ///< JSON array text of follow-up events; empty: none
  std::string error;  ///< of a nack
};

/// A worker's fetch from a pull agent's queue.
struct pull_request {
  std::string consumer;
  std::vector<std::string> topics; ///< only deliveries of these topics; empty: any
  std::uint32_t max = 1;
  std::uint32_t wait_ms = 0; ///< for the first delivery
  bool noack = false;        ///< acked as handed out (XREADGROUP NOACK)

  friend bool operator==(const pull_request& a, const pull_request& b) {
    return a.consumer == b.consumer && a.topics == b.topics && a.max == b.max
           && a.wait_ms == b.wait_ms && a.noack == b.noack;
  }
};

/// Where an event of a topic is: partition and offset.
struct entry_at {
  std::uint32_t partition = 0;
  std::uint64_t offset = 0;

  friend bool operator==(const entry_at& a, const entry_at& b) {
    return a.partition == b.partition && a.offset == b.offset;
  }
};

/// A delivery of a pull agent fetched and not answered: one entry of its
/// pending list as the Redis side shows it.
struct pending_entry {
  std::string delivery_id;
  std::string topic;
  std::uint32_t partition = 0;
  std::uint64_t offset = 0;
  std::int64_t time_us = 0; ///< the event's append time
  std::string consumer;
  std::int64_t idle_ms = 0;  ///< since it was last handed out
  std::uint32_t count = 0;   ///< times handed out: fetches (attempts) and claims
  std::uint32_t attempt = 0; ///< the delivery attempt
  std::string event;         ///< the stored event JSON, when asked for

  friend bool operator==(const pending_entry& a, const pending_entry& b) {
    return a.delivery_id == b.delivery_id && a.topic == b.topic && a.partition == b.partition
           && a.offset == b.offset && a.time_us == b.time_us && a.consumer == b.consumer
           && a.idle_ms == b.idle_ms && a.count == b.count && a.attempt == b.attempt
           && a.event == b.event;
  }
};

/// Pending entries of one topic to hand to `consumer` (XCLAIM), those idle
/// at least `min_idle_ms`; empty `entries`: any, at most `max` (XAUTOCLAIM).
struct claim_request {
  std::string topic;
  std::string consumer;
  std::vector<entry_at> entries;
  std::int64_t min_idle_ms = 0;
  std::uint32_t max = 0;
  bool justid = false; ///< the count does not grow (XCLAIM JUSTID)

  friend bool operator==(const claim_request& a, const claim_request& b) {
    return a.topic == b.topic && a.consumer == b.consumer && a.entries == b.entries
           && a.min_idle_ms == b.min_idle_ms && a.max == b.max && a.justid == b.justid;
  }
};

/// A worker of a pull agent as the queue knows it.
struct consumer_view {
  std::string name;
  std::uint64_t pending = 0;     ///< of the topic asked about
  std::int64_t idle_ms = 0;      ///< since its last fetch, claim or ack
  std::int64_t inactive_ms = -1; ///< since its last fetch that got something; -1: never

  friend bool operator==(const consumer_view& a, const consumer_view& b) {
    return a.name == b.name && a.pending == b.pending && a.idle_ms == b.idle_ms
           && a.inactive_ms == b.inactive_ms;
  }
};

/// One agent's consumer group on one topic.
struct group_view {
  std::string agent;
  std::uint32_t instances = 0;
  std::uint64_t pending = 0; ///< delivered and not answered, or waiting to retry
  std::uint64_t lag = 0;     ///< events not yet passed by the cursor
  std::optional<std::uint64_t> last_delivered_offset; ///< highest, any partition
  struct part {
    std::uint32_t partition = 0;
    std::uint64_t cursor = 0;
    std::uint64_t end = 0;
    std::uint64_t in_flight = 0;
    std::uint64_t waiting_retry = 0;
    std::uint64_t redelivering = 0; ///< DLQ retries queued below the cursor
    std::optional<std::uint64_t> last_delivered;
  };
  std::vector<part> partitions;
};

struct dlq_view {
  std::string id;
  std::string agent;
  std::string topic;
  std::uint32_t partition = 0;
  std::uint64_t offset = 0;
  std::string event; ///< JSON
  std::string error;
  std::uint32_t attempts = 0;
  std::int64_t first_failed_us = 0;
  std::int64_t last_failed_us = 0;
};

struct dlq_page {
  std::uint64_t count = 0; ///< all entries matching the filters
  std::vector<dlq_view> entries;
  std::string next_cursor; ///< empty on the last page
};

/// One agent's handling of one event.
struct delivery_view {
  std::string agent;
  std::string state; ///< acked, pending, retrying, dead_lettered, skipped
  std::uint32_t attempts = 0;
  std::string result; ///< JSON, when acked and kept
  std::string error;
};

struct event_view {
  std::string event; ///< JSON
  std::vector<delivery_view> deliveries;
};

/// A latency distribution in fixed buckets (not cumulative).
struct latency_view {
  std::vector<double> upper_bounds_s; ///< finite bucket bounds, ascending
  std::vector<std::uint64_t> counts;  ///< one per bound, then one beyond the last
  double sum_s = 0;
};

/// All-time counters of one agent on one topic.
struct metrics_row {
  std::string agent;
  std::string topic;
  std::uint64_t received = 0; ///< attempts handed to the agent
  std::uint64_t processed = 0;
  std::uint64_t failed = 0;    ///< failed attempts, timeouts included
  std::uint64_t timed_out = 0; ///< attempts the agent did not answer in time
  std::uint64_t retried = 0;
  std::uint64_t dead_lettered = 0;
  latency_view processing; ///< each answered attempt, in the agent
  double avg_ms = 0;
  double p50_ms = 0;
  double p99_ms = 0;
  double success_rate = 0;    ///< processed / received, in percent
  double delivery_p50_ms = 0; ///< append to ack, events delivered live
  double delivery_p99_ms = 0;
};

struct storage_report {
  std::string path;
  std::uint64_t disk_bytes = 0;
  bool ok = false; ///< writes succeed, and so did the probe
  std::string last_error;
  std::string fsync;
  std::optional<double> write_latency_ms; ///< of the write/read probe, when it succeeded
};

/// Everything GET /metrics exports, read when asked, without I/O. Counters
/// the runtime persists are all-time; the others count since start-up.
struct metrics_snapshot {
  struct topic_row {
    std::string topic;
    std::uint64_t published = 0; ///< events appended and durable, all-time
  };
  struct group_row {
    std::string agent;
    std::string topic;
    std::uint64_t pending = 0; ///< delivered and not answered, or waiting to retry
    std::uint64_t lag = 0;     ///< events not yet passed by the cursor
  };
  struct agent_row {
    std::string agent;
    std::uint64_t restarts = 0; ///< of all its instances, since start-up
  };
  std::vector<topic_row> topics;
  std::vector<metrics_row> deliveries; ///< one per agent and topic
  std::vector<group_row> groups;
  std::vector<agent_row> agents;
  std::uint64_t dlq_entries = 0;
  /// OTLP export counters (tracing on only).
  bool tracing = false;
  std::uint64_t spans_exported = 0, spans_dropped = 0, spans_failed = 0, spans_queued = 0;
  latency_view storage_write; ///< event group commits, since start-up
  latency_view storage_sync;  ///< WAL fsyncs, since start-up
  /// Replication (cluster step 2); empty and zero without it.
  bool replicated = false;
  struct replica_row {
    std::string topic;
    std::uint32_t partition = 0;
    bool leads = false; ///< this node leads it
    std::uint32_t in_sync = 0;
    std::uint32_t replicas = 0;
    std::uint64_t high_watermark = 0;
    std::uint64_t log_end = 0;
    std::vector<std::pair<std::string, std::uint64_t>> follower_lag; ///< when it leads
  };
  std::vector<replica_row> replicas;  ///< the partitions this node holds a copy of
  std::uint64_t leader_elections = 0; ///< won by this node, since start-up
  std::uint64_t etcd_requests = 0;
  std::uint64_t etcd_errors = 0;
  bool etcd_up = false;
  latency_view etcd_latency;
};

/// What to replay: a time window (or a list of event ids), narrowed to
/// topics and agents (empty: all).
struct replay_request {
  std::string id; ///< empty: a new one (a cluster's coordinator gives every member the same)
  std::int64_t from_us = 0;
  std::int64_t to_us = 0;
  std::vector<std::string> event_ids; ///< instead of the window when not empty
  std::vector<std::string> topics;
  std::vector<std::string> agents;
  bool dry_run = false;
};

/// How many events of one topic one agent's history holds.
struct replay_count {
  std::string agent;
  std::string topic;
  std::uint64_t events = 0;
};

struct replay_view {
  std::string id;
  std::string state; ///< running, done, failed, cancelled
  std::string mode;  ///< dry-run or redeliver
  std::int64_t from_us = 0;
  std::int64_t to_us = 0;
  std::vector<std::string> topics;
  std::vector<std::string> agents;
  std::vector<std::string> event_ids;
  std::uint64_t events_total = 0; ///< deliveries in the histories, all agents
  std::uint64_t events_done = 0;
  std::uint64_t acked = 0;
  std::uint64_t failed = 0; ///< failed attempts
  std::uint64_t retried = 0;
  std::uint64_t dead_lettered = 0;
  std::int64_t created_us = 0;
  std::int64_t finished_us = 0; ///< 0 while running
  std::string error;
  std::vector<replay_count> counts;
};

/// One message of an agent's history in a replay window.
struct history_page {
  std::string agent;
  /// The entries as JSON objects joined by commas (a JSON array's inside):
  /// {"event": <the stored event>, "outcome": acked | dead_lettered |
  /// retrying | pending | not_delivered, "attempts": n[, "error": text]
  /// [, "replay": {"outcome", "attempts"[, "error"]}]}. Built where the
  /// page is read, so the HTTP answer splices it in without a second pass.
  std::string entries_json;
  std::size_t count = 0;
  std::string next_cursor; ///< empty on the last page
};

/// A live subscription to a topic's events; dropping it unsubscribes.
using tail_handle = std::shared_ptr<void>;
/// Receives the JSON of events as they become durable, in partition order,
/// from the partition actors' threads: it must not block.
using tail_sink = std::function<void(const std::vector<std::string>& events)>;

/// An API request one node hands another (a cluster-wide read asks every
/// member for its own share).
struct peer_request {
  std::string method;
  std::string path; ///< percent-encoded, as received
  std::string query;
  std::string body;
};

struct peer_response {
  unsigned status = 0;
  std::string content_type;
  std::string body;
};

/// Answers a peer's request from this node's own data.
using peer_handler = std::function<void(peer_request, std::function<void(peer_response)>)>;

/// One cluster member as a node sees it.
struct member_view {
  std::string id;
  std::string address;
  bool self = false;
  bool up = false;
  std::string detail;                  ///< why it is down, when known
  std::int64_t since_us = 0;           ///< when it last came up or went down; 0: never
  std::vector<std::string> partitions; ///< "topic/p" it owns
  std::vector<std::string> agents;     ///< the agents it runs (empty until known)
};

/// One replicated partition as this node sees it (cluster step 2): etcd's
/// record, and this node's copy.
struct replication_view {
  std::string topic;
  std::uint32_t partition = 0;
  std::uint32_t epoch = 0;
  std::string leader; ///< empty: none now
  std::vector<std::string> replicas;
  std::vector<std::string> in_sync;
  std::string role; ///< this node's: leader, follower, none; empty: no copy here
  std::uint64_t high_watermark = 0;
  std::uint64_t log_end = 0;
  struct follower {
    std::string node;
    std::uint64_t synced_end = 0;
    std::int64_t last_fetch_us = 0;
  };
  std::vector<follower> followers; ///< when this node leads

  /// Events `f`'s synced copy is behind this (the leader's) log end.
  [[nodiscard]] std::uint64_t lag_of(const follower& f) const {
    return log_end > f.synced_end ? log_end - f.synced_end : 0;
  }
};

struct cluster_report {
  bool clustered = false;
  bool replicated = false;  ///< partitions have leaders and in-sync copies (step 2)
  bool etcd_up = false;     ///< with replication: etcd answered the last call
  bool lease_alive = false; ///< with replication: this node's lease is kept alive
  std::string node_id;
  std::vector<member_view> members;
  /// What an operator should fix: agents that run on some members only.
  std::vector<std::string> warnings;
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

  /// The stored event with this id and each subscribed agent's handling of it.
  virtual void get_event(const std::string& id, callback<event_view> done) = 0;

  /// Agents and their instances (no I/O).
  [[nodiscard]] virtual std::vector<agent_view> agents() const = 0;
  /// Pull agents: at most `max` deliveries of `agent` for worker `consumer`,
  /// waiting up to `wait` for the first; empty after the wait. Errors:
  /// not_found (no such agent), invalid (not a pull agent).
  virtual void pull_fetch(const std::string& agent, pull_request req,
                          callback<std::vector<pulled_delivery>> done)
    = 0;
  /// Pull agents, what the Redis side needs: the pending entries of a topic
  /// (fetched, not answered), with their events if asked; ...
  virtual void pull_pending(const std::string& agent, const std::string& topic, bool with_events,
                            callback<std::vector<pending_entry>> done)
    = 0;
  /// ... hands pending entries to another consumer (XCLAIM); ...
  virtual void pull_claim(const std::string& agent, claim_request req,
                          callback<std::vector<pending_entry>> done)
    = 0;
  /// ... acks the fetched deliveries of these events of a topic; answers how many; ...
  virtual void pull_ack_at(const std::string& agent, const std::string& topic,
                           std::vector<entry_at> entries, callback<std::uint64_t> done)
    = 0;
  /// ... the consumers with their pending count in `topic`: after creating
  /// consumer `name` (op 1), or before deleting it (op -1, its pending
  /// entries wait to be fetched again), or just listed (op 0).
  virtual void pull_consumers(const std::string& agent, const std::string& topic,
                              const std::string& name, int op,
                              callback<std::vector<consumer_view>> done)
    = 0;
  /// Pull agents: acks and nacks, taken all or none. Answers the delivery
  /// ids that are not fetched and unanswered on this node (unknown, answered
  /// already, or timed out); when there are any, nothing was taken.
  virtual void pull_answer(const std::string& agent, std::vector<pull_reply> replies,
                           callback<std::vector<std::string>> done)
    = 0;

  /// Pauses or resumes delivery to an agent; answers its new view.
  virtual void set_paused(const std::string& agent, bool paused, callback<agent_view> done) = 0;
  /// XGROUP CREATE: consumer group `group` (a pull agent, made when there
  /// is none) reads stream `topic` from its start (`earliest`) or its end;
  /// `mkstream` creates a missing stream (else not_found). Answers false
  /// when the group reads the stream already.
  virtual void create_group(const std::string& group, const std::string& topic, bool earliest,
                            bool mkstream, callback<bool> done)
    = 0;
  /// XGROUP DESTROY: group `group` (made by XGROUP CREATE) stops reading
  /// `topic`; answers false when it does not read it.
  virtual void destroy_group(const std::string& group, const std::string& topic,
                             callback<bool> done)
    = 0;
  /// Counters per agent and topic, filtered when the names are not empty.
  [[nodiscard]] virtual std::vector<metrics_row> metrics(const std::string& topic,
                                                         const std::string& agent) const = 0;
  /// Consumer groups on a topic.
  virtual void groups(const std::string& topic, callback<std::vector<group_view>> done) = 0;

  /// How often the topic's consumer groups progressed (cursor moves, settled
  /// deliveries) since this node started (read it before groups(): what they show is at
  /// least as new); nothing when the topic does not exist.
  [[nodiscard]] virtual std::optional<std::uint64_t>
  group_progress(const std::string& topic) const = 0;

  /// The partition count of `topic` (it never changes), without I/O; nothing
  /// when the topic does not exist here.
  [[nodiscard]] virtual std::optional<std::uint32_t>
  partition_count(const std::string& topic) const = 0;

  /// Calls `then` once group_progress(topic) is no longer `index`, or after
  /// `wait`, or at shutdown: on the calling thread, before this returns, when
  /// the index moved already (or the topic does not exist), else on a thread
  /// of the node's.
  virtual void when_groups_move(const std::string& topic, std::uint64_t index,
                                std::chrono::milliseconds wait, std::function<void()> then)
    = 0;

  virtual void dlq_list(const std::string& agent, const std::string& topic,
                        const std::string& cursor, std::size_t limit, callback<dlq_page> done)
    = 0;
  virtual void dlq_get(const std::string& id, callback<dlq_view> done) = 0;
  /// Delivers a dead-lettered event again to its agent, attempts reset.
  virtual void dlq_retry(const std::string& id, callback<dlq_view> done) = 0;
  /// Retries every entry matching the filters; answers how many.
  virtual void dlq_retry_all(const std::string& agent, const std::string& topic,
                             callback<std::uint64_t> done)
    = 0;
  virtual void dlq_delete(const std::string& id, callback<dlq_view> done) = 0;
  /// Deletes every entry of `agent` (all when empty); answers how many.
  virtual void dlq_purge(const std::string& agent, callback<std::uint64_t> done) = 0;

  /// Plans a replay (selection through the by_time index) and, to redeliver,
  /// starts its replay actor; answers once the plan is stored.
  virtual void replay_create(replay_request req, callback<replay_view> done) = 0;
  virtual void replay_get(const std::string& id, callback<replay_view> done) = 0;
  virtual void replay_list(callback<std::vector<replay_view>> done) = 0;
  /// One page of `agent`'s history in the replay's window, after `cursor`.
  virtual void replay_history(const std::string& id, const std::string& agent,
                              const std::string& cursor, std::size_t limit,
                              callback<history_page> done)
    = 0;
  /// Stops a running replay; answers its view.
  virtual void replay_cancel(const std::string& id, callback<replay_view> done) = 0;

  /// Runs `job` with the node's keyspace (persistence/keyspace.hpp: the
  /// Redis hashes beside the topics) on one of the node's keyspace threads,
  /// where it may block: every keyspace call waits for about one fsync.
  /// The keyspace outlives every job; jobs may run concurrently (a caller
  /// that needs an order runs its next job after the last one answered).
  /// Errors, given at once on the caller's thread: `unavailable` while
  /// shutting down, `overloaded` when too many jobs wait.
  virtual void run_keyspace(callback<persistence::keyspace*> job) = 0;

  /// Follows `topic` (which may not exist yet) from now on.
  [[nodiscard]] virtual tail_handle tail(const std::string& topic, tail_sink sink) = 0;

  /// Runs the storage probe and gathers the indicators.
  virtual void health(callback<health_report> done) = 0;

  /// Storage usage and state (reads the data directory, runs the probe).
  virtual void storage(callback<storage_report> done) = 0;

  /// The trace exporter; null when tracing is off.
  [[nodiscard]] virtual tracer* tracing() const = 0;

  /// The counters and gauges of GET /metrics (no I/O).
  [[nodiscard]] virtual metrics_snapshot scrape() const = 0;

  /// No I/O: true while storage accepts writes and the node is not draining.
  [[nodiscard]] virtual bool healthy_now() const = 0;
  /// Recovered and not draining.
  [[nodiscard]] virtual bool ready() const = 0;

  [[nodiscard]] virtual std::string node_id() const = 0;
  [[nodiscard]] virtual std::string runner_id() const = 0;

  /// The members as this node sees them, with the partitions (of the topics
  /// it knows) each owns; one member, this node, when it runs alone.
  [[nodiscard]] virtual cluster_report cluster() const = 0;

  /// Every replicated partition (empty without replication).
  [[nodiscard]] virtual std::vector<replication_view> replication() const = 0;

  /// The member that owns partition `p` of `topic` (this node alone: itself).
  [[nodiscard]] virtual std::string owner_of(const std::string& topic, std::uint32_t p) const = 0;

  /// The member that decides `topic`'s partition count and always has it.
  [[nodiscard]] virtual std::string home_of(const std::string& topic) const = 0;

  /// Peers' requests go to `h` from now on (before it: 503).
  virtual void serve_peers(peer_handler h) = 0;

  /// Asks member `id` (not this node) to answer `req` from its own data.
  /// Errors: `unavailable` when it is down or does not answer in time.
  virtual void call_peer(const std::string& id, peer_request req, callback<peer_response> done) = 0;

  /// Refuses new publishes, answers every queued one, stops the actors and
  /// closes the log. Blocks; call it from outside the actor threads.
  virtual void shutdown() = 0;
};

/// RFC 3339 in UTC with microseconds, as events show their time.
[[nodiscard]] std::string format_time(std::int64_t time_us);
/// format_time(), appended to `out`.
void append_time(std::string& out, std::int64_t time_us);

/// Arguments put in front of every process agent's command, e.g. the nerve
/// binary's own "__exec-agent" entry, which ties the child's life to nerve's
/// before it runs the command. Empty (the default): the command runs as is.
/// Call before start_node.
void set_agent_launcher(std::vector<std::string> prefix);

/// A new UUIDv7 (replay ids).
[[nodiscard]] std::string new_uuid();

/// A new W3C trace id (32 lowercase hex digits).
[[nodiscard]] std::string new_trace_id();

/// Fault-injection points for tests; production passes none. The only
/// storage types that cross this interface, and only for tests.
struct node_hooks {
  /// Called by a partition actor before each group commit; throwing from it
  /// crashes that actor, as a bug would.
  std::function<void(const std::string& topic, std::uint32_t partition)> before_append;
  /// Called at every named fault point, the storage layer's and child_io in
  /// the process agents (persistence/faults.hpp); it may fail the operation
  /// or cut power (tests/faults/).
  persistence::fault_hook fault;
  /// The file system the log runs on; null: the real one.
  std::shared_ptr<rocksdb::FileSystem> file_system;
};

/// Opens the log in `cfg.data_dir`, recovers and starts the runner.
[[nodiscard]] tl::expected<std::unique_ptr<node>, std::string> start_node(const config::config& cfg,
                                                                          node_hooks hooks = {});

} // namespace nerve::actors
