// The replay actor: sends one replay's planned histories again to the
// agents' instances through the same credits, retries and DLQ as live
// delivery, without touching live cursors or live counters; records
// outcomes under the replay and persists its progress as it goes.
#include <algorithm>
#include <deque>
#include <map>
#include <unordered_map>

#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include "actors/replay_plan.hpp"
#include "actors/runtime.hpp"

namespace nerve::actors::detail {

using json = nlohmann::json;

namespace {

/// One event of an agent's history on its way through the replay.
struct replay_rec {
  std::size_t range = 0;
  std::uint64_t offset = 0;
  std::shared_ptr<const std::string> event; ///< marked with the replay id
  std::string event_id;
  std::uint32_t attempts = 0;
  bool in_flight = false;
  std::uint64_t token = 0; ///< of the attempt in flight
  std::int64_t first_failed_us = 0;
  std::int64_t last_failed_us = 0;
  std::string last_error;
};

using position = std::pair<std::size_t, std::uint64_t>; ///< range index, offset

struct replay_agent {
  agent_ptr agent;
  std::vector<range> ranges;
  position next{0, 0}; ///< next to read
  bool exhausted = false;
  std::deque<position> ready;          ///< read, to send (first attempts and retries)
  std::map<position, replay_rec> open; ///< read and not finished
  std::size_t in_flight = 0;
  std::size_t rr = 0;
  std::uint64_t done = 0;
  /// Resumed with outcomes stored: skip the events that have one.
  bool skip_settled = false;
};

struct replay_state {
  node_context* ctx = nullptr;
  std::string id;
  json record;
  std::vector<replay_agent> agents;
  std::unordered_map<std::uint64_t, std::pair<std::size_t, position>> tokens;
  std::uint64_t next_token = 1;
  bool dirty = false;
  static inline const char* name = "replay";
};

using replay_actor_t = caf::stateful_actor<replay_state>;

constexpr auto tick_every = std::chrono::milliseconds{200};
constexpr std::size_t read_ahead = 256;

std::int64_t clock_us(const replay_state& st) {
  return st.ctx->log->opts().clock();
}

/// Most deliveries a replay keeps in flight per agent: half its credits, so
/// live traffic keeps the other half.
std::size_t cap_of(const agent_runtime& a) {
  return std::max<std::size_t>(1, a.cfg.max_in_flight * a.instances.size() / 2);
}

void persist(replay_actor_t* self, bool sync) {
  auto& st = self->state;
  std::uint64_t done = 0;
  for (std::size_t i = 0; i < st.agents.size(); ++i) {
    auto& ra = st.agents[i];
    position low = ra.next;
    if (!ra.open.empty())
      low = std::min(low, ra.open.begin()->first);
    st.record["plan"][i]["pos"] = json::array({low.first, low.second});
    st.record["plan"][i]["done"] = ra.done;
    done += ra.done;
  }
  st.record["events_done"] = done;
  persistence::state_batch b;
  b.put_meta(replay_key(st.id), st.record.dump());
  if (auto ok = st.ctx->store->commit(b, sync); !ok)
    spdlog::error("replay {}: storing progress: {}", st.id, ok.error().message);
  st.dirty = false;
}

void finish(replay_actor_t* self, const std::string& state) {
  auto& st = self->state;
  st.record["state"] = state;
  st.record["finished_us"] = clock_us(st);
  persist(self, true);
  spdlog::info("replay {} {}: {} of {} deliveries done, {} acked, {} dead-lettered", st.id, state,
               st.record.value("events_done", 0ULL), st.record.value("events_total", 0ULL),
               st.record.value("acked", 0ULL), st.record.value("dead_lettered", 0ULL));
  self->quit();
}

/// Whether the event at `offset` already has an outcome under the replay: it
/// was finished after the stored position, before a restart.
bool settled_before(const replay_state& st, const replay_agent& ra, const range& r,
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
void recount(replay_state& st) {
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
  st.record["acked"] = acked;
  st.record["dead_lettered"] = dead;
}

/// Reads the next events of one agent's history into `ready`.
void fill(replay_actor_t* self, replay_agent& ra) {
  auto& st = self->state;
  while (!ra.exhausted && ra.ready.size() < read_ahead) {
    if (ra.next.first >= ra.ranges.size()) {
      ra.exhausted = true;
      return;
    }
    auto& r = ra.ranges[ra.next.first];
    auto at = std::max(ra.next.second, r.lo);
    auto t = st.ctx->log->find_topic(r.topic);
    if (!t || at > r.hi) {
      ra.next = {ra.next.first + 1, 0};
      continue;
    }
    auto want = std::min<std::uint64_t>(read_ahead, r.hi - at + 1);
    auto got = st.ctx->log->read_stored(*t, r.partition, at, r.hi, want);
    if (!got)
      throw std::runtime_error("reading events: " + got.error().message);
    for (auto& e : *got) {
      if (has_filter(ra.agent->cfg.filter)
          && !filter_matches(ra.agent->cfg.filter, json::parse(e.json, nullptr, false)))
        continue;
      if (ra.skip_settled && settled_before(st, ra, r, e.offset))
        continue;
      position pos{ra.next.first, e.offset};
      replay_rec rec;
      rec.range = ra.next.first;
      rec.offset = e.offset;
      rec.event_id = id_of(e.json);
      rec.event = std::make_shared<const std::string>(marked(e.json, st.id));
      ra.open.emplace(pos, std::move(rec));
      ra.ready.push_back(pos);
    }
    // Fewer than asked: the rest of the range is gone (retention) or read.
    bool done = got->size() < want || got->back().offset >= r.hi;
    ra.next
      = done ? position{ra.next.first + 1, 0} : position{ra.next.first, got->back().offset + 1};
  }
}

void dispatch(replay_actor_t* self, std::size_t ai) {
  auto& st = self->state;
  auto& ra = st.agents[ai];
  if (ra.agent->paused.load())
    return;
  while (!ra.ready.empty() && ra.in_flight < cap_of(*ra.agent)) {
    auto it = ra.open.find(ra.ready.front());
    if (it == ra.open.end() || it->second.in_flight) {
      ra.ready.pop_front();
      continue;
    }
    auto credit = ra.agent->take_credit(ra.rr, caf::actor{self});
    if (!credit)
      return;
    ra.ready.pop_front();
    auto& rec = it->second;
    ++rec.attempts;
    rec.in_flight = true;
    rec.token = st.next_token++;
    st.tokens[rec.token] = {ai, it->first};
    ++ra.in_flight;
    auto d = std::make_shared<delivery>();
    d->partition = caf::actor{self};
    d->group = ai;
    d->instance = credit->first;
    d->offset = rec.token;
    d->attempt = rec.attempts;
    d->event_id = rec.event_id;
    d->delivery_id = rec.event_id + ":" + ra.agent->cfg.name + ":replay-" + st.id + ":"
                     + std::to_string(rec.attempts);
    d->event = rec.event;
    self->send(credit->second, deliver_atom::value, std::move(d));
    // The instance times the attempt out; this catches an instance that died.
    self->delayed_send(self, ra.agent->cfg.timeout + std::chrono::seconds{5}, timeout_atom::value,
                       rec.token);
  }
}

void pump(replay_actor_t* self) {
  auto& st = self->state;
  bool all_done = true;
  for (std::size_t ai = 0; ai < st.agents.size(); ++ai) {
    auto& ra = st.agents[ai];
    fill(self, ra);
    dispatch(self, ai);
    if (!ra.exhausted || !ra.open.empty())
      all_done = false;
  }
  if (all_done)
    finish(self, "done");
}

/// Stores the outcome of one event under the replay and forgets it.
void settle(replay_actor_t* self, std::size_t ai, std::map<position, replay_rec>::iterator it,
            const std::string& outcome, const std::string& result) {
  auto& st = self->state;
  auto& ra = st.agents[ai];
  auto& rec = it->second;
  auto& r = ra.ranges[rec.range];
  json o{{"outcome", outcome}, {"attempts", rec.attempts}};
  if (!rec.last_error.empty())
    o["error"] = rec.last_error;
  if (!result.empty())
    o["result"] = json::parse(result, nullptr, false);
  persistence::state_batch b;
  b.put_meta(outcome_key(st.id, ra.agent->cfg.name, r.topic_id, r.partition, rec.offset), o.dump());
  if (auto ok = st.ctx->store->commit(b, false); !ok)
    spdlog::error("replay {}: storing an outcome: {}", st.id, ok.error().message);
  ra.open.erase(it);
  ++ra.done;
  st.dirty = true;
}

/// Hands an event out of retries to the DLQ actor, under an id of its own
/// (the live group's id would overwrite the live entry for this event, or
/// make a live-acked event look dead-lettered), then stores the outcome.
/// Nothing else runs meanwhile (await): the record stays as it is.
void dead_letter_of(replay_actor_t* self, std::size_t ai,
                    std::map<position, replay_rec>::iterator it) {
  auto& st = self->state;
  auto& ra = st.agents[ai];
  auto& rec = it->second;
  auto& r = ra.ranges[rec.range];
  dead_letter d;
  d.agent = ra.agent->cfg.name;
  d.topic = r.topic;
  d.at = {r.topic_id, r.partition, rec.offset};
  d.id = persistence::delivery_store::dlq_id(d.agent + "@replay/" + st.id, d.at.topic_id,
                                             d.at.partition, rec.offset);
  d.event_id = rec.event_id;
  d.event = *rec.event; // carries the replay mark
  d.error = rec.last_error + " (replay " + st.id + ")";
  d.attempts = rec.attempts;
  d.first_failed_us = rec.first_failed_us;
  d.last_failed_us = rec.last_failed_us;
  auto dlq = st.ctx->dlq_actor();
  if (!dlq)
    throw std::runtime_error("the DLQ actor is restarting"); // resumed by the runner
  auto pos = it->first;
  self->request(dlq, std::chrono::seconds{30}, dlq_put_atom::value, d)
    .await(
      [self, ai, pos, d](bool) {
        auto& st = self->state;
        auto found = st.agents[ai].open.find(pos);
        if (found == st.agents[ai].open.end())
          return;
        spdlog::warn("agent={} topic={} partition={} event={} dlq={} replay={}: moved to the DLQ "
                     "after {} attempts: {}",
                     d.agent, d.topic, d.at.partition, d.event_id, d.id, st.id, d.attempts,
                     d.error);
        st.record["dead_lettered"] = st.record.value("dead_lettered", 0ULL) + 1;
        settle(self, ai, found, "dead_lettered", {});
        pump(self);
      },
      [self](caf::error& e) {
        // The runner resumes the replay from its watermark.
        self->quit(make_caf_error(errc::unavailable, "handing a dead letter to the DLQ: "
                                                       + from_caf_error(e).message));
      });
}

void on_failure(replay_actor_t* self, std::size_t ai, std::map<position, replay_rec>::iterator it,
                const std::string& error) {
  auto& st = self->state;
  auto& ra = st.agents[ai];
  auto& rec = it->second;
  auto now = clock_us(st);
  st.record["failed"] = st.record.value("failed", 0ULL) + 1;
  rec.last_error = error;
  if (rec.first_failed_us == 0)
    rec.first_failed_us = now;
  rec.last_failed_us = now;
  if (rec.attempts > ra.agent->cfg.max_retries) {
    dead_letter_of(self, ai, it);
    return;
  }
  st.record["retried"] = st.record.value("retried", 0ULL) + 1;
  auto delay = backoff(ra.agent->cfg.backoff_initial, ra.agent->cfg.backoff_max, rec.attempts);
  self->delayed_send(self, delay, retry_atom::value, static_cast<std::uint64_t>(ai),
                     static_cast<std::uint64_t>(it->first.first), it->first.second);
}

/// Ends the attempt `token`; answers where it was, if it still is open.
std::optional<std::pair<std::size_t, std::map<position, replay_rec>::iterator>>
close_attempt(replay_actor_t* self, std::uint64_t token) {
  auto& st = self->state;
  auto t = st.tokens.find(token);
  if (t == st.tokens.end())
    return std::nullopt; // stale
  auto [ai, pos] = t->second;
  st.tokens.erase(t);
  auto& ra = st.agents[ai];
  auto it = ra.open.find(pos);
  if (it == ra.open.end() || !it->second.in_flight || it->second.token != token)
    return std::nullopt;
  it->second.in_flight = false;
  --ra.in_flight;
  return std::make_pair(ai, it);
}

caf::behavior replay_actor(replay_actor_t* self, node_context* ctx, std::string id) {
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
  auto stored = ctx->store->meta(replay_key(id));
  if (!stored || !*stored)
    throw std::runtime_error("replay " + id + " is not stored");
  st.record = json::parse(**stored);
  for (auto& p : st.record.at("plan")) {
    replay_agent ra;
    for (auto& a : ctx->agents)
      if (a->cfg.name == p.value("agent", ""))
        ra.agent = a;
    if (!ra.agent)
      throw std::runtime_error("replay " + id + ": agent " + p.value("agent", "")
                               + " is no longer configured");
    ra.ranges = ranges_of(p);
    auto pos = p.value("pos", json::array({0, 0}));
    ra.next = {pos.at(0).get<std::size_t>(), pos.at(1).get<std::uint64_t>()};
    st.agents.push_back(std::move(ra));
  }
  recount(st);
  spdlog::info("replay {} running: {} deliveries to {} agents, {} done", id,
               st.record.value("events_total", 0ULL), st.agents.size(),
               st.record.value("events_done", 0ULL));
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
    [=](outcome_atom, outcome_ptr& o) {
      auto found = close_attempt(self, o->offset);
      if (!found)
        return;
      auto [ai, it] = *found;
      if (o->ok) {
        auto& st = self->state;
        st.record["acked"] = st.record.value("acked", 0ULL) + 1;
        // Follow-ups a replayed attempt emits are kept with its outcome, not
        // published: a replay does not create live traffic.
        auto result = o->result;
        if (!o->emit.empty()) {
          auto r = json::parse(result.empty() ? "null" : result, nullptr, false);
          result = json{{"result", r}, {"emit", json::parse(o->emit, nullptr, false)}}.dump();
        }
        settle(self, ai, it, "acked", result);
      } else {
        on_failure(self, ai, it, o->error);
      }
      pump(self);
    },
    [=](timeout_atom, std::uint64_t token) {
      auto found = close_attempt(self, token);
      if (!found)
        return;
      auto [ai, it] = *found;
      // No credit to give back: the runner reset the dead instance's credits.
      on_failure(self, ai, it, "no answer from the agent instance");
      pump(self);
    },
    [=](retry_atom, std::uint64_t ai, std::uint64_t range_index, std::uint64_t offset) {
      auto& st = self->state;
      if (ai < st.agents.size())
        st.agents[ai].ready.push_front({static_cast<std::size_t>(range_index), offset});
      pump(self);
    },
    [=](cancel_atom, reply_ptr& reply) {
      finish(self, "cancelled");
      (*reply)({});
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
    return parent->spawn<caf::monitored>(replay_actor, ctx, id);
  return parent->spawn<caf::detached + caf::monitored>(replay_actor, ctx, id);
}

} // namespace nerve::actors::detail