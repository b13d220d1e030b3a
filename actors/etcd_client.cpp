// etcd v3 over its JSON gateway with Beast: requests, failover, pooled connections, and
// watch streams on threads of their own. docs/etcd.md says how the gateway answers.
#include "actors/etcd_client.hpp"

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <charconv>
#include <mutex>
#include <pthread.h>
#include <stdexcept>
#include <thread>

#include <sys/socket.h>

#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/core/detail/base64.hpp>
#include <boost/beast/http.hpp>
#include <nlohmann/json.hpp>

namespace nerve::etcd {

namespace net = boost::asio;
namespace beast = boost::beast;
namespace bhttp = beast::http;
using tcp = net::ip::tcp;
using json = nlohmann::json;
using clock_type = std::chrono::steady_clock;

namespace {

/// Largest answer read: a range of many keys, or one watch message.
constexpr std::size_t max_answer_bytes = 64u << 20;
/// Idle keep-alive connections kept per endpoint; more are closed.
constexpr std::size_t max_idle_per_endpoint = 4;
constexpr std::chrono::milliseconds watch_backoff_min{100};
constexpr std::chrono::milliseconds watch_backoff_max{2000};

struct endpoint {
  std::string url;
  std::string host;
  std::string port;
  unsigned short port_number = 0;
};

endpoint parse_endpoint(const std::string& url) {
  const std::string scheme = "http://";
  if (url.compare(0, scheme.size(), scheme) != 0)
    throw std::invalid_argument("etcd endpoint \"" + url
                                + "\" is not http://HOST:PORT (TLS is not supported)");
  auto hostport = url.substr(scheme.size());
  hostport = hostport.substr(0, hostport.find('/'));
  auto colon = hostport.rfind(':');
  if (colon == std::string::npos || colon == 0 || colon + 1 == hostport.size())
    throw std::invalid_argument("etcd endpoint \"" + url + "\" has no HOST:PORT");
  auto host = hostport.substr(0, colon);
  if (host.size() > 2 && host.front() == '[' && host.back() == ']')
    host = host.substr(1, host.size() - 2);
  auto port = hostport.substr(colon + 1);
  unsigned short number = 0;
  auto [end, ec] = std::from_chars(port.data(), port.data() + port.size(), number);
  if (ec != std::errc{} || end != port.data() + port.size() || number == 0)
    throw std::invalid_argument("etcd endpoint \"" + url + "\" has no valid port");
  return {url, host, port, number};
}

std::string to_base64(const std::string& bytes) {
  std::string out(beast::detail::base64::encoded_size(bytes.size()), '\0');
  out.resize(beast::detail::base64::encode(out.data(), bytes.data(), bytes.size()));
  return out;
}

std::optional<std::string> from_base64(const std::string& text) {
  if (text.size() % 4 != 0)
    return std::nullopt;
  std::string out(beast::detail::base64::decoded_size(text.size()), '\0');
  auto [written, read] = beast::detail::base64::decode(out.data(), text.data(), text.size());
  // Whatever the decoder stopped at must be padding.
  if (text.size() - read > 2
      || std::any_of(text.begin() + static_cast<std::ptrdiff_t>(read), text.end(),
                     [](char c) { return c != '='; }))
    return std::nullopt;
  out.resize(written);
  return out;
}

// -- Reading answers ------------------------------------------------------------------------

/// Reads fields of an answer the way the gateway writes them (int64 as strings, zero
/// fields omitted), keeping the first mismatch instead of throwing.
struct reader {
  std::string failure;

  void fail(std::string what) {
    if (failure.empty())
      failure = std::move(what);
  }

  /// The field `name` of `o`, or nullptr when it is missing (omitted as zero) or null.
  static const json* field(const json& o, const char* name) {
    auto it = o.find(name);
    return it == o.end() || it->is_null() ? nullptr : &*it;
  }

  std::int64_t number(const json& o, const char* name) {
    const auto* f = field(o, name);
    if (f == nullptr)
      return 0;
    if (f->is_number_integer())
      return f->get<std::int64_t>();
    if (f->is_string()) {
      const auto& s = f->get_ref<const std::string&>();
      std::int64_t v = 0;
      auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
      if (ec == std::errc{} && end == s.data() + s.size())
        return v;
    }
    fail(std::string{"\""} + name + "\" is not an int64: " + f->dump());
    return 0;
  }

