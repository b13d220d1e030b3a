// Untrusted JSON: the depth limit, number range, and publish validation.
#include <catch2/catch.hpp>

#include <cstdlib>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <random>

#include "actors/event_input.hpp"

using namespace nerve::actors;

TEST_CASE("deep nesting is refused without exhausting the stack", "[unit][actors]") {
  std::string deep(100000, '[');
  auto r = parse_json(deep);
  REQUIRE_FALSE(r);
  CHECK(r.error().find("nesting deeper than 64") != std::string::npos);
  std::string ok = std::string(64, '[') + std::string(64, ']');
  CHECK(parse_json(ok));
  std::string too_deep = std::string(65, '[') + std::string(65, ']');
  CHECK_FALSE(parse_json(too_deep));
}

TEST_CASE("malformed JSON and non-finite numbers are refused", "[unit][actors]") {
  CHECK_FALSE(parse_json("{\"a\":"));
  CHECK_FALSE(parse_json("[1] [2]"));
  CHECK_FALSE(parse_json("1e999"));
  CHECK_FALSE(parse_json("\"\xff\""));
  CHECK_FALSE(parse_json("\"\\uD800\""));
  CHECK(parse_json("{\"data\":1.5e300}"));
}

TEST_CASE("publish bodies become items with a generated trace id", "[unit][actors]") {
  auto body = parse_json(R"({"id":"e-1","key":"k","type":"t","headers":{"h":"v"},"data":{"x":1}})");
  REQUIRE(body);
  auto items = events_from_body(*body, "orders", 10);
  REQUIRE(items);
  REQUIRE(items->size() == 1);
  auto& it = (*items)[0];
  CHECK(it.id == "e-1");
  CHECK(it.key == "k");
  CHECK(it.fragment.find("\"type\":\"t\"") == 0);
  CHECK(it.fragment.find("\"trace_id\":\"") != std::string::npos);
  CHECK(it.fragment.find("\"headers\":{\"h\":\"v\"},\"data\":{\"x\":1}") != std::string::npos);
}

TEST_CASE("bad events are refused with the field named", "[unit][actors]") {
  auto check = [](const char* text, const char* expected) {
    auto body = parse_json(text);
    REQUIRE(body);
    auto r = events_from_body(*body, "orders", 2);
    REQUIRE_FALSE(r);
    INFO(r.error());
    CHECK(r.error().find(expected) != std::string::npos);
  };
  check("{}", "\"data\" is missing");
  check("{\"data\":1,\"extra\":2}", "unknown field \"extra\"");
  check("{\"data\":1,\"id\":\"has space\"}", "\"id\"");
  check("{\"data\":1,\"id\":5}", "\"id\"");
  check("{\"data\":1,\"key\":\"\"}", "\"key\"");
  check("{\"data\":1,\"trace_id\":\"XYZ\"}", "\"trace_id\"");
  check("{\"data\":1,\"headers\":{\"a\":1}}", "header \"a\"");
  check("{\"data\":1,\"topic\":\"elsewhere\"}", "\"topic\" differs");
  check("[]", "empty");
  check("[{\"data\":1},{\"data\":2},{\"data\":3}]", "at most 2");
  check("[{\"data\":1},5]", "event 1:");
  check("42", "event object");
}

TEST_CASE("topic names and ids follow the contract", "[unit][actors]") {
  CHECK(valid_topic("orders.created"));
  CHECK(valid_topic("a-b_c.D9"));
  CHECK(valid_topic("group:orders:summarizer")); // ':' inside tokens (Redis-style names)
  CHECK(valid_topic("a:.b:c"));
  CHECK_FALSE(valid_topic("a:b c"));
  CHECK_FALSE(valid_topic(""));
  CHECK_FALSE(valid_topic(".a"));
  CHECK_FALSE(valid_topic("a..b"));
  CHECK_FALSE(valid_topic("a.*"));
  CHECK_FALSE(valid_topic(std::string(256, 'a')));
  CHECK(valid_topic(std::string(255, 'a')));
  CHECK(valid_event_id("0193a8c2-7c1e-7000-8000-000000000000"));
  CHECK_FALSE(valid_event_id("a/b"));
  CHECK_FALSE(valid_event_id(std::string(129, 'a')));
}

