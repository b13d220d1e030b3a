// publish_load: the closed-loop load generator of bench/publish.
//
// Drives either nerve (POST /v1/topics/{topic}/events over keep-alive
// HTTP/1.1) or redis-server (XADD stream * p <payload>) with the same model:
// N client connections, each sending one event per request and waiting for
// the answer before sending the next, all on ONE thread running one Asio
// event loop (the generator shares the machine's cores with the server, so
// it must cost as little CPU as possible: no thread per connection, requests
// pre-built once per connection, answers split by Beast's HTTP parser and only
// a sample of their JSON parsed fully; arguments by CLI11).
//
// Phases: connect all clients, warm up for --warmup seconds, then measure
// for --duration seconds. Only answers that arrive inside the measured
// window and are successes (HTTP 201 / an XADD stream id) count. After the
// run it reads back a sample of the stored events and checks their payload,
// and checks that the server holds exactly as many events as were
// acknowledged.
//
// Prints one JSON object on stdout (events_per_s, p50_ms, p99_ms, ...), and
// a human summary on stderr.
#include <algorithm>
#include <array>
#include <atomic>
#include <cctype>
#include <chrono>
#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <sys/resource.h>

#include <CLI/CLI.hpp>
#include <boost/asio.hpp>
#include <boost/beast/http.hpp>
#include <hiredis/hiredis.h>
#include <nlohmann/json.hpp>

namespace net = boost::asio;
namespace bhttp = boost::beast::http;
using tcp = net::ip::tcp;
using clock_type = std::chrono::steady_clock;
using json = nlohmann::json;

namespace {

// -- options ------------------------------------------------------------------

struct options {
  std::string target; ///< nerve | redis
  std::string host = "127.0.0.1";
  unsigned port = 0;
  unsigned clients = 16;
  double duration_s = 10;
  double warmup_s = 2;
  std::string name = "bench"; ///< nerve topic / redis stream key
  std::size_t payload_bytes = 256;
  std::string token; ///< nerve bearer token, if any
  unsigned verify_samples = 32;
};

[[noreturn]] void usage(const std::string& why) {
  std::fprintf(stderr, "publish_load: %s (see publish_load --help)\n", why.c_str());
  std::exit(2);
}

options parse_args(int argc, char** argv) {
  options o;
  CLI::App app{"publish_load: the closed-loop load generator of bench/publish"};
  app.add_option("--target", o.target, "nerve or redis")->required();
  app.add_option("--host", o.host, "server address");
  app.add_option("--port", o.port, "server port")->required();
  app.add_option("--clients", o.clients, "concurrent connections");
  app.add_option("--duration", o.duration_s, "measured seconds");
  app.add_option("--warmup", o.warmup_s, "warm-up seconds");
  app.add_option("--name", o.name, "nerve topic or Redis stream key");
  app.add_option("--payload-bytes", o.payload_bytes, "stored payload size");
  app.add_option("--token", o.token, "nerve bearer token");
  app.add_option("--verify-samples", o.verify_samples, "events read back after the run");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == 0)
      std::exit(app.exit(e));
    usage(e.what());
  }
  if (o.target != "nerve" && o.target != "redis")
    usage("--target must be nerve or redis");
  if (o.port == 0 || o.port > 65535)
    usage("--port is required");
  if (o.clients == 0 || o.duration_s <= 0 || o.warmup_s < 0)
    usage("--clients must be >= 1, --duration > 0, --warmup >= 0");
  if (o.payload_bytes < 16)
    usage("--payload-bytes must be >= 16");
  for (char c : o.name)
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '-' || c == '_'))
      usage("--name must be [A-Za-z0-9._-]+");
  return o;
}

// -- the payload --------------------------------------------------------------

/// Printable, JSON-safe, deterministic filler of exactly n bytes.
std::string filler(std::size_t n) {
  static const char alphabet[] = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
  std::string s(n, 'x');
  for (std::size_t i = 0; i < n; ++i)
    s[i] = alphabet[(i * 7 + 3) % (sizeof alphabet - 1)];
  return s;
}

