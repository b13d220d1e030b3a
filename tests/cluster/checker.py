#!/usr/bin/env python3
"""Offline, Jepsen-style checker of a nerve cluster's logs (CLUSTER.md section 4).

Inputs:

- one dump per node: the output of `nerve __dump-log --data-dir D`, a line per stored
  event, `topic partition offset id time_us sha1`. Name a dump `NODE=PATH`, or just PATH
  (the node is then the file name without its extension).
- optionally `--history history.jsonl`: one JSON object per line per publish attempt of
  one event, as tests/cluster/history.py writes them:
  `{"id", "key", "topic", "t0", "t1", "outcome", "partition"?, "offset"?, "batch"?,
  "node"?}`.
  `outcome` is "ok" (the server acknowledged it at `partition`/`offset`), "fail" (a
  definite refusal: a 4xx, nothing was written) or "info" (unknown: a timeout, a reset,
  a 5xx). `t0`/`t1` are when the attempt was sent and answered, on one clock. Attempts
  sharing a `batch` were one request, recorded in the order of its events. `node` is the
  node the request was sent to.
- optionally `--faults faults.jsonl`: the faults a test injected, one JSON object per
  line, on the history's clock: `{"kind": "kill", "node", "t0", "t1", "partitions"?}` (the
  node was dead from t0, after its kill, until t1, before its restart) or `{"kind":
  "isolate", ...}` (the node was cut off from its peers, still reachable by clients, from
  t0 until t1). `partitions` (["topic/p", ...]) are the node's own, as the cluster placed
  them; without it, the partitions its dump holds.

Checks, each reported on its own with examples:

- offsets_dense: each node's log of a partition holds offsets 0..n-1 with none missing
  (no retention is assumed: the first stored offset is 0).
- one_id_per_offset: no offset of a node's partition holds two events.
- no_duplicate_ids: no id is stored twice in a node's partition.
- id_in_one_partition: no id is stored in two partitions (a retry with the same id must
  land where the first attempt did).
- single_owner: a partition's events are on one node only (cluster step 1: one owner per
  partition); with --replicas, replicas_agree instead: the nodes holding a partition
  store the same events (id and sha1) at every offset they all hold (a lagging replica
  is a prefix of the others).
- acked_present (needs --history): every acknowledged id is stored at the partition and
  offset it was acknowledged with, and was not acknowledged at two places.
- failed_absent (needs --history): an id whose every attempt on a topic was refused
  (fail) is not stored on that topic (one indeterminate attempt may have stored it).
- stored_were_published (needs --history): every id stored on a topic of the history was
  published to that topic by some attempt.
- per_key_order (needs --history): the acknowledged events of one key stay in one
  partition, and their offsets follow real time: when one event's acknowledgement came
  before another's first attempt was sent, its offset is lower; events of one request
  (`batch`) are stored in the order they were sent.
- no_ok_while_owner_out (needs --history and --faults; CLUSTER.md section 4, item 7):
  no attempt sent after a node was killed and answered before its restart was
  acknowledged for a partition it owns; while a node was cut off from its peers, no such
  attempt sent through another node was acknowledged (through the node itself it may be;
  attempts without `node` are not judged for isolation).

Replicated mode (cluster step 2, --replicas; CLUSTER.md section 3(c)): each partition
lives on R replicas, not on one owner. Give `--partitions FILE`, the JSON of `GET
/v1/cluster/partitions` taken after the load drained (it implies --replicas), and the
checks get stricter:

- replicas_agree: only a partition's `replicas` store it; its `in_sync` replicas hold
  every offset below its `high_watermark` and agree at every offset they all hold; a
  replica out of the in-sync set must agree with them below the high watermark (above
  it, it may hold an unacknowledged tail that it will truncate).
- acked_present: an acknowledged id is at its offset on every in-sync replica, not only
  on one node.
- no_ok_below_min_insync (needs --history and --faults; instead of no_ok_while_owner_out,
  whose one-owner rule does not hold once leaders fail over): no attempt sent and
  answered while fewer than `--min-insync` of a partition's replicas were reachable was
  acknowledged. An answer that says `duplicate` counts as sent when the first attempt of
  its id was (that attempt stored the event). A killed replica is out from its kill to its
  restart; an isolated one is out for requests through the other nodes, and through the
  isolated node itself every other replica is out (it can reach none of them, so with
  --min-insync 2 or more it must acknowledge nothing).

`info` ids may be stored or not; the report counts both. Exit status: 0 when every check
holds, 1 when one does not (a readable report, or a summary with --json), 2 when an input
cannot be read. Python 3 standard library only.
"""

import argparse
import collections
import json
import os
import sys
from dataclasses import dataclass
from typing import Optional

