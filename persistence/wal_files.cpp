// WAL files written into space zeroed ahead of them (wal_files.hpp).
#include "persistence/wal_files.hpp"

#include <algorithm>
#include <array>
#include <cerrno>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <mutex>
#include <string>
#include <thread>
#include <utility>

#include <fcntl.h>
#include <pthread.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <rocksdb/file_system.h>
#include <rocksdb/write_batch.h>
#include <spdlog/spdlog.h>

namespace nerve::persistence {
namespace {

/// RocksDB names a WAL `<number>.log` (db/filename.cc).
bool is_wal(const std::string& path) {
  auto slash = path.rfind('/');
  std::string_view name{path};
  if (slash != std::string::npos)
    name.remove_prefix(slash + 1);
  constexpr std::string_view suffix{".log"};
  if (name.size() <= suffix.size() || name.substr(name.size() - suffix.size()) != suffix)
    return false;
  name.remove_suffix(suffix.size());
  return std::all_of(name.begin(), name.end(), [](char c) { return c >= '0' && c <= '9'; });
}

/// As RocksDB's own files answer: a full disk is NoSpace and retryable, the
/// error RocksDB resumes from by itself once there is room again.
rocksdb::IOStatus io_status(const std::string& what, const std::string& path, int err) {
  if (err == ENOSPC) {
    auto s = rocksdb::IOStatus::NoSpace(what + " " + path, std::strerror(err));
    s.SetRetryable(true);
    return s;
  }
  return rocksdb::IOStatus::IOError(what + " " + path, std::strerror(err));
}

/// Writes all of `size` bytes at `offset`.
bool write_at(int fd, const char* data, std::size_t size, std::uint64_t offset) {
  while (size > 0) {
    auto n = ::pwrite(fd, data, size, static_cast<off_t>(offset));
    if (n < 0 && errno == EINTR)
      continue;
    if (n == 0)
      errno = EIO; // no progress and no error: not worth retrying
    if (n <= 0)
      return false;
    data += n;
    size -= static_cast<std::size_t>(n);
    offset += static_cast<std::uint64_t>(n);
  }
  return true;
}

/// One WAL file: what RocksDB wrote and what is zeroed ahead of it.
struct wal_state {
  wal_state(int descriptor, int zeroer_descriptor, std::string file)
    : fd(descriptor), zero_fd(zeroer_descriptor), path(std::move(file)) {}
  wal_state(const wal_state&) = delete;
  wal_state& operator=(const wal_state&) = delete;
  ~wal_state() {
    ::close(fd);
    ::close(zero_fd);
  }

  const int fd; ///< RocksDB's writes and syncs
  /// The zeroer's own: Linux reports a failed writeback once per open file
  /// description, and the zeroer's fdatasync also writes back RocksDB's
  /// pages; on a shared descriptor a failure could reach the zeroer only and
  /// RocksDB's next sync would succeed over data that never reached the disk.
  const int zero_fd;
  const std::string path;
  std::mutex mutex;
  std::condition_variable changed;
  std::uint64_t end = 0;   ///< bytes RocksDB wrote: the file's logical size
  std::uint64_t ahead = 0; ///< zeroes are written (or being written) below this
  bool zeroing = false;    ///< a step writes [zero_from, ahead) now
  std::uint64_t zero_from = 0;
  bool stopped = false; ///< closed, or a step failed: no more steps
  bool started = false; ///< a first step was queued (after the first sync)
  /// A step's sync failed: the file may have lost writes (errno), and every
  /// later write and sync of it fails.
  int failed_errno = 0;
  // Since the last step (or the decision to skip one):
  std::uint64_t window_start = 0; ///< `end` then
  std::uint64_t syncs = 0;        ///< syncs since
  std::uint64_t next_check = 0;   ///< after a skip, decide again at this end
};

/// The thread that writes and syncs the zeroes, one step at a time.
class zeroer {
public:
  zeroer(std::uint64_t min_free_bytes, std::uint64_t slice_bytes)
    : min_free_bytes_(min_free_bytes), slice_bytes_(std::max<std::uint64_t>(slice_bytes, 1)) {
    thread_ = std::thread{[this] { run(); }};
  }
  zeroer(const zeroer&) = delete;
  zeroer& operator=(const zeroer&) = delete;
  ~zeroer() {
    {
      std::lock_guard<std::mutex> guard{mutex_};
      stopping_ = true;
    }
    wake_.notify_one();
    thread_.join();
  }

