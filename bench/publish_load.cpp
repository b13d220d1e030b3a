// publish_load: the load generator of bench/publish (closed loop) and bench/soak
// (open loop, --rate, with a report every --report-every seconds).
//
// Drives either nerve (POST /v1/topics/{topic}/events over keep-alive
// HTTP/1.1) or redis-server (XADD stream * p <payload>) with the same model:
// N client connections, each sending one event per request (or, with
// --batch B, B events: one JSON array per POST, B pipelined XADDs per write)
// and waiting for the answer(s) before sending the next, all on ONE thread running one Asio
// event loop (the generator shares the machine's cores with the server, so
// it must cost as little CPU as possible: no thread per connection, requests
// pre-built once per connection, answers split by Beast's HTTP parser and only
// a sample of their JSON parsed fully; arguments by CLI11).
//
// Open loop (--rate R > 0, one event per request): the send times are fixed in
// advance as in deliver_load (slot k of connection i at start + (i + k * N) / R);
// a slot whose time came while the answer before it is still missing is sent as
// soon as that answer arrives, and every latency is measured from the slot's
// SCHEDULED time, so a stalled server cannot hide its stalls by slowing the sender
// down. --rate 0 (the default) is closed loop: latency from the actual send.
//
// --report-every S prints, every S seconds from the start (warm-up included), one
// JSON line {"report":..} with the successes answered in those S seconds, the
// failures, and the p50/p99/p99.9 of their latencies: a long run's time series.
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
#include <cinttypes>
#include <cstdio>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "load_common.hpp"

using namespace nerve_bench;

namespace {

// -- options ------------------------------------------------------------------

struct options : common_options {
  static constexpr const char* description
    = "the load generator of bench/publish (closed loop) and bench/soak (open loop)";
  static constexpr std::size_t min_payload_bytes = 16;
  unsigned clients = 16;
  unsigned batch = 1; ///< events per request
  unsigned verify_samples = 32;
  double rate = 0;           ///< events/s over all clients; 0 = closed loop
  double report_every_s = 0; ///< a JSON report line this often; 0 = none

  options() { prog = "publish_load"; }

  void add_own(CLI::App& app) {
    app.add_option("--clients", clients, "concurrent connections");
    app.add_option("--batch", batch,
                   "events per request: a JSON array of that many per POST (nerve), that "
                   "many XADDs pipelined per write (redis)");
    app.add_option("--verify-samples", verify_samples, "events read back after the run");
    app.add_option("--rate", rate,
                   "open loop: events/s over all clients, latency from the scheduled send "
                   "time; 0 = closed loop");
    app.add_option("--report-every", report_every_s,
                   "print a JSON line with the last N seconds' successes, failures and "
                   "latency percentiles every N seconds; 0 = only the final result");
  }

  void check_own() const {
    if (clients == 0 || duration_s <= 0 || warmup_s < 0 || batch == 0 || batch > 10000)
      usage(*this, "--clients must be >= 1, --batch 1..10000, --duration > 0, --warmup >= 0");
    if (rate < 0 || report_every_s < 0 || (rate > 0 && batch != 1))
      usage(*this, "--rate and --report-every must be >= 0; --rate needs --batch 1");
  }
};

// -- the payload --------------------------------------------------------------

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

// -- the shared run state -----------------------------------------------------

struct run_state : answer_counts {
  options opt;
  clock_type::time_point start;
  std::vector<std::string> sample_ids; ///< ids read back after the run
  unsigned open_clients = 0;
  std::function<void()> all_done; ///< called when the last connection finished
  // Since the last report (--report-every): successes' latencies and failures.
  std::vector<std::uint32_t> report_us;
  std::uint64_t report_errors = 0;
};

// -- one client connection ----------------------------------------------------

class client : public connection<client> {
public:
  client(net::io_context& ioc, run_state& st, unsigned index)
    : connection(ioc, st.opt, st.opt.target == "redis", "", "redis", "HTTP"), timer_(ioc), st_(st),
      index_(index) {
    build_request();
  }

  void start() {
    ++st_.open_clients;
    send_request();
  }

private:
  friend class connection<client>;

