#!/usr/bin/python3
"""Delivery behaviours tested against sluice-sink elsewhere, here against a
receiver we did not write (aiosmtpd, tests/e2e/peer_smtp.py via st.Peer),
with and without PIPELINING where it matters:

- several recipients in one transaction with mixed RCPT replies;
- a temporary failure (at RCPT, at the end of the data), then the retry;
- connection reuse: several messages over one connection, one EHLO;
- MX fallback (dnsmasq): the first MX refuses the connection or greets
  421, the next one takes the mail;
- HELO fallback when EHLO is refused.
Run: SLUICE_BUILD=... /usr/bin/python3 tests/e2e/test_peers_behaviours.py
"""
import os
import socket
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sluicetest as st  # noqa: E402


class PeerCase(unittest.TestCase):

    def setUp(self):
        self.cleanups = []

    def tearDown(self):
        for fn in reversed(self.cleanups):
            try:
                fn()
            except Exception:
                pass

    def peer(self, **kw):
        p = st.Peer(**kw)
        self.cleanups.append(lambda: p.stop(check=False))
        return p

    def daemon(self, routes, **kw):
        d = st.wire_daemon(routes, **kw)
        self.cleanups.append(d.cleanup)
        d.start()
        return d


class Behaviours(PeerCase):

    def check_mixed(self, pipelining):
        p = self.peer(pipelining=pipelining, wire=True,
                      rcpt_reply=["bad@a.example=550 5.1.1 No such user",
                                  "later@a.example=451 4.3.0 Try again later"])
        d = self.daemon({"a.example": p.port})
        rcpts = ["ok1@a.example", "bad@a.example", "later@a.example", "ok2@a.example"]
        msg = st.wire_message("sender@s.example", rcpts[0], subject="mixed")
        st.wire_submit(d, rcpts, msg)
        rec, raw = p.wait_messages(1)[0]
        self.assertEqual([r["addr"] for r in rec["rcpts"]], ["ok1@a.example", "ok2@a.example"])
        self.assertEqual(st.strip_received(raw), msg)
        st.wait_acct(d, "delivery", n=2)
        b = st.wait_acct(d, "bounce", "bad@a.example")[0]
        self.assertEqual((b["code"], b["status"], b["category"]), (550, "5.1.1", "bad-mailbox"))
        t = st.wait_acct(d, "transient", "later@a.example")[0]
        self.assertEqual((t["code"], t["status"]), (451, "4.3.0"))
        self.assertEqual(t["text"], "Try again later")
        d.stop()
        w = p.wires()[0]
        self.assertEqual(w.count(b"MAIL FROM:"), 1, w)  # one transaction
        self.assertEqual(w.count(b"DATA\r\n"), 1)

    def test_mixed_rcpt_replies_lock_step(self):
        self.check_mixed(False)

    def test_mixed_rcpt_replies_pipelined(self):
        self.check_mixed(True)

    def test_tempfail_then_retry(self):
        """451 at RCPT the first time, then 451 at the end of the data: two
        deferrals with their own replies, then the delivery on the next
        retry (retry = 1s), exactly once."""
        p = self.peer(rcpt_reply=["rcpt@a.example=1:451 4.2.0 Greylisted, come back"],
                      eom_reply=["1:451 4.3.0 Queue busy"])
        d = self.daemon({"a.example": p.port})
        msg = st.wire_message("sender@s.example", "rcpt@a.example", subject="greylisted")
        st.wire_submit(d, ["rcpt@a.example"], msg)
        st.wait_acct(d, "delivery", "rcpt@a.example")
        t = st.acct_records(d, "transient", "rcpt@a.example")
        self.assertEqual([(r["code"], r["status"], r["text"]) for r in t],
                         [(451, "4.2.0", "Greylisted, come back"), (451, "4.3.0", "Queue busy")])
        self.assertEqual([r["attempt"] for r in t], [1, 2])
        d.wait_queue(0)
        msgs = p.messages()
        self.assertEqual(len(msgs), 1)
        self.assertEqual(st.strip_received(msgs[0][1]), msg)
        d.stop()

    def test_connection_reuse(self):
        """Ten messages in a row over one connection (one allowed per
        destination): one EHLO, ten transactions, no RSET."""
        for pipelining in (False, True):
            with self.subTest(pipelining=pipelining):
                p = self.peer(pipelining=pipelining, wire=True)
                d = self.daemon({"a.example": p.port},
                                delivery="    max_connections_per_destination = 1;\n"
                                         "    idle_time = 10s;\n")
                with d.smtp() as c:
                    for i in range(10):
                        c.sendmail("sender@s.example", ["m%d@a.example" % i],
                                   st.wire_message("sender@s.example", "m%d@a.example" % i,
                                                   subject="reuse %d" % i))
                msgs = p.wait_messages(10)
                st.wait_acct(d, "delivery", n=10)
                self.assertEqual({rec["conn"] for rec, _ in msgs}, {1})
                d.stop()
                wires = p.wires()
                self.assertEqual(len(wires), 1)
                self.assertEqual(wires[0].count(b"EHLO "), 1)
                self.assertEqual(wires[0].count(b"MAIL FROM:"), 10)
                self.assertEqual(wires[0].count(b"RSET"), 0)
                self.assertTrue(wires[0].endswith(b"QUIT\r\n"))

    def test_helo_fallback(self):
        p = self.peer(ehlo_reply="502 5.5.1 EHLO not implemented", wire=True)
        d = self.daemon({"a.example": p.port})
        msg = st.wire_message("sender@s.example", "ann@a.example", subject="helo")
        st.wire_submit(d, ["ann@a.example"], msg)
        rec, raw = p.wait_messages(1)[0]
        self.assertEqual(st.strip_received(raw), msg)
        self.assertEqual(rec["mail_params"], [])  # no extension after HELO
        st.wait_acct(d, "delivery", "ann@a.example")
        d.stop()
        lines = p.wires()[0].split(b"\r\n")
        self.assertTrue(lines[0].startswith(b"EHLO "), lines[:3])
        self.assertTrue(lines[1].startswith(b"HELO "), lines[:3])
        self.assertEqual(lines[2], b"MAIL FROM:<sender@s.example>")


