// Loading and validating nerve's configuration (YAML, NERVE_* env, flags).
#include "config/config.hpp"

#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <set>
#include <sstream>

#include <yaml-cpp/yaml.h>

namespace nerve::config {

namespace {

/// Applies a scalar to the config; returns what is allowed when it does not fit.
using setter = std::function<std::optional<std::string>(config&, const std::string&)>;

struct setting {
  const char* path;
  setter apply;
};

std::optional<std::uint64_t> parse_uint(const std::string& text) {
  if (text.empty() || text.size() > 19
      || !std::all_of(text.begin(), text.end(), [](unsigned char c) { return std::isdigit(c); }))
    return std::nullopt;
  return std::stoull(text);
}

setter uint_in(std::uint64_t lo, std::uint64_t hi,
               std::function<void(config&, std::uint64_t)> set) {
  return [lo, hi, set = std::move(set)](config& cfg,
                                        const std::string& v) -> std::optional<std::string> {
    auto n = parse_uint(v);
    if (!n || *n < lo || *n > hi)
      return "an integer from " + std::to_string(lo) + " to " + std::to_string(hi);
    set(cfg, *n);
    return std::nullopt;
  };
}

setter duration_in(millis lo, std::function<void(config&, millis)> set) {
  return
    [lo, set = std::move(set)](config& cfg, const std::string& v) -> std::optional<std::string> {
      auto d = parse_duration(v);
      if (!d || *d < lo)
        return "a duration such as 250ms, 30s, 15m, 24h or 7d"
               + (lo.count() > 0 ? " of at least " + std::to_string(lo.count()) + "ms"
                                 : std::string{});
      set(cfg, *d);
      return std::nullopt;
    };
}

setter one_of(std::vector<std::string> allowed,
              std::function<void(config&, const std::string&)> set) {
  return [allowed = std::move(allowed),
          set = std::move(set)](config& cfg, const std::string& v) -> std::optional<std::string> {
    if (std::find(allowed.begin(), allowed.end(), v) == allowed.end()) {
      std::string all;
      for (auto& a : allowed)
        all += (all.empty() ? "" : ", ") + a;
      return "one of: " + all;
    }
    set(cfg, v);
    return std::nullopt;
  };
}

setter host_port(std::function<void(config&, const std::string&)> set, bool allow_empty) {
  return [set = std::move(set), allow_empty](config& cfg,
                                             const std::string& v) -> std::optional<std::string> {
    if (!(allow_empty && v.empty()) && !split_host_port(v))
      return std::string{"HOST:PORT with a port from 0 to 65535"}
             + (allow_empty ? " (or empty to turn it off)" : "");
    set(cfg, v);
    return std::nullopt;
  };
}

setter any_string(std::function<void(config&, const std::string&)> set) {
  return [set = std::move(set)](config& cfg, const std::string& v) -> std::optional<std::string> {
    set(cfg, v);
    return std::nullopt;
  };
}

/// The non-empty items of a comma-separated list.
std::vector<std::string> comma_items(const std::string& v) {
  std::vector<std::string> out;
  std::stringstream in{v};
  std::string item;
  while (std::getline(in, item, ','))
    if (!item.empty())
      out.push_back(item);
  return out;
}

bool valid_node_id(const std::string& v) {
  return !v.empty() && v.size() <= 64 && std::all_of(v.begin(), v.end(), [](unsigned char c) {
    return std::isalnum(c) || c == '-' || c == '_' || c == '.';
  });
}

} // namespace

bool valid_agent_name(std::string_view v) {
  return !v.empty() && v.size() <= 128 && std::all_of(v.begin(), v.end(), [](unsigned char c) {
    return std::isalnum(c) || c == '-' || c == '_' || c == '.' || c == ':';
  });
}

namespace {

const std::vector<setting>& settings() {
  static const std::vector<setting> table = {
    {"node_id",
     [](config& c, const std::string& v) -> std::optional<std::string> {
       if (!valid_node_id(v))
         return "1 to 64 characters of A-Z a-z 0-9 . _ -";
       c.node_id = v;
       return std::nullopt;
     }},
    {"data_dir",
     [](config& c, const std::string& v) -> std::optional<std::string> {
       if (v.empty())
         return "a directory path";
       c.data_dir = v;
       return std::nullopt;
     }},
    {"http.listen", host_port([](config& c, const std::string& v) { c.http.listen = v; }, false)},
    {"http.token", any_string([](config& c, const std::string& v) { c.http.token = v; })},
    {"http.max_body_bytes",
     uint_in(1024, 1ULL << 30, [](config& c, std::uint64_t n) { c.http.max_body_bytes = n; })},
    {"http.max_header_bytes",
     uint_in(1024, 1ULL << 20, [](config& c, std::uint64_t n) { c.http.max_header_bytes = n; })},
    {"http.max_connections",
     uint_in(1, 1000000, [](config& c, std::uint64_t n) { c.http.max_connections = n; })},
    {"http.probe_connections",
     uint_in(0, 10000, [](config& c, std::uint64_t n) { c.http.probe_connections = n; })},
    {"http.read_timeout",
     duration_in(millis{1}, [](config& c, millis d) { c.http.read_timeout = d; })},
    {"http.max_events_per_request",
     uint_in(1, 100000, [](config& c, std::uint64_t n) { c.http.max_events_per_request = n; })},
    {"http.threads", uint_in(1, 64, [](config& c, std::uint64_t n) { c.http.threads = n; })},
    {"storage.fsync", one_of({"always", "interval", "never"},
                             [](config& c, const std::string& v) {
                               c.storage.fsync = v == "always"     ? fsync_policy::always
                                                 : v == "interval" ? fsync_policy::interval
                                                                   : fsync_policy::never;
                             })},
    {"storage.fsync_interval",
     duration_in(millis{1}, [](config& c, millis d) { c.storage.fsync_interval = d; })},
    {"storage.retention",
     duration_in(millis{0}, [](config& c, millis d) { c.storage.retention = d; })},
    {"storage.max_batch_events",
     uint_in(1, 100000, [](config& c, std::uint64_t n) { c.storage.max_batch_events = n; })},
    {"storage.max_queued_events",
     uint_in(1, 10000000, [](config& c, std::uint64_t n) { c.storage.max_queued_events = n; })},
    {"results.ttl", duration_in(millis{0}, [](config& c, millis d) { c.results_ttl = d; })},
    {"topics.defaults.partitions", uint_in(1, 1024,
                                           [](config& c, std::uint64_t n) {
                                             c.topic_defaults.partitions
                                               = static_cast<std::uint32_t>(n);
                                           })},
    {"health.pending_degraded",
     uint_in(0, std::numeric_limits<std::uint32_t>::max(),
             [](config& c, std::uint64_t n) { c.health.pending_degraded = n; })},
    {"health.dlq_degraded", uint_in(0, std::numeric_limits<std::uint32_t>::max(),
                                    [](config& c, std::uint64_t n) { c.health.dlq_degraded = n; })},
    {"health.storage_latency_degraded",
     duration_in(millis{1}, [](config& c, millis d) { c.health.storage_latency_degraded = d; })},
    {"cluster.listen",
     host_port([](config& c, const std::string& v) { c.cluster.listen = v; }, true)},
    {"cluster.members",
     [](config& c, const std::string& v)
       -> std::
         optional<std::string> {
           c.cluster.members.clear();
           for (auto& item : comma_items(v)) {
             auto at = item.find('@');
             auto hp
               = at == std::string::npos ? std::nullopt : split_host_port(item.substr(at + 1));
             if (!hp || !valid_node_id(item.substr(0, at)) || hp->second == 0)
               return "a list of ID@HOST:PORT (ID: 1 to 64 characters of A-Z a-z 0-9 . _ -; "
                      "a port from 1 to 65535)";
             for (auto& m : c.cluster.members)
               if (m.id == item.substr(0, at))
                 return "a list of ID@HOST:PORT with each ID once (" + m.id + " is there twice)";
             c.cluster.members.push_back({item.substr(0, at), hp->first, hp->second});
           }
           return std::nullopt;
         }},
    {"cluster.tls.cert",
     any_string([](config& c, const std::string& v) { c.cluster.tls_cert = v; })},
    {"cluster.tls.key", any_string([](config& c, const std::string& v) { c.cluster.tls_key = v; })},
    {"cluster.tls.ca", any_string([](config& c, const std::string& v) { c.cluster.tls_ca = v; })},
    {"cluster.etcd",
     [](config& c,
        const std::string& v) -> std::
                                optional<std::string> {
                                  c.cluster.etcd.clear();
                                  for (auto& item : comma_items(v)) {
                                    auto hp = item.rfind("http://", 0) == 0
                                                ? split_host_port(item.substr(7))
                                                : std::nullopt;
                                    if (!hp || hp->second == 0)
                                      return "a list of etcd client URLs http://HOST:PORT (etcd's "
                                             "--advertise-client-urls)";
                                    c.cluster.etcd.push_back(item);
                                  }
                                  return std::nullopt;
                                }},
    {"cluster.name",
     [](config& c, const std::string& v) -> std::
                                           optional<std::string> {
                                             if (!valid_node_id(v))
                                               return "1 to 64 characters of A-Z a-z 0-9 . _ -";
                                             c.cluster.name = v;
                                             return std::nullopt;
                                           }},
    {"cluster.replication_factor", uint_in(1, 7,
                                           [](config& c, std::uint64_t n) {
                                             c.cluster.replication_factor
                                               = static_cast<std::uint32_t>(n);
                                           })},
    {"cluster.min_insync", uint_in(1, 7,
                                   [](config& c, std::uint64_t n) {
                                     c.cluster.min_insync = static_cast<std::uint32_t>(n);
                                     c.cluster.min_insync_set = true;
                                   })},
    {"cluster.replica_lag",
     duration_in(millis{100}, [](config& c, millis d) { c.cluster.replica_lag = d; })},
    {"cluster.lease_ttl",
     duration_in(millis{1000}, [](config& c, millis d) { c.cluster.lease_ttl = d; })},
    {"cluster.leader_rebalance",
     duration_in(millis{0}, [](config& c, millis d) { c.cluster.leader_rebalance = d; })},
    {"resp.listen", host_port([](config& c, const std::string& v) { c.resp.listen = v; }, true)},
    {"resp.max_connections",
     uint_in(1, 1000000, [](config& c, std::uint64_t n) { c.resp.max_connections = n; })},
    {"resp.max_request_bytes",
     uint_in(1024, 1ULL << 30, [](config& c, std::uint64_t n) { c.resp.max_request_bytes = n; })},
    {"resp.threads", uint_in(1, 64, [](config& c, std::uint64_t n) { c.resp.threads = n; })},
    {"tracing.otlp.endpoint",
     [](config& c, const std::string& v)
       -> std::
         optional<std::string> {
           auto rest = v.rfind("http://", 0) == 0 ? v.substr(7) : std::string{};
           auto hp = split_host_port(rest.substr(0, rest.find('/')));
           if (!v.empty() && (!hp || hp->second == 0))
             return "an OTLP/HTTP URL http://HOST:PORT or http://HOST:PORT/PATH (or empty to turn "
                    "tracing off)";
           c.tracing.otlp_endpoint = v;
           return std::nullopt;
         }},
    {"tracing.service_name",
     [](config& c, const std::string& v) -> std::
                                           optional<std::string> {
                                             if (v.empty() || v.size() > 255)
                                               return "1 to 255 characters";
                                             c.tracing.service_name = v;
                                             return std::nullopt;
                                           }},
    {"tracing.sample_ratio",
     [](config& c, const std::string& v) -> std::
                                           optional<std::string> {
                                             char* end = nullptr;
                                             double r
                                               = v.empty() ? -1 : std::strtod(v.c_str(), &end);
                                             if (v.empty() || end != v.c_str() + v.size()
                                                 || !(r >= 0.0 && r <= 1.0))
                                               return "a number from 0 to 1";
                                             c.tracing.sample_ratio = r;
                                             return std::nullopt;
                                           }},
    {"tracing.otlp.max_queue",
     uint_in(1, 1000000, [](config& c, std::uint64_t n) { c.tracing.max_queue = n; })},
    {"tracing.otlp.max_batch",
     uint_in(1, 100000, [](config& c, std::uint64_t n) { c.tracing.max_batch = n; })},
    {"tracing.otlp.interval",
     duration_in(millis{10}, [](config& c, millis d) { c.tracing.interval = d; })},
    {"tracing.otlp.timeout",
     duration_in(millis{10}, [](config& c, millis d) { c.tracing.timeout = d; })},
    {"log.level", one_of({"trace", "debug", "info", "warn", "error", "off"},
                         [](config& c, const std::string& v) { c.log.level = v; })},
    {"log.format",
     one_of({"text", "json"}, [](config& c, const std::string& v) { c.log.format = v; })},
  };
  return table;
}

const setting* find_setting(const std::string& path) {
  for (auto& s : settings())
    if (path == s.path)
      return &s;
  return nullptr;
}

bool is_section(const std::string& path) {
  auto prefix = path + ".";
  for (auto& s : settings())
    if (std::string_view{s.path}.substr(0, prefix.size()) == prefix)
      return true;
  return false;
}

std::string quote(const std::string& v) {
  return "\"" + v + "\"";
}

std::string bad_value(const std::string& path, const std::string& value,
                      const std::string& allowed) {
  return path + ": " + quote(value) + " is not allowed; expected " + allowed;
}

std::string scalar_text(const YAML::Node& node) {
  return node.IsNull() ? std::string{} : node.Scalar();
}

bool valid_topic_pattern(const std::string& p) {
  std::stringstream in{p};
  std::string token;
  std::vector<std::string> tokens;
  while (std::getline(in, token, '.'))
    tokens.push_back(token);
  if (tokens.empty() || p.back() == '.')
    return false;
  for (std::size_t i = 0; i < tokens.size(); ++i) {
    auto& t = tokens[i];
    if (t == "*")
      continue;
    if (t == ">") {
      if (i + 1 != tokens.size())
        return false;
      continue;
    }
    if (!valid_topic_name(t) || t.find('.') != std::string::npos)
      return false;
  }
  return true;
}

using result = std::optional<std::string>; // an error line, or nothing

/// The keys allowed next to `path`, for "unknown key" messages.
std::string allowed_keys_beside(const std::string& path) {
  auto dot = path.rfind('.');
  auto section = dot == std::string::npos ? std::string{} : path.substr(0, dot + 1);
  std::vector<std::string> names;
  for (auto& s : settings()) {
    std::string_view p{s.path};
    if (p.substr(0, section.size()) != section)
      continue;
    auto rest = std::string{p.substr(section.size())};
    auto name = rest.substr(0, rest.find('.'));
    if (std::find(names.begin(), names.end(), name) == names.end())
      names.push_back(name);
  }
  if (section.empty())
    for (const char* extra : {"topics", "agents"})
      if (std::find(names.begin(), names.end(), extra) == names.end())
        names.emplace_back(extra);
  std::string out;
  for (auto& n : names)
    out += (out.empty() ? "" : ", ") + n;
  return out;
}

result unknown_key(const std::string& path, const YAML::Node& node) {
  std::string value = node.IsScalar() ? node.Scalar() : node.IsMap() ? "(a map)" : "(a list)";
  return path + ": unknown key (value \"" + value
         + "\"); allowed here: " + allowed_keys_beside(path);
}

result apply_scalar(config& cfg, const std::string& path, const YAML::Node& node) {
  const setting* s = find_setting(path);
  if (s == nullptr)
    return unknown_key(path, node);
  if ((path == "cluster.members" || path == "cluster.etcd") && node.IsSequence()) {
    std::string joined;
    for (auto item : node) {
      if (!item.IsScalar())
        return bad_value(path, "(not a string)", "a list of strings");
      joined += (joined.empty() ? "" : ",") + item.Scalar();
    }
    if (auto err = s->apply(cfg, joined))
      return bad_value(path, joined, *err);
    return std::nullopt;
  }
  if (!node.IsScalar() && !node.IsNull())
    return path + ": expected a single value, not a " + (node.IsMap() ? "map" : "list");
  auto text = scalar_text(node);
  if (auto err = s->apply(cfg, text))
    return bad_value(path, text, *err);
  return std::nullopt;
}

result apply_topics(config& cfg, const YAML::Node& node) {
  if (!node.IsMap())
    return std::string{"topics: expected a map of topic name to settings"};
  for (auto it : node) {
    auto name = it.first.Scalar();
    if (name == "defaults") {
      if (!it.second.IsMap())
        return std::string{"topics.defaults: expected a map"};
      for (auto d : it.second)
        if (auto err = apply_scalar(cfg, "topics.defaults." + d.first.Scalar(), d.second))
          return err;
      continue;
    }
    if (!valid_topic_name(name))
      return bad_value("topics." + name, name,
                       "a topic name: [A-Za-z0-9_:-]+ tokens joined by '.', at most 255 bytes");
    if (!it.second.IsMap())
      return "topics." + name + ": expected a map";
    topic_config tc = cfg.topic_defaults;
    for (auto d : it.second) {
      auto key = d.first.Scalar();
      auto path = "topics." + name + "." + key;
      if (key != "partitions")
        return path + ": unknown key";
      auto n = parse_uint(scalar_text(d.second));
      if (!n || *n < 1 || *n > 1024)
        return bad_value(path, scalar_text(d.second), "an integer from 1 to 1024");
      tc.partitions = static_cast<std::uint32_t>(*n);
    }
    cfg.topics[name] = tc;
  }
  return std::nullopt;
}

result agent_string_list(const YAML::Node& node, const std::string& path,
                         std::vector<std::string>& out) {
  if (!node.IsSequence() || node.size() == 0)
    return path + ": expected a non-empty list of strings";
  out.clear();
  for (auto item : node) {
    if (!item.IsScalar())
      return path + ": expected a non-empty list of strings";
    out.push_back(item.Scalar());
  }
  return std::nullopt;
}

// Long on purpose: one branch per agent key, each checking its value and
// naming what is allowed, then the checks across keys.
result apply_agent(config& cfg, const YAML::Node& node, std::size_t index) {
  auto base = "agents[" + std::to_string(index) + "]";
  if (!node.IsMap())
    return base + ": expected a map";
  agent_config a;
  bool kind_given = false;
  bool max_in_flight_given = false;
  for (auto it : node) {
    auto key = it.first.Scalar();
    auto path = base + "." + key;
    auto& v = it.second;
    auto text = v.IsScalar() ? v.Scalar() : std::string{};
    auto need_scalar = [&]() -> result {
      if (!v.IsScalar())
        return path + ": expected a single value";
      return std::nullopt;
    };
    auto uint_field = [&](std::uint32_t& out, std::uint64_t lo, std::uint64_t hi) -> result {
      auto n = parse_uint(text);
      if (!v.IsScalar() || !n || *n < lo || *n > hi)
        return bad_value(path, text,
                         "an integer from " + std::to_string(lo) + " to " + std::to_string(hi));
      out = static_cast<std::uint32_t>(*n);
      return std::nullopt;
    };
    auto duration_field = [&](millis& out) -> result {
      auto d = parse_duration(text);
      if (!v.IsScalar() || !d || d->count() <= 0)
        return bad_value(path, text, "a positive duration such as 200ms, 30s or 5m");
      out = *d;
      return std::nullopt;
    };
    result err;
    if (key == "name") {
      if (!(err = need_scalar()) && !valid_agent_name(text))
        err = bad_value(path, text, "1 to 128 characters of A-Z a-z 0-9 . _ - :");
      a.name = text;
    } else if (key == "topics") {
      if (!(err = agent_string_list(v, path, a.topics)))
        for (auto& p : a.topics)
          if (!valid_topic_pattern(p))
            return bad_value(path, p,
                             "topic patterns: tokens of [A-Za-z0-9_:-] joined by '.', "
                             "'*' for one token, '>' for the rest");
    } else if (key == "filter") {
      if (!v.IsMap())
        return path + ": expected a map with type, source or key";
      for (auto f : v) {
        auto fk = f.first.Scalar();
        if (!f.second.IsScalar())
          return path + "." + fk + ": expected a string";
        if (fk == "type")
          a.filter.type = f.second.Scalar();
        else if (fk == "source")
          a.filter.source = f.second.Scalar();
        else if (fk == "key")
          a.filter.key = f.second.Scalar();
        else
          return path + "." + fk + ": unknown key (allowed: type, source, key)";
      }
    } else if (key == "kind") {
      if (!(err = need_scalar()) && text != "process" && text != "http" && text != "builtin"
          && text != "pull")
        err = bad_value(path, text, "one of: process, http, builtin, pull");
      a.kind = text == "process" ? agent_kind::process
               : text == "http"  ? agent_kind::http
               : text == "pull"  ? agent_kind::pull
                                 : agent_kind::builtin;
      kind_given = true;
    } else if (key == "command") {
      err = agent_string_list(v, path, a.command);
    } else if (key == "url") {
      if (!(err = need_scalar()) && text.rfind("http://", 0) != 0)
        err = bad_value(path, text, "an http:// URL");
      a.url = text;
    } else if (key == "handler") {
      if (!(err = need_scalar()) && text != "echo" && text != "noop" && text != "fail")
        err = bad_value(path, text, "one of: echo, noop, fail");
      a.handler = text;
    } else if (key == "instances") {
      err = uint_field(a.instances, 1, 256);
    } else if (key == "max_in_flight") {
      err = uint_field(a.max_in_flight, 1, 65536);
      max_in_flight_given = true;
    } else if (key == "ordered_by") {
      if (!(err = need_scalar()) && text != "key")
        err = bad_value(path, text, "key");
      a.ordered_by = ordering::key;
    } else if (key == "max_retries") {
      err = uint_field(a.max_retries, 0, 1000);
    } else if (key == "timeout") {
      err = duration_field(a.timeout);
    } else if (key == "backoff") {
      if (!v.IsMap())
        return path + ": expected a map with initial and max";
      for (auto b : v) {
        auto bk = b.first.Scalar();
        auto bt = b.second.IsScalar() ? b.second.Scalar() : std::string{};
        auto d = parse_duration(bt);
        if (bk != "initial" && bk != "max")
          return path + "." + bk + ": unknown key (allowed: initial, max)";
        if (!d || d->count() <= 0)
          return bad_value(path + "." + bk, bt, "a positive duration such as 200ms or 30s");
        (bk == "initial" ? a.backoff_initial : a.backoff_max) = *d;
      }
    } else if (key == "start") {
      if (!(err = need_scalar()) && text != "latest" && text != "earliest")
        err = bad_value(path, text, "one of: latest, earliest");
      a.start = text == "earliest" ? start_position::earliest : start_position::latest;
    } else {
      return path
             + ": unknown key (allowed: name, topics, filter, kind, command, url, handler, "
               "instances, max_in_flight, ordered_by, max_retries, timeout, backoff, start)";
    }
    if (err)
      return err;
  }
  if (a.name.empty())
    return base + ".name: missing; every agent needs a name";
  if (a.topics.empty())
    return base + ".topics: missing; every agent needs at least one topic pattern";
  if (!kind_given)
    return base + ".kind: missing; expected one of: process, http, builtin, pull";
  if (a.kind == agent_kind::process && a.command.empty())
    return base + ".command: missing; a process agent needs a command";
  if (a.kind == agent_kind::http && a.url.empty())
    return base + ".url: missing; an http agent needs a url";
  if (a.kind == agent_kind::builtin && a.handler.empty())
    return base + ".handler: missing; expected one of: echo, noop, fail";
  if (a.kind == agent_kind::pull && a.instances != 1)
    return base
           + ".instances: a pull agent is one queue that any number of workers fetch "
             "from; leave instances at 1 and run more workers";
  if (a.kind == agent_kind::pull && !max_in_flight_given)
    a.max_in_flight = pull_max_in_flight;
  if (a.backoff_initial > a.backoff_max)
    return base + ".backoff: initial must not exceed max";
  for (auto& other : cfg.agents)
    if (other.name == a.name)
      return base + ".name: " + quote(a.name) + " is used by another agent; names are unique";
  cfg.agents.push_back(std::move(a));
  return std::nullopt;
}

result walk(config& cfg, const YAML::Node& node, const std::string& prefix) {
  for (auto it : node) {
    if (!it.first.IsScalar())
      return (prefix.empty() ? std::string{"(top level)"} : prefix) + ": keys must be strings";
    auto key = it.first.Scalar();
    auto path = prefix.empty() ? key : prefix + "." + key;
    if (path == "topics") {
      if (auto err = apply_topics(cfg, it.second))
        return err;
    } else if (path == "agents") {
      if (it.second.IsNull())
        continue;
      if (!it.second.IsSequence())
        return std::string{"agents: expected a list of agents"};
      cfg.agents.clear();
      for (std::size_t i = 0; i < it.second.size(); ++i)
        if (auto err = apply_agent(cfg, it.second[i], i))
          return err;
    } else if (is_section(path) && find_setting(path) == nullptr) {
      if (it.second.IsNull())
        continue;
      if (!it.second.IsMap())
        return path + ": expected a map";
      if (auto err = walk(cfg, it.second, path))
        return err;
    } else if (auto err = apply_scalar(cfg, path, it.second)) {
      return err;
    }
  }
  return std::nullopt;
}

std::string env_name(const std::string& path) {
  std::string out = "NERVE_";
  for (char c : path)
    out += c == '.' ? '_' : static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  return out;
}

result apply_flag(config& cfg, const char* path, const char* flag,
                  const std::optional<std::string>& value) {
  if (!value)
    return std::nullopt;
  if (auto err = find_setting(path)->apply(cfg, *value))
    return std::string{flag} + ": " + quote(*value) + " is not allowed; expected " + *err;
  return std::nullopt;
}

} // namespace

bool valid_topic_name(std::string_view t) {
  if (t.empty() || t.size() > 255 || t.front() == '.' || t.back() == '.')
    return false;
  char prev = 0;
  for (char c : t) {
    if (c == '.' && prev == '.')
      return false;
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-' || c == ':'
          || c == '.'))
      return false;
    prev = c;
  }
  return true;
}

