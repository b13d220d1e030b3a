"""T2 of cluster step 2 (issue 13; CLUSTER.md sections 3(c) and 4; CONTRACT.md section 9):
kill -9 of the node leading the most partitions, under load, with replication.

Three etcd members and three nerve nodes on loopback, replication_factor 3, min_insync 2,
replica_lag 2 s, lease_ttl 3 s. Two writers publish keyed events (single, batches of one
key, batches of mixed keys, keyless events with ids) through every node; every attempt is
recorded in history.jsonl, and indeterminate ones (a timeout, a reset, a 503 such as
"indeterminate" from a deposed leader) are sent again with the same ids (scenario.py).
A few seconds in, the node leading the most partitions is killed with -9:

- every partition has a leader again and takes writes, through every live node, within
  10 s of the kill (CONTRACT.md section 9: "an in-sync replica takes over within 10 s"),
  each pair timed on its own; the live nodes agree on the new leaders, none of which is
  the dead node, and the dead node's partitions are on a higher epoch;
- while it is dead, every partition takes writes through every live node (two in-sync
  replicas are enough).

It is restarted and rejoins: every partition has its three replicas in sync again. The
load stops (indeterminate requests are retried with the same ids), every follower
catches up, the nodes stop, and checker.py in its replicated mode runs over every
node's `nerve __dump-log`: no acknowledged event lost (each is at its offset on every
in-sync replica), offsets dense, no offset twice, no id twice in a partition, refused
ids absent, replicas agreeing on every acknowledged prefix, per-key order, and nothing
acknowledged while fewer than min_insync replicas were up.

NERVE_SCENARIO_SEED=N replays a run's random choices; tests/cluster/repeat.sh runs it
many times (`repeat.sh repl-kill`). Skips itself when etcd is not installed.
"""

import time
import unittest

import scenario

TOPIC_PARTITIONS = 8
WRITERS = 2
RATE_PER_WRITER = 20.0  # requests/s; about 4 events each
FAILOVER_WITHIN_S = 10.0  # CONTRACT.md section 9
REJOIN_WITHIN_S = 30.0


class ReplicatedKillTest(scenario.ReplicatedScenarioTestCase):
    scenario = "repl-kill"

    def test_kill_9_of_the_busiest_leader_under_load(self):
        with self.seeded():
            self.run_scenario()

    def run_scenario(self):
        rng = self.rng
        topic = f"repl-kill.s{self.seed}"
        cluster, nodes = self.start_replicated(TOPIC_PARTITIONS)
        hist_path, hist, sender, prober, view = self.probe_replicated(nodes, topic,
                                                                      TOPIC_PARTITIONS)
        victim, led, alive = self.pick_victim(view, nodes.ids())

        load = scenario.Load(sender, self.seed, WRITERS, RATE_PER_WRITER).start()
        stopped = False
        try:
            time.sleep(rng.uniform(5.0, 8.0))
            outage_s = rng.uniform(11.0, 14.0)

            # -- kill -9 -------------------------------------------------------------------
            cluster.kill(victim)
            t_kill = hist.now()
            pairs = [(n, p) for n in alive for p in range(TOPIC_PARTITIONS)]
            took = self.first_writes(prober, topic, pairs, t_kill, FAILOVER_WITHIN_S + 5.0,
                                     f"the kill of {victim}")
            worst_pair = max(took, key=took.get)
            worst = took[worst_pair]
            led_worst = max(took[(n, p)] for n in alive for p in led) if led else 0.0
            self.log(f"every partition took writes through every live node after the kill: "
                     f"worst {worst:.2f} s ({worst_pair}); the victim's partitions "
                     f"{led_worst:.2f} s")
            self.result.update(failover_worst_ms=round(worst * 1000, 1),
                               failover_led_worst_ms=round(led_worst * 1000, 1))
            self.assertLessEqual(worst, FAILOVER_WITHIN_S,
                                 f"{topic}/{worst_pair[1]} through {worst_pair[0]} took its "
                                 f"first write {worst:.2f} s after the kill of {victim}")
            after = scenario.wait_until(
                scenario.replicas_ready(nodes, topic, TOPIC_PARTITIONS, alive, in_sync=2,
                                        exclude={victim}),
                max(1.0, FAILOVER_WITHIN_S + 2.0 - (hist.now() - t_kill)),
                f"new leaders, none of them {victim}, on every live node")
            for p in led:
                self.assertGreater(after[p]["epoch"], view[p]["epoch"],
                                   f"{topic}/{p} changed leader without a new epoch: "
                                   f"{view[p]} -> {after[p]}")
            self.log(f"new leaders {dict((p, e['leader']) for p, e in sorted(after.items()))}")
            self.sweep(prober, alive, TOPIC_PARTITIONS)
            time.sleep(max(0.0, outage_s / 2 - (hist.now() - t_kill)))
            self.sweep(prober, alive, TOPIC_PARTITIONS)
            time.sleep(max(0.0, outage_s - (hist.now() - t_kill)))

            # -- restart ---------------------------------------------------------------------
            t_restart = hist.now()
            cluster.restart(victim)
            scenario.wait_until(
                scenario.replicas_ready(nodes, topic, TOPIC_PARTITIONS, nodes.ids(), in_sync=3),
                REJOIN_WITHIN_S, f"{victim} back in every partition's in-sync set", pause_s=0.2)
            rejoin_s = hist.now() - t_restart
            self.log(f"{victim} dead for {t_restart - t_kill:.1f} s; back in sync in "
                     f"{rejoin_s:.1f} s")
            self.result.update(outage_s=round(t_restart - t_kill, 1),
                               rejoined_s=round(rejoin_s, 1))
            self.sweep(prober, nodes.ids(), TOPIC_PARTITIONS)
            time.sleep(rng.uniform(2.0, 4.0))
            stopped = True
            self.drain_and_check(cluster, nodes, topic, TOPIC_PARTITIONS, hist, hist_path,
                                 sender, load,
                                 [{"kind": "kill", "node": victim, "t0": t_kill,
                                   "t1": t_restart}])
        finally:
            if not stopped:
                load.stopping.set()
                load.drain_deadline = 0
        self.assertIn("201", self.result["statuses"], "the load never succeeded")
        # While the victim was dead (after the failover), the writers' requests through
        # live nodes were all answered 2xx: two in-sync replicas are enough.
        settled = t_kill + worst
        during = [r for r in sender.requests
                  if r.t0 >= settled and r.t1 <= t_restart and r.who != "probe"
                  and r.node != victim]
        bad = [r for r in during if not (isinstance(r.status, int) and r.status < 300)]
        self.assertGreaterEqual(len(during), 5, "too few requests during the outage to say "
                                                "anything")
        self.assertEqual(bad, [], f"{len(bad)} of {len(during)} requests through live nodes "
                                  f"failed after the failover while {victim} was dead")

    def sweep(self, prober, through, partitions):
        """Every partition through every node of `through`: 201."""
        for node_id in through:
            for p in range(partitions):
                r = prober.probe(node_id, p)
                self.assertEqual(r.status, 201, r)


if __name__ == "__main__":
    unittest.main()
