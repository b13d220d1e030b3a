// The partition actor: group-commits publishes to one topic partition and
// delivers its events to every subscribed agent, one consumer group each.
// The delivery logic is consumer_group's (actors/consumer_group.hpp); this
// shell reads the events it wants, takes credits, and turns its effects into
// messages, timers and state writes. Its state is rebuilt from the log on start.
#include <algorithm>
#include <deque>
#include <limits>
#include <map>
#include <random>

#include <nlohmann/json.hpp>
#include <spdlog/fmt/ranges.h>
#include <spdlog/spdlog.h>

#include "actors/consumer_group.hpp"
#include "actors/dlq_actor.hpp"
#include "actors/event_input.hpp"
#include "actors/repl_sessions.hpp"
#include "actors/runtime.hpp"
#include "actors/stored_event.hpp"
#include "actors/tracing.hpp"
#include "config/assert.hpp"
#include "persistence/ids.hpp"
#include "persistence/keys.hpp"

namespace nerve::actors::detail {

namespace {

using json = nlohmann::json;

/// Recent appends, so live delivery does not read back what it just wrote.
constexpr std::size_t tail_cache_events = 4096;
/// Counter snapshots are written at most this often.
constexpr auto counters_every = std::chrono::seconds{1};
/// How long progress (cursors, counters) waits for an append to carry it
/// before it is written on its own.
constexpr auto state_delay = std::chrono::milliseconds{5};

struct group {
  agent_ptr agent;
  group_stats* stats = nullptr;
  std::unique_ptr<consumer_group> engine;
  std::size_t rr = 0;   ///< round-robin position over the agent's instances
  bool retired = false; ///< XGROUP DESTROY: it reads nothing until made again
  /// Where a group with no stored cursor starts (the agent's `start`, or
  /// what XGROUP CREATE asked for on this stream).
  config::start_position start = config::start_position::latest;
};

struct partition_state {
  node_context* ctx = nullptr;
  std::shared_ptr<topic_route> route;
  partition_slot* slot = nullptr;
  std::uint32_t partition = 0;
  std::unique_ptr<persistence::partition_writer> writer;
  /// `writer` is lent to the publish lane (partition_slot::lane).
  bool lent = false;
  bool quitting = false; ///< restarting or stopping: lends nothing

  partition_state() = default;
  partition_state(const partition_state&) = delete;
  partition_state& operator=(const partition_state&) = delete;
  /// Takes the writer back from the lane before it goes.
  ~partition_state();
  std::vector<job_ptr> batch;
  std::size_t batch_events = 0;
  bool flush_scheduled = false;
  bool state_timer = false; ///< a commit_atom for held-back state is on its way
  bool answering = false;   ///< flush() delivers and handles builtin answers now
  std::deque<group_event> tail;
  std::uint64_t durable_end = 0; ///< offsets below are on disk: deliverable
  std::vector<group> groups;
  persistence::state_batch state;
  /// What `state` does to the DLQ, for the DLQ actor once it is committed.
  std::vector<persistence::dlq_change> dlq_notes;
  group_effects fx;              ///< what the engine last asked for
  std::vector<caf::actor> taken; ///< the instance of each credit in `fx.deliveries`
  std::vector<outcome> answered; ///< builtin answers, handled by the next flush
  std::vector<outcome> handling; ///< the answers flush() handles now
  std::chrono::steady_clock::time_point counters_written{};
  bool counters_due = false;   ///< a snapshot was held back by the once-a-second limit
  bool counters_timer = false; ///< a flush for it is scheduled
  // -- replication (cluster step 2); `role` is null when not replicated ----
  std::shared_ptr<const replica_role> role;
  /// A follower as the leader tracks it in this epoch.
  struct follower {
    bool heard = false;            ///< it fetched in this epoch
    std::uint64_t synced = 0;      ///< its synced end (the `from` of its last fetch)
    std::uint64_t session = 0;     ///< of its last fetch
    std::uint64_t shipped_end = 0; ///< the end of what it was sent (or had) in this session
    std::chrono::steady_clock::time_point synced_at{}; ///< when `synced` last grew
    std::uint64_t end_at_fetch = 0;                    ///< this log's end at its previous fetch
    std::chrono::steady_clock::time_point caught_up_at{};
    std::int64_t last_fetch_us = 0;
    std::vector<repl_state_op> state; ///< delivery-state changes not yet shipped
    bool parked = false;              ///< a fetch of its waits for records
    std::uint64_t parked_for = 0;     ///< the follower's token of that fetch
    std::uint64_t parked_round = 0;   ///< the fetch session round it is part of
    fetch_request parked_req;
    std::chrono::steady_clock::time_point parked_at{};
  };
  std::map<std::string, follower> followers;
  std::chrono::steady_clock::time_point led_since{};
  std::chrono::steady_clock::time_point isr_asked{}; ///< the last in-sync change asked for
  std::uint64_t local_durable = 0;                   ///< leader: offsets below are synced here
  std::uint64_t sync_asked_end = 0; ///< leader: a WAL sync was asked for the offsets below this
  caf::actor_addr me;               ///< this actor, for the sync callbacks
  bool groups_ready = true;         ///< leader: groups wait for the first high watermark
  /// Leader: appended batches waiting for the high watermark to pass them.
  struct awaiting {
    std::uint64_t end = 0;
    std::chrono::steady_clock::time_point since;
    std::shared_ptr<std::vector<job_ptr>> jobs;
    std::shared_ptr<std::vector<persistence::append_result>> results;
    std::shared_ptr<std::vector<std::string>> followed;
  };
  std::deque<awaiting> acks;
  std::uint64_t next_token = 1;
  bool fetching = false;                                 ///< follower: a fetch is out
  std::uint64_t fetch_token = 0;                         ///< follower: the token of the fetch out
  std::chrono::steady_clock::time_point fetch_sent_at{}; ///< follower: when it went out
  std::uint64_t fetch_generation = 0;                    ///< bumped by each role change
  std::uint64_t synced_end = 0; ///< follower: its log is on disk below this
  std::uint64_t session = 0;    ///< follower: bumped when its log changes under it
  /// Leader: its latest appends in this epoch, so a fetch reads no disk.
  std::deque<repl_record> recent;
  std::size_t recent_bytes = 0;
  /// Publishes held while the partition has no leader (an election).
  std::chrono::steady_clock::time_point held_since{};
  /// Leader: when it first saw the slot draining (zero: not draining).
  std::chrono::steady_clock::time_point drain_seen_at{};
  bool drain_overdue_logged = false;
  static inline const char* name = "partition";
};

using partition_actor_t = partition_actor::stateful_pointer<partition_state>;

void reclaim_lane(partition_state& st);

partition_state::~partition_state() {
  if (slot != nullptr && writer)
    reclaim_lane(*this);
}

std::int64_t now_us(const partition_state& st) {
  return st.ctx->log->opts().clock();
}

std::string counters_key(const std::string& agent, std::uint32_t topic_id, std::uint32_t p) {
  return "counters/" + agent + "/" + std::to_string(topic_id) + "/" + std::to_string(p);
}

/// The members a group reads of a stored event, by a scan (stored_event.hpp):
/// a DOM of every event a group read back was a fifth of a consumer-group
/// drain's time. False when a member is not what nerve writes.
bool scan_stored(const std::string& text, group_event& e) {
  return stored::for_each_member(text, [&e](std::string_view name, std::string_view value) {
    if (name == "offset") {
      auto o = stored::unsigned_value(value);
      e.offset = o.value_or(e.offset);
      return o.has_value();
    }
    std::string* into = name == "id"       ? &e.id
                        : name == "key"    ? &e.key
                        : name == "type"   ? &e.type
                        : name == "source" ? &e.source
                                           : nullptr;
    if (into == nullptr)
      return true;
    auto text = stored::string_value(value);
    if (text)
      *into = std::move(*text);
    return text.has_value();
  });
}

/// An event read back from the log; `offset` unless the text says otherwise.
group_event from_stored(std::uint64_t offset, std::string text) {
  group_event e;
  e.offset = offset;
  if (!scan_stored(text, e)) {
    e = group_event{};
    e.offset = offset;
    auto j = json::parse(text, nullptr, false);
    if (j.is_object()) {
      e.offset = j.value("offset", offset);
      e.id = j.value("id", "");
      e.key = j.value("key", "");
      e.type = j.value("type", "");
      e.source = j.value("source", "");
    }
  }
  e.json = std::make_shared<const std::string>(std::move(text));
  return e;
}

void schedule_flush(partition_actor_t self) {
  auto& st = self->state;
  if (!st.flush_scheduled) {
    st.flush_scheduled = true;
    self->send(self, flush_atom::value);
  }
}

/// Stages a DLQ entry in the next commit, and its note for the DLQ actor.
void stage_dlq_put(partition_state& st, persistence::dlq_entry e) {
  st.state.put_dlq(e);
  st.dlq_notes.push_back({e.id, std::move(e)});
}

/// Stages the delete of DLQ entry `id` in the next commit, and its note.
void stage_dlq_delete(partition_state& st, const std::string& id) {
  st.state.delete_dlq(id);
  st.dlq_notes.push_back({id, std::nullopt});
}

/// Stages the engine's state changes in the partition's next commit.
struct change_writer {
  partition_state& st;
  const std::string& agent;

