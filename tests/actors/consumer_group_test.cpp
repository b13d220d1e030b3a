// The consumer-group engine on its own: no actors, no storage, no clock.
// Each test drives it with fed events, a fake credit source and a virtual
// time, and checks the effects.
#include <catch2/catch.hpp>

#include <set>

#include "tests/actors/consumer_group_harness.hpp"

using namespace nerve;
using namespace nerve::test;

// -- cursor and acks -------------------------------------------------------------

TEST_CASE("acks in order move the cursor over each acked offset and store nothing else", "[unit]") {
  harness h{agent_cfg()};
  h.append(4);
  h.pump();
  REQUIRE(h.sent_offsets() == offsets{0, 1, 2, 3});
  for (std::uint64_t o = 0; o < 4; ++o) {
    REQUIRE(h.ack(o));
    CHECK(h.g->cursor() == o + 1);
  }
  CHECK(h.store.cursor == 4U);
  CHECK(h.store.writes == 0); // no pending, result or attempts record
}

TEST_CASE("out-of-order acks keep the cursor at the first unsettled offset", "[unit]") {
  harness h{agent_cfg()};
  h.append(4);
  h.pump();
  REQUIRE(h.ack(2));
  REQUIRE(h.ack(1));
  CHECK(h.g->cursor() == 0);
  CHECK(h.g->holds_acks());
  CHECK(h.store.pending.empty()); // progress: held until the shell commits
  h.commit();
  CHECK(h.store.pending.count(1) == 1);
  CHECK(h.store.pending.at(2).acked);
  REQUIRE(h.ack(0));
  CHECK(h.g->cursor() == 3);
  CHECK(h.store.pending.empty()); // passed: forgotten
  REQUIRE(h.ack(3));
  CHECK(h.store.cursor == 4U);
}

TEST_CASE("acks out of order that the cursor passes before a commit are never written", "[unit]") {
  harness h{agent_cfg()};
  h.append(4);
  h.pump();
  REQUIRE(h.ack(3));
  REQUIRE(h.ack(1));
  REQUIRE(h.ack(0));
  CHECK(h.g->cursor() == 2);
  h.commit(); // 1 was passed: only 3 is stored
  REQUIRE(h.store.pending.size() == 1);
  CHECK(h.store.pending.at(3).acked);
  CHECK(!h.g->holds_acks());
  // A restart from the store delivers nothing acked again, and 2 once more.
  h.start(9);
  h.pump();
  REQUIRE(h.ack(2, 1));
  CHECK(h.store.cursor == 4U);
  CHECK(h.store.pending.empty());
}

TEST_CASE("an ack out of order lost before its commit delivers its event again", "[unit]") {
  harness h{agent_cfg()};
  h.append(3);
  h.pump();
  REQUIRE(h.ack(2));
  // kill -9: the held ack was never stored; at-least-once sends 2 again.
  auto before = h.sent.size();
  h.start(9);
  h.pump();
  REQUIRE(h.sent.size() == before + 3);
  CHECK(h.sent.back().offset == 2);
}

TEST_CASE("an ack stores the agent's result, and the attempts when it took more than one",
          "[unit]") {
  harness h{agent_cfg()};
  h.append(2);
  h.pump();
  REQUIRE(h.answer(0, 1, true, "{\"total\":3}"));
  CHECK(h.store.results.at("ev-0").result == "{\"total\":3}");
  CHECK(h.store.attempts.count(0) == 0);
  REQUIRE(h.nack(1));
  h.fire_timers();
  h.pump();
  REQUIRE(h.ack(1, 2));
  CHECK(h.store.attempts.at(1) == 2);
}

// -- retries, backoff, DLQ -------------------------------------------------------------

