// Routes of operations: health (plain and detailed), readiness, the
// Prometheus metrics, bus and storage state, and the cluster view.
#include <cmath>

#include <nlohmann/json.hpp>

#include "http/metrics.hpp"
#include "http/problem.hpp"
#include "http/routes_private.hpp"

namespace nerve::http {

using json = nlohmann::json;

namespace {

/// With replication (CONTRACT section 9): degraded while a partition has
/// fewer in-sync copies than replicas; unhealthy while one has no leader or
/// fewer in-sync copies than min_insync (it refuses writes), or etcd is out
/// of reach (leaders step down when their lease lapses).
json replication_indicator(const actors::cluster_report& c,
                           const std::vector<actors::replication_view>& parts,
                           const config::cluster_config& cfg) {
  std::size_t up = 0;
  for (auto& m : c.members)
    up += m.up ? 1 : 0;
  std::size_t leaderless = 0;
  std::size_t below_min = 0;
  std::size_t under = 0;
  auto reachable = [&c](const std::string& node) {
    for (auto& m : c.members)
      if (m.id == node)
        return m.up;
    return false;
  };
  for (auto& p : parts) {
    if (p.leader.empty() || !reachable(p.leader))
      ++leaderless;
    if (p.in_sync.size() < cfg.min_insync)
      ++below_min;
    else if (p.in_sync.size() < p.replicas.size())
      ++under;
  }
  auto message = std::to_string(up) + " of " + std::to_string(c.members.size()) + " nodes up; "
                 + std::to_string(parts.size()) + " partitions";
  std::string status = up < c.members.size() || under > 0 ? "degraded" : "healthy";
  if (!c.etcd_up || !c.lease_alive) {
    status = "unhealthy";
    message += c.etcd_up ? "; this node's etcd lease lapsed: it leads nothing"
                         : "; etcd is out of reach: this node leads nothing once its lease lapses";
  }
  if (leaderless > 0) {
    status = "unhealthy";
    message += "; " + std::to_string(leaderless)
               + " without a reachable leader (writes refused until one is elected)";
  }
  if (below_min > 0) {
    status = "unhealthy";
    message += "; " + std::to_string(below_min) + " with fewer than cluster.min_insync ("
               + std::to_string(cfg.min_insync) + ") copies in sync (writes refused)";
  }
  if (under > 0)
    message += "; " + std::to_string(under) + " under-replicated";
  return json{{"name", "cluster"}, {"status", status}, {"message", message}};
}

/// "N of M nodes up": degraded while a member is down, unhealthy while a
/// partition this node knows has its owner down (it refuses writes).
json cluster_indicator(const actors::cluster_report& c) {
  std::size_t up = 0;
  std::vector<std::string> orphaned;
  for (auto& m : c.members) {
    if (m.up)
      ++up;
    else if (!m.partitions.empty())
      orphaned.push_back(m.id);
  }
  auto message = std::to_string(up) + " of " + std::to_string(c.members.size()) + " nodes up";
  std::string status = "healthy";
  if (!orphaned.empty()) {
    status = "unhealthy";
    message += "; partitions owned by";
    for (auto& id : orphaned)
      message += " " + id;
    message += " refuse writes";
  } else if (up < c.members.size()) {
    status = "degraded";
  }
  return json{{"name", "cluster"}, {"status", status}, {"message", message}};
}

/// Degraded while any agent instance is down: crashed, or waiting to restart.
json agents_indicator(const actors::health_report& h) {
  auto message = std::to_string(h.agents_running) + " running";
  if (h.agents_restarting > 0)
    message += ", " + std::to_string(h.agents_restarting) + " restarting";
  if (h.agents_crashed > 0)
    message += ", " + std::to_string(h.agents_crashed) + " crashed";
  bool down = h.agents_restarting + h.agents_crashed > 0;
  return {{"name", "agents"}, {"status", down ? "degraded" : "healthy"}, {"message", message}};
}

} // namespace

void health(const api_env& env, responder& respond) {
  if (env.node.healthy_now())
    return respond(json_response(200, R"({"status":"healthy"})"));
  respond(json_response(503, R"({"status":"unhealthy"})"));
}

void detailed(const api_env& env, responder& respond) {
  env.node.health([&env, respond](actors::result<actors::health_report> r) {
    if (!r)
      return respond(error_response(r.error()));
    auto& h = *r;
    auto& limits = env.cfg.health;
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
      db["message"] = "rocksdb at " + env.cfg.data_dir;
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
    auto report = env.node.cluster();
    add(report.replicated ? replication_indicator(report, env.node.replication(), env.cfg.cluster)
                          : cluster_indicator(report));
    std::string state;
    if (!h.storage_ok && !h.bus_ok)
      state = "DOWN";
    else if (!h.storage_ok || !h.bus_ok || worst != "healthy")
      state = "DEGRADED";
    else
      state = h.agents_running > 0 ? "RUNNING" : "READY";
    json body{{"status", worst},
              {"state", state},
              {"runner_id", env.node.runner_id()},
              {"node_id", env.node.node_id()},
              {"version", NERVE_VERSION},
              {"uptime_s", env.uptime_s()},
              {"indicators", std::move(indicators)}};
    respond(json_response(200, body.dump()));
  });
}

void ready(const api_env& env, responder& respond) {
  if (env.node.ready())
    return respond(json_response(200, R"({"status":"ready"})"));
  auto r = json_response(503, R"({"status":"not ready"})");
  r.headers.emplace_back("Retry-After", "1");
  respond(std::move(r));
}

void prometheus(const api_env& env, responder& respond) {
  auto r = json_response(200, env.stats.render(env.node.scrape()));
  r.content_type = metrics_content_type;
  respond(std::move(r));
}

void bus_stats(const api_env& env, responder& respond) {
  env.node.topics([&env, respond](actors::result<std::vector<actors::topic_view>> r) {
    if (!r)
      return respond(error_response(r.error()));
    auto s = env.node.scrape();
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
                                {"uptime_s", env.uptime_s()}};
    respond(json_response(200, body.dump()));
  });
}

