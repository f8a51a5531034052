#!/usr/bin/python3
"""Steady load with tempfails and permfails: nothing grows, nothing leaks.

sluice-source injects a fixed number of messages every second (2
recipients each, 4 domains) into sluiced, which delivers them to a
sluice-sink that answers 450 to 20% and 550 to 5% of the recipients. With
a short retry schedule (1s, 2s, 3s), the queue
reaches a steady state within seconds: deferred recipients are retried,
bounced ones produce DSNs (delivered to the sink as well), and arrivals
balance departures. After a warm-up, the daemon's VmRSS, its open file
descriptors, the spool's used bytes and the recipients in the queue are
sampled every two seconds: the second half of the samples must not rise
above the first half (small slack for allocator noise). Then the load
stops, the queue drains (within max_age: nothing can stay longer), and
the accounting log must hold a final record (delivery, bounce or expired)
for every recipient of every acknowledged message, and exactly one
delivery record per recipient the sink accepted. The daemon and the sink
must exit cleanly: in sanitizer builds LeakSanitizer runs at exit, so
this is also the leak check of a short soak.

The short version here runs SLUICE_STEADY_SECONDS (default 60) after a
20 s warm-up, well inside ctest's 300 s; tests/soak/run runs steady() for
minutes on the release build.
"""
import json
import os
import re
import shutil
import subprocess
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sluicetest as st  # noqa: E402

DOMAINS = 4
RCPTS = 2


def vm_rss(pid):
    with open("/proc/%d/status" % pid) as f:
        return int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1)) * 1024


def fd_count(pid):
    return len(os.listdir("/proc/%d/fd" % pid))


def sanitizer_env():
    """The environment for sluiced: ASan's quarantine of freed memory
    (256 MB by default) would look like growth, so keep it small."""
    env = dict(os.environ)
    opts = env.get("ASAN_OPTIONS", "")
    env["ASAN_OPTIONS"] = (opts + ":" if opts else "") + "quarantine_size_mb=16:detect_leaks=1"
    return env


def flat(first, second, ratio, slack):
    """max(second half) <= max(first half) * ratio + slack."""
    return max(second) <= max(first) * ratio + slack