  bool flag(const json& o, const char* name) {
    const auto* f = field(o, name);
    if (f == nullptr)
      return false;
    if (f->is_boolean())
      return f->get<bool>();
    fail(std::string{"\""} + name + "\" is not a boolean: " + f->dump());
    return false;
  }

  std::string bytes(const json& o, const char* name) {
    const auto* f = field(o, name);
    if (f == nullptr)
      return {};
    if (f->is_string())
      if (auto decoded = from_base64(f->get_ref<const std::string&>()))
        return std::move(*decoded);
    fail(std::string{"\""} + name + "\" is not base64: " + f->dump());
    return {};
  }

  /// A plain string field, such as an error's message.
  std::string text(const json& o, const char* name) {
    const auto* f = field(o, name);
    if (f == nullptr)
      return {};
    return f->is_string() ? f->get<std::string>() : f->dump();
  }

  const json& object(const json& o, const char* name) {
    static const json empty = json::object();
    return nested(o, name, empty);
  }

  const json& array(const json& o, const char* name) {
    static const json empty = json::array();
    return nested(o, name, empty);
  }

  /// An object or array field; `empty` (of the type wanted) when it is missing or not one.
  const json& nested(const json& o, const char* name, const json& empty) {
    const auto* f = field(o, name);
    if (f == nullptr)
      return empty;
    if (f->type() == empty.type())
      return *f;
    fail(std::string{"\""} + name + "\" is not " + (empty.is_object() ? "an object" : "an array")
         + ": " + f->dump());
    return empty;
  }

  std::int64_t revision(const json& o) { return number(object(o, "header"), "revision"); }

  kv read_kv(const json& o) {
    kv out;
    out.key = bytes(o, "key");
    out.value = bytes(o, "value");
    out.create_revision = number(o, "create_revision");
    out.mod_revision = number(o, "mod_revision");
    out.version = number(o, "version");
    out.lease = number(o, "lease");
    return out;
  }

  range_result read_range(const json& o) {
    range_result out;
    out.revision = revision(o);
    for (const auto& k : array(o, "kvs"))
      out.kvs.push_back(read_kv(k));
    out.count = number(o, "count");
    out.more = flag(o, "more");
    return out;
  }

  watch_event read_event(const json& o) {
    watch_event out;
    auto type = o.find("type");
    out.type
      = type != o.end() && *type == "DELETE" ? watch_event::kind::del : watch_event::kind::put;
    out.current = read_kv(object(o, "kv"));
    if (o.contains("prev_kv"))
      out.previous = read_kv(object(o, "prev_kv"));
    return out;
  }
};

/// What etcd said when it refused, in either of the gateway's two error shapes.
struct etcd_failure {
  int grpc_code = 0;
  std::string message;
};

std::optional<etcd_failure> failure_of(const json& answer) {
  auto it = answer.find("error");
  if (it == answer.end())
    return std::nullopt;
  // A stream's error is {"error":{"grpc_code":14,"http_code":503,"message":..}}, a unary
  // call's {"error":..,"message":..,"code":5}.
  const auto& fields = it->is_object() ? *it : answer;
  reader r;
  etcd_failure out;
  out.grpc_code = static_cast<int>(r.number(fields, it->is_object() ? "grpc_code" : "code"));
  out.message = r.text(fields, "message");
  if (out.message.empty())
    out.message = r.text(answer, "error");
  return out;
}

/// etcd refused before executing anything, so another member may do it.
bool refused_unexecuted(const etcd_failure& f) {
  for (const char* m : {"no leader", "too many requests", "not capable"})
    if (f.message.find(m) != std::string::npos)
      return true;
  return false;
}

/// gRPC codes for which a request may or may not have been applied (canceled, unknown,
/// deadline exceeded, aborted, unavailable: "request timed out", "leader changed", …).
bool outcome_unknown(const etcd_failure& f) {
  return f.grpc_code == 1 || f.grpc_code == 2 || f.grpc_code == 4 || f.grpc_code == 10
         || f.grpc_code == 14;
}

error make_error(errc code, std::string message) {
  return error{code, std::move(message)};
}

// -- Connections ----------------------------------------------------------------------------

/// An io_context with at most one connection on it. Calls run their steps on it one at a
/// time from the calling thread; tcp_stream's expiry bounds every step.
struct channel {
  net::io_context ioc;
  std::optional<beast::tcp_stream> stream;
  beast::flat_buffer buffer;
  std::size_t endpoint_index = 0;
  /// A watch's stop flag: set, no step starts and a running one returns at once.
  const std::atomic<bool>* stopping = nullptr;

