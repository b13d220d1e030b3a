"""T2 of CLUSTER.md section 4: kill -9 of the node owning the most partitions, under load.

Three nodes on loopback; two writers publish keyed events (single events, batches of one
key, batches of mixed keys, keyless events with ids) through every node, each attempt
recorded in history.jsonl (scenario.py). A few seconds in, the node owning the most
partitions of the topic is killed with -9:

- through each live node, every partition it owns answers 503 with Retry-After and a
  detail naming it within 3 s, and keeps doing so; every other partition answers 201;
- the writers' requests through live nodes that touch only live owners' partitions are
  all answered 2xx while it is down.

It is restarted, the links come back, every partition takes writes through every node
again; the load stops (indeterminate requests are retried with the same ids), the
nodes stop, and checker.py runs over every node's `nerve __dump-log`, the history and
the kill window: no acknowledged event lost, offsets dense, no id twice, refused ids
absent, per-key order, one owner per partition, no ok for the dead node's partitions
while it was dead.

NERVE_SCENARIO_SEED=N replays a run's random choices; tests/cluster/repeat.sh runs it
many times.
"""

import os
import time
import unittest

import cluster_harness
import scenario

TOPIC_PARTITIONS = 8
WRITERS = 2
RATE_PER_WRITER = 20.0  # requests/s; about 4 events each
DEAD_503_WITHIN_S = 3.0


class KillScenarioTest(scenario.ScenarioTestCase):
    scenario = "kill"

    def test_kill_9_of_the_busiest_owner_under_load(self):
        with self.seeded():
            self.run_scenario()

    def run_scenario(self):
        rng = self.rng
        topic = f"kill.s{self.seed}"
        cluster = cluster_harness.Cluster(
            3, workdir=self.workdir,
            config={"topics": {"defaults": {"partitions": TOPIC_PARTITIONS}}})
        self.addCleanup(cluster.cleanup)
        self.cluster = cluster
        cluster.start()
        nodes = scenario.Nodes(cluster.nodes)
        scenario.wait_until(scenario.all_linked(nodes, nodes.ids()), 20, "all nodes linked")
        # The topic exists on every node (its home decides the partition count): one probe
        # of each partition through each node, all 201; then the busiest owner.
        hist_path, hist, sender, prober, owners, victim = self.probe_and_pick_victim(
            nodes, topic, TOPIC_PARTITIONS)
        topic = sender.topic
        dead_parts = sorted(p for p, o in owners.items() if o == victim)
        live_parts = sorted(p for p, o in owners.items() if o != victim)
        alive = [n for n in nodes.ids() if n != victim]
        self.log(f"owners {owners}; victim {victim} owns {dead_parts}")
        self.result.update(victim=victim, victim_partitions=len(dead_parts))

        load = scenario.Load(sender, self.seed, WRITERS, RATE_PER_WRITER).start()
        stopped = False
        try:
            time.sleep(rng.uniform(5.0, 8.0))
            outage_s = rng.uniform(8.0, 12.0)

            # -- kill -9 -----------------------------------------------------------------
            cluster.kill(victim)
            t_kill = hist.now()
            first_503 = {}
            for node_id in alive:
                for p in dead_parts:
                    r, tried = prober.until(node_id, p, {503}, DEAD_503_WITHIN_S + 2.0)
                    self.assertEqual(r.status, 503, f"{topic}/{p} through {node_id} after the "
                                                    f"kill of {victim}: {tried}")
                    first_503[(node_id, p)] = r.t1 - t_kill
                    self.assertIn(victim, r.detail, r)
                    self.assertNotIn("NO Retry-After", r.detail, r)
            worst = max(first_503.values())
            self.log(f"503 after the kill: worst {worst * 1000:.0f} ms "
                     f"(over {len(first_503)} node/partition pairs)")
            self.result["dead_503_worst_ms"] = round(worst * 1000, 1)
            self.assertLessEqual(worst, DEAD_503_WITHIN_S,
                                 f"a partition of {victim} answered 503 only after {worst:.2f} s")
            self.sweep(prober, alive, dead_parts, live_parts)
            time.sleep(max(0.0, outage_s / 2 - (hist.now() - t_kill)))
            self.sweep(prober, alive, dead_parts, live_parts)
            time.sleep(max(0.0, outage_s - (hist.now() - t_kill)))

            # -- restart -----------------------------------------------------------------
            t_restart = hist.now()
            cluster.restart(victim)
            scenario.wait_until(scenario.all_linked(nodes, nodes.ids()), 20,
                                "the restarted node linked to every other")
            linked_s = hist.now() - t_restart
            self.log(f"{victim} dead for {t_restart - t_kill:.1f} s; restarted and linked in "
                     f"{linked_s:.1f} s")
            self.result.update(outage_s=round(t_restart - t_kill, 1),
                               relinked_s=round(linked_s, 1))
            for node_id in nodes.ids():
                for p in range(TOPIC_PARTITIONS):
                    r, tried = prober.until(node_id, p, {201}, 10.0, pause_s=0.2)
                    self.assertEqual(r.status, 201, f"{topic}/{p} through {node_id} after the "
                                                    f"restart: {tried[-3:]}")
            time.sleep(rng.uniform(3.0, 5.0))
            unresolved = load.stop(drain_s=20.0)
            stopped = True
        finally:
            if not stopped:
                load.stopping.set()
                load.drain_deadline = 0

        hist.close()
        requests = sender.requests
        self.result.update(requests=len(requests), statuses=scenario.summarize(requests),
                           events=dict(hist.counts), unresolved=len(unresolved))
        self.log(f"{len(requests)} requests {scenario.summarize(requests)}; events "
                 f"{hist.counts}; {len(unresolved)} ids still indeterminate")
        self.assertEqual(load.unexpected, [], "requests refused with a 4xx")
        # While the victim was dead, the writers' requests through live nodes
        # touching only live owners' partitions were all answered 2xx.
        during = [r for r in requests
                  if r.t0 >= t_kill and r.t1 <= t_restart and r.who != "probe"
                  and r.node != victim and r.partitions <= set(live_parts)]
        bad = [r for r in during if not (isinstance(r.status, int) and r.status < 300)]
        self.assertGreaterEqual(len(during), 5, "too few requests to live partitions during the "
                                            "outage to say anything")
        self.assertEqual(bad, [], f"{len(bad)} of {len(during)} requests to live partitions "
                                  f"failed while {victim} was dead")
        for status in (201, 503, "refused"):
            self.assertIn(str(status), self.result["statuses"], "the load never saw " + str(status))

        codes = cluster.stop_all()
        self.assertEqual(codes, {n: 0 for n in nodes.ids()}, cluster.stderr_text()[-3000:])
        self.check_logs(cluster, hist_path, [
            {"kind": "kill", "node": victim, "t0": t_kill, "t1": t_restart,
             "partitions": [f"{topic}/{p}" for p in dead_parts]}])

    def sweep(self, prober, alive, dead_parts, live_parts):
        """Through every live node: the dead owner's partitions 503, the others 201."""
        for node_id in alive:
            for p in dead_parts:
                r = prober.probe(node_id, p)
                self.assertEqual(r.status, 503, r)
            for p in live_parts:
                r = prober.probe(node_id, p)
                self.assertEqual(r.status, 201, r)


if __name__ == "__main__":
    unittest.main()
