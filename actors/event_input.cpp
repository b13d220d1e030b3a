// Depth-limited JSON parsing and publish-body validation.
#include "actors/event_input.hpp"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <ctime>
#include <iomanip>
#include <locale>
#include <sstream>

#include "config/config.hpp"

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

bool is_string_of(const json& v, std::size_t lo, std::size_t hi) {
  return v.is_string() && v.get_ref<const std::string&>().size() >= lo
         && v.get_ref<const std::string&>().size() <= hi;
}

bool valid_trace_id(const std::string& s) {
  if (s.size() != 32 || s == std::string(32, '0'))
    return false;
  for (char c : s)
    if (!std::isdigit(static_cast<unsigned char>(c)) && !(c >= 'a' && c <= 'f'))
      return false;
  return true;
}

void append_member(std::string& out, const char* name, const json& value) {
  if (!out.empty())
    out += ',';
  out += '"';
  out += name;
  out += "\":";
  out += value.dump();
}

} // namespace

tl::expected<publish_item, std::string> event_from_json(const json& e, const std::string& topic,
                                                        const std::string& where) {
  if (!e.is_object())
    return tl::make_unexpected(where + "must be a JSON object with a \"data\" member");
  publish_item item;
  for (auto& [name, value] : e.items()) {
    if (name == "topic") {
      if (value != topic)
        return tl::make_unexpected(where + "\"topic\" differs from the topic in the URL");
    } else if (name == "id") {
      if (!value.is_string() || !valid_event_id(value.get_ref<const std::string&>()))
        return tl::make_unexpected(
          where + "\"id\" must be 1 to 128 characters of A-Z a-z 0-9 - _ . : ~ @ + =");
      item.id = value.get<std::string>();
    } else if (name == "key") {
      if (!is_string_of(value, 1, 1024))
        return tl::make_unexpected(where + "\"key\" must be a string of 1 to 1024 bytes");
      item.key = value.get<std::string>();
    } else if (name == "type" || name == "source") {
      if (!is_string_of(value, 1, 255))
        return tl::make_unexpected(where + "\"" + name + "\" must be a string of 1 to 255 bytes");
    } else if (name == "correlation_id" || name == "causation_id") {
      if (!is_string_of(value, 1, 128))
        return tl::make_unexpected(where + "\"" + name + "\" must be a string of 1 to 128 bytes");
    } else if (name == "trace_id") {
      if (!value.is_string() || !valid_trace_id(value.get_ref<const std::string&>()))
        return tl::make_unexpected(where
                                   + "\"trace_id\" must be 32 lowercase hex digits, not all zero");
    } else if (name == "headers") {
      if (!value.is_object() || value.size() > 64)
        return tl::make_unexpected(where + "\"headers\" must be an object of at most 64 strings");
      for (auto& [hname, hvalue] : value.items())
        if (hname.empty() || hname.size() > 128 || !is_string_of(hvalue, 0, 4096))
          return tl::make_unexpected(where + "header \"" + hname.substr(0, 128)
                                     + "\" must have a name of 1 to 128 bytes and a string "
                                       "value of at most 4096 bytes");
    } else if (name != "data") {
      return tl::make_unexpected(where + "unknown field \"" + name.substr(0, 128)
                                 + "\"; allowed: id, key, type, source, correlation_id, "
                                   "causation_id, trace_id, headers, data");
    }
  }
  if (auto it = e.find("type"); it != e.end())
    item.type = it->get<std::string>();
  if (auto it = e.find("source"); it != e.end())
    item.source = it->get<std::string>();
  if (!e.contains("data"))
    return tl::make_unexpected(where
                               + "\"data\" is missing; an event carries its payload in "
                                 "\"data\" (any JSON value)");
  // Members in the order events are shown.
  for (const char* name : {"type", "source", "correlation_id", "causation_id"})
    if (auto it = e.find(name); it != e.end())
      append_member(item.fragment, name, *it);
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
    return tl::make_unexpected(std::string{"the body must be an event object or an array of "
                                           "event objects"});
  if (body.empty())
    return tl::make_unexpected(std::string{"the array of events is empty"});
  if (body.size() > max_events)
    return tl::make_unexpected("the array holds " + std::to_string(body.size())
                               + " events; at most " + std::to_string(max_events)
                               + " are allowed per request");
  items.reserve(body.size());
  for (std::size_t i = 0; i < body.size(); ++i) {
    auto item = event_from_json(body[i], topic, "event " + std::to_string(i) + ": ");
    if (!item)
      return tl::make_unexpected(item.error());
    items.push_back(std::move(*item));
  }
  return items;
}

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
  std::istringstream in{text};
  in.imbue(std::locale::classic());
  in >> std::get_time(&tm, "%Y-%m-%dT%H:%M:%S");
  if (in.fail() || text.size() < 20 || text.size() > 40)
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
  auto asked = tm;
  auto secs = timegm(&tm);
  // timegm normalizes (February 30 becomes March 2): a date that does not
  // come back unchanged does not exist.
  if (secs < 0 || tm.tm_year != asked.tm_year || tm.tm_mon != asked.tm_mon
      || tm.tm_mday != asked.tm_mday || tm.tm_hour != asked.tm_hour || tm.tm_min != asked.tm_min
      || tm.tm_sec != asked.tm_sec || tm.tm_year + 1900 > 9999)
    return bad();
  return (static_cast<std::int64_t>(secs) - offset_s) * 1000000 + frac_us;
}

} // namespace nerve::actors
