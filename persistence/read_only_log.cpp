// The event log opened read-only: topics from `meta`, every stored event in
// (topic name, partition, offset) order, and a check that no event lies
// outside the topics `meta` knows.
#include "persistence/read_only_log.hpp"

#include <algorithm>
#include <filesystem>

#include <rocksdb/db.h>
#include <rocksdb/env.h>

#include "persistence/keys.hpp"
#include "persistence/layout.hpp"
#include "persistence/rocksdb_logger.hpp"
#include "persistence/wal_files.hpp"

namespace nerve::persistence {

namespace {

error io_error(const std::string& what, const rocksdb::Status& s) {
  return {errc::io_error, what + ": " + s.ToString()};
}

std::string describe_key(std::string_view key) {
  if (key.size() != 16)
    return "a key of " + std::to_string(key.size()) + " bytes";
  return "topic id " + std::to_string(keys::get_u32(key, 0)) + " partition "
         + std::to_string(keys::get_u32(key, 4)) + " offset "
         + std::to_string(keys::get_u64(key, 8));
}

/// The first problem met while visiting and how many there were.
struct problems {
  std::uint64_t count = 0;
  std::string first;

  void add(std::string what) {
    if (count++ == 0)
      first = std::move(what);
  }
};

} // namespace

tl::expected<std::unique_ptr<read_only_log>, error> read_only_log::open(const std::string& path) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (!fs::is_directory(path, ec))
    return tl::make_unexpected(
      error{errc::invalid, "data directory " + path
                             + (fs::exists(path, ec) ? " is not a directory" : " does not exist")});
  if (!fs::exists(fs::path{path} / "CURRENT", ec))
    return tl::make_unexpected(error{
      errc::invalid, path + " is not a nerve data directory (it has no RocksDB CURRENT file)"});

  std::unique_ptr<read_only_log> log{new read_only_log};
  log->logger_ = make_rocksdb_logger(); // else RocksDB creates a LOG file there
  rocksdb::DBOptions db_opts;
  db_opts.create_if_missing = false;
  db_opts.info_log = log->logger_;
  // The live WAL may end in zeroes written ahead of it (wal_files.hpp).
  log->wal_filter_ = std::make_unique<wal_gap_filter>();
  db_opts.wal_filter = log->wal_filter_.get();
  // A read-only instance may open a subset of the families: the shared
  // events family (formats 1 and 2, or events of no known topic), the
  // topics, and each partition's events family (format 3).
  std::vector<rocksdb::ColumnFamilyDescriptor> families;
  families.emplace_back(rocksdb::kDefaultColumnFamilyName, rocksdb::ColumnFamilyOptions{});
  families.emplace_back("events", rocksdb::ColumnFamilyOptions{});
  families.emplace_back("meta", rocksdb::ColumnFamilyOptions{});
  for (const auto& name : layout::stored_partition_families(db_opts, path))
    families.emplace_back(name, rocksdb::ColumnFamilyOptions{});
  rocksdb::DB* raw = nullptr;
  auto s = rocksdb::DB::OpenForReadOnly(db_opts, path, families, &log->handles_, &raw);
  if (!s.ok())
    return tl::make_unexpected(io_error("opening " + path + " read-only", s));
  log->db_.reset(raw);
  log->events_ = log->handles_[1];
  log->meta_ = log->handles_[2];
  for (std::size_t i = 3; i < log->handles_.size(); ++i)
    log->partition_families_[*layout::parse_partition_family(families[i].name)] = log->handles_[i];

  std::unique_ptr<rocksdb::Iterator> it{log->db_->NewIterator(rocksdb::ReadOptions{}, log->meta_)};
  const auto& prefix = layout::topic_meta_prefix;
  for (it->Seek(prefix); it->Valid() && it->key().starts_with(prefix); it->Next()) {
    auto record = layout::parse_topic_record(it->key().ToStringView(), it->value().ToStringView());
    if (!record)
      return tl::make_unexpected(
        error{errc::io_error, "corrupt topic record " + it->key().ToString()});
    log->topics_.push_back(*record);
  }
  if (!it->status().ok())
    return tl::make_unexpected(io_error("reading topics", it->status()));
  std::sort(log->topics_.begin(), log->topics_.end(),
            [](const topic_info& a, const topic_info& b) { return a.name < b.name; });
  return log;
}

