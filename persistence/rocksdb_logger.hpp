// RocksDB's own log lines, sent to nerve's log (spdlog). Private to persistence/.
#pragma once

#include <memory>

#include <rocksdb/env.h>

namespace nerve::persistence {

/// A RocksDB logger for warnings and errors that writes them to spdlog's
/// default logger instead of a LOG file in the data directory: one log for
/// operators, no file whose failed write (disk full) makes RocksDB abort when
/// it logs the next message, and none that a read-only open would create.
[[nodiscard]] std::shared_ptr<rocksdb::Logger> make_rocksdb_logger();

} // namespace nerve::persistence
