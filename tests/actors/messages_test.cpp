// The actor protocol's value types cross nodes: each one, inside a
// caf::message, is written by one actor system's binary serializer and read
// back by another's by its registered name, as a remote node would.
#include <catch2/catch.hpp>

#include <caf/all.hpp>

#include "actors/messages.hpp"
#include "tests/support/replay_sample.hpp"

using namespace nerve::actors;

namespace {

struct registered_config : caf::actor_system_config {
  registered_config() { register_messages(*this); }
};

/// Two systems, so reading back goes through the names, not shared state.
struct two_nodes {
  registered_config cfg_a, cfg_b;
  caf::actor_system a{cfg_a};
  caf::actor_system b{cfg_b};
};

template <class T>
T round_trip(two_nodes& nodes, const T& x) {
  std::vector<char> buf;
  caf::binary_serializer sink{nodes.a, buf};
  auto msg = caf::make_message(x);
  REQUIRE(!sink(msg));
  caf::message back;
  caf::binary_deserializer source{nodes.b, buf};
  REQUIRE(!source(back));
  REQUIRE(back.match_elements<T>());
  return back.get_as<T>(0);
}

wire_event sample_event(int n) {
  wire_event e;
  e.id = "0190f0a0-0000-7000-8000-00000000000" + std::to_string(n);
  e.key = "customer-" + std::to_string(n);
  e.fragment = R"("type":"order.created","data":{"n":)" + std::to_string(n) + "}";
  e.type = "order.created";
  e.source = "shop";
  e.generated = n % 2 == 0;
  return e;
}

} // namespace

TEST_CASE("events and append requests round-trip through the binary serializer", "[unit]") {
  two_nodes nodes;
  auto e = sample_event(1);
  CHECK(round_trip(nodes, e) == e);
  append_request req{"omni.orders", 3, {sample_event(1), sample_event(2), sample_event(3)}};
  CHECK(round_trip(nodes, req) == req);
  appended a{"id-1", 3, 1ULL << 40, 1733140000123456, true};
  CHECK(round_trip(nodes, a) == a);
  event_position at{7, 2, 99};
  CHECK(round_trip(nodes, at) == at);
}

TEST_CASE("deliveries, outcomes and credits round-trip through the binary serializer", "[unit]") {
  two_nodes nodes;
  delivery d{1, 2, 42, 3, "ev:summarizer:3", "ev", R"({"id":"ev","data":"ü ☃"})"};
  CHECK(round_trip(nodes, d) == d);
  outcome o{1, 2, 42, 3, false, true, R"({"ok":1})", R"([{"topic":"t"}])", "boom", 1234};
  CHECK(round_trip(nodes, o) == o);
  CHECK(round_trip(nodes, std::vector<outcome>{o, o}) == std::vector<outcome>{o, o});
  credit_grant c{4, 1, -16};
  CHECK(round_trip(nodes, c) == c);
}

TEST_CASE("dead letters and redeliveries round-trip through the binary serializer", "[unit]") {
  two_nodes nodes;
  dead_letter x{"dlq-00000000000000ab", "summarizer", "orders", {1, 0, 17}, "ev",
                R"({"id":"ev"})",       "timeout",    4,        100,        200};
  CHECK(round_trip(nodes, x) == x);
  redelivery r{"summarizer", 17, "dlq-00000000000000ab"};
  CHECK(round_trip(nodes, r) == r);
}

TEST_CASE("a replay record with its plan round-trips through the binary serializer", "[unit]") {
  two_nodes nodes;
  auto rec = nerve::test::sample_replay_record();
  CHECK(round_trip(nodes, rec) == rec);
  hello h{"node-a", wire_version, "05ef021a2564a48b", {"echo", "summarizer"}};
  CHECK(round_trip(nodes, h) == h);
  std::vector<append_request> forward{append_request{"orders", 2, {sample_event(4)}},
                                      append_request{"orders", 3, {}}};
  CHECK(round_trip(nodes, forward) == forward);
  std::vector<appended> answer{appended{"id-1", 2, 7, 123, false}, appended{"id-2", 3, 0, 5, true}};
  CHECK(round_trip(nodes, answer) == answer);
}

