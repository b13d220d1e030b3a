// OTLP/HTTP JSON export of spans: a bounded queue, one exporter thread that
// sends a batch at a time through the http agents' poster (Beast stays in its
// own translation unit).
#include "actors/tracing.hpp"

#include <condition_variable>
#include <deque>
#include <future>
#include <mutex>
#include <thread>

#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include "actors/agents/http_poster.hpp"
#include "actors/node.hpp"

namespace nerve::actors {

namespace {

using json = nlohmann::json;

bool is_hex(std::string_view s) {
  return std::all_of(s.begin(), s.end(),
                     [](char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'); });
}

bool all_zeros(std::string_view s) {
  return std::all_of(s.begin(), s.end(), [](char c) { return c == '0'; });
}

std::string hex16(std::uint64_t v) {
  static constexpr char digits[] = "0123456789abcdef";
  std::string out(16, '0');
  for (int i = 15; i >= 0; --i, v >>= 4)
    out[static_cast<std::size_t>(i)] = digits[v & 0xf];
  return out;
}

/// Where the spans go: the endpoint as given when it has a path, else its
/// /v1/traces (the OTLP/HTTP default, as OTEL_EXPORTER_OTLP_ENDPOINT).
std::string traces_url(const std::string& endpoint) {
  auto rest = endpoint.substr(endpoint.find("://") + 3);
  return rest.find('/') == std::string::npos ? endpoint + "/v1/traces" : endpoint;
}

json attribute_json(const attribute_value& v) {
  if (auto* s = std::get_if<std::string>(&v))
    return {{"stringValue", *s}};
  if (auto* n = std::get_if<std::int64_t>(&v))
    return {{"intValue", std::to_string(*n)}}; // int64 as a decimal string (OTLP JSON)
  return {{"boolValue", std::get<bool>(v)}};
}

json span_json(const span& s) {
  json j = {{"traceId", s.trace_id},
            {"spanId", hex16(s.span_id)},
            {"name", s.name},
            {"kind", static_cast<int>(s.kind)},
            {"startTimeUnixNano", std::to_string(s.start_ns)},
            {"endTimeUnixNano", std::to_string(s.end_ns)}};
  if (s.parent_id != 0)
    j["parentSpanId"] = hex16(s.parent_id);
  json attrs = json::array();
  for (auto& [k, v] : s.attributes)
    attrs.push_back({{"key", k}, {"value", attribute_json(v)}});
  j["attributes"] = std::move(attrs);
  if (s.error)
    j["status"] = {{"code", 2}, {"message", s.message}}; // STATUS_CODE_ERROR
  return j;
}

} // namespace

std::optional<trace_context> parse_traceparent(std::string_view text) {
  // version "-" trace-id "-" parent-id "-" flags: 2+1+32+1+16+1+2 = 55 bytes;
  // a later version may append "-" and more.
  if (text.size() < 55 || (text.size() > 55 && text[55] != '-'))
    return std::nullopt;
  auto version = text.substr(0, 2);
  auto trace = text.substr(3, 32);
  auto parent = text.substr(36, 16);
  auto flags = text.substr(53, 2);
  if (text[2] != '-' || text[35] != '-' || text[52] != '-' || !is_hex(version) || version == "ff"
      || (version == "00" && text.size() != 55) || !is_hex(trace) || !is_hex(parent)
      || !is_hex(flags) || all_zeros(trace) || all_zeros(parent))
    return std::nullopt;
  trace_context c;
  c.trace_id = std::string{trace};
  c.parent_id = std::stoull(std::string{parent}, nullptr, 16);
  c.sampled = (std::stoul(std::string{flags}, nullptr, 16) & 1U) != 0;
  return c;
}

std::string traceparent(std::string_view trace_id, std::uint64_t span_id, bool sampled) {
  std::string out = "00-";
  out.append(trace_id).append("-").append(hex16(span_id)).append(sampled ? "-01" : "-00");
  return out;
}

std::uint64_t span_id_of(std::string_view text) {
  // FNV-1a, then a finalizer (splitmix64's) so that ids of similar texts
  // differ in every digit.
  std::uint64_t h = 1469598103934665603ULL;
  for (unsigned char c : text)
    h = (h ^ c) * 1099511628211ULL;
  h ^= h >> 30;
  h *= 0xbf58476d1ce4e5b9ULL;
  h ^= h >> 27;
  h *= 0x94d049bb133111ebULL;
  h ^= h >> 31;
  return h == 0 ? 1 : h;
}

std::string_view find_trace_id(std::string_view json_text) {
  constexpr std::string_view member = "\"trace_id\":\"";
  auto at = json_text.find(member);
  if (at == std::string_view::npos || at + member.size() + 32 > json_text.size())
    return {};
  auto id = json_text.substr(at + member.size(), 32);
  return is_hex(id) ? id : std::string_view{};
}

std::int64_t unix_ns_now() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
           std::chrono::system_clock::now().time_since_epoch())
    .count();
}

struct tracer::impl {
  config::tracing_config cfg;
  std::uint64_t threshold = 0; ///< sampled: the trace id's low 64 bits below it
  bool everything = false;
  agents::http_poster poster;
  mutable std::mutex mutex;
  std::condition_variable cv;
  std::deque<span> queue;
  bool stopping = false;
  std::atomic<std::uint64_t> recorded{0}, exported{0}, dropped{0}, failed{0};
  std::chrono::steady_clock::time_point last_warning{};
  std::uint64_t unwarned = 0; ///< failed since the last warning
  std::thread thread;

