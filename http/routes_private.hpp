// Private to http/: what the route files share. The environment a handler
// runs in, the request and answer helpers, and the handlers of each area
// (routes_events.cpp, routes_agents.cpp, routes_dlq.cpp, routes_replay.cpp,
// routes_ops.cpp); routes.cpp routes requests to them. No Beast here.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <initializer_list>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "actors/node.hpp"
#include "config/config.hpp"
#include "http/route_table.hpp"
#include "http/server.hpp"

namespace nerve::http {

class metrics;

/// What every handler may use; owned by the API, so it outlives every
/// answer it sends.
struct api_env {
  actors::node& node;
  const config::config& cfg;
  http::metrics& stats; ///< the request metrics, and GET /metrics
  std::chrono::steady_clock::time_point started = std::chrono::steady_clock::now();

  /// Seconds since the API started, to a tenth.
  [[nodiscard]] double uptime_s() const;
};

/// Runs a request on this node alone (`req.local` set: no fan-out, no token
/// check: a peer asks, or the fan-out asks this node for its share).
using local_fn = std::function<void(request, responder)>;

/// Answers a cluster-wide route's request by asking the members and merging.
using cluster_fn
  = std::function<void(request& req, const params& p, responder& respond, const local_fn& local)>;

/// In a cluster, what answers route (method, label) across the members
/// (routes_cluster.cpp); empty when the route is node-local or this node
/// runs alone. Decided once per route, from the configuration (`env` must
/// outlive the function). A request a member asks for its share
/// (`req.local`) is never fanned out again: the caller checks that.
cluster_fn cluster_handler(const api_env& env, const std::string& method, const std::string& label);

// -- request and answer helpers (routes.cpp) ------------------------------------

[[nodiscard]] response json_response(unsigned status, std::string body);

/// The problem+json answer for an error of the node.
[[nodiscard]] response error_response(const actors::error& e);

// -- events: topics, publish, reads, tail (routes_events.cpp) -------------------

/// Events still stored in a topic, and their approximate bytes.
[[nodiscard]] std::pair<std::uint64_t, std::uint64_t> stored(const actors::topic_view& t);

void list_topics(const api_env& env, responder& respond);
void publish(const api_env& env, request& req, const std::string& topic, responder& respond);
void read_events(const api_env& env, request& req, const std::string& topic, responder& respond);
void get_event(const api_env& env, const std::string& id, responder& respond);
void tail(const api_env& env, request& req, const std::string& topic, responder& respond);

// -- agents, their groups and counters (routes_agents.cpp) ----------------------

void list_agents(const api_env& env, responder& respond);
void get_agent(const api_env& env, const std::string& name, responder& respond);
void pause_agent(const api_env& env, const std::string& name, bool paused, responder& respond);
/// GET /v1/topics/{topic}/groups; with `index` and `wait_ms`, a long poll
/// answered once the cursors moved past that index.
void groups(const api_env& env, request& req, const std::string& topic, responder& respond);
/// POST /v1/agents/{name}/fetch, .../ack, .../nack: pull agents' workers.
void pull_fetch(const api_env& env, request& req, const std::string& agent, responder& respond);
void pull_ack(const api_env& env, request& req, const std::string& agent, responder& respond);
void pull_nack(const api_env& env, request& req, const std::string& agent, responder& respond);
/// GET /v1/metrics: counters per agent and topic.
void agent_metrics(const api_env& env, request& req, responder& respond);

// -- the DLQ (routes_dlq.cpp) ---------------------------------------------------

/// Answers one DLQ entry (get, delete, retry).
[[nodiscard]] actors::callback<actors::dlq_view> dlq_answer(const responder& respond);
void dlq_list(const api_env& env, request& req, responder& respond);
void dlq_retry_all(const api_env& env, request& req, responder& respond);
void dlq_purge(const api_env& env, request& req, responder& respond);

// -- replays (routes_replay.cpp) ------------------------------------------------

/// Answers one replay's view with `status`.
[[nodiscard]] actors::callback<actors::replay_view> replay_answer(responder& respond,
                                                                  unsigned status);
void replay_create(const api_env& env, request& req, responder& respond);
void replay_list(const api_env& env, responder& respond);
void replay_history(const api_env& env, request& req, const std::string& id, responder& respond);

// -- operations: health, readiness, metrics, storage, cluster (routes_ops.cpp) --

void health(const api_env& env, responder& respond);
void detailed(const api_env& env, responder& respond);
void ready(const api_env& env, responder& respond);
void prometheus(const api_env& env, responder& respond);
void bus_stats(const api_env& env, responder& respond);
void storage_health(const api_env& env, responder& respond);
void cluster(const api_env& env, responder& respond);
/// GET /v1/cluster/partitions: leaders, in-sync sets, high watermarks, lag.
void cluster_partitions(const api_env& env, responder& respond);

} // namespace nerve::http
