// Agent instance actors: one per instance of an agent, wrapping its handler.
// `builtin` handlers run in the actor; `process` agents are supervised child
// processes speaking JSON Lines on stdin/stdout (CONTRACT.md section 5).
#include <algorithm>
#include <cerrno>
#include <charconv>
#include <condition_variable>
#include <csignal>
#include <cstring>
#include <deque>
#include <fcntl.h>
#include <functional>
#include <map>
#include <poll.h>
#include <spawn.h>
#include <sys/wait.h>
#include <thread>
#include <tuple>
#include <unistd.h>
#include <unordered_set>

#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include "actors/agent_line.hpp"
#include "actors/agents/http_poster.hpp"
#include "actors/event_input.hpp"
#include "actors/node.hpp"
#include "actors/restart_policy.hpp"
#include "actors/runtime.hpp"
#include "actors/tracing.hpp"

extern char** environ;

namespace nerve::actors::detail {

namespace {

using json = nlohmann::json;

/// Longest line a process agent may write; longer lines are cut and fail.
constexpr std::size_t max_line_bytes = 16u << 20;
/// What read_lines hands on for a line over max_line_bytes (no JSON starts so).
constexpr std::string_view too_long_line = "\x01too long";
/// How long a process agent gets to exit after SIGTERM before SIGKILL.
constexpr auto stop_grace = std::chrono::seconds{5};

/// Put in front of every process agent's command (set_agent_launcher).
std::vector<std::string>& agent_launcher() {
  static std::vector<std::string> prefix;
  return prefix;
}

struct in_flight {
  delivery d;
  outcome_sink reply_to; ///< the partition or replay that sent it
  std::chrono::steady_clock::time_point started;
  // pull agents
  bool fetched = false;    ///< a worker has it (else it waits in `ready`)
  std::string consumer;    ///< the worker that has it
  std::uint32_t topic = 0; ///< where the event is (read from it once): topic_names' index
  std::uint32_t partition = 0;
  std::int64_t time_us = 0;
  std::uint32_t count = 0;                      ///< times handed out: fetches and claims
  std::uint32_t handout = 0;                    ///< which hand-out the running timeout is for
  std::chrono::steady_clock::time_point handed; ///< the last hand-out
};

/// A pull agent's fetch waiting for deliveries.
struct fetch_waiter {
  std::uint64_t id = 0;
  pull_request req;
  fetch_answer reply;
};

/// When a hand-out of a pull agent's delivery times out.
struct expiry {
  std::chrono::steady_clock::time_point due;
  std::string id;
  std::uint32_t handout = 0; ///< the hand-out it is for (later ones replace it)
};

/// A pull agent's worker (a Redis consumer).
struct consumer_info {
  std::chrono::steady_clock::time_point seen;   ///< last fetch, claim or ack
  std::chrono::steady_clock::time_point active; ///< last fetch that got something
  bool ever_active = false;
};

/// An event's place: topic (its index in the queue's topic_names),
/// partition, offset. Numbers only: hashing and comparing the topic's name
/// per lookup was a tenth of a drain's samples.
struct position {
  std::uint32_t topic = 0;
  std::uint32_t partition = 0;
  std::uint64_t offset = 0;

  friend bool operator==(const position& a, const position& b) {
    return a.offset == b.offset && a.partition == b.partition && a.topic == b.topic;
  }
};

struct position_hash {
  std::size_t operator()(const position& p) const {
    auto h = p.offset * 0x9e3779b97f4a7c15ULL;
    return h ^ ((std::uint64_t{p.topic} << 32 | p.partition) * 0xc2b2ae3d27d4eb4fULL);
  }
};

/// Asked before each line written to a child (the child_io fault point);
/// true fails the write as a broken pipe would.
using io_fault = std::function<bool()>;

/// Writes lines to a child's stdin on a thread of its own, so the instance
/// actor never blocks on a child that stops reading: its timeouts and a stop
/// still run. Destroying it gives up on what is not written yet (within
/// 100 ms, even when the child reads nothing) and closes the pipe; so does a
/// failed write (the child is gone).
class stdin_writer {
public:
  stdin_writer(int fd, std::string name, io_fault fails)
    : fd_(fd), name_(std::move(name)), fails_(std::move(fails)) {
    ::fcntl(fd_, F_SETFL, ::fcntl(fd_, F_GETFL) | O_NONBLOCK);
    thread_ = std::thread{[this] { run(); }};
  }
  stdin_writer(const stdin_writer&) = delete;
  stdin_writer& operator=(const stdin_writer&) = delete;
  ~stdin_writer() {
    {
      std::lock_guard<std::mutex> guard{mutex_};
      stopping_ = true;
      cv_.notify_one();
    }
    thread_.join();
  }

  void push(std::string line) {
    std::lock_guard<std::mutex> guard{mutex_};
    lines_.push_back(std::move(line));
    cv_.notify_one();
  }

private:
  void run() {
    for (;;) {
      std::string line;
      {
        std::unique_lock<std::mutex> guard{mutex_};
        cv_.wait(guard, [this] { return stopping_ || !lines_.empty(); });
        if (stopping_)
          break;
        line = std::move(lines_.front());
        lines_.pop_front();
      }
      if (fails_() || !write_line(line)) {
        // The child is gone; the restarted one gets its deliveries again.
        if (!stopping_)
          spdlog::warn("{}: writing to the agent's stdin failed: {}", name_, std::strerror(errno));
        break;
      }
    }
    ::close(fd_);
  }

  bool write_line(const std::string& data) {
    std::size_t done = 0;
    while (done < data.size()) {
      auto n = ::write(fd_, data.data() + done, data.size() - done);
      if (n > 0) {
        done += static_cast<std::size_t>(n);
      } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
        // The child is not reading: wait, but give up when told to.
        if (stopping_)
          return false;
        pollfd p{fd_, POLLOUT, 0};
        ::poll(&p, 1, 100);
      } else if (!(n < 0 && errno == EINTR)) {
        return false;
      }
    }
    return true;
  }

