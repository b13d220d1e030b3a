// Replay histories: one agent's history in a replay's window, read a page
// at a time, each event with what became of it live and under the replay.
#include <algorithm>
#include <map>
#include <tuple>
#include <unordered_map>

#include <nlohmann/json.hpp>

#include "actors/replay_plan.hpp"
#include "actors/stored_event.hpp"

namespace nerve::actors::detail {

namespace {

using json = nlohmann::json;

std::string cursor_text(std::size_t range_index, std::uint64_t offset) {
  return std::to_string(range_index) + "." + std::to_string(offset);
}

std::optional<std::pair<std::size_t, std::uint64_t>> parse_cursor(const std::string& c) {
  auto dot = c.find('.');
  if (dot == std::string::npos || dot == 0 || dot + 1 == c.size() || c.size() > 40)
    return std::nullopt;
  auto digits = [](std::string_view s) {
    return std::all_of(s.begin(), s.end(), [](unsigned char ch) { return std::isdigit(ch); });
  };
  std::string_view a{c.data(), dot};
  std::string_view b{c.data() + dot + 1, c.size() - dot - 1};
  if (!digits(a) || !digits(b) || a.size() > 9 || b.size() > 19)
    return std::nullopt;
  return std::make_pair(static_cast<std::size_t>(std::stoull(std::string{a})),
                        static_cast<std::uint64_t>(std::stoull(std::string{b})));
}

/// The state of one delivery from what the store holds about it.
delivery_view state_of(const std::string& agent, const persistence::dlq_entry* dead,
                       const persistence::pending_record* pending,
                       const persistence::stored_result* result,
                       std::optional<std::uint32_t> acked_attempts,
                       std::optional<std::uint64_t> cursor, std::uint64_t offset) {
  delivery_view d;
  d.agent = agent;
  if (dead != nullptr) {
    d.state = "dead_lettered";
    d.attempts = dead->attempts;
    d.error = dead->error;
  } else if (pending != nullptr && !pending->acked) {
    d.state = pending->attempts > 0 ? "retrying" : "pending";
    d.attempts = pending->attempts;
    d.error = pending->last_error;
  } else if (result != nullptr || (pending != nullptr && pending->acked)
             || (cursor && offset < *cursor)) {
    d.state = "acked";
    // Exact while the result or attempts record is kept (results.ttl): an
    // ack without either took one attempt. At least 1 after.
    d.attempts = result != nullptr ? result->attempts
                 : acked_attempts
                   ? *acked_attempts
                   : std::max<std::uint32_t>(1, pending != nullptr ? pending->attempts : 1);
  } else {
    d.state = "pending";
  }
  if (result != nullptr)
    d.result = result->result;
  return d;
}

/// Appends one history entry: the stored event's own bytes (already JSON),
/// what became of it live and, under a redelivering replay, in the replay.
void append_entry(history_page& page, std::string_view event, const delivery_view& v,
                  const json& replay_outcome) {
  auto& out = page.entries_json;
  if (page.count++ > 0)
    out += ',';
  out += "{\"event\":";
  out += event;
  out += ",\"outcome\":";
  stored::append_quoted(out, v.state);
  out += ",\"attempts\":";
  out += std::to_string(v.attempts);
  if (!v.error.empty()) {
    out += ",\"error\":";
    stored::append_quoted(out, v.error);
  }
  if (replay_outcome.is_object() && !replay_outcome.value("outcome", "").empty()) {
    out += ",\"replay\":{\"outcome\":";
    stored::append_quoted(out, replay_outcome.value("outcome", ""));
    out += ",\"attempts\":";
    out += std::to_string(replay_outcome.value("attempts", 0U));
    if (auto e = replay_outcome.value("error", ""); !e.empty()) {
      out += ",\"error\":";
      stored::append_quoted(out, e);
    }
    out += '}';
  }
  out += '}';
}

/// One agent's part of a replay's plan, if it has one.
const replay_plan* plan_of(const replay_record& record, const std::string& agent_name) {
  for (auto& a : record.plan)
    if (a.agent == agent_name)
      return &a;
  return nullptr;
}

using dlq_key = std::tuple<std::uint32_t, std::uint32_t, std::uint64_t>;

/// A DLQ this small is read once per page; a larger one is looked up per
/// event.
constexpr std::int64_t dlq_preload_max = 10000;

/// The live group's DLQ entries of `agent_name` by (topic id, partition,
/// offset).
tl::expected<std::map<dlq_key, persistence::dlq_entry>, error>
live_dead_letters(persistence::delivery_store& store, const std::string& agent_name) {
  std::map<dlq_key, persistence::dlq_entry> dead;
  std::string after;
  for (;;) {
    auto page = store.dlq_list(agent_name, "", after, 1000);
    if (!page)
      return tl::make_unexpected(from_storage(page.error()));
    for (auto& e : *page)
      // Only the live group's entries: a replay's own have other ids.
      if (e.id
          == persistence::delivery_store::dlq_id(agent_name, e.topic_id, e.partition, e.offset))
        dead[{e.topic_id, e.partition, e.offset}] = e;
    if (page->size() < 1000)
      break;
    after = page->back().id;
  }
  return dead;
}

/// Reads one page of one agent's history: the state one call of
/// replay_history carries from range to range.
struct history_reader {
  history_reader(const node_context& c, const agent_runtime& a, std::string replay_id)
    : ctx(c), agent(a), id(std::move(replay_id)) {}

