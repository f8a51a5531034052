#!/usr/bin/python3
"""Smoke test of bench/run-http (docs/benchmarks.md, "HTTP injection"):
one run of 2,000 recipients per phase against the build under test
(SLUICE_BUILD, --no-build). Checks what a reader of the figures relies on,
not the rates themselves (an ASan build on a shared machine):

1. exit status 0, and no phase reports fewer acknowledged recipients than
   it sent, or an error;
2. the run line gives, for each of the four phases, a rate, sluiced's CPU
   per recipient and the load average; the summary gives the medians with
   the CPU column and each HTTP phase's ratio to SMTP in the same run;
3. the shared phase (one message for 1,000 recipients) costs less CPU per
   recipient than a personalised one (one message each).
"""
import os
import re
import subprocess
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sluicetest as st  # noqa: E402

SRC = os.environ.get("SLUICE_SRC") or os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
BUILD = os.environ["SLUICE_BUILD"]
PHASES = ("smtp", "http-100", "http-1000", "http-1000-shared")


class BenchHttpSmoke(unittest.TestCase):
    def test_one_small_run(self):
        r = subprocess.run([os.path.join(SRC, "bench", "run-http"), "--no-build", "--build-dir",
                            os.path.abspath(BUILD), "--runs", "1", "--rcpts", "2000"],
                           capture_output=True, text=True, timeout=200)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertNotIn("acknowledged", r.stderr)  # a phase short of recipients says so
        run = [line for line in r.stdout.splitlines() if line.startswith("run 1: ")]
        self.assertEqual(len(run), 1, r.stdout)
        cpu = {}
        for name in PHASES:
            m = re.search(r"(?:^|  |: )%s ([0-9]+) rcpts/s \(([0-9.]+) us cpu/rcpt, load "
                          r"([0-9.]+)\)" % re.escape(name), run[0])
            self.assertIsNotNone(m, "%s missing in %r" % (name, run[0]))
            self.assertGreater(int(m.group(1)), 0)
            cpu[name] = float(m.group(2))
        for name in PHASES:
            self.assertRegex(r.stdout, r"\n  %s +[0-9]+ rcpts/s +\([0-9]+\.\.[0-9]+\) +[0-9.]+ us "
                             r"sluiced cpu/rcpt" % re.escape(name))
        for name in ("http-100", "http-1000"):
            self.assertRegex(r.stdout, r"\n  %s +[0-9.]+x smtp in the same run" % name)
        self.assertLess(cpu["http-1000-shared"], cpu["http-1000"])


if __name__ == "__main__":
    st.main()