EXAMPLES_MAX = 10
OUTCOMES = ("ok", "fail", "info")
FAULT_KINDS = ("kill", "isolate")


class InputError(Exception):
    """A dump or history line that cannot be read; the message names the file and line."""


@dataclass(frozen=True)
class Entry:
    """One stored event of one node's dump."""
    node: str
    topic: str
    partition: int
    offset: int
    id: str
    time_us: int
    sha1: str


@dataclass(frozen=True)
class Attempt:
    """One publish attempt of one event, as the history records it."""
    id: str
    key: Optional[str]
    topic: str
    t0: float
    t1: float
    outcome: str
    partition: Optional[int] = None
    offset: Optional[int] = None
    batch: Optional[str] = None
    line: int = 0
    node: Optional[str] = None  # the node the request was sent to
    duplicate: bool = False  # ok, and the server said an earlier attempt stored it


@dataclass(frozen=True)
class Fault:
    """A node out of its peers' reach from t0 to t1: killed, or isolated (cut off from its
    peers while clients still reach it). `partitions` are (topic, p) it owns; None: the
    partitions its dump holds."""
    kind: str
    node: str
    t0: float
    t1: float
    partitions: Optional[frozenset] = None
    line: int = 0


@dataclass(frozen=True)
class Placement:
    """One partition of GET /v1/cluster/partitions (cluster step 2)."""
    topic: str
    partition: int
    leader: str
    replicas: tuple
    in_sync: tuple
    high_watermark: Optional[int] = None
    log_end: Optional[int] = None
    epoch: Optional[int] = None


# -- reading the inputs ----------------------------------------------------------------


def _uint(text, what, where):
    if not text.isdigit():
        raise InputError(f"{where}: {what} {text!r} is not a non-negative integer")
    return int(text)


def parse_dump(node, lines, source="<dump>"):
    """The entries of one node's dump (an iterable of lines)."""
    out = []
    for n, line in enumerate(lines, 1):
        line = line.rstrip("\n")
        if not line.strip():
            continue
        where = f"{source}:{n}"
        fields = line.split(" ")
        if len(fields) != 6:
            raise InputError(f"{where}: expected `topic partition offset id time_us sha1`, "
                             f"got {line[:200]!r}")
        topic, partition, offset, event_id, time_us, sha1 = fields
        if not topic or not event_id:
            raise InputError(f"{where}: empty topic or id in {line[:200]!r}")
        if len(sha1) != 40 or any(c not in "0123456789abcdef" for c in sha1):
            raise InputError(f"{where}: sha1 {sha1!r} is not 40 lowercase hex digits")
        out.append(Entry(node, topic, _uint(partition, "partition", where),
                         _uint(offset, "offset", where), event_id,
                         _uint(time_us, "time_us", where), sha1))
    return out


def _number(record, name, where):
    v = record.get(name)
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise InputError(f"{where}: {name!r} must be a number, got {v!r}")
    return v


def _optional_uint(record, name, where):
    v = record.get(name)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise InputError(f"{where}: {name!r} must be a non-negative integer, got {v!r}")
    return v


def json_objects(lines, source):
    """(line number, place, object) for each non-blank line of a JSON-lines input; InputError
    naming the place for a line that is not a JSON object."""
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{source}:{n}"
        try:
            r = json.loads(line)
        except ValueError as e:
            raise InputError(f"{where}: not JSON: {e}") from None
        if not isinstance(r, dict):
            raise InputError(f"{where}: not a JSON object")
        yield n, where, r


def parse_history(lines, source="<history>"):
    """The attempts of a history.jsonl (an iterable of lines)."""
    out = []
    for n, where, r in json_objects(lines, source):
        for name in ("id", "topic"):
            if not isinstance(r.get(name), str) or not r[name]:
                raise InputError(f"{where}: {name!r} must be a non-empty string")
        if r.get("outcome") not in OUTCOMES:
            raise InputError(f"{where}: outcome must be one of {', '.join(OUTCOMES)}, "
                             f"got {r.get('outcome')!r}")
        key = r.get("key")
        if key is not None and not isinstance(key, str):
            raise InputError(f"{where}: 'key' must be a string or null")
        batch = r.get("batch")
        if batch is not None and not isinstance(batch, (str, int)):
            raise InputError(f"{where}: 'batch' must be a string, an integer or null")
        node = r.get("node")
        if node is not None and (not isinstance(node, str) or not node):
            raise InputError(f"{where}: 'node' must be a non-empty string or null")
        t0, t1 = _number(r, "t0", where), _number(r, "t1", where)
        if t1 < t0:
            raise InputError(f"{where}: answered (t1 {t1}) before sent (t0 {t0})")
        partition = _optional_uint(r, "partition", where)
        offset = _optional_uint(r, "offset", where)
        if r["outcome"] == "ok" and (partition is None or offset is None):
            raise InputError(f"{where}: an ok attempt needs the partition and offset it got")
        duplicate = r.get("duplicate", False)
        if not isinstance(duplicate, bool):
            raise InputError(f"{where}: 'duplicate' must be true or false")
        out.append(Attempt(r["id"], key, r["topic"], t0, t1, r["outcome"], partition, offset,
                           None if batch is None else str(batch), n, node, duplicate))
    return out