TEST_CASE("a node without the registrations cannot read a protocol message", "[unit]") {
  registered_config cfg_a;
  caf::actor_system a{cfg_a};
  caf::actor_system_config bare_cfg;
  caf::actor_system bare{bare_cfg};
  std::vector<char> buf;
  caf::binary_serializer sink{a, buf};
  REQUIRE(!sink(caf::make_message(hello{"node-a", wire_version, "digest", {}})));
  caf::message back;
  caf::binary_deserializer source{bare, buf};
  // "nerve.hello" is unknown there. CAF 0.17 reports no error: it drops the
  // value, which is why every request to a remote actor needs a timeout.
  CHECK_FALSE(source(back));
  CHECK(back.empty());
}

TEST_CASE("protocol enums have stable names both ways", "[unit]") {
  for (auto k : {agent_kind::builtin, agent_kind::process, agent_kind::http})
    CHECK(agent_kind_of(to_string(k)) == k);
  CHECK(ordering_of("key") == ordering::key);
  CHECK(ordering_of("") == ordering::none);
  CHECK(start_position_of("earliest") == start_position::earliest);
  CHECK(replay_state_of(to_string(replay_state::failed)) == replay_state::failed);
  CHECK(to_string(replay_mode::dry_run) == "dry-run");
  CHECK_FALSE(agent_kind_of("pull-ish").has_value());
  CHECK_FALSE(replay_state_of("paused").has_value());
}

TEST_CASE("every node error survives the trip through caf::error", "[unit]") {
  for (auto code : {errc::not_found, errc::conflict, errc::overloaded, errc::unavailable,
                    errc::storage, errc::invalid}) {
    auto e = make_caf_error(code, "what failed");
    REQUIRE(static_cast<bool>(e)); // never CAF's "no error"
    auto back = from_caf_error(e);
    CHECK(back.code == code);
    CHECK(back.message == "what failed");
  }
  auto theirs = from_caf_error(caf::make_error(caf::sec::request_timeout));
  CHECK(theirs.code == errc::unavailable);
  auto elsewhere = from_caf_error(make_caf_error(errc::not_found, "not on this copy", "n3"));
  CHECK((elsewhere.code == errc::not_found && elsewhere.message == "not on this copy"
         && elsewhere.leader == "n3"));
  CHECK(from_caf_error(make_caf_error(errc::not_found, "gone")).leader.empty());
}

TEST_CASE("replication fetches and their answers round-trip through the binary serializer",
          "[unit]") {
  two_nodes nodes;
  fetch_request req{"omni:orders", 5, 7, 1ULL << 33, 6, "n2"};
  CHECK(round_trip(nodes, req) == req);
  fetch_response r;
  r.status = fetch_status::diverged;
  r.epoch = 7;
  r.high_watermark = 1234;
  r.position = 1200;
  r.position_epoch = 5;
  r.error = "none";
  r.chunks = {repl_chunk{5, {repl_record{1200, 1733140000123456, "id-1", R"({"id":"id-1"})"}}},
              repl_chunk{7,
                         {repl_record{1201, 1733140000123457, "id-2", "{}"},
                          repl_record{1202, 1733140000123458, "id-3", std::string(70000, 'x')}}}};
  r.state = {repl_state_op{0, false, "cursor-key", std::string("\0\1\2", 3)},
             repl_state_op{1, true, "pending-key", ""}};
  auto back = round_trip(nodes, r);
  CHECK(back == r);
  CHECK(back.status == fetch_status::diverged);
  CHECK(back.chunks[1].records[1].json.size() == 70000);
}

