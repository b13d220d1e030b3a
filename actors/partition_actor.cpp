// The partition actor: group-commits publishes to one topic partition and
// delivers its events to every subscribed agent, one consumer group each.
// The delivery logic is consumer_group's (actors/consumer_group.hpp); this
// shell reads the events it wants, takes credits, and turns its effects into
// messages, timers and state writes. Its state is rebuilt from the log on start.
#include <deque>
#include <map>
#include <random>

#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include "actors/consumer_group.hpp"
#include "actors/dlq_actor.hpp"
#include "actors/event_input.hpp"
#include "actors/runtime.hpp"
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

struct group {
  agent_ptr agent;
  group_stats* stats = nullptr;
  std::unique_ptr<consumer_group> engine;
  std::size_t rr = 0; ///< round-robin position over the agent's instances
};

struct partition_state {
  node_context* ctx = nullptr;
  std::shared_ptr<topic_route> route;
  partition_slot* slot = nullptr;
  std::uint32_t partition = 0;
  std::unique_ptr<persistence::partition_writer> writer;
  std::vector<job_ptr> batch;
  std::size_t batch_events = 0;
  bool flush_scheduled = false;
  std::deque<group_event> tail;
  std::uint64_t durable_end = 0; ///< offsets below are on disk: deliverable
  std::vector<group> groups;
  persistence::state_batch state;
  group_effects fx;              ///< what the engine last asked for
  std::vector<caf::actor> taken; ///< the instance of each credit in `fx.deliveries`
  std::chrono::steady_clock::time_point counters_written{};
  bool counters_due = false;   ///< a snapshot was held back by the once-a-second limit
  bool counters_timer = false; ///< a flush for it is scheduled
  static inline const char* name = "partition";
};

using partition_actor_t = partition_actor::stateful_pointer<partition_state>;

std::int64_t now_us(const partition_state& st) {
  return st.ctx->log->opts().clock();
}

std::string counters_key(const std::string& agent, std::uint32_t topic_id, std::uint32_t p) {
  return "counters/" + agent + "/" + std::to_string(topic_id) + "/" + std::to_string(p);
}

