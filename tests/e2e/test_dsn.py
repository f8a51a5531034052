#!/usr/bin/python3
"""End-to-end tests of the DSNs sluice writes (RFC 3461, 3464, 6533) and of
the DSN extension on delivery, against aiosmtpd peers we did not write
(st.Peer): one receives the mail (with or without DSN, SMTPUTF8), another
the DSNs for the sender's domain. Every DSN received is parsed with
Python's email package by st.check_dsn().

What a user checks: how many DSNs arrive, what each says per recipient
(Action, Status, Remote-MTA, Diagnostic-Code, Original-Recipient), what
the MAIL command of a DSN declared (SMTPUTF8, BODY=8BITMIME), which DSN
parameters the next hop got, and the accounting records (dsn_for).
"""
import os
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sluicetest as st  # noqa: E402
from test_delivery import acct, make_daemon, wait_acct  # noqa: E402

FAST_QUEUE = ('queue {\n    retry = "1s,1s,2s";\n    retry_jitter = 0;\n'
              '    scan_interval = 100ms;\n}\n')


def message(sender, to, subject, body="Hello.\r\n", extra=""):
    return ("From: <%s>\r\nTo: <%s>\r\nSubject: %s\r\nDate: Fri, 27 Nov 2026 07:00:00 +0000\r\n"
            "Message-ID: <%s@s.test>\r\n%s\r\n%s"
            % (sender, to, subject, subject.replace(" ", "-"), extra, body)).encode()


def submit(d, sender, rcpts, data, mail_opts=()):
    """One transaction with per-recipient RCPT parameters: rcpts is a list
    of (address, [parameters])."""
    with d.smtp() as c:
        c.ehlo("client.test")
        code, text = c.mail(sender, list(mail_opts))
        assert code == 250, (code, text)
        for addr, opts in rcpts:
            code, text = c.rcpt(addr, list(opts))
            assert code == 250, (addr, code, text)
        code, text = c.data(data)
        assert code == 250, (code, text)


