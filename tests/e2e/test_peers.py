#!/usr/bin/python3
"""sluice's SMTP client on the wire, against a receiver we did not write.

The receiver is aiosmtpd (tests/e2e/peer_smtp.py, st.Peer), with and
without PIPELINING and STARTTLS; with wire=True it records every byte the
client sent, raw, so a test can check that nothing went in the clear after
STARTTLS. Assertions are on what the peer stored, the bytes on the wire,
the accounting log and `sluicectl providers`.
Run: SLUICE_BUILD=... /usr/bin/python3 tests/e2e/test_peers.py
"""
import os
import sys
import time
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


class StartTls(PeerCase):
    """Finding 1: every byte after STARTTLS goes through TLS, on the
    lock-step path (no PIPELINING) as on the pipelined one."""

    def deliver_over_tls(self, pipelining, rcpts):
        p = self.peer(starttls=True, wire=True, pipelining=pipelining)
        d = self.daemon({"a.example": p.port})
        msg = st.wire_message("sender@s.example", rcpts[0], body=b"Over TLS.\r\n")
        st.wire_submit(d, rcpts, msg)
        rec, raw = p.wait_messages(1)[0]
        self.assertIsNotNone(rec["tls"], rec)
        self.assertEqual(sorted(r["addr"] for r in rec["rcpts"]), sorted(rcpts))
        self.assertEqual(st.strip_received(raw), msg)
        for r in rcpts:
            a = st.wait_acct(d, "delivery", r)[0]
            self.assertTrue(a["tls"].startswith("TLSv1."), a)
        d.wait_queue(0)
        d.stop()
        wires = p.wires()
        self.assertEqual(len(wires), 1, wires)
        w = wires[0]
        self.assertIn(b"STARTTLS\r\n", w)
        self.assertEqual(st.cleartext_after_starttls(w), b"")
        # the clear part is EHLO and STARTTLS, nothing else
        clear = w[:w.index(b"STARTTLS\r\n")]
        self.assertEqual(clear.count(b"\r\n"), 1, clear)
        self.assertTrue(clear.startswith(b"EHLO "), clear)
        return p

    def test_starttls_without_pipelining(self):
        self.deliver_over_tls(False, ["ann@a.example", "bob@a.example", "cy@a.example"])

    def test_starttls_with_pipelining(self):
        self.deliver_over_tls(True, ["ann@a.example", "bob@a.example", "cy@a.example"])

    def test_neither_starttls_nor_pipelining_lock_step_on_the_wire(self):
        """The plain lock-step dialogue, byte for byte: one command per
        reply, the body dot-stuffed, nothing else."""
        p = self.peer(wire=True)
        d = self.daemon({"a.example": p.port})
        rcpts = ["ann@a.example", "bob@a.example"]
        body = b"Plain.\r\n.leading dot\r\n"
        msg = st.wire_message("sender@s.example", rcpts[0], body=body)
        st.wire_submit(d, rcpts, msg)
        rec, raw = p.wait_messages(1)[0]
        self.assertIsNone(rec["tls"])
        self.assertEqual(st.strip_received(raw), msg)
        st.wait_acct(d, "delivery", n=2)
        d.stop()
        w = p.wires()[0]
        stuffed = raw.replace(b"\r\n.", b"\r\n..")
        want = (b"MAIL FROM:<sender@s.example> SIZE=%d\r\nRCPT TO:<ann@a.example>\r\n"
                b"RCPT TO:<bob@a.example>\r\nDATA\r\n" % len(raw)) + stuffed + b".\r\n"
        self.assertTrue(w.startswith(b"EHLO "), w[:100])
        after_ehlo = w[w.index(b"\r\n") + 2:]
        self.assertEqual(after_ehlo[:len(want)], want)
        self.assertIn(after_ehlo[len(want):], (b"", b"QUIT\r\n"))
        self.assertNotIn(b"STARTTLS", w)

    def test_starttls_454_quits_then_delivers_in_plaintext(self):
        """Finding 8: a 454 to STARTTLS gets a QUIT on that connection
        (RFC 5321 4.1.1.10), then opportunistic TLS delivers in plaintext."""
        p = self.peer(starttls=True, starttls_reply="454 4.7.0 TLS not available now",
                      wire=True)
        d = self.daemon({"a.example": p.port})
        msg = st.wire_message("sender@s.example", "ann@a.example")
        st.wire_submit(d, ["ann@a.example"], msg)
        rec, raw = p.wait_messages(1)[0]
        self.assertIsNone(rec["tls"])
        self.assertEqual(st.strip_received(raw), msg)
        a = st.wait_acct(d, "delivery", "ann@a.example")[0]
        self.assertFalse(a.get("tls"), a)
        d.stop()
        wires = p.wires()
        self.assertGreaterEqual(len(wires), 2, wires)
        first = wires[0].split(b"\r\n")
        self.assertTrue(first[0].startswith(b"EHLO "), first)
        self.assertEqual(first[1:], [b"STARTTLS", b"QUIT", b""])
        self.assertNotIn(b"STARTTLS", wires[1])
        self.assertIn(b"RCPT TO:<ann@a.example>\r\n", wires[1])


