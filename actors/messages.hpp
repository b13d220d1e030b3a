// The actor protocol of a nerve node: the enums, atoms and value types its
// actors exchange, each with an `inspect` overload so CAF can serialize it,
// and the names every node registers them under (register_messages). A type
// here may cross nodes: it holds values only (no pointers, no callbacks) and
// round-trips through CAF's binary serializer (tests/actors/messages_test.cpp).
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <caf/actor_system_config.hpp>
#include <caf/allowed_unsafe_message_type.hpp>
#include <caf/atom.hpp>
#include <caf/error.hpp>
#include <caf/meta/type_name.hpp>
#include <caf/replies_to.hpp>
#include <caf/typed_actor.hpp>

#include "actors/node.hpp"
#include "config/config.hpp"

namespace nerve::actors {

/// Version of the wire protocol; a peer speaking another one is refused.
inline constexpr std::uint32_t wire_version = 5;

// -- enums (stored and sent as their underlying integer) ----------------------

/// An agent's kind, `ordered_by` and `start`, as configured (config.hpp
/// names them; config::to_string spells them).
using config::agent_kind;
using config::ordering;
using config::start_position;
/// The life of a replay.
enum class replay_state : std::uint8_t { running, done, failed, cancelled };
/// What a replay does with the histories it rebuilds.
enum class replay_mode : std::uint8_t { dry_run, redeliver };

[[nodiscard]] std::string_view to_string(replay_state x);
[[nodiscard]] std::string_view to_string(replay_mode x);

/// The enum named by `text` (as configured or stored), if any.
[[nodiscard]] std::optional<agent_kind> agent_kind_of(std::string_view text);
[[nodiscard]] std::optional<ordering> ordering_of(std::string_view text);
[[nodiscard]] std::optional<start_position> start_position_of(std::string_view text);
[[nodiscard]] std::optional<replay_state> replay_state_of(std::string_view text);
[[nodiscard]] std::optional<replay_mode> replay_mode_of(std::string_view text);

// -- atoms: one per handler, so every signature is distinct -----------------

using dlq_put_atom = caf::atom_constant<caf::atom("dlq_put")>;
using dlq_list_atom = caf::atom_constant<caf::atom("dlq_list")>;
using dlq_get_atom = caf::atom_constant<caf::atom("dlq_get")>;
using dlq_retry_atom = caf::atom_constant<caf::atom("dlq_retry")>;
using dlq_retry_all_atom = caf::atom_constant<caf::atom("dlq_retall")>;
using dlq_delete_atom = caf::atom_constant<caf::atom("dlq_del")>;
using dlq_purge_atom = caf::atom_constant<caf::atom("dlq_purge")>;
using dlq_count_atom = caf::atom_constant<caf::atom("dlq_count")>;
using dlq_step_atom = caf::atom_constant<caf::atom("dlq_step")>;
using dlq_synced_atom = caf::atom_constant<caf::atom("dlq_synced")>;
using dlq_noted_atom = caf::atom_constant<caf::atom("dlq_noted")>;
using redeliver_atom = caf::atom_constant<caf::atom("redeliver")>;

using ready_atom = caf::atom_constant<caf::atom("ready")>;
using create_topic_atom = caf::atom_constant<caf::atom("topic_new")>;
using create_group_atom = caf::atom_constant<caf::atom("group_new")>;
using join_group_atom = caf::atom_constant<caf::atom("group_join")>;
using leave_group_atom = caf::atom_constant<caf::atom("group_left")>;
using destroy_group_atom = caf::atom_constant<caf::atom("group_del")>;
using restart_partition_atom = caf::atom_constant<caf::atom("rst_part")>;
using restart_instance_atom = caf::atom_constant<caf::atom("rst_inst")>;
using restart_dlq_atom = caf::atom_constant<caf::atom("rst_dlq")>;
using start_replay_atom = caf::atom_constant<caf::atom("rp_start")>;
using cancel_replay_atom = caf::atom_constant<caf::atom("rp_cancel")>;
using resume_atom = caf::atom_constant<caf::atom("resume")>;
using sweep_atom = caf::atom_constant<caf::atom("sweep")>;
using stop_atom = caf::atom_constant<caf::atom("stop")>;

using publish_atom = caf::atom_constant<caf::atom("publish")>;
using flush_atom = caf::atom_constant<caf::atom("flush")>;
using counters_atom = caf::atom_constant<caf::atom("counters")>;
using commit_atom = caf::atom_constant<caf::atom("commit")>;
using durable_atom = caf::atom_constant<caf::atom("durable")>;
using deliver_atom = caf::atom_constant<caf::atom("deliver")>;
using outcome_atom = caf::atom_constant<caf::atom("outcome")>;
using emitted_atom = caf::atom_constant<caf::atom("emitted")>;
using retry_atom = caf::atom_constant<caf::atom("retry")>;
using wake_atom = caf::atom_constant<caf::atom("wake")>;
using requeue_atom = caf::atom_constant<caf::atom("requeue")>;
using timeout_atom = caf::atom_constant<caf::atom("timeout")>;
using child_atom = caf::atom_constant<caf::atom("child")>;
using exited_atom = caf::atom_constant<caf::atom("exited")>;
using http_atom = caf::atom_constant<caf::atom("http")>;
using restart_child_atom = caf::atom_constant<caf::atom("rst_child")>;
using pull_atom = caf::atom_constant<caf::atom("pull")>;
using pull_answer_atom = caf::atom_constant<caf::atom("pull_ans")>;
using pull_wait_atom = caf::atom_constant<caf::atom("pull_wait")>;
using pull_pending_atom = caf::atom_constant<caf::atom("pull_pend")>;
using pull_claim_atom = caf::atom_constant<caf::atom("pull_claim")>;
using pull_ack_at_atom = caf::atom_constant<caf::atom("pull_ackat")>;
using pull_consumer_atom = caf::atom_constant<caf::atom("pull_cons")>;
using pull_expire_atom = caf::atom_constant<caf::atom("pull_exp")>;

// Between nodes (the cluster actor):
using topic_atom = caf::atom_constant<caf::atom("topic")>;
using dial_atom = caf::atom_constant<caf::atom("dial")>;
using probed_atom = caf::atom_constant<caf::atom("probed")>;
using api_atom = caf::atom_constant<caf::atom("api")>;
using answered_atom = caf::atom_constant<caf::atom("answered")>;
using tail_atom = caf::atom_constant<caf::atom("tail")>;
using tail_events_atom = caf::atom_constant<caf::atom("tail_evs")>;
using tail_ack_atom = caf::atom_constant<caf::atom("tail_ack")>;
// Replication (cluster step 2):
using fetch_atom = caf::atom_constant<caf::atom("fetch")>;
using fetched_atom = caf::atom_constant<caf::atom("fetched")>;
using synced_atom = caf::atom_constant<caf::atom("synced")>;
using unpark_atom = caf::atom_constant<caf::atom("unpark")>;
using barrier_atom = caf::atom_constant<caf::atom("barrier")>;
using sync_atom = caf::atom_constant<caf::atom("sync")>;
using role_atom = caf::atom_constant<caf::atom("role")>;
using tick_atom = caf::atom_constant<caf::atom("tick")>;

// -- errors --------------------------------------------------------------------

/// The category of nerve's errors inside caf::error.
inline constexpr caf::atom_value error_category = caf::atom("nerve");

/// An actor's answer that failed, as CAF carries it: `code` and a message.
[[nodiscard]] caf::error make_caf_error(errc code, std::string message);
/// The same, naming the node that leads what was asked for (error::leader).
[[nodiscard]] caf::error make_caf_error(errc code, std::string message, std::string leader);
/// The node error a caf::error stands for; CAF's own errors (a request that
/// timed out, an actor that died) are `unavailable`.
[[nodiscard]] error from_caf_error(const caf::error& x);

// -- value types -------------------------------------------------------------

/// Where an event lives: a partition of a topic (by its node-local id).
struct event_position {
  std::uint32_t topic_id = 0;
  std::uint32_t partition = 0;
  std::uint64_t offset = 0;