  int fd_;
  std::string name_;
  io_fault fails_;
  std::mutex mutex_;
  std::condition_variable cv_;
  std::deque<std::string> lines_;
  std::atomic<bool> stopping_{false}; ///< set under mutex_, read without it while writing
  std::thread thread_;
};

/// Lines read from a child's stdout and not yet handled by its instance
/// actor, at most `max_pending_lines`: a child that floods stdout waits
/// in its write, not in nerve's memory.
class line_gate {
public:
  /// Waits for room for one more line; false once closed.
  bool enter() {
    std::unique_lock<std::mutex> guard{mutex_};
    cv_.wait(guard, [this] { return closed_ || pending_ < max_pending_lines; });
    if (closed_)
      return false;
    ++pending_;
    return true;
  }
  /// A line was handled.
  void leave() {
    std::lock_guard<std::mutex> guard{mutex_};
    --pending_;
    cv_.notify_one();
  }
  /// The child is being replaced: its reader stops waiting.
  void close() {
    std::lock_guard<std::mutex> guard{mutex_};
    closed_ = true;
    cv_.notify_one();
  }

private:
  static constexpr std::size_t max_pending_lines = 1024;
  std::mutex mutex_;
  std::condition_variable cv_;
  std::size_t pending_ = 0;
  bool closed_ = false;
};

/// At most `per_second` log lines of one kind a second; the rest are
/// counted and told with the next one logged.
class log_budget {
public:
  explicit log_budget(std::uint32_t per_second) : per_second_(per_second) {}

  /// Whether to log one more line now; `dropped` is how many were not
  /// logged since the last one that was.
  bool take(std::uint64_t& dropped) {
    auto now = std::chrono::steady_clock::now();
    if (now - window_ >= std::chrono::seconds{1}) {
      window_ = now;
      used_ = 0;
    }
    if (used_ >= per_second_) {
      ++dropped_;
      return false;
    }
    ++used_;
    dropped = std::exchange(dropped_, 0);
    return true;
  }

