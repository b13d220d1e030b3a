// The DLQ actor on CAF's deterministic scheduler, over a real RocksDB log in
// a temp dir: counting, paging, retry through a partition, conflicts between
// operations on one entry, timeouts in virtual time, and recovery.
#include <catch2/catch.hpp>

#include <map>

#include "actors/dlq_actor.hpp"
#include "persistence/delivery_store.hpp"
#include "persistence/event_log.hpp"
#include "tests/support/deterministic_system.hpp"
#include "tests/support/temp_dir.hpp"

using namespace nerve;
using namespace nerve::actors;
using namespace std::chrono_literals;

namespace {

/// How the stand-in partition answers redeliveries.
enum class answer { accept, refuse, silent };

struct partition_script {
  answer how = answer::accept;
  std::vector<redelivery> seen;
  std::vector<std::string> deleted; ///< dlq_delete asks
  std::vector<std::string> stored;  ///< dlq_put asks
  persistence::delivery_store* store = nullptr;
};

/// Does to the DLQ what the real partition does with its delivery state:
/// writes the change, then tells the DLQ actor (the asker).
void write_and_note(caf::event_based_actor* self, partition_script* script, const std::string& id,
                    const dead_letter* put) {
  persistence::state_batch b;
  if (put != nullptr)
    b.put_dlq(entry_of(*put));
  else
    b.delete_dlq(id);
  REQUIRE(script->store->commit(b, false));
  auto dlq = caf::actor_cast<caf::actor>(self->current_sender());
  if (put != nullptr)
    caf::anon_send(dlq, dlq_noted_atom::value, *put);
  else
    caf::anon_send(dlq, dlq_noted_atom::value, id);
}

/// A partition as the DLQ actor sees it: it answers redeliveries as scripted
/// and records them; an accepted one deletes the entry, as the real one does
/// in the batch of its pending record. (The real partition's side is covered
/// by the black-box DLQ tests; here the DLQ actor's own rules are under test.)
caf::behavior scripted_partition(caf::event_based_actor* self, partition_script* script) {
  return {
    [self, script](dlq_delete_atom, const std::string& id) -> std::string {
      script->deleted.push_back(id);
      write_and_note(self, script, id, nullptr);
      return {};
    },
    [self, script](dlq_put_atom, const dead_letter& d) -> std::string {
      script->stored.push_back(d.id);
      write_and_note(self, script, d.id, &d);
      return {};
    },
    [self, script](redeliver_atom, const std::string& agent, std::uint64_t offset,
                   const std::string& dlq_id) -> caf::result<std::string> {
      script->seen.push_back({agent, offset, dlq_id});
      switch (script->how) {
        case answer::accept:
          write_and_note(self, script, dlq_id, nullptr);
          return std::string{};
        case answer::refuse:
          return std::string{"the event is being delivered already"};
        case answer::silent:
          break;
      }
      return self->make_response_promise<std::string>(); // never delivered
    },
  };
}

struct fixture {
  test::temp_dir dir;
  std::unique_ptr<persistence::event_log> log;
  std::unique_ptr<persistence::delivery_store> store;
  test::deterministic_system det;
  partition_script script;
  caf::actor partition;
  std::atomic<std::uint64_t> gauge{0};

  fixture() {
    persistence::options o;
    o.path = dir.sub("db");
    o.fsync = config::fsync_policy::never; // syncs answer inline: no sync thread
    log = std::move(*persistence::event_log::open(o));
    store = std::make_unique<persistence::delivery_store>(*log);
    script.store = store.get();
    partition = det.sys().spawn(scripted_partition, &script);
  }

  /// Replicated when `leads` is set: partition p of every topic is led by
  /// (*leads)[p] ("me": this node; "": none).
  dlq_actor spawn_dlq(std::uint32_t page_entries = 256,
                      const std::map<std::uint32_t, std::string>* leads = nullptr) {
    dlq_deps deps;
    if (leads != nullptr)
      deps.lead_of = [leads](const std::string&, std::uint32_t p) {
        auto who = leads->at(p);
        return who == "me" ? dlq_lead{true, {}} : dlq_lead{false, who};
      };
    deps.log = log.get();
    deps.store = store.get();
    deps.size_gauge = &gauge;
    deps.page_entries = page_entries;
    deps.redeliver_timeout = 10s;
    deps.find_partition = [this](const std::string& topic, std::uint32_t) {
      return topic == "gone" ? caf::actor{} : partition;
    };
    auto dlq = actors::spawn_dlq(det.sys(), std::move(deps));
    det.run();
    return dlq;
  }

