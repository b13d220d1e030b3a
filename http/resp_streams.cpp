// The stream commands of the Redis protocol listener beyond XADD
// (docs/redis.md): reads (XLEN, XRANGE, XREVRANGE, XREAD with BLOCK) over the
// log, and consumer groups (XREADGROUP, XACK, XPENDING, XCLAIM, XAUTOCLAIM,
// XGROUP, XINFO) over pull agents' queues. Entry ids: http/resp_ids.hpp.
#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <map>
#include <memory>
#include <mutex>
#include <thread>

#include <nlohmann/json.hpp>

#include "actors/event_input.hpp"
#include "actors/stored_event.hpp"
#include "http/resp_commands.hpp"
#include "http/resp_ids.hpp"

namespace nerve::http::resp {

namespace {

using json = nlohmann::json;

/// Most entries one read answers when COUNT is not given (Redis: all), and
/// at most with one.
constexpr std::size_t default_read_count = 1000;
constexpr std::size_t max_read_count = 10000;
/// Longest single wait of a blocked read; BLOCK 0 waits again after it.
constexpr std::uint32_t max_wait_ms = 60000;

const char* const invalid_id = "ERR Invalid stream ID specified as stream command argument";
const char* const no_key_for_xgroup
  = "ERR The XGROUP subcommand requires the key to exist. Note that for CREATE you may want to "
    "use the MKSTREAM option to create an empty stream automatically.";

bool is(std::string_view arg, std::string_view word) {
  return upper(arg) == word;
}

void send_error(const responder& r, const std::string& text) {
  r.send(r.make().error(text));
}

/// One stream entry read from a stored event.
struct entry {
  entry_id id;
  std::vector<std::pair<std::string, std::string>> fields;
};

/// The text of a member name for_each_member() found (escapes kept).
std::optional<std::string> name_text(std::string_view name) {
  return actors::stored::string_value({name.data() - 1, name.size() + 2});
}

/// `data`'s members as fields, by name as nlohmann's objects hold them (a
/// repeated name's last value); nullopt unless `data` is an object of strings.
std::optional<std::vector<std::pair<std::string, std::string>>>
string_fields(std::string_view data) {
  std::vector<std::pair<std::string, std::string>> fields;
  bool strings = actors::stored::for_each_member(data, [&](auto name, auto value) {
    auto k = name_text(name);
    auto v = actors::stored::string_value(value);
    if (k && v)
      fields.emplace_back(std::move(*k), std::move(*v));
    return k && v;
  });
  if (!strings)
    return std::nullopt;
  std::stable_sort(fields.begin(), fields.end(),
                   [](auto& x, auto& y) { return x.first < y.first; });
  std::vector<std::pair<std::string, std::string>> out;
  out.reserve(fields.size());
  for (std::size_t i = 0; i < fields.size(); ++i)
    if (i + 1 == fields.size() || fields[i + 1].first != fields[i].first)
      out.push_back(std::move(fields[i]));
  return out;
}

/// entry_of() by a scan of the stored event, without a DOM (most of a
/// reply's time was nlohmann's parse of each entry); nullopt when the event
/// or its data is not what the scan takes, for entry_of() to parse.
std::optional<entry> scanned_entry(const std::string& text, std::uint32_t partitions) {
  std::string_view partition, offset, time, data;
  bool object = actors::stored::for_each_member(text, [&](auto name, auto value) {
    if (name == "partition")
      partition = value;
    else if (name == "offset")
      offset = value;
    else if (name == "time")
      time = value;
    else if (name == "data")
      data = value;
    return true;
  });
  if (!object || data.empty() || data.front() != '{')
    return std::nullopt;
  auto p = actors::stored::unsigned_value(partition);
  auto o = actors::stored::unsigned_value(offset);
  auto t = actors::stored::string_value(time);
  if (!p || !o || !t || *p > UINT32_MAX)
    return std::nullopt;
  auto us = actors::parse_time_arg(*t, 0);
  auto fields = string_fields(data);
  if (!us || !fields)
    return std::nullopt;
  auto id = encode_id(static_cast<std::uint64_t>(std::max<std::int64_t>(0, *us / 1000)),
                      static_cast<std::uint32_t>(*p), *o, partitions);
  if (!id)
    return std::nullopt;
  return entry{*id, std::move(*fields)};
}

/// The entry of stored event `text` in a topic of `partitions` partitions:
/// `data` as fields when it is an object of strings, else one field `data`
/// holding its JSON.
std::optional<entry> entry_of(const std::string& text, std::uint32_t partitions) {
  if (auto scanned = scanned_entry(text, partitions))
    return scanned;
  auto e = json::parse(text, nullptr, false);
  if (!e.is_object() || !e.contains("partition") || !e["partition"].is_number_unsigned()
      || !e.contains("offset") || !e["offset"].is_number_unsigned() || !e.contains("time")
      || !e["time"].is_string())
    return std::nullopt;
  auto us = actors::parse_time_arg(e["time"].get<std::string>(), 0);
  if (!us)
    return std::nullopt;
  auto id
    = encode_id(static_cast<std::uint64_t>(std::max<std::int64_t>(0, *us / 1000)),
                e["partition"].get<std::uint32_t>(), e["offset"].get<std::uint64_t>(), partitions);
  if (!id)
    return std::nullopt;
  entry out{*id, {}};
  auto data = e.contains("data") ? e["data"] : json(nullptr);
  bool strings = data.is_object() && std::all_of(data.begin(), data.end(), [](const json& v) {
                   return v.is_string();
                 });
  if (strings)
    for (auto& [k, v] : data.items())
      out.fields.emplace_back(k, v.get<std::string>());
  else
    out.fields.emplace_back("data", data.dump());
  return out;
}

/// The topic of a stored event, read where nerve writes it (after the id;
/// topic names hold no quotes), without parsing the event.
std::string topic_of(const std::string& text) {
  static constexpr std::string_view member = R"(,"topic":")";
  auto at = text.find(member);
  if (at == std::string::npos)
    return {};
  at += member.size();
  auto end = text.find('"', at);
  return end == std::string::npos ? std::string{} : text.substr(at, end - at);
}

void put_entry(reply& out, const entry& e) {
  out.array(2).bulk(format_id(e.id)).array(e.fields.size() * 2);
  for (auto& [k, v] : e.fields)
    out.bulk(k).bulk(v);
}

/// A pending entry's id in a topic of `partitions` partitions.
entry_id id_of(const actors::pending_entry& p, std::uint32_t partitions) {
  auto ms = static_cast<std::uint64_t>(std::max<std::int64_t>(0, p.time_us / 1000));
  return encode_id(ms, p.partition, p.offset, partitions).value_or(entry_id{ms, 0});
}

/// A range bound: an id, `-`/`+`, a bare `ms`, `(` for exclusive.
struct bound {
  entry_id id;
  bool exclusive = false;
};

std::optional<bound> parse_bound(std::string_view text, bool upper_end) {
  bound b;
  if (!text.empty() && text.front() == '(') {
    b.exclusive = true;
    text.remove_prefix(1);
  }
  if (text == "-" || text == "+") {
    if (b.exclusive)
      return std::nullopt;
    b.id = text == "-" ? entry_id{0, 0} : entry_id{UINT64_MAX, UINT64_MAX};
    return b;
  }
  if (auto id = parse_id(text)) {
    b.id = *id;
    return b;
  }
  auto ms = parse_integer(text);
  if (!ms || *ms < 0)
    return std::nullopt;
  b.id = entry_id{static_cast<std::uint64_t>(*ms), upper_end ? UINT64_MAX : 0};
  return b;
}

bool after_lower(const entry_id& id, const bound& lo) {
  return lo.exclusive ? lo.id < id : !(id < lo.id);
}

bool before_upper(const entry_id& id, const bound& hi) {
  return hi.exclusive ? id < hi.id : !(hi.id < id);
}

/// The topic's view, or nothing when it does not exist.
void find_topic(actors::node& node, const std::string& topic,
                std::function<void(actors::result<std::optional<actors::topic_view>>)> done) {
  node.topics([topic, done](actors::result<std::vector<actors::topic_view>> r) {
    if (!r)
      return done(tl::make_unexpected(r.error()));
    for (auto& t : *r)
      if (t.name == topic)
        return done(std::optional<actors::topic_view>{t});
    done(std::optional<actors::topic_view>{});
  });
}

// -- range reads ------------------------------------------------------------------

/// Reads the entries of one topic between two bounds, at most `count`, in id
/// order (or reverse): in each partition the first offset inside the range
/// is found by binary search (ids grow with offsets), a page is read from
/// there, and the partitions' pages are merged.
class range_read : public std::enable_shared_from_this<range_read> {
public:
  using done_fn = std::function<void(actors::result<std::vector<entry>>)>;

