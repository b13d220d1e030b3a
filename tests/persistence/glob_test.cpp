// Redis' glob patterns: nerve's matcher against what a real redis-server
// (7.0.15, Debian 12) answered for KEYS, pattern by pattern, over binary keys.
#include <catch2/catch.hpp>

#include <algorithm>
#include <string>
#include <string_view>
#include <vector>

#include "persistence/event_log.hpp"
#include "persistence/glob.hpp"
#include "persistence/keyspace.hpp"
#include "tests/support/temp_dir.hpp"

using namespace nerve::persistence;
using namespace std::string_view_literals;

namespace {

struct glob_case {
  std::string_view pattern;
  std::vector<std::string_view> matches; ///< of `table_keys`, in that order
};

/// The keys stored for the table (tests/persistence/redis_glob_table.py's KEYS).
const std::vector<std::string_view> table_keys = {"hello"sv,
                                                  "hallo"sv,
                                                  "hillo"sv,
                                                  "hllo"sv,
                                                  "heeello"sv,
                                                  "h*llo"sv,
                                                  "h]llo"sv,
                                                  "h-llo"sv,
                                                  "a"sv,
                                                  "b"sv,
                                                  "c"sv,
                                                  "-"sv,
                                                  "]"sv,
                                                  "["sv,
                                                  "^"sv,
                                                  "!"sv,
                                                  "?"sv,
                                                  "*"sv,
                                                  "\\"sv,
                                                  "abc"sv,
                                                  "abc\\"sv,
                                                  "ab"sv,
                                                  "axbxc"sv,
                                                  "x"sv,
                                                  "xx"sv,
                                                  ""sv,
                                                  "\x00"
                                                  ""sv,
                                                  "a\x00"
                                                  "b"sv,
                                                  "\xff"
                                                  ""sv,
                                                  "\xc3"
                                                  "\xa9"
                                                  ""sv};

/// KEYS <pattern> as redis-server 7.0.15 answered it: the output of
/// tests/persistence/redis_glob_table.py (run it again to check or extend).
const std::vector<glob_case> redis_table = {
  {"*"sv,
   {"hello"sv,
    "hallo"sv,
    "hillo"sv,
    "hllo"sv,
    "heeello"sv,
    "h*llo"sv,
    "h]llo"sv,
    "h-llo"sv,
    "a"sv,
    "b"sv,
    "c"sv,
    "-"sv,
    "]"sv,
    "["sv,
    "^"sv,
    "!"sv,
    "?"sv,
    "*"sv,
    "\\"sv,
    "abc"sv,
    "abc\\"sv,
    "ab"sv,
    "axbxc"sv,
    "x"sv,
    "xx"sv,
    ""sv,
    "\x00"
    ""sv,
    "a\x00"
    "b"sv,
    "\xff"
    ""sv,
    "\xc3"
    "\xa9"
    ""sv}},
  {"**"sv,
   {"hello"sv,
    "hallo"sv,
    "hillo"sv,
    "hllo"sv,
    "heeello"sv,
    "h*llo"sv,
    "h]llo"sv,
    "h-llo"sv,
    "a"sv,
    "b"sv,
    "c"sv,
    "-"sv,
    "]"sv,
    "["sv,
    "^"sv,
    "!"sv,
    "?"sv,
    "*"sv,
    "\\"sv,
    "abc"sv,
    "abc\\"sv,
    "ab"sv,
    "axbxc"sv,
    "x"sv,
    "xx"sv,
    "\x00"
    ""sv,
    "a\x00"
    "b"sv,
    "\xff"
    ""sv,
    "\xc3"
    "\xa9"
    ""sv}},
  {""sv, {""sv}},
  {"h?llo"sv, {"hello"sv, "hallo"sv, "hillo"sv, "h*llo"sv, "h]llo"sv, "h-llo"sv}},
  {"h*llo"sv,
   {"hello"sv, "hallo"sv, "hillo"sv, "hllo"sv, "heeello"sv, "h*llo"sv, "h]llo"sv, "h-llo"sv}},
  {"h[ae]llo"sv, {"hello"sv, "hallo"sv}},
  {"h[^e]llo"sv, {"hallo"sv, "hillo"sv, "h*llo"sv, "h]llo"sv, "h-llo"sv}},
  {"h[a-i]llo"sv, {"hello"sv, "hallo"sv, "hillo"sv}},
  {"h[i-a]llo"sv, {"hello"sv, "hallo"sv, "hillo"sv}},
  {"h\\*llo"sv, {"h*llo"sv}},
  {"h[\\]]llo"sv, {"h]llo"sv}},
  {"h[]]llo"sv, {}},
  {"[a-]"sv, {"a"sv, "]"sv, "^"sv}},
  {"[-a]"sv, {"a"sv, "-"sv}},
  {"[]"sv, {}},
  {"["sv, {}},
  {"[^"sv,
   {"a"sv, "b"sv, "c"sv, "-"sv, "]"sv, "["sv, "^"sv, "!"sv, "?"sv, "*"sv, "\\"sv, "x"sv,
    "\x00"
    ""sv,
    "\xff"
    ""sv}},
  {"[^]"sv,
   {"a"sv, "b"sv, "c"sv, "-"sv, "]"sv, "["sv, "^"sv, "!"sv, "?"sv, "*"sv, "\\"sv, "x"sv,
    "\x00"
    ""sv,
    "\xff"
    ""sv}},
  {"abc\\"sv, {"abc\\"sv}},
  {"a[bc"sv, {"ab"sv}},
  {"*a*b*c"sv, {"abc"sv, "axbxc"sv}},
  {"?"sv,
   {"a"sv, "b"sv, "c"sv, "-"sv, "]"sv, "["sv, "^"sv, "!"sv, "?"sv, "*"sv, "\\"sv, "x"sv,
    "\x00"
    ""sv,
    "\xff"
    ""sv}},
  {"\\"sv, {"\\"sv}},
  {"\\\\"sv, {"\\"sv}},
  {"[\\"sv, {"\\"sv}},
  {"[a-c"sv, {"a"sv, "b"sv, "c"sv}},
  {"x*"sv, {"x"sv, "xx"sv}},
  {"*x"sv, {"x"sv, "xx"sv}},
  {"[!a]"sv, {"a"sv, "!"sv}},
  {"a**b"sv,
   {"ab"sv, "a\x00"
            "b"sv}},
  {"[a\\-c]"sv, {"a"sv, "c"sv, "-"sv}},
  {"\\?"sv, {"?"sv}},
  {"[*]"sv, {"*"sv}},
  {"[?]"sv, {"?"sv}},
  {"a?b"sv,
   {"a\x00"
    "b"sv}},
  {"[\x00"
   "-a]"sv,
   {"a"sv, "-"sv, "]"sv, "["sv, "^"sv, "!"sv, "?"sv, "*"sv, "\\"sv,
    "\x00"
    ""sv}},
  {"[a-\xff"
   "]"sv,
   {"a"sv, "-"sv, "]"sv, "["sv, "^"sv, "!"sv, "?"sv, "*"sv, "\\"sv,
    "\x00"
    ""sv,
    "\xff"
    ""sv}},
  {"\xff"
   ""sv,
   {"\xff"
    ""sv}},
  {"[\xc3"
   "]*"sv,
   {"\xc3"
    "\xa9"
    ""sv}},
  {"h[^a-e]llo"sv, {"hillo"sv, "h*llo"sv, "h]llo"sv, "h-llo"sv}},
  {"[^^]"sv,
   {"a"sv, "b"sv, "c"sv, "-"sv, "]"sv, "["sv, "!"sv, "?"sv, "*"sv, "\\"sv, "x"sv,
    "\x00"
    ""sv,
    "\xff"
    ""sv}},
  {"*\\"sv, {"\\"sv, "abc\\"sv}},
  {"?*"sv,
   {"hello"sv,
    "hallo"sv,
    "hillo"sv,
    "hllo"sv,
    "heeello"sv,
    "h*llo"sv,
    "h]llo"sv,
    "h-llo"sv,
    "a"sv,
    "b"sv,
    "c"sv,
    "-"sv,
    "]"sv,
    "["sv,
    "^"sv,
    "!"sv,
    "?"sv,
    "*"sv,
    "\\"sv,
    "abc"sv,
    "abc\\"sv,
    "ab"sv,
    "axbxc"sv,
    "x"sv,
    "xx"sv,
    "\x00"
    ""sv,
    "a\x00"
    "b"sv,
    "\xff"
    ""sv,
    "\xc3"
    "\xa9"
    ""sv}},
  {"*?*?"sv,
   {"hello"sv, "hallo"sv, "hillo"sv, "hllo"sv, "heeello"sv, "h*llo"sv, "h]llo"sv, "h-llo"sv,
    "abc"sv, "abc\\"sv, "ab"sv, "axbxc"sv, "xx"sv,
    "a\x00"
    "b"sv,
    "\xc3"
    "\xa9"
    ""sv}},
  {"[[]"sv, {"["sv}},
  {"[\\[]"sv, {"["sv}},
  {"h\\[ae]llo"sv, {}},
  {"\\a"sv, {"a"sv}},
};

} // namespace

