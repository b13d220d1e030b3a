// Routes of the DLQ: list, get, retry, retry-all, delete.
#include <map>

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

void dlq_retry_all(const api_env& env, request& req, responder& respond) {
  std::map<std::string, std::string> q;
  if (auto err = parse_query(req.query, {"agent", "topic"}, q))
    return respond(std::move(*err));
  std::string agent = q["agent"];
  std::string topic = q["topic"];
  if (!req.body.empty()) {
    auto body = actors::parse_json(req.body);
    if (!body || !body->is_object())
      return respond(problem(400, "invalid-json", "Bad Request",
                             "the body must be a JSON object with optional agent and topic"));
    for (auto& [k, v] : body->items()) {
      if ((k != "agent" && k != "topic") || !v.is_string())
        return respond(problem(400, "invalid-field", "Bad Request",
                               "only \"agent\" and \"topic\" (strings) filter retry-all"));
      (k == "agent" ? agent : topic) = v.get<std::string>();
    }
  }
  env.node.dlq_retry_all(agent, topic, [respond](actors::result<std::uint64_t> r) {
    if (!r)
      return respond(error_response(r.error()));
    respond(json_response(200, json{{"retried", *r}}.dump()));
  });
}

} // namespace nerve::http
