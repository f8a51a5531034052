#!/usr/bin/python3
"""Outbound TLS session resumption (issue 18): the connections that slow
start opens while the first one is still open resume its TLS session.

The receiver is aiosmtpd with STARTTLS (tests/e2e/peer_smtp.py, Python's
ssl: TLS 1.3 with session tickets), which we did not write. sluiced gets 30
messages for one domain at once. Slow start opens 2 connections, then one
more per connection that reached its first ready state (EHLO answered
after STARTTLS), while the first ones stay open and keep delivering: those
later connections find the first connection's session (kept at its first
ready state, the tickets read by then) and resume it. Checked: every
message delivered over TLS, and `sluicectl status` counts resumed
handshakes (delivery.tls_resumed) among the handshakes made.
"""
import os
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sluicetest as st  # noqa: E402


class TlsResume(unittest.TestCase):

    def test_connections_opened_while_the_first_lives_resume(self):
        p = st.Peer(prefix="tls-resume-", starttls=True, greeting_delay=0.2)
        self.addCleanup(p.stop)
        d = st.Daemon(routes={"a.example": "127.0.0.1:%d" % p.port})
        self.addCleanup(d.close)
        d.start()
        rcpts = ["r%d@a.example" % i for i in range(30)]
        with d.smtp(timeout=60) as c:
            c.ehlo()
            for i, r in enumerate(rcpts):
                c.sendmail("sender@s.example", [r],
                           st.wire_message("sender@s.example", r, subject="resume %d" % i))
        got = st.wait_for(lambda: len(p.messages()) >= 30 and p.messages(), 90,
                          what="30 messages at the peer")
        d.wait_queue(0)
        self.assertEqual(sorted(a["addr"] for rec, _ in got for a in rec["rcpts"]),
                         sorted(rcpts))
        for rec, _ in got:
            self.assertIsNotNone(rec["tls"], rec)
        # the last connections may still be in their handshake (they found
        # no work left): wait until every open connection has done TLS
        dlv = st.wait_for(lambda: (lambda x: x["tls_sessions"] >= x["connections_total"] and x)(
            d.status()["delivery"]), 30, what="every connection's handshake")
        conns = {rec["conn"] for rec, _ in got}
        # slow start opened more than the first two connections...
        self.assertGreater(dlv["tls_sessions"], 2, dlv)
        self.assertGreaterEqual(dlv["tls_sessions"], len(conns), dlv)
        # ... and the ones opened after a connection was ready offered a
        # session it left: at least one resumed (before, none: a session was
        # kept only when a connection closed, and none had). Not
        # necessarily all: the first ones start before any session is
        # known, and each ticket is offered once.
        self.assertGreaterEqual(dlv["tls_resumed"], 1, dlv)
        self.assertLess(dlv["tls_resumed"], dlv["tls_sessions"], dlv)
        d.stop()


if __name__ == "__main__":
    st.main()
