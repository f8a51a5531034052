#!/usr/bin/python3
"""Security: privilege drop and secrets in files readable by others.

* `user = "nobody"`: sluiced started as root binds its ports (here a port
  below 1024, which only root may bind), then runs as nobody: every
  thread's uid and gid in /proc are nobody's, the spool and the accounting
  log are written by nobody, mail flows, and a restart as root finds the
  files usable. An unknown user is a configuration error (exit 2).
* A configuration file holding password hashes (smtp.auth.users) that
  others can read is refused with a clear message; chmod 0600 fixes it.
* The TLS private key and the DKIM keys: readable by others is refused
  (DKIM: test_dkim_verify.py; the TLS key: here).
(The control socket's 0600 mode and sluicectl refused for another user are
tested in test_control.py.)
"""
import os
import pwd
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sluicetest as st  # noqa: E402

HASH = "$6$abcdefgh$ltjgWl6579NluT/Vi1nwEvcil.G5Nbc4NiXZaNGStk8PSwGfQv72N2CKPPrVACtLtip/" \
       "cZ/1GM/O6IND4WQhG."


def owner(path):
    return pwd.getpwuid(os.stat(path).st_uid).pw_name


def proc_ids(pid):
    """{'Uid': [...], 'Gid': [...], 'Groups': [...]} of a process."""
    out = {}
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("Uid", "Gid", "Groups"):
                out[k] = v.split()
    return out


class Security(unittest.TestCase):
    def test_privilege_drop_to_nobody(self):
        st.require_root("the privilege drop")
        nobody = pwd.getpwnam("nobody")
        want = [str(nobody.pw_uid)] * 4
        d = st.Daemon(extra_conf='user = "nobody";\n')
        self.addCleanup(d.close)
        st.release_port(d.smtp_port)
        d.smtp_port = st.free_port(below=1024)  # only root may bind it
        with open(d.conf_path, "w") as f:
            f.write(d.default_conf() + 'user = "nobody";\n')

        def start_and_wait_for_drop(n):
            # The ports and the control socket are open before the drop (that
            # is the point): check the ids once the daemon says it dropped.
            d.start()
            st.wait_for(lambda: d.stderr().count("running as user nobody") == n, 30,
                        what="the privilege drop's log line")

        start_and_wait_for_drop(1)
        ids = proc_ids(d.proc.pid)
        self.assertEqual(ids["Uid"], want, ids)
        self.assertEqual(ids["Gid"], [str(nobody.pw_gid)] * 4, ids)
        self.assertNotIn("0", ids["Groups"])
        for tid in os.listdir("/proc/%d/task" % d.proc.pid):  # every thread
            with open("/proc/%d/task/%s/status" % (d.proc.pid, tid)) as f:
                uid_line = [l for l in f if l.startswith("Uid:")][0]
            self.assertEqual(uid_line.split()[1:], want, tid)
        # mail flows; the spool and the accounting log belong to nobody
        d.swaks().check()
        d.wait_queue(1)
        for name in os.listdir(d.spool):
            self.assertEqual(owner(os.path.join(d.spool, name)), "nobody", name)
        self.assertEqual(owner(d.spool), "nobody")
        st.wait_for(lambda: os.listdir(d.acct_dir), 10, what="the accounting log")
        for name in os.listdir(d.acct_dir):
            self.assertEqual(owner(os.path.join(d.acct_dir, name)), "nobody", name)
        self.assertEqual(d.ctl("status").rc, 0)
        d.stop()
        # a second start (as root again) reuses the spool and drops again
        start_and_wait_for_drop(2)
        self.assertEqual(d.status()["queue"]["messages"], 1)
        self.assertEqual(proc_ids(d.proc.pid)["Uid"], want)
        d.stop()

    def test_unknown_user_is_a_config_error(self):
        d = st.Daemon(extra_conf='user = "no-such-user-sluice";\n')
        try:
            r = st.run([st.SLUICED, "-c", d.conf_path, "--check-config"])
            self.assertEqual(r.rc, 2, r)
            self.assertIn('user: no such user "no-such-user-sluice"', r.err)
        finally:
            d.cleanup()

    def test_world_readable_password_file_refused(self):
        d = st.Daemon(smtp_extra='    auth {\n        users {\n            alice = "%s";\n'
                                 '        }\n    }\n' % HASH)
        try:
            os.chmod(d.conf_path, 0o644)
            r = st.run([st.SLUICED, "-c", d.conf_path])
            self.assertEqual(r.rc, 2, r)
            self.assertIn("world-readable", r.err)
            self.assertIn(d.conf_path, r.err)
            os.chmod(d.conf_path, 0o600)
            r = st.run([st.SLUICED, "-c", d.conf_path, "--check-config"])
            self.assertEqual(r.rc, 0, r)
        finally:
            d.cleanup()

    def test_tls_key_readable_by_others_refused(self):
        with st.Daemon() as d:  # the first start generates the pair
            mode = os.stat(d.key).st_mode & 0o777
            self.assertEqual(mode & 0o077, 0, "generated key mode %o" % mode)
        d = st.Daemon()
        try:
            st.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=sluice.test", "-keyout", d.key, "-out", d.cert]).check()
            os.chmod(d.key, 0o644)
            r = st.run([st.SLUICED, "-c", d.conf_path])
            self.assertEqual(r.rc, 2, r)
            self.assertIn('smtp.tls.key: "%s" is readable by others (chmod 600)' % d.key, r.err)
            os.chmod(d.key, 0o600)
            self.assertEqual(st.run([st.SLUICED, "-c", d.conf_path, "--check-config"]).rc, 0)
        finally:
            d.cleanup()


if __name__ == "__main__":
    st.main()
