// A RocksDB file system for fault tests: over the real one, it fails the n-th
// append or sync on demand and simulates a power cut that drops every byte
// not yet synced (FoundationDB's AsyncFileNonDurable idea).
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>

#include <rocksdb/file_system.h>

namespace nerve::test {

/// Which files an injected failure counts and hits.
enum class file_kind {
  any, ///< every file RocksDB writes
  wal, ///< write-ahead logs only (*.log)
};

/// What survives a power cut, file by file:
/// - a file keeps the bytes that a Sync/Fsync covered; later appends go;
/// - a file created since its directory was last fsynced goes as a whole;
///   a rename is durable at once and makes every name created before it in
///   its directory durable too (a journaling file system keeps metadata
///   changes in order; a name replaced by a rename holds the old or the new
///   file, never neither, and this model picks the new one);
/// - a failed sync loses the bytes it should have synced for good: later
///   syncs do not bring them back (Linux drops the dirty pages, "fsyncgate").
/// Not modelled: deletions and renames are durable at once; unsynced bytes
/// reach the disk only as a prefix (reboot() with a seed), never out of
/// order; reads never fail; hard links and random writes (nerve uses
/// neither) are refused.
class faulty_fs final : public rocksdb::FileSystemWrapper {
public:
  explicit faulty_fs(const std::shared_ptr<rocksdb::FileSystem>& base
                     = rocksdb::FileSystem::Default());

  [[nodiscard]] const char* Name() const override { return "nerve.faulty_fs"; }

  /// Fails the `nth` append (1: the next one) on files of `kind` as a full
  /// disk does (ENOSPC: RocksDB can resume after it, not after other errors).
  void fail_append(std::uint64_t nth, file_kind kind = file_kind::any);
  /// Fails the `nth` sync (1: the next one) on files of `kind` with EIO; the
  /// bytes it should have synced never become durable.
  void fail_sync(std::uint64_t nth, file_kind kind = file_kind::any);
  /// Cuts power once `n` more mutating operations (appends, syncs, creates,
  /// renames, deletes...) have passed; 0 disarms.
  void cut_after(std::uint64_t n);

  /// From now on nothing reaches the disk: every mutating call fails. What
  /// was not durable is dropped by reboot().
  void power_cut();
  [[nodiscard]] bool is_cut() const;
  /// What reboot() dropped.
  struct dropped {
    std::uint64_t bytes = 0;
    std::uint64_t files = 0;
    std::size_t open_files = 0; ///< files still open at the reboot: should be none
  };
  /// Once the database was closed: applies the cut to the files on disk and
  /// powers up with everything left durable. Without a seed, each file keeps
  /// exactly its synced bytes; with one, also a random prefix of the rest
  /// (a torn tail), unless a failed sync lost it.
  dropped reboot(std::optional<std::uint64_t> torn_seed = std::nullopt);

  /// Mutating operations so far (what cut_after counts).
  [[nodiscard]] std::uint64_t operations() const;

  // -- rocksdb::FileSystem ----------------------------------------------------
  rocksdb::IOStatus NewWritableFile(const std::string& f, const rocksdb::FileOptions& o,
                                    std::unique_ptr<rocksdb::FSWritableFile>* r,
                                    rocksdb::IODebugContext* dbg) override;
  rocksdb::IOStatus ReopenWritableFile(const std::string& f, const rocksdb::FileOptions& o,
                                       std::unique_ptr<rocksdb::FSWritableFile>* r,
                                       rocksdb::IODebugContext* dbg) override;
  rocksdb::IOStatus ReuseWritableFile(const std::string& f, const std::string& old,
                                      const rocksdb::FileOptions& o,
                                      std::unique_ptr<rocksdb::FSWritableFile>* r,
                                      rocksdb::IODebugContext* dbg) override;
  rocksdb::IOStatus NewRandomRWFile(const std::string& f, const rocksdb::FileOptions& o,
                                    std::unique_ptr<rocksdb::FSRandomRWFile>* r,
                                    rocksdb::IODebugContext* dbg) override;
  rocksdb::IOStatus NewDirectory(const std::string& d, const rocksdb::IOOptions& o,
                                 std::unique_ptr<rocksdb::FSDirectory>* r,
                                 rocksdb::IODebugContext* dbg) override;
  rocksdb::IOStatus DeleteFile(const std::string& f, const rocksdb::IOOptions& o,
                               rocksdb::IODebugContext* dbg) override;
  rocksdb::IOStatus RenameFile(const std::string& from, const std::string& to,
                               const rocksdb::IOOptions& o, rocksdb::IODebugContext* dbg) override;
  rocksdb::IOStatus LinkFile(const std::string& from, const std::string& to,
                             const rocksdb::IOOptions& o, rocksdb::IODebugContext* dbg) override;
  rocksdb::IOStatus Truncate(const std::string& f, size_t size, const rocksdb::IOOptions& o,
                             rocksdb::IODebugContext* dbg) override;
  rocksdb::IOStatus CreateDir(const std::string& d, const rocksdb::IOOptions& o,
                              rocksdb::IODebugContext* dbg) override;
  rocksdb::IOStatus CreateDirIfMissing(const std::string& d, const rocksdb::IOOptions& o,
                                       rocksdb::IODebugContext* dbg) override;
  rocksdb::IOStatus DeleteDir(const std::string& d, const rocksdb::IOOptions& o,
                              rocksdb::IODebugContext* dbg) override;

  /// The bookkeeping the file and directory wrappers share (faulty_fs.cpp).
  class state;

private:
  rocksdb::IOStatus open_writable(const std::string& f, const rocksdb::FileOptions& o,
                                  std::unique_ptr<rocksdb::FSWritableFile>* r,
                                  rocksdb::IODebugContext* dbg, bool reopen);

  std::shared_ptr<state> state_;
};

} // namespace nerve::test