def steady(seconds, warmup=20, rate=100, log=lambda s: None, max_age=60):
    """Run the steady load; returns a report dict (samples, verdicts,
    counts). Raises AssertionError on an unclean exit of the daemon or the
    sink. max_age: seconds, queue.max_age (the drain takes no longer)."""
    tmp = st.make_tmpdir("sluice-steady-")
    sink_log = os.path.join(tmp, "sink.summary")
    sink_err = open(os.path.join(tmp, "sink.stderr"), "w+")
    sink = st._spawn(
        [st.SINK, "-l", "127.0.0.1:0", "--port-file", os.path.join(tmp, "sink.port"),
         "--hostname", "sink.test", "--no-starttls", "--tempfail-pct", "20",
         "--permfail-pct", "5", "--seed", "7", "--summary", sink_log],
        stdout=subprocess.DEVNULL, stderr=sink_err)
    d = None
    try:
        port_file = os.path.join(tmp, "sink.port")

        def read_port():
            try:
                with open(port_file) as f:
                    return int(f.readline())
            except (OSError, ValueError):
                return None
        port = st.wait_for(read_port, 10, what="sink port")
        routes = {"d%d.example" % i: "127.0.0.1:%d" % port for i in range(DOMAINS)}
        routes["source.example"] = "127.0.0.1:%d" % port  # the DSNs
        os.makedirs(os.path.join(tmp, "daemon"))
        d = st.Daemon(tmpdir=os.path.join(tmp, "daemon"), routes=routes, env=sanitizer_env(),
                      extra_conf='queue {\n    retry = "1s,2s,3s";\n    retry_jitter = 0;\n'
                                 '    scan_interval = 200ms;\n    max_age = %ds;\n}\n' % max_age)
        d.start()
        ids = os.path.join(tmp, "acked.ids")
        samples = []
        t0 = time.monotonic()
        next_sample = t0 + warmup
        while time.monotonic() - t0 < warmup + seconds:
            tick = time.monotonic()
            r = st.run([st.SOURCE, "-s", "127.0.0.1:%d" % d.smtp_port, "-n", str(rate), "-S",
                        "2048", "-c", "4", "-r", str(RCPTS), "-d", str(DOMAINS), "-t", "30",
                        "-f", "bench@source.example", "--ids", ids], timeout=60)
            if r.rc != 0:
                raise AssertionError("sluice-source: %s%s" % (r.out, r.err[-2000:]))
            if time.monotonic() >= next_sample:
                q = d.status()["queue"]
                s = {"t": round(time.monotonic() - t0, 1), "rss": vm_rss(d.proc.pid),
                     "fds": fd_count(d.proc.pid), "spool_used": q["spool_used_bytes"],
                     "rcpts": q["recipients"]}
                samples.append(s)
                log("t=%5.1fs rss=%.1f MiB fds=%d spool=%.1f MiB queued rcpts=%d"
                    % (s["t"], s["rss"] / 2**20, s["fds"], s["spool_used"] / 2**20, s["rcpts"]))
                next_sample += 2
            time.sleep(max(0.0, 1.0 - (time.monotonic() - tick)))
        half = len(samples) // 2
        a, b = samples[:half], samples[half:]
        verdict = {
            "rss": flat([s["rss"] for s in a], [s["rss"] for s in b], 1.10, 8 << 20),
            "fds": flat([s["fds"] for s in a], [s["fds"] for s in b], 1.0, 20),
            "spool_used": flat([s["spool_used"] for s in a], [s["spool_used"] for s in b],
                               1.25, 2 << 20),
            "rcpts": flat([s["rcpts"] for s in a], [s["rcpts"] for s in b], 1.5, 200),
        }
        # drain: every recipient gets its final record, at the latest when its
        # message expires (max_age after the last injection)
        st.wait_for(lambda: d.status()["queue"]["messages"] == 0, max_age + 30, interval=0.5,
                    what="the queue to drain")
        with open(ids) as f:
            acked = [l.strip().upper() for l in f if l.strip()]
        final = {}
        kinds = {}
        for rec in d.accounting():
            kinds[rec["type"]] = kinds.get(rec["type"], 0) + 1
            if rec["type"] in ("delivery", "bounce", "expired"):
                final.setdefault(rec["msgid"].upper(), set()).add(rec["recipient"])
        lost = [i for i in acked if len(final.get(i, ())) != RCPTS]
        d.stop()  # exit code 0 and no sanitizer (LeakSanitizer) report
        rc = st._reap(sink)
        sink_err.seek(0)
        err = sink_err.read()
        if rc != 0 or st.sanitizer_errors(err):
            raise AssertionError("sluice-sink exited %s:\n%s" % (rc, err[-3000:]))
        with open(sink_log) as f:
            sink_rcpts = json.load(f)["recipients"]
        return {"seconds": seconds, "rate": rate, "acked": len(acked), "records": kinds,
                "sink_recipients": sink_rcpts,
                "lost": lost, "samples": samples, "flat": verdict,
                "first_half_max": {k: max(s[k] for s in a) for k in verdict},
                "second_half_max": {k: max(s[k] for s in b) for k in verdict}}
    finally:
        if d is not None:
            d.cleanup()
        st._reap(sink)
        sink_err.close()
        if not st.keep_tmp():
            shutil.rmtree(tmp, ignore_errors=True)


class Steady(unittest.TestCase):
    def test_steady_load_stays_flat(self):
        seconds = int(os.environ.get("SLUICE_STEADY_SECONDS", "60"))
        rep = steady(seconds, log=lambda s: print("  " + s, file=sys.stderr))
        print("  report: %s" % json.dumps({k: v for k, v in rep.items() if k != "samples"}),
              file=sys.stderr)
        self.assertGreater(rep["acked"], seconds * rep["rate"] // 5)  # load did flow
        self.assertEqual(rep["lost"], [], "recipients without a final accounting record")
        self.assertGreater(rep["records"].get("transient", 0), 0, "the sink never tempfailed")
        self.assertGreater(rep["records"].get("bounce", 0), 0, "the sink never permfailed")
        # each recipient the sink accepted (DSNs included) has one delivery record
        self.assertEqual(rep["records"].get("delivery", 0), rep["sink_recipients"])
        for k, ok in rep["flat"].items():
            self.assertTrue(ok, "%s grew under steady load: first half max %s, second half max "
                            "%s" % (k, rep["first_half_max"][k], rep["second_half_max"][k]))


if __name__ == "__main__":
    st.main()
