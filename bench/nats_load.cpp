// nats_load: the JetStream publisher of bench/replication (closed loop, or
// open loop with --rate).
//
// publish_load's model spoken in the NATS client protocol (no NATS client
// library is packaged in Debian, and a Python client cannot drive the load on
// 2 cores without taking the servers' CPU): N client connections to one
// nats-server, each publishing one message per request (PUB <subject>
// <reply-inbox> <n>) and waiting for JetStream's PubAck
// ({"stream":..,"seq":..}) before sending the next, all on ONE thread running
// one Asio event loop. A connection sends CONNECT with headers and
// no_responders on, so a subject no stream listens to fails fast (an HMSG with
// status 503) instead of hanging; an ack carrying "error" counts as an error.
//
// Phases: connect all clients (INFO, CONNECT, SUB to the inbox, PING/PONG),
// warm up for --warmup seconds, then measure for --duration seconds. Only
// PubAcks that arrive inside the measured window count; latency is from the
// PUB's write to its PubAck. The stream's contents are checked by
// bench/replication through each server's monitoring endpoint.
//
// Open loop (--rate R > 0), as publish_load's: slot k of connection i is due
// at start + (i + k * N) / R; a slot that came due while its connection still
// waits for an ack is sent when the ack arrives, and latency is measured from
// the slot's SCHEDULED time, so a stalled server cannot hide its stalls.
//
// Prints one JSON object on stdout (events_per_s, p50_ms, p99_ms, ...), and a
// human summary on stderr.
#include <cinttypes>
#include <cstdio>
#include <deque>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "load_common.hpp"

using namespace nerve_bench;

namespace {

struct options {
  std::string host = "127.0.0.1";
  unsigned port = 0;
  unsigned clients = 16;
  double duration_s = 10;
  double warmup_s = 2;
  std::string subject = "bench.events";
  std::string stream; ///< the stream every ack must name
  std::size_t payload_bytes = 256;
  std::string inbox_prefix = "_INBOX.bench";
  double rate = 0; ///< messages/s over all clients; 0 = closed loop
};

[[noreturn]] void usage(const std::string& why) {
  std::fprintf(stderr, "nats_load: %s (see nats_load --help)\n", why.c_str());
  std::exit(2);
}

options parse(int argc, char** argv) {
  options o;
  CLI::App app{"nats_load: the JetStream publisher of bench/replication"};
  app.add_option("--host", o.host, "nats-server address");
  app.add_option("--port", o.port, "nats-server client port")->required();
  app.add_option("--clients", o.clients, "concurrent connections");
  app.add_option("--duration", o.duration_s, "measured seconds");
  app.add_option("--warmup", o.warmup_s, "warm-up seconds");
  app.add_option("--subject", o.subject, "subject published to");
  app.add_option("--stream", o.stream, "stream name every PubAck must carry")->required();
  app.add_option("--payload-bytes", o.payload_bytes, "payload size");
  app.add_option("--inbox-prefix", o.inbox_prefix, "reply subjects start with this");
  app.add_option("--rate", o.rate,
                 "open loop: messages/s over all clients, latency from the scheduled send "
                 "time; 0 = closed loop");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == 0)
      std::exit(app.exit(e));
    usage(e.what());
  }
  if (o.port == 0 || o.port > 65535 || o.clients == 0 || o.duration_s <= 0 || o.warmup_s < 0
      || o.payload_bytes == 0 || o.rate < 0)
    usage("need --port, --clients >= 1, --duration > 0, --warmup >= 0, --payload-bytes >= 1, "
          "--rate >= 0");
  for (auto& s : {o.subject, o.inbox_prefix, o.stream})
    for (char c : s)
      if (c <= ' ' || c == '*' || c == '>')
        usage("subjects and the stream name take no spaces or wildcards");
  return o;
}

struct run_state : answer_counts {
  options opt;
  unsigned ready_clients = 0;
  unsigned open_clients = 0;
  clock_type::time_point start; ///< open loop: slot 0 of connection 0
  std::function<void()> all_ready;
  std::function<void()> all_done;
};

/// One NATS connection publishing one message at a time.
class client : public std::enable_shared_from_this<client> {
public:
  client(net::io_context& ioc, run_state& st, unsigned index)
    : socket_(ioc), timer_(ioc), st_(st), index_(index) {
    auto& o = st_.opt;
    inbox_ = o.inbox_prefix + "." + std::to_string(index_);
    pub_head_ = "PUB " + o.subject + " " + inbox_ + ".";
    pub_tail_ = " " + std::to_string(o.payload_bytes) + "\r\n" + filler(o.payload_bytes) + "\r\n";
  }

