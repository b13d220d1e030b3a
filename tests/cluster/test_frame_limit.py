"""nerve's own cluster frames stay under the gate's limit (CONTRACT.md section 9: frames
over the cluster link are bounded; a peer sending more is disconnected).

A page of events read through a node that does not own the partition crosses the link as
one answer. The owner refuses to send an answer over 16 MiB ("ask for less") instead of a
frame the reader's gate would drop the link for, with every request in flight on it.
"""

import time
import unittest

from cluster_harness import ClusterTestCase

TOPIC = "big"
PAD_BYTES = 900_000  # one event per request, under http.max_body_bytes (1 MiB)


class FrameLimitTest(ClusterTestCase):

    def test_an_answer_too_large_for_a_frame_is_refused_and_the_link_stays(self):
        cluster = self.new_cluster(2)
        n1, n2 = cluster["n1"], cluster["n2"]

        def linked():
            return all(m["state"] == "up" for m in n1.get("/v1/cluster").json()["nodes"])
        self.wait_for(linked, what="n1 and n2 linked\n" + cluster.stderr_text())
        self.assertEqual(n2.post(f"/v1/topics/{TOPIC}/events",
                                 {"key": "k", "type": "t", "data": {}}).status, 201)
        owners = {p: m["id"] for m in n2.get("/v1/cluster").json()["nodes"]
                  for p in m["partitions"]}
        key = partition = None
        for k in range(200):
            r = n2.post(f"/v1/topics/{TOPIC}/events", {"key": f"k{k}", "type": "t", "data": {}})
            self.assertEqual(r.status, 201, r)
            p = r.json()["events"][0]["partition"]
            if owners[f"{TOPIC}/{p}"] == "n2":
                key, partition = f"k{k}", p
                break
        self.assertIsNotNone(key, "no key of 200 landed on n2")
        for _ in range(40):  # 36 MB on n2's partition: more than the gate lets through
            r = n2.post(f"/v1/topics/{TOPIC}/events",
                        {"key": key, "type": "t", "data": {"pad": "x" * PAD_BYTES}})
            self.assertEqual(r.status, 201, r)

        # n2 refuses to send the 36 MB answer. (routes_cluster.cpp answers any failed peer
        # call as 503 "down or unreachable", so n2's reason, "ask for less", is not shown.)
        r = n1.get(f"/v1/topics/{TOPIC}/events?partition={partition}&limit=1000", timeout=60)
        self.assertIn(r.status, (400, 503), r)
        r = n1.get(f"/v1/topics/{TOPIC}/events?partition={partition}&limit=5", timeout=60)
        self.assertEqual(r.status, 200, r)
        time.sleep(0.5)
        self.assertTrue(linked())
        self.assertNotIn("is down", cluster.stderr_text())
        self.assertNotIn("closed the link", cluster.stderr_text())


if __name__ == "__main__":
    unittest.main()
