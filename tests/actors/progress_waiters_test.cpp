// progress_waiters: a waiter whose move already happened is answered on the
// calling thread; others on the waiters' thread after a notify() or at their
// deadline, including a deadline nearer than the one the thread sleeps towards
// and one that comes when the thread had nobody left to wait for;
// stop() answers everyone; many threads adding and notifying lose no waiter.
#include <catch2/catch.hpp>

#include <atomic>
#include <chrono>
#include <future>
#include <memory>
#include <thread>
#include <vector>

#include "actors/progress_waiters.hpp"

using nerve::actors::progress_waiters;
using namespace std::chrono_literals;

namespace {

auto far() {
  return progress_waiters::clock::now() + 60s;
}

/// Adds a waiter on which nothing moves, due `after` from now, and checks it
/// is answered at its deadline: not before, and not only at some later
/// wake-up. (The promise is shared: a failed wait leaves the waiter behind.)
void check_answered_at_deadline(progress_waiters& w, std::chrono::milliseconds after) {
  auto fired = std::make_shared<std::promise<void>>();
  auto start = progress_waiters::clock::now();
  w.add([] { return false; }, start + after, [fired] { fired->set_value(); });
  REQUIRE(fired->get_future().wait_for(20s) == std::future_status::ready);
  CHECK(progress_waiters::clock::now() - start >= after);
  CHECK(progress_waiters::clock::now() - start < 20s);
}

} // namespace

TEST_CASE("a waiter whose move already happened is answered before add returns, on the caller",
          "[unit][waiters]") {
  std::thread::id fired_on;
  bool fired = false;
  progress_waiters w;
  w.add([] { return true; }, far(),
        [&] {
          fired = true;
          fired_on = std::this_thread::get_id();
        });
  CHECK(fired);
  CHECK(fired_on == std::this_thread::get_id());
  CHECK(w.waiting() == 0);
}

TEST_CASE("a waiter is answered on the waiters' thread once it moved and notify() came",
          "[unit][waiters]") {
  std::atomic<std::uint64_t> progress{0};
  std::promise<std::thread::id> fired;
  progress_waiters w; // after what its callbacks use: stopped first
  w.add([&] { return progress.load() != 0; }, far(),
        [&] { fired.set_value(std::this_thread::get_id()); });
  CHECK(w.waiting() == 1);
  auto f = fired.get_future();
  CHECK(f.wait_for(50ms) == std::future_status::timeout); // nothing moved
  progress.store(1);
  w.notify();
  REQUIRE(f.wait_for(10s) == std::future_status::ready);
  CHECK(f.get() != std::this_thread::get_id());
  CHECK(w.waiting() == 0);
}

TEST_CASE("a nearer deadline is kept while the thread sleeps towards a later one",
          "[unit][waiters]") {
  std::promise<void> late;
  progress_waiters w;
  w.add([] { return false; }, far(), [&] { late.set_value(); });
  // The thread sleeps towards the minute-long deadline now.
  std::this_thread::sleep_for(20ms);
  check_answered_at_deadline(w, 100ms);
  auto l = late.get_future();
  CHECK(l.wait_for(10ms) == std::future_status::timeout);
  w.stop(); // answers the minute-long one now
  CHECK(l.wait_for(10s) == std::future_status::ready);
}

TEST_CASE("a deadline is kept when the thread had nobody left to wait for", "[unit][waiters]") {
  progress_waiters w;
  check_answered_at_deadline(w, 20ms);
  // The thread answered its only waiter and sleeps until something comes.
  std::this_thread::sleep_for(20ms);
  check_answered_at_deadline(w, 50ms);
}

TEST_CASE("after stop() a waiter is answered at once, on the caller", "[unit][waiters]") {
  bool fired = false;
  progress_waiters w;
  w.stop();
  w.add([] { return false; }, far(), [&] { fired = true; });
  CHECK(fired);
}

TEST_CASE("a move that races an add is never lost", "[unit][waiters]") {
  // One thread adds a waiter for "progress is no longer what I saw" while
  // another moves progress once and notifies once, both released together:
  // whichever comes first, the waiter is answered without a second notify.
  constexpr int rounds = 2000;
  for (int round = 0; round < rounds; ++round) {
    std::atomic<std::uint64_t> progress{0};
    std::promise<void> fired;
    std::atomic<int> ready{0};
    std::atomic<bool> go{false};
    progress_waiters w;
    auto start = [&] {
      ready.fetch_add(1);
      while (!go.load())
        std::this_thread::yield();
    };
    std::thread adder{[&] {
      start();
      w.add([&] { return progress.load(std::memory_order_seq_cst) != 0; }, far(),
            [&] { fired.set_value(); });
    }};
    std::thread mover{[&] {
      start();
      progress.fetch_add(1, std::memory_order_seq_cst);
      w.notify();
    }};
    while (ready.load() < 2)
      std::this_thread::yield();
    go.store(true);
    adder.join();
    mover.join();
    INFO("round " << round);
    REQUIRE(fired.get_future().wait_for(10s) == std::future_status::ready);
    CHECK(w.waiting() == 0);
  }
}
