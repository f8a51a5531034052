#!/usr/bin/python3
"""Operator commands that had no end-to-end test:

- `sluicectl bounce --sender S` bounces exactly the recipients of that
  envelope sender (case-insensitive), with admin_bounce records and a DSN
  to the sender; `--sender "<>"` takes the null sender's messages (no DSN
  for those) and leaves the others;
- `sluiced --print-default-config` prints a configuration that
  `--check-config` accepts and that runs exactly like the embedded default:
  two daemons, one with no -c and one with -c on the printed file, each in
  a directory and a network namespace of its own (the default listens on
  127.0.0.1:2525, a fixed port: a namespace keeps it off the machine's),
  create the same files, listen on the same addresses, greet and answer
  EHLO alike and report the same limits.

Env: SLUICE_BUILD (binaries), SLUICE_SRC.
"""
import json
import os
import shutil
import stat
import subprocess
import sys
import textwrap
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sluicetest as st  # noqa: E402


def send(d, sender, rcpts):
    with d.smtp() as s:
        s.sendmail(sender, rcpts, "From: x@example.com\r\nSubject: t\r\n\r\nbody\r\n")


class BounceSenderTest(unittest.TestCase):

    def test_bounce_by_sender(self):
        with st.Daemon() as d:
            d.ctl("suspend", "--all").check()  # nothing is in flight
            send(d, "alice@example.com", ["r1@example.test", "r2@example.test"])
            send(d, "Alice@Example.com", ["r3@example.test"])
            send(d, "bob@example.com", ["r4@example.test"])
            send(d, "", ["r5@example.test"])
            d.wait_queue(4)
            before = {m["id"] for m in d.list()["messages"]}

            r = d.ctl("bounce", "--sender", "ALICE@example.com").check()
            self.assertEqual(r.out, "3 recipients bounced\n")
            ab = [x for x in d.accounting() if x["type"] == "admin_bounce"]
            self.assertEqual(sorted((x["recipient"], x["sender"]) for x in ab),
                             [("r1@example.test", "alice@example.com"),
                              ("r2@example.test", "alice@example.com"),
                              ("r3@example.test", "Alice@Example.com")])
            self.assertTrue(all((x["status"], x["category"]) == ("5.0.0", "admin") for x in ab))
            msgs = d.list()["messages"]
            left = sorted((m["sender"], m["recipients"][0]["addr"]) for m in msgs
                          if m["id"] in before)
            self.assertEqual(left, [("", "r5@example.test"), ("bob@example.com", "r4@example.test")])
            # one DSN per bounced message, to its sender, from <>
            dsns = sorted(m["recipients"][0]["addr"] for m in msgs if m["id"] not in before)
            self.assertEqual(dsns, ["Alice@Example.com", "alice@example.com"])
            self.assertTrue(all(m["sender"] == "" for m in msgs if m["id"] not in before))

            # the null sender: its message and the DSNs queued before the
            # request; bouncing a bounce sends no DSN
            r = d.ctl("bounce", "--sender", "<>", json=True).check()
            self.assertEqual(r.data, {"ok": True, "bounced": 3, "skipped_in_flight": 0})
            msgs = d.list()["messages"]
            self.assertEqual([(m["sender"], m["recipients"][0]["addr"]) for m in msgs],
                             [("bob@example.com", "r4@example.test")])
            ab = [x for x in d.accounting() if x["type"] == "admin_bounce" and x["sender"] == ""]
            self.assertEqual(sorted(x["recipient"] for x in ab),
                             ["Alice@Example.com", "alice@example.com", "r5@example.test"])

            # a sender nobody used: nothing
            self.assertEqual(d.ctl("bounce", "--sender", "carol@example.com").check().out,
                             "0 recipients bounced\n")
            self.assertEqual(len(d.list()["messages"]), 1)
            r = d.ctl("bounce", "--sender")
            self.assertEqual(r.rc, st.CTL_USAGE, r)


# Run a command in the network namespace of process pid (a client for a
# daemon that listens in its own namespace).
SMTP_PROBE = textwrap.dedent("""
    import json, smtplib
    s = smtplib.SMTP(timeout=30)
    code, greeting = s.connect("127.0.0.1", 2525)
    greeting = "%d %s" % (code, greeting.decode())
    code, ehlo = s.ehlo("probe.test")
    s.quit()
    print(json.dumps({"greeting": greeting, "ehlo": [code, ehlo.decode()]}))
""")


