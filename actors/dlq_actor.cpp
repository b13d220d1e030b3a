// The DLQ actor (see dlq_actor.hpp). Long operations (retry-all, purge) run
// one page per message, so the partitions sharing the scheduler thread are
// never held up for more than a page, and the DLQ is never read whole.
#include "actors/dlq_actor.hpp"

#include "actors/ask.hpp"

#include <map>
#include <optional>
#include <tuple>
#include <unordered_map>
#include <unordered_set>

#include <caf/all.hpp>
#include <spdlog/spdlog.h>

#include "config/assert.hpp"
#include "persistence/delivery_store.hpp"
#include "persistence/event_log.hpp"

namespace nerve::actors {

dead_letter letter_of(const persistence::dlq_entry& e) {
  return dead_letter{e.id,
                     e.agent,
                     e.topic,
                     {e.topic_id, e.partition, e.offset},
                     e.event_id,
                     e.event,
                     e.error,
                     e.attempts,
                     e.first_failed_us,
                     e.last_failed_us};
}

persistence::dlq_entry entry_of(const dead_letter& d) {
  persistence::dlq_entry e;
  e.id = d.id;
  e.agent = d.agent;
  e.topic = d.topic;
  e.topic_id = d.at.topic_id;
  e.partition = d.at.partition;
  e.offset = d.at.offset;
  e.event_id = d.event_id;
  e.event = d.event;
  e.error = d.error;
  e.attempts = d.attempts;
  e.first_failed_us = d.first_failed_us;
  e.last_failed_us = d.last_failed_us;
  return e;
}

namespace {

caf::error storage_error(const persistence::error& e) {
  return make_caf_error(errc::storage, e.message);
}

/// A retry-all or purge in progress: where it is, and what it did so far.
struct long_op {
  enum class kind { retry_all, purge } what = kind::purge;
  dlq_query query;
  std::uint64_t done = 0;      ///< entries retried or deleted
  std::uint32_t in_flight = 0; ///< redeliveries of the current page unanswered
  bool last_page = false;
  caf::typed_response_promise<std::uint64_t> promise;
};

struct dlq_state {
  dlq_deps deps;
  /// (agent, topic, partition) of a stored entry.
  using where = std::tuple<std::string, std::string, std::uint32_t>;
  /// Every stored entry's id, and its entry count per place: what list
  /// counts with filters, without a scan.
  std::unordered_map<std::string, where> index;
  std::map<where, std::uint64_t> counts;
  /// Ids with a retry or delete in flight: a second operation on one of them
  /// is refused, so an entry is never retried twice.
  std::unordered_set<std::string> busy;
  std::unordered_map<std::uint64_t, long_op> ops;
  /// Answers waiting for the sync that covers their write.
  std::unordered_map<std::uint64_t, std::function<void(std::string)>> syncs;
  std::uint64_t next_token = 1;
  static inline const char* name = "dlq";

  [[nodiscard]] bool replicated() const { return static_cast<bool>(deps.lead_of); }

  /// Whether this node lists and changes the entries of (topic, p).
  [[nodiscard]] bool here(const std::string& topic, std::uint32_t p) const {
    return !replicated() || deps.lead_of(topic, p).here;
  }

  /// Counts `d` unless it is counted; answers whether it was new.
  bool add(const dead_letter& d) {
    where w{d.agent, d.topic, d.at.partition};
    if (!index.emplace(d.id, w).second)
      return false;
    ++counts[w];
    return true;
  }

  void remove(const std::string& id) {
    auto it = index.find(id);
    if (it == index.end())
      return;
    auto c = counts.find(it->second);
    NERVE_ASSERT(c != counts.end() && c->second > 0, "an indexed entry is counted");
    if (--c->second == 0)
      counts.erase(c);
    index.erase(it);
  }

  [[nodiscard]] std::uint64_t count_of(const dlq_query& q) const {
    std::uint64_t n = 0;
    for (auto& [w, c] : counts) {
      auto& [agent, topic, p] = w;
      if ((q.agent.empty() || agent == q.agent) && (q.topic.empty() || topic == q.topic)
          && here(topic, p))
        n += c;
    }
    return n;
  }

