"""sluiced start-up, configuration errors and shutdown, as an operator sees
them: one clear line and a non-zero exit for every start-up failure, exit 0
after SIGTERM, and the queue found again after a restart."""
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sluicetest as st  # noqa: E402


def error_lines(err):
    """The start-up error lines: what sluiced printed that is not a
    timestamped log record. A sanitizer report fails the test."""
    assert st.sanitizer_errors(err) == [], err
    return [l for l in err.strip().splitlines() if l.startswith("sluiced: ")]


class StartUp(unittest.TestCase):
    def test_check_config_good_and_typo(self):
        d = st.Daemon()
        try:
            r = st.run([st.SLUICED, "--check-config", "-c", d.conf_path])
            self.assertEqual(r.rc, 0, r.err)
            self.assertIn("configuration ok", r.out)
            with open(d.conf_path) as f:
                text = f.read()
            with open(d.conf_path, "w") as f:
                f.write(text.replace("    listen =", "    max_mesage_size = 10M;\n    listen =", 1))
            r = st.run([st.SLUICED, "--check-config", "-c", d.conf_path])
            self.assertEqual(r.rc, 2)
            self.assertRegex(r.err, r"sluice\.conf:\d+: .*max_mesage_size.*max_message_size")
            # the daemon does not start with it either
            r = st.run([st.SLUICED, "-c", d.conf_path], timeout=20)
            self.assertEqual(r.rc, 2)
            self.assertEqual(len(error_lines(r.err)), 1, r.err)
            r = st.run([st.SLUICED, "-c", os.path.join(d.dir, "missing.conf")])
            self.assertEqual(r.rc, 2)
            self.assertIn("missing.conf", r.err)
        finally:
            d.cleanup()

    def test_example_config_is_valid(self):
        r = st.run([st.SLUICED, "--check-config", "-c",
                    os.path.join(st.SRC, "config/sluice.conf.example")])
        self.assertEqual(r.rc, 0, r.err)

    def test_port_taken(self):
        d = st.Daemon()
        blocker = socket.socket()
        blocker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        blocker.bind(("127.0.0.1", d.smtp_port))
        blocker.listen(1)
        try:
            r = st.run([st.SLUICED, "-c", d.conf_path], timeout=20)
            self.assertNotEqual(r.rc, 0)
            lines = error_lines(r.err)
            self.assertEqual(len(lines), 1, r.err)
            self.assertIn(str(d.smtp_port), lines[0])
            self.assertIn("in use", lines[0])
        finally:
            blocker.close()
            d.cleanup()

    def test_spool_not_writable(self):
        st.require_root("runs sluiced as another user")
        d = st.Daemon()
        try:
            os.makedirs(d.spool)
            os.chmod(d.spool, 0o500)
            r = st.run([st.SLUICED, "-c", d.conf_path], timeout=20, user="nobody")
            self.assertNotEqual(r.rc, 0)
            lines = error_lines(r.err)
            self.assertEqual(len(lines), 1, r.err)
            self.assertIn("spool", lines[0])
            self.assertIn("Permission denied", lines[0])
        finally:
            d.cleanup()

    def test_default_config_runs_in_cwd(self):
        """`sluiced` with no -c: ./var under the working directory, SMTP on
        127.0.0.1:2525 - in a network namespace of its own, so that the
        fixed port is free whatever else runs here, and README's first
        message (swaks --to someone@example.org) stays queued: nothing in
        the namespace reaches a resolver."""
        ns = st.NetNs()
        self.addCleanup(ns.stop)
        tmp = st.make_tmpdir()
        self.addCleanup(shutil.rmtree, tmp, True)
        errf = open(os.path.join(tmp, "stderr"), "w+")
        self.addCleanup(errf.close)
        p = st._spawn(ns.cmd([st.SLUICED]), cwd=tmp, stdout=subprocess.DEVNULL, stderr=errf)
        self.addCleanup(st._reap, p)
        sock = os.path.join(tmp, "var/sluiced.sock")
        st.wait_for_socket(sock, 20, p)
        self.assertEqual(os.stat(sock).st_mode & 0o777, 0o600)
        self.assertTrue(os.path.exists(os.path.join(tmp, "var/tls/cert.pem")))
        self.assertEqual(os.stat(os.path.join(tmp, "var/tls/key.pem")).st_mode & 0o077, 0)
        r = st.run(ns.cmd([st.SWAKS, "--server", "127.0.0.1:2525", "--to", "someone@example.org",
                           "--from", "me@example.net", "--timeout", "30"]), timeout=60).check()
        self.assertRegex(r.out, r"(?m)^<-  250-STARTTLS")
        qid = st.queue_id_from_swaks(r.out)
        self.assertIsNotNone(qid, r.out)
        r = st.sluicectl(sock, "list", json=True)
        self.assertEqual(r.rc, 0, r.err)
        self.assertEqual([m["id"] for m in r.data["messages"]], [qid])
        p.send_signal(signal.SIGTERM)
        self.assertEqual(p.wait(30), 0)
        errf.seek(0)
        self.assertEqual(st.sanitizer_errors(errf.read()), [])
        self.assertTrue(os.path.isdir(os.path.join(tmp, "var/spool")))


class Shutdown(unittest.TestCase):
    def test_sigterm_finishes_session_in_data(self):
        """A client in the middle of DATA when SIGTERM arrives still gets its
        250, new connections are refused, and the daemon exits 0."""
        d = st.Daemon()
        try:
            d.start()
            s = socket.create_connection(("127.0.0.1", d.smtp_port), timeout=20)
            f = s.makefile("rb")
            f.readline()
            s.sendall(b"HELO c\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.test>\r\nDATA\r\n")
            for _ in range(4):
                f.readline()
            s.sendall(b"Subject: in flight\r\n\r\nfirst half\r\n")
            d.proc.send_signal(signal.SIGTERM)
            # the listener closes at once (a probe that still connects meanwhile
            # is one more session the daemon ends: it does not matter here)
            st.wait_for(lambda: not st.tcp_connectable("127.0.0.1", d.smtp_port), 10,
                        what="the SMTP listener to close after SIGTERM")
            s.sendall(b"second half\r\n.\r\n")
            line = f.readline()
            self.assertTrue(line.startswith(b"250 "), line)
            f.close()
            s.close()
            self.assertEqual(d.wait(30), 0)
            d.check_clean_exit()
            d.start()
            self.assertEqual(d.status()["queue"]["messages"], 1)
            d.stop()
        finally:
            d.cleanup()

    def test_shutdown_command_and_idle_sessions(self):
        d = st.Daemon()
        try:
            d.start()
            idle = socket.create_connection(("127.0.0.1", d.smtp_port), timeout=20)
            f = idle.makefile("rb")
            self.assertTrue(f.readline().startswith(b"220"))
            t0 = time.monotonic()
            d.ctl("shutdown").check()
            # the idle session is told, then closed
            self.assertTrue(f.readline().startswith(b"421"))
            self.assertEqual(d.wait(30), 0)
            self.assertLess(time.monotonic() - t0, 15)
            d.check_clean_exit()
            f.close()
            idle.close()
        finally:
            d.cleanup()


if __name__ == "__main__":
    st.main()
