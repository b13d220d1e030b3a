// Delivery state on RocksDB: cursors, pending records, results (expired by a
// compaction filter), the DLQ and meta records.
#include "persistence/delivery_store.hpp"

#include <cstring>
#include <string_view>

#include <nlohmann/json.hpp>
#include <rocksdb/db.h>
#include <rocksdb/write_batch.h>

#include "persistence/keys.hpp"
#include "persistence/layout.hpp"

namespace nerve::persistence {

using json = nlohmann::json;

namespace {

/// state_op::family: the column families of delivery state.
enum family : std::uint8_t {
  cursors_family,
  pending_family,
  results_family,
  dlq_family,
  meta_family,
  family_count
};

std::string group_prefix(const std::string& agent, std::uint32_t topic_id,
                         std::uint32_t partition) {
  std::string k = agent;
  k.push_back('\0');
  keys::put_u32(k, topic_id);
  keys::put_u32(k, partition);
  return k;
}

std::string pending_key(const std::string& agent, std::uint32_t topic_id, std::uint32_t partition,
                        std::uint64_t offset) {
  auto k = group_prefix(agent, topic_id, partition);
  keys::put_u64(k, offset);
  return k;
}

std::string result_key(const std::string& event_id, const std::string& agent) {
  std::string k = event_id;
  k.push_back('\0');
  k += agent;
  return k;
}

/// In the results family next to the results (and expired like them), but
/// apart: event ids are printable, so they never start with NUL.
std::string attempts_key(const std::string& agent, std::uint32_t topic_id, std::uint32_t partition,
                         std::uint64_t offset) {
  std::string k{"\0a", 2};
  k += pending_key(agent, topic_id, partition, offset);
  return k;
}

/// A result record's value: stored time (u64), attempts (u32), result text.
std::string result_value(std::int64_t stored_us, std::uint32_t attempts, const std::string& text) {
  std::string v;
  keys::put_u64(v, static_cast<std::uint64_t>(stored_us));
  keys::put_u32(v, attempts);
  v += text;
  return v;
}

/// Reads a result record's value (see result_value); nothing when it is too
/// short or older than `ttl_us` at `now_us` (the compaction filter drops it
/// later).
std::optional<stored_result> result_from(std::string_view v, std::int64_t ttl_us,
                                         std::int64_t now_us) {
  if (v.size() < 12)
    return std::nullopt;
  stored_result r{std::string{v.substr(12)}, static_cast<std::int64_t>(keys::get_u64(v, 0)),
                  keys::get_u32(v, 8)};
  if (r.stored_us + ttl_us < now_us)
    return std::nullopt;
  return r;
}

error io(const std::string& what, const rocksdb::Status& s) {
  return {errc::io_error, what + ": " + s.ToString()};
}

json to_json(const pending_record& r) {
  json j{{"attempts", r.attempts}};
  if (r.acked)
    j["acked"] = true;
  if (r.redeliver)
    j["redeliver"] = true;
  if (r.next_attempt_us)
    j["next_attempt_us"] = r.next_attempt_us;
  if (r.first_failed_us)
    j["first_failed_us"] = r.first_failed_us;
  if (r.last_failed_us)
    j["last_failed_us"] = r.last_failed_us;
  if (!r.last_error.empty())
    j["last_error"] = r.last_error;
  return j;
}

std::optional<pending_record> pending_from(std::string_view text, std::uint64_t offset) {
  auto j = json::parse(text, nullptr, false);
  if (!j.is_object())
    return std::nullopt;
  pending_record r;
  r.offset = offset;
  r.attempts = j.value("attempts", 0U);
  r.acked = j.value("acked", false);
  r.redeliver = j.value("redeliver", false);
  r.next_attempt_us = j.value("next_attempt_us", 0LL);
  r.first_failed_us = j.value("first_failed_us", 0LL);
  r.last_failed_us = j.value("last_failed_us", 0LL);
  r.last_error = j.value("last_error", "");
  return r;
}

json to_json(const dlq_entry& e) {
  return {{"id", e.id},
          {"agent", e.agent},
          {"topic", e.topic},
          {"topic_id", e.topic_id},
          {"partition", e.partition},
          {"offset", e.offset},
          {"event_id", e.event_id},
          {"event", e.event},
          {"error", e.error},
          {"attempts", e.attempts},
          {"first_failed_us", e.first_failed_us},
          {"last_failed_us", e.last_failed_us}};
}

std::optional<dlq_entry> dlq_from(const std::string& text) {
  auto j = json::parse(text, nullptr, false);
  if (!j.is_object())
    return std::nullopt;
  dlq_entry e;
  e.id = j.value("id", "");
  e.agent = j.value("agent", "");
  e.topic = j.value("topic", "");
  e.topic_id = j.value("topic_id", 0U);
  e.partition = j.value("partition", 0U);
  e.offset = j.value("offset", 0ULL);
  e.event_id = j.value("event_id", "");
  e.event = j.value("event", "");
  e.error = j.value("error", "");
  e.attempts = j.value("attempts", 0U);
  e.first_failed_us = j.value("first_failed_us", 0LL);
  e.last_failed_us = j.value("last_failed_us", 0LL);
  return e;
}

} // namespace

std::optional<dlq_change> dlq_change_of(const state_op& op) {
  if (op.family != dlq_family)
    return std::nullopt;
  if (op.del)
    return dlq_change{op.key, std::nullopt};
  auto e = dlq_from(op.value);
  if (!e)
    return std::nullopt;
  return dlq_change{op.key, std::move(e)};
}

struct state_batch::impl {
  // Staged against handles resolved at commit; records what to write.
  std::vector<state_op> ops;
  fault_context where; ///< the last group whose cursor or pending records changed

