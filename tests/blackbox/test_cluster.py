"""Three real nodes on loopback: links, placement, forwarding, an owner's death.

Each node is a `nerve run` with its own data dir, HTTP port and cluster port;
the member list is the same on all three (CONTRACT.md section 9).
"""

import json
import os
import signal
import tempfile
import time
import unittest

import websocket

from harness import Server, ServerTestCase, listen_ports

TOPIC = "orders"
PARTITIONS = 4


def free_port():
    return listen_ports(1)[0]


class ClusterTestCase(ServerTestCase):
    """Starts n1..n3 with one member list."""

    def start_cluster(self, n=3, config=None, configs=None):
        ports = listen_ports(n)
        members = ",".join(f"n{i + 1}@127.0.0.1:{p}" for i, p in enumerate(ports))
        self.nodes = {}
        for i, port in enumerate(ports):
            node_id = f"n{i + 1}"
            srv = Server(config=(configs or {}).get(node_id, config), args=["--node-id", node_id, "--cluster-listen",
                                              f"127.0.0.1:{port}", "--cluster-members", members])
            self.addCleanup(srv.cleanup)
            srv.start()
            self.nodes[node_id] = srv
        self.wait_linked()
        return self.nodes

    def view(self, node_id):
        r = self.nodes[node_id].get("/v1/cluster")
        self.assertEqual(r.status, 200, r)
        return r.json()

    def wait_linked(self, timeout=15.0):
        def all_up():
            for node_id, srv in self.nodes.items():
                if srv.proc is None or srv.proc.poll() is not None:
                    continue
                states = {m["id"]: m["state"] for m in self.view(node_id)["nodes"]}
                live = {i for i, s in self.nodes.items() if s.proc.poll() is None}
                if any(states[i] != "up" for i in live):
                    return False
            return True
        self.wait_for(all_up, timeout=timeout, what="every live node linked to every other")

    def owners(self, node_id="n1"):
        """topic/partition -> owning node id, as `node_id` sees it."""
        out = {}
        for m in self.view(node_id)["nodes"]:
            for p in m["partitions"]:
                out[p] = m["id"]
        return out

    def publish(self, node_id, body, topic=TOPIC):
        return self.nodes[node_id].post(f"/v1/topics/{topic}/events", body)


class LinkAndForwardTest(ClusterTestCase):

    def test_three_nodes_link_and_forward_to_owners(self):
        self.start_cluster()
        for node_id in self.nodes:
            view = self.view(node_id)
            self.assertEqual(view["node_id"], node_id)
            self.assertEqual(view["mode"], "cluster")
            self.assertEqual([m["id"] for m in view["nodes"]], ["n1", "n2", "n3"])
            self.assertEqual([m["self"] for m in view["nodes"]],
                             [m["id"] == node_id for m in view["nodes"]])
        # Publish through every node, with keys over every partition.
        acked = []
        for k in range(24):
            node_id = f"n{k % 3 + 1}"
            r = self.publish(node_id, {"key": f"k{k}", "type": "t", "data": {"k": k}})
            self.assertEqual(r.status, 201, r)
            acked.append(r.json()["events"][0])
        # Every node knows the topic now, with the home node's partition count,
        # and they agree on who owns what.
        owners = self.owners("n1")
        self.assertEqual(len(owners), PARTITIONS)
        for node_id in ("n2", "n3"):
            self.assertEqual(self.owners(node_id), owners)
        self.assertGreater(len(set(owners.values())), 1, owners)
        # Each acked event is in its owner's log at the answered offset.
        for a in acked:
            owner = self.nodes[owners[f"{TOPIC}/{a['partition']}"]]
            events = owner.read_partition(TOPIC, a["partition"])
            self.assertIn((a["id"], a["offset"]), [(e["id"], e["offset"]) for e in events])
        # Reads are cluster-wide: every node answers every partition, by id
        # too, the same.
        for p in range(PARTITIONS):
            first = self.nodes["n1"].read_partition(TOPIC, p)
            for node_id in ("n2", "n3"):
                self.assertEqual(self.nodes[node_id].read_partition(TOPIC, p), first)
        for a in acked[:6]:
            for srv in self.nodes.values():
                r = srv.get(f"/v1/events/{a['id']}")
                self.assertEqual(r.status, 200, r)
                self.assertEqual(r.json()["event"]["offset"], a["offset"])
        self.assertEqual(self.nodes["n2"].get("/v1/events/no-such-id").status, 404)
        # Without a partition: partitions in order, each from its owner.
        r = self.nodes["n3"].get(f"/v1/topics/{TOPIC}/events?limit=1000")
        self.assertEqual(r.status, 200, r)
        got = [(e["partition"], e["offset"]) for e in r.json()["events"]]
        self.assertEqual(got, sorted((a["partition"], a["offset"]) for a in acked))
        # Topic statistics and bus totals count each event once.
        for srv in self.nodes.values():
            t = srv.topics()[TOPIC]
            self.assertEqual(t["events"], len(acked))
            self.assertEqual(sum(ps["events"] for ps in t["partition_stats"]), len(acked))
            self.assertEqual(srv.get("/v1/bus/stats").json()["events"], len(acked))

    def test_a_publisher_id_is_idempotent_through_any_node(self):
        self.start_cluster()
        first = self.publish("n1", {"id": "order-1", "type": "t", "data": {}})
        self.assertEqual(first.status, 201, first)
        for node_id in ("n2", "n3", "n1"):
            again = self.publish(node_id, {"id": "order-1", "type": "t", "data": {}})
            self.assertEqual(again.status, 201, again)
            e = again.json()["events"][0]
            self.assertTrue(e["duplicate"])
            self.assertEqual((e["partition"], e["offset"]),
                             (first.json()["events"][0]["partition"],
                              first.json()["events"][0]["offset"]))


