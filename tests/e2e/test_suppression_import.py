#!/usr/bin/python3
"""End-to-end test of `sluicectl suppress import` at a million addresses
(docs/bounces-in.md, "Streaming" and "Performance"): a CSV of 1,000,000
lines in random order, with repeated addresses (the later line wins, as
it always did), goes in through the daemon's import requests (sorted
100,000-line transactions); what a user checks is sluicectl's count, the
entries `suppress check` shows for repeated and case-folded addresses, and
the sluice_suppression_entries gauge. The time is printed (the figure for
the release build is docs/benchmarks.md's; this build has sanitizers).
Every process started here is stopped by pid before the test ends.
"""
import os
import random
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sluicetest as st  # noqa: E402
from test_delivery import make_daemon  # noqa: E402

N = 1000000


class ImportMillion(unittest.TestCase):
    def test_import_1m_later_line_wins(self):
        d = make_daemon({})
        self.addCleanup(d.cleanup)
        with open(d.conf_path, "a") as f:
            f.write("suppression {\n    enabled = true;\n}\n")
        d.start()
        path = os.path.join(d.dir, "list.csv")
        rnd = random.Random(15)
        order = list(range(N - 1000))
        rnd.shuffle(order)
        with open(path, "w") as f:
            f.write("address,reason,time,scope\n")
            for i in order:
                f.write("u%07d@d%03d.test,,%d,\n" % (i, i % 500, 1700000000 + i))
            # 1,000 lines repeating earlier addresses (case changed): later wins
            for i in range(1000):
                f.write("U%07d@D%03d.TEST,complaint,1800000000,\n" % (order[i], order[i] % 500))
        t0 = time.monotonic()
        r = d.ctl("suppress", "import", path, timeout=280)
        took = time.monotonic() - t0
        self.assertEqual(r.returncode, 0, r.err)
        self.assertIn("imported %d addresses, skipped 0 lines" % N, r.out)
        sys.stderr.write("[import of %d lines: %.1f s] " % (N, took))
        self.assertIn("sluice_suppression_entries %d\n" % (N - 1000), d.ctl("metrics").out)
        a = order[0]
        out = d.ctl("suppress", "check", "u%07d@d%03d.test" % (a, a % 500), json=True).data
        self.assertEqual([(e["reason"], e["time"]) for e in out["entries"]],
                         [("complaint", "2027-01-15T08:00:00.000Z")])
        b = order[-1]
        out = d.ctl("suppress", "check", "u%07d@d%03d.test" % (b, b % 500), json=True).data
        self.assertEqual([e["reason"] for e in out["entries"]], ["import"])
        self.assertIn("not suppressed", d.ctl("suppress", "check", "u%07d@d000.test" % N).out)
        d.stop()


if __name__ == "__main__":
    st.main()