read_only_log::~read_only_log() {
  if (!db_)
    return;
  for (auto* h : handles_)
    db_->DestroyColumnFamilyHandle(h).PermitUncheckedError();
  db_->Close().PermitUncheckedError();
}

tl::expected<std::uint64_t, error> read_only_log::visit(const stored_event_visitor& fn) const {
  std::uint64_t visited = 0;
  problems found;
  for (const auto& topic : topics_) {
    auto n = visit_topic(topic, fn);
    if (!n) {
      found.add(n.error().message);
      continue;
    }
    visited += *n;
  }
  auto stray = find_stray();
  if (!stray)
    found.add(stray.error().message);
  else if (*stray)
    found.add("an event of no known topic: " + describe_key(**stray));
  if (found.count > 0)
    return tl::make_unexpected(error{errc::io_error, found.first});
  return visited;
}

tl::expected<std::vector<epoch_entry>, error> read_only_log::epochs(const topic_info& topic,
                                                                    std::uint32_t partition) const {
  const auto prefix = layout::epoch_prefix(topic.id, partition);
  std::unique_ptr<rocksdb::Iterator> it{db_->NewIterator(rocksdb::ReadOptions{}, meta_)};
  std::vector<epoch_entry> out;
  for (it->Seek(prefix); it->Valid() && it->key().starts_with(prefix); it->Next()) {
    auto e = layout::parse_epoch_record(it->key().ToStringView(), it->value().ToStringView(),
                                        prefix.size());
    if (!e)
      return tl::make_unexpected(error{errc::io_error, "a corrupt epoch checkpoint entry of "
                                                         + topic.name + "/"
                                                         + std::to_string(partition)});
    out.push_back(*e);
  }
  if (!it->status().ok())
    return tl::make_unexpected(io_error("reading the epochs of " + topic.name, it->status()));
  return out;
}