/// nerve's stored "data" value, exactly payload_bytes long: {"p":"...."}.
std::string nerve_data(std::size_t payload_bytes) {
  return "{\"p\":\"" + filler(payload_bytes - 8) + "\"}";
}

// -- tiny helpers -------------------------------------------------------------

bool valid_stream_id(std::string_view id) {
  auto dash = id.find('-');
  if (dash == std::string_view::npos || dash == 0 || dash + 1 == id.size())
    return false;
  for (std::size_t i = 0; i < id.size(); ++i)
    if (i != dash && !std::isdigit(static_cast<unsigned char>(id[i])))
      return false;
  return true;
}

/// One HTTP/1.1 response split off the front of a byte buffer.
struct http_answer {
  unsigned status = 0;
  bool close = false;
  std::string body;
  std::size_t consumed = 0;
};

/// Parses one response at the front of `buf` with Beast's parser. Returns
/// false while incomplete; `bad` says the bytes are not an HTTP response.
bool parse_http(std::string_view buf, http_answer& out, bool& bad) {
  bad = false;
  bhttp::response_parser<bhttp::string_body> parser;
  parser.header_limit(16384);
  parser.body_limit(16u << 20);
  parser.eager(true);
  boost::beast::error_code ec;
  std::size_t used = 0;
  while (!parser.is_done()) {
    used += parser.put(net::buffer(buf.data() + used, buf.size() - used), ec);
    if (ec == bhttp::error::need_more)
      return false;
    if (ec) {
      bad = true;
      return false;
    }
  }
  auto& msg = parser.get();
  out.status = msg.result_int();
  out.close = !msg.keep_alive();
  out.body = std::move(msg.body());
  out.consumed = used;
  return true;
}

// -- the shared run state -----------------------------------------------------

struct run_state {
  options opt;
  clock_type::time_point start, window_begin, window_end;
  std::uint64_t ok_total = 0;  ///< successes in all phases
  std::uint64_t ok_window = 0; ///< successes answered inside the window
  std::uint64_t errors = 0;    ///< failed answers (wrong status, error reply)
  std::uint64_t io_errors = 0; ///< connection failures
  std::uint64_t sampled = 0;   ///< answers checked in full
  std::uint64_t sample_failures = 0;
  std::vector<std::uint32_t> latencies_us; ///< window only
  std::vector<std::string> sample_ids;     ///< ids read back after the run
  std::string first_error;
  unsigned open_clients = 0;
  std::function<void()> all_done; ///< called when the last connection finished

  void note_error(std::string what) {
    if (first_error.empty())
      first_error = std::move(what);
  }
};

// -- one client connection ----------------------------------------------------

class client : public std::enable_shared_from_this<client> {
public:
  client(net::io_context& ioc, run_state& st, unsigned index)
    : socket_(ioc), st_(st), index_(index) {
    if (st_.opt.target == "redis")
      reader_ = redisReaderCreate();
  }

  ~client() {
    if (reader_ != nullptr)
      redisReaderFree(reader_);
  }

  void connect(const tcp::endpoint& ep) {
    boost::system::error_code ec;
    socket_.connect(ep, ec);
    if (ec) {
      std::fprintf(stderr, "publish_load: cannot connect to %s:%u: %s\n", st_.opt.host.c_str(),
                   st_.opt.port, ec.message().c_str());
      std::exit(1);
    }
    socket_.set_option(tcp::no_delay(true));
    build_request();
  }