  friend bool operator==(const event_position& a, const event_position& b) {
    return a.topic_id == b.topic_id && a.partition == b.partition && a.offset == b.offset;
  }
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, event_position& x) {
  return f(caf::meta::type_name("nerve.event_position"), x.topic_id, x.partition, x.offset);
}

/// The bytes of an event's own texts (a wire_event or a persistence::new_event,
/// which carry the same fields): what sizes its frames and credits.
template <class Event>
std::size_t text_bytes(const Event& e) {
  return e.id.size() + e.key.size() + e.fragment.size() + e.type.size() + e.source.size();
}

/// One event to append, validated by the node that took the request.
struct wire_event {
  std::string id;       ///< never empty: generated where the request arrived
  std::string key;      ///< may be empty
  std::string fragment; ///< JSON members: "type":..,"trace_id":..,"data":..
  std::string type;     ///< copies of the envelope fields agent filters match on
  std::string source;
  bool generated = false; ///< a fresh UUIDv7: no duplicate check needed

  friend bool operator==(const wire_event& a, const wire_event& b) {
    return a.id == b.id && a.key == b.key && a.fragment == b.fragment && a.type == b.type
           && a.source == b.source && a.generated == b.generated;
  }
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, wire_event& x) {
  return f(caf::meta::type_name("nerve.wire_event"), x.id, x.key, x.fragment, x.type, x.source,
           x.generated);
}

/// A batch of events for one partition, in order.
struct append_request {
  std::string topic;
  std::uint32_t partition = 0;
  std::vector<wire_event> events;

  friend bool operator==(const append_request& a, const append_request& b) {
    return a.topic == b.topic && a.partition == b.partition && a.events == b.events;
  }
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, append_request& x) {
  return f(caf::meta::type_name("nerve.append_request"), x.topic, x.partition, x.events);
}

/// Where one appended event now lives; answered once it is durable.
struct appended {
  std::string id;
  std::uint32_t partition = 0;
  std::uint64_t offset = 0;
  std::int64_t time_us = 0;
  bool duplicate = false;

  friend bool operator==(const appended& a, const appended& b) {
    return a.id == b.id && a.partition == b.partition && a.offset == b.offset
           && a.time_us == b.time_us && a.duplicate == b.duplicate;
  }
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, appended& x) {
  return f(caf::meta::type_name("nerve.appended"), x.id, x.partition, x.offset, x.time_us,
           x.duplicate);
}

/// A delivery attempt, consumer group → agent instance. `group` and `offset`
/// are the sender's own handles for the record (a replay sends a token as
/// the offset); the instance hands them back unchanged in its outcome.
struct delivery {
  std::uint32_t group = 0;
  std::uint32_t instance = 0;
  std::uint64_t offset = 0;
  std::uint32_t attempt = 1;
  std::string delivery_id; ///< event id : agent : attempt (replays add their id)
  std::string event_id;
  std::string event; ///< the stored event JSON

