"""Black-box tests of replay (CONTRACT.md sections 6 and 7): a window of append
time [from, to) selects exactly its events in (topic, partition, offset) order,
the same across calls and restarts; dry-run moves nothing; redeliver reaches the
agents marked "replay" without touching live positions or live counters; a new
agent named in a replay gets the window's matching events; cancel, kill -9 and
resume; failures under a replay; bad input."""

import calendar
import json
import os
import sys
import time
import unittest
import urllib.parse

from test_agents import FAST, AgentTestCase, builtin, process, topic

# A process agent that appends every message it receives to a file (one JSON
# line each, written before it answers) and acks it. argv: file, seconds to
# sleep before answering a replayed message, "nack-replays" to refuse them,
# "nack-once" to refuse the first attempt of replayed events whose data has
# "fail_once".
RECORDER = r'''
import json, sys, time
out = open(sys.argv[1], "a", buffering=1)
delay = float(sys.argv[2]) if len(sys.argv) > 2 else 0.0
mode = sys.argv[3] if len(sys.argv) > 3 else ""
for line in sys.stdin:
    msg = json.loads(line)
    if msg.get("type") != "event":
        continue
    out.write(json.dumps(msg) + "\n")
    replayed = "replay" in msg["event"]
    if replayed and delay:
        time.sleep(delay)
    data = msg["event"].get("data")
    once = mode == "nack-once" and msg["attempt"] == 1 and isinstance(data, dict) \
        and data.get("fail_once")
    live_once = mode == "live-retry-no-result" and not replayed and msg["attempt"] == 1 \
        and isinstance(data, dict) and data.get("fail_once")
    if (replayed and (mode == "nack-replays" or once)) or live_once:
        answer = {"type": "nack", "delivery": msg["delivery"], "error": "no replays here"}
    elif mode == "live-retry-no-result":
        answer = {"type": "ack", "delivery": msg["delivery"]}
    else:
        answer = {"type": "ack", "delivery": msg["delivery"], "result": msg["event"].get("data")}
    sys.stdout.write(json.dumps(answer) + "\n")
    sys.stdout.flush()
'''


def parse_us(text):
    """RFC 3339 UTC text (as nerve writes it) -> microseconds since the epoch."""
    assert text.endswith("Z"), text
    secs = calendar.timegm(time.strptime(text[:19], "%Y-%m-%dT%H:%M:%S"))
    frac = text[19:-1]
    us = int((frac[1:] + "000000")[:6]) if frac else 0
    return secs * 1000000 + us


