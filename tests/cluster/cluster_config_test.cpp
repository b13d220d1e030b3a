// The CAF settings of a cluster node: cfg.set() with a misspelled key only
// prints to stderr, so the values are read back from what CAF will use.
#include <catch2/catch.hpp>

#include <caf/actor_system_config.hpp>
#include <caf/settings.hpp>

#include "actors/cluster_actor.hpp"
#include "actors/messages.hpp"

using namespace std::chrono_literals;

TEST_CASE("a cluster node's CAF settings take effect", "[unit]") {
  nerve::config::config c;
  c.node_id = "n1";
  c.cluster.listen = "127.0.0.1:7101";
  c.cluster.tls_cert = "n1.pem";
  c.cluster.tls_key = "n1.key";
  c.cluster.tls_ca = "ca.pem";
  caf::actor_system_config cfg;
  nerve::actors::configure_cluster(cfg, c);
  auto dump = cfg.dump_content();
  CHECK(caf::get_or(dump, "middleman.heartbeat-interval", caf::timespan{0})
        == caf::timespan{500ms});
  CHECK(caf::get_or(dump, "middleman.connection-timeout", caf::timespan{0}) == caf::timespan{2s});
  CHECK(caf::get_or(dump, "middleman.app-identifiers", std::vector<std::string>{})
        == std::vector<std::string>{"nerve/wire-" + std::to_string(nerve::actors::wire_version)});
  // cluster.tls is the gate's (actors/cluster_gate.hpp): CAF's OpenSSL
  // module stays off, its keys unset.
  CHECK(cfg.openssl_certificate.empty());
  CHECK(cfg.openssl_key.empty());
  CHECK(cfg.openssl_cafile.empty());
}
