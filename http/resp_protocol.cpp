// The pure part of the Redis protocol listener: the reply encoder, the
// command table and the request reader (hiredis' reader with nerve's object
// functions, and inline commands). No sockets: resp_server.cpp serves
// connections with them; tests/fuzz/resp_request.cpp feeds them any bytes.
// The only translation unit that includes hiredis.
#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <new>

#include <hiredis/read.h>

#include "http/resp_reader.hpp"
#include "http/resp_server.hpp"

namespace nerve::http::resp {

// -- reply ------------------------------------------------------------------------

namespace {

void header(std::string& out, char type, std::size_t n) {
  out += type;
  out += std::to_string(n);
  out += "\r\n";
}

/// Redis' text of a double: "inf", "-inf", "nan", else 17 significant digits.
std::string double_text(double v) {
  if (std::isinf(v))
    return v > 0 ? "inf" : "-inf";
  if (std::isnan(v))
    return "nan";
  char buf[64];
  auto n = std::snprintf(buf, sizeof buf, "%.17g", v);
  return std::string(buf, static_cast<std::size_t>(n));
}

} // namespace

reply& reply::simple(std::string_view text) {
  out_ += '+';
  out_.append(text);
  out_ += "\r\n";
  return *this;
}

reply& reply::error(std::string_view text) {
  out_ += '-';
  for (char c : text)
    out_ += c == '\r' || c == '\n' ? ' ' : c;
  out_ += "\r\n";
  return *this;
}

reply& reply::integer(std::int64_t value) {
  out_ += ':';
  out_ += std::to_string(value);
  out_ += "\r\n";
  return *this;
}

reply& reply::bulk(std::string_view bytes) {
  header(out_, '$', bytes.size());
  out_.append(bytes);
  out_ += "\r\n";
  return *this;
}

reply& reply::verbatim(std::string_view text) {
  if (proto_ == protocol::resp2)
    return bulk(text);
  header(out_, '=', text.size() + 4);
  out_ += "txt:";
  out_.append(text);
  out_ += "\r\n";
  return *this;
}

reply& reply::null() {
  out_ += proto_ == protocol::resp3 ? "_\r\n" : "$-1\r\n";
  return *this;
}

reply& reply::null_array() {
  out_ += proto_ == protocol::resp3 ? "_\r\n" : "*-1\r\n";
  return *this;
}

reply& reply::array(std::size_t elements) {
  header(out_, '*', elements);
  return *this;
}

reply& reply::map(std::size_t pairs) {
  if (proto_ == protocol::resp3)
    header(out_, '%', pairs);
  else
    header(out_, '*', pairs * 2);
  return *this;
}

reply& reply::set(std::size_t elements) {
  header(out_, proto_ == protocol::resp3 ? '~' : '*', elements);
  return *this;
}

reply& reply::real(double value) {
  auto text = double_text(value);
  if (proto_ == protocol::resp2)
    return bulk(text);
  out_ += ',';
  out_ += text;
  out_ += "\r\n";
  return *this;
}

reply& reply::boolean(bool value) {
  if (proto_ == protocol::resp2)
    return integer(value ? 1 : 0);
  out_ += value ? "#t\r\n" : "#f\r\n";
  return *this;
}

// -- the command table -----------------------------------------------------------

std::string upper(std::string_view word) {
  std::string out{word};
  for (auto& c : out)
    c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  return out;
}

namespace {

std::string lower(std::string_view word) {
  std::string out{word};
  for (auto& c : out)
    c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

bool arity_ok(int arity, std::size_t words) {
  auto n = static_cast<long long>(words);
  return arity >= 0 ? n == arity : n >= -arity;
}

/// The subcommand of `parent` that `word` names, any case.
const command* find_subcommand(const command& parent, std::string_view word) {
  auto wanted = lower(word);
  for (auto& sub : parent.subcommands) {
    auto bar = sub.name.find('|');
    if (sub.name.compare(bar == std::string::npos ? 0 : bar + 1, std::string::npos, wanted) == 0)
      return &sub;
  }
  return nullptr;
}

} // namespace

void command_table::add(command c) {
  auto key = lower(c.name);
  commands_.insert_or_assign(std::move(key), std::move(c));
}

const command* command_table::find(std::string_view name) const {
  auto it = commands_.find(lower(name));
  return it == commands_.end() ? nullptr : &it->second;
}

tl::expected<const command*, std::string> command_table::resolve(const args& argv,
                                                                 bool authenticated) const {
  auto fail = [](std::string text) { return tl::make_unexpected(std::move(text)); };
  const command* cmd = argv.empty() ? nullptr : find(argv[0]);
  if (cmd == nullptr)
    return fail(unknown_command_error(argv));
  if (!arity_ok(cmd->arity, argv.size()))
    return fail(arity_error(cmd->name));
  if (!authenticated && !cmd->no_auth)
    return fail("NOAUTH Authentication required.");
  if (cmd->subcommands.empty() || (argv.size() < 2 && cmd->run))
    return cmd;
  if (argv.size() < 2)
    return fail(arity_error(cmd->name));
  const command* sub = find_subcommand(*cmd, argv[1]);
  if (sub == nullptr)
    return fail("ERR unknown subcommand '" + argv[1].substr(0, 128) + "'. Try " + upper(cmd->name)
                + " HELP.");
  if (!arity_ok(sub->arity, argv.size()))
    return fail(arity_error(sub->name));
  return sub;
}

std::string unknown_command_error(const args& argv) {
  // As Redis 7 words it: each argument quoted and followed by a space, at
  // most 128 bytes of them in all; the name cut at 128 bytes.
  std::string listed;
  for (std::size_t j = 1; j < argv.size() && listed.size() < 128; ++j) {
    auto room = 128 - listed.size();
    listed += '\'';
    listed += argv[j].substr(0, room);
    listed += "' ";
  }
  auto name = argv.empty() ? std::string{} : argv[0].substr(0, 128);
  return "ERR unknown command '" + name + "', with args beginning with: " + listed;
}

std::string arity_error(std::string_view name) {
  return "ERR wrong number of arguments for '" + std::string{name} + "' command";
}

// -- the request reader ----------------------------------------------------------

namespace {

/// The command hiredis' reader is building, through the object functions
/// below: the reader only ever holds one array of bulk strings.
struct parse_state {
  args argv;
  std::size_t bytes = 0;        ///< the arguments' lengths, plus per_argument_bytes each
  std::size_t max_bytes = 0;    ///< the limit for this command
  bool unauthenticated = false; ///< read before AUTH, when a token is set
  std::string error;            ///< why an object function refused
};

/// Arrays before AUTH hold at most this many words (Redis' own limit).
constexpr int unauthenticated_words_max = 10;

parse_state& state_of(const redisReadTask* task) {
  return *static_cast<parse_state*>(task->privdata);
}

void* refuse_item(const redisReadTask* task, char type) {
  auto& ps = state_of(task);
  ps.error = std::string{"expected '$', got '"} + type + "'";
  return nullptr;
}

void* create_array(const redisReadTask* task, int elements) {
  auto& ps = state_of(task);
  if (task->parent != nullptr)
    return refuse_item(task, '*');
  if (ps.unauthenticated && elements > unauthenticated_words_max) {
    ps.error = "unauthenticated multibulk length";
    return nullptr;
  }
  if (static_cast<std::size_t>(elements) > ps.max_bytes / per_argument_bytes) {
    ps.error = ps.unauthenticated ? "unauthenticated bulk length" : "too big request";
    return nullptr;
  }
  ps.argv.clear();
  ps.argv.reserve(std::min(elements, 64));
  ps.bytes = 0;
  return &ps;
}

void* create_string(const redisReadTask* task, char* bytes, std::size_t len) {
  auto& ps = state_of(task);
  if (task->parent == nullptr || task->type != REDIS_REPLY_STRING)
    return refuse_item(task, task->type == REDIS_REPLY_ERROR ? '-' : '+');
  // Checked here too: a command whose bytes came in one read is never
  // seen incomplete (read_array's check).
  if (ps.bytes + len + per_argument_bytes > ps.max_bytes) {
    ps.error = ps.unauthenticated ? "unauthenticated bulk length" : "too big request";
    return nullptr;
  }
  ps.argv.emplace_back(bytes, len);
  ps.bytes += len + per_argument_bytes;
  return &ps;
}

void* create_integer(const redisReadTask* task, long long) {
  return refuse_item(task, ':');
}

void* create_nil(const redisReadTask* task) {
  auto& ps = state_of(task);
  if (task->parent != nullptr) {
    ps.error = "invalid bulk length";
    return nullptr;
  }
  ps.argv.clear(); // "*-1": an empty command, ignored as Redis does
  return &ps;
}

void free_object(void*) {
  // Objects are the connection's parse_state: nothing to free.
}

redisReplyObjectFunctions object_functions
  = {create_string, create_array, create_integer, create_nil, free_object};

/// A protocol error of hiredis' reader in Redis' words, where Redis has some.
std::string protocol_error_text(const redisReader& r, const parse_state& ps) {
  if (!ps.error.empty())
    return ps.error;
  std::string_view why{r.errstr};
  if (why == "Bad multi-bulk length" || why == "Multi-bulk length out of range")
    return "invalid multibulk length";
  if (why == "Bad bulk string length" || why == "Bulk string length out of range")
    return "invalid bulk length";
  // "Protocol error, got "X" as reply type byte": an array element that is not '$'.
  constexpr std::string_view type_byte = "Protocol error, got \"";
  if (why.substr(0, type_byte.size()) == type_byte && why.size() > type_byte.size() + 1
      && why[type_byte.size() + 1] == '"')
    return std::string{"expected '$', got '"} + why[type_byte.size()] + "'";
  return lower(why);
}

struct reader_deleter {
  void operator()(redisReader* r) const { redisReaderFree(r); }
};
using reader_ptr = std::unique_ptr<redisReader, reader_deleter>;

} // namespace

struct request_reader::state {
  parse_state ps;
  reader_ptr reader;
  std::string in;         ///< bytes not yet handed to a parser
  std::size_t in_pos = 0; ///< of in, what inline parsing consumed
  bool in_resp = false;   ///< hiredis' reader holds the start of the input

