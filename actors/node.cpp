// The node: composes the runner and the services behind the `node`
// interface the HTTP layer calls, and runs its lifecycle (start-up with
// recovery, graceful shutdown). The services do the work: publish_service,
// query_service, dlq_service, replay_service, health_service; the runner
// supervises the actors. It also owns the keyspace (the Redis hashes beside
// the topics), its threads and its sweeper.
#include "actors/node.hpp"
#include "actors/messages.hpp"

#include <algorithm>
#include <condition_variable>
#include <csignal>
#include <future>
#include <map>
#include <mutex>
#include <shared_mutex>
#include <thread>
#include <unordered_set>

#include <caf/all.hpp>
#include <spdlog/spdlog.h>

#include "actors/actor_sender.hpp"
#include "actors/ask.hpp"
#include "actors/cluster_actor.hpp"
#include "actors/control_plane.hpp"
#include "actors/dlq_service.hpp"
#include "actors/health_service.hpp"
#include "actors/histogram_sum.hpp"
#include "actors/lean_sharing.hpp"
#include "actors/publish_service.hpp"
#include "actors/query_pool.hpp"
#include "actors/query_service.hpp"
#include "actors/repl_sessions.hpp"
#include "actors/replay_service.hpp"
#include "actors/runner.hpp"
#include "actors/runtime.hpp"
#include "actors/tracing.hpp"
#include "persistence/delivery_store.hpp"
#include "persistence/event_log.hpp"
#include "persistence/ids.hpp"
#include "persistence/keyspace.hpp"

namespace nerve::actors {

namespace {

using namespace detail;

/// Threads that run keyspace jobs (run_keyspace). Each call waits for an
/// fsync, which the calls waiting at the same time share, so more threads
/// than cores: 8 concurrent clients' writes cost about one fsync.
constexpr std::size_t keyspace_threads = 8;
/// Keyspace jobs queued or running, at most; past it, `overloaded`. The
/// Redis listener runs one job per connection at a time, so its
/// max_connections (1024 by default) stays below this.
constexpr std::size_t keyspace_jobs_max = 4096;
/// How often expired keys are swept, and how many records one sweep may
/// delete (it holds the keyspace's write lock meanwhile): at most 100,000
/// records a second, a few ms of the lock in each 100.
constexpr auto keyspace_sweep_interval = std::chrono::milliseconds{100};
constexpr std::size_t keyspace_sweep_records_max = 10'000;

/// Asks each of `parts` (partition actors) to hand its groups what is
/// durable (barrier_atom), then runs `then`, on an actor thread: what they
/// sent meanwhile is in each receiver's mailbox before anything `then`
/// sends. A partition that does not answer within half a second is passed.
void after_barrier(caf::actor_system& sys, std::vector<caf::actor> parts,
                   std::function<void()> then) {
  sys.spawn(
    [then = std::move(then)](caf::event_based_actor* self, const std::vector<caf::actor>& parts) {
      auto left = std::make_shared<std::size_t>(parts.size());
      auto one = [left, then] {
        if (--*left == 0)
          then();
      };
      for (auto& p : parts)
        self
          ->request(caf::actor_cast<partition_actor>(p), std::chrono::milliseconds{500},
                    barrier_atom::value)
          .then([one](bool) { one(); }, [one](caf::error&) { one(); });
    },
    std::move(parts));
}

/// The services' messages, sent through CAF to the node's actors.
class caf_sender final : public actor_sender {
public:
  caf_sender(node_context& ctx, caf::actor_system& system) : ctx_(ctx), system_(system) {}

  void publish(const topic_route& route, std::uint32_t p, job_ptr job) override {
    caf::anon_send(ctx_.routes.actor_of(route, p), publish_atom::value, std::move(job));
  }

  void create_topic(create_ptr req) override {
    ask<std::uint32_t>(system_, runner_, std::chrono::seconds{30}, "the runner",
                       std::function<void(result<std::uint32_t>)>{[req](result<std::uint32_t> r) {
                         if (r)
                           req->done(std::nullopt);
                         else
                           req->done(r.error().message);
                       }},
                       create_topic_atom::value, req->topic, req->partitions, req->id);
  }

  void wake(const partition_slot& slot) override {
    if (slot.actor)
      caf::anon_send(slot.actor, wake_atom::value);
  }

  bool runner_running() const override { return static_cast<bool>(runner_); }

  void start_replay(const std::string& id) override {
    caf::anon_send(runner_, start_replay_atom::value, id);
  }

  void cancel_replay(const std::string& id, reply_ptr reply) override {
    ask<caf::ok_atom>(system_, runner_, std::chrono::seconds{30}, "the runner",
                      std::function<void(result<caf::ok_atom>)>{[reply](result<caf::ok_atom> r) {
                        (*reply)(r ? std::string{} : r.error().message);
                      }},
                      cancel_replay_atom::value, id);
  }

  void run_detached(std::function<void()> job) override {
    // With the job as an argument, not as the actor's function (ask.hpp says why).
    system_.spawn<caf::detached>([](caf::blocking_actor*, const std::function<void()>& f) { f(); },
                                 std::move(job));
  }

