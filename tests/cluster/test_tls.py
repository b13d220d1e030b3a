"""cluster.tls on three real nodes (CONTRACT.md section 9, Security).

Each test makes a private CA and node certificates with the openssl CLI (tls_pki.py, the
commands of docs/operations.md) in its cluster's temp dir. Nodes link over TLS and forward
publishes; a node whose certificate another CA signed never joins and the others keep
working; TLS and plaintext nodes never link; unusable TLS files stop a node at start-up.
"""

import socket
import threading
import time
import unittest

from cluster_harness import ClusterTestCase
from tls_pki import Pki

TOPIC = "orders"


class TlsTestCase(ClusterTestCase):

    def tls_cluster(self, configs):
        """Three nodes n1..n3; `configs(node_id)` returns each one's config (None: no
        config file, so plaintext)."""
        cluster = self.new_cluster(3, start=False)
        for node_id, srv in cluster.nodes.items():
            config = configs(node_id)
            if config is not None:
                srv.write_config(config)
        cluster.start()
        return cluster

    def states(self, cluster, node_id):
        r = cluster[node_id].get("/v1/cluster")
        self.assertEqual(r.status, 200, r)
        return {m["id"]: m for m in r.json()["nodes"]}

    def wait_up(self, cluster, pairs, timeout=15.0):
        """Waits until for each (a, b) node a sees node b up."""
        def all_up():
            return all(self.states(cluster, a)[b]["state"] == "up" for a, b in pairs)
        self.wait_for(all_up, timeout=timeout, what=f"links {pairs} up\n" + cluster.stderr_text())

    def hold(self, cluster, seconds, up, down):
        """For `seconds`, every half second: each (a, b) in `up` stays up and each in
        `down` stays down, as a sees b."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            for a, b in up:
                self.assertEqual(self.states(cluster, a)[b]["state"], "up",
                                 f"{a} lost {b}:\n" + cluster.stderr_text())
            for a, b in down:
                self.assertEqual(self.states(cluster, a)[b]["state"], "down",
                                 f"{a} linked to {b}:\n" + cluster.stderr_text())
            time.sleep(0.5)

    def owner(self, cluster, via, partition):
        for m in self.states(cluster, via).values():
            if f"{TOPIC}/{partition}" in m["partitions"]:
                return m["id"]
        self.fail(f"{via} names no owner of {TOPIC}/{partition}")

    def publish(self, cluster, via, key):
        return cluster[via].post(f"/v1/topics/{TOPIC}/events",
                                 {"key": key, "type": "t", "data": {"k": key}})


class TlsLinkTest(TlsTestCase):

    def test_three_tls_nodes_link_and_forward_to_a_remote_owner(self):
        pki = Pki()
        self.addCleanup(pki.cleanup)
        cluster = self.tls_cluster(pki.tls_config)
        everyone = [(a, b) for a in cluster.ids() for b in cluster.ids()]
        self.wait_up(cluster, everyone)
        for node_id in cluster.ids():
            self.assertIn(f"node {node_id} listens on 127.0.0.1:", cluster[node_id].stderr_text())
            self.assertIn("(TLS)", cluster[node_id].stderr_text())
        # Publish through n1 until an event lands on a partition another node owns.
        remote = None
        for k in range(64):
            r = self.publish(cluster, "n1", f"k{k}")
            self.assertEqual(r.status, 201, r)
            event = r.json()["events"][0]
            owner = self.owner(cluster, "n1", event["partition"])
            if owner != "n1":
                remote = (event, owner)
                break
        self.assertIsNotNone(remote, "no key of 64 landed on another node's partition")
        event, owner = remote
        stored = cluster[owner].read_partition(TOPIC, event["partition"])
        self.assertIn((event["id"], event["offset"]), [(e["id"], e["offset"]) for e in stored])
        self.hold(cluster, 1.0, up=everyone, down=[])


class TlsRefusalTest(TlsTestCase):

    def setUp(self):
        self.pki = Pki()
        self.addCleanup(self.pki.cleanup)
        self.other = Pki(name="another CA")
        self.addCleanup(self.other.cleanup)

    def test_a_node_with_a_certificate_of_another_ca_never_joins(self):
        # n2 trusts the cluster CA but shows a certificate of another CA.
        def config(node_id):
            if node_id == "n2":
                return self.other.tls_config("n2", ca=self.pki.ca)
            return self.pki.tls_config(node_id)
        cluster = self.tls_cluster(config)
        good = [("n1", "n3"), ("n3", "n1")]
        self.wait_up(cluster, good)
        # n1 dials n2 and refuses n2's certificate; n2 dials n3, whose gate refuses it.
        self.wait_for(lambda: "certificate verify failed" in cluster["n1"].stderr_text()
                      and "certificate verify failed" in cluster["n3"].stderr_text(),
                      what="n1 and n3 refusing n2\n" + cluster.stderr_text())
        n1_log = cluster["n1"].stderr_text()
        self.assertRegex(n1_log, r"cannot link to node n2 \(127\.0\.0\.1:\d+\): TLS handshake "
                                 r"failed: certificate verify failed")
        self.assertRegex(cluster["n3"].stderr_text(),
                         r"refused a connection from 127\.0\.0\.1:\d+: TLS handshake failed: "
                         r"certificate verify failed")
        # n2 stays down for several seconds, and the good link never drops meanwhile.
        self.hold(cluster, 5.0, up=good, down=[("n1", "n2"), ("n3", "n2"), ("n2", "n1"),
                                               ("n2", "n3")])
        # Forwards to n2's partitions answer 503 at once; the others keep answering 201,
        # n1 forwarding to n3 included.
        statuses, forwarded = set(), False
        for k in range(64):
            r = self.publish(cluster, "n1", f"k{k}")
            statuses.add(r.status)
            if r.status == 503:
                self.assertIn("retry-after", r.headers)
                self.assertIn("n2", r.json()["detail"])
            else:
                self.assertEqual(r.status, 201, r)
                event = r.json()["events"][0]
                forwarded |= self.owner(cluster, "n1", event["partition"]) == "n3"
            if statuses == {201, 503} and forwarded:
                break
        self.assertEqual(statuses, {201, 503})
        self.assertTrue(forwarded, "no publish through n1 reached n3")
        for node_id in ("n1", "n3"):
            self.assertNotRegex(cluster[node_id].stderr_text(), r"node n[13] .* is down",
                                f"the good link dropped:\n{cluster.stderr_text()}")

    def test_tls_and_plaintext_nodes_never_link(self):
        # n2 runs without cluster.tls (allowed on loopback); n1 and n3 with it.
        cluster = self.tls_cluster(
            lambda node_id: None if node_id == "n2" else self.pki.tls_config(node_id))
        self.wait_up(cluster, [("n1", "n3"), ("n3", "n1")])
        # n1 dials n2 with a TLS handshake, which n2's gate refuses on its first byte
        # without a word of its own: n1 reads the close, never a plaintext answer.
        self.wait_for(lambda: "looks like a TLS handshake" in cluster["n2"].stderr_text()
                      and "during the TLS handshake" in cluster["n1"].stderr_text(),
                      what="n2 refusing n1's TLS handshake\n" + cluster.stderr_text())
        self.assertRegex(cluster["n1"].stderr_text(),
                         r"cannot link to node n2 .*closed the connection during the TLS "
                         r"handshake")
        self.hold(cluster, 5.0, up=[("n1", "n3"), ("n3", "n1")],
                  down=[("n1", "n2"), ("n3", "n2"), ("n2", "n1"), ("n2", "n3")])

    def test_a_member_answering_in_plaintext_is_named_as_without_tls(self):
        # n2's address is a plain TCP server that speaks first (no nerve, no TLS): n1's
        # handshake reads plaintext and its log says what that likely means.
        cluster = self.new_cluster(2, start=False)
        cluster["n1"].write_config(self.pki.tls_config("n1"))
        plain = socket.create_server(("127.0.0.1", cluster.ports[1]))
        self.addCleanup(plain.close)
        talker = threading.Thread(target=self.speak_plaintext, args=(plain,), daemon=True)
        talker.start()
        cluster["n1"].start()
        self.wait_for(lambda: "answers without TLS" in cluster["n1"].stderr_text(),
                      what="n1 naming n2 as without TLS\n" + cluster.stderr_text())
        self.assertRegex(cluster["n1"].stderr_text(),
                         r"cannot link to node n2 \(127\.0\.0\.1:\d+\): TLS handshake failed: "
                         r"wrong version number \(the peer answers without TLS: does it run "
                         r"without cluster\.tls\?\)")

    @staticmethod
    def speak_plaintext(server):
        try:
            while True:
                conn, _ = server.accept()
                with conn:
                    conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
        except OSError:
            return


class TlsStartupTest(TlsTestCase):

    def setUp(self):
        self.pki = Pki()
        self.addCleanup(self.pki.cleanup)

    def start_fails(self, tls, needle):
        cluster = self.new_cluster(1, start=False)
        srv = cluster["n1"]
        srv.write_config({"cluster": {"tls": tls}})
        srv.start(wait=False)
        code = srv.proc.wait(30)
        srv.stop()
        self.assertNotEqual(code, 0, srv.stderr_text())
        self.assertIn(needle, srv.stderr_text())

    def test_a_key_of_another_certificate_stops_the_node(self):
        n1, n2 = self.pki.node("n1"), self.pki.node("n2")
        self.start_fails({"cert": n1["cert"], "key": n2["key"], "ca": self.pki.ca},
                         f"cluster.tls.key {n2['key']} does not belong to the certificate")

    def test_a_ca_file_without_a_certificate_stops_the_node(self):
        n1 = self.pki.node("n1")
        self.start_fails({"cert": n1["cert"], "key": n1["key"], "ca": n1["key"]},
                         f"cluster.tls.ca {n1['key']} holds no PEM CA certificate")


if __name__ == "__main__":
    unittest.main()
