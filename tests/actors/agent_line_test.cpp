// A process agent's reply lines (actors/agent_line.hpp), hostile ones too.
#include <catch2/catch.hpp>

#include "actors/agent_line.hpp"

using nerve::actors::agent_reply;
using nerve::actors::parse_agent_line;

TEST_CASE("reply lines are acks, nacks, unknown types or nothing, and never throw",
          "[unit][actors]") {
  auto ack = parse_agent_line(R"({"type":"ack","delivery":"d1","result":{"a":1},"emit":[]})");
  CHECK(ack.what == agent_reply::kind::ack);
  CHECK(ack.delivery == "d1");
  CHECK(ack.result == R"({"a":1})");
  CHECK(ack.emit == "[]");
  auto plain = parse_agent_line(R"({"type":"ack","delivery":"d2"})");
  CHECK((plain.result.empty() && plain.emit.empty()));
  auto nack = parse_agent_line(R"({"type":"nack","delivery":"d3","error":"boom"})");
  CHECK((nack.what == agent_reply::kind::nack && nack.error == "boom"));
  CHECK(parse_agent_line(R"({"type":"nack","delivery":"d4","error":7})").error == "nack");
  CHECK(parse_agent_line(R"({"type":"done","delivery":"d5"})").what
        == agent_reply::kind::unknown_type);
  // A type that is no string once threw out of the instance actor (it
  // crashed and restarted for each such line).
  for (const char* line : {R"({"type":5,"delivery":"d"})", R"({"type":null,"delivery":"d"})",
                           R"({"delivery":7,"type":"ack"})", R"([1,2])", "not json", "",
                           "{\"delivery\":\"\xff\",\"type\":\"ack\"}", R"({"type":"ack"})"}) {
    INFO(line);
    CHECK(parse_agent_line(line).what == agent_reply::kind::not_a_reply);
  }
}