  [[nodiscard]] const runner_actor& runner() const { return runner_; }
  void set_runner(runner_actor runner) { runner_ = std::move(runner); }

private:
  node_context& ctx_;
  caf::actor_system& system_;
  runner_actor runner_; ///< set by start, cleared by shutdown
};

class node_impl final : public node {
public:
  node_impl(const config::config& cfg, std::unique_ptr<persistence::event_log> log,
            std::shared_ptr<const io_latency> io, node_hooks hooks)
    : cfg_(cfg), hooks_(std::move(hooks)), io_(std::move(io)), log_(std::move(log)), store_(*log_),
      system_(configure(sys_cfg_, cfg_)), sender_(ctx_, system_),
      publish_(cfg_.storage, *log_, ctx_.routes, flags_.draining, pool_, sender_, ctx_.tails),
      queries_(ctx_, pool_, sender_),
      dlq_(dlq_client{system_, [this] { return ctx_.dlq_actor(); }}),
      replays_(ctx_, pool_, sender_), health_(ctx_, *io_, flags_, queries_, pool_) {
    runner_id_ = persistence::new_uuid_v7(persistence::system_clock_us());
    ctx_.log = log_.get();
    ctx_.store = &store_;
    ctx_.cfg = &cfg_;
    ctx_.hooks = &hooks_;
    if (cfg_.tracing.enabled())
      ctx_.tracing = std::make_shared<tracer>(cfg_.tracing);
    for (std::size_t i = 0; i < cfg_.agents.size(); ++i) {
      ctx_.agents.add(std::make_shared<agent_runtime>(cfg_.agents[i], i));
    }
    ctx_.publish = [this](const std::string& topic, std::vector<publish_item> items,
                          callback<std::vector<published>> done) {
      publish_.dispatch(topic, std::move(items), std::move(done));
    };
  }

  ~node_impl() override { shutdown(); }

  [[nodiscard]] std::optional<std::string> start() {
    std::signal(SIGPIPE, SIG_IGN); // a dead agent process must not kill nerve
    // Before the runner: the agents' follow-ups must already go to their
    // partitions' owners.
    if (cfg_.cluster.enabled())
      if (auto err = start_cluster_link())
        return err;
    // Replicated partitions pace their syncs: a WAL sync starts once CAF's
    // scheduler got through what was queued when the first write of a burst
    // asked for it (the pacer's message comes after it), so the partitions'
    // appends and a fetch round's applies share one sync instead of the
    // first starting alone (docs/architecture.md, "Group commit").
    if (cfg_.cluster.replicated()) {
      sync_pacer_ = system_.spawn(
        [](caf::event_based_actor*, persistence::event_log* log) -> caf::behavior {
          return {[log](sync_atom) { log->start_syncs(); }};
        },
        log_.get());
      log_->set_sync_pacer([pacer = sync_pacer_] { caf::anon_send(pacer, sync_atom::value); });
    }
    fresh_ = log_->topics().empty();
    // The groups XGROUP CREATE made join the config's agents (a cluster's
    // groups are all in its config).
    if (!cfg_.cluster.enabled())
      if (auto loaded = load_redis_groups(ctx_); !loaded)
        return "reading the groups XGROUP CREATE made: " + loaded.error().message;
    if (cfg_.cluster.replicated())
      set_up_replication();
    sender_.set_runner(spawn_runner(system_, &ctx_));
    if (cfg_.cluster.replicated())
      start_control();
    caf::scoped_actor self{system_};
    std::optional<std::string> err;
    self->request(sender_.runner(), std::chrono::seconds{60}, ready_atom::value)
      .receive([](bool) {}, [&](caf::error& e) { err = "recovery failed: " + system_.render(e); });
    if (!err && !await_recovery(std::chrono::seconds{60}))
      err = "recovery failed: partitions and the DLQ did not rebuild their state within 60 s";
    if (!err) {
      open_keyspace();
      flags_.ready.store(true);
    }
    return err;
  }

  void publish(const std::string& topic, std::vector<publish_item> items,
               callback<std::vector<published>> done) override {
    publish_.publish(topic, std::move(items), std::move(done));
  }

  void topics(callback<std::vector<topic_view>> done) override { queries_.topics(std::move(done)); }

  void read_events(const std::string& topic, std::optional<std::uint32_t> partition,
                   std::uint64_t from_offset, std::size_t limit,
                   callback<events_page> done) override {
    queries_.read_events(topic, partition, from_offset, limit, std::move(done));
  }

  void get_event(const std::string& id, callback<event_view> done) override {
    queries_.get_event(id, std::move(done));
  }

  std::vector<agent_view> agents() const override { return queries_.agents(); }

