"""Black-box tests of agent delivery (CONTRACT.md sections 5 and 6): fan-out, the DLQ,
process agents and their supervision, emit chains, pause/resume, per-key order,
`start: earliest` and persistence of delivery state across restarts."""

import json
import os
import signal
import sys
import threading
import time
import unittest

from harness import RSS_BOUNDS_CHECKED, ServerTestCase, builtin, process, run_nerve, topic

HERE = os.path.dirname(os.path.abspath(__file__))
ECHO_AGENT = os.path.abspath(os.path.join(HERE, "..", "..", "docs", "examples", "echo_agent.py"))
FAST = {"initial": "20ms", "max": "100ms"}
FAIL_ERROR = "the fail handler always fails"

ORDERED_AGENT = r'''
import json, random, sys, time
out = open(sys.argv[1], "a", buffering=1)
for line in sys.stdin:
    msg = json.loads(line)
    if msg.get("type") != "event":
        continue
    ev = msg["event"]
    time.sleep(random.uniform(0.0, 0.004))
    out.write("%s,%d\n" % (ev.get("key"), ev["data"]["seq"]))
    sys.stdout.write(json.dumps({"type": "ack", "delivery": msg["delivery"],
                                 "result": ev["data"]}) + "\n")
    sys.stdout.flush()
'''


class AgentTestCase(ServerTestCase):

    def agent_server(self, agents, start=True, **kw):
        return self.new_server(start=start, config={"agents": agents}, **kw)

    def publish_ok(self, srv, topic_name, events):
        r = srv.publish(topic_name, events)
        self.assertEqual(r.status, 201, r)
        return r.json()["events"]

    def event_view(self, srv, event_id):
        r = srv.get(f"/v1/events/{event_id}")
        self.assertEqual(r.status, 200, r)
        return r.json()

    def deliveries(self, srv, event_id):
        """{agent: delivery}; also checks each agent appears once."""
        ds = self.event_view(srv, event_id)["deliveries"]
        by = {d["agent"]: d for d in ds}
        self.assertEqual(len(by), len(ds), ds)
        return by

    def wait_state(self, srv, event_ids, agent, state, timeout=15.0):
        def check():
            out = {}
            for i in event_ids:
                d = self.deliveries(srv, i).get(agent)
                if d is None or d["state"] != state:
                    return None
                out[i] = d
            return out
        return self.wait_for(check, timeout, f"{agent} {state} on {len(event_ids)} events")

    def dlq(self, srv, **query):
        qs = "&".join(f"{k}={v}" for k, v in query.items())
        r = srv.get("/v1/dlq" + ("?" + qs if qs else ""))
        self.assertEqual(r.status, 200, r)
        return r.json()

    def agent(self, srv, name):
        r = srv.get(f"/v1/agents/{name}")
        self.assertEqual(r.status, 200, r)
        return r.json()

    def assert_groups_kept(self, srv, topic_name, before):
        """Each agent's group (of {agent: group before}) has nothing pending or lagging
        and the cursors it had before."""
        for agent, b in before.items():
            g = self.group(srv, topic_name, agent)
            self.assertEqual((g["pending"], g["lag"]), (0, 0), g)
            self.assertEqual([p["cursor"] for p in g["partitions"]],
                             [p["cursor"] for p in b["partitions"]], g)

    def group(self, srv, topic_name, agent):
        r = srv.get(f"/v1/topics/{topic_name}/groups")
        self.assertEqual(r.status, 200, r)
        body = r.json()
        self.assertEqual(body["topic"], topic_name)
        gs = [g for g in body["groups"] if g["agent"] == agent]
        self.assertEqual(len(gs), 1, body)
        return gs[0]

    def cli(self, srv, *args):
        return run_nerve(list(args) + ["--server", srv.url])

    def script_agent(self, srv, source, name):
        """Writes the Python agent `source` into the server's work dir; answers
        the command that runs it, which gets one more file path as argv[1]
        (a marker or a log of its own), and that path."""
        script = os.path.join(srv.workdir, f"{name}_agent.py")
        with open(script, "w") as f:
            f.write(source)
        path = os.path.join(srv.workdir, f"{name}.out")
        return [sys.executable, script, path], path


FLOOD_AGENT = r"""
import json, sys, threading
def stderr_flood():
    sys.stderr.write("noise on stderr\n" * 200000)
    sys.stderr.flush()
threading.Thread(target=stderr_flood, daemon=True).start()
# A million lines that are no answer, then one line of 20 MB without an end
# for a while, then answers as usual.
sys.stdout.write("garbage, not json\n" * 1000000)
sys.stdout.write("x" * (20 << 20))
sys.stdout.write("\n")
sys.stdout.flush()
for line in sys.stdin:
    msg = json.loads(line)
    if msg.get("type") == "event":
        sys.stdout.write(json.dumps({"type": "ack", "delivery": msg["delivery"]}) + "\n")
        sys.stdout.flush()
        sys.stderr.write("handled one\n")
        sys.stderr.flush()
"""


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0

# 1 -----------------------------------------------------------------------------

class FanOutTest(AgentTestCase):

    def test_two_echo_agents_both_ack_every_event_with_data_as_result(self):
        t = topic("fan")
        srv = self.agent_server([builtin("e1", ["fan.>"], "echo"),
                                 builtin("e2", [t], "echo")])
        datas = [{"n": i, "s": "x" * i, "l": [i, None, True]} for i in range(8)] + [42, "str", None]
        pub = self.publish_ok(srv, t, [{"data": d, "key": f"k{i % 3}"} for i, d in enumerate(datas)])
        for e, data in zip(pub, datas):
            for agent in ("e1", "e2"):
                d = self.wait_state(srv, [e["id"]], agent, "acked")[e["id"]]
                self.assertEqual(d["result"], data, d)
                self.assertIsNone(d["error"], d)
            self.assertEqual(set(self.deliveries(srv, e["id"])), {"e1", "e2"})
        for agent in ("e1", "e2"):
            g = self.group(srv, t, agent)
            self.assertEqual((g["pending"], g["lag"]), (0, 0), g)

    # BUG: an acked delivery whose pending record was compacted reports attempts 0
    # (actors/node.cpp ~440-443: the "acked via cursor" branch leaves d.attempts at 0).
    def test_acked_delivery_reports_at_least_one_attempt(self):
        t = topic("fan")
        srv = self.agent_server([builtin("e1", [t], "echo")])
        [e] = self.publish_ok(srv, t, [{"data": {"a": 1}}])
        d = self.wait_state(srv, [e["id"]], "e1", "acked")[e["id"]]
        self.assertEqual(d["attempts"], 1, d)


class FilterTest(AgentTestCase):

    def test_filtered_out_events_are_skipped(self):
        t = topic("filter")
        srv = self.agent_server([builtin("typed", [t], "echo", filter={"type": "order.created"}),
                                 builtin("keyed", [t], "echo", filter={"key": "vip"})])
        match, other, vip = self.publish_ok(srv, t, [
            {"type": "order.created", "data": 1},
            {"type": "order.deleted", "data": 2},
            {"type": "order.deleted", "key": "vip", "data": 3}])
        self.assertEqual(self.wait_state(srv, [match["id"]], "typed", "acked")[match["id"]]["result"], 1)
        self.assertEqual(self.wait_state(srv, [vip["id"]], "keyed", "acked")[vip["id"]]["result"], 3)
        for e, agent in ((other, "typed"), (vip, "typed"), (match, "keyed"), (other, "keyed")):
            d = self.deliveries(srv, e["id"])[agent]
            self.assertEqual(d["state"], "skipped", d)
            self.assertIsNone(d["result"], d)
        for agent in ("typed", "keyed"):
            g = self.wait_for(lambda: (lambda g: g if g["lag"] == 0 else None)(
                self.group(srv, t, agent)), what="lag 0")
            self.assertEqual(g["pending"], 0, g)


# 2 -----------------------------------------------------------------------------

