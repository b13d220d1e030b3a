// The control plane's thread (control_plane.hpp). Everything it does is a
// step of one loop: run what services asked for, keep the lease alive, take
// in the watch's events, then reconcile: elect where a partition has no
// leader, and give every local partition the role etcd says it has.
#include "actors/control_plane.hpp"

#include <algorithm>
#include <condition_variable>
#include <deque>
#include <map>
#include <mutex>
#include <pthread.h>
#include <set>
#include <shared_mutex>
#include <thread>

#include <caf/send.hpp>
#include <nlohmann/json.hpp>
#include <spdlog/fmt/ranges.h>
#include <spdlog/spdlog.h>

#include "actors/etcd_client.hpp"
#include "actors/messages.hpp"
#include "persistence/ids.hpp"

namespace nerve::actors {

namespace {

using namespace std::chrono_literals;
using clock_type = std::chrono::steady_clock;
using part_key = std::pair<std::uint32_t, std::uint32_t>; ///< (topic id, partition)

/// etcd refuses a txn of more operations than this (--max-txn-ops).
constexpr std::size_t txn_ops_max = 100;

struct topic_record {
  std::uint32_t id = 0;
  std::uint32_t partitions = 0;
  std::uint32_t replication_factor = 0;
};

std::string encode_topic(const topic_record& t) {
  return nlohmann::json{
    {"id", t.id}, {"partitions", t.partitions}, {"replication_factor", t.replication_factor}}
    .dump();
}

std::optional<topic_record> decode_topic(const std::string& text) {
  auto j = nlohmann::json::parse(text, nullptr, false);
  if (!j.is_object())
    return std::nullopt;
  topic_record t;
  for (auto [name, field] : {std::pair{"id", &t.id},
                             {"partitions", &t.partitions},
                             {"replication_factor", &t.replication_factor}}) {
    auto it = j.find(name);
    if (it == j.end() || !it->is_number_unsigned() || *it > UINT32_MAX)
      return std::nullopt;
    *field = it->get<std::uint32_t>();
  }
  if (t.id == 0 || t.partitions == 0)
    return std::nullopt;
  return t;
}

struct cached_state {
  control::partition_state state;
  std::int64_t mod_revision = 0;
};

struct cached_leader {
  std::string node;
  std::int64_t lease = 0;
};

/// A call to etcd may take a third of the lease's TTL: a keepalive that
/// hangs on a member cut off from its quorum leaves time for one to another
/// member before the lease lapses.
std::chrono::milliseconds call_timeout(const config::config& cfg) {
  return std::clamp<std::chrono::milliseconds>(cfg.cluster.lease_ttl / 3, 500ms, 2000ms);
}

class control_impl final : public control_plane {
public:
  explicit control_impl(control_deps deps)
    : deps_(std::move(deps)), keys_(deps_.cfg->cluster.name), self_(deps_.cfg->node_id),
      client_(etcd::client::options{deps_.cfg->cluster.etcd, call_timeout(*deps_.cfg),
                                    call_timeout(*deps_.cfg) / 2}) {
    thread_ = std::thread([this] {
      ::pthread_setname_np(::pthread_self(), "nerve.control");
      run();
    });
  }

  ~control_impl() override { stop(); }

  std::string leader(const std::string& topic, std::uint32_t p) const override {
    std::shared_lock<std::shared_mutex> guard{view_mutex_};
    auto it = leaders_view_.find(topic);
    if (it == leaders_view_.end() || p >= it->second.size())
      return {};
    return it->second[p];
  }

  void ensure_topic(const std::string& topic, std::uint32_t partitions,
                    callback<std::pair<std::uint32_t, std::uint32_t>> done) override {
    post([this, topic, partitions, done = std::move(done)] {
      auto r = create_topic(topic, partitions);
      if (!r)
        return done(std::move(r));
      // Answered once every partition has a leader (or after a moment), so
      // that the first publish to a new topic finds its leaders.
      waiters_.push_back({topic, clock_type::now() + 3s, std::move(done), *r});
    });
  }