  void note(const std::string& agent, std::uint32_t partition) {
    if (where.subject != agent) // no copy per delivery: the agent rarely changes
      where.subject = agent;
    where.partition = partition;
  }
};

state_batch::state_batch() : impl_(std::make_unique<impl>()) {
}
state_batch::~state_batch() = default;
state_batch::state_batch(state_batch&&) noexcept = default;
state_batch& state_batch::operator=(state_batch&&) noexcept = default;

void state_batch::put_cursor(const std::string& agent, std::uint32_t topic_id,
                             std::uint32_t partition, std::uint64_t cursor) {
  impl_->note(agent, partition);
  std::string v;
  keys::put_u64(v, cursor);
  impl_->ops.push_back({cursors_family, false, group_prefix(agent, topic_id, partition), v});
}

void state_batch::put_pending(const std::string& agent, std::uint32_t topic_id,
                              std::uint32_t partition, const pending_record& rec) {
  impl_->note(agent, partition);
  impl_->ops.push_back({pending_family, false, pending_key(agent, topic_id, partition, rec.offset),
                        to_json(rec).dump(-1, ' ', false, json::error_handler_t::replace)});
}

void state_batch::delete_pending(const std::string& agent, std::uint32_t topic_id,
                                 std::uint32_t partition, std::uint64_t offset) {
  impl_->note(agent, partition);
  impl_->ops.push_back({pending_family, true, pending_key(agent, topic_id, partition, offset), {}});
}

void state_batch::put_result(const std::string& event_id, const std::string& agent,
                             const stored_result& r) {
  impl_->ops.push_back({results_family, false, result_key(event_id, agent),
                        result_value(r.stored_us, r.attempts, r.result)});
}

void state_batch::put_attempts(const std::string& agent, std::uint32_t topic_id,
                               std::uint32_t partition, std::uint64_t offset,
                               std::uint32_t attempts, std::int64_t now_us) {
  impl_->ops.push_back({results_family, false, attempts_key(agent, topic_id, partition, offset),
                        result_value(now_us, attempts, {})});
}

void state_batch::put_dlq(const dlq_entry& e) {
  impl_->ops.push_back(
    {dlq_family, false, e.id, to_json(e).dump(-1, ' ', false, json::error_handler_t::replace)});
}

void state_batch::delete_dlq(const std::string& id) {
  impl_->ops.push_back({dlq_family, true, id, {}});
}

void state_batch::put_meta(const std::string& key, const std::string& value) {
  impl_->ops.push_back({meta_family, false, key, value});
}

bool state_batch::empty() const {
  return impl_->ops.empty();
}

bool state_batch::progress_only() const {
  for (auto& op : impl_->ops)
    if (op.del || (op.family != cursors_family && op.family != meta_family))
      return false;
  return true;
}

std::size_t state_batch::count() const {
  return impl_->ops.size();
}

std::vector<state_op> state_batch::ops() const {
  return impl_->ops;
}

tl::expected<state_batch, error> state_batch::from_ops(std::vector<state_op> ops) {
  for (std::size_t i = 0; i < ops.size(); ++i) {
    const auto& op = ops[i];
    const auto which = "shipped delivery state op " + std::to_string(i);
    if (op.family >= family_count)
      return tl::make_unexpected(
        error{errc::invalid, which + " names family " + std::to_string(op.family)
                               + "; families are 0 (cursors) to 4 (meta)"});
    if (op.family == meta_family && layout::is_log_record(op.key))
      return tl::make_unexpected(error{
        errc::invalid, which + " writes the log's own meta record "
                         + json(op.key).dump(-1, ' ', false, json::error_handler_t::replace)});
  }
  state_batch batch;
  batch.impl_->ops = std::move(ops);
  return batch;
}

std::optional<error> delivery_store::injected_fault(state_batch& batch) const {
  if (!log_.fails_at(fault_point::before_cursor_commit, batch.impl_->where))
    return std::nullopt;
  batch.impl_->ops.clear();
  log_.note_error("delivery state: injected fault");
  return error{errc::io_error, "writing delivery state: injected fault"};
}

void delivery_store::stage(state_batch& batch, rocksdb::WriteBatch& wb) const {
  rocksdb::ColumnFamilyHandle* families[family_count]
    = {log_.cursors_, log_.pending_, log_.results_, log_.dlq_, log_.meta_};
  for (auto& op : batch.impl_->ops) {
    auto* cf = families[op.family];
    if (op.del)
      wb.Delete(cf, op.key);
    else
      wb.Put(cf, op.key, op.value);
  }
  batch.impl_->ops.clear();
}

tl::expected<void, error> delivery_store::commit(state_batch& batch, bool sync) {
  if (batch.empty())
    return {};
  if (auto fault = injected_fault(batch))
    return tl::make_unexpected(std::move(*fault));
  rocksdb::WriteBatch wb;
  stage(batch, wb);
  rocksdb::WriteOptions wo;
  wo.sync = sync && !log_.wal_broken_.load(); // see event_log::wal_broken_
  auto s = log_.db_->Write(wo, &wb);
  if (!s.ok()) {
    log_.note_write_error("delivery state: " + s.ToString(), s);
    return tl::make_unexpected(io("writing delivery state", s));
  }
  return {};
}

tl::expected<std::vector<append_result>, error>
delivery_store::append_with_state(partition_writer& writer, const std::vector<new_event>& events,
                                  state_batch& state, std::optional<error>& state_error) {
  if (state.empty())
    return writer.append(events);
  if ((state_error = injected_fault(state)))
    return writer.append(events);
  bool staged = false;
  auto appended = writer.append(events, [&](rocksdb::WriteBatch& wb) {
    stage(state, wb);
    staged = true;
  });
  if (!appended && staged)
    state_error = appended.error(); // lost with the events
  return appended;
}

tl::expected<std::optional<std::uint64_t>, error>
delivery_store::cursor(const std::string& agent, std::uint32_t topic_id,
                       std::uint32_t partition) const {
  std::string v;
  auto s = log_.db_->Get(rocksdb::ReadOptions{}, log_.cursors_,
                         group_prefix(agent, topic_id, partition), &v);
  if (s.IsNotFound())
    return std::optional<std::uint64_t>{};
  if (!s.ok() || v.size() != 8)
    return tl::make_unexpected(io("reading cursor", s));
  return std::optional<std::uint64_t>{keys::get_u64(v, 0)};
}

tl::expected<std::vector<pending_record>, error>
delivery_store::pending(const std::string& agent, std::uint32_t topic_id,
                        std::uint32_t partition) const {
  std::vector<pending_record> out;
  auto prefix = group_prefix(agent, topic_id, partition);
  std::unique_ptr<rocksdb::Iterator> it{
    log_.db_->NewIterator(rocksdb::ReadOptions{}, log_.pending_)};
  for (it->Seek(prefix); it->Valid() && it->key().starts_with(prefix); it->Next()) {
    auto k = it->key().ToStringView();
    if (k.size() != prefix.size() + 8)
      continue;
    auto r = pending_from(it->value().ToStringView(), keys::get_u64(k, prefix.size()));
    if (!r)
      return tl::make_unexpected(error{errc::io_error, "corrupt pending record"});
    out.push_back(std::move(*r));
  }
  if (!it->status().ok())
    return tl::make_unexpected(io("reading pending", it->status()));
  return out;
}

tl::expected<std::optional<pending_record>, error>
delivery_store::pending_at(const std::string& agent, std::uint32_t topic_id,
                           std::uint32_t partition, std::uint64_t offset) const {
  std::string v;
  auto s = log_.db_->Get(rocksdb::ReadOptions{}, log_.pending_,
                         pending_key(agent, topic_id, partition, offset), &v);
  if (s.IsNotFound())
    return std::optional<pending_record>{};
  if (!s.ok())
    return tl::make_unexpected(io("reading pending", s));
  return pending_from(v, offset);
}

tl::expected<std::optional<stored_result>, error>
delivery_store::result(const std::string& event_id, const std::string& agent) const {
  std::string v;
  auto s = log_.db_->Get(rocksdb::ReadOptions{}, log_.results_, result_key(event_id, agent), &v);
  if (s.IsNotFound())
    return std::optional<stored_result>{};
  if (!s.ok())
    return tl::make_unexpected(io("reading result", s));
  return result_from(v, static_cast<std::int64_t>(log_.opts_.results_ttl.count()) * 1000,
                     log_.opts_.clock());
}

tl::expected<std::vector<std::pair<std::uint64_t, std::uint32_t>>, error>
delivery_store::attempts_in(const std::string& agent, std::uint32_t topic_id,
                            std::uint32_t partition, std::uint64_t lo, std::uint64_t hi) const {
  std::vector<std::pair<std::uint64_t, std::uint32_t>> out;
  auto first = attempts_key(agent, topic_id, partition, lo);
  auto prefix = first.substr(0, first.size() - 8);
  rocksdb::ReadOptions ro;
  std::unique_ptr<rocksdb::Iterator> it{log_.db_->NewIterator(ro, log_.results_)};
  auto ttl_us = static_cast<std::int64_t>(log_.opts_.results_ttl.count()) * 1000;
  auto now = log_.opts_.clock();
  for (it->Seek(first); it->Valid() && it->key().starts_with(prefix); it->Next()) {
    std::string_view k{it->key().data(), it->key().size()};
    if (k.size() != prefix.size() + 8)
      continue;
    auto offset = keys::get_u64(k, prefix.size());
    if (offset > hi)
      break;
    if (auto r = result_from({it->value().data(), it->value().size()}, ttl_us, now))
      out.emplace_back(offset, r->attempts);
  }
  if (!it->status().ok())
    return tl::make_unexpected(io("reading attempts", it->status()));
  return out;
}

tl::expected<std::optional<dlq_entry>, error> delivery_store::dlq_get(const std::string& id) const {
  std::string v;
  auto s = log_.db_->Get(rocksdb::ReadOptions{}, log_.dlq_, id, &v);
  if (s.IsNotFound())
    return std::optional<dlq_entry>{};
  if (!s.ok())
    return tl::make_unexpected(io("reading DLQ entry", s));
  return dlq_from(v);
}

tl::expected<std::vector<dlq_entry>, error> delivery_store::dlq_list(const std::string& agent,
                                                                     const std::string& topic,
                                                                     const std::string& after_id,
                                                                     std::size_t limit) const {
  std::vector<dlq_entry> out;
  std::unique_ptr<rocksdb::Iterator> it{log_.db_->NewIterator(rocksdb::ReadOptions{}, log_.dlq_)};
  if (after_id.empty())
    it->SeekToFirst();
  else
    it->Seek(after_id + '\0');
  for (; it->Valid() && out.size() < limit; it->Next()) {
    auto e = dlq_from(it->value().ToString());
    if (!e)
      continue;
    if ((!agent.empty() && e->agent != agent) || (!topic.empty() && e->topic != topic))
      continue;
    out.push_back(std::move(*e));
  }
  if (!it->status().ok())
    return tl::make_unexpected(io("listing DLQ", it->status()));
  return out;
}

tl::expected<std::uint64_t, error> delivery_store::dlq_count() const {
  std::uint64_t n = 0;
  std::unique_ptr<rocksdb::Iterator> it{log_.db_->NewIterator(rocksdb::ReadOptions{}, log_.dlq_)};
  for (it->SeekToFirst(); it->Valid(); it->Next())
    ++n;
  if (!it->status().ok())
    return tl::make_unexpected(io("counting DLQ", it->status()));
  return n;
}

tl::expected<std::optional<std::string>, error> delivery_store::meta(const std::string& key) const {
  std::string v;
  auto s = log_.db_->Get(rocksdb::ReadOptions{}, log_.meta_, key, &v);
  if (s.IsNotFound())
    return std::optional<std::string>{};
  if (!s.ok())
    return tl::make_unexpected(io("reading " + key, s));
  return std::optional<std::string>{std::move(v)};
}

tl::expected<std::vector<std::pair<std::string, std::string>>, error>
delivery_store::meta_prefix(const std::string& prefix) const {
  std::vector<std::pair<std::string, std::string>> out;
  std::unique_ptr<rocksdb::Iterator> it{log_.db_->NewIterator(rocksdb::ReadOptions{}, log_.meta_)};
  for (it->Seek(prefix); it->Valid() && it->key().starts_with(prefix); it->Next())
    out.emplace_back(it->key().ToString(), it->value().ToString());
  if (!it->status().ok())
    return tl::make_unexpected(io("reading " + prefix, it->status()));
  return out;
}

tl::expected<std::optional<std::string>, error>
delivery_store::event_at(std::uint32_t topic_id, std::uint32_t partition,
                         std::uint64_t offset) const {
  std::string v;
  auto s = log_.db_->Get(rocksdb::ReadOptions{}, log_.events_of(topic_id, partition),
                         keys::event_key(topic_id, partition, offset), &v);
  if (s.IsNotFound())
    return std::optional<std::string>{};
  if (!s.ok() || v.size() <= 8)
    return tl::make_unexpected(io("reading event", s));
  return std::optional<std::string>{v.substr(8)};
}

std::string delivery_store::dlq_id(const std::string& agent, std::uint32_t topic_id,
                                   std::uint32_t partition, std::uint64_t offset) {
  std::uint64_t h = 1469598103934665603ULL;
  auto mix = [&h](const std::string& bytes) {
    for (unsigned char c : bytes) {
      h ^= c;
      h *= 1099511628211ULL;
    }
  };
  mix(pending_key(agent, topic_id, partition, offset));
  static constexpr char hex[] = "0123456789abcdef";
  std::string id = "dlq-";
  for (int i = 15; i >= 0; --i)
    id += hex[(h >> (i * 4)) & 0xf];
  return id;
}

} // namespace nerve::persistence
