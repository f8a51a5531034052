#!/usr/bin/python3
"""The installed sluice (issue 13; docs/operations.md "Deploying"):
`cmake --install` of the build tree into a temporary DESTDIR, checked as
an operator would find it.

- the tree: every file where it belongs with its mode (the configuration
  0640, not readable by others), nothing else; the `sluice` component has
  no load tools, the `bench` component only them;
- the installed binaries have the installed layout compiled in: sluiced
  with no -c reads /etc/sluice/sluice.conf, its --print-default-config is
  the shipped file, sluicectl looks for /run/sluice/sluiced.sock; the
  build tree's keep ./var;
- the installed example differs from config/sluice.conf.example only by
  those paths, and checks;
- the manual pages lint clean (mandoc -T lint, and groff's warnings as man
  renders them);
- the systemd unit passes `systemd-analyze verify` (with its binaries
  pointed into the DESTDIR) and names the paths the binaries use;
- the shipped logrotate file, pointed at a running installed sluiced (as
  the user nobody standing in for sluice): after logrotate's rename and
  its postrotate `sluicectl log-rotate`, every record written before is in
  the rotated file, every one after in the new one, and with a client
  sending all through the rotation every record is in one of the two
  files exactly once, none lost; the operational log likewise; then the
  unit's ExecReload, run as the daemon's user, rereads the configuration
  (root:<group> 0640) and `sluicectl log-rotate` works as that user too.

Runs as root (as make test does): the daemon switches to nobody.
Env: SLUICE_BUILD (binaries), SLUICE_SRC.
"""
import glob
import grp
import gzip
import json
import os
import pwd
import re
import shutil
import smtplib
import stat
import subprocess
import sys
import threading
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sluicetest as st  # noqa: E402

LOGROTATE = shutil.which("logrotate") or "/usr/sbin/logrotate"
NOBODY = pwd.getpwnam("nobody")
NOGROUP = grp.getgrgid(NOBODY.pw_gid).gr_name


def read(path):
    with open(path, errors="replace") as f:
        return f.read()


def mode(path):
    return stat.S_IMODE(os.lstat(path).st_mode)


def tree(root):
    """{relative path: mode} of every file (not directory) under root."""
    out = {}
    for d, _, files in os.walk(root):
        for n in files:
            p = os.path.join(d, n)
            out["/" + os.path.relpath(p, root)] = mode(p)
    return out


def unit_values(text):
    """{key: [values]} of a unit file's assignments."""
    vals = {}
    for line in text.splitlines():
        m = re.match(r"^([A-Za-z]+)=(.*)$", line)
        if m:
            vals.setdefault(m.group(1), []).append(m.group(2))
    return vals


SLUICE_FILES = {
    "/usr/sbin/sluiced": 0o755,
    "/usr/bin/sluicectl": 0o755,
    "/etc/sluice/sluice.conf": 0o640,
    "/etc/logrotate.d/sluice": 0o644,
    "/lib/systemd/system/sluiced.service": 0o644,
    "/usr/share/man/man8/sluiced.8.gz": 0o644,
    "/usr/share/man/man8/sluicectl.8.gz": 0o644,
    "/usr/share/man/man5/sluice.conf.5.gz": 0o644,
    "/usr/share/sluice/providers.conf": 0o644,
    "/usr/share/sluice/bounce-rules.conf": 0o644,
    "/usr/share/doc/sluice/examples/sluice.conf.example": 0o644,
    "/usr/share/doc/sluice/README.md": 0o644,
    "/usr/share/doc/sluice/copyright": 0o644,
    "/usr/share/doc/sluice/changelog.gz": 0o644,
}
BENCH_FILES = {
    "/usr/bin/sluice-source": 0o755,
    "/usr/bin/sluice-sink": 0o755,
    "/usr/share/man/man1/sluice-source.1.gz": 0o644,
    "/usr/share/man/man1/sluice-sink.1.gz": 0o644,
    "/usr/share/doc/sluice-bench/README.md": 0o644,
    "/usr/share/doc/sluice-bench/copyright": 0o644,
    "/usr/share/doc/sluice-bench/changelog.gz": 0o644,
}