  void change_in_sync(const std::string& topic, std::uint32_t p, std::uint32_t epoch,
                      std::vector<std::string> in_sync) override {
    post([this, topic, p, epoch, in_sync = std::move(in_sync)] {
      set_in_sync(topic, p, epoch, in_sync);
    });
  }

  std::vector<replicated_partition> partitions() const override {
    std::shared_lock<std::shared_mutex> guard{view_mutex_};
    return partitions_view_;
  }

  const control_stats& stats() const override { return stats_; }

  void stop() override {
    {
      std::lock_guard<std::mutex> guard{mutex_};
      if (stopping_)
        return;
      stopping_ = true;
    }
    cv_.notify_all();
    if (thread_.joinable())
      thread_.join();
  }

private:
  // -- the loop ---------------------------------------------------------------

  void post(std::function<void()> job) {
    {
      std::lock_guard<std::mutex> guard{mutex_};
      jobs_.push_back(std::move(job));
    }
    cv_.notify_all();
  }

  /// Runs one etcd call, counted and timed.
  template <class F>
  auto call(F f) {
    auto t0 = clock_type::now();
    auto r = f();
    stats_.etcd_requests.fetch_add(1, std::memory_order_relaxed);
    stats_.etcd_latency.observe(
      std::chrono::duration_cast<std::chrono::microseconds>(clock_type::now() - t0).count());
    if (!r) {
      stats_.etcd_errors.fetch_add(1, std::memory_order_relaxed);
      if (r.error().code == etcd::errc::unavailable || r.error().code == etcd::errc::timeout)
        stats_.etcd_ok = false;
    } else {
      stats_.etcd_ok = true;
    }
    return r;
  }

  void run() {
    while (true) {
      std::deque<std::function<void()>> jobs;
      std::vector<etcd::watch_event> events;
      bool reset = false;
      {
        std::unique_lock<std::mutex> guard{mutex_};
        cv_.wait_for(guard, 100ms, [this] {
          return stopping_ || !jobs_.empty() || !events_.empty() || watch_reset_;
        });
        if (stopping_)
          break;
        jobs.swap(jobs_);
        events.swap(events_);
        reset = watch_reset_;
        watch_reset_ = false;
      }
      if (reset) {
        watch_.reset();
        loaded_ = false;
      }
      if (!events.empty())
        take_events(events);
      keep_lease();
      if (!loaded_)
        load();
      else
        resync();
      for (auto& job : jobs)
        job();
      if (loaded_)
        reconcile();
      answer_waiters();
    }
    watch_.reset();
    if (lease_ != 0) {
      // Leaderships end now rather than a TTL from now.
      (void)call([&] { return client_.revoke(lease_); });
      lease_ = 0;
    }
  }

  // -- the lease --------------------------------------------------------------

  [[nodiscard]] bool lease_alive() const { return lease_ != 0 && clock_type::now() < lease_until_; }

  void keep_lease() {
    auto now = clock_type::now();
    auto ttl = deps_.cfg->cluster.lease_ttl;
    if (lease_ != 0 && now < next_keepalive_) {
      stats_.lease_ok = lease_alive();
      return;
    }
    if (lease_ == 0 && now < next_keepalive_)
      return;
    next_keepalive_ = now + ttl / 3;
    if (lease_ != 0) {
      auto sent = clock_type::now();
      auto r = call([&] { return client_.keepalive(lease_); });
      if (!r && r.error().code != etcd::errc::rejected) {
        // Once more, on the next member (the client moved on).
        sent = clock_type::now();
        r = call([&] { return client_.keepalive(lease_); });
      }
      if (r) {
        lease_until_ = sent + std::chrono::seconds{*r};
      } else if (r.error().code == etcd::errc::rejected) {
        spdlog::warn("cluster: this node's etcd lease ended ({}); its leaderships end",
                     r.error().message);
        lease_ = 0;
      } else if (!lease_alive()) {
        if (!lease_lost_logged_)
          spdlog::warn("cluster: etcd did not renew this node's lease for {} ms ({}); its "
                       "leaderships end until etcd answers",
                       ttl.count(), r.error().message);
        lease_lost_logged_ = true;
      }
    }
    if (lease_ == 0) {
      auto ttl_s = std::max<std::int64_t>(2, (ttl.count() + 999) / 1000);
      auto sent = clock_type::now();
      auto g = call([&] { return client_.grant(ttl_s); });
      if (!g) {
        if (!grant_failed_logged_)
          spdlog::error("cluster: cannot reach etcd at {}: {}; retrying",
                        fmt::join(deps_.cfg->cluster.etcd, ","), g.error().message);
        grant_failed_logged_ = true;
        next_keepalive_ = clock_type::now() + 500ms;
        stats_.lease_ok = false;
        return;
      }
      grant_failed_logged_ = false;
      lease_ = g->id;
      lease_until_ = sent + std::chrono::seconds{g->ttl_s};
      auto reg = nlohmann::json{{"address", deps_.cfg->cluster.listen},
                                {"http", deps_.cfg->http.listen},
                                {"since_us", persistence::system_clock_us()}}
                   .dump();
      if (auto put = call([&] { return client_.put(keys_.node(self_), reg, lease_); }); !put)
        spdlog::warn("cluster: registering node {} in etcd: {}", self_, put.error().message);
      spdlog::info("cluster: node {} holds etcd lease {:x} (TTL {} s)", self_, lease_, g->ttl_s);
    }
    if (lease_alive())
      lease_lost_logged_ = false;
    stats_.lease_ok = lease_alive();
  }

