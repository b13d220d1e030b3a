"""Records publish attempts into history.jsonl for tests/cluster/checker.py.

A load generator calls `begin()` before it sends a request and `publish_answered()`,
`publish_failed()` (or `record()` for each event) when the answer, a timeout or a reset
comes back. One line is written per event per attempt, flushed at once, from any number
of threads:

    {"id", "key", "topic", "t0", "t1", "outcome", "partition"?, "offset"?, "batch"?,
     "node"?, "duplicate"?}

`outcome` is "ok" (acknowledged, with the partition and offset the server answered),
"fail" (a definite refusal: nothing was written) or "info" (indeterminate: it may or may
not have been written; retry it with the same id). `t0`/`t1` come from one monotonic
clock, so the checker may compare any two. `batch` names the request an event was sent
in; the events of one request are written in the order they were sent. `node` names the
node the request was sent to (the checker judges acknowledgements during an isolation by
it). `duplicate` is true on an ok attempt the server answered with `"duplicate": true`:
the event was stored by an earlier attempt of the same id.

`write_faults()` writes the faults a test injected (kills, isolations) on the same clock,
for the checker's --faults.

Python 3 standard library only.
"""

import itertools
import json
import threading
import time

# HTTP answers that say for certain that nothing was written. A 408 or 429 (the server
# gave up on, or shed, the request) and every 5xx (with a cluster: 503 "indeterminate"
# for a forward that timed out) are indeterminate.
DEFINITE_FAILURES = frozenset(range(400, 500)) - {408, 429}


def outcome_of(status):
    """'ok', 'fail' or 'info' for an HTTP status (None: no answer at all)."""
    if status is not None and 200 <= status < 300:
        return "ok"
    if status in DEFINITE_FAILURES:
        return "fail"
    return "info"


class History:
    """Appends attempts to a history.jsonl; safe to share between threads."""

    def __init__(self, path, clock=time.monotonic):
        self.path = path
        self.clock = clock
        self._file = open(path, "a", encoding="utf-8")
        self._lock = threading.Lock()
        self._batches = itertools.count(1)
        self.counts = {"ok": 0, "fail": 0, "info": 0}

    def close(self):
        with self._lock:
            if not self._file.closed:
                self._file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def now(self):
        return self.clock()

    def begin(self):
        """(t0, batch id) for a request about to be sent."""
        return self.now(), f"b{next(self._batches)}"

    def record(self, event_id, topic, key, t0, outcome, partition=None, offset=None,
               batch=None, t1=None, node=None, duplicate=False):
        """One event's attempt; `t1` defaults to now."""
        if outcome not in self.counts:
            raise ValueError(f"outcome must be ok, fail or info, not {outcome!r}")
        if outcome == "ok" and (partition is None or offset is None):
            raise ValueError("an ok attempt needs its partition and offset")
        t1 = self.now() if t1 is None else t1
        r = {"id": event_id, "key": key, "topic": topic, "t0": t0, "t1": t1, "outcome": outcome}
        if partition is not None:
            r["partition"] = partition
        if offset is not None:
            r["offset"] = offset
        if batch is not None:
            r["batch"] = batch
        if node is not None:
            r["node"] = node
        if duplicate:
            r["duplicate"] = True
        line = json.dumps(r, separators=(",", ":")) + "\n"
        with self._lock:
            self._file.write(line)
            self._file.flush()
            self.counts[outcome] += 1

    def publish_answered(self, topic, events, t0, batch, status, body=None, node=None):
        """Records every event of one request the server answered with `status`.

        `events` are the events sent, each with its "id" (and "key" when it has one); a
        2xx `body` is the server's JSON answer, `{"events": [{"partition", "offset"}, ...]}`
        in the order sent. Returns the outcome.
        """
        t1 = self.now()
        outcome = outcome_of(status)
        answers = [None] * len(events)
        if outcome == "ok":
            answers = (body or {}).get("events", [])
            if len(answers) != len(events):
                raise ValueError(f"{len(events)} events sent, {len(answers)} answered")
        for e, a in zip(events, answers):
            self.record(e["id"], topic, e.get("key"), t0, outcome,
                        a["partition"] if a else None, a["offset"] if a else None, batch, t1,
                        node, bool(a and a.get("duplicate")))
        return outcome

    def publish_failed(self, topic, events, t0, batch, node=None):
        """Records every event of a request that got no answer (timeout, reset): info."""
        return self.publish_answered(topic, events, t0, batch, None, node=node)

    def publish_refused(self, topic, events, t0, batch, node=None):
        """Records every event of a request whose connection was refused: nothing was
        sent, so nothing was written: fail."""
        t1 = self.now()
        for e in events:
            self.record(e["id"], topic, e.get("key"), t0, "fail", batch=batch, t1=t1, node=node)
        return "fail"


def write_faults(path, faults):
    """Writes faults.jsonl for the checker's --faults: each fault a dict
    {"kind": "kill" | "isolate", "node", "t0", "t1", "partitions"?: ["topic/p", ...]},
    times on the history's clock."""
    with open(path, "w", encoding="utf-8") as f:
        for fault in faults:
            f.write(json.dumps(fault, separators=(",", ":")) + "\n")
    return path
