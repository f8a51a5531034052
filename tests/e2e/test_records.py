#!/usr/bin/python3
"""Every accounting record and every control answer of a representative
run, checked against the JSON Schemas of docs/records.md.

The schemas are read from docs/records.md itself (each ```json block after
a "<!-- schema: NAME -->" line), so the page and the daemon cannot drift
apart. The run: a receiving server we did not write (aiosmtpd with
STARTTLS) that accepts, bounces (550), defers (450) and trips shaping rules
(backoff, disable-source, suspend); queue.max_age at its minimum (1m) so
that a deferred recipient expires (the run takes a little over a minute); a held domain bounced by the operator; DSN
options and a job. Then every record type of the accounting log
(received, delivery, transient, bounce, expired, admin_bounce, shaping)
and every control command's answer is validated, and the forms are
spot-checked where a schema cannot say it alone (a null last_code before
any attempt, "until resumed" as null, one form of time everywhere).

Env: SLUICE_BUILD (binaries), SLUICE_SRC.
"""
import json
import os
import re
import smtplib
import sys
import time
import unittest

import jsonschema

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sluicetest as st  # noqa: E402

RECORDS_MD = os.path.join(st.SRC, "docs", "records.md")
TIME_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")

SHAPING = """
virtual_mtas { v1 { source = "127.0.0.1"; } }
pools { main { members = [v1]; } }
default_pool = main;
providers {
    peerprov {
        domains = ["example.test"];
        backoff { message_rate = "600/1m"; max_connections = 2; }
        rule { match = '^450 .*try later'; action = backoff; }
    }
    disprov {
        domains = ["dis.test"];
        rule { match = 'listed here'; action = disable-source; duration = 10m; }
    }
    susprov {
        domains = ["susp.test"];
        rule { match = 'go away'; action = suspend; duration = 10m; }
    }
}
"""


def load_schemas():
    """{name: schema} of docs/records.md, and a resolver that finds each
    by its "$id" (sluice:NAME)."""
    with open(RECORDS_MD) as f:
        text = f.read()
    schemas = {}
    for m in re.finditer(r"<!-- schema: (\S+) -->\n```json\n(.*?)```", text, re.S):
        s = json.loads(m.group(2))
        assert s.get("$id") == "sluice:" + m.group(1), m.group(1)
        jsonschema.Draft202012Validator.check_schema(s)
        schemas[m.group(1)] = s
    store = {s["$id"]: s for s in schemas.values()}
    return schemas, store


