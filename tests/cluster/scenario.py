"""What the cluster fault scenarios share: test_kill_scenario.py (T2, kill -9 of an owner)
and test_partition_scenario.py (T3, an owner cut off from its peers); CLUSTER.md section 4.

- `Load`: writer threads publishing keyed events (single events, batches of one key,
  batches of mixed keys, a few keyless events with ids) through every node, with ids
  `w<k>-<seq>`. Every attempt is recorded by history.py: ok (partition, offset), fail
  (nothing was sent: the connection was refused; or a 4xx) or info (a timeout, a reset, a
  5xx). An info request is sent again later, with the same ids, until it is answered
  ok or the drain after the load ends runs out of time.
- `Prober`: one event to one partition through one node (a key picked to hash there),
  recorded in the history too.
- `run_checker()`: every node's `nerve __dump-log` and the history through checker.py.
- `ScenarioTestCase`: the seed (NERVE_SCENARIO_SEED replays a run's random choices: which
  node each request goes to, keys, batch sizes, the victim on a tie, when the fault
  starts and how long it lasts; the servers' timing is not seeded), the run's work
  directory (kept, with the history and dumps, when the test fails, or always with
  NERVE_SCENARIO_KEEP=1) and a one-line JSON
  result per run (appended to $NERVE_SCENARIO_RESULTS when set, for repeat.sh).

Python 3 standard library only.
"""

import contextlib
import http.client
import json
import os
import random
import shutil
import sys
import tempfile
import threading
import time
import traceback
import unittest

import checker
import history as history_mod

SEED_ENV = "NERVE_SCENARIO_SEED"
RESULTS_ENV = "NERVE_SCENARIO_RESULTS"
KEEP_ENV = "NERVE_SCENARIO_KEEP"  # set: keep the work dir of a passing run too
REQUEST_TIMEOUT_S = 15.0  # above the 10 s a forward waits for its owner
EVENT_TYPE = "scenario"
SPREAD_TRIES = 4  # topic names tried until the partitions are on more than one node


def fnv1a(text):
    """nerve's key hash (actors/publish_service.cpp): 64-bit FNV-1a over the bytes."""
    h = 1469598103934665603
    for c in text.encode("utf-8"):
        h ^= c
        h = (h * 1099511628211) & 0xFFFFFFFFFFFFFFFF
    return h


def partition_of(event, partitions):
    """The partition nerve puts an event in: by its key, or (keyless, in a cluster) by its id."""
    return fnv1a(event.get("key") or event["id"]) % partitions


def keys_for_partitions(prefix, partitions):
    """{partition: a key that hashes to it}."""
    out = {}
    i = 0
    while len(out) < partitions:
        key = f"{prefix}{i}"
        out.setdefault(fnv1a(key) % partitions, key)
        i += 1
    return out


# -- one request ---------------------------------------------------------------------


class Refused(Exception):
    """No connection: nothing was sent."""


class Answer:
    def __init__(self, status, headers, body):
        self.status = status
        self.headers = headers
        self.body = body

    def json(self):
        try:
            return json.loads(self.body.decode("utf-8"))
        except ValueError:
            return None

    def detail(self):
        j = self.json()
        return j.get("detail", "") if isinstance(j, dict) else self.body[:200].decode("latin-1")


def post(endpoint, path, body, token=None, timeout=REQUEST_TIMEOUT_S):
    """POSTs JSON to endpoint (host, port) on a fresh connection. Raises Refused when no
    connection opens (nothing sent), OSError/HTTPException when the answer is lost."""
    if endpoint is None or endpoint[0] is None:
        raise Refused("the node is not running")
    conn = http.client.HTTPConnection(endpoint[0], endpoint[1], timeout=timeout)
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    try:
        try:
            conn.connect()
        except OSError as e:
            raise Refused(str(e)) from None
        conn.request("POST", path, body=json.dumps(body).encode("utf-8"), headers=headers)
        res = conn.getresponse()
        data = res.read()
        return Answer(res.status, {k.lower(): v for k, v in res.getheaders()}, data)
    finally:
        conn.close()


