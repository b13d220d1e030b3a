"""T3 of cluster step 2 (issue 13; CLUSTER.md sections 3(c) and 4): the node leading the
most partitions cut off from its peers, and from the etcd members beside them, while
clients still reach it; replication_factor 3, min_insync 2.

Topology as in test_partition_scenario.py (step 1): three network namespaces on one
bridge, node nI at 10.88.0.I with cluster.tls and an http.token, the clients in the root
namespace at 10.88.0.254; and here etcd member eI runs inside namespace I too, at
10.88.0.I:2379. Cutting the victim's namespace off from the other two addresses
(`iptables -j DROP` both ways) therefore leaves it with its own etcd member only, which
has no quorum: the victim can neither keep its lease, nor win a compare-and-swap, nor
collect a follower's fsync. This is Jepsen's "deposed leader with clients":

- nothing sent through the victim while it is cut off is acknowledged, for any partition
  (no 201: it cannot reach min_insync), and once the cluster has settled it answers 503
  without hanging;
- through the other nodes, every partition has a new leader and takes writes within
  10 s of the cut; none of the new leaders is the victim.

Then the rules are flushed, the victim rejoins (truncating what it appended alone) and
every partition has three in-sync replicas again; the load drains, the followers catch
up, the nodes stop, and checker.py in its replicated mode judges every node's dump:
every acknowledged event is on every in-sync replica at its offset (the victim
acknowledged nothing the new leader lacks), the replicas agree, and no acknowledgement
was made through the victim, or with fewer than two replicas reachable, while it was cut
off.

Skips itself, saying why, without root, network namespaces, iptables or etcd.
NERVE_SCENARIO_SEED=N replays a run's random choices; `repeat.sh repl-partition` runs it
many times.
"""

import fcntl
import os
import time
import unittest

import cluster_harness
import etcd_harness
import scenario
import test_partition_scenario as step1

TOPIC_PARTITIONS = 8
WRITERS = 2
RATE_PER_WRITER = 20.0
ETCD_PORTS = (2379, 2380)
FAILOVER_WITHIN_S = 10.0
SETTLED_AFTER_S = 8.0  # heartbeat timeout, lease TTL, an election and slack
NO_HANG_S = 5.0
REJOIN_WITHIN_S = 40.0


def in_namespace(i, argv):
    """etcd member i (0-based) runs in the namespace of node n(i+1)."""
    return ["ip", "netns", "exec", step1.namespace(i + 1)] + argv


