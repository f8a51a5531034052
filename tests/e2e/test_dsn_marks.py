#!/usr/bin/python3
"""Outcomes applied at once, with durable DSN marks (issue #14,
docs/delivery.md "DSNs"): a bounce is recorded as soon as it happens, not
when its message's other recipients finish; the message's one DSN is
built when its round ends (or after queue.dsn_max_delay when the round
lasts), from marks kept in the spool, so a kill -9 between the bounces and
the DSN loses nothing and sends it exactly once.

One message from owner@s.test to two recipients refused at RCPT (a.test,
550) and one whose server (b.test) waits before its greeting, so that
recipient stays in flight while the bounces are recorded. DSNs go to an
aiosmtpd peer for s.test (st.Peer) and are parsed by st.check_dsn.

Env: SLUICE_BUILD (binaries), SLUICE_SRC.
"""
import os
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sluicetest as st  # noqa: E402
from test_delivery import acct, make_daemon  # noqa: E402
from test_dsn import message, submit  # noqa: E402

QUEUE = ('queue {\n    retry = "1s";\n    retry_jitter = 0;\n'
         '    scan_interval = 100ms;\n}\n')
RCPTS = ["bad1@a.test", "bad2@a.test", "slow@b.test"]


class DsnMarksTest(unittest.TestCase):

    def setUp(self):
        self.bad = st.Peer(prefix="marks-a-", rcpt_reply=["bad*@a.test=550 5.1.1 No such user"])
        self.addCleanup(self.bad.stop, check=False)
        self.slow = st.Peer(prefix="marks-b-", greeting_delay=15)
        self.addCleanup(self.slow.stop, check=False)
        self.home = st.Peer(prefix="marks-home-")
        self.addCleanup(self.home.stop, check=False)

    def daemon(self, queue=QUEUE):
        d = make_daemon(routes={"a.test": "127.0.0.1:%d" % self.bad.port,
                                "b.test": "127.0.0.1:%d" % self.slow.port,
                                "s.test": "127.0.0.1:%d" % self.home.port}, queue=queue)
        self.addCleanup(d.cleanup)
        d.start()
        return d

    def dsns(self):
        return [(rec, raw) for rec, raw in self.home.messages()
                if rec["mail_from"] in ("", "<>")]

    def bounced_while_in_flight(self, d):
        """The two bounce records come while slow@b.test is still out."""
        submit(d, "owner@s.test", [(a, []) for a in RCPTS],
               message("owner@s.test", "bad1@a.test", "marks"))
        st.wait_for(lambda: len(acct(d, "bounce")) == 2 or acct(d, "delivery", "slow@b.test"),
                    60, what="the bounce records, or the slow delivery")
        self.assertEqual(acct(d, "delivery", "slow@b.test"), [])
        self.assertEqual(sorted(r["recipient"] for r in acct(d, "bounce")), RCPTS[:2])
        self.assertEqual(self.dsns(), [])  # the round goes on: no DSN yet

    def check_one_dsn(self):
        got = self.dsns()
        self.assertEqual(len(got), 1, "%d DSNs for one message" % len(got))
        rec, raw = got[0]
        self.assertEqual([r["addr"] for r in rec["rcpts"]], ["owner@s.test"])
        rep = st.check_dsn(raw, ret="hdrs")
        self.assertEqual(sorted(r["final-recipient"] for r in rep.recipients),
                         ["rfc822; bad1@a.test", "rfc822; bad2@a.test"])
        for r in rep.recipients:
            self.assertEqual((r["action"], r["status"], r["diagnostic-code"]),
                             ("failed", "5.1.1", "smtp; 550 5.1.1 No such user"))
        self.assertIn(b"Subject: marks", rep.returned)

    def test_bounce_recorded_at_once_dsn_when_the_round_ends(self):
        d = self.daemon()
        self.bounced_while_in_flight(d)
        st.wait_for(lambda: acct(d, "delivery", "slow@b.test"), 60, what="the slow delivery")
        st.wait_for(lambda: self.dsns(), 30, what="the DSN")
        d.wait_queue(0, timeout=30)
        time.sleep(1)  # a second DSN would show now
        self.check_one_dsn()
        self.assertEqual(len(acct(d, "bounce")), 2)
        d.stop()

    def test_a_round_that_lasts_gets_its_dsn_after_dsn_max_delay(self):
        d = self.daemon(queue=QUEUE.replace("}", "    dsn_max_delay = 2s;\n}"))
        self.bounced_while_in_flight(d)
        st.wait_for(lambda: self.dsns() or acct(d, "delivery", "slow@b.test"), 60,
                    what="the DSN, or the slow delivery")
        self.assertEqual(acct(d, "delivery", "slow@b.test"), [])  # still in its round
        self.check_one_dsn()
        st.wait_for(lambda: acct(d, "delivery", "slow@b.test"), 60, what="the slow delivery")
        d.wait_queue(0, timeout=30)
        time.sleep(1)
        self.check_one_dsn()
        d.stop()

    def test_kill9_before_the_dsn_builds_it_after_restart_once(self):
        d = self.daemon()
        self.bounced_while_in_flight(d)
        d.kill9()  # the bounces are in the spool (marks), the DSN is not built
        r = st.run([st.SLUICED, "-c", d.conf_path, "--check-spool"], timeout=60)
        self.assertEqual(r.rc, 0, r.out + r.err)
        d.start()
        # start-up builds the DSN of the marks the crash left
        st.wait_for(lambda: self.dsns(), 30, what="the DSN after the restart")
        st.wait_for(lambda: acct(d, "delivery", "slow@b.test"), 60, what="the slow delivery")
        d.wait_queue(0, timeout=30)
        time.sleep(1)
        self.check_one_dsn()
        # bounced once: the restart did not try them again
        self.assertEqual(sorted(r["recipient"] for r in acct(d, "bounce")), RCPTS[:2])
        self.assertEqual(sum(1 for e in self.bad.events() if e.get("ev") == "reply"
                             and e.get("reply", "").startswith("550")),
                         2)
        d.stop()


if __name__ == "__main__":
    st.main()
