// Fetch sessions (actors/repl_sessions.hpp): a round goes out in one frame
// with its last answer, and its first answer, whatever it carries, makes
// the partitions still parked answer at once.
#include <catch2/catch.hpp>

#include <string>
#include <vector>

#include "actors/repl_sessions.hpp"

using namespace nerve::actors;

namespace {

struct wire {
  std::vector<std::pair<std::string, std::string>> frames; ///< (node, frame) sent
  std::vector<partition_key> unparked;
  bool link = true;

  repl_sessions sessions() {
    return repl_sessions{
      [this](const std::string& node, std::string frame) {
        if (!link)
          return false;
        frames.emplace_back(node, std::move(frame));
        return true;
      },
      [this](const std::string&, std::uint64_t, const partition_key& p) { unparked.push_back(p); }};
  }
};

fetch_answer_item empty_answer(std::uint32_t partition, std::uint64_t token) {
  fetch_answer_item a;
  a.topic = "orders";
  a.partition = partition;
  a.token = token;
  return a;
}

fetch_request request_for(std::uint32_t partition, std::uint64_t from) {
  fetch_request r;
  r.topic = "orders";
  r.partition = partition;
  r.from = from;
  r.node = "n2";
  return r;
}

std::vector<fetch_answer_item> answers_in(const std::string& frame) {
  auto decoded = read_link_frame(frame);
  REQUIRE(decoded);
  REQUIRE(decoded->op == link_op::fetch_answer);
  return decoded->answers;
}

} // namespace

TEST_CASE("a round's first answer unparks the rest, even one without records", "[unit]") {
  wire w;
  auto s = w.sessions();
  auto round = s.begin("n2", 3);
  for (std::uint32_t p = 0; p < 3; ++p)
    CHECK(s.may_park(round, {"orders", p}));
  // Partition 0's park expired (or it had only news): it answers empty.
  s.answer(round, empty_answer(0, 10));
  CHECK(w.frames.empty()); // the frame waits for the other two
  CHECK(w.unparked == std::vector<partition_key>{{"orders", 1}, {"orders", 2}});
  // One that comes to park only now answers at once instead.
  CHECK_FALSE(s.may_park(round, {"orders", 3}));
  s.answer(round, empty_answer(1, 11));
  s.answer(round, empty_answer(2, 12));
  REQUIRE(w.frames.size() == 1);
  CHECK(w.frames[0].first == "n2");
  auto got = answers_in(w.frames[0].second);
  REQUIRE(got.size() == 3);
  CHECK(got[0].token == 10);
  CHECK(got[2].token == 12);
  CHECK(w.unparked.size() == 2); // each parked partition was asked once
}

TEST_CASE("a partition that answers before any parked asks no one to unpark", "[unit]") {
  wire w;
  auto s = w.sessions();
  auto round = s.begin("n3", 2);
  auto with_records = empty_answer(0, 1);
  with_records.response.chunks.push_back({});
  s.answer(round, with_records);
  CHECK(w.unparked.empty());
  CHECK_FALSE(s.may_park(round, {"orders", 1})); // the round is going: answer now
  s.answer(round, empty_answer(1, 2));
  CHECK(w.frames.size() == 1);
}

TEST_CASE("a follower's next round waits for every partition of the last", "[unit]") {
  wire w;
  auto s = w.sessions();
  REQUIRE(s.fetch("n1", 1, request_for(0, 5)));
  REQUIRE(w.frames.size() == 1); // nothing outstanding: the first goes at once
  // While the round is away, the others' fetches wait for the next one.
  REQUIRE(s.fetch("n1", 2, request_for(1, 7)));
  CHECK(w.frames.size() == 1);
  s.answered("n1");
  // The answer came; partition 1's fetch is pending but partition 0, in the
  // last round, has not fetched again (it applies and syncs): no frame yet.
  CHECK(w.frames.size() == 1);
  REQUIRE(s.fetch("n1", 3, request_for(0, 9)));
  REQUIRE(w.frames.size() == 2);
  auto frame = read_link_frame(w.frames[1].second);
  REQUIRE(frame);
  REQUIRE(frame->fetches.size() == 2);
  CHECK(frame->fetches[0].request.from == 9);
  CHECK(frame->fetches[1].request.from == 7);
}
