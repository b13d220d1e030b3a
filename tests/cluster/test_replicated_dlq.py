"""Dead letters and replays on replicated partitions (issue 13: "consumer-group state
(cursors, pending, DLQ, results, counters) is replicated in the same ordered stream").

Three etcd members and three nodes, replication_factor 3, leader_rebalance 2 s; agents
`bad` (builtin fail, no retries) and `good` (builtin echo) consume one topic of 4
partitions. Events for every partition are published; each one `bad` gets goes to the
DLQ on the partition's leader, whose followers get the entry in the partition's state
stream. Then:

- every node answers GET /v1/dlq with each entry once and the right count (each node
  answers for the partitions it leads), and a dry-run replay counts each event once;
- the node leading the most partitions is killed with -9: through a survivor the DLQ
  still lists every entry (the copies of the new leaders), one is deleted and one is
  retried there (the retry goes through the partition, which deletes the entry in the
  batch of its pending record; `bad` fails again, so it comes back);
- the killed node restarts, catches up, and leads its preferred partitions again: the
  DLQ it answers for has the delete and the retry applied, through every node.

Skips itself when etcd is not installed.
"""

import http.client
import json
import unittest

import scenario

TOPIC = "repl-dlq"
PARTITIONS = 4
PER_PARTITION = 3
REBALANCE_S = 2
WITHIN_S = 30.0


def request(nodes, node, method, path):
    """(status, JSON body or None) of one request to `node`."""
    host, port = nodes.endpoint(node)
    conn = http.client.HTTPConnection(host, port, timeout=10)
    try:
        headers = {"Authorization": f"Bearer {nodes.token}"} if nodes.token else {}
        body = b"{}" if method == "POST" else None
        if body is not None:
            headers["Content-Type"] = "application/json"
        conn.request(method, path, body=body, headers=headers)
        res = conn.getresponse()
        data = res.read()
        try:
            return res.status, json.loads(data.decode("utf-8"))
        except ValueError:
            return res.status, None
    finally:
        conn.close()


def dlq_ids(nodes, node):
    """The ids GET /v1/dlq lists through `node` (every page), and the count it says."""
    ids, cursor, count = [], None, None
    for _ in range(100):
        path = "/v1/dlq?limit=5" + (f"&cursor={cursor}" if cursor else "")
        status, body = request(nodes, node, "GET", path)
        assert status == 200, f"GET {path} through {node}: {status} {body}"
        count = body["count"] if count is None else count
        ids += [e["id"] for e in body["entries"]]
        cursor = body["next_cursor"]
        if not cursor:
            return ids, count
    raise AssertionError("GET /v1/dlq never ended")


def dlq_is(nodes, on, want):
    """A check for wait_until: through each node in `on`, GET /v1/dlq lists exactly the
    ids in `want`, once each, and counts them."""
    def check():
        for n in on:
            ids, count = dlq_ids(nodes, n)
            if sorted(ids) != sorted(want) or count != len(want):
                return f"{n} lists {len(ids)} entries ({len(set(ids))} distinct), count {count}"
        return True
    return check


def led_by_preferred(nodes, on):
    def check():
        for n in on:
            for p, e in nodes.partitions(n, TOPIC).items():
                if not e.get("leader") or e["leader"] != e["replicas"][0]:
                    return f"{n}: {TOPIC}/{p} led by {e.get('leader')!r}, not {e['replicas'][0]}"
                if len(e.get("in_sync", [])) < 3:
                    return f"{n}: {TOPIC}/{p} in sync {e.get('in_sync')}"
        return True
    return check