class DlqTest(AgentTestCase):

    def setUp(self):
        self.t = topic("dlq")
        self.srv = self.agent_server([builtin("bad", [self.t], "fail", max_retries=2,
                                              backoff=FAST)])

    def dead(self, n):
        """Waits for exactly n DLQ entries of agent bad; returns {event id: entry}."""
        def check():
            body = self.dlq(self.srv, agent="bad")
            if body["count"] != n or len(body["entries"]) != n:
                return None
            return body
        body = self.wait_for(check, what=f"{n} DLQ entries")
        by_event = {}
        for e in body["entries"]:
            self.assertNotIn(e["event"]["id"], by_event, body)  # one entry per event
            by_event[e["event"]["id"]] = e
        return by_event

    def check_entry(self, entry, published):
        self.assertEqual(entry["agent"], "bad")
        self.assertEqual(entry["topic"], self.t)
        self.assertEqual(entry["attempts"], 3, entry)
        self.assertEqual(entry["error"], FAIL_ERROR, entry)
        self.assertEqual(entry["partition"], published["partition"])
        self.assertEqual(entry["offset"], published["offset"])
        self.assertLessEqual(entry["first_failed_at"], entry["last_failed_at"])
        self.assertLess(entry["first_failed_at"], entry["last_failed_at"])  # 3 attempts

    def wait_refailed(self, event_id, after):
        """Waits until the event's entry is back with a last failure later than `after`."""
        def check():
            for e in self.dlq(self.srv, agent="bad")["entries"]:
                if e["event"]["id"] == event_id and e["last_failed_at"] > after:
                    return e
            return None
        return self.wait_for(check, what=f"{event_id} back in the DLQ")

    def test_dlq_lifecycle(self):
        pub = self.publish_ok(self.srv, self.t, [{"data": {"i": i}} for i in range(3)])
        entries = self.dead(3)
        self.assertEqual(set(entries), {e["id"] for e in pub})
        for p in pub:
            entry = entries[p["id"]]
            self.check_entry(entry, p)
            self.assertEqual(entry["event"]["data"], {"i": pub.index(p)})
            r = self.srv.get(f"/v1/dlq/{entry['id']}")
            self.assertEqual(r.status, 200, r)
            self.assertEqual(r.json(), entry)
            d = self.deliveries(self.srv, p["id"])["bad"]
            self.assertEqual((d["state"], d["attempts"], d["error"]),
                             ("dead_lettered", 3, FAIL_ERROR), d)
        # Stays put: no more attempts after the DLQ.
        time.sleep(0.3)
        self.assertEqual(self.dead(3), entries)

        # HTTP retry: goes through again, back in the DLQ with attempts 3.
        first = entries[pub[0]["id"]]
        r = self.srv.post(f"/v1/dlq/{first['id']}/retry")
        self.assertEqual(r.status, 200, r)
        again = self.wait_refailed(pub[0]["id"], first["last_failed_at"])
        self.check_entry(again, pub[0])
        self.dead(3)

        # CLI retry.
        second = entries[pub[1]["id"]]
        c = self.cli(self.srv, "dlq", "retry", second["id"])
        self.assertEqual(c.returncode, 0, c)
        self.assertIn(second["id"], c.stdout)
        self.check_entry(self.wait_refailed(pub[1]["id"], second["last_failed_at"]), pub[1])

        # CLI list --json.
        c = self.cli(self.srv, "dlq", "list", "--agent", "bad", "--json")
        self.assertEqual(c.returncode, 0, c)
        self.assertEqual(json.loads(c.stdout)["count"], 3)

        # retry-all for the agent (HTTP body).
        before = self.dead(3)
        r = self.srv.post("/v1/dlq/retry-all", {"agent": "bad"})
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json(), {"retried": 3})
        for p in pub:
            self.check_entry(self.wait_refailed(p["id"], before[p["id"]]["last_failed_at"]), p)
        # retry-all for another agent touches nothing.
        r = self.srv.post("/v1/dlq/retry-all?agent=nobody")
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json(), {"retried": 0})
        # retry-all filtered by another topic touches nothing; by this topic, all.
        r = self.srv.post("/v1/dlq/retry-all", {"topic": "no.such.topic"})
        self.assertEqual(r.json(), {"retried": 0})
        self.assertEqual(self.dlq(self.srv, topic="no.such.topic")["count"], 0)
        self.assertEqual(self.dlq(self.srv, topic=self.t)["count"], 3)
        self.assertProblem(self.srv.post("/v1/dlq/retry-all", {"agent": 5}), 400)
        self.assertProblem(self.srv.post("/v1/dlq/retry-all", "[1"), 400)
        # CLI retry-all.
        before = self.dead(3)
        c = self.cli(self.srv, "dlq", "retry-all", "--agent", "bad", "--json")
        self.assertEqual(c.returncode, 0, c)
        self.assertEqual(json.loads(c.stdout), {"retried": 3})
        for p in pub:
            self.wait_refailed(p["id"], before[p["id"]]["last_failed_at"])
        entries = self.dead(3)

        # DELETE removes an entry.
        gone = entries[pub[2]["id"]]
        r = self.srv.request("DELETE", f"/v1/dlq/{gone['id']}")
        self.assertEqual(r.status, 200, r)
        self.assertProblem(self.srv.get(f"/v1/dlq/{gone['id']}"), 404)
        self.assertProblem(self.srv.request("DELETE", f"/v1/dlq/{gone['id']}"), 404)
        self.assertEqual(set(self.dead(2)), {pub[0]["id"], pub[1]["id"]})

        # purge --yes through the CLI.
        c = self.cli(self.srv, "dlq", "purge", "--agent", "bad", "--yes", "--json")
        self.assertEqual(c.returncode, 0, c)
        self.assertEqual(json.loads(c.stdout), {"purged": 2})
        self.assertEqual(self.dlq(self.srv, agent="bad")["count"], 0)

    def test_racing_deletes_retries_and_purge_remove_each_entry_once(self):
        """The DLQ actor alone removes entries: of many concurrent deletes and
        retries of one entry exactly one succeeds (the others are 404, or 409
        while it is in flight), and a purge racing deletes never counts an
        entry twice nor drives the count below zero."""
        pub = self.publish_ok(self.srv, self.t, [{"data": {"i": i}} for i in range(40)])
        entries = self.dead(40)
        target = entries[pub[0]["id"]]["id"]
        statuses = []
        lock = threading.Lock()

        def hit(method, path):
            r = self.srv.request(method, path)
            with lock:
                statuses.append((method, r.status))

        threads = [threading.Thread(target=hit, args=("DELETE", f"/v1/dlq/{target}"))
                   for _ in range(12)]
        threads += [threading.Thread(target=hit, args=("POST", f"/v1/dlq/{target}/retry"))
                    for _ in range(4)]
        for th in threads:
            th.start()
        for th in threads:
            th.join(30)
        ok = [m for m, s in statuses if s == 200]
        self.assertEqual(len(ok), 1, statuses)
        self.assertTrue(all(s in (200, 404, 409) for _, s in statuses), statuses)
        if ok == ["DELETE"]:
            self.dead(39)
        else:  # the retried event fails again and comes back
            self.dead(40)
        # A purge racing single deletes: every entry is removed exactly once.
        ids = [e["id"] for e in self.dlq(self.srv, agent="bad", limit=100)["entries"]]
        deleted = []

        def delete(entry_id):
            r = self.srv.request("DELETE", f"/v1/dlq/{entry_id}")
            with lock:
                if r.status == 200:
                    deleted.append(entry_id)

        threads = [threading.Thread(target=delete, args=(i,)) for i in ids[::2]]
        purged = {}
        threads.append(threading.Thread(target=lambda: purged.update(
            self.srv.post("/v1/dlq/purge", {"agent": "bad"}).json())))
        for th in threads:
            th.start()
        for th in threads:
            th.join(30)
        self.assertEqual(len(deleted) + purged.get("purged", 0), len(ids), (deleted, purged))
        self.assertEqual(self.dlq(self.srv, agent="bad")["count"], 0)
        metrics = self.srv.get("/metrics").body.decode()
        self.assertIn("nerve_dlq_entries 0", metrics)

    def test_unknown_dlq_id_is_404_problem(self):
        for method, path in (("GET", "/v1/dlq/dlq-0000000000000000"),
                             ("DELETE", "/v1/dlq/dlq-0000000000000000"),
                             ("POST", "/v1/dlq/dlq-0000000000000000/retry"),
                             ("GET", "/v1/dlq/nope")):
            self.assertProblem(self.srv.request(method, path), 404)
        c = self.cli(self.srv, "dlq", "show", "dlq-0000000000000000")
        self.assertNotEqual(c.returncode, 0, c)

    def test_dlq_pagination(self):
        pub = self.publish_ok(self.srv, self.t, [{"data": {"i": i}} for i in range(5)])
        self.dead(5)
        seen, cursor = [], None
        for _ in range(10):
            q = {"agent": "bad", "limit": 2}
            if cursor:
                q["cursor"] = cursor
            body = self.dlq(self.srv, **q)
            self.assertLessEqual(len(body["entries"]), 2)
            seen += [e["event"]["id"] for e in body["entries"]]
            cursor = body["next_cursor"]
            if not cursor:
                break
        self.assertEqual(sorted(seen), sorted(p["id"] for p in pub))


# 3, 4 ---------------------------------------------------------------------------

