// Config loading: defaults, YAML, env and flag precedence, and the one-line
// errors that stop start-up.
#include <catch2/catch.hpp>

#include <fstream>
#include <iterator>
#include <map>

#include "config/config.hpp"
#include "tests/support/temp_dir.hpp"

using namespace nerve::config;
using namespace std::chrono_literals;

namespace {

std::map<std::string, std::string> fake_env;

std::optional<std::string> lookup(const char* name) {
  auto it = fake_env.find(name);
  if (it == fake_env.end())
    return std::nullopt;
  return it->second;
}

std::string write_file(const nerve::test::temp_dir& dir, const std::string& text) {
  auto path = dir.sub("nerve.yaml");
  std::ofstream{path} << text;
  return path;
}

} // namespace

TEST_CASE("defaults match the contract", "[unit][config]") {
  fake_env.clear();
  flag_overrides flags;
  flags.config_file = std::nullopt;
  nerve::test::temp_dir dir;
  flags.config_file = write_file(dir, "");
  auto cfg = load(flags, lookup);
  REQUIRE(cfg);
  CHECK(cfg->data_dir == "./nerve-data");
  CHECK(cfg->http.listen == "127.0.0.1:8000");
  CHECK(cfg->http.max_body_bytes == 1048576);
  CHECK(cfg->http.max_connections == 1024);
  CHECK(cfg->storage.fsync == fsync_policy::always);
  CHECK(cfg->storage.retention == 7 * 24h);
  CHECK(cfg->topic_defaults.partitions == 4);
  CHECK(cfg->results_ttl == 24h);
  CHECK(cfg->health.dlq_degraded == 100);
  CHECK(cfg->log.level == "info");
  CHECK(cfg->resp.listen.empty());
  CHECK_FALSE(cfg->resp.enabled());
  CHECK(cfg->resp.max_connections == 1024);
  CHECK(cfg->resp.max_request_bytes == 1048576);
  CHECK(cfg->resp.threads == 1);
}

TEST_CASE("a YAML file sets keys, topics and agents", "[unit][config]") {
  auto cfg = parse_yaml(R"(
node_id: n1
http: { listen: 127.0.0.1:9000, max_body_bytes: 2048 }
storage: { fsync: interval, retention: 2h }
topics:
  defaults: { partitions: 2 }
  orders: { partitions: 8 }
agents:
  - name: summarizer
    topics: ["docs.created", "orders.*"]
    filter: { type: "order.created" }
    kind: process
    command: ["python3", "agents/summarizer.py"]
    instances: 2
    ordered_by: key
    timeout: 5s
    backoff: { initial: 100ms, max: 10s }
  - { name: audit, topics: [">"], kind: builtin, handler: echo }
log: { level: debug, format: json }
)");
  REQUIRE(cfg);
  CHECK(cfg->node_id == "n1");
  CHECK(cfg->http.listen == "127.0.0.1:9000");
  CHECK(cfg->http.max_body_bytes == 2048);
  CHECK(cfg->storage.fsync == fsync_policy::interval);
  CHECK(cfg->storage.retention == 2h);
  CHECK(cfg->partitions_for("orders") == 8);
  CHECK(cfg->partitions_for("other") == 2);
  REQUIRE(cfg->agents.size() == 2);
  CHECK(cfg->agents[0].instances == 2);
  CHECK(cfg->agents[0].timeout == 5s);
  CHECK(cfg->agents[0].backoff_initial == 100ms);
  CHECK(cfg->agents[0].filter.type == "order.created");
  CHECK(cfg->agents[0].kind == agent_kind::process);
  CHECK(cfg->agents[0].ordered_by == ordering::key);
  CHECK(cfg->agents[0].start == start_position::latest);
  CHECK(cfg->agents[1].kind == agent_kind::builtin);
  CHECK(cfg->agents[1].ordered_by == ordering::none);
  CHECK(cfg->agents[1].handler == "echo");
  CHECK(cfg->log.format == "json");
}