class MxFallback(PeerCase):

    def two_ports(self):
        """A port free on 127.0.0.1 and on 127.0.0.2 (MX hosts share the
        destination's port)."""
        for _ in range(20):
            port = st.free_port("127.0.0.1")
            try:
                with socket.socket() as s:
                    s.bind(("127.0.0.2", port))
                return port
            except OSError:
                continue
        self.fail("no port free on both addresses")

    def check_fallback(self, first):
        port = self.two_ports()
        good = self.peer(listen="127.0.0.1:%d" % port)
        if first == "greeting":
            bad = self.peer(listen="127.0.0.2:%d" % port,
                            greeting="421 4.3.2 mx1 going down, try another MX")
        dns = st.Dnsmasq("--mx-host=a.example,mx1.a.example,10",
                         "--mx-host=a.example,mx2.a.example,20",
                         "--host-record=mx1.a.example,127.0.0.2",
                         "--host-record=mx2.a.example,127.0.0.1")
        self.cleanups.append(dns.stop)
        d = self.daemon({}, by_mx=True,
                        delivery='    resolvers = "127.0.0.1:%d";\n    port = %d;\n'
                        % (dns.port, port))
        msg = st.wire_message("sender@s.example", "erin@a.example", subject="fallback")
        st.wire_submit(d, ["erin@a.example"], msg)
        rec, raw = good.wait_messages(1)[0]
        self.assertEqual(st.strip_received(raw), msg)
        a = st.wait_acct(d, "delivery", "erin@a.example")[0]
        self.assertEqual((a["mx"], a["mx_ip"]), ("mx2.a.example", "127.0.0.1"))
        self.assertIn("127.0.0.2", d.stderr())  # the first MX was tried
        if first == "greeting":
            self.assertTrue(any(e["ev"] == "connect" for e in bad.events()), bad.events())
            self.assertEqual(bad.messages(), [])
        self.assertEqual(st.acct_records(d, "transient"), [])
        d.stop()

    def test_first_mx_refuses_connection(self):
        self.check_fallback("refused")

    def test_first_mx_greets_421(self):
        self.check_fallback("greeting")


if __name__ == "__main__":
    unittest.main()