class ProcessAgentTest(AgentTestCase):

    def setUp(self):
        self.t = topic("proc")
        self.srv = self.agent_server([process("py", [self.t], [sys.executable, ECHO_AGENT],
                                              instances=2, max_retries=1, backoff=FAST)])

    def running_instances(self):
        a = self.agent(self.srv, "py")
        ok = (len(a["instances"]) == 2 and all(i["state"] == "running" and isinstance(i["pid"], int)
                                               for i in a["instances"]))
        return a if ok else None

    def test_process_agent_acks_every_event_with_data(self):
        a = self.wait_for(self.running_instances, what="2 running instances")
        self.assertEqual(a["kind"], "process")
        self.assertEqual(a["state"], "running")
        self.assertEqual(a["topics"], [self.t])
        self.assertEqual(sorted(i["id"] for i in a["instances"]), [0, 1])
        pids = [i["pid"] for i in a["instances"]]
        self.assertEqual(len(set(pids)), 2)
        for pid in pids:
            os.kill(pid, 0)  # exists
        listed = [x for x in self.srv.get("/v1/agents").json()["agents"] if x["name"] == "py"]
        self.assertEqual(len(listed), 1)
        c = self.cli(self.srv, "agent", "list", "--json")
        self.assertEqual(c.returncode, 0, c)
        self.assertEqual([x["name"] for x in json.loads(c.stdout)["agents"]], ["py"])

        datas = [{"n": i, "k": f"key-{i}"} for i in range(30)]
        pub = self.publish_ok(self.srv, self.t,
                              [{"data": d, "key": f"key-{i % 7}"} for i, d in enumerate(datas)])
        acked = self.wait_state(self.srv, [p["id"] for p in pub], "py", "acked")
        for p, d in zip(pub, datas):
            self.assertEqual(acked[p["id"]]["result"], d)
            self.assertEqual(list(self.deliveries(self.srv, p["id"])), ["py"])
        self.assertEqual(self.dlq(self.srv, agent="py")["count"], 0)
        g = self.group(self.srv, self.t, "py")
        self.assertEqual((g["instances"], g["pending"], g["lag"]), (2, 0, 0), g)

    def test_a_stopped_child_is_replaced_and_nothing_is_lost(self):
        # SIGSTOP: the child neither reads nor answers. Its deliveries time
        # out; as it said nothing for a whole timeout, nerve kills it and the
        # new child gets every event.
        t = topic("stopped")
        srv = self.agent_server([process("s", [t], [sys.executable, ECHO_AGENT],
                                         timeout="500ms", max_retries=10, backoff=FAST)])
        [first] = self.publish_ok(srv, t, [{"data": {"n": 0}}])
        self.wait_state(srv, [first["id"]], "s", "acked")
        pid = self.agent(srv, "s")["instances"][0]["pid"]
        os.kill(pid, signal.SIGSTOP)
        pub = self.publish_ok(srv, t, [{"data": {"n": i}} for i in range(1, 6)])
        acked = self.wait_state(srv, [p["id"] for p in pub], "s", "acked", 20.0)
        self.assertEqual(sorted(d["result"]["n"] for d in acked.values()), [1, 2, 3, 4, 5])
        inst = self.agent(srv, "s")["instances"][0]
        self.assertNotEqual(inst["pid"], pid)
        self.assertGreaterEqual(inst["restarts"], 1)
        self.assertIn(f"pid {pid} said nothing for", srv.stderr_text())
        self.assertEqual(self.dlq(srv)["count"], 0)
        with self.assertRaises(ProcessLookupError):  # killed and reaped, not left stopped
            os.kill(pid, 0)

    def test_a_child_flooding_stdout_and_stderr_stays_bounded(self):
        t = topic("flood")
        srv = self.agent_server([], start=False)
        command, _ = self.script_agent(srv, FLOOD_AGENT, "flood")
        srv.write_config({"agents": [process("f", [t], command, timeout="60s")]})
        srv.start()
        base = rss_kb(srv.proc.pid)
        peak = base
        pub = self.publish_ok(srv, t, [{"data": {"n": i}} for i in range(3)])
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            peak = max(peak, rss_kb(srv.proc.pid))
            if all(self.deliveries(srv, p["id"])["f"]["state"] == "acked" for p in pub):
                break
            time.sleep(0.1)
        for p in pub:
            self.assertEqual(self.deliveries(srv, p["id"])["f"]["state"], "acked")
        # A stderr line in a later second tells how many were not logged.
        time.sleep(1.1)
        [last] = self.publish_ok(srv, t, [{"data": {"n": 3}}])
        self.wait_state(srv, [last["id"]], "f", "acked")
        self.wait_for(lambda: "lines of stderr not logged" in srv.stderr_text(), 5.0,
                      "the count of stderr lines not logged")
        # Bounded: the lines wait in the child's pipe, not in nerve's mailbox;
        # the 20 MB line is dropped past 16 MiB (measured: +48 MB at the peak).
        if RSS_BOUNDS_CHECKED:
            self.assertLess(peak - base, 100 * 1024, f"RSS grew from {base} to {peak} kB")
        log = srv.stderr_text()
        ignored = log.count("ignoring a line that is not an ack or nack")
        self.assertGreater(ignored, 0)
        self.assertLess(ignored, 1000, "every garbage line was logged")
        self.assertIn("more not logged", log)
        self.assertIn("too long", log)
        self.assertLess(log.count("noise on stderr"), 10000, "every stderr line was logged")
        self.assertIn("lines of stderr not logged", log)
        self.assertHealthy(srv)

    def test_nacked_event_goes_to_dlq_with_agent_error(self):
        [p] = self.publish_ok(self.srv, self.t, [{"data": {"fail": True}}])
        d = self.wait_state(self.srv, [p["id"]], "py", "dead_lettered")[p["id"]]
        self.assertEqual((d["attempts"], d["error"]), (2, "asked to fail"), d)
        body = self.dlq(self.srv, agent="py")
        self.assertEqual(body["count"], 1, body)
        e = body["entries"][0]
        self.assertEqual((e["event"]["id"], e["attempts"], e["error"], e["topic"]),
                         (p["id"], 2, "asked to fail", self.t))

    def test_kill_9_of_child_restarts_it_and_redelivers(self):
        a = self.wait_for(self.running_instances, what="2 running instances")
        victim = a["instances"][0]
        first = self.publish_ok(self.srv, self.t, [{"data": {"n": i}} for i in range(10)])
        os.kill(victim["pid"], signal.SIGKILL)
        during = self.publish_ok(self.srv, self.t, [{"data": {"n": 10 + i}} for i in range(10)])

        def restarted():
            a = self.agent(self.srv, "py")
            inst = [i for i in a["instances"] if i["id"] == victim["id"]][0]
            if (inst["restarts"] >= 1 and inst["state"] == "running"
                    and isinstance(inst["pid"], int) and inst["pid"] != victim["pid"]):
                return inst
            return None
        inst = self.wait_for(restarted, what="instance restarted")
        os.kill(inst["pid"], 0)
        after = self.publish_ok(self.srv, self.t, [{"data": {"n": 20 + i}} for i in range(10)])
        allp = first + during + after
        acked = self.wait_state(self.srv, [p["id"] for p in allp], "py", "acked")
        for i, p in enumerate(allp):
            self.assertEqual(acked[p["id"]]["result"], {"n": i})
        self.assertEqual(self.dlq(self.srv, agent="py")["count"], 0)
        g = self.group(self.srv, self.t, "py")
        self.assertEqual((g["pending"], g["lag"]), (0, 0), g)


HANG_AGENT = r'''
import json, sys
open(sys.argv[1], "w").close()  # ready: interpreter start-up is not part of the timeout
for line in sys.stdin:
    msg = json.loads(line)
    if msg.get("type") == "event" and not msg["event"]["data"].get("hang"):
        sys.stdout.write(json.dumps({"type": "ack", "delivery": msg["delivery"], "result": 1}) + "\n")
        sys.stdout.flush()
'''


class TimeoutTest(AgentTestCase):

    def test_unanswered_delivery_times_out_into_the_dlq(self):
        t = topic("timeout")
        srv = self.agent_server([], start=False)
        command, ready = self.script_agent(srv, HANG_AGENT, "hang")
        srv.write_config({"agents": [process("hang", [t], command, timeout="100ms",
                                             max_retries=1, backoff=FAST)]})
        srv.start()
        # On a loaded machine Python can take longer than the 100 ms timeout to start.
        self.wait_for(lambda: os.path.exists(ready), what="the agent to start")
        hung, fine = self.publish_ok(srv, t, [{"data": {"hang": True}}, {"data": {"hang": False}}])
        self.assertEqual(self.wait_state(srv, [fine["id"]], "hang", "acked")[fine["id"]]["result"], 1)
        d = self.wait_state(srv, [hung["id"]], "hang", "dead_lettered")[hung["id"]]
        self.assertEqual(d["attempts"], 2, d)
        self.assertEqual(d["error"], "timed out after 100 ms", d)
        [e] = self.dlq(srv, agent="hang")["entries"]
        self.assertEqual((e["event"]["id"], e["attempts"], e["error"]),
                         (hung["id"], 2, "timed out after 100 ms"))


