// Routes of the HTTP API. No Beast here: requests and responses are plain
// structs, answers come back through the node's callbacks.
#include "http/routes.hpp"

#include <chrono>
#include <map>
#include <sstream>
#include <strings.h>

#include <nlohmann/json.hpp>

#include "actors/event_input.hpp"
#include "http/metrics.hpp"
#include "http/problem.hpp"

namespace nerve::http {

using json = nlohmann::json;

response problem(unsigned status, const std::string& slug, const std::string& title,
                 const std::string& detail) {
  response r;
  r.status = status;
  r.content_type = "application/problem+json";
  r.body = json{
    {"type", "https://nerve.dev/problems/" + slug},
    {"title", title},
    {"status", status},
    {"detail",
     detail}}.dump(-1, ' ', false, json::error_handler_t::replace);
  return r;
}

namespace {

using params = std::vector<std::string>;
using route_fn = std::function<void(request&, const params&, responder&)>;
using callback_dlq = actors::callback<actors::dlq_view>;

struct route {
  std::string method;
  std::string label;                ///< the pattern as written, the metrics' route label
  std::vector<std::string> pattern; ///< "{name}" matches one segment
  route_fn fn;
  metrics::route_series* series = nullptr;
};

/// Decodes %XX; in a query (not a path) '+' is a space as well.
std::string percent_decode(const std::string& s, bool& ok, bool query = false) {
  std::string out;
  out.reserve(s.size());
  ok = true;
  for (std::size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '%') {
      if (i + 2 >= s.size() || !std::isxdigit(static_cast<unsigned char>(s[i + 1]))
          || !std::isxdigit(static_cast<unsigned char>(s[i + 2]))) {
        ok = false;
        return {};
      }
      out += static_cast<char>(std::stoi(s.substr(i + 1, 2), nullptr, 16));
      i += 2;
    } else if (query && s[i] == '+') {
      out += ' ';
    } else {
      out += s[i];
    }
  }
  return out;
}

std::vector<std::string> split_path(std::string_view path) {
  std::vector<std::string> out;
  std::size_t at = 0;
  while (at <= path.size()) {
    auto slash = path.find('/', at);
    auto seg
      = path.substr(at, slash == std::string_view::npos ? std::string_view::npos : slash - at);
    if (!seg.empty())
      out.emplace_back(seg);
    if (slash == std::string_view::npos)
      break;
    at = slash + 1;
  }
  return out;
}

/// Parses a query string into `out`. A malformed escape or a parameter the
/// route does not take is a 400: on a bulk action (DLQ retry-all), a typo
/// must never widen the filter to everything.
std::optional<response> parse_query(const std::string& q,
                                    std::initializer_list<std::string_view> allowed,
                                    std::map<std::string, std::string>& out) {
  std::stringstream in{q};
  std::string pair;
  auto names = [&] {
    std::string all;
    for (auto a : allowed)
      all += (all.empty() ? "" : ", ") + std::string{a};
    return all.empty() ? std::string{"none"} : all;
  };
  while (std::getline(in, pair, '&')) {
    if (pair.empty())
      continue;
    auto eq = pair.find('=');
    bool ok1 = true;
    bool ok2 = true;
    auto k = percent_decode(pair.substr(0, eq), ok1, true);
    auto v
      = eq == std::string::npos ? std::string{} : percent_decode(pair.substr(eq + 1), ok2, true);
    if (!ok1 || !ok2)
      return problem(400, "invalid-parameter", "Bad Request",
                     "query parameter \"" + pair.substr(0, 64)
                       + "\" is not valid percent-encoding");
    if (std::find(allowed.begin(), allowed.end(), k) == allowed.end())
      return problem(400, "invalid-parameter", "Bad Request",
                     "unknown query parameter \"" + k.substr(0, 64)
                       + "\"; this route takes: " + names());
    if (out.count(k) > 0)
      return problem(400, "invalid-parameter", "Bad Request",
                     "query parameter " + k + " is given more than once");
    // An empty filter would select everything (a script's unset variable).
    if (v.empty() && (k == "agent" || k == "topic"))
      return problem(400, "invalid-parameter", "Bad Request",
                     "query parameter " + k + " is empty; leave it out to select every " + k);
    out[k] = v;
  }
  return std::nullopt;
}

bool constant_time_equal(const std::string& a, const std::string& b) {
  unsigned char diff = a.size() == b.size() ? 0 : 1;
  for (std::size_t i = 0; i < a.size(); ++i)
    diff |= static_cast<unsigned char>(a[i] ^ (i < b.size() ? b[i] : 0));
  return diff == 0;
}

response json_response(unsigned status, std::string body) {
  response r;
  r.status = status;
  r.body = std::move(body);
  return r;
}

response error_response(const actors::error& e) {
  switch (e.code) {
    case actors::errc::not_found:
      return problem(404, "not-found", "Not Found", e.message);
    case actors::errc::conflict:
      return problem(409, "conflict", "Conflict", e.message);
    case actors::errc::invalid:
      return problem(400, "invalid-request", "Bad Request", e.message);
    case actors::errc::overloaded: {
      auto r = problem(503, "overloaded", "Service Unavailable", e.message);
      r.headers.emplace_back("Retry-After", "1");
      return r;
    }
    case actors::errc::unavailable: {
      auto r = problem(503, "unavailable", "Service Unavailable", e.message);
      r.headers.emplace_back("Retry-After", "1");
      return r;
    }
    case actors::errc::storage:
      break;
  }
  return problem(500, "storage-error", "Internal Server Error", e.message);
}

/// Parses an unsigned query parameter; `what` is used in the error.
std::optional<response> query_uint(const std::map<std::string, std::string>& q,
                                   const std::string& name, std::uint64_t max,
                                   std::optional<std::uint64_t>& out, std::uint64_t min = 0) {
  auto it = q.find(name);
  if (it == q.end() || it->second.empty())
    return std::nullopt;
  auto& v = it->second;
  bool digits = v.size() <= 19
                && std::all_of(v.begin(), v.end(), [](unsigned char c) { return std::isdigit(c); });
  if (!digits || std::stoull(v) > max || std::stoull(v) < min)
    return problem(400, "invalid-parameter", "Bad Request",
                   "query parameter " + name + "=" + v.substr(0, 64) + " must be an integer from "
                     + std::to_string(min) + " to " + std::to_string(max));
  out = std::stoull(v);
  return std::nullopt;
}

class api {
public:
  api(actors::node& node, const config::config& cfg) : node_(node), cfg_(cfg) {
    add("GET", "/health", [this](auto&, auto&, auto& respond) { health(respond); });
    add("GET", "/health/detailed", [this](auto&, auto&, auto& respond) { detailed(respond); });
    add("GET", "/livez",
        [](auto&, auto&, auto& respond) { respond(json_response(200, R"({"status":"alive"})")); });
    add("GET", "/readyz", [this](auto&, auto&, auto& respond) {
      if (node_.ready())
        return respond(json_response(200, R"({"status":"ready"})"));
      auto r = json_response(503, R"({"status":"not ready"})");
      r.headers.emplace_back("Retry-After", "1");
      respond(std::move(r));
    });
    add("GET", "/metrics", [this](auto&, auto&, auto& respond) {
      auto r = json_response(200, metrics_.render(node_.scrape()));
      r.content_type = metrics_content_type;
      respond(std::move(r));
    });
    add("GET", "/v1/bus/stats", [this](auto&, auto&, auto& respond) { bus_stats(respond); });
    add("GET", "/v1/storage/health",
        [this](auto&, auto&, auto& respond) { storage_health(respond); });
    add("GET", "/v1/topics", [this](auto&, auto&, auto& respond) { list_topics(respond); });
    add("POST", "/v1/topics/{topic}/events",
        [this](auto& req, auto& p, auto& respond) { publish(req, p[0], respond); });
    add("GET", "/v1/topics/{topic}/events",
        [this](auto& req, auto& p, auto& respond) { read_events(req, p[0], respond); });
    add("GET", "/v1/topics/{topic}/tail",
        [this](auto& req, auto& p, auto& respond) { tail(req, p[0], respond); });
    add("GET", "/v1/events/{id}",
        [this](auto&, auto& p, auto& respond) { get_event(p[0], respond); });
    add("GET", "/v1/agents", [this](auto&, auto&, auto& respond) { list_agents(respond); });
    add("GET", "/v1/metrics", [this](auto& req, auto&, auto& respond) { metrics(req, respond); });
    add("GET", "/v1/agents/{name}",
        [this](auto&, auto& p, auto& respond) { get_agent(p[0], respond); });
    add("POST", "/v1/agents/{name}/pause",
        [this](auto&, auto& p, auto& respond) { pause_agent(p[0], true, respond); });
    add("POST", "/v1/agents/{name}/resume",
        [this](auto&, auto& p, auto& respond) { pause_agent(p[0], false, respond); });
    add("GET", "/v1/topics/{topic}/groups",
        [this](auto&, auto& p, auto& respond) { groups(p[0], respond); });
    add("GET", "/v1/dlq", [this](auto& req, auto&, auto& respond) { dlq_list(req, respond); });
    add("POST", "/v1/dlq/retry-all",
        [this](auto& req, auto&, auto& respond) { dlq_retry_all(req, respond); });
    add("GET", "/v1/dlq/{id}",
        [this](auto&, auto& p, auto& respond) { node_.dlq_get(p[0], dlq_answer(respond)); });
    add("DELETE", "/v1/dlq/{id}",
        [this](auto&, auto& p, auto& respond) { node_.dlq_delete(p[0], dlq_answer(respond)); });
    add("POST", "/v1/dlq/{id}/retry",
        [this](auto&, auto& p, auto& respond) { node_.dlq_retry(p[0], dlq_answer(respond)); });
    add("GET", "/v1/cluster", [this](auto&, auto&, auto& respond) { cluster(respond); });
    add("POST", "/v1/replays",
        [this](auto& req, auto&, auto& respond) { replay_create(req, respond); });
    add("GET", "/v1/replays", [this](auto&, auto&, auto& respond) { replay_list(respond); });
    add("GET", "/v1/replays/{id}", [this](auto&, auto& p, auto& respond) {
      node_.replay_get(p[0], replay_answer(respond, 200));
    });
    add("DELETE", "/v1/replays/{id}", [this](auto&, auto& p, auto& respond) {
      node_.replay_cancel(p[0], replay_answer(respond, 200));
    });
    add("GET", "/v1/replays/{id}/history",
        [this](auto& req, auto& p, auto& respond) { replay_history(req, p[0], respond); });
  }