  const node_context& ctx;
  const agent_runtime& agent;
  std::string id; ///< the replay's
  bool named = false;
  bool redelivered = false;
  bool dlq_loaded = false;
  std::map<dlq_key, persistence::dlq_entry> dead; ///< when dlq_loaded
  history_page page;

  /// What the live group holds about one range's partition.
  struct live_state {
    std::optional<std::uint64_t> cursor;
    std::optional<std::uint64_t> start;
    std::vector<persistence::pending_record> pending_list;
    std::unordered_map<std::uint64_t, const persistence::pending_record*> pending;
  };

  [[nodiscard]] const std::string& name() const { return agent.cfg.name; }

  tl::expected<live_state, error> live_of(const range& r) const {
    auto& store = *ctx.store;
    auto cursor = store.cursor(name(), r.topic_id, r.partition);
    auto start = group_start(ctx, name(), r.topic_id, r.partition);
    auto pending_list = store.pending(name(), r.topic_id, r.partition);
    if (!cursor || !start || !pending_list)
      return tl::make_unexpected(error{errc::storage, "reading delivery state"});
    live_state s{*cursor, *start, std::move(*pending_list), {}};
    for (auto& p : s.pending_list)
      s.pending[p.offset] = &p;
    return s;
  }

  /// The live group's DLQ entry for `offset`, if there is one; `looked_up`
  /// holds it when it was read now.
  tl::expected<const persistence::dlq_entry*, error>
  dead_letter(const range& r, std::uint64_t offset,
              std::optional<persistence::dlq_entry>& looked_up) const {
    if (dlq_loaded) {
      auto it = dead.find({r.topic_id, r.partition, offset});
      return it == dead.end() ? nullptr : &it->second;
    }
    auto got = ctx.store->dlq_get(
      persistence::delivery_store::dlq_id(name(), r.topic_id, r.partition, offset));
    if (!got)
      return tl::make_unexpected(from_storage(got.error()));
    looked_up = std::move(*got);
    return looked_up ? &*looked_up : nullptr;
  }