  void connect(const tcp::endpoint& ep) {
    boost::system::error_code ec;
    socket_.connect(ep, ec);
    if (ec) {
      std::fprintf(stderr, "nats_load: cannot connect to %s:%u: %s\n", st_.opt.host.c_str(),
                   st_.opt.port, ec.message().c_str());
      std::exit(1);
    }
    socket_.set_option(tcp::no_delay(true));
    ++st_.open_clients;
    // The server speaks first (INFO); the handshake ends with our PING's PONG.
    write("CONNECT {\"verbose\":false,\"pedantic\":false,\"headers\":true,\"no_responders\":true,"
          "\"protocol\":1,\"name\":\"nats_load\",\"lang\":\"c++\",\"version\":\"1\"}\r\nSUB "
          + inbox_ + ".* 1\r\nPING\r\n");
    read();
  }

  /// Starts the loop (after every client is ready).
  void start() { send_request(); }

private:
  // -- I/O ----------------------------------------------------------------------

  void write(std::string data) {
    out_.push_back(std::move(data));
    if (out_.size() == 1)
      write_front();
  }

  void write_front() {
    net::async_write(socket_, net::buffer(out_.front()),
                     [self = shared_from_this()](boost::system::error_code ec, std::size_t) {
                       if (ec)
                         return self->fail("write: " + ec.message());
                       self->out_.pop_front();
                       if (!self->out_.empty())
                         self->write_front();
                     });
  }

  void read() {
    socket_.async_read_some(net::buffer(chunk_), [self = shared_from_this()](
                                                   boost::system::error_code ec, std::size_t n) {
      if (ec)
        return self->fail("read: " + ec.message());
      self->inbox_buf_.append(self->chunk_.data(), n);
      if (self->parse())
        self->read();
    });
  }

  // -- the protocol ------------------------------------------------------------------

  /// Handles every complete server message in the buffer; false once the
  /// connection is done.
  bool parse() {
    std::size_t pos = 0;
    bool alive = true;
    while (alive) {
      auto eol = inbox_buf_.find("\r\n", pos);
      if (eol == std::string::npos)
        break;
      std::string_view line{inbox_buf_.data() + pos, eol - pos};
      if (line.rfind("MSG ", 0) == 0 || line.rfind("HMSG ", 0) == 0) {
        bool headers = line[0] == 'H';
        // MSG <subject> <sid> [reply] <bytes> / HMSG <subject> <sid> [reply] <hbytes> <bytes>
        auto last = line.rfind(' ');
        std::size_t total = std::strtoull(std::string{line.substr(last + 1)}.c_str(), nullptr, 10);
        std::size_t hdr = 0;
        if (headers) {
          auto prev = line.rfind(' ', last - 1);
          hdr = std::strtoull(std::string{line.substr(prev + 1, last - prev - 1)}.c_str(), nullptr,
                              10);
        }
        if (inbox_buf_.size() < eol + 2 + total + 2)
          break; // the payload is not all here yet
        std::string_view payload{inbox_buf_.data() + eol + 2, total};
        alive = on_msg(payload.substr(0, hdr), payload.substr(hdr));
        pos = eol + 2 + total + 2;
      } else {
        pos = eol + 2;
        if (line == "PING")
          write("PONG\r\n");
        else if (line == "PONG")
          alive = on_handshake();
        else if (line.rfind("-ERR", 0) == 0) {
          fail("server: " + std::string{line});
          alive = false;
        }
        // INFO (also sent again when the cluster changes) and +OK need nothing.
      }
    }
    inbox_buf_.erase(0, pos);
    return alive && !done_;
  }

  bool on_handshake() {
    if (ready_)
      return true;
    ready_ = true;
    if (++st_.ready_clients == st_.opt.clients && st_.all_ready)
      st_.all_ready();
    return true;
  }

  bool on_msg(std::string_view headers, std::string_view body) {
    bool good = headers.empty() && body.rfind("{\"stream\":\"", 0) == 0
                && body.find("\"error\"") == std::string_view::npos
                && body.find("\"seq\":") != std::string_view::npos;
    if (good && (answers_++ == 0 || (answers_ + index_) % 1000 == 0))
      good = check_ack(body);
    if (!good)
      st_.note_error(headers.empty() ? "PubAck: " + std::string{body.substr(0, 300)}
                                     : "no ack: " + std::string{headers.substr(0, 120)});
    answered(good);
    if (st_.opt.rate <= 0 && clock_type::now() >= st_.window_end) {
      finish();
      return false;
    }
    send_request();
    return !done_;
  }

  /// Full check of one PubAck: {"stream":<ours>,"seq":<n >= 1>}.
  bool check_ack(std::string_view body) {
    ++st_.sampled;
    auto j = json::parse(body, nullptr, false);
    bool ok = j.is_object() && j.value("stream", json()) == st_.opt.stream
              && j.value("seq", json()).is_number_unsigned() && j["seq"].get<std::uint64_t>() >= 1
              && !j.contains("error");
    if (!ok)
      ++st_.sample_failures;
    return ok;
  }

