#!/usr/bin/python3
"""The operational log written a loop iteration at a time (core/base/log.c,
log_buffer; docs/operations.md "The operational log"), and reception that
goes on reading while a message's commit runs (core/server/smtp_server.c).

- every line is whole and every event has its line: after many messages on
  concurrent connections and a SIGTERM, each accepted message has its
  reception line and its delivery line, exactly once, and the accounting
  log agrees; each thread's lines are in time order;
- a line is written before the thread waits: with no traffic after it, a
  message's lines are in the file at once (not held until the next one);
- (a warning written at once with what was held, a full hold written
  before it overflows: tests/unit/log_buffer_test.c)
- `sluicectl log-rotate` after the file was moved away: lines go on in
  the new file, none lost or cut between the two;
- the threads carry their names (ps -L, top -H, perf: smtp0, dlv0, queue);
- commands sent behind the end of data, while the commit runs, are
  answered after its 250, in order; a client that hangs up then still has
  its message queued, delivered and accounted once.

Env: SLUICE_BUILD (binaries), SLUICE_SRC.
"""
import collections
import os
import re
import smtplib
import sys
import threading
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sluicetest as st  # noqa: E402

LINE = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z) (debug|info |warn |error) "
                  r"\[([a-z0-9]+)\] (.*)$")
RECEIVED = re.compile(r"^([0-9A-F]{16}) from=<[^>]*> nrcpt=1 size=")
DELIVERED = re.compile(r"^([0-9A-F]{16})\S* to=<[^>]*> .* status=sent ")
N_CONN, N_PER_CONN = 8, 25


def body(i):
    return ("From: <s@example.com>\r\nTo: <r%d@example.test>\r\nSubject: log %d\r\n\r\n"
            "line of the body\r\n" % (i, i)).encode()


def parse(text, test):
    """[(time, level, thread, text)] of every line; fails on a cut line."""
    out = []
    for ln in text.split("\n")[:-1]:
        m = LINE.match(ln)
        test.assertIsNotNone(m, "a line that is not whole: %r" % ln[:200])
        out.append(m.groups())
    test.assertTrue(text == "" or text.endswith("\n"), "the log ends in a cut line")
    return out