  bool stopped() const { return stopping != nullptr && stopping->load(); }

  /// Runs the operation `start` begins until its handler has run.
  template <class Start>
  beast::error_code run(Start&& start) {
    beast::error_code result = net::error::operation_aborted;
    start([&result](beast::error_code ec, auto&&...) { result = ec; });
    ioc.restart();
    if (stopped())
      return net::error::operation_aborted;
    ioc.run();
    return stopped() ? beast::error_code{net::error::operation_aborted} : result;
  }

  beast::error_code connect(const endpoint& ep, clock_type::time_point deadline) {
    close();
    buffer.clear();
    stream.emplace(ioc);
    beast::error_code ec;
    std::vector<tcp::endpoint> addresses;
    auto address = net::ip::make_address(ep.host, ec);
    if (!ec) {
      addresses.emplace_back(address, ep.port_number);
    } else {
      // A name: resolved here without a deadline (configure IP addresses to avoid it).
      tcp::resolver resolver{ioc};
      auto found = resolver.resolve(ep.host, ep.port, ec);
      if (ec)
        return ec;
      for (const auto& entry : found)
        addresses.push_back(entry.endpoint());
    }
    stream->expires_at(deadline);
    return run([&](auto handler) { stream->async_connect(addresses, std::move(handler)); });
  }

  void close() {
    if (!stream)
      return;
    beast::error_code ignored;
    stream->socket().shutdown(tcp::socket::shutdown_both, ignored);
    stream->close();
    stream.reset();
  }

  /// An idle keep-alive connection is still usable: the peer has neither closed it nor
  /// sent anything unasked.
  bool idle_and_open() {
    if (!stream || !stream->socket().is_open() || buffer.size() != 0)
      return false;
    char c = 0;
    auto n = ::recv(stream->socket().native_handle(), &c, 1, MSG_PEEK | MSG_DONTWAIT);
    return n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK);
  }
};

bhttp::request<bhttp::string_body> make_request(const endpoint& ep, const char* path,
                                                std::string body) {
  bhttp::request<bhttp::string_body> req{bhttp::verb::post, path, 11};
  req.set(bhttp::field::host, ep.host + ":" + ep.port);
  req.set(bhttp::field::user_agent, "nerve/" NERVE_VERSION);
  req.set(bhttp::field::content_type, "application/json");
  // A member without a leader refuses at once instead of hanging ("no leader"), and ends a
  // watch stream when it loses its leader, so the client moves to another member.
  req.set("Grpc-Metadata-Hasleader", "true");
  req.keep_alive(true);
  req.body() = std::move(body);
  req.prepare_payload();
  return req;
}

std::string ms_text(std::chrono::milliseconds d) {
  return std::to_string(d.count()) + " ms";
}

// -- Requests -------------------------------------------------------------------------------

/// The outcome of one request on one endpoint.
struct exchange {
  enum class state { answered, not_sent, lost } what = state::not_sent;
  unsigned status = 0;
  std::string body;
  std::string message; ///< why not answered
};

} // namespace

struct client::impl {
  options opts;
  std::vector<endpoint> endpoints;
  std::atomic<std::size_t> preferred{0}; ///< the endpoint that answered last
  std::mutex mutex;
  std::vector<std::vector<std::unique_ptr<channel>>> idle; ///< per endpoint (mutex)

  explicit impl(options o) : opts(std::move(o)) {
    if (opts.endpoints.empty())
      throw std::invalid_argument("etcd client: no endpoints");
    for (const auto& url : opts.endpoints)
      endpoints.push_back(parse_endpoint(url));
    idle.resize(endpoints.size());
  }

