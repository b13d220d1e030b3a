"""tests/cluster/checker.py on synthetic dumps and histories: a cluster whose logs hold
every check passes, and each kind of anomaly (a lost ack, a duplicate offset, a gap, a
duplicate id, a refused id stored, an order violation, ...) fails exactly the check made
for it. No nerve process is involved.
"""

import contextlib
import hashlib
import io
import json
import os
import shutil
import tempfile
import unittest

import checker
from checker import Attempt, Entry, Fault, Placement

CHECKS = ("offsets_dense", "one_id_per_offset", "no_duplicate_ids", "id_in_one_partition",
          "single_owner", "acked_present", "failed_absent", "stored_were_published",
          "per_key_order", "no_ok_while_owner_out")


def entry(node, topic, partition, offset, event_id):
    """A dump line's entry; its sha1 stands for the event's content, here its id."""
    return Entry(node, topic, partition, offset, event_id, 1_000_000 + offset,
                 hashlib.sha1(event_id.encode()).hexdigest())


class Scenario:
    """A cluster's logs and history built by "publishing": each partition has one owner
    node and offsets are assigned in order; the clock advances one unit per attempt."""

    OWNERS = {("t", 0): "n1", ("t", 1): "n1", ("t", 2): "n2", ("t", 3): "n3",
              ("u", 0): "n2"}

    def __init__(self):
        self.entries = {"n1": [], "n2": [], "n3": []}
        self.attempts = []
        self.next_offset = {tp: 0 for tp in self.OWNERS}
        self.clock = 0.0

    def tick(self):
        self.clock += 1.0
        return self.clock

    def store(self, event_id, topic, partition, node=None, offset=None):
        """Appends an event to the owner's log (or `node`'s) at the next offset (or `offset`)."""
        if offset is None:
            offset = self.next_offset[(topic, partition)]
            self.next_offset[(topic, partition)] += 1
        node = node or self.OWNERS[(topic, partition)]
        self.entries[node].append(entry(node, topic, partition, offset, event_id))
        return offset

    def attempt(self, event_id, topic, key, outcome, partition=None, offset=None, batch=None,
                t0=None, t1=None, node=None, duplicate=False):
        t0 = self.tick() if t0 is None else t0
        t1 = self.tick() if t1 is None else t1
        self.attempts.append(Attempt(event_id, key, topic, t0, t1, outcome, partition, offset,
                                     batch, len(self.attempts) + 1, node, duplicate))

    def ok(self, event_id, topic, partition, key=None, batch=None, node=None):
        self.attempt(event_id, topic, key, "ok", partition,
                     self.store(event_id, topic, partition), batch, node=node)

    def info(self, event_id, topic, partition, key=None, stored=True):
        if stored:
            self.store(event_id, topic, partition)
        self.attempt(event_id, topic, key, "info")

    def fail(self, event_id, topic, key=None):
        self.attempt(event_id, topic, key, "fail")

    def drop(self, event_id):
        """Removes every stored copy of an event."""
        for node in self.entries:
            self.entries[node] = [e for e in self.entries[node] if e.id != event_id]

    def report(self, replicas=False, history=True, faults=(), placement=None, min_insync=None):
        return checker.check(self.entries, self.attempts if history else None, replicas,
                             list(faults), placement, min_insync)


def healthy():
    """Two writers over keys a..c of topic t (a key's partition is fixed), one batch, a
    keyless topic u, refused and indeterminate attempts, and a retry."""
    s = Scenario()
    partition_of = {"a": 0, "b": 2, "c": 3}
    for seq in range(6):
        for writer in ("w1", "w2"):
            key = "abc"[(seq + (writer == "w2")) % 3]
            s.ok(f"{writer}-{seq}", "t", partition_of[key], key)
    for j in range(3):  # one request of three events of key b
        s.ok(f"batch-{j}", "t", 2, "b", batch="r1")
    s.ok("u-0", "u", 0)
    s.fail("w1-bad", "t", "a")
    s.info("w1-lost", "t", 0, "a", stored=False)
    s.info("w2-maybe", "t", 1, "x", stored=True)  # key x lives in partition 1
    s.info("w2-maybe2", "t", 1, "x", stored=True)
    s.ok("w1-after", "t", 1, "x")
    # A retry: the first attempt timed out after the append; the retry gets the
    # duplicate's coordinates, after another event of the key was acknowledged.
    s.info("w1-retry", "t", 0, "a", stored=True)
    retried_offset = s.next_offset[("t", 0)] - 1
    s.ok("w2-between", "t", 0, "a")
    s.attempt("w1-retry", "t", "a", "ok", 0, retried_offset)
    return s


