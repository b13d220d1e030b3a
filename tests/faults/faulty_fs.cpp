// The faulty file system's bookkeeping: per-file written and synced lengths,
// files not yet made durable by a directory sync, injected failures and the
// power cut.
#include "tests/faults/faulty_fs.hpp"

#include <algorithm>
#include <filesystem>
#include <limits>
#include <random>

namespace nerve::test {

namespace {

using rocksdb::IOStatus;

std::string dir_of(const std::string& file) {
  auto slash = file.rfind('/');
  return slash == std::string::npos ? std::string{"."} : file.substr(0, slash);
}

std::string without_slash(std::string dir) {
  while (dir.size() > 1 && dir.back() == '/')
    dir.pop_back();
  return dir;
}

bool is_wal(const std::string& file) {
  return file.size() > 4 && file.compare(file.size() - 4, 4, ".log") == 0;
}

} // namespace

class faulty_fs::state {
public:
  explicit state(rocksdb::FileSystem* base) : base_(base) {}

  struct file_info {
    std::uint64_t size = 0;   ///< bytes appended
    std::uint64_t synced = 0; ///< bytes a sync covered
    /// Bytes past this never become durable: a sync of them failed.
    std::uint64_t durable_cap = std::numeric_limits<std::uint64_t>::max();
  };

  /// Before every mutating operation, under mutex_: fails once power is cut
  /// (or is cut now, per cut_after).
  IOStatus admit() {
    if (!cut_ && cut_at_ != 0 && ops_ >= cut_at_)
      cut_ = true;
    if (cut_)
      return IOStatus::IOError("faulty_fs: power cut");
    ++ops_;
    return IOStatus::OK();
  }

  struct injection {
    std::uint64_t left = 0; ///< 0: none armed
    file_kind kind = file_kind::any;

    /// Counts one operation on `file`; true when it is the one to fail.
    bool hit(const std::string& file) {
      if (left == 0 || (kind == file_kind::wal && !is_wal(file)))
        return false;
      return --left == 0;
    }
  };

  void created(const std::string& file, bool existed, std::uint64_t size) {
    files_[file] = {size, size};
    if (!existed)
      new_files_[dir_of(file)].insert(file);
  }

  void removed(const std::string& file) {
    files_.erase(file);
    new_files_[dir_of(file)].erase(file);
  }

  void renamed(const std::string& from, const std::string& to) {
    auto it = files_.find(from);
    if (it != files_.end()) {
      files_[to] = it->second;
      files_.erase(it);
    } else {
      files_.erase(to); // now the untracked, durable contents of `from`
    }
    // A rename is durable at once, and so is every name created before it
    // in its directories: a journaling file system keeps metadata changes in
    // order, so a replaced CURRENT never names a MANIFEST that is gone.
    new_files_.erase(dir_of(from));
    new_files_.erase(dir_of(to));
  }

  std::mutex mutex_;
  rocksdb::FileSystem* base_;
  bool cut_ = false;
  std::uint64_t ops_ = 0;
  std::uint64_t cut_at_ = 0;
  injection append_fault_;
  injection sync_fault_;
  std::size_t open_files_ = 0;
  std::map<std::string, file_info> files_; ///< written by this run, by full name
  /// Per directory: files created since it was last fsynced.
  std::map<std::string, std::set<std::string>> new_files_;
};

namespace {

/// A writable file whose appends and syncs the state tracks.
class tracked_file final : public rocksdb::FSWritableFileOwnerWrapper {
public:
  tracked_file(std::unique_ptr<rocksdb::FSWritableFile> f, std::shared_ptr<faulty_fs::state> st,
               std::string name)
    : FSWritableFileOwnerWrapper(std::move(f)), st_(std::move(st)), name_(std::move(name)) {
    ++st_->open_files_; // under the state's mutex: created by the file system
  }
  ~tracked_file() override {
    std::lock_guard<std::mutex> guard{st_->mutex_};
    --st_->open_files_;
  }
  tracked_file(const tracked_file&) = delete;
  tracked_file& operator=(const tracked_file&) = delete;

