// query_service: topics, events, agents, groups and the delivery counters'
// math (histograms summed over partitions, quantiles, success rates).
#include "actors/query_service.hpp"

#include <algorithm>
#include <shared_mutex>

#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include "actors/histogram_sum.hpp"
#include "actors/replay_plan.hpp"

namespace nerve::actors::detail {

namespace {

agent_view view_of(agent_runtime& a) {
  agent_view v;
  v.name = a.cfg.name;
  v.kind = config::to_string(a.cfg.kind);
  v.topics = a.topics();
  bool any_running = false;
  bool any_restarting = false;
  for (std::size_t i = 0; i < a.instances.size(); ++i) {
    auto& inst = *a.instances[i];
    auto state = inst.state.load();
    any_running |= state == instance_state::running;
    any_restarting |= state == instance_state::restarting || state == instance_state::starting;
    v.instances.push_back(
      {i, to_string(state), inst.pid.load(), inst.restarts.load(), a.in_flight(i)});
  }
  v.state = a.paused.load()  ? "paused"
            : any_running    ? "running"
            : any_restarting ? "restarting"
                             : "crashed";
  nlohmann::json c{
    {"instances", a.cfg.instances},
    {"max_in_flight", a.cfg.max_in_flight},
    {"max_retries", a.cfg.max_retries},
    {"timeout_ms", a.cfg.timeout.count()},
    {"backoff",
     {{"initial_ms", a.cfg.backoff_initial.count()}, {"max_ms", a.cfg.backoff_max.count()}}},
    {"start", config::to_string(a.cfg.start)}};
  if (a.cfg.redis_group) {
    // Made by XGROUP CREATE: Redis' semantics, nothing times out or retries.
    c["made_by"] = "XGROUP CREATE";
    c["timeout_ms"] = nullptr;
    c["max_retries"] = nullptr;
  }
  if (a.cfg.ordered_by == config::ordering::key)
    c["ordered_by"] = config::to_string(a.cfg.ordered_by);
  if (a.cfg.kind == config::agent_kind::process)
    c["command"] = a.cfg.command;
  if (a.cfg.kind == config::agent_kind::http)
    c["url"] = a.cfg.url;
  if (a.cfg.kind == config::agent_kind::builtin)
    c["handler"] = a.cfg.handler;
  auto& f = a.cfg.filter;
  if (f.type || f.source || f.key) {
    auto& fj = c["filter"] = nlohmann::json::object();
    if (f.type)
      fj["type"] = *f.type;
    if (f.source)
      fj["source"] = *f.source;
    if (f.key)
      fj["key"] = *f.key;
  }
  v.config_json = c.dump();
  return v;
}

} // namespace

/// One agent's consumer group on one topic, from the live counters.
group_view group_of(const topic_route& route, const agent_runtime& agent) {
  group_view g;
  g.agent = agent.cfg.name;
  g.instances = static_cast<std::uint32_t>(agent.instances.size());
  for (std::uint32_t p = 0; p < route.slots.size(); ++p)
    for (auto* gs : route.slots[p]->group_list()) {
      if (gs->agent_index != agent.index)
        continue;
      group_view::part part;
      part.partition = p;
      part.cursor = gs->cursor.load();
      part.end = std::max(gs->end.load(), part.cursor);
      part.in_flight = gs->in_flight.load();
      part.waiting_retry = gs->waiting_retry.load();
      part.redelivering = gs->redelivering.load();
      if (auto last = gs->last_delivered.load(); last >= 0) {
        part.last_delivered = static_cast<std::uint64_t>(last);
        g.last_delivered_offset
          = std::max<std::uint64_t>(g.last_delivered_offset.value_or(0), *part.last_delivered);
      }
      g.pending += part.in_flight + part.waiting_retry + part.redelivering;
      g.lag += part.end - part.cursor;
      g.partitions.push_back(part);
    }
  return g;
}

query_service::query_service(const node_context& ctx, query_pool& pool, actor_sender& sender)
  : ctx_(ctx), pool_(pool), sender_(sender) {
}

void query_service::topics(callback<std::vector<topic_view>> done) {
  pool_.post([this, done = std::move(done)] {
    std::vector<topic_view> out;
    for (auto& t : ctx_.log->topics()) {
      topic_view v{t.name, t.partitions, {}};
      for (std::uint32_t p = 0; p < t.partitions; ++p) {
        auto s = ctx_.log->stats(t, p);
        v.partition_stats.push_back({p, s.first_offset, s.next_offset, s.bytes});
      }
      out.push_back(std::move(v));
    }
    done(std::move(out));
  });
}

void query_service::read_events(const std::string& topic, std::optional<std::uint32_t> partition,
                                std::uint64_t from_offset, std::size_t limit,
                                callback<events_page> done) {
  pool_.post([this, topic, partition, from_offset, limit, done = std::move(done)] {
    auto t = ctx_.log->find_topic(topic);
    if (!t)
      return done(
        tl::make_unexpected(error{errc::not_found, "topic " + topic + " does not exist"}));
    if (partition && *partition >= t->partitions)
      return done(tl::make_unexpected(
        error{errc::invalid, "partition " + std::to_string(*partition) + " does not exist; " + topic
                               + " has partitions 0 to " + std::to_string(t->partitions - 1)}));
    events_page page;
    if (partition)
      page.next_offset = from_offset;
    std::uint32_t first = partition ? *partition : 0;
    std::uint32_t last = partition ? *partition : t->partitions - 1;
    for (auto p = first; p <= last && page.events.size() < limit; ++p) {
      auto got = ctx_.log->read(*t, p, from_offset, limit - page.events.size());
      if (!got)
        return done(tl::make_unexpected(from_storage(got.error())));
      for (auto& e : *got)
        page.events.push_back(std::move(e));
      if (partition)
        page.next_offset = from_offset + got->size();
    }
    if (partition && !page.events.empty()) {
      // Offsets may skip past events removed by retention: continue after
      // the last one returned.
      auto& last_event = page.events.back();
      auto pos = last_event.find("\"offset\":");
      if (pos != std::string::npos)
        page.next_offset = std::stoull(last_event.substr(pos + 9)) + 1;
    }
    done(std::move(page));
  });
}

void query_service::get_event(const std::string& id, callback<event_view> done) {
  pool_.post([this, id, done = std::move(done)] {
    auto got = ctx_.log->get_by_id(id);
    if (!got)
      return done(tl::make_unexpected(from_storage(got.error())));
    if (!*got)
      return done(tl::make_unexpected(error{errc::not_found, "no event with id " + id}));
    done(event_of(id, std::move(**got)));
  });
}

result<event_view> query_service::event_of(const std::string& id, std::string text) const {
  event_view v;
  v.event = std::move(text);
  auto e = nlohmann::json::parse(v.event, nullptr, false);
  auto topic = e.value("topic", "");
  auto t = ctx_.log->find_topic(topic);
  if (!t)
    return v;
  auto p = e.value("partition", 0U);
  auto offset = e.value("offset", 0ULL);
  for (auto& agent : ctx_.agents.all()) {
    if (!agent->subscribes(topic))
      continue;
    delivery_view d;
    d.agent = agent->cfg.name;
    auto& f = agent->cfg.filter;
    if ((f.type && *f.type != e.value("type", ""))
        || (f.source && *f.source != e.value("source", ""))
        || (f.key && *f.key != e.value("key", ""))) {
      d.state = "skipped";
      v.deliveries.push_back(std::move(d));
      continue;
    }
    auto start = group_start(ctx_, d.agent, t->id, p);
    if (start && *start && offset < **start)
      continue; // appended before the agent subscribed: never its to handle
    auto cursor = ctx_.store->cursor(d.agent, t->id, p);
    if (!start || !cursor)
      return tl::make_unexpected(error{errc::storage, "reading delivery state"});
    bool ok = true;
    d = live_delivery_state(ctx_, *agent, t->id, p, offset, id, *cursor, ok);
    if (!ok)
      return tl::make_unexpected(error{errc::storage, "reading delivery state"});
    v.deliveries.push_back(std::move(d));
  }
  return v;
}
std::vector<agent_view> query_service::agents() const {
  std::vector<agent_view> out;
  for (auto& a : ctx_.agents.all())
    if (!a->cfg.redis_group || !a->topics().empty()) // XGROUP DESTROY took its last stream
      out.push_back(view_of(*a));
  return out;
}

void query_service::set_paused(const std::string& name, bool paused, callback<agent_view> done) {
  auto agent = find_agent(ctx_, name);
  if (!agent)
    return done(tl::make_unexpected(error{errc::not_found, "no agent named " + name}));
  agent->paused = paused;
  spdlog::info("agent={}: {}", name, paused ? "paused" : "resumed");
  if (!paused) {
    std::shared_lock<std::shared_mutex> guard{ctx_.routes.mutex};
    for (auto& [topic, route] : ctx_.routes.topics)
      if (agent->subscribes(topic))
        for (auto& slot : route->slots)
          sender_.wake(*slot);
  }
  done(view_of(*agent));
}

std::vector<metrics_row> query_service::metrics(const std::string& topic,
                                                const std::string& agent) const {
  std::vector<metrics_row> out;
  std::shared_lock<std::shared_mutex> guard{ctx_.routes.mutex};
  std::vector<std::string> names;
  for (auto& [name, route] : ctx_.routes.topics)
    names.push_back(name);
  std::sort(names.begin(), names.end());
  for (auto& name : names) {
    if (!topic.empty() && name != topic)
      continue;
    auto& route = ctx_.routes.topics.at(name);
    for (auto& a : ctx_.agents.all()) {
      if ((!agent.empty() && a->cfg.name != agent) || !a->subscribes(name))
        continue;
      metrics_row m;
      m.agent = a->cfg.name;
      m.topic = name;
      histogram_sum processing;
      histogram_sum delivery;
      for (auto& slot : route->slots)
        for (auto* gs : slot->group_list()) {
          if (gs->agent_index != a->index)
            continue;
          auto& c = gs->totals;
          m.received += c.received;
          m.processed += c.processed;
          m.failed += c.failed;
          m.timed_out += c.timed_out;
          m.retried += c.retried;
          m.dead_lettered += c.dead_lettered;
          processing.add(c.processing);
          delivery.add(c.delivery);
        }
      m.processing = processing.view();
      m.avg_ms = processing.mean_ms();
      m.p50_ms = processing.quantile_ms(0.50);
      m.p99_ms = processing.quantile_ms(0.99);
      m.delivery_p50_ms = delivery.quantile_ms(0.50);
      m.delivery_p99_ms = delivery.quantile_ms(0.99);
      if (m.received > 0)
        m.success_rate = 100.0 * static_cast<double>(m.processed) / static_cast<double>(m.received);
      out.push_back(std::move(m));
    }
  }
  return out;
}

void query_service::groups(const std::string& topic, callback<std::vector<group_view>> done) {
  auto route = ctx_.routes.find(topic);
  if (!route)
    return done(tl::make_unexpected(error{errc::not_found, "topic " + topic + " does not exist"}));
  std::vector<group_view> out;
  for (auto& agent : ctx_.agents.all())
    if (agent->subscribes(topic))
      out.push_back(group_of(*route, *agent));
  done(std::move(out));
}

} // namespace nerve::actors::detail