  /// Queues the step `w` has marked (`w.zero_from` to `w.ahead`).
  void queue(std::shared_ptr<wal_state> w) {
    {
      std::lock_guard<std::mutex> guard{mutex_};
      jobs_.push_back(std::move(w));
    }
    wake_.notify_one();
  }

private:
  void run() {
    ::pthread_setname_np(::pthread_self(), "nerve.walzero");
    static const std::array<char, 1 << 16> zeroes{};
    for (;;) {
      std::shared_ptr<wal_state> w;
      {
        std::unique_lock<std::mutex> lock{mutex_};
        wake_.wait(lock, [this] { return stopping_ || !jobs_.empty(); });
        if (jobs_.empty())
          return;
        w = std::move(jobs_.front());
        jobs_.pop_front();
      }
      std::uint64_t from = 0;
      std::uint64_t to = 0;
      {
        std::lock_guard<std::mutex> guard{w->mutex};
        from = w->zero_from;
        to = w->ahead;
      }
      struct statvfs space {};
      bool room = ::fstatvfs(w->zero_fd, &space) == 0
                  && static_cast<std::uint64_t>(space.f_bavail) * space.f_frsize
                       >= min_free_bytes_ + (to - from);
      bool written = room;
      int sync_errno = 0;
      int write_errno = 0;
      // Synced a slice at a time (zeroed_wal_limits::slice_bytes).
      for (auto at = from; written && sync_errno == 0 && at < to;) {
        auto slice_end = std::min<std::uint64_t>(to, at + slice_bytes_);
        while (written && at < slice_end) {
          auto n = std::min<std::uint64_t>(zeroes.size(), slice_end - at);
          written = write_at(w->zero_fd, zeroes.data(), n, at);
          at += n;
        }
        if (!written)
          write_errno = errno;
        if (::fdatasync(w->zero_fd) != 0) // also after a failed write: what it wrote
          sync_errno = errno;
      }
      auto ok = written && sync_errno == 0;
      {
        std::lock_guard<std::mutex> guard{w->mutex};
        w->zeroing = false;
        if (sync_errno != 0)
          w->failed_errno = sync_errno; // RocksDB's pages may be lost too
        if (!ok) {
          // The file grows as it is written from here on; zeroes a failed
          // step wrote go (RocksDB writes below `from` only, meanwhile).
          w->stopped = true;
          w->ahead = from;
          (void)::ftruncate(w->zero_fd, static_cast<off_t>(from));
        }
      }
      if (sync_errno != 0)
        spdlog::error("storage: syncing the zeroes ahead of WAL {} failed ({}): the WAL takes "
                      "no more writes",
                      w->path, std::strerror(sync_errno));
      else if (!ok)
        spdlog::info("storage: no zeroes ahead of WAL {} any more ({})", w->path,
                     room ? std::strerror(write_errno) : "too little free space");
      w->changed.notify_all();
    }
  }

  std::mutex mutex_;
  std::condition_variable wake_;
  std::deque<std::shared_ptr<wal_state>> jobs_;
  bool stopping_ = false;
  const std::uint64_t min_free_bytes_;
  const std::uint64_t slice_bytes_;
  std::thread thread_;
};

/// A WAL written with pwrite at its end; the end never moves into zeroes
/// still being written.
class zeroed_wal final : public rocksdb::FSWritableFile {
public:
  zeroed_wal(std::shared_ptr<wal_state> state, std::shared_ptr<zeroer> zero,
             const zeroed_wal_limits& limits)
    : state_(std::move(state)), zero_(std::move(zero)), limits_(limits) {}
  zeroed_wal(const zeroed_wal&) = delete;
  zeroed_wal& operator=(const zeroed_wal&) = delete;
  ~zeroed_wal() override { finish(); }

