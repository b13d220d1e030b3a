// What event_log.cpp and event_log_reads.cpp share and nothing else sees:
// RocksDB's errors as the log's, a key prefix test, and a walk over a
// partition's by_time runs of one time. (The on-disk layout
// they share is layout.hpp.)
#pragma once

#include <algorithm>
#include <cstring>
#include <initializer_list>
#include <memory>
#include <string>

#include <rocksdb/db.h>
#include <rocksdb/slice.h>
#include <rocksdb/status.h>
#include <rocksdb/write_batch.h>

#include "config/assert.hpp"
#include "persistence/event_log.hpp"
#include "persistence/keys.hpp"
#include "persistence/layout.hpp"

namespace nerve::persistence::detail {

[[nodiscard]] inline error io_error(const std::string& what, const rocksdb::Status& s) {
  return {errc::io_error, what + ": " + s.ToString()};
}

[[nodiscard]] inline bool starts_with(const rocksdb::Slice& s, const std::string& prefix) {
  return s.size() >= prefix.size() && std::memcmp(s.data(), prefix.data(), prefix.size()) == 0;
}

/// Calls `fn(key, run)` for each by_time run of one partition appended at
/// `time_us`, in offset order, until it returns false. A run it cannot read
/// ends the walk with Status::Corruption.
template <class Fn>
[[nodiscard]] rocksdb::Status for_each_run_at(rocksdb::DB& db, rocksdb::ColumnFamilyHandle* by_time,
                                              std::int64_t time_us, std::uint32_t topic_id,
                                              std::uint32_t partition, Fn&& fn) {
  const auto lower = keys::time_key(time_us, topic_id, partition, 0);
  const auto upper = keys::time_key(time_us, topic_id, partition + 1, 0);
  const rocksdb::Slice upper_slice{upper};
  rocksdb::ReadOptions ro;
  ro.iterate_upper_bound = &upper_slice;
  std::unique_ptr<rocksdb::Iterator> it{db.NewIterator(ro, by_time)};
  for (it->Seek(lower); it->Valid(); it->Next()) {
    auto run = layout::parse_time_run(it->key().ToStringView(), it->value().ToStringView());
    if (!run)
      return rocksdb::Status::Corruption("a by_time entry that is no run");
    if (!fn(it->key(), *run))
      return rocksdb::Status::OK();
  }
  return it->status();
}

/// The head of an event's stored value: its append time
/// (layout::value_header_bytes), made once for the events that share it.
class value_header {
public:
  explicit value_header(std::int64_t time_us) {
    keys::put_u64(bytes_, static_cast<std::uint64_t>(time_us));
  }
  [[nodiscard]] rocksdb::Slice slice() const { return rocksdb::Slice{bytes_}; }

private:
  std::string bytes_;
};

/// Stages an event's stored value under `key`: `header`, then its text,
/// given in up to three parts, joined by the batch, so the text is not
/// copied into a value string first.
inline void put_event(rocksdb::WriteBatch& batch, rocksdb::ColumnFamilyHandle* events,
                      const std::string& key, const value_header& header,
                      std::initializer_list<rocksdb::Slice> text) {
  NERVE_ASSERT(text.size() < 4, "an event's text in at most three parts");
  const rocksdb::Slice key_part{key};
  rocksdb::Slice value_parts[4] = {header.slice()};
  std::copy(text.begin(), text.end(), value_parts + 1);
  batch.Put(events, rocksdb::SliceParts{&key_part, 1},
            rocksdb::SliceParts{value_parts, static_cast<int>(text.size() + 1)});
}

} // namespace nerve::persistence::detail
