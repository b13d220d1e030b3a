// The cluster actor and the cluster_client over it (see cluster_actor.hpp).
#include "actors/cluster_actor.hpp"

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <iterator>
#include <map>
#include <mutex>
#include <shared_mutex>
#include <stdexcept>
#include <unordered_map>

#include <caf/all.hpp>
#include <caf/io/all.hpp>
#include <caf/io/basp_broker.hpp>
#include <spdlog/spdlog.h>

#include "actors/cluster_gate.hpp"
#include "actors/messages.hpp"
#include "actors/repl_sessions.hpp"
#include "actors/restart_policy.hpp"
#include "persistence/ids.hpp"

namespace nerve::actors {

namespace {

using namespace std::chrono_literals;

/// Batches a remote tail may have unacknowledged before more are dropped.
constexpr std::uint32_t tail_window = 64;

/// How long a forward may wait for the owner's answer before it is
/// reported as indeterminate.
constexpr auto forward_timeout = 10s;
/// Bytes of forwarded events in flight to one peer (CAF io buffers without
/// limit: this is the credit window).
constexpr std::uint64_t forward_window_bytes = 32ULL << 20;
/// The largest forward a node sends or accepts.
constexpr std::uint64_t max_forward_bytes = 16ULL << 20;
/// The largest API answer body a node sends a peer: the peer's gate drops
/// the link on a frame over its limit (cluster_gate.hpp).
constexpr std::uint64_t max_answer_bytes = 16ULL << 20;
static_assert(max_forward_bytes < gate_limits{}.frame_bytes_max
                && max_answer_bytes < gate_limits{}.frame_bytes_max,
              "nerve's own frames must pass its peers' gates");

/// One member as the services and the actor share it.
struct peer_entry {
  config::member member;
  bool self = false;
  bool dials = false; ///< this node dials it (its id sorts after ours)
  std::atomic<bool> up{false};
  std::atomic<std::uint64_t> in_flight_bytes{0};
  /// Forwards waiting for the gate's thread to send them in one frame.
  std::mutex outbox_mutex;
  std::vector<forward_item> outbox;
  // Guarded by peer_table::mutex:
  std::optional<tl::expected<int, std::string>> dialed; ///< the gate's last dial, until taken
  peer_actor handle;
  std::string detail;
  std::int64_t since_us = 0;
  std::vector<std::string> agents;
  bool known = false;
};

/// Forwards sent over a link and not answered yet. Any thread.
struct forward_table {
  struct entry {
    std::string owner;
    std::string topic;
    std::vector<std::size_t> sizes; ///< events per batch, to split the answer
    std::function<void(result<forward_answer>)> answer;
    std::chrono::steady_clock::time_point deadline;
  };

  std::uint64_t add(entry e) {
    std::lock_guard<std::mutex> guard{mutex_};
    auto token = next_++;
    pending_.emplace(token, std::move(e));
    return token;
  }

  /// The entry of `token` if it is still waiting for `owner`.
  std::optional<entry> take(std::uint64_t token, const std::string& owner) {
    std::lock_guard<std::mutex> guard{mutex_};
    auto it = pending_.find(token);
    if (it == pending_.end() || it->second.owner != owner)
      return std::nullopt;
    auto e = std::move(it->second);
    pending_.erase(it);
    return e;
  }

  /// Takes every entry `pred` holds for, to be answered outside the lock.
  template <class Pred>
  std::vector<entry> take_if(Pred pred) {
    std::vector<entry> out;
    std::lock_guard<std::mutex> guard{mutex_};
    for (auto it = pending_.begin(); it != pending_.end();)
      if (pred(it->second)) {
        out.push_back(std::move(it->second));
        it = pending_.erase(it);
      } else {
        ++it;
      }
    return out;
  }

private:
  std::mutex mutex_;
  std::uint64_t next_ = 1;
  std::unordered_map<std::uint64_t, entry> pending_;
};

/// A forward that got no answer: its events may or may not be appended.
void fail_forwards(std::vector<forward_table::entry> lost, const std::string& why) {
  for (auto& e : lost)
    e.answer(tl::make_unexpected(
      error{errc::unavailable, "indeterminate: node " + e.owner + " did not answer the forward of "
                                 + e.topic + " events (" + why
                                 + "); they may or may not be appended: retry with the same id"}));
}

struct peer_table {
  placement where;
  forward_table forwards;
  std::vector<std::string> agents; ///< this node's
  std::vector<std::unique_ptr<peer_entry>> peers;
  mutable std::shared_mutex mutex;