TEST_CASE("unknown keys and bad values name the key, the value and what is allowed",
          "[unit][config]") {
  auto unknown = parse_yaml("http: { listn: 1.2.3.4:80 }");
  REQUIRE_FALSE(unknown);
  CHECK(unknown.error()
        == "http.listn: unknown key (value \"1.2.3.4:80\"); allowed here: listen, token, "
           "max_body_bytes, max_header_bytes, max_connections, probe_connections, read_timeout, "
           "max_events_per_request, threads");

  auto bad = parse_yaml("storage: { fsync: sometimes }");
  REQUIRE_FALSE(bad);
  CHECK(bad.error()
        == "storage.fsync: \"sometimes\" is not allowed; expected one of: always, interval, never");

  auto port = parse_yaml("http: { listen: 127.0.0.1:99999 }");
  REQUIRE_FALSE(port);
  CHECK(port.error().find("http.listen: \"127.0.0.1:99999\"") == 0);

  auto parts = parse_yaml("topics: { orders: { partitions: 0 } }");
  REQUIRE_FALSE(parts);
  CHECK(parts.error()
        == "topics.orders.partitions: \"0\" is not allowed; expected an integer "
           "from 1 to 1024");

  auto agent = parse_yaml("agents: [ { name: a, topics: [x], kind: carrier-pigeon } ]");
  REQUIRE_FALSE(agent);
  CHECK(agent.error().find("agents[0].kind: \"carrier-pigeon\"") == 0);

  auto dup = parse_yaml("agents: [ { name: a, topics: [x], kind: builtin, handler: noop },"
                        " { name: a, topics: [y], kind: builtin, handler: noop } ]");
  REQUIRE_FALSE(dup);
  CHECK(dup.error().find("agents[1].name") == 0);

  auto pull = parse_yaml("agents: [ { name: 'group:orders:sum', topics: [x], kind: pull },"
                         " { name: p2, topics: [y], kind: pull, max_in_flight: 8 } ]");
  REQUIRE(pull);
  CHECK(pull->agents[0].kind == agent_kind::pull);
  CHECK(pull->agents[0].name == "group:orders:sum");
  CHECK(pull->agents[0].max_in_flight == nerve::config::pull_max_in_flight);
  CHECK(pull->agents[1].max_in_flight == 8);
  auto pull_instances
    = parse_yaml("agents: [ { name: a, topics: [x], kind: pull, instances: 2 } ]");
  REQUIRE_FALSE(pull_instances);
  CHECK(pull_instances.error().find("agents[0].instances: a pull agent is one queue") == 0);
  CHECK_FALSE(parse_yaml("agents: [ { name: 'a b', topics: [x], kind: pull } ]"));

  auto syntax = parse_yaml("http: [unclosed");
  REQUIRE_FALSE(syntax);
  CHECK(syntax.error().find("invalid YAML at line") == 0);

  CHECK_FALSE(parse_yaml("storage: { retention: 7 days }"));
  CHECK_FALSE(
    parse_yaml("agents: [ { name: a, topics: ['a.>.b'], kind: builtin, handler: noop } ]"));
}

TEST_CASE("environment overrides the file and flags override the environment", "[unit][config]") {
  nerve::test::temp_dir dir;
  flag_overrides flags;
  flags.config_file = write_file(dir, "http: { listen: 127.0.0.1:1111 }\ndata_dir: /from/file\n");
  fake_env = {{"NERVE_HTTP_LISTEN", "127.0.0.1:2222"}, {"NERVE_STORAGE_FSYNC", "never"}};
  auto cfg = load(flags, lookup);
  REQUIRE(cfg);
  CHECK(cfg->http.listen == "127.0.0.1:2222");
  CHECK(cfg->data_dir == "/from/file");
  CHECK(cfg->storage.fsync == fsync_policy::never);

  flags.http_listen = "127.0.0.1:3333";
  flags.data_dir = "/from/flag";
  cfg = load(flags, lookup);
  REQUIRE(cfg);
  CHECK(cfg->http.listen == "127.0.0.1:3333");
  CHECK(cfg->data_dir == "/from/flag");

  fake_env = {{"NERVE_TOPICS_DEFAULTS_PARTITIONS", "many"}};
  auto bad_env = load(flags, lookup);
  REQUIRE_FALSE(bad_env);
  CHECK(bad_env.error()
        == "NERVE_TOPICS_DEFAULTS_PARTITIONS: \"many\" is not allowed; expected an integer from 1 "
           "to 1024");

  fake_env.clear();
  flags.http_listen = "localhost";
  auto bad_flag = load(flags, lookup);
  REQUIRE_FALSE(bad_flag);
  CHECK(bad_flag.error().find("--http: \"localhost\"") == 0);
}

