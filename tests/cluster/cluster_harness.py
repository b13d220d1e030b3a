"""Runs N `nerve run` nodes as one cluster on loopback, for the cluster tests.

Each node is a tests/blackbox/harness.Server (same start-up, ready line, stop and
clean-up) with its own work and data directory, HTTP on 127.0.0.1:0 and these flags
(CONTRACT.md sections 1 and 9):

    --node-id nI --cluster-listen 127.0.0.1:PI
    --cluster-members n1@127.0.0.1:P1,n2@127.0.0.1:P2,...

The cluster ports are picked free before the first start and kept, so a node killed
with -9 and restarted comes back on the same data directory and the same address.
`dump_all()` writes `nerve __dump-log` of every node's data directory for
tests/cluster/checker.py; stop the nodes first (or kill them: a dump is of a stopped
node's directory).

`ReplicatedCluster` is cluster step 2 (CLUSTER.md section 3(c), CONTRACT.md section 9):
the same nodes plus an etcd cluster of their own (etcd_harness.py) and, in every node's
config, `cluster.etcd` (every member's client URL), a `cluster.name` unique to the run (so
two runs never share etcd keys), `replication_factor`, `min_insync`, `replica_lag` and
`lease_ttl`. It starts etcd before the nodes and removes both at the end.
"""

import os
import shutil
import signal
import sys
import tempfile
import uuid

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "blackbox"))

from harness import Server, ServerTestCase, listen_ports, run_nerve  # noqa: E402


def free_ports(n, host="127.0.0.1"):
    """`n` distinct TCP ports free on `host` now (below the ephemeral range: harness.py)."""
    return listen_ports(n, host)


def members_flag(ports, host="127.0.0.1"):
    """The --cluster-members value: n1@HOST:P1,n2@HOST:P2,..."""
    return ",".join(f"n{i}@{host}:{port}" for i, port in enumerate(ports, 1))


class Cluster:
    """N nodes n1..nN under one temp directory; nodes are named by id ("n2")."""

    def __init__(self, size=3, config=None, env=None, args=None, workdir=None):
        """`config` (a dict or YAML text), `env` and extra `args` apply to every node."""
        self._own_workdir = workdir is None
        self.workdir = workdir or tempfile.mkdtemp(prefix="nerve-cluster-")
        self.ports = free_ports(size)
        members = members_flag(self.ports)
        self.nodes = {}
        for i, port in enumerate(self.ports, 1):
            node_id = f"n{i}"
            node_dir = os.path.join(self.workdir, node_id)
            os.makedirs(node_dir, exist_ok=True)
            flags = ["--node-id", node_id, "--cluster-listen", f"127.0.0.1:{port}",
                     "--cluster-members", members]
            self.nodes[node_id] = Server(workdir=node_dir, config=config, env=env,
                                         args=flags + list(args or []))

    def __getitem__(self, node_id):
        return self.nodes[node_id]

    def ids(self):
        return list(self.nodes)

    def running(self):
        return [n for n, srv in self.nodes.items() if srv.running]

    def start(self, wait=True):
        """Starts every node, then waits for each: a node may wait for its peers to be
        ready, so none is waited for before all are started."""
        for srv in self.nodes.values():
            srv.start(wait=False)
        if wait:
            for srv in self.nodes.values():
                srv.wait_ready()
        return self

    def kill(self, node_id):
        """kill -9 of one node; returns its exit status (None if it was not running)."""
        return self.nodes[node_id].kill()

    def restart(self, node_id, wait=True):
        """Starts a stopped or killed node again: same data directory, same ports."""
        srv = self.nodes[node_id]
        if srv.running:
            srv.stop()
        srv.start(wait=wait)
        return srv

    def stop(self, node_id, sig=signal.SIGTERM):
        return self.nodes[node_id].stop(sig)

    def stop_all(self, sig=signal.SIGTERM):
        """Stops every node; returns {node id: exit status}."""
        return {n: srv.stop(sig) for n, srv in self.nodes.items()}

    def dump(self, node_id, path):
        """Writes `nerve __dump-log` of one node's data directory to `path`; fails if the
        node is still running or the dump fails."""
        srv = self.nodes[node_id]
        if srv.running:
            raise AssertionError(f"{node_id} is running: stop or kill it before dumping")
        r = run_nerve(["__dump-log", "--data-dir", srv.data_dir], timeout=120)
        if r.returncode != 0:
            raise AssertionError(f"__dump-log of {node_id} exited {r.returncode}: {r.stderr}")
        with open(path, "w", encoding="utf-8") as f:
            f.write(r.stdout)
        return path

    def dump_all(self, directory=None):
        """Dumps every node into `directory` (default: the cluster's work dir) and returns
        the checker's arguments, ["n1=PATH", ...]. A node that never started (no data
        directory) has nothing to dump and is left out."""
        directory = directory or self.workdir
        out = []
        for node_id, srv in self.nodes.items():
            if not os.path.isdir(srv.data_dir):
                continue
            path = self.dump(node_id, os.path.join(directory, f"{node_id}.dump"))
            out.append(f"{node_id}={path}")
        return out

    def stderr_text(self):
        """Every node's stderr, each under its id, for failure messages."""
        return "\n".join(f"--- {n} ---\n{srv.stderr_text()}" for n, srv in self.nodes.items())

    def cleanup(self):
        try:
            for srv in self.nodes.values():
                srv.cleanup()
        finally:
            if self._own_workdir:
                shutil.rmtree(self.workdir, ignore_errors=True)


