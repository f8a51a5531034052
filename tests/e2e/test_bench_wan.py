#!/usr/bin/python3
"""Smoke test of issue 18's wan scenario (bench/run-wan, bench/run-all's wan
part) and of its link, the NFQUEUE delayer (bench/wan-delay.c).

Link: `bench/run-wan --rtt-only` builds the two namespaces, the veth pair,
the iptables rules and the delayer, and times TCP connects (one round trip)
and SMTP greetings (two) to a listener in the sink's namespace:
1. with 50 ms +- 10 ms each way and no loss, every connect takes at least
   2 x 40 ms and the median is 100 ms +- 20 (the scenario's RTT), every
   greeting at least 4 x 40 ms; the delayer saw the packets and dropped none;
2. with the delay set to 0 the same link answers in a few ms: the 100 ms
   above is the delayer's, not the namespaces';
3. nothing is left behind: no new interface or iptables rule in this
   namespace (everything lived in the namespaces the run made), no process
   of the run (its dnsmasq, delayer, listener) still running.
Part: `bench/run-all --smoke --only wan` runs the scenario end to end at a
tiny size: wan.json says it ran; sluice and Postfix delivered every message
(bench/run's checks), over STARTTLS, to the sink in the namespace; the report
has the wan row with both rates and their ratio, the RTT, the delayer's
figures and the plot of delivered msgs/s over time (a PNG); `--assemble` of that directory (twice) gives the same one report.
NotRun: with no delayer in the build directory the part does not run and
says why (run-all's exit status stays 0; the report says **Not run** and
the reason, no figure). Needs root (network namespaces, iptables in them,
Postfix).
"""
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sluicetest as st  # noqa: E402

RUN_WAN = os.path.join(st.SRC, "bench", "run-wan")


def release_build():
    """The build whose bench/ tools run: the release one when given (make
    test), else the build under test (both build sluice-wan-delay)."""
    rel = os.environ.get("SLUICE_RELEASE_BUILD") or os.environ.get("SLUICE_RELEASE_BUILD_DEFAULT")
    if rel and os.access(os.path.join(rel, "bench", "sluice-wan-delay"), os.X_OK) \
            and os.access(os.path.join(rel, "core", "server", "sluiced"), os.X_OK):
        return rel
    return st.BUILD


