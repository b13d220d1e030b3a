// The HTTP server's placement of connections on its event loops, on real
// sockets: a loop takes up to 32 connections before the next takes any, a
// loop that lost connections takes new ones again, and past that the loop
// with the fewest takes the next.
#include <catch2/catch.hpp>

#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "http/server.hpp"
#include "tests/support/loopback_client.hpp"

using namespace nerve::http;

namespace {

/// A keep-alive HTTP/1.1 connection.
class client {
public:
  explicit client(std::uint16_t port) : conn_(port) {}

  /// GET /: the answer's body (the thread that served it).
  std::string get() {
    conn_.send("GET / HTTP/1.1\r\nHost: t\r\n\r\n");
    std::string in;
    for (;;) {
      auto end = in.find("\r\n\r\n");
      if (end != std::string::npos) {
        auto at = in.find("Content-Length: ");
        REQUIRE(at != std::string::npos);
        auto len = std::stoul(in.substr(at + 16));
        if (in.size() >= end + 4 + len)
          return in.substr(end + 4, len);
      }
      auto got = conn_.read_some();
      REQUIRE(!got.empty());
      in += got;
    }
  }

private:
  nerve::test::loopback_client conn_;
};

std::string this_thread() {
  std::ostringstream out;
  out << std::this_thread::get_id();
  return out.str();
}

} // namespace

TEST_CASE("connections fill one event loop up to 32 before the next takes any", "[unit][http]") {
  server_options o;
  o.port = 0;
  o.threads = 2;
  server s{o, [](request&&, responder answer) {
             response r;
             r.content_type = "text/plain";
             r.body = this_thread();
             answer(std::move(r));
           }};
  REQUIRE(s.start());

  // Each connection is served (its request answered) before the next
  // connects, so they are accepted in this order.
  std::vector<std::unique_ptr<client>> conns;
  std::vector<std::string> served;
  auto open = [&] {
    conns.push_back(std::make_unique<client>(s.port()));
    served.push_back(conns.back()->get());
    return served.back();
  };
  for (int i = 0; i < 32; ++i)
    open();
  for (int i = 0; i < 32; ++i)
    CHECK(served[i] == served[0]);
  auto first = served[0];

  auto second = open();
  CHECK(second != first);
  for (int i = 0; i < 5; ++i)
    CHECK(open() == second);

  // Connections keep their loop.
  for (std::size_t i = 0; i < conns.size(); ++i)
    CHECK(conns[i]->get() == served[i]);

  // The first loop lost 10: it takes the next ones again.
  for (int i = 0; i < 10; ++i)
    conns[static_cast<std::size_t>(i)].reset();
  std::this_thread::sleep_for(std::chrono::milliseconds(200)); // the closes reach the loop
  for (int i = 0; i < 10; ++i)
    CHECK(open() == first);

  // Both loops at 32 or more: the one with fewer takes the next.
  for (int i = 0; i < 26; ++i)
    CHECK(open() == second); // the second loop: 6 + 26 = 32
  std::map<std::string, int> placed;
  for (int i = 0; i < 6; ++i)
    ++placed[open()];
  CHECK(placed[first] == 3);
  CHECK(placed[second] == 3);
  s.stop();
}