class DataReply(PeerCase):
    """Finding 3: only 354 opens the body (RFC 5321 4.3.2)."""

    def test_2xx_to_data_defers_and_sends_nothing(self):
        for pipelining in (False, True):
            with self.subTest(pipelining=pipelining):
                p = self.peer(data_reply="250 2.0.0 Ok", wire=True, pipelining=pipelining)
                d = self.daemon({"a.example": p.port})
                msg = st.wire_message("sender@s.example", "ann@a.example",
                                      body=b"Must not be lost.\r\n")
                st.wire_submit(d, ["ann@a.example", "bob@a.example"], msg)
                recs = st.wait_for(lambda: [r for r in d.accounting()
                                            if r["type"] in ("delivery", "transient")][:2]
                                   if len(d.accounting()) >= 3 else None,
                                   30, what="two outcomes")
                for r in recs:
                    self.assertEqual(r["type"], "transient", r)
                    self.assertEqual(r["status"], "4.5.0", r)
                    self.assertIn("DATA", r["text"])
                self.assertEqual(st.acct_records(d, "delivery"), [])
                self.assertEqual(d.status()["queue"]["messages"], 1)
                self.assertEqual(p.messages(), [])
                d.stop()
                w = p.wires()[0]
                self.assertNotIn(b"Must not be lost", w)
                self.assertTrue(w.endswith(b"DATA\r\nQUIT\r\n"), w[-200:])
                self.assertEqual(d.exit_code, 0)


class Bookkeeping(PeerCase):
    """Finding 2: only a reply that decides a recipient's fate reaches the
    provider's counters, its last response and its shaping rules."""

    SHAPING = ('providers { p {\n  domains = ["a.example"];\n'
               '  rule { match = "RCPT|recipient"; code = 5xx; action = backoff; }\n'
               '  rule { match = "^2"; action = backoff; }\n} }\n')

    def daemon_with_rules(self, peer):
        path = os.path.join(peer.dir, "shaping.conf")
        with open(path, "w") as f:
            f.write(self.SHAPING)
        return self.daemon({"a.example": peer.port}, delivery='    shaping = "%s";\n' % path)

    def provider_queue(self, d):
        r = d.ctl("providers", json=True)
        self.assertEqual(r.rc, 0, r)
        for p in r.data["providers"]:
            if p["provider"] == "p":
                return p["queues"][0]
        self.fail("provider p not listed: %r" % r.data)

    def check_all_refused(self, **peer_kw):
        p = self.peer(pipelining=True, rcpt_reply=["*=550 5.1.1 No such user here"], **peer_kw)
        d = self.daemon_with_rules(p)
        msg = st.wire_message("sender@s.example", "ann@a.example")
        st.wire_submit(d, ["ann@a.example", "bob@a.example"], msg)
        for r in st.wait_acct(d, "bounce", n=2):
            self.assertEqual(r["status"], "5.1.1", r)
            self.assertEqual(r["code"], 550, r)
        # the DATA reply has been read once the session is idle again
        st.wait_for(lambda: d.status()["delivery"]["transactions"] >= 1, 20,
                    what="the transaction to end")
        q = self.provider_queue(d)
        self.assertEqual(q["last_response"], "550 5.1.1 No such user here", q)
        self.assertEqual((q["deferred"], q["bounced"], q["delivered"]), (0, 2, 0), q)
        self.assertEqual([r for r in d.accounting() if r["type"] == "shaping"], [])
        out = d.ctl("providers")
        self.assertIn("550 5.1.1 No such user here", out.out)
        self.assertEqual(st.acct_records(d, "delivery"), [])
        d.stop()
        return p

    def test_data_reply_after_every_rcpt_refused_is_not_an_outcome(self):
        # aiosmtpd answers the pipelined DATA "503 5.5.1 Error: need RCPT command"
        p = self.check_all_refused()
        self.assertTrue(any(e.get("reply", "").startswith("503") for e in p.events()),
                        p.events())

    def test_354_to_nobody_gets_an_empty_message_not_counted(self):
        # a broken server says 354 with no recipient: RFC 2920 3.1, the
        # client ends the data at once; its 250 delivers nothing
        p = self.check_all_refused(data_no_rcpts="250 2.0.0 Ok, delivered to nobody")
        ev = [e for e in p.events() if e["ev"] == "data_no_rcpts"]
        self.assertEqual(len(ev), 1, p.events())
        self.assertEqual(ev[0]["content"], "")
        self.assertEqual(p.messages(), [])