  void pull_fetch(const std::string& name, pull_request req,
                  callback<std::vector<pulled_delivery>> done) override {
    auto queue = pull_queue(name, req.topics);
    if (!queue)
      return done(tl::make_unexpected(queue.error()));
    // A message with its answer, not a request: the queue always answers
    // (at once, when the wait ends, or as it stops), and each fetch through
    // a one-shot actor with a timeout cost more than the fetch itself.
    using list = std::vector<delivery>;
    fetch_answer reply{[done, tracing = ctx_.tracing](result<list> r) {
                         if (!r)
                           return done(tl::make_unexpected(r.error()));
                         std::vector<pulled_delivery> out;
                         out.reserve(r->size());
                         for (auto& d : *r) {
                           auto parent = attempt_traceparent(tracing.get(), d.event, d.delivery_id);
                           out.push_back({std::move(d.delivery_id), d.attempt, std::move(d.event),
                                          std::move(parent)});
                         }
                         done(std::move(out));
                       },
                       "agent " + name};
    if (req.wait_ms == 0) {
      // A fetch that does not wait must see every entry acknowledged before
      // it (Redis does), but the partitions hand a durable entry to the
      // queue a moment after its publisher heard. When the queue answers
      // fewer than asked for (nothing, or the older entries without the one
      // just added), the partitions are asked to hand out what is durable
      // (barrier_atom) and the queue is asked for the rest.
      // The partitions are looked up only then: a fetch that gets all it
      // asked for (a busy worker's) pays nothing for it.
      fetch_answer first{
        [this, name, queue = *queue, req, reply](result<list> r) mutable {
          if (!r)
            return; // the queue stopped: `reply`, dropped, says so
          auto parts
            = r->size() < req.max ? fetch_partitions(name, req.topics) : std::vector<caf::actor>{};
          if (parts.empty())
            return reply(std::move(*r));
          auto rest = req;
          rest.max = req.max - static_cast<std::uint32_t>(r->size());
          fetch_answer joined{[got = std::move(*r), reply](result<list> more) mutable {
                                // The first part is handed out already: it is
                                // answered even if the queue stopped since. A
                                // delivery of it the queue took back meanwhile
                                // (its consumer deleted) and handed out again is
                                // in the answer once.
                                if (more) {
                                  std::unordered_set<std::string> seen;
                                  for (auto& g : got)
                                    seen.insert(g.delivery_id);
                                  for (auto& d : *more)
                                    if (seen.count(d.delivery_id) == 0)
                                      got.push_back(std::move(d));
                                }
                                reply(std::move(got));
                              },
                              "agent " + name};
          after_barrier(system_, std::move(parts), [queue, rest, joined] {
            caf::anon_send(queue, pull_atom::value, rest, joined);
          });
        },
        "agent " + name};
      caf::anon_send(*queue, pull_atom::value, std::move(req), std::move(first));
      return;
    }
    caf::anon_send(*queue, pull_atom::value, std::move(req), std::move(reply));
  }

  void pull_pending(const std::string& name, const std::string& topic, bool with_events,
                    callback<std::vector<pending_entry>> done) override {
    ask_queue<std::vector<pending_entry>>(name, topic, std::move(done), pull_pending_atom::value,
                                          topic, with_events);
  }

  void pull_claim(const std::string& name, claim_request req,
                  callback<std::vector<pending_entry>> done) override {
    auto topic = req.topic;
    ask_queue<std::vector<pending_entry>>(name, topic, std::move(done), pull_claim_atom::value,
                                          std::move(req));
  }

  void pull_ack_at(const std::string& name, const std::string& topic, std::vector<entry_at> entries,
                   callback<std::uint64_t> done) override {
    auto queue = pull_queue(name, {topic});
    if (!queue)
      return done(tl::make_unexpected(queue.error()));
    // As pull_fetch: a message carrying its answer, not a one-shot request.
    caf::anon_send(*queue, pull_ack_at_atom::value, topic, std::move(entries),
                   count_answer{std::move(done), "agent " + name});
  }

  void pull_consumers(const std::string& name, const std::string& topic, const std::string& who,
                      int op, callback<std::vector<consumer_view>> done) override {
    ask_queue<std::vector<consumer_view>>(name, topic, std::move(done), pull_consumer_atom::value,
                                          topic, who, static_cast<std::int32_t>(op));
  }

  void pull_answer(const std::string& name, std::vector<pull_reply> replies,
                   callback<std::vector<std::string>> done) override {
    auto queue = pull_queue(name);
    if (!queue)
      return done(tl::make_unexpected(queue.error()));
    std::vector<actors::pull_answer> answers;
    answers.reserve(replies.size());
    for (auto& r : replies)
      answers.push_back(
        {std::move(r.delivery), r.ok, std::move(r.result), std::move(r.emit), std::move(r.error)});
    using ids = std::vector<std::string>;
    ask<ids>(system_, *queue, std::chrono::seconds{10}, "agent " + name,
             std::function<void(result<ids>)>{std::move(done)}, pull_answer_atom::value,
             std::move(answers));
  }

  void set_paused(const std::string& name, bool paused, callback<agent_view> done) override {
    queries_.set_paused(name, paused, std::move(done));
  }

  void create_group(const std::string& group, const std::string& topic, bool earliest,
                    bool mkstream, callback<bool> done) override {
    ask<bool>(system_, sender_.runner(), std::chrono::seconds{30}, "the runner",
              std::function<void(result<bool>)>{std::move(done)}, create_group_atom::value, group,
              topic, earliest, mkstream);
  }

