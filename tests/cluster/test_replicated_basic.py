"""T1 of cluster step 2 (issue 13, CLUSTER.md section 3(c), CONTRACT.md section 9): three
etcd members and three nerve nodes on loopback, replication_factor 3, min_insync 2.

A topic of 8 partitions gets events for every partition through every node. Then:

- every partition has a leader, all three nodes as replicas and all three in sync, and
  every node reports the same leader and epoch (GET /v1/cluster/partitions);
- GET /v1/cluster lists, per node, the partitions it leads;
- etcd holds what the API says: a registration per node, the topic's record, and per
  partition a state record (leader, epoch, replicas, in sync) and a leader key;
- once every follower's lag is 0, the high watermark is the log end and equals the
  number of events acknowledged in the partition; every node reads every partition in
  full;
- `nerve cluster partitions` names each partition's leader, and `--json` prints the API's
  answer;
- the nodes stop, and `nerve __dump-log` of each shows every partition's log identical on
  all three (offsets, ids, times, content hashes), with every acknowledged id at its
  offset (checker.py in its replicated mode).

Skips itself when etcd is not installed (etcd_harness.py).
"""

import json
import os
import shutil
import tempfile
import time
import unittest

import checker
import cluster_harness
import history as history_mod
import scenario
from harness import run_nerve

TOPIC_PARTITIONS = 8
NODES = ("n1", "n2", "n3")
FIRST_WRITE_WITHIN_S = 20.0  # topic creation in etcd and the first elections
SETTLE_WITHIN_S = 15.0


def table_rows(text):
    """The rows of an aligned CLI table as {HEADER: cell}: each cell starts where its
    header starts (runtime/table.cpp), the last one runs to the end of the line."""
    lines = [line for line in text.rstrip("\n").split("\n") if line.strip()]
    if not lines:
        return []
    header = lines[0].split()
    starts = []
    for h in header:
        starts.append(lines[0].index(h, starts[-1] + 1 if starts else 0))
    rows = []
    for line in lines[1:]:
        if line.startswith("warning:"):
            continue
        cells = {}
        for i, (h, start) in enumerate(zip(header, starts)):
            end = starts[i + 1] if i + 1 < len(starts) else len(line)
            cells[h.upper()] = line[start:end].strip()
        rows.append(cells)
    return rows


