"""Structured logs: with log.format json every stderr line is one JSON object with time,
level and msg, and lines about an agent, topic or event carry them as fields (agent,
topic, partition, event_id, dlq_id), not only inside the message; text a process agent
writes to its stderr never becomes a field. The text format keeps them as key=value."""

import json
import sys
import unittest

from harness import ServerTestCase, builtin, process, topic

# Writes a line that looks like fields to stderr, then answers nothing and exits.
NOISY_AGENT = ("import sys\nsys.stderr.write('topic=forged event=forged hello\\n')\n"
               "sys.stderr.flush()\nfor line in sys.stdin:\n    pass\n")


class JsonLogsTest(ServerTestCase):

    def json_lines(self, srv):
        out = []
        for line in srv.stderr_lines:
            try:
                obj = json.loads(line)
            except ValueError:
                self.fail(f"a log line that is not JSON: {line!r}")
            self.assertIsInstance(obj, dict, line)
            for key in ("time", "level", "msg"):
                self.assertIn(key, obj, line)
            out.append(obj)
        return out

    def test_a_dead_lettered_event_is_logged_with_agent_topic_and_event_id_fields(self):
        t = topic("logs")
        srv = self.new_server(config={
            "log": {"format": "json", "level": "info"},
            "agents": [builtin("breaks", [t], "fail", max_retries=0),
                       process("noisy", [t], [sys.executable, "-c", NOISY_AGENT])]})
        r = srv.publish(t, {"id": "evt-logs-1", "data": {"n": 1}})
        self.assertEqual(r.status, 201, r)
        dlq = self.wait_for(lambda: srv.get("/v1/dlq?agent=breaks").json()["entries"],
                            what="the DLQ entry")

        def dlq_line():
            for obj in self.json_lines(srv):
                if obj.get("dlq_id") and "moved to the DLQ" in obj["msg"]:
                    return obj
            return None

        line = self.wait_for(dlq_line, what="the DLQ log line")
        self.assertEqual(line["level"], "warning")
        self.assertEqual(line["agent"], "breaks")
        self.assertEqual(line["topic"], t)
        self.assertEqual(line["event_id"], "evt-logs-1")
        self.assertEqual(line["dlq_id"], dlq[0]["id"])
        self.assertEqual(line["partition"], dlq[0]["partition"])
        # A process agent's stderr: the agent is a field, what it wrote is not.
        stderr_line = self.wait_for(
            lambda: next((o for o in self.json_lines(srv) if "hello" in o["msg"]), None),
            what="the agent's stderr in the log")
        self.assertEqual(stderr_line["agent"], "noisy")
        self.assertEqual(stderr_line["instance"], 0)
        self.assertNotIn("topic", stderr_line)
        self.assertNotIn("event_id", stderr_line)
        # The start-up line has no such fields.
        ready = next(o for o in self.json_lines(srv) if "ready in" in o["msg"])
        self.assertNotIn("agent", ready)
        self.stop_ok(srv)
        self.json_lines(srv)  # shutdown lines are JSON too

    def test_text_format_keeps_the_fields_in_the_message_and_debug_adds_retries(self):
        t = topic("logs")
        srv = self.new_server(config={
            "log": {"format": "text", "level": "debug"},
            "agents": [builtin("breaks", [t], "fail", max_retries=1,
                               backoff={"initial": "10ms", "max": "20ms"})]})
        self.assertEqual(srv.publish(t, {"id": "evt-logs-2", "data": 1}).status, 201)
        self.wait_for(lambda: srv.get("/v1/dlq?agent=breaks").json()["count"] == 1,
                      what="the DLQ entry")
        line = self.wait_for(lambda: next((l for l in srv.stderr_lines if "DLQ" in l), None),
                             what="the DLQ log line")
        self.assertRegex(line, rf" warning agent=breaks topic={t} partition=\d+ "
                               r"event=evt-logs-2 dlq=dlq-[0-9a-f]+: moved to the DLQ after 2 ")
        retry = [l for l in srv.stderr_lines if "attempt 1 failed" in l]
        self.assertEqual(len(retry), 1, srv.stderr_text())
        self.assertRegex(retry[0], rf" debug agent=breaks topic={t} partition=\d+ event=evt-logs-2:")

if __name__ == "__main__":
    unittest.main()
