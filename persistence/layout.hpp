// The on-disk layout of the event log that both its writer (event_log) and
// the read-only reader (read_only_log) rely on: column family names, the
// event value header, the id a stored event starts with, and the log's own
// records in `meta` (topics, heads, leader-epoch checkpoints). Private to
// persistence/.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <rocksdb/options.h>

#include "persistence/event_log.hpp"

namespace nerve::persistence::layout {

/// Every column family after RocksDB's default one, in the order the writer
/// opens them (event_log's handles follow it). `kv` holds the keyspace
/// (keyspace.hpp); a directory made before it gets it at its next open.
inline constexpr const char* family_names[]
  = {"events", "by_time", "by_id", "cursors", "pending", "dlq", "results", "meta", "kv"};

/// Stored event values start with the append time, then the event JSON.
inline constexpr std::size_t value_header_bytes = 8;

/// meta key prefix of a topic record: "topic/" + name → {"id":..,"partitions":..}.
inline const std::string topic_meta_prefix = "topic/";

/// The id of a stored event from its JSON text, which always starts with
/// {"id":"..."}: read in place, or by nlohmann when it holds an escape.
/// Nothing when the text does not start so (a corrupt event).
[[nodiscard]] std::optional<std::string> stored_id(std::string_view json);

/// The data directory format this nerve writes, in meta under "format".
/// 1 (no record): one by_time entry per event (its value the event's id) and
/// one by_id entry per event. 2: by_time entries are runs (below) and by_id
/// holds only ids that do not say where their event is (ids.hpp,
/// locate_id()). 3: as 2, but each partition's events are in a column
/// family of its own (partition_family_name) instead of the shared
/// "events" family, so every flush of a partition lies after all of its
/// stored data and RocksDB moves it down the levels without rewriting
/// (interleaved partitions made each level-0 compaction rewrite most of
/// level 1). A format-1 or -2 directory is migrated when it opens: its
/// events move to their partitions' families, batch by batch, each batch
/// deleting what it copied, and the format becomes 3 when none is left.
/// The "events" family stays, empty (a read-only reader still looks there
/// for a directory it cannot migrate).
inline constexpr int format_version = 3;
inline constexpr const char* format_key = "format";

/// A by_time entry: the events of one partition appended at one time, at
/// offsets [first, last]. Key keys::time_key(time, topic, partition, first);
/// value a flag byte (0: no event of the run has a by_id entry, 1: some may)
/// and `last` (big-endian u64). A format-1 entry (one event; its value the
/// event id, which never starts with a control byte) reads as first == last
/// with that id indexed. Append times never decrease within a partition, so
/// the runs of a window [from, to) hold exactly its events.
struct time_run {
  std::int64_t time_us = 0;
  std::uint32_t topic_id = 0;
  std::uint32_t partition = 0;
  std::uint64_t first = 0;
  std::uint64_t last = 0;
  bool indexed = false;  ///< some of its events may have by_id entries
  std::string legacy_id; ///< a format-1 entry's event id
};
[[nodiscard]] std::string time_run_value(std::uint64_t last, bool indexed);
/// Nothing when the key or value has another shape (corrupt).
[[nodiscard]] std::optional<time_run> parse_time_run(std::string_view key, std::string_view value);
/// Whether the event stored at this place has an id that says so, and
/// therefore no by_id entry.
[[nodiscard]] bool located_at(std::string_view id, std::uint32_t topic_id, std::uint32_t partition,
                              std::uint64_t offset);

/// The column family of one partition's events (format 3):
/// "events." + topic id + "." + partition, in decimal.
[[nodiscard]] std::string partition_family_name(std::uint32_t topic_id, std::uint32_t partition);
/// The topic id and partition of a family with such a name; nothing for any
/// other name.
[[nodiscard]] std::optional<std::pair<std::uint32_t, std::uint32_t>>
parse_partition_family(std::string_view name);
/// The partitions' events families of the database at `path`, in the
/// order RocksDB lists them; none when it holds no database yet. Each must
/// be named to open it.
[[nodiscard]] std::vector<std::string> stored_partition_families(const rocksdb::DBOptions& opts,
                                                                 const std::string& path);

/// meta key of a partition's head (the offset its next event gets):
/// "head/" · topic id · partition (big-endian u32s) → u64. It never goes
/// down, also when retention removed every event, but for
/// partition_writer::truncate_to().
[[nodiscard]] std::string head_key(std::uint32_t topic_id, std::uint32_t partition);

/// meta key prefix of a partition's leader-epoch checkpoint: "epoch/" · topic
/// id · partition; an entry adds the epoch (big-endian u32) and holds the
/// offset the epoch's first event has or gets (u64). A prefix scan reads the
/// entries in epoch order.
[[nodiscard]] std::string epoch_prefix(std::uint32_t topic_id, std::uint32_t partition);
/// A checkpoint entry from its meta key (epoch_prefix, then the epoch) and
/// value (the start offset); none when either has another size.
[[nodiscard]] std::optional<epoch_entry>
parse_epoch_record(std::string_view key, std::string_view value, std::size_t prefix_bytes);
[[nodiscard]] std::string epoch_key(std::uint32_t topic_id, std::uint32_t partition,
                                    std::uint32_t epoch);

/// Whether a meta key is one of the log's own records (topics, heads,
/// epoch checkpoints, node id, format), which shipped delivery state must never
/// write.
[[nodiscard]] bool is_log_record(std::string_view meta_key);

/// The topic a meta record describes, or nothing when the record is corrupt.
/// `key` is the whole meta key, prefix included.
[[nodiscard]] std::optional<topic_info> parse_topic_record(std::string_view key,
                                                           std::string_view value);

} // namespace nerve::persistence::layout
