// A replay_record with every field set, and none at its default, for the
// tests of its round trips: through CAF's binary serializer
// (actors/messages_test.cpp) and through its stored JSON
// (actors/replay_storage_test.cpp).
#pragma once

#include "actors/messages.hpp"

namespace nerve::test {

inline actors::replay_record sample_replay_record() {
  using namespace nerve::actors;
  replay_record r;
  r.id = "0193a1b2-0000-7000-8000-000000000002";
  r.state = replay_state::cancelled;
  r.mode = replay_mode::redeliver;
  r.from_us = -5; // before the epoch: a window may start anywhere
  r.to_us = 1733140000000000;
  r.topics = {"orders", "payments"};
  r.agents = {"summarizer"};
  r.event_ids = {"ev-1", "ev-2"};
  r.plan = {{"summarizer",
             true,
             {{"orders", {1, 0, 5}, 9}, {"payments", {2, 3, 0}, 0}},
             {{"orders", 5}, {"payments", 1}},
             6,
             2,
             1,
             2}};
  r.events_total = 6;
  r.events_done = 2;
  r.acked = 1;
  r.failed = 3;
  r.retried = 2;
  r.dead_lettered = 1;
  r.created_us = 1733139000000000;
  r.finished_us = 1733140000000999;
  r.error = "cancelled by \"ops\" ☃";
  return r;
}

} // namespace nerve::test
