// query_pool: a Boost.Asio thread pool that can be closed.
#include "actors/query_pool.hpp"

#include <boost/asio/post.hpp>
#include <boost/asio/thread_pool.hpp>

#include "persistence/event_log.hpp"

namespace nerve::actors::detail {

struct query_pool::impl {
  explicit impl(std::size_t threads) : pool(threads) {}
  boost::asio::thread_pool pool;
};

query_pool::query_pool(std::size_t threads) : impl_(std::make_unique<impl>(threads)) {
}

query_pool::~query_pool() {
  close();
}

void query_pool::post(std::function<void()> job) {
  std::lock_guard<std::mutex> guard{mutex_};
  if (!closed_)
    boost::asio::post(impl_->pool, [job = std::move(job)] {
      persistence::quiet_perf_counters(); // the pool's reads (histories, replays, DLQ pages)
      job();
    });
}

void query_pool::close() {
  {
    std::lock_guard<std::mutex> guard{mutex_};
    closed_ = true;
  }
  impl_->pool.join();
}

} // namespace nerve::actors::detail
