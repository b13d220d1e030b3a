// The etcd client against real etcd members (tests/support/etcd_process.hpp): keys, txns,
// leases, watches, failover, quorum loss, and a member's kill -9.
#include <catch2/catch.hpp>

#include <atomic>
#include <condition_variable>
#include <mutex>
#include <thread>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include "actors/etcd_client.hpp"
#include "tests/support/etcd_process.hpp"

using namespace std::chrono_literals;
using nerve::etcd::client;
using nerve::etcd::compare;
using nerve::etcd::errc;
using nerve::etcd::op;
using nerve::etcd::watch_event;
using nerve::test::etcd_cluster;
using clock_type = std::chrono::steady_clock;

namespace {

client::options options_for(const etcd_cluster& cluster,
                            std::chrono::milliseconds request_timeout = 2000ms) {
  client::options o;
  o.endpoints = cluster.endpoints();
  o.request_timeout = request_timeout;
  return o;
}

/// A one-member etcd and a client of it.
struct one_member {
  etcd_cluster etcd{1};
  client c{options_for(etcd)};
};

/// `r` failed with `code`, saying `says`.
template <class T>
void check_fails(const nerve::etcd::result<T>& r, errc code, const std::string& says) {
  REQUIRE_FALSE(r);
  CHECK(r.error().code == code);
  CHECK_THAT(r.error().message, Catch::Contains(says));
}

std::int64_t ms_since(clock_type::time_point start) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(clock_type::now() - start).count();
}

/// What a watch delivered, for a test thread to wait on.
struct recorder {
  std::mutex mutex;
  std::condition_variable cv;
  std::vector<watch_event> events;
  std::vector<std::int64_t> revisions; ///< one per on_events call
  std::vector<nerve::etcd::error> resets;

  client::events_fn on_events() {
    return [this](std::vector<watch_event> batch, std::int64_t revision) {
      std::lock_guard<std::mutex> guard{mutex};
      for (auto& e : batch)
        events.push_back(std::move(e));
      revisions.push_back(revision);
      cv.notify_all();
    };
  }

  client::reset_fn on_reset() {
    return [this](const nerve::etcd::error& why) {
      std::lock_guard<std::mutex> guard{mutex};
      resets.push_back(why);
      cv.notify_all();
    };
  }

  /// Waits until `done` holds (under the lock); false after `limit`.
  template <class Pred>
  bool wait(Pred done, std::chrono::milliseconds limit = 5000ms) {
    std::unique_lock<std::mutex> guard{mutex};
    return cv.wait_for(guard, limit, [&] { return done(); });
  }

  bool wait_events(std::size_t n, std::chrono::milliseconds limit = 5000ms) {
    return wait([&] { return events.size() >= n; }, limit);
  }

  bool wait_reset(std::chrono::milliseconds limit = 5000ms) {
    return wait([&] { return !resets.empty(); }, limit);
  }
};

/// Puts `key` until `seen` has an event: a watch from now is up only once one arrives.
void until_watch_up(client& c, recorder& seen, const std::string& key) {
  auto start = clock_type::now();
  while (!seen.wait_events(1, 200ms) && ms_since(start) < 5000)
    REQUIRE(c.put(key, "up"));
  REQUIRE(seen.wait_events(1, 0ms));
}

} // namespace

TEST_CASE_METHOD(one_member, "etcd keys are put, read, listed by prefix and deleted",
                 "[unit][etcd]") {
  auto r1 = c.put("topics/orders", std::string("{\"partitions\":4}\0x", 18));
  REQUIRE(r1);
  auto r2 = c.put("topics/payments", "{}");
  REQUIRE(r2);
  CHECK(*r2 == *r1 + 1);
  REQUIRE(c.put("topicz", "outside the prefix"));

  auto one = c.range("topics/orders");
  REQUIRE(one);
  REQUIRE(one->kvs.size() == 1);
  CHECK(one->kvs[0].value == std::string("{\"partitions\":4}\0x", 18));
  CHECK(one->kvs[0].create_revision == *r1);
  CHECK(one->kvs[0].mod_revision == *r1);
  CHECK(one->kvs[0].version == 1);
  CHECK(one->revision == *r2 + 1);

  auto none = c.range("topics/nothing");
  REQUIRE(none);
  CHECK(none->kvs.empty());
  CHECK(none->count == 0);

  auto listed = c.prefix("topics/");
  REQUIRE(listed);
  REQUIRE(listed->kvs.size() == 2);
  CHECK(listed->kvs[0].key == "topics/orders");
  CHECK(listed->kvs[1].key == "topics/payments");

  auto limited = c.range("topics/", client::prefix_end("topics/"), 1);
  REQUIRE(limited);
  CHECK(limited->kvs.size() == 1);
  CHECK(limited->more);
  CHECK(limited->count == 2);

  auto everything = c.prefix("");
  REQUIRE(everything);
  CHECK(everything->kvs.size() == 3);

  auto deleted = c.del("topics/", client::prefix_end("topics/"));
  REQUIRE(deleted);
  CHECK(*deleted == 2);
  auto after = c.prefix("topics/");
  REQUIRE(after);
  CHECK(after->kvs.empty());
  CHECK(c.del("topics/orders").value() == 0);

  check_fails(c.put("", "no key"), errc::rejected, "key is not provided");
}