def get_json(endpoint, path, token=None, timeout=10.0):
    conn = http.client.HTTPConnection(endpoint[0], endpoint[1], timeout=timeout)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        conn.request("GET", path, headers=headers)
        res = conn.getresponse()
        data = res.read()
        if res.status != 200:
            raise AssertionError(f"GET {path} on {endpoint}: {res.status} {data[:300]!r}")
        return json.loads(data.decode("utf-8"))
    finally:
        conn.close()


class Nodes:
    """The nodes as the clients reach them: id -> harness.Server (its host and port
    change when it restarts), and the bearer token."""

    def __init__(self, servers, token=None):
        self.servers = servers
        self.token = token

    def ids(self):
        return list(self.servers)

    def endpoint(self, node_id):
        srv = self.servers[node_id]
        host, port = srv.host, srv.port
        return None if host is None else (host, port)

    def publish(self, node_id, topic, events, timeout=REQUEST_TIMEOUT_S):
        return post(self.endpoint(node_id), f"/v1/topics/{topic}/events", events, self.token,
                    timeout)

    def view(self, node_id):
        return get_json(self.endpoint(node_id), "/v1/cluster", self.token)

    def states(self, node_id):
        """member id -> "up" / "down" as `node_id` sees them."""
        return {m["id"]: m["state"] for m in self.view(node_id)["nodes"]}

    def partitions(self, node_id, topic):
        """partition -> its entry of GET /v1/cluster/partitions (cluster step 2: epoch,
        leader ("" while none), replicas, in_sync, high_watermark, log_end, followers), for
        `topic`, as `node_id` sees it."""
        view = get_json(self.endpoint(node_id), "/v1/cluster/partitions", self.token)
        return {e["partition"]: e for e in view["partitions"] if e["topic"] == topic}

    def owners(self, node_id, topic):
        """partition -> owner id of `topic` (with replication: its leader), as `node_id`
        sees it in GET /v1/cluster."""
        out = {}
        for m in self.view(node_id)["nodes"]:
            for p in m["partitions"]:
                t, _, n = p.rpartition("/")
                if t == topic:
                    out[int(n)] = m["id"]
        return out


# -- recording one request ---------------------------------------------------------------


class Request:
    """One request as the scenario saw it, for the assertions beyond the checker."""
    __slots__ = ("who", "node", "t0", "t1", "status", "detail", "partitions", "retry",
                 "duplicate")

    def __init__(self, who, node, t0, t1, status, detail, partitions, retry, duplicate=False):
        self.who = who  # "w1", "probe"
        self.node = node
        self.t0 = t0
        self.t1 = t1
        self.status = status  # an HTTP status, "refused" or "lost"
        self.detail = detail
        self.partitions = partitions  # frozenset of the partitions the events hash to
        self.retry = retry
        self.duplicate = duplicate  # a 2xx whose every event was stored before (a retry)

    def __repr__(self):
        return (f"<{self.who} via {self.node} {self.status} partitions "
                f"{sorted(self.partitions)} t {self.t0:.3f}..{self.t1:.3f}: {self.detail[:160]}>")


