// The Redis protocol listener (CONTRACT.md section 10, docs/redis.md): RESP2
// and RESP3 over TCP, requests parsed by hiredis' reader, commands looked up
// in a table of handlers that answer from any thread, replies written in
// command order. Asio stays in resp_server.cpp, hiredis in resp_protocol.cpp.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include <tl/expected.hpp>

namespace nerve::http::resp {

/// The reply protocol of a connection: RESP2 until HELLO 3.
enum class protocol : std::uint8_t { resp2 = 2, resp3 = 3 };

/// One reply, encoded for one protocol version while it is built. Types
/// RESP2 lacks fall back as Redis does: a map is a flat array, null is
/// `$-1` (or `*-1` for a missing array), a double a bulk string, a boolean
/// the integer 1 or 0, a set an array, a verbatim string a bulk string.
class reply {
public:
  explicit reply(protocol p) : proto_(p) {}

  [[nodiscard]] protocol proto() const { return proto_; }
  /// `+text` (no CR or LF in it).
  reply& simple(std::string_view text);
  /// `-text`, where text starts with the error code ("ERR ...",
  /// "WRONGTYPE ..."); CR and LF in it become spaces, as Redis does.
  reply& error(std::string_view text);
  reply& integer(std::int64_t value);
  reply& bulk(std::string_view bytes);
  /// RESP3 `=` with format "txt" (INFO, CLIENT INFO), else a bulk string.
  reply& verbatim(std::string_view text);
  reply& null();       ///< a missing string: RESP2 `$-1`, RESP3 `_`
  reply& null_array(); ///< a missing array: RESP2 `*-1`, RESP3 `_`
  reply& array(std::size_t elements);
  reply& map(std::size_t pairs); ///< followed by 2 * pairs values
  reply& set(std::size_t elements);
  reply& real(double value);
  reply& boolean(bool value);

  /// The encoded bytes so far.
  [[nodiscard]] const std::string& bytes() const { return out_; }
  [[nodiscard]] std::string take() { return std::move(out_); }

private:
  protocol proto_;
  std::string out_;
};

/// Options of the listener (config `resp.*`, `http.token`, `http.read_timeout`).
struct server_options {
  std::string host = "127.0.0.1";
  std::uint16_t port = 6380;
  std::size_t max_connections = 1024;
  /// Bytes one command may take; before AUTH (when a token is set),
  /// `unauthenticated_request_bytes`.
  std::size_t max_request_bytes = 1048576;
  std::size_t unauthenticated_request_bytes = 16384;
  /// Commands read but not yet answered and written, per connection; at
  /// this many, the connection is not read until its replies drain.
  std::size_t max_pending_commands = 1024;
  /// Reply bytes the client has not taken yet, per connection; past this,
  /// the connection is not read until they drain.
  std::size_t max_output_bytes = 4u << 20;
  /// Inline commands (telnet style: words on one line) longer than this
  /// are refused, as Redis does at 64 KiB.
  std::size_t max_inline_bytes = 65536;
  /// A command started and not complete after this long closes its
  /// connection (idle connections between commands stay open).
  std::chrono::milliseconds read_timeout{10000};
  std::size_t threads = 1;
  /// When set, commands other than AUTH, HELLO and QUIT need AUTH first.
  std::string token;
};

/// A connection as CLIENT LIST shows it.
struct client_view {
  std::uint64_t id = 0;
  std::string peer;  ///< the client's HOST:PORT
  std::string local; ///< the listener's HOST:PORT it reached
  std::string name;
  std::string lib_name;
  std::string lib_ver;
  std::string last_command; ///< lower case, "client|list" for a subcommand
  std::int64_t age_s = 0;
  std::int64_t idle_s = 0;
  protocol proto = protocol::resp2;
};

/// A command's view of its connection and of the server. Handlers get it on
/// the connection's I/O thread; it is valid during the handler's call only
/// (an answer given later goes through the responder).
class context {
public:
  virtual ~context() = default;
  [[nodiscard]] virtual std::uint64_t client_id() const = 0;
  [[nodiscard]] virtual protocol proto() const = 0;
  /// Replies to the commands after this one use `p` (HELLO).
  virtual void set_proto(protocol p) = 0;
  [[nodiscard]] virtual bool authenticated() const = 0;
  virtual void set_authenticated(bool yes) = 0;
  [[nodiscard]] virtual client_view view() const = 0;
  virtual void set_name(std::string name) = 0;
  virtual void set_lib(std::string name, std::string version) = 0;
  /// Every open connection of the server (CLIENT LIST).
  [[nodiscard]] virtual std::vector<client_view> clients() const = 0;
  [[nodiscard]] virtual std::size_t connections() const = 0;
  [[nodiscard]] virtual const server_options& options() const = 0;
  /// The bound port.
  [[nodiscard]] virtual std::uint16_t port() const = 0;
  /// The server's commands (COMMAND describes them).
  [[nodiscard]] virtual const class command_table& commands() const = 0;
};

namespace detail {
struct pending;
} // namespace detail

/// Answers one command: once, from any thread, at any time. Replies leave
/// in command order, so a late answer holds back the replies of the
/// commands read after it on the same connection (Redis does the same for
/// a blocked client). An answer after the connection closed goes nowhere.
/// When the last copy of an unanswered responder is dropped, the command is
/// answered `-ERR` saying it could not be completed, so a client never
/// waits for a command that was forgotten.
class responder {
public:
  explicit responder(std::shared_ptr<detail::pending> p) : p_(std::move(p)) {}

