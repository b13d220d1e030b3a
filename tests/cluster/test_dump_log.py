"""`nerve __dump-log --data-dir D`: every stored event of a stopped node, one line each.

A real node takes keyed, keyless and batched publishes on two topics and is stopped;
the dump must list exactly the acknowledged events at the coordinates they were
acknowledged with, sorted by topic, partition and offset, offsets dense from 0, each
line's sha1 the SHA-1 of the event JSON as the node serves it (the stored bytes), the
same on a second run, and the data directory must be left byte for byte as it was. A
directory that is missing or holds no log is a one-line error and exit 1; a missing
--data-dir is a usage error (exit 2). The dump and a history of the publishes pass
tests/cluster/checker.py.
"""

import hashlib
import json
import os
import tempfile
import time
import unittest

import checker
from cluster_harness import ServerTestCase, run_nerve

TOPICS = ("dump.orders", "dump.audit")


def tree_state(path):
    """{relative file name: (size, sha1)} of every file below `path`."""
    out = {}
    for root, _, files in os.walk(path):
        for name in files:
            full = os.path.join(root, name)
            with open(full, "rb") as f:
                data = f.read()
            out[os.path.relpath(full, path)] = (len(data), hashlib.sha1(data).hexdigest())
    return out


def raw_events(body):
    """The bytes of each event of a GET /v1/topics/T/events answer, as the node sent them."""
    text = body.decode("utf-8")
    decoder = json.JSONDecoder()
    at = text.index('"events":[') + len('"events":[')
    out = []
    while text[at] != "]":
        event, end = decoder.raw_decode(text, at)
        out.append((event, text[at:end].encode("utf-8")))
        at = end + 1 if text[end] == "," else end
    return out


class DumpLogTest(ServerTestCase):

    def publish_all(self, srv):
        """Publishes to both topics; returns the history's attempts (all ok)."""
        attempts = []
        requests = []
        for i in range(24):
            e = {"id": f"dump-{i}", "data": {"i": i, "text": "é" * (i % 3)}}
            if i % 3:
                e["key"] = f"k{i % 5}"
            requests.append((TOPICS[i % 2], [e]))
        requests.append((TOPICS[0], [{"id": f"batch-{j}", "key": "kb", "data": j}
                                     for j in range(5)]))
        requests.append((TOPICS[1], [{"id": f"free-{j}", "data": [j]} for j in range(3)]))
        for n, (topic, events) in enumerate(requests):
            t0 = time.monotonic()
            r = srv.publish(topic, events)
            t1 = time.monotonic()
            self.assertEqual(r.status, 201, r)
            for e, a in zip(events, r.json()["events"]):
                self.assertEqual(a["id"], e["id"])
                attempts.append(checker.Attempt(e["id"], e.get("key"), topic, t0, t1, "ok",
                                                a["partition"], a["offset"], f"r{n}",
                                                len(attempts) + 1))
        return attempts

    def stored_bytes(self, srv):
        """{id: the event JSON bytes the node serves} of every stored event."""
        out = {}
        for topic in TOPICS:
            for p in range(srv.topics()[topic]["partitions"]):
                r = srv.get(f"/v1/topics/{topic}/events?partition={p}&limit=1000")
                self.assertEqual(r.status, 200, r)
                for event, raw in raw_events(r.body):
                    out[event["id"]] = raw
        return out

    def dump(self, data_dir):
        r = run_nerve(["__dump-log", "--data-dir", data_dir])
        self.assertEqual(r.returncode, 0, r)
        self.assertEqual(r.stderr, "", r)
        return r.stdout

    def test_dump_lists_every_acknowledged_event_once_and_leaves_the_dir_alone(self):
        srv = self.new_server()
        started_us = int(time.time() * 1e6)
        attempts = self.publish_all(srv)
        stored = self.stored_bytes(srv)
        self.stop_ok(srv)
        stopped_us = int(time.time() * 1e6)
        before = tree_state(srv.data_dir)

        text = self.dump(srv.data_dir)
        self.assertEqual(self.dump(srv.data_dir), text, "a second dump differs")
        self.assertEqual(tree_state(srv.data_dir), before, "__dump-log changed the data dir")

        entries = checker.parse_dump("n1", text.splitlines(), "dump")
        self.assertEqual(len(entries), len(attempts), text)
        keys = [(e.topic, e.partition, e.offset) for e in entries]
        self.assertEqual(keys, sorted(keys), "not sorted by topic, partition, offset")
        acked = {a.id: (a.topic, a.partition, a.offset) for a in attempts}
        partitions = {}
        for e in entries:
            self.assertEqual((e.topic, e.partition, e.offset), acked.pop(e.id), e)
            partitions.setdefault((e.topic, e.partition), []).append(e.offset)
            self.assertEqual(e.sha1, hashlib.sha1(stored[e.id]).hexdigest(), e)
            self.assertTrue(started_us - 5_000_000 <= e.time_us <= stopped_us, e)
        self.assertEqual(acked, {}, "acknowledged but not dumped")
        self.assertGreater(len(partitions), 4, "the keys should spread over partitions")
        for tp, offsets in partitions.items():
            self.assertEqual(offsets, list(range(len(offsets))), tp)

        report = checker.check({"n1": entries}, attempts)
        self.assertTrue(report.valid, report.text())
        # A single node replicates nothing: no epochs, and the directory stays as it was.
        r = run_nerve(["__dump-log", "--epochs", "--data-dir", srv.data_dir])
        self.assertEqual((r.returncode, r.stdout), (0, ""), r)
        self.assertEqual(tree_state(srv.data_dir), before, "__dump-log --epochs changed it")

    def test_a_missing_directory_is_a_one_line_error_and_is_not_created(self):
        missing = os.path.join(tempfile.mkdtemp(prefix="nerve-dump-"), "nope")
        self.addCleanup(os.rmdir, os.path.dirname(missing))
        r = run_nerve(["__dump-log", "--data-dir", missing])
        self.assertEqual(r.returncode, 1, r)
        self.assertEqual(r.stdout, "", r)
        self.assertEqual(len(r.stderr.strip().splitlines()), 1, r)
        self.assertIn(missing, r.stderr)
        self.assertIn("does not exist", r.stderr)
        self.assertFalse(os.path.exists(missing))
        r = run_nerve(["__dump-log", "--epochs", "--data-dir", missing])
        self.assertEqual((r.returncode, r.stdout), (1, ""), r)
        self.assertIn("does not exist", r.stderr)

    def test_a_directory_without_a_log_is_an_error_and_stays_empty(self):
        empty = tempfile.mkdtemp(prefix="nerve-dump-")
        self.addCleanup(os.rmdir, empty)
        r = run_nerve(["__dump-log", "--data-dir", empty])
        self.assertEqual(r.returncode, 1, r)
        self.assertEqual(len(r.stderr.strip().splitlines()), 1, r)
        self.assertIn("not a nerve data directory", r.stderr)
        self.assertEqual(os.listdir(empty), [])

    def test_data_dir_is_required_and_the_command_is_hidden(self):
        r = run_nerve(["__dump-log"])
        self.assertEqual(r.returncode, 2, r)
        self.assertIn("--data-dir", r.stderr)
        self.assertNotIn("__dump-log", run_nerve(["--help"]).stdout)


if __name__ == "__main__":
    unittest.main()
