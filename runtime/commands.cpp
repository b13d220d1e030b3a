// Client subcommands: they call a running node's HTTP API and print tables
// or, with --json, exactly the API's JSON.
#include "runtime/commands.hpp"

#include <algorithm>
#include <chrono>
#include <fstream>
#include <functional>
#include <iostream>
#include <sstream>
#include <thread>

#include <unistd.h>

#include <nlohmann/json.hpp>

#include "http/client.hpp"
#include "runtime/table.hpp"

namespace nerve::runtime {

using json = nlohmann::json;

namespace {

/// Turns a failed call or a problem+json answer into one line on stderr and
/// a code; with --json the answer's JSON also goes to stdout, as it came.
int report_failure(const client_options& client, const std::string& what,
                   const http::client_response& res) {
  auto body = json::parse(res.body, nullptr, false);
  if (client.json && !body.is_discarded())
    std::cout << res.body << '\n';
  std::string detail = res.body.substr(0, 300);
  if (body.is_object() && body.contains("detail") && body["detail"].is_string())
    detail = body["detail"].get<std::string>();
  std::string title = body.is_object() && body.contains("title") && body["title"].is_string()
                        ? body["title"].get<std::string>()
                        : std::string{"error"};
  print_error(what + ": " + std::to_string(res.status) + " " + title + ": " + detail);
  return exit_failed;
}

std::optional<std::string> read_all(std::istream& in) {
  std::stringstream ss;
  ss << in.rdbuf();
  if (in.bad())
    return std::nullopt;
  return ss.str();
}

/// Percent-encodes one path segment.
std::string encode_segment(const std::string& s) {
  static constexpr char hex[] = "0123456789ABCDEF";
  std::string out;
  for (unsigned char c : s) {
    if (std::isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~') {
      out += static_cast<char>(c);
    } else {
      out += '%';
      out += hex[c >> 4];
      out += hex[c & 15];
    }
  }
  return out;
}

/// One request; a server that cannot be reached (or a bad --server) has been
/// reported when this returns the exit code instead of an answer.
tl::expected<http::client_response, int> call_api(const client_options& client,
                                                  const std::string& method,
                                                  const std::string& target,
                                                  const std::string& body = "") {
  auto res = http::call(client.server, method, target, body, client.token);
  if (!res) {
    print_error(res.error().message);
    return tl::make_unexpected(res.error().code == http::client_errc::bad_url ? exit_usage
                                                                              : exit_unreachable);
  }
  return std::move(*res);
}

/// Prints --json output (the body as it came) or hands the parsed body to
/// `human`. Returns the exit code.
int print_answer(const client_options& client, const std::string& what,
                 const http::client_response& res, const std::function<void(const json&)>& human) {
  if (client.json) {
    std::cout << res.body << '\n';
    return exit_ok;
  }
  auto j = json::parse(res.body, nullptr, false);
  if (j.is_discarded()) {
    print_error(what + ": the server answered something that is not JSON");
    return exit_failed;
  }
  human(j);
  return exit_ok;
}

/// Calls the API; on success prints --json output or hands the body to
/// `human`. Returns the exit code.
int call_and_print(const client_options& client, const std::string& what, const std::string& method,
                   const std::string& target, const std::string& body,
                   const std::function<void(const json&)>& human) {
  auto res = call_api(client, method, target, body);
  if (!res)
    return res.error();
  if (res->status < 200 || res->status >= 300)
    return report_failure(client, what, *res);
  return print_answer(client, what, *res, human);
}

/// Like call_and_print for a health answer: a 503 carrying a JSON "status"
/// is an answer too, and an answer for which `unhealthy` holds (or a 503)
/// exits with exit_unhealthy, --json or not.
int call_health(const client_options& client, const std::string& what, const std::string& target,
                const std::function<void(const json&)>& human,
                const std::function<bool(const json&)>& unhealthy) {
  auto res = call_api(client, "GET", target);
  if (!res)
    return res.error();
  auto j = json::parse(res->body, nullptr, false);
  bool has_status = j.is_object() && j.contains("status") && j["status"].is_string();
  if (res->status != 200 && !(res->status == 503 && has_status))
    return report_failure(client, what, *res);
  if (auto code = print_answer(client, what, *res, human); code != exit_ok)
    return code;
  return res->status == 503 || (j.is_object() && unhealthy(j)) ? exit_unhealthy : exit_ok;
}

/// "key=value" pairs as a query string ("" when all values are empty).
std::string query(const std::vector<std::pair<std::string, std::string>>& params) {
  std::string q;
  for (auto& [k, v] : params)
    if (!v.empty())
      q += (q.empty() ? "?" : "&") + k + "=" + encode_segment(v);
  return q;
}

std::string str(const json& j, const char* key) {
  if (!j.contains(key) || j[key].is_null())
    return "-";
  return j[key].is_string() ? j[key].get<std::string>() : j[key].dump();
}

void print_agents(const json& list) {
  table t{{"AGENT", "KIND", "STATE", "TOPICS", "INSTANCE", "PID", "RESTARTS", "IN FLIGHT"}};
  for (auto& a : list) {
    std::string topics;
    for (auto& tp : a["topics"])
      topics += (topics.empty() ? "" : ",") + tp.get<std::string>();
    for (auto& i : a["instances"])
      t.add({str(a, "name"), str(a, "kind"), str(a, "state"), topics,
             str(a, "name") + "#" + str(i, "id"), str(i, "pid"), str(i, "restarts"),
             str(i, "in_flight")});
  }
  t.print(std::cout);
}

/// The array `j[key]`, or an empty one when the server left it out.
const json& items_of(const json& j, const char* key) {
  static const json none = json::array();
  return j.is_object() && j.contains(key) && j[key].is_array() ? j[key] : none;
}

/// A JSON object as a KEY VALUE table: the `first` keys in that order, then
/// any others the server added.
void print_fields(const json& obj, const std::vector<std::string>& first) {
  table t{{"KEY", "VALUE"}};
  for (auto& k : first)
    if (obj.contains(k))
      t.add({k, str(obj, k.c_str())});
  for (auto& [k, v] : obj.items())
    if (std::find(first.begin(), first.end(), k) == first.end())
      t.add({k, str(obj, k.c_str())});
  t.print(std::cout);
}

/// A 404 for `target` means the named thing does not exist: reported, exit 1.
/// Lets an empty answer to a filtered query tell "none yet" from "no such".
int check_exists(const client_options& client, const std::string& what, const std::string& target) {
  auto res = call_api(client, "GET", target);
  if (!res)
    return res.error();
  if (res->status == 404)
    return report_failure(client, what, *res);
  return exit_ok;
}

/// A filter naming no agent (or topic) matches nothing: say so (exit 1).
int check_agent(const client_options& client, const std::string& what, const std::string& name) {
  return name.empty() ? exit_ok : check_exists(client, what, "/v1/agents/" + encode_segment(name));
}

int check_topic(const client_options& client, const std::string& what, const std::string& name) {
  return name.empty()
           ? exit_ok
           : check_exists(client, what, "/v1/topics/" + encode_segment(name) + "/groups");
}

} // namespace

int agent(const client_options& client, const std::string& action, const std::string& name) {
  if (action == "list")
    return call_and_print(client, "agent list", "GET", "/v1/agents", "",
                          [](const json& j) { print_agents(j["agents"]); });
  auto target = "/v1/agents/" + encode_segment(name);
  if (action == "get")
    return call_and_print(client, "agent get " + name, "GET", target, "", [](const json& j) {
      print_agents(json::array({j}));
      std::cout << "config: " << j["config"].dump() << '\n';
    });
  return call_and_print(
    client, "agent " + action + " " + name, "POST", target + "/" + action, "",
    [](const json& j) { std::cout << str(j, "name") << ": " << str(j, "state") << '\n'; });
}

int dlq(const client_options& client, const dlq_options& o) {
  auto filters = [&o](bool with_limit) {
    return query({{"agent", o.agent},
                  {"topic", o.topic},
                  {"limit", with_limit ? std::to_string(o.limit) : ""}});
  };
  auto print_entries = [](const json& entries) {
    table t{{"ID", "AGENT", "TOPIC", "EVENT", "ATTEMPTS", "LAST FAILED", "ERROR"}};
    for (auto& e : entries)
      t.add({str(e, "id"), str(e, "agent"), str(e, "topic"),
             e.contains("event") && e["event"].is_object() ? str(e["event"], "id") : "-",
             str(e, "attempts"), str(e, "last_failed_at"), str(e, "error").substr(0, 80)});
    t.print(std::cout);
  };
  // A filter naming no agent or topic would match nothing: say so (exit 1)
  // rather than print an empty list or retry nothing.
  if (o.action == "list" || o.action == "retry-all" || o.action == "purge") {
    if (auto code = check_agent(client, "dlq " + o.action, o.agent); code != exit_ok)
      return code;
    if (auto code = check_topic(client, "dlq " + o.action, o.topic); code != exit_ok)
      return code;
  }
  if (o.action == "list")
    return call_and_print(client, "dlq list", "GET", "/v1/dlq" + filters(true), "",
                          [&](const json& j) {
                            print_entries(j["entries"]);
                            std::cout << j["count"].get<std::uint64_t>() << " in DLQ\n";
                          });
  if (o.action == "show")
    return call_and_print(client, "dlq show " + o.id, "GET", "/v1/dlq/" + encode_segment(o.id), "",
                          [](const json& j) { std::cout << j.dump(2) << '\n'; });
  if (o.action == "retry")
    return call_and_print(client, "dlq retry " + o.id, "POST",
                          "/v1/dlq/" + encode_segment(o.id) + "/retry", "",
                          [&](const json&) { std::cout << o.id << ": sent again to its agent\n"; });
  if (o.action == "retry-all") {
    // One call does it all; on a terminal say so while it runs.
    if (!client.json && isatty(STDERR_FILENO) != 0)
      std::cerr << "nerve: dlq retry-all: sending the matching entries again...\n";
    return call_and_print(
      client, "dlq retry-all", "POST", "/v1/dlq/retry-all" + filters(false), "", [](const json& j) {
        std::cout << j["retried"].get<std::uint64_t>() << " entries sent again to their agents\n";
      });
  }
  // purge
  if (!o.yes) {
    print_error("dlq purge deletes entries for good; add --yes to confirm");
    return exit_usage;
  }
  // The server pages through the DLQ and deletes as it goes.
  auto r = http::call(client.server, "POST", "/v1/dlq/purge" + filters(false), "", client.token);
  if (!r) {
    print_error(r.error().message);
    return exit_unreachable;
  }
  if (r->status != 200)
    return report_failure(client, "dlq purge", *r);
  auto body = json::parse(r->body, nullptr, false);
  auto purged = body.is_object() ? body.value("purged", std::uint64_t{0}) : std::uint64_t{0};
  if (client.json)
    std::cout << json{{"purged", purged}}.dump() << '\n';
  else
    std::cout << purged << " entries purged\n";
  return exit_ok;
}

int bus_groups(const client_options& client, const std::string& topic) {
  return call_and_print(client, "bus groups " + topic, "GET",
                        "/v1/topics/" + encode_segment(topic) + "/groups", "", [](const json& j) {
                          table t{{"GROUP", "CONSUMERS", "PENDING", "LAG", "LAST DELIVERED"}};
                          for (auto& g : j["groups"])
                            t.add({str(g, "agent"), str(g, "instances"), str(g, "pending"),
                                   str(g, "lag"), str(g, "last_delivered_offset")});
                          t.print(std::cout);
                        });
}

int bus_streams(const client_options& client) {
  return call_and_print(client, "bus streams", "GET", "/v1/topics", "", [](const json& j) {
    table t{{"TOPIC", "PARTITIONS", "EVENTS", "BYTES"}};
    for (auto& tp : items_of(j, "topics"))
      t.add({str(tp, "name"), str(tp, "partitions"), str(tp, "events"), str(tp, "bytes")});
    t.print(std::cout);
  });
}

int bus_inspect(const client_options& client, const inspect_options& o) {
  auto opt = [](const auto& v) { return v ? std::to_string(*v) : std::string{}; };
  auto target = "/v1/topics/" + encode_segment(o.topic) + "/events"
                + query({{"partition", opt(o.partition)},
                         {"from_offset", opt(o.from_offset)},
                         {"limit", opt(o.limit)}});
  return call_and_print(client, "bus inspect " + o.topic, "GET", target, "", [](const json& j) {
    constexpr std::size_t data_chars_max = 60;
    table t{{"PARTITION", "OFFSET", "ID", "TIME", "TYPE", "KEY", "DATA"}};
    for (auto& e : items_of(j, "events")) {
      auto data = e.contains("data")
                    ? e["data"].dump(-1, ' ', false, json::error_handler_t::replace)
                    : std::string{"-"};
      // Cut by characters, not bytes: never inside a UTF-8 sequence.
      if (utf8_length(data) > data_chars_max)
        data = utf8_prefix(data, data_chars_max - 3) + "...";
      t.add({str(e, "partition"), str(e, "offset"), str(e, "id"), str(e, "time"), str(e, "type"),
             str(e, "key"), data});
    }
    t.print(std::cout);
    if (j.contains("next_offset") && !items_of(j, "events").empty())
      std::cout << "next offset: " << str(j, "next_offset") << '\n';
  });
}

int bus_stats(const client_options& client) {
  return call_and_print(client, "bus stats", "GET", "/v1/bus/stats", "", [](const json& j) {
    print_fields(j, {"topics", "partitions", "events", "bytes", "agents", "pending", "lag", "dlq",
                     "published_total", "delivered_total", "acked_total", "failed_total",
                     "dead_lettered_total", "uptime_s"});
  });
}

int health(const client_options& client, bool detailed) {
  if (!detailed)
    return call_health(
      client, "health", "/health", [](const json& j) { std::cout << str(j, "status") << '\n'; },
      [](const json& j) { return str(j, "status") == "unhealthy"; });
  return call_health(
    client, "health", "/health/detailed",
    [](const json& j) {
      auto summary = j;
      summary.erase("indicators");
      print_fields(summary, {"status", "state", "node_id", "runner_id", "version", "uptime_s"});
      std::cout << '\n';
      table t{{"NAME", "STATUS", "LATENCY", "MESSAGE"}};
      for (auto& i : items_of(j, "indicators"))
        t.add({str(i, "name"), str(i, "status"),
               i.contains("latency_ms") ? str(i, "latency_ms") + "ms" : "-", str(i, "message")});
      t.print(std::cout);
    },
    [](const json& j) { return str(j, "state") == "DOWN" || str(j, "status") == "unhealthy"; });
}

int metrics(const client_options& client, const metrics_options& o) {
  if (client.json && !o.format.empty() && o.format != "json") {
    print_error("metrics: --json and --format " + o.format + " contradict each other");
    return exit_usage;
  }
  if (o.format == "prometheus") {
    if (!o.topic.empty() || !o.agent.empty()) {
      print_error("metrics: --topic and --agent filter the table and json formats, not prometheus");
      return exit_usage;
    }
    auto res = call_api(client, "GET", "/metrics");
    if (!res)
      return res.error();
    if (res->status != 200)
      return report_failure(client, "metrics", *res);
    std::cout << res->body;
    return exit_ok;
  }
  auto res
    = call_api(client, "GET", "/v1/metrics" + query({{"topic", o.topic}, {"agent", o.agent}}));
  if (!res)
    return res.error();
  if (res->status != 200)
    return report_failure(client, "metrics", *res);
  auto j = json::parse(res->body, nullptr, false);
  if (j.is_object() && j.contains("metrics") && items_of(j, "metrics").empty()) {
    if (auto code = check_agent(client, "metrics", o.agent); code != exit_ok)
      return code;
    if (auto code = check_topic(client, "metrics", o.topic); code != exit_ok)
      return code;
  }
  auto as_json = client;
  as_json.json = client.json || o.format == "json";
  return print_answer(as_json, "metrics", *res, [](const json& body) {
    table t{{"AGENT", "TOPIC", "RECEIVED", "PROCESSED", "FAILED", "RETRIED", "DLQ", "AVG_MS",
             "P50_MS", "P99_MS", "SUCCESS%"}};
    for (auto& m : items_of(body, "metrics"))
      t.add({str(m, "agent"), str(m, "topic"), str(m, "received"), str(m, "processed"),
             str(m, "failed"), str(m, "retried"), str(m, "dead_lettered"), str(m, "avg_ms"),
             str(m, "p50_ms"), str(m, "p99_ms"), str(m, "success_rate")});
    t.print(std::cout);
  });
}

int storage_health(const client_options& client) {
  return call_health(
    client, "storage health", "/v1/storage/health",
    [](const json& j) {
      print_fields(
        j, {"status", "backend", "path", "size_bytes", "fsync", "write_latency_ms", "last_error"});
    },
    [](const json& j) { return str(j, "status") == "unhealthy"; });
}

int cluster_status(const client_options& client) {
  auto res = call_api(client, "GET", "/v1/cluster");
  if (!res)
    return res.error();
  if (res->status == 404) {
    print_error("cluster: this server does not serve /v1/cluster (it runs as a single node; "
                "see nerve health --detailed)");
    return exit_failed;
  }
  if (res->status != 200)
    return report_failure(client, "cluster status", *res);
  return print_answer(client, "cluster status", *res, [](const json& j) {
    table t{{"NODE", "ADDRESS", "STATE", "PARTITIONS", "SINCE", "DETAIL"}};
    for (auto& n : items_of(j, "nodes")) {
      // "partitions owned": a list of them, or their count.
      bool listed = n.contains("partitions") && n["partitions"].is_array();
      t.add({str(n, "id"), str(n, "address"), str(n, "state"),
             listed ? std::to_string(n["partitions"].size()) : str(n, "partitions"),
             str(n, "since"), str(n, "detail")});
    }
    t.print(std::cout);
    for (auto& w : items_of(j, "warnings"))
      if (w.is_string())
        std::cout << "warning: " << w.get<std::string>() << "\n";
  });
}

int cluster_partitions(const client_options& client) {
  auto res = call_api(client, "GET", "/v1/cluster/partitions");
  if (!res)
    return res.error();
  if (res->status != 200)
    return report_failure(client, "cluster partitions", *res);
  return print_answer(client, "cluster partitions", *res, [](const json& j) {
    if (!j.value("replicated", false)) {
      std::cout << "partitions are not replicated (cluster.replication_factor is 1): each has "
                   "one owner; see nerve cluster status\n";
      return;
    }
    auto join = [](const json& list) {
      std::string out;
      if (list.is_array())
        for (auto& v : list)
          if (v.is_string())
            out += (out.empty() ? "" : ",") + v.get<std::string>();
      return out;
    };
    table t{
      {"TOPIC", "PARTITION", "EPOCH", "LEADER", "REPLICAS", "IN_SYNC", "HIGH_WATERMARK", "LAG"}};
    for (auto& p : items_of(j, "partitions")) {
      std::string lag;
      for (auto& f : items_of(p, "followers"))
        lag += (lag.empty() ? "" : ",") + str(f, "node") + "=" + str(f, "lag");
      auto leader = str(p, "leader");
      t.add({str(p, "topic"), str(p, "partition"), str(p, "epoch"),
             leader.empty() ? "(none)" : leader, join(p.value("replicas", json::array())),
             join(p.value("in_sync", json::array())), str(p, "high_watermark"), lag});
    }
    t.print(std::cout);
  });
}

namespace {

void print_replay(const json& answer) {
  auto r = answer;
  r.erase("counts"); // a table of its own below
  for (auto key : {"topics", "agents", "events"})
    if (r.contains(key) && r[key].is_array()) {
      std::string joined;
      for (auto& v : r[key])
        joined += (joined.empty() ? "" : ",") + (v.is_string() ? v.get<std::string>() : v.dump());
      r[key] = joined.empty() ? "(all)" : joined;
    }
  print_fields(r, {"id", "state", "mode", "from", "to", "events", "events_total", "events_done",
                   "acked", "failed", "retried", "dead_lettered", "started_at", "finished_at",
                   "error"});
  auto& counts = items_of(answer, "counts");
  if (counts.empty())
    return;
  std::cout << '\n';
  table t{{"AGENT", "TOPIC", "EVENTS"}};
  for (auto& c : counts)
    t.add({str(c, "agent"), str(c, "topic"), str(c, "events")});
  t.print(std::cout);
}

std::uint64_t num(const json& j, const char* key) {
  return j.contains(key) && j[key].is_number_unsigned() ? j[key].get<std::uint64_t>() : 0;
}

/// Polls a running replay until it ends; a bar on a terminal, else a line
/// every few seconds, on stderr. Answers the last view, or the exit code.
tl::expected<json, int> follow_replay(const client_options& client, const std::string& id) {
  bool tty = isatty(STDERR_FILENO) != 0;
  auto last_line = std::chrono::steady_clock::now();
  for (;;) {
    auto res = call_api(client, "GET", "/v1/replays/" + encode_segment(id));
    if (!res)
      return tl::make_unexpected(res.error());
    if (res->status != 200)
      return tl::make_unexpected(report_failure(client, "replay " + id, *res));
    auto r = json::parse(res->body, nullptr, false);
    if (!r.is_object())
      return tl::make_unexpected(exit_failed);
    auto total = num(r, "events_total");
    auto done = num(r, "events_done");
    bool running = str(r, "state") == "running";
    auto now = std::chrono::steady_clock::now();
    if (tty) {
      constexpr int width = 30;
      int filled = total == 0 ? width : static_cast<int>(width * done / total);
      std::cerr << "\rreplay [" << std::string(filled, '#') << std::string(width - filled, ' ')
                << "] " << done << "/" << total << (running ? "" : "\n") << std::flush;
    } else if (!running || now - last_line >= std::chrono::seconds{2}) {
      std::cerr << "replay " << id << ": " << done << " of " << total << " done\n";
      last_line = now;
    }
    if (!running)
      return r;
    std::this_thread::sleep_for(std::chrono::milliseconds{200});
  }
}

} // namespace

int replay(const client_options& client, const replay_options& o) {
  auto path = "/v1/replays/" + encode_segment(o.id);
  if (o.action == "status")
    return call_and_print(client, "replay " + o.id, "GET", path, "", print_replay);
  if (o.action == "cancel")
    return call_and_print(client, "replay " + o.id, "DELETE", path, "", print_replay);
  if (o.action == "list")
    return call_and_print(client, "replays", "GET", "/v1/replays", "", [](const json& j) {
      table t{{"ID", "STATE", "MODE", "FROM", "TO", "DONE", "TOTAL", "STARTED"}};
      for (auto& r : items_of(j, "replays"))
        t.add({str(r, "id"), str(r, "state"), str(r, "mode"), str(r, "from"), str(r, "to"),
               str(r, "events_done"), str(r, "events_total"), str(r, "started_at")});
      t.print(std::cout);
    });
  if (o.action == "history") {
    std::string limit = o.limit ? std::to_string(*o.limit) : "";
    auto target
      = path + "/history" + query({{"agent", o.agent}, {"cursor", o.cursor}, {"limit", limit}});
    return call_and_print(client, "replay " + o.id, "GET", target, "", [](const json& j) {
      table t{{"TOPIC", "PARTITION", "OFFSET", "ID", "TIME", "OUTCOME", "ATTEMPTS", "REPLAY"}};
      for (auto& e : items_of(j, "entries")) {
        auto& ev = e["event"];
        std::string replayed = e.contains("replay") ? str(e["replay"], "outcome") : "-";
        t.add({str(ev, "topic"), str(ev, "partition"), str(ev, "offset"), str(ev, "id"),
               str(ev, "time"), str(e, "outcome"), str(e, "attempts"), replayed});
      }
      t.print(std::cout);
      if (j.contains("next_cursor") && j["next_cursor"].is_string())
        std::cout << "next cursor: " << j["next_cursor"].get<std::string>() << '\n';
    });
  }
  // Start one.
  json body{{"mode", o.dry_run ? "dry-run" : "redeliver"}};
  if (!o.events.empty()) {
    if (!o.from.empty() || !o.to.empty()) {
      print_error("replay: give --from and --to, or --event, not both");
      return exit_usage;
    }
    body["events"] = o.events;
  } else {
    if (o.from.empty() || o.to.empty()) {
      print_error("replay: --from and --to are required (or --event ID); see nerve replay --help");
      return exit_usage;
    }
    body["from"] = o.from;
    body["to"] = o.to;
  }
  if (!o.topics.empty())
    body["topics"] = o.topics;
  if (!o.agents.empty())
    body["agents"] = o.agents;
  auto res = call_api(client, "POST", "/v1/replays", body.dump());
  if (!res)
    return res.error();
  if (res->status == 400) {
    report_failure(client, "replay", *res);
    return exit_usage; // the window or a name given is wrong
  }
  if (res->status < 200 || res->status >= 300)
    return report_failure(client, "replay", *res);
  auto started = json::parse(res->body, nullptr, false);
  if (!started.is_object()) {
    print_error("replay: the server answered something that is not JSON");
    return exit_failed;
  }
  if (o.no_wait || str(started, "state") != "running")
    return print_answer(client, "replay", *res, print_replay);
  auto id = str(started, "id");
  if (!client.json)
    std::cerr << "replay " << id << " started: " << num(started, "events_total") << " deliveries\n";
  auto end = follow_replay(client, id);
  if (!end)
    return end.error();
  if (client.json)
    std::cout << end->dump() << '\n';
  else
    print_replay(*end);
  return str(*end, "state") == "done" ? exit_ok : exit_failed;
}

void print_error(const std::string& message) {
  // One line whatever the server sent (an HTML error page from a proxy, say):
  // runs of whitespace and control characters become one space.
  std::string line;
  bool gap = false;
  for (unsigned char c : message) {
    if (c < 0x20 || c == 0x7f || c == ' ') {
      gap = !line.empty();
      continue;
    }
    if (gap)
      line += ' ';
    gap = false;
    line += static_cast<char>(c);
  }
  std::cerr << "nerve: " << line << '\n';
}

int publish(const client_options& client, const publish_options& opts) {
  int sources = (opts.data ? 1 : 0) + (opts.data_file ? 1 : 0) + (opts.data_stdin ? 1 : 0);
  if (sources > 1) {
    print_error("publish: give the data once: --data, --data-file or -");
    return exit_usage;
  }
  std::string text = "null";
  std::string origin = "--data";
  if (opts.data) {
    text = *opts.data;
  } else if (opts.data_file) {
    origin = "--data-file " + *opts.data_file;
    std::ifstream in{*opts.data_file};
    auto content = in ? read_all(in) : std::nullopt;
    if (!content) {
      print_error("publish: cannot read " + *opts.data_file);
      return exit_usage;
    }
    text = *content;
  } else if (opts.data_stdin) {
    origin = "stdin";
    auto content = read_all(std::cin);
    if (!content) {
      print_error("publish: cannot read stdin");
      return exit_usage;
    }
    text = *content;
  }
  auto data = json::parse(text, nullptr, false);
  if (data.is_discarded()) {
    print_error("publish: the data from " + origin + " is not valid JSON");
    return exit_usage;
  }
  json event{{"data", std::move(data)}};
  if (opts.key)
    event["key"] = *opts.key;
  if (opts.id)
    event["id"] = *opts.id;
  if (opts.type)
    event["type"] = *opts.type;
  if (opts.source)
    event["source"] = *opts.source;
  auto res
    = http::call(client.server, "POST", "/v1/topics/" + encode_segment(opts.topic) + "/events",
                 event.dump(), client.token);
  if (!res) {
    print_error(res.error().message);
    return res.error().code == http::client_errc::bad_url ? exit_usage : exit_unreachable;
  }
  if (res->status != 201)
    return report_failure(client, "publish to " + opts.topic, *res);
  if (client.json) {
    std::cout << res->body << '\n';
    return exit_ok;
  }
  auto body = json::parse(res->body, nullptr, false);
  table t{{"ID", "TOPIC", "PARTITION", "OFFSET", "TIME", "DUPLICATE"}};
  if (body.is_object() && body["events"].is_array())
    for (auto& e : body["events"])
      t.add({e.value("id", ""), e.value("topic", ""), std::to_string(e.value("partition", 0)),
             std::to_string(e.value("offset", 0ULL)), e.value("time", ""),
             e.value("duplicate", false) ? "yes" : "no"});
  t.print(std::cout);
  return exit_ok;
}

} // namespace nerve::runtime