class RecordsTest(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        cls.schemas, cls.store = load_schemas()
        cls.answers = []  # (schema name, answer)
        cls.peer = st.Peer(starttls=True, dsn=True, pipelining=True,
                           rcpt_reply=["bad*@example.test=550 5.1.1 no such user",
                                       "soft*@example.test=450 4.2.0 try later",
                                       "*@dis.test=451 4.7.1 listed here",
                                       "*@susp.test=421 4.7.0 go away"])
        peer = "127.0.0.1:%d" % cls.peer.port
        # a webhook whose first batch is refused (400): a webhook_parked
        # record, and the stream's records are the file's (#14)
        cls.recv = st.WebhookReceiver("records-secret-0123456789")
        cls.recv.fail_next = [400]
        cls.d = st.Daemon(routes={"example.test": peer, "example.com": peer, "dis.test": peer,
                                  "susp.test": peer, "hold.test": "127.0.0.1:%d" % st.free_port()},
                          extra_conf='queue {\n    max_age = 1m;\n    retry = "2s";\n'
                                     '    retry_jitter = 0;\n    scan_interval = 100ms;\n}\n'
                                     + st.webhook_conf("rec", cls.recv.url,
                                                       "records-secret-0123456789",
                                                       cls.recv.cert, batch=5))
        try:
            shaping = os.path.join(cls.d.dir, "shaping.conf")
            with open(shaping, "w") as f:
                f.write(SHAPING)
            with open(cls.d.conf_path) as f:
                conf = f.read()
            with open(cls.d.conf_path, "w") as f:
                f.write(conf.replace("delivery {\n", 'delivery {\n    shaping = "%s";\n' % shaping,
                                     1).replace("log {\n", 'log {\n    header_fields = '
                                                '["X-Campaign-Id", "X-Customer"];\n', 1))
            cls.d.start()
            cls.run_scenario()
        except Exception:
            cls.tearDownClass()
            raise

    @classmethod
    def ask(cls, name, request):
        raw = st.ctl_raw(cls.d.ctl_socket, request)
        ans = st.strict_json(raw)
        cls.answers.append((name, request, ans))
        return ans

    @classmethod
    def inspect_listed(cls, mid):
        """inspect a message `list` showed: it may have been delivered (or
        its DSN sent) between the two requests; then the answer is the
        error answer, and the message must be gone from the list."""
        req = {"cmd": "inspect", "id": mid}
        ans = st.strict_json(st.ctl_raw(cls.d.ctl_socket, req))
        if ans.get("ok") is False and "not found" in str(ans.get("error")):
            ids = [m["id"] for m in cls.d.list()["messages"]]
            assert mid not in ids, "inspect said not found for a listed message: %r" % ans
            cls.answers.append(("ctl/error", req, ans))
        else:
            cls.answers.append(("ctl/inspect", req, ans))
        return ans

    @classmethod
    def send(cls, rcpts, job=None, **kw):
        head = ("From: sender@example.com\r\nSubject: records\r\n"
                "Message-ID: <%s@records.test>\r\nX-Campaign-Id: camp-%s\r\n"
                % (rcpts[0].split("@")[0], job or "none"))
        if job:
            head += "X-Sluice-Job: %s\r\n" % job
        with cls.d.smtp() as s:
            s.ehlo("client.test")
            s.sendmail("sender@example.com", rcpts, head + "\r\nbody\r\n", **kw)

    @classmethod
    def acct(cls):
        return [st.strict_json(l) for l in st.acct_raw_lines(cls.d.acct_dir)]

    @classmethod
    def run_scenario(cls):
        d = cls.d
        cls.ask("ctl/suspended", {"cmd": "suspend", "domain": "hold.test", "for": "1h"})
        cls.send(["held@hold.test"], job="j-held",
                 mail_options=["RET=HDRS", "ENVID=env-1"],
                 rcpt_options=["NOTIFY=FAILURE", "ORCPT=rfc822;orig@hold.test"])
        held = [m for m in d.list()["messages"] if m["job"] == "j-held"][0]["id"]
        # before any attempt: last_* are null
        cls.ask("ctl/inspect", {"cmd": "inspect", "id": held})
        cls.ask("ctl/queue", {"cmd": "queue", "domain": "hold.test"})
        cls.ask("ctl/queue", {"cmd": "queue", "domain": "nothing.test"})
        cls.send(["ok1@example.test", "bad1@example.test"], job="j1")
        cls.send(["soft1@example.test"])
        cls.send(["x@dis.test"])
        cls.send(["y@susp.test"])

        def outcomes():
            types = {r["type"] for r in cls.acct()}
            events = {r.get("event") for r in cls.acct() if r["type"] == "shaping"}
            return ({"delivery", "bounce", "transient", "expired"} <= types
                    and {"backoff", "disable-source", "suspend"} <= events)
        # queue.max_age is at least a minute: the expired records come last
        st.wait_for(outcomes, 150, interval=0.5,
                    what="delivery, bounce, transient, expired and shaping records")
        cls.ask("ctl/status", {"cmd": "status"})
        cls.ask("ctl/list", {"cmd": "list"})
        for m in d.list()["messages"]:
            cls.inspect_listed(m["id"])
        cls.ask("ctl/check", {"cmd": "check"})
        cls.ask("ctl/queues", {"cmd": "queues"})
        cls.ask("ctl/queue", {"cmd": "queue", "domain": "dis.test"})
        cls.ask("ctl/providers", {"cmd": "providers"})
        cls.ask("ctl/cluster", {"cmd": "cluster"})  # #17: one node here (test_cluster*: several)
        st.wait_for(lambda: any(r["type"] == "webhook_parked" for r in cls.acct()), 30,
                    what="the webhook_parked record")
        cls.ask("ctl/events", {"cmd": "events"})
        cls.ask("ctl/events", {"cmd": "events", "unpark": "rec"})
        cls.ask("ctl/tlsrpt", {"cmd": "tlsrpt"})  # #19: reports.tlsrpt is off here
        cls.ask("ctl/tlsrpt-send", {"cmd": "tlsrpt", "args": ["send", "--now"]})
        cls.ask("ctl/suspend-shaping", {"cmd": "suspend", "provider": "peerprov", "for": "10m"})
        cls.ask("ctl/suspend-shaping", {"cmd": "suspend", "vmta": "v1"})
        cls.ask("ctl/suspended", {"cmd": "suspended"})
        cls.suspended_human = d.ctl("suspended").check().out
        cls.ask("ctl/providers", {"cmd": "providers"})
        cls.ask("ctl/resume-shaping", {"cmd": "resume", "provider": "peerprov"})
        cls.ask("ctl/resume-shaping", {"cmd": "resume", "vmta": "v1"})
        cls.ask("ctl/retry", {"cmd": "retry", "all": True})
        cls.ask("ctl/bounce", {"cmd": "bounce", "domain": "hold.test"})
        st.wait_for(lambda: any(r["type"] == "admin_bounce" for r in cls.acct()), 30,
                    what="the admin_bounce record")
        cls.ask("ctl/resume", {"cmd": "resume", "domain": "hold.test"})
        cls.ask("ctl/reload", {"cmd": "reload"})
        cls.ask("ctl/log-rotate", {"cmd": "log-rotate"})
        cls.ask("ctl/metrics", {"cmd": "metrics"})
        # the suppression list (#15, docs/bounces-in.md)
        cls.ask("ctl/suppress-change", {"cmd": "suppress", "op": "add",
                                        "addresses": ["sup@example.test"], "expires": "1d"})
        cls.ask("ctl/suppress-check", {"cmd": "suppress", "op": "check",
                                       "address": "sup@example.test"})
        cls.ask("ctl/suppress-list", {"cmd": "suppress", "op": "list", "limit": 10})
        csv_path = os.path.join(d.dir, "supp.csv")
        with open(csv_path, "w") as f:
            f.write("address,reason,time,scope\nimp@example.test,import,,t1\nbad\n")
        cls.ask("ctl/suppress-import", {"cmd": "suppress", "op": "import", "file": csv_path})
        cls.ask("ctl/suppress-change", {"cmd": "suppress", "op": "remove",
                                        "address": "sup@example.test"})
        cls.ask("ctl/error", {"cmd": "nosuch"})
        cls.ask("ctl/error", {"cmd": "inspect", "id": "0000000000000001"})
        cls.ask("ctl/ok", {"cmd": "shutdown"})
        d.wait(60)
        d.check_clean_exit()

    @classmethod
    def tearDownClass(cls):
        try:
            if cls.d.running():
                cls.d.stop()
        finally:
            cls.d.cleanup()
            cls.peer.stop()
            cls.recv.stop()

    def validate(self, name, value, where):
        v = jsonschema.Draft202012Validator(
            self.schemas[name], resolver=jsonschema.RefResolver.from_schema(
                self.schemas[name], store=self.store))
        errors = sorted(v.iter_errors(value), key=lambda e: list(e.path))
        if errors:
            self.fail("%s does not match %s:\n%s\n%s" % (
                where, name, "\n".join("  at /%s: %s" % ("/".join(map(str, e.path)), e.message)
                                       for e in errors[:10]),
                json.dumps(value)[:2000]))

    def test_every_accounting_record_matches_its_schema(self):
        recs = self.acct()
        seen = {}
        for r in recs:
            t = r.get("type")
            name = {"received": "acct/received", "shaping": "acct/shaping",
                    "suspended": "acct/suspended", "resumed": "acct/suspended",
                    "webhook_parked": "acct/webhook_parked",
                    "events_dropped": "acct/events_dropped",
                    "suppressed": "acct/suppressed", "remote_bounce": "acct/remote_bounce",
                    "complaint": "acct/complaint",
                    "inbound_unmatched": "acct/inbound_unmatched"}.get(t, "acct/outcome")
            self.validate(name, r, "accounting record %s" % t)
            seen[t] = seen.get(t, 0) + 1
        self.assertEqual(set(seen), {"received", "delivery", "transient", "bounce", "expired",
                                     "admin_bounce", "shaping", "suspended", "resumed",
                                     "webhook_parked"}, seen)

    def test_the_webhook_got_the_records_of_the_file(self):
        # every record the webhook acknowledged is one of the file's, byte
        # for byte as JSON; the refused first batch was parked
        recs = self.acct()
        got = [r for q in self.recv.all_requests() for r in (q["records"] or [])]
        self.assertTrue(got)
        self.assertTrue(all(r in recs for r in got), [r for r in got if r not in recs][:2])
        self.assertEqual(self.recv.bad_signatures, 0)
        self.assertEqual([q["status"] for q in self.recv.all_requests()][0], 400)

    def test_the_fields_platforms_key_on(self):
        recs = self.acct()
        ok = [r for r in recs if r["type"] == "delivery" and r["recipient"] == "ok1@example.test"]
        self.assertEqual(len(ok), 1, recs)
        r = ok[0]
        self.assertEqual((r["vmta"], r["pool"], r["provider"], r["message_id"], r["dsn_action"],
                          r["txn_recipients"], r["headers"]),
                         ("v1", "main", "peerprov", "<ok1@records.test>", "relayed", 2,
                          {"x-campaign-id": "camp-j1", "x-customer": None}))
        rcv = [x for x in recs if x["type"] == "received" and x["msgid"] == r["msgid"]][0]
        self.assertEqual(r["size"], rcv["size"])
        self.assertEqual(st.unix_time(r["arrival"]) // 1, st.unix_time(rcv["time"]) // 1)
        ab = [x for x in recs if x["type"] == "admin_bounce"][0]
        self.assertEqual((ab["envid"], ab["orcpt"], ab["dsn_action"], ab["vmta"], ab["pool"],
                          ab["txn_recipients"]),
                         ("env-1", "rfc822;orig@hold.test", "failed", None, None, 0))
        tr = [x for x in recs if x["type"] == "transient"]
        self.assertTrue(tr and all(x["dsn_action"] == "delayed" for x in tr))
        ex = [x for x in recs if x["type"] == "expired"]
        self.assertTrue(ex and all(x["dsn_action"] == "failed" for x in ex))
        susp = [(x["type"], x["scope"], x["name"], x["until"] is not None, x["holds_removed"])
                for x in recs if x["type"] in ("suspended", "resumed")]
        self.assertEqual(susp, [("suspended", "domain", "hold.test", True, 0),
                                ("resumed", "domain", "hold.test", False, 1)])

    def test_every_control_answer_matches_its_schema(self):
        names = set()
        for name, req, ans in self.answers:
            self.validate(name, ans, "answer to %s" % json.dumps(req))
            names.add(name)
        self.assertEqual(names, {n for n in self.schemas if n.startswith("ctl/")})

    def test_forms_the_schemas_rely_on(self):
        recs = self.acct()
        # one form of time everywhere, including the retry time of a transient
        for r in recs:
            self.assertRegex(r["time"], TIME_RE)
        tr = [r for r in recs if r["type"] == "transient"]
        self.assertTrue(all(TIME_RE.match(r["next_attempt"]) for r in tr), tr)
        # TLS with the peer: the version and cipher; no TLS is null, not ""
        ok = [r for r in recs if r["type"] == "delivery" and r["recipient"] == "ok1@example.test"]
        self.assertEqual(len(ok), 1, recs)
        self.assertRegex(ok[0]["tls"], r"^TLSv1\.[23]$")
        self.assertEqual((ok[0]["code"], ok[0]["job"], ok[0]["next_attempt"]), (250, "j1", None))
        ab = [r for r in recs if r["type"] == "admin_bounce"]
        self.assertEqual([(r["recipient"], r["code"], r["mx"], r["tls"]) for r in ab],
                         [("held@hold.test", None, None, None)])
        # envelope options kept; the null sender of a DSN is "", not null
        rcv = {tuple(r["rcpts"]): r for r in recs if r["type"] == "received"}
        self.assertEqual(rcv[("held@hold.test",)]["envid"], "env-1")
        self.assertEqual(rcv[("soft1@example.test",)]["envid"], None)
        dsn = [r for r in recs if r["type"] == "delivery" and r["recipient"] == "sender@example.com"]
        self.assertTrue(dsn, recs)
        self.assertTrue(all(r["sender"] == "" for r in dsn), dsn)
        # a provider-wide shaping event (a rule's or the operator's suspend)
        # has no vmta, mode or rate
        susp = [r for r in recs if r["type"] == "shaping" and r["event"] == "suspend"]
        self.assertEqual(sorted((r["provider"], r["vmta"], r["mode"], r["rate"]) for r in susp),
                         [("peerprov", None, None, None), ("susprov", None, None, None)])

    def test_answer_forms(self):
        first_inspect = [a for n, _, a in self.answers if n == "ctl/inspect"][0]
        r = first_inspect["message"]["recipients"][0]
        self.assertEqual((r["attempts"], r["last_code"], r["last_status"], r["last_text"]),
                         (0, None, None, None))
        self.assertEqual((r["orcpt"], first_inspect["message"]["envid"]),
                         ("rfc822;orig@hold.test", "env-1"))
        empty = [a for n, q, a in self.answers if n == "ctl/queue"
                 and q["domain"] == "nothing.test"][0]["domain"]
        self.assertEqual((empty["queued"], empty["oldest"], empty["last_code"],
                          empty["suspended_until"]), (0, None, None, None))
        held = [a for n, q, a in self.answers if n == "ctl/queue"
                and q["domain"] == "hold.test"][0]["domain"]
        self.assertTrue(held["suspended"])
        self.assertAlmostEqual(st.unix_time(held["suspended_until"]), time.time() + 3600,
                               delta=300)
        shaping = [a for n, q, a in self.answers if n == "ctl/suspend-shaping"]
        self.assertEqual([(a["provider"], a["vmta"], a["for"]) for a in shaping],
                         [("peerprov", None, 600), (None, "v1", None)])

    def test_suspended_lists_every_kind_with_its_expiry(self):
        holds = [a for n, q, a in self.answers if q["cmd"] == "suspended"][0]["holds"]
        got = {(h["type"], h["name"], h["provider"], h["by"], h["persistent"]) for h in holds}
        self.assertEqual(got, {("domain", "hold.test", None, "operator", True),
                               ("provider", "peerprov", None, "operator", False),
                               ("provider", "susprov", None, "rule", False),
                               ("vmta", "v1", None, "operator", False),
                               ("source", "v1", "disprov", "rule", False)})
        until = {(h["type"], h["name"]): h["until"] for h in holds}
        self.assertIsNone(until[("vmta", "v1")])  # until resumed
        now = time.time()
        for key, ttl in ((("domain", "hold.test"), 3600), (("provider", "peerprov"), 600),
                         (("provider", "susprov"), 600), (("source", "v1"), 600)):
            self.assertAlmostEqual(st.unix_time(until[key]), now + ttl, delta=120, msg=key)
        # the human form: one line each, with its expiry
        out = self.suspended_human
        when = r"until \d{4}-\d\d-\d\d \d\d:\d\d:\d\d \(in (\d+m \d+s|\d+h \d+m)\)"
        for line in (r"domain hold\.test " + when, r"provider peerprov " + when,
                     r"provider susprov " + when + r" \(by a rule\)",
                     r"vmta   v1 until resumed",
                     r"source v1 for provider disprov " + when + r" \(by a rule\)"):
            self.assertRegex(out, r"(?m)^  " + line + "$")
        self.assertEqual(len(out.splitlines()), 6, out)  # "suspended:" and the 5


if __name__ == "__main__":
    unittest.main()
