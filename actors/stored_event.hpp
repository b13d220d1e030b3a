// Reading members of a stored event's JSON text without building a DOM: the
// delivery paths (a partition's read-back, a pull queue, a Redis reply) want
// a few members of every event, and nlohmann's parse of the whole event was
// most of their time. nerve wrote the text, so a scan that finds where each
// value ends is enough; whatever the scan does not take, callers parse.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace nerve::actors::stored {

/// Where the JSON value starting at `at` (white space before it allowed)
/// ends, one past its last byte; npos when the text is cut short or not
/// JSON as far as the scan tells (it matches brackets and string quotes, it
/// does not check the spelling of numbers and literals).
[[nodiscard]] std::size_t skip_value(std::string_view text, std::size_t at);

/// Calls `f(name, value)` for each member of the JSON object `text`, in the
/// order written: `name` is the raw text between the name's quotes (escapes
/// kept), `value` the raw JSON text of the value. Stops when `f` returns
/// false. False when `text` is not an object as far as the scan tells.
template <class F>
[[nodiscard]] bool for_each_member(std::string_view text, F&& f);

/// The text of the JSON string `raw` (quotes included): its bytes when it
/// holds no escape, else as nlohmann decodes it; nullopt when not a string.
[[nodiscard]] std::optional<std::string> string_value(std::string_view raw);

/// Appends `v` as a JSON string: its bytes between quotes when none needs an
/// escape (names, ids and outcome words), else as nlohmann writes it, with
/// invalid UTF-8 replaced.
void append_quoted(std::string& out, std::string_view v);

/// The JSON number `raw` when it is a non-negative integer that fits.
[[nodiscard]] std::optional<std::uint64_t> unsigned_value(std::string_view raw);

// -- implementation -----------------------------------------------------------

namespace detail {

constexpr bool is_space(char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

inline std::size_t skip_space(std::string_view text, std::size_t at) {
  while (at < text.size() && is_space(text[at]))
    ++at;
  return at;
}

} // namespace detail

template <class F>
bool for_each_member(std::string_view text, F&& f) {
  auto at = detail::skip_space(text, 0);
  if (at >= text.size() || text[at] != '{')
    return false;
  at = detail::skip_space(text, at + 1);
  if (at < text.size() && text[at] == '}')
    return detail::skip_space(text, at + 1) == text.size();
  for (;;) {
    if (at >= text.size() || text[at] != '"')
      return false;
    auto name_end = skip_value(text, at);
    if (name_end == std::string_view::npos)
      return false;
    auto name = text.substr(at + 1, name_end - at - 2);
    at = detail::skip_space(text, name_end);
    if (at >= text.size() || text[at] != ':')
      return false;
    at = detail::skip_space(text, at + 1);
    auto value_end = skip_value(text, at);
    if (value_end == std::string_view::npos)
      return false;
    if (!f(name, text.substr(at, value_end - at)))
      return true;
    at = detail::skip_space(text, value_end);
    if (at >= text.size())
      return false;
    if (text[at] == '}')
      return detail::skip_space(text, at + 1) == text.size();
    if (text[at] != ',')
      return false;
    at = detail::skip_space(text, at + 1);
  }
}

} // namespace nerve::actors::stored
