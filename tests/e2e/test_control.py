#!/usr/bin/python3
"""End-to-end tests of the control socket and sluicectl against a real sluiced.

Each test starts sluiced on a temporary configuration (spool, control socket
and SMTP port of its own) and checks what an operator sees:
- the socket is owner-only (0600) and another user gets exit 3 and
  "permission denied";
- `sluicectl status` prints the Daemon / Queue / SMTP reception sections,
  `--json` has every documented key;
- errors (unknown command, malformed JSON, over-long line) are answered
  with ok:false, and the connection keeps working after an ordinary error;
- list / inspect / check on an empty queue and on a queued message;
- a stale socket file left by kill -9 is replaced, a live daemon's is not;
- `sluicectl shutdown` makes the daemon exit 0 and remove its socket.

Env: SLUICE_BUILD (binaries), SLUICE_SRC.
"""
import os
import re
import stat
import subprocess
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sluicetest as st  # noqa: E402

STATUS_KEYS = ["version", "pid", "uptime_s", "hostname", "queue", "smtp"]
QUEUE_KEYS = ["messages", "recipients", "pending_commits", "spool_used_bytes",
              "spool_map_bytes", "spool_max_bytes", "spool_fill_pct", "commits", "received"]
SMTP_KEYS = ["connections_current", "connections_total", "messages_accepted",
             "messages_rejected", "recipients_accepted", "recipients_rejected", "auth_ok",
             "auth_failed", "tls_sessions", "bytes_received"]


