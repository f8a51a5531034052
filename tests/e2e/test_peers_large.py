#!/usr/bin/python3
"""A 40 MiB body, byte for byte, at aiosmtpd (tests/e2e/peer_smtp.py) with
and without PIPELINING, and over STARTTLS: what the peer stored is what was submitted, apart
from sluice's Received field (st.strip_received). smtp.max_message_size
and the spool's map size are raised for it.
Run: SLUICE_BUILD=... /usr/bin/python3 tests/e2e/test_peers_large.py
"""
import os
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sluicetest as st  # noqa: E402
from test_peers_transparency import bulk_body  # noqa: E402

SIZE = 40 << 20


class Large(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        cls.msg = st.wire_message("sender@s.example", "big@a.example", subject="forty MiB",
                                  body=bulk_body(SIZE, seed=40))

    def setUp(self):
        self.cleanups = []

    def tearDown(self):
        for fn in reversed(self.cleanups):
            try:
                fn()
            except Exception:
                pass

    def check(self, **kw):
        p = st.Peer(**kw)
        self.cleanups.append(lambda: p.stop(check=False))
        d = st.wire_daemon({"a.example": p.port}, map_size="512M",
                           smtp_extra="    max_message_size = 64M;\n")
        self.cleanups.append(d.cleanup)
        d.start()
        self.assertGreaterEqual(len(self.msg), SIZE)
        st.wire_submit(d, ["big@a.example"], self.msg, mail_options=["BODY=8BITMIME"],
                       timeout=240)
        a = st.wait_acct(d, "delivery", "big@a.example", timeout=200)[0]
        self.assertEqual(a["code"], 250)
        rec, raw = p.wait_messages(1, timeout=30)[0]
        self.assertEqual(rec["size"], len(raw))
        self.assertEqual(rec["tls"] is not None, bool(kw.get("starttls")))
        self.assertEqual(st.strip_received(raw), self.msg)
        d.stop()

    def test_40_mib_without_pipelining(self):
        self.check()

    def test_40_mib_with_pipelining(self):
        self.check(pipelining=True)

    def test_40_mib_over_starttls(self):
        self.check(starttls=True)


if __name__ == "__main__":
    unittest.main()