TEST_CASE_METHOD(one_member, "an etcd txn creates a key only while it is absent, else returns it",
                 "[unit][etcd]") {
  auto create = [&](const std::string& value) {
    return c.txn({compare::absent("topics/orders")}, {op::put("topics/orders", value)},
                 {op::get("topics/orders")});
  };
  auto first = create("4 partitions");
  REQUIRE(first);
  CHECK(first->succeeded);
  REQUIRE(first->responses.size() == 1);
  CHECK(first->responses[0].kvs.empty());
  CHECK(first->responses[0].revision == first->revision);

  auto second = create("8 partitions");
  REQUIRE(second);
  CHECK_FALSE(second->succeeded);
  REQUIRE(second->responses.size() == 1);
  REQUIRE(second->responses[0].kvs.size() == 1);
  CHECK(second->responses[0].kvs[0].value == "4 partitions");
  CHECK(second->responses[0].kvs[0].create_revision == first->revision);

  // A txn with several ops answers one response each; a duplicate key is refused.
  auto both = c.txn(
    {compare::created("topics/orders", first->revision)},
    {op::put("topics/orders/p0", "state"), op::get("topics/", "topics0"), op::del("topics/gone")});
  INFO((both ? "" : both.error().message));
  REQUIRE(both);
  CHECK(both->succeeded);
  REQUIRE(both->responses.size() == 3);
  CHECK(both->responses[1].kvs.size() == 2);
  check_fails(c.txn({}, {op::put("a", "1"), op::put("a", "2")}), errc::rejected, "duplicate key");
}

TEST_CASE_METHOD(one_member, "an etcd compare-and-swap on mod_revision fails with a stale revision",
                 "[unit][etcd]") {
  auto v1 = c.put("partitions/orders/0", "owner=n1 epoch=1");
  REQUIRE(v1);
  auto swap = [&](std::int64_t seen, const std::string& value) {
    return c.txn({compare::modified("partitions/orders/0", seen)},
                 {op::put("partitions/orders/0", value)}, {op::get("partitions/orders/0")});
  };
  auto won = swap(*v1, "owner=n2 epoch=2");
  REQUIRE(won);
  CHECK(won->succeeded);
  auto lost = swap(*v1, "owner=n3 epoch=2");
  REQUIRE(lost);
  CHECK_FALSE(lost->succeeded);
  REQUIRE(lost->responses.at(0).kvs.size() == 1);
  CHECK(lost->responses[0].kvs[0].value == "owner=n2 epoch=2");
  CHECK(lost->responses[0].kvs[0].mod_revision == won->revision);

  auto by_value = c.txn({compare::value_is("partitions/orders/0", "owner=n2 epoch=2")}, {}, {});
  REQUIRE(by_value);
  CHECK(by_value->succeeded);
  auto not_leased = c.txn({compare::lease_is("partitions/orders/0", 0)}, {}, {});
  REQUIRE(not_leased);
  CHECK(not_leased->succeeded);
}