def format_us(us):
    secs, frac = divmod(us, 1000000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + ".%06dZ" % frac


def earliest(published):
    """The earliest append time of a publish answer's events: the events of one
    request are appended per partition, so the first is not always earliest."""
    return min(published, key=lambda e: parse_us(e["time"]))["time"]


def latest_us(published):
    return max(parse_us(e["time"]) for e in published)


def order_key(e):
    return (e["topic"], e["partition"], e["offset"])


class ReplayTestCase(AgentTestCase):

    def recorder(self, srv, name, topics, log_name, delay=0.0, mode="", **kw):
        """A process agent config recording into workdir/log_name."""
        script = os.path.join(srv.workdir, "recorder.py")
        if not os.path.exists(script):
            with open(script, "w") as f:
                f.write(RECORDER)
        log = os.path.join(srv.workdir, log_name)
        cmd = [sys.executable, script, log, str(delay)]
        if mode:
            cmd.append(mode)
        return process(name, topics, cmd, **kw)

    def recorded(self, srv, log_name):
        """The messages the recorder wrote, in order."""
        path = os.path.join(srv.workdir, log_name)
        if not os.path.exists(path):
            return []
        with open(path) as f:
            lines = f.read().split("\n")
        # The last line may be half written while the agent runs.
        return [json.loads(line) for line in lines[:-1] if line]

    def replayed(self, srv, log_name, replay_id):
        return [m for m in self.recorded(srv, log_name) if m["event"].get("replay") == replay_id]

    def live(self, srv, log_name):
        return [m for m in self.recorded(srv, log_name) if "replay" not in m["event"]]

    def replay(self, srv, body):
        r = srv.post("/v1/replays", body)
        self.assertEqual(r.status, 202, r)
        v = r.json()
        self.assertRegex(v["id"], r"^[0-9a-f-]{36}$", v)
        self.assertIn(v["state"], ("running", "done"), v)
        return v

    def view(self, srv, replay_id):
        r = srv.get(f"/v1/replays/{replay_id}")
        self.assertEqual(r.status, 200, r)
        return r.json()

    def wait_replay(self, srv, replay_id, state="done", timeout=30.0):
        def check():
            v = self.view(srv, replay_id)
            self.assertNotIn(v["state"], {"done", "failed", "cancelled"} - {state}, v)
            return v if v["state"] == state else None
        v = self.wait_for(check, timeout, f"replay {replay_id} {state}")
        self.assertIsNotNone(v["finished_at"], v)
        return v

    def history(self, srv, replay_id, agent, limit=None):
        """Every entry of agent's history, paging with next_cursor."""
        entries = []
        cursor = None
        pages = 0
        while True:
            q = {"agent": agent}
            if limit is not None:
                q["limit"] = limit
            if cursor is not None:
                q["cursor"] = cursor
            r = srv.get(f"/v1/replays/{replay_id}/history?" + urllib.parse.urlencode(q))
            self.assertEqual(r.status, 200, r)
            page = r.json()
            self.assertEqual(page["agent"], agent)
            if limit is not None:
                self.assertLessEqual(len(page["entries"]), limit, page)
            entries.extend(page["entries"])
            pages += 1
            self.assertLess(pages, 10000, "history paging does not end")
            cursor = page["next_cursor"]
            if cursor is None:
                return entries
            self.assertIsInstance(cursor, str)

    def stored(self, srv, topics):
        """Every stored event of these topics, in (topic, partition, offset) order."""
        info = srv.topics()
        out = []
        for t in sorted(topics):
            for p in range(info[t]["partitions"]):
                out.extend(srv.read_partition(t, p))
        return sorted(out, key=order_key)

    def in_window(self, events, from_us, to_us):
        return [e for e in events if from_us <= parse_us(e["time"]) < to_us]

    def settled(self, srv, topics, agents):
        """Waits until every group of these agents has seen every stored event
        (the groups view may lag a 201 briefly), has lag 0 and nothing pending."""
        for t in topics:
            stored = srv.topics()[t]["events"]
            for a in agents:
                self.wait_for(lambda: (lambda g: g["lag"] == 0 and g["pending"] == 0 and sum(
                    p["end_offset"] for p in g["partitions"]) == stored)(self.group(srv, t, a)),
                    what=f"{a} on {t} settled")

    def groups(self, srv, topics):
        out = {}
        for t in topics:
            r = srv.get(f"/v1/topics/{t}/groups")
            self.assertEqual(r.status, 200, r)
            out[t] = r.json()
        return out

    def metrics(self, srv):
        r = srv.get("/v1/metrics")
        self.assertEqual(r.status, 200, r)
        return sorted(r.json()["metrics"], key=lambda m: (m["agent"], m["topic"]))

    def ids(self, events):
        return [e["id"] for e in events]


# -- selection -------------------------------------------------------------------

class WindowTest(ReplayTestCase):
    """The window [from, to): exactly its events, in order, stable."""

    def test_window_is_half_open_ordered_and_stable_across_calls_and_restart(self):
        prefix = topic("win")
        ta, tb = prefix + ".a", prefix + ".b"
        srv = self.agent_server([builtin("e", [prefix + ".*"], "echo")])
        published = []
        for batch in range(6):
            for t in (ta, tb):
                published.append(self.publish_ok(srv, t, [
                    {"data": {"b": batch, "i": i}, "key": f"k{i}"} for i in range(5)]))
            time.sleep(0.03)
        self.settled(srv, [ta, tb], ["e"])
        # Boundaries are the times nerve answered: from = the first event of
        # batch 1 on ta, to = the first event of batch 4 on ta.
        first_in, first_out = published[2][0], published[8][0]
        from_us, to_us = parse_us(first_in["time"]), parse_us(first_out["time"])
        self.assertLess(from_us, to_us)
        every = self.stored(srv, [ta, tb])
        self.assertEqual(len(every), 60)
        expected = self.in_window(every, from_us, to_us)
        self.assertIn(first_in["id"], self.ids(expected))  # time == from: in
        self.assertNotIn(first_out["id"], self.ids(expected))  # time == to: out
        self.assertGreater(len(expected), 10)
        self.assertLess(len(expected), 60)
        body = {"from": first_in["time"], "to": first_out["time"], "mode": "dry-run"}

        def check(replay_id, limit):
            v = self.view(srv, replay_id)
            self.assertEqual((v["state"], v["mode"]), ("done", "dry-run"), v)
            self.assertEqual(v["events_total"], len(expected), v)
            self.assertEqual(v["events_done"], len(expected), v)
            self.assertEqual((v["from"], v["to"]), (first_in["time"], first_out["time"]), v)
            entries = self.history(srv, replay_id, "e", limit=limit)
            got = [h["event"] for h in entries]
            self.assertEqual(self.ids(got), self.ids(expected))  # no gap, no duplicate
            self.assertEqual(got, expected)  # the stored events themselves
            for h in entries:
                self.assertEqual((h["outcome"], h["attempts"]), ("acked", 1), h)
                self.assertNotIn("replay", h, h)  # dry-run: nothing under the replay
            return entries

        v = self.replay(srv, body)
        self.assertEqual(v["events_total"], len(expected), v)
        counts = {(c["agent"], c["topic"]): c["events"] for c in v["counts"]}
        self.assertEqual(counts, {("e", t): sum(1 for e in expected if e["topic"] == t)
                                  for t in (ta, tb)})
        first = check(v["id"], 3)
        self.assertEqual(check(v["id"], 7), first)  # another page size
        self.assertEqual(check(v["id"], None), first)  # the default page
        again = self.replay(srv, body)
        self.assertNotEqual(again["id"], v["id"])
        self.assertEqual(check(again["id"], 4), first)
        # One microsecond later, the event at `from` is out.
        later = self.replay(srv, dict(body, **{"from": format_us(from_us + 1)}))
        self.assertEqual([h["event"]["id"] for h in self.history(srv, later["id"], "e")],
                         [e["id"] for e in expected if parse_us(e["time"]) > from_us])
        # Narrowed to one topic.
        only_b = self.replay(srv, dict(body, topics=[tb]))
        self.assertEqual(self.ids(h["event"] for h in self.history(srv, only_b["id"], "e", 5)),
                         [e["id"] for e in expected if e["topic"] == tb])
        # The same after a restart: the stored replay and a new one.
        self.stop_ok(srv)
        srv.start()
        self.assertEqual(check(v["id"], 3), first)
        after = self.replay(srv, body)
        self.assertEqual(check(after["id"], 5), first)
        listed = srv.get("/v1/replays")
        self.assertEqual(listed.status, 200, listed)
        self.assertTrue({v["id"], again["id"], after["id"]}
                        <= {x["id"] for x in listed.json()["replays"]}, listed.json())

    def test_a_window_too_large_to_walk_finds_each_partitions_bounds(self):
        # Over the plan's by_time budget (1024 + 16 per partition), bounds
        # come from a binary search per partition: same events, same edges.
        t = topic("big")
        srv = self.agent_server([builtin("e", [t], "noop")])
        published = []
        for batch in range(9):
            published.append(self.publish_ok(srv, t, [{"data": {"b": batch, "i": i}}
                                                      for i in range(1000)]))
            time.sleep(0.01)
        self.settled(srv, [t], ["e"])
        every = self.stored(srv, [t])
        self.assertEqual(len(every), 9000)
        cases = [  # (from, to): a batch's own time at either edge, inside, all
            (parse_us(published[1][0]["time"]), parse_us(published[8][0]["time"])),
            (parse_us(published[1][0]["time"]) + 1, parse_us(published[8][0]["time"]) + 1),
            (parse_us(earliest(published[0])) - 1000, latest_us(published[8]) + 1),
        ]
        for from_us, to_us in cases:
            expected = self.in_window(every, from_us, to_us)
            self.assertGreater(len(expected), 5500)
            v = self.replay(srv, {"from": format_us(from_us), "to": format_us(to_us),
                                  "mode": "dry-run"})
            self.assertEqual(v["events_total"], len(expected), (from_us, to_us))
            got = [h["event"]["id"] for h in self.history(srv, v["id"], "e", limit=1000)]
            self.assertEqual(got, self.ids(expected), (from_us, to_us))

    def test_listed_event_ids_replay_exactly_those_events(self):
        t = topic("ids")
        srv = self.agent_server([], start=False)
        srv.write_config({"agents": [self.recorder(srv, "rec", [t], "rec.log")]})
        srv.start()
        pub = self.publish_ok(srv, t, [{"data": {"i": i}, "key": f"k{i}"} for i in range(12)])
        self.settled(srv, [t], ["rec"])
        chosen = [pub[9], pub[2], pub[5], pub[2]]  # any order, one twice
        expected = sorted({e["id"]: e for e in self.stored(srv, [t])
                           if e["id"] in {c["id"] for c in chosen}}.values(), key=order_key)
        self.assertEqual(len(expected), 3)
        v = self.replay(srv, {"events": [c["id"] for c in chosen], "mode": "dry-run"})
        self.assertEqual(v["events_total"], 3, v)
        self.assertEqual(v["events"], [c["id"] for c in chosen], v)
        self.assertNotIn("from", v)
        self.assertEqual([h["event"] for h in self.history(srv, v["id"], "rec", 1)], expected)
        v = self.replay(srv, {"events": [c["id"] for c in chosen]})
        v = self.wait_replay(srv, v["id"])
        self.assertEqual((v["events_total"], v["events_done"], v["acked"]), (3, 3, 3), v)
        got = self.replayed(srv, "rec.log", v["id"])
        self.assertEqual(sorted(m["event"]["id"] for m in got), sorted(self.ids(expected)))
        # An id nerve does not have: 404.
        r = srv.post("/v1/replays", {"events": [pub[0]["id"], "no-such-event"]})
        self.assertProblem(r, 404)


# -- dry-run and redeliver -----------------------------------------------------------

class DryRunTest(ReplayTestCase):

    def test_dry_run_moves_no_cursor_counter_or_message(self):
        t = topic("dry")
        srv = self.agent_server([], start=False)
        srv.write_config({"agents": [self.recorder(srv, "rec", [t], "rec.log"),
                                     builtin("e", [t], "echo")]})
        srv.start()
        pub = self.publish_ok(srv, t, [{"data": {"i": i}, "key": f"k{i}"} for i in range(10)])
        self.settled(srv, [t], ["rec", "e"])
        self.assertEqual(len(self.recorded(srv, "rec.log")), 10)
        groups, metrics = self.groups(srv, [t]), self.metrics(srv)
        v = self.replay(srv, {"from": earliest(pub), "to": "now", "mode": "dry-run"})
        self.assertEqual((v["state"], v["events_total"], v["events_done"]), ("done", 20, 20), v)
        self.assertEqual((v["acked"], v["failed"], v["retried"], v["dead_lettered"]),
                         (0, 0, 0, 0), v)
        time.sleep(0.5)  # a wrong delivery would happen by now
        self.assertEqual(self.groups(srv, [t]), groups)
        self.assertEqual(self.metrics(srv), metrics)
        self.assertEqual(len(self.recorded(srv, "rec.log")), 10)
        self.assertEqual(self.view(srv, v["id"])["state"], "done")

    def test_history_and_event_view_keep_attempts_of_acks_without_results(self):
        # An ack without a result after a retry is the case with no result
        # record: its attempts come from the attempts index, also after a
        # restart; first-attempt acks show 1.
        t = topic("att")
        srv = self.agent_server([], start=False)
        srv.write_config({"agents": [self.recorder(srv, "rec", [t], "rec.log",
                                                   mode="live-retry-no-result", max_retries=2,
                                                   backoff=FAST)]})
        srv.start()
        pub = self.publish_ok(srv, t, [{"data": {"i": i, "fail_once": i % 3 == 0}, "key": "k"}
                                       for i in range(6)])
        self.wait_state(srv, [p["id"] for p in pub], "rec", "acked")
        self.settled(srv, [t], ["rec"])
        want = {p["id"]: (2 if i % 3 == 0 else 1) for i, p in enumerate(pub)}
        for restarted in (False, True):
            if restarted:
                srv.stop()
                srv.start()
            for p in pub:
                d = self.deliveries(srv, p["id"])["rec"]
                self.assertEqual((d["state"], d["attempts"], d["result"]),
                                 ("acked", want[p["id"]], None), (restarted, d))
            v = self.replay(srv, {"from": earliest(pub), "to": "now", "mode": "dry-run"})
            got = {h["event"]["id"]: (h["outcome"], h["attempts"])
                   for h in self.history(srv, v["id"], "rec", limit=2)}
            self.assertEqual(got, {i: ("acked", n) for i, n in want.items()}, restarted)


class RedeliverTest(ReplayTestCase):

    def test_redeliver_marks_each_event_once_and_leaves_live_state_alone(self):
        t, out = topic("redo"), topic("redo-out")
        srv = self.agent_server([], start=False)
        here = os.path.dirname(os.path.abspath(__file__))
        echo = os.path.join(here, "..", "..", "docs", "examples", "echo_agent.py")
        srv.write_config({"agents": [self.recorder(srv, "rec", [t], "rec.log"),
                                     process("echo", [t], [sys.executable, echo])]})
        srv.start()
        n = 24
        pub = self.publish_ok(srv, t, [{"data": {"i": i, "emit_to": out}, "key": f"k{i % 7}"}
                                       for i in range(n)])
        self.settled(srv, [t], ["rec", "echo"])
        self.wait_for(lambda: srv.topics().get(out, {}).get("events") == n, what="live emits")
        groups, metrics = self.groups(srv, [t]), self.metrics(srv)
        stored = {e["id"]: e for e in self.stored(srv, [t])}
        v = self.replay(srv, {"from": earliest(pub), "to": "now"})
        self.assertEqual((v["mode"], v["events_total"]), ("redeliver", 2 * n), v)
        v = self.wait_replay(srv, v["id"])
        self.assertEqual((v["events_done"], v["acked"], v["failed"], v["retried"],
                          v["dead_lettered"]), (2 * n, 2 * n, 0, 0, 0), v)
        got = self.replayed(srv, "rec.log", v["id"])
        self.assertEqual(sorted(m["event"]["id"] for m in got), sorted(stored))  # each once
        for m in got:
            marked = dict(stored[m["event"]["id"]], replay=v["id"])
            self.assertEqual(m["event"], marked)
            self.assertEqual(m["attempt"], 1, m)
        self.assertEqual(len(self.live(srv, "rec.log")), n)  # no live redelivery
        # Per partition, the replay sent the history in offset order (one
        # instance, answers in order).
        for p in {e["partition"] for e in stored.values()}:
            offsets = [m["event"]["offset"] for m in got if m["event"]["partition"] == p]
            self.assertEqual(offsets, sorted(offsets))
        time.sleep(0.3)
        self.assertEqual(self.groups(srv, [t]), groups)  # live cursors, lag, pending
        self.assertEqual(self.metrics(srv), metrics)  # live counters
        self.assertEqual(srv.topics()[out]["events"], n)  # emits under a replay: not published
        for agent in ("rec", "echo"):
            for h in self.history(srv, v["id"], agent, 10):
                self.assertEqual((h["outcome"], h["attempts"]), ("acked", 1), h)
                self.assertEqual(h["replay"], {"outcome": "acked", "attempts": 1}, h)
                self.assertNotIn("replay", h["event"])  # the history shows the stored event

    def test_failing_replay_attempts_do_not_touch_the_live_delivery_state(self):
        t = topic("nack")
        srv = self.agent_server([], start=False)
        srv.write_config({"agents": [self.recorder(srv, "rec", [t], "rec.log", mode="nack-replays",
                                                   max_retries=1, backoff=FAST)]})
        srv.start()
        pub = self.publish_ok(srv, t, [{"data": {"i": i}, "key": f"k{i}"} for i in range(4)])
        self.settled(srv, [t], ["rec"])
        self.wait_state(srv, [p["id"] for p in pub], "rec", "acked")
        v = self.wait_replay(srv, self.replay(srv, {"from": earliest(pub), "to": "now"})["id"])
        self.assertEqual((v["dead_lettered"], v["acked"]), (4, 0), v)
        # The live group acked these events; a replay does not change that.
        for p in pub:
            d = self.deliveries(srv, p["id"])["rec"]
            self.assertEqual((d["state"], d["attempts"]), ("acked", 1), d)
        for h in self.history(srv, v["id"], "rec"):
            self.assertEqual(h["outcome"], "acked", h)
            self.assertEqual(h["replay"]["outcome"], "dead_lettered", h)
        entries = self.dlq(srv, agent="rec")["entries"]
        self.assertEqual(len(entries), 4, entries)
        for e in entries:
            self.assertIn(f"(replay {v['id']})", e["error"], e)


class DeadLetterTest(ReplayTestCase):

    def test_exhausted_retries_under_a_replay_dead_letter_with_replay_counters(self):
        t = topic("dead")
        srv = self.agent_server([builtin("bad", [t], "fail", max_retries=1, backoff=FAST)])
        pub = self.publish_ok(srv, t, [{"data": {"i": i}, "key": f"k{i}"} for i in range(3)])
        self.wait_for(lambda: self.dlq(srv, agent="bad")["count"] == 3, what="live DLQ")
        self.settled(srv, [t], ["bad"])
        live_dlq = {e["id"]: e for e in self.dlq(srv, agent="bad")["entries"]}
        metrics = self.metrics(srv)
        v = self.wait_replay(srv, self.replay(srv, {"from": earliest(pub), "to": "now"})["id"])
        self.assertEqual((v["events_total"], v["events_done"], v["acked"], v["failed"],
                          v["retried"], v["dead_lettered"]), (3, 3, 0, 6, 3, 3), v)
        entries = self.history(srv, v["id"], "bad")
        self.assertEqual(sorted(h["event"]["id"] for h in entries), sorted(self.ids(pub)))
        for h in entries:
            self.assertEqual((h["outcome"], h["attempts"]), ("dead_lettered", 2), h)
            self.assertEqual((h["replay"]["outcome"], h["replay"]["attempts"]),
                             ("dead_lettered", 2), h)
            self.assertIn("fail handler", h["replay"]["error"], h)
        self.assertEqual(self.metrics(srv), metrics)  # live counters
        # The replay's dead letters are in the DLQ, next to the live ones.
        now = {e["id"]: e for e in self.dlq(srv, agent="bad")["entries"]}
        for i, e in live_dlq.items():
            self.assertEqual(now.get(i), e)
        mine = [e for e in now.values() if f"(replay {v['id']})" in e["error"]]
        self.assertEqual(sorted(e["event"]["id"] for e in mine), sorted(self.ids(pub)))
        for e in mine:
            self.assertEqual((e["attempts"], e["event"]["replay"]), (2, v["id"]), e)


# -- reading histories ---------------------------------------------------------------

class HistoryReadTest(ReplayTestCase):

    def page(self, srv, replay_id, agent, cursor=None, limit=None):
        q = {"agent": agent}
        if cursor is not None:
            q["cursor"] = cursor
        if limit is not None:
            q["limit"] = limit
        r = srv.get(f"/v1/replays/{replay_id}/history?" + urllib.parse.urlencode(q))
        self.assertEqual(r.status, 200, r)
        return r.json()

    def test_pages_read_after_a_redeliver_ends_show_every_replay_outcome(self):
        # Pages are built ahead while a reader takes in one; those built while
        # the replay still ran must not be served once it has ended.
        t = topic("ahead")
        srv = self.agent_server([], start=False)
        srv.write_config({"agents": [self.recorder(srv, "rec", [t], "rec.log", delay=0.01,
                                                   max_in_flight=2)]})
        srv.start()
        n = 20
        pub = self.publish_ok(srv, t, [{"data": {"i": i}, "key": "k"} for i in range(n)])
        self.settled(srv, [t], ["rec"])
        v = self.replay(srv, {"from": earliest(pub), "to": "now"})
        first = self.page(srv, v["id"], "rec", limit=5)  # the next pages are built now
        self.assertLess(self.view(srv, v["id"])["events_done"], n)
        self.wait_replay(srv, v["id"])
        cursor = first["next_cursor"]
        while cursor is not None:
            got = self.page(srv, v["id"], "rec", cursor, 5)
            for h in got["entries"]:
                self.assertEqual(h.get("replay"), {"outcome": "acked", "attempts": 1}, h)
            self.assertEqual(got, self.page(srv, v["id"], "rec", cursor, 5))  # a fresh read
            cursor = got["next_cursor"]


# -- agents that did not exist then ------------------------------------------------

class NewAgentTest(ReplayTestCase):

    def test_a_new_agent_gets_the_window_only_when_named(self):
        t = topic("new")
        srv = self.agent_server([builtin("old", [t], "echo")])
        types = ["a", "b", "a", "c", "a", "b", "b", "a", "c", "a"]
        pub = self.publish_ok(srv, t, [{"data": {"i": i}, "type": ty, "key": f"k{i}"}
                                       for i, ty in enumerate(types)])
        self.settled(srv, [t], ["old"])
        self.stop_ok(srv)
        srv.write_config({"agents": [
            builtin("old", [t], "echo"),
            self.recorder(srv, "new", [t], "new.log", start="latest"),
            self.recorder(srv, "newf", [t], "newf.log", start="latest", filter={"type": "a"})]})
        srv.start()
        window = {"from": earliest(pub), "to": format_us(latest_us(pub) + 1)}
        expected = self.in_window(self.stored(srv, [t]), parse_us(window["from"]),
                                  parse_us(window["to"]))
        self.assertEqual(sorted(self.ids(expected)), sorted(self.ids(pub)))
        typed = [e for e in expected if e.get("type") == "a"]
        # Not named: the new agents' actors never had these events.
        v = self.replay(srv, dict(window, mode="dry-run"))
        self.assertEqual(v["events_total"], len(pub), v)
        self.assertEqual({c["agent"] for c in v["counts"]}, {"old"}, v)
        for agent in ("new", "newf"):
            self.assertEqual(self.history(srv, v["id"], agent), [])
        v = self.wait_replay(srv, self.replay(srv, window)["id"])
        self.assertEqual(v["acked"], len(pub), v)
        time.sleep(0.3)
        self.assertEqual(self.recorded(srv, "new.log") + self.recorded(srv, "newf.log"), [])
        # Named: every matching event of the window, as if subscribed then.
        v = self.replay(srv, dict(window, agents=["new", "newf"], mode="dry-run"))
        self.assertEqual(v["events_total"], len(expected) + len(typed), v)
        self.assertEqual(sorted((c["agent"], c["topic"], c["events"]) for c in v["counts"]),
                         [("new", t, len(expected)), ("newf", t, len(typed))])
        v = self.wait_replay(srv, self.replay(srv, dict(window, agents=["new", "newf"]))["id"])
        self.assertEqual((v["events_done"], v["acked"]), (len(expected) + len(typed),) * 2, v)
        for agent, want in (("new", expected), ("newf", typed)):
            got = self.recorded(srv, agent + ".log")
            self.assertEqual(sorted(m["event"]["id"] for m in got), sorted(self.ids(want)), agent)
            self.assertTrue(all(m["event"]["replay"] == v["id"] for m in got), got)
            entries = self.history(srv, v["id"], agent, 3)
            self.assertEqual([h["event"] for h in entries], want)
            for h in entries:
                self.assertEqual((h["outcome"], h["attempts"]), ("not_delivered", 0), h)
                self.assertEqual(h["replay"], {"outcome": "acked", "attempts": 1}, h)
        r = srv.get(f"/v1/replays/{v['id']}/history?agent=old")
        self.assertProblem(r, 404)  # not in this replay
        # Live: the new agents still have no lag and received nothing live.
        self.settled(srv, [t], ["new", "newf"])
        self.assertEqual(self.live(srv, "new.log") + self.live(srv, "newf.log"), [])


# -- cancel, kill -9 -----------------------------------------------------------------

class CancelTest(ReplayTestCase):

    def test_cancel_stops_a_running_replay(self):
        t = topic("cancel")
        srv = self.agent_server([], start=False)
        srv.write_config({"agents": [self.recorder(srv, "slow", [t], "slow.log", delay=0.1,
                                                   max_in_flight=2)]})
        srv.start()
        n = 60
        pub = self.publish_ok(srv, t, [{"data": {"i": i}, "key": f"k{i}"} for i in range(n)])
        self.settled(srv, [t], ["slow"])
        v = self.replay(srv, {"from": earliest(pub), "to": "now"})
        self.assertEqual((v["state"], v["events_total"]), ("running", n), v)
        self.wait_for(lambda: self.view(srv, v["id"])["events_done"] >= 3, what="progress")
        r = srv.request("DELETE", f"/v1/replays/{v['id']}")
        self.assertEqual(r.status, 200, r)
        cancelled = r.json()
        self.assertEqual(cancelled["state"], "cancelled", cancelled)
        self.assertIsNotNone(cancelled["finished_at"], cancelled)
        done_at_cancel = cancelled["events_done"]
        self.assertLess(done_at_cancel, n, cancelled)
        seen_at_cancel = len(self.replayed(srv, "slow.log", v["id"]))
        time.sleep(1.0)
        seen = len(self.replayed(srv, "slow.log", v["id"]))
        self.assertLessEqual(seen, seen_at_cancel + 1)  # at most the one in flight
        time.sleep(1.0)
        self.assertEqual(len(self.replayed(srv, "slow.log", v["id"])), seen)
        self.assertLess(seen, n)
        after = self.view(srv, v["id"])
        self.assertEqual((after["state"], after["events_done"]), ("cancelled", done_at_cancel))
        # Cancelling again changes nothing.
        r = srv.request("DELETE", f"/v1/replays/{v['id']}")
        self.assertEqual(r.status, 200, r)
        self.assertEqual((r.json()["state"], r.json()["events_done"]),
                         ("cancelled", done_at_cancel))
        self.settled(srv, [t], ["slow"])


    def replay_whose_agent_is_gone(self, name):
        """A redeliver replay to agent "slow" that is running when the node
        restarts without that agent: its actor stops and waits to resume."""
        t = topic(name)
        srv = self.agent_server([], start=False)
        srv.write_config({"agents": [self.recorder(srv, "slow", [t], "slow.log", delay=0.2),
                                     builtin("e", [t], "echo")]})
        srv.start()
        pub = self.publish_ok(srv, t, [{"data": {"i": i}, "key": "k"} for i in range(30)])
        self.settled(srv, [t], ["slow"])
        v = self.replay(srv, {"from": earliest(pub), "to": "now", "agents": ["slow"]})
        self.stop_ok(srv)
        srv.write_config({"agents": [builtin("e", [t], "echo")]})
        srv.start()
        return srv, v

    def test_cancel_reaches_a_replay_waiting_to_resume(self):
        # The replay's agent is gone after a restart: its actor stops and
        # waits to be started again. A cancel then still cancels it.
        srv, v = self.replay_whose_agent_is_gone("cancel-wait")
        self.wait_for(lambda: "resuming from its progress" in srv.stderr_text(),
                      what="the replay waiting to resume")
        r = srv.request("DELETE", f"/v1/replays/{v['id']}")
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json()["state"], "cancelled", r.json())
        self.assertIsNotNone(r.json()["finished_at"], r.json())
        time.sleep(2.5)  # past the next attempts to resume it
        self.assertEqual(self.view(srv, v["id"])["state"], "cancelled")

    def test_a_replay_that_cannot_resume_fails_saying_why(self):
        srv, v = self.replay_whose_agent_is_gone("cannot")
        failed = self.wait_replay(srv, v["id"], state="failed", timeout=20)
        self.assertIn("agent slow is no longer configured", failed["error"], failed)