  void operator()(request&& req, responder respond) {
    auto segments = split_path(req.path);
    std::vector<std::string> decoded;
    bool path_ok = true;
    for (auto& s : segments) {
      decoded.push_back(percent_decode(s, path_ok));
      if (!path_ok)
        break;
    }
    // Counted under the route's pattern, never the raw path (bounded labels).
    const route* hit = nullptr;
    const route* same_path = nullptr;
    params p;
    for (auto& r : routes_) {
      params found;
      if (!path_ok || !match(r.pattern, decoded, found, routes_))
        continue;
      same_path = same_path ? same_path : &r;
      if (r.method == req.method) {
        hit = &r;
        p = std::move(found);
        break;
      }
    }
    auto& series
      = hit ? *hit->series : metrics_.series(req.method, same_path ? same_path->label : "other");
    respond = [this, &series, started = std::chrono::steady_clock::now(),
               respond = std::move(respond)](response res) {
      metrics_.observe(series, res.status, std::chrono::steady_clock::now() - started);
      respond(std::move(res));
    };
    if (!path_ok)
      return respond(
        problem(400, "bad-path", "Bad Request", "the path has a malformed percent-encoding"));
    if (hit)
      return dispatch(*hit, req, p, respond);
    std::string allowed;
    for (auto& r : routes_) {
      params ignored;
      if (match(r.pattern, decoded, ignored, routes_))
        allowed += (allowed.empty() ? "" : ", ") + r.method;
    }
    if (!allowed.empty()) {
      auto res = problem(405, "method-not-allowed", "Method Not Allowed",
                         req.method + " is not allowed on " + req.path.substr(0, 256)
                           + "; allowed: " + allowed);
      res.headers.emplace_back("Allow", allowed);
      return respond(std::move(res));
    }
    respond(problem(404, "not-found", "Not Found",
                    "no route " + req.path.substr(0, 256) + "; see docs/api.md"));
  }

private:
  void dispatch(const route& r, request& req, const params& p, responder& respond) {
    // Decided on the route matched, not on the raw path: "//v1/..." and
    // "/%761/..." reach the same routes and need the same token.
    if (!r.pattern.empty() && r.pattern.front() == "v1" && !authorized(req)) {
      auto res = problem(401, "unauthorized", "Unauthorized",
                         "this route needs the header Authorization: Bearer <http.token>");
      res.headers.emplace_back("WWW-Authenticate", "Bearer");
      return respond(std::move(res));
    }
    r.fn(req, p, respond);
  }