  void start() {
    ++st_.open_clients;
    send();
  }

private:
  void build_request() {
    auto& o = st_.opt;
    if (o.target == "nerve") {
      std::string body = "{\"data\":" + nerve_data(o.payload_bytes) + "}";
      request_ = "POST /v1/topics/" + o.name + "/events HTTP/1.1\r\nHost: " + o.host + ":"
                 + std::to_string(o.port)
                 + "\r\nContent-Type: application/json\r\nConnection: keep-alive\r\n";
      if (!o.token.empty())
        request_ += "Authorization: Bearer " + o.token + "\r\n";
      request_ += "Content-Length: " + std::to_string(body.size()) + "\r\n\r\n" + body;
    } else {
      auto payload = filler(o.payload_bytes);
      const char* argv[] = {"XADD", o.name.c_str(), "*", "p", payload.c_str()};
      const std::size_t lens[] = {4, o.name.size(), 1, 1, payload.size()};
      char* cmd = nullptr;
      int n = redisFormatCommandArgv(&cmd, 5, argv, lens);
      if (n < 0) {
        std::fprintf(stderr, "publish_load: cannot format XADD\n");
        std::exit(1);
      }
      request_.assign(cmd, static_cast<std::size_t>(n));
      redisFreeCommand(cmd);
    }
  }

  void send() {
    sent_at_ = clock_type::now();
    net::async_write(socket_, net::buffer(request_),
                     [self = shared_from_this()](boost::system::error_code ec, std::size_t) {
                       if (ec)
                         return self->fail("write: " + ec.message());
                       self->read();
                     });
  }

  void read() {
    socket_.async_read_some(net::buffer(chunk_), [self = shared_from_this()](
                                                   boost::system::error_code ec, std::size_t n) {
      if (ec)
        return self->fail("read: " + ec.message());
      self->on_bytes(n);
    });
  }

  void on_bytes(std::size_t n) {
    if (reader_ != nullptr)
      return on_redis_bytes(n);
    inbox_.append(chunk_.data(), n);
    http_answer a;
    bool bad = false;
    if (!parse_http(inbox_, a, bad)) {
      if (bad)
        return fail("unparsable HTTP answer: " + inbox_.substr(0, 200));
      return read();
    }
    bool good = a.status == 201;
    if (good && a.body.rfind("{\"events\":[{", 0) != 0)
      good = false;
    if (good && should_sample())
      good = check_nerve_answer(a.body);
    if (!good)
      st_.note_error("HTTP " + std::to_string(a.status) + ": "
                     + std::string{a.body.substr(0, 300)});
    bool close = a.close;
    inbox_.erase(0, a.consumed);
    answered(good);
    if (close)
      return fail("the server closed the connection");
    next();
  }

  void on_redis_bytes(std::size_t n) {
    if (redisReaderFeed(reader_, chunk_.data(), n) != REDIS_OK)
      return fail("redis reader: feed failed");
    void* raw = nullptr;
    if (redisReaderGetReply(reader_, &raw) != REDIS_OK)
      return fail(std::string{"redis protocol error: "} + reader_->errstr);
    if (raw == nullptr)
      return read();
    auto* reply = static_cast<redisReply*>(raw);
    bool good = reply->type == REDIS_REPLY_STRING
                && valid_stream_id({reply->str, static_cast<std::size_t>(reply->len)});
    if (!good) {
      st_.note_error(reply->type == REDIS_REPLY_ERROR
                       ? std::string{"redis: "} + reply->str
                       : "redis: unexpected XADD reply type " + std::to_string(reply->type));
    } else if (should_sample()) {
      ++st_.sampled;
      if (st_.sample_ids.size() < st_.opt.verify_samples)
        st_.sample_ids.emplace_back(reply->str, static_cast<std::size_t>(reply->len));
    }
    freeReplyObject(reply);
    answered(good);
    next();
  }

  /// The first answer of every connection, then about one in 1000.
  bool should_sample() { return answers_++ == 0 || (answers_ + index_) % 1000 == 0; }

