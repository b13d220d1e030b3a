// Fuzzes a publish body: events_from_text (the one-pass parser every publish
// takes) must answer as parse_json + events_from_body (the DOM path) does:
// the same error, or the same events. Any difference, crash, leak or
// undefined behaviour is a finding.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "actors/event_input.hpp"
#include "persistence/ids.hpp"

using namespace nerve::actors;

// node.cpp's, without the rest of the node (the harness links event_input.cpp alone).
std::string nerve::actors::new_trace_id() {
  return nerve::persistence::new_trace_id();
}

namespace {

[[noreturn]] void differ(const char* what) {
  std::fprintf(stderr, "one-pass and DOM parsers differ: %s\n", what);
  std::abort();
}

nlohmann::json fragment(const publish_item& item) {
  auto j = nlohmann::json::parse("{" + item.fragment + "}", nullptr, false);
  if (j.is_discarded())
    differ("a fragment is not JSON");
  j.erase("trace_id"); // generated when the body has none
  return j;
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::string text(reinterpret_cast<const char*>(data), size);
  auto sax = events_from_text(text, "orders", 3);
  auto body = parse_json(text);
  if (!body) {
    if (sax || !sax.error().json || sax.error().message != body.error())
      differ("the JSON error");
    return 0;
  }
  auto dom = events_from_body(*body, "orders", 3);
  if (!dom) {
    if (sax || sax.error().json || sax.error().message != dom.error())
      differ("the body's error");
    return 0;
  }
  if (!sax || sax->size() != dom->size())
    differ("the events");
  for (std::size_t i = 0; i < dom->size(); ++i) {
    auto& a = (*sax)[i];
    auto& b = (*dom)[i];
    if (a.id != b.id || a.key != b.key || a.type != b.type || a.source != b.source)
      differ("an envelope field");
    if (fragment(a) != fragment(b))
      differ("an event's fragment");
    if (a.fragment.find('\n') != std::string::npos)
      differ("a stored event spans lines");
  }
  return 0;
}