class KillTest(ReplayTestCase):

    def test_kill_9_during_redeliver_resumes_to_done(self):
        t = topic("kill")
        srv = self.agent_server([], start=False)
        srv.write_config({"agents": [self.recorder(srv, "rec", [t], "rec.log", delay=0.03)]})
        srv.start()
        n = 80
        pub = self.publish_ok(srv, t, [{"data": {"i": i}, "key": f"k{i}"} for i in range(n)])
        self.settled(srv, [t], ["rec"])
        v = self.replay(srv, {"from": earliest(pub), "to": "now"})
        self.assertEqual(v["events_total"], n, v)
        self.wait_for(lambda: len(self.replayed(srv, "rec.log", v["id"])) >= 15,
                      what="some replayed messages")
        srv.kill()
        before_kill = len(self.replayed(srv, "rec.log", v["id"]))
        self.assertLess(before_kill, n, "the replay finished before the kill; slow it down")
        srv.start()
        done = self.wait_replay(srv, v["id"], timeout=60)
        got = self.replayed(srv, "rec.log", v["id"])
        ids = [m["event"]["id"] for m in got]
        self.assertEqual(set(ids), set(self.ids(pub)))  # every event, duplicates allowed
        print(f"\nkill -9 after {before_kill} of {n} replayed messages: {len(ids) - n} "
              f"duplicates after the resume", file=sys.stderr)
        self.assertEqual((done["events_total"], done["events_done"]), (n, n), done)
        self.assertEqual(len(self.live(srv, "rec.log")), n)  # no live redelivery
        self.settled(srv, [t], ["rec"])
        entries = self.history(srv, v["id"], "rec", 25)
        self.assertEqual(sorted(h["event"]["id"] for h in entries), sorted(self.ids(pub)))
        for h in entries:
            self.assertEqual(h["replay"]["outcome"], "acked", h)

    def test_kill_9_while_an_early_event_waits_to_retry_counts_each_event_once(self):
        t = topic("kill-retry")
        srv = self.agent_server([], start=False)
        srv.write_config({"agents": [self.recorder(srv, "rec", [t], "rec.log", mode="nack-once",
                                                   max_retries=2,
                                                   backoff={"initial": "4s", "max": "4s"})]})
        srv.start()
        n = 20
        # One key: one partition, the failing event first.
        pub = self.publish_ok(srv, t, [{"data": {"i": i, "fail_once": i == 0}, "key": "k"}
                                       for i in range(n)])
        self.settled(srv, [t], ["rec"])
        v = self.replay(srv, {"from": earliest(pub), "to": "now"})
        # Everything but the first event is acked while it waits for its retry.
        self.wait_for(lambda: self.view(srv, v["id"])["events_done"] == n - 1,
                      what="the other events acked")
        time.sleep(0.6)  # the progress is stored
        srv.kill()
        srv.start()
        done = self.wait_replay(srv, v["id"], timeout=60)
        self.assertEqual((done["events_total"], done["events_done"], done["acked"]), (n, n, n),
                         done)
        got = self.replayed(srv, "rec.log", v["id"])
        self.assertEqual({m["event"]["id"] for m in got}, set(self.ids(pub)))
        print(f"\nkill -9 with one event waiting to retry: {len(got) - n - 1} messages sent "
              f"again after the resume", file=sys.stderr)
        for h in self.history(srv, v["id"], "rec"):
            self.assertEqual(h["replay"]["outcome"], "acked", h)


