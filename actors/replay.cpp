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
#include <set>
#include <unordered_map>

#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include "actors/runtime.hpp"
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

bool filter_matches(const config::agent_filter& f, const json& e) {
  auto field = [&e](const char* name) {
    auto it = e.find(name);
    return it != e.end() && it->is_string() ? it->get<std::string>() : std::string{};
  };
  return (!f.type || *f.type == field("type")) && (!f.source || *f.source == field("source"))
         && (!f.key || *f.key == field("key"));
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

/// One event of an agent's history on its way through the replay.
struct replay_rec {
  std::size_t range = 0;
  std::uint64_t offset = 0;
  std::shared_ptr<const std::string> event; ///< marked with the replay id
  std::string event_id;
  std::uint32_t attempts = 0;
  bool in_flight = false;
  std::uint64_t token = 0; ///< of the attempt in flight
  std::int64_t first_failed_us = 0;
  std::int64_t last_failed_us = 0;
  std::string last_error;
};

using position = std::pair<std::size_t, std::uint64_t>; ///< range index, offset

struct replay_agent {
  agent_ptr agent;
  std::vector<range> ranges;
  position next{0, 0}; ///< next to read
  bool exhausted = false;
  std::deque<position> ready;          ///< read, to send (first attempts and retries)
  std::map<position, replay_rec> open; ///< read and not finished
  std::size_t in_flight = 0;
  std::size_t rr = 0;
  std::uint64_t done = 0;
  /// Resumed with outcomes stored: skip the events that have one.
  bool skip_settled = false;
};

struct replay_state {
  node_context* ctx = nullptr;
  std::string id;
  json record;
  std::vector<replay_agent> agents;
  std::unordered_map<std::uint64_t, std::pair<std::size_t, position>> tokens;
  std::uint64_t next_token = 1;
  bool dirty = false;
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

void persist(replay_actor_t* self, bool sync) {
  auto& st = self->state;
  std::uint64_t done = 0;
  for (std::size_t i = 0; i < st.agents.size(); ++i) {
    auto& ra = st.agents[i];
    position low = ra.next;
    if (!ra.open.empty())
      low = std::min(low, ra.open.begin()->first);
    st.record["plan"][i]["pos"] = json::array({low.first, low.second});
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

/// Reads the next events of one agent's history into `ready`.
void fill(replay_actor_t* self, replay_agent& ra) {
  auto& st = self->state;
  while (!ra.exhausted && ra.ready.size() < read_ahead) {
    if (ra.next.first >= ra.ranges.size()) {
      ra.exhausted = true;
      return;
    }
    auto& r = ra.ranges[ra.next.first];
    auto at = std::max(ra.next.second, r.lo);
    auto t = st.ctx->log->find_topic(r.topic);
    if (!t || at > r.hi) {
      ra.next = {ra.next.first + 1, 0};
      continue;
    }
    auto want = std::min<std::uint64_t>(read_ahead, r.hi - at + 1);
    auto got = st.ctx->log->read_stored(*t, r.partition, at, r.hi, want);
    if (!got)
      throw std::runtime_error("reading events: " + got.error().message);
    for (auto& e : *got) {
      if (has_filter(ra.agent->cfg.filter)
          && !filter_matches(ra.agent->cfg.filter, json::parse(e.json, nullptr, false)))
        continue;
      if (ra.skip_settled && settled_before(st, ra, r, e.offset))
        continue;
      position pos{ra.next.first, e.offset};
      replay_rec rec;
      rec.range = ra.next.first;
      rec.offset = e.offset;
      rec.event_id = id_of(e.json);
      rec.event = std::make_shared<const std::string>(marked(e.json, st.id));
      ra.open.emplace(pos, std::move(rec));
      ra.ready.push_back(pos);
    }
    // Fewer than asked: the rest of the range is gone (retention) or read.
    bool done = got->size() < want || got->back().offset >= r.hi;
    ra.next
      = done ? position{ra.next.first + 1, 0} : position{ra.next.first, got->back().offset + 1};
  }
}

void dispatch(replay_actor_t* self, std::size_t ai) {
  auto& st = self->state;
  auto& ra = st.agents[ai];
  if (ra.agent->paused.load())
    return;
  while (!ra.ready.empty() && ra.in_flight < cap_of(*ra.agent)) {
    auto it = ra.open.find(ra.ready.front());
    if (it == ra.open.end() || it->second.in_flight) {
      ra.ready.pop_front();
      continue;
    }
    auto credit = ra.agent->take_credit(ra.rr, caf::actor{self});
    if (!credit)
      return;
    ra.ready.pop_front();
    auto& rec = it->second;
    ++rec.attempts;
    rec.in_flight = true;
    rec.token = st.next_token++;
    st.tokens[rec.token] = {ai, it->first};
    ++ra.in_flight;
    auto d = std::make_shared<delivery>();
    d->partition = caf::actor{self};
    d->group = ai;
    d->instance = credit->first;
    d->offset = rec.token;
    d->attempt = rec.attempts;
    d->event_id = rec.event_id;
    d->delivery_id = rec.event_id + ":" + ra.agent->cfg.name + ":replay-" + st.id + ":"
                     + std::to_string(rec.attempts);
    d->event = rec.event;
    self->send(credit->second, deliver_atom::value, std::move(d));
    // The instance times the attempt out; this catches an instance that died.
    self->delayed_send(self, ra.agent->cfg.timeout + std::chrono::seconds{5}, timeout_atom::value,
                       rec.token);
  }
}

void pump(replay_actor_t* self) {
  auto& st = self->state;
  bool all_done = true;
  for (std::size_t ai = 0; ai < st.agents.size(); ++ai) {
    auto& ra = st.agents[ai];
    fill(self, ra);
    dispatch(self, ai);
    if (!ra.exhausted || !ra.open.empty())
      all_done = false;
  }
  if (all_done)
    finish(self, "done");
}

/// Stores the outcome of one event under the replay and forgets it.
void settle(replay_actor_t* self, std::size_t ai, std::map<position, replay_rec>::iterator it,
            const std::string& outcome, const std::string& result) {
  auto& st = self->state;
  auto& ra = st.agents[ai];
  auto& rec = it->second;
  auto& r = ra.ranges[rec.range];
  json o{{"outcome", outcome}, {"attempts", rec.attempts}};
  if (!rec.last_error.empty())
    o["error"] = rec.last_error;
  if (!result.empty())
    o["result"] = json::parse(result, nullptr, false);
  persistence::state_batch b;
  b.put_meta(outcome_key(st.id, ra.agent->cfg.name, r.topic_id, r.partition, rec.offset), o.dump());
  if (outcome == "dead_lettered") {
    persistence::dlq_entry e;
    e.agent = ra.agent->cfg.name;
    e.topic = r.topic;
    e.topic_id = r.topic_id;
    e.partition = r.partition;
    e.offset = rec.offset;
    // An id of its own: the live group's id would overwrite the live entry
    // for this event, or make a live-acked event look dead-lettered.
    e.id = persistence::delivery_store::dlq_id(e.agent + "@replay/" + st.id, e.topic_id,
                                               e.partition, rec.offset);
    e.event_id = rec.event_id;
    e.event = *rec.event; // carries the replay mark
    e.error = rec.last_error + " (replay " + st.id + ")";
    e.attempts = rec.attempts;
    e.first_failed_us = rec.first_failed_us;
    e.last_failed_us = rec.last_failed_us;
    auto had = st.ctx->store->dlq_get(e.id);
    b.put_dlq(e);
    if (had && !*had)
      ++st.ctx->dlq_size;
    spdlog::warn("agent={} topic={} partition={} event={} dlq={} replay={}: moved to the DLQ "
                 "after {} attempts: {}",
                 e.agent, e.topic, e.partition, e.event_id, e.id, st.id, e.attempts, e.error);
  }
  if (auto ok = st.ctx->store->commit(b, false); !ok)
    spdlog::error("replay {}: storing an outcome: {}", st.id, ok.error().message);
  ra.open.erase(it);
  ++ra.done;
  st.dirty = true;
}

void on_failure(replay_actor_t* self, std::size_t ai, std::map<position, replay_rec>::iterator it,
                const std::string& error) {
  auto& st = self->state;
  auto& ra = st.agents[ai];
  auto& rec = it->second;
  auto now = clock_us(st);
  st.record["failed"] = st.record.value("failed", 0ULL) + 1;
  rec.last_error = error;
  if (rec.first_failed_us == 0)
    rec.first_failed_us = now;
  rec.last_failed_us = now;
  if (rec.attempts > ra.agent->cfg.max_retries) {
    st.record["dead_lettered"] = st.record.value("dead_lettered", 0ULL) + 1;
    settle(self, ai, it, "dead_lettered", {});
    return;
  }
  st.record["retried"] = st.record.value("retried", 0ULL) + 1;
  auto delay = backoff(ra.agent->cfg.backoff_initial, ra.agent->cfg.backoff_max, rec.attempts);
  self->delayed_send(self, delay, retry_atom::value, static_cast<std::uint64_t>(ai),
                     static_cast<std::uint64_t>(it->first.first), it->first.second);
}

/// Ends the attempt `token`; answers where it was, if it still is open.
std::optional<std::pair<std::size_t, std::map<position, replay_rec>::iterator>>
close_attempt(replay_actor_t* self, std::uint64_t token) {
  auto& st = self->state;
  auto t = st.tokens.find(token);
  if (t == st.tokens.end())
    return std::nullopt; // stale
  auto [ai, pos] = t->second;
  st.tokens.erase(t);
  auto& ra = st.agents[ai];
  auto it = ra.open.find(pos);
  if (it == ra.open.end() || !it->second.in_flight || it->second.token != token)
    return std::nullopt;
  it->second.in_flight = false;
  --ra.in_flight;
  return std::make_pair(ai, it);
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
  for (auto& p : st.record.at("plan")) {
    replay_agent ra;
    for (auto& a : ctx->agents)
      if (a->cfg.name == p.value("agent", ""))
        ra.agent = a;
    if (!ra.agent)
      throw std::runtime_error("replay " + id + ": agent " + p.value("agent", "")
                               + " is no longer configured");
    ra.ranges = ranges_of(p);
    auto pos = p.value("pos", json::array({0, 0}));
    ra.next = {pos.at(0).get<std::size_t>(), pos.at(1).get<std::uint64_t>()};
    st.agents.push_back(std::move(ra));
  }
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
      auto found = close_attempt(self, o->offset);
      if (!found)
        return;
      auto [ai, it] = *found;
      if (o->ok) {
        auto& st = self->state;
        st.record["acked"] = st.record.value("acked", 0ULL) + 1;
        // Follow-ups a replayed attempt emits are kept with its outcome, not
        // published: a replay does not create live traffic.
        auto result = o->result;
        if (!o->emit.empty()) {
          auto r = json::parse(result.empty() ? "null" : result, nullptr, false);
          result = json{{"result", r}, {"emit", json::parse(o->emit, nullptr, false)}}.dump();
        }
        settle(self, ai, it, "acked", result);
      } else {
        on_failure(self, ai, it, o->error);
      }
      pump(self);
    },
    [=](timeout_atom, std::uint64_t token) {
      auto found = close_attempt(self, token);
      if (!found)
        return;
      auto [ai, it] = *found;
      // No credit to give back: the runner reset the dead instance's credits.
      on_failure(self, ai, it, "no answer from the agent instance");
      pump(self);
    },
    [=](retry_atom, std::uint64_t ai, std::uint64_t range_index, std::uint64_t offset) {
      auto& st = self->state;
      if (ai < st.agents.size())
        st.agents[ai].ready.push_front({static_cast<std::size_t>(range_index), offset});
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
