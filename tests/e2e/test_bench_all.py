#!/usr/bin/python3
"""Smoke test of bench/run-all, what `make bench` runs (issue 18): every
part at smoke sizes, one report.

Runs `bench/run-all --smoke --no-build --no-install` on the build under test
with BENCH_SCENARIOS=esp-throughput (bench/run's slowest side is Postfix;
relay-5k is covered by test_bench_smoke) and checks the one report.md:

1. exit status 0, report.md and bench.json, every part ok;
2. the side-by-side table has a row per scenario with figures, sluice beside
   Postfix where Postfix takes part: esp-throughput (msgs/s of both and their
   ratio, from bench/run's results.json), esp-envelope runs a and b (goodput,
   provoked tempfails, from envelope.json), relay-tools (both MTAs and the
   ratio, from relay-tools.json), wan;
3. a section per scenario, with bench/run's own sections kept, and the plots
   the sections name exist: esp-throughput's, each esp-envelope run's
   delivered rate per provider against its allowance, the learned rates;
The wan part is left out here (--only): tests/e2e/test_bench_wan.py runs
it (`bench/run-all --smoke --only wan`) and checks its row and section.
MessagesOption: bench/run --messages N / NAME=N,... and its usage error.
Assemble: --assemble from a bench.json of bench/run "all" lists the
scenarios by name.
BenchAll needs root (Postfix's daemons, smtp-sink -u nobody, unshare --net).
"""
import importlib.machinery
import importlib.util
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


def cell_number(row, col):
    """The number in column col of a Markdown table row (1,234 / 12.5% / 3.1x)."""
    cells = [c.strip() for c in row.strip().strip("|").split("|")]
    m = re.fullmatch(r"([0-9][0-9,]*(?:\.[0-9]+)?)(%|x)?", cells[col])
    return None if m is None else float(m.group(1).replace(",", ""))


class BenchAll(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        st.require_root("Postfix's daemons, smtp-sink -u nobody, unshare --net")
        for tool in ("/usr/sbin/postfix", "/usr/bin/gnuplot", "/usr/sbin/smtp-source",
                     "/usr/sbin/tc", "/usr/bin/unshare"):
            if not os.access(tool, os.X_OK):
                raise AssertionError("%s is missing: .ci/deps installs it (make deps)" % tool)
        # directly under /tmp: Postfix's socket paths below it must stay under 108 bytes
        cls.out = tempfile.mkdtemp(prefix="bench-all-")
        env = dict(os.environ, BENCH_SCENARIOS="esp-throughput")
        cmd = ["/usr/bin/python3", os.path.join(st.SRC, "bench", "run-all"), "--smoke",
               "--no-build", "--no-install", "--build-dir", st.BUILD, "--out", cls.out,
               "--only", "run,envelope,relay-tools"]
        cls.proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True, timeout=230, env=env)
        cls.md = ""
        if os.path.exists(os.path.join(cls.out, "report.md")):
            with open(os.path.join(cls.out, "report.md")) as f:
                cls.md = f.read()

    @classmethod
    def tearDownClass(cls):
        if not st.keep_tmp():
            shutil.rmtree(cls.out, ignore_errors=True)

    def load(self, name):
        with open(os.path.join(self.out, name)) as f:
            return json.load(f)

    def row(self, scenario, figure):
        rows = []
        for line in self.md.splitlines():
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if line.startswith("| ") and len(cells) == 6 and cells[0].startswith(scenario) \
                    and cells[1].startswith(figure):
                rows.append(line)
        self.assertEqual(len(rows), 1, "%s / %s in:\n%s" % (scenario, figure, self.md[:4000]))
        return rows[0]

    def test_1_exit_and_parts(self):
        self.assertEqual(self.proc.returncode, 0, self.proc.stderr[-4000:])
        doc = self.load("bench.json")
        self.assertTrue(doc["smoke"])
        self.assertEqual(sorted(doc["parts"]), ["envelope", "relay-tools", "run"])
        for name, p in doc["parts"].items():
            self.assertTrue(p["ok"], name)
        # one report: bench/run's header once, then every section
        self.assertEqual(self.md.count("# sluice vs Postfix: load runs"), 1)

    def test_2_side_by_side(self):
        self.assertIn("## Side by side", self.md)
        # esp-throughput: sluice and Postfix (with OpenDKIM) and their ratio
        run = self.load("results.json")
        r = self.row("esp-throughput", "end-to-end msgs/s")
        summ = run["summary"]["esp-throughput"]
        self.assertEqual(cell_number(r, 2), round(summ["sluice"]["e2e_msgs_per_s"]["median"]))
        self.assertEqual(cell_number(r, 3), round(summ["postfix"]["e2e_msgs_per_s"]["median"]))
        self.assertEqual(cell_number(r, 4), round(summ["ratio_e2e"]["median"], 1))
        self.assertGreater(cell_number(r, 3), 0)
        # TLS reuse of each MTA (issue 18: resumption and messages per connection)
        r = self.row("esp-throughput", "TLS handshakes resumed")
        cells = [c.strip() for c in r.strip().strip("|").split("|")]
        for col, mta in ((2, "sluice"), (3, "postfix")):
            x = [y for y in run["results"] if y["scenario"] == "esp-throughput"
                 and y["mta"] == mta][0]
            self.assertEqual(cells[col], "%.0f%%, %.1f" % (x["tls_resumed_pct"],
                                                          x["msgs_per_connection"]))
        # esp-envelope: both runs, their goodput and provoked tempfails
        env = self.load("envelope.json")
        self.assertEqual(sorted(env), ["a", "b"])
        a = self.row("esp-envelope a,", "goodput")
        self.assertAlmostEqual(cell_number(a, 2), 100 * env["a"]["goodput_fraction"], delta=0.06)
        self.assertGreater(cell_number(a, 2), 0)
        b = self.row("esp-envelope b,", "goodput")
        self.assertAlmostEqual(cell_number(b, 2),
                               100 * env["b"]["goodput_fraction_second_half"], delta=0.06)
        for name in ("a", "b"):
            t = self.row("esp-envelope %s," % name, "421/451 provoked")
            self.assertAlmostEqual(cell_number(t, 2), env[name]["tempfails_per_1000"], delta=0.006)
        # relay-tools: both MTAs in Postfix's own harness, and the ratio
        rt = self.load("relay-tools.json")
        self.assertEqual(sorted(x["mta"] for x in rt["results"]), ["postfix", "sluice"])
        r = self.row("relay-tools (smtp-source", "end-to-end msgs/s")
        by = {x["mta"]: x for x in rt["results"]}
        self.assertEqual(cell_number(r, 2), round(by["sluice"]["e2e_msgs_per_s"]))
        self.assertEqual(cell_number(r, 3), round(by["postfix"]["e2e_msgs_per_s"]))
        self.assertEqual(cell_number(r, 4), round(rt["ratios"][0], 1))
        self.assertEqual(rt["messages"], 300)

    def test_3_sections_and_plots(self):
        heads = re.findall(r"(?m)^## (.+)$", self.md)
        self.assertEqual(heads, ["Side by side", "esp-throughput", "esp-envelope", "relay-tools"])
        self.assertIn("| end-to-end msgs/s |", self.md)  # bench/run's own table kept
        pngs = re.findall(r"!\[[^]]*\]\(([^)]+\.png)\)", self.md)
        for want in ("throughput-esp-throughput.png", "envelope-a.png", "envelope-b.png",
                     "envelope-learned.png"):
            self.assertIn(want, pngs)
        for png in pngs:
            with open(os.path.join(self.out, png), "rb") as f:
                self.assertEqual(f.read(8), b"\x89PNG\r\n\x1a\n", png)
        self.assertNotIn("FAIL", self.md)


