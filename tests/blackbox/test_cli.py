"""Black-box tests of `nerve publish` (CONTRACT.md section 1).

Exit codes: 0 ok; 1 operation failed; 2 usage error; 4 server unreachable.
Errors are one line on stderr; --json prints exactly the API's JSON.
"""

import json
import os
import shutil
import socket
import tempfile
import unittest
import uuid

from harness import Server, ServerTestCase, run_nerve

HEADER = ["ID", "TOPIC", "PARTITION", "OFFSET", "TIME", "DUPLICATE"]


def new_id():
    return f"cli-{uuid.uuid4().hex}"


def closed_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class CliTestCase(ServerTestCase):

    @classmethod
    def setUpClass(cls):
        cls.srv = Server()
        cls.addClassCleanup(cls.srv.cleanup)
        cls.srv.start()

    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="nerve-cli-")
        self.addCleanup(shutil.rmtree, self.dir, True)

    def tearDown(self):
        self.assertHealthy(self.srv)

    def cli(self, *args, server=True, env=None, input=None):
        argv = ["publish"]
        if server:
            argv += ["--server", self.srv.url]
        argv += list(args)
        return run_nerve(argv, env=env, input=input, cwd=self.dir)

    def ok(self, res):
        self.assertEqual(res.returncode, 0, res)
        self.assertEqual(res.stderr, "", res)
        return res.stdout

    def fails(self, res, code, *contains):
        self.assertEqual(res.returncode, code, res)
        self.assertEqual(res.stdout, "", res)
        lines = res.stderr.splitlines()
        self.assertEqual(len(lines), 1, res)
        self.assertTrue(lines[0].startswith("nerve: "), res)
        for c in contains:
            self.assertIn(c, lines[0])
        return lines[0]

    def stored(self, eid):
        r = self.srv.get(f"/v1/events/{eid}")
        self.assertEqual(r.status, 200, r)
        return r.json()["event"]

    def parse_table(self, text):
        lines = text.rstrip("\n").split("\n")
        header = lines[0]
        starts = [header.index(h) for h in HEADER]
        self.assertEqual(header.split(), HEADER)
        self.assertEqual(starts, sorted(starts))
        rows = []
        for line in lines[1:]:
            cells = line.split()
            self.assertEqual(len(cells), len(HEADER), line)
            # Aligned: every cell starts where its header starts.
            pos = 0
            for cell, start in zip(cells, starts):
                at = line.index(cell, pos)
                self.assertEqual(at, start, f"column misaligned in {line!r}")
                pos = at + len(cell)
            rows.append(dict(zip(HEADER, cells)))
        return rows


class PublishCliTest(CliTestCase):

    def test_data_flag_with_json_output_is_the_api_json(self):
        eid = new_id()
        out = self.ok(self.cli("cli.orders", "--data", '{"total": 12.5, "items": ["a"]}',
                               "--key", "cust-1", "--id", eid, "--type", "order.created",
                               "--source", "shop", "--json"))
        self.assertTrue(out.endswith("\n"))
        self.assertEqual(out.count("\n"), 1)
        body = json.loads(out)
        [pub] = body["events"]
        self.assertEqual(set(body), {"events"})
        self.assertEqual(set(pub), {"id", "topic", "partition", "offset", "time", "duplicate"})
        self.assertEqual((pub["id"], pub["topic"], pub["duplicate"]), (eid, "cli.orders", False))
        ev = self.stored(eid)
        self.assertEqual((ev["partition"], ev["offset"], ev["time"]),
                         (pub["partition"], pub["offset"], pub["time"]))
        self.assertEqual((ev["key"], ev["type"], ev["source"]),
                         ("cust-1", "order.created", "shop"))
        self.assertEqual(ev["data"], {"total": 12.5, "items": ["a"]})
        # Byte for byte what the API answers for the same request.
        api = self.srv.publish("cli.orders", {"id": eid, "data": 0})
        self.assertEqual(api.status, 201)
        again = self.ok(self.cli("cli.orders", "--id", eid, "--data", "0", "--json"))
        self.assertEqual(again, api.body.decode() + "\n")
        self.assertTrue(json.loads(again)["events"][0]["duplicate"])

    def test_data_file(self):
        path = os.path.join(self.dir, "data.json")
        data = {"text": "h\u00e9llo \u2603", "n": [1, 2, {"deep": None}], "big": 2**53 + 1}
        with open(path, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2, ensure_ascii=False)
        eid = new_id()
        self.ok(self.cli("cli.files", "--data-file", path, "--id", eid))
        self.assertEqual(self.stored(eid)["data"], data)

    def test_stdin(self):
        eid = new_id()
        data = [1, "two", {"three": 3.0}]
        self.ok(self.cli("cli.stdin", "-", "--id", eid, input=json.dumps(data).encode()))
        self.assertEqual(self.stored(eid)["data"], data)
        eid = new_id()
        self.ok(self.cli("cli.stdin", "--id", eid, "-", input=b'  "just a string"\n'))
        self.assertEqual(self.stored(eid)["data"], "just a string")

    def test_human_table_output(self):
        eid = new_id()
        out = self.ok(self.cli("cli.table", "--data", "1", "--id", eid))
        rows = self.parse_table(out)
        self.assertEqual(len(rows), 1)
        ev = self.stored(eid)
        self.assertEqual(rows[0], {"ID": eid, "TOPIC": "cli.table",
                                   "PARTITION": str(ev["partition"]),
                                   "OFFSET": str(ev["offset"]), "TIME": ev["time"],
                                   "DUPLICATE": "no"})
        rows = self.parse_table(self.ok(self.cli("cli.table", "--data", "2", "--id", eid)))
        self.assertEqual(rows[0]["DUPLICATE"], "yes")
        self.assertEqual(rows[0]["OFFSET"], str(ev["offset"]))
        # A generated id (36 chars) widens the ID column.
        rows = self.parse_table(self.ok(self.cli("cli.table", "--data", "3")))
        self.assertRegex(rows[0]["ID"], r"^[0-9a-f-]{36}$")

    def test_server_from_environment(self):
        eid = new_id()
        self.ok(self.cli("cli.env", "--data", "1", "--id", eid, server=False,
                         env={"NERVE_SERVER": self.srv.url}))
        self.assertEqual(self.stored(eid)["data"], 1)
        # The flag beats the environment.
        eid = new_id()
        self.ok(self.cli("cli.env", "--data", "2", "--id", eid,
                         env={"NERVE_SERVER": f"http://127.0.0.1:{closed_port()}"}))
        self.assertEqual(self.stored(eid)["data"], 2)


