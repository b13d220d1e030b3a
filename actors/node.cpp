// The node: the runner actor, which recovers topics, supervises partition
// and agent-instance actors and runs retention, and the `node` facade the
// HTTP layer calls.
#include "actors/node.hpp"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <condition_variable>
#include <csignal>
#include <future>
#include <map>
#include <mutex>
#include <shared_mutex>
#include <thread>
#include <unordered_map>
#include <utility>

#include <boost/asio/post.hpp>
#include <boost/asio/thread_pool.hpp>
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include "actors/runtime.hpp"
#include "persistence/delivery_store.hpp"
#include "persistence/event_log.hpp"
#include "persistence/ids.hpp"
#include "persistence/keys.hpp"

namespace nerve::actors {

namespace {

using namespace detail;

std::uint64_t fnv1a(const std::string& s) {
  std::uint64_t h = 1469598103934665603ULL;
  for (unsigned char c : s) {
    h ^= c;
    h *= 1099511628211ULL;
  }
  return h;
}

/// Latency histograms of several partitions added up.
struct histogram_sum {
  std::uint64_t sum_us = 0;
  std::uint64_t total = 0;
  std::array<std::uint64_t, latency_bounds_ms.size()> buckets{};

  void add(const latency_histogram& h) {
    sum_us += h.sum_us;
    for (std::size_t i = 0; i < buckets.size(); ++i) {
      buckets[i] += h.buckets[i];
      total += h.buckets[i];
    }
  }

  [[nodiscard]] double mean_ms() const {
    return total == 0 ? 0 : static_cast<double>(sum_us) / 1000.0 / static_cast<double>(total);
  }

  /// The upper bound of the bucket holding quantile `q` (0 without data).
  [[nodiscard]] double quantile_ms(double q) const {
    if (total == 0)
      return 0;
    auto rank = static_cast<std::uint64_t>(std::ceil(q * static_cast<double>(total)));
    std::uint64_t seen = 0;
    for (std::size_t i = 0; i + 1 < buckets.size(); ++i) {
      seen += buckets[i];
      if (seen >= rank)
        return latency_bounds_ms[i];
    }
    return latency_bounds_ms[buckets.size() - 2]; // beyond the last finite bound
  }

  /// In seconds; the last bound stands for +Inf, so it is not listed.
  [[nodiscard]] latency_view view() const {
    latency_view v;
    for (std::size_t i = 0; i + 1 < latency_bounds_ms.size(); ++i)
      v.upper_bounds_s.push_back(latency_bounds_ms[i] / 1000.0);
    v.counts.assign(buckets.begin(), buckets.end());
    v.sum_s = static_cast<double>(sum_us) / 1e6;
    return v;
  }
};

/// Durations of the log's disk operations (persistence::options::observe_io).
struct io_latency {
  latency_histogram write;
  latency_histogram sync;

  void observe(persistence::io_op op, std::chrono::nanoseconds d) {
    auto us = std::chrono::duration_cast<std::chrono::microseconds>(d).count();
    (op == persistence::io_op::write ? write : sync).observe(us);
  }