class ClusterWideReadTest(ClusterTestCase):

    def test_agents_metrics_and_groups_cover_every_node(self):
        config = ("agents:\n  - {name: echo, kind: builtin, handler: echo, topics: [orders]}\n"
                  "  - {name: fail, kind: builtin, handler: fail, topics: [orders], max_retries: 0}\n")
        self.start_cluster(config=config)
        n = 12
        for k in range(n):
            r = self.publish(f"n{k % 3 + 1}", {"key": f"k{k}", "type": "t", "data": {}})
            self.assertEqual(r.status, 201, r)

        def settled():
            rows = {m["agent"]: m for m in self.nodes["n2"].get("/v1/metrics").json()["metrics"]}
            return (rows.get("echo", {}).get("processed") == n
                    and rows.get("fail", {}).get("dead_lettered") == n and rows)
        rows = self.wait_for(settled, what="every event processed by echo and dead-lettered by fail")
        self.assertEqual(rows["echo"]["received"], n)
        self.assertEqual(rows["echo"]["success_rate"], 100.0)
        # Every node runs every agent: instances carry their node.
        agents = {a["name"]: a for a in self.nodes["n1"].get("/v1/agents").json()["agents"]}
        self.assertEqual(sorted(i["node"] for i in agents["echo"]["instances"]), ["n1", "n2", "n3"])
        one = self.nodes["n3"].get("/v1/agents/echo").json()
        self.assertEqual(len(one["instances"]), 3)
        # Groups: each partition as its owner sees it; lag 0 everywhere.
        groups = self.nodes["n1"].get(f"/v1/topics/{TOPIC}/groups").json()["groups"]
        echo = [g for g in groups if g["agent"] == "echo"][0]
        self.assertEqual(sum(p["end_offset"] for p in echo["partitions"]), n)
        self.assertEqual(sum(p["cursor"] for p in echo["partitions"]), n)
        self.assertEqual(echo["lag"], 0)
        # The DLQ of every node, merged: pages in id order with one count.
        seen = []
        cursor = None
        while True:
            q = "agent=fail&limit=5" + (f"&cursor={cursor}" if cursor else "")
            page = self.nodes["n2"].get(f"/v1/dlq?{q}").json()
            self.assertEqual(page["count"], n)
            seen += [e["id"] for e in page["entries"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        self.assertEqual(len(seen), n)
        self.assertEqual(seen, sorted(seen))
        # An entry is found, retried and deleted through any node.
        self.assertEqual(self.nodes["n3"].get(f"/v1/dlq/{seen[0]}").status, 200)
        self.assertEqual(self.nodes["n1"].request("DELETE", f"/v1/dlq/{seen[0]}").status, 200)
        self.assertEqual(self.nodes["n2"].get(f"/v1/dlq/{seen[0]}").status, 404)
        r = self.nodes["n1"].post("/v1/dlq/purge?agent=fail")
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json()["purged"], n - 1)
        self.assertEqual(self.nodes["n3"].get("/v1/dlq").json()["count"], 0)


class ClusterReplayTest(ClusterTestCase):

    def test_one_replay_covers_every_node(self):
        echo = "agents:\n  - {name: echo, kind: builtin, handler: echo, topics: [orders]}\n"
        self.start_cluster(config=echo)
        n = 15
        ids = set()
        for k in range(n):
            r = self.publish(f"n{k % 3 + 1}", {"key": f"k{k}", "type": "t", "data": {}})
            self.assertEqual(r.status, 201, r)
            ids.add(r.json()["events"][0]["id"])
        # A dry run through n2: one id, every node's partitions counted.
        r = self.nodes["n2"].post("/v1/replays",
                                  {"from": "-10m", "to": "now", "mode": "dry-run"})
        self.assertEqual(r.status, 202, r)
        replay = r.json()
        self.assertEqual(replay["events_total"], n)
        for node_id in self.nodes:
            got = self.nodes[node_id].get(f"/v1/replays/{replay['id']}").json()
            self.assertEqual((got["id"], got["events_total"], got["state"]),
                             (replay["id"], n, "done"))
        # The history, paged through n1, is every event once.
        seen, cursor = [], None
        for _ in range(50):
            q = "agent=echo&limit=4" + (f"&cursor={cursor}" if cursor else "")
            page = self.nodes["n1"].get(f"/v1/replays/{replay['id']}/history?{q}")
            self.assertEqual(page.status, 200, page)
            seen += [e["event"]["id"] for e in page.json()["entries"]]
            cursor = page.json()["next_cursor"]
            if cursor is None:
                break
        self.assertEqual(sorted(seen), sorted(ids))
        # A redelivery through n3: every node redelivers its own partitions.
        r = self.nodes["n3"].post("/v1/replays", {"from": "-10m", "to": "now"})
        self.assertEqual(r.status, 202, r)
        rid = r.json()["id"]
        done = self.wait_for(lambda: (lambda v: v["state"] == "done" and v)(
            self.nodes["n1"].get(f"/v1/replays/{rid}").json()), what="the redelivery done")
        self.assertEqual((done["acked"], done["events_done"]), (n, n))
        listed = {x["id"]: x for x in self.nodes["n2"].get("/v1/replays").json()["replays"]}
        self.assertEqual(set(listed), {replay["id"], rid})
        self.assertEqual(self.nodes["n2"].get("/v1/replays/no-such").status, 404)


class ClusterTailTest(ClusterTestCase):

    def test_a_tail_on_one_node_sees_every_partition(self):
        self.start_cluster()
        n1 = self.nodes["n1"]
        ws = websocket.create_connection(f"ws://{n1.host}:{n1.port}/v1/topics/{TOPIC}/tail",
                                         timeout=10)
        self.addCleanup(ws.close)
        time.sleep(0.3)  # the subscriptions start after the handshake
        sent = set()
        for k in range(20):
            r = self.publish(f"n{2 + k % 2}", {"key": f"k{k}", "data": {}})
            self.assertEqual(r.status, 201, r)
            sent.add(r.json()["events"][0]["id"])
        got = set()
        while got != sent:
            opcode, data = ws.recv_data()
            got.add(json.loads(data.decode("utf-8"))["id"])
        self.assertGreater(len(set(self.owners().values())), 1)


SLOW_AGENT = """import json, sys, time
for line in sys.stdin:
    m = json.loads(line)
    if m.get("type") == "event":
        time.sleep(0.05)
        print(json.dumps({"type": "ack", "delivery": m["delivery"]}), flush=True)
"""


class ClusterReplayCancelTest(ClusterTestCase):

    def test_cancel_through_one_node_stops_every_share(self):
        script = tempfile.NamedTemporaryFile("w", suffix=".py", delete=False)
        script.write(SLOW_AGENT)
        script.close()
        self.addCleanup(os.unlink, script.name)
        config = ("agents:\n  - {name: slow, kind: process, command: [/usr/bin/python3, "
                  f"{script.name}], topics: [orders], max_in_flight: 1}}\n")
        self.start_cluster(config=config)
        n = 90
        for k in range(n):
            self.assertEqual(self.publish(f"n{k % 3 + 1}", {"key": f"k{k}", "data": {}}).status,
                             201)
        self.wait_for(lambda: all(g["lag"] == 0 and g["pending"] == 0 for g in
                                  self.nodes["n1"].get(f"/v1/topics/{TOPIC}/groups")
                                  .json()["groups"]), timeout=60, what="live deliveries done")
        r = self.nodes["n1"].post("/v1/replays", {"from": "-10m", "to": "now"})
        self.assertEqual(r.status, 202, r)
        rid = r.json()["id"]
        self.wait_for(lambda: self.nodes["n2"].get(f"/v1/replays/{rid}").json()["events_done"]
                      >= 3, what="progress")
        r = self.nodes["n2"].request("DELETE", f"/v1/replays/{rid}")
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json()["state"], "cancelled", r.json())
        time.sleep(0.5)
        for node_id in self.nodes:
            v = self.nodes[node_id].get(f"/v1/replays/{rid}").json()
            self.assertEqual(v["state"], "cancelled", (node_id, v))
            self.assertLess(v["events_done"], n, v)


