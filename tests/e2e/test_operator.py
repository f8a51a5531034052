#!/usr/bin/python3
"""Running sluiced as an operator does (docs/operations.md):

- one daemon per spool: a second sluiced on the same spool.path (other
  ports, other socket) is refused with one line naming the holder's pid,
  and `--check-spool` refuses while the daemon runs; a SIGKILLed daemon's
  lock never blocks the restart;
- `--check-config` runs every check start-up runs: a log.file in a missing
  directory, a host name in control.http_metrics, a TLS pair that does not
  load and a shaping file that does not compile fail both the same way;
- the TLS pair is derived from the configuration (smtp.tls.dir, by default
  beside the spool), never from the directory sluiced was started in;
- under umask 000 every file and directory sluiced creates has its own
  explicit mode (the certificate 0644, the key 0600, nothing writable by
  others);
- the command-line tools: --version and --help everywhere, exit 2 on a
  usage error; `resume` of something not suspended exits 1 for a domain, a
  job and a provider alike, `resume --all` exits 0.

Env: SLUICE_BUILD (binaries), SLUICE_SRC.
"""
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sluicetest as st  # noqa: E402

VERSION_RE = r"^%s \d+\.\d+\.\d+\n$"


def mode(path):
    return stat.S_IMODE(os.lstat(path).st_mode)


def second_daemon_conf(d, tmp):
    """A configuration for a second daemon on d's spool: its own ports,
    socket and accounting directory, only spool.path shared."""
    return ('hostname = "second.test";\n'
            'log {\n    accounting_dir = "%s/log";\n}\n'
            'spool {\n    path = "%s";\n    map_size = 64M;\n}\n'
            'control {\n    socket = "%s/ctl.sock";\n}\n'
            'smtp {\n    listen = "127.0.0.1:%d";\n'
            '    tls {\n        cert = "%s";\n        key = "%s";\n    }\n}\n'
            'delivery {\n    smarthost = "127.0.0.1:%d";\n}\n'
            % (tmp, d.spool, tmp, st.free_port(), d.cert, d.key, d.closed_port))


class SpoolLock(unittest.TestCase):
    def setUp(self):
        self.tmp = st.make_tmpdir("operator-")

    def tearDown(self):
        shutil.rmtree(self.tmp, ignore_errors=True)

    def test_second_daemon_on_the_same_spool_is_refused(self):
        with st.Daemon() as d:
            d.swaks().check()
            d.wait_queue(1)
            conf = os.path.join(self.tmp, "second.conf")
            with open(conf, "w") as f:
                f.write(second_daemon_conf(d, self.tmp))
            p = subprocess.Popen([st.SLUICED, "-c", conf], stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True, cwd=self.tmp)
            try:
                out, err = p.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()
                out, err = p.communicate()
                self.fail("a second sluiced on the same spool kept running:\n" + err)
            self.assertEqual(p.returncode, 1, err)
            lines = [l for l in err.splitlines() if l.startswith("sluiced:")]
            self.assertEqual(len(lines), 1, err)
            self.assertIn("spool %s is in use by sluiced pid %d" % (d.spool, d.proc.pid),
                          lines[0])
            self.assertEqual(st.sanitizer_errors(err), [])
            # it touched nothing of the first one's: its socket never existed
            self.assertFalse(os.path.exists(os.path.join(self.tmp, "ctl.sock")))
            # the offline check refuses as well, naming the pid
            r = st.run([st.SLUICED, "-c", d.conf_path, "--check-spool"], timeout=120)
            self.assertEqual(r.rc, 1, r)
            self.assertIn("in use by sluiced pid %d" % d.proc.pid, r.err)
            self.assertNotIn("consistent", r.out)
            # and the first daemon is untouched
            self.assertEqual(d.status()["queue"]["messages"], 1)
            # stopped: the spool is free again
            d.stop()
            r = st.run([st.SLUICED, "-c", d.conf_path, "--check-spool"], timeout=120)
            self.assertEqual(r.rc, 0, r)
            self.assertIn("consistent, 1 messages", r.out)

    def test_lock_of_a_killed_daemon_does_not_block_a_restart(self):
        d = st.Daemon()
        try:
            d.start()
            first = d.proc.pid
            d.kill9()
            d.start()
            with open(os.path.join(d.spool, "sluiced.lock")) as f:
                self.assertEqual(int(f.read().strip()), d.proc.pid)
            self.assertNotEqual(d.proc.pid, first)
            d.stop()
        finally:
            d.cleanup()


