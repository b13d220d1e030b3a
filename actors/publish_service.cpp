// publish_service: from a publish request to one job per partition, each
// answered by its partition actor once durable; the answers are joined into
// the request's answer.
#include "actors/publish_service.hpp"

#include <algorithm>
#include <map>
#include <mutex>
#include <optional>
#include <shared_mutex>
#include <unordered_map>
#include <utility>

#include <boost/container/small_vector.hpp>
#include <rocksdb/write_batch.h>

#include "actors/publish_lane.hpp"
#include "persistence/ids.hpp"

namespace nerve::actors::detail {

namespace {

std::uint64_t fnv1a(const std::string& s) {
  std::uint64_t h = 1469598103934665603ULL;
  for (unsigned char c : s) {
    h ^= c;
    h *= 1099511628211ULL;
  }
  return h;
}

/// Answers of several partitions joined into one: `done` gets `out`, or
/// the failure, once the last one arrived.
template <class T>
struct join_base {
  T out;
  std::atomic<std::size_t> remaining{0};
  std::mutex mutex;
  std::optional<error> failure;
  callback<T> done;

  void arrive() {
    if (remaining.fetch_sub(1, std::memory_order_acq_rel) != 1)
      return;
    if (failure)
      done(tl::make_unexpected(*failure));
    else
      done(std::move(out));
  }
};

/// Joins the per-partition answers of one publish request.
struct publish_join : join_base<std::vector<published>> {
  std::uint32_t partitions = 0; ///< of the topic, told in every answer

  void fail(error e) {
    std::lock_guard<std::mutex> guard{mutex};
    // A conflict says more than a storage error about what the caller did.
    if (!failure || e.code == errc::conflict)
      failure = std::move(e);
  }

  /// Takes in one partition's answer for the request's items at `index`.
  void answer(const std::vector<std::size_t>& index, append_outcome r) {
    take(index, std::move(r));
    arrive();
  }