  void add(std::string method, const std::string& path, route_fn fn) {
    auto& series = metrics_.series(method, path);
    routes_.push_back({std::move(method), path, split_path(path), std::move(fn), &series});
  }

  /// A parameter does not match a segment that another route spells out at
  /// that place: /v1/dlq/retry-all is never the DLQ entry "retry-all", so GET
  /// on it is a 405 (POST only), not a 404 for a missing entry.
  static bool match(const std::vector<std::string>& pattern, const std::vector<std::string>& segs,
                    params& out, const std::vector<route>& all) {
    if (pattern.size() != segs.size())
      return false;
    for (std::size_t i = 0; i < pattern.size(); ++i) {
      if (pattern[i].front() != '{') {
        if (pattern[i] != segs[i])
          return false;
        continue;
      }
      for (auto& other : all)
        if (other.pattern.size() == pattern.size() && other.pattern[i] == segs[i]
            && std::equal(pattern.begin(), pattern.begin() + static_cast<std::ptrdiff_t>(i),
                          other.pattern.begin()))
          return false;
      out.push_back(segs[i]);
    }
    return true;
  }

  bool authorized(const request& req) const {
    if (cfg_.http.token.empty())
      return true;
    // The scheme is case-insensitive (RFC 9110 section 11.1); the token is not.
    auto& a = req.authorization;
    if (a.size() < 7 || strncasecmp(a.c_str(), "bearer ", 7) != 0)
      return false;
    auto given = a.substr(7);
    while (!given.empty() && given.front() == ' ')
      given.erase(0, 1);
    return constant_time_equal(given, cfg_.http.token);
  }

