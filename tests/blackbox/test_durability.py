"""kill -9 durability (CONTRACT.md section 8): an acknowledged publish survives
SIGKILL at any moment under fsync `always` (the default).

Eight publisher threads (singles and small arrays, some keyed, some with
explicit ids) publish while the server is SIGKILLed at a random moment; this
repeats on the same data dir. After every restart: every acknowledged event is
stored exactly once at the partition and offset it was given, offsets are
dense from 0, no id is stored twice, nothing stored earlier disappeared, and
nothing is stored that was never sent. Requests whose outcome is unknown
(explicit ids) are retried after the restart and must come back as duplicates
with the stored coordinates, or be appended.

NERVE_FAULT_SEED replays a run; NERVE_KILL_CYCLES changes the cycle count.
"""

import http.client
import json
import os
import random
import threading
import time
import unittest

from harness import ServerTestCase

TOPICS = {"dur.a": 4, "dur.b": 3}
THREADS = 8


class Publisher(threading.Thread):

    def __init__(self, srv, cycle, index, rng, log):
        super().__init__(daemon=True)
        self.srv, self.cycle, self.index = srv, cycle, index
        self.rng = random.Random(rng.random())
        self.log = log
        self.stop_flag = threading.Event()

    def make_request(self, n):
        topic = self.rng.choice(sorted(TOPICS))
        size = 1 if self.rng.random() < 0.5 else self.rng.randint(2, 6)
        if self.rng.random() < 0.05:
            size = 20
        body = []
        for k in range(size):
            marker = f"c{self.cycle}-t{self.index}-n{n}-k{k}"
            e = {"data": {"m": marker, "pad": "x" * self.rng.randint(0, 200)}}
            if self.rng.random() < 0.5:
                e["key"] = f"key-{self.rng.randint(0, 9)}"
            if self.rng.random() < 0.5:
                e["id"] = f"d-{marker}"
            body.append(e)
        return topic, body

    def run(self):
        conn = http.client.HTTPConnection(self.srv.host, self.srv.port, timeout=30)
        n = 0
        try:
            while not self.stop_flag.is_set():
                n += 1
                topic, body = self.make_request(n)
                payload = body[0] if len(body) == 1 and self.rng.random() < 0.5 else body
                self.log.attempt(topic, body)
                try:
                    conn.request("POST", f"/v1/topics/{topic}/events", json.dumps(payload),
                                 {"Content-Type": "application/json"})
                    res = conn.getresponse()
                    raw = res.read()
                except (OSError, http.client.HTTPException):
                    self.log.cut_off(topic, body)
                    return  # the server is gone
                if res.status != 201:
                    self.log.anomaly(f"{topic}: {res.status} {raw[:200]!r}")
                    return
                self.log.acked(topic, body, json.loads(raw)["events"])
        finally:
            conn.close()


class Ledger:
    """What the clients know: attempted markers, acknowledged coordinates."""

    def __init__(self):
        self.lock = threading.Lock()
        self.attempted = set()     # markers
        self.acks = {}             # id -> (topic, partition, offset, marker)
        self.unknown = []          # (topic, body) with explicit ids, outcome unknown
        self.anomalies = []

    def attempt(self, topic, body):
        with self.lock:
            for e in body:
                self.attempted.add(e["data"]["m"])

    def cut_off(self, topic, body):
        """A request without an answer: its explicit-id events can be retried."""
        with self.lock:
            retry = [e for e in body if "id" in e]
            if retry:
                self.unknown.append((topic, retry))

    def anomaly(self, text):
        with self.lock:
            self.anomalies.append(text)

    def acked(self, topic, body, answers, retry=False, stored=None):
        with self.lock:
            if len(answers) != len(body):
                self.anomalies.append(f"{len(answers)} answers for {len(body)} events")
                return
            for e, a in zip(body, answers):
                marker = e["data"]["m"]
                coords = (a["topic"], a["partition"], a["offset"], marker)
                if a["topic"] != topic or ("id" in e and a["id"] != e["id"]):
                    self.anomalies.append(f"answer {a} for {e}")
                if not retry:
                    if a["duplicate"]:
                        self.anomalies.append(f"fresh id answered as duplicate: {a}")
                elif a["id"] in stored:
                    s = stored[a["id"]]
                    if not a["duplicate"] or (a["topic"], a["partition"], a["offset"]) != s[:3]:
                        self.anomalies.append(f"retry of stored {a['id']} gave {a}, stored {s}")
                elif a["duplicate"]:
                    self.anomalies.append(f"retry of unstored {a['id']} is a duplicate: {a}")
                if a["id"] in self.acks and self.acks[a["id"]] != coords:
                    self.anomalies.append(f"{a['id']} acked at {self.acks[a['id']]} and {coords}")
                self.acks[a["id"]] = coords


