// What event_log.cpp and event_log_reads.cpp share and nothing else sees:
// RocksDB's errors as the log's, and a key prefix test. (The on-disk layout
// they share is layout.hpp.)
#pragma once

#include <cstring>
#include <string>

#include <rocksdb/slice.h>
#include <rocksdb/status.h>

#include "persistence/event_log.hpp"

namespace nerve::persistence::detail {

[[nodiscard]] inline error io_error(const std::string& what, const rocksdb::Status& s) {
  return {errc::io_error, what + ": " + s.ToString()};
}

[[nodiscard]] inline bool starts_with(const rocksdb::Slice& s, const std::string& prefix) {
  return s.size() >= prefix.size() && std::memcmp(s.data(), prefix.data(), prefix.size()) == 0;
}

} // namespace nerve::persistence::detail
