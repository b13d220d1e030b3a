// The keyspace's commands over the `kv` column family. Records (also in
// docs/architecture.md, "Keyspace"):
//   'm' · position (8) · key        → type (1) · field count (8) · expiry ms (8, 0: none)
//   'f' · key length (4) · key · field → the value
//   'x' · expiry ms (8) · position (8) · key → empty: the sweep's index
// where position is a fixed 64-bit hash of the key (SCAN's cursor order).
// The length prefix keeps one key's fields apart from another's whose name
// it prefixes. Integers are big-endian, so bytewise order is numeric.
#include "persistence/keyspace.hpp"

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstdlib>
#include <future>
#include <limits>
#include <map>
#include <memory>
#include <set>

#include <rocksdb/db.h>
#include <rocksdb/write_batch.h>

#include "persistence/glob.hpp"
#include "persistence/keys.hpp"

namespace nerve::persistence {

namespace {

constexpr char meta_tag = 'm';
constexpr char field_tag = 'f';
constexpr char expiry_tag = 'x';
constexpr char hash_type = 1;
constexpr std::size_t meta_value_bytes = 17;

/// FNV-1a over the key's bytes, never 0 (SCAN's "start" and "done"). Fixed
/// forever: stored keys are ordered by it and clients hold cursors.
std::uint64_t position_of(std::string_view key) {
  std::uint64_t h = 0xcbf29ce484222325ULL;
  for (unsigned char c : key) {
    h ^= c;
    h *= 0x100000001b3ULL;
  }
  return h == 0 ? 1 : h;
}

std::string meta_key_at(std::uint64_t position) {
  std::string k(1, meta_tag);
  keys::put_u64(k, position);
  return k;
}

std::string meta_key(std::string_view key) {
  std::string k = meta_key_at(position_of(key));
  k.append(key);
  return k;
}

std::string field_prefix(std::string_view key) {
  std::string k(1, field_tag);
  keys::put_u32(k, static_cast<std::uint32_t>(key.size()));
  k.append(key);
  return k;
}

std::string field_key(std::string_view key, std::string_view field) {
  std::string k = field_prefix(key);
  k.append(field);
  return k;
}

std::string expiry_key(std::int64_t expire_ms, std::string_view key) {
  std::string k(1, expiry_tag);
  keys::put_u64(k, static_cast<std::uint64_t>(expire_ms));
  keys::put_u64(k, position_of(key));
  k.append(key);
  return k;
}

/// The first key after every key that starts with `prefix` (whose first
/// byte is a tag, never 0xff).
std::string prefix_end(std::string prefix) {
  while (!prefix.empty() && static_cast<unsigned char>(prefix.back()) == 0xff)
    prefix.pop_back();
  prefix.back() = static_cast<char>(static_cast<unsigned char>(prefix.back()) + 1);
  return prefix;
}

error wrong_type() {
  return {errc::invalid, "WRONGTYPE Operation against a key holding the wrong kind of value"};
}

error command_error(const std::string& text) {
  return {errc::invalid, "ERR " + text};
}

error storage_error(const std::string& what, const rocksdb::Status& s) {
  return {errc::io_error, "ERR storage: " + what + ": " + s.ToString()};
}

error corrupt(std::string_view key) {
  return {errc::io_error,
          "ERR storage: the keyspace record of key '" + std::string{key}
            + "' is corrupt; DEL the key, or restore the data directory from a backup"};
}

/// Redis' string2ll(): what HINCRBY takes as an integer.
std::optional<std::int64_t> to_integer(std::string_view text) {
  constexpr std::size_t digits_max = 20; // LONG_STR_SIZE - 1
  if (text.empty() || text.size() > digits_max)
    return std::nullopt;
  if (text == "0")
    return 0;
  std::size_t i = 0;
  const bool negative = text[0] == '-';
  if (negative && ++i == text.size())
    return std::nullopt;
  if (text[i] < '1' || text[i] > '9')
    return std::nullopt;
  std::uint64_t v = 0;
  for (; i < text.size(); ++i) {
    if (text[i] < '0' || text[i] > '9')
      return std::nullopt;
    const auto digit = static_cast<std::uint64_t>(text[i] - '0');
    if (v > (std::numeric_limits<std::uint64_t>::max() - digit) / 10)
      return std::nullopt;
    v = v * 10 + digit;
  }
  constexpr auto max = static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max());
  if (negative) {
    if (v > max + 1)
      return std::nullopt;
    return v == max + 1 ? std::numeric_limits<std::int64_t>::min() : -static_cast<std::int64_t>(v);
  }
  if (v > max)
    return std::nullopt;
  return static_cast<std::int64_t>(v);
}

bool same_type_name(std::string_view wanted, key_type t) {
  auto name = type_name(t);
  return wanted.size() == name.size()
         && std::equal(wanted.begin(), wanted.end(), name.begin(), [](char a, char b) {
              return std::tolower(static_cast<unsigned char>(a)) == b;
            });
}

} // namespace

