// A replay_record to and from its stored JSON: the round trip, a record in
// the format nerve has written since replays began, and stored records that
// are not replay records, directly and through a real RocksDB store.
#include <catch2/catch.hpp>

#include <nlohmann/json.hpp>

#include "actors/replay_storage.hpp"
#include "persistence/delivery_store.hpp"
#include "persistence/event_log.hpp"
#include "tests/support/replay_sample.hpp"
#include "tests/support/temp_dir.hpp"

using namespace nerve;
using namespace nerve::actors;
using json = nlohmann::json;

namespace {

/// A redelivering replay part way through, as stored before records were
/// typed (keys in the order nlohmann's dump writes them).
const char* const stored_before = R"({
  "acked": 3, "agents": ["summarizer"],
  "counts": [{"agent": "summarizer", "events": 5, "topic": "orders"},
             {"agent": "summarizer", "events": 1, "topic": "payments"},
             {"agent": "auditor", "events": 2, "topic": "orders"}],
  "created_us": 1733140000000123, "dead_lettered": 1, "error": "", "events": [],
  "events_done": 4, "events_total": 8, "failed": 2, "finished_us": 0,
  "from_us": 1733139000000000, "id": "0193a1b2-0000-7000-8000-000000000001",
  "mode": "redeliver",
  "plan": [{"agent": "summarizer", "counts": {"orders": 5, "payments": 1}, "done": 4,
            "named": true, "pos": [1, 3],
            "ranges": [["orders", 1, 0, 5, 9], ["payments", 2, 3, 0, 0]], "total": 6},
           {"agent": "auditor", "counts": {"orders": 2}, "done": 0, "named": false,
            "pos": [0, 0], "ranges": [["orders", 1, 1, 7, 8]], "total": 2},
           {"agent": "idle", "counts": {}, "done": 0, "named": false, "pos": [0, 0],
            "ranges": [], "total": 0}],
  "retried": 1, "state": "running", "to_us": 1733140000000000, "topics": []
})";

/// Why `text` is not a replay record (empty: it is one).
std::string refusal(const std::string& text) {
  auto r = detail::replay_record_from_json(json::parse(text, nullptr, false));
  if (r)
    return {};
  CHECK(r.error().code == errc::storage);
  return r.error().message;
}

/// The stored record with `key` set to `value` (a JSON text; empty: removed).
std::string with(const std::string& pointer, const std::string& value) {
  auto j = json::parse(stored_before);
  if (value.empty())
    j.at(json::json_pointer{pointer}.parent_pointer())
      .erase(pointer.substr(pointer.rfind('/') + 1));
  else
    j[json::json_pointer{pointer}] = json::parse(value);
  return j.dump();
}

} // namespace

TEST_CASE("a replay record round-trips through its stored JSON", "[unit]") {
  auto r = test::sample_replay_record();
  auto text = detail::to_json(r).dump();
  auto back = detail::replay_record_from_json(json::parse(text));
  REQUIRE(back);
  CHECK(*back == r);
  // The flat counts the version before this one read are written too.
  CHECK(json::parse(text).at("counts") == json::parse(R"([
    {"agent": "summarizer", "topic": "orders", "events": 5},
    {"agent": "summarizer", "topic": "payments", "events": 1}])"));
}

TEST_CASE("a replay record stored before records were typed still loads", "[unit]") {
  auto r = detail::replay_record_from_json(json::parse(stored_before));
  REQUIRE(r);
  CHECK(r->id == "0193a1b2-0000-7000-8000-000000000001");
  CHECK(r->state == replay_state::running);
  CHECK(r->mode == replay_mode::redeliver);
  CHECK(r->from_us == 1733139000000000);
  CHECK(r->created_us == 1733140000000123);
  CHECK(r->events_total == 8);
  CHECK(r->events_done == 4);
  CHECK((r->acked == 3 && r->failed == 2 && r->retried == 1 && r->dead_lettered == 1));
  REQUIRE(r->plan.size() == 3);
  auto& p = r->plan[0];
  CHECK(p.agent == "summarizer");
  CHECK(p.named);
  CHECK(p.ranges
        == std::vector<replay_range>{{"orders", {1, 0, 5}, 9}, {"payments", {2, 3, 0}, 0}});
  CHECK(p.counts == std::map<std::string, std::uint64_t>{{"orders", 5}, {"payments", 1}});
  CHECK((p.events == 6 && p.done == 4 && p.pos_range == 1 && p.pos_offset == 3));
  CHECK_FALSE(r->plan[1].named);
  CHECK(r->plan[2].ranges.empty());
  // Written back, it is the same document: the version before reads it too.
  CHECK(detail::to_json(*r) == json::parse(stored_before));
}

