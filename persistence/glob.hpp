// Redis' glob patterns (KEYS, SCAN MATCH) over binary-safe byte strings.
#pragma once

#include <string_view>

namespace nerve::persistence {

/// Whether `text` matches `pattern` exactly as Redis 7's stringmatchlen()
/// decides it, byte for byte: `*` any run of bytes, `?` one byte, `[abc]`,
/// `[^abc]`, `[a-z]` (reversed ranges too) one byte of a class, `\x` the
/// byte x (also inside a class). Its quirks are kept, since clients see
/// them: a class left open ends at the pattern's end (`a[bc` matches "ab"),
/// `[a-]` is the range from 'a' to ']', range bounds compare as signed
/// chars (so `[a-\xff]` is `[\xff-a]`), and an empty text matches only the
/// empty pattern (`*` matches "" only where the caller treats a lone `*` as
/// "everything", as KEYS and SCAN do). A pattern with more than 1000
/// nested `*` matches nothing, as in Redis 7.2 (7.0 recursed without bound).
/// Neither fnmatch(3) (NUL-terminated, locale-dependent, its own rules for
/// open classes and escapes) nor any Debian package gives these rules.
[[nodiscard]] bool glob_match(std::string_view pattern, std::string_view text);

} // namespace nerve::persistence
