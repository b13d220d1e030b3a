// Untrusted JSON: the depth limit, number range, and publish validation.
#include <catch2/catch.hpp>

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