  range_read(actors::node& node, actors::topic_view topic, bound lo, bound hi, std::size_t count,
             bool reverse, done_fn done)
    : node_(node), topic_(std::move(topic)), lo_(lo), hi_(hi), count_(count), reverse_(reverse),
      done_(std::move(done)) {}

  void start() {
    left_ = topic_.partition_stats.size();
    if (left_ == 0 || count_ == 0)
      return finish();
    for (auto& p : topic_.partition_stats)
      search(p.partition, p.first_offset, p.next_offset, reverse_);
  }

private:
  /// Finds in [lo, hi) the first offset of partition `p` whose entry is
  /// past the lower bound (upper: past the upper bound).
  void search(std::uint32_t p, std::uint64_t lo, std::uint64_t hi, bool upper) {
    if (lo >= hi)
      return found(p, lo, upper);
    auto mid = lo + (hi - lo) / 2;
    auto self = shared_from_this();
    node_.read_events(
      topic_.name, p, mid, 1, [self, p, lo, hi, mid, upper](actors::result<actors::events_page> r) {
        if (!r)
          return self->fail(r.error());
        std::optional<entry> e;
        if (!r->events.empty())
          e = entry_of(r->events.front(), self->topic_.partitions);
        // Ids grow with offsets: is the entry at mid past the bound?
        bool past = e && (upper ? !before_upper(e->id, self->hi_) : after_lower(e->id, self->lo_));
        if (past)
          self->search(p, lo, mid, upper);
        else
          self->search(p, mid + 1, hi, upper);
      });
  }

  void found(std::uint32_t p, std::uint64_t at, bool upper) {
    std::uint64_t from = at;
    if (upper) { // reverse: the `count` entries before `at`, from the lower bound on
      from = at > count_ ? at - count_ : 0;
      for (auto& ps : topic_.partition_stats)
        if (ps.partition == p)
          from = std::max(from, ps.first_offset);
    }
    auto self = shared_from_this();
    auto limit = upper ? at - std::min(at, from) : count_;
    if (limit == 0)
      return part_done({});
    node_.read_events(topic_.name, p, from, std::min<std::size_t>(limit, max_read_count),
                      [self](actors::result<actors::events_page> r) {
                        if (!r)
                          return self->fail(r.error());
                        std::vector<entry> mine;
                        for (auto& text : r->events)
                          if (auto e = entry_of(text, self->topic_.partitions))
                            if (after_lower(e->id, self->lo_) && before_upper(e->id, self->hi_))
                              mine.push_back(std::move(*e));
                        self->part_done(std::move(mine));
                      });
  }

  /// Partitions answer on different threads: their entries join under the lock.
  void part_done(std::vector<entry> mine) {
    std::lock_guard<std::mutex> g{mutex_};
    for (auto& e : mine)
      entries_.push_back(std::move(e));
    if (--left_ == 0)
      finish();
  }

  void fail(const actors::error& e) {
    std::lock_guard<std::mutex> g{mutex_};
    if (!failed_) {
      failed_ = true;
      done_(tl::make_unexpected(e));
    }
  }

  void finish() {
    if (failed_)
      return;
    std::sort(entries_.begin(), entries_.end(), [this](const entry& a, const entry& b) {
      return reverse_ ? b.id < a.id : a.id < b.id;
    });
    if (entries_.size() > count_)
      entries_.resize(count_);
    done_(std::move(entries_));
  }