  using rocksdb::FSWritableFile::Append;
  rocksdb::IOStatus Append(const rocksdb::Slice& data, const rocksdb::IOOptions&,
                           rocksdb::IODebugContext*) override {
    std::uint64_t at = 0;
    {
      std::unique_lock<std::mutex> lock{state_->mutex};
      // Only the step's range is out of bounds, and only while it runs.
      state_->changed.wait(
        lock, [&] { return !state_->zeroing || state_->end + data.size() <= state_->zero_from; });
      if (state_->failed_errno != 0)
        return io_status("writing WAL", state_->path, state_->failed_errno);
      at = state_->end;
    }
    if (!write_at(state_->fd, data.data(), data.size(), at))
      return io_status("writing WAL", state_->path, errno);
    std::lock_guard<std::mutex> guard{state_->mutex};
    auto& s = *state_;
    s.end = at + data.size();
    if (s.started && !s.zeroing && !s.stopped && s.ahead < s.end + limits_.low_water_bytes
        && s.end >= s.next_check)
      decide();
    return rocksdb::IOStatus::OK();
  }

  rocksdb::IOStatus Truncate(std::uint64_t size, const rocksdb::IOOptions&,
                             rocksdb::IODebugContext*) override {
    std::unique_lock<std::mutex> lock{state_->mutex};
    state_->changed.wait(lock, [&] { return !state_->zeroing; });
    if (::ftruncate(state_->fd, static_cast<off_t>(size)) != 0)
      return io_status("truncating WAL", state_->path, errno);
    state_->end = size;
    state_->ahead = size;
    return rocksdb::IOStatus::OK();
  }

  rocksdb::IOStatus Close(const rocksdb::IOOptions&, rocksdb::IODebugContext*) override {
    return finish();
  }

  rocksdb::IOStatus Flush(const rocksdb::IOOptions&, rocksdb::IODebugContext*) override {
    return rocksdb::IOStatus::OK(); // nothing is buffered here
  }

  rocksdb::IOStatus Sync(const rocksdb::IOOptions&, rocksdb::IODebugContext*) override {
    if (::fdatasync(state_->fd) != 0)
      return io_status("syncing WAL", state_->path, errno);
    return synced();
  }

  rocksdb::IOStatus Fsync(const rocksdb::IOOptions&, rocksdb::IODebugContext*) override {
    if (::fsync(state_->fd) != 0)
      return io_status("syncing WAL", state_->path, errno);
    return synced();
  }

  bool IsSyncThreadSafe() const override { return true; }

  std::uint64_t GetFileSize(const rocksdb::IOOptions&, rocksdb::IODebugContext*) override {
    std::lock_guard<std::mutex> guard{state_->mutex};
    return state_->end;
  }

private:
  /// After a sync: a step's failed sync fails it too; the first one starts
  /// the zeroes ahead. Until then the WAL grows by appending, and its new
  /// size is committed after its data, so a power cut cannot keep a later
  /// page of it without an earlier one (the gap filter needs a batch before
  /// a gap to see it).
  rocksdb::IOStatus synced() {
    std::lock_guard<std::mutex> guard{state_->mutex};
    if (state_->failed_errno != 0)
      return io_status("syncing WAL", state_->path, state_->failed_errno);
    ++state_->syncs;
    if (!state_->started) {
      state_->started = true;
      decide();
    }
    return rocksdb::IOStatus::OK();
  }

  /// Starts a step when the syncs since the last decision were small on
  /// average; else the file grows as it is written, and the next decision
  /// comes a quarter of a step later. The caller holds the state's mutex.
  void decide() {
    auto& s = *state_;
    auto bytes = s.end - s.window_start;
    auto small = s.syncs > 0 && bytes / s.syncs <= limits_.max_bytes_per_sync;
    s.window_start = s.end;
    s.syncs = 0;
    if (small)
      start_step();
    else
      s.next_check = s.end + limits_.chunk_bytes / 4;
  }

  /// Marks and queues the next step; the caller holds the state's mutex. A
  /// step right after the zeroes already there, or one gap past the end.
  void start_step() {
    auto& s = *state_;
    if (s.stopped)
      return;
    s.zero_from = s.ahead > s.end ? s.ahead : s.end + limits_.gap_bytes;
    s.ahead = s.zero_from + limits_.chunk_bytes;
    s.zeroing = true;
    zero_->queue(state_);
  }

  /// Waits for a running step and cuts the zeroes past the end: the closed
  /// WAL is exactly what was written.
  rocksdb::IOStatus finish() {
    std::unique_lock<std::mutex> lock{state_->mutex};
    if (closed_)
      return rocksdb::IOStatus::OK();
    closed_ = true;
    state_->stopped = true;
    state_->changed.wait(lock, [&] { return !state_->zeroing; });
    if (::ftruncate(state_->fd, static_cast<off_t>(state_->end)) != 0)
      return io_status("truncating WAL", state_->path, errno);
    return rocksdb::IOStatus::OK();
  }