TEST_CASE("a failed attempt waits the initial backoff, stored as pending, then goes again",
          "[unit]") {
  harness h{agent_cfg()};
  h.append(1);
  h.pump();
  REQUIRE(h.nack(0));
  REQUIRE(h.timers.size() == 1);
  CHECK(h.timers[0].failed_attempt == 1);
  CHECK(h.g->event_id(0) == "ev-0");
  CHECK(h.g->last_error(0) == "boom");
  auto delay_us = h.timers[0].due_us - h.now;
  CHECK(delay_us >= 80'000);
  CHECK(delay_us <= 120'000);
  auto& p = h.store.pending.at(0);
  CHECK(p.attempts == 1);
  CHECK_FALSE(p.acked);
  CHECK(p.next_attempt_us == h.timers[0].due_us);
  CHECK(p.last_error == "boom");
  CHECK(h.g->waiting_retry() == 1);
  h.pump();
  CHECK(h.sent.size() == 1); // not before it is due
  h.fire_timers();
  h.pump();
  REQUIRE(h.sent.size() == 2);
  CHECK(h.sent[1].attempt == 2);
  CHECK(h.sent[1].delivery_id == "ev-0:sink:2");
  CHECK(h.g->waiting_retry() == 0);
}

TEST_CASE("backoff doubles per attempt and stops at the cap", "[unit]") {
  using actors::backoff_with;
  CHECK(backoff_with(milliseconds{100}, milliseconds{1000}, 1, 1.0).count() == 100);
  CHECK(backoff_with(milliseconds{100}, milliseconds{1000}, 2, 1.0).count() == 200);
  CHECK(backoff_with(milliseconds{100}, milliseconds{1000}, 4, 1.0).count() == 800);
  CHECK(backoff_with(milliseconds{100}, milliseconds{1000}, 5, 1.0).count() == 1000);
  CHECK(backoff_with(milliseconds{100}, milliseconds{1000}, 60, 1.0).count() == 1000);
  CHECK(backoff_with(milliseconds{100}, milliseconds{1000}, 0, 1.0).count() == 100);
}

TEST_CASE("retry delays stay within 20 percent of the backoff for every seed", "[unit]") {
  auto cfg = agent_cfg(1, 1);
  cfg.max_retries = 10;
  cfg.backoff_max = milliseconds{100'000};
  std::set<std::int64_t> seen;
  for (std::uint64_t seed = 1; seed <= 200; ++seed) {
    CAPTURE(seed);
    harness h{cfg, seed};
    h.append(1);
    h.pump();
    for (std::uint32_t attempt = 1; attempt <= 4; ++attempt) {
      REQUIRE(h.nack(0, attempt));
      REQUIRE(h.timers.size() == 1);
      auto base_us = 100'000LL << (attempt - 1);
      auto delay_us = h.timers[0].due_us - h.now;
      CHECK(delay_us >= base_us * 8 / 10);
      CHECK(delay_us <= base_us * 12 / 10);
      if (attempt == 1)
        seen.insert(delay_us);
      h.fire_timers();
      h.pump();
    }
  }
  CHECK(seen.size() > 30); // jittered (whole milliseconds), not one fixed delay
  CHECK(*seen.begin() < 90'000);
  CHECK(*seen.rbegin() > 110'000);
}

TEST_CASE("the same seed gives the same retry delays", "[unit]") {
  auto delays = [](std::uint64_t seed) {
    harness h{agent_cfg(), seed};
    h.append(3);
    h.pump();
    std::vector<std::int64_t> out;
    for (std::uint64_t o = 0; o < 3; ++o)
      h.nack(o);
    for (auto& t : h.timers)
      out.push_back(t.due_us);
    return out;
  };
  CHECK(delays(42) == delays(42));
  CHECK(delays(42) != delays(43));
}

TEST_CASE("a dead-lettered record holds the cursor and its key until the DLQ has it", "[unit]") {
  auto cfg = agent_cfg();
  cfg.max_retries = 0;
  cfg.ordered_by = config::ordering::key;
  harness h{cfg};
  h.hold_dead_letters = true;
  h.append(1, "k");
  h.append(1, "k");
  h.pump();
  REQUIRE(h.sent_offsets() == offsets{0});
  REQUIRE(h.nack(0, 1));
  h.pump();
  CHECK(h.store.dead_letters == 1);            // handed off ...
  CHECK(h.g->cursor() == 0);                   // ... but not yet passed
  CHECK(h.sent_offsets() == offsets{0});       // and the key still waits for it
  CHECK_FALSE(h.g->dead_lettered(0, 2, h.fx)); // a stale answer changes nothing
  h.confirm_dead_letters();
  h.pump();
  CHECK(h.g->cursor() == 1);
  CHECK(h.sent_offsets() == offsets{0, 1});
  CHECK(h.g->take_totals().dead_lettered == 1);
}

TEST_CASE("after max_retries the record goes to the DLQ exactly once and the cursor passes it",
          "[unit]") {
  harness h{agent_cfg()}; // max_retries 2: three attempts
  h.append(2);
  h.pump();
  REQUIRE(h.ack(1));
  for (std::uint32_t attempt = 1; attempt <= 3; ++attempt) {
    REQUIRE(h.nack(0, attempt));
    h.fire_timers();
    h.pump();
  }
  CHECK(h.sent.size() == 4);
  CHECK(h.store.dead_letters == 1);
  auto& e = h.store.dlq.at(0);
  CHECK(e.agent == "sink");
  CHECK(e.topic == "orders");
  CHECK(e.topic_id == 3);
  CHECK(e.partition == 1);
  CHECK(e.id == persistence::delivery_store::dlq_id("sink", 3, 1, 0));
  CHECK(e.event_id == "ev-0");
  CHECK(e.event == "{\"offset\":0}");
  CHECK(e.attempts == 3);
  CHECK(e.error == "boom");
  CHECK(e.first_failed_us > 0);
  CHECK(e.last_failed_us >= e.first_failed_us);
  CHECK(h.g->cursor() == 2);
  CHECK(h.store.pending.empty());
  CHECK_FALSE(h.nack(0, 3)); // a late duplicate does not dead-letter again
  CHECK(h.store.dead_letters == 1);
  auto t = h.g->take_totals();
  CHECK(t.failed == 3);
  CHECK(t.retried == 2);
  CHECK(t.dead_lettered == 1);
  CHECK(t.processed == 1);
  CHECK(t.received == 4);
}

TEST_CASE("a stale outcome of an earlier attempt is ignored", "[unit]") {
  harness h{agent_cfg()};
  h.append(1);
  h.pump();
  REQUIRE(h.nack(0, 1));
  h.fire_timers();
  h.pump();
  CHECK_FALSE(h.ack(0, 1)); // attempt 1 again: answered already
  CHECK(h.g->in_flight() == 1);
  CHECK(h.g->cursor() == 0);
  CHECK_FALSE(h.ack(0, 3)); // an attempt never made
  REQUIRE(h.ack(0, 2));
  CHECK(h.g->cursor() == 1);
  CHECK_FALSE(h.ack(0, 2)); // twice
}

TEST_CASE("a timed-out attempt counts as failed and timed out and is retried", "[unit]") {
  harness h{agent_cfg()};
  h.append(1);
  h.pump();
  REQUIRE(h.g->answer(0, 1) != nullptr);
  h.g->fail(0, "no answer within 30s", true, h.now, h.fx);
  h.drain();
  auto t = h.g->take_totals();
  CHECK(t.failed == 1);
  CHECK(t.timed_out == 1);
  CHECK(h.timers.size() == 1);
  CHECK(h.store.pending.at(0).last_error == "no answer within 30s");
}

// -- per-key order -------------------------------------------------------------------

TEST_CASE("an ordered group keeps one delivery per key in flight across instances", "[unit]") {
  auto cfg = agent_cfg(3, 4);
  cfg.ordered_by = config::ordering::key;
  harness h{cfg};
  for (auto* key : {"a", "b", "a", "c", "b", "a"})
    h.append(1, key);
  h.pump();
  CHECK(h.sent_offsets() == offsets{0, 1, 3}); // a, b, c: 2, 4, 5 wait for their key
  REQUIRE(h.ack(0));
  h.pump();
  CHECK(h.sent_offsets() == offsets{0, 1, 3, 2});
  REQUIRE(h.ack(1));
  REQUIRE(h.ack(2));
  h.pump();
  CHECK(h.sent_offsets() == offsets{0, 1, 3, 2, 4, 5});
}

TEST_CASE("a retry in an ordered group holds its key and is sent before later events of it",
          "[unit]") {
  auto cfg = agent_cfg(2, 4);
  cfg.ordered_by = config::ordering::key;
  harness h{cfg};
  h.append(2, "a");
  h.pump();
  REQUIRE(h.sent_offsets() == offsets{0});
  REQUIRE(h.nack(0));
  h.pump();
  CHECK(h.sent_offsets() == offsets{0}); // offset 1 waits for the retry
  h.fire_timers();
  h.pump();
  CHECK(h.sent_offsets() == offsets{0, 0});
  REQUIRE(h.ack(0, 2));
  h.pump();
  CHECK(h.sent_offsets() == offsets{0, 0, 1});
}

TEST_CASE("a group without ordered_by sends one key's events at once", "[unit]") {
  harness h{agent_cfg(2, 4)};
  h.append(3, "a");
  h.pump();
  CHECK(h.sent_offsets() == offsets{0, 1, 2});
  CHECK(h.sent[0].instance != h.sent[1].instance); // round-robin over instances
}

// -- instances, credits, window -------------------------------------------------------

TEST_CASE("an instance's death sends its deliveries again first, the attempt not counted",
          "[unit]") {
  harness h{agent_cfg(2, 2)};
  h.append(6);
  h.pump();
  REQUIRE(h.sent.size() == 4); // two instances, two slots each; 4 and 5 wait
  std::vector<std::uint64_t> lost;
  for (auto& d : h.sent)
    if (d.instance == 0)
      lost.push_back(d.offset);
  h.credits.used[0] = 0; // the runner resets a dead instance's credits
  h.g->requeue(0);
  CHECK(h.g->in_flight() == 2);
  h.pump();
  REQUIRE(h.sent.size() == 6);
  CHECK(h.sent[4].offset == lost[0]);
  CHECK(h.sent[5].offset == lost[1]);
  CHECK(h.sent[4].attempt == 1);
  CHECK(h.g->take_totals().received == 6);
}

TEST_CASE("dispatch sends no more deliveries than the credit source gives", "[unit]") {
  harness h{agent_cfg(2, 3)};
  h.append(10);
  h.pump();
  CHECK(h.sent.size() == 6);
  CHECK(h.g->in_flight() == 6);
  REQUIRE(h.ack(0));
  h.pump();
  CHECK(h.sent.size() == 7);
}

TEST_CASE("a group reads no more than its window ahead of the cursor", "[unit]") {
  harness h{agent_cfg(1, 1)};
  REQUIRE(h.g->window() == consumer_group::min_window);
  h.append(1000);
  h.pump();
  CHECK(h.g->next_read() == consumer_group::min_window);
  REQUIRE(h.ack(0));
  h.pump();
  CHECK(h.g->next_read() == consumer_group::min_window + 1);
  auto big = agent_cfg(8, 32); // 2 × 8 × 32 = 512
  CHECK(consumer_group{big, {}, 1}.window() == 512);
}

// -- filter, pause, emit, retention -------------------------------------------------------

TEST_CASE("events the filter does not match settle at once without a delivery", "[unit]") {
  auto cfg = agent_cfg();
  cfg.filter.type = "order.created";
  harness h{cfg};
  h.append(2, "", "order.created");
  h.append(3, "", "order.paid");
  h.append(1, "", "order.created");
  h.pump();
  CHECK(h.sent_offsets() == offsets{0, 1, 5});
  REQUIRE(h.ack(0));
  REQUIRE(h.ack(1));
  CHECK(h.g->cursor() == 5);
  REQUIRE(h.ack(5));
  CHECK(h.g->cursor() == 6);
  CHECK(h.store.pending.empty());
}

TEST_CASE("a paused group sends nothing and holds due retries until resumed", "[unit]") {
  harness h{agent_cfg()};
  h.append(2);
  h.pump();
  REQUIRE(h.nack(0));
  h.g->set_paused(true);
  h.append(2);
  h.pump();
  CHECK(h.sent.size() == 2);
  auto due = h.timers[0].due_us;
  h.fire_timers();
  REQUIRE(h.timers.size() == 1); // checked again later
  CHECK(h.timers[0].due_us == due + consumer_group::paused_recheck_us);
  CHECK(h.g->waiting_retry() == 1);
  h.g->set_paused(false);
  h.fire_timers();
  h.pump();
  CHECK(h.sent_offsets() == offsets{0, 1, 2, 3, 0});
}

TEST_CASE("an ack with follow-up events waits for them, and a late one is ignored", "[unit]") {
  harness h{agent_cfg()};
  h.append(1);
  h.pump();
  auto* event = h.g->answer(0, 1);
  REQUIRE(event != nullptr);
  CHECK(**event == "{\"offset\":0}");
  h.g->hold_for_emit(0);
  CHECK(h.g->cursor() == 0);
  CHECK_FALSE(h.g->emitted(0, 2));
  REQUIRE(h.g->emitted(0, 1));
  h.g->ack(0, {}, h.now, h.fx);
  h.drain();
  CHECK(h.g->cursor() == 1);
  CHECK_FALSE(h.g->emitted(0, 1));
}

TEST_CASE("an event removed by retention before its delivery is settled without one", "[unit]") {
  harness h{agent_cfg()};
  h.append(3);
  h.store.pending[1] = persistence::pending_record{1, 0, false, false, 0, 0, 0, {}};
  h.store.cursor = 1;
  h.log[1].json = nullptr; // gone by the time the group asks
  h.start(7);
  CHECK(h.g->unloaded() == offsets{1});
  h.pump();
  CHECK(h.sent_offsets() == offsets{2});
  CHECK(h.g->cursor() == 2);
  CHECK(h.store.pending.empty());
}

// -- recovery -----------------------------------------------------------------------------

TEST_CASE("recovery keeps acks above the cursor and passes them once read", "[unit]") {
  harness h{agent_cfg()};
  h.append(4);
  h.store.cursor = 1;
  h.store.pending[2] = persistence::pending_record{2, 1, true, false, 0, 0, 0, {}};
  h.start(7);
  h.pump();
  CHECK(h.sent_offsets() == offsets{1, 3});
  REQUIRE(h.ack(1));
  CHECK(h.g->cursor() == 3);
  CHECK(h.store.pending.empty());
}

TEST_CASE("recovery times a waiting retry at its stored due time", "[unit]") {
  harness h{agent_cfg()};
  h.append(2);
  h.store.cursor = 0;
  persistence::pending_record p;
  p.offset = 0;
  p.attempts = 2;
  p.next_attempt_us = start_us + 5'000;
  p.last_error = "earlier";
  h.store.pending[0] = p;
  h.start(7);
  REQUIRE(h.timers.size() == 1);
  CHECK(h.timers[0].due_us == start_us + 5'000);
  CHECK(h.g->waiting_retry() == 1);
  h.pump();
  CHECK(h.sent_offsets() == offsets{1});
  h.fire_timers();
  h.pump();
  REQUIRE(h.sent.size() == 2);
  CHECK(h.sent[1].offset == 0);
  CHECK(h.sent[1].attempt == 3);
}

TEST_CASE("recovery sends a zero-attempt redelivery below the cursor and forgets passed records",
          "[unit]") {
  harness h{agent_cfg()};
  h.append(6);
  h.store.cursor = 5;
  h.store.pending[1] = persistence::pending_record{1, 0, false, true, 0, 0, 0, {}};
  h.store.pending[3] = persistence::pending_record{3, 1, true, false, 0, 0, 0, {}};
  h.start(7);
  CHECK(h.store.pending.count(3) == 0); // the cursor passed it before the restart
  CHECK(h.g->redelivering() == 1);
  h.pump();
  CHECK(h.sent_offsets() == offsets{1, 5});
  CHECK(h.g->redelivering() == 0);
  REQUIRE(h.ack(1));
  CHECK(h.store.pending.empty());
  CHECK(h.g->cursor() == 5); // a redelivery does not move the cursor
}

// -- DLQ retries ---------------------------------------------------------------------------

TEST_CASE("a DLQ retry below the cursor is delivered again without moving the cursor", "[unit]") {
  harness h{agent_cfg()};
  h.append(3);
  h.pump();
  for (std::uint64_t o = 0; o < 3; ++o)
    REQUIRE(h.ack(o));
  REQUIRE(h.g->redeliver(1, h.fx) == actors::redeliver_result::queued);
  h.drain();
  CHECK(h.store.pending.at(1).redeliver);
  CHECK(h.g->redelivering() == 1);
  CHECK(h.g->redeliver(1, h.fx) == actors::redeliver_result::busy);
  h.pump();
  REQUIRE(h.sent.size() == 4);
  CHECK(h.sent[3].offset == 1);
  CHECK(h.sent[3].attempt == 1);
  REQUIRE(h.nack(1));
  CHECK(h.store.pending.at(1).redeliver); // a retry of it stays a redelivery
  h.fire_timers();
  h.pump();
  REQUIRE(h.ack(1, 2));
  CHECK(h.store.pending.empty());
  CHECK(h.g->cursor() == 3);
}

TEST_CASE("a DLQ retry above the cursor waits for the cursor like any record", "[unit]") {
  harness h{agent_cfg()};
  h.append(3);
  h.pump();
  REQUIRE(h.ack(2));
  REQUIRE(h.g->redeliver(2, h.fx) == actors::redeliver_result::queued);
  REQUIRE(h.g->redeliver(0, h.fx) == actors::redeliver_result::busy); // in flight
  h.pump();
  CHECK(h.sent_offsets() == offsets{0, 1, 2, 2});
  REQUIRE(h.ack(0));
  REQUIRE(h.ack(1));
  CHECK(h.g->cursor() == 2);
  REQUIRE(h.ack(2));
  CHECK(h.g->cursor() == 3);
}

// -- gaps and names ------------------------------------------------------------------------

TEST_CASE("offsets the log no longer has are passed once the events after them settle", "[unit]") {
  harness h{agent_cfg()};
  h.append(5);
  h.log[0].json = nullptr; // removed by retention while the group lagged
  h.log[1].json = nullptr;
  h.pump();
  CHECK(h.sent_offsets() == offsets{2, 3, 4});
  REQUIRE(h.ack(3));
  CHECK(h.g->cursor() == 2);
  REQUIRE(h.ack(2));
  CHECK(h.g->cursor() == 4);
  REQUIRE(h.ack(4));
  CHECK(h.store.cursor == 5U);
}

TEST_CASE("a group's identity names its delivery ids and dead letters", "[unit]") {
  auto cfg = agent_cfg();
  cfg.max_retries = 0;
  harness h{cfg};
  h.g = std::make_unique<consumer_group>(
    cfg, actors::group_identity{"orders", 3, 1, "sink:replay-r1", "sink@replay/r1"}, 7);
  h.g->recover(0, {}, 0, -1, h.now, h.fx);
  h.append(1);
  h.pump();
  REQUIRE(h.sent.size() == 1);
  CHECK(h.sent[0].delivery_id == "ev-0:sink:replay-r1:1");
  REQUIRE(h.nack(0));
  auto& e = h.store.dlq.at(0);
  CHECK(e.agent == "sink");
  CHECK(e.id == persistence::delivery_store::dlq_id("sink@replay/r1", 3, 1, 0));
  CHECK(e.error == "boom");
}
