// WAL files written into space zeroed ahead of them, so a group commit's
// fdatasync flushes data blocks only; and the replay filter that makes such a
// WAL safe to recover after a power cut.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include <rocksdb/wal_filter.h>

namespace rocksdb {
class FileSystem;
} // namespace rocksdb

namespace nerve::persistence {

/// How far ahead of a WAL's end zeroes are written, and in what steps.
struct zeroed_wal_limits {
  std::uint64_t chunk_bytes = 8ULL << 20; ///< zeroed (and synced) per step
  /// A step is written and synced this much at a time: a WAL sync that comes
  /// while zeroes are written back waits for the device to take what is
  /// queued before it (a whole 8 MiB step held one for 6-7 ms under load).
  std::uint64_t slice_bytes = 1ULL << 20;
  std::uint64_t low_water_bytes = 6ULL << 20; ///< a step starts when less is left
  /// A step that starts at the WAL's end (a WAL's first, at its first sync,
  /// or one after steps were skipped) starts this far past it: the writes in
  /// between append as before while the step runs, and never wait for it.
  std::uint64_t gap_bytes = 1ULL << 20;
  /// Zeroes are written ahead only while syncs are this small on average
  /// (since the last step): a sync's journal commit is worth saving when it
  /// flushes a few KiB (one event per request), not when it flushes hundreds
  /// (batched publishes), where writing every byte twice costs more.
  std::uint64_t max_bytes_per_sync = 64ULL << 10;
  /// No step runs when the file system would have less than this free after
  /// it: the last of a disk is for events, not for zeroes.
  std::uint64_t min_free_bytes = 256ULL << 20;
};

/// `base` with RocksDB's WAL files (`NNNNNN.log`) written in place into
/// zeroes a background thread wrote and synced ahead of them; everything else
/// is `base`'s. Appending to a file makes every fdatasync commit the file's
/// new size to the file system's journal as well (on ext4 a second device
/// flush); writing over synced zeroes changes no metadata, so the sync that
/// answers a group of publishes writes data only. A WAL reader skips the
/// zeroes after the last record (RocksDB's zero record type is reserved for
/// preallocated files) and a WAL is cut to its written size when closed.
/// `base` must be a file system on file descriptors (the default one).
[[nodiscard]] std::shared_ptr<rocksdb::FileSystem>
zeroed_wal_file_system(std::shared_ptr<rocksdb::FileSystem> base, zeroed_wal_limits limits = {});

/// Replays a WAL only up to its first gap in sequence numbers. Within one
/// WAL, RocksDB's batches take consecutive sequence numbers. After a power
/// cut, a page of a WAL written over zeroes may read back as zeroes while a
/// later page (also not yet synced) made it to disk; RocksDB skips a zero
/// page silently (the type is reserved for preallocation) and would replay the
/// later batches without the lost ones between. This filter drops every batch
/// of a WAL from the first one whose sequence number does not follow its
/// predecessor's: recovery ends at the last batch whose predecessors are all
/// there, as RocksDB's point-in-time recovery does at a torn record, and
/// the batches of later WALs too unless a WAL starts exactly where the replay
/// stopped (one written after an earlier recovery). Every batch it drops was
/// written after the last sync (an acknowledged one was synced with all
/// before it), so nothing acknowledged is dropped. Zeroes are written ahead
/// of a WAL only after its first sync, so a gap always has a batch before it
/// in its WAL.
class wal_gap_filter final : public rocksdb::WalFilter {
public:
  WalProcessingOption LogRecordFound(unsigned long long log_number,
                                     const std::string& log_file_name,
                                     const rocksdb::WriteBatch& batch,
                                     rocksdb::WriteBatch* new_batch, bool* batch_changed) override;
  const char* Name() const override { return "nerve.wal_gap_filter"; }

  /// Batches dropped, over every replay this filter saw.
  [[nodiscard]] std::uint64_t dropped() const { return dropped_; }

private:
  unsigned long long log_number_ = ~0ULL; ///< the WAL being replayed
  bool have_next_ = false;
  std::uint64_t next_sequence_ = 0; ///< where the next batch must start
  bool dropping_ = false;           ///< a gap was met
  std::uint64_t dropped_ = 0;
};

} // namespace nerve::persistence