def _partition_name(text, where):
    """("topic", p) of "topic/p"."""
    topic, sep, p = text.rpartition("/") if isinstance(text, str) else ("", "", "")
    if not sep or not topic or not p.isdigit():
        raise InputError(f"{where}: partition {text!r} is not `topic/partition`")
    return topic, int(p)


def parse_faults(lines, source="<faults>"):
    """The faults of a faults.jsonl (an iterable of lines)."""
    out = []
    for n, where, r in json_objects(lines, source):
        if r.get("kind") not in FAULT_KINDS:
            raise InputError(f"{where}: kind must be one of {', '.join(FAULT_KINDS)}, "
                             f"got {r.get('kind')!r}")
        if not isinstance(r.get("node"), str) or not r["node"]:
            raise InputError(f"{where}: 'node' must be a non-empty string")
        t0, t1 = _number(r, "t0", where), _number(r, "t1", where)
        if t1 < t0:
            raise InputError(f"{where}: ends (t1 {t1}) before it starts (t0 {t0})")
        partitions = r.get("partitions")
        if partitions is not None:
            if not isinstance(partitions, list):
                raise InputError(f"{where}: 'partitions' must be a list of `topic/partition`")
            partitions = frozenset(_partition_name(p, where) for p in partitions)
        out.append(Fault(r["kind"], r["node"], t0, t1, partitions, n))
    return out


def parse_placement(text, source="<partitions>"):
    """{(topic, p): Placement} of a GET /v1/cluster/partitions answer: {"partitions":
    [...]} or the bare list."""
    try:
        doc = json.loads(text)
    except ValueError as e:
        raise InputError(f"{source}: not JSON: {e}") from None
    items = doc.get("partitions") if isinstance(doc, dict) else doc
    if not isinstance(items, list):
        raise InputError(f"{source}: expected {{\"partitions\": [...]}}")
    out = {}
    for n, e in enumerate(items):
        where = f"{source}: partitions[{n}]"
        if not isinstance(e, dict):
            raise InputError(f"{where}: not a JSON object")
        topic = e.get("topic")
        if not isinstance(topic, str) or not topic:
            raise InputError(f"{where}: 'topic' must be a non-empty string")
        partition = _optional_uint(e, "partition", where)
        if partition is None:
            raise InputError(f"{where}: 'partition' is missing")
        lists = {}
        for name in ("replicas", "in_sync"):
            v = e.get(name)
            if not isinstance(v, list) or not all(isinstance(x, str) and x for x in v):
                raise InputError(f"{where}: {name!r} must be a list of node ids")
            lists[name] = tuple(v)
        leader = e.get("leader") or ""
        if not isinstance(leader, str):
            raise InputError(f"{where}: 'leader' must be a string")
        if (topic, partition) in out:
            raise InputError(f"{where}: {topic}/{partition} is listed twice")
        out[(topic, partition)] = Placement(
            topic, partition, leader, lists["replicas"], lists["in_sync"],
            _optional_uint(e, "high_watermark", where), _optional_uint(e, "log_end", where),
            _optional_uint(e, "epoch", where))
    return out


# -- the checks --------------------------------------------------------------------------


class Check:
    """One property: how many violations, and the first few as readable lines."""

    def __init__(self, name, holds):
        self.name = name
        self.holds = holds  # what it says when it holds
        self.violations = 0
        self.examples = []
        self.skipped = None  # why it did not run

    def fail(self, example):
        self.violations += 1
        if len(self.examples) < EXAMPLES_MAX:
            self.examples.append(example)

    @property
    def ok(self):
        return self.violations == 0

    def to_json(self):
        out = {"name": self.name, "ok": self.ok, "violations": self.violations,
               "examples": self.examples}
        if self.skipped:
            out["skipped"] = self.skipped
        return out


def _tp(topic, partition):
    return f"{topic}/{partition}"


def _ranges(numbers):
    """'3..5, 9' for [3, 4, 5, 9] (sorted)."""
    out = []
    start = prev = None
    for n in numbers:
        if start is None:
            start = prev = n
        elif n == prev + 1:
            prev = n
        else:
            out.append(str(start) if start == prev else f"{start}..{prev}")
            start = prev = n
    if start is not None:
        out.append(str(start) if start == prev else f"{start}..{prev}")
    return ", ".join(out)