  /// Appends the entry of the event at `offset` of `r`. `retried` walks the
  /// acks after retries of the chunk, in offset order.
  std::optional<error>
  append(const range& r, const live_state& live,
         const std::vector<std::pair<std::uint64_t, std::uint32_t>>& retried,
         std::vector<std::pair<std::uint64_t, std::uint32_t>>::const_iterator& next_retried,
         std::uint64_t offset, std::string_view event) {
    delivery_view v;
    if (named && (!live.start || offset < *live.start)) {
      v.state = "not_delivered"; // the agent was not subscribed then
    } else {
      std::optional<persistence::dlq_entry> looked_up;
      auto d = dead_letter(r, offset, looked_up);
      if (!d)
        return d.error();
      auto p = live.pending.find(offset);
      while (next_retried != retried.end() && next_retried->first < offset)
        ++next_retried;
      std::optional<std::uint32_t> acked_attempts;
      if (next_retried != retried.end() && next_retried->first == offset)
        acked_attempts = next_retried->second;
      v = state_of(name(), *d, p == live.pending.end() ? nullptr : p->second, nullptr,
                   acked_attempts, live.cursor, offset);
    }
    json replay_outcome;
    if (redelivered) {
      auto out = ctx.store->meta(outcome_key(id, name(), r.topic_id, r.partition, offset));
      if (!out)
        return from_storage(out.error());
      if (*out)
        replay_outcome = json::parse(**out, nullptr, false);
    }
    append_entry(page, event, v, replay_outcome);
    return std::nullopt;
  }