  std::unique_ptr<channel> take_idle(std::size_t e) {
    std::lock_guard<std::mutex> guard{mutex};
    while (!idle[e].empty()) {
      auto ch = std::move(idle[e].back());
      idle[e].pop_back();
      if (ch->idle_and_open())
        return ch;
    }
    return nullptr;
  }

  void give_back(std::unique_ptr<channel> ch) {
    std::lock_guard<std::mutex> guard{mutex};
    auto& pool = idle[ch->endpoint_index];
    if (pool.size() < max_idle_per_endpoint)
      pool.push_back(std::move(ch));
  }

  /// One request on endpoint `e`. A reused connection found broken while writing is
  /// replaced once, as nothing reached etcd; once the request is written, nothing is retried.
  exchange send(std::size_t e, const char* path, const std::string& body,
                clock_type::time_point deadline) {
    const auto& ep = endpoints[e];
    exchange out;
    for (int attempt = 0; attempt < 2; ++attempt) {
      auto ch = attempt == 0 ? take_idle(e) : nullptr;
      bool reused = ch != nullptr;
      if (!ch) {
        ch = std::make_unique<channel>();
        ch->endpoint_index = e;
        auto now = clock_type::now();
        auto connect_deadline = std::min(deadline, now + opts.connect_timeout);
        if (auto ec = ch->connect(ep, connect_deadline)) {
          auto budget
            = std::chrono::duration_cast<std::chrono::milliseconds>(connect_deadline - now);
          out.message
            = "connect to " + ep.url + ": "
              + (ec == beast::error::timeout ? "no answer in " + ms_text(budget) : ec.message());
          return out;
        }
      }
      ch->stream->expires_at(deadline);
      auto req = make_request(ep, path, body);
      if (auto ec = ch->run([&](auto h) { bhttp::async_write(*ch->stream, req, std::move(h)); })) {
        // A request not written whole is never executed (the gateway reads the whole body).
        out.message = "send to " + ep.url + ": " + ec.message();
        if (reused && ec != beast::error::timeout)
          continue;
        return out;
      }
      bhttp::response_parser<bhttp::string_body> parser;
      parser.body_limit(max_answer_bytes);
      // The header alone first (Beast 1.74 reads past a body limit otherwise:
      // actors/agents/http_poster.cpp).
      auto ec = ch->run(
        [&](auto h) { bhttp::async_read_header(*ch->stream, ch->buffer, parser, std::move(h)); });
      if (!ec)
        ec = ch->run(
          [&](auto h) { bhttp::async_read(*ch->stream, ch->buffer, parser, std::move(h)); });
      if (ec) {
        out.what = exchange::state::lost;
        out.message
          = ec == beast::error::timeout
              ? "no answer from " + ep.url + " within the deadline"
              : "connection to " + ep.url + " broke after the request was sent: " + ec.message();
        return out;
      }
      out.what = exchange::state::answered;
      out.status = parser.get().result_int();
      bool keep = parser.get().keep_alive();
      out.body = std::move(parser.get().body());
      if (keep) {
        ch->stream->expires_never();
        give_back(std::move(ch));
      }
      return out;
    }
    return out;
  }