  void health(responder& respond) {
    if (node_.healthy_now())
      return respond(json_response(200, R"({"status":"healthy"})"));
    respond(json_response(503, R"({"status":"unhealthy"})"));
  }

  void detailed(responder& respond) {
    node_.health([this, respond](actors::result<actors::health_report> r) {
      if (!r)
        return respond(error_response(r.error()));
      auto& h = *r;
      auto& limits = cfg_.health;
      json indicators = json::array();
      auto worst = std::string{"healthy"};
      auto rank = [](const std::string& s) { return s == "healthy" ? 0 : s == "degraded" ? 1 : 2; };
      auto add = [&](json ind) {
        if (rank(ind["status"]) > rank(worst))
          worst = ind["status"];
        indicators.push_back(std::move(ind));
      };
      json db{{"name", "database"}};
      if (!h.storage_ok) {
        db["status"] = "unhealthy";
        db["message"] = h.storage_error;
      } else {
        auto slow
          = *h.storage_latency_ms > static_cast<double>(limits.storage_latency_degraded.count());
        db["status"] = slow ? "degraded" : "healthy";
        db["message"] = "rocksdb at " + cfg_.data_dir;
      }
      if (h.storage_latency_ms)
        db["latency_ms"] = std::round(*h.storage_latency_ms * 1000.0) / 1000.0;
      add(db);
      std::string queue_status = !h.bus_ok                                       ? "unhealthy"
                                 : h.pending_publishes > limits.pending_degraded ? "degraded"
                                                                                 : "healthy";
      add({{"name", "event_queue"},
           {"status", queue_status},
           {"message", std::to_string(h.pending_publishes) + " pending"
                         + (h.bus_ok ? "" : "; " + h.bus_error)}});
      add({{"name", "dlq"},
           {"status", h.dlq_size > limits.dlq_degraded ? "degraded" : "healthy"},
           {"message", std::to_string(h.dlq_size) + " in DLQ"}});
      add(agents_indicator(h));
      add({{"name", "cluster"}, {"status", "healthy"}, {"message", "1 of 1 nodes up"}});
      std::string state;
      if (!h.storage_ok && !h.bus_ok)
        state = "DOWN";
      else if (!h.storage_ok || !h.bus_ok || worst != "healthy")
        state = "DEGRADED";
      else
        state = h.agents_running > 0 ? "RUNNING" : "READY";
      json body{{"status", worst},
                {"state", state},
                {"runner_id", node_.runner_id()},
                {"node_id", node_.node_id()},
                {"version", NERVE_VERSION},
                {"uptime_s", uptime_s()},
                {"indicators", std::move(indicators)}};
      respond(json_response(200, body.dump()));
    });
  }

