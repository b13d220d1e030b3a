// The small durable keyspace that Redis Streams workers keep beside their
// streams (retry counters, markers): hashes with expiry in the `kv` column
// family of the event log's RocksDB, with Redis 7's command semantics. The
// streams themselves are nerve topics; the caller names them
// (stream_catalog) and KEYS, SCAN, EXISTS and TYPE list them too. No RESP
// here: results are plain values, errors carry Redis' reply text.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <tl/expected.hpp>

#include "persistence/event_log.hpp"

namespace nerve::persistence {

/// What TYPE answers for a key.
enum class key_type { none, hash, stream };

/// "none", "hash" or "stream".
[[nodiscard]] std::string_view type_name(key_type t);

/// The streams (nerve topics) that share the keyspace's names. Both
/// functions must agree and be safe to call from any thread; either may be
/// empty (no streams).
struct stream_catalog {
  std::function<bool(std::string_view)> contains;
  std::function<std::vector<std::string>()> names;
};

/// The topics of `log` as streams (a node's own topics).
[[nodiscard]] stream_catalog topics_as_streams(const event_log& log);

/// Bounds (STYLE.md: bound everything); a command past one fails whole with
/// an ERR that names the bound.
struct keyspace_limits {
  std::size_t key_bytes_max = 64ULL << 10;
  std::size_t field_bytes_max = 64ULL << 10;
  std::size_t value_bytes_max = 1ULL << 20;
  std::uint64_t fields_per_key_max = 100'000;
  /// SCAN's COUNT is a hint; larger ones visit this many keys per call.
  std::size_t scan_count_max = 100'000;
};

struct keyspace_options {
  clock_fn clock; ///< µs since the epoch; empty: the log's clock
  stream_catalog streams;
  keyspace_limits limits;
};

/// EXPIRE's NX | XX | GT | LT; XX goes with GT or LT, NX with none.
struct expire_flags {
  bool nx = false; ///< only when the key has no expiry
  bool xx = false; ///< only when it has one
  bool gt = false; ///< only when the new expiry is later (none counts as infinite)
  bool lt = false; ///< only when the new expiry is sooner (none counts as infinite)
};

/// SCAN's arguments.
struct scan_request {
  std::uint64_t cursor = 0;
  std::optional<std::string> match; ///< a glob (glob.hpp); none or "*": every key
  std::size_t count = 10;           ///< keys to visit, a hint
  std::optional<std::string> type;  ///< "hash", "stream" (any case); other names match none
};

/// One SCAN answer: the keys found and where to go on; cursor 0 when done.
struct scan_page {
  std::uint64_t cursor = 0;
  std::vector<std::string> keys;
};

/// What one sweep removed.
struct sweep_result {
  std::size_t keys = 0;    ///< expired keys deleted
  std::size_t records = 0; ///< their records (metadata, fields, expiry entry)
  bool more = false;       ///< the budget ran out before every expired key went
};

using field_value = std::pair<std::string, std::string>;

/// Redis hashes with expiry over one event_log, which must outlive it. Keys,
/// fields and values are binary-safe. Every method may be called from any
/// thread. Errors: errc::invalid with Redis' reply text as the message
/// ("WRONGTYPE ...", "ERR ..."), or errc::io_error when storage failed (its
/// message also starts with "ERR "), so the listener sends the message as is.
///
/// Durability: a command is answered only once what it wrote, and anything
/// written before that it may have read, is synced to the WAL under the log's
/// fsync policy (`always`: the group commit of event_log::after_durable,
/// shared with event publishes). So these calls block for about one fsync
/// when there are writes; call them from a thread that may block, never from
/// an actor's scheduler. Writes (and the sweep) are serialized by one mutex
/// per keyspace, held while a command reads and writes RocksDB's memtable,
/// not across the fsync: read-modify-write commands are atomic, and
/// concurrent commands share fsyncs.
///
/// Streams: a name in the stream_catalog is a stream. Hash commands on it
/// answer WRONGTYPE; EXISTS, TYPE, KEYS and SCAN see it; TTL says -1 and
/// PERSIST 0; DEL and EXPIRE of a stream are refused with an ERR (topics go
/// by retention), and a DEL naming one deletes nothing.
class keyspace {
public:
  explicit keyspace(event_log& log, keyspace_options opts = {});
  keyspace(const keyspace&) = delete;
  keyspace& operator=(const keyspace&) = delete;

  /// HSET: sets the fields (a field given twice takes its last value);
  /// answers how many were new. The key's expiry stays. No field: Redis'
  /// arity error.
  [[nodiscard]] tl::expected<std::int64_t, error> hset(std::string_view key,
                                                       const std::vector<field_value>& fields);
  /// HGET: nothing for a missing field or key.
  [[nodiscard]] tl::expected<std::optional<std::string>, error> hget(std::string_view key,
                                                                     std::string_view field);
  /// HGETALL: field-value pairs in field byte order; none for a missing key.
  [[nodiscard]] tl::expected<std::vector<field_value>, error> hgetall(std::string_view key);
  /// HINCRBY: a missing field counts as 0; answers the new value.
  [[nodiscard]] tl::expected<std::int64_t, error>
  hincrby(std::string_view key, std::string_view field, std::int64_t increment);
  /// HDEL: answers how many fields went; the key goes with its last field.
  [[nodiscard]] tl::expected<std::int64_t, error> hdel(std::string_view key,
                                                       const std::vector<std::string>& fields);
  /// HLEN: 0 for a missing key.
  [[nodiscard]] tl::expected<std::int64_t, error> hlen(std::string_view key);