  [[nodiscard]] static latency_view view_of(const latency_histogram& h) {
    histogram_sum s;
    s.add(h);
    return s.view();
  }
};

/// One agent's consumer group on one topic, from the live counters.
group_view group_of(const topic_route& route, const agent_runtime& agent) {
  group_view g;
  g.agent = agent.cfg.name;
  g.instances = static_cast<std::uint32_t>(agent.instances.size());
  for (std::uint32_t p = 0; p < route.slots.size(); ++p)
    for (auto& gs : route.slots[p]->groups) {
      if (gs->agent_index != agent.index)
        continue;
      group_view::part part;
      part.partition = p;
      part.cursor = gs->cursor.load();
      part.end = std::max(gs->end.load(), part.cursor);
      part.in_flight = gs->in_flight.load();
      part.waiting_retry = gs->waiting_retry.load();
      part.redelivering = gs->redelivering.load();
      if (auto last = gs->last_delivered.load(); last >= 0) {
        part.last_delivered = static_cast<std::uint64_t>(last);
        g.last_delivered_offset
          = std::max<std::uint64_t>(g.last_delivered_offset.value_or(0), *part.last_delivered);
      }
      g.pending += part.in_flight + part.waiting_retry + part.redelivering;
      g.lag += part.end - part.cursor;
      g.partitions.push_back(part);
    }
  return g;
}

// -- runner actor -------------------------------------------------------------

/// What a monitored child of the runner is.
struct child_ref {
  std::shared_ptr<topic_route> route; ///< a partition, or
  std::uint32_t partition = 0;
  agent_ptr agent; ///< an agent instance, or
  std::size_t instance = 0;
  std::string replay; ///< a replay's id
};

struct runner_state {
  node_context* ctx = nullptr;
  std::unordered_map<caf::actor_addr, child_ref> children;
  bool stopping = false;
  std::unordered_map<std::string, std::uint32_t> replay_crashes;
  static inline const char* name = "runner";
};

using runner_actor_t = caf::stateful_actor<runner_state>;

void start_partition(runner_actor_t* self, const std::shared_ptr<topic_route>& route,
                     std::uint32_t p) {
  auto& st = self->state;
  auto a = spawn_partition(self, st.ctx, route, p);
  st.children[a.address()] = child_ref{route, p, nullptr, 0, {}};
  {
    std::unique_lock<std::shared_mutex> guard{st.ctx->routes.mutex};
    route->slots[p]->actor = a;
  }
  route->slots[p]->alive = true;
}

void start_instance(runner_actor_t* self, const agent_ptr& agent, std::size_t i) {
  auto& st = self->state;
  auto a = spawn_instance(self, st.ctx, agent, i);
  st.children[a.address()] = child_ref{nullptr, 0, agent, i, {}};
  std::lock_guard<std::mutex> guard{agent->mutex};
  agent->instances[i]->actor = a;
}

void start_replay(runner_actor_t* self, const std::string& id) {
  auto& st = self->state;
  auto a = spawn_replay(self, st.ctx, id);
  child_ref ref;
  ref.replay = id;
  st.children[a.address()] = ref;
  std::lock_guard<std::mutex> guard{st.ctx->replays_mutex};
  st.ctx->replays[id] = a;
}

/// The stored record of a replay whose state is running, if it is.
std::optional<nlohmann::json> running_replay(const node_context& ctx, const std::string& id) {
  auto stored = ctx.store->meta(replay_key(id));
  if (!stored || !*stored)
    return std::nullopt;
  auto record = nlohmann::json::parse(**stored, nullptr, false);
  if (!record.is_object() || record.value("state", "") != "running")
    return std::nullopt;
  return record;
}

/// A replay actor ended: done, cancelled, stopped with the node, or crashed.
void on_replay_down(runner_actor_t* self, const std::string& id, const caf::error& reason) {
  auto& st = self->state;
  {
    std::lock_guard<std::mutex> guard{st.ctx->replays_mutex};
    st.ctx->replays.erase(id);
  }
  if (st.stopping || !reason)
    return;
  auto running = running_replay(*st.ctx, id);
  if (!running)
    return;
  auto& record = *running;
  auto n = ++st.replay_crashes[id];
  if (n > 5) {
    record["state"] = "failed";
    record["error"]
      = "the replay actor crashed " + std::to_string(n) + " times; last: " + caf::to_string(reason);
    record["finished_us"] = st.ctx->log->opts().clock();
    persistence::state_batch b;
    b.put_meta(replay_key(id), record.dump());
    (void)st.ctx->store->commit(b, true);
    spdlog::error("replay={}: failed: {}", id, record.value("error", ""));
    return;
  }
  spdlog::warn("replay={}: stopped ({}); resuming from its progress in 1 s", id,
               caf::to_string(reason));
  self->delayed_send(self, std::chrono::seconds{1}, replay_atom::value, id);
}

/// Cancels a replay: through its actor if it runs, else (it waits to resume
/// after a crash) in its stored record, which keeps it from resuming. Only
/// the runner starts replay actors, so no actor can start in between.
void cancel_replay(runner_actor_t* self, const std::string& id, reply_ptr& reply) {
  auto& st = self->state;
  {
    std::lock_guard<std::mutex> guard{st.ctx->replays_mutex};
    if (auto it = st.ctx->replays.find(id); it != st.ctx->replays.end()) {
      self->send(it->second, cancel_atom::value, std::move(reply));
      return;
    }
  }
  if (auto record = running_replay(*st.ctx, id)) {
    (*record)["state"] = "cancelled";
    (*record)["finished_us"] = st.ctx->log->opts().clock();
    persistence::state_batch b;
    b.put_meta(replay_key(id), record->dump());
    if (auto ok = st.ctx->store->commit(b, true); !ok)
      spdlog::error("replay={}: storing the cancel: {}", id, ok.error().message);
    else
      spdlog::info("replay={}: cancelled while waiting to resume", id);
  }
  (*reply)({});
}

/// Starts the actors of the replays that were running when the node stopped.
void resume_replays(runner_actor_t* self) {
  auto stored = self->state.ctx->store->meta_prefix("replay/");
  if (!stored) {
    spdlog::error("reading replays: {}", stored.error().message);
    return;
  }
  for (auto& [key, value] : *stored) {
    auto record = nlohmann::json::parse(value, nullptr, false);
    if (record.is_object() && record.value("state", "") == "running")
      start_replay(self, record.value("id", ""));
  }
}

std::shared_ptr<topic_route> open_topic(runner_actor_t* self, const persistence::topic_info& t) {
  auto& ctx = *self->state.ctx;
  auto route = std::make_shared<topic_route>();
  route->info = t;
  for (std::uint32_t p = 0; p < t.partitions; ++p) {
    auto slot = std::make_unique<partition_slot>();
    for (auto& agent : ctx.agents)
      if (agent->subscribes(t.name)) {
        auto gs = std::make_unique<group_stats>();
        gs->agent = agent->cfg.name;
        gs->agent_index = agent->index;
        slot->groups.push_back(std::move(gs));
      }
    route->slots.push_back(std::move(slot));
  }
  // Publishers see the topic only once every partition has its actor.
  for (std::uint32_t p = 0; p < t.partitions; ++p)
    start_partition(self, route, p);
  {
    std::unique_lock<std::shared_mutex> guard{ctx.routes.mutex};
    ctx.routes.topics[t.name] = route;
  }
  return route;
}

/// How often a log that refuses writes is asked to recover.
constexpr auto storage_resume_every = std::chrono::seconds{1};

void schedule_sweep(runner_actor_t* self) {
  auto retention = self->state.ctx->cfg->storage.retention;
  if (retention.count() == 0)
    return;
  auto every = std::min<std::chrono::milliseconds>(retention / 10, std::chrono::seconds{60});
  self->delayed_send(self, std::max(every, std::chrono::milliseconds{100}), sweep_atom::value);
}

/// Backoff for restarting a crashed child: at once the first time, then
/// doubling from 100 ms to 5 s while it keeps crashing within a minute.
template <class Slot>
std::chrono::milliseconds restart_delay(Slot& slot) {
  auto now = std::chrono::steady_clock::now();
  if (now - slot.last_crash > std::chrono::minutes{1})
    slot.restarts = 0;
  slot.last_crash = now;
  std::uint32_t n = slot.restarts;
  ++slot.restarts;
  if (n == 0)
    return std::chrono::milliseconds{0};
  return std::min<std::chrono::milliseconds>(
    std::chrono::milliseconds{100LL << std::min(n - 1, 6u)}, std::chrono::seconds{5});
}

void on_child_down(runner_actor_t* self, caf::down_msg& msg) {
  auto& st = self->state;
  auto it = st.children.find(msg.source);
  if (it == st.children.end())
    return;
  auto ref = it->second;
  st.children.erase(it);
  if (ref.route)
    ref.route->slots[ref.partition]->alive = false;
  if (!ref.replay.empty())
    on_replay_down(self, ref.replay, msg.reason);
  if (st.stopping) {
    if (st.children.empty())
      self->quit();
    return;
  }
  if (!ref.replay.empty())
    return;
  if (ref.route) {
    auto& slot = *ref.route->slots[ref.partition];
    auto delay = restart_delay(slot);
    spdlog::warn("topic={} partition={}: stopped ({}); restarting in {} ms", ref.route->info.name,
                 ref.partition, caf::to_string(msg.reason), delay.count());
    if (delay.count() == 0)
      start_partition(self, ref.route, ref.partition);
    else
      self->delayed_send(self, delay, restart_atom::value, ref.route->info.name, ref.partition);
    return;
  }
  // An agent instance died: its deliveries in flight go out again.
  auto& slot = *ref.agent->instances[ref.instance];
  slot.state = instance_state::crashed;
  slot.in_flight = 0;
  ++slot.restarts;
  {
    std::shared_lock<std::shared_mutex> guard{st.ctx->routes.mutex};
    for (auto& [name, route] : st.ctx->routes.topics)
      for (auto& ps : route->slots)
        if (ps->alive)
          self->send(ps->actor, requeue_atom::value, static_cast<std::uint64_t>(ref.agent->index),
                     static_cast<std::uint64_t>(ref.instance));
  }
  std::chrono::milliseconds delay{200};
  spdlog::warn("agent={} instance={}: stopped ({}); restarting in {} ms", ref.agent->cfg.name,
               ref.instance, caf::to_string(msg.reason), delay.count());
  self->delayed_send(self, delay, restart_atom::value, ref.agent->cfg.name,
                     static_cast<std::uint32_t>(ref.instance));
}

caf::behavior runner_actor(runner_actor_t* self, node_context* ctx) {
  auto& st = self->state;
  st.ctx = ctx;
  for (auto& agent : ctx->agents)
    for (std::size_t i = 0; i < agent->instances.size(); ++i)
      start_instance(self, agent, i);
  for (auto& t : ctx->log->topics())
    open_topic(self, t);
  schedule_sweep(self);
  self->delayed_send(self, storage_resume_every, resume_atom::value);
  resume_replays(self);
  self->set_down_handler([=](caf::down_msg& msg) { on_child_down(self, msg); });
  return {
    [=](ready_atom) { return true; },
    [=](create_atom, create_ptr& req) {
      auto& st = self->state;
      if (st.stopping) {
        req->done("the node is shutting down");
        return;
      }
      if (st.ctx->routes.find(req->topic) == nullptr) {
        auto created
          = st.ctx->log->create_topic(req->topic, st.ctx->cfg->partitions_for(req->topic));
        if (!created) {
          req->done(created.error().message);
          return;
        }
        open_topic(self, *created);
        spdlog::info("topic={}: created with {} partitions", created->name, created->partitions);
      }
      req->done(std::nullopt);
    },
    [=](restart_atom, const std::string& name, std::uint32_t index) {
      auto& st = self->state;
      if (st.stopping)
        return;
      if (auto route = st.ctx->routes.find(name); route && !route->slots[index]->alive) {
        start_partition(self, route, index);
        return;
      }
      for (auto& agent : st.ctx->agents)
        if (agent->cfg.name == name && index < agent->instances.size())
          start_instance(self, agent, index);
    },
    [=](replay_atom, const std::string& id) {
      // Not one cancelled while it waited to resume.
      if (!self->state.stopping && running_replay(*self->state.ctx, id))
        start_replay(self, id);
    },
    [=](cancel_atom, const std::string& id, reply_ptr& reply) { cancel_replay(self, id, reply); },
    [=](resume_atom) {
      // A log that refused a write (a full disk) takes writes again once
      // RocksDB can flush: partitions that stopped meanwhile are restarted
      // by their supervision and rebuild from the log.
      auto& st = self->state;
      if (st.stopping)
        return;
      st.ctx->log->resume(); // nothing to do while it takes writes
      self->delayed_send(self, storage_resume_every, resume_atom::value);
    },
    [=](sweep_atom) {
      auto& st = self->state;
      if (st.stopping)
        return;
      auto cutoff = st.ctx->log->opts().clock() - st.ctx->cfg->storage.retention.count() * 1000;
      constexpr std::size_t chunk = 10000;
      auto n = st.ctx->log->sweep_before(cutoff, chunk);
      if (!n)
        spdlog::error("retention: {}", n.error().message);
      else if (*n > 0)
        spdlog::info("retention removed {} events older than {}", *n,
                     persistence::format_time_us(cutoff));
      if (n && *n == chunk)
        self->send(self, sweep_atom::value);
      else
        schedule_sweep(self);
    },
    [=](stop_atom) {
      auto& st = self->state;
      st.stopping = true;
      if (st.children.empty()) {
        self->quit();
        return;
      }
      // Partitions first: each commits what its mailbox holds. Agents stop
      // after, so a late answer still finds its partition (or is redelivered).
      {
        std::shared_lock<std::shared_mutex> guard{st.ctx->routes.mutex};
        for (auto& [name, route] : st.ctx->routes.topics)
          for (auto& slot : route->slots)
            if (slot->alive)
              self->send(slot->actor, stop_atom::value);
      }
      {
        std::lock_guard<std::mutex> guard{st.ctx->replays_mutex};
        for (auto& [id, actor] : st.ctx->replays)
          self->send(actor, stop_atom::value);
      }
      for (auto& agent : st.ctx->agents) {
        std::lock_guard<std::mutex> guard{agent->mutex};
        for (auto& inst : agent->instances)
          if (inst->actor)
            self->send(inst->actor, stop_atom::value);
      }
    },
  };
}

// -- the node facade ----------------------------------------------------------

error from_storage(const persistence::error& e) {
  return {errc::storage, e.message};
}

/// Joins the per-partition answers of one publish request.
struct publish_join {
  std::vector<published> out;
  std::atomic<std::size_t> remaining{0};
  std::mutex mutex;
  std::optional<error> failure;
  callback<std::vector<published>> done;

