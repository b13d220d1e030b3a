"""Black-box tests of the operator surface (CONTRACT.md section 6): GET /metrics in the
Prometheus text format (checked by promtool), the measured indicators of
/health/detailed, GET /v1/bus/stats and GET /v1/storage/health, which routes need the
token, the refusal of a non-loopback address without one, and the systemd notifications
of packaging/nerve.service (Type=notify)."""

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import unittest

from harness import (PROBLEM_TYPE, ServerTestCase, builtin, exchange, parse_samples, process,
                     require_promtool, run_nerve, topic)

ECHO_AGENT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..",
                                          "docs", "examples", "echo_agent.py"))

FAST = {"initial": "20ms", "max": "50ms"}
METRICS_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Reads deliveries and never answers: every attempt times out.
SILENT_AGENT = "import sys\nfor line in sys.stdin:\n    pass\n"


class OperationsTestCase(ServerTestCase):

    def scrape(self, srv):
        r = srv.get("/metrics")
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.content_type, METRICS_TYPE, r)
        return r.body.decode("utf-8")

    def value(self, samples, name, **labels):
        """The sample's value; 0 when the series does not exist (yet)."""
        return samples.get((name, frozenset(labels.items())), 0.0)

    def publish_ok(self, srv, topic_name, events, **kw):
        r = srv.publish(topic_name, events, **kw)
        self.assertEqual(r.status, 201, r)
        return r.json()["events"]

    def detailed(self, srv):
        r = srv.get("/health/detailed")
        self.assertEqual(r.status, 200, r)
        body = r.json()
        body["by_name"] = {i["name"]: i for i in body["indicators"]}
        return body

    def dlq_count(self, srv, agent):
        r = srv.get(f"/v1/dlq?agent={agent}")
        self.assertEqual(r.status, 200, r)
        return r.json()["count"]


