// The delivery engine of one consumer group (see consumer_group.hpp): every
// decision about what to send, when to retry and what to store, as effects.
#include "actors/consumer_group.hpp"

#include <algorithm>
#include <utility>

#include "config/assert.hpp"

namespace nerve::actors {

bool filter_matches(const config::agent_filter& f, const std::string& type,
                    const std::string& source, const std::string& key) {
  return (!f.type || *f.type == type) && (!f.source || *f.source == source)
         && (!f.key || *f.key == key);
}

std::chrono::milliseconds backoff_with(std::chrono::milliseconds initial,
                                       std::chrono::milliseconds max, std::uint32_t attempt,
                                       double jitter) {
  auto shift = std::min<std::uint32_t>(attempt == 0 ? 0 : attempt - 1, 30);
  auto base
    = std::min<double>(static_cast<double>(initial.count()) * static_cast<double>(1ULL << shift),
                       static_cast<double>(max.count()));
  return std::chrono::milliseconds{static_cast<std::int64_t>(base * jitter)};
}

consumer_group::consumer_group(const config::agent_config& agent, group_identity where,
                               std::uint64_t seed)
  : agent_(agent), where_(std::move(where)), ordered_(agent.ordered_by == config::ordering::key),
    filtered_(agent.filter.type || agent.filter.source || agent.filter.key),
    window_(std::max<std::size_t>(min_window, 2ULL * agent.instances * agent.max_in_flight)),
    rng_(seed), in_flight_by_instance_(agent.instances, 0) {
}

// -- recovery and reading -------------------------------------------------------

void consumer_group::recover(std::uint64_t cursor,
                             const std::vector<persistence::pending_record>& pending,
                             std::uint64_t end, std::int64_t last_delivered, std::int64_t now_us,
                             group_effects& fx) {
  NERVE_ASSERT(recs_.empty() && redeliveries_.empty(), "a group recovers once, when it starts");
  NERVE_ASSERT(cursor <= end, "the cursor never passes the partition's durable end");
  cursor_ = cursor;
  next_read_ = cursor;
  end_ = end;
  last_delivered_ = last_delivered;
  for (auto& p : pending) {
    bool below = p.offset < cursor;
    if (below && !p.redeliver) {
      fx.changes.emplace_back(delete_pending{p.offset}); // passed already
      continue;
    }
    auto& r = (below ? redeliveries_ : recs_)[p.offset];
    r.below_cursor = below;
    r.persisted = true;
    r.attempts = p.attempts;
    r.first_failed_us = p.first_failed_us;
    r.last_failed_us = p.last_failed_us;
    r.last_error = p.last_error;
    if (p.acked) {
      r.state = rec_state::done;
    } else if (p.attempts == 0) {
      make_ready(p.offset, r);
    } else {
      r.state = rec_state::retry_wait;
      ++waiting_retry_;
      fx.timers.push_back({p.offset, std::max(p.next_attempt_us, now_us), 0});
    }
  }
  // Records above the cursor are fed again from the log; their state
  // (acked, waiting) is kept.
}

void consumer_group::set_end(std::uint64_t end) {
  NERVE_ASSERT(end >= end_, "the durable end only grows");
  end_ = end;
}

std::uint64_t consumer_group::wanted() const {
  if (next_read_ >= end_ || recs_.size() >= window_)
    return 0;
  return std::min<std::uint64_t>(end_ - next_read_, window_ - recs_.size());
}

void consumer_group::take_event(record& r, const group_event& e) {
  r.event = e.json;
  r.event_id = e.id;
  r.key = e.key;
  r.appended_us = e.appended_us;
  r.loaded = true;
}

void consumer_group::feed(const group_event& e) {
  NERVE_ASSERT(e.offset >= next_read_ && e.offset < end_, "events are fed in order, below the end");
  auto& r = recs_[e.offset];
  if (!r.loaded) {
    take_event(r, e);
    unloaded_.erase(std::remove(unloaded_.begin(), unloaded_.end(), e.offset), unloaded_.end());
  }
  bool fresh = r.attempts == 0 && r.state == rec_state::ready && !r.persisted;
  if (fresh) {
    if (!filtered_ || filter_matches(agent_.filter, e.type, e.source, e.key))
      ready_.push_back(e.offset);
    else
      r.state = rec_state::done; // not for this agent: passed with the others
  } else if (r.state == rec_state::retry_wait) {
    // Recovered while waiting to retry: later events of its key wait for it.
    hold_key(r, e.offset);
  }
  next_read_ = e.offset + 1;
}

void consumer_group::skip_to_end() {
  next_read_ = end_;
}

void consumer_group::pass(std::uint64_t offset) {
  NERVE_ASSERT(offset >= next_read_ && offset < end_, "events are read in order, below the end");
  next_read_ = offset + 1;
}

void consumer_group::load(std::uint64_t offset, const group_event* e, group_effects& fx) {
  unloaded_.erase(std::remove(unloaded_.begin(), unloaded_.end(), offset), unloaded_.end());
  auto* r = find(offset);
  if (r == nullptr || r->loaded)
    return;
  if (e != nullptr) {
    take_event(*r, *e);
    return;
  }
  // Retention removed the event: there is nothing left to deliver.
  if (r->state == rec_state::ready && r->below_cursor)
    --redelivering_;
  if (r->state != rec_state::done)
    finish(offset, *r, fx);
  advance(fx);
}

void consumer_group::advance(group_effects& fx) {
  auto start = cursor_;
  // Never past what was read: a done record above it (a DLQ retry, say)
  // waits until the events before it are read. Read offsets without a
  // record were never fed (gone by retention, or skipped): nothing to wait for.
  while (!recs_.empty() && recs_.begin()->first < next_read_) {
    auto& [offset, r] = *recs_.begin();
    if (offset > cursor_)
      cursor_ = offset;
    if (r.state != rec_state::done)
      break;
    if (r.persisted)
      fx.changes.emplace_back(delete_pending{offset});
    recs_.erase(recs_.begin());
    ++cursor_;
  }
  if (recs_.empty() && next_read_ > cursor_)
    cursor_ = next_read_;
  if (cursor_ != start)
    cursor_moved_ = true;
  NERVE_ASSERT(cursor_ <= next_read_ && next_read_ <= end_,
               "cursor <= read position <= durable end");
}

// -- delivery -------------------------------------------------------------------

const consumer_group::record* consumer_group::find(std::uint64_t offset) const {
  if (auto it = recs_.find(offset); it != recs_.end())
    return &it->second;
  if (auto it = redeliveries_.find(offset); it != redeliveries_.end())
    return &it->second;
  return nullptr;
}

consumer_group::record* consumer_group::find(std::uint64_t offset) {
  return const_cast<record*>(std::as_const(*this).find(offset));
}

void consumer_group::make_ready(std::uint64_t offset, record& r, bool front) {
  r.state = rec_state::ready;
  // Below the cursor (a DLQ retry) it counts as redelivering until sent, as
  // the lag does not show it.
  if (r.below_cursor)
    ++redelivering_;
  if (front)
    ready_.push_front(offset);
  else
    ready_.push_back(offset);
  if (!r.loaded && std::find(unloaded_.begin(), unloaded_.end(), offset) == unloaded_.end())
    unloaded_.push_back(offset);
}

void consumer_group::hold_key(const record& r, std::uint64_t offset) {
  if (!ordered_)
    return;
  auto [it, fresh] = busy_keys_.try_emplace(r.key, offset);
  if (!fresh && it->second != offset)
    key_waiters_[r.key].push_back(offset); // gets the key when its holder lets go
}

void consumer_group::release_key(const record& r, std::uint64_t offset) {
  if (!ordered_)
    return;
  auto waiters = key_waiters_.empty() ? key_waiters_.end() : key_waiters_.find(r.key);
  if (waiters != key_waiters_.end()) {
    auto& list = waiters->second;
    list.erase(std::remove(list.begin(), list.end(), offset), list.end());
  }
  auto it = busy_keys_.find(r.key);
  if (it == busy_keys_.end() || it->second != offset)
    return;
  if (waiters != key_waiters_.end() && !waiters->second.empty()) {
    it->second = waiters->second.front();
    waiters->second.pop_front();
  } else {
    busy_keys_.erase(it);
  }
  if (waiters != key_waiters_.end() && waiters->second.empty())
    key_waiters_.erase(waiters);
}

bool consumer_group::key_free(const record& r, std::uint64_t offset) const {
  auto it = busy_keys_.find(r.key);
  return it == busy_keys_.end() || it->second == offset;
}

void consumer_group::dispatch(credit_source& credits, group_effects& fx) {
  if (paused_)
    return;
  held_.clear();
  while (!ready_.empty()) {
    auto offset = ready_.front();
    auto* r = find(offset);
    if (r == nullptr || r->state != rec_state::ready) {
      ready_.pop_front();
      continue;
    }
    NERVE_ASSERT(r->loaded, "the shell loads every unloaded record before dispatch");
    if (ordered_ && !key_free(*r, offset)) {
      held_.push_back(offset); // its key's earlier event is in flight or waits to retry
      ready_.pop_front();
      continue;
    }
    auto instance = credits.take();
    if (!instance)
      break;
    ready_.pop_front();
    send(offset, *r, *instance, fx);
  }
  for (auto it = held_.rbegin(); it != held_.rend(); ++it)
    ready_.push_front(*it);
}

std::string consumer_group::delivery_id(const std::string& event_id, std::uint32_t attempt) const {
  auto number = std::to_string(attempt);
  const auto& tag = where_.delivery_tag.empty() ? agent_.name : where_.delivery_tag;
  std::string id;
  id.reserve(event_id.size() + tag.size() + number.size() + 2);
  id.append(event_id).append(":").append(tag).append(":").append(number);
  return id;
}

void consumer_group::send(std::uint64_t offset, record& r, std::size_t instance,
                          group_effects& fx) {
  NERVE_ASSERT(instance < in_flight_by_instance_.size(), "credits name a configured instance");
  if (r.below_cursor)
    --redelivering_;
  ++r.attempts;
  r.state = rec_state::in_flight;
  r.instance = instance;
  hold_key(r, offset);
  // Not asserted against max_in_flight here: the runner resets a dead
  // instance's credits before this group hears of the death (`requeue`), so
  // for a moment the old and the new incarnation's deliveries both count.
  // The credit source bounds what is really in flight.
  ++in_flight_by_instance_[instance];
  fx.deliveries.push_back(
    {instance, offset, r.attempts, delivery_id(r.event_id, r.attempts), r.event_id, r.event});
  ++totals_.received;
  ++in_flight_;
  last_delivered_ = std::max(last_delivered_, static_cast<std::int64_t>(offset));
}

const std::shared_ptr<const std::string>* consumer_group::answer(std::uint64_t offset,
                                                                 std::uint32_t attempt) {
  auto* r = find(offset);
  if (r == nullptr || r->state != rec_state::in_flight || r->attempts != attempt)
    return nullptr; // stale: answered after a timeout, a requeue or a restart
  r->state = rec_state::answered;
  NERVE_ASSERT(in_flight_ > 0 && in_flight_by_instance_[r->instance] > 0,
               "an answer closes a delivery in flight");
  --in_flight_;
  --in_flight_by_instance_[r->instance];
  return &r->event;
}

void consumer_group::finish(std::uint64_t offset, record& r, group_effects& fx) {
  NERVE_ASSERT(r.state != rec_state::done, "no record is settled twice");
  r.state = rec_state::done;
  release_key(r, offset);
  if (r.below_cursor) {
    if (r.persisted)
      fx.changes.emplace_back(delete_pending{offset});
    redeliveries_.erase(offset);
    return;
  }
  if (offset != cursor_)
    held_acks_.push_back(offset); // out of order: remembered until the cursor passes it
}

void consumer_group::stage_acks(group_effects& fx) {
  for (auto offset : held_acks_) {
    if (offset < cursor_)
      continue; // passed meanwhile: nothing to remember
    auto it = recs_.find(offset);
    if (it == recs_.end() || it->second.state != rec_state::done)
      continue; // (a record stored before, a retry's say, is replaced)
    put_pending p;
    p.offset = offset;
    p.attempts = it->second.attempts;
    p.acked = true;
    fx.changes.emplace_back(std::move(p));
    it->second.persisted = true;
  }
  held_acks_.clear();
}

std::optional<std::int64_t> consumer_group::ack(std::uint64_t offset, const std::string& result,
                                                std::int64_t now_us, group_effects& fx) {
  auto* r = find(offset);
  NERVE_ASSERT(r != nullptr && (r->state == rec_state::answered || r->state == rec_state::emitting),
               "an ack follows an answer");
  ++totals_.processed;
  std::optional<std::int64_t> latency;
  if (r->appended_us > 0)
    latency = now_us - r->appended_us;
  // Kept for results.ttl: the result, if any, and the attempts of an ack
  // after retries (a first-attempt ack is what the cursor implies).
  if (!result.empty())
    fx.changes.emplace_back(
      put_result{r->event_id, persistence::stored_result{result, now_us, r->attempts}});
  if (r->attempts > 1)
    fx.changes.emplace_back(put_attempts{offset, r->attempts, now_us});
  finish(offset, *r, fx);
  advance(fx);
  return latency;
}

void consumer_group::dead_letter_of(std::uint64_t offset, const record& r, group_effects& fx) {
  dlq_handoff e;
  e.agent = agent_.name;
  e.topic = where_.topic;
  e.topic_id = where_.topic_id;
  e.partition = where_.partition;
  e.offset = offset;
  e.id = persistence::delivery_store::dlq_id(where_.dlq_owner.empty() ? e.agent : where_.dlq_owner,
                                             e.topic_id, e.partition, offset);
  e.event_id = r.event_id;
  e.event = r.event ? *r.event : std::string{};
  e.error = r.last_error;
  e.attempts = r.attempts;
  e.first_failed_us = r.first_failed_us;
  e.last_failed_us = r.last_failed_us;
  fx.changes.emplace_back(std::move(e));
}

void consumer_group::fail(std::uint64_t offset, const std::string& error, bool timed_out,
                          std::int64_t now_us, group_effects& fx) {
  auto* r = find(offset);
  NERVE_ASSERT(r != nullptr && (r->state == rec_state::answered || r->state == rec_state::emitting),
               "a failure follows an answer");
  ++totals_.failed;
  if (timed_out)
    ++totals_.timed_out;
  r->last_error = error;
  if (r->first_failed_us == 0)
    r->first_failed_us = now_us;
  r->last_failed_us = now_us;
  if (r->attempts > agent_.max_retries) {
    dead_letter_of(offset, *r, fx);
    r->state = rec_state::dead_lettering; // done once the DLQ holds it
    return;
  }
  ++totals_.retried;
  std::uniform_real_distribution<double> jitter{0.8, 1.2};
  auto delay = backoff_with(agent_.backoff_initial, agent_.backoff_max, r->attempts, jitter(rng_));
  auto due = now_us + delay.count() * 1000;
  r->state = rec_state::retry_wait; // keeps its key: later events of it wait
  ++waiting_retry_;
  put_pending p;
  p.offset = offset;
  p.attempts = r->attempts;
  p.redeliver = r->below_cursor;
  p.next_attempt_us = due;
  p.first_failed_us = r->first_failed_us;
  p.last_failed_us = r->last_failed_us;
  p.last_error = error;
  fx.changes.emplace_back(std::move(p));
  r->persisted = true;
  fx.timers.push_back({offset, due, r->attempts});
}

bool consumer_group::dead_lettered(std::uint64_t offset, std::uint32_t attempt, group_effects& fx) {
  auto* r = find(offset);
  if (r == nullptr || r->state != rec_state::dead_lettering || r->attempts != attempt)
    return false;
  ++totals_.dead_lettered;
  finish(offset, *r, fx);
  advance(fx);
  return true;
}

void consumer_group::hold_for_emit(std::uint64_t offset) {
  auto* r = find(offset);
  NERVE_ASSERT(r != nullptr && r->state == rec_state::answered, "emits follow an answer");
  r->state = rec_state::emitting;
}

bool consumer_group::emitted(std::uint64_t offset, std::uint32_t attempt) const {
  const auto* r = find(offset);
  return r != nullptr && r->state == rec_state::emitting && r->attempts == attempt;
}

bool consumer_group::retry_due(std::uint64_t offset, std::int64_t now_us, group_effects& fx) {
  if (paused_) {
    // Stays waiting (and counted as pending) until the agent resumes.
    fx.timers.push_back({offset, now_us + paused_recheck_us, 0});
    return false;
  }
  auto* r = find(offset);
  if (r == nullptr || r->state != rec_state::retry_wait)
    return false;
  --waiting_retry_;
  make_ready(offset, *r);
  return true;
}

void consumer_group::requeue(std::size_t instance) {
  NERVE_ASSERT(instance < in_flight_by_instance_.size(), "a requeue names a configured instance");
  std::vector<std::uint64_t> lost;
  for (auto* recs : {&redeliveries_, &recs_}) // ascending: redeliveries are below the cursor
    for (auto& [offset, r] : *recs)
      if (r.state == rec_state::in_flight && r.instance == instance)
        lost.push_back(offset);
  // Sent again first, in offset order, keeping their keys: the attempt did
  // not count.
  for (auto it = lost.rbegin(); it != lost.rend(); ++it) {
    auto& r = *find(*it);
    --r.attempts;
    --in_flight_;
    --in_flight_by_instance_[instance];
    make_ready(*it, r, true);
  }
  NERVE_ASSERT(in_flight_by_instance_[instance] == 0, "a dead instance has nothing in flight");
}

redeliver_result consumer_group::redeliver(std::uint64_t offset, group_effects& fx) {
  auto* r = find(offset);
  if (r != nullptr && r->state != rec_state::done)
    return redeliver_result::busy;
  bool below = offset < cursor_;
  if (r == nullptr)
    r = &(below ? redeliveries_ : recs_)[offset];
  *r = record{};
  r->below_cursor = below;
  put_pending p;
  p.offset = offset;
  p.redeliver = below;
  fx.changes.emplace_back(std::move(p));
  r->persisted = true;
  make_ready(offset, *r);
  return redeliver_result::queued;
}

std::string consumer_group::last_error(std::uint64_t offset) const {
  const auto* r = find(offset);
  return r == nullptr ? std::string{} : r->last_error;
}

std::string consumer_group::event_id(std::uint64_t offset) const {
  const auto* r = find(offset);
  return r == nullptr ? std::string{} : r->event_id;
}

std::optional<std::uint64_t> consumer_group::take_cursor() {
  if (!cursor_moved_)
    return std::nullopt;
  cursor_moved_ = false;
  return cursor_;
}

group_totals consumer_group::take_totals() {
  auto t = totals_;
  totals_ = {};
  return t;
}

} // namespace nerve::actors
