// Log set-up for the server: spdlog to stderr, text or JSON lines.
#pragma once

#include "config/config.hpp"

namespace nerve::runtime {

/// Installs the default logger per `log.level` and `log.format`.
void setup_logging(const config::log_config& cfg);

} // namespace nerve::runtime
