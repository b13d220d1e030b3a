"""Every file of JSONTestSuite's test_parsing/ as a publish body (raw bytes).

y_ (valid JSON): 201 when it is an event or an array of events, else 400
problem+json; wrapped as {"data": <file>} it must be 201 and read back equal.
n_ (invalid JSON): 400 problem+json, nothing stored.
i_ (either): never 5xx, never a crash; whatever is accepted is stored.
Afterwards the server is healthy and exactly the accepted events are stored.
"""

import json
import math
import os
import re
import unittest

from harness import Server, ServerTestCase, SharedServerTestCase, testdata_dir

SUITE = os.path.join(testdata_dir(), "JSONTestSuite", "test_parsing")
ID_RE = re.compile(r"^[A-Za-z0-9\-_.:~@+=]{1,128}$")
TRACE_RE = re.compile(r"^[0-9a-f]{32}$")
MAX_EVENTS = 1000
NUL_TERMINATED = {"n_multidigit_number_then_00.json"}


def files(prefix):
    if not os.path.isdir(SUITE):
        raise unittest.SkipTest(f"JSONTestSuite not found at {SUITE}; set NERVE_TESTDATA")
    names = sorted(n for n in os.listdir(SUITE) if n.startswith(prefix) and n.endswith(".json"))
    out = []
    for n in names:
        with open(os.path.join(SUITE, n), "rb") as f:
            out.append((n, f.read()))
    return out


def _string(v, lo, hi):
    return isinstance(v, str) and lo <= len(v.encode("utf-8")) <= hi


def valid_event(e, topic):
    """The contract's rules for one event object (CONTRACT.md section 4)."""
    if not isinstance(e, dict) or "data" not in e:
        return False
    for k, v in e.items():
        if k == "data":
            continue
        if k == "topic":
            ok = v == topic
        elif k == "id":
            ok = isinstance(v, str) and ID_RE.match(v) is not None
        elif k == "key":
            ok = _string(v, 1, 1024)
        elif k in ("type", "source"):
            ok = _string(v, 1, 255)
        elif k in ("correlation_id", "causation_id"):
            ok = _string(v, 1, 128)
        elif k == "trace_id":
            ok = isinstance(v, str) and TRACE_RE.match(v) and v != "0" * 32
        elif k == "headers":
            ok = isinstance(v, dict) and len(v) <= 64 and all(
                1 <= len(hk.encode()) <= 128 and _string(hv, 0, 4096) for hk, hv in v.items())
        else:
            ok = False
        if not ok:
            return False
    return True


def accepted_events(value, topic):
    """How many events a body holds if it is a valid publish body, else None."""
    if isinstance(value, dict):
        return 1 if valid_event(value, topic) else None
    if isinstance(value, list) and 0 < len(value) <= MAX_EVENTS and all(
            valid_event(e, topic) for e in value):
        return len(value)
    return None


def normalize(v):
    """What a JSON value reads back as: integers beyond 64 bits become doubles."""
    if isinstance(v, bool) or v is None or isinstance(v, str):
        return v
    if isinstance(v, int):
        return v if -2**63 <= v < 2**64 else float(v)
    if isinstance(v, float):
        return v
    if isinstance(v, list):
        return [normalize(x) for x in v]
    return {k: normalize(x) for k, x in v.items()}


def strict_loads(raw):
    def no_constants(name):
        raise ValueError(name)
    return json.loads(raw.decode("utf-8"), parse_constant=no_constants)


