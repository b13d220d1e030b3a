// The `nerve` executable: one binary, `nerve run` is the server and every
// other subcommand is a client of a running server (CONTRACT.md section 1).
#include <sys/prctl.h>
#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <string_view>

#include <CLI/CLI.hpp>

#include "runtime/commands.hpp"
#include "runtime/dump_log.hpp"

namespace {

std::string env_or(const char* name, const char* fallback) {
  const char* v = std::getenv(name);
  return v != nullptr && *v != '\0' ? v : fallback;
}

void add_client_flags(CLI::App* cmd, nerve::runtime::client_options& c) {
  cmd->add_option("--server", c.server,
                  "server URL (default $NERVE_SERVER or http://127.0.0.1:8000)");
  cmd->add_option("--token", c.token, "bearer token (default $NERVE_TOKEN)");
  cmd->add_flag("--json", c.json, "print exactly the API's JSON");
}

} // namespace

/// `nerve __exec-agent PARENT COMMAND...`: how nerve starts a process
/// agent. The child asks the kernel for SIGKILL when nerve goes, even by
/// kill -9 (a restarted nerve would otherwise run a second copy of every
/// agent), then becomes COMMAND.
int exec_agent(const char* parent, char** command) {
  ::prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (std::to_string(::getppid()) != parent)
    return 1; // nerve is gone already
  ::execvp(command[0], command);
  std::fprintf(stderr, "cannot start %s: %s\n", command[0], std::strerror(errno));
  return 127; // as a shell reports a command it cannot run
}

