// A data directory opened strictly read-only, for offline tools such as
// `nerve __dump-log`: RocksDB's read-only instance, which sees the log as it
// was when opened and never creates, writes or deletes a file there.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <tl/expected.hpp>

#include "persistence/event_log.hpp"

namespace rocksdb {
class DB;
class ColumnFamilyHandle;
class Logger;
} // namespace rocksdb

namespace nerve::persistence {

class wal_gap_filter;

/// Sees one stored event: its topic, partition, offset, append time and the
/// event JSON as stored (valid only during the call).
using stored_event_visitor
  = std::function<void(const topic_info&, std::uint32_t partition, std::uint64_t offset,
                       std::int64_t time_us, std::string_view json)>;

class read_only_log {
public:
  /// Opens the log at `path` read-only; fails when `path` is not a
  /// directory holding a nerve log (it is never created).
  [[nodiscard]] static tl::expected<std::unique_ptr<read_only_log>, error>
  open(const std::string& path);

  read_only_log(const read_only_log&) = delete;
  read_only_log& operator=(const read_only_log&) = delete;
  ~read_only_log();

  /// The topics of `meta`, sorted by name.
  [[nodiscard]] const std::vector<topic_info>& topics() const { return topics_; }

  /// Calls `fn` for every stored event, sorted by topic name, partition and
  /// offset; answers how many it visited. Fails on a value too short to be
  /// an event, and on an event of a topic or partition `meta` does not know
  /// (after visiting the others), so no stored event goes unseen.
  [[nodiscard]] tl::expected<std::uint64_t, error> visit(const stored_event_visitor& fn) const;

  /// A replicated partition's leader-epoch checkpoint, by ascending epoch
  /// (empty for a partition that never was replicated).
  [[nodiscard]] tl::expected<std::vector<epoch_entry>, error> epochs(const topic_info& topic,
                                                                     std::uint32_t partition) const;

private:
  read_only_log() = default;
  [[nodiscard]] tl::expected<std::uint64_t, error>
  visit_topic(const topic_info& topic, const stored_event_visitor& fn) const;
  /// The first stored event key outside every known topic's partitions.
  [[nodiscard]] tl::expected<std::optional<std::string>, error> find_stray() const;

  std::shared_ptr<rocksdb::Logger> logger_;    ///< outlives db_
  std::unique_ptr<wal_gap_filter> wal_filter_; ///< outlives db_
  std::unique_ptr<rocksdb::DB> db_;
  std::vector<rocksdb::ColumnFamilyHandle*> handles_;
  rocksdb::ColumnFamilyHandle* events_ = nullptr; ///< shared (formats 1, 2)
  rocksdb::ColumnFamilyHandle* meta_ = nullptr;
  /// Each partition's events family (format 3) by topic id and partition.
  std::map<std::pair<std::uint32_t, std::uint32_t>, rocksdb::ColumnFamilyHandle*>
    partition_families_;
  std::vector<topic_info> topics_;
};

} // namespace nerve::persistence
