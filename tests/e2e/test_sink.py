#!/usr/bin/python3
"""End-to-end tests of bench/sluice-sink, the receiving SMTP test server.

Starts the real binary ($SLUICE_BUILD/bench/sluice-sink) on 127.0.0.1:0,
talks to it with smtplib and raw sockets, and checks what it stored, what it
answered, what it logged and what its summary says. Every sink started here
is stopped (SIGTERM, then SIGKILL) before the test ends.
"""
import json
import os
import shutil
import signal
import smtplib
import socket
import ssl
import subprocess
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sluicetest as st  # noqa: E402

BUILD = st.BUILD
SINK = os.path.join(BUILD, "bench", "sluice-sink")


class Sink:
    """One sluice-sink process with its own temporary directory."""

    def __init__(self, *args):
        self.dir = st.make_tmpdir("sink-test-")
        self.store = os.path.join(self.dir, "store")
        self.summary = os.path.join(self.dir, "summary.json")
        self.log = os.path.join(self.dir, "events.jsonl")
        port_file = os.path.join(self.dir, "port")
        self.err = open(os.path.join(self.dir, "stderr"), "w+")
        cmd = [SINK, "-l", "127.0.0.1:0", "--port-file", port_file, "--store", self.store,
               "--summary", self.summary, "--log", self.log, "--hostname", "sink.test",
               "--seed", "7"] + list(args)
        self.proc = st._spawn(cmd, stdout=subprocess.PIPE, stderr=self.err)
        deadline = time.monotonic() + 10
        while not os.path.exists(port_file):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise RuntimeError("sink did not start: " + self.stderr())
            time.sleep(0.02)
        with open(port_file) as f:
            self.port = int(f.readline())
        self.exit_code = None

    def stderr(self):
        self.err.seek(0)
        return self.err.read()

    def smtp(self, **kw):
        return smtplib.SMTP("127.0.0.1", self.port, timeout=10, **kw)

    def stop(self):
        """SIGTERM; returns the summary the sink wrote. Fails unless it
        exited 0 without a sanitizer report."""
        self.proc.send_signal(signal.SIGTERM)
        self.exit_code = self.proc.wait(timeout=10)
        if self.exit_code != 0 or st.sanitizer_errors(self.stderr()):
            raise AssertionError("sink exited %d: %s" % (self.exit_code, self.stderr()))
        with open(self.summary) as f:
            return json.load(f)

    def stored(self, seq):
        with open(os.path.join(self.store, "%d.eml" % seq), "rb") as f:
            body = f.read()
        with open(os.path.join(self.store, "%d.json" % seq)) as f:
            meta = json.load(f)
        return body, meta

    def stored_count(self):
        return len([n for n in os.listdir(self.store) if n.endswith(".eml")])

    def events(self):
        """The --log records written so far (flushed every second)."""
        try:
            with open(self.log) as f:
                return [json.loads(line) for line in f if line.endswith("\n")]
        except FileNotFoundError:
            return []

    def close(self):
        """Kill what is still running: a test that did not stop() its sink
        has failed already."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        st._children.discard(self.proc)
        self.proc.stdout.close()
        self.err.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def read_reply(sock_file):
    """One (possibly multi-line) SMTP reply from a socket file: (code, text)."""
    lines = []
    while True:
        line = sock_file.readline()
        if not line:
            raise EOFError("connection closed")
        lines.append(line.decode().rstrip("\r\n"))
        if len(line) < 4 or line[3:4] != b"-":
            return int(lines[-1][:3]), "\n".join(l[4:] for l in lines)


MESSAGE = (b"From: a@example.org\r\n"
           b"To: b@example.net\r\n"
           b"Subject: dots\r\n"
           b"\r\n"
           b".leading dot\r\n"
           b"..two dots\r\n"
           b".\r\n"
           b"a lone dot above, and a line with trailing space \r\n"
           b"\r\n"
           b"last line\r\n")


class SinkTest(unittest.TestCase):
    def setUp(self):
        self.assertTrue(os.access(SINK, os.X_OK), "build sluice-sink first: " + SINK)
        self.sinks = []

    def tearDown(self):
        for s in self.sinks:
            s.close()

    def start(self, *args):
        s = Sink(*args)
        self.sinks.append(s)
        return s

    def test_messages_faults_tls_and_summary(self):
        s = self.start("--slow-ms", "1500")
        c = s.smtp()
        code, ext = c.ehlo("client.test")
        self.assertEqual(code, 250)
        for kw in (b"PIPELINING", b"8BITMIME", b"SMTPUTF8", b"SIZE", b"ENHANCEDSTATUSCODES",
                   b"STARTTLS"):
            self.assertIn(kw, ext)

        # 1: plain message; the .eml must be byte-identical after the
        # dot-stuffing round trip (smtplib stuffs, the sink unstuffs).
        self.assertEqual(c.sendmail("a@example.org", ["b@example.net"], MESSAGE), {})
        body, meta = s.stored(1)
        self.assertEqual(body, MESSAGE)
        self.assertEqual(meta["mail_from"], "a@example.org")
        self.assertEqual(meta["rcpts"], ["b@example.net"])
        self.assertEqual(meta["client_ip"], "127.0.0.1")
        self.assertEqual(meta["client_port"], c.sock.getsockname()[1])
        self.assertEqual(meta["helo"], "client.test")
        self.assertIsNone(meta["tls"])
        self.assertEqual(meta["conn"], 1)

        # 2: several recipients, with a refused one among them.
        rcpts = ["r1@one.example", "R2@Two.Example", "permfail@two.example", "r3@one.example"]
        refused = c.sendmail("a@example.org", rcpts, b"Subject: many\r\n\r\nhi\r\n")
        self.assertEqual(refused, {"permfail@two.example": (550, b"5.1.1 User unknown")})
        body, meta = s.stored(2)
        self.assertEqual(meta["rcpts"], ["r1@one.example", "R2@Two.Example", "r3@one.example"])
        self.assertEqual(body, b"Subject: many\r\n\r\nhi\r\n")

        # 3: each fault local part answers with its code.
        c.rset()
        c.mail("a@example.org")
        self.assertEqual(c.rcpt("tempfail@x.example")[0], 450)
        self.assertEqual(c.rcpt("TempFail+tag@x.example")[0], 450)  # case, +tag
        self.assertEqual(c.rcpt("permfail@x.example"), (550, b"5.1.1 User unknown"))
        self.assertEqual(c.rcpt("tempfailonce@x.example")[0], 450)
        self.assertEqual(c.rcpt("tempfailonce@x.example")[0], 250)
        self.assertEqual(c.rcpt("TEMPFAILONCE@X.EXAMPLE")[0], 250)
        self.assertEqual(c.rcpt("tempfailonce+b@x.example")[0], 450)  # another address
        c.rset()

        c.mail("a@example.org")
        self.assertEqual(c.rcpt("datafail@x.example")[0], 250)
        self.assertEqual(c.data(b"Subject: df\r\n\r\nx\r\n"),
                         (451, b"4.3.0 Temporary failure, try again later"))
        c.mail("a@example.org")
        self.assertEqual(c.rcpt("datareject@x.example")[0], 250)
        self.assertEqual(c.data(b"Subject: dr\r\n\r\nx\r\n"), (554, b"5.7.1 Message rejected"))

        # slow: every reply of the transaction waits --slow-ms (1.5 s: long
        # enough that a loaded machine cannot make a fast reply look slow).
        c.mail("a@example.org")
        t0 = time.monotonic()
        self.assertEqual(c.rcpt("slow@x.example")[0], 250)
        t1 = time.monotonic()
        self.assertEqual(c.data(b"Subject: slow\r\n\r\nx\r\n")[0], 250)
        t2 = time.monotonic()
        self.assertGreaterEqual(t1 - t0, 1.45)
        self.assertGreaterEqual(t2 - t1, 2.95)  # the 354 and the final reply
        t0 = time.monotonic()
        self.assertEqual(c.noop()[0], 250)  # the next transaction is fast again
        self.assertLess(time.monotonic() - t0, 0.75)
        self.assertEqual(s.stored(3)[0], b"Subject: slow\r\n\r\nx\r\n")

        # 4: STARTTLS; the stored envelope shows the TLS version.
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        self.assertEqual(c.starttls(context=ctx)[0], 220)
        code, ext = c.ehlo("tls.client.test")
        self.assertEqual(code, 250)
        self.assertNotIn(b"STARTTLS", ext)
        self.assertEqual(c.sendmail("a@example.org", ["t@tls.example"], MESSAGE), {})
        body, meta = s.stored(4)
        self.assertEqual(body, MESSAGE)
        self.assertEqual(meta["tls"]["version"], c.sock.version())
        self.assertTrue(meta["tls"]["version"].startswith("TLSv1."))
        self.assertEqual(meta["tls"]["cipher"], c.sock.cipher()[0])
        self.assertEqual(meta["helo"], "tls.client.test")
        c.quit()

        # 421 fault: the reply, then the sink hangs up.
        c = s.smtp()
        c.ehlo()
        c.mail("a@example.org")
        self.assertEqual(c.rcpt("421@x.example"), (421, b"4.7.0 Try again later"))
        with self.assertRaises(smtplib.SMTPServerDisconnected):
            c.noop()
            c.noop()
        c.close()

        # drop: the RCPT is accepted, the sink hangs up in the middle of DATA.
        c = s.smtp()
        c.helo()
        c.mail("a@example.org")
        self.assertEqual(c.rcpt("drop@x.example")[0], 250)
        with self.assertRaises(smtplib.SMTPServerDisconnected):
            c.data(b"Subject: drop\r\n\r\n" + b"x" * 100000 + b"\r\n")
        c.close()
        self.assertEqual(s.stored_count(), 4)

        summary = s.stop()
        self.assertEqual(s.exit_code, 0)
        self.assertEqual(summary["messages"], 4)
        self.assertEqual(summary["recipients"], 1 + 3 + 1 + 1)
        self.assertEqual(summary["bytes"], 2 * len(MESSAGE) + len(b"Subject: many\r\n\r\nhi\r\n") +
                         len(b"Subject: slow\r\n\r\nx\r\n"))
        self.assertEqual(summary["connections"], 3)
        self.assertEqual(summary["tls_connections"], 1)
        self.assertEqual(summary["rcpt_tempfails"], 4)  # 2 tempfail + 2 tempfailonce
        self.assertEqual(summary["rcpt_permfails"], 2)
        self.assertEqual(summary["data_tempfails"], 1)
        self.assertEqual(summary["data_permfails"], 1)
        self.assertEqual(summary["tempfails"], 5)
        self.assertEqual(summary["permfails"], 3)
        self.assertEqual(summary["drops"], 1)
        self.assertEqual(summary["concurrent_current"], 0)
        self.assertEqual(summary["by_ip"]["127.0.0.1"]["messages"], 4)
        self.assertEqual(summary["by_ip"]["127.0.0.1"]["connections"], 3)
        self.assertEqual(summary["by_domain"]["one.example"]["recipients"], 2)
        self.assertEqual(summary["by_domain"]["two.example"],
                         {"recipients": 1, "tempfails": 0, "permfails": 1})
        self.assertEqual(summary["by_domain"]["x.example"]["tempfails"], 4)
        self.assertIn("4 messages", s.stderr())

        ev = s.events()
        kinds = [e["event"] for e in ev]
        self.assertEqual(kinds.count("connect"), 3)
        self.assertEqual(kinds.count("disconnect"), 3)
        msgs = [e for e in ev if e["event"] == "message"]
        self.assertEqual([m["result"] for m in msgs],
                         ["accepted", "accepted", "datafail", "datareject", "accepted",
                          "accepted"])
        self.assertEqual([m["seq"] for m in msgs if m["code"] == 250], [1, 2, 3, 4])
        reasons = [e["reason"] for e in ev if e["event"] == "disconnect"]
        self.assertEqual(reasons, ["quit", "421 fault", "drop fault"])

    def test_pipelined_fragmented_input(self):
        """A pipelined batch, then a body cut at every awkward place."""
        s = self.start("--no-starttls")
        sock = socket.create_connection(("127.0.0.1", s.port), timeout=10)
        f = sock.makefile("rb")
        self.assertEqual(read_reply(f)[0], 220)
        sock.sendall(b"EHLO pipe.test\r\nMAIL FROM:<p@example.org> BODY=8BITMIME SIZE=100\r\n"
                     b"RCPT TO:<x@a.example>\r\nRCPT TO:<tempfail@a.example>\r\n"
                     b"RCPT TO:<y@b.example>\r\nDATA\r\n")
        code, ext = read_reply(f)
        self.assertEqual(code, 250)
        self.assertNotIn("STARTTLS", ext)
        self.assertEqual([read_reply(f)[0] for _ in range(5)], [250, 250, 450, 250, 354])
        wire = (b"Subject: frag\r\n\r\n..stuffed\r\n..\r\n" b"x\r\n...\r\n"
                b"bare\nlf\r\n\xc3\xa9t\xc3\xa9\r\n.\r\n")
        for i in range(len(wire)):  # one byte per segment
            sock.sendall(wire[i:i + 1])
            if i % 7 == 0:
                time.sleep(0.001)
        self.assertEqual(read_reply(f), (250, "2.0.0 Ok: queued as 1"))
        # a second transaction in one segment: MAIL..body..QUIT
        sock.sendall(b"MAIL FROM:<>\r\nRCPT TO:<z@c.example>\r\nDATA\r\n.\r\nQUIT\r\n")
        self.assertEqual([read_reply(f)[0] for _ in range(5)], [250, 250, 354, 250, 221])
        self.assertEqual(f.read(), b"")  # closed after QUIT
        sock.close()
        body, meta = s.stored(1)
        self.assertEqual(body, b"Subject: frag\r\n\r\n.stuffed\r\n.\r\n" b"x\r\n..\r\n"
                         b"bare\nlf\r\n\xc3\xa9t\xc3\xa9\r\n")
        self.assertEqual(meta["rcpts"], ["x@a.example", "y@b.example"])
        self.assertFalse(meta["esmtp"] is False)
        body, meta = s.stored(2)
        self.assertEqual(body, b"")
        self.assertEqual(meta["mail_from"], "")
        summary = s.stop()
        self.assertEqual((summary["messages"], summary["recipients"]), (2, 3))

    def test_max_conns_ehlo_fail_rate_per_conn(self):
        s = self.start("--max-conns", "2", "--ehlo-fail", "--rate-per-conn", "1",
                       "--no-starttls", "--stats-interval", "0.2")
        c1 = s.smtp()
        c2 = s.smtp()
        self.assertEqual(c1.noop()[0], 250)
        self.assertEqual(c2.noop()[0], 250)
        with self.assertRaises(smtplib.SMTPConnectError) as cm:
            s.smtp()
        self.assertEqual(cm.exception.smtp_code, 421)
        self.assertEqual(cm.exception.smtp_error, b"4.7.0 Too many connections")

        # --ehlo-fail: EHLO gets 502, smtplib falls back to HELO.
        self.assertEqual(c1.docmd("EHLO", "client.test")[0], 502)
        c1.ehlo_or_helo_if_needed()
        self.assertFalse(c1.does_esmtp)
        self.assertEqual(c1.helo_resp, b"sink.test")
        self.assertEqual(c1.sendmail("a@example.org", ["u@d.example"], b"S: 1\r\n\r\n1\r\n"), {})
        _, meta = s.stored(1)
        self.assertFalse(meta["esmtp"])
        # --rate-per-conn 1: the second MAIL on the connection gets 421.
        self.assertEqual(c1.mail("a@example.org")[0], 421)
        c1.close()
        c2.quit()

        # once the sink has seen both go, a new connection is welcome again
        # (the rejected third one was a disconnect too)
        st.wait_for(lambda: [e["event"] for e in s.events()].count("disconnect") == 3, 10,
                    what="the sink's disconnect events")
        c3 = s.smtp()
        c3.quit()
        # two stats records (every 0.2 s) after the message
        st.wait_for(lambda: len([e for e in s.events() if e["event"] == "stats"
                                 and e["messages"] == 1]) >= 2, 10,
                    what="two stats records after the message")
        summary = s.stop()
        self.assertEqual(summary["connections_rejected"], 1)
        self.assertEqual(summary["concurrent_max"], 2)
        self.assertEqual(summary["messages"], 1)
        self.assertEqual(summary["replies_421"], 2)  # the connection cap, the per-connection rate
        stats = [e for e in s.events() if e["event"] == "stats"]
        self.assertGreaterEqual(len(stats), 2)
        self.assertIn("msgs_per_s", stats[0])
        self.assertEqual(stats[-1]["messages"], 1)

    def test_greeting_421_and_quit_after(self):
        s = self.start("--greeting-421", "--no-starttls", "--quit-after", "1")
        with self.assertRaises(smtplib.SMTPConnectError) as cm:
            s.smtp()
        self.assertEqual(cm.exception.smtp_code, 421)
        self.assertEqual(s.proc.wait(timeout=10), 0)  # exits by itself
        self.assertEqual(st.sanitizer_errors(s.stderr()), [])
        with open(s.summary) as f:
            summary = json.load(f)
        self.assertEqual((summary["connections"], summary["connections_rejected"]), (1, 1))


if __name__ == "__main__":
    st.main()