class Logs:
    """Every node's entries, by partition and node, each sorted by offset."""

    def __init__(self, dumps):
        self.nodes = {node: len(entries) for node, entries in dumps.items()}
        self.by_partition = collections.defaultdict(dict)  # (topic, p) -> node -> [Entry]
        for node, entries in dumps.items():
            for e in entries:
                self.by_partition[(e.topic, e.partition)].setdefault(node, []).append(e)
        self.index = {}  # (topic, p) -> node -> offset -> [Entry]
        for tp, copies in self.by_partition.items():
            self.index[tp] = {}
            for node, entries in copies.items():
                entries.sort(key=lambda e: (e.offset, e.id))
                by_offset = self.index[tp][node] = collections.defaultdict(list)
                for e in entries:
                    by_offset[e.offset].append(e)

    def copies(self):
        """((topic, partition), node, entries) for every node's copy of every partition."""
        for tp in sorted(self.by_partition):
            for node in sorted(self.by_partition[tp]):
                yield tp, node, self.by_partition[tp][node]

    def at(self, topic, partition):
        """node -> {offset: [Entry]} of one partition."""
        return self.index.get((topic, partition), {})

    def ids_by_topic(self):
        """topic -> id -> [Entry] over every node."""
        out = collections.defaultdict(lambda: collections.defaultdict(list))
        for _, _, entries in self.copies():
            for e in entries:
                out[e.topic][e.id].append(e)
        return out


def check_offsets_dense(logs):
    c = Check("offsets_dense", "every node's partitions hold offsets 0..n-1, none missing")
    for (topic, p), node, entries in logs.copies():
        offsets = sorted({e.offset for e in entries})
        missing = sorted(set(range(offsets[-1] + 1)) - set(offsets))
        if missing:
            c.fail(f"{node} {_tp(topic, p)}: offsets {_ranges(missing)} missing "
                   f"(stored up to {offsets[-1]})")
    return c


def _shared(logs, key):
    """(node, (topic, partition), value, [Entry]) for every `key(entry)` value that two or
    more entries of one node's partition share."""
    for tp, node, entries in logs.copies():
        groups = collections.defaultdict(list)
        for e in entries:
            groups[key(e)].append(e)
        for value, group in sorted(groups.items()):
            if len(group) > 1:
                yield node, tp, value, group


def check_one_id_per_offset(logs):
    c = Check("one_id_per_offset", "no offset holds two events")
    for node, tp, offset, entries in _shared(logs, lambda e: e.offset):
        c.fail(f"{node} {_tp(*tp)} offset {offset} holds {len(entries)} events: "
               f"{', '.join(e.id for e in entries)}")
    return c


def check_no_duplicate_ids(logs):
    c = Check("no_duplicate_ids", "no id is stored twice in a partition")
    for node, tp, event_id, entries in _shared(logs, lambda e: e.id):
        c.fail(f"{node} {_tp(*tp)}: id {event_id} at offsets "
               f"{', '.join(str(e.offset) for e in entries)}")
    return c


def check_id_in_one_partition(logs):
    c = Check("id_in_one_partition", "no id is stored in two partitions")
    where = collections.defaultdict(lambda: collections.defaultdict(set))  # id -> tp -> nodes
    for (topic, p), node, entries in logs.copies():
        for e in entries:
            where[e.id][(topic, p)].add(node)
    for event_id, places in sorted(where.items()):
        if len(places) > 1:
            c.fail(f"id {event_id} in " + ", ".join(
                f"{_tp(*tp)} ({', '.join(sorted(nodes))})" for tp, nodes in sorted(places.items())))
    return c


def check_single_owner(logs):
    c = Check("single_owner", "every partition's events are on one node")
    for tp, copies in sorted(logs.by_partition.items()):
        if len(copies) > 1:
            c.fail(f"{_tp(*tp)} on " + ", ".join(
                f"{node} ({len(entries)} events)" for node, entries in sorted(copies.items())))
    return c


