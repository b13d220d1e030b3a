// Depth-limited JSON parsing and publish-body validation.
#include "actors/event_input.hpp"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstring>
#include <ctime>
#include <iomanip>
#include <iterator>
#include <locale>
#include <map>
#include <optional>
#include <sstream>

// Part of x86-64: rapidjson scans strings 16 bytes at a time. The fuzz build
// (tests/fuzz) takes the scalar path: the SSE2 scans read up to 15 bytes past
// the text's end by design (aligned, never across a page), which
// AddressSanitizer reports.
#if defined(__SSE2__) && !defined(RAPIDJSON_SSE2) && !defined(NERVE_SCALAR_JSON)
#  define RAPIDJSON_SSE2
#endif
#include <rapidjson/memorystream.h>
#include <rapidjson/reader.h>

#include "config/config.hpp"
#include "persistence/ids.hpp"

namespace nerve::actors {

namespace {

using json = nlohmann::json;

/// nlohmann's DOM builder with a nesting limit and no exceptions.
class limited_sax : public nlohmann::detail::json_sax_dom_parser<json> {
public:
  using base = nlohmann::detail::json_sax_dom_parser<json>;

  limited_sax(json& root, std::size_t max_depth) : base(root, false), max_depth_(max_depth) {}

  bool start_object(std::size_t n) {
    if (++depth_ > max_depth_)
      return fail("nesting deeper than " + std::to_string(max_depth_) + " levels");
    return base::start_object(n);
  }
  bool end_object() {
    --depth_;
    return base::end_object();
  }
  bool start_array(std::size_t n) {
    if (++depth_ > max_depth_)
      return fail("nesting deeper than " + std::to_string(max_depth_) + " levels");
    return base::start_array(n);
  }
  bool end_array() {
    --depth_;
    return base::end_array();
  }
  bool number_float(json::number_float_t v, const std::string& s) {
    if (!std::isfinite(v))
      return fail("the number " + s + " is out of range");
    return base::number_float(v, s);
  }
  template <class Exception>
  bool parse_error(std::size_t, const std::string&, const Exception& ex) {
    std::string what = ex.what();
    // "[json.exception.parse_error.101] parse error at line 1, column 2: ..."
    auto pos = what.find("] ");
    return fail(pos == std::string::npos ? what : what.substr(pos + 2));
  }

  [[nodiscard]] const std::string& error() const { return error_; }

private:
  bool fail(std::string why) {
    if (error_.empty())
      error_ = std::move(why);
    return false;
  }

