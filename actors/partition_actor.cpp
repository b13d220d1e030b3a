// The partition actor: group-commits publishes to one topic partition and
// delivers its events to every subscribed agent (one consumer group each)
// with credit-based flow control, per-key order, retries with backoff and
// the dead-letter queue. Its state is rebuilt from the log on start.
#include <deque>
#include <map>
#include <random>
#include <unordered_set>

#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include "actors/event_input.hpp"
#include "actors/runtime.hpp"
#include "persistence/ids.hpp"
#include "persistence/keys.hpp"

namespace nerve::actors::detail {

namespace {

using json = nlohmann::json;

/// Recent appends, so live delivery does not read back what it just wrote.
constexpr std::size_t tail_cache_events = 4096;
/// Most events one group holds read but not yet committed past.
constexpr std::size_t min_group_window = 256;
/// Counter snapshots are written at most this often.
constexpr auto counters_every = std::chrono::seconds{1};

struct cached_event {
  std::uint64_t offset = 0;
  std::int64_t time_us = 0; ///< append time; 0 when read back from the log
  std::shared_ptr<const std::string> json;
  std::string id, key, type, source;
};

/// `dead_lettering`: out of retries, waiting for the DLQ actor to store it;
/// the cursor passes it only once the entry is in the log before it.
enum class rec_state { ready, in_flight, retry_wait, emitting, dead_lettering, done };

struct delivery_rec {
  rec_state state = rec_state::ready;
  std::uint32_t attempts = 0;
  std::shared_ptr<const std::string> event;
  std::string event_id;
  std::string key;
  std::int64_t appended_us = 0; ///< 0: not delivered live, not measured
  std::size_t instance = 0;
  std::int64_t sent_us = 0;
  std::int64_t first_failed_us = 0;
  std::int64_t last_failed_us = 0;
  std::string last_error;
  bool below_cursor = false; ///< a DLQ retry of an offset the cursor passed
  bool persisted = false;    ///< a pending record exists in the log
};

struct group {
  agent_ptr agent;
  group_stats* stats = nullptr;
  std::uint64_t cursor = 0;
  std::uint64_t next_read = 0;
  std::map<std::uint64_t, delivery_rec> recs;         ///< offsets >= cursor, read and not passed
  std::map<std::uint64_t, delivery_rec> redeliveries; ///< offsets < cursor
  std::deque<std::uint64_t> ready;
  std::unordered_set<std::string> busy_keys;
  std::size_t rr = 0;
  std::size_t window = min_group_window;
  bool cursor_dirty = false;

  [[nodiscard]] bool ordered() const { return agent->cfg.ordered_by == "key"; }

