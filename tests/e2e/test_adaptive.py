#!/usr/bin/python3
"""Adaptive mode (docs/shaping.md, "Adaptive mode"), end to end: sluiced
with delivery.adaptive = true and no shaping file -> a receiver that
enforces a provider's limits it does not publish (concurrent connections,
messages per connection, messages per second) and answers in a provider's
capacity words when they are passed:

- sluice learns the three limits (sluicectl providers --json), delivers
  everything and provokes few tempfails;
- the learned values are kept in the spool and used again after a restart
  (no slow start, no refusal to learn them again);
- a reputation reply ([TSS04]) still puts the queue in backoff, as the
  rules say, and teaches adaptive mode nothing.

LimitPeer (below) is the receiver: asyncio, our own, with the counters a
user would check (each refusal with its kind and time, each accepted
message with its time and connection).
"""
import asyncio
import collections
import json
import os
import shutil
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sluicetest as st  # noqa: E402
from test_delivery import FAST_QUEUE  # noqa: E402
from test_shaping import inject  # noqa: E402

CONN_TEXT = "421 4.7.0 Too many concurrent connections from your IP, try again later"
MSGS_TEXT = "421 4.7.0 Too many messages on this connection, closing"
RATE_TEXT = "421 4.7.0 Rate limit exceeded for your IP, try again later"
TSS04_TEXT = ("421 4.7.0 [TSS04] Messages from 127.0.0.1 temporarily deferred due to "
              "unexpected volume or user complaints")


class LimitPeer:
    """An SMTP receiver with a provider's limits: max_conns concurrent
    connections (the next one gets CONN_TEXT at the greeting), max_msgs
    messages per connection (the next MAIL gets MSGS_TEXT), rate messages
    in any one second (a sliding window: a MAIL beyond gets RATE_TEXT; with
    windows fixed to the clock's seconds a doubled rate got through whole
    when its second straddled two windows, and whether slow start then
    overshot to 80/s or stopped at 40/s was the phase's luck: 6 or 30
    refusals of 600 in test_learns_rate, the fixed-window case is
    bench/run-envelope's sink);
    each refusal closes the connection, as the big providers do. tss04: the
    first that many MAILs get TSS04_TEXT instead. delay: seconds before the
    reply to the final dot (a connection carries at most 1/delay messages
    a second: the connections, not the rate, are then what limits the
    throughput). Thread-safe counters:
    accepted [(time, conn)], refused [(time, kind)], max_open."""

    def __init__(self, max_conns=0, max_msgs=0, rate=0, tss04=0, delay=0.0):
        self.max_conns, self.max_msgs, self.rate, self.tss04 = max_conns, max_msgs, rate, tss04
        self.delay = delay
        self.accepted, self.refused = [], []
        self.open = self.max_open = self.nconn = 0
        self.window = collections.deque()  # times of the MAILs accepted in the last second
        self.lock = threading.Lock()
        self.port = st.free_port()
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(ready,), daemon=True)
        self.thread.start()
        if not ready.wait(10):
            raise RuntimeError("LimitPeer did not start")

    def _run(self, ready):
        asyncio.set_event_loop(self.loop)
        self.server = self.loop.run_until_complete(
            asyncio.start_server(self._conn, "127.0.0.1", self.port))
        ready.set()
        self.loop.run_forever()

    def stop(self):
        def close():
            self.server.close()
            self.loop.stop()
        self.loop.call_soon_threadsafe(close)
        self.thread.join(10)
        st.release_port(self.port)

    def _refuse(self, w, kind, text):
        with self.lock:
            self.refused.append((time.time(), kind))
        w.write(text.encode() + b"\r\n")

    async def _conn(self, r, w):
        with self.lock:
            self.nconn += 1
            conn = self.nconn
            self.open += 1
            over = self.max_conns and self.open > self.max_conns
            if not over:
                self.max_open = max(self.max_open, self.open)
        try:
            if over:
                self._refuse(w, "connections", CONN_TEXT)
                return
            w.write(b"220 limits.test ESMTP\r\n")
            msgs = 0
            while True:
                line = await asyncio.wait_for(r.readline(), 60)
                if not line:
                    return
                cmd = line[:4].upper()
                if cmd in (b"EHLO", b"HELO"):
                    w.write(b"250-limits.test\r\n250 8BITMIME\r\n")
                elif cmd == b"MAIL":
                    now = time.time()
                    with self.lock:
                        kind = None
                        if self.tss04 > 0:
                            self.tss04 -= 1
                            kind = "tss04"
                        elif self.max_msgs and msgs >= self.max_msgs:
                            kind = "messages"
                        elif self.rate:
                            while self.window and self.window[0] <= now - 1.0:
                                self.window.popleft()
                            if len(self.window) >= self.rate:
                                kind = "rate"
                            else:
                                self.window.append(now)
                    if kind:
                        self._refuse(w, kind, {"tss04": TSS04_TEXT, "messages": MSGS_TEXT,
                                               "rate": RATE_TEXT}[kind])
                        return
                    w.write(b"250 2.1.0 Ok\r\n")
                elif cmd == b"RCPT":
                    w.write(b"250 2.1.5 Ok\r\n")
                elif cmd == b"DATA":
                    w.write(b"354 go ahead\r\n")
                    while True:
                        l2 = await asyncio.wait_for(r.readline(), 60)
                        if not l2 or l2 == b".\r\n":
                            break
                    if not l2:
                        return
                    msgs += 1
                    if self.delay:
                        await asyncio.sleep(self.delay)
                    with self.lock:
                        self.accepted.append((time.time(), conn))
                    w.write(b"250 2.0.0 Ok: queued\r\n")
                elif cmd == b"QUIT":
                    w.write(b"221 2.0.0 Bye\r\n")
                    return
                else:  # RSET, NOOP
                    w.write(b"250 2.0.0 Ok\r\n")
                await w.drain()
        except (asyncio.TimeoutError, ConnectionError):
            pass
        finally:
            with self.lock:
                self.open -= 1
            try:
                await w.drain()
                w.close()
            except ConnectionError:
                pass

    def counts(self):
        with self.lock:
            kinds = {}
            for _, k in self.refused:
                kinds[k] = kinds.get(k, 0) + 1
            return len(self.accepted), kinds


