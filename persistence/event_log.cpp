// RocksDB-backed event log: column families, recovery, group-committed
// appends with idempotency by id, retention, probes. Reads are in
// event_log_reads.cpp.
#include "persistence/event_log.hpp"
#include "persistence/wal_files.hpp"

#include <algorithm>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <map>
#include <pthread.h>

#include <nlohmann/json.hpp>
#include <rocksdb/compaction_filter.h>
#include <rocksdb/db.h>
#include <rocksdb/env.h>
#include <rocksdb/file_system.h>
#include <rocksdb/filter_policy.h>
#include <rocksdb/perf_level.h>
#include <rocksdb/slice_transform.h>
#include <rocksdb/table.h>
#include <rocksdb/write_batch.h>
#include <spdlog/spdlog.h>

#include "config/assert.hpp"
#include "persistence/crc32c.hpp"
#include "persistence/event_log_private.hpp"
#include "persistence/ids.hpp"
#include "persistence/keys.hpp"
#include "persistence/layout.hpp"
#include "persistence/rocksdb_logger.hpp"

namespace nerve::persistence {

using detail::io_error;
using detail::starts_with;

namespace {

using layout::family_names;
using layout::head_key;
using layout::topic_meta_prefix;
using layout::value_header_bytes;

rocksdb::ColumnFamilyOptions family_options(std::string_view name) {
  rocksdb::ColumnFamilyOptions cf;
  rocksdb::BlockBasedTableOptions table;
  if (name == "by_id" || name == "results" || name == "meta" || name == "cursors" || name == "kv")
    table.filter_policy.reset(rocksdb::NewBloomFilterPolicy(10));
  cf.table_factory.reset(rocksdb::NewBlockBasedTableFactory(table));
  // Memtable inserts with a hint per partition: its events come in offset
  // order (topic id · partition · offset), so each insert starts where that
  // partition's last one ended instead of searching the skip list from the
  // top (~30 key comparisons per insert when partitions interleave;
  // callgrind). Only a hint: any key is still placed correctly.
  if (name == "events")
    cf.memtable_insert_with_hint_prefix_extractor.reset(rocksdb::NewFixedPrefixTransform(8));
  // A cursor key is written again with nearly every flush of its partition
  // (each version a new memtable entry): a hint per key puts the next
  // version beside the last at once instead of searching past the other
  // partitions' cursors.
  if (name == "cursors")
    cf.memtable_insert_with_hint_prefix_extractor.reset(rocksdb::NewNoopTransform());
  return cf;
}

std::uint64_t family_key(std::uint32_t topic_id, std::uint32_t partition) {
  return (static_cast<std::uint64_t>(topic_id) << 32) | partition;
}

/// Drops results older than the TTL when RocksDB compacts them.
class results_ttl_filter final : public rocksdb::CompactionFilter {
public:
  results_ttl_filter(clock_fn clock, std::int64_t ttl_us)
    : clock_(std::move(clock)), ttl_us_(ttl_us) {}

  bool Filter(int, const rocksdb::Slice&, const rocksdb::Slice& value, std::string*,
              bool*) const override {
    if (value.size() < 8)
      return true;
    auto stored = static_cast<std::int64_t>(keys::get_u64(value.ToStringView(), 0));
    return stored + ttl_us_ < clock_();
  }