std::string_view type_name(key_type t) {
  switch (t) {
    case key_type::hash:
      return "hash";
    case key_type::stream:
      return "stream";
    case key_type::none:
      break;
  }
  return "none";
}

stream_catalog topics_as_streams(const event_log& log) {
  return {[&log](std::string_view name) { return log.find_topic(std::string{name}).has_value(); },
          [&log] {
            std::vector<std::string> names;
            for (auto& t : log.topics())
              names.push_back(t.name);
            return names;
          }};
}

// -- argument parsing ----------------------------------------------------------

tl::expected<std::int64_t, error> parse_integer(std::string_view text) {
  if (auto v = to_integer(text))
    return *v;
  return tl::make_unexpected(command_error("value is not an integer or out of range"));
}

namespace {

bool equals_word(std::string_view text, std::string_view lower) {
  return text.size() == lower.size()
         && std::equal(text.begin(), text.end(), lower.begin(), [](char a, char b) {
              return std::tolower(static_cast<unsigned char>(a)) == b;
            });
}

} // namespace

tl::expected<expire_flags, error> parse_expire_flags(const std::vector<std::string>& words) {
  expire_flags f;
  for (const auto& w : words) {
    if (equals_word(w, "nx"))
      f.nx = true;
    else if (equals_word(w, "xx"))
      f.xx = true;
    else if (equals_word(w, "gt"))
      f.gt = true;
    else if (equals_word(w, "lt"))
      f.lt = true;
    else
      return tl::make_unexpected(command_error("Unsupported option " + w));
  }
  if (f.nx && (f.xx || f.gt || f.lt))
    return tl::make_unexpected(
      command_error("NX and XX, GT or LT options at the same time are not compatible"));
  if (f.gt && f.lt)
    return tl::make_unexpected(
      command_error("GT and LT options at the same time are not compatible"));
  return f;
}

tl::expected<scan_request, error> parse_scan(const std::vector<std::string>& args) {
  if (args.empty())
    return tl::make_unexpected(command_error("wrong number of arguments for 'scan' command"));
  scan_request r;
  // Redis reads the cursor with strtoul() on its C string: a sign is taken
  // (-1 wraps), an empty cursor is 0, and an embedded NUL ends it.
  const char* text = args[0].c_str();
  char* end = nullptr;
  errno = 0;
  r.cursor = std::strtoull(text, &end, 10);
  if (std::isspace(static_cast<unsigned char>(text[0])) || *end != '\0' || errno == ERANGE)
    return tl::make_unexpected(command_error("invalid cursor"));
  for (std::size_t i = 1; i < args.size(); i += 2) {
    const bool has_value = i + 1 < args.size();
    if (has_value && equals_word(args[i], "count")) {
      auto n = to_integer(args[i + 1]);
      if (!n)
        return tl::make_unexpected(command_error("value is not an integer or out of range"));
      if (*n < 1)
        return tl::make_unexpected(command_error("syntax error"));
      r.count = static_cast<std::size_t>(*n);
    } else if (has_value && equals_word(args[i], "match")) {
      r.match = args[i + 1];
    } else if (has_value && equals_word(args[i], "type")) {
      r.type = args[i + 1];
    } else {
      return tl::make_unexpected(command_error("syntax error"));
    }
  }
  return r;
}

// -- keyspace --------------------------------------------------------------------

keyspace::keyspace(event_log& log, keyspace_options opts) : log_(log), opts_(std::move(opts)) {
  if (!opts_.clock)
    opts_.clock = log_.opts().clock;
}

std::int64_t keyspace::now_ms() const {
  return opts_.clock() / 1000;
}

bool keyspace::is_stream(std::string_view key) const {
  return opts_.streams.contains && opts_.streams.contains(key);
}

