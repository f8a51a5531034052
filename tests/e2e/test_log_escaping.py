#!/usr/bin/python3
"""Peer-supplied text in the operational log: an AUTH identity, a job name
from a header, a receiving server's reply. Every byte a peer chose is
escaped (\\n, \\r, \\xHH, \\\\) before it reaches a log line, so a peer can
neither start a line of its own nor send control sequences to the
operator's terminal."""
import base64
import os
import re
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sluicetest as st  # noqa: E402

FORGED = "2030-01-01T00:00:00.000Z info  [smtp0] smtp client=10.0.0.1 auth ok user=admin"


def hash_password(pw):
    return st.run(["openssl", "passwd", "-6", "-salt", "logescape", pw]).check().out.strip()


def control_bytes(text):
    """Control characters in the log other than the line ends."""
    return sorted({c for c in text if (ord(c) < 32 and c != "\n") or ord(c) == 127})


class LogEscaping(unittest.TestCase):
    def test_reception_text(self):
        extra = ("    auth {\n        fail_delay = 0;\n        lockout_failures = 100;\n"
                 "        users {\n            alice = \"%s\";\n        }\n    }\n"
                 % hash_password("pw"))
        d = st.Daemon(smtp_extra=extra)
        os.chmod(d.conf_path, 0o600)
        with d:
            c = st.RawClient(d.smtp_port)
            self.addCleanup(c.close)
            self.assertEqual(c.reply()[0], 220)
            self.assertEqual(c.cmd("EHLO client.example")[0], 250)
            # AUTH PLAIN: the identity carries a line end and a fake line
            ident = b"\0mallory\n" + FORGED.encode() + b"\0pw"
            code, _ = c.cmd("AUTH PLAIN " + base64.b64encode(ident).decode())
            self.assertEqual(code, 535)
            # AUTH LOGIN: a CR and a terminal escape in the user name
            self.assertEqual(c.cmd("AUTH LOGIN")[0], 334)
            self.assertEqual(c.cmd(base64.b64encode(b"eve\r\x1b[2Jx").decode())[0], 334)
            self.assertEqual(c.cmd(base64.b64encode(b"pw").decode())[0], 535)
            # a job name (X-Sluice-Job) with control bytes
            code, text = c.cmd("AUTH PLAIN " + base64.b64encode(b"\0alice\0pw").decode())
            self.assertEqual(code, 235, text)
            for cmd in ("MAIL FROM:<a@sender.example>", "RCPT TO:<b@example.test>"):
                self.assertEqual(c.cmd(cmd)[0], 250)
            self.assertEqual(c.cmd("DATA")[0], 354)
            c.send(b"X-Sluice-Job: job\x1b]0;title\x07\x7f\\end\r\nSubject: j\r\n\r\nx\r\n.\r\n")
            code, text = c.reply()
            self.assertEqual(code, 250, text)
            qid = st.queue_id_from_swaks(text)
            self.assertEqual(c.cmd("QUIT")[0], 221)
            d.stop()
            log = d.stderr()
        self.assertNotIn("\n" + FORGED, log)
        self.assertFalse([l for l in log.splitlines() if l.startswith("2030-")])
        self.assertEqual(control_bytes(log), [])
        self.assertIn("auth failed user=mallory\\n2030-01-01T00:00:00.000Z info  [smtp0]", log)
        self.assertIn("auth failed user=eve\\r\\x1b[2Jx", log)
        self.assertRegex(log, re.escape(qid) + r" .*job=job\\x1b\]0;title\\x07\\x7f\\\\end")

    def test_remote_replies(self):
        peer = st.Peer(rcpt_reply=["esc@peer.test=550 5.1.1 no\x1b[2J such\ruser\x07"])
        self.addCleanup(peer.stop)
        d = st.Daemon(routes={"peer.test": "127.0.0.1:%d" % peer.port},
                      extra_conf="queue {\n    dsn = false;\n}\n")
        with d:
            with d.smtp() as s:
                s.sendmail("a@sender.example", ["esc@peer.test"], b"Subject: e\r\n\r\nx\r\n")
            st.wait_for(lambda: [r for r in d.accounting() if r.get("type") == "bounce"], 30,
                        what="the bounce record")
            d.stop()
            log = d.stderr()
        self.assertEqual(control_bytes(log), [])
        # (the CR may reach the log as \r, or as a space if the reply
        # parser replaced it first: either way not as a raw byte)
        self.assertRegex(log, r"status=bounced \(550 no\\x1b\[2J such(\\r| )user\\x07\)")


if __name__ == "__main__":
    unittest.main(verbosity=2)
