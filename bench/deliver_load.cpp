// deliver_load: the open-loop publish -> ack load generator of bench/deliver.
//
// Measures END-TO-END latency and throughput of a publish being consumed and
// acknowledged, against either
//
//  - nerve: N publisher connections POST /v1/topics/{topic}/events; an agent
//    configured in the server (builtin noop or a process agent) consumes and
//    acks. The ack is observed from outside through the agent's committed
//    cursor: one more connection long-polls GET /v1/topics/{topic}/groups
//    (`?index=<last answer's index>&wait_ms=200`: answered as soon as a cursor
//    moves; --watch poll polls every --poll-ms instead, for servers without
//    it); an event at (partition, offset) counts as acked at the answer of the
//    first request whose cursor for that partition is above its offset. That
//    is an upper bound on the ack time (late by the server's notice of the
//    move plus the answer's trip; polling: by up to one poll period plus the
//    round trip), and the cursor only passes an offset when
//    every earlier offset of the partition is acked too ("acked through", as a
//    Kafka commit); the lower bound (the send time of the poll before) is
//    reported too.
//  - redis-server: N producer connections XADD to a stream; C consumer
//    connections in this process read it through one consumer group
//    (XREADGROUP GROUP g c<i> COUNT n BLOCK b STREAMS s >) and XACK what they
//    read (the XACK is pipelined with the next XREADGROUP). An entry counts as
//    acked when the reply to its XACK arrives.
//
// Open loop: --rate events/s spread evenly over the N connections, each
// connection's send times fixed in advance (slot k of connection i at
// start + (i + k * N) / rate). A connection has one request outstanding; a
// slot whose time has come while the previous answer is still missing is sent
// as soon as it arrives. Every latency is measured from the slot's SCHEDULED
// time, so a slow server cannot hide its stalls by slowing the sender down
// (no coordinated omission). --rate 0 is closed loop (each connection sends
// again as soon as it is answered; latency from the actual send).
//
// Events scheduled inside the measured window (after --warmup, for
// --duration) are followed until acked, at most --drain seconds after the
// window; one never acked counts as infinitely late in the percentiles.
// Throughput is the acks observed inside the window per second.
//
// The event's sequence number is the first 16 bytes of its 256-byte payload
// (hex), so a Redis consumer finds the scheduled time of what it reads; nerve
// publishes carry the same payload. All times are this process's steady clock.
//
// Prints one JSON object on stdout and a human summary on stderr. Single
// thread, one Asio event loop, Beast for HTTP answers, hiredis' reader for
// RESP, CLI11 for arguments.
#include <algorithm>
#include <array>
#include <chrono>
#include <cinttypes>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <map>
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
    = "the open-loop publish -> ack load generator of bench/deliver";
  static constexpr std::size_t min_payload_bytes = 32;
  unsigned connections = 16; ///< publishers
  unsigned consumers = 4;    ///< redis consumers (nerve: the agent's instances, in the server)
  double rate = 0;           ///< events/s over all connections; 0 = closed loop
  double drain_s = 10;
  std::string agent = "sink";      ///< nerve agent whose cursor is watched
  std::string group = "sink";      ///< redis consumer group
  unsigned count = 16;             ///< XREADGROUP COUNT
  unsigned block_ms = 100;         ///< XREADGROUP BLOCK
  double poll_ms = 1;              ///< nerve cursor poll period (--watch poll)
  std::string watch = "long-poll"; ///< how the nerve cursor is watched

  options() {
    prog = "deliver_load";
    duration_s = 15;
    warmup_s = 3;
    name = "deliver";
  }

  void add_own(CLI::App& app) {
    app.add_option("--connections", connections, "publisher connections");
    app.add_option("--consumers", consumers, "redis consumers in the group");
    app.add_option("--rate", rate, "offered events/s over all connections; 0 = closed loop");
    app.add_option("--drain", drain_s, "seconds to wait for outstanding acks after the window");
    app.add_option("--agent", agent, "nerve agent whose acks are observed");
    app.add_option("--group", group, "Redis consumer group");
    app.add_option("--count", count, "XREADGROUP COUNT");
    app.add_option("--block-ms", block_ms, "XREADGROUP BLOCK");
    app.add_option("--poll-ms", poll_ms, "nerve: period of the cursor poll (--watch poll)");
    app.add_option("--watch", watch, "nerve: long-poll (answered when a cursor moves) or poll")
      ->check(CLI::IsMember({"long-poll", "poll"}));
  }

  void check_own() const {
    if (connections == 0 || consumers == 0 || duration_s <= 0 || warmup_s < 0 || drain_s < 0
        || rate < 0 || count == 0 || poll_ms <= 0)
      usage(*this, "need --connections, --consumers, --count >= 1, --duration, --poll-ms > 0, "
                   "--warmup, --drain, --rate >= 0");
  }
};