  std::size_t depth_ = 0;
  std::size_t max_depth_;
  std::string error_;
};

bool valid_trace_id(const std::string& s) {
  if (s.size() != 32 || s == std::string(32, '0'))
    return false;
  for (char c : s)
    if (!std::isdigit(static_cast<unsigned char>(c)) && !(c >= 'a' && c <= 'f'))
      return false;
  return true;
}

} // namespace

namespace {

const std::string kind_of_data_missing = "\"data\" is missing; an event carries its payload in "
                                         "\"data\" (any JSON value)";

/// What is wrong with member `name` of an event (not headers, not data), its
/// value given as a string (null: not a string); nothing when it is valid.
std::optional<std::string> member_problem(const std::string& name, const std::string* str,
                                          const std::string& topic) {
  auto sized = [str](std::size_t lo, std::size_t hi) {
    return str != nullptr && str->size() >= lo && str->size() <= hi;
  };
  if (name == "topic") {
    if (str == nullptr || *str != topic)
      return std::string{"\"topic\" differs from the topic in the URL"};
  } else if (name == "id") {
    if (str == nullptr || !valid_event_id(*str))
      return std::string{"\"id\" must be 1 to 128 characters of A-Z a-z 0-9 - _ . : ~ @ + ="};
  } else if (name == "key") {
    if (!sized(1, 1024))
      return std::string{"\"key\" must be a string of 1 to 1024 bytes"};
  } else if (name == "type" || name == "source") {
    if (!sized(1, 255))
      return "\"" + name + "\" must be a string of 1 to 255 bytes";
  } else if (name == "correlation_id" || name == "causation_id") {
    if (!sized(1, 128))
      return "\"" + name + "\" must be a string of 1 to 128 bytes";
  } else if (name == "trace_id") {
    if (str == nullptr || !valid_trace_id(*str))
      return std::string{"\"trace_id\" must be 32 lowercase hex digits, not all zero"};
  } else {
    return "unknown field \"" + name.substr(0, 128)
           + "\"; allowed: id, key, type, source, correlation_id, causation_id, trace_id, "
             "headers, data";
  }
  return std::nullopt;
}

const std::string headers_shape = "\"headers\" must be an object of at most 64 strings";

/// What is wrong with one header (its value null when not a string).
std::optional<std::string> header_problem(const std::string& name, const std::string* value) {
  if (name.empty() || name.size() > 128 || value == nullptr || value->size() > 4096)
    return "header \"" + name.substr(0, 128)
           + "\" must have a name of 1 to 128 bytes and a string value of at most 4096 bytes";
  return std::nullopt;
}

/// Appends ,"name":text to a fragment (no comma first).
void append_member_text(std::string& out, std::string_view name, std::string_view text) {
  if (!out.empty())
    out += ',';
  out += '"';
  out += name;
  out += "\":";
  out += text;
}

void append_member(std::string& out, std::string_view name, const json& value) {
  append_member_text(out, name, value.dump());
}

// Refusals the DOM and the one-pass paths share.
const std::string not_an_object = "must be a JSON object with a \"data\" member";
const std::string body_shape = "the body must be an event object or an array of event objects";
const std::string empty_array = "the array of events is empty";

std::string too_many(std::size_t n, std::size_t max_events) {
  return "the array holds " + std::to_string(n) + " events; at most " + std::to_string(max_events)
         + " are allowed per request";
}

/// The members of an event's fragment, in the order events show them.
constexpr std::string_view fragment_members[]
  = {"type", "source", "correlation_id", "causation_id", "trace_id", "headers", "data"};
constexpr std::size_t trace_slot = 4; ///< the members before it are strings shown as given
constexpr std::size_t headers_slot = 5;
constexpr std::size_t data_slot = 6;

} // namespace

tl::expected<publish_item, std::string> event_from_json(const json& e, const std::string& topic,
                                                        const std::string& where) {
  if (!e.is_object())
    return tl::make_unexpected(where + not_an_object);
  publish_item item;
  for (auto& [name, value] : e.items()) {
    if (name == "data")
      continue;
    if (name == "headers") {
      if (!value.is_object() || value.size() > 64)
        return tl::make_unexpected(where + headers_shape);
      for (auto& [hname, hvalue] : value.items())
        if (auto bad = header_problem(
              hname, hvalue.is_string() ? &hvalue.get_ref<const std::string&>() : nullptr))
          return tl::make_unexpected(where + *bad);
      continue;
    }
    if (auto bad = member_problem(
          name, value.is_string() ? &value.get_ref<const std::string&>() : nullptr, topic))
      return tl::make_unexpected(where + *bad);
    if (name == "id")
      item.id = value.get<std::string>();
    else if (name == "key")
      item.key = value.get<std::string>();
    else if (name == "type")
      item.type = value.get<std::string>();
    else if (name == "source")
      item.source = value.get<std::string>();
  }
  if (!e.contains("data"))
    return tl::make_unexpected(where + kind_of_data_missing);
  for (std::size_t i = 0; i < trace_slot; ++i)
    if (auto it = e.find(fragment_members[i]); it != e.end())
      append_member(item.fragment, fragment_members[i], *it);
  if (auto it = e.find("trace_id"); it != e.end())
    append_member(item.fragment, "trace_id", *it);
  else
    append_member(item.fragment, "trace_id", json(new_trace_id()));
  if (auto it = e.find("headers"); it != e.end())
    append_member(item.fragment, "headers", *it);
  append_member(item.fragment, "data", e["data"]);
  return item;
}

tl::expected<json, std::string> parse_json(std::string_view text, std::size_t max_depth) {
  // nlohmann's lexer takes NUL for the end of input; in JSON it is never valid
  // outside a string, and inside one it must be escaped.
  if (auto nul = text.find('\0'); nul != std::string_view::npos)
    return tl::make_unexpected("a NUL byte at offset " + std::to_string(nul)
                               + " (raw control characters are not JSON)");
  json root;
  limited_sax sax{root, max_depth};
  bool ok = json::sax_parse(text.begin(), text.end(), &sax, json::input_format_t::json, true);
  if (!ok || sax.is_errored())
    return tl::make_unexpected(sax.error().empty() ? std::string{"invalid JSON"} : sax.error());
  return root;
}

namespace {

/// A char iterator for nlohmann's parser that tells its owner how far the
/// parser has read: what the SAX handler needs to find a value's bytes.
struct tracked_iterator {
  using iterator_category = std::forward_iterator_tag;
  using value_type = char;
  using difference_type = std::ptrdiff_t;
  using pointer = const char*;
  using reference = const char&;

