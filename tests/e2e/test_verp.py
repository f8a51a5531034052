#!/usr/bin/python3
"""End-to-end tests of VERP return paths (docs/bounces-in.md), as the
receiving server and the operator see them.

With bounces.verp on, an aiosmtpd peer we did not write (st.Peer) gets
each recipient in a transaction of its own, from
MAIL FROM:<bounces+TOKEN@bounce.test>; the test decodes every TOKEN itself
(base32, HMAC-SHA256 with the key file's key, as the docs describe) and
checks that it names the message id of the accounting record and the
recipient's index. The records and the DSN keep the original sender; a
DSN itself goes from <>. A missing or world-readable key stops the
configuration check with a message naming the file.
Every process started here is stopped by pid before the test ends.
"""
import base64
import hashlib
import hmac
import os
import struct
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sluicetest as st  # noqa: E402
from test_delivery import FAST_QUEUE, acct, make_daemon, wait_acct  # noqa: E402

KEY_HEX = "9f" * 4 + "0123456789abcdef" * 3 + "a5" * 4


def decode_token(addr, key):
    """(msgid hex, idx, day) of a VERP address, or raise."""
    local, domain = addr.rsplit("@", 1)
    assert domain == "bounce.test", addr
    assert local.startswith("bounces+"), addr
    tok = local[len("bounces+"):]
    assert len(tok) == 39, tok
    raw = base64.b32decode(tok.upper() + "=" * (-len(tok) % 8))
    assert len(raw) == 24
    data, mac = raw[:14], raw[14:]
    want = hmac.new(key, data, hashlib.sha256).digest()[:10]
    assert hmac.compare_digest(mac, want), "MAC does not verify"
    msgid, idx, day = struct.unpack(">QIH", data)
    return "%016X" % msgid, idx, day


class VerpTest(unittest.TestCase):
    def setUp(self):
        self.cleanups = []

    def tearDown(self):
        for fn in reversed(self.cleanups):
            try:
                fn()
            except Exception:
                pass

    def peer(self, **kw):
        p = st.Peer(prefix="verp-peer-", **kw)
        self.cleanups.append(lambda: p.stop(check=False))
        return p

    def daemon(self, routes, key_mode=0o600, key=KEY_HEX + "\n", start=True):
        d = make_daemon(routes={k: "127.0.0.1:%d" % p.port for k, p in routes.items()},
                        queue=FAST_QUEUE)
        self.cleanups.append(d.cleanup)
        kf = os.path.join(d.dir, "verp.key")
        with open(kf, "w") as f:
            f.write(key)
        os.chmod(kf, key_mode)
        with open(d.conf_path, "a") as f:
            f.write('bounces {\n    verp = true;\n    domain = "bounce.test";\n'
                    '    verp_key_file = "%s";\n}\n' % kf)
        if start:
            d.start()
        return d

    def test_one_transaction_per_recipient_with_a_verifiable_token(self):
        dest = self.peer(rcpt_reply=["bad@a.test=550 5.1.1 No such user"])
        home = self.peer()
        d = self.daemon({"a.test": dest, "s.test": home})
        rcpts = ["one@a.test", "two@a.test", "bad@a.test"]
        with d.smtp() as c:
            c.sendmail("owner@s.test", rcpts,
                       b"From: <owner@s.test>\r\nTo: <one@a.test>\r\nSubject: verp\r\n"
                       b"Message-ID: <verp@s.test>\r\n\r\nHello.\r\n")
        wait_acct(d, "delivery", "one@a.test")
        wait_acct(d, "delivery", "two@a.test")
        bounce = wait_acct(d, "bounce", "bad@a.test")[0]
        msgid = bounce["msgid"]
        key = bytes.fromhex(KEY_HEX)
        got = {}
        for rec, raw in dest.messages():
            self.assertEqual(len(rec["rcpts"]), 1, rec)  # one recipient per transaction
            mid, idx, day = decode_token(rec["mail_from"], key)
            self.assertEqual(mid, msgid)
            self.assertLessEqual(abs(day - int(time.time() // 86400)), 1)
            got[rec["rcpts"][0]["addr"]] = idx
        self.assertEqual(got, {"one@a.test": 0, "two@a.test": 1})
        # the records keep the original sender
        for r in acct(d, "delivery", "one@a.test") + [bounce]:
            self.assertEqual(r["sender"], "owner@s.test")
        # the DSN goes to the original sender, from the null sender (no VERP)
        st.wait_for(lambda: home.messages(), 30, what="the DSN")
        rec, raw = home.messages()[0]
        self.assertIn(rec["mail_from"], ("", "<>"))
        self.assertEqual([r["addr"] for r in rec["rcpts"]], ["owner@s.test"])
        d.stop()

    def test_key_file_is_checked(self):
        d = self.daemon({}, start=False)
        r = st.run([st.SLUICED, "--check-config", "-c", d.conf_path])
        self.assertEqual(r.returncode, 0, r.err)
        d2 = self.daemon({}, key_mode=0o644, start=False)
        r = st.run([st.SLUICED, "--check-config", "-c", d2.conf_path])
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("bounces.verp_key_file", r.err)
        self.assertIn("verp.key", r.err)
        d3 = self.daemon({}, key="too short\n", start=False)
        r = st.run([st.SLUICED, "--check-config", "-c", d3.conf_path])
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("must hold 32 random bytes", r.err)
        os.unlink(os.path.join(d3.dir, "verp.key"))
        r = st.run([st.SLUICED, "--check-config", "-c", d3.conf_path])
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("No such file", r.err)


if __name__ == "__main__":
    st.main()
