#!/usr/bin/python3
"""SMTP smuggling and line endings at reception (the 2023 Postfix, Sendmail
and Exim advisories), and peer-supplied text on its way to a header.

Only <CR><LF>.<CR><LF> ends DATA. A message whose body carries <LF>.<LF>,
<LF>.<CR><LF> or <CR><LF>.<LF> followed by MAIL/RCPT/DATA must never become
two messages. With smtp.bare_newline = reject (the default) a message with
a bare LF or a bare CR is refused (550 5.5.2 at the end of DATA, or 521
5.5.2 and a closed connection when the client ends DATA with one of the
non-standard sequences above); with "normalize" it is accepted as one
message with every line ending made CRLF, and it goes on to the next hop
as canonical CRLF, byte for byte.

HELO names, ENVID and ORCPT are checked before they can reach a header, a
DSN or the next hop, and a NUL in a command line is refused.

Clients: raw sockets (smtplib would repair line endings itself). The next
hop is tests/e2e/peer_smtp.py (aiosmtpd) with wire=True, so the tests see
what sluice sent, raw.
"""
import os
import re
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sluicetest as st  # noqa: E402

SMUGGLED = (b"MAIL FROM:<admin@bank.example>\r\nRCPT TO:<victim@peer.test>\r\nDATA\r\n"
            b"Subject: smuggled\r\n\r\nevil\r\n.\r\n")
# the three sequences that a lax server takes for the end of DATA
LAX_ENDS = {"LF.LF": b"\n.\n", "LF.CRLF": b"\n.\r\n", "CRLF.LF": b"\r\n.\n"}
HEAD = b"Message-ID: <smuggle@sender.example>\r\nDate: Mon, 1 Jan 2024 00:00:00 +0000\r\n"


def open_data(port, src="127.0.0.1", rcpt="bob@peer.test", helo="client.example"):
    """A raw session that has had its 354."""
    c = st.RawClient(port, src)
    assert c.reply()[0] == 220
    for cmd in ("EHLO " + helo, "MAIL FROM:<alice@sender.example>", "RCPT TO:<%s>" % rcpt):
        code, text = c.cmd(cmd)
        assert code == 250, (cmd, text)
    code, text = c.cmd("DATA")
    assert code == 354, text
    return c


def all_replies(c, timeout=20):
    """Every reply line the server sends until it closes the connection (or
    timeout): [(code, line)]."""
    _, got = c.wait_close(timeout)
    return [(int(l[:3]), l.decode(errors="replace")) for l in got.split(b"\r\n")
            if l[:3].isdigit()]


