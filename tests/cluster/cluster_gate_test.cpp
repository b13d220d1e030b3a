// The cluster gate: the BASP frame check on its own, then a plaintext gate on
// 127.0.0.1:0 with raw sockets on both sides (the peer's and CAF's). TLS and
// CAF itself are in the black-box tests (test_tls.py, test_hostile.py).
#include <catch2/catch.hpp>

#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <netinet/in.h>

#include <condition_variable>
#include <deque>
#include <mutex>
#include <optional>
#include <random>
#include <thread>
#include <vector>

#include "actors/cluster_gate.hpp"

using nerve::actors::basp_frame_check;
using nerve::actors::cluster_gate;
using nerve::actors::gate_limits;
using namespace std::chrono_literals;

namespace {

using bytes = std::vector<std::uint8_t>;

// BASP message types [caf/io/basp/message_type.hpp].
constexpr std::uint8_t server_handshake = 0, client_handshake = 1, direct_message = 2,
                       heartbeat = 6;

/// A BASP header as CAF's binary_serializer writes it (big-endian).
bytes header(std::uint8_t op, std::uint32_t payload_len, std::uint64_t dest_actor = 0) {
  bytes h(32, 0);
  h[0] = op;
  for (int i = 0; i < 4; ++i)
    h[4 + i] = static_cast<std::uint8_t>(payload_len >> (24 - 8 * i));
  for (int i = 0; i < 8; ++i)
    h[24 + i] = static_cast<std::uint8_t>(dest_actor >> (56 - 8 * i));
  return h;
}

bytes frame(std::uint8_t op, std::uint32_t payload_len) {
  auto f = header(op, payload_len, op == direct_message ? 7 : 0);
  f.resize(f.size() + payload_len, 0xab);
  return f;
}

bytes concat(std::initializer_list<bytes> parts) {
  bytes out;
  for (auto& p : parts)
    out.insert(out.end(), p.begin(), p.end());
  return out;
}

// A member link's frames (cluster_gate.cpp): kind, big-endian length, payload.
constexpr std::uint8_t kind_basp = 0, kind_data = 1, kind_hello = 2;

bytes link_frame(std::uint8_t kind, const bytes& payload) {
  bytes f{kind};
  for (int i = 0; i < 4; ++i)
    f.push_back(static_cast<std::uint8_t>(payload.size() >> (24 - 8 * i)));
  f.insert(f.end(), payload.begin(), payload.end());
  return f;
}

/// BASP bytes as a dialing peer's gate sends them: its hello first.
bytes as_peer(const bytes& basp, bool hello = true) {
  std::string h = "nerve-link/3 n9";
  auto out = hello ? link_frame(kind_hello, bytes(h.begin(), h.end())) : bytes{};
  auto f = link_frame(kind_basp, basp);
  out.insert(out.end(), f.begin(), f.end());
  return out;
}

/// The BASP bytes in a gate's frames (data frames are skipped).
bytes unframe(const bytes& framed) {
  bytes out;
  std::size_t at = 0;
  while (at + 5 <= framed.size()) {
    std::size_t len = (std::size_t{framed[at + 1]} << 24) | (std::size_t{framed[at + 2]} << 16)
                      | (std::size_t{framed[at + 3]} << 8) | framed[at + 4];
    if (framed[at] == kind_basp)
      out.insert(out.end(), framed.begin() + static_cast<std::ptrdiff_t>(at + 5),
                 framed.begin() + static_cast<std::ptrdiff_t>(at + 5 + len));
    at += 5 + len;
  }
  return out;
}

/// A blocking TCP connection to 127.0.0.1:port.
int connect_to(std::uint16_t port) {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in at{};
  at.sin_family = AF_INET;
  at.sin_port = htons(port);
  at.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  REQUIRE(::connect(fd, reinterpret_cast<sockaddr*>(&at), sizeof at) == 0);
  return fd;
}

void send_all(int fd, const bytes& b) {
  std::size_t done = 0;
  while (done < b.size()) {
    auto n = ::send(fd, b.data() + done, b.size() - done, MSG_NOSIGNAL);
    REQUIRE(n > 0);
    done += static_cast<std::size_t>(n);
  }
}

/// Reads until `want` bytes, EOF or `limit`; returns what came and whether
/// the other side closed.
std::pair<bytes, bool> receive(int fd, std::size_t want, std::chrono::milliseconds limit = 5s) {
  bytes got;
  auto deadline = std::chrono::steady_clock::now() + limit;
  while (got.size() < want) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
      deadline - std::chrono::steady_clock::now());
    pollfd p{fd, POLLIN, 0};
    if (left.count() <= 0 || ::poll(&p, 1, static_cast<int>(left.count())) != 1)
      break;
    std::uint8_t buf[65536];
    auto n = ::recv(fd, buf, sizeof buf, 0);
    if (n <= 0)
      return {got, true};
    got.insert(got.end(), buf, buf + n);
  }
  return {got, false};
}