class KillNineTest(ServerTestCase):

    def read_all(self, srv):
        """id -> (topic, partition, offset, marker) of everything stored."""
        stored = {}
        topics = srv.topics()
        for topic, parts in TOPICS.items():
            if topic not in topics:
                continue
            self.assertEqual(topics[topic]["partitions"], parts)
            total = 0
            for p in range(parts):
                events = srv.read_partition(topic, p)
                self.assertEqual([e["offset"] for e in events], list(range(len(events))),
                                 f"{topic}/{p}: offsets are not dense from 0")
                for e in events:
                    self.assertEqual((e["topic"], e["partition"]), (topic, p))
                    self.assertNotIn(e["id"], stored, f"id {e['id']} stored twice")
                    stored[e["id"]] = (topic, p, e["offset"], e["data"]["m"])
                total += len(events)
            self.assertEqual(topics[topic]["events"], total)
        return stored

    def verify(self, srv, ledger, previous):
        stored = self.read_all(srv)
        markers = [s[3] for s in stored.values()]
        self.assertEqual(len(markers), len(set(markers)), "one event stored twice")
        phantom = set(markers) - ledger.attempted
        self.assertEqual(phantom, set(), "stored events nobody sent")
        lost = {i: c for i, c in ledger.acks.items() if stored.get(i) != c}
        self.assertEqual(lost, {}, "acknowledged events lost or moved "
                         f"(showing stored: { {i: stored.get(i) for i in list(lost)[:5]} })")
        vanished = {i: c for i, c in previous.items() if stored.get(i) != c}
        self.assertEqual(vanished, {}, "events seen after an earlier restart changed")
        return stored

    def retry_unknown(self, srv, ledger, stored):
        """Idempotent retry of the requests cut off by the kill."""
        pending, ledger.unknown = ledger.unknown, []
        for topic, body in pending:
            r = srv.publish(topic, body)
            self.assertEqual(r.status, 201, r)
            ledger.acked(topic, body, r.json()["events"], retry=True, stored=stored)
        return len(pending)

    def test_acked_events_survive_kill_9(self):
        seed = int(os.environ.get("NERVE_FAULT_SEED", random.randrange(2**32)))
        cycles = int(os.environ.get("NERVE_KILL_CYCLES", "12"))
        print(f"\nkill -9 test: seed {seed} (NERVE_FAULT_SEED), {cycles} cycles", flush=True)
        rng = random.Random(seed)
        srv = self.new_server(config={"topics": {name: {"partitions": n}
                                                 for name, n in TOPICS.items()}})
        self.assertIn("fsync always", srv.stderr_text())
        ledger = Ledger()
        stored = {}
        retried = 0
        for cycle in range(cycles):
            if cycle > 0:
                srv.start()
            stored = self.verify(srv, ledger, stored)
            retried += self.retry_unknown(srv, ledger, stored)
            stored = self.verify(srv, ledger, stored)
            self.assertEqual(ledger.anomalies, [])

            before = len(ledger.acks)
            pubs = [Publisher(srv, cycle, t, rng, ledger) for t in range(THREADS)]
            for p in pubs:
                p.start()
            time.sleep(rng.uniform(0.2, 1.5))  # the fault: SIGKILL at a random moment
            srv.kill()
            for p in pubs:
                p.join(30)
                self.assertFalse(p.is_alive(), "a publisher hangs after the kill")
            if ledger.anomalies:
                print(srv.stderr_text()[-4000:], flush=True)
            self.assertEqual(ledger.anomalies, [])
            print(f"  cycle {cycle}: {len(ledger.acks) - before} acked, "
                  f"{len(ledger.unknown)} requests cut off", flush=True)

        srv.start()
        stored = self.verify(srv, ledger, stored)
        retried += self.retry_unknown(srv, ledger, stored)
        stored = self.verify(srv, ledger, stored)
        self.assertEqual(ledger.anomalies, [])
        self.assertGreater(len(ledger.acks), 100, "too few acknowledged events to mean much")
        self.stop_ok(srv)
        print(f"kill -9 test: {cycles} cycles, {len(ledger.acks)} events acknowledged, "
              f"{len(stored)} stored, {len(stored) - len(ledger.acks)} stored without an ack, "
              f"{retried} cut-off requests retried", flush=True)


if __name__ == "__main__":
    unittest.main()