  /// The gauge: the entries this node answers for (after each change).
  void show() { deps.size_gauge->store(count_of({})); }
};

using self_ptr = dlq_actor::stateful_pointer<dlq_state>;

/// Counts the stored entries, a page at a time.
void recount(dlq_state& st) {
  std::string after;
  for (;;) {
    auto page = st.deps.store->dlq_list("", "", after, 1000);
    if (!page)
      throw std::runtime_error("counting the DLQ: " + page.error().message);
    for (auto& e : *page)
      (void)st.add(letter_of(e));
    if (page->size() < 1000)
      break;
    after = page->back().id;
  }
  st.show();
}

/// Runs `done` once what the actor wrote so far is durable (at once unless
/// fsync is `always`), on the actor's own thread.
void after_sync(self_ptr self, std::function<void(std::string)> done) {
  auto token = self->state.next_token++;
  self->state.syncs.emplace(token, std::move(done));
  self->state.deps.log->after_durable(
    [me = caf::actor_cast<dlq_actor>(self), token](std::optional<persistence::error> failure) {
      caf::anon_send(me, dlq_synced_atom::value, token, failure ? failure->message : std::string{});
    });
}

/// Deletes `ids` in one batch; answers the storage error, if any.
std::optional<caf::error> delete_entries(dlq_state& st, const std::vector<dead_letter>& gone) {
  if (gone.empty())
    return std::nullopt;
  persistence::state_batch b;
  for (auto& d : gone)
    b.delete_dlq(d.id);
  if (auto ok = st.deps.store->commit(b, false); !ok)
    return storage_error(ok.error());
  for (auto& d : gone)
    st.remove(d.id);
  st.show();
  return std::nullopt;
}

/// Why this node does not answer for entry `d`: another node leads its
/// partition (404 here, so the cluster asks the next node), or none does now.
std::optional<caf::error> kept_elsewhere(const dlq_state& st, const dead_letter& d) {
  if (!st.replicated())
    return std::nullopt;
  auto lead = st.deps.lead_of(d.topic, d.at.partition);
  if (lead.here)
    return std::nullopt;
  auto part = d.topic + "/" + std::to_string(d.at.partition);
  if (!lead.leader.empty())
    return make_caf_error(errc::not_found,
                          "no DLQ entry " + d.id + " on this node (node " + lead.leader
                            + " leads partition " + part + " and keeps its entries)",
                          lead.leader);
  return make_caf_error(errc::unavailable, "DLQ entry " + d.id + ": partition " + part
                                             + " has no leader now (an election is under way); "
                                               "retry shortly");
}

/// The stored entry `id`, or the error to answer.
caf::expected<dead_letter> load(dlq_state& st, const std::string& id) {
  auto e = st.deps.store->dlq_get(id);
  if (!e)
    return storage_error(e.error());
  if (!*e)
    return make_caf_error(errc::not_found, "no DLQ entry " + id);
  auto d = letter_of(**e);
  if (auto other = kept_elsewhere(st, d))
    return *other;
  return d;
}

/// The stored entry `id` when no other operation has it, or the error.
caf::expected<dead_letter> load_free(dlq_state& st, const std::string& id) {
  if (st.busy.count(id) > 0)
    return make_caf_error(errc::conflict, "DLQ entry " + id + " is being retried or deleted");
  return load(st, id);
}

/// Answers `d` once the sync covering the change to it is done.
void answer_after_sync(self_ptr self, caf::typed_response_promise<dead_letter> rp, dead_letter d) {
  after_sync(self, [rp, d = std::move(d)](const std::string& failure) mutable {
    if (failure.empty())
      rp.deliver(d);
    else
      rp.deliver(make_caf_error(errc::storage, failure));
  });
}

/// Asks the entry's partition for `xs`; `done` gets "" once the partition
/// did it, else why not. The entry is busy meanwhile.
template <class... Ts>
void ask_partition(self_ptr self, const dead_letter& d, std::function<void(std::string)> done,
                   Ts... xs) {
  auto& st = self->state;
  auto part = d.topic + "/" + std::to_string(d.at.partition);
  auto target = st.deps.find_partition(d.topic, d.at.partition);
  if (!target)
    return done("partition " + part + " is not open or is restarting");
  st.busy.insert(d.id);
  self->request(target, st.deps.redeliver_timeout, xs...)
    .then(
      [self, id = d.id, done](const std::string& refused) {
        self->state.busy.erase(id);
        done(refused);
      },
      [self, id = d.id, part, done](caf::error& e) {
        self->state.busy.erase(id);
        done("partition " + part + " did not answer: " + caf::to_string(e));
      });
}

/// Asks the entry's partition to deliver it again; `done` gets "" once the
/// partition queued it, wrote its pending record and deleted the entry (one
/// batch: a crash keeps the entry or the redelivery, never neither).
void redeliver(self_ptr self, const dead_letter& d, std::function<void(std::string)> done) {
  ask_partition(self, d, std::move(done), redeliver_atom::value, d.agent, d.at.offset, d.id);
}

/// Deletes entry `d`: through its partition when replicated (the followers
/// delete their copies), else here. `done` gets "" once it is gone.
void drop(self_ptr self, const dead_letter& d, std::function<void(std::string)> done) {
  if (self->state.replicated())
    return ask_partition(self, d, std::move(done), dlq_delete_atom::value, d.id);
  if (auto failed = delete_entries(self->state, {d}))
    return done(from_caf_error(*failed).message);
  done({});
}

void step(self_ptr self, std::uint64_t token);

/// Ends a page of a long operation: the next page, or the answer.
void page_done(self_ptr self, std::uint64_t token) {
  auto& op = self->state.ops.at(token);
  if (op.in_flight > 0)
    return;
  if (!op.last_page) {
    self->send(self, dlq_step_atom::value, token);
    return;
  }
  after_sync(self, [self, token](const std::string& failure) {
    auto& st = self->state;
    auto it = st.ops.find(token);
    if (failure.empty())
      it->second.promise.deliver(it->second.done);
    else
      it->second.promise.deliver(make_caf_error(errc::storage, failure));
    st.ops.erase(it);
  });
}

/// One page of a retry-all or purge.
void step(self_ptr self, std::uint64_t token) {
  auto& st = self->state;
  auto& op = st.ops.at(token);
  auto page = st.deps.store->dlq_list(op.query.agent, op.query.topic, op.query.cursor,
                                      st.deps.page_entries);
  if (!page) {
    op.promise.deliver(storage_error(page.error()));
    st.ops.erase(token);
    return;
  }
  op.last_page = page->size() < st.deps.page_entries;
  if (!page->empty())
    op.query.cursor = page->back().id;
  std::vector<dead_letter> todo;
  for (auto& e : *page)
    if (st.busy.count(e.id) == 0 // another operation has it
        && st.here(e.topic, e.partition))
      todo.push_back(letter_of(e));
  if (op.what == long_op::kind::purge && !st.replicated()) {
    if (auto failed = delete_entries(st, todo)) {
      op.promise.deliver(*failed);
      st.ops.erase(token);
      return;
    }
    op.done += todo.size();
    page_done(self, token);
    return;
  }
  if (todo.empty())
    return page_done(self, token);
  // The last answer ends the page, even when every one comes at once.
  op.in_flight = static_cast<std::uint32_t>(todo.size());
  auto counted = [self, token](const std::string& refused) {
    auto& op = self->state.ops.at(token);
    --op.in_flight;
    if (refused.empty())
      ++op.done;
    page_done(self, token);
  };
  for (auto& d : todo) {
    if (op.what == long_op::kind::purge)
      drop(self, d, counted);
    else
      redeliver(self, d, counted);
  }
}

/// Starts a long operation; its answer comes from its last page.
caf::result<std::uint64_t> start_op(self_ptr self, long_op::kind what, dlq_query q) {
  auto token = self->state.next_token++;
  auto& op = self->state.ops[token];
  op.what = what;
  op.query = std::move(q);
  op.query.cursor.clear();
  op.promise = self->make_response_promise<std::uint64_t>();
  self->send(self, dlq_step_atom::value, token);
  return op.promise;
}

/// Stores `d` here; answers whether it is a new entry.
caf::expected<bool> put_here(dlq_state& st, const dead_letter& d) {
  persistence::state_batch b;
  b.put_dlq(entry_of(d));
  // Not synced here: the replay marks the delivery done only after this
  // answer, so the WAL holds the entry before its outcome.
  if (auto ok = st.deps.store->commit(b, false); !ok)
    return storage_error(ok.error());
  bool fresh = st.add(d);
  st.show();
  return fresh;
}

/// Stores a replay's dead letter: through its partition when replicated and
/// led here (the followers get it), else on this node only.
caf::result<bool> put(self_ptr self, const dead_letter& d) {
  auto& st = self->state;
  bool fresh = st.index.count(d.id) == 0;
  if (st.replicated() && st.here(d.topic, d.at.partition)) {
    auto rp = self->make_response_promise<bool>();
    ask_partition(
      self, d,
      [self, rp, d, fresh](const std::string& refused) mutable {
        if (refused.empty()) {
          rp.deliver(fresh);
          return;
        }
        // Led elsewhere since: kept here rather than lost.
        auto kept = put_here(self->state, d);
        if (kept)
          rp.deliver(*kept);
        else
          rp.deliver(kept.error());
      },
      dlq_put_atom::value, d);
    return rp;
  }
  if (st.replicated())
    spdlog::warn("dlq={} agent={} topic={} partition={}: this node does not lead the partition; "
                 "the entry is kept on this node only",
                 d.id, d.agent, d.topic, d.at.partition);
  auto added = put_here(st, d);
  if (!added)
    return added.error();
  return *added;
}

/// The page of entries after `q.cursor` this node answers for.
caf::expected<dead_letter_page> list(dlq_state& st, const dlq_query& q) {
  dead_letter_page page;
  page.count = st.count_of(q);
  auto want = q.limit + 1ULL; // one more: is there a next page?
  std::vector<dead_letter> got;
  for (auto after = q.cursor; got.size() < want;) {
    auto some = st.deps.store->dlq_list(q.agent, q.topic, after, want);
    if (!some)
      return storage_error(some.error());
    for (auto& e : *some)
      if (got.size() < want && st.here(e.topic, e.partition))
        got.push_back(letter_of(e));
    if (some->size() < want)
      break;
    after = some->back().id;
  }
  for (auto& d : got) {
    if (page.entries.size() == q.limit) {
      page.next_cursor = page.entries.empty() ? std::string{} : page.entries.back().id;
      break;
    }
    page.entries.push_back(std::move(d));
  }
  return page;
}

dlq_actor::behavior_type dlq_behavior(self_ptr self, dlq_deps deps) {
  NERVE_ASSERT(deps.log != nullptr && deps.store != nullptr && deps.size_gauge != nullptr);
  self->state.deps = std::move(deps);
  recount(self->state);
  if (self->state.deps.counted != nullptr)
    self->state.deps.counted->store(true);
  if (self->state.replicated())
    self->send(self, tick_atom::value);
  return {
    [self](dlq_put_atom, const dead_letter& d) { return put(self, d); },
    [self](dlq_list_atom, const dlq_query& q) -> caf::result<dead_letter_page> {
      auto page = list(self->state, q);
      if (!page)
        return page.error();
      return std::move(*page);
    },
    [self](dlq_get_atom, const std::string& id) -> caf::result<dead_letter> {
      auto d = load(self->state, id);
      if (!d)
        return d.error();
      return *d;
    },
    [self](dlq_retry_atom, const std::string& id) -> caf::result<dead_letter> {
      auto d = load_free(self->state, id);
      if (!d)
        return d.error();
      auto rp = self->make_response_promise<dead_letter>();
      redeliver(self, *d, [self, rp, d = *d](const std::string& refused) mutable {
        if (!refused.empty()) {
          rp.deliver(make_caf_error(errc::unavailable, refused));
          return;
        }
        answer_after_sync(self, rp, d);
      });
      return rp;
    },
    [self](dlq_retry_all_atom, const dlq_query& q) {
      return start_op(self, long_op::kind::retry_all, q);
    },
    [self](dlq_delete_atom, const std::string& id) -> caf::result<dead_letter> {
      auto d = load_free(self->state, id);
      if (!d)
        return d.error();
      auto rp = self->make_response_promise<dead_letter>();
      drop(self, *d, [self, rp, d = *d](const std::string& refused) mutable {
        if (!refused.empty()) {
          rp.deliver(
            make_caf_error(self->state.replicated() ? errc::unavailable : errc::storage, refused));
          return;
        }
        answer_after_sync(self, rp, d);
      });
      return rp;
    },
    [self](dlq_purge_atom, const std::string& agent) {
      return start_op(self, long_op::kind::purge, dlq_query{agent, {}, {}, 0});
    },
    [self](dlq_count_atom) { return self->state.count_of({}); },
    [self](dlq_step_atom, std::uint64_t token) {
      if (self->state.ops.count(token) > 0)
        step(self, token);
    },
    [self](dlq_synced_atom, std::uint64_t token, const std::string& failure) {
      auto& st = self->state;
      auto it = st.syncs.find(token);
      if (it == st.syncs.end())
        return;
      auto done = std::move(it->second);
      st.syncs.erase(it);
      done(failure);
    },
    [self](dlq_noted_atom, const dead_letter& d) {
      // A purge may have deleted it between the partition's commit and this
      // note: only what is stored is counted.
      auto& st = self->state;
      if (st.index.count(d.id) > 0)
        return;
      auto stored = st.deps.store->dlq_get(d.id);
      if (stored && *stored) {
        (void)st.add(d);
        st.show();
      }
    },
    [self](dlq_noted_atom, const std::string& id) {
      self->state.remove(id);
      self->state.show();
    },
    [self](tick_atom) {
      // Leadership moves without telling this actor: the gauge follows it.
      self->state.show();
      self->delayed_send(self, std::chrono::seconds{1}, tick_atom::value);
    },
  };
}

} // namespace

/// How long a caller waits for a DLQ operation. Retry-all and purge page
/// through the whole DLQ, so they get longer; they go on if the caller
/// stops waiting.
constexpr std::chrono::milliseconds quick_op_timeout{30000};
constexpr std::chrono::milliseconds long_op_timeout{600000};

dlq_client::dlq_client(caf::actor_system& sys, std::function<caf::actor()> current)
  : sys_(sys), current_(std::move(current)) {
}

template <class R, class... Ts>
void dlq_client::ask(std::chrono::milliseconds timeout, callback<R> done, Ts... xs) {
  actors::ask<R>(sys_, caf::actor_cast<dlq_actor>(current_()), timeout, "the DLQ actor",
                 std::move(done), xs...);
}

void dlq_client::list(const dlq_query& q, callback<dead_letter_page> done) {
  ask(quick_op_timeout, std::move(done), dlq_list_atom::value, q);
}

void dlq_client::get(const std::string& id, callback<dead_letter> done) {
  ask(quick_op_timeout, std::move(done), dlq_get_atom::value, id);
}

void dlq_client::retry(const std::string& id, callback<dead_letter> done) {
  ask(quick_op_timeout, std::move(done), dlq_retry_atom::value, id);
}

void dlq_client::retry_all(const dlq_query& q, callback<std::uint64_t> done) {
  ask(long_op_timeout, std::move(done), dlq_retry_all_atom::value, q);
}

void dlq_client::remove(const std::string& id, callback<dead_letter> done) {
  ask(quick_op_timeout, std::move(done), dlq_delete_atom::value, id);
}

void dlq_client::purge(const std::string& agent, callback<std::uint64_t> done) {
  ask(long_op_timeout, std::move(done), dlq_purge_atom::value, agent);
}

dlq_actor spawn_dlq(caf::actor_system& sys, dlq_deps deps) {
  return sys.spawn(dlq_behavior, std::move(deps));
}

dlq_actor spawn_dlq(caf::local_actor* parent, dlq_deps deps) {
  return parent->spawn<caf::monitored>(dlq_behavior, std::move(deps));
}

} // namespace nerve::actors
