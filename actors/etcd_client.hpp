// A client of etcd v3 over its JSON gateway (docs/etcd.md): plain structs and one class
// with a pimpl, so actors and tests see no Beast or Asio. The control plane of cluster step 2.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <tl/expected.hpp>

namespace nerve::etcd {

/// What went wrong, by what a caller can do about it.
enum class errc {
  /// Nothing was executed: no endpoint could be reached before the deadline, a connection
  /// broke before the request was sent, or every member that answered has no leader.
  /// Safe to retry.
  unavailable,
  /// The request was sent but no answer came (deadline passed, connection broke after the
  /// send, or etcd itself timed out): the outcome is unknown, a write may have happened.
  /// Re-read before retrying a write.
  timeout,
  /// etcd answered with an error (bad request, lease not found, duplicate key in a txn, …).
  /// Retrying the same request will not help.
  rejected,
  /// The answer could not be understood (not JSON, a field of the wrong type, bad base64).
  protocol,
  /// A watch's start revision was compacted away: the watch has ended; re-read the range,
  /// then watch again from the revision read + 1.
  compacted,
};

struct error {
  errc code = errc::unavailable;
  std::string message; ///< what failed, where, and what etcd said
};

template <class T>
using result = tl::expected<T, error>;

/// One key-value pair as etcd stores it. Keys and values are arbitrary bytes.
struct kv {
  std::string key;
  std::string value;
  std::int64_t create_revision = 0; ///< 0: the key does not exist (a DELETE event's kv)
  std::int64_t mod_revision = 0;
  std::int64_t version = 0;
  std::int64_t lease = 0; ///< 0: no lease
};

struct range_result {
  std::int64_t revision = 0; ///< the store's revision when the range was read
  std::vector<kv> kvs;
  std::int64_t count = 0; ///< how many keys are in the range (more than kvs.size() when limited)
  bool more = false;      ///< a limit cut the answer short
};

/// One comparison of a txn, on the key's current state (a missing key has all numbers 0).
struct compare {
  enum class target { version, create, mod, value, lease };
  enum class op { equal, greater, less, not_equal };
  std::string key;
  target what = target::mod;
  op result = op::equal;
  std::int64_t number = 0; ///< for version, create, mod, lease
  std::string value;       ///< for value

  /// The key does not exist (create_revision == 0).
  static compare absent(std::string key) {
    return {std::move(key), target::create, op::equal, 0, {}};
  }
  /// The key was created at `rev` (it is the same incarnation).
  static compare created(std::string key, std::int64_t rev) {
    return {std::move(key), target::create, op::equal, rev, {}};
  }
  /// The key was last changed at `rev` (compare-and-swap).
  static compare modified(std::string key, std::int64_t rev) {
    return {std::move(key), target::mod, op::equal, rev, {}};
  }
  /// The key's value is `value`.
  static compare value_is(std::string key, std::string value) {
    return {std::move(key), target::value, op::equal, 0, std::move(value)};
  }
  /// The key is attached to lease `id` (0: to none).
  static compare lease_is(std::string key, std::int64_t id) {
    return {std::move(key), target::lease, op::equal, id, {}};
  }
};

/// One operation of a txn branch.
struct op {
  enum class kind { put, range, del };
  kind k = kind::range;
  std::string key;
  std::string value;      ///< put only
  std::string range_end;  ///< range and del: "" for the key alone
  std::int64_t lease = 0; ///< put only

  static op put(std::string key, std::string value, std::int64_t lease = 0) {
    return {kind::put, std::move(key), std::move(value), {}, lease};
  }
  static op get(std::string key, std::string range_end = {}) {
    return {kind::range, std::move(key), {}, std::move(range_end), 0};
  }
  static op del(std::string key, std::string range_end = {}) {
    return {kind::del, std::move(key), {}, std::move(range_end), 0};
  }
};

struct txn_result {
  bool succeeded = false;    ///< every compare held, so the success branch ran
  std::int64_t revision = 0; ///< the store's revision after the txn
  /// One per op of the branch taken: a range's answer, or an empty one for a put or del.
  std::vector<range_result> responses;
};

struct lease_grant {
  std::int64_t id = 0;
  std::int64_t ttl_s = 0; ///< etcd may raise a short TTL to its minimum (2 s by default)
};

struct watch_event {
  enum class kind { put, del };
  kind type = kind::put;
  kv current; ///< for del only the key and mod_revision are set
  std::optional<kv> previous;
};

/// A running watch. Destroying it stops it within milliseconds: it closes the stream, waits
/// for a callback that is running, and no callback runs after. It may be destroyed from its
/// own callback.
class watch_handle {
public:
  virtual ~watch_handle() = default;
};

/// Thread-safe: any number of threads may call at once. Every call returns within about
/// request_timeout; none throws.
class client {
public:
  struct options {
    std::vector<std::string> endpoints; ///< "http://127.0.0.1:2379"; IP addresses, no TLS
    std::chrono::milliseconds request_timeout{2000}; ///< a whole call, failover included
    std::chrono::milliseconds connect_timeout{1000}; ///< one connection attempt
  };

  /// Throws std::invalid_argument for no endpoints or one that is not http://HOST:PORT
  /// (start-up only; nothing else throws).
  explicit client(options opts);
  ~client();
  client(const client&) = delete;
  client& operator=(const client&) = delete;

  /// The keys in [key, range_end) ("" for the key alone), at most `limit` (0: all).
  [[nodiscard]] result<range_result>
  range(const std::string& key, const std::string& range_end = {}, std::int64_t limit = 0);
  /// The keys that start with `p`.
  [[nodiscard]] result<range_result> prefix(const std::string& p);
  /// Returns the revision of the put.
  [[nodiscard]] result<std::int64_t> put(const std::string& key, const std::string& value,
                                         std::int64_t lease = 0);
  /// Returns how many keys were deleted.
  [[nodiscard]] result<std::int64_t> del(const std::string& key, const std::string& range_end = {});
  [[nodiscard]] result<txn_result> txn(const std::vector<compare>& compares,
                                       const std::vector<op>& success,
                                       const std::vector<op>& failure = {});

  [[nodiscard]] result<lease_grant> grant(std::int64_t ttl_s);
  /// Returns the lease's TTL again; a lease that expired or was revoked is errc::rejected.
  [[nodiscard]] result<std::int64_t> keepalive(std::int64_t id);
  /// Deletes the lease and at once every key attached to it.
  [[nodiscard]] result<void> revoke(std::int64_t id);

  using events_fn = std::function<void(std::vector<watch_event> events, std::int64_t revision)>;
  using reset_fn = std::function<void(const error& why)>;
  /// Watches [key, range_end) from `start_revision` (0: from now; an older one replays
  /// history), with each event's previous kv, on a thread of its own that runs both callbacks.
  /// `on_events` gets each batch in revision order, with the revision it has seen everything
  /// up to; an empty batch says the stream is back after an outage. A broken stream resumes
  /// on the next endpoint (backoff 100 ms to 2 s) from that revision + 1. `on_reset` with
  /// errc::unavailable says no endpoint answers (once per outage; the watch keeps trying);
  /// with any other code the watch has ended (errc::compacted: re-read and watch again).
  [[nodiscard]] std::unique_ptr<watch_handle> watch(std::string key, std::string range_end,
                                                    std::int64_t start_revision,
                                                    events_fn on_events, reset_fn on_reset);

  /// The end of the range of keys that start with `p` ("\0" when there is none: to the end).
  [[nodiscard]] static std::string prefix_end(std::string p);

private:
  struct impl;
  std::unique_ptr<impl> impl_;
};

} // namespace nerve::etcd
