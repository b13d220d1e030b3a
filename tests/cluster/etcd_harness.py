"""Runs N etcd members as one etcd cluster for the replicated cluster tests (cluster step 2,
CLUSTER.md section 3(c): etcd holds membership, leaders, epochs and in-sync sets).

The Python twin of tests/support/etcd_process.hpp: each member gets its own data
directory under one temp directory, a client and a peer port picked free on its host
before the first start (and kept, so a member killed with -9 comes back at the same
address on the same data), and logs to `<name>.log` there. `start()` waits until every
member answers GET /health with {"health": "true"}, which needs a quorum and a leader.

The binary is $NERVE_ETCD, else /usr/bin/etcd (Debian's etcd-server, 3.4; CI installs it
with .ci/install-deps). `etcd_binary()` raises unittest.SkipTest, saying so, when it is
missing: a machine without etcd cannot run replicated tests, which is not a failure of
nerve.

The heartbeat and election timeout are shorter than etcd's defaults (100 ms / 1000 ms) so
a test that kills an etcd member gets a new etcd leader in about a second; they stay well
above loopback latency. Pre-vote is on (etcd 3.5's default, off in 3.4): a member cut
off by the network-partition scenario rejoins without forcing an etcd election.
`range_prefix()` reads keys through etcd's v3 JSON gateway (what
nerve itself talks), for tests that look at what nerve wrote.

Python 3 standard library only.
"""

import atexit
import base64
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import unittest

DEFAULT_BINARY = "/usr/bin/etcd"
HEALTHY_TIMEOUT_S = 20.0

_live = set()
_live_lock = threading.Lock()


def _kill_leftovers():
    """A last resort (a test that died without its cleanups): no etcd outlives the tests."""
    with _live_lock:
        procs = list(_live)
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()


atexit.register(_kill_leftovers)


def etcd_binary():
    """The etcd binary, or SkipTest naming what to install."""
    path = os.environ.get("NERVE_ETCD") or DEFAULT_BINARY
    if not os.access(path, os.X_OK):
        raise unittest.SkipTest(f"etcd not found at {path}: the replicated cluster tests need "
                                f"Debian's etcd-server (.ci/install-deps installs it; "
                                f"apt-get install -y etcd-server) or NERVE_ETCD set to an "
                                f"etcd 3.4 binary")
    return path


def free_port(host="127.0.0.1"):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def b64(value):
    """etcd's JSON gateway carries keys and values base64-encoded."""
    raw = value if isinstance(value, bytes) else value.encode("utf-8")
    return base64.b64encode(raw).decode("ascii")


def unb64(text):
    return base64.b64decode(text).decode("utf-8", "replace")


def prefix_end(prefix):
    """etcd's range_end for "every key starting with prefix": the prefix with its last
    byte plus one."""
    raw = bytearray(prefix.encode("utf-8"))
    while raw and raw[-1] == 0xFF:
        raw.pop()
    if not raw:
        return b"\0"
    raw[-1] += 1
    return bytes(raw)


class Member:
    """One etcd member: its name, host, ports, data directory, log and process."""

    def __init__(self, name, host, client_port, peer_port, data_dir, log_path):
        self.name = name
        self.host = host
        self.client_port = client_port
        self.peer_port = peer_port
        self.data_dir = data_dir
        self.log_path = log_path
        self.proc = None

    @property
    def client_url(self):
        return f"http://{self.host}:{self.client_port}"

    @property
    def peer_url(self):
        return f"http://{self.host}:{self.peer_port}"

    @property
    def running(self):
        return self.proc is not None and self.proc.poll() is None