  /// Full check of one answer: {"events":[{"id":..,"topic":..,"partition":..,
  /// "offset":..,"time":..,"duplicate":false}]}.
  bool check_nerve_answer(std::string_view body) {
    ++st_.sampled;
    auto& o = st_.opt;
    auto j = json::parse(body, nullptr, false);
    bool ok
      = j.is_object() && j.contains("events") && j["events"].is_array() && j["events"].size() == 1;
    if (ok) {
      auto& e = j["events"][0];
      ok = e.value("id", json()).is_string() && !e["id"].get<std::string>().empty()
           && e.value("topic", json()) == o.name
           && e.value("partition", json()).is_number_unsigned()
           && e.value("offset", json()).is_number_unsigned() && e.value("time", json()).is_string()
           && e.value("duplicate", json()) == false;
      if (ok && st_.sample_ids.size() < o.verify_samples)
        st_.sample_ids.push_back(e["id"].get<std::string>());
    }
    if (!ok)
      ++st_.sample_failures;
    return ok;
  }

  void answered(bool good) {
    auto now = clock_type::now();
    if (!good) {
      ++st_.errors;
      return;
    }
    ++st_.ok_total;
    if (now >= st_.window_begin && now < st_.window_end) {
      ++st_.ok_window;
      st_.latencies_us.push_back(static_cast<std::uint32_t>(
        std::chrono::duration_cast<std::chrono::microseconds>(now - sent_at_).count()));
    }
  }

  void next() {
    if (clock_type::now() >= st_.window_end)
      return finish();
    send();
  }

  void fail(const std::string& why) {
    ++st_.io_errors;
    st_.note_error(why);
    finish();
  }

  void finish() {
    if (done_)
      return;
    done_ = true;
    if (--st_.open_clients == 0 && st_.all_done)
      st_.all_done();
    boost::system::error_code ec;
    socket_.shutdown(tcp::socket::shutdown_both, ec);
    socket_.close(ec);
  }

  tcp::socket socket_;
  run_state& st_;
  unsigned index_;
  std::string request_;
  std::array<char, 16384> chunk_{};
  std::string inbox_;
  redisReader* reader_ = nullptr;
  clock_type::time_point sent_at_;
  std::uint64_t answers_ = 0;
  bool done_ = false;
};

// -- after the run: read back and count ----------------------------------------

/// One blocking HTTP/1.1 GET on a fresh connection (not timed).
std::optional<std::pair<unsigned, std::string>> http_get(const options& o,
                                                         const std::string& target) {
  try {
    net::io_context ioc;
    tcp::socket s{ioc};
    s.connect({net::ip::make_address(o.host), static_cast<unsigned short>(o.port)});
    std::string req = "GET " + target + " HTTP/1.1\r\nHost: " + o.host + "\r\n";
    if (!o.token.empty())
      req += "Authorization: Bearer " + o.token + "\r\n";
    req += "Connection: close\r\n\r\n";
    net::write(s, net::buffer(req));
    std::string in;
    std::array<char, 65536> buf{};
    boost::system::error_code ec;
    for (;;) {
      auto n = s.read_some(net::buffer(buf), ec);
      in.append(buf.data(), n);
      http_answer a;
      bool bad = false;
      if (parse_http(in, a, bad))
        return std::make_pair(a.status, std::string{a.body});
      if (bad || ec)
        return std::nullopt;
    }
  } catch (const std::exception&) {
    return std::nullopt;
  }
}

struct verification {
  std::uint64_t checked = 0;
  std::uint64_t failed = 0;
  std::optional<std::uint64_t> stored; ///< events the server holds under the name
  std::string note;
};

verification verify_nerve(const run_state& st) {
  verification v;
  auto expect = json::parse(nerve_data(st.opt.payload_bytes));
  for (auto& id : st.sample_ids) {
    ++v.checked;
    // {"event":{"id":..,"topic":..,...,"data":{"p":".."}},"deliveries":[]}
    auto got = http_get(st.opt, "/v1/events/" + id);
    json j = got && got->first == 200 ? json::parse(got->second, nullptr, false) : json();
    bool ok = j.is_object() && j.contains("event") && j["event"].is_object()
              && j["event"].value("id", json()) == id
              && j["event"].value("topic", json()) == st.opt.name
              && j["event"].value("data", json()) == expect;
    if (!ok) {
      ++v.failed;
      if (v.note.empty())
        v.note = "event " + id + " read back wrong: "
                 + (got ? std::to_string(got->first) + " " + got->second.substr(0, 300)
                        : std::string{"no answer"});
    }
  }
  // {"topics":[{"name":..,"events":N,...},...]}
  if (auto got = http_get(st.opt, "/v1/topics"); got && got->first == 200) {
    auto j = json::parse(got->second, nullptr, false);
    if (j.is_object() && j.contains("topics") && j["topics"].is_array())
      for (auto& t : j["topics"])
        if (t.is_object() && t.value("name", json()) == st.opt.name
            && t.value("events", json()).is_number_unsigned())
          v.stored = t["events"].get<std::uint64_t>();
  }
  return v;
}