std::uint32_t config::partitions_for(const std::string& topic) const {
  auto it = topics.find(topic);
  return it != topics.end() ? it->second.partitions : topic_defaults.partitions;
}

std::optional<std::string> process_env(const char* name) {
  if (const char* v = std::getenv(name))
    return std::string{v};
  return std::nullopt;
}

std::optional<millis> parse_duration(const std::string& text) {
  std::size_t i = 0;
  while (i < text.size() && std::isdigit(static_cast<unsigned char>(text[i])))
    ++i;
  if (i == 0 || i > 12)
    return std::nullopt;
  auto n = static_cast<std::int64_t>(std::stoull(text.substr(0, i)));
  auto unit = text.substr(i);
  if (unit == "ms")
    return millis{n};
  if (unit == "s" || unit.empty())
    return millis{n * 1000};
  if (unit == "m")
    return millis{n * 60 * 1000};
  if (unit == "h")
    return millis{n * 3600 * 1000};
  if (unit == "d")
    return millis{n * 24 * 3600 * 1000};
  return std::nullopt;
}

std::optional<std::pair<std::string, std::uint16_t>> split_host_port(const std::string& text) {
  auto colon = text.rfind(':');
  if (colon == std::string::npos || colon == 0)
    return std::nullopt;
  auto host = text.substr(0, colon);
  if (host.size() > 2 && host.front() == '[' && host.back() == ']')
    host = host.substr(1, host.size() - 2);
  auto port = parse_uint(text.substr(colon + 1));
  if (!port || *port > 65535 || host.empty())
    return std::nullopt;
  return std::make_pair(host, static_cast<std::uint16_t>(*port));
}