  std::shared_ptr<wal_state> state_;
  std::shared_ptr<zeroer> zero_;
  zeroed_wal_limits limits_;
  bool closed_ = false;
};

class zeroed_wal_fs final : public rocksdb::FileSystemWrapper {
public:
  zeroed_wal_fs(const std::shared_ptr<rocksdb::FileSystem>& base, zeroed_wal_limits limits)
    : FileSystemWrapper(base),
      zero_(std::make_shared<zeroer>(limits.min_free_bytes, limits.slice_bytes)), limits_(limits) {}

  static const char* kClassName() { return "NerveZeroedWalFileSystem"; }
  const char* Name() const override { return kClassName(); }

  rocksdb::IOStatus NewWritableFile(const std::string& path, const rocksdb::FileOptions& opts,
                                    std::unique_ptr<rocksdb::FSWritableFile>* result,
                                    rocksdb::IODebugContext* dbg) override {
    if (!is_wal(path) || opts.use_direct_writes || opts.use_mmap_writes)
      return FileSystemWrapper::NewWritableFile(path, opts, result, dbg);
    int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0)
      return io_status("creating WAL", path, errno);
    int zero_fd = ::open(path.c_str(), O_WRONLY | O_CLOEXEC);
    if (zero_fd < 0) {
      auto err = errno;
      ::close(fd);
      return io_status("opening WAL", path, err);
    }
    result->reset(new zeroed_wal(std::make_shared<wal_state>(fd, zero_fd, path), zero_, limits_));
    return rocksdb::IOStatus::OK();
  }

private:
  std::shared_ptr<zeroer> zero_;
  zeroed_wal_limits limits_;
};

/// RocksDB's batch header (db/write_batch.cc): a fixed64 sequence number
/// and a fixed32 count, little-endian.
constexpr std::size_t batch_header_bytes = 12;

std::uint64_t little_endian(const char* p, std::size_t bytes) {
  std::uint64_t v = 0;
  for (std::size_t i = bytes; i-- > 0;)
    v = (v << 8) | static_cast<unsigned char>(p[i]);
  return v;
}

} // namespace

rocksdb::WalFilter::WalProcessingOption
wal_gap_filter::LogRecordFound(unsigned long long log_number, const std::string& log_file_name,
                               const rocksdb::WriteBatch& batch, rocksdb::WriteBatch*, bool*) {
  const bool first_of_wal = log_number != log_number_;
  log_number_ = log_number;
  const auto& rep = batch.Data();
  if (rep.size() < batch_header_bytes) // RocksDB reports such a batch itself
    return WalProcessingOption::kContinueProcessing;
  auto sequence = little_endian(rep.data(), 8);
  auto count = little_endian(rep.data() + 8, 4);
  if (dropping_) {
    // Later WALs too, unless one starts exactly where the replay stopped (as
    // RocksDB's point-in-time recovery goes on after a torn record): one
    // written after an earlier recovery that stopped here.
    if (!first_of_wal || sequence != next_sequence_) {
      ++dropped_;
      return WalProcessingOption::kIgnoreCurrentRecord;
    }
    dropping_ = false;
    spdlog::info("recovery: WAL {} goes on at sequence {}", log_file_name, sequence);
  } else if (have_next_ && !first_of_wal && sequence != next_sequence_) {
    dropping_ = true;
    ++dropped_;
    spdlog::warn("recovery: WAL {} has a gap before sequence {} (the batch before ended at {}): "
                 "the batches from there on were written after the last sync before a power "
                 "cut and are dropped",
                 log_file_name, sequence, next_sequence_);
    return WalProcessingOption::kIgnoreCurrentRecord;
  }
  have_next_ = true;
  next_sequence_ = sequence + count;
  return WalProcessingOption::kContinueProcessing;
}

std::shared_ptr<rocksdb::FileSystem>
zeroed_wal_file_system(std::shared_ptr<rocksdb::FileSystem> base, zeroed_wal_limits limits) {
  return std::make_shared<zeroed_wal_fs>(base, limits);
}

} // namespace nerve::persistence
