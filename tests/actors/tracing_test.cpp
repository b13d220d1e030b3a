// W3C trace context parsing, span ids and sampling (actors/tracing.hpp); the
// export itself is tested end to end in tests/blackbox/test_tracing.py.
#include <catch2/catch.hpp>

#include "actors/tracing.hpp"

using namespace nerve::actors;

TEST_CASE("a traceparent is read as W3C trace context says, and refused otherwise",
          "[unit][actors]") {
  auto c = parse_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
  REQUIRE(c);
  CHECK(c->trace_id == "4bf92f3577b34da6a3ce929d0e0e4736");
  CHECK(c->parent_id == 0x00f067aa0ba902b7ULL);
  CHECK(c->sampled);
  CHECK_FALSE(
    parse_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00")->sampled);
  // A later version is read as 00, with what follows ignored.
  CHECK(parse_traceparent("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-future"));
  for (const char* bad :
       {"", "00", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",   // zero trace
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",   // zero parent
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",   // upper case
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",   // version ff
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x", // 00 with more
        "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01"})
    CHECK_FALSE(parse_traceparent(bad));
  CHECK(traceparent("4bf92f3577b34da6a3ce929d0e0e4736", 0xabcULL, true)
        == "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000abc-01");
}

TEST_CASE("span ids are derived, never zero, and differ between a publish and its attempts",
          "[unit][actors]") {
  CHECK(publish_span_id("e1") == publish_span_id("e1"));
  CHECK(publish_span_id("e1") != publish_span_id("e2"));
  CHECK(delivery_span_id("e1:a:1") != delivery_span_id("e1:a:2"));
  CHECK(publish_span_id("e1") != delivery_span_id("e1"));
  CHECK(span_id_of("") != 0);
}

TEST_CASE("the trace id is read from a stored event's members", "[unit][actors]") {
  CHECK(find_trace_id(R"({"id":"x","topic":"t","trace_id":"4bf92f3577b34da6a3ce929d0e0e4736",)"
                      R"("data":{"trace_id":"ffffffffffffffffffffffffffffffff"}})")
        == "4bf92f3577b34da6a3ce929d0e0e4736");
  // A string holding the member's text has its quotes escaped: not a match.
  CHECK(find_trace_id(R"({"type":"\"trace_id\":\"4bf92f3577b34da6a3ce929d0e0e4736","data":1})")
          .empty());
  CHECK(find_trace_id(R"({"trace_id":"short"})").empty());
}

TEST_CASE("sampling keeps or drops whole traces by the id's low 64 bits", "[unit][actors]") {
  nerve::config::tracing_config cfg;
  cfg.otlp_endpoint = "http://127.0.0.1:9"; // never reached: nothing is recorded
  cfg.sample_ratio = 0.25;
  tracer t{cfg};
  CHECK(t.sampled("ffffffffffffffff0000000000000001"));
  CHECK(t.sampled("00000000000000003fffffffffffffff"));
  CHECK_FALSE(t.sampled("00000000000000004000000000000001"));
  CHECK_FALSE(t.sampled("not hex"));
  cfg.sample_ratio = 1.0;
  CHECK(tracer{cfg}.sampled("0000000000000000ffffffffffffffff"));
  cfg.sample_ratio = 0.0;
  CHECK_FALSE(tracer{cfg}.sampled("00000000000000000000000000000001"));
}