  const char* Name() const override { return "nerve.results_ttl"; }

private:
  clock_fn clock_;
  std::int64_t ttl_us_;
};

} // namespace

std::int64_t system_clock_us() {
  return std::chrono::duration_cast<std::chrono::microseconds>(
           std::chrono::system_clock::now().time_since_epoch())
    .count();
}

void quiet_perf_counters() {
  thread_local const bool quiet = (rocksdb::SetPerfLevel(rocksdb::PerfLevel::kDisable), true);
  (void)quiet;
}

std::string format_time_us(std::int64_t time_us) {
  std::string out;
  out.reserve(32);
  append_time_us(out, time_us);
  return out;
}

void append_time_us(std::string& out, std::int64_t time_us) {
  // The date and time of day change once a second; formatting them is the
  // costly part, so each thread keeps the last second's text.
  thread_local std::int64_t cached_secs = -1;
  thread_local char cached[64];
  auto secs = time_us / 1000000;
  if (secs != cached_secs) {
    std::time_t t = static_cast<std::time_t>(secs);
    std::tm tm{};
    gmtime_r(&t, &tm);
    std::snprintf(cached, sizeof cached, "%04d-%02d-%02dT%02d:%02d:%02d", tm.tm_year + 1900,
                  tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec);
    cached_secs = secs;
  }
  auto micros = static_cast<std::uint32_t>(time_us % 1000000);
  char tail[8];
  tail[0] = '.';
  for (int i = 6; i >= 1; --i) {
    tail[i] = static_cast<char>('0' + micros % 10);
    micros /= 10;
  }
  tail[7] = 'Z';
  out += cached;
  out.append(tail, sizeof tail);
}

// -- partition_writer ---------------------------------------------------------

partition_writer::partition_writer(event_log& log, topic_info topic, std::uint32_t partition)
  : log_(log), topic_(std::move(topic)), partition_(partition),
    events_(log_.events_of(topic_.id, partition)),
    shared_text_(",\"topic\":\"" + topic_.name + "\",\"partition\":" + std::to_string(partition_)
                 + ",\"offset\":"),
    key_prefix_(keys::partition_prefix(topic_.id, partition_)) {
  next_offset_ = log_.recover_next_offset(topic_.id, partition_);
  last_time_us_ = recover_last_time();
  load_epochs();
}

std::int64_t partition_writer::recover_last_time() const {
  if (next_offset_ == 0)
    return 0;
  std::string value;
  auto s = log_.db_->Get(rocksdb::ReadOptions{}, events_,
                         keys::event_key(topic_.id, partition_, next_offset_ - 1), &value);
  if (s.ok() && value.size() >= value_header_bytes)
    return static_cast<std::int64_t>(keys::get_u64(value, 0));
  return 0;
}

partition_writer::run_start partition_writer::open_run(std::int64_t time_us) const {
  if (next_offset_ == 0 || time_us != last_time_us_)
    return {next_offset_, false};
  if (last_run_)
    return *last_run_;
  // After a restart or a truncation: the run at that time that holds the
  // last event (none when retention removed it: a new run then).
  run_start found{next_offset_, false};
  detail::for_each_run_at(*log_.db_, log_.by_time_, time_us, topic_.id, partition_,
                          [&](const rocksdb::Slice&, const layout::time_run& run) {
                            if (!run.legacy_id.empty() || run.last + 1 != next_offset_)
                              return true;
                            found = {run.first, run.indexed};
                            return false;
                          })
    .PermitUncheckedError(); // unreadable: a new run, which reads the same
  return found;
}

std::optional<error> partition_writer::fault_before_append() const {
  if (!log_.fails_at(fault_point::before_append, {topic_.name, partition_}))
    return std::nullopt;
  log_.note_error("append: injected fault");
  return error{errc::io_error, "appending to " + topic_.name + "/" + std::to_string(partition_)
                                 + ": injected fault before append"};
}

rocksdb::Status partition_writer::write(rocksdb::WriteBatch& batch, bool sync) const {
  return log_.write_timed(batch, sync);
}

void partition_writer::stage_head(std::uint64_t next, rocksdb::WriteBatch& batch) const {
  log_.stage_head(topic_.id, partition_, next, batch);
}

std::optional<error> partition_writer::resolve(const std::vector<new_event>& events,
                                               std::int64_t now,
                                               std::vector<append_result>& results,
                                               std::vector<std::string>& reserved) {
  // Ids nerve makes are unique by their place: only publishers' ids need the
  // node-wide lock (and the reservations it guards).
  std::unique_lock<std::mutex> guard{log_.ids_mutex_, std::defer_lock};
  if (std::any_of(events.begin(), events.end(), [](const new_event& e) { return !e.generated; }))
    guard.lock();
  std::vector<rocksdb::Slice> lookup;
  std::vector<std::size_t> lookup_index;
  // A publisher's id found where it says it is stored (an id nerve made,
  // published again): the index of its event and where it is.
  std::unordered_map<std::size_t, coords> located;
  for (std::size_t i = 0; i < events.size(); ++i) {
    if (events[i].generated)
      continue;
    auto it = log_.reserved_ids_.find(events[i].id);
    if (it != log_.reserved_ids_.end())
      continue; // resolved below, once this batch's offsets are assigned
    auto here = log_.stored_at(events[i].id);
    if (!here) {
      for (auto& id : reserved)
        log_.reserved_ids_.erase(id);
      return here.error();
    }
    if (*here)
      located.emplace(i, **here);
    else {
      lookup.emplace_back(events[i].id);
      lookup_index.push_back(i);
    }
    // Reserve now so a repeat of this id later in the same batch is found.
    append_result mine;
    mine.status = append_status::appended;
    mine.id = events[i].id;
    mine.topic = topic_.name;
    mine.where = {topic_.id, partition_, 0, now};
    log_.reserved_ids_.emplace(events[i].id, mine);
    reserved.push_back(events[i].id);
  }
  std::vector<rocksdb::PinnableSlice> values(lookup.size());
  std::vector<rocksdb::Status> statuses(lookup.size());
  if (!lookup.empty())
    log_.db_->MultiGet(rocksdb::ReadOptions{}, log_.by_id_, lookup.size(), lookup.data(),
                       values.data(), statuses.data());
  auto stored = [&](std::size_t i, const coords& c) {
    results[i].id = events[i].id;
    results[i].where = c;
    results[i].status
      = c.topic_id == topic_.id ? append_status::duplicate : append_status::conflict;
    {
      std::shared_lock<std::shared_mutex> names{log_.topics_mutex_};
      auto name = log_.topic_names_.find(c.topic_id);
      results[i].topic = name != log_.topic_names_.end() ? name->second : std::string{};
    }
    log_.reserved_ids_[events[i].id] = results[i];
  };
  std::size_t li = 0;
  for (std::size_t i = 0; i < events.size(); ++i) {
    if (events[i].generated) {
      const auto offset = next_offset_++;
      results[i].status = append_status::appended;
      // Its place is its id; beyond what an id can say, a random one.
      auto located = located_uuid_v7(now, topic_.id, partition_, offset);
      results[i].id = located ? std::move(*located) : new_uuid_v7(now);
      results[i].topic = topic_.name;
      results[i].where = {topic_.id, partition_, offset, now};
      continue;
    }
    if (auto at = located.find(i); at != located.end()) {
      stored(i, at->second);
      continue;
    }
    if (li < lookup_index.size() && lookup_index[li] == i) {
      auto& st = statuses[li];
      auto val = values[li].ToStringView();
      ++li;
      if (st.ok() && val.size() >= 24) {
        stored(i, coords{keys::get_u32(val, 0), keys::get_u32(val, 4), keys::get_u64(val, 8),
                         static_cast<std::int64_t>(keys::get_u64(val, 16))});
        continue;
      }
      if (!st.ok() && !st.IsNotFound()) {
        for (auto& id : reserved)
          log_.reserved_ids_.erase(id);
        log_.note_error("by_id lookup: " + st.ToString());
        return io_error("looking up event ids", st);
      }
      auto& mine = log_.reserved_ids_[events[i].id];
      mine.where.offset = next_offset_++;
      results[i] = mine;
    } else {
      // Reserved before: by an earlier event of this batch (its offset is
      // assigned by now) or by an append in flight on another partition.
      results[i] = log_.reserved_ids_[events[i].id];
      results[i].status = results[i].where.topic_id == topic_.id ? append_status::duplicate
                                                                 : append_status::conflict;
    }
  }
  return std::nullopt;
}

namespace {

/// `s` as a JSON string: its bytes between quotes when none needs an escape
/// (ids always, keys nearly always), else as nlohmann writes it.
void append_json_string(std::string& out, const std::string& s) {
  for (unsigned char c : s)
    if (c == '"' || c == '\\' || c < 0x20) {
      out += nlohmann::json(s).dump();
      return;
    }
  out += '"';
  out += s;
  out += '"';
}

} // namespace

std::size_t partition_writer::stage(const std::vector<new_event>& events, std::int64_t now,
                                    std::vector<append_result>& results, rocksdb::WriteBatch& batch,
                                    bool keep_texts) const {
  // The batch's time, formatted once, and the keys, in buffers this thread
  // keeps (two allocations per append went to them).
  thread_local std::string time_text, key, head;
  time_text.assign(",\"time\":\"");
  append_time_us(time_text, now);
  time_text += '"';
  const auto& shared = shared_text_;
  const detail::value_header header{now};
  std::size_t indexed = 0;
  for (std::size_t i = 0; i < events.size(); ++i) {
    auto& r = results[i];
    if (r.status != append_status::appended)
      continue;
    auto& e = events[i];
    key.assign(key_prefix_); // keys::event_key, without a string of its own
    keys::put_u64(key, r.where.offset);
    // The event's text: everything before its data, then the data as the
    // publisher sent it, then the closing brace.
    head.assign("{\"id\":");
    append_json_string(head, r.id);
    head += shared;
    head += std::to_string(r.where.offset);
    head += time_text;
    if (!e.key.empty()) {
      head += ",\"key\":";
      append_json_string(head, e.key);
    }
    if (!e.fragment.empty())
      head += ',';
    // Its parts go into the batch as they are (the data copied once).
    detail::put_event(batch, events_, key, header, {head, e.fragment, rocksdb::Slice{"}", 1}});
    if (keep_texts) { // for a reader after the write (r.json)
      r.json.clear();
      r.json.reserve(head.size() + e.fragment.size() + 1);
      r.json += head;
      r.json += e.fragment;
      r.json += '}';
    }
    // An id resolve() made says where it is exactly when the place fits one
    // (no need to decode the text); a publisher's may say so too.
    const bool by_place = e.generated
                            ? place_fits_id(topic_.id, partition_, r.where.offset)
                            : layout::located_at(r.id, topic_.id, partition_, r.where.offset);
    if (!by_place) {
      batch.Put(log_.by_id_, r.id, keys::id_value(topic_.id, partition_, r.where.offset, now));
      ++indexed;
    }
  }
  return indexed;
}

std::size_t batch_bytes(const std::vector<new_event>& events) {
  std::size_t bytes = 64;
  for (const auto& e : events)
    bytes += e.fragment.size() + e.id.size() + e.key.size() + 256;
  return bytes;
}

tl::expected<std::vector<append_result>, error>
partition_writer::append(const std::vector<new_event>& events) {
  return append(events, {});
}

tl::expected<std::vector<append_result>, error>
partition_writer::append(const std::vector<new_event>& events,
                         const std::function<void(rocksdb::WriteBatch&)>& also) {
  rocksdb::WriteBatch batch{batch_bytes(events)};
  auto staged = stage_append(events, batch);
  if (!staged)
    return tl::make_unexpected(staged.error());
  if (also)
    also(batch);
  rocksdb::Status s;
  if (batch.Count() > 0)
    // Not synced here: under fsync always the caller waits for
    // after_durable(), which shares one fsync among every partition's writes.
    s = write(batch, false);
  if (!s.ok()) {
    settle(*staged, false);
    log_.note_write_error("append: " + s.ToString(), s);
    return tl::make_unexpected(
      io_error("appending to " + topic_.name + "/" + std::to_string(partition_), s));
  }
  log_.failed_.store(false, std::memory_order_relaxed);
  return settle(*staged, true);
}

tl::expected<partition_writer::staged, error>
partition_writer::stage_append(const std::vector<new_event>& events, rocksdb::WriteBatch& batch,
                               bool keep_texts) {
  if (auto fault = fault_before_append())
    return tl::make_unexpected(*fault);
  staged out;
  out.results.resize(events.size());
  out.time_us = std::max(log_.opts_.clock(), last_time_us_);
  out.first_offset = next_offset_;
  const auto run = open_run(out.time_us); // before offsets are assigned
  if (auto failed = resolve(events, out.time_us, out.results, out.reserved)) {
    next_offset_ = out.first_offset; // offsets stay dense: none of them was written
    return tl::make_unexpected(*failed);
  }
  const auto before = batch.Count();
  const auto indexed = stage(events, out.time_us, out.results, batch, keep_texts);
  const auto records = batch.Count() - before;
  out.run_first = run.first;
  out.run_indexed = run.indexed || indexed > 0;
  if (records > 0)
    // The batch's events share one append time: one by_time run says where
    // they are. No head record: the last event says where the log ends
    // (retention and truncation write the head, recover_next_offset).
    batch.Put(log_.by_time_, keys::time_key(out.time_us, topic_.id, partition_, run.first),
              layout::time_run_value(next_offset_ - 1, out.run_indexed));
  // Offsets stay dense: every appended event took exactly the next one and
  // wrote one record (two when its id needs by_id); the batch also carries
  // the run.
  NERVE_ASSERT(records == next_offset_ - out.first_offset + indexed,
               "each appended event takes the next offset and writes one record");
  return out;
}

std::vector<append_result> partition_writer::settle(staged& s, bool written) {
  if (!s.reserved.empty()) {
    std::lock_guard<std::mutex> guard{log_.ids_mutex_};
    for (auto& id : s.reserved)
      log_.reserved_ids_.erase(id);
    s.reserved.clear();
  }
  if (!written) {
    next_offset_ = s.first_offset;
    return std::move(s.results);
  }
  if (next_offset_ > s.first_offset) {
    last_time_us_ = s.time_us;
    last_run_ = run_start{s.run_first, s.run_indexed};
  }
  return std::move(s.results);
}

// -- event_log ----------------------------------------------------------------

rocksdb::Status event_log::write_timed(rocksdb::WriteBatch& batch, bool sync, bool no_slowdown) {
  quiet_perf_counters();
  rocksdb::WriteOptions wo;
  wo.sync = sync && !wal_broken_.load(); // see wal_broken_
  wo.no_slowdown = no_slowdown;
  auto started = std::chrono::steady_clock::now();
  auto s = db_->Write(wo, &batch);
  if (opts_.observe_io)
    opts_.observe_io(io_op::write, std::chrono::steady_clock::now() - started);
  return s;
}

tl::expected<bool, error> event_log::write_batch(rocksdb::WriteBatch& batch) {
  auto s = write_timed(batch, false, true);
  if (s.IsIncomplete())
    return false; // a write stall: nothing written
  if (!s.ok()) {
    note_write_error("append: " + s.ToString(), s);
    return tl::make_unexpected(io_error("appending", s));
  }
  failed_.store(false, std::memory_order_relaxed);
  return true;
}

event_log::event_log(options opts) : opts_(std::move(opts)) {
}

tl::expected<std::unique_ptr<event_log>, error> event_log::open(const options& opts) {
  std::error_code ec;
  std::filesystem::create_directories(opts.path, ec);
  if (ec)
    return tl::make_unexpected(
      error{errc::io_error, "cannot create data directory " + opts.path + ": " + ec.message()});
  std::unique_ptr<event_log> log{new event_log(opts)};
  rocksdb::DBOptions db_opts;
  db_opts.create_if_missing = true;
  db_opts.create_missing_column_families = true;
  db_opts.max_background_jobs = 2;
  db_opts.max_total_wal_size = opts.max_wal_bytes;
  // Every partition has a memtable of its own (format 3): their sum is
  // capped, as one shared events family's was by its two 64 MiB memtables.
  db_opts.db_write_buffer_size = 256ull << 20;
  db_opts.enable_pipelined_write = true;
  // Recovery replays the WAL into memtables and leaves them there (the WAL
  // files stay until those flush as usual): a restart does not wait for
  // level-0 files to be written.
  db_opts.avoid_flush_during_recovery = true;
  db_opts.info_log_level = rocksdb::InfoLogLevel::WARN_LEVEL;
  db_opts.info_log = make_rocksdb_logger();
  if (opts.file_system) {
    log->env_ = rocksdb::NewCompositeEnv(opts.file_system);
    db_opts.env = log->env_.get();
  } else {
    // Group commits sync a few KiB each; over zeroes synced ahead they need
    // no journal commit (wal_files.hpp). The gap filter makes such a WAL safe
    // to replay after a power cut.
    log->env_ = rocksdb::NewCompositeEnv(zeroed_wal_file_system(rocksdb::FileSystem::Default()));
    db_opts.env = log->env_.get();
  }
  log->wal_filter_ = std::make_unique<wal_gap_filter>();
  db_opts.wal_filter = log->wal_filter_.get();

  log->results_filter_ = std::make_unique<results_ttl_filter>(
    opts.clock, static_cast<std::int64_t>(opts.results_ttl.count()) * 1000);
  std::vector<rocksdb::ColumnFamilyDescriptor> families;
  families.emplace_back(rocksdb::kDefaultColumnFamilyName,
                        family_options(rocksdb::kDefaultColumnFamilyName));
  for (auto name : family_names) {
    std::string_view n{name};
    families.emplace_back(name, family_options(n));
    if (n == "results")
      families.back().options.compaction_filter = log->results_filter_.get();
  }
  // Each partition's events family (format 3) must be named to open.
  for (const auto& name : layout::stored_partition_families(db_opts, opts.path))
    families.emplace_back(name, family_options("events"));
  rocksdb::DB* raw = nullptr;
  auto s = rocksdb::DB::Open(db_opts, opts.path, families, &log->handles_, &raw);
  if (!s.ok()) {
    if (s.IsIOError() && s.ToString().find("lock") != std::string::npos)
      return tl::make_unexpected(error{errc::io_error, "data directory " + opts.path
                                                         + " is in use by another nerve process ("
                                                         + s.ToString() + ")"});
    return tl::make_unexpected(io_error("opening " + opts.path, s));
  }
  log->db_.reset(raw);
  log->events_ = log->handles_[1];
  log->by_time_ = log->handles_[2];
  log->by_id_ = log->handles_[3];
  log->cursors_ = log->handles_[4];
  log->pending_ = log->handles_[5];
  log->dlq_ = log->handles_[6];
  log->results_ = log->handles_[7];
  log->meta_ = log->handles_[8];
  log->kv_ = log->handles_[9];
  constexpr std::size_t fixed_families = std::size(family_names) + 1;
  for (std::size_t i = fixed_families; i < log->handles_.size(); ++i) {
    auto where = layout::parse_partition_family(families[i].name);
    NERVE_ASSERT(where.has_value(), "the families past the fixed ones are partitions' events");
    log->partition_families_[family_key(where->first, where->second)] = log->handles_[i];
  }
  // Batches dropped at a gap stay in their WAL, which recovery keeps alive
  // (avoid_flush_during_recovery) and would filter again at every start:
  // flushing everything recovered makes it obsolete.
  if (log->wal_filter_->dropped() > 0) {
    rocksdb::FlushOptions wait;
    wait.wait = true;
    if (auto f = log->db_->Flush(wait, log->handles_); !f.ok())
      spdlog::warn("recovery: flushing after a WAL gap: {}", f.ToString());
  }
  spdlog::debug("RocksDB's CRC32C (WAL records) {}", crc32c_in_hardware()
                                                       ? "on the CPU's crc32 instruction"
                                                       : "in RocksDB's own (software) code");
  if (auto err = log->init_meta())
    return tl::make_unexpected(*err);
  if (opts.fsync == config::fsync_policy::interval)
    log->fsync_thread_ = std::thread{[p = log.get()] {
      ::pthread_setname_np(::pthread_self(), "nerve.sync");
      p->fsync_loop();
    }};
  else if (opts.fsync == config::fsync_policy::always)
    log->fsync_thread_ = std::thread{[p = log.get()] {
      ::pthread_setname_np(::pthread_self(), "nerve.sync");
      p->sync_loop();
    }};
  return log;
}

event_log::~event_log() {
  {
    std::lock_guard<std::mutex> guard{fsync_mutex_};
    stopping_ = true;
  }
  fsync_cv_.notify_all();
  if (fsync_thread_.joinable())
    fsync_thread_.join();
  if (db_) {
    if (opts_.fsync != config::fsync_policy::never && !wal_broken_.load())
      db_->SyncWAL().PermitUncheckedError();
    // handles_ holds the partitions' families opened with the database;
    // those created since are only in partition_families_.
    std::set<rocksdb::ColumnFamilyHandle*> handles{handles_.begin(), handles_.end()};
    for (auto& [where, h] : partition_families_)
      handles.insert(h);
    for (auto* h : handles)
      db_->DestroyColumnFamilyHandle(h).PermitUncheckedError();
    handles_.clear();
    partition_families_.clear();
    db_->Close().PermitUncheckedError();
    db_.reset();
  }
}

std::optional<error> event_log::init_meta() {
  rocksdb::ReadOptions ro;
  std::string format;
  auto f = db_->Get(ro, meta_, layout::format_key, &format);
  if (!f.ok() && !f.IsNotFound())
    return io_error("reading the data directory format", f);
  const auto current = std::to_string(layout::format_version);
  if (f.ok() && format != "2" && format != current) {
    // Newer (or unknown): this nerve would misread what it does not know.
    return error{errc::invalid, "the data directory " + opts_.path + " has format " + format
                                  + "; this nerve reads formats 1 to " + current
                                  + " (a newer nerve wrote it)"};
  }
  std::string stored_id;
  auto s = db_->Get(ro, meta_, "node_id", &stored_id);
  if (!s.ok() && !s.IsNotFound())
    return io_error("reading node id", s);
  node_id_ = !opts_.node_id.empty() ? opts_.node_id : s.ok() ? stored_id : new_node_id();
  if (node_id_ != stored_id) {
    rocksdb::WriteOptions wo;
    wo.sync = true;
    s = db_->Put(wo, meta_, "node_id", node_id_);
    if (!s.ok()) {
      // Noted like any failed write: the destructor must not sync a WAL
      // that failed one (RocksDB aborts; see wal_broken_).
      note_write_error("storing node id: " + s.ToString(), s);
      return io_error("storing node id", s);
    }
  }
  std::unique_ptr<rocksdb::Iterator> it{db_->NewIterator(ro, meta_)};
  for (it->Seek(topic_meta_prefix); it->Valid() && starts_with(it->key(), topic_meta_prefix);
       it->Next()) {
    auto record = layout::parse_topic_record(it->key().ToStringView(), it->value().ToStringView());
    if (!record)
      return error{errc::io_error, "corrupt topic record " + it->key().ToString()};
    const topic_info& t = *record;
    next_topic_id_ = std::max(next_topic_id_, t.id + 1);
    topic_names_[t.id] = t.name;
    topics_[t.name] = t;
  }
  if (!it->status().ok())
    return io_error("reading topics", it->status());
  for (const auto& [name, t] : topics_)
    if (auto err = ensure_families(t))
      return err;
  if (format != current) {
    // New, or format 1 or 2: its events move to their partitions' families
    // first; the format record, synced, says they all did.
    if (auto err = migrate_events())
      return err;
    rocksdb::WriteOptions wo;
    wo.sync = true;
    f = db_->Put(wo, meta_, layout::format_key, current);
    if (!f.ok()) {
      note_write_error("storing the format: " + f.ToString(), f);
      return io_error("storing the data directory format", f);
    }
  }
  return std::nullopt;
}

rocksdb::ColumnFamilyHandle* event_log::events_of(std::uint32_t topic_id,
                                                  std::uint32_t partition) const {
  std::shared_lock<std::shared_mutex> guard{families_mutex_};
  auto it = partition_families_.find(family_key(topic_id, partition));
  return it != partition_families_.end() ? it->second : events_;
}

std::optional<error> event_log::ensure_families(const topic_info& t) {
  std::unique_lock<std::shared_mutex> guard{families_mutex_};
  std::vector<std::string> names;
  std::vector<std::uint32_t> missing;
  for (std::uint32_t p = 0; p < t.partitions; ++p)
    if (partition_families_.count(family_key(t.id, p)) == 0) {
      names.push_back(layout::partition_family_name(t.id, p));
      missing.push_back(p);
    }
  if (names.empty())
    return std::nullopt;
  // In one call: RocksDB rewrites its OPTIONS file (every family's options)
  // after each creation, so one at a time costs the square of the count.
  std::vector<rocksdb::ColumnFamilyHandle*> created;
  auto s = db_->CreateColumnFamilies(family_options("events"), names, &created);
  // On failure the handles of those that were created are still given.
  for (std::size_t i = 0; i < created.size(); ++i)
    partition_families_[family_key(t.id, missing[i])] = created[i];
  if (!s.ok()) {
    note_write_error("creating partitions' families: " + s.ToString(), s);
    return io_error("creating the events families of " + t.name, s);
  }
  return std::nullopt;
}

std::optional<error> event_log::migrate_events() {
  // Batch by batch, each moving what it copies (a put in the partition's
  // family and a delete in the shared one, atomically), so a crash in
  // between leaves every event in exactly one place and the next open goes
  // on where this one stopped.
  constexpr std::size_t batch_bytes_max = 8u << 20;
  rocksdb::ReadOptions ro;
  ro.fill_cache = false;
  std::unique_ptr<rocksdb::Iterator> it{db_->NewIterator(ro, events_)};
  rocksdb::WriteBatch batch;
  std::uint64_t moved = 0;
  std::uint64_t left = 0;
  auto flush = [&]() -> std::optional<error> {
    if (batch.Count() == 0)
      return std::nullopt;
    auto s = db_->Write(rocksdb::WriteOptions{}, &batch);
    batch.Clear();
    if (!s.ok()) {
      note_write_error("migrating events: " + s.ToString(), s);
      return io_error("moving events to their partitions' families", s);
    }
    return std::nullopt;
  };
  for (it->SeekToFirst(); it->Valid(); it->Next()) {
    auto k = it->key().ToStringView();
    auto* family = k.size() == 16 ? events_of(keys::get_u32(k, 0), keys::get_u32(k, 4)) : events_;
    if (family == events_) {
      ++left; // of no known topic, or no event key: `nerve dump` shows it
      continue;
    }
    if (moved == 0)
      spdlog::info("moving the stored events to one column family per partition (data "
                   "directory format {})",
                   layout::format_version);
    batch.Put(family, it->key(), it->value());
    batch.Delete(events_, it->key());
    ++moved;
    if (batch.GetDataSize() >= batch_bytes_max)
      if (auto err = flush())
        return err;
  }
  if (!it->status().ok())
    return io_error("reading events to migrate", it->status());
  if (auto err = flush())
    return err;
  it.reset();
  if (moved > 0) {
    // The shared family now holds only deletes: compact them away.
    auto s = db_->CompactRange(rocksdb::CompactRangeOptions{}, events_, nullptr, nullptr);
    if (!s.ok())
      spdlog::warn("compacting the emptied events family: {}", s.ToString());
    spdlog::info("moved {} events; {} left in the shared family", moved, left);
  }
  return std::nullopt;
}

std::uint64_t event_log::recover_next_offset(std::uint32_t topic_id,
                                             std::uint32_t partition) const {
  std::uint64_t next = 0;
  std::string head;
  bool has_head = db_->Get(rocksdb::ReadOptions{}, meta_, head_key(topic_id, partition), &head).ok()
                  && head.size() == 8;
  if (has_head)
    next = keys::get_u64(head, 0);
  auto prefix = keys::partition_prefix(topic_id, partition);
  auto upper = keys::event_key(topic_id, partition, ~0ULL);
  std::unique_ptr<rocksdb::Iterator> it{
    db_->NewIterator(rocksdb::ReadOptions{}, events_of(topic_id, partition))};
  it->SeekForPrev(upper);
  if (it->Valid() && starts_with(it->key(), prefix)) {
    // The head is a floor: appends do not rewrite it (the last event says
    // where the log ends); retention writes it in the batch that deletes
    // events, so offsets are never reused even when every event expired,
    // and a truncation writes where it cut.
    next = std::max(next, keys::get_u64(it->key().ToStringView(), 8) + 1);
  }
  return next;
}

void event_log::stage_head(std::uint32_t topic_id, std::uint32_t partition, std::uint64_t next,
                           rocksdb::WriteBatch& batch) const {
  std::string value;
  keys::put_u64(value, next);
  batch.Put(meta_, head_key(topic_id, partition), value);
}

tl::expected<topic_info, error> event_log::create_topic(const std::string& name,
                                                        std::uint32_t partitions,
                                                        std::optional<std::uint32_t> id) {
  std::unique_lock<std::shared_mutex> guard{topics_mutex_};
  if (id)
    return create_topic_with_id(name, partitions, *id);
  if (auto it = topics_.find(name); it != topics_.end())
    return it->second;
  if (partitions == 0)
    return tl::make_unexpected(error{errc::invalid, "a topic needs at least one partition"});
  return add_topic({name, next_topic_id_, partitions});
}

tl::expected<topic_info, error> event_log::create_topic_with_id(const std::string& name,
                                                                std::uint32_t partitions,
                                                                std::uint32_t id) {
  // The largest id is left out so that the next id this log assigns itself
  // (one past the largest it holds) cannot wrap around to 0.
  if (id == 0 || id == UINT32_MAX)
    return tl::make_unexpected(error{errc::invalid, "topic " + name + ": id " + std::to_string(id)
                                                      + " is out of range (1 to 4294967294)"});
  if (partitions == 0)
    return tl::make_unexpected(error{errc::invalid, "a topic needs at least one partition"});
  auto describe = [](std::uint32_t tid, std::uint32_t n) {
    return "id " + std::to_string(tid) + " and " + std::to_string(n) + " partitions";
  };
  if (auto it = topics_.find(name); it != topics_.end()) {
    const auto& held = it->second;
    if (held.id == id && held.partitions == partitions)
      return held;
    return tl::make_unexpected(
      error{errc::conflict,
            "topic " + name + " exists in this log with " + describe(held.id, held.partitions)
              + ", not " + describe(id, partitions)
              + ": this data directory was not made by the cluster that assigned the id"});
  }
  if (auto it = topic_names_.find(id); it != topic_names_.end())
    return tl::make_unexpected(error{errc::conflict, "topic " + name + " cannot take id "
                                                       + std::to_string(id) + ": topic "
                                                       + it->second + " has it in this log"});
  return add_topic({name, id, partitions});
}

tl::expected<topic_info, error> event_log::add_topic(const topic_info& t) {
  // The families first: a topic record always has its partitions' families
  // (an open also creates any that are missing).
  if (auto err = ensure_families(t))
    return tl::make_unexpected(*err);
  nlohmann::json j{{"id", t.id}, {"partitions", t.partitions}};
  rocksdb::WriteOptions wo;
  wo.sync = true;
  auto s = db_->Put(wo, meta_, topic_meta_prefix + t.name, j.dump());
  if (!s.ok()) {
    note_write_error("create topic: " + s.ToString(), s);
    return tl::make_unexpected(io_error("creating topic " + t.name, s));
  }
  next_topic_id_ = std::max(next_topic_id_, t.id + 1);
  topics_[t.name] = t;
  topic_names_[t.id] = t.name;
  return t;
}

std::optional<topic_info> event_log::find_topic(const std::string& name) const {
  std::shared_lock<std::shared_mutex> guard{topics_mutex_};
  if (auto it = topics_.find(name); it != topics_.end())
    return it->second;
  return std::nullopt;
}

std::vector<topic_info> event_log::topics() const {
  std::shared_lock<std::shared_mutex> guard{topics_mutex_};
  std::vector<topic_info> out;
  out.reserve(topics_.size());
  for (auto& [name, t] : topics_)
    out.push_back(t);
  std::sort(out.begin(), out.end(),
            [](const topic_info& a, const topic_info& b) { return a.name < b.name; });
  return out;
}

partition_stats event_log::stats(const topic_info& topic, std::uint32_t partition) const {
  partition_stats st;
  st.partition = partition;
  st.next_offset = recover_next_offset(topic.id, partition);
  auto prefix = keys::partition_prefix(topic.id, partition);
  auto* family = events_of(topic.id, partition);
  std::unique_ptr<rocksdb::Iterator> it{db_->NewIterator(rocksdb::ReadOptions{}, family)};
  it->Seek(prefix);
  st.first_offset = it->Valid() && starts_with(it->key(), prefix)
                      ? keys::get_u64(it->key().ToStringView(), 8)
                      : st.next_offset;
  auto lo = keys::event_key(topic.id, partition, 0);
  auto hi = keys::event_key(topic.id, partition, ~0ULL);
  rocksdb::Range range{lo, hi};
  rocksdb::SizeApproximationOptions sao;
  sao.include_memtables = true;
  sao.include_files = true;
  std::uint64_t size = 0;
  db_->GetApproximateSizes(sao, family, &range, 1, &size).PermitUncheckedError();
  st.bytes = size;
  return st;
}

tl::expected<std::size_t, error> event_log::sweep_before(std::int64_t cutoff_us,
                                                         std::size_t max_events) {
  rocksdb::WriteBatch batch;
  std::size_t n = 0;
  // Per partition, the offset after the last event deleted: its head, so
  // the offsets stay taken when no event is left (a floor: later events
  // count too, recover_next_offset).
  std::map<std::pair<std::uint32_t, std::uint32_t>, std::uint64_t> heads;
  std::unique_ptr<rocksdb::Iterator> it{db_->NewIterator(rocksdb::ReadOptions{}, by_time_)};
  for (it->SeekToFirst(); it->Valid() && n < max_events; it->Next()) {
    auto run = layout::parse_time_run(it->key().ToStringView(), it->value().ToStringView());
    if (!run)
      return tl::make_unexpected(error{errc::io_error, "retention: a corrupt by_time entry"});
    if (run->time_us >= cutoff_us)
      break;
    auto* family = events_of(run->topic_id, run->partition);
    if (!run->legacy_id.empty()) {
      batch.Delete(by_id_, run->legacy_id);
    } else if (run->indexed) {
      // Some ids of the run are in by_id: read them from the events.
      auto lower = keys::event_key(run->topic_id, run->partition, run->first);
      auto upper = keys::event_key(run->topic_id, run->partition, run->last + 1);
      rocksdb::Slice upper_slice{upper};
      rocksdb::ReadOptions ro;
      ro.iterate_upper_bound = &upper_slice;
      ro.fill_cache = false;
      std::unique_ptr<rocksdb::Iterator> ev{db_->NewIterator(ro, family)};
      for (ev->Seek(lower); ev->Valid(); ev->Next()) {
        auto v = ev->value().ToStringView();
        auto id = v.size() > value_header_bytes ? layout::stored_id(v.substr(value_header_bytes))
                                                : std::nullopt;
        auto offset = keys::get_u64(ev->key().ToStringView(), 8);
        if (id && !layout::located_at(*id, run->topic_id, run->partition, offset))
          batch.Delete(by_id_, *id);
      }
      if (!ev->status().ok())
        return tl::make_unexpected(io_error("retention scan", ev->status()));
    }
    for (auto offset = run->first; offset <= run->last; ++offset)
      batch.Delete(family, keys::event_key(run->topic_id, run->partition, offset));
    batch.Delete(by_time_, it->key());
    n += run->last - run->first + 1;
    auto& head = heads[{run->topic_id, run->partition}];
    head = std::max(head, run->last + 1);
  }
  if (!it->status().ok())
    return tl::make_unexpected(io_error("retention scan", it->status()));
  for (auto& [where, head] : heads)
    stage_head(where.first, where.second, head, batch);
  if (n > 0) {
    auto s = db_->Write(rocksdb::WriteOptions{}, &batch);
    if (!s.ok()) {
      note_write_error("retention: " + s.ToString(), s);
      return tl::make_unexpected(io_error("retention delete", s));
    }
  }
  return n;
}

tl::expected<std::chrono::microseconds, error> event_log::probe() {
  auto start = std::chrono::steady_clock::now();
  auto token = std::to_string(opts_.clock());
  if (wal_broken_.load())
    return tl::make_unexpected(error{errc::io_error, refusal()});
  rocksdb::WriteOptions wo;
  wo.sync = opts_.fsync != config::fsync_policy::never;
  auto s = db_->Put(wo, meta_, "probe", token);
  if (!s.ok()) {
    note_write_error("probe write: " + s.ToString(), s);
    return tl::make_unexpected(io_error("probe write", s));
  }
  std::string back;
  s = db_->Get(rocksdb::ReadOptions{}, meta_, "probe", &back);
  if (!s.ok() || back != token) {
    note_error("probe read: " + s.ToString());
    return tl::make_unexpected(error{errc::io_error, "probe read back a different value"});
  }
  failed_.store(false, std::memory_order_relaxed);
  return std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now()
                                                               - start);
}

