// Rendezvous hashing over the configured member ids.
#include "actors/placement.hpp"

#include <algorithm>
#include <cstdio>

namespace nerve::actors {

namespace {

std::uint64_t fnv1a(std::string_view s, std::uint64_t h = 1469598103934665603ULL) {
  for (unsigned char c : s) {
    h ^= c;
    h *= 1099511628211ULL;
  }
  return h;
}

/// splitmix64's finalizer: FNV-1a alone is weak in its high bits.
std::uint64_t mix(std::uint64_t x) {
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ULL;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebULL;
  x ^= x >> 31;
  return x;
}

std::string partition_key(std::string_view topic, std::uint32_t p) {
  std::string key{topic};
  key += '/';
  key += std::to_string(p);
  return key;
}

} // namespace

placement::placement(std::vector<config::member> members, std::string self)
  : members_(std::move(members)), self_(std::move(self)) {
  // Placement depends on the ids only, not their order: neither does this.
  auto sorted = members_;
  std::sort(sorted.begin(), sorted.end(),
            [](const config::member& a, const config::member& b) { return a.id < b.id; });
  std::uint64_t h = 1469598103934665603ULL;
  for (auto& m : sorted) {
    h = fnv1a(m.id, h);
    h = fnv1a("@", h);
    h = fnv1a(m.address(), h);
    h = fnv1a(",", h);
  }
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(mix(h)));
  digest_ = buf;
}

std::uint64_t placement::weight(std::string_view key, std::string_view member) {
  return mix(fnv1a(member, fnv1a("\x1f", fnv1a(key))));
}

const std::string& placement::winner(std::string_view key) const {
  static const std::string none;
  const config::member* best = nullptr;
  std::uint64_t best_w = 0;
  for (auto& m : members_) {
    auto w = weight(key, m.id);
    // Ties (practically never) go to the smaller id, the same on every node.
    if (!best || w > best_w || (w == best_w && m.id < best->id)) {
      best = &m;
      best_w = w;
    }
  }
  return best ? best->id : none;
}

const std::string& placement::owner(std::string_view topic, std::uint32_t p) const {
  return winner(partition_key(topic, p));
}

const std::string& placement::home(std::string_view topic) const {
  return winner(topic);
}

std::vector<std::string> placement::replicas(std::string_view topic, std::uint32_t p,
                                             std::size_t r) const {
  auto key = partition_key(topic, p);
  std::vector<std::pair<std::uint64_t, std::string>> ranked;
  for (auto& m : members_)
    ranked.emplace_back(weight(key, m.id), m.id);
  std::sort(ranked.begin(), ranked.end(), [](const auto& a, const auto& b) {
    return a.first != b.first ? a.first > b.first : a.second < b.second;
  });
  std::vector<std::string> out;
  for (std::size_t i = 0; i < ranked.size() && i < r; ++i)
    out.push_back(ranked[i].second);
  return out;
}

} // namespace nerve::actors
