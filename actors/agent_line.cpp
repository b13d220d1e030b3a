#include "actors/agent_line.hpp"

#include <nlohmann/json.hpp>

namespace nerve::actors {

void append_delivery_members(std::string& out, const std::string& delivery_id,
                             std::uint32_t attempt, std::string_view traceparent,
                             std::string_view event) {
  out += R"("delivery":)";
  out += nlohmann::json(delivery_id).dump();
  out += R"(,"attempt":)";
  out += std::to_string(attempt);
  if (!traceparent.empty()) {
    out += R"(,"traceparent":")";
    out += traceparent;
    out += '"';
  }
  out += R"(,"event":)";
  out += event;
}

agent_reply parse_agent_line(const std::string& line) {
  agent_reply r;
  auto msg = nlohmann::json::parse(line, nullptr, false);
  if (!msg.is_object())
    return r;
  auto delivery = msg.find("delivery");
  auto type = msg.find("type");
  if (delivery == msg.end() || !delivery->is_string() || (type != msg.end() && !type->is_string()))
    return r;
  r.delivery = delivery->get<std::string>();
  r.type = type == msg.end() ? std::string{} : type->get<std::string>();
  if (r.type == "ack") {
    r.what = agent_reply::kind::ack;
    // Parsed text is valid UTF-8, so dumping it back cannot throw.
    if (auto it = msg.find("result"); it != msg.end())
      r.result = it->dump();
    if (auto it = msg.find("emit"); it != msg.end())
      r.emit = it->dump();
  } else if (r.type == "nack") {
    r.what = agent_reply::kind::nack;
    auto error = msg.find("error");
    r.error = error != msg.end() && error->is_string() ? error->get<std::string>() : "nack";
  } else {
    r.what = agent_reply::kind::unknown_type;
  }
  return r;
}

} // namespace nerve::actors
