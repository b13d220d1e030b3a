// dlq_service: the DLQ operations of a node (list, get, retry, retry-all,
// delete, purge). Today they run on the query pool straight on the store
// and hand retries to the partitions; this interface is the seam where a
// DLQ actor takes them over.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>

#include "actors/actor_sender.hpp"
#include "actors/node.hpp"
#include "actors/node_context.hpp"
#include "actors/query_pool.hpp"

namespace nerve::actors::detail {

class dlq_service {
public:
  /// `size` is the node's DLQ count; `sync_writes`: deletes are synced
  /// (fsync: always).
  dlq_service(persistence::delivery_store& store, const routing& routes,
              std::atomic<std::int64_t>& size, bool sync_writes, query_pool& pool,
              actor_sender& sender);

  void list(const std::string& agent, const std::string& topic, const std::string& cursor,
            std::size_t limit, callback<dlq_page> done);
  void get(const std::string& id, callback<dlq_view> done);
  /// Delivers a dead-lettered event again to its agent, attempts reset.
  void retry(const std::string& id, callback<dlq_view> done);
  /// Retries every entry matching the filters; answers how many.
  void retry_all(const std::string& agent, const std::string& topic, callback<std::uint64_t> done);
  void remove(const std::string& id, callback<dlq_view> done);
  /// Deletes every entry of `agent` (all when empty); answers how many.
  void purge(const std::string& agent, callback<std::uint64_t> done);

private:
  /// Reads one DLQ entry; answers `done` with the error when there is none.
  std::optional<persistence::dlq_entry> load(const std::string& id, const callback<dlq_view>& done);
  /// Hands a DLQ entry back to its partition for delivery.
  void retry_entry(const persistence::dlq_entry& e, std::function<void(std::string)> reply);

  persistence::delivery_store& store_;
  const routing& routes_;
  std::atomic<std::int64_t>& size_;
  bool sync_writes_;
  query_pool& pool_;
  actor_sender& sender_;
};

} // namespace nerve::actors::detail