def failed(report):
    return {c.name for c in report.checks if not c.ok}


class Asserts(unittest.TestCase):

    def assertFailsOnly(self, report, *names):
        self.assertEqual(failed(report), set(names), report.text())
        self.assertFalse(report.valid)
        for name in names:
            check = next(c for c in report.checks if c.name == name)
            self.assertTrue(check.examples, name)


class CheckerTest(Asserts):

    # -- passing --------------------------------------------------------------------------

    def test_a_healthy_cluster_passes_every_check(self):
        report = healthy().report()
        self.assertTrue(report.valid, report.text())
        self.assertEqual([c.name for c in report.checks], list(CHECKS))
        self.assertEqual(report.info, {"present": 2, "absent": 1})
        self.assertIn("VALID", report.text())

    def test_without_a_history_only_the_log_checks_run(self):
        report = healthy().report(history=False)
        self.assertTrue(report.valid, report.text())
        skipped = [c.name for c in report.checks if c.skipped]
        self.assertEqual(skipped, ["acked_present", "failed_absent", "stored_were_published",
                                   "per_key_order", "no_ok_while_owner_out"])
        self.assertIn("skip", report.text())

    def test_without_faults_the_outage_check_is_skipped(self):
        report = checker.check(healthy().entries, healthy().attempts)
        self.assertTrue(report.valid, report.text())
        check = next(c for c in report.checks if c.name == "no_ok_while_owner_out")
        self.assertEqual(check.skipped, "needs --history and --faults")

    def test_an_empty_cluster_passes(self):
        self.assertTrue(checker.check({"n1": [], "n2": []}, []).valid)

    def test_concurrent_writes_of_one_key_may_land_in_either_order(self):
        s = Scenario()
        s.entries["n1"] = [entry("n1", "t", 0, 0, "y"), entry("n1", "t", 0, 1, "x")]
        # x was sent first but acknowledged last: the two overlap in time.
        s.attempts = [Attempt("x", "k", "t", 1, 4, "ok", 0, 1, None, 1),
                      Attempt("y", "k", "t", 2, 3, "ok", 0, 0, None, 2)]
        report = s.report()
        self.assertTrue(report.valid, report.text())

    # -- each check fails on its anomaly -------------------------------------------------

    def test_a_lost_acknowledged_event_fails_acked_present(self):
        s = healthy()
        s.drop("w1-after")  # the last event of t/1
        self.assertFailsOnly(s.report(), "acked_present")
        self.assertIn("id w1-after acknowledged at t/1 offset 2: lost (stored: n1 up to 1)",
                      s.report().text())
        s.drop("u-0")  # the only event of u/0
        self.assertIn("lost: no node stores u/0", s.report().text())

    def test_an_ack_at_another_offset_fails_acked_present(self):
        s = healthy()
        a = s.attempts[0]
        s.attempts[0] = Attempt(a.id, a.key, a.topic, a.t0, a.t1, a.outcome, a.partition,
                                a.offset + 1, a.batch, a.line)
        self.assertIn("acked_present", failed(s.report()))

    def test_one_id_acknowledged_at_two_places_fails_acked_present(self):
        s = healthy()
        s.attempt("u-0", "u", None, "ok", 0, 0)
        s.ok("u-1", "u", 0)
        s.attempt("u-0", "u", None, "ok", 0, 1)
        self.assertFailsOnly(s.report(), "acked_present")

    def test_a_gap_fails_offsets_dense(self):
        s = healthy()
        s.drop("w2-maybe")  # an indeterminate event in the middle of t/1
        self.assertFailsOnly(s.report(), "offsets_dense")
        self.assertIn("t/1: offsets 0 missing", s.report().text())

    def test_a_log_not_starting_at_zero_fails_offsets_dense(self):
        s = Scenario()
        s.store("late", "t", 0, offset=3)
        self.assertFailsOnly(s.report(history=False), "offsets_dense")

    def test_each_stored_anomaly_fails_exactly_its_check(self):
        def at_offset_of(event_id):
            return next(e.offset for e in healthy().entries["n1"] if e.id == event_id)

        anomalies = [
            # w1-lost was published (its outcome unknown) and is now stored where
            # w2-maybe is already.
            ("two events at one offset", "one_id_per_offset",
             lambda s: s.store("w1-lost", "t", 1, offset=at_offset_of("w2-maybe"))),
            ("an acknowledged id appended again in its partition", "no_duplicate_ids",
             lambda s: s.store("w1-0", "t", 0)),
            ("an id in two partitions", "id_in_one_partition",
             lambda s: s.store("w2-maybe", "t", 2)),
            ("a refused id stored", "failed_absent", lambda s: s.store("w1-bad", "t", 0)),
            ("an id never published", "stored_were_published",
             lambda s: s.store("ghost", "t", 3)),
        ]
        for what, check, anomaly in anomalies:
            with self.subTest(what):
                s = healthy()
                anomaly(s)
                self.assertFailsOnly(s.report(), check)

    def test_events_on_a_topic_not_in_the_history_are_not_phantoms(self):
        s = healthy()
        s.OWNERS = {**s.OWNERS, ("v", 0): "n3"}
        s.next_offset[("v", 0)] = 0
        s.store("agent-output", "v", 0)
        self.assertTrue(s.report().valid, s.report().text())

    def test_later_writes_of_a_key_at_lower_offsets_fail_per_key_order(self):
        s = Scenario()
        # The log and the acks agree, but the second write got the lower offset.
        s.entries["n1"] = [entry("n1", "t", 0, 0, "second"), entry("n1", "t", 0, 1, "first")]
        s.attempts = [Attempt("first", "k", "t", 1, 2, "ok", 0, 1, None, 1),
                      Attempt("second", "k", "t", 3, 4, "ok", 0, 0, None, 2)]
        self.assertFailsOnly(s.report(), "per_key_order")
        self.assertIn("before second was sent", s.report().text())

    def test_a_request_stored_out_of_order_fails_per_key_order(self):
        s = Scenario()
        s.entries["n1"] = [entry("n1", "t", 0, 0, "e1"), entry("n1", "t", 0, 1, "e0")]
        s.attempts = [Attempt("e0", "k", "t", 1, 2, "ok", 0, 1, "r1", 1),
                      Attempt("e1", "k", "t", 1, 2, "ok", 0, 0, "r1", 2)]
        self.assertFailsOnly(s.report(), "per_key_order")

    def test_one_key_in_two_partitions_fails_per_key_order(self):
        s = Scenario()
        s.ok("e0", "t", 0, "k")
        s.ok("e1", "t", 1, "k")
        self.assertFailsOnly(s.report(), "per_key_order")

    def test_an_id_refused_once_then_sent_again_may_be_stored(self):
        s = healthy()
        s.fail("w2-late", "t", "c")  # e.g. connection refused by a dead node
        s.info("w2-late", "t", 3, "c", stored=True)  # the retry timed out after the append
        report = s.report()
        self.assertTrue(report.valid, report.text())
        s.fail("w2-late", "t", "c")
        self.assertTrue(s.report().valid)  # refused again later: still not every attempt

    # -- CLUSTER.md section 4, item 7: no ok while the owner is out ------------------------

    def outage(self, kind, via="n1"):
        """healthy(), then n3 (owner of t/3) is out from time 100 to 200; during it, an
        event of t/3 is acknowledged through `via`."""
        s = healthy()
        s.clock = 100.0
        fault = Fault(kind, "n3", 100.0, 200.0, frozenset({("t", 3)}))
        s.ok("during", "t", 3, "c", node=via)
        return s, fault

    def test_an_ack_for_a_dead_owners_partition_fails_no_ok_while_owner_out(self):
        s, kill = self.outage("kill")
        self.assertFailsOnly(s.report(faults=[kill]), "no_ok_while_owner_out")
        self.assertIn("id during acknowledged at t/3 offset", s.report(faults=[kill]).text())
        self.assertIn("while its owner n3 was dead", s.report(faults=[kill]).text())
        # Through the dead node itself is no excuse: it was dead.
        s, kill = self.outage("kill", via="n3")
        self.assertFailsOnly(s.report(faults=[kill]), "no_ok_while_owner_out")

    def test_an_ack_through_the_cut_off_owner_itself_passes(self):
        s, isolate = self.outage("isolate", via="n3")
        report = s.report(faults=[isolate])
        self.assertTrue(report.valid, report.text())
        s, isolate = self.outage("isolate", via="n2")
        self.assertFailsOnly(s.report(faults=[isolate]), "no_ok_while_owner_out")
        self.assertIn("through n2", s.report(faults=[isolate]).text())

    def test_acks_overlapping_the_outage_or_of_other_partitions_pass(self):
        s = healthy()
        kill = Fault("kill", "n3", 100.0, 200.0, frozenset({("t", 3)}))
        # Sent before the kill, answered after it: the owner may have fsynced it in time.
        s.ok("before", "t", 3, "c", node="n1")
        s.attempts[-1] = Attempt("before", "c", "t", 99.5, 100.5, "ok", 3,
                                 s.attempts[-1].offset, None, len(s.attempts), "n1")
        # Answered after the restart began.
        s.ok("after", "t", 3, "c", node="n2")
        s.attempts[-1] = Attempt("after", "c", "t", 199.0, 201.0, "ok", 3,
                                 s.attempts[-1].offset, None, len(s.attempts), "n2")
        # During the outage, a partition another node owns.
        s.clock = 150.0
        s.ok("elsewhere", "t", 2, "b", node="n1")
        report = s.report(faults=[kill])
        self.assertTrue(report.valid, report.text())

    def test_without_partitions_a_fault_takes_the_nodes_dump(self):
        s, kill = self.outage("kill")
        unnamed = Fault("kill", "n3", kill.t0, kill.t1)
        self.assertFailsOnly(s.report(faults=[unnamed]), "no_ok_while_owner_out")
        elsewhere = Fault("kill", "n2", kill.t0, kill.t1)
        self.assertTrue(s.report(faults=[elsewhere]).valid)

    def test_a_partition_on_two_nodes_fails_single_owner(self):
        s = healthy()
        for e in [e for e in s.entries["n3"] if (e.topic, e.partition) == ("t", 3)]:
            s.store(e.id, e.topic, e.partition, node="n2", offset=e.offset)
        self.assertFailsOnly(s.report(), "single_owner")

    # -- replicas -------------------------------------------------------------------------

    def replicated(self, drop_tail=0):
        """healthy() with t/3 copied to n1, less its last `drop_tail` events."""
        s = healthy()
        copy = [e for e in s.entries["n3"] if (e.topic, e.partition) == ("t", 3)]
        for e in copy[:len(copy) - drop_tail]:
            s.entries["n1"].append(Entry("n1", e.topic, e.partition, e.offset, e.id,
                                         e.time_us, e.sha1))
        return s

    def test_replicas_that_agree_pass(self):
        for drop_tail in (0, 2):  # identical, and a follower behind
            report = self.replicated(drop_tail).report(replicas=True)
            self.assertTrue(report.valid, report.text())
            self.assertIn("replicas_agree", [c.name for c in report.checks])
            self.assertNotIn("single_owner", [c.name for c in report.checks])

    def test_replicas_that_differ_fail_replicas_agree(self):
        s = self.replicated()
        at = next(i for i, e in enumerate(s.entries["n1"]) if e.topic == "t" and e.partition == 3)
        e = s.entries["n1"][at]
        s.entries["n1"][at] = Entry(e.node, e.topic, e.partition, e.offset, e.id, e.time_us,
                                    "f" * 40)
        self.assertFailsOnly(s.report(replicas=True), "replicas_agree")


