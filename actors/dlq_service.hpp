// dlq_service: the DLQ operations of a node (list, get, retry, retry-all,
// delete, purge) as the HTTP side calls them. The DLQ actor does the work;
// this turns the node interface's calls into its messages and its answers
// into the node's views.
#pragma once

#include <cstdint>
#include <string>

#include "actors/dlq_actor.hpp"
#include "actors/node.hpp"

namespace nerve::actors::detail {

class dlq_service {
public:
  explicit dlq_service(dlq_client client) : client_(std::move(client)) {}

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
  dlq_client client_;
};

} // namespace nerve::actors::detail
