// The seams a test uses to break the storage layer on purpose: named fault
// points where it may fail an operation or cut power, and the file system
// RocksDB runs on. Production passes none of them.
#pragma once

#include <cstdint>
#include <functional>
#include <string>

namespace rocksdb {
class FileSystem;
} // namespace rocksdb

namespace nerve::persistence {

/// Places where a test may inject a fault (docs/architecture.md, "Faults").
enum class fault_point {
  before_append,        ///< a partition writer is about to write a group commit
  before_sync,          ///< the sync thread is about to fsync the WAL
  before_cursor_commit, ///< delivery state (cursors, pending, DLQ...) is about to be written
  child_io,             ///< a line is about to be written to a process agent's child
};

/// What the code at a fault point does next.
enum class fault_action {
  proceed, ///< carry on (the hook may have cut power meanwhile)
  fail,    ///< fail the operation as the disk or the pipe would
};

/// Where a fault point was reached.
struct fault_context {
  /// The topic (before_append), the agent whose delivery state or child it
  /// is (before_cursor_commit, child_io), or empty (before_sync).
  std::string subject;
  std::uint32_t partition = 0; ///< of the topic, or of the agent's group
};

/// Called at each fault point on the thread that reached it: a partition
/// actor, the sync thread or a child's writer thread. It must not throw and
/// must not call back into the log.
using fault_hook = std::function<fault_action(fault_point, const fault_context&)>;

/// The point's name, as the docs and test messages spell it.
[[nodiscard]] const char* to_string(fault_point p);

/// Asks `hook` (which may be empty) whether to fail at `p`.
[[nodiscard]] inline bool fails_at(const fault_hook& hook, fault_point p,
                                   const fault_context& where) {
  return hook && hook(p, where) == fault_action::fail;
}

} // namespace nerve::persistence
