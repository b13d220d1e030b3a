// Replay planning: the window a replay selects (through the by_time index,
// or the events it names), each agent's history in it, and the stored
// record of the replay.
#include <algorithm>
#include <map>
#include <set>
#include <tuple>
#include <unordered_map>

#include <nlohmann/json.hpp>

#include "actors/consumer_group.hpp"
#include "actors/replay_plan.hpp"
#include "persistence/keys.hpp"

namespace nerve::actors::detail {

using json = nlohmann::json;

std::vector<range> ranges_of(const replay_plan& plan) {
  std::vector<range> out;
  for (auto& r : plan.ranges)
    out.push_back({r.topic, r.from.topic_id, r.from.partition, r.from.offset, r.to});
  return out;
}

std::string field_of(const json& e, const char* name) {
  auto it = e.find(name);
  return it != e.end() && it->is_string() ? it->get<std::string>() : std::string{};
}

bool filter_matches(const config::agent_filter& f, const json& e) {
  // The consumer groups' match, so a replay selects what live delivery did.
  return actors::filter_matches(f, field_of(e, "type"), field_of(e, "source"), field_of(e, "key"));
}

std::string outcome_key(const std::string& id, const std::string& agent, std::uint32_t topic_id,
                        std::uint32_t partition, std::uint64_t offset) {
  std::string k = "rout/" + id + "/" + agent + "/";
  persistence::keys::put_u32(k, topic_id);
  persistence::keys::put_u32(k, partition);
  persistence::keys::put_u64(k, offset);
  return k;
}

std::string marked(const std::string& text, const std::string& id) {
  auto end = text.find_last_of('}');
  if (end == std::string::npos)
    return text;
  return text.substr(0, end) + ",\"replay\":" + json(id).dump() + text.substr(end);
}

std::string id_of(const std::string& text) {
  constexpr std::string_view head = R"({"id":")";
  if (text.compare(0, head.size(), head) != 0)
    return json::parse(text, nullptr, false).value("id", "");
  auto end = text.find('"', head.size());
  return end == std::string::npos ? std::string{} : text.substr(head.size(), end - head.size());
}

