"""Black-box test of storage trouble: the data directory's file system fills up.

nerve must answer 503 to publishes it cannot make durable, turn /health and the
`database` indicator unhealthy, keep serving reads, stop cleanly, and after the
space is back and it restarts hold every event it acknowledged. A node left
running takes writes again by itself once there is room, without a restart.

Uses a small tmpfs mounted for the test (root only; skipped with the reason
otherwise), grown with `mount -o remount` to give the space back.
"""

import json
import os
import shutil
import subprocess
import tempfile
import time
import unittest

from harness import ServerTestCase


def mount_tmpfs(path, size):
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", path],
                          capture_output=True, text=True)


class StorageFullTest(ServerTestCase):

    def setUp(self):
        self.root = tempfile.mkdtemp(prefix="nerve-full-")
        self.addCleanup(shutil.rmtree, self.root, True)
        self.mnt = os.path.join(self.root, "mnt")
        os.mkdir(self.mnt)
        if os.geteuid() != 0:
            self.skipTest("mounting a small tmpfs needs root")
        res = mount_tmpfs(self.mnt, "4m")
        if res.returncode != 0:
            self.skipTest(f"cannot mount a tmpfs here: {res.stderr.strip()}")
        self.addCleanup(subprocess.run, ["umount", "-l", self.mnt], capture_output=True)

    def test_disk_full_is_unhealthy_and_loses_nothing_acknowledged(self):
        data = os.path.join(self.mnt, "data")
        srv = self.new_server(data_dir=data)
        acked = self.fill_until_refused(srv, "fill")
        self.assertTrue(acked)
        # Refused, not crashed; unhealthy on every view; reads still served.
        r = srv.publish("fill", [{"data": 1}])
        self.assertProblem(r, 503)
        self.assertEqual(srv.get("/health").status, 503)
        self.assertEqual(srv.get("/health").json(), {"status": "unhealthy"})
        detailed = srv.get("/health/detailed").json()
        db = [i for i in detailed["indicators"] if i["name"] == "database"][0]
        self.assertEqual(db["status"], "unhealthy", detailed)
        self.assertIn("No space left", db["message"])
        self.assertEqual(detailed["status"], "unhealthy")
        # No event can be taken: the bus is down with the storage, steadily.
        for _ in range(5):
            detailed = srv.get("/health/detailed").json()
            self.assertEqual(detailed["state"], "DOWN", detailed)
            queue = [i for i in detailed["indicators"] if i["name"] == "event_queue"][0]
            self.assertEqual(queue["status"], "unhealthy", detailed)
            self.assertIn("refuses writes", queue["message"])
            time.sleep(0.1)
        storage = srv.get("/v1/storage/health").json()
        self.assertEqual(storage["status"], "unhealthy", storage)
        self.assertIn("No space left", storage["last_error"])
        self.assertEqual(srv.get(f"/v1/events/{acked[0]}").status, 200)
        self.stop_ok(srv)
        # Space back: everything acknowledged is there, once, and writes work.
        res = subprocess.run(["mount", "-o", "remount,size=64m", self.mnt], capture_output=True,
                             text=True)
        self.assertEqual(res.returncode, 0, res.stderr)
        srv.start()
        self.assertEqual(srv.get("/health").status, 200)
        stored = [e["id"] for p in range(4) for e in srv.read_partition("fill", p)]
        self.assertEqual(len(stored), len(set(stored)))
        missing = set(acked) - set(stored)
        self.assertFalse(missing, f"{len(missing)} acknowledged events lost")
        r = srv.publish("fill", [{"data": "after"}])
        self.assertEqual(r.status, 201, r)
        self.stop_ok(srv)

    def fill_until_refused(self, srv, topic):
        acked = []
        big = [{"data": "x" * 4000} for _ in range(100)]
        for _ in range(100):
            r = srv.publish(topic, big)
            if r.status != 201:
                self.assertProblem(r, 503, "No space left")
                return acked
            acked += [e["id"] for e in r.json()["events"]]
        self.fail("the 4 MiB file system never filled up")

    def test_a_running_node_takes_writes_again_once_space_is_back(self):
        data = os.path.join(self.mnt, "data")
        srv = self.new_server(data_dir=data)
        acked = self.fill_until_refused(srv, "fill")
        self.assertTrue(acked)
        self.assertEqual(srv.get("/health").status, 503)
        # Still refused while full, however often it is asked.
        time.sleep(1.5)
        self.assertProblem(srv.publish("fill", [{"data": 1}]), 503)
        # RocksDB clears the error once the volume has room for a memtable
        # flush (64 MiB free: docs/operations.md).
        res = subprocess.run(["mount", "-o", "remount,size=256m", self.mnt], capture_output=True,
                             text=True)
        self.assertEqual(res.returncode, 0, res.stderr)
        # No restart: within a few seconds publishes succeed and health is back.
        deadline = time.time() + 20
        after = None
        while time.time() < deadline:
            r = srv.publish("fill", [{"data": "after", "key": f"k{i}"} for i in range(8)])
            if r.status == 201:
                after = [e["id"] for e in r.json()["events"]]
                break
            time.sleep(0.2)
        self.assertIsNotNone(after, "publishes still refused 20 s after space came back")
        while time.time() < deadline and srv.get("/health").status != 200:
            time.sleep(0.2)
        self.assertEqual(srv.get("/health").status, 200)
        detailed = srv.get("/health/detailed").json()
        self.assertEqual(detailed["state"], "READY", detailed)  # no agents configured
        # Every partition writes again (one may have been restarting).
        more = srv.publish("fill", [{"data": "more", "key": f"m{i}"} for i in range(16)])
        self.assertEqual(more.status, 201, more)
        acked += after + [e["id"] for e in more.json()["events"]]
        self.assertEqual({e["partition"] for e in more.json()["events"]}, {0, 1, 2, 3})
        # Durable: kill -9, restart, all there exactly once.
        srv.kill()
        srv.start()
        stored = [e["id"] for p in range(4) for e in srv.read_partition("fill", p)]
        self.assertEqual(len(stored), len(set(stored)))
        missing = set(acked) - set(stored)
        self.assertFalse(missing, f"{len(missing)} acknowledged events lost")
        self.stop_ok(srv)


if __name__ == "__main__":
    unittest.main()