  /// Lines not logged since the last one that was (and forgets them).
  std::uint64_t take_dropped() { return std::exchange(dropped_, 0); }

private:
  std::uint32_t per_second_;
  std::chrono::steady_clock::time_point window_{};
  std::uint32_t used_ = 0;
  std::uint64_t dropped_ = 0;
};

struct instance_actor_state {
  node_context* ctx = nullptr;
  agent_ptr agent;
  std::size_t index = 0;
  instance_slot* slot = nullptr;
  std::unordered_map<std::string, in_flight> inflight;
  // process agents
  pid_t pid = -1;
  std::unique_ptr<stdin_writer> writer; ///< the child's stdin
  std::uint64_t generation = 0;
  std::thread out_reader;
  std::thread err_reader;
  std::shared_ptr<line_gate> out_gate; ///< the running child's stdout lines
  /// The child's last line on stdout (or its start): a child that says
  /// nothing while its deliveries time out is hung.
  std::chrono::steady_clock::time_point last_heard{};
  log_budget ignored_lines{10}; ///< warnings about lines that are no answer
  /// A child that exits is restarted after 100 ms, doubling to 10 s while
  /// it keeps exiting within 30 s of its start.
  restart_policy child_restarts{{false, std::chrono::milliseconds{100}, std::chrono::seconds{10},
                                 std::chrono::seconds{30}, std::nullopt}};
  bool stopping = false;
  // http agents
  std::unique_ptr<agents::http_poster> poster;
  // pull agents
  std::deque<std::string> ready; ///< delivery ids not yet fetched, oldest first
  std::deque<fetch_waiter> waiters;
  std::uint64_t next_waiter = 0;
  std::unordered_map<position, std::vector<std::string>, position_hash>
    at;                                 ///< delivery ids of each event
  std::vector<std::string> topic_names; ///< the topics of its deliveries, by index (position)
  std::unordered_map<std::string, std::uint32_t> topic_ids; ///< topic_names' inverse
  std::uint32_t last_topic = 0;                             ///< topic_index's last answer
  std::map<std::string, consumer_info> consumers;
  /// Hand-outs' timeouts in hand-out order, which is their order of expiry
  /// (one timeout for all): one timer message at a time runs over them, as a
  /// delayed message per hand-out cost a lock and a wake of CAF's clock
  /// thread each (a third of a drain's samples). Answered or re-handed
  /// entries stay until swept (at most twice the deliveries in flight).
  std::deque<expiry> expiries;
  bool expiry_timer = false; ///< a pull_expire_atom is on its way
  /// Outcomes answer() holds back while `batching`, sent by send_batched().
  std::vector<std::pair<outcome_sink, outcome>> outbox;
  bool batching = false;
  static inline const char* name = "agent";
};

using instance_actor_t = instance_actor::stateful_pointer<instance_actor_state>;

/// The leading `key=value` fields of this instance's log lines (the JSON log
/// format turns them into fields).
std::string label(const instance_actor_state& st) {
  return "agent=" + st.agent->cfg.name + " instance=" + std::to_string(st.index);
}

using inflight_pos = std::unordered_map<std::string, in_flight>::iterator;

/// Answers the delivery at `it` to its sender and forgets it; `indexed`:
/// it is still in `at` (the caller took it out otherwise).
void answer_at(instance_actor_t self, inflight_pos it, bool ok, std::string result,
               std::string emit, std::string error, bool timed_out, bool indexed) {
  auto& st = self->state;
  auto& id = it->first;
  auto& d = it->second.d;
  auto elapsed = std::chrono::steady_clock::now() - it->second.started;
  if (st.ctx->tracing) {
    attempt_trace a;
    a.event = d.event;
    a.event_id = d.event_id;
    a.delivery_id = d.delivery_id;
    a.agent = &st.agent->cfg;
    a.instance = st.index;
    a.attempt = d.attempt;
    a.end_ns = unix_ns_now();
    a.start_ns = a.end_ns - std::chrono::duration_cast<std::chrono::nanoseconds>(elapsed).count();
    a.ok = ok;
    a.timed_out = timed_out;
    a.error = error;
    record_attempt(*st.ctx->tracing, a);
  }
  outcome o;
  o.group = d.group;
  o.instance = d.instance;
  o.offset = d.offset;
  o.attempt = d.attempt;
  o.ok = ok;
  o.timed_out = timed_out;
  o.result = std::move(result);
  o.emit = std::move(emit);
  o.error = std::move(error);
  o.elapsed_us = std::chrono::duration_cast<std::chrono::microseconds>(elapsed).count();
  if (st.batching)
    st.outbox.emplace_back(it->second.reply_to, std::move(o));
  else
    self->send(it->second.reply_to, outcome_atom::value, std::move(o));
  if (indexed && st.agent->cfg.kind == config::agent_kind::pull) {
    auto where = st.at.find({it->second.topic, it->second.partition, d.offset});
    if (where != st.at.end()) {
      auto& ids = where->second;
      ids.erase(std::remove(ids.begin(), ids.end(), id), ids.end());
      if (ids.empty())
        st.at.erase(where);
    }
  }
  st.inflight.erase(it);
  st.agent->return_credit(st.index);
}

void answer(instance_actor_t self, const std::string& id, bool ok, std::string result,
            std::string emit, std::string error, bool timed_out = false) {
  auto it = self->state.inflight.find(id);
  if (it == self->state.inflight.end())
    return; // answered already (timed out)
  answer_at(self, it, ok, std::move(result), std::move(emit), std::move(error), timed_out, true);
}

/// Runs `f`, then sends the outcomes its answers made in one message per
/// sink: one XACK of 100 entries was 100 messages to its partition, each
/// dispatched and handled on its own.
template <class F>
void batched(instance_actor_t self, F f) {
  auto& st = self->state;
  st.batching = true;
  f();
  st.batching = false;
  while (!st.outbox.empty()) {
    auto to = st.outbox.front().first;
    auto mine = std::stable_partition(st.outbox.begin(), st.outbox.end(),
                                      [&to](auto& x) { return x.first == to; });
    std::vector<outcome> os;
    os.reserve(static_cast<std::size_t>(mine - st.outbox.begin()));
    for (auto i = st.outbox.begin(); i != mine; ++i)
      os.push_back(std::move(i->second));
    st.outbox.erase(st.outbox.begin(), mine);
    self->send(to, outcome_atom::value, std::move(os));
  }
}

// -- builtin handlers ---------------------------------------------------------
// They run on CAF's scheduler thread with the partitions: a handler added here
// must answer at once and never block (no I/O, no sleeps); slow work belongs
// in a process or http agent.

void answer_builtin(instance_actor_t self, const delivery& d) {
  auto a = detail::run_builtin(self->state.agent->cfg.handler, d.event);
  answer(self, d.delivery_id, a.ok, std::move(a.result), {}, std::move(a.error));
}

// -- process agents -----------------------------------------------------------

/// Reads lines from `fd` until EOF and hands each to `on_line`.
template <class F>
void read_lines(int fd, F on_line) {
  std::string buf;
  char chunk[65536];
  bool dropping = false;
  for (;;) {
    auto n = ::read(fd, chunk, sizeof chunk);
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0)
      break;
    for (ssize_t i = 0; i < n; ++i) {
      if (chunk[i] == '\n') {
        if (!dropping)
          on_line(std::move(buf));
        buf.clear();
        dropping = false;
      } else if (!dropping) {
        buf.push_back(chunk[i]);
        if (buf.size() > max_line_bytes) {
          on_line(std::string{too_long_line});
          buf.clear();
          dropping = true;
        }
      }
    }
  }
  if (!buf.empty() && !dropping)
    on_line(std::move(buf));
  ::close(fd);
}

/// The child_io fault point of this instance's child (never fails without a test hook).
io_fault child_io_fault(const instance_actor_state& st) {
  return [hooks = st.ctx->hooks, where = persistence::fault_context{st.agent->cfg.name, 0}] {
    if (!persistence::fails_at(hooks->fault, persistence::fault_point::child_io, where))
      return false;
    errno = EPIPE; // what the warning about the failed write reports
    return true;
  };
}

void send_to_child(instance_actor_t self, const delivery& d) {
  auto& st = self->state;
  if (!st.writer)
    return; // sent when the child is back
  std::string line = R"({"type":"event",)";
  append_delivery_members(line, d.delivery_id, d.attempt,
                          attempt_traceparent(st.ctx->tracing.get(), d.event, d.delivery_id),
                          d.event);
  line += "}\n";
  st.writer->push(std::move(line));
}

