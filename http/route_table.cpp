// The API's route table and matching, and the decoding of a request's path
// and query (route_table.hpp).
#include "http/route_table.hpp"

#include <algorithm>
#include <cctype>
#include <sstream>

#include "http/problem.hpp"

namespace nerve::http {

route_table::route_table() {
  using id = route_id;
  add(id::health, "GET", "/health");
  add(id::health_detailed, "GET", "/health/detailed");
  add(id::livez, "GET", "/livez");
  add(id::readyz, "GET", "/readyz");
  add(id::metrics, "GET", "/metrics");
  add(id::bus_stats, "GET", "/v1/bus/stats");
  add(id::storage_health, "GET", "/v1/storage/health");
  add(id::list_topics, "GET", "/v1/topics");
  add(id::publish, "POST", "/v1/topics/{topic}/events");
  add(id::read_events, "GET", "/v1/topics/{topic}/events");
  add(id::tail, "GET", "/v1/topics/{topic}/tail");
  add(id::get_event, "GET", "/v1/events/{id}");
  add(id::list_agents, "GET", "/v1/agents");
  add(id::agent_metrics, "GET", "/v1/metrics");
  add(id::get_agent, "GET", "/v1/agents/{name}");
  add(id::pause_agent, "POST", "/v1/agents/{name}/pause");
  add(id::resume_agent, "POST", "/v1/agents/{name}/resume");
  add(id::pull_fetch, "POST", "/v1/agents/{name}/fetch");
  add(id::pull_ack, "POST", "/v1/agents/{name}/ack");
  add(id::pull_nack, "POST", "/v1/agents/{name}/nack");
  add(id::groups, "GET", "/v1/topics/{topic}/groups");
  add(id::dlq_list, "GET", "/v1/dlq");
  add(id::dlq_retry_all, "POST", "/v1/dlq/retry-all");
  add(id::dlq_purge, "POST", "/v1/dlq/purge");
  add(id::dlq_get, "GET", "/v1/dlq/{id}");
  add(id::dlq_delete, "DELETE", "/v1/dlq/{id}");
  add(id::dlq_retry, "POST", "/v1/dlq/{id}/retry");
  add(id::cluster, "GET", "/v1/cluster");
  add(id::cluster_partitions, "GET", "/v1/cluster/partitions");
  add(id::replay_create, "POST", "/v1/replays");
  add(id::replay_list, "GET", "/v1/replays");
  add(id::replay_get, "GET", "/v1/replays/{id}");
  add(id::replay_cancel, "DELETE", "/v1/replays/{id}");
  add(id::replay_history, "GET", "/v1/replays/{id}/history");
  reserve_literals();
}

void route_table::add(route_id id, std::string method, const std::string& path) {
  routes_.push_back({id, std::move(method), path, split_path(path), {}});
}

/// A parameter does not match a segment that another route spells out at
/// that place: /v1/dlq/retry-all is never the DLQ entry "retry-all", so GET
/// on it is a 405 (POST only), not a 404 for a missing entry. (A segment
/// spelled like a parameter, "{id}", matches none either, as before.)
void route_table::reserve_literals() {
  for (auto& r : routes_) {
    r.reserved.resize(r.pattern.size());
    for (std::size_t i = 0; i < r.pattern.size(); ++i) {
      if (r.pattern[i].front() != '{')
        continue;
      for (auto& other : routes_)
        if (other.pattern.size() == r.pattern.size()
            && std::equal(r.pattern.begin(), r.pattern.begin() + static_cast<std::ptrdiff_t>(i),
                          other.pattern.begin())
            && std::find(r.reserved[i].begin(), r.reserved[i].end(), other.pattern[i])
                 == r.reserved[i].end())
          r.reserved[i].push_back(other.pattern[i]);
    }
  }
}

route_match route_table::match(const std::string& method, std::string_view path) const {
  route_match m;
  // The segments as views of the path; a segment with an escape is decoded
  // into `decoded` (reserved, so that the views stay put).
  segment_list segments;
  std::vector<std::string> decoded;
  for_each_segment(path, [&](std::string_view seg) { segments.push_back(seg); });
  for (auto& seg : segments) {
    if (seg.find('%') == std::string_view::npos)
      continue; // nothing to decode: every request's path segments
    if (decoded.capacity() == 0)
      decoded.reserve(segments.size());
    decoded.push_back(percent_decode(std::string{seg}, m.path_ok));
    if (!m.path_ok)
      return m;
    seg = decoded.back();
  }
  for (auto& r : routes_) {
    if (!match(r, segments))
      continue;
    if (r.method == method) {
      m.hit = &r;
      for (std::size_t i = 0; i < r.pattern.size(); ++i)
        if (r.pattern[i].front() == '{')
          m.p.emplace_back(segments[i]);
      return m;
    }
    m.same_path = m.same_path ? m.same_path : &r;
    m.allowed += (m.allowed.empty() ? "" : ", ") + r.method;
  }
  return m;
}

bool route_table::match(const route_spec& r, const segment_list& segs) {
  auto& pattern = r.pattern;
  if (pattern.size() != segs.size())
    return false;
  for (std::size_t i = 0; i < pattern.size(); ++i) {
    if (pattern[i].front() != '{') {
      if (pattern[i] != segs[i])
        return false;
      continue;
    }
    auto& reserved = r.reserved[i];
    if (std::find(reserved.begin(), reserved.end(), segs[i]) != reserved.end())
      return false;
  }
  return true;
}

std::vector<std::string> split_path(std::string_view path) {
  std::vector<std::string> out;
  for_each_segment(path, [&](std::string_view seg) { out.emplace_back(seg); });
  return out;
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

} // namespace nerve::http