  // -- reading etcd -------------------------------------------------------------

  void load() {
    if (clock_type::now() < next_load_)
      return;
    next_load_ = clock_type::now() + 500ms;
    auto all = read_all();
    if (!all)
      return;
    if (deps_.fresh && !first_load_done_) {
      // A lost disk must not come back as an in-sync copy: it is one again
      // once it has caught up with its leader.
      for (auto& [k, c] : states_)
        if (c.state.epoch > 0 && c.state.is_in_sync(self_))
          not_caught_up_.insert(k);
      if (!not_caught_up_.empty())
        spdlog::warn("cluster: this node's data directory was empty at start-up; its copies of "
                     "{} partitions are not electable until they catch up with their leaders",
                     not_caught_up_.size());
    }
    first_load_done_ = true;
    next_resync_ = clock_type::now() + 1s;
    loaded_ = true;
    {
      std::lock_guard<std::mutex> guard{mutex_};
      events_.clear();
    }
    watch_ = client_.watch(
      keys_.root(), etcd::client::prefix_end(keys_.root()), all->revision + 1,
      [this](std::vector<etcd::watch_event> events, std::int64_t) {
        if (events.empty())
          return;
        {
          std::lock_guard<std::mutex> guard{mutex_};
          for (auto& e : events)
            events_.push_back(std::move(e));
        }
        cv_.notify_all();
      },
      [this](const etcd::error& why) {
        stats_.watching = false;
        if (why.code == etcd::errc::unavailable)
          return; // it keeps trying
        spdlog::warn("cluster: the etcd watch ended ({}); reading etcd again", why.message);
        {
          std::lock_guard<std::mutex> guard{mutex_};
          watch_reset_ = true;
        }
        cv_.notify_all();
      });
    stats_.watching = true;
  }

  /// Reads every key again once a second, whatever the watch says: a watch
  /// on a member cut off from its quorum stays open and silent for seconds,
  /// and an election must not wait for it.
  void resync() {
    auto now = clock_type::now();
    if (now < next_resync_)
      return;
    next_resync_ = now + 1s;
    (void)read_all();
  }

  /// Replaces the cache with every key as etcd has it now.
  etcd::result<etcd::range_result> read_all() {
    auto all = call([&] { return client_.prefix(keys_.root()); });
    if (!all)
      return all;
    topics_.clear();
    states_.clear();
    leaders_.clear();
    for (auto& kv : all->kvs)
      take(kv, false);
    resynced_at_ = all->revision;
    return all;
  }

  void take_events(const std::vector<etcd::watch_event>& events) {
    if (!loaded_)
      return;
    for (auto& e : events)
      if (e.current.mod_revision > resynced_at_) // not older than the last full read
        take(e.current, e.type == etcd::watch_event::kind::del);
  }