bool is_loopback_host(const std::string& host) {
  return host == "localhost" || host == "::1" || host.rfind("127.", 0) == 0;
}

const char* to_string(agent_kind kind) {
  switch (kind) {
    case agent_kind::builtin:
      return "builtin";
    case agent_kind::process:
      return "process";
    case agent_kind::http:
      return "http";
    case agent_kind::pull:
      return "pull";
  }
  return "unknown";
}

const char* to_string(ordering o) {
  return o == ordering::key ? "key" : "";
}

const char* to_string(start_position start) {
  return start == start_position::earliest ? "earliest" : "latest";
}

const char* to_string(fsync_policy policy) {
  switch (policy) {
    case fsync_policy::always:
      return "always";
    case fsync_policy::interval:
      return "interval";
    case fsync_policy::never:
      return "never";
  }
  return "always";
}

/// A key given twice in one map: YAML forbids it and yaml-cpp keeps one of
/// them silently, so `storage:` written twice would drop half a config.
std::optional<std::string> duplicate_key(const YAML::Node& node, const std::string& path) {
  if (node.IsMap()) {
    std::set<std::string> seen;
    for (const auto& kv : node) {
      auto key = kv.first.IsScalar() ? kv.first.Scalar() : std::string{"?"};
      auto here = path.empty() ? key : path + "." + key;
      if (!seen.insert(key).second)
        return here + ": given twice (line " + std::to_string(kv.first.Mark().line + 1) + ")";
      if (auto err = duplicate_key(kv.second, here))
        return err;
    }
  } else if (node.IsSequence()) {
    for (std::size_t i = 0; i < node.size(); ++i)
      if (auto err = duplicate_key(node[i], path + "[" + std::to_string(i) + "]"))
        return err;
  }
  return std::nullopt;
}

