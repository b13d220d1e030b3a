// The embedded durable log: one RocksDB instance with the column families of
// ARCHITECTURE.md, topics, dense per-partition offsets, idempotent appends by
// event id, reads, retention by age and a storage probe. Knows nothing of CAF.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <shared_mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include <tl/expected.hpp>

#include "config/config.hpp"
#include "persistence/faults.hpp"

namespace rocksdb {
class Status;
class WriteBatch;
class CompactionFilter;
class DB;
class ColumnFamilyHandle;
class Env;
class FileSystem;
} // namespace rocksdb

namespace nerve::persistence {

class wal_gap_filter;

/// What went wrong in the storage layer; only codes a caller can react to.
enum class errc {
  io_error, ///< RocksDB failed to read or write; storage is unhealthy
  conflict, ///< an event id is already used on another topic; a topic's id differs
  invalid,  ///< a caller passed something the log cannot hold
};

struct error {
  errc code;
  std::string message;
};

/// Microseconds since the Unix epoch; injected so tests control time.
using clock_fn = std::function<std::int64_t()>;

/// The wall clock in microseconds.
std::int64_t system_clock_us();

/// Turns RocksDB's perf counters off for the calling thread (once per
/// thread; cheap after that). Its default level counts every key comparison
/// and block read in a thread-local context, reached through
/// `__tls_get_addr` since librocksdb is a shared library; nerve reads none
/// of it. Called by every thread that writes or reads the log in bulk.
void quiet_perf_counters();

/// Disk operations whose durations are reported to `options::observe_io`.
enum class io_op {
  write, ///< one group commit of events (a RocksDB WriteBatch)
  sync,  ///< one WAL fsync
};

/// Receives the duration of each timed disk operation, on the thread that did
/// it; it must be cheap and must not call back into the log.
using io_observer = std::function<void(io_op, std::chrono::nanoseconds)>;

/// RFC 3339 in UTC with microseconds: 2026-11-22T23:59:59.123456Z.
std::string format_time_us(std::int64_t time_us);
/// format_time_us(), appended to `out` (no string of its own).
void append_time_us(std::string& out, std::int64_t time_us);

struct options {
  std::string path;
  config::fsync_policy fsync = config::fsync_policy::always;
  std::chrono::milliseconds fsync_interval{100};
  clock_fn clock = system_clock_us;
  /// The file system RocksDB runs on; null: the real one. Tests pass a
  /// faulty one (tests/faults/faulty_fs.hpp) to fail writes and cut power.
  std::shared_ptr<rocksdb::FileSystem> file_system;
  /// Called at the storage layer's fault points (before_append, before_sync,
  /// before_cursor_commit); empty in production.
  fault_hook on_fault;
  std::string node_id; ///< kept in `meta`; empty: the stored or a new one
  /// Results older than this are dropped by compaction and hidden from reads.
  std::chrono::milliseconds results_ttl{24LL * 3600 * 1000};
  io_observer observe_io; ///< empty: nothing is timed
  /// Live WAL files are kept near this size: past it, RocksDB flushes the
  /// memtables that keep the oldest WAL alive, so that WAL can go. Without a
  /// cap, the small families (cursors, meta) hold every WAL alive up to
  /// RocksDB's default of 4x all write buffers (GBs of redundant disk, and as
  /// much to replay after a crash). Recovery replays the live WAL at about
  /// 4 ms per MiB here, so this cap also bounds a restart after kill -9 to
  /// about half a second (bench/restart).
  std::uint64_t max_wal_bytes = 128ULL << 20;
};

struct topic_info {
  std::string name;
  std::uint32_t id = 0;
  std::uint32_t partitions = 0;
};

struct partition_stats {
  std::uint32_t partition = 0;
  std::uint64_t first_offset = 0; ///< oldest offset still stored
  std::uint64_t next_offset = 0;  ///< offset the next append gets
  std::uint64_t bytes = 0;        ///< approximate
};

/// A stored event with its coordinates, as read back.
struct stored_event {
  std::uint64_t offset = 0;
  std::int64_t time_us = 0;
  std::string json;
};

/// Where an event lives.
struct coords {
  std::uint32_t topic_id = 0;
  std::uint32_t partition = 0;
  std::uint64_t offset = 0;
  std::int64_t time_us = 0;
};

/// An event as a publisher gave it, already validated.
struct new_event {
  std::string id;       ///< empty when `generated`
  std::string key;      ///< may be empty
  std::string fragment; ///< JSON members after the assigned ones: "type":..,"data":..
  std::string type;     ///< also in the fragment; kept for agent filters
  std::string source;
  /// No id from the publisher: the writer gives it one that says where it is
  /// stored (ids.hpp), so no duplicate check and no by_id entry are needed.
  bool generated = false;
};

/// One stored event of a partition as its leader shipped it to a follower.
struct replica_record {
  std::uint64_t offset = 0;
  std::int64_t time_us = 0; ///< the leader's append time
  std::string id;
  std::string json; ///< the stored event text as readers get it (no value header)
};

/// One entry of a partition's leader-epoch checkpoint: the events from
/// `start_offset` on (up to the next entry's start) were appended by the
/// leader of `epoch`. Epochs start at 1; 0 means "no epoch".
struct epoch_entry {
  std::uint32_t epoch = 0;
  std::uint64_t start_offset = 0;

