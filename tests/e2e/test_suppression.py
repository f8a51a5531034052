#!/usr/bin/python3
"""End-to-end tests of the suppression list (docs/bounces-in.md), as an
operator and a sending platform see it.

An aiosmtpd peer we did not write (st.Peer) answers 550 5.1.1 for some
recipients: the bounce record says bad-mailbox, the address is on the list
(`sluicectl suppress check`), and the next message to it is refused at RCPT
with 550 5.7.1 (action reject) or accepted and dropped with a `suppressed`
record (action drop) and never reaches the peer - but the null sender and
postmaster still get through. The operator's add / remove / list / scope,
and an import and export of 100,000 addresses that round-trips. Every
record is checked against its schema in docs/records.md.
Every process started here is stopped by pid before the test ends.
"""
import csv
import io
import os
import smtplib
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sluicetest as st  # noqa: E402
from test_delivery import FAST_QUEUE, acct, make_daemon, wait_acct  # noqa: E402
from test_records import load_schemas  # noqa: E402

import jsonschema  # noqa: E402


def message(sender, to, subject):
    return ("From: <%s>\r\nTo: <%s>\r\nSubject: %s\r\nDate: Fri, 27 Nov 2026 07:00:00 +0000\r\n"
            "Message-ID: <%s@s.test>\r\n\r\nHello.\r\n"
            % (sender, to, subject, subject.replace(" ", "-"))).encode()


def suppression(action):
    return "suppression {\n    enabled = true;\n    action = %s;\n}\n" % action


class SuppressionTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.schemas, cls.store = load_schemas()

    def setUp(self):
        self.cleanups = []

    def tearDown(self):
        for fn in reversed(self.cleanups):
            try:
                fn()
            except Exception:
                pass

    def peer(self, **kw):
        p = st.Peer(prefix="supp-peer-", **kw)
        self.cleanups.append(lambda: p.stop(check=False))
        return p

    def daemon(self, routes, action="reject"):
        d = make_daemon(routes={k: "127.0.0.1:%d" % p.port for k, p in routes.items()},
                        queue=FAST_QUEUE + suppression(action))
        self.cleanups.append(d.cleanup)
        d.start()
        return d

    def validate(self, name, value):
        v = jsonschema.Draft202012Validator(
            self.schemas[name], resolver=jsonschema.RefResolver.from_schema(
                self.schemas[name], store=self.store))
        errs = sorted(v.iter_errors(value), key=str)
        self.assertEqual(errs, [], value)

    def ctl(self, d, *args, rc=0):
        r = d.ctl("suppress", *args)
        self.assertEqual(r.returncode, rc, (args, r.out, r.err))
        return r.out

    def rcpt_replies(self, d, sender, rcpts):
        """MAIL, then RCPT for each; returns [(code, text)] and resets."""
        with d.smtp() as c:
            c.ehlo("client.test")
            code, text = c.mail(sender)
            self.assertEqual(code, 250, text)
            out = [c.rcpt(a) for a in rcpts]
            c.rset()
        return out

    # -- synchronous bounces feed the list; reject at RCPT

    def test_bounce_suppresses_and_next_rcpt_is_rejected(self):
        dest = self.peer(rcpt_reply=["bad*@a.test=550 5.1.1 No such user",
                                     "full@a.test=452 4.2.2 Mailbox full"])
        home = self.peer()
        d = self.daemon({"a.test": dest, "s.test": home})
        with d.smtp() as c:
            c.sendmail("owner@s.test", ["bad1@a.test", "good@a.test", "full@a.test"],
                       message("owner@s.test", "list@a.test", "first"))
        b = wait_acct(d, "bounce", "bad1@a.test")[0]
        self.assertEqual(b["category"], "bad-mailbox")
        wait_acct(d, "delivery", "good@a.test")
        wait_acct(d, "transient", "full@a.test")
        out = self.ctl(d, "check", "BAD1@A.test")
        self.assertIn("bad1@a.test: suppressed (bad-mailbox) in the global list", out)
        # a deferral (quota) suppresses nothing, nor does a delivery
        self.assertIn("not suppressed", self.ctl(d, "check", "full@a.test"))
        self.assertIn("not suppressed", self.ctl(d, "check", "good@a.test"))
        # the entry names the bounce that made it
        j = d.ctl("suppress", "check", "bad1@a.test", json=True).data
        self.assertEqual(j["entries"][0]["source"], "%s/0" % b["msgid"])
        self.validate("ctl/suppress-check", j)

        # the next message: the address is refused, in any case, the rest goes on
        got = self.rcpt_replies(d, "owner@s.test", ["Bad1@A.TEST", "good@a.test"])
        self.assertEqual(got[0][0], 550)
        self.assertIn(b"5.7.1", got[0][1])
        self.assertIn(b"suppressed", got[0][1])
        self.assertEqual(got[1][0], 250)
        # never for the null sender, never for postmaster
        self.ctl(d, "add", "postmaster@a.test")
        self.assertEqual(self.rcpt_replies(d, "", ["bad1@a.test"])[0][0], 250)
        self.assertEqual(self.rcpt_replies(d, "owner@s.test", ["postmaster@a.test"])[0][0], 250)
        m = d.ctl("metrics").out
        self.assertIn("sluice_suppression_hits_total 1\n", m)
        self.assertIn("sluice_suppression_entries 2\n", m)
        d.stop()

    # -- drop: 250, a record, no delivery

    def test_drop_accepts_records_and_never_delivers(self):
        dest = self.peer()
        d = self.daemon({"a.test": dest}, action="drop")
        self.assertEqual(self.ctl(d, "add", "gone@a.test", "--reason", "complaint"),
                         "added 1\n")
        with d.smtp() as c:
            refused = c.sendmail("owner@s.test", ["gone@a.test", "here@a.test"],
                                 message("owner@s.test", "here@a.test", "mixed"))
            self.assertEqual(refused, {})
            code, text = c.mail("owner@s.test")
            self.assertEqual(c.rcpt("GONE@a.test")[0], 250)
            code, text = c.data(message("owner@s.test", "gone@a.test", "only dropped"))
            self.assertEqual(code, 250, text)
            self.assertIn(b"queued as", text)
        wait_acct(d, "delivery", "here@a.test")
        recs = wait_acct(d, "suppressed", n=2)
        self.assertEqual(sorted(r["recipient"] for r in recs), ["GONE@a.test", "gone@a.test"])
        for r in recs:
            self.validate("acct/suppressed", r)
            self.assertEqual((r["action"], r["reason"], r["scope"], r["source"]),
                             ("drop", "complaint", None, "operator"))
        # nothing but here@ reached the peer, and nothing is left queued
        msgs = dest.messages()
        self.assertEqual([[x["addr"] for x in rec["rcpts"]] for rec, _ in msgs],
                         [["here@a.test"]])
        d.wait_queue(0)
        # the dropped message was never received into the spool
        self.assertEqual(len(acct(d, "received")), 1)
        d.stop()

    # -- the operator's commands

    def test_add_remove_list_scopes(self):
        d = self.daemon({})
        self.assertEqual(self.ctl(d, "add", "a@x.test", "b@x.test", "--scope", "tenant1",
                                  "--reason", "operator"), "added 2\n")
        self.assertEqual(self.ctl(d, "add", "a@x.test", "--expires", "30d"), "added 1\n")
        out = self.ctl(d, "check", "a@x.test")
        self.assertIn("a@x.test: suppressed (operator) in the global list", out)
        self.assertIn("a@x.test: suppressed (operator) in tenant1", out)
        # b@ is only in tenant1's list: the global list lets it through
        self.assertEqual(self.rcpt_replies(d, "s@s.test", ["b@x.test"])[0][0], 250)
        lst = self.ctl(d, "list", "--scope", "tenant1").splitlines()
        self.assertEqual([l.split()[0] for l in lst[1:]], ["a@x.test", "b@x.test"])
        j = d.ctl("suppress", "list", "--limit", "1", json=True).data
        self.validate("ctl/suppress-list", j)
        self.assertEqual(j["total"], 3)
        self.assertEqual(len(j["entries"]), 1)
        self.assertIsNotNone(j["next"])
        glob = [e for e in d.ctl("suppress", "check", "a@x.test", json=True).data["entries"]
                if e["scope"] is None][0]
        self.assertIsNotNone(glob["expires"])
        self.assertEqual(self.ctl(d, "remove", "a@x.test", "--scope", "tenant1"), "removed 1\n")
        self.assertEqual(self.ctl(d, "remove", "a@x.test", "b@x.test"), "removed 2\n")
        self.assertIn("not suppressed", self.ctl(d, "check", "a@x.test"))
        # bad input: a clear message and exit code 1, nothing changed
        r = d.ctl("suppress", "add", "no-at-sign")
        self.assertEqual(r.returncode, 1)
        self.assertIn('invalid address "no-at-sign"', r.err)
        r = d.ctl("suppress", "add", "x@y.test", "--reason", "Not Valid")
        self.assertEqual(r.returncode, 1)
        self.assertIn("invalid reason", r.err)
        r = d.ctl("suppress", "frobnicate")
        self.assertEqual(r.returncode, 2)
        d.stop()

    # -- the HTTP injection API consults the same list

    def test_http_injection_is_refused_for_suppressed_recipients(self):
        dest = self.peer()
        port = st.free_port()
        d = make_daemon(routes={"a.test": "127.0.0.1:%d" % dest.port},
                        queue=FAST_QUEUE + suppression("drop") + st.http_conf(port))
        self.cleanups.append(d.cleanup)
        d.start()
        self.assertEqual(self.ctl(d, "add", "gone@a.test"), "added 1\n")
        tok = [t for t, sc in st.HTTP_TOKENS.items() if sc == "inject"][0]
        body = {"envelope_sender": "s@s.test",
                "recipients": [{"email": "gone@a.test", "substitutions": {"n": "1"}},
                               {"email": "here@a.test", "substitutions": {"n": "2"}}],
                "content": {"from": {"email": "s@s.test"}, "subject": "n={{ n }}",
                            "text_body": "n={{ n }}\n"}}
        s, _, ans = st.http_json(port, "POST", "/api/inject/v1", body, tok)
        self.assertEqual(s, 200, ans)
        self.validate("http/inject", ans)
        # whatever suppression.action says, an HTTP client is told (no silent drop)
        self.assertEqual((ans["success_count"], ans["fail_count"]), (1, 1), ans)
        self.assertEqual(ans["failed_recipients"], ["gone@a.test"])
        self.assertIn("suppressed", ans["errors"][0])
        self.assertEqual(len(ans["message_ids"]), 1)
        rec, raw = dest.wait_messages(1)[0]
        self.assertEqual([r["addr"] for r in rec["rcpts"]], ["here@a.test"])
        self.assertIn(b"n=2", raw)
        # nobody left: a JSON error naming the field, nothing queued
        body["recipients"] = body["recipients"][:1]
        received = d.status()["queue"]["received"]
        s, _, ans = st.http_json(port, "POST", "/api/inject/v1", body, tok)
        self.assertEqual(s, 422, ans)
        self.validate("http/error", ans)
        self.assertEqual((ans["error"]["code"], ans["error"]["field"]),
                         ("suppressed", "recipients"), ans)
        self.assertEqual(d.status()["queue"]["received"], received)
        d.stop()
        self.assertEqual(len(dest.messages()), 1)

    # -- import and export of 100,000 addresses

    def test_import_export_100k_round_trip(self):
        d = self.daemon({})
        path = os.path.join(d.dir, "list.csv")
        want = set()
        with open(path, "w") as f:
            f.write("address,reason,time,scope\n")
            for i in range(100000):
                a = "user%06d@dom%03d.test" % (i, i % 997)
                want.add(a)
                scope = "t%d" % (i % 3) if i % 10 == 0 else ""
                f.write("%s,%s,2026-11-%02dT10:00:00Z,%s\n"
                        % (a.upper() if i % 7 == 0 else a, "import" if i % 2 else "bad-mailbox",
                           1 + i % 28, scope))
            f.write('"""quoted,user""@dom.test",operator,,\n')
            f.write("not-an-address,import,,\n")
        want.add('"quoted,user"@dom.test')
        t0 = time.monotonic()
        r = d.ctl("suppress", "import", path, timeout=120)
        took = time.monotonic() - t0
        self.assertEqual(r.returncode, 0, r.err)
        self.assertIn("imported 100001 addresses, skipped 1 lines", r.out)
        self.assertIn('invalid address "not-an-address"', r.err)
        sys.stderr.write("[import of 100,001 addresses: %.2f s] " % took)

        r = d.ctl("suppress", "export", timeout=120)
        self.assertEqual(r.returncode, 0, r.err)
        rows = list(csv.reader(io.StringIO(r.out)))
        self.assertEqual(rows[0], ["address", "reason", "time", "scope"])
        got = {row[0] for row in rows[1:]}
        self.assertEqual(len(rows) - 1, 100001)
        self.assertEqual(got, want)
        by = {row[0]: row for row in rows[1:]}
        self.assertEqual(by["user000010@dom010.test"],
                         ["user000010@dom010.test", "bad-mailbox", "2026-11-11T10:00:00.000Z", "t1"])
        self.assertEqual(by["user000007@dom007.test"][1:], ["import", "2026-11-08T10:00:00.000Z", ""])
        # the export imports again into a fresh daemon as the same list
        out = os.path.join(d.dir, "export.csv")
        with open(out, "w") as f:
            f.write(r.out)
        d2 = self.daemon({})
        r2 = d2.ctl("suppress", "import", out, timeout=120)
        self.assertIn("imported 100001 addresses, skipped 0 lines", r2.out)
        r3 = d2.ctl("suppress", "export", timeout=120)
        self.assertEqual(r3.out, r.out)
        self.assertIn("sluice_suppression_entries 100001\n", d2.ctl("metrics").out)
        d2.stop()
        d.stop()


if __name__ == "__main__":
    st.main()
