#!/usr/bin/python3
"""Delivery behaviours README promises that no other test checked, against
a receiver we did not write (aiosmtpd, tests/e2e/peer_smtp.py):

- tls_policy = disabled: no STARTTLS on the wire although the server
  offers it (and the same server gets STARTTLS from the default policy);
  delivery.tls = disabled does the same for every domain;
- the smarthost: a domain without a route goes to delivery.smarthost
  without any MX lookup (the resolver given never answers), by IP or by a
  host name looked up in DNS; a static route still wins over it;
- slow start (docs/delivery.md): a destination opens at most 2 connections
  until one of them has been greeted and answered EHLO, then more.

Assertions are on what the receiver got (its wire bytes, its records and
connection events) and on the accounting log.
"""
import os
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sluicetest as st  # noqa: E402
from test_delivery import acct, make_daemon, send  # noqa: E402


class DeliveryModes(unittest.TestCase):

    def peer(self, **kw):
        p = st.Peer(**kw)
        self.addCleanup(p.stop)
        return p

    def daemon(self, delivery="", smarthost=None, routes=None):
        """A daemon with these delivery lines and routes, and smarthost
        ("host:port") if given."""
        if smarthost is not None:
            delivery += '    smarthost = "%s";\n' % smarthost
        d = make_daemon(routes=routes, delivery=delivery)
        self.addCleanup(d.close)
        d.start()
        return d

    # -- tls_policy = disabled

    def test_tls_policy_disabled_never_starttls(self):
        # PIPELINING offered: sluice's lock-step path sends RCPT in the clear
        # after STARTTLS (a defect reported on its own); the control below
        # needs a working STARTTLS, and the policy is the same either way.
        peer = self.peer(starttls=True, wire=True, pipelining=True)
        route = "127.0.0.1:%d" % peer.port
        d = self.daemon('    tls_policy {\n        "plain.example" = disabled;\n    }\n',
                        routes={"plain.example": route, "tls.example": route})
        send(d, ["p@plain.example"])
        rec = st.wait_for(lambda: acct(d, "delivery", "p@plain.example"), 30,
                          what="the delivery to plain.example")[0]
        self.assertFalse(rec["tls"], rec)
        # the control: the same server, the default policy, STARTTLS is used
        send(d, ["t@tls.example"])
        rec = st.wait_for(lambda: acct(d, "delivery", "t@tls.example"), 30,
                          what="the delivery to tls.example")[0]
        self.assertTrue(rec["tls"].startswith("TLSv1."), rec)
        d.stop()
        by_rcpt = {r["rcpts"][0]["addr"]: r for r, _ in peer.messages()}
        self.assertIsNone(by_rcpt["p@plain.example"]["tls"])
        self.assertIsNotNone(by_rcpt["t@tls.example"]["tls"])
        plain = [w for w in peer.wires() if b"p@plain.example" in w]
        self.assertEqual(len(plain), 1, "one connection carried p@plain.example in the clear")
        self.assertIn(b"EHLO ", plain[0])
        self.assertNotIn(b"STARTTLS", plain[0].upper())
        self.assertTrue(any(b"STARTTLS\r\n" in w for w in peer.wires()))

    def test_global_tls_disabled(self):
        peer = self.peer(starttls=True, wire=True)
        d = self.daemon("    tls = disabled;\n",
                        routes={"any.example": "127.0.0.1:%d" % peer.port})
        send(d, ["a@any.example"])
        peer.wait_messages(1)
        d.wait_queue(0)
        d.stop()
        self.assertIsNone(peer.messages()[0][0]["tls"])
        wires = peer.wires()
        self.assertTrue(wires)
        for w in wires:
            self.assertNotIn(b"STARTTLS", w.upper())

    # -- the smarthost

    def test_smarthost_takes_every_domain_without_a_route(self):
        relay = self.peer()
        routed = self.peer()
        dead, dead_port = st.udp_blackhole()  # MX lookups would never be answered
        self.addCleanup(dead.close)
        d = self.daemon('    resolvers = "127.0.0.1:%d";\n' % dead_port,
                        smarthost="127.0.0.1:%d" % relay.port,
                        routes={"routed.example": "127.0.0.1:%d" % routed.port})
        send(d, ["one@far.example", "two@elsewhere.example"])
        send(d, ["r@routed.example"])
        relay.wait_messages(2)
        routed.wait_messages(1)
        d.wait_queue(0)
        self.assertEqual(sorted(relay.rcpts()), ["one@far.example", "two@elsewhere.example"])
        self.assertEqual(routed.rcpts(), ["r@routed.example"])  # a route wins
        for r in ("one@far.example", "two@elsewhere.example"):
            rec = acct(d, "delivery", r)[0]
            self.assertEqual((rec["mx_ip"], rec["mta_sts"]), ("127.0.0.1", None), rec)
        self.assertEqual(d.status()["delivery"]["dns_lookups"], 0)  # no MX asked for
        d.stop()

    def test_smarthost_by_name(self):
        relay = self.peer()
        dns = st.Dnsmasq("--local=/test/", "--host-record=relay.test,127.0.0.1")
        self.addCleanup(dns.stop)
        d = self.daemon('    resolvers = "127.0.0.1:%d";\n' % dns.port,
                        smarthost="relay.test:%d" % relay.port)
        send(d, ["x@nowhere.example"])
        relay.wait_messages(1)
        rec = st.wait_for(lambda: acct(d, "delivery", "x@nowhere.example"), 30,
                          what="the delivery record")[0]
        self.assertEqual(rec["mx"], "relay.test")
        self.assertEqual(rec["mx_ip"], "127.0.0.1")
        self.assertEqual(relay.rcpts(), ["x@nowhere.example"])
        d.stop()

    # -- slow start

    def test_slow_start(self):
        """20 messages wait for one destination whose server greets after
        1.5 s: until the first EHLO arrives (no connection can have been
        successful before it) at most 2 connections are opened; once
        connections succeed, more are opened."""
        peer = self.peer(greeting_delay=1.5)
        d = self.daemon("    max_connections_per_destination = 10;\n",
                        routes={"slow.example": "127.0.0.1:%d" % peer.port})
        with d.smtp() as c:
            for i in range(20):
                c.sendmail("s@s.example", ["u%d@slow.example" % i],
                           b"Subject: slow start %d\r\n\r\nbody\r\n" % i)
        peer.wait_messages(20, timeout=60)
        d.wait_queue(0)
        d.stop()
        ev = peer.events()
        first_ehlo = min(e["t"] for e in ev if e["ev"] == "ehlo")
        connects = sorted(e["t"] for e in ev if e["ev"] == "connect")
        early = [t for t in connects if t < first_ehlo]
        self.assertEqual(len(early), 2, "connections opened before any could succeed: %d"
                         % len(early))
        self.assertGreater(len(connects), 2, "no connection after the first successes")
        self.assertEqual(sorted(peer.rcpts()), sorted("u%d@slow.example" % i for i in range(20)))


if __name__ == "__main__":
    st.main()
