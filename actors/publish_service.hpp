// publish_service: the publish path of a node. Checks a request's size and
// its event ids, picks each event's partition, admits the request against
// the partitions' queue bounds and queues one job per partition.
#pragma once

#include <atomic>
#include <string>
#include <vector>

#include "actors/actor_sender.hpp"
#include "actors/cluster.hpp"
#include "actors/control_plane.hpp"
#include "actors/node.hpp"
#include "actors/node_context.hpp"
#include "actors/query_pool.hpp"

namespace nerve::actors::detail {

class publish_service {
public:
  /// `draining` turns true when the node shuts down: publishes are refused.
  publish_service(const config::storage_config& storage, persistence::event_log& log,
                  routing& routes, const std::atomic<bool>& draining, query_pool& pool,
                  actor_sender& sender, tail_hub& tails);

  /// node::publish: refuses more items than a partition queues, and an id
  /// used on another topic, before anything is appended.
  void publish(const std::string& topic, std::vector<publish_item> items,
               callback<std::vector<published>> done);

  /// Queues items on their partitions (creating the topic on first use)
  /// without publish's checks: node_context::publish, for the actors' own
  /// follow-up events.
  void dispatch(const std::string& topic, std::vector<publish_item> items,
                callback<std::vector<published>> done) {
    route_items(topic, std::move(items), std::move(done), true);
  }

  /// A peer's forward: appends batches on partitions this node owns (the
  /// topic created with `partitions` if new here); answered once durable.
  void append_local(const std::string& topic, std::uint32_t partitions,
                    std::vector<forward_batch> batches, callback<forward_answer> done);

  /// In a cluster: partitions owned elsewhere are forwarded, new topics ask
  /// their home node. Set before the first publish.
  void set_cluster(cluster_client* cluster) { cluster_ = cluster; }
  /// With replication: new topics are created through etcd.
  void set_control(control_plane* control) { control_ = control; }

private:
  /// Creates `topic` (with `partitions`, 0: as its home node decides), then
  /// calls `next` with nothing or the error.
  void create_then(const std::string& topic, std::uint32_t partitions,
                   std::function<void(std::optional<error>)> next);
  void precheck_then_publish(const std::string& topic, std::vector<publish_item> items,
                             callback<std::vector<published>> done);
  /// `queued`: it waited behind the topic's creation and goes now.
  void route_items(const std::string& topic, std::vector<publish_item> items,
                   callback<std::vector<published>> done, bool may_create, bool queued = false);
  /// Hands `job` to partition `p`: to the calling thread's lane pass when
  /// the thread has one and the partition's actor lends its writer, else to
  /// the actor.
  void submit(const std::shared_ptr<topic_route>& route, std::uint32_t p, job_ptr job);

public:
  /// The publishes a lane thread took in during one pass of its loop.
  struct lane_item {
    std::shared_ptr<topic_route> route;
    std::uint32_t p = 0;
    job_ptr job;
  };
  /// Appends a pass's publishes: one write for all their partitions (whose
  /// lanes are locked in one order), one sync waiter that answers them;
  /// a partition whose actor took its writer back gets its jobs by message.
  void flush_lane(std::vector<lane_item>& items);

private:
  const config::storage_config& storage_;
  persistence::event_log& log_;
  routing& routes_;
  const std::atomic<bool>& draining_;
  query_pool& pool_;
  actor_sender& sender_;
  tail_hub& tails_;
  cluster_client* cluster_ = nullptr;
  control_plane* control_ = nullptr;
  /// Publishes to topics being created wait here, in arrival order, so that
  /// one client's pipelined publishes to a new topic keep their order.
  std::mutex creating_mutex_;
  std::map<std::string, std::vector<std::function<void()>>> creating_;
  std::atomic<std::size_t> creations_{0}; ///< creating_.size(): skips the lock when 0
};

} // namespace nerve::actors::detail