  actors::node& node_;
  actors::topic_view topic_;
  bound lo_, hi_;
  std::size_t count_;
  bool reverse_;
  done_fn done_;
  std::mutex mutex_;
  std::size_t left_ = 0;
  bool failed_ = false;
  std::vector<entry> entries_;
};

void read_range(actors::node& node, const std::string& topic, bound lo, bound hi, std::size_t count,
                bool reverse, range_read::done_fn done) {
  find_topic(node, topic, [&node, lo, hi, count, reverse, done](auto r) {
    if (!r)
      return done(tl::make_unexpected(r.error()));
    if (!*r)
      return done(std::vector<entry>{});
    std::make_shared<range_read>(node, std::move(**r), lo, hi, count, reverse, done)->start();
  });
}

void xrange(actors::node& node, args&& a, responder r, bool reverse) {
  std::size_t count = max_read_count;
  if (a.size() == 6 && is(a[4], "COUNT")) {
    auto n = parse_integer(a[5]);
    if (!n)
      return send_error(r, "ERR value is not an integer or out of range");
    count = *n < 0 ? 0 : std::min<std::size_t>(static_cast<std::size_t>(*n), max_read_count);
  } else if (a.size() != 4) {
    return send_error(r, "ERR syntax error");
  }
  auto lo = parse_bound(reverse ? a[3] : a[2], false);
  auto hi = parse_bound(reverse ? a[2] : a[3], true);
  if (!lo || !hi)
    return send_error(r, invalid_id);
  read_range(node, a[1], *lo, *hi, count, reverse, [r](actors::result<std::vector<entry>> es) {
    if (!es)
      return send_error(r, error_text(es.error()));
    auto out = r.make();
    out.array(es->size());
    for (auto& e : *es)
      put_entry(out, e);
    r.send(std::move(out));
  });
}

void xlen(actors::node& node, args&& a, responder r) {
  find_topic(node, a[1], [r](auto t) {
    if (!t)
      return send_error(r, error_text(t.error()));
    std::uint64_t n = 0;
    if (*t)
      for (auto& p : (*t)->partition_stats)
        n += p.next_offset - p.first_offset;
    r.send(r.make().integer(static_cast<std::int64_t>(n)));
  });
}

// -- timers and blocking reads ----------------------------------------------------

/// One thread that runs callbacks at their deadlines (BLOCK timeouts).
class timers {
public:
  static timers& get() {
    static timers t;
    return t;
  }
  void at(std::chrono::steady_clock::time_point when, std::function<void()> fn) {
    std::lock_guard<std::mutex> g{mutex_};
    due_.emplace(when, std::move(fn));
    cv_.notify_one();
  }

  // Stopped and joined when the process exits (the static's destructor): a
  // detached thread went on reading due_ after the exit handlers freed it (an
  // AddressSanitizer report at shutdown). Callbacks still due are dropped.
  ~timers() {
    {
      std::lock_guard<std::mutex> g{mutex_};
      stopping_ = true;
    }
    cv_.notify_one();
    thread_.join();
  }
  timers(const timers&) = delete;
  timers& operator=(const timers&) = delete;

private:
  timers() {
    thread_ = std::thread{[this] { run(); }};
  }
  void run() {
    std::unique_lock<std::mutex> g{mutex_};
    while (!stopping_) {
      if (due_.empty()) {
        cv_.wait(g);
        continue;
      }
      auto first = due_.begin()->first;
      if (std::chrono::steady_clock::now() < first) {
        cv_.wait_until(g, first);
        continue;
      }
      auto fn = std::move(due_.begin()->second);
      due_.erase(due_.begin());
      g.unlock();
      fn();
      g.lock();
    }
  }
  std::mutex mutex_;
  std::condition_variable cv_;
  std::multimap<std::chrono::steady_clock::time_point, std::function<void()>> due_;
  bool stopping_ = false;
  std::thread thread_;
};

/// Writes XREAD's answer: per stream with entries, [key, entries] (RESP3: a map).
void send_streams(const responder& r,
                  const std::vector<std::pair<std::string, std::vector<entry>>>& got) {
  std::size_t n = 0;
  for (auto& g : got)
    n += g.second.empty() ? 0 : 1;
  auto out = r.make();
  if (n == 0) {
    out.null_array();
    return r.send(std::move(out));
  }
  if (out.proto() == protocol::resp3)
    out.map(n);
  else
    out.array(n);
  for (auto& [key, es] : got) {
    if (es.empty())
      continue;
    if (out.proto() != protocol::resp3)
      out.array(2);
    out.bulk(key).array(es.size());
    for (auto& e : es)
      put_entry(out, e);
  }
  r.send(std::move(out));
}

/// XREAD's streams and where each starts.
struct read_args {
  std::size_t count = default_read_count;
  std::optional<std::int64_t> block_ms;
  bool noack = false;
  std::string group, consumer;
  std::vector<std::string> keys;
  std::vector<std::string> ids;
};

std::optional<std::string> parse_read(const args& a, bool grouped, read_args& out) {
  std::size_t i = 1;
  for (; i < a.size(); ++i) {
    if (is(a[i], "COUNT") && i + 1 < a.size()) {
      auto n = parse_integer(a[++i]);
      if (!n)
        return std::string{"ERR value is not an integer or out of range"};
      out.count = *n <= 0 ? default_read_count
                          : std::min<std::size_t>(static_cast<std::size_t>(*n), max_read_count);
    } else if (is(a[i], "BLOCK") && i + 1 < a.size()) {
      auto n = parse_integer(a[++i]);
      if (!n)
        return std::string{"ERR timeout is not an integer or out of range"};
      if (*n < 0)
        return std::string{"ERR timeout is negative"};
      out.block_ms = *n;
    } else if (grouped && is(a[i], "GROUP") && i + 2 < a.size()) {
      out.group = a[i + 1];
      out.consumer = a[i + 2];
      i += 2;
    } else if (grouped && is(a[i], "NOACK")) {
      out.noack = true;
    } else if (is(a[i], "STREAMS")) {
      ++i;
      break;
    } else {
      return std::string{"ERR syntax error"};
    }
  }
  auto rest = a.size() - i;
  if (rest == 0 || rest % 2 != 0)
    return std::string{"ERR Unbalanced '"} + (grouped ? "xreadgroup" : "xread")
           + "' list of streams: for each stream key an ID or '$' must be specified.";
  if (grouped && out.group.empty())
    return std::string{"ERR Missing GROUP option for XREADGROUP"};
  for (std::size_t k = 0; k < rest / 2; ++k) {
    out.keys.push_back(a[i + k]);
    out.ids.push_back(a[i + rest / 2 + k]);
  }
  return std::nullopt;
}

/// A blocked XREAD: follows the streams' tails until an entry past the
/// start comes, the time is up or the client leaves.
struct xread_wait : std::enable_shared_from_this<xread_wait> {
  responder r;
  std::vector<std::pair<std::string, entry_id>> starts; ///< per key: entries after this
  /// Per key read from `$`: each partition's next offset when the command came.
  /// An entry below it was there before (an XADD answered in the same
  /// millisecond has an id after the clock's bound), so it is not new.
  std::vector<std::vector<std::uint64_t>> from_offsets;
  std::vector<std::uint32_t> partitions;
  std::size_t count = 0;
  std::mutex mutex;
  bool done = false;
  std::vector<actors::tail_handle> tails;
  std::vector<std::pair<std::string, std::vector<entry>>> got;

  explicit xread_wait(responder rr) : r(std::move(rr)) {}

  /// Whether `e`, of key `k` in a topic of `parts` partitions, is one to answer.
  [[nodiscard]] bool is_new(std::size_t k, const entry& e, std::uint32_t parts) const {
    if (!(starts[k].second < e.id))
      return false;
    const auto& from = from_offsets[k];
    if (from.empty())
      return true;
    auto at = decode_id(e.id, parts);
    return at && (at->partition >= from.size() || at->offset >= from[at->partition]);
  }

