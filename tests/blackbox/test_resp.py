"""Black-box tests of the Redis protocol listener (CONTRACT.md section 10, docs/redis.md).

The real binary with `--resp 127.0.0.1:0`, driven by Debian's redis-py (python3-redis),
redis-cli (redis-tools) and raw sockets. Where nerve shares a behaviour with Redis (error
texts, the reply shapes of PING, ECHO, HELLO, SELECT, AUTH, unknown commands, wrong
arities, protocol errors), the same bytes go to a real redis-server started on a free
port, and both answers must agree: the check is against Redis itself, not against what
this file believes Redis says. Without redis-server those comparisons skip, saying why.
"""

import calendar
import os
import random
import re
import resource
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import unittest
import uuid

from harness import Server, ServerTestCase, listen_ports, read_until_closed, run_nerve

try:
    import redis
except ImportError as e:  # Debian's python3-redis; .ci/install-deps installs it
    raise AssertionError("redis-py is missing: .ci/install-deps installs the Debian package "
                         "python3-redis") from e

RESP_RE = re.compile(r"RESP \(Redis protocol\) listening on (\S+):(\d+)")
ID_RE = re.compile(rb"^(\d+)-(\d+)$")
TOKEN = "s3cret-token"


# -- helpers ----------------------------------------------------------------------------

def resp_port(srv):
    """The RESP port the server listens on now (the last start's, after a restart)."""
    ms = list(RESP_RE.finditer(srv.stderr_text()))
    assert ms, "no RESP listening line in the log:\n" + srv.stderr_text()
    return int(ms[-1].group(2))