  /// Closed loop: sends now. Open loop: sends the next slot if it is due, else
  /// waits for it; finishes at the first slot past the window.
  void send_request() {
    if (st_.opt.rate <= 0) {
      sent_at_ = clock_type::now();
      return write(pub_head_ + std::to_string(seq_++) + pub_tail_);
    }
    auto due = slot_due(st_.start, index_, slot_, st_.opt.clients, st_.opt.rate);
    if (due >= st_.window_end)
      return finish();
    if (due > clock_type::now()) {
      timer_.expires_at(due);
      timer_.async_wait([self = shared_from_this()](boost::system::error_code ec) {
        if (!ec)
          self->send_request();
      });
      return;
    }
    ++slot_;
    sent_at_ = due;
    write(pub_head_ + std::to_string(seq_++) + pub_tail_);
  }

  void answered(bool good) { st_.answered(good, sent_at_); }

  void fail(const std::string& why) {
    if (!done_)
      st_.io_failure(why);
    finish();
  }

  void finish() {
    if (done_)
      return;
    done_ = true;
    timer_.cancel();
    if (--st_.open_clients == 0 && st_.all_done)
      st_.all_done();
    boost::system::error_code ec;
    socket_.shutdown(tcp::socket::shutdown_both, ec);
    socket_.close(ec);
  }

  tcp::socket socket_;
  net::steady_timer timer_; ///< waits for the next slot (open loop)
  run_state& st_;
  unsigned index_;
  std::string inbox_, pub_head_, pub_tail_;
  std::deque<std::string> out_;
  std::array<char, 65536> chunk_{};
  std::string inbox_buf_;
  clock_type::time_point sent_at_;
  std::uint64_t seq_ = 0;
  std::uint64_t slot_ = 0; ///< the next slot to send (open loop)
  std::uint64_t answers_ = 0;
  bool ready_ = false;
  bool done_ = false;
};

} // namespace

int main(int argc, char** argv) {
  run_state st;
  st.opt = parse(argc, argv);
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
  cpu_window cpu_use;
  net::steady_timer begin_timer{ioc}, end_timer{ioc}, deadline{ioc};
  // Nothing is sent before every connection finished its handshake.
  st.window_begin = st.window_end = clock_type::time_point::max();
  net::steady_timer handshake_deadline{ioc, clock_type::now() + std::chrono::seconds{30}};
  on_expiry(handshake_deadline, [&] {
    st.note_error("connections not ready within 30 s");
    ioc.stop();
  });
  st.all_ready = [&] {
    handshake_deadline.cancel();
    st.start = clock_type::now();
    st.window_begin = st.start + to_dur(o.warmup_s);
    st.window_end = st.window_begin + to_dur(o.duration_s);
    begin_timer.expires_at(st.window_begin);
    on_expiry(begin_timer, [&] { cpu_use.begin(); });
    end_timer.expires_at(st.window_end);
    on_expiry(end_timer, [&] { cpu_use.end(); });
    // A request stuck past the end for 30 s ends the run anyway.
    deadline.expires_at(st.window_end + std::chrono::seconds{30});
    on_expiry(deadline, [&] {
      st.note_error("requests still unanswered 30 s after the end; stopping");
      ioc.stop();
    });
    for (auto& c : clients)
      c->start();
    clients.clear(); // the connections keep themselves alive
  };
  st.all_done = [&] {
    cpu_use.end();
    deadline.cancel();
    begin_timer.cancel();
    end_timer.cancel();
  };
  ioc.run();
  auto stuck = st.open_clients;

  auto lat = st.latencies_us;
  double p50 = percentile_ms(lat, 0.50);
  double p99 = percentile_ms(lat, 0.99);
  double eps = static_cast<double>(st.ok_window) / o.duration_s;
  double cpu = cpu_use.share(o.duration_s);
  bool verified = st.errors == 0 && st.io_errors == 0 && stuck == 0 && st.sample_failures == 0
                  && st.sampled > 0;
  std::string note = st.first_error;
  if (note.empty() && stuck != 0)
    note = std::to_string(stuck) + " connections did not finish";
  std::printf("{\"target\":\"jetstream\",\"clients\":%u,\"rate\":%.1f,\"duration_s\":%.3f,"
              "\"warmup_s\":%.3f,"
              "\"payload_bytes\":%zu,\"events_per_s\":%.1f,\"ok_in_window\":%" PRIu64
              ",\"ok_total\":%" PRIu64 ",\"errors\":%" PRIu64 ",\"io_errors\":%" PRIu64
              ",\"p50_ms\":%.3f,\"p99_ms\":%.3f,\"client_cpu\":%.3f,\"sampled_answers\":%" PRIu64
              ",\"verified\":%s,\"note\":\"%s\"}\n",
              o.clients, o.rate, o.duration_s, o.warmup_s, o.payload_bytes, eps, st.ok_window,
              st.ok_total, st.errors, st.io_errors, p50, p99, cpu, st.sampled,
              verified ? "true" : "false", json_escape(note).c_str());
  std::fprintf(stderr,
               "nats_load clients=%u: %.0f acks/s, p50 %.2f ms, p99 %.2f ms, client cpu %.0f%%, "
               "%s%s%s\n",
               o.clients, eps, p50, p99, cpu * 100, verified ? "ok" : "NOT OK",
               note.empty() ? "" : ": ", note.c_str());
  return verified ? 0 : 1;
}
