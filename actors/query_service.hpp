// query_service: what a node answers about its topics, events, agents,
// consumer groups and delivery counters. Reads run on the query pool; the
// views of agents, groups and counters are read from live atomics.
#pragma once

#include <string>
#include <vector>

#include "actors/actor_sender.hpp"
#include "actors/node.hpp"
#include "actors/node_context.hpp"
#include "actors/query_pool.hpp"

namespace nerve::actors::detail {

/// One agent's consumer group on one topic, from the live counters.
[[nodiscard]] group_view group_of(const topic_route& route, const agent_runtime& agent);

class query_service {
public:
  query_service(const node_context& ctx, query_pool& pool, actor_sender& sender);

  void topics(callback<std::vector<topic_view>> done);
  void read_events(const std::string& topic, std::optional<std::uint32_t> partition,
                   std::uint64_t from_offset, std::size_t limit, callback<events_page> done);
  void get_event(const std::string& id, callback<event_view> done);

  [[nodiscard]] std::vector<agent_view> agents() const;
  void set_paused(const std::string& name, bool paused, callback<agent_view> done);
  [[nodiscard]] std::vector<metrics_row> metrics(const std::string& topic,
                                                 const std::string& agent) const;
  void groups(const std::string& topic, callback<std::vector<group_view>> done);

private:
  /// The deliveries of stored event `text` (id `id`) to each subscribed
  /// agent; nothing when the delivery state cannot be read.
  [[nodiscard]] result<event_view> event_of(const std::string& id, std::string text) const;

  const node_context& ctx_;
  query_pool& pool_;
  actor_sender& sender_;
};

} // namespace nerve::actors::detail
