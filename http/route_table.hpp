// The HTTP API's routes as patterns, and what a request's target says: its
// path matched to a route, its query parsed, its percent-escapes decoded.
// No node and no Beast here: routes.cpp binds a handler to each route, and
// tests/fuzz/http_request.cpp runs the same matching on any bytes.
#pragma once

#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <boost/container/small_vector.hpp>

#include "http/server.hpp"

namespace nerve::http {

/// The path parameters of a matched route, in order.
using params = std::vector<std::string>;

/// Every route of the API (docs/api.md); routes.cpp answers each.
enum class route_id {
  health,
  health_detailed,
  livez,
  readyz,
  metrics,
  bus_stats,
  storage_health,
  list_topics,
  publish,
  read_events,
  tail,
  get_event,
  list_agents,
  agent_metrics,
  get_agent,
  pause_agent,
  resume_agent,
  pull_fetch,
  pull_ack,
  pull_nack,
  groups,
  dlq_list,
  dlq_retry_all,
  dlq_purge,
  dlq_get,
  dlq_delete,
  dlq_retry,
  cluster,
  cluster_partitions,
  replay_create,
  replay_list,
  replay_get,
  replay_cancel,
  replay_history,
};

/// One route: a method and a path pattern ("{name}" matches one segment).
struct route_spec {
  route_id id;
  std::string method;
  std::string label;                ///< the pattern as written, the metrics' route label
  std::vector<std::string> pattern; ///< the label's segments
  /// Per segment: for a parameter, the literals other routes spell at that
  /// place after the same segments (a parameter never matches one of them);
  /// empty for a literal segment. Filled once the table is complete.
  std::vector<std::vector<std::string>> reserved;
};

/// What a request's method and path matched.
struct route_match {
  bool path_ok = true;                   ///< false: a malformed percent-escape in the path
  const route_spec* hit = nullptr;       ///< the route of this method and path
  const route_spec* same_path = nullptr; ///< without a hit: the first route of this path
  params p;                              ///< the hit's parameters, decoded
  std::string allowed; ///< without a hit: the methods of this path, ", " between them
};

/// The API's routes, in the order they are tried.
class route_table {
public:
  route_table();

  /// Matches the path (still percent-encoded) and the method.
  [[nodiscard]] route_match match(const std::string& method, std::string_view path) const;
  [[nodiscard]] const std::vector<route_spec>& routes() const { return routes_; }

private:
  void add(route_id id, std::string method, const std::string& path);
  /// Fills every route's `reserved` literals (the constructor, once).
  void reserve_literals();
  /// A request path's segments; no route has more than 8 (no allocation).
  using segment_list = boost::container::small_vector<std::string_view, 8>;
  /// Whether the (decoded) segments match route `r`'s pattern.
  [[nodiscard]] static bool match(const route_spec& r, const segment_list& segs);

  std::vector<route_spec> routes_;
};

/// Calls `f` with each segment of a path split on '/', empty ones left out.
template <class F>
void for_each_segment(std::string_view path, F&& f) {
  std::size_t at = 0;
  while (at <= path.size()) {
    auto slash = path.find('/', at);
    auto seg
      = path.substr(at, slash == std::string_view::npos ? std::string_view::npos : slash - at);
    if (!seg.empty())
      f(seg);
    if (slash == std::string_view::npos)
      break;
    at = slash + 1;
  }
}

/// Splits a path on '/', leaving out empty segments.
[[nodiscard]] std::vector<std::string> split_path(std::string_view path);

/// Decodes %XX; in a query (not a path) '+' is a space as well.
[[nodiscard]] std::string percent_decode(const std::string& s, bool& ok, bool query = false);

/// Parses a query string into `out`. A malformed escape or a parameter the
/// route does not take is a 400: on a bulk action (DLQ retry-all), a typo
/// must never widen the filter to everything.
[[nodiscard]] std::optional<response> parse_query(const std::string& q,
                                                  std::initializer_list<std::string_view> allowed,
                                                  std::map<std::string, std::string>& out);

/// Parses an unsigned query parameter from `min` to `max` into `out`.
[[nodiscard]] std::optional<response> query_uint(const std::map<std::string, std::string>& q,
                                                 const std::string& name, std::uint64_t max,
                                                 std::optional<std::uint64_t>& out,
                                                 std::uint64_t min = 0);

} // namespace nerve::http
