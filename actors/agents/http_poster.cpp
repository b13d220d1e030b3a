// Blocking Beast POSTs on worker threads for `http` agents.
#include "actors/agents/http_poster.hpp"

#include <condition_variable>
#include <deque>
#include <mutex>
#include <thread>
#include <vector>

#include <boost/asio/connect.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>

namespace nerve::actors::agents {

namespace net = boost::asio;
namespace beast = boost::beast;
namespace bhttp = beast::http;

namespace {

struct target {
  std::string host;
  std::string port = "80";
  std::string path = "/";
};

target parse_url(const std::string& url) {
  target t;
  auto rest = url.substr(url.find("://") == std::string::npos ? 0 : url.find("://") + 3);
  auto slash = rest.find('/');
  auto hostport = rest.substr(0, slash);
  if (slash != std::string::npos)
    t.path = rest.substr(slash);
  auto colon = hostport.rfind(':');
  t.host = hostport.substr(0, colon);
  if (colon != std::string::npos)
    t.port = hostport.substr(colon + 1);
  return t;
}

/// Largest answer body read from an agent's endpoint.
constexpr std::size_t max_answer_bytes = 16u << 20;

} // namespace

struct http_poster::impl {
  target where;
  std::mutex mutex;
  std::condition_variable cv;
  struct job {
    std::string body;
    std::chrono::milliseconds timeout;
    std::function<void(http_answer)> done;
  };
  std::deque<job> jobs;
  bool stopping = false;
  std::vector<std::thread> threads;

  void run() {
    net::io_context ioc;
    for (;;) {
      job j;
      {
        std::unique_lock<std::mutex> guard{mutex};
        cv.wait(guard, [this] { return stopping || !jobs.empty(); });
        if (stopping && jobs.empty())
          return;
        j = std::move(jobs.front());
        jobs.pop_front();
      }
      j.done(send(ioc, j.body, j.timeout));
    }
  }

  http_answer send(net::io_context& ioc, const std::string& body,
                   std::chrono::milliseconds timeout) {
    http_answer a;
    try {
      net::ip::tcp::resolver resolver{ioc};
      beast::tcp_stream stream{ioc};
      stream.expires_after(timeout);
      stream.connect(resolver.resolve(where.host, where.port));
      bhttp::request<bhttp::string_body> req{bhttp::verb::post, where.path, 11};
      req.set(bhttp::field::host, where.host);
      req.set(bhttp::field::user_agent, "nerve/" NERVE_VERSION);
      req.set(bhttp::field::content_type, "application/json");
      req.body() = body;
      req.prepare_payload();
      bhttp::write(stream, req);
      beast::flat_buffer buffer;
      bhttp::response_parser<bhttp::string_body> parser;
      parser.body_limit(max_answer_bytes);
      bhttp::read(stream, buffer, parser);
      auto res = parser.release();
      a.status = res.result_int();
      a.body = std::move(res.body());
      beast::error_code ec;
      stream.socket().shutdown(net::ip::tcp::socket::shutdown_both, ec);
    } catch (const beast::system_error& e) {
      a.status = 0;
      a.timed_out = e.code() == beast::error::timeout;
      a.error = a.timed_out ? "timed out after " + std::to_string(timeout.count()) + " ms"
                            : e.code().message();
    }
    return a;
  }
};

http_poster::http_poster(const std::string& url, std::size_t workers)
  : impl_(std::make_unique<impl>()) {
  impl_->where = parse_url(url);
  for (std::size_t i = 0; i < std::max<std::size_t>(1, workers); ++i)
    impl_->threads.emplace_back([this] { impl_->run(); });
}

http_poster::~http_poster() {
  {
    std::lock_guard<std::mutex> guard{impl_->mutex};
    impl_->stopping = true;
  }
  impl_->cv.notify_all();
  for (auto& t : impl_->threads)
    t.join();
}

void http_poster::post(std::string body, std::chrono::milliseconds timeout,
                       std::function<void(http_answer)> done) {
  {
    std::lock_guard<std::mutex> guard{impl_->mutex};
    impl_->jobs.push_back({std::move(body), timeout, std::move(done)});
  }
  impl_->cv.notify_one();
}

} // namespace nerve::actors::agents