  [[nodiscard]] peer_entry* find(const std::string& id) const {
    for (auto& p : peers)
      if (p->member.id == id)
        return p.get();
    return nullptr;
  }
};

/// About the bytes batches take on the wire (forward_batch or append_request).
template <class Batch>
std::uint64_t bytes_of(const std::vector<Batch>& batches) {
  std::uint64_t n = 0;
  for (auto& b : batches)
    for (auto& e : b.events)
      n += text_bytes(e) + 16;
  return n;
}

std::vector<append_request> to_wire(const std::string& topic, std::vector<forward_batch> batches) {
  std::vector<append_request> out;
  out.reserve(batches.size());
  for (auto& b : batches) {
    append_request r{topic, b.partition, {}};
    r.events.reserve(b.events.size());
    for (auto& e : b.events)
      r.events.push_back({std::move(e.id), std::move(e.key), std::move(e.fragment),
                          std::move(e.type), std::move(e.source), e.generated});
    out.push_back(std::move(r));
  }
  return out;
}

std::vector<forward_batch> from_wire(std::vector<append_request>& reqs) {
  std::vector<forward_batch> out;
  out.reserve(reqs.size());
  for (auto& r : reqs) {
    forward_batch b{r.partition, {}};
    b.events.reserve(r.events.size());
    for (auto& e : r.events)
      b.events.push_back({std::move(e.id), std::move(e.key), std::move(e.fragment),
                          std::move(e.type), std::move(e.source), e.generated});
    out.push_back(std::move(b));
  }
  return out;
}

// -- the actor -----------------------------------------------------------------

struct cluster_state {
  std::shared_ptr<peer_table> table;
  cluster_ops ops;
  std::shared_ptr<cluster_gate> gate;
  caf::actor basp; ///< CAF's BASP broker
  std::unordered_map<std::string, restart_policy> backoff;
  std::unordered_map<std::string, bool> dialing;
  std::unordered_map<std::uint64_t, caf::typed_response_promise<api_response>> pending_api;
  std::uint64_t next_token = 1;
  bool stopping = false;
  /// Remote tails of this node's topics, by subscriber.
  struct remote_tail {
    tail_handle handle;
    std::shared_ptr<std::atomic<std::uint32_t>> in_flight;
  };
  std::map<caf::actor_addr, remote_tail> tails;