std::optional<error> keyspace::check_sizes(std::string_view key,
                                           const std::vector<field_value>& fields) const {
  const auto& l = opts_.limits;
  if (key.size() > l.key_bytes_max)
    return command_error("key is " + std::to_string(key.size()) + " bytes; keys take at most "
                         + std::to_string(l.key_bytes_max));
  for (const auto& [field, value] : fields) {
    if (field.size() > l.field_bytes_max)
      return command_error("field is " + std::to_string(field.size())
                           + " bytes; fields take at most " + std::to_string(l.field_bytes_max));
    if (value.size() > l.value_bytes_max)
      return command_error("value is " + std::to_string(value.size())
                           + " bytes; values take at most " + std::to_string(l.value_bytes_max));
  }
  return std::nullopt;
}

namespace {

std::string meta_value(std::uint64_t fields, std::int64_t expire_ms) {
  std::string v(1, hash_type);
  keys::put_u64(v, fields);
  keys::put_u64(v, static_cast<std::uint64_t>(expire_ms));
  return v;
}

/// Records read by one MultiGet, at one sequence number.
struct multi_read {
  std::vector<rocksdb::PinnableSlice> values;
  std::vector<rocksdb::Status> statuses;

  /// The first failure other than "not found", if any.
  [[nodiscard]] const rocksdb::Status* failure() const {
    for (const auto& s : statuses)
      if (!s.ok() && !s.IsNotFound())
        return &s;
    return nullptr;
  }
};

multi_read read_many(rocksdb::DB& db, rocksdb::ColumnFamilyHandle* family,
                     const std::vector<std::string>& names) {
  std::vector<rocksdb::Slice> lookup(names.begin(), names.end());
  multi_read r{std::vector<rocksdb::PinnableSlice>(names.size()),
               std::vector<rocksdb::Status>(names.size())};
  if (!names.empty())
    db.MultiGet(rocksdb::ReadOptions{}, family, lookup.size(), lookup.data(), r.values.data(),
                r.statuses.data());
  return r;
}

} // namespace

std::optional<keyspace::key_meta> keyspace::parse_meta(std::string_view value) {
  if (value.size() != meta_value_bytes || value[0] != hash_type)
    return std::nullopt;
  return key_meta{keys::get_u64(value, 1), static_cast<std::int64_t>(keys::get_u64(value, 9))};
}

tl::expected<std::optional<keyspace::key_meta>, error>
keyspace::live_meta(std::string_view key, rocksdb::WriteBatch* cleanup) const {
  rocksdb::PinnableSlice value;
  auto s = log_.db_->Get(rocksdb::ReadOptions{}, log_.kv_, meta_key(key), &value);
  if (s.IsNotFound())
    return std::nullopt;
  if (!s.ok())
    return tl::make_unexpected(storage_error("reading a key", s));
  auto m = parse_meta(value.ToStringView());
  if (!m)
    return tl::make_unexpected(corrupt(key));
  if (live_at(*m, now_ms()))
    return *m;
  if (cleanup)
    if (auto e = stage_delete(key, *m, *cleanup))
      return tl::make_unexpected(*e);
  return std::nullopt;
}

std::optional<error> keyspace::stage_delete(std::string_view key, const key_meta& meta,
                                            rocksdb::WriteBatch& batch) const {
  batch.Delete(log_.kv_, meta_key(key));
  if (meta.expire_ms != 0)
    batch.Delete(log_.kv_, expiry_key(meta.expire_ms, key));
  const auto prefix = field_prefix(key);
  const auto end = prefix_end(prefix);
  const rocksdb::Slice upper{end};
  rocksdb::ReadOptions ro;
  ro.iterate_upper_bound = &upper;
  std::unique_ptr<rocksdb::Iterator> it{log_.db_->NewIterator(ro, log_.kv_)};
  for (it->Seek(prefix); it->Valid(); it->Next())
    batch.Delete(log_.kv_, it->key());
  if (!it->status().ok())
    return storage_error("reading the fields of a key to delete", it->status());
  return std::nullopt;
}

std::optional<error> keyspace::wait_durable() const {
  auto done = std::make_shared<std::promise<std::optional<error>>>();
  auto answer = done->get_future();
  log_.after_durable([done](std::optional<error> e) { done->set_value(std::move(e)); });
  if (auto e = answer.get())
    return error{e->code, "ERR storage: " + e->message};
  return std::nullopt;
}

