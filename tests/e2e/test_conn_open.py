#!/usr/bin/python3
"""When sluice opens another connection to a destination (issue 18, wan):
only when the waiting messages would wait longer on the connections it has
than a new connection takes to become ready (docs/delivery.md, "When
another connection is opened").

The receiver is an aiosmtpd peer (tests/e2e/peer_smtp.py) that greets
SETUP seconds after accepting (a connection is slow to become ready, as
over a WAN with TLS) and answers transactions at once, except the final
dot of the warm-up messages, which it holds WARM_TXN seconds.

- slow setup: a warm-up batch (slow transactions: opening pays, so the
  destination's slow start grows to many connections, old code and new
  alike), then 20 messages one at a time (sluice learns that transactions
  are now fast), then a burst of BURST messages: the rule opens about
  BURST x txn / SETUP connections (a few); the old code opened one per
  waiting message up to the slow start limit (more than ten here).
- fast setup: the same burst to a peer that greets at once still gets
  several connections (no regression on loopback and relay traffic).
Run: SLUICE_BUILD=... /usr/bin/python3 tests/e2e/test_conn_open.py
"""
import os
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sluicetest as st  # noqa: E402
from test_shaping import inject  # noqa: E402

DOMAIN = "conn.test"
SETUP = 1.5      # s: the peer's greeting delay (a connection's setup)
WARM_TXN = 0.3   # s: the peer holds a warm-up message's final reply this long
WARM = 200       # warm-up messages (slow transactions: more connections pay)
PROBES = 20      # fast messages one at a time: sluice measures fast transactions
BURST = 200
# A fast transaction here (sluice under ASan, the Python peer, a loaded
# machine) takes well under 35 ms: the rule opens another connection while
# BURST x txn > open x SETUP, i.e. at most BURST x 0.035 / SETUP + 1.
MAX_TXN = 0.035
SLOW_BOUND = int(BURST * MAX_TXN / SETUP) + 1


class ConnOpen(unittest.TestCase):

    def peer(self, **kw):
        p = st.Peer(prefix="conn-open-", pipelining=True, **kw)
        self.addCleanup(p.stop)
        return p

    def daemon(self, peer):
        d = st.Daemon(routes={DOMAIN: "127.0.0.1:%d" % peer.port})
        # idle connections close after a second: the burst finds none of
        # the warm-up's connections open
        text = d.default_conf("info").replace(
            "delivery {\n", "delivery {\n    idle_time = 1s;\n"
            "    max_connections_per_destination = 20;\n", 1)
        with open(d.conf_path, "w") as f:
            f.write(text)
        self.addCleanup(d.close)
        return d.start()

    def batch(self, d, peer, n, local):
        """n messages to DOMAIN, held while injected (sluice sees the whole
        backlog at once), then delivered; the peer's records of them."""
        self.assertEqual(d.ctl("suspend", DOMAIN).rc, 0)
        inject(d, n, DOMAIN, local=local)
        self.assertEqual(d.ctl("resume", DOMAIN).rc, 0)
        got = st.wait_for(lambda: [m for m, _ in peer.messages()
                                   if m["rcpts"][0]["addr"].startswith(local)]
                          if sum(1 for m, _ in peer.messages()
                                 if m["rcpts"][0]["addr"].startswith(local)) >= n else None,
                          60, interval=0.1, what="%d %s messages at the peer" % (n, local))
        self.assertEqual(sorted(m["rcpts"][0]["addr"] for m in got),
                         sorted("%s%d@%s" % (local, i, DOMAIN) for i in range(n)))
        return got

    def delivered(self, d, n):
        recs = st.wait_acct(d, "delivery", n=n, timeout=60)
        self.assertEqual(len(recs), n)

    def test_slow_setup_fast_transactions_few_connections(self):
        peer = self.peer(greeting_delay=SETUP, eom_delay=["warm*=%g" % WARM_TXN])
        d = self.daemon(peer)
        warm = self.batch(d, peer, WARM, "warm")
        warm_conns = len({m["conn"] for m in warm})
        # slow transactions: more connections paid, the slow start grew
        self.assertGreaterEqual(warm_conns, 8, "warm-up used %d connections" % warm_conns)
        # the warm-up's connections close (idle_time 1s); then fast
        # transactions one at a time, on one connection
        def all_closed():
            ev = peer.events()
            opened = {e["conn"] for e in ev if e["ev"] == "connect"}
            return opened == {e["conn"] for e in ev if e["ev"] == "close"}
        st.wait_for(all_closed, 30, interval=0.2, what="the warm-up connections closed")
        for i in range(PROBES):
            inject(d, 1, DOMAIN, local="probe%d-" % i)
            st.wait_for(lambda: any(m["rcpts"][0]["addr"].startswith("probe%d-" % i)
                                    for m, _ in peer.messages()), 30,
                        what="probe %d at the peer" % i)
        t0 = time.time()
        burst = self.batch(d, peer, BURST, "burst")
        took = time.time() - t0
        # every connection opened from the burst on (the peer saw each
        # one, whether it carried a message or not), once they are closed
        st.wait_for(all_closed, 30, interval=0.2, what="the burst's connections closed")
        opened = [e["conn"] for e in peer.events() if e["ev"] == "connect" and e["t"] >= t0]
        used = {m["conn"] for m in burst}
        print("warm-up: %d connections; burst: %d opened, %d used, %.1fs"
              % (warm_conns, len(opened), len(used), took), file=sys.stderr)
        self.assertLessEqual(len(opened), SLOW_BOUND,
                             "the burst of %d opened %d connections (%.1fs)"
                             % (BURST, len(opened), took))
        self.delivered(d, WARM + PROBES + BURST)
        d.stop()

    def test_fast_setup_several_connections(self):
        peer = self.peer()
        d = self.daemon(peer)
        burst = self.batch(d, peer, BURST, "burst")
        conns = {m["conn"] for m in burst}
        print("fast setup: the burst used %d connections" % len(conns), file=sys.stderr)
        self.assertGreaterEqual(len(conns), 4, "the burst used %d connections" % len(conns))
        self.delivered(d, BURST)
        d.stop()


if __name__ == "__main__":
    st.main()
