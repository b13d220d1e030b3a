// Redis' glob matcher: a port of stringmatchlen() (Redis 7, util.c) to
// string_view, case-sensitive only. Reads never go past either view, where
// Redis relies on the NUL after its strings.
#include "persistence/glob.hpp"

#include <cstddef>
#include <utility>

namespace nerve::persistence {

namespace {

/// How deep `*` may nest before the match gives up (Redis 7.2's bound).
constexpr int nesting_max = 1000;

/// A byte as Redis' `int c = p[0]` reads it: char is signed on x86 and ARM
/// Linux alike there, so range bounds above 0x7f compare as negative.
int as_signed(char c) {
  return static_cast<signed char>(c);
}

/// One class `[...]` at `p` (after the `[`) against byte `c`; moves `p`
/// past the class, or to the pattern's last byte when it stays open.
bool match_class(std::string_view pattern, std::size_t& p, char c) {
  const bool negated = p < pattern.size() && pattern[p] == '^';
  if (negated)
    ++p;
  bool matched = false;
  for (;;) {
    const std::size_t left = pattern.size() - p;
    if (left == 0) {
      --p; // open to the end: the class ends at the last byte
      break;
    }
    if (pattern[p] == '\\' && left >= 2) {
      ++p;
      matched = matched || pattern[p] == c;
    } else if (pattern[p] == ']') {
      break;
    } else if (left >= 3 && pattern[p + 1] == '-') {
      int start = as_signed(pattern[p]);
      int end = as_signed(pattern[p + 2]);
      if (start > end)
        std::swap(start, end);
      const int ci = as_signed(c);
      matched = matched || (ci >= start && ci <= end);
      p += 2;
    } else {
      matched = matched || pattern[p] == c;
    }
    ++p;
  }
  return negated ? !matched : matched;
}

/// stringmatchlen_impl(): `skip_longer` is set once a `*` found that the
/// rest of the pattern matches nowhere in the rest of the text, so no
/// earlier `*` need try a longer match either.
bool match_from(std::string_view pattern, std::string_view text, bool& skip_longer, int nesting) {
  if (nesting > nesting_max)
    return false;
  std::size_t p = 0;
  std::size_t t = 0;
  while (p < pattern.size() && t < text.size()) {
    switch (pattern[p]) {
      case '*': {
        while (p + 1 < pattern.size() && pattern[p + 1] == '*')
          ++p;
        if (p + 1 == pattern.size())
          return true;
        for (; t < text.size(); ++t) {
          if (match_from(pattern.substr(p + 1), text.substr(t), skip_longer, nesting + 1))
            return true;
          if (skip_longer)
            return false;
        }
        skip_longer = true;
        return false;
      }
      case '?':
        ++t;
        break;
      case '[':
        ++p;
        if (!match_class(pattern, p, text[t]))
          return false;
        ++t;
        break;
      case '\\':
        if (pattern.size() - p >= 2)
          ++p;
        [[fallthrough]];
      default:
        if (pattern[p] != text[t])
          return false;
        ++t;
        break;
    }
    ++p;
    if (t == text.size()) {
      while (p < pattern.size() && pattern[p] == '*')
        ++p;
      break;
    }
  }
  return p == pattern.size() && t == text.size();
}

} // namespace

bool glob_match(std::string_view pattern, std::string_view text) {
  bool skip_longer = false;
  return match_from(pattern, text, skip_longer, 0);
}

} // namespace nerve::persistence
