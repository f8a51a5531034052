#!/usr/bin/python3
"""Crash harness: every message acknowledged with 250 is delivered, whatever
happens to the daemon or to the receiving server.

Load flows sluice-source -> sluiced -> sluice-sink (--store), all on
loopback. sluice-source --ids records the queue id of every 250; the sink
stores each message, whose first Received header (added by sluiced) names
the queue id ("(sluice) with ESMTP id <16 hex>") and whose .json names the
recipients. The harness then kills things at random moments:

  * the daemon (SIGKILL) in the middle of the load, restarted each time;
    the spool must pass `sluiced --check-spool` after every kill;
  * the sink (SIGKILL), restarted on the same port;
  * the sink's listener gone for a while (mail deferred, then delivered,
    with a short retry schedule).

At the end the queue drains and every acknowledged message must have
reached the sink with all its recipients (at least once); duplicates
(at-least-once delivery after a crash) are counted and reported, not
failed. The short version here makes 3 daemon kills; tests/soak/run uses
the same Harness for the long version (>= 20 kills).

The moments of the kills come from a random generator whose seed is
printed first ("crash harness seed N"); SLUICE_CRASH_SEED=N replays them.
The sink keeps its port (free_port(): held for the whole file) across its
restarts, so no other process can take it while it is down.
"""
import glob
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sluicetest as st  # noqa: E402

RECEIVED_ID = re.compile(rb"\(sluice\) with \S+ id ([0-9A-Fa-f]{16})")