TEST_CASE("link frames carry fetches, answers, syncs and forwards, and refuse garbage", "[unit]") {
  fetch_request req{"omni:orders", 5, 7, 1ULL << 33, 6, "n2"};
  req.synced = 12;
  req.session = 3;
  auto req2 = req;
  req2.topic = "omni:audit";
  std::vector<fetch_item> fetches{{42, req}, {7, req2}};
  auto f = read_link_frame(link_fetch(fetches));
  REQUIRE(f);
  CHECK(f->op == link_op::fetch);
  CHECK(f->fetches == fetches);

  fetch_response r;
  r.status = fetch_status::ok;
  r.epoch = 7;
  r.chunks = {repl_chunk{7, {repl_record{1201, 1733140000123457, "id-2", "{}"}}}};
  r.state = {repl_state_op{0, false, "cursor-key", std::string("\0\1\2", 3)}};
  std::vector<fetch_answer_item> answers{{"omni:orders", 5, 43, r}, {"audit", 0, 8, {}}};
  auto a = read_link_frame(link_fetch_answer(answers));
  REQUIRE(a);
  CHECK(a->op == link_op::fetch_answer);
  CHECK(a->answers == answers);

  auto s = read_link_frame(link_synced(req));
  REQUIRE(s);
  CHECK(s->op == link_op::synced);
  CHECK(s->request == req);

  std::vector<append_request> events{{"orders", 1, {sample_event(1), sample_event(2)}},
                                     {"orders", 3, {sample_event(3)}}};
  std::vector<forward_item> forwards{{44, "orders", 4, events},
                                     {47, "omni:audit", 1, {{"omni:audit", 0, {sample_event(4)}}}}};
  auto fw = read_link_frame(link_forward(forwards));
  REQUIRE(fw);
  CHECK(fw->op == link_op::forward);
  CHECK(fw->forwards == forwards);

  std::vector<appended> out{{"id-1", 1, 10, 1733140000123456, false},
                            {"id-2", 1, 11, 1733140000123457, true}};
  std::vector<forward_reply> replies{{45, 0, "", out}, {46, 4, "not led here", {}}};
  auto fa = read_link_frame(link_forward_answer(replies));
  REQUIRE(fa);
  CHECK(fa->op == link_op::forward_answer);
  CHECK(fa->replies == replies);
  CHECK((fa->replies[1].code == 4 && fa->replies[1].detail == "not led here"
         && fa->replies[1].out.empty()));

  // Garbage: an empty frame, an unknown op, a truncated one, trailing bytes,
  // a sequence length far beyond the bytes (read, never allocated up front).
  CHECK_FALSE(read_link_frame(""));
  CHECK_THAT(read_link_frame("\x7f").error(), Catch::Contains("unknown op"));
  auto whole = link_fetch(fetches);
  CHECK_FALSE(read_link_frame(std::string_view{whole}.substr(0, whole.size() - 3)));
  CHECK_THAT(read_link_frame(whole + "xy").error(), Catch::Contains("2 bytes too many"));
  std::string huge{"\x04\x01", 2};                // one forward
  huge += std::string(8, '\0');                   // token
  huge += std::string{"\x06orders", 7};           // topic
  huge += std::string(4, '\0');                   // partitions
  huge += std::string{"\xff\xff\xff\xff\x0f", 5}; // 4 Gi append requests
  CHECK_FALSE(read_link_frame(huge));
}

TEST_CASE("an answer carried in a message runs once, and unavailable when it is dropped",
          "[unit]") {
  std::vector<result<std::uint64_t>> got;
  {
    count_answer reply{[&got](result<std::uint64_t> r) { got.push_back(std::move(r)); }, "agent a"};
    auto copy = reply; // as a message and a waiting fetch share it
    copy(3);
    reply(4);
  }
  REQUIRE(got.size() == 1);
  CHECK(got[0] == 3u);
  {
    count_answer reply{[&got](result<std::uint64_t> r) { got.push_back(std::move(r)); }, "agent a"};
    auto msg = caf::make_message(reply); // the actor stops with it in its mailbox
  }
  REQUIRE(got.size() == 2);
  REQUIRE_FALSE(got[1]);
  CHECK(got[1].error().code == errc::unavailable);
  CHECK(got[1].error().message == "agent a stopped before answering");
}