class ExitCodeTest(CliTestCase):

    def test_conflict_is_1(self):
        eid = new_id()
        self.ok(self.cli("cli.a", "--data", "1", "--id", eid))
        self.fails(self.cli("cli.b", "--data", "1", "--id", eid), 1, "409", eid)
        self.fails(self.cli("cli.b", "--data", "1", "--id", eid, "--json"), 1, "409")

    def test_refused_by_the_server_is_1(self):
        self.fails(self.cli("bad..topic", "--data", "1"), 1, "400", "bad..topic")
        self.fails(self.cli("cli.x", "--data", "1", "--id", "has space"), 1, "400", "id")
        self.fails(self.cli("cli.x", "--data", "1", "--key", ""), 1, "400", "key")
        self.fails(self.cli("cli.x", "--data", "1", "--type", "t" * 256), 1, "400", "type")

    def test_usage_errors_are_2(self):
        path = os.path.join(self.dir, "bad.json")
        with open(path, "w") as f:
            f.write("{not json")
        good = os.path.join(self.dir, "good.json")
        with open(good, "w") as f:
            f.write("1")
        cases = [
            (["cli.u", "--data", "not json"], ["--data"]),
            (["cli.u", "--data", "{\"a\":"], ["JSON"]),
            (["cli.u", "--data", ""], ["JSON"]),
            (["cli.u", "--data-file", path], ["JSON"]),
            (["cli.u", "--data-file", os.path.join(self.dir, "missing.json")], ["missing.json"]),
            (["cli.u", "--data", "1", "--data-file", good], ["once"]),
            (["--data", "1"], ["topic"]),
            ([], ["topic"]),
            (["cli.u", "--data", "1", "--bogus"], ["--bogus"]),
            (["cli.u", "extra"], ["extra"]),
            (["cli.u", "--data"], ["--data"]),
        ]
        for args, contains in cases:
            with self.subTest(args=args):
                self.fails(self.cli(*args), 2, *contains)
        self.fails(self.cli("cli.u", "-", input=b""), 2, "JSON")
        self.fails(self.cli("cli.u", "-", input=b"{broken"), 2, "stdin")
        self.fails(self.cli("cli.u", "-", "--data", "1", input=b"1"), 2, "once")
        self.fails(self.cli("cli.u", "--data", "1", "--server", "ftp://x", server=False), 2,
                   "ftp://x")
        self.fails(run_nerve(["bogus-command"]), 2)
        self.fails(run_nerve([]), 2)
        # Nothing of the above reached the server.
        self.assertNotIn("cli.u", self.srv.topics())

    def test_unreachable_is_4(self):
        url = f"http://127.0.0.1:{closed_port()}"
        self.fails(self.cli("cli.down", "--data", "1", "--server", url, server=False), 4,
                   url)
        self.fails(self.cli("cli.down", "--data", "1", "--server", url, "--json",
                            server=False), 4)
        self.fails(self.cli("cli.down", "--data", "1", server=False,
                            env={"NERVE_SERVER": url}), 4)

    def test_stopped_server_is_4(self):
        srv = self.new_server()
        url = srv.url
        self.ok(run_nerve(["publish", "t", "--data", "1", "--server", url]))
        self.stop_ok(srv)
        self.fails(run_nerve(["publish", "t", "--data", "1", "--server", url]), 4)

    def test_token(self):
        srv = self.new_server(config={"http": {"token": "cli-secret"}})
        self.fails(run_nerve(["publish", "t", "--data", "1", "--server", srv.url]), 1, "401")
        self.fails(run_nerve(["publish", "t", "--data", "1", "--server", srv.url,
                              "--token", "wrong"]), 1, "401")
        self.ok(run_nerve(["publish", "t", "--data", "1", "--server", srv.url,
                           "--token", "cli-secret"]))
        self.ok(run_nerve(["publish", "t", "--data", "2", "--server", srv.url],
                          env={"NERVE_TOKEN": "cli-secret"}))
        r = srv.get("/v1/topics", headers={"Authorization": "Bearer cli-secret"})
        self.assertEqual(r.json()["topics"][0]["events"], 2)


if __name__ == "__main__":
    unittest.main()