class CheckConfig(unittest.TestCase):
    """--check-config and start-up fail alike, with the same message."""

    def setUp(self):
        self.d = st.Daemon()

    def tearDown(self):
        self.d.cleanup()

    def both_fail(self, section, line, expect):
        """Put line into section (the generated file has it), then check."""
        if section:
            with open(self.d.conf_path) as f:
                text = f.read()
            self.assertIn(section + " {\n", text)
            with open(self.d.conf_path, "w") as f:
                f.write(text.replace(section + " {\n", section + " {\n    " + line + "\n", 1))
        check = st.run([st.SLUICED, "-c", self.d.conf_path, "--check-config"])
        self.assertEqual(check.rc, 2, check)
        self.assertIn(expect, check.err)
        start = st.run([st.SLUICED, "-c", self.d.conf_path], timeout=60)
        self.assertEqual(start.rc, 2, start)
        self.assertIn(expect, start.err)
        self.assertEqual(st.sanitizer_errors(check.err + start.err), [])
        return check

    def test_log_file_in_a_missing_directory(self):
        missing = os.path.join(self.d.dir, "no-such-dir")
        r = self.both_fail("log", 'file = "%s/sluiced.log";' % missing,
                           'log.file: directory "%s" does not exist' % missing)
        self.assertRegex(r.err, r"sluice\.conf:\d+: log\.file")

    def test_http_metrics_host_name(self):
        self.both_fail("control", 'http_metrics = "localhost:9192";',
                       'control.http_metrics: expected "ip:port" (an IP address, not a host '
                       'name; "" = off), got "localhost:9192"')

    def test_tls_pair_that_does_not_load(self):
        with open(self.d.cert, "w") as f:
            f.write("-----BEGIN CERTIFICATE-----\nnot a certificate\n-----END CERTIFICATE-----\n")
        st.run(["openssl", "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
                "-out", self.d.key]).check()
        os.chmod(self.d.key, 0o600)
        self.both_fail(None, None, "smtp.tls:")

    def test_shaping_file_that_does_not_compile(self):
        path = os.path.join(self.d.dir, "shaping.conf")
        with open(path, "w") as f:
            f.write('providers { r { domains = ["r.test"];\n  message_rate = "fast"; } }\n')
        self.both_fail("delivery", 'shaping = "%s";' % path, "shaping.conf:2:")

    def test_good_file_passes(self):
        r = st.run([st.SLUICED, "-c", self.d.conf_path, "--check-config"])
        self.assertEqual(r.rc, 0, r)
        self.assertIn("configuration ok", r.out)


class TlsPaths(unittest.TestCase):
    def setUp(self):
        self.tmp = st.make_tmpdir("operator-")
        self.cwd = os.path.join(self.tmp, "cwd")  # where the daemon is started
        self.state = os.path.join(self.tmp, "state")
        os.mkdir(self.cwd)
        os.mkdir(self.state)

    def tearDown(self):
        shutil.rmtree(self.tmp, ignore_errors=True)

    def daemon(self, tls_extra=""):
        """A daemon with absolute paths everywhere and no TLS file named,
        started in self.cwd."""
        d = st.Daemon(tmpdir=self.state,
                      wrapper=["sh", "-c", 'cd %s && exec "$0" "$@"' % shlex.quote(self.cwd)])
        text = re.sub(r'    tls \{\n        cert = "[^"]*";\n        key = "[^"]*";\n    \}\n',
                      "    tls {\n%s    }\n" % tls_extra, d.default_conf())
        self.assertNotIn("cert =", text)
        with open(d.conf_path, "w") as f:
            f.write(text)
        return d

    def test_default_tls_dir_is_beside_the_spool(self):
        d = self.daemon()
        try:
            d.start()
            tls = os.path.join(self.state, "tls")  # spool.path is state/spool
            self.assertEqual(sorted(os.listdir(tls)), ["cert.pem", "key.pem"])
            self.assertEqual(os.listdir(self.cwd), [], "files created in the start directory")
            d.swaks(args=["--tls"]).check()
            d.stop()
        finally:
            d.cleanup()

    def test_tls_dir_key(self):
        tls = os.path.join(self.tmp, "etc", "tls")
        d = self.daemon('        dir = "%s";\n' % tls)
        try:
            d.start()
            self.assertEqual(sorted(os.listdir(tls)), ["cert.pem", "key.pem"])
            self.assertEqual(os.listdir(self.cwd), [])
            self.assertFalse(os.path.exists(os.path.join(self.state, "tls")))
            d.stop()
        finally:
            d.cleanup()