class Smuggling(unittest.TestCase):
    """smtp.bare_newline = reject (the default)."""

    @classmethod
    def setUpClass(cls):
        cls.peer = st.Peer(wire=True)
        cls.d = st.Daemon(routes={"peer.test": "127.0.0.1:%d" % cls.peer.port})
        cls.d.start()

    @classmethod
    def tearDownClass(cls):
        try:
            cls.d.stop()
        finally:
            cls.d.cleanup()
            cls.peer.stop()

    def queued_senders(self):
        return [m["sender"] for m in self.d.list()["messages"]]

    def received(self):
        return [r for r in self.d.accounting() if r.get("type") == "received"]

    def test_lax_end_of_data_never_splits_a_message(self):
        for name, end in LAX_ENDS.items():
            with self.subTest(end=name):
                before = len(self.received())
                c = open_data(self.d.smtp_port)
                self.addCleanup(c.close)
                c.send(b"Subject: smuggle " + name.encode() + b"\r\n" + HEAD + b"\r\nhello"
                       + end + SMUGGLED + b"QUIT\r\n")
                replies = all_replies(c)
                codes = [code for code, _ in replies]
                # one answer for the whole input: the message is refused
                # and the connection closed, nothing is read as a command
                self.assertEqual(codes, [521], replies)
                self.assertIn("521 5.5.2", replies[0][1])
                self.assertIn("bare <LF>", replies[0][1])
                self.assertNotIn("admin@bank.example", self.queued_senders())
                self.assertEqual(len(self.received()), before)
        self.assertRegex(self.d.stderr(), r"reject: bare <LF> received")

    def test_bare_lf_inside_a_message_is_refused(self):
        c = open_data(self.d.smtp_port)
        self.addCleanup(c.close)
        c.send(b"Subject: lf\r\n" + HEAD + b"\r\nline one\nline two\r\n.\r\n")
        code, text = c.reply()
        self.assertEqual(code, 550, text)
        self.assertIn("5.5.2", text)
        self.assertIn("bare <LF>", text)
        # the session is still in sync and usable
        self.assertEqual(c.cmd("NOOP")[0], 250)
        self.assertEqual(c.cmd("QUIT")[0], 221)

    def test_bare_cr_inside_a_message_is_refused(self):
        for body in (b"Subject: cr\r\n" + HEAD + b"\r\nfirst line\r.\r\n" + SMUGGLED,
                     b"Subject: cr\rX-Evil: 1\r\n" + HEAD + b"\r\nbody\r\n.\r\n"):
            with self.subTest(body=body[:30]):
                before = len(self.received())
                c = open_data(self.d.smtp_port)
                self.addCleanup(c.close)
                c.send(body)
                code, text = c.reply()
                self.assertEqual(code, 550, text)
                self.assertIn("5.5.2", text)
                self.assertIn("bare <CR>", text)
                self.assertEqual(c.cmd("RSET")[0], 250)
                self.assertEqual(len(self.received()), before)
        self.assertNotIn("admin@bank.example", self.queued_senders())

    def test_lf_only_client_gets_an_answer_at_once(self):
        c = st.RawClient(self.d.smtp_port)
        self.addCleanup(c.close)
        self.assertEqual(c.reply()[0], 220)
        c.send(b"EHLO lf.example\nMAIL FROM:<lf@sender.example>\nRCPT TO:<lf@peer.test>\nDATA\n")
        self.assertEqual([c.reply()[0] for _ in range(3)], [250, 250, 250])
        self.assertEqual(c.reply()[0], 354)
        c.send(b"Subject: lf only\n\nbody\n.\n")
        t0 = time.monotonic()
        code, text = c.reply()
        self.assertEqual(code, 521, text)
        self.assertIn("bare <LF>", text)
        waited, _ = c.wait_close(10)
        self.assertLess(time.monotonic() - t0, 10)

    def test_clean_message_goes_out_byte_for_byte(self):
        """The control case: a CRLF message with a dot-stuffed line."""
        c = open_data(self.d.smtp_port, rcpt="clean@peer.test")
        self.addCleanup(c.close)
        body = b"Subject: clean\r\n" + HEAD + b"\r\nfirst\r\n..dot\r\nlast\r\n"
        c.send(body + b".\r\n")
        code, text = c.reply()
        self.assertEqual(code, 250, text)
        msgs = st.wait_for(lambda: [m for m in self.peer.messages()
                                    if m[0]["rcpts"][0]["addr"] == "clean@peer.test"],
                           30, what="the clean message at the peer")
        self.assertEqual(len(msgs), 1)
        raw = msgs[0][1]
        self.assertEqual(st.strip_received(raw),
                         b"Subject: clean\r\n" + HEAD + b"\r\nfirst\r\n.dot\r\nlast\r\n")


