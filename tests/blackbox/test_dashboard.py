"""The shipped Grafana dashboard (docs/grafana/nerve-dashboard.json) and Prometheus alert
rules (docs/prometheus/nerve-alerts.yml) only name metrics a real node exports: every
`nerve_*` name in their expressions must appear in a GET /metrics scrape taken after
some traffic (publishes, acks, failures into the DLQ, HTTP requests), and every
expression must parse as PromQL (promtool check rules), so neither can rot."""

import json
import os
import re
import shutil
import subprocess
import tempfile
import unittest

from harness import ServerTestCase, builtin, parse_samples, require_promtool, topic

DOCS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "docs")
DASHBOARD = os.path.join(DOCS, "grafana", "nerve-dashboard.json")
ALERTS = os.path.join(DOCS, "prometheus", "nerve-alerts.yml")
METRIC_RE = re.compile(r"\bnerve_[a-zA-Z0-9_]+")
# Grafana's variables, as Prometheus would see them after Grafana substitutes them.
GRAFANA_VARS = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h",
                "$instance": ".*"}


def dashboard_exprs():
    """(panel title, expr) of every query of the dashboard, rows' panels included."""
    with open(DASHBOARD) as f:
        dash = json.load(f)
    out = []

    def walk(panels):
        for p in panels:
            for t in p.get("targets", []):
                out.append((p.get("title", "?"), t["expr"]))
            walk(p.get("panels", []))

    walk(dash["panels"])
    return dash, out


def alert_exprs():
    """(alert name, expr) of every rule in the alerts file (a tiny reader: the file keeps
    each `expr:` on one line, which this test also enforces)."""
    out = []
    name = None
    with open(ALERTS) as f:
        for line in f:
            s = line.strip()
            if s.startswith("- alert:"):
                name = s.split(":", 1)[1].strip()
            elif s.startswith("expr:"):
                expr = s.split(":", 1)[1].strip()
                assert expr and expr not in ("|", ">"), f"{name}: keep expr on one line"
                out.append((name, expr))
    return out


def grafana_to_promql(expr):
    for var, value in GRAFANA_VARS.items():
        expr = expr.replace(var, value)
    assert "$" not in expr, f"an unknown Grafana variable in {expr}"
    return expr


class DashboardTest(ServerTestCase):

    @classmethod
    def setUpClass(cls):
        require_promtool()

    def scrape_after_traffic(self):
        t = topic("dash")
        srv = self.new_server(config={"agents": [
            builtin("ok", [t], "echo"),
            builtin("bad", [t], "fail", max_retries=0)]})
        r = srv.publish(t, [{"data": i} for i in range(5)])
        self.assertEqual(r.status, 201, r)
        self.wait_for(lambda: srv.get("/v1/dlq?agent=bad").json()["count"] == 5,
                      what="5 events in the DLQ")
        self.wait_for(lambda: srv.get("/v1/metrics?agent=ok").json()["metrics"][0]["processed"]
                      == 5, what="5 events acked")
        text = srv.get("/metrics").body.decode("utf-8")
        return {name for name, _labels in parse_samples(text)}

    def promtool_check(self, exprs):
        """Every expr parses as PromQL: promtool checks them as recording rules."""
        tmp = tempfile.mkdtemp(prefix="nerve-rules-")
        self.addCleanup(shutil.rmtree, tmp, True)
        path = os.path.join(tmp, "rules.yml")
        with open(path, "w") as f:
            f.write("groups:\n  - name: check\n    rules:\n")
            for i, (_, expr) in enumerate(exprs):
                f.write(f"      - record: check:expr_{i}\n        expr: {json.dumps(expr)}\n")
        p = subprocess.run(["promtool", "check", "rules", path], capture_output=True,
                           timeout=60)
        out = (p.stdout + p.stderr).decode("utf-8", "replace")
        self.assertEqual(p.returncode, 0, out + "\n" + "\n".join(e for _, e in exprs))

    def test_every_metric_the_dashboard_and_alerts_name_is_exported(self):
        dash, panel_exprs = dashboard_exprs()
        self.assertGreaterEqual(len(panel_exprs), 15)
        exprs = [(title, grafana_to_promql(e)) for title, e in panel_exprs] + alert_exprs()
        exported = self.scrape_after_traffic()
        used = {}
        for where, expr in exprs:
            for name in METRIC_RE.findall(expr):
                used.setdefault(name, where)
        missing = {name: where for name, where in used.items() if name not in exported}
        self.assertEqual(missing, {}, "named in the dashboard or alerts but not in /metrics; "
                         f"exported: {sorted(exported)}")
        # The dashboard covers what operations.md says it does.
        for name in ("nerve_events_published_total", "nerve_deliveries_total",
                     "nerve_processing_seconds_bucket", "nerve_pending_deliveries",
                     "nerve_consumer_lag", "nerve_dlq_entries", "nerve_agent_restarts_total",
                     "nerve_storage_write_seconds_bucket", "nerve_storage_sync_seconds_bucket",
                     "nerve_http_requests_total", "nerve_http_request_duration_seconds_bucket"):
            self.assertIn(name, {n for _, e in panel_exprs for n in METRIC_RE.findall(e)})
        self.promtool_check(exprs)
        # Grafana can import it: unique panel ids, a uid, a datasource variable.
        ids = []

        def collect(panels):
            for p in panels:
                ids.append(p["id"])
                collect(p.get("panels", []))

        collect(dash["panels"])
        self.assertEqual(len(ids), len(set(ids)))
        self.assertTrue(dash["uid"])
        self.assertIn("datasource", {v["name"] for v in dash["templating"]["list"]})

    def test_alert_rules_pass_promtool(self):
        p = subprocess.run(["promtool", "check", "rules", ALERTS], capture_output=True,
                           timeout=60)
        out = (p.stdout + p.stderr).decode("utf-8", "replace")
        self.assertEqual(p.returncode, 0, out)
        self.assertGreaterEqual(len(alert_exprs()), 5)


if __name__ == "__main__":
    unittest.main()