/// True when the other side closes `fd` within `limit` (bytes before are dropped).
bool closes(int fd, std::chrono::milliseconds limit = 5s) {
  auto deadline = std::chrono::steady_clock::now() + limit;
  while (std::chrono::steady_clock::now() < deadline) {
    auto [got, closed] = receive(fd, SIZE_MAX, 100ms);
    if (closed)
      return true;
  }
  return false;
}

/// The fds the gate hands to "CAF".
struct handed {
  std::mutex mutex;
  std::condition_variable cv;
  std::deque<int> fds;

  cluster_gate::accepted_fn fn() {
    return [this](int fd) {
      std::lock_guard<std::mutex> guard{mutex};
      fds.push_back(fd);
      cv.notify_all();
    };
  }

  int next(std::chrono::milliseconds limit = 5s) {
    std::unique_lock<std::mutex> guard{mutex};
    if (!cv.wait_for(guard, limit, [this] { return !fds.empty(); }))
      return -1;
    int fd = fds.front();
    fds.pop_front();
    return fd;
  }
};

std::shared_ptr<cluster_gate> plain_gate(gate_limits limits = {}) {
  auto gate = cluster_gate::start("127.0.0.1", 0, std::nullopt, limits);
  REQUIRE(gate);
  return *gate;
}

/// A plaintext gate with one accepted connection: the peer's socket and CAF's end.
struct one_link {
  handed caf;
  std::shared_ptr<cluster_gate> gate;
  int peer = -1;
  int mine = -1;

  explicit one_link(gate_limits limits = {}) : gate(plain_gate(limits)) {
    gate->accept(caf.fn());
    peer = connect_to(gate->port());
    mine = caf.next();
    REQUIRE(mine >= 0);
  }

  ~one_link() {
    ::close(peer);
    ::close(mine);
  }
};

/// The data frames a gate handed to its node.
struct inbox {
  std::mutex mutex;
  std::condition_variable cv;
  std::vector<std::pair<std::string, std::string>> got;
  cluster_gate::data_fn fn() {
    return [this](const std::string& peer, std::string payload) {
      std::lock_guard<std::mutex> guard{mutex};
      got.emplace_back(peer, std::move(payload));
      cv.notify_all();
    };
  }
  std::vector<std::pair<std::string, std::string>> wait(std::size_t n) {
    std::unique_lock<std::mutex> guard{mutex};
    cv.wait_for(guard, 5s, [&] { return got.size() >= n; });
    return got;
  }
};

} // namespace

TEST_CASE("the frame check passes a peer's frames however the bytes are split", "[unit]") {
  auto stream = concat({frame(client_handshake, 30), frame(heartbeat, 0),
                        frame(direct_message, 5000), frame(heartbeat, 0)});
  for (std::size_t chunk : {std::size_t{1}, std::size_t{7}, std::size_t{32}, stream.size()}) {
    basp_frame_check check{1 << 20, true};
    for (std::size_t at = 0; at < stream.size(); at += chunk) {
      auto n = std::min(chunk, stream.size() - at);
      REQUIRE_FALSE(check.feed(stream.data() + at, n));
    }
    CHECK(check.frames() == 4);
  }
}

TEST_CASE("the frame check refuses a payload over the limit, and stays refused", "[unit]") {
  basp_frame_check check{1 << 20, true};
  auto ok = concat({frame(client_handshake, 30), frame(direct_message, 1 << 20)});
  REQUIRE_FALSE(check.feed(ok.data(), ok.size()));
  auto huge = header(direct_message, 0xF0000000U, 7);
  auto bad = check.feed(huge.data(), huge.size());
  REQUIRE(bad);
  CHECK_THAT(*bad, Catch::Contains("4026531840 payload bytes"));
  auto beat = header(heartbeat, 0);
  CHECK(check.feed(beat.data(), beat.size()) == bad);
}

