// WAL files over zeroes written ahead (persistence/wal_files.hpp): what is on
// disk while a WAL is written and after it is closed, when zeroes are not
// written ahead, that RocksDB reads such a WAL back whole, and that the gap
// filter ends a replay where a power cut lost a page.
#include <catch2/catch.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <rocksdb/db.h>
#include <rocksdb/env.h>
#include <rocksdb/file_system.h>

#include "persistence/wal_files.hpp"
#include "tests/support/temp_dir.hpp"

using namespace nerve::persistence;
namespace fs = std::filesystem;

namespace {

constexpr std::uint64_t kib = 1024;

/// Small steps, so a test sees several.
zeroed_wal_limits small_limits() {
  zeroed_wal_limits l;
  l.chunk_bytes = 64 * kib;
  l.slice_bytes = 12 * kib; // a step in six slices, the last one short
  l.low_water_bytes = 32 * kib;
  l.gap_bytes = 16 * kib;
  l.max_bytes_per_sync = 8 * kib;
  l.min_free_bytes = 0;
  return l;
}

std::string read_all(const std::string& path) {
  std::ifstream in{path, std::ios::binary};
  return {std::istreambuf_iterator<char>{in}, std::istreambuf_iterator<char>{}};
}

/// Waits (up to 5 s) until the file on disk has `bytes`.
bool disk_size_reaches(const std::string& path, std::uint64_t bytes) {
  for (int i = 0; i < 500; ++i) {
    if (fs::file_size(path) >= bytes)
      return true;
    std::this_thread::sleep_for(std::chrono::milliseconds{10});
  }
  return false;
}

struct wal_file {
  wal_file(const std::shared_ptr<rocksdb::FileSystem>& fs, const std::string& path) {
    REQUIRE(fs->NewWritableFile(path, rocksdb::FileOptions{}, &file, nullptr).ok());
  }
  void append(const std::string& data) {
    REQUIRE(file->Append(data, rocksdb::IOOptions{}, nullptr).ok());
  }
  void sync() { REQUIRE(file->Sync(rocksdb::IOOptions{}, nullptr).ok()); }
  std::uint64_t size() { return file->GetFileSize(rocksdb::IOOptions{}, nullptr); }
  std::unique_ptr<rocksdb::FSWritableFile> file;
};

std::string key(int i) {
  char k[16];
  std::snprintf(k, sizeof k, "k%03d", i);
  return k;
}

/// Opens a database at `path`, writes `count` synced puts of `value_bytes`
/// each, and copies the directory to `copy` while it is open: what a kill -9
/// leaves.
void write_then_copy(rocksdb::Options opts, const std::string& path, const std::string& copy,
                     int count, std::size_t value_bytes) {
  opts.create_if_missing = true;
  rocksdb::DB* raw = nullptr;
  REQUIRE(rocksdb::DB::Open(opts, path, &raw).ok());
  std::unique_ptr<rocksdb::DB> db{raw};
  rocksdb::WriteOptions synced;
  synced.sync = true;
  for (int i = 0; i < count; ++i)
    REQUIRE(db->Put(synced, key(i), std::string(value_bytes, 'v')).ok());
  fs::copy(path, copy);
}

/// The one WAL file in `dir`.
std::string only_wal(const std::string& dir) {
  std::vector<std::string> wals;
  for (const auto& entry : fs::directory_iterator{dir})
    if (entry.path().extension() == ".log")
      wals.push_back(entry.path().string());
  REQUIRE(wals.size() == 1);
  return wals[0];
}

} // namespace

TEST_CASE("a WAL is written over zeroes synced ahead of it and cut to its size when closed",
          "[unit][persistence]") {
  nerve::test::temp_dir dir;
  auto limits = small_limits();
  auto fs = zeroed_wal_file_system(rocksdb::FileSystem::Default(), limits);
  auto path = dir.sub("000007.log");
  wal_file wal{fs, path};

  // No zeroes before the WAL's first sync; then a step one gap past its end.
  std::string written(2 * kib, '0');
  wal.append(written);
  std::this_thread::sleep_for(std::chrono::milliseconds{50});
  CHECK(fs::file_size(path) == written.size());
  wal.sync();
  REQUIRE(disk_size_reaches(path, written.size() + limits.gap_bytes + limits.chunk_bytes));
  for (int i = 1; i < 40; ++i) { // 40 syncs of 2 KiB: small ones, steps go on
    std::string record(2 * kib, static_cast<char>('a' + i % 26));
    wal.append(record);
    wal.sync();
    written += record;
  }
  CHECK(wal.size() == written.size());
  // 80 KiB written: past the first step's low water, so a second step runs.
  REQUIRE(disk_size_reaches(path, 2 * kib + limits.gap_bytes + 2 * limits.chunk_bytes));
  auto on_disk = read_all(path);
  CHECK(on_disk.compare(0, written.size(), written) == 0);
  CHECK(on_disk.find_first_not_of('\0', written.size()) == std::string::npos);

  REQUIRE(wal.file->Close(rocksdb::IOOptions{}, nullptr).ok());
  CHECK(read_all(path) == written);

  SECTION("other files are the base file system's") {
    auto sst = dir.sub("000008.sst");
    wal_file other{fs, sst};
    other.append("abc");
    REQUIRE(other.file->Flush(rocksdb::IOOptions{}, nullptr).ok());
    other.sync();
    std::this_thread::sleep_for(std::chrono::milliseconds{100});
    CHECK(fs::file_size(sst) == 3); // no zeroes ahead of it
    REQUIRE(other.file->Close(rocksdb::IOOptions{}, nullptr).ok());
    CHECK(read_all(sst) == "abc");
  }
}