REPLICATED_CHECKS = tuple("replicas_agree" if c == "single_owner" else c for c in CHECKS
                          if c != "no_ok_while_owner_out")


def replicated():
    """healthy() as cluster step 2 stores it: every partition on all three nodes (the
    replicas), every copy identical; and the placement GET /v1/cluster/partitions gives
    after the drain: all in sync, high watermark at the end."""
    s = healthy()
    every = [e for entries in s.entries.values() for e in entries]
    for node in s.entries:
        s.entries[node] = [Entry(node, e.topic, e.partition, e.offset, e.id, e.time_us, e.sha1)
                           for e in every]
    placement = {tp: Placement(tp[0], tp[1], owner, ("n1", "n2", "n3"), ("n1", "n2", "n3"),
                               s.next_offset[tp], s.next_offset[tp], 1)
                 for tp, owner in s.OWNERS.items()}
    return s, placement


def with_placement(placement, topic, partition, **changes):
    """A copy of `placement` with one partition's fields changed."""
    out = dict(placement)
    pl = out[(topic, partition)]
    out[(topic, partition)] = Placement(**{**pl.__dict__, **changes})
    return out


def truncate(s, node, topic, partition, keep):
    """Leaves `node` with the first `keep` offsets of a partition."""
    s.entries[node] = [e for e in s.entries[node]
                       if (e.topic, e.partition) != (topic, partition) or e.offset < keep]