  /// Takes in one key as read or watched; a record older than the cached
  /// one (an answer that crossed a watch event) is ignored.
  void take(const etcd::kv& kv, bool deleted) {
    if (kv.key.rfind(keys_.topics(), 0) == 0) {
      auto name = kv.key.substr(keys_.topics().size());
      if (deleted) {
        topics_.erase(name);
      } else if (auto t = decode_topic(kv.value)) {
        topics_[name] = *t;
      } else {
        spdlog::error("cluster: etcd key {} holds no topic record", kv.key);
      }
      return;
    }
    auto parsed = keys_.parse_partition_key(kv.key);
    if (!parsed)
      return;
    part_key k{parsed->topic_id, parsed->partition};
    if (parsed->is_leader) {
      if (deleted)
        leaders_.erase(k);
      else
        leaders_[k] = {kv.value, kv.lease};
      return;
    }
    if (deleted) {
      states_.erase(k);
      return;
    }
    auto s = control::decode(kv.value);
    if (!s) {
      spdlog::error("cluster: etcd key {} holds no partition state", kv.key);
      return;
    }
    auto& c = states_[k];
    if (kv.mod_revision >= c.mod_revision)
      c = {std::move(*s), kv.mod_revision};
  }

  /// Reads one partition's state and leader keys again (after a failed
  /// compare-and-swap).
  void reread(std::uint32_t tid, std::uint32_t p) {
    auto r = call([&] {
      return client_.prefix(keys_.partitions() + std::to_string(tid) + "/" + std::to_string(p)
                            + "/");
    });
    if (!r)
      return;
    part_key k{tid, p};
    leaders_.erase(k);
    for (auto& kv : r->kvs)
      take(kv, false);
  }

  // -- topics -------------------------------------------------------------------

  result<std::pair<std::uint32_t, std::uint32_t>> create_topic(const std::string& topic,
                                                               std::uint32_t partitions) {
    auto unavailable = [&](const std::string& why) {
      return tl::make_unexpected(error{errc::unavailable, "topic " + topic
                                                            + " is new, and etcd did not create "
                                                              "it ("
                                                            + why + "); retry shortly"});
    };
    if (partitions == 0)
      partitions = deps_.cfg->partitions_for(topic);
    auto rf = deps_.cfg->cluster.replication_factor;
    for (int attempt = 0; attempt < 8; ++attempt) {
      auto existing = call([&] { return client_.range(keys_.topic(topic)); });
      if (!existing)
        return unavailable(existing.error().message);
      if (!existing->kvs.empty()) {
        auto t = decode_topic(existing->kvs.front().value);
        if (!t)
          return tl::make_unexpected(
            error{errc::storage, "etcd key " + keys_.topic(topic) + " holds no topic record"});
        topics_[topic] = *t;
        return std::pair{t->id, t->partitions};
      }
      auto seq = call([&] { return client_.range(keys_.topic_seq()); });
      if (!seq)
        return unavailable(seq.error().message);
      std::uint32_t last = 0;
      std::int64_t seq_rev = 0;
      if (!seq->kvs.empty()) {
        last = static_cast<std::uint32_t>(std::stoul(seq->kvs.front().value));
        seq_rev = seq->kvs.front().mod_revision;
      }
      topic_record t{last + 1, partitions, rf};
      std::vector<etcd::compare> cmp{etcd::compare::absent(keys_.topic(topic)),
                                     seq_rev == 0
                                       ? etcd::compare::absent(keys_.topic_seq())
                                       : etcd::compare::modified(keys_.topic_seq(), seq_rev)};
      std::vector<etcd::op> ops{etcd::op::put(keys_.topic_seq(), std::to_string(t.id)),
                                etcd::op::put(keys_.topic(topic), encode_topic(t))};
      // The first partitions' states ride in the same txn; reconcile() adds
      // any that did not fit.
      for (std::uint32_t p = 0; p < partitions && ops.size() < txn_ops_max; ++p)
        ops.push_back(
          etcd::op::put(keys_.state(t.id, p), control::encode(initial_state(topic, p))));
      auto r = call([&] { return client_.txn(cmp, ops); });
      if (!r)
        return unavailable(r.error().message);
      if (r->succeeded) {
        spdlog::info("cluster: topic {} created in etcd: id {}, {} partitions, {} copies each",
                     topic, t.id, partitions, rf);
        topics_[topic] = t;
        return std::pair{t.id, t.partitions};
      }
    }
    return unavailable("other nodes kept creating topics at the same time");
  }