class Sender:
    """Sends one request, records it in the history and in `requests`."""

    def __init__(self, nodes, topic, partitions, hist):
        self.nodes = nodes
        self.topic = topic
        self.partitions = partitions
        self.history = hist
        self.requests = []
        self._lock = threading.Lock()

    def send(self, who, node_id, events, retry=False):
        """Returns (outcome, Request)."""
        t0, batch = self.history.begin()
        parts = frozenset(partition_of(e, self.partitions) for e in events)
        status, detail, duplicate = None, "", False
        try:
            ans = self.nodes.publish(node_id, self.topic, events)
        except Refused as e:
            outcome = self.history.publish_refused(self.topic, events, t0, batch, node=node_id)
            status, detail = "refused", str(e)
        except (OSError, http.client.HTTPException) as e:
            outcome = self.history.publish_failed(self.topic, events, t0, batch, node=node_id)
            status, detail = "lost", f"{type(e).__name__}: {e}"
        else:
            body = ans.json()
            outcome = self.history.publish_answered(self.topic, events, t0, batch, ans.status,
                                                    body if ans.status < 300 else None,
                                                    node=node_id)
            status, detail = ans.status, "" if ans.status < 300 else ans.detail()
            if ans.status < 300 and body.get("events"):
                duplicate = all(e.get("duplicate") for e in body["events"])
            if ans.status == 503 and "retry-after" not in ans.headers:
                detail = "NO Retry-After: " + detail
        r = Request(who, node_id, t0, self.history.now(), status, detail, parts, retry,
                    duplicate)
        with self._lock:
            self.requests.append(r)
        return outcome, r


# -- the writers -----------------------------------------------------------------------


class _Pending:
    __slots__ = ("events", "tries", "due")

    def __init__(self, events, due):
        self.events = events
        self.tries = 0
        self.due = due


class Writer(threading.Thread):
    """Writer k: new requests at `rate` per second through a random node; an info request
    waits (0.4 s doubling to 2 s) and goes again, same ids, through a random node."""

    MAX_PENDING = 32  # info requests waiting for their retry; at this many, no new ones
    KEYS = 16

    def __init__(self, k, load, seed):
        super().__init__(name=f"writer-{k}", daemon=True)
        self.k = k
        self.load = load
        self.rng = random.Random(seed)
        self.seq = 0
        self.pending = []
        self.unresolved = []  # events still info when the drain ended
        self.error = None

    def _events(self):
        rng, k = self.rng, self.k

        def event(key):
            self.seq += 1
            e = {"id": f"w{k}-{self.seq}", "type": EVENT_TYPE, "data": {"w": k, "seq": self.seq}}
            if key is not None:
                e["key"] = key
            return e

        def key():
            return f"key-{rng.randrange(self.KEYS)}"

        shape = rng.random()
        if shape < 0.45:
            return [event(key())]
        if shape < 0.70:  # one key: its events must be stored in the order sent
            same = key()
            return [event(same) for _ in range(rng.randint(2, 10))]
        if shape < 0.90:  # mixed keys: several partitions, often several owners
            return [event(key()) for _ in range(rng.randint(2, 10))]
        return [event(None) for _ in range(rng.randint(1, 3))]  # keyless, routed by id

    def _send(self, p, retry):
        node = self.rng.choice(self.load.nodes.ids())
        outcome, r = self.load.sender.send(f"w{self.k}", node, p.events, retry)
        now = time.monotonic()
        if outcome == "ok":
            return True
        if outcome == "fail" and r.status != "refused":
            self.load.note_unexpected(r)  # a 4xx: the test sent something wrong
            return True
        if outcome == "fail" and not retry:
            return True  # never sent: these ids stay refused, and must stay absent
        p.tries += 1
        p.due = now + min(2.0, 0.2 * 2 ** min(p.tries, 4)) * self.rng.uniform(0.8, 1.2)
        return False

    def run(self):
        try:
            self._run()
        except Exception:  # noqa: BLE001: reported by Load.stop
            self.error = traceback.format_exc()

    def _run(self):
        load = self.load
        interval = 1.0 / load.rate
        next_at = time.monotonic()
        while not load.stopping.is_set():
            now = time.monotonic()
            due = [p for p in self.pending if p.due <= now]
            if due:
                p = min(due, key=lambda x: x.due)
                if self._send(p, retry=True):
                    self.pending.remove(p)
            elif now >= next_at and len(self.pending) < self.MAX_PENDING:
                next_at = max(next_at + interval, now - interval)
                p = _Pending(self._events(), now)
                if not self._send(p, retry=False):
                    self.pending.append(p)
            else:
                wake = min([next_at] + [p.due for p in self.pending])
                time.sleep(max(0.001, min(0.05, wake - now)))
        # Drain: settle what is still indeterminate, while the deadline allows.
        while self.pending and time.monotonic() < load.drain_deadline:
            now = time.monotonic()
            due = [p for p in self.pending if p.due <= now]
            if not due:
                time.sleep(0.02)
                continue
            p = min(due, key=lambda x: x.due)
            if self._send(p, retry=True):
                self.pending.remove(p)
        self.unresolved = [e["id"] for p in self.pending for e in p.events]


