"""Black-box harness for nerve: runs the real binary and talks HTTP to it.

Only the Python standard library is used. Every server gets a fresh temporary
directory (data dir, config file, cwd), listens on 127.0.0.1:0 and is found by
parsing the `ready in N ms: http://HOST:PORT` line it logs. Processes and temp
dirs are cleaned up even when a test fails (unittest cleanups plus an atexit
hook as a last resort).
"""

import atexit
import http.client
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import unittest
import uuid

READY_RE = re.compile(r"ready in \d+ ms: http://(\S+):(\d+)")
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 30.0
# Set by tests/sanitize/check-reports in a sanitizer build: cleanup stops a
# server still running with SIGTERM, not SIGKILL, so its shutdown runs
# instrumented and LeakSanitizer checks it at exit (the report fails the test
# through check-reports, whatever the test asked of the server).
SANITIZED = bool(os.environ.get("NERVE_SANITIZED"))
# The tests' RSS bounds hold in the normal build only: under AddressSanitizer a
# process's RSS is not its own memory (up to 256 MiB of freed memory in the
# quarantine that catches a use after free, a redzone around every allocation,
# the shadow), so a sanitizer run checks everything else those tests check.
RSS_BOUNDS_CHECKED = not SANITIZED
PROBLEM_TYPE = "application/problem+json"
# One sample line of the Prometheus text format, and one label pair of its {...}.
SAMPLE_RE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$')
LABEL_RE = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')

_live_processes = set()
_live_lock = threading.Lock()


def _kill_leftovers():
    with _live_lock:
        procs = list(_live_processes)
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()


atexit.register(_kill_leftovers)


def listen_ports(n, host="127.0.0.1"):
    """`n` distinct TCP ports free on `host` now, for listeners that must be named before
    they start (cluster members). Drawn below the kernel's ephemeral range: a port the
    kernel hands out itself can go to another process's outgoing connection (a node
    dialling members not yet up) between this check and the listener's bind."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            ephemeral_low = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        ephemeral_low = 32768
    low = max(1024, min(20000, ephemeral_low - 4000))
    rng = random.Random()
    ports = []
    for _ in range(1000):
        if len(ports) == n:
            return ports
        port = rng.randrange(low, ephemeral_low)
        if port in ports:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
        ports.append(port)
    if len(ports) == n:
        return ports
    raise AssertionError(f"no {n} free ports on {host} in {low}-{ephemeral_low - 1}")


def nerve_bin():
    path = os.environ.get("NERVE_BIN")
    if not path:
        here = os.path.dirname(os.path.abspath(__file__))
        path = os.path.join(here, "..", "..", "build", "runtime", "nerve")
    path = os.path.abspath(path)
    if not os.access(path, os.X_OK):
        raise unittest.SkipTest(f"nerve binary not found at {path}; set NERVE_BIN")
    return path


def testdata_dir():
    path = os.environ.get("NERVE_TESTDATA")
    if not path:
        here = os.path.dirname(os.path.abspath(__file__))
        path = os.path.join(here, "..", "..", "..", "shared", "testdata")
    return os.path.abspath(path)


def clean_env(extra=None):
    """The test process environment without NERVE_* variables, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("NERVE_")}
    env["NO_COLOR"] = "1"
    if extra:
        env.update(extra)
    return env


def to_yaml(value, indent=0):
    """A tiny YAML writer for nested dicts/lists of scalars (enough for nerve.yaml)."""
    pad = "  " * indent
    lines = []
    if isinstance(value, dict):
        for k, v in value.items():
            if isinstance(v, (dict, list)) and v:
                lines.append(f"{pad}{k}:")
                lines.append(to_yaml(v, indent + 1))
            else:
                lines.append(f"{pad}{k}: {_yaml_scalar(v)}")
    elif isinstance(value, list):
        for v in value:
            if isinstance(v, (dict, list)) and v:
                inner = to_yaml(v, indent + 1).lstrip()
                lines.append(f"{pad}- {inner}")
            else:
                lines.append(f"{pad}- {_yaml_scalar(v)}")
    else:
        lines.append(pad + _yaml_scalar(value))
    return "\n".join(lines)