std::string one_line(std::string_view text) {
  static constexpr char hex[] = "0123456789abcdef";
  std::string out;
  out.reserve(text.size());
  for (unsigned char c : text) {
    if (c == '\n') {
      out += "\\n";
    } else if (c == '\t') {
      out += "\\t";
    } else if (c == '\r') {
      out += "\\r";
    } else if (c < 0x20 || c == 0x7f) {
      out += "\\u00";
      out += hex[c >> 4];
      out += hex[c & 0xf];
    } else {
      out += static_cast<char>(c);
    }
  }
  return out;
}

namespace {

tl::expected<config, std::string> parse_yaml_text(const std::string& text, config base) {
  YAML::Node root;
  try {
    root = YAML::Load(text);
  } catch (const YAML::Exception& e) {
    return tl::make_unexpected("invalid YAML at line " + std::to_string(e.mark.line + 1) + ": "
                               + e.msg);
  }
  if (root.IsNull())
    return base;
  if (!root.IsMap())
    return tl::make_unexpected(std::string{"the config file must be a YAML map of keys"});
  try {
    if (auto err = duplicate_key(root, ""))
      return tl::make_unexpected(*err);
    if (auto err = walk(base, root, ""))
      return tl::make_unexpected(*err);
  } catch (const YAML::Exception& e) {
    return tl::make_unexpected("invalid YAML at line " + std::to_string(e.mark.line + 1) + ": "
                               + e.msg);
  }
  return base;
}

} // namespace

