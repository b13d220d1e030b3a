// Replay: plans a window of the log through the by_time index, reconstructs
// each agent's history in it (partition order, with the outcome each event
// had). To redeliver, the replay actor (replay_actor.cpp) sends that
// history again to the agents' instances through the same credits, retries
// and DLQ as live delivery, without touching live cursors or live counters.
//
// A replay is one JSON record in `meta` under "replay/<id>"; its plan holds,
// per agent, the offset ranges of each partition in the window (append time
// only grows within a partition, so a window is one range per partition).
// Outcomes under a replay are records "rout/<id>/<agent>/<topic>/<p>/<offset>".
#include <algorithm>
#include <map>
#include <set>
#include <unordered_map>

#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include "actors/replay_record.hpp"
#include "actors/runtime.hpp"
#include "persistence/keys.hpp"

namespace nerve::actors::detail {

namespace {

using json = nlohmann::json;

/// The consumer groups' filter match, on a parsed event.
bool filter_matches(const config::agent_filter& f, const json& e) {
  return actors::filter_matches(f, field_of(e, "type"), field_of(e, "source"), field_of(e, "key"));
}

bool has_filter(const config::agent_filter& f) {
  return f.type || f.source || f.key;
}

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

} // namespace

// -- what a replay's record holds (replay_record.hpp) --------------------------

std::vector<range> ranges_of(const json& plan_agent) {
  std::vector<range> out;
  for (auto& r : plan_agent.at("ranges"))
    out.push_back({r.at(0).get<std::string>(), r.at(1).get<std::uint32_t>(),
                   r.at(2).get<std::uint32_t>(), r.at(3).get<std::uint64_t>(),
                   r.at(4).get<std::uint64_t>()});
  return out;
}

/// An event's string field, or empty.
std::string field_of(const json& e, const char* name) {
  auto it = e.find(name);
  return it != e.end() && it->is_string() ? it->get<std::string>() : std::string{};
}

std::string outcome_key(const std::string& id, const std::string& agent, std::uint32_t topic_id,
                        std::uint32_t partition, std::uint64_t offset) {
  std::string k = "rout/" + id + "/" + agent + "/";
  persistence::keys::put_u32(k, topic_id);
  persistence::keys::put_u32(k, partition);
  persistence::keys::put_u64(k, offset);
  return k;
}

/// The event `text` with `"replay":"<id>"` added, as agents receive it.
std::string marked(const std::string& text, const std::string& id) {
  auto end = text.find_last_of('}');
  if (end == std::string::npos)
    return text;
  return text.substr(0, end) + ",\"replay\":" + json(id).dump() + text.substr(end);
}

/// The id of a stored event: its JSON starts with {"id":"...", and ids need
/// no escaping.
std::string id_of(const std::string& text) {
  constexpr std::string_view head = R"({"id":")";
  if (text.compare(0, head.size(), head) != 0)
    return json::parse(text, nullptr, false).value("id", "");
  auto end = text.find('"', head.size());
  return end == std::string::npos ? std::string{} : text.substr(head.size(), end - head.size());
}

std::string replay_key(const std::string& id) {
  return "replay/" + id;
}