  static inline const char* name = "nerve.cluster";
};

using cluster_actor_t = peer_actor::stateful_pointer<cluster_state>;

hello my_hello(const peer_table& t) {
  return hello{t.where.self(), wire_version, t.where.digest(), t.agents};
}

/// Warns about agents that run here but not on peer `p` (or there but not
/// here): the partitions a node owns deliver only to its own instances.
void compare_agents(const peer_table& t, const peer_entry& p) {
  for (auto& a : t.agents)
    if (std::find(p.agents.begin(), p.agents.end(), a) == p.agents.end())
      spdlog::warn("cluster: agent {} runs on node {} but not on node {}: events of the "
                   "partitions {} owns are not delivered to {}; give every node the same agents",
                   a, t.where.self(), p.member.id, p.member.id, a);
}

void set_up(cluster_actor_t self, peer_entry& p, peer_actor handle,
            std::vector<std::string> agents) {
  auto& st = self->state;
  {
    std::unique_lock<std::shared_mutex> guard{st.table->mutex};
    p.agents = std::move(agents);
    p.known = true;
    if (p.handle && p.handle != handle)
      self->demonitor(p.handle.address());
    p.handle = handle;
    p.detail.clear();
    p.since_us = persistence::system_clock_us();
  }
  self->monitor(handle);
  p.up = true;
  st.backoff.at(p.member.id).started(restart_policy::clock::now());
  spdlog::info("cluster: node {} ({}) is up", p.member.id, p.member.address());
  compare_agents(*st.table, p);
}

void schedule_dial(cluster_actor_t self, peer_entry& p) {
  auto& st = self->state;
  st.dialing[p.member.id] = false;
  if (st.stopping || !p.dials)
    return;
  auto wait = st.backoff.at(p.member.id).on_death(restart_policy::clock::now()).value_or(2s);
  self->delayed_send(self, wait, dial_atom::value, p.member.id);
}

/// A link attempt or a link failed: down, with why; dial again later.
void set_down(cluster_actor_t self, peer_entry& p, const std::string& why) {
  auto& st = self->state;
  bool was_up = p.up.exchange(false);
  std::string previous;
  {
    std::unique_lock<std::shared_mutex> guard{st.table->mutex};
    previous = p.detail;
    p.detail = why;
    if (was_up) {
      p.since_us = persistence::system_clock_us();
      p.handle = peer_actor{};
    }
  }
  fail_forwards(st.table->forwards.take_if([&](auto& e) { return e.owner == p.member.id; }),
                "the link to it dropped: " + why);
  if (was_up)
    spdlog::warn("cluster: node {} ({}) is down: {}", p.member.id, p.member.address(), why);
  else if (previous != why)
    spdlog::warn("cluster: cannot link to node {} ({}): {}", p.member.id, p.member.address(), why);
  schedule_dial(self, p);
}

/// The peer's hello must match ours: the same wire version and member list,
/// and the id we expect at that address.
std::optional<std::string> check_hello(const peer_table& t, const hello& theirs,
                                       const std::string* expected_id) {
  if (theirs.version != wire_version)
    return "node " + theirs.node_id + " speaks wire version " + std::to_string(theirs.version)
           + ", node " + t.where.self() + " speaks " + std::to_string(wire_version)
           + "; run one nerve version across the cluster";
  if (expected_id != nullptr && theirs.node_id != *expected_id)
    return "the node at that address says it is " + theirs.node_id + ", not " + *expected_id;
  if (t.find(theirs.node_id) == nullptr || theirs.node_id == t.where.self())
    return "node " + theirs.node_id + " is not a member of this cluster";
  if (theirs.members != t.where.digest())
    return "node " + theirs.node_id + " has another cluster.members list (digest " + theirs.members
           + ", node " + t.where.self() + " has " + t.where.digest()
           + "); every node needs the same list";
  return std::nullopt;
}

void greet(cluster_actor_t self, peer_entry& p, peer_actor peer) {
  auto& st = self->state;
  self->request(peer, 3s, my_hello(*st.table))
    .then(
      [self, &p, peer](hello& theirs) {
        if (auto bad = check_hello(*self->state.table, theirs, &p.member.id)) {
          spdlog::error("cluster: refusing node {}: {}", p.member.id, *bad);
          return set_down(self, p, *bad);
        }
        self->state.dialing[p.member.id] = false;
        set_up(self, p, peer, std::move(theirs.agents));
      },
      [self, &p](caf::error& e) {
        auto why = e.category() == error_category ? from_caf_error(e).message
                                                  : "no hello: " + self->system().render(e);
        bool again = false;
        {
          std::shared_lock<std::shared_mutex> guard{self->state.table->mutex};
          again = p.detail == why;
        }
        // Once per cause, not on every redial.
        if (e.category() == error_category && !again)
          spdlog::error("cluster: node {} refused this node: {}", p.member.id, why);
        set_down(self, p, why);
      });
}

void dial(cluster_actor_t self, const std::string& id) {
  auto& st = self->state;
  auto* p = st.table->find(id);
  if (st.stopping || p == nullptr || p->up || st.dialing[id])
    return;
  st.dialing[id] = true;
  // The gate connects without blocking; CAF's own connect would block its
  // middleman (and every other connect) for minutes on a black-holed address.
  st.gate->dial(id, p->member.host, p->member.port,
                [me = caf::actor_cast<peer_actor>(self), table = st.table, p,
                 id](tl::expected<int, std::string> r) {
                  bool ok = r.has_value();
                  {
                    std::unique_lock<std::shared_mutex> guard{table->mutex};
                    p->dialed = std::move(r);
                  }
                  caf::anon_send(me, probed_atom::value, id, ok);
                });
}

/// The gate's dial of `id` ended: CAF's BASP broker takes the link as a
/// connected scribe (as from its middleman) and answers with the peer's
/// published actor after the BASP handshake.
void probed(cluster_actor_t self, const std::string& id) {
  auto& st = self->state;
  auto* p = st.table->find(id);
  if (p == nullptr)
    return;
  std::optional<tl::expected<int, std::string>> dialed;
  {
    std::unique_lock<std::shared_mutex> guard{st.table->mutex};
    dialed.swap(p->dialed);
  }
  if (!dialed)
    return;
  if (!*dialed)
    return set_down(self, *p, dialed->error());
  if (st.stopping) {
    ::close(**dialed);
    return;
  }
  auto scribe = self->system().middleman().backend().new_scribe(**dialed);
  self->request(st.basp, 5s, caf::connect_atom::value, std::move(scribe), p->member.port)
    .then(
      [self, p](const caf::node_id&, caf::strong_actor_ptr& ptr, const std::set<std::string>&) {
        if (!ptr)
          return set_down(self, *p, "nothing is published at " + p->member.address());
        greet(self, *p, caf::actor_cast<peer_actor>(ptr));
      },
      [self, p](caf::error& e) {
        set_down(self, *p, "no BASP handshake: " + self->system().render(e));
      });
}

caf::result<hello> on_hello(cluster_actor_t self, const hello& theirs) {
  auto& st = self->state;
  if (auto bad = check_hello(*st.table, theirs, nullptr)) {
    // Once per cause for a member (it redials), every time for a stranger.
    auto* known = st.table->find(theirs.node_id);
    bool again = false;
    if (known != nullptr && !known->self) {
      std::unique_lock<std::shared_mutex> guard{st.table->mutex};
      again = known->detail == *bad;
      known->detail = *bad;
    }
    if (!again)
      spdlog::error("cluster: refusing node {}: {}", theirs.node_id, *bad);
    return make_caf_error(errc::invalid, *bad);
  }
  auto* p = st.table->find(theirs.node_id);
  auto peer = caf::actor_cast<peer_actor>(self->current_sender());
  if (!peer)
    return make_caf_error(errc::invalid, "a hello without a sender");
  set_up(self, *p, peer, theirs.agents);
  return my_hello(*st.table);
}

caf::result<api_response> on_api(cluster_actor_t self, api_request& req) {
  auto& st = self->state;
  if (st.stopping)
    return make_caf_error(errc::unavailable,
                          "node " + st.table->where.self() + " is shutting down");
  auto token = st.next_token++;
  st.pending_api.emplace(token, self->make_response_promise<api_response>());
  auto me = caf::actor_cast<peer_actor>(self);
  st.ops.api(
    {std::move(req.method), std::move(req.path), std::move(req.query), std::move(req.body)},
    [me, token](peer_response r) {
      caf::anon_send(me, answered_atom::value, token,
                     api_response{r.status, std::move(r.content_type), std::move(r.body)});
    });
  return st.pending_api.at(token);
}

/// A peer's WebSocket tail follows `topic` here: each append goes to the
/// subscriber while fewer than tail_window batches are unacknowledged
/// (a slow follower loses batches, never slows the partitions).
void on_tail(cluster_actor_t self, const std::string& topic, const caf::actor& subscriber) {
  auto& st = self->state;
  if (st.stopping || !subscriber)
    return;
  auto in_flight = std::make_shared<std::atomic<std::uint32_t>>(0);
  auto to = caf::actor_cast<tail_actor>(subscriber);
  auto handle = st.ops.tail(topic, [to, in_flight](const std::vector<std::string>& events) {
    // Batches of at most ~16 MiB: a peer's gate drops a larger frame with
    // the link. Each counts against the window.
    std::size_t at = 0;
    while (at < events.size()) {
      std::vector<std::string> batch;
      std::size_t bytes = 0;
      for (; at < events.size() && (batch.empty() || bytes + events[at].size() < (16U << 20));
           ++at) {
        bytes += events[at].size();
        batch.push_back(events[at]);
      }
      if (in_flight->fetch_add(1) >= tail_window) {
        in_flight->fetch_sub(1);
        return;
      }
      caf::anon_send(to, tail_events_atom::value, std::move(batch));
    }
  });
  self->monitor(subscriber);
  st.tails[subscriber.address()] = {std::move(handle), std::move(in_flight)};
}

caf::result<std::uint32_t> on_topic(cluster_actor_t self, const std::string& topic) {
  auto& st = self->state;
  if (!st.table->where.is_self(st.table->where.home(topic)))
    return make_caf_error(errc::invalid, "node " + st.table->where.self() + " is not the home of "
                                           + topic + "; are cluster.members the same everywhere?");
  auto rp = self->make_response_promise<std::uint32_t>();
  st.ops.home_topic(topic, [rp](result<std::uint32_t> r) mutable {
    // Runs on an actor thread (the runner's answer); a response promise
    // only enqueues to the asker.
    if (r)
      rp.deliver(*r);
    else
      rp.deliver(make_caf_error(r.error().code, r.error().message));
  });
  return rp;
}

peer_actor::behavior_type cluster_actor(cluster_actor_t self, std::shared_ptr<peer_table> table,
                                        cluster_ops ops, std::shared_ptr<cluster_gate> gate,
                                        caf::actor basp) {
  auto& st = self->state;
  st.table = std::move(table);
  st.ops = std::move(ops);
  st.gate = std::move(gate);
  st.basp = std::move(basp);
  self->send(self, tick_atom::value);
  for (auto& p : st.table->peers) {
    st.backoff.emplace(p->member.id, restart_policy{{true, 200ms, 2s, 10s, std::nullopt}});
    if (p->dials)
      self->send(self, dial_atom::value, p->member.id);
  }
  self->set_down_handler([self](caf::down_msg& dm) {
    auto& st = self->state;
    if (st.tails.erase(dm.source) > 0)
      return;
    for (auto& p : st.table->peers) {
      bool match = false;
      {
        std::shared_lock<std::shared_mutex> guard{st.table->mutex};
        match = p->handle && p->handle.address() == dm.source;
      }
      if (match)
        set_down(self, *p, "link lost (" + self->system().render(dm.reason) + ")");
    }
  });
  return {
    [self](const hello& theirs) { return on_hello(self, theirs); },
    [self](topic_atom, const std::string& topic) { return on_topic(self, topic); },
    [self](api_atom, api_request& req) { return on_api(self, req); },
    [self](tail_atom, const std::string& topic, const caf::actor& subscriber) {
      on_tail(self, topic, subscriber);
    },
    [self](tail_ack_atom, const caf::actor_addr& subscriber) {
      if (auto it = self->state.tails.find(subscriber); it != self->state.tails.end())
        it->second.in_flight->fetch_sub(1);
    },
    [self](answered_atom, std::uint64_t token, api_response& r) {
      auto& pending = self->state.pending_api;
      if (auto it = pending.find(token); it != pending.end()) {
        if (r.body.size() > max_answer_bytes)
          it->second.deliver(make_caf_error(
            errc::invalid, "the answer of node " + self->state.table->where.self() + " is "
                             + std::to_string(r.body.size()) + " bytes, more than the "
                             + std::to_string(max_answer_bytes >> 20)
                             + " MiB a cluster link carries; ask for less (a smaller limit)"));
        else
          it->second.deliver(std::move(r));
        pending.erase(it);
      }
    },
    [self](dial_atom, const std::string& id) { dial(self, id); },
    [self](probed_atom, const std::string& id, bool) { probed(self, id); },
    [self](tick_atom) {
      // Forwards unanswered for forward_timeout (the link is up, the owner silent).
      auto now = std::chrono::steady_clock::now();
      fail_forwards(self->state.table->forwards.take_if([&](auto& e) { return e.deadline < now; }),
                    "no answer within "
                      + std::to_string(
                        std::chrono::duration_cast<std::chrono::seconds>(forward_timeout).count())
                      + " s");
      if (!self->state.stopping)
        self->delayed_send(self, 1s, tick_atom::value);
    },
    [self](stop_atom) {
      self->state.stopping = true;
      fail_forwards(self->state.table->forwards.take_if([](auto&) { return true; }),
                    "this node is shutting down");
      for (auto& [token, rp] : self->state.pending_api)
        rp.deliver(make_caf_error(errc::unavailable, "the node is shutting down"));
      self->state.pending_api.clear();
      self->state.tails.clear();
      self->quit();
    },
  };
}

// -- the client ------------------------------------------------------------------

/// Calls `lost` and ends `self` when `peer` goes down before `self` is
/// done: the link to its node dropped (heartbeats), or it quit. A request to
/// a remote actor is not answered when its link drops: CAF kills the proxy,
/// which bounces nothing already sent, so without this a request in flight
/// would wait for its whole timeout although the peer is known to be down.
template <class Fn>
void on_link_lost(caf::event_based_actor* self, const peer_actor& peer, Fn lost) {
  self->monitor(peer);
  self->set_down_handler([self, lost](caf::down_msg& dm) {
    lost(dm.reason ? dm.reason : caf::make_error(caf::exit_reason::remote_link_unreachable));
    self->quit();
  });
}

/// Why a forward to `owner` cannot go: it is down.
error owner_down(const std::string& owner, const std::string& topic) {
  return error{errc::unavailable,
               "node " + owner + " owns partitions of " + topic + " and is down; retry shortly"};
}

/// Sends the forwards queued for peer `p` (on the gate's thread), as few
/// frames as the frame limit allows.
void send_forwards(peer_table& table, cluster_gate& gate, peer_entry& p) {
  std::vector<forward_item> items;
  {
    std::lock_guard<std::mutex> guard{p.outbox_mutex};
    items.swap(p.outbox);
  }
  const auto& owner = p.member.id;
  std::vector<forward_item> frame;
  std::uint64_t bytes = 0;
  auto send = [&] {
    if (frame.empty())
      return;
    if (!gate.send_data(owner, link_forward(frame)))
      for (auto& f : frame)
        if (auto e = table.forwards.take(f.token, owner))
          e->answer(tl::make_unexpected(owner_down(owner, f.topic)));
    frame.clear();
    bytes = 0;
  };
  for (auto& item : items) {
    auto n = bytes_of(item.events);
    if (bytes + n > max_forward_bytes)
      send();
    bytes += n;
    frame.push_back(std::move(item));
  }
  send();
}

class cluster_impl final : public cluster_service {
public:
  cluster_impl(caf::actor_system& sys, std::shared_ptr<peer_table> table, peer_actor actor,
               std::shared_ptr<cluster_gate> gate)
    : sys_(sys), table_(std::move(table)), actor_(std::move(actor)), gate_(std::move(gate)) {}