  /// The protocol the reply is for (the connection's when it read the command).
  [[nodiscard]] protocol proto() const;
  /// A reply to fill for this command.
  [[nodiscard]] reply make() const { return reply{proto()}; }
  /// Answers; later calls are ignored.
  void send(reply r) const;
  /// Answers, then closes the connection once the reply is written (QUIT).
  void send_then_close(reply r) const;
  /// False once the connection is closed (an answer would go nowhere).
  [[nodiscard]] bool open() const;
  /// Runs `cancel` once if the connection closes before this command is
  /// answered: on the connection's I/O thread, or at once on this thread
  /// when it is already closed. A blocking command (XREAD BLOCK) registers
  /// here what stops its wait; one registration per command (a second
  /// replaces the first). A client that closes its side while such a
  /// command waits is taken as gone and the connection closed at once, as
  /// Redis does (without one, the replies to what it sent are written
  /// first, within read_timeout).
  void on_close(std::function<void()> cancel) const;

private:
  std::shared_ptr<detail::pending> p_;
};

/// A command's words: args[0] is its name as the client sent it.
using args = std::vector<std::string>;
/// Runs a command; it answers through `r`, now or later.
using handler = std::function<void(context& ctx, args&& argv, responder r)>;

/// One command of the table.
struct command {
  /// Lower case, as Redis' errors and COMMAND name it ("xadd"); a
  /// subcommand's is "parent|sub" ("client|setname").
  std::string name;
  /// Redis' convention: n > 0 exactly n words (the name counts), -n at
  /// least n. A wrong count is answered before the handler runs.
  int arity = 0;
  /// Runs before AUTH when a token is set (AUTH, HELLO, QUIT).
  bool no_auth = false;
  /// COMMAND's flags ("write", "readonly", "fast", ...) and key positions.
  std::vector<std::string> flags;
  int first_key = 0;
  int last_key = 0;
  int key_step = 0;
  handler run;
  /// When not empty, args[1] picks one of these (by the part of its name
  /// after '|', any case) and `run` is not used.
  std::vector<command> subcommands;
};

/// Commands by name, any case.
class command_table {
public:
  /// Adds `c`, replacing a command of the same name.
  void add(command c);
  [[nodiscard]] const command* find(std::string_view name) const;
  /// The command `argv` asks for (its subcommand, for a command that has
  /// some), or the error to answer instead: an unknown command or
  /// subcommand, a wrong number of words, or NOAUTH before AUTH.
  [[nodiscard]] tl::expected<const command*, std::string> resolve(const args& argv,
                                                                  bool authenticated) const;
  /// In name order.
  [[nodiscard]] const std::map<std::string, command>& all() const { return commands_; }

private:
  std::map<std::string, command> commands_; ///< by lower-case name
};

/// Upper-case ASCII, for comparing command words.
[[nodiscard]] std::string upper(std::string_view word);
/// Redis' "-ERR unknown command '<name>', with args beginning with: '<a1>' ..."
/// (at most 128 bytes of name and of arguments each, as Redis cuts them).
[[nodiscard]] std::string unknown_command_error(const args& argv);
/// Redis' "-ERR wrong number of arguments for '<name>' command".
[[nodiscard]] std::string arity_error(std::string_view name);

class server {
public:
  server(server_options opts, command_table commands);
  ~server();
  server(const server&) = delete;
  server& operator=(const server&) = delete;

  /// Binds and starts serving; the error says what could not be bound.
  [[nodiscard]] tl::expected<void, std::string> start();
  /// The bound port (useful with port 0).
  [[nodiscard]] std::uint16_t port() const;
  /// Closes the listening socket; connections in use carry on.
  void stop_accepting();
  /// Waits until every command read is answered and written, at most
  /// `deadline`; false when some were not.
  [[nodiscard]] bool wait_idle(std::chrono::milliseconds deadline);
  /// Closes every connection (pending commands are cancelled, their late
  /// answers dropped) and joins the I/O threads.
  void stop();

private:
  struct impl;
  std::unique_ptr<impl> impl_;
};

} // namespace nerve::http::resp
