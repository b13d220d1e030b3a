// The reads of the event log: events by offset (copied or visited in
// place), the by_time index and the append-time windows replays select, and
// lookups by id.
#include "persistence/event_log.hpp"

#include <algorithm>
#include <memory>
#include <shared_mutex>

#include <rocksdb/db.h>

#include "persistence/event_log_private.hpp"
#include "persistence/ids.hpp"
#include "persistence/keys.hpp"
#include "persistence/layout.hpp"

namespace nerve::persistence {

using detail::io_error;
using detail::starts_with;
using layout::value_header_bytes;

tl::expected<std::vector<std::string>, error> event_log::read(const topic_info& topic,
                                                              std::uint32_t partition,
                                                              std::uint64_t from_offset,
                                                              std::size_t limit) const {
  std::vector<std::string> out;
  auto prefix = keys::partition_prefix(topic.id, partition);
  std::unique_ptr<rocksdb::Iterator> it{
    db_->NewIterator(rocksdb::ReadOptions{}, events_of(topic.id, partition))};
  for (it->Seek(keys::event_key(topic.id, partition, from_offset));
       it->Valid() && starts_with(it->key(), prefix) && out.size() < limit; it->Next()) {
    auto v = it->value();
    if (v.size() <= value_header_bytes)
      return tl::make_unexpected(error{errc::io_error, "corrupt event value"});
    out.emplace_back(v.data() + value_header_bytes, v.size() - value_header_bytes);
  }
  if (!it->status().ok())
    return tl::make_unexpected(io_error("reading events", it->status()));
  return out;
}

tl::expected<std::uint64_t, error>
event_log::scan_time(std::int64_t from_us, std::int64_t to_us,
                     const std::function<bool(std::int64_t, std::uint32_t, std::uint32_t,
                                              std::uint64_t, std::uint64_t)>& fn,
                     bool backward) const {
  if (to_us <= from_us)
    return 0;
  auto lower = keys::time_key(std::max<std::int64_t>(from_us, 0), 0, 0, 0);
  auto upper = keys::time_key(std::max<std::int64_t>(to_us, 0), 0, 0, 0);
  rocksdb::Slice lower_slice{lower};
  rocksdb::Slice upper_slice{upper};
  rocksdb::ReadOptions ro;
  ro.iterate_lower_bound = &lower_slice;
  ro.iterate_upper_bound = &upper_slice;
  ro.fill_cache = false; // a window scan must not evict the hot tail
  std::unique_ptr<rocksdb::Iterator> it{db_->NewIterator(ro, by_time_)};
  if (backward)
    it->SeekToLast(); // the last key below `upper`
  else
    it->Seek(lower);
  std::uint64_t n = 0;
  for (; it->Valid(); backward ? it->Prev() : it->Next()) {
    auto run = layout::parse_time_run(it->key().ToStringView(), it->value().ToStringView());
    if (!run)
      return tl::make_unexpected(error{errc::io_error, "corrupt by_time entry"});
    ++n;
    if (!fn(run->time_us, run->topic_id, run->partition, run->first, run->last))
      break;
  }
  if (!it->status().ok())
    return tl::make_unexpected(io_error("scanning by_time", it->status()));
  return n;
}

tl::expected<std::optional<std::pair<std::uint64_t, std::uint64_t>>, error>
event_log::time_span(const topic_info& topic, std::uint32_t partition, std::int64_t from_us,
                     std::int64_t to_us) const {
  using span = std::optional<std::pair<std::uint64_t, std::uint64_t>>;
  if (to_us <= from_us)
    return span{};
  auto prefix = keys::partition_prefix(topic.id, partition);
  auto upper = keys::partition_prefix(topic.id, partition + 1);
  rocksdb::Slice upper_slice{upper};
  rocksdb::ReadOptions ro;
  ro.iterate_upper_bound = &upper_slice;
  std::unique_ptr<rocksdb::Iterator> it{db_->NewIterator(ro, events_of(topic.id, partition))};
  auto offset_of = [&] { return keys::get_u64(std::string_view{it->key().data(), 16}, 8); };
  auto time_of = [&] {
    return static_cast<std::int64_t>(
      keys::get_u64(std::string_view{it->value().data(), it->value().size()}, 0));
  };
  auto valid = [&] {
    return it->Valid() && it->key().size() == 16 && it->value().size() >= value_header_bytes;
  };
  // Stored offsets are dense from the oldest kept (retention removes a prefix).
  it->Seek(prefix);
  if (!it->Valid())
    return it->status().ok() ? tl::expected<span, error>{span{}}
                             : tl::make_unexpected(io_error("reading events", it->status()));
  if (!valid())
    return tl::make_unexpected(io_error("reading events", it->status()));
  const std::pair<std::uint64_t, std::int64_t> oldest{offset_of(), time_of()};
  it->SeekToLast();
  if (!valid())
    return tl::make_unexpected(io_error("reading events", it->status()));
  const std::pair<std::uint64_t, std::int64_t> newest{offset_of(), time_of()};
  using point = std::pair<std::uint64_t, std::int64_t>; // (offset, append time)
  // The first event appended at or after t, searched after `below` (whose
  // time is < t); nothing when every event is older. Between two known
  // points the answer is guessed by interpolation, as appends come at a
  // fairly steady pace; every other probe halves instead, so a burst costs
  // at most twice a plain binary search.
  auto lower_bound = [&](std::int64_t t, point below) -> tl::expected<std::optional<point>, error> {
    if (newest.second < t)
      return std::optional<point>{};
    auto above = newest; // time >= t
    for (bool interpolate = true; above.first - below.first > 1; interpolate = !interpolate) {
      auto gap = above.first - below.first;
      std::uint64_t step = gap / 2;
      if (interpolate && above.second > below.second) {
        auto f = static_cast<long double>(t - below.second)
                 / static_cast<long double>(above.second - below.second);
        step = static_cast<std::uint64_t>(f * static_cast<long double>(gap));
      }
      auto mid = below.first + std::clamp<std::uint64_t>(step, 1, gap - 1);
      it->Seek(keys::event_key(topic.id, partition, mid));
      if (!valid())
        return tl::make_unexpected(io_error("reading events", it->status()));
      point probe{mid, time_of()};
      (probe.second < t ? below : above) = probe;
    }
    return std::optional<point>{above};
  };
  std::optional<point> lo{oldest};
  if (oldest.second < from_us) {
    auto found = lower_bound(from_us, oldest);
    if (!found)
      return tl::make_unexpected(found.error());
    lo = *found;
  }
  // Nothing at or after `from`, or the first such event is already past the
  // window: the partition has none in it, no second search.
  if (!lo || lo->second >= to_us)
    return span{};
  // The window's end lies after `lo`, whose time is < to.
  auto hi = lower_bound(to_us, *lo);
  if (!hi)
    return tl::make_unexpected(hi.error());
  return span{std::pair{lo->first, *hi ? (*hi)->first - 1 : newest.first}};
}

tl::expected<std::vector<stored_event>, error>
event_log::read_stored(const topic_info& topic, std::uint32_t partition, std::uint64_t from_offset,
                       std::uint64_t last, std::size_t limit) const {
  std::vector<stored_event> out;
  if (last < from_offset)
    return out;
  out.reserve(std::min<std::uint64_t>(limit, last - from_offset + 1));
  auto visited
    = visit_stored(topic, partition, from_offset, last, limit,
                   [&out](std::uint64_t offset, std::int64_t time, std::string_view json) {
                     out.push_back({offset, time, std::string{json}});
                   });
  if (!visited)
    return tl::make_unexpected(visited.error());
  return out;
}

tl::expected<std::size_t, error> event_log::visit_stored(
  const topic_info& topic, std::uint32_t partition, std::uint64_t from_offset, std::uint64_t last,
  std::size_t limit,
  const std::function<void(std::uint64_t, std::int64_t, std::string_view)>& fn) const {
  return visit_until(topic, partition, from_offset, last, limit,
                     [&fn](std::uint64_t offset, std::int64_t time_us, std::string_view json) {
                       fn(offset, time_us, json);
                       return true;
                     });
}

tl::expected<std::size_t, error> event_log::visit_until(
  const topic_info& topic, std::uint32_t partition, std::uint64_t from_offset, std::uint64_t last,
  std::size_t limit,
  const std::function<bool(std::uint64_t, std::int64_t, std::string_view)>& fn) const {
  if (last < from_offset || limit == 0)
    return 0;
  auto upper = last == ~0ULL ? keys::partition_prefix(topic.id, partition + 1)
                             : keys::event_key(topic.id, partition, last + 1);
  rocksdb::Slice upper_slice{upper};
  rocksdb::ReadOptions ro;
  ro.iterate_upper_bound = &upper_slice;
  // Replays read long runs of old events: one large read (about what
  // `limit` events take) instead of a read per block, and none of it pushes
  // the hot tail out of the block cache.
  ro.readahead_size = limit >= 64 ? std::min<std::size_t>(limit * 512, 1U << 20) : 0;
  ro.fill_cache = false;
  std::unique_ptr<rocksdb::Iterator> it{db_->NewIterator(ro, events_of(topic.id, partition))};
  std::size_t n = 0;
  for (it->Seek(keys::event_key(topic.id, partition, from_offset)); it->Valid() && n < limit;
       it->Next()) {
    auto k = it->key();
    auto v = it->value();
    if (k.size() != 16 || v.size() <= value_header_bytes)
      return tl::make_unexpected(error{errc::io_error, "corrupt event"});
    if (!fn(keys::get_u64(std::string_view{k.data(), k.size()}, 8),
            static_cast<std::int64_t>(keys::get_u64(std::string_view{v.data(), v.size()}, 0)),
            std::string_view{v.data() + value_header_bytes, v.size() - value_header_bytes}))
      break;
    ++n;
  }
  if (!it->status().ok())
    return tl::make_unexpected(io_error("reading events", it->status()));
  return n;
}

tl::expected<std::optional<coords>, error> event_log::stored_at(const std::string& id,
                                                                std::string* json) const {
  auto at = locate_id(id);
  if (!at)
    return std::optional<coords>{};
  {
    std::shared_lock<std::shared_mutex> guard{topics_mutex_};
    if (topic_names_.count(at->topic_id) == 0)
      return std::optional<coords>{};
  }
  rocksdb::PinnableSlice value;
  auto s = db_->Get(rocksdb::ReadOptions{}, events_of(at->topic_id, at->partition),
                    keys::event_key(at->topic_id, at->partition, at->offset), &value);
  if (s.IsNotFound())
    return std::optional<coords>{};
  if (!s.ok())
    return tl::make_unexpected(io_error("looking up event " + id, s));
  auto v = value.ToStringView();
  if (v.size() <= value_header_bytes || layout::stored_id(v.substr(value_header_bytes)) != id)
    return std::optional<coords>{}; // another event took that place (a truncated tail)
  if (json != nullptr)
    json->assign(v.substr(value_header_bytes));
  return std::optional<coords>{coords{at->topic_id, at->partition, at->offset,
                                      static_cast<std::int64_t>(keys::get_u64(v, 0))}};
}

tl::expected<std::optional<std::string>, error> event_log::get_by_id(const std::string& id) const {
  std::string value;
  auto here = stored_at(id, &value);
  if (!here)
    return tl::make_unexpected(here.error());
  if (*here)
    return std::optional<std::string>{std::move(value)};
  std::string where;
  auto s = db_->Get(rocksdb::ReadOptions{}, by_id_, id, &where);
  if (s.IsNotFound())
    return std::optional<std::string>{};
  if (!s.ok())
    return tl::make_unexpected(io_error("looking up event " + id, s));
  if (where.size() < 16)
    return tl::make_unexpected(error{errc::io_error, "a corrupt by_id entry of event " + id});
  s = db_->Get(rocksdb::ReadOptions{}, events_of(keys::get_u32(where, 0), keys::get_u32(where, 4)),
               rocksdb::Slice{where.data(), 16}, &value);
  if (s.IsNotFound())
    return std::optional<std::string>{};
  if (!s.ok() || value.size() <= value_header_bytes)
    return tl::make_unexpected(io_error("reading event " + id, s));
  return std::optional<std::string>{value.substr(value_header_bytes)};
}

tl::expected<std::vector<std::optional<std::string>>, error>
event_log::topics_of(const std::vector<std::string>& ids) const {
  std::vector<std::optional<std::string>> out(ids.size());
  std::vector<rocksdb::Slice> lookup;
  std::vector<std::size_t> index;
  std::vector<std::uint32_t> found(ids.size(), 0);
  std::vector<bool> known(ids.size(), false);
  for (std::size_t i = 0; i < ids.size(); ++i) {
    auto here = stored_at(ids[i]);
    if (!here)
      return tl::make_unexpected(here.error());
    if (*here) {
      found[i] = (*here)->topic_id;
      known[i] = true;
      continue;
    }
    lookup.emplace_back(ids[i]);
    index.push_back(i);
  }
  std::vector<rocksdb::PinnableSlice> values(lookup.size());
  std::vector<rocksdb::Status> statuses(lookup.size());
  if (!lookup.empty())
    db_->MultiGet(rocksdb::ReadOptions{}, by_id_, lookup.size(), lookup.data(), values.data(),
                  statuses.data());
  for (std::size_t k = 0; k < lookup.size(); ++k) {
    if (statuses[k].IsNotFound())
      continue;
    if (!statuses[k].ok() || values[k].size() < 4)
      return tl::make_unexpected(io_error("looking up event ids", statuses[k]));
    found[index[k]] = keys::get_u32(values[k].ToStringView(), 0);
    known[index[k]] = true;
  }
  std::shared_lock<std::shared_mutex> guard{topics_mutex_};
  for (std::size_t i = 0; i < ids.size(); ++i)
    if (known[i])
      if (auto it = topic_names_.find(found[i]); it != topic_names_.end())
        out[i] = it->second;
  return out;
}

} // namespace nerve::persistence
