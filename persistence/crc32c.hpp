// RocksDB's CRC32C in the CPU's instructions. Debian 12 builds RocksDB
// portable, so it checksums every WAL record with a table-driven CRC32C in
// software: 9 % of nerve's CPU under batched ingest (perf; docs/benchmarks.md).
// crc32c.cpp defines rocksdb::crc32c::Extend, which librocksdb.so calls
// through its PLT, so the executable's definition is the one it runs (ELF
// symbol interposition): the same function with the same results, computed
// by the SSE4.2 crc32 instruction when the CPU has it and by RocksDB's own
// otherwise. Built only against the shared library (a static RocksDB would
// define it twice).
#pragma once

#include <cstddef>
#include <cstdint>

namespace nerve::persistence {

/// Whether RocksDB's CRC32C runs on the CPU's crc32 instruction here: the
/// interposed function is linked and the CPU has SSE4.2.
[[nodiscard]] bool crc32c_in_hardware();

/// RocksDB's own rocksdb::crc32c::Extend (the library's definition, past
/// the interposed one); null where it is not interposed. For tests.
using crc32c_extend_fn = std::uint32_t (*)(std::uint32_t, const char*, std::size_t);
[[nodiscard]] crc32c_extend_fn rocksdb_own_crc32c();

} // namespace nerve::persistence
