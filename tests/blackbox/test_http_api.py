"""Black-box tests of nerve's HTTP API (CONTRACT.md sections 4, 6 and 8)."""

import datetime
import http.client
import json
import re
import signal
import threading
import socket
import time
import unittest
import uuid

from harness import (PROBLEM_TYPE, Server, ServerTestCase, SharedServerTestCase, exchange, parse_raw_response,
                     read_until_closed)

TIME_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z$")
UUID7_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
TRACE_RE = re.compile(r"^[0-9a-f]{32}$")
PUBLISHED_FIELDS = {"id", "topic", "partition", "offset", "time", "duplicate"}


def new_topic(prefix="t"):
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def new_id(prefix="e"):
    return f"{prefix}-{uuid.uuid4().hex}"


class SharedServerTest(SharedServerTestCase):
    """Tests that can share one default-configured server."""

    def publish_ok(self, topic, body):
        r = self.srv.publish(topic, body)
        self.assertEqual(r.status, 201, r)
        self.assertEqual(r.content_type, "application/json", r)
        events = r.json()["events"]
        self.assertEqual(len(events), len(body) if isinstance(body, list) else 1, r)
        for e in events:
            self.assertEqual(set(e), PUBLISHED_FIELDS, e)
            self.assertEqual(e["topic"], topic)
            self.assertRegex(e["time"], TIME_RE)
            self.assertIsInstance(e["partition"], int)
            self.assertIsInstance(e["offset"], int)
            self.assertIsInstance(e["duplicate"], bool)
        return events

    def all_events(self, topic):
        parts = self.srv.topics()[topic]["partitions"]
        out = {}
        for p in range(parts):
            out[p] = self.srv.read_partition(topic, p)
        return out


class HealthTest(SharedServerTest):

    def test_health(self):
        r = self.srv.get("/health")
        self.assertEqual(r.status, 200)
        self.assertEqual(r.content_type, "application/json")
        self.assertEqual(r.json(), {"status": "healthy"})

    def test_livez_and_readyz(self):
        r = self.srv.get("/livez")
        self.assertEqual((r.status, r.content_type), (200, "application/json"))
        self.assertEqual(r.json(), {"status": "alive"})
        r = self.srv.get("/readyz")
        self.assertEqual((r.status, r.content_type), (200, "application/json"))
        self.assertEqual(r.json(), {"status": "ready"})

    def test_health_detailed_shape(self):
        r = self.srv.get("/health/detailed")
        self.assertEqual((r.status, r.content_type), (200, "application/json"))
        body = r.json()
        self.assertEqual(set(body), {"status", "state", "runner_id", "node_id", "version",
                                     "uptime_s", "indicators"})
        self.assertEqual(body["status"], "healthy")
        self.assertEqual(body["state"], "READY")  # no agents configured
        self.assertRegex(body["runner_id"], UUID7_RE)
        self.assertIsInstance(body["node_id"], str)
        self.assertTrue(body["node_id"])
        self.assertRegex(body["version"], r"^\d+\.\d+\.\d+")
        self.assertIsInstance(body["uptime_s"], (int, float))
        self.assertGreaterEqual(body["uptime_s"], 0)
        names = [i["name"] for i in body["indicators"]]
        self.assertEqual(names, ["database", "event_queue", "dlq", "agents", "cluster"])
        for ind in body["indicators"]:
            self.assertEqual(ind["status"], "healthy", ind)
        db = body["indicators"][0]
        self.assertIsInstance(db["latency_ms"], (int, float))
        self.assertGreaterEqual(db["latency_ms"], 0)
        # Measured when asked: a second call gives a fresh uptime, never smaller.
        again = self.srv.get("/health/detailed").json()
        self.assertGreaterEqual(again["uptime_s"], body["uptime_s"])
        self.assertEqual(again["runner_id"], body["runner_id"])
        self.assertEqual(again["node_id"], body["node_id"])

    def test_head_health_has_no_body(self):
        r = self.srv.request("HEAD", "/health")
        self.assertEqual(r.status, 200)
        self.assertEqual(r.body, b"")
        self.assertEqual(r.headers.get("content-length"), str(len(b'{"status":"healthy"}')))