def _yaml_scalar(v):
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return str(v)
    if isinstance(v, dict):
        return "{}"
    if isinstance(v, list):
        return "[]"
    return json.dumps(str(v))  # a JSON string is a valid YAML double-quoted scalar


def topic(prefix):
    """A topic name no other test uses."""
    return f"{prefix}.{uuid.uuid4().hex[:10]}"


def builtin(name, topics, handler, **kw):
    """The config of a builtin agent (echo, fail or noop)."""
    return dict({"name": name, "topics": topics, "kind": "builtin", "handler": handler}, **kw)


def process(name, topics, command, **kw):
    """The config of a process agent running `command`."""
    return dict({"name": name, "topics": topics, "kind": "process", "command": command}, **kw)


class Response:
    def __init__(self, status, headers, body):
        self.status = status
        self.headers = headers  # dict with lower-case names
        self.body = body

    @property
    def content_type(self):
        return self.headers.get("content-type", "")

    def json(self):
        return json.loads(self.body.decode("utf-8"))

    def __repr__(self):
        return f"<Response {self.status} {self.content_type} {self.body[:300]!r}>"


def http_request(host, port, method, path, body=None, headers=None, timeout=15.0):
    """One request on a fresh connection; `body` may be bytes, str or a JSON value."""
    hdrs = dict(headers or {})
    if body is not None and not isinstance(body, (bytes, bytearray)):
        if isinstance(body, str):
            body = body.encode("utf-8")
        else:
            body = json.dumps(body).encode("utf-8")
            hdrs.setdefault("Content-Type", "application/json")
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=hdrs)
        res = conn.getresponse()
        data = res.read()
        return Response(res.status, {k.lower(): v for k, v in res.getheaders()}, data)
    finally:
        conn.close()


