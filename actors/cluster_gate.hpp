// cluster_gate: every socket of a node's cluster links. CAF 0.17.6 trusts
// the bytes a connection brings: a 32-byte BASP header announcing a 4 GiB
// payload makes it allocate and zero 4 GiB, a handshake header without a
// payload crashes it, a silent connection is kept forever, and its OpenSSL
// module leaves errors in a thread's OpenSSL error queue, so one failed
// TLS handshake tears down the node's healthy TLS links
// (docs/operations.md, "What the cluster port lets through"). So nerve, not CAF, accepts on
// cluster.listen and dials the peers: the gate bounds the connections,
// does TLS (cluster.tls), checks every BASP frame header a peer sends
// before CAF sees it, and pumps the checked bytes to and from CAF over a
// socketpair. CAF speaks BASP on its end and opens no socket of its own.
// Beside BASP, a link carries nerve's own data frames (the publish forwards
// and the replication data plane), which the gate hands to the node
// directly: the wire is framed (kind, length, payload) and starts with the
// dialer's hello naming it (docs/operations.md, "What the cluster port lets
// through").
#pragma once

#include <array>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>

#include <tl/expected.hpp>

namespace nerve::actors {

/// What the gate allows a connection.
struct gate_limits {
  /// The largest BASP payload a peer may announce; nerve's own frames stay
  /// far below (a forward is at most 16 MiB of events).
  std::uint32_t frame_bytes_max = 32U << 20;
  /// Accepted connections at once; more are closed as they arrive. Dialed
  /// ones (at most one per member) do not count.
  std::size_t connections_max = 64;
  /// A peer must complete a frame this often; the TLS handshake and the
  /// first frame count from the accept (CAF heartbeats every 500 ms).
  std::chrono::milliseconds frame_timeout{10'000};
  /// A dialed peer must accept the TCP connection within this.
  std::chrono::milliseconds connect_timeout{1'000};
};

/// Follows the BASP frames (32-byte header, then `payload_len` bytes) a
/// peer sends, as the bytes arrive, and says why they must not reach CAF:
/// an unknown message type, a payload over the limit, a first frame that
/// is not the expected handshake, a handshake without payload or too large.
class basp_frame_check {
public:
  static constexpr std::size_t header_bytes = 32;

  /// `from_dialer`: the peer dialed this node, so it speaks BASP's client
  /// side (its first frame is a client handshake); else the server side.
  basp_frame_check(std::uint32_t payload_bytes_max, bool from_dialer)
    : payload_bytes_max_(payload_bytes_max), from_dialer_(from_dialer) {}

  /// Takes the next `n` bytes of the stream. Empty: they may be passed on;
  /// else why the connection must be closed (and stays so).
  [[nodiscard]] std::optional<std::string> feed(const std::uint8_t* data, std::size_t n);

  /// Frames received completely so far.
  [[nodiscard]] std::uint64_t frames() const { return frames_; }

private:
  [[nodiscard]] std::optional<std::string> check_header() const;

  std::uint32_t payload_bytes_max_;
  bool from_dialer_;
  std::array<std::uint8_t, header_bytes> header_{};
  std::size_t header_have_ = 0;
  std::uint64_t payload_left_ = 0;
  std::uint64_t headers_ = 0;
  std::uint64_t frames_ = 0;
  std::optional<std::string> failed_;
};

/// PEM files of cluster.tls: this node's certificate (chain) and key, and
/// the private cluster CA a peer's certificate must be signed by.
struct gate_tls_files {
  std::string cert;
  std::string key;
  std::string ca;
};

class cluster_gate {
public:
  /// Gives CAF one end of a socketpair carrying an accepted connection; the
  /// callee owns `fd`. Called on the gate's thread.
  using accepted_fn = std::function<void(int fd)>;
  /// A dial's outcome: CAF's end of the socketpair (the callee owns it), or
  /// why there is no link. Called once, on the gate's thread.
  using dialed_fn = std::function<void(tl::expected<int, std::string>)>;
  /// A data frame from member `peer` (nerve's own messages beside BASP on
  /// the same link: the replication data plane). Called on the gate's
  /// thread: it must not block.
  using data_fn = std::function<void(const std::string& peer, std::string payload)>;

  virtual ~cluster_gate() = default;

  /// Binds host:port (`host` "0.0.0.0" or "::": every interface) and loads
  /// the TLS files; accepts nothing before `accept`. Error: why the port or
  /// a TLS file cannot be used.
  /// `self`: this node's id, which every dial says first.
  [[nodiscard]] static tl::expected<std::shared_ptr<cluster_gate>, std::string>
  start(const std::string& host, std::uint16_t port, std::optional<gate_tls_files> tls,
        gate_limits limits, std::string self = "gate");

  /// Starts accepting on a thread of its own.
  virtual void accept(accepted_fn accepted) = 0;

  /// Connects to member `peer`: TCP, then TLS with cluster.tls (the peer's
  /// certificate must be signed by the CA), then a hello saying who dials.
  /// Thread-safe.
  virtual void dial(const std::string& peer, const std::string& host, std::uint16_t port,
                    dialed_fn done)
    = 0;

  /// Where data frames go; set before accept and dial.
  virtual void on_data(data_fn fn) = 0;

  /// Queues a data frame for member `peer`'s link, in order with the ones
  /// before; false when there is no open link to it (a frame queued when
  /// the link drops is lost). Thread-safe; never blocks.
  virtual bool send_data(const std::string& peer, std::string payload) = 0;

  /// Runs `fn` on the gate's thread after what is queued there (a sender
  /// that gathers frames sends them from there). Thread-safe; dropped once
  /// the gate stopped.
  virtual void run(std::function<void()> fn) = 0;

  /// The port listened on (the one asked for, or the one picked for 0).
  [[nodiscard]] virtual std::uint16_t port() const = 0;

  /// Closes the port and every connection, and joins the thread; pending
  /// dials are dropped unanswered. Idempotent.
  virtual void stop() = 0;
};

} // namespace nerve::actors