  friend bool operator==(const epoch_entry& a, const epoch_entry& b) {
    return a.epoch == b.epoch && a.start_offset == b.start_offset;
  }
};

enum class append_status { appended, duplicate, conflict };

struct append_result {
  append_status status = append_status::appended;
  std::string id;
  coords where;
  std::string topic; ///< the topic the id lives on (differs on conflict)
  std::string json;  ///< appended: the stored event text, as readers get it (empty when
                     ///< the lane staged it without: partition_writer::stage_append)
};

class event_log;

/// About the bytes a WriteBatch takes for appending `events` (their records,
/// by_id entries and run): sized up front, a batch grown by appends was
/// reallocated and copied several times per group commit.
[[nodiscard]] std::size_t batch_bytes(const std::vector<new_event>& events);

/// Appends to one partition. Owned by exactly one partition actor, so offsets
/// are assigned without locks (while the actor lends it to the publish lane,
/// the lane's lock stands in for the actor); the group commit is one
/// WriteBatch, one sync.
/// A replicated partition's writer also keeps its leader-epoch checkpoint
/// (event_log_replica.cpp): the leader appends, a follower apply()s what the
/// leader stored, and a returning replica truncate_to()s the end of its last
/// epoch as the leader's history records it. None of its calls may overlap.
class partition_writer {
public:
  /// Recovers the partition's head and epoch checkpoint: a seek to its last
  /// event and a prefix scan of its few `meta` records.
  partition_writer(event_log& log, topic_info topic, std::uint32_t partition);

  /// Appends `events` in order as one batch; durable per the fsync policy
  /// when this returns. Ids already stored come back as duplicates.
  [[nodiscard]] tl::expected<std::vector<append_result>, error>
  append(const std::vector<new_event>& events);
  /// append(), with `also` adding its own records to the same write batch
  /// (delivery_store::append_with_state): one write for both, all or nothing.
  [[nodiscard]] tl::expected<std::vector<append_result>, error>
  append(const std::vector<new_event>& events,
         const std::function<void(rocksdb::WriteBatch&)>& also);

  /// An append staged into a batch that may hold other partitions' appends
  /// (the publish lane, docs/architecture.md): its offsets are taken and its
  /// records are in the batch, nothing is written yet.
  struct staged {
    std::vector<append_result> results;
    std::vector<std::string> reserved; ///< ids held for this append until settled
    std::uint64_t first_offset = 0;
    std::int64_t time_us = 0;
    std::uint64_t run_first = 0; ///< the by_time run the events joined
    bool run_indexed = false;
  };
  /// Stages `events` into `batch` as append() would write them. The caller
  /// writes the batch (event_log::write_batch) and then settle()s, before
  /// any other call on this writer. `keep_texts` false: the results' `json`
  /// stay empty (nothing reads the stored texts after the write; the data
  /// is then copied once, into the batch).
  [[nodiscard]] tl::expected<staged, error> stage_append(const std::vector<new_event>& events,
                                                         rocksdb::WriteBatch& batch,
                                                         bool keep_texts = true);
  /// Keeps a staged append whose batch was written, or takes it back
  /// (`written` false: its offsets are given again); answers its results.
  std::vector<append_result> settle(staged& s, bool written);

