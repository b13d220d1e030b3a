"""T4 of cluster step 2 (issue 13; CONTRACT.md section 9): two of three nodes killed with
-9; below min_insync nothing is acknowledged, and after their restart writes resume and
nothing acknowledged before is lost.

Three etcd members (all stay up) and three nerve nodes on loopback, replication_factor 3,
min_insync 2. A writer publishes through every node; a few seconds in, two nodes are
killed with -9 at once, leaving one survivor (seeded). Then, for every partition:

- no request sent through the survivor after the kills is answered 201: one in-sync copy
  cannot reach min_insync 2 (a leader still counting a dead follower in sync cannot
  collect its fsync; one that shrank its in-sync set below the minimum refuses);
- once the in-sync sets have had time to change (replica_lag + lease_ttl + slack), the
  survivor answers every partition with 503 and Retry-After promptly, never hanging.

Both are restarted; every partition takes writes through every node again within a
bound, and has three in-sync replicas. The load drains, the followers catch up, the nodes
stop, and checker.py in its replicated mode judges every node's dump: nothing
acknowledged is lost, and no acknowledgement was sent and answered while fewer than two
replicas were up.

NERVE_SCENARIO_SEED=N replays a run's random choices. Skips itself when etcd is not
installed.
"""

import time
import unittest

import scenario

TOPIC_PARTITIONS = 4
WRITERS = 1
RATE_PER_WRITER = 15.0
MIN_INSYNC = 2
REPLICA_LAG_S = 2.0
LEASE_TTL_S = 3.0
SETTLED_AFTER_S = REPLICA_LAG_S + LEASE_TTL_S + 3.0  # then: a prompt 503 every time
PROMPT_503_S = 2.0
RESUME_WITHIN_S = 20.0
OUTAGE_S = (12.0, 14.0)


class ReplicatedQuorumTest(scenario.ReplicatedScenarioTestCase):
    scenario = "repl-quorum"

    def test_two_of_three_killed_nothing_acknowledged_then_writes_resume(self):
        with self.seeded():
            self.run_scenario()

    def run_scenario(self):
        rng = self.rng
        topic = f"repl-quorum.s{self.seed}"
        cluster, nodes = self.start_replicated(TOPIC_PARTITIONS)
        hist_path, hist, sender, prober, view = self.probe_replicated(nodes, topic,
                                                                      TOPIC_PARTITIONS)
        survivor = rng.choice(nodes.ids())
        victims = [n for n in nodes.ids() if n != survivor]
        self.log(f"leaders {dict((p, e['leader']) for p, e in sorted(view.items()))}; "
                 f"killing {victims}, {survivor} survives")
        self.result.update(victim="+".join(victims), victim_partitions=TOPIC_PARTITIONS)

        load = scenario.Load(sender, self.seed, WRITERS, RATE_PER_WRITER).start()
        stopped = False
        try:
            time.sleep(rng.uniform(3.0, 5.0))
            outage_s = rng.uniform(*OUTAGE_S)

            # -- kill -9 of two -----------------------------------------------------------
            for v in victims:
                cluster.kill(v)
            t_kill = hist.now()
            # Probe every partition through the survivor, in turns, for the whole outage.
            probes = []
            while hist.now() - t_kill < outage_s:
                for p in range(TOPIC_PARTITIONS):
                    probes.append((p, prober.probe(survivor, p)))
                time.sleep(0.1)
            t_restart = hist.now()
            # A retry of events stored before the kills is answered 201 with
            # "duplicate": they were acknowledged by the in-sync copies then (the
            # answer waits for the high watermark to pass the log's end; the
            # checker finds them all). Anything new must be refused.
            acked = [r for r in sender.requests
                     if r.node == survivor and r.t0 >= t_kill and r.t1 <= t_restart
                     and r.status == 201 and not r.duplicate]
            self.assertFalse(acked, f"{len(acked)} requests through {survivor} were "
                                    f"acknowledged with one replica of three alive, e.g. "
                                    f"{acked[:3]}")
            settled = [(p, r) for p, r in probes if r.t0 >= t_kill + SETTLED_AFTER_S]
            self.assertGreaterEqual(len(settled), TOPIC_PARTITIONS,
                                    "too few probes after the in-sync sets settled")
            for p, r in settled:
                self.assertEqual(r.status, 503, f"{topic}/{p} through {survivor}, "
                                                f"{r.t0 - t_kill:.1f} s after the kills: {r}")
                self.assertNotIn("NO Retry-After", r.detail, r)
                self.assertLess(r.t1 - r.t0, PROMPT_503_S,
                                f"a 503 that took {r.t1 - r.t0:.2f} s: {r}")
            self.result["probes_503"] = sum(1 for _, r in probes if r.status == 503)
            # The survivor says why it refuses writes (CONTRACT section 9).
            health = cluster[survivor].get("/health/detailed").json()
            ind = [i for i in health["indicators"] if i["name"] == "cluster"]
            self.assertEqual([i["status"] for i in ind], ["unhealthy"], health)
            self.assertIn("1 of 3 nodes up", ind[0]["message"], ind)
            first_prompt = min((r.t1 - t_kill for p, r in probes
                                if r.status == 503 and r.t1 - r.t0 < PROMPT_503_S), default=None)
            self.log(f"{len(probes)} probes through {survivor} while {victims} were dead: "
                     f"{scenario.summarize([r for _, r in probes])}; first prompt 503 "
                     f"{first_prompt if first_prompt is None else round(first_prompt, 2)} s "
                     f"after the kills")

            # -- restart both ---------------------------------------------------------------
            for v in victims:
                cluster.restart(v, wait=False)
            for v in victims:
                cluster[v].wait_ready()
            pairs = [(n, p) for n in nodes.ids() for p in range(TOPIC_PARTITIONS)]
            took = self.first_writes(prober, topic, pairs, t_restart, RESUME_WITHIN_S + 5.0,
                                     "the restart", pause_s=0.2)
            worst = max(took.values())
            self.log(f"{victims} dead for {t_restart - t_kill:.1f} s; every partition took "
                     f"writes through every node {worst:.2f} s after the restart")
            self.result.update(outage_s=round(t_restart - t_kill, 1),
                               resumed_worst_ms=round(worst * 1000, 1))
            self.assertLessEqual(worst, RESUME_WITHIN_S,
                                 f"writes resumed only {worst:.2f} s after the restart")
            scenario.wait_until(
                scenario.replicas_ready(nodes, topic, TOPIC_PARTITIONS, nodes.ids(), in_sync=3),
                30, "three in-sync replicas again", pause_s=0.2)
            time.sleep(rng.uniform(1.0, 2.0))
            stopped = True
            self.drain_and_check(cluster, nodes, topic, TOPIC_PARTITIONS, hist, hist_path,
                                 sender, load,
                                 [{"kind": "kill", "node": v, "t0": t_kill, "t1": t_restart}
                                  for v in victims], min_insync=MIN_INSYNC)
        finally:
            if not stopped:
                load.stopping.set()
                load.drain_deadline = 0


if __name__ == "__main__":
    unittest.main()