class MemberListMismatchTest(ClusterTestCase):

    def test_a_node_with_another_member_list_is_refused(self):
        ports = listen_ports(3)
        good = ",".join(f"n{i + 1}@127.0.0.1:{p}" for i, p in enumerate(ports))
        # n3 lists a fourth member: it would place partitions elsewhere.
        bad = good + f",n4@127.0.0.1:{free_port()}"
        self.nodes = {}
        for i, port in enumerate(ports):
            node_id = f"n{i + 1}"
            srv = Server(args=["--node-id", node_id, "--cluster-listen", f"127.0.0.1:{port}",
                               "--cluster-members", bad if node_id == "n3" else good])
            self.addCleanup(srv.cleanup)
            srv.start()
            self.nodes[node_id] = srv
        self.wait_for(lambda: any("another cluster.members list" in line
                                  for n in ("n1", "n2", "n3")
                                  for line in self.nodes[n].stderr_lines),
                      what="a refusal naming the member lists")
        time.sleep(2.5)
        states = {m["id"]: m["state"] for m in self.view("n1")["nodes"]}
        self.assertEqual(states, {"n1": "up", "n2": "up", "n3": "down"})
        line = [l for n in ("n1", "n2") for l in self.nodes[n].stderr_lines
                if "node n3 refused this node" in l or "refusing node n3" in l]
        self.assertTrue(line, self.nodes["n1"].stderr_lines[-5:])
        self.assertIn("another cluster.members list", line[0])


