"""Preferred leaders come back (cluster.leader_rebalance; issue 13, docs/operations.md).

When a node dies its partitions are led by the survivors, and nothing moves them back by
itself: a restarted node would lead nothing and the others would carry its share. With
`cluster.leader_rebalance`, a leader hands a partition to its preferred replica (the first
in placement order) once that one has been in sync for that long, one partition per
period per node, as Kafka's preferred leader election does.

Three etcd members and three nodes, replication_factor 3, leader_rebalance 2 s: every
partition is led by its preferred replica; the node preferred for the most partitions is
killed with -9, the survivors take over; it is restarted, catches up, and leads its
preferred partitions again within a bound; every partition then takes writes through
every node, and keeps the events acknowledged before.

Skips itself when etcd is not installed.
"""

import collections
import time
import unittest

import scenario

TOPIC_PARTITIONS = 4
REBALANCE_S = 2
FAILOVER_WITHIN_S = 20.0
BACK_WITHIN_S = 45.0
WRITERS = 4
RATE_PER_WRITER = 100.0


def led_by(nodes, topic, want, exclude=()):
    """A check for wait_until: every partition of `topic` led by `want[p]` (or, with
    `exclude`, by none of those), as every node sees it."""
    def check():
        for n in nodes.ids():
            if n in exclude:
                continue
            view = nodes.partitions(n, topic)
            for p in range(TOPIC_PARTITIONS):
                leader = view.get(p, {}).get("leader")
                if exclude and (not leader or leader in exclude):
                    return f"{n}: {topic}/{p} led by {leader!r}"
                if not exclude and leader != want[p]:
                    return f"{n}: {topic}/{p} led by {leader!r}, not {want[p]}"
        return True
    return check


class LeaderRebalanceTest(scenario.ReplicatedScenarioTestCase):
    scenario = "repl-rebalance"

    def test_a_restarted_node_leads_its_preferred_partitions_again(self):
        with self.seeded():
            self.run_scenario()

    def run_scenario(self):
        topic = f"repl-rebalance.s{self.seed}"
        cluster, nodes = self.start_replicated(
            TOPIC_PARTITIONS, replication={"leader_rebalance": f"{REBALANCE_S}s"})
        hist_path, hist, sender, prober, view = self.probe_replicated(nodes, topic,
                                                                      TOPIC_PARTITIONS)
        preferred = {p: e["replicas"][0] for p, e in view.items()}
        self.log(f"preferred leaders {preferred}")
        scenario.wait_until(led_by(nodes, topic, preferred), BACK_WITHIN_S,
                            "every partition led by its preferred replica")
        counts = collections.Counter(preferred.values())
        victim = sorted(counts, key=lambda n: (-counts[n], n))[0]
        self.result.update(victim=victim, victim_partitions=counts[victim])

        cluster.kill(victim)
        t_kill = hist.now()
        scenario.wait_until(led_by(nodes, topic, preferred, exclude=(victim,)),
                            FAILOVER_WITHIN_S, f"leaders other than {victim}")
        self.log(f"{victim} killed; its partitions failed over")
        cluster.restart(victim)
        # Writers publish while the partitions are handed back: a leader drains before
        # it gives a partition up, so no publish is answered "indeterminate".
        t_back = hist.now()
        load = scenario.Load(sender, self.seed, WRITERS, RATE_PER_WRITER).start()
        try:
            scenario.wait_until(led_by(nodes, topic, preferred), BACK_WITHIN_S,
                                f"{victim} leading its preferred partitions again")
            self.log(f"{victim} leads its preferred partitions again")
            self.assertIn("back to its preferred leader " + victim, cluster.stderr_text())
            time.sleep(1.0)
            for node in nodes.ids():
                for p in range(TOPIC_PARTITIONS):
                    r, tried = prober.until(node, p, {201}, 10.0, pause_s=0.2)
                    self.assertEqual(r.status, 201, f"{topic}/{p} through {node}: {tried[-3:]}")
        except BaseException:
            load.stopping.set()
            load.drain_deadline = 0
            raise
        self.drain_and_check(cluster, nodes, topic, TOPIC_PARTITIONS, hist, hist_path, sender,
                             load, [{"kind": "kill", "node": victim, "t0": t_kill,
                                     "t1": t_back}])
        # Every answer since the restart, the drained writers' last ones included.
        during = [r for r in sender.requests if r.t0 >= t_back]
        indeterminate = [r for r in during if r.status == 503
                         and r.detail.startswith("indeterminate")]
        self.result["handback_statuses"] = scenario.summarize(during)
        why = collections.Counter(r.detail[:70] for r in during if r.status == 503)
        self.log(f"requests during the hand-back: {scenario.summarize(during)}; 503s: {why}")
        self.assertEqual(indeterminate, [], "publishes answered indeterminate by a hand-over")
        self.result["outcome"] = "pass"


if __name__ == "__main__":
    unittest.main()
