// load_common.hpp: what the load generators of bench/publish (publish_load)
// and bench/deliver (deliver_load) share: the common options and their
// parsing, the payload filler, HTTP/1.1 requests and Beast-parsed answers,
// hiredis helpers, one non-blocking connection (HTTP or RESP) on an Asio
// event loop, and the statistics and JSON output helpers. Header-only; each
// generator is one translation unit.
#pragma once

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <sys/resource.h>

#include <CLI/CLI.hpp>
#include <boost/asio.hpp>
#include <boost/beast/http.hpp>
#include <hiredis/hiredis.h>
#include <nlohmann/json.hpp>

namespace nerve_bench {

namespace net = boost::asio;
namespace bhttp = boost::beast::http;
using tcp = net::ip::tcp;
using clock_type = std::chrono::steady_clock;
using json = nlohmann::json;

// -- options ------------------------------------------------------------------

/// The options both generators take; each derives its own and sets its
/// program name and defaults in its constructor.
struct common_options {
  std::string prog;   ///< the program, for messages
  std::string target; ///< nerve | redis
  std::string host = "127.0.0.1";
  unsigned port = 0;
  double duration_s = 10;
  double warmup_s = 2;
  std::string name = "bench"; ///< nerve topic / redis stream key
  std::size_t payload_bytes = 256;
  std::string token; ///< nerve bearer token, if any
};

[[noreturn]] inline void usage(const common_options& o, const std::string& why) {
  std::fprintf(stderr, "%s: %s (see %s --help)\n", o.prog.c_str(), why.c_str(), o.prog.c_str());
  std::exit(2);
}

/// Adds the common options to `app`.
inline void add_common_options(CLI::App& app, common_options& o) {
  app.add_option("--target", o.target, "nerve or redis")->required();
  app.add_option("--host", o.host, "server address");
  app.add_option("--port", o.port, "server port")->required();
  app.add_option("--duration", o.duration_s, "measured seconds");
  app.add_option("--warmup", o.warmup_s, "warm-up seconds");
  app.add_option("--name", o.name, "nerve topic or Redis stream key");
  app.add_option("--payload-bytes", o.payload_bytes, "payload size");
  app.add_option("--token", o.token, "nerve bearer token");
}

/// Parses argv into an O (derived from common_options) with the common
/// options and those o.add_own(app) adds (--help exits 0, a parse error
/// exits 2), and checks them: --target, --port, then o.check_own(), then
/// --payload-bytes (at least O::min_payload_bytes) and --name.
template <class O>
O parse_options(int argc, char** argv) {
  O o;
  CLI::App app{o.prog + ": " + O::description};
  add_common_options(app, o);
  o.add_own(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == 0)
      std::exit(app.exit(e));
    usage(o, e.what());
  }
  if (o.target != "nerve" && o.target != "redis")
    usage(o, "--target must be nerve or redis");
  if (o.port == 0 || o.port > 65535)
    usage(o, "--port is required");
  o.check_own();
  check_payload_and_name(o, O::min_payload_bytes);
  return o;
}

/// Checks --payload-bytes against the generator's minimum, and --name: it
/// goes into URLs and Redis keys unquoted.
inline void check_payload_and_name(const common_options& o, std::size_t min_payload_bytes) {
  if (o.payload_bytes < min_payload_bytes)
    usage(o, "--payload-bytes must be >= " + std::to_string(min_payload_bytes));
  for (char c : o.name)
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '-' || c == '_'))
      usage(o, "--name must be [A-Za-z0-9._-]+");
}

// -- payload and time ---------------------------------------------------------

/// Printable, JSON-safe, deterministic filler of exactly n bytes.
inline std::string filler(std::size_t n) {
  static const char alphabet[] = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
  std::string s(n, 'x');
  for (std::size_t i = 0; i < n; ++i)
    s[i] = alphabet[(i * 7 + 3) % (sizeof alphabet - 1)];
  return s;
}

inline std::int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(clock_type::now().time_since_epoch())
    .count();
}

/// Open loop: seconds from the start to slot k of connection `index` of
/// `connections`, `rate` events/s over all of them (deliver_load, publish_load).
inline double slot_seconds(unsigned index, std::uint64_t k, unsigned connections, double rate) {
  return (static_cast<double>(index) + static_cast<double>(k) * connections) / rate;
}