  /// Degraded while any agent instance is down: crashed, or waiting to restart.
  static json agents_indicator(const actors::health_report& h) {
    auto message = std::to_string(h.agents_running) + " running";
    if (h.agents_restarting > 0)
      message += ", " + std::to_string(h.agents_restarting) + " restarting";
    if (h.agents_crashed > 0)
      message += ", " + std::to_string(h.agents_crashed) + " crashed";
    bool down = h.agents_restarting + h.agents_crashed > 0;
    return {{"name", "agents"}, {"status", down ? "degraded" : "healthy"}, {"message", message}};
  }

  [[nodiscard]] double uptime_s() const {
    auto uptime = std::chrono::duration<double>(std::chrono::steady_clock::now() - started_);
    return std::round(uptime.count() * 10.0) / 10.0;
  }

  void bus_stats(responder& respond) {
    node_.topics([this, respond](actors::result<std::vector<actors::topic_view>> r) {
      if (!r)
        return respond(error_response(r.error()));
      auto s = node_.scrape();
      std::uint64_t partitions = 0;
      std::uint64_t events = 0;
      std::uint64_t bytes = 0;
      for (auto& t : *r) {
        partitions += t.partitions;
        auto [e, b] = stored(t);
        events += e;
        bytes += b;
      }
      std::uint64_t pending = 0;
      std::uint64_t lag = 0;
      for (auto& g : s.groups) {
        pending += g.pending;
        lag += g.lag;
      }
      std::uint64_t published = 0;
      for (auto& t : s.topics)
        published += t.published;
      std::uint64_t delivered = 0;
      std::uint64_t acked = 0;
      std::uint64_t failed = 0;
      std::uint64_t dead_lettered = 0;
      for (auto& m : s.deliveries) {
        delivered += m.received;
        acked += m.processed;
        failed += m.failed;
        dead_lettered += m.dead_lettered;
      }
      nlohmann::ordered_json body{{"topics", r->size()},
                                  {"partitions", partitions},
                                  {"events", events},
                                  {"bytes", bytes},
                                  {"agents", s.agents.size()},
                                  {"pending", pending},
                                  {"lag", lag},
                                  {"dlq", s.dlq_entries},
                                  {"published_total", published},
                                  {"delivered_total", delivered},
                                  {"acked_total", acked},
                                  {"failed_total", failed},
                                  {"dead_lettered_total", dead_lettered},
                                  {"uptime_s", uptime_s()}};
      respond(json_response(200, body.dump()));
    });
  }

  void storage_health(responder& respond) {
    node_.storage([respond](actors::result<actors::storage_report> r) {
      if (!r)
        return respond(error_response(r.error()));
      json latency = nullptr;
      if (r->write_latency_ms)
        latency = std::round(*r->write_latency_ms * 1000.0) / 1000.0;
      nlohmann::ordered_json body{{"status", r->ok ? "healthy" : "unhealthy"},
                                  {"backend", "rocksdb"},
                                  {"path", r->path},
                                  {"size_bytes", r->disk_bytes},
                                  {"fsync", r->fsync},
                                  {"write_latency_ms", std::move(latency)},
                                  {"last_error", r->last_error}};
      respond(json_response(200, body.dump(-1, ' ', false, json::error_handler_t::replace)));
    });
  }

  /// Events still stored in a topic, and their approximate bytes.
  static std::pair<std::uint64_t, std::uint64_t> stored(const actors::topic_view& t) {
    std::uint64_t events = 0;
    std::uint64_t bytes = 0;
    for (auto& p : t.partition_stats) {
      events += p.next_offset - p.first_offset;
      bytes += p.bytes;
    }
    return {events, bytes};
  }

