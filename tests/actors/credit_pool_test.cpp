// credit_pool: bounds per instance, round robin, closed instances, waiters
// woken exactly when a credit may be free, and bounds kept under contention.
#include <catch2/catch.hpp>

#include <thread>

#include "actors/credit_pool.hpp"

using nerve::actors::basic_credit_pool;

namespace {

using pool = basic_credit_pool<int>;

auto all_open = [](std::size_t) { return true; };

} // namespace

TEST_CASE("credits are taken round robin up to max_in_flight per instance", "[unit][credits]") {
  pool p{3, 2};
  std::size_t rr = 0;
  std::vector<int> wake;
  std::vector<std::size_t> got;
  for (int k = 0; k < 6; ++k) {
    auto i = p.take(rr, all_open, 1, wake);
    REQUIRE(i);
    got.push_back(*i);
  }
  CHECK(got == std::vector<std::size_t>{0, 1, 2, 0, 1, 2});
  for (std::size_t i = 0; i < 3; ++i)
    CHECK(p.in_flight(i) == 2);
  CHECK_FALSE(p.take(rr, all_open, 1, wake));
  CHECK(wake.empty());
}

TEST_CASE("a sender that found no credit is woken by the next give back", "[unit][credits]") {
  pool p{1, 1};
  std::size_t rr = 0;
  std::vector<int> wake;
  REQUIRE(p.take(rr, all_open, 7, wake));
  CHECK_FALSE(p.take(rr, all_open, 7, wake));
  CHECK_FALSE(p.take(rr, all_open, 8, wake));
  CHECK(wake.empty());
  p.give_back(0, wake);
  CHECK(wake == std::vector<int>{7, 8});
  wake.clear();
  REQUIRE(p.take(rr, all_open, 7, wake));
  p.give_back(0, wake); // nobody waits any more
  CHECK(wake.empty());
}

TEST_CASE("closed instances give no credits, and opening one and waking the waiters lets them in",
          "[unit][credits]") {
  pool p{2, 4};
  std::size_t rr = 0;
  std::vector<int> wake;
  bool second_open = false;
  auto is_open = [&](std::size_t i) { return i == 0 || second_open; };
  for (int k = 0; k < 4; ++k)
    CHECK(p.take(rr, is_open, 1, wake) == std::optional<std::size_t>{0});
  CHECK_FALSE(p.take(rr, is_open, 5, wake));
  second_open = true;
  p.wake_all(wake);
  CHECK(wake == std::vector<int>{5});
  CHECK(p.take(rr, is_open, 5, wake) == std::optional<std::size_t>{1});
}

TEST_CASE("a waiter that registers after a credit came back is woken at once", "[unit][credits]") {
  pool p{1, 1};
  std::size_t rr = 0;
  std::vector<int> wake;
  // The instance is closed during the scan and open by the time the
  // waiter registers: the registration notices the free credit.
  int calls = 0;
  auto flaky = [&](std::size_t) { return calls++ > 0; };
  CHECK_FALSE(p.take(rr, flaky, 3, wake));
  CHECK(wake == std::vector<int>{3});
}

TEST_CASE("a reset voids the credits of an instance that died", "[unit][credits]") {
  pool p{2, 2};
  std::size_t rr = 0;
  std::vector<int> wake;
  REQUIRE(p.take(rr, all_open, 1, wake) == std::optional<std::size_t>{0});
  REQUIRE(p.take(rr, all_open, 1, wake) == std::optional<std::size_t>{1});
  REQUIRE(p.take(rr, all_open, 1, wake) == std::optional<std::size_t>{0});
  p.reset(0);
  CHECK(p.in_flight(0) == 0);
  CHECK(p.in_flight(1) == 1);
}

TEST_CASE("a credit returned at once after a reset of its instance gives nothing back",
          "[unit][credits]") {
  pool p{1, 2};
  std::size_t rr = 0;
  std::vector<int> wake;
  REQUIRE(p.take(rr, all_open, 1, wake));
  REQUIRE(p.take(rr, all_open, 1, wake));
  p.give_back_unless_reset(0, wake); // taken and answered inline
  CHECK(p.in_flight(0) == 1);
  p.reset(0); // the instance died meanwhile
  p.give_back_unless_reset(0, wake);
  CHECK(p.in_flight(0) == 0);
  REQUIRE(p.take(rr, all_open, 1, wake));
  CHECK(p.in_flight(0) == 1);
}

TEST_CASE("under contention no instance ever holds more than max_in_flight credits",
          "[unit][credits]") {
  constexpr std::uint32_t max = 3;
  pool p{2, max};
  std::atomic<bool> over{false};
  std::atomic<std::uint64_t> taken{0};
  auto worker = [&](int id) {
    std::size_t rr = static_cast<std::size_t>(id);
    std::vector<int> wake;
    for (int k = 0; k < 20000; ++k) {
      auto i = p.take(rr, all_open, id, wake);
      if (!i)
        continue;
      ++taken;
      if (p.in_flight(*i) > max)
        over = true;
      p.give_back(*i, wake);
      wake.clear();
    }
  };
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t)
    threads.emplace_back(worker, t);
  for (auto& t : threads)
    t.join();
  CHECK_FALSE(over.load());
  CHECK(taken.load() > 0);
  CHECK(p.in_flight(0) == 0);
  CHECK(p.in_flight(1) == 0);
}