TEST_CASE_METHOD(one_member,
                 "a kept-alive etcd lease keeps its key, which goes when the lease expires",
                 "[unit][etcd][slow]") {
  auto lease = c.grant(2);
  REQUIRE(lease);
  CHECK(lease->id != 0);
  CHECK(lease->ttl_s == 2);
  REQUIRE(c.put("nodes/n1", "alive", lease->id));
  auto held = c.txn({compare::lease_is("nodes/n1", lease->id)}, {}, {});
  REQUIRE(held);
  CHECK(held->succeeded);
  // Kept alive past its first TTL.
  for (int i = 0; i < 3; ++i) {
    std::this_thread::sleep_for(900ms);
    auto ttl = c.keepalive(lease->id);
    REQUIRE(ttl);
    CHECK(*ttl == 2);
  }
  REQUIRE(c.range("nodes/n1").value().kvs.size() == 1);
  // Left alone, it expires within about its TTL.
  auto start = clock_type::now();
  while (!c.range("nodes/n1").value().kvs.empty() && ms_since(start) < 5000)
    std::this_thread::sleep_for(50ms);
  CHECK(c.range("nodes/n1").value().kvs.empty());
  auto gone_ms = ms_since(start);
  INFO("the key went " << gone_ms << " ms after the last keepalive");
  CHECK(gone_ms > 1000);
  CHECK(gone_ms < 3500);
  check_fails(c.keepalive(lease->id), errc::rejected, "not found");
}

TEST_CASE_METHOD(one_member,
                 "a revoked etcd lease deletes its keys at once, and an unknown lease is rejected",
                 "[unit][etcd]") {
  auto lease = c.grant(30);
  REQUIRE(lease);
  REQUIRE(c.put("leader", "n1", lease->id));
  REQUIRE(c.put("nodes/n1", "alive", lease->id));
  REQUIRE(c.revoke(lease->id));
  CHECK(c.range("leader").value().kvs.empty());
  CHECK(c.range("nodes/n1").value().kvs.empty());

  check_fails(c.keepalive(lease->id), errc::rejected, "not found");
  check_fails(c.revoke(12345), errc::rejected, "lease not found");
  check_fails(c.put("k", "v", 12345), errc::rejected, "lease not found");
}

TEST_CASE_METHOD(one_member, "an etcd watch replays history in order with previous values",
                 "[unit][etcd]") {
  REQUIRE(c.put("outside", "x"));
  auto created = c.put("w/a", "1");
  REQUIRE(created);
  REQUIRE(c.put("w/a", "2"));
  REQUIRE(c.del("w/a"));
  REQUIRE(c.txn({}, {op::put("w/b", "1"), op::put("w/c", "1")}));

  recorder seen;
  auto handle
    = c.watch("w/", client::prefix_end("w/"), *created, seen.on_events(), seen.on_reset());
  REQUIRE(seen.wait_events(5));
  auto live = c.put("w/d", "live");
  REQUIRE(live);
  REQUIRE(seen.wait_events(6));
  handle.reset();

  std::lock_guard<std::mutex> guard{seen.mutex};
  const auto& e = seen.events;
  REQUIRE(e.size() == 6);
  CHECK(e[0].type == watch_event::kind::put);
  CHECK(e[0].current.key == "w/a");
  CHECK(e[0].current.value == "1");
  CHECK_FALSE(e[0].previous);
  CHECK(e[1].current.value == "2");
  REQUIRE(e[1].previous);
  CHECK(e[1].previous->value == "1");
  CHECK(e[2].type == watch_event::kind::del);
  CHECK(e[2].current.key == "w/a");
  REQUIRE(e[2].previous);
  CHECK(e[2].previous->value == "2");
  CHECK(e[3].current.key == "w/b");
  CHECK(e[4].current.key == "w/c");
  CHECK(e[3].current.mod_revision == e[4].current.mod_revision);
  CHECK(e[5].current.value == "live");
  for (std::size_t i = 1; i < e.size(); ++i)
    CHECK(e[i].current.mod_revision >= e[i - 1].current.mod_revision);
  CHECK(seen.revisions.back() == *live);
  CHECK(seen.resets.empty());
}

TEST_CASE_METHOD(one_member, "an etcd watch from a compacted revision ends with errc::compacted",
                 "[unit][etcd]") {
  auto first = c.put("w/a", "1");
  REQUIRE(first);
  auto last = c.put("w/a", "2");
  REQUIRE(last);
  auto compacted = etcd.post(0, "/v3/kv/compaction",
                             "{\"revision\":\"" + std::to_string(*last) + "\",\"physical\":true}");
  REQUIRE_THAT(compacted, Catch::StartsWith("HTTP/1.0 200"));
  recorder seen;
  auto handle = c.watch("w/", client::prefix_end("w/"), *first, seen.on_events(), seen.on_reset());
  REQUIRE(seen.wait_reset());
  std::lock_guard<std::mutex> guard{seen.mutex};
  CHECK(seen.resets[0].code == errc::compacted);
  CHECK_THAT(seen.resets[0].message, Catch::Contains(std::to_string(*last)));
  CHECK(seen.events.empty());
}

