#!/usr/bin/python3
"""Smoke test of bench/run-relay-tools (issue 18): the relay measured with
Postfix's own smtp-source and smtp-sink, sluiced on a default
configuration and a private Postfix instance in the same harness.

Runs it with 300 messages and one run per MTA (--json) and checks that
both runs are ok, that the sink (smtp-sink's counter) got every message,
that the figures are there and sane (rates > 0, CPU per message > 0) and
that the ratio of the run pair is printed; --stat (sluice alone): its
per-message report of perf stat names the threads. Needs root (smtp-sink -u
nobody, Postfix's daemons).
"""
import json
import os
import subprocess
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sluicetest as st  # noqa: E402


class BenchRelayTools(unittest.TestCase):
    def test_smoke(self):
        st.require_root("smtp-sink -u nobody and Postfix's daemons")
        for tool in ("/usr/sbin/smtp-source", "/usr/sbin/smtp-sink", "/usr/sbin/postfix"):
            if not os.access(tool, os.X_OK):
                raise AssertionError("%s is missing: .ci/deps installs it" % tool)
        r = subprocess.run(["/usr/bin/python3", os.path.join(st.SRC, "bench", "run-relay-tools"),
                            "--runs", "1", "-n", "300", "--no-lock", "--json",
                            "--build-dir", st.BUILD], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, timeout=200)
        self.assertEqual(r.returncode, 0, r.stdout[-2000:] + r.stderr[-2000:])
        doc = json.loads(r.stdout[:r.stdout.rindex("}") + 1])
        self.assertEqual(sorted(x["mta"] for x in doc["results"]), ["postfix", "sluice"])
        for x in doc["results"]:
            self.assertEqual(x["status"], "ok", x)
            self.assertEqual(x["messages"], 300, x)
            self.assertGreater(x["e2e_msgs_per_s"], 0, x)
            self.assertGreaterEqual(x["inject_msgs_per_s"], x["e2e_msgs_per_s"] * 0.999, x)
            self.assertGreater(x["mta_cpu_us_per_msg"], 0, x)
        self.assertEqual(len(doc["ratios"]), 1)
        self.assertIn("ratio sluice/postfix e2e", r.stdout)

    def test_stat(self):
        """--stat: perf stat per thread, each event per relayed message."""
        st.require_root("smtp-sink -u nobody")
        d = st.make_tmpdir("stat-")
        r = subprocess.run(["/usr/bin/python3", os.path.join(st.SRC, "bench", "run-relay-tools"),
                            "--runs", "1", "-n", "300", "--no-lock", "--mta", "sluice",
                            "--stat", d, "--build-dir", st.BUILD], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, timeout=200)
        self.assertEqual(r.returncode, 0, r.stdout[-2000:] + r.stderr[-2000:])
        with open(os.path.join(d, "run1.txt")) as f:
            rows = {ln.split()[0]: ln for ln in f.read().splitlines()[1:] if ln.strip()}
        for ev in ("task-clock", "syscalls", "write", "read", "context-switches"):
            self.assertIn(ev, rows)
            self.assertGreater(float(rows[ev].split()[1]), 0, rows[ev])
        # per thread, by name: reception, delivery, queue
        self.assertIn("smtp0 ", rows["read"])
        self.assertIn("dlv", rows["write"])
        self.assertIn("queue ", rows["task-clock"])


if __name__ == "__main__":
    st.main()
