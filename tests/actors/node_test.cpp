// The actor node through its narrow interface: group commit, supervision of
// partition actors, graceful shutdown answering queued publishes, the
// metrics snapshot, and the keyspace it owns.
#include <catch2/catch.hpp>

#include <atomic>
#include <future>
#include <thread>

#include <nlohmann/json.hpp>

#include "actors/node.hpp"
#include "persistence/keyspace.hpp"
#include "tests/support/temp_dir.hpp"

using namespace nerve;
using namespace std::chrono_literals;

namespace {

config::config config_for(const test::temp_dir& dir) {
  config::config cfg;
  cfg.data_dir = dir.sub("data");
  cfg.topic_defaults.partitions = 1;
  return cfg;
}

actors::result<std::vector<actors::published>>
publish_sync(actors::node& n, const std::string& topic, std::vector<actors::publish_item> items) {
  std::promise<actors::result<std::vector<actors::published>>> p;
  auto f = p.get_future();
  n.publish(topic, std::move(items), [&p](auto r) { p.set_value(std::move(r)); });
  REQUIRE(f.wait_for(30s) == std::future_status::ready);
  return f.get();
}

actors::publish_item item(std::string id = "") {
  return {std::move(id), "", "\"data\":1", {}, {}};
}

/// What `fn(keyspace)` returns, run on the node's keyspace threads; the
/// node's error when it runs no job.
template <class Fn>
auto with_keyspace(actors::node& n, Fn fn)
  -> actors::result<decltype(fn(std::declval<persistence::keyspace&>()))> {
  using value = decltype(fn(std::declval<persistence::keyspace&>()));
  std::promise<actors::result<value>> p;
  auto f = p.get_future();
  n.run_keyspace([&p, &fn](actors::result<persistence::keyspace*> ks) {
    if (!ks)
      return p.set_value(tl::make_unexpected(ks.error()));
    p.set_value(fn(**ks));
  });
  REQUIRE(f.wait_for(30s) == std::future_status::ready);
  return f.get();
}

} // namespace

TEST_CASE("concurrent publishes to one partition share group commits and stay dense",
          "[unit][actors]") {
  test::temp_dir dir;
  auto n = actors::start_node(config_for(dir));
  REQUIRE(n);
  constexpr int total = 400;
  std::vector<std::promise<actors::result<std::vector<actors::published>>>> promises(total);
  for (int i = 0; i < total; ++i)
    (*n)->publish("t", {item()}, [&promises, i](auto r) { promises[i].set_value(std::move(r)); });
  std::vector<bool> seen(total, false);
  for (auto& p : promises) {
    auto r = p.get_future().get();
    REQUIRE(r);
    auto off = (*r)[0].offset;
    REQUIRE(off < total);
    CHECK_FALSE(seen[off]);
    seen[off] = true;
  }
  (*n)->shutdown();
}

TEST_CASE("a crashed partition actor is restarted and carries on from the log", "[unit][actors]") {
  test::temp_dir dir;
  std::atomic<bool> armed{false};
  actors::node_hooks hooks;
  hooks.before_append = [&armed](const std::string&, std::uint32_t) {
    if (armed.exchange(false))
      throw std::runtime_error("injected crash");
  };
  auto n = actors::start_node(config_for(dir), hooks);
  REQUIRE(n);
  auto first = publish_sync(**n, "t", {item("a"), item("b")});
  REQUIRE(first);
  CHECK((*first)[1].offset == 1);

  armed = true; // the next group commit crashes the actor
  auto during = publish_sync(**n, "t", {item("c")});
  REQUIRE_FALSE(during);
  CHECK(during.error().code == actors::errc::unavailable);

  // The runner restarts the partition; it recovers its offset from the log.
  actors::result<std::vector<actors::published>> after;
  for (int attempt = 0; attempt < 100; ++attempt) {
    after = publish_sync(**n, "t", {item("c")});
    if (after)
      break;
    std::this_thread::sleep_for(20ms);
  }
  REQUIRE(after);
  CHECK((*after)[0].offset == 2);
  CHECK_FALSE((*after)[0].duplicate);
  (*n)->shutdown();
}