std::optional<error> keyspace::settle_read() const {
  // A write counts here from before it reaches the memtable until its fsync
  // answered, so a read that saw it finds it here (RocksDB publishes writes
  // with release/acquire) and waits as Redis answers no read before the
  // fsync of the writes it saw.
  if (unsynced_.load() == 0)
    return std::nullopt;
  return wait_durable();
}

template <class T, class Fn>
tl::expected<T, error> keyspace::write_command(Fn&& fn) {
  rocksdb::WriteBatch batch;
  std::optional<tl::expected<T, error>> result;
  bool wrote = false;
  {
    std::lock_guard<std::mutex> guard{write_mutex_};
    if (!log_.writable())
      return tl::make_unexpected(error{errc::io_error, "ERR storage: " + log_.refusal()});
    result.emplace(fn(batch));
    // An error writes nothing, also not what was staged before it.
    if (*result && batch.Count() > 0) {
      ++unsynced_;
      wrote = true;
      quiet_perf_counters();
      auto s = log_.db_->Write(rocksdb::WriteOptions{}, &batch);
      if (!s.ok()) {
        --unsynced_;
        log_.note_write_error("keyspace write: " + s.ToString(), s);
        return tl::make_unexpected(storage_error("writing", s));
      }
    }
  }
  // Also an error may rest on what an unsynced write left ("not an integer").
  auto failed = settle_read();
  if (wrote)
    --unsynced_;
  if (failed)
    return tl::make_unexpected(*failed);
  return std::move(*result);
}

// -- hash commands -------------------------------------------------------------

template <class T, class Fn>
tl::expected<T, error> keyspace::write_hash(std::string_view key, Fn&& fn) {
  if (is_stream(key))
    return tl::make_unexpected(wrong_type());
  return write_command<T>([&](rocksdb::WriteBatch& batch) -> tl::expected<T, error> {
    auto meta = live_meta(key, &batch);
    if (!meta)
      return tl::make_unexpected(meta.error());
    return fn(batch, *meta);
  });
}

error keyspace::too_many_fields(std::uint64_t fields) const {
  return command_error(
    "the hash would hold " + std::to_string(fields) + " fields; a key holds at most "
    + std::to_string(opts_.limits.fields_per_key_max) + ": spread them over more keys");
}

tl::expected<std::int64_t, error> keyspace::hset(std::string_view key,
                                                 const std::vector<field_value>& fields) {
  if (fields.empty()) // else a new key would hold no field
    return tl::make_unexpected(command_error("wrong number of arguments for 'hset' command"));
  if (auto e = check_sizes(key, fields))
    return tl::make_unexpected(*e);
  return write_hash<std::int64_t>(
    key,
    [&](rocksdb::WriteBatch& batch,
        const std::optional<key_meta>& meta) -> tl::expected<std::int64_t, error> {
      key_meta m = meta.value_or(key_meta{});
      std::map<std::string_view, std::string_view> latest; // a field given twice: its last value
      for (const auto& [field, value] : fields)
        latest[field] = value;
      std::vector<std::string> names;
      names.reserve(latest.size());
      for (const auto& [field, value] : latest)
        names.push_back(field_key(key, field));
      std::uint64_t added = latest.size();
      if (meta) { // else every field is new (an expired key's went into the batch)
        auto found = read_many(*log_.db_, log_.kv_, names);
        if (auto* failed = found.failure())
          return tl::make_unexpected(storage_error("reading fields", *failed));
        added -= static_cast<std::uint64_t>(
          std::count_if(found.statuses.begin(), found.statuses.end(),
                        [](const rocksdb::Status& s) { return s.ok(); }));
      }
      if (m.fields + added > opts_.limits.fields_per_key_max)
        return tl::make_unexpected(too_many_fields(m.fields + added));
      std::size_t i = 0;
      for (const auto& [field, value] : latest)
        batch.Put(log_.kv_, names[i++], rocksdb::Slice{value.data(), value.size()});
      m.fields += added;
      batch.Put(log_.kv_, meta_key(key), meta_value(m.fields, m.expire_ms));
      return static_cast<std::int64_t>(added);
    });
}

