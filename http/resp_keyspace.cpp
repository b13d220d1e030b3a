// The keyspace commands of the Redis protocol listener (docs/redis.md,
// "Keyspace"): HSET ... SCAN on the node's keyspace, with Redis 7's replies
// in RESP2 and RESP3 (checked against redis-server by
// tests/blackbox/test_resp_keyspace.py), and XADD's WRONGTYPE check. A
// keyspace call waits for an fsync, so none runs on an I/O thread: each
// goes to the node's keyspace threads, and one connection's calls run one
// after another, in command order, as Redis runs a pipeline.
#include "http/resp_commands.hpp"

#include <atomic>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <unordered_map>
#include <utility>

#include "persistence/keyspace.hpp"

namespace nerve::http::resp {

namespace {

namespace ps = persistence;

const char* const wrongtype = "WRONGTYPE Operation against a key holding the wrong kind of value";

/// A connection's turn at the keyspace. Its next job starts once the turn
/// is released: explicitly, or when the last copy of it goes (a job dropped
/// unrun must not stall the connection).
class lane_turn {
public:
  explicit lane_turn(std::function<void()> next) : next_(std::move(next)) {}
  ~lane_turn() { release(); }
  lane_turn(const lane_turn&) = delete;
  lane_turn& operator=(const lane_turn&) = delete;

  void release() {
    if (!released_.exchange(true))
      next_();
  }

private:
  std::function<void()> next_;
  std::atomic<bool> released_{false};
};

using turn_ptr = std::shared_ptr<lane_turn>;
/// Runs on a keyspace thread with the keyspace (or why there is none now).
/// The connection's next job waits until `turn` is released; a job that
/// keeps no copy of it releases it as it returns.
using lane_job = std::function<void(actors::result<ps::keyspace*>, turn_ptr turn)>;

/// One lane per connection with keyspace work: its jobs run one after
/// another, in the order they came. A lane exists while a job of its
/// connection waits or runs, so there are at most as many as connections,
/// and at most one job per connection is on the node's keyspace threads.
class keyspace_lanes : public std::enable_shared_from_this<keyspace_lanes> {
public:
  explicit keyspace_lanes(actors::node& node) : node_(node) {}

  /// Runs `job` after the earlier jobs of connection `client`.
  void run(std::uint64_t client, lane_job job) {
    {
      std::lock_guard<std::mutex> guard{mutex_};
      auto [lane, created] = waiting_.try_emplace(client);
      if (!created) {
        lane->second.push_back(std::move(job));
        return;
      }
    }
    start(client, std::move(job));
  }

  /// Whether connection `client` has no job waiting or running.
  [[nodiscard]] bool idle(std::uint64_t client) const {
    std::lock_guard<std::mutex> guard{mutex_};
    return waiting_.count(client) == 0;
  }

  [[nodiscard]] actors::node& node() const { return node_; }

private:
  void start(std::uint64_t client, lane_job job) {
    auto turn
      = std::make_shared<lane_turn>([self = shared_from_this(), client] { self->next(client); });
    node_.run_keyspace(
      [job = std::move(job), turn = std::move(turn)](actors::result<ps::keyspace*> ks) mutable {
        job(std::move(ks), std::move(turn));
      });
  }

  void next(std::uint64_t client) {
    lane_job job;
    {
      std::lock_guard<std::mutex> guard{mutex_};
      auto lane = waiting_.find(client);
      if (lane == waiting_.end())
        return; // impossible: a turn is released once
      if (lane->second.empty()) {
        waiting_.erase(lane);
        return;
      }
      job = std::move(lane->second.front());
      lane->second.pop_front();
    }
    start(client, std::move(job));
  }