  void destroy_group(const std::string& group, const std::string& topic,
                     callback<bool> done) override {
    ask<bool>(system_, sender_.runner(), std::chrono::seconds{30}, "the runner",
              std::function<void(result<bool>)>{std::move(done)}, destroy_group_atom::value, group,
              topic);
  }

  std::vector<metrics_row> metrics(const std::string& topic,
                                   const std::string& agent) const override {
    return queries_.metrics(topic, agent);
  }

  void groups(const std::string& topic, callback<std::vector<group_view>> done) override {
    queries_.groups(topic, std::move(done));
  }

  std::optional<std::uint32_t> partition_count(const std::string& topic) const override {
    auto route = ctx_.routes.find(topic);
    if (!route)
      return std::nullopt;
    return route->info.partitions;
  }

  std::optional<std::uint64_t> group_progress(const std::string& topic) const override {
    auto route = ctx_.routes.find(topic);
    if (!route)
      return std::nullopt;
    return route->progress.load(std::memory_order_acquire);
  }

  void when_groups_move(const std::string& topic, std::uint64_t index,
                        std::chrono::milliseconds wait, std::function<void()> then) override {
    auto route = ctx_.routes.find(topic);
    if (!route)
      return then();
    ctx_.progress.add(
      [route, index] { return route->progress.load(std::memory_order_seq_cst) != index; },
      std::chrono::steady_clock::now() + wait, std::move(then));
  }

  void dlq_list(const std::string& agent, const std::string& topic, const std::string& cursor,
                std::size_t limit, callback<dlq_page> done) override {
    dlq_.list(agent, topic, cursor, limit, std::move(done));
  }

  void dlq_get(const std::string& id, callback<dlq_view> done) override {
    dlq_.get(id, std::move(done));
  }

  void dlq_retry(const std::string& id, callback<dlq_view> done) override {
    dlq_.retry(id, std::move(done));
  }

  void dlq_retry_all(const std::string& agent, const std::string& topic,
                     callback<std::uint64_t> done) override {
    dlq_.retry_all(agent, topic, std::move(done));
  }

  void dlq_delete(const std::string& id, callback<dlq_view> done) override {
    dlq_.remove(id, std::move(done));
  }

  void dlq_purge(const std::string& agent, callback<std::uint64_t> done) override {
    dlq_.purge(agent, std::move(done));
  }

  tail_handle tail(const std::string& topic, tail_sink sink) override {
    auto local = ctx_.tails.add(topic, sink);
    if (!cluster_)
      return local;
    // In a cluster, the other members' partitions too.
    auto remote = cluster_->tail(topic, std::move(sink));
    return std::make_shared<std::pair<tail_handle, tail_handle>>(std::move(local),
                                                                 std::move(remote));
  }

  void run_keyspace(callback<persistence::keyspace*> job) override {
    if (flags_.draining.load())
      return job(tl::make_unexpected(error{errc::unavailable, "the node is shutting down"}));
    if (keyspace_jobs_.fetch_add(1) >= keyspace_jobs_max) {
      --keyspace_jobs_;
      return job(tl::make_unexpected(
        error{errc::overloaded, std::to_string(keyspace_jobs_max)
                                  + " keyspace commands are waiting already; retry later"}));
    }
    // Dropped unrun when shutdown closed the pool meanwhile: the job's
    // callbacks then answer as they are destroyed.
    keyspace_pool_.post([this, job = std::move(job)] {
      job(keyspace_.get());
      --keyspace_jobs_;
    });
  }

  void replay_create(replay_request req, callback<replay_view> done) override {
    replays_.create(std::move(req), std::move(done));
  }

  void replay_get(const std::string& id, callback<replay_view> done) override {
    replays_.get(id, std::move(done));
  }

  void replay_list(callback<std::vector<replay_view>> done) override {
    replays_.list(std::move(done));
  }

  void replay_history(const std::string& id, const std::string& agent, const std::string& cursor,
                      std::size_t limit, callback<history_page> done) override {
    replays_.history(id, agent, cursor, limit, std::move(done));
  }

  void replay_cancel(const std::string& id, callback<replay_view> done) override {
    replays_.cancel(id, std::move(done));
  }

  void health(callback<health_report> done) override { health_.health(std::move(done)); }

  void storage(callback<storage_report> done) override { health_.storage(std::move(done)); }

  [[nodiscard]] tracer* tracing() const override { return ctx_.tracing.get(); }

  metrics_snapshot scrape() const override {
    auto s = health_.scrape();
    if (ctx_.tracing) {
      auto t = ctx_.tracing->stats();
      s.tracing = true;
      s.spans_exported = t.exported;
      s.spans_dropped = t.dropped;
      s.spans_failed = t.failed;
      s.spans_queued = t.queued;
    }
    if (!control_)
      return s;
    s.replicated = true;
    auto& stats = control_->stats();
    s.leader_elections = stats.leader_changes.load();
    s.etcd_requests = stats.etcd_requests.load();
    s.etcd_errors = stats.etcd_errors.load();
    s.etcd_up = stats.etcd_ok.load();
    histogram_sum sum;
    sum.add(stats.etcd_latency);
    s.etcd_latency = sum.view();
    for (auto& v : replication()) {
      if (v.role.empty() || v.role == "none") // no copy here, or not one in use
        continue;
      metrics_snapshot::replica_row r;
      r.topic = v.topic;
      r.partition = v.partition;
      r.leads = v.role == "leader";
      r.in_sync = static_cast<std::uint32_t>(v.in_sync.size());
      r.replicas = static_cast<std::uint32_t>(v.replicas.size());
      r.high_watermark = v.high_watermark;
      r.log_end = v.log_end;
      for (auto& f : v.followers)
        r.follower_lag.emplace_back(f.node, v.lag_of(f));
      s.replicas.push_back(std::move(r));
    }
    return s;
  }