  explicit impl(const config::tracing_config& c) : cfg(c), poster(traces_url(c.otlp_endpoint), 1) {
    everything = cfg.sample_ratio >= 1.0;
    threshold = static_cast<std::uint64_t>(cfg.sample_ratio * 18446744073709551616.0);
    thread = std::thread([this] { run(); });
  }

  void run() {
    std::unique_lock<std::mutex> guard{mutex};
    for (;;) {
      cv.wait_for(guard, cfg.interval,
                  [this] { return stopping || queue.size() >= cfg.max_batch; });
      if (queue.empty()) {
        if (stopping)
          return;
        continue;
      }
      std::vector<span> batch;
      while (!queue.empty() && batch.size() < cfg.max_batch) {
        batch.push_back(std::move(queue.front()));
        queue.pop_front();
      }
      bool last = stopping;
      guard.unlock();
      bool ok = send(batch);
      guard.lock();
      if (!ok && last) { // stopping: one attempt, no waiting out a dead collector per batch
        failed += queue.size();
        queue.clear();
      }
    }
  }

  bool send(const std::vector<span>& batch) {
    json spans = json::array();
    for (auto& s : batch)
      spans.push_back(span_json(s));
    json resource = {
      {"attributes",
       json::array({{{"key", "service.name"}, {"value", {{"stringValue", cfg.service_name}}}},
                    {{"key", "service.version"}, {"value", {{"stringValue", NERVE_VERSION}}}}})}};
    json body = {
      {"resourceSpans",
       json::array(
         {{{"resource", std::move(resource)},
           {"scopeSpans", json::array({{{"scope", {{"name", "nerve"}, {"version", NERVE_VERSION}}},
                                        {"spans", std::move(spans)}}})}}})}};
    std::promise<agents::http_answer> answered;
    auto answer = answered.get_future();
    poster.post(body.dump(), cfg.timeout,
                [&answered](agents::http_answer a) { answered.set_value(std::move(a)); });
    auto a = answer.get();
    bool ok = a.status >= 200 && a.status < 300;
    (ok ? exported : failed) += batch.size();
    if (!ok)
      warn(a, batch.size());
    return ok;
  }