CRASH_AGENT = r'''
import json, os, sys
open(sys.argv[1], "a").write("started\n")  # one line per start of the child
for line in sys.stdin:
    msg = json.loads(line)
    if msg.get("type") != "event":
        continue
    if msg["event"]["data"].get("crash"):
        os._exit(3)  # a poison event: the child dies on it every time
    sys.stdout.write(json.dumps({"type": "ack", "delivery": msg["delivery"]}) + "\n")
    sys.stdout.flush()
'''


class PoisonEventTest(AgentTestCase):

    def test_an_event_that_kills_the_child_every_time_ends_in_the_dlq(self):
        t = topic("poison")
        srv = self.agent_server([], start=False)
        command, starts = self.script_agent(srv, CRASH_AGENT, "crashy")
        srv.write_config({"agents": [process("crashy", [t], command, timeout="1s",
                                             max_retries=1, backoff=FAST)]})
        srv.start()
        self.wait_for(lambda: os.path.exists(starts), what="the agent to start")
        [poison] = self.publish_ok(srv, t, [{"data": {"crash": True}}])
        # Nothing else is published: the retries must be woken by the child's
        # restarts alone, not by later traffic on the partition.
        d = self.wait_state(srv, [poison["id"]], "crashy", "dead_lettered", timeout=40)[poison["id"]]
        self.assertEqual(d["attempts"], 2, d)
        [e] = self.dlq(srv, agent="crashy")["entries"]
        self.assertEqual(e["event"]["id"], poison["id"])
        with open(starts) as f:
            self.assertGreaterEqual(len(f.readlines()), 2)  # it was restarted
        # The agent goes on with other events.
        [fine] = self.publish_ok(srv, t, [{"data": {"crash": False}}])
        self.wait_state(srv, [fine["id"]], "crashy", "acked", timeout=30)


DEAF_AGENT = r'''
import sys, time
open(sys.argv[1], "w").close()
time.sleep(3600)  # never reads its stdin
'''


class DeafAgentTest(AgentTestCase):

    def test_a_child_that_stops_reading_times_out_and_stops_promptly(self):
        # 16 events of 20 KB fill the 64 KiB pipe to the child: writing to it
        # must not hold up the timeouts or a stop.
        t = topic("deaf")
        srv = self.agent_server([], start=False)
        command, ready = self.script_agent(srv, DEAF_AGENT, "deaf")
        srv.write_config({"agents": [process("deaf", [t], command, timeout="500ms",
                                             max_retries=0)]})
        srv.start()
        self.wait_for(lambda: os.path.exists(ready), what="the agent to start")
        events = self.publish_ok(srv, t, [{"data": "x" * 20000} for _ in range(16)])
        dead = self.wait_state(srv, [e["id"] for e in events], "deaf", "dead_lettered")
        self.assertEqual({d["error"] for d in dead.values()}, {"timed out after 500 ms"})
        started = time.monotonic()
        self.assertEqual(srv.stop(), 0)
        self.assertLess(time.monotonic() - started, 10)  # SIGTERM reaches the child at once

    def test_a_child_that_ignores_stdin_does_not_outlive_a_kill_9_of_nerve(self):
        # Else a restarted nerve would run a second copy of every such agent.
        t = topic("deafkill")
        srv = self.agent_server([], start=False)
        command, ready = self.script_agent(srv, DEAF_AGENT, "deaf")
        srv.write_config({"agents": [process("deaf", [t], command, instances=2)]})
        srv.start()

        def pids():
            a = self.agent(srv, "deaf")
            got = [i["pid"] for i in a["instances"] if isinstance(i["pid"], int)]
            return got if len(got) == 2 else None

        def alive(pid):
            try:
                with open(f"/proc/{pid}/stat") as f:
                    return f.read().split(") ", 1)[1][0] != "Z"  # a zombie is gone
            except FileNotFoundError:
                return False
        running = self.wait_for(pids, what="2 agent processes")
        self.wait_for(lambda: os.path.exists(ready), what="the agent to start")
        self.assertTrue(all(alive(p) for p in running))
        srv.kill()
        self.wait_for(lambda: not any(alive(p) for p in running) or None, timeout=10,
                      what="the agent processes to end with nerve")


# 5 -----------------------------------------------------------------------------

EMPTY_EMIT_AGENT = r'''
import json, sys
for line in sys.stdin:
    msg = json.loads(line)
    if msg.get("type") == "event":
        sys.stdout.write(json.dumps({"type": "ack", "delivery": msg["delivery"],
                                     "result": "r", "emit": []}) + "\n")
        sys.stdout.flush()
'''