  /// EXISTS: how many of `keys` exist, a key named twice counting twice.
  [[nodiscard]] tl::expected<std::int64_t, error> exists(const std::vector<std::string>& keys);
  /// TYPE. Also what XADD asks before it makes a topic: Redis answers
  /// WRONGTYPE for an XADD to a hash's name.
  [[nodiscard]] tl::expected<key_type, error> type(std::string_view key);
  /// DEL: how many keys it deleted.
  [[nodiscard]] tl::expected<std::int64_t, error> del(const std::vector<std::string>& keys);

  /// EXPIRE: whether the expiry was set; a time not after now deletes the
  /// key (and answers true). ERR for a time past what milliseconds hold.
  [[nodiscard]] tl::expected<bool, error> expire(std::string_view key, std::int64_t seconds,
                                                 expire_flags flags = {});
  /// TTL: -2 missing, -1 no expiry, else seconds left rounded to nearest.
  [[nodiscard]] tl::expected<std::int64_t, error> ttl(std::string_view key);
  /// PERSIST: whether an expiry was removed.
  [[nodiscard]] tl::expected<bool, error> persist(std::string_view key);

  /// KEYS: every live key matching `pattern` ("*": all), streams included.
  [[nodiscard]] tl::expected<std::vector<std::string>, error> keys(std::string_view pattern);
  /// SCAN: visits about `count` keys from the cursor on. Keys are in the
  /// order of a fixed 64-bit hash of their bytes, and the cursor is the
  /// hash to go on from, so a key that exists from the first call to the
  /// last is returned exactly once, whatever changes meanwhile, and the
  /// cursor stays valid across restarts.
  [[nodiscard]] tl::expected<scan_page, error> scan(const scan_request& request);

  /// Deletes expired keys, oldest expiry first, until about `records_max`
  /// records went (a key goes whole). Reads never see expired keys anyway;
  /// this keeps them from filling the disk. Not synced: a key a crash brings
  /// back is still expired. For the owner's timer (say every 100 ms).
  [[nodiscard]] tl::expected<sweep_result, error> sweep(std::size_t records_max);

private:
  /// A key's metadata record (docs/architecture.md, "Keyspace").
  struct key_meta {
    std::uint64_t fields = 0;
    std::int64_t expire_ms = 0; ///< 0: none
  };

  /// Runs `fn(batch)` under the write mutex, writes what it staged (not
  /// when `fn` fails), then waits as settle_read() does.
  template <class T, class Fn>
  [[nodiscard]] tl::expected<T, error> write_command(Fn&& fn);
  /// write_command() for a hash command: WRONGTYPE for a stream, else
  /// `fn(batch, meta)` with the key's metadata if it is live.
  template <class T, class Fn>
  [[nodiscard]] tl::expected<T, error> write_hash(std::string_view key, Fn&& fn);
  [[nodiscard]] error too_many_fields(std::uint64_t fields) const;

  /// A metadata record's value; nothing when it has another shape (corrupt).
  [[nodiscard]] static std::optional<key_meta> parse_meta(std::string_view value);
  /// Whether a key with this metadata exists at `now_ms` (Redis: until
  /// after its expiry's millisecond).
  [[nodiscard]] static bool live_at(const key_meta& meta, std::int64_t now_ms) {
    return meta.expire_ms == 0 || now_ms <= meta.expire_ms;
  }
  [[nodiscard]] std::int64_t now_ms() const;
  [[nodiscard]] bool is_stream(std::string_view key) const;
  [[nodiscard]] std::optional<error> check_sizes(std::string_view key,
                                                 const std::vector<field_value>& fields) const;
  /// The key's metadata if it is live; an expired key's deletion goes into
  /// `cleanup` when given. Under the write mutex, or on a snapshot.
  [[nodiscard]] tl::expected<std::optional<key_meta>, error>
  live_meta(std::string_view key, rocksdb::WriteBatch* cleanup) const;
  /// Stages the deletion of the key with metadata `meta`: every record.
  [[nodiscard]] std::optional<error> stage_delete(std::string_view key, const key_meta& meta,
                                                  rocksdb::WriteBatch& batch) const;
  /// Waits for the fsync that covers every write completed before the call.
  [[nodiscard]] std::optional<error> wait_durable() const;
  /// After a read: waits for the writes it may have seen, if any are unsynced.
  [[nodiscard]] std::optional<error> settle_read() const;
  /// Calls `fn(name, type)` for each key from hash position `from` on, in
  /// scan order (type none: expired, not yet swept). Once `fn` returns
  /// false it goes on to the end of that position's keys (they share the
  /// cursor) and answers the next position, or 0 when no key is left.
  [[nodiscard]] tl::expected<std::uint64_t, error>
  walk(std::uint64_t from, const std::function<bool(const std::string&, key_type)>& fn) const;

  event_log& log_;
  keyspace_options opts_;
  std::mutex write_mutex_;
  /// Writes written to RocksDB whose fsync has not answered yet.
  mutable std::atomic<std::uint64_t> unsynced_{0};
};

/// An integer argument as Redis parses one (string2ll: an optional '-',
/// no '+', no spaces, no leading zeros, within int64); else
/// "ERR value is not an integer or out of range".
[[nodiscard]] tl::expected<std::int64_t, error> parse_integer(std::string_view text);

/// EXPIRE's option words after the seconds (NX XX GT LT, any case), with
/// Redis' errors for unknown or incompatible ones.
[[nodiscard]] tl::expected<expire_flags, error>
parse_expire_flags(const std::vector<std::string>& words);

/// SCAN's arguments after the command name: cursor [MATCH p] [COUNT n]
/// [TYPE t], with Redis' errors ("ERR invalid cursor", "ERR syntax error").
[[nodiscard]] tl::expected<scan_request, error> parse_scan(const std::vector<std::string>& args);

} // namespace nerve::persistence
