// query_pool: the threads that run the node's blocking reads, probes, DLQ
// work and history pages, so none of it runs on an HTTP thread or holds up
// the partitions on CAF's scheduler.
#pragma once

#include <cstddef>
#include <functional>
#include <memory>
#include <mutex>

namespace nerve::actors::detail {

class query_pool {
public:
  explicit query_pool(std::size_t threads);
  ~query_pool();
  query_pool(const query_pool&) = delete;
  query_pool& operator=(const query_pool&) = delete;

  /// Runs `job` on a pool thread. Once the pool is closed, `job` is dropped
  /// unrun: a request's callback then answers 503 as it is destroyed.
  void post(std::function<void()> job);

  /// Takes no job after this; waits for the ones queued or running.
  void close();

private:
  struct impl;
  std::unique_ptr<impl> impl_;
  std::mutex mutex_;
  bool closed_ = false; ///< mutex_
};

} // namespace nerve::actors::detail
