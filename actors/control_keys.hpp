// Cluster step 2's records in etcd (docs/architecture.md, Clustering): the key
// layout under /nerve/<cluster.name>/ and each partition's state record,
// which only compare-and-swap on its mod_revision changes. No etcd calls here.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace nerve::actors::control {

/// One partition's replication state: who leads in which epoch, where its
/// copies live (fixed at topic creation) and which of them are in sync.
struct partition_state {
  std::uint32_t epoch = 0; ///< 0: no leader was ever elected
  std::string leader;      ///< empty: none
  std::vector<std::string> replicas;
  std::vector<std::string> in_sync;

  [[nodiscard]] bool is_in_sync(const std::string& node) const;
  friend bool operator==(const partition_state& a, const partition_state& b);
};

/// The record as stored in etcd (JSON).
[[nodiscard]] std::string encode(const partition_state& s);
/// The record read back; nothing when it is not one (never throws).
[[nodiscard]] std::optional<partition_state> decode(std::string_view text);

/// The keys of one cluster.
class key_space {
public:
  explicit key_space(const std::string& cluster_name);

  [[nodiscard]] const std::string& root() const { return root_; }
  /// A member's registration, held by its lease.
  [[nodiscard]] std::string node(const std::string& id) const;
  [[nodiscard]] std::string nodes() const { return root_ + "nodes/"; }
  /// A topic record {id, partitions, replication_factor}, created by txn.
  [[nodiscard]] std::string topic(const std::string& name) const;
  [[nodiscard]] std::string topics() const { return root_ + "topics/"; }
  /// The last topic id handed out (compare-and-swap).
  [[nodiscard]] std::string topic_seq() const { return root_ + "topic-seq"; }
  /// A partition's state record (no lease).
  [[nodiscard]] std::string state(std::uint32_t topic_id, std::uint32_t p) const;
  /// A partition's leader key, held by the leader's lease.
  [[nodiscard]] std::string leader(std::uint32_t topic_id, std::uint32_t p) const;
  [[nodiscard]] std::string partitions() const { return root_ + "parts/"; }
  /// The partition a state or leader key names, and which of the two it is.
  struct parsed {
    std::uint32_t topic_id = 0;
    std::uint32_t partition = 0;
    bool is_leader = false;
  };
  [[nodiscard]] std::optional<parsed> parse_partition_key(std::string_view key) const;

private:
  std::string root_;
};

} // namespace nerve::actors::control
