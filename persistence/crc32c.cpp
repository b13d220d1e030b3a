// rocksdb::crc32c::Extend on the crc32 instruction (crc32c.hpp says why).
#include "persistence/crc32c.hpp"

#include <cstdio>
#include <cstdlib>
#include <cstring>

#ifdef NERVE_CRC32C_INTERPOSE
#  include <dlfcn.h>
#  include <nmmintrin.h>
#endif

#ifdef NERVE_CRC32C_INTERPOSE

namespace nerve::persistence {
namespace {

/// The mangled name of rocksdb::crc32c::Extend(uint32_t, const char*, size_t).
constexpr const char* extend_symbol = "_ZN7rocksdb6crc32c6ExtendEjPKcm";

bool cpu_has_sse42() {
  static const bool has = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("sse4.2") != 0;
  }();
  return has;
}

crc32c_extend_fn library_extend() {
  static const auto fn = reinterpret_cast<crc32c_extend_fn>(dlsym(RTLD_NEXT, extend_symbol));
  return fn;
}

/// CRC32C (Castagnoli) with RocksDB's conditioning: `crc` is a finished
/// value (or 0), and so is the answer.
__attribute__((target("sse4.2"))) std::uint32_t extend_sse42(std::uint32_t crc, const char* data,
                                                             std::size_t n) {
  std::uint32_t c = ~crc;
  const auto* p = reinterpret_cast<const unsigned char*>(data);
  for (; n > 0 && (reinterpret_cast<std::uintptr_t>(p) & 7) != 0; --n)
    c = _mm_crc32_u8(c, *p++);
  std::uint64_t wide = c;
  for (; n >= 8; n -= 8, p += 8) {
    std::uint64_t word = 0;
    std::memcpy(&word, p, 8);
    wide = _mm_crc32_u64(wide, word);
  }
  c = static_cast<std::uint32_t>(wide);
  for (; n > 0; --n)
    c = _mm_crc32_u8(c, *p++);
  return ~c;
}

} // namespace

bool crc32c_in_hardware() {
  return cpu_has_sse42();
}

crc32c_extend_fn rocksdb_own_crc32c() {
  return library_extend();
}

} // namespace nerve::persistence

namespace rocksdb::crc32c {

// The interposed definition: librocksdb.so's calls land here.
__attribute__((visibility("default"))) std::uint32_t Extend(std::uint32_t init_crc,
                                                            const char* data, std::size_t n);

std::uint32_t Extend(std::uint32_t init_crc, const char* data, std::size_t n) {
  if (nerve::persistence::cpu_has_sse42())
    return nerve::persistence::extend_sse42(init_crc, data, n);
  auto own = nerve::persistence::library_extend();
  if (own == nullptr) {
    std::fputs("nerve: RocksDB's crc32c::Extend not found\n", stderr);
    std::abort();
  }
  return own(init_crc, data, n);
}

} // namespace rocksdb::crc32c

#else

namespace nerve::persistence {

bool crc32c_in_hardware() {
  return false;
}

crc32c_extend_fn rocksdb_own_crc32c() {
  return nullptr;
}

} // namespace nerve::persistence

#endif