namespace {

using topics_by_id = std::map<std::uint32_t, persistence::topic_info>;
/// (topic id << 32 | partition) -> first and last offset selected.
using span_map = std::unordered_map<std::uint64_t, std::pair<std::uint64_t, std::uint64_t>>;

std::uint64_t where_of(std::uint32_t tid, std::uint32_t p) {
  return (std::uint64_t{tid} << 32) | p;
}

/// The span of each wanted partition in the window [from, to): by_time from
/// both ends of the window: going forward, the first run of a partition
/// starts at its first offset in the window; going backward, the first run
/// seen ends at its last. A small window
/// is walked whole. Each walk stops once it has seen every partition, or
/// after a budget; a partition it did not reach (quiet in the window, or
/// busy only in its middle) has its bounds found by binary search on append
/// time (O(log n) reads).
tl::expected<span_map, error> window_spans(persistence::event_log& log, const replay_request& req,
                                           const topics_by_id& topics,
                                           const std::unordered_map<std::uint32_t, bool>& wanted) {
  std::set<std::uint64_t> all;
  for (auto& [tid, t] : topics)
    if (wanted.at(tid))
      for (std::uint32_t p = 0; p < t.partitions; ++p)
        all.insert(where_of(tid, p));
  const std::uint64_t budget = 1024 + 16 * all.size();
  std::unordered_map<std::uint64_t, std::uint64_t> first, last;
  bool whole = true;
  auto walk = [&](bool backward, std::unordered_map<std::uint64_t, std::uint64_t>& seen) {
    return log.scan_time(
      req.from_us, req.to_us,
      [&, visited = std::uint64_t{0}](std::int64_t, std::uint32_t tid, std::uint32_t p,
                                      std::uint64_t lo, std::uint64_t hi) mutable {
        auto where = where_of(tid, p);
        if (all.count(where) > 0) {
          seen.try_emplace(where, backward ? hi : lo);
          if (!backward)
            last[where] = hi; // exact if the walk ends at `to`
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
    return tl::make_unexpected(from_storage(forward.error()));
  if (!whole) {
    last.clear();
    auto backward = walk(true, last);
    if (!backward)
      return tl::make_unexpected(from_storage(backward.error()));
  }
  span_map spans;
  for (auto where : all) {
    auto lo = first.find(where);
    auto hi = last.find(where);
    if (lo != first.end() && hi != last.end()) {
      spans[where] = {lo->second, hi->second};
      continue;
    }
    if (whole)
      continue; // the walk saw the whole window: no event of it here
    auto& t = topics.at(static_cast<std::uint32_t>(where >> 32));
    auto span = log.time_span(t, static_cast<std::uint32_t>(where), req.from_us, req.to_us);
    if (!span)
      return tl::make_unexpected(from_storage(span.error()));
    if (*span)
      spans[where] = **span;
  }
  return spans;
}

/// The window of a replay as ranges in (topic name, partition) order: stable
/// across calls and restarts. Named events are one-offset ranges each.
tl::expected<std::vector<range>, error>
select_window(persistence::event_log& log, const replay_request& req, const topics_by_id& topics) {
  std::set<std::string> topic_filter(req.topics.begin(), req.topics.end());
  // Per by_time key: one hash lookup for the topic's verdict, one for its
  // partition's range (a window scan visits every event in it).
  std::unordered_map<std::uint32_t, bool> wanted;
  for (auto& [tid, t] : topics)
    wanted[tid] = topic_filter.empty() || topic_filter.count(t.name) > 0;
  span_map spans;
  std::set<std::tuple<std::uint32_t, std::uint32_t, std::uint64_t>> listed; // event-id mode
  if (req.event_ids.empty()) {
    auto found = window_spans(log, req, topics, wanted);
    if (!found)
      return tl::make_unexpected(found.error());
    spans = std::move(*found);
  }
  for (auto& eid : req.event_ids) {
    auto got = log.get_by_id(eid);
    if (!got)
      return tl::make_unexpected(from_storage(got.error()));
    if (!*got)
      return tl::make_unexpected(error{errc::not_found, "no event with id " + eid});
    auto e = json::parse(**got, nullptr, false);
    auto t = log.find_topic(e.value("topic", ""));
    if (!t || !wanted[t->id])
      continue;
    auto p = e.value("partition", 0U);
    std::uint64_t offset = e.value("offset", 0ULL);
    auto [it, fresh] = spans.try_emplace(where_of(t->id, p), offset, offset);
    if (!fresh) {
      it->second.first = std::min(it->second.first, offset);
      it->second.second = std::max(it->second.second, offset);
    }
    listed.emplace(t->id, p, offset);
  }
  // (topic id, partition) -> [lo, hi]
  std::map<std::pair<std::uint32_t, std::uint32_t>, std::pair<std::uint64_t, std::uint64_t>> parts;
  for (auto& [where, span] : spans)
    parts[{static_cast<std::uint32_t>(where >> 32), static_cast<std::uint32_t>(where)}] = span;
  std::vector<range> window;
  for (auto& [where, span] : parts) {
    auto& t = topics.at(where.first);
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
  return window;
}

/// Events of `r` from `lo` that pass the agent's filter.
tl::expected<std::uint64_t, error> count_matching(persistence::event_log& log,
                                                  const persistence::topic_info& t, const range& r,
                                                  std::uint64_t lo,
                                                  const config::agent_filter& filter) {
  std::uint64_t n = 0;
  for (auto at = lo; at <= r.hi;) {
    auto got = log.read_stored(t, r.partition, at, r.hi, 512);
    if (!got)
      return tl::make_unexpected(from_storage(got.error()));
    if (got->empty())
      break;
    for (auto& e : *got)
      if (filter_matches(filter, json::parse(e.json, nullptr, false)))
        ++n;
    at = got->back().offset + 1;
  }
  return n;
}

/// One agent's part of the plan: its ranges in the window and how many
/// events of each topic its history holds. A named agent gets the whole
/// window; another only what its actors were given, from its group's start.
tl::expected<replay_plan, error> plan_agent(const node_context& ctx, const agent_runtime& agent,
                                            bool is_named, const std::vector<range>& window,
                                            const topics_by_id& topics) {
  replay_plan plan;
  plan.agent = agent.cfg.name;
  plan.named = is_named;
  for (auto& r : window) {
    if (!agent.subscribes(r.topic))
      continue;
    auto lo = r.lo;
    if (!is_named) {
      auto start = group_start(ctx, agent.cfg.name, r.topic_id, r.partition);
      if (!start)
        return tl::make_unexpected(start.error());
      if (!*start || **start > r.hi)
        continue;
      lo = std::max(lo, **start);
    }
    std::uint64_t n = r.hi - lo + 1;
    if (has_filter(agent.cfg.filter)) {
      auto matching = count_matching(*ctx.log, topics.at(r.topic_id), r, lo, agent.cfg.filter);
      if (!matching)
        return tl::make_unexpected(matching.error());
      n = *matching;
    }
    if (n == 0)
      continue;
    plan.counts[r.topic] += n;
    plan.events += n;
    plan.ranges.push_back({r.topic, {r.topic_id, r.partition, lo}, r.hi});
  }
  return plan;
}

} // namespace

result<replay_record> plan_replay(const node_context& ctx, const replay_request& req,
                                  const std::string& id, std::int64_t now_us) {
  topics_by_id topics;
  for (auto& t : ctx.log->topics())
    topics[t.id] = t;
  auto window = select_window(*ctx.log, req, topics);
  if (!window)
    return tl::make_unexpected(window.error());
  if (ctx.replication) {
    // Every copy holds the window: each node replays the partitions it
    // leads, so each event goes out once (its leader's agents deliver it).
    std::vector<range> led;
    for (auto& r : *window) {
      auto role = ctx.routes.role_of(r.topic, r.partition);
      if (role && role->role == replica_role::kind::leader) {
        led.push_back(r);
        continue;
      }
      bool holds = role
                   && std::find(role->replicas.begin(), role->replicas.end(), ctx.replication->self)
                        != role->replicas.end();
      if (holds && role->leader.empty())
        return tl::make_unexpected(error{
          errc::unavailable, "partition " + r.topic + "/" + std::to_string(r.partition)
                               + " has no leader now (an election is under way); retry shortly"});
    }
    *window = std::move(led);
  }
  std::set<std::string> named(req.agents.begin(), req.agents.end());
  replay_record record;
  for (auto& agent : ctx.agents.all()) {
    bool is_named = named.count(agent->cfg.name) > 0;
    if (!named.empty() && !is_named)
      continue;
    auto part = plan_agent(ctx, *agent, is_named, *window, topics);
    if (!part)
      return tl::make_unexpected(part.error());
    record.events_total += part->events;
    record.plan.push_back(std::move(*part));
  }
  // A dry run, or one with nothing to send, is done once planned.
  bool done = req.dry_run || record.events_total == 0;
  record.id = id;
  record.mode = req.dry_run ? replay_mode::dry_run : replay_mode::redeliver;
  record.state = done ? replay_state::done : replay_state::running;
  record.from_us = req.from_us;
  record.to_us = req.to_us;
  record.topics = req.topics;
  record.agents = req.agents;
  record.event_ids = req.event_ids;
  record.created_us = now_us;
  record.finished_us = done ? now_us : 0;
  record.events_done = req.dry_run ? record.events_total : 0;
  return record;
}

replay_view replay_view_of(const replay_record& r) {
  replay_view v;
  v.id = r.id;
  v.state = to_string(r.state);
  v.mode = to_string(r.mode);
  v.from_us = r.from_us;
  v.to_us = r.to_us;
  v.topics = r.topics;
  v.agents = r.agents;
  v.event_ids = r.event_ids;
  v.events_total = r.events_total;
  v.events_done = r.events_done;
  v.acked = r.acked;
  v.failed = r.failed;
  v.retried = r.retried;
  v.dead_lettered = r.dead_lettered;
  v.created_us = r.created_us;
  v.finished_us = r.finished_us;
  v.error = r.error;
  for (auto& p : r.plan)
    for (auto& [topic, n] : p.counts)
      v.counts.push_back({p.agent, topic, n});
  return v;
}

} // namespace nerve::actors::detail
