// What a replay's stored record holds, as planning, history and the replay
// actor all read it: its planned ranges, outcome keys, and events as agents
// receive them. Private to actors/.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace nerve::actors::detail {

/// One partition's share of a window.
struct range {
  std::string topic;
  std::uint32_t topic_id = 0;
  std::uint32_t partition = 0;
  std::uint64_t lo = 0; ///< first offset
  std::uint64_t hi = 0; ///< last offset (inclusive)
};

/// The ranges of one agent's plan.
[[nodiscard]] std::vector<range> ranges_of(const nlohmann::json& plan_agent);

/// An event's string field, or empty.
[[nodiscard]] std::string field_of(const nlohmann::json& e, const char* name);

/// The meta key of one event's outcome under replay `id`.
[[nodiscard]] std::string outcome_key(const std::string& id, const std::string& agent,
                                      std::uint32_t topic_id, std::uint32_t partition,
                                      std::uint64_t offset);

/// The event `text` with `"replay":"<id>"` added, as agents receive it.
[[nodiscard]] std::string marked(const std::string& text, const std::string& id);

/// The id of a stored event.
[[nodiscard]] std::string id_of(const std::string& text);

} // namespace nerve::actors::detail