  void build_request() {
    auto& o = st_.opt;
    auto event = "{\"data\":" + nerve_data(o.payload_bytes) + "}";
    if (o.target == "nerve" && o.batch == 1) {
      request_ = http_request(o, "POST", "/v1/topics/" + o.name + "/events", event);
    } else if (o.target == "nerve") {
      std::string body = "[";
      for (unsigned i = 0; i < o.batch; ++i)
        body += (i == 0 ? "" : ",") + event;
      request_ = http_request(o, "POST", "/v1/topics/" + o.name + "/events", body + "]");
    } else {
      auto one = xadd_command(o, filler(o.payload_bytes));
      for (unsigned i = 0; i < o.batch; ++i)
        request_ += one;
    }
  }

  /// Closed loop: sends now. Open loop: sends the next slot if it is due, else
  /// waits for it; finishes at the first slot past the window.
  void send_request() {
    if (st_.opt.rate <= 0) {
      sent_at_ = clock_type::now();
      return send(request_);
    }
    auto sched = slot_time(slot_);
    if (sched >= st_.window_end)
      return finish();
    if (sched > clock_type::now()) {
      timer_.expires_at(sched);
      timer_.async_wait([self = shared_from_this()](boost::system::error_code ec) {
        if (!ec)
          self->send_request();
      });
      return;
    }
    ++slot_;
    sent_at_ = sched;
    send(request_);
  }

  /// The scheduled time of slot k of this connection (open loop).
  [[nodiscard]] clock_type::time_point slot_time(std::uint64_t k) const {
    return slot_due(st_.start, index_, k, st_.opt.clients, st_.opt.rate);
  }

  void on_http(const http_answer& a) {
    bool good = a.status == 201;
    if (good && a.body.rfind("{\"events\":[{", 0) != 0)
      good = false;
    if (good && st_.opt.batch > 1 && ids_in(a.body) != st_.opt.batch)
      good = false;
    if (good && should_sample())
      good = check_nerve_answer(a.body);
    if (!good)
      st_.note_error("HTTP " + std::to_string(a.status) + ": "
                     + std::string{a.body.substr(0, 300)});
    for (unsigned i = 0; i < st_.opt.batch; ++i)
      answered(good);
    if (a.close)
      return fail("the server closed the connection");
    next();
  }

  bool on_reply(redisReply* reply) {
    bool good = reply->type == REDIS_REPLY_STRING && valid_stream_id(reply_str(reply));
    if (!good) {
      st_.note_error(reply->type == REDIS_REPLY_ERROR
                       ? std::string{"redis: "} + reply->str
                       : "redis: unexpected XADD reply type " + std::to_string(reply->type));
    } else if (should_sample()) {
      ++st_.sampled;
      if (st_.sample_ids.size() < st_.opt.verify_samples)
        st_.sample_ids.emplace_back(reply_str(reply));
    }
    answered(good);
    if (++replies_ < st_.opt.batch)
      return true; // more replies of this write to come
    replies_ = 0;
    next();
    return false; // the last reply of the write
  }

  /// Events in a nerve answer: each has exactly one "id" member.
  static unsigned ids_in(std::string_view body) {
    unsigned n = 0;
    for (auto at = body.find("\"id\":"); at != std::string_view::npos;
         at = body.find("\"id\":", at + 5))
      ++n;
    return n;
  }

  /// The first answer of every connection, then about one in 1000.
  bool should_sample() { return answers_++ == 0 || (answers_ + index_) % 1000 == 0; }

  /// Full check of one answer: {"events":[{"id":..,"topic":..,"partition":..,
  /// "offset":..,"time":..,"duplicate":false}]} (with --batch, of its first event,
  /// the others counted by on_http).
  bool check_nerve_answer(std::string_view body) {
    ++st_.sampled;
    auto& o = st_.opt;
    auto j = json::parse(body, nullptr, false);
    const json* e = o.batch == 1 ? single_event(j)
                    : j.is_object() && j.contains("events") && j["events"].is_array()
                        && j["events"].size() == o.batch
                      ? &j["events"][0]
                      : nullptr;
    bool ok = e != nullptr;
    if (ok) {
      ok = e->value("id", json()).is_string() && !(*e)["id"].get<std::string>().empty()
           && e->value("topic", json()) == o.name
           && e->value("partition", json()).is_number_unsigned()
           && e->value("offset", json()).is_number_unsigned()
           && e->value("time", json()).is_string() && e->value("duplicate", json()) == false;
      if (ok && st_.sample_ids.size() < o.verify_samples)
        st_.sample_ids.push_back((*e)["id"].get<std::string>());
    }
    if (!ok)
      ++st_.sample_failures;
    return ok;
  }

