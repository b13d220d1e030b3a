// RFC 9457 problem details: every error answer of the HTTP API.
#pragma once

#include <string>

#include <nlohmann/json.hpp>

#include "http/server.hpp"

namespace nerve::http {

/// A problem+json response; `slug` names the problem type.
[[nodiscard]] response problem(unsigned status, const std::string& slug, const std::string& title,
                               const std::string& detail);

/// The body of problem(), for an answer that adds extension members.
[[nodiscard]] nlohmann::json problem_body(unsigned status, const std::string& slug,
                                          const std::string& title, const std::string& detail);

/// The problem+json response of `body` (bytes that are not UTF-8 are replaced).
[[nodiscard]] response problem_response(unsigned status, const nlohmann::json& body);

} // namespace nerve::http
