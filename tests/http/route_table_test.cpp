// The API's route matching (http/route_table.cpp): parameters, the literals
// another route spells at a parameter's place, methods of a path, escapes.
#include <catch2/catch.hpp>

#include "http/route_table.hpp"

using namespace nerve::http;

TEST_CASE("a path matches its route and yields its decoded parameters", "[unit][http]") {
  const route_table table;
  auto m = table.match("POST", "/v1/topics/orders.eu/events");
  REQUIRE(m.hit != nullptr);
  CHECK(m.hit->id == route_id::publish);
  CHECK(m.p == params{"orders.eu"});
  m = table.match("GET", "/v1/replays/r1/history");
  REQUIRE(m.hit != nullptr);
  CHECK(m.hit->id == route_id::replay_history);
  CHECK(m.p == params{"r1"});
  m = table.match("GET", "/v1/agents/a%20b");
  REQUIRE(m.hit != nullptr);
  CHECK(m.hit->id == route_id::get_agent);
  CHECK(m.p == params{"a b"});
  m = table.match("GET", "//v1//topics/");
  REQUIRE(m.hit != nullptr); // empty segments are left out
  CHECK(m.hit->id == route_id::list_topics);
}

TEST_CASE("a parameter never matches a literal another route has there", "[unit][http]") {
  const route_table table;
  // /v1/dlq/retry-all is POST only: GET is a 405, not the DLQ entry "retry-all".
  auto m = table.match("GET", "/v1/dlq/retry-all");
  CHECK(m.hit == nullptr);
  REQUIRE(m.same_path != nullptr);
  CHECK(m.same_path->id == route_id::dlq_retry_all);
  CHECK(m.allowed == "POST");
  m = table.match("DELETE", "/v1/dlq/purge");
  CHECK(m.hit == nullptr);
  CHECK(m.allowed == "POST");
  // Any other entry id is a parameter, for every method of that path.
  m = table.match("GET", "/v1/dlq/evt-1");
  REQUIRE(m.hit != nullptr);
  CHECK(m.hit->id == route_id::dlq_get);
  CHECK(m.p == params{"evt-1"});
  m = table.match("DELETE", "/v1/dlq/evt-1");
  REQUIRE(m.hit != nullptr);
  CHECK(m.hit->id == route_id::dlq_delete);
  // /v1/metrics is a route of its own; /v1/agents/metrics is the agent "metrics".
  m = table.match("GET", "/v1/agents/metrics");
  REQUIRE(m.hit != nullptr);
  CHECK(m.hit->id == route_id::get_agent);
  // A segment spelled like a parameter is no parameter's value.
  m = table.match("GET", "/v1/dlq/{id}");
  CHECK(m.hit == nullptr);
}

TEST_CASE("a path without a route, a method it lacks, a bad escape", "[unit][http]") {
  const route_table table;
  auto m = table.match("GET", "/v1/nothing/here");
  CHECK(m.hit == nullptr);
  CHECK(m.same_path == nullptr);
  CHECK(m.allowed.empty());
  m = table.match("PUT", "/v1/topics/t/events");
  CHECK(m.hit == nullptr);
  REQUIRE(m.same_path != nullptr);
  CHECK(m.allowed == "POST, GET");
  m = table.match("GET", "/v1/agents/a%zz");
  CHECK_FALSE(m.path_ok);
  CHECK(m.hit == nullptr);
}
