"""T3 of CLUSTER.md section 4: the owner of the most partitions cut off from its peers
(not from its clients) by `iptables -j DROP` inside its network namespace, under load.

Topology: three namespaces on one bridge, node nI at 10.88.0.I in its own namespace, the
clients (this process) at 10.88.0.254 in the root namespace. The addresses are not
loopback, so the nodes need what CONTRACT.md section 9 asks of such a node: a private
cluster CA (made here with the openssl CLI) and cluster.tls on every node, and an
http.token. Each namespace has net.ipv4.tcp_syn_retries=2.

Two writers publish through every node, the isolated one included (scenario.py). A few
seconds in, the victim's namespace drops every packet from and to its peers for 15-20 s:

- through each other node, the victim's partitions answer 503 within 3 s (the forwards in
  flight when it happened wait for the heartbeat timeout, 2 s, and are answered 503
  "indeterminate"), and keep answering 503; their other partitions answer 201;
- through the victim itself, its own partitions answer 201 (clients still reach it) and
  every other partition 503.

Then the rules are flushed, the links come back, every partition takes writes through
every node, the load stops, and checker.py runs over every node's dump, the history
and the isolation window: besides T2's checks, no request through another node was
acknowledged for the victim's partitions while it was cut off, and every acknowledged
event is in its owner's log.

Skips itself, saying why, when not root, when network namespaces cannot be made, or when
iptables is missing (.ci/install-deps installs it). NERVE_SCENARIO_SEED=N replays a
run's random choices.
"""

import fcntl
import os
import shutil
import subprocess
import sys
import time
import unittest

import cluster_harness
import scenario

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "blackbox"))

from harness import Server  # noqa: E402

TOPIC_PARTITIONS = 8
WRITERS = 2
RATE_PER_WRITER = 20.0
SUBNET = "10.88.0"
CLIENT_ADDR = f"{SUBNET}.254"
CLUSTER_PORT = 7100
PREFIX = "nrvt"  # every namespace and link this test makes starts with it
BRIDGE = f"{PREFIX}br"
LOCK = "/run/lock/nerve-netns-scenario.lock"
CUT_OFF_503_WITHIN_S = 3.0  # after the rules are in place
HEARTBEAT_TIMEOUT_S = 2.0  # middleman.connection-timeout (actors/cluster_actor.cpp)


