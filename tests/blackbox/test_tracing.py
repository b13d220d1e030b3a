"""Black-box tests of OTLP trace export (issue 17; docs/operations.md, "Traces"): a
collector written here takes OTLP/HTTP JSON and checks every payload against the
protocol's JSON mapping; spans of publishes, delivery attempts, follow-ups and replays
are linked into one trace with the publisher's traceparent, which http and process
agents receive; a dead or slow collector never holds up a publish."""

import http.server
import json
import os
import re
import shutil
import socket
import sys
import tempfile
import threading
import time
import unittest

from harness import ServerTestCase, builtin, process, run_nerve, topic

HEX32 = re.compile(r"^[0-9a-f]{32}$")
HEX16 = re.compile(r"^[0-9a-f]{16}$")
DIGITS = re.compile(r"^[0-9]+$")
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"

# A process agent that writes each message line it gets to a file, then acks.
RECORDING_AGENT = r'''
import json, sys
out = open(sys.argv[1], "a", buffering=1)
for line in sys.stdin:
    msg = json.loads(line)
    if msg.get("type") != "event":
        continue
    out.write(line)
    sys.stdout.write(json.dumps({"type": "ack", "delivery": msg["delivery"]}) + "\n")
    sys.stdout.flush()
'''


def check_value(test, value, where):
    """One AnyValue of the OTLP JSON mapping."""
    test.assertIsInstance(value, dict, where)
    test.assertEqual(len(value), 1, f"{where}: one kind of value: {value}")
    kind, v = next(iter(value.items()))
    if kind == "stringValue":
        test.assertIsInstance(v, str, where)
    elif kind == "intValue":  # int64 as a decimal string
        test.assertIsInstance(v, str, where)
        test.assertRegex(v, r"^-?[0-9]+$", where)
    elif kind == "boolValue":
        test.assertIsInstance(v, bool, where)
    elif kind == "doubleValue":
        test.assertIsInstance(v, (int, float), where)
    else:
        test.fail(f"{where}: unknown value kind {kind}")


def check_attributes(test, attrs, where):
    test.assertIsInstance(attrs, list, where)
    keys = []
    for a in attrs:
        test.assertEqual(set(a), {"key", "value"}, where)
        test.assertIsInstance(a["key"], str, where)
        check_value(test, a["value"], f"{where} {a['key']}")
        keys.append(a["key"])
    test.assertEqual(len(keys), len(set(keys)), f"{where}: a key twice: {keys}")


def attributes(span):
    """{key: python value} of a span's attributes."""
    out = {}
    for a in span.get("attributes", []):
        kind, v = next(iter(a["value"].items()))
        out[a["key"]] = int(v) if kind == "intValue" else v
    return out


def check_payload(test, body, not_before_ns):
    """An ExportTraceServiceRequest in OTLP/HTTP JSON: ids as hex, times as
    nanoseconds in decimal strings, enums as numbers, resource and scope."""
    test.assertEqual(set(body), {"resourceSpans"})
    spans = []
    for rs in body["resourceSpans"]:
        attrs = rs["resource"]["attributes"]
        check_attributes(test, attrs, "resource")
        names = {a["key"]: a["value"] for a in attrs}
        test.assertEqual(names["service.name"], {"stringValue": "nerve-test"})
        test.assertIn("service.version", names)
        for ss in rs["scopeSpans"]:
            test.assertEqual(ss["scope"]["name"], "nerve")
            test.assertIsInstance(ss["scope"]["version"], str)
            for s in ss["spans"]:
                where = f"span {s.get('name')}"
                test.assertRegex(s["traceId"], HEX32, where)
                test.assertNotEqual(s["traceId"], "0" * 32, where)
                test.assertRegex(s["spanId"], HEX16, where)
                test.assertNotEqual(s["spanId"], "0" * 16, where)
                if "parentSpanId" in s:
                    test.assertRegex(s["parentSpanId"], HEX16, where)
                test.assertIsInstance(s["name"], str, where)
                test.assertIn(s["kind"], [1, 2, 3, 4, 5], where)
                start, end = s["startTimeUnixNano"], s["endTimeUnixNano"]
                test.assertRegex(start, DIGITS, where)
                test.assertRegex(end, DIGITS, where)
                test.assertLessEqual(int(start), int(end), where)
                test.assertGreaterEqual(int(start), not_before_ns, where)
                test.assertLessEqual(int(end), time.time_ns() + 5 * 10**9, where)
                check_attributes(test, s.get("attributes", []), where)
                if "status" in s:
                    test.assertIn(s["status"]["code"], [0, 1, 2], where)
                spans.append(s)
    return spans