  IOStatus Append(const rocksdb::Slice& data, const rocksdb::IOOptions& o,
                  rocksdb::IODebugContext* dbg) override {
    return write_at(data, std::nullopt, o, dbg);
  }
  IOStatus Append(const rocksdb::Slice& data, const rocksdb::IOOptions& o,
                  const rocksdb::DataVerificationInfo&, rocksdb::IODebugContext* dbg) override {
    return write_at(data, std::nullopt, o, dbg);
  }
  IOStatus PositionedAppend(const rocksdb::Slice& data, uint64_t offset,
                            const rocksdb::IOOptions& o, rocksdb::IODebugContext* dbg) override {
    return write_at(data, offset, o, dbg);
  }
  IOStatus PositionedAppend(const rocksdb::Slice& data, uint64_t offset,
                            const rocksdb::IOOptions& o, const rocksdb::DataVerificationInfo&,
                            rocksdb::IODebugContext* dbg) override {
    return write_at(data, offset, o, dbg);
  }

  IOStatus Truncate(uint64_t size, const rocksdb::IOOptions& o,
                    rocksdb::IODebugContext* dbg) override {
    std::lock_guard<std::mutex> guard{st_->mutex_};
    auto s = st_->admit();
    if (s.ok())
      s = target()->Truncate(size, o, dbg);
    if (s.ok()) {
      auto& f = st_->files_[name_];
      f.size = size;
      f.synced = std::min(f.synced, size);
    }
    return s;
  }

  IOStatus Sync(const rocksdb::IOOptions&, rocksdb::IODebugContext*) override { return sync(); }
  IOStatus Fsync(const rocksdb::IOOptions&, rocksdb::IODebugContext*) override { return sync(); }
  IOStatus RangeSync(uint64_t, uint64_t, const rocksdb::IOOptions&,
                     rocksdb::IODebugContext*) override {
    return IOStatus::OK(); // makes nothing durable: only a full sync does
  }

private:
  IOStatus write_at(const rocksdb::Slice& data, std::optional<uint64_t> offset,
                    const rocksdb::IOOptions& o, rocksdb::IODebugContext* dbg) {
    std::lock_guard<std::mutex> guard{st_->mutex_};
    // After the cut, appends "succeed" without reaching the disk: a dead
    // machine's writes need not fail, and a failed WAL append racing a WAL
    // sync aborts inside RocksDB (docs/architecture.md, "Faults": a known
    // bug), which would end the test rather than check it.
    if (!st_->admit().ok())
      return IOStatus::OK();
    if (st_->append_fault_.hit(name_))
      return IOStatus::NoSpace("faulty_fs: injected append failure on " + name_);
    auto s
      = offset ? target()->PositionedAppend(data, *offset, o, dbg) : target()->Append(data, o, dbg);
    if (s.ok()) {
      auto& f = st_->files_[name_];
      f.size = offset ? std::max(f.size, *offset + data.size()) : f.size + data.size();
    }
    return s;
  }

  /// The disk is the page cache here: no real fsync, the model decides
  /// what a sync made durable (and the test runs at memory speed).
  IOStatus sync() {
    std::lock_guard<std::mutex> guard{st_->mutex_};
    auto s = st_->admit();
    if (!s.ok())
      return s;
    auto& f = st_->files_[name_];
    if (st_->sync_fault_.hit(name_)) {
      f.durable_cap = std::min(f.durable_cap, f.synced);
      return IOStatus::IOError("faulty_fs: injected sync failure on " + name_);
    }
    f.synced = f.size;
    return IOStatus::OK();
  }

  std::shared_ptr<faulty_fs::state> st_;
  std::string name_;
};

/// A directory whose fsync makes the files created in it durable.
class tracked_dir final : public rocksdb::FSDirectoryWrapper {
public:
  tracked_dir(std::unique_ptr<rocksdb::FSDirectory> d, std::shared_ptr<faulty_fs::state> st,
              std::string name)
    : FSDirectoryWrapper(std::move(d)), st_(std::move(st)), name_(std::move(name)) {}

  IOStatus Fsync(const rocksdb::IOOptions&, rocksdb::IODebugContext*) override { return sync(); }
  IOStatus FsyncWithDirOptions(const rocksdb::IOOptions&, rocksdb::IODebugContext*,
                               const rocksdb::DirFsyncOptions&) override {
    return sync();
  }

private:
  IOStatus sync() {
    std::lock_guard<std::mutex> guard{st_->mutex_};
    auto s = st_->admit();
    if (s.ok())
      st_->new_files_.erase(name_);
    return s;
  }