bool event_log::healthy() const {
  std::uint64_t bg_errors = 0;
  db_->GetIntProperty("rocksdb.background-errors", &bg_errors);
  return !failed_.load(std::memory_order_relaxed) && !wal_broken_.load() && bg_errors == 0;
}

std::string event_log::last_error() const {
  std::lock_guard<std::mutex> guard{error_mutex_};
  return last_error_;
}

std::uint64_t event_log::disk_bytes() const {
  std::uint64_t total = 0;
  std::error_code ec;
  for (auto& entry : std::filesystem::directory_iterator{opts_.path, ec})
    if (entry.is_regular_file(ec))
      total += entry.file_size(ec);
  return total;
}

namespace {

std::uint64_t current_wal(rocksdb::DB& db) {
  std::unique_ptr<rocksdb::LogFile> wal;
  if (!db.GetCurrentWalFile(&wal).ok() || !wal)
    return 0;
  return wal->LogNumber();
}

} // namespace

std::string event_log::refusal() const {
  return "the log refuses writes since a write failed (" + last_error()
         + "); it takes writes again by itself once the cause is gone (a full disk: 64 MiB free)";
}

bool event_log::resume() {
  if (!wal_broken_.load())
    return true;
  std::lock_guard<std::mutex> guard{resume_mutex_};
  if (!wal_broken_.load())
    return true;
  auto failed_wal = broken_wal_.load();
  auto s = db_->Resume();
  if (s.ok() && current_wal(*db_) == failed_wal) {
    // Every memtable was empty, so no new WAL was started: start one.
    s = db_->Put(rocksdb::WriteOptions{}, meta_, "resume", std::to_string(opts_.clock()));
    if (s.ok())
      s = db_->Flush(rocksdb::FlushOptions{}, meta_);
  }
  if (!s.ok() || current_wal(*db_) == failed_wal)
    return false; // still full, say: tried again later
  wal_broken_.store(false);
  failed_.store(false, std::memory_order_relaxed);
  spdlog::warn("storage: the log takes writes again after: {}", last_error());
  return true;
}