tl::expected<std::optional<std::string>, error> keyspace::hget(std::string_view key,
                                                               std::string_view field) {
  if (is_stream(key))
    return tl::make_unexpected(wrong_type());
  // Both records at one sequence number.
  auto found = read_many(*log_.db_, log_.kv_, {meta_key(key), field_key(key, field)});
  if (auto* failed = found.failure())
    return tl::make_unexpected(storage_error("reading a field", *failed));
  std::optional<std::string> out;
  if (found.statuses[0].ok()) {
    auto m = parse_meta(found.values[0].ToStringView());
    if (!m)
      return tl::make_unexpected(corrupt(key));
    if (live_at(*m, now_ms()) && found.statuses[1].ok())
      out = found.values[1].ToString();
  }
  if (auto e = settle_read())
    return tl::make_unexpected(*e);
  return out;
}

tl::expected<std::vector<field_value>, error> keyspace::hgetall(std::string_view key) {
  if (is_stream(key))
    return tl::make_unexpected(wrong_type());
  // One iterator reads the metadata and the fields from one implicit snapshot.
  std::unique_ptr<rocksdb::Iterator> it{log_.db_->NewIterator(rocksdb::ReadOptions{}, log_.kv_)};
  const auto mkey = meta_key(key);
  it->Seek(mkey);
  std::vector<field_value> out;
  if (it->Valid() && it->key() == mkey) {
    auto m = parse_meta(it->value().ToStringView());
    if (!m)
      return tl::make_unexpected(corrupt(key));
    if (live_at(*m, now_ms())) {
      const auto prefix = field_prefix(key);
      out.reserve(m->fields);
      for (it->Seek(prefix); it->Valid() && it->key().starts_with(prefix); it->Next())
        out.emplace_back(it->key().ToStringView().substr(prefix.size()), it->value().ToString());
    }
  }
  if (!it->status().ok())
    return tl::make_unexpected(storage_error("reading a hash", it->status()));
  if (auto e = settle_read())
    return tl::make_unexpected(*e);
  return out;
}

tl::expected<std::int64_t, error> keyspace::hincrby(std::string_view key, std::string_view field,
                                                    std::int64_t increment) {
  if (auto e = check_sizes(key, {{std::string{field}, {}}}))
    return tl::make_unexpected(*e);
  return write_hash<std::int64_t>(
    key,
    [&](rocksdb::WriteBatch& batch,
        const std::optional<key_meta>& meta) -> tl::expected<std::int64_t, error> {
      key_meta m = meta.value_or(key_meta{});
      const auto fkey = field_key(key, field);
      std::int64_t current = 0;
      bool found = false;
      if (meta) {
        std::string value;
        auto s = log_.db_->Get(rocksdb::ReadOptions{}, log_.kv_, fkey, &value);
        if (!s.ok() && !s.IsNotFound())
          return tl::make_unexpected(storage_error("reading a field", s));
        found = s.ok();
        if (found) {
          auto v = to_integer(value);
          if (!v)
            return tl::make_unexpected(command_error("hash value is not an integer"));
          current = *v;
        }
      }
      constexpr auto lowest = std::numeric_limits<std::int64_t>::min();
      constexpr auto highest = std::numeric_limits<std::int64_t>::max();
      if ((increment < 0 && current < 0 && increment < lowest - current)
          || (increment > 0 && current > 0 && increment > highest - current))
        return tl::make_unexpected(command_error("increment or decrement would overflow"));
      const auto next = current + increment;
      if (!found) {
        if (m.fields + 1 > opts_.limits.fields_per_key_max)
          return tl::make_unexpected(too_many_fields(m.fields + 1));
        ++m.fields;
        batch.Put(log_.kv_, meta_key(key), meta_value(m.fields, m.expire_ms));
      }
      batch.Put(log_.kv_, fkey, std::to_string(next));
      return next;
    });
}