class TooManyRecipients(PeerCase):
    """Finding 4: "too many recipients" at RCPT (452, or 552 as RFC 821
    had it: RFC 5321 4.5.3.1.10) is temporary, and the refused recipients
    go in the next transaction on the same connection at once."""

    RCPTS = ["r%d@a.example" % i for i in range(1, 6)]

    def check_split(self, reply, pipelining):
        p = self.peer(max_rcpts="2:" + reply, pipelining=pipelining, wire=True)
        d = self.daemon({"a.example": p.port})
        msg = st.wire_message("sender@s.example", self.RCPTS[0], body=b"Split me.\r\n")
        st.wire_submit(d, self.RCPTS, msg)
        msgs = p.wait_messages(3)
        st.wait_acct(d, "delivery", n=5)
        d.wait_queue(0)
        self.assertEqual([[r["addr"] for r in rec["rcpts"]] for rec, _ in msgs],
                         [self.RCPTS[0:2], self.RCPTS[2:4], self.RCPTS[4:5]])
        self.assertEqual(len({rec["conn"] for rec, _ in msgs}), 1, msgs)  # one connection
        for _, raw in msgs:
            self.assertEqual(st.strip_received(raw), msg)
        # nothing was deferred or bounced: no retry interval was waited
        self.assertEqual([r for r in d.accounting() if r["type"] in ("transient", "bounce")],
                         [])
        d.stop()
        w = b"".join(p.wires())
        # the second transaction holds no more than the server took in the first
        # (pipelined: 5 + 2 + 1; lock-step stops at the first refusal: 3 + 2 + 1)
        self.assertEqual(w.count(b"RCPT TO:"), 8 if pipelining else 6)
        return p

    def test_552_too_many_recipients_is_temporary_lock_step(self):
        self.check_split("552 5.5.3 Too many recipients", False)

    def test_452_too_many_recipients_pipelined(self):
        self.check_split("452 4.5.3 Too many recipients", True)

    def test_552_without_enhanced_code_pipelined(self):
        self.check_split("552 Too many recipients", True)

    def test_452_with_nobody_accepted_is_a_deferral(self):
        """The first recipient of a transaction refused 452 (over quota,
        or a server that takes nobody) is deferred, not tried again and
        again on the same connection."""
        p = self.peer(rcpt_reply=["r1@a.example=452 4.2.2 Mailbox full, try later",
                                  "r2@a.example=552 5.2.2 Mailbox full"], wire=True)
        d = self.daemon({"a.example": p.port})
        msg = st.wire_message("sender@s.example", self.RCPTS[0])
        st.wire_submit(d, self.RCPTS[:3], msg)
        rec, _ = p.wait_messages(1)[0]
        self.assertEqual([r["addr"] for r in rec["rcpts"]], ["r3@a.example"])
        t1 = st.wait_acct(d, "transient", "r1@a.example")[0]
        self.assertEqual((t1["code"], t1["status"]), (452, "4.2.2"))
        # a 552 that is not "too many recipients" is the recipient's own,
        # final answer (RFC 5321 4.5.3.1.10 makes only that one temporary)
        b2 = st.wait_acct(d, "bounce", "r2@a.example")[0]
        self.assertEqual((b2["code"], b2["status"], b2["text"]), (552, "5.2.2", "Mailbox full"), b2)
        self.assertEqual(st.acct_records(d, "transient", "r2@a.example"), [])
        d.stop()
        self.assertEqual(p.wires()[0].count(b"MAIL FROM:"), 1)


class Size(PeerCase):
    """Finding 7: the SIZE the server advertises (RFC 1870) is honoured."""

    def test_larger_than_advertised_size_bounces_locally(self):
        p = self.peer(size=1000, wire=True)
        d = self.daemon({"a.example": p.port})
        big = st.wire_message("sender@s.example", "big@a.example", subject="big",
                              body=b"x" * 70 + b"\r\n" + (b"y" * 70 + b"\r\n") * 70)
        small = st.wire_message("sender@s.example", "small@a.example", subject="small",
                                body=b"short\r\n")
        st.wire_submit(d, ["big@a.example"], big)
        b = st.wait_acct(d, "bounce", "big@a.example")[0]
        self.assertEqual(b["status"], "5.3.4", b)
        self.assertRegex(b["text"], r"^message size \d+ exceeds size limit 1000 of server ")
        self.assertEqual(b["category"], "content-related")
        st.wire_submit(d, ["small@a.example"], small)
        rec, raw = p.wait_messages(1)[0]
        self.assertEqual(st.strip_received(raw), small)
        self.assertIn("SIZE=%d" % len(raw), " ".join(rec["mail_params"]))
        st.wait_acct(d, "delivery", "small@a.example")
        d.stop()
        w = b"".join(p.wires())
        self.assertNotIn(b"big@a.example", w)  # no transaction was opened for it
        self.assertEqual(w.count(b"MAIL FROM:"), 1)

    def test_bare_552_is_5_3_4(self):
        """A 552 without an enhanced status, at MAIL or at the end of the
        data, is RFC 1870's "too big": 5.3.4, not 5.0.0."""
        for kw in ({"mail_reply": "552 Message size exceeds fixed limit"},
                   {"eom_reply": ["552 Message too large"]}):
            with self.subTest(**kw):
                p = self.peer(**kw)
                d = self.daemon({"a.example": p.port})
                st.wire_submit(d, ["ann@a.example"],
                               st.wire_message("sender@s.example", "ann@a.example"))
                b = st.wait_acct(d, "bounce", "ann@a.example")[0]
                self.assertEqual((b["code"], b["status"]), (552, "5.3.4"), b)
                d.stop()


if __name__ == "__main__":
    unittest.main()
