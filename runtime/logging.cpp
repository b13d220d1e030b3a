// spdlog configuration: text for people, JSON lines for collectors.
#include "runtime/logging.hpp"

#include "actors/node.hpp"

#include <cstdlib>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>
#include <spdlog/pattern_formatter.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

namespace nerve::runtime {

namespace {

/// The JSON field a leading `key=value` of a message goes to; ids get an
/// `_id` suffix so that `event` cannot be mistaken for the event itself.
std::string field_name(std::string_view key) {
  if (key == "event" || key == "replay" || key == "dlq")
    return std::string{key} + "_id";
  return std::string{key};
}

/// Copies the run of `key=value` tokens that starts a message ("agent=a
/// topic=t event=e: moved to the DLQ ...") into fields of `j`. The scan stops
/// at the first other token, so text later in the message (an agent's stderr,
/// an error) never becomes a field. `partition` and `instance`
/// are numbers: `partition=2` becomes 2 (ids stay strings, even all-digit ones).
void add_leading_fields(std::string_view text, nlohmann::json& j) {
  constexpr std::size_t fields_max = 8; // bounds the scan of untrusted text
  for (std::size_t n = 0; n < fields_max && !text.empty(); ++n) {
    auto end = text.find(' ');
    auto token = text.substr(0, end);
    auto eq = token.find('=');
    if (eq == 0 || eq == std::string_view::npos)
      return;
    auto key = token.substr(0, eq);
    for (char c : key)
      if ((c < 'a' || c > 'z') && c != '_')
        return;
    auto value = token.substr(eq + 1);
    bool last = !value.empty() && value.back() == ':';
    if (last)
      value.remove_suffix(1);
    auto name = field_name(key);
    if (value.empty() || j.contains(name))
      return;
    bool digits = (key == "partition" || key == "instance") && value.size() <= 9
                  && value.find_first_not_of("0123456789") == std::string_view::npos;
    if (digits)
      j[name] = std::stoull(std::string{value});
    else
      j[name] = std::string{value};
    if (last || end == std::string_view::npos)
      return;
    text.remove_prefix(end + 1);
  }
}

/// One JSON object per line: time, level, msg, then the message's leading
/// `key=value` fields (agent, instance, topic, partition, event_id, dlq_id,
/// replay_id).
class json_formatter final : public spdlog::formatter {
public:
  void format(const spdlog::details::log_msg& msg, spdlog::memory_buf_t& dest) override {
    auto us
      = std::chrono::duration_cast<std::chrono::microseconds>(msg.time.time_since_epoch()).count();
    auto level = spdlog::level::to_string_view(msg.level);
    std::string_view text{msg.payload.data(), msg.payload.size()};
    nlohmann::json j{{"time", actors::format_time(us)},
                     {"level", std::string(level.data(), level.size())},
                     {"msg", std::string{text}}};
    add_leading_fields(text, j);
    auto line = j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
    line += '\n';
    dest.append(line.data(), line.data() + line.size());
  }

  std::unique_ptr<spdlog::formatter> clone() const override {
    return std::make_unique<json_formatter>();
  }
};

} // namespace

void setup_logging(const config::log_config& cfg) {
  auto sink = std::make_shared<spdlog::sinks::stderr_color_sink_mt>(
    std::getenv("NO_COLOR") != nullptr ? spdlog::color_mode::never : spdlog::color_mode::automatic);
  auto logger = std::make_shared<spdlog::logger>("nerve", sink);
  if (cfg.format == "json")
    logger->set_formatter(std::make_unique<json_formatter>());
  else
    logger->set_pattern("%Y-%m-%dT%H:%M:%S.%fZ %^%l%$ %v", spdlog::pattern_time_type::utc);
  logger->set_level(spdlog::level::from_str(cfg.level));
  logger->flush_on(spdlog::level::info);
  spdlog::set_default_logger(logger);
}

} // namespace nerve::runtime
