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

#include "persistence/event_log.hpp"

namespace nerve::persistence::layout {

/// Every column family after RocksDB's default one, in the order the writer
/// opens them (event_log's handles follow it).
inline constexpr const char* family_names[]
  = {"events", "by_time", "by_id", "cursors", "pending", "dlq", "results", "meta"};

/// Stored event values start with the append time, then the event JSON.
inline constexpr std::size_t value_header_bytes = 8;

/// meta key prefix of a topic record: "topic/" + name → {"id":..,"partitions":..}.
inline const std::string topic_meta_prefix = "topic/";

/// The id of a stored event from its JSON text, which always starts with
/// {"id":"..."}: read in place, or by nlohmann when it holds an escape.
/// Nothing when the text does not start so (a corrupt event).
[[nodiscard]] std::optional<std::string> stored_id(std::string_view json);

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
/// epoch checkpoints, node id), which shipped delivery state must never
/// write.
[[nodiscard]] bool is_log_record(std::string_view meta_key);

/// The topic a meta record describes, or nothing when the record is corrupt.
/// `key` is the whole meta key, prefix included.
[[nodiscard]] std::optional<topic_info> parse_topic_record(std::string_view key,
                                                           std::string_view value);

} // namespace nerve::persistence::layout