def check_replicas_agree(logs, placement=None):
    c = Check("replicas_agree",
              "replicas of a partition store the same event at every offset they all hold"
              + ("; only its replicas store it, and its in-sync ones hold everything below "
                 "its high watermark" if placement else ""))
    placement = placement or {}
    for (topic, p), copies in sorted(logs.by_partition.items()):
        place = placement.get((topic, p))
        held = {node: {e.offset: e for e in reversed(entries)} for node, entries in copies.items()}
        if place is not None:
            strangers = sorted(set(copies) - set(place.replicas))
            if strangers:
                c.fail(f"{_tp(topic, p)} is stored on {', '.join(strangers)}, not among its "
                       f"replicas {', '.join(place.replicas)}")
            hw = place.high_watermark
            for node in place.in_sync:
                by = held.get(node, {})
                missing = [o for o in range(hw or 0) if o not in by]
                if missing:
                    c.fail(f"{_tp(topic, p)}: in-sync replica {node} lacks offsets "
                           f"{_ranges(missing)} below the high watermark {hw}")
        if len(copies) < 2:
            continue
        common = max(max(offsets) + 1 for offsets in held.values())
        for offset in range(common):
            # Without a placement every holder is compared; with one, a replica out of the
            # in-sync set only below the high watermark (above it, it may hold an
            # unacknowledged tail it has yet to truncate).
            judged = {node: by for node, by in held.items() if offset in by}
            if place is not None and place.high_watermark is not None \
                    and offset >= place.high_watermark:
                judged = {node: by for node, by in judged.items() if node in place.in_sync}
            seen = {node: (by[offset].id, by[offset].sha1) for node, by in judged.items()}
            if len(set(seen.values())) > 1:
                c.fail(f"{_tp(topic, p)} offset {offset}: " + "; ".join(
                    f"{node} {v[0]} sha1 {v[1][:12]}" for node, v in sorted(seen.items())))
                break  # one line per partition: past the first difference they all differ
    return c


class History:
    """The attempts grouped by id and outcome."""

    def __init__(self, attempts):
        self.attempts = attempts
        self.by_id = collections.defaultdict(list)
        for a in attempts:
            self.by_id[a.id].append(a)
        self.counts = collections.Counter(a.outcome for a in attempts)
        self.topics = {a.topic for a in attempts}

    def acked(self):
        """id -> its ok attempts."""
        return {i: [a for a in atts if a.outcome == "ok"] for i, atts in self.by_id.items()
                if any(a.outcome == "ok" for a in atts)}


def check_acked_present(logs, history, placement=None):
    c = Check("acked_present", "every acknowledged id is stored where it was acknowledged"
              + (", on every in-sync replica" if placement else ""))
    placement = placement or {}
    for event_id, oks in sorted(history.acked().items()):
        places = sorted({(a.topic, a.partition, a.offset) for a in oks})
        if len(places) > 1:
            c.fail(f"id {event_id} acknowledged at " + ", ".join(
                f"{_tp(t, p)} offset {o}" for t, p, o in places))
            continue
        topic, p, offset = places[0]
        copies = logs.at(topic, p)
        if not copies:
            c.fail(f"id {event_id} acknowledged at {_tp(topic, p)} offset {offset}: "
                   f"lost: no node stores {_tp(topic, p)}")
            continue
        found = []
        for node, by_offset in sorted(copies.items()):
            ids = [e.id for e in by_offset.get(offset, [])]
            if event_id in ids:
                found.append(node)
            elif ids:
                c.fail(f"id {event_id} acknowledged at {_tp(topic, p)} offset {offset}: "
                       f"{node} stores {', '.join(ids)} there")
        if not found and all(offset not in by for by in copies.values()):
            ends = ", ".join(f"{node} up to {max(by) if by else '-'}"
                             for node, by in sorted(copies.items()))
            c.fail(f"id {event_id} acknowledged at {_tp(topic, p)} offset {offset}: lost "
                   f"(stored: {ends})")
            continue
        place = placement.get((topic, p))
        for node in (place.in_sync if place is not None else ()):
            if offset not in copies.get(node, {}):
                c.fail(f"id {event_id} acknowledged at {_tp(topic, p)} offset {offset}: "
                       f"in-sync replica {node} does not hold that offset (found on "
                       f"{', '.join(found) or 'no node'})")
    return c


def check_failed_absent(logs, history):
    c = Check("failed_absent", "no id refused (fail) at every attempt is stored")
    stored = logs.ids_by_topic()
    for event_id, atts in sorted(history.by_id.items()):
        for topic in sorted({a.topic for a in atts}):
            if any(a.outcome != "fail" for a in atts if a.topic == topic):
                continue  # acknowledged, or an indeterminate attempt may have stored it
            for e in stored.get(topic, {}).get(event_id, []):
                c.fail(f"id {event_id} was refused on {topic} but {e.node} stores it at "
                       f"{_tp(e.topic, e.partition)} offset {e.offset}")
    return c


def check_stored_were_published(logs, history):
    c = Check("stored_were_published",
              "every id stored on a topic of the history was published to it")
    sent = {(a.topic, a.id) for a in history.attempts}
    for topic, ids in sorted(logs.ids_by_topic().items()):
        if topic not in history.topics:
            continue
        for event_id, entries in sorted(ids.items()):
            if (topic, event_id) not in sent:
                e = entries[0]
                c.fail(f"{e.node} stores {event_id} at {_tp(topic, e.partition)} offset "
                       f"{e.offset}, never published")
    return c