class LogBuffer(unittest.TestCase):
    def setUp(self):
        self.sink = st.Sink()
        self.addCleanup(self.sink.stop)
        self.d = st.Daemon(routes={"example.test": "127.0.0.1:%d" % self.sink.port})
        self.addCleanup(self.d.close)
        self.oplog = os.path.join(self.d.dir, "sluiced.log")
        with open(self.d.conf_path) as f:
            text = f.read()
        text = text.replace("log {\n", 'log {\n    file = "%s";\n' % self.oplog, 1)
        with open(self.d.conf_path, "w") as f:
            f.write(text)
        self.d.start()

    def read(self, path=None):
        with open(path or self.oplog, errors="replace") as f:
            return f.read()

    def send_many(self, first=0):
        """N_CONN connections at once, N_PER_CONN messages each."""
        errors = []

        def one(k):
            try:
                with smtplib.SMTP("127.0.0.1", self.d.smtp_port, timeout=60) as c:
                    for j in range(N_PER_CONN):
                        i = first + k * N_PER_CONN + j
                        c.sendmail("s@example.com", ["r%d@example.test" % i], body(i))
            except Exception as e:  # noqa: BLE001 - reported below
                errors.append(repr(e))
        ths = [threading.Thread(target=one, args=(k,)) for k in range(N_CONN)]
        for t in ths:
            t.start()
        for t in ths:
            t.join(120)
        self.assertEqual(errors, [])
        return N_CONN * N_PER_CONN

    def check_complete(self, lines, n):
        """Each of n messages: one reception line, one delivery line, as
        the accounting log has them."""
        rec = collections.Counter(m.group(1) for _, _, _, t in lines
                                  for m in [RECEIVED.match(t)] if m)
        dlv = collections.Counter(m.group(1) for _, _, _, t in lines
                                  for m in [DELIVERED.match(t)] if m)
        self.assertEqual(len(rec), n, "reception lines")
        self.assertEqual(set(rec.values()), {1})
        self.assertEqual(set(dlv), set(rec), "a delivery line for each message")
        self.assertEqual(set(dlv.values()), {1})
        acct = self.d.accounting()
        self.assertEqual({r["msgid"] for r in acct if r["type"] == "received"}, set(rec))
        self.assertEqual({r["msgid"] for r in acct if r["type"] == "delivery"}, set(rec))

    def test_complete_and_in_order_after_sigterm(self):
        n = self.send_many()
        self.sink.wait_messages(n, 120)
        st.wait_for(lambda: len([r for r in self.d.accounting() if r["type"] == "delivery"])
                    >= n, 60, what="delivered records")
        self.d.stop()
        lines = parse(self.read(), self)
        self.check_complete(lines, n)
        by_thread = collections.defaultdict(list)
        for t, _, th, _ in lines:
            by_thread[th].append(t)
        for th, times in by_thread.items():
            self.assertEqual(times, sorted(times), "lines of thread %s out of order" % th)
        self.assertIn("smtp0", by_thread)
        self.assertTrue(any(th.startswith("dlv") for th in by_thread))
        # shutdown's last lines are there, after every message's
        done = [k for k, l in enumerate(lines) if l[3].startswith("shutdown complete")]
        self.assertEqual(len(done), 1, lines[-5:])
        last_msg = max(k for k, l in enumerate(lines)
                       if RECEIVED.match(l[3]) or DELIVERED.match(l[3]))
        self.assertLess(last_msg, done[0])

    def test_written_before_the_thread_waits(self):
        with smtplib.SMTP("127.0.0.1", self.d.smtp_port, timeout=30) as c:
            c.sendmail("s@example.com", ["alone@example.test"], body(0))
            # the session is still open and nothing else comes in: the
            # reception line of the message must be in the file already
            st.wait_for(lambda: any(RECEIVED.match(t) for _, _, _, t in
                                    parse(self.read(), self)), 10,
                        what="the reception line while the session is idle")
        self.sink.wait_messages(1, 30)
        st.wait_for(lambda: any(DELIVERED.match(t) for _, _, _, t in
                                parse(self.read(), self)), 10, what="the delivery line")

    def test_log_rotate_moved_away(self):
        n1 = self.send_many()
        self.sink.wait_messages(n1, 120)
        moved = self.oplog + ".1"
        os.rename(self.oplog, moved)
        self.d.ctl("log-rotate").check()
        n2 = self.send_many(first=n1)
        self.sink.wait_messages(n1 + n2, 120)
        st.wait_for(lambda: len([r for r in self.d.accounting() if r["type"] == "delivery"])
                    >= n1 + n2, 60, what="delivered records")
        self.d.stop()
        old, new = self.read(moved), self.read()
        self.assertTrue(old.endswith("\n") and new.endswith("\n"))
        lines = parse(old, self) + parse(new, self)
        self.check_complete(lines, n1 + n2)
        later = {m.group(1) for _, _, _, t in parse(new, self) for m in [RECEIVED.match(t)] if m}
        self.assertGreaterEqual(len(later), n2 - N_CONN,
                                "the messages after the rotation are in the new file")

    def test_thread_names(self):
        task = "/proc/%d/task" % self.d.proc.pid
        names = set()
        for tid in os.listdir(task):
            with open(os.path.join(task, tid, "comm")) as f:
                names.add(f.read().strip())
        with open("/proc/%d/comm" % self.d.proc.pid) as f:
            self.assertEqual(f.read().strip(), "sluiced")  # the process keeps its name
        for want in ("smtp0", "dlv0", "queue"):
            self.assertIn(want, names)

    def test_input_during_commit(self):
        c = st.RawClient(self.d.smtp_port)
        self.addCleanup(c.close)
        self.assertEqual(c.reply()[0], 220)
        self.assertEqual(c.cmd("EHLO client.example")[0], 250)
        self.assertEqual(c.cmd("MAIL FROM:<s@example.com>")[0], 250)
        self.assertEqual(c.cmd("RCPT TO:<p1@example.test>")[0], 250)
        self.assertEqual(c.cmd("DATA")[0], 354)
        c.send(b"Subject: p1\r\n\r\nbody\r\n.\r\n")
        # behind the dot, before its 250: a whole second transaction
        c.send(b"MAIL FROM:<s@example.com>\r\nRCPT TO:<p2@example.test>\r\nDATA\r\n")
        c.send(b"Subject: p2\r\n\r\nbody\r\n.\r\nQUIT\r\n")
        got = [c.reply() for _ in range(6)]
        self.assertEqual([g[0] for g in got], [250, 250, 250, 354, 250, 221], got)
        self.assertIn("queued as", got[0][1])
        self.assertIn("queued as", got[4][1])
        self.assertNotEqual(got[0][1], got[4][1])
        # a client that hangs up right behind its dot
        c2 = st.RawClient(self.d.smtp_port)
        self.addCleanup(c2.close)
        self.assertEqual(c2.reply()[0], 220)
        self.assertEqual(c2.cmd("EHLO client.example")[0], 250)
        c2.send(b"MAIL FROM:<s@example.com>\r\nRCPT TO:<gone@example.test>\r\nDATA\r\n")
        self.assertEqual([c2.reply()[0] for _ in range(3)], [250, 250, 354])
        c2.send(b"Subject: gone\r\n\r\nbody\r\n.\r\n")
        c2.close()
        msgs = self.sink.wait_messages(3, 30)
        self.assertEqual(sorted(r for m in msgs for r in (m[0].get("rcpts") or [])),
                         ["gone@example.test", "p1@example.test", "p2@example.test"])
        st.wait_for(lambda: len([r for r in self.d.accounting() if r["type"] == "delivery"])
                    >= 3, 30, what="delivered records")
        acct = self.d.accounting()
        self.assertEqual(sorted(a for r in acct if r["type"] == "received" for a in r["rcpts"]),
                         ["gone@example.test", "p1@example.test", "p2@example.test"])


if __name__ == "__main__":
    st.main()