namespace {

/// The DOM path the streaming parser replaces: parse_json, then
/// events_from_body; the error says which step refused.
tl::expected<std::vector<publish_item>, body_error> through_dom(const std::string& text,
                                                                std::size_t max_events) {
  auto body = parse_json(text);
  if (!body)
    return tl::make_unexpected(body_error{true, body.error()});
  auto items = events_from_body(*body, "orders", max_events);
  if (!items)
    return tl::make_unexpected(body_error{false, items.error()});
  return std::move(*items);
}

/// An item's fragment as JSON, without the trace id when it was generated.
nlohmann::json fragment_json(const publish_item& item, bool keep_trace) {
  auto j = nlohmann::json::parse("{" + item.fragment + "}", nullptr, false);
  REQUIRE_FALSE(j.is_discarded());
  if (!keep_trace)
    j.erase("trace_id");
  return j;
}

/// events_from_text answers `text` as the DOM path does: the same error,
/// or the same items with a fragment that reads as the same JSON.
void same_as_dom(const std::string& text, std::size_t max_events = 3) {
  INFO(text.substr(0, 300));
  auto dom = through_dom(text, max_events);
  auto sax = events_from_text(text, "orders", max_events);
  REQUIRE(static_cast<bool>(dom) == static_cast<bool>(sax));
  if (!dom) {
    CHECK(sax.error().json == dom.error().json);
    CHECK(sax.error().message == dom.error().message);
    return;
  }
  REQUIRE(sax->size() == dom->size());
  const bool keep_trace = text.find("trace_id") != std::string::npos;
  for (std::size_t i = 0; i < dom->size(); ++i) {
    CHECK((*sax)[i].id == (*dom)[i].id);
    CHECK((*sax)[i].key == (*dom)[i].key);
    CHECK((*sax)[i].type == (*dom)[i].type);
    CHECK((*sax)[i].source == (*dom)[i].source);
    CHECK(fragment_json((*sax)[i], keep_trace) == fragment_json((*dom)[i], keep_trace));
    CHECK((*sax)[i].fragment.find('\n') == std::string::npos);
    CHECK((*sax)[i].fragment.find('\r') == std::string::npos);
  }
}

} // namespace

TEST_CASE("publish bodies parsed in one pass answer as the DOM path does", "[unit][actors]") {
  for (
    const char* text : {
      R"({"data":1})",
      R"({"data":{"b":1,"a":[1,2,{"c":null}]},"id":"x-1","key":"k","type":"t"})",
      R"({"type":"caf\u00e9","source":"s\"q","data":"x","correlation_id":"c","causation_id":"d"})",
      R"({"trace_id":"0123456789abcdef0123456789abcdef","data":[true,false,null]})",
      R"({"headers":{"b":"2","a":"1","a":"3"},"data":{}})",
      R"({"data":1,"data":2})",
      R"({"data" : 12 , "id" : "spaced" })",
      "{\"data\":\n{\n \"a\" :\t1,\r\n\"s\": \"x y\\n\"}\n}",
      R"({"data":-0.5e-3})",
      R"({"data":123456789012345678901234567890})",
      R"({"data":"\ud83d\ude00"})",
      R"([{"data":1},{"data":2,"key":"k2"},{"id":"i3","data":[[]]}])",
      R"({"topic":"orders","data":1})",
      // where rapidjson (the fast path) and nlohmann differ, nlohmann decides
      R"({"data":"\udc00"})",
      R"({"data":"\ud800"})",
      R"({"data":{"\udfff":1}})",
      R"({"id":"\udc00x","data":1})",
      "{\"data\":\"\xED\xA0\x80\"}",
      "\xEF\xBB\xBF{\"data\":1}",
      R"({"data":"a\u0000b"})",
      R"({"data":0e99999})",
      R"({"data":1.5e-400})",
      R"({"data":-1e400})",
      R"({"data":[1,2,]})",
      R"({"data":01})",
      // RapidJSON's SSE2 scan (16-byte steps once aligned) misses raw 0x1A-0x1F
      "{\"data\":\"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\x1f bbbbbbbbbbbbbbbb\"}",
      "{\"data\":{\"kkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkk\x1a\":1}}",
      "[{\"data\":1},{\"data\":\"cccccccccccccccccccccccccccccccccccccccc\x1e\"}]",
      // values whose ends the fast path finds itself (escaped quotes, backslashes)
      R"({"type":"a\\","source":"b\\\"c\\\\","data":"x\\\"y\\"})",
      R"({"data":"\\"})",
      R"({ "data" : "\"" , "key" : "k\\" })",
      R"([ {"data":-1.5E+3 } , {"data":"\"\\","id":"i"} ])",
      R"({"data":{"a":"\""},"type":"t"})",
      // refused, each for the first reason the DOM path gives
      R"({})",
      R"({"data":1,"extra":2,"id":"has space"})",
      R"({"id":"ok","id":"has space","data":1})",
      R"({"id":"has space","id":"ok","data":1})",
      R"({"data":1,"key":""})",
      R"({"data":1,"key":{"a":1}})",
      R"({"data":1,"type":["t"]})",
      R"({"data":1,"trace_id":"XYZ"})",
      R"({"data":1,"trace_id":"00000000000000000000000000000000"})",
      R"({"data":1,"headers":{"a":1}})",
      R"({"data":1,"headers":{"a":{"b":"c"}}})",
      R"({"data":1,"headers":["a"]})",
      R"({"data":1,"headers":"a"})",
      R"({"data":1,"headers":{"":"x"}})",
      R"({"data":1,"topic":"elsewhere"})",
      R"({"data":1,"topic":5})",
      R"([])",
      R"([{"data":1},{"data":2},{"data":3},{"data":4}])",
      R"([{"data":1},{"data":2},{"data":3},{"bad":4}])",
      R"([{"data":1},5])",
      R"([{"data":1},[{"data":2}]])",
      R"([{"data":1},{"id":"","data":2}])",
      R"([{"x":1},{"data":2}] x)",
      R"(42)",
      R"("text")",
      R"(null)",
      R"({"data":1e999})",
      R"({"data":1,)",
      "{\"data\":\"a\0b\"}",
      "",
      "   ",
    }) {
    same_as_dom(std::string{text, std::char_traits<char>::length(text)});
  }
  same_as_dom(std::string{"{\"data\":\"a\0b\"}", 13});
  // Headers: 64 distinct names pass, 65 do not; repeats count once.
  std::string many = R"({"data":1,"headers":{)";
  for (int i = 0; i < 65; ++i)
    many += (i ? "," : "") + ("\"h" + std::to_string(i % 64) + "\":\"v\"");
  same_as_dom(many + "}}");
  std::string too_many = R"({"data":1,"headers":{)";
  for (int i = 0; i < 65; ++i)
    too_many += (i ? "," : "") + ("\"h" + std::to_string(i) + "\":\"v\"");
  same_as_dom(too_many + "}}");
  // Deep data: the limit counts the event's own levels.
  same_as_dom(R"({"data":)" + std::string(63, '[') + std::string(63, ']') + "}");
  same_as_dom(R"({"data":)" + std::string(64, '[') + std::string(64, ']') + "}");
}

