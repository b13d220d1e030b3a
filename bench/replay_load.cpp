// replay_load: the filler and the timed reader of bench/replay.
//
// `fill` writes the same deterministic events (event i: topic (i / batch) % T,
// a 256-byte JSON payload {"p":"<16 hex digits of i><filler>"}) into one of
// three systems and records each event's time as that system assigned it:
//   nerve     POST /v1/topics/{topic}/events with a JSON array of `batch`
//             events, over --connections blocking keep-alive connections;
//             the time is the append time in the 201 answer (server clock).
//   redis     XADD {topic} * id <id> data <payload>, pipelined `batch` at a
//             time; the time is the millisecond part of the entry id.
//   postgres  COPY events FROM STDIN (time, topic, partition, offset, id,
//             data), the time being this loader's clock when it sends the
//             row; then a btree index on time and VACUUM ANALYZE.
// It then chooses windows by quantiles of those times (a fraction f of the
// events around the median; f = 1 is everything) and prints, as JSON, each
// window's [from, to) in the system's time unit and the exact number of
// events whose time lies in it.
//
// `read` reconstructs one window and times it:
//   nerve     POST /v1/replays (dry-run) = the plan, then GET
//             /v1/replays/{id}/history?agent=A&limit=PAGE following
//             next_cursor until it is null;
//   redis     XRANGE per stream over the window, COUNT PAGE, continuing after
//             the last id;
//   postgres  COPY (SELECT ... WHERE time >= $from AND time < $to ORDER BY
//             time) TO STDOUT, every row read.
// Every entry is counted (and its payload or outcome checked); the count must
// equal --expect. Prints one JSON object on stdout.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include <CLI/CLI.hpp>
#include <boost/asio.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <hiredis/hiredis.h>
#include <libpq-fe.h>
#include <nlohmann/json.hpp>

namespace net = boost::asio;
namespace beast = boost::beast;
namespace bhttp = boost::beast::http;
using tcp = net::ip::tcp;
using json = nlohmann::json;
using clock_type = std::chrono::steady_clock;