  [[nodiscard]] std::uint64_t next_offset() const { return next_offset_; }

  /// A follower's append: stores the leader's `records`, appended in leader
  /// epoch `epoch`, with their offsets, times, ids and bytes, as one batch
  /// (not synced: wait for event_log::after_durable() as after append()).
  /// The first must have next_offset(), the rest the following offsets, and
  /// times must not decrease (from the last stored one on); `epoch` must be
  /// at least last_epoch(), and a larger one starts a checkpoint entry at
  /// the first record. Otherwise errc::invalid, and nothing is written. Ids
  /// are not checked for duplicates: the leader decided.
  [[nodiscard]] tl::expected<void, error> apply(std::uint32_t epoch,
                                                const std::vector<replica_record>& records);

  /// A new leader's first step: records that `epoch` starts at next_offset(),
  /// synced. A no-op when `epoch` is last_epoch() (a leader resuming after a
  /// restart); errc::invalid when it is 0 or older (an epoch never goes
  /// back: that leadership is stale).
  [[nodiscard]] tl::expected<void, error> begin_epoch(std::uint32_t epoch);

  /// The checkpoint, by ascending epoch (and start offset).
  [[nodiscard]] const std::vector<epoch_entry>& epochs() const { return epochs_; }
  /// The checkpoint's largest epoch; 0 when it is empty.
  [[nodiscard]] std::uint32_t last_epoch() const;

  /// Where epoch `epoch` ends in this replica's history (Kafka's
  /// OffsetsForLeaderEpoch): the largest epoch E <= `epoch` of the
  /// checkpoint, and the start of the entry after E's, or next_offset() when
  /// E is the last. When `epoch` is older than every entry (or there is
  /// none) E is 0: the events before the first entry's start (or all of
  /// them) were appended in no epoch this replica knows, so the answer is
  /// (0, that start or next_offset()).
  [[nodiscard]] std::pair<std::uint32_t, std::uint64_t> end_of_epoch(std::uint32_t epoch) const;

  /// Removes the events from offset `end` on (with their by_time entries,
  /// and their by_id entries where those still point at them) and the
  /// checkpoint entries starting at or after `end`; the head becomes `end`,
  /// also after a restart. Synced. Works down from the newest event in
  /// batches that each leave a shorter but whole partition, so a crash in
  /// between keeps a prefix. With `end` >= next_offset() only checkpoint
  /// entries starting at or after `end` go (epochs without a record).
  [[nodiscard]] tl::expected<void, error> truncate_to(std::uint64_t end);

  /// For a follower whose log ends before the leader's oldest stored event
  /// (retention removed the rest): removes every event and checkpoint entry
  /// of the partition and moves the head up to `offset`, where apply()
  /// continues. Synced. A no-op when `offset` is next_offset(); errc::invalid
  /// when it is lower (that is truncate_to()).
  [[nodiscard]] tl::expected<void, error> reset_to(std::uint64_t offset);

private:
  /// Where a by_time run starts, and whether it has events in by_id.
  struct run_start {
    std::uint64_t first = 0;
    bool indexed = false;
  };