  void take(const std::vector<std::size_t>& index, append_outcome r) {
    if (!r) {
      fail(error{errc::unavailable, r.error().message});
    } else {
      for (std::size_t k = 0; k < index.size(); ++k) {
        auto& a = (*r)[k];
        if (a.status == persistence::append_status::conflict) {
          fail(error{errc::conflict, "event id " + a.id + " is already used on topic " + a.topic
                                       + "; ids are unique across topics"});
          continue;
        }
        // The outcome is this call's own: its strings move.
        out[index[k]] = published{
          std::move(a.id), std::move(a.topic), a.where.partition,
          a.where.offset,  a.where.time_us,    a.status == persistence::append_status::duplicate,
          partitions};
      }
    }
  }
};

/// Joins the per-partition answers of one forward from a peer.
struct forward_join : join_base<forward_answer> {
  void answer(std::size_t batch, append_outcome r) {
    {
      std::lock_guard<std::mutex> guard{mutex};
      if (!r && !failure)
        failure = error{errc::unavailable, r.error().message};
      else if (r)
        out[batch] = std::move(*r);
    }
    arrive();
  }
};

/// A request's items split by partition: the jobs (null where a partition
/// gets none) and, per partition, the items' places in the request.
struct partitioned {
  // Inline up to 8 partitions: a one-event publish made two allocations for them.
  boost::container::small_vector<job_ptr, 8> jobs;
  boost::container::small_vector<std::vector<std::size_t>, 8> index;
};

/// The partition keyless events of one request go to: the next in turn,
/// skipping partitions whose owner is down (all down: the next anyway, to
/// be refused with the owner's name).
std::uint32_t keyless_partition(topic_route& route, const cluster_client* cluster) {
  const auto partitions = route.info.partitions;
  auto first = route.round_robin.fetch_add(1, std::memory_order_relaxed);
  if (cluster == nullptr)
    return static_cast<std::uint32_t>(first % partitions);
  for (std::uint32_t k = 0; k < partitions; ++k) {
    auto p = static_cast<std::uint32_t>((first + k) % partitions);
    if (cluster->up(cluster->owner(route.info.name, p)))
      return p;
  }
  return static_cast<std::uint32_t>(first % partitions);
}

partitioned split_by_partition(topic_route& route, std::vector<publish_item>& items,
                               const cluster_client* cluster) {
  const auto partitions = route.info.partitions;
  // Keyless events of one request stay together, on the next partition in turn.
  const auto keyless = keyless_partition(route, cluster);
  partitioned out;
  out.jobs.resize(partitions);
  out.index.resize(partitions);
  // A repeated id goes where its first occurrence goes, so the first wins.
  std::unordered_map<std::string, std::uint32_t> first_partition;
  for (std::size_t i = 0; i < items.size(); ++i) {
    auto& it = items[i];
    auto p = it.key.empty() ? keyless : static_cast<std::uint32_t>(fnv1a(it.key) % partitions);
    // In a cluster, by_id is only the owner's: a keyless event with its own
    // id goes where its id hashes, so that a retry meets its first attempt.
    if (cluster != nullptr && it.key.empty() && !it.id.empty())
      p = static_cast<std::uint32_t>(fnv1a(it.id) % partitions);
    if (!it.id.empty())
      p = first_partition.emplace(it.id, p).first->second;
    auto& job = out.jobs[p];
    if (!job) {
      job = std::make_shared<partition_job>();
      // Keyless events all go here: room for the rest at once (a batch of
      // 100 grew the vectors 8 times, 2.5 % of the HTTP threads' samples).
      if (p == keyless) {
        job->events.reserve(items.size() - i);
        out.index[p].reserve(items.size() - i);
      }
    }
    // Without an id the writer gives the event one that says where it is.
    bool generated = it.id.empty();
    job->events.push_back({std::move(it.id), std::move(it.key), std::move(it.fragment),
                           std::move(it.type), std::move(it.source), generated});
    out.index[p].push_back(i);
  }
  return out;
}

/// Admission: every partition involved must have room, or nothing is
/// queued. Answers how many partitions were admitted (those with a job),
/// or the error.
template <class Jobs>
result<std::size_t> admit(const std::string& topic, topic_route& route, const Jobs& jobs,
                          std::uint64_t max_queued) {
  std::size_t admitted = 0;
  for (std::uint32_t p = 0; p < jobs.size(); ++p) {
    if (!jobs[p])
      continue;
    auto n = jobs[p]->events.size();
    auto& q = route.slots[p]->queued;
    if (q.fetch_add(n, std::memory_order_relaxed) + n > max_queued) {
      q.fetch_sub(n, std::memory_order_relaxed);
      for (std::uint32_t a = 0; a < p; ++a)
        if (jobs[a])
          route.slots[a]->queued.fetch_sub(jobs[a]->events.size(), std::memory_order_relaxed);
      return tl::make_unexpected(
        error{errc::overloaded, "partition " + topic + "/" + std::to_string(p) + " has "
                                  + std::to_string(max_queued)
                                  + " events waiting to be written; retry shortly"});
    }
    ++admitted;
  }
  return admitted;
}

} // namespace

publish_service::publish_service(const config::storage_config& storage, persistence::event_log& log,
                                 routing& routes, const std::atomic<bool>& draining,
                                 query_pool& pool, actor_sender& sender, tail_hub& tails)
  : storage_(storage), log_(log), routes_(routes), draining_(draining), pool_(pool),
    sender_(sender), tails_(tails) {
}

void publish_service::create_then(const std::string& topic, std::uint32_t partitions,
                                  std::function<void(std::optional<error>)> next) {
  auto req = std::make_shared<create_request>();
  req->topic = topic;
  req->partitions = partitions;
  req->done = [next](std::optional<std::string> err) {
    next(err ? std::optional<error>{error{errc::storage, *err}} : std::nullopt);
  };
  if (control_ != nullptr) {
    // Replicated: etcd decides the id and partition count, once for all nodes.
    control_->ensure_topic(topic, partitions,
                           [this, req, next](result<std::pair<std::uint32_t, std::uint32_t>> r) {
                             if (!r)
                               return next(r.error());
                             req->id = r->first;
                             req->partitions = r->second;
                             sender_.create_topic(req);
                           });
    return;
  }
  if (cluster_ == nullptr || partitions != 0)
    return sender_.create_topic(std::move(req));
  const auto& home = cluster_->where().home(topic);
  if (cluster_->where().is_self(home))
    return sender_.create_topic(std::move(req));
  if (!cluster_->up(home))
    return next(error{errc::unavailable, "topic " + topic + " is new, and node " + home
                                           + ", which decides its partition count, is down; "
                                             "retry shortly"});
  cluster_->topic_partitions(home, topic, [this, req, next](result<std::uint32_t> n) {
    if (!n)
      return next(n.error());
    req->partitions = *n;
    sender_.create_topic(req);
  });
}

void publish_service::publish(const std::string& topic, std::vector<publish_item> items,
                              callback<std::vector<published>> done) {
  if (items.size() > storage_.max_queued_events)
    return done(tl::make_unexpected(
      error{errc::invalid, std::to_string(items.size())
                             + " events exceed what one partition "
                               "queues (storage.max_queued_events = "
                             + std::to_string(storage_.max_queued_events) + ")"}));
  bool explicit_ids
    = std::any_of(items.begin(), items.end(), [](const publish_item& i) { return !i.id.empty(); });
  // An id used on another topic refuses the whole request before anything
  // is appended (or a topic is created for it).
  if (explicit_ids && (items.size() > 1 || !routes_.find(topic)))
    return precheck_then_publish(topic, std::move(items), std::move(done));
  route_items(topic, std::move(items), std::move(done), true);
}

void publish_service::precheck_then_publish(const std::string& topic,
                                            std::vector<publish_item> items,
                                            callback<std::vector<published>> done) {
  auto shared = std::make_shared<std::vector<publish_item>>(std::move(items));
  pool_.post([this, topic, shared, done = std::move(done)]() mutable {
    std::vector<std::string> ids;
    for (auto& i : *shared)
      if (!i.id.empty())
        ids.push_back(i.id);
    auto where = log_.topics_of(ids);
    if (!where)
      return done(tl::make_unexpected(from_storage(where.error())));
    for (std::size_t k = 0; k < ids.size(); ++k)
      if ((*where)[k] && *(*where)[k] != topic)
        return done(tl::make_unexpected(
          error{errc::conflict, "event id " + ids[k] + " is already used on topic " + *(*where)[k]
                                  + "; ids are unique across topics"}));
    route_items(topic, std::move(*shared), std::move(done), true);
  });
}

void publish_service::route_items(const std::string& topic, std::vector<publish_item> items,
                                  callback<std::vector<published>> done, bool may_create,
                                  bool queued) {
  if (draining_.load())
    return done(tl::make_unexpected(error{errc::unavailable, "the node is shutting down"}));
  auto route = routes_.find(topic);
  if (!queued && (!route || creations_.load(std::memory_order_acquire) != 0)) {
    std::unique_lock<std::mutex> guard{creating_mutex_};
    if (auto waiting = creating_.find(topic); waiting != creating_.end()) {
      // Behind the publishes that wait for the topic's creation.
      waiting->second.push_back(
        [this, topic, items = std::move(items), done = std::move(done), may_create]() mutable {
          route_items(topic, std::move(items), std::move(done), may_create, true);
        });
      return;
    }
    route = routes_.find(topic);
    if (!route) {
      if (!may_create)
        return done(
          tl::make_unexpected(error{errc::storage, "topic " + topic + " could not be created"}));
      creating_[topic];
      creations_.fetch_add(1, std::memory_order_release);
      guard.unlock();
      create_then(topic, 0,
                  [this, topic, items = std::move(items), done](std::optional<error> err) mutable {
                    if (err)
                      done(tl::make_unexpected(*err));
                    else
                      route_items(topic, std::move(items), std::move(done), false, true);
                    // Then those that came meanwhile, in order (more may join while
                    // they run: they go in the next round).
                    for (;;) {
                      std::vector<std::function<void()>> next;
                      {
                        std::lock_guard<std::mutex> g{creating_mutex_};
                        auto it = creating_.find(topic);
                        next.swap(it->second);
                        if (next.empty()) {
                          creating_.erase(it);
                          creations_.fetch_sub(1, std::memory_order_release);
                          return;
                        }
                      }
                      for (auto& f : next)
                        f();
                    }
                  });
      return;
    }
  }
  if (!route)
    return done(
      tl::make_unexpected(error{errc::storage, "topic " + topic + " could not be created"}));
  auto parts = split_by_partition(*route, items, cluster_);
  // Partitions owned by another member leave as one forward per owner.
  std::map<std::string,
           std::pair<std::vector<forward_batch>, std::vector<std::vector<std::size_t>>>>
    remote;
  if (cluster_ != nullptr)
    for (std::uint32_t p = 0; p < parts.jobs.size(); ++p) {
      if (!parts.jobs[p])
        continue;
      auto owner = cluster_->owner(topic, p);
      if (cluster_->where().is_self(owner))
        continue;
      if (owner.empty())
        return done(tl::make_unexpected(
          error{errc::unavailable, "partition " + topic + "/" + std::to_string(p)
                                     + " has no leader now (an election is under way, or too "
                                       "few of its copies are up); retry shortly"}));
      if (!cluster_->up(owner))
        return done(tl::make_unexpected(error{
          errc::unavailable, "partition " + topic + "/" + std::to_string(p) + " is owned by node "
                               + owner + ", which is down or unreachable; retry shortly"}));
      auto& [batches, index] = remote[owner];
      batches.push_back({p, std::move(parts.jobs[p]->events)});
      index.push_back(std::move(parts.index[p]));
      parts.jobs[p].reset();
    }
  auto admitted = admit(topic, *route, parts.jobs, storage_.max_queued_events);
  if (!admitted)
    return done(tl::make_unexpected(admitted.error()));
  auto join = std::make_shared<publish_join>();
  join->out.resize(items.size());
  join->partitions = route->info.partitions;
  join->remaining = *admitted + remote.size();
  join->done = std::move(done);
  for (std::uint32_t p = 0; p < parts.jobs.size(); ++p) {
    auto& job = parts.jobs[p];
    if (!job)
      continue;
    job->queued = &route->slots[p]->queued;
    job->done = [join, idx = std::move(parts.index[p])](append_outcome r) {
      join->answer(idx, std::move(r));
    };
    submit(route, p, std::move(job));
  }
  for (auto& [owner, work] : remote) {
    auto index = std::make_shared<std::vector<std::vector<std::size_t>>>(std::move(work.second));
    cluster_->forward(owner, topic, route->info.partitions, std::move(work.first),
                      [join, index](result<forward_answer> r) {
                        if (!r)
                          join->fail(r.error());
                        else
                          for (std::size_t b = 0; b < index->size() && b < r->size(); ++b)
                            join->take((*index)[b], std::move((*r)[b]));
                        join->arrive();
                      });
  }
}

void publish_service::append_local(const std::string& topic, std::uint32_t partitions,
                                   std::vector<forward_batch> batches,
                                   callback<forward_answer> done) {
  if (draining_.load())
    return done(tl::make_unexpected(error{errc::unavailable, "the node is shutting down"}));
  auto route = routes_.find(topic);
  if (!route)
    return create_then(topic, partitions,
                       [this, topic, partitions, batches = std::move(batches),
                        done](std::optional<error> err) mutable {
                         if (err)
                           return done(tl::make_unexpected(*err));
                         if (!routes_.find(topic))
                           return done(tl::make_unexpected(
                             error{errc::storage, "topic " + topic + " could not be created"}));
                         append_local(topic, partitions, std::move(batches), std::move(done));
                       });
  if (route->info.partitions != partitions)
    return done(tl::make_unexpected(
      error{errc::invalid, "topic " + topic + " has " + std::to_string(route->info.partitions)
                             + " partitions on node " + cluster_->where().self() + ", not "
                             + std::to_string(partitions) + " as the forwarding node says"}));
  std::vector<job_ptr> jobs(partitions);
  for (auto& b : batches) {
    auto owner = b.partition < partitions ? cluster_->owner(topic, b.partition) : std::string{};
    if (control_ != nullptr && b.partition < partitions && !jobs[b.partition] && !b.events.empty()
        && !cluster_->where().is_self(owner))
      // Replicated: leadership moved between the forwarder's look and ours.
      return done(tl::make_unexpected(error{
        errc::unavailable, "partition " + topic + "/" + std::to_string(b.partition)
                             + " is not led by node " + cluster_->where().self() + " now ("
                             + (owner.empty() ? std::string{"no leader: an election is under way"}
                                              : "node " + owner + " leads it")
                             + "); retry shortly"}));
    if (b.partition >= partitions || jobs[b.partition] || b.events.empty()
        || !cluster_->where().is_self(owner))
      return done(tl::make_unexpected(
        error{errc::invalid, "partition " + topic + "/" + std::to_string(b.partition)
                               + " is not this node's to append (" + cluster_->where().self()
                               + "), or is repeated or empty; are cluster.members the same on "
                                 "every node?"}));
    jobs[b.partition] = std::make_shared<partition_job>();
    jobs[b.partition]->events = std::move(b.events);
  }
  auto admitted = admit(topic, *route, jobs, storage_.max_queued_events);
  if (!admitted)
    return done(tl::make_unexpected(admitted.error()));
  auto join = std::make_shared<forward_join>();
  join->out.resize(batches.size());
  join->remaining = batches.size();
  join->done = std::move(done);
  for (std::size_t b = 0; b < batches.size(); ++b) {
    auto p = batches[b].partition;
    auto& job = jobs[p];
    job->queued = &route->slots[p]->queued;
    job->done = [join, b](append_outcome r) { join->answer(b, std::move(r)); };
    sender_.publish(*route, p, std::move(job));
  }
}

// -- the publish lane (publish_lane.hpp) --------------------------------------

namespace {

/// A lane thread's publishes of the current pass of its loop. One per
/// thread, its vectors kept from pass to pass (a pass of one publish made
/// four allocations for them).
struct lane_pass {
  bool open = false;
  publish_service* service = nullptr;
  std::vector<publish_service::lane_item> items;