  [[nodiscard]] control::partition_state initial_state(const std::string& topic,
                                                       std::uint32_t p) const {
    control::partition_state s;
    s.replicas = deps_.where.replicas(topic, p, deps_.cfg->cluster.replication_factor);
    s.in_sync = s.replicas;
    return s;
  }

  // -- elections and in-sync sets -----------------------------------------------

  /// Takes the leader key of a partition without a leader, with the next
  /// epoch, in one txn that fails if anyone else changed its state first.
  void elect(const std::string& topic, std::uint32_t tid, std::uint32_t p, const cached_state& c) {
    auto next = c.state;
    next.epoch = c.state.epoch + 1;
    if (!c.state.leader.empty() && c.state.leader != self_) {
      // The old leader's lease ended: it is no longer in sync until it
      // catches up with this epoch (and it may have records nobody else has).
      auto& isr = next.in_sync;
      isr.erase(std::remove(isr.begin(), isr.end(), c.state.leader), isr.end());
    }
    next.leader = self_;
    auto r = call([&] {
      return client_.txn({etcd::compare::absent(keys_.leader(tid, p)),
                          etcd::compare::modified(keys_.state(tid, p), c.mod_revision)},
                         {etcd::op::put(keys_.leader(tid, p), self_, lease_),
                          etcd::op::put(keys_.state(tid, p), control::encode(next))});
    });
    if (!r)
      return;
    if (!r->succeeded) {
      reread(tid, p);
      return;
    }
    stats_.leader_changes.fetch_add(1, std::memory_order_relaxed);
    spdlog::info("cluster: node {} leads {}/{} in epoch {} (in sync: {})", self_, topic, p,
                 next.epoch, fmt::join(next.in_sync, ","));
    states_[{tid, p}] = {std::move(next), r->revision};
    leaders_[{tid, p}] = {self_, lease_};
  }

  void set_in_sync(const std::string& topic, std::uint32_t p, std::uint32_t epoch,
                   std::vector<std::string> in_sync) {
    auto t = topics_.find(topic);
    if (t == topics_.end())
      return;
    part_key k{t->second.id, p};
    auto it = states_.find(k);
    if (it == states_.end() || it->second.state.epoch != epoch || it->second.state.leader != self_
        || !lease_alive())
      return;
    auto next = it->second.state;
    // Only copies of the partition, and always the leader.
    std::vector<std::string> isr{self_};
    for (auto& n : in_sync)
      if (n != self_
          && std::find(next.replicas.begin(), next.replicas.end(), n) != next.replicas.end()
          && std::find(isr.begin(), isr.end(), n) == isr.end())
        isr.push_back(n);
    std::sort(isr.begin(), isr.end());
    auto before = next.in_sync;
    std::sort(before.begin(), before.end());
    if (isr == before)
      return;
    next.in_sync = isr;
    auto r = call([&] {
      return client_.txn({etcd::compare::modified(keys_.state(k.first, p), it->second.mod_revision),
                          etcd::compare::lease_is(keys_.leader(k.first, p), lease_)},
                         {etcd::op::put(keys_.state(k.first, p), control::encode(next))});
    });
    if (!r)
      return;
    if (!r->succeeded) {
      // Someone else changed it: most likely a new leader in a later epoch;
      // reconcile() gives the partition its new role.
      reread(k.first, p);
      return;
    }
    spdlog::info("cluster: {}/{} epoch {}: in sync now [{}] (was [{}])", topic, p, epoch,
                 fmt::join(isr, ","), fmt::join(before, ","));
    it->second = {std::move(next), r->revision};
  }

  // -- roles ----------------------------------------------------------------------

