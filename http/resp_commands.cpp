// The commands of the Redis protocol listener: replies and error texts as
// Redis 7.0 gives them (checked against redis-server by
// tests/blackbox/test_resp.py), and XADD publishing through the node (the
// keyspace commands are in resp_keyspace.cpp).
#include "http/resp_commands.hpp"

#include <algorithm>
#include <cctype>
#include <charconv>
#include <limits>
#include <set>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include "actors/event_input.hpp"
#include "actors/tracing.hpp"
#include "http/resp_ids.hpp"

namespace nerve::http::resp {

namespace {

using steady = std::chrono::steady_clock;

/// Case-insensitive equality with an ASCII word.
bool is(std::string_view arg, std::string_view word) {
  return arg.size() == word.size()
         && std::equal(arg.begin(), arg.end(), word.begin(), [](char a, char b) {
              return std::tolower(static_cast<unsigned char>(a))
                     == std::tolower(static_cast<unsigned char>(b));
            });
}

void send_error(const responder& r, const std::string& text) {
  r.send(r.make().error(text));
}

void send_ok(const responder& r) {
  r.send(r.make().simple("OK"));
}

/// Client names and library names: printable ASCII without spaces, as Redis requires.
bool valid_client_name(std::string_view name) {
  return std::all_of(name.begin(), name.end(), [](char c) { return c >= '!' && c <= '~'; });
}

const char* const bad_client_name
  = "ERR Client names cannot contain spaces, newlines or special characters.";

/// Compares without returning early, so the time taken says nothing of
/// where a wrong password differs.
bool same_secret(std::string_view a, std::string_view b) {
  unsigned char diff = a.size() == b.size() ? 0 : 1;
  for (std::size_t i = 0; i < a.size(); ++i)
    diff |= static_cast<unsigned char>(a[i] ^ (i < b.size() ? b[i] : 0));
  return diff == 0;
}

const char* const wrongpass = "WRONGPASS invalid username-password pair or user is disabled.";

/// AUTH's check of a user and password against http.token (user `default`
/// only). With no token every client is authenticated already; Redis'
/// default user without a password then takes any password.
bool credentials_ok(const context& ctx, std::string_view user, std::string_view password) {
  if (!is(user, "default"))
    return false;
  const auto& token = ctx.options().token;
  return token.empty() || same_secret(password, token);
}

// -- connection commands -----------------------------------------------------------

void ping(context&, args&& a, responder r) {
  if (a.size() > 2)
    return send_error(r, arity_error("ping"));
  if (a.size() == 1)
    return r.send(r.make().simple("PONG"));
  r.send(r.make().bulk(a[1]));
}

void echo(context&, args&& a, responder r) {
  r.send(r.make().bulk(a[1]));
}

void auth(context& ctx, args&& a, responder r) {
  if (a.size() > 3)
    return send_error(r, "ERR syntax error");
  if (a.size() == 2 && ctx.options().token.empty())
    return send_error(r, "ERR AUTH <password> called without any password configured for the "
                         "default user. Are you sure your configuration is correct?");
  auto user = a.size() == 3 ? std::string_view{a[1]} : std::string_view{"default"};
  if (!credentials_ok(ctx, user, a.back()))
    return send_error(r, wrongpass);
  ctx.set_authenticated(true);
  send_ok(r);
}

void hello(context& ctx, args&& a, responder r) {
  auto proto = ctx.proto();
  std::size_t next = 1;
  if (a.size() >= 2) {
    auto version = parse_integer(a[1]);
    if (!version)
      return send_error(r, "ERR Protocol version is not an integer or out of range");
    if (*version < 2 || *version > 3)
      return send_error(r, "NOPROTO unsupported protocol version");
    proto = *version == 3 ? protocol::resp3 : protocol::resp2;
    next = 2;
  }
  const std::string* user = nullptr;
  const std::string* password = nullptr;
  const std::string* name = nullptr;
  for (auto j = next; j < a.size(); ++j) {
    auto more = a.size() - 1 - j;
    if (is(a[j], "AUTH") && more >= 2) {
      user = &a[j + 1];
      password = &a[j + 2];
      j += 2;
    } else if (is(a[j], "SETNAME") && more >= 1) {
      if (!valid_client_name(a[j + 1]))
        return send_error(r, bad_client_name);
      name = &a[j + 1];
      ++j;
    } else {
      return send_error(r, "ERR Syntax error in HELLO option '" + a[j].substr(0, 128) + "'");
    }
  }
  if (user != nullptr) {
    if (!credentials_ok(ctx, *user, *password))
      return send_error(r, wrongpass);
    ctx.set_authenticated(true);
  }
  if (!ctx.authenticated())
    return send_error(r, "NOAUTH HELLO must be called with the client already authenticated, "
                         "otherwise the HELLO AUTH <user> <pass> option can be used to "
                         "authenticate the client and select the RESP protocol version at the "
                         "same time");
  if (name != nullptr)
    ctx.set_name(*name);
  ctx.set_proto(proto);
  // In the protocol just chosen, as Redis answers.
  reply out{proto};
  out.map(7);
  out.bulk("server").bulk("nerve");
  out.bulk("version").bulk(redis_compatible_version);
  out.bulk("proto").integer(proto == protocol::resp3 ? 3 : 2);
  out.bulk("id").integer(static_cast<std::int64_t>(ctx.client_id()));
  out.bulk("mode").bulk("standalone");
  out.bulk("role").bulk("master");
  out.bulk("modules").array(0);
  r.send(std::move(out));
}

void select_db(context&, args&& a, responder r) {
  auto db = parse_integer(a[1]);
  if (!db || *db < std::numeric_limits<int>::min() || *db > std::numeric_limits<int>::max())
    return send_error(r, "ERR value is not an integer or out of range");
  if (*db != 0)
    return send_error(r, "ERR DB index is out of range");
  send_ok(r);
}

void quit(context&, args&&, responder r) {
  r.send_then_close(r.make().simple("OK"));
}

// -- CLIENT ------------------------------------------------------------------------

/// One line of CLIENT LIST, in Redis 7's fields (those nerve has no use
/// for at their idle values).
std::string client_line(const client_view& c) {
  return "id=" + std::to_string(c.id) + " addr=" + c.peer + " laddr=" + c.local + " fd=-1 name="
         + c.name + " age=" + std::to_string(c.age_s) + " idle=" + std::to_string(c.idle_s)
         + " flags=N db=0 sub=0 psub=0 ssub=0 multi=-1 qbuf=0 qbuf-free=0 argv-mem=0 "
           "multi-mem=0 rbs=0 rbp=0 obl=0 oll=0 omem=0 tot-mem=0 events=r cmd="
         + c.last_command
         + " user=default redir=-1 resp=" + (c.proto == protocol::resp3 ? "3" : "2")
         + " lib-name=" + c.lib_name + " lib-ver=" + c.lib_ver + "\n";
}

void client_list(context& ctx, args&& a, responder r) {
  auto clients = ctx.clients();
  std::set<std::uint64_t> ids;
  bool none = false;
  for (std::size_t j = 2; j < a.size(); ++j) {
    if (is(a[j], "TYPE") && j + 1 < a.size()) {
      auto& type = a[j + 1];
      if (!is(type, "normal") && !is(type, "master") && !is(type, "replica") && !is(type, "slave")
          && !is(type, "pubsub"))
        return send_error(r, "ERR Unknown client type '" + type.substr(0, 128) + "'");
      none = !is(type, "normal");
      ++j;
    } else if (is(a[j], "ID") && j + 1 < a.size()) {
      for (++j; j < a.size(); ++j) {
        auto id = parse_integer(a[j]);
        if (!id || *id <= 0)
          return send_error(r, "ERR Invalid client ID");
        ids.insert(static_cast<std::uint64_t>(*id));
      }
    } else {
      return send_error(r, "ERR syntax error");
    }
  }
  std::string text;
  for (auto& c : clients)
    if (!none && (ids.empty() || ids.count(c.id) != 0))
      text += client_line(c);
  r.send(r.make().verbatim(text));
}

void client_setinfo(context& ctx, args&& a, responder r) {
  auto& value = a[3];
  bool name = is(a[2], "LIB-NAME");
  if (!name && !is(a[2], "LIB-VER"))
    return send_error(r, "ERR Unrecognized option '" + a[2].substr(0, 128) + "'");
  if (!valid_client_name(value))
    return send_error(r, std::string{"ERR "} + (name ? "lib-name" : "lib-ver")
                           + " cannot contain spaces, newlines or special characters.");
  if (name)
    ctx.set_lib(value, "");
  else
    ctx.set_lib("", value);
  send_ok(r);
}

void help(const responder& r, std::initializer_list<const char*> lines) {
  auto out = r.make();
  out.array(lines.size());
  for (auto* line : lines)
    out.simple(line);
  r.send(std::move(out));
}

command client_command() {
  command c{"client", -2, false, {"slow"}, 0, 0, 0, nullptr, {}};
  c.subcommands = {
    {"client|id",
     2,
     false,
     {"fast"},
     0,
     0,
     0,
     [](context& ctx, args&&, responder r) {
       r.send(r.make().integer(static_cast<std::int64_t>(ctx.client_id())));
     },
     {}},
    {"client|getname",
     2,
     false,
     {"fast"},
     0,
     0,
     0,
     [](context& ctx, args&&, responder r) {
       auto name = ctx.view().name;
       if (name.empty())
         return r.send(r.make().null());
       r.send(r.make().bulk(name));
     },
     {}},
    {"client|setname",
     3,
     false,
     {"fast"},
     0,
     0,
     0,
     [](context& ctx, args&& a, responder r) {
       if (!valid_client_name(a[2]))
         return send_error(r, bad_client_name);
       ctx.set_name(a[2]);
       send_ok(r);
     },
     {}},
    {"client|setinfo", 4, false, {"fast"}, 0, 0, 0, client_setinfo, {}},
    {"client|info",
     2,
     false,
     {"fast"},
     0,
     0,
     0,
     [](context& ctx, args&&, responder r) { r.send(r.make().verbatim(client_line(ctx.view()))); },
     {}},
    {"client|list", -2, false, {"slow"}, 0, 0, 0, client_list, {}},
    {"client|help",
     2,
     false,
     {"fast"},
     0,
     0,
     0,
     [](context&, args&&, responder r) {
       help(r,
            {"CLIENT <subcommand> [<arg> [value] [opt] ...]. Subcommands are:", "GETNAME",
             "    Return the name of the current connection.", "ID",
             "    Return the ID of the current connection.", "INFO",
             "    Return information about the current client connection.", "LIST [options ...]",
             "    Return information about client connections. Options:",
             "    * TYPE (NORMAL|MASTER|REPLICA|PUBSUB)", "      Return clients of specified type.",
             "    * ID <id> [<id> ...]", "      Return clients with the given ids.",
             "SETNAME <name>", "    Assign the name <name> to the current connection.",
             "SETINFO <LIB-NAME|LIB-VER> <value>", "    Set client library name or version.",
             "HELP", "    Prints this help."});
     },
     {}},
  };
  return c;
}

// -- COMMAND -----------------------------------------------------------------------

/// One command as COMMAND and COMMAND INFO describe it (Redis 7's ten fields).
void command_info(reply& out, const command& c) {
  out.array(10);
  out.bulk(c.name);
  out.integer(c.arity);
  out.set(c.flags.size());
  for (auto& f : c.flags)
    out.simple(f);
  out.integer(c.first_key).integer(c.last_key).integer(c.key_step);
  out.set(0);   // ACL categories
  out.set(0);   // tips
  out.array(0); // key specifications
  out.array(c.subcommands.size());
  for (auto& sub : c.subcommands)
    command_info(out, sub);
}

/// A command or, as "parent|sub", a subcommand of the table.
const command* lookup(const command_table& table, std::string_view name) {
  auto bar = name.find('|');
  const command* top = table.find(name.substr(0, bar));
  if (top == nullptr || bar == std::string_view::npos)
    return top;
  auto wanted = top->name + "|";
  for (auto& sub : top->subcommands)
    if (is(sub.name, wanted + std::string{name.substr(bar + 1)}))
      return &sub;
  return nullptr;
}

command command_command() {
  command c{"command",
            -1,
            false,
            {"loading", "stale"},
            0,
            0,
            0,
            [](context& ctx, args&&, responder r) {
              auto out = r.make();
              out.array(ctx.commands().all().size());
              for (auto& [name, cmd] : ctx.commands().all())
                command_info(out, cmd);
              r.send(std::move(out));
            },
            {}};
  c.subcommands = {
    {"command|count",
     2,
     false,
     {"loading", "stale"},
     0,
     0,
     0,
     [](context& ctx, args&&, responder r) {
       r.send(r.make().integer(static_cast<std::int64_t>(ctx.commands().all().size())));
     },
     {}},
    {"command|info",
     -2,
     false,
     {"loading", "stale"},
     0,
     0,
     0,
     [](context& ctx, args&& a, responder r) {
       const auto& table = ctx.commands();
       auto out = r.make();
       if (a.size() == 2) {
         out.array(table.all().size());
         for (auto& [name, cmd] : table.all())
           command_info(out, cmd);
         return r.send(std::move(out));
       }
       out.array(a.size() - 2);
       for (std::size_t j = 2; j < a.size(); ++j) {
         if (const command* cmd = lookup(table, a[j]))
           command_info(out, *cmd);
         else
           out.null();
       }
       r.send(std::move(out));
     },
     {}},
    // No documentation yet: an empty map, which redis-cli takes (it then
    // has no hints for the commands).
    {"command|docs",
     -2,
     false,
     {"loading", "stale"},
     0,
     0,
     0,
     [](context&, args&&, responder r) { r.send(r.make().map(0)); },
     {}},
    {"command|list",
     -2,
     false,
     {"loading", "stale"},
     0,
     0,
     0,
     [](context& ctx, args&&, responder r) {
       auto out = r.make();
       out.array(ctx.commands().all().size());
       for (auto& [name, cmd] : ctx.commands().all())
         out.bulk(name);
       r.send(std::move(out));
     },
     {}},
    {"command|help",
     2,
     false,
     {"loading", "stale"},
     0,
     0,
     0,
     [](context&, args&&, responder r) {
       help(r, {"COMMAND <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
                "(no subcommand)", "    Return details about all commands.", "COUNT",
                "    Return the total number of commands in this server.", "LIST",
                "    Return a list of all commands in this server.", "INFO [<command-name> ...]",
                "    Return details about multiple commands.",
                "    By default (no args) all commands are returned.", "DOCS [<command-name> ...]",
                "    Return documentation details about multiple commands (none yet).", "HELP",
                "    Prints this help."});
     },
     {}},
  };
  return c;
}

// -- INFO --------------------------------------------------------------------------

std::string info_text(context& ctx, const std::string& node_id, steady::time_point started,
                      const std::set<std::string>& sections) {
  auto all = sections.empty() || sections.count("all") != 0 || sections.count("default") != 0
             || sections.count("everything") != 0;
  auto wants = [&](const char* name) { return all || sections.count(name) != 0; };
  std::vector<std::string> parts;
  if (wants("server")) {
    auto uptime = std::chrono::duration_cast<std::chrono::seconds>(steady::now() - started).count();
    parts.push_back(
      std::string{"# Server\r\n"} + "redis_version:" + redis_compatible_version
      + "\r\nredis_mode:standalone\r\nnerve_version:" NERVE_VERSION "\r\nnerve_node_id:" + node_id
      + "\r\narch_bits:64\r\nprocess_id:" + std::to_string(::getpid()) + "\r\ntcp_port:"
      + std::to_string(ctx.port()) + "\r\nuptime_in_seconds:" + std::to_string(uptime)
      + "\r\nuptime_in_days:" + std::to_string(uptime / 86400) + "\r\n");
  }
  if (wants("clients"))
    parts.push_back("# Clients\r\nconnected_clients:" + std::to_string(ctx.connections())
                    + "\r\nmaxclients:" + std::to_string(ctx.options().max_connections) + "\r\n");
  if (wants("keyspace"))
    parts.emplace_back("# Keyspace\r\n");
  std::string text;
  for (auto& p : parts)
    text += (text.empty() ? "" : "\r\n") + p;
  return text;
}

// -- XADD --------------------------------------------------------------------------

/// Well-formed UTF-8 (what JSON strings hold): no overlong forms, no
/// surrogates, nothing past U+10FFFF.
bool valid_utf8(std::string_view s) {
  static constexpr std::uint32_t least[] = {0, 0x80, 0x800, 0x10000};
  std::size_t i = 0;
  while (i < s.size()) {
    auto c = static_cast<unsigned char>(s[i]);
    std::size_t more = 0;
    std::uint32_t cp = 0;
    if (c < 0x80) {
      ++i;
      continue;
    }
    if ((c & 0xE0) == 0xC0) {
      more = 1;
      cp = c & 0x1Fu;
    } else if ((c & 0xF0) == 0xE0) {
      more = 2;
      cp = c & 0x0Fu;
    } else if ((c & 0xF8) == 0xF0) {
      more = 3;
      cp = c & 0x07u;
    } else {
      return false;
    }
    if (more > s.size() - i - 1)
      return false;
    for (std::size_t k = 1; k <= more; ++k) {
      auto cc = static_cast<unsigned char>(s[i + k]);
      if ((cc & 0xC0) != 0x80)
        return false;
      cp = (cp << 6) | (cc & 0x3Fu);
    }
    if (cp < least[more] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
      return false;
    i += more + 1;
  }
  return true;
}

/// XADD's options before the id, as Redis parses them; MAXLEN, MINID and
/// LIMIT are checked and then left to retention.
struct xadd_request {
  bool nomkstream = false;
  std::size_t fields_at = 0; ///< index of the first field
};

std::optional<std::string> parse_xadd(const args& a, xadd_request& out) {
  bool approx = false;
  bool limit = false;
  bool trim = false;
  std::size_t i = 2;
  for (; i < a.size(); ++i) {
    auto more = a.size() - 1 - i;
    const auto& opt = a[i];
    if (opt == "*")
      break;
    if ((is(opt, "MAXLEN") || is(opt, "MINID")) && more >= 1) {
      bool maxlen = is(opt, "MAXLEN");
      trim = true;
      if ((a[i + 1] == "~" || a[i + 1] == "=") && more >= 2) {
        approx = a[i + 1] == "~";
        ++i;
      }
      const auto& threshold = a[i + 1];
      if (maxlen) {
        auto n = parse_integer(threshold);
        if (!n)
          return "ERR value is not an integer or out of range";
        if (*n < 0)
          return "ERR The MAXLEN argument must be >= 0.";
      } else if (!parse_id(threshold) && !parse_integer(threshold)) {
        return "ERR Invalid stream ID specified as stream command argument";
      }
      ++i;
    } else if (is(opt, "LIMIT") && more >= 1) {
      auto n = parse_integer(a[i + 1]);
      if (!n)
        return "ERR value is not an integer or out of range";
      if (*n < 0)
        return "ERR The LIMIT argument must be >= 0.";
      limit = true;
      ++i;
    } else if (is(opt, "NOMKSTREAM")) {
      out.nomkstream = true;
    } else {
      // Where Redis reads an explicit id: nerve gives every entry its own.
      return "ERR nerve assigns stream entry ids: use * as the id";
    }
  }
  if (limit && !trim)
    return "ERR syntax error, LIMIT cannot be used without specifying a trimming strategy";
  if (limit && !approx)
    return "ERR syntax error, LIMIT cannot be used without the special ~ option";
  out.fields_at = i + 1;
  if (i >= a.size() || a.size() - out.fields_at < 2 || (a.size() - out.fields_at) % 2 == 1)
    return arity_error("xadd");
  return std::nullopt;
}

/// The fragment of the event XADD publishes: a trace id, as every event
/// gets, and `data` = the fields as a JSON object of strings, in their
/// order (a field given twice keeps its first place and its last value).
std::optional<std::string> xadd_fragment(const args& a, std::size_t from) {
  nlohmann::ordered_json data = nlohmann::ordered_json::object();
  for (auto i = from; i + 1 < a.size(); i += 2) {
    if (!valid_utf8(a[i]) || !valid_utf8(a[i + 1]))
      return std::nullopt;
    data[a[i]] = a[i + 1];
  }
  return "\"trace_id\":\"" + actors::new_trace_id() + "\",\"data\":" + data.dump();
}

void answer_xadd(const responder& r, const actors::result<std::vector<actors::published>>& res) {
  if (!res)
    return send_error(r, error_text(res.error()));
  if (res->size() != 1)
    return send_error(r, "ERR the publish was answered for " + std::to_string(res->size())
                           + " events instead of 1");
  const auto& p = res->front();
  auto ms = static_cast<std::uint64_t>(std::max<std::int64_t>(0, p.time_us / 1000));
  auto id = encode_id(ms, p.partition, p.offset, p.partitions);
  if (!id)
    return send_error(r, "ERR the event was appended to " + p.topic + "/"
                           + std::to_string(p.partition) + " at offset " + std::to_string(p.offset)
                           + ", a place no stream entry id encodes");
  r.send(r.make().bulk(format_id(*id)));
}

/// Publishes; `then` runs once answered.
void publish_xadd(actors::node& node, const std::string& topic, actors::publish_item item,
                  const responder& r, const std::function<void()>& then) {
  std::vector<actors::publish_item> items;
  items.push_back(std::move(item));
  auto trace
    = actors::trace_publish(node.tracing(), items, topic, 0, "resp", actors::unix_ns_now());
  node.publish(
    topic, std::move(items),
    [r, then, trace, tracer = node.tracing()](actors::result<std::vector<actors::published>> res) {
      if (trace && res)
        actors::record_publish(*tracer, *trace, *res);
      answer_xadd(r, res);
      then();
    });
}

/// Publishes, or with NOMKSTREAM answers nil, as Redis does, when the stream
/// does not exist; `then` runs once answered.
void add_entry(actors::node& node, const std::string& topic, bool nomkstream,
               actors::publish_item item, const responder& r, std::function<void()> then) {
  if (!nomkstream)
    return publish_xadd(node, topic, std::move(item), r, then);
  node.topics([&node, topic, item = std::move(item), r, then = std::move(then)](
                actors::result<std::vector<actors::topic_view>> topics) mutable {
    if (!topics) {
      send_error(r, error_text(topics.error()));
      return then();
    }
    bool exists = std::any_of(topics->begin(), topics->end(),
                              [&](const actors::topic_view& t) { return t.name == topic; });
    if (!exists) {
      r.send(r.make().null());
      return then();
    }
    publish_xadd(node, topic, std::move(item), r, then);
  });
}

void xadd(actors::node& node, const xadd_gate& gate, context& ctx, args&& a, responder r) {
  xadd_request req;
  if (auto err = parse_xadd(a, req))
    return send_error(r, *err);
  const auto& topic = a[1];
  if (!actors::valid_topic(topic))
    return send_error(r, "ERR invalid stream name '" + topic.substr(0, 128)
                           + "': nerve streams are topics, [A-Za-z0-9_:-]+ tokens joined by "
                             "'.', at most 255 bytes");
  auto fragment = xadd_fragment(a, req.fields_at);
  if (!fragment)
    return send_error(r, "ERR nerve stores stream fields as JSON strings: field names and "
                         "values must be valid UTF-8");
  actors::publish_item item;
  item.fragment = std::move(*fragment);
  // WRONGTYPE, as Redis answers, when the name holds a hash.
  gate(ctx, topic, r,
       [&node, topic, nomkstream = req.nomkstream, item = std::move(item),
        r](std::function<void()> then) { add_entry(node, topic, nomkstream, item, r, then); });
}

} // namespace

/// A whole decimal integer, as Redis' string2ll takes it (no spaces, no '+').
std::optional<long long> parse_integer(std::string_view text) {
  long long v = 0;
  if (text.empty() || text.front() == '+')
    return std::nullopt;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
  if (ec != std::errc{} || end != text.data() + text.size())
    return std::nullopt;
  return v;
}

std::string error_text(const actors::error& e) {
  switch (e.code) {
    case actors::errc::overloaded:
    case actors::errc::unavailable:
      return "TRYAGAIN " + e.message;
    default:
      return "ERR " + e.message;
  }
}

server_options options_from(const config::config& cfg) {
  server_options opts;
  auto hp = config::split_host_port(cfg.resp.listen);
  if (hp) {
    opts.host = hp->first;
    opts.port = hp->second;
  }
  opts.max_connections = cfg.resp.max_connections;
  opts.max_request_bytes = cfg.resp.max_request_bytes;
  opts.read_timeout = cfg.http.read_timeout;
  opts.threads = cfg.resp.threads;
  opts.token = cfg.http.token;
  return opts;
}

command_table make_commands(actors::node& node, steady::time_point started) {
  command_table table;
  table.add({"ping", -1, false, {"fast", "stale"}, 0, 0, 0, ping, {}});
  table.add({"echo", 2, false, {"fast", "stale"}, 0, 0, 0, echo, {}});
  table.add(
    {"auth", -2, true, {"noscript", "loading", "stale", "fast", "no_auth"}, 0, 0, 0, auth, {}});
  table.add(
    {"hello", -1, true, {"noscript", "loading", "stale", "fast", "no_auth"}, 0, 0, 0, hello, {}});
  table.add({"select", 2, false, {"loading", "stale", "fast"}, 0, 0, 0, select_db, {}});
  table.add(
    {"quit", -1, true, {"noscript", "loading", "stale", "fast", "no_auth"}, 0, 0, 0, quit, {}});
  table.add(client_command());
  table.add(command_command());
  auto node_id = node.node_id();
  table.add({"info",
             -1,
             false,
             {"loading", "stale"},
             0,
             0,
             0,
             [node_id, started](context& ctx, args&& a, responder r) {
               std::set<std::string> sections;
               for (std::size_t j = 1; j < a.size(); ++j) {
                 std::string s = a[j];
                 std::transform(s.begin(), s.end(), s.begin(),
                                [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
                 sections.insert(std::move(s));
               }
               r.send(r.make().verbatim(info_text(ctx, node_id, started, sections)));
             },
             {}});
  auto keyspace = make_keyspace_commands(node);
  for (auto& c : keyspace.commands)
    table.add(std::move(c));
  table.add({"xadd",
             -5,
             false,
             {"write", "denyoom", "fast"},
             1,
             1,
             1,
             [&node, gate = std::move(keyspace.gate)](context& ctx, args&& a, responder r) {
               xadd(node, gate, ctx, std::move(a), r);
             },
             {}});
  add_stream_commands(table, node);
  return table;
}

} // namespace nerve::http::resp