  friend bool operator==(const delivery& a, const delivery& b) {
    return a.group == b.group && a.instance == b.instance && a.offset == b.offset
           && a.attempt == b.attempt && a.delivery_id == b.delivery_id && a.event_id == b.event_id
           && a.event == b.event;
  }
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, delivery& x) {
  return f(caf::meta::type_name("nerve.delivery"), x.group, x.instance, x.offset, x.attempt,
           x.delivery_id, x.event_id, x.event);
}

/// Where an actor sends its answer to a node method, carried in the message
/// instead of making a request: no one-shot actor and no request timeout
/// (a wake of CAF's clock thread) per call. Runs once, on the actor's
/// thread; dropped unanswered (the actor stopped with the message in its
/// mailbox or held), it answers `unavailable`, as a failed request did.
template <class T>
class answer_to {
public:
  answer_to() = default;
  answer_to(callback<T> done, std::string what)
    : state_(std::make_shared<state>(std::move(done), std::move(what))) {}

  void operator()(T x) const {
    if (state_)
      state_->answer(std::move(x));
  }

private:
  struct state {
    state(callback<T> d, std::string w) : done(std::move(d)), what(std::move(w)) {}
    state(const state&) = delete;
    state& operator=(const state&) = delete;
    ~state() {
      if (done)
        done(tl::make_unexpected(error{errc::unavailable, what + " stopped before answering"}));
    }
    void answer(result<T> r) {
      auto once = std::move(done);
      done = nullptr;
      if (once)
        once(std::move(r));
    }
    callback<T> done;
    std::string what;
  };
  std::shared_ptr<state> state_;
};

using fetch_answer = answer_to<std::vector<delivery>>;
using count_answer = answer_to<std::uint64_t>;

/// A pull agent's worker answers one delivery it fetched (HTTP ack or nack).
struct pull_answer {
  std::string delivery_id;
  bool ok = false;
  std::string result; ///< JSON text; empty: none
  std::string emit;   ///< JSON array text of follow-up events; empty: none
  std::string error;

  friend bool operator==(const pull_answer& a, const pull_answer& b) {
    return a.delivery_id == b.delivery_id && a.ok == b.ok && a.result == b.result
           && a.emit == b.emit && a.error == b.error;
  }
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, pull_answer& x) {
  return f(caf::meta::type_name("nerve.pull_answer"), x.delivery_id, x.ok, x.result, x.emit,
           x.error);
}

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, pull_request& x) {
  return f(caf::meta::type_name("nerve.pull_request"), x.consumer, x.topics, x.max, x.wait_ms,
           x.noack);
}

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, entry_at& x) {
  return f(caf::meta::type_name("nerve.entry_at"), x.partition, x.offset);
}

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, pending_entry& x) {
  return f(caf::meta::type_name("nerve.pending_entry"), x.delivery_id, x.topic, x.partition,
           x.offset, x.time_us, x.consumer, x.idle_ms, x.count, x.attempt, x.event);
}

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, claim_request& x) {
  return f(caf::meta::type_name("nerve.claim_request"), x.topic, x.consumer, x.entries,
           x.min_idle_ms, x.max, x.justid);
}

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, consumer_view& x) {
  return f(caf::meta::type_name("nerve.consumer_view"), x.name, x.pending, x.idle_ms,
           x.inactive_ms);
}

/// The answer to a delivery attempt, agent instance → consumer group.
struct outcome {
  std::uint32_t group = 0;
  std::uint32_t instance = 0;
  std::uint64_t offset = 0;
  std::uint32_t attempt = 0;
  bool ok = false;
  bool timed_out = false; ///< not answered within the agent's timeout
  std::string result;     ///< JSON text; empty: none
  std::string emit;       ///< JSON array text of follow-up events; empty: none
  std::string error;
  std::int64_t elapsed_us = 0;

  friend bool operator==(const outcome& a, const outcome& b) {
    return a.group == b.group && a.instance == b.instance && a.offset == b.offset
           && a.attempt == b.attempt && a.ok == b.ok && a.timed_out == b.timed_out
           && a.result == b.result && a.emit == b.emit && a.error == b.error
           && a.elapsed_us == b.elapsed_us;
  }
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, outcome& x) {
  return f(caf::meta::type_name("nerve.outcome"), x.group, x.instance, x.offset, x.attempt, x.ok,
           x.timed_out, x.result, x.emit, x.error, x.elapsed_us);
}

/// Credits an agent's side grants a sender: `credits` more deliveries may go
/// to instance `instance` of agent `agent` (negative: taken back).
struct credit_grant {
  std::uint32_t agent = 0;
  std::uint32_t instance = 0;
  std::int32_t credits = 0;

  friend bool operator==(const credit_grant& a, const credit_grant& b) {
    return a.agent == b.agent && a.instance == b.instance && a.credits == b.credits;
  }
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, credit_grant& x) {
  return f(caf::meta::type_name("nerve.credit_grant"), x.agent, x.instance, x.credits);
}