void start_child(instance_actor_t self) {
  auto& st = self->state;
  int in[2];
  int out[2];
  int err[2];
  if (::pipe2(in, O_CLOEXEC) != 0 || ::pipe2(out, O_CLOEXEC) != 0 || ::pipe2(err, O_CLOEXEC) != 0)
    throw std::runtime_error(std::string{"pipe: "} + std::strerror(errno));
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, in[0], 0);
  posix_spawn_file_actions_adddup2(&fa, out[1], 1);
  posix_spawn_file_actions_adddup2(&fa, err[1], 2);
  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  // Its own process group: a Ctrl-C in nerve's terminal is nerve's to handle.
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGMASK);
  posix_spawnattr_setpgroup(&attr, 0);
  sigset_t none;
  sigemptyset(&none);
  posix_spawnattr_setsigmask(&attr, &none);
  std::vector<std::string> args = agent_launcher();
  args.insert(args.end(), st.agent->cfg.command.begin(), st.agent->cfg.command.end());
  std::vector<char*> argv;
  argv.reserve(args.size() + 1);
  for (auto& a : args)
    argv.push_back(a.data());
  argv.push_back(nullptr);
  std::vector<std::string> env_store;
  for (char** e = environ; *e != nullptr; ++e)
    env_store.emplace_back(*e);
  env_store.push_back("NERVE_AGENT=" + st.agent->cfg.name);
  env_store.push_back("NERVE_INSTANCE=" + std::to_string(st.index));
  std::vector<char*> envp;
  envp.reserve(env_store.size() + 1);
  for (auto& e : env_store)
    envp.push_back(e.data());
  envp.push_back(nullptr);
  pid_t pid = -1;
  int rc = posix_spawnp(&pid, argv[0], &fa, &attr, argv.data(), envp.data());
  posix_spawn_file_actions_destroy(&fa);
  posix_spawnattr_destroy(&attr);
  ::close(in[0]);
  ::close(out[1]);
  ::close(err[1]);
  ++st.generation;
  if (rc != 0) {
    ::close(in[1]);
    ::close(out[0]);
    ::close(err[0]);
    spdlog::error("{}: cannot start {}: {}", label(st), args[0], std::strerror(rc));
    // As a shell reports a command it cannot run: exit code 127, right
    // after the start, so the restart backoff grows as for any crash.
    st.child_restarts.started(std::chrono::steady_clock::now());
    caf::anon_send(caf::actor_cast<caf::actor>(self), exited_atom::value, st.generation,
                   W_EXITCODE(127, 0));
    return;
  }
  st.pid = pid;
  st.writer = std::make_unique<stdin_writer>(in[1], label(st), child_io_fault(st));
  st.child_restarts.started(std::chrono::steady_clock::now());
  st.slot->pid = pid;
  st.slot->state = instance_state::running;
  spdlog::info("{}: started pid {}", label(st), pid);
  auto me = caf::actor_cast<caf::actor>(self);
  auto gen = st.generation;
  auto name = label(st);
  if (st.out_reader.joinable())
    st.out_reader.join();
  if (st.err_reader.joinable())
    st.err_reader.join();
  st.out_gate = std::make_shared<line_gate>();
  st.last_heard = std::chrono::steady_clock::now();
  st.out_reader = std::thread{[me, gen, pid, fd = out[0], gate = st.out_gate] {
    bool open = true;
    read_lines(fd, [&](std::string line) {
      if (open && (open = gate->enter()))
        caf::anon_send(me, child_atom::value, gen, std::move(line));
    });
    int status = 0;
    while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    caf::anon_send(me, exited_atom::value, gen, status);
  }};
  st.err_reader = std::thread{[name, fd = err[0]] {
    // A child that floods stderr fills no disk: 100 lines a second are logged.
    log_budget budget{100};
    read_lines(fd, [&](std::string line) {
      std::uint64_t dropped = 0;
      if (!budget.take(dropped))
        return;
      if (dropped > 0)
        spdlog::warn("{}: {} lines of stderr not logged (over 100 a second)", name, dropped);
      spdlog::info("{} stderr: {}", name, line);
    });
    if (auto dropped = budget.take_dropped(); dropped > 0)
      spdlog::warn("{}: {} lines of stderr not logged (over 100 a second)", name, dropped);
  }};
  for (auto& [id, f] : st.inflight)
    send_to_child(self, f.d); // redelivered at once to the new child
  // Partitions that found no credit while the child was down (a retry, say)
  // wait to be told that this instance takes deliveries again.
  st.agent->wake_all();
}

void stop_child(instance_actor_state& st) {
  // Deliveries not yet written are not needed: they go out again after a
  // restart. Closing stdin tells a well-behaved agent to finish.
  st.writer.reset();
  if (st.out_gate)
    st.out_gate->close(); // its reader may wait for room that never comes
  if (st.pid > 0) {
    ::kill(st.pid, SIGTERM);
    auto deadline = std::chrono::steady_clock::now() + stop_grace;
    // The stdout reader reaps the child; wait for it to see the exit.
    while (::kill(st.pid, 0) == 0 && std::chrono::steady_clock::now() < deadline)
      std::this_thread::sleep_for(std::chrono::milliseconds{10});
    if (::kill(st.pid, 0) == 0)
      ::kill(st.pid, SIGKILL);
  }
  if (st.out_reader.joinable())
    st.out_reader.join();
  if (st.err_reader.joinable())
    st.err_reader.join();
  st.pid = -1;
}

void on_child_line(instance_actor_t self, const std::string& line) {
  auto& st = self->state;
  st.last_heard = std::chrono::steady_clock::now();
  if (line == too_long_line) { // rare, and worth each warning
    spdlog::warn("{}: ignoring a line that is too long (over {} bytes)", label(st), max_line_bytes);
    return;
  }
  auto reply = parse_agent_line(line);
  switch (reply.what) {
    case agent_reply::kind::ack:
      answer(self, reply.delivery, true, std::move(reply.result), std::move(reply.emit), {});
      return;
    case agent_reply::kind::nack:
      answer(self, reply.delivery, false, {}, {}, std::move(reply.error));
      return;
    case agent_reply::kind::unknown_type:
      spdlog::warn("{}: unknown message type {}", label(st), reply.type);
      return;
    case agent_reply::kind::not_a_reply:
      break;
  }
  std::uint64_t dropped = 0;
  if (st.ignored_lines.take(dropped))
    spdlog::warn("{}: ignoring a line that is not an ack or nack{}: {}", label(st),
                 dropped > 0 ? " (and " + std::to_string(dropped) + " more not logged)" : "",
                 line.substr(0, 200));
}