class EmitChainTest(AgentTestCase):

    def test_an_empty_emit_list_is_a_plain_ack(self):
        t = topic("emptyemit")
        srv = self.agent_server([], start=False)
        command, _ = self.script_agent(srv, EMPTY_EMIT_AGENT, "quiet")
        srv.write_config({"agents": [process("quiet", [t], command)]})
        srv.start()
        events = self.publish_ok(srv, t, [{"data": i, "key": "k"} for i in range(5)])
        acked = self.wait_state(srv, [e["id"] for e in events], "quiet", "acked")
        self.assertEqual({d["result"] for d in acked.values()}, {"r"})
        g = self.wait_for(lambda: (lambda g: g if g["lag"] == 0 else None)(self.group(srv, t, "quiet")),
                          what="the group to catch up")
        self.assertEqual(g["pending"], 0, g)
        self.assertEqual(len(srv.topics()), 1)  # nothing was emitted

    def test_emitted_event_carries_causation_correlation_and_trace(self):
        a, b = topic("chaina"), topic("chainb")
        srv = self.agent_server([process("py", [a], [sys.executable, ECHO_AGENT]),
                                 builtin("sink", [b], "echo")])
        plain, corr = self.publish_ok(srv, a, [
            {"data": {"emit_to": b}},
            {"data": {"emit_to": b}, "correlation_id": "corr-xyz", "trace_id": "0af7651916cd43dd8448eb211c80319c"},
        ])
        parents = {p["id"]: self.event_view(srv, p["id"])["event"] for p in (plain, corr)}
        self.wait_state(srv, list(parents), "py", "acked")

        def emitted():
            if b not in srv.topics():
                return None
            evs = [e for p in range(srv.topics()[b]["partitions"]) for e in srv.read_partition(b, p)]
            return evs if len(evs) == 2 else None
        children = {e["causation_id"]: e for e in self.wait_for(emitted, what="2 emitted events")}
        self.assertEqual(set(children), set(parents))
        for child in children.values():  # deterministic ids: UUID version 8, RFC 9562 variant
            self.assertRegex(child["id"],
                             r"^[0-9a-f]{8}-[0-9a-f]{4}-8[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
        c = children[plain["id"]]
        self.assertEqual(c["correlation_id"], plain["id"])
        self.assertEqual(c["trace_id"], parents[plain["id"]]["trace_id"])
        self.assertEqual(c["data"], {"from": plain["id"]})
        self.assertEqual(c["topic"], b)
        self.assertNotEqual(c["id"], plain["id"])
        c = children[corr["id"]]
        self.assertEqual(c["correlation_id"], "corr-xyz")
        self.assertEqual(c["trace_id"], "0af7651916cd43dd8448eb211c80319c")
        self.assertEqual(parents[corr["id"]]["trace_id"], "0af7651916cd43dd8448eb211c80319c")
        # The emitted events are delivered on in turn.
        acked = self.wait_state(srv, [c["id"] for c in children.values()], "sink", "acked")
        for c in children.values():
            self.assertEqual(acked[c["id"]]["result"], c["data"])
        # The parent's result is the echoed data.
        self.assertEqual(self.deliveries(srv, plain["id"])["py"]["result"], {"emit_to": b})


    def test_a_chain_of_three_agents_keeps_one_correlation_id(self):
        a, b, c = topic("hop1"), topic("hop2"), topic("hop3")
        srv = self.agent_server([process("first", [a], [sys.executable, ECHO_AGENT]),
                                 process("second", [b], [sys.executable, ECHO_AGENT]),
                                 builtin("third", [c], "echo")])
        root = self.publish_ok(srv, a, {"data": {"emit_to": [b, c]}})[0]
        root_event = self.event_view(srv, root["id"])["event"]

        def only_event(t):
            def get():
                if t not in srv.topics():
                    return None
                evs = [e for p in range(srv.topics()[t]["partitions"])
                       for e in srv.read_partition(t, p)]
                return evs[0] if len(evs) == 1 else None
            return self.wait_for(get, what=f"the event on {t}")

        hop2 = only_event(b)
        hop3 = only_event(c)
        self.assertEqual(hop2["causation_id"], root["id"])
        self.assertEqual(hop3["causation_id"], hop2["id"])
        for e in (hop2, hop3):
            self.assertEqual(e["correlation_id"], root["id"])
            self.assertEqual(e["trace_id"], root_event["trace_id"])
        self.assertEqual(hop3["data"], {"from": hop2["id"]})
        self.wait_state(srv, [hop3["id"]], "third", "acked")


class HttpAgentTest(AgentTestCase):
    """An http agent POSTs each event to its URL: 2xx acks (the JSON body is the
    result and may emit), anything else or a timeout fails the attempt."""

    def hook_server(self, keep_alive=False, close_every=0, connections=None):
        """The agent's endpoint. keep_alive: HTTP/1.1 connections stay open; close_every:
        it then drops every n-th connection after an answer without saying so (an idle
        timeout as servers have); connections: a set that gets each client port."""
        import http.server
        seen = []
        answered = [0]

        class Hook(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1" if keep_alive else "HTTP/1.0"

            def do_POST(self):
                if connections is not None:
                    connections.add(self.client_address[1])
                ev = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                seen.append(ev["id"])
                answered[0] += 1
                if close_every and answered[0] % close_every == 0:
                    self.close_connection = True  # no "Connection: close": the client learns later
                data = ev.get("data")
                if isinstance(data, dict) and data.get("status"):
                    body, status = b"refused", data["status"]
                elif isinstance(data, dict) and data.get("sleep"):
                    time.sleep(data["sleep"])
                    body, status = b"{}", 200
                elif isinstance(data, dict) and (data.get("huge_mb") or data.get("drip_mb")):
                    # A body of N MB: at once, or 1 KiB every 20 ms.
                    size = (data.get("huge_mb") or data.get("drip_mb")) << 20
                    self.send_response(200)
                    self.send_header("Content-Length", str(size))
                    self.end_headers()
                    chunk = b"x" * (1 << 20 if data.get("huge_mb") else 1024)
                    try:
                        for _ in range(size // len(chunk)):
                            self.wfile.write(chunk)
                            if data.get("drip_mb"):
                                time.sleep(0.02)
                    except OSError:
                        pass  # nerve gave up on it
                    return
                else:
                    reply = {"seen": ev["id"]}
                    if isinstance(data, dict) and data.get("emit_to"):
                        reply["emit"] = [{"topic": data["emit_to"], "data": {"from": ev["id"]}}]
                    body, status = json.dumps(reply).encode(), 200
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        hook = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hook)
        threading.Thread(target=hook.serve_forever, daemon=True).start()
        self.addCleanup(hook.server_close)
        self.addCleanup(hook.shutdown)
        return f"http://127.0.0.1:{hook.server_address[1]}/hook", seen

    def test_connections_are_kept_and_an_idle_close_loses_nothing(self):
        # An endpoint that keeps connections alive gets one per request worker, not
        # one per delivery; one that drops a kept connection between requests (an
        # idle timeout) costs no attempt: the request goes again on a new connection.
        ports = set()
        url, seen = self.hook_server(keep_alive=True, connections=ports)
        t = topic("keep")
        srv = self.agent_server([{"name": "hook", "topics": [t], "kind": "http", "url": url,
                                  "max_in_flight": 1, "max_retries": 0}])
        evs = self.publish_ok(srv, t, [{"data": {"n": i}} for i in range(30)])
        self.wait_state(srv, [e["id"] for e in evs], "hook", "acked")
        self.assertEqual(len(ports), 1, ports)
        self.assertEqual(sorted(seen), sorted(e["id"] for e in evs))

        ports2 = set()
        url2, seen2 = self.hook_server(keep_alive=True, close_every=3, connections=ports2)
        t2 = topic("dropped")
        srv2 = self.agent_server([{"name": "hook", "topics": [t2], "kind": "http", "url": url2,
                                   "max_in_flight": 1, "max_retries": 0}])
        evs2 = []
        for i in range(12):  # one at a time, so each finds the connection the last one left
            evs2 += self.publish_ok(srv2, t2, [{"data": {"n": i}}])
            self.wait_state(srv2, [evs2[-1]["id"]], "hook", "acked")
            time.sleep(0.02)
        states = self.wait_state(srv2, [e["id"] for e in evs2], "hook", "acked")
        # max_retries 0: a failed attempt would have dead-lettered it; none took two
        self.assertTrue(all(states[e["id"]]["attempts"] <= 1 for e in evs2), states)
        self.assertEqual(sorted(seen2), sorted(e["id"] for e in evs2))  # each once
        self.assertEqual(len(ports2), 4, ports2)  # a new connection after each drop
        self.assertEqual(self.dlq(srv2, agent="hook")["count"], 0)

    def test_huge_and_slow_answers_are_bounded(self):
        url, seen = self.hook_server()
        t = topic("bighook")
        srv = self.agent_server([{"name": "hook", "topics": [t], "kind": "http", "url": url,
                                  "max_retries": 1, "timeout": "2s",
                                  "backoff": {"initial": "20ms", "max": "50ms"}}])
        base = rss_kb(srv.proc.pid)
        huge, drip = self.publish_ok(srv, t, [{"data": {"huge_mb": 40}},
                                              {"data": {"drip_mb": 10}}])
        peak = base
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            peak = max(peak, rss_kb(srv.proc.pid))
            states = [self.deliveries(srv, e["id"])["hook"]["state"] for e in (huge, drip)]
            if states == ["dead_lettered"] * 2:
                break
            time.sleep(0.05)
        dead = self.wait_state(srv, [huge["id"], drip["id"]], "hook", "dead_lettered", 30.0)
        self.assertEqual(dead[huge["id"]]["error"], "the answer's body exceeds 16777216 bytes")
        self.assertEqual(dead[drip["id"]]["error"], "timed out after 2000 ms")
        # At most 16 MiB of a body is kept per answer (two attempts each).
        # Beast 1.74 read a 40 MB answer whole when its first bytes came with
        # the header, and it was acked (3 runs in 10): the header is read alone.
        if RSS_BOUNDS_CHECKED:
            self.assertLess(peak - base, 80 * 1024, f"RSS grew from {base} to {peak} kB")
        self.assertHealthy(srv)

    def test_2xx_acks_with_the_body_as_result_and_errors_go_to_the_dlq(self):
        url, seen = self.hook_server()
        t, follow = topic("hook"), topic("hooked")
        srv = self.agent_server([{"name": "hook", "topics": [t], "kind": "http", "url": url,
                                  "max_retries": 1, "timeout": "300ms",
                                  "backoff": {"initial": "20ms", "max": "50ms"}},
                                 builtin("sink", [follow], "echo")])
        ok, refused, slow = self.publish_ok(srv, t, [
            {"data": {"emit_to": follow}}, {"data": {"status": 500}}, {"data": {"sleep": 1}}])
        d = self.wait_state(srv, [ok["id"]], "hook", "acked")[ok["id"]]
        self.assertEqual(d["result"], {"seen": ok["id"]})
        dead = self.wait_state(srv, [refused["id"], slow["id"]], "hook", "dead_lettered")
        self.assertEqual(dead[refused["id"]]["attempts"], 2)
        self.assertEqual(dead[refused["id"]]["error"], "HTTP 500: refused")
        self.assertIn("timed out", dead[slow["id"]]["error"])
        self.assertEqual(seen.count(refused["id"]), 2)

        def emitted():
            if follow not in srv.topics():
                return None
            evs = [e for p in range(srv.topics()[follow]["partitions"])
                   for e in srv.read_partition(follow, p)]
            return evs if evs else None
        child = self.wait_for(emitted, what="the emitted event")[0]
        self.assertEqual(child["causation_id"], ok["id"])
        self.assertEqual(child["data"], {"from": ok["id"]})

    def test_an_endpoint_that_never_answers_holds_up_nothing(self):
        # Every attempt of the first event hangs until the test ends; with
        # max_in_flight 2 there are two request workers, and both attempts
        # must let go of theirs at the timeout, or the other events starve.
        url, _ = self.hook_server()
        t = topic("hookhang")
        srv = self.agent_server([{"name": "hook", "topics": [t], "kind": "http", "url": url,
                                  "max_retries": 1, "timeout": "500ms", "max_in_flight": 2,
                                  "backoff": {"initial": "20ms", "max": "50ms"}}])
        [hung] = self.publish_ok(srv, t, [{"data": {"sleep": 60}}])
        self.wait_state(srv, [hung["id"]], "hook", "dead_lettered")
        fine = self.publish_ok(srv, t, [{"data": {"n": i}} for i in range(6)])
        self.wait_state(srv, [e["id"] for e in fine], "hook", "acked")
        self.assertEqual(len(self.dlq(srv, agent="hook")["entries"]), 1)

    def test_a_stop_does_not_wait_for_a_hanging_endpoint(self):
        url, _ = self.hook_server()
        t = topic("hookstop")
        srv = self.agent_server([{"name": "hook", "topics": [t], "kind": "http", "url": url,
                                  "timeout": "60s"}])
        self.publish_ok(srv, t, [{"data": {"sleep": 60}}, {"data": {"sleep": 60}}])
        self.wait_for(lambda: self.group(srv, t, "hook")["pending"] == 2 or None,
                      what="both deliveries in flight")
        started = time.monotonic()
        self.assertEqual(srv.stop(), 0)
        self.assertLess(time.monotonic() - started, 10)  # not the agent's 60 s timeout


class CountersTest(AgentTestCase):

    def test_fail_once_then_succeed_counts_two_received_one_failed_one_processed(self):
        t = topic("once")
        srv = self.agent_server([process("flaky", [t], [sys.executable, ECHO_AGENT],
                                         max_retries=3,
                                         backoff={"initial": "20ms", "max": "100ms"})])
        ev = self.publish_ok(srv, t, {"data": {"fail_attempts": 1}})[0]
        d = self.wait_state(srv, [ev["id"]], "flaky", "acked")[ev["id"]]
        self.assertEqual(d["attempts"], 2)
        self.assertEqual(self.dlq(srv, agent="flaky")["count"], 0)
        expected = {"agent": "flaky", "topic": t, "received": 2, "failed": 1, "processed": 1,
                    "retried": 1, "dead_lettered": 0, "success_rate": 50.0}

        def row():
            r = srv.get(f"/v1/metrics?agent=flaky&topic={t}")
            self.assertEqual(r.status, 200, r)
            rows = r.json()["metrics"]
            self.assertEqual(len(rows), 1, rows)
            return rows[0]
        got = row()
        self.assertEqual({k: got[k] for k in expected}, expected)
        self.assertGreater(got["p99_ms"], 0)
        # All-time: the counters survive a restart.
        self.stop_ok(srv)
        srv.start()
        got = row()
        self.assertEqual({k: got[k] for k in expected}, expected)


# 6 -----------------------------------------------------------------------------

class PauseTest(AgentTestCase):

    def test_pause_keeps_backlog_and_resume_delivers_it(self):
        t = topic("pause")
        srv = self.agent_server([builtin("e", [t], "echo")])
        r = srv.post("/v1/agents/e/pause")
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json()["state"], "paused")
        self.assertEqual(self.agent(srv, "e")["state"], "paused")
        n = 6
        pub = self.publish_ok(srv, t, [{"data": {"i": i}, "key": f"k{i}"} for i in range(n)])
        self.wait_for(lambda: self.group(srv, t, "e")["lag"] == n, what=f"lag {n}")
        time.sleep(0.3)  # give a wrong delivery a chance to happen
        g = self.group(srv, t, "e")
        self.assertEqual(g["lag"], n, g)
        self.assertEqual(sum(p["lag"] for p in g["partitions"]), n, g)
        for p in pub:
            d = self.deliveries(srv, p["id"])["e"]
            self.assertEqual(d["state"], "pending", d)
            self.assertIsNone(d["result"], d)
        c = self.cli(srv, "bus", "groups", t, "--json")
        self.assertEqual(c.returncode, 0, c)
        self.assertEqual([g["lag"] for g in json.loads(c.stdout)["groups"]], [n])
        # Resume through the CLI.
        c = self.cli(srv, "agent", "resume", "e")
        self.assertEqual(c.returncode, 0, c)
        self.assertIn("running", c.stdout)
        acked = self.wait_state(srv, [p["id"] for p in pub], "e", "acked")
        for i, p in enumerate(pub):
            self.assertEqual(acked[p["id"]]["result"], {"i": i})
        g = self.wait_for(lambda: (lambda g: g if g["lag"] == 0 and g["pending"] == 0 else None)(
            self.group(srv, t, "e")), what="lag 0")
        self.assertEqual(self.agent(srv, "e")["state"], "running")

    def test_pause_during_retries_then_resume_finishes_them(self):
        t = topic("pause")
        srv = self.agent_server([builtin("bad", [t], "fail", max_retries=3,
                                         backoff={"initial": "100ms", "max": "100ms"})])
        pub = self.publish_ok(srv, t, [{"data": i, "key": "a"} for i in range(3)])
        ids = [p["id"] for p in pub]
        self.wait_state(srv, ids, "bad", "retrying")
        self.assertEqual(srv.post("/v1/agents/bad/pause").json()["state"], "paused")
        time.sleep(0.4)
        before = {i: self.deliveries(srv, i)["bad"] for i in ids}
        time.sleep(0.3)
        for i in ids:
            d = self.deliveries(srv, i)["bad"]
            self.assertEqual(d["state"], "retrying", d)
            self.assertEqual(d["attempts"], before[i]["attempts"], d)  # no attempts while paused
            self.assertLess(d["attempts"], 4, d)
        self.assertEqual(srv.post("/v1/agents/bad/resume").json()["state"], "running")
        for d in self.wait_state(srv, ids, "bad", "dead_lettered").values():
            self.assertEqual((d["attempts"], d["error"]), (4, FAIL_ERROR), d)
        self.assertEqual(self.dlq(srv, agent="bad")["count"], 3)

    # BUG: while an agent is paused, deliveries whose retry timer fired are no longer
    # counted in groups "pending" (it drops to 0) although GET /v1/events still says
    # "retrying": the retry handler (actors/partition_actor.cpp ~661-664) moves the record
    # to ready and decrements waiting_retry, dispatch() returns early when paused
    # (partition_actor.cpp:223), and groups() counts only in_flight + waiting_retry
    # (actors/node.cpp ~507).
    def test_paused_retrying_deliveries_stay_pending_in_groups(self):
        t = topic("pause")
        srv = self.agent_server([builtin("bad", [t], "fail", max_retries=1000,
                                         backoff={"initial": "50ms", "max": "50ms"})])
        pub = self.publish_ok(srv, t, [{"data": i, "key": "a"} for i in range(3)])
        self.wait_state(srv, [p["id"] for p in pub], "bad", "retrying")
        self.assertEqual(self.group(srv, t, "bad")["pending"], 3)
        srv.post("/v1/agents/bad/pause")
        time.sleep(0.3)
        for p in pub:
            self.assertEqual(self.deliveries(srv, p["id"])["bad"]["state"], "retrying")
        g = self.group(srv, t, "bad")
        self.assertEqual((g["pending"], g["lag"]), (3, 3), g)

    def test_dlq_retries_to_a_paused_agent_are_pending_in_groups(self):
        t = topic("pausedlq")
        srv = self.agent_server([builtin("bad", [t], "fail", max_retries=0)])
        pub = self.publish_ok(srv, t, [{"data": i} for i in range(4)])
        self.wait_state(srv, [p["id"] for p in pub], "bad", "dead_lettered")
        self.assertEqual(self.wait_for(lambda: (lambda g: g if g["lag"] == 0 else None)(
            self.group(srv, t, "bad")), what="the cursor past the DLQ entries")["pending"], 0)
        srv.post("/v1/agents/bad/pause")
        r = srv.post("/v1/dlq/retry-all?agent=bad")
        self.assertEqual((r.status, r.json()["retried"]), (200, 4), r)
        # Out of the DLQ and not yet sent: pending, in groups and in bus stats.
        time.sleep(0.3)
        g = self.group(srv, t, "bad")
        self.assertEqual(g["pending"], 4, g)
        self.assertEqual(sum(p["redelivering"] for p in g["partitions"]), 4, g)
        stats = srv.get("/v1/bus/stats").json()
        self.assertGreaterEqual(stats["pending"], 4, stats)
        # Resumed: sent, failed, back in the DLQ; nothing pending any more.
        srv.post("/v1/agents/bad/resume")
        self.wait_for(lambda: len(self.dlq(srv, agent="bad")["entries"]) == 4 or None,
                      what="the 4 events back in the DLQ")
        g = self.wait_for(lambda: (lambda g: g if g["pending"] == 0 else None)(
            self.group(srv, t, "bad")), what="nothing pending")
        self.assertEqual(sum(p["redelivering"] for p in g["partitions"]), 0, g)

    def test_pause_unknown_agent_is_404(self):
        srv = self.agent_server([builtin("e", ["x"], "noop")])
        self.assertProblem(srv.post("/v1/agents/nobody/pause"), 404)
        self.assertProblem(srv.get("/v1/agents/nobody"), 404)


# 7 -----------------------------------------------------------------------------

class LaneFeedTest(AgentTestCase):
    """Publishes to a partition that groups read are appended by the HTTP threads (the
    publish lane), which hand the appended events to the partition's actor for
    delivery (docs/architecture.md, "The publish lane")."""

    def test_a_request_larger_than_the_hand_off_is_delivered_whole(self):
        # The hand-off keeps the last 4,096 events of what the actor has not taken;
        # a request of 9,000 overflows it, and the group must read what fell out of
        # it from the log: every event processed once, none skipped.
        t = topic("bigfeed")
        srv = self.new_server(config={"agents": [builtin("n", [t], "noop")],
                                      "topics": {"defaults": {"partitions": 1}},
                                      "http": {"max_events_per_request": 10000}})
        self.publish_ok(srv, t, [{"data": i} for i in range(10)])

        def processed():
            r = srv.get(f"/v1/metrics?agent=n&topic={t}")
            self.assertEqual(r.status, 200, r)
            rows = r.json()["metrics"]
            return rows[0]["processed"] if rows else 0
        self.wait_for(lambda: processed() == 10, what="the first 10 processed")
        for _ in range(2):
            self.publish_ok(srv, t, [{"data": i} for i in range(9000)])
        self.wait_for(lambda: self.group(srv, t, "n")["partitions"][0]["cursor"] == 18010,
                      what="the cursor at the end")
        self.assertEqual(processed(), 18010)
        g = self.group(srv, t, "n")
        self.assertEqual((g["pending"], g["lag"]), (0, 0), g)


class GroupLongPollTest(AgentTestCase):
    """GET /v1/topics/{t}/groups?index=&wait_ms=: answered once a cursor moves past the
    index of an earlier answer, or after wait_ms (docs/api.md)."""

    def test_a_wait_ends_when_a_cursor_moves_or_the_time_is_up(self):
        t = topic("longpoll")
        srv = self.agent_server([builtin("n", [t], "noop")])
        self.publish_ok(srv, t, [{"data": 1}])
        def acked(n):
            r = srv.get(f"/v1/topics/{t}/groups")
            moved = sum(p["cursor"] for p in r.json()["groups"][0]["partitions"]) == n
            # The partition shows the cursor, then counts the move in the
            # index: a read between the two sees the cursor with the old index.
            return r if moved and r.json()["index"] >= 1 else None
        first = self.wait_for(lambda: acked(1), 15.0, "the first ack")
        index = first.json()["index"]
        self.assertEqual(first.headers.get("x-nerve-index"), str(index))
        self.assertGreaterEqual(index, 1)
        def wait(idx, wait_ms):
            started = time.monotonic()
            r = srv.get(f"/v1/topics/{t}/groups?index={idx}&wait_ms={wait_ms}")
            self.assertEqual(r.status, 200, r)
            return r.json(), time.monotonic() - started

        # Nothing moves: answered after the wait, with the same index.
        body, waited = wait(index, 400)
        self.assertEqual(body["index"], index)
        self.assertTrue(0.35 <= waited < 5.0, waited)
        # An index that is not the current one answers at once.
        body, waited = wait(index + 1000, 10000)
        self.assertEqual(body["index"], index)
        self.assertLess(waited, 2.0)
        # A publish during the wait ends it with the new cursor.
        threading.Timer(0.3, lambda: srv.publish(t, [{"data": 2}])).start()
        body, waited = wait(index, 20000)
        self.assertGreater(body["index"], index)
        self.assertTrue(0.25 <= waited < 10.0, waited)
        self.assertEqual(sum(p["cursor"] for p in body["groups"][0]["partitions"]), 2, body)
        # The waiters' thread has nobody left to wait for: a new wait on which
        # nothing moves still ends after its wait_ms (a moment apart, the index
        # is settled).
        def settled():
            a = srv.get(f"/v1/topics/{t}/groups").json()["index"]
            time.sleep(0.2)
            b = srv.get(f"/v1/topics/{t}/groups").json()["index"]
            return b if a == b else None
        now = self.wait_for(settled, 10.0, "a settled index")
        body, waited = wait(now, 400)
        self.assertEqual(body["index"], now)
        self.assertTrue(0.35 <= waited < 5.0, waited)

    def test_bad_waits_are_refused(self):
        t = topic("longpoll")
        srv = self.agent_server([builtin("n", [t], "noop")])
        self.publish_ok(srv, t, [{"data": 1}])
        for query, part in [("wait_ms=100", "needs index"),
                            ("index=1&wait_ms=60001", "wait_ms=60001"),
                            ("index=-1&wait_ms=10", "index=-1"),
                            ("index=1&wait=10", "wait")]:
            self.assertProblem(srv.get(f"/v1/topics/{t}/groups?{query}"), 400, part)
        self.assertProblem(srv.get("/v1/topics/none-such/groups?index=0&wait_ms=5000"), 404)

    def test_shutdown_answers_a_waiting_request(self):
        t = topic("longpoll")
        srv = self.agent_server([builtin("n", [t], "noop")])
        self.publish_ok(srv, t, [{"data": 1}])
        index = srv.get(f"/v1/topics/{t}/groups").json()["index"]
        got = {}

        def wait():
            got["r"] = srv.get(f"/v1/topics/{t}/groups?index={index}&wait_ms=60000", timeout=30)

        waiter = threading.Thread(target=wait)
        waiter.start()
        time.sleep(0.3)
        started = time.monotonic()
        self.assertEqual(srv.stop(), 0)
        self.assertLess(time.monotonic() - started, 10.0)
        waiter.join(30)
        self.assertEqual(got["r"].status, 200, got)


class OrderedByKeyTest(AgentTestCase):

    def test_per_key_order_with_four_instances(self):
        t = topic("ordered")
        srv = self.agent_server([], start=False)
        command, log = self.script_agent(srv, ORDERED_AGENT, "ord")
        srv.write_config({"agents": [process("ord", [t], command, instances=4, ordered_by="key",
                                             max_in_flight=8)]})
        srv.start()
        self.wait_for(lambda: all(i["state"] == "running" and i["pid"]
                                  for i in self.agent(srv, "ord")["instances"]), what="running")
        keys, per_key = [f"key-{k}" for k in range(6)], 15
        ids = []
        for batch in range(3):
            evs = [{"key": k, "data": {"seq": s}} for s in range(batch * 5, batch * 5 + 5)
                   for k in keys]
            ids += [p["id"] for p in self.publish_ok(srv, t, evs)]
        self.assertEqual(len(ids), len(keys) * per_key)
        self.wait_state(srv, ids, "ord", "acked", timeout=30)
        seen = {}
        with open(log) as f:
            for line in f:
                k, s = line.strip().split(",")
                seen.setdefault(k, []).append(int(s))
        self.assertEqual(set(seen), set(keys))
        for k in keys:
            self.assertEqual(seen[k], list(range(per_key)), k)


# 8 -----------------------------------------------------------------------------

class StartPositionTest(AgentTestCase):

    def test_agent_added_later_sees_old_events_only_with_earliest(self):
        t = topic("late")
        srv = self.agent_server([builtin("first", [t], "noop")])
        old = self.publish_ok(srv, t, [{"data": {"old": i}} for i in range(4)])
        self.wait_state(srv, [p["id"] for p in old], "first", "acked")
        self.stop_ok(srv)
        srv.write_config({"agents": [builtin("first", [t], "noop"),
                                     builtin("late", [t], "echo"),
                                     builtin("early", [t], "echo", start="earliest")]})
        srv.start()
        new = self.publish_ok(srv, t, [{"data": {"new": i}} for i in range(3)])
        allp = old + new
        acked = self.wait_state(srv, [p["id"] for p in allp], "early", "acked")
        for p, d in zip(allp, [{"old": i} for i in range(4)] + [{"new": i} for i in range(3)]):
            self.assertEqual(acked[p["id"]]["result"], d)
        acked = self.wait_state(srv, [p["id"] for p in new], "late", "acked")
        for i, p in enumerate(new):
            self.assertEqual(acked[p["id"]]["result"], {"new": i})
        # The late agent never handled the old events: no result stored for them.
        for p in old:
            d = self.deliveries(srv, p["id"]).get("late")
            if d is not None:
                self.assertIsNone(d["result"], d)
        for agent in ("late", "early"):
            g = self.group(srv, t, agent)
            self.assertEqual((g["pending"], g["lag"]), (0, 0), g)
        self.assertEqual(self.agent(srv, "late")["config"]["start"], "latest")
        self.assertEqual(self.agent(srv, "early")["config"]["start"], "earliest")

    # BUG: GET /v1/events/{id} reports "acked" for an agent that started at "latest"
    # after the event existed and never received it (actors/node.cpp ~440: any offset
    # below the agent's cursor counts as acked). Expected "skipped" (or no delivery).
    def test_undelivered_old_event_is_not_reported_acked(self):
        t = topic("late")
        srv = self.agent_server([builtin("first", [t], "noop")])
        [old] = self.publish_ok(srv, t, [{"data": {"old": 1}}])
        self.wait_state(srv, [old["id"]], "first", "acked")
        self.stop_ok(srv)
        srv.write_config({"agents": [builtin("first", [t], "noop"), builtin("late", [t], "echo")]})
        srv.start()
        d = self.deliveries(srv, old["id"]).get("late")
        self.assertTrue(d is None or d["state"] != "acked", d)


# 9 -----------------------------------------------------------------------------

class RestartTest(AgentTestCase):

    def test_dlq_and_acked_state_survive_restart_without_redelivery(self):
        t = topic("restart")
        srv = self.agent_server([], start=False)
        command, log = self.script_agent(srv, ORDERED_AGENT, "logger")
        srv.write_config({"agents": [
            builtin("e", [t], "echo"),
            builtin("bad", [t], "fail", max_retries=2, backoff=FAST),
            process("logger", [t], command)]})
        srv.start()
        pub = self.publish_ok(srv, t, [{"data": {"seq": i}, "key": f"k{i}"} for i in range(5)])
        ids = [p["id"] for p in pub]
        acked = self.wait_state(srv, ids, "e", "acked")
        self.wait_state(srv, ids, "logger", "acked")
        self.wait_state(srv, ids, "bad", "dead_lettered")
        dlq_before = self.dlq(srv)
        self.assertEqual(dlq_before["count"], 5)
        groups_before = {a: self.group(srv, t, a) for a in ("e", "bad", "logger")}
        self.stop_ok(srv)
        srv.start()
        time.sleep(0.5)  # room for a wrong redelivery to show
        self.assertEqual(self.dlq(srv), dlq_before)
        for i in ids:
            d = self.deliveries(srv, i)
            self.assertEqual(d["e"]["state"], "acked", d)
            self.assertEqual(d["e"]["result"], acked[i]["result"])
            self.assertEqual((d["bad"]["state"], d["bad"]["attempts"], d["bad"]["error"]),
                             ("dead_lettered", 3, FAIL_ERROR), d)
            self.assertEqual(d["logger"]["state"], "acked", d)
        self.assert_groups_kept(srv, t, groups_before)
        # The process agent handled each event exactly once across the restart.
        with open(log) as f:
            self.assertEqual(sorted(f.read().split()), sorted(f"k{i},{i}" for i in range(5)))
        # New events after the restart still flow.
        [p] = self.publish_ok(srv, t, [{"data": {"seq": 9}, "key": "after"}])
        self.assertEqual(self.wait_state(srv, [p["id"]], "e", "acked")[p["id"]]["result"],
                         {"seq": 9})
        self.wait_state(srv, [p["id"]], "bad", "dead_lettered")
        self.wait_state(srv, [p["id"]], "logger", "acked")
        self.assertEqual(self.dlq(srv)["count"], 6)
        with open(log) as f:
            self.assertEqual(len(f.read().split()), 6)

    def test_acked_progress_survives_kill_9_without_redelivery(self):
        # Progress (the cursor) waits a few milliseconds for an append to
        # carry it; with no publish after the acks it is written on its own,
        # so a kill -9 a moment later delivers nothing again.
        t = topic("progress")
        srv = self.agent_server([], start=False)
        # Acks without a result: a result would be written at once, and the
        # cursors with it.
        source = ORDERED_AGENT.replace(',\n                                 "result": ev["data"]}',
                                       '}')
        self.assertNotIn('"result"', source)
        command, log = self.script_agent(srv, source, "logger")
        srv.write_config({"agents": [builtin("n", [t], "noop"), process("logger", [t], command)]})
        srv.start()
        pub = self.publish_ok(srv, t, [{"data": {"seq": i}, "key": f"k{i}"} for i in range(8)])
        ids = [p["id"] for p in pub]
        # Once the publish is answered, each group counts the events as lag
        # or passed them already (it once showed lag 0 with cursors 0 for a
        # moment after the 201).
        for a in ("n", "logger"):
            g = self.group(srv, t, a)
            self.assertEqual(sum(p["cursor"] + p["lag"] for p in g["partitions"]), 8, g)

        # The groups show the cursors in memory (an event's view reads the
        # stored ones): wait until both have passed every event.
        def all_acked():
            groups = {a: self.group(srv, t, a) for a in ("n", "logger")}
            done = all(sum(p["cursor"] for p in g["partitions"]) == 8 for g in groups.values())
            return groups if done else None
        before = self.wait_for(all_acked, 15.0, "both agents acked every event")
        time.sleep(1.0)  # the progress waits up to 5 ms for an append; far more on a busy CI
        srv.kill()
        srv.start()
        time.sleep(0.5)  # room for a wrong redelivery to show
        self.assert_groups_kept(srv, t, before)
        with open(log) as f:
            self.assertEqual(sorted(f.read().split()), sorted(f"k{i},{i}" for i in range(8)))
        for i in ids:
            self.assertEqual(self.deliveries(srv, i)["n"]["state"], "acked")

    def test_last_delivered_offset_survives_restart(self):
        t = topic("restart")
        srv = self.agent_server([builtin("e", [t], "echo")])
        pub = self.publish_ok(srv, t, [{"data": i, "key": "same"} for i in range(3)])
        self.wait_state(srv, [p["id"] for p in pub], "e", "acked")
        before = self.group(srv, t, "e")
        self.assertEqual(before["last_delivered_offset"], 2, before)
        srv.restart()
        after = self.group(srv, t, "e")
        self.assertEqual(after["last_delivered_offset"], 2, after)
        self.assertEqual(after["partitions"], before["partitions"])

    def test_dlq_retry_after_restart(self):
        t = topic("restart")
        srv = self.agent_server([builtin("bad", [t], "fail", max_retries=1, backoff=FAST)])
        [p] = self.publish_ok(srv, t, [{"data": 1}])
        self.wait_state(srv, [p["id"]], "bad", "dead_lettered")
        [entry] = self.dlq(srv)["entries"]
        srv.restart()
        r = srv.get(f"/v1/dlq/{entry['id']}")
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json(), entry)
        r = srv.post(f"/v1/dlq/{entry['id']}/retry")
        self.assertEqual(r.status, 200, r)

        def back():
            es = self.dlq(srv)["entries"]
            return es if len(es) == 1 and es[0]["last_failed_at"] > entry["last_failed_at"] else None
        [again] = self.wait_for(back, what="entry back in the DLQ")
        self.assertEqual((again["attempts"], again["error"], again["event"]["id"]),
                         (2, FAIL_ERROR, p["id"]))