class SmugglingNormalize(unittest.TestCase):
    """smtp.bare_newline = normalize: one message, canonical CRLF onward."""

    @classmethod
    def setUpClass(cls):
        cls.peer = st.Peer(wire=True, dsn=True)
        cls.d = st.Daemon(routes={"peer.test": "127.0.0.1:%d" % cls.peer.port},
                          smtp_extra='    bare_newline = normalize;\n')
        cls.d.start()

    @classmethod
    def tearDownClass(cls):
        try:
            cls.d.stop()
        finally:
            cls.d.cleanup()
            cls.peer.stop()

    def delivered_to(self, rcpt, n=1):
        return st.wait_for(lambda: len([m for m in self.peer.messages()
                                        if m[0]["rcpts"][0]["addr"] == rcpt]) >= n and
                           [m for m in self.peer.messages() if m[0]["rcpts"][0]["addr"] == rcpt],
                           30, what="%d message(s) for %s at the peer" % (n, rcpt))

    def test_one_message_byte_for_byte(self):
        for i, (name, end) in enumerate(LAX_ENDS.items()):
            with self.subTest(end=name):
                rcpt = "norm%d@peer.test" % i
                c = open_data(self.d.smtp_port, rcpt=rcpt)
                self.addCleanup(c.close)
                c.send(b"Subject: smuggle\r\n" + HEAD + b"\r\nhello" + end + SMUGGLED)
                code, text = c.reply()
                self.assertEqual(code, 250, text)
                qid = st.queue_id_from_swaks(text)
                self.assertEqual(c.cmd("QUIT")[0], 221)
                msgs = self.delivered_to(rcpt)
                self.assertEqual(len(msgs), 1)
                rec, raw = msgs[0]
                self.assertEqual(rec["mail_from"], "alice@sender.example")
                # the lax "end" and what followed it are message text
                self.assertEqual(
                    st.strip_received(raw),
                    b"Subject: smuggle\r\n" + HEAD + b"\r\nhello\r\n.\r\n"
                    b"MAIL FROM:<admin@bank.example>\r\nRCPT TO:<victim@peer.test>\r\n"
                    b"DATA\r\nSubject: smuggled\r\n\r\nevil\r\n")
                self.assertIn(qid.encode(), raw)
        # nobody ever sent as admin@bank.example, and every byte sluice
        # wrote to the peer ended its lines with CRLF
        self.assertNotIn("admin@bank.example", [m[0]["mail_from"] for m in self.peer.messages()])
        wires = self.peer.wires()
        for w in wires:
            self.assertEqual(st.bare_line_ends(w), [], w[:300])
        # one end of DATA on the wire per message the peer accepted
        self.assertEqual(sum(w.count(b"\r\n.\r\n") for w in wires), len(self.peer.messages()))

    def test_bare_cr_becomes_a_line_end_and_is_dot_stuffed(self):
        c = open_data(self.d.smtp_port, rcpt="cr@peer.test")
        self.addCleanup(c.close)
        c.send(b"Subject: cr\r\n" + HEAD + b"\r\nfirst line\r.\r\nsecond\rthird\r\n.\r\n")
        code, text = c.reply()
        self.assertEqual(code, 250, text)
        rec, raw = self.delivered_to("cr@peer.test")[0]
        self.assertEqual(st.strip_received(raw),
                         b"Subject: cr\r\n" + HEAD + b"\r\nfirst line\r\n.\r\nsecond\r\nthird\r\n")
        for w in self.peer.wires():
            self.assertEqual(st.bare_line_ends(w), [])
            if b"first line" in w:
                self.assertIn(b"first line\r\n..\r\nsecond\r\n", w)