TEST_CASE("a stored replay record that is not one is refused, naming the field", "[unit]") {
  CHECK(refusal(stored_before).empty());
  CHECK(refusal("") == "the record is not a JSON object");
  CHECK(refusal("{\"id\":") == "the record is not a JSON object");
  CHECK(refusal("[1, 2]") == "the record is not a JSON object");
  CHECK(refusal(with("/id", "")) == "id is missing");
  CHECK(refusal(with("/state", "\"paused\""))
        == "state is \"paused\": not running, done, failed or cancelled");
  CHECK(refusal(with("/mode", "1")) == "mode must be a string");
  CHECK(refusal(with("/acked", "-1")) == "acked must be a whole number >= 0");
  CHECK(refusal(with("/to_us", "1.5")) == "to_us must be a whole number of microseconds");
  CHECK(refusal(with("/to_us", "18446744073709551615"))
        == "to_us must be a whole number of microseconds");
  CHECK(refusal(with("/topics", "[\"orders\", 3]")) == "topics[1] must be a string");
  CHECK(refusal(with("/plan", "{}")) == "plan must be an array");
  CHECK(refusal(with("/plan/0", "7")) == "plan[0] must be an object");
  CHECK(refusal(with("/plan/1/named", "\"no\"")) == "plan[1].named must be true or false");
  CHECK(refusal(with("/plan/0/ranges/1", "[\"payments\", 2, 3]"))
        == "plan[0].ranges[1] must be [topic, topic id, partition, first offset, last offset]");
  CHECK(refusal(with("/plan/0/ranges/0/2", "4294967296"))
        == "plan[0].ranges[0][2] must be below 2^32");
  CHECK(refusal(with("/plan/0/ranges/0/3", "10"))
        == "plan[0].ranges[0] must not end before it starts");
  CHECK(refusal(with("/plan/0/counts/orders", "\"5\""))
        == "plan[0].counts.orders must be a whole number >= 0");
  CHECK(refusal(with("/plan/0/pos", "[1]")) == "plan[0].pos must be [range, offset]");
  CHECK(refusal(with("/plan/2/total", "")) == "plan[2].total is missing");
}

TEST_CASE("stored replays load by id and as a list, a corrupt one with its id", "[unit]") {
  test::temp_dir dir;
  persistence::options o;
  o.path = dir.sub("db");
  o.fsync = config::fsync_policy::never;
  auto log = std::move(*persistence::event_log::open(o));
  persistence::delivery_store store{*log};
  auto r = test::sample_replay_record();
  REQUIRE_FALSE(detail::store_replay(store, r, false));
  persistence::state_batch b;
  b.put_meta(detail::replay_key("0193a1b2-0000-7000-8000-000000000001"), stored_before);
  b.put_meta(detail::replay_key("0193a1b2-0000-7000-8000-000000000003"), "{\"id\": 3}");
  REQUIRE(store.commit(b, false));

  auto got = detail::load_replay(store, r.id);
  REQUIRE(got);
  CHECK(*got == r);
  auto missing = detail::load_replay(store, "nope");
  REQUIRE_FALSE(missing);
  CHECK(missing.error().code == errc::not_found);
  CHECK(missing.error().message == "no replay with id nope");
  auto corrupt = detail::load_replay(store, "0193a1b2-0000-7000-8000-000000000003");
  REQUIRE_FALSE(corrupt);
  CHECK(corrupt.error().code == errc::storage);
  CHECK(corrupt.error().message
        == "replay 0193a1b2-0000-7000-8000-000000000003 is stored corrupt: id must be a string");

  auto all = detail::load_replays(store);
  REQUIRE(all);
  REQUIRE(all->size() == 2); // the corrupt one left out
  CHECK((*all)[0].id == "0193a1b2-0000-7000-8000-000000000001");
  CHECK((*all)[1] == r);
}