// -- the sequence number in the payload ---------------------------------------

constexpr std::size_t seq_chars = 16;

void put_seq(char* at, std::uint64_t seq) {
  static const char hex[] = "0123456789abcdef";
  for (std::size_t i = 0; i < seq_chars; ++i)
    at[seq_chars - 1 - i] = hex[(seq >> (4 * i)) & 0xf];
}

std::optional<std::uint64_t> get_seq(std::string_view s) {
  if (s.size() < seq_chars)
    return std::nullopt;
  std::uint64_t v = 0;
  for (std::size_t i = 0; i < seq_chars; ++i) {
    char c = s[i];
    v <<= 4;
    if (c >= '0' && c <= '9')
      v |= static_cast<std::uint64_t>(c - '0');
    else if (c >= 'a' && c <= 'f')
      v |= static_cast<std::uint64_t>(c - 'a' + 10);
    else
      return std::nullopt;
  }
  return v;
}

// -- the shared run state -----------------------------------------------------

/// One event, by sequence number.
struct event_rec {
  std::int64_t sched_ns = 0;  ///< scheduled send time
  std::int64_t answer_ns = 0; ///< publish answered (201 / XADD reply)
  std::int64_t ack_ns = 0;    ///< ack observed (upper bound for nerve)
  std::int64_t ack_lo_ns = 0; ///< nerve: the ack happened after this
};

struct run_state : run_errors {
  options opt;
  std::int64_t start_ns = 0, window_begin_ns = 0, window_end_ns = 0, drain_end_ns = 0;
  std::vector<event_rec> events; ///< by seq
  std::uint64_t publish_errors = 0;
  std::uint64_t duplicates = 0; ///< redis: an entry read and acked twice
  std::uint64_t acks_in_window = 0;
  std::uint64_t answers_in_window = 0; ///< successful publish answers
  std::uint64_t never_sent = 0;        ///< window slots still unsent when the run stopped
  bool publishing_done = false;
  unsigned publishers_open = 0;
  std::function<void()> check_done;

  std::uint64_t next_seq() {
    events.emplace_back();
    return events.size() - 1;
  }

  void acked(std::uint64_t seq, std::int64_t at, std::int64_t lo) {
    auto& e = events[seq];
    if (e.ack_ns != 0) {
      ++duplicates;
      return;
    }
    e.ack_ns = at;
    e.ack_lo_ns = lo;
    if (at >= window_begin_ns && at < window_end_ns)
      ++acks_in_window;
  }

  /// Every event scheduled before the end of the window is acked.
  [[nodiscard]] bool all_acked() const {
    for (auto it = events.rbegin(); it != events.rend(); ++it)
      if (it->ack_ns == 0)
        return false;
    return true;
  }
};

// -- publishers -----------------------------------------------------------------

/// One publisher connection, one request outstanding, sending on its schedule.
class publisher : public connection<publisher> {
public:
  using on_published = std::function<void(std::uint64_t seq, std::string_view body)>;

  publisher(net::io_context& ioc, run_state& st, unsigned index, on_published cb)
    : connection(ioc, st.opt, st.opt.target == "redis", "", "redis", "HTTP"), timer_(ioc), st_(st),
      index_(index), cb_(std::move(cb)) {
    build_template();
  }

  void start() {
    ++st_.publishers_open;
    pump();
  }

  /// Stops; slots of the window it did not send count as never acked.
  void close() {
    closing_ = true;
    if (st_.opt.rate > 0)
      for (auto k = slot_; slot_ns(k) < st_.window_end_ns; ++k)
        if (slot_ns(k) >= st_.window_begin_ns)
          ++st_.never_sent;
    timer_.cancel();
    close_socket();
  }

private:
  friend class connection<publisher>;

  void build_template() {
    auto& o = st_.opt;
    std::string payload = std::string(seq_chars, '0') + filler(o.payload_bytes - seq_chars);
    if (o.target == "nerve") {
      // data = {"p":"<payload - 8 bytes>"}: exactly payload_bytes of JSON.
      std::string inner = payload.substr(0, o.payload_bytes - 8);
      request_ = http_request(o, "POST", "/v1/topics/" + o.name + "/events",
                              "{\"data\":{\"p\":\"" + inner + "\"}}");
      seq_at_ = request_.find("{\"data\":{\"p\":\"") + 14;
    } else {
      request_ = xadd_command(o, payload);
      seq_at_ = request_.size() - 2 - payload.size();
    }
  }