  void reconcile() {
    std::map<std::uint32_t, std::string> names;
    for (auto& [name, t] : topics_)
      names[t.id] = name;
    std::map<std::string, std::vector<std::string>> leaders_view;
    std::vector<replicated_partition> view;
    struct grant {
      std::shared_ptr<detail::topic_route> route; ///< keeps the partition's slot
      std::uint32_t partition;
      control::partition_state state;
      std::string holder;
      std::int64_t lease;
    };
    std::vector<grant> grants;
    for (auto& [name, t] : topics_) {
      leaders_view[name].assign(t.partitions, std::string{});
      auto route = deps_.ctx->routes.find(name);
      if (!route) {
        create_local(name, t);
      } else if (route->info.id != t.id) {
        if (!id_conflict_logged_[name])
          spdlog::error("cluster: topic {} has id {} on this node but {} in etcd; it was made "
                        "before this node joined a replicated cluster: move its data directory "
                        "away to take the cluster's copy",
                        name, route->info.id, t.id);
        id_conflict_logged_[name] = true;
        route = nullptr;
      }
      for (std::uint32_t p = 0; p < t.partitions; ++p) {
        part_key k{t.id, p};
        auto sit = states_.find(k);
        if (sit == states_.end()) {
          add_missing_state(name, t.id, p);
          continue;
        }
        auto& c = sit->second;
        auto lit = leaders_.find(k);
        bool mine = std::find(c.state.replicas.begin(), c.state.replicas.end(), self_)
                    != c.state.replicas.end();
        if (route && p < route->slots.size() && route->slots[p]->caught_up)
          not_caught_up_.erase(k);
        if (lit != leaders_.end())
          absent_since_.erase(k);
        else if (mine && c.state.is_in_sync(self_) && lease_alive() && my_turn(k, c.state)
                 && not_caught_up_.count(k) == 0)
          elect(name, t.id, p, c);
        lit = leaders_.find(k);
        auto* slot = route && p < route->slots.size() ? route->slots[p].get() : nullptr;
        if (lit != leaders_.end() && lit->second.node == self_
            && hand_over_due(k, states_[k].state)) {
          if (drained(k, slot, states_[k].state.epoch)) {
            draining_.erase(k);
            if (!hand_over(name, k, states_[k].state) && slot != nullptr)
              stop_draining(*slot); // still the leader: it appends again
          }
          lit = leaders_.find(k);
        } else if (draining_.erase(k) > 0 && slot != nullptr) {
          stop_draining(*slot); // no longer due (the preferred replica fell behind)
        }
        const auto& s = states_[k].state;
        std::string holder = lit == leaders_.end() ? std::string{} : lit->second.node;
        // After a hand-over the flag stays set (clearing it now would let the
        // old leader append in the moment before it hears of its new role); a
        // later leadership has another epoch, so it does not count for that.
        if (!holder.empty() && holder == s.leader)
          leaders_view[name][p] = holder;
        view.push_back({name, t.id, p, s, holder});
        if (route && p < route->slots.size())
          grants.push_back({route, p, s, holder, lit == leaders_.end() ? 0 : lit->second.lease});
      }
    }
    // etcd's records are shown before the roles act on them: a leader that
    // acknowledges with a smaller in-sync set (its role has it) is never
    // seen with the set it had before.
    {
      std::unique_lock<std::shared_mutex> guard{view_mutex_};
      partitions_view_ = std::move(view);
    }
    for (auto& g : grants)
      give_role(*g.route->slots[g.partition], g.state, g.holder, g.lease);
    std::unique_lock<std::shared_mutex> guard{view_mutex_};
    leaders_view_ = std::move(leaders_view);
  }

  /// Leaders drift away from placement as nodes fail (the survivors take
  /// over) and never come back by themselves; like Kafka's preferred
  /// leader election, a leader hands a partition to its preferred replica
  /// (the first in placement order) once that one has been in sync for
  /// cluster.leader_rebalance, one partition per period per node.
  bool hand_over_due(const part_key& k, const control::partition_state& s) {
    auto period = deps_.cfg->cluster.leader_rebalance;
    if (period.count() == 0 || s.replicas.empty() || s.leader != self_
        || s.replicas.front() == self_ || !s.is_in_sync(s.replicas.front())) {
      preferred_since_.erase(k);
      return false;
    }
    auto now = clock_type::now();
    auto since = preferred_since_.try_emplace(k, now).first->second;
    if (!draining_.empty() && draining_.count(k) == 0)
      return false; // one hand-over at a time
    return now - since >= period && now - last_handover_ >= period;
  }

