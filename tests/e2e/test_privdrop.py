#!/usr/bin/python3
"""`user = "nobody"`: the file layout that works after the privilege drop
(docs/operations.md, "Running as a dedicated user").

- The embedded default's relative layout (./var/spool, ./var/log,
  ./var/sluiced.sock), started as root in an empty directory: ./var and
  what sluiced creates in it belong to nobody, so that after the drop
  `reload` rereads the configuration (root:nogroup 0640, with password
  hashes) and the DKIM key (root:nogroup 0640), `log-rotate` renames the
  accounting log and reopens an operational log moved away, and the
  control socket is removed at shutdown.
- A configuration or DKIM key the user cannot read stops start-up with the
  file named (rather than a reload failing later); a key readable by a
  group other than the daemon's is refused.

Runs as root (the privilege drop needs it; `make test` runs as root).
Env: SLUICE_BUILD (binaries), SLUICE_SRC.
"""
import glob
import grp
import os
import pwd
import stat
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sluicetest as st  # noqa: E402

HASH = "$6$abcdefgh$ltjgWl6579NluT/Vi1nwEvcil.G5Nbc4NiXZaNGStk8PSwGfQv72N2CKPPrVACtLtip/" \
       "cZ/1GM/O6IND4WQhG."
NOBODY = pwd.getpwnam("nobody")
NOGROUP = grp.getgrgid(NOBODY.pw_gid)


def read(path):
    with open(path, errors="replace") as f:
        return f.read()


def owner(path):
    st_ = os.lstat(path)
    return pwd.getpwuid(st_.st_uid).pw_name, stat.S_IMODE(st_.st_mode)


class PrivDrop(unittest.TestCase):
    def setUp(self):
        if os.geteuid() != 0:
            self.fail("the privilege drop tests need root (make test runs as root)")
        self.d = st.Daemon()
        d = self.d
        # the embedded default's layout, relative to the start directory
        d.spool = os.path.join(d.dir, "var", "spool")
        d.acct_dir = os.path.join(d.dir, "var", "log")
        d.ctl_socket = os.path.join(d.dir, "var", "sluiced.sock")
        self.oplog_dir = os.path.join(d.dir, "oplog")  # the operator's log tree
        os.mkdir(self.oplog_dir)
        os.chown(self.oplog_dir, NOBODY.pw_uid, NOBODY.pw_gid)
        os.chmod(self.oplog_dir, 0o750)
        self.oplog = os.path.join(self.oplog_dir, "sluiced.log")
        self.key = os.path.join(d.dir, "dkim.pem")
        st.run(["openssl", "genpkey", "-algorithm", "ED25519", "-out", self.key]).check()
        self.own(self.key, 0o640)

    def tearDown(self):
        self.d.cleanup()

    def own(self, path, mode, gid=None):
        os.chown(path, 0, NOBODY.pw_gid if gid is None else gid)
        os.chmod(path, mode)

    def write_conf(self, mode=0o640, gid=None):
        d = self.d
        with open(d.conf_path, "w") as f:
            f.write('user = "nobody";\n'
                    'hostname = "sluice.test";\n'
                    'log {\n    file = "%s";\n}\n'
                    'smtp {\n    listen = "127.0.0.1:%d";\n'
                    '    auth {\n        users {\n            alice = "%s";\n        }\n    }\n}\n'
                    'delivery {\n    smarthost = "127.0.0.1:%d";\n}\n'
                    'dkim {\n    keys {\n        "example.com" { s1 = "%s"; }\n    }\n}\n'
                    % (self.oplog, d.smtp_port, HASH, d.closed_port, self.key))
        self.own(d.conf_path, mode, gid)

    def test_default_layout_reload_rotate_and_socket_removal(self):
        d = self.d
        self.write_conf()
        d.start()  # returns once the ports answer, which is before the switch
        st.wait_for(lambda: " ready: " in read(self.oplog), 30, what="sluiced ready")
        self.assertIn("running as user nobody", read(self.oplog))
        # what sluiced created is the user's (./var too: the socket lives there)
        var = os.path.join(d.dir, "var")
        self.assertEqual(owner(var), ("nobody", 0o750))
        self.assertEqual(owner(d.spool), ("nobody", 0o700))
        self.assertEqual(owner(d.acct_dir), ("nobody", 0o750))
        self.assertEqual(owner(os.path.join(d.spool, "sluiced.lock"))[0], "nobody")
        d.swaks().check()
        acct = os.path.join(d.acct_dir, "acct.jsonl")
        st.wait_for(lambda: os.path.exists(acct) and "received" in read(acct), 10,
                    what="the received record")
        # reload rereads the configuration and the DKIM key as nobody
        r = d.ctl("reload", json=True)
        self.assertEqual(r.rc, 0, r)
        # our own rotation, as nobody
        d.ctl("log-rotate").check()
        rotated = glob.glob(os.path.join(d.acct_dir, "acct-*.jsonl"))
        self.assertEqual(len(rotated), 1, os.listdir(d.acct_dir))
        self.assertIn('"type":"received"', read(rotated[0]))
        # the operational log moved away (logrotate) is reopened, as nobody
        os.rename(self.oplog, self.oplog + ".1")
        d.ctl("log-rotate").check()
        st.wait_for(lambda: os.path.exists(self.oplog), 10, what="a new operational log")
        self.assertEqual(owner(self.oplog), ("nobody", 0o640))
        d.stop()
        self.assertFalse(os.path.exists(d.ctl_socket), "control socket left behind")
        # a restart as root finds everything usable
        d.start()
        self.assertEqual(d.status()["queue"]["messages"], 1)
        d.stop()
        self.assertFalse(os.path.exists(d.ctl_socket))

    def check_and_start_fail(self, expect):
        """--check-config (as root) and start-up refuse alike, exit 2."""
        for args in (["--check-config"], []):
            r = st.run([st.SLUICED, "-c", self.d.conf_path] + args, timeout=60)
            self.assertEqual(r.rc, 2, (args, r))
            self.assertIn(expect, r.err)
            self.assertEqual(st.sanitizer_errors(r.err), [])
        self.assertFalse(os.path.exists(self.d.ctl_socket))

    def test_config_the_user_cannot_read_stops_start(self):
        self.write_conf(gid=0)  # root:root 0640: root reads it, nobody does not
        self.check_and_start_fail('user "nobody" cannot read %s (Permission denied), which a '
                                  'reload reads again' % self.d.conf_path)

    def test_dkim_key_the_user_cannot_read_stops_start(self):
        self.write_conf()
        self.own(self.key, 0o600)  # root's alone
        self.check_and_start_fail('user "nobody" cannot read %s' % self.key)

    def test_dkim_key_readable_by_another_group_is_refused(self):
        self.write_conf()
        self.own(self.key, 0o640, gid=0)  # group root may read it, sluiced runs as nogroup
        r = st.run([st.SLUICED, "-c", self.d.conf_path, "--check-config"])
        self.assertEqual(r.rc, 2, r)
        self.assertIn("key %s: is readable by group root, which is not sluiced's (chgrp %s, or "
                      "chmod 600)" % (self.key, NOGROUP.gr_name), r.err)


if __name__ == "__main__":
    unittest.main(verbosity=2)