def leftovers(path):
    """Processes whose command line names path (the run's directory: its
    dnsmasq, delayer, sink, MTA), other than this test's own."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            with open("/proc/%s/cmdline" % pid, "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if path in cmd:
            found.append("%s: %s" % (pid, cmd[:200]))
    return found


def host_state():
    links = subprocess.run(["ip", "-o", "link"], stdout=subprocess.PIPE, text=True).stdout
    rules = subprocess.run(["iptables", "-S"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           text=True).stdout
    return sorted(re.findall(r"^\d+: ([^:@]+)", links, re.M)), rules


class Link(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        st.require_root("network namespaces, iptables in them")
        cls.build = release_build()
        if not os.access(os.path.join(cls.build, "bench", "sluice-wan-delay"), os.X_OK):
            raise AssertionError("no bench/sluice-wan-delay in %s: libnetfilter-queue-dev "
                                 "(.ci/deps) is missing" % cls.build)
        cls.tmp = tempfile.mkdtemp(prefix="bench-wan-")

    @classmethod
    def tearDownClass(cls):
        if not st.keep_tmp():
            shutil.rmtree(cls.tmp, ignore_errors=True)

    def rtt(self, name, delay, jitter):
        out = os.path.join(self.tmp, name)
        r = subprocess.run([RUN_WAN, "--rtt-only", "--rtt-samples", "12", "--delay-ms",
                            str(delay), "--jitter-ms", str(jitter), "--loss", "0",
                            "--build-dir", self.build, "--out", out],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=90)
        self.assertEqual(r.returncode, 0, r.stderr[-2000:])
        with open(os.path.join(out, "wan.json")) as f:
            return json.load(f)

    def test_1_adds_the_delay(self):
        before = host_state()
        doc = self.rtt("delayed", 50, 10)
        c, g = doc["rtt"]["connect"], doc["rtt"]["greeting"]
        self.assertEqual(c["samples"], 12, doc)
        self.assertEqual(g["samples"], 12, doc)
        # never faster than the shortest delay each way (a loaded machine
        # can only add to it); the median is the scenario's 100 ms +- 20
        self.assertGreaterEqual(c["min_ms"], 2 * 40 - 1, doc)
        self.assertGreaterEqual(c["median_ms"], 80, doc)
        self.assertLessEqual(c["median_ms"], 120 + 30, doc)  # + scheduling on 2 shared cores
        self.assertGreaterEqual(g["min_ms"], 4 * 40 - 1, doc)
        d = doc["delayer"]
        self.assertGreaterEqual(d["packets"], 12 * 5, d)  # SYN, SYN-ACK, ACK, data, FIN...
        self.assertEqual(d["dropped"], 0, d)
        self.assertEqual((d["delay_ms"], d["jitter_ms"], d["loss"]), (50.0, 10.0, 0), d)
        self.assertEqual(host_state(), before, "the run left an interface or a rule behind")
        self.assertEqual(leftovers(os.path.join(self.tmp, "delayed")), [])

    def test_2_no_delay_no_latency(self):
        doc = self.rtt("bare", 0, 0)
        self.assertLess(doc["rtt"]["connect"]["median_ms"], 20, doc)
        self.assertGreaterEqual(doc["delayer"]["packets"], 12 * 5, doc)


class Part(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        st.require_root("network namespaces, iptables in them, Postfix's daemons")
        if not os.access("/usr/sbin/postfix", os.X_OK):
            raise AssertionError("Postfix is missing: .ci/deps installs it")
        cls.out = tempfile.mkdtemp(prefix="bench-wan-all-")
        cmd = ["/usr/bin/python3", os.path.join(st.SRC, "bench", "run-all"), "--smoke",
               "--only", "wan", "--no-build", "--no-install", "--build-dir", release_build(),
               "--out", cls.out]
        cls.proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True, timeout=200)
        cls.md = ""
        if os.path.exists(os.path.join(cls.out, "report.md")):
            with open(os.path.join(cls.out, "report.md")) as f:
                cls.md = f.read()

    @classmethod
    def tearDownClass(cls):
        if not st.keep_tmp():
            shutil.rmtree(cls.out, ignore_errors=True)

    def test_ran_end_to_end(self):
        self.assertEqual(self.proc.returncode, 0, self.proc.stderr[-3000:])
        with open(os.path.join(self.out, "wan.json")) as f:
            wan = json.load(f)
        self.assertTrue(wan["ran"], wan.get("reason"))
        self.assertEqual(wan["mechanism"], "nfqueue")
        by = {r["mta"]: r for r in wan["results"]}
        self.assertEqual(sorted(by), ["postfix", "sluice"])
        for mta, n in (("sluice", 300), ("postfix", 100)):
            r = by[mta]
            self.assertEqual(r["status"], "ok", r.get("fail_reason"))
            self.assertEqual(r["accepted"], n, mta)
            self.assertEqual(r["delivered_recipients"], n, mta)
            self.assertEqual(r["duplicates"], 0, mta)
            # opportunistic TLS: every connection of the MTA took STARTTLS
            self.assertEqual(r["tls_connections"], r["sink_connections"], mta)
            self.assertGreater(r["e2e_msgs_per_s"], 0, mta)
            # the link was there during the run: the MTA's packets went through it
            self.assertGreater(r["delayer"]["packets"], n * 10, mta)
            self.assertGreaterEqual(r["rtt"]["connect"]["median_ms"], 80, r["rtt"])
        self.assertEqual(leftovers(self.out), [], "processes of the run still running")
        sm = wan["summary"]
        self.assertAlmostEqual(sm["ratio"], by["sluice"]["e2e_msgs_per_s"]
                               / by["postfix"]["e2e_msgs_per_s"], places=6)

    def test_report(self):
        row = [ln for ln in self.md.splitlines() if ln.startswith("| wan (100 ms RTT")]
        self.assertEqual(len(row), 1, self.md)
        cells = [c.strip() for c in row[0].strip().strip("|").split("|")]
        self.assertRegex(cells[2], r"^[0-9][0-9,]*$")  # sluice msgs/s
        self.assertRegex(cells[3], r"^[0-9][0-9,]*$")  # Postfix msgs/s
        self.assertRegex(cells[4], r"^[0-9.]+x$")
        sec = self.md[self.md.index("## wan"):]
        self.assertNotIn("Not run", sec)
        self.assertNotIn("FAIL", sec)
        self.assertRegex(sec, r"TCP connect to the sink, median\): [0-9.]+ ms")
        self.assertRegex(sec, r"The delayer: [0-9]+ packets, [0-9]+ dropped")
        # the plot of delivered msgs/s over time, a PNG
        self.assertIn("![wan throughput](throughput-wan.png)", sec)
        with open(os.path.join(self.out, "throughput-wan.png"), "rb") as f:
            self.assertEqual(f.read(8), b"\x89PNG\r\n\x1a\n")


    def test_assemble_again(self):
        """--assemble (twice) writes the same one report: without the run
        part, report.md is not mistaken for bench/run's own."""
        for _ in range(2):
            r = subprocess.run(["/usr/bin/python3", os.path.join(st.SRC, "bench", "run-all"),
                                "--assemble", self.out], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, timeout=60)
            self.assertEqual(r.returncode, 0, r.stderr)
        with open(os.path.join(self.out, "report.md")) as f:
            md = f.read()
        self.assertEqual(re.findall(r"(?m)^## (.+)$", md), ["Side by side", "wan"])
        self.assertEqual(md.count("| wan (100 ms RTT"), 1)


class NotRun(unittest.TestCase):
    def test_says_why(self):
        out = tempfile.mkdtemp(prefix="bench-wan-none-")
        empty = tempfile.mkdtemp(prefix="bench-wan-nobuild-")
        try:
            r = subprocess.run(["/usr/bin/python3", os.path.join(st.SRC, "bench", "run-all"),
                                "--smoke", "--only", "wan", "--no-build", "--no-install",
                                "--build-dir", empty, "--out", out],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               timeout=60)
            self.assertEqual(r.returncode, 0, r.stderr[-2000:])
            with open(os.path.join(out, "wan.json")) as f:
                wan = json.load(f)
            self.assertFalse(wan["ran"])
            self.assertIn("sluice-wan-delay", wan["reason"])
            with open(os.path.join(out, "report.md")) as f:
                md = f.read()
            sec = md[md.index("## wan"):]
            self.assertIn("**Not run**: " + wan["reason"], sec)
            row = [ln for ln in md.splitlines() if ln.startswith("| wan |")]
            self.assertEqual(len(row), 1, md)
            self.assertIn("| not run | not run |", row[0])
        finally:
            if not st.keep_tmp():
                shutil.rmtree(out, ignore_errors=True)
            shutil.rmtree(empty, ignore_errors=True)


if __name__ == "__main__":
    unittest.main()