  void fail(error e) {
    std::lock_guard<std::mutex> guard{mutex};
    // A conflict says more than a storage error about what the caller did.
    if (!failure || e.code == errc::conflict)
      failure = std::move(e);
  }

  void arrive() {
    if (remaining.fetch_sub(1, std::memory_order_acq_rel) != 1)
      return;
    if (failure)
      done(tl::make_unexpected(*failure));
    else
      done(std::move(out));
  }
};

/// Read-ahead for history cursors. A reader pages through a history one
/// cursor at a time, so while it takes in one page the next one is built on
/// another core. A page built ahead is served for at most a second (delivery
/// state moves on), and only a few, of bounded size, are held at once.
class history_readahead {
public:
  static constexpr std::size_t max_slots = 16;
  static constexpr std::size_t max_page_bytes = 8U << 20;
  static constexpr std::chrono::seconds max_age{1};

  /// The page for `key` if it is built or being built: answers true, and
  /// `page` holds it, or `done` is kept to be called by `finish`.
  bool take(const std::string& key, std::optional<result<history_page>>& page,
            callback<history_page>& done) {
    std::lock_guard<std::mutex> guard{mutex_};
    auto it = slots_.find(key);
    if (it == slots_.end())
      return false;
    auto& s = it->second;
    if (!s.page) {
      if (s.waiter)
        return false; // a second reader of the same cursor builds its own
      s.waiter = std::move(done);
      return true;
    }
    bool fresh = std::chrono::steady_clock::now() - s.built < max_age;
    if (fresh)
      page = std::move(s.page);
    slots_.erase(it);
    return fresh;
  }

  /// Claims `key` for building ahead; false when it is claimed already or
  /// there is no room.
  bool start(const std::string& key) {
    std::lock_guard<std::mutex> guard{mutex_};
    auto now = std::chrono::steady_clock::now();
    for (auto it = slots_.begin(); it != slots_.end();)
      it = it->second.page && now - it->second.built >= max_age ? slots_.erase(it) : std::next(it);
    if (slots_.size() >= max_slots || slots_.count(key) > 0)
      return false;
    slots_[key];
    return true;
  }

  /// Hands a page built ahead to the reader waiting for it (returned) or
  /// keeps it for the reader to come.
  callback<history_page> finish(const std::string& key, result<history_page>& page) {
    std::lock_guard<std::mutex> guard{mutex_};
    auto it = slots_.find(key);
    if (it == slots_.end())
      return nullptr;
    if (it->second.waiter) {
      auto w = std::move(it->second.waiter);
      slots_.erase(it);
      return w;
    }
    if (page && page->entries_json.size() > max_page_bytes) {
      slots_.erase(it);
      return nullptr;
    }
    it->second.page = std::move(page);
    it->second.built = std::chrono::steady_clock::now();
    return nullptr;
  }

private:
  struct slot {
    std::optional<result<history_page>> page;
    callback<history_page> waiter;
    std::chrono::steady_clock::time_point built;
  };
  std::mutex mutex_;
  std::map<std::string, slot> slots_;
};

class node_impl final : public node {
public:
  node_impl(const config::config& cfg, std::unique_ptr<persistence::event_log> log,
            std::shared_ptr<const io_latency> io, node_hooks hooks)
    : cfg_(cfg), hooks_(std::move(hooks)), io_(std::move(io)), log_(std::move(log)), store_(*log_),
      system_(configure(sys_cfg_)) {
    runner_id_ = persistence::new_uuid_v7(persistence::system_clock_us());
    ctx_.log = log_.get();
    ctx_.store = &store_;
    ctx_.cfg = &cfg_;
    ctx_.hooks = &hooks_;
    for (std::size_t i = 0; i < cfg_.agents.size(); ++i) {
      auto a = std::make_shared<agent_runtime>();
      a->cfg = cfg_.agents[i];
      a->index = i;
      for (std::uint32_t k = 0; k < a->cfg.instances; ++k)
        a->instances.push_back(std::make_unique<instance_slot>());
      ctx_.agents.push_back(std::move(a));
    }
    ctx_.publish = [this](const std::string& topic, std::vector<publish_item> items,
                          callback<std::vector<published>> done) {
      publish_impl(topic, std::move(items), std::move(done), true);
    };
  }

