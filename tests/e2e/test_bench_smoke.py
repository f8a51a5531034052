#!/usr/bin/python3
"""Smoke test of the benchmark driver bench/run, sluice AND Postfix.

Runs `bench/run --smoke --runs 1 --no-install relay-5k relay-100k esp
backlog` against the build under test (SLUICE_BUILD, --no-build): for each
scenario a sluice-sink, a fresh sluiced, and a private Postfix instance
(Postfix and gnuplot come from .ci/deps, installed before any test runs;
the driver installs nothing during the test, and a missing one fails it),
a few hundred messages each. Checks:

1. exit status 0, no FAIL in the output, results.json and report.md exist;
2. every run of every scenario, for both MTAs, is "ok" and has every figure
   (injection and end-to-end msgs/s, delay p50/p99/max, CPU per 1,000 of
   the MTA, the source and the sink, peak RSS), with plausible values;
3. nothing was lost: the sink has every accepted recipient (delivered or
   refused with 5xx), and the injected count is the scenario's;
4. esp: STARTTLS was used, the sink's tempfails and permfails happened and
   the refused recipients are the only ones missing; sluice signed every
   message it delivered with DKIM and Postfix did not; no comparable ratio;
5. backlog: nothing was delivered during the hold, both phases have spool
   size and RSS, the drain delivered every recipient;
6. the report has a table per scenario, names the ratio and has the plots.
SinkProfile checks the sink's --profile (connection cap, messages per
connection, recipient rate, texts, a provider owning a listener) and --hold.
The driver part needs root (Postfix's private instance runs its daemons as
"postfix"): without root it is skipped (exit 77, "Skipped" in ctest).
"""
import json
import os
import shutil
import signal
import smtplib
import socket
import subprocess
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sluicetest as st  # noqa: E402

SRC = st.SRC
BUILD = st.BUILD
SCENARIOS = ["relay-5k", "relay-100k", "esp", "backlog"]
FIGURES = ["inject_msgs_per_s", "e2e_msgs_per_s", "delay_p50_ms", "delay_p99_ms",
           "delay_max_ms", "mta_cpu_s", "mta_cpu_s_per_1000", "source_cpu_s_per_1000",
           "sink_cpu_s_per_1000", "peak_rss_mb", "accepted", "delivered_recipients",
           "refused_5xx", "expected_recipients", "series"]


