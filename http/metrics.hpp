// GET /metrics: the Prometheus text format of a node's counters, gauges and
// histograms, and of the HTTP requests it served. prometheus-cpp stays in
// metrics.cpp, the one translation unit of nerve that includes it.
#pragma once

#include <chrono>
#include <memory>
#include <string>

#include "actors/node.hpp"

namespace nerve::http {

/// The Content-Type of the text exposition format.
inline constexpr const char* metrics_content_type = "text/plain; version=0.0.4; charset=utf-8";

class metrics {
public:
  metrics();
  ~metrics();
  metrics(const metrics&) = delete;
  metrics& operator=(const metrics&) = delete;

  /// The request counters and latency histogram of one method and route.
  struct route_series;

  /// The series of `route` (a pattern such as /v1/topics/{topic}/events, or
  /// "other") under `method`; methods outside the HTTP verbs count as
  /// "other", so the label values stay bounded. Thread-safe.
  [[nodiscard]] route_series& series(const std::string& method, const std::string& route);

  /// Counts one answered request. Thread-safe.
  void observe(route_series& s, unsigned status, std::chrono::steady_clock::duration took);

  /// Everything in the text format: `snapshot` (read when scraped) plus the
  /// HTTP series.
  [[nodiscard]] std::string render(const actors::metrics_snapshot& snapshot) const;

private:
  struct impl;
  std::unique_ptr<impl> impl_;
};

} // namespace nerve::http
