// Scans of stored events: the members a scan finds are the ones nlohmann
// parses, and what the scan cannot take it says so.
#include <catch2/catch.hpp>

#include <random>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "actors/stored_event.hpp"

using namespace nerve::actors;
using json = nlohmann::json;

namespace {

/// The members of `text` as the scan finds them, each value parsed by nlohmann.
std::vector<std::pair<std::string, json>> scanned(const std::string& text, bool& ok) {
  std::vector<std::pair<std::string, json>> out;
  ok = stored::for_each_member(text, [&out](std::string_view name, std::string_view value) {
    auto n = stored::string_value({name.data() - 1, name.size() + 2});
    REQUIRE(n);
    out.emplace_back(*n, json::parse(value));
    return true;
  });
  return out;
}

/// A random JSON value of at most `depth` levels, with strings that need escapes.
json random_value(std::mt19937& rng, int depth) {
  static const std::vector<std::string> words
    = {"", "a", "data", "q\"uote", "back\\slash", "tab\t", "nl\n", "ü", "{[", "]}", ",:"};
  auto pick = [&rng](std::size_t n) {
    return std::uniform_int_distribution<std::size_t>{0, n - 1}(rng);
  };
  switch (depth <= 0 ? pick(4) : pick(6)) {
    case 0:
      return words[pick(words.size())];
    case 1:
      return static_cast<std::int64_t>(rng()) - (1LL << 31);
    case 2:
      return pick(2) == 0 ? json(nullptr) : json(pick(2) == 0);
    case 3:
      return 0.5 * static_cast<double>(pick(1000));
    case 4: {
      json a = json::array();
      for (std::size_t i = pick(4); i > 0; --i)
        a.push_back(random_value(rng, depth - 1));
      return a;
    }
    default: {
      json o = json::object();
      for (std::size_t i = pick(4); i > 0; --i)
        o[words[pick(words.size())]] = random_value(rng, depth - 1);
      return o;
    }
  }
}

} // namespace

TEST_CASE("a scan finds the members of a stored event as written", "[unit][actors]") {
  std::string ev
    = R"({"id":"e1","topic":"t.a","partition":3,"offset":42,"time":"2026-12-05T05:00:00.000001Z",)"
      R"("key":"k","type":"x","data":{"f":"v","g":"a \"quoted\" \\ word"}})";
  std::vector<std::pair<std::string, std::string>> got;
  REQUIRE(stored::for_each_member(ev, [&got](auto name, auto value) {
    got.emplace_back(std::string{name}, std::string{value});
    return true;
  }));
  REQUIRE(got.size() == 8);
  CHECK(got[0] == std::pair<std::string, std::string>{"id", R"("e1")"});
  CHECK(got[2] == std::pair<std::string, std::string>{"partition", "3"});
  CHECK(got[7].second == R"({"f":"v","g":"a \"quoted\" \\ word"})");
  CHECK(stored::unsigned_value(got[3].second) == 42u);
  CHECK(stored::string_value(got[4].second) == std::string{"2026-12-05T05:00:00.000001Z"});
  CHECK(stored::string_value(R"("a \"q\" \u00fc")") == std::string{"a \"q\" \xc3\xbc"});
}

TEST_CASE("a scan agrees with nlohmann on random objects, white space or not", "[unit][actors]") {
  std::mt19937 rng{20261205};
  for (int i = 0; i < 2000; ++i) {
    json o = json::object();
    for (int k = i % 5; k > 0; --k)
      o["m" + std::to_string(k)] = random_value(rng, 3);
    for (auto text : {o.dump(), o.dump(2)}) {
      bool ok = false;
      auto members = scanned(text, ok);
      REQUIRE(ok);
      json back = json::object();
      for (auto& [name, value] : members)
        back[name] = value;
      CHECK(back == o);
    }
  }
}

TEST_CASE("a scan refuses what is not one object", "[unit][actors]") {
  for (std::string bad : {"", "[]", "\"s\"", "{", "{\"a\":1", "{\"a\" 1}", "{\"a\":}", "{\"a\":1,}",
                          "{\"a\":1} x", "{\"a\":\"open}", "{\"a\":[1,2}", "{a:1}"}) {
    INFO(bad);
    CHECK_FALSE(stored::for_each_member(bad, [](auto, auto) { return true; }));
  }
  CHECK(stored::for_each_member(" { } ", [](auto, auto) { return true; }));
  CHECK_FALSE(stored::unsigned_value("-1"));
  CHECK_FALSE(stored::unsigned_value("1.5"));
  CHECK_FALSE(stored::unsigned_value("18446744073709551616"));
  CHECK_FALSE(stored::string_value("12"));
}

TEST_CASE("append_quoted writes any bytes as a JSON string", "[unit][actors]") {
  for (std::string v :
       {std::string{"acked"}, std::string{""}, std::string{"a\"b"}, std::string{"back\\slash"},
        std::string{"line\nbreak\t"}, std::string{"gr\xc3\xbcn"}, std::string{"\x01\x1f"}}) {
    std::string out = "[";
    stored::append_quoted(out, v);
    out += ']';
    INFO(out);
    auto parsed = json::parse(out);
    CHECK(parsed[0].get<std::string>() == v);
  }
  // Not UTF-8: still valid JSON, the bad byte replaced.
  std::string out;
  stored::append_quoted(out, std::string{"bad\xff"});
  CHECK(json::parse(out).get<std::string>() == "bad\xef\xbf\xbd");
  // Plain text is copied as it is.
  out.clear();
  stored::append_quoted(out, "group:orders:w");
  CHECK(out == "\"group:orders:w\"");
}
