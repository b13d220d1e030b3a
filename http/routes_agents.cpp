// Routes of agents: list, get, pause and resume, their consumer groups and
// their delivery counters.
#include <charconv>
#include <chrono>
#include <cmath>
#include <limits>
#include <map>
#include <optional>
#include <string>

#include <nlohmann/json.hpp>

#include "actors/agent_line.hpp"
#include "actors/event_input.hpp"
#include "actors/stored_event.hpp"
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

/// `,"name":v` (no comma first when `first`).
void append_field(std::string& out, const char* name, std::uint64_t v, bool first = false) {
  out += first ? "\"" : ",\"";
  out += name;
  out += "\":";
  char buf[24];
  auto [end, ec] = std::to_chars(buf, buf + sizeof buf, v);
  out.append(buf, end);
}

/// `,"name":v` or `,"name":null`.
void append_field(std::string& out, const char* name, const std::optional<std::uint64_t>& v) {
  if (v)
    return append_field(out, name, *v);
  out += ",\"";
  out += name;
  out += "\":null";
}

/// The body of GET groups, written as text: a long poll on the groups (an
/// operator's "wait until the agent caught up", bench/deliver's watch of the
/// acks) is answered each time a cursor moves, and building it from nlohmann
/// objects cost more than the rest of the answer.
std::string groups_body(const std::string& topic, const std::vector<actors::group_view>& groups,
                        const std::optional<std::uint64_t>& index) {
  std::string body;
  body.reserve(96 + groups.size() * 1000);
  body += "{\"topic\":";
  actors::stored::append_quoted(body, topic);
  body += ",\"groups\":[";
  for (std::size_t i = 0; i < groups.size(); ++i) {
    const auto& g = groups[i];
    body += i ? ",{\"agent\":" : "{\"agent\":";
    actors::stored::append_quoted(body, g.agent);
    append_field(body, "instances", g.instances);
    append_field(body, "pending", g.pending);
    append_field(body, "lag", g.lag);
    append_field(body, "last_delivered_offset", g.last_delivered_offset);
    body += ",\"partitions\":[";
    for (std::size_t j = 0; j < g.partitions.size(); ++j) {
      const auto& p = g.partitions[j];
      body += j ? ",{" : "{";
      append_field(body, "partition", p.partition, true);
      append_field(body, "cursor", p.cursor);
      append_field(body, "end_offset", p.end);
      append_field(body, "lag", p.end - p.cursor);
      append_field(body, "in_flight", p.in_flight);
      append_field(body, "waiting_retry", p.waiting_retry);
      append_field(body, "redelivering", p.redelivering);
      append_field(body, "last_delivered_offset", p.last_delivered);
      body += '}';
    }
    body += "]}";
  }
  body += ']';
  if (index)
    append_field(body, "index", *index);
  body += '}';
  return body;
}