def run(*cmd, check=True):
    r = subprocess.run(list(cmd), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {r.returncode}: {r.stderr.strip()}")
    return r


def namespace(i):
    return f"{PREFIX}-n{i}"


def address(i):
    return f"{SUBNET}.{i}"


class Network:
    """The bridge, three namespaces with a veth each, and the firewall of one of them."""

    def __init__(self, size=3):
        self.size = size
        self.made = False

    def why_not(self):
        """Why this machine cannot run the scenario, or None."""
        if os.geteuid() != 0:
            return "needs root (network namespaces and iptables)"
        for tool in ("ip", "iptables", "openssl"):
            if shutil.which(tool) is None:
                return (f"`{tool}` is missing (.ci/install-deps installs iptables; "
                        f"apt-get install -y iptables)")
        probe = f"{PREFIX}-probe"
        r = run("ip", "netns", "add", probe, check=False)
        if r.returncode != 0:
            return f"network namespaces are not allowed here: {r.stderr.strip()}"
        try:
            r = run("ip", "netns", "exec", probe, "iptables", "-S", check=False)
            if r.returncode != 0:
                return f"iptables does not work inside a namespace: {r.stderr.strip()}"
        finally:
            run("ip", "netns", "del", probe, check=False)
        return None

    def remove(self):
        """Removes this test's namespaces and bridge, from this run or a crashed one."""
        names = run("ip", "netns", "list", check=False).stdout.split()
        for ns in names:
            if ns.startswith(PREFIX + "-"):
                run("ip", "netns", "del", ns, check=False)
        links = run("ip", "-o", "link", "show", check=False).stdout
        for line in links.splitlines():
            name = line.split(":")[1].strip().split("@")[0]
            if name.startswith(PREFIX):
                run("ip", "link", "del", name, check=False)

    def make(self):
        self.remove()
        self.made = True
        run("ip", "link", "add", BRIDGE, "type", "bridge")
        run("ip", "addr", "add", f"{CLIENT_ADDR}/24", "dev", BRIDGE)
        run("ip", "link", "set", BRIDGE, "up")
        for i in range(1, self.size + 1):
            ns, veth = namespace(i), f"{PREFIX}-v{i}"
            run("ip", "netns", "add", ns)
            run("ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
            run("ip", "link", "set", veth, "master", BRIDGE, "up")
            run("ip", "-n", ns, "addr", "add", f"{address(i)}/24", "dev", "eth0")
            run("ip", "-n", ns, "link", "set", "eth0", "up")
            run("ip", "-n", ns, "link", "set", "lo", "up")
            # A dial into a cut-off peer gives up after ~7 s, not ~127 s.
            run("ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv4.tcp_syn_retries=2")

    def isolate(self, i):
        """Drops every packet between node i and its peers, both ways; clients still pass."""
        ns = namespace(i)
        for j in range(1, self.size + 1):
            if j != i:
                run("ip", "netns", "exec", ns, "iptables", "-A", "INPUT", "-s", address(j),
                    "-j", "DROP")
                run("ip", "netns", "exec", ns, "iptables", "-A", "OUTPUT", "-d", address(j),
                    "-j", "DROP")

    def heal(self, i):
        run("ip", "netns", "exec", namespace(i), "iptables", "-F")


def make_ca(directory, node_ids):
    """A private cluster CA and a certificate per node (CN = the node id), with the openssl
    CLI as docs/operations.md shows; returns {node id: (cert, key)} and the CA's path."""
    ca_key, ca = os.path.join(directory, "ca.key"), os.path.join(directory, "ca.pem")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    run("openssl", "req", "-x509", *ec, "-keyout", ca_key, "-out", ca, "-days", "2",
        "-subj", "/CN=nerve scenario cluster CA")
    out = {}
    for node_id in node_ids:
        key, csr, cert = (os.path.join(directory, f"{node_id}.{ext}")
                          for ext in ("key", "csr", "pem"))
        run("openssl", "req", *ec, "-keyout", key, "-out", csr, "-subj", f"/CN={node_id}")
        run("openssl", "x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key,
            "-CAcreateserial", "-out", cert, "-days", "2")
        out[node_id] = (cert, key)
    return out, ca


class NamespacedServer(Server):
    """A harness Server started inside a network namespace."""

    def __init__(self, ns, **kw):
        super().__init__(**kw)
        self.ns = ns

    def command(self):
        # `ip netns exec` execs nerve: the pid is nerve's, so kill and stop reach it.
        return ["ip", "netns", "exec", self.ns] + super().command()


class NamespacedCluster(cluster_harness.Cluster):
    """cluster_harness.Cluster with node nI in namespace I at 10.88.0.I, with TLS and a
    token (non-loopback addresses need both). A `cluster` section in `config` (the
    replicated variant's etcd and replication settings) is kept, TLS added to it."""

    def __init__(self, workdir, token, size=3, config=None):  # noqa: super().__init__ not run
        self._own_workdir = False
        self.workdir = workdir
        self.ports = [CLUSTER_PORT] * size
        ids = [f"n{i}" for i in range(1, size + 1)]
        certs, ca = make_ca(workdir, ids)
        members = ",".join(f"n{i}@{address(i)}:{CLUSTER_PORT}" for i in range(1, size + 1))
        self.nodes = {}
        for i, node_id in enumerate(ids, 1):
            node_dir = os.path.join(workdir, node_id)
            os.makedirs(node_dir, exist_ok=True)
            cert, key = certs[node_id]
            node_config = dict(config or {})
            node_config["http"] = {"token": token}
            node_config["cluster"] = dict(node_config.get("cluster") or {},
                                          tls={"cert": cert, "key": key, "ca": ca})
            flags = ["--node-id", node_id, "--cluster-listen", f"{address(i)}:{CLUSTER_PORT}",
                     "--cluster-members", members]
            self.nodes[node_id] = NamespacedServer(namespace(i), workdir=node_dir,
                                                   config=node_config, args=flags,
                                                   listen=f"{address(i)}:0")


class PartitionScenarioTest(scenario.ScenarioTestCase):
    scenario = "partition"

    def setUp(self):
        self.net = Network()
        why = self.net.why_not()
        if why:
            self.skipTest(f"the network-partition scenario {why}")
        super().setUp()

    def test_the_busiest_owner_cut_off_from_its_peers_under_load(self):
        net = self.net
        os.makedirs(os.path.dirname(LOCK), exist_ok=True)
        with open(LOCK, "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # one run at a time: names and subnet are fixed
            try:
                net.make()
                with self.seeded():
                    self.run_scenario(net)
            finally:
                net.remove()

    def run_scenario(self, net):
        rng = self.rng
        topic = f"partition.s{self.seed}"
        token = f"scenario-{self.seed}"
        cluster = NamespacedCluster(self.workdir, token, config={
            "topics": {"defaults": {"partitions": TOPIC_PARTITIONS}}})
        self.addCleanup(cluster.cleanup)
        self.cluster = cluster
        cluster.start()
        nodes = scenario.Nodes(cluster.nodes, token)
        scenario.wait_until(scenario.all_linked(nodes, nodes.ids()), 30,
                            "all nodes linked over TLS across the bridge")
        # The topic exists on every node (its home decides the partition count): one probe
        # of each partition through each node, all 201; then the busiest owner.
        hist_path, hist, sender, prober, owners, victim = self.probe_and_pick_victim(
            nodes, topic, TOPIC_PARTITIONS)
        topic = sender.topic
        victim_index = int(victim[1:])
        cut_parts = sorted(p for p, o in owners.items() if o == victim)
        other_parts = sorted(p for p, o in owners.items() if o != victim)
        others = [n for n in nodes.ids() if n != victim]
        self.log(f"owners {owners}; victim {victim} owns {cut_parts}")
        self.result.update(victim=victim, victim_partitions=len(cut_parts))

        load = scenario.Load(sender, self.seed, WRITERS, RATE_PER_WRITER).start()
        stopped = False
        try:
            time.sleep(rng.uniform(4.0, 6.0))
            cut_s = rng.uniform(15.0, 20.0)

            # -- cut off ------------------------------------------------------------------
            net.isolate(victim_index)
            t_cut = hist.now()
            first_503 = {}
            for node_id in others:
                for p in cut_parts:
                    r, tried = prober.until(node_id, p, {503},
                                            CUT_OFF_503_WITHIN_S + HEARTBEAT_TIMEOUT_S + 5)
                    self.assertEqual(r.status, 503, f"{topic}/{p} through {node_id} after "
                                                    f"{victim} was cut off: {tried}")
                    first_503[(node_id, p)] = r.t1 - t_cut
                    self.assertNotIn("NO Retry-After", r.detail, r)
            worst = max(first_503.values())
            self.result["cut_503_worst_ms"] = round(worst * 1000, 1)
            self.log(f"503 after the cut: worst {worst * 1000:.0f} ms over {len(first_503)} "
                     f"node/partition pairs")
            self.assertLessEqual(worst, CUT_OFF_503_WITHIN_S,
                                 f"a partition of {victim} answered 503 only {worst:.2f} s "
                                 f"after it was cut off")
            # Down, not merely slow: the next ones are answered at once, naming the victim.
            t_down = hist.now()
            self.sweep(prober, victim, others, cut_parts, other_parts)
            self.result["down_sweep_ms"] = round((hist.now() - t_down) * 1000, 1)
            time.sleep(max(0.0, cut_s / 2 - (hist.now() - t_cut)))
            self.sweep(prober, victim, others, cut_parts, other_parts)
            time.sleep(max(0.0, cut_s - (hist.now() - t_cut)))

            # -- heal ---------------------------------------------------------------------
            t_heal = hist.now()
            net.heal(victim_index)
            scenario.wait_until(scenario.all_linked(nodes, nodes.ids()), 30,
                                "every node linked again after the heal")
            linked_s = hist.now() - t_heal
            self.log(f"{victim} cut off for {t_heal - t_cut:.1f} s; linked again "
                     f"{linked_s:.1f} s after the heal")
            self.result.update(cut_s=round(t_heal - t_cut, 1), relinked_s=round(linked_s, 1))
            for node_id in nodes.ids():
                for p in range(TOPIC_PARTITIONS):
                    r, tried = prober.until(node_id, p, {201}, 10.0, pause_s=0.2)
                    self.assertEqual(r.status, 201, f"{topic}/{p} through {node_id} after the "
                                                    f"heal: {tried[-3:]}")
            time.sleep(rng.uniform(3.0, 5.0))
            unresolved = load.stop(drain_s=20.0)
            stopped = True
        finally:
            if not stopped:
                load.stopping.set()
                load.drain_deadline = 0
            net.heal(victim_index)

        hist.close()
        requests = sender.requests
        self.result.update(requests=len(requests), statuses=scenario.summarize(requests),
                           events=dict(hist.counts), unresolved=len(unresolved))
        self.log(f"{len(requests)} requests {scenario.summarize(requests)}; events "
                 f"{hist.counts}; {len(unresolved)} ids still indeterminate")
        self.assertEqual(load.unexpected, [], "requests refused with a 4xx")
        # While cut off (once the peers noticed), the writers' requests that stayed on one
        # side were answered 2xx: through another node to the other partitions, through the
        # victim to its own.
        settled = t_cut + CUT_OFF_503_WITHIN_S
        during = [r for r in requests if r.t0 >= settled and r.t1 <= t_heal and r.who != "probe"
                  and ((r.node != victim and r.partitions <= set(other_parts))
                       or (r.node == victim and r.partitions <= set(cut_parts)))]
        bad = [r for r in during if not (isinstance(r.status, int) and r.status < 300)]
        self.assertGreaterEqual(len(during), 5, "too few one-sided requests while cut off")
        self.assertEqual(bad, [], f"{len(bad)} of {len(during)} one-sided requests failed "
                                  f"while {victim} was cut off")

        codes = cluster.stop_all()
        self.assertEqual(codes, {n: 0 for n in nodes.ids()}, cluster.stderr_text()[-3000:])
        self.check_logs(cluster, hist_path, [
            {"kind": "isolate", "node": victim, "t0": t_cut, "t1": t_heal,
             "partitions": [f"{topic}/{p}" for p in cut_parts]}])

    def sweep(self, prober, victim, others, cut_parts, other_parts):
        """Each side answers for its own partitions and refuses the other side's at once."""
        for node_id in others:
            for p in cut_parts:
                r = prober.probe(node_id, p)
                self.assertEqual(r.status, 503, r)
                self.assertIn(victim, r.detail, r)
                self.assertLess(r.t1 - r.t0, 1.0, f"a 503 that took {r.t1 - r.t0:.2f} s: {r}")
            for p in other_parts:
                self.assertEqual(prober.probe(node_id, p).status, 201)
        for p in cut_parts:
            self.assertEqual(prober.probe(victim, p).status, 201)
        for p in other_parts:
            r = prober.probe(victim, p)
            self.assertEqual(r.status, 503, r)
            self.assertLess(r.t1 - r.t0, 1.0, f"a 503 that took {r.t1 - r.t0:.2f} s: {r}")


if __name__ == "__main__":
    unittest.main()
