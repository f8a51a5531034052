#!/usr/bin/python3
"""Smoke test of bench/run's esp-throughput scenario (issue 18), sluice AND
Postfix with Debian's OpenDKIM as its milter.

Runs `bench/run --smoke --runs 1 --no-install esp-throughput` on this
tree's binaries and checks what the report is built from:
1. both runs are "ok", nothing lost, every injected message delivered;
2. both MTAs DKIM-signed every message the sink received (sluice itself,
   Postfix through OpenDKIM), so the ratio is given as comparable;
3. STARTTLS on the delivery leg, one sink port per destination (10), and
   the TLS figures: resumed connections (the sink's count, and sluiced's
   own counters beside) and messages per connection;
4. Postfix's CPU includes OpenDKIM's (a process outside its master tree);
5. the report names the resumption and reuse figures and the ratio.
Needs root (Postfix's private instance runs its daemons as "postfix").
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sluicetest as st  # noqa: E402


class BenchEspThroughput(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        st.require_root("the private Postfix instance runs its daemons as user postfix")
        for tool in ("/usr/sbin/postfix", "/usr/sbin/opendkim"):
            if not os.access(tool, os.X_OK):
                raise AssertionError("%s is missing: .ci/deps installs it (make deps)" % tool)
        # directly under /tmp: Postfix's socket paths below it must stay under 108 bytes
        cls.out = tempfile.mkdtemp(prefix="bench-espt-")
        cmd = ["/usr/bin/python3", os.path.join(st.SRC, "bench", "run"), "--smoke", "--runs",
               "1", "--no-install", "--build-dir", st.BUILD, "--no-build", "--out", cls.out,
               "esp-throughput"]
        cls.proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True, timeout=200)
        cls.doc = None
        path = os.path.join(cls.out, "results.json")
        if os.path.exists(path):
            with open(path) as f:
                cls.doc = json.load(f)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.out, ignore_errors=True)

    def run_of(self, mta):
        r = [x for x in self.doc["results"] if x["mta"] == mta]
        self.assertEqual(len(r), 1, mta)
        return r[0]

    def test_1_runs_ok_nothing_lost(self):
        self.assertEqual(self.proc.returncode, 0, self.proc.stdout + self.proc.stderr[-3000:])
        self.assertFalse(self.doc["failed"])
        want = self.doc["scenarios"]["esp-throughput"]["messages"]
        for mta in ("sluice", "postfix"):
            r = self.run_of(mta)
            self.assertEqual(r["status"], "ok", "%s: %s" % (mta, r.get("fail_reason")))
            self.assertEqual(r["accepted"], want, mta)
            self.assertEqual(r["delivered_recipients"], want, mta)
            self.assertEqual(r["refused_5xx"], 0, mta)
            self.assertEqual(r["tempfails_seen_by_sink"], 0, mta)  # a sink with no limits
            self.assertGreater(r["e2e_msgs_per_s"], 0, mta)

    def test_2_both_sign(self):
        for mta in ("sluice", "postfix"):
            r = self.run_of(mta)
            self.assertTrue(r["dkim"], "%s: %s" % (mta, r["notes"]))
            self.assertEqual(r["dkim_signed"], r["sink_messages"], "%s: %s" % (mta, r["notes"]))
        self.assertTrue(self.doc["summary"]["esp-throughput"]["ratio_comparable"])

    def test_3_tls_figures(self):
        for mta in ("sluice", "postfix"):
            r = self.run_of(mta)
            self.assertGreater(r["tls_connections"], 0, mta)
            self.assertLessEqual(r["tls_connections"], r["sink_connections"], mta)
            self.assertIsNotNone(r["tls_resumed_pct"], mta)
            self.assertLessEqual(r["tls_resumed"], r["tls_connections"], mta)
            self.assertAlmostEqual(r["msgs_per_connection"],
                                   r["sink_messages"] / r["sink_connections"], places=6)
        mt = self.run_of("sluice")["mta_tls"]
        self.assertIsNotNone(mt, "sluiced's TLS counters (sluicectl status)")
        # sluiced's handshakes are the sink's TLS connections, resumed ones too
        self.assertEqual(mt["tls_sessions"], self.run_of("sluice")["tls_connections"])
        self.assertEqual(mt["tls_resumed"], self.run_of("sluice")["tls_resumed"])

    def test_4_postfix_cpu_includes_opendkim(self):
        p, s = self.run_of("postfix"), self.run_of("sluice")
        # OpenDKIM signed every message with RSA-2048: measurable CPU, and
        # counted in Postfix's figure
        self.assertGreater(p["helper_cpu_s"], 0)
        self.assertGreaterEqual(p["mta_cpu_s"], p["helper_cpu_s"])
        self.assertEqual(s["helper_cpu_s"], 0)

    def test_5_report(self):
        with open(os.path.join(self.out, "report.md")) as f:
            md = f.read()
        self.assertIn("## esp-throughput", md)
        self.assertIn("Ratio sluice/Postfix, end-to-end msgs/s, same run", md)
        self.assertIn("TLS resumed", md)
        self.assertIn("msgs/connection", md)


if __name__ == "__main__":
    st.main()