  /// Answers once with what was found; later finds are ignored (every
  /// writer of `got` checks `done` under the lock).
  void finish() {
    std::vector<actors::tail_handle> drop;
    std::vector<std::pair<std::string, std::vector<entry>>> answer;
    {
      std::lock_guard<std::mutex> g{mutex};
      if (done)
        return;
      done = true;
      drop.swap(tails);
      answer.swap(got);
    }
    send_streams(r, answer);
  }
  void cancel() {
    std::vector<actors::tail_handle> drop;
    std::lock_guard<std::mutex> g{mutex};
    done = true;
    drop.swap(tails);
  }
};

void xread(actors::node& node, context&, args&& a, responder r) {
  read_args ra;
  if (auto err = parse_read(a, false, ra))
    return send_error(r, *err);
  // What each stream holds now: its partition count and last id ($).
  node.topics([&node, ra, r](actors::result<std::vector<actors::topic_view>> ts) {
    if (!ts)
      return send_error(r, error_text(ts.error()));
    auto w = std::make_shared<xread_wait>(r);
    w->count = ra.count;
    for (std::size_t k = 0; k < ra.keys.size(); ++k) {
      const actors::topic_view* t = nullptr;
      for (auto& v : *ts)
        if (v.name == ra.keys[k])
          t = &v;
      entry_id start{0, 0};
      std::vector<std::uint64_t> from;
      if (ra.ids[k] == "$") {
        if (t)
          for (auto& p : t->partition_stats) {
            if (p.partition >= from.size())
              from.resize(p.partition + 1, 0);
            from[p.partition] = p.next_offset;
          }
        // Everything now is before the start: new entries only.
        auto now_ms
          = static_cast<std::uint64_t>(std::chrono::duration_cast<std::chrono::milliseconds>(
                                         std::chrono::system_clock::now().time_since_epoch())
                                         .count());
        start = entry_id{now_ms > 0 ? now_ms - 1 : 0, UINT64_MAX};
      } else if (auto b = parse_bound(ra.ids[k], false)) {
        start = b->id;
        if (!parse_id(ra.ids[k]) && ra.ids[k] != "-")
          start.seq = 0;
      } else {
        return send_error(r, invalid_id);
      }
      w->starts.emplace_back(ra.keys[k], start);
      w->from_offsets.push_back(std::move(from));
      w->partitions.push_back(t ? t->partitions : 0);
      w->got.emplace_back(ra.keys[k], std::vector<entry>{});
    }
    // Follow the tails first, so nothing appended during the reads is missed.
    if (ra.block_ms) {
      for (std::size_t k = 0; k < w->starts.size(); ++k) {
        std::weak_ptr<xread_wait> weak = w;
        w->tails.push_back(node.tail(w->starts[k].first, [weak, k, &node, key = w->starts[k].first](
                                                           const std::vector<std::string>& events) {
          auto w = weak.lock();
          if (!w)
            return;
          std::uint32_t parts = 0;
          {
            std::lock_guard<std::mutex> g{w->mutex};
            parts = w->partitions[k];
          }
          if (parts == 0) { // created after the read began
            find_topic(node, key, [weak, k, events](auto t) {
              auto w = weak.lock();
              if (!w || !t || !*t)
                return;
              std::unique_lock<std::mutex> g{w->mutex};
              if (w->done)
                return;
              w->partitions[k] = (*t)->partitions;
              for (auto& text : events)
                if (auto e = entry_of(text, w->partitions[k]);
                    e && w->is_new(k, *e, w->partitions[k]))
                  w->got[k].second.push_back(std::move(*e));
              bool any = !w->got[k].second.empty();
              g.unlock();
              if (any)
                w->finish();
            });
            return;
          }
          std::unique_lock<std::mutex> g{w->mutex};
          if (w->done)
            return;
          for (auto& text : events)
            if (auto e = entry_of(text, parts); e && w->is_new(k, *e, parts))
              if (w->got[k].second.size() < w->count)
                w->got[k].second.push_back(std::move(*e));
          bool any = !w->got[k].second.empty();
          g.unlock();
          if (any)
            w->finish();
        }));
      }
      r.on_close([w] { w->cancel(); });
    }
    // The entries already there.
    auto left = std::make_shared<std::atomic<std::size_t>>(w->starts.size());
    auto found = std::make_shared<std::vector<std::vector<entry>>>(w->starts.size());
    for (std::size_t k = 0; k < w->starts.size(); ++k) {
      bound lo{w->starts[k].second, true};
      bound hi{{UINT64_MAX, UINT64_MAX}, false};
      read_range(
        node, w->starts[k].first, lo, hi, w->count, false,
        [w, k, left, found, block = ra.block_ms](auto es) {
          if (es) {
            auto& mine = (*found)[k];
            mine = std::move(*es);
            std::lock_guard<std::mutex> g{w->mutex};
            auto parts = w->partitions[k];
            mine.erase(std::remove_if(mine.begin(), mine.end(),
                                      [&](const entry& e) { return !w->is_new(k, e, parts); }),
                       mine.end());
          }
          if (--*left != 0)
            return;
          bool any = std::any_of(found->begin(), found->end(), [](auto& v) { return !v.empty(); });
          if (any || !block) {
            {
              std::lock_guard<std::mutex> g{w->mutex};
              if (w->done)
                return;
              for (std::size_t i = 0; i < found->size(); ++i)
                w->got[i].second = std::move((*found)[i]);
            }
            return w->finish();
          }
          if (*block > 0) {
            std::weak_ptr<xread_wait> weak = w;
            timers::get().at(std::chrono::steady_clock::now() + std::chrono::milliseconds{*block},
                             [weak] {
                               if (auto w = weak.lock())
                                 w->finish();
                             });
          }
        });
    }
  });
}

// -- consumer groups -----------------------------------------------------------------

std::string nogroup(const std::string& key, const std::string& group, const char* cmd) {
  return "NOGROUP No such key '" + key + "' or consumer group '" + group + "' in " + cmd
         + " with GROUP option";
}

/// A node error of a group command: not_found is Redis' NOGROUP.
std::string group_error(const actors::error& e, const std::string& key, const std::string& group,
                        const char* what) {
  if (e.code == actors::errc::not_found)
    return std::string{"NOGROUP No such key '"} + key + "' or consumer group '" + group + "'"
           + (what[0] != '\0' ? std::string{" in "} + what : std::string{});
  if (e.code == actors::errc::invalid)
    return "ERR " + e.message;
  return error_text(e);
}

/// The partition count of `topic` (0 when it does not exist), then `then`
/// (no I/O: the count is known in memory and never changes).
void with_partitions(actors::node& node, const std::string& topic, const responder&,
                     const std::function<void(std::uint32_t)>& then) {
  then(node.partition_count(topic).value_or(0));
}

void xreadgroup(actors::node& node, context&, args&& a, responder r) {
  read_args ra;
  if (auto err = parse_read(a, true, ra))
    return send_error(r, *err);
  bool fresh = std::all_of(ra.ids.begin(), ra.ids.end(), [](auto& id) { return id == ">"; });
  bool history = std::none_of(ra.ids.begin(), ra.ids.end(), [](auto& id) { return id == ">"; });
  if (!fresh && !history)
    return send_error(r, "ERR nerve reads either new entries ('>') or pending ones (an id) of "
                         "every stream of one XREADGROUP, not both");
  {
    auto parts = std::make_shared<std::map<std::string, std::uint32_t>>();
    for (auto& k : ra.keys) {
      auto n = node.partition_count(k);
      if (!n)
        return send_error(r, nogroup(k, ra.group, "XREADGROUP"));
      (*parts)[k] = *n;
    }
    if (fresh) {
      actors::pull_request req;
      req.consumer = ra.consumer;
      req.topics = ra.keys;
      req.max = static_cast<std::uint32_t>(std::min<std::size_t>(ra.count, 1000));
      req.noack = ra.noack;
      req.wait_ms
        = ra.block_ms ? static_cast<std::uint32_t>(
            *ra.block_ms == 0 ? max_wait_ms : std::min<std::int64_t>(*ra.block_ms, max_wait_ms))
                      : 0;
      node.pull_fetch(
        ra.group, req, [r, ra, parts](actors::result<std::vector<actors::pulled_delivery>> ds) {
          if (!ds)
            return send_error(r, ds.error().code == actors::errc::not_found
                                   ? nogroup(ra.keys.front(), ra.group, "XREADGROUP")
                                   : group_error(ds.error(), ra.keys.front(), ra.group, ""));
          std::vector<std::pair<std::string, std::vector<entry>>> got;
          for (auto& k : ra.keys)
            got.emplace_back(k, std::vector<entry>{});
          for (auto& d : *ds) {
            auto topic = topic_of(d.event);
            for (auto& g : got)
              if (g.first == topic)
                if (auto e = entry_of(d.event, (*parts)[topic]))
                  g.second.push_back(std::move(*e));
          }
          for (auto& g : got)
            std::sort(g.second.begin(), g.second.end(),
                      [](auto& x, auto& y) { return x.id < y.id; });
          send_streams(r, got);
        });
      return;
    }
    // History: the consumer's own pending entries after each id.
    auto got = std::make_shared<std::vector<std::pair<std::string, std::vector<entry>>>>();
    auto left = std::make_shared<std::atomic<std::size_t>>(ra.keys.size());
    auto failed = std::make_shared<std::atomic<bool>>(false);
    for (std::size_t k = 0; k < ra.keys.size(); ++k)
      got->emplace_back(ra.keys[k], std::vector<entry>{});
    for (std::size_t k = 0; k < ra.keys.size(); ++k) {
      auto start = parse_bound(ra.ids[k], false);
      if (!start)
        return send_error(r, invalid_id);
      node.pull_pending(ra.group, ra.keys[k], true,
                        [r, ra, k, got, left, failed, parts,
                         after = start->id](actors::result<std::vector<actors::pending_entry>> ps) {
                          if (!ps) {
                            if (!failed->exchange(true))
                              send_error(r, ps.error().code == actors::errc::not_found
                                              ? nogroup(ra.keys[k], ra.group, "XREADGROUP")
                                              : group_error(ps.error(), ra.keys[k], ra.group, ""));
                            return;
                          }
                          auto n = (*parts)[ra.keys[k]];
                          for (auto& p : *ps)
                            if (p.consumer == ra.consumer && after < id_of(p, n))
                              if (auto e = entry_of(p.event, n))
                                (*got)[k].second.push_back(std::move(*e));
                          auto& es = (*got)[k].second;
                          std::sort(es.begin(), es.end(),
                                    [](auto& x, auto& y) { return x.id < y.id; });
                          if (es.size() > ra.count)
                            es.resize(ra.count);
                          if (--*left != 0 || failed->load())
                            return;
                          // A history read answers every stream, empty or not.
                          auto out = r.make();
                          if (out.proto() == protocol::resp3)
                            out.map(got->size());
                          else
                            out.array(got->size());
                          for (auto& [key, list] : *got) {
                            if (out.proto() != protocol::resp3)
                              out.array(2);
                            out.bulk(key).array(list.size());
                            for (auto& e : list)
                              put_entry(out, e);
                          }
                          r.send(std::move(out));
                        });
    }
  }
}

/// Parses ids into places in a topic of `partitions` partitions.
std::optional<std::vector<actors::entry_at>> places(const args& a, std::size_t from, std::size_t to,
                                                    std::uint32_t partitions) {
  std::vector<actors::entry_at> out;
  for (auto i = from; i < to; ++i) {
    auto id = parse_id(a[i]);
    if (!id) {
      auto ms = parse_integer(a[i]);
      if (!ms || *ms < 0)
        return std::nullopt;
      id = entry_id{static_cast<std::uint64_t>(*ms), 0};
    }
    if (partitions == 0)
      continue;
    auto at = decode_id(*id, partitions);
    out.push_back({at->partition, at->offset});
  }
  return out;
}

void xack(actors::node& node, context&, args&& a, responder r) {
  with_partitions(node, a[1], r, [&node, a, r](std::uint32_t n) {
    auto at = places(a, 3, a.size(), n);
    if (!at)
      return send_error(r, invalid_id);
    if (n == 0 || at->empty())
      return r.send(r.make().integer(0));
    node.pull_ack_at(a[2], a[1], std::move(*at), [r, a](actors::result<std::uint64_t> c) {
      if (!c) // an unknown group acks nothing, as Redis answers
        return c.error().code == actors::errc::not_found
                 ? r.send(r.make().integer(0))
                 : send_error(r, group_error(c.error(), a[1], a[2], ""));
      r.send(r.make().integer(static_cast<std::int64_t>(*c)));
    });
  });
}

void xpending(actors::node& node, context&, args&& a, responder r) {
  // XPENDING key group [[IDLE min-idle] start end count [consumer]]
  std::size_t i = 3;
  std::int64_t min_idle = 0;
  bool extended = a.size() > 3;
  if (extended && is(a[i], "IDLE")) {
    if (i + 1 >= a.size())
      return send_error(r, "ERR syntax error");
    auto n = parse_integer(a[i + 1]);
    if (!n)
      return send_error(r, "ERR value is not an integer or out of range");
    min_idle = *n;
    i += 2;
  }
  std::optional<bound> lo, hi;
  std::size_t count = 0;
  std::string consumer;
  if (extended) {
    if (a.size() - i < 3 || a.size() - i > 4)
      return send_error(r, "ERR syntax error");
    lo = parse_bound(a[i], false);
    hi = parse_bound(a[i + 1], true);
    auto c = parse_integer(a[i + 2]);
    if (!lo || !hi)
      return send_error(r, invalid_id);
    if (!c)
      return send_error(r, "ERR value is not an integer or out of range");
    count = *c < 0 ? 0 : static_cast<std::size_t>(*c);
    if (a.size() - i == 4)
      consumer = a[i + 3];
  }
  with_partitions(
    node, a[1], r, [&node, a, r, extended, lo, hi, count, consumer, min_idle](std::uint32_t n) {
      if (n == 0)
        return send_error(r, "NOGROUP No such key '" + a[1] + "' or consumer group '" + a[2] + "'");
      node.pull_pending(
        a[2], a[1], false, [=](actors::result<std::vector<actors::pending_entry>> ps) {
          if (!ps)
            return send_error(r, group_error(ps.error(), a[1], a[2], ""));
          std::vector<std::pair<entry_id, const actors::pending_entry*>> list;
          for (auto& p : *ps)
            list.emplace_back(id_of(p, n), &p);
          std::sort(list.begin(), list.end(), [](auto& x, auto& y) { return x.first < y.first; });
          auto out = r.make();
          if (!extended) {
            if (list.empty()) {
              out.array(4).integer(0).null().null().null_array();
              return r.send(std::move(out));
            }
            std::map<std::string, std::size_t> by;
            for (auto& [id, p] : list)
              ++by[p->consumer];
            out.array(4)
              .integer(static_cast<std::int64_t>(list.size()))
              .bulk(format_id(list.front().first))
              .bulk(format_id(list.back().first))
              .array(by.size());
            for (auto& [c, k] : by)
              out.array(2).bulk(c).bulk(std::to_string(k));
            return r.send(std::move(out));
          }
          std::vector<std::pair<entry_id, const actors::pending_entry*>> sel;
          for (auto& x : list)
            if (sel.size() < count && after_lower(x.first, *lo) && before_upper(x.first, *hi)
                && x.second->idle_ms >= min_idle
                && (consumer.empty() || x.second->consumer == consumer))
              sel.push_back(x);
          out.array(sel.size());
          for (auto& [id, p] : sel)
            out.array(4)
              .bulk(format_id(id))
              .bulk(p->consumer)
              .integer(p->idle_ms)
              .integer(p->count);
          r.send(std::move(out));
        });
    });
}

/// Answers claimed entries: ids (JUSTID) or entries.
void send_claimed(reply& out, const std::vector<actors::pending_entry>& claimed, std::uint32_t n,
                  bool justid) {
  std::vector<std::pair<entry_id, const actors::pending_entry*>> list;
  for (auto& p : claimed)
    list.emplace_back(id_of(p, n), &p);
  std::sort(list.begin(), list.end(), [](auto& x, auto& y) { return x.first < y.first; });
  out.array(list.size());
  for (auto& [id, p] : list) {
    if (justid) {
      out.bulk(format_id(id));
    } else if (auto e = entry_of(p->event, n)) {
      put_entry(out, *e);
    } else {
      out.null_array();
    }
  }
}

void xclaim(actors::node& node, context&, args&& a, responder r) {
  // XCLAIM key group consumer min-idle-time id [id ...] [IDLE ms] [TIME ms]
  //        [RETRYCOUNT count] [FORCE] [JUSTID] [LASTID id]
  auto min_idle = parse_integer(a[4]);
  if (!min_idle)
    return send_error(r, "ERR Invalid min-idle-time argument for XCLAIM");
  std::size_t ids_end = 5;
  while (ids_end < a.size() && (parse_id(a[ids_end]) || parse_integer(a[ids_end])))
    ++ids_end;
  bool justid = false;
  for (auto i = ids_end; i < a.size(); ++i) {
    if (is(a[i], "JUSTID") || is(a[i], "FORCE")) {
      justid = justid || is(a[i], "JUSTID");
    } else if ((is(a[i], "IDLE") || is(a[i], "TIME") || is(a[i], "RETRYCOUNT")
                || is(a[i], "LASTID"))
               && i + 1 < a.size()) {
      ++i; // accepted; nerve keeps its own idle times and counts (docs/redis.md)
    } else {
      return send_error(r, "ERR Unrecognized XCLAIM option '" + a[i] + "'");
    }
  }
  with_partitions(node, a[1], r, [&node, a, r, ids_end, justid, min_idle](std::uint32_t n) {
    auto at = places(a, 5, ids_end, n);
    if (!at)
      return send_error(r, invalid_id);
    actors::claim_request c;
    c.topic = a[1];
    c.consumer = a[3];
    c.entries = std::move(*at);
    c.min_idle_ms = std::max<long long>(0, *min_idle);
    c.justid = justid;
    node.pull_claim(a[2], std::move(c),
                    [r, a, n, justid](actors::result<std::vector<actors::pending_entry>> got) {
                      if (!got)
                        return send_error(r, group_error(got.error(), a[1], a[2], ""));
                      auto out = r.make();
                      send_claimed(out, *got, n, justid);
                      r.send(std::move(out));
                    });
  });
}

void xautoclaim(actors::node& node, context&, args&& a, responder r) {
  // XAUTOCLAIM key group consumer min-idle-time start [COUNT count] [JUSTID]
  auto min_idle = parse_integer(a[4]);
  if (!min_idle)
    return send_error(r, "ERR Invalid min-idle-time argument for XAUTOCLAIM");
  auto start = parse_bound(a[5], false);
  if (!start)
    return send_error(r, invalid_id);
  std::size_t count = 100;
  bool justid = false;
  for (std::size_t i = 6; i < a.size(); ++i) {
    if (is(a[i], "COUNT") && i + 1 < a.size()) {
      auto c = parse_integer(a[++i]);
      if (!c || *c < 1)
        return send_error(r, "ERR COUNT must be > 0");
      count = static_cast<std::size_t>(*c);
    } else if (is(a[i], "JUSTID")) {
      justid = true;
    } else {
      return send_error(r, "ERR syntax error");
    }
  }
  with_partitions(node, a[1], r, [&node, a, r, start, count, justid, min_idle](std::uint32_t n) {
    node.pull_pending(a[2], a[1], false, [&node, a, r, start, count, justid, n, min_idle](auto ps) {
      if (!ps)
        return send_error(r, group_error(ps.error(), a[1], a[2], ""));
      std::vector<std::pair<entry_id, actors::entry_at>> list;
      for (auto& p : *ps)
        if (after_lower(id_of(p, n), *start))
          list.emplace_back(id_of(p, n), actors::entry_at{p.partition, p.offset});
      std::sort(list.begin(), list.end(), [](auto& x, auto& y) { return x.first < y.first; });
      std::string next = "0-0";
      if (list.size() > count) {
        next = format_id(list[count].first);
        list.resize(count);
      }
      actors::claim_request c;
      c.topic = a[1];
      c.consumer = a[3];
      c.min_idle_ms = std::max<long long>(0, *min_idle);
      c.justid = justid;
      for (auto& x : list)
        c.entries.push_back(x.second);
      node.pull_claim(a[2], std::move(c), [r, a, n, justid, next](auto got) {
        if (!got)
          return send_error(r, group_error(got.error(), a[1], a[2], ""));
        auto out = r.make();
        out.array(3).bulk(next);
        send_claimed(out, *got, n, justid);
        out.array(0); // nothing is deleted from a nerve stream by others
        r.send(std::move(out));
      });
    });
  });
}

/// The agent named `group` among `agents`, or null.
const actors::agent_view* find_group(const std::vector<actors::agent_view>& agents,
                                     const std::string& group) {
  for (auto& v : agents)
    if (v.name == group)
      return &v;
  return nullptr;
}

void xgroup_create(actors::node& node, context&, args&& a, responder r) {
  // XGROUP CREATE key group id|$ [MKSTREAM] [ENTRIESREAD n]
  bool mkstream = false;
  for (std::size_t i = 5; i < a.size(); ++i) {
    if (is(a[i], "MKSTREAM"))
      mkstream = true;
    else if (is(a[i], "ENTRIESREAD") && i + 1 < a.size())
      ++i; // Redis' lag hint; nerve counts the lag itself
    else
      return send_error(r, "ERR syntax error");
  }
  bool earliest = a[4] == "0" || a[4] == "0-0";
  if (!earliest && a[4] != "$") {
    if (!parse_id(a[4]))
      return send_error(r, invalid_id);
    return send_error(r, "ERR nerve: XGROUP CREATE starts a group at $ (new entries) or 0 (every "
                         "entry); other ids are not supported");
  }
  node.create_group(a[3], a[2], earliest, mkstream, [r](actors::result<bool> made) {
    if (!made && made.error().code == actors::errc::not_found)
      return send_error(r, no_key_for_xgroup);
    if (!made)
      return send_error(r, "ERR nerve: " + made.error().message);
    if (!*made) // Redis' answer to creating it again, which workers expect and ignore
      return send_error(r, "BUSYGROUP Consumer Group name already exists");
    r.send(r.make().simple("OK"));
  });
}

void xgroup_destroy(actors::node& node, args&& a, responder r) {
  // XGROUP DESTROY key group
  node.destroy_group(a[3], a[2], [r](actors::result<bool> gone) {
    if (!gone && gone.error().code == actors::errc::not_found)
      return send_error(r, no_key_for_xgroup);
    if (!gone)
      return send_error(r, "ERR nerve: " + gone.error().message);
    r.send(r.make().integer(*gone ? 1 : 0));
  });
}

void xgroup_consumer(actors::node& node, args&& a, responder r, int op) {
  // XGROUP CREATECONSUMER|DELCONSUMER key group consumer
  node.pull_consumers(a[3], a[2], "", 0, [&node, a, r, op](auto before) {
    if (!before)
      return send_error(r, group_error(before.error(), a[2], a[3], ""));
    const actors::consumer_view* had = nullptr;
    for (auto& c : *before)
      if (c.name == a[4])
        had = &c;
    if (op > 0 && had != nullptr)
      return r.send(r.make().integer(0));
    auto pending = had ? static_cast<std::int64_t>(had->pending) : 0;
    node.pull_consumers(a[3], a[2], a[4], op, [r, op, pending, a](auto v) {
      if (!v)
        return send_error(r, group_error(v.error(), a[2], a[3], ""));
      r.send(r.make().integer(op > 0 ? 1 : pending));
    });
  });
}

void xinfo_stream(actors::node& node, args&& a, responder r) {
  find_topic(node, a[2], [&node, a, r](auto t) {
    if (!t)
      return send_error(r, error_text(t.error()));
    if (!*t)
      return send_error(r, "ERR no such key");
    auto topic = **t;
    std::uint64_t len = 0;
    std::uint64_t added = 0;
    for (auto& p : topic.partition_stats) {
      len += p.next_offset - p.first_offset;
      added += p.next_offset;
    }
    read_range(node, a[2], bound{{0, 0}, false}, bound{{UINT64_MAX, UINT64_MAX}, false}, 1, false,
               [&node, a, r, len, added, topic](auto first) {
                 read_range(node, a[2], bound{{0, 0}, false},
                            bound{{UINT64_MAX, UINT64_MAX}, false}, 1, true,
                            [a, r, len, added, first, topic](auto last) {
                              auto out = r.make();
                              out.map(10);
                              out.bulk("length").integer(static_cast<std::int64_t>(len));
                              out.bulk("radix-tree-keys").integer(0);
                              out.bulk("radix-tree-nodes").integer(0);
                              auto last_id = last && !last->empty() ? format_id(last->front().id)
                                                                    : std::string{"0-0"};
                              out.bulk("last-generated-id").bulk(last_id);
                              out.bulk("max-deleted-entry-id").bulk("0-0");
                              out.bulk("entries-added").integer(static_cast<std::int64_t>(added));
                              out.bulk("recorded-first-entry-id")
                                .bulk(first && !first->empty() ? format_id(first->front().id)
                                                               : std::string{"0-0"});
                              out.bulk("groups").integer(0);
                              out.bulk("first-entry");
                              if (first && !first->empty())
                                put_entry(out, first->front());
                              else
                                out.null();
                              out.bulk("last-entry");
                              if (last && !last->empty())
                                put_entry(out, last->front());
                              else
                                out.null();
                              r.send(std::move(out));
                            });
               });
  });
}

void xinfo_groups(actors::node& node, args&& a, responder r) {
  node.groups(a[2], [&node, a, r](actors::result<std::vector<actors::group_view>> gs) {
    if (!gs)
      return gs.error().code == actors::errc::not_found ? send_error(r, "ERR no such key")
                                                        : send_error(r, error_text(gs.error()));
    std::vector<actors::group_view> pulls;
    auto agents = node.agents();
    for (auto& g : *gs)
      if (auto v = find_group(agents, g.agent); v && v->kind == "pull")
        pulls.push_back(g);
    if (pulls.empty())
      return r.send(r.make().array(0));
    struct acc {
      std::mutex m;
      std::size_t left;
      std::vector<std::size_t> consumers;
    };
    auto st = std::make_shared<acc>();
    st->left = pulls.size();
    st->consumers.resize(pulls.size());
    for (std::size_t i = 0; i < pulls.size(); ++i)
      node.pull_consumers(pulls[i].agent, a[2], "", 0, [r, st, i, pulls](auto cs) {
        std::lock_guard<std::mutex> g{st->m};
        st->consumers[i] = cs ? cs->size() : 0;
        if (--st->left != 0)
          return;
        auto out = r.make();
        out.array(pulls.size());
        for (std::size_t k = 0; k < pulls.size(); ++k) {
          auto& gv = pulls[k];
          out.map(6);
          out.bulk("name").bulk(gv.agent);
          out.bulk("consumers").integer(static_cast<std::int64_t>(st->consumers[k]));
          out.bulk("pending").integer(static_cast<std::int64_t>(gv.pending));
          out.bulk("last-delivered-id").bulk("0-0");
          out.bulk("entries-read")
            .integer(gv.last_delivered_offset
                       ? static_cast<std::int64_t>(*gv.last_delivered_offset + 1)
                       : 0);
          out.bulk("lag").integer(static_cast<std::int64_t>(gv.lag));
        }
        r.send(std::move(out));
      });
  });
}

void xinfo_consumers(actors::node& node, args&& a, responder r) {
  node.pull_consumers(a[3], a[2], "", 0, [r, a](auto cs) {
    if (!cs)
      return send_error(r, group_error(cs.error(), a[2], a[3], ""));
    auto out = r.make();
    out.array(cs->size());
    for (auto& c : *cs) {
      out.map(4);
      out.bulk("name").bulk(c.name);
      out.bulk("pending").integer(static_cast<std::int64_t>(c.pending));
      out.bulk("idle").integer(c.idle_ms);
      out.bulk("inactive").integer(c.inactive_ms);
    }
    r.send(std::move(out));
  });
}

command cmd(std::string name, int arity, std::vector<std::string> flags, int first, int last,
            int step, handler h) {
  command c;
  c.name = std::move(name);
  c.arity = arity;
  c.flags = std::move(flags);
  c.first_key = first;
  c.last_key = last;
  c.key_step = step;
  c.run = std::move(h);
  return c;
}

} // namespace

