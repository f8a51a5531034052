#!/usr/bin/python3
"""Accounting log rotation, both ways (queue/acct.c, docs/operations.md):

- logrotate (the real program) moves acct.jsonl and the operational log
  away and runs `sluicectl log-rotate` in postrotate: no record is lost,
  every record written before the rotation is in the moved file, every one
  after it in the new acct.jsonl; with `create` no empty rotated file
  appears; the operational log goes on in its new file;
- our own rotation (`log-rotate` while acct.jsonl is still ours) renames
  it to acct-STAMP.jsonl, and a second one on an empty file renames nothing;
- a rotation that fails is reported (`log-rotate` exits 1 naming the
  file) and loses nothing; the next one succeeds;
- a file moved away that then passes accounting_max_size is reopened, not
  renamed again and again with an error each time.

Env: SLUICE_BUILD (binaries), SLUICE_SRC.
"""
import glob
import json
import os
import shutil
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sluicetest as st  # noqa: E402

LOGROTATE = shutil.which("logrotate") or "/usr/sbin/logrotate"


def read_records(path):
    with open(path) as f:
        return [json.loads(l) for l in f if l.strip()]


def read_text(path):
    try:
        with open(path, errors="replace") as f:
            return f.read()
    except FileNotFoundError:
        return ""


def send(d, rcpt):
    msg = "From: <s@example.com>\r\nTo: <%s>\r\nSubject: rot\r\n\r\nbody\r\n" % rcpt
    with d.smtp() as c:
        c.sendmail("s@example.com", [rcpt], msg.encode())


def rcpts_of(recs, type_):
    return sorted(a for r in recs if r.get("type") == type_ for a in r.get("rcpts", []))


