#!/usr/bin/python3
"""End-to-end tests of the reports listener (docs/bounces-in.md,
"A listener of its own"): bounces.listen is a second SMTP address that
takes DSNs and ARF complaints for the bounce domain from anyone, never
relays (not even for a relay network), has its own size and per-IP
connection limits, and counts reports per client IP per minute
(bounces.max_messages_per_minute, also on the SMTP listener when that one
takes the reports).

What a user checks: the SMTP replies (220/421, 250/550/552/452, the SIZE
of EHLO), the records written (remote_bounce for a report that passed,
none for one refused), what the receiving peer got (nothing relayed).
Every process started here is stopped by pid before the test ends.
"""
import os
import re
import smtplib
import socket
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sluicetest as st  # noqa: E402
from test_delivery import FAST_QUEUE, acct, wait_acct  # noqa: E402
from test_inbound import KEY_HEX, sample  # noqa: E402


def bounce_daemon(test, bounces_extra, smtp_extra=""):
    """A sluiced delivering a.test to an aiosmtpd peer, with VERP, reports
    (bounces { inbound = true; ... bounces_extra }) and the suppression
    list: (daemon, peer)."""
    dest = st.Peer(prefix="reports-peer-")
    test.addCleanup(lambda: dest.stop(check=False))
    relay = '    relay_networks = ["127.0.0.1/32"];\n' + smtp_extra
    d = st.Daemon(routes={"a.test": "127.0.0.1:%d" % dest.port}, smtp_extra=relay)
    test.addCleanup(d.cleanup)
    kf = os.path.join(d.dir, "verp.key")
    with open(kf, "w") as f:
        f.write(KEY_HEX + "\n")
    os.chmod(kf, 0o600)
    text = re.sub(r"\n\s*smarthost\s*=[^;\n]*;", "",
                  d.default_conf(smtp_extra=relay)) + FAST_QUEUE
    text += ('bounces {\n    verp = true;\n    domain = "bounce.test";\n'
             '    verp_key_file = "%s";\n    inbound = true;\n'
             '    quarantine_dir = "%s";\n%s}\n'
             'suppression {\n    enabled = true;\n}\n'
             % (kf, os.path.join(d.dir, "quarantine"), bounces_extra))
    with open(d.conf_path, "w") as f:
        f.write(text)
    d.start()
    return d, dest


def deliver(d, dest, rcpt):
    """One message to rcpt, delivered: the VERP return path the peer saw."""
    with d.smtp() as c:
        c.sendmail("owner@s.test", [rcpt],
                   b"From: <owner@s.test>\r\nSubject: hi\r\n\r\nHello.\r\n")
    wait_acct(d, "delivery", rcpt)
    return [m["mail_from"] for m, _ in dest.messages() if m["rcpts"][0]["addr"] == rcpt][0]


def report_txn(port, src, to, data=None, sender=""):
    """One report transaction from src: (RCPT code, final code, final text)."""
    with smtplib.SMTP("127.0.0.1", port, timeout=30, source_address=(src, 0)) as c:
        c.ehlo("mx.provider.test")
        code, text = c.mail(sender)
        assert code == 250, (code, text)
        rcode, rtext = c.rcpt(to)
        if rcode != 250 or data is None:
            return rcode, rtext, b""
        code, text = c.data(data)
        return rcode, code, text