  /// A request to the first endpoint that executes it, starting with the one that answered
  /// last, within request_timeout. Returns the answer's JSON (a stream's "result" unwrapped).
  result<json> call(const char* path, const json& request) {
    auto deadline = clock_type::now() + opts.request_timeout;
    auto body = request.dump();
    std::string why;
    auto start = preferred.load();
    for (std::size_t i = 0; i < endpoints.size() && clock_type::now() < deadline; ++i) {
      auto e = (start + i) % endpoints.size();
      const auto& url = endpoints[e].url;
      auto ex = send(e, path, body, deadline);
      if (ex.what == exchange::state::not_sent) {
        why += (why.empty() ? "" : "; ") + ex.message;
        continue;
      }
      if (ex.what == exchange::state::lost) {
        // The next call starts elsewhere: a member cut off from its peers
        // takes requests and never answers them.
        preferred = (e + 1) % endpoints.size();
        return tl::make_unexpected(make_error(errc::timeout, std::string{path} + ": " + ex.message
                                                               + ": the outcome is unknown"));
      }
      auto answer = json::parse(ex.body, nullptr, false);
      if (answer.is_discarded() || !answer.is_object())
        return tl::make_unexpected(
          make_error(errc::protocol, std::string{path} + ": " + url + " answered HTTP "
                                       + std::to_string(ex.status)
                                       + " that is not a JSON object: " + ex.body.substr(0, 200)));
      if (auto f = failure_of(answer)) {
        auto said = url + " answered HTTP " + std::to_string(ex.status) + ": " + f->message
                    + " (gRPC code " + std::to_string(f->grpc_code) + ")";
        if (refused_unexecuted(*f)) {
          why += (why.empty() ? "" : "; ") + said;
          continue;
        }
        preferred = e;
        auto code = outcome_unknown(*f) ? errc::timeout : errc::rejected;
        return tl::make_unexpected(
          make_error(code, std::string{path} + ": " + said
                             + (code == errc::timeout ? ": the outcome is unknown" : "")));
      }
      if (ex.status != 200)
        return tl::make_unexpected(
          make_error(errc::protocol, std::string{path} + ": " + url + " answered HTTP "
                                       + std::to_string(ex.status) + " without an error"));
      preferred = e;
      if (!answer.contains("result"))
        return answer;
      if (!answer["result"].is_object())
        return tl::make_unexpected(make_error(errc::protocol, std::string{path} + ": " + url
                                                                + " answered a result that is "
                                                                  "not an object"));
      return answer["result"];
    }
    if (why.empty())
      why = "no time left";
    return tl::make_unexpected(
      make_error(errc::unavailable, std::string{path} + ": no etcd endpoint executed it within "
                                      + ms_text(opts.request_timeout) + ": " + why));
  }

  /// A call whose answer `read` turns into a T.
  template <class T, class Read>
  result<T> call(const char* path, const json& request, Read read) {
    auto answer = call(path, request);
    if (!answer)
      return tl::make_unexpected(answer.error());
    reader r;
    T out = read(r, *answer);
    if (!r.failure.empty())
      return tl::make_unexpected(
        make_error(errc::protocol, std::string{path} + ": unexpected answer: " + r.failure));
    return out;
  }
};

// -- Request bodies -------------------------------------------------------------------------

namespace {

json key_range(const std::string& key, const std::string& range_end) {
  json j{{"key", to_base64(key)}};
  if (!range_end.empty())
    j["range_end"] = to_base64(range_end);
  return j;
}

json put_body(const std::string& key, const std::string& value, std::int64_t lease) {
  json j{{"key", to_base64(key)}, {"value", to_base64(value)}};
  if (lease != 0)
    j["lease"] = std::to_string(lease);
  return j;
}

json compare_body(const compare& c) {
  static const char* targets[] = {"VERSION", "CREATE", "MOD", "VALUE", "LEASE"};
  static const char* results[] = {"EQUAL", "GREATER", "LESS", "NOT_EQUAL"};
  static const char* fields[] = {"version", "create_revision", "mod_revision", "value", "lease"};
  auto what = static_cast<std::size_t>(c.what);
  json j{{"key", to_base64(c.key)},
         {"target", targets[what]},
         {"result", results[static_cast<std::size_t>(c.result)]}};
  if (c.what == compare::target::value)
    j[fields[what]] = to_base64(c.value);
  else
    j[fields[what]] = std::to_string(c.number);
  return j;
}

json op_body(const op& o) {
  switch (o.k) {
    case op::kind::put:
      return {{"request_put", put_body(o.key, o.value, o.lease)}};
    case op::kind::range:
      return {{"request_range", key_range(o.key, o.range_end)}};
    case op::kind::del:
      return {{"request_delete_range", key_range(o.key, o.range_end)}};
  }
  return json::object();
}

json ops_body(const std::vector<op>& ops) {
  auto j = json::array();
  for (const auto& o : ops)
    j.push_back(op_body(o));
  return j;
}

} // namespace

// -- The client -----------------------------------------------------------------------------

client::client(options opts) : impl_(std::make_unique<impl>(std::move(opts))) {
}

client::~client() = default;

std::string client::prefix_end(std::string p) {
  while (!p.empty() && static_cast<unsigned char>(p.back()) == 0xff)
    p.pop_back();
  if (p.empty())
    return std::string(1, '\0');
  p.back() = static_cast<char>(static_cast<unsigned char>(p.back()) + 1);
  return p;
}