  bool healthy_now() const override { return health_.healthy_now(); }

  bool ready() const override { return health_.ready(); }

  std::string node_id() const override { return log_->node_id(); }

  std::string runner_id() const override { return runner_id_; }

  std::vector<replication_view> replication() const override {
    std::vector<replication_view> out;
    if (!control_)
      return out;
    for (auto& rp : control_->partitions()) {
      replication_view v;
      v.topic = rp.topic;
      v.partition = rp.partition;
      v.epoch = rp.state.epoch;
      v.leader = rp.leader_key == rp.state.leader ? rp.leader_key : std::string{};
      v.replicas = rp.state.replicas;
      v.in_sync = rp.state.in_sync;
      auto route = ctx_.routes.find(rp.topic);
      if (route && route->info.id == rp.topic_id && rp.partition < route->slots.size()) {
        auto& slot = *route->slots[rp.partition];
        if (auto role = slot.current_role()) {
          v.role = role->role == replica_role::kind::leader     ? "leader"
                   : role->role == replica_role::kind::follower ? "follower"
                                                                : "none";
          if (role->role == replica_role::kind::leader) {
            std::lock_guard<std::mutex> guard{slot.role_mutex};
            for (auto& f : slot.followers)
              v.followers.push_back({f.node, f.synced_end, f.last_fetch_us});
          }
        }
        v.high_watermark = slot.high_watermark.load();
        v.log_end = slot.log_end.load();
      }
      out.push_back(std::move(v));
    }
    return out;
  }

  std::string owner_of(const std::string& topic, std::uint32_t p) const override {
    return cluster_ ? cluster_->owner(topic, p) : log_->node_id();
  }

  std::string home_of(const std::string& topic) const override {
    return cluster_ ? cluster_->where().home(topic) : log_->node_id();
  }

  void serve_peers(peer_handler h) override {
    std::lock_guard<std::mutex> guard{peer_mutex_};
    peer_handler_ = std::make_shared<peer_handler>(std::move(h));
  }

  void call_peer(const std::string& id, peer_request req, callback<peer_response> done) override {
    if (!cluster_)
      return done(tl::make_unexpected(error{errc::not_found, "this node runs alone"}));
    cluster_->call(id, std::move(req), std::move(done));
  }

  cluster_report cluster() const override {
    cluster_report out;
    out.node_id = log_->node_id();
    out.clustered = cluster_ != nullptr;
    if (control_) {
      out.replicated = true;
      out.etcd_up = control_->stats().etcd_ok.load();
      out.lease_alive = control_->stats().lease_ok.load();
    }
    if (!cluster_) {
      out.members.push_back({out.node_id, cfg_.http.listen, true, true, {}, 0, {}, {}});
      for (auto& a : cfg_.agents)
        out.members.back().agents.push_back(a.name);
    } else {
      std::map<std::string, std::vector<std::string>> missing; // agent -> members without it
      auto peers = cluster_->peers();
      for (auto& p : peers)
        out.members.push_back({p.id, p.address, p.self, p.up, p.detail, p.since_us, {}, p.agents});
      for (auto& p : peers)
        for (auto& other : peers)
          if (p.known && other.known)
            for (auto& a : other.agents)
              if (std::find(p.agents.begin(), p.agents.end(), a) == p.agents.end()
                  && std::find(missing[a].begin(), missing[a].end(), p.id) == missing[a].end())
                missing[a].push_back(p.id);
      for (auto& [agent, ids] : missing)
        if (!ids.empty()) {
          std::string list;
          for (auto& id : ids)
            list += (list.empty() ? "" : ", ") + id;
          out.warnings.push_back("agent " + agent + " does not run on " + list
                                 + ": events of the partitions owned there are not delivered "
                                   "to it; give every node the same agents");
        }
    }
    std::shared_lock<std::shared_mutex> guard{ctx_.routes.mutex};
    std::map<std::string, std::shared_ptr<topic_route>> sorted(ctx_.routes.topics.begin(),
                                                               ctx_.routes.topics.end());
    for (auto& [name, route] : sorted)
      for (std::uint32_t p = 0; p < route->info.partitions; ++p) {
        auto owner = cluster_ ? cluster_->owner(name, p) : out.node_id;
        for (auto& m : out.members)
          if (m.id == owner)
            m.partitions.push_back(name + "/" + std::to_string(p));
      }
    return out;
  }

