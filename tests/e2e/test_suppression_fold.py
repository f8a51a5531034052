#!/usr/bin/python3
"""End-to-end tests of the per-domain address forms of the suppression
list (docs/bounces-in.md, "Keys: address and scope"):
suppression.fold_domains (Gmail: dots and +tags do not count) and
suppression.case_domains (the local part keeps its case), applied the same
way when an entry goes in (sluicectl, a hard bounce) and when RCPT asks.

sluice delivers gmail.com to an aiosmtpd peer we did not write, which
refuses one mailbox with 550 5.1.1. What a user checks: `sluicectl
suppress check` and `list`, and the RCPT replies for other spellings of
the same mailbox.
Every process started here is stopped by pid before the test ends.
"""
import os
import re
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sluicetest as st  # noqa: E402
from test_delivery import FAST_QUEUE, wait_acct  # noqa: E402


class FoldTest(unittest.TestCase):
    def setUp(self):
        self.dest = st.Peer(prefix="fold-peer-",
                            rcpt_reply=["j.doe+promo@gmail.com=550 5.1.1 no such user"])
        self.addCleanup(lambda: self.dest.stop(check=False))
        relay = '    relay_networks = ["127.0.0.1/32"];\n'
        d = st.Daemon(routes={"gmail.com": "127.0.0.1:%d" % self.dest.port,
                              "case.test": "127.0.0.1:%d" % self.dest.port}, smtp_extra=relay)
        self.addCleanup(d.cleanup)
        text = re.sub(r"\n\s*smarthost\s*=[^;\n]*;", "",
                      d.default_conf(smtp_extra=relay)) + FAST_QUEUE
        text += ('suppression {\n    enabled = true;\n'
                 '    fold_domains = ["gmail.com", "googlemail.com"];\n'
                 '    case_domains = ["case.test"];\n}\n')
        with open(d.conf_path, "w") as f:
            f.write(text)
        d.start()
        self.d = d

    def rcpt(self, addr):
        with self.d.smtp() as c:
            c.ehlo("client.test")
            c.mail("owner@s.test")
            return c.rcpt(addr)

    def test_gmail_folding_and_case(self):
        r = self.d.ctl("suppress", "add", "John.Doe+news@Gmail.com")
        self.assertEqual(r.rc, 0, r.err)
        self.assertIn("suppressed (operator)", self.d.ctl(
            "suppress", "check", "johndoe@gmail.com").out)
        for spelling in ("j.o.h.n.doe+other@GMAIL.com", "johndoe@gmail.com", "JohnDoe@gmail.com"):
            code, text = self.rcpt(spelling)
            self.assertEqual(code, 550, spelling)
            self.assertIn(b"suppressed", text)
        self.assertEqual(self.rcpt("johndoe2@gmail.com")[0], 250)
        # listed in its folded form
        out = self.d.ctl("suppress", "list", json=True).data
        self.assertEqual([e["address"] for e in out["entries"]], ["johndoe@gmail.com"])
        # case.test keeps the local part's case
        self.assertEqual(self.d.ctl("suppress", "add", "Bob@CASE.test").rc, 0)
        self.assertEqual(self.rcpt("Bob@case.test")[0], 550)
        self.assertEqual(self.rcpt("bob@case.test")[0], 250)
        # a hard bounce goes in folded too
        with self.d.smtp() as c:
            c.sendmail("owner@s.test", ["J.Doe+promo@gmail.com"], b"Subject: x\r\n\r\nHi.\r\n")
        wait_acct(self.d, "bounce", "J.Doe+promo@gmail.com")
        st.wait_for(lambda: "suppressed (bad-mailbox)" in self.d.ctl(
            "suppress", "check", "jdoe@gmail.com").out, 10, what="jdoe@gmail.com suppressed")
        self.assertEqual(self.rcpt("j.doe+again@gmail.com")[0], 550)
        self.d.stop()


if __name__ == "__main__":
    st.main()
