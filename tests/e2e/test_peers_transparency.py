#!/usr/bin/python3
"""Body transparency, byte for byte, at receivers we did not write.

What aiosmtpd (tests/e2e/peer_smtp.py, with and without PIPELINING) and
Postfix's smtp-sink store must be exactly what was submitted, apart from
the Received field sluice puts on top (removed with st.strip_received,
which checks that it is there): dot-stuffing (lines ".", "..", ". x", a
dot after a long line), every 8-bit byte value, a 1 MiB body, and a 40 MiB
body (the 40 MiB one in test_peers_large.py, to keep each file within its
time budget).
Run: SLUICE_BUILD=... /usr/bin/python3 tests/e2e/test_peers_transparency.py
"""
import os
import random
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sluicetest as st  # noqa: E402


def dotty_body():
    """Lines that dot-stuffing must get right, and every byte value but
    NUL, CR and LF (8-bit included) in lines of 998 at most."""
    lines = [b".", b"..", b"...", b". x", b".\t", b".Leading dot", b"", b".", b"x" * 998,
             b".after a full line", b"a . in the middle", b". ", b"end.", b"."]
    allbytes = bytes(b for b in range(1, 256) if b not in (10, 13))
    lines += [allbytes[i:i + 97] for i in range(0, len(allbytes), 97)]
    lines += [b"." + allbytes[128:200], b"\x80.", b"."]
    return b"\r\n".join(lines) + b"\r\n"


def bulk_body(size, seed=1):
    """About size bytes of lines (1 to 998 characters, printable and 8-bit),
    a line in 11 starting with a dot."""
    rnd = random.Random(seed)
    alphabet = bytes(range(32, 127)) + bytes(range(0xa0, 0x100))
    chunk = bytes(rnd.choice(alphabet) for _ in range(65536))
    out, n, pos = [], 0, 0
    while n < size:
        ln = rnd.randint(1, 998)
        if pos + ln > len(chunk):
            pos = 0
        line = chunk[pos:pos + ln]
        pos += ln
        if rnd.randrange(11) == 0:
            line = b"." + line[1:]
        out.append(line)
        n += len(line) + 2
    return b"\r\n".join(out) + b"\r\n"


class Transparency(unittest.TestCase):

    def setUp(self):
        self.cleanups = []

    def tearDown(self):
        for fn in reversed(self.cleanups):
            try:
                fn()
            except Exception:
                pass

    def daemon(self, port):
        d = st.wire_daemon({"a.example": port}, map_size="256M")
        self.cleanups.append(d.cleanup)
        d.start()
        return d

    def messages(self):
        return [
            st.wire_message("sender@s.example", "ann@a.example", subject="dots and bytes",
                            body=dotty_body()),
            st.wire_message("sender@s.example", "ann@a.example", subject="one MiB",
                            body=bulk_body(1 << 20)),
        ]

    def check_aiosmtpd(self, **kw):
        p = st.Peer(**kw)
        self.cleanups.append(lambda: p.stop(check=False))
        d = self.daemon(p.port)
        sent = self.messages()
        for i, m in enumerate(sent):
            st.wire_submit(d, ["r%d@a.example" % i], m, mail_options=["BODY=8BITMIME"])
        got = p.wait_messages(len(sent), timeout=90)
        by_rcpt = {rec["rcpts"][0]["addr"]: (rec, raw) for rec, raw in got}
        for i, m in enumerate(sent):
            rec, raw = by_rcpt["r%d@a.example" % i]
            self.assertIn("BODY=8BITMIME", rec["mail_params"])
            self.assertEqual(st.strip_received(raw), m, "message %d differs" % i)
            if kw.get("starttls"):
                self.assertIsNotNone(rec["tls"])
        st.wait_acct(d, "delivery", n=len(sent))
        d.stop()

    def test_aiosmtpd_without_pipelining(self):
        self.check_aiosmtpd()

    def test_aiosmtpd_with_pipelining(self):
        self.check_aiosmtpd(pipelining=True)

    def test_aiosmtpd_over_starttls_lock_step(self):
        self.check_aiosmtpd(starttls=True)

    def test_postfix_smtp_sink(self):
        sink = st.PostfixSink()
        self.cleanups.append(sink.stop)
        d = self.daemon(sink.port)
        sent = self.messages()
        for i, m in enumerate(sent):
            st.wire_submit(d, ["r%d@a.example" % i], m, mail_options=["BODY=8BITMIME"])
        st.wait_acct(d, "delivery", n=len(sent))
        got = sink.wait_messages(len(sent))
        by_rcpt = {env["rcpts"][0]: body for env, body in got}
        for i, m in enumerate(sent):
            env_rcpt = "<r%d@a.example>" % i
            body = by_rcpt[env_rcpt]
            # smtp-sink writes lines with LF: none of these bodies has a bare CR or LF
            self.assertNotIn(b"\r", body)
            self.assertEqual(st.strip_received(body.replace(b"\n", b"\r\n")), m,
                             "message %d differs" % i)
        mail_args = [env["mail"] for env, _ in got]
        self.assertTrue(all("BODY=8BITMIME" in a for a in mail_args), mail_args)
        d.stop()

    def test_postfix_smtp_sink_without_8bitmime(self):
        """smtp-sink -8 (no 8BITMIME): the 8-bit text arrives as
        quoted-printable that decodes to what was submitted."""
        import email
        import email.policy
        sink = st.PostfixSink("-8")
        self.cleanups.append(sink.stop)
        d = self.daemon(sink.port)
        text = "Grüße, ça va — 10 €.\r\n.dot line\r\n".encode()
        m = st.wire_message("sender@s.example", "ann@a.example", subject="8bit", body=text,
                            headers=b"MIME-Version: 1.0\r\n"
                                    b"Content-Type: text/plain; charset=utf-8\r\n"
                                    b"Content-Transfer-Encoding: 8bit\r\n")
        st.wire_submit(d, ["ann@a.example"], m, mail_options=["BODY=8BITMIME"])
        st.wait_acct(d, "delivery", "ann@a.example")
        env, body = sink.wait_messages(1)[0]
        self.assertNotIn("BODY=8BITMIME", env["mail"])
        raw = st.strip_received(body.replace(b"\n", b"\r\n"))
        self.assertFalse(any(b >= 0x80 for b in raw), raw)
        msg = email.message_from_bytes(raw, policy=email.policy.compat32)
        self.assertEqual(msg["Content-Transfer-Encoding"], "quoted-printable")
        self.assertEqual(msg.get_payload(decode=True), text)
        d.stop()


if __name__ == "__main__":
    unittest.main()
