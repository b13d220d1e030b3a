// health_service: the health and storage reports, the metrics snapshot.
#include "actors/health_service.hpp"

#include <algorithm>
#include <shared_mutex>

#include "actors/histogram_sum.hpp"

namespace nerve::actors::detail {

namespace {

latency_view view_of(const latency_histogram& h) {
  histogram_sum s;
  s.add(h);
  return s.view();
}

} // namespace

health_service::health_service(const node_context& ctx, const io_latency& io,
                               const lifecycle_flags& flags, const query_service& queries,
                               query_pool& pool)
  : ctx_(ctx), io_(io), flags_(flags), queries_(queries), pool_(pool) {
}

void health_service::health(callback<health_report> done) {
  pool_.post([this, done = std::move(done)] {
    health_report r;
    auto probe = probe_storage();
    r.storage_ok = probe.ok;
    r.storage_latency_ms = probe.latency_ms;
    r.storage_error = probe.error;
    // A log that refuses writes (a failed write, e.g. a full disk) takes no
    // event: the bus is down with the storage until it takes writes again.
    r.bus_ok = true;
    if (flags_.draining.load()) {
      r.bus_ok = false;
      r.bus_error = "the node is shutting down";
    } else if (!ctx_.log->writable()) {
      r.bus_ok = false;
      r.bus_error = ctx_.log->refusal();
    }
    r.dlq_size = ctx_.dlq_size.load();
    count_children(r);
    done(std::move(r));
  });
}

void health_service::storage(callback<storage_report> done) {
  pool_.post([this, done = std::move(done)] {
    storage_report r;
    r.path = ctx_.cfg->data_dir;
    r.disk_bytes = ctx_.log->disk_bytes();
    auto probe = probe_storage();
    r.ok = probe.ok;
    r.write_latency_ms = probe.latency_ms;
    r.last_error = probe.ok ? ctx_.log->last_error() : probe.error;
    r.fsync = config::to_string(ctx_.cfg->storage.fsync);
    done(std::move(r));
  });
}

metrics_snapshot health_service::scrape() const {
  metrics_snapshot s;
  s.deliveries = queries_.metrics("", "");
  s.dlq_entries = ctx_.dlq_size.load();
  s.storage_write = view_of(io_.write);
  s.storage_sync = view_of(io_.sync);
  for (auto& agent : ctx_.agents.all()) {
    metrics_snapshot::agent_row a{agent->cfg.name, 0};
    for (auto& inst : agent->instances)
      a.restarts += inst->restarts.load();
    s.agents.push_back(std::move(a));
  }
  std::shared_lock<std::shared_mutex> guard{ctx_.routes.mutex};
  for (auto& [name, route] : ctx_.routes.topics) {
    metrics_snapshot::topic_row t{name, 0};
    for (auto& slot : route->slots)
      t.published += slot->durable_end.load();
    s.topics.push_back(std::move(t));
    for (auto& agent : ctx_.agents.all())
      if (agent->subscribes(name)) {
        auto g = group_of(*route, *agent);
        s.groups.push_back({g.agent, name, g.pending, g.lag});
      }
  }
  return s;
}

void health_service::count_children(health_report& r) const {
  for (auto& agent : ctx_.agents.all())
    for (auto& inst : agent->instances)
      switch (inst->state.load()) {
        case instance_state::running:
          ++r.agents_running;
          break;
        case instance_state::restarting:
          ++r.agents_restarting;
          break;
        case instance_state::crashed:
          ++r.agents_crashed;
          break;
        case instance_state::starting:
        case instance_state::stopped:
          break;
      }
  std::shared_lock<std::shared_mutex> guard{ctx_.routes.mutex};
  for (auto& [name, route] : ctx_.routes.topics)
    for (auto& slot : route->slots) {
      ++r.partitions;
      r.pending_publishes += slot->queued.load(std::memory_order_relaxed);
      if (!slot->alive.load() && r.bus_ok) {
        r.bus_ok = false;
        r.bus_error = "a partition actor of topic " + name + " is down";
      }
    }
}

/// A real write/read round trip; blocks on the disk.
health_service::probe_outcome health_service::probe_storage() const {
  probe_outcome p;
  auto latency = ctx_.log->probe();
  p.ok = latency.has_value() && ctx_.log->healthy();
  if (latency)
    p.latency_ms = static_cast<double>(latency->count()) / 1000.0;
  else
    p.error = latency.error().message;
  if (!p.ok && p.error.empty())
    p.error = ctx_.log->last_error();
  return p;
}

} // namespace nerve::actors::detail