result<range_result> client::range(const std::string& key, const std::string& range_end,
                                   std::int64_t limit) {
  auto body = key_range(key, range_end);
  if (limit > 0)
    body["limit"] = std::to_string(limit);
  return impl_->call<range_result>("/v3/kv/range", body,
                                   [](reader& r, const json& j) { return r.read_range(j); });
}

result<range_result> client::prefix(const std::string& p) {
  // The whole key space is ["\0", "\0").
  return range(p.empty() ? std::string(1, '\0') : p, prefix_end(p));
}

result<std::int64_t> client::put(const std::string& key, const std::string& value,
                                 std::int64_t lease) {
  return impl_->call<std::int64_t>("/v3/kv/put", put_body(key, value, lease),
                                   [](reader& r, const json& j) { return r.revision(j); });
}

result<std::int64_t> client::del(const std::string& key, const std::string& range_end) {
  return impl_->call<std::int64_t>("/v3/kv/deleterange", key_range(key, range_end),
                                   [](reader& r, const json& j) { return r.number(j, "deleted"); });
}

result<txn_result> client::txn(const std::vector<compare>& compares, const std::vector<op>& success,
                               const std::vector<op>& failure) {
  auto cmp = json::array();
  for (const auto& c : compares)
    cmp.push_back(compare_body(c));
  json body{{"compare", cmp}, {"success", ops_body(success)}, {"failure", ops_body(failure)}};
  return impl_->call<txn_result>("/v3/kv/txn", body, [](reader& r, const json& j) {
    txn_result out;
    out.succeeded = r.flag(j, "succeeded");
    out.revision = r.revision(j);
    for (const auto& response : r.array(j, "responses")) {
      if (response.contains("response_range")) {
        out.responses.push_back(r.read_range(response["response_range"]));
      } else {
        range_result empty;
        for (const char* k : {"response_put", "response_delete_range"})
          if (response.contains(k))
            empty.revision = r.revision(response[k]);
        out.responses.push_back(std::move(empty));
      }
    }
    return out;
  });
}

result<lease_grant> client::grant(std::int64_t ttl_s) {
  return impl_->call<lease_grant>("/v3/lease/grant", json{{"TTL", std::to_string(ttl_s)}},
                                  [](reader& r, const json& j) {
                                    return lease_grant{r.number(j, "ID"), r.number(j, "TTL")};
                                  });
}

result<std::int64_t> client::keepalive(std::int64_t id) {
  // One POST a keepalive: the gateway answers the one request and ends the stream.
  auto ttl = impl_->call<std::int64_t>("/v3/lease/keepalive", json{{"ID", std::to_string(id)}},
                                       [](reader& r, const json& j) { return r.number(j, "TTL"); });
  if (ttl && *ttl <= 0)
    return tl::make_unexpected(
      make_error(errc::rejected, "/v3/lease/keepalive: lease " + std::to_string(id)
                                   + " not found (expired or revoked): grant a new one"));
  return ttl;
}

result<void> client::revoke(std::int64_t id) {
  auto answer = impl_->call("/v3/lease/revoke", json{{"ID", std::to_string(id)}});
  if (!answer)
    return tl::make_unexpected(answer.error());
  return {};
}

// -- Watches --------------------------------------------------------------------------------

namespace {

/// What a watch stream ended with.
struct stream_end {
  bool created = false; ///< the stream was up before it ended
  bool final = false;   ///< etcd canceled the watch: do not resume
  error why;
};

/// A watch's state, shared by its handle and its thread, so that a handle destroyed from
/// one of its own callbacks lets the thread finish on its own.
class watch_state {
public:
  watch_state(std::vector<endpoint> endpoints, client::options opts, std::size_t first,
              std::string key, std::string range_end, std::int64_t start_revision,
              client::events_fn on_events, client::reset_fn on_reset)
    : endpoints_(std::move(endpoints)), opts_(std::move(opts)), next_endpoint_(first),
      key_(std::move(key)), range_end_(std::move(range_end)), next_revision_(start_revision),
      on_events_(std::move(on_events)), on_reset_(std::move(on_reset)) {
    channel_.stopping = &stopping_;
  }

  void stop() {
    stopping_ = true;
    channel_.ioc.stop();
  }