TEST_CASE("a non-loopback listen address needs a token", "[unit][config]") {
  nerve::test::temp_dir dir;
  flag_overrides flags;
  flags.config_file = write_file(dir, "");
  flags.http_listen = "0.0.0.0:8000";
  fake_env.clear();
  auto refused = load(flags, lookup);
  REQUIRE_FALSE(refused);
  CHECK(refused.error().find("not a loopback address") != std::string::npos);
  fake_env = {{"NERVE_HTTP_TOKEN", "s3cret"}};
  CHECK(load(flags, lookup));
  fake_env.clear();
}

TEST_CASE("the resp section comes from the file, the environment and --resp", "[unit][config]") {
  nerve::test::temp_dir dir;
  flag_overrides flags;
  flags.config_file = write_file(
    dir, "resp: { listen: 127.0.0.1:6380, max_connections: 10, max_request_bytes: 4096 }\n");
  fake_env = {{"NERVE_RESP_MAX_CONNECTIONS", "20"}, {"NERVE_RESP_THREADS", "2"}};
  auto cfg = load(flags, lookup);
  REQUIRE(cfg);
  CHECK(cfg->resp.listen == "127.0.0.1:6380");
  CHECK(cfg->resp.max_connections == 20);
  CHECK(cfg->resp.max_request_bytes == 4096);
  CHECK(cfg->resp.threads == 2);
  fake_env = {{"NERVE_RESP_LISTEN", "127.0.0.1:6381"}};
  CHECK(load(flags, lookup)->resp.listen == "127.0.0.1:6381");
  flags.resp_listen = "127.0.0.1:0";
  CHECK(load(flags, lookup)->resp.listen == "127.0.0.1:0");
  flags.resp_listen = "6380";
  auto bad_flag = load(flags, lookup);
  REQUIRE_FALSE(bad_flag);
  CHECK(bad_flag.error().find("--resp: \"6380\"") == 0);
  flags.resp_listen.reset();
  fake_env = {{"NERVE_RESP_MAX_REQUEST_BYTES", "10"}};
  auto small = load(flags, lookup);
  REQUIRE_FALSE(small);
  CHECK(small.error()
        == "NERVE_RESP_MAX_REQUEST_BYTES: \"10\" is not allowed; expected an integer from 1024 "
           "to 1073741824");
  fake_env.clear();
}

TEST_CASE("a non-loopback resp.listen needs http.token", "[unit][config]") {
  nerve::test::temp_dir dir;
  flag_overrides flags;
  flags.config_file = write_file(dir, "");
  flags.resp_listen = "0.0.0.0:6380";
  fake_env.clear();
  auto refused = load(flags, lookup);
  REQUIRE_FALSE(refused);
  CHECK(refused.error().find("resp.listen: \"0.0.0.0:6380\" is not a loopback address; set "
                             "http.token")
        == 0);
  CHECK(refused.error().find('\n') == std::string::npos);
  fake_env = {{"NERVE_HTTP_TOKEN", "s3cret"}};
  CHECK(load(flags, lookup));
  flags.resp_listen = "127.0.0.1:6380";
  fake_env.clear();
  CHECK(load(flags, lookup));
}

TEST_CASE("topic names may hold ':' inside their tokens", "[unit][config]") {
  CHECK(valid_topic_name("group:orders:summarizer"));
  CHECK(valid_topic_name("orders.eu:west"));
  CHECK_FALSE(valid_topic_name("a;b"));
  auto parsed = parse_yaml("topics: { 'jobs:high': { partitions: 1 } }\n"
                           "agents: [ { name: a, topics: ['jobs:high', 'x:y.*'], kind: builtin, "
                           "handler: noop } ]");
  REQUIRE(parsed);
  CHECK(parsed->partitions_for("jobs:high") == 1);
}

TEST_CASE("a missing explicit config file is an error, a missing default is not",
          "[unit][config]") {
  fake_env.clear();
  flag_overrides flags;
  flags.config_file = "/nonexistent/nerve.yaml";
  auto missing = load(flags, lookup);
  REQUIRE_FALSE(missing);
  CHECK(missing.error().find("--config") == 0);
}

