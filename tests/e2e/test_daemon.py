"""sluiced start-up, configuration errors and shutdown, as an operator sees
them: one clear line and a non-zero exit for every start-up failure, exit 0
after SIGTERM, and the queue found again after a restart."""
import os
import re
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

    @unittest.skipIf(os.geteuid() != 0, "needs root to run as another user")
    def test_spool_not_writable(self):
        d = st.Daemon()
        try:
            os.makedirs(d.spool)
            os.chmod(d.spool, 0o500)
            r = st.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
                        st.SLUICED, "-c", d.conf_path], timeout=20)
            self.assertNotEqual(r.rc, 0)
            lines = error_lines(r.err)
            self.assertEqual(len(lines), 1, r.err)
            self.assertIn("spool", lines[0])
            self.assertIn("Permission denied", lines[0])
        finally:
            d.cleanup()

    def test_default_config_runs_in_cwd(self):
        """`sluiced` with no -c: ./var under the working directory."""
        if st.tcp_connectable("127.0.0.1", 2525):
            self.skipTest("port 2525 is in use on this machine")
        tmp = st.make_tmpdir()
        p = subprocess.Popen([st.SLUICED], cwd=tmp, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE)
        try:
            sock = os.path.join(tmp, "var/sluiced.sock")
            st.wait_for_socket(sock, 20, p)
            st.wait_for_port("127.0.0.1", 2525, 20, p)
            self.assertEqual(os.stat(sock).st_mode & 0o777, 0o600)
            # No mail is sent here: with the default config delivery would
            # ask this machine's resolver (not on loopback) for example.org.
            # Reception with the same code paths is covered by
            # test_reception.py against a routed configuration.
            self.assertTrue(os.path.exists(os.path.join(tmp, "var/tls/cert.pem")))
            self.assertEqual(os.stat(os.path.join(tmp, "var/tls/key.pem")).st_mode & 0o077, 0)
            c = socket.create_connection(("127.0.0.1", 2525), timeout=10)
            self.assertTrue(c.recv(512).startswith(b"220 "))
            c.sendall(b"EHLO t\r\n")
            ehlo = b""
            while not re.search(rb"(^|\n)250 ", ehlo):
                ehlo += c.recv(4096)
            self.assertIn(b"STARTTLS", ehlo)
            c.close()
            r = st.sluicectl(sock, "status", json=True)
            self.assertEqual(r.rc, 0, r.err)
            self.assertEqual(r.data["queue"]["messages"], 0)
            p.send_signal(signal.SIGTERM)
            self.assertEqual(p.wait(30), 0)
            err = p.stderr.read().decode()
            self.assertEqual(st.sanitizer_errors(err), [])
            self.assertTrue(os.path.isdir(os.path.join(tmp, "var/spool")))
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
            p.stderr.close()
            subprocess.run(["rm", "-rf", tmp])


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
            time.sleep(0.5)
            self.assertFalse(st.tcp_connectable("127.0.0.1", d.smtp_port))
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
