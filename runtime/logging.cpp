// spdlog configuration: text for people, JSON lines for collectors.
#include "runtime/logging.hpp"

#include "actors/node.hpp"

#include <cstdlib>

#include <nlohmann/json.hpp>
#include <spdlog/pattern_formatter.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

namespace nerve::runtime {

namespace {

/// One JSON object per line: time, level, msg.
class json_formatter final : public spdlog::formatter {
public:
  void format(const spdlog::details::log_msg& msg, spdlog::memory_buf_t& dest) override {
    auto us
      = std::chrono::duration_cast<std::chrono::microseconds>(msg.time.time_since_epoch()).count();
    auto level = spdlog::level::to_string_view(msg.level);
    nlohmann::json j{{"time", actors::format_time(us)},
                     {"level", std::string(level.data(), level.size())},
                     {"msg", std::string(msg.payload.data(), msg.payload.size())}};
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