  ~cluster_impl() override { stop(); }

  const placement& where() const override { return table_->where; }

  bool up(const std::string& id) const override {
    auto* p = table_->find(id);
    return p != nullptr && (p->self || p->up.load());
  }

  std::string owner(const std::string& topic, std::uint32_t p) const override {
    {
      std::shared_lock<std::shared_mutex> guard{leaders_mutex_};
      if (leaders_)
        return leaders_(topic, p);
    }
    return table_->where.owner(topic, p);
  }

  void set_leaders(std::function<std::string(const std::string&, std::uint32_t)> leader) override {
    std::unique_lock<std::shared_mutex> guard{leaders_mutex_};
    leaders_ = std::move(leader);
  }

  bool send_data(const std::string& id, std::string frame) override {
    return gate_->send_data(id, std::move(frame));
  }

  std::vector<peer_status> peers() const override {
    std::vector<peer_status> out;
    std::shared_lock<std::shared_mutex> guard{table_->mutex};
    for (auto& p : table_->peers)
      out.push_back({p->member.id, p->member.address(), p->self, p->self || p->up.load(), p->detail,
                     p->since_us, p->self ? table_->agents : p->agents, p->self || p->known});
    return out;
  }

  void forward(const std::string& owner, const std::string& topic, std::uint32_t partitions,
               std::vector<forward_batch> batches, callback<forward_answer> done) override {
    auto* p = table_->find(owner);
    auto dest = handle_of(owner);
    if (!dest)
      return done(tl::make_unexpected(owner_down(owner, topic)));
    auto bytes = bytes_of(batches);
    if (bytes > max_forward_bytes)
      return done(tl::make_unexpected(
        error{errc::invalid, "the events for node " + owner + " are " + std::to_string(bytes)
                               + " bytes, more than one cluster frame carries; send fewer"}));
    if (p->in_flight_bytes.fetch_add(bytes) + bytes > forward_window_bytes) {
      p->in_flight_bytes.fetch_sub(bytes);
      return done(tl::make_unexpected(
        error{errc::overloaded, "the link to node " + owner + " has "
                                  + std::to_string(forward_window_bytes >> 20)
                                  + " MiB of events in flight; retry shortly"}));
    }
    std::vector<std::size_t> sizes;
    for (auto& b : batches)
      sizes.push_back(b.events.size());
    auto wire = to_wire(topic, std::move(batches));
    // Answered once: by the owner, by the timeout, or when the link drops.
    auto answer = [p, bytes, done = std::move(done)](result<forward_answer> r) {
      p->in_flight_bytes.fetch_sub(bytes);
      done(std::move(r));
    };
    auto token = table_->forwards.add({owner, topic, std::move(sizes), std::move(answer),
                                       std::chrono::steady_clock::now() + forward_timeout});
    // The forwards queued until the gate's thread gets to them leave as one
    // frame, and the owner appends them together: one frame, one append and
    // one answer for a burst of publishes instead of one each.
    bool first = false;
    {
      std::lock_guard<std::mutex> guard{p->outbox_mutex};
      first = p->outbox.empty();
      p->outbox.push_back({token, topic, partitions, std::move(wire)});
    }
    if (first)
      gate_->run([table = table_, gate = std::weak_ptr<cluster_gate>{gate_}, p] {
        if (auto g = gate.lock())
          send_forwards(*table, *g, *p);
      });
  }

