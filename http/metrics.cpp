// Prometheus exposition with prometheus-cpp core. HTTP series live in a
// registry for the life of the server; the node's state is copied into a
// fresh registry on each scrape, so gauges are read when asked and the
// runtime's all-time counters are exported as they are.
#include "http/metrics.hpp"

#include <array>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <mutex>
#include <optional>
#include <sstream>
#include <utility>
#include <vector>

#include <sys/resource.h>
#include <unistd.h>

#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>
#include <prometheus/text_serializer.h>

namespace nerve::http {

namespace {

using prometheus::Labels;

/// Seconds: from a fast local answer to a slow publish under fsync.
const prometheus::Histogram::BucketBoundaries request_bounds_s
  = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10};

std::string method_label(const std::string& method) {
  static const std::array<const char*, 7> verbs
    = {"GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"};
  for (auto* v : verbs)
    if (method == v)
      return method;
  return "other";
}

/// Adds one histogram series holding `v`'s buckets (to what it holds already).
void observe_view(prometheus::Family<prometheus::Histogram>& family, const Labels& labels,
                  const actors::latency_view& v) {
  std::vector<double> counts(v.counts.begin(), v.counts.end());
  family.Add(labels, v.upper_bounds_s).ObserveMultiple(counts, v.sum_s);
}

void add_deliveries(prometheus::Registry& reg, const actors::metrics_snapshot& s) {
  auto& deliveries = prometheus::BuildCounter()
                       .Name("nerve_deliveries_total")
                       .Help("Delivery attempts by outcome: acked, failed (an error answer), "
                             "timeout (no answer in time); then retried or dead_lettered")
                       .Register(reg);
  auto& processing = prometheus::BuildHistogram()
                       .Name("nerve_processing_seconds")
                       .Help("Time an agent took to answer a delivery attempt")
                       .Register(reg);
  for (auto& m : s.deliveries) {
    auto count = [&](const char* outcome, std::uint64_t n) {
      deliveries.Add({{"agent", m.agent}, {"topic", m.topic}, {"outcome", outcome}})
        .Increment(static_cast<double>(n));
    };
    count("acked", m.processed);
    count("failed", m.failed - std::min(m.failed, m.timed_out));
    count("timeout", m.timed_out);
    count("retried", m.retried);
    count("dead_lettered", m.dead_lettered);
    observe_view(processing, {{"agent", m.agent}}, m.processing);
  }
}

/// The first line of `path` that starts with `key`, without the key.
std::optional<std::string> proc_line(const char* path, const std::string& key) {
  std::ifstream in{path};
  for (std::string line; std::getline(in, line);)
    if (line.compare(0, key.size(), key) == 0)
      return line.substr(key.size());
  return std::nullopt;
}

/// The memory this process may use: its cgroup's limit when it has one,
/// else the machine's memory (MemTotal).
std::optional<double> memory_limit_bytes() {
  std::ifstream cg{"/sys/fs/cgroup/memory.max"}; // cgroup v2, as the process sees it
  std::string v;
  if (cg >> v && v != "max")
    try {
      return std::stod(v);
    } catch (const std::exception&) {
    }
  if (auto total = proc_line("/proc/meminfo", "MemTotal:")) {
    std::istringstream in{*total};
    double kib = 0;
    if (in >> kib)
      return kib * 1024;
  }
  return std::nullopt;
}

/// The standard process series of Prometheus clients (process_*), read from
/// /proc at scrape time, and the memory the process may use.
void add_process(prometheus::Registry& reg) {
  auto gauge = [&reg](const char* name, const char* help, double v) {
    prometheus::BuildGauge().Name(name).Help(help).Register(reg).Add({}).Set(v);
  };
  std::ifstream stat_file{"/proc/self/stat"};
  std::string stat((std::istreambuf_iterator<char>(stat_file)), std::istreambuf_iterator<char>());
  auto close = stat.rfind(')'); // the command name may hold spaces and parentheses
  if (close != std::string::npos) {
    std::istringstream in{stat.substr(close + 2)};
    std::vector<std::string> f{std::istream_iterator<std::string>{in},
                               std::istream_iterator<std::string>{}};
    // f[0] is field 3 of proc(5): utime 14, stime 15, starttime 22, vsize 23, rss 24.
    if (f.size() > 21) {
      const auto ticks = static_cast<double>(sysconf(_SC_CLK_TCK));
      const auto page = static_cast<double>(sysconf(_SC_PAGESIZE));
      prometheus::BuildCounter()
        .Name("process_cpu_seconds_total")
        .Help("User and system CPU time spent, in seconds")
        .Register(reg)
        .Add({})
        .Increment((std::stod(f[11]) + std::stod(f[12])) / ticks);
      gauge("process_virtual_memory_bytes", "Virtual memory size in bytes", std::stod(f[20]));
      gauge("process_resident_memory_bytes", "Resident memory size in bytes",
            std::stod(f[21]) * page);
      if (auto btime = proc_line("/proc/stat", "btime "))
        gauge("process_start_time_seconds", "Start time of the process since the epoch, in seconds",
              std::stod(*btime) + std::stod(f[19]) / ticks);
    }
  }
  std::error_code ec;
  double fds = 0;
  for (std::filesystem::directory_iterator it{"/proc/self/fd", ec}, end; !ec && it != end;
       it.increment(ec))
    ++fds;
  gauge("process_open_fds", "Open file descriptors", fds);
  rlimit nofile{};
  if (getrlimit(RLIMIT_NOFILE, &nofile) == 0)
    gauge("process_max_fds", "The most file descriptors the process may open",
          static_cast<double>(nofile.rlim_cur));
  if (auto limit = memory_limit_bytes())
    gauge("nerve_memory_limit_bytes",
          "The memory nerve may use: its cgroup's limit, else the machine's memory", *limit);
}

void add_groups(prometheus::Registry& reg, const actors::metrics_snapshot& s) {
  auto& pending = prometheus::BuildGauge()
                    .Name("nerve_pending_deliveries")
                    .Help("Deliveries sent and not answered, or waiting to be retried")
                    .Register(reg);
  auto& lag = prometheus::BuildGauge()
                .Name("nerve_consumer_lag")
                .Help("Events of the topic an agent's cursor has not passed yet")
                .Register(reg);
  for (auto& g : s.groups) {
    Labels labels{{"agent", g.agent}, {"topic", g.topic}};
    pending.Add(labels).Set(static_cast<double>(g.pending));
    lag.Add(labels).Set(static_cast<double>(g.lag));
  }
}

void add_node(prometheus::Registry& reg, const actors::metrics_snapshot& s) {
  auto& published = prometheus::BuildCounter()
                      .Name("nerve_events_published_total")
                      .Help("Events appended to a topic and durable (duplicates excluded)")
                      .Register(reg);
  for (auto& t : s.topics)
    published.Add({{"topic", t.topic}}).Increment(static_cast<double>(t.published));
  auto& restarts = prometheus::BuildCounter()
                     .Name("nerve_agent_restarts_total")
                     .Help("Restarts of an agent's instances since start-up")
                     .Register(reg);
  for (auto& a : s.agents)
    restarts.Add({{"agent", a.agent}}).Increment(static_cast<double>(a.restarts));
  prometheus::BuildGauge()
    .Name("nerve_dlq_entries")
    .Help("Entries in the dead-letter queue")
    .Register(reg)
    .Add({})
    .Set(static_cast<double>(s.dlq_entries));
  observe_view(prometheus::BuildHistogram()
                 .Name("nerve_storage_write_seconds")
                 .Help("Time to write one group commit of events to RocksDB")
                 .Register(reg),
               {}, s.storage_write);
  observe_view(prometheus::BuildHistogram()
                 .Name("nerve_storage_sync_seconds")
                 .Help("Time of one fsync of the RocksDB write-ahead log")
                 .Register(reg),
               {}, s.storage_sync);
  if (!s.tracing)
    return;
  auto& spans = prometheus::BuildCounter()
                  .Name("nerve_tracing_spans_total")
                  .Help("Spans by fate: exported (the collector took them), dropped (the export "
                        "queue was full), failed (the collector refused or never answered)")
                  .Register(reg);
  spans.Add({{"outcome", "exported"}}).Increment(static_cast<double>(s.spans_exported));
  spans.Add({{"outcome", "dropped"}}).Increment(static_cast<double>(s.spans_dropped));
  spans.Add({{"outcome", "failed"}}).Increment(static_cast<double>(s.spans_failed));
  prometheus::BuildGauge()
    .Name("nerve_tracing_queue_spans")
    .Help("Spans waiting for export")
    .Register(reg)
    .Add({})
    .Set(static_cast<double>(s.spans_queued));
}

/// Replication (cluster step 2): this node's copies, its elections, etcd.
void add_replication(prometheus::Registry& reg, const actors::metrics_snapshot& s) {
  if (!s.replicated)
    return;
  auto& in_sync = prometheus::BuildGauge()
                    .Name("nerve_partition_in_sync_replicas")
                    .Help("In-sync copies of a partition this node leads (leader included)")
                    .Register(reg);
  auto& under = prometheus::BuildGauge()
                  .Name("nerve_partition_under_replicated")
                  .Help("1 when a partition this node leads has fewer in-sync copies than "
                        "replicas")
                  .Register(reg);
  auto& hw = prometheus::BuildGauge()
               .Name("nerve_partition_high_watermark")
               .Help("Offsets below this are on every in-sync copy (as this copy knows)")
               .Register(reg);
  auto& end = prometheus::BuildGauge()
                .Name("nerve_partition_log_end")
                .Help("The next offset of this node's copy of a partition")
                .Register(reg);
  auto& leader = prometheus::BuildGauge()
                   .Name("nerve_partition_leader")
                   .Help("1 when this node leads the partition, 0 when it follows")
                   .Register(reg);
  auto& lag = prometheus::BuildGauge()
                .Name("nerve_replication_lag_events")
                .Help("Events a follower's synced copy is behind its leader's log end")
                .Register(reg);
  for (auto& r : s.replicas) {
    Labels labels{{"topic", r.topic}, {"partition", std::to_string(r.partition)}};
    end.Add(labels).Set(static_cast<double>(r.log_end));
    hw.Add(labels).Set(static_cast<double>(r.high_watermark));
    leader.Add(labels).Set(r.leads ? 1 : 0);
    if (!r.leads)
      continue;
    in_sync.Add(labels).Set(r.in_sync);
    under.Add(labels).Set(r.in_sync < r.replicas ? 1 : 0);
    for (auto& [node, n] : r.follower_lag)
      lag.Add({{"topic", r.topic}, {"partition", std::to_string(r.partition)}, {"follower", node}})
        .Set(static_cast<double>(n));
  }
  prometheus::BuildCounter()
    .Name("nerve_leader_elections_total")
    .Help("Partition leaderships this node won, since start-up")
    .Register(reg)
    .Add({})
    .Increment(static_cast<double>(s.leader_elections));
  prometheus::BuildCounter()
    .Name("nerve_etcd_requests_total")
    .Help("Calls to etcd, since start-up")
    .Register(reg)
    .Add({})
    .Increment(static_cast<double>(s.etcd_requests));
  prometheus::BuildCounter()
    .Name("nerve_etcd_errors_total")
    .Help("Calls to etcd that failed, since start-up")
    .Register(reg)
    .Add({})
    .Increment(static_cast<double>(s.etcd_errors));
  prometheus::BuildGauge()
    .Name("nerve_etcd_up")
    .Help("1 when the last call to etcd succeeded")
    .Register(reg)
    .Add({})
    .Set(s.etcd_up ? 1 : 0);
  observe_view(prometheus::BuildHistogram()
                 .Name("nerve_etcd_request_seconds")
                 .Help("Time of one call to etcd")
                 .Register(reg),
               {}, s.etcd_latency);
}

} // namespace