class MessagesOption(unittest.TestCase):
    """bench/run --messages, which make bench uses to size each scenario."""

    def test_parse(self):
        loader = importlib.machinery.SourceFileLoader(
            "bench_run", os.path.join(st.SRC, "bench", "run"))
        spec = importlib.util.spec_from_loader("bench_run", loader)
        br = importlib.util.module_from_spec(spec)
        loader.exec_module(br)
        self.assertEqual(br.parse_messages(None), {})
        self.assertEqual(br.parse_messages("500"), {"*": 500})
        self.assertEqual(br.parse_messages("esp-throughput=10000,relay-5k=20000"),
                         {"esp-throughput": 10000, "relay-5k": 20000})
        for bad in ("x", "relay-5k=", "=5", "relay-5k=5,"):
            with self.assertRaises(ValueError, msg=bad):
                br.parse_messages(bad)

    def test_bad_value_is_a_usage_error(self):
        r = subprocess.run(["/usr/bin/python3", os.path.join(st.SRC, "bench", "run"),
                            "--messages", "relay-5k=lots", "--no-build", "--mta", "sluice",
                            "relay-5k"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True, timeout=60)
        self.assertEqual(r.returncode, 2, r.stderr)
        self.assertIn("--messages: N or NAME=N", r.stderr)


class Assemble(unittest.TestCase):
    """bench/run-all --assemble: BENCH_SCENARIOS=all gives bench/run "all";
    the table lists the scenarios bench/run ran, by name."""

    def test_all_expanded(self):
        d = tempfile.mkdtemp(prefix="bench-assemble-")
        self.addCleanup(shutil.rmtree, d, True)
        fig = lambda v: {"median": v, "min": v, "max": v}  # noqa: E731
        summ = {n: {"sluice": {"e2e_msgs_per_s": fig(1000 * k), "mta_cpu_s_per_1000": fig(0.1)},
                    "postfix": {"e2e_msgs_per_s": fig(100), "mta_cpu_s_per_1000": fig(5.0)},
                    "ratio_e2e": fig(10.0 * k), "ratio_comparable": True}
                for k, n in ((1, "relay-5k"), (2, "backlog"))}
        doc = {"smoke": False, "parts": {"run": {"scenarios": ["all"], "ok": True, "doc": {
            "scenarios": {"relay-5k": {}, "backlog": {}}, "summary": summ}}}}
        with open(os.path.join(d, "bench.json"), "w") as f:
            json.dump(doc, f)
        r = subprocess.run(["/usr/bin/python3", os.path.join(st.SRC, "bench", "run-all"),
                            "--assemble", d], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True, timeout=60)
        self.assertEqual(r.returncode, 0, r.stderr)
        with open(os.path.join(d, "report.md")) as f:
            md = f.read()
        self.assertIn("| relay-5k | end-to-end msgs/s | 1,000 | 100 | 10.0x |", md)
        self.assertIn("| backlog | end-to-end msgs/s | 2,000 | 100 | 20.0x |", md)
        self.assertIn("| backlog | MTA CPU µs / message | 100 | 5,000 |", md)
        self.assertNotIn("| all |", md)


if __name__ == "__main__":
    st.main()
