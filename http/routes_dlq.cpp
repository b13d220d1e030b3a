// Routes of the DLQ: list, get, retry, retry-all, delete, purge.
#include <map>
#include <optional>

#include <nlohmann/json.hpp>

#include "actors/event_input.hpp"
#include "http/problem.hpp"
#include "http/routes_private.hpp"

namespace nerve::http {

using json = nlohmann::json;

namespace {

json dlq_json(const actors::dlq_view& e) {
  return {{"id", e.id},
          {"agent", e.agent},
          {"topic", e.topic},
          {"partition", e.partition},
          {"offset", e.offset},
          {"event", json::parse(e.event, nullptr, false)},
          {"error", e.error},
          {"attempts", e.attempts},
          {"first_failed_at", actors::format_time(e.first_failed_us)},
          {"last_failed_at", actors::format_time(e.last_failed_us)}};
}

} // namespace

actors::callback<actors::dlq_view> dlq_answer(const responder& respond) {
  return [respond](actors::result<actors::dlq_view> r) {
    if (!r)
      return respond(error_response(r.error()));
    respond(json_response(200, dlq_json(*r).dump(-1, ' ', false, json::error_handler_t::replace)));
  };
}

void dlq_list(const api_env& env, request& req, responder& respond) {
  std::map<std::string, std::string> q;
  if (auto err = parse_query(req.query, {"agent", "topic", "cursor", "limit"}, q))
    return respond(std::move(*err));
  // A cursor is the last entry id of the page before ("dlq-" + 16 hex
  // digits); anything else would silently answer an empty or partial page.
  if (auto& c = q["cursor"];
      !c.empty()
      && (c.size() != 20 || c.rfind("dlq-", 0) != 0
          || c.find_first_not_of("0123456789abcdef", 4) != std::string::npos))
    return respond(problem(400, "invalid-parameter", "Bad Request",
                           "query parameter cursor=" + c.substr(0, 64)
                             + " is not a DLQ cursor: use next_cursor from the page before"));
  std::optional<std::uint64_t> limit;
  if (auto err = query_uint(q, "limit", 1000, limit, 1))
    return respond(std::move(*err));
  env.node.dlq_list(
    q["agent"], q["topic"], q["cursor"], limit.value_or(100),
    [respond](actors::result<actors::dlq_page> r) {
      if (!r)
        return respond(error_response(r.error()));
      json entries = json::array();
      for (auto& e : r->entries)
        entries.push_back(dlq_json(e));
      json body{{"count", r->count},
                {"entries", std::move(entries)},
                {"next_cursor", r->next_cursor.empty() ? json(nullptr) : json(r->next_cursor)}};
      respond(json_response(200, body.dump(-1, ' ', false, json::error_handler_t::replace)));
    });
}

namespace {

/// The agent (and, where `topic_too`, topic) an operation on many entries
/// covers, from the query string or a JSON object body; or the 400 to send.
std::optional<response> dlq_filters(request& req, bool topic_too, std::string& agent,
                                    std::string& topic) {
  std::map<std::string, std::string> q;
  auto err = topic_too ? parse_query(req.query, {"agent", "topic"}, q)
                       : parse_query(req.query, {"agent"}, q);
  if (err)
    return err;
  agent = q["agent"];
  topic = q["topic"];
  if (req.body.empty())
    return std::nullopt;
  auto what
    = topic_too ? std::string{"optional agent and topic"} : std::string{"an optional agent"};
  auto body = actors::parse_json(req.body);
  if (!body || !body->is_object())
    return problem(400, "invalid-json", "Bad Request",
                   "the body must be a JSON object with " + what);
  for (auto& [k, v] : body->items()) {
    if ((k != "agent" && (k != "topic" || !topic_too)) || !v.is_string())
      return problem(400, "invalid-field", "Bad Request",
                     "only " + what + " (strings) may be given here");
    (k == "agent" ? agent : topic) = v.get<std::string>();
  }
  return std::nullopt;
}

/// Answers `{"<field>": n}` with the count an operation on many entries gives.
actors::callback<std::uint64_t> count_answer(const responder& respond, const char* field) {
  return [respond, field](actors::result<std::uint64_t> r) {
    if (!r)
      return respond(error_response(r.error()));
    respond(json_response(200, json{{field, *r}}.dump()));
  };
}

} // namespace

void dlq_retry_all(const api_env& env, request& req, responder& respond) {
  std::string agent, topic;
  if (auto err = dlq_filters(req, true, agent, topic))
    return respond(std::move(*err));
  env.node.dlq_retry_all(agent, topic, count_answer(respond, "retried"));
}

void dlq_purge(const api_env& env, request& req, responder& respond) {
  std::string agent, topic;
  if (auto err = dlq_filters(req, false, agent, topic))
    return respond(std::move(*err));
  env.node.dlq_purge(agent, count_answer(respond, "purged"));
}

} // namespace nerve::http