  void new_reader() {
    reader.reset(redisReaderCreateWithFunctions(&object_functions));
    if (!reader)
      throw std::bad_alloc{};
    reader->privdata = &ps;
  }
};

request_reader::request_reader() : s_(std::make_unique<state>()) {
  s_->new_reader();
}

request_reader::~request_reader() = default;

void request_reader::feed(const char* data, std::size_t size) {
  if (s_->in_pos > 0) {
    s_->in.erase(0, s_->in_pos);
    s_->in_pos = 0;
  }
  s_->in.append(data, size);
}

bool request_reader::partial() const {
  return s_->in_resp || s_->in_pos < s_->in.size();
}

request_reader::result request_reader::next(const read_limits& limits) {
  auto& s = *s_;
  if (!s.in_resp) {
    if (s.in_pos == s.in.size())
      return {};
    if (s.in[s.in_pos] != '*')
      return read_inline(limits);
    // An array: hiredis' reader takes it from here.
    s.in_resp = true;
  }
  if (s.in_pos < s.in.size()) {
    redisReaderFeed(s.reader.get(), s.in.data() + s.in_pos, s.in.size() - s.in_pos);
    s.in.clear();
    s.in_pos = 0;
  }
  return read_array(limits);
}

request_reader::result request_reader::read_array(const read_limits& limits) {
  auto& s = *s_;
  auto* r = s.reader.get();
  auto& ps = s.ps;
  ps.max_bytes = limits.request_bytes;
  ps.unauthenticated = limits.unauthenticated;
  void* done = nullptr;
  if (redisReaderGetReply(r, &done) != REDIS_OK)
    return {status::error, {}, protocol_error_text(*r, ps)};
  if (done == nullptr) {
    if (ps.bytes + (r->len - r->pos) > ps.max_bytes)
      return {
        status::error, {}, ps.unauthenticated ? "unauthenticated bulk length" : "too big request"};
    return {};
  }
  auto argv = std::move(ps.argv);
  ps.argv.clear();
  ps.bytes = 0;
  if (r->pos == r->len) {
    s.in_resp = false; // the next bytes may be an inline command
  } else if (r->buf[r->pos] != '*') {
    // An inline command (or garbage) follows: take the rest back.
    s.in.assign(r->buf + r->pos, r->len - r->pos);
    s.in_pos = 0;
    s.new_reader();
    s.in_resp = false;
  }
  return {status::command, std::move(argv), {}};
}

/// One inline command (words on a line, as typed in telnet): split on
/// spaces and tabs only; quotes are not interpreted (docs/redis.md).
request_reader::result request_reader::read_inline(const read_limits& limits) {
  auto& s = *s_;
  const char* start = s.in.data() + s.in_pos;
  auto avail = s.in.size() - s.in_pos;
  const auto* nl = static_cast<const char*>(std::memchr(start, '\n', avail));
  auto limit = std::min(limits.inline_bytes, limits.request_bytes);
  if (nl == nullptr) {
    if (avail > limit)
      return {status::error, {}, "too big inline request"};
    return {};
  }
  std::string_view line{start, static_cast<std::size_t>(nl - start)};
  s.in_pos += line.size() + 1;
  if (line.size() > limit)
    return {status::error, {}, "too big inline request"};
  if (!line.empty() && line.back() == '\r')
    line.remove_suffix(1);
  args argv;
  std::size_t i = 0;
  while (i < line.size()) {
    while (i < line.size() && (line[i] == ' ' || line[i] == '\t'))
      ++i;
    auto begin = i;
    while (i < line.size() && line[i] != ' ' && line[i] != '\t')
      ++i;
    if (i > begin)
      argv.emplace_back(line.substr(begin, i - begin));
  }
  return {status::command, std::move(argv), {}};
}

} // namespace nerve::http::resp