void event_log::note_write_error(const std::string& what, const rocksdb::Status& s) {
  if ((s.IsIOError() || s.IsNoSpace() || s.IsCorruption()) && !wal_broken_.load()) {
    broken_wal_ = current_wal(*db_);
    wal_broken_.store(true);
  }
  note_error(what);
}

void event_log::note_error(const std::string& what) {
  failed_.store(true, std::memory_order_relaxed);
  std::lock_guard<std::mutex> guard{error_mutex_};
  last_error_ = what;
}

void event_log::after_durable(std::function<void(std::optional<error>)> done, bool paced) {
  if (opts_.fsync != config::fsync_policy::always) {
    done(std::nullopt);
    return;
  }
  // Always the sync thread's work: the callers are partition actors on
  // CAF's scheduler, which must not wait for a disk. What arrives during a
  // round waits for the next one, which starts as soon as it ends.
  // The sync thread is woken after the lock is released: woken under it,
  // it would block on the lock at once (a second context switch).
  std::function<void()> ask;
  bool wake = false;
  {
    std::lock_guard<std::mutex> guard{fsync_mutex_};
    durable_waiters_.push_back(std::move(done));
    if (!paced || !pacer_)
      unpaced_ = true;
    else if (!start_asked_ && !may_start_) {
      start_asked_ = true;
      ask = pacer_;
    }
    wake = !syncing_ && (unpaced_ || may_start_);
  }
  if (wake)
    fsync_cv_.notify_one();
  if (ask)
    ask();
}

