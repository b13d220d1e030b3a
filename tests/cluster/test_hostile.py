"""Hostile bytes on the cluster port of a real node (CONTRACT.md section 9, Security).

A raw TCP socket sends random garbage, BASP headers that announce 3.9 GiB or that
crashed CAF 0.17.6 (a handshake header without payload), and opens hundreds of
connections at once. The node must not crash or bloat (VmRSS stays within +200 MiB of its
baseline), keeps answering HTTP and keeps its cluster links. docs/operations.md ("Cluster
security") records what CAF alone did with the same bytes.

A BASP header is 32 bytes, big-endian [caf/io/basp/header.hpp]: operation (u8), two
padding bytes, flags (u8), payload_len (u32), operation_data (u64), source_actor (u64),
dest_actor (u64).
"""

import os
import random
import socket
import struct
import time
import unittest

from cluster_harness import ClusterTestCase
from harness import RSS_BOUNDS_CHECKED
from tls_pki import Pki

SERVER_HANDSHAKE, CLIENT_HANDSHAKE, DIRECT_MESSAGE = 0, 1, 2
HUGE = 0xF0000000  # 3.9 GiB
RSS_GROWTH_MAX_KB = 200 * 1024
SEED = int(os.environ.get("NERVE_HOSTILE_SEED", "1207"))


def basp_header(op, payload_len, operation_data=0, source=0, dest=0, flags=0):
    return struct.pack(">BBBBIQQQ", op, 0, 0, flags, payload_len, operation_data, source, dest)


KIND_BASP, KIND_DATA, KIND_HELLO = 0, 1, 2


def link_frame(kind, payload):
    """A frame of nerve's member link (actors/cluster_gate.cpp): kind, big-endian length."""
    return struct.pack(">BI", kind, len(payload)) + payload


def as_peer(basp, hello=True):
    """BASP bytes as a dialing member's gate sends them: a hello first, then BASP frames."""
    first = link_frame(KIND_HELLO, b"nerve-link/3 n9") if hello else b""
    return first + link_frame(KIND_BASP, basp)


def atom(text):
    """A CAF 0.17 atom_value: 6 bits per character after a 0xF start [caf/detail/atom_val.hpp]."""
    alphabet = " 0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ_abcdefghijklmnopqrstuvwxyz"
    value = 0xF
    for ch in text:
        value = (value << 6) | alphabet.index(ch)
    return value


def client_handshake():
    """A client handshake CAF accepts: a made-up node id [caf/node_id.cpp serialize:
    implementation atom, process id, 20-byte host id]."""
    payload = struct.pack(">QI", atom("default"), 4242) + bytes(range(1, 21))
    return basp_header(CLIENT_HANDSHAKE, len(payload)) + payload


def rss_kb(pid):
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


def closed_by_peer(sock, timeout=5.0):
    """True when the other side closes `sock` within `timeout` (data before is dropped)."""
    sock.settimeout(timeout)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if sock.recv(65536) == b"":
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except socket.timeout:
        return False
    return False


class HostileTestCase(ClusterTestCase):

    def linked(self, cluster):
        for node_id in cluster.ids():
            r = cluster[node_id].get("/v1/cluster")
            if r.status != 200 or any(m["state"] != "up" for m in r.json()["nodes"]):
                return False
        return True

    def start_linked(self, **kw):
        cluster = self.new_cluster(3, **kw)
        self.wait_for(lambda: self.linked(cluster), what="3 nodes linked\n" + cluster.stderr_text())
        return cluster

    def assert_healthy(self, cluster, node_id, baseline_kb):
        """Alive, within the RSS bound, answering HTTP, every link up."""
        srv = cluster[node_id]
        self.assertIsNone(srv.proc.poll(), f"{node_id} died:\n{srv.stderr_text()}")
        growth = rss_kb(srv.proc.pid) - baseline_kb
        if RSS_BOUNDS_CHECKED:
            self.assertLess(growth, RSS_GROWTH_MAX_KB, f"{node_id} grew by {growth} kB")
        self.assertEqual(srv.get("/livez", timeout=5).status, 200)
        states = {m["id"]: m["state"] for m in srv.get("/v1/cluster", timeout=5).json()["nodes"]}
        self.assertEqual(set(states.values()), {"up"}, states)
        return growth

    def attack(self, cluster, victim, send, connections=1):
        """Opens `connections` raw sockets to the victim's cluster port, runs send(sock) on
        each, and returns the sockets (closed at cleanup). The node may close a socket
        while bytes are still being sent to it: that is a refusal too."""
        port = cluster.ports[cluster.ids().index(victim)]
        socks = []
        for _ in range(connections):
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            self.addCleanup(s.close)
            try:
                send(s)
            except (BrokenPipeError, ConnectionResetError):
                pass
            socks.append(s)
        return socks