tl::expected<std::uint64_t, error>
read_only_log::visit_topic(const topic_info& topic, const stored_event_visitor& fn) const {
  std::uint64_t visited = 0;
  problems found;
  // One partition's keys in one family, in offset order; any other key
  // there is a problem.
  auto visit_range = [&](rocksdb::ColumnFamilyHandle* family, std::uint32_t partition,
                         bool whole_family) -> std::optional<error> {
    const auto lower = keys::partition_prefix(topic.id, partition);
    const auto upper = keys::event_key(topic.id, partition, ~0ULL);
    const rocksdb::Slice upper_slice{upper};
    rocksdb::ReadOptions ro;
    ro.fill_cache = false;
    if (!whole_family)
      ro.iterate_upper_bound = &upper_slice;
    std::unique_ptr<rocksdb::Iterator> it{db_->NewIterator(ro, family)};
    if (whole_family)
      it->SeekToFirst();
    else
      it->Seek(lower);
    for (; it->Valid(); it->Next()) {
      auto k = it->key().ToStringView();
      auto v = it->value().ToStringView();
      const auto where = topic.name + ": " + describe_key(k);
      if (k.size() != 16 || v.size() <= layout::value_header_bytes) {
        found.add("corrupt event (" + where + ")");
        continue;
      }
      if (k.substr(0, 8) != lower) {
        found.add("an event in the family of " + topic.name + "/" + std::to_string(partition)
                  + " that is not of that partition (" + where + ")");
        continue;
      }
      fn(topic, partition, keys::get_u64(k, 8), static_cast<std::int64_t>(keys::get_u64(v, 0)),
         v.substr(layout::value_header_bytes));
      ++visited;
    }
    if (!it->status().ok())
      return io_error("reading events of " + topic.name, it->status());
    return std::nullopt;
  };
  for (std::uint32_t p = 0; p < topic.partitions; ++p) {
    // A partition's own family first: a directory whose migration stopped
    // half way has the lower offsets there and the rest still shared.
    if (auto f = partition_families_.find({topic.id, p}); f != partition_families_.end())
      if (auto err = visit_range(f->second, p, true))
        return tl::make_unexpected(*err);
    if (auto err = visit_range(events_, p, false))
      return tl::make_unexpected(*err);
  }
  // Families and shared keys of the topic id past its partitions: events
  // no reader of the log ever sees.
  for (auto f = partition_families_.lower_bound({topic.id, topic.partitions});
       f != partition_families_.end() && f->first.first == topic.id; ++f) {
    std::unique_ptr<rocksdb::Iterator> it{db_->NewIterator(rocksdb::ReadOptions{}, f->second)};
    it->SeekToFirst();
    if (it->Valid())
      found.add("an event past the topic's " + std::to_string(topic.partitions)
                + " partitions, in the family of partition " + std::to_string(f->first.second)
                + " (" + topic.name + ": " + describe_key(it->key().ToStringView()) + ")");
    if (!it->status().ok())
      return tl::make_unexpected(io_error("reading events of " + topic.name, it->status()));
  }
  {
    std::unique_ptr<rocksdb::Iterator> it{db_->NewIterator(rocksdb::ReadOptions{}, events_)};
    it->Seek(keys::partition_prefix(topic.id, topic.partitions));
    if (it->Valid() && it->key().size() >= 4
        && keys::get_u32(it->key().ToStringView(), 0) == topic.id)
      found.add("an event past the topic's " + std::to_string(topic.partitions) + " partitions ("
                + topic.name + ": " + describe_key(it->key().ToStringView()) + ")");
    if (!it->status().ok())
      return tl::make_unexpected(io_error("reading events of " + topic.name, it->status()));
  }
  if (found.count > 0)
    return tl::make_unexpected(
      error{errc::io_error,
            std::to_string(found.count) + " unreadable events; the first: " + found.first});
  return visited;
}

tl::expected<std::optional<std::string>, error> read_only_log::find_stray() const {
  std::vector<std::uint32_t> ids;
  for (const auto& t : topics_)
    ids.push_back(t.id);
  std::sort(ids.begin(), ids.end());
  std::unique_ptr<rocksdb::Iterator> it{db_->NewIterator(rocksdb::ReadOptions{}, events_)};
  // Each known topic's keys start with its 4-byte id: a key at or after
  // `from` (just past the previous known id) and before `id` is a stray.
  auto first_before
    = [&it](const std::string& from,
            std::optional<std::uint32_t> id) -> tl::expected<std::optional<std::string>, error> {
    it->Seek(from);
    if (!it->Valid()) {
      if (!it->status().ok())
        return tl::make_unexpected(io_error("reading events", it->status()));
      return std::optional<std::string>{};
    }
    auto k = it->key().ToStringView();
    if (!id || k.size() < 4 || keys::get_u32(k, 0) < *id)
      return std::optional<std::string>{std::string{k}};
    return std::optional<std::string>{};
  };
  for (const auto& [where, family] : partition_families_) {
    auto t = std::find_if(topics_.begin(), topics_.end(),
                          [&](const topic_info& k) { return k.id == where.first; });
    if (t != topics_.end())
      continue; // visit_topic() looks at every family of its topic id
    std::unique_ptr<rocksdb::Iterator> f{db_->NewIterator(rocksdb::ReadOptions{}, family)};
    f->SeekToFirst();
    if (f->Valid())
      return std::optional<std::string>{f->key().ToString()};
    if (!f->status().ok())
      return tl::make_unexpected(io_error("reading events", f->status()));
  }
  std::string from;
  for (auto id : ids) {
    auto stray = first_before(from, id);
    if (!stray || *stray || id == UINT32_MAX)
      return stray;
    from.clear();
    keys::put_u32(from, id + 1);
  }
  return first_before(from, std::nullopt);
}

} // namespace nerve::persistence