  void call(const std::string& id, peer_request req, callback<peer_response> done) override {
    auto dest = handle_of(id);
    if (!dest)
      return done(tl::make_unexpected(
        error{errc::unavailable, "node " + id + " is down or unreachable; retry shortly"}));
    // dest as an argument, not a capture: actors/ask.hpp says why.
    sys_.spawn(
      [id, req = std::move(req), done = std::move(done)](caf::event_based_actor* self,
                                                         const peer_actor& dest) mutable {
        self
          ->request(dest, forward_timeout, api_atom::value,
                    api_request{std::move(req.method), std::move(req.path), std::move(req.query),
                                std::move(req.body)})
          .then(
            [done](api_response& r) {
              done(peer_response{r.status, std::move(r.content_type), std::move(r.body)});
            },
            [self, done, id](caf::error& e) {
              done(tl::make_unexpected(
                e.category() == error_category
                  ? from_caf_error(e)
                  : error{errc::unavailable, "node " + id + " did not answer ("
                                               + self->system().render(e) + "); retry shortly"}));
            });
      },
      dest);
  }

  tail_handle tail(const std::string& topic, tail_sink sink) override {
    std::vector<peer_actor> peers;
    {
      std::shared_lock<std::shared_mutex> guard{table_->mutex};
      for (auto& p : table_->peers)
        if (!p->self && p->up && p->handle)
          peers.push_back(p->handle);
    }
    // One receiving actor for every peer; each batch is acknowledged to the
    // node that sent it. It lives until the handle is dropped.
    auto receiver = sys_.spawn(
      [](tail_actor::pointer self, const tail_sink& sink) -> tail_actor::behavior_type {
        return {[self, sink](tail_events_atom, const std::vector<std::string>& events) {
          if (auto from = caf::actor_cast<peer_actor>(self->current_sender()))
            self->send(from, tail_ack_atom::value, self->address());
          sink(events);
        }};
      },
      std::move(sink));
    for (auto& p : peers)
      caf::anon_send(p, tail_atom::value, topic, caf::actor_cast<caf::actor>(receiver));
    return std::shared_ptr<void>(nullptr, [receiver](void*) {
      caf::anon_send_exit(receiver, caf::exit_reason::user_shutdown);
    });
  }

