// Routes of topics and their events: list topics, publish, read, get one
// event, follow a topic live (WebSocket).
#include <map>

#include <nlohmann/json.hpp>

#include "actors/event_input.hpp"
#include "actors/tracing.hpp"
#include "http/problem.hpp"
#include "http/routes_private.hpp"

namespace nerve::http {

using json = nlohmann::json;

/// Events still stored in a topic, and their approximate bytes.
std::pair<std::uint64_t, std::uint64_t> stored(const actors::topic_view& t) {
  std::uint64_t events = 0;
  std::uint64_t bytes = 0;
  for (auto& p : t.partition_stats) {
    events += p.next_offset - p.first_offset;
    bytes += p.bytes;
  }
  return {events, bytes};
}

void list_topics(const api_env& env, responder& respond) {
  env.node.topics([respond](actors::result<std::vector<actors::topic_view>> r) {
    if (!r)
      return respond(error_response(r.error()));
    json topics = json::array();
    for (auto& t : *r) {
      json parts = json::array();
      auto [events, bytes] = stored(t);
      for (auto& p : t.partition_stats)
        parts.push_back(
          {{"partition", p.partition},
           {"events", p.next_offset - p.first_offset},
           {"first_offset", p.first_offset},
           {"last_offset", p.next_offset == 0 ? json(nullptr) : json(p.next_offset - 1)},
           {"bytes", p.bytes}});
      topics.push_back({{"name", t.name},
                        {"partitions", t.partitions},
                        {"events", events},
                        {"bytes", bytes},
                        {"partition_stats", std::move(parts)}});
    }
    respond(json_response(200, json{{"topics", std::move(topics)}}.dump()));
  });
}

void publish(const api_env& env, request& req, const std::string& topic, responder& respond) {
  if (!actors::valid_topic(topic))
    return respond(problem(400, "invalid-topic", "Bad Request",
                           "topic \"" + topic.substr(0, 300)
                             + "\" is not valid: use [A-Za-z0-9_:-]+ tokens joined by '.', "
                               "at most 255 bytes"));
  // A caller's trace context: its trace for events without their own, its
  // span as the publish spans' parent (docs/operations.md, "Traces").
  std::optional<actors::trace_context> caller;
  if (!req.traceparent.empty())
    caller = actors::parse_traceparent(req.traceparent);
  // One pass, no DOM: the hot path.
  auto items = actors::events_from_text(req.body, topic, env.cfg.http.max_events_per_request,
                                        actors::max_json_depth,
                                        caller ? caller->trace_id : std::string_view{});
  if (!items && items.error().json)
    return respond(problem(400, "invalid-json", "Bad Request",
                           "the body is not valid JSON: " + items.error().message));
  if (!items)
    return respond(problem(400, "invalid-event", "Bad Request", items.error().message));
  auto trace = actors::trace_publish(env.node.tracing(), *items, topic,
                                     caller ? caller->parent_id : 0, "http", req.received_ns);
  env.node.publish(topic, std::move(*items),
                   [respond = std::move(respond), trace,
                    tracer = env.node.tracing()](actors::result<std::vector<actors::published>> r) {
                     if (!r)
                       return respond(error_response(r.error()));
                     if (trace)
                       actors::record_publish(*tracer, *trace, *r);
                     // Built by hand: this is the hot path, and every value
                     // but the (validated) id and topic is a number or a time.
                     std::string body = "{\"events\":[";
                     body.reserve(64 + r->size() * 160);
                     bool first = true;
                     for (auto& p : *r) {
                       if (!first)
                         body += ',';
                       first = false;
                       body += "{\"id\":\"";
                       body += p.id;
                       body += "\",\"topic\":\"";
                       body += p.topic;
                       body += "\",\"partition\":";
                       body += std::to_string(p.partition);
                       body += ",\"offset\":";
                       body += std::to_string(p.offset);
                       body += ",\"time\":\"";
                       actors::append_time(body, p.time_us);
                       body += "\",\"duplicate\":";
                       body += p.duplicate ? "true}" : "false}";
                     }
                     body += "]}";
                     respond(json_response(201, std::move(body)));
                   });
}

void read_events(const api_env& env, request& req, const std::string& topic, responder& respond) {
  std::map<std::string, std::string> q;
  if (auto err = parse_query(req.query, {"partition", "from_offset", "limit"}, q))
    return respond(std::move(*err));
  std::optional<std::uint64_t> partition;
  std::optional<std::uint64_t> from;
  std::optional<std::uint64_t> limit;
  if (auto err = query_uint(q, "partition", 1023, partition))
    return respond(std::move(*err));
  if (auto err = query_uint(q, "from_offset", ~0ULL >> 1, from))
    return respond(std::move(*err));
  if (auto err = query_uint(q, "limit", 1000, limit, 1))
    return respond(std::move(*err));
  if (!actors::valid_topic(topic))
    return respond(
      problem(404, "not-found", "Not Found", "topic " + topic.substr(0, 300) + " does not exist"));
  std::optional<std::uint32_t> part;
  if (partition)
    part = static_cast<std::uint32_t>(*partition);
  env.node.read_events(topic, part, from.value_or(0), limit.value_or(100),
                       [respond, topic](actors::result<actors::events_page> r) {
                         if (!r)
                           return respond(error_response(r.error()));
                         std::string body = "{\"topic\":" + json(topic).dump() + ",\"events\":[";
                         for (std::size_t i = 0; i < r->events.size(); ++i) {
                           if (i > 0)
                             body += ',';
                           body += r->events[i];
                         }
                         body += ']';
                         if (r->next_offset)
                           body += ",\"next_offset\":" + std::to_string(*r->next_offset);
                         body += '}';
                         respond(json_response(200, std::move(body)));
                       });
}

void get_event(const api_env& env, const std::string& id, responder& respond) {
  if (!actors::valid_event_id(id))
    return respond(problem(404, "not-found", "Not Found", "no event with that id"));
  env.node.get_event(id, [respond](actors::result<actors::event_view> r) {
    if (!r)
      return respond(error_response(r.error()));
    json deliveries = json::array();
    for (auto& d : r->deliveries) {
      json j{{"agent", d.agent}, {"state", d.state}, {"attempts", d.attempts}};
      j["result"] = d.result.empty() ? json(nullptr) : json::parse(d.result, nullptr, false);
      j["error"] = d.error.empty() ? json(nullptr) : json(d.error);
      deliveries.push_back(std::move(j));
    }
    respond(json_response(200, "{\"event\":" + r->event + ",\"deliveries\":"
                                 + deliveries.dump(-1, ' ', false, json::error_handler_t::replace)
                                 + "}"));
  });
}

void tail(const api_env& env, request& req, const std::string& topic, responder& respond) {
  if (!actors::valid_topic(topic))
    return respond(problem(400, "invalid-topic", "Bad Request",
                           "topic \"" + topic.substr(0, 300) + "\" is not a valid topic name"));
  if (!req.websocket) {
    auto r = problem(426, "upgrade-required", "Upgrade Required",
                     "this route is a WebSocket: connect with Upgrade: websocket to follow " + topic
                       + " live");
    r.headers.emplace_back("Upgrade", "websocket");
    r.headers.emplace_back("Connection", "Upgrade");
    return respond(std::move(r));
  }
  response r;
  r.status = 101;
  r.websocket = [&env, topic](const text_sender& send) -> std::shared_ptr<void> {
    return env.node.tail(topic, [send](const std::vector<std::string>& events) {
      for (auto& e : events)
        send(e);
    });
  };
  respond(std::move(r));
}

} // namespace nerve::http
