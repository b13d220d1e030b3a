"""Disk loss on one replica (cluster step 2, CLUSTER.md 3(c) failure table): three etcd
members and three nerve nodes, replication_factor 3, min_insync 2.

Events go to every partition; then one node is killed with -9, its data directory is
deleted, and it is started again on an empty one with the same id. It must:

- say at start-up that its copies are not electable until they caught up (a copy that
  lost its disk must never lead while etcd still lists it in sync: it would lose what
  was acknowledged);
- catch up from the leaders and be in sync again on every partition, with lag 0;
- hold, once the nodes stop, a log identical to the others' on every partition (offsets,
  ids, times, content hashes), including events published while it was catching up.

Skips itself when etcd is not installed (etcd_harness.py).
"""

import os
import shutil
import tempfile
import unittest

import checker
import cluster_harness
import scenario

TOPIC_PARTITIONS = 4
NODES = ("n1", "n2", "n3")
EVENTS_PER_PARTITION = 30


class ReplicatedDiskLossTest(cluster_harness.ClusterTestCase):

    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="nerve-repl-disk-")
        self.addCleanup(shutil.rmtree, self.dir, True)

    def publish_all(self, cluster, topic, keys, tag):
        """EVENTS_PER_PARTITION events to every partition through every node, in turns,
        each retried while the answer is a 503 (a failover); returns the ids acked."""
        acked = []
        for p in range(TOPIC_PARTITIONS):
            for j in range(EVENTS_PER_PARTITION):
                node = NODES[j % 3]
                if not cluster[node].running:
                    node = next(n for n in NODES if cluster[n].running)
                event = {"id": f"{tag}-{p}-{j}", "key": keys[p], "type": "disk",
                         "data": {"p": p, "j": j}}

                def sent():
                    r = cluster[node].publish(self.topic, [event])
                    return r if r.status == 201 else None

                r = scenario.wait_until(sent, 20, f"{event['id']} acknowledged", pause_s=0.2)
                acked.append(r.json()["events"][0]["id"])
        return acked

    def test_a_replica_that_lost_its_disk_catches_up_and_rejoins(self):
        cluster = self.new_replicated_cluster(
            3, config={"topics": {"defaults": {"partitions": TOPIC_PARTITIONS}}})
        nodes = scenario.Nodes(cluster.nodes)
        scenario.wait_until(scenario.all_linked(nodes, list(NODES)), 20, "all nodes linked")
        self.topic = topic = f"repl.disk.{cluster.name}"
        keys = scenario.keys_for_partitions("disk-key-", TOPIC_PARTITIONS)
        acked = self.publish_all(cluster, topic, keys, "before")
        scenario.wait_until(scenario.caught_up(nodes, topic, TOPIC_PARTITIONS, "n1"), 20,
                            "every copy in sync before the disk loss")

        victim = "n3"
        cluster.kill(victim)
        shutil.rmtree(cluster[victim].data_dir)
        cluster.restart(victim)
        acked += self.publish_all(cluster, topic, keys, "during")
        caught = scenario.wait_until(
            scenario.caught_up(nodes, topic, TOPIC_PARTITIONS, "n1"), 30,
            f"{victim} caught up on an empty data directory and in sync again")
        for p, e in caught.items():
            self.assertIn(victim, e["in_sync"], e)
        self.assertIn("not electable until they catch up", cluster[victim].stderr_text())

        codes = cluster.stop_all()
        self.assertEqual(codes, {n: 0 for n in NODES}, cluster.stderr_text()[-3000:])
        logs = {}
        for arg in cluster.dump_all(self.dir):
            node, _, path = arg.partition("=")
            with open(path, encoding="utf-8") as f:
                for e in checker.parse_dump(node, f, path):
                    if e.topic == topic:
                        logs.setdefault(e.partition, {}).setdefault(node, []).append(
                            (e.offset, e.id, e.time_us, e.sha1))
        stored = set()
        for p in range(TOPIC_PARTITIONS):
            copies = {n: sorted(logs.get(p, {}).get(n, [])) for n in NODES}
            self.assertEqual(copies[victim], copies["n1"], f"{topic}/{p}: {victim} differs")
            self.assertEqual(copies["n2"], copies["n1"], f"{topic}/{p}: n2 differs")
            self.assertEqual([o for o, *_ in copies["n1"]], list(range(len(copies["n1"]))))
            stored |= {i for _, i, *_ in copies["n1"]}
        self.assertEqual(set(acked) - stored, set(), "acknowledged events lost")


if __name__ == "__main__":
    unittest.main()
