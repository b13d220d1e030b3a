// RFC 9457 problem details (problem.hpp).
#include "http/problem.hpp"

namespace nerve::http {

using json = nlohmann::json;

json problem_body(unsigned status, const std::string& slug, const std::string& title,
                  const std::string& detail) {
  return json{{"type", "https://nerve.dev/problems/" + slug},
              {"title", title},
              {"status", status},
              {"detail", detail}};
}

response problem_response(unsigned status, const json& body) {
  response r;
  r.status = status;
  r.content_type = "application/problem+json";
  r.body = body.dump(-1, ' ', false, json::error_handler_t::replace);
  return r;
}

response problem(unsigned status, const std::string& slug, const std::string& title,
                 const std::string& detail) {
  return problem_response(status, problem_body(status, slug, title, detail));
}

} // namespace nerve::http