  /// Decides duplicates and assigns offsets under the node-wide id lock, so
  /// two partitions never both append one id; the ids this call reserved go
  /// to `reserved` (released after the write).
  [[nodiscard]] std::optional<error> resolve(const std::vector<new_event>& events, std::int64_t now,
                                             std::vector<append_result>& results,
                                             std::vector<std::string>& reserved);
  /// Puts each appended event into `batch` (and into by_id when its id does
  /// not say where it is) and, with `keep_texts`, its stored text into its
  /// result; answers how many went into by_id.
  std::size_t stage(const std::vector<new_event>& events, std::int64_t now,
                    std::vector<append_result>& results, rocksdb::WriteBatch& batch,
                    bool keep_texts) const;
  /// The error of an injected fault at before_append, if the hook fails it.
  [[nodiscard]] std::optional<error> fault_before_append() const;
  /// Writes `batch`, timed for options::observe_io.
  [[nodiscard]] rocksdb::Status write(rocksdb::WriteBatch& batch, bool sync) const;
  /// Puts the partition's head `next` into `batch` (event_log::stage_head).
  void stage_head(std::uint64_t next, rocksdb::WriteBatch& batch) const;
  /// The append time of the stored event before next_offset(); 0 when it is
  /// gone (retention) or there is none.
  [[nodiscard]] std::int64_t recover_last_time() const;
  /// Reads the checkpoint; it was written only by this class, so a record
  /// it cannot read is an impossible state (and reads never fail quietly).
  void load_epochs();
  /// Deletes the events from `from` on, newest first, and the checkpoint
  /// entries starting at or after `from`; then sets the head to `head`.
  [[nodiscard]] tl::expected<void, error> remove_from(std::uint64_t from, std::uint64_t head);
  /// Where the by_time run of an event appended next at `time_us` starts:
  /// the run of the event before it when that has the same time (runs are
  /// the longest stretches of one append time, whoever wrote them, so a
  /// follower's indexes equal its leader's), else a new one.
  [[nodiscard]] run_start open_run(std::int64_t time_us) const;
  /// Stages the by_time changes of removing the events from `cut` on, which
  /// were appended at `times`: runs from `cut` on go, runs across it end
  /// before it.
  [[nodiscard]] std::optional<error> stage_run_cuts(const std::set<std::int64_t>& times,
                                                    std::uint64_t cut,
                                                    rocksdb::WriteBatch& batch) const;
  /// Stages the deletes of the checkpoint entries starting at or after
  /// `from`; answers how many entries stay (for epochs_.resize once written).
  [[nodiscard]] std::size_t stage_epoch_deletes(rocksdb::WriteBatch& batch,
                                                std::uint64_t from) const;

  event_log& log_;
  topic_info topic_;
  std::uint32_t partition_;
  rocksdb::ColumnFamilyHandle* events_; ///< this partition's events family
  /// What every stored event of the partition says after its id, up to its
  /// offset (`,"topic":"t","partition":p,"offset":`), and its keys' prefix.
  std::string shared_text_, key_prefix_;
  std::uint64_t next_offset_;
  std::int64_t last_time_us_ = 0;
  /// The by_time run holding the event before next_offset_, when known.
  std::optional<run_start> last_run_;
  std::vector<epoch_entry> epochs_; ///< ascending; mirrors meta's "epoch/" records
};

class event_log {
public:
  /// Opens or creates the log; recovery reads `meta` and seeks to each
  /// partition's last key, it never scans the log.
  [[nodiscard]] static tl::expected<std::unique_ptr<event_log>, error> open(const options& opts);

  event_log(const event_log&) = delete;
  event_log& operator=(const event_log&) = delete;
  /// Syncs the WAL and closes the database.
  ~event_log();

  /// Creates a topic, or returns the existing one. With an `id` (a
  /// replicated topic, whose id the cluster assigned) the topic gets exactly
  /// that id, in [1, 2^32 - 2]; errc::conflict when the name has another id
  /// or partition count, or the id another name. Ids this log assigns
  /// itself are always past every id it holds.
  [[nodiscard]] tl::expected<topic_info, error>
  create_topic(const std::string& name, std::uint32_t partitions,
               std::optional<std::uint32_t> id = std::nullopt);
  [[nodiscard]] std::optional<topic_info> find_topic(const std::string& name) const;
  [[nodiscard]] std::vector<topic_info> topics() const;

  [[nodiscard]] partition_stats stats(const topic_info& topic, std::uint32_t partition) const;

  /// Up to `limit` stored events (JSON) of one partition from `from_offset`.
  [[nodiscard]] tl::expected<std::vector<std::string>, error> read(const topic_info& topic,
                                                                   std::uint32_t partition,
                                                                   std::uint64_t from_offset,
                                                                   std::size_t limit) const;