class Load:
    """`writers` Writer threads on one topic; start(), then stop() (which drains)."""

    def __init__(self, sender, seed, writers=2, rate=20.0):
        self.sender = sender
        self.nodes = sender.nodes
        self.rate = rate
        self.stopping = threading.Event()
        self.drain_deadline = 0.0
        self.unexpected = []
        self._lock = threading.Lock()
        self.writers = [Writer(k, self, seed * 1000 + k) for k in range(1, writers + 1)]

    def note_unexpected(self, r):
        with self._lock:
            self.unexpected.append(r)

    def start(self):
        for w in self.writers:
            w.start()
        return self

    def stop(self, drain_s=20.0):
        """Stops new requests, retries the info ones for up to `drain_s`, and returns the
        ids still indeterminate."""
        self.drain_deadline = time.monotonic() + drain_s
        self.stopping.set()
        for w in self.writers:
            w.join(drain_s + 2 * REQUEST_TIMEOUT_S)
        errors = [w.error for w in self.writers if w.error]
        if errors:
            raise AssertionError("a writer failed:\n" + "\n".join(errors))
        alive = [w.name for w in self.writers if w.is_alive()]
        if alive:
            raise AssertionError(f"writers {alive} did not stop")
        return [i for w in self.writers for i in w.unresolved]


# -- probes ----------------------------------------------------------------------------


class Prober:
    """One event to one partition through one node, recorded like the writers' ones."""

    def __init__(self, sender):
        self.sender = sender
        self.keys = keys_for_partitions("probe-key-", sender.partitions)
        self.seq = 0
        self._lock = threading.Lock()

    def probe(self, node_id, partition):
        with self._lock:
            self.seq += 1
            seq = self.seq
        event = {"id": f"probe-{seq}", "key": self.keys[partition], "type": EVENT_TYPE,
                 "data": {"probe": seq}}
        return self.sender.send("probe", node_id, [event])[1]

    def until(self, node_id, partition, want, timeout_s, pause_s=0.05):
        """Probes until the status is in `want`; returns (the Request, every Request sent)."""
        deadline = time.monotonic() + timeout_s
        tried = []
        while True:
            r = self.probe(node_id, partition)
            tried.append(r)
            if r.status in want or time.monotonic() > deadline:
                return r, tried
            time.sleep(pause_s)


# -- after the run ---------------------------------------------------------------------


def run_checker(cluster, directory, history_path, faults_path, placement_path=None,
                min_insync=None):
    """Dumps every (stopped) node into `directory` and runs checker.py over the dumps, the
    history and the faults; returns the Report. With `placement_path` (GET
    /v1/cluster/partitions saved before the nodes stopped) the checker runs in its
    replicated mode (cluster step 2)."""
    dumps = {}
    for arg in cluster.dump_all(directory):
        node, _, path = arg.partition("=")
        with open(path, encoding="utf-8") as f:
            dumps[node] = checker.parse_dump(node, f, path)
    with open(history_path, encoding="utf-8") as f:
        attempts = checker.parse_history(f, history_path)
    with open(faults_path, encoding="utf-8") as f:
        faults = checker.parse_faults(f, faults_path)
    if placement_path is None:
        return checker.check(dumps, attempts, False, faults)
    with open(placement_path, encoding="utf-8") as f:
        placement = checker.parse_placement(f.read(), placement_path)
    return checker.check(dumps, attempts, True, faults, placement, min_insync)


