#!/usr/bin/python3
"""Adaptive mode across nodes (docs/cluster.md, "Adaptive mode across
nodes"), the nodes' side: the setup of test_cluster_adaptive.py (Redis,
provider "shp" shared and adaptive, a receiver of 40 msgs/s in all).

- a node started later takes the cluster's learned values from Redis, not
  the different ones its own spool (adaptive.json) kept;
- Redis down: each node keeps the cluster's last values and sends at its
  share of them (the rate / the node count); Redis back: shared again.
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sluicetest as st  # noqa: E402
from test_cluster import inject, inject_all, start_nodes  # noqa: E402
from test_cluster_adaptive import SHAPING, Base, adaptive_of  # noqa: E402
from test_delivery import FAST_QUEUE  # noqa: E402


class ClusterAdaptiveNodes(Base):

    def test_late_node_takes_the_cluster_values(self):
        """Two nodes learn (300 messages); a third node whose spool kept
        500/s for the same queue (its own old value) starts later: it uses
        the cluster's learned rate, read from Redis (its `adapt` record says
        so), and delivers its mail with no refusal."""
        nodes = start_nodes(self, self.redis, self.peer, SHAPING, names=("a", "b"))
        inject_all(nodes, 150)
        st.wait_for(lambda: self.peer.counts()[0] >= 300, 60, interval=0.5,
                    what="300 messages at the limited receiver")
        for d in nodes.values():
            d.wait_queue(0, timeout=30)
        cluster_rate = float(self.redis.cli("HGET", "sluice:adapt:shp/default", "rate"))
        self.assertLess(cluster_rate, 100, cluster_rate)

        d = st.Daemon(routes={"rate.test": "127.0.0.1:%d" % self.peer.port})
        os.makedirs(d.spool, exist_ok=True)
        with open(os.path.join(d.spool, "adaptive.json"), "w") as f:
            json.dump({"version": 1, "saved": "2026-12-01T00:00:00.000Z", "queues": [
                {"provider": "shp", "vmta": "default", "rate": 500.0, "max_connections": 2,
                 "max_messages_per_connection": None, "slow_start": False,
                 "conn_learned": False}]}, f)
        path = os.path.join(self.tmp, "shaping.conf")
        text = d.default_conf("info").replace(
            "delivery {\n", 'delivery {\n    shaping = "%s";\n' % path, 1)
        with open(d.conf_path, "w") as f:
            f.write(text + FAST_QUEUE + st.cluster_conf(self.redis, "c"))
        self.addCleanup(d.close)
        d.start()
        st.wait_for(lambda: d.ctl("cluster", json=True).check().data["node_count"] == 3, 15,
                    what="node c sees 3 nodes")
        before = self.peer.counts()
        inject(d, 5, "late")
        st.wait_for(lambda: self.peer.counts()[0] >= before[0] + 5, 30, interval=0.2,
                    what="node c's 5 messages")
        d.wait_queue(0, timeout=30)
        ad, _ = adaptive_of(self, d)
        self.assertTrue(ad["shared"], ad)
        now_rate = float(self.redis.cli("HGET", "sluice:adapt:shp/default", "rate"))
        self.assertEqual(ad["rate"], now_rate, ad)
        self.assertLess(ad["rate"], 100, ad)
        recs = [r for r in d.accounting() if r["type"] == "shaping" and r["event"] == "adapt"]
        self.assertTrue(any(r["detail"].startswith("adaptive: rate 500/s -> ")
                            and r["response"] == "cluster: node (read from redis)"
                            for r in recs), recs)
        self.assertEqual(self.peer.counts()[1], before[1])  # no refusal provoked by node c

    def test_redis_down_keeps_the_share(self):
        """Two nodes learn (300 messages), then Redis dies: each keeps the
        cluster's last rate (providers --json: shared false, the same
        rate), and node a alone delivers at most its share of it (the rate
        / 2 nodes), not the whole; when Redis comes back (empty) the
        values are shared again and Redis has them back."""
        nodes = start_nodes(self, self.redis, self.peer, SHAPING, names=("a", "b"))
        inject_all(nodes, 150)
        st.wait_for(lambda: self.peer.counts()[0] >= 300, 60, interval=0.5,
                    what="300 messages at the limited receiver")
        for d in nodes.values():
            d.wait_queue(0, timeout=30)
        st.wait_for(lambda: len({adaptive_of(self, d)[0]["rate"] for d in nodes.values()}) == 1,
                    5, interval=0.2, what="one learned rate")
        learned = adaptive_of(self, nodes["a"])[0]["rate"]
        self.redis.kill9()
        for d in nodes.values():
            st.wait_for(lambda d=d: not d.ctl("cluster", json=True).check().data["redis_up"], 15,
                        what="redis down at a node")
            ad, _ = adaptive_of(self, d)
            self.assertFalse(ad["shared"], ad)
            self.assertEqual(ad["rate"], learned, ad)
        before = self.peer.counts()[0]
        inject(nodes["a"], 80, "down")
        st.wait_for(lambda: self.peer.counts()[0] >= before + 80, 60, interval=0.2,
                    what="node a's 80 messages with redis down")
        with self.peer.lock:
            times = sorted(t for t, _ in self.peer.accepted)[before:]
        rate = (len(times) - 1) / (times[-1] - times[0])
        # the share (learned / 2), with the fallback's small burst
        self.assertLessEqual(rate, learned / 2 * 1.15 + 1, (rate, learned))
        self.assertEqual(adaptive_of(self, nodes["a"])[0]["rate"], learned)
        self.redis.start()
        for d in nodes.values():
            st.wait_for(lambda d=d: adaptive_of(self, d)[0]["shared"], 15,
                        what="the values shared again")
        self.assertEqual(float(self.redis.cli("HGET", "sluice:adapt:shp/default", "rate")),
                         learned)


if __name__ == "__main__":
    st.main()