class AgentMismatchTest(ClusterTestCase):

    def test_an_agent_missing_on_a_member_is_a_warning(self):
        echo = "agents:\n  - {name: echo, kind: builtin, handler: echo, topics: [orders]}\n"
        self.start_cluster(config=echo, configs={"n3": ""})
        for node_id in ("n1", "n3"):
            view = self.view(node_id)
            agents = {m["id"]: m["agents"] for m in view["nodes"]}
            self.assertEqual(agents, {"n1": ["echo"], "n2": ["echo"], "n3": []})
            self.assertEqual(len(view["warnings"]), 1, view)
            self.assertIn("agent echo does not run on n3", view["warnings"][0])
        self.wait_for(lambda: any("agent echo runs on node n1 but not on node n3" in line
                                  for line in self.nodes["n1"].stderr_lines),
                      what="the warning in n1's log")


class OwnerDeathTest(ClusterTestCase):

    def test_kill_9_of_an_owner(self):
        self.start_cluster()
        for k in range(8):
            self.assertEqual(self.publish("n1", {"key": f"k{k}", "type": "t", "data": {}}).status,
                             201)
        owners = self.owners("n1")
        victim = owners[f"{TOPIC}/0"]
        alive = [n for n in self.nodes if n != victim]
        keys = {}  # partition -> a key that lands there
        k = 0
        while len(keys) < PARTITIONS:
            r = self.publish(alive[0], {"key": f"probe-{k}", "type": "t", "data": {}})
            self.assertEqual(r.status, 201, r)
            keys.setdefault(r.json()["events"][0]["partition"], f"probe-{k}")
            k += 1
        acked = {}  # id -> (partition, offset)

        self.nodes[victim].kill()
        killed_at = time.monotonic()
        # Its partitions answer 503 with Retry-After within 3 s, through any
        # live node; the other partitions keep answering 201.
        for node_id in alive:
            for p, key in keys.items():
                while True:
                    r = self.publish(node_id, {"key": key, "type": "t", "data": {}})
                    if owners[f"{TOPIC}/{p}"] != victim or r.status == 503:
                        break
                    self.assertLess(time.monotonic() - killed_at, 3.0,
                                    f"{TOPIC}/{p} still answers {r.status} after 3 s")
                    time.sleep(0.05)
                if owners[f"{TOPIC}/{p}"] == victim:
                    self.assertEqual(r.status, 503, r)
                    self.assertIn("retry-after", r.headers)
                    self.assertIn(victim, r.json()["detail"])
                else:
                    self.assertEqual(r.status, 201, r)
                    e = r.json()["events"][0]
                    acked[e["id"]] = (e["partition"], e["offset"])
        # Keyless events go to partitions whose owner is up.
        for _ in range(6):
            r = self.publish(alive[1], {"type": "t", "data": {}})
            self.assertEqual(r.status, 201, r)
        health = self.nodes[alive[0]].get("/health/detailed").json()
        cluster = [i for i in health["indicators"] if i["name"] == "cluster"][0]
        self.assertEqual(cluster["status"], "unhealthy")
        self.assertIn("2 of 3 nodes up", cluster["message"])

        # Back: linked again, its partitions take writes, nothing acked is
        # missing and offsets are dense on every partition.
        self.nodes[victim].start()
        self.wait_linked()
        for p, key in keys.items():
            r = self.publish(alive[0], {"key": key, "type": "t", "data": {}})
            self.assertEqual(r.status, 201, r)
        for p in range(PARTITIONS):
            owner = self.nodes[owners[f"{TOPIC}/{p}"]]
            events = owner.read_partition(TOPIC, p)
            self.assertEqual([e["offset"] for e in events], list(range(len(events))))
            for e in events:
                if e["id"] in acked:
                    self.assertEqual(acked.pop(e["id"]), (p, e["offset"]))
        self.assertEqual(acked, {})