  const char* at = nullptr;
  const char** seen = nullptr;

  reference operator*() const { return *at; }
  tracked_iterator& operator++() {
    *seen = ++at;
    return *this;
  }
  tracked_iterator operator++(int) {
    auto before = *this;
    ++*this;
    return before;
  }
  friend bool operator==(const tracked_iterator& a, const tracked_iterator& b) {
    return a.at == b.at;
  }
  friend bool operator!=(const tracked_iterator& a, const tracked_iterator& b) {
    return a.at != b.at;
  }
};

bool json_space(char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

/// `text` (valid JSON) without the line breaks and other white space
/// between its tokens.
std::string without_space(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  bool in_string = false;
  for (std::size_t i = 0; i < text.size(); ++i) {
    char c = text[i];
    if (in_string) {
      out += c;
      if (c == '\\' && i + 1 < text.size())
        out += text[++i];
      else if (c == '"')
        in_string = false;
    } else if (c == '"') {
      in_string = true;
      out += c;
    } else if (!json_space(c)) {
      out += c;
    }
  }
  return out;
}

/// Validates a publish body as nlohmann parses it, event by event, and
/// builds the items without a DOM. See events_from_text().
class publish_sax {
public:
  using number_integer_t = json::number_integer_t;
  using number_unsigned_t = json::number_unsigned_t;
  using number_float_t = json::number_float_t;
  using string_t = json::string_t;
  using binary_t = json::binary_t;

  publish_sax(std::string_view text, const char* const* seen, const std::string& topic,
              std::size_t max_depth, std::string_view trace_id)
    : text_(text), seen_(seen), topic_(topic), max_depth_(max_depth), trace_id_(trace_id) {}

  bool null() { return scalar(value_kind::literal, nullptr); }
  bool boolean(bool) { return scalar(value_kind::literal, nullptr); }
  bool number_integer(number_integer_t) { return scalar(value_kind::number, nullptr); }
  bool number_unsigned(number_unsigned_t) { return scalar(value_kind::number, nullptr); }
  bool number_float(number_float_t v, const string_t& s) {
    if (!std::isfinite(v))
      return fail_json("the number " + s + " is out of range");
    return scalar(value_kind::number, nullptr);
  }
  bool string(string_t& s) { return text_value(s); }
  /// A string value (rapidjson's handler passes its bytes without a copy).
  bool text_value(std::string_view s) { return scalar(value_kind::string, &s); }
  bool binary(binary_t&) { return scalar(value_kind::literal, nullptr); }

  bool start_object(std::size_t) { return open(true); }
  bool start_array(std::size_t) { return open(false); }
  bool end_object() { return close(value_kind::object); }
  bool end_array() { return close(value_kind::array); }

  bool key(string_t& k) { return key_text(k); }
  bool key_text(std::string_view k) {
    if (depth_ == event_depth_ && in_event_) {
      key_ = k;
      key_end_ = pos();
    } else if (in_headers_ && depth_ == event_depth_ + 1) {
      header_key_ = k;
    }
    return true;
  }

  template <class Exception>
  bool parse_error(std::size_t, const std::string&, const Exception& ex) {
    std::string what = ex.what();
    auto at = what.find("] ");
    return fail_json(at == std::string::npos ? what : what.substr(at + 2));
  }

  /// The items, or why not, once sax_parse() returned `parsed`.
  tl::expected<std::vector<publish_item>, body_error> finish(bool parsed, std::size_t max_events) {
    if (!parsed || !json_error_.empty())
      return tl::make_unexpected(
        body_error{true, json_error_.empty() ? std::string{"invalid JSON"} : json_error_});
    if (top_ != top_kind::object && top_ != top_kind::array)
      return tl::make_unexpected(body_error{false, body_shape});
    if (top_ == top_kind::array && elements_ == 0)
      return tl::make_unexpected(body_error{false, empty_array});
    if (top_ == top_kind::array && elements_ > max_events)
      return tl::make_unexpected(body_error{false, too_many(elements_, max_events)});
    if (!event_error_.empty())
      return tl::make_unexpected(body_error{false, event_error_});
    return std::move(items_);
  }

private:
  enum class value_kind { string, number, literal, object, array };
  enum class top_kind { none, object, array, scalar };

  /// An event member's last value: its bytes, and for strings the text.
  struct member {
    std::size_t begin = 0;
    std::size_t end = 0;
    bool seen = false;
  };

  [[nodiscard]] std::size_t pos() const { return static_cast<std::size_t>(*seen_ - text_.data()); }

  bool fail_json(std::string why) {
    if (json_error_.empty())
      json_error_ = std::move(why);
    return false;
  }

  /// Where the value after the key that ended at `key_end` begins.
  [[nodiscard]] std::size_t value_begin(std::size_t key_end) const {
    auto at = key_end;
    while (at < text_.size() && (json_space(text_[at]) || text_[at] == ':'))
      ++at;
    return at;
  }

  /// A number's end: the parser reads one character past it.
  [[nodiscard]] std::size_t number_end(std::size_t begin, std::size_t end) const {
    while (end > begin
           && std::string_view{"0123456789+-.eE"}.find(text_[end - 1]) == std::string_view::npos)
      --end;
    return end;
  }

  void begin_event() {
    in_event_ = true;
    item_ = publish_item{};
    for (auto& m : members_)
      m = member{};
    field_errors_.clear();
    headers_.clear();
  }

  bool scalar(value_kind kind, const std::string_view* str) {
    if (depth_ == 0) {
      top_ = top_kind::scalar;
      return true;
    }
    if (top_ == top_kind::array && depth_ == 1) {
      ++elements_;
      note_event_error(event_prefix(elements_ - 1) + not_an_object);
      return true;
    }
    if (in_event_ && depth_ == event_depth_) {
      auto begin = value_begin(key_end_);
      auto end = kind == value_kind::number ? number_end(begin, pos()) : pos();
      field(kind, str, begin, end);
    } else if (in_headers_ && depth_ == event_depth_ + 1) {
      headers_[header_key_]
        = str != nullptr ? std::optional<std::string>{std::string{*str}} : std::nullopt;
    }
    return true;
  }

  bool open(bool object) {
    if (++depth_ > max_depth_)
      return fail_json("nesting deeper than " + std::to_string(max_depth_) + " levels");
    if (depth_ == 1) {
      top_ = object ? top_kind::object : top_kind::array;
      if (object) {
        event_depth_ = 1;
        begin_event();
      }
      return true;
    }
    if (top_ == top_kind::array && depth_ == 2) {
      ++elements_;
      if (object) {
        event_depth_ = 2;
        begin_event();
      } else {
        note_event_error(event_prefix(elements_ - 1) + not_an_object);
      }
      return true;
    }
    if (in_event_ && depth_ == event_depth_ + 1) {
      // A member's value that is an object or array (key_ stays its name:
      // only keys at the event's own depth change it).
      container_begin_ = pos() - 1;
      in_headers_ = object && key_ == "headers";
      if (in_headers_)
        headers_.clear();
      return true;
    }
    if (in_headers_ && depth_ == event_depth_ + 2)
      headers_[header_key_] = std::nullopt; // a header value that is no string
    return true;
  }

  bool close(value_kind kind) {
    if (in_event_ && depth_ == event_depth_ + 1) {
      in_headers_ = false;
      field(kind, nullptr, container_begin_, pos());
    } else if (in_event_ && depth_ == event_depth_) {
      end_event();
    }
    --depth_;
    return true;
  }

  [[nodiscard]] std::string event_prefix(std::size_t index) const {
    return top_ == top_kind::array ? "event " + std::to_string(index) + ": " : std::string{};
  }

  void note_event_error(std::string why) {
    if (event_error_.empty())
      event_error_ = std::move(why);
  }

  /// The slot of a member that goes into the fragment, or -1.
  static int slot_of(const std::string& name) {
    for (std::size_t i = 0; i < std::size(fragment_members); ++i)
      if (name == fragment_members[i])
        return static_cast<int>(i);
    return -1;
  }

  /// Member key_ took a value: checked as the DOM checks it, the last value
  /// of a repeated member counting.
  void field(value_kind kind, const std::string_view* str, std::size_t begin, std::size_t end) {
    if (!event_error_.empty())
      return; // an earlier event failed: only the JSON itself is checked on
    auto slot = slot_of(key_);
    if (slot >= 0) {
      members_[static_cast<std::size_t>(slot)] = member{begin, end, true};
    }
    std::optional<std::string> bad;
    if (key_ == "data") {
      // any value
    } else if (key_ == "headers") {
      bad = headers_problem(kind);
    } else {
      std::string text{str != nullptr ? *str : std::string_view{}};
      bad = member_problem(key_, str != nullptr ? &text : nullptr, topic_);
      if (!bad && str != nullptr) {
        if (key_ == "id")
          item_.id = std::move(text);
        else if (key_ == "key")
          item_.key = std::move(text);
        else if (key_ == "type")
          item_.type = std::move(text);
        else if (key_ == "source")
          item_.source = std::move(text);
      }
    }
    if (bad)
      field_errors_[key_] = std::move(*bad);
    else
      field_errors_.erase(key_);
  }

  std::optional<std::string> headers_problem(value_kind kind) {
    if (kind != value_kind::object || headers_.size() > 64)
      return headers_shape;
    for (auto& [name, value] : headers_)
      if (auto bad = header_problem(name, value ? &*value : nullptr))
        return bad;
    json headers = json::object();
    for (auto& [name, value] : headers_)
      headers[name] = *value;
    headers_text_ = headers.dump(); // as the DOM wrote it: names sorted, each once
    return std::nullopt;
  }

  void end_event() {
    in_event_ = false;
    if (!event_error_.empty())
      return;
    // The prefix only for a refusal: built for every event, it was a string
    // (and an allocation) per event for nothing.
    const auto index = elements_ == 0 ? 0 : elements_ - 1;
    if (!field_errors_.empty())
      return note_event_error(event_prefix(index) + field_errors_.begin()->second);
    if (!members_[data_slot].seen)
      return note_event_error(event_prefix(index) + kind_of_data_missing);
    auto& fragment = item_.fragment;
    // Sized once: the members' bytes, their names and the separators
    // (grown by appends, a 256-byte event's fragment was reallocated 3 times).
    std::size_t size = headers_text_.size() + 96; // names, quotes, commas, a trace id
    for (const auto& m : members_)
      if (m.seen)
        size += m.end - m.begin + 16;
    fragment.reserve(size);
    for (std::size_t i = 0; i <= trace_slot; ++i)
      if (members_[i].seen)
        append_string_member(fragment, fragment_members[i], members_[i]);
    if (!members_[trace_slot].seen) {
      append_member_text(fragment, "trace_id", "\"");
      if (trace_id_.empty())
        persistence::append_new_trace_id(fragment);
      else
        fragment += trace_id_;
      fragment += '"';
    }
    if (members_[headers_slot].seen)
      append_member_text(fragment, "headers", headers_text_);
    const auto& d = members_[data_slot];
    auto data = text_.substr(d.begin, d.end - d.begin);
    // Two scans: find_first_of() calls memchr on "\r\n" for every byte.
    if (data.find('\n') == std::string_view::npos && data.find('\r') == std::string_view::npos)
      append_member_text(fragment, "data", data);
    else
      append_member_text(fragment, "data", without_space(data));
    items_.push_back(std::move(item_));
  }

  /// Appends a valid string member as stored: its bytes when they hold no
  /// escape (then they are what nlohmann would write), else re-escaped.
  void append_string_member(std::string& out, std::string_view name, const member& m) const {
    auto raw = text_.substr(m.begin, m.end - m.begin);
    if (raw.find('\\') == std::string_view::npos)
      return append_member_text(out, name, raw);
    append_member_text(out, name, json::parse(raw, nullptr, false).dump());
  }

  std::string_view text_;
  const char* const* seen_;
  const std::string& topic_;
  std::size_t max_depth_;
  std::string_view trace_id_; ///< for events without one; empty: a new one each
  std::size_t depth_ = 0;
  top_kind top_ = top_kind::none;
  std::size_t elements_ = 0;    // of a top-level array
  std::size_t event_depth_ = 1; // the depth inside an event object
  bool in_event_ = false;
  std::string key_;
  std::size_t key_end_ = 0;
  std::size_t container_begin_ = 0;
  bool in_headers_ = false;
  std::string header_key_;
  std::map<std::string, std::optional<std::string>> headers_;
  std::string headers_text_;
  publish_item item_;
  member members_[std::size(fragment_members)];
  std::map<std::string, std::string> field_errors_;
  std::string json_error_;
  std::string event_error_;
  std::vector<publish_item> items_;
};

/// Whether RapidJSON may read `text` without validating it byte by byte: all
/// ASCII (no UTF-8 to validate), and none of the bytes 0x1A-0x1F, which its
/// SSE2 string scan lets through unescaped (it tests for bytes up to 0x19;
/// the differential test below found it). Eight bytes a step.
bool fast_scannable(std::string_view text) {
  constexpr std::uint64_t high = 0x8080808080808080ULL;
  std::uint64_t bad = 0;
  auto check = [&bad](std::uint64_t word) {
    const auto low7 = word & ~high;
    const auto from_1a = low7 + 0x6666666666666666ULL; // high bit: byte >= 0x1A
    const auto from_20 = low7 + 0x6060606060606060ULL; // high bit: byte >= 0x20
    bad |= (word | (from_1a & ~from_20)) & high;
  };
  std::size_t i = 0;
  for (; i + 8 <= text.size(); i += 8) {
    std::uint64_t word = 0;
    std::memcpy(&word, text.data() + i, 8);
    check(word);
  }
  if (i < text.size()) {
    std::uint64_t word = 0x2020202020202020ULL; // spaces: neither test hits them
    std::memcpy(&word, text.data() + i, text.size() - i);
    check(word);
  }
  return bad == 0;
}

/// rapidjson's SAX calls, given to publish_sax with the position read so far.
/// A StringStream is copied while rapidjson reads a string or a number, and
/// the original moves past it only after the call: the position is then the
/// value's first byte, and its end is found here where publish_sax uses it
/// (an event's own members: depth 1, or 2 in an array of events).
template <class Stream>
struct rapid_handler {
  publish_sax& sax;
  const char** seen;
  std::string_view text;
  Stream& in;
  std::size_t depth = 0;

  static constexpr bool copied = rapidjson::StreamTraits<Stream>::copyOptimization != 0;

  void at() const { *seen = text.data() + in.Tell(); }

  /// The position after the string (`string`) or number read last.
  void after_token(bool string) {
    auto i = in.Tell();
    if (copied && depth <= 2)
      i = string ? string_end(i) : number_end(i);
    *seen = text.data() + i;
  }

  /// Past the closing quote of the (valid) string whose opening quote is at
  /// `i`: the first quote not escaped by an odd number of backslashes.
  [[nodiscard]] std::size_t string_end(std::size_t i) const {
    for (auto j = text.find('"', i + 1); j != std::string_view::npos; j = text.find('"', j + 1)) {
      std::size_t slashes = 0;
      while (text[j - 1 - slashes] == '\\')
        ++slashes;
      if (slashes % 2 == 0)
        return j + 1;
    }
    return text.size();
  }

  [[nodiscard]] std::size_t number_end(std::size_t i) const {
    while (i < text.size()
           && std::string_view{"0123456789+-.eE"}.find(text[i]) != std::string_view::npos)
      ++i;
    return i;
  }

  /// A decoded string holding a UTF-16 surrogate: rapidjson encodes a lone
  /// low surrogate escape (nlohmann refuses it) as the bytes ED B0..BF.
  static bool surrogate(const char* s, rapidjson::SizeType n) {
    for (const void* hit = std::memchr(s, '\xED', n); hit != nullptr;) {
      auto i = static_cast<std::size_t>(static_cast<const char*>(hit) - s);
      if (i + 1 < n && static_cast<unsigned char>(s[i + 1]) >= 0xA0)
        return true;
      hit = std::memchr(s + i + 1, '\xED', n - i - 1);
    }
    return false;
  }

  bool Null() { return at(), sax.null(); }
  bool Bool(bool b) { return at(), sax.boolean(b); }
  bool Int(int) { return number(); }
  bool Uint(unsigned) { return number(); }
  bool Int64(std::int64_t) { return number(); }
  bool Uint64(std::uint64_t) { return number(); }
  bool Double(double) { return number(); } // finite: rapidjson refuses a number too big
  bool RawNumber(const char*, rapidjson::SizeType, bool) { return number(); }
  bool String(const char* s, rapidjson::SizeType n, bool) {
    after_token(true);
    return !surrogate(s, n) && sax.text_value({s, n});
  }
  bool Key(const char* s, rapidjson::SizeType n, bool) {
    after_token(true);
    return !surrogate(s, n) && sax.key_text({s, n});
  }
  bool StartObject() { return ++depth, at(), sax.start_object(0); }
  bool EndObject(rapidjson::SizeType) { return --depth, at(), sax.end_object(); }
  bool StartArray() { return ++depth, at(), sax.start_array(0); }
  bool EndArray(rapidjson::SizeType) { return --depth, at(), sax.end_array(); }

private:
  bool number() { return after_token(false), sax.number_unsigned(0); }
};

} // namespace

tl::expected<std::vector<publish_item>, body_error>
events_from_text(const std::string& text, const std::string& topic, std::size_t max_events,
                 std::size_t max_depth, std::string_view trace_id) {
  if (auto nul = text.find('\0'); nul != std::string_view::npos)
    return tl::make_unexpected(body_error{true, "a NUL byte at offset " + std::to_string(nul)
                                                  + " (raw control characters are not JSON)"});
  {
    // rapidjson's reader validates a body several times faster than
    // nlohmann's lexer (docs/architecture.md, "Why these libraries"). What it
    // accepts, nlohmann accepts too (the JSONTestSuite test compares them);
    // a body it refuses is parsed again below, for nlohmann's error text.
    const char* seen = text.data();
    publish_sax sax{text, &seen, topic, max_depth, trace_id};
    // The reader's stack (strings on their way to the handler) grows with
    // the body: a thread keeps one reader for bodies up to 64 KiB, so a
    // small publish does not allocate it again each time.
    thread_local rapidjson::Reader kept;
    std::optional<rapidjson::Reader> own;
    auto& reader = text.size() <= (64U << 10) ? kept : own.emplace();
    rapidjson::ParseResult result;
    if (fast_scannable(text)) {
      // No UTF-8 to validate (as costly as the rest): strings are scanned
      // 16 bytes at a time. A StringStream ends at a NUL; text has none.
      rapidjson::StringStream in{text.c_str()};
      rapid_handler<rapidjson::StringStream> handler{sax, &seen, text, in};
      result = reader.Parse<rapidjson::kParseNoFlags>(in, handler);
    } else {
      rapidjson::MemoryStream in{text.data(), text.size()};
      rapid_handler<rapidjson::MemoryStream> handler{sax, &seen, text, in};
      result = reader.Parse<rapidjson::kParseValidateEncodingFlag>(in, handler);
    }
    if (!result.IsError())
      return sax.finish(true, max_events);
  }
  const char* seen = text.data();
  publish_sax sax{text, &seen, topic, max_depth, trace_id};
  tracked_iterator first{text.data(), &seen};
  tracked_iterator last{text.data() + text.size(), &seen};
  bool parsed = json::sax_parse(first, last, &sax, json::input_format_t::json, true);
  return sax.finish(parsed, max_events);
}

bool valid_topic(std::string_view t) {
  return config::valid_topic_name(t);
}

bool valid_event_id(std::string_view id) {
  if (id.empty() || id.size() > 128)
    return false;
  for (char c : id)
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' || c == '.'
          || c == ':' || c == '~' || c == '@' || c == '+' || c == '='))
      return false;
  return true;
}