  void operator()(const put_pending& p) const {
    st.state.put_pending(agent, st.route->info.id, st.partition, p);
  }
  void operator()(const delete_pending& d) const {
    st.state.delete_pending(agent, st.route->info.id, st.partition, d.offset);
  }
  void operator()(const put_result& r) const { st.state.put_result(r.event_id, agent, r.result); }
  void operator()(const put_attempts& a) const {
    st.state.put_attempts(agent, st.route->info.id, st.partition, a.offset, a.attempts, a.at_us);
  }
  /// In the same batch as the group's next changes: the cursor never
  /// passes a dead letter the DLQ does not hold.
  void operator()(const dlq_handoff& d) const { stage_dlq_put(st, d); }
};

/// Whether this node writes the partition's delivery state: it leads it,
/// or the partition is not replicated.
bool writes_state(const partition_state& st) {
  return !st.role || st.role->role == replica_role::kind::leader;
}

/// Tells the DLQ actor what the commit just made did to the DLQ (it counts
/// and indexes entries; the partitions write them).
void tell_dlq(partition_state& st) {
  if (st.dlq_notes.empty())
    return;
  if (auto dlq = st.ctx->dlq_actor())
    for (auto& n : st.dlq_notes) {
      if (n.put) {
        auto d = letter_of(*n.put);
        d.event.clear(); // the index needs where it is, not the event
        d.error.clear();
        caf::anon_send(dlq, dlq_noted_atom::value, std::move(d));
      } else
        caf::anon_send(dlq, dlq_noted_atom::value, n.id);
    }
  // A DLQ actor that is restarting counts the stored entries when it starts.
  st.dlq_notes.clear();
}

void ship_state(partition_state& st);

/// Restarts the actor after delivery state it made was not written: memory
/// runs ahead of the log, so it starts again from the log.
void restart_for_state(partition_actor_t self, const persistence::error& e) {
  auto& st = self->state;
  spdlog::error("topic={} partition={}: {}; restarting", st.route->info.name, st.partition,
                e.message);
  st.dlq_notes.clear();
  st.quitting = true;
  reclaim_lane(st);
  self->quit(caf::sec::runtime_error);
}

/// Commits the staged delivery state (shipped to the followers first when
/// this node leads a replicated partition). On failure, memory runs ahead
/// of the log: the actor quits to start again from the log.
bool commit_state(partition_actor_t self) {
  auto& st = self->state;
  // The acks made out of order that the cursors have not passed yet go
  // with it (consumer_group::stage_acks).
  for (auto& g : st.groups) {
    if (!g.engine || !g.engine->holds_acks())
      continue;
    group_effects fx;
    g.engine->stage_acks(fx);
    change_writer write{st, g.agent->cfg.name};
    for (auto& c : fx.changes)
      std::visit(write, c);
  }
  if (st.role && !st.state.empty())
    ship_state(st);
  if (auto ok = st.ctx->store->commit(st.state, false); !ok) {
    restart_for_state(self, ok.error());
    return false;
  }
  tell_dlq(st);
  return true;
}

/// Stores `v` unless it is there already: the HTTP side reads these lines,
/// so an unchanged value is not written again.
template <class T, class U>
bool show(std::atomic<T>& a, U v) {
  if (a.load(std::memory_order_relaxed) == static_cast<T>(v))
    return false;
  a.store(static_cast<T>(v), std::memory_order_relaxed);
  return true;
}

/// Shows the engine's counts to the HTTP side; answers whether the group
/// progressed: its cursor moved or deliveries were settled (fewer in flight,
/// a retry or redelivery count changed). New deliveries alone are not
/// progress (the index of GET groups would move twice per event).
bool publish_stats(group& g) {
  auto& e = *g.engine;
  auto& s = *g.stats;
  auto t = e.take_totals();
  for (auto [total, n] : {std::pair{&s.totals.received, t.received},
                          {&s.totals.processed, t.processed},
                          {&s.totals.failed, t.failed},
                          {&s.totals.timed_out, t.timed_out},
                          {&s.totals.retried, t.retried},
                          {&s.totals.dead_lettered, t.dead_lettered}})
    if (n > 0)
      total->fetch_add(n, std::memory_order_relaxed);
  bool moved = show(s.cursor, e.cursor());
  auto in_flight = s.in_flight.load(std::memory_order_relaxed);
  moved |= show(s.in_flight, e.in_flight()) && e.in_flight() < in_flight;
  moved |= show(s.waiting_retry, e.waiting_retry());
  moved |= show(s.redelivering, e.redelivering());
  show(s.last_delivered, e.last_delivered());
  return moved;
}

/// Carries out what group `gi`'s engine asked for: sends its deliveries,
/// stages its state changes, arms its timers.
void apply(partition_actor_t self, std::size_t gi) {
  auto& st = self->state;
  auto& g = st.groups[gi];
  auto& fx = st.fx;
  NERVE_ASSERT(fx.deliveries.size() == st.taken.size(), "one credit per delivery");
  bool inline_builtin = g.agent->cfg.kind == config::agent_kind::builtin;
  // Consecutive deliveries to one instance go in one message: a message per
  // delivery, each dispatched on its own, was a pull queue's main cost.
  std::vector<std::pair<caf::actor, std::vector<delivery>>> out;
  for (std::size_t k = 0; k < fx.deliveries.size(); ++k) {
    auto& d = fx.deliveries[k];
    if (inline_builtin) {
      // A builtin handler is a function call: it runs here, its answer is
      // handled with the next flush, and the credit comes back at once (no
      // message to the instance and back, no copy of the event).
      auto started_ns = st.ctx->tracing ? unix_ns_now() : 0;
      auto a = run_builtin(g.agent->cfg.handler, *d.event);
      if (st.ctx->tracing) {
        attempt_trace t;
        t.event = *d.event;
        t.event_id = d.event_id;
        t.delivery_id = d.delivery_id;
        t.agent = &g.agent->cfg;
        t.instance = d.instance;
        t.attempt = d.attempt;
        t.start_ns = started_ns;
        t.end_ns = unix_ns_now();
        t.ok = a.ok;
        t.error = a.error;
        record_attempt(*st.ctx->tracing, t);
      }
      outcome o;
      o.group = static_cast<std::uint32_t>(gi);
      o.instance = static_cast<std::uint32_t>(d.instance);
      o.offset = d.offset;
      o.attempt = d.attempt;
      o.ok = a.ok;
      o.result = std::move(a.result);
      o.error = std::move(a.error);
      st.answered.push_back(std::move(o));
      g.agent->return_inline_credit(d.instance);
      continue;
    }
    if (out.empty() || out.back().first != st.taken[k])
      out.emplace_back(st.taken[k], std::vector<delivery>{});
    out.back().second.push_back(make_delivery(gi, std::move(d), d.offset));
  }
  for (auto& [to, ds] : out) {
    if (ds.size() == 1)
      self->send(caf::actor_cast<instance_actor>(to), deliver_atom::value, std::move(ds.front()));
    else
      self->send(caf::actor_cast<instance_actor>(to), deliver_atom::value, std::move(ds));
  }
  if (inline_builtin && !fx.deliveries.empty() && !st.answering)
    schedule_flush(self); // flush() handles what it delivered itself
  st.taken.clear();
  change_writer write{st, g.agent->cfg.name};
  std::vector<dlq_handoff> dead;
  for (auto& c : fx.changes) {
    std::visit(write, c);
    if (auto* d = std::get_if<dlq_handoff>(&c))
      dead.push_back(*d);
  }
  if (!fx.timers.empty()) {
    auto now = now_us(st);
    for (auto& t : fx.timers) {
      auto delay = std::chrono::milliseconds{std::max<std::int64_t>(0, (t.due_us - now) / 1000)};
      if (t.failed_attempt > 0 && spdlog::should_log(spdlog::level::debug))
        spdlog::debug("agent={} topic={} partition={} event={}: attempt {} failed ({}); "
                      "retry in {} ms",
                      g.agent->cfg.name, st.route->info.name, st.partition,
                      g.engine->event_id(t.offset), t.failed_attempt,
                      g.engine->last_error(t.offset), delay.count());
      self->delayed_send(self, delay, retry_atom::value, static_cast<std::uint64_t>(gi), t.offset);
    }
  }
  fx.clear();
  if (publish_stats(g)) {
    // seq_cst, with notify()'s load of its waiters: a waiter that came
    // meanwhile either sees the new index or is told.
    st.route->progress.fetch_add(1, std::memory_order_seq_cst);
    st.ctx->progress.notify();
  }
  // The entries are staged: the group passes the events (their deletes of
  // pending records follow in the same batch).
  for (auto& d : dead)
    if (g.engine->dead_lettered(d.offset, d.attempts, fx)) {
      spdlog::warn("agent={} topic={} partition={} event={} dlq={}: moved to the DLQ after {} "
                   "attempts: {}",
                   d.agent, d.topic, d.partition, d.event_id, d.id, d.attempts, d.error);
      apply(self, gi);
    }
}

/// Feeds the group the events after its read position, up to its window:
/// from the tail of recent appends, else from the log.
void fill(partition_actor_t self, group& g) {
  auto& st = self->state;
  auto& e = *g.engine;
  while (auto want = e.wanted()) {
    auto from = e.next_read();
    if (!st.tail.empty() && from >= st.tail.front().offset) {
      for (auto i = from - st.tail.front().offset;
           i < st.tail.size() && want > 0 && st.tail[i].offset < e.end(); ++i, --want)
        e.feed(st.tail[i]);
      if (e.next_read() != from)
        continue;
    }
    auto got = st.ctx->log->read(st.route->info, st.partition, from, want);
    if (!got) {
      spdlog::error("topic={} partition={} agent={}: reading the log: {}", st.route->info.name,
                    st.partition, g.agent->cfg.name, got.error().message);
      break;
    }
    for (auto& text : *got) {
      auto event = from_stored(e.next_read(), std::move(text));
      if (event.offset >= e.end())
        break;
      e.feed(event);
    }
    if (e.next_read() == from) {
      // Retention removed what was not yet delivered: nothing to deliver.
      e.skip_to_end();
      break;
    }
  }
  e.advance(st.fx);
}

/// Gives the engine the events of records it holds without one (recovered
/// or redelivered), read from the store.
void load_events(partition_actor_t self, group& g) {
  auto& st = self->state;
  auto& e = *g.engine;
  if (e.unloaded().empty())
    return;
  auto offsets = e.unloaded(); // loading changes the list
  for (auto offset : offsets) {
    auto stored = st.ctx->store->event_at(st.route->info.id, st.partition, offset);
    if (!stored || !*stored) {
      spdlog::warn("topic={} partition={} agent={}: event at offset {} is gone (retention); "
                   "skipping it",
                   st.route->info.name, st.partition, g.agent->cfg.name, offset);
      e.load(offset, nullptr, st.fx);
      continue;
    }
    auto event = from_stored(offset, std::move(**stored));
    e.load(offset, &event, st.fx);
  }
}

/// Keeps an appended event in the tail cache, which holds consecutive
/// offsets only (fill() indexes it by offset): one that does not follow the
/// last starts it afresh.
void keep_in_tail(partition_state& st, group_event&& e) {
  if (!st.tail.empty() && e.offset != st.tail.back().offset + 1)
    st.tail.clear();
  st.tail.push_back(std::move(e));
  if (st.tail.size() > tail_cache_events)
    st.tail.pop_front();
}

/// Moves what the lane appended for the groups into the tail cache: taken
/// out of the slot under the lane lock, kept without it. With `close`, the
/// lane is shut under the same lock (reclaim_lane).
void take_lane_appended(partition_state& st, bool close) {
  std::deque<group_event> taken;
  {
    std::lock_guard<std::mutex> guard{st.slot->lane_mutex};
    if (close) {
      if (st.slot->lane == st.writer.get())
        st.slot->close_lane();
      st.slot->lane_feeds = false;
    }
    taken.swap(st.slot->lane_appended);
  }
  for (auto& e : taken)
    keep_in_tail(st, std::move(e));
}

/// Takes the writer back from the publish lane: once this returns no lane
/// thread uses it, and everything they appended is in it.
void reclaim_lane(partition_state& st) {
  if (!st.lent)
    return;
  take_lane_appended(st, true);
  st.lent = false;
}

/// Lends the writer to the publish lane while only publishes append to it:
/// no replication role, no batch of its own and no test hook before
/// appends. Anything else takes it back first (reclaim_lane). Consumer
/// groups keep delivering meanwhile: the lane hands them what it appends
/// (take_lane_appended), and the sync thread wakes the actor when it is
/// durable. While an XGROUP CREATE's join is on its way the lane stays shut
/// (partition_slot::joins_pending).
void lend_lane(partition_state& st) {
  if (st.quitting || st.role || !st.batch.empty() || st.ctx->hooks->before_append)
    return reclaim_lane(st);
  if (st.lent)
    return;
  std::lock_guard<std::mutex> guard{st.slot->lane_mutex};
  if (st.slot->joins_pending > 0)
    return;
  // Opened first, then the jobs on their way looked at: a publisher takes
  // its ticket before it looks at the lane (publish_service::submit), so
  // one of the two sees the other and no job of the actor's is overtaken.
  st.slot->lane_open.store(true);
  if (st.slot->to_actor.load() > 0)
    return st.slot->close_lane();
  st.slot->lane_feeds
    = std::any_of(st.groups.begin(), st.groups.end(), [](const group& g) { return !g.retired; });
  st.slot->lane = st.writer.get();
  st.lent = true;
}

/// A single-node partition's durable end as the sync thread left it in the
/// slot: it tells the actor (durable_atom) only when groups wait for it.
void catch_up_durable(partition_state& st) {
  if (!st.role)
    st.durable_end = std::max(st.durable_end, st.slot->durable_end.load());
}

void pump(partition_actor_t self) {
  auto& st = self->state;
  if (!st.groups_ready)
    return;
  catch_up_durable(st);
  // While lent the lane appends: the writer is not this thread's to read,
  // and what is durable was appended (the slot's end rises after the write).
  if (st.lent)
    take_lane_appended(st, false);
  auto end = st.lent ? st.durable_end : std::min(st.writer->next_offset(), st.durable_end);
  for (std::size_t gi = 0; gi < st.groups.size(); ++gi) {
    auto& g = st.groups[gi];
    if (g.retired)
      continue;
    if (st.role)
      g.stats->end = end;
    else
      raise_to(g.stats->end, end); // the durable callback may have shown more already
    g.engine->set_end(end);
    fill(self, g);
    load_events(self, g);
    g.engine->set_paused(g.agent->paused.load());
    agent_credits credits{*g.agent, g.rr, caf::actor_cast<caf::actor>(self), st.taken};
    g.engine->dispatch(credits, st.fx);
    apply(self, gi);
  }
}

void ack(partition_actor_t self, std::size_t gi, std::uint64_t offset, const std::string& result) {
  auto& st = self->state;
  auto& g = st.groups[gi];
  if (auto latency = g.engine->ack(offset, result, now_us(st), st.fx))
    g.stats->totals.delivery.observe(*latency);
  apply(self, gi);
}

void fail(partition_actor_t self, std::size_t gi, std::uint64_t offset, const std::string& error,
          bool timed_out) {
  auto& st = self->state;
  st.groups[gi].engine->fail(offset, error, timed_out, now_us(st), st.fx);
  apply(self, gi);
}

/// A deterministic id for the n-th event emitted by `agent` for `parent`, so
/// a redelivered ack emits the same events again, which dedupe by id.
std::string emitted_id(const std::string& parent, const std::string& agent, std::size_t n) {
  auto hash = [](const std::string& s, std::uint64_t seed) {
    std::uint64_t h = seed;
    for (unsigned char c : s) {
      h ^= c;
      h *= 1099511628211ULL;
    }
    return h;
  };
  auto text = parent + '\0' + agent + '\0' + std::to_string(n);
  auto hi = hash(text, 1469598103934665603ULL);
  auto lo = hash(text, 0x9e3779b97f4a7c15ULL);
  static constexpr char hex[] = "0123456789abcdef";
  std::string out;
  for (int i = 15; i >= 0; --i)
    out += hex[(hi >> (i * 4)) & 0xf];
  for (int i = 15; i >= 0; --i)
    out += hex[(lo >> (i * 4)) & 0xf];
  out.insert(20, "-");
  out.insert(16, "-");
  out.insert(12, "-");
  out.insert(8, "-");
  out[14] = '8'; // UUID version 8: custom
  // The RFC 9562 variant: the top two bits of lo's first digit are 10.
  out[19] = hex[8U | ((lo >> 60) & 3U)];
  return out;
}

/// Validates `emit` (a JSON array) into per-topic publish items carrying the
/// causation chain of `parent`.
tl::expected<std::map<std::string, std::vector<publish_item>>, std::string>
emits_of(const std::string& emit, const std::string& parent_json, const std::string& agent) {
  auto list = parse_json(emit);
  if (!list || !list->is_array())
    return tl::make_unexpected(std::string{"emit must be an array of events"});
  if (list->size() > 1000)
    return tl::make_unexpected(std::string{"at most 1000 events may be emitted at once"});
  auto parent = json::parse(parent_json, nullptr, false);
  auto parent_id = parent.value("id", "");
  std::map<std::string, std::vector<publish_item>> out;
  for (std::size_t i = 0; i < list->size(); ++i) {
    auto e = (*list)[i];
    auto where = "emit[" + std::to_string(i) + "]: ";
    if (!e.is_object() || !e.contains("topic") || !e["topic"].is_string())
      return tl::make_unexpected(where + "needs a \"topic\" string");
    auto topic = e["topic"].get<std::string>();
    if (!valid_topic(topic))
      return tl::make_unexpected(where + "\"" + topic.substr(0, 300) + "\" is not a valid topic");
    for (const char* chain : {"id", "causation_id", "correlation_id", "trace_id"})
      if (e.contains(chain))
        return tl::make_unexpected(where + "\"" + chain + "\" is set by nerve for emitted events");
    e["id"] = emitted_id(parent_id, agent, i);
    e["causation_id"] = parent_id;
    e["correlation_id"] = parent.value("correlation_id", parent_id);
    if (parent.contains("trace_id"))
      e["trace_id"] = parent["trace_id"];
    auto item = event_from_json(e, topic, where);
    if (!item)
      return tl::make_unexpected(item.error());
    out[topic].push_back(std::move(*item));
  }
  return out;
}

void on_outcome(partition_actor_t self, const outcome& o) {
  auto& st = self->state;
  if (o.group >= st.groups.size())
    return;
  auto gi = o.group;
  auto& g = st.groups[gi];
  const auto* event = g.engine->answer(o.offset, o.attempt);
  if (event == nullptr)
    return; // stale: answered after a timeout or a requeue
  g.stats->totals.processing.observe(o.elapsed_us);
  if (!o.ok) {
    fail(self, gi, o.offset, o.error, o.timed_out);
    return;
  }
  if (o.emit.empty()) {
    ack(self, gi, o.offset, o.result);
    return;
  }
  auto emits = emits_of(o.emit, **event, g.agent->cfg.name);
  if (!emits) {
    fail(self, gi, o.offset, "invalid emit: " + emits.error(), false);
    return;
  }
  if (emits->empty()) { // "emit": [] emits nothing: a plain ack
    ack(self, gi, o.offset, o.result);
    return;
  }
  // Traced follow-ups hang under the span of the attempt that emitted them.
  std::uint64_t emitter_span = 0;
  if (st.ctx->tracing) {
    std::string parent_id;
    (void)stored::for_each_member(**event, [&parent_id](std::string_view name, std::string_view v) {
      if (name == "id")
        parent_id = stored::string_value(v).value_or("");
      return false; // the id comes first
    });
    emitter_span = delivery_span_id(g.engine->delivery_id(parent_id, o.attempt));
  }
  g.engine->hold_for_emit(o.offset);
  // Publish every topic's share, then ack once all are durable.
  struct join {
    std::atomic<std::size_t> left{0};
    std::mutex mutex;
    std::string error;
  };
  auto j = std::make_shared<join>();
  j->left = emits->size();
  auto me = caf::actor_cast<caf::actor>(self);
  auto gid = static_cast<std::uint64_t>(gi);
  auto offset = o.offset;
  auto attempt = o.attempt;
  auto res = o.result;
  for (auto& [topic, items] : *emits) {
    auto trace
      = trace_publish(st.ctx->tracing.get(), items, topic, emitter_span, "emit", unix_ns_now());
    st.ctx->publish(topic, std::move(items),
                    [j, me, gid, offset, attempt, res, trace,
                     tracer = st.ctx->tracing](actors::result<std::vector<published>> r) {
                      if (trace && r)
                        record_publish(*tracer, *trace, *r);
                      if (!r) {
                        std::lock_guard<std::mutex> guard{j->mutex};
                        j->error = "emit failed: " + r.error().message;
                      }
                      if (j->left.fetch_sub(1) == 1)
                        caf::anon_send(me, emitted_atom::value, gid, offset, attempt, res,
                                       j->error);
                    });
  }
}

void on_emitted(partition_actor_t self, std::uint64_t gi, std::uint64_t offset,
                std::uint32_t attempt, const std::string& result, const std::string& error) {
  auto& st = self->state;
  if (gi >= st.groups.size() || !st.groups[gi].engine->emitted(offset, attempt))
    return;
  if (!error.empty())
    fail(self, gi, offset, error, false);
  else
    ack(self, gi, offset, result);
}

/// Rebuilds group `gi` from its stored cursor and pending records, its end
/// the partition's durable end; a `fresh` group (XGROUP CREATE) starts over
/// from its `start` whatever an earlier group of its name left.
void recover_group(partition_actor_t self, std::size_t gi, bool fresh = false) {
  auto& st = self->state;
  catch_up_durable(st);
  auto& g = st.groups[gi];
  auto& name = g.agent->cfg.name;
  auto tid = st.route->info.id;
  auto stored = st.ctx->store->cursor(name, tid, st.partition);
  if (!stored)
    throw std::runtime_error("reading cursor of " + name + ": " + stored.error().message);
  std::uint64_t cursor = 0;
  if (*stored && !fresh) {
    cursor = **stored;
  } else {
    // A new consumer group: from the end, or from the oldest stored event.
    cursor = g.start == config::start_position::earliest
               ? st.ctx->log->stats(st.route->info, st.partition).first_offset
             : st.role ? st.durable_end
                       : st.writer->next_offset();
    persistence::state_batch b;
    b.put_cursor(name, tid, st.partition, cursor);
    std::string start;
    persistence::keys::put_u64(start, cursor);
    b.put_meta(group_start_key(name, tid, st.partition), start);
    if (fresh) {
      auto old = st.ctx->store->pending(name, tid, st.partition);
      if (!old)
        throw std::runtime_error("reading pending of " + name + ": " + old.error().message);
      for (auto& rec : *old)
        b.delete_pending(name, tid, st.partition, rec.offset);
    }
    if (auto ok = st.ctx->store->commit(b, false); !ok)
      throw std::runtime_error("storing cursor of " + name + ": " + ok.error().message);
  }
  // Everything between where the group started and its cursor was
  // delivered; otherwise the counters (which outlive a crashed partition
  // actor) keep what they showed.
  auto last_delivered = g.stats->last_delivered.load();
  auto start = group_start(*st.ctx, name, tid, st.partition);
  if (start && *start && cursor > **start)
    last_delivered = static_cast<std::int64_t>(cursor) - 1;
  auto pending = st.ctx->store->pending(name, tid, st.partition);
  if (!pending)
    throw std::runtime_error("reading pending of " + name + ": " + pending.error().message);
  // A replicated partition's cursor came from an earlier leader, below the
  // high watermark it knew; this one's may not have caught up with it yet.
  cursor = std::min(cursor, st.durable_end);
  g.engine->recover(cursor, *pending, st.durable_end, last_delivered, now_us(st), st.fx);
  apply(self, gi);
  auto snapshot = st.ctx->store->meta(counters_key(name, tid, st.partition));
  if (snapshot && *snapshot)
    g.stats->totals.load_json(**snapshot);
  g.stats->end = st.durable_end;
}

/// Stages the counter snapshots; at most once per `counters_every` unless
/// forced. Answers false when it held them back (they are then due later).
bool write_counters(partition_state& st, bool force) {
  auto now = std::chrono::steady_clock::now();
  if (!force && now - st.counters_written < counters_every)
    return false;
  st.counters_written = now;
  st.counters_due = false;
  for (auto& g : st.groups)
    st.state.put_meta(counters_key(g.agent->cfg.name, st.route->info.id, st.partition),
                      g.stats->totals.to_json());
  return true;
}

/// Appends the batch's events as one write; when that fails, answers its
/// jobs with the error and returns nothing. With `state_lost`, the staged
/// delivery state goes into the same write (delivery_store::append_with_state
/// says when it is lost).
std::optional<std::vector<persistence::append_result>>
append_batch(partition_state& st, std::optional<persistence::error>* state_lost = nullptr) {
  if (st.ctx->hooks->before_append)
    st.ctx->hooks->before_append(st.route->info.name, st.partition);
  // The event's text and id move into the write; the job keeps what the
  // consumer groups read afterwards (key, type, source: cache_appended).
  std::vector<persistence::new_event> all;
  all.reserve(st.batch_events);
  for (auto& job : st.batch)
    for (auto& e : job->events)
      all.push_back({std::move(e.id), e.key, std::move(e.fragment), e.type, e.source, e.generated});
  auto appended = state_lost != nullptr
                    ? st.ctx->store->append_with_state(*st.writer, all, st.state, *state_lost)
                    : st.writer->append(all);
  if (!appended) {
    for (auto& job : st.batch)
      job->finish(tl::make_unexpected(appended.error()));
    return std::nullopt;
  }
  return std::move(*appended);
}

/// Keeps the batch's appended events for what reads them next: the tail
/// cache the consumer groups feed from, and (returned, null without
/// followers) the live tails. `keep_json` leaves the results' texts in place
/// for a caller that still needs them; otherwise the tail cache takes them.
std::shared_ptr<std::vector<std::string>>
cache_appended(partition_state& st, std::vector<persistence::append_result>& appended,
               bool keep_json) {
  std::shared_ptr<std::vector<std::string>> followed;
  if (st.ctx->tails.active.load(std::memory_order_relaxed) > 0)
    followed = std::make_shared<std::vector<std::string>>();
  std::size_t at = 0;
  for (auto& job : st.batch) {
    auto n = job->events.size();
    for (std::size_t k = 0; k < n; ++k) {
      auto& r = appended[at + k];
      if (r.status != persistence::append_status::appended)
        continue;
      if (followed)
        followed->push_back(r.json);
      if (st.groups.empty())
        continue;
      auto& e = job->events[k];
      keep_in_tail(st, {r.where.offset, r.where.time_us,
                        std::make_shared<const std::string>(keep_json ? r.json : std::move(r.json)),
                        r.id, e.key, e.type, e.source});
    }
    at += n;
  }
  return followed;
}

// -- replication (cluster step 2, docs/architecture.md "Clustering") -----------------

using role_kind = replica_role::kind;

/// Records a fetch carries at most, and about how many bytes.
constexpr std::size_t fetch_max_events = 2000;
constexpr std::size_t fetch_max_bytes = 4U << 20;
/// How long a leader holds a fetch that finds nothing new.
constexpr auto fetch_park = std::chrono::milliseconds{500};
/// How long a follower waits for a fetch's answer (3x the longest park):
/// after that it takes the answer for lost with its link and fetches again.
constexpr auto fetch_timeout = std::chrono::milliseconds{1500};
/// Delivery-state changes kept per follower that is not fetching.
constexpr std::size_t max_shipped_state = 100000;
/// How long publishes wait for a partition without a leader to get one.
constexpr auto hold_for_leader = std::chrono::milliseconds{2000};
/// How long an appended batch may wait for the high watermark.
constexpr auto ack_timeout = std::chrono::seconds{8};
/// How long a leader holds publishes for a hand-over (the control plane
/// hands over after at most 2 s of draining).
constexpr auto hold_for_handover = std::chrono::seconds{3};

std::string where(const partition_state& st) {
  return st.route->info.name + "/" + std::to_string(st.partition);
}

bool leads(const partition_state& st) {
  return st.role && st.role->role == role_kind::leader;
}

persistence::error not_led(const partition_state& st) {
  std::string who = st.role && !st.role->leader.empty()
                      ? "node " + st.role->leader + " leads it"
                      : "it has no leader now (an election is under way)";
  return persistence::error{persistence::errc::io_error, "partition " + where(st)
                                                           + " is not led by this node: " + who
                                                           + "; retry shortly"};
}

/// Shows the followers to GET /v1/cluster/partitions.
void show_followers(partition_state& st) {
  std::vector<follower_view> view;
  for (auto& [node, f] : st.followers)
    view.push_back({node, f.synced, f.last_fetch_us});
  std::lock_guard<std::mutex> guard{st.slot->role_mutex};
  st.slot->followers = std::move(view);
}

/// Records of the log from `from` on, as chunks of one leader epoch each.
std::vector<repl_chunk> read_chunks(partition_state& st, std::uint64_t from) {
  std::vector<repl_chunk> out;
  auto got = st.ctx->log->read_records(st.route->info, st.partition, from, fetch_max_events,
                                       fetch_max_bytes);
  if (!got) {
    spdlog::error("topic={} partition={}: reading records for a follower: {}", st.route->info.name,
                  st.partition, got.error().message);
    return out;
  }
  const auto& epochs = st.writer->epochs();
  for (auto& r : *got) {
    std::uint32_t epoch = 0;
    for (auto& e : epochs)
      if (e.start_offset <= r.offset)
        epoch = e.epoch;
    if (out.empty() || out.back().epoch != epoch)
      out.push_back({epoch, {}});
    out.back().records.push_back({r.offset, r.time_us, std::move(r.id), std::move(r.json)});
  }
  return out;
}

/// Records from `from` on out of what this leader appended in its epoch
/// (kept in memory): nothing when `from` is older than that.
std::vector<repl_chunk> recent_chunks(partition_state& st, std::uint64_t from) {
  std::vector<repl_chunk> out;
  if (st.recent.empty() || from < st.recent.front().offset)
    return out;
  auto& chunk = out.emplace_back();
  chunk.epoch = st.role->epoch;
  std::size_t bytes = 0;
  for (auto i = from - st.recent.front().offset;
       i < st.recent.size() && chunk.records.size() < fetch_max_events && bytes < fetch_max_bytes;
       ++i) {
    bytes += st.recent[i].json.size();
    chunk.records.push_back(st.recent[i]);
  }
  return out;
}

/// Remembers the records just appended, for the followers' next fetches.
void keep_recent(partition_state& st, const std::vector<persistence::append_result>& appended) {
  for (auto& r : appended) {
    if (r.status != persistence::append_status::appended)
      continue;
    st.recent_bytes += r.json.size();
    st.recent.push_back({r.where.offset, r.where.time_us, r.id, r.json});
  }
  while (!st.recent.empty()
         && (st.recent.size() > fetch_max_events * 4 || st.recent_bytes > fetch_max_bytes * 4)) {
    st.recent_bytes -= st.recent.front().json.size();
    st.recent.pop_front();
  }
}

/// Leader: asks for a WAL sync of everything appended so far (one asked
/// since the last append covers it). The leader's copy is synced once its
/// records are shipped to every other in-sync copy, not when they are
/// appended: the high watermark cannot pass them before that anyway, and
/// the appends made while a round is away share one sync
/// (docs/architecture.md, "When each copy syncs").
void sync_leader(partition_state& st) {
  auto end = st.writer->next_offset();
  if (end <= st.sync_asked_end)
    return;
  st.sync_asked_end = end;
  st.ctx->log->after_durable(
    [me = caf::actor_cast<caf::actor>(st.me), end](std::optional<persistence::error> failure) {
      if (!me)
        return;
      // The partition starts again from its log; its publishers hear
      // "stopped" (their events may be on the followers).
      if (failure)
        caf::anon_send_exit(me, caf::exit_reason::unhandled_exception);
      else
        caf::anon_send(me, durable_atom::value, end);
    },
    true);
}

/// Whether the leader's copy alone decides the high watermark: no other
/// in-sync copy ships, so the leader syncs what it appends at once.
bool syncs_alone(const partition_state& st) {
  const auto& self = st.ctx->replication->self;
  return std::all_of(st.role->in_sync.begin(), st.role->in_sync.end(),
                     [&](const std::string& node) { return node == self; });
}

/// Leader: the least end shipped to the other in-sync copies, which bounds
/// the high watermark (0 while one of them has not fetched in this epoch).
std::uint64_t shipped_to_all(const partition_state& st) {
  const auto& self = st.ctx->replication->self;
  auto least = std::numeric_limits<std::uint64_t>::max();
  for (const auto& node : st.role->in_sync) {
    if (node == self)
      continue;
    auto it = st.followers.find(node);
    least
      = std::min(least, it == st.followers.end() || !it->second.heard ? 0 : it->second.shipped_end);
  }
  return least;
}

fetch_response answer_for(partition_state& st, partition_state::follower& f, std::uint64_t from) {
  fetch_response r;
  r.status = fetch_status::ok;
  r.epoch = st.role->epoch;
  r.high_watermark = st.durable_end;
  r.log_end = st.writer->next_offset();
  if (from < st.writer->next_offset()) {
    r.chunks = recent_chunks(st, from);
    if (r.chunks.empty())
      r.chunks = read_chunks(st, from);
    if (r.chunks.empty() || r.chunks.front().records.front().offset != from) {
      // Retention removed `from`: the follower starts again at the oldest.
      r.chunks.clear();
      r.status = fetch_status::reset;
      r.position = st.ctx->log->stats(st.route->info, st.partition).first_offset;
      return r;
    }
  }
  for (auto& chunk : r.chunks)
    if (!chunk.records.empty())
      f.shipped_end = std::max(f.shipped_end, chunk.records.back().offset + 1);
  if (!r.chunks.empty() && shipped_to_all(st) > st.sync_asked_end)
    sync_leader(st);
  r.state = std::move(f.state);
  f.state.clear();
  return r;
}

/// Answers a follower's fetch `token` of fetch session round `round` (the
/// round's frame goes out with its last answer).
void reply_fetch(const partition_state& st, std::uint64_t round, std::uint64_t token,
                 fetch_response r) {
  st.ctx->replication->sessions->answer(
    round, fetch_answer_item{st.route->info.name, st.partition, token, std::move(r)});
}

/// Answers follower `f`'s parked fetch with what there is for it now.
void answer_parked_fetch(partition_state& st, partition_state::follower& f) {
  f.parked = false;
  reply_fetch(st, f.parked_round, f.parked_for, answer_for(st, f, f.parked_req.from));
}

/// Answers the fetches that waited for records, now that there are some
/// (or, `expired_only`, those that waited fetch_park).
void answer_parked(partition_state& st, bool expired_only) {
  auto now = std::chrono::steady_clock::now();
  for (auto& [node, f] : st.followers)
    if (f.parked && (!expired_only || now - f.parked_at >= fetch_park))
      answer_parked_fetch(st, f);
}

/// Gives every follower the delivery-state changes staged for this commit:
/// they ride in its next fetch answer, in order, without waiting for acks.
void ship_state(partition_state& st) {
  if (!leads(st))
    return;
  auto ops = st.state.ops();
  for (auto& node : st.role->replicas) {
    if (node == st.ctx->replication->self)
      continue;
    auto& f = st.followers[node];
    if (f.state.size() + ops.size() > max_shipped_state) {
      // A follower gone this long gets the state of the next leader it
      // follows; after a failover here its cursors may be behind (redelivery).
      f.state.clear();
      continue;
    }
    for (auto& op : ops)
      f.state.push_back({op.family, op.del, op.key, op.value});
  }
  answer_parked(st, false);
}

/// Whether the control plane asks this leadership to drain.
bool drain_asked(const partition_state& st) {
  return st.slot->draining.load() && st.role && st.slot->drain_epoch.load() == st.role->epoch;
}

/// A draining leader tells the control plane once nothing it appended
/// waits for the high watermark and its followers have every delivery-state
/// change it staged (a DLQ delete answered now is not undone by the next
/// leader).
void note_drained(partition_state& st) {
  if (!st.acks.empty() || !drain_asked(st) || st.slot->drained.load())
    return;
  for (auto& [node, f] : st.followers)
    if (!f.state.empty() && st.role->in_sync_has(node))
      return;
  st.slot->drained = true;
}

/// Whether a flush holds its publishes for a hand-over: while the slot says
/// so, for at most hold_for_handover (a control plane that lost etcd in the
/// middle never finishes it, and the partition then goes on appending).
bool holds_for_handover(partition_state& st) {
  if (!drain_asked(st)) {
    st.drain_seen_at = {};
    return false;
  }
  auto now = std::chrono::steady_clock::now();
  if (st.drain_seen_at == decltype(now){})
    st.drain_seen_at = now;
  if (now - st.drain_seen_at < hold_for_handover)
    return true;
  if (!st.drain_overdue_logged)
    spdlog::warn("topic={} partition={}: the hand-over to the preferred leader did not happen "
                 "within {} ms; appending again",
                 st.route->info.name, st.partition,
                 std::chrono::duration_cast<std::chrono::milliseconds>(hold_for_handover).count());
  st.drain_overdue_logged = true;
  return false;
}

/// The leader finished `acks` up to the high watermark and lets the groups
/// deliver below it.
void finish_acks(partition_actor_t self) {
  auto& st = self->state;
  while (!st.acks.empty() && st.acks.front().end <= st.durable_end) {
    auto a = std::move(st.acks.front());
    st.acks.pop_front();
    answer_jobs(*a.jobs, *a.results);
    if (a.followed && !a.followed->empty())
      st.ctx->tails.deliver(st.route->info.name, *a.followed);
  }
  note_drained(st);
}

/// The high watermark: the least synced end over the in-sync set, this
/// copy included; it only grows, and not while fewer than min_insync
/// copies are in sync (nothing is acknowledged then).
void advance_high_watermark(partition_actor_t self) {
  auto& st = self->state;
  if (!leads(st))
    return;
  auto& hooks = *st.ctx->replication;
  if (st.role->in_sync.size() < hooks.min_insync)
    return;
  std::uint64_t hw = st.local_durable;
  for (auto& node : st.role->in_sync) {
    if (node == hooks.self)
      continue;
    auto it = st.followers.find(node);
    if (it == st.followers.end() || !it->second.heard)
      return; // not yet heard of in this epoch: no figure to count
    hw = std::min(hw, it->second.synced);
  }
  if (hw <= st.durable_end && st.groups_ready)
    return;
  st.durable_end = std::max(st.durable_end, hw);
  raise_to(st.slot->high_watermark, st.durable_end);
  raise_to(st.slot->durable_end, st.durable_end);
  if (!st.groups_ready) {
    // The groups start once the high watermark is known: their cursors,
    // written by an earlier leader, are below it.
    st.groups_ready = true;
    for (std::size_t gi = 0; gi < st.groups.size(); ++gi)
      recover_group(self, gi);
  }
  // The followers hear of it in their next answer (records, state, or a
  // parked fetch's 500 ms): answering a parked fetch for the high
  // watermark alone would end its fetch session round for that partition
  // while the others stay parked, and the follower would get nothing new
  // for any of them until they expire.
  finish_acks(self);
  if (!st.groups.empty())
    schedule_flush(self);
}

/// Asks the control plane for another in-sync set, at most once a second.
void ask_in_sync(partition_state& st, std::vector<std::string> in_sync, const std::string& why) {
  auto now = std::chrono::steady_clock::now();
  if (now - st.isr_asked < std::chrono::seconds{1})
    return;
  st.isr_asked = now;
  std::sort(in_sync.begin(), in_sync.end());
  spdlog::info("topic={} partition={} epoch={}: asking for in-sync set [{}]: {}",
               st.route->info.name, st.partition, st.role->epoch, fmt::join(in_sync, ","), why);
  st.ctx->replication->change_in_sync(st.route->info.name, st.partition, st.role->epoch,
                                      std::move(in_sync));
}

/// A follower's fetch `token` in fetch session round `round`: answered now,
/// or parked until there are records (at most fetch_park, or until another
/// partition of the round has some: unpark_atom).
void on_fetch(partition_actor_t self, const fetch_request& req, std::uint64_t token,
              std::uint64_t round) {
  auto& st = self->state;
  fetch_response stale;
  stale.status = fetch_status::stale;
  if (!leads(st) || req.epoch != st.role->epoch) {
    stale.epoch = st.role ? st.role->epoch : 0;
    stale.error = "node " + st.ctx->replication->self + " does not lead " + where(st) + " in epoch "
                  + std::to_string(req.epoch);
    return reply_fetch(st, round, token, stale);
  }
  if (std::find(st.role->replicas.begin(), st.role->replicas.end(), req.node)
      == st.role->replicas.end()) {
    stale.error = "node " + req.node + " holds no copy of " + where(st);
    return reply_fetch(st, round, token, stale);
  }
  // Divergence: the follower's records past where its last epoch ends in
  // this leader's history were never acknowledged; it truncates them.
  // The leader's history may not know the follower's last epoch at all (a
  // leader that appended and lost its leadership): then the follower's
  // records of that epoch are past `end` or differ, and it truncates to the
  // end of `epoch` in its own history too (KIP-101).
  auto [epoch, end] = st.writer->end_of_epoch(req.last_epoch);
  if (req.from > end || epoch != req.last_epoch) {
    fetch_response r;
    r.status = fetch_status::diverged;
    r.epoch = st.role->epoch;
    r.position = end;
    r.position_epoch = epoch;
    return reply_fetch(st, round, token, r);
  }
  auto& f = st.followers[req.node];
  if (f.parked) // an earlier fetch of its, lost on the way back: superseded
    answer_parked_fetch(st, f);
  auto now = std::chrono::steady_clock::now();
  if (!f.heard || req.from >= f.end_at_fetch)
    f.caught_up_at = now;
  // Below `from` its log agrees with this one (checked above); what it says
  // is synced counts up to there, and up to what it is sent from now on.
  auto synced = std::min(req.synced, req.from);
  if (!f.heard || synced > f.synced)
    f.synced_at = now;
  if (!f.heard || f.session != req.session)
    f.synced = synced;
  else
    f.synced = std::max(f.synced, synced);
  f.heard = true;
  f.session = req.session;
  f.shipped_end = req.from;
  f.end_at_fetch = st.writer->next_offset();
  f.last_fetch_us = persistence::system_clock_us();
  show_followers(st);
  advance_high_watermark(self);
  if (!st.role->in_sync_has(req.node) && req.from >= st.durable_end) {
    auto in_sync = st.role->in_sync;
    in_sync.push_back(req.node);
    ask_in_sync(st, std::move(in_sync), "node " + req.node + " caught up");
  }
  if (req.from < st.writer->next_offset() || !f.state.empty()
      || !st.ctx->replication->sessions->may_park(round, {st.route->info.name, st.partition}))
    return reply_fetch(st, round, token, answer_for(st, f, req.from));
  f.parked = true;
  f.parked_for = token;
  f.parked_round = round;
  f.parked_req = req;
  // The tick answers it once it waited fetch_park (a timer per fetch would
  // wake CAF's clock thread for each).
  f.parked_at = std::chrono::steady_clock::now();
}

/// A follower synced what it was sent: the high watermark may move.
void on_follower_synced(partition_actor_t self, const fetch_request& req) {
  auto& st = self->state;
  if (!leads(st) || req.epoch != st.role->epoch)
    return;
  auto it = st.followers.find(req.node);
  if (it == st.followers.end() || !it->second.heard || it->second.session != req.session)
    return; // from before its log was checked: the next fetch says it again
  auto& f = it->second;
  auto synced = std::min(req.synced, f.shipped_end);
  if (synced <= f.synced)
    return;
  f.synced = synced;
  f.synced_at = std::chrono::steady_clock::now();
  advance_high_watermark(self);
}

/// The leader's periodic check: a follower of the in-sync set that has not
/// caught up for cluster.replica_lag leaves it.
void check_in_sync(partition_actor_t self) {
  auto& st = self->state;
  if (!leads(st))
    return;
  auto& hooks = *st.ctx->replication;
  auto now = std::chrono::steady_clock::now();
  std::vector<std::string> keep;
  std::string dropped;
  for (auto& node : st.role->in_sync) {
    if (node != hooks.self) {
      auto it = st.followers.find(node);
      auto since
        = it == st.followers.end() || !it->second.heard ? st.led_since : it->second.caught_up_at;
      // One that fetches but whose disk does not sync (a hung fsync) holds
      // every acknowledgement: its synced end must move too.
      if (it != st.followers.end() && it->second.heard
          && it->second.synced < st.writer->next_offset())
        since = std::min(since, it->second.synced_at);
      if (now - since > hooks.replica_lag) {
        dropped += (dropped.empty() ? "" : ", ") + node;
        continue;
      }
    }
    keep.push_back(node);
  }
  if (!dropped.empty())
    ask_in_sync(st, std::move(keep),
                "node(s) " + dropped + " did not catch up within cluster.replica_lag");
}

void send_fetch(partition_actor_t self);

/// The follower's log changed under what it told its leader (a truncation,
/// a new role): what it said was synced no longer counts.
void log_changed(partition_state& st) {
  ++st.session;
  ++st.fetch_generation; // a sync registered before speaks of the old log
  st.synced_end = std::min(st.synced_end, st.writer->next_offset());
  st.slot->log_end = st.writer->next_offset();
}

/// After the next WAL sync, the follower tells its leader how far it is synced.
/// A replicated partition's syncs are paced (event_log::after_durable): the
/// applies of one fetch session round, and the appends of the partitions a
/// node leads, share one sync. A single node's are not (measured: no gain).
void sync_then_tell(partition_actor_t self) {
  auto& st = self->state;
  st.ctx->log->after_durable(
    [me = caf::actor_cast<caf::actor>(self), gen = st.fetch_generation,
     end = st.writer->next_offset()](std::optional<persistence::error> failure) {
      if (failure)
        caf::anon_send_exit(me, caf::exit_reason::unhandled_exception);
      else
        caf::anon_send(me, synced_atom::value, gen, end);
    },
    true);
}

void on_fetched(partition_actor_t self, fetch_response& r) {
  auto& st = self->state;
  st.fetching = false;
  if (!st.role || st.role->role != role_kind::follower)
    return;
  auto fail = [&](const std::string& what, const std::string& why) {
    spdlog::error("topic={} partition={}: {}: {}; fetching again", st.route->info.name,
                  st.partition, what, why);
  };
  switch (r.status) {
    case fetch_status::stale:
      spdlog::debug("topic={} partition={}: fetch refused: {}", st.route->info.name, st.partition,
                    r.error);
      return; // the control plane's next role, or the tick, fetches again
    case fetch_status::diverged: {
      auto to = std::min(r.position, st.writer->end_of_epoch(r.position_epoch).second);
      spdlog::warn("topic={} partition={}: truncating to offset {} (epoch {} ends at {} on "
                   "leader {}); offsets from there were never acknowledged",
                   st.route->info.name, st.partition, to, r.position_epoch, r.position,
                   st.role->leader);
      auto before = std::pair{st.writer->next_offset(), st.writer->last_epoch()};
      if (auto ok = st.writer->truncate_to(to); !ok)
        return fail("truncating", ok.error().message);
      log_changed(st);
      // A truncation that changed nothing would meet the same answer: the
      // tick fetches again instead of a loop at full speed.
      if (before == std::pair{st.writer->next_offset(), st.writer->last_epoch()}) {
        spdlog::error("topic={} partition={}: truncating to offset {} changed nothing; fetching "
                      "again on the tick",
                      st.route->info.name, st.partition, to);
        return;
      }
      return send_fetch(self);
    }
    case fetch_status::reset:
      spdlog::warn("topic={} partition={}: leader {} keeps offsets from {} only; starting there",
                   st.route->info.name, st.partition, st.role->leader, r.position);
      if (auto ok = st.writer->reset_to(r.position); !ok)
        return fail("moving to the leader's oldest offset", ok.error().message);
      log_changed(st);
      st.synced_end = st.writer->next_offset(); // reset_to syncs
      return send_fetch(self);
    case fetch_status::ok:
      break;
  }
  bool applied = false;
  for (auto& chunk : r.chunks) {
    if (chunk.records.empty())
      continue;
    std::vector<persistence::replica_record> records;
    records.reserve(chunk.records.size());
    for (auto& rec : chunk.records)
      records.push_back({rec.offset, rec.time_us, std::move(rec.id), std::move(rec.json)});
    if (auto ok = st.writer->apply(chunk.epoch, records); !ok)
      return fail("storing the leader's records", ok.error().message);
    applied = true;
  }
  if (!r.state.empty()) {
    std::vector<persistence::state_op> ops;
    ops.reserve(r.state.size());
    for (auto& op : r.state) {
      ops.push_back({op.family, op.del, std::move(op.key), std::move(op.value)});
      if (auto change = persistence::dlq_change_of(ops.back()))
        st.dlq_notes.push_back(std::move(*change));
    }
    auto batch = persistence::state_batch::from_ops(std::move(ops));
    if (!batch) {
      st.dlq_notes.clear();
      spdlog::error("topic={} partition={}: the leader's delivery state: {}", st.route->info.name,
                    st.partition, batch.error().message);
    } else if (auto ok = st.ctx->store->commit(*batch, false); !ok) {
      st.dlq_notes.clear();
      return fail("storing the leader's delivery state", ok.error().message);
    }
    tell_dlq(st); // this copy's DLQ entries are counted, not listed, while it follows
    applied = true;
  }
  auto end = st.writer->next_offset();
  st.slot->log_end = end;
  auto hw = std::min(r.high_watermark, end);
  if (end >= r.high_watermark)
    st.slot->caught_up = true;
  raise_to(st.slot->high_watermark, hw);
  raise_to(st.slot->durable_end, hw);
  if (!applied)
    return send_fetch(self);
  sync_then_tell(self);
  // With more waiting at the leader, the next fetch goes out now and the
  // leader hears of the sync on its own; otherwise the fetch after the sync
  // says it (one message fewer per round when the follower keeps up).
  if (r.log_end > end)
    send_fetch(self);
}

/// This follower's position for its leader: the end of its log, how far it
/// is synced, and in which session.
fetch_request position_of(const partition_state& st) {
  fetch_request req{st.route->info.name,     st.partition,
                    st.role->epoch,          st.writer->next_offset(),
                    st.writer->last_epoch(), st.ctx->replication->self};
  req.synced = std::min(st.synced_end, req.from);
  req.session = st.session;
  return req;
}

void send_fetch(partition_actor_t self) {
  auto& st = self->state;
  if (st.fetching || !st.role || st.role->role != role_kind::follower)
    return;
  auto token = st.next_token++;
  if (!st.ctx->replication->sessions->fetch(st.role->leader, token, position_of(st)))
    return; // the link is down: the tick tries again
  st.fetching = true;
  st.fetch_token = token;
  st.fetch_sent_at = std::chrono::steady_clock::now(); // the tick gives it up after fetch_timeout
}

/// Answers the first `n` batches waiting for the high watermark as
/// indeterminate: they are appended here and may be on followers, so a
/// later leader may or may not keep them.
void give_up_acks(partition_state& st, std::size_t n, const std::string& why) {
  for (; n > 0 && !st.acks.empty(); --n) {
    for (auto& job : *st.acks.front().jobs)
      job->finish(tl::make_unexpected(persistence::error{
        persistence::errc::io_error,
        "indeterminate: partition " + where(st) + " appended the events but did not have them "
          + "on its in-sync copies: " + why + "; they may or may not be kept: retry with the "
          + "same id"}));
    st.acks.pop_front();
  }
}

/// The leader's periodic check of what waits for the high watermark: with
/// fewer in-sync copies than min_insync nothing will pass it, and nothing
/// waits longer than ack_timeout (the publisher retries with its ids).
void check_acks(partition_state& st) {
  if (st.acks.empty())
    return;
  auto& hooks = *st.ctx->replication;
  if (st.role->in_sync.size() < hooks.min_insync)
    return give_up_acks(st, st.acks.size(),
                        "its in-sync set shrank below cluster.min_insync ("
                          + std::to_string(hooks.min_insync) + ")");
  auto now = std::chrono::steady_clock::now();
  std::size_t old = 0;
  while (old < st.acks.size() && now - st.acks[old].since > ack_timeout)
    ++old;
  if (old > 0)
    give_up_acks(
      st, old,
      "its followers did not confirm them within "
        + std::to_string(std::chrono::duration_cast<std::chrono::seconds>(ack_timeout).count())
        + " s");
}

/// Ends this actor for its successor in the partition's new role: a leader
/// that is deposed answers what it appended but did not acknowledge as
/// indeterminate (the next leader may or may not keep it).
void step_down(partition_actor_t self, const std::string& why) {
  auto& st = self->state;
  give_up_acks(st, st.acks.size(), "it changed leader (" + why + ")");
  for (auto& job : st.batch)
    job->finish(tl::make_unexpected(not_led(st)));
  st.batch.clear();
  for (auto& [node, f] : st.followers)
    if (f.parked) {
      fetch_response r;
      r.status = fetch_status::stale;
      r.error = why;
      f.parked = false;
      reply_fetch(st, f.parked_round, f.parked_for, r);
    }
  spdlog::info("topic={} partition={}: {}; restarting in the new role", st.route->info.name,
               st.partition, why);
  write_counters(st, true);
  if (!st.state.empty() && st.ctx->store->commit(st.state, false))
    tell_dlq(st);
  self->quit(caf::exit_reason::user_shutdown);
}

/// The control plane changed the partition's role: the same leadership
/// carries on with its new in-sync set; anything else restarts the actor.
/// Takes role `next` in place: a partition that does not lead keeps no
/// delivery state, so it starts to follow or lead as it would on start-up.
void become(partition_actor_t self, std::shared_ptr<const replica_role> next) {
  auto& st = self->state;
  if (st.role && st.role->role == role_kind::follower
      && (next->role != role_kind::follower || next->leader != st.role->leader))
    // Its leader's fetch session does not wait for it any more.
    st.ctx->replication->sessions->forget(st.role->leader, {st.route->info.name, st.partition});
  st.role = std::move(next);
  ++st.fetch_generation; // an answer to an earlier fetch is not applied
  st.fetching = false;
  st.followers.clear();
  st.recent.clear();
  st.recent_bytes = 0;
  if (leads(st)) {
    if (auto ok = st.writer->begin_epoch(st.role->epoch); !ok) {
      spdlog::error("topic={} partition={}: cannot lead in epoch {}: {}", st.route->info.name,
                    st.partition, st.role->epoch, ok.error().message);
      st.role = std::make_shared<const replica_role>();
      return;
    }
    st.led_since = std::chrono::steady_clock::now();
    // A drain of an earlier leadership left in the slot is not this one's
    // (drain_epoch); one of this epoch (this actor restarted while it
    // drained) goes on.
    st.drain_seen_at = {};
    st.drain_overdue_logged = false;
    st.durable_end = std::min(st.writer->next_offset(), st.slot->high_watermark.load());
    spdlog::info("topic={} partition={}: leading in epoch {} from offset {} (in sync: {})",
                 st.route->info.name, st.partition, st.role->epoch, st.writer->next_offset(),
                 fmt::join(st.role->in_sync, ","));
    // Counted as synced here once what was written before is synced.
    st.sync_asked_end = 0;
    sync_leader(st);
  } else if (st.role->role == role_kind::follower) {
    // A new session with this leader: nothing is known synced until the
    // next WAL sync says so.
    ++st.session;
    st.synced_end = 0;
    sync_then_tell(self);
    send_fetch(self);
  }
  show_followers(st);
  if (!st.batch.empty())
    schedule_flush(self); // publishes held while there was no leader
}

void on_role(partition_actor_t self) {
  auto& st = self->state;
  auto next = st.slot->current_role();
  if (!st.role || !next)
    return;
  bool same = next->role == st.role->role && next->epoch == st.role->epoch
              && next->leader == st.role->leader;
  if (!same && !leads(st))
    return become(self, std::move(next));
  if (!same) {
    std::string why = next->role == role_kind::leader
                        ? "this node leads it now, in epoch " + std::to_string(next->epoch)
                      : next->leader.empty() ? "it has no leader now"
                                             : "node " + next->leader + " leads it in epoch "
                                                 + std::to_string(next->epoch);
    return step_down(self, why);
  }
  st.role = std::move(next);
  if (leads(st)) {
    // A shrunken set may let the watermark pass what waited for a follower,
    // or leave too few copies for anything to pass it; a set of this copy
    // alone waits for its sync, which no ship asks for now.
    if (syncs_alone(st))
      sync_leader(st);
    advance_high_watermark(self);
    check_acks(st);
  }
}

/// The leader's half of the group commit: appends (with fewer than
/// min_insync copies in sync, nothing), and answers the publishers once the
/// high watermark passes their events.
void flush_replicated(partition_actor_t self) {
  auto& st = self->state;
  auto& hooks = *st.ctx->replication;
  auto now = std::chrono::steady_clock::now();
  if (st.role->role == role_kind::none
      && (st.held_since == decltype(now){} || now - st.held_since < hold_for_leader)) {
    // No leader yet (a new topic, an election): held for a moment, since
    // this node may be the one elected; the tick flushes again.
    if (st.held_since == decltype(now){})
      st.held_since = now;
    return;
  }
  st.held_since = {};
  if (leads(st) && holds_for_handover(st)) {
    // Handing over: nothing new is appended; the publishes wait for the
    // next leader (they are answered "retry" when the role changes). flush()
    // told the control plane already if the drain is done.
    return;
  }
  if (!leads(st)) {
    for (auto& job : st.batch)
      job->finish(tl::make_unexpected(not_led(st)));
  } else if (st.role->in_sync.size() < hooks.min_insync) {
    for (auto& job : st.batch)
      job->finish(tl::make_unexpected(persistence::error{
        persistence::errc::io_error,
        "partition " + where(st) + " has " + std::to_string(st.role->in_sync.size()) + " of "
          + std::to_string(st.role->replicas.size()) + " copies in sync, fewer than "
          + "cluster.min_insync (" + std::to_string(hooks.min_insync)
          + "): not enough in-sync replicas; retry shortly"}));
  } else {
    if (auto appended = append_batch(st)) {
      auto followed = cache_appended(st, *appended, true); // the followers get the texts too
      keep_recent(st, *appended);
      auto end = st.writer->next_offset();
      st.slot->log_end = end;
      st.acks.push_back(
        {end, std::chrono::steady_clock::now(),
         std::make_shared<std::vector<job_ptr>>(std::move(st.batch)),
         std::make_shared<std::vector<persistence::append_result>>(std::move(*appended)),
         std::move(followed)});
      // Parked fetches take them now; once every in-sync follower has them,
      // answer_for asks for this copy's sync.
      answer_parked(st, false);
      if (syncs_alone(st))
        sync_leader(st);
      // Events already acknowledged (duplicates only) need no watermark.
      finish_acks(self);
    }
  }
  st.batch.clear();
  st.batch_events = 0;
}

/// Appends the batch of a partition that is not replicated, with the
/// delivery state staged so far in the same write, and answers its
/// publishers once it is durable. False when the actor restarts.
bool append_local(partition_actor_t self) {
  auto& st = self->state;
  std::optional<persistence::error> state_lost;
  if (auto appended = append_batch(st, &state_lost)) {
    // Followers of the topic get the events once durable, like publishers.
    auto followed = cache_appended(st, *appended, false);
    // Publishers are answered, and agents see the events, once they are
    // durable; meanwhile this partition goes on with its next batch.
    auto jobs = std::make_shared<std::vector<job_ptr>>(std::move(st.batch));
    auto results = std::make_shared<std::vector<persistence::append_result>>(std::move(*appended));
    st.ctx->log->after_durable(
      [jobs, results, me = caf::actor_cast<caf::actor>(self), slot = st.slot,
       end = st.writer->next_offset(), followed, ctx = st.ctx,
       topic = st.route->info.name](std::optional<persistence::error> failure) {
        const bool groups = !failure && raise_durable(*slot, end);
        // The actor hears of it before any publisher does: a fetch that
        // follows a 201 or +OK (barrier_atom) finds the events handed out.
        // Without groups nothing waits for it (the actor catches up from
        // the slot when it needs it, catch_up_durable): no wake-up of a CAF
        // thread per partition per sync.
        if (groups)
          caf::anon_send(me, durable_atom::value, end);
        if (failure)
          for (auto& job : *jobs)
            job->finish(tl::make_unexpected(*failure));
        else
          answer_jobs(*jobs, *results);
        if (!failure && followed && !followed->empty())
          ctx->tails.deliver(topic, *followed);
      });
  }
  st.batch.clear();
  st.batch_events = 0;
  if (state_lost) {
    restart_for_state(self, *state_lost);
    return false;
  }
  return true;
}

/// flush() with the writer its own.
void flush_now(partition_actor_t self) {
  auto& st = self->state;
  st.flush_scheduled = false;
  if (leads(st))
    note_drained(st); // the control plane pokes a draining leader with a flush
  if (!st.batch.empty() && st.role)
    flush_replicated(self);
  // The batch first, so its write and sync start at once; it carries the
  // delivery state staged so far (the progress earlier flushes held back).
  if (!st.role && !st.batch.empty() && !append_local(self))
    return;
  // Builtin answers are handled here, so an event's delivery and its ack
  // share a flush and its commit; acks make room for the next deliveries.
  // A few rounds at most: what is left waits for the next flush.
  st.answering = true;
  pump(self);
  for (int round = 0; round < 4 && !st.answered.empty(); ++round) {
    st.handling.swap(st.answered);
    for (auto& o : st.handling)
      on_outcome(self, o);
    st.handling.clear();
    pump(self);
  }
  st.answering = false;
  if (!st.answered.empty())
    schedule_flush(self);
  for (auto& g : st.groups)
    if (auto cursor = g.engine->take_cursor())
      st.state.put_cursor(g.agent->cfg.name, st.route->info.id, st.partition, *cursor);
  // Counters change with every delivery; their snapshot is written with the
  // next state change at most once a second, and a held-back snapshot is
  // written by a timer, so an idle partition's counters are at most a second
  // behind on disk (and survive kill -9 up to that second).
  if (!st.state.empty() || st.counters_due) {
    if (!write_counters(st, false)) {
      st.counters_due = true;
      if (!st.counters_timer) {
        st.counters_timer = true;
        self->delayed_send(self, counters_every, counters_atom::value);
      }
    }
  }
  bool acks_held = std::any_of(st.groups.begin(), st.groups.end(),
                               [](const group& g) { return g.engine && g.engine->holds_acks(); });
  if (st.state.empty() && !acks_held)
    return tell_dlq(st);
  if (!st.role && (st.state.empty() || st.state.progress_only())) {
    // Progress alone (cursors, counters) waits for the next append to carry
    // it, at most state_delay: a write of its own per flush cost as much as
    // the delivery itself, and under load the next flush appends at once.
    // Unsynced, it was never safe from a power cut before the next sync; a
    // kill -9 within the delay delivers those events again, as at-least-once
    // allows.
    if (!st.state_timer) {
      st.state_timer = true;
      self->delayed_send(self, state_delay, commit_atom::value);
    }
    return;
  }
  commit_state(self); // what no append carried
}

void flush(partition_actor_t self) {
  // Deliveries and their acks leave the writer with the lane; a batch of
  // the actor's own takes it back.
  if (!self->state.batch.empty())
    reclaim_lane(self->state);
  flush_now(self);
  lend_lane(self->state);
}

/// A consumer group engine for group `g` of this partition.
std::unique_ptr<consumer_group> new_engine(const partition_state& st, const group& g) {
  return std::make_unique<consumer_group>(
    g.agent->cfg, group_identity{st.route->info.name, st.route->info.id, st.partition, {}, {}},
    std::random_device{}());
}

/// Adds the consumer group `gs` stands for (not recovered yet); `start`
/// overrides the agent's for a group with no stored cursor.
void add_group(partition_state& st, group_stats* gs, std::optional<config::start_position> start) {
  group g;
  g.agent = st.ctx->agents.at(gs->agent_index);
  g.stats = gs;
  g.start = start.value_or(g.agent->cfg.start);
  g.engine = new_engine(st, g);
  st.groups.push_back(std::move(g));
}

/// XGROUP CREATE made group `agent` read this partition: it starts now
/// (once the groups are, on a replicated partition) from its start or end,
/// afresh (what a destroyed group of that name left is dropped).
void join_group(partition_actor_t self, const std::string& agent, bool earliest) {
  auto& st = self->state;
  auto start = earliest ? config::start_position::earliest : config::start_position::latest;
  std::optional<std::size_t> at;
  for (std::size_t gi = 0; gi < st.groups.size(); ++gi)
    if (st.groups[gi].agent->cfg.name == agent) {
      if (!st.groups[gi].retired)
        return; // this actor started after the group was added to the slot
      at = gi;
    }
  if (at) {
    auto& g = st.groups[*at];
    g.retired = false;
    g.start = start;
    g.engine = new_engine(st, g);
  } else {
    for (auto* gs : st.slot->group_list())
      if (gs->agent == agent)
        add_group(st, gs, start);
    if (st.groups.empty() || st.groups.back().agent->cfg.name != agent)
      return;
    at = st.groups.size() - 1;
  }
  if (st.groups_ready) {
    recover_group(self, *at, true);
    schedule_flush(self);
  }
}

/// XGROUP DESTROY: group `agent` stops reading this partition. Its engine
/// becomes an idle one at the end, so late answers and timers of its old
/// deliveries find nothing; what it stored stays until an XGROUP CREATE of
/// its name starts it afresh.
void leave_group(partition_actor_t self, const std::string& agent) {
  auto& st = self->state;
  catch_up_durable(st);
  for (auto& g : st.groups)
    if (g.agent->cfg.name == agent && !g.retired) {
      g.retired = true;
      g.engine = new_engine(st, g);
      g.engine->recover(st.durable_end, {}, st.durable_end, -1, now_us(st), st.fx);
      st.fx.clear();
    }
}

partition_actor::behavior_type partition_behavior(partition_actor_t self, node_context* ctx,
                                                  const std::shared_ptr<topic_route>& route,
                                                  std::uint32_t p) {
  auto& st = self->state;
  st.ctx = ctx;
  st.me = self->address();
  st.route = route;
  st.slot = route->slots[p].get();
  st.partition = p;
  {
    // An earlier actor of this partition may have lent its writer: closed
    // before this one's is made, so it recovers every append the lane made
    // (and reads them from the log, not from what the lane kept for it).
    std::lock_guard<std::mutex> guard{st.slot->lane_mutex};
    st.slot->close_lane();
    st.slot->lane_appended.clear();
    st.slot->lane_feeds = false;
    // It finds every group in the slot: joins sent to the actor before it
    // are done (one sent to that one after this keeps the lane shut and
    // publishes on the actor's path until the partition's next actor).
    st.slot->joins_pending = 0;
  }
  st.writer = std::make_unique<persistence::partition_writer>(*ctx->log, route->info, p);
  st.durable_end = st.writer->next_offset();
  if (ctx->replication) {
    st.role = std::make_shared<const replica_role>();
    st.groups_ready = false;
    st.slot->log_end = st.durable_end;
    // Offsets below the high watermark are on every in-sync copy; the rest
    // of this log may never have been acknowledged.
    st.durable_end = std::min(st.durable_end, st.slot->high_watermark.load());
    if (auto role = st.slot->current_role())
      become(self, std::move(role));
  } else {
    raise_to(st.slot->durable_end, st.durable_end);
  }
  for (auto* gs : st.slot->group_list())
    if (!gs->retired)
      add_group(st, gs, std::nullopt);
  if (st.groups_ready)
    for (std::size_t gi = 0; gi < st.groups.size(); ++gi)
      recover_group(self, gi);
  st.slot->recovered = true; // the node is ready once every partition is
  schedule_flush(self);      // deliver the backlog (and lend the writer to the lane)
  if (st.role) {
    show_followers(st);
    self->send(self, tick_atom::value);
  }
  return {
    [=](publish_atom, publish_job& job) {
      auto& st = self->state;
      // The lane shut first, then the ticket given back: from here on the
      // job waits in the batch, and what the partition is sent next queues
      // behind it (lend_lane() opens the lane once the batch is written).
      reclaim_lane(st);
      job->release_ticket();
      st.batch_events += job->events.size();
      st.batch.push_back(std::move(job));
      if (st.batch_events >= st.ctx->cfg->storage.max_batch_events)
        flush(self);
      else
        schedule_flush(self); // after everything already in the mailbox: the group commit
    },
    [=](flush_atom) { flush(self); },
    [=](barrier_atom) {
      // Whatever was durable when it was asked (its durable_atom came
      // first) goes to the groups now: their deliveries are sent before the
      // answer, so a fetch sent after it finds them in the queue.
      flush(self);
      return true;
    },
    [=](join_group_atom, const std::string& agent, bool earliest) {
      auto& st = self->state;
      reclaim_lane(st);
      join_group(self, agent, earliest);
      std::lock_guard<std::mutex> guard{st.slot->lane_mutex};
      if (st.slot->joins_pending > 0) // (a new actor of the partition zeroed it)
        --st.slot->joins_pending;
    },
    [=](leave_group_atom, const std::string& agent) {
      reclaim_lane(self->state);
      leave_group(self, agent);
    },
    [=](commit_atom) { // the held-back delivery state is due
      auto& st = self->state;
      st.state_timer = false;
      commit_state(self);
    },
    [=](counters_atom) { // the counters timer
      self->state.counters_timer = false;
      flush(self);
    },
    [=](durable_atom, std::uint64_t end) {
      auto& st = self->state;
      if (st.role) {
        st.local_durable = std::max(st.local_durable, end);
        advance_high_watermark(self);
        return;
      }
      if (end > st.durable_end) {
        st.durable_end = end;
        if (!st.groups.empty())
          schedule_flush(self);
      }
    },
    [=](outcome_atom, const outcome& o) {
      on_outcome(self, o);
      schedule_flush(self);
    },
    [=](outcome_atom, const std::vector<outcome>& os) {
      for (auto& o : os)
        on_outcome(self, o);
      schedule_flush(self);
    },
    [=](emitted_atom, std::uint64_t gi, std::uint64_t offset, std::uint32_t attempt,
        const std::string& result, const std::string& error) {
      on_emitted(self, gi, offset, attempt, result, error);
      schedule_flush(self);
    },
    [=](retry_atom, std::uint64_t gi, std::uint64_t offset) {
      auto& st = self->state;
      if (gi >= st.groups.size())
        return;
      auto& g = st.groups[gi];
      g.engine->set_paused(g.agent->paused.load());
      bool ready = g.engine->retry_due(offset, now_us(st), st.fx);
      apply(self, gi);
      if (ready)
        schedule_flush(self);
    },
    [=](wake_atom) { schedule_flush(self); },
    [=](requeue_atom, std::uint64_t agent_index, std::uint64_t instance) {
      // An instance died with deliveries in flight: send them again.
      auto& st = self->state;
      for (std::size_t gi = 0; gi < st.groups.size(); ++gi)
        if (st.groups[gi].agent->index == agent_index) {
          st.groups[gi].engine->requeue(instance);
          apply(self, gi);
        }
      schedule_flush(self);
    },
    [=](redeliver_atom, const std::string& agent, std::uint64_t offset,
        const std::string& dlq_id) -> std::string {
      // A DLQ retry: the pending record and the entry's delete are one batch,
      // so a crash keeps either the entry or the redelivery, never neither.
      auto& st = self->state;
      reclaim_lane(st);
      if (!writes_state(st))
        return not_led(st).message;
      if (!st.groups_ready) // a new leader's groups recover once the watermark is known
        return "the consumer groups of partition " + where(st) + " are starting; retry shortly";
      for (std::size_t gi = 0; gi < st.groups.size(); ++gi) {
        if (st.groups[gi].agent->cfg.name != agent)
          continue;
        if (st.groups[gi].engine->redeliver(offset, st.fx) == redeliver_result::busy)
          return "the event is being delivered already";
        apply(self, gi);
        stage_dlq_delete(st, dlq_id);
        if (!commit_state(self))
          return "storing the redelivery failed; the partition restarts";
        schedule_flush(self);
        spdlog::info("agent={} topic={} partition={} offset={} dlq={}: delivering again", agent,
                     st.route->info.name, st.partition, offset, dlq_id);
        return {};
      }
      return "agent " + agent + " does not consume " + st.route->info.name;
    },
    [=](dlq_put_atom, const dead_letter& d) -> std::string {
      auto& st = self->state;
      reclaim_lane(st);
      if (!writes_state(st))
        return not_led(st).message;
      stage_dlq_put(st, entry_of(d));
      if (!commit_state(self))
        return "storing the dead letter failed; the partition restarts";
      return {};
    },
    [=](dlq_delete_atom, const std::string& id) -> std::string {
      auto& st = self->state;
      reclaim_lane(st);
      if (!writes_state(st))
        return not_led(st).message;
      stage_dlq_delete(st, id);
      if (!commit_state(self))
        return "deleting the entry failed; the partition restarts";
      return {};
    },
    [=](fetch_atom, const fetch_request& req, std::uint64_t token, std::uint64_t round) {
      reclaim_lane(self->state);
      on_fetch(self, req, token, round);
    },
    [=](unpark_atom, const std::string& node, std::uint64_t round) {
      // Its fetch session round has records of other partitions to send.
      auto& st = self->state;
      reclaim_lane(st);
      auto it = st.followers.find(node);
      if (leads(st) && it != st.followers.end() && it->second.parked
          && it->second.parked_round == round)
        answer_parked_fetch(st, it->second);
    },
    [=](fetched_atom, std::uint64_t token, fetch_response& r) {
      // An answer to a fetch of an earlier role or log, or one given up, is dropped.
      reclaim_lane(self->state);
      if (self->state.fetching && token == self->state.fetch_token)
        on_fetched(self, r);
    },
    [=](synced_atom, std::uint64_t gen, std::uint64_t end) {
      // This follower's own sync: its leader hears of it.
      auto& st = self->state;
      reclaim_lane(st);
      if (gen != st.fetch_generation || !st.role || st.role->role != role_kind::follower)
        return;
      st.synced_end = std::max(st.synced_end, std::min(end, st.writer->next_offset()));
      if (!st.fetching)
        return send_fetch(self); // its position says it
      st.ctx->replication->send(st.role->leader, link_synced(position_of(st)));
    },
    [=](synced_atom, const fetch_request& req) {
      reclaim_lane(self->state);
      on_follower_synced(self, req);
    },
    [=](role_atom) {
      reclaim_lane(self->state);
      on_role(self);
    },
    [=](tick_atom) {
      auto& st = self->state;
      reclaim_lane(st);
      if (!st.batch.empty())
        flush(self); // publishes held for a leader
      if (leads(st)) {
        // What no ship asked to sync (a follower away): synced now, so the
        // leader's own figure never holds the watermark.
        if (st.local_durable < st.writer->next_offset())
          sync_leader(st);
        answer_parked(st, true);
        check_in_sync(self);
        check_acks(st);
      } else {
        // An answer lost with its link: fetch again.
        if (st.fetching && std::chrono::steady_clock::now() - st.fetch_sent_at > fetch_timeout)
          st.fetching = false;
        send_fetch(self);
      }
      self->delayed_send(self, std::chrono::milliseconds{250}, tick_atom::value);
    },
    [=](stop_atom) {
      auto& st = self->state;
      st.quitting = true; // flush() lends nothing now
      reclaim_lane(st);
      if (st.role && !st.acks.empty())
        return step_down(self, "the node is shutting down");
      write_counters(st, true);
      flush(self);
      commit_state(self);
      self->quit();
    },
  };
}

} // namespace

caf::actor spawn_partition(caf::local_actor* parent, node_context* ctx,
                           std::shared_ptr<topic_route> route, std::uint32_t p) {
  // On CAF's scheduler, not a thread each: its messages to and from the
  // builtin instances stay on one thread instead of waking eight
  // (docs/benchmarks.md). It never waits for a disk: the log's writes are
  // buffered and the sync thread runs every WAL sync.
  return caf::actor_cast<caf::actor>(
    parent->spawn<caf::monitored>(partition_behavior, ctx, std::move(route), p));
}

} // namespace nerve::actors::detail
