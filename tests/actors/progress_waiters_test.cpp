// progress_waiters: a waiter whose move already happened is answered on the
// calling thread; others on the waiters' thread after a notify() or at their
// deadline, including a deadline nearer than the one the thread sleeps towards
// and one that comes when the thread had nobody left to wait for;
// stop() answers everyone; many threads adding and notifying lose no waiter.
#include <catch2/catch.hpp>

#include <atomic>
#include <chrono>
#include <future>
#include <thread>
#include <vector>

#include "actors/progress_waiters.hpp"

using nerve::actors::progress_waiters;
using namespace std::chrono_literals;

namespace {

auto far() {
  return progress_waiters::clock::now() + 60s;
}

} // namespace

TEST_CASE("a waiter whose move already happened is answered before add returns, on the caller",
          "[unit][waiters]") {
  progress_waiters w;
  std::thread::id fired_on;
  bool fired = false;
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
  progress_waiters w;
  std::atomic<std::uint64_t> progress{0};
  std::promise<std::thread::id> fired;
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
  progress_waiters w;
  std::promise<void> late, near;
  w.add([] { return false; }, far(), [&] { late.set_value(); });
  // The thread sleeps towards the minute-long deadline now.
  std::this_thread::sleep_for(20ms);
  auto start = progress_waiters::clock::now();
  w.add([] { return false; }, start + 100ms, [&] { near.set_value(); });
  auto f = near.get_future();
  REQUIRE(f.wait_for(20s) == std::future_status::ready);
  CHECK(progress_waiters::clock::now() - start >= 100ms);
  CHECK(progress_waiters::clock::now() - start < 20s);
  auto l = late.get_future();
  CHECK(l.wait_for(10ms) == std::future_status::timeout);
  w.stop(); // answers the minute-long one now
  CHECK(l.wait_for(10s) == std::future_status::ready);
}

TEST_CASE("a deadline is kept when the thread had nobody left to wait for", "[unit][waiters]") {
  progress_waiters w;
  std::promise<void> first, second;
  w.add([] { return false; }, progress_waiters::clock::now() + 20ms, [&] { first.set_value(); });
  REQUIRE(first.get_future().wait_for(20s) == std::future_status::ready);
  // The thread answered its only waiter and sleeps until something comes.
  std::this_thread::sleep_for(20ms);
  auto start = progress_waiters::clock::now();
  w.add([] { return false; }, start + 50ms, [&] { second.set_value(); });
  auto f = second.get_future();
  REQUIRE(f.wait_for(20s) == std::future_status::ready);
  CHECK(progress_waiters::clock::now() - start >= 50ms);
}

TEST_CASE("after stop() a waiter is answered at once, on the caller", "[unit][waiters]") {
  progress_waiters w;
  w.stop();
  bool fired = false;
  w.add([] { return false; }, far(), [&] { fired = true; });
  CHECK(fired);
}

TEST_CASE("adders and notifiers on many threads lose no waiter", "[unit][waiters]") {
  progress_waiters w;
  std::atomic<std::uint64_t> progress{0};
  std::atomic<int> fired{0};
  constexpr int adders = 4, per_adder = 2000;
  std::atomic<bool> done{false};
  std::thread mover{[&] {
    while (!done.load()) {
      progress.fetch_add(1);
      w.notify();
      std::this_thread::yield();
    }
  }};
  std::vector<std::thread> threads;
  for (int a = 0; a < adders; ++a)
    threads.emplace_back([&] {
      for (int i = 0; i < per_adder; ++i) {
        auto seen = progress.load();
        w.add([&progress, seen] { return progress.load() != seen; }, far(),
              [&] { fired.fetch_add(1); });
      }
    });
  for (auto& t : threads)
    t.join();
  // Every waiter saw a move at some point after it was added: all are answered
  // long before their minute is up.
  auto until = std::chrono::steady_clock::now() + 20s;
  while (fired.load() < adders * per_adder && std::chrono::steady_clock::now() < until)
    std::this_thread::sleep_for(1ms);
  done.store(true);
  mover.join();
  CHECK(fired.load() == adders * per_adder);
  CHECK(w.waiting() == 0);
}