  /// The scheduled time of slot k of this connection (open loop).
  [[nodiscard]] std::int64_t slot_ns(std::uint64_t k) const {
    double s = slot_seconds(index_, k, st_.opt.connections, st_.opt.rate);
    return st_.start_ns + static_cast<std::int64_t>(s * 1e9);
  }

  /// Sends the next slot if it is due, else waits for it.
  void pump() {
    auto now = now_ns();
    std::int64_t sched = st_.opt.rate > 0 ? slot_ns(slot_) : now;
    if (sched >= st_.window_end_ns || (st_.opt.rate <= 0 && now >= st_.window_end_ns))
      return finish();
    if (sched > now) {
      timer_.expires_after(std::chrono::nanoseconds(sched - now));
      timer_.async_wait([self = shared_from_this()](boost::system::error_code ec) {
        if (!ec)
          self->pump();
      });
      return;
    }
    ++slot_;
    seq_ = st_.next_seq();
    st_.events[seq_].sched_ns = sched;
    put_seq(request_.data() + seq_at_, seq_);
    send(request_);
  }

  void on_http(const http_answer& a) {
    answered(a.status == 201);
    if (a.status != 201)
      publish_failed("publish: HTTP " + std::to_string(a.status) + ": " + a.body.substr(0, 300));
    else
      cb_(seq_, a.body);
    if (a.close)
      return fail("the server closed the connection");
    pump();
  }

  bool on_reply(redisReply* reply) {
    answered(reply->type == REDIS_REPLY_STRING);
    if (reply->type != REDIS_REPLY_STRING)
      publish_failed(reply->type == REDIS_REPLY_ERROR ? std::string{"XADD: "} + reply->str
                                                      : std::string{"XADD: unexpected reply"});
    pump();
    return false; // one request outstanding: its reply was the last
  }

  /// The current event was not published: it is never acked, not followed.
  void publish_failed(std::string why) {
    ++st_.publish_errors;
    st_.note_error(std::move(why));
    st_.events[seq_].ack_ns = -1;
  }

  void answered(bool good) {
    auto now = now_ns();
    st_.events[seq_].answer_ns = now;
    if (good && now >= st_.window_begin_ns && now < st_.window_end_ns)
      ++st_.answers_in_window;
  }

  void fail(const std::string& why) {
    if (!closing_)
      st_.io_failure(why);
    finish();
  }

  void on_finish() {
    timer_.cancel();
    if (--st_.publishers_open == 0) {
      st_.publishing_done = true;
      if (st_.check_done)
        st_.check_done();
    }
  }

  net::steady_timer timer_;
  run_state& st_;
  unsigned index_;
  bool closing_ = false;
  on_published cb_;
  std::string request_;
  std::size_t seq_at_ = 0;
  std::uint64_t slot_ = 0;
  std::uint64_t seq_ = 0;
};

// -- nerve: acks observed through the agent's cursor ---------------------------

/// Tracks, per partition, the published events not yet passed by the agent's
/// cursor, and polls the cursor.
class cursor_watch : public connection<cursor_watch> {
public:
  cursor_watch(net::io_context& ioc, run_state& st)
    : connection(ioc, st.opt, false, "poll ", "", "poll"), timer_(ioc), st_(st) {
    path_ = "/v1/topics/" + st.opt.name + "/groups";
    long_poll_ = st.opt.watch == "long-poll";
  }

  void start() { poll(); }