class FrozenOwnerTest(ClusterTestCase):

    def test_a_forward_in_flight_to_a_frozen_owner_ends_when_the_link_drops(self):
        # SIGSTOP: the owner's socket stays open, so only heartbeats notice (2 s).
        # A forward already sent must end then, not at the 10 s forward timeout.
        self.start_cluster()
        k = 0
        while True:
            r = self.publish("n1", {"key": f"k{k}", "type": "t", "data": {}})
            self.assertEqual(r.status, 201, r)
            p = r.json()["events"][0]["partition"]
            if self.owners("n1")[f"{TOPIC}/{p}"] != "n1":
                break
            k += 1
        victim = self.owners("n1")[f"{TOPIC}/{p}"]
        proc = self.nodes[victim].proc
        proc.send_signal(signal.SIGSTOP)
        self.addCleanup(lambda: proc.poll() is None and proc.send_signal(signal.SIGCONT))
        t0 = time.monotonic()
        r = self.publish("n1", {"id": "frozen-1", "key": f"k{k}", "type": "t", "data": {}})
        took = time.monotonic() - t0
        self.assertEqual(r.status, 503, r)
        self.assertTrue(r.json()["detail"].startswith("indeterminate:"), r)
        self.assertLess(took, 3.5, f"the forward in flight was answered after {took:.1f} s")
        # Frozen is down: the next one is refused at once.
        r = self.publish("n1", {"key": f"k{k}", "type": "t", "data": {}})
        self.assertEqual(r.status, 503, r)
        self.assertIn(victim, r.json()["detail"])
        # Thawed, it links again and the retry with the same id is answered.
        proc.send_signal(signal.SIGCONT)
        self.wait_linked(timeout=20)
        r = self.publish("n1", {"id": "frozen-1", "key": f"k{k}", "type": "t", "data": {}})
        self.assertEqual(r.status, 201, r)


if __name__ == "__main__":
    unittest.main()
