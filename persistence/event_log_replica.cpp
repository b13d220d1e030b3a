// What replicated partitions need of the log: the leader's records read for
// shipping, a follower's apply of them with the leader's offsets, the
// leader-epoch checkpoint, and truncation of a divergent tail.
#include "persistence/event_log.hpp"

#include <algorithm>
#include <iterator>
#include <set>

#include <rocksdb/db.h>
#include <rocksdb/write_batch.h>

#include "config/assert.hpp"
#include "persistence/event_log_private.hpp"
#include "persistence/keys.hpp"
#include "persistence/layout.hpp"

namespace nerve::persistence {

using detail::io_error;
using layout::value_header_bytes;

namespace {

/// How many events one batch of remove_from() deletes: a divergent tail can
/// be long (an isolated leader appends until it learns it lost), and one
/// WriteBatch holds every key it deletes in memory.
constexpr std::size_t remove_batch_events_max = 4096;

std::string u64_value(std::uint64_t v) {
  std::string out;
  keys::put_u64(out, v);
  return out;
}

} // namespace

// -- event_log ----------------------------------------------------------------

tl::expected<std::vector<replica_record>, error>
event_log::read_records(const topic_info& topic, std::uint32_t partition, std::uint64_t from_offset,
                        std::size_t max_events, std::size_t max_bytes) const {
  std::vector<replica_record> out;
  std::size_t bytes = 0;
  std::optional<error> corrupt;
  auto visited = visit_until(
    topic, partition, from_offset, ~0ULL, max_events,
    [&](std::uint64_t offset, std::int64_t time_us, std::string_view json) {
      if (!out.empty() && bytes + json.size() > max_bytes)
        return false;
      auto id = layout::stored_id(json);
      if (!id) {
        corrupt = error{errc::io_error, "corrupt event " + topic.name + "/"
                                          + std::to_string(partition) + "/" + std::to_string(offset)
                                          + ": its JSON has no leading id"};
        return false;
      }
      bytes += json.size();
      out.push_back({offset, time_us, std::move(*id), std::string{json}});
      return true;
    });
  if (!visited)
    return tl::make_unexpected(visited.error());
  if (corrupt)
    return tl::make_unexpected(*corrupt);
  return out;
}

// -- partition_writer: the leader-epoch checkpoint ----------------------------

void partition_writer::load_epochs() {
  const auto prefix = layout::epoch_prefix(topic_.id, partition_);
  std::unique_ptr<rocksdb::Iterator> it{log_.db_->NewIterator(rocksdb::ReadOptions{}, log_.meta_)};
  for (it->Seek(prefix); it->Valid() && detail::starts_with(it->key(), prefix); it->Next()) {
    auto parsed = layout::parse_epoch_record(it->key().ToStringView(), it->value().ToStringView(),
                                             prefix.size());
    NERVE_ASSERT(parsed, "an epoch checkpoint entry is an epoch and an offset");
    auto e = *parsed;
    NERVE_ASSERT(epochs_.empty() || epochs_.back().start_offset <= e.start_offset,
                 "later epochs start at or after earlier ones");
    NERVE_ASSERT(e.start_offset <= next_offset_, "an epoch starts within its partition");
    epochs_.push_back(e);
  }
  NERVE_ASSERT(it->status().ok(), "the epoch checkpoint is readable");
}

std::uint32_t partition_writer::last_epoch() const {
  return epochs_.empty() ? 0 : epochs_.back().epoch;
}

tl::expected<void, error> partition_writer::begin_epoch(std::uint32_t epoch) {
  const auto last = last_epoch();
  if (epoch == last && epoch != 0)
    return {};
  if (epoch <= last)
    return tl::make_unexpected(
      error{errc::invalid, "partition " + topic_.name + "/" + std::to_string(partition_)
                             + " cannot begin leader epoch " + std::to_string(epoch)
                             + (epoch == 0 ? std::string{": epochs start at 1"}
                                           : ": it already has epoch " + std::to_string(last)
                                               + " (a stale leadership must not lead)")});
  rocksdb::WriteBatch batch;
  batch.Put(log_.meta_, layout::epoch_key(topic_.id, partition_, epoch), u64_value(next_offset_));
  auto s = write(batch, true);
  if (!s.ok()) {
    log_.note_write_error("begin epoch: " + s.ToString(), s);
    return tl::make_unexpected(io_error("recording leader epoch " + std::to_string(epoch) + " of "
                                          + topic_.name + "/" + std::to_string(partition_),
                                        s));
  }
  epochs_.push_back({epoch, next_offset_});
  return {};
}

std::pair<std::uint32_t, std::uint64_t> partition_writer::end_of_epoch(std::uint32_t epoch) const {
  // The first entry of a later epoch; the one before it (if any) is E's.
  auto later = std::upper_bound(
    epochs_.begin(), epochs_.end(), epoch,
    [](std::uint32_t asked, const epoch_entry& entry) { return asked < entry.epoch; });
  const auto end = later == epochs_.end() ? next_offset_ : later->start_offset;
  if (later == epochs_.begin())
    return {0, end};
  return {std::prev(later)->epoch, end};
}

// -- partition_writer: follower appends ---------------------------------------

tl::expected<void, error> partition_writer::apply(std::uint32_t epoch,
                                                  const std::vector<replica_record>& records) {
  if (auto fault = fault_before_append())
    return tl::make_unexpected(*fault);
  const auto where = topic_.name + "/" + std::to_string(partition_);
  auto refuse = [&where](const std::string& why) {
    return tl::make_unexpected(error{errc::invalid, "applying records to " + where + ": " + why});
  };
  if (records.empty())
    return refuse("no records");
  if (epoch == 0)
    return refuse("leader epoch 0: epochs start at 1");
  if (epoch < last_epoch())
    return refuse("leader epoch " + std::to_string(epoch) + " is older than this replica's "
                  + std::to_string(last_epoch()) + " (records of an older epoch cannot follow)");
  auto time_us = last_time_us_;
  for (std::size_t i = 0; i < records.size(); ++i) {
    const auto& r = records[i];
    auto at = [&] { // built only for a refusal: apply runs for every replicated batch
      return "record " + std::to_string(i) + " (offset " + std::to_string(r.offset) + ")";
    };
    if (r.offset != next_offset_ + i)
      return refuse(at() + ": expected offset " + std::to_string(next_offset_ + i)
                    + "; records continue the partition at its next offset without gaps");
    if (r.time_us < time_us)
      return refuse(at() + ": append time " + std::to_string(r.time_us) + " us is before "
                    + std::to_string(time_us) + " us; append times never decrease");
    if (r.id.empty() || layout::stored_id(r.json) != r.id)
      return refuse(at() + ": its JSON does not start with its id \"" + r.id + "\"");
    time_us = r.time_us;
  }

  std::size_t bytes = 64; // sized up front, as append() does
  for (const auto& r : records)
    bytes += r.json.size() + 64;
  rocksdb::WriteBatch batch{bytes};
  std::size_t indexed = 0;
  std::size_t runs = 0;
  // One by_time run per stretch of records with one append time; the first
  // continues the last stored run when it has its time.
  auto run = open_run(records.front().time_us);
  for (std::size_t i = 0; i < records.size(); ++i) {
    const auto& r = records[i];
    detail::put_event(batch, events_, keys::event_key(topic_.id, partition_, r.offset),
                      detail::value_header{r.time_us}, {r.json});
    if (!layout::located_at(r.id, topic_.id, partition_, r.offset)) {
      batch.Put(log_.by_id_, r.id, keys::id_value(topic_.id, partition_, r.offset, r.time_us));
      ++indexed;
      run.indexed = true;
    }
    if (i + 1 == records.size() || records[i + 1].time_us != r.time_us) {
      batch.Put(log_.by_time_, keys::time_key(r.time_us, topic_.id, partition_, run.first),
                layout::time_run_value(r.offset, run.indexed));
      ++runs;
      if (i + 1 < records.size())
        run = {r.offset + 1, false};
    }
  }
  const auto next = next_offset_ + records.size();
  const bool new_epoch = epoch > last_epoch();
  if (new_epoch)
    batch.Put(log_.meta_, layout::epoch_key(topic_.id, partition_, epoch),
              u64_value(records.front().offset));
  NERVE_ASSERT(batch.Count() == records.size() + indexed + runs + (new_epoch ? 1 : 0),
               "each applied record writes one record (two when its id needs by_id); the "
               "batch adds a run per append time");
  auto s = write(batch, false); // durable via after_durable(), as append()
  if (!s.ok()) {
    log_.note_write_error("apply: " + s.ToString(), s);
    return tl::make_unexpected(io_error("applying records to " + where, s));
  }
  if (new_epoch)
    epochs_.push_back({epoch, records.front().offset});
  next_offset_ = next;
  last_time_us_ = time_us;
  last_run_ = run;
  log_.failed_.store(false, std::memory_order_relaxed);
  return {};
}

// -- partition_writer: truncation ---------------------------------------------

tl::expected<void, error> partition_writer::truncate_to(std::uint64_t end) {
  if (end < next_offset_)
    return remove_from(end, end);
  // No record to remove, but maybe epochs that begin at `end` and hold none
  // (a leadership that appended nothing): the leader's history does not
  // know them, so they go too, or the next fetch would diverge again.
  rocksdb::WriteBatch batch;
  auto kept = stage_epoch_deletes(batch, end);
  if (kept == epochs_.size())
    return {};
  auto s = write(batch, true);
  if (!s.ok()) {
    log_.note_write_error("truncate epochs: " + s.ToString(), s);
    return tl::make_unexpected(io_error(
      "removing empty leader epochs of " + topic_.name + "/" + std::to_string(partition_), s));
  }
  epochs_.resize(kept);
  return {};
}

tl::expected<void, error> partition_writer::reset_to(std::uint64_t offset) {
  if (offset == next_offset_)
    return {};
  if (offset < next_offset_)
    return tl::make_unexpected(
      error{errc::invalid, "partition " + topic_.name + "/" + std::to_string(partition_)
                             + " cannot reset to offset " + std::to_string(offset)
                             + ": it is below its next offset " + std::to_string(next_offset_)
                             + " (truncate_to() removes a tail)"});
  return remove_from(0, offset);
}

std::size_t partition_writer::stage_epoch_deletes(rocksdb::WriteBatch& batch,
                                                  std::uint64_t from) const {
  auto kept = epochs_.size();
  while (kept > 0 && epochs_[kept - 1].start_offset >= from)
    batch.Delete(log_.meta_, layout::epoch_key(topic_.id, partition_, epochs_[--kept].epoch));
  return kept;
}

std::optional<error> partition_writer::stage_run_cuts(const std::set<std::int64_t>& times,
                                                      std::uint64_t cut,
                                                      rocksdb::WriteBatch& batch) const {
  for (auto time_us : times) {
    auto s = detail::for_each_run_at(*log_.db_, log_.by_time_, time_us, topic_.id, partition_,
                                     [&](const rocksdb::Slice& key, const layout::time_run& run) {
                                       if (run.first >= cut)
                                         batch.Delete(log_.by_time_, key);
                                       else if (run.last >= cut)
                                         batch.Put(log_.by_time_, key,
                                                   layout::time_run_value(cut - 1, run.indexed));
                                       return true;
                                     });
    if (!s.ok())
      return io_error("truncating " + topic_.name + "/" + std::to_string(partition_), s);
  }
  return std::nullopt;
}

tl::expected<void, error> partition_writer::remove_from(std::uint64_t from, std::uint64_t head) {
  const auto where = topic_.name + "/" + std::to_string(partition_);
  const auto lower = keys::event_key(topic_.id, partition_, from);
  const auto upper = keys::event_key(topic_.id, partition_, ~0ULL);
  const rocksdb::Slice lower_slice{lower};
  const rocksdb::Slice upper_slice{upper};
  for (bool more = true; more;) {
    rocksdb::ReadOptions ro;
    ro.iterate_lower_bound = &lower_slice;
    ro.iterate_upper_bound = &upper_slice;
    std::unique_ptr<rocksdb::Iterator> it{log_.db_->NewIterator(ro, events_)};
    rocksdb::WriteBatch batch;
    std::vector<std::string> ids;
    std::vector<std::string> removed; // the event keys of `ids`
    std::set<std::int64_t> times;     // the append times of the removed events
    // Newest first, so that each batch leaves a whole, shorter partition.
    std::uint64_t lowest = from;
    for (it->SeekToLast(); it->Valid() && removed.size() < remove_batch_events_max; it->Prev()) {
      auto k = it->key().ToStringView();
      auto v = it->value().ToStringView();
      auto id = v.size() > value_header_bytes ? layout::stored_id(v.substr(value_header_bytes))
                                              : std::nullopt;
      if (k.size() != 16 || !id)
        return tl::make_unexpected(error{
          errc::io_error, "truncating " + where + ": a corrupt event"
                            + (k.size() == 16 ? " at offset " + std::to_string(keys::get_u64(k, 8))
                                              : std::string{})});
      lowest = keys::get_u64(k, 8);
      times.insert(static_cast<std::int64_t>(keys::get_u64(v, 0)));
      batch.Delete(events_, it->key());
      if (!layout::located_at(*id, topic_.id, partition_, lowest)) {
        ids.push_back(std::move(*id));
        removed.emplace_back(k);
      }
    }
    if (!it->status().ok())
      return tl::make_unexpected(io_error("truncating " + where, it->status()));
    more = it->Valid();
    if (auto failed = stage_run_cuts(times, more ? lowest : from, batch))
      return tl::make_unexpected(*failed);
    // An id now stored elsewhere (applied again at another offset or on
    // another partition) keeps its by_id entry: only those pointing at a
    // removed event go.
    std::vector<rocksdb::Slice> lookup(ids.begin(), ids.end());
    std::vector<rocksdb::PinnableSlice> values(ids.size());
    std::vector<rocksdb::Status> statuses(ids.size());
    if (!ids.empty())
      log_.db_->MultiGet(rocksdb::ReadOptions{}, log_.by_id_, ids.size(), lookup.data(),
                         values.data(), statuses.data());
    for (std::size_t i = 0; i < ids.size(); ++i) {
      if (!statuses[i].ok() && !statuses[i].IsNotFound())
        return tl::make_unexpected(io_error("truncating " + where, statuses[i]));
      if (statuses[i].ok() && values[i].ToStringView().substr(0, 16) == removed[i])
        batch.Delete(log_.by_id_, ids[i]);
    }
    const auto cut = more ? lowest : from;
    const auto new_head = more ? lowest : head;
    stage_head(new_head, batch);
    auto kept = stage_epoch_deletes(batch, cut);
    // Only the last batch is synced: the WAL keeps writes in order, so it
    // makes the earlier ones durable too.
    auto s = write(batch, !more);
    if (!s.ok()) {
      log_.note_write_error("truncate: " + s.ToString(), s);
      return tl::make_unexpected(io_error("truncating " + where, s));
    }
    epochs_.resize(kept);
    next_offset_ = new_head;
  }
  last_time_us_ = recover_last_time();
  last_run_.reset();
  return {};
}

} // namespace nerve::persistence