  ~node_impl() override { shutdown(); }

  [[nodiscard]] std::optional<std::string> start() {
    std::signal(SIGPIPE, SIG_IGN); // a dead agent process must not kill nerve
    auto dlq = store_.dlq_count();
    if (!dlq)
      return "counting the DLQ: " + dlq.error().message;
    ctx_.dlq_size = static_cast<std::int64_t>(*dlq);
    runner_ = system_.spawn<caf::detached>(runner_actor, &ctx_);
    caf::scoped_actor self{system_};
    std::optional<std::string> err;
    self->request(runner_, std::chrono::seconds{60}, ready_atom::value)
      .receive([](bool) {}, [&](caf::error& e) { err = "recovery failed: " + system_.render(e); });
    if (!err && !await_recovery(std::chrono::seconds{60}))
      err = "recovery failed: partitions did not rebuild their state within 60 s";
    if (!err)
      ready_.store(true);
    return err;
  }

  void publish(const std::string& topic, std::vector<publish_item> items,
               callback<std::vector<published>> done) override {
    if (items.size() > cfg_.storage.max_queued_events)
      return done(tl::make_unexpected(
        error{errc::invalid, std::to_string(items.size())
                               + " events exceed what one partition "
                                 "queues (storage.max_queued_events = "
                               + std::to_string(cfg_.storage.max_queued_events) + ")"}));
    bool explicit_ids = std::any_of(items.begin(), items.end(),
                                    [](const publish_item& i) { return !i.id.empty(); });
    // An id used on another topic refuses the whole request before anything
    // is appended (or a topic is created for it).
    if (explicit_ids && (items.size() > 1 || !ctx_.routes.find(topic)))
      return precheck_then_publish(topic, std::move(items), std::move(done));
    publish_impl(topic, std::move(items), std::move(done), true);
  }

  void topics(callback<std::vector<topic_view>> done) override {
    run_async([this, done = std::move(done)] {
      std::vector<topic_view> out;
      for (auto& t : log_->topics()) {
        topic_view v{t.name, t.partitions, {}};
        for (std::uint32_t p = 0; p < t.partitions; ++p) {
          auto s = log_->stats(t, p);
          v.partition_stats.push_back({p, s.first_offset, s.next_offset, s.bytes});
        }
        out.push_back(std::move(v));
      }
      done(std::move(out));
    });
  }

  void read_events(const std::string& topic, std::optional<std::uint32_t> partition,
                   std::uint64_t from_offset, std::size_t limit,
                   callback<events_page> done) override {
    run_async([this, topic, partition, from_offset, limit, done = std::move(done)] {
      auto t = log_->find_topic(topic);
      if (!t)
        return done(
          tl::make_unexpected(error{errc::not_found, "topic " + topic + " does not exist"}));
      if (partition && *partition >= t->partitions)
        return done(tl::make_unexpected(error{
          errc::invalid, "partition " + std::to_string(*partition) + " does not exist; " + topic
                           + " has partitions 0 to " + std::to_string(t->partitions - 1)}));
      events_page page;
      if (partition)
        page.next_offset = from_offset;
      std::uint32_t first = partition ? *partition : 0;
      std::uint32_t last = partition ? *partition : t->partitions - 1;
      for (auto p = first; p <= last && page.events.size() < limit; ++p) {
        auto got = log_->read(*t, p, from_offset, limit - page.events.size());
        if (!got)
          return done(tl::make_unexpected(from_storage(got.error())));
        for (auto& e : *got)
          page.events.push_back(std::move(e));
        if (partition)
          page.next_offset = from_offset + got->size();
      }
      if (partition && !page.events.empty()) {
        // Offsets may skip past events removed by retention: continue after
        // the last one returned.
        auto& last_event = page.events.back();
        auto pos = last_event.find("\"offset\":");
        if (pos != std::string::npos)
          page.next_offset = std::stoull(last_event.substr(pos + 9)) + 1;
      }
      done(std::move(page));
    });
  }

  void get_event(const std::string& id, callback<event_view> done) override {
    run_async([this, id, done = std::move(done)] {
      auto got = log_->get_by_id(id);
      if (!got)
        return done(tl::make_unexpected(from_storage(got.error())));
      if (!*got)
        return done(tl::make_unexpected(error{errc::not_found, "no event with id " + id}));
      event_view v;
      v.event = std::move(**got);
      auto e = nlohmann::json::parse(v.event, nullptr, false);
      auto topic = e.value("topic", "");
      auto t = log_->find_topic(topic);
      if (!t)
        return done(std::move(v));
      auto p = e.value("partition", 0U);
      auto offset = e.value("offset", 0ULL);
      for (auto& agent : ctx_.agents) {
        if (!agent->subscribes(topic))
          continue;
        delivery_view d;
        d.agent = agent->cfg.name;
        auto& f = agent->cfg.filter;
        if ((f.type && *f.type != e.value("type", ""))
            || (f.source && *f.source != e.value("source", ""))
            || (f.key && *f.key != e.value("key", ""))) {
          d.state = "skipped";
          v.deliveries.push_back(std::move(d));
          continue;
        }
        auto start = group_start(ctx_, d.agent, t->id, p);
        if (start && *start && offset < **start)
          continue; // appended before the agent subscribed: never its to handle
        auto cursor = store_.cursor(d.agent, t->id, p);
        if (!start || !cursor)
          return done(tl::make_unexpected(error{errc::storage, "reading delivery state"}));
        bool ok = true;
        d = live_delivery_state(ctx_, *agent, t->id, p, offset, id, *cursor, ok);
        if (!ok)
          return done(tl::make_unexpected(error{errc::storage, "reading delivery state"}));
        v.deliveries.push_back(std::move(d));
      }
      done(std::move(v));
    });
  }

  std::vector<agent_view> agents() const override {
    std::vector<agent_view> out;
    for (auto& a : ctx_.agents)
      out.push_back(view_of(*a));
    return out;
  }

