// The consumer-group engine against a model: seeded random sequences of
// acks, nacks, timeouts, crashes and restarts, checked against what
// at-least-once delivery with per-key order promises.
#include <catch2/catch.hpp>

#include <cstdlib>
#include <random>

#include "tests/actors/consumer_group_harness.hpp"

using namespace nerve;
using namespace nerve::test;

// -- randomized sequences against a model ------------------------------------------------

namespace {

#define MODEL_CHECK(cond)                                                                          \
  do {                                                                                             \
    if (!(cond))                                                                                   \
      FAIL("model check failed: " #cond "\nlast steps:" << trace_);                                \
  } while (false)

/// One seeded sequence of appends, acks, nacks, timeouts, emits, stale
/// answers, instance crashes, engine restarts, DLQ retries and pauses, then
/// a drive to completion. The model: every matching event ends acked or
/// dead-lettered exactly once (once more per DLQ retry), the cursor never
/// passes an unsettled offset, and in an ordered group a key has one
/// delivery at a time, sent only once its earlier events are settled (a DLQ
/// retry is the exception: it goes after the key's current delivery).
class model_run {
public:
  explicit model_run(std::uint64_t seed) : rng_(seed), h_(make_cfg(rng_), seed) {
    total_ = 10 + rng_() % 51;
    filtered_ = h_.cfg.filter.type.has_value();
    // Half the runs get the DLQ's answers late, as the DLQ actor gives them.
    h_.hold_dead_letters = rng_() % 2 == 0;
  }

  void run() {
    for (int step = 0; step < 300; ++step) {
      act(rng_() % 100);
      check();
    }
    complete();
  }

private:
  struct flight {
    std::uint64_t offset = 0;
    std::uint32_t attempt = 0;
    std::size_t instance = 0;
  };

  static config::agent_config make_cfg(std::mt19937_64& rng) {
    auto cfg = agent_cfg(1 + rng() % 3, 1 + rng() % 4);
    cfg.max_retries = rng() % 4;
    if (rng() % 2 == 0)
      cfg.ordered_by = config::ordering::key;
    if (rng() % 3 == 0)
      cfg.filter.type = "match";
    return cfg;
  }

  std::size_t pick(std::size_t n) { return rng_() % n; }

  void act(std::uint64_t roll) {
    if (trace_.size() > 4000)
      trace_.erase(0, trace_.size() - 3000);
    trace_ += "\n roll " + std::to_string(roll) + " cursor " + std::to_string(h_.g->cursor());
    if (roll < 12)
      append();
    else if (roll < 30)
      pump();
    else if (roll < 50)
      answer(pick_flight(), true, false);
    else if (roll < 58)
      answer(pick_flight(), false, false);
    else if (roll < 62)
      answer(pick_flight(), false, true);
    else if (roll < 66)
      start_emit();
    else if (roll < 70)
      end_emit(rng_() % 3 != 0);
    else if (roll < 76)
      stale();
    else if (roll < 86)
      h_.fire_timers();
    else if (roll < 89)
      crash(pick(h_.cfg.instances));
    else if (roll < 92)
      restart();
    else if (roll < 96)
      retry_dead_letter();
    else if (roll < 98)
      h_.confirm_dead_letters(); // the DLQ actor answers
    else
      h_.g->set_paused(rng_() % 3 == 0);
  }

  void append() {
    for (auto n = 1 + pick(5); n > 0 && h_.log.size() < total_; --n) {
      auto key = "k" + std::to_string(pick(4));
      auto type = filtered_ && pick(4) == 0 ? "skip" : "match";
      h_.append(1, key, type);
      settled_.push_back(0);
      expected_.push_back(filtered_ && std::string{type} == "skip" ? 0 : 1);
      redelivered_.push_back(false);
    }
  }

  void pump() {
    h_.pump();
    for (; seen_ < h_.sent.size(); ++seen_)
      on_sent(h_.sent[seen_]);
  }

  void on_sent(const actors::outgoing_delivery& d) {
    trace_ += " sent " + std::to_string(d.offset) + "/" + std::to_string(d.attempt) + " "
              + h_.log[d.offset].key;
    MODEL_CHECK(expected_[d.offset] > 0); // the filter matched it
    auto& key = h_.log[d.offset].key;
    if (h_.cfg.ordered_by == config::ordering::key) {
      for (auto* list : {&flights_, &emitting_})
        for (auto& f : *list)
          MODEL_CHECK(h_.log[f.offset].key != key); // one delivery per key at a time
      if (!redelivered_[d.offset])
        for (std::uint64_t o = 0; o < d.offset; ++o)
          if (h_.log[o].key == key && expected_[o] > 0 && !redelivered_[o]
              && settled_[o] + dead(o) == 0)
            trace_ += " unsettled " + std::to_string(o);
      if (!redelivered_[d.offset])
        for (std::uint64_t o = 0; o < d.offset; ++o)
          if (h_.log[o].key == key && expected_[o] > 0 && !redelivered_[o])
            MODEL_CHECK(settled_[o] + dead(o) > 0); // earlier events of the key first
    }
    flights_.push_back({d.offset, d.attempt, d.instance});
  }

  std::optional<flight> pick_flight() {
    if (flights_.empty())
      return std::nullopt;
    auto i = pick(flights_.size());
    auto f = flights_[i];
    flights_.erase(flights_.begin() + static_cast<std::ptrdiff_t>(i));
    return f;
  }

  /// The instance answers; its credit comes back.
  void answer(std::optional<flight> f, bool ok, bool timed_out) {
    if (!f)
      return;
    trace_ += (ok ? " ack " : " nack ") + std::to_string(f->offset);
    MODEL_CHECK(h_.g->answer(f->offset, f->attempt) != nullptr);
    --h_.credits.used[f->instance];
    if (ok) {
      h_.g->ack(f->offset, {}, h_.now, h_.fx);
      ++settled_[f->offset];
    } else {
      h_.g->fail(f->offset, "boom", timed_out, h_.now, h_.fx);
    }
    h_.drain();
  }

  void start_emit() {
    auto f = pick_flight();
    if (!f)
      return;
    MODEL_CHECK(h_.g->answer(f->offset, f->attempt) != nullptr);
    --h_.credits.used[f->instance];
    h_.g->hold_for_emit(f->offset);
    emitting_.push_back(*f);
  }

  void end_emit(bool ok) {
    if (emitting_.empty())
      return;
    auto i = pick(emitting_.size());
    auto f = emitting_[i];
    emitting_.erase(emitting_.begin() + static_cast<std::ptrdiff_t>(i));
    MODEL_CHECK(h_.g->emitted(f.offset, f.attempt));
    if (ok) {
      h_.g->ack(f.offset, {}, h_.now, h_.fx);
      ++settled_[f.offset];
    } else {
      h_.g->fail(f.offset, "emit failed", false, h_.now, h_.fx);
    }
    h_.drain();
  }

  /// An answer to an attempt that is no longer open changes nothing.
  void stale() {
    if (h_.sent.empty())
      return;
    auto& d = h_.sent[pick(h_.sent.size())];
    for (auto* list : {&flights_, &emitting_})
      for (auto& f : *list)
        if (f.offset == d.offset && f.attempt == d.attempt)
          return; // still open
    MODEL_CHECK(h_.g->answer(d.offset, d.attempt) == nullptr);
  }

  /// The runner resets the dead instance's credits; the group sends again.
  void crash(std::size_t instance) {
    h_.credits.used[instance] = 0;
    flights_.erase(std::remove_if(flights_.begin(), flights_.end(),
                                  [&](const flight& f) { return f.instance == instance; }),
                   flights_.end());
    h_.g->requeue(instance);
  }

  /// A new engine from what the store holds; answers to the old one are lost.
  void restart() {
    h_.confirm_dead_letters(); // restarts come where all state is stored
    h_.commit();
    flights_.clear();
    emitting_.clear();
    std::fill(h_.credits.used.begin(), h_.credits.used.end(), 0);
    h_.start(rng_());
  }

  void retry_dead_letter() {
    if (h_.store.dlq.empty())
      return;
    auto it
      = std::next(h_.store.dlq.begin(), static_cast<std::ptrdiff_t>(pick(h_.store.dlq.size())));
    auto offset = it->first;
    for (auto& [held, attempts] : h_.unconfirmed)
      if (held == offset)
        return; // the DLQ has not answered for it yet: not retried

    MODEL_CHECK(h_.g->redeliver(offset, h_.fx) == actors::redeliver_result::queued);
    h_.store.dlq.erase(it);
    h_.drain();
    ++expected_[offset];
    redelivered_[offset] = true;
  }

  /// After each step: the cursor passed only settled offsets, and the
  /// engine's counts agree with the model's.
  void check() {
    auto& g = *h_.g;
    MODEL_CHECK(g.cursor() <= g.next_read());
    MODEL_CHECK(g.next_read() <= g.end());
    MODEL_CHECK(g.cursor() >= checked_);
    for (; checked_ < g.cursor(); ++checked_)
      MODEL_CHECK(expected_[checked_] == 0 || settled_[checked_] + dead(checked_) > 0);
    MODEL_CHECK(g.in_flight() == flights_.size());
    for (std::size_t i = 0; i < h_.credits.used.size(); ++i) {
      auto n = std::count_if(flights_.begin(), flights_.end(),
                             [i](const flight& f) { return f.instance == i; });
      MODEL_CHECK(h_.credits.used[i] == n);
      MODEL_CHECK(g.in_flight_on(i) == n);
      MODEL_CHECK(n <= h_.cfg.max_in_flight); // credits within max_in_flight
    }
  }

  int dead(std::uint64_t offset) const {
    auto it = h_.store.dead_per_offset.find(offset);
    return it == h_.store.dead_per_offset.end() ? 0 : it->second;
  }

  /// Everything appended, then every answer an ack until nothing is left.
  void complete() {
    h_.g->set_paused(false);
    while (h_.log.size() < total_)
      append();
    for (int round = 0; round < 10'000; ++round) {
      h_.confirm_dead_letters();
      pump();
      while (!flights_.empty())
        answer(pick_flight(), true, false);
      while (!emitting_.empty())
        end_emit(true);
      check();
      if (h_.timers.empty() && h_.g->cursor() == h_.log.size() && h_.store.pending.empty())
        break;
      h_.fire_timers();
    }
    MODEL_CHECK(h_.g->cursor() == h_.log.size());
    MODEL_CHECK(h_.store.pending.empty());
    MODEL_CHECK(h_.g->waiting_retry() == 0);
    MODEL_CHECK(h_.g->redelivering() == 0);
    MODEL_CHECK(h_.store.cursor.value_or(0) == h_.log.size());
    for (std::uint64_t o = 0; o < h_.log.size(); ++o) {
      CAPTURE(o);
      MODEL_CHECK(settled_[o] + dead(o) == expected_[o]); // acked or dead-lettered, once each
    }
  }

  std::mt19937_64 rng_;
  harness h_;
  std::size_t total_ = 0;
  bool filtered_ = false;
  std::vector<int> settled_;  ///< accepted acks per offset
  std::vector<int> expected_; ///< settlements due: 0 when filtered, +1 per DLQ retry
  std::vector<bool> redelivered_;
  std::vector<flight> flights_;
  std::vector<flight> emitting_;
  std::size_t seen_ = 0;
  std::uint64_t checked_ = 0;
  std::string trace_; ///< the last steps, printed when a check fails
};

} // namespace

TEST_CASE("random sequences of acks, nacks, timeouts, crashes and restarts keep the model",
          "[unit]") {
  // NERVE_MODEL_SEED=<seed> replays one sequence.
  std::uint64_t base = 20261202;
  std::uint64_t count = 1000;
  if (auto* one = std::getenv("NERVE_MODEL_SEED")) {
    base = std::stoull(one);
    count = 1;
  }
  for (std::uint64_t i = 0; i < count; ++i) {
    auto seed = base + i;
    CAPTURE(seed);
    model_run{seed}.run();
  }
}
