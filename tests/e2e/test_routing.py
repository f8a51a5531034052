#!/usr/bin/python3
"""End-to-end tests of MX routing (RFC 5321 5.1, RFC 7505) and of the
scheduler's hand-off, against st.FakeDns (answers dnsmasq cannot give:
null MX, two root MX, TTL 0, SERVFAIL) and aiosmtpd peers (st.Peer).

What a route failure must do: settle the recipients it was resolving at
once (bounce or defer), be cached for a while whatever the TTL, and never
make a delivery thread ask DNS in a loop. Each spin check counts the DNS
questions and the daemon's route log lines over a bounded time.
"""
import os
import re
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sluicetest as st  # noqa: E402
from test_delivery import RawServer, acct, make_daemon, send, wait_acct  # noqa: E402

FAST_QUEUE = ('queue {\n    retry = "1s,1s,2s";\n    retry_jitter = 0;\n    scan_interval = 100ms;\n'
              '    dsn = false;\n}\n')

# At most this many DNS questions for one name in the observation window:
# a spinning thread asks thousands of times a second.
SPIN_LIMIT = 12


def resolvers(dns, port=None):
    s = '    resolvers = "127.0.0.1:%d";\n' % dns.port
    if port is not None:
        s += "    port = %d;\n" % port
    return s