class DefaultConfigTest(unittest.TestCase):

    def setUp(self):
        self.dir = st.make_tmpdir("defconf-")
        self.procs = []

    def tearDown(self):
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        if not st.keep_tmp():
            shutil.rmtree(self.dir, ignore_errors=True)

    def start(self, name, args):
        """sluiced ARGS with cwd DIR/name, in a new network namespace with
        loopback up. Returns (popen, dir)."""
        d = os.path.join(self.dir, name)
        os.mkdir(d)
        err = open(os.path.join(d, "stderr"), "wb")
        p = subprocess.Popen(["unshare", "--net", "--", "/bin/sh", "-c",
                              'ip link set lo up && exec "$0" "$@"', st.SLUICED] + args,
                             cwd=d, stdout=err, stderr=err, stdin=subprocess.DEVNULL)
        err.close()
        self.procs.append(p)
        sock = os.path.join(d, "var", "sluiced.sock")
        st.wait_for_socket(sock, 30, p)
        return p, d

    def stop(self, p, d):
        p.terminate()
        self.assertEqual(p.wait(60), 0)
        with open(os.path.join(d, "stderr"), errors="replace") as f:
            err = f.read()
        self.assertEqual(st.sanitizer_errors(err), [], err[-3000:])

    def observe(self, p, d):
        """What a daemon shows of its configuration."""
        sock = os.path.join(d, "var", "sluiced.sock")
        status = st.sluicectl(sock, "status", json=True)
        self.assertEqual(status.rc, 0, status.err)
        q, smtp = status.data["queue"], status.data["smtp"]
        limits = {k: q[k] for k in ("spool_max_bytes", "spool_map_bytes", "active_limit_bytes")}
        limits["memory_limit_bytes"] = smtp["memory_limit_bytes"]
        limits["hostname"] = status.data["hostname"]
        probe = subprocess.run(["nsenter", "-t", str(p.pid), "-n", "/usr/bin/python3", "-c",
                                SMTP_PROBE], capture_output=True, text=True, timeout=60)
        self.assertEqual(probe.returncode, 0, probe.stderr)
        smtp_seen = json.loads(probe.stdout)
        ss = subprocess.run(["nsenter", "-t", str(p.pid), "-n", "ss", "-ltnH"],
                            capture_output=True, text=True, timeout=30)
        listening = sorted(line.split()[3] for line in ss.stdout.splitlines() if line.strip())
        files = {}
        for root, dirs, names in os.walk(os.path.join(d, "var")):
            for n in dirs + names:
                path = os.path.join(root, n)
                files[os.path.relpath(path, d)] = stat.S_IMODE(os.lstat(path).st_mode)
        reload = st.sluicectl(sock, "reload", json=True)
        self.assertEqual(reload.rc, 0, reload.err)
        return {"limits": limits, "smtp": smtp_seen, "listening": listening, "files": files,
                "reload": (reload.data["applied"], reload.data["needs_restart"]),
                "socket_mode": stat.S_IMODE(os.stat(sock).st_mode)}

    def test_printed_default_loads_and_runs_like_the_default(self):
        out = subprocess.run([st.SLUICED, "--print-default-config"], capture_output=True,
                             text=True, timeout=30)
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertIn("spool {", out.stdout)
        printed = os.path.join(self.dir, "printed.conf")
        with open(printed, "w") as f:
            f.write(out.stdout)
        chk = subprocess.run([st.SLUICED, "--check-config", "-c", printed], capture_output=True,
                             text=True, timeout=30, cwd=self.dir)
        self.assertEqual((chk.returncode, chk.stdout), (0, printed + ": configuration ok\n"),
                         chk.stderr)

        p1, d1 = self.start("embedded", [])
        p2, d2 = self.start("printed", ["-c", printed])
        try:
            a, b = self.observe(p1, d1), self.observe(p2, d2)
        finally:
            self.stop(p1, d1)
            self.stop(p2, d2)
        self.assertEqual(a["listening"], ["127.0.0.1:2525"])
        self.assertIn("var/sluiced.sock", a["files"])
        self.assertIn("var/tls/cert.pem", a["files"])
        self.assertIn("var/log/acct.jsonl", a["files"])
        self.assertEqual(a["socket_mode"], 0o600)
        self.assertTrue(a["smtp"]["greeting"], a)
        for k in a:
            self.assertEqual(a[k], b[k], k)


if __name__ == "__main__":
    unittest.main()
