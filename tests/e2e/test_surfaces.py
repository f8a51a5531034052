#!/usr/bin/python3
"""What a remote server's bytes become on the operator's surfaces.

A receiving server we did not write (aiosmtpd, tests/e2e/peer_smtp.py)
answers with replies holding a Latin-1 byte, a raw C1 byte, ESC and OSC
sequences, DEL and BEL; a client submits a job name holding ESC and a
Latin-1 byte. Then:
- every line of the accounting log is valid UTF-8 and strict JSON, with
  the peer's text in it (invalid bytes as U+FFFD, controls escaped);
- every control answer that carries that text (list, inspect, queues,
  queue, providers) is valid UTF-8 and strict JSON, and sluicectl --json
  prints it so;
- sluicectl's human output shows the control bytes as \\xNN: nothing
  reaches the terminal that it would act on;
- sluicectl talks only to a socket whose listening process runs as root
  or as the invoking user (or the --owner named one).

Env: SLUICE_BUILD (binaries), SLUICE_SRC.
"""
import json
import os
import subprocess
import sys
import textwrap
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sluicetest as st  # noqa: E402

# What the peer sends (each character U+0000-U+00FF goes out as that byte).
BAD_REPLY = "550 5.1.1 caf\xe9 <\x1b[31mred\x7f> \x9b2J end"
SOFT_REPLY = "450 4.2.0 na\xefve \x1b]0;pwned\x07 later"
# What a JSON reader must get: each invalid byte as U+FFFD, the rest kept.
BAD_TEXT = "caf\ufffd <\x1b[31mred\x7f> \ufffd2J end"
SOFT_TEXT = "na\ufffdve \x1b]0;pwned\x07 later"
JOB = b"job-\x1b[2J-\xe9"
JOB_TEXT = "job-\x1b[2J-\ufffd"


def message(to, job=None):
    head = b"From: sender@example.com\r\nTo: " + to.encode() + b"\r\nSubject: t\r\n"
    if job is not None:
        head += b"X-Sluice-Job: " + job + b"\r\n"
    return head + b"\r\nbody\r\n"