class Server:
    """One `nerve run` process on its own temp dir."""

    def __init__(self, workdir=None, config=None, env=None, args=None, data_dir=None,
                 listen="127.0.0.1:0"):
        """`data_dir=False` and `listen=None` leave those flags off the command line."""
        self._own_workdir = workdir is None
        self.workdir = workdir or tempfile.mkdtemp(prefix="nerve-bb-")
        self.data_dir = (os.path.join(self.workdir, "data") if data_dir is None else data_dir)
        self.config_path = None
        if config is not None:
            self.write_config(config)
        self.env = dict(env or {})
        self.args = list(args or [])
        self.listen = listen
        self.proc = None
        self.host = None
        self.port = None
        self.stderr_lines = []
        self._stderr_lock = threading.Lock()
        self._ready = threading.Event()
        self._reader = None
        self.starts = 0

    # -- lifecycle -----------------------------------------------------------

    def write_config(self, config):
        """Writes nerve.yaml into the work dir (a dict or YAML text)."""
        text = config if isinstance(config, str) else to_yaml(config) + "\n"
        self.config_path = os.path.join(self.workdir, "nerve.yaml")
        with open(self.config_path, "w") as f:
            f.write(text)
        return self.config_path

    def command(self):
        cmd = [nerve_bin(), "run"]
        if self.data_dir:
            cmd += ["--data-dir", self.data_dir]
        if self.listen is not None:
            cmd += ["--http", self.listen]
        if self.config_path:
            cmd += ["--config", self.config_path]
        return cmd + self.args

    def start(self, wait=True):
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self.stderr_lines = []
        self._ready = threading.Event()
        self.host = self.port = None
        self.proc = subprocess.Popen(self.command(), cwd=self.workdir, env=clean_env(self.env),
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, start_new_session=True)
        with _live_lock:
            _live_processes.add(self.proc)
        self.starts += 1
        self._reader = threading.Thread(target=self._read_stderr, args=(self.proc,), daemon=True)
        self._reader.start()
        if wait:
            self.wait_ready()
        return self

    def _read_stderr(self, proc):
        for raw in proc.stderr:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            with self._stderr_lock:
                self.stderr_lines.append(line)
            m = READY_RE.search(line)
            if m and not self._ready.is_set():
                self.host, self.port = m.group(1), int(m.group(2))
                self._ready.set()
        proc.stderr.close()

    def stderr_text(self):
        with self._stderr_lock:
            return "\n".join(self.stderr_lines)

    def wait_ready(self, timeout=START_TIMEOUT_S):
        deadline = time.monotonic() + timeout
        while not self._ready.wait(0.05):
            if self.proc.poll() is not None:
                self._reader.join(5)
                raise AssertionError(f"nerve exited with {self.proc.returncode} before ready:\n"
                                     + self.stderr_text())
            if time.monotonic() > deadline:
                raise AssertionError("nerve did not log its ready line in time:\n"
                                     + self.stderr_text())
        while True:
            try:
                r = self.get("/readyz", timeout=2)
                if r.status == 200:
                    return
            except OSError:
                pass
            if self.proc.poll() is not None:
                raise AssertionError(f"nerve exited with {self.proc.returncode}:\n"
                                     + self.stderr_text())
            if time.monotonic() > deadline:
                raise AssertionError("/readyz never answered 200:\n" + self.stderr_text())
            time.sleep(0.05)

    def stop(self, sig=signal.SIGTERM, timeout=STOP_TIMEOUT_S):
        """Sends `sig` and waits; returns the exit code (None if it was not running)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError(f"nerve did not exit within {timeout}s of signal {sig}:\n"
                                     + self.stderr_text())
        self._reader.join(5)
        with _live_lock:
            _live_processes.discard(self.proc)
        return self.proc.returncode

    def kill(self):
        """SIGKILL, no grace."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
        return self.stop()

    def restart(self):
        code = self.stop()
        self.start()
        return code

    def cleanup(self):
        try:
            if SANITIZED and self.running:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(STOP_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    pass  # killed below, as elsewhere
            self.kill()
        finally:
            if self._own_workdir:
                shutil.rmtree(self.workdir, ignore_errors=True)

    @property
    def running(self):
        return self.proc is not None and self.proc.poll() is None

    @property
    def url(self):
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    # -- HTTP ------------------------------------------------------------------

    def request(self, method, path, body=None, headers=None, timeout=15.0):
        return http_request(self.host, self.port, method, path, body, headers, timeout)

    def get(self, path, **kw):
        return self.request("GET", path, **kw)

    def post(self, path, body=None, **kw):
        return self.request("POST", path, body, **kw)

    def publish(self, topic, events, **kw):
        return self.post(f"/v1/topics/{topic}/events", events, **kw)

    def connect(self, timeout=10.0):
        """A raw TCP socket to the server."""
        return socket.create_connection((self.host, self.port), timeout=timeout)

    def read_partition(self, topic, partition, page=1000):
        """Every stored event of one partition, paging with next_offset."""
        events = []
        offset = 0
        while True:
            r = self.get(f"/v1/topics/{topic}/events?partition={partition}"
                         f"&from_offset={offset}&limit={page}")
            if r.status != 200:
                raise AssertionError(f"reading {topic}/{partition} from {offset}: {r}")
            body = r.json()
            events.extend(body["events"])
            if not body["events"]:
                return events
            offset = body["next_offset"]

    def topics(self):
        r = self.get("/v1/topics")
        if r.status != 200:
            raise AssertionError(f"GET /v1/topics: {r}")
        return {t["name"]: t for t in r.json()["topics"]}


class ServerTestCase(unittest.TestCase):
    """Helpers shared by the HTTP-level tests."""

    def new_server(self, start=True, **kw):
        srv = Server(**kw)
        self.addCleanup(srv.cleanup)
        if start:
            srv.start()
        return srv

    def wait_for(self, fn, timeout=15.0, what="condition"):
        """Polls fn() until it returns a truthy value; returns it."""
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            last = fn()
            if last:
                return last
            time.sleep(0.03)
        self.fail(f"timed out waiting for {what}; last value: {last!r}")

    def stop_ok(self, srv, sig=signal.SIGTERM):
        code = srv.stop(sig)
        self.assertEqual(code, 0, f"nerve exited with {code} after {sig}:\n" + srv.stderr_text())

    def assertProblem(self, r, status, detail_contains=None):
        """An RFC 9457 answer with exactly this status."""
        self.assertEqual(r.status, status, r)
        self.assertEqual(r.content_type.split(";")[0].strip(), PROBLEM_TYPE, r)
        body = r.json()
        self.assertIsInstance(body, dict, r)
        for field in ("type", "title", "status", "detail"):
            self.assertIn(field, body, r)
        self.assertEqual(body["status"], status, r)
        self.assertIsInstance(body["type"], str)
        self.assertTrue(body["type"], r)
        self.assertIsInstance(body["title"], str)
        self.assertTrue(body["title"], r)
        self.assertIsInstance(body["detail"], str)
        self.assertTrue(body["detail"], r)
        if detail_contains is not None:
            self.assertIn(detail_contains, body["detail"], r)
        return body

    def assertHealthy(self, srv):
        self.assertTrue(srv.running, "nerve is not running:\n" + srv.stderr_text())
        r = srv.get("/health")
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json(), {"status": "healthy"})


