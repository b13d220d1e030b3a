// RocksDB's warnings and errors as spdlog lines.
#include "persistence/rocksdb_logger.hpp"

#include <array>
#include <cstdarg>
#include <cstdio>

#include <spdlog/spdlog.h>

namespace nerve::persistence {

namespace {

class rocksdb_logger final : public rocksdb::Logger {
public:
  rocksdb_logger() : rocksdb::Logger(rocksdb::InfoLogLevel::WARN_LEVEL) {}

  using rocksdb::Logger::Logv;
  void Logv(const char* format, va_list ap) override {
    Logv(rocksdb::InfoLogLevel::INFO_LEVEL, format, ap);
  }

  void Logv(const rocksdb::InfoLogLevel level, const char* format, va_list ap) override {
    if (level < GetInfoLogLevel())
      return;
    std::array<char, 1024> buf{};
    std::vsnprintf(buf.data(), buf.size(), format, ap);
    auto lvl
      = level >= rocksdb::InfoLogLevel::ERROR_LEVEL ? spdlog::level::err : spdlog::level::warn;
    spdlog::log(lvl, "rocksdb: {}", buf.data());
  }
};

} // namespace

std::shared_ptr<rocksdb::Logger> make_rocksdb_logger() {
  return std::make_shared<rocksdb_logger>();
}

} // namespace nerve::persistence
