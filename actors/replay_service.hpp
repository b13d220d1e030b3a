// replay_service: the replay API of a node (create, get, list, history,
// cancel). Plans on a thread of its own, reads on the query pool, builds
// history pages ahead of their request, and asks the runner to start and
// cancel replay actors.
#pragma once

#include <string>
#include <vector>

#include "actors/actor_sender.hpp"
#include "actors/history_readahead.hpp"
#include "actors/node.hpp"
#include "actors/node_context.hpp"
#include "actors/query_pool.hpp"

namespace nerve::actors::detail {

class replay_service {
public:
  replay_service(const node_context& ctx, query_pool& pool, actor_sender& sender);

  /// Plans a replay and, to redeliver, has the runner start its actor;
  /// answers once the plan is stored.
  void create(replay_request req, callback<replay_view> done);
  void get(const std::string& id, callback<replay_view> done);
  void list(callback<std::vector<replay_view>> done);
  /// One page of `agent`'s history in the replay's window, after `cursor`.
  void history(const std::string& id, const std::string& agent, const std::string& cursor,
               std::size_t limit, callback<history_page> done);
  /// Stops a running replay; answers its view.
  void cancel(const std::string& id, callback<replay_view> done);

private:
  [[nodiscard]] result<history_page> build_history(const std::string& id, const std::string& agent,
                                                   const std::string& cursor, std::size_t limit);
  void serve_history(const std::string& id, const std::string& agent, std::size_t limit,
                     result<history_page> page, const callback<history_page>& done);
  void read_ahead(const std::string& id, const std::string& agent, std::size_t limit,
                  const std::string& cursor, int depth);

  const node_context& ctx_;
  query_pool& pool_;
  actor_sender& sender_;
  history_readahead readahead_;
};

} // namespace nerve::actors::detail