# -- raw sockets ---------------------------------------------------------------

class SharedServerTestCase(ServerTestCase):
    """One default-configured server for the whole class; after each test it
    must still be up and healthy, whatever the test sent."""

    @classmethod
    def setUpClass(cls):
        cls.srv = Server()
        cls.addClassCleanup(cls.srv.cleanup)
        cls.srv.start()

    def tearDown(self):
        self.assertHealthy(self.srv)


def read_until_closed(sock, timeout):
    """Reads until EOF, reset or `timeout`; returns (bytes, how) with how in
    'eof', 'reset' or 'timeout'."""
    deadline = time.monotonic() + timeout
    data = b""
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return data, "timeout"
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            return data, "timeout"
        except (ConnectionResetError, BrokenPipeError):
            return data, "reset"
        if not chunk:
            return data, "eof"
        data += chunk


def exchange(host, port, data, timeout=10.0):
    """Sends raw `data` from a thread while reading the answer, so that a
    server that answers early (413) and closes is still heard. Returns
    (Response or None, how the connection ended)."""
    sock = socket.create_connection((host, port), timeout=timeout)

    def send():
        try:
            sock.sendall(data)
        except OSError:
            pass  # the server answered and closed before reading it all

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    try:
        got, how = read_until_closed(sock, timeout)
    finally:
        sock.close()
        sender.join(timeout)
    return parse_raw_response(got), how


def parse_raw_response(data):
    """Parses the first HTTP/1.1 response in `data` into a Response (or None)."""
    head, sep, rest = data.partition(b"\r\n\r\n")
    if not sep:
        return None
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    status = int(parts[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    return Response(status, headers, rest[:length])


# -- running the binary as a command ----------------------------------------------

class Completed:
    def __init__(self, returncode, stdout, stderr):
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr

    def __repr__(self):
        return f"<exit {self.returncode} stdout={self.stdout!r} stderr={self.stderr!r}>"


def run_nerve(args, env=None, input=None, cwd=None, timeout=30):
    """Runs `nerve ARGS` to completion (kills it on timeout)."""
    p = subprocess.Popen([nerve_bin()] + list(args), cwd=cwd, env=clean_env(env),
                         stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    with _live_lock:
        _live_processes.add(p)
    try:
        out, err = p.communicate(input=input, timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        out, err = p.communicate()
        raise AssertionError(f"nerve {args} did not finish in {timeout}s: {err!r}")
    finally:
        with _live_lock:
            _live_processes.discard(p)
    return Completed(p.returncode, out.decode("utf-8", "replace"),
                     err.decode("utf-8", "replace"))


def parse_samples(text):
    """{(name, frozenset of label pairs): value} of every sample line of a GET /metrics
    scrape (Prometheus text format); fails on a line that is not a sample."""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = SAMPLE_RE.match(line)
        assert m, f"not a sample line: {line!r}"
        labels = frozenset(LABEL_RE.findall(m.group(2) or ""))
        out[(m.group(1), labels)] = float(m.group(3))
    return out


def require_promtool():
    """For setUpClass of the tests that run promtool: fails when it is missing."""
    if shutil.which("promtool") is None:
        raise AssertionError("promtool is missing: .ci/install-deps installs the Debian "
                             "package prometheus")
