// RFC 9457 problem details: every error answer of the HTTP API.
#pragma once

#include <string>

#include "http/server.hpp"

namespace nerve::http {

/// A problem+json response; `slug` names the problem type.
[[nodiscard]] response problem(unsigned status, const std::string& slug, const std::string& title,
                               const std::string& detail);

} // namespace nerve::http