class ReplicatedDlqTest(scenario.ReplicatedScenarioTestCase):
    scenario = "repl-dlq"

    def test_dead_letters_are_replicated_and_listed_once(self):
        with self.seeded():
            self.run_scenario()

    def run_scenario(self):
        agents = [
            {"name": "bad", "topics": [TOPIC], "kind": "builtin", "handler": "fail",
             "max_retries": 0},
            {"name": "good", "topics": [TOPIC], "kind": "builtin", "handler": "echo"},
        ]
        cluster, nodes = self.start_replicated(
            PARTITIONS, replication={"leader_rebalance": f"{REBALANCE_S}s"},
            config={"agents": agents})
        ids = nodes.ids()
        keys = scenario.keys_for_partitions("dlq-key-", PARTITIONS)
        published = 0
        for p in range(PARTITIONS):
            for j in range(PER_PARTITION):
                node = ids[(p + j) % 3]
                event = [{"id": f"dlq-{p}-{j}", "key": keys[p], "type": "dlq",
                          "data": {"p": p, "j": j}}]

                def sent(node=node, event=event):
                    r = nodes.publish(node, TOPIC, event)
                    return True if r.status == 201 else f"{r.status} {r.detail}"
                scenario.wait_until(sent, WITHIN_S, f"{TOPIC}/{p} taking a write", 0.2)
                published += 1
        scenario.wait_until(led_by_preferred(nodes, ids), WITHIN_S,
                            "every partition led by its preferred replica, 3 in sync")

        # Each dead letter once through every node, counted once.
        def all_listed():
            got, count = dlq_ids(nodes, ids[0])
            if len(got) != published or count != published:
                return f"{len(got)} entries, count {count}, of {published}"
            return got
        entries = scenario.wait_until(all_listed, WITHIN_S, "every dead letter listed")
        scenario.wait_until(dlq_is(nodes, ids, entries), 10, "the same DLQ through every node")
        status, one = request(nodes, ids[1], "GET", "/v1/dlq/" + entries[0])
        self.assertEqual(status, 200, one)
        r = scenario.post(nodes.endpoint(ids[2]), "/v1/replays",
                          {"from": "2000-01-01T00:00:00Z", "to": "+1m", "agents": ["good"],
                           "mode": "dry-run"}, nodes.token)
        self.assertEqual(r.status, 202, r)
        self.assertEqual(r.json()["events_total"], published, r.json())
        self.check_dry_run(nodes, ids, published)

        # The busiest leader dies: its partitions' entries are on the survivors.
        view = nodes.partitions(ids[0], TOPIC)
        counts = scenario.leading_counts(view, ids)
        victim = sorted(ids, key=lambda n: (-counts[n], n))[0]
        victims_partitions = [p for p, e in view.items() if e["leader"] == victim]
        self.result.update(victim=victim, victim_partitions=len(victims_partitions))
        cluster.kill(victim)
        survivors = [n for n in ids if n != victim]
        scenario.wait_until(scenario.replicas_ready(nodes, TOPIC, PARTITIONS, survivors,
                                                    in_sync=2, exclude=(victim,)),
                            WITHIN_S, f"leaders other than {victim}")
        scenario.wait_until(dlq_is(nodes, survivors, entries), WITHIN_S,
                            f"every entry listed without {victim}")
        self.log(f"{victim} killed; every dead letter is still listed once")

        on_victims = {}
        for i in entries:
            status, e = request(nodes, survivors[0], "GET", "/v1/dlq/" + i)
            self.assertEqual(status, 200, e)
            if e["partition"] in victims_partitions:
                on_victims[i] = e
        self.assertGreaterEqual(len(on_victims), 2, on_victims)
        deleted, retried = sorted(on_victims)[:2]
        failed_before = on_victims[retried]["last_failed_at"]
        # 503 "retry shortly" while a new leader's consumer groups start.
        for node, method, path in ((survivors[0], "DELETE", "/v1/dlq/" + deleted),
                                   (survivors[1], "POST", f"/v1/dlq/{retried}/retry")):
            def done(node=node, method=method, path=path):
                status, body = request(nodes, node, method, path)
                if status == 503:
                    return f"503 {body}"
                self.assertEqual(status, 200, body)
                return True
            scenario.wait_until(done, 10, f"{method} {path} through {node}", 0.2)
        left = [i for i in entries if i != deleted]
        # `bad` fails the retried delivery again: its entry comes back, failed later.
        scenario.wait_until(dlq_is(nodes, survivors, left), WITHIN_S,
                            "the delete and the retry through the survivors")

        def failed_again(on):
            def check():
                for n in on:
                    status, e = request(nodes, n, "GET", "/v1/dlq/" + retried)
                    if status != 200 or e["last_failed_at"] <= failed_before:
                        return f"{n}: {status} {e}"
                return [e["last_failed_at"]]  # a list: wait_until takes a str for "not yet"
            return check
        [failed_after] = scenario.wait_until(failed_again(survivors), WITHIN_S,
                                             "the retried entry failed again")
        status, body = request(nodes, survivors[0], "GET", "/v1/dlq/" + deleted)
        self.assertEqual(status, 404, body)

        # The victim returns and leads its partitions again: its copies got both.
        cluster.restart(victim)
        scenario.wait_until(led_by_preferred(nodes, ids), 45,
                            f"{victim} leading its preferred partitions again")
        scenario.wait_until(dlq_is(nodes, ids, left), 10,
                            f"the DLQ through every node with {victim} back")
        for n in ids:
            status, body = request(nodes, n, "GET", "/v1/dlq/" + deleted)
            self.assertEqual(status, 404, f"{n}: {body}")
            status, body = request(nodes, n, "GET", "/v1/dlq/" + retried)
            self.assertEqual(status, 200, f"{n}: {body}")
            self.assertEqual(body["last_failed_at"], failed_after, f"{n}: {body}")
        self.result["outcome"] = "pass"

    def check_dry_run(self, nodes, ids, published):
        """A dry run over the whole window counts each event once, not once per copy,
        through every node."""
        for n in ids:
            status, body = request(nodes, n, "GET", "/v1/replays")
            self.assertEqual(status, 200, body)
            self.assertEqual(len(body["replays"]), 1, body)
            self.assertEqual(body["replays"][0]["events_total"], published, f"{n}: {body}")


if __name__ == "__main__":
    unittest.main()
