// Routes of replays: create (plan and start), list, get, cancel, and read
// an agent's history in a replay's window.
#include <chrono>
#include <map>

#include <nlohmann/json.hpp>

#include "actors/event_input.hpp"
#include "http/problem.hpp"
#include "http/routes_private.hpp"

namespace nerve::http {

using json = nlohmann::json;

namespace {

json replay_json(const actors::replay_view& v) {
  auto time_or_null
    = [](std::int64_t us) { return us == 0 ? json(nullptr) : json(actors::format_time(us)); };
  json counts = json::array();
  for (auto& c : v.counts)
    counts.push_back({{"agent", c.agent}, {"topic", c.topic}, {"events", c.events}});
  json j{{"id", v.id},
         {"state", v.state},
         {"mode", v.mode},
         {"topics", v.topics},
         {"agents", v.agents},
         {"events_total", v.events_total},
         {"events_done", v.events_done},
         {"acked", v.acked},
         {"failed", v.failed},
         {"retried", v.retried},
         {"dead_lettered", v.dead_lettered},
         {"started_at", time_or_null(v.created_us)},
         {"finished_at", time_or_null(v.finished_us)},
         {"counts", std::move(counts)}};
  if (v.event_ids.empty()) {
    j["from"] = actors::format_time(v.from_us);
    j["to"] = actors::format_time(v.to_us);
  } else {
    j["events"] = v.event_ids;
  }
  if (!v.error.empty())
    j["error"] = v.error;
  return j;
}

} // namespace

actors::callback<actors::replay_view> replay_answer(responder& respond, unsigned status) {
  return [respond, status](actors::result<actors::replay_view> r) {
    if (!r)
      return respond(error_response(r.error()));
    respond(
      json_response(status, replay_json(*r).dump(-1, ' ', false, json::error_handler_t::replace)));
  };
}

void replay_create(const api_env& env, request& req, responder& respond) {
  auto body = actors::parse_json(req.body);
  if (!body)
    return respond(
      problem(400, "invalid-json", "Bad Request", "the body is not valid JSON: " + body.error()));
  if (!body->is_object())
    return respond(problem(400, "invalid-replay", "Bad Request",
                           "the body must be an object: {\"from\",\"to\",\"topics\",\"agents\","
                           "\"mode\"} or {\"events\":[ids],...}"));
  auto invalid = [&respond](const std::string& detail) {
    respond(problem(400, "invalid-replay", "Bad Request", detail));
  };
  actors::replay_request r;
  auto now = std::chrono::duration_cast<std::chrono::microseconds>(
               std::chrono::system_clock::now().time_since_epoch())
               .count();
  std::optional<std::int64_t> from;
  std::optional<std::int64_t> to;
  auto strings = [](const json& v, std::vector<std::string>& out) {
    if (!v.is_array() || v.size() > 1000)
      return false;
    for (auto& x : v) {
      if (!x.is_string() || x.get_ref<const std::string&>().empty())
        return false;
      out.push_back(x.get<std::string>());
    }
    return true;
  };
  for (auto& [k, v] : body->items()) {
    if (k == "from" || k == "to") {
      if (!v.is_string())
        return invalid("\"" + k + "\" must be a string: RFC 3339 or relative (-15m, now)");
      auto t = actors::parse_time_arg(v.get<std::string>(), now);
      if (!t)
        return invalid("\"" + k + "\": " + t.error());
      (k == "from" ? from : to) = *t;
    } else if (k == "topics") {
      if (!strings(v, r.topics))
        return invalid("\"topics\" must be an array of topic names");
      for (auto& t : r.topics)
        if (!actors::valid_topic(t))
          return invalid("topic \"" + t.substr(0, 300) + "\" is not a valid topic name");
    } else if (k == "agents") {
      if (!strings(v, r.agents))
        return invalid("\"agents\" must be an array of agent names");
    } else if (k == "events") {
      if (!strings(v, r.event_ids) || r.event_ids.empty())
        return invalid("\"events\" must be a non-empty array of at most 1000 event ids");
    } else if (k == "id" && req.local && v.is_string() && !v.get<std::string>().empty()
               && v.get<std::string>().size() <= 64) {
      // A cluster's coordinator names the replay the same on every member.
      r.id = v.get<std::string>();
    } else if (k == "mode") {
      if (!v.is_string() || (v != "redeliver" && v != "dry-run"))
        return invalid("\"mode\" must be \"redeliver\" or \"dry-run\"");
      r.dry_run = v == "dry-run";
    } else {
      return invalid("unknown field \"" + k.substr(0, 64)
                     + "\"; allowed: from, to, events, topics, agents, mode");
    }
  }
  if (r.event_ids.empty()) {
    if (!from || !to)
      return invalid("give \"from\" and \"to\" (a window) or \"events\" (ids)");
    if (*from >= *to)
      return invalid("\"from\" must be before \"to\": the window is [from, to)");
    r.from_us = *from;
    r.to_us = *to;
  } else if (from || to) {
    return invalid("give either a window (\"from\", \"to\") or \"events\", not both");
  }
  env.node.replay_create(std::move(r), replay_answer(respond, 202));
}

void replay_list(const api_env& env, responder& respond) {
  env.node.replay_list([respond](actors::result<std::vector<actors::replay_view>> r) {
    if (!r)
      return respond(error_response(r.error()));
    json list = json::array();
    for (auto& v : *r)
      list.push_back(replay_json(v));
    respond(json_response(200, json{{"replays", std::move(list)}}.dump(
                                 -1, ' ', false, json::error_handler_t::replace)));
  });
}

void replay_history(const api_env& env, request& req, const std::string& id, responder& respond) {
  std::map<std::string, std::string> q;
  if (auto err = parse_query(req.query, {"agent", "cursor", "limit"}, q))
    return respond(std::move(*err));
  std::optional<std::uint64_t> limit;
  if (auto err = query_uint(q, "limit", 1000, limit, 1))
    return respond(std::move(*err));
  auto agent = q["agent"];
  if (agent.empty())
    return respond(problem(400, "invalid-parameter", "Bad Request",
                           "query parameter agent is required: whose history to read"));
  env.node.replay_history(
    id, agent, q["cursor"], limit.value_or(100), [respond](actors::result<actors::history_page> r) {
      if (!r)
        return respond(error_response(r.error()));
      // The entries come rendered around the stored events' own bytes:
      // a history is read in pages of up to 1000 events.
      auto text = [](const std::string& v) {
        return json(v).dump(-1, ' ', false, json::error_handler_t::replace);
      };
      std::string body;
      body.reserve(r->entries_json.size() + r->agent.size() + r->next_cursor.size() + 64);
      body += "{\"agent\":";
      body += text(r->agent);
      body += ",\"entries\":[";
      body += r->entries_json;
      body += "],\"next_cursor\":";
      body += r->next_cursor.empty() ? std::string{"null"} : text(r->next_cursor);
      body += '}';
      respond(json_response(200, std::move(body)));
    });
}

} // namespace nerve::http