// Long on purpose: it is the CLI's whole command tree as CLI11 declares it,
// one block per command, read top to bottom like `nerve --help`.
int main(int argc, char** argv) {
  using namespace nerve::runtime;
  if (argc >= 4 && std::string_view{argv[1]} == "__exec-agent")
    return exec_agent(argv[2], argv + 3);
  CLI::App app{"nerve: an actor runtime that runs event-driven agents reliably"};
  app.require_subcommand(1);
  app.fallthrough(); // client flags may follow a nested subcommand
  app.set_version_flag("--version", "nerve " NERVE_VERSION);

  nerve::config::flag_overrides flags;
  auto* run = app.add_subcommand("run", "start the server on the embedded log");
  run->add_option("--config", flags.config_file, "YAML config file (default ./nerve.yaml)");
  run->add_option("--data-dir", flags.data_dir, "data directory (default ./nerve-data)");
  run->add_option("--http", flags.http_listen, "HTTP listen address (default 127.0.0.1:8000)");
  run->add_option("--node-id", flags.node_id, "node id (default: generated, kept in the data dir)");
  run->add_option("--cluster-listen", flags.cluster_listen, "cluster listen HOST:PORT");
  run->add_option("--cluster-members", flags.cluster_members,
                  "cluster members, the same list on every node: ID@HOST:PORT,...");
  run->add_option("--resp", flags.resp_listen,
                  "Redis protocol listen HOST:PORT (default: off; docs/redis.md)");

  client_options client;
  client.server = env_or("NERVE_SERVER", "http://127.0.0.1:8000");
  client.token = env_or("NERVE_TOKEN", "");
  // The common client flags go before the subcommand too (`nerve --server URL
  // health`), as with nats or rpk; after it, the subcommand's own take them.
  add_client_flags(&app, client);

  publish_options pub;
  std::string dash;
  auto* publish_cmd = app.add_subcommand("publish", "publish one event to a topic");
  publish_cmd->add_option("topic", pub.topic, "topic name")->required();
  publish_cmd->add_option("stdin", dash, "'-' reads the data from stdin")
    ->check(CLI::IsMember({"-"}));
  publish_cmd->add_option("--key", pub.key, "partition key (same key, same partition, in order)");
  publish_cmd->add_option("--id", pub.id, "event id; publishing an id again is a no-op");
  publish_cmd->add_option("--type", pub.type, "event type");
  publish_cmd->add_option("--source", pub.source, "event source");
  publish_cmd->add_option("--data", pub.data, "the data as JSON");
  publish_cmd->add_option("--data-file", pub.data_file, "read the data (JSON) from a file");
  add_client_flags(publish_cmd, client);

  std::string agent_action;
  std::string agent_name;
  auto* agent_cmd = app.add_subcommand("agent", "list, inspect, pause and resume agents");
  agent_cmd->require_subcommand(1);
  agent_cmd->add_subcommand("list", "agents, their instances and states")->callback([&] {
    agent_action = "list";
  });
  for (const char* action : {"get", "pause", "resume"}) {
    auto* sub = agent_cmd->add_subcommand(action, std::string{action} + " one agent");
    sub->add_option("name", agent_name, "agent name")->required();
    sub->callback([&agent_action, action] { agent_action = action; });
  }
  add_client_flags(agent_cmd, client);

  // An empty filter would select everything: `dlq purge --agent "$A"` with $A
  // unset must not purge every agent's entries.
  const CLI::Validator nonempty{
    [](std::string& v) { return v.empty() ? std::string{"must not be empty"} : std::string{}; },
    "NAME"};
  dlq_options dlq_opts;
  auto add_dlq_list = [&dlq_opts, &nonempty](CLI::App* parent, const std::string& name) {
    auto* sub = parent->add_subcommand(name, "DLQ entries, in entry-id order");
    sub->add_option("--agent", dlq_opts.agent, "only this agent's entries")->check(nonempty);
    sub->add_option("--topic", dlq_opts.topic, "only this topic's entries")->check(nonempty);
    sub->add_option("--limit", dlq_opts.limit, "at most this many (default 100)")
      ->check(CLI::Range(1, 1000));
    return sub;
  };
  auto* dlq_cmd = app.add_subcommand("dlq", "the dead-letter queue");
  dlq_cmd->require_subcommand(1);
  add_dlq_list(dlq_cmd, "list");
  for (const char* action : {"show", "retry"}) {
    auto* sub = dlq_cmd->add_subcommand(action, std::string{action} + " one entry");
    sub->add_option("id", dlq_opts.id, "DLQ entry id")->required();
  }
  auto* dlq_retry_all = dlq_cmd->add_subcommand("retry-all", "send every matching entry again");
  dlq_retry_all->add_option("--agent", dlq_opts.agent, "only this agent's entries")
    ->check(nonempty);
  dlq_retry_all->add_option("--topic", dlq_opts.topic, "only this topic's entries")
    ->check(nonempty);
  auto* dlq_purge = dlq_cmd->add_subcommand("purge", "delete entries for good");
  dlq_purge->add_option("--agent", dlq_opts.agent, "only this agent's entries")->check(nonempty);
  dlq_purge->add_flag("--yes", dlq_opts.yes, "confirm");
  add_client_flags(dlq_cmd, client);

  std::string bus_topic;
  auto* bus_cmd
    = app.add_subcommand("bus", "the event bus: streams, stored events, consumer groups, totals");
  bus_cmd->require_subcommand(1);
  auto* bus_streams_cmd
    = bus_cmd->add_subcommand("streams", "topics with their partitions, events and bytes");
  bus_streams_cmd->alias("list");
  inspect_options inspect;
  auto* bus_inspect_cmd
    = bus_cmd->add_subcommand("inspect", "stored events of a topic, in offset order per partition");
  bus_inspect_cmd->add_option("topic", inspect.topic, "topic name")->required();
  bus_inspect_cmd->add_option("--partition", inspect.partition, "only this partition")
    ->check(CLI::Range(0, 1023));
  bus_inspect_cmd
    ->add_option("--from-offset", inspect.from_offset, "start at this offset (default 0)")
    ->check(CLI::NonNegativeNumber);
  bus_inspect_cmd->add_option("--limit", inspect.limit, "at most this many (default 100)")
    ->check(CLI::Range(1, 1000));
  auto* bus_groups_cmd = bus_cmd->add_subcommand("groups", "consumer groups of a topic");
  bus_groups_cmd->add_option("topic", bus_topic, "topic name")->required();
  auto* bus_stats_cmd = bus_cmd->add_subcommand(
    "stats", "bus totals: topics, events, pending, lag, DLQ, published/delivered/acked counts");
  auto* bus_dlq_cmd = add_dlq_list(bus_cmd, "dlq");
  add_client_flags(bus_cmd, client);

  bool detailed = false;
  auto* health_cmd = app.add_subcommand(
    "health", "is the server healthy? exit 0 healthy (or degraded with --detailed), 3 unhealthy");
  health_cmd->add_flag("--detailed", detailed, "state, node, version, uptime and every indicator");
  add_client_flags(health_cmd, client);

  metrics_options metrics_opts;
  auto* metrics_cmd
    = app.add_subcommand("metrics", "per agent and topic counters and latencies (all-time)");
  metrics_cmd->add_option("--topic", metrics_opts.topic, "only this topic")->check(nonempty);
  metrics_cmd->add_option("--agent", metrics_opts.agent, "only this agent")->check(nonempty);
  metrics_cmd
    ->add_option("--format", metrics_opts.format,
                 "table (default), json (= --json) or prometheus (GET /metrics as it is)")
    ->check(CLI::IsMember({"table", "json", "prometheus"}));
  add_client_flags(metrics_cmd, client);

  auto* storage_cmd = app.add_subcommand("storage", "the storage backend");
  storage_cmd->require_subcommand(1);
  auto* storage_health_cmd = storage_cmd->add_subcommand(
    "health", "backend, path, size, fsync policy, write latency, last error; exit 3 unhealthy");
  add_client_flags(storage_cmd, client);

  auto* cluster_cmd = app.add_subcommand("cluster", "the cluster this node belongs to");
  cluster_cmd->require_subcommand(1);
  auto* cluster_status_cmd
    = cluster_cmd->add_subcommand("status", "nodes: id, address, state, partitions owned");
  auto* cluster_partitions_cmd = cluster_cmd->add_subcommand(
    "partitions", "replicated partitions: leader, epoch, in-sync copies, high watermark, lag");
  add_client_flags(cluster_cmd, client);

  replay_options replay_opts;
  auto* replay_cmd = app.add_subcommand(
    "replay", "send a time window of the log again to the agents (or only show it: --dry-run)");
  replay_cmd->require_subcommand(0, 1);
  replay_cmd->add_option("--from", replay_opts.from,
                         "window start, included: RFC 3339 or relative (-15m, -2h, now)");
  replay_cmd->add_option("--to", replay_opts.to, "window end, excluded: RFC 3339 or relative");
  replay_cmd->add_option("--topic", replay_opts.topics, "only this topic (repeatable)")
    ->check(nonempty);
  replay_cmd
    ->add_option("--agent", replay_opts.agents,
                 "only this agent (repeatable); an agent not subscribed then gets the "
                 "window's matching events too")
    ->check(nonempty);
  replay_cmd
    ->add_option("--event", replay_opts.events,
                 "replay these event ids instead of a window (repeatable)")
    ->check(nonempty);
  replay_cmd->add_flag("--dry-run", replay_opts.dry_run, "reconstruct and count, deliver nothing");
  replay_cmd->add_flag("--no-wait", replay_opts.no_wait,
                       "print the new replay (id, totals) and return at once");
  auto* replay_status_cmd = replay_cmd->add_subcommand("status", "state and progress of a replay");
  replay_status_cmd->add_option("id", replay_opts.id, "replay id")->required();
  auto* replay_cancel_cmd = replay_cmd->add_subcommand("cancel", "stop a running replay");
  replay_cancel_cmd->add_option("id", replay_opts.id, "replay id")->required();
  replay_cmd->add_subcommand("list", "every replay, newest last");
  auto* replay_history_cmd = replay_cmd->add_subcommand(
    "history", "the events an agent's actors received in a replay's window, with outcomes");
  replay_history_cmd->add_option("id", replay_opts.id, "replay id")->required();
  replay_history_cmd->add_option("--agent", replay_opts.agent, "whose history")
    ->required()
    ->check(nonempty);
  replay_history_cmd->add_option("--cursor", replay_opts.cursor, "continue from this cursor");
  replay_history_cmd->add_option("--limit", replay_opts.limit, "at most this many (default 100)")
    ->check(CLI::Range(1, 1000));
  add_client_flags(replay_cmd, client);

  // Hidden (an empty group): a tool for the offline cluster checker, not an
  // operator's command; docs/operations.md, "Checking a cluster's logs offline".
  std::string dump_data_dir;
  auto* dump_log_cmd = app.add_subcommand(
    "__dump-log", "print every event stored in a data directory, opened read-only");
  dump_log_cmd->group("");
  dump_log_cmd->add_option("--data-dir", dump_data_dir, "the (stopped) node's data directory")
    ->required();
  bool dump_epochs_only = false;
  dump_log_cmd->add_flag("--epochs", dump_epochs_only,
                         "print the leader-epoch checkpoints instead: topic partition epoch "
                         "start_offset");

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == 0)
      return app.exit(e);
    print_error(std::string{e.what()} + " (see nerve --help)");
    return exit_usage;
  }
  if (run->parsed()) {
    for (const char* f : {"--server", "--token", "--json"})
      if (app.get_option(f)->count() > 0) {
        print_error(std::string{f}
                    + " is a client flag; nerve run takes --http (see nerve run --help)");
        return exit_usage;
      }
    return run_server(flags);
  }
  if (agent_cmd->parsed())
    return agent(client, agent_action, agent_name);
  if (dlq_cmd->parsed()) {
    for (auto* sub : dlq_cmd->get_subcommands())
      dlq_opts.action = sub->get_name();
    return dlq(client, dlq_opts);
  }
  if (bus_groups_cmd->parsed())
    return bus_groups(client, bus_topic);
  if (bus_streams_cmd->parsed())
    return bus_streams(client);
  if (bus_inspect_cmd->parsed())
    return bus_inspect(client, inspect);
  if (bus_stats_cmd->parsed())
    return bus_stats(client);
  if (bus_dlq_cmd->parsed()) {
    dlq_opts.action = "list";
    return dlq(client, dlq_opts);
  }
  if (health_cmd->parsed())
    return health(client, detailed);
  if (metrics_cmd->parsed())
    return metrics(client, metrics_opts);
  if (storage_health_cmd->parsed())
    return storage_health(client);
  if (cluster_status_cmd->parsed())
    return cluster_status(client);
  if (cluster_partitions_cmd->parsed())
    return cluster_partitions(client);
  if (replay_cmd->parsed()) {
    replay_opts.action = "start";
    for (auto* sub : replay_cmd->get_subcommands())
      replay_opts.action = sub->get_name();
    return replay(client, replay_opts);
  }
  if (publish_cmd->parsed()) {
    pub.data_stdin = dash == "-";
    return publish(client, pub);
  }
  if (dump_log_cmd->parsed())
    return dump_epochs_only ? dump_epochs(dump_data_dir) : dump_log(dump_data_dir);
  return exit_usage;
}