class Umask(unittest.TestCase):
    def test_files_keep_their_modes_under_umask_000(self):
        d = st.Daemon(wrapper=["sh", "-c", 'umask 000; exec "$0" "$@"'])
        # everything sluiced makes, in directories it creates itself
        new = os.path.join(d.dir, "new", "var")
        text = d.default_conf().replace(d.spool, new + "/spool").replace(
            d.acct_dir, new + "/log").replace(d.cert, new + "/tls/cert.pem").replace(
            d.key, new + "/tls/key.pem")
        with open(d.conf_path, "w") as f:
            f.write(text)
        try:
            d.start()
            d.swaks().check()
            acct = os.path.join(new, "log", "acct.jsonl")
            st.wait_for(lambda: os.path.exists(acct) and os.path.getsize(acct) > 0, 10,
                        what="the accounting log")
            self.assertEqual(mode(os.path.join(new, "tls", "cert.pem")), 0o644)
            self.assertEqual(mode(os.path.join(new, "tls", "key.pem")), 0o600)
            self.assertEqual(mode(os.path.join(new, "tls")), 0o755)
            self.assertEqual(mode(os.path.join(new, "spool")), 0o700)
            self.assertEqual(mode(os.path.join(new, "log")), 0o750)
            self.assertEqual(mode(acct), 0o640)
            self.assertEqual(mode(new), 0o755)
            for root, dirs, files in os.walk(os.path.join(d.dir, "new")):
                for n in dirs + files:
                    p = os.path.join(root, n)
                    self.assertEqual(mode(p) & 0o022, 0, "%s is %o" % (p, mode(p)))
                    if n in files:
                        self.assertEqual(mode(p) & 0o004, 0 if n != "cert.pem" else 0o004, p)
            d.stop()
        finally:
            d.cleanup()


class Cli(unittest.TestCase):
    TOOLS = [("sluiced", st.SLUICED), ("sluicectl", st.SLUICECTL),
             ("sluice-source", st.SOURCE), ("sluice-sink", st.SINK)]

    def test_version_and_help(self):
        for name, path in self.TOOLS:
            for arg in ("--version", "-V") if name in ("sluiced", "sluicectl") else ("--version",):
                r = st.run([path, arg])
                self.assertEqual(r.rc, 0, (name, arg, r))
                self.assertRegex(r.out, VERSION_RE % re.escape(name))
            for arg in ("--help", "-h"):
                r = st.run([path, arg])
                self.assertEqual(r.rc, 0, (name, arg, r))
                self.assertIn("usage:", r.out)
                self.assertEqual(r.err, "")
            r = st.run([path, "--no-such-option"])
            self.assertEqual(r.rc, 2, (name, r))
            self.assertEqual(r.out, "")
            self.assertIn("usage:", r.err)

    def test_resume_of_what_is_not_suspended(self):
        with st.Daemon() as d:
            for args, what in ((["a.example"], 'domain "a.example" is not suspended'),
                               (["--job", "j1"], 'job "j1" is not suspended'),
                               (["--provider", "p.example"],
                                'provider "p.example" is not suspended')):
                r = d.ctl("resume", *args)
                self.assertEqual(r.rc, st.CTL_REFUSED, (args, r))
                self.assertIn(what, r.err)
            # suspended, then resumed: 0; resumed again: 1, like the first time
            for args in (["a.example"], ["--job", "j1"], ["--provider", "p.example"]):
                d.ctl("suspend", *args).check()
                d.ctl("resume", *args).check()
                self.assertEqual(d.ctl("resume", *args).rc, st.CTL_REFUSED, args)
            # --all means "nothing held afterwards": fine with nothing held
            r = d.ctl("resume", "--all", json=True).check()
            self.assertEqual(r.data["resumed"], 0)


if __name__ == "__main__":
    unittest.main(verbosity=2)