/// A delivery that ran out of retries, consumer group → DLQ actor.
struct dead_letter {
  std::string id; ///< derived from agent and position: the same failure, the same entry
  std::string agent;
  std::string topic;
  event_position at;
  std::string event_id;
  std::string event; ///< the event JSON, kept even after retention removes it
  std::string error;
  std::uint32_t attempts = 0;
  std::int64_t first_failed_us = 0;
  std::int64_t last_failed_us = 0;

  friend bool operator==(const dead_letter& a, const dead_letter& b) {
    return a.id == b.id && a.agent == b.agent && a.topic == b.topic && a.at == b.at
           && a.event_id == b.event_id && a.event == b.event && a.error == b.error
           && a.attempts == b.attempts && a.first_failed_us == b.first_failed_us
           && a.last_failed_us == b.last_failed_us;
  }
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, dead_letter& x) {
  return f(caf::meta::type_name("nerve.dead_letter"), x.id, x.agent, x.topic, x.at, x.event_id,
           x.event, x.error, x.attempts, x.first_failed_us, x.last_failed_us);
}

/// A dead-lettered event sent again, DLQ actor → its partition.
struct redelivery {
  std::string agent;
  std::uint64_t offset = 0;
  std::string dlq_id;

  friend bool operator==(const redelivery& a, const redelivery& b) {
    return a.agent == b.agent && a.offset == b.offset && a.dlq_id == b.dlq_id;
  }
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, redelivery& x) {
  return f(caf::meta::type_name("nerve.redelivery"), x.agent, x.offset, x.dlq_id);
}

/// Which DLQ entries an operation covers: empty names match all; the page
/// starts after `cursor` (an entry id) and holds at most `limit` entries.
struct dlq_query {
  std::string agent;
  std::string topic;
  std::string cursor;
  std::uint32_t limit = 0;

  friend bool operator==(const dlq_query& a, const dlq_query& b) {
    return a.agent == b.agent && a.topic == b.topic && a.cursor == b.cursor && a.limit == b.limit;
  }
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, dlq_query& x) {
  return f(caf::meta::type_name("nerve.dlq_query"), x.agent, x.topic, x.cursor, x.limit);
}

/// One page of DLQ entries.
struct dead_letter_page {
  std::uint64_t count = 0; ///< every entry matching the query's names
  std::vector<dead_letter> entries;
  std::string next_cursor; ///< empty on the last page

  friend bool operator==(const dead_letter_page& a, const dead_letter_page& b) {
    return a.count == b.count && a.entries == b.entries && a.next_cursor == b.next_cursor;
  }
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, dead_letter_page& x) {
  return f(caf::meta::type_name("nerve.dead_letter_page"), x.count, x.entries, x.next_cursor);
}

/// The offsets of one partition a replay covers for one agent.
struct replay_range {
  std::string topic;
  event_position from;  ///< first offset
  std::uint64_t to = 0; ///< last offset, inclusive

  friend bool operator==(const replay_range& a, const replay_range& b) {
    return a.topic == b.topic && a.from == b.from && a.to == b.to;
  }
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, replay_range& x) {
  return f(caf::meta::type_name("nerve.replay_range"), x.topic, x.from, x.to);
}

/// One agent's share of a replay, and how far its redelivery got.
struct replay_plan {
  std::string agent;
  /// Named in the request: the whole window is its history, also what came
  /// before its group started (else only what its group was given).
  bool named = false;
  std::vector<replay_range> ranges;
  std::map<std::string, std::uint64_t> counts; ///< deliveries in the history per topic
  std::uint64_t events = 0;                    ///< deliveries in this agent's history
  std::uint64_t done = 0;                      ///< of them finished under the replay
  std::uint64_t pos_range = 0;                 ///< resume from ranges[pos_range] ...
  std::uint64_t pos_offset = 0;                ///< ... at this offset

  friend bool operator==(const replay_plan& a, const replay_plan& b) {
    return a.agent == b.agent && a.named == b.named && a.ranges == b.ranges && a.counts == b.counts
           && a.events == b.events && a.done == b.done && a.pos_range == b.pos_range
           && a.pos_offset == b.pos_offset;
  }
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, replay_plan& x) {
  return f(caf::meta::type_name("nerve.replay_plan"), x.agent, x.named, x.ranges, x.counts,
           x.events, x.done, x.pos_range, x.pos_offset);
}

/// A replay as stored and reported: the window, the plan and the progress.
struct replay_record {
  std::string id;
  replay_state state = replay_state::running;
  replay_mode mode = replay_mode::dry_run;
  std::int64_t from_us = 0;
  std::int64_t to_us = 0;
  std::vector<std::string> topics;
  std::vector<std::string> agents;
  std::vector<std::string> event_ids;
  std::vector<replay_plan> plan;
  std::uint64_t events_total = 0;
  std::uint64_t events_done = 0;
  std::uint64_t acked = 0;
  std::uint64_t failed = 0;
  std::uint64_t retried = 0;
  std::uint64_t dead_lettered = 0;
  std::int64_t created_us = 0;
  std::int64_t finished_us = 0; ///< 0 while running
  std::string error;

