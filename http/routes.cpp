// Routes of the HTTP API: a handler bound to each route of the route table
// (route_table.hpp, which matches requests), authorization, the request
// metrics, and the helpers the handlers share. The handlers are in
// routes_events.cpp, routes_agents.cpp, routes_dlq.cpp, routes_replay.cpp
// and routes_ops.cpp. No Beast here: requests and responses are plain
// structs, answers come back through the node's callbacks.
#include "http/routes.hpp"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <strings.h>

#include <nlohmann/json.hpp>

#include "http/metrics.hpp"
#include "http/problem.hpp"
#include "http/routes_private.hpp"

namespace nerve::http {

using json = nlohmann::json;

double api_env::uptime_s() const {
  auto uptime = std::chrono::duration<double>(std::chrono::steady_clock::now() - started);
  return std::round(uptime.count() * 10.0) / 10.0;
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

namespace {

using route_fn = std::function<void(request&, const params&, responder&)>;

/// What answers one route of the table, and where it is counted.
struct bound_route {
  route_fn fn;
  metrics::route_series* series = nullptr;
  cluster_fn cluster; ///< answers it across the members; empty: node-local
};

bool constant_time_equal(const std::string& a, const std::string& b) {
  unsigned char diff = a.size() == b.size() ? 0 : 1;
  for (std::size_t i = 0; i < a.size(); ++i)
    diff |= static_cast<unsigned char>(a[i] ^ (i < b.size() ? b[i] : 0));
  return diff == 0;
}

class api {
public:
  api(actors::node& node, const config::config& cfg) : env_{node, cfg, stats_} {
    for (auto& r : table_.routes())
      bound_.push_back({handler(r.id), &env_.stats.series(r.method, r.label),
                        cluster_handler(env_, r.method, r.label)});
  }

  void operator()(request&& req, responder respond) {
    auto m = table_.match(req.method, req.path);
    // Counted under the route's pattern, never the raw path (bounded labels).
    // A member's share of a cluster-wide request is counted where the
    // request came in, not again here.
    if (!req.local) {
      auto& series = m.hit
                       ? *bound(*m.hit).series
                       : env_.stats.series(req.method, m.same_path ? m.same_path->label : "other");
      respond = [this, &series, started = std::chrono::steady_clock::now(),
                 respond = std::move(respond)](response res) {
        env_.stats.observe(series, res.status, std::chrono::steady_clock::now() - started);
        respond(std::move(res));
      };
    }
    if (!m.path_ok)
      return respond(
        problem(400, "bad-path", "Bad Request", "the path has a malformed percent-encoding"));
    if (m.hit)
      return dispatch(*m.hit, req, m.p, respond);
    if (!m.allowed.empty()) {
      auto res = problem(405, "method-not-allowed", "Method Not Allowed",
                         req.method + " is not allowed on " + req.path.substr(0, 256)
                           + "; allowed: " + m.allowed);
      res.headers.emplace_back("Allow", m.allowed);
      return respond(std::move(res));
    }
    respond(problem(404, "not-found", "Not Found",
                    "no route " + req.path.substr(0, 256) + "; see docs/api.md"));
  }

  void count_own_answer(unsigned status) {
    env_.stats.observe(env_.stats.series("other", "other"), status, std::chrono::nanoseconds{0});
  }

private:
  /// What answers route `id` (a switch, so that a route without a handler
  /// does not compile).
  route_fn handler(route_id id) {
    switch (id) {
      case route_id::health:
        return [this](auto&, auto&, auto& respond) { health(env_, respond); };
      case route_id::health_detailed:
        return [this](auto&, auto&, auto& respond) { detailed(env_, respond); };
      case route_id::livez:
        return
          [](auto&, auto&, auto& respond) { respond(json_response(200, R"({"status":"alive"})")); };
      case route_id::readyz:
        return [this](auto&, auto&, auto& respond) { ready(env_, respond); };
      case route_id::metrics:
        return [this](auto&, auto&, auto& respond) { prometheus(env_, respond); };
      case route_id::bus_stats:
        return [this](auto&, auto&, auto& respond) { bus_stats(env_, respond); };
      case route_id::storage_health:
        return [this](auto&, auto&, auto& respond) { storage_health(env_, respond); };
      case route_id::list_topics:
        return [this](auto&, auto&, auto& respond) { list_topics(env_, respond); };
      case route_id::publish:
        return [this](auto& req, auto& p, auto& respond) { publish(env_, req, p[0], respond); };
      case route_id::read_events:
        return [this](auto& req, auto& p, auto& respond) { read_events(env_, req, p[0], respond); };
      case route_id::tail:
        return [this](auto& req, auto& p, auto& respond) { tail(env_, req, p[0], respond); };
      case route_id::get_event:
        return [this](auto&, auto& p, auto& respond) { get_event(env_, p[0], respond); };
      case route_id::list_agents:
        return [this](auto&, auto&, auto& respond) { list_agents(env_, respond); };
      case route_id::agent_metrics:
        return [this](auto& req, auto&, auto& respond) { agent_metrics(env_, req, respond); };
      case route_id::get_agent:
        return [this](auto&, auto& p, auto& respond) { get_agent(env_, p[0], respond); };
      case route_id::pause_agent:
        return [this](auto&, auto& p, auto& respond) { pause_agent(env_, p[0], true, respond); };
      case route_id::resume_agent:
        return [this](auto&, auto& p, auto& respond) { pause_agent(env_, p[0], false, respond); };
      case route_id::pull_fetch:
        return [this](auto& req, auto& p, auto& respond) { pull_fetch(env_, req, p[0], respond); };
      case route_id::pull_ack:
        return [this](auto& req, auto& p, auto& respond) { pull_ack(env_, req, p[0], respond); };
      case route_id::pull_nack:
        return [this](auto& req, auto& p, auto& respond) { pull_nack(env_, req, p[0], respond); };
      case route_id::groups:
        return [this](auto& req, auto& p, auto& respond) { groups(env_, req, p[0], respond); };
      case route_id::dlq_list:
        return [this](auto& req, auto&, auto& respond) { dlq_list(env_, req, respond); };
      case route_id::dlq_retry_all:
        return [this](auto& req, auto&, auto& respond) { dlq_retry_all(env_, req, respond); };
      case route_id::dlq_purge:
        return [this](auto& req, auto&, auto& respond) { dlq_purge(env_, req, respond); };
      case route_id::dlq_get:
        return
          [this](auto&, auto& p, auto& respond) { env_.node.dlq_get(p[0], dlq_answer(respond)); };
      case route_id::dlq_delete:
        return [this](auto&, auto& p, auto& respond) {
          env_.node.dlq_delete(p[0], dlq_answer(respond));
        };
      case route_id::dlq_retry:
        return
          [this](auto&, auto& p, auto& respond) { env_.node.dlq_retry(p[0], dlq_answer(respond)); };
      case route_id::cluster:
        return [this](auto&, auto&, auto& respond) { cluster(env_, respond); };
      case route_id::cluster_partitions:
        return [this](auto&, auto&, auto& respond) { cluster_partitions(env_, respond); };
      case route_id::replay_create:
        return [this](auto& req, auto&, auto& respond) { replay_create(env_, req, respond); };
      case route_id::replay_list:
        return [this](auto&, auto&, auto& respond) { replay_list(env_, respond); };
      case route_id::replay_get:
        return [this](auto&, auto& p, auto& respond) {
          env_.node.replay_get(p[0], replay_answer(respond, 200));
        };
      case route_id::replay_cancel:
        return [this](auto&, auto& p, auto& respond) {
          env_.node.replay_cancel(p[0], replay_answer(respond, 200));
        };
      case route_id::replay_history:
        return
          [this](auto& req, auto& p, auto& respond) { replay_history(env_, req, p[0], respond); };
    }
    std::abort(); // not a route_id
  }

  const bound_route& bound(const route_spec& r) const {
    return bound_[static_cast<std::size_t>(&r - table_.routes().data())];
  }

  void dispatch(const route_spec& r, request& req, const params& p, responder& respond) {
    // Decided on the route matched, not on the raw path: "//v1/..." and
    // "/%761/..." reach the same routes and need the same token.
    if (!req.local && !r.pattern.empty() && r.pattern.front() == "v1" && !authorized(req)) {
      auto res = problem(401, "unauthorized", "Unauthorized",
                         "this route needs the header Authorization: Bearer <http.token>");
      res.headers.emplace_back("WWW-Authenticate", "Bearer");
      return respond(std::move(res));
    }
    auto& b = bound(r);
    if (b.cluster && !req.local)
      return b.cluster(req, p, respond, local_);
    b.fn(req, p, respond);
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
  route_table table_;
  std::vector<bound_route> bound_; ///< by the index of the route in table_
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