class PublishTest(SharedServerTest):

    def test_publish_one_event_with_every_field_and_read_it_back(self):
        topic = new_topic("orders")
        event = {
            "id": new_id(), "key": "customer-42", "type": "order.created", "source": "shop",
            "correlation_id": "corr-1", "causation_id": "cause-1",
            "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736",
            "headers": {"x-tenant": "acme", "empty": ""},
            "data": {"total": 12.5, "items": [1, "two", None, True], "note": "h\u00e9llo \u2603"},
        }
        [pub] = self.publish_ok(topic, event)
        self.assertEqual(pub["id"], event["id"])
        self.assertEqual(pub["offset"], 0)
        self.assertIn(pub["partition"], range(4))
        self.assertFalse(pub["duplicate"])
        expected = {k: v for k, v in event.items()}
        expected.update(topic=topic, partition=pub["partition"], offset=0, time=pub["time"])

        r = self.srv.get(f"/v1/events/{event['id']}")
        self.assertEqual((r.status, r.content_type), (200, "application/json"))
        self.assertEqual(r.json(), {"event": expected, "deliveries": []})

        r = self.srv.get(f"/v1/topics/{topic}/events?partition={pub['partition']}")
        self.assertEqual(r.status, 200)
        self.assertEqual(r.json(), {"topic": topic, "events": [expected], "next_offset": 1})

        r = self.srv.get(f"/v1/topics/{topic}/events")
        self.assertEqual(r.status, 200)
        self.assertEqual(r.json(), {"topic": topic, "events": [expected]})

    def test_generated_id_and_trace_id(self):
        topic = new_topic()
        [pub] = self.publish_ok(topic, {"data": None})
        self.assertRegex(pub["id"], UUID7_RE)
        stored = self.srv.get(f"/v1/events/{pub['id']}").json()["event"]
        self.assertRegex(stored["trace_id"], TRACE_RE)
        self.assertNotEqual(stored["trace_id"], "0" * 32)
        self.assertIsNone(stored["data"])
        self.assertNotIn("key", stored)
        self.assertEqual(set(stored), {"id", "topic", "partition", "offset", "time", "trace_id",
                                       "data"})
        # UUIDv7 carries the creation time in ms: close to now.
        ms = int(pub["id"].replace("-", "")[:12], 16)
        self.assertLess(abs(ms / 1000 - time.time()), 300)

    def test_data_is_stored_as_written_on_one_line(self):
        topic = new_topic()
        body = (b'{\n  "type" : "caf\\u00e9",\r\n  "data": {"b": 1.50, "a": "x\\ny",\n'
                b'    "c": [1, 2]}\n}\n')
        r = self.srv.publish(topic, body, headers={"Content-Type": "application/json"})
        self.assertEqual(r.status, 201, r)
        [pub] = r.json()["events"]
        raw = self.srv.get(f"/v1/events/{pub['id']}").body
        self.assertNotIn(b"\n", raw)
        self.assertNotIn(b"\r", raw)
        # The data's bytes as written; with line breaks, without the white
        # space between tokens.
        self.assertIn(b'"data":{"b":1.50,"a":"x\\ny","c":[1,2]}', raw)
        event = json.loads(raw)["event"]
        self.assertEqual(event["type"], "caf\u00e9")
        self.assertEqual(event["data"], {"b": 1.5, "a": "x\ny", "c": [1, 2]})
        [stored] = self.srv.read_partition(topic, pub["partition"])
        self.assertEqual(stored["data"], event["data"])

    def test_generated_id_carries_the_append_time_and_dedupes_when_sent_again(self):
        topic = new_topic()
        [pub] = self.publish_ok(topic, {"data": 1})
        ms = int(pub["id"].replace("-", "")[:12], 16)
        t = datetime.datetime.strptime(pub["time"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(
            tzinfo=datetime.timezone.utc)
        self.assertEqual(ms, (int(t.timestamp()) * 1000) + t.microsecond // 1000)
        [again] = self.publish_ok(topic, {"id": pub["id"], "data": 2})
        self.assertTrue(again["duplicate"])
        self.assertEqual((again["partition"], again["offset"]), (pub["partition"], pub["offset"]))
        r = self.srv.publish(new_topic(), {"id": pub["id"], "data": 3})
        self.assertEqual(r.status, 409, r)

    def test_publish_array_keeps_request_order_in_the_answer(self):
        topic = new_topic()
        body = [{"data": {"n": n}} for n in range(7)]
        pubs = self.publish_ok(topic, body)
        self.assertEqual(len({p["id"] for p in pubs}), 7)
        for n, p in enumerate(pubs):
            got = self.srv.get(f"/v1/events/{p['id']}").json()["event"]
            self.assertEqual(got["data"], {"n": n})
            self.assertEqual((got["partition"], got["offset"], got["time"]),
                             (p["partition"], p["offset"], p["time"]))
        self.assertEqual(self.srv.topics()[topic]["events"], 7)

    def test_data_of_every_json_type_round_trips(self):
        topic = new_topic()
        values = [None, True, False, 0, -1, 9007199254740993, 1.5, -2.25e-10, "", "s",
                  "\u0000\u001f\"\\/\U0001F600", [], {}, {"a": {"b": [{"c": []}]}},
                  [1, [2, [3, [4]]]]]
        pubs = self.publish_ok(topic, [{"data": v} for v in values])
        for v, p in zip(values, pubs):
            got = self.srv.get(f"/v1/events/{p['id']}").json()["event"]["data"]
            self.assertEqual(got, v)
            self.assertEqual(type(got), type(v))

    def test_same_key_same_partition_dense_increasing_offsets(self):
        topic = new_topic()
        keys = [f"k{i}" for i in range(6)]
        seq = {k: 0 for k in keys}
        answers = []
        for round_ in range(5):
            # Singles and arrays mixed; arrays mix keys.
            for k in keys[:3]:
                answers += self.publish_ok(topic, {"key": k, "data": {"k": k, "n": seq[k]}})
                seq[k] += 1
            batch = []
            for k in keys[3:] + keys[:2]:
                batch.append({"key": k, "data": {"k": k, "n": seq[k]}})
                seq[k] += 1
            answers += self.publish_ok(topic, batch)
        stored = self.all_events(topic)
        partition_of = {}
        for p, events in stored.items():
            self.assertEqual([e["offset"] for e in events], list(range(len(events))),
                             f"offsets of partition {p} are not dense from 0")
            times = [e["time"] for e in events]
            self.assertEqual(times, sorted(times), "append times go backwards")
            last = {}
            for e in events:
                k = e["key"]
                partition_of.setdefault(k, set()).add(p)
                self.assertGreater(e["data"]["n"], last.get(k, -1), "key order broken")
                last[k] = e["data"]["n"]
        for k in keys:
            self.assertEqual(len(partition_of[k]), 1, f"key {k} spread over {partition_of[k]}")
        self.assertEqual(sum(len(v) for v in stored.values()), sum(seq.values()))
        self.assertEqual(len(answers), sum(seq.values()))
        by_coords = {(e["partition"], e["offset"]): e for v in stored.values() for e in v}
        for a in answers:
            self.assertEqual(by_coords[(a["partition"], a["offset"])]["id"], a["id"])

    def test_topic_listing_counts(self):
        topic = new_topic()
        self.publish_ok(topic, [{"key": "a", "data": 1}, {"key": "a", "data": 2},
                                {"key": "a", "data": 3}])
        t = self.srv.topics()[topic]
        self.assertEqual(t["partitions"], 4)
        self.assertEqual(t["events"], 3)
        self.assertIsInstance(t["bytes"], int)
        stats = {s["partition"]: s for s in t["partition_stats"]}
        self.assertEqual(sorted(stats), [0, 1, 2, 3])
        used = [s for s in stats.values() if s["events"]]
        self.assertEqual(len(used), 1)
        self.assertEqual((used[0]["events"], used[0]["first_offset"], used[0]["last_offset"]),
                         (3, 0, 2))
        for s in stats.values():
            if not s["events"]:
                self.assertIsNone(s["last_offset"])

    def test_paging_with_from_offset_and_limit(self):
        topic = new_topic()
        pubs = self.publish_ok(topic, [{"key": "same", "data": n} for n in range(25)])
        p = pubs[0]["partition"]
        self.assertEqual([x["offset"] for x in pubs], list(range(25)))
        seen = []
        offset = 0
        nexts = []
        while True:
            r = self.srv.get(f"/v1/topics/{topic}/events?partition={p}&from_offset={offset}"
                             "&limit=10")
            self.assertEqual(r.status, 200)
            body = r.json()
            nexts.append(body["next_offset"])
            if not body["events"]:
                break
            seen += [e["data"] for e in body["events"]]
            offset = body["next_offset"]
        self.assertEqual(seen, list(range(25)))
        self.assertEqual(nexts, [10, 20, 25, 25])
        r = self.srv.get(f"/v1/topics/{topic}/events?partition={p}&from_offset=1000")
        self.assertEqual(r.json(), {"topic": topic, "events": [], "next_offset": 1000})
        # Without a partition: every partition, at most `limit` events.
        r = self.srv.get(f"/v1/topics/{topic}/events?limit=5")
        self.assertEqual([e["data"] for e in r.json()["events"]], [0, 1, 2, 3, 4])
        self.assertNotIn("next_offset", r.json())

    # BUG: GET /v1/topics/{t}/events?partition=P&limit=0 answers without
    # next_offset; the loop in actors/node.cpp read_events (~lines 410-418) never
    # runs for limit 0, so next_offset is never set.
    def test_limit_zero_with_partition_still_gives_next_offset(self):
        topic = new_topic()
        pubs = self.publish_ok(topic, [{"key": "z", "data": n} for n in range(3)])
        p = pubs[0]["partition"]
        r = self.srv.get(f"/v1/topics/{topic}/events?partition={p}&from_offset=1&limit=0")
        if r.status == 400:
            self.assertProblem(r, 400)
            return
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json(), {"topic": topic, "events": [], "next_offset": 1})

    def test_topic_field_equal_to_url_topic_is_accepted(self):
        topic = new_topic()
        [pub] = self.publish_ok(topic, {"topic": topic, "data": 1})
        self.assertEqual(pub["topic"], topic)

    def test_longest_topic_and_id_and_fields_are_accepted(self):
        topic = "a" * 255
        ev = {"id": "I" * 128, "key": "k" * 1024, "type": "t" * 255, "source": "s" * 255,
              "correlation_id": "c" * 128, "causation_id": "d" * 128,
              "headers": {f"h{i}": "v" * 4096 for i in range(64)}, "data": 0}
        ev["headers"]["n" * 128] = ev["headers"].pop("h0")
        [pub] = self.publish_ok(topic, ev)
        got = self.srv.get(f"/v1/events/{ev['id']}").json()["event"]
        for k in ("id", "key", "type", "source", "correlation_id", "causation_id", "headers"):
            self.assertEqual(got[k], ev[k], k)
        self.assertEqual(got["topic"], topic)
        odd = "A-z_0.9:~@+=b"
        [pub] = self.publish_ok(new_topic(), {"id": odd, "data": 0})
        self.assertEqual(pub["id"], odd)
        r = self.srv.get("/v1/events/" + odd.replace("+", "%2B"))
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json()["event"]["id"], odd)


    # BUG: '+' in a path segment is decoded as a space, so an event whose id
    # holds '+' (allowed by the id rules) cannot be fetched by its literal id.
    # Request: publish {"id":"x+y",...}; GET /v1/events/x+y. Expected 200 (in a
    # URI path '+' is a literal, RFC 3986 section 3.3; only form-encoded query
    # strings use '+' for space). Actual 404. Cause: http/routes.cpp
    # percent_decode (~line 55, "else if (s[i] == '+')") is applied to path
    # segments as well as to the query.
    def test_plus_in_an_id_is_literal_in_the_path(self):
        eid = f"plus+{uuid.uuid4().hex}"
        self.publish_ok(new_topic(), {"id": eid, "data": 1})
        r = self.srv.get(f"/v1/events/{eid}")
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json()["event"]["id"], eid)


