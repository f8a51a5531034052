#!/usr/bin/python3
"""Smoke test of bench/run-envelope (the esp-envelope scenario, docs/shaping.md):
`bench/run-envelope --smoke --no-build --no-install` against the build under
test (SLUICE_BUILD): 3,000 messages through 10 provider-like sinks that
enforce their limits, run a (a shaping file stating them) and run b (no
shaping file, adaptive mode). Checks what the report promises:

1. exit status 0, envelope.json and envelope.md, the three plots;
2. both runs delivered every message, with the figures (goodput,
   tempfails per 1,000, per provider counts);
3. run a provoked no 421 (sluice kept to the limits it was told);
4. run b learned a rate for every provider, the connection caps where it
   was refused one (never above the sink's), messages per connection
   exactly where a connection was refused for it (the sink's
   rate_per_conn).
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


class EnvelopeSmoke(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        cls.out = tempfile.mkdtemp(prefix="envelope-smoke-", dir=st.make_tmpdir("envelope-"))
        cmd = [os.path.join(st.SRC, "bench", "run-envelope"), "--smoke", "--no-install",
               "--no-build", "--build-dir", st.BUILD, "--out", cls.out]
        cls.proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                  timeout=220)
        with open(os.path.join(st.SRC, "bench", "scenarios",
                               "esp-envelope-providers.json")) as f:
            cls.provs = {p["name"]: p for p in json.load(f)["providers"]}

    @classmethod
    def tearDownClass(cls):
        if not st.keep_tmp():
            shutil.rmtree(os.path.dirname(cls.out), True)

    def res(self):
        with open(os.path.join(self.out, "envelope.json")) as f:
            return json.load(f)

    def test_1_exit_and_files(self):
        self.assertEqual(self.proc.returncode, 0, self.proc.stderr[-3000:])
        for f in ("envelope.json", "envelope.md", "envelope-a.png", "envelope-b.png",
                  "envelope-learned.png"):
            self.assertGreater(os.path.getsize(os.path.join(self.out, f)), 100, f)
        with open(os.path.join(self.out, "envelope.md")) as f:
            md = f.read()
        self.assertRegex(md, r"(?m)^\| a \| [0-9.]+% \|")
        self.assertRegex(md, r"(?m)^\| b \| [0-9.]+% \|")

    def test_2_every_message_and_figure(self):
        r = self.res()
        self.assertEqual(sorted(r), ["a", "b"])
        for name, fig in r.items():
            self.assertEqual(fig["accepted"], 3000, name)
            self.assertEqual(fig["delivered"], 3000, name)
            self.assertTrue(fig["dkim"], name)
            self.assertEqual(fig["allowance_per_s"], 400)
            self.assertGreater(fig["goodput_fraction"], 0, name)
            self.assertEqual(sum(p["messages"] for p in fig["providers"].values()), 3000)
            self.assertEqual(fig["replies_421"],
                             sum(p["replies_421"] for p in fig["providers"].values()))

    def test_3_run_a_provokes_nothing(self):
        fig = self.res()["a"]
        self.assertEqual(fig["replies_421"], 0, fig["providers"])
        for name, p in fig["providers"].items():
            self.assertLessEqual(p["concurrent_max"], self.provs[name]["max_conns"], name)

    def test_4_run_b_learns(self):
        fig = self.res()["b"]
        exact = 0
        for name, p in fig["providers"].items():
            self.assertIsNotNone(p.get("learned_rate"), (name, p))
            m = p.get("learned_max_messages_per_connection")
            if m is not None:  # a connection carried enough to be refused
                self.assertEqual(m, self.provs[name]["rate_per_conn"], (name, p))
            if p["connections_rejected"]:  # refused once: learned, never above the cap
                self.assertLessEqual(p["learned_max_connections"],
                                     self.provs[name]["max_conns"], (name, p))
                exact += p["learned_max_connections"] == self.provs[name]["max_conns"]
        self.assertGreaterEqual(exact, 5, fig["providers"])

if __name__ == "__main__":
    st.main()