  /// Like read(), with each event's offset and append time from the key and
  /// value header, so callers need not parse the JSON. Stops after `last`.
  [[nodiscard]] tl::expected<std::vector<stored_event>, error>
  read_stored(const topic_info& topic, std::uint32_t partition, std::uint64_t from_offset,
              std::uint64_t last, std::size_t limit) const;

  /// Like read_stored(), without a copy: `fn(offset, time_us, json)` sees
  /// each event's bytes in place, valid only during the call. Answers how
  /// many it visited.
  [[nodiscard]] tl::expected<std::size_t, error>
  visit_stored(const topic_info& topic, std::uint32_t partition, std::uint64_t from_offset,
               std::uint64_t last, std::size_t limit,
               const std::function<void(std::uint64_t, std::int64_t, std::string_view)>& fn) const;

  /// What a leader ships to a follower: the stored events of one partition
  /// from the first at or after `from_offset`, in offset order, at most
  /// `max_events` and, but for the first, at most `max_bytes` of JSON.
  [[nodiscard]] tl::expected<std::vector<replica_record>, error>
  read_records(const topic_info& topic, std::uint32_t partition, std::uint64_t from_offset,
               std::size_t max_events, std::size_t max_bytes) const;

  /// The offsets of one partition appended in [from_us, to_us) as [lo, hi],
  /// or nothing. Append times never decrease within a partition, so this is
  /// a binary search over its stored events: O(log n) reads, whatever the
  /// window's size.
  [[nodiscard]] tl::expected<std::optional<std::pair<std::uint64_t, std::uint64_t>>, error>
  time_span(const topic_info& topic, std::uint32_t partition, std::int64_t from_us,
            std::int64_t to_us) const;

  /// Calls `fn(time_us, topic_id, partition, first, last)` for every run of
  /// events of one partition appended at one time in [from_us, to_us) (the
  /// events at offsets first..last), in by_time order (from the end when
  /// `backward`), reading only the by_time index; stops early when `fn`
  /// returns false. Answers how many runs were visited.
  [[nodiscard]] tl::expected<std::uint64_t, error>
  scan_time(std::int64_t from_us, std::int64_t to_us,
            const std::function<bool(std::int64_t, std::uint32_t, std::uint32_t, std::uint64_t,
                                     std::uint64_t)>& fn,
            bool backward = false) const;

  /// The stored event with this id, if any.
  [[nodiscard]] tl::expected<std::optional<std::string>, error>
  get_by_id(const std::string& id) const;

  /// For each id, the topic it is stored on (nothing when unknown).
  [[nodiscard]] tl::expected<std::vector<std::optional<std::string>>, error>
  topics_of(const std::vector<std::string>& ids) const;

  /// Deletes events appended before `cutoff_us`, at most `max_events` per call;
  /// returns how many were deleted.
  [[nodiscard]] tl::expected<std::size_t, error> sweep_before(std::int64_t cutoff_us,
                                                              std::size_t max_events);

  /// Writes a batch of appends staged for several partitions
  /// (partition_writer::stage_append), unsynced: after_durable() says when
  /// it is durable. A write RocksDB would hold back (a write stall: too many
  /// memtables or level-0 files waiting) is not made and answers false: the
  /// caller, an HTTP thread, must not sleep in it. On false or an error the
  /// caller settles each staged append as not written.
  [[nodiscard]] tl::expected<bool, error> write_batch(rocksdb::WriteBatch& batch);

  /// Runs `done` once a WAL sync that began after this call has finished:
  /// every write completed before the call is then on disk. Concurrent
  /// callers share one fsync (the group commit across partitions).
  /// `paced`: the sync waits for the next start_syncs(), which the pacer
  /// (set_sync_pacer) is asked for, so the writes of one burst of work
  /// share it instead of the first starting one alone; without a pacer it
  /// starts at once.
  void after_durable(std::function<void(std::optional<error>)> done, bool paced = false);

  /// Lets the paced waiters' sync start. Any thread.
  void start_syncs();