verification verify_redis(const run_state& st) {
  verification v;
  timeval tv{10, 0};
  redisContext* c = redisConnectWithTimeout(st.opt.host.c_str(), static_cast<int>(st.opt.port), tv);
  if (c == nullptr || c->err) {
    v.note = "cannot connect for verification";
    if (c != nullptr)
      redisFree(c);
    return v;
  }
  auto expect = filler(st.opt.payload_bytes);
  for (auto& id : st.sample_ids) {
    ++v.checked;
    auto* r = static_cast<redisReply*>(redisCommand(c, "XRANGE %b %b %b", st.opt.name.data(),
                                                    st.opt.name.size(), id.data(), id.size(),
                                                    id.data(), id.size()));
    // [[id, [p, payload]]]
    bool ok
      = r != nullptr && r->type == REDIS_REPLY_ARRAY && r->elements == 1
        && r->element[0]->type == REDIS_REPLY_ARRAY && r->element[0]->elements == 2
        && r->element[0]->element[1]->type == REDIS_REPLY_ARRAY
        && r->element[0]->element[1]->elements == 2
        && std::string_view{r->element[0]->element[1]->element[0]->str,
                            static_cast<std::size_t>(r->element[0]->element[1]->element[0]->len)}
             == "p"
        && std::string_view{r->element[0]->element[1]->element[1]->str,
                            static_cast<std::size_t>(r->element[0]->element[1]->element[1]->len)}
             == expect;
    if (!ok) {
      ++v.failed;
      if (v.note.empty())
        v.note = "entry " + id + " read back wrong";
    }
    if (r != nullptr)
      freeReplyObject(r);
  }
  auto* r
    = static_cast<redisReply*>(redisCommand(c, "XLEN %b", st.opt.name.data(), st.opt.name.size()));
  if (r != nullptr && r->type == REDIS_REPLY_INTEGER)
    v.stored = static_cast<std::uint64_t>(r->integer);
  if (r != nullptr)
    freeReplyObject(r);
  redisFree(c);
  return v;
}

