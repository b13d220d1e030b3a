// The Redis protocol listener's handler interface on a real socket: late
// answers keep command order, a closed connection cancels what waits and
// makes late answers harmless, a forgotten command is still answered.
#include <catch2/catch.hpp>

#include <atomic>
#include <chrono>
#include <future>
#include <mutex>
#include <thread>

#include "http/resp_server.hpp"
#include "tests/support/loopback_client.hpp"

using namespace nerve::http::resp;
using namespace std::chrono_literals;

namespace {

using client = nerve::test::loopback_client;

/// Commands answered the ways a blocking command would.
struct fixture {
  std::mutex mutex;
  std::vector<responder> parked; ///< LATER's responders, answered by the test
  std::atomic<int> cancelled{0};
  std::unique_ptr<server> srv;

  fixture() {
    command_table table;
    table.add({"ping",
               -1,
               false,
               {},
               0,
               0,
               0,
               [](context&, args&&, responder r) { r.send(r.make().simple("PONG")); },
               {}});
    // Answers from another thread after a while.
    table.add({"slow",
               2,
               false,
               {},
               0,
               0,
               0,
               [](context&, args&& a, responder r) {
                 std::thread{[r, v = a[1]] {
                   std::this_thread::sleep_for(100ms);
                   r.send(r.make().bulk(v));
                 }}.detach();
               },
               {}});
    // Waits until the test answers it; cancelled when its connection closes.
    table.add({"later",
               1,
               false,
               {},
               0,
               0,
               0,
               [this](context&, args&&, responder r) {
                 r.on_close([this] { ++cancelled; });
                 std::lock_guard<std::mutex> guard{mutex};
                 parked.push_back(r);
               },
               {}});
    // Never answers and keeps nothing.
    table.add({"forget", 1, false, {}, 0, 0, 0, [](context&, args&&, responder) {}, {}});
    server_options opts;
    opts.port = 0;
    srv = std::make_unique<server>(opts, std::move(table));
    REQUIRE(srv->start());
  }

  std::size_t parked_count() {
    std::lock_guard<std::mutex> guard{mutex};
    return parked.size();
  }

  responder take_parked() {
    for (int i = 0; i < 500 && parked_count() == 0; ++i)
      std::this_thread::sleep_for(10ms);
    std::lock_guard<std::mutex> guard{mutex};
    REQUIRE_FALSE(parked.empty());
    auto r = parked.front();
    parked.erase(parked.begin());
    return r;
  }
};

void wait_until(const std::function<bool()>& done) {
  for (int i = 0; i < 500 && !done(); ++i)
    std::this_thread::sleep_for(10ms);
  REQUIRE(done());
}

} // namespace

TEST_CASE("late answers leave in command order", "[unit][http]") {
  fixture f;
  client c{f.srv->port()};
  c.send("SLOW a\r\nPING\r\nSLOW b\r\nPING\r\n");
  CHECK(c.read(24) == "$1\r\na\r\n+PONG\r\n$1\r\nb\r\n+PONG\r\n");
}

TEST_CASE("a parked command holds back later replies until it is answered", "[unit][http]") {
  fixture f;
  client c{f.srv->port()};
  c.send("LATER\r\nPING\r\n");
  auto r = f.take_parked();
  CHECK(r.open());
  std::this_thread::sleep_for(50ms);
  std::thread{[r] { r.send(r.make().integer(7)); }}.join();
  CHECK(c.read(11) == ":7\r\n+PONG\r\n");
  r.send(r.make().integer(8)); // a second answer is ignored
  c.send("PING\r\n");
  CHECK(c.read(7) == "+PONG\r\n");
  CHECK(f.cancelled == 0);
}

TEST_CASE("closing the connection cancels a parked command and makes its late answer harmless",
          "[unit][http]") {
  fixture f;
  {
    client c{f.srv->port()};
    c.send("LATER\r\n");
    auto r = f.take_parked();
    c.close();
    wait_until([&] { return f.cancelled == 1; });
    CHECK_FALSE(r.open());
    r.send(r.make().integer(1)); // nobody to answer: dropped
    int again = 0;
    r.on_close([&again] { ++again; }); // already closed: runs at once
    CHECK(again == 1);
  }
  client other{f.srv->port()};
  other.send("PING\r\n");
  CHECK(other.read(7) == "+PONG\r\n");
}

TEST_CASE("a command whose responder is dropped unanswered gets an error", "[unit][http]") {
  fixture f;
  client c{f.srv->port()};
  c.send("FORGET\r\nPING\r\n");
  std::string want = "-ERR the command could not be completed; retry\r\n+PONG\r\n";
  CHECK(c.read(want.size()) == want);
}

TEST_CASE("stopping the server cancels parked commands and drops late answers", "[unit][http]") {
  fixture f;
  client c{f.srv->port()};
  c.send("LATER\r\n");
  auto r = f.take_parked();
  f.srv->stop();
  CHECK(f.cancelled == 1);
  CHECK_FALSE(r.open());
  r.send(r.make().integer(1)); // after stop: harmless
  f.srv.reset();
  r.send(r.make().integer(2)); // after the server is gone: harmless too
}

// Found by fuzz_resp_request (tests/fuzz/corpus/resp_request/crash-complete-over-limit):
// the limit was checked only while a command was incomplete, so one whose
// bytes came in a single read ran whatever its size.
TEST_CASE("a command over the request limit is refused when it comes in one read", "[unit][http]") {
  command_table table;
  table.add({"ping",
             -1,
             false,
             {},
             0,
             0,
             0,
             [](context&, args&&, responder r) { r.send(r.make().simple("PONG")); },
             {}});
  server_options opts;
  opts.port = 0;
  opts.max_request_bytes = 1024;
  server srv{opts, std::move(table)};
  REQUIRE(srv.start());
  client c{srv.port()};
  c.send("*2\r\n$4\r\nPING\r\n$1100\r\n" + std::string(1100, 'a') + "\r\n");
  std::string refused = "-ERR Protocol error: too big request\r\n";
  CHECK(c.read(refused.size()) == refused);
}