SLOW_EMITTER = r'''
import json, sys, time
out = open(sys.argv[1], "a", buffering=1)
for line in sys.stdin:
    msg = json.loads(line)
    if msg.get("type") != "event":
        continue
    ev = msg["event"]
    time.sleep(0.02)
    out.write(ev["id"] + "\n")
    sys.stdout.write(json.dumps({"type": "ack", "delivery": msg["delivery"], "result": ev["data"],
                                 "emit": [{"topic": sys.argv[2], "data": ev["data"]}]}) + "\n")
    sys.stdout.flush()
'''


class CrashTest(AgentTestCase):

    def test_kill_9_of_nerve_mid_delivery_loses_nothing_and_emits_once(self):
        t, out_t = topic("crash"), topic("crashout")
        srv = self.agent_server([], start=False)
        command, log = self.script_agent(srv, SLOW_EMITTER, "slow")
        srv.write_config({"agents": [process("slow", [t], command + [out_t], max_in_flight=2,
                                             instances=2)]})
        srv.start()
        pub = self.publish_ok(srv, t, [{"data": {"n": i}, "key": f"k{i % 4}"} for i in range(40)])
        ids = [p["id"] for p in pub]
        # Crash once some, but not all, events were handled.
        def lines():
            if not os.path.exists(log):
                return 0
            with open(log) as f:
                return len(f.read().split())
        self.wait_for(lambda: lines() >= 5, what="some events handled")
        srv.kill()
        with open(log) as f:
            handled_before = len(f.read().split())
        self.assertLess(handled_before, 40, "too fast to crash mid-delivery")
        srv.start()
        acked = self.wait_state(srv, ids, "slow", "acked", timeout=30)
        for i, p in enumerate(pub):
            self.assertEqual(acked[p["id"]]["result"], {"n": i})
        with open(log) as f:
            handled = f.read().split()
        self.assertEqual(set(handled), set(ids))  # at least once each
        self.assertEqual(self.dlq(srv)["count"], 0)
        g = self.group(srv, t, "slow")
        self.assertEqual((g["pending"], g["lag"]), (0, 0), g)
        # Exactly one emitted event per parent, even for parents handled twice.
        emitted = [e for p in range(srv.topics()[out_t]["partitions"])
                   for e in srv.read_partition(out_t, p)]
        self.assertEqual(sorted(e["causation_id"] for e in emitted), sorted(ids))


if __name__ == "__main__":
    unittest.main()