TEST_CASE("a WAL gets zeroes ahead only while its syncs are small", "[unit][persistence]") {
  nerve::test::temp_dir dir;
  auto limits = small_limits();
  auto fs = zeroed_wal_file_system(rocksdb::FileSystem::Default(), limits);
  auto path = dir.sub("000009.log");
  wal_file wal{fs, path};
  std::uint64_t written = 0;
  auto write_synced = [&](std::size_t bytes, int times) {
    std::string record(bytes, 'x');
    for (int i = 0; i < times; ++i) {
      wal.append(record);
      wal.sync();
      written += bytes;
    }
  };
  write_synced(32 * kib, 12); // over max_bytes_per_sync each: no zeroes
  std::this_thread::sleep_for(std::chrono::milliseconds{100});
  CHECK(fs::file_size(path) == written);

  write_synced(kib, 100); // small syncs: zeroes again past the end
  REQUIRE(disk_size_reaches(path, written + 1));
  auto on_disk = read_all(path);
  CHECK(on_disk.find_first_not_of('\0', written) == std::string::npos);
  REQUIRE(wal.file->Close(rocksdb::IOOptions{}, nullptr).ok());
  CHECK(fs::file_size(path) == written);
}

TEST_CASE("no zeroes are written ahead where they would leave the file system short",
          "[unit][persistence]") {
  nerve::test::temp_dir dir;
  auto limits = small_limits();
  limits.min_free_bytes = std::uint64_t{1} << 62; // more than any disk has
  auto fs = zeroed_wal_file_system(rocksdb::FileSystem::Default(), limits);
  auto path = dir.sub("000011.log");
  wal_file wal{fs, path};
  std::string record(kib, 'y');
  for (int i = 0; i < 100; ++i) { // small syncs: steps are wanted, and refused
    wal.append(record);
    wal.sync();
  }
  std::this_thread::sleep_for(std::chrono::milliseconds{100});
  CHECK(fs::file_size(path) == 100 * record.size());
  CHECK(read_all(path) == std::string(100 * kib, 'y'));
}

TEST_CASE("RocksDB reads back every synced write from a WAL that ends in zeroes",
          "[unit][persistence]") {
  nerve::test::temp_dir dir;
  auto env = rocksdb::NewCompositeEnv(
    zeroed_wal_file_system(rocksdb::FileSystem::Default(), small_limits()));
  wal_gap_filter filter;
  rocksdb::Options opts;
  opts.env = env.get();
  opts.wal_filter = &filter;
  write_then_copy(opts, dir.sub("db"), dir.sub("copy"), 300, 700);
  auto text = read_all(only_wal(dir.sub("copy")));
  REQUIRE(text.size() > 300 * 700);
  CHECK(text.back() == '\0'); // the zeroes after the WAL's end

  wal_gap_filter reopened;
  rocksdb::Options again;
  again.wal_filter = &reopened;
  rocksdb::DB* raw = nullptr;
  REQUIRE(rocksdb::DB::Open(again, dir.sub("copy"), &raw).ok());
  std::unique_ptr<rocksdb::DB> db{raw};
  for (int i = 0; i < 300; ++i) {
    std::string v;
    CHECK(db->Get(rocksdb::ReadOptions{}, key(i), &v).ok());
  }
  CHECK(reopened.dropped() == 0);
}