/// An http agent's answer: status 0 when none came (`body` is the error).
void on_http_answer(instance_actor_t self, const std::string& id, std::uint32_t status,
                    const std::string& body) {
  if (status == 0)
    return answer(self, id, false, {}, {}, body);
  if (status < 200 || status >= 300)
    return answer(self, id, false, {}, {},
                  "HTTP " + std::to_string(status) + ": " + body.substr(0, 500));
  auto j = json::parse(body, nullptr, false);
  if (body.empty() || j.is_discarded())
    return answer(self, id, true, {}, {}, {});
  std::string emit;
  if (j.is_object() && j.contains("emit")) {
    emit = j["emit"].dump();
    j.erase("emit");
  }
  answer(self, id, true, j.dump(), std::move(emit), {});
}

// -- pull agents --------------------------------------------------------------
// Deliveries wait in `ready` (holding their credits) until a worker fetches
// them; the timeout runs from the fetch.

/// The index of topic `name` in the queue's topic_names, added if new.
std::uint32_t topic_index(instance_actor_state& st, std::string_view name) {
  // The last one first: deliveries come in runs of one topic.
  if (st.last_topic < st.topic_names.size() && st.topic_names[st.last_topic] == name)
    return st.last_topic;
  auto [it, added] = st.topic_ids.try_emplace(std::string{name},
                                              static_cast<std::uint32_t>(st.topic_names.size()));
  if (added)
    st.topic_names.emplace_back(name);
  st.last_topic = it->second;
  return it->second;
}

/// The index of topic `name` if the queue has had a delivery of it.
std::optional<std::uint32_t> known_topic(const instance_actor_state& st, const std::string& name) {
  auto it = st.topic_ids.find(name);
  if (it == st.topic_ids.end())
    return std::nullopt;
  return it->second;
}

/// Reads topic, partition and time from a delivery's event, once.
void locate(instance_actor_state& st, in_flight& f) {
  // Stored events begin with the members nerve writes, in this order and
  // before `data`: {"id":"..","topic":"..","partition":N,"offset":N,"time":"..",
  // and ids and topic names hold no quotes or backslashes. Read them there;
  // anything else takes the full parse.
  const std::string& ev = f.d.event;
  auto member = [&ev](std::string_view name, std::size_t from) -> std::size_t {
    auto at = ev.find(name, from);
    return at == std::string::npos ? at : at + name.size();
  };
  auto topic = member(R"(,"topic":")", 0);
  auto topic_end = topic == std::string::npos ? topic : ev.find('"', topic);
  auto part = topic_end == std::string::npos ? topic_end : member(R"(,"partition":)", topic_end);
  auto time = part == std::string::npos ? part : member(R"(,"time":")", part);
  auto time_end = time == std::string::npos ? time : ev.find('"', time);
  if (time_end != std::string::npos) {
    std::uint32_t p = 0;
    auto [end, ec] = std::from_chars(ev.data() + part, ev.data() + ev.size(), p);
    auto us = parse_time_arg(ev.substr(time, time_end - time), 0);
    if (ec == std::errc{} && *end == ',' && us) {
      f.topic = topic_index(st, std::string_view{ev}.substr(topic, topic_end - topic));
      f.partition = p;
      f.time_us = *us;
      return;
    }
  }
  f.topic = topic_index(st, ""); // unless it says
  auto e = nlohmann::json::parse(ev, nullptr, false);
  if (!e.is_object())
    return;
  if (auto t = e.find("topic"); t != e.end() && t->is_string())
    f.topic = topic_index(st, t->get<std::string>());
  if (auto p = e.find("partition"); p != e.end() && p->is_number_unsigned())
    f.partition = p->get<std::uint32_t>();
  if (auto t = e.find("time"); t != e.end() && t->is_string())
    if (auto us = parse_time_arg(t->get<std::string>(), 0))
      f.time_us = *us;
}

/// Whether `e` is the running timeout of a fetched delivery.
bool live(const instance_actor_state& st, const expiry& e) {
  auto it = st.inflight.find(e.id);
  return it != st.inflight.end() && it->second.fetched && it->second.handout == e.handout;
}

/// Drops the timeouts of deliveries answered, handed out again or given back.
void sweep_expiries(instance_actor_state& st) {
  st.expiries.erase(std::remove_if(st.expiries.begin(), st.expiries.end(),
                                   [&st](const expiry& e) { return !live(st, e); }),
                    st.expiries.end());
}

/// Times out the hand-outs that are due, then waits for the next one.
void expire_due(instance_actor_t self) {
  auto& st = self->state;
  st.expiry_timer = false;
  auto now = std::chrono::steady_clock::now();
  while (!st.expiries.empty()
         && (st.expiries.front().due <= now || !live(st, st.expiries.front()))) {
    auto e = std::move(st.expiries.front());
    st.expiries.pop_front();
    if (live(st, e))
      answer(self, e.id, false, {}, {},
             "timed out after " + std::to_string(st.agent->cfg.timeout.count()) + " ms", true);
  }
  if (st.expiries.empty())
    return;
  st.expiry_timer = true;
  auto wait = std::chrono::ceil<std::chrono::milliseconds>(st.expiries.front().due - now);
  self->delayed_send(self, std::max(wait, std::chrono::milliseconds{1}), pull_expire_atom::value);
}

/// Gives fetched delivery `id` to `consumer` (whose record is `c`) now:
/// its timeout starts again.
void hand_to(instance_actor_t self, const std::string& id, in_flight& f,
             const std::string& consumer, consumer_info& c, bool counts) {
  auto& st = self->state;
  auto now = std::chrono::steady_clock::now();
  if (!f.fetched)
    f.started = now; // processing time runs from the first fetch
  f.fetched = true;
  f.consumer = consumer;
  f.handed = now;
  if (counts)
    f.count = std::max(f.count + 1, f.d.attempt);
  ++f.handout;
  // A group made by XGROUP CREATE keeps Redis' semantics: the delivery
  // stays with its consumer until acked or claimed.
  if (!st.agent->cfg.redis_group) {
    st.expiries.push_back({now + st.agent->cfg.timeout, id, f.handout});
    if (!st.expiry_timer) {
      st.expiry_timer = true;
      self->delayed_send(self, st.agent->cfg.timeout, pull_expire_atom::value);
    }
    if (st.expiries.size() > 2 * st.inflight.size() + 1024)
      sweep_expiries(st);
  }
  c.seen = c.active = now;
  c.ever_active = true;
}

