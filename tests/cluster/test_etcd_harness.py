"""tests/cluster/etcd_harness.py by itself, with no nerve running: three members form one
cluster and become healthy, a key written through one member is read through another, a
member killed with -9 leaves the other two healthy (a quorum) and comes back on its data,
two members down leave the third unhealthy (no quorum: what nerve's leaders must notice),
and cleanup leaves no process behind. The replicated cluster tests stand on these facts,
so a broken harness fails here, with a plain message, rather than as a mysterious nerve
failure there. Skips itself when etcd is not installed.
"""

import os
import time
import unittest

import etcd_harness


class EtcdHarnessTest(unittest.TestCase):

    def setUp(self):
        etcd_harness.etcd_binary()  # SkipTest without etcd
        self.etcd = etcd_harness.EtcdCluster(3)
        self.addCleanup(self.etcd.cleanup)

    def test_three_members_a_quorum_kill_and_restart(self):
        etcd = self.etcd
        t0 = time.monotonic()
        etcd.start()
        print(f"[etcd] 3 members healthy in {time.monotonic() - t0:.2f} s", flush=True)
        urls = etcd.endpoints()
        self.assertEqual(len(set(urls)), 3, urls)
        for url in urls:
            self.assertTrue(url.startswith("http://127.0.0.1:"), url)

        etcd.put("/nerve-test/a", "1", member=0)
        etcd.put("/nerve-test/b", "2", member=1)
        etcd.put("/nerve-testz", "not under the prefix", member=2)
        self.assertEqual(etcd.range_prefix("/nerve-test/", member=2),
                         {"/nerve-test/a": "1", "/nerve-test/b": "2"})

        # One member down: the others keep a quorum and stay healthy.
        etcd.kill(0)
        self.assertFalse(etcd.members[0].running)
        self.assertFalse(etcd.healthy(0))
        deadline = time.monotonic() + 10
        while not (etcd.healthy(1) and etcd.healthy(2)) and time.monotonic() < deadline:
            time.sleep(0.05)
        self.assertTrue(etcd.healthy(1) and etcd.healthy(2), etcd.log_text(1)[-2000:])
        etcd.put("/nerve-test/c", "3")
        # Back on its data, at the same address: it sees what was written without it.
        etcd.start_member(0)
        self.assertEqual(etcd.endpoints(), urls)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            got = etcd.range_prefix("/nerve-test/", member=0)
            if "/nerve-test/c" in got:
                break
            time.sleep(0.1)
        self.assertEqual(got.get("/nerve-test/c"), "3", got)

        # Two members down: the third has no quorum, so no leader: unhealthy.
        etcd.kill(1)
        etcd.kill(2)
        deadline = time.monotonic() + 10
        while etcd.healthy(0) and time.monotonic() < deadline:
            time.sleep(0.1)
        self.assertFalse(etcd.healthy(0), "a lone member of three must not be healthy")
        etcd.start()  # the two again, waiting for all three
        for i in range(3):
            self.assertTrue(etcd.healthy(i))

        procs = [m.proc for m in etcd.members]
        etcd.cleanup()
        for p in procs:
            self.assertIsNotNone(p.poll(), "cleanup left an etcd running")

    def test_a_missing_binary_skips(self):
        old = os.environ.get("NERVE_ETCD")
        os.environ["NERVE_ETCD"] = "/nonexistent/etcd"
        try:
            with self.assertRaises(unittest.SkipTest) as ctx:
                etcd_harness.etcd_binary()
            self.assertIn("etcd-server", str(ctx.exception))
        finally:
            if old is None:
                del os.environ["NERVE_ETCD"]
            else:
                os.environ["NERVE_ETCD"] = old


if __name__ == "__main__":
    unittest.main()
