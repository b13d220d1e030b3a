// Identifiers nerve generates: UUIDv7 event ids, W3C trace ids, node ids.
#pragma once

#include <cstdint>
#include <string>

namespace nerve::persistence {

/// A UUIDv7 (RFC 9562): 48 bits of Unix milliseconds, then random bits, so
/// ids generated later sort later.
[[nodiscard]] std::string new_uuid_v7(std::int64_t time_us);

/// 32 lowercase hex digits, not all zero (W3C trace-context trace-id).
[[nodiscard]] std::string new_trace_id();

/// "node-" and 12 hex digits.
[[nodiscard]] std::string new_node_id();

} // namespace nerve::persistence