TEST_CASE("the gap filter ends a WAL's replay at a page a power cut left as zeroes",
          "[unit][persistence]") {
  nerve::test::temp_dir dir;
  // Each batch is one 8 KiB WAL record (7-byte header, 12-byte batch header,
  // a put of a 4-byte key and an 8,165-byte value): four to a 32 KiB block.
  write_then_copy(rocksdb::Options{}, dir.sub("db"), dir.sub("cut"), 16, 8165);
  auto wal = only_wal(dir.sub("cut"));
  REQUIRE(fs::file_size(wal) == 16 * 8192);
  // The page holding batch 5 (the second record of block 1) never reached
  // the disk; the pages after it did.
  fs::copy(dir.sub("cut"), dir.sub("unfiltered"));
  for (const auto& path : {wal, dir.sub("unfiltered") + "/" + fs::path{wal}.filename().string()}) {
    std::fstream f{path, std::ios::in | std::ios::out | std::ios::binary};
    f.seekp(32768 + 8192);
    std::string zeroes(4096, '\0');
    f.write(zeroes.data(), static_cast<std::streamsize>(zeroes.size()));
  }
  auto present = [](rocksdb::DB& d) {
    std::string seen;
    for (int i = 0; i < 16; ++i) {
      std::string v;
      seen += d.Get(rocksdb::ReadOptions{}, key(i), &v).ok() ? '+' : '-';
    }
    return seen;
  };

  // Why the filter exists: RocksDB skips the zero page's block silently and
  // replays the batches after it.
  rocksdb::DB* raw = nullptr;
  REQUIRE(rocksdb::DB::Open(rocksdb::Options{}, dir.sub("unfiltered"), &raw).ok());
  std::unique_ptr<rocksdb::DB> db{raw};
  CHECK(present(*db) == "+++++---++++++++");
  db.reset();

  wal_gap_filter filter;
  rocksdb::Options filtered;
  filtered.wal_filter = &filter;
  REQUIRE(rocksdb::DB::Open(filtered, dir.sub("cut"), &raw).ok());
  db.reset(raw);
  CHECK(present(*db) == "+++++-----------");
  CHECK(filter.dropped() == 8);
}

TEST_CASE("after a gap, the gap filter drops the later WALs' batches too", "[unit][persistence]") {
  nerve::test::temp_dir dir;
  rocksdb::DBOptions opts;
  opts.create_if_missing = true;
  opts.create_missing_column_families = true;
  opts.avoid_flush_during_recovery = true;
  std::vector<rocksdb::ColumnFamilyDescriptor> families{{rocksdb::kDefaultColumnFamilyName, {}},
                                                        {"x", {}}};
  std::vector<rocksdb::ColumnFamilyHandle*> handles;
  auto open = [&](const rocksdb::DBOptions& o, const std::string& path) {
    handles.clear();
    rocksdb::DB* raw = nullptr;
    REQUIRE(rocksdb::DB::Open(o, path, families, &handles, &raw).ok());
    return std::unique_ptr<rocksdb::DB>{raw};
  };
  auto close = [&](std::unique_ptr<rocksdb::DB>& db) {
    for (auto* h : handles)
      REQUIRE(db->DestroyColumnFamilyHandle(h).ok());
    db.reset();
  };
  rocksdb::WriteOptions synced;
  synced.sync = true;
  {
    auto db = open(opts, dir.sub("db"));
    // WAL A: 16 batches of one 8 KiB record in x, then one in the default
    // family, whose flush starts WAL B (x keeps A alive); 8 more in B.
    for (int i = 0; i < 16; ++i)
      REQUIRE(db->Put(synced, handles[1], key(i), std::string(8164, 'v')).ok());
    REQUIRE(db->Put(synced, handles[0], "d", "1").ok());
    REQUIRE(db->Flush(rocksdb::FlushOptions{}, handles[0]).ok());
    for (int i = 16; i < 24; ++i)
      REQUIRE(db->Put(synced, handles[1], key(i), std::string(8164, 'v')).ok());
    fs::copy(dir.sub("db"), dir.sub("cut"));
    close(db);
  }
  std::vector<std::string> wals;
  for (const auto& entry : fs::directory_iterator{dir.sub("cut")})
    if (entry.path().extension() == ".log")
      wals.push_back(entry.path().string());
  std::sort(wals.begin(), wals.end());
  REQUIRE(wals.size() == 2);
  { // the page of A's sixth batch lost
    std::fstream f{wals[0], std::ios::in | std::ios::out | std::ios::binary};
    f.seekp(32768 + 8192);
    std::string zeroes(4096, '\0');
    f.write(zeroes.data(), static_cast<std::streamsize>(zeroes.size()));
  }
  auto present = [&](rocksdb::DB& d, int from, int to) {
    std::string seen;
    for (int i = from; i < to; ++i) {
      std::string v;
      seen += d.Get(rocksdb::ReadOptions{}, handles[1], key(i), &v).ok() ? '+' : '-';
    }
    return seen;
  };
  wal_gap_filter filter;
  auto filtered = opts;
  filtered.wal_filter = &filter;
  auto db = open(filtered, dir.sub("cut"));
  CHECK(present(*db, 0, 24) == "+++++-------------------");
  CHECK(filter.dropped() > 0);
  // What event_log::open does after a drop: everything recovered is flushed,
  // so the WALs with the gap are not replayed again; what is written after
  // is kept at the next start, and the dropped batches stay dropped.
  rocksdb::FlushOptions wait;
  wait.wait = true;
  REQUIRE(db->Flush(wait, handles).ok());
  for (int i = 30; i < 34; ++i)
    REQUIRE(db->Put(synced, handles[1], key(i), "after").ok());
  close(db);
  wal_gap_filter again;
  filtered.wal_filter = &again;
  db = open(filtered, dir.sub("cut"));
  CHECK(present(*db, 0, 24) == "+++++-------------------");
  CHECK(present(*db, 30, 34) == "++++");
  close(db);
}
