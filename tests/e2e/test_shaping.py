#!/usr/bin/python3
"""End-to-end tests of traffic shaping (delivery/shaping.c, docs/shaping.md).

sluiced delivers to sluice-sink (or, where a source address must be
refused, to a small SMTP server written here) on loopback, with a
delivery.shaping file. Assertions are on what the receiving side saw
(message times, concurrent connections, client_ip) and on the accounting
log's "shaping" records. Every process started here is stopped by pid.
"""
import datetime
import json
import os
import shutil
import socket
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sluicetest as st  # noqa: E402
import test_delivery as td  # noqa: E402


def shaping_daemon(tmp, routes, shaping_text, queue=td.FAST_QUEUE):
    path = os.path.join(tmp, "shaping.conf")
    with open(path, "w") as f:
        f.write(shaping_text)
    return td.make_daemon(routes=routes, delivery='    shaping = "%s";\n' % path, queue=queue)


def inject(d, n, domain, job=None, local="user", pool=None, login=None):
    """n messages, one recipient each, over one SMTP connection (after AUTH
    as login=(user, password) when given)."""
    with d.smtp() as c:
        if login:
            c.ehlo("inject.example")
            c.login(*login)
        for i in range(n):
            hdr = ""
            if job:
                hdr += "X-Sluice-Job: %s\r\n" % job
            if pool:
                hdr += "X-Sluice-Pool: %s\r\n" % pool
            msg = ("From: <s@s.example>\r\nTo: <%s%d@%s>\r\nSubject: m%d\r\n%s\r\nbody %d\r\n"
                   % (local, i, domain, i, hdr, i))
            c.sendmail("s@s.example", ["%s%d@%s" % (local, i, domain)], msg.encode())


def check_not_faster(tc, times, rate, t_start, what):
    """The k-th (from 0) of times not before t_start + (k - 2) / rate: a
    token bucket of `rate`/s with a tolerance of two tokens allows no more,
    however loaded the machine (a stall makes events later, never earlier)."""
    for k, t in enumerate(sorted(times)):
        tc.assertGreaterEqual(t - t_start, (k - 2) / rate,
                              "%s: event %d after %.2fs at %g/s" % (what, k, t - t_start, rate))