  /// A 201 answer: {"events":[{"id":..,"topic":..,"partition":P,"offset":O,...}]}.
  /// Read with nlohmann's SAX interface (no document: one per answer was a
  /// fifth of this generator's CPU, which it takes from the server's cores);
  /// every 1000th answer is checked in full as well.
  void published(std::uint64_t seq, std::string_view body) {
    event_place place;
    bool ok = json::sax_parse(body, &place) && place.events == 1 && place.partition && place.offset;
    if (ok && answers_++ % 1000 == 0) {
      auto j = json::parse(body, nullptr, false);
      const json* e = single_event(j);
      ok = e != nullptr && e->value("partition", json()) == *place.partition
           && e->value("offset", json()) == *place.offset && e->value("id", json()).is_string()
           && e->value("topic", json()) == st_.opt.name;
    }
    if (!ok) {
      ++st_.publish_errors;
      st_.note_error("publish: unexpected answer " + std::string{body.substr(0, 300)});
      st_.events[seq].ack_ns = -1;
      return;
    }
    auto p = static_cast<std::uint32_t>(*place.partition);
    auto off = *place.offset;
    if (p >= parts_.size())
      parts_.resize(p + 1);
    auto& part = parts_[p];
    // Already passed by the cursor before this answer arrived: acked at the
    // first poll that showed it passed.
    auto it = std::upper_bound(part.history.begin(), part.history.end(), off,
                               [](std::uint64_t o, const step& s) { return o < s.cursor; });
    if (it != part.history.end())
      st_.acked(seq, it->at_ns, it->lo_ns);
    else
      part.pending.emplace(off, seq);
  }

  void close() {
    timer_.cancel();
    close_socket();
  }

  [[nodiscard]] double mean_poll_ms() const {
    return polls_ == 0 ? 0 : static_cast<double>(poll_span_ns_) / 1e6 / static_cast<double>(polls_);
  }
  [[nodiscard]] std::uint64_t polls() const { return polls_; }

  bool stopped_ = false;
  bool found_agent_ = false;

private:
  friend class connection<cursor_watch>;

  /// SAX handler: the partition and offset of each event of a publish answer.
  struct event_place : nlohmann::json_sax<json> {
    int depth = 0;       ///< 1: the answer, 2: "events", 3: an event
    unsigned events = 0; ///< objects inside "events"
    enum class member { other, partition, offset } want = member::other; ///< value to come
    std::optional<std::uint64_t> partition, offset;

    bool number_unsigned(number_unsigned_t v) override {
      if (want == member::partition)
        partition = v;
      else if (want == member::offset)
        offset = v;
      want = member::other;
      return true;
    }
    bool null() override { return value(); }
    bool boolean(bool) override { return value(); }
    bool number_integer(number_integer_t) override { return value(); }
    bool number_float(number_float_t, const string_t&) override { return value(); }
    bool string(string_t&) override { return value(); }
    bool binary(binary_t&) override { return value(); }
    bool start_object(std::size_t) override {
      if (++depth == 3)
        ++events;
      return value();
    }
    bool end_object() override {
      --depth;
      return true;
    }
    bool start_array(std::size_t) override {
      ++depth;
      return value();
    }
    bool end_array() override {
      --depth;
      return true;
    }
    bool key(string_t& k) override {
      want = depth != 3         ? member::other
             : k == "partition" ? member::partition
             : k == "offset"    ? member::offset
                                : member::other;
      return true;
    }
    bool parse_error(std::size_t, const std::string&, const nlohmann::detail::exception&) override {
      return false;
    }

  private:
    bool value() {
      want = member::other;
      return true;
    }
  };

  struct step {
    std::uint64_t cursor; ///< first seen at this poll
    std::int64_t at_ns;   ///< the poll's answer
    std::int64_t lo_ns;   ///< the previous poll's request
  };
  struct partition {
    std::map<std::uint64_t, std::uint64_t> pending; ///< offset -> seq
    std::vector<step> history;                      ///< cursor increases
  };

  void poll() {
    sent_ns_ = now_ns();
    if (long_poll_ && index_)
      send(http_request(st_.opt, "GET",
                        path_ + "?index=" + std::to_string(*index_) + "&wait_ms=200", ""));
    else
      send(http_request(st_.opt, "GET", path_, ""));
  }

  void on_http(const http_answer& a) {
    auto at = now_ns();
    // A cursor this poll sees passed an event after the previous poll read
    // it, which was after that poll was sent.
    auto lo = prev_sent_ns_ == 0 ? st_.start_ns : prev_sent_ns_;
    if (a.status == 200)
      apply(a.body, at, lo);
    else if (a.status != 404) // 404: the topic does not exist before the first publish
      st_.note_error("groups: HTTP " + std::to_string(a.status));
    if (prev_sent_ns_ != 0) {
      ++polls_;
      poll_span_ns_ += at - prev_sent_ns_;
    }
    prev_sent_ns_ = sent_ns_;
    if (st_.check_done)
      st_.check_done();
    if (stopped_)
      return;
    if (long_poll_ && index_)
      return poll(); // the server holds it until a cursor moves
    auto next = sent_ns_ + static_cast<std::int64_t>(st_.opt.poll_ms * 1e6);
    timer_.expires_after(std::chrono::nanoseconds(std::max<std::int64_t>(0, next - at)));
    timer_.async_wait([self = shared_from_this()](boost::system::error_code ec) {
      if (!ec)
        self->poll();
    });
  }

