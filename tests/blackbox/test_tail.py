"""Black-box tests of the live tail, WebSocket GET /v1/topics/{topic}/tail
(CONTRACT.md section 6): live events as JSON text frames.

Uses Debian's python3-websocket (websocket-client) as the client.
"""

import json
import signal
import threading
import time
import unittest
import uuid

import websocket

from harness import ServerTestCase


def topic(prefix):
    return f"{prefix}.{uuid.uuid4().hex[:10]}"


class TailTest(ServerTestCase):

    def connect(self, srv, name, headers=None):
        ws = websocket.create_connection(f"ws://{srv.host}:{srv.port}/v1/topics/{name}/tail",
                                         timeout=10, header=headers or [])
        self.addCleanup(ws.close)
        return ws

    def publish(self, srv, name, events):
        r = srv.publish(name, events)
        self.assertEqual(r.status, 201, r)
        return r.json()["events"]

    def frames(self, ws, n):
        out = []
        for _ in range(n):
            opcode, data = ws.recv_data()
            self.assertEqual(opcode, websocket.ABNF.OPCODE_TEXT)
            out.append(json.loads(data.decode("utf-8")))
        return out

    def test_follower_gets_each_durable_event_once_as_stored(self):
        srv = self.new_server()
        t, other = topic("tail"), topic("other")
        ws = self.connect(srv, t)
        time.sleep(0.1)  # the subscription starts after the handshake
        sent = []
        for i in range(20):
            batch = [{"data": {"n": i, "k": j}, "key": f"k{j}"} for j in range(5)]
            sent += self.publish(srv, t, batch)
            self.publish(srv, other, [{"data": "not followed"}])
        got = self.frames(ws, len(sent))
        self.assertEqual(sorted(e["id"] for e in got), sorted(e["id"] for e in sent))
        # Exactly the stored JSON, and in offset order within each partition.
        stored = {e["id"]: e for p in range(4) for e in srv.read_partition(t, p)}
        for e in got:
            self.assertEqual(e, stored[e["id"]])
        for p in range(4):
            offsets = [e["offset"] for e in got if e["partition"] == p]
            self.assertEqual(offsets, sorted(offsets))
        ws.settimeout(0.3)
        with self.assertRaises(websocket.WebSocketTimeoutException):
            ws.recv()  # nothing of the other topic, nothing twice

    def test_tail_of_a_topic_created_later_and_two_followers(self):
        srv = self.new_server()
        t = topic("later")
        a, b = self.connect(srv, t), self.connect(srv, t)
        time.sleep(0.1)
        sent = self.publish(srv, t, [{"data": i} for i in range(10)])
        for ws in (a, b):
            self.assertEqual(sorted(e["id"] for e in self.frames(ws, 10)),
                             sorted(e["id"] for e in sent))

    def test_closed_follower_does_not_disturb_publishing(self):
        srv = self.new_server()
        t = topic("closed")
        ws = self.connect(srv, t)
        time.sleep(0.1)
        self.publish(srv, t, [{"data": 1}])
        self.frames(ws, 1)
        ws.close()
        for i in range(50):
            self.publish(srv, t, [{"data": i}])
        self.assertHealthy(srv)

    def test_plain_get_is_426_and_bad_topic_400(self):
        srv = self.new_server()
        r = srv.get("/v1/topics/orders/tail")
        self.assertProblem(r, 426, "WebSocket")
        self.assertEqual(r.headers.get("upgrade"), "websocket")
        with self.assertRaises(websocket.WebSocketBadStatusException) as ctx:
            websocket.create_connection(
                f"ws://{srv.host}:{srv.port}/v1/topics/bad..name/tail", timeout=5)
        self.assertEqual(ctx.exception.status_code, 400)

    def test_token_protects_the_tail(self):
        srv = self.new_server(config={"http": {"token": "s3cret"}})
        with self.assertRaises(websocket.WebSocketBadStatusException) as ctx:
            websocket.create_connection(f"ws://{srv.host}:{srv.port}/v1/topics/x/tail",
                                        timeout=5)
        self.assertEqual(ctx.exception.status_code, 401)
        ws = self.connect(srv, "x", headers=["Authorization: Bearer s3cret"])
        time.sleep(0.1)
        r = srv.publish("x", [{"data": 1}], headers={"Authorization": "Bearer s3cret"})
        self.assertEqual(r.status, 201, r)
        self.assertEqual(self.frames(ws, 1)[0]["data"], 1)

    def test_sigterm_with_open_followers_exits_cleanly(self):
        srv = self.new_server()
        t = topic("stop")
        followers = [self.connect(srv, t) for _ in range(3)]
        time.sleep(0.1)
        stop = threading.Event()

        def load():
            while not stop.is_set():
                try:
                    srv.publish(t, [{"data": "x" * 100}])
                except OSError:
                    return

        th = threading.Thread(target=load)
        th.start()
        time.sleep(0.3)
        self.stop_ok(srv, signal.SIGTERM)
        stop.set()
        th.join()
        self.assertTrue(followers)


if __name__ == "__main__":
    unittest.main()
