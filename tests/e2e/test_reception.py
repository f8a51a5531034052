"""SMTP reception end to end: a real sluiced on loopback, driven by Python's
smtplib, swaks and raw sockets. Each case checks the reply codes a client
sees and what the spool holds afterwards (sluicectl list / inspect, and the
stored bytes read back from LMDB with mdb_dump after the daemon stopped).
"""
import base64
import os
import re
import ssl
import subprocess
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sluicetest as st  # noqa: E402


def hash_password(pw):
    return subprocess.run(["openssl", "passwd", "-6", pw], capture_output=True, text=True,
                          check=True).stdout.strip()


def spool_bytes(spool):
    """Everything in the spool's msg database, as bytes (mdb_dump -p prints
    printable bytes as is and the others as \\xx escapes)."""
    out = subprocess.run(["mdb_dump", "-p", "-s", "msg", spool], capture_output=True,
                         check=True).stdout
    return re.sub(rb"\\([0-9a-f]{2})", lambda m: bytes([int(m.group(1), 16)]),
                  out.replace(b"\\\\", b"\\5c"))


def tls_client_ctx():
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


class Reception(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.pw_hash = hash_password("s3cret")
        cls.d = st.Daemon(smtp_extra=(
            '    max_message_size = 20K;\n'
            '    max_recipients = 3;\n'
            '    relay_networks = ["10.99.0.0/16"];\n'
            '    auth {\n        plaintext_loopback = false;\n        fail_delay = 200ms;\n'
            '        lockout_failures = 3;\n        lockout_window = 1m;\n'
            '        lockout_time = 1m;\n'
            '        users {\n            alice = "%s";\n        }\n    }\n' % cls.pw_hash))
        os.chmod(cls.d.conf_path, 0o600)
        cls.d.start()

    @classmethod
    def tearDownClass(cls):
        try:
            cls.d.stop()
        finally:
            cls.d.cleanup()

    def authed(self):
        s = self.d.smtp()
        s.starttls(context=tls_client_ctx())
        s.ehlo("client.test")
        s.login("alice", "s3cret")
        return s

    def test_relay_denied_without_auth(self):
        s = self.d.smtp()
        s.ehlo("client.test")
        self.assertEqual(s.mail("a@example.com")[0], 250)
        code, msg = s.rcpt("b@example.org")
        self.assertEqual(code, 550)
        self.assertIn(b"5.7.1", msg)
        s.quit()

    def test_auth_not_offered_before_starttls(self):
        s = self.d.smtp()
        s.ehlo("client.test")
        self.assertFalse(s.has_extn("auth"))
        self.assertTrue(s.has_extn("starttls"))
        code, msg = s.docmd("AUTH", "PLAIN AGFsaWNlAHMzY3JldA==")
        self.assertEqual(code, 538)
        s.starttls(context=tls_client_ctx())
        s.ehlo("client.test")
        self.assertIn("PLAIN", s.esmtp_features.get("auth", "").upper())
        s.quit()

    def test_auth_good_then_message_queued(self):
        s = self.authed()
        body = ("From: alice@example.com\r\nTo: bob@example.org\r\nSubject: hello\r\n"
                "X-Sluice-Job: campaign-42\r\n\r\nline one\r\n.dot line\r\n")
        r = s.sendmail("alice@example.com", ["bob@example.org"], body)
        self.assertEqual(r, {})
        self.assertEqual(s.noop()[0], 250)  # the session goes on
        s.quit()
        listing = self.d.list()
        ids = {m["id"]: m for m in listing["messages"]}
        mine = [m for m in ids.values() if m.get("job") == "campaign-42"]
        self.assertEqual(len(mine), 1)
        self.assertEqual(mine[0]["sender"], "alice@example.com")
        self.assertEqual([r["addr"] for r in mine[0]["recipients"]], ["bob@example.org"])
        recs = [r for r in self.d.accounting() if r.get("type") == "received"
                and r.get("msgid") == mine[0]["id"]]
        self.assertEqual(len(recs), 1)
        self.assertEqual(recs[0].get("auth_user"), "alice")

    def test_auth_bad_then_lockout(self):
        def plain(user, pw):
            return base64.b64encode(b"\0" + user + b"\0" + pw).decode()

        s = self.d.smtp()
        s.starttls(context=tls_client_ctx())
        s.ehlo("client.test")
        replies = []
        for _ in range(4):
            t0 = time.monotonic()
            code, msg = s.docmd("AUTH", "PLAIN " + plain(b"alice", b"wrong"))
            replies.append((code, msg, time.monotonic() - t0))
        s.close()
        self.assertEqual([c for c, _, _ in replies[:3]], [535, 535, 535])
        self.assertIn(b"5.7.8", replies[0][1])
        # failures are answered after fail_delay (200 ms)
        self.assertGreaterEqual(replies[0][2], 0.18)
        # the fourth attempt from this address is locked out, and so is a
        # new session with the right password
        self.assertEqual(replies[3][0], 454)
        s = self.d.smtp()
        s.starttls(context=tls_client_ctx())
        s.ehlo("client.test")
        code, msg = s.docmd("AUTH", "PLAIN " + plain(b"alice", b"s3cret"))
        self.assertEqual(code, 454)
        s.close()
        # the lockout is kept in memory per client address: restart the
        # daemon so that the other tests can log in (the queue survives)
        self.d.stop()
        self.d.start()

    def test_size_limit_announced_and_enforced(self):
        s = self.authed()
        self.assertEqual(int(s.esmtp_features["size"]), 20 * 1024)
        code, msg = s.docmd("MAIL FROM:<a@example.com> SIZE=30000")
        self.assertEqual(code, 552)
        self.assertIn(b"5.3.4", msg)
        before = self.d.status()["queue"]["messages"]
        big = "Subject: big\r\n\r\n" + ("x" * 70 + "\r\n") * 400  # ~28 KB
        # smtplib's sendmail() would announce SIZE and be refused at MAIL:
        # send without SIZE to check the limit while reading DATA
        self.assertEqual(s.mail("a@example.com")[0], 250)
        self.assertEqual(s.rcpt("b@example.org")[0], 250)
        code, msg = s.data(big)
        self.assertEqual(code, 552)
        self.assertIn(b"5.3.4", msg)
        # the session stays usable and the oversize message is not queued
        self.assertEqual(s.noop()[0], 250)
        s.quit()
        self.assertEqual(self.d.status()["queue"]["messages"], before)

    def test_too_many_recipients(self):
        s = self.authed()
        s.mail("a@example.com")
        for i in range(3):
            self.assertEqual(s.rcpt("r%d@example.org" % i)[0], 250)
        code, msg = s.rcpt("r3@example.org")
        self.assertEqual(code, 452)
        self.assertIn(b"4.5.3", msg)
        code, msg = s.data(b"Subject: three\r\n\r\nbody\r\n")
        self.assertEqual(code, 250)
        qid = re.search(rb"queued as ([0-9A-F]{16})", msg).group(1).decode()
        s.quit()
        info = self.d.request({"cmd": "inspect", "id": qid})
        self.assertTrue(info["ok"], info)
        msg = info["message"]
        self.assertEqual(sorted(r["addr"] for r in msg["recipients"]),
                         ["r0@example.org", "r1@example.org", "r2@example.org"])

    def test_protocol_errors(self):
        c = st.RawClient(self.d.smtp_port)
        self.assertEqual(c.reply()[0], 220)
        c.send("RCPT TO:<x@example.org>\r\n")
        self.assertEqual(c.reply()[0], 503)
        c.send("FROB\r\n")
        code, text = c.reply()
        self.assertEqual(code, 500)
        self.assertIn("5.5.2", text)
        c.send("VRFY postmaster\r\n")
        self.assertEqual(c.reply()[0], 252)
        c.send("MAIL FROM:<bad address>\r\n")
        self.assertEqual(c.reply()[0] // 100, 5)
        c.send("EHLO client.test\r\n")
        self.assertEqual(c.reply()[0], 250)
        c.send("MAIL FROM:<a@example.com> FROB=1\r\n")
        self.assertEqual(c.reply()[0], 555)
        c.send("NOOP " + "x" * 600 + "\r\n")
        code, text = c.reply()
        self.assertEqual(code, 500)
        self.assertIn("5.5.2", text)
        # still in sync after the long line
        c.send("NOOP\r\n")
        self.assertEqual(c.reply()[0], 250)
        c.send("QUIT\r\n")
        self.assertEqual(c.reply()[0], 221)
        c.close()

    def test_pipelined_burst(self):
        """Ten transactions in one write, then the replies in order."""
        s = self.authed()
        # smtplib has done STARTTLS + AUTH; take over its socket for raw
        # pipelining on the same authenticated session.
        sock = s.sock
        f = sock.makefile("rb")
        n = 10
        batch = b""
        for i in range(n):
            batch += (b"MAIL FROM:<p@example.com>\r\nRCPT TO:<q%d@example.org>\r\nDATA\r\n"
                      b"Subject: pipelined %d\r\n\r\nbody %d\r\n.\r\n" % (i, i, i))
        batch += b"QUIT\r\n"
        sock.sendall(batch)
        codes = []
        ids = []
        while True:
            line = f.readline()
            if not line:
                break
            if line[3:4] == b"-":
                continue
            codes.append(int(line[:3]))
            m = re.search(rb"queued as ([0-9A-F]{16})", line)
            if m:
                ids.append(m.group(1).decode())
        f.close()
        s.close()
        self.assertEqual(codes, [250, 250, 354, 250] * n + [221])
        listing = {m["id"] for m in self.d.list()["messages"]}
        self.assertTrue(set(ids) <= listing)
        self.assertEqual(len(set(ids)), n)

    def test_swaks_plain_starttls_and_auth(self):
        # relay denied without auth, even over TLS
        r = self.d.swaks(to="x@example.org", args=["--tls"])
        self.assertNotEqual(r.rc, 0)
        self.assertIn("=== TLS started", r.out, r.err)  # swaks' STARTTLS needs Net::SSLeay
        self.assertRegex(r.out, r"(?m)^<~\* 550 5\.7\.1 ")  # over TLS
        r = self.d.swaks(to="x@example.org", args=["--tls", "--auth", "LOGIN", "--auth-user",
                                                   "alice", "--auth-password", "s3cret"])
        r.check()
        self.assertIn("=== TLS started", r.out)
        self.assertRegex(r.out, r"(?m)^<~  235 ")
        qid = st.queue_id_from_swaks(r.out)
        self.assertIn(qid, {m["id"] for m in self.d.list()["messages"]})


class ReceptionHeadersAndSpool(unittest.TestCase):
    def test_headers_added_and_job_removed(self):
        """Received, Message-ID and Date are added, X-Sluice-Job is recorded
        and removed; the stored bytes are read back from LMDB."""
        d = st.Daemon()
        try:
            d.start()
            s = d.smtp()
            s.ehlo("client.test")
            body = (b"From: a@example.com\r\nX-Sluice-Job: job-7\r\n\tcontinued\r\n"
                    b"Subject: stored\r\n\r\nfirst line\r\n.leading dot\r\nlast\r\n")  # smtplib dot-stuffs
            code, resp = s.docmd("MAIL FROM:<a@example.com>")
            self.assertEqual(code, 250)
            self.assertEqual(s.rcpt("b@example.org")[0], 250)
            code, resp = s.data(body)
            self.assertEqual(code, 250)
            qid = re.search(rb"queued as ([0-9A-F]{16})", resp).group(1).decode()
            s.quit()
            job = [m.get("job") for m in d.list()["messages"] if m["id"] == qid]
            self.assertEqual(job, ["job-7 continued"])  # the folded field, unfolded
            d.stop()
            raw = spool_bytes(d.spool)
            self.assertIn(b"Received: from client.test", raw)
            self.assertIn(qid.encode(), raw)
            self.assertIn(b"Message-ID: <", raw)
            self.assertIn(b"Date: ", raw)
            self.assertNotIn(b"X-Sluice-Job", raw)
            self.assertNotIn(b"\tcontinued", raw)
            # dot-unstuffed, CRLF kept, terminating dot not stored
            self.assertIn(b"\r\n\r\nfirst line\r\n.leading dot\r\nlast\r\n", raw)
            self.assertNotIn(b"last\r\n.\r\n", raw)
            # the spool passes the offline integrity check
            r = st.run([st.SLUICED, "-c", d.conf_path, "--check-spool"])
            self.assertEqual(r.rc, 0, r.out + r.err)
            self.assertIn("consistent", r.out)
        finally:
            d.cleanup()


if __name__ == "__main__":
    st.main()