class Collector:
    """An OTLP/HTTP receiver: POST /v1/traces with JSON; `status` answers."""

    def __init__(self, test, port=0):
        self.test = test
        self.spans = []
        self.requests = 0
        self.errors = []
        self.status = 200
        self.delay = 0.0
        self.lock = threading.Lock()
        self.started_ns = time.time_ns() - 10**9
        collector = self

        self.connections = []

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self):
                super().setup()
                with collector.lock:
                    collector.connections.append(self.connection)

            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                try:
                    assert self.path == "/v1/traces", self.path
                    assert self.headers["Content-Type"] == "application/json"
                    spans = check_payload(collector.test, json.loads(body),
                                          collector.started_ns)
                    with collector.lock:
                        collector.requests += 1
                        collector.spans.extend(spans)
                except Exception as e:  # reported by the test, not lost in a thread
                    with collector.lock:
                        collector.errors.append(repr(e))
                time.sleep(collector.delay)
                try:
                    self.send_response(collector.status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", "2")
                    self.end_headers()
                    self.wfile.write(b"{}")
                except OSError:
                    pass  # nerve gave up waiting (the slow-collector case)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        """As a collector that dies: its kept connections end too (nerve keeps them)."""
        self.server.shutdown()
        self.server.server_close()
        with self.lock:
            for conn in self.connections:
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def find(self, **attrs):
        with self.lock:
            return [s for s in self.spans
                    if all(attributes(s).get(k) == v for k, v in attrs.items())]

    def named(self, name):
        with self.lock:
            return [s for s in self.spans if s["name"] == name]


class TracingTest(ServerTestCase):

    def workdir(self):
        d = tempfile.mkdtemp(prefix="nerve-tracing-")
        self.addCleanup(shutil.rmtree, d, True)
        return d

    def collector(self, port=0):
        c = Collector(self, port)
        self.addCleanup(c.close)
        return c

    def traced_server(self, collector, agents=(), **tracing):
        cfg = {"tracing": dict({"otlp": {"endpoint": f"http://127.0.0.1:{collector.port}",
                                         "interval": "50ms"},
                                "service_name": "nerve-test"}, **tracing),
               "agents": list(agents)}
        return self.new_server(config=cfg)

    def wait_spans(self, collector, what, timeout=15.0, count=1, **attrs):
        def found():
            spans = collector.find(**attrs)
            return spans if len(spans) >= count else None
        spans = self.wait_for(found, timeout, what)
        self.assertEqual(collector.errors, [])
        return spans

    def hook_server(self, emit_to=None):
        """An http agent's endpoint; records each request's traceparent."""
        seen = []

        class Hook(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                ev = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                seen.append((ev["id"], self.headers.get("traceparent")))
                reply = {"ok": True}
                if emit_to:
                    reply["emit"] = [{"topic": emit_to, "data": {"from": ev["id"]}}]
                body = json.dumps(reply).encode()
                self.send_response(200)
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

    def metric(self, srv, name, **labels):
        text = srv.get("/metrics").body.decode()
        want = ",".join(f'{k}="{v}"' for k, v in labels.items())
        for line in text.splitlines():
            if line.startswith(name + ("{" + want + "}" if want else " ")):
                return float(line.rsplit(" ", 1)[1])
        return None

    def test_one_trace_from_the_publisher_through_agents_and_follow_ups(self):
        c = self.collector()
        a, b = topic("orders"), topic("shipped")
        url, hook_seen = self.hook_server(emit_to=b)
        d = self.workdir()
        lines = os.path.join(d, "proc-lines")
        script = os.path.join(d, "recorder.py")
        with open(script, "w") as f:
            f.write(RECORDING_AGENT)
        srv = self.traced_server(c, [
            {"name": "hook", "topics": [a], "kind": "http", "url": url},
            process("proc", [a], [sys.executable, script, lines]),
            builtin("tail", [b], "echo")])
        r = srv.publish(a, {"data": {"n": 1}},
                        headers={"traceparent": f"00-{TRACE}-{PARENT}-01"})
        self.assertEqual(r.status, 201, r)
        event_id = r.json()["events"][0]["id"]
        # The event took the caller's trace.
        self.assertEqual(srv.get(f"/v1/events/{event_id}").json()["event"]["trace_id"], TRACE)

        [pub] = self.wait_spans(c, "the publish span", **{"messaging.message.id": event_id,
                                                         "messaging.operation": "publish"})
        self.assertEqual(pub["traceId"], TRACE)
        self.assertEqual(pub["parentSpanId"], PARENT)
        self.assertEqual(pub["name"], f"publish {a}")
        self.assertEqual(pub["kind"], 4)  # PRODUCER
        attrs = attributes(pub)
        self.assertEqual(attrs["messaging.destination.name"], a)
        self.assertEqual(attrs["nerve.via"], "http")
        self.assertIn("nerve.offset", attrs)

        [hook] = self.wait_spans(c, "the http agent's delivery span",
                                 **{"nerve.agent": "hook", "messaging.message.id": event_id})
        [proc] = self.wait_spans(c, "the process agent's delivery span",
                                 **{"nerve.agent": "proc", "messaging.message.id": event_id})
        for d, kind in ((hook, 3), (proc, 5)):
            self.assertEqual(d["traceId"], TRACE)
            self.assertEqual(d["parentSpanId"], pub["spanId"])
            self.assertEqual(d["kind"], kind)
            self.assertEqual(attributes(d)["nerve.outcome"], "acked")
            self.assertEqual(attributes(d)["nerve.attempt"], 1)
            self.assertNotIn("status", d)
        # The agents got the attempt's span as their parent.
        self.assertIn((event_id, f"00-{TRACE}-{hook['spanId']}-01"), hook_seen)
        with open(lines) as f:
            msgs = [json.loads(line) for line in f]
        [msg] = [m for m in msgs if m["event"]["id"] == event_id]
        self.assertEqual(msg["traceparent"], f"00-{TRACE}-{proc['spanId']}-01")

        # The follow-up the hook emitted: a child of the hook's attempt.
        [follow] = self.wait_spans(c, "the follow-up's publish span",
                                   **{"messaging.destination.name": b,
                                      "messaging.operation": "publish"})
        self.assertEqual(follow["traceId"], TRACE)
        self.assertEqual(follow["parentSpanId"], hook["spanId"])
        self.assertEqual(attributes(follow)["nerve.via"], "emit")
        follow_id = attributes(follow)["messaging.message.id"]
        [tail] = self.wait_spans(c, "the follow-up's delivery span",
                                 **{"nerve.agent": "tail", "messaging.message.id": follow_id})
        self.assertEqual(tail["traceId"], TRACE)
        self.assertEqual(tail["parentSpanId"], follow["spanId"])
        self.assertEqual(self.metric(srv, "nerve_tracing_spans_total", outcome="dropped"), 0)
        self.wait_for(lambda: (self.metric(srv, "nerve_tracing_spans_total",
                                           outcome="exported") or 0) >= 5,
                      what="the exported counter")

    def test_failed_attempts_are_error_spans_and_events_without_a_caller_get_their_own_trace(self):
        c = self.collector()
        t = topic("failing")
        srv = self.traced_server(c, [builtin("bad", [t], "fail", max_retries=1,
                                             backoff={"initial": "20ms", "max": "50ms"})])
        # An invalid traceparent is ignored, as W3C asks.
        r = srv.publish(t, [{"data": 1}, {"data": 2, "trace_id": "ab" * 16}],
                        headers={"traceparent": "00-zz-00f067aa0ba902b7-01"})
        self.assertEqual(r.status, 201, r)
        first, second = (e["id"] for e in r.json()["events"])
        spans = self.wait_spans(c, "two failed attempts", count=2,
                                **{"nerve.agent": "bad", "messaging.message.id": first})
        self.assertEqual(sorted(attributes(s)["nerve.attempt"] for s in spans), [1, 2])
        for s in spans:
            self.assertEqual(s["status"]["code"], 2)
            self.assertIn("fail", s["status"]["message"])
            self.assertEqual(attributes(s)["nerve.outcome"], "failed")
        [pub] = self.wait_spans(c, "the publish span", **{"messaging.message.id": first,
                                                         "messaging.operation": "publish"})
        self.assertNotIn("parentSpanId", pub)  # a root: no valid caller
        self.assertNotEqual(pub["traceId"], TRACE)
        self.assertEqual(pub["traceId"], srv.get(f"/v1/events/{first}").json()["event"]["trace_id"])
        [pub2] = self.wait_spans(c, "the second publish span",
                                 **{"messaging.message.id": second,
                                    "messaging.operation": "publish"})
        self.assertEqual(pub2["traceId"], "ab" * 16)  # the event's own trace id wins

    def test_a_pull_workers_fetch_carries_its_attempts_traceparent(self):
        c = self.collector()
        t = topic("pulled")
        srv = self.traced_server(c, [{"name": "w", "topics": [t], "kind": "pull"}])
        r = srv.publish(t, {"data": {"n": 1}}, headers={"traceparent": f"00-{TRACE}-{PARENT}-01"})
        self.assertEqual(r.status, 201, r)
        event_id = r.json()["events"][0]["id"]
        f = srv.post("/v1/agents/w/fetch", {"consumer": "c1", "wait_ms": 5000})
        self.assertEqual(f.status, 200, f)
        [d] = f.json()["deliveries"]
        self.assertEqual(d["event"]["id"], event_id)
        self.assertEqual(list(d), ["delivery", "attempt", "traceparent", "event"])
        self.assertEqual(srv.post("/v1/agents/w/ack", {"deliveries": [d["delivery"]]}).status, 200)
        # The parent is the attempt's span, which nerve exports when the worker answers.
        [span] = self.wait_spans(c, "the pull attempt's span",
                                 **{"nerve.agent": "w", "messaging.message.id": event_id})
        self.assertEqual(span["traceId"], TRACE)
        self.assertEqual(attributes(span)["nerve.outcome"], "acked")
        self.assertEqual(d["traceparent"], f"00-{TRACE}-{span['spanId']}-01")

    def test_a_replay_is_a_span(self):
        c = self.collector()
        t = topic("replayed")
        srv = self.traced_server(c, [builtin("ok", [t], "echo")])
        self.assertEqual(srv.publish(t, [{"data": i} for i in range(3)]).status, 201)
        self.wait_spans(c, "the first deliveries", count=3, **{"nerve.agent": "ok"})
        r = srv.post("/v1/replays", {"from": "-1m", "to": "now", "agents": ["ok"],
                                     "mode": "redeliver"})
        self.assertIn(r.status, (200, 201, 202), r)
        rid = r.json()["id"]
        [span] = self.wait_spans(c, "the replay span", **{"nerve.replay.id": rid})
        self.assertEqual(span["name"], "replay")
        attrs = attributes(span)
        self.assertEqual(attrs["nerve.replay.mode"], "redeliver")
        self.assertEqual(attrs["nerve.replay.state"], "done")
        self.assertEqual(attrs["nerve.replay.deliveries"], 3)
        # The redeliveries are spans of their events' traces, named by the replay.
        again = self.wait_spans(c, "the replayed deliveries", count=6, **{"nerve.agent": "ok"})
        self.assertEqual(sum(rid in attributes(s)["nerve.delivery_id"] for s in again), 3)

    def test_sampling_by_trace_id(self):
        c = self.collector()
        t = topic("sampled")
        srv = self.traced_server(c, [builtin("ok", [t], "echo")], sample_ratio="0.5")
        low = "0" * 16 + "0" * 15 + "1"  # low 64 bits tiny: sampled at 0.5
        high = "0" * 16 + "f" * 16       # low 64 bits at the top: not sampled
        r = srv.publish(t, [{"data": 1, "trace_id": high}, {"data": 2, "trace_id": low}])
        self.assertEqual(r.status, 201, r)
        kept, dropped = (e["id"] for e in reversed(r.json()["events"]))
        self.wait_spans(c, "the sampled trace's delivery",
                        **{"nerve.agent": "ok", "messaging.message.id": kept})
        time.sleep(0.3)  # several export intervals
        self.assertEqual(c.find(**{"messaging.message.id": dropped}), [])

        none = self.collector()
        srv0 = self.traced_server(none, [builtin("ok", [t], "echo")], sample_ratio="0")
        self.assertEqual(srv0.publish(t, [{"data": i} for i in range(20)]).status, 201)
        time.sleep(0.5)
        self.assertEqual(none.spans, [])
        self.assertEqual(self.metric(srv0, "nerve_tracing_spans_total", outcome="exported"), 0)

    def test_a_dead_or_slow_collector_never_holds_up_publishes(self):
        c = self.collector()
        t = topic("busy")
        srv = self.traced_server(c, [builtin("ok", [t], "noop")],
                                 otlp={"endpoint": f"http://127.0.0.1:{c.port}",
                                       "interval": "50ms", "max_queue": "100",
                                       "max_batch": "50", "timeout": "300ms"})
        self.assertEqual(srv.publish(t, [{"data": i} for i in range(10)]).status, 201)
        self.wait_spans(c, "spans while the collector is up", count=10,
                        **{"messaging.operation": "publish"})
        # The collector dies mid-run: publishes go on, the spans are counted lost.
        port = c.port
        c.close()
        for i in range(20):
            started = time.monotonic()
            r = srv.publish(t, [{"data": j} for j in range(10)])
            self.assertEqual(r.status, 201, r)
            self.assertLess(time.monotonic() - started, 1.0)
        self.wait_for(lambda: (self.metric(srv, "nerve_tracing_spans_total",
                                           outcome="failed") or 0) > 0,
                      what="failed exports counted")
        self.assertIn("tracing: the OTLP export", srv.stderr_text())
        # Back on the same port, but slower than the export timeout: the queue
        # fills, spans are dropped, and still no publish waits for them.
        back = self.collector(port)
        back.delay = 1.0
        for i in range(40):
            started = time.monotonic()
            self.assertEqual(srv.publish(t, [{"data": j} for j in range(10)]).status, 201)
            self.assertLess(time.monotonic() - started, 1.0)
        self.wait_for(lambda: (self.metric(srv, "nerve_tracing_spans_total",
                                           outcome="dropped") or 0) > 0,
                      what="spans dropped from the full queue")
        self.assertLessEqual(self.metric(srv, "nerve_tracing_queue_spans"), 100)
        back.delay = 0
        self.wait_for(lambda: self.metric(srv, "nerve_tracing_queue_spans") == 0,
                      what="the queue to drain")
        r = srv.publish(t, {"data": "after"})
        after = r.json()["events"][0]["id"]
        self.wait_spans(back, "spans once the collector is back",
                        **{"messaging.message.id": after, "messaging.operation": "publish"})
        self.assertHealthy(srv)

    def test_tracing_is_off_by_default_and_bad_settings_are_refused(self):
        srv = self.new_server()
        self.assertIsNone(self.metric(srv, "nerve_tracing_spans_total", outcome="exported"))
        for key, value, allowed in (
                ("NERVE_TRACING_OTLP_ENDPOINT", "localhost:4318", "http://HOST:PORT"),
                ("NERVE_TRACING_OTLP_ENDPOINT", "https://collector:4318", "http://HOST:PORT"),
                ("NERVE_TRACING_SAMPLE_RATIO", "1.5", "a number from 0 to 1"),
                ("NERVE_TRACING_SAMPLE_RATIO", "half", "a number from 0 to 1"),
                ("NERVE_TRACING_OTLP_MAX_QUEUE", "0", "an integer from 1")):
            res = run_nerve(["run", "--data-dir", os.path.join(self.workdir(), "never")],
                            env={key: value})
            self.assertEqual(res.returncode, 2, (key, value, res))
            [line] = res.stderr.strip().splitlines()
            self.assertIn(allowed, line)


if __name__ == "__main__":
    unittest.main()
