// A closed log's RocksDB opened directly, with every column family, past the
// log's own API: for tests that write records the API cannot, or compare
// what two logs stored byte for byte.
#pragma once

#include <algorithm>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <catch2/catch.hpp>
#include <rocksdb/db.h>

namespace nerve::test {

class raw_rocksdb {
public:
  raw_rocksdb(const std::string& path, bool read_only) {
    REQUIRE(rocksdb::DB::ListColumnFamilies(rocksdb::DBOptions{}, path, &names_).ok());
    std::vector<rocksdb::ColumnFamilyDescriptor> families;
    for (auto& n : names_)
      families.emplace_back(n, rocksdb::ColumnFamilyOptions{});
    rocksdb::DB* raw = nullptr;
    auto s = read_only
               ? rocksdb::DB::OpenForReadOnly(rocksdb::DBOptions{}, path, families, &handles_, &raw)
               : rocksdb::DB::Open(rocksdb::DBOptions{}, path, families, &handles_, &raw);
    REQUIRE(s.ok());
    db_.reset(raw);
  }
  ~raw_rocksdb() {
    for (auto* h : handles_)
      db_->DestroyColumnFamilyHandle(h).PermitUncheckedError();
    db_->Close().PermitUncheckedError();
  }
  raw_rocksdb(const raw_rocksdb&) = delete;
  raw_rocksdb& operator=(const raw_rocksdb&) = delete;

  [[nodiscard]] rocksdb::DB& db() { return *db_; }
  [[nodiscard]] const std::vector<std::string>& names() const { return names_; }
  [[nodiscard]] rocksdb::ColumnFamilyHandle* family(const std::string& name) {
    auto at = std::find(names_.begin(), names_.end(), name);
    REQUIRE(at != names_.end());
    return handles_[static_cast<std::size_t>(at - names_.begin())];
  }

  /// Every (key, value) of family `name`, in key order.
  [[nodiscard]] std::vector<std::pair<std::string, std::string>> records(const std::string& name) {
    std::vector<std::pair<std::string, std::string>> out;
    std::unique_ptr<rocksdb::Iterator> it{db_->NewIterator(rocksdb::ReadOptions{}, family(name))};
    for (it->SeekToFirst(); it->Valid(); it->Next())
      out.emplace_back(it->key().ToString(), it->value().ToString());
    REQUIRE(it->status().ok());
    return out;
  }

private:
  std::vector<std::string> names_;
  std::vector<rocksdb::ColumnFamilyHandle*> handles_;
  std::unique_ptr<rocksdb::DB> db_;
};

} // namespace nerve::test
