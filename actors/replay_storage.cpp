// A replay_record to and from its stored JSON, and its reads and writes in
// `meta`. Stored JSON is read without exceptions: a record that is not one
// is an error naming the field, never a crash.
#include "actors/replay_storage.hpp"

#include <limits>
#include <utility>

#include <spdlog/spdlog.h>

#include "actors/node_context.hpp"

namespace nerve::actors::detail {

namespace {

using json = nlohmann::json;

const std::string replay_prefix = "replay/";

/// Reads the fields of a stored record; remembers the first one that is
/// missing or of the wrong type, by its path ("plan[0].ranges[1]").
class field_reader {
public:
  [[nodiscard]] const std::string& failed() const { return failed_; }

  void fail(const std::string& path, const std::string& what) {
    if (failed_.empty())
      failed_ = path + " " + what;
  }

  /// Member `key` of object `obj` at `path`, or nothing (and a failure).
  const json* member(const json& obj, const std::string& path, const char* key) {
    auto it = obj.find(key);
    if (it != obj.end())
      return &*it;
    fail(path + key, "is missing");
    return nullptr;
  }

  template <class T>
  void field(const json& obj, const std::string& path, const char* key, T& out) {
    if (auto* j = member(obj, path, key))
      read(*j, path + key, out);
  }

  void read(const json& j, const std::string& path, std::string& out) {
    if (j.is_string())
      out = j.get<std::string>();
    else
      fail(path, "must be a string");
  }

  void read(const json& j, const std::string& path, bool& out) {
    if (j.is_boolean())
      out = j.get<bool>();
    else
      fail(path, "must be true or false");
  }

  void read(const json& j, const std::string& path, std::uint64_t& out) {
    // Parsed, a number >= 0 is unsigned; built in memory it may be signed.
    if (j.is_number_unsigned() || (j.is_number_integer() && j.get<std::int64_t>() >= 0))
      out = j.get<std::uint64_t>();
    else
      fail(path, "must be a whole number >= 0");
  }

  void read(const json& j, const std::string& path, std::uint32_t& out) {
    std::uint64_t wide = 0;
    read(j, path, wide);
    if (wide > std::numeric_limits<std::uint32_t>::max())
      fail(path, "must be below 2^32");
    out = static_cast<std::uint32_t>(wide);
  }

  void read(const json& j, const std::string& path, std::int64_t& out) {
    if (j.is_number_integer()
        && (!j.is_number_unsigned()
            || j.get<std::uint64_t>()
                 <= static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max())))
      out = j.get<std::int64_t>();
    else
      fail(path, "must be a whole number of microseconds");
  }

  void read(const json& j, const std::string& path, std::vector<std::string>& out) {
    if (!j.is_array())
      return fail(path, "must be an array of strings");
    out.resize(j.size());
    for (std::size_t i = 0; i < j.size(); ++i)
      read(j[i], path + "[" + std::to_string(i) + "]", out[i]);
  }

  void read(const json& j, const std::string& path, replay_state& out) {
    read_named(j, path, out, replay_state_of, "running, done, failed or cancelled");
  }

  void read(const json& j, const std::string& path, replay_mode& out) {
    read_named(j, path, out, replay_mode_of, "dry-run or redeliver");
  }

  /// An enum stored as its name; `names` lists them for the error.
  template <class E>
  void read_named(const json& j, const std::string& path, E& out,
                  std::optional<E> (*value_of)(std::string_view), const char* names) {
    std::string name;
    read(j, path, name);
    if (auto x = value_of(name))
      out = *x;
    else
      fail(path, "is \"" + name.substr(0, 64) + "\": not " + names);
  }

  /// A range as stored: [topic, topic id, partition, first offset, last offset].
  void read(const json& j, const std::string& path, replay_range& out) {
    if (!j.is_array() || j.size() != 5)
      return fail(path, "must be [topic, topic id, partition, first offset, last offset]");
    read(j[0], path + "[0]", out.topic);
    read(j[1], path + "[1]", out.from.topic_id);
    read(j[2], path + "[2]", out.from.partition);
    read(j[3], path + "[3]", out.from.offset);
    read(j[4], path + "[4]", out.to);
    if (out.from.offset > out.to)
      fail(path, "must not end before it starts");
  }

  /// Deliveries per topic: {"<topic>": n, ...}.
  void read(const json& j, const std::string& path, std::map<std::string, std::uint64_t>& out) {
    if (!j.is_object())
      return fail(path, "must be an object of counts by topic");
    for (auto& [topic, n] : j.items())
      read(n, path + "." + topic, out[topic]);
  }

  void read(const json& j, const std::string& path, replay_plan& out) {
    if (!j.is_object())
      return fail(path, "must be an object");
    auto at = path + ".";
    field(j, at, "agent", out.agent);
    field(j, at, "named", out.named);
    if (auto* ranges = member(j, at, "ranges")) {
      if (!ranges->is_array())
        return fail(at + "ranges", "must be an array");
      out.ranges.resize(ranges->size());
      for (std::size_t i = 0; i < ranges->size(); ++i)
        read((*ranges)[i], at + "ranges[" + std::to_string(i) + "]", out.ranges[i]);
    }
    field(j, at, "counts", out.counts);
    field(j, at, "total", out.events);
    field(j, at, "done", out.done);
    auto* pos = member(j, at, "pos");
    if (pos != nullptr && (!pos->is_array() || pos->size() != 2))
      return fail(at + "pos", "must be [range, offset]");
    if (pos != nullptr) {
      read((*pos)[0], at + "pos[0]", out.pos_range);
      read((*pos)[1], at + "pos[1]", out.pos_offset);
    }
  }

private:
  std::string failed_;
};

} // namespace