  void set_paused(const std::string& name, bool paused, callback<agent_view> done) override {
    auto agent = find_agent(name);
    if (!agent)
      return done(tl::make_unexpected(error{errc::not_found, "no agent named " + name}));
    agent->paused = paused;
    spdlog::info("agent={}: {}", name, paused ? "paused" : "resumed");
    if (!paused) {
      std::shared_lock<std::shared_mutex> guard{ctx_.routes.mutex};
      for (auto& [topic, route] : ctx_.routes.topics)
        if (agent->subscribes(topic))
          for (auto& slot : route->slots)
            if (slot->actor)
              caf::anon_send(slot->actor, wake_atom::value);
    }
    done(view_of(*agent));
  }

  std::vector<metrics_row> metrics(const std::string& topic,
                                   const std::string& agent) const override {
    std::vector<metrics_row> out;
    std::shared_lock<std::shared_mutex> guard{ctx_.routes.mutex};
    std::vector<std::string> names;
    for (auto& [name, route] : ctx_.routes.topics)
      names.push_back(name);
    std::sort(names.begin(), names.end());
    for (auto& name : names) {
      if (!topic.empty() && name != topic)
        continue;
      auto& route = ctx_.routes.topics.at(name);
      for (auto& a : ctx_.agents) {
        if ((!agent.empty() && a->cfg.name != agent) || !a->subscribes(name))
          continue;
        metrics_row m;
        m.agent = a->cfg.name;
        m.topic = name;
        histogram_sum processing;
        histogram_sum delivery;
        for (auto& slot : route->slots)
          for (auto& gs : slot->groups) {
            if (gs->agent_index != a->index)
              continue;
            auto& c = gs->totals;
            m.received += c.received;
            m.processed += c.processed;
            m.failed += c.failed;
            m.timed_out += c.timed_out;
            m.retried += c.retried;
            m.dead_lettered += c.dead_lettered;
            processing.add(c.processing);
            delivery.add(c.delivery);
          }
        m.processing = processing.view();
        m.avg_ms = processing.mean_ms();
        m.p50_ms = processing.quantile_ms(0.50);
        m.p99_ms = processing.quantile_ms(0.99);
        m.delivery_p50_ms = delivery.quantile_ms(0.50);
        m.delivery_p99_ms = delivery.quantile_ms(0.99);
        if (m.received > 0)
          m.success_rate
            = 100.0 * static_cast<double>(m.processed) / static_cast<double>(m.received);
        out.push_back(std::move(m));
      }
    }
    return out;
  }

  void groups(const std::string& topic, callback<std::vector<group_view>> done) override {
    auto route = ctx_.routes.find(topic);
    if (!route)
      return done(
        tl::make_unexpected(error{errc::not_found, "topic " + topic + " does not exist"}));
    std::vector<group_view> out;
    for (auto& agent : ctx_.agents)
      if (agent->subscribes(topic))
        out.push_back(group_of(*route, *agent));
    done(std::move(out));
  }

  void dlq_list(const std::string& agent, const std::string& topic, const std::string& cursor,
                std::size_t limit, callback<dlq_page> done) override {
    run_async([this, agent, topic, cursor, limit, done = std::move(done)] {
      auto all = store_.dlq_list(agent, topic, "", ~std::size_t{0});
      if (!all)
        return done(tl::make_unexpected(from_storage(all.error())));
      dlq_page page;
      page.count = all->size();
      for (auto& e : *all) {
        if (!cursor.empty() && e.id <= cursor)
          continue;
        if (page.entries.size() >= limit) {
          if (!page.entries.empty())
            page.next_cursor = page.entries.back().id;
          break;
        }
        page.entries.push_back(view_of(e));
      }
      done(std::move(page));
    });
  }

  void dlq_get(const std::string& id, callback<dlq_view> done) override {
    run_async([this, id, done = std::move(done)] {
      if (auto e = load_dlq(id, done))
        done(view_of(*e));
    });
  }

  void dlq_retry(const std::string& id, callback<dlq_view> done) override {
    run_async([this, id, done = std::move(done)] {
      auto e = load_dlq(id, done);
      if (!e)
        return;
      retry_entry(*e, [done, v = view_of(*e)](const std::string& err) {
        if (!err.empty())
          return done(tl::make_unexpected(error{errc::unavailable, err}));
        done(v);
      });
    });
  }

  void dlq_retry_all(const std::string& agent, const std::string& topic,
                     callback<std::uint64_t> done) override {
    run_async([this, agent, topic, done = std::move(done)] {
      auto all = store_.dlq_list(agent, topic, "", ~std::size_t{0});
      if (!all)
        return done(tl::make_unexpected(from_storage(all.error())));
      struct join {
        std::atomic<std::size_t> left{0};
        std::atomic<std::uint64_t> ok{0};
      };
      auto j = std::make_shared<join>();
      j->left = all->size() + 1;
      auto finish = [j, done] {
        if (j->left.fetch_sub(1) == 1)
          done(j->ok.load());
      };
      for (auto& e : *all)
        retry_entry(e, [j, finish](const std::string& err) {
          if (err.empty())
            ++j->ok;
          finish();
        });
      finish();
    });
  }

  void dlq_delete(const std::string& id, callback<dlq_view> done) override {
    run_async([this, id, done = std::move(done)] {
      auto e = load_dlq(id, done);
      if (!e)
        return;
      persistence::state_batch b;
      b.delete_dlq(id);
      if (auto ok = store_.commit(b, cfg_.storage.fsync == config::fsync_policy::always); !ok)
        return done(tl::make_unexpected(from_storage(ok.error())));
      --ctx_.dlq_size;
      done(view_of(*e));
    });
  }

  void dlq_purge(const std::string& agent, callback<std::uint64_t> done) override {
    run_async([this, agent, done = std::move(done)] {
      auto all = store_.dlq_list(agent, "", "", ~std::size_t{0});
      if (!all)
        return done(tl::make_unexpected(from_storage(all.error())));
      persistence::state_batch b;
      for (auto& e : *all)
        b.delete_dlq(e.id);
      if (auto ok = store_.commit(b, cfg_.storage.fsync == config::fsync_policy::always); !ok)
        return done(tl::make_unexpected(from_storage(ok.error())));
      ctx_.dlq_size -= static_cast<std::int64_t>(all->size());
      done(static_cast<std::uint64_t>(all->size()));
    });
  }

  tail_handle tail(const std::string& topic, tail_sink sink) override {
    return ctx_.tails.add(topic, std::move(sink));
  }

  void replay_create(replay_request req, callback<replay_view> done) override {
    for (auto& name : req.agents)
      if (!find_agent(name))
        return done(tl::make_unexpected(error{errc::not_found, "no agent named " + name}));
    system_.spawn<caf::detached>([this, req = std::move(req), done = std::move(done)] {
      auto now = log_->opts().clock();
      auto id = persistence::new_uuid_v7(now);
      auto record = plan_replay(ctx_, req, id, now);
      if (!record)
        return done(tl::make_unexpected(record.error()));
      persistence::state_batch b;
      b.put_meta(replay_key(id), record->dump());
      if (auto ok = store_.commit(b, true); !ok)
        return done(tl::make_unexpected(from_storage(ok.error())));
      auto view = replay_view_of(*record);
      spdlog::info("replay={}: planned ({}): {} deliveries", id, view.mode, view.events_total);
      if (view.state == "running" && runner_)
        caf::anon_send(runner_, replay_atom::value, id);
      done(std::move(view));
    });
  }

