"""A leader left alone in its in-sync set (cluster step 2, CONTRACT.md section 9): three
etcd members and three nerve nodes, replication_factor 3, min_insync 1.

A leader syncs its copy when it ships records to the other in-sync copies, not when it
appends them (docs/architecture.md, "When each copy syncs"). With min_insync 1 a leader
whose followers died goes on acknowledging on its own copy once they left the in-sync
set, and then nothing ships: it must sync what it appends by itself. So:

- events go to both partitions; the two nodes that do not lead partition 0 are killed
  with -9;
- publishes to partition 0 through its leader are acknowledged again once the in-sync
  set is the leader alone (GET /v1/cluster/partitions says so), one after another, each
  answered 201;
- the leader is killed with -9 right after the last answer, and `nerve __dump-log` of
  its data directory holds every event it acknowledged, at dense offsets.

Skips itself when etcd is not installed (etcd_harness.py).
"""

import os
import shutil
import tempfile
import time
import unittest

import checker
import cluster_harness
import scenario

TOPIC_PARTITIONS = 2
NODES = ("n1", "n2", "n3")
ALONE_EVENTS = 40
ALONE_WITHIN_S = 30.0  # replica_lag (2 s) and the in-sync change in etcd, with slack


class ReplicatedAloneTest(cluster_harness.ClusterTestCase):

    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="nerve-repl-alone-")
        self.addCleanup(shutil.rmtree, self.dir, True)

    def acked(self, cluster, node, event, within_s):
        """Publishes `event` through `node` until it is answered 201; its id."""
        def sent():
            r = cluster[node].publish(self.topic, [event], timeout=5.0)
            return r if r.status == 201 else None

        r = scenario.wait_until(sent, within_s, f"{event['id']} acknowledged", pause_s=0.1)
        return r.json()["events"][0]["id"]

    def test_a_leader_alone_in_sync_syncs_and_acknowledges_on_its_own(self):
        cluster = self.new_replicated_cluster(
            3, replication={"min_insync": 1},
            config={"topics": {"defaults": {"partitions": TOPIC_PARTITIONS}}})
        nodes = scenario.Nodes(cluster.nodes)
        scenario.wait_until(scenario.all_linked(nodes, list(NODES)), 20, "all nodes linked")
        self.topic = topic = f"repl.alone.{cluster.name}"
        keys = scenario.keys_for_partitions("alone-key-", TOPIC_PARTITIONS)
        before = []
        for p in range(TOPIC_PARTITIONS):
            for j in range(5):
                before.append(self.acked(cluster, NODES[j % 3],
                                         {"id": f"before-{p}-{j}", "key": keys[p],
                                          "type": "alone", "data": {"p": p, "j": j}}, 20))
        scenario.wait_until(scenario.caught_up(nodes, topic, TOPIC_PARTITIONS, "n1"), 20,
                            "every copy in sync")
        leader = nodes.partitions("n1", topic)[0]["leader"]
        others = [n for n in NODES if n != leader]
        for n in others:
            cluster.kill(n)

        alone = [self.acked(cluster, leader, {"id": "alone-0", "key": keys[0], "type": "alone",
                                              "data": {"j": 0}}, ALONE_WITHIN_S)]
        entry = nodes.partitions(leader, topic)[0]
        self.assertEqual((entry["leader"], entry["in_sync"]), (leader, [leader]), entry)
        for j in range(1, ALONE_EVENTS):
            alone.append(self.acked(cluster, leader, {"id": f"alone-{j}", "key": keys[0],
                                                      "type": "alone", "data": {"j": j}}, 10))
        cluster.kill(leader)

        stored = []
        path = os.path.join(self.dir, f"{leader}.dump")
        cluster.dump(leader, path)
        with open(path, encoding="utf-8") as f:
            for e in checker.parse_dump(leader, f, path):
                if e.topic == topic and e.partition == 0:
                    stored.append((e.offset, e.id))
        stored.sort()
        self.assertEqual([o for o, _ in stored], list(range(len(stored))),
                         "offsets are not dense")
        ids = {i for _, i in stored}
        self.assertEqual([i for i in alone if i not in ids], [],
                         "events acknowledged by the leader alone are missing")
        self.assertEqual([i for i in before if i.startswith("before-0-") and i not in ids], [])


if __name__ == "__main__":
    unittest.main()