namespace {

struct options {
  std::string target; ///< nerve | redis | postgres
  std::string host = "127.0.0.1";
  unsigned port = 0;
  std::string pg_conninfo;
  std::uint64_t events = 5'000'000;
  unsigned batch = 1000;
  unsigned topics = 4;
  unsigned partitions = 4; ///< postgres only: nerve assigns its own
  unsigned connections = 4;
  std::string prefix = "rb";
  std::string fractions = "0.01,1";
  // read
  std::int64_t from = 0;
  std::int64_t to = 0;
  std::uint64_t expect = 0;
  unsigned page = 1000;
  std::string agent = "replay-noop";
};

[[noreturn]] void die(const std::string& why) {
  std::fprintf(stderr, "replay_load: %s\n", why.c_str());
  std::exit(1);
}

double seconds_since(clock_type::time_point t) {
  return std::chrono::duration<double>(clock_type::now() - t).count();
}

std::string topic_name(const options& o, std::uint64_t i) {
  return o.prefix + ".t" + std::to_string((i / o.batch) % o.topics);
}

/// Event i's stored payload: exactly 256 bytes of JSON, {"p":"<248 chars>"}.
std::string payload(std::uint64_t i) {
  static const char alphabet[] = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
  char head[17];
  std::snprintf(head, sizeof head, "%016" PRIx64, i);
  std::string s = "{\"p\":\"";
  s += head;
  for (std::size_t k = 0; k < 248 - 16; ++k)
    s += alphabet[(k * 7 + i) % (sizeof alphabet - 1)];
  s += "\"}";
  return s;
}

/// A UUIDv7-shaped id (36 chars) for the peers; nerve makes its own.
std::string peer_id(std::int64_t time_ms, std::uint64_t i) {
  char buf[64];
  std::snprintf(
    buf, sizeof buf, "%08" PRIx64 "-%04" PRIx64 "-7%03" PRIx64 "-8%03" PRIx64 "-%012" PRIx64,
    static_cast<std::uint64_t>(time_ms) >> 16, static_cast<std::uint64_t>(time_ms) & 0xffff,
    (i >> 60) & 0xfff, (i >> 48) & 0xfff, i & std::uint64_t{0xffffffffffff});
  return buf;
}

std::int64_t now_us() {
  return std::chrono::duration_cast<std::chrono::microseconds>(
           std::chrono::system_clock::now().time_since_epoch())
    .count();
}

std::int64_t days_from_civil(std::int64_t y, unsigned m, unsigned d) {
  y -= m <= 2;
  const std::int64_t era = (y >= 0 ? y : y - 399) / 400;
  const unsigned yoe = static_cast<unsigned>(y - era * 400);
  const unsigned doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
  const unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
  return era * 146097 + static_cast<std::int64_t>(doe) - 719468;
}

/// "2026-11-30T13:29:09.123456Z" -> microseconds since the epoch.
std::int64_t parse_rfc3339_us(std::string_view s) {
  auto num = [&s](std::size_t at, std::size_t n) {
    std::int64_t v = 0;
    for (std::size_t k = 0; k < n; ++k) {
      char c = s[at + k];
      if (c < '0' || c > '9')
        die("bad time in an answer: " + std::string{s.substr(0, 40)});
      v = v * 10 + (c - '0');
    }
    return v;
  };
  if (s.size() < 20)
    die("short time in an answer: " + std::string{s});
  std::int64_t days = days_from_civil(num(0, 4), static_cast<unsigned>(num(5, 2)),
                                      static_cast<unsigned>(num(8, 2)));
  std::int64_t us = ((days * 24 + num(11, 2)) * 60 + num(14, 2)) * 60 + num(17, 2);
  us *= 1'000'000;
  if (s[19] == '.') {
    std::int64_t frac = 0;
    std::size_t k = 20, digits = 0;
    for (; k < s.size() && s[k] >= '0' && s[k] <= '9'; ++k, ++digits)
      if (digits < 6)
        frac = frac * 10 + (s[k] - '0');
    for (; digits < 6; ++digits)
      frac *= 10;
    us += frac;
  }
  return us;
}

std::string format_rfc3339_us(std::int64_t us) {
  std::time_t secs = static_cast<std::time_t>(us / 1'000'000);
  std::tm tm{};
  gmtime_r(&secs, &tm);
  char buf[96];
  std::snprintf(buf, sizeof buf, "%04d-%02d-%02dT%02d:%02d:%02d.%06" PRId64 "Z", tm.tm_year + 1900,
                tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, us % 1'000'000);
  return buf;
}

std::string pg_time(std::int64_t us) {
  std::string s = format_rfc3339_us(us);
  s[10] = ' ';
  s.back() = '+';
  return s + "00";
}

// -- HTTP (blocking, keep-alive) ---------------------------------------------

class http_conn {
public:
  http_conn(const options& o) : socket_(ioc_), host_(o.host) {
    beast::error_code ec;
    socket_.connect({net::ip::make_address(o.host), static_cast<unsigned short>(o.port)}, ec);
    if (ec)
      die("cannot connect to " + o.host + ":" + std::to_string(o.port) + ": " + ec.message());
    socket_.set_option(tcp::no_delay(true));
  }

