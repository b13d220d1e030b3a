// What the fault tests share: a node with a builtin agent acking one topic,
// publishing with a deadline, and a check of the log after a reboot against
// what the node acknowledged.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "actors/node.hpp"
#include "config/config.hpp"

namespace nerve::test {

/// The topic the fault tests publish to, and the agent that acks it.
inline const std::string fault_topic = "t";
inline const std::string fault_agent = "acker";

/// A node configuration on `data_dir`: `partitions` per topic, fsync always,
/// and a builtin `noop` agent acking every event of fault_topic.
[[nodiscard]] config::config fault_config(const std::string& data_dir, std::uint32_t partitions);

/// Publishes `items` and waits for the answer (at most 30 s; a missing
/// answer fails the test).
[[nodiscard]] actors::result<std::vector<actors::published>>
publish_wait(actors::node& n, const std::string& topic, std::vector<actors::publish_item> items);

/// The acker's cursor on each partition of fault_topic, as the partitions
/// hold it in memory (0 before the topic exists).
[[nodiscard]] std::vector<std::uint64_t> memory_cursors(actors::node& n, std::uint32_t partitions);

/// What a node acknowledged; everything in it must survive any crash.
class acknowledged {
public:
  struct where {
    std::string topic;
    std::uint32_t partition = 0;
    std::uint64_t offset = 0;
  };

  /// Records events whose publish was answered OK.
  void events(const std::vector<actors::published>& ok);
  /// Records that the acker's cursor on `partition` is durable up to
  /// `cursor` (see docs/architecture.md, "Faults": an acknowledged ack).
  void cursor(std::uint32_t partition, std::uint64_t cursor);

  [[nodiscard]] std::size_t size() const;

  /// Opens the log in `data_dir` on the real file system and checks it
  /// against what was acknowledged: every event at its place, offsets dense
  /// from 0 in every partition, each cursor at least its durable floor and
  /// at most the partition's end. Records Catch2 checks; answers whether all
  /// of them held.
  bool check(const std::string& data_dir, std::uint32_t partitions) const;

private:
  mutable std::mutex mutex_;
  std::map<std::string, where> events_;                 ///< by event id
  std::map<std::uint32_t, std::uint64_t> cursor_floor_; ///< by partition
};

} // namespace nerve::test
