#!/usr/bin/python3
"""Reception limits against clients that do not play by the rules, each
checked with the exact reply a client sees (README, "Reception"):

* a client that writes and never reads: sluiced stops reading from it once
  its unsent replies pass a small bound, so its memory (RssAnon, measured
  in /proc) stays flat, and the command limit closes the session;
* EHLO/HELO/NOOP/RSET and other commands that make no progress count
  towards smtp.max_commands_before_mail (421 4.7.0) and do not restart the
  idle timer (421 4.4.2);
* smtp.max_connections (421 4.7.0), spool.high_water (452 4.3.1),
  smtp.max_pending (421 4.3.2: the spool's writer is held by mdb_load
  holding LMDB's write lock, as a stalled disk would);
* file descriptors: under `prlimit --nofile=256:256` the connections past
  the cap derived at start get 421 4.3.2 with a log line, sluicectl still
  answers, and a message accepted meanwhile is resolved (DNS) and
  delivered;
* SMTPUTF8 reception (RFC 6531): 553 5.6.7 without the parameter, accepted
  and relayed with it.
"""
import os
import re
import select
import socket
import subprocess
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sluicetest as st  # noqa: E402


def greet(port, src="127.0.0.1", helo="client.example"):
    c = st.RawClient(port, src)
    code, text = c.reply()
    assert code == 220, text
    if helo:
        code, text = c.cmd("EHLO " + helo)
        assert code == 250, text
    return c


def patch_conf(d, old, new):
    """Replace old (a string or a compiled regex) by new in d's generated
    configuration, once; the daemon is not started yet."""
    with open(d.conf_path) as f:
        text = f.read()
    if isinstance(old, str):
        assert old in text, old
        text = text.replace(old, new, 1)
    else:
        text, n = old.subn(new, text, 1)
        assert n == 1, old.pattern
    with open(d.conf_path, "w") as f:
        f.write(text)


def wait_no_session(d):
    """Wait until the daemon holds no SMTP session: the probe connections
    of Daemon.start() (wait_for_port) count until the daemon sees them go."""
    st.wait_for(lambda: d.status()["smtp"]["connections_current"] == 0, 10,
                what="no SMTP session open")


def codes_of(data):
    """Reply codes of the last line of each reply in data."""
    return [int(m) for m in re.findall(rb"(?m)^(\d{3}) ", data)]


class NeverReads(unittest.TestCase):
    """A client that pipelines EHLO forever and never reads a reply."""

    def flood(self, d, seconds=60, stall=3.0, limit=64 << 20):
        """Write "EHLO x" lines without reading until the server stops
        taking them (no progress for `stall` seconds), `limit` bytes are
        sent, or the connection is closed. Returns (bytes sent, closed)."""
        c = st.RawClient(d.smtp_port, "127.0.0.3")
        self.addCleanup(c.close)
        sock = c.sock
        sock.setblocking(False)
        chunk = b"EHLO x\r\n" * 8192
        sent, last, t0 = 0, time.monotonic(), time.monotonic()
        while sent < limit and time.monotonic() - t0 < seconds:
            _, w, _ = select.select([], [sock], [], 0.2)
            if not w:
                if time.monotonic() - last > stall:
                    return sent, False
                continue
            try:
                n = sock.send(chunk)
            except BlockingIOError:
                continue
            except OSError:
                return sent, True
            sent += n
            last = time.monotonic()
        return sent, False

    def test_memory_stays_flat(self):
        # a command limit out of the way: the write bound alone must hold
        d = st.Daemon(sluiced=st.release_sluiced(),
                      smtp_extra="    max_commands_before_mail = 100000;\n")
        with d:
            c0 = greet(d.smtp_port, "127.0.0.2")  # a session, so the first one's buffers exist
            c0.close()
            time.sleep(0.2)
            before = st.rss_anon_kib(d.proc.pid)
            sent, closed = self.flood(d)
            after = st.rss_anon_kib(d.proc.pid)
            print("sent %d bytes without reading; RssAnon %d -> %d KiB"
                  % (sent, before, after), file=sys.stderr)
            self.assertLess(after - before, 8 * 1024,
                            "RssAnon grew by %d KiB for %d bytes of EHLO" % (after - before, sent))
            self.assertLess(sent, 16 << 20, "the server kept reading from a client that "
                            "does not read its replies")
            # others are served meanwhile
            with d.smtp() as s:
                s.sendmail("ok@sender.example", ["ok@example.test"], b"Subject: ok\r\n\r\nx\r\n")

    def test_closed_by_the_command_limit(self):
        with st.Daemon() as d:
            c = st.RawClient(d.smtp_port, "127.0.0.4")
            self.addCleanup(c.close)
            c.send(b"EHLO x\r\n" * 1000)  # fits in the socket buffers: no need to read
            waited, got = c.wait_close(20)
            self.assertLess(waited, 20, "session not closed")
            codes = codes_of(got)
            self.assertEqual(codes, [220] + [250] * 20 + [421], got[-300:])
            self.assertIn(b"421 4.7.0 Too many commands", got)
            self.assertRegex(d.stderr(), r"client=127\.0\.0\.4 too many commands")