TEST_CASE("durations and addresses parse", "[unit][config]") {
  CHECK(parse_duration("250ms") == 250ms);
  CHECK(parse_duration("30s") == 30s);
  CHECK(parse_duration("15m") == 15min);
  CHECK(parse_duration("24h") == 24h);
  CHECK(parse_duration("7d") == 7 * 24h);
  CHECK(parse_duration("12") == 12s);
  CHECK_FALSE(parse_duration(""));
  CHECK_FALSE(parse_duration("-1s"));
  CHECK_FALSE(parse_duration("1w"));
  CHECK(split_host_port("[::1]:80")->first == "::1");
  CHECK_FALSE(split_host_port(":80"));
  CHECK(is_loopback_host("127.0.0.1"));
  CHECK_FALSE(is_loopback_host("10.0.0.1"));
}

TEST_CASE("replication needs etcd, enough members and a reachable in-sync minimum",
          "[unit][config]") {
  nerve::test::temp_dir dir;
  flag_overrides flags;
  auto load_text = [&](const std::string& text) {
    flags.config_file = write_file(dir, text);
    return load(flags, lookup);
  };
  fake_env.clear();
  const std::string members = "node_id: a\ncluster:\n  listen: 127.0.0.1:7101\n"
                              "  members: [a@127.0.0.1:7101, b@127.0.0.1:7102, c@127.0.0.1:7103]\n";
  auto step1 = load_text(members);
  REQUIRE(step1);
  CHECK(step1->cluster.replication_factor == 1);
  CHECK(step1->cluster.min_insync == 1);
  CHECK_FALSE(step1->cluster.replicated());

  auto ok = load_text(members
                      + "  replication_factor: 3\n"
                        "  etcd: [http://127.0.0.1:2379, http://127.0.0.1:2381]\n"
                        "  replica_lag: 3s\n  lease_ttl: 4s\n  name: prod\n");
  REQUIRE(ok);
  CHECK(ok->cluster.replicated());
  CHECK(ok->cluster.min_insync == 2); // derived: min(2, replication_factor)
  CHECK(ok->cluster.etcd.size() == 2);
  CHECK(ok->cluster.replica_lag == 3s);
  CHECK(ok->cluster.lease_ttl == 4s);
  CHECK(ok->cluster.name == "prod");

  auto no_etcd = load_text(members + "  replication_factor: 3\n");
  REQUIRE_FALSE(no_etcd);
  CHECK(no_etcd.error().find("cluster.replication_factor: 3 needs cluster.etcd") == 0);

  auto too_many = load_text(members + "  replication_factor: 4\n  etcd: [http://127.0.0.1:2379]\n");
  REQUIRE_FALSE(too_many);
  CHECK(too_many.error().find("cluster.members lists 3") != std::string::npos);

  auto insync = load_text(members
                          + "  replication_factor: 2\n  min_insync: 3\n"
                            "  etcd: [http://127.0.0.1:2379]\n");
  REQUIRE_FALSE(insync);
  CHECK(insync.error().find("cluster.min_insync: 3 is more than") == 0);

  auto bad_url = load_text(members + "  etcd: [127.0.0.1:2379]\n");
  REQUIRE_FALSE(bad_url);
  CHECK(bad_url.error().find("cluster.etcd: \"127.0.0.1:2379\"") != std::string::npos);

  auto single = load_text("cluster: { replication_factor: 2 }\n");
  REQUIRE_FALSE(single);
  CHECK(single.error().find("cluster.replication_factor:") == 0);
}

TEST_CASE("config errors are one line whatever the text carried", "[unit][config]") {
  // Found by tests/fuzz (fuzz_config): yaml-cpp named an unknown escape with
  // the raw byte, here a line break, so the error took two lines.
  std::ifstream in{NERVE_SOURCE_DIR "/tests/fuzz/corpus/config/crash-escape-newline.yaml",
                   std::ios::binary};
  std::string text{std::istreambuf_iterator<char>{in}, std::istreambuf_iterator<char>{}};
  REQUIRE_FALSE(text.empty());
  auto escape = parse_yaml(text);
  REQUIRE_FALSE(escape);
  CHECK(escape.error() == "invalid YAML at line 9: unknown escape character: \\n");
  auto value = parse_yaml("http: { listen: \"a\\tb\\u0001\" }\n");
  REQUIRE_FALSE(value);
  CHECK(value.error().find_first_of("\t\x01") == std::string::npos);
}