class AcctRotate(unittest.TestCase):
    def setUp(self):
        self.d = st.Daemon(log_level="info")
        self.oplog_dir = os.path.join(self.d.dir, "oplog")
        os.mkdir(self.oplog_dir)
        self.oplog = os.path.join(self.oplog_dir, "sluiced.log")
        self.acct = os.path.join(self.d.acct_dir, "acct.jsonl")

    def tearDown(self):
        self.d.cleanup()

    def start(self, log_extra=""):
        with open(self.d.conf_path) as f:
            text = f.read()
        text = text.replace("log {\n", 'log {\n    file = "%s";\n%s' % (self.oplog, log_extra), 1)
        with open(self.d.conf_path, "w") as f:
            f.write(text)
        self.d.start()

    def settle(self, rcpts):
        """Wait until each rcpt has its received and its first transient
        record (the route is a closed port): after that the daemon writes
        nothing for them for minutes."""
        def done():
            recs = []
            for n in os.listdir(self.d.acct_dir):
                p = os.path.join(self.d.acct_dir, n)
                if os.path.isfile(p):
                    recs += read_records(p)
            got = rcpts_of(recs, "received")
            tr = sorted(r.get("recipient") for r in recs
                        if r.get("type") == "transient")
            return all(r in got for r in rcpts) and all(r in tr for r in rcpts)
        st.wait_for(done, 30, what="received and transient records of %s" % rcpts)

    def logrotate(self, create):
        conf = os.path.join(self.d.dir, "logrotate.conf")
        with open(conf, "w") as f:
            f.write("%s %s {\n"
                    "    rotate 3\n"
                    "    %s\n"
                    "    sharedscripts\n"
                    "    postrotate\n"
                    "        %s -s %s log-rotate\n"
                    "    endscript\n"
                    "}\n" % (self.acct, self.oplog,
                             "create 0640 root root" if create else "nocreate",
                             st.SLUICECTL, self.d.ctl_socket))
        os.chmod(conf, 0o644)
        r = st.run([LOGROTATE, "-f", "-s", os.path.join(self.d.dir, "logrotate.state"), conf],
                   timeout=120)
        self.assertEqual(r.rc, 0, r)

    def check_logrotate(self, create):
        self.start()
        first = ["r%d@example.test" % i for i in range(1, 6)]
        for r in first:
            send(self.d, r)
        self.settle(first)
        self.logrotate(create)
        moved = self.acct + ".1"
        self.assertEqual(rcpts_of(read_records(moved), "received"), sorted(first))
        later = ["r%d@example.test" % i for i in range(6, 11)]
        for r in later:
            send(self.d, r)
        self.settle(later)
        # every record after the rotation is in the new file, none lost
        self.assertEqual(rcpts_of(read_records(self.acct), "received"), sorted(later))
        self.assertEqual(rcpts_of(read_records(moved), "received"), sorted(first))
        ids = [r["msgid"] for r in self.d.accounting() if r["type"] == "received"]
        self.assertEqual(len(ids), 10)
        self.assertEqual(len(set(ids)), 10)
        # no rotated file of our own, empty or not
        self.assertEqual(glob.glob(os.path.join(self.d.acct_dir, "acct-*")), [])
        # the operational log goes on in the new file
        st.wait_for(lambda: "control: log files rotated" in read_text(self.oplog), 10,
                    what="the operational log reopened")
        self.d.stop()

    def test_logrotate_create(self):
        self.check_logrotate(create=True)

    def test_logrotate_nocreate(self):
        self.check_logrotate(create=False)

    def test_own_rotation_and_empty_file(self):
        self.start()
        send(self.d, "a@example.test")
        self.settle(["a@example.test"])
        r1 = self.d.ctl("log-rotate", json=True).check()
        rotated = glob.glob(os.path.join(self.d.acct_dir, "acct-*.jsonl"))
        self.assertEqual(len(rotated), 1)
        self.assertEqual(rcpts_of(read_records(rotated[0]), "received"), ["a@example.test"])
        # acct.jsonl is empty now: nothing to rename, no empty acct-*.jsonl
        r2 = self.d.ctl("log-rotate", json=True).check()
        self.assertEqual(glob.glob(os.path.join(self.d.acct_dir, "acct-*.jsonl")), rotated)
        # and the answers say what happened
        self.assertEqual(r1.data.get("accounting"), "rotated to %s" % rotated[0])
        self.assertEqual(r2.data.get("accounting"), "%s is empty: not rotated" % self.acct)
        self.d.stop()

    def test_failed_rotation_is_reported_and_loses_nothing(self):
        self.start()
        send(self.d, "a@example.test")
        self.settle(["a@example.test"])
        moved = os.path.join(self.d.acct_dir, "moved.jsonl")
        os.rename(self.acct, moved)
        os.mkdir(self.acct)  # the path is taken: the reopen cannot succeed
        r = self.d.ctl("log-rotate")
        self.assertEqual(r.rc, st.CTL_REFUSED, r)
        self.assertIn(self.acct, r.err)
        self.assertIn("Is a directory", r.err)
        send(self.d, "b@example.test")  # still written, to the moved file
        self.settle(["b@example.test"])
        self.assertEqual(rcpts_of(read_records(moved), "received"),
                         ["a@example.test", "b@example.test"])
        os.rmdir(self.acct)
        self.d.ctl("log-rotate").check()
        send(self.d, "c@example.test")
        self.settle(["c@example.test"])
        self.assertEqual(rcpts_of(read_records(self.acct), "received"), ["c@example.test"])
        self.d.stop()

    def test_moved_file_past_max_size_is_reopened(self):
        # acct.jsonl 64 bytes under accounting_max_size (1M) before start:
        # the first record takes it past
        os.makedirs(self.d.acct_dir, exist_ok=True)
        left = 1048576 - 64
        with open(self.acct, "w") as f:
            while left > 0:
                n = min(left, 1000)
                f.write('{"type":"padding","x":"%s"}\n' % ("x" * (n - 26)))
                left -= n
        self.assertEqual(os.path.getsize(self.acct), 1048576 - 64)
        self.start('    accounting_max_size = 1M;\n')
        moved = os.path.join(self.d.acct_dir, "moved.jsonl")
        os.rename(self.acct, moved)  # logrotate without postrotate, or a hand's mv
        send(self.d, "a@example.test")  # lands in the moved file, which passes 1M
        self.settle(["a@example.test"])
        send(self.d, "b@example.test")
        self.settle(["b@example.test"])
        self.assertIn("a@example.test", rcpts_of(read_records(moved), "received"))
        self.assertEqual(rcpts_of(read_records(self.acct), "received"), ["b@example.test"])
        self.assertEqual(glob.glob(os.path.join(self.d.acct_dir, "acct-*")), [])
        self.d.stop()
        log = read_text(self.oplog)
        self.assertIn("was moved away: reopened", log)
        self.assertNotIn("rotate %s" % self.acct, log)  # no rename error, let alone many


if __name__ == "__main__":
    unittest.main(verbosity=2)
