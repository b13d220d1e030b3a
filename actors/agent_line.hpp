// What a process agent's reply line says (CONTRACT.md section 5): an ack
// with an optional result and follow-up events, a nack with an error, or
// nothing nerve can use. Kept apart from the instance actor so that it can
// be fuzzed (tests/fuzz/agent_line.cpp).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace nerve::actors {

struct agent_reply {
  enum class kind { ack, nack, unknown_type, not_a_reply };
  kind what = kind::not_a_reply;
  std::string delivery; ///< the delivery id it answers
  std::string result;   ///< ack: JSON text; empty: none
  std::string emit;     ///< ack: JSON text of the follow-ups; empty: none
  std::string error;    ///< nack: the agent's error ("nack" when it gave none)
  std::string type;     ///< unknown_type: what the line said it was
};

/// Reads one line a process agent wrote on stdout. Never throws: a line that
/// is not JSON, has no string `delivery` or a `type` that is no string is
/// not_a_reply.
[[nodiscard]] agent_reply parse_agent_line(const std::string& line);

/// Appends the members a delivery shows its worker, `"delivery":<id>,
/// "attempt":<n>[,"traceparent":"<tp>"],"event":<stored event>`: a process
/// agent's event line (after its `"type":"event"`) and each entry of a pull
/// worker's fetch answer. `traceparent` empty: left out.
void append_delivery_members(std::string& out, const std::string& delivery_id,
                             std::uint32_t attempt, std::string_view traceparent,
                             std::string_view event);

} // namespace nerve::actors