TEST_CASE("the data member is stored as the publisher wrote it, on one line", "[unit][actors]") {
  auto r = events_from_text(R"({"data": {"b": 1.50, "a": "\u00e9"}})", "orders", 10);
  REQUIRE(r);
  std::string f = (*r)[0].fragment; // a copy: r is assigned again below
  CHECK(f.substr(f.find("\"data\":")) == R"("data":{"b": 1.50, "a": "\u00e9"})");
  r = events_from_text("{\"data\":\n[1,\n \"a b\\n\"]\r\n}", "orders", 10);
  REQUIRE(r);
  f = (*r)[0].fragment;
  CHECK(f.substr(f.find("\"data\":")) == R"("data":[1,"a b\n"])");
  r = events_from_text(R"({"data": 7 })", "orders", 10);
  REQUIRE(r);
  f = (*r)[0].fragment;
  CHECK(f.substr(f.find("\"data\":")) == R"("data":7)");
}

TEST_CASE("mutated publish bodies answer as the DOM path does (RapidJSON against nlohmann)",
          "[unit][actors]") {
  // Differential: random edits of valid bodies, with the bytes where the two
  // parsers could disagree (escapes, surrogates, non-ASCII, control bytes,
  // number syntax). A fixed seed: a failure names its body and reproduces.
  const std::vector<std::string> bases = {
    R"({"data":{"p":"abc","n":[1,-2.5e3,true,null]},"id":"x-1","type":"t"})",
    R"([{"data":"caf\u00e9 \"q\" \\"},{"data":{"a":{"b":[[]]}},"key":"k"}])",
    "{\"data\":\"\xc3\xa9t\xc3\xa9\",\"source\":\"s\",\"headers\":{\"h\":\"v\"}}",
    R"({ "data" : [ 0 , 1.0 , -0 , 1E+2 ] , "trace_id" : "0123456789abcdef0123456789abcdef" })",
  };
  const std::vector<std::string> pieces = {"{",        "}",
                                           "[",        "]",
                                           "\"",       ",",
                                           ":",        "\\",
                                           " ",        "\n",
                                           "0",        "9",
                                           "-",        "+",
                                           ".",        "e",
                                           "E",        "t",
                                           "true",     "null",
                                           "\\u",      "\\ud800",
                                           "\\udc00",  "\\u00e9",
                                           "\xc3\xa9", "\xed\xa0\x80",
                                           "\x80",     "\xff",
                                           "\x1f",     "\t",
                                           "\"data\"", "\"id\":",
                                           "1e999"};
  std::mt19937 rng{20261204};
  std::size_t checked = 0;
  for (const auto& base : bases) {
    for (int round = 0; round < 1500; ++round) {
      std::string text = base;
      auto edits = 1 + rng() % 3;
      for (unsigned e = 0; e < edits && !text.empty(); ++e) {
        auto at = rng() % text.size();
        const auto& piece = pieces[rng() % pieces.size()];
        switch (rng() % 3) {
          case 0:
            text.insert(at, piece);
            break;
          case 1:
            text.erase(at, 1 + rng() % 3);
            break;
          default:
            text.replace(at, 1, piece);
        }
      }
      same_as_dom(text);
      ++checked;
    }
  }
  CHECK(checked == 6000);
}