def wait_until(fn, timeout_s, what, pause_s=0.05):
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        try:
            last = fn()
        except (OSError, AssertionError, http.client.HTTPException) as e:
            last = f"{type(e).__name__}: {e}"
        else:
            if last is True or (last and not isinstance(last, str)):
                return last
        time.sleep(pause_s)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}; last: {last!r}")


def all_linked(nodes, running):
    """True when every node in `running` sees every node in `running` up."""
    def check():
        for n in running:
            states = nodes.states(n)
            if any(states[m] != "up" for m in running):
                return f"{n} sees {states}"
        return True
    return check


# -- replication (cluster step 2) -------------------------------------------------------


def replicas_ready(nodes, topic, partitions, on, in_sync=3, exclude=()):
    """A check for wait_until: through every node in `on`, every partition of `topic` has a
    leader (not in `exclude`) and at least `in_sync` replicas in sync, and every node names
    the same leader and epoch. Returns {partition: entry} (as the first node of `on` sees
    it) once true, else a string saying what is missing."""
    def check():
        first = None
        for n in on:
            view = nodes.partitions(n, topic)
            if sorted(view) != list(range(partitions)):
                return f"{n} lists partitions {sorted(view)} of {topic}"
            for p, e in sorted(view.items()):
                if not e.get("leader") or e["leader"] in exclude:
                    return f"{n}: {topic}/{p} has leader {e.get('leader')!r}"
                if len(e.get("in_sync", [])) < in_sync:
                    return f"{n}: {topic}/{p} in sync {e.get('in_sync')}"
            if first is None:
                first = view
            else:
                for p in range(partitions):
                    a, b = first[p], view[p]
                    if (a["leader"], a["epoch"]) != (b["leader"], b["epoch"]):
                        return (f"{topic}/{p}: {on[0]} says leader {a['leader']} epoch "
                                f"{a['epoch']}, {n} says {b['leader']} epoch {b['epoch']}")
        return first
    return check


def caught_up(nodes, topic, partitions, node_id, replicas=3):
    """A check for wait_until: as `node_id` sees it, every partition of `topic` has a
    leader and all `replicas` copies in sync, the high watermark is the log end, and every
    follower has synced up to it (lag 0). Returns {partition: entry} once true."""
    def check():
        view = nodes.partitions(node_id, topic)
        if sorted(view) != list(range(partitions)):
            return f"{node_id} lists partitions {sorted(view)} of {topic}"
        for p, e in sorted(view.items()):
            if not e.get("leader") or len(e.get("in_sync", [])) < replicas:
                return f"{topic}/{p}: leader {e.get('leader')!r}, in sync {e.get('in_sync')}"
            if e["high_watermark"] != e["log_end"]:
                return f"{topic}/{p}: high watermark {e['high_watermark']} < end {e['log_end']}"
            followers = e.get("followers", [])
            if len(followers) < replicas - 1:
                return f"{topic}/{p}: followers {followers}"
            for f in followers:
                if f.get("lag") != 0 or f.get("synced_end") != e["log_end"]:
                    return f"{topic}/{p}: follower {f} behind end {e['log_end']}"
        return view
    return check


def leading_counts(view, node_ids):
    """node id -> how many partitions of a replicas view ({p: entry}) it leads."""
    return {n: sum(1 for e in view.values() if e["leader"] == n) for n in node_ids}


def placement_file(path, nodes, node_id):
    """Writes GET /v1/cluster/partitions of `node_id` to `path` (the checker's
    --partitions) and returns it."""
    view = get_json(nodes.endpoint(node_id), "/v1/cluster/partitions", nodes.token)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(view, f)
    return path


