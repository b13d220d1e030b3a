// The actor runtime of one node: the runner actor, which recovers topics,
// supervises partition actors and runs retention, and the partition actors,
// which group-commit publishes. Also the `node` facade the HTTP layer calls.
#include "actors/node.hpp"

#include <atomic>
#include <condition_variable>
#include <mutex>
#include <shared_mutex>
#include <unordered_map>

#include <caf/all.hpp>
#include <spdlog/spdlog.h>

#include "persistence/event_log.hpp"
#include "persistence/ids.hpp"

namespace nerve::actors::detail {

using publish_atom = caf::atom_constant<caf::atom("publish")>;
using flush_atom = caf::atom_constant<caf::atom("flush")>;
using stop_atom = caf::atom_constant<caf::atom("stop")>;
using create_atom = caf::atom_constant<caf::atom("create")>;
using restart_atom = caf::atom_constant<caf::atom("restart")>;
using sweep_atom = caf::atom_constant<caf::atom("sweep")>;
using ready_atom = caf::atom_constant<caf::atom("ready")>;

/// One partition's share of a publish request. Answers exactly once: on
/// flush, or with an error when it is destroyed unanswered (its partition
/// actor died).
struct partition_job {
  using done_fn = std::function<void(
    tl::expected<std::vector<persistence::append_result>, persistence::error>)>;

  std::vector<persistence::new_event> events;
  done_fn done;
  std::atomic<std::uint64_t>* queued = nullptr; ///< the slot's counter

  void finish(tl::expected<std::vector<persistence::append_result>, persistence::error> r) {
    if (!done)
      return;
    queued->fetch_sub(events.size(), std::memory_order_relaxed);
    auto fn = std::move(done);
    done = nullptr;
    fn(std::move(r));
  }

  ~partition_job() {
    finish(tl::make_unexpected(persistence::error{
      persistence::errc::io_error, "the partition stopped before the append; retry"}));
  }
};

using job_ptr = std::shared_ptr<partition_job>;

/// A topic creation request, answered on the runner.
struct create_request {
  std::string topic;
  std::function<void(std::optional<std::string>)> done; ///< error text or nothing
};

using create_ptr = std::shared_ptr<create_request>;

} // namespace nerve::actors::detail

CAF_ALLOW_UNSAFE_MESSAGE_TYPE(nerve::actors::detail::job_ptr)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(nerve::actors::detail::create_ptr)

namespace nerve::actors {

namespace {

using namespace detail;

/// A partition as the publish path sees it. The actor handle changes when
/// the runner restarts the partition.
struct partition_slot {
  caf::actor actor; ///< guarded by routing::mutex
  std::atomic<std::uint64_t> queued{0};
  std::atomic<bool> alive{false};
  std::uint32_t restarts = 0; ///< runner only
  std::chrono::steady_clock::time_point last_crash{};
};

struct topic_route {
  persistence::topic_info info;
  std::vector<std::unique_ptr<partition_slot>> slots;
  std::atomic<std::uint64_t> round_robin{0};
};

struct routing {
  mutable std::shared_mutex mutex;
  std::unordered_map<std::string, std::shared_ptr<topic_route>> topics;

  std::shared_ptr<topic_route> find(const std::string& name) const {
    std::shared_lock<std::shared_mutex> guard{mutex};
    auto it = topics.find(name);
    return it == topics.end() ? nullptr : it->second;
  }
};

std::uint64_t fnv1a(const std::string& s) {
  std::uint64_t h = 1469598103934665603ULL;
  for (unsigned char c : s) {
    h ^= c;
    h *= 1099511628211ULL;
  }
  return h;
}

// -- partition actor ----------------------------------------------------------

struct partition_state {
  std::unique_ptr<persistence::partition_writer> writer;
  const node_hooks* hooks = nullptr;
  std::string topic;
  std::uint32_t partition = 0;
  std::vector<job_ptr> batch;
  std::size_t batch_events = 0;
  std::size_t max_batch_events = 1024;
  bool flush_scheduled = false;
  static inline const char* name = "partition";