TEST_CASE("shutdown answers every queued publish", "[unit][actors]") {
  test::temp_dir dir;
  auto n = actors::start_node(config_for(dir));
  REQUIRE(n);
  REQUIRE(publish_sync(**n, "t", {item()})); // the topic exists
  constexpr int total = 200;
  std::atomic<int> answered{0};
  std::atomic<int> ok{0};
  for (int i = 0; i < total; ++i)
    (*n)->publish("t", {item()}, [&](auto r) {
      if (r)
        ++ok;
      ++answered;
    });
  (*n)->shutdown();
  CHECK(answered.load() == total);
  // Publishes refused once draining began are answered with 503, not lost.
  auto late = publish_sync(**n, "t", {item()});
  REQUIRE_FALSE(late);
  CHECK(late.error().code == actors::errc::unavailable);
  // Everything queued on a partition before the shutdown was appended.
  CHECK(ok.load() == total);
}

TEST_CASE("scrape counts durable events per topic, duplicates excluded, across restarts",
          "[unit][actors]") {
  test::temp_dir dir;
  auto published = [](const actors::metrics_snapshot& s, const std::string& topic) {
    for (auto& t : s.topics)
      if (t.topic == topic)
        return t.published;
    return std::uint64_t{0};
  };
  auto total = [](const actors::latency_view& v) {
    std::uint64_t n = 0;
    for (auto c : v.counts)
      n += c;
    return n;
  };
  {
    auto n = actors::start_node(config_for(dir));
    REQUIRE(n);
    REQUIRE(publish_sync(**n, "a", {item("x"), item("y")}));
    auto again = publish_sync(**n, "a", {item("x")});
    REQUIRE(again);
    CHECK((*again)[0].duplicate);
    REQUIRE(publish_sync(**n, "b", {item()}));
    auto s = (*n)->scrape();
    CHECK(published(s, "a") == 2);
    CHECK(published(s, "b") == 1);
    // Under fsync always every group commit is written, then synced.
    CHECK(total(s.storage_write) >= 2);
    CHECK(total(s.storage_sync) >= 1);
    CHECK(s.storage_write.counts.size() == s.storage_write.upper_bounds_s.size() + 1);
    (*n)->shutdown();
  }
  auto n = actors::start_node(config_for(dir));
  REQUIRE(n);
  auto s = (*n)->scrape();
  CHECK(published(s, "a") == 2); // recovered from the log, not counted since start-up
  CHECK(published(s, "b") == 1);
  (*n)->shutdown();
}

TEST_CASE("a publish answer tells the topic's partition count", "[unit][actors]") {
  test::temp_dir dir;
  auto cfg = config_for(dir);
  cfg.topics["three"] = config::topic_config{3};
  auto n = actors::start_node(cfg);
  REQUIRE(n);
  for (auto [topic, partitions] : {std::pair{"three", 3u}, std::pair{"one", 1u}}) {
    auto first = publish_sync(**n, topic, {item(), item()}); // creates the topic
    auto again = publish_sync(**n, topic, {item()});         // finds it
    REQUIRE(first);
    REQUIRE(again);
    for (auto& p : *first)
      CHECK(p.partitions == partitions);
    CHECK(again->front().partitions == partitions);
  }
  (*n)->shutdown();
}

TEST_CASE("the node's keyspace sees topics made at runtime as streams and sweeps expired keys",
          "[unit][actors]") {
  test::temp_dir dir;
  auto n = actors::start_node(config_for(dir));
  REQUIRE(n);
  auto type_of = [&](const std::string& key) {
    auto t = with_keyspace(**n, [&](persistence::keyspace& ks) { return ks.type(key); });
    REQUIRE(t);
    REQUIRE(*t);
    return **t;
  };
  CHECK(type_of("made.later") == persistence::key_type::none);
  REQUIRE(publish_sync(**n, "made.later", {item()})); // the topic is made now
  CHECK(type_of("made.later") == persistence::key_type::stream);

  auto set = with_keyspace(**n, [](persistence::keyspace& ks) {
    return ks.hset("h", {{"f", "v"}});
  });
  REQUIRE(set);
  CHECK(*set == 1);
  auto expiring = with_keyspace(**n, [](persistence::keyspace& ks) { return ks.expire("h", 1); });
  REQUIRE(expiring);
  CHECK(*expiring == true);
  std::this_thread::sleep_for(1500ms); // expired after 1 s, swept within 100 ms of it
  CHECK(type_of("h") == persistence::key_type::none);
  // The node's sweeper deleted it: a sweep of our own finds nothing left.
  auto swept = with_keyspace(**n, [](persistence::keyspace& ks) { return ks.sweep(1000); });
  REQUIRE(swept);
  REQUIRE(*swept);
  CHECK((*swept)->keys == 0);

  (*n)->shutdown();
  auto late = with_keyspace(**n, [](persistence::keyspace& ks) { return ks.type("h"); });
  REQUIRE_FALSE(late);
  CHECK(late.error().code == actors::errc::unavailable);
}