class ReplicatedCheckerTest(Asserts):
    """The replicated mode (cluster step 2): each partition on three replicas."""

    def test_identical_replicas_pass_every_check(self):
        s, placement = replicated()
        report = s.report(placement=placement, faults=[], min_insync=2)
        self.assertTrue(report.valid, report.text())
        names = [c.name for c in report.checks]
        self.assertEqual(names, list(REPLICATED_CHECKS) + ["no_ok_below_min_insync"])
        self.assertIn("replicated: placement of 5 partitions, 0 with fewer in sync", report.text())

    def test_without_min_insync_the_quorum_check_is_skipped(self):
        s, placement = replicated()
        report = s.report(placement=placement, faults=[])
        check = next(c for c in report.checks if c.name == "no_ok_below_min_insync")
        self.assertEqual(check.skipped, "needs --min-insync")
        self.assertTrue(report.valid, report.text())

    def test_an_in_sync_replica_missing_an_ack_fails(self):
        s, placement = replicated()
        truncate(s, "n2", "t", 1, 2)  # w1-after was acknowledged at t/1 offset 2
        report = s.report(placement=placement)
        self.assertFailsOnly(report, "acked_present", "replicas_agree")
        self.assertIn("id w1-after acknowledged at t/1 offset 2: in-sync replica n2 does not "
                      "hold that offset", report.text())
        self.assertIn("t/1: in-sync replica n2 lacks offsets 2 below the high watermark 3",
                      report.text())
        # Without a placement a lagging copy is only a prefix: fine.
        self.assertTrue(s.report(replicas=True).valid)

    def test_a_lagging_replica_out_of_the_in_sync_set_may_be_a_prefix(self):
        s, placement = replicated()
        truncate(s, "n2", "t", 1, 1)
        placement = with_placement(placement, "t", 1, in_sync=("n1", "n3"))
        report = s.report(placement=placement)
        self.assertTrue(report.valid, report.text())

    def test_an_unacknowledged_tail_above_the_high_watermark_on_an_out_of_sync_replica(self):
        # n2, a deposed leader out of the in-sync set, holds at offset 3 of t/1 an event the
        # others hold another one at, both above the high watermark (3): n2 will truncate
        # it, so this passes. The same difference on an in-sync replica, or below the high
        # watermark, fails.
        s, placement = replicated()
        s.attempt("w2-maybe3", "t", "x", "info")
        s.attempt("w1-next", "t", "x", "info")
        for node, event_id in (("n1", "w1-next"), ("n2", "w2-maybe3"), ("n3", "w1-next")):
            s.entries[node].append(entry(node, "t", 1, 3, event_id))
        out = with_placement(placement, "t", 1, in_sync=("n1", "n3"))
        self.assertTrue(s.report(placement=out).valid, s.report(placement=out).text())
        self.assertFailsOnly(s.report(placement=placement), "replicas_agree")
        below = with_placement(out, "t", 1, high_watermark=4)
        report = s.report(placement=below)
        self.assertFailsOnly(report, "replicas_agree")
        self.assertIn("t/1 offset 3: n1 w1-next", report.text())

    def test_a_partition_stored_outside_its_replicas_fails_replicas_agree(self):
        s, placement = replicated()
        placement = with_placement(placement, "t", 3, replicas=("n1", "n3"),
                                   in_sync=("n1", "n3"))
        report = s.report(placement=placement)
        self.assertFailsOnly(report, "replicas_agree")
        self.assertIn("t/3 is stored on n2, not among its replicas n1, n3", report.text())

    def test_differing_replicas_fail_replicas_agree(self):
        s, placement = replicated()
        at = next(i for i, e in enumerate(s.entries["n3"]) if (e.topic, e.partition) == ("t", 0))
        e = s.entries["n3"][at]
        s.entries["n3"][at] = Entry(e.node, e.topic, e.partition, e.offset, e.id, e.time_us,
                                    "0" * 40)
        self.assertFailsOnly(s.report(placement=placement), "replicas_agree")

    # -- no acknowledgement without min_insync reachable replicas --------------------------

    def quorum(self, faults, via="n1"):
        """replicated(); then, at time 150 (inside faults from 100 to 200), an event of t/3
        acknowledged through `via`; the report with min_insync 2."""
        s, placement = replicated()
        s.clock = 150.0
        s.ok("during", "t", 3, "c", node=via)
        for node in ("n1", "n2"):  # ok() stores on the owner only; replicas hold it too
            e = s.entries["n3"][-1]
            s.entries[node].append(Entry(node, e.topic, e.partition, e.offset, e.id,
                                         e.time_us, e.sha1))
        placement = with_placement(placement, "t", 3, high_watermark=s.next_offset[("t", 3)],
                                   log_end=s.next_offset[("t", 3)])
        return s.report(placement=placement, faults=faults, min_insync=2)

    def test_one_replica_killed_leaves_a_quorum(self):
        report = self.quorum([Fault("kill", "n3", 100.0, 200.0)])
        self.assertTrue(report.valid, report.text())

    def test_two_replicas_killed_leave_none(self):
        faults = [Fault("kill", "n3", 100.0, 200.0), Fault("kill", "n2", 120.0, 180.0)]
        report = self.quorum(faults)
        self.assertFailsOnly(report, "no_ok_below_min_insync")
        self.assertIn("with 1 of its replicas n1, n2, n3 reachable (kill n3 100.0..200.0; "
                      "kill n2 120.0..180.0)", report.text())
        # The second kill ended before the request was sent: a quorum again.
        faults[1] = Fault("kill", "n2", 120.0, 140.0)
        self.assertTrue(self.quorum(faults).valid)

    def duplicate_in_kill(self, first_sent):
        """t/3's replicas n1 and n2 killed from 100 to 200; an event first sent through n1
        at `first_sent` (no answer: the kill), stored on all three, then retried through
        n3 at 150 and answered 201 "duplicate". The report with min_insync 2."""
        s, placement = replicated()
        s.attempt("retried", "t", "c", "info", t0=first_sent, t1=100.0, node="n1")
        offset = s.store("retried", "t", 3)
        for node in ("n1", "n2"):
            s.store("retried", "t", 3, node=node, offset=offset)
        s.attempt("retried", "t", "c", "ok", 3, offset, t0=150.0, t1=150.5, node="n3",
                  duplicate=True)
        end = s.next_offset[("t", 3)]
        placement = with_placement(placement, "t", 3, high_watermark=end, log_end=end)
        kills = [Fault("kill", "n1", 100.0, 200.0), Fault("kill", "n2", 100.0, 200.0)]
        return s.report(placement=placement, faults=kills, min_insync=2)

    def test_a_duplicate_is_judged_from_its_first_attempt(self):
        # Stored before the kills (synced by n2 and n3 then): its 201 during them is true.
        report = self.duplicate_in_kill(first_sent=90.0)
        self.assertTrue(report.valid, report.text())
        # First sent during the kills: it was never on two copies, so no 201 may say so.
        report = self.duplicate_in_kill(first_sent=120.0)
        self.assertFailsOnly(report, "no_ok_below_min_insync")
        self.assertIn("id retried acknowledged at t/3", report.text())

    def test_nothing_acknowledged_through_an_isolated_replica(self):
        isolate = [Fault("isolate", "n3", 100.0, 200.0)]
        self.assertFailsOnly(self.quorum(isolate, via="n3"), "no_ok_below_min_insync")
        self.assertIn("through n3", self.quorum(isolate, via="n3").text())
        # Through the majority side: n1 and n2 are a quorum.
        self.assertTrue(self.quorum(isolate, via="n2").valid)