  /// Whether the pass has publishes to `slot` already.
  [[nodiscard]] bool has(const partition_slot& slot) const {
    return std::any_of(items.begin(), items.end(), [&](const publish_service::lane_item& i) {
      return i.route->slots[i.p].get() == &slot;
    });
  }
};

thread_local pass_poster lane_poster;
thread_local lane_pass open_pass;
/// The items of the pass being flushed (swapped out of open_pass).
thread_local std::vector<publish_service::lane_item> flushing;
/// The write of a pass: its buffer is kept for the next pass when its
/// capacity is at most keep_batch_bytes (a pass whose events outgrew the
/// estimate it was sized by grew it; the capacity says so, the estimate
/// did not).
thread_local rocksdb::WriteBatch lane_batch;
constexpr std::size_t keep_batch_bytes = 1U << 20;

/// Ends the open pass: its publishes are appended (posted to the loop at
/// the pass's first publish).
void run_pass() {
  if (!open_pass.open)
    return;
  open_pass.open = false;
  auto* service = open_pass.service;
  open_pass.service = nullptr;
  flushing.swap(open_pass.items); // a publish from here on opens the next pass
  service->flush_lane(flushing);
  flushing.clear();
}

/// Keeps a settled append of a partition that consumer groups read for its
/// actor's tail cache (partition_slot::lane_appended); the caller holds the
/// lane lock. The events' key, type and source move; texts are copied (the
/// answers and the live tails read them afterwards).
void hand_to_groups(partition_slot& slot, std::vector<persistence::new_event>& events,
                    const std::vector<persistence::append_result>& results) {
  if (!slot.lane_feeds)
    return;
  for (std::size_t k = 0; k < results.size(); ++k) {
    const auto& r = results[k];
    if (r.status != persistence::append_status::appended)
      continue;
    auto& e = events[k];
    slot.lane_appended.push_back({r.where.offset, r.where.time_us,
                                  std::make_shared<const std::string>(r.json), r.id,
                                  std::move(e.key), std::move(e.type), std::move(e.source)});
    if (slot.lane_appended.size() > partition_slot::lane_appended_max)
      slot.lane_appended.pop_front();
  }
}

/// Tickets for the jobs of items [first, last), which go to the actor of
/// `slot`; taken under its lane lock, so the lane cannot open before the
/// actor has them (partition_actor's lend_lane).
void to_actor(partition_slot& slot, std::vector<publish_service::lane_item>& items,
              std::size_t first, std::size_t last) {
  for (auto i = first; i < last; ++i) {
    slot.to_actor.fetch_add(1);
    items[i].job->ticket = &slot.to_actor;
  }
}

} // namespace

void publish_service::submit(const std::shared_ptr<topic_route>& route, std::uint32_t p,
                             job_ptr job) {
  auto& slot = *route->slots[p];
  // The ticket first, then the lane looked at (partition_actor's lend_lane).
  // While another job is on its way to the actor this one follows it there:
  // a publish of the same connection may be among them (one that waited for
  // its topic's creation goes on from the runner's thread).
  // A partition that has jobs in this pass already gets this one there too:
  // the pass keeps them in order, whichever way it sends them at its end.
  const bool others = slot.to_actor.fetch_add(1) > 0;
  const bool in_pass = open_pass.open && open_pass.service == this && open_pass.has(slot);
  if (!in_pass
      && (!lane_poster || (open_pass.open && open_pass.service != this) || others
          || !slot.lane_open.load())) {
    job->ticket = &slot.to_actor;
    return sender_.publish(*route, p, std::move(job));
  }
  slot.to_actor.fetch_sub(1);
  if (!open_pass.open) {
    open_pass.open = true;
    open_pass.service = this;
    lane_poster([] { run_pass(); });
  }
  open_pass.items.push_back({route, p, std::move(job)});
}

void publish_service::flush_lane(std::vector<lane_item>& items) {
  auto slot_of = [](const lane_item& i) { return i.route->slots[i.p].get(); };
  // Two threads lock the lanes they share in one order: the slots' addresses.
  auto by_slot = [&](const lane_item& a, const lane_item& b) {
    return std::less<const partition_slot*>{}(slot_of(a), slot_of(b));
  };
  if (!std::is_sorted(items.begin(), items.end(), by_slot)) // (stable_sort allocates)
    std::stable_sort(items.begin(), items.end(), by_slot);
  struct part {
    std::size_t first = 0, last = 0; ///< its items
    std::vector<persistence::new_event> events;
    std::optional<persistence::partition_writer::staged> staged;
    std::optional<persistence::error> failed;
    std::vector<persistence::append_result> results;
    std::uint64_t end = 0;
    bool closed = false; ///< the actor took its writer back: the jobs go to it
  };
  boost::container::small_vector<part, 4> parts;
  std::size_t bytes = 0;
  for (std::size_t i = 0; i < items.size(); ++i) {
    if (parts.empty() || slot_of(items[parts.back().first]) != slot_of(items[i]))
      parts.push_back(part{i, i, {}, {}, {}, {}, 0, false});
    parts.back().last = i + 1;
    bytes += persistence::batch_bytes(items[i].job->events);
  }
  // Sized up front (a batch grown by appends is copied at each growth),
  // and kept while it is small.
  if (auto kept = lane_batch.Data().capacity(); bytes > kept || kept > keep_batch_bytes) {
    lane_batch = rocksdb::WriteBatch{bytes};
  } else {
    lane_batch.Clear();
  }
  auto& batch = lane_batch;
  boost::container::small_vector<std::unique_lock<std::mutex>, 4> locks;
  for (auto& pt : parts) {
    auto* slot = slot_of(items[pt.first]);
    locks.emplace_back(slot->lane_mutex);
    if (slot->lane == nullptr) {
      to_actor(*slot, items, pt.first, pt.last);
      pt.closed = true;
      continue;
    }
    // The events' texts and ids move into the write; a job keeps its count.
    for (auto i = pt.first; i < pt.last; ++i)
      for (auto& e : items[i].job->events)
        pt.events.push_back({std::move(e.id), std::move(e.key), std::move(e.fragment),
                             std::move(e.type), std::move(e.source), e.generated});
    // The texts are kept only for readers of them after the write: the
    // groups' tail cache and live tails.
    const bool texts = slot->lane_feeds || tails_.active.load(std::memory_order_relaxed) > 0;
    auto staged = slot->lane->stage_append(pt.events, batch, texts);
    if (staged)
      pt.staged = std::move(*staged);
    else
      pt.failed = staged.error();
  }
  std::optional<persistence::error> write_failed;
  bool stalled = false;
  if (batch.Count() > 0) {
    auto written = log_.write_batch(batch);
    if (!written)
      write_failed = written.error();
    else
      stalled = !*written;
  }
  for (auto& pt : parts) {
    if (!pt.staged)
      continue;
    auto* writer = slot_of(items[pt.first])->lane;
    pt.results = writer->settle(*pt.staged, !write_failed && !stalled);
    pt.end = writer->next_offset();
    if (write_failed)
      pt.failed = write_failed;
    else if (!stalled)
      hand_to_groups(*slot_of(items[pt.first]), pt.events, pt.results);
    if (!stalled)
      continue;
    // RocksDB holds writes back for now: the events go back to their jobs
    // and the jobs to the actors, which wait it out on their own thread
    // while this one goes on serving its connections; the lane stays shut
    // until the actor has appended them.
    std::size_t k = 0;
    for (auto i = pt.first; i < pt.last; ++i)
      for (auto& e : items[i].job->events)
        e = std::move(pt.events[k++]);
    auto* slot = slot_of(items[pt.first]);
    slot->close_lane();
    to_actor(*slot, items, pt.first, pt.last);
    pt.closed = true;
  }
  locks.clear();

  struct written {
    partition_slot* slot;
    std::shared_ptr<topic_route> route;
    std::vector<job_ptr> jobs;
    std::vector<persistence::append_result> results;
    std::uint64_t end;
  };
  auto durable = std::make_shared<boost::container::small_vector<written, 2>>();
  for (auto& pt : parts) {
    if (pt.closed) {
      for (auto i = pt.first; i < pt.last; ++i)
        sender_.publish(*items[i].route, items[i].p, std::move(items[i].job));
      continue;
    }
    if (pt.failed) {
      for (auto i = pt.first; i < pt.last; ++i)
        items[i].job->finish(tl::make_unexpected(*pt.failed));
      continue;
    }
    written w{slot_of(items[pt.first]), items[pt.first].route, {}, std::move(pt.results), pt.end};
    for (auto i = pt.first; i < pt.last; ++i)
      w.jobs.push_back(std::move(items[i].job));
    durable->push_back(std::move(w));
  }
  items.clear();
  if (durable->empty())
    return;
  log_.after_durable([this, durable](std::optional<persistence::error> failure) {
    for (auto& w : *durable) {
      if (failure) {
        for (auto& job : w.jobs)
          job->finish(tl::make_unexpected(*failure));
        continue;
      }
      if (raise_durable(*w.slot, w.end)) { // groups read it: its actor delivers what is durable now
        std::shared_lock<std::shared_mutex> guard{routes_.mutex};
        sender_.wake(*w.slot);
      }
      std::vector<std::string> followed;
      // (A tail that started after the write was staged may find no text:
      // it follows what is published from its start.)
      if (tails_.active.load(std::memory_order_relaxed) > 0)
        for (auto& r : w.results)
          if (r.status == persistence::append_status::appended && !r.json.empty())
            followed.push_back(r.json);
      answer_jobs(w.jobs, w.results);
      if (!followed.empty())
        tails_.deliver(w.route->info.name, followed);
    }
  });
}

} // namespace nerve::actors::detail

namespace nerve::actors {

void set_pass_poster(pass_poster post) {
  detail::lane_poster = std::move(post);
}

void end_lane_thread() {
  detail::lane_poster = nullptr;
  // A pass whose flush never ran: its jobs answer that the partition stopped.
  detail::open_pass = {};
  detail::flushing.clear();
  detail::lane_batch = rocksdb::WriteBatch{};
}

} // namespace nerve::actors