tl::expected<std::vector<publish_item>, std::string>
events_from_body(const json& body, const std::string& topic, std::size_t max_events) {
  std::vector<publish_item> items;
  if (body.is_object()) {
    auto item = event_from_json(body, topic, "");
    if (!item)
      return tl::make_unexpected(item.error());
    items.push_back(std::move(*item));
    return items;
  }
  if (!body.is_array())
    return tl::make_unexpected(body_shape);
  if (body.empty())
    return tl::make_unexpected(empty_array);
  if (body.size() > max_events)
    return tl::make_unexpected(too_many(body.size(), max_events));
  items.reserve(body.size());
  for (std::size_t i = 0; i < body.size(); ++i) {
    auto item = event_from_json(body[i], topic, "event " + std::to_string(i) + ": ");
    if (!item)
      return tl::make_unexpected(item.error());
    items.push_back(std::move(*item));
  }
  return items;
}

namespace {

/// Reads "YYYY-MM-DDTHH:MM:SS" at the start of `text` into `tm` (ranges are
/// checked by the caller, as for get_time's); false when the text is laid
/// out otherwise. Every stored event's time is read this way on the delivery
/// paths, where an istringstream and get_time were a tenth of a drain's time.
bool canonical_date_time(const std::string& text, std::tm& tm) {
  static constexpr std::string_view layout = "dddd-dd-ddTdd:dd:dd";
  if (text.size() < layout.size())
    return false;
  for (std::size_t i = 0; i < layout.size(); ++i)
    if (layout[i] == 'd' ? !std::isdigit(static_cast<unsigned char>(text[i]))
                         : text[i] != layout[i])
      return false;
  auto number = [&text](std::size_t at, std::size_t digits) {
    int n = 0;
    for (std::size_t i = at; i < at + digits; ++i)
      n = n * 10 + (text[i] - '0');
    return n;
  };
  tm.tm_year = number(0, 4) - 1900;
  tm.tm_mon = number(5, 2) - 1;
  tm.tm_mday = number(8, 2);
  tm.tm_hour = number(11, 2);
  tm.tm_min = number(14, 2);
  tm.tm_sec = number(17, 2);
  return true;
}

/// Seconds since the epoch of the UTC date and time in `tm` (years 1970 to
/// 9999); nothing when it does not exist. Arithmetic, not timegm: glibc's
/// takes its time zone lock and converts back, and every pulled entry's time
/// is read this way (a queue's and a reply's, a few % of a drain).
std::optional<std::int64_t> utc_seconds(const std::tm& tm) {
  auto year = tm.tm_year + 1900;
  auto month = tm.tm_mon + 1;
  if (year < 1970 || year > 9999 || month < 1 || month > 12 || tm.tm_mday < 1 || tm.tm_hour > 23
      || tm.tm_min > 59 || tm.tm_sec > 59 || tm.tm_hour < 0 || tm.tm_min < 0 || tm.tm_sec < 0)
    return std::nullopt;
  bool leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
  static constexpr int days_in[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
  if (tm.tm_mday > days_in[month - 1] + (month == 2 && leap ? 1 : 0))
    return std::nullopt;
  // Days since 1970-01-01 of the civil date (years counted from March, so
  // the leap day ends a year).
  std::int64_t y = year - (month <= 2 ? 1 : 0);
  auto era = y / 400;
  auto yoe = y - era * 400;
  auto mp = (month + 9) % 12; // March 0 .. February 11
  auto doy = (153 * mp + 2) / 5 + tm.tm_mday - 1;
  auto doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
  auto days = era * 146097 + doe - 719468;
  return days * 86400 + tm.tm_hour * 3600 + tm.tm_min * 60 + tm.tm_sec;
}

} // namespace

tl::expected<std::int64_t, std::string> parse_time_arg(const std::string& text,
                                                       std::int64_t now_us) {
  auto bad = [&text]() {
    return tl::make_unexpected("time \"" + text.substr(0, 64)
                               + "\" is not RFC 3339 (2026-11-22T10:00:00Z) nor relative "
                                 "(now, -15m, -2h, -1d)");
  };
  if (text == "now")
    return now_us;
  if (!text.empty() && (text[0] == '-' || text[0] == '+')) {
    auto d = config::parse_duration(text.substr(1));
    constexpr std::int64_t century_ms = 100LL * 366 * 24 * 3600 * 1000;
    if (!d || d->count() > century_ms)
      return bad();
    auto us = static_cast<std::int64_t>(d->count()) * 1000;
    // Before 1970 holds nothing: such a start is the beginning of the log.
    return text[0] == '-' ? std::max<std::int64_t>(0, now_us - us) : now_us + us;
  }
  std::tm tm{};
  if (!canonical_date_time(text, tm)) {
    std::istringstream in{text};
    in.imbue(std::locale::classic());
    in >> std::get_time(&tm, "%Y-%m-%dT%H:%M:%S");
    if (in.fail())
      return bad();
  }
  if (text.size() < 20 || text.size() > 40)
    return bad();
  std::int64_t frac_us = 0;
  auto rest = text.substr(19);
  std::size_t at = 0;
  if (at < rest.size() && rest[at] == '.') {
    ++at;
    std::int64_t scale = 100000;
    std::size_t digits = 0;
    for (; at < rest.size() && std::isdigit(static_cast<unsigned char>(rest[at])); ++at, ++digits) {
      frac_us += (rest[at] - '0') * scale;
      scale /= 10;
    }
    if (digits == 0)
      return bad();
  }
  std::int64_t offset_s = 0;
  auto zone = rest.substr(at);
  if (zone == "Z" || zone == "z") {
    offset_s = 0;
  } else if (zone.size() == 6 && (zone[0] == '+' || zone[0] == '-') && zone[3] == ':'
             && std::isdigit(static_cast<unsigned char>(zone[1]))
             && std::isdigit(static_cast<unsigned char>(zone[2]))
             && std::isdigit(static_cast<unsigned char>(zone[4]))
             && std::isdigit(static_cast<unsigned char>(zone[5]))) {
    auto hours = (zone[1] - '0') * 10 + (zone[2] - '0');
    auto minutes = (zone[4] - '0') * 10 + (zone[5] - '0');
    if (hours > 23 || minutes > 59)
      return bad();
    offset_s = hours * 3600 + minutes * 60;
    if (zone[0] == '-')
      offset_s = -offset_s;
  } else {
    return bad();
  }
  auto secs = utc_seconds(tm);
  if (!secs)
    return bad(); // no such date or time (February 30, 24:00, before 1970)
  return (*secs - offset_s) * 1000000 + frac_us;
}

} // namespace nerve::actors