struct metrics::route_series {
  std::string method;
  std::string route;
  prometheus::Histogram* duration = nullptr;
  std::mutex mutex;
  std::map<unsigned, prometheus::Counter*> by_status; ///< guarded by mutex
};

struct metrics::impl {
  prometheus::Registry registry;
  prometheus::Family<prometheus::Counter>& requests
    = prometheus::BuildCounter()
        .Name("nerve_http_requests_total")
        .Help("HTTP requests answered, by method, route pattern and status code")
        .Register(registry);
  prometheus::Family<prometheus::Histogram>& durations
    = prometheus::BuildHistogram()
        .Name("nerve_http_request_duration_seconds")
        .Help("Time from a parsed request to its answer, by method and route pattern")
        .Register(registry);
  std::mutex mutex;
  std::map<std::pair<std::string, std::string>, std::unique_ptr<route_series>> series;

  impl() {
    prometheus::BuildGauge()
      .Name("nerve_up")
      .Help("1 while the node serves")
      .Register(registry)
      .Add({})
      .Set(1);
    prometheus::BuildGauge()
      .Name("nerve_build_info")
      .Help("The running version of nerve (always 1)")
      .Register(registry)
      .Add({{"version", NERVE_VERSION}})
      .Set(1);
  }
};

metrics::metrics() : impl_(std::make_unique<impl>()) {
}

