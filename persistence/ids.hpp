// Identifiers nerve generates: UUIDv7 event ids, W3C trace ids, node ids.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace nerve::persistence {

/// A UUIDv7 (RFC 9562): 48 bits of Unix milliseconds, then random bits, so
/// ids generated later sort later.
[[nodiscard]] std::string new_uuid_v7(std::int64_t time_us);

/// Where a located event id says its event is stored.
struct id_location {
  std::uint32_t topic_id = 0;
  std::uint32_t partition = 0;
  std::uint64_t offset = 0;
};

/// Whether located_uuid_v7() gives an id for this place (it fits the bits).
[[nodiscard]] bool place_fits_id(std::uint32_t topic_id, std::uint32_t partition,
                                 std::uint64_t offset);

/// The id nerve gives an event it appends without one: a UUIDv7 whose 48
/// time bits are the append time's milliseconds and whose 74 other bits,
/// instead of random ones, say where the event is stored (a 4-bit tag, the
/// topic id in 18 bits, the partition in 10, the offset in 42). Unique
/// because the place is, and found without an index. Nothing when the place
/// does not fit (topic id >= 2^18, partition >= 2^10, offset >= 2^42): the
/// caller then uses new_uuid_v7() and indexes it.
[[nodiscard]] std::optional<std::string> located_uuid_v7(std::int64_t time_us,
                                                         std::uint32_t topic_id,
                                                         std::uint32_t partition,
                                                         std::uint64_t offset);

/// The place a located id names, for any id of that shape (lowercase, the
/// tag set). Any publisher may send such an id: a reader checks that the
/// event stored there has this id before trusting it.
[[nodiscard]] std::optional<id_location> locate_id(std::string_view id);

/// 32 lowercase hex digits, not all zero (W3C trace-context trace-id).
[[nodiscard]] std::string new_trace_id();

/// Appends a new trace id (as new_trace_id()) to `out`, without a string of
/// its own: the one-pass publish parse makes one per event.
void append_new_trace_id(std::string& out);

/// "node-" and 12 hex digits.
[[nodiscard]] std::string new_node_id();

} // namespace nerve::persistence