  /// Never called: this connection speaks HTTP only.
  bool on_reply(redisReply*) { return false; }

  /// {"topic":..,"groups":[{"agent":..,"partitions":[{"partition":P,"cursor":C,..}]}]}
  void apply(const std::string& body, std::int64_t at, std::int64_t lo) {
    auto j = json::parse(body, nullptr, false);
    if (!j.is_object() || !j.contains("groups") || !j["groups"].is_array())
      return st_.note_error("groups: unexpected answer " + body.substr(0, 200));
    if (long_poll_) {
      if (!j.value("index", json()).is_number_unsigned())
        return st_.note_error("groups: no index in the answer (use --watch poll)");
      index_ = j["index"].get<std::uint64_t>();
    }
    for (auto& g : j["groups"]) {
      if (!g.is_object() || g.value("agent", json()) != st_.opt.agent || !g.contains("partitions"))
        continue;
      found_agent_ = true;
      for (auto& p : g["partitions"]) {
        auto idx = p.value("partition", 0u);
        auto cursor = p.value("cursor", std::uint64_t{0});
        if (idx >= parts_.size())
          parts_.resize(idx + 1);
        auto& part = parts_[idx];
        if (!part.history.empty() && part.history.back().cursor >= cursor)
          continue;
        part.history.push_back({cursor, at, lo});
        while (!part.pending.empty() && part.pending.begin()->first < cursor) {
          st_.acked(part.pending.begin()->second, at, lo);
          part.pending.erase(part.pending.begin());
        }
      }
    }
  }

  void fail(const std::string& why) {
    if (stopped_)
      return;
    stopped_ = true;
    st_.io_failure(why);
    if (st_.check_done)
      st_.check_done();
  }

  net::steady_timer timer_;
  run_state& st_;
  std::string path_;
  bool long_poll_ = true;
  std::optional<std::uint64_t> index_; ///< of the last answer
  std::vector<partition> parts_;
  std::uint64_t answers_ = 0; ///< publish answers read
  std::int64_t sent_ns_ = 0;
  std::int64_t prev_sent_ns_ = 0;
  std::uint64_t polls_ = 0;
  std::int64_t poll_span_ns_ = 0;
};

// -- redis: consumers in a consumer group ---------------------------------------

class consumer : public connection<consumer> {
public:
  consumer(net::io_context& ioc, run_state& st, unsigned index)
    : connection(ioc, st.opt, true, "consumer ", "consumer", "consumer"), st_(st),
      name_("c" + std::to_string(index)) {
    auto& o = st_.opt;
    auto count = std::to_string(o.count);
    auto block = std::to_string(o.block_ms);
    read_cmd_ = must_format(o, {"XREADGROUP", "GROUP", o.group, name_, "COUNT", count, "BLOCK",
                                block, "STREAMS", o.name, ">"});
  }

  void start() { write(read_cmd_); }

  void close() {
    stopped_ = true;
    close_socket();
  }

private:
  friend class connection<consumer>;

  void write(const std::string& what) {
    out_ = what;
    send(out_);
  }

  /// Never called: this connection speaks RESP only.
  void on_http(const http_answer&) {}

  /// Returns true while more replies of the current write are expected.
  bool on_reply(redisReply* r) {
    if (r->type == REDIS_REPLY_ERROR) {
      fail(std::string{"consumer: "} + r->str);
      return false;
    }
    if (awaiting_ack_) {
      // XACK's integer reply: everything it named is acked now.
      awaiting_ack_ = false;
      auto at = now_ns();
      if (r->type != REDIS_REPLY_INTEGER || static_cast<std::size_t>(r->integer) != acking_.size())
        st_.note_error("XACK acknowledged " + std::to_string(r->integer) + " of "
                       + std::to_string(acking_.size()));
      for (auto seq : acking_)
        st_.acked(seq, at, at);
      acking_.clear();
      if (st_.check_done)
        st_.check_done();
      return true; // the pipelined XREADGROUP's reply follows
    }
    // XREADGROUP: nil on timeout, else [[stream, [[id, [field, value, ...]], ...]]].
    // XACK stream group id... then the next XREADGROUP, in one write.
    std::vector<std::string_view> xack{"XACK", st_.opt.name, st_.opt.group};
    if (r->type == REDIS_REPLY_ARRAY && r->elements == 1 && r->element[0]->elements == 2) {
      auto* entries = r->element[0]->element[1];
      for (std::size_t i = 0; i < entries->elements; ++i) {
        auto* e = entries->element[i];
        if (e->elements != 2 || e->element[1]->type != REDIS_REPLY_ARRAY
            || e->element[1]->elements != 2) {
          st_.note_error("XREADGROUP: unexpected entry");
          continue;
        }
        auto seq = get_seq(reply_str(e->element[1]->element[1]));
        if (!seq || *seq >= st_.events.size()) {
          st_.note_error("XREADGROUP: entry without a sequence number");
          continue;
        }
        acking_.push_back(*seq);
        xack.push_back(reply_str(e->element[0]));
      }
    }
    if (stopped_)
      return false;
    if (xack.size() == 3) { // no ids
      write(read_cmd_);
      return false;
    }
    auto cmd = format_command(xack);
    if (!cmd) {
      fail("cannot format XACK");
      return false;
    }
    awaiting_ack_ = true;
    write(*cmd + read_cmd_);
    return false;
  }

