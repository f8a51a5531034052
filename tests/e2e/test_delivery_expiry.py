#!/usr/bin/python3
"""End-to-end: a recipient that can never be delivered (its route points at
a closed loopback port) is deferred on every attempt and expires when the
message's lifetime (queue.max_age, at least 1 minute) ends. Slow by nature
(about 65 s), so it lives apart from test_delivery.py.
"""
import os
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sluicetest as st  # noqa: E402
from test_delivery import acct, make_daemon, send, wait_acct  # noqa: E402


class ExpiryTest(unittest.TestCase):

    def test_undeliverable_expires(self):
        closed = st.free_port()  # held for the file, nothing listens: refused
        d = make_daemon(routes={"gone.example": "127.0.0.1:%d" % closed},
                        delivery="    dead_after_failures = 1000;\n",
                        queue='queue {\n    retry = "2s";\n    retry_jitter = 0;\n'
                              '    scan_interval = 100ms;\n    max_age = 1m;\n    dsn = false;\n}\n')
        try:
            d.start()
            t0 = time.monotonic()
            send(d, ["never@gone.example"])
            first = wait_acct(d, "transient", "never@gone.example")[0]
            self.assertEqual(first["status"], "4.4.1")
            self.assertIn("connection refused", first["text"])
            rec = wait_acct(d, "expired", "never@gone.example", timeout=100)[0]
            self.assertGreaterEqual(time.monotonic() - t0, 55)
            self.assertGreater(len(acct(d, "transient", "never@gone.example")), 3)
            self.assertEqual(acct(d, "delivery"), [])
            self.assertEqual(rec["status"], "4.4.7")  # RFC 3463: delivery time expired
            self.assertEqual(rec["category"], "message-expired")
            d.wait_queue(0)
            d.stop()
        finally:
            d.cleanup()


if __name__ == "__main__":
    st.main()
