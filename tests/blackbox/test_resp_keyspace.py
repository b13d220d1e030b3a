"""Black-box tests of the keyspace over the Redis protocol (docs/redis.md, "Keyspace").

The real binary with `--resp 127.0.0.1:0`, driven by redis-py, redis-cli and raw sockets.
What nerve shares with Redis (replies, error texts, EXPIRE's options, glob patterns, SCAN's
iteration, WRONGTYPE between streams and hashes) runs against a real redis-server too, and
both must agree: byte for byte where Redis' answer does not depend on its hash table's
order, as sets where it does (KEYS, SCAN, HGETALL of several fields). Without
redis-server those comparisons skip, saying why.
"""

import shutil
import subprocess
import threading
import time
import unittest
import uuid

import redis

from harness import Server
from test_resp import (RespTestCase, decode_id, exchange, parse_all, parse_reply,
                       redis_or_skip, resp_port)

WRONGTYPE = "WRONGTYPE Operation against a key holding the wrong kind of value"


def enc(*words):
    """One command as a RESP array of bulk strings (binary-safe)."""
    out = b"*%d\r\n" % len(words)
    for w in words:
        if isinstance(w, str):
            w = w.encode()
        elif isinstance(w, int):
            w = str(w).encode()
        out += b"$%d\r\n%s\r\n" % (len(w), w)
    return out


def prefix():
    """A key prefix of its own (also a valid topic name, for streams)."""
    return "ks" + uuid.uuid4().hex[:12]


def scan_all(r, match=None, count=None, type_=None):
    """Every key SCAN returns, iterating until the cursor is 0, and the number of calls."""
    keys, cursor, calls = [], 0, 0
    while True:
        cursor, page = r.scan(cursor, match=match, count=count, _type=type_)
        calls += 1
        keys.extend(page)
        if cursor == 0:
            return keys, calls
        if calls > 100000:
            raise AssertionError("SCAN did not come back to cursor 0")