TEST_CASE("the frame check refuses what is no BASP client", "[unit]") {
  auto refused = [](const bytes& b, bool from_dialer = true) {
    basp_frame_check check{1 << 20, from_dialer};
    auto why = check.feed(b.data(), b.size());
    return why.value_or("");
  };
  CHECK_THAT(refused(header(0x47, 0)), Catch::Contains("no BASP message type"));
  bytes tls_hello = header(0x16, 0);
  tls_hello[1] = 0x03;
  CHECK_THAT(refused(tls_hello), Catch::Contains("without cluster.tls"));
  CHECK_THAT(refused(frame(heartbeat, 0)), Catch::Contains("no client handshake"));
  CHECK_THAT(refused(frame(server_handshake, 100)), Catch::Contains("no client handshake"));
  // CAF 0.17.6 crashes on this one (SIGSEGV).
  CHECK_THAT(refused(header(client_handshake, 0)), Catch::Contains("without payload"));
  CHECK_THAT(refused(header(client_handshake, 65 * 1024)), Catch::Contains("handshake frame"));
  CHECK_THAT(refused(concat({frame(client_handshake, 30), header(server_handshake, 10)})),
             Catch::Contains("sent a server handshake"));
  // A half header is no verdict yet.
  CHECK(refused(bytes(31, 0xff)).empty());
}

TEST_CASE("the frame check of a dialed link wants the server handshake first", "[unit]") {
  basp_frame_check check{1 << 20, false};
  auto ok = concat({frame(server_handshake, 489), frame(heartbeat, 0)});
  REQUIRE_FALSE(check.feed(ok.data(), ok.size()));
  CHECK(check.frames() == 2);
  basp_frame_check other{1 << 20, false};
  auto wrong = frame(client_handshake, 30);
  CHECK(other.feed(wrong.data(), wrong.size()));
}

TEST_CASE("the gate pumps an accepted connection to CAF's end and back", "[unit]") {
  one_link link;
  // CAF speaks first, but the peer hears it only after its hello.
  auto hello = frame(server_handshake, 100);
  send_all(link.mine, hello);
  CHECK(receive(link.peer, 1, 200ms).first.empty());
  std::string name = "nerve-link/3 n9";
  send_all(link.peer, link_frame(kind_hello, bytes(name.begin(), name.end())));
  CHECK(unframe(receive(link.peer, hello.size() + 5).first) == hello);
  // Then the peer's frames pass unchanged.
  auto frames = concat({frame(client_handshake, 30), frame(direct_message, 200000)});
  send_all(link.peer, as_peer(frames, false));
  CHECK(receive(link.mine, frames.size()).first == frames);
  // The peer leaves: CAF's end closes.
  ::shutdown(link.peer, SHUT_RDWR);
  CHECK(closes(link.mine));
}

TEST_CASE("the gate closes a connection announcing 3.9 GiB before CAF sees the header", "[unit]") {
  one_link link;
  auto first = frame(client_handshake, 30);
  send_all(link.peer, as_peer(first));
  REQUIRE(receive(link.mine, first.size()).first == first);
  send_all(link.peer, as_peer(header(direct_message, 0xF0000000U, 7), false));
  auto [got, closed] = receive(link.mine, SIZE_MAX);
  CHECK(closed);
  CHECK(got.size() < 32); // never the whole header
  CHECK(closes(link.peer));
}

TEST_CASE("the gate closes a link whose frame announces more than its limit", "[unit]") {
  one_link link;
  bytes huge{kind_data, 0xF0, 0, 0, 0};
  send_all(link.peer, concat({as_peer(frame(client_handshake, 30)), huge}));
  CHECK(closes(link.peer));
  CHECK(closes(link.mine));
}

TEST_CASE("the gate closes a link that does not start with a nerve hello", "[unit]") {
  for (auto first : {frame(client_handshake, 30), as_peer(frame(client_handshake, 30), false),
                     link_frame(kind_data, bytes(10, 1))}) {
    one_link link;
    send_all(link.peer, first);
    auto [got, closed] = receive(link.mine, SIZE_MAX);
    CHECK(closed);
    CHECK(got.empty());
  }
}

