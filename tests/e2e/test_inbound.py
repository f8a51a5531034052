#!/usr/bin/python3
"""End-to-end tests of the reports that come back (docs/bounces-in.md):
with bounces.inbound, sluice's SMTP listener takes DSNs and ARF
complaints for the bounce domain from any client, and turns them into
records and suppression-list entries.

sluice delivers to an aiosmtpd peer we did not write (st.Peer), which
accepts with 250; the test then plays the receiving provider: from
127.0.0.2 (not a relay client) it mails back a DSN to the VERP address the
peer saw in MAIL FROM, or an ARF complaint (samples shaped after Microsoft
JMRP, Yahoo CFL and the RFC 5965 example: tests/fuzz/corpus/report/) to
the feedback address naming that VERP address as Original-Mail-From. What
a user checks: the 250 reply, the remote_bounce / complaint record (right
message, recipient index, recipient, category), `sluicectl suppress
check`, the next message refused at RCPT; a forged token refused at RCPT;
an unmatched report recorded and kept in the quarantine directory; that
nothing else is relayed for such a client.
Every process started here is stopped by pid before the test ends.
"""
import os
import re
import smtplib
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sluicetest as st  # noqa: E402
from test_delivery import FAST_QUEUE, acct, wait_acct  # noqa: E402
from test_records import load_schemas  # noqa: E402

import jsonschema  # noqa: E402

CORPUS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fuzz", "corpus",
                      "report")
KEY_HEX = "5a" * 32


def sample(name):
    with open(os.path.join(CORPUS, name), "rb") as f:
        return f.read()


class InboundTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.schemas, cls.store = load_schemas()

    def setUp(self):
        self.cleanups = []
        self.dest = st.Peer(prefix="inbound-peer-")
        self.cleanups.append(lambda: self.dest.stop(check=False))
        relay = '    relay_networks = ["127.0.0.1/32"];\n'  # 127.0.0.2: anyone
        d = st.Daemon(routes={"a.test": "127.0.0.1:%d" % self.dest.port}, smtp_extra=relay)
        self.cleanups.append(d.cleanup)
        kf = os.path.join(d.dir, "verp.key")
        with open(kf, "w") as f:
            f.write(KEY_HEX + "\n")
        os.chmod(kf, 0o600)
        self.qdir = os.path.join(d.dir, "quarantine")
        text = re.sub(r"\n\s*smarthost\s*=[^;\n]*;", "",
                      d.default_conf(smtp_extra=relay)) + FAST_QUEUE
        text += ('bounces {\n    verp = true;\n    domain = "bounce.test";\n'
                 '    verp_key_file = "%s";\n    inbound = true;\n'
                 '    quarantine_dir = "%s";\n}\n'
                 'suppression {\n    enabled = true;\n}\n' % (kf, self.qdir))
        with open(d.conf_path, "w") as f:
            f.write(text)
        d.start()
        self.d = d

    def tearDown(self):
        for fn in reversed(self.cleanups):
            try:
                fn()
            except Exception:
                pass

    def validate(self, name, value):
        v = jsonschema.Draft202012Validator(
            self.schemas[name], resolver=jsonschema.RefResolver.from_schema(
                self.schemas[name], store=self.store))
        self.assertEqual(sorted(v.iter_errors(value), key=str), [], value)

    def deliver(self, rcpts):
        """Send one message to rcpts, wait for delivery; {rcpt: VERP return path}."""
        with self.d.smtp() as c:
            c.sendmail("owner@s.test", rcpts,
                       b"From: <owner@s.test>\r\nSubject: hi\r\nMessage-ID: <hi@s.test>\r\n"
                       b"\r\nHello.\r\n")
        for r in rcpts:
            wait_acct(self.d, "delivery", r)
        return {rec["rcpts"][0]["addr"]: rec["mail_from"] for rec, _ in self.dest.messages()}

    def report(self, to, data, sender=""):
        """The provider mails a report from 127.0.0.2: the final reply."""
        with smtplib.SMTP(self.d.smtp_host, self.d.smtp_port, timeout=30,
                          source_address=("127.0.0.2", 0)) as c:
            c.ehlo("mx.provider.test")
            code, text = c.mail(sender)
            self.assertEqual(code, 250, text)
            code, text = c.rcpt(to)
            self.assertEqual(code, 250, text)
            code, text = c.data(data)
            self.assertEqual(code, 250, text)
            return text.decode()

    def test_dsn_to_the_verp_address(self):
        paths = self.deliver(["gone@a.test", "kept@a.test"])
        msgid = acct(self.d, "delivery", "gone@a.test")[0]["msgid"]
        self.assertTrue(paths["gone@a.test"].startswith("bounces+"), paths)
        self.assertNotEqual(paths["gone@a.test"], paths["kept@a.test"])
        reply = self.report(paths["gone@a.test"], sample("dsn_postfix.eml"))
        self.assertIn("(remote_bounce)", reply)
        rec = wait_acct(self.d, "remote_bounce")[0]
        self.validate("acct/remote_bounce", rec)
        self.assertEqual((rec["msgid"], rec["rcpt_index"], rec["recipient"], rec["status"],
                          rec["category"], rec["client_ip"]),
                         (msgid, 0, "gone@a.test", "5.1.1", "bad-mailbox", "127.0.0.2"))
        st.wait_for(lambda: "suppressed (bad-mailbox)" in self.d.ctl(
            "suppress", "check", "gone@a.test").out, 10, what="the suppression entry")
        with self.d.smtp() as c:
            c.ehlo("client.test")
            c.mail("owner@s.test")
            code, text = c.rcpt("gone@a.test")
        self.assertEqual(code, 550)
        self.assertIn(b"suppressed", text)
        # a report client gets nothing else relayed, and no mixing
        with smtplib.SMTP(self.d.smtp_host, self.d.smtp_port, timeout=30,
                          source_address=("127.0.0.2", 0)) as c:
            c.ehlo("mx.provider.test")
            c.mail("")
            self.assertEqual(c.rcpt("kept@a.test")[0], 550)
            self.assertEqual(c.rcpt(paths["kept@a.test"])[0], 250)
            self.assertEqual(c.rcpt("kept@a.test")[0], 550)
        # a relay client cannot mix a report with mail to deliver
        with self.d.smtp() as c:
            c.ehlo("client.test")
            c.mail("owner@s.test")
            self.assertEqual(c.rcpt("kept@a.test")[0], 250)
            self.assertEqual(c.rcpt("fbl@bounce.test")[0], 452)
        self.assertEqual(len(self.dest.messages()), 2)
        self.d.stop()

    def test_arf_complaints(self):
        rcpts = ["v1@a.test", "v2@a.test", "v3@a.test"]
        paths = self.deliver(rcpts)
        msgid = acct(self.d, "delivery", "v1@a.test")[0]["msgid"]
        cases = [("arf_microsoft_jmrp.eml", b"victim@hotmail.com", "Microsoft JMRP/1.0"),
                 ("arf_yahoo_cfl.eml", b"reader@yahoo.com", "Yahoo!-Mail-Feedback/2.0"),
                 ("arf_generic_rfc5965.eml", b"user@example.com", "SomeGenerator/1.0")]
        for i, (name, orig, agent) in enumerate(cases):
            data = sample(name).replace(orig, rcpts[i].encode())
            data = re.sub(rb"Original-Mail-From: <[^>]*>",
                          b"Original-Mail-From: <" + paths[rcpts[i]].encode() + b">", data)
            self.assertIn("(complaint)", self.report("fbl@bounce.test", data))
        recs = wait_acct(self.d, "complaint", n=3)
        for i, (name, orig, agent) in enumerate(cases):
            r = [x for x in recs if x["recipient"] == rcpts[i]][0]
            self.validate("acct/complaint", r)
            self.assertEqual((r["msgid"], r["rcpt_index"], r["feedback_type"], r["user_agent"]),
                             (msgid, i, "abuse", agent))
        for r in rcpts:
            st.wait_for(lambda: "suppressed (complaint)" in self.d.ctl(
                "suppress", "check", r).out, 10, what="%s suppressed" % r)
        self.d.stop()

    def test_forged_token_refused_and_unmatched_kept(self):
        paths = self.deliver(["x@a.test"])
        good = paths["x@a.test"]
        local, dom = good.split("@")
        forged = local[:-3] + ("aaa" if local[-3:] != "aaa" else "bbb") + "@" + dom
        with smtplib.SMTP(self.d.smtp_host, self.d.smtp_port, timeout=30,
                          source_address=("127.0.0.2", 0)) as c:
            c.ehlo("mx.provider.test")
            c.mail("")
            code, text = c.rcpt(forged)
            self.assertEqual(code, 550)
            self.assertIn(b"invalid or expired bounce address", text)
        # a DSN with no token (to the feedback address): recorded and kept
        data = sample("dsn_postfix.eml")
        self.assertIn("(unmatched)", self.report("fbl@bounce.test", data,
                                                 sender="mailer-daemon@mx.a.test"))
        rec = wait_acct(self.d, "inbound_unmatched")[0]
        self.validate("acct/inbound_unmatched", rec)
        self.assertEqual((rec["reason"], rec["kind"], rec["rcpt"], rec["recipient"],
                          rec["status"], rec["message_id"]),
                         ("no valid VERP token, and the returned message was not sent to "
                          "the report's recipient", "delivery-status", "fbl@bounce.test",
                          "gone@a.test", "5.1.1", "<m1@s.test>"))
        with open(os.path.join(self.qdir, rec["file"]), "rb") as f:
            kept = f.read()
        # the report as it came (after our Received)
        self.assertIn(b"From: MAILER-DAEMON@mx.a.test (Mail Delivery System)\r\n", kept)
        self.assertIn(data[data.index(b"This is a MIME"):], kept)
        self.assertIn("not suppressed", self.d.ctl("suppress", "check", "gone@a.test").out)
        self.assertEqual(acct(self.d, "remote_bounce"), [])
        self.d.stop()


if __name__ == "__main__":
    st.main()