  void answered(bool good) {
    st_.answered(good, sent_at_);
    if (st_.opt.report_every_s <= 0)
      return;
    if (!good)
      ++st_.report_errors;
    else
      st_.report_us.push_back(static_cast<std::uint32_t>(
        std::chrono::duration_cast<std::chrono::microseconds>(clock_type::now() - sent_at_)
          .count()));
  }

  void fail(const std::string& why) {
    st_.io_failure(why);
    finish();
  }

  void next() {
    if (st_.opt.rate <= 0 && clock_type::now() >= st_.window_end)
      return finish();
    send_request();
  }

  void on_finish() {
    timer_.cancel();
    if (--st_.open_clients == 0 && st_.all_done)
      st_.all_done();
    boost::system::error_code ec;
    socket_.shutdown(tcp::socket::shutdown_both, ec);
    close_socket();
  }

  net::steady_timer timer_; ///< waits for the next slot (open loop)
  run_state& st_;
  unsigned index_;
  std::string request_;
  clock_type::time_point sent_at_; ///< the actual (closed) or scheduled (open loop) send time
  std::uint64_t slot_ = 0;         ///< the next slot to send (open loop)
  std::uint64_t answers_ = 0;
  unsigned replies_ = 0; ///< replies of the current write so far (redis)
};

// -- after the run: read back and count ----------------------------------------

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
  redisContext* c = redis_try_connect(st.opt);
  if (c == nullptr) {
    v.note = "cannot connect for verification";
    return v;
  }
  auto expect = filler(st.opt.payload_bytes);
  for (auto& id : st.sample_ids) {
    ++v.checked;
    auto* r = static_cast<redisReply*>(redisCommand(c, "XRANGE %b %b %b", st.opt.name.data(),
                                                    st.opt.name.size(), id.data(), id.size(),
                                                    id.data(), id.size()));
    // [[id, [p, payload]]]
    bool ok = r != nullptr && r->type == REDIS_REPLY_ARRAY && r->elements == 1
              && r->element[0]->type == REDIS_REPLY_ARRAY && r->element[0]->elements == 2
              && r->element[0]->element[1]->type == REDIS_REPLY_ARRAY
              && r->element[0]->element[1]->elements == 2
              && reply_str(r->element[0]->element[1]->element[0]) == "p"
              && reply_str(r->element[0]->element[1]->element[1]) == expect;
    if (!ok) {
      ++v.failed;
      if (v.note.empty())
        v.note = "entry " + id + " read back wrong";
    }
    if (r != nullptr)
      freeReplyObject(r);
  }
  if (auto len = redis_xlen(c, st.opt))
    v.stored = static_cast<std::uint64_t>(*len);
  redisFree(c);
  return v;
}

/// Prints one --report-every line: the successes answered since the last one,
/// the failures, and their latency percentiles (ms); then starts the next.
void print_report(run_state& st, double t_s) {
  auto& v = st.report_us;
  std::printf("{\"report\":{\"t_s\":%.3f,\"ok\":%zu,\"errors\":%" PRIu64 ",\"io_errors\":%" PRIu64
              ",\"p50_ms\":%s,\"p99_ms\":%s,\"p999_ms\":%s}}\n",
              t_s, v.size(), st.report_errors, st.io_errors,
              v.empty() ? "null" : num(percentile_ms(v, 0.50)).c_str(),
              v.empty() ? "null" : num(percentile_ms(v, 0.99)).c_str(),
              v.empty() ? "null" : num(percentile_ms(v, 0.999)).c_str());
  std::fflush(stdout);
  v.clear();
  st.report_errors = 0;
}

/// Reports every --report-every seconds from `st.start` until stopped.
class reporter {
public:
  reporter(net::io_context& ioc, run_state& st) : timer_(ioc), st_(st) {}

  void start() {
    if (st_.opt.report_every_s > 0)
      arm();
  }

