// Cluster-wide reads (CONTRACT.md section 9): in a cluster, the admin routes
// ask every member for its own share (the same route, answered from the
// member's data alone) and merge the answers; reads of one partition go to
// its owner; reads by id ask members until one has it. Members that cannot
// be reached are named in "unreachable" (lists), or make the answer a 503
// (one partition, one id).
#include <algorithm>
#include <map>
#include <memory>
#include <mutex>
#include <set>

#include <nlohmann/json.hpp>

#include "actors/event_input.hpp"
#include "http/problem.hpp"
#include "http/routes_private.hpp"

namespace nerve::http {

// Ordered: merged answers keep the field order of the members' answers.
using json = nlohmann::ordered_json;

namespace {

/// One member's answer to a fanned-out request.
struct member_answer {
  std::string node;
  bool reached = false;
  response res; ///< the member's answer, or the 503 for an unreachable member
};

using answers = std::vector<member_answer>;

response to_response(actors::result<actors::peer_response> r) {
  if (!r)
    return error_response(r.error());
  response res;
  res.status = r->status;
  res.content_type = r->content_type;
  res.body = std::move(r->body);
  return res;
}

/// Asks member `node` (this node: `local`) for its own answer to `req`.
void ask_member(const api_env& env, const std::string& node, const request& req,
                const local_fn& local, std::function<void(member_answer)> done) {
  if (node == env.node.node_id()) {
    request mine = req;
    mine.local = true;
    return local(mine, [node, done](response res) { done({node, true, std::move(res)}); });
  }
  env.node.call_peer(node, {req.method, req.path, req.query, req.body},
                     [node, done](actors::result<actors::peer_response> r) {
                       // A member's own refusal (a page too large to send,
                       // say) is its answer; only a lost link is unreachable.
                       bool reached = r || r.error().code != actors::errc::unavailable;
                       done({node, reached, to_response(std::move(r))});
                     });
}

/// Asks every member, this node included; `done` gets the answers in
/// member order once all are in.
void ask_all(const api_env& env, const request& req, const local_fn& local,
             std::function<void(answers)> done, bool include_self = true) {
  auto members = env.node.cluster().members;
  if (!include_self)
    members.erase(std::remove_if(members.begin(), members.end(),
                                 [](const actors::member_view& m) { return m.self; }),
                  members.end());
  if (members.empty())
    return done({});
  struct join {
    std::mutex mutex;
    answers out;
    std::size_t remaining = 0;
    std::function<void(answers)> done;
  };
  auto j = std::make_shared<join>();
  j->out.resize(members.size());
  j->remaining = members.size();
  j->done = std::move(done);
  for (std::size_t i = 0; i < members.size(); ++i)
    ask_member(env, members[i].id, req, local, [j, i](member_answer a) {
      bool last = false;
      {
        std::lock_guard<std::mutex> guard{j->mutex};
        j->out[i] = std::move(a);
        last = --j->remaining == 0;
      }
      if (last)
        j->done(std::move(j->out));
    });
}

/// Asks the members one after another until one answers other than 404;
/// all 404: that 404, or a 503 when a member could not be asked.
void ask_until_found(const api_env& env, const request& req, const local_fn& local,
                     responder respond) {
  auto members = std::make_shared<std::vector<std::string>>();
  members->push_back(env.node.node_id()); // this node first: no hop
  for (auto& m : env.node.cluster().members)
    if (!m.self)
      members->push_back(m.id);
  struct state {
    std::size_t next = 0;
    std::optional<response> not_found;
    std::vector<std::string> unreachable;
    std::vector<std::string> leaders; ///< named by copies that do not lead (see below)
    bool not_found_from_copy = false;
  };
  auto st = std::make_shared<state>();
  auto step = std::make_shared<std::function<void()>>();
  // An acknowledged event is on every in-sync copy, at least min_insync of
  // them (1 without replication).
  auto copies = env.cfg.cluster.replicated() ? env.cfg.cluster.min_insync : 1U;
  *step = [&env, req, local, respond, members, st, step, copies]() {
    if (st->next == members->size()) {
      auto done = std::move(*step);
      // A copy that does not lead its partition answers 404 naming the
      // leader (problem+json member "leader", from the DLQ actor): if L could
      // not be asked, the entry exists and is out of reach now.
      for (auto& l : st->leaders)
        if (std::find(st->unreachable.begin(), st->unreachable.end(), l) != st->unreachable.end())
          return respond(
            error_response({actors::errc::unavailable,
                            "node " + l
                              + ", which leads the partition of this entry, could not be asked; "
                                "retry shortly"}));
      // Fewer nodes out of reach than the copies an acknowledged event (or a
      // DLQ entry shipped with it) has: one of them answered, so not found
      // is the answer.
      if (st->unreachable.empty() || st->unreachable.size() < copies)
        return respond(std::move(*st->not_found));
      std::string names;
      for (auto& n : st->unreachable)
        names += (names.empty() ? "" : ", ") + n;
      return respond(error_response(
        {actors::errc::unavailable, "not found on the reachable nodes; node(s) " + names
                                      + " could not be asked; retry shortly"}));
    }
    auto node = (*members)[st->next++];
    ask_member(env, node, req, local, [respond, st, step](member_answer a) {
      if (!a.reached) {
        st->unreachable.push_back(a.node);
      } else if (a.res.status != 404) {
        *step = nullptr;
        return respond(std::move(a.res));
      } else {
        // A copy that does not lead names the node that does.
        bool names_leader = false;
        auto body = json::parse(a.res.body, nullptr, false);
        if (body.is_object() && body.contains("leader") && body["leader"].is_string()) {
          st->leaders.push_back(body["leader"].get<std::string>());
          names_leader = true;
        }
        // The answer is a leader's "no such entry" rather than a copy's.
        if (!st->not_found || (st->not_found_from_copy && !names_leader)) {
          st->not_found = std::move(a.res);
          st->not_found_from_copy = names_leader;
        }
      }
      (*step)();
    });
  };
  (*step)();
}

/// The JSON bodies of the members that answered 200; the others' ids go to
/// `unreachable`. A member's error other than 503 is the answer (`failed`).
std::vector<std::pair<std::string, json>> bodies(answers& all, json& unreachable,
                                                 std::optional<response>& failed) {
  std::vector<std::pair<std::string, json>> out;
  for (auto& a : all) {
    if (!a.reached || a.res.status == 503) {
      unreachable.push_back(a.node);
      continue;
    }
    if (a.res.status != 200) {
      if (!failed)
        failed = std::move(a.res);
      continue;
    }
    auto j = json::parse(a.res.body, nullptr, false);
    if (j.is_discarded()) {
      unreachable.push_back(a.node);
      continue;
    }
    out.emplace_back(a.node, std::move(j));
  }
  return out;
}

std::string dump(const json& j) {
  return j.dump(-1, ' ', false, json::error_handler_t::replace);
}

/// Fans out, then merges the 200 bodies with `merge`; members that could
/// not answer are listed in "unreachable" (when any).
void merged(const api_env& env, request& req, const local_fn& local, responder respond,
            std::function<json(std::vector<std::pair<std::string, json>>&)> merge) {
  ask_all(env, req, local, [respond, merge](answers all) {
    json unreachable = json::array();
    std::optional<response> failed;
    auto parts = bodies(all, unreachable, failed);
    if (failed)
      return respond(std::move(*failed));
    if (parts.empty())
      return respond(error_response({actors::errc::unavailable, "no node answered"}));
    auto out = merge(parts);
    if (!unreachable.empty())
      out["unreachable"] = std::move(unreachable);
    respond(json_response(200, dump(out)));
  });
}

void add_number(json& into, const json& from) {
  if (from.is_number_integer() && into.is_number_integer())
    into = into.get<std::int64_t>() + from.get<std::int64_t>();
  else if (from.is_number() && into.is_number())
    into = into.get<double>() + from.get<double>();
}

// -- merges, one per route ---------------------------------------------------

/// Topics by name; each partition's stats from its owner.
json merge_topics(const api_env& env, std::vector<std::pair<std::string, json>>& parts) {
  std::map<std::string, json> by_name;
  for (auto& [node, body] : parts)
    for (auto& t : body.value("topics", json::array())) {
      auto name = t.value("name", "");
      auto& m = by_name[name];
      if (m.is_null())
        m = t;
      for (auto& ps : t.value("partition_stats", json::array())) {
        auto p = ps.value("partition", 0U);
        if (env.node.owner_of(name, p) == node && p < m["partition_stats"].size())
          m["partition_stats"][p] = ps;
      }
    }
  json topics = json::array();
  for (auto& [name, t] : by_name) {
    std::uint64_t events = 0;
    std::uint64_t bytes = 0;
    for (auto& ps : t["partition_stats"]) {
      events += ps.value("events", 0ULL);
      bytes += ps.value("bytes", 0ULL);
    }
    t["events"] = events;
    t["bytes"] = bytes;
    topics.push_back(std::move(t));
  }
  return json{{"topics", std::move(topics)}};
}

/// Agents by name, their instances from every node (each with its node).
json merge_agent(json& into, const json& from, const std::string& node) {
  if (into.is_null()) {
    into = from;
    into["instances"] = json::array();
  }
  for (auto inst : from.value("instances", json::array())) {
    inst["node"] = node;
    into["instances"].push_back(std::move(inst));
  }
  if (from.value("state", "") != "running")
    into["state"] = from.value("state", "");
  return into;
}

json merge_agents(std::vector<std::pair<std::string, json>>& parts) {
  std::map<std::string, json> by_name;
  std::vector<std::string> order;
  for (auto& [node, body] : parts)
    for (auto& a : body.value("agents", json::array())) {
      auto name = a.value("name", "");
      if (!by_name.count(name))
        order.push_back(name);
      merge_agent(by_name[name], a, node);
    }
  json agents = json::array();
  for (auto& n : order)
    agents.push_back(std::move(by_name[n]));
  return json{{"agents", std::move(agents)}};
}

/// Counters summed per (agent, topic); latency percentiles are the worst
/// node's (an upper bound), the mean weighted by processed events.
json merge_metrics(std::vector<std::pair<std::string, json>>& parts) {
  std::map<std::pair<std::string, std::string>, json> rows;
  std::vector<std::pair<std::string, std::string>> order;
  for (auto& [node, body] : parts)
    for (auto& r : body.value("metrics", json::array())) {
      std::pair<std::string, std::string> key{r.value("agent", ""), r.value("topic", "")};
      auto& m = rows[key];
      if (m.is_null()) {
        order.push_back(key);
        m = r;
        m["avg_ms"] = r.value("avg_ms", 0.0) * r.value("processed", 0.0);
        continue;
      }
      for (auto* f : {"received", "processed", "failed", "retried", "dead_lettered"})
        if (r.contains(f))
          add_number(m[f], r[f]);
      m["avg_ms"] = m["avg_ms"].get<double>() + r.value("avg_ms", 0.0) * r.value("processed", 0.0);
      for (auto* f : {"p50_ms", "p99_ms", "delivery_p50_ms", "delivery_p99_ms"})
        if (r.contains(f) && r[f].is_number() && (!m[f].is_number() || r[f] > m[f]))
          m[f] = r[f];
    }
  json out = json::array();
  for (auto& key : order) {
    auto& m = rows[key];
    auto processed = m.value("processed", 0.0);
    auto received = m.value("received", 0.0);
    m["avg_ms"]
      = processed > 0 ? std::round(m["avg_ms"].get<double>() / processed * 1000) / 1000 : 0.0;
    if (received > 0)
      m["success_rate"] = std::round(100000.0 * processed / received) / 1000;
    out.push_back(std::move(m));
  }
  return json{{"metrics", std::move(out)}};
}

/// Groups by agent; each partition from its owner; totals summed.
json merge_groups(const api_env& env, const std::string& topic,
                  std::vector<std::pair<std::string, json>>& parts) {
  std::map<std::string, json> by_agent;
  std::vector<std::string> order;
  for (auto& [node, body] : parts)
    for (auto& g : body.value("groups", json::array())) {
      auto agent = g.value("agent", "");
      auto& m = by_agent[agent];
      if (m.is_null()) {
        order.push_back(agent);
        m = g;
        for (auto* f : {"lag", "pending", "instances"})
          m[f] = 0;
        m["last_delivered_offset"] = nullptr;
      }
      for (auto* f : {"lag", "pending", "instances"})
        if (g.contains(f))
          add_number(m[f], g[f]);
      for (auto& ps : g.value("partitions", json::array())) {
        auto p = ps.value("partition", 0U);
        if (env.node.owner_of(topic, p) == node && p < m["partitions"].size())
          m["partitions"][p] = ps;
      }
      auto& last = g["last_delivered_offset"];
      if (last.is_number()
          && (m["last_delivered_offset"].is_null() || last > m["last_delivered_offset"]))
        m["last_delivered_offset"] = last;
    }
  json groups = json::array();
  for (auto& a : order)
    groups.push_back(std::move(by_agent[a]));
  return json{{"topic", topic}, {"groups", std::move(groups)}};
}

/// One page over every node's DLQ: entries in id order (each node pages in
/// id order after the same cursor), the first `limit` of them.
json merge_dlq(std::size_t limit, std::vector<std::pair<std::string, json>>& parts) {
  std::vector<json> entries;
  std::uint64_t count = 0;
  bool more = false;
  for (auto& [node, body] : parts) {
    count += body.value("count", 0ULL);
    more = more || !body["next_cursor"].is_null();
    for (auto& e : body.value("entries", json::array()))
      entries.push_back(e);
  }
  std::sort(entries.begin(), entries.end(),
            [](const json& a, const json& b) { return a.value("id", "") < b.value("id", ""); });
  if (entries.size() > limit) {
    entries.resize(limit);
    more = true;
  }
  json page = json::array();
  for (auto& e : entries)
    page.push_back(std::move(e));
  json next = more && !page.empty() ? json(page.back().value("id", "")) : json(nullptr);
  return json{{"count", count}, {"entries", std::move(page)}, {"next_cursor", std::move(next)}};
}

/// Numbers summed over the nodes; what every node counts the same (topics,
/// partitions, agents) and the uptime are this node's.
json merge_sums(std::vector<std::pair<std::string, json>>& parts,
                std::initializer_list<const char*> own) {
  json out = parts.front().second;
  for (std::size_t i = 1; i < parts.size(); ++i)
    for (auto& [k, v] : parts[i].second.items())
      if (std::find_if(own.begin(), own.end(), [&](const char* o) { return k == o; }) == own.end()
          && out.contains(k))
        add_number(out[k], v);
  return out;
}

// -- topic events --------------------------------------------------------------

/// The partition count of `topic` from its home node (which always has the
/// topic), or nothing when the topic does not exist.
void partitions_of(const api_env& env, const std::string& topic, const local_fn& local,
                   std::function<void(actors::result<std::optional<std::uint32_t>>)> done) {
  request topics;
  topics.method = "GET";
  topics.path = "/v1/topics";
  ask_member(env, env.node.home_of(topic), topics, local, [topic, done](member_answer a) {
    if (!a.reached || a.res.status != 200)
      return done(tl::make_unexpected(
        actors::error{actors::errc::unavailable, "node " + a.node + ", the home of topic " + topic
                                                   + ", did not answer; retry shortly"}));
    auto j = json::parse(a.res.body, nullptr, false);
    if (j.is_object())
      for (auto& t : j.value("topics", json::array()))
        if (t.value("name", "") == topic)
          return done(std::optional<std::uint32_t>{t.value("partitions", 0U)});
    done(std::optional<std::uint32_t>{});
  });
}

std::string events_query(std::uint32_t p, std::uint64_t from, std::uint64_t limit) {
  return "partition=" + std::to_string(p) + "&from_offset=" + std::to_string(from)
         + "&limit=" + std::to_string(limit);
}

/// One partition: its owner answers; an owner that never saw the topic has
/// no events of it yet, so the home node (which has the topic) answers.
/// The 503 for a partition whose owner cannot be asked.
response owner_down(const std::string& topic, std::uint32_t p, const std::string& node) {
  return error_response({actors::errc::unavailable,
                         "partition " + topic + "/" + std::to_string(p) + " is owned by node "
                           + node + ", which is down or unreachable; retry shortly"});
}

void read_partition(const api_env& env, const std::string& topic, std::uint32_t p, request req,
                    const local_fn& local, responder respond) {
  ask_member(env, env.node.owner_of(topic, p), req, local,
             [&env, topic, p, req, local, respond](member_answer a) {
               if (!a.reached)
                 return respond(owner_down(topic, p, a.node));
               if (a.res.status != 404)
                 return respond(std::move(a.res));
               ask_member(env, env.node.home_of(topic), req, local,
                          [respond](member_answer h) { respond(std::move(h.res)); });
             });
}

/// Every partition in order, each from `from` on its owner, until `limit`.
void read_all_partitions(const api_env& env, const std::string& topic, std::uint32_t n,
                         std::uint64_t from, std::uint64_t limit, const local_fn& local,
                         responder respond) {
  struct state {
    json events = json::array();
    std::uint32_t p = 0;
  };
  auto st = std::make_shared<state>();
  auto step = std::make_shared<std::function<void()>>();
  *step = [&env, topic, n, from, limit, local, respond, st, step]() {
    if (st->p == n || st->events.size() >= limit) {
      auto keep = std::move(*step); // the last use: break the cycle
      return respond(json_response(200, dump(json{{"topic", topic}, {"events", st->events}})));
    }
    auto p = st->p++;
    request part;
    part.method = "GET";
    part.path = "/v1/topics/" + topic + "/events";
    part.query = events_query(p, from, limit - st->events.size());
    ask_member(env, env.node.owner_of(topic, p), part, local,
               [respond, st, step, topic, p](member_answer a) {
                 if (!a.reached) {
                   *step = nullptr;
                   return respond(owner_down(topic, p, a.node));
                 }
                 if (a.res.status == 200) {
                   auto j = json::parse(a.res.body, nullptr, false);
                   if (j.is_object())
                     for (auto& e : j.value("events", json::array()))
                       st->events.push_back(e);
                 } else if (a.res.status != 404) {
                   *step = nullptr;
                   return respond(std::move(a.res));
                 }
                 (*step)();
               });
  };
  (*step)();
}

void read_events(const api_env& env, request& req, const std::string& topic, const local_fn& local,
                 responder respond) {
  std::map<std::string, std::string> q;
  std::optional<std::uint64_t> partition, from, limit;
  // Bad parameters: this node's own handler says what is wrong.
  if (parse_query(req.query, {"partition", "from_offset", "limit"}, q)
      || query_uint(q, "partition", 1023, partition)
      || query_uint(q, "from_offset", ~0ULL >> 1, from) || query_uint(q, "limit", 1000, limit, 1)) {
    req.local = true;
    return local(req, std::move(respond));
  }
  if (partition)
    return read_partition(env, topic, static_cast<std::uint32_t>(*partition), req, local,
                          std::move(respond));
  partitions_of(env, topic, local,
                [&env, req, topic, from, limit, local,
                 respond](actors::result<std::optional<std::uint32_t>> n) mutable {
                  if (!n)
                    return respond(error_response(n.error()));
                  if (!*n) {
                    req.local = true;
                    return local(req, std::move(respond)); // its 404
                  }
                  read_all_partitions(env, topic, **n, from.value_or(0), limit.value_or(100), local,
                                      std::move(respond));
                });
}

// -- replays -------------------------------------------------------------------

/// One replay as the cluster sees it: every member's share summed; running
/// while any share runs.
json merge_replay(std::vector<json> shares) {
  json out = shares.front();
  std::map<std::pair<std::string, std::string>, std::uint64_t> counts;
  std::vector<std::pair<std::string, std::string>> order;
  std::set<std::string> states;
  std::string error;
  for (std::size_t i = 0; i < shares.size(); ++i) {
    auto& r = shares[i];
    if (i > 0)
      for (auto* f : {"events_total", "events_done", "acked", "failed", "retried", "dead_lettered"})
        if (r.contains(f))
          add_number(out[f], r[f]);
    for (auto& c : r.value("counts", json::array())) {
      std::pair<std::string, std::string> key{c.value("agent", ""), c.value("topic", "")};
      if (!counts.count(key))
        order.push_back(key);
      counts[key] += c.value("events", 0ULL);
    }
    states.insert(r.value("state", ""));
    if (r.contains("error") && r["error"].is_string())
      error += (error.empty() ? "" : "; ") + r["error"].get<std::string>();
    auto& fin = r["finished_at"];
    if (fin.is_null() || (out["finished_at"].is_string() && fin > out["finished_at"]))
      out["finished_at"] = fin.is_null() && r.value("state", "") == "running" ? json(nullptr) : fin;
  }
  for (auto* s : {"running", "failed", "cancelled", "done"})
    if (states.count(s)) {
      out["state"] = s;
      break;
    }
  if (out["state"] == "running")
    out["finished_at"] = nullptr;
  json c = json::array();
  for (auto& key : order)
    c.push_back(json{{"agent", key.first}, {"topic", key.second}, {"events", counts[key]}});
  out["counts"] = std::move(c);
  if (!error.empty())
    out["error"] = error;
  return out;
}

/// The replays of every member, one per id.
json merge_replays(std::vector<std::pair<std::string, json>>& parts) {
  std::map<std::string, std::vector<json>> by_id;
  for (auto& [node, body] : parts)
    for (auto& r : body.value("replays", json::array()))
      by_id[r.value("id", "")].push_back(r);
  json list = json::array();
  for (auto& [id, shares] : by_id)
    list.push_back(merge_replay(std::move(shares)));
  return json{{"replays", std::move(list)}};
}

/// GET or DELETE of one replay: the shares of the members that have it.
void one_replay(const api_env& env, request& req, const local_fn& local, responder respond) {
  ask_all(env, req, local, [respond](answers all) {
    std::vector<json> shares;
    json unreachable = json::array();
    std::optional<response> other;
    for (auto& a : all) {
      if (!a.reached || a.res.status == 503)
        unreachable.push_back(a.node);
      else if (a.res.status == 200)
        shares.push_back(json::parse(a.res.body, nullptr, false));
      else if (a.res.status != 404 && !other)
        other = std::move(a.res);
      else if (!other)
        other = std::move(a.res);
    }
    shares.erase(
      std::remove_if(shares.begin(), shares.end(), [](const json& j) { return !j.is_object(); }),
      shares.end());
    if (shares.empty())
      return respond(other ? std::move(*other)
                           : error_response({actors::errc::unavailable, "no node answered"}));
    auto out = merge_replay(std::move(shares));
    if (!unreachable.empty())
      out["unreachable"] = std::move(unreachable);
    respond(json_response(200, dump(out)));
  });
}

/// A replay of the whole cluster: this node plans its share first (and so
/// checks the request), then every other member plans its own under the
/// same id and window (relative times resolved here, once).
void create_replay(const api_env& env, request& req, const local_fn& local, responder respond) {
  auto body = json::parse(req.body, nullptr, false);
  if (!body.is_object() || body.contains("id")) {
    req.local = true; // its own handler says what is wrong
    return local(req, std::move(respond));
  }
  auto now = std::chrono::duration_cast<std::chrono::microseconds>(
               std::chrono::system_clock::now().time_since_epoch())
               .count();
  for (auto* k : {"from", "to"})
    if (body.contains(k) && body[k].is_string())
      if (auto t = actors::parse_time_arg(body[k].get<std::string>(), now))
        body[k] = actors::format_time(*t);
  body["id"] = actors::new_uuid();
  request shared = req;
  shared.body = dump(body);
  ask_member(env, env.node.node_id(), shared, local,
             [&env, shared, local, respond](member_answer mine) {
               if (mine.res.status != 202)
                 return respond(std::move(mine.res));
               request others = shared;
               others.local = false;
               ask_all(
                 env, others, local,
                 [mine, respond](answers all) {
                   std::vector<json> shares{json::parse(mine.res.body, nullptr, false)};
                   json unreachable = json::array();
                   for (auto& a : all) {
                     if (a.reached && a.res.status == 202)
                       shares.push_back(json::parse(a.res.body, nullptr, false));
                     else
                       unreachable.push_back(a.node);
                   }
                   auto out = merge_replay(std::move(shares));
                   if (!unreachable.empty())
                     out["unreachable"] = std::move(unreachable);
                   respond(json_response(202, dump(out)));
                 },
                 false);
             });
}

/// An agent's history in a replay, node after node: the cursor is
/// "<node>|<that node's cursor>"; a node without the replay is skipped.
void replay_history(const api_env& env, request& req, const std::string& id, const local_fn& local,
                    responder respond) {
  std::map<std::string, std::string> q;
  std::optional<std::uint64_t> limit;
  if (parse_query(req.query, {"agent", "cursor", "limit"}, q)
      || query_uint(q, "limit", 1000, limit, 1) || q["agent"].empty()) {
    req.local = true;
    return local(req, std::move(respond));
  }
  std::vector<std::string> nodes;
  for (auto& m : env.node.cluster().members)
    nodes.push_back(m.id);
  std::size_t at = 0;
  std::string inner;
  if (auto& c = q["cursor"]; !c.empty()) {
    auto bar = c.find('|');
    auto it = std::find(nodes.begin(), nodes.end(), c.substr(0, bar));
    if (bar == std::string::npos || it == nodes.end())
      return respond(problem(400, "invalid-parameter", "Bad Request",
                             "query parameter cursor=" + c.substr(0, 64)
                               + " is not a history cursor: use next_cursor from the page before"));
    at = static_cast<std::size_t>(it - nodes.begin());
    inner = c.substr(bar + 1);
  }
  struct state {
    std::vector<std::string> nodes;
    std::size_t at;
    std::string inner;
    bool found = false;
  };
  auto st = std::make_shared<state>(state{std::move(nodes), at, inner});
  auto step = std::make_shared<std::function<void()>>();
  *step = [&env, id, agent = q["agent"], lim = limit.value_or(100), local, respond, st, step]() {
    if (st->at == st->nodes.size()) {
      *step = nullptr;
      if (st->found)
        return respond(json_response(
          200, dump(json{{"agent", agent}, {"entries", json::array()}, {"next_cursor", nullptr}})));
      return respond(error_response(
        {actors::errc::not_found, "no replay " + id + " with a history of agent " + agent}));
    }
    request page;
    page.method = "GET";
    page.path = "/v1/replays/" + id + "/history";
    page.query = "agent=" + agent + "&limit=" + std::to_string(lim)
                 + (st->inner.empty() ? "" : "&cursor=" + st->inner);
    auto node = st->nodes[st->at];
    ask_member(env, node, page, local, [respond, st, step, node](member_answer a) {
      if (!a.reached || a.res.status == 503) {
        *step = nullptr;
        return respond(
          error_response({actors::errc::unavailable, "node " + node
                                                       + " holds part of this history and did "
                                                         "not answer; retry shortly"}));
      }
      if (a.res.status == 404) {
        ++st->at;
        st->inner.clear();
        return (*step)();
      }
      if (a.res.status != 200) {
        *step = nullptr;
        return respond(std::move(a.res));
      }
      auto j = json::parse(a.res.body, nullptr, false);
      st->found = true;
      auto& next = j["next_cursor"];
      bool last = next.is_null() && st->at + 1 == st->nodes.size();
      j["next_cursor"] = last             ? json(nullptr)
                         : next.is_null() ? json(st->nodes[st->at + 1] + "|")
                                          : json(node + "|" + next.get<std::string>());
      *step = nullptr;
      respond(json_response(200, dump(j)));
    });
  };
  (*step)();
}

} // namespace

/// Replicated partitions: etcd's record as this node read it, the high
/// watermark and the followers from the leader's answer.
json merge_partitions(const api_env& env, std::vector<std::pair<std::string, json>>& parts) {
  json mine;
  std::map<std::pair<std::string, std::uint64_t>, json> from_leader;
  std::map<std::pair<std::string, std::uint64_t>, json> copies;
  for (auto& [node, body] : parts) {
    if (node == env.node.node_id())
      mine = body;
    for (auto& p : body.value("partitions", json::array())) {
      std::pair key{p.value("topic", ""), p.value("partition", std::uint64_t{0})};
      if (p.value("role", "") == "leader")
        from_leader[key] = p;
      if (p.contains("log_end"))
        copies[key].push_back({{"node", node},
                               {"role", p.value("role", "")},
                               {"log_end", p["log_end"]},
                               {"high_watermark", p.value("high_watermark", std::uint64_t{0})}});
    }
  }
  if (mine.is_null() && !parts.empty())
    mine = parts.front().second;
  json out = json::array();
  for (auto& p : mine.value("partitions", json::array())) {
    json one = p;
    one.erase("role");
    std::pair key{p.value("topic", ""), p.value("partition", std::uint64_t{0})};
    if (auto it = from_leader.find(key); it != from_leader.end()) {
      one["high_watermark"] = it->second.value("high_watermark", std::uint64_t{0});
      one["log_end"] = it->second.value("log_end", std::uint64_t{0});
      one["followers"] = it->second.value("followers", json::array());
    } else {
      one.erase("high_watermark");
      one.erase("log_end");
      one["followers"] = json::array();
    }
    one["copies"] = copies[key].is_null() ? json::array() : copies[key];
    out.push_back(std::move(one));
  }
  mine["partitions"] = std::move(out);
  return mine;
}

cluster_fn cluster_handler(const api_env& env, const std::string& method,
                           const std::string& label) {
  if (!env.cfg.cluster.enabled()) // the configuration, not the report
    return {};
  const auto key = method + " " + label;
  const api_env* e = &env;
  if (key == "GET /v1/topics")
    return [e](auto& req, auto&, auto& respond, auto& local) {
      merged(*e, req, local, respond, [e](auto& parts) { return merge_topics(*e, parts); });
    };
  if (key == "GET /v1/topics/{topic}/events")
    return [e](auto& req, auto& p, auto& respond, auto& local) {
      read_events(*e, req, p[0], local, respond);
    };
  if (key == "GET /v1/events/{id}" || key == "GET /v1/dlq/{id}" || key == "DELETE /v1/dlq/{id}"
      || key == "POST /v1/dlq/{id}/retry")
    return [e](auto& req, auto&, auto& respond, auto& local) {
      ask_until_found(*e, req, local, respond);
    };
  if (key == "GET /v1/agents")
    return [e](auto& req, auto&, auto& respond, auto& local) {
      merged(*e, req, local, respond, [](auto& parts) { return merge_agents(parts); });
    };
  if (key == "GET /v1/agents/{name}" || key == "POST /v1/agents/{name}/pause"
      || key == "POST /v1/agents/{name}/resume")
    return [e](auto& req, auto&, auto& respond, auto& local) {
      merged(*e, req, local, respond, [](auto& parts) {
        json one;
        for (auto& [node, body] : parts)
          merge_agent(one, body, node);
        return one;
      });
    };
  if (key == "GET /v1/metrics")
    return [e](auto& req, auto&, auto& respond, auto& local) {
      merged(*e, req, local, respond, [](auto& parts) { return merge_metrics(parts); });
    };
  if (key == "GET /v1/topics/{topic}/groups")
    return [e](auto& req, auto& p, auto& respond, auto& local) {
      std::map<std::string, std::string> q;
      if (auto err = parse_query(req.query, {"index", "wait_ms"}, q))
        return respond(std::move(*err));
      if (q.count("wait_ms") > 0 || q.count("index") > 0)
        // Each member counts its own partitions' moves: no index stands for
        // the cluster's groups.
        return respond(problem(400, "invalid-parameter", "Bad Request",
                               "index and wait_ms are answered by a node running alone; in a "
                               "cluster, poll GET /v1/topics/{topic}/groups without them"));
      merged(*e, req, local, respond,
             [e, topic = p[0]](auto& parts) { return merge_groups(*e, topic, parts); });
    };
  if (key == "GET /v1/dlq")
    return [e](request& req, auto&, auto& respond, auto& local) {
      std::size_t limit = 100;
      std::map<std::string, std::string> q;
      std::optional<std::uint64_t> asked;
      if (!parse_query(req.query, {"agent", "topic", "cursor", "limit"}, q)
          && !query_uint(q, "limit", 1000, asked, 1))
        limit = asked.value_or(100);
      merged(*e, req, local, respond, [limit](auto& parts) { return merge_dlq(limit, parts); });
    };
  if (key == "POST /v1/dlq/retry-all" || key == "POST /v1/dlq/purge")
    return [e](auto& req, auto&, auto& respond, auto& local) {
      merged(*e, req, local, respond, [](auto& parts) { return merge_sums(parts, {}); });
    };
  if (key == "POST /v1/replays")
    return
      [e](auto& req, auto&, auto& respond, auto& local) { create_replay(*e, req, local, respond); };
  if (key == "GET /v1/replays")
    return [e](auto& req, auto&, auto& respond, auto& local) {
      merged(*e, req, local, respond, [](auto& parts) { return merge_replays(parts); });
    };
  if (key == "GET /v1/replays/{id}" || key == "DELETE /v1/replays/{id}")
    return
      [e](auto& req, auto&, auto& respond, auto& local) { one_replay(*e, req, local, respond); };
  if (key == "GET /v1/replays/{id}/history")
    return [e](auto& req, auto& p, auto& respond, auto& local) {
      replay_history(*e, req, p[0], local, respond);
    };
  if (key == "GET /v1/cluster/partitions" && env.cfg.cluster.replicated())
    return [e](auto& req, auto&, auto& respond, auto& local) {
      merged(*e, req, local, respond, [e](auto& parts) { return merge_partitions(*e, parts); });
    };
  if (key == "GET /v1/bus/stats")
    return [e](auto& req, auto&, auto& respond, auto& local) {
      merged(*e, req, local, respond, [](auto& parts) {
        return merge_sums(parts, {"topics", "partitions", "agents", "uptime_s"});
      });
    };
  return {}; // node-local: publishes (forwarded by the node), health, ...
}

} // namespace nerve::http