tl::expected<std::int64_t, error> keyspace::hdel(std::string_view key,
                                                 const std::vector<std::string>& fields) {
  return write_hash<std::int64_t>(
    key,
    [&](rocksdb::WriteBatch& batch,
        const std::optional<key_meta>& meta) -> tl::expected<std::int64_t, error> {
      if (!meta)
        return 0;
      std::set<std::string_view> distinct(fields.begin(), fields.end());
      std::vector<std::string> names;
      names.reserve(distinct.size());
      for (auto field : distinct)
        names.push_back(field_key(key, field));
      auto found = read_many(*log_.db_, log_.kv_, names);
      if (auto* failed = found.failure())
        return tl::make_unexpected(storage_error("reading fields", *failed));
      std::uint64_t removed = 0;
      for (std::size_t i = 0; i < names.size(); ++i)
        if (found.statuses[i].ok()) {
          batch.Delete(log_.kv_, names[i]);
          ++removed;
        }
      if (removed == 0)
        return 0;
      if (removed >= meta->fields) { // its last field: the key goes
        batch.Delete(log_.kv_, meta_key(key));
        if (meta->expire_ms != 0)
          batch.Delete(log_.kv_, expiry_key(meta->expire_ms, key));
      } else {
        batch.Put(log_.kv_, meta_key(key), meta_value(meta->fields - removed, meta->expire_ms));
      }
      return static_cast<std::int64_t>(removed);
    });
}

tl::expected<std::int64_t, error> keyspace::hlen(std::string_view key) {
  if (is_stream(key))
    return tl::make_unexpected(wrong_type());
  auto meta = live_meta(key, nullptr);
  if (!meta)
    return tl::make_unexpected(meta.error());
  if (auto e = settle_read())
    return tl::make_unexpected(*e);
  return *meta ? static_cast<std::int64_t>((*meta)->fields) : 0;
}

// -- key commands --------------------------------------------------------------

tl::expected<std::int64_t, error> keyspace::exists(const std::vector<std::string>& keys_in) {
  std::int64_t found = 0;
  std::vector<std::string> names;
  for (const auto& key : keys_in) {
    if (is_stream(key))
      ++found;
    else
      names.push_back(meta_key(key));
  }
  auto read = read_many(*log_.db_, log_.kv_, names);
  if (auto* failed = read.failure())
    return tl::make_unexpected(storage_error("reading keys", *failed));
  const auto now = now_ms();
  for (std::size_t i = 0; i < names.size(); ++i) {
    if (!read.statuses[i].ok())
      continue;
    auto m = parse_meta(read.values[i].ToStringView());
    if (!m)
      return tl::make_unexpected(corrupt(std::string_view{names[i]}.substr(9)));
    if (live_at(*m, now))
      ++found;
  }
  if (auto e = settle_read())
    return tl::make_unexpected(*e);
  return found;
}

tl::expected<key_type, error> keyspace::type(std::string_view key) {
  if (is_stream(key))
    return key_type::stream;
  auto meta = live_meta(key, nullptr);
  if (!meta)
    return tl::make_unexpected(meta.error());
  if (auto e = settle_read())
    return tl::make_unexpected(*e);
  return *meta ? key_type::hash : key_type::none;
}

tl::expected<std::int64_t, error> keyspace::del(const std::vector<std::string>& keys_in) {
  for (const auto& key : keys_in)
    if (is_stream(key))
      return tl::make_unexpected(
        command_error("DEL refused: '" + key
                      + "' is a stream, a nerve topic; topics are removed by retention, not DEL"));
  return write_command<std::int64_t>(
    [&](rocksdb::WriteBatch& batch) -> tl::expected<std::int64_t, error> {
      std::set<std::string_view> seen; // the batch is not read back: DEL a a deletes once
      std::int64_t deleted = 0;
      for (const auto& key : keys_in) {
        if (!seen.insert(key).second)
          continue;
        auto meta = live_meta(key, &batch);
        if (!meta)
          return tl::make_unexpected(meta.error());
        if (!*meta)
          continue;
        if (auto e = stage_delete(key, **meta, batch))
          return tl::make_unexpected(*e);
        ++deleted;
      }
      return deleted;
    });
}

