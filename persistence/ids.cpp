// Identifiers: random ones from a per-thread generator seeded by the OS, and
// event ids that say where their event is stored.
#include "persistence/ids.hpp"

#include <array>
#include <random>

namespace nerve::persistence {

namespace {

std::mt19937_64& rng() {
  thread_local std::mt19937_64 gen{[] {
    std::random_device rd;
    return (static_cast<std::uint64_t>(rd()) << 32) ^ rd();
  }()};
  return gen;
}

/// Writes `digits` lowercase hex digits of `v` at `out` (no allocation: an id
/// is made for every published event).
char* put_hex(char* out, std::uint64_t v, int digits) {
  static constexpr char hex[] = "0123456789abcdef";
  for (int i = digits - 1; i >= 0; --i)
    out[i] = hex[v & 0xf], v >>= 4;
  return out + digits;
}

constexpr unsigned located_tag = 0xa;
constexpr unsigned topic_bits = 18;
constexpr unsigned partition_bits = 10;
constexpr unsigned offset_bits = 42;
using u128 = unsigned __int128;

/// The UUID text of 48 time bits, version 7, 12 bits, variant 10, 62 bits.
std::string uuid_v7_text(std::uint64_t ms, std::uint64_t rand_a, std::uint64_t rand_b) {
  std::array<char, 36> s{};
  char* at = put_hex(s.data(), ms >> 16, 8);
  *at++ = '-';
  at = put_hex(at, ms & 0xffff, 4);
  *at++ = '-';
  at = put_hex(at, 0x7000 | (rand_a & 0x0fff), 4); // version 7
  *at++ = '-';
  at = put_hex(at, 0x8000 | ((rand_b >> 48) & 0x3fff), 4); // variant 10
  *at++ = '-';
  put_hex(at, rand_b & 0xffffffffffffULL, 12);
  return {s.data(), s.size()};
}

int hex_value(char c) {
  if (c >= '0' && c <= '9')
    return c - '0';
  if (c >= 'a' && c <= 'f')
    return c - 'a' + 10;
  return -1;
}

} // namespace

std::string new_uuid_v7(std::int64_t time_us) {
  auto ms = static_cast<std::uint64_t>(time_us / 1000) & 0xffffffffffffULL;
  auto r1 = rng()();
  auto r2 = rng()();
  // Random bits never carry the located tag: such an id is never looked for
  // at a place.
  if (((r1 >> 8) & 0xf) == located_tag)
    r1 ^= 0x100;
  return uuid_v7_text(ms, r1, ((r1 >> 12) & 0x3fff) << 48 | (r2 & 0xffffffffffffULL));
}

bool place_fits_id(std::uint32_t topic_id, std::uint32_t partition, std::uint64_t offset) {
  return topic_id < (1U << topic_bits) && partition < (1U << partition_bits)
         && offset < (std::uint64_t{1} << offset_bits);
}

std::optional<std::string> located_uuid_v7(std::int64_t time_us, std::uint32_t topic_id,
                                           std::uint32_t partition, std::uint64_t offset) {
  if (!place_fits_id(topic_id, partition, offset))
    return std::nullopt;
  u128 bits = located_tag;
  bits = (bits << topic_bits) | topic_id;
  bits = (bits << partition_bits) | partition;
  bits = (bits << offset_bits) | offset;
  auto ms = static_cast<std::uint64_t>(time_us / 1000) & 0xffffffffffffULL;
  return uuid_v7_text(ms, static_cast<std::uint64_t>(bits >> 62),
                      static_cast<std::uint64_t>(bits) & 0x3fffffffffffffffULL);
}

std::optional<id_location> locate_id(std::string_view id) {
  if (id.size() != 36 || id[8] != '-' || id[13] != '-' || id[18] != '-' || id[23] != '-'
      || id[14] != '7')
    return std::nullopt;
  // The 32 digits as two 64-bit halves (a 128-bit shift per digit cost
  // more than the rest of the lookup).
  std::uint64_t half[2] = {0, 0};
  std::size_t digit = 0;
  for (std::size_t i = 0; i < id.size(); ++i) {
    if (i == 8 || i == 13 || i == 18 || i == 23)
      continue;
    auto v = hex_value(id[i]);
    if (v < 0)
      return std::nullopt;
    auto& h = half[digit++ / 16];
    h = (h << 4) | static_cast<unsigned>(v);
  }
  auto hi = half[0];
  auto lo = half[1];
  if ((lo >> 62) != 0x2) // variant 10
    return std::nullopt;
  u128 bits = (u128{hi & 0xfff} << 62) | (lo & 0x3fffffffffffffffULL);
  if (static_cast<unsigned>(bits >> (topic_bits + partition_bits + offset_bits)) != located_tag)
    return std::nullopt;
  id_location at;
  at.offset = static_cast<std::uint64_t>(bits) & ((std::uint64_t{1} << offset_bits) - 1);
  bits >>= offset_bits;
  at.partition = static_cast<std::uint32_t>(bits) & ((1U << partition_bits) - 1);
  bits >>= partition_bits;
  at.topic_id = static_cast<std::uint32_t>(bits) & ((1U << topic_bits) - 1);
  return at;
}

void append_new_trace_id(std::string& out) {
  std::uint64_t hi = 0;
  std::uint64_t lo = 0;
  while (hi == 0 && lo == 0) {
    hi = rng()();
    lo = rng()();
  }
  std::array<char, 32> s{};
  put_hex(put_hex(s.data(), hi, 16), lo, 16);
  out.append(s.data(), s.size());
}

std::string new_trace_id() {
  std::string id;
  append_new_trace_id(id);
  return id;
}

std::string new_node_id() {
  std::array<char, 12> s{};
  put_hex(s.data(), rng()() & 0xffffffffffffULL, 12);
  return "node-" + std::string{s.data(), s.size()};
}

} // namespace nerve::persistence