  void run() {
    auto backoff = watch_backoff_min;
    std::size_t failures = 0; // in a row, without a stream up
    bool down = false;        // on_reset(unavailable) said so
    while (!stopping_) {
      auto end = stream_once(down);
      channel_.close();
      if (stopping_)
        return;
      if (end.final) {
        report(end.why);
        return;
      }
      // The next endpoint, after a pause even when the stream was up, so that a member that
      // accepts watches and drops them cannot make this loop spin.
      next_endpoint_ = (next_endpoint_ + 1) % endpoints_.size();
      if (end.created) {
        failures = 0;
        backoff = watch_backoff_min;
      } else if (++failures >= endpoints_.size() && !down) {
        down = true;
        report(end.why);
      }
      net::steady_timer timer{channel_.ioc, backoff};
      (void)channel_.run([&](auto h) { timer.async_wait(std::move(h)); });
      if (!end.created)
        backoff = std::min(backoff * 2, watch_backoff_max);
    }
  }

private:
  void report(const error& why) {
    if (!stopping_ && on_reset_)
      on_reset_(why);
  }

  void deliver(std::vector<watch_event> events, std::int64_t revision) {
    if (!stopping_ && on_events_)
      on_events_(std::move(events), revision);
  }

  json request_body() const {
    auto create = key_range(key_, range_end_);
    create["prev_kv"] = true;
    if (next_revision_ > 0)
      create["start_revision"] = std::to_string(next_revision_);
    return {{"create_request", create}};
  }

  /// One stream on the next endpoint, from connecting until it ends.
  stream_end stream_once(bool& down) {
    const auto& ep = endpoints_[next_endpoint_];
    stream_end end;
    auto unavailable = [&](std::string what) {
      end.why = make_error(errc::unavailable, "watch on " + ep.url + ": " + std::move(what));
      return end;
    };
    auto deadline = clock_type::now() + opts_.request_timeout;
    if (auto ec
        = channel_.connect(ep, std::min(deadline, clock_type::now() + opts_.connect_timeout)))
      return unavailable("connect: " + ec.message());
    auto req = make_request(ep, "/v3/watch", request_body().dump());
    channel_.stream->expires_at(deadline);
    if (auto ec
        = channel_.run([&](auto h) { bhttp::async_write(*channel_.stream, req, std::move(h)); }))
      return unavailable("send: " + ec.message());

    std::string lines; // what the stream sent that is not handled yet
    bool too_long = false;
    auto on_chunk = [&](std::uint64_t, beast::string_view data, beast::error_code&) {
      lines.append(data.data(), data.size());
      too_long = lines.size() > max_answer_bytes;
      return data.size();
    };
    bhttp::response_parser<bhttp::string_body> parser;
    parser.body_limit(boost::none); // a stream: each message is bounded instead
    parser.on_chunk_body(on_chunk);
    if (auto ec = channel_.run([&](auto h) {
          bhttp::async_read_header(*channel_.stream, channel_.buffer, parser, std::move(h));
        }))
      return unavailable("no answer: " + ec.message());
    bool ok_status = parser.get().result_int() == 200;
    for (;;) {
      auto ec = channel_.run([&](auto h) {
        bhttp::async_read_some(*channel_.stream, channel_.buffer, parser, std::move(h));
      });
      // A body without chunks (an error answer with Content-Length) arrives whole.
      if (parser.is_done())
        lines += parser.get().body();
      if (!ok_status && (ec || parser.is_done())) {
        auto answer = json::parse(lines, nullptr, false);
        auto f = answer.is_object() ? failure_of(answer) : std::nullopt;
        return unavailable("HTTP " + std::to_string(parser.get().result_int()) + ": "
                           + (f ? f->message : lines.substr(0, 200)));
      }
      if (ok_status && !handle_lines(lines, end, down))
        return end;
      if (end.created)
        channel_.stream->expires_never(); // up: it may stay quiet for as long as nothing changes
      if (too_long)
        return unavailable("a message over " + std::to_string(max_answer_bytes) + " bytes");
      if (ec || parser.is_done()) {
        end.why = make_error(errc::unavailable, "watch on " + ep.url + ": the stream ended: "
                                                  + (ec ? ec.message() : "by etcd"));
        return end;
      }
    }
  }