  /// Sends one request and returns (status, body).
  std::pair<unsigned, std::string> call(bhttp::verb verb, const std::string& target,
                                        std::string body = {}) {
    bhttp::request<bhttp::string_body> req{verb, target, 11};
    req.set(bhttp::field::host, host_);
    req.keep_alive(true);
    if (verb == bhttp::verb::post) {
      req.set(bhttp::field::content_type, "application/json");
      req.body() = std::move(body);
      req.prepare_payload();
    }
    beast::error_code ec;
    bhttp::write(socket_, req, ec);
    if (ec)
      die("HTTP write " + target + ": " + ec.message());
    // The header through Beast; a body of known length straight into its
    // string with large reads (Beast's own reads are at most 64 KiB each,
    // then copied into the body).
    bhttp::response_parser<bhttp::string_body> parser;
    parser.body_limit(256u << 20);
    bhttp::read_header(socket_, buffer_, parser, ec);
    if (ec)
      die("HTTP read " + target + ": " + ec.message());
    if (auto length = parser.content_length(); length && !parser.chunked()) {
      std::string body(*length, '\0');
      auto have = std::min<std::size_t>(buffer_.size(), body.size());
      net::buffer_copy(net::buffer(body.data(), have), buffer_.data());
      buffer_.consume(have);
      net::read(socket_, net::buffer(body.data() + have, body.size() - have), ec);
      if (ec)
        die("HTTP read " + target + ": " + ec.message());
      return {parser.get().result_int(), std::move(body)};
    }
    bhttp::read(socket_, buffer_, parser, ec);
    if (ec)
      die("HTTP read " + target + ": " + ec.message());
    return {parser.get().result_int(), std::move(parser.get().body())};
  }

private:
  net::io_context ioc_;
  tcp::socket socket_;
  beast::flat_buffer buffer_;
  std::string host_;
};

/// Counts the occurrences of `needle` in `hay`, and how many of them are
/// followed by `then`: one pass, with glibc's memmem (string_view::find
/// stops at every '"' of a JSON text).
std::pair<std::size_t, std::size_t> count_of(std::string_view hay, std::string_view needle,
                                             std::string_view then = {}) {
  std::size_t n = 0, followed = 0;
  const char* at = hay.data();
  const char* end = hay.data() + hay.size();
  while (at < end) {
    auto* hit = static_cast<const char*>(
      memmem(at, static_cast<std::size_t>(end - at), needle.data(), needle.size()));
    if (hit == nullptr)
      break;
    ++n;
    at = hit + needle.size();
    if (!then.empty()
        && std::string_view{at, static_cast<std::size_t>(end - at)}.substr(0, then.size()) == then)
      ++followed;
  }
  return {n, followed};
}

// -- fill ---------------------------------------------------------------------

/// times[i] = event i's time, in the target's unit (us, or ms for redis).
std::vector<std::int64_t> fill_nerve(const options& o) {
  std::vector<std::int64_t> times(o.events);
  std::uint64_t batches = (o.events + o.batch - 1) / o.batch;
  std::atomic<std::uint64_t> next{0};
  auto worker = [&]() {
    http_conn c{o};
    for (;;) {
      std::uint64_t b = next.fetch_add(1);
      if (b >= batches)
        return;
      std::uint64_t lo = b * o.batch, hi = std::min<std::uint64_t>(o.events, lo + o.batch);
      std::string body = "[";
      for (auto i = lo; i < hi; ++i) {
        if (i != lo)
          body += ',';
        body += "{\"data\":";
        body += payload(i);
        body += '}';
      }
      body += ']';
      auto [status, answer]
        = c.call(bhttp::verb::post, "/v1/topics/" + topic_name(o, lo) + "/events", std::move(body));
      if (status != 201)
        die("publish answered " + std::to_string(status) + ": " + answer.substr(0, 300));
      std::string_view a{answer};
      std::uint64_t i = lo;
      static constexpr std::string_view key = "\"time\":\"";
      for (auto at = a.find(key); at != std::string_view::npos; at = a.find(key, at + 1)) {
        if (i >= hi)
          die("publish answered more times than events");
        times[i++] = parse_rfc3339_us(a.substr(at + key.size(), 32));
      }
      if (i != hi)
        die("publish answered " + std::to_string(i - lo) + " times for " + std::to_string(hi - lo)
            + " events: " + answer.substr(0, 300));
    }
  };
  std::vector<std::thread> threads;
  for (unsigned k = 0; k < o.connections; ++k)
    threads.emplace_back(worker);
  for (auto& t : threads)
    t.join();
  return times;
}

redisContext* redis_connect(const options& o) {
  redisContext* c = redisConnect(o.host.c_str(), static_cast<int>(o.port));
  if (c == nullptr || c->err)
    die("cannot connect to redis: " + std::string{c ? c->errstr : "out of memory"});
  return c;
}

std::vector<std::int64_t> fill_redis(const options& o) {
  std::vector<std::int64_t> times(o.events);
  redisContext* c = redis_connect(o);
  for (std::uint64_t lo = 0; lo < o.events; lo += o.batch) {
    std::uint64_t hi = std::min<std::uint64_t>(o.events, lo + o.batch);
    std::string topic = topic_name(o, lo);
    std::int64_t ms = now_us() / 1000;
    for (auto i = lo; i < hi; ++i) {
      std::string id = peer_id(ms, i), data = payload(i);
      const char* argv[] = {"XADD", topic.c_str(), "*", "id", id.c_str(), "data", data.c_str()};
      std::size_t lens[] = {4, topic.size(), 1, 2, id.size(), 4, data.size()};
      redisAppendCommandArgv(c, 7, argv, lens);
    }
    for (auto i = lo; i < hi; ++i) {
      void* raw = nullptr;
      if (redisGetReply(c, &raw) != REDIS_OK)
        die(std::string{"redis: "} + c->errstr);
      auto* r = static_cast<redisReply*>(raw);
      if (r->type != REDIS_REPLY_STRING)
        die("XADD did not answer an id");
      times[i] = std::strtoll(r->str, nullptr, 10);
      freeReplyObject(r);
    }
  }
  redisFree(c);
  return times;
}

PGconn* pg_connect(const options& o) {
  PGconn* c = PQconnectdb(o.pg_conninfo.c_str());
  if (PQstatus(c) != CONNECTION_OK)
    die("cannot connect to postgres (" + o.pg_conninfo + "): " + PQerrorMessage(c));
  return c;
}

void pg_exec(PGconn* c, const std::string& sql) {
  PGresult* r = PQexec(c, sql.c_str());
  auto st = PQresultStatus(r);
  if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK)
    die("postgres: " + sql.substr(0, 80) + ": " + PQresultErrorMessage(r));
  PQclear(r);
}

