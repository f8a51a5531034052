#!/usr/bin/python3
"""End-to-end tests of matching a report that has no VERP token
(docs/bounces-in.md, "Matching"): by the returned X-Sluice-Id or
Message-ID, and only when the report's recipient was one of that
message's recipients (the trust rule: a forged report naming a real
Message-ID cannot suppress an address the message was not sent to).

sluice runs without VERP (every report comes to a fixed address) and
delivers to an aiosmtpd peer we did not write; the test then plays the
provider and mails DSNs and an ARF complaint (shaped after the samples in
tests/fuzz/corpus/report/) that return the message's headers. What a user
checks: the X-Sluice-Id the peer received, the remote_bounce / complaint
record (message, recipient index, matched_by), `sluicectl suppress check`,
and the inbound_unmatched record of the forged report.
Every process started here is stopped by pid before the test ends.
"""
import email
import os
import re
import smtplib
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sluicetest as st  # noqa: E402
from test_delivery import FAST_QUEUE, acct, wait_acct  # noqa: E402
from test_inbound import sample  # noqa: E402
from test_records import load_schemas  # noqa: E402

import jsonschema  # noqa: E402


def dsn(final_rcpt, message_id, sluice_id=None):
    """The Postfix-shaped DSN for final_rcpt, returning headers with
    message_id (and sluice_id, else no X-Sluice-Id)."""
    d = sample("dsn_postfix.eml")
    d = d.replace(b"rfc822; gone@a.test", b"rfc822; " + final_rcpt.encode())
    d = d.replace(b"rfc822;Gone@a.test", b"rfc822;" + final_rcpt.encode())
    d = d.replace(b"Message-ID: <m1@s.test>", b"Message-ID: " + message_id.encode())
    sid = b"" if sluice_id is None else b"X-Sluice-Id: " + sluice_id.encode() + b"\r\n"
    return d.replace(b"X-Sluice-Id: 18A2B3C4D5E6F708\r\n", sid)


class ReportsMatchTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.schemas, cls.store = load_schemas()

    def setUp(self):
        self.dest = st.Peer(prefix="match-peer-")
        self.addCleanup(lambda: self.dest.stop(check=False))
        relay = '    relay_networks = ["127.0.0.1/32"];\n'
        d = st.Daemon(routes={"a.test": "127.0.0.1:%d" % self.dest.port}, smtp_extra=relay)
        self.addCleanup(d.cleanup)
        text = re.sub(r"\n\s*smarthost\s*=[^;\n]*;", "",
                      d.default_conf(smtp_extra=relay)) + FAST_QUEUE
        text += ('bounces {\n    domain = "bounce.test";\n    inbound = true;\n'
                 '    quarantine_dir = "%s";\n}\n'
                 'suppression {\n    enabled = true;\n}\n' % os.path.join(d.dir, "q"))
        with open(d.conf_path, "w") as f:
            f.write(text)
        d.start()
        self.d = d

    def validate(self, name, value):
        v = jsonschema.Draft202012Validator(
            self.schemas[name], resolver=jsonschema.RefResolver.from_schema(
                self.schemas[name], store=self.store))
        self.assertEqual(sorted(v.iter_errors(value), key=str), [], value)

    def send(self, rcpts, mid):
        with self.d.smtp() as c:
            c.sendmail("owner@s.test", rcpts,
                       ("From: <owner@s.test>\r\nSubject: hi\r\nMessage-ID: %s\r\n"
                        "\r\nHello.\r\n" % mid).encode())
        for r in rcpts:
            wait_acct(self.d, "delivery", r)
        return acct(self.d, "delivery", rcpts[0])[0]["msgid"]

    def report(self, data, to="fbl@bounce.test"):
        with smtplib.SMTP(self.d.smtp_host, self.d.smtp_port, timeout=30,
                          source_address=("127.0.0.2", 0)) as c:
            c.ehlo("mx.provider.test")
            c.mail("")
            code, text = c.rcpt(to)
            self.assertEqual(code, 250, text)
            code, text = c.data(data)
            self.assertEqual(code, 250, text)
            return text.decode()

    def test_match_by_returned_headers(self):
        m1 = self.send(["a1@a.test", "a2@a.test"], "<m1@s.test>")
        m2 = self.send(["b1@a.test"], "<m2@s.test>")
        # the peer got the message with our X-Sluice-Id (its queue id)
        got = {}
        for meta, raw in self.dest.messages():
            msg = email.message_from_bytes(raw)
            got[msg["Message-ID"]] = msg.get_all("X-Sluice-Id")
        self.assertEqual(got, {"<m1@s.test>": [m1], "<m2@s.test>": [m2]})

        # by Message-ID: the second recipient of m1
        self.assertIn("(remote_bounce)", self.report(dsn("a2@a.test", "<m1@s.test>")))
        rec = wait_acct(self.d, "remote_bounce", "a2@a.test")[0]
        self.validate("acct/remote_bounce", rec)
        self.assertEqual((rec["msgid"], rec["rcpt_index"], rec["category"], rec["matched_by"]),
                         (m1, 1, "bad-mailbox", "message-id"))
        st.wait_for(lambda: "suppressed (bad-mailbox)" in self.d.ctl(
            "suppress", "check", "a2@a.test").out, 10, what="a2 suppressed")

        # by X-Sluice-Id, whatever the Message-ID says (a platform may reuse one)
        self.assertIn("(remote_bounce)",
                      self.report(dsn("B1@A.test", "<m1@s.test>", sluice_id=m2)))
        rec = wait_acct(self.d, "remote_bounce", "B1@A.test")[0]
        self.assertEqual((rec["msgid"], rec["rcpt_index"], rec["matched_by"]),
                         (m2, 0, "x-sluice-id"))

        # an ARF complaint whose returned message is m1, about a1
        arf = sample("arf_yahoo_cfl.eml").replace(b"reader@yahoo.com", b"a1@a.test")
        arf = arf.replace(b"<m3@s.test>", b"<m1@s.test>")
        self.assertIn("(complaint)", self.report(arf))
        rec = wait_acct(self.d, "complaint", "a1@a.test")[0]
        self.validate("acct/complaint", rec)
        self.assertEqual((rec["msgid"], rec["rcpt_index"], rec["matched_by"]),
                         (m1, 0, "message-id"))
        st.wait_for(lambda: "suppressed (complaint)" in self.d.ctl(
            "suppress", "check", "a1@a.test").out, 10, what="a1 suppressed")
        self.d.stop()

    def test_forged_report_does_not_suppress(self):
        m1 = self.send(["a1@a.test"], "<m1@s.test>")
        # a real Message-ID and X-Sluice-Id, a recipient m1 was not sent to
        for data in (dsn("victim@a.test", "<m1@s.test>"),
                     dsn("victim@a.test", "<other@s.test>", sluice_id=m1)):
            self.assertIn("(unmatched)", self.report(data))
        recs = wait_acct(self.d, "inbound_unmatched", n=2)
        for rec in recs:
            self.validate("acct/inbound_unmatched", rec)
            self.assertEqual((rec["recipient"], rec["status"]), ("victim@a.test", "5.1.1"))
            self.assertEqual(rec["reason"], "no valid VERP token, and the returned message "
                             "was not sent to the report's recipient")
        self.assertIn("not suppressed", self.d.ctl("suppress", "check", "victim@a.test").out)
        self.assertEqual(acct(self.d, "remote_bounce"), [])
        # an unknown Message-ID: unmatched too
        self.assertIn("(unmatched)", self.report(dsn("a1@a.test", "<never@s.test>")))
        wait_acct(self.d, "inbound_unmatched", n=3)
        self.assertIn("not suppressed", self.d.ctl("suppress", "check", "a1@a.test").out)
        self.d.stop()


if __name__ == "__main__":
    st.main()