  /// Drains the leader of `k` before its hand-over (partition_slot::draining):
  /// true once nothing it appended waits for acknowledgement, or after
  /// drain_limit (then what still waits is answered "indeterminate").
  bool drained(const part_key& k, detail::partition_slot* slot, std::uint32_t epoch) {
    if (slot == nullptr)
      return true;
    auto now = clock_type::now();
    auto [it, fresh] = draining_.try_emplace(k, now);
    if (fresh) {
      slot->drained = false;
      slot->drain_epoch = epoch;
      slot->draining = true;
      poke(*slot);
      return false;
    }
    return slot->drained.load() || now - it->second >= drain_limit;
  }

  void stop_draining(detail::partition_slot& slot) {
    slot.draining = false;
    poke(slot); // the publishes it held go out
  }

  /// Has the partition actor look at its slot (a flush).
  void poke(detail::partition_slot& slot) {
    caf::actor actor;
    {
      std::shared_lock<std::shared_mutex> guard{deps_.ctx->routes.mutex};
      actor = slot.actor;
    }
    if (actor && slot.alive)
      caf::anon_send(actor, flush_atom::value);
  }

  /// Gives up the leader key of `k`: the partition here steps down (it
  /// drained first: see drained()), and the preferred replica, ranked
  /// first, is elected. False when the key could not be given up.
  bool hand_over(const std::string& topic, const part_key& k, const control::partition_state& s) {
    auto r = call([&] {
      return client_.txn({etcd::compare::lease_is(keys_.leader(k.first, k.second), lease_)},
                         {etcd::op::del(keys_.leader(k.first, k.second))});
    });
    last_handover_ = clock_type::now();
    preferred_since_.erase(k);
    if (!r || !r->succeeded)
      return false;
    spdlog::info("cluster: node {} hands {}/{} (epoch {}) back to its preferred leader {}", self_,
                 topic, k.second, s.epoch, s.replicas.front());
    leaders_.erase(k);
    absent_since_[k] = clock_type::now(); // this node's own turn waits its rank
    return true;
  }

  void answer_waiters() {
    auto now = clock_type::now();
    for (auto it = waiters_.begin(); it != waiters_.end();) {
      bool led = false;
      {
        std::shared_lock<std::shared_mutex> guard{view_mutex_};
        auto v = leaders_view_.find(it->topic);
        led = v != leaders_view_.end()
              && std::all_of(v->second.begin(), v->second.end(),
                             [](const std::string& l) { return !l.empty(); });
      }
      if (!led && now < it->deadline) {
        ++it;
        continue;
      }
      it->done(it->answer);
      it = waiters_.erase(it);
    }
  }

  /// The in-sync copies try in the order of the partition's replicas (its
  /// placement), each a little after the one before: leaders spread over
  /// the nodes as placement does, and a dead first choice delays an
  /// election by a fraction of a second only.
  bool my_turn(const part_key& k, const control::partition_state& s) {
    auto now = clock_type::now();
    auto since = absent_since_.try_emplace(k, now).first->second;
    std::size_t rank = 0;
    for (auto& r : s.replicas) {
      if (r == self_)
        break;
      if (s.is_in_sync(r) && r != s.leader)
        ++rank;
    }
    return now - since >= rank * 400ms;
  }

