// dlq_service: DLQ entries read, retried and deleted on the query pool.
#include "actors/dlq_service.hpp"

#include <memory>

namespace nerve::actors::detail {

namespace {

dlq_view view_of(const persistence::dlq_entry& e) {
  return {e.id,    e.agent, e.topic,    e.partition,       e.offset,
          e.event, e.error, e.attempts, e.first_failed_us, e.last_failed_us};
}

} // namespace

dlq_service::dlq_service(persistence::delivery_store& store, const routing& routes,
                         std::atomic<std::int64_t>& size, bool sync_writes, query_pool& pool,
                         actor_sender& sender)
  : store_(store), routes_(routes), size_(size), sync_writes_(sync_writes), pool_(pool),
    sender_(sender) {
}

void dlq_service::list(const std::string& agent, const std::string& topic,
                       const std::string& cursor, std::size_t limit, callback<dlq_page> done) {
  pool_.post([this, agent, topic, cursor, limit, done = std::move(done)] {
    auto all = store_.dlq_list(agent, topic, "", ~std::size_t{0});
    if (!all)
      return done(tl::make_unexpected(from_storage(all.error())));
    dlq_page page;
    page.count = all->size();
    for (auto& e : *all) {
      if (!cursor.empty() && e.id <= cursor)
        continue;
      if (page.entries.size() >= limit) {
        if (!page.entries.empty())
          page.next_cursor = page.entries.back().id;
        break;
      }
      page.entries.push_back(view_of(e));
    }
    done(std::move(page));
  });
}

void dlq_service::get(const std::string& id, callback<dlq_view> done) {
  pool_.post([this, id, done = std::move(done)] {
    if (auto e = load(id, done))
      done(view_of(*e));
  });
}

void dlq_service::retry(const std::string& id, callback<dlq_view> done) {
  pool_.post([this, id, done = std::move(done)] {
    auto e = load(id, done);
    if (!e)
      return;
    retry_entry(*e, [done, v = view_of(*e)](const std::string& err) {
      if (!err.empty())
        return done(tl::make_unexpected(error{errc::unavailable, err}));
      done(v);
    });
  });
}

void dlq_service::retry_all(const std::string& agent, const std::string& topic,
                            callback<std::uint64_t> done) {
  pool_.post([this, agent, topic, done = std::move(done)] {
    auto all = store_.dlq_list(agent, topic, "", ~std::size_t{0});
    if (!all)
      return done(tl::make_unexpected(from_storage(all.error())));
    struct join {
      std::atomic<std::size_t> left{0};
      std::atomic<std::uint64_t> ok{0};
    };
    auto j = std::make_shared<join>();
    j->left = all->size() + 1;
    auto finish = [j, done] {
      if (j->left.fetch_sub(1) == 1)
        done(j->ok.load());
    };
    for (auto& e : *all)
      retry_entry(e, [j, finish](const std::string& err) {
        if (err.empty())
          ++j->ok;
        finish();
      });
    finish();
  });
}

void dlq_service::remove(const std::string& id, callback<dlq_view> done) {
  pool_.post([this, id, done = std::move(done)] {
    auto e = load(id, done);
    if (!e)
      return;
    persistence::state_batch b;
    b.delete_dlq(id);
    if (auto ok = store_.commit(b, sync_writes_); !ok)
      return done(tl::make_unexpected(from_storage(ok.error())));
    --size_;
    done(view_of(*e));
  });
}

void dlq_service::purge(const std::string& agent, callback<std::uint64_t> done) {
  pool_.post([this, agent, done = std::move(done)] {
    auto all = store_.dlq_list(agent, "", "", ~std::size_t{0});
    if (!all)
      return done(tl::make_unexpected(from_storage(all.error())));
    persistence::state_batch b;
    for (auto& e : *all)
      b.delete_dlq(e.id);
    if (auto ok = store_.commit(b, sync_writes_); !ok)
      return done(tl::make_unexpected(from_storage(ok.error())));
    size_ -= static_cast<std::int64_t>(all->size());
    done(static_cast<std::uint64_t>(all->size()));
  });
}

std::optional<persistence::dlq_entry> dlq_service::load(const std::string& id,
                                                        const callback<dlq_view>& done) {
  auto e = store_.dlq_get(id);
  if (!e) {
    done(tl::make_unexpected(from_storage(e.error())));
    return std::nullopt;
  }
  if (!*e)
    done(tl::make_unexpected(error{errc::not_found, "no DLQ entry " + id}));
  return std::move(*e);
}

void dlq_service::retry_entry(const persistence::dlq_entry& e,
                              std::function<void(std::string)> reply) {
  auto route = routes_.find(e.topic);
  if (!route || e.partition >= route->slots.size())
    return reply("topic " + e.topic + " is not open");
  auto r = std::make_shared<std::function<void(std::string)>>(std::move(reply));
  if (!sender_.redeliver(*route, e.partition, e.agent, e.offset, e.id, r))
    (*r)("partition " + e.topic + "/" + std::to_string(e.partition) + " is restarting");
}

} // namespace nerve::actors::detail
