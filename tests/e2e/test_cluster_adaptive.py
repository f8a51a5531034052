#!/usr/bin/python3
"""Adaptive mode across nodes (issue #18 with the cluster of #17;
docs/cluster.md, "Adaptive mode across nodes"): a redis-server on a
loopback port, sluiced nodes sharing provider "shp" (shared = true,
adaptive = true, no configured rate), and one receiver (test_adaptive's
LimitPeer) that accepts 40 messages per second in all and answers a
capacity 421 ("Rate limit exceeded") to the next MAIL of the second.

- three nodes learn one allowance for the cluster: the combined rate the
  receiver measures stays under its 40/s with few provoked refusals, each
  rate decrease one node learns from a 421 reaches the other two within a
  second (their `adapt` shaping records, "cluster: node X", and the same
  rate in `sluicectl providers --json` at the end), and `sluicectl
  providers` / `sluicectl cluster` say the values are shared;
- a node started later takes the cluster's learned values from Redis, not
  the different ones its own spool (adaptive.json) kept;
- Redis down: each node keeps the cluster's last values and sends at its
  share of them (the rate / the node count); Redis back: shared again.
"""
import datetime
import json
import os
import shutil
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sluicetest as st  # noqa: E402
from test_adaptive import LimitPeer  # noqa: E402
from test_cluster import check_schema, inject, inject_all, start_nodes  # noqa: E402
from test_delivery import FAST_QUEUE  # noqa: E402

RATE = 40  # the receiver's allowance, all nodes together

SHAPING = ('providers {\n  shp {\n    domains = ["rate.test"];\n    shared = true;\n'
           '    adaptive = true;\n'
           "    rule { match = '^421 .*Rate limit'; action = capacity; limit = rate; }\n"
           '  }\n}\n')


def _parse(t):
    """An RFC 3339 time of our records -> seconds since the epoch."""
    return datetime.datetime.strptime(t, "%Y-%m-%dT%H:%M:%S.%fZ").replace(
        tzinfo=datetime.timezone.utc).timestamp()


def adaptive_of(tc, d):
    """The adaptive object of queue shp/default in d's providers --json."""
    r = d.ctl("providers", json=True)
    tc.assertEqual(r.rc, 0, r.out + r.err)
    for p in r.data["providers"]:
        if p["provider"] == "shp":
            return p["queues"][0]["adaptive"], r.data
    tc.fail("no provider shp in %s" % r.data)


class ClusterAdaptive(unittest.TestCase):

    def setUp(self):
        self.tmp = st.make_tmpdir("cluster-adaptive-")
        if not st.keep_tmp():
            self.addCleanup(shutil.rmtree, self.tmp, True)
        self.redis = st.Redis().start()
        self.addCleanup(self.redis.close)
        self.peer = LimitPeer(rate=RATE)
        self.addCleanup(self.peer.stop)

    def test_one_allowance_for_the_cluster(self):
        """900 messages, 300 injected at each of three nodes at once. One
        learned allowance: few refusals (each node learning its own would
        slow-start to 40/s by itself, 120/s together); every rate decrease
        a node learns is applied by the two others within a second; at the
        end the three have the same learned rate, within the allowance."""
        nodes = start_nodes(self, self.redis, self.peer, SHAPING)
        inject_all(nodes, 300)
        st.wait_for(lambda: self.peer.counts()[0] >= 900, 100, interval=0.5,
                    what="900 messages at the limited receiver")
        for d in nodes.values():
            d.wait_queue(0, timeout=30)
        n, kinds = self.peer.counts()
        self.assertEqual(n, 900)
        refused = kinds.get("rate", 0)
        self.assertGreaterEqual(refused, 1, kinds)  # the allowance was found, not configured
        self.assertLess(refused, 0.05 * n, kinds)
        with self.peer.lock:
            acc = sorted(t for t, _ in self.peer.accepted)
            t_half = acc[len(acc) // 2]
            late = [t for t, _ in self.peer.refused if t > t_half]
        self.assertLessEqual(len(late), 0.02 * n / 2, late)
        # the second half used the allowance: 2 s windows' median above 60% of it
        rates = sorted(sum(1 for u in acc if a <= u < a + 2.0) / 2.0
                       for a in [t_half + 2.0 * k for k in range(int((acc[-1] - t_half) / 2.0))])
        self.assertTrue(rates, acc[-5:])
        self.assertGreaterEqual(rates[len(rates) // 2], 0.6 * RATE, rates)

        # each decrease learned from a 421 at one node, at the others within
        # 1 s: applied from the cluster ("cluster: node X"), or learned by
        # the other node from the same overload at the same moment
        recs = {name: [r for r in d.accounting() if r["type"] == "shaping"
                       and r["event"] == "adapt"] for name, d in nodes.items()}
        decs = [(name, r) for name, rs in recs.items() for r in rs
                if "Rate limit" in (r["response"] or "") and "(rate)" in r["detail"]]
        self.assertGreaterEqual(len(decs), 1, recs)
        applied = [x for name, rs in recs.items() for x in rs
                   if (x["response"] or "").startswith("cluster: node ")
                   and x["response"] != "cluster: node %s" % name
                   and x["detail"].startswith("adaptive: rate ")
                   and x["rate"] < float(x["detail"].split("rate ")[1].split("/s")[0])]
        self.assertGreaterEqual(len(applied), 1, recs)  # decreases came from the cluster
        for name, r in decs:
            t0 = _parse(r["time"])
            for other in nodes:
                if other == name:
                    continue
                seen = [x for x in recs[other]
                        if x["rate"] <= r["rate"] + 1e-6 and abs(_parse(x["time"]) - t0) <= 1.0]
                self.assertTrue(seen, "node %s's decrease to %s/s at %s not at node %s within "
                                "1 s: %s" % (name, r["rate"], r["time"], other, recs[other]))

        # one learned allowance: the same rate everywhere, shared, within it
        got = {}
        for name, d in nodes.items():
            ad, data = adaptive_of(self, d)
            check_schema(self, "ctl/providers", data)
            self.assertTrue(ad["shared"], ad)
            self.assertFalse(ad["slow_start"], ad)
            got[name] = ad["rate"]
            c = d.ctl("cluster", json=True).check().data
            check_schema(self, "ctl/cluster", c)
            e = [x for x in c["adaptive"] if x["name"] == "shp/default"]
            self.assertEqual(len(e), 1, c)
            self.assertTrue(e[0]["shared"], e)
            self.assertGreater(e[0]["version"], 1, e)
            out = d.ctl("cluster").out
            self.assertIn("shp/default", out)
            self.assertIn("shared (the cluster's)", d.ctl("providers").out)
        self.assertEqual(len(set(got.values())), 1, got)
        self.assertLessEqual(list(got.values())[0], RATE * 1.1, got)
        self.assertGreaterEqual(list(got.values())[0], RATE * 0.5, got)

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