/// Hands out at most `req.max` waiting deliveries of the topics asked for.
std::vector<delivery> hand_out(instance_actor_t self, const pull_request& req) {
  auto& st = self->state;
  std::vector<delivery> out;
  auto& who = st.consumers[req.consumer];
  who.seen = std::chrono::steady_clock::now();
  if (st.agent->paused.load())
    return out;
  // The topics asked for, as indexes (none asked: any).
  std::vector<std::uint32_t> wanted;
  for (auto& t : req.topics)
    if (auto idx = known_topic(st, t))
      wanted.push_back(*idx);
  if (!req.topics.empty() && wanted.empty())
    return out; // nothing of those topics came yet
  auto wants = [&](std::uint32_t topic) {
    return req.topics.empty() || std::find(wanted.begin(), wanted.end(), topic) != wanted.end();
  };
  std::vector<std::string> noack;
  for (auto i = st.ready.begin(); i != st.ready.end() && out.size() < req.max;) {
    auto it = st.inflight.find(*i);
    if (it == st.inflight.end() || it->second.fetched) { // answered or claimed meanwhile
      i = st.ready.erase(i);
      continue;
    }
    if (!wants(it->second.topic)) {
      ++i;
      continue;
    }
    hand_to(self, *i, it->second, req.consumer, who, true);
    out.push_back(it->second.d);
    if (req.noack)
      noack.push_back(*i);
    i = st.ready.erase(i);
  }
  for (auto& id : noack)
    answer(self, id, true, {}, {}, {});
  return out;
}

/// Serves waiting fetches, oldest first, while deliveries they want wait.
void serve_waiters(instance_actor_t self) {
  auto& st = self->state;
  for (auto w = st.waiters.begin(); w != st.waiters.end() && !st.ready.empty();) {
    auto got = hand_out(self, w->req);
    if (got.empty()) {
      ++w;
      continue;
    }
    w->reply(std::move(got));
    w = st.waiters.erase(w);
  }
}

/// A fetched delivery as a pending entry.
pending_entry entry_of(const instance_actor_state& st, const std::string& id, const in_flight& f,
                       bool with_event, std::chrono::steady_clock::time_point now) {
  pending_entry e;
  e.delivery_id = id;
  e.topic = st.topic_names.at(f.topic);
  e.partition = f.partition;
  e.offset = f.d.offset;
  e.time_us = f.time_us;
  e.consumer = f.consumer;
  e.idle_ms = std::chrono::duration_cast<std::chrono::milliseconds>(now - f.handed).count();
  e.count = f.count;
  e.attempt = f.d.attempt;
  if (with_event)
    e.event = f.d.event;
  return e;
}

/// Hands the pending entries `c` names to its consumer.
std::vector<pending_entry> claim(instance_actor_t self, const claim_request& c) {
  auto& st = self->state;
  std::vector<pending_entry> out;
  auto now = std::chrono::steady_clock::now();
  auto& who = st.consumers[c.consumer];
  who.seen = now;
  auto topic = known_topic(st, c.topic);
  if (!topic)
    return out;
  for (auto& e : c.entries) {
    auto where = st.at.find({*topic, e.partition, e.offset});
    if (where == st.at.end())
      continue;
    for (auto& id : where->second) {
      auto it = st.inflight.find(id);
      if (it == st.inflight.end() || !it->second.fetched)
        continue;
      auto idle = std::chrono::duration_cast<std::chrono::milliseconds>(now - it->second.handed);
      if (idle.count() < c.min_idle_ms)
        continue;
      hand_to(self, id, it->second, c.consumer, who, !c.justid);
      out.push_back(entry_of(st, id, it->second, !c.justid, now));
    }
  }
  return out;
}

/// The consumers with their pending count in `topic`.
std::vector<consumer_view> consumers_of(const instance_actor_state& st, const std::string& topic) {
  auto now = std::chrono::steady_clock::now();
  std::map<std::string, std::uint64_t> pending;
  if (auto idx = known_topic(st, topic))
    for (auto& [id, f] : st.inflight)
      if (f.fetched && f.topic == *idx)
        ++pending[f.consumer];
  std::vector<consumer_view> out;
  for (auto& [name, c] : st.consumers) {
    consumer_view v;
    v.name = name;
    auto p = pending.find(name);
    v.pending = p == pending.end() ? 0 : p->second;
    v.idle_ms = std::chrono::duration_cast<std::chrono::milliseconds>(now - c.seen).count();
    if (c.ever_active)
      v.inactive_ms = std::chrono::duration_cast<std::chrono::milliseconds>(now - c.active).count();
    out.push_back(std::move(v));
  }
  return out;
}

/// Forgets consumer `name`: its pending entries wait to be fetched again.
void drop_consumer(instance_actor_t self, const std::string& name) {
  auto& st = self->state;
  std::vector<std::pair<std::uint64_t, std::string>> back; // in delivery order
  for (auto& [id, f] : st.inflight)
    if (f.fetched && f.consumer == name) {
      f.fetched = false;
      f.consumer.clear();
      ++f.handout; // its timeout is off
      back.emplace_back(f.d.offset, id);
    }
  std::sort(back.rbegin(), back.rend());
  for (auto& b : back)
    st.ready.push_front(b.second);
  st.consumers.erase(name);
  serve_waiters(self);
}