  void topic_partitions(const std::string& home, const std::string& topic,
                        callback<std::uint32_t> done) override {
    auto dest = handle_of(home);
    if (!dest)
      return done(
        tl::make_unexpected(error{errc::unavailable, "node " + home + ", the home of " + topic
                                                       + ", is down; retry shortly"}));
    sys_.spawn(
      [home, topic, done = std::move(done)](caf::event_based_actor* self, const peer_actor& dest) {
        auto failed = [self, done, home, topic](const caf::error& e) {
          done(tl::make_unexpected(
            e.category() == error_category
              ? from_caf_error(e)
              : error{errc::unavailable, "node " + home + " did not say how many partitions "
                                           + topic + " has (" + self->system().render(e)
                                           + "); retry shortly"}));
        };
        on_link_lost(self, dest, failed);
        self->request(dest, 10s, topic_atom::value, topic)
          .then([done](std::uint32_t n) { done(n); }, [failed](caf::error& e) { failed(e); });
      },
      dest);
  }

  void stop() override {
    if (!actor_)
      return;
    gate_->stop();
    caf::anon_send(actor_, stop_atom::value);
    actor_ = peer_actor{};
  }

private:
  /// The link's handle while member `id` is up; null otherwise.
  peer_actor handle_of(const std::string& id) const {
    auto* p = table_->find(id);
    if (p == nullptr || !p->up)
      return {};
    std::shared_lock<std::shared_mutex> guard{table_->mutex};
    return p->handle;
  }