namespace {

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

/// Appends `v` to `out` as a JSON string.
void append_quoted(std::string& out, std::string_view v) {
  // Outcomes are plain words: copied as they are, without a DOM.
  bool plain = std::all_of(v.begin(), v.end(),
                           [](char c) { return c >= 0x20 && c < 0x7f && c != '"' && c != '\\'; });
  if (plain) {
    out += '"';
    out += v;
    out += '"';
    return;
  }
  out += json(std::string{v}).dump(-1, ' ', false, json::error_handler_t::replace);
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
  append_quoted(out, v.state);
  out += ",\"attempts\":";
  out += std::to_string(v.attempts);
  if (!v.error.empty()) {
    out += ",\"error\":";
    append_quoted(out, v.error);
  }
  if (replay_outcome.is_object() && !replay_outcome.value("outcome", "").empty()) {
    out += ",\"replay\":{\"outcome\":";
    append_quoted(out, replay_outcome.value("outcome", ""));
    out += ",\"attempts\":";
    out += std::to_string(replay_outcome.value("attempts", 0U));
    if (auto e = replay_outcome.value("error", ""); !e.empty()) {
      out += ",\"error\":";
      append_quoted(out, e);
    }
    out += '}';
  }
  out += '}';
}

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

tl::expected<json, error> plan_replay(const node_context& ctx, const replay_request& req,
                                      const std::string& id, std::int64_t now_us) {
  auto& log = *ctx.log;
  std::map<std::uint32_t, persistence::topic_info> topics_by_id;
  for (auto& t : log.topics())
    topics_by_id[t.id] = t;
  std::set<std::string> topic_filter(req.topics.begin(), req.topics.end());
  // (topic id, partition) -> [lo, hi]
  std::map<std::pair<std::uint32_t, std::uint32_t>, std::pair<std::uint64_t, std::uint64_t>> parts;
  std::set<std::tuple<std::uint32_t, std::uint32_t, std::uint64_t>> listed; // event-id mode
  // Per by_time key: one hash lookup for the topic's verdict, one for its
  // partition's range (a window scan visits every event in it).
  std::unordered_map<std::uint32_t, bool> wanted;
  for (auto& [tid, t] : topics_by_id)
    wanted[tid] = topic_filter.empty() || topic_filter.count(t.name) > 0;
  std::unordered_map<std::uint64_t, std::pair<std::uint64_t, std::uint64_t>> spans;
  auto keep = [&](std::uint32_t tid, std::uint32_t p, std::uint64_t offset) {
    auto w = wanted.find(tid);
    if (w == wanted.end() || !w->second)
      return;
    auto [it, fresh] = spans.try_emplace((std::uint64_t{tid} << 32) | p, offset, offset);
    if (!fresh) {
      it->second.first = std::min(it->second.first, offset);
      it->second.second = std::max(it->second.second, offset);
    }
    if (!req.event_ids.empty())
      listed.emplace(tid, p, offset); // a window is whole ranges
  };
  if (req.event_ids.empty()) {
    // by_time from both ends of the window: going forward, the first key of
    // a partition is its first offset in the window; going backward, its
    // last. A small window is walked whole. Each walk stops once it has seen
    // every partition, or after a budget; a partition it did not reach (quiet
    // in the window, or busy only in its middle) has its bounds found by
    // binary search on append time (O(log n) reads).
    std::set<std::uint64_t> all;
    for (auto& [tid, t] : topics_by_id)
      if (wanted[tid])
        for (std::uint32_t p = 0; p < t.partitions; ++p)
          all.insert((std::uint64_t{tid} << 32) | p);
    const std::uint64_t budget = 1024 + 16 * all.size();
    std::unordered_map<std::uint64_t, std::uint64_t> first, last;
    bool whole = true;
    auto walk = [&](bool backward, std::unordered_map<std::uint64_t, std::uint64_t>& seen) {
      return log.scan_time(
        req.from_us, req.to_us,
        [&, visited = std::uint64_t{0}](std::int64_t, std::uint32_t tid, std::uint32_t p,
                                        std::uint64_t offset) mutable {
          auto where = (std::uint64_t{tid} << 32) | p;
          if (all.count(where) > 0) {
            seen.try_emplace(where, offset);
            if (!backward)
              last[where] = offset; // exact if the walk ends at `to`
          }
          if (++visited < budget && seen.size() < all.size())
            return true;
          whole = false;
          return false;
        },
        backward);
    };
    auto forward = walk(false, first);
    if (!forward)
      return tl::make_unexpected(error{errc::storage, forward.error().message});
    if (!whole) {
      last.clear();
      auto backward = walk(true, last);
      if (!backward)
        return tl::make_unexpected(error{errc::storage, backward.error().message});
    }
    for (auto where : all) {
      auto lo = first.find(where);
      auto hi = last.find(where);
      if (lo != first.end() && hi != last.end()) {
        spans[where] = {lo->second, hi->second};
        continue;
      }
      if (whole)
        continue; // the walk saw the whole window: no event of it here
      auto& t = topics_by_id.at(static_cast<std::uint32_t>(where >> 32));
      auto span = log.time_span(t, static_cast<std::uint32_t>(where), req.from_us, req.to_us);
      if (!span)
        return tl::make_unexpected(error{errc::storage, span.error().message});
      if (*span)
        spans[where] = **span;
    }
  } else {
    for (auto& eid : req.event_ids) {
      auto got = log.get_by_id(eid);
      if (!got)
        return tl::make_unexpected(error{errc::storage, got.error().message});
      if (!*got)
        return tl::make_unexpected(error{errc::not_found, "no event with id " + eid});
      auto e = json::parse(**got, nullptr, false);
      auto t = log.find_topic(e.value("topic", ""));
      if (!t)
        continue;
      keep(t->id, e.value("partition", 0U), e.value("offset", 0ULL));
    }
  }
  for (auto& [where, span] : spans)
    parts[{static_cast<std::uint32_t>(where >> 32), static_cast<std::uint32_t>(where)}] = span;
  // Ranges in (topic name, partition) order: stable across calls and restarts.
  std::vector<range> window;
  for (auto& [where, span] : parts) {
    auto& t = topics_by_id.at(where.first);
    if (listed.empty()) {
      window.push_back({t.name, t.id, where.second, span.first, span.second});
      continue;
    }
    for (auto& [tid, p, offset] : listed)
      if (tid == where.first && p == where.second)
        window.push_back({t.name, t.id, p, offset, offset});
  }
  std::stable_sort(window.begin(), window.end(), [](const range& a, const range& b) {
    return std::tie(a.topic, a.partition, a.lo) < std::tie(b.topic, b.partition, b.lo);
  });

  std::set<std::string> named(req.agents.begin(), req.agents.end());
  json plan = json::array();
  std::uint64_t total = 0;
  json counts = json::array();
  for (auto& agent : ctx.agents) {
    bool is_named = named.count(agent->cfg.name) > 0;
    if (!named.empty() && !is_named)
      continue;
    json ranges = json::array();
    std::map<std::string, std::uint64_t> per_topic;
    for (auto& r : window) {
      if (!agent->subscribes(r.topic))
        continue;
      auto lo = r.lo;
      if (!is_named) {
        // Only what the agent's actors were given: from its group's start.
        auto start = group_start(ctx, agent->cfg.name, r.topic_id, r.partition);
        if (!start)
          return tl::make_unexpected(start.error());
        if (!*start || **start > r.hi)
          continue;
        lo = std::max(lo, **start);
      }
      std::uint64_t n = r.hi - lo + 1;
      if (has_filter(agent->cfg.filter)) {
        n = 0;
        auto t = topics_by_id.at(r.topic_id);
        for (auto at = lo; at <= r.hi;) {
          auto got = log.read_stored(t, r.partition, at, r.hi, 512);
          if (!got)
            return tl::make_unexpected(error{errc::storage, got.error().message});
          if (got->empty())
            break;
          for (auto& e : *got)
            if (filter_matches(agent->cfg.filter, json::parse(e.json, nullptr, false)))
              ++n;
          at = got->back().offset + 1;
        }
      }
      if (n == 0)
        continue;
      per_topic[r.topic] += n;
      ranges.push_back(json::array({r.topic, r.topic_id, r.partition, lo, r.hi}));
    }
    std::uint64_t agent_total = 0;
    json topic_counts = json::object();
    for (auto& [topic, n] : per_topic) {
      agent_total += n;
      topic_counts[topic] = n;
      counts.push_back({{"agent", agent->cfg.name}, {"topic", topic}, {"events", n}});
    }
    total += agent_total;
    plan.push_back({{"agent", agent->cfg.name},
                    {"named", is_named},
                    {"ranges", std::move(ranges)},
                    {"counts", std::move(topic_counts)},
                    {"total", agent_total},
                    {"pos", json::array({0, 0})},
                    {"done", 0}});
  }
  json record{{"id", id},
              {"mode", req.dry_run ? "dry-run" : "redeliver"},
              {"state", req.dry_run || total == 0 ? "done" : "running"},
              {"from_us", req.from_us},
              {"to_us", req.to_us},
              {"topics", req.topics},
              {"agents", req.agents},
              {"events", req.event_ids},
              {"created_us", now_us},
              {"finished_us", req.dry_run || total == 0 ? now_us : 0},
              {"events_total", total},
              {"events_done", req.dry_run ? total : 0},
              {"acked", 0},
              {"failed", 0},
              {"retried", 0},
              {"dead_lettered", 0},
              {"error", ""},
              {"counts", std::move(counts)},
              {"plan", std::move(plan)}};
  return record;
}

replay_view replay_view_of(const json& r) {
  replay_view v;
  v.id = r.value("id", "");
  v.state = r.value("state", "");
  v.mode = r.value("mode", "");
  v.from_us = r.value("from_us", std::int64_t{0});
  v.to_us = r.value("to_us", std::int64_t{0});
  v.topics = r.value("topics", std::vector<std::string>{});
  v.agents = r.value("agents", std::vector<std::string>{});
  v.event_ids = r.value("events", std::vector<std::string>{});
  v.events_total = r.value("events_total", std::uint64_t{0});
  v.events_done = r.value("events_done", std::uint64_t{0});
  v.acked = r.value("acked", std::uint64_t{0});
  v.failed = r.value("failed", std::uint64_t{0});
  v.retried = r.value("retried", std::uint64_t{0});
  v.dead_lettered = r.value("dead_lettered", std::uint64_t{0});
  v.created_us = r.value("created_us", std::int64_t{0});
  v.finished_us = r.value("finished_us", std::int64_t{0});
  v.error = r.value("error", "");
  for (auto& c : r.value("counts", json::array()))
    v.counts.push_back(
      {c.value("agent", ""), c.value("topic", ""), c.value("events", std::uint64_t{0})});
  return v;
}

namespace {

/// One agent's part of a replay's plan, if it has one.
const json* plan_of(const json& record, const std::string& agent_name) {
  for (auto& a : record.at("plan"))
    if (a.value("agent", "") == agent_name)
      return &a;
  return nullptr;
}

} // namespace

tl::expected<history_page, error> replay_history(const node_context& ctx, const json& record,
                                                 const std::string& agent_name,
                                                 const std::string& cursor, std::size_t limit) {
  const json* plan_agent = plan_of(record, agent_name);
  if (plan_agent == nullptr)
    return tl::make_unexpected(
      error{errc::not_found, "agent " + agent_name + " has no history in replay "
                               + record.value("id", "") + "; see its counts"});
  agent_ptr agent;
  for (auto& a : ctx.agents)
    if (a->cfg.name == agent_name)
      agent = a;
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
  bool named = plan_agent->value("named", false);
  bool redelivered = record.value("mode", "") == "redeliver";
  bool filtered = has_filter(agent->cfg.filter);
  auto id = record.value("id", "");
  auto& store = *ctx.store;
  auto storage = [](const std::string& what) {
    return tl::make_unexpected(error{errc::storage, what});
  };
  // A small DLQ is read once; a large one is looked up per event.
  constexpr std::int64_t dlq_preload_max = 10000;
  bool dlq_loaded = ctx.dlq_size.load() <= dlq_preload_max;
  std::map<std::tuple<std::uint32_t, std::uint32_t, std::uint64_t>, persistence::dlq_entry> dead;
  if (dlq_loaded) {
    std::string after;
    for (;;) {
      auto page = store.dlq_list(agent_name, "", after, 1000);
      if (!page)
        return storage(page.error().message);
      for (auto& e : *page)
        // Only the live group's entries: a replay's own have other ids.
        if (e.id
            == persistence::delivery_store::dlq_id(agent_name, e.topic_id, e.partition, e.offset))
          dead[{e.topic_id, e.partition, e.offset}] = e;
      if (page->size() < 1000)
        break;
      after = page->back().id;
    }
  }
  history_page page;
  page.agent = agent_name;
  page.entries_json.reserve(limit * 256);
  for (; ri < ranges.size(); ++ri, at = 0) {
    auto& r = ranges[ri];
    auto t = ctx.log->find_topic(r.topic);
    if (!t)
      continue;
    auto live_cursor = store.cursor(agent_name, r.topic_id, r.partition);
    auto start = group_start(ctx, agent_name, r.topic_id, r.partition);
    auto pending_list = store.pending(agent_name, r.topic_id, r.partition);
    if (!live_cursor || !start || !pending_list)
      return storage("reading delivery state");
    std::unordered_map<std::uint64_t, const persistence::pending_record*> pending;
    for (auto& p : *pending_list)
      pending[p.offset] = &p;
    at = std::max(at, r.lo);
    while (at <= r.hi) {
      if (page.count >= limit) {
        page.next_cursor = cursor_text(ri, at);
        return page;
      }
      auto want = limit - page.count;
      // Offsets are dense: this chunk is [at, last], read in one pass.
      auto last = r.hi - at < want ? r.hi : at + want - 1;
      // Outcomes: acks after retries are the exceptions, read in one range
      // scan; the rest is the cursor, the pending set and the DLQ.
      auto retried = store.attempts_in(agent_name, r.topic_id, r.partition, at, last);
      if (!retried)
        return storage(retried.error().message);
      auto next_retried = retried->begin();
      std::optional<error> failed;
      auto visited = ctx.log->visit_stored(
        *t, r.partition, at, last, want,
        [&](std::uint64_t offset, std::int64_t, std::string_view event) {
          if (failed)
            return;
          if (filtered && !filter_matches(agent->cfg.filter, json::parse(event, nullptr, false)))
            return;
          delivery_view v;
          if (named && (!*start || offset < **start)) {
            v.state = "not_delivered"; // the agent was not subscribed then
          } else {
            std::optional<persistence::dlq_entry> looked_up;
            const persistence::dlq_entry* d = nullptr;
            if (dlq_loaded) {
              auto it = dead.find({r.topic_id, r.partition, offset});
              d = it == dead.end() ? nullptr : &it->second;
            } else {
              auto got_dead = store.dlq_get(
                persistence::delivery_store::dlq_id(agent_name, r.topic_id, r.partition, offset));
              if (!got_dead) {
                failed = error{errc::storage, got_dead.error().message};
                return;
              }
              looked_up = std::move(*got_dead);
              d = looked_up ? &*looked_up : nullptr;
            }
            auto p = pending.find(offset);
            while (next_retried != retried->end() && next_retried->first < offset)
              ++next_retried;
            std::optional<std::uint32_t> acked_attempts;
            if (next_retried != retried->end() && next_retried->first == offset)
              acked_attempts = next_retried->second;
            v = state_of(agent_name, d, p == pending.end() ? nullptr : p->second, nullptr,
                         acked_attempts, *live_cursor, offset);
          }
          json replay_outcome;
          if (redelivered) {
            auto out = store.meta(outcome_key(id, agent_name, r.topic_id, r.partition, offset));
            if (!out) {
              failed = error{errc::storage, out.error().message};
              return;
            }
            if (*out)
              replay_outcome = json::parse(**out, nullptr, false);
          }
          append_entry(page, event, v, replay_outcome);
        });
      if (!visited)
        return storage(visited.error().message);
      if (failed)
        return tl::make_unexpected(*failed);
      at = last + 1;
    }
  }
  return page;
}

std::optional<std::string> history_cursor_after(const node_context& ctx, const json& record,
                                                const std::string& agent_name,
                                                const std::string& cursor, std::size_t limit) {
  const json* plan_agent = plan_of(record, agent_name);
  if (plan_agent == nullptr || limit == 0)
    return std::nullopt;
  for (auto& a : ctx.agents)
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
