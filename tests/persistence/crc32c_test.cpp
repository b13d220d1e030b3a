// RocksDB's CRC32C as this binary runs it (persistence/crc32c.hpp): the
// interposed rocksdb::crc32c::Extend is the one every caller resolves to,
// and it answers exactly what RocksDB's own does, for every length, start
// alignment and chaining; and a log written and reopened with it reads back.
#include <catch2/catch.hpp>

#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include <dlfcn.h>

#include "persistence/crc32c.hpp"
#include "persistence/event_log.hpp"
#include "tests/support/temp_dir.hpp"

namespace rocksdb::crc32c {
std::uint32_t Extend(std::uint32_t init_crc, const char* data, std::size_t n);
}

using namespace nerve::persistence;

TEST_CASE("RocksDB's CRC32C runs on the crc32 instruction and agrees with RocksDB's own",
          "[unit][persistence]") {
  auto own = rocksdb_own_crc32c();
  if (own == nullptr) {
    // Not interposed (a static RocksDB, or not x86-64): nothing to compare.
    CHECK_FALSE(crc32c_in_hardware());
    return;
  }
  // Every caller, librocksdb.so's PLT included, resolves the name to ours.
  auto global = dlsym(RTLD_DEFAULT, "_ZN7rocksdb6crc32c6ExtendEjPKcm");
  CHECK(global == reinterpret_cast<void*>(&rocksdb::crc32c::Extend));
  CHECK(global != reinterpret_cast<void*>(own));
  CHECK(crc32c_in_hardware() == (__builtin_cpu_supports("sse4.2") != 0));

  // The check value of CRC-32C (Castagnoli).
  CHECK(rocksdb::crc32c::Extend(0, "123456789", 9) == 0xE3069283u);
  CHECK(own(0, "123456789", 9) == 0xE3069283u);

  std::mt19937_64 rng{42};
  std::vector<char> buf(8192 + 16);
  for (auto& c : buf)
    c = static_cast<char>(rng());
  for (std::size_t start = 0; start < 8; ++start)
    for (std::size_t n = 0; n <= 1100; ++n) {
      const char* p = buf.data() + start;
      REQUIRE(rocksdb::crc32c::Extend(0, p, n) == own(0, p, n));
    }
  for (std::size_t n : {4096u, 8192u}) {
    REQUIRE(rocksdb::crc32c::Extend(0, buf.data() + 3, n) == own(0, buf.data() + 3, n));
    // Chained: extending a finished value, as the WAL does record by record.
    for (std::size_t cut : {0u, 1u, 7u, 8u, 100u, 4095u}) {
      auto first = rocksdb::crc32c::Extend(0, buf.data(), cut);
      CHECK(rocksdb::crc32c::Extend(first, buf.data() + cut, n - cut) == own(0, buf.data(), n));
      CHECK(rocksdb::crc32c::Extend(0x12345678u, buf.data() + cut, n - cut)
            == own(0x12345678u, buf.data() + cut, n - cut));
    }
  }
}

TEST_CASE("a log written with the interposed CRC32C reopens and reads back",
          "[unit][persistence]") {
  nerve::test::temp_dir dir;
  options o;
  o.path = dir.sub("db");
  std::string payload(3000, 'x');
  for (std::size_t i = 0; i < payload.size(); ++i)
    payload[i] = static_cast<char>('a' + i % 26);
  {
    auto log = event_log::open(o);
    REQUIRE(log);
    auto t = (*log)->create_topic("crc", 1);
    REQUIRE(t);
    partition_writer w{**log, *t, 0};
    for (int i = 0; i < 50; ++i)
      REQUIRE(w.append({{"e" + std::to_string(i), {}, "\"data\":\"" + payload + "\"", {}, {}}}));
  }
  // Reopened: the WAL (every record checked) replays into the memtables.
  auto log = event_log::open(o);
  REQUIRE(log);
  auto t = (*log)->find_topic("crc");
  REQUIRE(t);
  auto events = (*log)->read(*t, 0, 0, 100);
  REQUIRE(events);
  REQUIRE(events->size() == 50);
  CHECK((*events)[49].find(payload) != std::string::npos);
}