def merged(base, extra):
    """A copy of dict `base` with dict `extra` merged in, nested dicts merged key by key."""
    out = dict(base or {})
    for k, v in (extra or {}).items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merged(out[k], v)
        else:
            out[k] = v
    return out


# The replication settings of the step-2 tests: three copies, two of which must be in sync
# to acknowledge; a follower silent for 2 s leaves the in-sync set; a dead leader's etcd
# lease lapses after 3 s (CONTRACT.md section 9: a new leader within 10 s).
REPLICATION = {"replication_factor": 3, "min_insync": 2, "replica_lag": "2s",
               "lease_ttl": "3s"}


def cluster_name(prefix="t"):
    """A cluster.name no other run shares (its etcd keys live under /nerve/<name>/)."""
    return f"{prefix}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def replication_config(etcd_endpoints, name, **settings):
    """The `cluster` section of a replicated node's config: REPLICATION, overridden by
    `settings`, with `etcd` and `name`."""
    return dict(REPLICATION, **settings, etcd=list(etcd_endpoints), name=name)


class ReplicatedCluster(Cluster):
    """A Cluster with replication on, over an etcd cluster of its own (`self.etcd`).

    `replication` overrides REPLICATION (e.g. {"min_insync": 2}); `config` is the rest of
    every node's config (a dict). `etcd_size` members are started by start(), before the
    nodes; `etcd` may instead be an etcd_harness.EtcdCluster made (and cleaned up) by the
    caller, started or not.
    """

    def __init__(self, size=3, config=None, replication=None, etcd=None, etcd_size=3,
                 workdir=None, **kw):
        import etcd_harness  # here: a step-1 test never needs it
        own_workdir = workdir is None
        workdir = workdir or tempfile.mkdtemp(prefix="nerve-repl-")
        self._own_etcd = etcd is None
        self.etcd = etcd or etcd_harness.EtcdCluster(
            etcd_size, workdir=os.path.join(workdir, "etcd"))
        self.name = cluster_name()
        cluster = replication_config(self.etcd.endpoints(), self.name, **(replication or {}))
        super().__init__(size, config=merged(config, {"cluster": cluster}), workdir=workdir,
                         **kw)
        self._own_workdir = own_workdir

    def start(self, wait=True):
        if self._own_etcd:
            self.etcd.start()
        return super().start(wait)

    def cleanup(self):
        try:
            for srv in self.nodes.values():
                srv.kill()
        finally:
            try:
                if self._own_etcd:
                    self.etcd.cleanup()
            finally:
                super().cleanup()


class ClusterTestCase(ServerTestCase):
    """ServerTestCase with a cluster of its own per test."""

    def new_cluster(self, size=3, start=True, **kw):
        cluster = Cluster(size, **kw)
        self.addCleanup(cluster.cleanup)
        if start:
            cluster.start()
        return cluster

    def new_replicated_cluster(self, size=3, start=True, **kw):
        cluster = ReplicatedCluster(size, **kw)
        self.addCleanup(cluster.cleanup)
        if start:
            cluster.start()
        return cluster
