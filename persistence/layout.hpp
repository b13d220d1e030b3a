// The on-disk layout of the event log that both its writer (event_log) and
// the read-only reader (read_only_log) rely on: column family names, the
// event value header and the topic records in `meta`. Private to persistence/.
#pragma once

#include <cstddef>
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

/// The topic a meta record describes, or nothing when the record is corrupt.
/// `key` is the whole meta key, prefix included.
[[nodiscard]] std::optional<topic_info> parse_topic_record(std::string_view key,
                                                           std::string_view value);

} // namespace nerve::persistence::layout
