// placement: which member owns a partition and which is a topic's home,
// by rendezvous (highest random weight) hashing over the configured member
// ids. Pure and CAF-free: every node computes the same answer from the same
// member list, and a node being down changes nothing (without consensus,
// moving a partition would let two nodes hand out the same offsets).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "config/config.hpp"

namespace nerve::actors {

class placement {
public:
  placement() = default;

  /// `members`: the configured list; `self`: this node's id among them.
  placement(std::vector<config::member> members, std::string self);

  /// The member that owns partition `p` of `topic`.
  [[nodiscard]] const std::string& owner(std::string_view topic, std::uint32_t p) const;

  /// The member that decides `topic`'s partition count.
  [[nodiscard]] const std::string& home(std::string_view topic) const;

  /// The `r` members with the highest weight for the partition, best
  /// first: its replicas (step 2); `owner` is the first.
  [[nodiscard]] std::vector<std::string> replicas(std::string_view topic, std::uint32_t p,
                                                  std::size_t r) const;

  [[nodiscard]] const std::string& self() const { return self_; }
  [[nodiscard]] const std::vector<config::member>& members() const { return members_; }
  [[nodiscard]] bool is_self(std::string_view id) const { return id == self_; }

  /// A digest of the member list (ids and addresses, in any order): peers with
  /// another list are refused, since they would place partitions elsewhere.
  [[nodiscard]] const std::string& digest() const { return digest_; }

  /// The weight of `member` for `key` (exposed for tests).
  [[nodiscard]] static std::uint64_t weight(std::string_view key, std::string_view member);

private:
  [[nodiscard]] const std::string& winner(std::string_view key) const;

  std::vector<config::member> members_;
  std::string self_;
  std::string digest_;
};

} // namespace nerve::actors
