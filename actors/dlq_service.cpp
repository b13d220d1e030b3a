// dlq_service: the node's DLQ calls, answered by the DLQ actor.
#include "actors/dlq_service.hpp"

#include <limits>

namespace nerve::actors::detail {

namespace {

dlq_view view_of(const dead_letter& d) {
  return {d.id,    d.agent, d.topic,    d.at.partition,    d.at.offset,
          d.event, d.error, d.attempts, d.first_failed_us, d.last_failed_us};
}

/// Answers `done` with the view of the entry the DLQ actor answered.
callback<dead_letter> as_view(callback<dlq_view> done) {
  return [done = std::move(done)](result<dead_letter> r) {
    if (!r)
      return done(tl::make_unexpected(r.error()));
    done(view_of(*r));
  };
}

} // namespace

void dlq_service::list(const std::string& agent, const std::string& topic,
                       const std::string& cursor, std::size_t limit, callback<dlq_page> done) {
  auto capped = static_cast<std::uint32_t>(
    std::min<std::size_t>(limit, std::numeric_limits<std::uint32_t>::max() - 1));
  client_.list(dlq_query{agent, topic, cursor, capped},
               [done = std::move(done)](result<dead_letter_page> r) {
                 if (!r)
                   return done(tl::make_unexpected(r.error()));
                 dlq_page page;
                 page.count = r->count;
                 page.next_cursor = std::move(r->next_cursor);
                 for (auto& d : r->entries)
                   page.entries.push_back(view_of(d));
                 done(std::move(page));
               });
}

void dlq_service::get(const std::string& id, callback<dlq_view> done) {
  client_.get(id, as_view(std::move(done)));
}

void dlq_service::retry(const std::string& id, callback<dlq_view> done) {
  client_.retry(id, as_view(std::move(done)));
}

void dlq_service::retry_all(const std::string& agent, const std::string& topic,
                            callback<std::uint64_t> done) {
  client_.retry_all(dlq_query{agent, topic, {}, 0}, std::move(done));
}

void dlq_service::remove(const std::string& id, callback<dlq_view> done) {
  client_.remove(id, as_view(std::move(done)));
}

void dlq_service::purge(const std::string& agent, callback<std::uint64_t> done) {
  client_.purge(agent, std::move(done));
}

} // namespace nerve::actors::detail