  void replay_get(const std::string& id, callback<replay_view> done) override {
    run_async([this, id, done = std::move(done)] {
      auto record = load_replay(id);
      if (!record)
        return done(tl::make_unexpected(record.error()));
      done(replay_view_of(*record));
    });
  }

  void replay_list(callback<std::vector<replay_view>> done) override {
    run_async([this, done = std::move(done)] {
      auto stored = store_.meta_prefix("replay/");
      if (!stored)
        return done(tl::make_unexpected(from_storage(stored.error())));
      std::vector<replay_view> out;
      for (auto& [key, value] : *stored) {
        auto record = nlohmann::json::parse(value, nullptr, false);
        if (record.is_object())
          out.push_back(replay_view_of(record));
      }
      done(std::move(out));
    });
  }

  void replay_history(const std::string& id, const std::string& agent, const std::string& cursor,
                      std::size_t limit, callback<history_page> done) override {
    std::optional<result<history_page>> ahead;
    if (readahead_.take(history_key(id, agent, cursor, limit), ahead, done)) {
      if (ahead)
        serve_history(id, agent, limit, std::move(*ahead), done);
      return;
    }
    run_async([this, id, agent, cursor, limit, done = std::move(done)]() mutable {
      serve_history(id, agent, limit, build_history(id, agent, cursor, limit), done);
    });
  }

  void replay_cancel(const std::string& id, callback<replay_view> done) override {
    if (!runner_)
      return replay_get(id, std::move(done)); // not running: nothing to stop
    // The runner cancels it (see cancel_replay). Answered with the replay's
    // view once it is stopped, or when a message is dropped because the
    // replay ended first.
    struct answer_once {
      std::function<void()> fn;
      void operator()() { std::exchange(fn, nullptr)(); }
      ~answer_once() {
        if (fn)
          fn();
      }
    };
    auto once = std::make_shared<answer_once>();
    once->fn = [this, id, done = std::move(done)] { replay_get(id, done); };
    auto reply = std::make_shared<std::function<void(std::string)>>(
      [once](const std::string&) { (*once)(); });
    caf::anon_send(runner_, cancel_atom::value, id, std::move(reply));
  }

  void health(callback<health_report> done) override {
    run_async([this, done = std::move(done)] {
      health_report r;
      auto probe = probe_storage();
      r.storage_ok = probe.ok;
      r.storage_latency_ms = probe.latency_ms;
      r.storage_error = probe.error;
      // A log that refuses writes (a failed write, e.g. a full disk) takes no
      // event: the bus is down with the storage until it takes writes again.
      r.bus_ok = true;
      if (draining_.load()) {
        r.bus_ok = false;
        r.bus_error = "the node is shutting down";
      } else if (!log_->writable()) {
        r.bus_ok = false;
        r.bus_error = log_->refusal();
      }
      r.dlq_size = static_cast<std::uint64_t>(std::max<std::int64_t>(0, ctx_.dlq_size.load()));
      for (auto& agent : ctx_.agents)
        for (auto& inst : agent->instances)
          switch (inst->state.load()) {
            case instance_state::running:
              ++r.agents_running;
              break;
            case instance_state::restarting:
              ++r.agents_restarting;
              break;
            case instance_state::crashed:
              ++r.agents_crashed;
              break;
            case instance_state::starting:
            case instance_state::stopped:
              break;
          }
      std::shared_lock<std::shared_mutex> guard{ctx_.routes.mutex};
      for (auto& [name, route] : ctx_.routes.topics)
        for (auto& slot : route->slots) {
          ++r.partitions;
          r.pending_publishes += slot->queued.load(std::memory_order_relaxed);
          if (!slot->alive.load() && r.bus_ok) {
            r.bus_ok = false;
            r.bus_error = "a partition actor of topic " + name + " is down";
          }
        }
      done(std::move(r));
    });
  }

  void storage(callback<storage_report> done) override {
    run_async([this, done = std::move(done)] {
      storage_report r;
      r.path = cfg_.data_dir;
      r.disk_bytes = log_->disk_bytes();
      auto probe = probe_storage();
      r.ok = probe.ok;
      r.write_latency_ms = probe.latency_ms;
      r.last_error = probe.ok ? log_->last_error() : probe.error;
      r.fsync = config::to_string(cfg_.storage.fsync);
      done(std::move(r));
    });
  }

  metrics_snapshot scrape() const override {
    metrics_snapshot s;
    s.deliveries = metrics("", "");
    s.dlq_entries = static_cast<std::uint64_t>(std::max<std::int64_t>(0, ctx_.dlq_size.load()));
    s.storage_write = io_latency::view_of(io_->write);
    s.storage_sync = io_latency::view_of(io_->sync);
    for (auto& agent : ctx_.agents) {
      metrics_snapshot::agent_row a{agent->cfg.name, 0};
      for (auto& inst : agent->instances)
        a.restarts += inst->restarts.load();
      s.agents.push_back(std::move(a));
    }
    std::shared_lock<std::shared_mutex> guard{ctx_.routes.mutex};
    for (auto& [name, route] : ctx_.routes.topics) {
      metrics_snapshot::topic_row t{name, 0};
      for (auto& slot : route->slots)
        t.published += slot->durable_end.load();
      s.topics.push_back(std::move(t));
      for (auto& agent : ctx_.agents)
        if (agent->subscribes(name)) {
          auto g = group_of(*route, *agent);
          s.groups.push_back({g.agent, name, g.pending, g.lag});
        }
    }
    return s;
  }

  bool healthy_now() const override { return log_ && log_->healthy(); }

  bool ready() const override { return ready_.load() && !draining_.load(); }

  std::string node_id() const override { return log_->node_id(); }

  std::string runner_id() const override { return runner_id_; }