tl::expected<config, std::string> parse_yaml(const std::string& text, config base) {
  auto c = parse_yaml_text(text, std::move(base));
  if (!c)
    return tl::make_unexpected(one_line(c.error()));
  return c;
}

namespace {

/// Replication needs etcd, enough members for its copies, and an in-sync
/// minimum that the copies can meet; without it, etcd is not used.
std::optional<std::string> check_replication(cluster_config& c) {
  if (!c.min_insync_set)
    c.min_insync = std::min<std::uint32_t>(2, c.replication_factor);
  if (c.replication_factor == 1) {
    if (c.min_insync > 1)
      return "cluster.min_insync: " + std::to_string(c.min_insync)
             + " is more than cluster.replication_factor (1)";
    return std::nullopt;
  }
  if (c.etcd.empty())
    return "cluster.replication_factor: " + std::to_string(c.replication_factor)
           + " needs cluster.etcd (the etcd client URLs that hold leaders and in-sync sets)";
  if (c.replication_factor > c.members.size())
    return "cluster.replication_factor: " + std::to_string(c.replication_factor) + " copies need "
           + std::to_string(c.replication_factor) + " members; cluster.members lists "
           + std::to_string(c.members.size());
  if (c.min_insync > c.replication_factor)
    return "cluster.min_insync: " + std::to_string(c.min_insync)
           + " is more than cluster.replication_factor (" + std::to_string(c.replication_factor)
           + ")";
  return std::nullopt;
}

/// The cluster settings together: who this node is among the members, and
/// TLS wherever the cluster port leaves this host.
std::optional<std::string> check_cluster(config& cfg) {
  auto& c = cfg.cluster;
  if (c.listen.empty()) {
    if (!c.members.empty())
      return "cluster.members: set, but cluster.listen (--cluster-listen) is empty; a cluster "
             "member needs the HOST:PORT its peers reach it on";
    if (c.replication_factor > 1)
      return "cluster.replication_factor: copies live on other members; a single node keeps "
             "one (set cluster.listen and cluster.members, or leave it at 1)";
    return check_replication(c);
  }
  if (cfg.node_id.empty())
    return "cluster.listen: a cluster member needs node_id (--node-id) set to its id in "
           "cluster.members";
  if (c.members.empty()) {
    auto hp = split_host_port(c.listen);
    c.members.push_back({cfg.node_id, hp->first, hp->second});
  }
  if (std::none_of(c.members.begin(), c.members.end(),
                   [&](const member& m) { return m.id == cfg.node_id; })) {
    std::string ids;
    for (auto& m : c.members)
      ids += (ids.empty() ? "" : ", ") + m.id;
    return "node_id: " + quote(cfg.node_id) + " is not in cluster.members (" + ids
           + "); every member lists itself";
  }
  int tls_parts = !c.tls_cert.empty() + !c.tls_key.empty() + !c.tls_ca.empty();
  if (tls_parts != 0 && tls_parts != 3)
    return "cluster.tls: set cert, key and ca together (a node proves itself with its "
           "certificate and key and accepts only peers signed by ca)";
  for (auto* file : {&c.tls_cert, &c.tls_key, &c.tls_ca})
    if (!file->empty() && !std::ifstream{*file})
      return "cluster.tls: " + quote(*file) + " cannot be read";
  auto hp = split_host_port(c.listen);
  if (!is_loopback_host(hp->first) && tls_parts == 0)
    return "cluster.listen: " + quote(c.listen)
           + " is not a loopback address; set cluster.tls (cert, key, ca of a private cluster CA) "
             "so that only members can join";
  return check_replication(c);
}

} // namespace