class ReplicatedPartitionTest(scenario.ReplicatedScenarioTestCase):
    scenario = "repl-partition"

    def setUp(self):
        self.net = step1.Network()
        why = self.net.why_not()
        if why:
            self.skipTest(f"the replicated network-partition scenario {why}")
        super().setUp()  # SkipTest, saying why, without etcd

    def test_the_busiest_leader_cut_off_from_its_peers_and_their_etcd(self):
        net = self.net
        os.makedirs(os.path.dirname(step1.LOCK), exist_ok=True)
        with open(step1.LOCK, "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # one run at a time: names and subnet are fixed
            try:
                net.make()
                with self.seeded():
                    self.run_scenario(net)
            finally:
                for cleanup in (getattr(self, "cluster", None), getattr(self, "etcd", None)):
                    if cleanup is not None:
                        cleanup.cleanup()
                net.remove()

    def run_scenario(self, net):
        rng = self.rng
        topic = f"repl-partition.s{self.seed}"
        token = f"scenario-{self.seed}"
        self.etcd = etcd = etcd_harness.EtcdCluster(
            3, workdir=os.path.join(self.workdir, "etcd"),
            hosts=[step1.address(i) for i in (1, 2, 3)], ports=[ETCD_PORTS] * 3,
            wrap=in_namespace)
        etcd.start()
        name = cluster_harness.cluster_name("part")
        cluster = step1.NamespacedCluster(self.workdir, token, config={
            "topics": {"defaults": {"partitions": TOPIC_PARTITIONS}},
            "cluster": cluster_harness.replication_config(etcd.endpoints(), name)})
        self.cluster = cluster
        cluster.start()
        nodes = scenario.Nodes(cluster.nodes, token)
        scenario.wait_until(scenario.all_linked(nodes, nodes.ids()), 30,
                            "all nodes linked over TLS across the bridge")
        hist_path, hist, sender, prober, view = self.probe_replicated(nodes, topic,
                                                                      TOPIC_PARTITIONS)
        victim, led, others = self.pick_victim(view, nodes.ids())
        victim_index = int(victim[1:])

        load = scenario.Load(sender, self.seed, WRITERS, RATE_PER_WRITER).start()
        stopped = False
        try:
            time.sleep(rng.uniform(4.0, 6.0))
            cut_s = rng.uniform(15.0, 20.0)

            # -- cut off ------------------------------------------------------------------
            net.isolate(victim_index)
            t_cut = hist.now()
            pairs = [(n, p) for n in others for p in range(TOPIC_PARTITIONS)]
            took = self.first_writes(prober, topic, pairs, t_cut, FAILOVER_WITHIN_S + 5.0,
                                     f"{victim} was cut off")
            worst_pair = max(took, key=took.get)
            worst = took[worst_pair]
            self.result["failover_worst_ms"] = round(worst * 1000, 1)
            self.log(f"every partition took writes through the majority side {worst:.2f} s "
                     f"after the cut (worst {worst_pair})")
            self.assertLessEqual(worst, FAILOVER_WITHIN_S,
                                 f"{topic}/{worst_pair[1]} through {worst_pair[0]} took its "
                                 f"first write {worst:.2f} s after {victim} was cut off")
            after = scenario.wait_until(
                scenario.replicas_ready(nodes, topic, TOPIC_PARTITIONS, others, in_sync=2,
                                        exclude={victim}),
                10.0, f"new leaders, none of them {victim}, on the majority side")
            for p in led:
                self.assertGreater(after[p]["epoch"], view[p]["epoch"], f"{topic}/{p}")
            # Through the victim: nothing acknowledged; after the settling time, 503s that
            # do not hang.
            while hist.now() - t_cut < cut_s:
                for p in range(TOPIC_PARTITIONS):
                    r = prober.probe(victim, p)
                    self.assertNotEqual(r.status, 201, f"{victim}, cut off, acknowledged: {r}")
                    if r.t0 >= t_cut + SETTLED_AFTER_S:
                        self.assertLess(r.t1 - r.t0, NO_HANG_S,
                                        f"{victim}, cut off, took {r.t1 - r.t0:.1f} s: {r}")
                time.sleep(0.2)

            # -- heal ---------------------------------------------------------------------
            t_heal = hist.now()
            net.heal(victim_index)
            scenario.wait_until(
                scenario.replicas_ready(nodes, topic, TOPIC_PARTITIONS, nodes.ids(), in_sync=3),
                REJOIN_WITHIN_S, f"{victim} back in every partition's in-sync set", pause_s=0.2)
            rejoin_s = hist.now() - t_heal
            self.log(f"{victim} cut off for {t_heal - t_cut:.1f} s; back in sync "
                     f"{rejoin_s:.1f} s after the heal")
            self.result.update(cut_s=round(t_heal - t_cut, 1), rejoined_s=round(rejoin_s, 1))
            for node_id in nodes.ids():
                for p in range(TOPIC_PARTITIONS):
                    r, tried = prober.until(node_id, p, {201}, 10.0, pause_s=0.2)
                    self.assertEqual(r.status, 201, f"{topic}/{p} through {node_id} after the "
                                                    f"heal: {tried[-3:]}")
            time.sleep(rng.uniform(2.0, 4.0))
            stopped = True
            self.drain_and_check(cluster, nodes, topic, TOPIC_PARTITIONS, hist, hist_path,
                                 sender, load,
                                 [{"kind": "isolate", "node": victim, "t0": t_cut,
                                   "t1": t_heal}])
        finally:
            if not stopped:
                load.stopping.set()
                load.drain_deadline = 0
            net.heal(victim_index)
        through_victim = [r for r in sender.requests
                          if r.node == victim and r.t0 >= t_cut and r.t1 <= t_heal
                          and r.status == 201]
        self.assertFalse(through_victim, f"{victim} acknowledged {len(through_victim)} "
                                         f"requests while cut off, e.g. {through_victim[:3]}")


if __name__ == "__main__":
    unittest.main()