  static dead_letter letter(const std::string& agent, const std::string& topic,
                            std::uint64_t offset, std::uint32_t partition = 0) {
    dead_letter d;
    d.agent = agent;
    d.topic = topic;
    d.at = {1, partition, offset};
    d.id = persistence::delivery_store::dlq_id(agent, 1, partition, offset);
    d.event_id = "ev-" + std::to_string(offset);
    d.event = R"({"id":"ev-)" + std::to_string(offset) + R"("})";
    d.error = "boom";
    d.attempts = 4;
    return d;
  }

  bool put(const dlq_actor& dlq, const dead_letter& d) {
    auto added = det.ask<bool>(dlq, dlq_put_atom::value, d);
    REQUIRE(added);
    return *added;
  }

  std::uint64_t count(const dlq_actor& dlq) {
    auto n = det.ask<std::uint64_t>(dlq, dlq_count_atom::value);
    REQUIRE(n);
    return *n;
  }
};

errc code_of(const caf::error& e) {
  return from_caf_error(e).code;
}

} // namespace

TEST_CASE_METHOD(fixture, "the same dead letter stored twice is one entry and one count",
                 "[unit][dlq]") {
  auto dlq = spawn_dlq();
  auto d = letter("summarizer", "orders", 7);
  CHECK(put(dlq, d));
  d.attempts = 9; // dead-lettered again after a retry
  CHECK_FALSE(put(dlq, d));
  CHECK(count(dlq) == 1);
  CHECK(gauge.load() == 1);
  auto got = det.ask<dead_letter>(dlq, dlq_get_atom::value, d.id);
  REQUIRE(got);
  CHECK(got->attempts == 9);
}

TEST_CASE_METHOD(fixture, "list pages through the entries and counts by agent and topic",
                 "[unit][dlq]") {
  auto dlq = spawn_dlq();
  for (std::uint64_t i = 0; i < 25; ++i)
    put(dlq, letter(i % 2 == 0 ? "a" : "b", i < 10 ? "orders" : "payments", i));
  std::vector<std::string> ids;
  std::string cursor;
  for (int pages = 0;; ++pages) {
    REQUIRE(pages < 10);
    auto page = det.ask<dead_letter_page>(dlq, dlq_list_atom::value, dlq_query{"a", "", cursor, 4});
    REQUIRE(page);
    CHECK(page->count == 13);
    CHECK(page->entries.size() <= 4);
    for (auto& e : page->entries) {
      CHECK(e.agent == "a");
      ids.push_back(e.id);
    }
    if (page->next_cursor.empty())
      break;
    cursor = page->next_cursor;
  }
  CHECK(ids.size() == 13);
  CHECK(std::is_sorted(ids.begin(), ids.end()));
  auto orders_b
    = det.ask<dead_letter_page>(dlq, dlq_list_atom::value, dlq_query{"b", "orders", "", 100});
  REQUIRE(orders_b);
  CHECK(orders_b->count == 5);
  CHECK(orders_b->entries.size() == 5);
  CHECK(orders_b->next_cursor.empty());
}

TEST_CASE_METHOD(fixture, "a retry the partition accepts removes the entry once", "[unit][dlq]") {
  auto dlq = spawn_dlq();
  auto d = letter("summarizer", "orders", 3);
  put(dlq, d);
  auto retried = det.ask<dead_letter>(dlq, dlq_retry_atom::value, d.id);
  REQUIRE(retried);
  CHECK(retried->id == d.id);
  REQUIRE(script.seen.size() == 1);
  CHECK(script.seen[0] == redelivery{"summarizer", 3, d.id});
  CHECK(count(dlq) == 0);
  auto gone = det.ask<dead_letter>(dlq, dlq_get_atom::value, d.id);
  REQUIRE_FALSE(gone);
  CHECK(code_of(gone.error()) == errc::not_found);
  auto again = det.ask<dead_letter>(dlq, dlq_retry_atom::value, d.id);
  REQUIRE_FALSE(again);
  CHECK(code_of(again.error()) == errc::not_found);
}