class ReplicatedBasicTest(cluster_harness.ClusterTestCase):

    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="nerve-repl-basic-")
        self.addCleanup(shutil.rmtree, self.dir, True)

    def publish(self, node, events):
        """Publishes through `node`, records it in the history; returns the Response."""
        t0, batch = self.hist.begin()
        r = self.cluster[node].publish(self.topic, events)
        body = r.json() if r.status < 300 else None
        self.hist.publish_answered(self.topic, events, t0, batch, r.status, body, node=node)
        return r

    def check_health_and_metrics(self, cluster, topic, leaders):
        """All copies in sync: the cluster indicator is healthy on every node, and each
        node's /metrics says which partitions it leads, with 3 in sync and no lag."""
        for node in NODES:
            health = cluster[node].get("/health/detailed").json()
            ind = [i for i in health["indicators"] if i["name"] == "cluster"]
            self.assertEqual(len(ind), 1, health)
            self.assertEqual(ind[0]["status"], "healthy", f"{node}: {ind[0]}")
            text = cluster[node].get("/metrics").body.decode()
            for name in ("nerve_etcd_up 1", "nerve_leader_elections_total",
                         "nerve_etcd_request_seconds_bucket"):
                self.assertIn(name, text, f"{node} /metrics")
            for p, leader in leaders.items():
                labels = f'partition="{p}",topic="{topic}"'
                self.assertIn(f"nerve_partition_leader{{{labels}}} "
                              f"{1 if leader == node else 0}", text, f"{node} {topic}/{p}")
                if leader == node:
                    self.assertIn(f"nerve_partition_in_sync_replicas{{{labels}}} 3", text)
                    self.assertIn(f"nerve_partition_under_replicated{{{labels}}} 0", text)

    def test_every_partition_on_three_in_sync_replicas_with_identical_logs(self):
        cluster = self.new_replicated_cluster(
            3, config={"topics": {"defaults": {"partitions": TOPIC_PARTITIONS}}})
        self.cluster = cluster
        nodes = scenario.Nodes(cluster.nodes)
        scenario.wait_until(scenario.all_linked(nodes, list(NODES)), 20, "all nodes linked")
        self.topic = topic = f"repl.basic.{cluster.name}"
        self.hist = history_mod.History(os.path.join(self.dir, "history.jsonl"))
        self.addCleanup(self.hist.close)
        keys = scenario.keys_for_partitions("basic-key-", TOPIC_PARTITIONS)
        acked = {p: [] for p in range(TOPIC_PARTITIONS)}  # partition -> ids in offset order

        def record(r, events, p):
            self.assertEqual(r.status, 201, r)
            answers = r.json()["events"]
            for e, a in zip(events, answers):
                self.assertEqual(a["partition"], scenario.partition_of(e, TOPIC_PARTITIONS), a)
            for e, a in sorted(zip(events, answers), key=lambda x: x[1]["offset"]):
                acked[a["partition"]].append((a["offset"], e["id"]))

        # The first event of each partition may meet the topic's creation and its first
        # elections: 503 with Retry-After until a leader serves, within a bound.
        t_start = time.monotonic()
        for p in range(TOPIC_PARTITIONS):
            node = NODES[p % 3]
            event = [{"id": f"first-{p}", "key": keys[p], "type": "basic", "data": {"p": p}}]
            while True:
                r = self.publish(node, event)
                if r.status == 201:
                    record(r, event, p)
                    break
                self.assertEqual(r.status, 503, f"{topic}/{p} through {node}: {r}")
                self.assertIn("retry-after", r.headers, r)
                self.assertLess(time.monotonic() - t_start, FIRST_WRITE_WITHIN_S,
                                f"{topic}/{p} took no write within {FIRST_WRITE_WITHIN_S} s: {r}")
                time.sleep(0.2)
        print(f"[repl-basic] every partition took its first write "
              f"{time.monotonic() - t_start:.2f} s after the topic's first publish", flush=True)

        # Then every partition through every node, at once: a batch of one key, and a batch
        # of every key (every partition, every leader, in one request).
        for node in NODES:
            for p in range(TOPIC_PARTITIONS):
                events = [{"id": f"{node}-p{p}-{j}", "key": keys[p], "type": "basic",
                           "data": {"node": node, "p": p, "j": j, "pad": "x" * (j * 50)}}
                          for j in range(3)]
                record(self.publish(node, events), events, p)
            mixed = [{"id": f"{node}-mixed-{p}", "key": keys[p], "type": "basic",
                      "data": {"node": node, "mixed": p}} for p in range(TOPIC_PARTITIONS)]
            record(self.publish(node, mixed), mixed, None)
        for p, got in acked.items():
            self.assertEqual([o for o, _ in got], list(range(len(got))),
                             f"{topic}/{p}: acknowledged offsets are not dense: {got}")

        # -- the replicas ---------------------------------------------------------------
        view = scenario.wait_until(
            scenario.replicas_ready(nodes, topic, TOPIC_PARTITIONS, list(NODES), in_sync=3),
            SETTLE_WITHIN_S, "every partition with a leader and 3 in-sync replicas")
        for p, e in sorted(view.items()):
            self.assertEqual(sorted(e["replicas"]), list(NODES), e)
            self.assertEqual(sorted(e["in_sync"]), list(NODES), e)
            self.assertIn(e["leader"], NODES, e)
            self.assertIsInstance(e["epoch"], int, e)
            self.assertGreaterEqual(e["epoch"], 1, e)
        leaders = {p: e["leader"] for p, e in view.items()}
        print(f"[repl-basic] leaders {leaders}", flush=True)
        for node in NODES:
            self.assertEqual(nodes.owners(node, topic), leaders,
                             f"GET /v1/cluster on {node}: partitions per node are not the "
                             f"partitions each leads")

        self.check_etcd(cluster, topic, view)
        self.check_health_and_metrics(cluster, topic, leaders)

        for node in NODES:
            caught = scenario.wait_until(
                scenario.caught_up(nodes, topic, TOPIC_PARTITIONS, node), SETTLE_WITHIN_S,
                f"every follower caught up, as {node} sees it")
            for p, e in sorted(caught.items()):
                self.assertEqual(e["log_end"], len(acked[p]), f"{node}: {e}")
                self.assertEqual(e["high_watermark"], len(acked[p]), f"{node}: {e}")
                self.assertEqual(sorted(f["node"] for f in e["followers"]),
                                 sorted(set(NODES) - {e["leader"]}), f"{node}: {e}")
        # Reads are cluster-wide: every node reads every partition in full, in order.
        for node in NODES:
            for p in range(TOPIC_PARTITIONS):
                got = [(e["offset"], e["id"]) for e in cluster[node].read_partition(topic, p)]
                self.assertEqual(got, acked[p], f"{topic}/{p} read through {node}")

        # -- the CLI ----------------------------------------------------------------------
        url = cluster["n2"].url
        res = run_nerve(["cluster", "partitions", "--server", url])
        self.assertEqual(res.returncode, 0, res)
        rows = table_rows(res.stdout)
        self.assertTrue(rows and {"TOPIC", "PARTITION", "LEADER"} <= set(rows[0]),
                        f"the table needs TOPIC, PARTITION and LEADER columns:\n{res.stdout}")
        for p, leader in leaders.items():
            match = [r for r in rows if r["TOPIC"] == topic and r["PARTITION"] == str(p)]
            self.assertEqual(len(match), 1, f"{topic}/{p} in:\n{res.stdout}")
            self.assertEqual(match[0]["LEADER"], leader, f"{topic}/{p}:\n{res.stdout}")
        res = run_nerve(["cluster", "partitions", "--server", url, "--json"])
        self.assertEqual(res.returncode, 0, res)
        self.assertEqual(json.loads(res.stdout),
                         scenario.get_json(nodes.endpoint("n2"), "/v1/cluster/partitions"))

        # -- the logs on disk ---------------------------------------------------------------
        placement = scenario.placement_file(os.path.join(self.dir, "partitions.json"), nodes, "n1")
        self.hist.close()
        codes = cluster.stop_all()
        self.assertEqual(codes, {n: 0 for n in NODES}, cluster.stderr_text()[-3000:])
        dumps = {}
        for arg in cluster.dump_all(self.dir):
            node, _, path = arg.partition("=")
            with open(path, encoding="utf-8") as f:
                dumps[node] = checker.parse_dump(node, f, path)
        self.assertEqual(sorted(dumps), list(NODES))
        logs = {}
        for node, entries in dumps.items():
            for e in entries:
                if e.topic == topic:
                    logs.setdefault(e.partition, {}).setdefault(node, []).append(
                        (e.offset, e.id, e.time_us, e.sha1))
        for p in range(TOPIC_PARTITIONS):
            copies = {n: sorted(logs.get(p, {}).get(n, [])) for n in NODES}
            self.assertEqual([(o, i) for o, i, _, _ in copies["n1"]], acked[p],
                             f"{topic}/{p} on n1")
            for n in ("n2", "n3"):
                self.assertEqual(copies[n], copies["n1"],
                                 f"{topic}/{p}: {n}'s log differs from n1's")
        self.check_epochs(cluster, topic, view, {p: len(acked[p]) for p in acked})
        report = scenario.run_checker(cluster, self.dir, self.hist.path,
                                      history_mod.write_faults(
                                          os.path.join(self.dir, "faults.jsonl"), []),
                                      placement, min_insync=2)
        self.assertTrue(report.valid, report.text())

    def check_epochs(self, cluster, topic, view, ends):
        """`nerve __dump-log --epochs`: every copy of a partition has the same leader-epoch
        checkpoint over its records (an epoch a leader began without appending shows on
        the leader only), and the last of them is the epoch the API reports."""
        copies = {}
        for node, srv in cluster.nodes.items():
            r = run_nerve(["__dump-log", "--epochs", "--data-dir", srv.data_dir], timeout=60)
            self.assertEqual(r.returncode, 0, r.stderr)
            for line in r.stdout.splitlines():
                name, part, epoch, start = line.split()
                if name == topic:
                    copies.setdefault(int(part), {}).setdefault(node, []).append(
                        (int(epoch), int(start)))
        for p, end in sorted(ends.items()):
            def with_records(entries):
                return [(e, s) for i, (e, s) in enumerate(entries)
                        if s < (entries[i + 1][1] if i + 1 < len(entries) else end)]
            got = {n: with_records(copies.get(p, {}).get(n, [])) for n in NODES}
            self.assertTrue(got["n1"], f"{topic}/{p}: no epoch checkpoint on n1: {copies}")
            for n in ("n2", "n3"):
                self.assertEqual(got[n], got["n1"], f"{topic}/{p}: {n}'s epochs differ from n1's")
            self.assertEqual(got["n1"][-1][0], view[p]["epoch"], f"{topic}/{p}: {got}")

    def check_etcd(self, cluster, topic, view):
        """What etcd holds under /nerve/<cluster.name>/ (actors/control_keys.hpp) agrees
        with the API: a registration per node, the topic's record, and per partition a
        state record with the leader, epoch, replicas and in-sync set the API reports and
        a leader key naming the leader."""
        keys = cluster.etcd.range_prefix(f"/nerve/{cluster.name}/")
        root = f"/nerve/{cluster.name}/"
        registered = sorted(k[len(root + "nodes/"):] for k in keys
                            if k.startswith(root + "nodes/"))
        self.assertEqual(registered, list(NODES), sorted(keys))
        record = keys.get(root + "topics/" + topic)
        self.assertIsNotNone(record, f"no topic record for {topic} in {sorted(keys)}")
        topic_id = json.loads(record)["id"]
        for p, e in sorted(view.items()):
            state = keys.get(f"{root}parts/{topic_id}/{p}/state")
            self.assertIsNotNone(state, f"no state record for {topic}/{p} (id {topic_id})")
            state = json.loads(state)
            self.assertEqual((state["leader"], state["epoch"], sorted(state["replicas"]),
                              sorted(state["in_sync"])),
                             (e["leader"], e["epoch"], sorted(e["replicas"]),
                              sorted(e["in_sync"])), f"{topic}/{p}: etcd {state}, API {e}")
            self.assertEqual(keys.get(f"{root}parts/{topic_id}/{p}/leader"), e["leader"],
                             f"{topic}/{p}: the leader key")


if __name__ == "__main__":
    unittest.main()
