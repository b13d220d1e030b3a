// Replay planning and history reading (replay_planner.cpp,
// replay_history.cpp): what a replay selects, its record, the pages of an
// agent's history, and the plan's pieces the replay actor reads. No actors
// (the record is a value type of the protocol): the replay actor is in
// replay_actor.cpp.
//
// A replay is a replay_record (messages.hpp), stored by replay_storage.hpp;
// its plan holds, per agent, the offset ranges of each partition in the
// window (append time only grows within a partition, so a window is one
// range per partition).
// Outcomes under a replay are records "rout/<id>/<agent>/<topic>/<p>/<offset>".
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>
#include <tl/expected.hpp>

#include "actors/messages.hpp"
#include "actors/node.hpp"
#include "actors/node_context.hpp"

namespace nerve::actors::detail {

/// One partition's share of a window.
struct range {
  std::string topic;
  std::uint32_t topic_id = 0;
  std::uint32_t partition = 0;
  std::uint64_t lo = 0; ///< first offset
  std::uint64_t hi = 0; ///< last offset (inclusive)
};

/// The ranges of one agent's part of a plan.
[[nodiscard]] std::vector<range> ranges_of(const replay_plan& plan);

/// An event's string field, or empty.
[[nodiscard]] std::string field_of(const nlohmann::json& e, const char* name);

/// Whether stored event `e` passes the agent's filter.
[[nodiscard]] bool filter_matches(const config::agent_filter& f, const nlohmann::json& e);

[[nodiscard]] inline bool has_filter(const config::agent_filter& f) {
  return f.type || f.source || f.key;
}

/// meta key of one event's outcome under replay `id`.
[[nodiscard]] std::string outcome_key(const std::string& id, const std::string& agent,
                                      std::uint32_t topic_id, std::uint32_t partition,
                                      std::uint64_t offset);

/// The event `text` with `"replay":"<id>"` added, as agents receive it.
[[nodiscard]] std::string marked(const std::string& text, const std::string& id);

/// The id of a stored event: its JSON starts with {"id":"...", and ids need
/// no escaping.
[[nodiscard]] std::string id_of(const std::string& text);

/// Selects the window through the by_time index and plans each agent's
/// history; answers the replay's record (not yet stored).
[[nodiscard]] result<replay_record> plan_replay(const node_context& ctx, const replay_request& req,
                                                const std::string& id, std::int64_t now_us);

/// The record as the node's API shows it.
[[nodiscard]] replay_view replay_view_of(const replay_record& record);

/// One page of an agent's history in a planned replay.
[[nodiscard]] tl::expected<history_page, error>
replay_history(const node_context& ctx, const replay_record& record, const std::string& agent,
               const std::string& cursor, std::size_t limit);

/// The cursor of the page after the one at `cursor`, when it can be known
/// without reading: the agent has no filter, so every offset of its ranges is
/// one entry. Nothing otherwise, or after the last page. A wrong guess (the
/// log changed since the plan) costs only work: a page is always built for
/// the cursor it is asked for.
[[nodiscard]] std::optional<std::string>
history_cursor_after(const node_context& ctx, const replay_record& record, const std::string& agent,
                     const std::string& cursor, std::size_t limit);

/// How the live consumer group of `agent` handled one event. `storage_ok`
/// turns false when the state could not be read.
[[nodiscard]] delivery_view live_delivery_state(const node_context& ctx, const agent_runtime& agent,
                                                std::uint32_t topic_id, std::uint32_t partition,
                                                std::uint64_t offset, const std::string& event_id,
                                                std::optional<std::uint64_t> cursor,
                                                bool& storage_ok);

} // namespace nerve::actors::detail