# -- bad input -------------------------------------------------------------------------

class BadInputTest(ReplayTestCase):

    @classmethod
    def setUpClass(cls):
        from harness import Server
        cls.t = topic("bad")
        cls.srv = Server(config={"agents": [builtin("e", [cls.t], "echo")]})
        cls.addClassCleanup(cls.srv.cleanup)
        cls.srv.start()

    def tearDown(self):
        self.assertHealthy(self.srv)

    def test_bad_bodies_are_400_problems(self):
        srv = self.srv
        ok = {"from": "-1h", "to": "now"}
        cases = [
            ("invalid JSON", b'{"from": "-1h", '),
            ("not an object", [ok]),
            ("a string", "\"-1h\""),
            ("from == to", {"from": "2026-01-01T00:00:00Z", "to": "2026-01-01T00:00:00Z"}),
            ("from > to", {"from": "now", "to": "-1h"}),
            ("no window", {"mode": "dry-run"}),
            ("only from", {"from": "-1h"}),
            ("window and events", dict(ok, events=["x"])),
            ("unknown field", dict(ok, speed=2)),
            ("bad time text", {"from": "yesterday", "to": "now"}),
            ("a day that does not exist", {"from": "2026-02-30T00:00:00Z", "to": "now"}),
            ("an offset past 23:59", {"from": "2026-01-01T00:00:00+25:00", "to": "now"}),
            ("a relative time past a century", {"from": "-99999999999d", "to": "now"}),
            ("a far future overflowing", {"from": "-1h", "to": "+9999999999d"}),
            ("bad time zone", {"from": "2026-01-01T00:00:00", "to": "now"}),
            ("time not a string", {"from": 12, "to": "now"}),
            ("bad mode", dict(ok, mode="fast")),
            ("topics not a list", dict(ok, topics="x")),
            ("bad topic", dict(ok, topics=["a..b"])),
            ("agents not strings", dict(ok, agents=[1])),
            ("empty events", {"events": []}),
        ]
        for what, body in cases:
            with self.subTest(what):
                r = srv.post("/v1/replays", body, headers={"Content-Type": "application/json"})
                self.assertProblem(r, 400)
        r = srv.post("/v1/replays", dict(ok, agents=["e", "nobody"]))
        self.assertProblem(r, 404, "nobody")

    def test_unknown_replay_and_bad_history_queries(self):
        srv = self.srv
        missing = "0193a8c2-0000-7000-8000-000000000000"
        self.assertProblem(srv.get(f"/v1/replays/{missing}"), 404)
        self.assertProblem(srv.request("DELETE", f"/v1/replays/{missing}"), 404)
        self.assertProblem(srv.get(f"/v1/replays/{missing}/history?agent=e"), 404)
        self.publish_ok(srv, self.t, [{"data": i, "key": f"k{i}"} for i in range(5)])
        v = self.replay(srv, {"from": "-1h", "to": "+1m", "mode": "dry-run"})
        base = f"/v1/replays/{v['id']}/history"
        self.assertEqual(len(self.history(srv, v["id"], "e", 1000)), v["events_total"])
        for what, query, status in [
                ("no agent", "", 400),
                ("empty agent", "?agent=", 400),
                ("unknown agent", "?agent=nobody", 404),
                ("bad cursor", "?agent=e&cursor=zzz", 400),
                ("cursor without offset", "?agent=e&cursor=1.", 400),
                ("huge cursor", "?agent=e&cursor=" + "9" * 50, 400),
                ("cursor past the ranges", "?agent=e&cursor=99.0", 400),
                ("cursor past a range's end", "?agent=e&cursor=0.999999", 400),
                ("limit over 1000", "?agent=e&limit=1001", 400),
                ("limit 0", "?agent=e&limit=0", 400),
                ("negative limit", "?agent=e&limit=-1", 400),
                ("limit not a number", "?agent=e&limit=ten", 400)]:
            with self.subTest(what):
                self.assertProblem(srv.get(base + query), status)


if __name__ == "__main__":
    unittest.main()