TEST_CASE_METHOD(one_member, "an etcd watch survives kill -9 and restart of a one-member etcd",
                 "[unit][etcd][slow]") {
  recorder seen;
  auto handle = c.watch("w/", client::prefix_end("w/"), 0, seen.on_events(), seen.on_reset());
  until_watch_up(c, seen, "w/before");

  etcd.kill(0);
  REQUIRE(seen.wait_reset());
  {
    std::lock_guard<std::mutex> guard{seen.mutex};
    CHECK(seen.resets[0].code == errc::unavailable);
  }
  etcd.start(0);
  etcd.wait_healthy(0);
  auto after = c.put("w/after", "2");
  REQUIRE(after);
  REQUIRE(seen.wait([&] { return seen.events.back().current.key == "w/after"; }));
  std::lock_guard<std::mutex> guard{seen.mutex};
  CHECK(seen.resets.size() == 1);
  CHECK(seen.revisions.back() == *after);
}

TEST_CASE("etcd requests and watches fail over when a member is killed", "[unit][etcd][slow]") {
  etcd_cluster etcd{3};
  client c{options_for(etcd)};
  REQUIRE(c.put("k", "1")); // the first endpoint answered, so it is preferred
  recorder seen;
  auto handle = c.watch("k", "", 0, seen.on_events(), seen.on_reset());
  until_watch_up(c, seen, "k");

  // When the killed member led, the others elect a new leader first (1 to 2 s): until then
  // a put fails fast or times out, never hangs.
  etcd.kill(0);
  auto start = clock_type::now();
  auto put = c.put("k", "after the kill");
  while (!put && ms_since(start) < 6000) {
    INFO(put.error().message);
    CHECK((put.error().code == errc::unavailable || put.error().code == errc::timeout));
    std::this_thread::sleep_for(100ms);
    put = c.put("k", "after the kill");
  }
  REQUIRE(put);
  CHECK(c.range("k").value().kvs.at(0).value == "after the kill");
  REQUIRE(seen.wait([&] { return seen.events.back().current.value == "after the kill"; }));
  std::lock_guard<std::mutex> guard{seen.mutex};
  CHECK(seen.resets.empty());
}

TEST_CASE("an etcd txn fails within its deadline while quorum is lost, and works after a restart",
          "[unit][etcd][slow]") {
  etcd_cluster etcd{3};
  client c{options_for(etcd, 1000ms)};
  REQUIRE(c.put("partitions/0", "epoch=1"));
  etcd.kill(1);
  etcd.kill(2);
  auto cas = [&] {
    return c.txn({compare::absent("leader")}, {op::put("leader", "n1")}, {op::get("leader")});
  };
  // Right after the kill the member still thinks it has a leader (the request hangs: an
  // unknown outcome), a moment later it says "no leader" (nothing was executed).
  bool refused = false;
  auto lost = clock_type::now();
  while (!refused && ms_since(lost) < 8000) {
    auto start = clock_type::now();
    auto failed = cas();
    auto took_ms = ms_since(start);
    REQUIRE_FALSE(failed);
    INFO(failed.error().message);
    CHECK((failed.error().code == errc::timeout || failed.error().code == errc::unavailable));
    CHECK(took_ms < 2000);
    refused = failed.error().code == errc::unavailable;
    std::this_thread::sleep_for(200ms);
  }
  CHECK(refused);

  etcd.start(1);
  etcd.start(2);
  auto start = clock_type::now();
  auto back = cas();
  while (!back && ms_since(start) < 15000) {
    std::this_thread::sleep_for(100ms);
    back = cas();
  }
  INFO((back ? "" : back.error().message));
  REQUIRE(back);
}