class PlaintextPortTest(HostileTestCase):

    def setUp(self):
        self.cluster = self.start_linked()
        self.pid = self.cluster["n1"].proc.pid
        self.baseline = rss_kb(self.pid)

    def test_random_garbage_is_refused(self):
        rng = random.Random(SEED)
        socks = self.attack(self.cluster, "n1",
                            lambda s: s.sendall(rng.randbytes(1 << 20)), connections=8)
        for s in socks:
            self.assertTrue(closed_by_peer(s), "garbage was not refused")
        self.assert_healthy(self.cluster, "n1", self.baseline)
        self.assertIn("refused a connection from 127.0.0.1:", self.cluster["n1"].stderr_text())

    def test_a_header_announcing_3_9_gib_is_refused(self):
        def huge_handshake(s):
            s.sendall(as_peer(basp_header(CLIENT_HANDSHAKE, HUGE)))

        def huge_message_after_a_handshake(s):
            s.sendall(link_frame(KIND_HELLO, b"nerve-link/3 n9"))
            s.recv(65536)  # the node's server handshake
            s.sendall(link_frame(KIND_BASP, client_handshake()))
            time.sleep(0.1)
            s.sendall(link_frame(KIND_BASP, basp_header(DIRECT_MESSAGE, HUGE, dest=1)))

        def huge_link_frame(s):
            s.sendall(link_frame(KIND_HELLO, b"nerve-link/3 n9")
                      + struct.pack(">BI", KIND_DATA, HUGE))

        def raw_basp(s):  # a peer of an older wire, or CAF itself
            s.sendall(basp_header(CLIENT_HANDSHAKE, HUGE))

        for send in (huge_handshake, huge_message_after_a_handshake, huge_link_frame, raw_basp):
            if send is raw_basp:
                time.sleep(1.1)  # refusals are logged once a second
            for s in self.attack(self.cluster, "n1", send, connections=4):
                self.assertTrue(closed_by_peer(s), f"{send.__name__} was not refused")
        # CAF alone zero-filled 3.75 GiB per such connection (about 1 s each).
        time.sleep(1.0)
        self.assert_healthy(self.cluster, "n1", self.baseline)
        log = self.cluster["n1"].stderr_text()
        self.assertIn("payload bytes, more than", log)
        self.assertIn("its first frame is no nerve hello", log)

    def test_a_handshake_header_without_payload_is_refused(self):
        # 32 bytes that made CAF 0.17.6 dereference a null payload (SIGSEGV).
        for s in self.attack(self.cluster, "n1",
                             lambda s: s.sendall(as_peer(basp_header(CLIENT_HANDSHAKE, 0))),
                             connections=2):
            self.assertTrue(closed_by_peer(s))
        for s in self.attack(self.cluster, "n1",
                             lambda s: s.sendall(as_peer(basp_header(SERVER_HANDSHAKE, 0, 3))),
                             connections=2):
            self.assertTrue(closed_by_peer(s))
        time.sleep(0.5)
        self.assert_healthy(self.cluster, "n1", self.baseline)

    def test_garbage_data_frames_are_dropped(self):
        # A hello naming a stranger, then data frames that are no nerve message, one
        # claiming a member's fetch, and a frame cut short by the close.
        rng = random.Random(SEED)
        frames = [link_frame(KIND_DATA, rng.randbytes(rng.randrange(1, 4096)))
                  for _ in range(200)]
        fetch_of_n2 = link_frame(KIND_DATA, b"\x01" + bytes(8) + b"\x06orders" + bytes(40))
        for s in self.attack(self.cluster, "n1",
                             lambda s: s.sendall(link_frame(KIND_HELLO, b"nerve-link/3 n9")
                                                 + b"".join(frames) + fetch_of_n2
                                                 + struct.pack(">BI", KIND_DATA, 100) + b"x"),
                             connections=3):
            s.close()
        time.sleep(1.0)
        self.assert_healthy(self.cluster, "n1", self.baseline)
        self.assertIn("dropped a data frame from node n9", self.cluster["n1"].stderr_text())
        # The links still carry forwards.
        self.assertEqual(self.publish_everywhere(), {201})

    def test_hundreds_of_connections_at_once(self):
        socks = self.attack(self.cluster, "n1", lambda s: None, connections=400)
        # Over the limit (64 at once) the gate closes them as they come.
        time.sleep(1.0)
        self.assert_healthy(self.cluster, "n1", self.baseline)
        closed = sum(closed_by_peer(s, timeout=0.05) for s in socks)
        self.assertGreaterEqual(closed, 400 - 64)
        # The rest send nothing and are closed within the frame timeout (10 s).
        self.assertTrue(all(closed_by_peer(s, timeout=15) for s in socks))
        self.assert_healthy(self.cluster, "n1", self.baseline)
        # The links still carry forwards.
        self.assertEqual(self.publish_everywhere(), {201})

    def publish_everywhere(self):
        statuses = set()
        for k in range(16):
            r = self.cluster["n1"].post("/v1/topics/orders/events",
                                        {"key": f"k{k}", "type": "t", "data": {}})
            statuses.add(r.status)
        return statuses


class TlsPortTest(HostileTestCase):

    def test_garbage_and_huge_headers_on_a_tls_port(self):
        pki = Pki()
        self.addCleanup(pki.cleanup)
        cluster = self.new_cluster(3, start=False)
        for node_id, srv in cluster.nodes.items():
            srv.write_config(pki.tls_config(node_id))
        cluster.start()
        self.wait_for(lambda: self.linked(cluster), what="3 TLS nodes linked\n"
                      + cluster.stderr_text())
        baseline = rss_kb(cluster["n1"].proc.pid)
        rng = random.Random(SEED)
        sends = [lambda s: s.sendall(rng.randbytes(1 << 16)),
                 lambda s: s.sendall(basp_header(CLIENT_HANDSHAKE, HUGE)),
                 lambda s: s.sendall(basp_header(CLIENT_HANDSHAKE, 0))]
        for send in sends:
            for s in self.attack(cluster, "n1", send, connections=4):
                self.assertTrue(closed_by_peer(s, timeout=15))
        self.assert_healthy(cluster, "n1", baseline)
        # The refusal is logged before the close; once in CI it was not there right
        # after the closes (cause unknown), so it gets a few seconds.
        self.wait_for(lambda: "TLS handshake failed" in cluster["n1"].stderr_text(), 5.0,
                      what="a logged TLS refusal\n" + cluster["n1"].stderr_text())
        self.attack(cluster, "n1", lambda s: None, connections=200)
        time.sleep(1.0)
        self.assert_healthy(cluster, "n1", baseline)


if __name__ == "__main__":
    unittest.main()
