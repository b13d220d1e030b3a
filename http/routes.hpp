// The HTTP API of a node (CONTRACT.md section 6): routing, auth, JSON views.
#pragma once

#include "actors/node.hpp"
#include "config/config.hpp"
#include "http/server.hpp"

namespace nerve::http {

/// The request handler for `node`; `node` must outlive it.
[[nodiscard]] handler make_api(actors::node& node, const config::config& cfg);

} // namespace nerve::http
