#!/usr/bin/python3
"""End-to-end tests of the tenant scope of reports that come back
(docs/bounces-in.md, "Scope of reports"): a DSN or an ARF complaint about
a tenant's message suppresses the address in that tenant's list - the
same list a synchronous hard bounce of the message would feed - not in
the global list and not in another tenant's.

Tenants by suppression.scope_header (X-Customer) and by the AUTH user
(suppression.scope = auth_user). sluice delivers with VERP to an aiosmtpd
peer we did not write (the message leaves the spool); the test then plays
the provider and mails a DSN to the VERP address, an ARF complaint that
names the message only by its returned Message-ID, and one whose
Original-Mail-From is the VERP address. What a user checks: the
remote_bounce / complaint records (their `scope`), `sluicectl suppress
check` / `list --scope`, and what the peer receives afterwards: the
other tenant's (and a tenant-less) message to the address is delivered,
the same tenant's is not.
Every process started here is stopped by pid before the test ends.
"""
import os
import re
import smtplib
import subprocess
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sluicetest as st  # noqa: E402
from test_delivery import FAST_QUEUE, acct, wait_acct  # noqa: E402
from test_inbound import KEY_HEX, sample  # noqa: E402
from test_records import load_schemas  # noqa: E402

import jsonschema  # noqa: E402


def dsn(final_rcpt, message_id):
    """The Postfix-shaped DSN for final_rcpt, returning headers with
    message_id and no X-Sluice-Id."""
    d = sample("dsn_postfix.eml")
    d = d.replace(b"rfc822; gone@a.test", b"rfc822; " + final_rcpt.encode())
    d = d.replace(b"rfc822;Gone@a.test", b"rfc822;" + final_rcpt.encode())
    d = d.replace(b"Message-ID: <m1@s.test>", b"Message-ID: " + message_id.encode())
    return d.replace(b"X-Sluice-Id: 18A2B3C4D5E6F708\r\n", b"")


def arf(rcpt, message_id, mail_from=None):
    """The Yahoo-shaped ARF complaint about rcpt, returning message_id (and
    Original-Mail-From mail_from, else a token that is not valid)."""
    a = sample("arf_yahoo_cfl.eml").replace(b"reader@yahoo.com", rcpt.encode())
    a = a.replace(b"<m3@s.test>", message_id.encode())
    if mail_from is not None:
        a = a.replace(b"<bounces+y@bounce.test>", b"<" + mail_from.encode() + b">")
    return a


class ReportsScopeTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.schemas, cls.store = load_schemas()

    def start(self, supp, smtp_more=""):
        self.dest = st.Peer(prefix="rscope-peer-")
        self.addCleanup(lambda: self.dest.stop(check=False))
        relay = '    relay_networks = ["127.0.0.1/32"];\n' + smtp_more  # 127.0.0.2: anyone
        d = st.Daemon(routes={"a.test": "127.0.0.1:%d" % self.dest.port}, smtp_extra=relay)
        self.addCleanup(d.cleanup)
        kf = os.path.join(d.dir, "verp.key")
        with open(kf, "w") as f:
            f.write(KEY_HEX + "\n")
        os.chmod(kf, 0o600)
        text = re.sub(r"\n\s*smarthost\s*=[^;\n]*;", "",
                      d.default_conf(smtp_extra=relay)) + FAST_QUEUE
        text += ('bounces {\n    verp = true;\n    domain = "bounce.test";\n'
                 '    verp_key_file = "%s";\n    inbound = true;\n'
                 '    quarantine_dir = "%s";\n}\n'
                 'suppression {\n    enabled = true;\n%s}\n'
                 % (kf, os.path.join(d.dir, "q"), supp))
        with open(d.conf_path, "w") as f:
            f.write(text)
        os.chmod(d.conf_path, 0o600)
        d.start()
        self.d = d

    def validate(self, name, value):
        v = jsonschema.Draft202012Validator(
            self.schemas[name], resolver=jsonschema.RefResolver.from_schema(
                self.schemas[name], store=self.store))
        self.assertEqual(sorted(v.iter_errors(value), key=str), [], value)

    def report(self, data, to="fbl@bounce.test"):
        """The provider mails a report from 127.0.0.2: the final reply."""
        with smtplib.SMTP(self.d.smtp_host, self.d.smtp_port, timeout=30,
                          source_address=("127.0.0.2", 0)) as c:
            c.ehlo("mx.provider.test")
            c.mail("")
            code, text = c.rcpt(to)
            self.assertEqual(code, 250, text)
            code, text = c.data(data)
            self.assertEqual(code, 250, text)
            return text.decode()

    def scopes(self, addr):
        """The scopes addr is suppressed in, as `sluicectl suppress check` says."""
        out = self.d.ctl("suppress", "check", addr, json=True).data
        return sorted(e["scope"] or "" for e in out["entries"])

    def listed(self, scope):
        r = self.d.ctl("suppress", "list", "--scope", scope, json=True)
        self.assertEqual(r.rc, 0, r.out)
        return sorted(e["address"] for e in r.data["entries"])

    def paths(self):
        """{recipient: VERP return path} of what the peer received so far."""
        return {meta["rcpts"][0]["addr"]: meta["mail_from"] for meta, _ in self.dest.messages()}

    def test_scope_header_tenant(self):
        self.start('    scope_header = "X-Customer";\n')

        def send(rcpts, customer, mid):
            hdr = "X-Customer: %s\r\n" % customer if customer else ""
            with self.d.smtp() as c:
                c.sendmail("owner@s.test", rcpts,
                           ("From: <owner@s.test>\r\nSubject: %s\r\nMessage-ID: %s\r\n%s"
                            "\r\nHi.\r\n" % (mid, mid, hdr)).encode())

        rcpts = ["gone@a.test", "cx@a.test", "cy@a.test"]
        send(rcpts, "acme", "<a1@s.test>")
        for r in rcpts:
            wait_acct(self.d, "delivery", r)
        msgid = acct(self.d, "delivery", "gone@a.test")[0]["msgid"]
        paths = self.paths()
        self.assertTrue(paths["gone@a.test"].startswith("bounces+"), paths)

        # a DSN to gone@'s VERP address
        self.assertIn("(remote_bounce)", self.report(dsn("gone@a.test", "<x@y.test>"),
                                                     to=paths["gone@a.test"]))
        rec = wait_acct(self.d, "remote_bounce", "gone@a.test")[0]
        self.validate("acct/remote_bounce", rec)
        self.assertEqual((rec["msgid"], rec["rcpt_index"], rec["matched_by"], rec["scope"]),
                         (msgid, 0, "verp", "acme"))
        # a complaint naming the message only by its Message-ID
        self.assertIn("(complaint)", self.report(arf("cx@a.test", "<a1@s.test>")))
        rec = wait_acct(self.d, "complaint", "cx@a.test")[0]
        self.validate("acct/complaint", rec)
        self.assertEqual((rec["msgid"], rec["rcpt_index"], rec["matched_by"], rec["scope"]),
                         (msgid, 1, "message-id", "acme"))
        # a complaint whose Original-Mail-From is cy@'s VERP address
        self.assertIn("(complaint)", self.report(arf("cy@a.test", "<z@y.test>",
                                                     mail_from=paths["cy@a.test"])))
        rec = wait_acct(self.d, "complaint", "cy@a.test")[0]
        self.assertEqual((rec["msgid"], rec["rcpt_index"], rec["matched_by"], rec["scope"]),
                         (msgid, 2, "verp", "acme"))

        st.wait_for(lambda: self.listed("acme") == sorted(rcpts), 10,
                    what="the three addresses in acme's list")
        for r in rcpts:
            self.assertEqual(self.scopes(r), ["acme"], r)
        self.assertEqual(self.listed("bravo"), [])
        self.assertIn("not suppressed", self.d.ctl("suppress", "check", "nobody@a.test").out)

        # bravo's message and one without a tenant reach every address;
        # acme's reaches only ok@ (the others get `suppressed` records)
        send(rcpts, "bravo", "<b1@s.test>")
        send(rcpts, None, "<n1@s.test>")
        send(rcpts + ["ok@a.test"], "acme", "<a2@s.test>")
        wait_acct(self.d, "delivery", "ok@a.test")
        st.wait_for(lambda: len(acct(self.d, "delivery", "gone@a.test")) == 3
                    and len(acct(self.d, "delivery", "cy@a.test")) == 3, 30,
                    what="bravo's and the tenant-less message delivered")
        sup = sorted((r["recipient"], r["scope"]) for r in acct(self.d, "suppressed"))
        self.assertEqual(sup, [(r, "acme") for r in sorted(rcpts)])
        got = sorted((meta["rcpts"][0]["addr"], raw.split(b"Subject: ")[1].split(b"\r\n")[0])
                     for meta, raw in self.dest.messages())
        want = sorted([(r, m) for r in rcpts for m in (b"<a1@s.test>", b"<b1@s.test>",
                                                        b"<n1@s.test>")] +
                      [("ok@a.test", b"<a2@s.test>")])
        self.assertEqual(got, want)
        self.d.stop()

    def test_auth_user_tenant(self):
        pw = subprocess.run(["openssl", "passwd", "-6", "s3cret"], capture_output=True,
                            text=True, check=True).stdout.strip()
        self.start('    scope = auth_user;\n    action = reject;\n',
                   '    auth {\n        plaintext_loopback = true;\n'
                   '        users {\n            alice = "%s";\n            bob = "%s";\n'
                   '        }\n    }\n' % (pw, pw))

        def send(user, rcpt, mid):
            with self.d.smtp() as c:
                c.ehlo("client.test")
                c.login(user, "s3cret")
                c.mail("owner@s.test")
                code, text = c.rcpt(rcpt)
                if code == 250:
                    c.data(("From: <owner@s.test>\r\nMessage-ID: %s\r\n\r\nHi.\r\n"
                            % mid).encode())
                return code, text

        self.assertEqual(send("alice", "gone@a.test", "<al1@s.test>")[0], 250)
        msgid = wait_acct(self.d, "delivery", "gone@a.test")[0]["msgid"]
        # a DSN to a fixed address, matched by the returned Message-ID
        self.assertIn("(remote_bounce)", self.report(dsn("gone@a.test", "<al1@s.test>")))
        rec = wait_acct(self.d, "remote_bounce", "gone@a.test")[0]
        self.validate("acct/remote_bounce", rec)
        self.assertEqual((rec["msgid"], rec["matched_by"], rec["scope"]),
                         (msgid, "message-id", "alice"))
        st.wait_for(lambda: self.scopes("gone@a.test") == ["alice"], 10,
                    what="gone@ in alice's list")
        self.assertEqual(self.listed("bob"), [])
        # bob still reaches the address; alice is refused at RCPT
        self.assertEqual(send("bob", "gone@a.test", "<bo1@s.test>")[0], 250)
        st.wait_for(lambda: len(acct(self.d, "delivery", "gone@a.test")) == 2, 30,
                    what="bob's message delivered")
        code, text = send("alice", "gone@a.test", "<al2@s.test>")
        self.assertEqual(code, 550, text)
        self.assertIn(b"suppressed", text)
        self.d.stop()


if __name__ == "__main__":
    st.main()