/// Answers GET groups with what the groups show now.
void answer_groups(const api_env& env, const std::string& topic, const responder& respond) {
  // Read before the groups: they show at least this much progress, so a
  // wait on this index never misses a move.
  auto index = env.node.group_progress(topic);
  env.node.groups(topic,
                  [respond, topic, index](actors::result<std::vector<actors::group_view>> r) {
                    if (!r)
                      return respond(error_response(r.error()));
                    auto out = json_response(200, groups_body(topic, *r, index));
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

namespace {

/// Most deliveries one fetch may ask for, and longest wait.
constexpr std::uint64_t max_fetch = 1000;
constexpr std::uint64_t max_fetch_wait_ms = 60000;

/// The body of a pull route as a JSON object; else answers 400 and nothing.
std::optional<json> pull_body(const request& req, const std::string& expected,
                              const responder& respond, bool empty_ok = false) {
  if (empty_ok && req.body.find_first_not_of(" \t\r\n") == std::string::npos)
    return json::object();
  auto body = actors::parse_json(req.body);
  if (!body) {
    respond(
      problem(400, "invalid-json", "Bad Request", "the body is not valid JSON: " + body.error()));
    return std::nullopt;
  }
  if (!body->is_object()) {
    respond(
      problem(400, "invalid-request", "Bad Request", "the body must be an object: " + expected));
    return std::nullopt;
  }
  return std::move(*body);
}

/// A JSON value's text for a pull reply's `result`; `emit` must be an array.
std::optional<std::string> emit_text(const json& v) {
  if (!v.is_array())
    return std::nullopt;
  return v.dump();
}

/// Answers the node's verdict on acks or nacks.
actors::callback<std::vector<std::string>> pull_verdict(const responder& respond,
                                                        const char* counted, std::size_t n) {
  return [respond, counted, n](actors::result<std::vector<std::string>> r) {
    if (!r)
      return respond(error_response(r.error()));
    if (!r->empty()) {
      auto out = problem(409, "not-in-flight", "Conflict",
                         std::to_string(r->size()) + " of " + std::to_string(n)
                           + " deliveries are not fetched and unanswered on this node "
                             "(unknown, answered already, or timed out and redelivered "
                             "under a new id); none of the request was taken");
      auto body = json::parse(out.body);
      body["deliveries"] = *r; // which ones, so a worker can drop them and send the rest
      out.body = body.dump(-1, ' ', false, json::error_handler_t::replace);
      return respond(std::move(out));
    }
    respond(json_response(200, json{{counted, n}}.dump()));
  };
}

} // namespace

void pull_fetch(const api_env& env, request& req, const std::string& agent, responder& respond) {
  static const std::string shape = R"({"consumer": "name", "max": 1-1000, "wait_ms": 0-60000})";
  auto body = pull_body(req, shape, respond, true);
  if (!body)
    return;
  std::string consumer = "default";
  std::uint64_t max = 1;
  std::uint64_t wait_ms = 0;
  auto invalid = [&respond](const std::string& detail) {
    respond(problem(400, "invalid-request", "Bad Request", detail));
  };
  for (auto& [k, v] : body->items()) {
    if (k == "consumer") {
      if (!v.is_string() || v.get_ref<const std::string&>().empty()
          || v.get_ref<const std::string&>().size() > 128)
        return invalid("\"consumer\" must be a string of 1 to 128 bytes");
      consumer = v.get<std::string>();
    } else if (k == "max" || k == "wait_ms") {
      auto hi = k == "max" ? max_fetch : max_fetch_wait_ms;
      std::uint64_t lo = k == "max" ? 1 : 0;
      if (!v.is_number_unsigned() || v.get<std::uint64_t>() < lo || v.get<std::uint64_t>() > hi)
        return invalid("\"" + k + "\" must be an integer from " + std::to_string(lo) + " to "
                       + std::to_string(hi));
      (k == "max" ? max : wait_ms) = v.get<std::uint64_t>();
    } else {
      return invalid("unknown field \"" + k.substr(0, 64) + "\"; allowed: consumer, max, wait_ms");
    }
  }
  actors::pull_request pr{
    consumer, {}, static_cast<std::uint32_t>(max), static_cast<std::uint32_t>(wait_ms), false};
  env.node.pull_fetch(
    agent, std::move(pr), [respond](actors::result<std::vector<actors::pulled_delivery>> r) {
      if (!r)
        return respond(error_response(r.error()));
      std::string out = R"({"deliveries":[)";
      bool first = true;
      for (auto& d : *r) {
        out += first ? "{" : ",{";
        first = false;
        actors::append_delivery_members(out, d.delivery, d.attempt, d.traceparent, d.event);
        out += "}";
      }
      out += "]}";
      respond(json_response(200, std::move(out)));
    });
}

void pull_ack(const api_env& env, request& req, const std::string& agent, responder& respond) {
  static const std::string shape
    = R"({"deliveries": ["<id>" or {"delivery", "result", "emit"}, ...], "result", "emit"})";
  auto body = pull_body(req, shape, respond);
  if (!body)
    return;
  auto invalid = [&respond](const std::string& detail) {
    respond(problem(400, "invalid-request", "Bad Request", detail));
  };
  const json* list = nullptr;
  std::string result;
  std::string emit;
  for (auto& [k, v] : body->items()) {
    if (k == "deliveries") {
      list = &v;
    } else if (k == "result") {
      result = v.dump();
    } else if (k == "emit") {
      auto e = emit_text(v);
      if (!e)
        return invalid("\"emit\" must be an array of events");
      emit = std::move(*e);
    } else {
      return invalid("unknown field \"" + k.substr(0, 64)
                     + "\"; allowed: deliveries, result, emit");
    }
  }
  auto most = env.cfg.http.max_events_per_request;
  if (list == nullptr || !list->is_array() || list->empty() || list->size() > most)
    return invalid("\"deliveries\" must be a non-empty array of at most " + std::to_string(most)
                   + " delivery ids (or {\"delivery\", \"result\", \"emit\"} objects)");
  std::vector<actors::pull_reply> replies;
  replies.reserve(list->size());
  for (auto& d : *list) {
    actors::pull_reply r;
    r.result = result;
    r.emit = emit;
    if (d.is_string()) {
      r.delivery = d.get<std::string>();
    } else if (d.is_object() && d.contains("delivery") && d["delivery"].is_string()) {
      for (auto& [k, v] : d.items()) {
        if (k == "delivery") {
          r.delivery = v.get<std::string>();
        } else if (k == "result") {
          r.result = v.dump();
        } else if (k == "emit") {
          auto e = emit_text(v);
          if (!e)
            return invalid("\"emit\" must be an array of events");
          r.emit = std::move(*e);
        } else {
          return invalid("unknown field \"" + k.substr(0, 64)
                         + "\" in a delivery; allowed: delivery, result, emit");
        }
      }
    } else {
      return invalid("each of \"deliveries\" must be a delivery id or an object with one");
    }
    if (r.delivery.empty())
      return invalid("a delivery id must not be empty");
    replies.push_back(std::move(r));
  }
  auto n = replies.size();
  env.node.pull_answer(agent, std::move(replies), pull_verdict(respond, "acked", n));
}

void pull_nack(const api_env& env, request& req, const std::string& agent, responder& respond) {
  static const std::string shape = R"({"delivery": "<id>", "error": "why"})";
  auto body = pull_body(req, shape, respond);
  if (!body)
    return;
  auto invalid = [&respond](const std::string& detail) {
    respond(problem(400, "invalid-request", "Bad Request", detail));
  };
  std::vector<std::string> ids;
  std::string error = "nack";
  auto most = env.cfg.http.max_events_per_request;
  for (auto& [k, v] : body->items()) {
    if (k == "delivery") {
      if (!v.is_string() || v.get_ref<const std::string&>().empty())
        return invalid("\"delivery\" must be a delivery id");
      ids.push_back(v.get<std::string>());
    } else if (k == "deliveries") {
      if (!v.is_array() || v.empty() || v.size() > most)
        return invalid("\"deliveries\" must be a non-empty array of at most " + std::to_string(most)
                       + " delivery ids");
      for (auto& d : v) {
        if (!d.is_string() || d.get_ref<const std::string&>().empty())
          return invalid("each of \"deliveries\" must be a delivery id");
        ids.push_back(d.get<std::string>());
      }
    } else if (k == "error") {
      if (!v.is_string())
        return invalid("\"error\" must be a string");
      error = v.get<std::string>().substr(0, 4096);
    } else {
      return invalid("unknown field \"" + k.substr(0, 64)
                     + "\"; allowed: delivery (or deliveries), error");
    }
  }
  if (ids.empty())
    return invalid("give \"delivery\": the id of the delivery that failed");
  std::vector<actors::pull_reply> replies;
  replies.reserve(ids.size());
  for (auto& id : ids)
    replies.push_back({std::move(id), false, {}, {}, error});
  auto n = replies.size();
  env.node.pull_answer(agent, std::move(replies), pull_verdict(respond, "nacked", n));
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