  friend bool operator==(const replay_record& a, const replay_record& b) {
    return a.id == b.id && a.state == b.state && a.mode == b.mode && a.from_us == b.from_us
           && a.to_us == b.to_us && a.topics == b.topics && a.agents == b.agents
           && a.event_ids == b.event_ids && a.plan == b.plan && a.events_total == b.events_total
           && a.events_done == b.events_done && a.acked == b.acked && a.failed == b.failed
           && a.retried == b.retried && a.dead_lettered == b.dead_lettered
           && a.created_us == b.created_us && a.finished_us == b.finished_us && a.error == b.error;
  }
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, replay_record& x) {
  return f(caf::meta::type_name("nerve.replay_record"), x.id, x.state, x.mode, x.from_us, x.to_us,
           x.topics, x.agents, x.event_ids, x.plan, x.events_total, x.events_done, x.acked,
           x.failed, x.retried, x.dead_lettered, x.created_us, x.finished_us, x.error);
}

/// The first message on a link between two nodes.
struct hello {
  std::string node_id; ///< nerve's persistent id, never CAF's (that changes on restart)
  std::uint32_t version = wire_version;
  std::string members;             ///< placement::digest of the sender's member list
  std::vector<std::string> agents; ///< the agents the sender runs (its config's)

  friend bool operator==(const hello& a, const hello& b) {
    return a.node_id == b.node_id && a.version == b.version && a.members == b.members
           && a.agents == b.agents;
  }
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, hello& x) {
  return f(caf::meta::type_name("nerve.hello"), x.node_id, x.version, x.members, x.agents);
}

/// An API request a node hands a peer (node.hpp peer_request on the wire).
struct api_request {
  std::string method;
  std::string path;
  std::string query;
  std::string body;

  friend bool operator==(const api_request& a, const api_request& b) {
    return a.method == b.method && a.path == b.path && a.query == b.query && a.body == b.body;
  }
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, api_request& x) {
  return f(caf::meta::type_name("nerve.api_request"), x.method, x.path, x.query, x.body);
}

struct api_response {
  std::uint32_t status = 0;
  std::string content_type;
  std::string body;

  friend bool operator==(const api_response& a, const api_response& b) {
    return a.status == b.status && a.content_type == b.content_type && a.body == b.body;
  }
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, api_response& x) {
  return f(caf::meta::type_name("nerve.api_response"), x.status, x.content_type, x.body);
}

/// One stored event as a partition's leader ships it to a follower
/// (persistence::replica_record on the wire).
struct repl_record {
  std::uint64_t offset = 0;
  std::int64_t time_us = 0;
  std::string id;
  std::string json;

  friend bool operator==(const repl_record& a, const repl_record& b) {
    return a.offset == b.offset && a.time_us == b.time_us && a.id == b.id && a.json == b.json;
  }
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, repl_record& x) {
  return f(caf::meta::type_name("nerve.repl_record"), x.offset, x.time_us, x.id, x.json);
}

/// Consecutive records the leader of `epoch` appended.
struct repl_chunk {
  std::uint32_t epoch = 0;
  std::vector<repl_record> records;

  friend bool operator==(const repl_chunk& a, const repl_chunk& b) {
    return a.epoch == b.epoch && a.records == b.records;
  }
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, repl_chunk& x) {
  return f(caf::meta::type_name("nerve.repl_chunk"), x.epoch, x.records);
}

/// One delivery-state change (persistence::state_op on the wire).
struct repl_state_op {
  std::uint8_t family = 0;
  bool del = false;
  std::string key;
  std::string value;

  friend bool operator==(const repl_state_op& a, const repl_state_op& b) {
    return a.family == b.family && a.del == b.del && a.key == b.key && a.value == b.value;
  }
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, repl_state_op& x) {
  return f(caf::meta::type_name("nerve.repl_state_op"), x.family, x.del, x.key, x.value);
}

/// A follower asks its leader for the records from `from` on (its log's
/// end) and says how far its copy is on disk (`synced`). The same record
/// alone (synced_atom) tells the leader of a sync between fetches.
struct fetch_request {
  std::string topic;
  std::uint32_t partition = 0;
  std::uint32_t epoch = 0; ///< the leader's epoch as the follower knows it
  std::uint64_t from = 0;
  std::uint32_t last_epoch = 0; ///< the newest epoch in the follower's checkpoint
  std::string node;             ///< the follower
  /// The follower's synced end (at most `from`): offsets below are on its disk.
  std::uint64_t synced = 0;
  /// Changes when the follower's log changed under it (a truncation, a new
  /// role): its earlier synced ends no longer count.
  std::uint64_t session = 0;

  friend bool operator==(const fetch_request& a, const fetch_request& b) {
    return a.topic == b.topic && a.partition == b.partition && a.epoch == b.epoch
           && a.from == b.from && a.last_epoch == b.last_epoch && a.node == b.node
           && a.synced == b.synced && a.session == b.session;
  }
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, fetch_request& x) {
  return f(caf::meta::type_name("nerve.fetch_request"), x.topic, x.partition, x.epoch, x.from,
           x.last_epoch, x.node, x.synced, x.session);
}

/// What a fetch gets back.
enum class fetch_status : std::uint8_t {
  ok,       ///< `chunks` (maybe none) follow the follower's end
  diverged, ///< truncate to `position`: the leader's end of the follower's last epoch
  reset,    ///< the leader's log starts at `position` (retention): start again there
  stale,    ///< not the leader of that epoch: the follower waits for the control plane
};

