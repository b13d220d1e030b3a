// The stored form of a replay: its replay_record as one JSON document in
// `meta` under "replay/<id>", in the shape nerve has always written (so data
// directories stay readable by this version and the one before), and the
// reads and writes of it. The one place a replay record is JSON in the
// store; the HTTP API's JSON is made from replay_view (http/routes_replay.cpp).
#pragma once

#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "actors/messages.hpp"
#include "actors/node.hpp"
#include "persistence/delivery_store.hpp"

namespace nerve::actors::detail {

/// meta key of a replay's record.
[[nodiscard]] std::string replay_key(const std::string& id);

/// The record as it is stored.
[[nodiscard]] nlohmann::json to_json(const replay_record& r);

/// The record stored as `j`; `storage` naming the first field that is
/// missing or wrong when `j` is not one.
[[nodiscard]] result<replay_record> replay_record_from_json(const nlohmann::json& j);

/// Replay `id` as stored: `not_found` without one, `storage` when it cannot
/// be read or is not a replay record.
[[nodiscard]] result<replay_record> load_replay(const persistence::delivery_store& store,
                                                const std::string& id);

/// Every stored replay, in id order. One that is not a replay record is
/// left out, with an error in the log: the others stay readable.
[[nodiscard]] result<std::vector<replay_record>>
load_replays(const persistence::delivery_store& store);

/// Stores the record, synced to the WAL when `sync`.
[[nodiscard]] std::optional<error> store_replay(persistence::delivery_store& store,
                                                const replay_record& r, bool sync);

} // namespace nerve::actors::detail