  actors::node& node_;
  mutable std::mutex mutex_;
  /// The jobs after the one running, by client id.
  std::unordered_map<std::uint64_t, std::deque<lane_job>> waiting_;
};

using lanes_ptr = std::shared_ptr<keyspace_lanes>;

void send_error(const responder& r, const std::string& text) {
  r.send(r.make().error(text));
}

ps::error arity(std::string_view name) {
  return {ps::errc::invalid, arity_error(name)};
}

/// A handler that runs `call(keyspace, argv)` in the connection's lane and
/// answers `answer(reply, value)`, or the error: the keyspace's messages are
/// Redis' reply texts already.
template <class Call, class Answer>
handler on_keyspace(const lanes_ptr& lanes, Call call, Answer answer) {
  return [lanes, call, answer](context& ctx, args&& a, responder r) {
    lanes->run(ctx.client_id(), [a = std::move(a), r, call,
                                 answer](actors::result<ps::keyspace*> ks, const turn_ptr&) {
      if (!ks)
        return send_error(r, error_text(ks.error()));
      auto value = call(**ks, a);
      if (!value)
        return send_error(r, value.error().message);
      auto out = r.make();
      answer(out, *value);
      r.send(std::move(out));
    });
  };
}

void answer_integer(reply& out, std::int64_t value) {
  out.integer(value);
}

void answer_flag(reply& out, bool value) {
  out.integer(value ? 1 : 0);
}

void answer_keys(reply& out, const std::vector<std::string>& keys) {
  out.array(keys.size());
  for (const auto& k : keys)
    out.bulk(k);
}

/// The words of `a` from `from` on.
std::vector<std::string> tail(const args& a, std::size_t from) {
  return {a.begin() + static_cast<std::ptrdiff_t>(from), a.end()};
}

// -- hashes ------------------------------------------------------------------------

tl::expected<std::int64_t, ps::error> hset(ps::keyspace& ks, const args& a) {
  if (a.size() % 2 == 1) // a field without its value
    return tl::make_unexpected(arity("hset"));
  std::vector<ps::field_value> fields;
  fields.reserve((a.size() - 2) / 2);
  for (std::size_t i = 2; i + 1 < a.size(); i += 2)
    fields.emplace_back(a[i], a[i + 1]);
  return ks.hset(a[1], fields);
}

void answer_value(reply& out, const std::optional<std::string>& value) {
  if (value)
    out.bulk(*value);
  else
    out.null();
}

/// A map in RESP3, a flat array of field, value, ... in RESP2.
void answer_hash(reply& out, const std::vector<ps::field_value>& fields) {
  out.map(fields.size());
  for (const auto& [field, value] : fields)
    out.bulk(field).bulk(value);
}

tl::expected<std::int64_t, ps::error> hincrby(ps::keyspace& ks, const args& a) {
  // Redis parses the increment before it looks at the key.
  auto by = ps::parse_integer(a[3]);
  if (!by)
    return tl::make_unexpected(by.error());
  return ks.hincrby(a[1], a[2], *by);
}

// -- keys --------------------------------------------------------------------------

tl::expected<bool, ps::error> expire(ps::keyspace& ks, const args& a) {
  // Redis reads the options before the time.
  auto flags = ps::parse_expire_flags(tail(a, 3));
  if (!flags)
    return tl::make_unexpected(flags.error());
  auto seconds = ps::parse_integer(a[2]);
  if (!seconds)
    return tl::make_unexpected(seconds.error());
  return ks.expire(a[1], *seconds, *flags);
}

/// SCAN's [cursor, [key ...]], the cursor a bulk string as Redis sends it.
void answer_scan(reply& out, const ps::scan_page& page) {
  out.array(2);
  out.bulk(std::to_string(page.cursor));
  answer_keys(out, page.keys);
}

// -- XADD's check --------------------------------------------------------------------

xadd_gate make_gate(const lanes_ptr& lanes) {
  return [lanes](context& ctx, const std::string& name, const responder& r,
                 std::function<void(std::function<void()>)> publish) {
    // A topic already is a stream whatever the keyspace holds (group
    // progress is known for the topics that exist, without I/O). Nothing of
    // the connection waits in its lane, so publishing now keeps its order.
    if (lanes->node().group_progress(name) && lanes->idle(ctx.client_id()))
      return publish([] {});
    lanes->run(ctx.client_id(), [name, r, publish = std::move(publish)](
                                  actors::result<ps::keyspace*> ks, const turn_ptr& turn) {
      if (!ks)
        return send_error(r, error_text(ks.error()));
      auto type = (*ks)->type(name);
      if (!type)
        return send_error(r, type.error().message);
      if (*type == ps::key_type::hash)
        return send_error(r, wrongtype);
      if (*type == ps::key_type::stream) // the topic exists: the publish path keeps the order
        return publish([] {});
      // This XADD makes the topic: what comes after it waits until it does.
      publish([turn] { turn->release(); });
    });
  };
}

} // namespace

keyspace_commands make_keyspace_commands(actors::node& node) {
  auto lanes = std::make_shared<keyspace_lanes>(node);
  const std::vector<std::string> write_fast{"write", "denyoom", "fast"};
  const std::vector<std::string> read_fast{"readonly", "fast"};
  keyspace_commands out;
  auto add = [&out](std::string name, int arity, std::vector<std::string> flags, int first,
                    int last, handler run) {
    out.commands.push_back({std::move(name),
                            arity,
                            false,
                            std::move(flags),
                            first,
                            last,
                            first == 0 ? 0 : 1,
                            std::move(run),
                            {}});
  };
  add("hset", -4, write_fast, 1, 1, on_keyspace(lanes, hset, answer_integer));
  add("hget", 3, read_fast, 1, 1,
      on_keyspace(
        lanes, [](ps::keyspace& ks, const args& a) { return ks.hget(a[1], a[2]); }, answer_value));
  add("hgetall", 2, {"readonly"}, 1, 1,
      on_keyspace(
        lanes, [](ps::keyspace& ks, const args& a) { return ks.hgetall(a[1]); }, answer_hash));
  add("hincrby", 4, write_fast, 1, 1, on_keyspace(lanes, hincrby, answer_integer));
  add("hdel", -3, {"write", "fast"}, 1, 1,
      on_keyspace(
        lanes, [](ps::keyspace& ks, const args& a) { return ks.hdel(a[1], tail(a, 2)); },
        answer_integer));
  add("hlen", 2, read_fast, 1, 1,
      on_keyspace(
        lanes, [](ps::keyspace& ks, const args& a) { return ks.hlen(a[1]); }, answer_integer));
  add("exists", -2, read_fast, 1, -1,
      on_keyspace(
        lanes, [](ps::keyspace& ks, const args& a) { return ks.exists(tail(a, 1)); },
        answer_integer));
  add("type", 2, read_fast, 1, 1,
      on_keyspace(
        lanes, [](ps::keyspace& ks, const args& a) { return ks.type(a[1]); },
        [](reply& o, ps::key_type t) { o.simple(ps::type_name(t)); }));
  add("del", -2, {"write"}, 1, -1,
      on_keyspace(
        lanes, [](ps::keyspace& ks, const args& a) { return ks.del(tail(a, 1)); }, answer_integer));
  add("expire", -3, {"write", "fast"}, 1, 1, on_keyspace(lanes, expire, answer_flag));
  add("ttl", 2, read_fast, 1, 1,
      on_keyspace(
        lanes, [](ps::keyspace& ks, const args& a) { return ks.ttl(a[1]); }, answer_integer));
  add("persist", 2, {"write", "fast"}, 1, 1,
      on_keyspace(
        lanes, [](ps::keyspace& ks, const args& a) { return ks.persist(a[1]); }, answer_flag));
  add("keys", 2, {"readonly"}, 0, 0,
      on_keyspace(
        lanes, [](ps::keyspace& ks, const args& a) { return ks.keys(a[1]); }, answer_keys));
  add("scan", -2, {"readonly"}, 0, 0,
      on_keyspace(
        lanes,
        [](ps::keyspace& ks, const args& a) -> tl::expected<ps::scan_page, ps::error> {
          auto request = ps::parse_scan(tail(a, 1));
          if (!request)
            return tl::make_unexpected(request.error());
          return ks.scan(*request);
        },
        answer_scan));
  out.gate = make_gate(lanes);
  return out;
}

} // namespace nerve::http::resp
