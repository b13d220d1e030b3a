// Routes of the HTTP API: the route table, matching, authorization and the
// request metrics, and the helpers the handlers share. The handlers are in
// routes_events.cpp, routes_agents.cpp, routes_dlq.cpp, routes_replay.cpp
// and routes_ops.cpp. No Beast here: requests and responses are plain
// structs, answers come back through the node's callbacks.
#include "http/routes.hpp"

#include <algorithm>
#include <cmath>
#include <sstream>
#include <strings.h>

#include <nlohmann/json.hpp>

#include "http/metrics.hpp"
#include "http/problem.hpp"
#include "http/routes_private.hpp"

namespace nerve::http {

using json = nlohmann::json;

namespace {

json problem_body(unsigned status, const std::string& slug, const std::string& title,
                  const std::string& detail) {
  return json{{"type", "https://nerve.dev/problems/" + slug},
              {"title", title},
              {"status", status},
              {"detail", detail}};
}

response problem_response(unsigned status, const json& body) {
  response r;
  r.status = status;
  r.content_type = "application/problem+json";
  r.body = body.dump(-1, ' ', false, json::error_handler_t::replace);
  return r;
}

} // namespace

response problem(unsigned status, const std::string& slug, const std::string& title,
                 const std::string& detail) {
  return problem_response(status, problem_body(status, slug, title, detail));
}

double api_env::uptime_s() const {
  auto uptime = std::chrono::duration<double>(std::chrono::steady_clock::now() - started);
  return std::round(uptime.count() * 10.0) / 10.0;
}

std::string percent_decode(const std::string& s, bool& ok, bool query) {
  if (s.find('%') == std::string::npos && (!query || s.find('+') == std::string::npos)) {
    ok = true;
    return s; // nothing to decode: every request's path segments
  }
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

response json_response(unsigned status, std::string body) {
  response r;
  r.status = status;
  r.body = std::move(body);
  return r;
}

response error_response(const actors::error& e) {
  switch (e.code) {
    case actors::errc::not_found: {
      if (e.leader.empty())
        return problem(404, "not-found", "Not Found", e.message);
      // A copy that does not lead says which node does (an extension member).
      auto body = problem_body(404, "not-found", "Not Found", e.message);
      body["leader"] = e.leader;
      return problem_response(404, body);
    }
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

std::optional<response> query_uint(const std::map<std::string, std::string>& q,
                                   const std::string& name, std::uint64_t max,
                                   std::optional<std::uint64_t>& out, std::uint64_t min) {
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

namespace {

using route_fn = std::function<void(request&, const params&, responder&)>;

struct route {
  std::string method;
  std::string label;                ///< the pattern as written, the metrics' route label
  std::vector<std::string> pattern; ///< "{name}" matches one segment
  route_fn fn;
  metrics::route_series* series = nullptr;
  cluster_fn cluster; ///< answers it across the members; empty: node-local
};

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

bool constant_time_equal(const std::string& a, const std::string& b) {
  unsigned char diff = a.size() == b.size() ? 0 : 1;
  for (std::size_t i = 0; i < a.size(); ++i)
    diff |= static_cast<unsigned char>(a[i] ^ (i < b.size() ? b[i] : 0));
  return diff == 0;
}

class api {
public:
  api(actors::node& node, const config::config& cfg) : env_{node, cfg, stats_} {
    add("GET", "/health", [this](auto&, auto&, auto& respond) { health(env_, respond); });
    add("GET", "/health/detailed",
        [this](auto&, auto&, auto& respond) { detailed(env_, respond); });
    add("GET", "/livez",
        [](auto&, auto&, auto& respond) { respond(json_response(200, R"({"status":"alive"})")); });
    add("GET", "/readyz", [this](auto&, auto&, auto& respond) { ready(env_, respond); });
    add("GET", "/metrics", [this](auto&, auto&, auto& respond) { prometheus(env_, respond); });
    add("GET", "/v1/bus/stats", [this](auto&, auto&, auto& respond) { bus_stats(env_, respond); });
    add("GET", "/v1/storage/health",
        [this](auto&, auto&, auto& respond) { storage_health(env_, respond); });
    add("GET", "/v1/topics", [this](auto&, auto&, auto& respond) { list_topics(env_, respond); });
    add("POST", "/v1/topics/{topic}/events",
        [this](auto& req, auto& p, auto& respond) { publish(env_, req, p[0], respond); });
    add("GET", "/v1/topics/{topic}/events",
        [this](auto& req, auto& p, auto& respond) { read_events(env_, req, p[0], respond); });
    add("GET", "/v1/topics/{topic}/tail",
        [this](auto& req, auto& p, auto& respond) { tail(env_, req, p[0], respond); });
    add("GET", "/v1/events/{id}",
        [this](auto&, auto& p, auto& respond) { get_event(env_, p[0], respond); });
    add("GET", "/v1/agents", [this](auto&, auto&, auto& respond) { list_agents(env_, respond); });
    add("GET", "/v1/metrics",
        [this](auto& req, auto&, auto& respond) { agent_metrics(env_, req, respond); });
    add("GET", "/v1/agents/{name}",
        [this](auto&, auto& p, auto& respond) { get_agent(env_, p[0], respond); });
    add("POST", "/v1/agents/{name}/pause",
        [this](auto&, auto& p, auto& respond) { pause_agent(env_, p[0], true, respond); });
    add("POST", "/v1/agents/{name}/resume",
        [this](auto&, auto& p, auto& respond) { pause_agent(env_, p[0], false, respond); });
    add("POST", "/v1/agents/{name}/fetch",
        [this](auto& req, auto& p, auto& respond) { pull_fetch(env_, req, p[0], respond); });
    add("POST", "/v1/agents/{name}/ack",
        [this](auto& req, auto& p, auto& respond) { pull_ack(env_, req, p[0], respond); });
    add("POST", "/v1/agents/{name}/nack",
        [this](auto& req, auto& p, auto& respond) { pull_nack(env_, req, p[0], respond); });
    add("GET", "/v1/topics/{topic}/groups",
        [this](auto& req, auto& p, auto& respond) { groups(env_, req, p[0], respond); });
    add("GET", "/v1/dlq",
        [this](auto& req, auto&, auto& respond) { dlq_list(env_, req, respond); });
    add("POST", "/v1/dlq/retry-all",
        [this](auto& req, auto&, auto& respond) { dlq_retry_all(env_, req, respond); });
    add("POST", "/v1/dlq/purge",
        [this](auto& req, auto&, auto& respond) { dlq_purge(env_, req, respond); });
    add("GET", "/v1/dlq/{id}",
        [this](auto&, auto& p, auto& respond) { env_.node.dlq_get(p[0], dlq_answer(respond)); });
    add("DELETE", "/v1/dlq/{id}",
        [this](auto&, auto& p, auto& respond) { env_.node.dlq_delete(p[0], dlq_answer(respond)); });
    add("POST", "/v1/dlq/{id}/retry",
        [this](auto&, auto& p, auto& respond) { env_.node.dlq_retry(p[0], dlq_answer(respond)); });
    add("GET", "/v1/cluster", [this](auto&, auto&, auto& respond) { cluster(env_, respond); });
    add("GET", "/v1/cluster/partitions",
        [this](auto&, auto&, auto& respond) { cluster_partitions(env_, respond); });
    add("POST", "/v1/replays",
        [this](auto& req, auto&, auto& respond) { replay_create(env_, req, respond); });
    add("GET", "/v1/replays", [this](auto&, auto&, auto& respond) { replay_list(env_, respond); });
    add("GET", "/v1/replays/{id}", [this](auto&, auto& p, auto& respond) {
      env_.node.replay_get(p[0], replay_answer(respond, 200));
    });
    add("DELETE", "/v1/replays/{id}", [this](auto&, auto& p, auto& respond) {
      env_.node.replay_cancel(p[0], replay_answer(respond, 200));
    });
    add("GET", "/v1/replays/{id}/history",
        [this](auto& req, auto& p, auto& respond) { replay_history(env_, req, p[0], respond); });
  }

  void operator()(request&& req, responder respond) {
    auto segments = split_path(req.path);
    std::vector<std::string> decoded;
    decoded.reserve(segments.size());
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
    // A member's share of a cluster-wide request is counted where the
    // request came in, not again here.
    if (!req.local) {
      auto& series = hit ? *hit->series
                         : env_.stats.series(req.method, same_path ? same_path->label : "other");
      respond = [this, &series, started = std::chrono::steady_clock::now(),
                 respond = std::move(respond)](response res) {
        env_.stats.observe(series, res.status, std::chrono::steady_clock::now() - started);
        respond(std::move(res));
      };
    }
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

  void count_own_answer(unsigned status) {
    env_.stats.observe(env_.stats.series("other", "other"), status, std::chrono::nanoseconds{0});
  }

private:
  void dispatch(const route& r, request& req, const params& p, responder& respond) {
    // Decided on the route matched, not on the raw path: "//v1/..." and
    // "/%761/..." reach the same routes and need the same token.
    if (!req.local && !r.pattern.empty() && r.pattern.front() == "v1" && !authorized(req)) {
      auto res = problem(401, "unauthorized", "Unauthorized",
                         "this route needs the header Authorization: Bearer <http.token>");
      res.headers.emplace_back("WWW-Authenticate", "Bearer");
      return respond(std::move(res));
    }
    if (r.cluster && !req.local)
      return r.cluster(req, p, respond, local_);
    r.fn(req, p, respond);
  }

  void add(std::string method, const std::string& path, route_fn fn) {
    auto& series = env_.stats.series(method, path);
    auto cluster = cluster_handler(env_, method, path);
    routes_.push_back(
      {std::move(method), path, split_path(path), std::move(fn), &series, std::move(cluster)});
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
    if (env_.cfg.http.token.empty())
      return true;
    // The scheme is case-insensitive (RFC 9110 section 11.1); the token is not.
    auto& a = req.authorization;
    if (a.size() < 7 || strncasecmp(a.c_str(), "bearer ", 7) != 0)
      return false;
    auto given = a.substr(7);
    while (!given.empty() && given.front() == ' ')
      given.erase(0, 1);
    return constant_time_equal(given, env_.cfg.http.token);
  }

  http::metrics stats_;
  api_env env_;
  std::vector<route> routes_;
  local_fn local_ = [this](request req, responder respond) {
    req.local = true;
    (*this)(std::move(req), std::move(respond));
  };
};

} // namespace

handler make_api(actors::node& node, const config::config& cfg,
                 std::function<void(unsigned)>* own_answers) {
  auto a = std::make_shared<api>(node, cfg);
  // Peers ask for this node's share of cluster-wide reads. The node keeps
  // the handler (and so the API) until it is destroyed.
  node.serve_peers([a](actors::peer_request pr, std::function<void(actors::peer_response)> done) {
    request req;
    req.method = std::move(pr.method);
    req.path = std::move(pr.path);
    req.query = std::move(pr.query);
    req.body = std::move(pr.body);
    req.local = true;
    (*a)(std::move(req), [done](response res) {
      done({res.status, std::move(res.content_type), std::move(res.body)});
    });
  });
  if (own_answers != nullptr)
    *own_answers = [a](unsigned status) { a->count_own_answer(status); };
  return [a](request&& req, responder respond) { (*a)(std::move(req), std::move(respond)); };
}

} // namespace nerve::http