/// XGROUP DESTROY: forgets every delivery of `topic`, fetched or not (the
/// partitions dropped the group first, so their answers change nothing
/// there); their credits come back.
void drop_topic(instance_actor_t self, const std::string& topic) {
  auto& st = self->state;
  auto idx = known_topic(st, topic);
  if (!idx)
    return;
  std::vector<std::string> ids;
  for (auto& [id, f] : st.inflight)
    if (f.topic == *idx)
      ids.push_back(id);
  for (auto& id : ids)
    answer(self, id, true, {}, {}, {});
}

/// Workers' acks and nacks: all known and fetched, or none taken.
std::vector<std::string> take_pull_answers(instance_actor_t self,
                                           std::vector<pull_answer>& answers) {
  auto& st = self->state;
  std::vector<std::string> unknown;
  std::unordered_set<std::string> seen;
  for (auto& a : answers) {
    auto it = st.inflight.find(a.delivery_id);
    if (it == st.inflight.end() || !it->second.fetched || !seen.insert(a.delivery_id).second)
      unknown.push_back(a.delivery_id);
  }
  if (!unknown.empty())
    return unknown;
  for (auto& a : answers)
    answer(self, a.delivery_id, a.ok, std::move(a.result), std::move(a.emit), std::move(a.error));
  return unknown;
}

/// Takes delivery `msg` from the partition or replay that sent it; a pull
/// agent's waits in `ready` (the caller serves waiting fetches).
void take_delivery(instance_actor_t self, delivery&& msg) {
  auto& st = self->state;
  auto id = msg.delivery_id;
  auto& f = st.inflight[id];
  f = in_flight{};
  f.d = std::move(msg);
  f.reply_to = caf::actor_cast<outcome_sink>(self->current_sender());
  f.started = std::chrono::steady_clock::now();
  const auto& d = f.d;
  if (st.agent->cfg.kind == config::agent_kind::builtin)
    return answer_builtin(self, d);
  if (st.agent->cfg.kind == config::agent_kind::pull) {
    locate(st, f);
    st.at[{f.topic, f.partition, f.d.offset}].push_back(id);
    st.ready.push_back(std::move(id));
    return;
  }
  self->delayed_send(self, st.agent->cfg.timeout, timeout_atom::value, id);
  if (st.poster) {
    auto me = caf::actor_cast<caf::actor>(self);
    std::vector<std::pair<std::string, std::string>> headers;
    if (auto parent = attempt_traceparent(st.ctx->tracing.get(), d.event, d.delivery_id);
        !parent.empty())
      headers.emplace_back("traceparent", std::move(parent));
    st.poster->post(
      d.event, st.agent->cfg.timeout,
      [me, id](const agents::http_answer& a) {
        if (a.timed_out)
          return caf::anon_send(me, timeout_atom::value, id);
        caf::anon_send(me, http_atom::value, id, static_cast<std::uint32_t>(a.status),
                       a.status == 0 ? a.error : a.body);
      },
      std::move(headers));
    return;
  }
  send_to_child(self, d);
}