std::vector<std::int64_t> fill_postgres(const options& o) {
  std::vector<std::int64_t> times(o.events);
  PGconn* c = pg_connect(o);
  pg_exec(c, "SET client_min_messages = warning"); // no NOTICE for the DROP on a fresh cluster
  pg_exec(c, "DROP TABLE IF EXISTS events");
  pg_exec(c, "CREATE TABLE events (time timestamptz NOT NULL, topic text NOT NULL, "
             "partition integer NOT NULL, \"offset\" bigint NOT NULL, id text NOT NULL, "
             "data text NOT NULL)");
  PGresult* r = PQexec(c, "COPY events FROM STDIN");
  if (PQresultStatus(r) != PGRES_COPY_IN)
    die(std::string{"COPY FROM STDIN: "} + PQresultErrorMessage(r));
  PQclear(r);
  std::vector<std::uint64_t> offsets(static_cast<std::size_t>(o.topics) * o.partitions, 0);
  std::string chunk;
  std::int64_t last = 0;
  for (std::uint64_t i = 0; i < o.events; ++i) {
    std::int64_t t = std::max(now_us(), last);
    last = t;
    times[i] = t;
    unsigned topic = static_cast<unsigned>((i / o.batch) % o.topics);
    unsigned part = static_cast<unsigned>(i % o.partitions);
    auto& off = offsets[topic * o.partitions + part];
    chunk += pg_time(t);
    chunk += '\t';
    chunk += topic_name(o, i);
    chunk += '\t';
    chunk += std::to_string(part);
    chunk += '\t';
    chunk += std::to_string(off++);
    chunk += '\t';
    chunk += peer_id(t / 1000, i);
    chunk += '\t';
    chunk += payload(i); // no tab, newline nor backslash: valid COPY text as is
    chunk += '\n';
    if (chunk.size() >= (1u << 20) || i + 1 == o.events) {
      if (PQputCopyData(c, chunk.data(), static_cast<int>(chunk.size())) != 1)
        die(std::string{"COPY: "} + PQerrorMessage(c));
      chunk.clear();
    }
  }
  if (PQputCopyEnd(c, nullptr) != 1)
    die(std::string{"COPY end: "} + PQerrorMessage(c));
  r = PQgetResult(c);
  if (PQresultStatus(r) != PGRES_COMMAND_OK)
    die(std::string{"COPY: "} + PQresultErrorMessage(r));
  PQclear(r);
  while ((r = PQgetResult(c)) != nullptr)
    PQclear(r);
  pg_exec(c, "CREATE INDEX events_time ON events (time)");
  pg_exec(c, "VACUUM ANALYZE events");
  PQfinish(c);
  return times;
}

