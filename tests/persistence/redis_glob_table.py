#!/usr/bin/env python3
"""Prints the glob table of tests/persistence/glob_test.cpp as a real Redis
answers it: starts redis-server (Debian's redis-server package) on a free
loopback port in a temp dir, stores every key of KEYS below, runs KEYS for
every pattern of PATTERNS and prints, per pattern, the keys that matched as
C++ lines. Run it after changing either list and paste its output into the
test's table; glob_test.cpp checks that nerve's matcher agrees, pair by pair.
"""
import os
import socket
import subprocess
import tempfile
import time

KEYS = [b"hello", b"hallo", b"hillo", b"hllo", b"heeello", b"h*llo", b"h]llo", b"h-llo", b"a", b"b",
        b"c", b"-", b"]", b"[", b"^", b"!", b"?", b"*", b"\\", b"abc", b"abc\\", b"ab", b"axbxc",
        b"x", b"xx", b"", b"\x00", b"a\x00b", b"\xff", b"\xc3\xa9"]
PATTERNS = [b"*", b"**", b"", b"h?llo", b"h*llo", b"h[ae]llo", b"h[^e]llo", b"h[a-i]llo",
            b"h[i-a]llo", b"h\\*llo", b"h[\\]]llo", b"h[]]llo", b"[a-]", b"[-a]", b"[]", b"[",
            b"[^", b"[^]", b"abc\\", b"a[bc", b"*a*b*c", b"?", b"\\", b"\\\\", b"[\\", b"[a-c",
            b"x*", b"*x", b"[!a]", b"a**b", b"[a\\-c]", b"\\?", b"[*]", b"[?]", b"a?b",
            b"[\x00-a]", b"[a-\xff]", b"\xff", b"[\xc3]*", b"h[^a-e]llo", b"[^^]", b"*\\", b"?*",
            b"*?*?", b"[[]", b"[\\[]", b"h\\[ae]llo", b"\\a"]


def encode(args):
    out = b"*%d\r\n" % len(args)
    for a in args:
        out += b"$%d\r\n%s\r\n" % (len(a), a)
    return out


def read(f):
    line = f.readline()
    kind, rest = line[:1], line[1:-2]
    if kind in (b"+", b":"):
        return rest
    if kind == b"-":
        raise RuntimeError(rest.decode())
    if kind == b"$":
        n = int(rest)
        return None if n < 0 else f.read(n + 2)[:-2]
    if kind == b"*":
        return [read(f) for _ in range(int(rest))]
    raise RuntimeError("unexpected reply %r" % line)


def literal(b):
    out = '"'
    for c in b:
        if chr(c) in '"\\':
            out += "\\" + chr(c)
        elif 32 <= c < 127:
            out += chr(c)
        else:
            out += '\\x%02x""' % c  # "" ends the escape before the next byte
    return out + '"sv'


def main():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as d:
        server = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                                   "--save", "", "--appendonly", "no", "--dir", d],
                                  stdout=subprocess.DEVNULL)
        try:
            for _ in range(100):
                try:
                    conn = socket.create_connection(("127.0.0.1", port))
                    break
                except OSError:
                    time.sleep(0.05)
            f = conn.makefile("rb")

            def cmd(*args):
                conn.sendall(encode(list(args)))
                return read(f)

            print("// redis_server_version: " + cmd(b"INFO", b"server").split(b"\r\n")[1].decode())
            for k in KEYS:
                cmd(b"HSET", k, b"f", b"v")
            for p in PATTERNS:
                got = set(cmd(b"KEYS", p))
                print("{%s, {%s}}," % (literal(p), ", ".join(literal(k) for k in KEYS if k in got)))
            conn.close()
        finally:
            server.terminate()
            server.wait()


if __name__ == "__main__":
    main()
