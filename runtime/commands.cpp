// Client subcommands: they call a running node's HTTP API and print tables
// or, with --json, exactly the API's JSON.
#include "runtime/commands.hpp"

#include <fstream>
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

} // namespace

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
