#!/usr/bin/python3
"""End-to-end test of a tenant named by a header (docs/bounces-in.md,
suppression.scope_header = "X-Customer"): a hard bounce of a message with
X-Customer: acme suppresses the address in acme's list only; the next
message for acme leaves that recipient out after DATA with a `suppressed`
record (scope acme) and delivers the others; a message for another
customer, or without the header, still reaches the address.

sluice delivers to an aiosmtpd peer we did not write, which refuses
gone@a.test once with 550 5.1.1. What a user checks: `sluicectl suppress
check`, the records, and what the peer received.
Every process started here is stopped by pid before the test ends.
"""
import os
import re
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sluicetest as st  # noqa: E402
from test_delivery import FAST_QUEUE, acct, wait_acct  # noqa: E402


class ScopeHeaderTest(unittest.TestCase):
    def test_scope_header(self):
        dest = st.Peer(prefix="scope-peer-", rcpt_reply=["gone@a.test=1:550 5.1.1 no such user"])
        self.addCleanup(lambda: dest.stop(check=False))
        relay = '    relay_networks = ["127.0.0.1/32"];\n'
        d = st.Daemon(routes={"a.test": "127.0.0.1:%d" % dest.port}, smtp_extra=relay)
        self.addCleanup(d.cleanup)
        text = re.sub(r"\n\s*smarthost\s*=[^;\n]*;", "",
                      d.default_conf(smtp_extra=relay)) + FAST_QUEUE
        text += ('suppression {\n    enabled = true;\n    action = reject;\n'
                 '    scope_header = "X-Customer";\n}\n')
        with open(d.conf_path, "w") as f:
            f.write(text)
        d.start()

        def send(rcpts, customer, subject):
            hdr = "X-Customer: %s\r\n" % customer if customer else ""
            with d.smtp() as c:
                c.sendmail("owner@s.test", rcpts, ("From: <owner@s.test>\r\nSubject: %s\r\n%s"
                                                   "\r\nHi.\r\n" % (subject, hdr)).encode())

        send(["gone@a.test"], "acme", "first")
        wait_acct(d, "bounce", "gone@a.test")
        st.wait_for(lambda: "suppressed (bad-mailbox)" in d.ctl(
            "suppress", "check", "gone@a.test").out, 10, what="the entry")
        out = d.ctl("suppress", "check", "gone@a.test", json=True).data
        self.assertEqual([e["scope"] for e in out["entries"]], ["acme"])

        # acme again: gone@ left out after DATA (a record), ok@ delivered
        send(["gone@a.test", "ok@a.test"], " acme ", "second")
        wait_acct(d, "delivery", "ok@a.test")
        sup = st.wait_for(lambda: [r for r in d.accounting() if r.get("type") == "suppressed"],
                          10, what="a suppressed record")
        self.assertEqual(len(sup), 1)
        self.assertEqual((sup[0]["recipient"], sup[0]["action"], sup[0]["scope"],
                          sup[0]["reason"]), ("gone@a.test", "drop", "acme", "bad-mailbox"))
        # another customer, and no header: delivered (the peer now accepts it)
        send(["gone@a.test"], "other", "third")
        send(["gone@a.test"], None, "fourth")
        st.wait_for(lambda: len(acct(d, "delivery", "gone@a.test")) == 2, 20,
                    what="two deliveries to gone@")
        subjects = sorted(raw.split(b"Subject: ")[1].split(b"\r\n")[0].decode()
                          for meta, raw in dest.messages()
                          if meta["rcpts"][0]["addr"] == "gone@a.test")
        self.assertEqual(subjects, ["fourth", "third"])
        # only acme's second message had ok@; gone@ got nothing of it
        self.assertEqual(len([1 for meta, _ in dest.messages()
                              if [r["addr"] for r in meta["rcpts"]] == ["ok@a.test"]]), 1)
        d.stop()

    def test_scope_header_over_http(self):
        """The injection API checks the tenant of the rendered message's
        header too: the recipient is named in failed_recipients."""
        sink = st.Sink()
        self.addCleanup(sink.stop)
        port = st.free_port()
        d = st.Daemon(routes={"a.test": "127.0.0.1:%d" % sink.port},
                      extra_conf=st.http_conf(port) +
                      'suppression {\n    enabled = true;\n    scope_header = "X-Customer";\n}\n')
        self.addCleanup(d.cleanup)
        d.start()
        self.assertEqual(d.ctl("suppress", "add", "gone@a.test", "--scope", "acme").rc, 0)
        inj = "tok-inject-0123456789abcdef"

        def post(rcpts, customer):
            b = {"envelope_sender": "s@s.test", "recipients": [{"email": a} for a in rcpts],
                 "content": {"from": {"email": "s@s.test"}, "subject": "hi",
                             "text_body": "hi\n", "headers": {"X-Customer": customer}}}
            return st.http_json(port, "POST", "/api/inject/v1", b, inj)

        s, _, ans = post(["gone@a.test", "ok@a.test"], "acme")
        self.assertEqual(s, 200, ans)
        self.assertEqual((ans["success_count"], ans["fail_count"], ans["failed_recipients"]),
                         (1, 1, ["gone@a.test"]))
        self.assertIn("suppressed (operator, scope acme)", ans["errors"][0])
        s, _, ans = post(["gone@a.test"], "acme")
        self.assertEqual((s, ans["error"]["code"]), (422, "suppressed"), ans)
        s, _, ans = post(["gone@a.test"], "other")
        self.assertEqual((s, ans["success_count"]), (200, 1), ans)
        got = sorted(r for m in sink.wait_messages(2, timeout=30)
                     for r in (m[0]["rcpts"] if isinstance(m[0].get("rcpts"), list)
                               else [m[0]["rcpt"]]))
        self.assertEqual(got, ["gone@a.test", "ok@a.test"])
        d.stop()


if __name__ == "__main__":
    st.main()