void run_fill(const options& o) {
  auto t0 = clock_type::now();
  std::vector<std::int64_t> times;
  if (o.target == "nerve")
    times = fill_nerve(o);
  else if (o.target == "redis")
    times = fill_redis(o);
  else
    times = fill_postgres(o);
  double secs = seconds_since(t0);
  std::sort(times.begin(), times.end());
  std::int64_t unit_per_s = o.target == "redis" ? 1000 : 1'000'000;
  json windows = json::array();
  std::size_t start = 0;
  for (std::size_t end; start < o.fractions.size(); start = end + 1) {
    end = o.fractions.find(',', start);
    if (end == std::string::npos)
      end = o.fractions.size();
    double f = std::stod(o.fractions.substr(start, end - start));
    auto n = times.size();
    auto want = static_cast<std::size_t>(f * static_cast<double>(n));
    std::size_t lo = (n - want) / 2;
    std::int64_t from = times[lo];
    std::int64_t to = lo + want < n ? times[lo + want] : times.back() + 1;
    // Exact: every event whose time lies in [from, to).
    auto expected = std::lower_bound(times.begin(), times.end(), to)
                    - std::lower_bound(times.begin(), times.end(), from);
    windows.push_back({{"fraction", f}, {"from", from}, {"to", to}, {"expected", expected}});
  }
  json out{{"target", o.target},       {"events", o.events},
           {"seconds", secs},          {"events_per_s", static_cast<double>(o.events) / secs},
           {"unit_per_s", unit_per_s}, {"first", times.front()},
           {"last", times.back()},     {"windows", windows}};
  std::printf("%s\n", out.dump().c_str());
}

// -- read ---------------------------------------------------------------------

std::string percent_encode(std::string_view s) {
  std::string out;
  for (unsigned char c : s) {
    if (std::isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~') {
      out += static_cast<char>(c);
    } else {
      char buf[4];
      std::snprintf(buf, sizeof buf, "%%%02X", c);
      out += buf;
    }
  }
  return out;
}

json read_nerve(const options& o) {
  http_conn c{o};
  json topics = json::array();
  for (unsigned t = 0; t < o.topics; ++t)
    topics.push_back(o.prefix + ".t" + std::to_string(t));
  json req{{"from", format_rfc3339_us(o.from)},
           {"to", format_rfc3339_us(o.to)},
           {"topics", topics},
           {"agents", json::array({o.agent})},
           {"mode", "dry-run"}};
  auto t0 = clock_type::now();
  auto [status, body] = c.call(bhttp::verb::post, "/v1/replays", req.dump());
  double plan_s = seconds_since(t0);
  if (status != 202)
    die("POST /v1/replays answered " + std::to_string(status) + ": " + body.substr(0, 300));
  auto plan = json::parse(body);
  std::string id = plan.at("id").get<std::string>();
  std::uint64_t planned = plan.at("events_total").get<std::uint64_t>();
  std::uint64_t entries = 0, acked = 0, pages = 0, bytes = 0;
  std::string cursor, first;
  std::string base = "/v1/replays/" + id + "/history?agent=" + percent_encode(o.agent)
                     + "&limit=" + std::to_string(o.page);
  for (;;) {
    auto target = cursor.empty() ? base : base + "&cursor=" + percent_encode(cursor);
    auto [st, page] = c.call(bhttp::verb::get, target);
    if (st != 200)
      die("GET " + target + " answered " + std::to_string(st) + ": " + page.substr(0, 300));
    ++pages;
    bytes += page.size();
    if (pages == 1)
      first = page; // checked in full once the clock stopped (below)
    // Each entry has exactly one "outcome" key; payloads are [0-9a-zA-Z] only.
    auto [n, n_acked] = count_of(page, "\"outcome\":\"", "acked\"");
    entries += n;
    acked += n_acked;
    static constexpr std::string_view key = "\"next_cursor\":";
    auto at = page.rfind(key);
    if (at == std::string::npos)
      die("a history page without next_cursor: " + page.substr(0, 200));
    std::string_view rest{page.data() + at + key.size(), page.size() - at - key.size()};
    if (rest.substr(0, 4) == "null")
      break;
    if (rest.empty() || rest[0] != '"')
      die("next_cursor is neither null nor a string");
    cursor = std::string{rest.substr(1, rest.find('"', 1) - 1)};
  }
  double total_s = seconds_since(t0);
  // The first page in full: the shape and the payload are what was published.
  // Outside the timed part: a DOM parse of a 480 KB page (~5 ms here) is the
  // reader's cost, not the server's, and was a third of a 10,000-event read;
  // inside it each entry is counted and its outcome checked, as each Redis
  // entry's payload length is.
  for (auto& e : json::parse(first).at("entries"))
    if (e.at("event").at("data").dump().size() != 256)
      die("a history entry's data is not the 256 bytes published");
  return {{"plan_s", plan_s}, {"events_total", planned}, {"entries", entries}, {"acked", acked},
          {"pages", pages},   {"bytes", bytes},          {"seconds", total_s}};
}