  /// Called (on the caller's thread, no lock held) when a paced waiter
  /// needs a start_syncs(). Set before the first paced after_durable().
  void set_sync_pacer(std::function<void()> pacer);

  /// A real write-then-read round trip through the database.
  [[nodiscard]] tl::expected<std::chrono::microseconds, error> probe();

  /// False once a write or the background work of RocksDB failed. No I/O.
  [[nodiscard]] bool healthy() const;
  /// False once a write failed with an I/O error: nothing more can be
  /// appended until resume() succeeds (or the node restarts). No I/O.
  [[nodiscard]] bool writable() const { return !wal_broken_.load(); }
  /// After a failed write (a full disk, say), asks RocksDB to recover: it
  /// flushes every memtable and writes on in a new WAL file. The log takes
  /// writes again only once the WAL that saw the failure is no longer the one
  /// written (a torn record at its end must never be followed by
  /// acknowledged ones). Answers whether the log is writable; no-op when it is.
  bool resume();
  /// Why the log takes no writes while it is not writable(), for answers.
  [[nodiscard]] std::string refusal() const;
  [[nodiscard]] std::string last_error() const;

  [[nodiscard]] std::string node_id() const { return node_id_; }
  [[nodiscard]] const options& opts() const { return opts_; }
  /// Approximate bytes on disk of the whole database.
  [[nodiscard]] std::uint64_t disk_bytes() const;

private:
  friend class partition_writer;
  friend class delivery_store;
  friend class keyspace;

  /// Where the event with this id is stored, when the id says so (ids.hpp)
  /// and the event there has it (its text into `json` when given); nothing
  /// otherwise (look in by_id).
  [[nodiscard]] tl::expected<std::optional<coords>, error>
  stored_at(const std::string& id, std::string* json = nullptr) const;
  explicit event_log(options opts);

  [[nodiscard]] std::optional<error> init_meta();
  /// The column family of one partition's events (layout.hpp, format 3).
  /// For a partition of no known topic, which has none and stores nothing,
  /// the shared "events" family (empty once migrated): reads there find
  /// nothing.
  [[nodiscard]] rocksdb::ColumnFamilyHandle* events_of(std::uint32_t topic_id,
                                                       std::uint32_t partition) const;
  /// Creates the families of `t`'s partitions that do not exist yet.
  [[nodiscard]] std::optional<error> ensure_families(const topic_info& t);
  /// Moves a format-1/2 directory's events from the shared family to their
  /// partitions' (layout.hpp); events of no known topic stay where they are.
  [[nodiscard]] std::optional<error> migrate_events();
  /// visit_stored(), stopping early when `fn` returns false.
  [[nodiscard]] tl::expected<std::size_t, error>
  visit_until(const topic_info& topic, std::uint32_t partition, std::uint64_t from_offset,
              std::uint64_t last, std::size_t limit,
              const std::function<bool(std::uint64_t, std::int64_t, std::string_view)>& fn) const;
  /// create_topic() with an id the cluster assigned; topics_mutex_ is held.
  [[nodiscard]] tl::expected<topic_info, error>
  create_topic_with_id(const std::string& name, std::uint32_t partitions, std::uint32_t id);
  /// Stores a new topic record (synced) and adds the topic; topics_mutex_
  /// is held.
  [[nodiscard]] tl::expected<topic_info, error> add_topic(const topic_info& t);
  [[nodiscard]] std::uint64_t recover_next_offset(std::uint32_t topic_id,
                                                  std::uint32_t partition) const;
  /// Puts a partition's head record, a floor of its next offset, into
  /// `batch`: written by retention and truncation, not by appends.
  void stage_head(std::uint32_t topic_id, std::uint32_t partition, std::uint64_t next,
                  rocksdb::WriteBatch& batch) const;
  void note_error(const std::string& what);
  /// note_error() for a failed write; an I/O error also marks the WAL broken.
  void note_write_error(const std::string& what, const rocksdb::Status& s);
  /// Writes `batch`, timed for options::observe_io; `no_slowdown`: fails
  /// with Status::Incomplete rather than wait out a write stall.
  [[nodiscard]] rocksdb::Status write_timed(rocksdb::WriteBatch& batch, bool sync,
                                            bool no_slowdown = false);
  /// SyncWAL, timed for `observe_io`.
  [[nodiscard]] rocksdb::Status sync_wal();
  void fsync_loop();

