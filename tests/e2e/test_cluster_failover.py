#!/usr/bin/python3
"""Shared limits when things fail (issue #17, docs/cluster.md): a node
killed with SIGKILL, and Redis stopped mid-run and started again.

- `kill -9` of a node holding every shared connection slot: the slots stay
  taken until their leases run out (lease_ttl = 2 s here), then the other
  node gets them: its first message comes within the TTL of the kill, not
  before two thirds of it (the leases were renewed every third of it);
- Redis stopped while three nodes deliver at a shared 30/s: each node logs
  it once, says so (`sluicectl cluster --json`, the status line, the
  sluice_cluster_redis_up metric) and keeps delivering under its fallback
  share (30/s / 3 nodes); Redis started again: every node goes back to the
  shared limit (EVALSHA finds no script in the new server: EVAL loads it).
  Nothing is lost and nothing is delivered twice: every recipient exactly
  once at the sink and in its node's accounting.
"""
import os
import shutil
import signal
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sluicetest as st  # noqa: E402
from test_cluster import check_schema, inject, inject_all, shaping_text, start_nodes  # noqa: E402


class ClusterFailover(unittest.TestCase):

    def setUp(self):
        self.tmp = st.make_tmpdir("cluster-fo-")
        if not st.keep_tmp():
            self.addCleanup(shutil.rmtree, self.tmp, True)
        self.redis = st.Redis().start()
        self.addCleanup(self.redis.close)

    def sink(self, *args):
        s = st.Sink("--no-starttls", *args, prefix="cluster-fo-sink-")
        self.addCleanup(s.stop)
        return s

    def test_killed_node_frees_its_slots_within_the_ttl(self):
        """a takes all 4 shared slots with slow messages (1 s each); b's
        4 messages wait (nothing of b arrives while a lives). kill -9 of a:
        b's first message arrives after 2/3 of lease_ttl (2 s) and within
        lease_ttl + 1 s; then only b's slots are in Redis."""
        sink = self.sink("--slow-ms", "1000")
        nodes = start_nodes(self, self.redis, sink,
                            shaping_text().replace('    message_rate = "30/s";\n', ""),
                            names=("a", "b"))
        inject(nodes["a"], 12, "slow+a")
        key = "sluice:conn:shp/default"
        st.wait_for(lambda: self.redis.cli("ZCARD", key).strip() == "4", 30,
                    what="a holding 4 slots")
        inject(nodes["b"], 4, "b")
        time.sleep(1.5)  # b wants slots for over a second: none free
        got_b = [r for env, _ in sink.messages() for r in env["rcpts"] if r.startswith("b")]
        self.assertEqual(got_b, [])
        members = self.redis.cli("ZRANGE", key, "0", "-1").split()
        self.assertEqual(len(members), 4)
        self.assertTrue(all(m.startswith("a:") for m in members), members)
        tk = time.time()
        nodes["a"].kill9()

        def b_first():
            t = [env["time"] for env, _ in sink.messages()
                 if any(r.startswith("b") for r in env["rcpts"])]
            return t and min(t)
        tb = st.wait_for(b_first, 15, what="b's first message")
        self.assertGreaterEqual(tb - tk, 2.0 * 2 / 3 - 0.2, "slots freed before the TTL")
        self.assertLessEqual(tb - tk, 2.0 + 1.0, "slots not freed within the TTL")
        st.wait_for(lambda: sorted(r for env, _ in sink.messages() for r in env["rcpts"]
                                   if r.startswith("b")) == ["b%d@rate.test" % i for i in range(4)],
                    30, what="b's 4 messages")
        nodes["b"].wait_queue(0, timeout=30)
        members = self.redis.cli("ZRANGE", key, "0", "-1").split()
        self.assertTrue(all(m.startswith("b:") for m in members), members)
        st.wait_for(lambda: nodes["b"].ctl("cluster", json=True).check().data["node_count"] == 1,
                    10, what="b alone in the node list")

    def test_redis_down_fallback_and_back(self):
        """Three nodes, 90 messages each at a shared 30/s (and 4
        connections). Redis stopped after 60 arrivals: while it is down
        each node delivers at most 10/s (its fallback share), but
        delivers; started again, all go back to Redis (shared leases
        granted again). Every recipient once."""
        sink = self.sink("--hold")
        nodes = start_nodes(self, self.redis, sink, shaping_text())
        inject_all(nodes, 90)
        os.kill(sink.proc.pid, signal.SIGUSR1)
        sink.wait_messages(60, timeout=60)
        self.redis.stop()
        td = time.time()

        def all_down():
            return all(not d.ctl("cluster", json=True).check().data["redis_up"]
                       for d in nodes.values())
        st.wait_for(all_down, 10, what="every node sees redis down")
        for n, d in nodes.items():
            c = d.ctl("cluster", json=True).check().data
            check_schema(self, "ctl/cluster", c)
            self.assertEqual(c["node_count"], 3)
            self.assertIsNotNone(c["reason"])
            self.assertIn("Cluster: node %s, redis %s DOWN (" % (n, self.redis.url),
                          d.ctl("status").check().out)
            self.assertIn("local limits = shared limit / 3", d.ctl("status").check().out)
            self.assertRegex(d.ctl("metrics").check().out, r"(?m)^sluice_cluster_redis_up 0$")
        time.sleep(4)
        self.redis.start()
        tu = time.time()
        st.wait_for(lambda: all(d.ctl("cluster", json=True).check().data["redis_up"]
                                for d in nodes.values()), 20, what="every node back on redis")
        msgs = sink.wait_messages(270, timeout=120)
        for d in nodes.values():
            d.wait_queue(0, timeout=30)
        # while down (from half a second after the stop to the restart):
        # each node under its share, and still delivering
        lo, hi = td + 0.5, tu
        for n in nodes:
            t = sorted(env["time"] for env, _ in msgs if env["rcpts"][0].startswith(n)
                       and lo <= env["time"] < hi)
            self.assertGreater(len(t), 0, "node %s delivered nothing while redis was down" % n)
            self.assertLessEqual(len(t), 10 * (hi - lo) * 1.05 + 3,
                                 "node %s: %d messages in %.1fs" % (n, len(t), hi - lo))
        # back on Redis: the shared leases are granted again (EVAL after NOSCRIPT)
        for d in nodes.values():
            c = d.ctl("cluster", json=True).check().data
            self.assertTrue(c["redis_up"])
            self.assertEqual(c["redis_downs"], 1)
        self.assertNotEqual(self.redis.cli("GET", "sluice:rate:shp/default").strip(), "")
        # nothing lost, nothing twice
        rcpts = sorted(r for env, _ in msgs for r in env["rcpts"])
        want = sorted("%s%d@rate.test" % (n, i) for n in nodes for i in range(90))
        self.assertEqual(rcpts, want)
        for n, d in nodes.items():
            got = sorted(r["recipient"] for r in d.accounting() if r["type"] == "delivery")
            self.assertEqual(got, sorted("%s%d@rate.test" % (n, i) for i in range(90)))
            err = d.stderr()
            self.assertEqual(err.count("cluster: redis %s down" % self.redis.url), 1, n)
            self.assertEqual(err.count("cluster: redis %s is back" % self.redis.url), 1, n)

    def test_slow_redis_counts_as_down(self):
        """Redis stopped with SIGSTOP (it holds the connection and answers
        nothing): each node's call times out (cluster.timeout = 200 ms),
        it says Redis is down with that reason and delivers under its
        fallback share; SIGCONT: back on Redis. Mail sent meanwhile is
        delivered once."""
        sink = self.sink()
        nodes = start_nodes(self, self.redis, sink, shaping_text(), names=("a", "b"))
        os.kill(self.redis.proc.pid, signal.SIGSTOP)
        try:
            for d in nodes.values():
                c = st.wait_for(lambda d=d: (lambda c: not c["redis_up"] and c)(
                    d.ctl("cluster", json=True).check().data), 10, what="redis down")
                self.assertEqual(c["reason"], "no answer within 200ms")
                self.assertEqual(c["node_count"], 2)
            inject(nodes["a"], 5, "a")
            sink.wait_messages(5, timeout=30)
        finally:
            os.kill(self.redis.proc.pid, signal.SIGCONT)
        st.wait_for(lambda: all(d.ctl("cluster", json=True).check().data["redis_up"]
                                for d in nodes.values()), 20, what="back on redis")
        nodes["a"].wait_queue(0, timeout=30)
        self.assertEqual(sorted(r for env, _ in sink.messages() for r in env["rcpts"]),
                         ["a%d@rate.test" % i for i in range(5)])


if __name__ == "__main__":
    st.main()
