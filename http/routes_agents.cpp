// Routes of agents: list, get, pause and resume, their consumer groups and
// their delivery counters.
#include <chrono>
#include <cmath>
#include <limits>
#include <map>

#include <nlohmann/json.hpp>

#include "http/problem.hpp"
#include "http/routes_private.hpp"

namespace nerve::http {

using json = nlohmann::json;

namespace {

json agent_json(const actors::agent_view& a) {
  json instances = json::array();
  for (auto& i : a.instances)
    instances.push_back({{"id", i.id},
                         {"state", i.state},
                         {"pid", i.pid == 0 ? json(nullptr) : json(i.pid)},
                         {"restarts", i.restarts},
                         {"in_flight", i.in_flight}});
  return {{"name", a.name},
          {"kind", a.kind},
          {"topics", a.topics},
          {"state", a.state},
          {"instances", std::move(instances)},
          {"config", json::parse(a.config_json, nullptr, false)}};
}

} // namespace

void list_agents(const api_env& env, responder& respond) {
  json list = json::array();
  for (auto& a : env.node.agents())
    list.push_back(agent_json(a));
  respond(json_response(200, json{{"agents", std::move(list)}}.dump()));
}

void get_agent(const api_env& env, const std::string& name, responder& respond) {
  for (auto& a : env.node.agents())
    if (a.name == name)
      return respond(json_response(200, agent_json(a).dump()));
  respond(problem(404, "not-found", "Not Found", "no agent named " + name.substr(0, 100)));
}

void pause_agent(const api_env& env, const std::string& name, bool paused, responder& respond) {
  env.node.set_paused(name, paused, [respond](actors::result<actors::agent_view> r) {
    if (!r)
      return respond(error_response(r.error()));
    respond(json_response(200, agent_json(*r).dump()));
  });
}

namespace {

/// Longest wait a GET groups may ask for.
constexpr std::uint64_t max_group_wait_ms = 60000;

/// Answers GET groups with what the groups show now.
void answer_groups(const api_env& env, const std::string& topic, const responder& respond) {
  // Read before the groups: they show at least this much progress, so a
  // wait on this index never misses a move.
  auto index = env.node.group_progress(topic);
  env.node.groups(topic, [respond, topic,
                          index](actors::result<std::vector<actors::group_view>> r) {
    if (!r)
      return respond(error_response(r.error()));
    json list = json::array();
    for (auto& g : *r) {
      json parts = json::array();
      for (auto& p : g.partitions)
        parts.push_back(
          {{"partition", p.partition},
           {"cursor", p.cursor},
           {"end_offset", p.end},
           {"lag", p.end - p.cursor},
           {"in_flight", p.in_flight},
           {"waiting_retry", p.waiting_retry},
           {"redelivering", p.redelivering},
           {"last_delivered_offset", p.last_delivered ? json(*p.last_delivered) : json(nullptr)}});
      list.push_back({{"agent", g.agent},
                      {"instances", g.instances},
                      {"pending", g.pending},
                      {"lag", g.lag},
                      {"last_delivered_offset",
                       g.last_delivered_offset ? json(*g.last_delivered_offset) : json(nullptr)},
                      {"partitions", std::move(parts)}});
    }
    json body{{"topic", topic}, {"groups", std::move(list)}};
    if (index)
      body["index"] = *index;
    auto out = json_response(200, body.dump());
    if (index)
      out.headers.emplace_back("X-Nerve-Index", std::to_string(*index));
    respond(std::move(out));
  });
}

} // namespace

void groups(const api_env& env, request& req, const std::string& topic, responder& respond) {
  std::map<std::string, std::string> q;
  std::optional<std::uint64_t> index;
  std::optional<std::uint64_t> wait_ms;
  if (auto err = parse_query(req.query, {"index", "wait_ms"}, q))
    return respond(std::move(*err));
  if (auto err = query_uint(q, "index", std::numeric_limits<std::uint64_t>::max(), index))
    return respond(std::move(*err));
  if (auto err = query_uint(q, "wait_ms", max_group_wait_ms, wait_ms))
    return respond(std::move(*err));
  if (wait_ms && !index)
    return respond(problem(400, "invalid-parameter", "Bad Request",
                           "wait_ms needs index: the index of an earlier answer to wait past"));
  if (!wait_ms || *wait_ms == 0)
    return answer_groups(env, topic, respond);
  // A long poll: answered once the cursors move past `index`, or after wait_ms.
  env.node.when_groups_move(topic, *index, std::chrono::milliseconds{*wait_ms},
                            [&env, topic, respond] { answer_groups(env, topic, respond); });
}

void agent_metrics(const api_env& env, request& req, responder& respond) {
  std::map<std::string, std::string> q;
  if (auto err = parse_query(req.query, {"agent", "topic"}, q))
    return respond(std::move(*err));
  auto round3 = [](double v) { return std::round(v * 1000.0) / 1000.0; };
  json rows = json::array();
  for (auto& m : env.node.metrics(q["topic"], q["agent"]))
    rows.push_back({{"agent", m.agent},
                    {"topic", m.topic},
                    {"received", m.received},
                    {"processed", m.processed},
                    {"failed", m.failed},
                    {"retried", m.retried},
                    {"dead_lettered", m.dead_lettered},
                    {"avg_ms", round3(m.avg_ms)},
                    {"p50_ms", round3(m.p50_ms)},
                    {"p99_ms", round3(m.p99_ms)},
                    {"success_rate", round3(m.success_rate)},
                    {"delivery_p50_ms", round3(m.delivery_p50_ms)},
                    {"delivery_p99_ms", round3(m.delivery_p99_ms)}});
  respond(json_response(200, json{{"metrics", std::move(rows)}}.dump()));
}

} // namespace nerve::http