  std::shared_ptr<faulty_fs::state> st_;
  std::string name_;
};

} // namespace

faulty_fs::faulty_fs(const std::shared_ptr<rocksdb::FileSystem>& base)
  : FileSystemWrapper(base), state_(std::make_shared<state>(base.get())) {
}

void faulty_fs::fail_append(std::uint64_t nth, file_kind kind) {
  std::lock_guard<std::mutex> guard{state_->mutex_};
  state_->append_fault_ = {nth, kind};
}

void faulty_fs::fail_sync(std::uint64_t nth, file_kind kind) {
  std::lock_guard<std::mutex> guard{state_->mutex_};
  state_->sync_fault_ = {nth, kind};
}

void faulty_fs::cut_after(std::uint64_t n) {
  std::lock_guard<std::mutex> guard{state_->mutex_};
  state_->cut_at_ = n == 0 ? 0 : state_->ops_ + n;
}

void faulty_fs::power_cut() {
  std::lock_guard<std::mutex> guard{state_->mutex_};
  state_->cut_ = true;
}

bool faulty_fs::is_cut() const {
  std::lock_guard<std::mutex> guard{state_->mutex_};
  return state_->cut_;
}

std::uint64_t faulty_fs::operations() const {
  std::lock_guard<std::mutex> guard{state_->mutex_};
  return state_->ops_;
}

faulty_fs::dropped faulty_fs::reboot(std::optional<std::uint64_t> torn_seed) {
  std::lock_guard<std::mutex> guard{state_->mutex_};
  auto& st = *state_;
  dropped out;
  out.open_files = st.open_files_;
  std::mt19937_64 rng{torn_seed.value_or(0)};
  rocksdb::IOOptions io;
  for (auto& [dir, names] : st.new_files_)
    for (auto& name : names) {
      if (st.base_->DeleteFile(name, io, nullptr).ok())
        ++out.files;
      st.files_.erase(name);
    }
  for (auto& [name, f] : st.files_) {
    std::uint64_t on_disk = 0;
    if (!st.base_->GetFileSize(name, io, &on_disk, nullptr).ok())
      continue;
    auto keep = std::min(f.synced, f.durable_cap);
    // Some of what was never synced may have reached the disk anyway, as a
    // prefix torn anywhere, unless a failed sync lost it for good.
    if (torn_seed && f.durable_cap > f.synced && f.size > f.synced)
      keep = f.synced + rng() % (f.size - f.synced + 1);
    std::error_code ec; // RocksDB's POSIX file system cannot truncate by name
    if (on_disk > keep && (std::filesystem::resize_file(name, keep, ec), !ec))
      out.bytes += on_disk - keep;
  }
  st.files_.clear();
  st.new_files_.clear();
  st.cut_ = false;
  st.cut_at_ = 0;
  st.append_fault_ = {};
  st.sync_fault_ = {};
  return out;
}

IOStatus faulty_fs::NewWritableFile(const std::string& f, const rocksdb::FileOptions& o,
                                    std::unique_ptr<rocksdb::FSWritableFile>* r,
                                    rocksdb::IODebugContext* dbg) {
  return open_writable(f, o, r, dbg, false);
}

IOStatus faulty_fs::ReopenWritableFile(const std::string& f, const rocksdb::FileOptions& o,
                                       std::unique_ptr<rocksdb::FSWritableFile>* r,
                                       rocksdb::IODebugContext* dbg) {
  return open_writable(f, o, r, dbg, true);
}

IOStatus faulty_fs::open_writable(const std::string& f, const rocksdb::FileOptions& o,
                                  std::unique_ptr<rocksdb::FSWritableFile>* r,
                                  rocksdb::IODebugContext* dbg, bool reopen) {
  std::lock_guard<std::mutex> guard{state_->mutex_};
  auto s = state_->admit();
  if (!s.ok())
    return s;
  std::uint64_t size = 0;
  bool existed = target()->GetFileSize(f, o.io_options, &size, dbg).ok();
  std::unique_ptr<rocksdb::FSWritableFile> file;
  s = reopen ? target()->ReopenWritableFile(f, o, &file, dbg)
             : target()->NewWritableFile(f, o, &file, dbg);
  if (!s.ok())
    return s;
  // Reopened, what it holds already is durable; created, it starts empty.
  if (!reopen || state_->files_.count(f) == 0)
    state_->created(f, existed, reopen ? size : 0);
  *r = std::make_unique<tracked_file>(std::move(file), state_, f);
  return s;
}

IOStatus faulty_fs::ReuseWritableFile(const std::string&, const std::string&,
                                      const rocksdb::FileOptions&,
                                      std::unique_ptr<rocksdb::FSWritableFile>*,
                                      rocksdb::IODebugContext*) {
  // Only with recycle_log_file_num, which nerve leaves off.
  return IOStatus::NotSupported("faulty_fs: reusing files is not modelled");
}

IOStatus faulty_fs::NewRandomRWFile(const std::string&, const rocksdb::FileOptions&,
                                    std::unique_ptr<rocksdb::FSRandomRWFile>*,
                                    rocksdb::IODebugContext*) {
  return IOStatus::NotSupported("faulty_fs: random writes are not modelled");
}

IOStatus faulty_fs::NewDirectory(const std::string& d, const rocksdb::IOOptions& o,
                                 std::unique_ptr<rocksdb::FSDirectory>* r,
                                 rocksdb::IODebugContext* dbg) {
  std::unique_ptr<rocksdb::FSDirectory> dir;
  auto s = target()->NewDirectory(d, o, &dir, dbg);
  if (s.ok())
    *r = std::make_unique<tracked_dir>(std::move(dir), state_, without_slash(d));
  return s;
}

IOStatus faulty_fs::DeleteFile(const std::string& f, const rocksdb::IOOptions& o,
                               rocksdb::IODebugContext* dbg) {
  std::lock_guard<std::mutex> guard{state_->mutex_};
  auto s = state_->admit();
  if (s.ok())
    s = target()->DeleteFile(f, o, dbg);
  if (s.ok())
    state_->removed(f);
  return s;
}

IOStatus faulty_fs::RenameFile(const std::string& from, const std::string& to,
                               const rocksdb::IOOptions& o, rocksdb::IODebugContext* dbg) {
  std::lock_guard<std::mutex> guard{state_->mutex_};
  auto s = state_->admit();
  if (s.ok())
    s = target()->RenameFile(from, to, o, dbg);
  if (s.ok())
    state_->renamed(from, to);
  return s;
}

IOStatus faulty_fs::LinkFile(const std::string&, const std::string&, const rocksdb::IOOptions&,
                             rocksdb::IODebugContext*) {
  return IOStatus::NotSupported("faulty_fs: hard links are not modelled");
}

IOStatus faulty_fs::Truncate(const std::string& f, size_t size, const rocksdb::IOOptions& o,
                             rocksdb::IODebugContext* dbg) {
  std::lock_guard<std::mutex> guard{state_->mutex_};
  auto s = state_->admit();
  if (s.ok())
    s = target()->Truncate(f, size, o, dbg);
  if (s.ok())
    if (auto it = state_->files_.find(f); it != state_->files_.end()) {
      it->second.size = size;
      it->second.synced = std::min<std::uint64_t>(it->second.synced, size);
    }
  return s;
}

IOStatus faulty_fs::CreateDir(const std::string& d, const rocksdb::IOOptions& o,
                              rocksdb::IODebugContext* dbg) {
  std::lock_guard<std::mutex> guard{state_->mutex_};
  auto s = state_->admit();
  return s.ok() ? target()->CreateDir(d, o, dbg) : s;
}

IOStatus faulty_fs::CreateDirIfMissing(const std::string& d, const rocksdb::IOOptions& o,
                                       rocksdb::IODebugContext* dbg) {
  std::lock_guard<std::mutex> guard{state_->mutex_};
  auto s = state_->admit();
  return s.ok() ? target()->CreateDirIfMissing(d, o, dbg) : s;
}

IOStatus faulty_fs::DeleteDir(const std::string& d, const rocksdb::IOOptions& o,
                              rocksdb::IODebugContext* dbg) {
  std::lock_guard<std::mutex> guard{state_->mutex_};
  auto s = state_->admit();
  return s.ok() ? target()->DeleteDir(d, o, dbg) : s;
}

} // namespace nerve::test