class SinkProfile(unittest.TestCase):
    """sluice-sink --profile and --hold, which the scenarios rely on."""

    def setUp(self):
        self.dir = st.make_tmpdir("sink-profile-")
        prof = {"providers": [
            {"name": "big", "domains": ["big.example", "*.big.example"], "max_conns": 1,
             "rate_per_conn": 1, "rate": 0.1, "tempfail_pct": 0, "permfail_pct": 0,
             "ok_text": "250 2.0.0 OK {seq} big", "max_conns_text": "421 4.7.0 big: too many",
             "rate_text": "451 4.7.28 big: slow down",
             "rate_per_conn_text": "421 4.7.0 big: enough for this session"},
            {"name": "picky", "listener": 1, "permfail_pct": 100,
             "permfail_text": "550 5.1.1 picky: no such user"}]}
        self.prof = os.path.join(self.dir, "prof.json")
        with open(self.prof, "w") as f:
            json.dump(prof, f)
        self.addCleanup(shutil.rmtree, self.dir, True)

    def stop_sink(self, p):
        """SIGTERM; the sink must exit 0 (a sanitizer report fails it)."""
        rc = st._reap(p)
        with open(os.path.join(self.dir, "stderr")) as f:
            err = f.read()
        self.assertEqual(rc, 0, err[-3000:])
        self.assertEqual(st.sanitizer_errors(err), [])

    def sink(self, *extra):
        ports = os.path.join(self.dir, "ports")
        self.log = os.path.join(self.dir, "events.jsonl")
        err = open(os.path.join(self.dir, "stderr"), "w")
        self.addCleanup(err.close)
        p = st._spawn([st.SINK, "-l", "127.0.0.1:0", "-l", "127.0.0.1:0", "--no-starttls",
                       "--port-file", ports, "--profile", self.prof, "--log", self.log,
                       "--summary", os.path.join(self.dir, "summary.json")] + list(extra),
                      stdout=subprocess.DEVNULL, stderr=err)
        self.addCleanup(lambda: p.poll() is not None or self.stop_sink(p))

        def ready():
            if p.poll() is not None:
                raise RuntimeError("sluice-sink exited %s" % p.returncode)
            return os.path.exists(ports)
        st.wait_for(ready, 10, what="the sink's port file")
        with open(ports) as f:
            return p, [int(x) for x in f.read().split()]

    def disconnects(self):
        """The sink's disconnect events so far (its --log is flushed every second)."""
        try:
            with open(self.log) as f:
                return [json.loads(l) for l in f if l.endswith("\n")
                        and json.loads(l)["event"] == "disconnect"]
        except FileNotFoundError:
            return []

    def test_provider_behaviour(self):
        p, (port, picky) = self.sink()
        a = smtplib.SMTP("127.0.0.1", port, timeout=10)
        a.ehlo("a")
        a.mail("s@src.example")
        self.assertEqual(a.rcpt("u1@big.example")[0], 250)  # the bucket's one token
        code, text = a.data(b"Subject: 1\r\n\r\nx\r\n")
        self.assertEqual(code, 250)
        self.assertTrue(text.startswith(b"2.0.0 OK 1 big"), text)
        # one message per connection: the next MAIL gets 421 and the end
        self.assertEqual(a.mail("s@src.example"), (421, b"4.7.0 big: enough for this session"))
        a.close()
        # the sink has seen that connection go (else the next one would be
        # over the provider's cap of 1)
        st.wait_for(lambda: len(self.disconnects()) == 1, 10, what="the sink to see a's close")
        # rate 0.1/s: no token for 10 s; by domain pattern, on a new connection
        b = smtplib.SMTP("127.0.0.1", port, timeout=10)
        b.ehlo("b")
        b.mail("s@src.example")
        self.assertEqual(b.rcpt("u2@mx.big.example"), (451, b"4.7.28 big: slow down"))
        # a second concurrent connection of the provider is over its cap (1)
        c = smtplib.SMTP("127.0.0.1", port, timeout=10)
        c.ehlo("c")
        c.mail("s@src.example")
        self.assertEqual(c.rcpt("u3@big.example"), (421, b"4.7.0 big: too many"))
        c.close()
        b.close()
        # the listener that "picky" owns refuses everyone, whatever the domain
        d = smtplib.SMTP("127.0.0.1", picky, timeout=10)
        d.ehlo("d")
        d.mail("s@src.example")
        self.assertEqual(d.rcpt("u@big.example"), (550, b"5.1.1 picky: no such user"))
        d.quit()
        self.stop_sink(p)
        with open(os.path.join(self.dir, "summary.json")) as f:
            sm = json.load(f)["by_provider"]
        self.assertEqual(sm["big"]["messages"], 1)
        self.assertEqual(sm["big"]["recipients"], 1)
        self.assertEqual(sm["big"]["rate_limited"], 1)
        self.assertEqual(sm["big"]["concurrent_max"], 1)
        self.assertEqual(sm["big"]["connections_rejected"], 1)
        self.assertEqual(sm["big"]["replies_421"], 2)
        self.assertEqual(sm["picky"]["permfails"], 1)
        self.assertEqual(sm["picky"]["connections"], 1)

    def test_hold(self):
        p, (port, _) = self.sink("--hold")
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        s.settimeout(0.7)
        with self.assertRaises(socket.timeout):
            s.recv(100)  # no greeting while held
        p.send_signal(signal.SIGUSR1)
        s.settimeout(5)
        self.assertTrue(s.recv(100).startswith(b"220 "))
        s.close()