  void shutdown() override {
    std::lock_guard<std::mutex> guard{shutdown_mutex_};
    if (stopped_)
      return;
    flags_.draining.store(true);
    // The lease goes first: the other copies elect leaders of this node's
    // partitions at once instead of a TTL from now.
    if (control_)
      control_->stop();
    // Queries in progress finish and answer while the HTTP server is still
    // there to send the answers; none starts after this. Waiting group
    // reads answer now.
    ctx_.progress.stop();
    pool_.close();
    close_keyspace();
    if (auto runner = sender_.runner()) {
      caf::scoped_actor self{system_};
      self->monitor(runner);
      self->send(runner, stop_atom::value);
      self->receive([](const caf::down_msg&) {});
      sender_.set_runner(runner_actor{});
    }
    // Syncs start at once from here on; the pacer ends with the others.
    if (sync_pacer_) {
      log_->set_sync_pacer(nullptr);
      caf::anon_send_exit(sync_pacer_, caf::exit_reason::user_shutdown);
      sync_pacer_ = caf::actor{};
    }
    // Detached actors end only when no handle to them is left.
    {
      std::unique_lock<std::shared_mutex> guard{ctx_.routes.mutex};
      for (auto& [name, route] : ctx_.routes.topics)
        for (auto& slot : route->slots)
          slot->actor = nullptr;
    }
    for (auto& agent : ctx_.agents.all()) {
      std::lock_guard<std::mutex> guard{agent->mutex};
      agent->credits.clear_waiters();
      for (auto& inst : agent->instances)
        inst->actor = nullptr;
    }
    // Peers' forwards were refused since draining began; the links close
    // once the partitions answered what they had.
    if (cluster_)
      cluster_->stop();
    system_.await_all_actors_done();
    // Answer the publishes still waiting for their fsync before returning.
    std::promise<void> synced;
    log_->after_durable(
      [&synced](const std::optional<persistence::error>&) { synced.set_value(); });
    synced.get_future().wait();
    // The log stays open for reads still in flight; the destructor closes it
    // once the actor system is gone.
    stopped_ = true;
  }

private:
  /// The keyspace over the recovered log, seeing its topics as streams
  /// (also those created from now on), and the sweeper of its expired keys.
  void open_keyspace() {
    persistence::keyspace_options opts;
    opts.streams = persistence::topics_as_streams(*log_);
    keyspace_ = std::make_unique<persistence::keyspace>(*log_, std::move(opts));
    sweeper_ = std::thread{[this] { sweep_loop(); }};
  }

  /// Sweeps expired keys every keyspace_sweep_interval, on a thread of its
  /// own (a sweep blocks on RocksDB), until close_keyspace().
  void sweep_loop() {
    std::string failing; // the last error, logged once until the sweep works again
    std::unique_lock<std::mutex> lock{sweeper_mutex_};
    while (
      !sweeper_wake_.wait_for(lock, keyspace_sweep_interval, [this] { return sweeper_stop_; })) {
      lock.unlock();
      auto swept = keyspace_->sweep(keyspace_sweep_records_max);
      if (!swept && swept.error().message != failing) {
        failing = swept.error().message;
        spdlog::warn("keyspace: sweeping expired keys failed ({}); retrying every {} ms", failing,
                     keyspace_sweep_interval.count());
      } else if (swept && !failing.empty()) {
        failing.clear();
        spdlog::info("keyspace: sweeping expired keys works again");
      }
      lock.lock();
    }
  }

  /// Lets the keyspace commands queued or running finish and answer, stops
  /// the sweeper, and destroys the keyspace, before the log closes.
  void close_keyspace() {
    keyspace_pool_.close();
    {
      std::lock_guard<std::mutex> guard{sweeper_mutex_};
      sweeper_stop_ = true;
    }
    sweeper_wake_.notify_all();
    if (sweeper_.joinable())
      sweeper_.join();
    keyspace_.reset();
  }

  /// Asks pull agent `name`'s queue actor; answers its reply.
  template <class R, class... Ts>
  void ask_queue(const std::string& name, const std::string& topic, callback<R> done, Ts... xs) {
    auto queue = pull_queue(name, {topic});
    if (!queue)
      return done(tl::make_unexpected(queue.error()));
    ask<R>(system_, *queue, std::chrono::seconds{10}, "agent " + name,
           std::function<void(result<R>)>{std::move(done)}, std::move(xs)...);
  }

  /// The queue actor of pull agent `name`, which must read every topic of `topics`.
  result<instance_actor> pull_queue(const std::string& name,
                                    const std::vector<std::string>& topics = {}) const {
    auto agent = find_agent(ctx_, name);
    for (auto& t : topics)
      if (agent && !agent->subscribes(t))
        return tl::make_unexpected(
          error{errc::not_found, "agent " + name + " does not read topic " + t});
    if (!agent)
      return tl::make_unexpected(error{errc::not_found, "no agent named " + name});
    if (agent->cfg.kind != config::agent_kind::pull)
      return tl::make_unexpected(
        error{errc::invalid, "agent " + name + " is a " + config::to_string(agent->cfg.kind)
                               + " agent; only pull agents are fetched from"});
    std::lock_guard<std::mutex> guard{agent->mutex};
    auto actor = agent->instances.at(0)->actor;
    if (!actor)
      return tl::make_unexpected(error{errc::unavailable, "agent " + name + " is restarting"});
    return caf::actor_cast<instance_actor>(actor);
  }