TEST_CASE("the gate closes connections over its limit at once", "[unit]") {
  handed caf;
  gate_limits limits;
  limits.connections_max = 2;
  auto gate = plain_gate(limits);
  gate->accept(caf.fn());
  int a = connect_to(gate->port());
  int b = connect_to(gate->port());
  int ca = caf.next(), cb = caf.next();
  REQUIRE((ca >= 0 && cb >= 0));
  int c = connect_to(gate->port());
  CHECK(closes(c, 2s));
  CHECK(caf.next(200ms) == -1);
  // A slot frees when a connection ends.
  ::close(a);
  REQUIRE(closes(ca));
  int d = 0;
  int cd = -1;
  for (int attempt = 0; attempt < 20 && cd < 0; ++attempt) {
    d = connect_to(gate->port());
    cd = caf.next(200ms);
    if (cd < 0)
      ::close(d);
  }
  CHECK(cd >= 0);
  for (int fd : {b, c, d, ca, cb, cd})
    ::close(fd);
}

TEST_CASE("the gate closes a connection that sends no frame in time", "[unit]") {
  gate_limits limits;
  limits.frame_timeout = 300ms;
  one_link link{limits};
  auto half = as_peer(frame(client_handshake, 30));
  half.resize(half.size() - 10);
  send_all(link.peer, half);
  auto started = std::chrono::steady_clock::now();
  CHECK(closes(link.peer, 3s));
  CHECK(std::chrono::steady_clock::now() - started >= 250ms);
}

TEST_CASE("a dial reaches a gate, and a dial to a closed port fails", "[unit]") {
  handed caf;
  auto server = plain_gate();
  server->accept(caf.fn());
  auto client = plain_gate();
  std::mutex mutex;
  std::condition_variable cv;
  std::vector<tl::expected<int, std::string>> results;
  auto done = [&](tl::expected<int, std::string> r) {
    std::lock_guard<std::mutex> guard{mutex};
    results.push_back(std::move(r));
    cv.notify_all();
  };
  auto wait_result = [&] {
    std::unique_lock<std::mutex> guard{mutex};
    REQUIRE(cv.wait_for(guard, 5s, [&] { return !results.empty(); }));
    auto r = results.front();
    results.erase(results.begin());
    return r;
  };
  client->dial("srv", "127.0.0.1", server->port(), done);
  auto dialed = wait_result();
  REQUIRE(dialed);
  int accepted = caf.next();
  REQUIRE(accepted >= 0);
  // Server side speaks first; then the client's frames.
  auto hello = frame(server_handshake, 489);
  send_all(accepted, hello);
  CHECK(receive(*dialed, hello.size()).first == hello);
  auto answer = frame(client_handshake, 30);
  send_all(*dialed, answer);
  CHECK(receive(accepted, answer.size()).first == answer);
  ::close(*dialed);
  ::close(accepted);

  // A port nobody listens on.
  std::uint16_t closed_port = 0;
  {
    auto spare = plain_gate();
    closed_port = spare->port();
  }
  client->dial("spare", "127.0.0.1", closed_port, done);
  auto refused = wait_result();
  REQUIRE_FALSE(refused);
  CHECK_THAT(refused.error(), Catch::Contains("cannot connect"));
}