class BenchSmoke(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        st.require_root("the private Postfix instance runs its daemons as user postfix")
        # Installed by .ci/deps before any test runs; never in the middle of one.
        for tool in ("/usr/sbin/postfix", "/usr/bin/gnuplot"):
            if not os.access(tool, os.X_OK):
                raise AssertionError("%s is missing: .ci/deps installs it (make deps)" % tool)
        # directly under /tmp: Postfix's socket paths below it must stay under 108 bytes
        cls.out = tempfile.mkdtemp(prefix="bench-smoke-")
        cmd = ["/usr/bin/python3", os.path.join(SRC, "bench", "run"), "--smoke", "--runs", "1",
               "--no-install", "--build-dir", BUILD, "--no-build", "--out", cls.out] + SCENARIOS
        cls.proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                  timeout=200)
        path = os.path.join(cls.out, "results.json")
        cls.doc = None
        if os.path.exists(path):
            with open(path) as f:
                cls.doc = json.load(f)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.out, ignore_errors=True)

    def runs(self, scen, mta):
        return [r for r in self.doc["results"] if r["scenario"] == scen and r["mta"] == mta]

    def test_1_exit_and_files(self):
        self.assertEqual(self.proc.returncode, 0, self.proc.stdout + self.proc.stderr[-3000:])
        self.assertNotIn("FAIL", self.proc.stdout + self.proc.stderr)
        self.assertIsNotNone(self.doc)
        self.assertTrue(os.path.exists(os.path.join(self.out, "report.md")))
        self.assertEqual(self.doc["mtas"], ["sluice", "postfix"])
        self.assertFalse(self.doc["failed"])

    def test_2_every_figure(self):
        for scen in SCENARIOS:
            for mta in ("sluice", "postfix"):
                runs = self.runs(scen, mta)
                self.assertEqual(len(runs), 1, "%s %s" % (scen, mta))
                r = runs[0]
                self.assertEqual(r["status"], "ok", "%s %s: %s" % (scen, mta, r.get("fail_reason")))
                for f in FIGURES:
                    self.assertIn(f, r, "%s %s lacks %s" % (scen, mta, f))
                    self.assertIsNotNone(r[f], "%s %s: %s is null" % (scen, mta, f))
                self.assertGreater(r["inject_msgs_per_s"], 0)
                self.assertGreater(r["e2e_msgs_per_s"], 0)
                self.assertGreater(r["mta_cpu_s"], 0, "%s %s: CPU from /proc" % (scen, mta))
                self.assertGreater(r["peak_rss_mb"], 1)
                self.assertLessEqual(r["delay_p50_ms"], r["delay_p99_ms"])
                self.assertLessEqual(r["delay_p99_ms"], r["delay_max_ms"])
                # a delay for (nearly) every delivered message: queue ids matched
                self.assertGreaterEqual(r["delay_samples"], 0.95 * r["sink_messages"],
                                        "%s %s: queue ids not matched" % (scen, mta))
                self.assertTrue(r["series"], "no throughput series")

    def test_3_nothing_lost(self):
        for scen in SCENARIOS:
            want = self.doc["scenarios"][scen]
            for mta in ("sluice", "postfix"):
                r = self.runs(scen, mta)[0]
                self.assertEqual(r["accepted"], want["messages"], "%s %s" % (scen, mta))
                self.assertEqual(r["expected_recipients"], want["messages"] * want["rcpts"])
                self.assertEqual(r["delivered_recipients"] + r["refused_5xx"],
                                 r["expected_recipients"], "%s %s" % (scen, mta))

    def test_4_esp(self):
        for mta in ("sluice", "postfix"):
            r = self.runs("esp", mta)[0]
            self.assertGreater(r["tls_connections"], 0, mta)
            self.assertGreater(r["refused_5xx"], 0, mta)  # 1% permfail of 400
            self.assertGreater(r["tempfails_seen_by_sink"], 0, mta)  # 2% tempfail, retried
            self.assertLess(r["refused_5xx"], 0.05 * r["expected_recipients"])
        s, p = self.runs("esp", "sluice")[0], self.runs("esp", "postfix")[0]
        self.assertEqual(p["dkim_signed"], 0)
        self.assertFalse(p["dkim"])
        # sluice signs: a run where nothing was signed is a failure, not a note
        self.assertTrue(s["dkim"], s["notes"])
        self.assertGreater(s["sink_messages"], 0)
        self.assertEqual(s["dkim_signed"], s["sink_messages"], s["notes"])
        self.assertFalse(self.doc["summary"]["esp"]["ratio_comparable"])

    def test_5_backlog(self):
        for mta in ("sluice", "postfix"):
            r = self.runs("backlog", mta)[0]
            h, d = r["hold"], r["drain"]
            self.assertEqual(h["delivered_during_hold"], 0, mta)
            self.assertGreater(h["spool_mb"], 0.5, mta)  # 300 messages of 5 KiB
            self.assertGreater(h["peak_rss_mb"], 1, mta)
            self.assertGreater(d["peak_rss_mb"], 1, mta)
            self.assertGreater(d["drain_rcpts_per_s"], 0, mta)
            self.assertEqual(r["delivered_recipients"], r["expected_recipients"], mta)

    def test_6_report(self):
        with open(os.path.join(self.out, "report.md")) as f:
            md = f.read()
        for scen in SCENARIOS:
            self.assertIn("## %s" % scen, md)
        self.assertIn("| end-to-end msgs/s |", md)
        self.assertIn("Ratio sluice/Postfix", md)
        self.assertNotIn("FAIL", md)
        for scen in SCENARIOS:
            png = os.path.join(self.out, "throughput-%s.png" % scen)
            with open(png, "rb") as f:
                self.assertEqual(f.read(8), b"\x89PNG\r\n\x1a\n", png)


if __name__ == "__main__":
    st.main()