class DsnTest(unittest.TestCase):

    def setUp(self):
        self.cleanups = []

    def tearDown(self):
        for fn in reversed(self.cleanups):
            try:
                fn()
            except Exception:
                pass

    def peer(self, **kw):
        p = st.Peer(prefix="dsn-peer-", **kw)
        self.cleanups.append(lambda: p.stop(check=False))
        return p

    def daemon(self, routes, queue=FAST_QUEUE, delivery=""):
        d = make_daemon(routes={k: "127.0.0.1:%d" % p.port for k, p in routes.items()},
                        queue=queue, delivery=delivery)
        self.cleanups.append(d.cleanup)
        d.start()
        return d

    def dsns(self, peer, n=1, timeout=30, settle=1.5):
        """Wait for n messages from <> at peer, let more arrive for a moment,
        and return every one as (record, raw, check_dsn report)."""
        st.wait_for(lambda: len([m for m in peer.messages() if m[0]["mail_from"] in ("", "<>")]) >= n,
                    timeout, what="%d DSN(s)" % n)
        time.sleep(settle)
        return [(rec, raw, st.check_dsn(raw)) for rec, raw in peer.messages()
                if rec["mail_from"] in ("", "<>")]

    # -- one DSN per message per delivery round

    def test_one_dsn_for_180_failed_recipients(self):
        dest = self.peer(rcpt_reply=["bad*@a.test=550 5.1.1 No such user"])
        home = self.peer()
        d = self.daemon({"a.test": dest, "s.test": home})
        rcpts = ["bad%03d@a.test" % i for i in range(180)] + ["good%d@a.test" % i for i in range(20)]
        submit(d, "owner@s.test", [(a, []) for a in rcpts],
               message("owner@s.test", "list@a.test", "to 200", extra="X-Sluice-Job: j180\r\n"))
        got = self.dsns(home, 1, timeout=60)
        d.wait_queue(0, timeout=30)
        got = [m for m in home.messages() if m[0]["mail_from"] in ("", "<>")]
        self.assertEqual(len(got), 1, "%d DSNs for one message" % len(got))
        rec, raw = got[0]
        self.assertEqual([r["addr"] for r in rec["rcpts"]], ["owner@s.test"])
        rep = st.check_dsn(raw, ret="hdrs")
        self.assertEqual(len(rep.recipients), 180)
        self.assertEqual(sorted(r["final-recipient"] for r in rep.recipients),
                         ["rfc822; bad%03d@a.test" % i for i in range(180)])
        for r in rep.recipients:
            self.assertEqual(r["action"], "failed")
            self.assertEqual(r["status"], "5.1.1")
            self.assertEqual(r["remote-mta"], "dns; 127.0.0.1")
            self.assertEqual(r["diagnostic-code"], "smtp; 550 5.1.1 No such user")
        self.assertIn("<bad000@a.test>: host 127.0.0.1 said: 550 5.1.1 No such user", rep.human)
        self.assertIn(b"Subject: to 200", rep.returned)
        self.assertEqual(len(acct(d, "bounce")), 180)
        self.assertEqual(len(dest.messages()), 1)  # the 20 good ones, one transaction
        # the DSN's own delivery record names the message and the job it reports
        orig = acct(d, "bounce")[0]["msgid"]
        dsn_rec = [r for r in acct(d, "delivery") if r["sender"] == ""]
        self.assertEqual(len(dsn_rec), 1)
        self.assertEqual(dsn_rec[0]["dsn_for"], {"msgid": orig, "job": "j180"})
        self.assertEqual(dsn_rec[0]["recipient"], "owner@s.test")
        d.stop()

    def test_expired_dsn_keeps_the_last_real_reply(self):
        """A server answers 451 4.3.0 until the message expires (b.test);
        another answers 451 4.3.0 once and then is gone, its destination
        marked down (a.test). The one DSN at expiry quotes each real reply
        and its server, with Status 4.4.7 - not the deferral's local text,
        and not the reply code with 4.4.7 put in it. About 65 s."""
        a = self.peer(rcpt_reply=["*@a.test=451 4.3.0 Temporary lookup failure"])
        b = self.peer(rcpt_reply=["*@b.test=451 4.3.0 Temporary lookup failure"])
        home = self.peer()
        d = self.daemon({"a.test": a, "b.test": b, "s.test": home},
                        queue='queue {\n    retry = "2s";\n    retry_jitter = 0;\n'
                              '    scan_interval = 100ms;\n    max_age = 1m;\n}\n',
                        delivery="    dead_after_failures = 1;\n    dead_time = 10m;\n")
        t0 = time.monotonic()
        submit(d, "owner@s.test", [("r1@a.test", []), ("r2@a.test", []), ("r3@b.test", [])],
               message("owner@s.test", "r1@a.test", "expiring"))
        first = wait_acct(d, "transient", "r1@a.test")[0]
        self.assertEqual((first["code"], first["status"]), (451, "4.3.0"))
        a.stop(check=False)  # a.test is gone: refused, then marked down
        st.wait_for(lambda: [r for r in acct(d, "transient", "r1@a.test")
                             if "marked down" in (r["text"] or "")], 30,
                    what="a.test marked down")
        try:
            wait_acct(d, "expired", n=3, timeout=150)
        except TimeoutError:
            recs = ["%s %s %s %s" % (r["type"], r["recipient"], r["attempt"], r.get("text"))
                    for r in d.accounting()[-12:]]
            raise AssertionError("no expiry: running=%s\n%s\n--- stderr ---\n%s"
                                 % (d.running(), "\n".join(recs), d.stderr()[-6000:]))
        self.assertGreaterEqual(time.monotonic() - t0, 55)
        got = self.dsns(home, 1, timeout=30)
        self.assertEqual(len(got), 1, "one DSN at expiry, got %d" % len(got))
        rep = got[0][2]
        self.assertEqual(len(rep.recipients), 3)
        for addr in ("r1@a.test", "r2@a.test", "r3@b.test"):
            r = rep.recipient(addr)
            self.assertEqual(r["action"], "failed")
            self.assertEqual(r["status"], "4.4.7")
            self.assertEqual(r["diagnostic-code"], "smtp; 451 4.3.0 Temporary lookup failure")
            self.assertEqual(r["remote-mta"], "dns; 127.0.0.1")
        self.assertIn("last attempt: destination marked down", rep.human)
        d.wait_queue(0)
        d.stop()

    # -- RFC 3461 on the way out, and in the DSNs we write

    def test_dsn_parameters_go_to_a_next_hop_with_dsn_only(self):
        withdsn = self.peer(dsn=True)
        nodsn = self.peer()
        d = self.daemon({"b.test": withdsn, "c.test": nodsn})
        params = [("n1@%s", ["NOTIFY=NEVER"]),
                  ("n2@%s", ["NOTIFY=SUCCESS,DELAY", "ORCPT=rfc822;n2+2Bx@orig.test"]),
                  ("n3@%s", [])]
        for dom, ret in (("b.test", "RET=HDRS"), ("c.test", "RET=FULL")):
            submit(d, "owner@s.test", [(a % dom, p) for a, p in params],
                   message("owner@s.test", "n1@" + dom, "params " + dom),
                   mail_opts=[ret, "ENVID=ab+2Bc"])
        rec, _ = withdsn.wait_messages(1)[0]
        self.assertIn("RET=HDRS", rec["mail_params"])
        self.assertIn("ENVID=ab+2Bc", rec["mail_params"])
        by = {r["addr"]: r["params"] for r in rec["rcpts"]}
        self.assertEqual(by["n1@b.test"], ["NOTIFY=NEVER"])
        self.assertEqual(sorted(by["n2@b.test"]),
                         ["NOTIFY=SUCCESS,DELAY", "ORCPT=rfc822;n2+2Bx@orig.test"])
        self.assertEqual(by["n3@b.test"], [])
        rec, _ = nodsn.wait_messages(1)[0]
        sent = " ".join(rec["mail_params"] + [p for r in rec["rcpts"] for p in r["params"]])
        for word in ("RET=", "ENVID=", "NOTIFY=", "ORCPT="):
            self.assertNotIn(word, sent)
        self.assertEqual(sorted(r["addr"] for r in rec["rcpts"]),
                         ["n1@c.test", "n2@c.test", "n3@c.test"])
        d.stop()

    def test_relayed_dsn_for_notify_success_without_dsn_next_hop(self):
        """NOTIFY=SUCCESS: a next hop without DSN gets the message and the
        sender a "relayed" DSN from us (RFC 3461 5.2.2); a next hop with
        DSN gets NOTIFY and reports success itself: no DSN from us."""
        nodsn = self.peer()
        withdsn = self.peer(dsn=True)
        home = self.peer()
        d = self.daemon({"a.test": nodsn, "b.test": withdsn, "s.test": home})
        submit(d, "owner@s.test",
               [("x@a.test", ["NOTIFY=SUCCESS"]), ("y@b.test", ["NOTIFY=SUCCESS,FAILURE"]),
                ("z@a.test", [])],
               message("owner@s.test", "x@a.test", "notify success"), mail_opts=["RET=FULL"])
        got = self.dsns(home, 1)
        self.assertEqual(len(got), 1)
        rep = got[0][2]
        self.assertEqual(len(rep.recipients), 1)
        r = rep.recipient("x@a.test")
        self.assertEqual(r["action"], "relayed")
        self.assertTrue(r["status"].startswith("2."), r)
        self.assertEqual(r["remote-mta"], "dns; 127.0.0.1")
        self.assertTrue(r["diagnostic-code"].startswith("smtp; 250"), r)
        # a success report returns the header only, whatever RET says
        self.assertIn(rep.returned_type, ("text/rfc822-headers",))
        self.assertIn("Successful", rep.msg["Subject"])
        rec, _ = withdsn.wait_messages(1)[0]
        self.assertEqual(rec["rcpts"][0]["params"], ["NOTIFY=SUCCESS,FAILURE"])
        d.wait_queue(0)
        d.stop()

    def test_envid_and_orcpt_decoded_in_the_dsn(self):
        dest = self.peer(rcpt_reply=["*@a.test=550 5.1.1 No such user"])
        home = self.peer()
        d = self.daemon({"a.test": dest, "s.test": home})
        body = "The whole message comes back.\r\n"
        submit(d, "owner@s.test",
               [("bob+x@a.test", ["NOTIFY=FAILURE", "ORCPT=rfc822;bob+2Bx@a.test"])],
               message("owner@s.test", "bob+x@a.test", "envid", body=body),
               mail_opts=["RET=FULL", "ENVID=QQ+2B1+3Dz"])
        rep = self.dsns(home, 1)[0][2]
        self.assertEqual(rep.per_message["original-envelope-id"], "QQ+1=z")
        r = rep.recipient("bob+x@a.test")
        self.assertEqual(r["original-recipient"], "rfc822; bob+x@a.test")
        self.assertEqual(rep.returned_type, "message/rfc822")
        self.assertIn(body.encode(), rep.returned)
        d.stop()

    # -- local failures, UTF-8 and 8-bit

    def test_local_failure_dsn_to_a_utf8_sender(self):
        """SMTPUTF8 mail to a server without SMTPUTF8 bounces 5.6.7 here:
        the DSN says so in our words (no "host ... said", no Remote-MTA),
        is a message/global-delivery-status (RFC 6533) and goes out with
        SMTPUTF8 on its own MAIL command, to the UTF-8 sender."""
        dest = self.peer()  # no SMTPUTF8
        home = self.peer(smtputf8=True)
        d = self.daemon({"a.test": dest, "s.test": home})
        sender = "s\u00e9nder@s.test"
        data = ("From: <%s>\r\nTo: <bob@a.test>\r\nSubject: caf\u00e9\r\n"
                "Message-ID: <u8@s.test>\r\n\r\nBonjour.\r\n" % sender).encode()
        submit(d, sender, [("bob@a.test", [])], data, mail_opts=["SMTPUTF8", "BODY=8BITMIME"])
        rec = wait_acct(d, "bounce", "bob@a.test")[0]
        self.assertEqual(rec["status"], "5.6.7")
        got = self.dsns(home, 1)
        self.assertEqual(len(got), 1)
        rec, raw, rep = got[0]
        self.assertIn("SMTPUTF8", rec["mail_params"])
        self.assertEqual([r["addr"] for r in rec["rcpts"]], [sender])
        self.assertEqual(rep.report_type, "message/global-delivery-status")
        self.assertEqual(rep.returned_type, "message/global-headers")
        self.assertIn("caf\u00e9".encode(), rep.returned)
        r = rep.recipient("bob@a.test")
        self.assertEqual(r["status"], "5.6.7")
        self.assertNotIn("remote-mta", r)
        self.assertTrue(r["diagnostic-code"].lower().startswith("x-sluice;"), r)
        self.assertNotIn("said", rep.human)
        self.assertEqual(dest.messages(), [])
        d.stop()

    def test_dsn_about_8bit_mail_says_8bitmime(self):
        dest = self.peer(rcpt_reply=["*@a.test=550 5.1.1 No such user"])
        home = self.peer()
        d = self.daemon({"a.test": dest, "s.test": home})
        body = "Gr\u00fc\u00dfe aus K\u00f6ln.\r\n"
        submit(d, "owner@s.test", [("eve@a.test", [])],
               message("owner@s.test", "eve@a.test", "eight bit", body=body,
                       extra="Content-Type: text/plain; charset=utf-8\r\n"
                             "Content-Transfer-Encoding: 8bit\r\n"),
               mail_opts=["BODY=8BITMIME", "RET=FULL"])
        rec, raw, rep = self.dsns(home, 1)[0]
        self.assertIn("BODY=8BITMIME", rec["mail_params"])
        self.assertEqual(rep.report_type, "message/delivery-status")
        self.assertEqual(rep.returned_type, "message/rfc822")
        self.assertIn(body.encode(), rep.returned)
        d.stop()


if __name__ == "__main__":
    unittest.main(verbosity=2)