struct fetch_response {
  fetch_status status = fetch_status::ok;
  std::uint32_t epoch = 0;
  std::uint64_t high_watermark = 0;
  std::uint64_t position = 0;
  /// With diverged: the epoch of the leader's history that `position` ends
  /// (the largest it has up to the follower's last epoch).
  std::uint32_t position_epoch = 0;
  std::uint64_t log_end = 0; ///< the leader's log end when it answered
  std::string error;         ///< with stale: why
  std::vector<repl_chunk> chunks;
  std::vector<repl_state_op> state;

  friend bool operator==(const fetch_response& a, const fetch_response& b) {
    return a.status == b.status && a.epoch == b.epoch && a.high_watermark == b.high_watermark
           && a.position == b.position && a.position_epoch == b.position_epoch
           && a.log_end == b.log_end && a.error == b.error && a.chunks == b.chunks
           && a.state == b.state;
  }
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, fetch_response& x) {
  return f(caf::meta::type_name("nerve.fetch_response"), x.status, x.epoch, x.high_watermark,
           x.position, x.position_epoch, x.log_end, x.error, x.chunks, x.state);
}

// -- link frames -----------------------------------------------------------------

/// The replication data plane's messages travel as the cluster gate's data
/// frames (cluster_gate.hpp), not as CAF messages: one thread hand-off on
/// each side instead of three. A frame is one op byte, then its fields in
/// CAF's binary format.
enum class link_op : std::uint8_t {
  /// fetch_items: a follower node's fetches of every partition it follows
  /// from the receiver (one fetch session round, repl_sessions.hpp).
  fetch = 1,
  fetch_answer = 2, ///< fetch_answer_items: the leader's answers to one fetch frame
  synced = 3,       ///< fetch_request: a follower's sync between fetches
  /// forward_items: publishes' events for partitions led there, every forward
  /// queued for the peer since the last such frame.
  forward = 4,
  /// forward_replies: the outcomes of forwards, those appended together in one.
  forward_answer = 5,
};

/// One partition's fetch in a fetch frame.
struct fetch_item {
  std::uint64_t token = 0; ///< the follower partition's, to match the answer
  fetch_request request;

  friend bool operator==(const fetch_item& a, const fetch_item& b) {
    return a.token == b.token && a.request == b.request;
  }
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, fetch_item& x) {
  return f(caf::meta::type_name("nerve.fetch_item"), x.token, x.request);
}

/// One partition's answer in a fetch answer frame.
struct fetch_answer_item {
  std::string topic;
  std::uint32_t partition = 0;
  std::uint64_t token = 0; ///< of the fetch it answers
  fetch_response response;

  friend bool operator==(const fetch_answer_item& a, const fetch_answer_item& b) {
    return a.topic == b.topic && a.partition == b.partition && a.token == b.token
           && a.response == b.response;
  }
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, fetch_answer_item& x) {
  return f(caf::meta::type_name("nerve.fetch_answer_item"), x.topic, x.partition, x.token,
           x.response);
}

/// One publish's events forwarded to the node leading their partitions.
struct forward_item {
  std::uint64_t token = 0; ///< the forwarder's, answered in its forward_reply
  std::string topic;
  std::uint32_t partitions = 0; ///< the topic's partition count, as the forwarder knows it
  std::vector<append_request> events;

  friend bool operator==(const forward_item& a, const forward_item& b) {
    return a.token == b.token && a.topic == b.topic && a.partitions == b.partitions
           && a.events == b.events;
  }
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, forward_item& x) {
  return f(caf::meta::type_name("nerve.forward_item"), x.token, x.topic, x.partitions, x.events);
}

/// The outcome of one forward_item.
struct forward_reply {
  std::uint64_t token = 0;
  std::uint8_t code = 0;     ///< 0: appended, else errc + 1
  std::string detail;        ///< with an error: its message
  std::vector<appended> out; ///< appended: where each event lives, in the forward's order

  friend bool operator==(const forward_reply& a, const forward_reply& b) {
    return a.token == b.token && a.code == b.code && a.detail == b.detail && a.out == b.out;
  }
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, forward_reply& x) {
  return f(caf::meta::type_name("nerve.forward_reply"), x.token, x.code, x.detail, x.out);
}

[[nodiscard]] std::string link_fetch(const std::vector<fetch_item>& fetches);
[[nodiscard]] std::string link_fetch_answer(const std::vector<fetch_answer_item>& answers);
[[nodiscard]] std::string link_synced(const fetch_request& req);
[[nodiscard]] std::string link_forward(const std::vector<forward_item>& items);
[[nodiscard]] std::string link_forward_answer(const std::vector<forward_reply>& replies);

/// One decoded link frame: which op, and the fields it carries.
struct link_frame {
  link_op op = link_op::fetch;
  std::vector<fetch_item> fetches;        ///< fetch
  std::vector<fetch_answer_item> answers; ///< fetch_answer
  fetch_request request;                  ///< synced
  std::vector<forward_item> forwards;     ///< forward
  std::vector<forward_reply> replies;     ///< forward_answer
};

/// Decodes a data frame; an error says why it is none of ours.
[[nodiscard]] tl::expected<link_frame, std::string> read_link_frame(std::string_view frame);

// -- interfaces ----------------------------------------------------------------

namespace detail {
struct partition_job;
} // namespace detail

/// A partition's share of a publish request, answered through the callback
/// it carries; node-local, never sent between nodes (append_request is).
using publish_job = std::shared_ptr<detail::partition_job>;

