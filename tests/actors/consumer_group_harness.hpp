// Test support for the consumer-group engine: a fake credit source, a fake
// store and a harness that plays the partition actor's part (feeding events,
// carrying out effects) on a virtual clock.
#pragma once

#include <algorithm>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include "actors/consumer_group.hpp"

namespace nerve::test {

using actors::consumer_group;
using actors::group_effects;
using std::chrono::milliseconds;

inline constexpr std::int64_t start_us = 1'000'000'000;

inline config::agent_config agent_cfg(std::uint32_t instances = 2,
                                      std::uint32_t max_in_flight = 4) {
  config::agent_config a;
  a.name = "sink";
  a.instances = instances;
  a.max_in_flight = max_in_flight;
  a.max_retries = 2;
  a.backoff_initial = milliseconds{100};
  a.backoff_max = milliseconds{1000};
  return a;
}

inline actors::group_event event_at(std::uint64_t offset, std::string key = {},
                                    std::string type = "order.created") {
  actors::group_event e;
  e.offset = offset;
  e.json = std::make_shared<const std::string>("{\"offset\":" + std::to_string(offset) + "}");
  e.id = "ev-" + std::to_string(offset);
  e.key = std::move(key);
  e.type = std::move(type);
  return e;
}

/// Slots per instance, round-robin, like the agent's credits; a dead
/// instance gives none.
struct fake_credits final : actors::credit_source {
  std::vector<std::uint32_t> used;
  std::vector<bool> alive;
  std::uint32_t max = 0;
  std::size_t rr = 0;

  fake_credits(std::uint32_t instances, std::uint32_t max_in_flight)
    : used(instances, 0), alive(instances, true), max(max_in_flight) {}

  std::optional<std::size_t> take() override {
    for (std::size_t k = 0; k < used.size(); ++k) {
      auto i = (rr + k) % used.size();
      if (alive[i] && used[i] < max) {
        ++used[i];
        rr = i + 1;
        return i;
      }
    }
    return std::nullopt;
  }
};

/// What the shell would keep in the store.
struct fake_store {
  std::optional<std::uint64_t> cursor;
  std::map<std::uint64_t, persistence::pending_record> pending;
  std::map<std::uint64_t, persistence::dlq_entry> dlq;
  std::map<std::string, persistence::stored_result> results;
  std::map<std::uint64_t, std::uint32_t> attempts;
  std::map<std::uint64_t, int> dead_per_offset;
  std::size_t writes = 0;
  std::size_t dead_letters = 0;

  void apply(const actors::state_change& c) {
    ++writes;
    if (auto* p = std::get_if<actors::put_pending>(&c))
      pending[p->offset] = *p;
    else if (auto* d = std::get_if<actors::delete_pending>(&c))
      pending.erase(d->offset);
    else if (auto* r = std::get_if<actors::put_result>(&c))
      results[r->event_id] = r->result;
    else if (auto* a = std::get_if<actors::put_attempts>(&c))
      attempts[a->offset] = a->attempts;
    else if (auto* e = std::get_if<actors::dlq_handoff>(&c)) {
      dlq[e->offset] = *e;
      ++dead_per_offset[e->offset];
      ++dead_letters;
    }
  }

  [[nodiscard]] std::vector<persistence::pending_record> pending_list() const {
    std::vector<persistence::pending_record> out;
    for (auto& [offset, p] : pending)
      out.push_back(p);
    return out;
  }
};

/// One group with its log, credits, store and virtual time: the shell.
struct harness {
  config::agent_config cfg;
  std::vector<actors::group_event> log;
  std::unique_ptr<consumer_group> g;
  fake_credits credits;
  fake_store store;
  group_effects fx;
  std::vector<actors::outgoing_delivery> sent; ///< every delivery, in order
  std::vector<actors::retry_timer> timers;
  std::int64_t now = start_us;

  explicit harness(config::agent_config c, std::uint64_t seed = 7)
    : cfg(std::move(c)), credits(cfg.instances, cfg.max_in_flight) {
    start(seed);
  }

  void start(std::uint64_t seed, std::uint64_t cursor = 0) {
    g = std::make_unique<consumer_group>(cfg, actors::group_identity{"orders", 3, 1, {}, {}}, seed);
    timers.clear();
    g->recover(store.cursor.value_or(cursor), store.pending_list(), log.size(), -1, now, fx);
    drain();
  }