  /// The actors of the partitions running here of the topics a fetch from
  /// pull agent `name` reads (`topics`, or all it subscribes to).
  std::vector<caf::actor> fetch_partitions(const std::string& name,
                                           const std::vector<std::string>& topics) {
    auto names = topics;
    if (names.empty()) {
      auto agent = find_agent(ctx_, name);
      if (!agent)
        return {};
      std::vector<std::string> all;
      {
        std::shared_lock<std::shared_mutex> guard{ctx_.routes.mutex};
        for (auto& entry : ctx_.routes.topics)
          all.push_back(entry.first);
      }
      for (auto& t : all)
        if (agent->subscribes(t))
          names.push_back(t);
    }
    std::vector<caf::actor> out;
    for (auto& t : names) {
      auto route = ctx_.routes.find(t);
      for (std::uint32_t p = 0; route && p < route->slots.size(); ++p)
        if (auto actor = partition_actor_of(t, p))
          out.push_back(std::move(actor));
    }
    return out;
  }

  /// The actor of local partition (topic, p) now; invalid when none runs.
  caf::actor partition_actor_of(const std::string& topic, std::uint32_t p) {
    auto route = ctx_.routes.find(topic);
    if (!route || p >= route->slots.size() || !route->slots[p]->alive)
      return caf::actor{};
    return ctx_.routes.actor_of(*route, p);
  }

  /// Sends a link frame to member `node`; false while there is no link.
  bool send_link(const std::string& node, std::string frame) {
    return cluster_ && cluster_->send_data(node, std::move(frame));
  }

  /// Publishes the cluster actor and routes publishes through it.
  [[nodiscard]] std::optional<std::string> start_cluster_link() {
    cluster_ops ops;
    ops.append = [this](const std::string& topic, std::uint32_t partitions,
                        std::vector<forward_batch> batches, callback<forward_answer> done) {
      publish_.append_local(topic, partitions, std::move(batches), std::move(done));
    };
    ops.home_topic = [this](const std::string& topic, callback<std::uint32_t> done) {
      auto req = std::make_shared<create_request>();
      req->topic = topic;
      req->done = [this, topic, done](std::optional<std::string> err) {
        if (err)
          return done(tl::make_unexpected(error{errc::storage, *err}));
        auto route = ctx_.routes.find(topic);
        if (!route)
          return done(tl::make_unexpected(error{errc::storage, "topic " + topic + " vanished"}));
        done(route->info.partitions);
      };
      sender_.create_topic(std::move(req));
    };
    ops.api = [this](peer_request req, std::function<void(peer_response)> done) {
      std::shared_ptr<peer_handler> h;
      {
        std::lock_guard<std::mutex> guard{peer_mutex_};
        h = peer_handler_;
      }
      if (!h)
        return done({503, "application/problem+json",
                     R"({"status":503,"title":"Service Unavailable","detail":"starting"})"});
      (*h)(std::move(req), std::move(done));
    };
    ops.tail = [this](const std::string& topic, tail_sink sink) {
      return ctx_.tails.add(topic, std::move(sink));
    };
    ops.partition
      = [this](const std::string& topic, std::uint32_t p) { return partition_actor_of(topic, p); };
    if (cfg_.cluster.replicated()) {
      sessions_ = std::make_shared<repl_sessions>(
        [this](const std::string& node, std::string frame) {
          return send_link(node, std::move(frame));
        },
        [this](const std::string& node, std::uint64_t round, const partition_key& p) {
          if (auto actor = partition_actor_of(p.first, p.second))
            caf::anon_send(caf::actor_cast<partition_actor>(actor), unpark_atom::value, node,
                           round);
        });
      ops.sessions = sessions_;
    }
    auto link = start_cluster(system_, cfg_, std::move(ops));
    if (!link)
      return link.error();
    cluster_ = std::move(*link);
    publish_.set_cluster(cluster_.get());
    return std::nullopt;
  }

  /// Replicated partitions reach the control plane and their leaders
  /// through these; set before the first partition actor starts.
  void set_up_replication() {
    auto hooks = std::make_shared<replication_hooks>();
    hooks->self = cfg_.node_id;
    hooks->min_insync = cfg_.cluster.min_insync;
    hooks->replica_lag = cfg_.cluster.replica_lag;
    hooks->change_in_sync = [this](const std::string& topic, std::uint32_t p, std::uint32_t epoch,
                                   std::vector<std::string> in_sync) {
      if (control_)
        control_->change_in_sync(topic, p, epoch, std::move(in_sync));
    };
    hooks->send = [this](const std::string& node, std::string frame) {
      return send_link(node, std::move(frame));
    };
    hooks->sessions = sessions_;
    ctx_.replication = std::move(hooks);
  }

  void start_control() {
    control_deps deps;
    deps.ctx = &ctx_;
    deps.cfg = &cfg_;
    deps.where = cluster_->where();
    deps.fresh = fresh_;
    deps.create_local = [this](create_ptr req) { sender_.create_topic(std::move(req)); };
    control_ = start_control_plane(std::move(deps));
    cluster_->set_leaders([c = control_.get()](const std::string& topic, std::uint32_t p) {
      return c->leader(topic, p);
    });
    publish_.set_control(control_.get());
  }