/// Whoever answers deliveries is told the outcome: a partition or a replay;
/// a pull queue sends an XACK's outcomes in one message.
using outcome_sink = caf::typed_actor<caf::reacts_to<outcome_atom, outcome>,
                                      caf::reacts_to<outcome_atom, std::vector<outcome>>>;

/// A topic partition: its group commit and its consumer groups.
using partition_actor = caf::typed_actor<
  caf::reacts_to<publish_atom, publish_job>,
  /// Commits the batch and the delivery state, and delivers.
  caf::reacts_to<flush_atom>,
  /// XGROUP CREATE: the group (agent) now reads this partition, from its
  /// start (true) or its end.
  caf::reacts_to<join_group_atom, std::string, bool>,
  /// XGROUP DESTROY: the group (agent) no longer reads this partition.
  caf::reacts_to<leave_group_atom, std::string>,
  /// The held-back counter snapshot is due.
  caf::reacts_to<counters_atom>,
  /// Delivery state held back for the next append is due.
  caf::reacts_to<commit_atom>,
  /// Offsets below this are on disk.
  caf::reacts_to<durable_atom, std::uint64_t>, caf::reacts_to<outcome_atom, outcome>,
  caf::reacts_to<outcome_atom, std::vector<outcome>>,
  /// The follow-ups of (group, offset, attempt) are published; result, error.
  caf::reacts_to<emitted_atom, std::uint64_t, std::uint64_t, std::uint32_t, std::string,
                 std::string>,
  /// A retry of (group, offset) is due.
  caf::reacts_to<retry_atom, std::uint64_t, std::uint64_t>,
  /// A credit may be free again.
  caf::reacts_to<wake_atom>,
  /// Instance (agent index, instance) died: its deliveries go out again.
  caf::reacts_to<requeue_atom, std::uint64_t, std::uint64_t>,
  /// A DLQ retry of (agent, offset, dlq id): empty once queued, its pending
  /// record written and the entry deleted (one batch), else why not.
  caf::replies_to<redeliver_atom, std::string, std::uint64_t, std::string>::with<std::string>,
  /// Stores a dead letter of this partition (a replay's) / deletes DLQ entry
  /// `id`, in the partition's delivery state (replicated with it): empty
  /// once written, else why not (this node does not lead the partition).
  caf::replies_to<dlq_put_atom, dead_letter>::with<std::string>,
  caf::replies_to<dlq_delete_atom, std::string>::with<std::string>,
  /// Replication: a follower's fetch (token): the leader answers over the
  /// link, maybe after a wait.
  caf::reacts_to<fetch_atom, fetch_request, std::uint64_t, std::uint64_t>,
  /// Leader: answer follower node's fetch parked in fetch session round r now.
  caf::reacts_to<unpark_atom, std::string, std::uint64_t>,
  /// Hands the groups what is durable now, then answers: a pull agent's
  /// fetch that does not wait sees every entry acknowledged before it.
  caf::replies_to<barrier_atom>::with<bool>,
  /// Follower: the answer of its fetch (token); its log of generation g is synced up to n.
  caf::reacts_to<fetched_atom, std::uint64_t, fetch_response>,
  caf::reacts_to<synced_atom, std::uint64_t, std::uint64_t>,
  /// Replication (leader): a follower's copy is synced up to `synced`.
  caf::reacts_to<synced_atom, fetch_request>,
  /// The control plane changed the partition's role (read it from the slot).
  caf::reacts_to<role_atom>,
  /// Internal: the periodic check of fetches, the in-sync set and acks.
  caf::reacts_to<tick_atom>, caf::reacts_to<stop_atom>>;

/// An agent instance: runs the handler of each delivery it is sent and
/// answers the sender.
using instance_actor = caf::typed_actor<
  caf::reacts_to<deliver_atom, delivery>,
  /// Deliveries of one partition flush, in order, in one message.
  caf::reacts_to<deliver_atom, std::vector<delivery>>,
  /// Internal: a delivery (by id) was not answered in time.
  caf::reacts_to<timeout_atom, std::string>,
  /// Internal: an http agent's answer (delivery id, status, body or error).
  caf::reacts_to<http_atom, std::string, std::uint32_t, std::string>,
  /// Internal: a line from the child of generation n; the child exited.
  caf::reacts_to<child_atom, std::uint64_t, std::string>,
  caf::reacts_to<exited_atom, std::uint64_t, int>, caf::reacts_to<restart_child_atom>,
  /// Pull agents: a worker fetches deliveries, waiting for the first.
  caf::reacts_to<pull_atom, pull_request, fetch_answer>,
  /// Pull agents: the pending entries of a topic (fetched, not answered),
  /// with their events if asked.
  caf::replies_to<pull_pending_atom, std::string, bool>::with<std::vector<pending_entry>>,
  /// Pull agents: hands pending entries to another consumer.
  caf::replies_to<pull_claim_atom, claim_request>::with<std::vector<pending_entry>>,
  /// Pull agents: acks the fetched deliveries of these entries of a topic;
  /// answers how many.
  caf::reacts_to<pull_ack_at_atom, std::string, std::vector<entry_at>, count_answer>,
  /// Pull agents: the consumers with their pending count in topic t; with
  /// a name and op 1 creates it first, with op -1 deletes it first (its
  /// pending entries go back to the queue), op 0 just lists; op -2 drops
  /// every delivery of the topic after listing (XGROUP DESTROY).
  caf::replies_to<pull_consumer_atom, std::string, std::string,
                  std::int32_t>::with<std::vector<consumer_view>>,
  /// Internal: the earliest hand-outs' timeouts are due.
  caf::reacts_to<pull_expire_atom>,
  /// Pull agents: workers' acks and nacks, all or none: answers the
  /// delivery ids that are not fetched and unanswered here (then
  /// nothing was taken).
  caf::replies_to<pull_answer_atom, std::vector<pull_answer>>::with<std::vector<std::string>>,
  /// Internal: fetch `n` waited long enough.
  caf::reacts_to<pull_wait_atom, std::uint64_t>, caf::reacts_to<stop_atom>>;