tl::expected<bool, error> keyspace::expire(std::string_view key, std::int64_t seconds,
                                           expire_flags flags) {
  if (is_stream(key))
    return tl::make_unexpected(command_error(
      "EXPIRE refused: '" + std::string{key}
      + "' is a stream, a nerve topic; topics expire by retention (storage.retention)"));
  // Redis checks the time before it looks the key up: an overflow is an
  // error even for a missing key.
  constexpr auto highest = std::numeric_limits<std::int64_t>::max();
  constexpr auto lowest = std::numeric_limits<std::int64_t>::min();
  const auto invalid = command_error("invalid expire time in 'expire' command");
  if (seconds > highest / 1000 || seconds < lowest / 1000)
    return tl::make_unexpected(invalid);
  const auto now = now_ms();
  const auto when_rel = seconds * 1000;
  if (when_rel > highest - now)
    return tl::make_unexpected(invalid);
  const auto when = when_rel + now;
  return write_command<bool>([&](rocksdb::WriteBatch& batch) -> tl::expected<bool, error> {
    auto meta = live_meta(key, &batch);
    if (!meta)
      return tl::make_unexpected(meta.error());
    if (!*meta)
      return false;
    key_meta m = **meta;
    const bool has = m.expire_ms != 0;
    if ((flags.nx && has) || (flags.xx && !has) || (flags.gt && (!has || when <= m.expire_ms))
        || (flags.lt && has && when >= m.expire_ms))
      return false;
    if (when <= now) { // already past: the key goes (Redis: deleted, answers 1)
      if (auto e = stage_delete(key, m, batch))
        return tl::make_unexpected(*e);
      return true;
    }
    if (has)
      batch.Delete(log_.kv_, expiry_key(m.expire_ms, key));
    batch.Put(log_.kv_, expiry_key(when, key), rocksdb::Slice{});
    batch.Put(log_.kv_, meta_key(key), meta_value(m.fields, when));
    return true;
  });
}

tl::expected<std::int64_t, error> keyspace::ttl(std::string_view key) {
  if (is_stream(key))
    return -1;
  auto meta = live_meta(key, nullptr);
  if (!meta)
    return tl::make_unexpected(meta.error());
  if (auto e = settle_read())
    return tl::make_unexpected(*e);
  if (!*meta)
    return -2;
  if ((*meta)->expire_ms == 0)
    return -1;
  const auto left_ms = std::max<std::int64_t>(0, (*meta)->expire_ms - now_ms());
  return (left_ms + 500) / 1000; // Redis rounds to the nearest second
}

tl::expected<bool, error> keyspace::persist(std::string_view key) {
  if (is_stream(key))
    return false;
  return write_command<bool>([&](rocksdb::WriteBatch& batch) -> tl::expected<bool, error> {
    auto meta = live_meta(key, &batch);
    if (!meta)
      return tl::make_unexpected(meta.error());
    if (!*meta || (*meta)->expire_ms == 0)
      return false;
    batch.Delete(log_.kv_, expiry_key((*meta)->expire_ms, key));
    batch.Put(log_.kv_, meta_key(key), meta_value((*meta)->fields, 0));
    return true;
  });
}

// -- listing -------------------------------------------------------------------

tl::expected<std::uint64_t, error>
keyspace::walk(std::uint64_t from,
               const std::function<bool(const std::string&, key_type)>& fn) const {
  // The streams from `from` on, in the same (position, name) order as the
  // metadata records; a name that is both is the stream.
  std::vector<std::pair<std::uint64_t, std::string>> streams;
  if (opts_.streams.names)
    for (auto& name : opts_.streams.names()) {
      auto at = position_of(name);
      if (at >= from)
        streams.emplace_back(at, std::move(name));
    }
  std::sort(streams.begin(), streams.end());
  const std::string upper_key(1, meta_tag + 1);
  const rocksdb::Slice upper{upper_key};
  rocksdb::ReadOptions ro;
  ro.iterate_upper_bound = &upper;
  ro.fill_cache = false;
  std::unique_ptr<rocksdb::Iterator> it{log_.db_->NewIterator(ro, log_.kv_)};
  it->Seek(meta_key_at(from));
  const auto now = now_ms();
  std::size_t si = 0;
  std::optional<std::uint64_t> stopped_at; // the position whose keys end the walk
  std::string name;
  for (;;) {
    const bool have_kv = it->Valid();
    const bool have_stream = si < streams.size();
    if (!have_kv && !have_stream)
      break;
    std::uint64_t at = 0;
    key_type type = key_type::stream;
    int order = 1; // <0: the record comes first, 0: both the same name, >0: the stream
    if (have_kv) {
      auto k = it->key().ToStringView();
      if (k.size() < 9)
        return tl::make_unexpected(corrupt(k));
      at = keys::get_u64(k, 1);
      auto record_name = k.substr(9);
      if (!have_stream)
        order = -1;
      else if (at != streams[si].first)
        order = at < streams[si].first ? -1 : 1;
      else
        order = record_name.compare(streams[si].second);
      if (order < 0) {
        name.assign(record_name);
        auto m = parse_meta(it->value().ToStringView());
        if (!m)
          return tl::make_unexpected(corrupt(record_name));
        type = live_at(*m, now) ? key_type::hash : key_type::none;
        it->Next();
      } else if (order == 0) {
        it->Next(); // shadowed by the stream of that name
      }
    }
    if (order >= 0) {
      at = streams[si].first;
      name = std::move(streams[si].second);
      type = key_type::stream;
      ++si;
    }
    if (stopped_at && at != *stopped_at)
      return at;
    if (!fn(name, type) && !stopped_at)
      stopped_at = at;
  }
  if (!it->status().ok())
    return tl::make_unexpected(storage_error("listing keys", it->status()));
  return 0;
}

