// restart_policy with injected time points: the wait grows, caps, starts
// over after a stable period, and the policy gives up after its tries.
#include <catch2/catch.hpp>

#include <vector>

#include "actors/restart_policy.hpp"

using namespace nerve::actors;
using namespace std::chrono_literals;

namespace {

using time_point = restart_policy::time_point;

const time_point t0 = time_point{} + 1h;

/// The waits of `deaths` deaths `every` apart (the child restarted at once).
std::vector<long long> waits(restart_policy& p, int deaths, std::chrono::milliseconds every,
                             time_point start = t0) {
  std::vector<long long> out;
  auto now = start;
  for (int i = 0; i < deaths; ++i) {
    auto d = p.on_death(now);
    out.push_back(d ? d->count() : -1);
    now += every;
  }
  return out;
}

} // namespace

TEST_CASE("the wait doubles from its start up to the cap", "[unit][actors]") {
  restart_policy p{{false, 100ms, 1s, 30s, std::nullopt}};
  CHECK(waits(p, 7, 1ms) == std::vector<long long>{100, 200, 400, 800, 1000, 1000, 1000});
  CHECK(p.restarts() == 7);
}

TEST_CASE("the first restart can be at once, then the wait doubles", "[unit][actors]") {
  restart_policy p{{true, 100ms, 5s, 60s, std::nullopt}};
  CHECK(waits(p, 9, 1s) == std::vector<long long>{0, 100, 200, 400, 800, 1600, 3200, 5000, 5000});
}

TEST_CASE("a long series never overflows the wait", "[unit][actors]") {
  restart_policy p{{false, 100ms, 10s, 0ms, std::nullopt}};
  auto w = waits(p, 200, 1ms);
  CHECK(w.back() == 10000);
}

TEST_CASE("a child that stays up starts a new series", "[unit][actors]") {
  restart_policy p{{false, 100ms, 10s, 30s, std::nullopt}};
  CHECK(waits(p, 3, 1s) == std::vector<long long>{100, 200, 400});
  // Restarted and up for longer than the stable period: back to the start.
  p.started(t0 + 10s);
  CHECK(p.on_death(t0 + 41s) == 100ms);
  CHECK(p.on_death(t0 + 42s) == 200ms);
  // Up for exactly the stable period is not yet stable.
  p.started(t0 + 50s);
  CHECK(p.on_death(t0 + 80s) == 400ms);
}

TEST_CASE("without start reports, stability counts from the last death", "[unit][actors]") {
  restart_policy p{{true, 100ms, 5s, 60s, std::nullopt}};
  CHECK(waits(p, 3, 30s) == std::vector<long long>{0, 100, 200});
  // The third death was at t0 + 60s; the next comes more than a minute later.
  CHECK(p.on_death(t0 + 121s) == 0ms);
}

TEST_CASE("a stable period of zero never starts over", "[unit][actors]") {
  restart_policy p{{false, 200ms, 200ms, 0ms, std::nullopt}};
  CHECK(waits(p, 3, 24h) == std::vector<long long>{200, 200, 200});
  CHECK(p.restarts() == 3);
}

TEST_CASE("the policy gives up after its tries", "[unit][actors]") {
  restart_policy p{{false, 1s, 1s, 0ms, 5u}};
  CHECK(waits(p, 7, 10s) == std::vector<long long>{1000, 1000, 1000, 1000, 1000, -1, -1});
  CHECK(p.restarts() == 5);
}

TEST_CASE("tries count per series when the child becomes stable", "[unit][actors]") {
  restart_policy p{{false, 100ms, 1s, 10s, 2u}};
  CHECK(waits(p, 3, 1s) == std::vector<long long>{100, 200, -1});
  CHECK(p.on_death(t0 + 1h) == 100ms);
}