TEST_CASE_METHOD(fixture, "a retry the partition refuses keeps the entry and says why",
                 "[unit][dlq]") {
  auto dlq = spawn_dlq();
  auto d = letter("summarizer", "orders", 3);
  put(dlq, d);
  script.how = answer::refuse;
  auto retried = det.ask<dead_letter>(dlq, dlq_retry_atom::value, d.id);
  REQUIRE_FALSE(retried);
  CHECK(code_of(retried.error()) == errc::unavailable);
  CHECK(from_caf_error(retried.error()).message.find("being delivered") != std::string::npos);
  CHECK(count(dlq) == 1);
}

TEST_CASE_METHOD(fixture, "a retry to a partition that is not open is refused at once",
                 "[unit][dlq]") {
  auto dlq = spawn_dlq();
  auto d = letter("summarizer", "gone", 3);
  put(dlq, d);
  auto retried = det.ask<dead_letter>(dlq, dlq_retry_atom::value, d.id);
  REQUIRE_FALSE(retried);
  CHECK(code_of(retried.error()) == errc::unavailable);
  CHECK(script.seen.empty());
  CHECK(count(dlq) == 1);
}

TEST_CASE_METHOD(fixture, "a delete while a retry of the same entry is in flight is a conflict",
                 "[unit][dlq]") {
  auto dlq = spawn_dlq();
  auto d = letter("summarizer", "orders", 5);
  put(dlq, d);
  script.how = answer::silent;
  auto& self = det.self();
  auto retry = self->request(dlq, caf::infinite, dlq_retry_atom::value, d.id);
  det.run(); // the redelivery waits for the partition
  auto del = det.ask<dead_letter>(dlq, dlq_delete_atom::value, d.id);
  REQUIRE_FALSE(del);
  CHECK(code_of(del.error()) == errc::conflict);
  auto second = det.ask<dead_letter>(dlq, dlq_retry_atom::value, d.id);
  REQUIRE_FALSE(second);
  CHECK(code_of(second.error()) == errc::conflict);
  CHECK(count(dlq) == 1);
  // The partition never answers: the retry times out in virtual time, and
  // the entry is free again.
  det.advance(11s);
  bool timed_out = false;
  retry.receive([](dead_letter&) {},
                [&](caf::error& e) { timed_out = code_of(e) == errc::unavailable; });
  CHECK(timed_out);
  auto deleted = det.ask<dead_letter>(dlq, dlq_delete_atom::value, d.id);
  REQUIRE(deleted);
  CHECK(count(dlq) == 0);
  CHECK(gauge.load() == 0);
}

TEST_CASE_METHOD(fixture, "purge deletes one agent's entries a page per step", "[unit][dlq]") {
  auto dlq = spawn_dlq(100);
  for (std::uint64_t i = 0; i < 450; ++i)
    put(dlq, letter(i < 300 ? "a" : "b", "orders", i));
  auto& self = det.self();
  auto purge = self->request(dlq, caf::infinite, dlq_purge_atom::value, std::string{"a"});
  // Each step is its own message: a count asked meanwhile is answered
  // between two pages, before the purge ends.
  det.sched().run_once(); // the purge request
  det.sched().run_once(); // the first page
  auto between = self->request(dlq, caf::infinite, dlq_count_atom::value);
  det.run();
  std::uint64_t seen_between = 0;
  between.receive([&](std::uint64_t n) { seen_between = n; }, [](caf::error&) {});
  CHECK(seen_between < 450);
  CHECK(seen_between > 150);
  std::uint64_t purged = 0;
  purge.receive([&](std::uint64_t n) { purged = n; }, [](caf::error&) {});
  CHECK(purged == 300);
  CHECK(count(dlq) == 150);
  auto left = det.ask<dead_letter_page>(dlq, dlq_list_atom::value, dlq_query{"a", "", "", 10});
  REQUIRE(left);
  CHECK(left->entries.empty());
}

TEST_CASE_METHOD(fixture, "retry-all sends back every matching entry and counts what went",
                 "[unit][dlq]") {
  auto dlq = spawn_dlq(10);
  for (std::uint64_t i = 0; i < 35; ++i)
    put(dlq, letter("a", i < 30 ? "orders" : "gone", i));
  auto n = det.ask<std::uint64_t>(dlq, dlq_retry_all_atom::value, dlq_query{"a", "", "", 0});
  REQUIRE(n);
  CHECK(*n == 30);
  CHECK(script.seen.size() == 30);
  CHECK(count(dlq) == 5); // the closed topic's entries stay
}