void add_stream_commands(command_table& table, actors::node& node) {
  auto* n = &node;
  table.add(cmd("xlen", 2, {"readonly", "fast"}, 1, 1, 1,
                [n](context&, args&& a, responder r) { xlen(*n, std::move(a), std::move(r)); }));
  table.add(cmd("xrange", -4, {"readonly"}, 1, 1, 1, [n](context&, args&& a, responder r) {
    xrange(*n, std::move(a), std::move(r), false);
  }));
  table.add(cmd("xrevrange", -4, {"readonly"}, 1, 1, 1, [n](context&, args&& a, responder r) {
    xrange(*n, std::move(a), std::move(r), true);
  }));
  table.add(
    cmd("xread", -4, {"readonly", "blocking", "movablekeys"}, 0, 0, 0,
        [n](context& c, args&& a, responder r) { xread(*n, c, std::move(a), std::move(r)); }));
  table.add(
    cmd("xreadgroup", -7, {"write", "blocking", "movablekeys"}, 0, 0, 0,
        [n](context& c, args&& a, responder r) { xreadgroup(*n, c, std::move(a), std::move(r)); }));
  table.add(cmd("xack", -4, {"write", "fast"}, 1, 1, 1, [n](context& c, args&& a, responder r) {
    xack(*n, c, std::move(a), std::move(r));
  }));
  table.add(cmd("xpending", -3, {"readonly"}, 1, 1, 1, [n](context& c, args&& a, responder r) {
    xpending(*n, c, std::move(a), std::move(r));
  }));
  table.add(cmd("xclaim", -6, {"write", "fast"}, 1, 1, 1, [n](context& c, args&& a, responder r) {
    xclaim(*n, c, std::move(a), std::move(r));
  }));
  table.add(
    cmd("xautoclaim", -6, {"write", "fast"}, 1, 1, 1,
        [n](context& c, args&& a, responder r) { xautoclaim(*n, c, std::move(a), std::move(r)); }));
  command group = cmd("xgroup", -2, {}, 0, 0, 0, {});
  group.subcommands.push_back(
    cmd("xgroup|create", -5, {"write"}, 2, 2, 1, [n](context& c, args&& a, responder r) {
      xgroup_create(*n, c, std::move(a), std::move(r));
    }));
  group.subcommands.push_back(
    cmd("xgroup|createconsumer", 5, {"write"}, 2, 2, 1, [n](context&, args&& a, responder r) {
      xgroup_consumer(*n, std::move(a), std::move(r), 1);
    }));
  group.subcommands.push_back(
    cmd("xgroup|delconsumer", 5, {"write"}, 2, 2, 1, [n](context&, args&& a, responder r) {
      xgroup_consumer(*n, std::move(a), std::move(r), -1);
    }));
  group.subcommands.push_back(
    cmd("xgroup|destroy", 4, {"write"}, 2, 2, 1,
        [n](context&, args&& a, responder r) { xgroup_destroy(*n, std::move(a), std::move(r)); }));
  group.subcommands.push_back(
    cmd("xgroup|setid", -5, {"write"}, 2, 2, 1, [](context&, args&&, responder r) {
      send_error(r, "ERR nerve: a group's position moves by acks or a replay "
                    "(docs/operations.md), not by XGROUP SETID");
    }));
  table.add(std::move(group));
  command info = cmd("xinfo", -2, {}, 0, 0, 0, {});
  info.subcommands.push_back(
    cmd("xinfo|stream", -3, {"readonly"}, 2, 2, 1,
        [n](context&, args&& a, responder r) { xinfo_stream(*n, std::move(a), std::move(r)); }));
  info.subcommands.push_back(
    cmd("xinfo|groups", 3, {"readonly"}, 2, 2, 1,
        [n](context&, args&& a, responder r) { xinfo_groups(*n, std::move(a), std::move(r)); }));
  info.subcommands.push_back(
    cmd("xinfo|consumers", 4, {"readonly"}, 2, 2, 1,
        [n](context&, args&& a, responder r) { xinfo_consumers(*n, std::move(a), std::move(r)); }));
  table.add(std::move(info));
}

} // namespace nerve::http::resp