class Adaptive(unittest.TestCase):

    def setUp(self):
        self.tmp = st.make_tmpdir("adaptive-")
        if not st.keep_tmp():
            self.addCleanup(shutil.rmtree, self.tmp, True)

    def peer(self, **kw):
        p = LimitPeer(**kw)
        self.addCleanup(p.stop)
        return p

    def daemon(self, peer, tmpdir=None):
        d = st.Daemon(routes={"adapt.test": "127.0.0.1:%d" % peer.port,
                              "adapt2.test": "127.0.0.1:%d" % peer.port}, tmpdir=tmpdir)
        # no provider matches: the domains the peer serves roll up into one
        # provider named after the route's host and port
        self.pname = "127.0.0.1:%d" % peer.port
        text = d.default_conf("info").replace(
            "delivery {\n", "delivery {\n    adaptive = true;\n", 1) + FAST_QUEUE
        with open(d.conf_path, "w") as f:
            f.write(text)
        self.addCleanup(d.close)
        return d

    def queue_of(self, d):
        """The peer's provider's queue in sluicectl providers --json."""
        r = d.ctl("providers", json=True)
        self.assertEqual(r.rc, 0, r.out + r.err)
        for p in r.data["providers"]:
            if p["provider"] == self.pname:
                return p["queues"][0]
        self.fail("no provider %s in %s" % (self.pname, r.data))

    def run_batch(self, d, n, domains=("adapt.test",)):
        """n messages to the domains (the peer's), held while injected so
        that sluice sees the whole backlog at once, then delivered."""
        for dom in domains:
            self.assertEqual(d.ctl("suspend", dom).rc, 0)
        for k, dom in enumerate(domains):
            inject(d, n // len(domains), dom, local="u%d-" % k)
        for dom in domains:
            self.assertEqual(d.ctl("resume", dom).rc, 0)

    def test_learns_rate(self):
        """30 messages/s, 5 messages per connection (and 3 connections,
        more than the rate needs): sluice starts at 10/s, doubles until
        the first rate refusal, then settles within the allowance (AIMD);
        it learns max_messages_per_connection 5 exactly, delivers all 600
        and provokes few refusals, almost none once learned; `shaping`
        records (event adapt) say what it learned."""
        peer = self.peer(max_conns=3, max_msgs=5, rate=30)
        d = self.daemon(peer).start()
        self.run_batch(d, 600)
        st.wait_for(lambda: peer.counts()[0] >= 600, 150, interval=0.5,
                    what="600 messages at the limited peer")
        d.wait_queue(0, timeout=60)
        q = self.queue_of(d)
        ad = q["adaptive"]
        self.assertIsNotNone(ad, q)
        self.assertEqual(ad["max_messages_per_connection"], 5, q)
        self.assertFalse(ad["slow_start"], q)
        self.assertGreaterEqual(ad["rate"], 15, q)   # AIMD: between beta*30 and a step above
        self.assertLessEqual(ad["rate"], 36, q)
        self.assertLessEqual(ad["max_connections"], 3, q)
        self.assertGreaterEqual(ad["signals"], 1, q)
        n, kinds = peer.counts()
        self.assertGreaterEqual(kinds.get("rate", 0), 1, kinds)  # it was passed, and learned
        self.assertLessEqual(kinds.get("messages", 0), 4, kinds)
        self.assertLess(sum(kinds.values()), 0.05 * n, kinds)
        # the second half of the run (by accepted message) provoked almost nothing
        with peer.lock:
            t_half = sorted(t for t, _ in peer.accepted)[len(peer.accepted) // 2]
            late = [k for t, k in peer.refused if t > t_half]
        self.assertLessEqual(len(late), 0.02 * n / 2, late)
        recs = [r for r in d.accounting() if r["type"] == "shaping" and r["event"] == "adapt"]
        self.assertTrue(any(r["max_messages_per_connection"] == 5 and "Too many messages"
                            in (r["response"] or "") for r in recs), recs)
        self.assertTrue(any(r["detail"].startswith("adaptive: rate") and "Rate limit"
                            in (r["response"] or "") for r in recs), recs)
        self.assertTrue(all(r["provider"] == self.pname for r in recs), recs)
        self.assertFalse(any(r["type"] == "shaping" and r["event"] == "backoff"
                             for r in d.accounting()))

    def test_learns_connections(self):
        """3 connections, each 0.1 s per message (the connections, not a
        rate, limit the throughput): sluice doubles its connections from 2
        until the receiver refuses one, learns max_connections 3 exactly
        (the connections it had open, minus the refused one) and keeps to
        it: every message delivered, a handful of refusals. Two domains
        the peer serves share the one allowance (one provider: the route's
        host). sluicectl providers and the metrics show the learned
        values."""
        peer = self.peer(max_conns=3, delay=0.1)
        d = self.daemon(peer).start()
        self.run_batch(d, 200, domains=("adapt.test", "adapt2.test"))
        st.wait_for(lambda: peer.counts()[0] >= 200, 120, interval=0.5, what="200 messages")
        d.wait_queue(0, timeout=60)
        q = self.queue_of(d)
        self.assertEqual(q["adaptive"]["max_connections"], 3, q)
        self.assertEqual(q["max_connections"], 3, q)  # in force
        self.assertIsNone(q["adaptive"]["max_messages_per_connection"], q)
        n, kinds = peer.counts()
        self.assertEqual(set(kinds), {"connections"}, kinds)
        self.assertLessEqual(kinds["connections"], 4, kinds)
        self.assertEqual(peer.max_open, 3)
        recs = [r for r in d.accounting() if r["type"] == "shaping" and r["event"] == "adapt"]
        self.assertTrue(any("max_connections 4 -> 3" in r["detail"] for r in recs), recs)
        # what an operator reads: sluicectl providers and the metrics
        out = d.ctl("providers").out
        self.assertRegex(out, r"(?m)^127\.0\.0\.1:%d .*\n\s+adaptive: rate [0-9.]+/s.*, "
                              % peer.port +
                              r"max_connections 3, max_messages_per_connection -, \d+ capacity")
        met = d.ctl("metrics").out
        self.assertIn('sluice_provider_adaptive_max_connections{provider="%s",'
                      'vmta="default"} 3\n' % self.pname, met)
        self.assertRegex(met, r'sluice_provider_adaptive_rate\{provider="127\.0\.0\.1:%d",'
                              r'vmta="default"\} [0-9.e+]+\n' % peer.port)

    def test_kept_across_restart(self):
        """The learned values are in spool/adaptive.json at exit and are
        the queue's values again after a restart: the next run delivers
        with them from its first message (no connection or per-connection
        refusal to learn them again). 0.1 s per message: the connections
        are the limit, so the first run learns it from a refusal."""
        peer = self.peer(max_conns=2, max_msgs=4, delay=0.1)
        d = self.daemon(peer).start()
        self.run_batch(d, 300)
        st.wait_for(lambda: peer.counts()[0] >= 300, 120, interval=0.5, what="300 messages")
        d.wait_queue(0, timeout=60)
        before = self.queue_of(d)["adaptive"]
        self.assertEqual(before["max_messages_per_connection"], 4, before)
        self.assertEqual(before["max_connections"], 2, before)
        self.assertGreaterEqual(peer.counts()[1].get("connections", 0), 1)  # learned, not the start
        d.stop()
        with open(os.path.join(d.spool, "adaptive.json")) as f:
            kept = json.load(f)
        (e,) = [e for e in kept["queues"] if e["provider"] == self.pname]
        self.assertEqual((e["vmta"], e["max_connections"], e["max_messages_per_connection"]),
                         ("default", 2, 4), e)
        self.assertAlmostEqual(e["rate"], before["rate"], delta=0.01)
        d.start()
        _, k0 = peer.counts()
        self.run_batch(d, 60)
        st.wait_for(lambda: peer.counts()[0] >= 360, 90, interval=0.5, what="60 more messages")
        d.wait_queue(0, timeout=60)
        after = self.queue_of(d)["adaptive"]
        self.assertEqual(after["max_messages_per_connection"], 4, after)
        self.assertEqual(after["max_connections"], 2, after)
        _, k1 = peer.counts()
        self.assertEqual(k1.get("messages", 0), k0.get("messages", 0), (k0, k1))
        self.assertEqual(k1.get("connections", 0), k0.get("connections", 0), (k0, k1))
        self.assertIn("adaptive: kept values", d.stderr())

    def test_reputation_is_backoff(self):
        """[TSS04] is reputation, not capacity: three of them put the queue
        in backoff (the shipped default rule, 3 in 5m) and adaptive mode
        learns nothing from them (no adapt record with that reply, the
        learned rate not lowered)."""
        peer = self.peer(tss04=3)
        d = self.daemon(peer).start()
        self.run_batch(d, 10)
        st.wait_for(lambda: peer.counts()[0] >= 1, 60, interval=0.5, what="a delivery")

        def backoff():
            recs = [r for r in d.accounting() if r["type"] == "shaping"]
            return [r for r in recs if r["event"] == "backoff"] and recs
        recs = st.wait_for(backoff, 30, interval=0.5, what="a backoff record")
        self.assertIn("[TSS04]", [r for r in recs if r["event"] == "backoff"][0]["response"])
        self.assertFalse([r for r in recs if r["event"] == "adapt" and r["response"]
                          and "TSS04" in r["response"]], recs)
        q = self.queue_of(d)
        self.assertIn(q["mode"], ("backoff", "recovering"), q)
        self.assertEqual(q["adaptive"]["signals"], 0, q)
        self.assertEqual(peer.counts()[1], {"tss04": 3})


if __name__ == "__main__":
    st.main()
