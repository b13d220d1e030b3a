// Client subcommands: they call a running node's HTTP API and print tables
// or, with --json, exactly the API's JSON.
#include "runtime/commands.hpp"

#include <fstream>
#include <functional>
#include <iostream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "http/client.hpp"
#include "runtime/table.hpp"

namespace nerve::runtime {

using json = nlohmann::json;

namespace {

/// Turns a failed call or a problem+json answer into one line and a code.
int report_failure(const std::string& what, const http::client_response& res) {
  auto body = json::parse(res.body, nullptr, false);
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

/// Calls the API; on success prints --json output or hands the body to
/// `human`. Returns the exit code.
int call_and_print(const client_options& client, const std::string& what, const std::string& method,
                   const std::string& target, const std::string& body,
                   const std::function<void(const json&)>& human) {
  auto res = http::call(client.server, method, target, body, client.token);
  if (!res) {
    print_error(res.error().message);
    return res.error().code == http::client_errc::bad_url ? exit_usage : exit_unreachable;
  }
  if (res->status < 200 || res->status >= 300)
    return report_failure(what, *res);
  if (client.json) {
    std::cout << res->body << '\n';
    return exit_ok;
  }
  auto j = json::parse(res->body, nullptr, false);
  if (j.is_discarded()) {
    print_error(what + ": the server answered something that is not JSON");
    return exit_failed;
  }
  human(j);
  return exit_ok;
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
    std::string q;
    auto add = [&q](const std::string& k, const std::string& v) {
      q += (q.empty() ? "?" : "&") + k + "=" + encode_segment(v);
    };
    if (!o.agent.empty())
      add("agent", o.agent);
    if (!o.topic.empty())
      add("topic", o.topic);
    if (with_limit)
      add("limit", std::to_string(o.limit));
    return q;
  };
  auto print_entries = [](const json& entries) {
    table t{{"ID", "AGENT", "TOPIC", "EVENT", "ATTEMPTS", "LAST FAILED", "ERROR"}};
    for (auto& e : entries)
      t.add({str(e, "id"), str(e, "agent"), str(e, "topic"),
             e.contains("event") && e["event"].is_object() ? str(e["event"], "id") : "-",
             str(e, "attempts"), str(e, "last_failed_at"), str(e, "error").substr(0, 80)});
    t.print(std::cout);
  };
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
  if (o.action == "retry-all")
    return call_and_print(
      client, "dlq retry-all", "POST", "/v1/dlq/retry-all" + filters(false), "", [](const json& j) {
        std::cout << j["retried"].get<std::uint64_t>() << " entries sent again to their agents\n";
      });
  // purge
  if (!o.yes) {
    print_error("dlq purge deletes entries for good; add --yes to confirm");
    return exit_usage;
  }
  auto list
    = http::call(client.server, "GET",
                 "/v1/dlq" + filters(false) + (filters(false).empty() ? "?" : "&") + "limit=1000",
                 "", client.token);
  if (!list) {
    print_error(list.error().message);
    return exit_unreachable;
  }
  if (list->status != 200)
    return report_failure("dlq purge", *list);
  std::uint64_t purged = 0;
  for (;;) {
    auto page = json::parse(list->body, nullptr, false);
    if (!page.is_object() || !page["entries"].is_array() || page["entries"].empty())
      break;
    for (auto& e : page["entries"]) {
      auto del = http::call(client.server, "DELETE", "/v1/dlq/" + encode_segment(str(e, "id")), "",
                            client.token);
      if (!del) {
        print_error(del.error().message);
        return exit_unreachable;
      }
      if (del->status == 200)
        ++purged;
    }
    list
      = http::call(client.server, "GET",
                   "/v1/dlq" + filters(false) + (filters(false).empty() ? "?" : "&") + "limit=1000",
                   "", client.token);
    if (!list || list->status != 200)
      break;
  }
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

void print_error(const std::string& message) {
  std::cerr << "nerve: " << message << '\n';
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
    return report_failure("publish to " + opts.topic, *res);
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