class CommandLineTest(unittest.TestCase):

    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="nerve-checker-")
        self.addCleanup(shutil.rmtree, self.dir, True)

    def write(self, name, lines):
        path = os.path.join(self.dir, name)
        with open(path, "w") as f:
            f.writelines(line + "\n" for line in lines)
        return path

    def write_scenario(self, s):
        dumps = []
        for node, entries in s.entries.items():
            path = self.write(f"{node}.dump", [
                f"{e.topic} {e.partition} {e.offset} {e.id} {e.time_us} {e.sha1}"
                for e in entries])
            dumps.append(path)
        history = self.write("history.jsonl", [json.dumps(
            {"id": a.id, "key": a.key, "topic": a.topic, "t0": a.t0, "t1": a.t1,
             "outcome": a.outcome, "partition": a.partition, "offset": a.offset,
             "batch": a.batch, "node": a.node}) for a in s.attempts])
        return dumps, history

    def run_main(self, args):
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = checker.main(args)
            except SystemExit as e:  # argparse's usage errors
                code = e.code
        return code, out.getvalue(), err.getvalue()

    def test_valid_logs_exit_0(self):
        dumps, history = self.write_scenario(healthy())
        code, out, _ = self.run_main(dumps + ["--history", history])
        self.assertEqual(code, 0, out)
        self.assertIn("n1 ", out)  # nodes are named by their file names
        self.assertIn("VALID", out)

    def test_a_violation_exits_1_with_a_readable_report(self):
        s = healthy()
        s.drop("u-0")
        dumps, history = self.write_scenario(s)
        code, out, _ = self.run_main(dumps + ["--history", history])
        self.assertEqual(code, 1, out)
        self.assertIn("FAIL  acked_present", out)
        self.assertIn("id u-0 acknowledged at u/0 offset 0", out)
        self.assertIn("INVALID: 1 of 10 checks failed", out)

    def test_faults_file(self):
        s = healthy()
        s.clock = 100.0
        s.ok("during", "t", 3, "c", node="n2")
        dumps, history = self.write_scenario(s)
        faults = self.write("faults.jsonl", [json.dumps(
            {"kind": "kill", "node": "n3", "t0": 100.0, "t1": 200.0, "partitions": ["t/3"]})])
        code, out, _ = self.run_main(dumps + ["--history", history, "--faults", faults])
        self.assertEqual(code, 1, out)
        self.assertIn("fault: kill n3 from 100.0 to 200.0", out)
        self.assertIn("FAIL  no_ok_while_owner_out", out)
        isolate = self.write("isolate.jsonl", [json.dumps(
            {"kind": "isolate", "node": "n3", "t0": 100.0, "t1": 200.0})])
        code, out, _ = self.run_main(dumps + ["--history", history, "--faults", isolate,
                                              "--json"])
        self.assertEqual(code, 1, out)
        self.assertEqual(json.loads(out)["faults"],
                         [{"kind": "isolate", "node": "n3", "t0": 100.0, "t1": 200.0}])

    def test_json_summary(self):
        s = healthy()
        s.store("w1-bad", "t", 0)
        dumps, history = self.write_scenario(s)
        args = [f"node{i}={p}" for i, p in enumerate(dumps, 1)]
        code, out, _ = self.run_main(args + ["--history", history, "--json"])
        self.assertEqual(code, 1, out)
        summary = json.loads(out)
        self.assertFalse(summary["valid"])
        self.assertEqual(sorted(summary["nodes"]), ["node1", "node2", "node3"])
        self.assertEqual(summary["history"]["fail"], 1)
        self.assertEqual(summary["info_ids"], {"present": 2, "absent": 1})
        by_name = {c["name"]: c for c in summary["checks"]}
        self.assertEqual(set(by_name), set(CHECKS))
        self.assertEqual(by_name["failed_absent"]["violations"], 1)
        self.assertTrue(by_name["acked_present"]["ok"])

    def test_replicated_mode_with_a_partitions_file(self):
        s, placement = replicated()
        truncate(s, "n2", "t", 1, 2)
        dumps, history = self.write_scenario(s)
        view = {"partitions": [{"topic": p.topic, "partition": p.partition, "epoch": p.epoch,
                                "leader": p.leader, "replicas": list(p.replicas),
                                "in_sync": list(p.in_sync), "high_watermark": p.high_watermark,
                                "log_end": p.log_end, "followers": []}
                               for p in placement.values()]}
        partitions = self.write("partitions.json", [json.dumps(view)])
        faults = self.write("faults.jsonl", [])
        code, out, _ = self.run_main(dumps + ["--history", history, "--partitions", partitions,
                                              "--faults", faults, "--min-insync", "2"])
        self.assertEqual(code, 1, out)
        self.assertIn("FAIL  acked_present", out)
        self.assertIn("in-sync replica n2 does not hold that offset", out)
        self.assertIn("ok    no_ok_below_min_insync", out)
        code, out, _ = self.run_main(dumps + ["--history", history, "--replicas", "--json"])
        self.assertEqual(code, 0, out)
        self.assertTrue(json.loads(out)["replicas"])
        bad = self.write("bad-partitions.json", ['{"partitions": [{"topic": "t", '
                                                 '"partition": 0, "replicas": "n1"}]}'])
        code, _, err = self.run_main(dumps + ["--partitions", bad])
        self.assertEqual(code, 2)
        self.assertIn("'replicas' must be a list of node ids", err)

    def test_unreadable_inputs_exit_2(self):
        good = self.write("n1.dump", ["t 0 0 e0 1 " + "a" * 40])
        bad_dump = self.write("bad.dump", ["t 0 zero e0 1 " + "a" * 40])
        bad_history = self.write("bad.jsonl", ['{"id": "e0", "topic": "t", "t0": 1, "t1": 2, '
                                               '"outcome": "ok"}'])
        bad_faults = self.write("bad-faults.jsonl", ['{"kind": "pause", "node": "n1", '
                                                     '"t0": 1, "t1": 2}'])
        bad_partition = self.write("bad-partition.jsonl", [
            '{"kind": "kill", "node": "n1", "t0": 1, "t1": 2, "partitions": ["t-3"]}'])
        for args, says in (([bad_dump], "bad.dump:1: offset 'zero'"),
                           ([good, "--faults", bad_faults], "kind must be one of kill, isolate"),
                           ([good, "--faults", bad_partition], "'t-3' is not `topic/partition`"),
                           ([good, "--history", bad_history], "needs the partition and offset"),
                           ([good, f"n1={good}"], "node n1 is named twice"),
                           ([os.path.join(self.dir, "missing.dump")], "cannot read")):
            code, _, err = self.run_main(args)
            self.assertEqual(code, 2, args)
            self.assertIn(says, err)
        self.assertEqual(self.run_main([])[0], 2)


if __name__ == "__main__":
    unittest.main()