class EtcdCluster:
    """`size` members e1..eN of one new etcd cluster.

    `hosts` (one address per member, default all 127.0.0.1) and `wrap(i, argv) -> argv`
    (e.g. `ip netns exec NS ...`, where member i listens on its namespace's address) let
    the network-partition scenario put each member in a namespace of its own; `ports`
    fixes the (client, peer) ports instead of picking free ones (a namespace's ports are
    not the root namespace's to probe).
    """

    def __init__(self, size=3, workdir=None, hosts=None, wrap=None, ports=None,
                 heartbeat_ms=100, election_ms=1000):
        self.binary = etcd_binary()
        self._own_workdir = workdir is None
        self.workdir = workdir or tempfile.mkdtemp(prefix="nerve-etcd-")
        os.makedirs(self.workdir, exist_ok=True)
        self.wrap = wrap
        self.heartbeat_ms = heartbeat_ms
        self.election_ms = election_ms
        hosts = hosts or ["127.0.0.1"] * size
        self.members = []
        for i in range(size):
            client_port, peer_port = ports[i] if ports else (free_port(hosts[i]),
                                                              free_port(hosts[i]))
            name = f"e{i + 1}"
            self.members.append(Member(name, hosts[i], client_port, peer_port,
                                       os.path.join(self.workdir, name),
                                       os.path.join(self.workdir, f"{name}.log")))
        if not ports and len({(m.host, p) for m in self.members
                              for p in (m.client_port, m.peer_port)}) != 2 * size:
            raise AssertionError("etcd_harness: two members picked the same port; try again")
        self.token = f"nerve-test-{os.getpid()}-{os.path.basename(self.workdir)}"

    # -- addresses --------------------------------------------------------------------

    def endpoints(self):
        """Every member's client URL, for nerve's cluster.etcd."""
        return [m.client_url for m in self.members]

    def endpoint(self, i):
        return self.members[i].client_url

    # -- lifecycle ----------------------------------------------------------------------

    def command(self, i):
        m = self.members[i]
        initial = ",".join(f"{o.name}={o.peer_url}" for o in self.members)
        argv = [self.binary,
                f"--name={m.name}",
                f"--data-dir={m.data_dir}",
                f"--listen-client-urls={m.client_url}",
                f"--advertise-client-urls={m.client_url}",
                f"--listen-peer-urls={m.peer_url}",
                f"--initial-advertise-peer-urls={m.peer_url}",
                f"--initial-cluster={initial}",
                "--initial-cluster-state=new",
                f"--initial-cluster-token={self.token}",
                f"--heartbeat-interval={self.heartbeat_ms}",
                f"--election-timeout={self.election_ms}",
                "--pre-vote=true",
                "--logger=zap",
                "--log-outputs=stderr"]
        return self.wrap(i, argv) if self.wrap else argv

    def start(self, wait=True):
        """Starts every member that is not running, then (by default) waits until each is
        healthy: a member alone never is, so none is waited for before all are started."""
        for i in range(len(self.members)):
            self.start_member(i, wait=False)
        if wait:
            for i in range(len(self.members)):
                self.wait_healthy(i)
        return self

    def start_member(self, i, wait=True):
        """Starts member i (again, on the data it has)."""
        m = self.members[i]
        if m.running:
            return m
        log = open(m.log_path, "ab")
        try:
            m.proc = subprocess.Popen(self.command(i), stdin=subprocess.DEVNULL, stdout=log,
                                      stderr=subprocess.STDOUT, start_new_session=True,
                                      cwd=self.workdir)
        finally:
            log.close()
        with _live_lock:
            _live.add(m.proc)
        if wait:
            self.wait_healthy(i)
        return m

    def kill(self, i):
        """kill -9 of member i, waiting until it has exited."""
        m = self.members[i]
        if m.proc is None:
            return None
        if m.proc.poll() is None:
            m.proc.send_signal(signal.SIGKILL)
        code = m.proc.wait()
        with _live_lock:
            _live.discard(m.proc)
        return code

    def stop(self, i, timeout=15.0):
        """SIGTERM of member i; kill -9 if it has not exited within `timeout`."""
        m = self.members[i]
        if m.proc is None:
            return None
        if m.proc.poll() is None:
            m.proc.send_signal(signal.SIGTERM)
            try:
                m.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                return self.kill(i)
        with _live_lock:
            _live.discard(m.proc)
        return m.proc.returncode

    def cleanup(self):
        for i in range(len(self.members)):
            self.kill(i)
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.cleanup()

    # -- health and reads ----------------------------------------------------------------

    def _request(self, i, method, path, body=None, timeout=2.0):
        m = self.members[i]
        conn = http.client.HTTPConnection(m.host, m.client_port, timeout=timeout)
        try:
            data = None if body is None else json.dumps(body).encode("utf-8")
            headers = {"Content-Type": "application/json"} if data is not None else {}
            conn.request(method, path, body=data, headers=headers)
            res = conn.getresponse()
            return res.status, res.read()
        finally:
            conn.close()

    def healthy(self, i):
        """True when member i answers GET /health with health "true" (it sees a leader)."""
        try:
            status, body = self._request(i, "GET", "/health")
            return status == 200 and json.loads(body.decode("utf-8")).get("health") == "true"
        except (OSError, ValueError, http.client.HTTPException):
            return False

    def wait_healthy(self, i, timeout=HEALTHY_TIMEOUT_S):
        m = self.members[i]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.healthy(i):
                return
            if m.proc is not None and m.proc.poll() is not None:
                raise AssertionError(f"etcd member {m.name} exited with {m.proc.returncode}; "
                                     f"its log:\n{self.log_text(i)[-3000:]}")
            time.sleep(0.05)
        raise AssertionError(f"etcd member {m.name} at {m.client_url} is not healthy after "
                             f"{timeout} s; its log:\n{self.log_text(i)[-3000:]}")

    def log_text(self, i):
        try:
            with open(self.members[i].log_path, encoding="utf-8", errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def post(self, path, body, member=None, timeout=5.0):
        """POSTs to the v3 JSON gateway of `member` (default: the first healthy one) and
        returns the decoded JSON answer."""
        order = [member] if member is not None else range(len(self.members))
        last = None
        for i in order:
            if not self.members[i].running:
                continue
            try:
                status, data = self._request(i, "POST", path, body, timeout)
            except (OSError, http.client.HTTPException) as e:
                last = e
                continue
            if status != 200:
                last = f"{status} {data[:300]!r}"
                continue
            return json.loads(data.decode("utf-8"))
        raise AssertionError(f"etcd {path}: no member answered: {last}")

    def put(self, key, value, member=None):
        return self.post("/v3/kv/put", {"key": b64(key), "value": b64(value)}, member)

    def range_prefix(self, prefix, member=None):
        """{key: value} of every key under `prefix` (both decoded as UTF-8)."""
        answer = self.post("/v3/kv/range", {"key": b64(prefix),
                                            "range_end": b64(prefix_end(prefix))}, member)
        return {unb64(kv["key"]): unb64(kv.get("value", "")) for kv in answer.get("kvs", [])}