/// Open loop: when slot k of connection `index` is due, the run starting at
/// `start` (publish_load, nats_load).
inline clock_type::time_point slot_due(clock_type::time_point start, unsigned index,
                                       std::uint64_t k, unsigned connections, double rate) {
  return start
         + std::chrono::duration_cast<clock_type::duration>(
           std::chrono::duration<double>(slot_seconds(index, k, connections, rate)));
}

// -- HTTP ---------------------------------------------------------------------

/// One HTTP/1.1 response split off the front of a byte buffer.
struct http_answer {
  unsigned status = 0;
  bool close = false;
  std::string body;
  std::size_t consumed = 0;
};

/// Parses one response at the front of `buf` with Beast's parser. Returns
/// false while incomplete; `bad` says the bytes are not an HTTP response.
inline bool parse_http(std::string_view buf, http_answer& out, bool& bad) {
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

/// A keep-alive HTTP/1.1 request to the server of `o`, with its bearer token
/// and, when there is a body, a JSON content type.
inline std::string http_request(const common_options& o, std::string_view method,
                                const std::string& target, const std::string& body) {
  std::string r = std::string{method} + " " + target + " HTTP/1.1\r\nHost: " + o.host + ":"
                  + std::to_string(o.port) + "\r\nConnection: keep-alive\r\n";
  if (!o.token.empty())
    r += "Authorization: Bearer " + o.token + "\r\n";
  if (!body.empty())
    r += "Content-Type: application/json\r\nContent-Length: " + std::to_string(body.size())
         + "\r\n";
  return r + "\r\n" + body;
}

/// One blocking HTTP/1.1 GET on a fresh connection (not timed).
inline std::optional<std::pair<unsigned, std::string>> http_get(const common_options& o,
                                                                const std::string& target) {
  try {
    net::io_context ioc;
    tcp::socket s{ioc};
    s.connect({net::ip::make_address(o.host), static_cast<unsigned short>(o.port)});
    net::write(s, net::buffer(http_request(o, "GET", target, "")));
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

/// The one event of a publish answer {"events":[{...}]}, or nullptr.
inline const json* single_event(const json& j) {
  if (!j.is_object() || !j.contains("events") || !j["events"].is_array() || j["events"].size() != 1)
    return nullptr;
  return &j["events"][0];
}

// -- Redis --------------------------------------------------------------------

inline std::string_view reply_str(const redisReply* r) {
  return {r->str, static_cast<std::size_t>(r->len)};
}

/// A RESP command from its arguments; nullopt when hiredis cannot format it.
inline std::optional<std::string> format_command(const std::vector<std::string_view>& args) {
  std::vector<const char*> argv;
  std::vector<std::size_t> lens;
  for (auto a : args) {
    argv.push_back(a.data());
    lens.push_back(a.size());
  }
  char* cmd = nullptr;
  int n = redisFormatCommandArgv(&cmd, static_cast<int>(argv.size()), argv.data(), lens.data());
  if (n < 0)
    return std::nullopt;
  std::string out(cmd, static_cast<std::size_t>(n));
  redisFreeCommand(cmd);
  return out;
}

/// format_command, or exit: for commands built once before the run.
inline std::string must_format(const common_options& o, const std::vector<std::string_view>& args) {
  auto cmd = format_command(args);
  if (!cmd) {
    std::fprintf(stderr, "%s: cannot format %.*s\n", o.prog.c_str(),
                 static_cast<int>(args.at(0).size()), args.at(0).data());
    std::exit(1);
  }
  return *cmd;
}

/// XADD <name> * p <payload>.
inline std::string xadd_command(const common_options& o, const std::string& payload) {
  return must_format(o, {"XADD", o.name, "*", "p", payload});
}

/// A blocking connection to the Redis server of `o`, or nullptr.
inline redisContext* redis_try_connect(const common_options& o) {
  timeval tv{10, 0};
  redisContext* c = redisConnectWithTimeout(o.host.c_str(), static_cast<int>(o.port), tv);
  if (c != nullptr && c->err) {
    redisFree(c);
    return nullptr;
  }
  return c;
}

/// XLEN of the stream of `o`, or nullopt.
inline std::optional<std::int64_t> redis_xlen(redisContext* c, const common_options& o) {
  std::optional<std::int64_t> len;
  auto* r = static_cast<redisReply*>(redisCommand(c, "XLEN %b", o.name.data(), o.name.size()));
  if (r != nullptr && r->type == REDIS_REPLY_INTEGER)
    len = r->integer;
  if (r != nullptr)
    freeReplyObject(r);
  return len;
}

// -- one connection -----------------------------------------------------------

/// One non-blocking connection to the server: nerve (HTTP/1.1 answers split
/// by Beast) or Redis (RESP replies split by hiredis' reader). Derived (CRTP)
/// implements
///   void on_http(http_answer&)       one complete HTTP answer
///   bool on_reply(redisReply*)       one RESP reply; true while more replies
///                                    of the current write are expected
///   void fail(const std::string&)    an I/O or protocol failure
///   void on_finish()                 the first finish() (when it uses that)
template <class Derived>
class connection : public std::enable_shared_from_this<Derived> {
public:
  /// `label` prefixes I/O failures ("write: ..."), `resp_label` RESP
  /// failures, `http_label` unparsable answers.
  connection(net::io_context& ioc, const common_options& o, bool resp, std::string label,
             std::string resp_label, std::string http_label)
    : socket_(ioc), opt_(o), label_(std::move(label)), resp_label_(std::move(resp_label)),
      http_label_(std::move(http_label)) {
    if (resp)
      reader_ = redisReaderCreate();
  }

  connection(const connection&) = delete;
  connection& operator=(const connection&) = delete;

  ~connection() {
    if (reader_ != nullptr)
      redisReaderFree(reader_);
  }

  /// Blocking connect; exits when the server is not there.
  void connect(const tcp::endpoint& ep) {
    boost::system::error_code ec;
    socket_.connect(ep, ec);
    if (ec) {
      std::fprintf(stderr, "%s: cannot connect to %s:%u: %s\n", opt_.prog.c_str(),
                   opt_.host.c_str(), opt_.port, ec.message().c_str());
      std::exit(1);
    }
    socket_.set_option(tcp::no_delay(true));
  }

protected:
  /// Writes `data` (which must outlive the write), then reads the answer.
  void send(const std::string& data) {
    net::async_write(socket_, net::buffer(data),
                     [self = this->shared_from_this()](boost::system::error_code ec, std::size_t) {
                       if (ec)
                         return self->fail(self->label_ + "write: " + ec.message());
                       self->read();
                     });
  }

  void read() {
    socket_.async_read_some(net::buffer(chunk_), [self = this->shared_from_this()](
                                                   boost::system::error_code ec, std::size_t n) {
      if (ec)
        return self->fail(self->label_ + "read: " + ec.message());
      self->on_bytes(n);
    });
  }

  void close_socket() {
    boost::system::error_code ec;
    socket_.close(ec);
  }

  /// The connection is done (at most once): Derived::on_finish().
  void finish() {
    if (done_)
      return;
    done_ = true;
    derived().on_finish();
  }

  tcp::socket socket_;

private:
  Derived& derived() { return static_cast<Derived&>(*this); }

  void on_bytes(std::size_t n) {
    if (reader_ != nullptr)
      return on_resp_bytes(n);
    inbox_.append(chunk_.data(), n);
    http_answer a;
    bool bad = false;
    if (!parse_http(inbox_, a, bad)) {
      if (bad)
        return derived().fail("unparsable " + http_label_ + " answer: " + inbox_.substr(0, 200));
      return read();
    }
    inbox_.erase(0, a.consumed);
    derived().on_http(a);
  }

  void on_resp_bytes(std::size_t n) {
    if (redisReaderFeed(reader_, chunk_.data(), n) != REDIS_OK)
      return derived().fail(resp_label_ + " reader: feed failed");
    for (;;) {
      void* raw = nullptr;
      if (redisReaderGetReply(reader_, &raw) != REDIS_OK)
        return derived().fail(resp_label_ + " protocol error: " + reader_->errstr);
      if (raw == nullptr)
        return read();
      auto* reply = static_cast<redisReply*>(raw);
      bool more = derived().on_reply(reply);
      freeReplyObject(reply);
      if (!more)
        return;
    }
  }

  const common_options& opt_;
  std::string label_, resp_label_, http_label_;
  redisReader* reader_ = nullptr;
  bool done_ = false;
  std::array<char, 65536> chunk_{};
  std::string inbox_;
};

// -- the run ------------------------------------------------------------------

/// A run's connection failures and its first failure, for the result's note.
struct run_errors {
  std::uint64_t io_errors = 0; ///< connection failures
  std::string first_error;

  void note_error(std::string what) {
    if (first_error.empty())
      first_error = std::move(what);
  }

  void io_failure(std::string why) {
    ++io_errors;
    note_error(std::move(why));
  }
};

/// A closed-loop run's answers: counted in all phases, timed inside the
/// measured window only.
struct answer_counts : run_errors {
  std::chrono::steady_clock::time_point window_begin, window_end;
  std::uint64_t ok_total = 0;  ///< successes in all phases
  std::uint64_t ok_window = 0; ///< successes answered inside the window
  std::uint64_t errors = 0;    ///< failed answers (wrong status, error reply)
  std::uint64_t sampled = 0;   ///< answers checked in full
  std::uint64_t sample_failures = 0;
  std::vector<std::uint32_t> latencies_us; ///< window only

  /// One answer to the request sent at `sent_at`.
  void answered(bool good, std::chrono::steady_clock::time_point sent_at) {
    auto now = std::chrono::steady_clock::now();
    if (!good) {
      ++errors;
      return;
    }
    ++ok_total;
    if (now >= window_begin && now < window_end) {
      ++ok_window;
      latencies_us.push_back(static_cast<std::uint32_t>(
        std::chrono::duration_cast<std::chrono::microseconds>(now - sent_at).count()));
    }
  }
};

/// Runs f() when the timer expires (not when it is cancelled).
template <class F>
void on_expiry(net::steady_timer& t, F f) {
  t.async_wait([f = std::move(f)](boost::system::error_code ec) mutable {
    if (!ec)
      f();
  });
}

inline double cpu_seconds() {
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  return static_cast<double>(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec)
         + static_cast<double>(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

/// This process's CPU use over the measured window.
struct cpu_window {
  double at_begin = 0;
  double at_end = 0;

  void begin() { at_begin = cpu_seconds(); }
  void end() {
    if (at_end == 0)
      at_end = cpu_seconds();
  }
  /// Cores used on average over `duration_s`.
  [[nodiscard]] double share(double duration_s) const {
    return at_end > at_begin ? (at_end - at_begin) / duration_s : 0;
  }
};

// -- statistics and output ----------------------------------------------------

/// The q-quantile of latencies in microseconds, in ms: element
/// floor(q * (n - 1)) of the sorted values (publish_load's definition).
inline double percentile_ms(std::vector<std::uint32_t>& v, double q) {
  if (v.empty())
    return 0;
  auto k = static_cast<std::size_t>(q * static_cast<double>(v.size() - 1));
  std::nth_element(v.begin(), v.begin() + static_cast<std::ptrdiff_t>(k), v.end());
  return v[k] / 1000.0;
}

/// The q-quantile of v (nearest rank: element ceil(q * n) - 1 of the sorted
/// values); +inf stands for "never acked" (deliver_load's definition).
inline double quantile_ms(std::vector<double>& v, double q) {
  if (v.empty())
    return 0;
  auto k = static_cast<std::size_t>(std::ceil(q * static_cast<double>(v.size()))) - 1;
  k = std::min(k, v.size() - 1);
  std::nth_element(v.begin(), v.begin() + static_cast<std::ptrdiff_t>(k), v.end());
  return v[k];
}

/// A JSON number with 3 decimals, or null when not finite.
inline std::string num(double v) {
  if (!std::isfinite(v))
    return "null";
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.3f", v);
  return buf;
}

/// The note for a JSON string: quotes and backslashes escaped, control
/// characters dropped.
inline std::string json_escape(const std::string& note) {
  std::string escaped;
  for (char c : note) {
    if (c == '"' || c == '\\')
      escaped += '\\';
    if (static_cast<unsigned char>(c) >= 0x20)
      escaped += c;
  }
  return escaped;
}

} // namespace nerve_bench
