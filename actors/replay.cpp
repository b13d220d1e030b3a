// Replay: plans a window of the log through the by_time index, reconstructs
// each agent's history in it (partition order, with the outcome each event
// had), and, to redeliver, runs a replay actor that sends that history again
// to the agents' instances through the same credits, retries and DLQ as
// live delivery, without touching live cursors or live counters.
//
// A replay is one JSON record in `meta` under "replay/<id>"; its plan holds,
// per agent, the offset ranges of each partition in the window (append time
// only grows within a partition, so a window is one range per partition).
// Outcomes under a replay are records "rout/<id>/<agent>/<topic>/<p>/<offset>".
#include <algorithm>
#include <map>
#include <random>
#include <set>
#include <unordered_map>

#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include "actors/runtime.hpp"
#include "config/assert.hpp"
#include "persistence/keys.hpp"

namespace nerve::actors::detail {

namespace {

using json = nlohmann::json;

/// One partition's share of a window.
struct range {
  std::string topic;
  std::uint32_t topic_id = 0;
  std::uint32_t partition = 0;
  std::uint64_t lo = 0; ///< first offset
  std::uint64_t hi = 0; ///< last offset (inclusive)
};

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

/// The consumer groups' filter match, on a parsed event.
bool filter_matches(const config::agent_filter& f, const json& e) {
  return actors::filter_matches(f, field_of(e, "type"), field_of(e, "source"), field_of(e, "key"));
}

bool has_filter(const config::agent_filter& f) {
  return f.type || f.source || f.key;
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

/// The id of a stored event: its JSON starts with {"id":"...", and ids need
/// no escaping.
std::string id_of(const std::string& text) {
  constexpr std::string_view head = R"({"id":")";
  if (text.compare(0, head.size(), head) != 0)
    return json::parse(text, nullptr, false).value("id", "");
  auto end = text.find('"', head.size());
  return end == std::string::npos ? std::string{} : text.substr(head.size(), end - head.size());
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

// -- the replay actor ---------------------------------------------------------

namespace {

/// One partition's share of an agent's history, delivered by a consumer
/// group engine of its own (no live cursor, no live state: see `apply`).
struct replay_range {
  range where;
  std::unique_ptr<consumer_group> engine;
};

struct replay_agent {
  agent_ptr agent;
  std::vector<replay_range> ranges; ///< read in order: one after the other is read
  std::size_t in_flight = 0;
  std::size_t rr = 0;
  std::uint64_t done = 0;
  /// Resumed with outcomes stored: skip the events that have one.
  bool skip_settled = false;
};

/// A delivery attempt in flight, by its token (the offset its delivery carries).
struct open_attempt {
  std::size_t agent = 0;
  std::size_t range = 0;
  std::uint64_t offset = 0;
  std::uint32_t attempt = 0;
};

struct replay_state {
  node_context* ctx = nullptr;
  std::string id;
  json record;
  std::vector<replay_agent> agents;
  std::unordered_map<std::uint64_t, open_attempt> tokens;
  std::uint64_t next_token = 1;
  bool dirty = false;
  group_effects fx;
  std::vector<caf::actor> taken; ///< the instance of each credit in `fx.deliveries`
  static inline const char* name = "replay";
};

using replay_actor_t = caf::stateful_actor<replay_state>;

constexpr auto tick_every = std::chrono::milliseconds{200};
constexpr std::size_t read_ahead = 256;

std::int64_t clock_us(const replay_state& st) {
  return st.ctx->log->opts().clock();
}

/// Most deliveries a replay keeps in flight per agent: half its credits, so
/// live traffic keeps the other half.
std::size_t cap_of(const agent_runtime& a) {
  return std::max<std::size_t>(1, a.cfg.max_in_flight * a.instances.size() / 2);
}

/// Where an agent's replay stands: its first range not finished and that
/// range's cursor (every event before it is finished).
json position_of(const replay_agent& ra) {
  for (std::size_t k = 0; k < ra.ranges.size(); ++k) {
    auto& e = *ra.ranges[k].engine;
    if (e.cursor() < e.end())
      return json::array({k, e.cursor()});
  }
  return json::array({ra.ranges.size(), 0});
}

void persist(replay_actor_t* self, bool sync) {
  auto& st = self->state;
  std::uint64_t done = 0;
  for (std::size_t i = 0; i < st.agents.size(); ++i) {
    auto& ra = st.agents[i];
    st.record["plan"][i]["pos"] = position_of(ra);
    st.record["plan"][i]["done"] = ra.done;
    done += ra.done;
  }
  st.record["events_done"] = done;
  persistence::state_batch b;
  b.put_meta(replay_key(st.id), st.record.dump());
  if (auto ok = st.ctx->store->commit(b, sync); !ok)
    spdlog::error("replay {}: storing progress: {}", st.id, ok.error().message);
  st.dirty = false;
}

void finish(replay_actor_t* self, const std::string& state) {
  auto& st = self->state;
  st.record["state"] = state;
  st.record["finished_us"] = clock_us(st);
  persist(self, true);
  spdlog::info("replay {} {}: {} of {} deliveries done, {} acked, {} dead-lettered", st.id, state,
               st.record.value("events_done", 0ULL), st.record.value("events_total", 0ULL),
               st.record.value("acked", 0ULL), st.record.value("dead_lettered", 0ULL));
  self->quit();
}

/// Whether the event at `offset` already has an outcome under the replay: it
/// was finished after the stored position, before a restart.
bool settled_before(const replay_state& st, const replay_agent& ra, const range& r,
                    std::uint64_t offset) {
  auto out
    = st.ctx->store->meta(outcome_key(st.id, ra.agent->cfg.name, r.topic_id, r.partition, offset));
  if (!out)
    throw std::runtime_error("reading an outcome: " + out.error().message);
  return out->has_value();
}

/// Counts from the stored outcomes, after a restart. The stored position is
/// the lowest unfinished event, so events finished past it, and outcomes
/// stored after the last progress write, would otherwise count twice or not
/// at all.
void recount(replay_state& st) {
  std::uint64_t acked = 0;
  std::uint64_t dead = 0;
  for (auto& ra : st.agents) {
    auto prefix = "rout/" + st.id + "/" + ra.agent->cfg.name + "/";
    auto outs = st.ctx->store->meta_prefix(prefix);
    if (!outs)
      throw std::runtime_error("reading outcomes: " + outs.error().message);
    ra.done = 0;
    for (auto& [key, value] : *outs) {
      if (key.size() != prefix.size() + 16)
        continue; // another agent's, whose name starts with this one's and a '/'
      ++ra.done;
      auto o = json::parse(value, nullptr, false);
      auto outcome = o.is_object() ? o.value("outcome", "") : std::string{};
      acked += outcome == "acked" ? 1 : 0;
      dead += outcome == "dead_lettered" ? 1 : 0;
    }
    ra.skip_settled = ra.done > 0;
  }
  st.record["acked"] = acked;
  st.record["dead_lettered"] = dead;
}

/// Stores the outcome of one event under the replay.
void store_outcome(replay_actor_t* self, replay_agent& ra, const range& r, std::uint64_t offset,
                   const std::string& outcome, std::uint32_t attempts, const std::string& error,
                   const std::string& result, const persistence::dlq_entry* dead) {
  auto& st = self->state;
  json o{{"outcome", outcome}, {"attempts", attempts}};
  if (!error.empty())
    o["error"] = error;
  if (!result.empty())
    o["result"] = json::parse(result, nullptr, false);
  persistence::state_batch b;
  b.put_meta(outcome_key(st.id, ra.agent->cfg.name, r.topic_id, r.partition, offset), o.dump());
  if (dead != nullptr) {
    auto had = st.ctx->store->dlq_get(dead->id);
    b.put_dlq(*dead);
    if (had && !*had)
      ++st.ctx->dlq_size;
    spdlog::warn("agent={} topic={} partition={} event={} dlq={} replay={}: moved to the DLQ "
                 "after {} attempts: {}",
                 dead->agent, dead->topic, dead->partition, dead->event_id, dead->id, st.id,
                 dead->attempts, dead->error);
  }
  if (auto ok = st.ctx->store->commit(b, false); !ok)
    spdlog::error("replay {}: storing an outcome: {}", st.id, ok.error().message);
  ++ra.done;
  st.dirty = true;
}

/// Adds `n` to the replay record's counter `name`.
void count(replay_state& st, const char* name, std::uint64_t n) {
  if (n > 0)
    st.record[name] = st.record.value(name, 0ULL) + n;
}

/// Carries out what range `k` of agent `ai` asked for. A replay touches no
/// live state: pending records, cursors, results and attempts are not
/// written; its outcomes are records of its own.
void apply(replay_actor_t* self, std::size_t ai, std::size_t k) {
  auto& st = self->state;
  auto& ra = st.agents[ai];
  auto& fx = st.fx;
  NERVE_ASSERT(fx.deliveries.size() == st.taken.size(), "one credit per delivery");
  for (std::size_t n = 0; n < fx.deliveries.size(); ++n) {
    auto& out = fx.deliveries[n];
    auto token = st.next_token++;
    st.tokens[token] = {ai, k, out.offset, out.attempt};
    ++ra.in_flight;
    auto d = std::make_shared<delivery>();
    d->partition = caf::actor{self};
    d->group = ai;
    d->instance = out.instance;
    d->offset = token;
    d->attempt = out.attempt;
    d->event_id = std::move(out.event_id);
    d->delivery_id = std::move(out.delivery_id);
    d->event = std::move(out.event);
    self->send(st.taken[n], deliver_atom::value, std::move(d));
    // The instance times the attempt out; this catches an instance that died.
    self->delayed_send(self, ra.agent->cfg.timeout + std::chrono::seconds{5}, timeout_atom::value,
                       token);
  }
  st.taken.clear();
  for (auto& c : fx.changes)
    if (auto* dead = std::get_if<dead_letter>(&c)) {
      // An id of its own (dlq_owner): the live group's id would overwrite
      // the live entry for this event, or make a live-acked event look
      // dead-lettered. The event carries the replay mark.
      auto e = *dead;
      auto error = e.error;
      e.error += " (replay " + st.id + ")";
      store_outcome(self, ra, ra.ranges[k].where, e.offset, "dead_lettered", e.attempts, error, {},
                    &e);
    }
  auto now = clock_us(st);
  for (auto& t : fx.timers)
    self->delayed_send(
      self, std::chrono::milliseconds{std::max<std::int64_t>(0, (t.due_us - now) / 1000)},
      retry_atom::value, static_cast<std::uint64_t>(ai), static_cast<std::uint64_t>(k), t.offset);
  fx.clear();
  auto t = ra.ranges[k].engine->take_totals();
  count(st, "acked", t.processed);
  count(st, "failed", t.failed);
  count(st, "retried", t.retried);
  count(st, "dead_lettered", t.dead_lettered);
}

/// Feeds range `k`'s engine the events after its read position.
void fill_range(replay_actor_t* self, replay_agent& ra, std::size_t k) {
  auto& st = self->state;
  auto& r = ra.ranges[k].where;
  auto& e = *ra.ranges[k].engine;
  while (auto want = std::min<std::uint64_t>(e.wanted(), read_ahead)) {
    auto t = st.ctx->log->find_topic(r.topic);
    if (!t) {
      e.skip_to_end(); // the topic is gone: nothing to deliver
      break;
    }
    auto got = st.ctx->log->read_stored(*t, r.partition, e.next_read(), r.hi, want);
    if (!got)
      throw std::runtime_error("reading events: " + got.error().message);
    for (auto& stored : *got) {
      if (stored.offset >= e.end())
        break;
      if (ra.skip_settled && settled_before(st, ra, r, stored.offset)) {
        e.pass(stored.offset);
        continue;
      }
      auto parsed = json::parse(stored.json, nullptr, false);
      group_event ev;
      ev.offset = stored.offset;
      ev.id = id_of(stored.json);
      if (parsed.is_object()) {
        ev.key = field_of(parsed, "key");
        ev.type = field_of(parsed, "type");
        ev.source = field_of(parsed, "source");
      }
      ev.json = std::make_shared<const std::string>(marked(stored.json, st.id));
      e.feed(ev);
    }
    // Fewer than asked: the rest of the range is gone (retention) or read.
    if (got->size() < want)
      e.skip_to_end();
  }
  e.advance(st.fx);
}

/// Reads, then sends, each agent's history; finishes when all is done.
void pump(replay_actor_t* self) {
  auto& st = self->state;
  bool all_done = true;
  for (std::size_t ai = 0; ai < st.agents.size(); ++ai) {
    auto& ra = st.agents[ai];
    for (std::size_t k = 0; k < ra.ranges.size(); ++k) {
      auto& e = *ra.ranges[k].engine;
      fill_range(self, ra, k);
      e.set_paused(ra.agent->paused.load());
      auto cap = cap_of(*ra.agent);
      agent_credits credits{*ra.agent, ra.rr, caf::actor{self}, st.taken,
                            ra.in_flight < cap ? cap - ra.in_flight : 0};
      e.dispatch(credits, st.fx);
      apply(self, ai, k);
      if (e.cursor() < e.end())
        all_done = false;
      if (e.next_read() < e.end())
        break; // the next range is read once this one is
    }
  }
  if (all_done)
    finish(self, "done");
}

/// Ends the attempt `token`: where it was, if it is still open.
std::optional<open_attempt> close_attempt(replay_actor_t* self, std::uint64_t token) {
  auto& st = self->state;
  auto t = st.tokens.find(token);
  if (t == st.tokens.end())
    return std::nullopt; // stale
  auto a = t->second;
  st.tokens.erase(t);
  auto& ra = st.agents[a.agent];
  --ra.in_flight;
  if (ra.ranges[a.range].engine->answer(a.offset, a.attempt) == nullptr)
    return std::nullopt;
  return a;
}

void on_answer(replay_actor_t* self, const open_attempt& a, const outcome* o,
               const std::string& error) {
  auto& st = self->state;
  auto& ra = st.agents[a.agent];
  auto& e = *ra.ranges[a.range].engine;
  if (o == nullptr || !o->ok) {
    e.fail(a.offset, error, false, clock_us(st), st.fx);
  } else {
    // Follow-ups a replayed attempt emits are kept with its outcome, not
    // published: a replay does not create live traffic.
    auto result = o->result;
    if (!o->emit.empty()) {
      auto r = json::parse(result.empty() ? "null" : result, nullptr, false);
      result = json{{"result", r}, {"emit", json::parse(o->emit, nullptr, false)}}.dump();
    }
    auto last_error = e.last_error(a.offset);
    e.ack(a.offset, {}, clock_us(st), st.fx);
    store_outcome(self, ra, ra.ranges[a.range].where, a.offset, "acked", a.attempt, last_error,
                  result, nullptr);
  }
  apply(self, a.agent, a.range);
  pump(self);
}

/// The agent's replay, resumed at its stored position.
replay_agent agent_of(const node_context& ctx, const std::string& id, const json& p) {
  replay_agent ra;
  for (auto& a : ctx.agents)
    if (a->cfg.name == p.value("agent", ""))
      ra.agent = a;
  if (!ra.agent)
    throw std::runtime_error("replay " + id + ": agent " + p.value("agent", "")
                             + " is no longer configured");
  auto cfg = ra.agent->cfg;
  cfg.ordered_by.clear(); // a replay's history goes out as fast as credits allow
  auto pos = p.value("pos", json::array({0, 0}));
  auto at = std::make_pair(pos.at(0).get<std::size_t>(), pos.at(1).get<std::uint64_t>());
  std::random_device seeds;
  group_effects none;
  for (auto& r : ranges_of(p)) {
    auto k = ra.ranges.size();
    auto end = r.hi + 1;
    auto cursor = k < at.first ? end : k == at.first ? std::max(at.second, r.lo) : r.lo;
    group_identity where{r.topic, r.topic_id, r.partition, cfg.name + ":replay-" + id,
                         cfg.name + "@replay/" + id};
    auto e = std::make_unique<consumer_group>(cfg, std::move(where), seeds());
    e->recover(std::min(cursor, end), {}, end, -1, 0, none);
    ra.ranges.push_back({r, std::move(e)});
  }
  return ra;
}

caf::behavior replay_actor(replay_actor_t* self, node_context* ctx, std::string id) {
  // The runner stores why the replay failed: keep what went wrong.
  self->set_exception_handler([](caf::scheduled_actor*, std::exception_ptr& e) -> caf::error {
    try {
      std::rethrow_exception(e);
    } catch (const std::exception& x) {
      return caf::make_error(caf::sec::runtime_error, std::string{x.what()});
    } catch (...) {
      return caf::make_error(caf::sec::runtime_error);
    }
  });
  auto& st = self->state;
  st.ctx = ctx;
  st.id = id;
  auto stored = ctx->store->meta(replay_key(id));
  if (!stored || !*stored)
    throw std::runtime_error("replay " + id + " is not stored");
  st.record = json::parse(**stored);
  for (auto& p : st.record.at("plan"))
    st.agents.push_back(agent_of(*ctx, id, p));
  recount(st);
  spdlog::info("replay {} running: {} deliveries to {} agents, {} done", id,
               st.record.value("events_total", 0ULL), st.agents.size(),
               st.record.value("events_done", 0ULL));
  self->send(self, wake_atom::value);
  self->delayed_send(self, tick_every, sweep_atom::value);
  return {
    [=](wake_atom) { pump(self); },
    [=](sweep_atom) {
      if (self->state.dirty)
        persist(self, false);
      pump(self);
      self->delayed_send(self, tick_every, sweep_atom::value);
    },
    [=](outcome_atom, outcome_ptr& o) {
      if (auto a = close_attempt(self, o->offset))
        on_answer(self, *a, o.get(), o->error);
    },
    [=](timeout_atom, std::uint64_t token) {
      // No credit to give back: the runner reset the dead instance's credits.
      if (auto a = close_attempt(self, token))
        on_answer(self, *a, nullptr, "no answer from the agent instance");
    },
    [=](retry_atom, std::uint64_t ai, std::uint64_t k, std::uint64_t offset) {
      auto& st = self->state;
      if (ai >= st.agents.size() || k >= st.agents[ai].ranges.size())
        return;
      auto& e = *st.agents[ai].ranges[k].engine;
      e.set_paused(st.agents[ai].agent->paused.load());
      e.retry_due(offset, clock_us(st), st.fx);
      apply(self, ai, k);
      pump(self);
    },
    [=](cancel_atom, reply_ptr& reply) {
      finish(self, "cancelled");
      (*reply)({});
    },
    [=](stop_atom) {
      // The node stops: keep the progress, resume after the restart.
      persist(self, true);
      self->quit();
    },
  };
}

} // namespace

caf::actor spawn_replay(caf::local_actor* parent, node_context* ctx, const std::string& id) {
  return parent->spawn<caf::detached + caf::monitored>(replay_actor, ctx, id);
}

} // namespace nerve::actors::detail
