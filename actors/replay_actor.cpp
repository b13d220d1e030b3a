// The replay actor: sends a planned replay's history again to the agents'
// instances, one consumer_group engine per planned range, through the same
// credits, retries and DLQ hand-off as live delivery, without touching live
// cursors, state or counters. Its progress and outcomes are records of its
// own (see replay_plan.hpp).
#include <algorithm>
#include <random>
#include <tuple>
#include <unordered_map>

#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include "actors/consumer_group.hpp"
#include "actors/dlq_actor.hpp"
#include "actors/replay_plan.hpp"
#include "actors/replay_storage.hpp"
#include "actors/runtime.hpp"
#include "actors/tracing.hpp"
#include "config/assert.hpp"

namespace nerve::actors::detail {

namespace {

using json = nlohmann::json;

/// One partition's share of an agent's history, delivered by a consumer
/// group engine of its own (no live cursor, no live state: see `apply`).
struct range_delivery {
  range where;
  std::unique_ptr<consumer_group> engine;
};

struct replay_agent {
  agent_ptr agent;
  std::vector<range_delivery> ranges; ///< read in order: one after the other is read
  std::size_t in_flight = 0;
  std::size_t rr = 0;
  std::uint64_t done = 0;
  /// Resumed with outcomes stored: skip the events that have one.
  bool skip_settled = false;
};

/// A delivery attempt in flight, by its token (the offset its delivery carries).
struct open_attempt {
  std::size_t agent = 0;
  std::size_t range = 0;
  std::uint64_t offset = 0;
  std::uint32_t attempt = 0;
};

struct replay_actor_state {
  node_context* ctx = nullptr;
  std::string id;
  replay_record record;
  std::vector<replay_agent> agents;
  std::unordered_map<std::uint64_t, open_attempt> tokens;
  std::uint64_t next_token = 1;
  bool dirty = false;
  group_effects fx;
  std::vector<caf::actor> taken; ///< the instance of each credit in `fx.deliveries`
  static inline const char* name = "replay";
};

using replay_actor_t = replay_actor::stateful_pointer<replay_actor_state>;

constexpr auto tick_every = std::chrono::milliseconds{200};
constexpr std::size_t read_ahead = 256;

std::int64_t clock_us(const replay_actor_state& st) {
  return st.ctx->log->opts().clock();
}

/// Most deliveries a replay keeps in flight per agent: half its credits, so
/// live traffic keeps the other half.
std::size_t cap_of(const agent_runtime& a) {
  return std::max<std::size_t>(1, a.cfg.max_in_flight * a.instances.size() / 2);
}

/// Where an agent's replay stands: its first range not finished and that
/// range's cursor (every event before it is finished).
std::pair<std::uint64_t, std::uint64_t> position_of(const replay_agent& ra) {
  for (std::size_t k = 0; k < ra.ranges.size(); ++k) {
    auto& e = *ra.ranges[k].engine;
    if (e.cursor() < e.end())
      return {k, e.cursor()};
  }
  return {ra.ranges.size(), 0};
}

void persist(replay_actor_t self, bool sync) {
  auto& st = self->state;
  NERVE_ASSERT(st.record.plan.size() == st.agents.size(), "one replay_agent per planned agent");
  std::uint64_t done = 0;
  for (std::size_t i = 0; i < st.agents.size(); ++i) {
    auto& ra = st.agents[i];
    auto& plan = st.record.plan[i];
    std::tie(plan.pos_range, plan.pos_offset) = position_of(ra);
    plan.done = ra.done;
    done += ra.done;
  }
  st.record.events_done = done;
  if (auto failed = store_replay(*st.ctx->store, st.record, sync))
    spdlog::error("replay {}: storing progress: {}", st.id, failed->message);
  st.dirty = false;
}

/// The span of a finished replay: a trace of its own (its deliveries are
/// spans in their events' traces, their delivery ids naming the replay).
void trace_replay(const replay_record& r, tracer& t) {
  auto trace = new_trace_id();
  if (!t.sampled(trace))
    return;
  auto join = [](const std::vector<std::string>& names) {
    std::string out;
    for (auto& n : names)
      out += (out.empty() ? "" : ",") + n;
    return out;
  };
  span s;
  s.trace_id = trace;
  s.span_id = span_id_of("replay/" + r.id);
  s.name = "replay";
  s.start_ns = r.created_us * 1000;
  s.end_ns = r.finished_us * 1000;
  s.attributes = {{"nerve.replay.id", r.id},
                  {"nerve.replay.mode", std::string{to_string(r.mode)}},
                  {"nerve.replay.state", std::string{to_string(r.state)}},
                  {"nerve.replay.from", format_time(r.from_us)},
                  {"nerve.replay.to", format_time(r.to_us)},
                  {"nerve.replay.agents", join(r.agents)},
                  {"nerve.replay.topics", join(r.topics)},
                  {"nerve.replay.deliveries", static_cast<std::int64_t>(r.events_total)},
                  {"nerve.replay.acked", static_cast<std::int64_t>(r.acked)},
                  {"nerve.replay.dead_lettered", static_cast<std::int64_t>(r.dead_lettered)}};
  s.error = r.state == replay_state::failed;
  s.message = r.error;
  t.record(std::move(s));
}

void finish(replay_actor_t self, replay_state state) {
  auto& st = self->state;
  st.record.state = state;
  st.record.finished_us = clock_us(st);
  persist(self, true);
  if (st.ctx->tracing)
    trace_replay(st.record, *st.ctx->tracing);
  spdlog::info("replay {} {}: {} of {} deliveries done, {} acked, {} dead-lettered", st.id,
               to_string(state), st.record.events_done, st.record.events_total, st.record.acked,
               st.record.dead_lettered);
  self->quit();
}

/// Whether the event at `offset` already has an outcome under the replay: it
/// was finished after the stored position, before a restart.
bool settled_before(const replay_actor_state& st, const replay_agent& ra, const range& r,
                    std::uint64_t offset) {
  auto out
    = st.ctx->store->meta(outcome_key(st.id, ra.agent->cfg.name, r.topic_id, r.partition, offset));
  if (!out)
    throw std::runtime_error("reading an outcome: " + out.error().message);
  return out->has_value();
}

/// Counts from the stored outcomes, after a restart. The stored position is
/// the lowest unfinished event, so events finished past it, and outcomes
/// stored after the last progress write, would otherwise count twice or not
/// at all.
void recount(replay_actor_state& st) {
  std::uint64_t acked = 0;
  std::uint64_t dead = 0;
  for (auto& ra : st.agents) {
    auto prefix = "rout/" + st.id + "/" + ra.agent->cfg.name + "/";
    auto outs = st.ctx->store->meta_prefix(prefix);
    if (!outs)
      throw std::runtime_error("reading outcomes: " + outs.error().message);
    ra.done = 0;
    for (auto& [key, value] : *outs) {
      if (key.size() != prefix.size() + 16)
        continue; // another agent's, whose name starts with this one's and a '/'
      ++ra.done;
      auto o = json::parse(value, nullptr, false);
      auto outcome = o.is_object() ? o.value("outcome", "") : std::string{};
      acked += outcome == "acked" ? 1 : 0;
      dead += outcome == "dead_lettered" ? 1 : 0;
    }
    ra.skip_settled = ra.done > 0;
  }
  st.record.acked = acked;
  st.record.dead_lettered = dead;
}

/// Stores the outcome of one event under the replay.
void store_outcome(replay_actor_t self, replay_agent& ra, const range& r, std::uint64_t offset,
                   const std::string& outcome, std::uint32_t attempts, const std::string& error,
                   const std::string& result) {
  auto& st = self->state;
  json o{{"outcome", outcome}, {"attempts", attempts}};
  if (!error.empty())
    o["error"] = error;
  if (!result.empty())
    o["result"] = json::parse(result, nullptr, false);
  persistence::state_batch b;
  b.put_meta(outcome_key(st.id, ra.agent->cfg.name, r.topic_id, r.partition, offset), o.dump());
  if (auto ok = st.ctx->store->commit(b, false); !ok)
    spdlog::error("replay {}: storing an outcome: {}", st.id, ok.error().message);
  ++ra.done;
  st.dirty = true;
}

void apply(replay_actor_t self, std::size_t ai, std::size_t k);

/// Hands range `k`'s dead letter to the DLQ actor, under an id of its own
/// (dlq_owner: the live group's id would overwrite the live entry for this
/// event, or make a live-acked event look dead-lettered; the event carries
/// the replay mark), then stores the outcome. Nothing else runs meanwhile
/// (await), so the engine's record stays as it is.
void hand_off(replay_actor_t self, std::size_t ai, std::size_t k, const dlq_handoff& dead) {
  auto& st = self->state;
  dead_letter d{dead.id,
                dead.agent,
                dead.topic,
                {dead.topic_id, dead.partition, dead.offset},
                dead.event_id,
                dead.event,
                dead.error + " (replay " + st.id + ")",
                dead.attempts,
                dead.first_failed_us,
                dead.last_failed_us};
  auto dlq = st.ctx->dlq_actor();
  if (!dlq)
    throw std::runtime_error("the DLQ actor is restarting"); // the runner resumes the replay
  auto error = dead.error;
  self->request(dlq, std::chrono::seconds{30}, dlq_put_atom::value, d)
    .await(
      [self, ai, k, d, error](bool) {
        auto& st = self->state;
        auto& ra = st.agents[ai];
        if (!ra.ranges[k].engine->dead_lettered(d.at.offset, d.attempts, st.fx))
          return;
        spdlog::warn("agent={} topic={} partition={} event={} dlq={} replay={}: moved to the DLQ "
                     "after {} attempts: {}",
                     d.agent, d.topic, d.at.partition, d.event_id, d.id, st.id, d.attempts,
                     d.error);
        store_outcome(self, ra, ra.ranges[k].where, d.at.offset, "dead_lettered", d.attempts, error,
                      {});
        apply(self, ai, k);
      },
      [self](caf::error& e) {
        // The runner resumes the replay from its watermark.
        self->quit(make_caf_error(errc::unavailable, "handing a dead letter to the DLQ: "
                                                       + from_caf_error(e).message));
      });
}

/// Carries out what range `k` of agent `ai` asked for. A replay touches no
/// live state: pending records, cursors, results and attempts are not
/// written; its outcomes are records of its own.
void apply(replay_actor_t self, std::size_t ai, std::size_t k) {
  auto& st = self->state;
  auto& ra = st.agents[ai];
  auto& fx = st.fx;
  NERVE_ASSERT(fx.deliveries.size() == st.taken.size(), "one credit per delivery");
  for (std::size_t n = 0; n < fx.deliveries.size(); ++n) {
    auto& out = fx.deliveries[n];
    auto token = st.next_token++;
    st.tokens[token] = {ai, k, out.offset, out.attempt};
    ++ra.in_flight;
    self->send(caf::actor_cast<instance_actor>(st.taken[n]), deliver_atom::value,
               make_delivery(ai, std::move(out), token));
    // The instance times the attempt out; this catches an instance that died.
    self->delayed_send(self, ra.agent->cfg.timeout + std::chrono::seconds{5}, timeout_atom::value,
                       token);
  }
  st.taken.clear();
  std::vector<dlq_handoff> dead;
  for (auto& c : fx.changes)
    if (auto* d = std::get_if<dlq_handoff>(&c))
      dead.push_back(*d);
  auto now = clock_us(st);
  for (auto& t : fx.timers)
    self->delayed_send(
      self, std::chrono::milliseconds{std::max<std::int64_t>(0, (t.due_us - now) / 1000)},
      retry_atom::value, static_cast<std::uint64_t>(ai), static_cast<std::uint64_t>(k), t.offset);
  fx.clear();
  auto t = ra.ranges[k].engine->take_totals();
  st.record.acked += t.processed;
  st.record.failed += t.failed;
  st.record.retried += t.retried;
  st.record.dead_lettered += t.dead_lettered;
  for (auto& d : dead)
    hand_off(self, ai, k, d);
}

/// Feeds range `k`'s engine the events after its read position.
void fill_range(replay_actor_t self, replay_agent& ra, std::size_t k) {
  auto& st = self->state;
  auto& r = ra.ranges[k].where;
  auto& e = *ra.ranges[k].engine;
  while (auto want = std::min<std::uint64_t>(e.wanted(), read_ahead)) {
    auto t = st.ctx->log->find_topic(r.topic);
    if (!t) {
      e.skip_to_end(); // the topic is gone: nothing to deliver
      break;
    }
    auto got = st.ctx->log->read_stored(*t, r.partition, e.next_read(), r.hi, want);
    if (!got)
      throw std::runtime_error("reading events: " + got.error().message);
    for (auto& stored : *got) {
      if (stored.offset >= e.end())
        break;
      if (ra.skip_settled && settled_before(st, ra, r, stored.offset)) {
        e.pass(stored.offset);
        continue;
      }
      auto parsed = json::parse(stored.json, nullptr, false);
      group_event ev;
      ev.offset = stored.offset;
      ev.id = id_of(stored.json);
      if (parsed.is_object()) {
        ev.key = field_of(parsed, "key");
        ev.type = field_of(parsed, "type");
        ev.source = field_of(parsed, "source");
      }
      ev.json = std::make_shared<const std::string>(marked(stored.json, st.id));
      e.feed(ev);
    }
    // Fewer than asked: the rest of the range is gone (retention) or read.
    if (got->size() < want)
      e.skip_to_end();
  }
  e.advance(st.fx);
}

/// Reads, then sends, each agent's history; finishes when all is done.
void pump(replay_actor_t self) {
  auto& st = self->state;
  bool all_done = true;
  for (std::size_t ai = 0; ai < st.agents.size(); ++ai) {
    auto& ra = st.agents[ai];
    for (std::size_t k = 0; k < ra.ranges.size(); ++k) {
      auto& e = *ra.ranges[k].engine;
      fill_range(self, ra, k);
      e.set_paused(ra.agent->paused.load());
      auto cap = cap_of(*ra.agent);
      agent_credits credits{*ra.agent, ra.rr, caf::actor_cast<caf::actor>(self), st.taken,
                            ra.in_flight < cap ? cap - ra.in_flight : 0};
      e.dispatch(credits, st.fx);
      apply(self, ai, k);
      if (e.cursor() < e.end())
        all_done = false;
      if (e.next_read() < e.end())
        break; // the next range is read once this one is
    }
  }
  if (all_done)
    finish(self, replay_state::done);
}

/// Ends the attempt `token`: where it was, if it is still open.
std::optional<open_attempt> close_attempt(replay_actor_t self, std::uint64_t token) {
  auto& st = self->state;
  auto t = st.tokens.find(token);
  if (t == st.tokens.end())
    return std::nullopt; // stale
  auto a = t->second;
  st.tokens.erase(t);
  auto& ra = st.agents[a.agent];
  --ra.in_flight;
  if (ra.ranges[a.range].engine->answer(a.offset, a.attempt) == nullptr)
    return std::nullopt;
  return a;
}

void on_answer(replay_actor_t self, const open_attempt& a, const outcome* o,
               const std::string& error) {
  auto& st = self->state;
  auto& ra = st.agents[a.agent];
  auto& e = *ra.ranges[a.range].engine;
  if (o == nullptr || !o->ok) {
    e.fail(a.offset, error, false, clock_us(st), st.fx);
  } else {
    // Follow-ups a replayed attempt emits are kept with its outcome, not
    // published: a replay does not create live traffic.
    auto result = o->result;
    if (!o->emit.empty()) {
      auto r = json::parse(result.empty() ? "null" : result, nullptr, false);
      result = json{{"result", r}, {"emit", json::parse(o->emit, nullptr, false)}}.dump();
    }
    auto last_error = e.last_error(a.offset);
    e.ack(a.offset, {}, clock_us(st), st.fx);
    store_outcome(self, ra, ra.ranges[a.range].where, a.offset, "acked", a.attempt, last_error,
                  result);
  }
  apply(self, a.agent, a.range);
  pump(self);
}

/// The agent's replay, resumed at its stored position.
replay_agent agent_of(const node_context& ctx, const std::string& id, const replay_plan& p) {
  replay_agent ra;
  for (auto& a : ctx.agents.all())
    if (a->cfg.name == p.agent)
      ra.agent = a;
  if (!ra.agent)
    throw std::runtime_error("replay " + id + ": agent " + p.agent + " is no longer configured");
  auto cfg = ra.agent->cfg;
  cfg.ordered_by = config::ordering::none; // a replay's history goes out as fast as credits allow
  auto at = std::make_pair(p.pos_range, p.pos_offset);
  std::random_device seeds;
  group_effects none;
  for (auto& r : ranges_of(p)) {
    auto k = ra.ranges.size();
    auto end = r.hi + 1;
    auto cursor = k < at.first ? end : k == at.first ? std::max(at.second, r.lo) : r.lo;
    group_identity where{r.topic, r.topic_id, r.partition, cfg.name + ":replay-" + id,
                         cfg.name + "@replay/" + id};
    auto e = std::make_unique<consumer_group>(cfg, std::move(where), seeds());
    e->recover(std::min(cursor, end), {}, end, -1, 0, none);
    ra.ranges.push_back({r, std::move(e)});
  }
  return ra;
}

replay_actor::behavior_type replay_behavior(replay_actor_t self, node_context* ctx,
                                            std::string id) {
  // The runner stores why the replay failed: keep what went wrong.
  self->set_exception_handler([](caf::scheduled_actor*, std::exception_ptr& e) -> caf::error {
    try {
      std::rethrow_exception(e);
    } catch (const std::exception& x) {
      return caf::make_error(caf::sec::runtime_error, std::string{x.what()});
    } catch (...) {
      return caf::make_error(caf::sec::runtime_error);
    }
  });
  auto& st = self->state;
  st.ctx = ctx;
  st.id = id;
  auto stored = load_replay(*ctx->store, id);
  if (!stored)
    throw std::runtime_error(stored.error().message);
  st.record = std::move(*stored);
  for (auto& p : st.record.plan)
    st.agents.push_back(agent_of(*ctx, id, p));
  recount(st);
  spdlog::info("replay {} running: {} deliveries to {} agents, {} done", id, st.record.events_total,
               st.agents.size(), st.record.events_done);
  self->send(self, wake_atom::value);
  self->delayed_send(self, tick_every, sweep_atom::value);
  return {
    [=](wake_atom) { pump(self); },
    [=](sweep_atom) {
      if (self->state.dirty)
        persist(self, false);
      pump(self);
      self->delayed_send(self, tick_every, sweep_atom::value);
    },
    [=](outcome_atom, const outcome& o) {
      if (auto a = close_attempt(self, o.offset))
        on_answer(self, *a, &o, o.error);
    },
    [=](outcome_atom, const std::vector<outcome>& os) {
      for (auto& o : os)
        if (auto a = close_attempt(self, o.offset))
          on_answer(self, *a, &o, o.error);
    },
    [=](timeout_atom, std::uint64_t token) {
      // No credit to give back: the runner reset the dead instance's credits.
      if (auto a = close_attempt(self, token))
        on_answer(self, *a, nullptr, "no answer from the agent instance");
    },
    [=](retry_atom, std::uint64_t ai, std::uint64_t k, std::uint64_t offset) {
      auto& st = self->state;
      if (ai >= st.agents.size() || k >= st.agents[ai].ranges.size())
        return;
      auto& e = *st.agents[ai].ranges[k].engine;
      e.set_paused(st.agents[ai].agent->paused.load());
      e.retry_due(offset, clock_us(st), st.fx);
      apply(self, ai, k);
      pump(self);
    },
    [=](cancel_replay_atom) {
      finish(self, replay_state::cancelled);
      return caf::ok_atom::value;
    },
    [=](stop_atom) {
      // The node stops: keep the progress, resume after the restart.
      persist(self, true);
      self->quit();
    },
  };
}

} // namespace

caf::actor spawn_replay(caf::local_actor* parent, node_context* ctx, const std::string& id) {
  if (!ctx->detach_blocking)
    return caf::actor_cast<caf::actor>(parent->spawn<caf::monitored>(replay_behavior, ctx, id));
  return caf::actor_cast<caf::actor>(
    parent->spawn<caf::detached + caf::monitored>(replay_behavior, ctx, id));
}

} // namespace nerve::actors::detail
