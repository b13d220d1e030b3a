// The fault tests' node configuration, publishing with a deadline, and the
// check of a rebooted log against what the node acknowledged.
#include "tests/faults/node_fault.hpp"

#include <catch2/catch.hpp>

#include <chrono>
#include <future>

#include <nlohmann/json.hpp>

#include "persistence/delivery_store.hpp"
#include "persistence/event_log.hpp"

namespace nerve::test {

config::config fault_config(const std::string& data_dir, std::uint32_t partitions) {
  config::config cfg;
  cfg.data_dir = data_dir;
  cfg.topic_defaults.partitions = partitions;
  cfg.storage.fsync = config::fsync_policy::always;
  cfg.storage.retention = std::chrono::milliseconds{0}; // offsets stay from 0
  config::agent_config acker;
  acker.name = fault_agent;
  acker.topics = {fault_topic};
  acker.kind = config::agent_kind::builtin;
  acker.handler = "noop";
  acker.start = config::start_position::earliest;
  cfg.agents.push_back(acker);
  return cfg;
}

actors::result<std::vector<actors::published>>
publish_wait(actors::node& n, const std::string& topic, std::vector<actors::publish_item> items) {
  auto answer = std::make_shared<std::promise<actors::result<std::vector<actors::published>>>>();
  auto f = answer->get_future();
  n.publish(topic, std::move(items), [answer](auto r) { answer->set_value(std::move(r)); });
  REQUIRE(f.wait_for(std::chrono::seconds{30}) == std::future_status::ready);
  return f.get();
}

std::vector<std::uint64_t> memory_cursors(actors::node& n, std::uint32_t partitions) {
  std::vector<std::uint64_t> out(partitions, 0);
  // groups() answers at once, on this thread: it reads the partitions' atomics.
  n.groups(fault_topic, [&out](actors::result<std::vector<actors::group_view>> r) {
    if (!r)
      return;
    for (auto& g : *r)
      if (g.agent == fault_agent)
        for (auto& p : g.partitions)
          if (p.partition < out.size())
            out[p.partition] = p.cursor;
  });
  return out;
}

void acknowledged::events(const std::vector<actors::published>& ok) {
  std::lock_guard<std::mutex> guard{mutex_};
  for (auto& p : ok)
    events_[p.id] = {p.topic, p.partition, p.offset};
}

void acknowledged::cursor(std::uint32_t partition, std::uint64_t cursor) {
  std::lock_guard<std::mutex> guard{mutex_};
  auto& floor = cursor_floor_[partition];
  floor = std::max(floor, cursor);
}

std::size_t acknowledged::size() const {
  std::lock_guard<std::mutex> guard{mutex_};
  return events_.size();
}

bool acknowledged::check(const std::string& data_dir, std::uint32_t partitions) const {
  std::lock_guard<std::mutex> guard{mutex_};
  persistence::options opts;
  opts.path = data_dir;
  auto log = persistence::event_log::open(opts);
  INFO("reopening the log: " << (log ? std::string{"ok"} : log.error().message));
  REQUIRE(log);
  bool ok = true;
  auto expect = [&ok](bool held) {
    CHECK(held);
    ok = ok && held;
  };
  auto topic = (*log)->find_topic(fault_topic);
  if (!topic) {
    expect(events_.empty() && cursor_floor_.empty());
    return ok;
  }
  // (i) every acknowledged event is where its answer said.
  for (auto& [id, w] : events_) {
    auto stored = (*log)->get_by_id(id);
    INFO("acknowledged event " << id << " at " << w.topic << "/" << w.partition << "@" << w.offset);
    expect(stored && *stored);
    if (!stored || !*stored)
      continue;
    auto e = nlohmann::json::parse(**stored);
    expect(e["id"] == id && e["topic"] == w.topic && e["partition"] == w.partition
           && e["offset"] == w.offset);
  }
  persistence::delivery_store store{**log};
  for (std::uint32_t p = 0; p < partitions; ++p) {
    // (ii) offsets are dense: 0..next-1, each where its key says.
    auto end = (*log)->stats(*topic, p).next_offset;
    auto events = (*log)->read_stored(*topic, p, 0, end, end + 1);
    INFO("partition " << p << " ends at " << end);
    expect(events && events->size() == end);
    for (std::uint64_t i = 0; events && i < events->size(); ++i)
      expect((*events)[i].offset == i);
    // (iii) no acknowledged ack is lost: the cursor kept what a sync covered.
    auto cursor = store.cursor(fault_agent, topic->id, p);
    auto floor = cursor_floor_.count(p) != 0 ? cursor_floor_.at(p) : 0;
    INFO("acker's durable cursor floor " << floor);
    expect(cursor.has_value());
    auto at = cursor && *cursor ? **cursor : 0;
    CAPTURE(at);
    expect(at >= floor && at <= end);
  }
  return ok;
}

} // namespace nerve::test