tl::expected<config, std::string> load(const flag_overrides& flags, env_lookup env) {
  config cfg;
  std::optional<std::string> file = flags.config_file;
  bool explicit_file = file.has_value();
  if (!file) {
    if (auto from_env = env("NERVE_CONFIG")) {
      file = from_env;
      explicit_file = true;
    } else {
      file = "nerve.yaml";
    }
  }
  std::error_code ec;
  if (std::filesystem::is_directory(*file, ec))
    return tl::make_unexpected((explicit_file ? "--config: " : std::string{}) + quote(*file)
                               + " is a directory; expected a readable YAML file");
  std::ifstream in{*file};
  if (in) {
    std::stringstream text;
    text << in.rdbuf();
    auto parsed = parse_yaml(text.str(), cfg);
    if (!parsed)
      return tl::make_unexpected(*file + ": " + parsed.error());
    cfg = std::move(*parsed);
  } else if (explicit_file) {
    return tl::make_unexpected("--config: " + quote(*file)
                               + " cannot be read; expected a readable YAML file");
  }
  for (auto& s : settings()) {
    auto name = env_name(s.path);
    if (auto value = env(name.c_str()))
      if (auto err = s.apply(cfg, *value))
        return tl::make_unexpected(name + ": " + quote(*value) + " is not allowed; expected "
                                   + *err);
  }
  for (auto err : {apply_flag(cfg, "data_dir", "--data-dir", flags.data_dir),
                   apply_flag(cfg, "http.listen", "--http", flags.http_listen),
                   apply_flag(cfg, "node_id", "--node-id", flags.node_id),
                   apply_flag(cfg, "cluster.listen", "--cluster-listen", flags.cluster_listen),
                   apply_flag(cfg, "cluster.members", "--cluster-members", flags.cluster_members),
                   apply_flag(cfg, "resp.listen", "--resp", flags.resp_listen)})
    if (err)
      return tl::make_unexpected(*err);
  if (auto err = check_cluster(cfg))
    return tl::make_unexpected(*err);
  auto hp = split_host_port(cfg.http.listen);
  if (!is_loopback_host(hp->first) && cfg.http.token.empty())
    return tl::make_unexpected("http.listen: " + quote(cfg.http.listen)
                               + " is not a loopback address; set http.token "
                                 "(NERVE_HTTP_TOKEN) to expose nerve beyond this host");
  if (cfg.resp.enabled() && !is_loopback_host(split_host_port(cfg.resp.listen)->first)
      && cfg.http.token.empty())
    return tl::make_unexpected("resp.listen: " + quote(cfg.resp.listen)
                               + " is not a loopback address; set http.token "
                                 "(NERVE_HTTP_TOKEN), which Redis clients then give to AUTH, "
                                 "to expose the Redis protocol beyond this host");
  return cfg;
}

} // namespace nerve::config