@dataclass(frozen=True)
class _Acked:
    id: str
    start: float  # t0 of the id's first attempt: it may have been appended from then on
    end: float  # t1 of its first acknowledgement
    partition: int
    offset: int
    batch: Optional[str]
    line: int
    retried: bool  # sent more than once: a retry may stand in another request


def _acked_by_key(history):
    """(topic, key) -> [_Acked] for the acknowledged events with a key."""
    out = collections.defaultdict(list)
    for event_id, oks in history.acked().items():
        first_ok = min(oks, key=lambda a: a.t1)
        if first_ok.key is None:
            continue
        start = min(a.t0 for a in history.by_id[event_id] if a.topic == first_ok.topic)
        out[(first_ok.topic, first_ok.key)].append(
            _Acked(event_id, start, first_ok.t1, first_ok.partition, first_ok.offset,
                   first_ok.batch, first_ok.line, len(history.by_id[event_id]) > 1))
    return out


def _check_real_time(c, topic, key, events):
    """Offsets follow real time: one acknowledged before another was first sent is lower."""
    by_end = sorted(events, key=lambda e: e.end)
    done = 0
    highest = None  # the acknowledged event with the highest offset among those done
    for e in sorted(events, key=lambda e: e.start):
        while done < len(by_end) and by_end[done].end < e.start:
            if highest is None or by_end[done].offset > highest.offset:
                highest = by_end[done]
            done += 1
        if highest is not None and highest.offset >= e.offset:
            c.fail(f"{topic} key {key!r}: {highest.id} was acknowledged at offset "
                   f"{highest.offset} (t1 {highest.end}) before {e.id} was sent "
                   f"(t0 {e.start}), which got offset {e.offset}")


def _check_batch_order(c, topic, key, events):
    """Events of one request keep the order they were sent in. An event sent more than once
    is left out: its retry may share a request with events sent after its first append."""
    batches = collections.defaultdict(list)
    for e in events:
        if e.batch is not None and not e.retried:
            batches[e.batch].append(e)
    for batch, members in sorted(batches.items()):
        members.sort(key=lambda e: e.line)
        for a, b in zip(members, members[1:]):
            if a.offset >= b.offset:
                c.fail(f"{topic} key {key!r}, request {batch}: {a.id} was sent before {b.id} "
                       f"but got offset {a.offset}, not below {b.offset}")


def check_per_key_order(history):
    c = Check("per_key_order",
              "a key's acknowledged events stay in one partition, in real-time order")
    for (topic, key), events in sorted(_acked_by_key(history).items()):
        partitions = sorted({e.partition for e in events})
        if len(partitions) > 1:
            c.fail(f"{topic} key {key!r} acknowledged in partitions "
                   f"{', '.join(map(str, partitions))}")
            continue
        _check_real_time(c, topic, key, events)
        _check_batch_order(c, topic, key, events)
    return c


def _owned(logs, fault):
    """(topic, p) the faulty node owns: as the fault says, else as its dump holds."""
    if fault.partitions is not None:
        return fault.partitions
    return {tp for tp, copies in logs.by_partition.items() if fault.node in copies}


def check_no_ok_while_owner_out(logs, history, faults):
    c = Check("no_ok_while_owner_out",
              "no acknowledgement, sent and answered while a partition's owner was killed "
              "(or cut off, through another node), for that partition")
    for f in faults:
        owned = _owned(logs, f)
        for a in history.attempts:
            if a.outcome != "ok" or (a.topic, a.partition) not in owned:
                continue
            if a.t0 < f.t0 or a.t1 > f.t1:
                continue  # not wholly inside the outage
            if f.kind == "isolate" and (a.node is None or a.node == f.node):
                continue  # through the owner itself, or through an unknown node
            via = f" through {a.node}" if a.node else ""
            c.fail(f"id {a.id} acknowledged at {_tp(a.topic, a.partition)} offset {a.offset}"
                   f"{via} (sent {a.t0}, answered {a.t1}) while its owner {f.node} was "
                   f"{'dead' if f.kind == 'kill' else 'cut off'} ({f.t0}..{f.t1})")
    return c