void event_log::start_syncs() {
  bool wake = false;
  {
    std::lock_guard<std::mutex> guard{fsync_mutex_};
    start_asked_ = false;
    may_start_ = true;
    wake = !syncing_ && !durable_waiters_.empty();
  }
  if (wake)
    fsync_cv_.notify_one();
}

void event_log::set_sync_pacer(std::function<void()> pacer) {
  std::lock_guard<std::mutex> guard{fsync_mutex_};
  pacer_ = std::move(pacer);
  if (!pacer_) { // what waits for the one removed syncs now
    may_start_ = true;
    if (!syncing_ && !durable_waiters_.empty())
      fsync_cv_.notify_one();
  }
}

void event_log::sync_round(std::unique_lock<std::mutex>& guard) {
  syncing_ = true;
  unpaced_ = false;
  may_start_ = false;
  auto batch = std::move(durable_waiters_);
  durable_waiters_.clear();
  guard.unlock();
  // Everything the waiters wrote completed before they registered, so this
  // one sync covers all of them; newcomers wait for the next round.
  auto s = sync_wal();
  std::optional<error> failure;
  if (!s.ok()) {
    // A broken WAL was noted when its write failed; noting it again would
    // replace that cause with this consequence.
    if (!wal_broken_.load())
      note_error("fsync: " + s.ToString());
    failure = io_error("syncing the WAL", s);
  }
  for (auto& done : batch)
    done(failure);
  guard.lock();
  syncing_ = false;
}