class JsonSuiteTest(SharedServerTestCase):

    def tearDown(self):
        super().tearDown()
        detailed = self.srv.get("/health/detailed").json()
        self.assertEqual(detailed["status"], "healthy", detailed)

    def post(self, topic, body):
        return self.srv.request("POST", f"/v1/topics/{topic}/events", body,
                                headers={"Content-Type": "application/json"})

    def stored(self, topic):
        topics = self.srv.topics()
        if topic not in topics:
            return []
        events = []
        for p in range(topics[topic]["partitions"]):
            events += self.srv.read_partition(topic, p)
        self.assertEqual(len(events), topics[topic]["events"])
        return events

    def check_answer(self, name, r, expect_events):
        if expect_events is None:
            self.assertProblem(r, 400)
            return 0
        self.assertEqual(r.status, 201, f"{name}: {r}")
        self.assertEqual(len(r.json()["events"]), expect_events)
        return expect_events

    def test_y_files_raw(self):
        topic = "jsonsuite.y"
        cases = files("y_")
        self.assertEqual(len(cases), 95)
        accepted = 0
        for name, raw in cases:
            with self.subTest(file=name):
                expect = accepted_events(strict_loads(raw), topic)
                accepted += self.check_answer(name, self.post(topic, raw), expect)
        self.assertEqual(len(self.stored(topic)), accepted)
        print(f"\ny_ raw: {len(cases)} files, {accepted} events accepted", flush=True)

    def test_y_files_wrapped_as_data_round_trip(self):
        topic = "jsonsuite.y-wrapped"
        cases = files("y_")
        ids = {}
        for name, raw in cases:
            with self.subTest(file=name):
                body = b'{"id":"' + name.encode() + b'","data":' + raw + b"}"
                r = self.post(topic, body)
                self.assertEqual(r.status, 201, f"{name}: {r}")
                ids[name] = r.json()["events"][0]["id"]
        stored = {e["id"]: e for e in self.stored(topic)}
        self.assertEqual(len(stored), len(ids))
        for name, raw in cases:
            with self.subTest(file=name):
                got = stored[ids[name]]["data"]
                want = normalize(strict_loads(raw))
                self.assertEqual(got, want)
                self.assertFalse(isinstance(got, float) and math.isnan(got))

    def test_n_files_are_400_and_store_nothing(self):
        topic = "jsonsuite.n"
        cases = files("n_")
        self.assertEqual(len(cases), 188)
        for name, raw in cases:
            with self.subTest(file=name):
                r = self.post(topic, raw)
                p = self.assertProblem(r, 400)
                if name not in NUL_TERMINATED:
                    self.assertTrue(p["type"].endswith("invalid-json"), f"{name}: {p}")
        self.assertEqual(self.stored(topic), [])

    # BUG: a raw NUL byte ends the JSON text: "123\0" is parsed as 123 and is
    # then refused only for its shape (invalid-event), and {"data":1}\0junk is
    # accepted (see test_http_api BadInputTest.test_nul_byte_does_not_end_the_body).
    # Cause: nlohmann's lexer returns end_of_input on '\0'
    # (nlohmann/detail/input/lexer.hpp scan(), "case '\0'"), and
    # http/json_input.cpp parse_json (~line 152) does not refuse bodies
    # holding a NUL byte.
    def test_n_files_with_a_nul_byte_are_invalid_json(self):
        for name, raw in files("n_"):
            if name in NUL_TERMINATED:
                p = self.assertProblem(self.post("jsonsuite.n", raw), 400)
                self.assertTrue(p["type"].endswith("invalid-json"), f"{name}: {p}")

    def test_i_files_never_5xx(self):
        cases = files("i_")
        self.assertEqual(len(cases), 35)
        counts = {"jsonsuite.i": 0, "jsonsuite.i-wrapped": 0}
        outcomes = []
        for name, raw in cases:
            for topic, body in (("jsonsuite.i", raw),
                                ("jsonsuite.i-wrapped", b'{"data":' + raw + b"}")):
                with self.subTest(file=name, topic=topic):
                    r = self.post(topic, body)
                    self.assertLess(r.status, 500, f"{name}: {r}")
                    self.assertIn(r.status, (201, 400), f"{name}: {r}")
                    if r.status == 201:
                        counts[topic] += len(r.json()["events"])
                    else:
                        self.assertProblem(r, 400)
                    outcomes.append((name, topic, r.status))
            self.assertTrue(self.srv.running, f"nerve died on {name}")
        for topic, n in counts.items():
            self.assertEqual(len(self.stored(topic)), n, topic)
        print(f"\ni_: accepted raw {counts['jsonsuite.i']}, wrapped "
              f"{counts['jsonsuite.i-wrapped']} of {len(cases)}", flush=True)


if __name__ == "__main__":
    unittest.main()
