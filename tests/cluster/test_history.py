"""tests/cluster/history.py and cluster_harness.py without a running cluster: attempts
recorded from many threads come out as whole lines the checker reads back; HTTP answers
map to ok, fail and info; a cluster's nodes get the flags of CONTRACT.md section 9.
"""

import os
import shutil
import tempfile
import threading
import unittest

import checker
import cluster_harness
import history


class HistoryTest(unittest.TestCase):

    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="nerve-history-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.path = os.path.join(self.dir, "history.jsonl")

    def read_back(self):
        with open(self.path) as f:
            return checker.parse_history(f, self.path)

    def test_attempts_from_many_threads_are_whole_lines(self):
        threads, per_thread = 8, 200
        with history.History(self.path) as h:
            def writer(w):
                for seq in range(per_thread):
                    t0, batch = h.begin()
                    events = [{"id": f"w{w}-{seq}", "key": f"k{seq % 16}"}]
                    h.publish_answered("t", events, t0, batch, 201,
                                       {"events": [{"partition": w, "offset": seq}]})

            workers = [threading.Thread(target=writer, args=(w,)) for w in range(threads)]
            for t in workers:
                t.start()
            for t in workers:
                t.join()
        attempts = self.read_back()
        self.assertEqual(len(attempts), threads * per_thread)
        self.assertEqual(len({a.id for a in attempts}), threads * per_thread)
        self.assertEqual(len({a.batch for a in attempts}), threads * per_thread)
        self.assertTrue(all(a.outcome == "ok" and a.t0 <= a.t1 for a in attempts))
        self.assertEqual(h.counts, {"ok": threads * per_thread, "fail": 0, "info": 0})

    def test_http_answers_map_to_outcomes(self):
        self.assertEqual(history.outcome_of(201), "ok")
        for status in (400, 404, 409, 413, 422):
            self.assertEqual(history.outcome_of(status), "fail", status)
        for status in (None, 408, 429, 500, 503, 504):
            self.assertEqual(history.outcome_of(status), "info", status)

    def test_a_request_records_each_event_in_order(self):
        events = [{"id": "a", "key": "k"}, {"id": "b"}, {"id": "c", "key": "k"}]
        with history.History(self.path) as h:
            t0, batch = h.begin()
            self.assertEqual(h.publish_answered(
                "t", events, t0, batch, 201,
                {"events": [{"partition": 1, "offset": n, "duplicate": n == 1}
                            for n in range(3)]}), "ok")
            t0, batch2 = h.begin()
            self.assertEqual(h.publish_answered("t", events[:1], t0, batch2, 400), "fail")
            t0, batch3 = h.begin()
            self.assertEqual(h.publish_failed("t", events[1:], t0, batch3), "info")
            with self.assertRaises(ValueError):
                h.publish_answered("t", events, t0, batch3, 201, {"events": []})
            with self.assertRaises(ValueError):
                h.record("d", "t", None, t0, "ok")
        attempts = self.read_back()
        self.assertEqual([(a.id, a.outcome, a.offset) for a in attempts],
                         [("a", "ok", 0), ("b", "ok", 1), ("c", "ok", 2), ("a", "fail", None),
                          ("b", "info", None), ("c", "info", None)])
        self.assertEqual([a.key for a in attempts[:3]], ["k", None, "k"])
        self.assertEqual([a.duplicate for a in attempts[:3]], [False, True, False])
        self.assertEqual({a.batch for a in attempts[:3]}, {batch})

    def test_the_node_and_refused_connections_are_recorded(self):
        events = [{"id": "a", "key": "k"}, {"id": "b"}]
        with history.History(self.path) as h:
            t0, batch = h.begin()
            self.assertEqual(h.publish_refused("t", events, t0, batch, node="n2"), "fail")
            t0, batch = h.begin()
            h.publish_failed("t", events, t0, batch, node="n3")
            t0, batch = h.begin()
            h.publish_answered("t", events[:1], t0, batch, 201,
                               {"events": [{"partition": 0, "offset": 0}]}, node="n1")
        attempts = self.read_back()
        self.assertEqual([(a.id, a.outcome, a.node) for a in attempts],
                         [("a", "fail", "n2"), ("b", "fail", "n2"), ("a", "info", "n3"),
                          ("b", "info", "n3"), ("a", "ok", "n1")])

    def test_faults_are_written_for_the_checker(self):
        path = os.path.join(self.dir, "faults.jsonl")
        history.write_faults(path, [
            {"kind": "kill", "node": "n2", "t0": 1.5, "t1": 9.0, "partitions": ["t/0", "t/3"]},
            {"kind": "isolate", "node": "n1", "t0": 10.0, "t1": 12.0}])
        with open(path) as f:
            faults = checker.parse_faults(f, path)
        self.assertEqual([(f.kind, f.node, f.t0, f.t1) for f in faults],
                         [("kill", "n2", 1.5, 9.0), ("isolate", "n1", 10.0, 12.0)])
        self.assertEqual(faults[0].partitions, frozenset({("t", 0), ("t", 3)}))
        self.assertIsNone(faults[1].partitions)


class ClusterHarnessTest(unittest.TestCase):

    def test_free_ports_are_distinct(self):
        ports = cluster_harness.free_ports(5)
        self.assertEqual(len(set(ports)), 5)

    def test_nodes_get_ids_own_dirs_and_one_member_list(self):
        cluster = cluster_harness.Cluster(3, args=["--resp", "127.0.0.1:0"])
        self.addCleanup(cluster.cleanup)
        self.assertEqual(cluster.ids(), ["n1", "n2", "n3"])
        members = ",".join(f"n{i}@127.0.0.1:{p}" for i, p in enumerate(cluster.ports, 1))
        data_dirs = set()
        for i, node_id in enumerate(cluster.ids()):
            cmd = cluster[node_id].command()
            self.assertEqual(cmd[1], "run")
            for flag, value in (("--node-id", node_id), ("--http", "127.0.0.1:0"),
                                ("--cluster-listen", f"127.0.0.1:{cluster.ports[i]}"),
                                ("--cluster-members", members), ("--resp", "127.0.0.1:0")):
                self.assertEqual(cmd[cmd.index(flag) + 1], value, cmd)
            data_dirs.add(cmd[cmd.index("--data-dir") + 1])
        self.assertEqual(len(data_dirs), 3)
        self.assertEqual(cluster.running(), [])
        self.assertEqual(cluster.dump_all(), [])  # nothing started, nothing to dump


if __name__ == "__main__":
    unittest.main()