rocksdb::Status event_log::sync_wal() {
  if (wal_broken_.load())
    return rocksdb::Status::IOError(refusal());
  if (fails_at(fault_point::before_sync, {}))
    return rocksdb::Status::IOError("injected fault before sync");
  auto started = std::chrono::steady_clock::now();
  auto s = db_->SyncWAL();
  if (opts_.observe_io)
    opts_.observe_io(io_op::sync, std::chrono::steady_clock::now() - started);
  return s;
}

void event_log::sync_loop() {
  std::unique_lock<std::mutex> guard{fsync_mutex_};
  for (;;) {
    fsync_cv_.wait(guard, [this] {
      return !syncing_ && (stopping_ || (!durable_waiters_.empty() && (unpaced_ || may_start_)));
    });
    if (durable_waiters_.empty())
      return; // stopping, nothing left
    sync_round(guard);
  }
}

void event_log::fsync_loop() {
  std::unique_lock<std::mutex> guard{fsync_mutex_};
  while (!stopping_) {
    fsync_cv_.wait_for(guard, opts_.fsync_interval);
    if (stopping_)
      break;
    guard.unlock();
    auto s = sync_wal();
    if (!s.ok())
      note_error("interval fsync: " + s.ToString());
    guard.lock();
  }
}

} // namespace nerve::persistence
