#!/usr/bin/python3
"""Running sluiced as an operator does (docs/operations.md):

- a log.file in a missing directory and a host name in
  control.http_metrics fail `--check-config` and start-up the same way;
- the TLS pair is derived from the configuration (smtp.tls.dir, by default
  beside the spool), never from the directory sluiced was started in;
- `resume` of something not suspended exits 1 for a domain, a job and a
  provider alike, `resume --all` exits 0.

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


class Cli(unittest.TestCase):
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