  /// Appends the entries of range `r` (index `ri`) from `at` until the page
  /// holds `limit`; answers true when it is full (its next cursor set).
  tl::expected<bool, error> read_range(std::size_t ri, const range& r, std::uint64_t at,
                                       std::size_t limit) {
    auto t = ctx.log->find_topic(r.topic);
    if (!t)
      return false;
    auto live = live_of(r);
    if (!live)
      return tl::make_unexpected(live.error());
    bool filtered = has_filter(agent.cfg.filter);
    at = std::max(at, r.lo);
    while (at <= r.hi) {
      if (page.count >= limit) {
        page.next_cursor = cursor_text(ri, at);
        return true;
      }
      auto want = limit - page.count;
      // Offsets are dense: this chunk is [at, last], read in one pass.
      auto last = r.hi - at < want ? r.hi : at + want - 1;
      // Outcomes: acks after retries are the exceptions, read in one range
      // scan; the rest is the cursor, the pending set and the DLQ.
      auto retried = ctx.store->attempts_in(name(), r.topic_id, r.partition, at, last);
      if (!retried)
        return tl::make_unexpected(from_storage(retried.error()));
      auto next_retried = retried->cbegin();
      std::optional<error> failed;
      auto visited = ctx.log->visit_stored(
        *t, r.partition, at, last, want,
        [&](std::uint64_t offset, std::int64_t, std::string_view event) {
          if (failed)
            return;
          if (filtered && !filter_matches(agent.cfg.filter, json::parse(event, nullptr, false)))
            return;
          failed = append(r, *live, *retried, next_retried, offset, event);
        });
      if (!visited)
        return tl::make_unexpected(from_storage(visited.error()));
      if (failed)
        return tl::make_unexpected(*failed);
      at = last + 1;
    }
    return false;
  }
};

} // namespace

delivery_view live_delivery_state(const node_context& ctx, const agent_runtime& agent,
                                  std::uint32_t topic_id, std::uint32_t partition,
                                  std::uint64_t offset, const std::string& event_id,
                                  std::optional<std::uint64_t> cursor, bool& storage_ok) {
  auto& name = agent.cfg.name;
  auto& store = *ctx.store;
  auto dead = store.dlq_get(persistence::delivery_store::dlq_id(name, topic_id, partition, offset));
  auto pending = store.pending_at(name, topic_id, partition, offset);
  auto result = store.result(event_id, name);
  auto attempts = store.attempts_in(name, topic_id, partition, offset, offset);
  if (!dead || !pending || !result || !attempts) {
    storage_ok = false;
    return {};
  }
  std::optional<std::uint32_t> acked_attempts;
  if (!attempts->empty())
    acked_attempts = attempts->front().second;
  return state_of(name, *dead ? &**dead : nullptr, *pending ? &**pending : nullptr,
                  *result ? &**result : nullptr, acked_attempts, cursor, offset);
}

tl::expected<history_page, error> replay_history(const node_context& ctx,
                                                 const replay_record& record,
                                                 const std::string& agent_name,
                                                 const std::string& cursor, std::size_t limit) {
  const replay_plan* plan_agent = plan_of(record, agent_name);
  if (plan_agent == nullptr)
    return tl::make_unexpected(
      error{errc::not_found,
            "agent " + agent_name + " has no history in replay " + record.id + "; see its counts"});
  auto agent = find_agent(ctx, agent_name);
  if (!agent)
    return tl::make_unexpected(error{errc::not_found, "no agent named " + agent_name});
  std::size_t ri = 0;
  std::uint64_t at = 0;
  if (!cursor.empty()) {
    auto c = parse_cursor(cursor);
    if (!c)
      return tl::make_unexpected(
        error{errc::invalid, "cursor " + cursor.substr(0, 64) + " is not one this API gave out"});
    std::tie(ri, at) = *c;
  }
  auto ranges = ranges_of(*plan_agent);
  // A cursor names a range of this history and a position in it (or just
  // past it); anything else was not given out by this API.
  if (!cursor.empty()
      && (ri > ranges.size()
          || (ri < ranges.size() && (at < ranges[ri].lo || at > ranges[ri].hi + 1))
          || (ri == ranges.size() && at != 0)))
    return tl::make_unexpected(
      error{errc::invalid,
            "cursor " + cursor.substr(0, 64) + " is not one this API gave out for " + agent_name});
  history_reader reader{ctx, *agent, record.id};
  reader.named = plan_agent->named;
  reader.redelivered = record.mode == replay_mode::redeliver;
  reader.dlq_loaded = ctx.dlq_size.load() <= static_cast<std::uint64_t>(dlq_preload_max);
  if (reader.dlq_loaded) {
    auto dead = live_dead_letters(*ctx.store, agent_name);
    if (!dead)
      return tl::make_unexpected(dead.error());
    reader.dead = std::move(*dead);
  }
  reader.page.agent = agent_name;
  reader.page.entries_json.reserve(limit * 256);
  for (; ri < ranges.size(); ++ri, at = 0) {
    auto full = reader.read_range(ri, ranges[ri], at, limit);
    if (!full)
      return tl::make_unexpected(full.error());
    if (*full)
      break;
  }
  return std::move(reader.page);
}

std::optional<std::string> history_cursor_after(const node_context& ctx,
                                                const replay_record& record,
                                                const std::string& agent_name,
                                                const std::string& cursor, std::size_t limit) {
  const replay_plan* plan_agent = plan_of(record, agent_name);
  if (plan_agent == nullptr || limit == 0)
    return std::nullopt;
  for (auto& a : ctx.agents.all())
    if (a->cfg.name == agent_name && has_filter(a->cfg.filter))
      return std::nullopt;
  std::size_t ri = 0;
  std::uint64_t at = 0;
  if (!cursor.empty()) {
    auto c = parse_cursor(cursor);
    if (!c)
      return std::nullopt;
    std::tie(ri, at) = *c;
  }
  // The walk of replay_history, counting instead of reading.
  auto ranges = ranges_of(*plan_agent);
  std::size_t count = 0;
  for (; ri < ranges.size(); ++ri, at = 0) {
    auto& r = ranges[ri];
    at = std::max(at, r.lo);
    while (at <= r.hi) {
      if (count >= limit)
        return cursor_text(ri, at);
      auto want = limit - count;
      auto last = r.hi - at < want ? r.hi : at + want - 1;
      count += last - at + 1;
      at = last + 1;
    }
  }
  return std::nullopt;
}

} // namespace nerve::actors::detail
