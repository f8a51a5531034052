#!/usr/bin/python3
"""reload's answer comes from the schema's reload column (docs/operations.md).

Real processes on loopback: sluiced delivering through a static route to
$SLUICE_BUILD/bench/sluice-sink --store. Covered: a key read at start-up
only (log.file) is answered `needs_restart` and keeps its running value, so
that `log-rotate` afterwards still reports the log the daemon writes (stderr
here) rather than the file the reload named; `dkim.*` is answered `applied`
and the next message carries the new signature (checked with dkimpy, DNS
answers derived from the keys by openssl).
Run: SLUICE_BUILD=... /usr/bin/python3 tests/e2e/test_reload_column.py
"""
import base64
import os
import re
import shutil
import subprocess
import sys
import unittest

import dkim

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sluicetest as st  # noqa: E402

FAST_QUEUE = 'queue {\n    retry = "1s,1s,2s";\n    retry_jitter = 0;\n    scan_interval = 100ms;\n}\n'


def signatures(raw):
    """The (d=, s=) of each DKIM-Signature field on top of raw."""
    out = []
    while raw.startswith(b"DKIM-Signature:"):
        m = re.match(rb"DKIM-Signature:(.*?)\r\n(?![ \t])", raw, re.S)
        flat = re.sub(rb"\s+", b"", m.group(1))
        tags = dict(p.split(b"=", 1) for p in flat.split(b";") if b"=" in p)
        out.append((tags[b"d"].decode(), tags[b"s"].decode()))
        raw = raw[m.end():]
    return out


class ReloadColumn(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        cls.dir = st.make_tmpdir("reload-keys-")
        cls.keys, cls.records = {}, {}
        for sel, dom in (("rsa", "example.com"), ("esp", "esp.example")):
            path = os.path.join(cls.dir, sel + ".pem")
            subprocess.run(["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt",
                            "rsa_keygen_bits:2048", "-out", path],
                           check=True, stderr=subprocess.DEVNULL)
            os.chmod(path, 0o600)
            cls.keys[sel] = path
            der = subprocess.run(["openssl", "pkey", "-in", path, "-pubout", "-outform", "DER"],
                                 check=True, capture_output=True).stdout
            cls.records[("%s._domainkey.%s." % (sel, dom)).encode()] = (
                b"v=DKIM1; k=rsa; p=" + base64.b64encode(der))

    @classmethod
    def tearDownClass(cls):
        if not st.keep_tmp():
            shutil.rmtree(cls.dir, ignore_errors=True)

    def setUp(self):
        self.cleanups = []

    def tearDown(self):
        for fn in reversed(self.cleanups):
            try:
                fn()
            except Exception:
                pass

    def sink(self):
        s = st.Sink("--no-starttls", prefix="reload-sink-")
        self.cleanups.append(s.stop)
        return s

    def daemon(self, sink, extra):
        d = st.Daemon(routes={"a.example": "127.0.0.1:%d" % sink.port},
                      extra_conf=extra + FAST_QUEUE)
        self.cleanups.append(d.cleanup)
        d.start()
        return d

    def rewrite_conf(self, d, extra, log_file=None):
        """The daemon's file with extra (another dkim { }) in place of what
        it was started with, and log.file set when log_file is given."""
        text = d.default_conf()
        if log_file is not None:
            text = text.replace("log {\n", 'log {\n    file = "%s";\n' % log_file, 1)
        with open(d.conf_path, "w") as f:
            f.write(text + "\n" + extra + FAST_QUEUE)

    def send(self, d, rcpt, subject):
        msg = ("From: Joe <joe@example.com>\r\nTo: <%s>\r\nSubject: %s\r\n"
               "Date: Fri, 27 Nov 2026 07:00:00 +0000\r\nMessage-ID: <%s@example.com>\r\n"
               "\r\nHello.\r\n" % (rcpt, subject, subject.replace(" ", "-"))).encode()
        with d.smtp(timeout=60) as c:
            c.sendmail("joe@example.com", [rcpt], msg)

    def test_a_start_up_key_needs_a_restart_and_keeps_its_running_value(self):
        sink = self.sink()
        d = self.daemon(sink, "")
        self.assertEqual(d.request({"cmd": "log-rotate"}, timeout=30).get("log"), "stderr")
        log = os.path.join(d.dir, "named-by-reload.log")
        self.rewrite_conf(d, "", log_file=log)
        r = d.request({"cmd": "reload"}, timeout=30)
        self.assertTrue(r.get("ok"), r)
        self.assertIn("log.file", r["needs_restart"])
        self.assertNotIn("log.file", r["applied"])
        # the daemon still logs to stderr, and says so: the reload's file is
        # neither opened nor reported until a restart
        r = d.request({"cmd": "log-rotate"}, timeout=30)
        self.assertTrue(r.get("ok"), r)
        self.assertEqual(r.get("log"), "stderr", r)
        self.assertFalse(os.path.exists(log))
        d.stop()

    def test_dkim_applies_at_reload(self):
        sink = self.sink()
        one = ('dkim {\n    keys {\n        "example.com" { rsa = "%s"; }\n'
               '        "esp.example" { esp = "%s"; }\n    }\n}\n'
               % (self.keys["rsa"], self.keys["esp"]))
        d = self.daemon(sink, one)
        self.send(d, "before@a.example", "before reload")
        _, raw = sink.wait_messages(1)[0]
        self.assertEqual(signatures(raw), [("example.com", "rsa")])
        # the ESP's second signature, by reload
        self.rewrite_conf(d, one.replace("dkim {\n", 'dkim {\n    esp_domain = "esp.example";\n'))
        r = d.request({"cmd": "reload"}, timeout=30)
        self.assertTrue(r.get("ok"), r)
        self.assertIn("dkim.esp_domain", r["applied"])
        self.assertNotIn("dkim.esp_domain", r["needs_restart"])
        self.send(d, "after@a.example", "after reload")
        msgs = sink.wait_messages(2)
        raw = [m for _, m in msgs if b"after reload" in m][0]
        self.assertEqual(sorted(signatures(raw)), [("esp.example", "esp"), ("example.com", "rsa")])
        for i in range(2):
            self.assertTrue(dkim.DKIM(raw).verify(idx=i, dnsfunc=lambda n, timeout=5:
                                                   self.records.get(n)))
        d.wait_queue(0)
        d.stop()


if __name__ == "__main__":
    unittest.main()