  void fail(const std::string& why) {
    if (!stopped_) {
      stopped_ = true;
      st_.io_failure(why);
    }
  }

  run_state& st_;
  std::string name_;
  std::string read_cmd_;
  std::string out_;
  std::vector<std::uint64_t> acking_;
  bool awaiting_ack_ = false;
  bool stopped_ = false;
};

// -- setup and checks (blocking, not timed) ------------------------------------

redisContext* redis_connect(const options& o) {
  redisContext* c = redis_try_connect(o);
  if (c == nullptr) {
    std::fprintf(stderr, "deliver_load: cannot connect to redis\n");
    std::exit(1);
  }
  return c;
}

void redis_setup(const options& o) {
  auto* c = redis_connect(o);
  auto* r = static_cast<redisReply*>(
    redisCommand(c, "XGROUP CREATE %s %s $ MKSTREAM", o.name.c_str(), o.group.c_str()));
  if (r == nullptr || r->type == REDIS_REPLY_ERROR) {
    std::fprintf(stderr, "deliver_load: XGROUP CREATE failed: %s\n", r ? r->str : "no reply");
    std::exit(1);
  }
  freeReplyObject(r);
  redisFree(c);
}

/// Redis' own view: entries in the stream and entries still pending in the group.
std::pair<std::int64_t, std::int64_t> redis_counts(const options& o) {
  auto* c = redis_connect(o);
  std::int64_t len = redis_xlen(c, o).value_or(-1);
  std::int64_t pending = -1;
  if (auto* r = static_cast<redisReply*>(
        redisCommand(c, "XPENDING %s %s", o.name.c_str(), o.group.c_str()))) {
    if (r->type == REDIS_REPLY_ARRAY && r->elements >= 1
        && r->element[0]->type == REDIS_REPLY_INTEGER)
      pending = r->element[0]->integer;
    freeReplyObject(r);
  }
  redisFree(c);
  return {len, pending};
}

/// nerve's own view of the agent: {"metrics":[{"agent","topic","processed",...}]}.
json nerve_metrics(const options& o) {
  auto got = http_get(o, "/v1/metrics?topic=" + o.name + "&agent=" + o.agent);
  if (!got || got->first != 200)
    return json();
  auto j = json::parse(got->second, nullptr, false);
  if (!j.is_object() || !j.contains("metrics") || !j["metrics"].is_array())
    return json();
  for (auto& m : j["metrics"])
    if (m.is_object() && m.value("agent", json()) == o.agent && m.value("topic", json()) == o.name)
      return m;
  return json();
}

} // namespace

