// The DLQ actor (see dlq_actor.hpp). Long operations (retry-all, purge) run
// one page per message, so the partitions sharing the scheduler thread are
// never held up for more than a page, and the DLQ is never read whole.
#include "actors/dlq_actor.hpp"

#include "actors/ask.hpp"

#include <map>
#include <optional>
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
  /// Entries per (agent, topic): what list counts with filters, without a scan.
  std::map<std::pair<std::string, std::string>, std::uint64_t> counts;
  std::uint64_t total = 0;
  /// Ids with a retry or delete in flight: a second operation on one of them
  /// is refused, so an entry is never removed (and uncounted) twice.
  std::unordered_set<std::string> busy;
  std::unordered_map<std::uint64_t, long_op> ops;
  /// Answers waiting for the sync that covers their write.
  std::unordered_map<std::uint64_t, std::function<void(std::string)>> syncs;
  std::uint64_t next_token = 1;
  static inline const char* name = "dlq";

  void add(const dead_letter& d) {
    ++counts[{d.agent, d.topic}];
    ++total;
    deps.size_gauge->store(total);
  }

  void remove(const dead_letter& d) {
    auto it = counts.find({d.agent, d.topic});
    NERVE_ASSERT(it != counts.end() && it->second > 0 && total > 0,
                 "a DLQ entry is removed only once, and only when counted");
    if (--it->second == 0)
      counts.erase(it);
    --total;
    deps.size_gauge->store(total);
  }

  [[nodiscard]] std::uint64_t count_of(const dlq_query& q) const {
    std::uint64_t n = 0;
    for (auto& [key, c] : counts)
      if ((q.agent.empty() || key.first == q.agent) && (q.topic.empty() || key.second == q.topic))
        n += c;
    return n;
  }
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
      st.add(letter_of(e));
    if (page->size() < 1000)
      break;
    after = page->back().id;
  }
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
    st.remove(d);
  return std::nullopt;
}

/// The stored entry `id`, or the error to answer.
caf::expected<dead_letter> load(dlq_state& st, const std::string& id) {
  auto e = st.deps.store->dlq_get(id);
  if (!e)
    return storage_error(e.error());
  if (!*e)
    return make_caf_error(errc::not_found, "no DLQ entry " + id);
  return letter_of(**e);
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

/// Asks the entry's partition to deliver it again; `done` gets "" once the
/// partition queued it (the entry is then deleted), else why not.
void redeliver(self_ptr self, const dead_letter& d, std::function<void(std::string)> done) {
  auto& st = self->state;
  auto target = st.deps.find_partition(d.topic, d.at.partition);
  if (!target)
    return done("partition " + d.topic + "/" + std::to_string(d.at.partition)
                + " is not open or is restarting");
  st.busy.insert(d.id);
  self
    ->request(target, st.deps.redeliver_timeout, redeliver_atom::value, d.agent, d.at.offset, d.id)
    .then(
      [self, d, done](const std::string& refused) {
        auto& st = self->state;
        st.busy.erase(d.id);
        if (!refused.empty())
          return done(refused);
        // The partition wrote its pending record first: a crash from here
        // on redelivers the event and may keep the entry, never loses both.
        if (auto failed = delete_entries(st, {d}))
          return done(from_caf_error(*failed).message);
        done({});
      },
      [self, d, done](caf::error& e) {
        self->state.busy.erase(d.id);
        done("partition " + d.topic + "/" + std::to_string(d.at.partition)
             + " did not answer: " + caf::to_string(e));
      });
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
    if (st.busy.count(e.id) == 0) // another operation has it
      todo.push_back(letter_of(e));
  if (op.what == long_op::kind::purge) {
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
  for (auto& d : todo)
    redeliver(self, d, [self, token](const std::string& refused) {
      auto& op = self->state.ops.at(token);
      --op.in_flight;
      if (refused.empty())
        ++op.done;
      page_done(self, token);
    });
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

/// Stores `d`; answers whether it is a new entry.
caf::expected<bool> put(dlq_state& st, const dead_letter& d) {
  auto had = st.deps.store->dlq_get(d.id);
  if (!had)
    return storage_error(had.error());
  persistence::state_batch b;
  b.put_dlq(entry_of(d));
  // Not synced here: the consumer group marks the delivery done only after
  // this answer, so the WAL holds the entry before the cursor moves past it.
  if (auto ok = st.deps.store->commit(b, false); !ok)
    return storage_error(ok.error());
  if (!*had)
    st.add(d);
  return !*had;
}

dlq_actor::behavior_type dlq_behavior(self_ptr self, dlq_deps deps) {
  NERVE_ASSERT(deps.log != nullptr && deps.store != nullptr && deps.size_gauge != nullptr);
  self->state.deps = std::move(deps);
  recount(self->state);
  if (self->state.deps.counted != nullptr)
    self->state.deps.counted->store(true);
  return {
    [self](dlq_put_atom, const dead_letter& d) -> caf::result<bool> {
      auto added = put(self->state, d);
      if (!added)
        return added.error();
      return *added;
    },
    [self](dlq_list_atom, const dlq_query& q) -> caf::result<dead_letter_page> {
      auto& st = self->state;
      auto got = st.deps.store->dlq_list(q.agent, q.topic, q.cursor, q.limit + 1ULL);
      if (!got)
        return storage_error(got.error());
      dead_letter_page page;
      page.count = st.count_of(q);
      for (auto& e : *got) {
        if (page.entries.size() == q.limit) {
          page.next_cursor = page.entries.empty() ? std::string{} : page.entries.back().id;
          break;
        }
        page.entries.push_back(letter_of(e));
      }
      return page;
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
      if (auto failed = delete_entries(self->state, {*d}))
        return *failed;
      auto rp = self->make_response_promise<dead_letter>();
      answer_after_sync(self, rp, *d);
      return rp;
    },
    [self](dlq_purge_atom, const std::string& agent) {
      return start_op(self, long_op::kind::purge, dlq_query{agent, {}, {}, 0});
    },
    [self](dlq_count_atom) { return self->state.total; },
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