TEST_CASE_METHOD(one_member, "destroying an etcd watch handle returns at once", "[unit][etcd]") {
  recorder seen;
  auto handle = c.watch("w/", client::prefix_end("w/"), 0, seen.on_events(), seen.on_reset());
  std::this_thread::sleep_for(300ms); // the stream is up and idle
  auto start = clock_type::now();
  handle.reset();
  CHECK(ms_since(start) < 100);

  // Also while it waits out a backoff with no endpoint answering.
  etcd.kill(0);
  handle = c.watch("w/", "", 0, seen.on_events(), seen.on_reset());
  REQUIRE(seen.wait_reset());
  std::this_thread::sleep_for(150ms);
  start = clock_type::now();
  handle.reset();
  CHECK(ms_since(start) < 100);

  // And from inside its own callback.
  etcd.start(0);
  etcd.wait_healthy(0);
  // What the callback touches is shared, not on this stack: the watch's thread finishes
  // after the handle is gone, possibly after this test has returned.
  struct self_reset {
    std::mutex mutex;
    std::unique_ptr<nerve::etcd::watch_handle> handle;
    std::atomic<bool> done{false};
  };
  auto shared = std::make_shared<self_reset>();
  {
    std::lock_guard<std::mutex> guard{shared->mutex};
    shared->handle = c.watch("w/", client::prefix_end("w/"), 1,
                             [shared](std::vector<watch_event>, std::int64_t) {
                               std::lock_guard<std::mutex> guard{shared->mutex};
                               shared->handle.reset();
                               shared->done = true;
                             },
                             {});
  }
  REQUIRE(c.put("w/x", "1"));
  start = clock_type::now();
  while (!shared->done && ms_since(start) < 5000)
    std::this_thread::sleep_for(10ms);
  CHECK(shared->done);
  std::lock_guard<std::mutex> guard{shared->mutex};
  shared->handle.reset(); // only when the callback never ran
}

TEST_CASE_METHOD(one_member, "etcd calls from many threads at once all land", "[unit][etcd]") {
  recorder seen;
  auto start = c.put("c/start", "0");
  REQUIRE(start);
  auto handle
    = c.watch("c/", client::prefix_end("c/"), *start + 1, seen.on_events(), seen.on_reset());
  auto lease = c.grant(30);
  REQUIRE(lease);
  constexpr int threads = 4;
  constexpr int puts_each = 40;
  std::atomic<int> failed{0};
  std::vector<std::thread> workers;
  for (int t = 0; t < threads; ++t)
    workers.emplace_back([&, t] {
      for (int i = 0; i < puts_each; ++i) {
        if (!c.put("c/" + std::to_string(t) + "/" + std::to_string(i), "v"))
          ++failed;
        if (i % 10 == 0 && !c.keepalive(lease->id))
          ++failed;
      }
    });
  for (auto& w : workers)
    w.join();
  CHECK(failed == 0);
  CHECK(c.prefix("c/").value().kvs.size() == threads * puts_each + 1);
  CHECK(seen.wait_events(threads * puts_each));
}

TEST_CASE("an etcd endpoint that never answers times out, one that refuses is unavailable",
          "[unit][etcd]") {
  // A listening socket that never accepts: connecting and sending work, no answer comes.
  int silent = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof addr;
  REQUIRE(::bind(silent, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
  REQUIRE(::listen(silent, 8) == 0);
  REQUIRE(::getsockname(silent, reinterpret_cast<sockaddr*>(&addr), &len) == 0);
  auto silent_url = "http://127.0.0.1:" + std::to_string(ntohs(addr.sin_port));
  // A port nobody listens on: the connection is refused.
  int closed = ::socket(AF_INET, SOCK_STREAM, 0);
  addr.sin_port = 0;
  REQUIRE(::bind(closed, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
  REQUIRE(::getsockname(closed, reinterpret_cast<sockaddr*>(&addr), &len) == 0);
  auto refused_url = "http://127.0.0.1:" + std::to_string(ntohs(addr.sin_port));
  ::close(closed);

  client::options o;
  o.request_timeout = 500ms;
  o.endpoints = {refused_url};
  client refusing{o};
  auto start = clock_type::now();
  check_fails(refusing.put("k", "v"), errc::unavailable, "refused");
  CHECK(ms_since(start) < 200);

  o.endpoints = {refused_url, silent_url};
  client hanging{o};
  start = clock_type::now();
  check_fails(hanging.put("k", "v"), errc::timeout, "outcome is unknown");
  auto took_ms = ms_since(start);
  CHECK(took_ms >= 450);
  CHECK(took_ms < 800);
  ::close(silent);

  CHECK_THROWS_WITH(client{client::options{{"https://127.0.0.1:2379"}}},
                    Catch::Contains("TLS is not supported"));
}