TEST_CASE_METHOD(fixture, "a restarted DLQ actor counts what is stored", "[unit][dlq]") {
  auto first = spawn_dlq();
  for (std::uint64_t i = 0; i < 1205; ++i)
    put(first, letter("a", "orders", i));
  caf::anon_send_exit(first, caf::exit_reason::kill);
  det.run();
  gauge = 0;
  auto second = spawn_dlq();
  CHECK(count(second) == 1205);
  CHECK(gauge.load() == 1205);
  auto page = det.ask<dead_letter_page>(second, dlq_list_atom::value, dlq_query{"", "", "", 1});
  REQUIRE(page);
  CHECK(page->count == 1205);
}

TEST_CASE_METHOD(fixture,
                 "replicated: a node answers for the entries of the partitions it leads and "
                 "changes them through the partition",
                 "[unit][dlq]") {
  // Copies as a follower's partitions commit them: partition 0 is led here,
  // 1 by node n2, 2 by nobody (an election).
  std::map<std::uint32_t, std::string> leads{{0, "me"}, {1, "n2"}, {2, ""}};
  std::vector<dead_letter> mine, theirs, orphan;
  persistence::state_batch b;
  for (std::uint64_t i = 0; i < 6; ++i) {
    auto p = static_cast<std::uint32_t>(i < 3 ? 0 : i < 5 ? 1 : 2);
    auto d = letter("a", "orders", i, p);
    (p == 0 ? mine : p == 1 ? theirs : orphan).push_back(d);
    b.put_dlq(entry_of(d));
  }
  REQUIRE(store->commit(b, false));
  auto dlq = spawn_dlq(256, &leads);
  CHECK(count(dlq) == 3);
  CHECK(gauge.load() == 3);
  auto page = det.ask<dead_letter_page>(dlq, dlq_list_atom::value, dlq_query{"", "", "", 2});
  REQUIRE(page);
  CHECK(page->count == 3);
  REQUIRE(page->entries.size() == 2);
  CHECK_FALSE(page->next_cursor.empty());
  for (auto& e : page->entries)
    CHECK(e.at.partition == 0);
  auto rest
    = det.ask<dead_letter_page>(dlq, dlq_list_atom::value, dlq_query{"", "", page->next_cursor, 2});
  REQUIRE(rest);
  REQUIRE(rest->entries.size() == 1);
  CHECK(rest->entries[0].at.partition == 0);
  CHECK(rest->next_cursor.empty());

  // Led elsewhere: "not here" (the cluster asks the leader next), naming it.
  auto other = det.ask<dead_letter>(dlq, dlq_get_atom::value, theirs[0].id);
  REQUIRE_FALSE(other);
  CHECK(code_of(other.error()) == errc::not_found);
  CHECK(from_caf_error(other.error()).message.find("node n2") != std::string::npos);
  CHECK(from_caf_error(other.error()).leader == "n2"); // problem+json "leader"
  auto none = det.ask<dead_letter>(dlq, dlq_retry_atom::value, orphan[0].id);
  REQUIRE_FALSE(none);
  CHECK(code_of(none.error()) == errc::unavailable);
  CHECK(script.seen.empty());

  // Changes go through the partition, which writes them (and ships them).
  auto del = det.ask<dead_letter>(dlq, dlq_delete_atom::value, mine[0].id);
  REQUIRE(del);
  CHECK(script.deleted == std::vector<std::string>{mine[0].id});
  auto retried = det.ask<dead_letter>(dlq, dlq_retry_atom::value, mine[1].id);
  REQUIRE(retried);
  CHECK(count(dlq) == 1);
  auto purged = det.ask<std::uint64_t>(dlq, dlq_purge_atom::value, std::string{});
  REQUIRE(purged);
  CHECK(*purged == 1);
  CHECK(script.deleted.size() == 2);
  CHECK(count(dlq) == 0);
  auto kept = store->dlq_get(theirs[0].id);
  REQUIRE(kept);
  CHECK(kept->has_value()); // n2's to change

  // A replay's dead letter of a partition led here goes through it.
  auto replayed = letter("a", "orders", 40, 0);
  CHECK(put(dlq, replayed));
  CHECK(script.stored == std::vector<std::string>{replayed.id});
  CHECK(count(dlq) == 1);

  // Leadership moves without a message: counts follow, the gauge by the tick.
  leads[1] = "me";
  CHECK(count(dlq) == 3);
  det.advance(std::chrono::seconds{1});
  CHECK(gauge.load() == 3);
  caf::anon_send_exit(dlq, caf::exit_reason::kill); // its tick would run forever
  det.run();
}