/// An event read back from the log; `offset` unless the text says otherwise.
group_event from_stored(std::uint64_t offset, std::string text) {
  group_event e;
  e.offset = offset;
  auto j = json::parse(text, nullptr, false);
  if (j.is_object()) {
    e.offset = j.value("offset", offset);
    e.id = j.value("id", "");
    e.key = j.value("key", "");
    e.type = j.value("type", "");
    e.source = j.value("source", "");
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
  void operator()(const dlq_handoff&) const {} // the DLQ actor writes those (see hand_off)
};

void apply(partition_actor_t self, std::size_t gi);

/// Hands group `gi`'s dead letter to the DLQ actor; once it is stored, the
/// group passes the event. Tried again every second while the DLQ actor
/// restarts or fails to store it.
void hand_off(partition_actor_t self, std::uint64_t gi, const dead_letter& d) {
  auto retry_later = [self, gi, d](const std::string& why) {
    spdlog::warn("agent={} topic={} partition={} event={}: the DLQ did not take the event ({}); "
                 "trying again in 1 s",
                 d.agent, d.topic, d.at.partition, d.event_id, why);
    self->delayed_send(self, std::chrono::seconds{1}, handoff_atom::value, gi, d);
  };
  auto dlq = self->state.ctx->dlq_actor();
  if (!dlq)
    return retry_later("the DLQ actor is restarting");
  self->request(dlq, std::chrono::seconds{30}, dlq_put_atom::value, d)
    .then(
      [self, gi, d](bool) {
        auto& st = self->state;
        if (gi >= st.groups.size()
            || !st.groups[gi].engine->dead_lettered(d.at.offset, d.attempts, st.fx))
          return;
        spdlog::warn("agent={} topic={} partition={} event={} dlq={}: moved to the DLQ after {} "
                     "attempts: {}",
                     d.agent, d.topic, d.at.partition, d.event_id, d.id, d.attempts, d.error);
        apply(self, gi);
        schedule_flush(self);
      },
      [retry_later](caf::error& e) { retry_later(from_caf_error(e).message); });
}

/// Stores `v` unless it is there already: the HTTP side reads these lines,
/// so an unchanged value is not written again.
template <class T, class U>
void show(std::atomic<T>& a, U v) {
  if (a.load(std::memory_order_relaxed) != static_cast<T>(v))
    a.store(static_cast<T>(v), std::memory_order_relaxed);
}

/// Shows the engine's counts to the HTTP side.
void publish_stats(group& g) {
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
  show(s.cursor, e.cursor());
  show(s.in_flight, e.in_flight());
  show(s.waiting_retry, e.waiting_retry());
  show(s.redelivering, e.redelivering());
  show(s.last_delivered, e.last_delivered());
}

/// Carries out what group `gi`'s engine asked for: sends its deliveries,
/// stages its state changes, arms its timers.
void apply(partition_actor_t self, std::size_t gi) {
  auto& st = self->state;
  auto& g = st.groups[gi];
  auto& fx = st.fx;
  NERVE_ASSERT(fx.deliveries.size() == st.taken.size(), "one credit per delivery");
  for (std::size_t k = 0; k < fx.deliveries.size(); ++k) {
    auto offset = fx.deliveries[k].offset;
    self->send(caf::actor_cast<instance_actor>(st.taken[k]), deliver_atom::value,
               make_delivery(gi, std::move(fx.deliveries[k]), offset));
  }
  st.taken.clear();
  change_writer write{st, g.agent->cfg.name};
  for (auto& c : fx.changes) {
    std::visit(write, c);
    if (auto* dead = std::get_if<dlq_handoff>(&c))
      hand_off(self, gi, letter_of(*dead));
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
  publish_stats(g);
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

void pump(partition_actor_t self) {
  auto& st = self->state;
  auto end = std::min(st.writer->next_offset(), st.durable_end);
  for (std::size_t gi = 0; gi < st.groups.size(); ++gi) {
    auto& g = st.groups[gi];
    g.stats->end = end;
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
  for (auto& [topic, items] : *emits)
    st.ctx->publish(topic, std::move(items),
                    [j, me, gid, offset, attempt, res](actors::result<std::vector<published>> r) {
                      if (!r) {
                        std::lock_guard<std::mutex> guard{j->mutex};
                        j->error = "emit failed: " + r.error().message;
                      }
                      if (j->left.fetch_sub(1) == 1)
                        caf::anon_send(me, emitted_atom::value, gid, offset, attempt, res,
                                       j->error);
                    });
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

void recover_group(partition_actor_t self, std::size_t gi) {
  auto& st = self->state;
  auto& g = st.groups[gi];
  auto& name = g.agent->cfg.name;
  auto tid = st.route->info.id;
  auto stored = st.ctx->store->cursor(name, tid, st.partition);
  if (!stored)
    throw std::runtime_error("reading cursor of " + name + ": " + stored.error().message);
  std::uint64_t cursor = 0;
  if (*stored) {
    cursor = **stored;
  } else {
    // A new consumer group: from the end, or from the oldest stored event.
    cursor = g.agent->cfg.start == config::start_position::earliest
               ? st.ctx->log->stats(st.route->info, st.partition).first_offset
               : st.writer->next_offset();
    persistence::state_batch b;
    b.put_cursor(name, tid, st.partition, cursor);
    std::string start;
    persistence::keys::put_u64(start, cursor);
    b.put_meta(group_start_key(name, tid, st.partition), start);
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
  g.engine->recover(cursor, *pending, st.durable_end, last_delivered, now_us(st), st.fx);
  apply(self, gi);
  auto snapshot = st.ctx->store->meta(counters_key(name, tid, st.partition));
  if (snapshot && *snapshot)
    g.stats->totals.load_json(**snapshot);
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

/// Raises `a` to `v` unless it is higher already: an earlier incarnation of
/// the partition actor may still report a lower offset.
void raise_to(std::atomic<std::uint64_t>& a, std::uint64_t v) {
  auto cur = a.load();
  while (cur < v && !a.compare_exchange_weak(cur, v)) {
  }
}

void flush(partition_actor_t self) {
  auto& st = self->state;
  st.flush_scheduled = false;
  if (!st.batch.empty()) {
    if (st.ctx->hooks->before_append)
      st.ctx->hooks->before_append(st.route->info.name, st.partition);
    std::vector<persistence::new_event> all;
    all.reserve(st.batch_events);
    for (auto& job : st.batch)
      for (auto& e : job->events)
        all.push_back(e);
    auto appended = st.writer->append(all);
    if (!appended) {
      for (auto& job : st.batch)
        job->finish(tl::make_unexpected(appended.error()));
    } else {
      // Followers of the topic get the events once durable, like publishers.
      std::shared_ptr<std::vector<std::string>> followed;
      if (st.ctx->tails.active.load(std::memory_order_relaxed) > 0) {
        followed = std::make_shared<std::vector<std::string>>();
        for (auto& r : *appended)
          if (r.status == persistence::append_status::appended)
            followed->push_back(r.json);
      }
      std::size_t at = 0;
      for (auto& job : st.batch) {
        auto n = job->events.size();
        for (std::size_t k = 0; k < n && !st.groups.empty(); ++k) {
          auto& r = (*appended)[at + k];
          if (r.status != persistence::append_status::appended)
            continue;
          auto& e = job->events[k];
          st.tail.push_back({r.where.offset, r.where.time_us,
                             std::make_shared<const std::string>(std::move(r.json)), e.id, e.key,
                             e.type, e.source});
          if (st.tail.size() > tail_cache_events)
            st.tail.pop_front();
        }
        at += n;
      }
      // Publishers are answered, and agents see the events, once they are
      // durable; meanwhile this partition goes on with its next batch.
      auto jobs = std::make_shared<std::vector<job_ptr>>(std::move(st.batch));
      auto results
        = std::make_shared<std::vector<persistence::append_result>>(std::move(*appended));
      st.ctx->log->after_durable(
        [jobs, results, me = caf::actor_cast<caf::actor>(self), slot = st.slot,
         end = st.writer->next_offset(), followed, ctx = st.ctx,
         topic = st.route->info.name](std::optional<persistence::error> failure) {
          // Counted before the publishers hear of it, so metrics never lag a 201.
          if (!failure)
            raise_to(slot->durable_end, end);
          std::size_t at = 0;
          for (auto& job : *jobs) {
            auto n = job->events.size();
            if (failure)
              job->finish(tl::make_unexpected(*failure));
            else
              job->finish(std::vector<persistence::append_result>(
                std::make_move_iterator(results->begin() + static_cast<std::ptrdiff_t>(at)),
                std::make_move_iterator(results->begin() + static_cast<std::ptrdiff_t>(at + n))));
            at += n;
          }
          if (!failure)
            caf::anon_send(me, durable_atom::value, end);
          if (!failure && followed && !followed->empty())
            ctx->tails.deliver(topic, *followed);
        });
    }
    st.batch.clear();
    st.batch_events = 0;
  }
  pump(self);
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
  if (auto ok = st.ctx->store->commit(st.state, false); !ok) {
    // Memory now runs ahead of the log: start again from the log.
    spdlog::error("topic={} partition={}: {}; restarting", st.route->info.name, st.partition,
                  ok.error().message);
    self->quit(caf::sec::runtime_error);
  }
}

partition_actor::behavior_type partition_behavior(partition_actor_t self, node_context* ctx,
                                                  const std::shared_ptr<topic_route>& route,
                                                  std::uint32_t p) {
  auto& st = self->state;
  st.ctx = ctx;
  st.route = route;
  st.slot = route->slots[p].get();
  st.partition = p;
  st.writer = std::make_unique<persistence::partition_writer>(*ctx->log, route->info, p);
  st.durable_end = st.writer->next_offset();
  raise_to(st.slot->durable_end, st.durable_end);
  std::random_device seeds;
  for (auto& gs : st.slot->groups) {
    group g;
    g.agent = ctx->agents[gs->agent_index];
    g.stats = gs.get();
    g.engine = std::make_unique<consumer_group>(
      g.agent->cfg, group_identity{route->info.name, route->info.id, p, {}, {}}, seeds());
    st.groups.push_back(std::move(g));
  }
  for (std::size_t gi = 0; gi < st.groups.size(); ++gi) {
    recover_group(self, gi);
    st.groups[gi].stats->end = st.durable_end;
  }
  st.slot->recovered = true; // the node is ready once every partition is
  schedule_flush(self);      // deliver the backlog
  return {
    [=](publish_atom, publish_job& job) {
      auto& st = self->state;
      st.batch_events += job->events.size();
      st.batch.push_back(std::move(job));
      if (st.batch_events >= st.ctx->cfg->storage.max_batch_events)
        flush(self);
      else
        schedule_flush(self); // after everything already in the mailbox: the group commit
    },
    [=](flush_atom) { flush(self); },
    [=](counters_atom) { // the counters timer
      self->state.counters_timer = false;
      flush(self);
    },
    [=](durable_atom, std::uint64_t end) {
      auto& st = self->state;
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
    [=](handoff_atom, std::uint64_t gi, const dead_letter& d) { hand_off(self, gi, d); },
    [=](redeliver_atom, const std::string& agent, std::uint64_t offset,
        const std::string& dlq_id) -> std::string {
      // A DLQ retry. The pending record is written before the answer, so the
      // DLQ actor deletes its entry only once the delivery is in the log.
      auto& st = self->state;
      for (std::size_t gi = 0; gi < st.groups.size(); ++gi) {
        if (st.groups[gi].agent->cfg.name != agent)
          continue;
        if (st.groups[gi].engine->redeliver(offset, st.fx) == redeliver_result::busy)
          return "the event is being delivered already";
        apply(self, gi);
        if (auto ok = st.ctx->store->commit(st.state, false); !ok) {
          // Memory now runs ahead of the log: start again from the log.
          self->quit(caf::sec::runtime_error);
          return "storing the redelivery: " + ok.error().message;
        }
        schedule_flush(self);
        spdlog::info("agent={} topic={} partition={} offset={} dlq={}: delivering again", agent,
                     st.route->info.name, st.partition, offset, dlq_id);
        return {};
      }
      return "agent " + agent + " does not consume " + st.route->info.name;
    },
    [=](stop_atom) {
      auto& st = self->state;
      write_counters(st, true);
      flush(self);
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