void storage_health(const api_env& env, responder& respond) {
  env.node.storage([respond](actors::result<actors::storage_report> r) {
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

/// The members as this node sees them, and the partitions each owns.
void cluster(const api_env& env, responder& respond) {
  auto report = env.node.cluster();
  json nodes = json::array();
  for (auto& m : report.members) {
    json n{{"id", m.id},     {"address", m.address},       {"state", m.up ? "up" : "down"},
           {"self", m.self}, {"partitions", m.partitions}, {"agents", m.agents}};
    if (!m.detail.empty())
      n["detail"] = m.detail;
    if (m.since_us != 0)
      n["since"] = actors::format_time(m.since_us);
    nodes.push_back(std::move(n));
  }
  json body{{"node_id", report.node_id},
            {"mode", report.clustered ? "cluster" : "single-node"},
            {"nodes", std::move(nodes)},
            {"warnings", report.warnings}};
  respond(json_response(200, body.dump(-1, ' ', false, json::error_handler_t::replace)));
}

/// This node's view of the replicated partitions: etcd's record and its
/// own copy (merged across members by routes_cluster.cpp).
void cluster_partitions(const api_env& env, responder& respond) {
  json parts = json::array();
  for (auto& v : env.node.replication()) {
    json followers = json::array();
    for (auto& f : v.followers) {
      json one{{"node", f.node}, {"synced_end", f.synced_end}, {"lag", v.lag_of(f)}};
      if (f.last_fetch_us != 0)
        one["last_fetch"] = actors::format_time(f.last_fetch_us);
      followers.push_back(std::move(one));
    }
    json p{{"topic", v.topic},   {"partition", v.partition}, {"epoch", v.epoch},
           {"leader", v.leader}, {"replicas", v.replicas},   {"in_sync", v.in_sync}};
    if (!v.role.empty()) {
      p["role"] = v.role;
      p["high_watermark"] = v.high_watermark;
      p["log_end"] = v.log_end;
    }
    if (v.role == "leader")
      p["followers"] = std::move(followers);
    parts.push_back(std::move(p));
  }
  json body{{"node_id", env.node.node_id()},
            {"replicated", env.cfg.cluster.replicated()},
            {"replication_factor", env.cfg.cluster.replication_factor},
            {"min_insync", env.cfg.cluster.min_insync},
            {"partitions", std::move(parts)}};
  respond(json_response(200, body.dump(-1, ' ', false, json::error_handler_t::replace)));
}

} // namespace nerve::http
