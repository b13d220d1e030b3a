// Fetch sessions: one replication round per pair of nodes, not per
// partition (docs/architecture.md "Clustering", "Fetch sessions").
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "actors/messages.hpp"

namespace nerve::actors {

/// A partition: its topic and number.
using partition_key = std::pair<std::string, std::uint32_t>;

/// Both ends of a node's fetch sessions. A follower's partitions hand their
/// fetches to the session for their leader's node, which sends them in one
/// frame once every partition of its last round has applied and synced
/// that round's answer (so the next round has all of them again); the
/// leader answers every fetch of a frame in one frame, as soon as one of
/// them answers (it has records, or its park expired; the others, parked
/// for lack of records, answer empty then). A round costs two frames, one
/// apply pass and about one sync per pair of nodes whatever the number of
/// partitions, as Kafka's fetch sessions do. Thread-safe: partition actors
/// and the gate's thread call it.
class repl_sessions {
public:
  /// Sends a link frame to a member; false without a link to it.
  using send_fn = std::function<bool(const std::string& node, std::string frame)>;
  /// Asks partition `p`'s actor to answer follower `node`'s fetch parked in
  /// round `round` now.
  using unpark_fn
    = std::function<void(const std::string& node, std::uint64_t round, const partition_key& p)>;

  repl_sessions(send_fn send, unpark_fn unpark)
    : send_(std::move(send)), unpark_(std::move(unpark)) {}

  // -- follower side -------------------------------------------------------------

  /// Partition `req`'s next fetch (`token`) from node `leader`: sent with
  /// the session's next round. False: there is no link to `leader` now
  /// (the partition's tick fetches again).
  bool fetch(const std::string& leader, std::uint64_t token, const fetch_request& req);

  /// An answer frame came from `leader` (before its answers are applied).
  void answered(const std::string& leader);

  /// Partition `p` no longer follows `leader` (a new role): the session
  /// does not wait for it.
  void forget(const std::string& leader, const partition_key& p);

  // -- leader side ---------------------------------------------------------------

  /// A frame of `n` fetches from follower `node` arrived: the round in
  /// which they are answered.
  std::uint64_t begin(const std::string& node, std::size_t n);

  /// A partition's answer in `round`; the frame goes out with the last one.
  void answer(std::uint64_t round, fetch_answer_item item);

  /// Whether partition `p`, with nothing to send, may park its fetch of
  /// `round` until it has records: not once another partition answered.
  bool may_park(std::uint64_t round, const partition_key& p);

private:
  using clock = std::chrono::steady_clock;

  struct session {
    std::map<partition_key, fetch_item> pending; ///< to go with the next round
    std::set<partition_key> in_flight;           ///< in the last round, not fetching again yet
    bool outstanding = false;                    ///< a round's frame waits for its answer
    clock::time_point sent_at{};
    clock::time_point answered_at{};
  };

  struct round {
    std::string node;
    std::size_t expected = 0;
    std::vector<fetch_answer_item> answers;
    std::vector<partition_key> parked;
    bool closing = false; ///< a partition answered: the rest answer now
    clock::time_point begun{};
  };

  /// Changes the session for `leader`, then sends its next round if it may
  /// go now; false when that send found no link.
  template <class Change>
  bool update(const std::string& leader, Change change);
  /// The frame of the next round for `s`, when it may go now.
  std::vector<fetch_item> take_round(session& s, clock::time_point now);
  /// Sends a round's frame; on failure the session waits for its
  /// partitions to fetch again.
  bool send_round(const std::string& leader, const std::vector<fetch_item>& frame);

  send_fn send_;
  unpark_fn unpark_;
  std::mutex mutex_;
  std::map<std::string, session> follow_; ///< by leader node
  std::map<std::uint64_t, round> rounds_;
  std::uint64_t next_round_ = 1;
};

} // namespace nerve::actors