TEST_CASE("every JSONTestSuite file, as a body and as data, answers as the DOM path does",
          "[unit][actors]") {
  const char* env = std::getenv("NERVE_TESTDATA");
  std::filesystem::path suite = env != nullptr ? env : NERVE_SOURCE_DIR "/tests/data";
  suite /= "JSONTestSuite/test_parsing";
  if (!std::filesystem::is_directory(suite)) {
    WARN("JSONTestSuite not found at " << suite << "; set NERVE_TESTDATA");
    return;
  }
  std::size_t files = 0;
  for (const auto& entry : std::filesystem::directory_iterator{suite}) {
    std::ifstream in{entry.path(), std::ios::binary};
    std::string text{std::istreambuf_iterator<char>{in}, std::istreambuf_iterator<char>{}};
    INFO(entry.path().filename().string());
    same_as_dom(text);
    same_as_dom(R"({"id":"a","data":)" + text + "}");
    same_as_dom("[" + std::string{R"({"data":)"} + text + "}]");
    ++files;
  }
  CHECK(files > 300);
}

TEST_CASE("times read back as RFC 3339 and refuse dates that do not exist", "[unit][actors]") {
  CHECK(parse_time_arg("1970-01-01T00:00:00Z", 0) == 0);
  CHECK(parse_time_arg("2026-12-05T05:00:00.000001Z", 0) == 1796446800000001);
  CHECK(parse_time_arg("2026-12-05T06:00:00.5+01:00", 0) == 1796446800500000);
  CHECK(parse_time_arg("2024-02-29T23:59:59Z", 0) == 1709251199000000);
  for (std::string bad : {"2026-02-29T00:00:00Z", "2026-13-01T00:00:00Z", "2026-00-10T00:00:00Z",
                          "2026-12-05T24:00:00Z", "2026-12-05T05:60:00Z", "2026-12-05T05:00:00",
                          "2026-12-05T05:00:00.Z", "2026-12-05 05:00:00Z", "2026-12-5T05:00:00Z",
                          "2026-12-05T05:00:00Q"}) {
    INFO(bad);
    CHECK_FALSE(parse_time_arg(bad, 0));
  }
}

TEST_CASE("times agree with timegm on every day from 1970 to 2400, and 9999 is the last year",
          "[unit][actors]") {
  std::size_t days = 0;
  for (std::time_t t = 0; t < 13'569'465'600; t += 86'400 + 3'661) { // a day and 1:01:01
    std::tm tm{};
    gmtime_r(&t, &tm);
    char text[32];
    std::strftime(text, sizeof text, "%Y-%m-%dT%H:%M:%SZ", &tm);
    INFO(text);
    REQUIRE(parse_time_arg(text, 0) == static_cast<std::int64_t>(timegm(&tm)) * 1000000);
    ++days;
  }
  CHECK(days > 140'000);
  CHECK(parse_time_arg("9999-12-31T23:59:59Z", 0) == 253402300799000000);
  CHECK_FALSE(parse_time_arg("1969-12-31T23:59:59Z", 0));
  CHECK_FALSE(parse_time_arg("2100-02-29T00:00:00Z", 0)); // not a leap year
  CHECK(parse_time_arg("2000-02-29T00:00:00Z", 0));       // a leap year
}