  /// The last, partial, interval; no more reports.
  void stop() {
    if (st_.opt.report_every_s <= 0 || stopped_)
      return;
    stopped_ = true;
    timer_.cancel();
    print_report(st_, seconds_since_start());
  }

private:
  void arm() {
    ++ticks_;
    timer_.expires_at(
      st_.start
      + std::chrono::duration_cast<clock_type::duration>(
        std::chrono::duration<double>(st_.opt.report_every_s * static_cast<double>(ticks_))));
    on_expiry(timer_, [this] {
      print_report(st_, seconds_since_start());
      arm();
    });
  }

  [[nodiscard]] double seconds_since_start() const {
    return std::chrono::duration<double>(clock_type::now() - st_.start).count();
  }

  net::steady_timer timer_;
  run_state& st_;
  std::uint64_t ticks_ = 0;
  bool stopped_ = false;
};

} // namespace

int main(int argc, char** argv) {
  run_state st;
  st.opt = parse_options<options>(argc, argv);
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
  reporter reports{ioc, st};
  reports.start();

  // CPU use of this process during the measured window only.
  cpu_window cpu_use;
  net::steady_timer begin_timer{ioc, st.window_begin};
  on_expiry(begin_timer, [&] { cpu_use.begin(); });
  net::steady_timer end_timer{ioc, st.window_end};
  on_expiry(end_timer, [&] { cpu_use.end(); });
  // A request stuck past the end for 30 s ends the run anyway.
  net::steady_timer deadline{ioc, st.window_end + std::chrono::seconds{30}};
  on_expiry(deadline, [&] {
    st.note_error("requests still unanswered 30 s after the end; stopping");
    reports.stop();
    ioc.stop();
  });
  st.all_done = [&] {
    reports.stop();
    cpu_use.end();
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
  double p999 = percentile_ms(lat, 0.999);
  double p90 = percentile_ms(lat, 0.90);
  double mean = 0;
  for (auto us : lat)
    mean += static_cast<double>(us);
  mean = lat.empty() ? 0 : mean / static_cast<double>(lat.size()) / 1000.0;
  double eps = static_cast<double>(st.ok_window) / o.duration_s;
  double cpu = cpu_use.share(o.duration_s);
  bool verified = st.errors == 0 && st.io_errors == 0 && stuck == 0 && st.sample_failures == 0
                  && v.failed == 0 && v.checked > 0 && count_ok;

  std::string note = st.first_error;
  if (note.empty())
    note = v.note;
  if (note.empty() && !count_ok)
    note = "the server holds " + (v.stored ? std::to_string(*v.stored) : std::string{"?"})
           + " events under " + o.name + ", " + std::to_string(st.ok_total) + " were acknowledged";
  std::string escaped = json_escape(note);
  std::printf(
    "{\"target\":\"%s\",\"clients\":%u,\"batch\":%u,\"rate\":%.1f,\"duration_s\":%.3f,"
    "\"warmup_s\":%.3f,\"payload_bytes\":%zu,\"events_per_s\":%.1f,\"ok_in_window\":%" PRIu64
    ",\"ok_total\":%" PRIu64 ",\"errors\":%" PRIu64 ",\"io_errors\":%" PRIu64
    ",\"p50_ms\":%.3f,\"p90_ms\":%.3f,\"p99_ms\":%.3f,\"p999_ms\":%.3f,\"mean_ms\":%.3f,"
    "\"client_cpu\":%.3f,\"sampled_answers\":"
    "%" PRIu64 ",\"read_back\":%" PRIu64 ",\"read_back_failed\":%" PRIu64
    ",\"stored\":%s,\"verified\":%s,\"note\":\"%s\"}\n",
    o.target.c_str(), o.clients, o.batch, o.rate, o.duration_s, o.warmup_s, o.payload_bytes, eps,
    st.ok_window, st.ok_total, st.errors, st.io_errors, p50, p90, p99, p999, mean, cpu, st.sampled,
    v.checked, v.failed, v.stored ? std::to_string(*v.stored).c_str() : "null",
    verified ? "true" : "false", escaped.c_str());
  std::fprintf(stderr,
               "publish_load %s clients=%u: %.0f events/s, p50 %.2f ms, p99 %.2f ms, client cpu "
               "%.0f%%, %s%s%s\n",
               o.target.c_str(), o.clients, eps, p50, p99, cpu * 100,
               verified ? "verified" : "NOT VERIFIED", note.empty() ? "" : ": ", note.c_str());
  return verified ? 0 : 1;
}
