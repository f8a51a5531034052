#!/usr/bin/python3
"""The suppression list shared by several nodes through Redis (issue #17,
docs/cluster.md "Suppression"): an entry one node writes (the operator's
add, a hard bounce) reaches the other node's list within a second, in its
scope, with its reason and expiry, and the other node then refuses the
address at RCPT; nothing comes back as an echo; imports stay each node's.
"""
import os
import shutil
import smtplib
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sluicetest as st  # noqa: E402
from test_cluster import inject, shaping_text, start_nodes  # noqa: E402

SUPP = "suppression {\n    enabled = true;\n}\n"


class ClusterSuppression(unittest.TestCase):

    def setUp(self):
        self.tmp = st.make_tmpdir("cluster-supp-")
        if not st.keep_tmp():
            self.addCleanup(shutil.rmtree, self.tmp, True)
        self.redis = st.Redis().start()
        self.addCleanup(self.redis.close)
        self.sink = st.Sink("--no-starttls", prefix="cluster-supp-sink-")
        self.addCleanup(self.sink.stop)
        self.nodes = start_nodes(self, self.redis, self.sink, shaping_text(),
                                 names=("a", "b"), extra=SUPP)

    def check(self, d, addr):
        return d.ctl("suppress", "check", addr, json=True).check().data

    def wait_suppressed(self, d, addr, scope=None):
        def got():
            c = self.check(d, addr)
            e = [x for x in c["entries"] if x["scope"] == scope]
            return c["suppressed"] and e and e[0]
        return st.wait_for(got, 5, what="%s suppressed on the other node" % addr)

    def test_operator_add_reaches_the_other_node(self):
        """`suppress add` on a (global, and scope t1 with an expiry): b has
        both within seconds (source cluster:a), refuses the global one at
        RCPT with 550 5.7.1; a's own entry is its own (no echo); Redis holds
        the copy per scope."""
        a, b = self.nodes["a"], self.nodes["b"]
        a.ctl("suppress", "add", "Gone@Rate.Test", "--reason", "manual").check()
        a.ctl("suppress", "add", "t@rate.test", "--scope", "t1", "--expires", "1d").check()
        e = self.wait_suppressed(b, "gone@rate.test")
        self.assertEqual(e["reason"], "manual")
        self.assertEqual(e["source"], "cluster:a")
        self.assertIsNone(e["expires"])
        e = self.wait_suppressed(b, "t@rate.test", scope="t1")
        self.assertIsNotNone(e["expires"])
        with b.smtp() as c:
            c.ehlo("x.example")
            c.mail("s@s.example")
            code, msg = c.rcpt("gone@rate.test")
            self.assertEqual(code, 550, msg)
            self.assertIn(b"5.7.1", msg)
        own = self.check(a, "gone@rate.test")["entries"]
        self.assertEqual([x["source"] for x in own], ["operator"])
        self.assertIn("manual", self.redis.cli("HGET", "sluice:supp:global", "gone@rate.test"))
        self.assertIn("t@rate.test", self.redis.cli("HKEYS", "sluice:supp:t1"))
        # an import is each node's own (bulk): not sent
        csv = os.path.join(self.tmp, "imp.csv")
        with open(csv, "w") as f:
            f.write("address,reason,time,scope\nimp@rate.test,import,,\n")
        a.ctl("suppress", "import", csv).check()
        self.assertTrue(self.check(a, "imp@rate.test")["suppressed"])
        # an add after the import: once it is on b, an import sent before
        # it would be too (one node's entries go out in order)
        a.ctl("suppress", "add", "marker@rate.test").check()
        self.wait_suppressed(b, "marker@rate.test")
        self.assertFalse(self.check(b, "imp@rate.test")["suppressed"])

    def test_hard_bounce_on_one_node_suppresses_on_both(self):
        """A 550 5.1.1 (bad-mailbox, a category that feeds the list) to a
        recipient sent through b: a has the entry too, and refuses a new
        message to it at RCPT."""
        a, b = self.nodes["a"], self.nodes["b"]
        inject(b, 1, "permfail+x")
        st.wait_acct(b, "bounce", timeout=30)
        e = self.wait_suppressed(a, "permfail+x0@rate.test")
        self.assertEqual(e["reason"], "bad-mailbox")
        self.assertEqual(e["source"], "cluster:b")
        with self.assertRaises(smtplib.SMTPRecipientsRefused):
            inject(a, 1, "permfail+x")


if __name__ == "__main__":
    st.main()
