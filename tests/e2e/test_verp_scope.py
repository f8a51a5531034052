#!/usr/bin/python3
"""End-to-end tests of VERP per job and per virtual MTA / pool
(docs/bounces-in.md, "Where VERP applies"): `bounces.verp_jobs`, and
`verp = true|false` on a virtual MTA or a pool of the shaping file, over
the global `bounces.verp`.

sluice delivers to an aiosmtpd peer we did not write (st.Peer); what a
user checks is the MAIL FROM on the wire for each message (the peer's
record of the envelope, and the client address: the virtual MTA's
source), and that a DSN to a VERP return path made this way still
matches its message (remote_bounce, matched_by verp). A shaping file
that asks for VERP without a key is refused at start-up.
Every process started here is stopped by pid before the test ends.
"""
import os
import re
import smtplib
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sluicetest as st  # noqa: E402
from test_delivery import FAST_QUEUE, wait_acct  # noqa: E402
from test_inbound import KEY_HEX, sample  # noqa: E402

SHAPING = '''virtual_mtas {
  plain { source = "127.0.0.1"; }
  verpy { source = "127.0.0.2"; verp = true; }
  off   { source = "127.0.0.3"; verp = false; }
}
pools {
  p_plain { members = [plain]; }
  p_verp  { members = [verpy]; }
  p_pool  { members = [plain]; verp = true; }
  p_off   { members = [off]; verp = true; }
}
default_pool = p_plain;
'''


class VerpScopeTest(unittest.TestCase):
    def daemon(self, shaping, bounces):
        self.dest = st.Peer(prefix="verp-scope-peer-")
        self.addCleanup(lambda: self.dest.stop(check=False))
        relay = '    relay_networks = ["127.0.0.1/32"];\n'
        d = st.Daemon(routes={"a.test": "127.0.0.1:%d" % self.dest.port}, smtp_extra=relay)
        self.addCleanup(d.cleanup)
        kf = os.path.join(d.dir, "verp.key")
        with open(kf, "w") as f:
            f.write(KEY_HEX + "\n")
        os.chmod(kf, 0o600)
        sp = os.path.join(d.dir, "shaping.conf")
        with open(sp, "w") as f:
            f.write(shaping)
        text = re.sub(r"\n\s*smarthost\s*=[^;\n]*;", '\n    shaping = "%s";' % sp,
                      d.default_conf(smtp_extra=relay)) + FAST_QUEUE
        text += bounces.replace("KEYFILE", kf)
        with open(d.conf_path, "w") as f:
            f.write(text)
        return d

    def test_verp_by_job_vmta_and_pool(self):
        d = self.daemon(SHAPING, 'bounces {\n    domain = "bounce.test";\n'
                        '    verp_key_file = "KEYFILE";\n    verp_jobs = ["News"];\n'
                        '    inbound = true;\n}\n')
        d.start()
        cases = [  # recipient, X-Sluice-Pool, X-Sluice-Job, VERP expected, source
            ("a@a.test", None, None, False, "127.0.0.1"),    # global verp = false
            ("b@a.test", "p_verp", None, True, "127.0.0.2"),  # the vmta says true
            ("c@a.test", "p_pool", None, True, "127.0.0.1"),  # the pool says true
            ("d@a.test", "p_off", None, False, "127.0.0.3"),  # the vmta's false wins
            ("e@a.test", None, "news", True, "127.0.0.1"),    # bounces.verp_jobs
            ("f@a.test", "p_off", "NEWS", True, "127.0.0.3"),  # the job wins over all
        ]
        with d.smtp() as c:
            for rcpt, pool, job, _, _ in cases:
                hdr = ("X-Sluice-Pool: %s\r\n" % pool if pool else "") + \
                      ("X-Sluice-Job: %s\r\n" % job if job else "")
                c.sendmail("owner@s.test", [rcpt, rcpt.replace("@", "2@")],
                           ("From: <owner@s.test>\r\nSubject: %s\r\n%s\r\nHi.\r\n"
                            % (rcpt, hdr)).encode())
        for rcpt, _, _, _, _ in cases:
            wait_acct(d, "delivery", rcpt)
            wait_acct(d, "delivery", rcpt.replace("@", "2@"))
        got = {}
        for meta, _ in self.dest.messages():
            for r in meta["rcpts"]:
                got[r["addr"]] = (meta["mail_from"], meta["client_ip"], len(meta["rcpts"]))
        paths = {}
        for rcpt, _, _, verp, src in cases:
            for addr in (rcpt, rcpt.replace("@", "2@")):
                mail_from, ip, n = got[addr]
                self.assertEqual(ip, src, addr)
                if verp:  # one recipient per transaction, its own return path
                    self.assertRegex(mail_from, r"^bounces\+[a-z2-7]{39}@bounce\.test$", addr)
                    self.assertEqual(n, 1, addr)
                    paths[addr] = mail_from
                else:
                    self.assertEqual((mail_from, n), ("owner@s.test", 2), addr)
        self.assertEqual(len(set(paths.values())), len(paths))
        # a DSN to the return path the vmta's VERP made still matches
        msgid = [r for r in d.accounting()
                 if r.get("type") == "delivery" and r["recipient"] == "b@a.test"][0]["msgid"]
        with smtplib.SMTP(d.smtp_host, d.smtp_port, timeout=30,
                          source_address=("127.0.0.9", 0)) as c:
            c.ehlo("mx.provider.test")
            c.mail("")
            self.assertEqual(c.rcpt(paths["b@a.test"])[0], 250)
            code, text = c.data(sample("dsn_postfix.eml").replace(b"gone@a.test", b"b@a.test"))
            self.assertEqual(code, 250, text)
        rec = wait_acct(d, "remote_bounce")[0]
        self.assertEqual((rec["msgid"], rec["rcpt_index"], rec["recipient"], rec["matched_by"]),
                         (msgid, 0, "b@a.test", "verp"))
        d.stop()

    def test_vmta_verp_needs_the_key(self):
        d = self.daemon(SHAPING, "")
        r = st.run([st.SLUICED, "-c", d.conf_path])
        self.assertNotEqual(r.rc, 0, r.err)
        self.assertIn("virtual_mtas.verpy.verp = true needs bounces.domain and "
                      "bounces.verp_key_file", r.err)
        with open(d.conf_path, "a") as f:
            f.write('bounces {\n    verp_jobs = ["x"];\n}\n')
        r = st.run([st.SLUICED, "-c", d.conf_path, "--check-config"])
        self.assertNotEqual(r.rc, 0)
        self.assertIn("bounces.verp_jobs needs bounces.domain and bounces.verp_key_file", r.err)


if __name__ == "__main__":
    st.main()