metrics::~metrics() = default;

metrics::route_series& metrics::series(const std::string& method, const std::string& route) {
  auto key = std::make_pair(method_label(method), route);
  std::lock_guard<std::mutex> guard{impl_->mutex};
  auto& s = impl_->series[key];
  if (!s) {
    s = std::make_unique<route_series>();
    s->method = key.first;
    s->route = route;
    s->duration
      = &impl_->durations.Add({{"method", s->method}, {"route", route}}, request_bounds_s);
  }
  return *s;
}

void metrics::observe(route_series& s, unsigned status, std::chrono::steady_clock::duration took) {
  prometheus::Counter* counter = nullptr;
  {
    std::lock_guard<std::mutex> guard{s.mutex};
    auto& c = s.by_status[status];
    if (c == nullptr)
      c = &impl_->requests.Add(
        {{"method", s.method}, {"route", s.route}, {"code", std::to_string(status)}});
    counter = c;
  }
  counter->Increment();
  s.duration->Observe(std::chrono::duration<double>(took).count());
}

std::string metrics::render(const actors::metrics_snapshot& snapshot) const {
  prometheus::Registry now;
  add_node(now, snapshot);
  add_replication(now, snapshot);
  add_deliveries(now, snapshot);
  add_groups(now, snapshot);
  add_process(now);
  auto families = now.Collect();
  for (auto& f : impl_->registry.Collect())
    families.push_back(std::move(f));
  return prometheus::TextSerializer{}.Serialize(families);
}

} // namespace nerve::http