  void shutdown() override {
    std::lock_guard<std::mutex> guard{shutdown_mutex_};
    if (stopped_)
      return;
    draining_.store(true);
    // Queries in progress finish and answer while the HTTP server is still
    // there to send the answers; none starts after this.
    {
      std::lock_guard<std::mutex> guard{queries_mutex_};
      queries_closed_ = true;
    }
    queries_.join();
    if (runner_) {
      caf::scoped_actor self{system_};
      self->monitor(runner_);
      self->send(runner_, stop_atom::value);
      self->receive([](const caf::down_msg&) {});
      runner_ = nullptr;
    }
    // Detached actors end only when no handle to them is left.
    {
      std::unique_lock<std::shared_mutex> guard{ctx_.routes.mutex};
      for (auto& [name, route] : ctx_.routes.topics)
        for (auto& slot : route->slots)
          slot->actor = nullptr;
    }
    for (auto& agent : ctx_.agents) {
      std::lock_guard<std::mutex> guard{agent->mutex};
      agent->waiters.clear();
      for (auto& inst : agent->instances)
        inst->actor = nullptr;
    }
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
  static caf::actor_system_config& configure(caf::actor_system_config& c) {
    // The partitions and the builtin agent instances run here, on one
    // thread: a delivery or an ack is a queue push, not a wake-up of another
    // thread (a second worker measured 10% fewer acks per second: the two
    // woke each other). Nothing here waits for a disk (the sync thread does)
    // and builtin handlers must not block. Work stealing polls for ~25 ms
    // after each job, waking every 50 us; sharing sleeps on a condition
    // variable.
    c.set("scheduler.max-threads", static_cast<size_t>(1));
    c.set("scheduler.policy", caf::atom("sharing"));
    c.set("logger.console", caf::atom("none"));
    c.set("logger.file-verbosity", caf::atom("quiet"));
    return c;
  }

  agent_ptr find_agent(const std::string& name) const {
    for (auto& a : ctx_.agents)
      if (a->cfg.name == name)
        return a;
    return nullptr;
  }

  static agent_view view_of(agent_runtime& a) {
    agent_view v;
    v.name = a.cfg.name;
    v.kind = a.cfg.kind;
    v.topics = a.cfg.topics;
    bool any_running = false;
    bool any_restarting = false;
    for (std::size_t i = 0; i < a.instances.size(); ++i) {
      auto& inst = *a.instances[i];
      auto state = inst.state.load();
      any_running |= state == instance_state::running;
      any_restarting |= state == instance_state::restarting || state == instance_state::starting;
      v.instances.push_back(
        {i, to_string(state), inst.pid.load(), inst.restarts.load(), inst.in_flight.load()});
    }
    v.state = a.paused.load()  ? "paused"
              : any_running    ? "running"
              : any_restarting ? "restarting"
                               : "crashed";
    nlohmann::json c{
      {"instances", a.cfg.instances},
      {"max_in_flight", a.cfg.max_in_flight},
      {"max_retries", a.cfg.max_retries},
      {"timeout_ms", a.cfg.timeout.count()},
      {"backoff",
       {{"initial_ms", a.cfg.backoff_initial.count()}, {"max_ms", a.cfg.backoff_max.count()}}},
      {"start", a.cfg.start}};
    if (!a.cfg.ordered_by.empty())
      c["ordered_by"] = a.cfg.ordered_by;
    if (a.cfg.kind == "process")
      c["command"] = a.cfg.command;
    if (a.cfg.kind == "http")
      c["url"] = a.cfg.url;
    if (a.cfg.kind == "builtin")
      c["handler"] = a.cfg.handler;
    auto& f = a.cfg.filter;
    if (f.type || f.source || f.key) {
      auto& fj = c["filter"] = nlohmann::json::object();
      if (f.type)
        fj["type"] = *f.type;
      if (f.source)
        fj["source"] = *f.source;
      if (f.key)
        fj["key"] = *f.key;
    }
    v.config_json = c.dump();
    return v;
  }

  static dlq_view view_of(const persistence::dlq_entry& e) {
    return {e.id,    e.agent, e.topic,    e.partition,       e.offset,
            e.event, e.error, e.attempts, e.first_failed_us, e.last_failed_us};
  }

  /// Reads one DLQ entry; answers `done` with the error when there is none.
  std::optional<persistence::dlq_entry> load_dlq(const std::string& id,
                                                 const callback<dlq_view>& done) {
    auto e = store_.dlq_get(id);
    if (!e) {
      done(tl::make_unexpected(from_storage(e.error())));
      return std::nullopt;
    }
    if (!*e)
      done(tl::make_unexpected(error{errc::not_found, "no DLQ entry " + id}));
    return std::move(*e);
  }

  /// Hands a DLQ entry back to its partition for delivery.
  void retry_entry(const persistence::dlq_entry& e, std::function<void(std::string)> reply) {
    auto route = ctx_.routes.find(e.topic);
    if (!route || e.partition >= route->slots.size())
      return reply("topic " + e.topic + " is not open");
    auto target = ctx_.routes.actor_of(*route, e.partition);
    if (!target)
      return reply("partition " + e.topic + "/" + std::to_string(e.partition) + " is restarting");
    auto r = std::make_shared<std::function<void(std::string)>>(std::move(reply));
    caf::anon_send(target, redeliver_atom::value, e.agent, e.offset, e.id, std::move(r));
  }

  struct probe_outcome {
    bool ok = false;
    std::optional<double> latency_ms;
    std::string error;
  };

  /// A real write/read round trip; blocks on the disk.
  probe_outcome probe_storage() {
    probe_outcome p;
    auto latency = log_->probe();
    p.ok = latency.has_value() && log_->healthy();
    if (latency)
      p.latency_ms = static_cast<double>(latency->count()) / 1000.0;
    else
      p.error = latency.error().message;
    if (!p.ok && p.error.empty())
      p.error = log_->last_error();
    return p;
  }

  /// Runs blocking storage work on an actor thread, never on the caller's.
  /// Waits until every partition actor rebuilt its state, so ready means
  /// cursors, lag and pending are what the log says (not zeros).
  [[nodiscard]] bool await_recovery(std::chrono::seconds limit) {
    auto deadline = std::chrono::steady_clock::now() + limit;
    for (;;) {
      bool all = true;
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

  [[nodiscard]] tl::expected<nlohmann::json, error> load_replay(const std::string& id) const {
    auto stored = store_.meta(replay_key(id));
    if (!stored)
      return tl::make_unexpected(from_storage(stored.error()));
    if (!*stored)
      return tl::make_unexpected(error{errc::not_found, "no replay with id " + id});
    auto record = nlohmann::json::parse(**stored, nullptr, false);
    if (!record.is_object())
      return tl::make_unexpected(error{errc::storage, "replay " + id + " is stored corrupt"});
    return record;
  }

  static std::string history_key(const std::string& id, const std::string& agent,
                                 const std::string& cursor, std::size_t limit) {
    return id + '\n' + agent + '\n' + cursor + '\n' + std::to_string(limit);
  }

  result<history_page> build_history(const std::string& id, const std::string& agent,
                                     const std::string& cursor, std::size_t limit) {
    auto record = load_replay(id);
    if (!record)
      return tl::make_unexpected(record.error());
    return detail::replay_history(ctx_, *record, agent, cursor, limit);
  }

  /// Answers with a page, having started to build the ones after it: the
  /// next one, and the one after that at once when its cursor can be known
  /// without reading (then both are built side by side). Not while the
  /// replay runs: it stores outcomes as it goes, which a page built ahead
  /// would miss, also after the replay says it is done.
  void serve_history(const std::string& id, const std::string& agent, std::size_t limit,
                     result<history_page> page, const callback<history_page>& done) {
    std::string next = page ? page->next_cursor : std::string{};
    std::optional<nlohmann::json> record;
    if (!next.empty())
      if (auto r = load_replay(id); r && r->value("state", "") != "running")
        record = std::move(*r);
    if (!record)
      next.clear();
    read_ahead(id, agent, limit, next, 2);
    done(std::move(page));
    if (next.empty())
      return;
    if (auto after = detail::history_cursor_after(ctx_, *record, agent, next, limit))
      read_ahead(id, agent, limit, *after, 1);
  }

  /// Builds the page at `cursor` ahead of its request, and then the next
  /// `depth - 1` pages while nobody asked for them yet.
  void read_ahead(const std::string& id, const std::string& agent, std::size_t limit,
                  const std::string& cursor, int depth) {
    if (cursor.empty() || depth <= 0)
      return;
    auto key = history_key(id, agent, cursor, limit);
    if (!readahead_.start(key))
      return;
    run_async([this, id, agent, limit, key, cursor, depth] {
      auto built = build_history(id, agent, cursor, limit);
      std::string next = built ? built->next_cursor : std::string{};
      if (auto waiter = readahead_.finish(key, built))
        return serve_history(id, agent, limit, std::move(built), waiter);
      read_ahead(id, agent, limit, next, depth - 1);
    });
  }

  /// Queries and history pages run on their own pool: CAF's scheduler
  /// threads carry the partitions, and a long read must not hold up publishes.
  /// Once the node stops, `fn` is dropped unrun: a request's callback then
  /// answers 503 as it is destroyed.
  template <class F>
  void run_async(F fn) {
    std::lock_guard<std::mutex> guard{queries_mutex_};
    if (!queries_closed_)
      boost::asio::post(queries_, std::move(fn));
  }

  void precheck_then_publish(const std::string& topic, std::vector<publish_item> items,
                             callback<std::vector<published>> done) {
    auto shared = std::make_shared<std::vector<publish_item>>(std::move(items));
    run_async([this, topic, shared, done = std::move(done)]() mutable {
      std::vector<std::string> ids;
      for (auto& i : *shared)
        if (!i.id.empty())
          ids.push_back(i.id);
      auto where = log_->topics_of(ids);
      if (!where)
        return done(tl::make_unexpected(from_storage(where.error())));
      for (std::size_t k = 0; k < ids.size(); ++k)
        if ((*where)[k] && *(*where)[k] != topic)
          return done(tl::make_unexpected(
            error{errc::conflict, "event id " + ids[k] + " is already used on topic " + *(*where)[k]
                                    + "; ids are unique across topics"}));
      publish_impl(topic, std::move(*shared), std::move(done), true);
    });
  }

  void publish_impl(const std::string& topic, std::vector<publish_item> items,
                    callback<std::vector<published>> done, bool may_create) {
    if (draining_.load())
      return done(tl::make_unexpected(error{errc::unavailable, "the node is shutting down"}));
    auto route = ctx_.routes.find(topic);
    if (!route) {
      if (!may_create)
        return done(
          tl::make_unexpected(error{errc::storage, "topic " + topic + " could not be created"}));
      auto req = std::make_shared<create_request>();
      req->topic = topic;
      req->done
        = [this, topic, items = std::move(items), done](std::optional<std::string> err) mutable {
            if (err)
              return done(tl::make_unexpected(error{errc::storage, *err}));
            publish_impl(topic, std::move(items), std::move(done), false);
          };
      caf::anon_send(runner_, create_atom::value, std::move(req));
      return;
    }
    auto now = persistence::system_clock_us();
    const auto partitions = route->info.partitions;
    // Keyless events of one request stay together, on the next partition in turn.
    const auto keyless = static_cast<std::uint32_t>(
      route->round_robin.fetch_add(1, std::memory_order_relaxed) % partitions);
    std::vector<job_ptr> jobs(partitions);
    std::vector<std::vector<std::size_t>> index(partitions);
    // A repeated id goes where its first occurrence goes, so the first wins.
    std::unordered_map<std::string, std::uint32_t> first_partition;
    for (std::size_t i = 0; i < items.size(); ++i) {
      auto& it = items[i];
      auto p = it.key.empty() ? keyless : static_cast<std::uint32_t>(fnv1a(it.key) % partitions);
      if (!it.id.empty())
        p = first_partition.emplace(it.id, p).first->second;
      if (!jobs[p])
        jobs[p] = std::make_shared<partition_job>();
      bool generated = it.id.empty();
      if (generated)
        it.id = persistence::new_uuid_v7(now);
      jobs[p]->events.push_back({std::move(it.id), std::move(it.key), std::move(it.fragment),
                                 std::move(it.type), std::move(it.source), generated});
      index[p].push_back(i);
    }
    // Admission: every partition involved must have room, or nothing is sent.
    std::vector<std::uint32_t> admitted;
    for (std::uint32_t p = 0; p < partitions; ++p) {
      if (!jobs[p])
        continue;
      auto n = jobs[p]->events.size();
      auto& q = route->slots[p]->queued;
      if (q.fetch_add(n, std::memory_order_relaxed) + n > cfg_.storage.max_queued_events) {
        q.fetch_sub(n, std::memory_order_relaxed);
        for (auto a : admitted)
          route->slots[a]->queued.fetch_sub(jobs[a]->events.size(), std::memory_order_relaxed);
        return done(tl::make_unexpected(
          error{errc::overloaded, "partition " + topic + "/" + std::to_string(p) + " has "
                                    + std::to_string(cfg_.storage.max_queued_events)
                                    + " events waiting to be written; retry shortly"}));
      }
      admitted.push_back(p);
    }
    auto join = std::make_shared<publish_join>();
    join->out.resize(items.size());
    join->remaining = admitted.size();
    join->done = std::move(done);
    for (auto p : admitted) {
      auto& job = jobs[p];
      job->queued = &route->slots[p]->queued;
      job->done = [join, idx = std::move(index[p])](
                    tl::expected<std::vector<persistence::append_result>, persistence::error> r) {
        if (!r) {
          join->fail(error{errc::unavailable, r.error().message});
        } else {
          for (std::size_t k = 0; k < idx.size(); ++k) {
            auto& a = (*r)[k];
            if (a.status == persistence::append_status::conflict) {
              join->fail(error{errc::conflict, "event id " + a.id + " is already used on topic "
                                                 + a.topic + "; ids are unique across topics"});
              continue;
            }
            join->out[idx[k]] = published{
              a.id,           a.topic,         a.where.partition,
              a.where.offset, a.where.time_us, a.status == persistence::append_status::duplicate};
          }
        }
        join->arrive();
      };
      caf::actor target;
      {
        std::shared_lock<std::shared_mutex> guard{ctx_.routes.mutex};
        target = route->slots[p]->actor;
      }
      caf::anon_send(target, publish_atom::value, std::move(job));
    }
  }

  config::config cfg_;
  node_hooks hooks_;
  std::shared_ptr<const io_latency> io_;
  std::unique_ptr<persistence::event_log> log_;
  history_readahead readahead_;
  persistence::delivery_store store_;
  node_context ctx_;
  caf::actor_system_config sys_cfg_;
  caf::actor_system system_;
  caf::actor runner_;
  /// Declared after everything its jobs use, so it is joined first.
  boost::asio::thread_pool queries_{2};
  std::mutex queries_mutex_;
  bool queries_closed_ = false; ///< queries_mutex_
  std::string runner_id_;
  std::atomic<bool> ready_{false};
  std::atomic<bool> draining_{false};
  std::mutex shutdown_mutex_;
  bool stopped_ = false;
};

} // namespace

std::string format_time(std::int64_t time_us) {
  return persistence::format_time_us(time_us);
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
  auto io = std::make_shared<io_latency>();
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