tl::expected<std::vector<std::string>, error> keyspace::keys(std::string_view pattern) {
  const bool everything = pattern == "*"; // as Redis: also the empty key
  std::vector<std::string> out;
  auto end = walk(0, [&](const std::string& name, key_type type) {
    if (type != key_type::none && (everything || glob_match(pattern, name)))
      out.push_back(name);
    return true;
  });
  if (!end)
    return tl::make_unexpected(end.error());
  if (auto e = settle_read())
    return tl::make_unexpected(*e);
  return out;
}

tl::expected<scan_page, error> keyspace::scan(const scan_request& request) {
  const auto count = std::clamp<std::size_t>(request.count, 1, opts_.limits.scan_count_max);
  const bool everything = !request.match || *request.match == "*";
  scan_page page;
  std::size_t visited = 0;
  auto next = walk(request.cursor, [&](const std::string& name, key_type type) {
    ++visited;
    if (type != key_type::none && (!request.type || same_type_name(*request.type, type))
        && (everything || glob_match(*request.match, name)))
      page.keys.push_back(name);
    return visited < count;
  });
  if (!next)
    return tl::make_unexpected(next.error());
  page.cursor = *next;
  if (auto e = settle_read())
    return tl::make_unexpected(*e);
  return page;
}

// -- expiry ----------------------------------------------------------------------

tl::expected<sweep_result, error> keyspace::sweep(std::size_t records_max) {
  std::lock_guard<std::mutex> guard{write_mutex_};
  if (!log_.writable())
    return tl::make_unexpected(error{errc::io_error, "ERR storage: " + log_.refusal()});
  // Expired: now > expiry, so every index entry before 'x' · now.
  std::string upper_key(1, expiry_tag);
  keys::put_u64(upper_key, static_cast<std::uint64_t>(now_ms()));
  const rocksdb::Slice upper{upper_key};
  rocksdb::ReadOptions ro;
  ro.iterate_upper_bound = &upper;
  std::unique_ptr<rocksdb::Iterator> it{log_.db_->NewIterator(ro, log_.kv_)};
  rocksdb::WriteBatch batch;
  sweep_result result;
  for (it->Seek(std::string(1, expiry_tag)); it->Valid(); it->Next()) {
    if (static_cast<std::size_t>(batch.Count()) >= records_max) {
      result.more = true;
      break;
    }
    auto k = it->key().ToStringView();
    if (k.size() < 17)
      return tl::make_unexpected(corrupt(k));
    const auto when = static_cast<std::int64_t>(keys::get_u64(k, 1));
    const auto key = k.substr(17);
    std::string value;
    auto s = log_.db_->Get(rocksdb::ReadOptions{}, log_.kv_, meta_key(key), &value);
    if (!s.ok() && !s.IsNotFound())
      return tl::make_unexpected(storage_error("reading an expired key", s));
    auto m = s.ok() ? parse_meta(value) : std::nullopt;
    if (!m || m->expire_ms != when) { // an index entry left behind; none is written so
      batch.Delete(log_.kv_, it->key());
      continue;
    }
    if (auto e = stage_delete(key, *m, batch))
      return tl::make_unexpected(*e);
    ++result.keys;
  }
  if (!it->status().ok())
    return tl::make_unexpected(storage_error("reading the expiry index", it->status()));
  result.records = static_cast<std::size_t>(batch.Count());
  if (result.records > 0) {
    quiet_perf_counters();
    auto s = log_.db_->Write(rocksdb::WriteOptions{}, &batch);
    if (!s.ok()) {
      log_.note_write_error("keyspace sweep: " + s.ToString(), s);
      return tl::make_unexpected(storage_error("sweeping expired keys", s));
    }
  }
  return result;
}

} // namespace nerve::persistence