def check_rate(tc, times, rate, t_start, conns, what):
    """times: when the sink got each message sent through one throttle of
    `rate` messages/s (GCRA, tolerance two tokens) over at most `conns`
    connections, none injected before t_start. Asserts what the token
    bucket guarantees however loaded the machine is, and what it does when
    the machine keeps up:
      - check_not_faster();
      - no window of w seconds holds more than rate * w + 3 + conns
        (the bucket's burst, plus the transactions in flight when the
        window opens: a stall delays arrivals and bunches at most those);
      - the median gap between arrivals is within 10% of 1 / rate: a stall
        stretches a few gaps and bunches a few, not half of them.
    Returns the median rate (1 / median gap)."""
    times = sorted(times)
    check_not_faster(tc, times, rate, t_start, what)
    for w in (1.0, 2.0, 4.0):
        most = max(sum(1 for u in times if t <= u < t + w) for t in times)
        tc.assertLessEqual(most, rate * w + 3 + conns,
                           "%s: %d messages within %gs at %g/s" % (what, most, w, rate))
    gaps = sorted(b - a for a, b in zip(times, times[1:]))
    median = gaps[len(gaps) // 2]
    tc.assertGreater(median, 0.9 / rate, "%s: median gap %.4fs at %g/s" % (what, median, rate))
    tc.assertLess(median, 1.1 / rate, "%s: median gap %.4fs at %g/s" % (what, median, rate))
    return 1 / median


def acct_time(rec):
    return datetime.datetime.strptime(rec["time"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(
        tzinfo=datetime.timezone.utc).timestamp()


class ListedServer:
    """An SMTP server on 127.0.0.1:0 (a thread) that answers MAIL from the
    source address `listed` with a 421 "listed" reply and accepts mail from
    any other, recording (client_ip, rcpt) of every accepted message."""

    def __init__(self, listed):
        self.listed = listed
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.accepted = []
        self.refused = 0
        self.stopping = False
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self):
        while not self.stopping:
            try:
                c, addr = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            threading.Thread(target=self.session, args=(c, addr[0]), daemon=True).start()

    def session(self, c, ip):
        f = c.makefile("rb")
        try:
            c.sendall(b"220 listed.test ESMTP\r\n")
            rcpts, in_data = [], False
            for line in f:
                if in_data:
                    if line in (b".\r\n", b".\n"):
                        in_data = False
                        with self.lock:
                            self.accepted.extend((ip, r) for r in rcpts)
                        rcpts = []
                        c.sendall(b"250 2.0.0 ok\r\n")
                    continue
                cmd = line.decode("latin-1").strip()
                up = cmd.upper()
                if up.startswith("EHLO") or up.startswith("HELO"):
                    c.sendall(b"250 listed.test\r\n")
                elif up.startswith("MAIL"):
                    if ip == self.listed:
                        with self.lock:
                            self.refused += 1
                        c.sendall(b"421 4.7.1 Service unavailable; client host [%s] listed "
                                  b"at zen.example\r\n" % ip.encode())
                        return
                    c.sendall(b"250 2.1.0 ok\r\n")
                elif up.startswith("RCPT"):
                    rcpts.append(cmd[cmd.find("<") + 1:cmd.rfind(">")])
                    c.sendall(b"250 2.1.5 ok\r\n")
                elif up == "DATA":
                    in_data = True
                    c.sendall(b"354 go\r\n")
                elif up == "RSET":
                    rcpts = []
                    c.sendall(b"250 ok\r\n")
                elif up == "QUIT":
                    c.sendall(b"221 bye\r\n")
                    return
                else:
                    c.sendall(b"502 no\r\n")
        except OSError:
            pass
        finally:
            f.close()
            c.close()

    def stop(self):
        self.stopping = True
        self.thread.join(5)
        self.sock.close()


class ShapingTest(unittest.TestCase):
    def setUp(self):
        self.cleanup = []
        self.tmp = st.make_tmpdir("shaping-")
        self.cleanup.append(lambda: None if st.keep_tmp() else shutil.rmtree(self.tmp, True))

    def tearDown(self):
        # every step runs (processes are stopped by pid even when one step
        # fails); the first failure (a sanitizer report) fails the test
        first = None
        for fn in reversed(self.cleanup):
            try:
                fn()
            except Exception as e:  # noqa: BLE001
                first = first or e
        if first is not None:
            raise first

    def sink(self, *args):
        s = st.Sink(*args, prefix="shp-sink-")
        self.cleanup.append(s.stop)
        return s

    @staticmethod
    def queued(d, domain):
        r = st.sluicectl(d.ctl_socket, "queue", domain, json=True)
        assert r.rc == 0, r
        return r.data["domain"]["queued"]

    def daemon(self, routes, text, **kw):
        d = shaping_daemon(self.tmp, routes, text, **kw)
        d.start()
        self.cleanup.append(d.cleanup if hasattr(d, "cleanup") else (lambda: None))
        # a stop that is not clean (exit code, a sanitizer's report) fails the test
        self.cleanup.append(lambda: d.stop() if d.running() else None)
        return d

    def test_message_rate_holds(self):
        """message_rate = 20/s: never faster, smooth, and 20/s when the
        machine keeps up (check_rate)."""
        sink = self.sink()
        d = self.daemon({"rate.test": "127.0.0.1:%d" % sink.port},
                        'providers { r { domains = ["rate.test"]; message_rate = "20/s";\n'
                        '  max_connections = 2; } }\n')
        t0 = time.time()
        inject(d, 100, "rate.test")
        msgs = sink.wait_messages(100, timeout=60)
        check_rate(self, [m[0]["time"] for m in msgs], 20, t0, 2, "message_rate 20/s")

    def test_connection_cap_holds(self):
        """max_connections = 2 with slow replies that would need more."""
        summary = os.path.join(self.tmp, "sink-summary.json")
        sink = self.sink("--slow-ms", "300", "--summary", summary)
        d = self.daemon({"conn.test": "127.0.0.1:%d" % sink.port},
                        'providers { c { domains = ["conn.test"]; max_connections = 2; } }\n')
        inject(d, 24, "conn.test", local="slow+")  # slow+N: the sink's slow fault
        sink.wait_messages(24, timeout=60)
        d.stop()
        sink.stop()
        with open(summary) as f:
            s = json.load(f)
        self.assertEqual(s["messages"], 24)
        # the premise: the replies were slow (the local part must be
        # "slow" or "slow+tag" for the sink), so 24 messages over 2
        # connections took at least 11 x 300 ms
        self.assertGreaterEqual(s["last_message_time"] - s["first_message_time"], 11 * 0.3, s)
        self.assertLessEqual(s["concurrent_max"], 2, s)
        self.assertEqual(s["concurrent_max"], 2, s)  # the cap is used, not just respected

    def test_backoff_then_gradual_recovery(self):
        """[TSS04] replies put the queue in backoff: the sink sees the
        lower rate, and the rate climbs back in steps of 1.5x."""
        profile = os.path.join(self.tmp, "profile.json")
        with open(profile, "w") as f:
            json.dump({"providers": [{
                "name": "y", "domains": ["y.test"], "rate": 12,
                "rate_text": "421 4.7.0 [TSS04] Messages from 127.0.0.1 temporarily deferred "
                             "due to unexpected volume or user complaints"}]}, f)
        sink = self.sink("--profile", profile)
        d = self.daemon(
            {"y.test": "127.0.0.1:%d" % sink.port},
            'providers { y {\n'
            '  domains = ["y.test"]; message_rate = "40/s"; max_connections = 4;\n'
            '  backoff { max_connections = 1; message_rate = "4/s"; }\n'
            '  recover_after = 8; recover_factor = 1.5;\n'
            '  rule { match = "\\\\[TSS04\\\\]"; action = backoff; }\n'
            '} }\n')
        inject(d, 120, "y.test")
        msgs = sink.wait_messages(120, timeout=90)
        d.wait_queue(0)  # every outcome recorded
        recs = [r for r in d.accounting() if r.get("type") == "shaping"]
        backoff = [r for r in recs if r["event"] == "backoff"]
        self.assertTrue(backoff, recs)
        self.assertEqual(backoff[0]["provider"], "y")
        self.assertAlmostEqual(backoff[0]["rate"], 4.0, delta=0.01)
        self.assertEqual(backoff[0]["max_connections"], 1)
        self.assertIn("TSS04", backoff[0]["response"])
        # recovery: each step at most 1.5x the one before, never straight to 40/s
        after = [r for r in recs if acct_time(r) >= acct_time(backoff[0])]
        steps = [r for r in after if r["event"] in ("recover-step", "normal", "backoff")]
        self.assertGreaterEqual(len(steps), 2, steps)
        self.assertEqual(steps[1]["event"], "recover-step", steps)
        prev = 4.0
        for r in steps[1:]:
            if r["event"] == "backoff":
                prev = 4.0
                continue
            self.assertLessEqual(r["rate"], prev * 1.5 + 0.01, steps)
            prev = r["rate"]
        self.assertAlmostEqual(steps[1]["rate"], 6.0, delta=0.01)
        # the sink saw the lower rate right after the backoff: at 4/s, in 2 s
        # at most 8 + the burst (3) + what was in flight on the 4 connections
        # of the normal limits (at 40/s without backoff: 80)
        t0 = acct_time(backoff[0])
        times = sorted(m[0]["time"] for m in msgs)
        in_2s = sum(1 for t in times if t0 <= t < t0 + 2.0)
        self.assertLessEqual(in_2s, 4 * 2 + 3 + 4, "%d messages in 2 s after backoff" % in_2s)
        # the operator sees the provider, its queue and its backoff history
        prov = st.sluicectl(d.ctl_socket, "providers", json=True)
        self.assertEqual(prov.rc, 0, prov.err)
        y = [p for p in prov.data["providers"] if p["provider"] == "y"]
        self.assertEqual(len(y), 1, prov.data)
        self.assertGreaterEqual(y[0]["queues"][0]["backoffs"], 1)
        self.assertGreaterEqual(y[0]["queues"][0]["delivered"], 120)
        human = st.sluicectl(d.ctl_socket, "providers")
        self.assertEqual(human.rc, 0, human.err)
        self.assertRegex(human.out, r"(?m)^y\s+\S+\s+\S+\s+(normal|backoff|recovering)\s")

    def test_disabled_source_skipped(self):
        """A source listed by the provider is disabled for it; the other
        address of the pool takes the mail (client_ip at the server)."""
        srv = ListedServer("127.0.0.2")
        self.cleanup.append(srv.stop)
        d = self.daemon(
            {"listed.test": "127.0.0.1:%d" % srv.port},
            'virtual_mtas {\n'
            '  a { source = "127.0.0.2"; ehlo = "a.sluice.test"; }\n'
            '  b { source = "127.0.0.3"; ehlo = "b.sluice.test"; }\n'
            '}\n'
            'pools { main { members = [a, b]; } }\n'
            'default_pool = main;\n'
            'providers { l {\n'
            '  domains = ["listed.test"];\n'
            '  rule { match = "^4\\\\d\\\\d .*listed"; action = disable-source; duration = 10m; }\n'
            '} }\n')
        inject(d, 10, "listed.test")
        st.wait_for(lambda: len(srv.accepted) >= 10, 60, what="10 messages accepted")
        self.assertTrue(all(ip == "127.0.0.3" for ip, _ in srv.accepted), srv.accepted)
        self.assertGreaterEqual(srv.refused, 1)
        recs = [r for r in d.accounting()
                if r.get("type") == "shaping" and r["event"] == "disable-source"]
        self.assertEqual(len(recs), 1, recs)
        self.assertEqual(recs[0]["vmta"], "a")
        self.assertEqual(recs[0]["source_ip"], "127.0.0.2")

    def test_small_job_not_starved_by_bulk(self):
        """A transactional job on a throttled provider goes out next to a
        bulk job, not after it."""
        sink = self.sink()
        d = self.daemon({"f.test": "127.0.0.1:%d" % sink.port},
                        'providers { f { domains = ["f.test"]; message_rate = "5/s"; } }\n')
        inject(d, 40, "f.test", job="bulk", local="bulk")
        sink.wait_messages(2, timeout=30)
        inject(d, 1, "f.test", job="tx", local="tx")
        t_sent = time.time()  # committed: the daemon has it
        tx = st.wait_for(lambda: [m for m in sink.messages() if m[0]["rcpts"][0].startswith("tx")],
                         30, what="the transactional message")[0][0]["time"]
        bulk = [m[0]["time"] for m in sink.messages() if m[0]["rcpts"][0].startswith("bulk")]
        # ordering, not wall time (a loaded machine slows everything): at
        # 5/s the bulk job needs 8 s; the tx message went out next to it,
        # with most of the bulk job still waiting
        between = sum(1 for t in bulk if t_sent < t < tx)
        self.assertLessEqual(between, 3, "%d bulk messages went first" % between)
        sink.wait_messages(41, timeout=60)
        after = sum(1 for m in sink.messages()
                    if m[0]["rcpts"][0].startswith("bulk") and m[0]["time"] > tx)
        self.assertGreater(after, 15, "only %d bulk messages after the tx one" % after)

    def test_reload_changes_rate_without_restart(self):
        """reload with message_rate 5/s -> 20/s: the sink sees the higher
        rate on the same connection of the same daemon; a broken providers
        file is refused with file:line and the 20/s stays in force."""
        sink = self.sink()
        conf = 'providers { r { domains = ["reload.test"]; message_rate = "%s"; ' \
               'max_connections = 1; } }\n'
        d = self.daemon({"reload.test": "127.0.0.1:%d" % sink.port}, conf % "5/s")
        pid = d.proc.pid
        t0 = time.time()
        inject(d, 70, "reload.test")
        sink.wait_messages(12, timeout=30)
        path = os.path.join(self.tmp, "shaping.conf")
        with open(path, "w") as f:
            f.write(conf % "20/s")
        t_reload = time.time()
        r = st.sluicectl(d.ctl_socket, "reload", json=True)
        self.assertEqual(r.rc, 0, r.err)
        self.assertIn("delivery.shaping", r.data["applied"])
        t_answered = time.time()
        msgs = sink.wait_messages(70, timeout=60)
        times = sorted(m[0]["time"] for m in msgs)
        before = [t for t in times if t < t_reload]
        # the reload is in force once answered; the message then on the
        # wire (one connection) may still have taken a 5/s token
        after = [t for t in times if t > t_answered][1:]
        self.assertGreaterEqual(len(before), 12)
        self.assertGreaterEqual(len(after), 40)
        check_rate(self, before, 5, t0, 1, "5/s before the reload")
        check_rate(self, after, 20, t_answered, 1, "20/s after the reload")
        # no restart, no dropped connection: one daemon, one connection
        self.assertEqual(d.proc.pid, pid)
        self.assertIsNone(d.proc.poll())
        conns = {m[0]["conn"] for m in msgs}
        self.assertEqual(len(conns), 1, "connections used: %s" % conns)
        # a broken file: refused with file:line, the running shaping stays
        with open(path, "w") as f:
            f.write('providers { r { domains = ["reload.test"];\n  message_rate = "fast"; } }\n')
        r = st.sluicectl(d.ctl_socket, "reload")
        self.assertNotEqual(r.rc, 0, r.out)
        self.assertIn("refused", r.err)
        self.assertIn("%s:2" % path, r.err)
        prov = st.sluicectl(d.ctl_socket, "providers", json=True)
        q = [p for p in prov.data["providers"] if p["provider"] == "r"][0]["queues"][0]
        self.assertAlmostEqual(q["rate"], 20.0, delta=0.1)
        self.assertEqual(d.proc.pid, pid)

    def test_reload_during_concurrent_delivery(self):
        """Reloads while both delivery threads open connections (one
        message each) to a configured provider in backoff and recovery and
        to domains of their own (the defaults): every message arrives
        exactly once, and the daemon's stop is clean (under the TSan build:
        no race between a reload and the threads reading the limits)."""
        # The sink answers [RL] to a quarter of the provider's recipients
        # whatever the pace (its rate limit alone is never reached when a
        # loaded machine delivers slower than 6/s: no backoff, seen here).
        profile = os.path.join(self.tmp, "profile.json")
        with open(profile, "w") as f:
            json.dump({"providers": [{
                "name": "rl", "domains": ["*.rl.test"], "rate": 6,
                "rate_text": "421 4.7.0 [RL] rate limited, try again later",
                "tempfail_pct": 25,
                "tempfail_text": "421 4.7.0 [RL] rate limited, try again later"}]}, f)
        sink = self.sink("--profile", profile, "--seed", "7")
        conf = ('global { max_connections = %d; }\n'
                'defaults { max_messages_per_connection = 1; recover_after = 2;\n'
                '  recover_factor = 2; backoff { max_connections = %d; message_rate = "%s";\n'
                '  retry = 1s; } }\n'
                'providers { rl { domains = ["*.rl.test"]; message_rate = "%s";\n'
                '  max_connections = %d; total_max_connections = %d;\n'
                '  rule { match = "\\\\[RL\\\\]"; action = backoff; } } }\n')
        confs = [conf % (50, 2, "10/s", "40/s", 4, 8), conf % (40, 1, "12/s", "30/s", 3, 6)]
        domains = ["a.rl.test", "b.rl.test", "own1.test", "own2.test"]
        d = self.daemon({dom: "127.0.0.1:%d" % sink.port for dom in domains}, confs[0])
        for dom in domains:
            inject(d, 15, dom, local=dom.split(".")[0])
        path = os.path.join(self.tmp, "shaping.conf")
        reloads = 0
        deadline = time.time() + 120
        while len(sink.messages()) < 60 and time.time() < deadline:
            reloads += 1
            with open(path, "w") as f:
                f.write(confs[reloads % 2])
            r = st.sluicectl(d.ctl_socket, "reload")
            self.assertEqual(r.rc, 0, r.err)
            time.sleep(0.2)
        msgs = sink.wait_messages(60, timeout=60)
        self.assertGreaterEqual(reloads, 3)
        rcpts = sorted(m[0]["rcpts"][0] for m in msgs)
        self.assertEqual(rcpts, sorted("%s%d@%s" % (dom.split(".")[0], i, dom)
                                       for dom in domains for i in range(15)))
        # the configured provider went into backoff (its queue's limits were
        # read by the recovery steps while reloads changed them)
        recs = [r for r in d.accounting() if r.get("type") == "shaping"]
        self.assertTrue([r for r in recs if r["event"] == "backoff" and r["provider"] == "rl"],
                        recs)
        d.stop()

    def test_suspend_resume_provider(self):
        """suspend --provider: that provider's mail stops at the sink while
        another provider's flows; resume: it is delivered."""
        sink = self.sink()
        d = self.daemon({"sa.test": "127.0.0.1:%d" % sink.port,
                         "sb.test": "127.0.0.1:%d" % sink.port},
                        'providers {\n  pa { domains = ["sa.test"]; }\n'
                        '  pb { domains = ["sb.test"]; }\n}\n')
        r = st.sluicectl(d.ctl_socket, "suspend", "--provider", "pa")
        self.assertEqual(r.rc, 0, r.err)
        self.assertIn("provider pa suspended", r.out)
        inject(d, 5, "sa.test", local="a")
        inject(d, 5, "sb.test", local="b")
        sink.wait_messages(5, timeout=30)
        time.sleep(1.5)
        rcpts = [m[0]["rcpts"][0] for m in sink.messages()]
        self.assertEqual(sorted(rcpts), ["b%d@sb.test" % i for i in range(5)])
        prov = st.sluicectl(d.ctl_socket, "providers", json=True)
        pa = [p for p in prov.data["providers"] if p["provider"] == "pa"]
        self.assertEqual(pa[0]["suspended_by"], "operator", prov.data)
        self.assertEqual((pa[0]["suspended"], pa[0]["suspended_until"]), (True, None))  # until resumed
        human = st.sluicectl(d.ctl_socket, "providers")
        self.assertRegex(human.out, r"(?m)^pa\s+\S+\s+\S+\s+SUSPENDED\s")
        r = st.sluicectl(d.ctl_socket, "resume", "--provider", "pa")
        self.assertEqual(r.rc, 0, r.err)
        sink.wait_messages(10, timeout=30)
        rcpts = sorted(m[0]["rcpts"][0] for m in sink.messages())
        self.assertEqual(rcpts, sorted(["a%d@sa.test" % i for i in range(5)] +
                                       ["b%d@sb.test" % i for i in range(5)]))
        prov = st.sluicectl(d.ctl_socket, "providers", json=True)
        pa = [p for p in prov.data["providers"] if p["provider"] == "pa"]
        self.assertIsNone(pa[0]["suspended_by"])
        # unknown names are refused
        r = st.sluicectl(d.ctl_socket, "suspend", "--provider", "nosuch")
        self.assertNotEqual(r.rc, 0)
        self.assertIn("nosuch", r.err)
        r = st.sluicectl(d.ctl_socket, "suspend", "--vmta", "nosuch")
        self.assertNotEqual(r.rc, 0)

    def test_suspend_vmta(self):
        """suspend --vmta a: the pool sends from b only; resume: a again."""
        sink = self.sink()
        d = self.daemon(
            {"v.test": "127.0.0.1:%d" % sink.port},
            'virtual_mtas {\n'
            '  a { source = "127.0.0.2"; }\n'
            '  b { source = "127.0.0.3"; }\n'
            '}\n'
            'pools { main { members = [a, b]; } }\n'
            'default_pool = main;\n'
            'providers { v { domains = ["v.test"]; } }\n')
        r = st.sluicectl(d.ctl_socket, "suspend", "--vmta", "a", "--for", "10m")
        self.assertEqual(r.rc, 0, r.err)
        inject(d, 8, "v.test")
        msgs = sink.wait_messages(8, timeout=30)
        self.assertEqual({m[0]["client_ip"] for m in msgs}, {"127.0.0.3"})
        prov = st.sluicectl(d.ctl_socket, "providers", json=True)
        vm = {v["name"]: v for v in prov.data["virtual_mtas"]}
        self.assertGreater(st.unix_time(vm["a"]["suspended_until"]) - time.time(), 500)
        self.assertEqual((vm["b"]["suspended"], vm["b"]["suspended_until"]), (False, None))
        # every source of the pool suspended: the mail waits, then goes
        r = st.sluicectl(d.ctl_socket, "suspend", "--vmta", "b")
        self.assertEqual(r.rc, 0, r.err)
        inject(d, 4, "v.test", local="late")
        # Nothing can flow, so nothing can show the order of events: an
        # absence window of a second (the backlog is re-examined every
        # half second at most), after which the four must still be queued.
        time.sleep(1.0)
        self.assertEqual(len(sink.messages()), 8)
        self.assertEqual(self.queued(d, "v.test"), 4)
        t_resume = time.time()
        r = st.sluicectl(d.ctl_socket, "resume", "--vmta", "a")
        self.assertEqual(r.rc, 0, r.err)
        msgs = sink.wait_messages(12, timeout=30)
        late = [m[0] for m in msgs if m[0]["rcpts"][0].startswith("late")]
        self.assertEqual({m["client_ip"] for m in late}, {"127.0.0.2"})
        self.assertGreater(min(m["time"] for m in late), t_resume)


if __name__ == "__main__":
    st.main()