  static caf::actor_system_config& configure(caf::actor_system_config& c,
                                             const config::config& cfg) {
    if (cfg.cluster.enabled())
      configure_cluster(c, cfg);
    // The partitions and the builtin agent instances run here, on one
    // thread: a delivery or an ack is a queue push, not a wake-up of another
    // thread (a second worker measured 10% fewer acks per second: the two
    // woke each other). Nothing here waits for a disk (the sync thread does)
    // and builtin handlers must not block. Work stealing polls for ~25 ms
    // after each job, waking every 50 us; sharing sleeps on a condition
    // variable.
    c.set("scheduler.max-threads", static_cast<size_t>(1));
    c.set("scheduler.policy", caf::atom("sharing"));
    // Work sharing without a wake-up under the queue's lock (lean_sharing.hpp).
    c.module_factories.push_back([](caf::actor_system& sys) -> caf::actor_system::module* {
      return new caf::scheduler::coordinator<lean_sharing>(sys);
    });
    c.set("logger.console", caf::atom("none"));
    c.set("logger.file-verbosity", caf::atom("quiet"));
    register_messages(c);
    return c;
  }

  /// Waits until every partition actor rebuilt its state and the DLQ actor
  /// counted its entries, so ready means cursors, lag, pending and the DLQ
  /// size are what the log says (not zeros).
  [[nodiscard]] bool await_recovery(std::chrono::seconds limit) {
    auto deadline = std::chrono::steady_clock::now() + limit;
    for (;;) {
      bool all = ctx_.dlq_counted.load();
      {
        std::shared_lock<std::shared_mutex> guard{ctx_.routes.mutex};
        for (auto& [name, route] : ctx_.routes.topics)
          for (auto& slot : route->slots)
            all = all && slot->recovered.load();
      }
      if (all)
        return true;
      if (std::chrono::steady_clock::now() > deadline)
        return false;
      std::this_thread::sleep_for(std::chrono::milliseconds{2});
    }
  }

  config::config cfg_;
  node_hooks hooks_;
  std::shared_ptr<const io_latency> io_;
  std::unique_ptr<persistence::event_log> log_;
  persistence::delivery_store store_;
  node_context ctx_;
  lifecycle_flags flags_;
  caf::actor_system_config sys_cfg_;
  caf::actor_system system_;
  caf_sender sender_;
  /// Closed by shutdown before anything its jobs use is destroyed.
  query_pool pool_{2};
  publish_service publish_;
  query_service queries_;
  dlq_service dlq_;
  replay_service replays_;
  health_service health_;
  /// Set by start(), reset by shutdown() once no job or sweep uses it.
  std::unique_ptr<persistence::keyspace> keyspace_;
  /// The keyspace's own threads, not the query pool's two: its calls wait
  /// for fsyncs and must not hold up health probes and HTTP reads.
  query_pool keyspace_pool_{keyspace_threads};
  std::atomic<std::size_t> keyspace_jobs_{0}; ///< queued or running
  std::thread sweeper_;
  std::mutex sweeper_mutex_;
  std::condition_variable sweeper_wake_;
  bool sweeper_stop_ = false; ///< sweeper_mutex_
  std::unique_ptr<cluster_service> cluster_;
  std::unique_ptr<control_plane> control_;  ///< with replication only
  std::shared_ptr<repl_sessions> sessions_; ///< with replication only
  caf::actor sync_pacer_;                   ///< event_log::set_sync_pacer
  bool fresh_ = false;                      ///< the log held no topic at start-up
  std::mutex peer_mutex_;
  std::shared_ptr<peer_handler> peer_handler_;
  std::string runner_id_;
  std::mutex shutdown_mutex_;
  bool stopped_ = false;
};

} // namespace

std::string format_time(std::int64_t time_us) {
  return persistence::format_time_us(time_us);
}

void append_time(std::string& out, std::int64_t time_us) {
  persistence::append_time_us(out, time_us);
}

std::string new_uuid() {
  return persistence::new_uuid_v7(persistence::system_clock_us());
}

std::string new_trace_id() {
  return persistence::new_trace_id();
}

tl::expected<std::unique_ptr<node>, std::string> start_node(const config::config& cfg,
                                                            node_hooks hooks) {
  persistence::options opts;
  opts.path = cfg.data_dir;
  opts.fsync = cfg.storage.fsync;
  opts.fsync_interval = cfg.storage.fsync_interval;
  opts.node_id = cfg.node_id;
  auto io = std::make_shared<detail::io_latency>();
  opts.observe_io = [io](persistence::io_op op, std::chrono::nanoseconds d) { io->observe(op, d); };
  opts.file_system = hooks.file_system;
  opts.on_fault = hooks.fault;
  auto log = persistence::event_log::open(opts);
  if (!log)
    return tl::make_unexpected(log.error().message);
  auto n = std::make_unique<node_impl>(cfg, std::move(*log), io, std::move(hooks));
  if (auto err = n->start())
    return tl::make_unexpected(*err);
  return n;
}

} // namespace nerve::actors
