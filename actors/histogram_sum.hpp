// histogram_sum: latency histograms of several partitions added up, with
// the mean, quantiles and the bucket view GET /metrics and /v1/metrics show.
#pragma once

#include <array>
#include <cmath>
#include <cstdint>

#include "actors/node.hpp"
#include "actors/node_context.hpp"

namespace nerve::actors::detail {

/// Latency histograms of several partitions added up.
struct histogram_sum {
  std::uint64_t sum_us = 0;
  std::uint64_t total = 0;
  std::array<std::uint64_t, latency_bounds_ms.size()> buckets{};

  void add(const latency_histogram& h) {
    sum_us += h.sum_us;
    for (std::size_t i = 0; i < buckets.size(); ++i) {
      buckets[i] += h.buckets[i];
      total += h.buckets[i];
    }
  }

  [[nodiscard]] double mean_ms() const {
    return total == 0 ? 0 : static_cast<double>(sum_us) / 1000.0 / static_cast<double>(total);
  }

  /// The upper bound of the bucket holding quantile `q` (0 without data).
  [[nodiscard]] double quantile_ms(double q) const {
    if (total == 0)
      return 0;
    auto rank = static_cast<std::uint64_t>(std::ceil(q * static_cast<double>(total)));
    std::uint64_t seen = 0;
    for (std::size_t i = 0; i + 1 < buckets.size(); ++i) {
      seen += buckets[i];
      if (seen >= rank)
        return latency_bounds_ms[i];
    }
    return latency_bounds_ms[buckets.size() - 2]; // beyond the last finite bound
  }

  /// In seconds; the last bound stands for +Inf, so it is not listed.
  [[nodiscard]] latency_view view() const {
    latency_view v;
    for (std::size_t i = 0; i + 1 < latency_bounds_ms.size(); ++i)
      v.upper_bounds_s.push_back(latency_bounds_ms[i] / 1000.0);
    v.counts.assign(buckets.begin(), buckets.end());
    v.sum_s = static_cast<double>(sum_us) / 1e6;
    return v;
  }
};

} // namespace nerve::actors::detail