  void list_topics(responder& respond) {
    node_.topics([respond](actors::result<std::vector<actors::topic_view>> r) {
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

  void publish(request& req, const std::string& topic, responder& respond) {
    if (!actors::valid_topic(topic))
      return respond(problem(400, "invalid-topic", "Bad Request",
                             "topic \"" + topic.substr(0, 300)
                               + "\" is not valid: use [A-Za-z0-9_-]+ tokens joined by '.', "
                                 "at most 255 bytes"));
    auto body = actors::parse_json(req.body);
    if (!body)
      return respond(
        problem(400, "invalid-json", "Bad Request", "the body is not valid JSON: " + body.error()));
    auto items = actors::events_from_body(*body, topic, cfg_.http.max_events_per_request);
    if (!items)
      return respond(problem(400, "invalid-event", "Bad Request", items.error()));
    node_.publish(topic, std::move(*items),
                  [respond](actors::result<std::vector<actors::published>> r) {
                    if (!r)
                      return respond(error_response(r.error()));
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
                      body += actors::format_time(p.time_us);
                      body += "\",\"duplicate\":";
                      body += p.duplicate ? "true}" : "false}";
                    }
                    body += "]}";
                    respond(json_response(201, std::move(body)));
                  });
  }

  void read_events(request& req, const std::string& topic, responder& respond) {
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
      return respond(problem(404, "not-found", "Not Found",
                             "topic " + topic.substr(0, 300) + " does not exist"));
    std::optional<std::uint32_t> part;
    if (partition)
      part = static_cast<std::uint32_t>(*partition);
    node_.read_events(topic, part, from.value_or(0), limit.value_or(100),
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

  void get_event(const std::string& id, responder& respond) {
    if (!actors::valid_event_id(id))
      return respond(problem(404, "not-found", "Not Found", "no event with that id"));
    node_.get_event(id, [respond](actors::result<actors::event_view> r) {
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

  void metrics(request& req, responder& respond) {
    std::map<std::string, std::string> q;
    if (auto err = parse_query(req.query, {"agent", "topic"}, q))
      return respond(std::move(*err));
    auto round3 = [](double v) { return std::round(v * 1000.0) / 1000.0; };
    json rows = json::array();
    for (auto& m : node_.metrics(q["topic"], q["agent"]))
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

  static json agent_json(const actors::agent_view& a) {
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

  void list_agents(responder& respond) {
    json list = json::array();
    for (auto& a : node_.agents())
      list.push_back(agent_json(a));
    respond(json_response(200, json{{"agents", std::move(list)}}.dump()));
  }

  void get_agent(const std::string& name, responder& respond) {
    for (auto& a : node_.agents())
      if (a.name == name)
        return respond(json_response(200, agent_json(a).dump()));
    respond(problem(404, "not-found", "Not Found", "no agent named " + name.substr(0, 100)));
  }

  void pause_agent(const std::string& name, bool paused, responder& respond) {
    node_.set_paused(name, paused, [respond](actors::result<actors::agent_view> r) {
      if (!r)
        return respond(error_response(r.error()));
      respond(json_response(200, agent_json(*r).dump()));
    });
  }

  void groups(const std::string& topic, responder& respond) {
    node_.groups(topic, [respond, topic](actors::result<std::vector<actors::group_view>> r) {
      if (!r)
        return respond(error_response(r.error()));
      json list = json::array();
      for (auto& g : *r) {
        json parts = json::array();
        for (auto& p : g.partitions)
          parts.push_back({{"partition", p.partition},
                           {"cursor", p.cursor},
                           {"end_offset", p.end},
                           {"lag", p.end - p.cursor},
                           {"in_flight", p.in_flight},
                           {"waiting_retry", p.waiting_retry},
                           {"redelivering", p.redelivering},
                           {"last_delivered_offset",
                            p.last_delivered ? json(*p.last_delivered) : json(nullptr)}});
        list.push_back({{"agent", g.agent},
                        {"instances", g.instances},
                        {"pending", g.pending},
                        {"lag", g.lag},
                        {"last_delivered_offset",
                         g.last_delivered_offset ? json(*g.last_delivered_offset) : json(nullptr)},
                        {"partitions", std::move(parts)}});
      }
      respond(json_response(200, json{{"topic", topic}, {"groups", std::move(list)}}.dump()));
    });
  }

  static json dlq_json(const actors::dlq_view& e) {
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

  static callback_dlq dlq_answer(const responder& respond) {
    return [respond](actors::result<actors::dlq_view> r) {
      if (!r)
        return respond(error_response(r.error()));
      respond(
        json_response(200, dlq_json(*r).dump(-1, ' ', false, json::error_handler_t::replace)));
    };
  }

  void dlq_list(request& req, responder& respond) {
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
    node_.dlq_list(
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

  void dlq_retry_all(request& req, responder& respond) {
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
    node_.dlq_retry_all(agent, topic, [respond](actors::result<std::uint64_t> r) {
      if (!r)
        return respond(error_response(r.error()));
      respond(json_response(200, json{{"retried", *r}}.dump()));
    });
  }

  /// One node until clustering lands: this node, up, owning every partition.
  void cluster(responder& respond) {
    node_.topics([this, respond](actors::result<std::vector<actors::topic_view>> r) {
      if (!r)
        return respond(error_response(r.error()));
      json owned = json::array();
      for (auto& t : *r)
        for (std::uint32_t p = 0; p < t.partitions; ++p)
          owned.push_back(t.name + "/" + std::to_string(p));
      json body{{"mode", "single-node"},
                {"nodes", json::array({{{"id", node_.node_id()},
                                        {"address", cfg_.http.listen},
                                        {"state", "up"},
                                        {"self", true},
                                        {"partitions", std::move(owned)}}})}};
      respond(json_response(200, body.dump(-1, ' ', false, json::error_handler_t::replace)));
    });
  }

  void tail(request& req, const std::string& topic, responder& respond) {
    if (!actors::valid_topic(topic))
      return respond(problem(400, "invalid-topic", "Bad Request",
                             "topic \"" + topic.substr(0, 300) + "\" is not a valid topic name"));
    if (!req.websocket) {
      auto r = problem(426, "upgrade-required", "Upgrade Required",
                       "this route is a WebSocket: connect with Upgrade: websocket to follow "
                         + topic + " live");
      r.headers.emplace_back("Upgrade", "websocket");
      r.headers.emplace_back("Connection", "Upgrade");
      return respond(std::move(r));
    }
    response r;
    r.status = 101;
    r.websocket = [this, topic](const text_sender& send) -> std::shared_ptr<void> {
      return node_.tail(topic, [send](const std::vector<std::string>& events) {
        for (auto& e : events)
          send(e);
      });
    };
    respond(std::move(r));
  }

  static json replay_json(const actors::replay_view& v) {
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

  static actors::callback<actors::replay_view> replay_answer(responder& respond, unsigned status) {
    return [respond, status](actors::result<actors::replay_view> r) {
      if (!r)
        return respond(error_response(r.error()));
      respond(json_response(status,
                            replay_json(*r).dump(-1, ' ', false, json::error_handler_t::replace)));
    };
  }

  void replay_create(request& req, responder& respond) {
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
    node_.replay_create(std::move(r), replay_answer(respond, 202));
  }

  void replay_list(responder& respond) {
    node_.replay_list([respond](actors::result<std::vector<actors::replay_view>> r) {
      if (!r)
        return respond(error_response(r.error()));
      json list = json::array();
      for (auto& v : *r)
        list.push_back(replay_json(v));
      respond(json_response(200, json{{"replays", std::move(list)}}.dump(
                                   -1, ' ', false, json::error_handler_t::replace)));
    });
  }

  void replay_history(request& req, const std::string& id, responder& respond) {
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
    node_.replay_history(
      id, agent, q["cursor"], limit.value_or(100),
      [respond](actors::result<actors::history_page> r) {
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

  actors::node& node_;
  const config::config& cfg_;

public:
  void count_own_answer(unsigned status) {
    metrics_.observe(metrics_.series("other", "other"), status, std::chrono::nanoseconds{0});
  }

private:
  http::metrics metrics_;
  std::vector<route> routes_;
  std::chrono::steady_clock::time_point started_ = std::chrono::steady_clock::now();
};

} // namespace

handler make_api(actors::node& node, const config::config& cfg,
                 std::function<void(unsigned)>* own_answers) {
  auto a = std::make_shared<api>(node, cfg);
  if (own_answers != nullptr)
    *own_answers = [a](unsigned status) { a->count_own_answer(status); };
  return [a](request&& req, responder respond) { (*a)(std::move(req), std::move(respond)); };
}

} // namespace nerve::http