class PeerTextToHeaders(unittest.TestCase):
    """HELO names, ENVID and ORCPT reach a Received header, a DSN or the
    next hop's wire: what is not valid is refused at the command. A NUL
    would cut a command short: refused too."""

    @classmethod
    def setUpClass(cls):
        cls.peer = st.Peer(wire=True, dsn=True)
        cls.d = st.Daemon(routes={"peer.test": "127.0.0.1:%d" % cls.peer.port})
        cls.d.start()

    @classmethod
    def tearDownClass(cls):
        try:
            cls.d.stop()
        finally:
            cls.d.cleanup()
            cls.peer.stop()

    def client(self):
        c = st.RawClient(self.d.smtp_port)
        self.addCleanup(c.close)
        self.assertEqual(c.reply()[0], 220)
        return c

    def test_helo_names(self):
        c = self.client()
        for bad in (b"EHLO name\rX-Evil: 1", b"HELO name\rX-Evil: 1", b"EHLO two words",
                    b"EHLO (comment)", b"EHLO host\x1b[2J", b"EHLO [1.2.3.4", b"EHLO \xff\xfe"):
            with self.subTest(cmd=bad):
                c.send(bad + b"\r\n")
                code, text = c.reply()
                self.assertEqual(code, 501, text)
                self.assertIn("5.5.2", text)
        # a session that never gave a valid name cannot start a transaction
        c.send(b"MAIL FROM:<a@sender.example>\r\n")
        self.assertEqual(c.reply()[0], 503)
        for good in ("EHLO client.example", "EHLO [127.0.0.1]", "EHLO [IPv6:::1]",
                     "HELO my_host-1.example.", "EHLO xn--bcher-kva.example"):
            with self.subTest(cmd=good):
                self.assertEqual(c.cmd(good)[0], 250)
        c.cmd("QUIT")
        # what reaches the next hop: the last valid name, nothing injected
        c = self.client()
        self.assertEqual(c.cmd("EHLO good.example")[0], 250)
        c.send(b"EHLO evil\rX-Evil: 1\r\n")
        self.assertEqual(c.reply()[0], 501)
        for cmd in ("MAIL FROM:<a@sender.example>", "RCPT TO:<helo@peer.test>"):
            self.assertEqual(c.cmd(cmd)[0], 250)
        self.assertEqual(c.cmd("DATA")[0], 354)
        code, text = c.cmd("Subject: helo\r\n" + HEAD.decode() + "\r\nx\r\n.")
        self.assertEqual(code, 250, text)
        raw = st.wait_for(lambda: [m for r, m in self.peer.messages()
                                   if r["rcpts"][0]["addr"] == "helo@peer.test"], 30,
                          what="the message at the peer")[0]
        self.assertTrue(raw.startswith(b"Received: from good.example ([127.0.0.1])\r\n"), raw)
        self.assertNotIn(b"X-Evil", raw)

    def test_envid_and_orcpt_are_xtext(self):
        c = self.client()
        self.assertEqual(c.cmd("EHLO client.example")[0], 250)
        for bad in ("ENVID=a+0D+0AX-Evil:+201", "ENVID=a+0a", "ENVID=a+zz", "ENVID=a=b",
                    "ENVID=a\x01b", "ENVID=a\x7fb"):
            with self.subTest(param=bad):
                code, text = c.cmd("MAIL FROM:<a@sender.example> " + bad)
                self.assertEqual(code, 501, text)
                self.assertIn("5.5.4", text)
        c.cmd("QUIT")
        # a new session: each refusal above counted as an error (max_errors)
        c = self.client()
        self.assertEqual(c.cmd("EHLO client.example")[0], 250)
        self.assertEqual(c.cmd("MAIL FROM:<a@sender.example> RET=HDRS ENVID=QQ314159+2B1")[0],
                         250)
        for bad in ("ORCPT=rfc822;bob+0D+0AX-Evil:+201@peer.test", "ORCPT=rfc822;bob+0A",
                    "ORCPT=rfc 822;bob", "ORCPT=;bob@peer.test", "ORCPT=rfc822;",
                    "ORCPT=rfc822;b\x1bob", "ORCPT=rfc822;bob+4"):
            with self.subTest(param=bad):
                code, text = c.cmd("RCPT TO:<dsn@peer.test> " + bad)
                self.assertEqual(code, 501, text)
                self.assertIn("5.5.4", text)
        code, text = c.cmd("RCPT TO:<dsn@peer.test> NOTIFY=FAILURE ORCPT=rfc822;Bob+2Bx@peer.test")
        self.assertEqual(code, 250, text)
        self.assertEqual(c.cmd("DATA")[0], 354)
        code, text = c.cmd("Subject: dsn\r\n" + HEAD.decode() + "\r\nx\r\n.")
        self.assertEqual(code, 250, text)
        rec = st.wait_for(lambda: [r for r, m in self.peer.messages()
                                   if r["rcpts"][0]["addr"] == "dsn@peer.test"], 30,
                          what="the DSN message at the peer")[0]
        # relayed as received (xtext)
        self.assertIn("ENVID=QQ314159+2B1", rec["mail_params"])
        self.assertIn("ORCPT=rfc822;Bob+2Bx@peer.test", rec["rcpts"][0]["params"])

    def test_nul_in_a_command(self):
        c = self.client()
        self.assertEqual(c.cmd("EHLO client.example")[0], 250)
        self.assertEqual(c.cmd("MAIL FROM:<nul@sender.example>")[0], 250)
        c.send(b"RCPT TO:<nul@example.test>\0garbage\r\n")
        code, text = c.reply()
        self.assertEqual(code, 500, text)
        self.assertIn("5.5.2", text)
        # the recipient was not taken
        code, text = c.cmd("DATA")
        self.assertEqual(code, 554, text)
        c.send(b"NO\0OP\r\n")
        self.assertEqual(c.reply()[0], 500)
        self.assertEqual(c.cmd("QUIT")[0], 221)


if __name__ == "__main__":
    unittest.main(verbosity=2)