class PeerTextTest(unittest.TestCase):
    """One daemon routed to the peer, three messages: one bounced, two
    deferred (one with the job name), kept for every test of the class."""

    @classmethod
    def setUpClass(cls):
        cls.peer = st.Peer(reply_encoding="latin-1",
                           rcpt_reply=["bad*@example.test=" + BAD_REPLY,
                                       "soft*@example.test=" + SOFT_REPLY])
        cls.d = st.Daemon(routes={"example.test": "127.0.0.1:%d" % cls.peer.port,
                                  "example.com": "127.0.0.1:%d" % st.free_port()})
        try:
            cls.d.start()
            with cls.d.smtp() as s:
                for to, job in (("bad1@example.test", None), ("soft1@example.test", None),
                                ("soft2@example.test", JOB)):
                    s.sendmail("sender@example.com", [to], message(to, job))
            st.wait_for(cls.attempted, 60, what="the three first attempts in acct.jsonl")
            # (read leniently here: the tests below are the strict readers)
            raw = st.ctl_raw(cls.d.ctl_socket, {"cmd": "list"})
            cls.ids = {m["recipients"][0]["addr"]: m["id"]
                       for m in json.loads(raw.decode("utf-8", "replace"))["messages"]
                       if m["recipients"]}
        except Exception:
            cls.tearDownClass()
            raise

    @classmethod
    def attempted(cls):
        got = set()
        for line in st.acct_raw_lines(cls.d.acct_dir):
            for rcpt in (b"bad1@", b"soft1@", b"soft2@"):
                if rcpt in line and (b'"type":"bounce"' in line or b'"type":"transient"' in line):
                    got.add(rcpt)
        return len(got) == 3

    @classmethod
    def tearDownClass(cls):
        try:
            if cls.d.running():
                cls.d.stop()
        finally:
            cls.d.cleanup()
            cls.peer.stop()

    def ctl_bytes(self, *args):
        return st.run_bytes([st.SLUICECTL, "-s", self.d.ctl_socket] + list(args))

    # -- the accounting log

    def test_accounting_lines_are_strict_json_in_utf8(self):
        lines = st.acct_raw_lines(self.d.acct_dir)
        self.assertGreaterEqual(len(lines), 6)  # 3 received, 3 outcomes (and the DSN's)
        recs = []
        for raw in lines:
            try:
                recs.append(st.strict_json(raw))
            except ValueError as e:  # UnicodeDecodeError is one
                self.fail("accounting line is not strict JSON in UTF-8: %s\n%r" % (e, raw))
        bounce = [r for r in recs if r["type"] == "bounce" and r["recipient"] == "bad1@example.test"]
        soft = [r for r in recs if r["type"] == "transient" and r["recipient"] == "soft1@example.test"]
        self.assertEqual(len(bounce), 1, recs)
        self.assertEqual((bounce[0]["code"], bounce[0]["status"], bounce[0]["text"]),
                         (550, "5.1.1", BAD_TEXT))
        self.assertEqual((soft[0]["code"], soft[0]["status"], soft[0]["text"]),
                         (450, "4.2.0", SOFT_TEXT))
        job = [r for r in recs if r["type"] == "received" and r["job"] is not None]
        self.assertEqual([r["job"] for r in job], [JOB_TEXT])

    # -- the control socket

    def check_answer(self, request):
        raw = st.ctl_raw(self.d.ctl_socket, request)
        try:
            ans = st.strict_json(raw)
        except ValueError as e:
            self.fail("answer to %s is not strict JSON in UTF-8: %s\n%r" % (request, e, raw))
        self.assertTrue(ans["ok"], ans)
        return ans

    def test_control_answers_are_strict_json_in_utf8(self):
        ans = self.check_answer({"cmd": "list"})
        self.assertIn(JOB_TEXT, [m["job"] for m in ans["messages"]])
        ans = self.check_answer({"cmd": "inspect", "id": self.ids["soft1@example.test"]})
        r = ans["message"]["recipients"][0]
        self.assertEqual((r["last_code"], r["last_status"], r["last_text"]),
                         (450, "4.2.0", SOFT_TEXT))
        ans = self.check_answer({"cmd": "queues"})
        dom = [x for x in ans["domains"] if x["domain"] == "example.test"]
        self.assertEqual(dom[0]["last_text"], SOFT_TEXT)
        ans = self.check_answer({"cmd": "queue", "domain": "example.test"})
        self.assertEqual(ans["domain"]["last_text"], SOFT_TEXT)
        ans = self.check_answer({"cmd": "providers"})
        last = [q["last_response"] for p in ans["providers"] for q in p["queues"]]
        self.assertTrue(any(SOFT_TEXT in (x or "") or BAD_TEXT in (x or "") for x in last), last)

    def test_sluicectl_json_is_strict(self):
        for args in (["list"], ["inspect", self.ids["soft2@example.test"]], ["queues"],
                     ["queue", "example.test"], ["providers"]):
            r = self.ctl_bytes("--json", *args)
            self.assertEqual(r.rc, 0, r)
            try:
                st.strict_json(r.out)
            except ValueError as e:
                self.fail("sluicectl --json %s: %s\n%r" % (" ".join(args), e, r.out))

    # -- sluicectl's terminal

    def test_sluicectl_human_output_is_terminal_safe(self):
        outs = {}
        for args in (["list"], ["inspect", self.ids["soft1@example.test"]],
                     ["inspect", self.ids["soft2@example.test"]], ["queues"],
                     ["queue", "example.test"], ["providers"]):
            r = self.ctl_bytes(*args)
            self.assertEqual(r.rc, 0, r)
            bad = st.tty_unsafe(r.out) + st.tty_unsafe(r.err)
            self.assertEqual(bad, [], "sluicectl %s printed:\n%r" % (" ".join(args), r.out))
            outs[args[0] + (args[1] if args[0] == "inspect" else "")] = r.out.decode()
        # the bytes are shown, not dropped
        self.assertIn("job-\\x1b[2J-\ufffd", outs["list"])
        self.assertIn("450 4.2.0 na\ufffdve \\x1b]0;pwned\\x07 later",
                      outs["inspect" + self.ids["soft1@example.test"]])
        self.assertIn("\\x1b]0;pwned\\x07", outs["queue"])