class KeyspaceTest(RespTestCase):
    """The keyspace commands on one nerve, against redis-server where they agree."""

    @classmethod
    def setUpClass(cls):
        cls.fresh = f"fresh.{uuid.uuid4().hex[:8]}"
        cls.srv = Server(args=["--resp", "127.0.0.1:0"],
                         config={"topics": {cls.fresh: {"partitions": 1}}})
        cls.addClassCleanup(cls.srv.cleanup)
        cls.srv.start()
        cls.port = resp_port(cls.srv)

    def setUp(self):
        self.r = redis.Redis(port=self.port, socket_timeout=30)
        self.addCleanup(self.r.close)

    def tearDown(self):
        self.assertAlive(self.srv, self.port)

    def redis_client(self):
        rs = redis_or_skip(self)
        r = redis.Redis(port=rs.port, socket_timeout=30)
        self.addCleanup(r.close)
        return rs, r

    def assertSameBytes(self, redis_port, cases):
        """Each case on a fresh connection to both; the same bytes back."""
        for data in cases:
            with self.subTest(request=data[:80]):
                ours, _ = exchange(self.port, data, quiet=2.0)
                theirs, _ = exchange(redis_port, data, quiet=2.0)
                self.assertEqual(ours, theirs)

    # -- hashes ---------------------------------------------------------------------------

    def test_hash_commands_answer_as_redis(self):
        rs = redis_or_skip(self)
        p = prefix()
        k, gone, bin_ = f"{p}:h", f"{p}:none", f"{p}:bin".encode() + b"\x00\xff"
        big = "9223372036854775807"
        self.assertSameBytes(rs.port, [
            enc("HSET", k, "a", "1", "b", "2") + enc("HSET", k, "a", "3", "c", "4")
            + enc("HSET", k, "a", "5", "a", "6") + enc("HGET", k, "a") + enc("HGET", k, "nope")
            + enc("HGET", gone, "a") + enc("HLEN", k) + enc("HLEN", gone),
            enc("HINCRBY", k, "n", 5) + enc("HINCRBY", k, "n", -7) + enc("HINCRBY", k, "new", 0)
            + enc("HINCRBY", k, "a", "x") + enc("HINCRBY", k, "a", "1.5")
            + enc("HINCRBY", k, "a", "+1") + enc("HINCRBY", k, "a", " 1")
            + enc("HINCRBY", k, "a", "9223372036854775808") + enc("HSET", k, "s", "hello")
            + enc("HINCRBY", k, "s", 1) + enc("HSET", k, "e", "") + enc("HINCRBY", k, "e", 1)
            + enc("HSET", k, "z", "007") + enc("HINCRBY", k, "z", 1)
            + enc("HINCRBY", k, "big", big) + enc("HINCRBY", k, "big", 1)
            + enc("HINCRBY", k, "small", "-9223372036854775808")
            + enc("HINCRBY", k, "small", -1) + enc("HGET", k, "big") + enc("HINCRBY", gone, "x", 2)
            + enc("DEL", gone),
            enc("HDEL", k, "a", "zz", "a") + enc("HLEN", k) + enc("HDEL", gone, "a")
            + enc("HDEL", k, "b", "c", "n", "new", "s", "e", "z", "big", "small")
            + enc("EXISTS", k) + enc("HGETALL", k) + enc("HLEN", k),
            enc("HSET", bin_, b"f\x00g", b"v\r\n\x00\xff") + enc("HGET", bin_, b"f\x00g")
            + enc("HGETALL", bin_),
            enc("HSET", k, "f") + enc("HSET", k, "f", "v", "g") + enc("HSET", k)
            + enc("HGET", k) + enc("HGET", k, "a", "b") + enc("HGETALL") + enc("HGETALL", k, "x")
            + enc("HINCRBY", k, "f") + enc("HDEL", k) + enc("HLEN") + enc("EXISTS", k),
            enc("HGETALL", gone),
        ])
        # RESP3 (after HELLO 3, whose own reply names the server): a map, and null as `_`.
        req = (b"HELLO 3\r\n" + enc("HSET", k, "only", "1") + enc("HGETALL", k)
               + enc("HGETALL", gone) + enc("HGET", k, "nope") + enc("HDEL", k, "only"))
        answers = []
        for port in (self.port, rs.port):
            raw, _ = exchange(port, req)
            answers.append(raw[parse_reply(raw)[1]:])
        self.assertEqual(answers[0], answers[1])
        self.assertEqual(answers[0], b":1\r\n%1\r\n$4\r\nonly\r\n$1\r\n1\r\n%0\r\n_\r\n:1\r\n")

    def test_hgetall_is_a_map_in_resp3_and_pairs_in_resp2(self):
        rs = redis_or_skip(self)
        p = prefix()
        fields = {f"f{i}": f"v{i}" for i in range(20)}
        words = [w for kv in fields.items() for w in kv]
        for port in (self.port, rs.port):
            for version in (b"2", b"3"):
                with self.subTest(port=port, version=version):
                    k = f"{p}:{version.decode()}"
                    raw, _ = exchange(port, b"HELLO " + version + b"\r\n"
                                      + enc("HSET", k, *words) + enc("HGETALL", k))
                    _, added, got = parse_all(raw)
                    self.assertEqual(added, 20)
                    if version == b"3":
                        self.assertIn(b"\r\n%20\r\n", raw)
                        self.assertEqual(got, {k.encode(): v.encode() for k, v in fields.items()})
                    else:
                        self.assertIn(b"\r\n*40\r\n", raw)
                        self.assertEqual(dict(zip(got[::2], got[1::2])),
                                         {k.encode(): v.encode() for k, v in fields.items()})

    def test_redis_py_hashes_on_nerve_and_redis(self):
        _, theirs = self.redis_client()
        for name, r in (("nerve", self.r), ("redis", theirs)):
            with self.subTest(server=name):
                p = prefix()
                k = f"{p}:retries"
                self.assertEqual(r.hset(k, mapping={"a": "1", "b": "two"}), 2)
                self.assertEqual(r.hset(k, "a", "3"), 0)
                self.assertEqual(r.hget(k, "a"), b"3")
                self.assertIsNone(r.hget(k, "zz"))
                self.assertEqual(r.hgetall(k), {b"a": b"3", b"b": b"two"})
                self.assertEqual(r.hgetall(f"{p}:none"), {})
                self.assertEqual(r.hincrby(k, "a", 4), 7)
                self.assertEqual(r.hincrby(k, "count"), 1)
                with self.assertRaisesRegex(redis.ResponseError, "^hash value is not an integer$"):
                    r.hincrby(k, "b", 1)
                r.hset(k, "max", str(2 ** 63 - 1))
                with self.assertRaisesRegex(redis.ResponseError,
                                            "^increment or decrement would overflow$"):
                    r.hincrby(k, "max", 1)
                self.assertEqual(r.hlen(k), 4)
                self.assertEqual(r.hdel(k, "a", "nope"), 1)
                self.assertEqual(r.exists(k, k, f"{p}:none"), 2)
                self.assertEqual(r.type(k), b"hash")
                self.assertEqual(r.type(f"{p}:none"), b"none")
                self.assertEqual(r.delete(k, f"{p}:none"), 1)
                self.assertEqual(r.exists(k), 0)
                self.assertEqual(r.hlen(k), 0)

    def test_concurrent_hincrbys_are_each_counted(self):
        k = f"{prefix()}:counter"
        errors = []

        def worker():
            c = redis.Redis(port=self.port, socket_timeout=30)
            try:
                for _ in range(100):
                    c.hincrby(k, "n", 1)
            except Exception as e:  # noqa: BLE001 - reported below
                errors.append(e)
            finally:
                c.close()

        threads = [threading.Thread(target=worker) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        self.assertEqual(errors, [])
        self.assertEqual(self.r.hget(k, "n"), b"800")

    def test_a_pipeline_runs_in_command_order(self):
        p = prefix()
        pipe = self.r.pipeline(transaction=False)
        for i in range(300):
            pipe.hincrby(f"{p}:c", "n", 1)
            if i % 50 == 0:
                pipe.hset(f"{p}:h", "at", str(i))
                pipe.hget(f"{p}:h", "at")
                pipe.delete(f"{p}:h")
                pipe.exists(f"{p}:h")
        out = pipe.execute()
        self.assertEqual(len(out), 300 + 6 * 4)
        i = 0
        n = 0
        for step in range(300):
            n += 1
            self.assertEqual(out[i], n, (step, out[i:i + 5]))
            i += 1
            if step % 50 == 0:
                self.assertEqual(out[i:i + 4], [1, str(step).encode(), 1, 0])
                i += 4

    # -- keys and expiry ------------------------------------------------------------------

    def test_key_commands_and_expire_options_answer_as_redis(self):
        rs = redis_or_skip(self)
        p = prefix()
        k, k2, gone = f"{p}:k", f"{p}:k2", f"{p}:none"
        self.assertSameBytes(rs.port, [
            enc("HSET", k, "f", "v") + enc("HSET", k2, "f", "v") + enc("EXISTS", k, k, gone, k2)
            + enc("TYPE", k) + enc("TYPE", gone) + enc("TTL", k) + enc("TTL", gone)
            + enc("PERSIST", k) + enc("PERSIST", gone) + enc("EXPIRE", gone, 10),
            enc("EXPIRE", k, 100, "NX") + enc("EXPIRE", k, 200, "NX") + enc("TTL", k)
            + enc("EXPIRE", k, 50, "GT") + enc("EXPIRE", k, 200, "gt") + enc("TTL", k)
            + enc("EXPIRE", k, 300, "LT") + enc("EXPIRE", k, 100, "LT") + enc("TTL", k)
            + enc("EXPIRE", k, 150, "XX") + enc("TTL", k) + enc("HSET", k, "g", "w")
            + enc("TTL", k) + enc("HINCRBY", k, "n", 1) + enc("TTL", k) + enc("PERSIST", k)
            + enc("PERSIST", k) + enc("TTL", k) + enc("EXPIRE", k, 10, "XX")
            + enc("EXPIRE", k, 10, "GT") + enc("EXPIRE", k, 10, "LT") + enc("TTL", k)
            + enc("EXPIRE", k, 20, "XX", "GT") + enc("TTL", k) + enc("EXPIRE", k, 5, "xx", "lt")
            + enc("TTL", k),
            enc("EXPIRE", k, "x") + enc("EXPIRE", k, "1.5") + enc("EXPIRE", k, 10, "FOO")
            + enc("EXPIRE", k, "x", "FOO") + enc("EXPIRE", k, 10, "NX", "XX")
            + enc("EXPIRE", k, 10, "GT", "LT") + enc("EXPIRE", k, 10, "NX", "GT")
            + enc("EXPIRE", k, "9223372036854775807") + enc("EXPIRE", gone, "9223372036854775807")
            + enc("EXPIRE", k, "-9223372036854775808") + enc("TTL", k),
            enc("EXPIRE", k2, 0) + enc("EXISTS", k2) + enc("TTL", k2) + enc("HGET", k2, "f")
            + enc("EXPIRE", k, -1) + enc("EXISTS", k) + enc("TYPE", k),
            enc("DEL", gone, gone) + enc("HSET", k, "f", "v") + enc("HSET", k2, "f", "v")
            + enc("DEL", k, k2, gone, k) + enc("EXISTS", k, k2),
            enc("EXISTS") + enc("TYPE") + enc("TYPE", k, k) + enc("DEL") + enc("EXPIRE", k)
            + enc("TTL") + enc("TTL", k, k) + enc("PERSIST") + enc("KEYS") + enc("KEYS", "a", "b")
            + enc("SCAN"),
        ])

    def test_an_expired_key_is_gone_and_swept(self):
        _, theirs = self.redis_client()
        srv, port = self.resp_server()  # a node of its own: SCAN's calls count its keys
        ours = redis.Redis(port=port, socket_timeout=30)
        self.addCleanup(ours.close)
        p = prefix()
        live = f"{p}:live"
        short = [f"{p}:short{i}" for i in range(100)]
        for r in (ours, theirs):
            r.hset(live, "f", "v")
            for k in short:
                r.hset(k, "f", "v")
                self.assertTrue(r.expire(k, 1))
            self.assertEqual(r.ttl(short[-1]), 1)
        time.sleep(1.3)
        for name, r in (("nerve", ours), ("redis", theirs)):
            with self.subTest(server=name):
                self.assertEqual(r.exists(*short), 0)
                self.assertEqual(r.ttl(short[0]), -2)
                self.assertEqual(r.type(short[0]), b"none")
                self.assertIsNone(r.hget(short[0], "f"))
                self.assertEqual(r.hgetall(short[0]), {})
                self.assertEqual(r.keys(f"{p}:*"), [live.encode()])
                self.assertEqual(scan_all(r, match=f"{p}:*")[0], [live.encode()])
        # Swept, not just hidden: SCAN's COUNT counts the records it visits,
        # expired ones not yet swept too, so one at a time it takes one call
        # per stored key. Only `live` is left.
        keys, calls = scan_all(ours, count=1)
        self.assertEqual(keys, [live.encode()])
        self.assertLessEqual(calls, 2, "expired keys are still stored: the sweep did not run")
        # A write to an expired name starts a new key.
        self.assertEqual(ours.hset(short[0], "g", "w"), 1)
        self.assertEqual(ours.hgetall(short[0]), {b"g": b"w"})
        self.assertEqual(ours.ttl(short[0]), -1)

    def test_keys_and_scan_match_count_and_type_as_redis(self):
        rs, theirs = self.redis_client()
        p = prefix()
        names = ["a", "b", "c1", "c2", "c10", "[x]", "x", "star*", "q?", "h\\ello", "Ab", "ab"]
        stream = f"{p}.stream"
        for r in (self.r, theirs):
            for n in names:
                r.hset(f"{p}:{n}", "f", "v")
            r.xadd(stream, {"a": "1"})
        patterns = ["*", ":*", ":c?", ":c*", ":[ab]", ":[^a]*", ":[a-c]*", ":\\[x\\]", ":[x]",
                    ":star\\*", ":q\\?", ":q?", ":h\\\\ello", ":[A]b", ":?b", ".*", "*[m]",
                    ":[c", ":c[0-9]", ":c[0-9]*", ":nothing*"]
        for pat in patterns:
            with self.subTest(pattern=pat):
                want = sorted(theirs.keys(p + pat))
                self.assertEqual(sorted(self.r.keys(p + pat)), want)
                for count in (1, 3, 1000):
                    keys, _ = scan_all(self.r, match=p + pat, count=count)
                    self.assertEqual(len(keys), len(set(keys)), "a key returned twice")
                    self.assertEqual(sorted(keys), want)
        for type_ in ("hash", "stream", "HASH", "string", "none"):
            with self.subTest(type=type_):
                want = sorted(scan_all(theirs, match=p + "*", type_=type_)[0])
                self.assertEqual(sorted(scan_all(self.r, match=p + "*", type_=type_)[0]), want)
        self.assertEqual(sorted(scan_all(self.r, match=p + "*", type_="stream")[0]),
                         [stream.encode()])
        # Errors and the reply's shape: a bulk cursor and an array of keys.
        self.assertSameBytes(rs.port, [
            enc("SCAN", "x") + enc("SCAN", "0", "COUNT", "0") + enc("SCAN", "0", "COUNT", "x")
            + enc("SCAN", "0", "FOO", "1") + enc("SCAN", "0", "MATCH") + enc("SCAN", "-1x")
            + enc("SCAN", " 0") + enc("SCAN", "0", "MATCH", f"{p}:a", "COUNT", "100000000"),
        ])
        for version in (b"2", b"3"):
            raw, _ = exchange(self.port, b"HELLO " + version + b"\r\n"
                              + enc("SCAN", "0", "MATCH", f"{p}:a", "COUNT", "1000000"))
            reply = parse_all(raw)[1]
            self.assertIsInstance(reply[0], bytes)
            self.assertEqual(reply, [b"0", [f"{p}:a".encode()]])

    def test_command_describes_the_keyspace_commands_as_redis(self):
        rs, theirs = self.redis_client()
        names = ["hset", "hget", "hgetall", "hincrby", "hdel", "hlen", "exists", "type", "del",
                 "expire", "ttl", "persist", "keys", "scan", "xadd"]
        ours = self.r.execute_command("COMMAND INFO", *names)
        want = theirs.execute_command("COMMAND INFO", *names)
        for o, w in zip(ours, want):
            with self.subTest(command=w[0]):
                # name, arity, flags, first key, last key, key step
                self.assertEqual(o[:2] + [set(o[2])] + o[3:6], w[:2] + [set(w[2])] + w[3:6])

    # -- streams and hashes ---------------------------------------------------------------

    def test_wrongtype_between_streams_and_hashes_as_redis(self):
        _, theirs = self.redis_client()
        p = prefix()
        stream, h = f"{p}.s", f"{p}.h"
        for name, r in (("nerve", self.r), ("redis", theirs)):
            with self.subTest(server=name):
                self.assertRegex(r.xadd(stream, {"a": "1"}), rb"^\d+-\d+$")
                for argv in (("HSET", stream, "f", "v"), ("HGET", stream, "f"),
                             ("HGETALL", stream), ("HINCRBY", stream, "f", "1"),
                             ("HDEL", stream, "f"), ("HLEN", stream)):
                    with self.assertRaises(redis.ResponseError) as cm:
                        r.execute_command(*argv)
                    self.assertEqual(str(cm.exception), WRONGTYPE, argv)
                with self.assertRaisesRegex(redis.ResponseError, "^value is not an integer"):
                    r.execute_command("HINCRBY", stream, "f", "x")  # parsed before the type
                self.assertEqual(r.type(stream), b"stream")
                self.assertEqual(r.exists(stream, f"{p}.none"), 1)
                self.assertEqual(r.ttl(stream), -1)
                self.assertEqual(r.persist(stream), 0)
                self.assertIn(stream.encode(), r.keys(f"{p}*"))
                # XADD to a hash's name.
                self.assertEqual(r.hset(h, "f", "v"), 1)
                for kw in ({}, {"nomkstream": True}, {"maxlen": 5}):
                    with self.assertRaises(redis.ResponseError) as cm:
                        r.xadd(h, {"a": "1"}, **kw)
                    self.assertEqual(str(cm.exception), WRONGTYPE, kw)
                self.assertEqual(r.type(h), b"hash")
                self.assertEqual(r.hgetall(h), {b"f": b"v"})
                # Argument errors come before the type, as in Redis.
                with self.assertRaisesRegex(redis.ResponseError, "wrong number of arguments"):
                    r.execute_command("XADD", h, "*", "a")
        self.assertNotIn(h, self.srv.topics())

    def test_streams_cannot_be_deleted_or_expired(self):
        # nerve's own: topics go by retention (docs/redis.md).
        stream = f"{prefix()}.s"
        self.r.xadd(stream, {"a": "1"})
        h = f"{prefix()}:h"
        self.r.hset(h, "f", "v")
        with self.assertRaisesRegex(redis.ResponseError, "^DEL refused: .* is a stream"):
            self.r.delete(h, stream)
        self.assertEqual(self.r.exists(h), 1)  # a DEL naming a stream deletes nothing
        with self.assertRaisesRegex(redis.ResponseError, "^EXPIRE refused: .* is a stream"):
            self.r.expire(stream, 10)
        self.assertEqual(self.r.type(stream), b"stream")

    def test_pipelined_xadds_to_a_new_topic_keep_their_order(self):
        # The first XADD makes the topic; the others wait for it, then follow in order.
        out = self.r.pipeline(transaction=False)
        for i in range(200):
            out.xadd(self.fresh, {"i": str(i)})
        ids = out.execute()
        offsets = [decode_id(v, 1)[2] for v in ids]
        self.assertEqual(offsets, list(range(200)))
        events = self.srv.read_partition(self.fresh, 0)
        self.assertEqual([e["data"]["i"] for e in events], [str(i) for i in range(200)])
        self.assertEqual(self.r.type(self.fresh), b"stream")

    # -- redis-cli ------------------------------------------------------------------------

    def test_redis_cli_scripted_commands(self):
        cli = shutil.which("redis-cli")
        if cli is None:
            self.skipTest("redis-cli is not installed (.ci/install-deps installs redis-tools)")
        rs = redis_or_skip(self)
        p = prefix()
        k = f"{p}:k"

        def run(port, *argv, stdin=None):
            proc = subprocess.run([cli, "-p", str(port)] + list(argv), input=stdin,
                                  capture_output=True, timeout=20, text=True)
            self.assertEqual(proc.returncode, 0, proc)
            return proc.stdout + proc.stderr

        commands = [("HSET", k, "f", "v", "g", "w"), ("HGET", k, "f"), ("HGET", k, "nope"),
                    ("HINCRBY", k, "n", "41"), ("HINCRBY", k, "n", "1"), ("HINCRBY", k, "f", "1"),
                    ("HLEN", k), ("HDEL", k, "g"), ("HGETALL", k), ("TYPE", k),
                    ("EXISTS", k, f"{p}:none"), ("TTL", k), ("EXPIRE", k, "100"), ("TTL", k),
                    ("PERSIST", k), ("KEYS", f"{p}:*"), ("SCAN", "0", "MATCH", f"{p}:*",
                                                        "COUNT", "1000000"),
                    ("HGET", k), ("DEL", k), ("EXISTS", k)]
        for argv in commands:
            with self.subTest(argv=argv):
                self.assertEqual(run(self.port, *argv), run(rs.port, *argv))
        self.assertEqual(run(self.port, "HSET", f"{p}:cli", "f", "v"), "1\n")
        # A script on standard input, as shell scripts pipe one.
        script = f"HSET {p}:s a 1\nHINCRBY {p}:s a 2\nHGET {p}:s a\nTYPE {p}:s\nDEL {p}:s\n"
        self.assertEqual(run(self.port, stdin=script), run(rs.port, stdin=script))
        self.assertEqual(run(self.port, stdin=script), "1\n3\n3\nhash\n1\n")


class KeyspaceDurabilityTest(RespTestCase):

    def test_acknowledged_writes_survive_kill_9(self):
        srv, port = self.resp_server()
        p = prefix()
        counter = f"{p}:counter"
        acked = {}  # writer -> the last value HINCRBY answered
        lock = threading.Lock()
        stop = threading.Event()

        def writer(w):
            r = redis.Redis(port=port, socket_timeout=10)
            try:
                while not stop.is_set():
                    value = r.hincrby(counter, f"w{w}", 1)
                    r.hset(f"{p}:last{w}", "n", str(value))
                    with lock:
                        acked[w] = value
            except (redis.ConnectionError, redis.TimeoutError, OSError):
                pass  # killed under us

        first = redis.Redis(port=port, socket_timeout=10)
        self.addCleanup(first.close)
        first.hset(f"{p}:ttl", "f", "v")
        first.expire(f"{p}:ttl", 1000)
        threads = [threading.Thread(target=writer, args=(w,)) for w in range(4)]
        for t in threads:
            t.start()
        self.wait_for(lambda: sum(acked.values()) > 300, timeout=60,
                      what="300 acknowledged HINCRBYs")
        srv.kill()
        stop.set()
        for t in threads:
            t.join(15)
        srv.start()
        r = redis.Redis(port=resp_port(srv), socket_timeout=10)
        self.addCleanup(r.close)
        with lock:
            final = dict(acked)
        stored = r.hgetall(counter)
        for w, value in final.items():
            n = int(stored[f"w{w}".encode()])
            # Every acknowledged increment is there; one more may have been
            # written and not answered before the kill.
            self.assertIn(n, (value, value + 1), f"writer {w}: acked {value}, stored {n}")
            last = int(r.hget(f"{p}:last{w}", "n") or 0)
            self.assertGreaterEqual(last, value - 1)
        ttl = r.ttl(f"{p}:ttl")
        self.assertTrue(900 < ttl <= 1000, ttl)


if __name__ == "__main__":
    unittest.main()