class ReportsListenerTest(unittest.TestCase):
    def setUp(self):
        self.port = st.free_port()
        self.d, self.dest = bounce_daemon(
            self, '    listen = ["127.0.0.1:%d"];\n    max_message_size = 16K;\n'
            '    max_connections_per_ip = 2;\n    max_messages_per_minute = 2;\n' % self.port)

    def test_reports_only_from_anyone_never_relayed(self):
        path = deliver(self.d, self.dest, "gone@a.test")
        # 127.0.0.1 is a relay network on smtp.listen: not here
        with smtplib.SMTP("127.0.0.1", self.port, timeout=30) as c:
            code, _ = c.ehlo("client.test")
            self.assertEqual(code, 250)
            self.assertIn("size", c.esmtp_features)
            self.assertEqual(c.esmtp_features["size"], "16384")
            self.assertNotIn("auth", c.esmtp_features)
            c.mail("owner@s.test")
            code, text = c.rcpt("kept@a.test")
            self.assertEqual(code, 550)
            self.assertIn(b"takes reports for bounce.test only", text)
            code, text = c.rcpt("postmaster")
            self.assertEqual(code, 550, text)
        # a provider's DSN to the VERP address, from a non-relay address
        rcode, code, text = report_txn(self.port, "127.0.0.2", path, sample("dsn_postfix.eml"))
        self.assertEqual((rcode, code), (250, 250), text)
        self.assertIn(b"(remote_bounce)", text)
        rec = wait_acct(self.d, "remote_bounce")[0]
        self.assertEqual((rec["recipient"], rec["category"], rec["client_ip"]),
                         ("gone@a.test", "bad-mailbox", "127.0.0.2"))
        st.wait_for(lambda: "suppressed (bad-mailbox)" in self.d.ctl(
            "suppress", "check", "gone@a.test").out, 10, what="the suppression entry")
        # with a reports listener, the SMTP listener no longer takes reports
        # from anyone: a non-relay client gets "relaying denied" there
        with smtplib.SMTP("127.0.0.1", self.d.smtp_port, timeout=30,
                          source_address=("127.0.0.2", 0)) as c:
            c.ehlo("mx.provider.test")
            c.mail("")
            code, text = c.rcpt("fbl@bounce.test")
            self.assertEqual(code, 550)
            self.assertIn(b"Relaying denied", text)
        self.assertEqual(len(self.dest.messages()), 1)  # nothing else went out
        self.d.stop()

    def test_size_limit(self):
        with smtplib.SMTP("127.0.0.1", self.port, timeout=30,
                          source_address=("127.0.0.2", 0)) as c:
            c.ehlo("mx.provider.test")
            code, text = c.mail("", ["SIZE=20000"])
            self.assertEqual(code, 552, text)
            self.assertIn(b"5.3.4", text)
        big = sample("dsn_postfix.eml") + b"\r\n" + (b"x" * 998 + b"\r\n") * 20
        rcode, code, text = report_txn(self.port, "127.0.0.2", "fbl@bounce.test", big)
        self.assertEqual((rcode, code), (250, 552), text)
        self.assertIn(b"5.3.4", text)
        # refused: no record of any kind, nothing kept
        self.assertEqual([r for r in acct(self.d) if r["type"] in (
            "remote_bounce", "complaint", "inbound_unmatched")], [])
        # the SMTP listener keeps smtp.max_message_size (50M)
        with self.d.smtp() as c:
            c.ehlo("client.test")
            self.assertEqual(c.esmtp_features["size"], str(50 * 1024 * 1024))
        self.d.stop()

    def test_connections_per_ip(self):
        held = []
        try:
            for _ in range(2):
                c = st.RawClient(self.port, src="127.0.0.3")
                held.append(c)
                self.assertEqual(c.reply()[0], 220)
            third = st.RawClient(self.port, src="127.0.0.3")
            held.append(third)
            code, text = third.reply()
            self.assertEqual(code, 421, text)
            self.assertIn("4.7.0 Too many connections", text)
            waited, _ = third.wait_close(10)
            self.assertLess(waited, 10)  # closed by the server
            # another address is not affected, nor the SMTP listener
            other = st.RawClient(self.port, src="127.0.0.4")
            held.append(other)
            self.assertEqual(other.reply()[0], 220)
            smtp = st.RawClient(self.d.smtp_port, src="127.0.0.3")
            held.append(smtp)
            self.assertEqual(smtp.reply()[0], 220)
        finally:
            for c in held:
                c.close()
        self.d.stop()

    def test_messages_per_minute(self):
        data = sample("dsn_postfix.eml")
        for _ in range(2):
            rcode, code, text = report_txn(self.port, "127.0.0.5", "fbl@bounce.test", data,
                                           sender="mailer-daemon@mx.a.test")
            self.assertEqual((rcode, code), (250, 250), text)
        rcode, text, _ = report_txn(self.port, "127.0.0.5", "fbl@bounce.test")
        self.assertEqual(rcode, 452, text)
        self.assertIn(b"4.7.1 Too many reports from 127.0.0.5", text)
        rcode, code, text = report_txn(self.port, "127.0.0.6", "fbl@bounce.test", data,
                                       sender="mailer-daemon@mx.a.test")
        self.assertEqual((rcode, code), (250, 250), text)
        st.wait_for(lambda: len(acct(self.d, "inbound_unmatched")) == 3, 10,
                    what="3 inbound_unmatched records")
        self.d.stop()


class SameListenerRateTest(unittest.TestCase):
    """Without bounces.listen, the SMTP listener takes the reports, and
    bounces.max_messages_per_minute counts them there too; mail from a
    relay client is not counted."""

    def test_rate_on_the_smtp_listener(self):
        d, dest = bounce_daemon(self, "    max_messages_per_minute = 1;\n")
        data = sample("dsn_postfix.eml")
        rcode, code, text = report_txn(d.smtp_port, "127.0.0.2", "fbl@bounce.test", data,
                                       sender="mailer-daemon@mx.a.test")
        self.assertEqual((rcode, code), (250, 250), text)
        rcode, text, _ = report_txn(d.smtp_port, "127.0.0.2", "abuse@bounce.test")
        self.assertEqual(rcode, 452, text)
        self.assertIn(b"4.7.1", text)
        for i in range(3):
            deliver(d, dest, "r%d@a.test" % i)
        self.assertEqual(len(acct(d, "inbound_unmatched")), 1)
        d.stop()


class ConfigTest(unittest.TestCase):
    def test_listen_needs_inbound_and_its_own_address(self):
        d = st.Daemon()
        self.addCleanup(d.cleanup)
        base = d.default_conf()
        cases = [
            ('bounces {\n    domain = "b.test";\n    listen = ["127.0.0.1:%d"];\n}\n'
             % st.free_port(), "bounces.listen needs bounces.inbound = true"),
            ('bounces {\n    domain = "b.test";\n    inbound = true;\n'
             '    listen = ["127.0.0.1:%d"];\n}\n' % d.smtp_port,
             "an address of smtp.listen cannot be the reports listener too"),
            ('bounces {\n    domain = "b.test";\n    inbound = true;\n'
             '    listen = ["nowhere"];\n}\n', 'bounces.listen: bad address "nowhere"'),
        ]
        for extra, want in cases:
            with open(d.conf_path, "w") as f:
                f.write(base + extra)
            r = st.run([st.SLUICED, "-c", d.conf_path, "--check-config"])
            self.assertNotEqual(r.rc, 0, extra)
            self.assertIn(want, r.err, extra)


if __name__ == "__main__":
    st.main()