class AnswerTextTest(SharedServerTest):
    """A keep-alive answer is written as text directly (no Beast message);
    it must be what Beast writes for the same answer on a closing
    connection, but for that one's Connection field."""

    def answer_text(self, request, close):
        """The bytes of the answer to `request` (bytes without the blank line
        ending the head), on a keep-alive connection that first had another
        request answered (so the second is read from the buffer), or on a
        closing one."""
        head, _, body = request.partition(b"\r\n\r\n")
        if close:
            s = self.srv.connect()
            try:
                s.sendall(head + b"\r\nConnection: close\r\n\r\n" + body)
                data, how = read_until_closed(s, 5)
            finally:
                s.close()
            self.assertEqual(how, "eof")
            return data
        s = self.srv.connect()
        try:
            s.sendall(b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n" + request)
            data = b""
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                s.settimeout(max(0.01, deadline - time.monotonic()))
                data += s.recv(65536)
                first_end = data.find(b"\r\n\r\n")
                if first_end < 0:
                    continue
                n = int(re.search(rb"Content-Length: (\d+)", data[:first_end]).group(1))
                second = data[first_end + 4 + n:]
                end = second.find(b"\r\n\r\n")
                if end >= 0:
                    m = int(re.search(rb"Content-Length: (\d+)", second[:end]).group(1))
                    if len(second) >= end + 4 + m:
                        self.assertEqual(len(second), end + 4 + m, "bytes after the answer")
                        return second
        finally:
            s.close()
        self.fail("no second answer within 5 s")

    def assertSameAnswer(self, request, same_body=True):
        kept = self.answer_text(request, close=False)
        closed = self.answer_text(request, close=True)
        kept_head, _, kept_body = kept.partition(b"\r\n\r\n")
        closed_head, _, closed_body = closed.partition(b"\r\n\r\n")
        closed_lines = [line for line in closed_head.split(b"\r\n") if line != b"Connection: close"]
        self.assertEqual(len(closed_lines) + 1, len(closed_head.split(b"\r\n")), closed_head)
        if same_body:
            self.assertEqual(kept_head.split(b"\r\n"), closed_lines)
            self.assertEqual(kept_body, closed_body)
        else:  # the same fields in the same order; the values may differ
            names = lambda lines: [line.split(b":")[0] for line in lines]  # noqa: E731
            self.assertEqual(names(kept_head.split(b"\r\n")), names(closed_lines))
            self.assertEqual(kept_head.split(b"\r\n")[0], closed_lines[0])
        return kept

    def test_publish_answer(self):
        body = b'{"data":{"n":1},"type":"t.x"}'
        kept = self.assertSameAnswer(
            (f"POST /v1/topics/{new_topic()}/events HTTP/1.1\r\nHost: x\r\n"
             f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode()
            + body, same_body=False)
        self.assertTrue(kept.startswith(b"HTTP/1.1 201 Created\r\nServer: nerve/"), kept)

    def test_answers_with_fields_of_their_own_and_problems(self):
        topic = new_topic()
        self.publish_ok(topic, {"data": 1})
        for request in (
                # 200 with X-Nerve-Index (a field of the route's own)
                f"GET /v1/topics/{topic}/groups HTTP/1.1\r\nHost: x\r\n\r\n",
                "GET /health HTTP/1.1\r\nHost: x\r\n\r\n",
                # problems (not written directly): 404, 405 with Allow
                "GET /v1/events/no-such-event HTTP/1.1\r\nHost: x\r\n\r\n",
                "DELETE /health HTTP/1.1\r\nHost: x\r\n\r\n"):
            with self.subTest(request=request.split("\r\n")[0]):
                self.assertSameAnswer(request.encode())

    def test_head_answer_has_no_body(self):
        # Beast's message answers a HEAD: its length, no body; the next answer
        # follows the head at once.
        s = self.srv.connect()
        try:
            s.sendall(b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\nHEAD /health HTTP/1.1\r\nHost: x\r\n\r\n"
                      b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            data = b""
            deadline = time.monotonic() + 5
            while data.count(b"HTTP/1.1 200 OK") < 3 or not data.endswith(b'"healthy"}'):
                self.assertLess(time.monotonic(), deadline, data)
                s.settimeout(max(0.01, deadline - time.monotonic()))
                data += s.recv(65536)
        finally:
            s.close()
        answers = data.split(b"HTTP/1.1 200 OK\r\n")[1:]
        self.assertEqual(len(answers), 3, data)
        length = int(re.search(rb"Content-Length: (\d+)", answers[1]).group(1))
        self.assertEqual(length, len(b'{"status":"healthy"}'))
        self.assertTrue(answers[1].endswith(b"\r\n\r\n"), answers[1])
        self.assertTrue(answers[2].endswith(b'\r\n\r\n{"status":"healthy"}'), answers[2])


class IdempotencyTest(SharedServerTest):

    def test_same_id_again_is_a_duplicate_with_the_original_coordinates(self):
        topic = new_topic()
        eid = new_id()
        [first] = self.publish_ok(topic, {"id": eid, "key": "k", "data": "first"})
        self.assertFalse(first["duplicate"])
        for body in ({"id": eid, "key": "k", "data": "first"},
                     {"id": eid, "key": "other-key", "data": "second", "type": "changed"}):
            [again] = self.publish_ok(topic, body)
            self.assertTrue(again["duplicate"])
            for f in ("id", "topic", "partition", "offset", "time"):
                self.assertEqual(again[f], first[f], f)
        stored = self.srv.get(f"/v1/events/{eid}").json()["event"]
        self.assertEqual(stored["data"], "first")
        self.assertNotIn("type", stored)
        self.assertEqual(self.srv.topics()[topic]["events"], 1)

    def test_duplicate_inside_one_array(self):
        topic = new_topic()
        eid = new_id()
        pubs = self.publish_ok(topic, [{"id": eid, "data": 1}, {"data": 2},
                                       {"id": eid, "data": 3}])
        self.assertEqual([p["duplicate"] for p in pubs], [False, False, True])
        for f in ("id", "partition", "offset", "time"):
            self.assertEqual(pubs[2][f], pubs[0][f])
        self.assertEqual(self.srv.get(f"/v1/events/{eid}").json()["event"]["data"], 1)
        self.assertEqual(self.srv.topics()[topic]["events"], 2)

    def test_array_mixing_earlier_duplicates_and_new_events(self):
        topic = new_topic()
        old = [new_id() for _ in range(3)]
        first = self.publish_ok(topic, [{"id": i, "key": i, "data": "old"} for i in old])
        fresh = [new_id() for _ in range(3)]
        body = [{"id": i, "key": i, "data": "new"} for i in fresh]
        body += [{"id": i, "key": i, "data": "new"} for i in old]
        pubs = self.publish_ok(topic, body)
        self.assertEqual([p["duplicate"] for p in pubs], [False] * 3 + [True] * 3)
        for a, b in zip(first, pubs[3:]):
            self.assertEqual((a["partition"], a["offset"], a["time"]),
                             (b["partition"], b["offset"], b["time"]))
        self.assertEqual(self.srv.topics()[topic]["events"], 6)
        ids = [e["id"] for v in self.all_events(topic).values() for e in v]
        self.assertEqual(sorted(ids), sorted(old + fresh))

    # BUG: when the two copies of one id in one array have different keys
    # (so different partitions), whichever partition actor runs first wins:
    # about a third of the time the *later* array element is stored and the
    # first one is reported as duplicate:true. Cause: the id reservation in
    # persistence/event_log.cpp partition_writer::append (~lines 93-150) is
    # first-come across partition actors, not by position in the request;
    # actors/node.cpp publish_impl (~line 517) sends per-partition jobs that
    # race.
    def test_duplicate_inside_one_array_across_partitions_first_wins(self):
        topic = new_topic()
        wrong = []
        for n in range(30):
            eid = new_id()
            pubs = self.publish_ok(topic, [{"id": eid, "key": "a", "data": "first"},
                                           {"id": eid, "key": "b", "data": "second"}])
            stored = self.srv.get(f"/v1/events/{eid}").json()["event"]
            if ([p["duplicate"] for p in pubs] != [False, True]
                    or stored["data"] != "first" or stored["key"] != "a"):
                wrong.append((n, [p["duplicate"] for p in pubs], stored["data"]))
        self.assertEqual(self.srv.topics()[topic]["events"], 30)
        self.assertEqual(wrong, [], "the later copy won")

    def test_same_id_on_another_topic_is_409(self):
        t1, t2 = new_topic(), new_topic()
        eid = new_id()
        [first] = self.publish_ok(t1, {"id": eid, "data": 1})
        r = self.srv.publish(t2, {"id": eid, "data": 2})
        self.assertProblem(r, 409, eid)
        r = self.srv.publish(t2, [{"id": eid, "data": 2}])
        self.assertProblem(r, 409)
        stored = self.srv.get(f"/v1/events/{eid}").json()["event"]
        self.assertEqual((stored["topic"], stored["offset"], stored["data"]), (t1, 0, 1))
        self.assertEqual(self.srv.topics().get(t2, {"events": 0})["events"], 0)
        # And the original topic still treats it as a duplicate.
        [again] = self.publish_ok(t1, {"id": eid, "data": 3})
        self.assertTrue(again["duplicate"])

    # BUG: a publish answered 409 still appends the other events of the
    # array. Request: POST /v1/topics/B/events [{"id":"new1","data":1},
    # {"id":"X","data":2}] where X lives on topic A. Expected: 409 and
    # nothing appended (a 4xx has no effect; a client retrying without X and
    # without ids would otherwise store new1's payload twice). Actual: 409 but
    # new1 is stored. Cause: persistence/event_log.cpp partition_writer::append
    # (~lines 165-190) writes every non-conflicting event of the batch, and
    # actors/node.cpp publish_impl (~line 587) only turns the conflict into
    # the request's error after the append.
    def test_409_appends_nothing(self):
        t1, t2 = new_topic(), new_topic()
        taken = new_id()
        self.publish_ok(t1, {"id": taken, "data": 0})
        fresh = new_id()
        r = self.srv.publish(t2, [{"id": fresh, "data": 1}, {"id": taken, "data": 2},
                                  {"data": 3}])
        self.assertProblem(r, 409, taken)
        self.assertEqual(self.srv.get(f"/v1/events/{fresh}").status, 404)
        self.assertEqual(self.srv.topics().get(t2, {"events": 0})["events"], 0)


class BadInputTest(SharedServerTest):
    """Every bad request gets its exact status as problem+json, nothing is stored."""

    def bad(self, topic, body, status=400, contains=None):
        r = self.srv.publish(topic, body)
        return self.assertProblem(r, status, contains)

    def assertNothingStored(self, topic):
        r = self.srv.get(f"/v1/topics/{topic}/events")
        self.assertProblem(r, 404)
        self.assertNotIn(topic, self.srv.topics())

    def test_malformed_json(self):
        topic = new_topic()
        bodies = [b"", b" ", b"{", b'{"data":', b'{"data":1', b"not json", b'{"data":1}x',
                  b'{"data":1}{"data":2}', b"{'data':1}", b'{"data":01}', b'{"data":NaN}',
                  b'{"data":Infinity}', b'{"data":1e999}', b'{"data":-1e999}',
                  b'{"data":"\xff"}', b'{"data":"\xc3"}',
                  b'{"data":"a\x01b"}', b'{"data":[1,]}', b'{"data":1,}', b'{data:1}',
                  b'{"data":"\\x41"}', b'{"data":"\\ud800"}', b"\x00", b"[",
                  b"[" * 100000, b'{"a":' * 10000]
        for body in bodies:
            with self.subTest(body=body[:40]):
                p = self.bad(topic, body)
                self.assertTrue(p["type"].endswith("invalid-json"), p)
        self.assertNothingStored(topic)

    # BUG: a NUL byte after a complete JSON value ends the parse and the rest
    # of the body is ignored. Request: POST /v1/topics/T/events with body
    # b'{"data":1}\x00{"junk'. Expected 400 invalid-json (the body is not
    # JSON). Actual 201, the event is stored. Cause: nlohmann's lexer treats
    # '\0' as end of input (lexer.hpp scan(), "case '\0'"), and
    # http/json_input.cpp parse_json (~line 152) passes the whole body to it
    # without refusing NUL bytes.
    def test_nul_byte_does_not_end_the_body(self):
        topic = new_topic()
        for body in (b'{"data":1}\x00{"junk', b'[{"data":1}]\x00]]]', b'{"data":2}\x00'):
            with self.subTest(body=body):
                p = self.bad(topic, body)
                self.assertTrue(p["type"].endswith("invalid-json"), p)
        self.assertNothingStored(topic)

    def test_nesting_limit(self):
        topic = new_topic()
        deep = 1
        for _ in range(63):
            deep = [deep]
        self.publish_ok(topic, {"data": deep})  # 64 levels in all
        self.bad(topic, {"data": [deep]}, contains="nesting")
        self.assertEqual(self.srv.topics()[topic]["events"], 1)

    def test_body_of_the_wrong_shape(self):
        topic = new_topic()
        for body in (b"1", b'"s"', b"null", b"true", b"[1]", b'[{"data":1}, 2]', b"[[]]",
                     b'[{"data":1},[{"data":2}]]', b'[null]'):
            with self.subTest(body=body):
                self.bad(topic, body)
        self.bad(topic, [], contains="empty")
        self.assertNothingStored(topic)

    def test_every_field_with_a_wrong_type_or_value(self):
        topic = new_topic()
        cases = {
            "id": [1, 1.5, None, True, [], {}, "", "a b", "a/b", "a#b", "\u00e9", "x" * 129,
                   "a\nb", "%41"],
            "key": [1, None, False, [], {}, "", "k" * 1025],
            "type": [1, None, [], {}, "", "t" * 256],
            "source": [1, None, [], "", "s" * 256],
            "correlation_id": [1, None, {}, "", "c" * 129],
            "causation_id": [1, None, [], "", "c" * 129],
            "trace_id": [1, None, "", "0" * 32, "A" * 32, "a" * 31, "a" * 33, "g" * 32,
                         "4BF92F3577B34DA6A3CE929D0E0E4736"],
            "headers": [1, "x", [], None, ["a"], {"a": 1}, {"a": None}, {"a": {}},
                        {"": "v"}, {"h" * 129: "v"}, {"a": "v" * 4097},
                        {f"h{i}": "v" for i in range(65)}],
            "topic": ["other", 1, None, ""],
        }
        for field, values in cases.items():
            for value in values:
                with self.subTest(field=field, value=str(value)[:40]):
                    p = self.bad(topic, {field: value, "data": 1})
                    self.assertTrue(p["type"].endswith("invalid-event"), p)
                    self.assertIn(field.rstrip("s"), p["detail"])
        self.assertNothingStored(topic)

    def test_unknown_field_and_missing_data(self):
        topic = new_topic()
        self.bad(topic, {"data": 1, "colour": "red"}, contains="colour")
        self.bad(topic, {"data": 1, "Data": 2}, contains="Data")
        self.bad(topic, {"partition": 1, "data": 1}, contains="partition")
        self.bad(topic, {"offset": 1, "data": 1}, contains="offset")
        self.bad(topic, {"time": "2026-01-01T00:00:00Z", "data": 1}, contains="time")
        self.bad(topic, {}, contains="data")
        self.bad(topic, {"key": "k"}, contains="data")
        # One bad element spoils the whole array and names its index.
        self.bad(topic, [{"data": 1}, {"data": 2}, {"nodata": 3}], contains="event 2")
        self.assertNothingStored(topic)

    def test_too_many_events_in_one_request(self):
        topic = new_topic()
        self.bad(topic, [{"data": i} for i in range(1001)], contains="1000")
        self.assertNothingStored(topic)
        pubs = self.publish_ok(topic, [{"data": i} for i in range(1000)])
        self.assertEqual(len(pubs), 1000)
        self.assertEqual(self.srv.topics()[topic]["events"], 1000)

    def test_invalid_topic_names(self):
        bad = ["a..b", ".a", "a.", ".", "a%20b", "a%2Fb", "%C3%A9t", "a*b", "a>b", "a%00b",
               "a,b", "a;b", "x" * 256, "a.b..c"]
        for t in bad:
            with self.subTest(topic=t[:40]):
                p = self.bad(t, {"data": 1})
                self.assertTrue(p["type"].endswith("invalid-topic"), p)
                r = self.srv.get(f"/v1/topics/{t}/events")
                self.assertProblem(r, 404)
        p = self.bad("a%2", {"data": 1})
        p = self.bad("a%zz", {"data": 1})
        for t in self.srv.topics():
            self.assertNotIn("..", t)

    def test_valid_topic_names(self):
        suffix = uuid.uuid4().hex[:8]
        for path, name in (("a", "a"), ("A-b_c", "A-b_c"), ("orders.created", "orders.created"),
                           ("x1.y-2.z_3", "x1.y-2.z_3"), ("0", "0"), ("p%2Eq", "p.q"),
                           ("a:b.c:d", "a:b.c:d"), ("p%3Aq", "p:q")):
            with self.subTest(topic=path):
                r = self.srv.publish(path + suffix, {"data": 1})
                self.assertEqual(r.status, 201, r)
                self.assertEqual(r.json()["events"][0]["topic"], name + suffix)
                self.assertIn(name + suffix, self.srv.topics())

    def test_get_event_with_unknown_or_invalid_id(self):
        for eid in (new_id(), "no-such-event", "a%20b", "x" * 129, "%C3%A9", "a%2Fb"):
            with self.subTest(id=eid[:40]):
                self.assertProblem(self.srv.get(f"/v1/events/{eid}"), 404)
        self.assertProblem(self.srv.get("/v1/events/%zz"), 400)

    def test_bad_query_parameters(self):
        topic = new_topic()
        self.publish_ok(topic, {"data": 1})
        for q in ("partition=-1", "partition=abc", "partition=1.5", "partition=1024",
                  "partition=4", "partition=99999999999999999999", "from_offset=-1",
                  "from_offset=x", "from_offset=99999999999999999999",
                  "from_offset=9223372036854775808", "limit=1001", "limit=-5", "limit=ten",
                  "limit=1e3", "partition=%201", "unknown=1", "partition=%ZZ", "Partition=1"):
            with self.subTest(query=q):
                r = self.srv.get(f"/v1/topics/{topic}/events?{q}")
                p = self.assertProblem(r, 400)
                self.assertIn(q.split("=")[0], p["detail"])
        for q in ("partition=3", "from_offset=9223372036854775807", "limit=1000", "limit="):
            with self.subTest(query=q):
                self.assertEqual(self.srv.get(f"/v1/topics/{topic}/events?{q}").status, 200)
        self.assertProblem(self.srv.get(f"/v1/topics/{new_topic()}/events"), 404)

    def test_a_misspelled_or_malformed_filter_never_widens_to_everything(self):
        for path in ("/v1/dlq?agnet=web", "/v1/dlq?agent=%ZZ", "/v1/metrics?agent=%ZZ",
                     "/v1/metrics?topik=t", "/v1/replays/x/history?agent=a&limt=5"):
            with self.subTest(path=path):
                p = self.assertProblem(self.srv.get(path), 400)
                self.assertIn("query parameter", p["detail"])
        for path in ("/v1/dlq?agent=", "/v1/dlq?topic=", "/v1/metrics?agent=",
                     "/v1/dlq?agent=a&agent=", "/v1/topics/t/events?limit=1&limit=2"):
            with self.subTest(path=path):
                p = self.assertProblem(self.srv.get(path), 400)
                self.assertIn("query parameter", p["detail"])
        for q in ("agent=%ZZ", "agnet=web", "topic=a&x=1", "agent=", "topic="):
            with self.subTest(retry_all=q):
                p = self.assertProblem(self.srv.post(f"/v1/dlq/retry-all?{q}", None), 400)
                self.assertIn("query parameter", p["detail"])
        self.assertEqual(self.srv.get("/v1/dlq?agent=web&topic=t&limit=5").status, 200)
        for cursor in ("garbage", "dlq-XYZ", "dlq-0123456789abcdeg", "dlq-0123456789abcdef0"):
            with self.subTest(cursor=cursor):
                p = self.assertProblem(self.srv.get(f"/v1/dlq?cursor={cursor}"), 400)
                self.assertIn("cursor", p["detail"])
        self.assertEqual(self.srv.get("/v1/dlq?cursor=dlq-0123456789abcdef").status, 200)

    def test_a_literal_route_is_not_taken_for_an_id(self):
        # /v1/dlq/retry-all is POST only; it is not the DLQ entry "retry-all".
        for method in ("GET", "DELETE", "PUT"):
            with self.subTest(method=method):
                r = self.srv.request(method, "/v1/dlq/retry-all")
                self.assertProblem(r, 405)
                self.assertEqual(r.headers.get("allow"), "POST", r)
        self.assertProblem(self.srv.get("/v1/dlq/dlq-nosuch"), 404)

    def test_unknown_routes_are_404(self):
        for path in ("/", "/nope", "/v1", "/v1/", "/v1/topics/t", "/v1/topics/t/events/x",
                     "/v2/topics", "/v1/topics//events", "/healthz", "/v1/events",
                     "/v1/events/a/b", "/health/detailed/x"):
            for method in ("GET", "POST"):
                with self.subTest(path=path, method=method):
                    self.assertProblem(self.srv.request(method, path), 404)

    def test_wrong_method_is_405_with_allow(self):
        cases = {
            ("DELETE", "/health"): {"GET"},
            ("POST", "/health"): {"GET"},
            ("POST", "/livez"): {"GET"},
            ("PUT", "/readyz"): {"GET"},
            ("POST", "/v1/topics"): {"GET"},
            ("PUT", "/v1/topics/t/events"): {"GET", "POST"},
            ("DELETE", "/v1/topics/t/events"): {"GET", "POST"},
            ("PATCH", "/v1/events/x"): {"GET"},
            ("POST", "/v1/events/x"): {"GET"},
        }
        for (method, path), allowed in cases.items():
            with self.subTest(method=method, path=path):
                r = self.srv.request(method, path, body=b"{}" if method != "DELETE" else None)
                self.assertProblem(r, 405)
                self.assertIn("allow", r.headers)
                self.assertEqual({m.strip() for m in r.headers["allow"].split(",")}, allowed)

    def test_oversized_headers_are_431(self):
        r = self.srv.get("/health", headers={"X-Big": "a" * 9000})
        self.assertProblem(r, 431)
        r = self.srv.get("/health?" + "q" * 9000)
        self.assertProblem(r, 431)
        r = self.srv.get("/health", headers={f"X-H{i}": "v" * 100 for i in range(100)})
        self.assertProblem(r, 431)
        r = self.srv.get("/health", headers={"X-Fine": "a" * 4000})
        self.assertEqual(r.status, 200)

    def test_default_body_limit_is_one_mebibyte(self):
        topic = new_topic()
        prefix, suffix = b'{"data":"', b'"}'
        body = prefix + b"x" * (1048576 - len(prefix) - len(suffix)) + suffix
        self.assertEqual(len(body), 1048576)
        [pub] = self.publish_ok(topic, body)
        got = self.srv.get(f"/v1/events/{pub['id']}").json()["event"]["data"]
        self.assertEqual(len(got), 1048576 - len(prefix) - len(suffix))
        body = prefix + b"x" * (1048577 - len(prefix) - len(suffix)) + suffix
        head = (f"POST /v1/topics/{topic}/events HTTP/1.1\r\nHost: x\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode()
        r, how = exchange(self.srv.host, self.srv.port, head + body)
        self.assertIsNotNone(r, f"no answer ({how})")
        p = self.assertProblem(r, 413)
        self.assertIn("1048576", p["detail"])
        self.assertEqual(self.srv.topics()[topic]["events"], 1)


class LimitsTest(ServerTestCase):
    """Small limits configured: body, headers, read timeout."""

    BODY = 4096
    HEADERS = 2048

    @classmethod
    def setUpClass(cls):
        cls.srv = Server(config={"http": {"max_body_bytes": cls.BODY,
                                          "max_header_bytes": cls.HEADERS,
                                          "read_timeout": "1s",
                                          "max_events_per_request": 3}})
        cls.addClassCleanup(cls.srv.cleanup)
        cls.srv.start()

    def tearDown(self):
        self.assertHealthy(self.srv)

    def raw(self, data, timeout=5):
        return exchange(self.srv.host, self.srv.port, data, timeout)

    def test_body_at_the_limit_is_accepted(self):
        topic = new_topic()
        prefix, suffix = b'{"data":"', b'"}'
        body = prefix + b"y" * (self.BODY - len(prefix) - len(suffix)) + suffix
        r = self.srv.publish(topic, body)
        self.assertEqual(r.status, 201, r)
        body = body[:-2] + b'y"}'
        r, how = self.raw((f"POST /v1/topics/{topic}/events HTTP/1.1\r\nHost: x\r\n"
                           f"Content-Length: {len(body)}\r\n\r\n").encode() + body)
        self.assertProblem(r, 413, str(self.BODY))
        self.assertEqual(self.srv.topics()[topic]["events"], 1)

    def test_content_length_over_the_limit_is_refused_before_the_body(self):
        head = (f"POST /v1/topics/{new_topic()}/events HTTP/1.1\r\nHost: x\r\n"
                f"Content-Type: application/json\r\nContent-Length: {self.BODY + 1}\r\n\r\n")
        r, how = self.raw(head.encode())
        self.assertIsNotNone(r, "no answer before the body was sent")
        self.assertProblem(r, 413)
        # Also with the whole body sent (a client that does not wait).
        r, how = self.raw(head.encode() + b"z" * (self.BODY + 1))
        self.assertIsNotNone(r)
        self.assertProblem(r, 413)

    def test_expect_100_continue_over_the_limit(self):
        head = (f"POST /v1/topics/{new_topic()}/events HTTP/1.1\r\nHost: x\r\n"
                f"Expect: 100-continue\r\nContent-Length: {self.BODY * 10}\r\n\r\n")
        r, how = self.raw(head.encode())
        self.assertIsNotNone(r)
        self.assertProblem(r, 413)

    def test_expect_100_continue_within_the_limit(self):
        topic = new_topic()
        body = b'{"data":"continue"}'
        head = (f"POST /v1/topics/{topic}/events HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                f"Expect: 100-continue\r\nContent-Length: {len(body)}\r\n\r\n")
        s = self.srv.connect()
        try:
            s.sendall(head.encode())
            s.settimeout(5)
            interim = s.recv(4096)
            self.assertTrue(interim.startswith(b"HTTP/1.1 100"), interim)
            s.sendall(body)
            got, how = read_until_closed(s, 5)
        finally:
            s.close()
        r = parse_raw_response(got)
        self.assertEqual(r.status, 201, got)
        self.assertEqual(self.srv.topics()[topic]["events"], 1)

    def test_chunked_body_over_the_limit(self):
        topic = new_topic()
        s = self.srv.connect()
        sent = [0]

        def send():
            try:
                s.sendall((f"POST /v1/topics/{topic}/events HTTP/1.1\r\nHost: x\r\n"
                           "Transfer-Encoding: chunked\r\n\r\n").encode())
                chunk = b'{"data":"' + b"c" * 1000
                s.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                for _ in range(200):  # far more than the limit, in small chunks
                    s.sendall(b"400\r\n" + b"c" * 1024 + b"\r\n")
                    sent[0] += 1024
                s.sendall(b'2\r\n"}\r\n0\r\n\r\n')
            except OSError:
                pass  # the server closed after its answer

        t = threading.Thread(target=send)
        t.start()
        try:
            got, how = read_until_closed(s, 10)
        finally:
            t.join(10)
            s.close()
        r = parse_raw_response(got)
        self.assertIsNotNone(r, f"no answer ({how})")
        self.assertProblem(r, 413)
        self.assertNotIn(topic, self.srv.topics())

    def test_chunked_body_within_the_limit(self):
        topic = new_topic()
        parts = [b'{"data":', b'"chunk', b'ed"}']
        body = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"
        head = (f"POST /v1/topics/{topic}/events HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                "Transfer-Encoding: chunked\r\n\r\n").encode()
        r, how = self.raw(head + body)
        self.assertEqual(r.status, 201, r)
        ev = self.srv.read_partition(topic, r.json()["events"][0]["partition"])
        self.assertEqual([e["data"] for e in ev], ["chunked"])

    def send_in_pieces(self, pieces, pause):
        """Sends `pieces` with `pause` seconds between them and reads the
        answer; returns (bytes, how the connection ended)."""
        s = self.srv.connect()
        try:
            for i, piece in enumerate(pieces):
                if i:
                    time.sleep(pause)
                try:
                    s.sendall(piece)
                except OSError:
                    break  # the server answered and closed
            return read_until_closed(s, 6)
        finally:
            s.close()

    def test_body_in_pieces_within_the_read_timeout(self):
        """The body's reads parse what each brings; pieces that come within
        read_timeout (1 s) in all make one request."""
        topic = new_topic()
        body = b'[{"data":"' + b"p" * 3000 + b'"},{"data":2}]'
        head = (f"POST /v1/topics/{topic}/events HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode()
        got, how = self.send_in_pieces([head + body[:10], body[10:1500], body[1500:]], 0.2)
        r = parse_raw_response(got)
        self.assertIsNotNone(r, f"no answer ({how})")
        self.assertEqual(r.status, 201, got[:300])
        self.assertEqual(self.srv.topics()[topic]["events"], 2)

    def test_body_read_timeout_counts_the_whole_body(self):
        """read_timeout bounds the whole body, not each read: a body trickling
        in over 2 s gets 408 (or a close) and stores nothing."""
        topic = new_topic()
        body = b'{"data":"' + b"t" * 40 + b'"}'
        head = (f"POST /v1/topics/{topic}/events HTTP/1.1\r\nHost: x\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode()
        start = time.monotonic()
        pieces = [head] + [body[i:i + 5] for i in range(0, len(body), 5)]
        got, how = self.send_in_pieces(pieces, 0.25)
        self.assertGreater(time.monotonic() - start, 0.8)
        if got:
            self.assertProblem(parse_raw_response(got), 408)
        self.assertIn(how, ("eof", "reset"))
        self.assertNotIn(topic, self.srv.topics())

    def test_body_cut_short_by_the_client(self):
        """A client that half-closes inside its body hears 400 and stores nothing."""
        topic = new_topic()
        s = self.srv.connect()
        try:
            s.sendall((f"POST /v1/topics/{topic}/events HTTP/1.1\r\nHost: x\r\n"
                       "Content-Length: 100\r\n\r\n{\"data\":").encode())
            s.shutdown(socket.SHUT_WR)
            got, how = read_until_closed(s, 5)
        finally:
            s.close()
        self.assertProblem(parse_raw_response(got), 400, "partial")
        self.assertNotIn(topic, self.srv.topics())

    def test_headers_over_the_configured_limit(self):
        r = self.srv.get("/health", headers={"X-Big": "h" * self.HEADERS})
        self.assertProblem(r, 431, str(self.HEADERS))
        r = self.srv.get("/health", headers={"X-Small": "h" * (self.HEADERS // 2)})
        self.assertEqual(r.status, 200)

    def test_max_events_per_request(self):
        topic = new_topic()
        self.assertProblem(self.srv.publish(topic, [{"data": i} for i in range(4)]), 400, "3")
        self.assertNotIn(topic, self.srv.topics())
        r = self.srv.publish(topic, [{"data": i} for i in range(3)])
        self.assertEqual(r.status, 201)

    def assertTimedOut(self, data):
        """The server answers 408 or closes, after about read_timeout (1 s)."""
        s = self.srv.connect()
        start = time.monotonic()
        try:
            if data:
                s.sendall(data)
            got, how = read_until_closed(s, 6)
        finally:
            s.close()
        elapsed = time.monotonic() - start
        self.assertIn(how, ("eof", "reset"), f"still open after {elapsed:.1f}s")
        self.assertGreater(elapsed, 0.8, "closed before the read timeout")
        self.assertLess(elapsed, 5.0)
        if got:
            r = parse_raw_response(got)
            self.assertProblem(r, 408)
        return got

    def test_slow_client_half_a_body(self):
        self.assertTimedOut(f"POST /v1/topics/{new_topic()}/events HTTP/1.1\r\nHost: x\r\n"
                            "Content-Length: 100\r\n\r\n{\"da".encode())

    def test_slow_client_half_the_headers(self):
        self.assertTimedOut(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ")

    def test_slow_client_trickling_headers(self):
        s = self.srv.connect()
        start = time.monotonic()
        closed = False
        try:
            for ch in b"GET /health HTTP/1.1\r\nX-Trickle: " + b"a" * 100:
                s.sendall(bytes([ch]))
                time.sleep(0.1)  # the attack itself: one byte every 100 ms
                if time.monotonic() - start > 5:
                    break
        except OSError:
            closed = True
        got, how = read_until_closed(s, 3) if not closed else (b"", "reset")
        s.close()
        self.assertIn(how, ("eof", "reset"))
        self.assertLess(time.monotonic() - start, 6)

    def test_idle_connection_is_closed(self):
        got = self.assertTimedOut(b"")
        self.assertEqual(got, b"")

    def test_keep_alive_requests_slower_than_nothing_still_work(self):
        conn = http.client.HTTPConnection(self.srv.host, self.srv.port, timeout=5)
        try:
            for _ in range(3):
                conn.request("GET", "/health")
                r = conn.getresponse()
                self.assertEqual((r.status, r.read()), (200, b'{"status":"healthy"}'))
                time.sleep(0.4)  # idle, but less than read_timeout
        finally:
            conn.close()


    # A keep-alive answer is sent by the thread that has it (the sync thread for a
    # publish) while the connection's loop only waits for the next bytes
    # (docs/architecture.md, the publish path): these hold that path to HTTP/1.1.

    def read_answers(self, sock, n, timeout=5.0):
        """Reads `n` complete responses from `sock`; returns them in order."""
        data, answers = b"", []
        deadline = time.monotonic() + timeout
        while len(answers) < n:
            while True:
                head, sep, rest = data.partition(b"\r\n\r\n")
                if not sep:
                    break
                length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))
                if len(rest) < length:
                    break
                answers.append(parse_raw_response(data[:len(head) + 4 + length]))
                data = rest[length:]
            if len(answers) >= n:
                break
            left = deadline - time.monotonic()
            self.assertGreater(left, 0, f"{len(answers)} of {n} answers within {timeout} s")
            sock.settimeout(left)
            chunk = sock.recv(65536)
            self.assertTrue(chunk, f"closed after {len(answers)} of {n} answers")
            data += chunk
        self.assertEqual(data, b"", "bytes after the last answer")
        return answers

    def test_pipelined_requests_are_answered_in_order(self):
        topic, a, b = new_topic(), new_id(), new_id()

        def post(event_id):
            body = json.dumps({"id": event_id, "data": {"n": event_id}}).encode()
            return (f"POST /v1/topics/{topic}/events HTTP/1.1\r\nHost: x\r\n"
                    f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
                    ).encode() + body

        get = lambda path: f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode()  # noqa: E731
        s = self.srv.connect()
        try:
            # All in one write: each answer must wait for the one before.
            s.sendall(post(a) + get("/health") + post(b) + get(f"/v1/events/{a}"))
            first = self.read_answers(s, 4)
            # Then a request sent while the one before is being handled.
            s.sendall(post(new_id()))
            s.sendall(get(f"/v1/events/{b}"))
            second = self.read_answers(s, 2)
        finally:
            s.close()
        self.assertEqual([r.status for r in first + second], [201, 200, 201, 200, 201, 200])
        self.assertEqual(first[0].json()["events"][0]["id"], a)
        self.assertEqual(first[1].json(), {"status": "healthy"})
        self.assertEqual(first[2].json()["events"][0]["id"], b)
        self.assertEqual(first[3].json()["event"]["id"], a)
        self.assertEqual(second[1].json()["event"]["id"], b)

    def test_pipelined_requests_read_in_one_go_are_all_answered(self):
        # Small requests in one write arrive in one read: every one after the
        # first is already buffered when the first is answered (a server that
        # then waits for the socket to become readable again waits forever).
        topic = new_topic()
        get = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
        posts = b"".join(
            (f"POST /v1/topics/{topic}/events HTTP/1.1\r\nHost: x\r\n"
             f"Content-Length: {len(b)}\r\n\r\n").encode() + b
            for b in (json.dumps({"data": n}).encode() for n in range(12)))
        for data, n in ((get * 3, 3), (posts + get, 13)):
            s = self.srv.connect()
            try:
                s.sendall(data)
                answers = self.read_answers(s, n, timeout=3)
            finally:
                s.close()
            self.assertEqual([r.status for r in answers][-1], 200)
        self.assertEqual([r.status for r in answers[:12]], [201] * 12)
        stored = [e["data"] for p in range(4) for e in self.srv.read_partition(topic, p)]
        self.assertEqual(sorted(stored), list(range(12)))

    def publish_then_idle(self, topic, requests, gap):
        """Publishes `requests` events on one keep-alive connection, `gap` s apart,
        then asserts the server closes it, silent, no sooner than read_timeout
        (1 s) after the last answer."""
        s = self.srv.connect()
        try:
            body = b'{"data":1}'
            for i in range(requests):
                if i:
                    time.sleep(gap)
                s.sendall((f"POST /v1/topics/{topic}/events HTTP/1.1\r\nHost: x\r\n"
                           f"Content-Length: {len(body)}\r\n\r\n").encode() + body)
                self.assertEqual(self.read_answers(s, 1)[0].status, 201, f"request {i}")
            start = time.monotonic()
            got, how = read_until_closed(s, 6)
        finally:
            s.close()
        elapsed = time.monotonic() - start
        self.assertEqual((got, how), (b"", "eof"), f"after {elapsed:.1f} s")
        self.assertGreater(elapsed, 0.8, "closed before the read timeout")

    def test_connection_idle_after_an_answer_is_closed(self):
        self.publish_then_idle(new_topic(), 1, 0)

    def test_idle_time_counts_from_the_last_answer(self):
        """Requests 0.7 s apart (each gap under read_timeout, 1 s, their sum well
        over it) keep one connection; it is closed once silent for read_timeout
        after its last answer, not sooner."""
        topic = new_topic()
        self.publish_then_idle(topic, 4, 0.7)
        self.assertEqual(self.srv.topics()[topic]["events"], 4)

    def test_many_publishes_on_one_keep_alive_connection(self):
        topic = new_topic()
        conn = http.client.HTTPConnection(self.srv.host, self.srv.port, timeout=5)
        try:
            for i in range(200):
                conn.request("POST", f"/v1/topics/{topic}/events", json.dumps({"data": i}),
                             {"Content-Type": "application/json"})
                r = conn.getresponse()
                body = r.read()
                self.assertEqual(r.status, 201, body)
                self.assertEqual(len(json.loads(body)["events"]), 1, body)
        finally:
            conn.close()
        self.assertEqual(self.srv.topics()[topic]["events"], 200)


class ConnectionCapTest(ServerTestCase):

    def under_cap(self, srv):
        """A route that is not a probe answers 200 only below the cap."""
        return srv.get("/v1/topics").status == 200

    def test_connection_over_the_cap_gets_503_but_probes_still_answer(self):
        srv = self.new_server(config={"http": {"max_connections": 3, "probe_connections": 2}})
        conns = []

        def hold(n):
            """Opens n keep-alive connections that each got an answer."""
            for c in conns:
                c.close()
            conns.clear()
            for _ in range(n):
                c = http.client.HTTPConnection(srv.host, srv.port, timeout=5)
                conns.append(c)
                c.request("GET", "/health")
                if c.getresponse().read() != b'{"status":"healthy"}':
                    return False
            return True

        try:
            # The server frees a slot only once it sees the client's close
            # (e.g. of the readiness probe), so allow it a moment to settle.
            self.wait_for(lambda: hold(3), 5.0, "3 connections fit under a cap of 3")
            # Over the cap: anything but a probe gets 503 with Retry-After...
            r = srv.get("/v1/topics")
            self.assertProblem(r, 503)
            self.assertEqual(r.headers.get("retry-after"), "1")
            r = srv.post("/v1/topics/capped/events", {"data": 1})
            self.assertProblem(r, 503)
            self.assertEqual(srv.get("/v1/topics/capped/events").status, 503)
            # ... while the probes answer, once per connection.
            for path in ("/livez", "/readyz", "/health", "/health/detailed", "/metrics"):
                r = srv.get(path)
                self.assertEqual(r.status, 200, path)
                self.assertEqual(r.headers.get("connection", "").lower(), "close", path)
            # With the probe slots taken too (2 connections that send nothing),
            # the next connection is refused at once, probe or not.
            def probe_slots_taken():
                """Two idle connections in the probe slots, then three refusals in
                a row. The server closes a probe slot's connection that sends nothing
                within 2 s, so on a busy machine (a build beside the tests once kept
                the refusals out of that window) the pair is opened afresh each try.
                Once accepted, both count; a connection just answered and closed
                still counts until its session ends, so one refusal alone proves
                nothing (seen in full runs of this file)."""
                idle = [socket.create_connection((srv.host, srv.port), timeout=5)
                        for _ in range(2)]
                try:
                    deadline = time.monotonic() + 1.2
                    while time.monotonic() < deadline:
                        if all(srv.get("/health").status == 503 for _ in range(3)):
                            return True
                        time.sleep(0.05)
                    return None
                finally:
                    for sock in idle:
                        sock.close()
            self.wait_for(probe_slots_taken, 30.0, "the probe slots taken")
            # The held connections keep working.
            for c in conns:
                c.request("GET", "/livez")
                self.assertEqual(c.getresponse().status, 200)
            conns.pop().close()
            self.wait_for(lambda: self.under_cap(srv), 5.0, "a freed slot reused")
        finally:
            for c in conns:
                c.close()
        # As above, the slots come back once the server has seen the closes: on a busy
        # machine (tests two at a time) that can take a moment.
        self.wait_for(lambda: self.under_cap(srv), 5.0, "the closed connections' slots freed")
        self.assertEqual(srv.get("/v1/topics/capped/events").status, 404)  # nothing published
        self.assertHealthy(srv)


class AuthTest(ServerTestCase):

    def test_token_protects_v1_only(self):
        srv = self.new_server(config={"http": {"token": "s3cret-token"}})
        topic = new_topic()
        good = {"Authorization": "Bearer s3cret-token"}
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret-token"},
                        {"Authorization": "Basic czNjcmV0LXRva2Vu"},
                        {"Authorization": "Bearer s3cret-token2"},
                        {"Authorization": "Bearer s3cret-toke"}, {"Authorization": "Bearer "}):
            with self.subTest(headers=headers):
                r = srv.get("/v1/topics", headers=headers)
                self.assertProblem(r, 401)
                self.assertIn("bearer", r.headers.get("www-authenticate", "").lower())
                self.assertProblem(srv.publish(topic, {"data": 1}, headers=headers), 401)
                self.assertProblem(srv.get(f"/v1/events/{new_id()}", headers=headers), 401)
                self.assertProblem(srv.get(f"/v1/topics/{topic}/events", headers=headers), 401)
        for path in ("/health", "/health/detailed", "/livez", "/readyz"):
            self.assertEqual(srv.get(path).status, 200, path)
        r = srv.publish(topic, {"data": 1}, headers=good)
        self.assertEqual(r.status, 201, r)
        eid = r.json()["events"][0]["id"]
        self.assertEqual(srv.get(f"/v1/events/{eid}", headers=good).status, 200)
        self.assertEqual(srv.get("/v1/topics", headers=good).json()["topics"][0]["events"], 1)

    # BUG: the auth scheme is compared case-sensitively. Request: GET /v1/topics
    # with "Authorization: bearer <token>". Expected 200 (RFC 9110 section 11.1:
    # the scheme is case-insensitive). Actual 401. Cause: http/routes.cpp
    # api::authorized (~line 229) compares the whole header with "Bearer " + token.
    def test_bearer_scheme_is_case_insensitive(self):
        srv = self.new_server(config={"http": {"token": "tok"}})
        for scheme in ("bearer", "BEARER"):
            r = srv.get("/v1/topics", headers={"Authorization": f"{scheme} tok"})
            self.assertEqual(r.status, 200, r)


class OverloadTest(ServerTestCase):

    def test_full_partition_queue_sheds_with_503_and_retry_after(self):
        srv = self.new_server(config={"storage": {"max_queued_events": 1}})
        results = []
        lock = threading.Lock()

        def publisher(t):
            conn = http.client.HTTPConnection(srv.host, srv.port, timeout=20)
            try:
                for n in range(40):
                    eid = f"o-{t}-{n}"
                    conn.request("POST", "/v1/topics/hot/events",
                                 json.dumps({"id": eid, "key": "one", "data": n}),
                                 {"Content-Type": "application/json"})
                    res = conn.getresponse()
                    body = res.read()
                    with lock:
                        results.append((eid, res.status, res.getheader("Content-Type"),
                                        res.getheader("Retry-After"), body))
            finally:
                conn.close()

        threads = [threading.Thread(target=publisher, args=(t,)) for t in range(8)]
        for th in threads:
            th.start()
        for th in threads:
            th.join(60)
        self.assertEqual(len(results), 320)
        acked, shed = set(), set()
        for eid, status, ctype, retry, body in results:
            if status == 201:
                acked.add(eid)
            else:
                self.assertEqual((status, ctype), (503, PROBLEM_TYPE), body)
                self.assertEqual(retry, "1")
                self.assertEqual(json.loads(body)["status"], 503)
                shed.add(eid)
        self.assertTrue(shed, "8 concurrent publishers never hit a queue bound of 1")
        self.assertTrue(acked)
        [p] = {e["partition"] for e in [json.loads(b)["events"][0]
                                        for _, s, _, _, b in results if s == 201]}
        stored = {e["id"] for e in srv.read_partition("hot", p)}
        self.assertEqual(stored, acked, "a shed publish was stored, or an acked one lost")
        self.assertHealthy(srv)

    def test_probes_answer_while_publishes_are_shed(self):
        # Past both limits at once: more publishing connections than the cap
        # (the rest get the cap's 503) and a partition queue bound of 2 (the
        # admitted ones are shed too). Liveness and health must keep answering.
        srv = self.new_server(config={"http": {"max_connections": 12},
                                      "storage": {"max_queued_events": 2},
                                      "topics": {"load": {"partitions": 1}}})
        stop = threading.Event()
        lock = threading.Lock()
        acked, statuses, probes = set(), {}, []

        def publisher(t):
            conn, n = None, 0
            while not stop.is_set():
                n += 1
                eid = f"l-{t}-{n}"
                try:
                    if conn is None:
                        conn = http.client.HTTPConnection(srv.host, srv.port, timeout=20)
                    conn.request("POST", "/v1/topics/load/events",
                                 json.dumps({"id": eid, "data": n}),
                                 {"Content-Type": "application/json"})
                    res = conn.getresponse()
                    res.read()
                    with lock:
                        statuses[res.status] = statuses.get(res.status, 0) + 1
                        if res.status == 201:
                            acked.add(eid)
                        else:
                            self.assertEqual((res.status, res.getheader("Retry-After")),
                                             (503, "1"))
                    if res.getheader("Connection", "").lower() == "close":
                        conn.close()
                        conn = None
                except (OSError, http.client.HTTPException):
                    if conn is not None:
                        conn.close()
                    conn = None
            if conn is not None:
                conn.close()

        def prober():
            while not stop.is_set():
                for path in ("/livez", "/health"):
                    start = time.monotonic()
                    try:
                        conn = http.client.HTTPConnection(srv.host, srv.port, timeout=5)
                        conn.request("GET", path)
                        status = conn.getresponse().status
                        conn.close()
                    except (OSError, http.client.HTTPException) as e:
                        status = repr(e)
                    with lock:
                        probes.append((path, status, time.monotonic() - start))
                time.sleep(0.05)

        threads = [threading.Thread(target=publisher, args=(t,)) for t in range(24)]
        threads.append(threading.Thread(target=prober))
        for th in threads:
            th.start()
        time.sleep(4)
        stop.set()
        for th in threads:
            th.join(30)
        self.assertIn(503, statuses, f"nothing was shed: {statuses}")
        self.assertIn(201, statuses, f"nothing was acknowledged: {statuses}")
        self.assertGreater(len(probes), 20)
        failed = [p for p in probes if p[1] != 200]
        self.assertEqual(failed, [], f"probes failed under load ({statuses})")
        # Probe latency is measured in bench/, not asserted here; a probe
        # must not wait behind the load (each is one fresh connection).
        slow = sorted(p[2] for p in probes)[len(probes) * 9 // 10]
        print(f"probes under load: {len(probes)}, 90th percentile {slow * 1000:.1f} ms; "
              f"publishes {statuses}")
        self.assertLess(slow, 1.0, f"the 90th percentile probe took {slow:.3f} s")
        stored = {e["id"] for e in srv.read_partition("load", 0)}
        self.assertEqual(acked - stored, set(), "an acknowledged event is missing")
        self.assertHealthy(srv)


class RetentionTest(ServerTestCase):

    def publish_key(self, srv, data):
        r = srv.publish("ret", {"key": "k", "data": data})
        self.assertEqual(r.status, 201, r)
        return r.json()["events"][0]

    def wait_swept(self, srv):
        deadline = time.monotonic() + 15
        while srv.topics()["ret"]["events"] > 0:
            self.assertLess(time.monotonic(), deadline, "retention never removed the events")
            time.sleep(0.1)

    def test_old_events_are_removed_and_offsets_continue(self):
        srv = self.new_server(config={"storage": {"retention": "1s"}})
        old = [self.publish_key(srv, n) for n in range(3)]
        self.assertEqual([e["offset"] for e in old], [0, 1, 2])
        self.wait_swept(srv)
        for e in old:
            self.assertProblem(srv.get(f"/v1/events/{e['id']}"), 404)
        new = self.publish_key(srv, "new")
        self.assertEqual((new["partition"], new["offset"]), (old[0]["partition"], 3))
        self.assertEqual([e["data"] for e in srv.read_partition("ret", new["partition"])],
                         ["new"])
        self.stop_ok(srv)

    # BUG: once retention has emptied a partition, a restart hands out its
    # offsets again from 0. Request: retention 1s; publish 3 events with key k
    # (offsets 0-2); wait until they are swept; SIGTERM; start; publish with
    # key k. Expected offset 3 (offsets only increase, CONTRACT.md section 4).
    # Actual offset 0, so a consumer positioned at 3 would skip new events.
    # Cause: partition_writer recovers next_offset from the last stored event
    # key (persistence/event_log.cpp recover_next_offset, ~line 319), and
    # sweep_before (~line 427) deletes every key without keeping a high-water
    # mark; stats() has the same flaw (first/last offset read as 0/null).
    def test_offsets_are_not_reused_after_retention_and_restart(self):
        srv = self.new_server(config={"storage": {"retention": "1s"}})
        old = [self.publish_key(srv, n) for n in range(3)]
        self.wait_swept(srv)
        self.stop_ok(srv)
        srv.start()
        new = self.publish_key(srv, "after restart")
        self.assertEqual((new["partition"], new["offset"]), (old[0]["partition"], 3))


class LifecycleTest(ServerTestCase):

    def snapshot(self, srv):
        out = {}
        for name, t in srv.topics().items():
            out[name] = {"partitions": t["partitions"], "events": t["events"],
                         "data": [srv.read_partition(name, p) for p in range(t["partitions"])]}
        return out

    def test_restart_keeps_every_event_and_topic(self):
        srv = self.new_server(config={"topics": {"defaults": {"partitions": 2},
                                                 "orders": {"partitions": 8}}})
        for n in range(20):
            self.assertEqual(srv.publish("orders", {"key": f"c{n % 5}", "data": n}).status, 201)
        r = srv.publish("misc", [{"data": n, "id": f"misc-{n}"} for n in range(10)])
        self.assertEqual(r.status, 201)
        self.assertEqual(srv.publish("a.b.c", {"data": "x"}).status, 201)
        before = self.snapshot(srv)
        self.assertEqual(before["orders"]["partitions"], 8)
        self.assertEqual(before["misc"]["partitions"], 2)
        node_id = srv.get("/health/detailed").json()["node_id"]
        self.stop_ok(srv)

        srv.start()
        self.assertEqual(self.snapshot(srv), before)
        self.assertEqual(srv.get("/health/detailed").json()["node_id"], node_id)
        # Ids are still known: a duplicate, not a new append.
        r = srv.publish("misc", {"id": "misc-3", "data": "again"})
        self.assertTrue(r.json()["events"][0]["duplicate"])
        self.assertProblem(srv.publish("orders", {"id": "misc-3", "data": 1}), 409)
        # Offsets continue densely after the restart.
        r = srv.publish("orders", {"key": "c0", "data": "after"}).json()["events"][0]
        p = r["partition"]
        self.assertEqual(r["offset"], len(before["orders"]["data"][p]))

        # A changed default does not repartition an existing topic.
        self.stop_ok(srv)
        srv.write_config({"topics": {"defaults": {"partitions": 3}}})
        srv.start()
        topics = srv.topics()
        self.assertEqual(topics["misc"]["partitions"], 2)
        self.assertEqual(topics["orders"]["partitions"], 8)
        self.assertEqual(srv.publish("fresh", {"data": 1}).status, 201)
        self.assertEqual(srv.topics()["fresh"]["partitions"], 3)
        self.assertEqual(srv.read_partition("orders", p)[-1]["data"], "after")
        self.stop_ok(srv)

    def test_sigint_and_sighup_also_drain_and_exit_0(self):
        srv = self.new_server()
        self.assertEqual(srv.publish("t", {"data": 1}).status, 201)
        self.stop_ok(srv, signal.SIGINT)
        srv.start()
        self.assertEqual(srv.topics()["t"]["events"], 1)
        self.assertEqual(srv.publish("t", {"data": 2}).status, 201)
        self.stop_ok(srv, signal.SIGHUP)  # a closed terminal
        self.assertIn("SIGHUP received: draining", srv.stderr_text())
        srv.start()
        self.assertEqual(srv.topics()["t"]["events"], 2)

    def test_second_process_on_the_same_data_dir_is_refused(self):
        srv = self.new_server()
        other = Server(data_dir=srv.data_dir)
        self.addCleanup(other.cleanup)
        other.start(wait=False)
        try:
            code = other.proc.wait(20)
        finally:
            other.stop()
        self.assertEqual(code, 1, other.stderr_text())
        self.assertIn("in use", other.stderr_text())
        self.assertHealthy(srv)

    def test_graceful_shutdown_while_publishing(self):
        srv = self.new_server()
        acked = []          # (id, topic, partition, offset, data)
        refused = []        # ids answered 503
        bad = []            # anything else
        lock = threading.Lock()
        stop = threading.Event()

        def publisher(t):
            conn = http.client.HTTPConnection(srv.host, srv.port, timeout=20)
            n = 0
            while not stop.is_set():
                n += 1
                size = 1 if n % 2 else 3
                body = [{"id": f"g-{t}-{n}-{k}", "key": f"key-{t}" if t % 2 else None,
                         "data": {"t": t, "n": n, "k": k}} for k in range(size)]
                for e in body:
                    if e["key"] is None:
                        del e["key"]
                try:
                    conn.request("POST", "/v1/topics/drain/events", json.dumps(body),
                                 {"Content-Type": "application/json"})
                    res = conn.getresponse()
                    raw = res.read()
                except (OSError, http.client.HTTPException):
                    return  # closed while draining: outcome unknown
                with lock:
                    if res.status == 201:
                        for e, p in zip(body, json.loads(raw)["events"]):
                            acked.append((p["id"], p["topic"], p["partition"], p["offset"],
                                          e["data"]))
                    elif (res.status == 503 and res.getheader("Content-Type", "")
                          .startswith(PROBLEM_TYPE) and res.getheader("Retry-After")):
                        refused.extend(e["id"] for e in body)
                    else:
                        bad.append((res.status, raw[:200]))
                if res.getheader("Connection", "").lower() == "close":
                    return

        threads = [threading.Thread(target=publisher, args=(t,)) for t in range(6)]
        for th in threads:
            th.start()
        try:
            deadline = time.monotonic() + 20
            while len(acked) < 150 and time.monotonic() < deadline:
                time.sleep(0.01)
            self.assertGreaterEqual(len(acked), 150, "publishing is too slow")
            code = srv.stop(signal.SIGTERM)
        finally:
            stop.set()
            for th in threads:
                th.join(30)
        self.assertEqual(code, 0, srv.stderr_text())
        self.assertEqual(bad, [])
        srv.start()
        stored = {}
        for p in range(4):
            events = srv.read_partition("drain", p)
            self.assertEqual([e["offset"] for e in events], list(range(len(events))))
            for e in events:
                self.assertNotIn(e["id"], stored, "an id is stored twice")
                stored[e["id"]] = e
        for eid, topic, p, off, data in acked:
            self.assertIn(eid, stored, "an acknowledged event is lost")
            e = stored[eid]
            self.assertEqual((e["topic"], e["partition"], e["offset"], e["data"]),
                             (topic, p, off, data))
        for eid in refused:
            self.assertNotIn(eid, stored, "an event answered 503 was stored")
        print(f"\ngraceful shutdown: {len(acked)} acked, {len(refused)} refused with 503, "
              f"{len(stored)} stored", flush=True)

    # BUG: SIGTERM while clients read over keep-alive connections crashes the
    # server (SIGSEGV, exit -11) or, when it does not crash, leaves those
    # requests unanswered until the 10 s drain deadline. Request: GET
    # /v1/topics (or /v1/topics/T/events, /v1/events/ID, /health/detailed) in
    # a loop on open connections, then SIGTERM. Expected: every request
    # answered (200 or 503) or the connection closed, exit 0 within a few
    # seconds. Actual: null dereference of node_impl::log_ in the run_async
    # lambdas (actors/node.cpp:382/398/433/445) because runtime/server_main.cpp:63
    # calls node->shutdown() (which does log_.reset(), actors/node.cpp:499)
    # while the HTTP server still reads requests on existing connections
    # (stop_accepting only closes the listener; server.stop() comes after
    # wait_idle).
    def test_graceful_shutdown_while_reading(self):
        failures = []
        for attempt in range(2):
            srv = self.new_server()
            self.assertEqual(srv.publish("t", {"id": "known", "data": 1}).status, 201)
            stop = threading.Event()
            statuses = []

            def reader(path):
                conn = http.client.HTTPConnection(srv.host, srv.port, timeout=30)
                while not stop.is_set():
                    try:
                        conn.request("GET", path)
                        res = conn.getresponse()
                        res.read()
                    except (OSError, http.client.HTTPException):
                        return
                    statuses.append(res.status)

            paths = ["/v1/topics", "/v1/topics/t/events", "/v1/events/known",
                     "/health/detailed"]
            threads = [threading.Thread(target=reader, args=(p,)) for p in paths]
            for th in threads:
                th.start()
            deadline = time.monotonic() + 20
            while len(statuses) < 200 and time.monotonic() < deadline:
                time.sleep(0.01)
            start = time.monotonic()
            code = srv.stop(signal.SIGTERM)
            elapsed = time.monotonic() - start
            stop.set()
            for th in threads:
                th.join(30)
            unexpected = {s for s in statuses if s not in (200, 503)}
            if code != 0 or elapsed > 5 or unexpected:
                failures.append((attempt, code, round(elapsed, 1), unexpected))
        self.assertEqual(failures, [])


if __name__ == "__main__":
    unittest.main()