std::string replay_key(const std::string& id) {
  return replay_prefix + id;
}

json to_json(const replay_record& r) {
  json plan = json::array();
  // The record's counts again, flat: what the version before this one read.
  json counts = json::array();
  for (auto& p : r.plan) {
    json ranges = json::array();
    for (auto& x : p.ranges)
      ranges.push_back(
        json::array({x.topic, x.from.topic_id, x.from.partition, x.from.offset, x.to}));
    for (auto& [topic, n] : p.counts)
      counts.push_back({{"agent", p.agent}, {"topic", topic}, {"events", n}});
    plan.push_back({{"agent", p.agent},
                    {"named", p.named},
                    {"ranges", std::move(ranges)},
                    {"counts", p.counts},
                    {"total", p.events},
                    {"pos", json::array({p.pos_range, p.pos_offset})},
                    {"done", p.done}});
  }
  return json{{"id", r.id},
              {"mode", to_string(r.mode)},
              {"state", to_string(r.state)},
              {"from_us", r.from_us},
              {"to_us", r.to_us},
              {"topics", r.topics},
              {"agents", r.agents},
              {"events", r.event_ids},
              {"created_us", r.created_us},
              {"finished_us", r.finished_us},
              {"events_total", r.events_total},
              {"events_done", r.events_done},
              {"acked", r.acked},
              {"failed", r.failed},
              {"retried", r.retried},
              {"dead_lettered", r.dead_lettered},
              {"error", r.error},
              {"counts", std::move(counts)},
              {"plan", std::move(plan)}};
}

result<replay_record> replay_record_from_json(const json& j) {
  if (!j.is_object())
    return tl::make_unexpected(error{errc::storage, "the record is not a JSON object"});
  replay_record r;
  field_reader in;
  in.field(j, "", "id", r.id);
  in.field(j, "", "state", r.state);
  in.field(j, "", "mode", r.mode);
  in.field(j, "", "from_us", r.from_us);
  in.field(j, "", "to_us", r.to_us);
  in.field(j, "", "topics", r.topics);
  in.field(j, "", "agents", r.agents);
  in.field(j, "", "events", r.event_ids);
  in.field(j, "", "created_us", r.created_us);
  in.field(j, "", "finished_us", r.finished_us);
  in.field(j, "", "events_total", r.events_total);
  in.field(j, "", "events_done", r.events_done);
  in.field(j, "", "acked", r.acked);
  in.field(j, "", "failed", r.failed);
  in.field(j, "", "retried", r.retried);
  in.field(j, "", "dead_lettered", r.dead_lettered);
  in.field(j, "", "error", r.error);
  // The flat "counts" repeat the plan's: read from there.
  if (auto* plan = in.member(j, "", "plan"); plan != nullptr && !plan->is_array())
    in.fail("plan", "must be an array");
  else if (plan != nullptr) {
    r.plan.resize(plan->size());
    for (std::size_t i = 0; i < plan->size(); ++i)
      in.read((*plan)[i], "plan[" + std::to_string(i) + "]", r.plan[i]);
  }
  if (!in.failed().empty())
    return tl::make_unexpected(error{errc::storage, in.failed()});
  return r;
}

namespace {

/// The record stored as `text` for replay `id`.
result<replay_record> parse_stored(const std::string& id, const std::string& text) {
  auto parsed = replay_record_from_json(json::parse(text, nullptr, false));
  if (!parsed)
    return tl::make_unexpected(
      error{errc::storage, "replay " + id + " is stored corrupt: " + parsed.error().message});
  return parsed;
}

} // namespace

result<replay_record> load_replay(const persistence::delivery_store& store, const std::string& id) {
  auto stored = store.meta(replay_key(id));
  if (!stored)
    return tl::make_unexpected(from_storage(stored.error()));
  if (!*stored)
    return tl::make_unexpected(error{errc::not_found, "no replay with id " + id});
  return parse_stored(id, **stored);
}

result<std::vector<replay_record>> load_replays(const persistence::delivery_store& store) {
  auto stored = store.meta_prefix(replay_prefix);
  if (!stored)
    return tl::make_unexpected(from_storage(stored.error()));
  std::vector<replay_record> out;
  for (auto& [key, value] : *stored) {
    auto record = parse_stored(key.substr(replay_prefix.size()), value);
    if (record)
      out.push_back(std::move(*record));
    else
      spdlog::error("{}", record.error().message);
  }
  return out;
}

std::optional<error> store_replay(persistence::delivery_store& store, const replay_record& r,
                                  bool sync) {
  persistence::state_batch b;
  b.put_meta(replay_key(r.id), to_json(r).dump());
  if (auto ok = store.commit(b, sync); !ok)
    return from_storage(ok.error());
  return std::nullopt;
}

} // namespace nerve::actors::detail