int main(int argc, char** argv) {
  run_state st;
  st.opt = parse_options<options>(argc, argv);
  auto& o = st.opt;
  st.events.reserve(1u << 21);
  bool nerve = o.target == "nerve";
  if (!nerve)
    redis_setup(o);

  net::io_context ioc{1};
  tcp::endpoint ep{net::ip::make_address(o.host), static_cast<unsigned short>(o.port)};

  std::shared_ptr<cursor_watch> watch;
  std::vector<std::shared_ptr<consumer>> consumers;
  if (nerve) {
    watch = std::make_shared<cursor_watch>(ioc, st);
    watch->connect(ep);
  } else {
    for (unsigned i = 0; i < o.consumers; ++i) {
      consumers.push_back(std::make_shared<consumer>(ioc, st, i));
      consumers.back()->connect(ep);
    }
  }
  std::vector<std::shared_ptr<publisher>> publishers;
  for (unsigned i = 0; i < o.connections; ++i) {
    publisher::on_published cb;
    if (nerve)
      cb = [w = watch.get()](std::uint64_t seq, std::string_view body) { w->published(seq, body); };
    publishers.push_back(std::make_shared<publisher>(ioc, st, i, std::move(cb)));
    publishers.back()->connect(ep);
  }

  auto secs = [](double s) { return static_cast<std::int64_t>(s * 1e9); };
  st.start_ns = now_ns();
  st.window_begin_ns = st.start_ns + secs(o.warmup_s);
  st.window_end_ns = st.window_begin_ns + secs(o.duration_s);
  st.drain_end_ns = st.window_end_ns + secs(o.drain_s);

  cpu_window cpu_use;
  bool stopped = false;
  net::steady_timer begin_timer{ioc,
                                clock_type::now() + std::chrono::nanoseconds(secs(o.warmup_s))};
  on_expiry(begin_timer, [&] { cpu_use.begin(); });
  net::steady_timer end_timer{ioc};
  auto stop_all = [&] {
    if (stopped)
      return;
    stopped = true;
    cpu_use.end();
    begin_timer.cancel();
    end_timer.cancel();
    for (auto& p : publishers)
      p->close();
    for (auto& c : consumers)
      c->close();
    if (watch) {
      watch->stopped_ = true;
      watch->close();
    }
  };
  st.check_done = [&] {
    if (stopped || !st.publishing_done)
      return;
    cpu_use.end();
    if (st.all_acked() || now_ns() >= st.drain_end_ns || (watch && watch->stopped_))
      stop_all();
  };
  // The drain deadline (and the window's end, for the CPU reading).
  end_timer.expires_after(std::chrono::nanoseconds(st.drain_end_ns - st.start_ns));
  on_expiry(end_timer, [&] { stop_all(); });
  net::steady_timer cpu_timer{ioc, clock_type::now()
                                     + std::chrono::nanoseconds(st.window_end_ns - st.start_ns)};
  on_expiry(cpu_timer, [&] { cpu_use.end(); });

  if (watch)
    watch->start();
  for (auto& c : consumers)
    c->start();
  for (auto& p : publishers)
    p->start();
  ioc.run();

  // -- results ------------------------------------------------------------------
  std::vector<double> e2e, e2e_lo, pub;
  std::uint64_t scheduled = 0, never_acked = 0, failed = 0, published_total = 0;
  for (auto& e : st.events) {
    if (e.ack_ns >= 0 && e.answer_ns > 0)
      ++published_total;
    if (e.sched_ns < st.window_begin_ns || e.sched_ns >= st.window_end_ns)
      continue;
    ++scheduled;
    if (e.ack_ns < 0) {
      ++failed;
      continue;
    }
    if (e.answer_ns > 0)
      pub.push_back(static_cast<double>(e.answer_ns - e.sched_ns) / 1e6);
    else
      pub.push_back(INFINITY);
    if (e.ack_ns == 0) {
      ++never_acked;
      e2e.push_back(INFINITY);
      e2e_lo.push_back(INFINITY);
      continue;
    }
    e2e.push_back(static_cast<double>(e.ack_ns - e.sched_ns) / 1e6);
    e2e_lo.push_back(static_cast<double>(std::max(e.ack_lo_ns, e.sched_ns) - e.sched_ns) / 1e6);
  }
  // Window slots never sent are as late as events never acked.
  scheduled += st.never_sent;
  never_acked += st.never_sent;
  for (std::uint64_t i = 0; i < st.never_sent; ++i) {
    e2e.push_back(INFINITY);
    e2e_lo.push_back(INFINITY);
    pub.push_back(INFINITY);
  }
  double acked_per_s = static_cast<double>(st.acks_in_window) / o.duration_s;
  double published_per_s = static_cast<double>(st.answers_in_window) / o.duration_s;
  double p50 = quantile_ms(e2e, 0.50), p99 = quantile_ms(e2e, 0.99), p999 = quantile_ms(e2e, 0.999),
         pmax = quantile_ms(e2e, 1.0);
  double lo50 = quantile_ms(e2e_lo, 0.50), lo99 = quantile_ms(e2e_lo, 0.99);
  double pub50 = quantile_ms(pub, 0.50), pub99 = quantile_ms(pub, 0.99);
  double cpu = cpu_use.share(o.duration_s);

  // The server's own counts: everything published was acked exactly once.
  // Checked exactly when the run ended with every event acked; a run that
  // did not keep up (stopped at the drain deadline) has events in flight.
  bool complete = never_acked == 0;
  std::string extra;
  bool counts_ok = false;
  std::string note = st.first_error;
  if (nerve) {
    auto m = nerve_metrics(o);
    auto processed = m.value("processed", json());
    counts_ok = processed.is_number()
                && (complete ? processed.get<std::uint64_t>() == published_total
                             : processed.get<std::uint64_t>() <= published_total + o.connections);
    extra = ",\"nerve_processed\":" + (processed.is_number() ? processed.dump() : "null")
            + ",\"nerve_delivery_p50_ms\":" + m.value("delivery_p50_ms", json()).dump()
            + ",\"nerve_delivery_p99_ms\":" + m.value("delivery_p99_ms", json()).dump()
            + ",\"nerve_processing_p99_ms\":" + m.value("p99_ms", json()).dump() + ",\"polls\":"
            + std::to_string(watch->polls()) + ",\"poll_period_ms\":" + num(watch->mean_poll_ms());
    if (!watch->found_agent_ && note.empty())
      note = "agent " + o.agent + " not found in GET /v1/topics/" + o.name + "/groups";
    if (!counts_ok && note.empty())
      note = "nerve processed " + processed.dump() + " events, " + std::to_string(published_total)
             + " were published";
  } else {
    auto [len, pending] = redis_counts(o);
    counts_ok = complete ? len == static_cast<std::int64_t>(published_total) && pending == 0
                         : len >= static_cast<std::int64_t>(published_total)
                             && len <= static_cast<std::int64_t>(published_total + o.connections);
    extra
      = ",\"redis_xlen\":" + std::to_string(len) + ",\"redis_pending\":" + std::to_string(pending);
    if (!counts_ok && note.empty())
      note = "redis holds " + std::to_string(len) + " entries with " + std::to_string(pending)
             + " pending, " + std::to_string(published_total) + " were published";
  }
  bool verified = counts_ok && st.publish_errors == 0 && st.io_errors == 0 && st.duplicates == 0
                  && scheduled > 0;
  if (!complete && note.empty())
    note = "did not keep up: " + std::to_string(never_acked) + " of " + std::to_string(scheduled)
           + " events of the window not acked " + num(o.drain_s) + " s after it";
  std::string escaped = json_escape(note);
  std::printf("{\"target\":\"%s\",\"rate\":%.0f,\"connections\":%u,\"consumers\":%u,"
              "\"duration_s\":%.3f,\"warmup_s\":%.3f,\"payload_bytes\":%zu,"
              "\"published_per_s\":%.1f,\"acked_per_s\":%.1f,\"scheduled_in_window\":%" PRIu64
              ",\"never_acked\":%" PRIu64 ",\"publish_failed\":%" PRIu64 ",\"duplicates\":%" PRIu64
              ",\"io_errors\":%" PRIu64 ",\"p50_ms\":%s,\"p99_ms\":%s,\"p999_ms\":%s,\"max_ms\":%s"
              ",\"p50_lower_ms\":%s,\"p99_lower_ms\":%s"
              ",\"publish_p50_ms\":%s,\"publish_p99_ms\":%s,\"client_cpu\":%.3f,"
              "\"published_total\":%" PRIu64 "%s,\"verified\":%s,\"note\":\"%s\"}\n",
              o.target.c_str(), o.rate, o.connections, o.consumers, o.duration_s, o.warmup_s,
              o.payload_bytes, published_per_s, acked_per_s, scheduled, never_acked, failed,
              st.duplicates, st.io_errors, num(p50).c_str(), num(p99).c_str(), num(p999).c_str(),
              num(pmax).c_str(), num(lo50).c_str(), num(lo99).c_str(), num(pub50).c_str(),
              num(pub99).c_str(), cpu, published_total, extra.c_str(), verified ? "true" : "false",
              escaped.c_str());
  std::fprintf(
    stderr,
    "deliver_load %s rate=%.0f: published %.0f/s, acked %.0f/s, e2e p50 %.2f p99 %.2f ms "
    "(publish p50 %.2f p99 %.2f), never acked %" PRIu64 ", client cpu %.0f%%, %s%s%s\n",
    o.target.c_str(), o.rate, published_per_s, acked_per_s, p50, p99, pub50, pub99, never_acked,
    cpu * 100, verified ? "verified" : "NOT VERIFIED", note.empty() ? "" : ": ", note.c_str());
  return verified ? 0 : 1;
}