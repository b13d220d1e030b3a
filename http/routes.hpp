// The HTTP API of a node (CONTRACT.md section 6): routing, auth, JSON views.
#pragma once

#include "actors/node.hpp"
#include "config/config.hpp"
#include "http/server.hpp"

namespace nerve::http {

/// The request handler for `node`; `node` must outlive it.
/// The API's handler. When `own_answers` is given, it is set to a function
/// that counts an answer the server sent on its own (server_options::
/// on_own_answer) in the request metrics, under route and method "other".
[[nodiscard]] handler make_api(actors::node& node, const config::config& cfg,
                               std::function<void(unsigned)>* own_answers = nullptr);

} // namespace nerve::http