  void flush() {
    if (batch.empty())
      return;
    if (hooks->before_append)
      hooks->before_append(topic, partition);
    std::vector<persistence::new_event> all;
    all.reserve(batch_events);
    for (auto& job : batch)
      for (auto& e : job->events)
        all.push_back(e);
    auto appended = writer->append(all);
    std::size_t at = 0;
    for (auto& job : batch) {
      auto n = job->events.size();
      if (appended) {
        std::vector<persistence::append_result> mine(appended->begin() + at,
                                                     appended->begin() + at + n);
        job->finish(std::move(mine));
      } else {
        job->finish(tl::make_unexpected(appended.error()));
      }
      at += n;
    }
    batch.clear();
    batch_events = 0;
  }
};

caf::behavior partition_actor(caf::stateful_actor<partition_state>* self,
                              persistence::event_log* log, persistence::topic_info topic,
                              std::uint32_t partition, std::size_t max_batch_events,
                              const node_hooks* hooks) {
  self->state.writer = std::make_unique<persistence::partition_writer>(*log, topic, partition);
  self->state.max_batch_events = max_batch_events;
  self->state.hooks = hooks;
  self->state.topic = topic.name;
  self->state.partition = partition;
  return {
    [=](publish_atom, job_ptr& job) {
      auto& st = self->state;
      st.batch_events += job->events.size();
      st.batch.push_back(std::move(job));
      if (st.batch_events >= st.max_batch_events) {
        st.flush();
      } else if (!st.flush_scheduled) {
        // Everything already in the mailbox is handled before this flush:
        // that is the group commit.
        st.flush_scheduled = true;
        self->send(self, flush_atom::value);
      }
    },
    [=](flush_atom) {
      self->state.flush_scheduled = false;
      self->state.flush();
    },
    [=](stop_atom) {
      self->state.flush();
      self->quit();
    },
  };
}

// -- runner actor -------------------------------------------------------------

struct runner_state {
  persistence::event_log* log = nullptr;
  routing* routes = nullptr;
  const config::config* cfg = nullptr;
  const node_hooks* hooks = nullptr;
  std::unordered_map<caf::actor_addr, std::pair<std::shared_ptr<topic_route>, std::uint32_t>>
    children;
  bool stopping = false;
  static inline const char* name = "runner";
};

using runner_actor_t = caf::stateful_actor<runner_state>;

void spawn_partition(runner_actor_t* self, const std::shared_ptr<topic_route>& route,
                     std::uint32_t p) {
  auto& st = self->state;
  auto a = self->spawn<caf::detached + caf::monitored>(partition_actor, st.log, route->info, p,
                                                       st.cfg->storage.max_batch_events, st.hooks);
  st.children[a.address()] = {route, p};
  {
    std::unique_lock<std::shared_mutex> guard{st.routes->mutex};
    route->slots[p]->actor = a;
  }
  route->slots[p]->alive = true;
}

std::shared_ptr<topic_route> open_topic(runner_actor_t* self, const persistence::topic_info& t) {
  auto route = std::make_shared<topic_route>();
  route->info = t;
  for (std::uint32_t p = 0; p < t.partitions; ++p)
    route->slots.push_back(std::make_unique<partition_slot>());
  for (std::uint32_t p = 0; p < t.partitions; ++p)
    spawn_partition(self, route, p);
  std::unique_lock<std::shared_mutex> guard{self->state.routes->mutex};
  self->state.routes->topics[t.name] = route;
  return route;
}

void schedule_sweep(runner_actor_t* self) {
  auto retention = self->state.cfg->storage.retention;
  if (retention.count() == 0)
    return;
  auto every = std::min<std::chrono::milliseconds>(retention / 10, std::chrono::seconds{60});
  self->delayed_send(self, std::max(every, std::chrono::milliseconds{100}), sweep_atom::value);
}

caf::behavior runner_actor(runner_actor_t* self, persistence::event_log* log, routing* routes,
                           const config::config* cfg, const node_hooks* hooks) {
  auto& st = self->state;
  st.log = log;
  st.hooks = hooks;
  st.routes = routes;
  st.cfg = cfg;
  for (auto& t : log->topics())
    open_topic(self, t);
  schedule_sweep(self);
  self->set_down_handler([=](caf::down_msg& msg) {
    auto& st = self->state;
    auto it = st.children.find(msg.source);
    if (it == st.children.end())
      return;
    auto [route, p] = it->second;
    st.children.erase(it);
    route->slots[p]->alive = false;
    if (st.stopping) {
      if (st.children.empty())
        self->quit();
      return;
    }
    // Restart with backoff: at once the first time, then doubling up to 5 s
    // while it keeps crashing within a minute.
    auto& slot = *route->slots[p];
    auto now = std::chrono::steady_clock::now();
    if (now - slot.last_crash > std::chrono::minutes{1})
      slot.restarts = 0;
    slot.last_crash = now;
    auto delay = std::chrono::milliseconds{
      slot.restarts == 0 ? 0 : 100LL << std::min(slot.restarts - 1, 6u)};
    delay = std::min<std::chrono::milliseconds>(delay, std::chrono::seconds{5});
    ++slot.restarts;
    spdlog::warn("partition {}/{} stopped ({}); restarting in {} ms", route->info.name, p,
                 caf::to_string(msg.reason), delay.count());
    if (delay.count() == 0)
      spawn_partition(self, route, p);
    else
      self->delayed_send(self, delay, restart_atom::value, route->info.name, p);
  });
  return {
    [=](ready_atom) { return true; },
    [=](create_atom, create_ptr& req) {
      auto& st = self->state;
      if (st.stopping) {
        req->done("the node is shutting down");
        return;
      }
      if (st.routes->find(req->topic) == nullptr) {
        auto created = st.log->create_topic(req->topic, st.cfg->partitions_for(req->topic));
        if (!created) {
          req->done(created.error().message);
          return;
        }
        open_topic(self, *created);
        spdlog::info("topic {} created with {} partitions", created->name, created->partitions);
      }
      req->done(std::nullopt);
    },
    [=](restart_atom, const std::string& topic, std::uint32_t p) {
      auto& st = self->state;
      if (st.stopping)
        return;
      if (auto route = st.routes->find(topic); route && !route->slots[p]->alive)
        spawn_partition(self, route, p);
    },
    [=](sweep_atom) {
      auto& st = self->state;
      if (st.stopping)
        return;
      auto cutoff = st.log->opts().clock() - st.cfg->storage.retention.count() * 1000;
      constexpr std::size_t chunk = 10000;
      auto n = st.log->sweep_before(cutoff, chunk);
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
      std::shared_lock<std::shared_mutex> guard{st.routes->mutex};
      for (auto& [name, route] : st.routes->topics)
        for (auto& slot : route->slots)
          if (slot->alive)
            self->send(slot->actor, stop_atom::value);
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

class node_impl final : public node {
public:
  node_impl(const config::config& cfg, std::unique_ptr<persistence::event_log> log,
            node_hooks hooks)
    : cfg_(cfg), hooks_(std::move(hooks)), log_(std::move(log)), system_(configure(sys_cfg_)) {
    runner_id_ = persistence::new_uuid_v7(persistence::system_clock_us());
  }

  ~node_impl() override { shutdown(); }

  [[nodiscard]] std::optional<std::string> start() {
    runner_ = system_.spawn<caf::detached>(runner_actor, log_.get(), &routes_, &cfg_, &hooks_);
    caf::scoped_actor self{system_};
    std::optional<std::string> err;
    self->request(runner_, std::chrono::seconds{60}, ready_atom::value)
      .receive([](bool) {}, [&](caf::error& e) { err = "recovery failed: " + system_.render(e); });
    if (!err)
      ready_.store(true);
    return err;
  }

  void publish(const std::string& topic, std::vector<publish_item> items,
               callback<std::vector<published>> done) override {
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

  void get_event(const std::string& id, callback<std::string> done) override {
    run_async([this, id, done = std::move(done)] {
      auto got = log_->get_by_id(id);
      if (!got)
        return done(tl::make_unexpected(from_storage(got.error())));
      if (!*got)
        return done(tl::make_unexpected(error{errc::not_found, "no event with id " + id}));
      done(std::move(**got));
    });
  }

  void health(callback<health_report> done) override {
    run_async([this, done = std::move(done)] {
      health_report r;
      auto latency = log_->probe();
      r.storage_ok = latency.has_value() && log_->healthy();
      if (latency)
        r.storage_latency_ms = static_cast<double>(latency->count()) / 1000.0;
      else
        r.storage_error = latency.error().message;
      if (!r.storage_ok && r.storage_error.empty())
        r.storage_error = log_->last_error();
      r.bus_ok = !draining_.load();
      std::shared_lock<std::shared_mutex> guard{routes_.mutex};
      for (auto& [name, route] : routes_.topics)
        for (auto& slot : route->slots) {
          ++r.partitions;
          r.pending_publishes += slot->queued.load(std::memory_order_relaxed);
          if (!slot->alive.load())
            r.bus_ok = false;
        }
      done(std::move(r));
    });
  }

  void storage(callback<storage_report> done) override {
    run_async([this, done = std::move(done)] {
      storage_report r;
      r.path = cfg_.data_dir;
      r.disk_bytes = log_->disk_bytes();
      r.ok = log_->healthy();
      r.last_error = log_->last_error();
      r.fsync = config::to_string(cfg_.storage.fsync);
      done(std::move(r));
    });
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
    if (runner_) {
      caf::scoped_actor self{system_};
      self->monitor(runner_);
      self->send(runner_, stop_atom::value);
      self->receive([](const caf::down_msg&) {});
      runner_ = nullptr;
    }
    system_.await_all_actors_done();
    log_.reset();
    stopped_ = true;
  }

private:
  static caf::actor_system_config& configure(caf::actor_system_config& c) {
    c.set("scheduler.max-threads", static_cast<size_t>(2));
    c.set("logger.console", caf::atom("none"));
    c.set("logger.file-verbosity", caf::atom("quiet"));
    return c;
  }

  /// Runs blocking storage work on an actor thread, never on the caller's.
  template <class F>
  void run_async(F fn) {
    system_.spawn([fn = std::move(fn)]() mutable { fn(); });
  }

  void publish_impl(const std::string& topic, std::vector<publish_item> items,
                    callback<std::vector<published>> done, bool may_create) {
    if (draining_.load())
      return done(tl::make_unexpected(error{errc::unavailable, "the node is shutting down"}));
    auto route = routes_.find(topic);
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
    for (std::size_t i = 0; i < items.size(); ++i) {
      auto& it = items[i];
      auto p = it.key.empty() ? keyless : static_cast<std::uint32_t>(fnv1a(it.key) % partitions);
      if (!jobs[p])
        jobs[p] = std::make_shared<partition_job>();
      if (it.id.empty())
        it.id = persistence::new_uuid_v7(now);
      jobs[p]->events.push_back({std::move(it.id), std::move(it.key), std::move(it.fragment)});
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
        std::shared_lock<std::shared_mutex> guard{routes_.mutex};
        target = route->slots[p]->actor;
      }
      caf::anon_send(target, publish_atom::value, std::move(job));
    }
  }

  config::config cfg_;
  node_hooks hooks_;
  std::unique_ptr<persistence::event_log> log_;
  caf::actor_system_config sys_cfg_;
  caf::actor_system system_;
  caf::actor runner_;
  routing routes_;
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
  auto log = persistence::event_log::open(opts);
  if (!log)
    return tl::make_unexpected(log.error().message);
  auto n = std::make_unique<node_impl>(cfg, std::move(*log), std::move(hooks));
  if (auto err = n->start())
    return tl::make_unexpected(*err);
  return n;
}

} // namespace nerve::actors
