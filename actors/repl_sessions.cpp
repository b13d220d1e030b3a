// Fetch sessions (repl_sessions.hpp).
#include "actors/repl_sessions.hpp"

#include <algorithm>

namespace nerve::actors {

namespace {

/// A round whose answer has not come within this is taken for lost with
/// its frame (as a partition's own fetch is after its fetch_timeout).
constexpr auto round_lost_after = std::chrono::milliseconds{1500};
/// A leader forgets a round that got fewer answers than fetches after this
/// (a partition actor stopped in between): the follower fetches again.
constexpr auto round_dropped_after = std::chrono::seconds{30};

} // namespace

std::vector<fetch_item> repl_sessions::take_round(session& s, clock::time_point now) {
  if (s.outstanding && now - s.sent_at > round_lost_after) {
    s.outstanding = false;
    s.in_flight.clear();
  }
  // One that never fetches again (it stopped) does not hold the others.
  if (!s.outstanding && !s.in_flight.empty() && now - s.answered_at > round_lost_after)
    s.in_flight.clear();
  // The partitions of the last round still apply or sync its answer: they
  // go together with the next one.
  if (s.outstanding || !s.in_flight.empty() || s.pending.empty())
    return {};
  std::vector<fetch_item> frame;
  frame.reserve(s.pending.size());
  for (auto& [key, item] : s.pending) {
    s.in_flight.insert(key);
    frame.push_back(std::move(item));
  }
  s.pending.clear();
  s.outstanding = true;
  s.sent_at = now;
  return frame;
}

bool repl_sessions::send_round(const std::string& leader, const std::vector<fetch_item>& frame) {
  if (frame.empty() || send_(leader, link_fetch(frame)))
    return true;
  std::lock_guard<std::mutex> guard{mutex_};
  auto& s = follow_[leader];
  s.outstanding = false;
  s.in_flight.clear(); // each partition's tick fetches again
  return false;
}

template <class Change>
bool repl_sessions::update(const std::string& leader, Change change) {
  std::vector<fetch_item> frame;
  {
    std::lock_guard<std::mutex> guard{mutex_};
    auto& s = follow_[leader];
    auto now = clock::now();
    change(s, now);
    frame = take_round(s, now);
  }
  return send_round(leader, frame);
}

bool repl_sessions::fetch(const std::string& leader, std::uint64_t token,
                          const fetch_request& req) {
  return update(leader, [&](session& s, clock::time_point) {
    partition_key key{req.topic, req.partition};
    s.in_flight.erase(key);
    s.pending[key] = fetch_item{token, req};
  });
}

void repl_sessions::answered(const std::string& leader) {
  update(leader, [](session& s, clock::time_point now) {
    s.outstanding = false;
    s.answered_at = now;
  });
}

void repl_sessions::forget(const std::string& leader, const partition_key& p) {
  update(leader, [&](session& s, clock::time_point) {
    s.in_flight.erase(p);
    s.pending.erase(p);
  });
}

std::uint64_t repl_sessions::begin(const std::string& node, std::size_t n) {
  std::lock_guard<std::mutex> guard{mutex_};
  auto now = clock::now();
  for (auto it = rounds_.begin(); it != rounds_.end();)
    it = now - it->second.begun > round_dropped_after ? rounds_.erase(it) : std::next(it);
  auto id = next_round_++;
  auto& r = rounds_[id];
  r.node = node;
  r.expected = n;
  r.begun = now;
  return id;
}

void repl_sessions::answer(std::uint64_t id, fetch_answer_item item) {
  std::string node;
  std::string frame;
  std::vector<partition_key> unpark;
  {
    std::lock_guard<std::mutex> guard{mutex_};
    auto it = rounds_.find(id);
    if (it == rounds_.end())
      return; // dropped: the follower's partitions fetch again
    auto& r = it->second;
    partition_key key{item.topic, item.partition};
    r.parked.erase(std::remove(r.parked.begin(), r.parked.end(), key), r.parked.end());
    r.answers.push_back(std::move(item));
    // The first answer, whatever it carries (records, state, news, or a
    // park that expired), ends the round: its frame goes out as soon as
    // the rest answer, and the answered partition hears nothing new until
    // the follower's next round, so the parked ones answer now.
    if (!r.closing) {
      r.closing = true;
      unpark = r.parked;
    }
    node = r.node;
    if (r.answers.size() >= r.expected) {
      frame = link_fetch_answer(r.answers);
      rounds_.erase(it);
    }
  }
  for (auto& p : unpark)
    unpark_(node, id, p);
  if (!frame.empty())
    send_(node, std::move(frame));
}

bool repl_sessions::may_park(std::uint64_t id, const partition_key& p) {
  std::lock_guard<std::mutex> guard{mutex_};
  auto it = rounds_.find(id);
  if (it == rounds_.end())
    return true;
  if (it->second.closing)
    return false;
  it->second.parked.push_back(p);
  return true;
}

} // namespace nerve::actors
