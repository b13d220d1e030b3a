// Shared runtime pieces: jobs, counters, credit accounting of agent
// instances, routing lookups and the delivery builder.
#include "actors/runtime.hpp"

#include <algorithm>
#include <string_view>

#include <boost/container/small_vector.hpp>
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include "persistence/delivery_store.hpp"
#include "persistence/keys.hpp"

namespace nerve::actors::detail {

void partition_job::finish(append_outcome r) {
  if (!done)
    return;
  queued->fetch_sub(events.size(), std::memory_order_relaxed);
  auto fn = std::move(done);
  done = nullptr;
  fn(std::move(r));
}

void answer_jobs(const std::vector<job_ptr>& jobs,
                 std::vector<persistence::append_result>& results) {
  if (jobs.size() == 1 && jobs[0]->events.size() == results.size())
    return jobs[0]->finish(std::move(results)); // all of them: no copy
  std::size_t at = 0;
  for (const auto& job : jobs) {
    auto n = job->events.size();
    job->finish(std::vector<persistence::append_result>(
      std::make_move_iterator(results.begin() + static_cast<std::ptrdiff_t>(at)),
      std::make_move_iterator(results.begin() + static_cast<std::ptrdiff_t>(at + n))));
    at += n;
  }
}

void raise_to(std::atomic<std::uint64_t>& a, std::uint64_t v) {
  auto cur = a.load();
  while (cur < v && !a.compare_exchange_weak(cur, v)) {
  }
}

bool raise_durable(partition_slot& slot, std::uint64_t end) {
  raise_to(slot.durable_end, end);
  std::lock_guard<std::mutex> guard{slot.groups_mutex};
  for (auto& g : slot.groups)
    raise_to(g->end, end);
  return !slot.groups.empty();
}

void partition_job::release_ticket() {
  if (ticket == nullptr)
    return;
  ticket->fetch_sub(1);
  ticket = nullptr;
}

partition_job::~partition_job() {
  release_ticket(); // dropped on its way (the actor died): the lane may open
  if (!done)
    return; // answered (the usual case): no error to build
  finish(tl::make_unexpected(persistence::error{persistence::errc::io_error,
                                                "the partition stopped before the append; retry"}));
}

void latency_histogram::observe(std::int64_t us) {
  sum_us += static_cast<std::uint64_t>(std::max<std::int64_t>(0, us));
  auto ms = static_cast<double>(us) / 1000.0;
  for (std::size_t i = 0; i < latency_bounds_ms.size(); ++i)
    if (ms <= latency_bounds_ms[i]) {
      ++buckets[i];
      return;
    }
}

nlohmann::json latency_histogram::to_json() const {
  nlohmann::json j{{"sum_us", sum_us.load()}};
  auto& b = j["buckets"] = nlohmann::json::array();
  for (auto& v : buckets)
    b.push_back(v.load());
  return j;
}

void latency_histogram::load_json(const nlohmann::json& j) {
  if (!j.is_object())
    return;
  sum_us = j.value("sum_us", 0ULL);
  if (j.contains("buckets") && j["buckets"].is_array())
    for (std::size_t i = 0; i < buckets.size() && i < j["buckets"].size(); ++i)
      buckets[i] = j["buckets"][i].get<std::uint64_t>();
}

std::string counters::to_json() const {
  return nlohmann::json{{"received", received.load()},
                        {"processed", processed.load()},
                        {"failed", failed.load()},
                        {"timed_out", timed_out.load()},
                        {"retried", retried.load()},
                        {"dead_lettered", dead_lettered.load()},
                        {"processing", processing.to_json()},
                        {"delivery", delivery.to_json()}}
    .dump();
}

void counters::load_json(const std::string& text) {
  auto j = nlohmann::json::parse(text, nullptr, false);
  if (!j.is_object())
    return;
  received = j.value("received", 0ULL);
  processed = j.value("processed", 0ULL);
  failed = j.value("failed", 0ULL);
  timed_out = j.value("timed_out", 0ULL);
  retried = j.value("retried", 0ULL);
  dead_lettered = j.value("dead_lettered", 0ULL);
  if (j.contains("processing"))
    processing.load_json(j["processing"]);
  if (j.contains("delivery"))
    delivery.load_json(j["delivery"]);
}

const char* to_string(instance_state s) {
  switch (s) {
    case instance_state::starting:
      return "starting";
    case instance_state::running:
      return "running";
    case instance_state::restarting:
      return "restarting";
    case instance_state::crashed:
      return "crashed";
    case instance_state::stopped:
      return "stopped";
  }
  return "unknown";
}

namespace {

/// The '.'-separated tokens of `s` as std::getline splits them (an empty
/// string has none, a trailing '.' adds none), as views: this runs for every
/// agent on each GET groups, a long poll's answer among them, where a
/// stringstream and a string per token cost ~7,700 instructions a match.
boost::container::small_vector<std::string_view, 8> tokens(std::string_view s) {
  boost::container::small_vector<std::string_view, 8> out;
  std::size_t start = 0;
  while (start < s.size()) {
    auto dot = s.find('.', start);
    if (dot == std::string_view::npos) {
      out.push_back(s.substr(start));
      break;
    }
    out.push_back(s.substr(start, dot - start));
    start = dot + 1;
  }
  return out;
}

bool pattern_matches(const std::string& pattern, const std::string& topic) {
  auto p = tokens(pattern);
  auto t = tokens(topic);
  for (std::size_t i = 0; i < p.size(); ++i) {
    if (p[i] == ">")
      return t.size() > i;
    if (i >= t.size() || (p[i] != "*" && p[i] != t[i]))
      return false;
  }
  return p.size() == t.size();
}

} // namespace

bool agent_runtime::subscribes(const std::string& topic) const {
  for (auto& p : cfg.topics)
    if (pattern_matches(p, topic))
      return true;
  if (!cfg.redis_group)
    return false;
  std::lock_guard<std::mutex> guard{topics_mutex};
  for (auto& t : added_topics)
    if (t == topic)
      return true;
  return false;
}

std::vector<std::string> agent_runtime::topics() const {
  auto out = cfg.topics;
  std::lock_guard<std::mutex> guard{topics_mutex};
  out.insert(out.end(), added_topics.begin(), added_topics.end());
  return out;
}

void agent_runtime::add_topic(const std::string& topic) {
  std::lock_guard<std::mutex> guard{topics_mutex};
  added_topics.push_back(topic);
}

void agent_runtime::remove_topic(const std::string& topic) {
  std::lock_guard<std::mutex> guard{topics_mutex};
  added_topics.erase(std::remove(added_topics.begin(), added_topics.end(), topic),
                     added_topics.end());
}

namespace {

/// meta keys of the groups XGROUP CREATE made: group/<name>.
constexpr std::string_view redis_group_prefix = "group/";

} // namespace

config::agent_config redis_group_config(const std::string& name, bool earliest) {
  config::agent_config c;
  c.name = name;
  c.kind = config::agent_kind::pull;
  c.redis_group = true;
  c.instances = 1;
  c.max_in_flight = config::redis_group_max_in_flight;
  c.start = earliest ? config::start_position::earliest : config::start_position::latest;
  return c;
}

tl::expected<void, persistence::error> store_redis_group(persistence::delivery_store& store,
                                                         const agent_runtime& a,
                                                         const std::vector<std::string>& topics) {
  nlohmann::json j{
    {"topics", topics},
    {"start", a.cfg.start == config::start_position::earliest ? "earliest" : "latest"}};
  persistence::state_batch b;
  // A group with no stream left is kept, without topics, and not loaded
  // again: XGROUP CREATE of its name makes it afresh.
  b.put_meta(std::string{redis_group_prefix} + a.cfg.name, j.dump());
  return store.commit(b, true);
}

tl::expected<void, persistence::error> load_redis_groups(node_context& ctx) {
  auto stored = ctx.store->meta_prefix(std::string{redis_group_prefix});
  if (!stored)
    return tl::make_unexpected(stored.error());
  for (auto& [key, value] : *stored) {
    auto name = key.substr(redis_group_prefix.size());
    if (find_agent(ctx, name)) {
      spdlog::warn("group={}: made by XGROUP CREATE, and an agent of the config has its name; "
                   "the config's is used",
                   name);
      continue;
    }
    auto j = nlohmann::json::parse(value, nullptr, false);
    if (j.is_discarded() || !j.contains("topics") || !j["topics"].is_array()) {
      spdlog::error("group={}: its stored definition is not readable; left out", name);
      continue;
    }
    if (j["topics"].empty())
      continue; // XGROUP DESTROY took its last stream
    auto agent = std::make_shared<agent_runtime>(
      redis_group_config(name, j.value("start", "latest") == "earliest"), ctx.agents.size());
    for (auto& t : j["topics"])
      if (t.is_string())
        agent->add_topic(t.get<std::string>());
    ctx.agents.add(std::move(agent));
  }
  return {};
}

agent_runtime::agent_runtime(config::agent_config c, std::size_t i)
  : cfg(std::move(c)), index(i), credits(std::max<std::uint32_t>(1, cfg.instances),
                                         std::max<std::uint32_t>(1, cfg.max_in_flight)) {
  for (std::uint32_t k = 0; k < cfg.instances; ++k)
    instances.push_back(std::make_unique<instance_slot>());
}

namespace {

void wake(const std::vector<caf::actor>& partitions) {
  for (auto& p : partitions)
    caf::anon_send(p, wake_atom::value);
}

} // namespace

std::optional<std::pair<std::size_t, caf::actor>>
agent_runtime::take_credit(std::size_t& rr, const caf::actor& partition) {
  std::vector<caf::actor> to_wake;
  auto i = credits.take(
    rr, [this](std::size_t k) { return instances[k]->state.load() == instance_state::running; },
    partition, to_wake);
  wake(to_wake);
  if (!i)
    return std::nullopt;
  std::lock_guard<std::mutex> guard{mutex};
  return std::make_pair(*i, instances[*i]->actor);
}

delivery make_delivery(std::size_t group, outgoing_delivery&& out, std::uint64_t offset) {
  delivery d;
  d.group = static_cast<std::uint32_t>(group);
  d.instance = static_cast<std::uint32_t>(out.instance);
  d.offset = offset;
  d.attempt = out.attempt;
  d.event_id = std::move(out.event_id);
  d.delivery_id = std::move(out.delivery_id);
  d.event = *out.event; // a value: the engine keeps its copy for retries
  return d;
}

std::optional<std::size_t> agent_credits::take() {
  if (taken_.size() >= cap_)
    return std::nullopt;
  auto credit = agent_.take_credit(rr_, me_);
  if (!credit)
    return std::nullopt;
  taken_.push_back(std::move(credit->second));
  return credit->first;
}

void agent_runtime::return_credit(std::size_t instance) {
  std::vector<caf::actor> to_wake;
  credits.give_back(instance, to_wake);
  wake(to_wake);
}

void agent_runtime::return_inline_credit(std::size_t instance) {
  std::vector<caf::actor> to_wake;
  credits.give_back_unless_reset(instance, to_wake);
  wake(to_wake);
}

void agent_runtime::wake_all() {
  std::vector<caf::actor> to_wake;
  credits.wake_all(to_wake);
  wake(to_wake);
}

std::shared_ptr<topic_route> routing::find(const std::string& name) const {
  std::shared_lock<std::shared_mutex> guard{mutex};
  auto it = topics.find(name);
  return it == topics.end() ? nullptr : it->second;
}

caf::actor routing::actor_of(const topic_route& route, std::uint32_t partition) const {
  std::shared_lock<std::shared_mutex> guard{mutex};
  return route.slots[partition]->actor;
}

std::shared_ptr<const replica_role> routing::role_of(const std::string& topic,
                                                     std::uint32_t p) const {
  auto route = find(topic);
  return route && p < route->slots.size() ? route->slots[p]->current_role() : nullptr;
}

std::shared_ptr<tail_hub::entry> tail_hub::add(const std::string& topic, tail_sink sink) {
  // The entry unregisters itself when the follower lets go of it.
  auto* hub = this;
  auto e = std::shared_ptr<entry>(new entry{topic, std::move(sink)}, [hub](entry* gone) {
    {
      std::lock_guard<std::mutex> guard{hub->mutex};
      auto it = hub->by_topic.find(gone->topic);
      if (it != hub->by_topic.end()) {
        auto& list = it->second;
        list.erase(std::remove_if(list.begin(), list.end(),
                                  [](const std::weak_ptr<entry>& w) { return w.expired(); }),
                   list.end());
        if (list.empty())
          hub->by_topic.erase(it);
      }
      --hub->active;
    }
    delete gone;
  });
  std::lock_guard<std::mutex> guard{mutex};
  by_topic[topic].push_back(e);
  ++active;
  return e;
}

void tail_hub::deliver(const std::string& topic, const std::vector<std::string>& events) {
  std::vector<std::shared_ptr<entry>> followers;
  {
    std::lock_guard<std::mutex> guard{mutex};
    auto it = by_topic.find(topic);
    if (it == by_topic.end())
      return;
    for (auto& w : it->second)
      if (auto e = w.lock())
        followers.push_back(std::move(e));
  }
  for (auto& f : followers)
    f->sink(events);
}

tl::expected<std::optional<std::uint64_t>, error> group_start(const node_context& ctx,
                                                              const std::string& agent,
                                                              std::uint32_t topic_id,
                                                              std::uint32_t partition) {
  auto start = ctx.store->meta(group_start_key(agent, topic_id, partition));
  if (!start)
    return tl::make_unexpected(error{errc::storage, start.error().message});
  if (!*start || (*start)->size() != 8)
    return std::optional<std::uint64_t>{};
  return std::optional<std::uint64_t>{persistence::keys::get_u64(**start, 0)};
}

} // namespace nerve::actors::detail