instance_actor::behavior_type instance_behavior(instance_actor_t self, node_context* ctx,
                                                const agent_ptr& agent, std::size_t index) {
  auto& st = self->state;
  st.ctx = ctx;
  st.agent = agent;
  st.index = index;
  st.slot = agent->instances[index].get();
  agent->credits.reset(index); // the instance before this one is down
  if (agent->cfg.kind == config::agent_kind::process) {
    start_child(self);
  } else if (agent->cfg.kind == config::agent_kind::http) {
    // One worker per delivery the instance may have in flight, at most 32.
    st.poster = std::make_unique<agents::http_poster>(
      agent->cfg.url, std::min<std::size_t>(agent->cfg.max_in_flight, 32));
    st.slot->state = instance_state::running;
  } else {
    st.slot->state = instance_state::running;
  }
  agent->wake_all();
  return {
    [=](deliver_atom, delivery& msg) {
      take_delivery(self, std::move(msg));
      if (self->state.agent->cfg.kind == config::agent_kind::pull)
        serve_waiters(self);
    },
    [=](deliver_atom, std::vector<delivery>& msgs) {
      for (auto& msg : msgs)
        take_delivery(self, std::move(msg));
      if (self->state.agent->cfg.kind == config::agent_kind::pull)
        serve_waiters(self); // once for the lot: a waiting fetch gets all it asked for
    },
    [=](timeout_atom, const std::string& id) {
      auto& st = self->state;
      auto& cfg = st.agent->cfg;
      if (st.inflight.count(id) == 0)
        return; // answered in time
      answer(self, id, false, {}, {},
             "timed out after " + std::to_string(cfg.timeout.count()) + " ms", true);
      // A child that said nothing for a whole timeout while a delivery ran
      // out is hung (stopped, deadlocked, stuck in a read): it is replaced,
      // and its deliveries in flight go to the new one, as after a crash.
      auto silent = std::chrono::steady_clock::now() - st.last_heard;
      if (cfg.kind == config::agent_kind::process && st.pid > 0 && silent >= cfg.timeout) {
        spdlog::warn("{}: pid {} said nothing for {} ms while deliveries timed out; killing it",
                     label(st), st.pid,
                     std::chrono::duration_cast<std::chrono::milliseconds>(silent).count());
        ::kill(st.pid, SIGKILL);
      }
    },
    [=](http_atom, const std::string& id, std::uint32_t status, const std::string& body) {
      on_http_answer(self, id, status, body);
    },
    [=](child_atom, std::uint64_t gen, const std::string& line) {
      auto& st = self->state;
      if (gen != st.generation)
        return; // an earlier child's: its gate is closed
      st.out_gate->leave();
      on_child_line(self, line);
    },
    [=](exited_atom, std::uint64_t gen, int status) {
      auto& st = self->state;
      if (gen != st.generation || st.stopping)
        return;
      st.writer.reset(); // the child is dead: its pipe fails any write
      auto delay = *st.child_restarts.on_death(std::chrono::steady_clock::now());
      st.slot->restarts++;
      st.slot->pid = 0;
      st.slot->state = instance_state::restarting;
      st.pid = -1;
      spdlog::warn("{}: process exited ({}); {} deliveries in flight; restarting in {} ms",
                   label(st),
                   WIFSIGNALED(status) ? "signal " + std::to_string(WTERMSIG(status))
                                       : "code " + std::to_string(WEXITSTATUS(status)),
                   st.inflight.size(), delay.count());
      self->delayed_send(self, delay, restart_child_atom::value);
    },
    [=](restart_child_atom) {
      if (!self->state.stopping)
        start_child(self);
    },
    [=](pull_atom, pull_request& req, const fetch_answer& reply) {
      auto& st = self->state;
      auto got = hand_out(self, req);
      if (!got.empty() || req.wait_ms == 0 || st.stopping)
        return reply(std::move(got));
      auto id = ++st.next_waiter;
      auto wait = std::chrono::milliseconds{req.wait_ms};
      st.waiters.push_back({id, std::move(req), reply});
      self->delayed_send(self, wait, pull_wait_atom::value, id);
    },
    [=](pull_wait_atom, std::uint64_t id) {
      auto& ws = self->state.waiters;
      auto it = std::find_if(ws.begin(), ws.end(), [id](auto& w) { return w.id == id; });
      if (it == ws.end())
        return;
      // Paused meanwhile, or nothing came: what waits now, if anything.
      it->reply(hand_out(self, it->req));
      ws.erase(it);
    },
    [=](pull_expire_atom) { expire_due(self); },
    [=](pull_pending_atom, const std::string& topic, bool with_events) {
      auto& st = self->state;
      auto now = std::chrono::steady_clock::now();
      std::vector<pending_entry> out;
      if (auto idx = known_topic(st, topic))
        for (auto& [id, f] : st.inflight)
          if (f.fetched && f.topic == *idx)
            out.push_back(entry_of(st, id, f, with_events, now));
      return out;
    },
    [=](pull_claim_atom, const claim_request& c) { return claim(self, c); },
    [=](pull_ack_at_atom, const std::string& topic, const std::vector<entry_at>& entries,
        const count_answer& reply) {
      auto& st = self->state;
      std::uint64_t acked = 0;
      auto idx = known_topic(st, topic);
      batched(self, [&] {
        for (auto& e : entries) {
          if (!idx)
            break;
          auto where = st.at.find({*idx, e.partition, e.offset});
          if (where == st.at.end())
            continue;
          // Out of the index while answered (one lookup per entry, not three);
          // what is not fetched goes back.
          auto key = where->first;
          auto ids = std::move(where->second);
          st.at.erase(where);
          std::vector<std::string> waiting;
          for (auto& id : ids) {
            auto it = st.inflight.find(id);
            if (it == st.inflight.end() || !it->second.fetched) {
              waiting.push_back(std::move(id));
              continue;
            }
            answer_at(self, it, true, {}, {}, {}, false, false);
            ++acked;
          }
          if (!waiting.empty())
            st.at.emplace(std::move(key), std::move(waiting));
        }
      });
      reply(acked);
    },
    [=](pull_consumer_atom, const std::string& topic, const std::string& name, std::int32_t op) {
      auto& st = self->state;
      if (op > 0 && !name.empty())
        st.consumers.try_emplace(name, consumer_info{std::chrono::steady_clock::now(), {}, false});
      auto out = consumers_of(st, topic); // before a delete: what the consumer had
      if (op == -1 && !name.empty())
        drop_consumer(self, name);
      if (op == -2)
        drop_topic(self, topic);
      return out;
    },
    [=](pull_answer_atom, std::vector<pull_answer>& answers) -> std::vector<std::string> {
      std::vector<std::string> unknown;
      batched(self, [&] { unknown = take_pull_answers(self, answers); });
      return unknown;
    },
    [=](stop_atom) {
      auto& st = self->state;
      st.stopping = true;
      st.slot->state = instance_state::stopped;
      for (auto& w : st.waiters) // shutting down: nothing for them
        w.reply(std::vector<delivery>{});
      st.waiters.clear();
      stop_child(st);
      st.poster.reset();
      self->quit();
    },
  };
}

} // namespace

builtin_answer run_builtin(const std::string& handler, const std::string& event) {
  if (handler == "fail")
    return {false, {}, "the fail handler always fails"};
  if (handler == "echo") {
    auto e = nlohmann::json::parse(event, nullptr, false);
    auto data = e.is_object() && e.contains("data") ? e["data"] : nlohmann::json(nullptr);
    return {true, data.dump(), {}};
  }
  return {}; // noop
}

caf::actor spawn_instance(caf::local_actor* parent, node_context* ctx, agent_ptr agent,
                          std::size_t i) {
  // A builtin handler is a function call and a pull agent's queue never
  // blocks: they share the scheduler with the partitions. Process and http instances block (pipe
  // writes, child reaping), so they keep a thread each.
  if (agent->cfg.kind == config::agent_kind::builtin || agent->cfg.kind == config::agent_kind::pull
      || !ctx->detach_blocking)
    return caf::actor_cast<caf::actor>(
      parent->spawn<caf::monitored>(instance_behavior, ctx, std::move(agent), i));
  return caf::actor_cast<caf::actor>(
    parent->spawn<caf::detached + caf::monitored>(instance_behavior, ctx, std::move(agent), i));
}

} // namespace nerve::actors::detail

namespace nerve::actors {

void set_agent_launcher(std::vector<std::string> prefix) {
  detail::agent_launcher() = std::move(prefix);
}

} // namespace nerve::actors