/// A running replay: redelivers its plan's histories.
using replay_actor
  = caf::typed_actor<caf::reacts_to<wake_atom>,
                     /// Internal: persist the progress, look for work.
                     caf::reacts_to<sweep_atom>, caf::reacts_to<outcome_atom, outcome>,
                     caf::reacts_to<outcome_atom, std::vector<outcome>>,
                     /// Internal: attempt `token` was not answered (its instance died).
                     caf::reacts_to<timeout_atom, std::uint64_t>,
                     /// Internal: a retry of (agent, range, offset) is due.
                     caf::reacts_to<retry_atom, std::uint64_t, std::uint64_t, std::uint64_t>,
                     caf::replies_to<cancel_replay_atom>::with<caf::ok_atom>,
                     caf::reacts_to<stop_atom>>;

/// The runner: one per node, supervises every other actor.
using runner_actor = caf::typed_actor<
  /// Answers once every known topic's partitions and the agents are spawned.
  caf::replies_to<ready_atom>::with<bool>,
  /// Creates a topic with `n` partitions (0: as configured; nothing when it
  /// exists) and id `id` (0: the log picks; replicated topics have the
  /// cluster's); answers its partition count.
  caf::replies_to<create_topic_atom, std::string, std::uint32_t,
                  std::uint32_t>::with<std::uint32_t>,
  /// XGROUP CREATE group (agent) on stream (topic) from its start (true) or
  /// end, creating the stream first when asked (MKSTREAM); answers false
  /// when the group reads the stream already (BUSYGROUP).
  caf::replies_to<create_group_atom, std::string, std::string, bool, bool>::with<bool>,
  /// XGROUP DESTROY group (agent) on stream (topic): answers false when the
  /// group does not read the stream.
  caf::replies_to<destroy_group_atom, std::string, std::string>::with<bool>,
  /// Internal: restarts after a child's restart_policy wait.
  caf::reacts_to<restart_partition_atom, std::string, std::uint32_t>,
  caf::reacts_to<restart_instance_atom, std::string, std::uint32_t>,
  caf::reacts_to<restart_dlq_atom>,
  /// Starts (or resumes) the actor of a stored, running replay.
  caf::reacts_to<start_replay_atom, std::string>,
  /// Cancels a replay, running or waiting to resume.
  caf::replies_to<cancel_replay_atom, std::string>::with<caf::ok_atom>,
  /// Internal timers: storage resumption, retention.
  caf::reacts_to<resume_atom>, caf::reacts_to<sweep_atom>,
  /// Stops every child, then itself.
  caf::reacts_to<stop_atom>>;

/// The cluster actor of a node: its peers' entry point (published on
/// cluster.listen) and the keeper of one link per peer.
using peer_actor = caf::typed_actor<
  /// A dialing peer introduces itself; answered with this node's hello.
  caf::replies_to<hello>::with<hello>,
  /// The partition count of a topic whose home is this node (created on
  /// first ask).
  caf::replies_to<topic_atom, std::string>::with<std::uint32_t>,
  /// Answers an API request from this node's own data (a cluster-wide read).
  caf::replies_to<api_atom, api_request>::with<api_response>,
  /// Sends `subscriber` (a tail_actor) the events appended here to `topic`
  /// from now on, until it dies; at most a window of batches unacknowledged.
  caf::reacts_to<tail_atom, std::string, caf::actor>,
  /// A subscriber took one batch.
  caf::reacts_to<tail_ack_atom, caf::actor_addr>,
  /// Internal: time to dial member `id`; the gate's dial of `id` ended (linked or not).
  caf::reacts_to<dial_atom, std::string>, caf::reacts_to<probed_atom, std::string, bool>,
  /// Internal: the once-a-second check of forwards waiting for their owner.
  caf::reacts_to<tick_atom>,
  /// Internal: API request `token` is answered here.
  caf::reacts_to<answered_atom, std::uint64_t, api_response>, caf::reacts_to<stop_atom>>;

/// A remote tail's receiving end: batches of events (stored JSON) of a
/// topic, each acknowledged to the sending node's cluster actor.
using tail_actor = caf::typed_actor<caf::reacts_to<tail_events_atom, std::vector<std::string>>>;

/// Registers every type above under its stable name ("nerve.<type>"); each
/// node calls it on its actor_system_config before the system starts.
void register_messages(caf::actor_system_config& cfg);

} // namespace nerve::actors

// Node-local answers: a callback never crosses nodes.
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(nerve::actors::fetch_answer)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(nerve::actors::count_answer)
