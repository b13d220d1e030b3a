// replay_service: replays planned, read and cancelled for the HTTP layer;
// history pages served from the read-ahead when they were built in time.
#include "actors/replay_service.hpp"

#include <memory>
#include <optional>
#include <utility>

#include <spdlog/spdlog.h>

#include "actors/replay_plan.hpp"
#include "actors/replay_storage.hpp"
#include "persistence/ids.hpp"

namespace nerve::actors::detail {

namespace {

std::string history_key(const std::string& id, const std::string& agent, const std::string& cursor,
                        std::size_t limit) {
  return id + '\n' + agent + '\n' + cursor + '\n' + std::to_string(limit);
}

} // namespace

replay_service::replay_service(const node_context& ctx, query_pool& pool, actor_sender& sender)
  : ctx_(ctx), pool_(pool), sender_(sender) {
}

void replay_service::create(replay_request req, callback<replay_view> done) {
  for (auto& name : req.agents)
    if (!find_agent(ctx_, name))
      return done(tl::make_unexpected(error{errc::not_found, "no agent named " + name}));
  sender_.run_detached([this, req = std::move(req), done = std::move(done)] {
    auto now = ctx_.log->opts().clock();
    auto id = req.id.empty() ? persistence::new_uuid_v7(now) : req.id;
    if (!req.id.empty() && load_replay(*ctx_.store, id))
      return done(tl::make_unexpected(error{errc::conflict, "replay " + id + " exists"}));
    auto record = plan_replay(ctx_, req, id, now);
    if (!record)
      return done(tl::make_unexpected(record.error()));
    if (auto failed = store_replay(*ctx_.store, *record, true))
      return done(tl::make_unexpected(std::move(*failed)));
    spdlog::info("replay={}: planned ({}): {} deliveries", id, to_string(record->mode),
                 record->events_total);
    if (record->state == replay_state::running && sender_.runner_running())
      sender_.start_replay(id);
    done(replay_view_of(*record));
  });
}

void replay_service::get(const std::string& id, callback<replay_view> done) {
  pool_.post([this, id, done = std::move(done)] {
    auto record = load_replay(*ctx_.store, id);
    if (!record)
      return done(tl::make_unexpected(record.error()));
    done(replay_view_of(*record));
  });
}

void replay_service::list(callback<std::vector<replay_view>> done) {
  pool_.post([this, done = std::move(done)] {
    auto stored = load_replays(*ctx_.store);
    if (!stored)
      return done(tl::make_unexpected(stored.error()));
    std::vector<replay_view> out;
    for (auto& record : *stored)
      out.push_back(replay_view_of(record));
    done(std::move(out));
  });
}

void replay_service::history(const std::string& id, const std::string& agent,
                             const std::string& cursor, std::size_t limit,
                             callback<history_page> done) {
  std::optional<result<history_page>> ahead;
  if (readahead_.take(history_key(id, agent, cursor, limit), ahead, done)) {
    if (ahead)
      serve_history(id, agent, limit, std::move(*ahead), done);
    return;
  }
  pool_.post([this, id, agent, cursor, limit, done = std::move(done)]() mutable {
    serve_history(id, agent, limit, build_history(id, agent, cursor, limit), done);
  });
}

void replay_service::cancel(const std::string& id, callback<replay_view> done) {
  if (!sender_.runner_running())
    return get(id, std::move(done)); // not running: nothing to stop
  // The runner cancels it (see cancel_replay). Answered with the replay's
  // view once it is stopped, or when a message is dropped because the
  // replay ended first.
  struct answer_once {
    std::function<void()> fn;
    void operator()() { std::exchange(fn, nullptr)(); }
    ~answer_once() {
      if (fn)
        fn();
    }
  };
  auto once = std::make_shared<answer_once>();
  once->fn = [this, id, done = std::move(done)] { get(id, done); };
  auto reply
    = std::make_shared<std::function<void(std::string)>>([once](const std::string&) { (*once)(); });
  sender_.cancel_replay(id, std::move(reply));
}

result<history_page> replay_service::build_history(const std::string& id, const std::string& agent,
                                                   const std::string& cursor, std::size_t limit) {
  auto record = load_replay(*ctx_.store, id);
  if (!record)
    return tl::make_unexpected(record.error());
  return detail::replay_history(ctx_, *record, agent, cursor, limit);
}

/// Answers with a page, having started to build the ones after it: the
/// next one, and the one after that at once when its cursor can be known
/// without reading (then both are built side by side). Not while the
/// replay runs: it stores outcomes as it goes, which a page built ahead
/// would miss, also after the replay says it is done.
void replay_service::serve_history(const std::string& id, const std::string& agent,
                                   std::size_t limit, result<history_page> page,
                                   const callback<history_page>& done) {
  std::string next = page ? page->next_cursor : std::string{};
  std::optional<replay_record> record;
  if (!next.empty())
    if (auto r = load_replay(*ctx_.store, id); r && r->state != replay_state::running)
      record = std::move(*r);
  if (!record)
    next.clear();
  read_ahead(id, agent, limit, next, 2);
  done(std::move(page));
  if (next.empty())
    return;
  if (auto after = detail::history_cursor_after(ctx_, *record, agent, next, limit))
    read_ahead(id, agent, limit, *after, 1);
}

/// Builds the page at `cursor` ahead of its request, and then the next
/// `depth - 1` pages while nobody asked for them yet.
void replay_service::read_ahead(const std::string& id, const std::string& agent, std::size_t limit,
                                const std::string& cursor, int depth) {
  if (cursor.empty() || depth <= 0)
    return;
  auto key = history_key(id, agent, cursor, limit);
  if (!readahead_.start(key))
    return;
  pool_.post([this, id, agent, limit, key, cursor, depth] {
    auto built = build_history(id, agent, cursor, limit);
    std::string next = built ? built->next_cursor : std::string{};
    if (auto waiter = readahead_.finish(key, built))
      return serve_history(id, agent, limit, std::move(built), waiter);
    read_ahead(id, agent, limit, next, depth - 1);
  });
}

} // namespace nerve::actors::detail