  delivery_rec* find(std::uint64_t offset) {
    if (auto it = recs.find(offset); it != recs.end())
      return &it->second;
    if (auto it = redeliveries.find(offset); it != redeliveries.end())
      return &it->second;
    return nullptr;
  }
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
  std::deque<cached_event> tail;
  std::uint64_t durable_end = 0; ///< offsets below are on disk: deliverable
  std::vector<group> groups;
  persistence::state_batch state;
  std::chrono::steady_clock::time_point counters_written{};
  bool counters_due = false;   ///< a snapshot was held back by the once-a-second limit
  bool counters_timer = false; ///< a flush for it is scheduled
  static inline const char* name = "partition";
};

using partition_actor_t = caf::stateful_actor<partition_state>;

std::int64_t now_us(const partition_state& st) {
  return st.ctx->log->opts().clock();
}

std::string counters_key(const std::string& agent, std::uint32_t topic_id, std::uint32_t p) {
  return "counters/" + agent + "/" + std::to_string(topic_id) + "/" + std::to_string(p);
}

bool filter_matches(const config::agent_filter& f, const cached_event& e) {
  return (!f.type || *f.type == e.type) && (!f.source || *f.source == e.source)
         && (!f.key || *f.key == e.key);
}

cached_event from_stored(std::uint64_t offset, std::string text) {
  cached_event e;
  e.offset = offset;
  auto j = json::parse(text, nullptr, false);
  if (j.is_object()) {
    e.id = j.value("id", "");
    e.key = j.value("key", "");
    e.type = j.value("type", "");
    e.source = j.value("source", "");
  }
  e.json = std::make_shared<const std::string>(std::move(text));
  return e;
}

void schedule_flush(partition_actor_t* self) {
  auto& st = self->state;
  if (!st.flush_scheduled) {
    st.flush_scheduled = true;
    self->send(self, flush_atom::value);
  }
}

/// Persists the group's state change for `offset` once it is done.
void settle(partition_state& st, group& g, std::uint64_t offset, delivery_rec& rec) {
  auto& name = g.agent->cfg.name;
  auto tid = st.route->info.id;
  if (rec.below_cursor) {
    if (rec.persisted)
      st.state.delete_pending(name, tid, st.partition, offset);
    g.redeliveries.erase(offset);
    return;
  }
  if (offset != g.cursor) {
    // Out of order: remembered until the cursor passes it.
    persistence::pending_record pr;
    pr.offset = offset;
    pr.attempts = rec.attempts;
    pr.acked = true;
    st.state.put_pending(name, tid, st.partition, pr);
    rec.persisted = true;
  }
}

void advance(partition_state& st, group& g) {
  auto start = g.cursor;
  while (!g.recs.empty() && g.recs.begin()->first == g.cursor
         && g.recs.begin()->second.state == rec_state::done) {
    if (g.recs.begin()->second.persisted)
      st.state.delete_pending(g.agent->cfg.name, st.route->info.id, st.partition, g.cursor);
    g.recs.erase(g.recs.begin());
    ++g.cursor;
  }
  if (g.recs.empty() && g.next_read > g.cursor)
    g.cursor = g.next_read;
  if (g.cursor != start) {
    g.cursor_dirty = true;
    g.stats->cursor = g.cursor;
  }
}

void release(group& g, delivery_rec& rec) {
  if (g.ordered())
    g.busy_keys.erase(rec.key);
}

/// Queues `offset` to be sent (again): at the back, or at the front when it
/// keeps its place (a requeue). Below the cursor (a DLQ retry) it counts as
/// redelivering until an instance takes it, as the lag does not show it.
void make_ready(group& g, std::uint64_t offset, delivery_rec& rec, bool front = false) {
  rec.state = rec_state::ready;
  if (rec.below_cursor)
    ++g.stats->redelivering;
  if (front)
    g.ready.push_front(offset);
  else
    g.ready.push_back(offset);
}

/// Reads events after `next_read` into the group, up to its window.
void fill(partition_actor_t* self, group& g) {
  auto& st = self->state;
  auto end = std::min(st.writer->next_offset(), st.durable_end);
  while (g.next_read < end && g.recs.size() < g.window) {
    std::vector<cached_event> events;
    auto want = std::min<std::uint64_t>(end - g.next_read, g.window - g.recs.size());
    if (!st.tail.empty() && g.next_read >= st.tail.front().offset) {
      auto i = g.next_read - st.tail.front().offset;
      for (; i < st.tail.size() && events.size() < want; ++i)
        events.push_back(st.tail[i]);
    } else {
      auto got = st.ctx->log->read(st.route->info, st.partition, g.next_read, want);
      if (!got) {
        spdlog::error("topic={} partition={} agent={}: reading the log: {}", st.route->info.name,
                      st.partition, g.agent->cfg.name, got.error().message);
        return;
      }
      for (auto& text : *got) {
        auto offset = json::parse(text, nullptr, false).value("offset", g.next_read);
        events.push_back(from_stored(offset, std::move(text)));
      }
      if (events.empty()) {
        // Retention removed what was not yet delivered: nothing to deliver.
        g.next_read = end;
        break;
      }
    }
    for (auto& e : events) {
      auto& rec = g.recs[e.offset];
      if (!rec.event) {
        rec.event = e.json;
        rec.event_id = e.id;
        rec.key = e.key;
        rec.appended_us = e.time_us;
      }
      bool fresh = rec.attempts == 0 && rec.state == rec_state::ready && !rec.persisted;
      if (fresh) {
        if (filter_matches(g.agent->cfg.filter, e))
          g.ready.push_back(e.offset);
        else
          rec.state = rec_state::done;
      }
      g.next_read = e.offset + 1;
    }
  }
  advance(st, g);
}

void dispatch(partition_actor_t* self, group& g, std::size_t gi) {
  auto& st = self->state;
  if (g.agent->paused.load())
    return;
  std::deque<std::uint64_t> keep;
  while (!g.ready.empty()) {
    auto offset = g.ready.front();
    auto* rec = g.find(offset);
    if (rec == nullptr || rec->state != rec_state::ready) {
      g.ready.pop_front();
      continue;
    }
    if (g.ordered() && g.busy_keys.count(rec->key) > 0) {
      keep.push_back(offset);
      g.ready.pop_front();
      continue;
    }
    auto credit = g.agent->take_credit(g.rr, caf::actor{self});
    if (!credit)
      break;
    g.ready.pop_front();
    if (rec->below_cursor)
      --g.stats->redelivering;
    if (!rec->event) {
      auto stored = st.ctx->store->event_at(st.route->info.id, st.partition, offset);
      if (!stored || !*stored) {
        spdlog::warn("topic={} partition={} agent={}: event at offset {} is gone (retention); "
                     "skipping it",
                     st.route->info.name, st.partition, g.agent->cfg.name, offset);
        g.agent->return_credit(credit->first);
        rec->state = rec_state::done;
        settle(st, g, offset, *rec);
        continue;
      }
      auto e = from_stored(offset, std::move(**stored));
      rec->event = e.json;
      rec->event_id = e.id;
      rec->key = e.key;
    }
    ++rec->attempts;
    rec->state = rec_state::in_flight;
    rec->instance = credit->first;
    rec->sent_us = now_us(st);
    if (g.ordered())
      g.busy_keys.insert(rec->key);
    auto d = std::make_shared<delivery>();
    d->partition = caf::actor{self};
    d->group = gi;
    d->instance = credit->first;
    d->offset = offset;
    d->attempt = rec->attempts;
    d->event_id = rec->event_id;
    d->delivery_id = rec->event_id + ":" + g.agent->cfg.name + ":" + std::to_string(rec->attempts);
    d->event = rec->event;
    ++g.stats->totals.received;
    ++g.stats->in_flight;
    if (static_cast<std::int64_t>(offset) > g.stats->last_delivered.load())
      g.stats->last_delivered = static_cast<std::int64_t>(offset);
    self->send(credit->second, deliver_atom::value, std::move(d));
  }
  for (auto it = keep.rbegin(); it != keep.rend(); ++it)
    g.ready.push_front(*it);
}

void pump(partition_actor_t* self) {
  auto& st = self->state;
  auto end = std::min(st.writer->next_offset(), st.durable_end);
  for (std::size_t gi = 0; gi < st.groups.size(); ++gi) {
    auto& g = st.groups[gi];
    g.stats->end = end;
    fill(self, g);
    dispatch(self, g, gi);
  }
}

/// The DLQ actor stored the dead letter of `offset`: the delivery is done.
void on_dead_lettered(partition_actor_t* self, std::uint64_t gi, std::uint64_t offset,
                      std::uint32_t attempt) {
  auto& st = self->state;
  if (gi >= st.groups.size())
    return;
  auto& g = st.groups[gi];
  auto* rec = g.find(offset);
  if (rec == nullptr || rec->state != rec_state::dead_lettering || rec->attempts != attempt)
    return;
  ++g.stats->totals.dead_lettered;
  rec->state = rec_state::done;
  release(g, *rec);
  settle(st, g, offset, *rec);
  advance(st, g);
}

/// Hands a dead letter to the DLQ actor; tries again in a second while it
/// is restarting or fails to store it.
void hand_off(partition_actor_t* self, std::uint64_t gi, std::uint64_t offset,
              std::uint32_t attempt, const dead_letter& d) {
  auto retry_later = [self, gi, offset, attempt, d](const std::string& why) {
    spdlog::warn("agent={} topic={} partition={} event={}: the DLQ did not take the event ({}); "
                 "trying again in 1 s",
                 d.agent, d.topic, d.at.partition, d.event_id, why);
    self->delayed_send(self, std::chrono::seconds{1}, handoff_atom::value, gi, offset, attempt, d);
  };
  auto dlq = self->state.ctx->dlq_actor();
  if (!dlq)
    return retry_later("the DLQ actor is restarting");
  self->request(dlq, std::chrono::seconds{30}, dlq_put_atom::value, d)
    .then(
      [self, gi, offset, attempt, d](bool) {
        spdlog::warn("agent={} topic={} partition={} event={} dlq={}: moved to the DLQ after {} "
                     "attempts: {}",
                     d.agent, d.topic, d.at.partition, d.event_id, d.id, d.attempts, d.error);
        on_dead_lettered(self, gi, offset, attempt);
        schedule_flush(self);
      },
      [retry_later](caf::error& e) { retry_later(from_caf_error(e).message); });
}

void dead_letter_of(partition_actor_t* self, group& g, std::size_t gi, std::uint64_t offset,
                    delivery_rec& rec) {
  auto& st = self->state;
  dead_letter d;
  d.agent = g.agent->cfg.name;
  d.topic = st.route->info.name;
  d.at = {st.route->info.id, st.partition, offset};
  d.id = persistence::delivery_store::dlq_id(d.agent, d.at.topic_id, d.at.partition, offset);
  d.event_id = rec.event_id;
  d.event = rec.event ? *rec.event : std::string{};
  d.error = rec.last_error;
  d.attempts = rec.attempts;
  d.first_failed_us = rec.first_failed_us;
  d.last_failed_us = rec.last_failed_us;
  rec.state = rec_state::dead_lettering;
  hand_off(self, gi, offset, rec.attempts, d);
}

void fail(partition_actor_t* self, group& g, std::size_t gi, std::uint64_t offset,
          delivery_rec& rec, const std::string& error) {
  auto& st = self->state;
  auto now = now_us(st);
  ++g.stats->totals.failed;
  rec.last_error = error;
  if (rec.first_failed_us == 0)
    rec.first_failed_us = now;
  rec.last_failed_us = now;
  if (rec.attempts > g.agent->cfg.max_retries) {
    dead_letter_of(self, g, gi, offset, rec);
    return;
  }
  ++g.stats->totals.retried;
  auto delay = backoff(g.agent->cfg.backoff_initial, g.agent->cfg.backoff_max, rec.attempts);
  rec.state = rec_state::retry_wait;
  ++g.stats->waiting_retry;
  persistence::pending_record pr;
  pr.offset = offset;
  pr.attempts = rec.attempts;
  pr.redeliver = rec.below_cursor;
  pr.next_attempt_us = now + delay.count() * 1000;
  pr.first_failed_us = rec.first_failed_us;
  pr.last_failed_us = rec.last_failed_us;
  pr.last_error = error;
  st.state.put_pending(g.agent->cfg.name, st.route->info.id, st.partition, pr);
  rec.persisted = true;
  spdlog::debug("agent={} topic={} partition={} event={}: attempt {} failed ({}); "
                "retry in {} ms",
                g.agent->cfg.name, st.route->info.name, st.partition, rec.event_id, rec.attempts,
                error, delay.count());
  self->delayed_send(self, delay, retry_atom::value, static_cast<std::uint64_t>(gi), offset);
}

void ack(partition_actor_t* self, group& g, std::uint64_t offset, delivery_rec& rec,
         const std::string& result) {
  auto& st = self->state;
  ++g.stats->totals.processed;
  if (rec.appended_us > 0)
    g.stats->totals.delivery.observe(now_us(st) - rec.appended_us);
  // Kept for results.ttl: the result, if any, and the attempts of an ack
  // after retries (a first-attempt ack is what the cursor implies).
  if (!result.empty())
    st.state.put_result(rec.event_id, g.agent->cfg.name,
                        persistence::stored_result{result, now_us(st), rec.attempts});
  if (rec.attempts > 1)
    st.state.put_attempts(g.agent->cfg.name, st.route->info.id, st.partition, offset, rec.attempts,
                          now_us(st));
  rec.state = rec_state::done;
  release(g, rec);
  settle(st, g, offset, rec);
  advance(st, g);
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

void on_outcome(partition_actor_t* self, outcome_ptr& o) {
  auto& st = self->state;
  if (o->group >= st.groups.size())
    return;
  auto& g = st.groups[o->group];
  auto* rec = g.find(o->offset);
  if (rec == nullptr || rec->state != rec_state::in_flight || rec->attempts != o->attempt)
    return; // stale: answered after a timeout or a requeue
  --g.stats->in_flight;
  g.stats->totals.processing.observe(o->elapsed_us);
  if (!o->ok) {
    if (o->timed_out)
      ++g.stats->totals.timed_out;
    fail(self, g, o->group, o->offset, *rec, o->error);
    return;
  }
  if (o->emit.empty()) {
    ack(self, g, o->offset, *rec, o->result);
    return;
  }
  auto emits = emits_of(o->emit, *rec->event, g.agent->cfg.name);
  if (!emits) {
    fail(self, g, o->group, o->offset, *rec, "invalid emit: " + emits.error());
    return;
  }
  if (emits->empty()) { // "emit": [] emits nothing: a plain ack
    ack(self, g, o->offset, *rec, o->result);
    return;
  }
  rec->state = rec_state::emitting;
  // Publish every topic's share, then ack once all are durable.
  struct join {
    std::atomic<std::size_t> left{0};
    std::mutex mutex;
    std::string error;
  };
  auto j = std::make_shared<join>();
  j->left = emits->size();
  auto me = caf::actor{self};
  auto gi = static_cast<std::uint64_t>(o->group);
  auto offset = o->offset;
  auto attempt = o->attempt;
  auto res = o->result;
  for (auto& [topic, items] : *emits)
    st.ctx->publish(topic, std::move(items),
                    [j, me, gi, offset, attempt, res](actors::result<std::vector<published>> r) {
                      if (!r) {
                        std::lock_guard<std::mutex> guard{j->mutex};
                        j->error = "emit failed: " + r.error().message;
                      }
                      if (j->left.fetch_sub(1) == 1)
                        caf::anon_send(me, emitted_atom::value, gi, offset, attempt, res, j->error);
                    });
}

void on_emitted(partition_actor_t* self, std::uint64_t gi, std::uint64_t offset,
                std::uint32_t attempt, const std::string& result, const std::string& error) {
  auto& st = self->state;
  if (gi >= st.groups.size())
    return;
  auto& g = st.groups[gi];
  auto* rec = g.find(offset);
  if (rec == nullptr || rec->state != rec_state::emitting || rec->attempts != attempt)
    return;
  if (!error.empty())
    fail(self, g, gi, offset, *rec, error);
  else
    ack(self, g, offset, *rec, result);
}

void recover_group(partition_actor_t* self, group& g) {
  auto& st = self->state;
  // The counters outlive a crashed partition actor; they are rebuilt below.
  g.stats->waiting_retry = 0;
  g.stats->redelivering = 0;
  auto& name = g.agent->cfg.name;
  auto tid = st.route->info.id;
  auto cursor = st.ctx->store->cursor(name, tid, st.partition);
  if (!cursor)
    throw std::runtime_error("reading cursor of " + name + ": " + cursor.error().message);
  if (*cursor) {
    g.cursor = **cursor;
  } else {
    // A new consumer group: from the end, or from the oldest stored event.
    g.cursor = g.agent->cfg.start == "earliest"
                 ? st.ctx->log->stats(st.route->info, st.partition).first_offset
                 : st.writer->next_offset();
    persistence::state_batch b;
    b.put_cursor(name, tid, st.partition, g.cursor);
    std::string start;
    persistence::keys::put_u64(start, g.cursor);
    b.put_meta(group_start_key(name, tid, st.partition), start);
    if (auto ok = st.ctx->store->commit(b, false); !ok)
      throw std::runtime_error("storing cursor of " + name + ": " + ok.error().message);
  }
  g.next_read = g.cursor;
  // Everything between where the group started and its cursor was delivered.
  auto start = group_start(*st.ctx, name, tid, st.partition);
  if (start && *start && g.cursor > **start)
    g.stats->last_delivered = static_cast<std::int64_t>(g.cursor) - 1;
  auto pending = st.ctx->store->pending(name, tid, st.partition);
  if (!pending)
    throw std::runtime_error("reading pending of " + name + ": " + pending.error().message);
  auto now = now_us(st);
  for (auto& p : *pending) {
    if (p.offset < g.cursor && !p.redeliver) {
      st.state.delete_pending(name, tid, st.partition, p.offset); // passed already
      continue;
    }
    auto& rec = (p.offset < g.cursor ? g.redeliveries : g.recs)[p.offset];
    rec.below_cursor = p.offset < g.cursor;
    rec.persisted = true;
    rec.attempts = p.attempts;
    rec.first_failed_us = p.first_failed_us;
    rec.last_failed_us = p.last_failed_us;
    rec.last_error = p.last_error;
    if (p.acked) {
      rec.state = rec_state::done;
    } else if (p.attempts == 0) {
      make_ready(g, p.offset, rec);
    } else {
      rec.state = rec_state::retry_wait;
      ++g.stats->waiting_retry;
      auto delay
        = std::chrono::milliseconds{std::max<std::int64_t>(0, (p.next_attempt_us - now) / 1000)};
      self->delayed_send(self, delay, retry_atom::value,
                         static_cast<std::uint64_t>(&g - st.groups.data()), p.offset);
    }
  }
  // Records above the cursor are read again from the log by `fill`; their
  // state (acked, waiting) is kept.
  g.stats->cursor = g.cursor;
  g.stats->in_flight = 0;
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

void flush(partition_actor_t* self) {
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
        [jobs, results, me = caf::actor{self}, slot = st.slot, end = st.writer->next_offset(),
         followed, ctx = st.ctx,
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
    if (g.cursor_dirty) {
      st.state.put_cursor(g.agent->cfg.name, st.route->info.id, st.partition, g.cursor);
      g.cursor_dirty = false;
    }
  // Counters change with every delivery; their snapshot is written with the
  // next state change at most once a second, and a held-back snapshot is
  // written by a timer, so an idle partition's counters are at most a second
  // behind on disk (and survive kill -9 up to that second).
  if (!st.state.empty() || st.counters_due) {
    if (!write_counters(st, false)) {
      st.counters_due = true;
      if (!st.counters_timer) {
        st.counters_timer = true;
        self->delayed_send(self, counters_every, flush_atom::value, true);
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

caf::behavior partition_actor(partition_actor_t* self, node_context* ctx,
                              const std::shared_ptr<topic_route>& route, std::uint32_t p) {
  auto& st = self->state;
  st.ctx = ctx;
  st.route = route;
  st.slot = route->slots[p].get();
  st.partition = p;
  st.writer = std::make_unique<persistence::partition_writer>(*ctx->log, route->info, p);
  st.durable_end = st.writer->next_offset();
  raise_to(st.slot->durable_end, st.durable_end);
  for (auto& gs : st.slot->groups) {
    group g;
    g.agent = ctx->agents[gs->agent_index];
    g.stats = gs.get();
    g.window = std::max<std::size_t>(min_group_window,
                                     2ULL * g.agent->cfg.instances * g.agent->cfg.max_in_flight);
    st.groups.push_back(std::move(g));
  }
  for (auto& g : st.groups) {
    recover_group(self, g);
    g.stats->end = st.durable_end;
  }
  st.slot->recovered = true; // the node is ready once every partition is
  schedule_flush(self);      // deliver the backlog
  return {
    [=](publish_atom, job_ptr& job) {
      auto& st = self->state;
      st.batch_events += job->events.size();
      st.batch.push_back(std::move(job));
      if (st.batch_events >= st.ctx->cfg->storage.max_batch_events)
        flush(self);
      else
        schedule_flush(self); // after everything already in the mailbox: the group commit
    },
    [=](flush_atom) { flush(self); },
    [=](flush_atom, bool) { // the counters timer
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
    [=](outcome_atom, outcome_ptr& o) {
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
      if (g.agent->paused.load()) {
        // Stays waiting (and counted as pending) until the agent resumes.
        self->delayed_send(self, std::chrono::milliseconds{200}, retry_atom::value, gi, offset);
        return;
      }
      if (auto* rec = g.find(offset); rec && rec->state == rec_state::retry_wait) {
        --g.stats->waiting_retry;
        make_ready(g, offset, *rec);
        schedule_flush(self);
      }
    },
    [=](wake_atom) { schedule_flush(self); },
    [=](requeue_atom, std::uint64_t agent_index, std::uint64_t instance) {
      // An instance died with deliveries in flight: send them again.
      auto& st = self->state;
      for (auto& g : st.groups) {
        if (g.agent->index != agent_index)
          continue;
        for (auto* recs : {&g.recs, &g.redeliveries})
          for (auto& [offset, rec] : *recs)
            if (rec.state == rec_state::in_flight && rec.instance == instance) {
              --rec.attempts;
              --g.stats->in_flight;
              release(g, rec);
              make_ready(g, offset, rec, true);
            }
      }
      schedule_flush(self);
    },
    [=](handoff_atom, std::uint64_t gi, std::uint64_t offset, std::uint32_t attempt,
        const dead_letter& d) { hand_off(self, gi, offset, attempt, d); },
    [=](redeliver_atom, const std::string& agent, std::uint64_t offset,
        const std::string& dlq_id) -> std::string {
      // A DLQ retry. The pending record is written before the answer, so the
      // DLQ actor deletes its entry only once the delivery is in the log.
      auto& st = self->state;
      for (auto& g : st.groups) {
        if (g.agent->cfg.name != agent)
          continue;
        delivery_rec* rec = g.find(offset);
        if (rec != nullptr && rec->state != rec_state::done)
          return "the event is being delivered already";
        if (rec == nullptr) {
          rec = &g.redeliveries[offset];
          rec->below_cursor = offset < g.cursor;
          if (!rec->below_cursor) {
            g.redeliveries.erase(offset);
            rec = &g.recs[offset];
          }
        }
        *rec = delivery_rec{};
        rec->below_cursor = offset < g.cursor;
        persistence::pending_record pr;
        pr.offset = offset;
        pr.redeliver = rec->below_cursor;
        st.state.put_pending(agent, st.route->info.id, st.partition, pr);
        rec->persisted = true;
        make_ready(g, offset, *rec);
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
  return parent->spawn<caf::monitored>(partition_actor, ctx, std::move(route), p);
}

} // namespace nerve::actors::detail