  /// At most one warning a minute while the collector fails.
  void warn(const agents::http_answer& a, std::size_t spans) {
    unwarned += spans;
    auto now = std::chrono::steady_clock::now();
    if (last_warning != std::chrono::steady_clock::time_point{}
        && now - last_warning < std::chrono::minutes{1})
      return;
    last_warning = now;
    spdlog::warn("tracing: the OTLP export to {} failed ({}); {} spans lost since the last warning",
                 traces_url(cfg.otlp_endpoint),
                 a.status == 0 ? a.error : "HTTP " + std::to_string(a.status), unwarned);
    unwarned = 0;
  }
};

tracer::tracer(const config::tracing_config& cfg) : impl_(std::make_unique<impl>(cfg)) {
}

tracer::~tracer() {
  {
    std::lock_guard<std::mutex> guard{impl_->mutex};
    impl_->stopping = true;
  }
  impl_->cv.notify_all();
  impl_->thread.join();
}

bool tracer::sampled(std::string_view trace_id) const {
  if (impl_->everything)
    return true;
  if (trace_id.size() != 32 || !is_hex(trace_id))
    return false;
  // The low 64 bits, as OpenTelemetry's TraceIdRatioBased sampler.
  return std::stoull(std::string{trace_id.substr(16)}, nullptr, 16) < impl_->threshold;
}

void tracer::record(span s) {
  {
    std::lock_guard<std::mutex> guard{impl_->mutex};
    if (impl_->queue.size() >= impl_->cfg.max_queue) {
      ++impl_->dropped;
      return;
    }
    impl_->queue.push_back(std::move(s));
    ++impl_->recorded;
    if (impl_->queue.size() < impl_->cfg.max_batch)
      return;
  }
  impl_->cv.notify_one();
}

std::shared_ptr<publish_trace> trace_publish(const tracer* t,
                                             const std::vector<publish_item>& items,
                                             const std::string& topic, std::uint64_t parent_id,
                                             std::string via, std::int64_t start_ns) {
  if (t == nullptr)
    return nullptr;
  std::shared_ptr<publish_trace> out;
  for (std::size_t i = 0; i < items.size(); ++i) {
    auto id = find_trace_id(items[i].fragment);
    if (!t->sampled(id))
      continue;
    if (!out) {
      out = std::make_shared<publish_trace>();
      out->topic = topic;
      out->start_ns = start_ns;
      out->parent_id = parent_id;
      out->via = std::move(via);
      out->trace_ids.resize(items.size());
    }
    out->trace_ids[i] = std::string{id};
  }
  return out;
}

void record_publish(tracer& t, const publish_trace& trace, const std::vector<published>& out) {
  const auto& topic = trace.topic;
  auto now = unix_ns_now();
  for (std::size_t i = 0; i < out.size() && i < trace.trace_ids.size(); ++i) {
    if (trace.trace_ids[i].empty())
      continue;
    auto& p = out[i];
    span s;
    s.trace_id = trace.trace_ids[i];
    // A duplicate's own span: the event's publish span is the first append's.
    s.span_id = p.duplicate ? span_id_of("duplicate/" + p.id + "/" + std::to_string(now))
                            : publish_span_id(p.id);
    s.parent_id = trace.parent_id;
    s.name = "publish " + topic;
    s.kind = trace.via == "emit" ? span_kind::internal : span_kind::producer;
    s.start_ns = trace.start_ns;
    s.end_ns = now;
    s.attributes = {{"messaging.system", std::string{"nerve"}},
                    {"messaging.operation", std::string{"publish"}},
                    {"messaging.destination.name", topic},
                    {"messaging.message.id", p.id},
                    {"nerve.partition", static_cast<std::int64_t>(p.partition)},
                    {"nerve.offset", static_cast<std::int64_t>(p.offset)},
                    {"nerve.duplicate", p.duplicate},
                    {"nerve.via", trace.via}};
    t.record(std::move(s));
  }
}

std::string attempt_traceparent(const tracer* t, std::string_view event_json,
                                std::string_view delivery_id) {
  if (t == nullptr)
    return {};
  auto trace = find_trace_id(event_json);
  if (trace.empty())
    return {};
  return traceparent(trace, delivery_span_id(delivery_id), t->sampled(trace));
}

void record_attempt(tracer& t, const attempt_trace& a) {
  auto trace = find_trace_id(a.event);
  if (!t.sampled(trace))
    return;
  const auto& cfg = *a.agent;
  span s;
  s.trace_id = std::string{trace};
  s.span_id = delivery_span_id(a.delivery_id);
  s.parent_id = publish_span_id(a.event_id);
  s.name = "deliver " + cfg.name;
  s.kind = cfg.kind == config::agent_kind::http ? span_kind::client : span_kind::consumer;
  s.start_ns = a.start_ns;
  s.end_ns = a.end_ns;
  s.attributes = {{"messaging.system", std::string{"nerve"}},
                  {"messaging.operation", std::string{"process"}},
                  {"messaging.message.id", std::string{a.event_id}},
                  {"nerve.agent", cfg.name},
                  {"nerve.agent.kind", std::string{config::to_string(cfg.kind)}},
                  {"nerve.instance", static_cast<std::int64_t>(a.instance)},
                  {"nerve.delivery_id", std::string{a.delivery_id}},
                  {"nerve.attempt", static_cast<std::int64_t>(a.attempt)},
                  {"nerve.outcome", std::string{a.ok          ? "acked"
                                                : a.timed_out ? "timeout"
                                                              : "failed"}}};
  s.error = !a.ok;
  if (!a.ok)
    s.message = std::string{a.error};
  t.record(std::move(s));
}

tracing_stats tracer::stats() const {
  tracing_stats s;
  s.recorded = impl_->recorded.load();
  s.exported = impl_->exported.load();
  s.dropped = impl_->dropped.load();
  s.failed = impl_->failed.load();
  std::lock_guard<std::mutex> guard{impl_->mutex};
  s.queued = impl_->queue.size();
  return s;
}

} // namespace nerve::actors
