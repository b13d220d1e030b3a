// The storage side of replicated partitions on real databases in temp dirs:
// topics with given ids, a leader's records applied by a follower byte for
// byte, the leader-epoch checkpoint, truncation of a divergent tail, and
// delivery state shipped as ops.
#include <catch2/catch.hpp>

#include <algorithm>
#include <atomic>
#include <map>
#include <memory>
#include <ostream>

#include <rocksdb/db.h>

#include "persistence/delivery_store.hpp"
#include "persistence/event_log.hpp"
#include "persistence/layout.hpp"
#include "tests/support/raw_rocksdb.hpp"
#include "tests/support/temp_dir.hpp"

using namespace nerve::persistence;

namespace nerve::persistence {

std::ostream& operator<<(std::ostream& out, const epoch_entry& e) {
  return out << e.epoch << '@' << e.start_offset;
}

} // namespace nerve::persistence

namespace {

std::atomic<std::int64_t> fake_now{1'700'000'000'000'000};

options opts_at(const std::string& path) {
  options o;
  o.path = path;
  o.clock = [] { return fake_now.load(); };
  return o;
}

std::unique_ptr<event_log> open_log(const std::string& path) {
  auto log = event_log::open(opts_at(path));
  REQUIRE(log);
  return std::move(*log);
}

topic_info topic_with_id(event_log& log, std::uint32_t id, std::uint32_t partitions = 2) {
  auto t = log.create_topic("orders", partitions, id);
  REQUIRE(t);
  REQUIRE(t->id == id);
  return *t;
}

new_event ev(std::string id, std::string key = "") {
  return {std::move(id), std::move(key), "\"data\":{\"n\":1}", {}, {}};
}

/// One node's log holding topic "orders" with a global id; reopen() closes
/// and opens it again, as a restart does.
struct one_log {
  explicit one_log(std::uint32_t topic_id, std::uint32_t partitions = 2)
    : log(open_log(dir.sub("db"))), t(topic_with_id(*log, topic_id, partitions)) {}
  void reopen() {
    log.reset();
    log = open_log(dir.sub("db"));
    REQUIRE(log->find_topic("orders")->id == t.id);
  }

  nerve::test::temp_dir dir;
  std::unique_ptr<event_log> log;
  topic_info t;
};

/// Two nodes' logs, each holding topic "orders" with the same global id.
struct two_logs {
  explicit two_logs(std::uint32_t topic_id, std::uint32_t partitions = 2)
    : a_log(open_log(dir.sub("a"))), b_log(open_log(dir.sub("b"))),
      at(topic_with_id(*a_log, topic_id, partitions)),
      bt(topic_with_id(*b_log, topic_id, partitions)) {}

  nerve::test::temp_dir dir;
  std::unique_ptr<event_log> a_log;
  std::unique_ptr<event_log> b_log;
  topic_info at;
  topic_info bt;
};

/// Appends one event per id, each a millisecond after the one before.
void append_each(partition_writer& w, const std::vector<std::string>& ids) {
  for (const auto& id : ids) {
    fake_now += 1000;
    auto r = w.append({ev(id, id.size() % 2 ? "k" : "")});
    REQUIRE(r);
    REQUIRE((*r)[0].status == append_status::appended);
  }
}

std::vector<replica_record> records_of(event_log& log, const topic_info& t, std::uint32_t p,
                                       std::uint64_t from = 0) {
  auto r = log.read_records(t, p, from, 100000, std::size_t{1} << 30);
  REQUIRE(r);
  return *r;
}

std::vector<std::string> ids_of(const std::vector<replica_record>& records) {
  std::vector<std::string> out;
  for (const auto& r : records)
    out.push_back(r.id);
  return out;
}

/// Every record of every column family, read straight from RocksDB after
/// the log is closed: {family: [(key, value)]}, without the meta records
/// that differ by design between two nodes (node id, probe).
using raw_db = std::map<std::string, std::vector<std::pair<std::string, std::string>>>;

raw_db raw_records(const std::string& path) {
  nerve::test::raw_rocksdb raw{path, true};
  raw_db out;
  for (const auto& name : raw.names()) {
    auto& records = out[name];
    for (auto& record : raw.records(name))
      if (name != "meta" || (record.first != "node_id" && record.first != "probe"))
        records.push_back(std::move(record));
  }
  return out;
}

/// The id of topic "orders" in the closed log at `path`.
std::uint32_t leader_topic_id(const std::string& path) {
  auto log = open_log(path);
  auto t = log->find_topic("orders");
  REQUIRE(t);
  return t->id;
}

/// `records` without those whose key `skip` picks.
template <class Skip>
raw_db::mapped_type records_except(const raw_db::mapped_type& records, Skip skip) {
  raw_db::mapped_type out;
  for (const auto& record : records)
    if (!skip(record.first))
      out.push_back(record);
  return out;
}

std::vector<std::tuple<std::int64_t, std::uint32_t, std::uint32_t, std::uint64_t>>
by_time(const event_log& log) {
  std::vector<std::tuple<std::int64_t, std::uint32_t, std::uint32_t, std::uint64_t>> out;
  auto n = log.scan_time(
    0, INT64_MAX,
    [&out](std::int64_t t, std::uint32_t tid, std::uint32_t p, std::uint64_t lo, std::uint64_t hi) {
      for (auto offset = lo; offset <= hi; ++offset)
        out.emplace_back(t, tid, p, offset);
      return true;
    });
  REQUIRE(n);
  return out;
}

} // namespace

TEST_CASE("a stored event's id is read from the start of its JSON, escapes and all",
          "[unit][persistence]") {
  CHECK(layout::stored_id(R"({"id":"abc","topic":"t"})") == "abc");
  CHECK(layout::stored_id(R"({"id":"a\"b\\c\u00e9\t","topic":"t"})") == "a\"b\\c\u00e9\t");
  CHECK(layout::stored_id("{\"id\":\"\xc3\xbcn\",\"x\":1}") == "\xc3\xbcn");
  CHECK_FALSE(layout::stored_id(R"({"id":"","topic":"t"})"));
  CHECK_FALSE(layout::stored_id(R"({"topic":"t","id":"abc"})"));
  CHECK_FALSE(layout::stored_id(R"({"id":"never closed)"));
  CHECK_FALSE(layout::stored_id(R"({"id":"bad \q escape"})"));
  CHECK_FALSE(layout::stored_id(""));
}

TEST_CASE("a topic created with an id keeps exactly that id, and a conflicting one is refused",
          "[unit][persistence]") {
  nerve::test::temp_dir dir;
  {
    auto log = open_log(dir.sub("db"));
    auto t = topic_with_id(*log, 7, 3);
    CHECK(t.name == "orders");
    CHECK(t.partitions == 3);

    auto again = log->create_topic("orders", 3, 7);
    REQUIRE(again);
    CHECK(again->id == 7);
    CHECK(log->create_topic("orders", 3)->id == 7); // without an id: the existing one

    auto other_id = log->create_topic("orders", 3, 8);
    REQUIRE_FALSE(other_id);
    CHECK(other_id.error().code == errc::conflict);
    CHECK_THAT(other_id.error().message, Catch::Contains("id 7 and 3 partitions")
                                           && Catch::Contains("not id 8 and 3 partitions"));
    auto other_count = log->create_topic("orders", 4, 7);
    REQUIRE_FALSE(other_count);
    CHECK(other_count.error().code == errc::conflict);
    auto taken = log->create_topic("audit", 1, 7);
    REQUIRE_FALSE(taken);
    CHECK(taken.error().code == errc::conflict);
    CHECK_THAT(taken.error().message, Catch::Contains("topic orders has it"));
    for (std::uint32_t bad : {0U, UINT32_MAX}) {
      auto out_of_range = log->create_topic("audit", 1, bad);
      REQUIRE_FALSE(out_of_range);
      CHECK(out_of_range.error().code == errc::invalid);
    }
    CHECK(log->create_topic("audit", 0, 9).error().code == errc::invalid);
    CHECK_FALSE(log->find_topic("audit"));

    // Ids this log assigns itself go past every id it holds.
    CHECK(log->create_topic("local", 1)->id == 8);
    REQUIRE(log->create_topic("big", 1, 20));
  }
  auto log = open_log(dir.sub("db"));
  auto t = log->find_topic("orders");
  REQUIRE(t);
  CHECK(t->id == 7);
  CHECK(log->create_topic("orders", 3, 7));
  CHECK(log->create_topic("orders", 3, 8).error().code == errc::conflict);
  CHECK(log->create_topic("later", 1)->id == 21);
  auto local = log->create_topic("x", 1, 8); // the id of "local"
  REQUIRE_FALSE(local);
  CHECK(local.error().code == errc::conflict);
}

TEST_CASE("read_records pages by events and bytes, at least one record a page",
          "[unit][persistence]") {
  one_log db{3};
  auto& [dir, log, t] = db;
  partition_writer w{*log, t, 1};
  append_each(w, {"r0", "with \"quotes\" and \\", "r2", "r3", "r4"});

  auto all = records_of(*log, t, 1);
  REQUIRE(all.size() == 5);
  auto stored = log->read_stored(t, 1, 0, ~0ULL, 100);
  REQUIRE(stored);
  for (std::size_t i = 0; i < all.size(); ++i) {
    CHECK(all[i].offset == i);
    CHECK(all[i].time_us == (*stored)[i].time_us);
    CHECK(all[i].json == (*stored)[i].json);
  }
  CHECK(all[1].id == "with \"quotes\" and \\");

  auto two = log->read_records(t, 1, 1, 2, 1 << 20);
  REQUIRE(two);
  CHECK(ids_of(*two) == std::vector<std::string>{all[1].id, "r2"});
  auto one_byte = log->read_records(t, 1, 2, 10, 1);
  REQUIRE(one_byte);
  CHECK(ids_of(*one_byte) == std::vector<std::string>{"r2"});
  auto fits_two = log->read_records(t, 1, 2, 10, all[2].json.size() + all[3].json.size());
  REQUIRE(fits_two);
  CHECK(ids_of(*fits_two) == std::vector<std::string>{"r2", "r3"});
  CHECK(log->read_records(t, 1, 5, 10, 1 << 20)->empty());
  CHECK(log->read_records(t, 0, 0, 10, 1 << 20)->empty());

  // After retention the page starts at the oldest stored event.
  REQUIRE(log->sweep_before(all[2].time_us, 100));
  auto rest = records_of(*log, t, 1);
  REQUIRE(!rest.empty());
  CHECK(rest.front().offset == 2);
}

TEST_CASE("a follower that applies the leader's records stores the same bytes",
          "[unit][persistence]") {
  nerve::test::temp_dir dir;
  {
    auto leader = open_log(dir.sub("leader"));
    auto follower = open_log(dir.sub("follower"));
    // The follower holds another topic first: ids are global, not local.
    REQUIRE(follower->create_topic("local", 1));
    auto lt = topic_with_id(*leader, 5);
    auto ft = topic_with_id(*follower, 5);
    partition_writer lw{*leader, lt, 1};
    partition_writer fw{*follower, ft, 1};
    REQUIRE(lw.begin_epoch(1));
    std::vector<std::string> ids;
    for (int i = 0; i < 40; ++i)
      ids.push_back("e" + std::to_string(i));
    ids.emplace_back("quote \" back \\ tab \t \xc3\xa9");
    append_each(lw, ids);
    REQUIRE(lw.append({ev("b0"), ev("b1", "kk"), ev("b2")})); // one time for three events

    // Shipped in pages, as a replication stream would.
    while (fw.next_offset() < lw.next_offset()) {
      auto page = leader->read_records(lt, 1, fw.next_offset(), 7, 600);
      REQUIRE(page);
      REQUIRE(!page->empty());
      REQUIRE(fw.apply(1, *page));
    }
    CHECK(fw.next_offset() == 44);
    CHECK(fw.epochs() == lw.epochs());
    CHECK(fw.epochs() == std::vector<epoch_entry>{{1, 0}});

    auto lread = leader->read_stored(lt, 1, 0, ~0ULL, 1000);
    auto fread = follower->read_stored(ft, 1, 0, ~0ULL, 1000);
    REQUIRE(lread);
    REQUIRE(fread);
    REQUIRE(lread->size() == fread->size());
    for (std::size_t i = 0; i < lread->size(); ++i) {
      CHECK((*lread)[i].offset == (*fread)[i].offset);
      CHECK((*lread)[i].time_us == (*fread)[i].time_us);
      CHECK((*lread)[i].json == (*fread)[i].json);
    }
    for (const auto& id : ids)
      CHECK(*follower->get_by_id(id) == *leader->get_by_id(id));
    CHECK(by_time(*follower) == by_time(*leader));
  }
  // Byte for byte, every index and the partition's meta records (the
  // follower's own topic aside).
  auto lraw = raw_records(dir.sub("leader"));
  auto fraw = raw_records(dir.sub("follower"));
  // The events: in the replicated partition's own family (same topic id on
  // both), none in the shared one.
  const auto orders_events = layout::partition_family_name(leader_topic_id(dir.sub("leader")), 1);
  CHECK_FALSE(lraw[orders_events].empty());
  CHECK(lraw["events"].empty());
  for (const auto& family :
       {orders_events, std::string{"events"}, std::string{"by_time"}, std::string{"by_id"}})
    CHECK(fraw[family] == lraw[family]);
  auto own_topic = [](const std::string& key) { return key == "topic/local"; };
  CHECK(records_except(fraw["meta"], own_topic) == lraw["meta"]);
  CHECK(lraw["meta"].size() == 3); // the format, the topic and one epoch (appends write no head)

  // A promoted follower appends after the records it applied.
  auto follower = open_log(dir.sub("follower"));
  partition_writer fw{*follower, *follower->find_topic("orders"), 1};
  CHECK(fw.next_offset() == 44);
  CHECK(fw.epochs() == std::vector<epoch_entry>{{1, 0}});
  REQUIRE(fw.begin_epoch(2));
  append_each(fw, {"after"});
  CHECK(fw.next_offset() == 45);
  CHECK(*follower->get_by_id("after"));
}

TEST_CASE("apply refuses records that do not continue the partition, and writes nothing",
          "[unit][persistence]") {
  two_logs logs{2};
  auto& [dir, leader, follower, lt, ft] = logs;
  partition_writer lw{*leader, lt, 0};
  partition_writer fw{*follower, ft, 0};
  append_each(lw, {"a", "b", "c", "d", "e"});
  auto all = records_of(*leader, lt, 0);
  REQUIRE(fw.apply(2, {all[0], all[1]}));

  auto refused
    = [&](std::uint32_t epoch, const std::vector<replica_record>& records, const std::string& why) {
        auto r = fw.apply(epoch, records);
        REQUIRE_FALSE(r);
        CHECK(r.error().code == errc::invalid);
        CHECK_THAT(r.error().message, Catch::Contains(why) && Catch::Contains("orders/0"));
        CHECK(fw.next_offset() == 2);
        CHECK(fw.epochs() == std::vector<epoch_entry>{{2, 0}});
        CHECK(follower->read(ft, 0, 0, 100)->size() == 2);
        CHECK_FALSE(*follower->get_by_id("c"));
        CHECK_FALSE(*follower->get_by_id("d"));
        partition_writer reopened{*follower, ft, 0};
        CHECK(reopened.next_offset() == 2);
      };
  refused(2, {}, "no records");
  refused(2, {all[3]}, "expected offset 2");         // a gap
  refused(2, {all[1], all[2]}, "expected offset 2"); // an overlap
  refused(2, {all[2], all[4]}, "expected offset 3"); // a gap inside
  refused(1, {all[2]}, "leader epoch 1 is older");   // a stale leader
  refused(0, {all[2]}, "epochs start at 1");
  auto early = all[2];
  early.time_us = all[1].time_us - 1;
  refused(3, {early}, "append times never decrease");
  auto back = all[3];
  back.time_us = all[2].time_us - 1;
  refused(3, {all[2], back}, "append times never decrease");
  auto other_id = all[2];
  other_id.id = "not-c";
  refused(3, {other_id}, "does not start with its id");
  auto bad_json = all[2];
  bad_json.json = R"({"topic":"orders"})";
  refused(3, {bad_json}, "does not start with its id");

  REQUIRE(fw.apply(3, {all[2], all[3], all[4]}));
  CHECK(fw.next_offset() == 5);
  CHECK(fw.epochs() == std::vector<epoch_entry>{{2, 0}, {3, 2}});
}

TEST_CASE("apply fails at the before_append fault point like append", "[unit][persistence]") {
  nerve::test::temp_dir dir;
  auto leader = open_log(dir.sub("leader"));
  auto lt = topic_with_id(*leader, 2);
  partition_writer lw{*leader, lt, 0};
  append_each(lw, {"a"});
  std::atomic<bool> fail{true};
  auto o = opts_at(dir.sub("follower"));
  o.on_fault = [&fail](fault_point p, const fault_context& where) {
    return p == fault_point::before_append && where.subject == "orders" && fail
             ? fault_action::fail
             : fault_action::proceed;
  };
  auto follower = event_log::open(o);
  REQUIRE(follower);
  auto ft = topic_with_id(**follower, 2);
  partition_writer fw{**follower, ft, 0};
  auto r = fw.apply(1, records_of(*leader, lt, 0));
  REQUIRE_FALSE(r);
  CHECK(r.error().code == errc::io_error);
  CHECK(fw.next_offset() == 0);
  CHECK(fw.epochs().empty());
  fail = false;
  REQUIRE(fw.apply(1, records_of(*leader, lt, 0)));
  CHECK(fw.next_offset() == 1);
}

TEST_CASE("the epoch checkpoint records leaders and applied epochs and survives a reopen",
          "[unit][persistence]") {
  one_log db{4};
  auto& [dir, log, t] = db;
  {
    partition_writer w{*log, t, 0};
    CHECK(w.epochs().empty());
    CHECK(w.last_epoch() == 0);
    REQUIRE(w.begin_epoch(1));
    append_each(w, {"a", "b", "c"});
    REQUIRE(w.begin_epoch(1)); // a leader resuming: no new entry
    auto zero = w.begin_epoch(0);
    REQUIRE_FALSE(zero);
    CHECK(zero.error().code == errc::invalid);
    REQUIRE(w.begin_epoch(3));
    auto stale = w.begin_epoch(2);
    REQUIRE_FALSE(stale);
    CHECK(stale.error().code == errc::invalid);
    CHECK_THAT(stale.error().message, Catch::Contains("already has epoch 3"));
    REQUIRE(w.begin_epoch(4)); // epoch 3 appended nothing: both start at 3
    append_each(w, {"d"});
    CHECK(w.epochs() == std::vector<epoch_entry>{{1, 0}, {3, 3}, {4, 3}});
    CHECK(w.last_epoch() == 4);
    partition_writer other{*log, t, 1}; // per partition
    CHECK(other.epochs().empty());
  }
  db.reopen();
  partition_writer w{*log, t, 0};
  CHECK(w.epochs() == std::vector<epoch_entry>{{1, 0}, {3, 3}, {4, 3}});
  CHECK(w.last_epoch() == 4);
  CHECK(w.end_of_epoch(3) == std::pair<std::uint32_t, std::uint64_t>{3, 3});
  CHECK(w.end_of_epoch(4) == std::pair<std::uint32_t, std::uint64_t>{4, 4});
}

TEST_CASE("end_of_epoch answers where an epoch ends in this replica's history",
          "[unit][persistence]") {
  one_log db{4};
  partition_writer w{*db.log, db.t, 0};
  using answer = std::pair<std::uint32_t, std::uint64_t>;
  // No checkpoint: every event is of an epoch this replica does not know.
  append_each(w, {"a", "b"});
  CHECK(w.end_of_epoch(0) == answer{0, 2});
  CHECK(w.end_of_epoch(5) == answer{0, 2});

  REQUIRE(w.begin_epoch(3)); // 3@2
  append_each(w, {"c", "d", "e"});
  REQUIRE(w.begin_epoch(6)); // 6@5
  append_each(w, {"f"});
  REQUIRE(w.begin_epoch(7)); // 7@6
  append_each(w, {"g", "h"});
  CHECK(w.end_of_epoch(0) == answer{0, 2}); // older than every entry
  CHECK(w.end_of_epoch(2) == answer{0, 2});
  CHECK(w.end_of_epoch(3) == answer{3, 5}); // a known epoch: where the next starts
  CHECK(w.end_of_epoch(4) == answer{3, 5}); // unknown: the largest known below it
  CHECK(w.end_of_epoch(5) == answer{3, 5});
  CHECK(w.end_of_epoch(6) == answer{6, 6});
  CHECK(w.end_of_epoch(7) == answer{7, 8}); // the last: up to next_offset()
  CHECK(w.end_of_epoch(100) == answer{7, 8});
}

TEST_CASE("truncate_to removes the tail and its index entries, also after a reopen",
          "[unit][persistence]") {
  one_log db{9};
  auto& [dir, log, t] = db;
  std::vector<std::string> ids;
  for (int i = 0; i < 10; ++i)
    ids.push_back("t" + std::to_string(i));
  std::int64_t time_of_5 = 0;
  {
    partition_writer w{*log, t, 0};
    partition_writer neighbour{*log, t, 1};
    REQUIRE(w.begin_epoch(1));
    append_each(w, {ids.begin(), ids.begin() + 4});
    append_each(neighbour, {"n0", "n1"});
    REQUIRE(w.begin_epoch(2)); // 2@4
    append_each(w, {ids.begin() + 4, ids.begin() + 7});
    REQUIRE(w.begin_epoch(3)); // 3@7
    append_each(w, {ids.begin() + 7, ids.end()});
    time_of_5 = records_of(*log, t, 0)[5].time_us;

    REQUIRE(w.truncate_to(10)); // at or past the end: nothing to do
    REQUIRE(w.truncate_to(12));
    CHECK(w.next_offset() == 10);
    REQUIRE(w.truncate_to(6));
    CHECK(w.next_offset() == 6);
    CHECK(w.epochs() == std::vector<epoch_entry>{{1, 0}, {2, 4}});
    CHECK(ids_of(records_of(*log, t, 0)) == std::vector<std::string>(ids.begin(), ids.begin() + 6));
    for (int i = 0; i < 10; ++i)
      CHECK(log->get_by_id(ids[i])->has_value() == (i < 6));
    CHECK(log->topics_of({ids[5], ids[6]})->at(1) == std::nullopt);
    CHECK(by_time(*log).size() == 8); // six left here, two on the neighbour
    CHECK(ids_of(records_of(*log, t, 1)) == std::vector<std::string>{"n0", "n1"});
    auto st = log->stats(t, 0);
    CHECK(st.next_offset == 6);
    CHECK(st.first_offset == 0);

    // A truncated tail's ids may be appended again, at new offsets.
    // Append times go on from the last event kept, not the removed tail.
    fake_now = time_of_5; // the clock is back where the tail began
    append_each(w, {ids[9]});
    auto again = records_of(*log, t, 0).back();
    CHECK(again.offset == 6);
    CHECK(again.id == ids[9]);
    CHECK(again.time_us == time_of_5 + 1000);
  }
  db.reopen();
  partition_writer w{*log, t, 0};
  CHECK(w.next_offset() == 7);
  CHECK(w.epochs() == std::vector<epoch_entry>{{1, 0}, {2, 4}});
  REQUIRE(w.truncate_to(5));
  CHECK(w.next_offset() == 5);
  CHECK_FALSE(*log->get_by_id(ids[9]));
  CHECK(w.epochs() == std::vector<epoch_entry>{{1, 0}, {2, 4}});
  REQUIRE(w.truncate_to(4));
  CHECK(w.epochs() == std::vector<epoch_entry>{{1, 0}});

  db.reopen();
  partition_writer after{*log, t, 0};
  CHECK(after.next_offset() == 4);
  CHECK(after.epochs() == std::vector<epoch_entry>{{1, 0}});
  append_each(after, {"new"});
  auto r = after.append({ev(ids[1])});
  REQUIRE(r);
  CHECK((*r)[0].status == append_status::duplicate);
  CHECK(ids_of(records_of(*log, t, 0)) == std::vector<std::string>{"t0", "t1", "t2", "t3", "new"});
}

TEST_CASE("truncation keeps the by_id entry of an id stored again elsewhere",
          "[unit][persistence]") {
  two_logs logs{6};
  auto& [dir, log, other, t, ot] = logs;
  partition_writer p0{*log, t, 0};
  partition_writer p1{*log, t, 1};
  append_each(p0, {"a", "x"}); // x: the tail that diverged
  // Another leader stored x on partition 1; this replica applies it there.
  partition_writer o1{*other, ot, 1};
  append_each(o1, {"b", "x"});
  REQUIRE(p1.apply(1, records_of(*other, ot, 1)));
  REQUIRE(p0.truncate_to(1));
  auto x = log->get_by_id("x");
  REQUIRE(*x);
  CHECK(**x == records_of(*other, ot, 1)[1].json);
  CHECK(*log->get_by_id("a"));
}

TEST_CASE("a long tail is truncated in batches that each leave a whole partition",
          "[unit][persistence]") {
  one_log db{1, 1};
  auto& [dir, log, t] = db;
  partition_writer w{*log, t, 0};
  REQUIRE(w.begin_epoch(1));
  for (int b = 0; b < 20; ++b) {
    std::vector<new_event> batch;
    for (int i = 0; i < 500; ++i)
      batch.push_back(ev("long-" + std::to_string(b * 500 + i)));
    if (b == 10)
      REQUIRE(w.begin_epoch(2)); // 2@5000
    fake_now += 1000;
    REQUIRE(w.append(batch));
  }
  REQUIRE(w.next_offset() == 10000);
  REQUIRE(w.truncate_to(100));
  CHECK(w.next_offset() == 100);
  CHECK(w.epochs() == std::vector<epoch_entry>{{1, 0}});
  CHECK(records_of(*log, t, 0).size() == 100);
  CHECK(by_time(*log).size() == 100);
  CHECK(*log->get_by_id("long-99"));
  CHECK_FALSE(*log->get_by_id("long-100"));
  CHECK_FALSE(*log->get_by_id("long-9999"));
  partition_writer reopened{*log, t, 0};
  CHECK(reopened.next_offset() == 100);
}

TEST_CASE("a returning replica truncates to where its last epoch ends in the leader's history",
          "[unit][persistence]") {
  two_logs logs{11, 1};
  {
    auto& [dir, a_log, b_log, at, bt] = logs;
    partition_writer a{*a_log, at, 0};
    partition_writer b{*b_log, bt, 0};
    // Epoch 1: A leads and appends 0..4; B receives 0..3 only.
    REQUIRE(a.begin_epoch(1));
    append_each(a, {"e0", "e1", "e2", "e3", "e4"});
    REQUIRE(b.apply(1, a_log->read_records(at, 0, 0, 4, 1 << 20).value()));
    // Epoch 2: A, cut off, still thinks it leads and appends 5..7.
    REQUIRE(a.begin_epoch(2));
    append_each(a, {"a5", "a6", "retried"});
    // Epoch 3: B leads from its end, 4; a retried publish lands there too.
    REQUIRE(b.begin_epoch(3));
    append_each(b, {"retried", "b5", "b6"});
    CHECK(a.epochs() == std::vector<epoch_entry>{{1, 0}, {2, 5}});
    CHECK(b.epochs() == std::vector<epoch_entry>{{1, 0}, {3, 4}});

    // A returns as B's follower: it asks where its last epoch ends at B.
    using answer = std::pair<std::uint32_t, std::uint64_t>;
    auto [epoch, end] = b.end_of_epoch(a.last_epoch());
    CHECK(answer{epoch, end} == answer{1, 4});
    // B knows no epoch 2: A truncates to the lower of both ends of epoch 1.
    auto mine = a.end_of_epoch(epoch);
    CHECK(mine == answer{1, 5});
    REQUIRE(a.truncate_to(std::min(end, mine.second)));
    CHECK(a.next_offset() == 4);
    CHECK(a.epochs() == std::vector<epoch_entry>{{1, 0}});
    CHECK_FALSE(*a_log->get_by_id("a5"));
    CHECK_FALSE(*a_log->get_by_id("retried"));

    // Then it fetches from 4, the records of B's epoch 3.
    REQUIRE(a.apply(3, b_log->read_records(bt, 0, a.next_offset(), 100, 1 << 20).value()));
    CHECK(a.epochs() == b.epochs());
    CHECK(a.next_offset() == b.next_offset());
    CHECK(*a_log->get_by_id("retried") == *b_log->get_by_id("retried"));
  }
  logs.a_log.reset();
  logs.b_log.reset();
  auto a_raw = raw_records(logs.dir.sub("a"));
  auto b_raw = raw_records(logs.dir.sub("b"));
  std::size_t event_families = 0;
  for (const auto& [family, records] : a_raw)
    if (family.rfind("events", 0) == 0) {
      event_families += records.empty() ? 0 : 1;
      CHECK(b_raw[family] == records);
    }
  CHECK(event_families == 1);
  for (const char* family : {"by_time", "by_id"})
    CHECK(a_raw[family] == b_raw[family]);
  // The meta records too, but for A's head: a floor of its own that the
  // truncation wrote where it cut (appends write none).
  auto head = [](const std::string& key) { return key.rfind("head/", 0) == 0; };
  CHECK(records_except(a_raw["meta"], head) == b_raw["meta"]);
  CHECK(a_raw["meta"].size() == b_raw["meta"].size() + 1);
}

TEST_CASE("a leadership that appended nothing is truncated away, so the next fetch matches",
          "[unit][persistence]") {
  two_logs logs{12, 1};
  {
    auto& [dir, a_log, b_log, at, bt] = logs;
    partition_writer a{*a_log, at, 0};
    partition_writer b{*b_log, bt, 0};
    // Epoch 1: B leads, A follows all of it.
    REQUIRE(b.begin_epoch(1));
    append_each(b, {"e0", "e1", "e2"});
    REQUIRE(a.apply(1, b_log->read_records(bt, 0, 0, 100, 1 << 20).value()));
    // Epoch 2: A leads (B is down) and appends nothing; epoch 3: B leads again.
    REQUIRE(a.begin_epoch(2));
    REQUIRE(b.begin_epoch(3));
    using answer = std::pair<std::uint32_t, std::uint64_t>;
    auto [epoch, end] = b.end_of_epoch(a.last_epoch());
    CHECK(answer{epoch, end} == answer{1, 3});
    REQUIRE(a.truncate_to(std::min(end, a.end_of_epoch(epoch).second)));
    CHECK(a.next_offset() == 3);
    CHECK(a.epochs() == std::vector<epoch_entry>{{1, 0}});
    // Now its last epoch is one the leader knows, ending where A's log ends.
    CHECK(b.end_of_epoch(a.last_epoch()) == answer{1, 3});
    append_each(b, {"b3"});
    REQUIRE(a.apply(3, b_log->read_records(bt, 0, 3, 100, 1 << 20).value()));
    CHECK(a.epochs() == b.epochs());
  }
  logs.a_log.reset(); // closed before it opens again
  logs.a_log = open_log(logs.dir.sub("a"));
  partition_writer again{*logs.a_log, logs.at, 0};
  CHECK(again.epochs() == std::vector<epoch_entry>{{1, 0}, {3, 3}});
}

TEST_CASE("reset_to empties a follower that is behind the leader's oldest event",
          "[unit][persistence]") {
  one_log db{2, 1};
  auto& [dir, log, t] = db;
  {
    partition_writer w{*log, t, 0};
    REQUIRE(w.begin_epoch(1));
    append_each(w, {"old0", "old1", "old2"});
    REQUIRE(w.reset_to(3)); // where it is: nothing to do
    CHECK(records_of(*log, t, 0).size() == 3);
    auto down = w.reset_to(1);
    REQUIRE_FALSE(down);
    CHECK(down.error().code == errc::invalid);
    REQUIRE(w.reset_to(100));
    CHECK(w.next_offset() == 100);
    CHECK(w.epochs().empty());
    CHECK(records_of(*log, t, 0).empty());
    CHECK(by_time(*log).empty());
    CHECK_FALSE(*log->get_by_id("old0"));
    auto st = log->stats(t, 0);
    CHECK(st.first_offset == 100);
    CHECK(st.next_offset == 100);
  }
  db.reopen();
  partition_writer w{*log, t, 0};
  CHECK(w.next_offset() == 100);
  replica_record r{100, fake_now.load(), "new", R"({"id":"new","offset":100})"};
  REQUIRE(w.apply(4, {r}));
  CHECK(w.epochs() == std::vector<epoch_entry>{{4, 100}});
  CHECK(*log->get_by_id("new") == R"({"id":"new","offset":100})");
}

TEST_CASE("delivery state ops ship byte for byte to a follower", "[unit][persistence]") {
  nerve::test::temp_dir dir;
  {
    auto leader = open_log(dir.sub("leader"));
    auto follower = open_log(dir.sub("follower"));
    delivery_store lstore{*leader};
    delivery_store fstore{*follower};

    state_batch b;
    b.put_cursor("billing", 3, 1, 42);
    pending_record p;
    p.offset = 43;
    p.attempts = 2;
    p.last_error = "timeout \"x\"";
    b.put_pending("billing", 3, 1, p);
    p.offset = 44;
    b.put_pending("billing", 3, 1, p);
    b.delete_pending("billing", 3, 1, 44);
    b.put_result("evt-1", "billing", {R"({"ok":true})", fake_now.load(), 1});
    b.put_attempts("billing", 3, 1, 43, 2, fake_now.load());
    dlq_entry d;
    d.id = "dlq-1";
    d.agent = "billing";
    d.event = R"({"id":"evt-9"})";
    b.put_dlq(d);
    d.id = "dlq-2";
    b.put_dlq(d);
    b.delete_dlq("dlq-2");
    b.put_meta("counters/billing/3/1", "{\"acked\":7}");

    auto ops = b.ops();
    REQUIRE(ops.size() == 10);
    CHECK(ops[3].del);
    CHECK(ops[3].family == 1);
    CHECK(ops[3].value.empty());
    auto shipped = state_batch::from_ops(ops);
    REQUIRE(shipped);
    CHECK(shipped->count() == 10);
    auto back = shipped->ops();
    for (std::size_t i = 0; i < ops.size(); ++i) {
      CHECK(back[i].family == ops[i].family);
      CHECK(back[i].del == ops[i].del);
      CHECK(back[i].key == ops[i].key);
      CHECK(back[i].value == ops[i].value);
    }
    REQUIRE(lstore.commit(b, true));
    REQUIRE(fstore.commit(*shipped, true));
    CHECK(*fstore.cursor("billing", 3, 1) == std::optional<std::uint64_t>{42});
    auto pend = fstore.pending("billing", 3, 1);
    REQUIRE(pend);
    REQUIRE(pend->size() == 1);
    CHECK(pend->front().last_error == "timeout \"x\"");
    CHECK((*fstore.result("evt-1", "billing"))->result == R"({"ok":true})");
    CHECK(*fstore.dlq_get("dlq-1"));
    CHECK_FALSE(*fstore.dlq_get("dlq-2"));
    CHECK(*fstore.meta("counters/billing/3/1") == std::optional<std::string>{"{\"acked\":7}"});
  }
  auto l = raw_records(dir.sub("leader"));
  auto f = raw_records(dir.sub("follower"));
  for (const char* family : {"cursors", "pending", "results", "dlq", "meta"})
    CHECK(f[family] == l[family]);
}

TEST_CASE("shipped state ops name a delivery family and never the log's own records",
          "[unit][persistence]") {
  auto refused = [](std::vector<state_op> ops, const std::string& why) {
    auto b = state_batch::from_ops(std::move(ops));
    REQUIRE_FALSE(b);
    CHECK(b.error().code == errc::invalid);
    CHECK_THAT(b.error().message, Catch::Contains(why));
  };
  refused({{0, false, "k", "v"}, {5, false, "k", "v"}}, "op 1 names family 5");
  for (const char* key : {"topic/orders", "node_id"})
    refused({{4, false, key, "{}"}}, key);
  refused({{4, true, layout::head_key(1, 0), {}}}, "own meta record");
  refused({{4, false, layout::epoch_key(1, 0, 2), "x"}}, "own meta record");
  auto fine = state_batch::from_ops({{4, false, "replay/r1", "{}"}, {3, true, "dlq-1", {}}});
  REQUIRE(fine);
  CHECK(fine->count() == 2);
  auto empty = state_batch::from_ops({});
  REQUIRE(empty);
  CHECK(empty->empty());
}