class JunkCommands(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.d = st.Daemon(smtp_extra="    idle_timeout = 3s;\n    max_commands_before_mail = 20;\n")
        cls.d.start()

    @classmethod
    def tearDownClass(cls):
        try:
            cls.d.stop()
        finally:
            cls.d.cleanup()

    def test_each_kind_counts(self):
        for cmd in (b"EHLO x", b"HELO x", b"NOOP", b"RSET", b"VRFY a", b"HELP"):
            with self.subTest(cmd=cmd):
                c = greet(self.d.smtp_port, helo=None)
                self.addCleanup(c.close)
                c.send((cmd + b"\r\n") * 25)
                _, got = c.wait_close(10)
                codes = codes_of(got)  # the 220 was read by greet()
                self.assertEqual(len(codes), 20 + 1, got[-300:])
                self.assertEqual(codes[-1], 421)
                self.assertIn(b"421 4.7.0 Too many commands", got)

    def test_mail_rset_loop_counts(self):
        c = greet(self.d.smtp_port)
        self.addCleanup(c.close)
        c.send(b"MAIL FROM:<loop@sender.example>\r\nRSET\r\n" * 30)
        _, got = c.wait_close(10)
        self.assertIn(b"421 4.7.0 Too many commands", got)
        # EHLO counts too: 19 MAIL/RSET pairs, the 20th MAIL, then the 20th
        # RSET is the 21st command without progress
        self.assertEqual(codes_of(got).count(250), 2 * 19 + 1)

    def test_a_message_restarts_the_count(self):
        c = greet(self.d.smtp_port)
        self.addCleanup(c.close)
        for i in range(3):
            for _ in range(10):
                self.assertEqual(c.cmd("NOOP")[0], 250)
            for cmd in ("MAIL FROM:<n@sender.example>", "RCPT TO:<n%d@example.test>" % i):
                self.assertEqual(c.cmd(cmd)[0], 250)
            self.assertEqual(c.cmd("DATA")[0], 354)
            self.assertEqual(c.cmd("Subject: n\r\n\r\nx\r\n.")[0], 250)
            self.assertEqual(c.cmd("RSET")[0], 250)
        self.assertEqual(c.cmd("QUIT")[0], 221)

    def test_noop_does_not_restart_the_idle_timer(self):
        c = greet(self.d.smtp_port)
        self.addCleanup(c.close)
        t0 = time.monotonic()
        got, codes = b"", []
        for _ in range(19):  # one a second: each comes before the 3 s idle timeout
            try:
                c.send(b"NOOP\r\n")
            except OSError:
                break
            code, text = c.reply()
            if code != 250:
                got = text.encode()
                break
            time.sleep(1)
        waited = time.monotonic() - t0
        self.assertIn(b"421 4.4.2", got, "still open after %.1fs of NOOPs" % waited)
        self.assertLess(waited, 15)


class Limits(unittest.TestCase):
    def test_max_connections(self):
        with st.Daemon(smtp_extra="    max_connections = 3;\n") as d:
            wait_no_session(d)
            held = [greet(d.smtp_port, "127.0.0.%d" % (3 + i), helo=None) for i in range(3)]
            for c in held:
                self.addCleanup(c.close)
            c = st.RawClient(d.smtp_port, "127.0.0.9")
            self.addCleanup(c.close)
            code, text = c.reply()
            self.assertEqual(code, 421, text)
            self.assertIn("421 4.7.0 Too many connections", text)
            waited, _ = c.wait_close(10)
            self.assertLess(waited, 10)
            self.assertEqual(d.status()["smtp"]["connections_refused"], 1)
            # a slot that frees up is given to the next client
            held[0].close()
            st.wait_for(lambda: self._greeted(d), 10, what="a free slot")

    @staticmethod
    def _greeted(d):
        c = st.RawClient(d.smtp_port, "127.0.0.10")
        try:
            return c.reply()[0] == 220
        finally:
            c.close()

    def test_spool_high_water(self):
        d = st.Daemon()
        patch_conf(d, "map_size = 64M;", "map_size = 16M;\n    max_size = 16M;\n    high_water = 2;")
        with d:
            big = b"Subject: big\r\n\r\n" + (b"z" * 998 + b"\r\n") * 600  # ~600 KB
            with d.smtp() as s:
                s.sendmail("big@sender.example", ["big@example.test"], big)
            st.wait_for(lambda: d.status()["queue"]["spool_fill_pct"] >= 2, 20,
                        what="spool over high water")
            c = greet(d.smtp_port)
            self.addCleanup(c.close)
            code, text = c.cmd("MAIL FROM:<more@sender.example>")
            self.assertEqual(code, 452, text)
            self.assertIn("452 4.3.1 Insufficient system storage", text)
            # the session stays: a client may try again later
            self.assertEqual(c.cmd("NOOP")[0], 250)
            self.assertRegex(d.stderr(), r"reject MAIL: spool over high water")

    def test_max_pending(self):
        with st.Daemon(smtp_extra="    max_pending = 1;\n") as d:
            hold = LmdbWriteLock(d.spool)
            self.addCleanup(hold.release)
            hold.take()
            # two messages wait for a commit that cannot happen yet
            waiting = []
            for i in range(2):
                c = greet(d.smtp_port, "127.0.0.%d" % (3 + i))
                self.addCleanup(c.close)
                for cmd in ("MAIL FROM:<p%d@sender.example>" % i, "RCPT TO:<p%d@example.test>" % i):
                    self.assertEqual(c.cmd(cmd)[0], 250)
                self.assertEqual(c.cmd("DATA")[0], 354)
                c.send(b"Subject: pending\r\n\r\nx\r\n.\r\n")
                waiting.append(c)
            c = greet(d.smtp_port, "127.0.0.9")
            self.addCleanup(c.close)
            for _ in range(10):  # until both inserts are counted as pending
                code, text = c.cmd("MAIL FROM:<third@sender.example>")
                if code != 250:
                    break
                self.assertEqual(c.cmd("RSET")[0], 250)
                time.sleep(0.2)
            self.assertEqual(code, 421, text)
            self.assertIn("421 4.3.2 System busy, try again later", text)
            waited, _ = c.wait_close(10)
            self.assertLess(waited, 10)
            self.assertRegex(d.stderr(), r"reject MAIL: \d+ inserts pending")
            # nothing lost: once the spool moves, both get their 250
            hold.release()
            for w in waiting:
                code, text = w.reply()
                self.assertEqual(code, 250, text)
            self.assertEqual(len(d.list()["messages"]), 2)


class LmdbWriteLock:
    """Holds the LMDB write lock of a spool from another process (mdb_load
    waiting for input inside its write transaction), as a stalled disk or
    a stuck backup tool would: the queue thread cannot commit meanwhile."""

    def __init__(self, spool):
        self.spool = spool
        self.proc = None

    def take(self, timeout=20):
        rfd, self.wfd = os.pipe()
        # the header first, so that the only later read(2) of stdin is the
        # one inside the write transaction
        os.write(self.wfd, b"VERSION=3\nformat=bytevalue\ntype=btree\nHEADER=END\n")
        self.proc = subprocess.Popen(["mdb_load", "-s", "sluicetest_hold", self.spool],
                                     stdin=rfd, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        os.close(rfd)

        def in_txn():
            if self.proc.poll() is not None:
                raise AssertionError("mdb_load exited %s" % self.proc.returncode)
            try:
                with open("/proc/%d/syscall" % self.proc.pid) as f:
                    fields = f.read().split()
            except OSError:
                return False
            return fields[:2] == ["0", "0x0"]  # read(0, ...): waiting for data lines
        st.wait_for(in_txn, timeout, what="mdb_load holding the spool's write lock")

    def release(self):
        if self.proc is None:
            return
        try:
            # a key, then a line that is no value: mdb_load aborts its
            # transaction and leaves the spool as it was
            os.write(self.wfd, b" 00\nzz\n")
            os.close(self.wfd)
        except OSError:
            pass
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None


class FileDescriptors(unittest.TestCase):
    def test_cap_under_a_low_limit(self):
        sink = st.Sink("--no-starttls")
        self.addCleanup(sink.stop)
        dns = st.Dnsmasq("--mx-host=fd.test,mx.fd.test,10", "--host-record=mx.fd.test,127.0.0.1")
        self.addCleanup(dns.stop)
        d = st.Daemon(wrapper=["prlimit", "--nofile=256:256"])
        patch_conf(d, "delivery {\n", 'delivery {\n    resolvers = "127.0.0.1:%d";\n    port = %d;\n'
                   % (dns.port, sink.port))
        patch_conf(d, re.compile(r"\n\s*smarthost\s*=[^;\n]*;"), "")  # route by MX
        with d:
            wait_no_session(d)
            greeted, refused = [], []
            for i in range(300):  # more than the limit itself
                c = st.RawClient(d.smtp_port, "127.0.0.%d" % (3 + i // 150), timeout=10)
                self.addCleanup(c.close)
                try:
                    code, text = c.reply()
                except OSError as e:
                    code, text = None, repr(e)
                # every connection gets an answer: a greeting, or a 421
                self.assertIn(code, (220, 421), "connection %d: %r" % (i, text))
                if code == 220:
                    greeted.append(c)
                else:
                    self.assertIn("421 4.3.2", text)
                    refused.append(c)
            m = re.search(r"open files limit (\d+): at most (\d+) connections", d.stderr())
            self.assertIsNotNone(m, d.stderr()[-2000:])
            self.assertEqual(int(m.group(1)), 256)
            cap = int(m.group(2))
            self.assertGreater(cap, 16)
            self.assertEqual(len(greeted), cap)
            self.assertEqual(len(refused), 300 - cap)
            self.assertRegex(d.stderr(), r"refused: .*open files")
            # the operator still gets in
            r = d.ctl("status")
            self.assertEqual(r.rc, 0, r.err)
            # and a message accepted now is resolved and delivered
            c = greeted[0]
            for cmd in ("EHLO fd.example", "MAIL FROM:<fd@sender.example>", "RCPT TO:<u@fd.test>"):
                self.assertEqual(c.cmd(cmd)[0], 250)
            self.assertEqual(c.cmd("DATA")[0], 354)
            code, text = c.cmd("Subject: fd\r\n\r\nunder the cap\r\n.")
            self.assertEqual(code, 250, text)
            env, raw = sink.wait_messages(1, timeout=60)[0]
            self.assertIn(b"under the cap", raw)
            recs = [r for r in d.accounting() if r.get("type") in ("transient", "bounce")]
            self.assertEqual(recs, [])
            for c in greeted + refused:
                c.close()

    def test_soft_limit_raised_to_hard(self):
        with st.Daemon(wrapper=["prlimit", "--nofile=256:2048"]) as d:
            with open("/proc/%d/limits" % d.proc.pid) as f:
                line = [l for l in f if l.startswith("Max open files")][0]
            self.assertEqual(line.split()[3:5], ["2048", "2048"], line)
            self.assertRegex(d.stderr(), r"open files limit 2048")


class SmtpUtf8(unittest.TestCase):
    def test_reception(self):
        peer = st.Peer(smtputf8=True)
        self.addCleanup(peer.stop)
        with st.Daemon(routes={"peer.test": "127.0.0.1:%d" % peer.port}) as d:
            c = st.RawClient(d.smtp_port)
            self.addCleanup(c.close)
            self.assertEqual(c.reply()[0], 220)
            code, text = c.cmd("EHLO client.example")
            self.assertIn("250 SMTPUTF8", text)
            code, text = c.cmd("MAIL FROM:<jörg@sender.example>")
            self.assertEqual(code, 553, text)
            self.assertIn("553 5.6.7", text)
            self.assertEqual(c.cmd("MAIL FROM:<ascii@sender.example>")[0], 250)
            code, text = c.cmd("RCPT TO:<ünï@peer.test>")
            self.assertEqual(code, 553, text)
            self.assertIn("553 5.6.7", text)
            self.assertEqual(c.cmd("RSET")[0], 250)
            self.assertEqual(c.cmd("MAIL FROM:<jörg@sender.example> SMTPUTF8")[0], 250)
            self.assertEqual(c.cmd("RCPT TO:<ünï@peer.test>")[0], 250)
            self.assertEqual(c.cmd("DATA")[0], 354)
            body = "Subject: grüße\r\nFrom: jörg@sender.example\r\n\r\nçà et là\r\n"
            c.send(body.encode() + b".\r\n")
            code, text = c.reply()
            self.assertEqual(code, 250, text)
            rec, raw = peer.wait_messages(1)[0]
            self.assertEqual(rec["mail_from"], "jörg@sender.example")
            self.assertIn("SMTPUTF8", rec["mail_params"])
            self.assertEqual(rec["rcpts"][0]["addr"], "ünï@peer.test")
            self.assertTrue(st.strip_received(raw).startswith(
                "Subject: grüße\r\nFrom: jörg@sender.example\r\n".encode()), raw)
            self.assertTrue(raw.endswith("\r\n\r\nçà et là\r\n".encode()), raw)


if __name__ == "__main__":
    unittest.main(verbosity=2)