  void give_role(detail::partition_slot& slot, const control::partition_state& s,
                 const std::string& holder, std::int64_t holder_lease) {
    using kind = detail::replica_role::kind;
    auto role = std::make_shared<detail::replica_role>();
    role->epoch = s.epoch;
    role->replicas = s.replicas;
    role->in_sync = s.in_sync;
    bool mine = std::find(s.replicas.begin(), s.replicas.end(), self_) != s.replicas.end();
    if (!holder.empty() && holder == s.leader) {
      role->leader = holder;
      if (holder == self_)
        role->role = holder_lease == lease_ && lease_alive() ? kind::leader : kind::none;
      else if (mine)
        role->role = kind::follower;
    }
    if (role->role == kind::none)
      role->leader = holder == s.leader ? holder : std::string{};
    caf::actor actor;
    {
      std::lock_guard<std::mutex> guard{slot.role_mutex};
      auto& old = slot.role;
      if (old && old->role == role->role && old->epoch == role->epoch && old->leader == role->leader
          && old->in_sync == role->in_sync && old->replicas == role->replicas)
        return;
      slot.role = role;
    }
    {
      std::shared_lock<std::shared_mutex> guard{deps_.ctx->routes.mutex};
      actor = slot.actor;
    }
    if (actor && slot.alive)
      caf::anon_send(actor, role_atom::value);
  }

  void create_local(const std::string& name, const topic_record& t) {
    if (creating_[name])
      return;
    creating_[name] = true;
    auto req = std::make_shared<detail::create_request>();
    req->topic = name;
    req->partitions = t.partitions;
    req->id = t.id;
    req->done = [this, name](std::optional<std::string> err) {
      if (err)
        spdlog::error("cluster: creating topic {} on this node: {}", name, *err);
      post([this, name] { creating_.erase(name); });
    };
    deps_.create_local(std::move(req));
  }

  void add_missing_state(const std::string& topic, std::uint32_t tid, std::uint32_t p) {
    auto s = initial_state(topic, p);
    auto r = call([&] {
      return client_.txn({etcd::compare::absent(keys_.state(tid, p))},
                         {etcd::op::put(keys_.state(tid, p), control::encode(s))});
    });
    if (r && r->succeeded)
      states_[{tid, p}] = {std::move(s), r->revision};
    else if (r)
      reread(tid, p);
  }

  control_deps deps_;
  control::key_space keys_;
  std::string self_;
  etcd::client client_;
  control_stats stats_;

  // The loop's own (only its thread touches these):
  std::int64_t lease_ = 0;
  clock_type::time_point lease_until_{};
  clock_type::time_point next_keepalive_{};
  clock_type::time_point next_load_{};
  bool lease_lost_logged_ = false;
  bool grant_failed_logged_ = false;
  bool loaded_ = false;
  std::map<std::string, topic_record> topics_;
  std::map<part_key, cached_state> states_;
  std::map<part_key, cached_leader> leaders_;
  std::map<part_key, clock_type::time_point> absent_since_; ///< seen without a leader since
  /// Led here while its preferred replica is in sync, since.
  std::map<part_key, clock_type::time_point> preferred_since_;
  /// Partitions whose leader here drains before its hand-over, since when.
  std::map<part_key, clock_type::time_point> draining_;
  /// How long a hand-over waits for the leader to drain.
  static constexpr auto drain_limit = std::chrono::seconds{2};
  clock_type::time_point last_handover_{};
  std::set<part_key> not_caught_up_; ///< with an empty data directory: not electable yet
  bool first_load_done_ = false;
  clock_type::time_point next_resync_{};
  std::int64_t resynced_at_ = 0; ///< the revision of the last full read
  std::map<std::string, bool> creating_;
  std::map<std::string, bool> id_conflict_logged_;
  std::unique_ptr<etcd::watch_handle> watch_;
  struct waiter {
    std::string topic;
    clock_type::time_point deadline;
    callback<std::pair<std::uint32_t, std::uint32_t>> done;
    std::pair<std::uint32_t, std::uint32_t> answer;
  };
  std::vector<waiter> waiters_;

  // Shared with other threads:
  mutable std::shared_mutex view_mutex_;
  std::map<std::string, std::vector<std::string>> leaders_view_;
  std::vector<replicated_partition> partitions_view_;

  std::mutex mutex_;
  std::condition_variable cv_;
  bool stopping_ = false;
  std::deque<std::function<void()>> jobs_;
  std::vector<etcd::watch_event> events_;
  bool watch_reset_ = false;
  std::thread thread_;
};

} // namespace

std::unique_ptr<control_plane> start_control_plane(control_deps deps) {
  return std::make_unique<control_impl>(std::move(deps));
}

} // namespace nerve::actors