# A control socket served by another user: answers every request with a
# status naming itself, and records what it was sent.
FAKE_SERVER = textwrap.dedent("""
    import json, os, socket, sys
    path, log = sys.argv[1], sys.argv[2]
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(path)
    s.listen(8)
    open(path + ".ready", "w").close()
    while True:
        c, _ = s.accept()
        data = c.recv(65536)
        with open(log, "ab") as f:
            f.write(data)
        c.sendall(json.dumps({"ok": True, "version": "impostor", "pid": 1,
                              "uptime_s": 0, "hostname": "evil"}).encode() + b"\\n")
        c.close()
""")


class SocketOwnerTest(unittest.TestCase):
    """sluicectl checks who listens on the socket before it sends a command."""

    def setUp(self):
        self.dir = st.make_tmpdir("ctl-owner-")
        os.chmod(self.dir, 0o1777)  # world-writable, like /tmp
        self.sock = os.path.join(self.dir, "sluiced.sock")
        self.log = os.path.join(self.dir, "sent.log")
        open(self.log, "w").close()
        os.chmod(self.log, 0o666)
        script = os.path.join(self.dir, "fake.py")
        with open(script, "w") as f:
            f.write(FAKE_SERVER)
        self.proc = subprocess.Popen(["setpriv", "--reuid=nobody", "--regid=nogroup",
                                      "--clear-groups", "/usr/bin/python3", script, self.sock,
                                      self.log], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        st.wait_for(lambda: self.proc.poll() is not None or os.path.exists(self.sock + ".ready"),
                    10, what="the other user's socket")
        self.assertIsNone(self.proc.poll(), "the fake server exited")

    def tearDown(self):
        self.proc.kill()
        self.proc.wait()
        if not st.keep_tmp():
            subprocess.run(["rm", "-rf", self.dir])

    def sent(self):
        with open(self.log, "rb") as f:
            return f.read()

    def test_socket_of_another_user_is_refused(self):
        r = st.run_bytes([st.SLUICECTL, "-s", self.sock, "status"])
        self.assertEqual(r.rc, st.CTL_CONNECT, r)
        self.assertNotIn(b"impostor", r.out + r.err)
        self.assertIn(b"nobody", r.err)
        self.assertEqual(self.sent(), b"", "sluicectl sent a command to another user's socket")
        r = st.run_bytes([st.SLUICECTL, "-s", self.sock, "--json", "shutdown"])
        self.assertEqual(r.rc, st.CTL_CONNECT, r)
        self.assertEqual(self.sent(), b"")

    def test_invoking_user_and_named_owner_are_trusted(self):
        # nobody talking to nobody's daemon: the invoking user
        r = st.run_bytes([st.SLUICECTL, "-s", self.sock, "--json", "status"], user="nobody")
        self.assertEqual(r.rc, 0, r)
        self.assertIn(b"impostor", r.out)
        # root naming the daemon's user (sluiced started as that user)
        r = st.run_bytes([st.SLUICECTL, "-s", self.sock, "--owner", "nobody", "--json", "status"])
        self.assertEqual(r.rc, 0, r)
        r = st.run_bytes([st.SLUICECTL, "-s", self.sock, "--json", "status"],
                         env=dict(os.environ, SLUICE_SOCKET_OWNER="nobody"))
        self.assertEqual(r.rc, 0, r)
        self.assertEqual(self.sent().count(b'"cmd":"status"'), 3)

    def test_root_daemon_is_trusted(self):
        with st.Daemon() as d:
            r = d.ctl("status", json=True)
            self.assertEqual(r.rc, 0, r)
            self.assertEqual(r.data["pid"], d.proc.pid)


if __name__ == "__main__":
    unittest.main()