json read_redis(const options& o) {
  redisContext* c = redis_connect(o);
  std::uint64_t entries = 0, pages = 0, bad = 0;
  auto t0 = clock_type::now();
  std::string end = std::to_string(o.to - 1); // ms only: up to (to-1)-<max seq>
  std::string count = std::to_string(o.page);
  for (unsigned t = 0; t < o.topics; ++t) {
    std::string key = o.prefix + ".t" + std::to_string(t);
    std::string start = std::to_string(o.from);
    for (;;) {
      const char* argv[]
        = {"XRANGE", key.c_str(), start.c_str(), end.c_str(), "COUNT", count.c_str()};
      std::size_t lens[] = {6, key.size(), start.size(), end.size(), 5, count.size()};
      auto* r = static_cast<redisReply*>(redisCommandArgv(c, 6, argv, lens));
      if (r == nullptr || r->type != REDIS_REPLY_ARRAY)
        die("XRANGE failed: "
            + std::string{r && r->type == REDIS_REPLY_ERROR ? r->str : c->errstr});
      ++pages;
      for (std::size_t k = 0; k < r->elements; ++k) {
        auto* e = r->element[k];
        if (e->elements != 2 || e->element[1]->elements != 4
            || e->element[1]->element[3]->len != 256)
          ++bad;
      }
      entries += r->elements;
      bool more = r->elements == o.page;
      if (more)
        start = std::string{"("} + r->element[r->elements - 1]->element[0]->str;
      freeReplyObject(r);
      if (!more)
        break;
    }
  }
  double secs = seconds_since(t0);
  redisFree(c);
  if (bad)
    die(std::to_string(bad) + " XRANGE entries did not hold the 256-byte payload");
  return {{"entries", entries}, {"pages", pages}, {"seconds", secs}};
}

json read_postgres(const options& o) {
  PGconn* c = pg_connect(o);
  auto ts = [](std::int64_t us) {
    return "timestamptz 'epoch' + " + std::to_string(us) + " * interval '1 microsecond'";
  };
  std::string sql = "COPY (SELECT time, topic, partition, \"offset\", id, data FROM events WHERE "
                    "time >= "
                    + ts(o.from) + " AND time < " + ts(o.to) + " ORDER BY time) TO STDOUT";
  auto t0 = clock_type::now();
  PGresult* r = PQexec(c, sql.c_str());
  if (PQresultStatus(r) != PGRES_COPY_OUT)
    die(std::string{"COPY TO STDOUT: "} + PQresultErrorMessage(r));
  PQclear(r);
  std::uint64_t rows = 0, bytes = 0, bad = 0;
  char* buf = nullptr;
  int n;
  while ((n = PQgetCopyData(c, &buf, 0)) > 0) {
    ++rows;
    bytes += static_cast<std::uint64_t>(n);
    // time \t topic \t partition \t offset \t id \t data(256) \n
    if (n < 256 + 40 || buf[n - 1] != '\n' || buf[n - 2] != '}')
      ++bad;
    PQfreemem(buf);
  }
  if (n == -2)
    die(std::string{"COPY read: "} + PQerrorMessage(c));
  r = PQgetResult(c);
  if (PQresultStatus(r) != PGRES_COMMAND_OK)
    die(std::string{"COPY: "} + PQresultErrorMessage(r));
  PQclear(r);
  double secs = seconds_since(t0);
  PQfinish(c);
  if (bad)
    die(std::to_string(bad) + " rows did not hold the 256-byte payload");
  return {{"entries", rows}, {"bytes", bytes}, {"seconds", secs}};
}