def check_no_ok_below_min_insync(logs, history, faults, placement, min_insync):
    c = Check("no_ok_below_min_insync",
              f"no acknowledgement, sent and answered while fewer than {min_insync} of a "
              f"partition's replicas were reachable")
    placement = placement or {}
    for a in history.attempts:
        if a.outcome != "ok":
            continue
        # A duplicate's acknowledgement is of the store an earlier attempt made: it is
        # judged from the first attempt of its id on (stored before the fault and synced
        # by enough copies then, it may be acknowledged during it).
        sent = a.t0
        if a.duplicate:
            sent = min(b.t0 for b in history.by_id.get(a.id, [a]) if b.topic == a.topic)
        place = placement.get((a.topic, a.partition))
        replicas = set(place.replicas) if place is not None else \
            set(logs.by_partition.get((a.topic, a.partition), {}))
        out = set()
        why = []
        for f in faults:
            if sent < f.t0 or a.t1 > f.t1:
                continue  # not wholly inside the fault
            if f.kind == "kill":
                gone = {f.node} & replicas
            elif a.node is None:
                continue  # an isolation is judged by the node the request went through
            elif a.node == f.node:
                gone = replicas - {f.node}  # the isolated node reaches none of the others
            else:
                gone = {f.node} & replicas
            if gone - out:
                out |= gone
                why.append(f"{f.kind} {f.node} {f.t0}..{f.t1}")
        reachable = len(replicas - out)
        if reachable < min_insync:
            via = f" through {a.node}" if a.node else ""
            c.fail(f"id {a.id} acknowledged at {_tp(a.topic, a.partition)} offset {a.offset}"
                   f"{via} (sent {a.t0}, answered {a.t1}) with {reachable} of its replicas "
                   f"{', '.join(sorted(replicas))} reachable ({'; '.join(why)})")
    return c


class Report:
    def __init__(self, logs, history, checks, replicas, faults=None, placement=None):
        self.placement = placement
        self.logs = logs
        self.history = history
        self.checks = checks
        self.replicas = replicas
        self.faults = faults
        self.info = self._info_ids()

    def _info_ids(self):
        """How many ids that were only ever answered `info` are stored, and how many not."""
        if self.history is None:
            return None
        stored = self.logs.ids_by_topic()
        present = absent = 0
        for event_id, atts in self.history.by_id.items():
            if all(a.outcome == "info" for a in atts):
                if any(event_id in stored.get(a.topic, {}) for a in atts):
                    present += 1
                else:
                    absent += 1
        return {"present": present, "absent": absent}

    @property
    def valid(self):
        return all(c.ok for c in self.checks)

    def to_json(self):
        out = {"valid": self.valid, "replicas": self.replicas, "nodes": self.logs.nodes,
               "partitions": len(self.logs.by_partition),
               "checks": [c.to_json() for c in self.checks]}
        if self.history is not None:
            out["history"] = {"attempts": len(self.history.attempts),
                              **{o: self.history.counts.get(o, 0) for o in OUTCOMES}}
            out["info_ids"] = self.info
        if self.faults is not None:
            out["faults"] = [{"kind": f.kind, "node": f.node, "t0": f.t0, "t1": f.t1}
                             for f in self.faults]
        if self.placement is not None:
            out["placement"] = len(self.placement)
        return out

    def text(self):
        nodes = ", ".join(f"{n} {count} events" for n, count in sorted(self.logs.nodes.items()))
        lines = [f"nerve cluster check: {len(self.logs.nodes)} logs ({nodes}), "
                 f"{len(self.logs.by_partition)} partitions with events"]
        if self.history is not None:
            counts = ", ".join(f"{self.history.counts.get(o, 0)} {o}" for o in OUTCOMES)
            lines.append(f"history: {len(self.history.attempts)} attempts ({counts})")
        if self.placement is not None:
            under = sum(1 for pl in self.placement.values()
                        if len(pl.in_sync) < len(pl.replicas))
            lines.append(f"replicated: placement of {len(self.placement)} partitions, "
                         f"{under} with fewer in sync than replicas")
        for f in self.faults or []:
            lines.append(f"fault: {f.kind} {f.node} from {f.t0} to {f.t1} "
                         f"({f.t1 - f.t0:.1f} s)")
        width = max(len(c.name) for c in self.checks)
        for c in self.checks:
            if c.skipped:
                lines.append(f"  skip  {c.name:<{width}}  {c.skipped}")
            elif c.ok:
                lines.append(f"  ok    {c.name:<{width}}  {c.holds}")
            else:
                plural = "" if c.violations == 1 else "s"
                lines.append(f"  FAIL  {c.name:<{width}}  {c.violations} violation{plural} of: "
                             f"{c.holds}")
                lines.extend(f"          {example}" for example in c.examples)
                if c.violations > len(c.examples):
                    lines.append(f"          ... and {c.violations - len(c.examples)} more")
        if self.info is not None:
            lines.append(f"indeterminate (info) ids: {self.info['present']} stored, "
                         f"{self.info['absent']} not")
        failed = sum(not c.ok for c in self.checks)
        lines.append("VALID: every check holds" if self.valid
                     else f"INVALID: {failed} of {len(self.checks)} checks failed")
        return "\n".join(lines) + "\n"


