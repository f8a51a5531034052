#!/usr/bin/python3
"""The shared suppression list resynchronizes (issue #17, docs/cluster.md
"Suppression"): a node that starts later reads the entries the others
wrote before it (the hashes PREFIX:supp:SCOPE, in chunks) and refuses those
addresses; a node that wrote entries while Redis was down shares them all
when Redis is back, and the other node learns them.
"""
import json
import os
import shutil
import smtplib
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sluicetest as st  # noqa: E402
from test_cluster import inject, shaping_text  # noqa: E402
from test_delivery import FAST_QUEUE  # noqa: E402

SUPP = "suppression {\n    enabled = true;\n}\n"


def start_node(tc, redis, sink, name):
    """One sluiced of the cluster on redis, routing rate.test to sink
    (as test_cluster.start_nodes, without waiting for the others)."""
    path = os.path.join(tc.tmp, "shaping.conf")
    with open(path, "w") as f:
        f.write(shaping_text())
    d = st.Daemon(routes={"rate.test": "127.0.0.1:%d" % sink.port})
    text = d.default_conf("info")
    text = text.replace("delivery {\n", 'delivery {\n    shaping = "%s";\n' % path, 1)
    text += FAST_QUEUE + st.cluster_conf(redis, name) + SUPP
    with open(d.conf_path, "w") as f:
        f.write(text)
    tc.addCleanup(d.close)
    d.start()
    return d


def cluster(d):
    return d.ctl("cluster", json=True).check().data


class ClusterResync(unittest.TestCase):

    def setUp(self):
        self.tmp = st.make_tmpdir("cluster-resync-")
        if not st.keep_tmp():
            self.addCleanup(shutil.rmtree, self.tmp, True)
        self.redis = st.Redis().start()
        self.addCleanup(self.redis.close)
        self.sink = st.Sink("--no-starttls", prefix="cluster-resync-sink-")
        self.addCleanup(self.sink.stop)

    def check(self, d, addr):
        return d.ctl("suppress", "check", addr, json=True).check().data

    def wait_suppressed(self, d, addr, scope=None, timeout=10):
        def got():
            c = self.check(d, addr)
            e = [x for x in c["entries"] if x["scope"] == scope]
            return c["suppressed"] and e and e[0]
        return st.wait_for(got, timeout, what="%s suppressed on %s" % (addr, d))

    def listed(self, d):
        """{address: entry} of d's whole list (one page: it is small)."""
        page = d.ctl("suppress", "list", "--limit", "1000", json=True).check().data
        self.assertIsNone(page["next"])
        return {e["address"]: e for e in page["entries"]}

    def test_node_started_later_learns_earlier_entries(self):
        """a adds entries while b is not running; b starts and has them
        within seconds (source cluster:a, their scope, reason, expiry),
        refuses the global one at RCPT; an expired entry in Redis is not
        copied, and b's own entries are left as they are."""
        a = start_node(self, self.redis, self.sink, "a")
        a.ctl("suppress", "add", "early@rate.test", "--reason", "manual").check()
        a.ctl("suppress", "add", "t@rate.test", "--scope", "t1", "--expires", "1d").check()
        st.wait_for(lambda: "t@rate.test" in self.redis.cli("HKEYS", "sluice:supp:t1"), 10,
                    what="a's entries in redis")
        # a third node's entries, as it wrote them: one expired, one live
        old = {"node": "z", "address": "old@rate.test", "scope": "", "reason": "manual",
               "expires": int(time.time()) - 60}
        live = dict(old, address="z@rate.test", expires=0)
        self.redis.cli("HSET", "sluice:supp:global", "old@rate.test", json.dumps(old))
        self.redis.cli("HSET", "sluice:supp:global", "z@rate.test", json.dumps(live))
        b = start_node(self, self.redis, self.sink, "b")
        e = self.wait_suppressed(b, "early@rate.test")
        self.assertEqual((e["reason"], e["source"], e["expires"]), ("manual", "cluster:a", None))
        e = self.wait_suppressed(b, "t@rate.test", scope="t1")
        self.assertEqual(e["source"], "cluster:a")
        self.assertIsNotNone(e["expires"])
        self.assertEqual(self.wait_suppressed(b, "z@rate.test")["source"], "cluster:z")
        st.wait_for(lambda: cluster(b)["supp_syncs"] >= 1, 10, what="b's sync done")
        self.assertFalse(self.check(b, "old@rate.test")["suppressed"])
        with b.smtp() as c:
            c.ehlo("x.example")
            c.mail("s@s.example")
            code, msg = c.rcpt("early@rate.test")
            self.assertEqual(code, 550, msg)
            self.assertIn(b"5.7.1", msg)
        # a's own entry stays a's own (the sync does not copy it back)
        own = self.check(a, "early@rate.test")["entries"]
        self.assertEqual([x["source"] for x in own], ["operator"])

    def test_entries_written_while_redis_down_are_shared(self):
        """Redis stops; a gets 300 operator entries and a hard bounce;
        Redis starts again (empty): Redis has all 301 and b learns them
        all (more than the 256 a node used to keep while Redis was away)."""
        a = start_node(self, self.redis, self.sink, "a")
        b = start_node(self, self.redis, self.sink, "b")
        for d in (a, b):
            st.wait_for(lambda d=d: cluster(d)["node_count"] == 2, 15, what="two nodes")
        self.redis.stop()
        for d in (a, b):
            st.wait_for(lambda d=d: not cluster(d)["redis_up"], 15, what="redis down on a node")
        addrs = ["down%d@rate.test" % i for i in range(300)]
        for i in range(0, 300, 50):  # sluicectl takes up to 63 addresses a call
            a.ctl("suppress", "add", *addrs[i:i + 50], "--reason", "manual").check()
        inject(a, 1, "permfail+d")
        st.wait_acct(a, "bounce", timeout=30)
        self.assertTrue(self.check(a, "permfail+d0@rate.test")["suppressed"])
        self.redis.start()
        for d in (a, b):
            st.wait_for(lambda d=d: cluster(d)["redis_up"], 20, what="redis up again on a node")
        st.wait_for(lambda: self.redis.cli("HLEN", "sluice:supp:global").strip() == "301", 20,
                    what="a's 301 entries in redis")
        want = set(addrs) | {"permfail+d0@rate.test"}

        def learnt():
            got = {k for k, e in self.listed(b).items() if e["source"] == "cluster:a"}
            return want <= got
        st.wait_for(learnt, 20, what="b has a's 301 entries")
        e = self.check(b, "permfail+d0@rate.test")["entries"][0]
        self.assertEqual((e["reason"], e["source"]), ("bad-mailbox", "cluster:a"))
        self.assertEqual(cluster(a)["supp_unshared"], 0)
        with self.assertRaises(smtplib.SMTPRecipientsRefused):
            inject(b, 1, "down")


if __name__ == "__main__":
    st.main()