double cpu_seconds() {
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  return static_cast<double>(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec)
         + static_cast<double>(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

double percentile_ms(std::vector<std::uint32_t>& v, double q) {
  if (v.empty())
    return 0;
  auto k = static_cast<std::size_t>(q * static_cast<double>(v.size() - 1));
  std::nth_element(v.begin(), v.begin() + static_cast<std::ptrdiff_t>(k), v.end());
  return v[k] / 1000.0;
}

} // namespace

int main(int argc, char** argv) {
  run_state st;
  st.opt = parse_args(argc, argv);
  auto& o = st.opt;
  st.latencies_us.reserve(1 << 20);

  net::io_context ioc{1};
  tcp::endpoint ep{net::ip::make_address(o.host), static_cast<unsigned short>(o.port)};
  std::vector<std::shared_ptr<client>> clients;
  for (unsigned i = 0; i < o.clients; ++i) {
    clients.push_back(std::make_shared<client>(ioc, st, i));
    clients.back()->connect(ep);
  }

  auto to_dur = [](double s) {
    return std::chrono::duration_cast<clock_type::duration>(std::chrono::duration<double>(s));
  };
  st.start = clock_type::now();
  st.window_begin = st.start + to_dur(o.warmup_s);
  st.window_end = st.window_begin + to_dur(o.duration_s);
  for (auto& c : clients)
    c->start();
  clients.clear(); // the connections keep themselves alive

  // CPU use of this process during the measured window only.
  double cpu_at_begin = 0;
  double cpu_at_end = 0;
  net::steady_timer begin_timer{ioc, st.window_begin};
  begin_timer.async_wait([&](boost::system::error_code ec) {
    if (!ec)
      cpu_at_begin = cpu_seconds();
  });
  net::steady_timer end_timer{ioc, st.window_end};
  end_timer.async_wait([&](boost::system::error_code ec) {
    if (!ec)
      cpu_at_end = cpu_seconds();
  });
  // A request stuck past the end for 30 s ends the run anyway.
  net::steady_timer deadline{ioc, st.window_end + std::chrono::seconds{30}};
  deadline.async_wait([&](boost::system::error_code ec) {
    if (!ec) {
      st.note_error("requests still unanswered 30 s after the end; stopping");
      ioc.stop();
    }
  });
  st.all_done = [&] {
    if (cpu_at_end == 0)
      cpu_at_end = cpu_seconds();
    deadline.cancel();
    begin_timer.cancel();
    end_timer.cancel();
  };
  ioc.run(); // returns when every connection finished and the timers are done
  auto stuck = st.open_clients;

  verification v = o.target == "nerve" ? verify_nerve(st) : verify_redis(st);
  bool count_ok = v.stored && *v.stored == st.ok_total;

  auto lat = st.latencies_us;
  double p50 = percentile_ms(lat, 0.50);
  double p99 = percentile_ms(lat, 0.99);
  double eps = static_cast<double>(st.ok_window) / o.duration_s;
  double cpu = cpu_at_end > cpu_at_begin ? (cpu_at_end - cpu_at_begin) / o.duration_s : 0;
  bool verified = st.errors == 0 && st.io_errors == 0 && stuck == 0 && st.sample_failures == 0
                  && v.failed == 0 && v.checked > 0 && count_ok;

  std::string note = st.first_error;
  if (note.empty())
    note = v.note;
  if (note.empty() && !count_ok)
    note = "the server holds " + (v.stored ? std::to_string(*v.stored) : std::string{"?"})
           + " events under " + o.name + ", " + std::to_string(st.ok_total) + " were acknowledged";
  std::string escaped;
  for (char c : note) {
    if (c == '"' || c == '\\')
      escaped += '\\';
    if (static_cast<unsigned char>(c) >= 0x20)
      escaped += c;
  }
  std::printf("{\"target\":\"%s\",\"clients\":%u,\"duration_s\":%.3f,\"warmup_s\":%.3f,"
              "\"payload_bytes\":%zu,\"events_per_s\":%.1f,\"ok_in_window\":%" PRIu64
              ",\"ok_total\":%" PRIu64 ",\"errors\":%" PRIu64 ",\"io_errors\":%" PRIu64
              ",\"p50_ms\":%.3f,\"p99_ms\":%.3f,\"client_cpu\":%.3f,\"sampled_answers\":%" PRIu64
              ",\"read_back\":%" PRIu64 ",\"read_back_failed\":%" PRIu64
              ",\"stored\":%s,\"verified\":%s,\"note\":\"%s\"}\n",
              o.target.c_str(), o.clients, o.duration_s, o.warmup_s, o.payload_bytes, eps,
              st.ok_window, st.ok_total, st.errors, st.io_errors, p50, p99, cpu, st.sampled,
              v.checked, v.failed, v.stored ? std::to_string(*v.stored).c_str() : "null",
              verified ? "true" : "false", escaped.c_str());
  std::fprintf(stderr,
               "publish_load %s clients=%u: %.0f events/s, p50 %.2f ms, p99 %.2f ms, client cpu "
               "%.0f%%, %s%s%s\n",
               o.target.c_str(), o.clients, eps, p50, p99, cpu * 100,
               verified ? "verified" : "NOT VERIFIED", note.empty() ? "" : ": ", note.c_str());
  return verified ? 0 : 1;
}