class MetricsTest(OperationsTestCase):

    @classmethod
    def setUpClass(cls):
        require_promtool()

    def setUp(self):
        self.t = topic("ops")
        self.srv = self.new_server(config={"agents": [
            builtin("ok", [self.t], "echo"),
            builtin("bad", [self.t], "fail", max_retries=1, backoff=FAST),
            process("silent", [self.t], [sys.executable, "-c", SILENT_AGENT],
                    timeout="200ms", max_retries=0)]})

    def promtool_check(self, text):
        p = subprocess.run(["promtool", "check", "metrics"], input=text.encode("utf-8"),
                           capture_output=True, timeout=30)
        problems = (p.stdout + p.stderr).decode("utf-8", "replace").strip()
        self.assertEqual(p.returncode, 0, problems + "\n" + text)
        self.assertEqual(problems, "", text)

    def settled(self, n):
        """Waits until every agent has handled `n` events and the DLQ holds the 2n entries
        of "bad" and "silent" (its gauge follows the deliveries counter by a moment: the DLQ
        actor counts an entry once it is stored); returns the samples."""
        def check():
            s = parse_samples(self.scrape(self.srv))
            done = (self.value(s, "nerve_deliveries_total", agent="ok", topic=self.t,
                               outcome="acked") == n
                    and self.value(s, "nerve_deliveries_total", agent="bad", topic=self.t,
                                   outcome="dead_lettered") == n
                    and self.value(s, "nerve_deliveries_total", agent="silent", topic=self.t,
                                   outcome="dead_lettered") == n
                    and self.value(s, "nerve_dlq_entries") == 2 * n)
            return s if done else None
        return self.wait_for(check, what=f"{n} events handled by every agent")

    def test_metrics_pass_promtool_and_count_what_happened(self):
        before = parse_samples(self.scrape(self.srv))
        self.assertEqual(self.value(before, "nerve_up"), 1.0)
        self.assertEqual(self.value(before, "nerve_events_published_total", topic=self.t), 0.0)
        self.publish_ok(self.srv, self.t, [{"data": i} for i in range(5)])
        s = self.settled(5)
        self.assertEqual(self.value(s, "nerve_events_published_total", topic=self.t), 5.0)
        d = lambda agent, outcome: self.value(s, "nerve_deliveries_total", agent=agent,
                                              topic=self.t, outcome=outcome)
        self.assertEqual((d("ok", "failed"), d("ok", "timeout"), d("ok", "dead_lettered")),
                         (0, 0, 0))
        # max_retries 1: two failed attempts per event, one retry, then the DLQ.
        self.assertEqual((d("bad", "failed"), d("bad", "retried"), d("bad", "acked")),
                         (10, 5, 0))
        self.assertEqual((d("silent", "timeout"), d("silent", "failed")), (5, 0))
        self.assertEqual(self.value(s, "nerve_dlq_entries"), 10.0)
        self.assertEqual(self.value(s, "nerve_processing_seconds_count", agent="ok"), 5.0)
        self.assertEqual(self.value(s, "nerve_processing_seconds_count", agent="bad"), 10.0)
        self.assertGreater(self.value(s, "nerve_storage_write_seconds_count"), 0)
        self.assertGreater(self.value(s, "nerve_storage_sync_seconds_count"), 0)
        for agent in ("ok", "bad", "silent"):
            self.assertEqual(self.value(s, "nerve_pending_deliveries", agent=agent, topic=self.t),
                             0.0)
            self.assertEqual(self.value(s, "nerve_consumer_lag", agent=agent, topic=self.t), 0.0)
        version = self.detailed(self.srv)["version"]
        self.assertEqual(self.value(s, "nerve_build_info", version=version), 1.0)
        # The process series, read from /proc when scraped.
        with open(f"/proc/{self.srv.proc.pid}/status") as f:
            rss = [int(l.split()[1]) * 1024 for l in f if l.startswith("VmRSS:")][0]
        resident = self.value(s, "process_resident_memory_bytes")
        self.assertLess(abs(resident - rss), max(rss // 2, 8 << 20), (resident, rss))
        self.assertLess(resident, self.value(s, "nerve_memory_limit_bytes"))
        self.assertGreater(self.value(s, "process_virtual_memory_bytes"), resident)
        self.assertGreater(self.value(s, "process_open_fds"), 3)
        self.assertGreaterEqual(self.value(s, "process_max_fds"), self.value(s, "process_open_fds"))
        self.assertGreater(self.value(s, "process_cpu_seconds_total"), 0)
        self.assertLess(abs(self.value(s, "process_start_time_seconds") - time.time()), 3600)

        # The counter moves by exactly what is published (a duplicate id is not appended).
        self.publish_ok(self.srv, self.t, [{"data": i, "id": f"ops-{i}"} for i in range(3)])
        self.publish_ok(self.srv, self.t, [{"data": 0, "id": "ops-0"}])
        after = parse_samples(self.scrape(self.srv))
        self.assertEqual(self.value(after, "nerve_events_published_total", topic=self.t), 8.0)
        self.settled(8)
        self.promtool_check(self.scrape(self.srv))

    def test_answers_the_server_sends_before_routing_are_counted(self):
        big = b"x" * (1048576 + 1)
        r, _ = exchange(self.srv.host, self.srv.port,
                        b"POST /v1/topics/t/events HTTP/1.1\r\nHost: x\r\nContent-Length: "
                        + str(len(big)).encode() + b"\r\n\r\n" + big)
        self.assertEqual(r.status, 413)
        r, _ = exchange(self.srv.host, self.srv.port,
                        b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n")
        self.assertEqual(r.status, 431)
        r, _ = exchange(self.srv.host, self.srv.port,
                        b"GET /health HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n"
                        b"Content-Length: 12\r\n\r\n")
        self.assertEqual(r.status, 400)
        s = parse_samples(self.scrape(self.srv))
        for code in ("413", "431", "400"):
            with self.subTest(code=code):
                self.assertEqual(self.value(s, "nerve_http_requests_total", method="other",
                                            route="other", code=code), 1.0)

    def test_http_requests_are_counted_by_route_pattern(self):
        self.publish_ok(self.srv, self.t, {"data": 1})
        self.assertEqual(self.srv.get("/no/such/path-1234").status, 404)
        self.assertEqual(self.srv.request("DELETE", "/v1/topics").status, 405)
        text = self.scrape(self.srv)
        s = parse_samples(text)
        self.assertEqual(self.value(s, "nerve_http_requests_total", method="POST",
                                    route="/v1/topics/{topic}/events", code="201"), 1.0)
        self.assertEqual(self.value(s, "nerve_http_requests_total", method="GET", route="other",
                                    code="404"), 1.0)
        self.assertEqual(self.value(s, "nerve_http_requests_total", method="DELETE",
                                    route="/v1/topics", code="405"), 1.0)
        self.assertEqual(self.value(s, "nerve_http_request_duration_seconds_count",
                                    method="POST", route="/v1/topics/{topic}/events"), 1.0)
        self.assertNotIn(self.t, "".join(l for l in text.splitlines()
                                         if l.startswith("nerve_http_")))
        self.assertNotIn("path-1234", text)
        self.promtool_check(text)


class HealthIndicatorTest(OperationsTestCase):

    def test_a_crashing_process_agent_degrades_the_agents_indicator(self):
        t = topic("crash")
        srv = self.new_server(config={"agents": [
            builtin("fine", [t], "echo"),
            process("crasher", [t], [sys.executable, "-c", "import sys; sys.exit(3)"])]})

        def degraded():
            h = self.detailed(srv)
            agents = h["by_name"]["agents"]
            return h if agents["status"] == "degraded" else None
        h = self.wait_for(degraded, what="the agents indicator to degrade")
        agents = h["by_name"]["agents"]
        self.assertRegex(agents["message"], r"^1 running, 1 (restarting|crashed)$")
        self.assertEqual(h["status"], "degraded", h)
        self.assertEqual(h["state"], "DEGRADED", h)
        s = parse_samples(self.scrape(srv))
        self.assertGreaterEqual(self.value(s, "nerve_agent_restarts_total", agent="crasher"), 1)
        self.assertEqual(self.value(s, "nerve_agent_restarts_total", agent="fine"), 0)
        self.assertEqual(srv.get("/health").status, 200)  # storage is fine

    def test_an_agent_that_crashes_once_degrades_then_recovers(self):
        t = topic("flap")
        marker = os.path.join(tempfile.mkdtemp(prefix="nerve-flap-"), "crashed")
        self.addCleanup(shutil.rmtree, os.path.dirname(marker), True)
        # Crashes on its first start (after a moment, so the crash is seen),
        # then serves like the example agent.
        script = ("import os, sys, time\n"
                  f"m = {marker!r}\n"
                  "if not os.path.exists(m):\n"
                  "    open(m, 'w').close(); time.sleep(0.3); sys.exit(3)\n"
                  f"exec(open({ECHO_AGENT!r}).read())\n")
        srv = self.new_server(config={"agents": [
            process("flapper", [t], [sys.executable, "-c", script])]})
        seen = []

        def state():
            h = self.detailed(srv)
            seen.append((h["by_name"]["agents"]["status"], h["state"]))
            return h
        self.wait_for(lambda: state()["by_name"]["agents"]["status"] == "degraded",
                      what="the crash to degrade the agents indicator")
        h = self.wait_for(lambda: (lambda h: h if h["state"] == "RUNNING" else None)(state()),
                          what="the restarted agent to make the node RUNNING again")
        self.assertEqual(h["status"], "healthy", h)
        self.assertEqual(h["by_name"]["agents"]["message"], "1 running")
        self.assertIn(("degraded", "DEGRADED"), seen)
        # And it serves: a published event is acked.
        r = srv.publish(t, [{"data": {"n": 1}}])
        self.assertEqual(r.status, 201, r)
        eid = r.json()["events"][0]["id"]
        self.wait_for(lambda: srv.get(f"/v1/events/{eid}").json()["deliveries"][0]["state"]
                      == "acked", what="the event to be acked")

    def test_a_healthy_config_is_healthy_and_running(self):
        t = topic("fine")
        srv = self.new_server(config={"agents": [builtin("a", [t], "echo"),
                                                 builtin("b", [t], "echo", instances=2)]})
        h = self.wait_for(lambda: (lambda h: h if h["state"] == "RUNNING" else None)(
            self.detailed(srv)), what="RUNNING")
        self.assertEqual(h["status"], "healthy", h)
        self.assertEqual(h["by_name"]["agents"],
                         {"name": "agents", "status": "healthy", "message": "3 running"})
        for ind in h["indicators"]:
            self.assertEqual(ind["status"], "healthy", h)

    def test_dlq_above_the_limit_degrades_the_dlq_indicator(self):
        t = topic("dlqh")
        srv = self.new_server(config={
            "health": {"dlq_degraded": 2},
            "agents": [builtin("bad", [t], "fail", max_retries=0, backoff=FAST)]})
        self.publish_ok(srv, t, [{"data": i} for i in range(2)])
        self.wait_for(lambda: self.dlq_count(srv, "bad") == 2, what="2 DLQ entries")
        h = self.detailed(srv)
        self.assertEqual(h["by_name"]["dlq"],
                         {"name": "dlq", "status": "healthy", "message": "2 in DLQ"})
        self.publish_ok(srv, t, {"data": 3})
        self.wait_for(lambda: self.dlq_count(srv, "bad") == 3, what="3 DLQ entries")
        h = self.detailed(srv)
        self.assertEqual(h["by_name"]["dlq"],
                         {"name": "dlq", "status": "degraded", "message": "3 in DLQ"})
        self.assertEqual((h["status"], h["state"]), ("degraded", "DEGRADED"), h)


class BusAndStorageTest(OperationsTestCase):

    def test_bus_stats_add_up_the_node(self):
        t1, t2 = topic("bus"), topic("bus")
        srv = self.new_server(config={
            "topics": {t2: {"partitions": 2}},
            "agents": [builtin("ok", [t1], "echo"),
                       builtin("bad", [t2], "fail", max_retries=1, backoff=FAST)]})
        stats = srv.get("/v1/bus/stats")
        self.assertEqual(stats.status, 200, stats)
        empty = stats.json()
        self.assertEqual(set(empty), {"topics", "partitions", "events", "bytes", "agents",
                                      "pending", "lag", "dlq", "published_total",
                                      "delivered_total", "acked_total", "failed_total",
                                      "dead_lettered_total", "uptime_s"})
        self.assertEqual((empty["topics"], empty["events"], empty["agents"], empty["dlq"]),
                         (0, 0, 2, 0))
        self.publish_ok(srv, t1, [{"data": i} for i in range(4)])
        self.publish_ok(srv, t2, [{"data": i} for i in range(3)])

        def settled():
            b = srv.get("/v1/bus/stats").json()
            return b if b["acked_total"] == 4 and b["dead_lettered_total"] == 3 else None
        b = self.wait_for(settled, what="4 acked and 3 dead-lettered")
        for k, v in b.items():
            self.assertIsInstance(v, float if k == "uptime_s" else int, (k, b))
        self.assertEqual((b["topics"], b["partitions"], b["events"]), (2, 6, 7), b)
        self.assertEqual((b["published_total"], b["dlq"]), (7, 3), b)
        self.assertEqual((b["failed_total"], b["delivered_total"]), (6, 10), b)
        self.assertEqual((b["pending"], b["lag"]), (0, 0), b)
        self.assertGreater(b["bytes"], 0, b)
        self.assertGreaterEqual(b["uptime_s"], 0, b)

    def test_storage_health_reports_the_backend(self):
        srv = self.new_server()
        self.publish_ok(srv, topic("st"), {"data": "x" * 1000})
        r = srv.get("/v1/storage/health")
        self.assertEqual(r.status, 200, r)
        body = r.json()
        self.assertEqual(set(body), {"status", "backend", "path", "size_bytes", "fsync",
                                     "write_latency_ms", "last_error"})
        self.assertEqual((body["status"], body["backend"], body["fsync"], body["last_error"]),
                         ("healthy", "rocksdb", "always", ""), body)
        self.assertEqual(body["path"], srv.data_dir)
        self.assertGreater(body["size_bytes"], 0, body)
        self.assertIsInstance(body["write_latency_ms"], (int, float), body)
        self.assertGreaterEqual(body["write_latency_ms"], 0, body)

    def test_storage_health_names_the_fsync_policy(self):
        srv = self.new_server(config={"storage": {"fsync": "never"}})
        self.assertEqual(srv.get("/v1/storage/health").json()["fsync"], "never")


class AuthTest(OperationsTestCase):

    def test_metrics_and_health_stay_open_while_v1_needs_the_token(self):
        srv = self.new_server(env={"NERVE_HTTP_TOKEN": "s3cret"})
        for path in ("/v1/bus/stats", "/v1/storage/health"):
            with self.subTest(path=path):
                r = srv.get(path)
                self.assertProblem(r, 401)
                self.assertEqual(r.content_type.split(";")[0], PROBLEM_TYPE)
                r = srv.get(path, headers={"Authorization": "Bearer wrong"})
                self.assertProblem(r, 401)
                r = srv.get(path, headers={"Authorization": "Bearer s3cret"})
                self.assertEqual(r.status, 200, r)
        for path in ("/metrics", "/health", "/health/detailed"):
            with self.subTest(path=path):
                self.assertEqual(srv.get(path).status, 200)
        # The refusals are counted under the route, not as unknown paths.
        s = parse_samples(self.scrape(srv))
        self.assertEqual(self.value(s, "nerve_http_requests_total", method="GET",
                                    route="/v1/bus/stats", code="401"), 2.0)

    def test_the_token_cannot_be_sidestepped_by_spelling_the_path_differently(self):
        srv = self.new_server(env={"NERVE_HTTP_TOKEN": "s3cret"})
        for method, path in [("GET", "//v1/topics"), ("GET", "/%761/agents"),
                             ("GET", "/v1//bus/stats"), ("POST", "//v1/topics/t/events"),
                             ("GET", "///v1/replays"), ("GET", "/v%31/cluster")]:
            with self.subTest(path=path):
                body = [{"data": 1}] if method == "POST" else None
                r = srv.request(method, path, body=body)
                self.assertProblem(r, 401)
        r = srv.get("/v1/topics", headers={"Authorization": "Bearer s3cret"})
        self.assertEqual(r.json()["topics"], [], "an unauthorized publish was stored")

    def test_limits_of_zero_are_refused_not_crashing(self):
        srv = self.new_server()
        for path in ("/v1/dlq?limit=0", "/v1/topics/t/events?limit=0",
                     "/v1/replays/x/history?agent=a&limit=0"):
            with self.subTest(path=path):
                self.assertProblem(srv.get(path), 400, "from 1 to 1000")
        self.assertHealthy(srv)

    def test_counters_are_on_disk_within_a_second_of_going_idle(self):
        t = topic("idle")
        srv = self.new_server(config={"agents": [
            builtin("e", [t], "echo"),
            builtin("f", [t], "fail", max_retries=0)]})
        for i in range(6):
            self.assertEqual(srv.publish(t, [{"data": i, "key": f"k{i}"}]).status, 201)
            time.sleep(0.05)

        def rows():
            return {m["agent"]: m for m in srv.get("/v1/metrics").json()["metrics"]}
        self.wait_for(lambda: rows().get("e", {}).get("processed") == 6
                      and rows().get("f", {}).get("dead_lettered") == 6, what="6 handled each")
        before = rows()
        time.sleep(2.5)  # idle: the held-back snapshot is written by its timer
        srv.kill()
        srv.start()
        after = rows()
        for agent in ("e", "f"):
            for k in ("received", "processed", "failed", "dead_lettered"):
                self.assertEqual(after[agent][k], before[agent][k], (agent, k, before, after))
        stats = srv.get("/v1/bus/stats").json()
        self.assertEqual(stats["dead_lettered_total"], stats["dlq"], stats)

    def test_an_agent_command_that_cannot_start_backs_off(self):
        srv = self.new_server(config={"agents": [
            process("ghost", [topic("ghost")], ["/nonexistent/agent"])]})
        time.sleep(3)
        [inst] = srv.get("/v1/agents/ghost").json()["instances"]
        # 100 ms doubling: 0.1 + 0.2 + 0.4 + 0.8 + 1.6 > 3 s, so at most 6 tries.
        self.assertLessEqual(inst["restarts"], 6, inst)
        self.assertGreaterEqual(inst["restarts"], 2, inst)
        self.assertIn("code 127", srv.stderr_text())

    def test_non_loopback_without_token_is_refused_at_start_up(self):
        data = tempfile.mkdtemp(prefix="nerve-bb-")
        self.addCleanup(shutil.rmtree, data, True)
        p = run_nerve(["run", "--http", "0.0.0.0:0", "--data-dir", os.path.join(data, "d")])
        self.assertEqual(p.returncode, 2, p)
        lines = p.stderr.strip().splitlines()
        self.assertEqual(len(lines), 1, p)
        self.assertIn("http.token", lines[0])
        self.assertFalse(os.path.exists(os.path.join(data, "d")), "nothing is created")


class SystemdNotifyTest(OperationsTestCase):
    """`nerve run` speaks sd_notify(3) to $NOTIFY_SOCKET, as systemd sets it for Type=notify."""

    def test_ready_once_readyz_answers_stopping_on_sigterm_and_agents_do_not_inherit_it(self):
        workdir = tempfile.mkdtemp(prefix="nerve-bb-")
        self.addCleanup(shutil.rmtree, workdir, True)
        path = os.path.join(workdir, "notify")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.addCleanup(sock.close)
        sock.bind(path)
        sock.settimeout(30)
        srv = self.new_server(workdir=workdir, env={"NOTIFY_SOCKET": path}, config={"agents": [
            process("envdump", [topic("envdump")],
                    ["sh", "-c", "env > agent.env; exec cat > /dev/null"])]})
        ready = sock.recv(4096).decode()
        self.assertEqual(ready, f"READY=1\nSTATUS=serving http://127.0.0.1:{srv.port}")
        self.assertEqual(srv.get("/readyz").status, 200)
        env_file = os.path.join(workdir, "agent.env")
        self.wait_for(lambda: os.path.exists(env_file) and os.path.getsize(env_file) > 0,
                      what="the agent's environment")
        with open(env_file) as f:
            self.assertNotIn("NOTIFY_SOCKET=", f.read())
        self.assertEqual(srv.stop(), 0)
        self.assertEqual(sock.recv(4096).decode(), "STOPPING=1\nSTATUS=draining")


if __name__ == "__main__":
    unittest.main()