  void append(std::size_t n, const std::string& key = {}, const std::string& type = "t") {
    for (std::size_t i = 0; i < n; ++i)
      log.push_back(event_at(log.size(), key, type));
  }

  /// Reads, loads and dispatches, as the partition actor's pump does.
  void pump() {
    g->set_end(log.size());
    while (auto want = g->wanted()) {
      auto from = g->next_read();
      for (auto o = from; want > 0; ++o, --want)
        if (log[o].json) // a null event is gone (retention): the log skips it
          g->feed(log[o]);
      if (g->next_read() == from)
        g->skip_to_end();
    }
    g->advance(fx);
    for (auto offset : std::vector<std::uint64_t>{g->unloaded()})
      g->load(offset, offset < log.size() && log[offset].json ? &log[offset] : nullptr, fx);
    g->dispatch(credits, fx);
    drain();
  }

  void drain() {
    std::vector<std::pair<std::uint64_t, std::uint32_t>> stored_dead;
    for (auto& c : fx.changes) {
      store.apply(c);
      if (auto* e = std::get_if<actors::dlq_handoff>(&c))
        stored_dead.emplace_back(e->offset, e->attempts);
    }
    for (auto& d : fx.deliveries)
      sent.push_back(d);
    timers.insert(timers.end(), fx.timers.begin(), fx.timers.end());
    fx.clear();
    // The node's DLQ actor answers later; here the DLQ holds the entry at
    // once, unless a test holds the answers back.
    if (hold_dead_letters) {
      unconfirmed.insert(unconfirmed.end(), stored_dead.begin(), stored_dead.end());
      stored_dead.clear();
    }
    for (auto [offset, attempts] : stored_dead)
      g->dead_lettered(offset, attempts, fx);
    if (!stored_dead.empty())
      return drain();
    if (auto c = g->take_cursor())
      store.cursor = *c;
  }

  /// The shell commits progress (its timer, a stop): the acks made out of
  /// order are staged and stored.
  void commit() {
    g->stage_acks(fx);
    drain();
  }

  /// The DLQ answers the dead letters held back.
  void confirm_dead_letters() {
    auto held = std::move(unconfirmed);
    unconfirmed.clear();
    for (auto [offset, attempts] : held)
      g->dead_lettered(offset, attempts, fx);
    drain();
  }

  bool hold_dead_letters = false;
  std::vector<std::pair<std::uint64_t, std::uint32_t>> unconfirmed;

  /// The instance answers attempt `attempt` of `offset`; false when stale.
  bool answer(std::uint64_t offset, std::uint32_t attempt, bool ok,
              const std::string& result = {}) {
    auto* d = find_sent(offset, attempt);
    if (g->answer(offset, attempt) == nullptr)
      return false;
    if (d != nullptr)
      --credits.used[d->instance];
    if (ok)
      g->ack(offset, result, now, fx);
    else
      g->fail(offset, "boom", false, now, fx);
    drain();
    return true;
  }

  bool ack(std::uint64_t offset, std::uint32_t attempt = 1) {
    return answer(offset, attempt, true);
  }
  bool nack(std::uint64_t offset, std::uint32_t attempt = 1) {
    return answer(offset, attempt, false);
  }

  const actors::outgoing_delivery* find_sent(std::uint64_t offset, std::uint32_t attempt) const {
    for (auto it = sent.rbegin(); it != sent.rend(); ++it)
      if (it->offset == offset && it->attempt == attempt)
        return &*it;
    return nullptr;
  }

  /// Advances the virtual time to the first timer and fires the due ones.
  void fire_timers() {
    if (timers.empty())
      return;
    auto first = std::min_element(timers.begin(), timers.end(),
                                  [](auto& a, auto& b) { return a.due_us < b.due_us; });
    now = std::max(now, first->due_us);
    auto due = timers;
    timers.clear();
    for (auto& t : due)
      if (t.due_us <= now)
        g->retry_due(t.offset, now, fx);
      else
        timers.push_back(t);
    drain();
  }

  [[nodiscard]] std::vector<std::uint64_t> sent_offsets() const {
    std::vector<std::uint64_t> out;
    for (auto& d : sent)
      out.push_back(d.offset);
    return out;
  }
};

using offsets = std::vector<std::uint64_t>;

} // namespace nerve::test
