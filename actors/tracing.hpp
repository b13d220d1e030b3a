// OTLP trace export (issue 17; docs/operations.md, "Traces"): spans of
// publishes, delivery attempts and replays, sent in batches as OTLP/HTTP JSON
// by one exporter thread. Recording never blocks: a full queue drops the
// span and counts it.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

#include "config/config.hpp"

namespace nerve::actors {

struct publish_item;
struct published;

/// OTLP span kinds (the protocol's enum values).
enum class span_kind : std::uint8_t {
  internal = 1,
  server = 2,
  client = 3,
  producer = 4,
  consumer = 5
};

using attribute_value = std::variant<std::string, std::int64_t, bool>;

struct span {
  std::string trace_id;        ///< 32 lowercase hex digits
  std::uint64_t span_id = 0;   ///< never 0
  std::uint64_t parent_id = 0; ///< 0: a root span
  std::string name;
  span_kind kind = span_kind::internal;
  std::int64_t start_ns = 0; ///< Unix time
  std::int64_t end_ns = 0;
  std::vector<std::pair<std::string, attribute_value>> attributes;
  bool error = false; ///< status ERROR with `message`; else UNSET
  std::string message;
};

/// A W3C trace context (`traceparent: 00-<trace-id>-<parent-id>-<flags>`).
struct trace_context {
  std::string trace_id;
  std::uint64_t parent_id = 0;
  bool sampled = false;
};

/// The traceparent header's value, if `text` is a valid version-00 one (and
/// any later version read as 00, as W3C asks); ids of all zeros are invalid.
[[nodiscard]] std::optional<trace_context> parse_traceparent(std::string_view text);

/// The traceparent nerve sends with a delivery attempt: its span as parent.
[[nodiscard]] std::string traceparent(std::string_view trace_id, std::uint64_t span_id,
                                      bool sampled);

/// A span id derived from `text` (never 0): spans that are linked across
/// components (a publish and its deliveries, a delivery and what it emitted)
/// find each other's ids without storing them.
[[nodiscard]] std::uint64_t span_id_of(std::string_view text);

/// The publish span of event `event_id`.
[[nodiscard]] inline std::uint64_t publish_span_id(std::string_view event_id) {
  return span_id_of(std::string{"publish/"} + std::string{event_id});
}

/// The span of delivery attempt `delivery_id` (`<event id>:<tag>:<attempt>`).
[[nodiscard]] inline std::uint64_t delivery_span_id(std::string_view delivery_id) {
  return span_id_of(std::string{"deliver/"} + std::string{delivery_id});
}

/// The `trace_id` member of a stored event or of a publish item's fragment
/// (the first one: it comes before `headers` and `data`, and no string value
/// can hold an unescaped quote); empty if there is none.
[[nodiscard]] std::string_view find_trace_id(std::string_view json_text);

/// Nanoseconds since the Unix epoch, now.
[[nodiscard]] std::int64_t unix_ns_now();

/// Export counters, all-time.
struct tracing_stats {
  std::uint64_t recorded = 0; ///< taken into the queue
  std::uint64_t exported = 0; ///< accepted by the collector (2xx)
  std::uint64_t dropped = 0;  ///< the queue was full
  std::uint64_t failed = 0;   ///< in a batch the collector refused or never answered
  std::uint64_t queued = 0;   ///< waiting now
};

class tracer {
public:
  explicit tracer(const config::tracing_config& cfg);
  ~tracer(); ///< exports what is queued (one bounded attempt), then stops
  tracer(const tracer&) = delete;
  tracer& operator=(const tracer&) = delete;

  /// Whether the trace is sampled: a function of its id alone, so a trace's
  /// publish, deliveries and follow-ups are kept or dropped together.
  [[nodiscard]] bool sampled(std::string_view trace_id) const;

  /// Queues `s` for export; never blocks (a full queue drops it).
  void record(span s);

  [[nodiscard]] tracing_stats stats() const;

private:
  struct impl;
  std::unique_ptr<impl> impl_;
};

/// One delivery attempt, as its span tells it.
struct attempt_trace {
  std::string_view event; ///< the stored event (its trace_id is read from it)
  std::string_view event_id;
  std::string_view delivery_id;
  const config::agent_config* agent = nullptr;
  std::size_t instance = 0;
  std::uint32_t attempt = 1;
  std::int64_t start_ns = 0; ///< handed to the agent
  std::int64_t end_ns = 0;   ///< answered (or timed out)
  bool ok = false;
  bool timed_out = false;
  std::string_view error;
};

/// Records the span of a delivery attempt when its event's trace is sampled:
/// a child of the event's publish span.
void record_attempt(tracer& t, const attempt_trace& a);

/// The traceparent a delivery attempt carries to its agent (a process
/// agent's line, an http agent's header, a pull worker's fetch answer): the
/// event's trace, the attempt's span as parent; empty when tracing is off
/// (`t` null) or the event has no trace id.
[[nodiscard]] std::string attempt_traceparent(const tracer* t, std::string_view event_json,
                                              std::string_view delivery_id);

/// What the spans of one publish need from its items, taken before the
/// items are handed over (their ids are known only once appended).
struct publish_trace {
  std::string topic;
  std::int64_t start_ns = 0;
  std::uint64_t parent_id = 0;        ///< a traceparent's span, or the delivery that emitted
  std::string via;                    ///< "http", "resp" or "emit"
  std::vector<std::string> trace_ids; ///< per item; empty where not sampled
};

/// The trace of publishing `items`; null when none of them is sampled (or
/// tracing is off), so an untraced publish costs one check.
[[nodiscard]] std::shared_ptr<publish_trace>
trace_publish(const tracer* t, const std::vector<publish_item>& items, const std::string& topic,
              std::uint64_t parent_id, std::string via, std::int64_t start_ns);

/// Records a span per sampled event of a publish answered with `out` (in the
/// items' order): from `trace->start_ns` to now, the event durable.
void record_publish(tracer& t, const publish_trace& trace, const std::vector<published>& out);

} // namespace nerve::actors
