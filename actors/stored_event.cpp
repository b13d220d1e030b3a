// Scans of stored events' JSON text (stored_event.hpp).
#include "actors/stored_event.hpp"

#include <algorithm>
#include <charconv>
#include <cstring>

#include <nlohmann/json.hpp>

namespace nerve::actors::stored {

namespace {

/// One past the closing quote of the string whose opening quote is at `at`.
std::size_t skip_string(std::string_view text, std::size_t at) {
  // memchr to each quote (event bodies are mostly long strings; a loop over
  // their bytes was a fifth of a drain's time), then a look back for
  // backslashes: an odd number of them escapes it.
  const char* first = text.data() + at + 1;
  const char* end = text.data() + text.size();
  for (const char* p = first; p < end;) {
    auto q = static_cast<const char*>(std::memchr(p, '"', static_cast<std::size_t>(end - p)));
    if (q == nullptr)
      break;
    std::size_t slashes = 0;
    for (auto b = q; b > first && b[-1] == '\\'; --b)
      ++slashes;
    if (slashes % 2 == 0)
      return static_cast<std::size_t>(q - text.data()) + 1;
    p = q + 1;
  }
  return std::string_view::npos;
}

} // namespace

std::size_t skip_value(std::string_view text, std::size_t at) {
  at = detail::skip_space(text, at);
  if (at >= text.size())
    return std::string_view::npos;
  char c = text[at];
  if (c == '"')
    return skip_string(text, at);
  if (c != '{' && c != '[') {
    // A number or a literal: up to the byte that ends it.
    auto start = at;
    while (at < text.size() && text[at] != ',' && text[at] != '}' && text[at] != ']'
           && text[at] != ':' && text[at] != '"' && !detail::is_space(text[at]))
      ++at;
    return at == start ? std::string_view::npos : at;
  }
  // An object or array: match brackets, skipping strings (which may hold
  // any). Deeper than stored events nest (max_json_depth) is not taken.
  char open[128];
  std::size_t depth = 0;
  for (; at < text.size(); ++at) {
    c = text[at];
    if (c == '"') {
      at = skip_string(text, at);
      if (at == std::string_view::npos)
        return at;
      --at;
    } else if (c == '{' || c == '[') {
      if (depth == sizeof open)
        return std::string_view::npos;
      open[depth++] = c == '{' ? '}' : ']';
    } else if (c == '}' || c == ']') {
      if (open[--depth] != c)
        return std::string_view::npos;
      if (depth == 0)
        return at + 1;
    }
  }
  return std::string_view::npos;
}

std::optional<std::string> string_value(std::string_view raw) {
  if (raw.size() < 2 || raw.front() != '"' || raw.back() != '"')
    return std::nullopt;
  auto inner = raw.substr(1, raw.size() - 2);
  if (inner.find('\\') == std::string_view::npos)
    return std::string{inner};
  auto j = nlohmann::json::parse(raw, nullptr, false);
  if (!j.is_string())
    return std::nullopt;
  return j.get<std::string>();
}

void append_quoted(std::string& out, std::string_view v) {
  bool plain = std::all_of(v.begin(), v.end(), [](unsigned char c) {
    return c >= 0x20 && c < 0x7f && c != '"' && c != '\\';
  });
  if (!plain) {
    out += nlohmann::json(std::string{v})
             .dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
    return;
  }
  out += '"';
  out += v;
  out += '"';
}

std::optional<std::uint64_t> unsigned_value(std::string_view raw) {
  std::uint64_t n = 0;
  auto [end, ec] = std::from_chars(raw.data(), raw.data() + raw.size(), n);
  if (ec != std::errc{} || end != raw.data() + raw.size())
    return std::nullopt;
  return n;
}

} // namespace nerve::actors::stored