void run_read(const options& o) {
  json r = o.target == "nerve"   ? read_nerve(o)
           : o.target == "redis" ? read_redis(o)
                                 : read_postgres(o);
  auto entries = r.at("entries").get<std::uint64_t>();
  r["target"] = o.target;
  r["expected"] = o.expect;
  r["verified"] = entries == o.expect
                  && (o.target != "nerve"
                      || (r.at("events_total").get<std::uint64_t>() == o.expect
                          && r.at("acked").get<std::uint64_t>() == o.expect));
  r["events_per_s"] = static_cast<double>(entries) / r.at("seconds").get<double>();
  std::printf("%s\n", r.dump().c_str());
  std::fflush(stdout);
  if (!r["verified"].get<bool>()) {
    std::fprintf(stderr, "replay_load: %s returned %" PRIu64 " entries, expected %" PRIu64 "\n",
                 o.target.c_str(), entries, o.expect);
    std::exit(3);
  }
}

} // namespace

int main(int argc, char** argv) {
  options o;
  CLI::App app{"replay_load: fills nerve, Redis or PostgreSQL and times a window's reconstruction"};
  app.require_subcommand(1);
  auto common = [&o](CLI::App* s) {
    s->add_option("--target", o.target, "nerve, redis or postgres")
      ->required()
      ->check(CLI::IsMember({"nerve", "redis", "postgres"}));
    s->add_option("--host", o.host, "server address (nerve, redis)");
    s->add_option("--port", o.port, "server port (nerve, redis)");
    s->add_option("--pg", o.pg_conninfo, "libpq connection string (postgres)");
    s->add_option("--topics", o.topics, "topics (nerve), streams (redis), topic values (postgres)");
    s->add_option("--prefix", o.prefix, "topic name prefix: <prefix>.t<n>");
    s->add_option("--batch", o.batch,
                  "events per request / pipeline; consecutive batches "
                  "go to consecutive topics");
  };
  auto* fill = app.add_subcommand("fill", "write the events, print the windows");
  common(fill);
  fill->add_option("--events", o.events, "events to write");
  fill->add_option("--connections", o.connections, "nerve: concurrent publishing connections");
  fill->add_option("--partitions", o.partitions, "postgres: partition values per topic");
  fill->add_option("--fractions", o.fractions, "window sizes as fractions of the events");
  auto* read = app.add_subcommand("read", "reconstruct one window, timed");
  common(read);
  read->add_option("--from", o.from, "window start (us; ms for redis)")->required();
  read->add_option("--to", o.to, "window end, exclusive")->required();
  read->add_option("--expect", o.expect, "events the window holds")->required();
  read->add_option("--page", o.page, "entries per page / XRANGE COUNT");
  read->add_option("--agent", o.agent, "nerve: whose history to read");
  CLI11_PARSE(app, argc, argv);
  if (o.batch == 0 || o.topics == 0 || o.partitions == 0 || o.connections == 0 || o.page == 0)
    die("--batch, --topics, --partitions, --connections and --page must be >= 1");
  if (o.target == "postgres" ? o.pg_conninfo.empty() : o.port == 0)
    die("give --port (nerve, redis) or --pg (postgres)");
  if (fill->parsed())
    run_fill(o);
  else
    run_read(o);
  return 0;
}