  /// Id reservations of appends in flight, so two partitions cannot append
  /// the same id at once.
  [[nodiscard]] std::optional<append_result> reserve_id(const std::string& id,
                                                        const topic_info& topic);
  void release_ids(const std::vector<std::string>& ids);

  /// Asks options::on_fault whether to fail at `p`.
  [[nodiscard]] bool fails_at(fault_point p, const fault_context& where) const {
    return persistence::fails_at(opts_.on_fault, p, where);
  }

  options opts_;
  std::unique_ptr<rocksdb::Env> env_; ///< over options::file_system; outlives db_
  /// Replays WALs up to a gap (wal_files.hpp); outlives db_.
  std::unique_ptr<wal_gap_filter> wal_filter_;
  std::unique_ptr<rocksdb::CompactionFilter> results_filter_; ///< outlives db_
  std::unique_ptr<rocksdb::DB> db_;
  std::vector<rocksdb::ColumnFamilyHandle*> handles_;
  /// The shared events family of formats 1 and 2; empty once migrated.
  rocksdb::ColumnFamilyHandle* events_ = nullptr;
  /// Each partition's events family by topic id (high 32 bits) and
  /// partition; entries are only added (topics are never removed).
  mutable std::shared_mutex families_mutex_;
  std::unordered_map<std::uint64_t, rocksdb::ColumnFamilyHandle*> partition_families_;
  rocksdb::ColumnFamilyHandle* by_time_ = nullptr;
  rocksdb::ColumnFamilyHandle* by_id_ = nullptr;
  rocksdb::ColumnFamilyHandle* meta_ = nullptr;
  rocksdb::ColumnFamilyHandle* cursors_ = nullptr;
  rocksdb::ColumnFamilyHandle* pending_ = nullptr;
  rocksdb::ColumnFamilyHandle* dlq_ = nullptr;
  rocksdb::ColumnFamilyHandle* results_ = nullptr;
  rocksdb::ColumnFamilyHandle* kv_ = nullptr; ///< the keyspace's (keyspace.cpp)

  mutable std::shared_mutex topics_mutex_;
  std::unordered_map<std::string, topic_info> topics_;
  std::unordered_map<std::uint32_t, std::string> topic_names_;
  std::uint32_t next_topic_id_ = 1;

  std::mutex ids_mutex_;
  std::unordered_map<std::string, append_result> reserved_ids_;

  std::atomic<bool> failed_{false};
  /// Set once a write failed with an I/O error: RocksDB then refuses writes,
  /// and syncing a WAL that failed a write aborts inside RocksDB, so no sync
  /// is attempted again until the node restarts.
  std::atomic<bool> wal_broken_{false};
  std::atomic<std::uint64_t> broken_wal_{0}; ///< the WAL being written when a write failed
  std::mutex resume_mutex_;
  mutable std::mutex error_mutex_;
  std::string last_error_;
  std::string node_id_;

  std::mutex fsync_mutex_;
  std::condition_variable fsync_cv_;
  bool stopping_ = false;
  std::thread fsync_thread_;
  std::vector<std::function<void(std::optional<error>)>> durable_waiters_; ///< fsync_mutex_
  bool syncing_ = false; ///< a thread is in a sync round (fsync_mutex_)
  // fsync_mutex_:
  std::function<void()> pacer_;
  bool unpaced_ = false;     ///< a waiter wants a sync at once
  bool start_asked_ = false; ///< the pacer was asked for a start_syncs()
  bool may_start_ = false;   ///< start_syncs() came since the last round began
  /// One sync round: takes the waiters, syncs the WAL without the lock held,
  /// answers them; `guard` holds fsync_mutex_ before and after.
  void sync_round(std::unique_lock<std::mutex>& guard);
  void sync_loop();
};

} // namespace nerve::persistence
