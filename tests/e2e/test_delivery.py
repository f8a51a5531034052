#!/usr/bin/python3
"""End-to-end tests of delivery: sluiced delivering to sluice-sink.

Real processes on loopback: the daemon ($SLUICE_BUILD/core/server/sluiced),
the receiving sink ($SLUICE_BUILD/bench/sluice-sink --store), dnsmasq for
MX records, and for answers dnsmasq cannot give (null MX "MX 0 .") the
small UDP DNS responder st.FakeDns. Assertions are on what the sink
stored (.eml + .json) and on the accounting log (acct JSON lines).
Every process started here is stopped by pid before the test ends.
"""
import re
import os
import shutil
import socket
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sluicetest as st  # noqa: E402

FAST_QUEUE = 'queue {\n    retry = "1s,1s,2s";\n    retry_jitter = 0;\n    scan_interval = 100ms;\n}\n'


# ------------------------------------------------------------------ helpers

FakeDns = st.FakeDns  # moved to sluicetest.py (null MX, TTLs, SERVFAIL)


class RawServer:
    """A misbehaving SMTP server on 127.0.0.1:0 (a thread): behaviour is
    "silent" (accepts, never speaks) or "endless" (greets, then answers
    EHLO with an endless multi-line reply, bounded at 512 KiB)."""

    def __init__(self, behaviour):
        self.behaviour = behaviour
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.conns = []
        self.stopping = False
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self):
        while not self.stopping:
            try:
                c, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            self.conns.append(c)
            if self.behaviour == "endless":
                threading.Thread(target=self.endless, args=(c,), daemon=True).start()

    def endless(self, c):
        try:
            c.sendall(b"220 raw.test ESMTP\r\n")
            c.recv(1024)
            line = b"250-" + b"x" * 996 + b"\r\n"
            for _ in range(512):
                if self.stopping:
                    return
                c.sendall(line)
        except OSError:
            pass

    def stop(self):
        self.stopping = True
        self.thread.join(5)
        for c in self.conns:
            c.close()
        self.sock.close()


def make_daemon(routes=None, delivery="", queue=FAST_QUEUE, log_level="info"):
    """A Daemon whose delivery block has extra lines and a fast queue."""
    d = st.Daemon(routes=routes if routes is not None else {}, log_level=log_level)
    text = d.default_conf(log_level)
    # no smarthost: these tests route by MX or by explicit routes only
    text = re.sub(r"\n\s*smarthost\s*=[^;\n]*;", "", text)
    text = text.replace("delivery {\n", "delivery {\n" + delivery, 1) + queue
    with open(d.conf_path, "w") as f:
        f.write(text)
    return d


def send(d, rcpts, body=None, sender="sender@s.example", subject="test"):
    """Submit one message over SMTP to the daemon; returns the raw message."""
    if body is None:
        body = "Hello.\r\n.a line that starts with a dot\r\n..two dots\r\nbye\r\n"
    msg = ("From: <%s>\r\nTo: <%s>\r\nSubject: %s\r\nDate: Fri, 27 Nov 2026 07:00:00 +0000\r\n"
           "Message-ID: <%s@s.example>\r\n\r\n%s"
           % (sender, rcpts[0], subject, subject.replace(" ", "-"), body))
    with d.smtp() as c:
        c.sendmail(sender, rcpts, msg.encode())
    return msg.encode()


def acct(d, type_=None, rcpt=None):
    return [r for r in d.accounting()
            if (type_ is None or r.get("type") == type_)
            and (rcpt is None or r.get("recipient") == rcpt)]


def wait_acct(d, type_, rcpt=None, n=1, timeout=20):
    return st.wait_for(lambda: len(acct(d, type_, rcpt)) >= n and acct(d, type_, rcpt), timeout,
                       what="%d %s record(s) for %s" % (n, type_, rcpt))


def strip_received(raw):
    """The message without its first header field (the daemon's Received,
    continuation lines included)."""
    assert raw.startswith(b"Received:"), raw[:80]
    i = raw.index(b"\r\n") + 2
    while raw[i:i + 1] in (b" ", b"\t"):
        i = raw.index(b"\r\n", i) + 2
    return raw[i:]


# ------------------------------------------------------------------ tests