  /// Handles each whole line in `lines`; false when the stream must end (`end` says why).
  bool handle_lines(std::string& lines, stream_end& end, bool& down) {
    std::size_t from = 0;
    for (auto nl = lines.find('\n'); nl != std::string::npos; nl = lines.find('\n', from)) {
      auto line = lines.substr(from, nl - from);
      from = nl + 1;
      if (line.find_first_not_of(" \r\t") == std::string::npos)
        continue;
      if (!handle_message(line, end, down)) {
        lines.clear();
        return false;
      }
    }
    lines.erase(0, from);
    return true;
  }

  bool handle_message(const std::string& line, stream_end& end, bool& down) {
    const auto& url = endpoints_[next_endpoint_].url;
    auto message = json::parse(line, nullptr, false);
    if (message.is_discarded() || !message.is_object()) {
      end.why
        = make_error(errc::protocol, "watch on " + url + ": not JSON: " + line.substr(0, 200));
      return false;
    }
    if (auto f = failure_of(message)) {
      // Such as "no leader": another member may serve the watch.
      end.why = make_error(errc::unavailable, "watch on " + url + ": " + f->message);
      return false;
    }
    reader r;
    const auto& res = r.object(message, "result");
    if (r.flag(res, "canceled")) {
      end.final = true;
      auto compacted = r.number(res, "compact_revision");
      if (compacted > 0)
        end.why
          = make_error(errc::compacted, "watch from revision " + std::to_string(next_revision_)
                                          + ": history before revision " + std::to_string(compacted)
                                          + " was compacted; re-read and watch again");
      else
        end.why = make_error(
          errc::rejected, "watch on " + url + " canceled by etcd: " + r.text(res, "cancel_reason"));
      return false;
    }
    if (r.flag(res, "created")) {
      end.created = true;
      // From now: the watch starts after the revision the member had.
      if (next_revision_ <= 0)
        next_revision_ = r.revision(res) + 1;
      if (down) {
        down = false;
        deliver(std::vector<watch_event>{}, next_revision_ - 1);
      }
    }
    std::vector<watch_event> events;
    std::int64_t last = 0;
    for (const auto& e : r.array(res, "events")) {
      events.push_back(r.read_event(e));
      last = std::max(last, events.back().current.mod_revision);
    }
    if (!r.failure.empty()) {
      end.why
        = make_error(errc::protocol, "watch on " + url + ": unexpected message: " + r.failure);
      return false;
    }
    if (!events.empty()) {
      // Events come in revision order and a revision is never split across messages, so
      // everything up to `last` has been seen (a message's header revision may be later).
      next_revision_ = last + 1;
      deliver(std::move(events), last);
    }
    return true;
  }

  const std::vector<endpoint> endpoints_;
  const client::options opts_;
  std::size_t next_endpoint_;
  const std::string key_;
  const std::string range_end_;
  std::int64_t next_revision_; ///< where a new stream starts (0: from now)
  const client::events_fn on_events_;
  const client::reset_fn on_reset_;
  std::atomic<bool> stopping_{false};
  channel channel_;
};

class watch_thread final : public watch_handle {
public:
  explicit watch_thread(std::shared_ptr<watch_state> state) : state_(std::move(state)) {
    thread_ = std::thread([s = state_] {
      ::pthread_setname_np(::pthread_self(), "nerve.etcd");
      s->run();
    });
  }

  ~watch_thread() override {
    state_->stop();
    if (thread_.get_id() == std::this_thread::get_id())
      thread_.detach(); // destroyed from its own callback: the thread ends when it returns
    else
      thread_.join();
  }

private:
  std::shared_ptr<watch_state> state_;
  std::thread thread_;
};

} // namespace

std::unique_ptr<watch_handle> client::watch(std::string key, std::string range_end,
                                            std::int64_t start_revision, events_fn on_events,
                                            reset_fn on_reset) {
  auto state = std::make_shared<watch_state>(impl_->endpoints, impl_->opts, impl_->preferred.load(),
                                             std::move(key), std::move(range_end), start_revision,
                                             std::move(on_events), std::move(on_reset));
  return std::make_unique<watch_thread>(std::move(state));
}

} // namespace nerve::etcd