TEST_CASE("data frames cross a dialed link both ways, in order, beside BASP", "[unit]") {
  inbox at_server, at_client;
  handed caf;
  auto server = *cluster_gate::start("127.0.0.1", 0, std::nullopt, {}, "srv");
  server->on_data(at_server.fn());
  server->accept(caf.fn());
  auto client = *cluster_gate::start("127.0.0.1", 0, std::nullopt, {}, "cli");
  client->on_data(at_client.fn());
  CHECK_FALSE(client->send_data("srv", "too early"));
  std::mutex mutex;
  std::condition_variable cv;
  std::optional<tl::expected<int, std::string>> dialed;
  client->dial("srv", "127.0.0.1", server->port(), [&](tl::expected<int, std::string> r) {
    std::lock_guard<std::mutex> guard{mutex};
    dialed = std::move(r);
    cv.notify_all();
  });
  {
    std::unique_lock<std::mutex> guard{mutex};
    REQUIRE(cv.wait_for(guard, 5s, [&] { return dialed.has_value(); }));
  }
  REQUIRE(*dialed);
  int accepted = caf.next();
  REQUIRE(accepted >= 0);
  // BASP through both gates, then data frames, both ways.
  auto hello = frame(server_handshake, 489);
  send_all(accepted, hello);
  CHECK(receive(**dialed, hello.size()).first == hello);
  std::string big(3 << 20, 'x');
  for (int i = 0; i < 100; ++i)
    REQUIRE(client->send_data("srv", "c" + std::to_string(i)));
  REQUIRE(client->send_data("srv", big));
  // The server learnt who dialed from the hello.
  for (int attempt = 0; attempt < 100 && !server->send_data("cli", "s0"); ++attempt)
    std::this_thread::sleep_for(10ms);
  auto from_client = at_server.wait(101);
  REQUIRE(from_client.size() == 101);
  for (int i = 0; i < 100; ++i)
    CHECK(from_client[static_cast<std::size_t>(i)]
          == std::make_pair(std::string{"cli"}, "c" + std::to_string(i)));
  CHECK(from_client[100].second == big);
  auto from_server = at_client.wait(1);
  REQUIRE(from_server.size() == 1);
  CHECK(from_server[0] == std::make_pair(std::string{"srv"}, std::string{"s0"}));
  auto answer = frame(client_handshake, 30);
  send_all(**dialed, answer);
  CHECK(receive(accepted, answer.size()).first == answer);
  CHECK_FALSE(server->send_data("nobody", "x"));
  // The link ends: no more frames for it.
  ::close(**dialed);
  CHECK(closes(accepted));
  bool refused = false;
  for (int attempt = 0; attempt < 100 && !refused; ++attempt) {
    refused = !client->send_data("srv", "late");
    std::this_thread::sleep_for(10ms);
  }
  CHECK(refused);
  ::close(accepted);
}

TEST_CASE("a peer's frames, split anywhere, reach CAF and the node intact and in order", "[unit]") {
  inbox at_node;
  handed caf;
  auto gate = *cluster_gate::start("127.0.0.1", 0, std::nullopt, {}, "me");
  gate->on_data(at_node.fn());
  gate->accept(caf.fn());
  int peer = connect_to(gate->port());
  int mine = caf.next();
  REQUIRE(mine >= 0);
  // BASP frames cut into chunks of any size, a data frame of any size after each.
  std::mt19937 rng{20261203};
  std::string hello = "nerve-link/3 n7";
  auto stream = link_frame(kind_hello, bytes(hello.begin(), hello.end()));
  auto basp = concat({frame(client_handshake, 30), frame(direct_message, 100000),
                      frame(heartbeat, 0), frame(direct_message, 7)});
  std::vector<std::string> sent;
  for (std::size_t at = 0; at < basp.size();) {
    auto n = std::min<std::size_t>(basp.size() - at, 1 + rng() % 5000);
    auto chunk = link_frame(kind_basp, bytes(basp.begin() + static_cast<std::ptrdiff_t>(at),
                                             basp.begin() + static_cast<std::ptrdiff_t>(at + n)));
    stream.insert(stream.end(), chunk.begin(), chunk.end());
    at += n;
    std::string d(rng() % 3000, static_cast<char>('a' + sent.size() % 26));
    d += std::to_string(sent.size());
    auto data = link_frame(kind_data, bytes(d.begin(), d.end()));
    stream.insert(stream.end(), data.begin(), data.end());
    sent.push_back(std::move(d));
  }
  // The bytes go out in pieces that cut headers and payloads anywhere.
  for (std::size_t at = 0; at < stream.size();) {
    auto n = std::min<std::size_t>(stream.size() - at, 1 + rng() % 700);
    send_all(peer, bytes(stream.begin() + static_cast<std::ptrdiff_t>(at),
                         stream.begin() + static_cast<std::ptrdiff_t>(at + n)));
    at += n;
  }
  CHECK(receive(mine, basp.size()).first == basp);
  auto got = at_node.wait(sent.size());
  REQUIRE(got.size() == sent.size());
  for (std::size_t i = 0; i < sent.size(); ++i)
    CHECK(got[i] == std::make_pair(std::string{"n7"}, sent[i]));
  // The hello named the peer: frames for n7 go back on this link.
  REQUIRE(gate->send_data("n7", "back"));
  auto back = receive(peer, 9).first;
  CHECK(back == link_frame(kind_data, bytes{'b', 'a', 'c', 'k'}));
  ::close(peer);
  CHECK(closes(mine));
  ::close(mine);
}
