// Untrusted JSON in: a depth-limited parser and the validation of published
// events into what the node appends.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>
#include <tl/expected.hpp>

#include "actors/node.hpp"

namespace nerve::actors {

/// Nesting deeper than this is refused before it can exhaust the stack.
inline constexpr std::size_t max_json_depth = 64;

/// Parses `text` as one JSON document; the error says where and why.
/// Non-finite numbers (1e999) are refused, so what is stored reads back the same.
[[nodiscard]] tl::expected<nlohmann::json, std::string>
parse_json(std::string_view text, std::size_t max_depth = max_json_depth);

/// True for tokens of [A-Za-z0-9_:-] joined by '.', at most 255 bytes.
[[nodiscard]] bool valid_topic(std::string_view topic);

/// True for 1-128 characters of [A-Za-z0-9] and - _ . : ~ @ + =.
[[nodiscard]] bool valid_event_id(std::string_view id);

/// Validates one event object (the members of CONTRACT section 4 a publisher
/// may set); `where` prefixes error messages.
[[nodiscard]] tl::expected<publish_item, std::string>
event_from_json(const nlohmann::json& e, const std::string& topic, const std::string& where);

/// Turns a publish body (one event object or an array of them) into items.
/// The error names the event index and the field.
[[nodiscard]] tl::expected<std::vector<publish_item>, std::string>
events_from_body(const nlohmann::json& body, const std::string& topic, std::size_t max_events);

/// Why a publish body was refused: not JSON (`json`), or JSON that is not
/// one event or an array of events.
struct body_error {
  bool json = false;
  std::string message;
};

/// parse_json() and events_from_body() in one pass without a DOM: the same
/// items and the same errors (a JSON error first, then the body's shape,
/// then the first invalid event, its fields in name order as the DOM saw
/// them, a repeated member's last value counting), except that `data` is
/// stored as the publisher wrote it (its bytes, not re-serialized; when it
/// has line breaks, the white space between its tokens goes, so that an
/// event stays one line). Events without a `trace_id` get `trace_id` (a
/// request's traceparent), or a new one when it is empty.
[[nodiscard]] tl::expected<std::vector<publish_item>, body_error>
events_from_text(const std::string& text, const std::string& topic, std::size_t max_events,
                 std::size_t max_depth = max_json_depth, std::string_view trace_id = {});

/// A point in time as replays take it: RFC 3339 ("2026-11-22T10:00:00Z",
/// with optional fraction and a Z or +hh:mm offset) or relative to `now_us`
/// ("now", "-15m", "-2h", "-90s", "-1d", "-500ms"). Microseconds since the
/// epoch; the error says what is accepted.
[[nodiscard]] tl::expected<std::int64_t, std::string> parse_time_arg(const std::string& text,
                                                                     std::int64_t now_us);

} // namespace nerve::actors
