// Random identifiers from a per-thread generator seeded by the OS.
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

void append_hex(std::string& out, std::uint64_t v, int digits) {
  static constexpr char hex[] = "0123456789abcdef";
  for (int i = digits - 1; i >= 0; --i)
    out.push_back(hex[(v >> (i * 4)) & 0xf]);
}

} // namespace

std::string new_uuid_v7(std::int64_t time_us) {
  auto ms = static_cast<std::uint64_t>(time_us / 1000) & 0xffffffffffffULL;
  auto r1 = rng()();
  auto r2 = rng()();
  std::string s;
  s.reserve(36);
  append_hex(s, ms >> 16, 8);
  s += '-';
  append_hex(s, ms & 0xffff, 4);
  s += '-';
  append_hex(s, 0x7000 | (r1 & 0x0fff), 4); // version 7
  s += '-';
  append_hex(s, 0x8000 | ((r1 >> 12) & 0x3fff), 4); // variant 10
  s += '-';
  append_hex(s, r2 & 0xffffffffffffULL, 12);
  return s;
}

std::string new_trace_id() {
  std::uint64_t hi = 0;
  std::uint64_t lo = 0;
  while (hi == 0 && lo == 0) {
    hi = rng()();
    lo = rng()();
  }
  std::string s;
  s.reserve(32);
  append_hex(s, hi, 16);
  append_hex(s, lo, 16);
  return s;
}

std::string new_node_id() {
  std::string s = "node-";
  append_hex(s, rng()() & 0xffffffffffffULL, 12);
  return s;
}

} // namespace nerve::persistence