def check(dumps, attempts=None, replicas=False, faults=None, placement=None, min_insync=None):
    """Runs every check on {node: [Entry]}, the attempts (None: no history) and the
    faults (None: none recorded). `replicas` (or a `placement`, {(topic, p): Placement},
    which implies it) is the replicated mode of cluster step 2; `min_insync` its
    cluster.min_insync."""
    replicas = replicas or placement is not None
    logs = Logs(dumps)
    history = None if attempts is None else History(attempts)
    checks = [check_offsets_dense(logs), check_one_id_per_offset(logs),
              check_no_duplicate_ids(logs), check_id_in_one_partition(logs),
              check_replicas_agree(logs, placement) if replicas else check_single_owner(logs)]
    history_checks = [("acked_present", lambda: check_acked_present(logs, history, placement)),
                      ("failed_absent", lambda: check_failed_absent(logs, history)),
                      ("stored_were_published", lambda: check_stored_were_published(logs, history)),
                      ("per_key_order", lambda: check_per_key_order(history))]
    for name, run in history_checks:
        if history is None:
            skipped = Check(name, "")
            skipped.skipped = "needs --history"
            checks.append(skipped)
        else:
            checks.append(run())
    fault_check = "no_ok_below_min_insync" if replicas else "no_ok_while_owner_out"
    if history is None or faults is None:
        skipped = Check(fault_check, "")
        skipped.skipped = "needs --history and --faults"
        checks.append(skipped)
    elif not replicas:
        checks.append(check_no_ok_while_owner_out(logs, history, faults))
    elif min_insync is None:
        skipped = Check(fault_check, "")
        skipped.skipped = "needs --min-insync"
        checks.append(skipped)
    else:
        checks.append(check_no_ok_below_min_insync(logs, history, faults, placement,
                                                   min_insync))
    return Report(logs, history, checks, replicas, faults, placement)


# -- command line --------------------------------------------------------------------------


def _dump_arg(arg):
    node, sep, path = arg.partition("=")
    if not sep:
        path = arg
        node = os.path.splitext(os.path.basename(arg))[0]
    if not node or not path:
        raise InputError(f"dump {arg!r}: expected NODE=PATH or PATH")
    return node, path


def _read_lines(path):
    try:
        with open(path, encoding="utf-8") as f:
            return f.readlines()
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"cannot read {path}: {e}") from None


def main(argv=None):
    parser = argparse.ArgumentParser(
        description="Check nerve logs (nerve __dump-log output, one per node) against a "
                    "history of publish attempts. Exit 0: every check holds; 1: one does "
                    "not; 2: an input cannot be read.")
    parser.add_argument("dumps", nargs="+", metavar="[NODE=]DUMP",
                        help="a node's dump; without NODE=, the file name names the node")
    parser.add_argument("--history", help="history.jsonl of every publish attempt")
    parser.add_argument("--faults", help="faults.jsonl of the kills and isolations a test "
                                         "injected, on the history's clock")
    parser.add_argument("--replicas", action="store_true",
                        help="partitions are replicated: nodes holding one must agree on "
                             "the offsets they all hold (default: one owner per partition)")
    parser.add_argument("--partitions", metavar="FILE",
                        help="GET /v1/cluster/partitions saved after the drain: replicated "
                             "mode (implies --replicas) with the replicas, in-sync sets and "
                             "high watermarks")
    parser.add_argument("--min-insync", type=int, metavar="N",
                        help="cluster.min_insync, for no_ok_below_min_insync (replicated)")
    parser.add_argument("--json", action="store_true", help="print a JSON summary")
    args = parser.parse_args(argv)
    try:
        dumps = {}
        for arg in args.dumps:
            node, path = _dump_arg(arg)
            if node in dumps:
                raise InputError(f"node {node} is named twice")
            dumps[node] = parse_dump(node, _read_lines(path), path)
        attempts = None
        if args.history:
            attempts = parse_history(_read_lines(args.history), args.history)
        faults = None
        if args.faults:
            faults = parse_faults(_read_lines(args.faults), args.faults)
        placement = None
        if args.partitions:
            placement = parse_placement("".join(_read_lines(args.partitions)), args.partitions)
    except InputError as e:
        print(f"checker: {e}", file=sys.stderr)
        return 2
    report = check(dumps, attempts, args.replicas, faults, placement, args.min_insync)
    if args.json:
        json.dump(report.to_json(), sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(report.text())
    return 0 if report.valid else 1


if __name__ == "__main__":
    sys.exit(main())
