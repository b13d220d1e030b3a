// Key encodings of the event log's column families. Integers are big-endian
// so that RocksDB's bytewise order is numeric order.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace nerve::persistence::keys {

void put_u32(std::string& out, std::uint32_t v);
void put_u64(std::string& out, std::uint64_t v);
[[nodiscard]] std::uint32_t get_u32(std::string_view in, std::size_t at);
[[nodiscard]] std::uint64_t get_u64(std::string_view in, std::size_t at);

/// events: topic id · partition · offset (16 bytes).
[[nodiscard]] std::string event_key(std::uint32_t topic_id, std::uint32_t partition,
                                    std::uint64_t offset);
/// The 8-byte prefix shared by every event of one partition.
[[nodiscard]] std::string partition_prefix(std::uint32_t topic_id, std::uint32_t partition);

/// by_time: append time in microseconds · topic id · partition · offset (24 bytes).
[[nodiscard]] std::string time_key(std::int64_t time_us, std::uint32_t topic_id,
                                   std::uint32_t partition, std::uint64_t offset);

/// by_id value: topic id · partition · offset · time (24 bytes).
[[nodiscard]] std::string id_value(std::uint32_t topic_id, std::uint32_t partition,
                                   std::uint64_t offset, std::int64_t time_us);

} // namespace nerve::persistence::keys
