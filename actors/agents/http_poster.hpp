// The client side of `http` agents: POSTs events to a URL from a small pool
// of worker threads, with a deadline per request. Beast stays in its .cpp.
#pragma once

#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace nerve::actors::agents {

struct http_answer {
  unsigned status = 0; ///< 0 when no answer came
  std::string body;
  std::string error;      ///< set when no answer came
  bool timed_out = false; ///< no answer came within the deadline
};

class http_poster {
public:
  /// `workers` threads, so up to that many requests run at once.
  http_poster(const std::string& url, std::size_t workers);
  ~http_poster();
  http_poster(const http_poster&) = delete;
  http_poster& operator=(const http_poster&) = delete;

  /// Queues a POST of `body` (JSON) with `headers` besides nerve's own;
  /// `done` runs on a worker thread.
  void post(std::string body, std::chrono::milliseconds timeout,
            std::function<void(http_answer)> done,
            std::vector<std::pair<std::string, std::string>> headers = {});

private:
  struct impl;
  std::unique_ptr<impl> impl_;
};

} // namespace nerve::actors::agents