class RoutingTest(unittest.TestCase):

    def setUp(self):
        self.cleanups = []

    def tearDown(self):
        for fn in reversed(self.cleanups):
            try:
                fn()
            except Exception:
                pass

    def dns(self, records=None, **kw):
        d = st.FakeDns(records, **kw)
        self.cleanups.append(d.stop)
        return d

    def peer(self, **kw):
        p = st.Peer(prefix="route-peer-", **kw)
        self.cleanups.append(lambda: p.stop(check=False))
        return p

    def daemon(self, **kw):
        kw.setdefault("queue", FAST_QUEUE)
        d = make_daemon(**kw)
        self.cleanups.append(d.cleanup)
        d.start()
        return d

    def route_lines(self, d, domain):
        return len(re.findall(r"route %s: " % re.escape(domain), d.stderr()))

    def assert_no_spin(self, d, dns, names, domains, seconds=3.0):
        """Over `seconds`, each DNS name is asked about at most SPIN_LIMIT
        times and the daemon logs at most SPIN_LIMIT route lines for each
        destination domain."""
        q0 = {n: dns.count(n) for n in names}
        l0 = {m: self.route_lines(d, m) for m in domains}
        time.sleep(seconds)
        for n in names:
            self.assertLessEqual(dns.count(n) - q0[n], SPIN_LIMIT,
                                 "%s asked %d times in %.0f s" % (n, dns.count(n) - q0[n], seconds))
        for m in domains:
            self.assertLessEqual(self.route_lines(d, m) - l0[m], SPIN_LIMIT,
                                 "%d route lines for %s" % (self.route_lines(d, m) - l0[m], m))

    # -- finding: a null MX with TTL 0 made a delivery thread spin

    def test_null_mx_ttl0_bounces_without_spinning(self):
        dns = self.dns({("nullmx.test", "MX"): [(0, "", 0)]})
        d = self.daemon(delivery=resolvers(dns))
        send(d, ["x@nullmx.test"])
        rec = wait_acct(d, "bounce", "x@nullmx.test", timeout=15)[0]
        self.assertEqual(rec["status"], "5.1.10")
        self.assertEqual(rec["code"], 556)
        self.assertEqual(rec["category"], "bad-domain")
        d.wait_queue(0)
        # a second message while the failure is cached: bounced from the cache
        n0 = dns.count("nullmx.test", "MX")
        send(d, ["y@nullmx.test"])
        wait_acct(d, "bounce", "y@nullmx.test", timeout=15)
        self.assertLessEqual(dns.count("nullmx.test", "MX") - n0, 1)
        self.assert_no_spin(d, dns, ["nullmx.test"], ["nullmx.test"])
        self.assertLessEqual(dns.count("nullmx.test", "MX"), 4)
        d.stop()

    def test_route_failures_with_ttl0_settle_and_never_spin(self):
        """NXDOMAIN, no MX and no address, SERVFAIL, MX hosts that do not
        exist: every answer with TTL 0; each recipient gets its outcome and
        DNS is asked a bounded number of times while mail keeps coming."""
        dns = self.dns({("nohost.test", "MX"): [(10, "mx.nohost.test", 0)]},
                       nxdomain={"nx.test", "mx.nohost.test"}, servfail={"servfail.test"},
                       ttl=0, neg_ttl=0)
        d = self.daemon(delivery=resolvers(dns))
        cases = {"nx.test": ("bounce", "5.1.2"), "noaddr.test": ("bounce", "5.1.2"),
                 "servfail.test": ("transient", "4.4.3"), "nohost.test": ("bounce", "5.4.4")}
        for dom in cases:
            send(d, ["u@" + dom])
        for dom, (typ, status) in cases.items():
            rec = wait_acct(d, typ, "u@" + dom, timeout=15)[0]
            self.assertEqual(rec["status"], status, rec)
        # more mail for the same domains while the failures are cached
        for dom in cases:
            send(d, ["v@" + dom])
        for dom, (typ, _) in cases.items():
            wait_acct(d, typ, "v@" + dom, timeout=15)
        self.assert_no_spin(d, dns, list(cases) + ["mx.nohost.test"], list(cases))
        d.stop()

    # -- finding: "MX present, none usable" hung the destination

    def test_two_root_mx_bounce_5_1_10(self):
        dns = self.dns({("roots.test", "MX"): [(0, ""), (10, "")]})
        d = self.daemon(delivery=resolvers(dns))
        send(d, ["x@roots.test"])
        rec = wait_acct(d, "bounce", "x@roots.test", timeout=15)[0]
        self.assertEqual(rec["status"], "5.1.10")
        self.assertEqual(rec["category"], "bad-domain")
        self.assertEqual(dns.count("roots.test", "A"), 0)  # MX present: never the A record
        d.wait_queue(0)
        self.assert_no_spin(d, dns, ["roots.test"], ["roots.test"])
        d.stop()

    # -- finding: MX hosts that do not exist

    def test_mx_hosts_nxdomain_bounce_tempfail_defers(self):
        dns = self.dns({("gone.test", "MX"): [(10, "mx1.gone.test"), (20, "mx2.gone.test")],
                        ("half.test", "MX"): [(10, "mx1.half.test"), (20, "mx2.half.test")],
                        ("gone.test", "A"): ["127.0.0.1"]},
                       nxdomain={"mx1.gone.test", "mx2.gone.test", "mx1.half.test"},
                       servfail={"mx2.half.test"})
        d = self.daemon(delivery=resolvers(dns))
        send(d, ["u@gone.test"])
        send(d, ["u@half.test"])
        rec = wait_acct(d, "bounce", "u@gone.test", timeout=15)[0]
        self.assertEqual(rec["status"], "5.4.4")
        self.assertEqual(rec["category"], "bad-domain")
        self.assertIn("mx1.gone.test", rec["text"])
        self.assertEqual(dns.count("gone.test", "A"), 0)  # MX present: no implicit MX
        rec = wait_acct(d, "transient", "u@half.test", timeout=15)[0]
        self.assertEqual(rec["status"], "4.4.3")
        self.assertEqual(acct(d, "bounce", "u@half.test"), [])
        d.stop()

    def test_scheduler_passes_over_a_message_that_does_not_fit(self):
        """queue.active_size is held by a message whose destination never
        answers; a big message to a healthy domain does not fit beside it,
        and a small one behind the big one must go all the same."""
        silent = RawServer("silent")  # accepts, never greets
        self.cleanups.append(silent.stop)
        peer = self.peer()
        d = self.daemon(routes={"hang.test": "127.0.0.1:%d" % silent.port,
                                "ok.test": "127.0.0.1:%d" % peer.port},
                        delivery="    greeting_timeout = 5m;\n",
                        queue='queue {\n    retry = "1s";\n    retry_jitter = 0;\n'
                              '    scan_interval = 100ms;\n    active_size = 1M;\n'
                              '    dsn = false;\n}\n')
        big = "x" * 76 + "\r\n"
        big_body = big * (600 * 1024 // len(big))
        send(d, ["a@hang.test"], body=big_body, subject="hung big")
        st.wait_for(lambda: silent.conns, 15, what="the connection to the silent server")
        send(d, ["b@ok.test"], body=big_body, subject="healthy big")
        send(d, ["c@ok.test"], subject="healthy small")
        msgs = peer.wait_messages(1, timeout=20)
        self.assertIn(b"Subject: healthy small", msgs[0][1])
        self.assertEqual(acct(d, "delivery", "a@hang.test"), [])  # still hanging
        d.stop()

    # -- README promises: implicit MX, SERVFAIL defers, exponential retry

    def test_implicit_mx_delivers_to_the_domain_address(self):
        peer = self.peer()
        dns = self.dns({("plain.test", "A"): ["127.0.0.1"]})  # no MX: NODATA
        d = self.daemon(delivery=resolvers(dns, peer.port))
        sent = send(d, ["bob@plain.test"])
        rec, raw = peer.wait_messages(1)[0]
        self.assertEqual([r["addr"] for r in rec["rcpts"]], ["bob@plain.test"])
        self.assertTrue(raw.endswith(sent), raw[-200:])
        rec = wait_acct(d, "delivery", "bob@plain.test")[0]
        self.assertEqual(rec["mx"], "plain.test")
        self.assertEqual(rec["mx_ip"], "127.0.0.1")
        asked = [t for n, t in dns.queries if n == "plain.test"]
        self.assertEqual(asked[0], "MX")  # MX first, then the implicit MX's address
        self.assertIn("A", asked)
        d.wait_queue(0)
        d.stop()

    def test_servfail_defers_and_keeps_the_message(self):
        dns = self.dns(servfail={"sf.test"})
        d = self.daemon(delivery=resolvers(dns))
        send(d, ["u@sf.test"])
        recs = wait_acct(d, "transient", "u@sf.test", n=2, timeout=20)
        self.assertEqual([r["status"] for r in recs[:2]], ["4.4.3", "4.4.3"])
        self.assertIn("temporary failure", recs[0]["text"])
        self.assertEqual(acct(d, "bounce"), [])
        self.assertEqual(d.status()["queue"]["messages"], 1)
        d.stop()

    def test_exponential_retry_schedule(self):
        """queue.retry empty: retry_initial doubling up to retry_max; the
        accounting log's next_attempt and the attempt times follow it."""
        d = self.daemon(routes={"down.test": "127.0.0.1:%d" % st.free_port()},
                        delivery="    dead_after_failures = 1000;\n",
                        queue='queue {\n    retry_initial = 1s;\n    retry_max = 4s;\n'
                              '    retry_jitter = 0;\n    scan_interval = 100ms;\n'
                              '    dsn = false;\n}\n')
        send(d, ["u@down.test"])
        recs = wait_acct(d, "transient", "u@down.test", n=5, timeout=40)[:5]
        self.assertEqual([r["attempt"] for r in recs], [1, 2, 3, 4, 5])

        def unix(r):
            return st.unix_time(r["time"])
        want = [1, 2, 4, 4, 4]
        for r, delay in zip(recs, want):
            # the retry is due at a whole second: the record's second + delay
            self.assertEqual(st.unix_time(r["next_attempt"]) - int(unix(r)), delay, r)
        for a, b, delay in zip(recs, recs[1:], want):
            gap = unix(b) - unix(a)
            # due at a whole second: up to 1 s early, scan and load late
            self.assertGreaterEqual(gap, delay - 1.0, (a, b))
            self.assertLessEqual(gap, delay + 3.0, (a, b))
        d.stop()


if __name__ == "__main__":
    unittest.main(verbosity=2)