def exchange(port, data, quiet=0.4, timeout=10.0):
    """Sends `data` on a fresh connection and reads until the server closes it or says
    nothing for `quiet` seconds. Returns (bytes, closed)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        sock.sendall(data)
        out = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            sock.settimeout(quiet)
            try:
                chunk = sock.recv(65536)
            except socket.timeout:
                return out, False
            except (ConnectionResetError, BrokenPipeError):
                return out, True
            if not chunk:
                return out, True
            out += chunk
        return out, False
    finally:
        sock.close()


def parse_reply(buf, pos=0):
    """One RESP2/RESP3 reply from `buf` at `pos` -> (value, next pos). Errors come back
    as ('error', text), maps as dicts, verbatim strings without their format."""
    kind = buf[pos:pos + 1]
    end = buf.index(b"\r\n", pos)
    line = buf[pos + 1:end]
    pos = end + 2
    if kind == b"+":
        return line.decode(), pos
    if kind == b"-":
        return ("error", line.decode()), pos
    if kind == b":":
        return int(line), pos
    if kind == b"_":
        return None, pos
    if kind == b"#":
        return line == b"t", pos
    if kind == b",":
        return float(line), pos
    if kind in (b"$", b"="):
        n = int(line)
        if n < 0:
            return None, pos
        data = buf[pos:pos + n]
        return (data[4:] if kind == b"=" else data), pos + n + 2
    if kind in (b"*", b"~"):
        n = int(line)
        if n < 0:
            return None, pos
        items = []
        for _ in range(n):
            v, pos = parse_reply(buf, pos)
            items.append(v)
        return items, pos
    if kind == b"%":
        out = {}
        for _ in range(int(line)):
            k, pos = parse_reply(buf, pos)
            v, pos = parse_reply(buf, pos)
            out[k] = v
        return out, pos
    raise AssertionError(f"not a RESP reply at {pos}: {buf[pos - 10:pos + 20]!r}")


def parse_all(buf):
    out, pos = [], 0
    while pos < len(buf):
        v, pos = parse_reply(buf, pos)
        out.append(v)
    return out


def decode_id(entry_id, partitions):
    """(ms, partition, offset) of an entry id: seq = offset * partitions + partition."""
    if isinstance(entry_id, str):
        entry_id = entry_id.encode()
    m = ID_RE.match(entry_id)
    assert m, f"not an entry id: {entry_id!r}"
    ms, seq = int(m.group(1)), int(m.group(2))
    return ms, seq % partitions, seq // partitions


class RedisServer:
    """A real redis-server on a free port, for comparing answers."""

    def __init__(self, password=None):
        self.port = listen_ports(1)[0]
        self.dir = tempfile.mkdtemp(prefix="nerve-redis-")
        cmd = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
               "--appendonly", "no", "--dir", self.dir]
        if password:
            cmd += ["--requirepass", password]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True)
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise AssertionError(f"redis-server did not start on port {self.port}")
                time.sleep(0.05)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


def redis_or_skip(test, password=None):
    if shutil.which("redis-server") is None:
        test.skipTest("redis-server is not installed (.ci/install-deps installs the Debian "
                      "package redis-server): the comparison with Redis itself is skipped")
    r = RedisServer(password)
    test.addCleanup(r.stop)
    return r


class RespTestCase(ServerTestCase):

    def resp_server(self, config=None, env=None, args=None):
        srv = self.new_server(config=config, env=env,
                              args=["--resp", "127.0.0.1:0"] + list(args or []))
        return srv, resp_port(srv)

    def assertAlive(self, srv, port, password=None):
        """nerve still answers PING over RESP and GET /health over HTTP."""
        self.assertHealthy(srv)
        r = redis.Redis(port=port, password=password, socket_timeout=10)
        try:
            self.assertTrue(r.ping())
        finally:
            r.close()

    def assertSameAsRedis(self, nerve_port, redis_port, cases):
        for data in cases:
            with self.subTest(request=data[:80]):
                ours, ours_closed = exchange(nerve_port, data)
                theirs, theirs_closed = exchange(redis_port, data)
                self.assertEqual(ours, theirs)
                self.assertEqual(ours_closed, theirs_closed)


# -- commands as Redis answers them -------------------------------------------------------

class CompatTest(RespTestCase):
    """Connection commands, byte for byte against redis-server (no password)."""

    @classmethod
    def setUpClass(cls):
        cls.srv = Server(args=["--resp", "127.0.0.1:0"])
        cls.addClassCleanup(cls.srv.cleanup)
        cls.srv.start()
        cls.port = resp_port(cls.srv)

    def tearDown(self):
        self.assertAlive(self.srv, self.port)

    def test_replies_and_errors_are_redis_own(self):
        rs = redis_or_skip(self)
        self.assertSameAsRedis(self.port, rs.port, [
            b"PING\r\n", b"*1\r\n$4\r\nPING\r\n", b"*2\r\n$4\r\nPING\r\n$5\r\nhello\r\n",
            b"ping a b\r\n", b"ECHO x\r\n", b"*2\r\n$4\r\necho\r\n$3\r\na\x00b\r\n", b"ECHO\r\n",
            b"ECHO a b\r\n", b"SELECT 0\r\n", b"SELECT x\r\n", b"SELECT 16\r\n", b"SELECT -1\r\n",
            b"FOO\r\n", b"FOO a b c\r\n", b"xyz " + b"a" * 100 + b" " + b"b" * 100 + b" c\r\n",
            b"*3\r\n$3\r\nnop\r\n$1\r\na\r\n$0\r\n\r\n",
            b"CLIENT\r\n", b"CLIENT FOO\r\n", b"CLIENT ID x\r\n", b"CLIENT SETNAME\r\n",
            b"CLIENT GETNAME\r\nCLIENT SETNAME worker-1\r\nCLIENT GETNAME\r\n",
            b"CLIENT SETNAME a\x01b\r\n", b"*3\r\n$6\r\nCLIENT\r\n$7\r\nSETNAME\r\n$3\r\na b\r\n",
            b"HELLO x\r\n", b"HELLO 1\r\n", b"HELLO 4\r\n", b"HELLO 3 FOO\r\n", b"HELLO 3 AUTH\r\n",
            b"HELLO 3 AUTH default\r\n", b"HELLO 3 SETNAME\r\n", b"HELLO 2 SETNAME a b\r\n",
            b"AUTH\r\n", b"AUTH x\r\n", b"AUTH a b c\r\n", b"AUTH default x\r\n",
            b"AUTH other x\r\n", b"COMMAND FOO\r\n", b"COMMAND COUNT x\r\n", b"INFO nosuchsection\r\n",
            b"QUIT\r\n", b"QUIT\r\nPING\r\n", b"XADD\r\n", b"XADD s * f\r\n", b"XADD s *\r\n",
            b"XADD s MAXLEN x * a 1\r\n", b"XADD s MAXLEN -1 * a 1\r\n",
            b"XADD s LIMIT 5 * a 1\r\n", b"XADD s MAXLEN 10 LIMIT 5 * a 1\r\n",
            b"XADD s MAXLEN ~ 10 LIMIT -1 * a 1\r\n", b"XADD s MINID ~ x * a 1\r\n",
            b"XADD s NOMKSTREAM * a\r\n",
            b"XADD " + uuid.uuid4().hex.encode() + b" NOMKSTREAM * a 1\r\n",
            b"\r\n\r\nPING\r\n", b"*0\r\n*-1\r\nPING\r\n",
            b"*1\r\n$4\r\nPING\r\nPING\r\n*1\r\n$4\r\nPING\r\n",
        ])

    def test_protocol_errors_are_answered_and_closed_as_redis_does(self):
        rs = redis_or_skip(self)
        self.assertSameAsRedis(self.port, rs.port, [
            b"*1\r\n:1\r\n", b"*x\r\n", b"*1\r\n$x\r\n", b"*1\r\n$-5\r\n",
            b"*1\r\n*1\r\n$4\r\nPING\r\n", b"*1\r\n+PING\r\n", b"*2\r\n$4\r\nECHO\r\n-x\r\n",
            b"PING\r\n*1\r\n:1\r\nPING\r\n",
        ])

    def test_hello_2_and_3_answer_redis_shapes(self):
        rs = redis_or_skip(self)
        for version in (b"2", b"3"):
            with self.subTest(version=version):
                req = b"HELLO " + version + b"\r\nPING\r\nECHO x\r\nCLIENT GETNAME\r\n"
                ours = parse_all(exchange(self.port, req)[0])
                theirs = parse_all(exchange(rs.port, req)[0])
                self.assertEqual(len(ours), 4, ours)
                if version == b"2":  # a flat array of pairs
                    ours[0] = dict(zip(ours[0][::2], ours[0][1::2]))
                    theirs[0] = dict(zip(theirs[0][::2], theirs[0][1::2]))
                self.assertEqual(set(ours[0]), set(theirs[0]))
                self.assertEqual(ours[0][b"server"], b"nerve")
                self.assertEqual(ours[0][b"version"], b"7.0.0")
                for key in (b"proto", b"mode", b"role", b"modules"):
                    self.assertEqual(ours[0][key], theirs[0][key], key)
                self.assertIsInstance(ours[0][b"id"], int)
                self.assertEqual(ours[1:], theirs[1:])
        # The reply types of RESP3 on the wire: a map, and null as `_`.
        raw, _ = exchange(self.port, b"HELLO 3\r\nCLIENT GETNAME\r\n")
        self.assertTrue(raw.startswith(b"%7\r\n"), raw)
        self.assertTrue(raw.endswith(b"_\r\n"), raw)

    def test_select_other_databases_is_refused(self):
        # Redis has 16 databases; nerve has one (docs/redis.md).
        self.assertEqual(exchange(self.port, b"SELECT 1\r\n")[0],
                         b"-ERR DB index is out of range\r\n")

    def test_redis_py_connects_names_itself_and_reads_info(self):
        r = redis.Redis(port=self.port, client_name="bb-worker", socket_timeout=10)
        self.addCleanup(r.close)
        self.assertTrue(r.ping())
        self.assertEqual(r.echo("héllo"), "héllo".encode())
        self.assertEqual(r.client_getname(), "bb-worker")
        self.assertTrue(r.client_setname("renamed"))
        self.assertEqual(r.client_getname(), "renamed")
        self.assertIsInstance(r.client_id(), int)
        info = r.info()
        self.assertEqual(info["redis_version"], "7.0.0")
        self.assertEqual(info["nerve_version"], r.info("server")["nerve_version"])
        self.assertEqual(info["tcp_port"], self.port)
        self.assertGreaterEqual(info["connected_clients"], 1)
        me = [c for c in r.client_list() if c["name"] == "renamed"]
        self.assertEqual(len(me), 1, r.client_list())
        self.assertEqual(me[0]["cmd"], "client|list")
        self.assertTrue(r.execute_command("CLIENT SETINFO", "LIB-NAME", "bb"))
        self.assertEqual(r.client_info()["lib-name"], "bb")
        self.assertEqual(r.execute_command("COMMAND COUNT"), len(r.execute_command("COMMAND LIST")))
        with self.assertRaisesRegex(redis.ResponseError, "unknown command 'XREADX'"):
            r.execute_command("XREADX", "a")

    def test_redis_cli_works_unmodified(self):
        cli = shutil.which("redis-cli")
        if cli is None:
            self.skipTest("redis-cli is not installed (.ci/install-deps installs redis-tools)")

        def run(*argv):
            p = subprocess.run([cli, "-p", str(self.port)] + list(argv), capture_output=True,
                               timeout=20, text=True)
            self.assertEqual(p.returncode, 0, p)
            return p.stdout

        self.assertEqual(run("PING"), "PONG\n")
        self.assertEqual(run("ECHO", "a b"), "a b\n")
        self.assertIn("proto 3", run("-3", "HELLO", "3"))
        self.assertIn("redis_version:7.0.0", run("INFO", "server"))
        self.assertIn("OK", run("CLIENT", "SETNAME", "cli"))
        p = subprocess.run([cli, "-p", str(self.port), "NOPE"], capture_output=True, timeout=20,
                           text=True)
        self.assertIn("ERR unknown command 'NOPE'", p.stdout + p.stderr)
        topic = f"cli.{uuid.uuid4().hex[:8]}"
        self.assertRegex(run("XADD", topic, "*", "k", "v"), r"^\d+-\d+\n$")
        # Commands from standard input, as scripts pipe them.
        p = subprocess.run([cli, "-p", str(self.port)], input="PING\nECHO hi\nSELECT 0\n",
                           capture_output=True, timeout=20, text=True)
        self.assertEqual(p.stdout, "PONG\nhi\nOK\n", p)

    def test_inline_commands_split_on_white_space(self):
        out, closed = exchange(self.port, b"PING\r\nping  hello\r\n\tECHO\tx \r\n\r\nPING\n")
        self.assertEqual(out, b"+PONG\r\n$5\r\nhello\r\n$1\r\nx\r\n+PONG\r\n")
        self.assertFalse(closed)
        # Quotes are not interpreted (unlike Redis; docs/redis.md).
        self.assertEqual(exchange(self.port, b'ECHO "x"\r\n')[0], b'$3\r\n"x"\r\n')

    def test_idle_connections_stay_open_past_the_read_timeout(self):
        srv, port = self.resp_server(config={"http": {"read_timeout": "1s"}})
        r = redis.Redis(port=port, socket_timeout=10)
        self.addCleanup(r.close)
        self.assertTrue(r.ping())
        time.sleep(2.5)
        self.assertTrue(r.ping())
        self.assertEqual(len(r.client_list()), 1)


class AuthTest(RespTestCase):
    """With http.token set, AUTH is required, against redis-server --requirepass."""

    @classmethod
    def setUpClass(cls):
        cls.srv = Server(args=["--resp", "127.0.0.1:0"], env={"NERVE_HTTP_TOKEN": TOKEN})
        cls.addClassCleanup(cls.srv.cleanup)
        cls.srv.start()
        cls.port = resp_port(cls.srv)

    def tearDown(self):
        self.assertAlive(self.srv, self.port, password=TOKEN)

    def test_auth_replies_are_redis_own(self):
        rs = redis_or_skip(self, password=TOKEN)
        t = TOKEN.encode()
        self.assertSameAsRedis(self.port, rs.port, [
            b"PING\r\n", b"ECHO x\r\nCLIENT ID\r\nSELECT 0\r\nINFO\r\n", b"FOO\r\n",
            b"ping a b\r\n", b"HELLO\r\n", b"HELLO 3\r\n", b"HELLO 3 SETNAME x\r\n",
            b"AUTH x\r\nPING\r\n", b"AUTH default x\r\nPING\r\n", b"AUTH nobody " + t + b"\r\n",
            b"HELLO 3 AUTH default bad\r\nPING\r\nQUIT\r\n",
            b"AUTH " + t + b"\r\nPING\r\nSELECT 0\r\n",
            b"AUTH default " + t + b"\r\nPING\r\nAUTH bad\r\nPING\r\n",
            b"*11\r\n",
        ])
        # HELLO with AUTH authenticates and switches protocol at once.
        for port in (self.port, rs.port):
            out = parse_all(exchange(port, b"HELLO 3 AUTH default " + t + b"\r\nPING\r\n")[0])
            self.assertEqual(out[0][b"proto"], 3, port)
            self.assertEqual(out[1], "PONG")

    def test_clients_authenticate_with_the_token(self):
        r = redis.Redis(port=self.port, socket_timeout=10)
        self.addCleanup(r.close)
        with self.assertRaises(redis.AuthenticationError):
            r.ping()
        bad = redis.Redis(port=self.port, password="wrong", socket_timeout=10)
        self.addCleanup(bad.close)
        with self.assertRaisesRegex((redis.AuthenticationError, redis.ResponseError), "WRONGPASS"):
            bad.ping()
        good = redis.Redis(port=self.port, password=TOKEN, username="default", socket_timeout=10)
        self.addCleanup(good.close)
        self.assertTrue(good.ping())
        topic = f"auth.{uuid.uuid4().hex[:8]}"
        self.assertRegex(good.xadd(topic, {"a": "1"}), rb"^\d+-\d+$")
        cli = shutil.which("redis-cli")
        if cli:
            p = subprocess.run([cli, "-p", str(self.port), "--no-auth-warning", "-a", TOKEN,
                                "PING"], capture_output=True, timeout=20, text=True)
            self.assertEqual(p.stdout, "PONG\n", p)

    def test_a_long_command_before_auth_is_refused(self):
        out, closed = exchange(self.port, b"*2\r\n$4\r\nECHO\r\n$30000\r\n" + b"x" * 30000 + b"\r\n")
        self.assertEqual(out, b"-ERR Protocol error: unauthenticated bulk length\r\n")
        self.assertTrue(closed)


class StartupTest(RespTestCase):

    def test_non_loopback_listen_without_token_is_refused(self):
        work = tempfile.mkdtemp(prefix="nerve-bb-")
        self.addCleanup(shutil.rmtree, work, True)
        p = run_nerve(["run", "--data-dir", os.path.join(work, "data"), "--http", "127.0.0.1:0",
                       "--resp", "0.0.0.0:0"], cwd=work)
        self.assertEqual(p.returncode, 2, p)
        lines = p.stderr.strip().splitlines()
        self.assertEqual(len(lines), 1, p)
        self.assertIn("resp.listen", lines[0])
        self.assertIn("not a loopback address", lines[0])
        self.assertIn("http.token", lines[0])
        self.assertFalse(os.path.exists(os.path.join(work, "data")), "nothing may start")

    def test_non_loopback_listen_with_token_starts(self):
        srv = self.new_server(args=["--resp", "0.0.0.0:0"], env={"NERVE_HTTP_TOKEN": TOKEN})
        port = resp_port(srv)
        r = redis.Redis(port=port, password=TOKEN, socket_timeout=10)
        self.addCleanup(r.close)
        self.assertTrue(r.ping())

    def test_sigterm_with_clients_connected_stops_cleanly(self):
        srv, port = self.resp_server()
        idle = redis.Redis(port=port, socket_timeout=10)
        self.addCleanup(idle.close)
        self.assertTrue(idle.ping())
        busy = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.addCleanup(busy.close)
        busy.sendall(b"*2\r\n$4\r\nECHO\r\n$100\r\n")  # a command half sent
        topic = f"stop.{uuid.uuid4().hex[:8]}"
        self.assertRegex(idle.xadd(topic, {"a": "1"}), rb"^\d+-\d+$")
        start = time.monotonic()
        self.stop_ok(srv)
        self.assertLess(time.monotonic() - start, 10)
        self.assertIn("stopped cleanly", srv.stderr_text())

    def test_the_listener_is_off_by_default(self):
        srv = self.new_server()
        self.assertNotRegex(srv.stderr_text(), RESP_RE)


# -- XADD ---------------------------------------------------------------------------------

class XaddTest(RespTestCase):

    @classmethod
    def setUpClass(cls):
        cls.one = f"one.{uuid.uuid4().hex[:8]}"
        cls.srv = Server(args=["--resp", "127.0.0.1:0"],
                         config={"topics": {cls.one: {"partitions": 1}}})
        cls.addClassCleanup(cls.srv.cleanup)
        cls.srv.start()
        cls.port = resp_port(cls.srv)

    def setUp(self):
        self.r = redis.Redis(port=self.port, socket_timeout=30)
        self.addCleanup(self.r.close)

    def tearDown(self):
        self.assertAlive(self.srv, self.port)

    def event_at(self, topic, partition, offset):
        r = self.srv.get(f"/v1/topics/{topic}/events?partition={partition}"
                         f"&from_offset={offset}&limit=1")
        self.assertEqual(r.status, 200, r)
        events = r.json()["events"]
        self.assertEqual(len(events), 1, r)
        return events[0]

    def test_an_xadd_is_an_event_readable_over_http(self):
        topic = f"orders.eu:{uuid.uuid4().hex[:8]}"  # ':' is allowed in topic names
        before_ms = int(time.time() * 1000)
        entry_id = self.r.xadd(topic, {"customer": "c-42", "total": "12.50", "note": "héllo"})
        partitions = self.srv.topics()[topic]["partitions"]
        ms, partition, offset = decode_id(entry_id, partitions)
        self.assertLessEqual(before_ms - 5000, ms)
        event = self.event_at(topic, partition, offset)
        self.assertEqual(event["data"], {"customer": "c-42", "total": "12.50", "note": "héllo"})
        self.assertEqual(list(event["data"]), ["customer", "total", "note"])  # field order kept
        self.assertEqual((event["topic"], event["partition"], event["offset"]),
                         (topic, partition, offset))
        self.assertRegex(event["trace_id"], r"^[0-9a-f]{32}$")
        self.assertNotIn("key", event)
        # The id's milliseconds are the event's append time.
        stamp = event["time"]
        t = time.strptime(stamp[:19], "%Y-%m-%dT%H:%M:%S")
        event_ms = calendar.timegm(t) * 1000 + int(stamp[20:23])
        self.assertEqual(ms, event_ms)

    def test_xadd_options_are_accepted_and_left_to_retention(self):
        topic = f"opts.{uuid.uuid4().hex[:8]}"
        self.assertIsNone(self.r.xadd(topic, {"a": "1"}, nomkstream=True))
        self.assertNotIn(topic, self.srv.topics())
        first = self.r.xadd(topic, {"a": "1"}, maxlen=10, approximate=True, limit=5)
        second = self.r.xadd(topic, {"a": "2"}, nomkstream=True, minid="0-1")
        third = self.r.xadd(topic, {"a": "3"}, maxlen=1, approximate=False)
        for entry_id in (first, second, third):
            self.assertRegex(entry_id, rb"^\d+-\d+$")
        self.assertEqual(self.srv.topics()[topic]["events"], 3)

    def test_xadd_refusals(self):
        topic = f"bad.{uuid.uuid4().hex[:8]}"
        cases = [
            (("XADD", topic, "1-1", "a", "1"), "nerve assigns stream entry ids: use * as the id"),
            (("XADD", topic, "*", "a", "1", "b"),
             "wrong number of arguments for 'xadd' command"),
            (("XADD", "a..b", "*", "a", "1"), "invalid stream name 'a..b'"),
            (("XADD", "a b", "*", "a", "1"), "[A-Za-z0-9_:-]+ tokens joined by '.'"),
            (("XADD", topic, "*", b"\xff\xfe", "1"), "valid UTF-8"),
        ]
        for argv, message in cases:
            with self.subTest(argv=argv):
                with self.assertRaises(redis.ResponseError) as cm:
                    self.r.execute_command(*argv)
                self.assertIn(message, str(cm.exception))
        self.assertNotIn(topic, self.srv.topics())

    def test_a_pipeline_of_1000_xadds_is_answered_in_order(self):
        self.r.xadd(self.one, {"warm": "up"})  # the topic exists before the pipeline
        pipe = self.r.pipeline(transaction=False)
        for i in range(1000):
            pipe.xadd(self.one, {"i": str(i)})
            if i % 100 == 0:
                pipe.ping()
        out = pipe.execute()
        self.assertEqual(len(out), 1010)
        ids = [v for v in out if v is not True]
        self.assertEqual(sum(1 for v in out if v is True), 10)
        self.assertEqual(len(ids), 1000)
        parsed = [decode_id(v, 1) for v in ids]
        keys = [(ms, offset) for ms, _, offset in parsed]
        self.assertEqual(keys, sorted(keys))
        self.assertEqual(len(set(ids)), 1000)
        offsets = [offset for _, _, offset in parsed]
        self.assertEqual(offsets, list(range(offsets[0], offsets[0] + 1000)))
        events = self.srv.read_partition(self.one, 0)
        by_offset = {e["offset"]: e for e in events}
        for i, offset in enumerate(offsets):
            self.assertEqual(by_offset[offset]["data"], {"i": str(i)})

    def test_replies_keep_command_order_when_xadds_answer_late(self):
        topic = f"mix.{uuid.uuid4().hex[:8]}"
        req = b""
        expected = []
        for i in range(200):
            req += b"*5\r\n$4\r\nXADD\r\n$%d\r\n%s\r\n$1\r\n*\r\n$1\r\ni\r\n$%d\r\n%d\r\n" % (
                len(topic), topic.encode(), len(str(i)), i)
            req += b"*2\r\n$4\r\nECHO\r\n$%d\r\n%d\r\n" % (len(str(i)), i)
            expected.append(str(i).encode())
        out = parse_all(exchange(self.port, req, quiet=2.0)[0])
        self.assertEqual(len(out), 400)
        self.assertEqual(out[1::2], expected)
        for entry_id in out[0::2]:
            self.assertRegex(entry_id, rb"^\d+-\d+$")

    def test_long_pipelines_pause_and_resume(self):
        # 5000 commands in one write: past 1024 outstanding nerve stops reading,
        # answers, and reads on; every reply comes, in order.
        n = 5000
        out, closed = exchange(self.port, b"".join(b"ECHO %d\r\n" % i for i in range(n)),
                               quiet=3.0, timeout=60)
        self.assertFalse(closed)
        self.assertEqual(parse_all(out), [str(i).encode() for i in range(n)])

    def test_a_client_that_does_not_read_its_replies(self):
        # 40 MiB of replies asked for while reading none: nerve stops reading at
        # 4 MiB of replies waiting, stays healthy, and the replies arrive in full
        # once the client reads.
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=30)
        self.addCleanup(sock.close)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        value = b"v" * 100000
        one = b"*2\r\n$4\r\nECHO\r\n$%d\r\n%s\r\n" % (len(value), value)
        sent = threading.Event()

        def send():
            try:
                sock.sendall(one * 400)
            except OSError:
                pass
            sent.set()

        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        time.sleep(1.0)
        self.assertFalse(sent.is_set(), "nerve read 40 MB of commands whose replies wait")
        self.assertHealthy(self.srv)
        expected = b"$%d\r\n%s\r\n" % (len(value), value)
        got = 0
        buf = b""
        while got < 400:
            chunk = sock.recv(1 << 20)
            self.assertTrue(chunk, f"closed after {got} replies")
            buf += chunk
            while len(buf) >= len(expected):
                self.assertEqual(buf[:len(expected)], expected)
                buf = buf[len(expected):]
                got += 1
        sender.join(30)
        self.assertTrue(sent.is_set())

    def test_closing_with_xadds_in_flight_is_harmless(self):
        topic = f"gone.{uuid.uuid4().hex[:8]}"
        for _ in range(5):
            sock = socket.create_connection(("127.0.0.1", self.port), timeout=10)
            sock.sendall(b"".join(
                b"XADD %s * n %d\r\n" % (topic.encode(), i) for i in range(300)))
            sock.recv(1)  # the first answer is out; the others are still being appended
            sock.close()
        self.wait_for(lambda: topic in self.srv.topics(), what="the topic")


class DurabilityTest(RespTestCase):

    def test_acknowledged_xadds_survive_kill_9(self):
        srv, port = self.resp_server()
        topic = f"durable.{uuid.uuid4().hex[:8]}"
        acked = []
        lock = threading.Lock()
        stop = threading.Event()

        def writer(w):
            r = redis.Redis(port=port, socket_timeout=10)
            n = 0
            try:
                while not stop.is_set():
                    entry_id = r.xadd(topic, {"writer": str(w), "n": str(n)})
                    with lock:
                        acked.append((entry_id, str(w), str(n)))
                    n += 1
            except (redis.ConnectionError, redis.TimeoutError, OSError):
                pass  # killed under us

        threads = [threading.Thread(target=writer, args=(w,)) for w in range(4)]
        for t in threads:
            t.start()
        self.wait_for(lambda: len(acked) > 200, timeout=30, what="200 acknowledged XADDs")
        srv.kill()
        stop.set()
        for t in threads:
            t.join(15)
        srv.start()
        partitions = srv.topics()[topic]["partitions"]
        stored = {p: {e["offset"]: e for e in srv.read_partition(topic, p)}
                  for p in range(partitions)}
        with lock:
            acknowledged = list(acked)
        self.assertGreater(len(acknowledged), 200)
        for entry_id, w, n in acknowledged:
            _, partition, offset = decode_id(entry_id, partitions)
            event = stored[partition].get(offset)
            self.assertIsNotNone(event, f"acknowledged {entry_id!r} is gone")
            self.assertEqual(event["data"], {"writer": w, "n": n})


# -- hostile input ------------------------------------------------------------------------

class HostileTest(RespTestCase):
    """Bad input gets an error or a closed connection, never a crash; nerve answers
    PING and GET /health after each."""

    @classmethod
    def setUpClass(cls):
        cls.srv = Server(args=["--resp", "127.0.0.1:0"],
                         config={"http": {"read_timeout": "2s"},
                                 "resp": {"max_connections": 100}})
        cls.addClassCleanup(cls.srv.cleanup)
        cls.srv.start()
        cls.port = resp_port(cls.srv)

    def tearDown(self):
        self.assertAlive(self.srv, self.port)

    def assertRefused(self, data, timeout=8.0):
        """An error reply or a closed connection, within `timeout`."""
        start = time.monotonic()
        out, closed = exchange(self.port, data, quiet=timeout, timeout=timeout)
        self.assertTrue(closed or out.startswith(b"-"), (out[:200], closed))
        if out:
            self.assertTrue(out.startswith(b"-ERR"), out[:200])
        return out, time.monotonic() - start

    def test_malformed_frames(self):
        for data in (b"*1\r\n:1\r\n", b"*x\r\n", b"*1\r\n$x\r\n", b"*1\r\n$-2\r\n",
                     b"*2\r\n$4\r\nECHO\r\n@x\r\n", b"*-7\r\n", b"*1\r\n%1\r\n",
                     b"*3\r\n$4\r\nECHO\r\n$1\r\nab\r\n$1\r\nc\r\n"):
            with self.subTest(data=data):
                self.assertRefused(data)

    def test_a_huge_array_length_is_refused_at_once(self):
        out, took = self.assertRefused(b"*999999999\r\n")
        self.assertEqual(out, b"-ERR Protocol error: too big request\r\n")

    def test_a_huge_bulk_length_is_closed_in_time(self):
        # Nothing of the bulk arrives: the half-read command is closed after
        # http.read_timeout (2 s here), without a reply.
        out, took = self.assertRefused(b"*1\r\n$2000000000\r\n", timeout=10)
        self.assertLess(took, 8)
        out, took = self.assertRefused(b"$2000000000\r\n", timeout=2)  # inline: unknown command
        self.assertIn(b"unknown command", out)

    def test_deep_nesting(self):
        out, _ = self.assertRefused(b"*1\r\n" * 10000)
        self.assertEqual(out, b"-ERR Protocol error: expected '$', got '*'\r\n")

    def test_a_bulk_over_the_request_limit(self):
        size = 2 * 1024 * 1024
        data = b"*2\r\n$4\r\nECHO\r\n$%d\r\n" % size + b"x" * size + b"\r\n"
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        sender = threading.Thread(target=lambda: self._send_quietly(sock, data), daemon=True)
        sender.start()
        out, how = read_until_closed(sock, 10)
        sock.close()
        sender.join(10)
        self.assertEqual(out, b"-ERR Protocol error: too big request\r\n")
        self.assertIn(how, ("eof", "reset"))
        # Just under the limit is fine.
        r = redis.Redis(port=self.port, socket_timeout=30)
        self.addCleanup(r.close)
        big = "y" * (1024 * 1024 - 200)
        self.assertEqual(r.echo(big), big.encode())

    @staticmethod
    def _send_quietly(sock, data):
        try:
            sock.sendall(data)
        except OSError:
            pass

    def test_garbage_bytes(self):
        rng = random.Random(1234)
        for n in (1, 100, 5000, 200000):
            with self.subTest(bytes=n):
                blob = bytes(rng.randrange(256) for _ in range(n))
                out, closed = exchange(self.port, blob, quiet=3.0)
                self.assertTrue(closed or out == b"" or out.startswith(b"-"), out[:200])
        out, _ = exchange(self.port, b"\n" * 1000000 + b"PING\r\n", quiet=3.0)
        self.assertEqual(out, b"+PONG\r\n")
        self.assertRefused(b"A" * 70000)  # an inline line without an end

    def test_a_slow_client_is_served_and_a_stalled_one_closed(self):
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        self.addCleanup(sock.close)
        for b in b"*2\r\n$4\r\nECHO\r\n$4\r\nslow\r\n":
            sock.sendall(bytes([b]))
            time.sleep(0.05)
        sock.settimeout(5)
        self.assertEqual(sock.recv(100), b"$4\r\nslow\r\n")
        # One byte per 50 ms of a command that never ends: closed after read_timeout.
        start = time.monotonic()
        closed = False
        try:
            sock.sendall(b"*2\r\n$4\r\nECHO\r\n$100000\r\n")
            while time.monotonic() - start < 10:
                sock.sendall(b"z")
                time.sleep(0.05)
        except OSError:
            closed = True
        if not closed:
            sock.settimeout(1)
            try:
                closed = sock.recv(100) == b""
            except OSError:
                closed = True
        self.assertTrue(closed, "a command trickling in for 10 s was not cut off")
        self.assertLess(time.monotonic() - start, 8)

    def test_connections_over_the_cap_are_refused(self):
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft < 2500:
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4096), hard))
            self.addCleanup(resource.setrlimit, resource.RLIMIT_NOFILE, (soft, hard))
        socks = []
        self.addCleanup(lambda: [s.close() for s in socks])
        for _ in range(2000):
            s = socket.create_connection(("127.0.0.1", self.port), timeout=10)
            socks.append(s)
        refused = 0
        answered = 0
        for s in socks:
            s.settimeout(5)
            try:
                s.sendall(b"PING\r\n")
                got = s.recv(100)
            except OSError:
                got = b""
            if got == b"+PONG\r\n":
                answered += 1
            else:
                self.assertIn(got, (b"", b"-ERR max number of clients reached\r\n"))
                refused += 1
        self.assertLessEqual(answered, 100)
        self.assertGreaterEqual(refused, 1900)
        for s in socks:
            s.close()
        socks.clear()
        # Once they are gone, new clients get in again.
        r = redis.Redis(port=self.port, socket_timeout=10)
        self.addCleanup(r.close)
        self.wait_for(lambda: self._pings(r), what="PING after the flood")

    @staticmethod
    def _pings(r):
        try:
            return r.ping()
        except (redis.ResponseError, redis.ConnectionError):
            return False


if __name__ == "__main__":
    unittest.main()