class DeliveryTest(unittest.TestCase):
    # Cleanups (addCleanup) run even when the test failed, each one's error
    # is reported: a daemon or a sink that does not exit 0 fails the test.

    def tmpdir(self):
        d = st.make_tmpdir("dlv-tls-")
        if not st.keep_tmp():
            self.addCleanup(shutil.rmtree, d, True)
        return d

    def sink(self, *args):
        s = st.Sink(*args, prefix="dlv-sink-")
        self.addCleanup(s.stop)
        return s

    def daemon(self, **kw):
        d = make_daemon(**kw)
        self.addCleanup(d.close)
        d.start()
        return d

    # -- plain, TLS, several recipients

    def test_plain_delivery_body_identical(self):
        sink = self.sink("--no-starttls")
        d = self.daemon(routes={"a.example": "127.0.0.1:%d" % sink.port})
        sent = send(d, ["bob@a.example"])
        env, raw = sink.wait_messages(1)[0]
        self.assertEqual(env["rcpts"], ["bob@a.example"])
        self.assertEqual(env["mail_from"], "sender@s.example")
        self.assertFalse(env.get("tls"))
        self.assertEqual(strip_received(raw), sent)
        rec = wait_acct(d, "delivery", "bob@a.example")[0]
        self.assertEqual(rec["code"], 250)
        self.assertEqual(rec["mx_ip"], "127.0.0.1")
        self.assertEqual(rec["src_ip"], "127.0.0.1")
        self.assertFalse(rec.get("tls"))
        d.wait_queue(0)
        d.stop()

    def test_tls_delivery(self):
        sink = self.sink("--tls-generate", os.path.join(self.tmpdir(), "tls"))
        d = self.daemon(routes={"a.example": "127.0.0.1:%d" % sink.port})
        send(d, ["carol@a.example"])
        env, _ = sink.wait_messages(1)[0]
        self.assertTrue(env.get("tls"), env)
        self.assertTrue(env["tls"]["version"].startswith("TLSv1."))
        rec = wait_acct(d, "delivery", "carol@a.example")[0]
        self.assertTrue(rec["tls"].startswith("TLSv1."), rec)
        self.assertTrue(rec["cipher"], rec)
        self.assertIn("tls=TLSv1.", d.stderr())
        d.stop()

    def test_tls_required_without_starttls_defers(self):
        sink = self.sink("--no-starttls")
        d = self.daemon(routes={"a.example": "127.0.0.1:%d" % sink.port},
                        delivery='    tls_policy {\n        "a.example" = required;\n    }\n')
        send(d, ["dave@a.example"])
        rec = wait_acct(d, "transient", "dave@a.example")[0]
        self.assertEqual(rec["status"], "4.7.4")
        # never sent in plaintext, not even on a retry (retry 1 s): wait for
        # the second and third attempts to have failed the same way
        recs = wait_acct(d, "transient", "dave@a.example", n=3)
        self.assertEqual([r["status"] for r in recs], ["4.7.4"] * len(recs))
        self.assertEqual(sink.messages(), [])
        self.assertEqual(acct(d, "delivery"), [])
        d.stop()

    def test_tls_verify_untrusted_certificate_defers(self):
        sink = self.sink("--tls-generate", os.path.join(self.tmpdir(), "tls"))
        d = self.daemon(routes={"a.example": "127.0.0.1:%d" % sink.port},
                        delivery='    tls_policy {\n        "a.example" = verify;\n    }\n')
        send(d, ["vera@a.example"])
        # no fallback to plaintext, not on a retry either (retry 1 s)
        recs = wait_acct(d, "transient", "vera@a.example", n=3)
        self.assertEqual([r["status"] for r in recs], ["4.7.5"] * len(recs), recs)
        self.assertRegex(recs[0]["text"], r"(?i)certificate")
        self.assertEqual(sink.messages(), [])
        self.assertEqual(acct(d, "delivery"), [])
        d.stop()

    def test_several_recipients_one_transaction(self):
        sink = self.sink("--no-starttls")
        d = self.daemon(routes={"a.example": "127.0.0.1:%d" % sink.port})
        rcpts = ["r1@a.example", "r2@a.example", "r3@a.example"]
        send(d, rcpts)
        recs = wait_acct(d, "delivery", n=3)
        d.wait_queue(0)  # every recipient has its outcome: nothing more will be sent
        msgs = sink.messages()
        self.assertEqual(len(msgs), 1)  # one transaction, not three
        self.assertEqual(sorted(msgs[0][0]["rcpts"]), rcpts)
        self.assertEqual(sorted(r["recipient"] for r in recs), rcpts)
        d.stop()

    # -- DNS

    def test_mx_fallback_when_first_mx_refuses(self):
        sink = self.sink("--no-starttls")
        dns = st.Dnsmasq("--mx-host=a.example,mx1.a.example,10",
                         "--mx-host=a.example,mx2.a.example,20",
                         "--host-record=mx1.a.example,127.0.0.2",
                         "--host-record=mx2.a.example,127.0.0.1")
        self.addCleanup(dns.stop)
        d = self.daemon(delivery='    resolvers = "127.0.0.1:%d";\n    port = %d;\n'
                        % (dns.port, sink.port))
        send(d, ["erin@a.example"])
        env, _ = sink.wait_messages(1)[0]
        self.assertEqual(env["rcpts"], ["erin@a.example"])
        rec = wait_acct(d, "delivery", "erin@a.example")[0]
        self.assertEqual(rec["mx"], "mx2.a.example")
        self.assertEqual(rec["mx_ip"], "127.0.0.1")
        # the first MX was tried (its address refuses: nothing listens on
        # 127.0.0.2 at the sink's port) before the second
        self.assertRegex(d.stderr(), r"mx1\.a\.example\[127\.0\.0\.2\]")
        d.stop()

    def test_null_mx_and_nxdomain_bounce(self):
        dns = FakeDns({("null.example", "MX"): [(0, "")]}, nxdomain={"nx.example"})
        self.addCleanup(dns.stop)
        d = self.daemon(delivery='    resolvers = "127.0.0.1:%d";\n' % dns.port,
                        queue=FAST_QUEUE.replace("}", "    dsn = false;\n}"))
        send(d, ["x@null.example"])
        send(d, ["y@nx.example"])
        rec = wait_acct(d, "bounce", "x@null.example")[0]
        self.assertEqual(rec["status"], "5.1.10")
        self.assertEqual(rec["code"], 556)
        self.assertEqual(rec["category"], "bad-domain")
        rec = wait_acct(d, "bounce", "y@nx.example")[0]
        self.assertEqual(rec["status"], "5.1.2")
        self.assertEqual(rec["category"], "bad-domain")
        self.assertIn(("null.example", "MX"), dns.queries)
        d.wait_queue(0)
        d.stop()

    def test_dns_failure_defers(self):
        s, dead = st.udp_blackhole()  # a DNS server that never answers
        self.addCleanup(s.close)
        d = self.daemon(delivery='    resolvers = "127.0.0.1:%d";\n' % dead)
        send(d, ["z@unresolvable.example"])
        rec = wait_acct(d, "transient", "z@unresolvable.example")[0]
        self.assertEqual(rec["status"], "4.4.3")
        self.assertEqual(acct(d, "bounce"), [])
        self.assertEqual(d.status()["queue"]["messages"], 1)
        d.stop()

    # -- replies

    def test_tempfail_then_delivered_on_retry(self):
        sink = self.sink("--no-starttls")
        d = self.daemon(routes={"a.example": "127.0.0.1:%d" % sink.port})
        send(d, ["tempfailonce@a.example"])
        rec = wait_acct(d, "transient", "tempfailonce@a.example")[0]
        self.assertEqual(rec["code"], 450)
        wait_acct(d, "delivery", "tempfailonce@a.example", timeout=30)
        self.assertEqual(len(sink.wait_messages(1)), 1)
        d.wait_queue(0)
        d.stop()

    def test_permfail_bounces_with_dsn_to_sender(self):
        sink = self.sink("--no-starttls")
        route = "127.0.0.1:%d" % sink.port
        d = self.daemon(routes={"a.example": route, "s.example": route})
        send(d, ["permfail@a.example"], sender="owner@s.example")
        rec = wait_acct(d, "bounce", "permfail@a.example")[0]
        self.assertEqual(rec["code"], 550)
        self.assertEqual(rec["status"], "5.1.1")
        self.assertEqual(rec["category"], "bad-mailbox")
        env, raw = sink.wait_messages(1)[0]  # the DSN
        self.assertEqual(env["rcpts"], ["owner@s.example"])
        self.assertEqual(env["mail_from"], "")
        text = raw.decode(errors="replace")
        self.assertIn("multipart/report", text)
        self.assertIn("permfail@a.example", text)
        self.assertIn("5.1.1", text)
        rep = st.check_dsn(raw, ret="hdrs")  # RFC 3464, parsed with the email package
        self.assertEqual(rep.recipient("permfail@a.example")["status"], "5.1.1")
        d.wait_queue(0)
        d.stop()

    def test_hangup_mid_data_loses_nothing(self):
        sink = self.sink("--no-starttls")
        d = self.daemon(routes={"a.example": "127.0.0.1:%d" % sink.port})
        send(d, ["drop@a.example"])
        rec = wait_acct(d, "transient", "drop@a.example")[0]
        self.assertTrue(rec["status"].startswith("4."), rec)
        self.assertEqual(acct(d, "delivery"), [])
        self.assertEqual(acct(d, "bounce"), [])
        self.assertEqual(d.status()["queue"]["messages"], 1)  # still queued
        d.stop()

    # -- misbehaving servers

    def test_endless_reply_defers(self):
        srv = RawServer("endless")
        self.addCleanup(srv.stop)
        d = self.daemon(routes={"a.example": "127.0.0.1:%d" % srv.port})
        send(d, ["long@a.example"])
        rec = wait_acct(d, "transient", "long@a.example")[0]
        self.assertTrue(rec["status"].startswith("4.4."), rec)
        self.assertIn("reply too long", rec["text"])
        d.stop()

    def test_silent_server_times_out(self):
        srv = RawServer("silent")
        self.addCleanup(srv.stop)
        d = self.daemon(routes={"a.example": "127.0.0.1:%d" % srv.port},
                        delivery="    greeting_timeout = 1s;\n")
        t0 = time.monotonic()
        send(d, ["quiet@a.example"])
        rec = wait_acct(d, "transient", "quiet@a.example", timeout=15)[0]
        self.assertGreaterEqual(time.monotonic() - t0, 0.9)
        self.assertIn("timeout", rec["text"])
        self.assertEqual(rec["category"], "no-answer-from-host")
        d.stop()

    def test_dead_destination_marked_down(self):
        closed = st.free_port()  # held, nobody listens: refused
        self.addCleanup(st.release_port, closed)
        d = self.daemon(routes={"down.example": "127.0.0.1:%d" % closed},
                        delivery="    dead_after_failures = 2;\n    dead_time = 1m;\n")
        send(d, ["a@down.example"])
        # retries every second: after two failed connections the destination
        # is down and its recipients are deferred without connecting
        recs = st.wait_for(lambda: [r for r in acct(d, "transient", "a@down.example")
                                    if "marked down" in (r.get("text") or "")], 20,
                           what="a 'marked down' deferral")
        self.assertEqual(recs[0]["status"], "4.4.1")
        self.assertIn("marked down", d.stderr())
        d.stop()

    # -- pooling

    def test_connection_reuse(self):
        sink = self.sink("--no-starttls")
        d = self.daemon(routes={"a.example": "127.0.0.1:%d" % sink.port})
        n = 1000
        with d.smtp() as c:
            for i in range(n):
                c.sendmail("sender@s.example", ["u%d@a.example" % i],
                           b"Subject: m%d\r\n\r\nbody %d\r\n" % (i, i))
        wait_acct(d, "delivery", n=n, timeout=120)
        msgs = sink.wait_messages(n, timeout=30)
        self.assertEqual(len(msgs), n)
        conns = {m[0]["conn"] for m in msgs}
        self.assertLess(len(conns), n // 10, "connections used: %d" % len(conns))
        st_ = d.status()
        self.assertEqual(st_["queue"]["messages"], 0)
        d.stop()

    # -- crash

    def test_kill9_during_delivery_loses_nothing(self):
        sink = self.sink("--no-starttls")
        d = self.daemon(routes={"a.example": "127.0.0.1:%d" % sink.port})
        n = 300
        with d.smtp() as c:
            for i in range(n):
                c.sendmail("sender@s.example", ["k%d@a.example" % i],
                           b"Subject: k%d\r\n\r\nbody\r\n" % i)
        st.wait_for(lambda: len(sink.messages()) >= 20, 30, what="some deliveries")
        d.kill9()
        d.start()
        st.wait_for(lambda: d.status()["queue"]["messages"] == 0, 120,
                    what="the queue to drain after restart")
        got = set()
        for env, _ in sink.messages():
            got.update(env["rcpts"])
        missing = {"k%d@a.example" % i for i in range(n)} - got
        self.assertEqual(missing, set())
        d.stop()


if __name__ == "__main__":
    st.main()