class Sink:
    """sluice-sink --store on a loopback port reserved for it (free_port()),
    restartable on the same port. Each start stores into a new directory
    (store.<n>): the sink numbers its files from 1 again after a restart."""

    def __init__(self, dirname, port=None):
        self.dir = dirname
        self.starts = 0
        self.port = port or st.free_port()
        self.proc = None
        self.errf = open(os.path.join(dirname, "sink.stderr"), "ab")

    def start(self):
        self.starts += 1
        store = os.path.join(self.dir, "store.%d" % self.starts)
        cmd = [st.SINK, "-l", "127.0.0.1:%d" % self.port, "--store", store,
               "--no-starttls", "--hostname", "sink.test"]
        self.proc = st._spawn(cmd, stdout=subprocess.DEVNULL, stderr=self.errf)
        st.wait_for_port("127.0.0.1", self.port, 10, self.proc)

    def kill(self, sig=signal.SIGKILL):
        """Stop the sink with sig (SIGKILL: a crash); returns its exit code."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        st._children.discard(self.proc)
        return self.proc.returncode if self.proc is not None else None

    def stop(self):
        """SIGTERM; AssertionError unless the sink exited 0."""
        rc = self.kill(signal.SIGTERM)
        if rc != 0:
            raise AssertionError("sluice-sink exited %s" % rc)

    def close(self):
        self.kill(signal.SIGTERM)
        self.errf.close()
        st.release_port(self.port)

    def deliveries(self):
        """[(queue id or None, [rcpts])] of every completely stored message."""
        out = []
        for j in glob.glob(os.path.join(self.dir, "store.*", "*.json")):
            try:
                with open(j) as f:
                    env = json.load(f)
                with open(j[:-5] + ".eml", "rb") as f:
                    head = f.read(4096)
            except (ValueError, OSError):
                continue  # being written, or torn by a kill
            m = RECEIVED_ID.search(head)
            out.append((m.group(1).decode().upper() if m else None, env.get("rcpts", [])))
        return out


class Harness:
    """sluice-source -> sluiced -> sluice-sink with faults; see the module
    docstring. log: a function taking one line of progress text."""

    def __init__(self, rcpts=2, domains=4, size=1024, conns=8, seed=None, log=None):
        self.dir = st.make_tmpdir("sluice-crash-")
        self.rcpts, self.domains, self.size, self.conns = rcpts, domains, size, conns
        self.rng = random.Random(seed)
        self.log = log or (lambda s: None)
        self.ids_file = os.path.join(self.dir, "acked.ids")
        self.sink = Sink(self.dir)
        routes = {"d%d.example" % i: "127.0.0.1:%d" % self.sink.port for i in range(domains)}
        routes["source.example"] = "127.0.0.1:%d" % self.sink.port
        os.makedirs(os.path.join(self.dir, "daemon"))
        self.d = st.Daemon(tmpdir=os.path.join(self.dir, "daemon"), routes=routes)
        self.sink.start()
        self.counts = {"daemon_kills": 0, "sink_kills": 0, "sink_outages": 0,
                       "spool_checks": 0, "rounds": 0}

    def write_conf(self):
        os.makedirs(self.d.dir, exist_ok=True)
        text = self.d.default_conf("info").replace(
            "delivery {\n", "delivery {\n    dead_after_failures = 3;\n    dead_time = 2s;\n"
            "    connect_timeout = 5s;\n    idle_time = 1s;\n", 1)
        text += ('queue {\n    retry = "1s,1s,2s";\n    retry_jitter = 0;\n'
                 '    scan_interval = 200ms;\n}\n')
        with open(self.d.conf_path, "w") as f:
            f.write(text)

    def start(self):
        self.write_conf()
        self.d.start()
        return self

    # -- load

    def source(self, n, seconds=60):
        """Start sluice-source in the background; returns the Popen."""
        return subprocess.Popen(
            [st.SOURCE, "-s", "127.0.0.1:%d" % self.d.smtp_port, "-n", str(n), "-S",
             str(self.size), "-c", str(self.conns), "-r", str(self.rcpts), "-d",
             str(self.domains), "-t", str(seconds), "-f", "bench@source.example",
             "--ids", self.ids_file], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def acked(self):
        try:
            with open(self.ids_file) as f:
                return [l.strip().upper() for l in f if l.strip()]
        except FileNotFoundError:
            return []

    # -- faults

    def check_spool(self):
        r = st.run([st.SLUICED, "-c", self.d.conf_path, "--check-spool"], timeout=120)
        self.counts["spool_checks"] += 1
        if r.rc != 0:
            raise AssertionError("spool check failed after a kill:\n%s%s" % (r.out, r.err))

    def round_daemon_kill(self, n=3000):
        """Load, SIGKILL the daemon at a random moment, check the spool,
        restart."""
        before = len(self.acked())
        src = self.source(n)
        delay = self.rng.uniform(0.3, 2.0)
        time.sleep(delay)
        self.d.kill9()
        self.counts["daemon_kills"] += 1
        src.wait(timeout=120)
        self.check_spool()
        self.d.start()
        self.counts["rounds"] += 1
        self.log("daemon kill %d after %.2fs: %d acknowledged this round"
                 % (self.counts["daemon_kills"], delay, len(self.acked()) - before))

    def round_sink_kill(self, n=2000):
        """Load, SIGKILL the sink at a random moment (mid-delivery), restart
        it on the same port."""
        src = self.source(n)
        time.sleep(self.rng.uniform(0.3, 1.5))
        self.sink.kill()
        self.counts["sink_kills"] += 1
        time.sleep(self.rng.uniform(0.1, 1.0))
        self.sink.start()
        src.wait(timeout=120)
        self.counts["rounds"] += 1
        self.log("sink kill %d" % self.counts["sink_kills"])

    def round_sink_outage(self, n=1000, seconds=3.0):
        """The sink's listener is gone for a while: mail is deferred, then
        delivered once it is back. Returns the transient records seen."""
        rc = self.sink.kill(signal.SIGTERM)
        if rc != 0:
            raise AssertionError("sluice-sink exited %s on SIGTERM" % rc)
        self.counts["sink_outages"] += 1
        src = self.source(n)
        src.wait(timeout=120)
        deadline = time.monotonic() + seconds
        transient = st.wait_for(
            lambda: [r for r in self.d.accounting() if r.get("type") == "transient"],
            seconds + 10, what="deferrals while the sink is down")
        time.sleep(max(0.0, deadline - time.monotonic()))
        self.sink.start()
        self.counts["rounds"] += 1
        self.log("sink outage %d: %d deferrals" % (self.counts["sink_outages"], len(transient)))
        return transient

    # -- the verdict

    def drain(self, timeout=120):
        st.wait_for(lambda: self.d.status()["queue"]["messages"] == 0, timeout, interval=0.5,
                    what="the queue to drain")

    def verify(self):
        """Compare what was acknowledged with what the sink stored. Returns a
        report dict; 'missing_msgs' and 'missing_rcpts' must be empty."""
        acked = self.acked()
        got = {}
        for qid, rcpts in self.sink.deliveries():
            if qid is not None:
                got.setdefault(qid, []).extend(rcpts)
        missing_msgs = [i for i in acked if i not in got]
        short = {i: sorted(set(got[i])) for i in acked
                 if i in got and len(set(got[i])) != self.rcpts}
        pairs = sum(len(v) for v in got.values())
        unique = sum(len(set(v)) for v in got.values())
        return {"acked": len(acked), "acked_unique": len(set(acked)),
                "delivered_msgs": len(got), "delivered_rcpts": pairs,
                "duplicates": pairs - unique, "missing_msgs": missing_msgs,
                "missing_rcpts": short, **self.counts}

    def stop(self):
        """Stop the daemon and the sink (clean exits required) and check
        the spool."""
        self.d.stop()
        self.check_spool()
        self.sink.stop()

    def cleanup(self):
        self.d.cleanup()
        self.sink.close()
        if not st.keep_tmp():
            shutil.rmtree(self.dir, ignore_errors=True)


class Crash(unittest.TestCase):
    def run_harness(self, body):
        seed = int(os.environ.get("SLUICE_CRASH_SEED") or time.time())
        print("  crash harness seed %d (SLUICE_CRASH_SEED=%d replays the kill moments)"
              % (seed, seed), file=sys.stderr)
        h = Harness(seed=seed, log=lambda s: print("  " + s, file=sys.stderr))
        try:
            h.start()
            body(h)
            h.drain()
            rep = h.verify()
            h.stop()
            print("  report: %s" % json.dumps({k: v for k, v in rep.items()
                                               if not k.startswith("missing")}), file=sys.stderr)
            self.assertGreater(rep["acked"], 0)
            self.assertEqual(rep["acked"], rep["acked_unique"], "a queue id acknowledged twice")
            self.assertEqual(rep["missing_msgs"], [], "%d acknowledged messages never reached "
                             "the sink" % len(rep["missing_msgs"]))
            self.assertEqual(rep["missing_rcpts"], {}, "recipients lost")
            return rep
        finally:
            h.cleanup()

    def test_daemon_killed_three_times(self):
        def body(h):
            for _ in range(3):
                h.round_daemon_kill()
        rep = self.run_harness(body)
        self.assertEqual(rep["daemon_kills"], 3)

    def test_sink_killed_and_restarted(self):
        def body(h):
            for _ in range(2):
                h.round_sink_kill()
        self.run_harness(body)

    def test_sink_listener_gone_for_a_while(self):
        def body(h):
            recs = h.round_sink_outage(seconds=3.0)
            # the port is held and nothing listens: refused, deferred 4.4.1
            self.assertEqual({r["status"] for r in recs}, {"4.4.1"}, recs[:3])
        self.run_harness(body)


if __name__ == "__main__":
    st.main()