def until_each(prober, pairs, want, timeout_s, pause_s=0.1):
    """Probes every (node, partition) of `pairs` at once, each in its own thread, until it
    answers a status in `want` or `timeout_s` passes. Returns {(node, partition): (the last
    Request, every Request sent)}: each pair's first success is timed on its own, not
    after the pairs probed before it."""
    out = {}
    lock = threading.Lock()

    def run(node_id, p):
        r, tried = prober.until(node_id, p, want, timeout_s, pause_s)
        with lock:
            out[(node_id, p)] = (r, tried)

    threads = [threading.Thread(target=run, args=pair, daemon=True) for pair in pairs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout_s + 2 * REQUEST_TIMEOUT_S)
    missing = sorted(set(pairs) - set(out))
    if missing:
        raise AssertionError(f"probes of {missing} never ended")
    return out


def summarize(requests):
    """status -> count; a 503 whose forward was lost counts as "503-indeterminate"."""
    out = {}
    for r in requests:
        key = str(r.status)
        if r.status == 503 and r.detail.startswith("indeterminate"):
            key = "503-indeterminate"
        out[key] = out.get(key, 0) + 1
    return dict(sorted(out.items()))


class ScenarioTestCase(unittest.TestCase):
    """A seeded scenario with its own work directory, kept when the test fails."""

    def setUp(self):
        text = os.environ.get(SEED_ENV)
        self.seed = int(text) if text else random.SystemRandom().randrange(1, 2 ** 31)
        self.rng = random.Random(self.seed)
        self.workdir = tempfile.mkdtemp(prefix=f"nerve-{self.scenario}-{self.seed}-")
        self.result = {"scenario": self.scenario, "seed": self.seed}
        print(f"[{self.scenario}] seed {self.seed} ({SEED_ENV}={self.seed} replays it); "
              f"work dir {self.workdir}", file=sys.stderr, flush=True)

    def log(self, msg):
        print(f"[{self.scenario} seed {self.seed}] {msg}", file=sys.stderr, flush=True)

    @contextlib.contextmanager
    def seeded(self):
        """Runs the body; on failure names the seed and keeps the work dir; always writes
        the result line."""
        started = time.monotonic()
        try:
            yield
        except unittest.SkipTest:
            self.result["outcome"] = "skip"
            raise
        except BaseException as e:
            self.result["outcome"] = "FAIL"
            self.result["error"] = f"{type(e).__name__}: {str(e)[:500]}"
            self.save_logs()
            self.log(f"FAILED; replay with {SEED_ENV}={self.seed}; the history, faults and "
                     f"dumps are kept in {self.workdir}")
            raise AssertionError(f"{self.scenario} failed with seed {self.seed} "
                                 f"({SEED_ENV}={self.seed} replays it; files in "
                                 f"{self.workdir}): {e}") from e
        else:
            self.result["outcome"] = "pass"
            if os.environ.get(KEEP_ENV):
                self.save_logs()
                self.log(f"kept {self.workdir} ({KEEP_ENV} is set)")
            else:
                shutil.rmtree(self.workdir, ignore_errors=True)
        finally:
            self.result["seconds"] = round(time.monotonic() - started, 1)
            line = json.dumps(self.result, sort_keys=True)
            print(f"[{self.scenario}] result {line}", file=sys.stderr, flush=True)
            path = os.environ.get(RESULTS_ENV)
            if path:
                with open(path, "a", encoding="utf-8") as f:
                    f.write(line + "\n")

    def probe_and_pick_victim(self, nodes, topic, partitions):
        """Opens the history, probes each partition through each node (all 201, so the
        topic exists everywhere), checks every node sees the same owners and picks a
        node owning the most partitions (seeded). When one node owns every partition of
        `topic`, takes `topic`.1, .2, ... instead (sender.topic is the one used).
        Returns (history path, history, sender, prober, owners, victim)."""
        hist_path = os.path.join(self.workdir, "history.jsonl")
        hist = history_mod.History(hist_path)
        self.addCleanup(hist.close)
        sender = Sender(nodes, topic, partitions, hist)
        prober = Prober(sender)
        for attempt in range(1, SPREAD_TRIES + 1):
            for node_id in nodes.ids():
                for p in range(partitions):
                    r = prober.probe(node_id, p)
                    self.assertEqual(r.status, 201, r)
            owners = nodes.owners("n1", sender.topic)
            self.assertEqual(sorted(owners), list(range(partitions)), owners)
            for node_id in nodes.ids():
                self.assertEqual(nodes.owners(node_id, sender.topic), owners, node_id)
            if len(set(owners.values())) > 1 or attempt == SPREAD_TRIES:
                break
            # Placement hashed every partition to one node (1 topic name in 3^(n-1)):
            # its fault would leave no partition alive to check. The probes of this
            # topic stay in the history and are checked like any other.
            self.log(f"every partition of {sender.topic} is on {owners[0]}; "
                     f"the scenario uses {topic}.{attempt} instead")
            sender.topic = f"{topic}.{attempt}"
        self.assertGreater(len(set(owners.values())), 1,
                           f"every partition of {SPREAD_TRIES} topics on one node: {owners}")
        counts = {n: sum(1 for o in owners.values() if o == n) for n in nodes.ids()}
        most = max(counts.values())
        victim = self.rng.choice(sorted(n for n, c in counts.items() if c == most))
        return hist_path, hist, sender, prober, owners, victim

    # -- cluster step 2 -------------------------------------------------------------------

    def start_replicated(self, partitions, replication=None, etcd=None, cluster_cls=None,
                         config=None, **kw):
        """Starts etcd and a 3-node ReplicatedCluster (cluster_harness) in the work dir
        with topics of `partitions` partitions (and the rest of `config`); waits until
        every node is linked. Returns (cluster, Nodes)."""
        import cluster_harness
        cls = cluster_cls or cluster_harness.ReplicatedCluster
        config = dict(config or {}, topics={"defaults": {"partitions": partitions}})
        cluster = cls(3, workdir=self.workdir, replication=replication, etcd=etcd,
                      config=config, **kw)
        self.addCleanup(cluster.cleanup)
        self.cluster = cluster
        cluster.start()
        nodes = Nodes(cluster.nodes, getattr(cluster, "token", None))
        wait_until(all_linked(nodes, nodes.ids()), 30, "all nodes linked")
        return cluster, nodes

    def probe_replicated(self, nodes, topic, partitions, within_s=20.0):
        """Opens the history; probes each partition through each node until it answers 201
        (the topic is created in etcd and its partitions elect leaders on first use: 503
        meanwhile), within `within_s`; waits until every partition has 3 in-sync replicas
        and one leader every node agrees on. Returns (history path, history, sender,
        prober, {partition: entry of /v1/cluster/partitions})."""
        hist_path = os.path.join(self.workdir, "history.jsonl")
        hist = history_mod.History(hist_path)
        self.addCleanup(hist.close)
        sender = Sender(nodes, topic, partitions, hist)
        prober = Prober(sender)
        t0 = time.monotonic()
        for node_id in nodes.ids():
            for p in range(partitions):
                left = max(1.0, within_s - (time.monotonic() - t0))
                r, tried = prober.until(node_id, p, {201}, left, pause_s=0.2)
                self.assertEqual(r.status, 201, f"{topic}/{p} through {node_id}: {tried[-3:]}")
        view = wait_until(replicas_ready(nodes, topic, partitions, nodes.ids(), in_sync=3),
                          15, "every partition with a leader and 3 in-sync replicas")
        self.log(f"every partition took writes through every node and has 3 in-sync "
                 f"replicas after {time.monotonic() - t0:.1f} s")
        return hist_path, hist, sender, prober, view

    def pick_busiest_leader(self, view, node_ids):
        """A node leading the most partitions (seeded on a tie)."""
        counts = leading_counts(view, node_ids)
        most = max(counts.values())
        return self.rng.choice(sorted(n for n, c in counts.items() if c == most))

    def pick_victim(self, view, node_ids):
        """The busiest leader as the victim, logged and in the result: returns it, the
        partitions it leads and the other nodes."""
        victim = self.pick_busiest_leader(view, node_ids)
        led = sorted(p for p, e in view.items() if e["leader"] == victim)
        self.log(f"leaders {dict((p, e['leader']) for p, e in sorted(view.items()))}; "
                 f"victim {victim} leads {led}")
        self.result.update(victim=victim, victim_partitions=len(led))
        return victim, led, [n for n in node_ids if n != victim]

    def first_writes(self, prober, topic, pairs, t0, timeout_s, after, pause_s=0.1):
        """Probes every (node, partition) of `pairs` until each answers 201 (all must,
        within `timeout_s`): {(node, partition): seconds from `t0` to that 201}. `after`
        names the fault in the failure message."""
        firsts = until_each(prober, pairs, {201}, timeout_s, pause_s)
        took = {}
        for (node_id, p), (r, tried) in sorted(firsts.items()):
            self.assertEqual(r.status, 201,
                             f"{topic}/{p} through {node_id} after {after}: {tried[-3:]}")
            took[(node_id, p)] = r.t1 - t0
        return took

    def drain_and_check(self, cluster, nodes, topic, partitions, hist, hist_path, sender, load,
                        faults, min_insync=2, caught_up_s=30.0):
        """Stops the load (retrying what is indeterminate), waits until every follower has
        caught up, saves the placement, stops the nodes (all must exit 0) and runs the
        checker in its replicated mode over every node's dump. Returns the load's
        unresolved ids."""
        unresolved = load.stop(drain_s=20.0)
        hist.close()
        requests = sender.requests
        self.result.update(requests=len(requests), statuses=summarize(requests),
                           events=dict(hist.counts), unresolved=len(unresolved))
        self.log(f"{len(requests)} requests {summarize(requests)}; events {hist.counts}; "
                 f"{len(unresolved)} ids still indeterminate")
        self.assertEqual(load.unexpected, [], "requests refused with a 4xx")
        t0 = time.monotonic()
        wait_until(caught_up(nodes, topic, partitions, nodes.ids()[0]), caught_up_s,
                   "every follower caught up (lag 0)", pause_s=0.2)
        self.result["caught_up_s"] = round(time.monotonic() - t0, 1)
        placement = placement_file(os.path.join(self.workdir, "partitions.json"), nodes,
                                   nodes.ids()[0])
        codes = cluster.stop_all()
        self.assertEqual(codes, {n: 0 for n in nodes.ids()}, cluster.stderr_text()[-3000:])
        self.check_logs(cluster, hist_path, faults, placement, min_insync)
        return unresolved

    def save_logs(self):
        """Writes every node's stderr into the work dir (nI.stderr)."""
        cluster = getattr(self, "cluster", None)
        for node_id, srv in (cluster.nodes.items() if cluster else []):
            with open(os.path.join(self.workdir, f"{node_id}.stderr"), "w") as f:
                f.write(srv.stderr_text() + "\n")

    def check_logs(self, cluster, hist_path, faults, placement_path=None, min_insync=None):
        """Writes the faults, runs the checker, fails with its report unless valid (with a
        placement: in its replicated mode)."""
        faults_path = history_mod.write_faults(os.path.join(self.workdir, "faults.jsonl"), faults)
        report = run_checker(cluster, self.workdir, hist_path, faults_path, placement_path,
                             min_insync)
        text = report.text()
        self.log("checker:\n" + text)
        self.result["checker"] = {c.name: c.violations for c in report.checks}
        self.result["info_ids"] = report.info
        self.assertTrue(report.valid, text)
        return report


class ReplicatedScenarioTestCase(ScenarioTestCase):
    """A cluster step-2 scenario: skips itself, saying why, without etcd."""

    def setUp(self):
        import etcd_harness  # here: a step-1 scenario never needs it
        etcd_harness.etcd_binary()
        super().setUp()
