// `nerve run`: wires config, the actor node and the HTTP server, waits for
// SIGTERM/SIGINT/SIGHUP, then shuts down gracefully.
#include <csignal>
#include <iostream>
#include <optional>

#include <spdlog/spdlog.h>

#include "actors/node.hpp"
#include "http/resp_commands.hpp"
#include "http/resp_server.hpp"
#include "http/routes.hpp"
#include "http/server.hpp"
#include "runtime/commands.hpp"
#include "runtime/logging.hpp"
#include "runtime/systemd_notify.hpp"

namespace nerve::runtime {

int run_server(const config::flag_overrides& flags) {
  // Process agents start through this binary's `__exec-agent`, which ties
  // each child's life to this process (main.cpp).
  actors::set_agent_launcher({"/proc/self/exe", "__exec-agent", std::to_string(::getpid())});
  // Block the stop signals in every thread started from here on; this thread
  // waits for them with sigwait.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGTERM);
  sigaddset(&stop_signals, SIGINT);
  // A closed terminal (SIGHUP) drains like SIGTERM instead of killing the
  // node mid-commit; nerve has no configuration reload.
  sigaddset(&stop_signals, SIGHUP);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);
  std::signal(SIGPIPE, SIG_IGN);
  // Before any agent starts: they must not inherit $NOTIFY_SOCKET.
  auto systemd = systemd_notifier::from_env();
  // The allocator is tcmalloc (runtime/CMakeLists.txt): history pages and
  // batch answers, buffers of up to a few MiB made and freed many times a
  // second, are reused from its page heap, not mapped and unmapped each time.

  auto cfg = config::load(flags);
  if (!cfg) {
    print_error("config: " + cfg.error());
    return exit_usage;
  }
  setup_logging(cfg->log);
  auto started = std::chrono::steady_clock::now();
  auto node = actors::start_node(*cfg);
  if (!node) {
    spdlog::critical("cannot start: {}", node.error());
    return exit_failed;
  }
  auto hp = *config::split_host_port(cfg->http.listen);
  http::server_options opts;
  opts.host = hp.first;
  opts.port = hp.second;
  opts.max_body_bytes = cfg->http.max_body_bytes;
  opts.max_header_bytes = cfg->http.max_header_bytes;
  opts.max_connections = cfg->http.max_connections;
  opts.probe_connections = cfg->http.probe_connections;
  opts.read_timeout = cfg->http.read_timeout;
  opts.threads = cfg->http.threads;
  std::function<void(unsigned)> own_answers;
  opts.on_own_answer = [&own_answers](unsigned status) { own_answers(status); };
  http::server server{opts, http::make_api(**node, *cfg, &own_answers)};
  if (auto bound = server.start(); !bound) {
    spdlog::critical("cannot start: {}", bound.error());
    (*node)->shutdown();
    return exit_failed;
  }
  // The Redis protocol listener, when resp.listen is set (docs/redis.md).
  std::optional<http::resp::server> resp;
  if (cfg->resp.enabled()) {
    resp.emplace(http::resp::options_from(*cfg), http::resp::make_commands(**node, started));
    if (auto bound = resp->start(); !bound) {
      spdlog::critical("cannot start: {}", bound.error());
      server.stop();
      (*node)->shutdown();
      return exit_failed;
    }
    spdlog::info("RESP (Redis protocol) listening on {}:{}",
                 config::split_host_port(cfg->resp.listen)->first, resp->port());
  }
  auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now()
                                                                  - started)
              .count();
  spdlog::info("nerve {} node {} ready in {} ms: http://{}:{} data {} fsync {}", NERVE_VERSION,
               (*node)->node_id(), ms, hp.first, server.port(), cfg->data_dir,
               config::to_string(cfg->storage.fsync));
  // Type=notify (packaging/nerve.service): started means recovered and
  // listening, as /readyz answers 200 from here on.
  systemd.notify(fmt::format("READY=1\nSTATUS=serving http://{}:{}", hp.first, server.port()));

  int sig = 0;
  sigwait(&stop_signals, &sig);
  spdlog::info("{} received: draining", sig == SIGINT   ? "SIGINT"
                                        : sig == SIGHUP ? "SIGHUP"
                                                        : "SIGTERM");
  systemd.notify("STOPPING=1\nSTATUS=draining");
  auto drain_start = std::chrono::steady_clock::now();
  auto ms_since = [&drain_start] {
    return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now()
                                                                 - drain_start)
      .count();
  };
  server.stop_accepting();
  if (resp)
    resp->stop_accepting();
  (*node)->shutdown(); // answers every queued publish, then stops the actors
  spdlog::info("actors stopped after {} ms", ms_since());
  if (!server.wait_idle(std::chrono::seconds{10}))
    spdlog::warn("requests still in flight after 10 s; closing their connections");
  // Before the node goes: the XADDs the shutdown answered are written first.
  if (resp && !resp->wait_idle(std::chrono::seconds{2}))
    spdlog::warn("Redis protocol commands still in flight after 2 s; closing their connections");
  if (resp)
    resp->stop();
  server.stop();
  spdlog::info("stopped cleanly in {} ms", ms_since());
  return exit_ok;
}

} // namespace nerve::runtime