  caf::actor_system& sys_;
  std::shared_ptr<peer_table> table_;
  peer_actor actor_;
  std::shared_ptr<cluster_gate> gate_;
  mutable std::shared_mutex leaders_mutex_;
  std::function<std::string(const std::string&, std::uint32_t)> leaders_;
};

/// cfg.set() with a misspelled key or a wrong type only prints to stderr:
/// a cluster must not start with CAF's defaults in place of its settings.
template <class T>
void set_checked(caf::actor_system_config& cfg, const char* key, T value) {
  cfg.set(key, value);
  auto now = caf::get_if<T>(&caf::content(cfg), key);
  if (!now || *now != value)
    throw std::logic_error(std::string{"CAF did not take the setting "} + key);
}

} // namespace

namespace {

/// What a link frame may need on the gate's thread.
struct link_deps {
  std::weak_ptr<cluster_gate> gate;
  std::shared_ptr<peer_table> table;
  std::string self;
  std::function<caf::actor(const std::string&, std::uint32_t)> partition;
  std::function<void(const std::string&, std::uint32_t, std::vector<forward_batch>,
                     callback<forward_answer>)>
    append;
  std::shared_ptr<repl_sessions> sessions;
};

/// The actor of local partition (topic, p); invalid when none runs.
caf::actor local_partition(const link_deps& deps, const std::string& topic, std::uint32_t p) {
  return deps.partition ? deps.partition(topic, p) : caf::actor{};
}

/// The owner's answer to a forward, split into its batches.
result<forward_answer> split_answer(const forward_table::entry& e, std::vector<appended>& out) {
  forward_answer batches;
  std::size_t k = 0;
  for (auto n : e.sizes) {
    auto& batch = batches.emplace_back();
    for (std::size_t i = 0; i < n && k < out.size(); ++i, ++k) {
      auto& a = out[k];
      persistence::append_result r;
      r.status = a.duplicate ? persistence::append_status::duplicate
                             : persistence::append_status::appended;
      r.id = std::move(a.id);
      r.topic = e.topic;
      r.where.partition = a.partition;
      r.where.offset = a.offset;
      r.where.time_us = a.time_us;
      batch.push_back(std::move(r));
    }
  }
  if (k != out.size() || batches.empty() || k == 0)
    return tl::make_unexpected(error{errc::storage, "node " + e.owner + " answered a forward with "
                                                      + std::to_string(out.size())
                                                      + " events for another count"});
  return batches;
}

/// On the wire an error's code is its errc + 1 (0: appended).
std::uint8_t wire_code(errc code) {
  return static_cast<std::uint8_t>(static_cast<std::uint8_t>(code) + 1);
}

/// The forwards of one topic in a frame, appended together: per forward,
/// where each of its batches landed in the merged ones.
struct merged_forwards {
  struct slice {
    std::size_t batch = 0; ///< in the merged batches
    std::size_t start = 0;
    std::size_t count = 0;
  };
  std::vector<std::uint64_t> tokens;
  std::vector<std::vector<slice>> slices; ///< per token
};

/// Each forward's reply out of the merged append's answer.
std::vector<forward_reply> replies_of(const merged_forwards& m, const result<forward_answer>& r) {
  std::vector<forward_reply> out;
  out.reserve(m.tokens.size());
  for (std::size_t k = 0; k < m.tokens.size(); ++k) {
    auto& reply = out.emplace_back();
    reply.token = m.tokens[k];
    if (!r) {
      reply.code = wire_code(r.error().code);
      reply.detail = r.error().message;
      continue;
    }
    for (auto& s : m.slices[k]) {
      if (s.batch >= r->size() || (*r)[s.batch].size() < s.start + s.count) {
        reply = {m.tokens[k], wire_code(errc::storage), "an append answered fewer events", {}};
        break;
      }
      for (std::size_t i = s.start; i < s.start + s.count; ++i) {
        auto& a = (*r)[s.batch][i];
        if (a.status == persistence::append_status::conflict) {
          reply = {m.tokens[k],
                   wire_code(errc::conflict),
                   "event id " + a.id + " is already used on topic " + a.topic
                     + "; ids are unique across topics",
                   {}};
          break;
        }
        reply.out.push_back({a.id, a.where.partition, a.where.offset, a.where.time_us,
                             a.status == persistence::append_status::duplicate});
      }
      if (reply.code != 0)
        break;
    }
  }
  return out;
}

/// A peer's forwards: appended here (those of one topic together, one
/// batch per partition), answered over the link once durable.
void on_forward_frame(const link_deps& deps, const std::string& peer, link_frame& f) {
  auto send = [gate = deps.gate, peer](const std::vector<forward_reply>& replies) {
    if (auto g = gate.lock())
      g->send_data(peer, link_forward_answer(replies));
  };
  auto fail_all = [&](errc code, const std::string& why) {
    std::vector<forward_reply> replies;
    for (auto& item : f.forwards)
      replies.push_back({item.token, wire_code(code), why, {}});
    send(replies);
  };
  std::uint64_t bytes = 0;
  for (auto& item : f.forwards)
    bytes += bytes_of(item.events);
  if (bytes > max_forward_bytes)
    return fail_all(errc::invalid, "a forward of " + std::to_string(bytes)
                                     + " bytes exceeds the cluster frame limit");
  if (!deps.append)
    return fail_all(errc::unavailable, "node " + deps.self + " is starting");
  // One append per topic (and partition count, as the forwarder saw it),
  // in the order the topics first appear.
  std::vector<std::pair<std::string, std::uint32_t>> order;
  std::map<std::pair<std::string, std::uint32_t>,
           std::pair<std::shared_ptr<merged_forwards>, std::vector<forward_batch>>>
    groups;
  for (auto& item : f.forwards) {
    auto key = std::pair{item.topic, item.partitions};
    auto [it, fresh] = groups.try_emplace(key);
    if (fresh) {
      order.push_back(key);
      it->second.first = std::make_shared<merged_forwards>();
    }
    auto& [m, batches] = it->second;
    m->tokens.push_back(item.token);
    auto& slices = m->slices.emplace_back();
    for (auto& b : from_wire(item.events)) {
      auto at = std::find_if(batches.begin(), batches.end(),
                             [&](const forward_batch& x) { return x.partition == b.partition; });
      if (at == batches.end())
        at = batches.insert(batches.end(), forward_batch{b.partition, {}});
      slices.push_back(
        {static_cast<std::size_t>(at - batches.begin()), at->events.size(), b.events.size()});
      std::move(b.events.begin(), b.events.end(), std::back_inserter(at->events));
    }
  }
  for (auto& key : order) {
    auto& [m, batches] = groups[key];
    deps.append(key.first, key.second, std::move(batches),
                [send, m = m](result<forward_answer> r) { send(replies_of(*m, r)); });
  }
}

/// Logs a frame dropped from `peer`, at most once a second (a broken or
/// hostile peer must not flood the log); the count of the ones not logged
/// goes with the next line.
void dropped_frame(const std::string& peer, const std::string& why) {
  static std::chrono::steady_clock::time_point last{};
  static std::uint64_t unlogged = 0;
  auto now = std::chrono::steady_clock::now(); // only the gate's thread calls this
  if (now - last < 1s) {
    ++unlogged;
    return;
  }
  if (unlogged > 0)
    spdlog::warn("cluster: dropped a data frame from node {}: {} ({} more dropped since the last "
                 "such line)",
                 peer, why, unlogged);
  else
    spdlog::warn("cluster: dropped a data frame from node {}: {}", peer, why);
  last = now;
  unlogged = 0;
}

/// A follower's fetch session round: each fetch to its partition's actor,
/// answered together in one frame (repl_sessions.hpp).
void on_fetch_frame(const link_deps& deps, const std::string& peer, link_frame& f) {
  for (auto& item : f.fetches)
    if (item.request.node != peer)
      return dropped_frame(peer, "a fetch of node " + item.request.node + " on its link");
  if (!deps.sessions || f.fetches.empty())
    return; // not replicated here: the follower's fetches time out
  auto round = deps.sessions->begin(peer, f.fetches.size());
  for (auto& item : f.fetches) {
    auto& req = item.request;
    if (auto actor = local_partition(deps, req.topic, req.partition)) {
      caf::anon_send(caf::actor_cast<partition_actor>(actor), fetch_atom::value, std::move(req),
                     item.token, round);
      continue;
    }
    fetch_response r;
    r.status = fetch_status::stale;
    r.error = "node " + deps.self + " has no partition " + req.topic + "/"
              + std::to_string(req.partition) + " running";
    deps.sessions->answer(round, {req.topic, req.partition, item.token, std::move(r)});
  }
}

/// A data frame from member `peer`, on the gate's thread: forwards go to
/// the publish path, the replication data plane straight to the partition
/// actor it is for.
void on_link_frame(const link_deps& deps, const std::string& peer, const std::string& payload) {
  auto frame = read_link_frame(payload);
  if (!frame) {
    return dropped_frame(peer, frame.error());
  }
  auto& f = *frame;
  if (f.op == link_op::forward)
    return on_forward_frame(deps, peer, f);
  if (f.op == link_op::forward_answer) {
    for (auto& reply : f.replies) {
      auto e = deps.table->forwards.take(reply.token, peer);
      if (!e)
        continue; // answered already (timed out)
      if (reply.code != 0)
        e->answer(
          tl::make_unexpected(error{static_cast<errc>(reply.code - 1), std::move(reply.detail)}));
      else
        e->answer(split_answer(*e, reply.out));
    }
    return;
  }
  if (f.op == link_op::fetch)
    return on_fetch_frame(deps, peer, f);
  if (f.op == link_op::fetch_answer) {
    if (deps.sessions)
      deps.sessions->answered(peer);
    for (auto& a : f.answers) {
      if (auto actor = local_partition(deps, a.topic, a.partition))
        caf::anon_send(caf::actor_cast<partition_actor>(actor), fetched_atom::value, a.token,
                       std::move(a.response));
      else if (deps.sessions) // stopped meanwhile: the session goes on without it
        deps.sessions->forget(peer, {a.topic, a.partition});
    }
    return;
  }
  if (f.op == link_op::synced) {
    if (f.request.node != peer)
      return dropped_frame(peer, "a sync of node " + f.request.node + " on its link");
    if (auto actor = local_partition(deps, f.request.topic, f.request.partition))
      caf::anon_send(caf::actor_cast<partition_actor>(actor), synced_atom::value,
                     std::move(f.request));
  }
}

} // namespace

void configure_cluster(caf::actor_system_config& cfg, const config::config&) {
  // No openssl module: the gate does cluster.tls (see cluster_gate.hpp).
  cfg.load<caf::io::middleman>();
  // Heartbeats are off by default in CAF 0.17.6; without them a frozen or
  // cut-off peer is never noticed.
  set_checked(cfg, "middleman.heartbeat-interval", caf::timespan{500ms});
  set_checked(cfg, "middleman.connection-timeout", caf::timespan{2s});
  set_checked(cfg, "middleman.app-identifiers",
              std::vector<std::string>{"nerve/wire-" + std::to_string(wire_version)});
}

tl::expected<std::unique_ptr<cluster_service>, std::string>
start_cluster(caf::actor_system& sys, const config::config& cfg, cluster_ops ops) {
  auto table = std::make_shared<peer_table>();
  table->where = placement{cfg.cluster.members, cfg.node_id};
  for (auto& a : cfg.agents)
    table->agents.push_back(a.name);
  std::sort(table->agents.begin(), table->agents.end());
  for (auto& m : cfg.cluster.members) {
    auto p = std::make_unique<peer_entry>();
    p->member = m;
    p->self = m.id == cfg.node_id;
    p->dials = m.id > cfg.node_id;
    if (!p->self)
      p->detail = "not linked yet";
    table->peers.push_back(std::move(p));
  }
  auto hp = *config::split_host_port(cfg.cluster.listen);
  std::optional<gate_tls_files> tls;
  if (cfg.cluster.tls())
    tls = gate_tls_files{cfg.cluster.tls_cert, cfg.cluster.tls_key, cfg.cluster.tls_ca};
  auto gate = cluster_gate::start(hp.first, hp.second, std::move(tls), gate_limits{}, cfg.node_id);
  if (!gate)
    return tl::make_unexpected(gate.error());
  link_deps deps{*gate, table, cfg.node_id, ops.partition, ops.append, ops.sessions};
  (*gate)->on_data([deps = std::move(deps)](const std::string& peer, std::string payload) {
    on_link_frame(deps, peer, payload);
  });
  auto basp = sys.middleman().named_broker<caf::io::basp_broker>(caf::atom("BASP"));
  auto actor = sys.spawn(cluster_actor, table, std::move(ops), *gate, basp);
  // An accepted link reaches the broker as CAF's own tests publish an actor
  // on a scribe: it sends its server handshake naming the cluster actor.
  (*gate)->accept(
    [&sys, basp, whom = actor.address(), sigs = sys.message_types(actor), key = hp.second](int fd) {
      caf::anon_send(basp, caf::publish_atom::value, sys.middleman().backend().new_scribe(fd), key,
                     caf::actor_cast<caf::strong_actor_ptr>(whom), sigs);
    });
  spdlog::info("cluster: node {} listens on {}:{}{}; members: {}", cfg.node_id, hp.first,
               (*gate)->port(), cfg.cluster.tls() ? " (TLS)" : "", table->where.digest());
  return std::make_unique<cluster_impl>(sys, table, actor, std::move(*gate));
}

} // namespace nerve::actors