class ControlTest(unittest.TestCase):
    def setUp(self):
        self.d = st.Daemon()
        self.addCleanup(self.d.close)  # exit 0 and no sanitizer report, or fail
        self.d.start()

    # -- the socket

    def test_socket_is_owner_only(self):
        mode = stat.S_IMODE(os.stat(self.d.ctl_socket).st_mode)
        self.assertEqual(mode, 0o600, "control socket mode %o" % mode)
        self.assertTrue(stat.S_ISSOCK(os.stat(self.d.ctl_socket).st_mode))

    def test_other_user_is_refused(self):
        st.require_root("runs sluicectl as another user")
        r = self.d.ctl("status", user="nobody")
        self.assertEqual(r.rc, st.CTL_CONNECT, r)
        self.assertIn("permission denied", r.err)
        self.assertIn(self.d.ctl_socket, r.err)
        self.assertEqual(r.out, "")
        # the owner still gets in
        self.d.ctl("status").check()

    def test_no_daemon(self):
        r = st.sluicectl(os.path.join(self.d.dir, "nothing.sock"), "status")
        self.assertEqual(r.rc, st.CTL_CONNECT, r)
        self.assertIn("cannot connect to", r.err)
        self.assertIn("No such file or directory (is sluiced running?)", r.err)

    # -- status

    def test_status_human(self):
        r = self.d.ctl("status").check()
        for title in ("Daemon", "Queue", "SMTP reception"):
            self.assertRegex(r.out, r"(?m)^%s$" % re.escape(title))
        queue = r.out.split("\nQueue\n", 1)[1].split("\nSMTP reception\n", 1)[0]
        self.assertRegex(queue, r"(?m)^\s+messages\s+0$")
        self.assertRegex(queue, r"(?m)^\s+recipients\s+0$")
        self.assertRegex(queue, r"(?m)^\s+spool used\s+[\d.]+ (B|KiB|MiB|GiB) \(\d+% of ")
        self.assertRegex(r.out, r"(?m)^\s+pid\s+%d$" % self.d.proc.pid)
        self.assertRegex(r.out, r"(?m)^\s+hostname\s+sluice\.test$")
        # two aligned columns: every value starts in the same column
        rows = re.finditer(r"(?m)^(  \S.*?\S)  +(\S)", r.out)
        cols = {m.start(2) - m.start(0) for m in rows}
        self.assertEqual(len(cols), 1, r.out)

    def test_status_json(self):
        r = self.d.ctl("status", json=True).check()
        self.assertEqual(len(r.out.strip().splitlines()), 1, "one line")
        s = r.data
        self.assertIs(s["ok"], True)
        for k in STATUS_KEYS:
            self.assertIn(k, s)
        for k in QUEUE_KEYS:
            self.assertIsInstance(s["queue"][k], int, k)
        for k in SMTP_KEYS:
            self.assertIsInstance(s["smtp"][k], int, k)
        self.assertEqual(s["pid"], self.d.proc.pid)
        self.assertEqual(s["hostname"], "sluice.test")
        self.assertEqual(s["queue"]["messages"], 0)
        self.assertGreater(s["queue"]["spool_max_bytes"], 0)
        self.assertRegex(s["version"], r"^\d+\.\d+")
        self.assertGreaterEqual(s["uptime_s"], 0)
        self.assertLess(s["uptime_s"], 600)

    # -- errors

    def test_unknown_command(self):
        r = self.d.ctl("frobnicate")
        self.assertEqual(r.rc, st.CTL_REFUSED, r)
        self.assertIn('sluicectl: unknown command "frobnicate"', r.err)
        r = self.d.ctl("raw", '{"cmd":"frobnicate"}', json=True)
        self.assertEqual(r.rc, st.CTL_REFUSED, r)
        self.assertEqual(r.data, {"ok": False, "error": 'unknown command "frobnicate"'})

    def test_usage_errors(self):
        for args in ([], ["inspect"], ["status", "extra"], ["list", "--limit", "x"],
                     ["--no-such-option", "status"]):
            r = self.d.ctl(*args)
            self.assertEqual(r.rc, st.CTL_USAGE, (args, r))
            self.assertIn("usage: sluicectl", r.err)

    def test_malformed_then_status_on_same_connection(self):
        with st.ControlConn(self.d.ctl_socket) as c:
            for bad in ('{"cmd": nope}', "[1,2,3]", '{"no":"cmd"}', '{"cmd":"status"} x',
                        '{"cmd":"list","limit":-3}', '{"cmd":"inspect","id":"zz"}'):
                a = c.request(bad)
                self.assertIsNotNone(a, "connection closed after %r" % bad)
                self.assertIs(a["ok"], False, bad)
                self.assertIsInstance(a["error"], str)
                self.assertTrue(a["error"])
            a = c.request({"cmd": "status"})
            self.assertIs(a["ok"], True)
            self.assertEqual(a["queue"]["messages"], 0)
            # pipelined requests are answered in order
            c.send(b'{"cmd":"list"}\n{"cmd":"bogus"}\n{"cmd":"status"}\n')
            a1, a2, a3 = c.readline(), c.readline(), c.readline()
            self.assertEqual(a1["total"], 0)
            self.assertEqual(a2["error"], 'unknown command "bogus"')
            self.assertIn("uptime_s", a3)

    def test_overlong_line_is_answered_then_closed(self):
        with st.ControlConn(self.d.ctl_socket) as c:
            c.sock.sendall(b'{"cmd":"status","pad":"' + b"x" * (70 * 1024))
            a = c.readline()
            self.assertIs(a["ok"], False)
            self.assertIn("longer than", a["error"])
            self.assertIsNone(c.readline(), "connection should be closed")
        # the daemon is fine
        self.d.ctl("status").check()

    def test_many_clients(self):
        conns = [st.ControlConn(self.d.ctl_socket) for _ in range(50)]
        try:
            for c in conns:
                c.send({"cmd": "status"})
            for c in conns:
                self.assertIs(c.readline()["ok"], True)
        finally:
            for c in conns:
                c.close()

    # -- queue commands

    def test_empty_queue_list_inspect_check(self):
        r = self.d.ctl("list").check()
        self.assertIn("0 messages", r.out)
        r = self.d.ctl("list", json=True).check()
        self.assertEqual(r.data["messages"], [])
        self.assertEqual(r.data["total"], 0)
        r = self.d.ctl("inspect", "0000000000000001")
        self.assertEqual(r.rc, st.CTL_REFUSED, r)
        self.assertTrue(r.err.startswith("sluicectl: "), r.err)
        r = self.d.ctl("inspect", "not-an-id")
        self.assertEqual(r.rc, st.CTL_REFUSED, r)
        self.assertIn("invalid message id", r.err)
        r = self.d.ctl("check").check()
        self.assertIn("consistent", r.out)

    def test_queued_message_list_and_inspect(self):
        sw = self.d.swaks(to="rcpt1@example.test", from_="bounces@sender.example",
                          args=["--header", "X-Sluice-Job: job-77"])
        sw.check()
        self.d.wait_queue(1)
        r = self.d.ctl("list", json=True).check()
        self.assertEqual(r.data["total"], 1)
        m = r.data["messages"][0]
        self.assertEqual(m["sender"], "bounces@sender.example")
        self.assertEqual(m["job"], "job-77")
        self.assertRegex(m["id"], r"^[0-9A-F]{16}$")
        self.assertEqual([x["addr"] for x in m["recipients"]], ["rcpt1@example.test"])
        self.assertEqual(m["id"], st.queue_id_from_swaks(sw.out))

        r = self.d.ctl("list").check()
        lines = r.out.splitlines()
        self.assertEqual(lines[0].split(), ["ID", "ARRIVAL", "SIZE", "RCPTS", "SENDER", "JOB"])
        self.assertTrue(lines[1].startswith(m["id"] + " "), r.out)
        self.assertIn("bounces@sender.example", lines[1])
        self.assertIn("job-77", lines[1])
        self.assertRegex(lines[-1], r"^1 messages?$")

        r = self.d.ctl("inspect", m["id"]).check()
        self.assertRegex(r.out, r"(?m)^id:\s+%s$" % m["id"])
        self.assertRegex(r.out, r"(?m)^sender:\s+bounces@sender\.example$")
        self.assertRegex(r.out, r"(?m)^recipients \(1\):\n\s+rcpt1@example\.test")
        r = self.d.ctl("inspect", m["id"], json=True).check()
        self.assertEqual(r.data["message"]["id"], m["id"])

        r = self.d.ctl("check", json=True).check()
        self.assertIs(r.data["consistent"], True)
        s = self.d.ctl("status", json=True).check().data
        self.assertEqual(s["queue"]["messages"], 1)
        self.assertEqual(s["queue"]["recipients"], 1)
        self.assertGreaterEqual(s["smtp"]["messages_accepted"], 1)

    def test_log_rotate(self):
        self.assertIn("reopened", self.d.ctl("log-rotate").check().out)
        r = self.d.request({"cmd": "log-rotate"})
        self.assertIs(r["ok"], True, r)
        self.assertIn("accounting", r)  # what the rotation did (docs/operations.md)

    # -- life cycle

    def test_shutdown(self):
        r = self.d.ctl("shutdown").check()
        self.assertIn("shutting down", r.out)
        self.assertEqual(self.d.wait(timeout=60), 0, self.d.stderr())
        self.d.check_clean_exit()
        self.assertFalse(os.path.exists(self.d.ctl_socket), "socket file left behind")

    def test_stale_socket_replaced_live_one_kept(self):
        self.d.kill9()
        self.assertTrue(os.path.exists(self.d.ctl_socket), "kill -9 leaves the socket file")
        r = self.d.ctl("status")
        self.assertEqual(r.rc, st.CTL_CONNECT, r)
        self.d.start()  # replaces the stale file
        self.d.ctl("status").check()

        # A second daemon (own spool and port) on the same control socket
        # must refuse to start and leave the first one alone.
        other = st.Daemon()
        try:
            with open(other.conf_path, "w") as f:
                f.write(other.default_conf().replace(other.ctl_socket, self.d.ctl_socket))
            p = subprocess.run([st.SLUICED, "-c", other.conf_path], capture_output=True,
                               text=True, timeout=60, cwd=other.dir)
            self.assertNotEqual(p.returncode, 0)
            self.assertIn("control socket %s: another sluiced is running" % self.d.ctl_socket,
                          p.stderr)
        finally:
            other.cleanup()
        self.assertEqual(self.d.status()["pid"], self.d.proc.pid)


if __name__ == "__main__":
    st.main()