class Injector(threading.Thread):
    """One SMTP session that sends message after message (to during00@,
    during01@, ...) until stop is set, then two more, at most 500; sent
    lists the accepted recipients, error keeps what went wrong."""

    def __init__(self, host, port):
        super().__init__(daemon=True)
        self.host, self.port = host, port
        self.stop = threading.Event()
        self.sent = []
        self.error = None

    def run(self):
        try:
            with smtplib.SMTP(self.host, self.port, timeout=60) as s:
                extra = 0
                for i in range(500):
                    a = "during%03d@example.test" % i
                    s.sendmail("sender@example.com", [a],
                               b"From: sender@example.com\r\nTo: %s\r\n"
                               b"Subject: during the rotation\r\n\r\nx\r\n" % a.encode())
                    self.sent.append(a)
                    if self.stop.is_set():
                        extra += 1
                        if extra == 2:
                            break
        except Exception as e:  # reported by the test, not lost in a thread
            self.error = repr(e)


class Install(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.dir = st.make_tmpdir("sluice-install-")
        cls.root = os.path.join(cls.dir, "root")
        st.install_tree(cls.root)  # both components
        cls.sbin = cls.root + "/usr/sbin/sluiced"
        cls.ctl = cls.root + "/usr/bin/sluicectl"

    @classmethod
    def tearDownClass(cls):
        if not st.keep_tmp():
            shutil.rmtree(cls.dir, ignore_errors=True)

    def test_tree_and_components(self):
        want = dict(SLUICE_FILES, **BENCH_FILES)
        for p in glob.glob(os.path.join(st.SRC, "docs", "*.md")):
            want["/usr/share/doc/sluice/docs/" + os.path.basename(p)] = 0o644
        got = tree(self.root)
        self.assertEqual({p: oct(m) for p, m in got.items()},
                         {p: oct(m) for p, m in want.items()})
        # a production install leaves the load tools out, and the bench
        # component is only them
        for comp, files in (("sluice", SLUICE_FILES), ("bench", BENCH_FILES)):
            r = os.path.join(self.dir, comp)
            st.install_tree(r, component=comp)
            got = set(tree(r))
            self.assertTrue(set(files) <= got, set(files) - got)
            other = BENCH_FILES if comp == "sluice" else SLUICE_FILES
            self.assertEqual(got & set(other), set())

    def test_installed_binaries_have_the_installed_layout(self):
        shipped = read(self.root + "/etc/sluice/sluice.conf")
        r = st.run([self.sbin, "--print-default-config"]).check()
        self.assertEqual(r.out, shipped)
        for path in ('path = "/var/spool/sluice";', 'socket = "/run/sluice/sluiced.sock";',
                     'accounting_dir = "/var/log/sluice";', 'dir = "/var/lib/sluice/tls";',
                     'user = "sluice";'):
            self.assertIn(path, shipped)
        self.assertNotIn("./var", shipped)
        # no -c: /etc/sluice/sluice.conf, whether this machine has one or not
        r = st.run([self.sbin, "--check-config"])
        if os.path.exists("/etc/sluice/sluice.conf"):
            self.assertIn("/etc/sluice/sluice.conf", r.out + r.err)
        else:
            self.assertEqual(r.rc, 2, r)
            self.assertIn("sluiced: /etc/sluice/sluice.conf: cannot open: No such file", r.err)
            self.assertIn("--print-default-config > /etc/sluice/sluice.conf", r.err)
        r = st.run([self.sbin, "--help"]).check()
        self.assertIn("default: /etc/sluice/sluice.conf", r.out)
        # sluicectl: the installed socket without -s (nothing listens there)
        env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICE_SOCKET")}
        if not os.path.exists("/run/sluice/sluiced.sock"):
            r = st.run([self.ctl, "status"], env=env)
            self.assertEqual(r.rc, st.CTL_CONNECT, r)
            self.assertIn("cannot connect to /run/sluice/sluiced.sock", r.err)
        self.assertIn("/run/sluice/sluiced.sock", st.run([self.ctl, "--help"]).check().out)
        # the build tree's binaries keep ./var (make run, the tests)
        self.assertIn('path = "./var/spool";',
                      st.run([st.SLUICED, "--print-default-config"]).check().out)
        r = st.run([st.SLUICECTL, "status"], env=env, timeout=30)
        if not os.path.exists("var/sluiced.sock"):
            self.assertIn("./var/sluiced.sock", r.err)

    def test_example_has_the_installed_paths(self):
        src = read(os.path.join(st.SRC, "config/sluice.conf.example")).splitlines()
        inst = read(self.root + "/usr/share/doc/sluice/examples/sluice.conf.example").splitlines()
        self.assertEqual(len(src), len(inst))
        changed = [(a.strip(), b.strip()) for a, b in zip(src, inst) if a != b]
        key = re.compile(r'^(\w+ = "[^"]*";)')
        self.assertEqual(
            [key.match(b).group(1) if key.match(b) else b for _, b in changed],
            ['accounting_dir = "/var/log/sluice";', 'path = "/var/spool/sluice";',
             'socket = "/run/sluice/sluiced.sock";',
             '# set; "" = beside the spool: <parent of spool.path>/tls (/var/spool/tls).',
             'dir = "/var/lib/sluice/tls";'])
        # it loads, with the installed binary, as the installed defaults
        r = st.run([self.sbin, "-c", self.root + "/usr/share/doc/sluice/examples/"
                    "sluice.conf.example", "--check-config"]).check()
        self.assertIn("configuration ok", r.out)

    def test_manual_pages_lint_clean(self):
        pages = sorted(glob.glob(self.root + "/usr/share/man/man*/*.gz"))
        self.assertEqual(len(pages), 5)
        for page in pages:
            r = st.run(["mandoc", "-T", "lint", "-W", "warning", page])
            self.assertEqual((r.rc, r.out + r.err), (0, ""), page)
            # as `man -l` renders it for an 80-column terminal, with groff's
            # warnings on
            env = dict(os.environ, MANWIDTH="80", LC_ALL="C.UTF-8")
            r = st.run(["man", "--warnings", "-E", "UTF-8", "-l", page], env=env)
            self.assertEqual((r.rc, r.err), (0, ""), page)
            self.assertIn("NAME", r.out)
        with gzip.open(self.root + "/usr/share/man/man8/sluiced.8.gz", "rt") as f:
            self.assertIn(".Nm sluiced", f.read())

    def test_unit_verifies_and_names_the_installed_paths(self):
        unit = read(self.root + "/lib/systemd/system/sluiced.service")
        v = unit_values(unit)
        self.assertEqual(v["Type"], ["notify"])
        self.assertEqual(v["ExecStart"], ["/usr/sbin/sluiced -c /etc/sluice/sluice.conf"])
        self.assertEqual(v["ExecReload"],
                         ["/usr/bin/sluicectl -s /run/sluice/sluiced.sock reload"])
        # the paths of the shipped configuration are the ones the unit makes
        # writable: socket in RuntimeDirectory, logs in LogsDirectory, TLS
        # under StateDirectory, the spool in ReadWritePaths
        conf = read(self.root + "/etc/sluice/sluice.conf")
        def conf_value(key):
            return re.search(r"^\s*%s = \"([^\"]+)\";" % key, conf, re.M).group(1)
        self.assertEqual(v["User"], [conf_value("user")])
        self.assertEqual(os.path.dirname(conf_value("socket")), "/run/" + v["RuntimeDirectory"][0])
        self.assertEqual(conf_value("accounting_dir"), "/var/log/" + v["LogsDirectory"][0])
        self.assertTrue(conf_value("dir").startswith("/var/lib/%s/" % v["StateDirectory"][0]))
        self.assertEqual(v["ReadWritePaths"], [conf_value("path")])
        self.assertEqual(v["AmbientCapabilities"], ["CAP_NET_BIND_SERVICE"])
        self.assertEqual(v["CapabilityBoundingSet"], ["CAP_NET_BIND_SERVICE"])
        self.assertEqual(v["NoNewPrivileges"], ["yes"])
        self.assertEqual(v["ProtectSystem"], ["strict"])
        # systemd-analyze verify: the same unit with its two binaries
        # pointed into the DESTDIR (it checks that they are executable) and
        # the manuals found there; verify exits 0 even on a bad line, so
        # anything it prints is a failure
        tool = shutil.which("systemd-analyze")
        self.assertIsNotNone(tool, "systemd-analyze is missing (package systemd, .ci/deps)")
        vdir = os.path.join(self.dir, "verify")
        os.makedirs(vdir, exist_ok=True)
        with open(os.path.join(vdir, "sluiced.service"), "w") as f:
            f.write(unit.replace("=/usr/sbin/", "=%s/usr/sbin/" % self.root)
                    .replace("=/usr/bin/", "=%s/usr/bin/" % self.root))
        env = dict(os.environ, MANPATH=self.root + "/usr/share/man")
        r = st.run([tool, "verify", os.path.join(vdir, "sluiced.service")], env=env,
                   timeout=120)
        self.assertEqual((r.rc, r.out + r.err), (0, ""))

    def test_logrotate_file_with_a_running_daemon(self):
        """The shipped /etc/logrotate.d/sluice, its paths pointed at a test
        directory (and `su sluice sluice` at nobody, the daemon's user here)."""
        d = st.Daemon(sluiced=self.sbin)
        try:
            self.check_logrotate(d)
        finally:
            d.cleanup()

    def check_logrotate(self, d):
        logdir = os.path.join(d.dir, "log")  # LogsDirectory=, the user's
        rundir = os.path.join(d.dir, "run")  # RuntimeDirectory=
        for p in (logdir, rundir):
            os.mkdir(p, 0o750)
            os.chown(p, NOBODY.pw_uid, NOBODY.pw_gid)
        d.acct_dir = logdir
        d.ctl_socket = os.path.join(rundir, "sluiced.sock")
        oplog = os.path.join(logdir, "sluiced.log")
        with open(d.conf_path, "w") as f:
            f.write('user = "nobody";\nhostname = "sluice.test";\n'
                    'log {\n    file = "%s";\n    accounting_dir = "%s";\n}\n'
                    'spool {\n    path = "%s";\n    map_size = 64M;\n}\n'
                    'control {\n    socket = "%s";\n}\n'
                    'smtp {\n    listen = "127.0.0.1:%d";\n'
                    '    tls {\n        dir = "%s";\n    }\n}\n'
                    'delivery {\n    smarthost = "127.0.0.1:%d";\n}\n'
                    % (oplog, logdir, d.spool, d.ctl_socket, d.smtp_port,
                       os.path.join(d.dir, "tls"), d.closed_port))
        ns = st.NotifySocket(d.dir)
        d.env = ns.env()
        d.start(wait=False)
        ns.wait("READY", "1", timeout=120)  # after the switch to nobody
        ns.close()
        acct = os.path.join(logdir, "acct.jsonl")

        def received():
            recs = []
            for p in glob.glob(os.path.join(logdir, "acct*")):
                recs += [json.loads(l) for l in read(p).splitlines() if l.strip()]
            return sorted(a for r in recs if r["type"] == "received" for a in r["rcpts"])

        before = ["before%d@example.test" % i for i in range(3)]
        for a in before:
            d.swaks(to=a).check()
        st.wait_for(lambda: received() == before, 30, what="3 received records")

        shipped = read(self.root + "/etc/logrotate.d/sluice")
        conf = shipped
        for old, new in (("/var/log/sluice/", logdir + "/"),
                         ("/run/sluice/sluiced.sock", d.ctl_socket),
                         ("/usr/bin/sluicectl", self.ctl),
                         ("su sluice sluice", "su nobody " + NOGROUP)):
            self.assertIn(old, conf)
            conf = conf.replace(old, new)
        directives = [l.strip() for l in conf.splitlines() if not l.strip().startswith("#")]
        self.assertNotIn("copytruncate", directives)
        lr_conf = os.path.join(d.dir, "logrotate.conf")
        with open(lr_conf, "w") as f:
            f.write(conf)
        state = os.path.join(d.dir, "logrotate.state")
        # its syntax first (-d: parse and tell, change nothing)
        r = st.run([LOGROTATE, "-d", "-s", state, lr_conf])
        self.assertEqual(r.rc, 0, r)
        self.assertNotIn("error", r.out + r.err)
        # once, as cron would (forced: "daily" has not passed); the daemon
        # runs as nobody, which the installed sluicectl trusts when told
        # while a client goes on sending: whatever the daemon writes between
        # logrotate's rename and the reopen goes to the renamed file
        env = dict(os.environ, SLUICE_SOCKET_OWNER="nobody")
        sender = Injector(d.smtp_host, d.smtp_port)
        sender.start()
        # its first record is in acct.jsonl before logrotate starts, its
        # last two are sent after the postrotate reopen has returned
        st.wait_for(lambda: sender.error or (sender.sent and sender.sent[0] in received()),
                    30, what="the client's first record")
        r = st.run([LOGROTATE, "-f", "-s", state, lr_conf], env=env)
        sender.stop.set()
        sender.join(120)
        self.assertFalse(sender.is_alive(), "the client did not finish in 120 s")
        self.assertIsNone(sender.error)
        self.assertEqual((r.rc, r.err), (0, ""))
        self.assertEqual(sorted(os.listdir(logdir)),
                         ["acct.jsonl", "acct.jsonl.1", "sluiced.log", "sluiced.log.1"])
        during = sender.sent
        after = ["after%d@example.test" % i for i in range(2)]
        for a in after:
            d.swaks(to=a).check()
        # every record once, in one of the two files: none lost, none twice
        want = sorted(before + during + after)
        st.wait_for(lambda: received() == want, 30, what="%d received records" % len(want))

        def rcpts(path):
            recs = [json.loads(l) for l in read(path).splitlines()]
            return {a for r in recs if r["type"] == "received" for a in r["rcpts"]}
        old_file, new_file = rcpts(acct + ".1"), rcpts(acct)
        self.assertTrue(set(before + during[:1]) <= old_file, old_file)
        self.assertTrue(set(during[-2:] + after) <= new_file, new_file)
        self.assertEqual(rcpts(acct + ".1") & rcpts(acct), set())
        # the operational log goes on in the new file, which is the user's
        st.wait_for(lambda: "after1@example.test" in read(oplog), 30, what="oplog after rotation")
        self.assertNotIn("after0@example.test", read(oplog + ".1"))
        self.assertEqual(os.stat(oplog).st_uid, NOBODY.pw_uid)
        self.assertEqual(os.stat(acct).st_uid, NOBODY.pw_uid)
        self.check_reload_as_the_user(d, oplog)
        d.stop()

    def check_reload_as_the_user(self, d, oplog):
        """The unit's ExecReload runs as its User= (nobody here): the
        installed sluicectl reaches the socket, and the daemon, which
        dropped root, rereads the configuration root:<its group> 0640 as
        the package ships it; a live key changes at once."""
        os.chown(d.conf_path, 0, NOBODY.pw_gid)
        os.chmod(d.conf_path, 0o640)
        conf = read(d.conf_path)
        self.assertIn("log {\n", conf)
        with open(d.conf_path, "w") as f:
            f.write(conf.replace("log {\n", 'log {\n    level = "debug";\n', 1))
        unit = unit_values(read(self.root + "/lib/systemd/system/sluiced.service"))
        reload = unit["ExecReload"][0].split()
        self.assertEqual(reload[0], "/usr/bin/sluicectl")
        reload = [self.ctl] + [d.ctl_socket if a == "/run/sluice/sluiced.sock" else a
                               for a in reload[1:]]
        r = st.run(reload, user="nobody")
        self.assertEqual(r.rc, 0, r)
        st.wait_for(lambda: "applied=[log.level," in read(oplog), 30,
                    what="the reload in the operational log")
        # and log-rotate, as the same user
        r = st.run([self.ctl, "-s", d.ctl_socket, "log-rotate"], user="nobody")
        self.assertEqual(r.rc, 0, r)


if __name__ == "__main__":
    unittest.main()