TEST_CASE("the glob matcher agrees with redis-server on every case of the table",
          "[unit][persistence][keyspace]") {
  for (const auto& c : redis_table) {
    for (auto key : table_keys) {
      const bool redis = std::find(c.matches.begin(), c.matches.end(), key) != c.matches.end();
      // A lone "*" is KEYS' "everything", also the empty key, which the
      // matcher itself (like Redis' stringmatchlen) does not match.
      if (c.pattern == "*" && key.empty())
        continue;
      INFO("pattern '" << c.pattern << "', key '" << key << "'");
      CHECK(glob_match(c.pattern, key) == redis);
    }
  }
}

TEST_CASE("KEYS answers the table's patterns as redis-server does",
          "[unit][persistence][keyspace]") {
  nerve::test::temp_dir dir;
  options o;
  o.path = dir.sub("db");
  o.fsync = nerve::config::fsync_policy::never;
  auto log = event_log::open(o);
  REQUIRE(log);
  keyspace ks{**log};
  for (auto key : table_keys)
    REQUIRE(ks.hset(key, {{"f", "v"}}));
  for (const auto& c : redis_table) {
    INFO("pattern '" << c.pattern << "'");
    auto got = ks.keys(c.pattern);
    REQUIRE(got);
    std::vector<std::string> want(c.matches.begin(), c.matches.end());
    std::sort(want.begin(), want.end());
    std::sort(got->begin(), got->end());
    CHECK(*got == want);
  }
}

TEST_CASE("the glob matcher handles long texts and deep patterns",
          "[unit][persistence][keyspace]") {
  const std::string text(10000, 'a');
  CHECK(glob_match("*a*a*a*a*a*b", text) == false); // returns at once: no backtracking blow-up
  CHECK(glob_match("*a*a*a*a*a*", text));
  CHECK(glob_match(std::string(5000, '?'), std::string(5000, 'z')));
  CHECK_FALSE(glob_match(std::string(5000, '?'), std::string(4999, 'z')));
  std::string deep;
  for (int i = 0; i < 1200; ++i)
    deep += "*a";
  CHECK_FALSE(glob_match(deep, text)); // past 1000 nested '*': no match, as Redis 7.2
  std::string shallow;
  for (int i = 0; i < 900; ++i)
    shallow += "*a";
  CHECK(glob_match(shallow, text));
}
