#!/usr/bin/python3
"""Resource exhaustion: a full disk under the spool, file descriptors near
the limit, a virtual memory limit.

* Disk full: the spool lives on a small tmpfs (40 MB, mounted here; root
  only) and a filler file takes most of it. Load runs until the disk is
  full: reception must answer 452 4.3.1, every message acknowledged before
  must still be in the spool (also after a restart, and the spool passes
  --check-spool), and once the filler is deleted mail is accepted again.
* File descriptors: the running daemon's RLIMIT_NOFILE is lowered (prlimit)
  to a few more than it uses; 60 clients connect. Each gets a 220, a 421
  or a closed connection at once (no hang), the daemon does not crash, and
  once they leave, mail is accepted again.
* Memory: smtp.max_memory (message bytes held by reception sessions) and
  queue.active_size (message bytes handed to delivery) are checked in any
  build. Then the daemon runs under a virtual memory limit (prlimit --as),
  started under it and lowered while it runs, and gets big messages on
  many connections: it refuses some (4xx) and must not crash. ASan
  reserves terabytes of address space, so these two run the release
  build's sluiced ($SLUICE_RELEASE_BUILD, which `make test` builds; else
  the build/ that CMake names): missing, they fail.
Not root: the disk-full test is skipped (exit 77, shown as Skipped).
"""
import json
import os
import re
import shutil
import smtplib
import socket
import subprocess
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sluicetest as st  # noqa: E402


def sanitizer_build():
    """The SLUICE_SANITIZE value of the build under test ('' for none)."""
    try:
        with open(os.path.join(st.BUILD, "CMakeCache.txt")) as f:
            m = re.search(r"^SLUICE_SANITIZE:\w+=(.*)$", f.read(), re.M)
            return m.group(1).strip() if m else ""
    except OSError:
        return ""


def fd_count(pid):
    return len(os.listdir("/proc/%d/fd" % pid))


def source(port, n, size, conns, ids, seconds=60):
    r = st.run([st.SOURCE, "-s", "127.0.0.1:%d" % port, "-n", str(n), "-S", str(size), "-c",
                str(conns), "-t", str(seconds), "--ids", ids, "--json"], timeout=seconds + 60)
    return json.loads(r.out) if r.out.strip().startswith("{") else {"raw": r.out + r.err}


def read_ids(path):
    try:
        with open(path) as f:
            return [l.strip() for l in f if l.strip()]
    except FileNotFoundError:
        return []


class Resources(unittest.TestCase):
    def test_disk_full(self):
        st.require_root("mounting a tmpfs")
        tmp = st.make_tmpdir("sluice-diskfull-")
        mnt = os.path.join(tmp, "fs")
        os.mkdir(mnt)
        st.run(["mount", "-t", "tmpfs", "-o", "size=40m", "tmpfs", mnt]).check()
        d = None
        try:
            d = st.Daemon(tmpdir=tmp)
            text = d.default_conf().replace('path = "%s"' % d.spool,
                                            'path = "%s/spool"' % mnt)
            with open(d.conf_path, "w") as f:
                f.write(text)
            d.spool = os.path.join(mnt, "spool")
            d.start()
            filler = os.path.join(mnt, "filler")
            with open(filler, "wb") as f:  # leave about 8 MB for the spool
                f.write(b"\0" * (32 << 20))
            ids = os.path.join(tmp, "ids")
            res = source(d.smtp_port, 3000, 10240, 4, ids)
            acked = read_ids(ids)
            self.assertGreater(len(acked), 50, res)
            self.assertGreater(res.get("temp_failed", 0), 0, "the disk never filled: %s" % res)
            self.assertTrue(d.running(), d.stderr()[-3000:])
            # the refusal is 452 4.3.1, said clearly
            with self.assertRaises(smtplib.SMTPResponseException) as cm:
                with d.smtp() as c:
                    c.sendmail("s@sender.example", ["full@example.test"], b"Subject: x\r\n\r\n" +
                               (b"y" * 998 + b"\r\n") * 200)
            self.assertEqual(cm.exception.smtp_code, 452, "%s\n%s" % (
                cm.exception, "\n".join(l for l in d.stderr().splitlines()
                                        if "spool" in l or "error" in l)[-3000:]))
            self.assertIn(b"4.3.1", cm.exception.smtp_error)
            # nothing acknowledged is lost
            queued = {m["id"] for m in d.list()["messages"]}
            self.assertEqual([i for i in acked if i not in queued], [])
            # space comes back: service resumes
            os.unlink(filler)
            st.wait_for(lambda: self._accepts(d), 20, interval=0.5, what="mail accepted again")
            res2 = source(d.smtp_port, 200, 10240, 4, ids)
            self.assertEqual(res2.get("accepted"), 200, res2)
            # and after a restart everything acknowledged is still there
            d.stop()
            r = st.run([st.SLUICED, "-c", d.conf_path, "--check-spool"], timeout=60)
            self.assertEqual(r.rc, 0, r.out + r.err)
            d.start()
            queued = {m["id"] for m in d.request({"cmd": "list", "limit": 1000000},
                                                 timeout=60)["messages"]}
            acked = read_ids(ids)
            self.assertEqual([i for i in acked if i not in queued], [])
            print("disk full: %d acknowledged before the disk filled, %d refused (4xx), "
                  "all %d found after restart" % (len(acked) - 200, res.get("temp_failed"),
                                                  len(acked)), file=sys.stderr)
            d.stop()
        finally:
            if d is not None and d.running():
                d.kill9()
            subprocess.run(["umount", "-l", mnt])
            if d is not None:
                d.cleanup()
            shutil.rmtree(tmp, ignore_errors=True)

    @staticmethod
    def _accepts(d):
        try:
            with d.smtp(timeout=10) as c:
                c.sendmail("s@sender.example", ["again@example.test"], b"Subject: x\r\n\r\nz\r\n")
            return True
        except (OSError, smtplib.SMTPException):
            return False

    def test_file_descriptors_near_the_limit(self):
        with st.Daemon() as d:  # started: every thread and its descriptors are there
            used = fd_count(d.proc.pid)
            limit = used + 16
            st.run(["prlimit", "--pid", str(d.proc.pid), "--nofile=%d:%d" % (limit, limit)]).check()
            socks, outcomes = [], {"220": 0, "421": 0, "closed": 0, "hang": 0}
            for _ in range(60):
                s = socket.socket()
                s.settimeout(5)
                try:
                    s.connect(("127.0.0.1", d.smtp_port))
                    data = s.recv(512)
                    key = data[:3].decode() if data[:3] in (b"220", b"421") else "closed"
                except socket.timeout:
                    key = "hang"
                except OSError:
                    key = "closed"
                outcomes[key] += 1
                socks.append(s)
            self.assertEqual(outcomes["hang"], 0, outcomes)
            self.assertGreater(outcomes["220"], 0, outcomes)
            self.assertGreater(outcomes["421"] + outcomes["closed"], 0, outcomes)
            self.assertTrue(d.running(), d.stderr()[-3000:])
            for s in socks:
                s.close()
            st.wait_for(lambda: self._accepts(d), 20, interval=0.5, what="mail accepted again")
            r = d.request({"cmd": "status"})
            self.assertTrue(r["ok"])
            print("fd limit %d (daemon used %d): %s" % (limit, used, outcomes), file=sys.stderr)

    # -- memory: the budgets (any build) and ulimit -v (release build)

    def _open_data(self, d, rcpt, size):
        """A session that has sent `size` bytes of DATA, without the dot."""
        c = st.RawClient(d.smtp_port, timeout=60)
        self.assertEqual(c.reply()[0], 220)
        for cmd in ("EHLO raw.example", "MAIL FROM:<s@sender.example>", "RCPT TO:<%s>" % rcpt):
            self.assertEqual(c.cmd(cmd)[0], 250)
        self.assertEqual(c.cmd("DATA")[0], 354)
        c.send(b"Subject: big\r\n\r\n" + (b"z" * 998 + b"\r\n") * (size // 1000))
        return c

    @staticmethod
    def _dot(c):
        """The final dot and the reply's last line."""
        c.send(b".\r\n")
        return c.reply()[1].strip().splitlines()[-1]

    def test_message_memory_budget(self):
        """smtp.max_memory bounds the message bytes all sessions hold:
        a body that outgrows it and a MAIL SIZE= that does not fit get
        452 4.3.1, the others are accepted, nothing acknowledged is lost,
        and the memory is given back."""
        with st.Daemon(smtp_extra="    max_message_size = 20M;\n    max_memory = 40M;\n") as d:
            st0 = d.status()["smtp"]
            self.assertEqual(st0["memory_limit_bytes"], 40 << 20)
            # three bodies of 15 MB (16 MB buffers): the third does not fit
            sess = [self._open_data(d, "big%d@example.test" % i, 15 << 20) for i in range(3)]
            st.wait_for(lambda: "refusing a" in d.stderr(), 30,
                        what="the daemon to drop the body that does not fit")
            used = d.status()["smtp"]["memory_bytes"]
            self.assertLessEqual(used, 40 << 20)
            self.assertGreaterEqual(used, 2 * (15 << 20))  # the two that fit are held
            answers = []
            for c in sess:
                answers.append(self._dot(c))
            self.assertTrue(answers[0].startswith("250") and answers[1].startswith("250"),
                            answers)
            self.assertTrue(answers[2].startswith("452 4.3.1"), answers)
            # MAIL SIZE= (smtplib declares it) while 32 MB are held
            held = [self._open_data(d, "held%d@example.test" % i, 15 << 20) for i in range(2)]
            st.wait_for(lambda: d.status()["smtp"]["memory_bytes"] >= 2 * (15 << 20), 30,
                        what="the daemon to hold both bodies")
            big = b"Subject: sized\r\n\r\n" + (b"y" * 998 + b"\r\n") * 15000
            with self.assertRaises(smtplib.SMTPSenderRefused) as cm:
                with d.smtp(timeout=60) as c:
                    c.sendmail("s@sender.example", ["sized@example.test"], big)
            self.assertEqual(cm.exception.smtp_code, 452)
            self.assertIn(b"4.3.1", cm.exception.smtp_error)
            for c in held:
                answers.append(self._dot(c))
                c.close()
            self.assertTrue(all(a.startswith("250") for a in answers[3:]), answers)
            with d.smtp(timeout=60) as c:  # room again
                c.sendmail("s@sender.example", ["sized@example.test"], big)
            for c in sess:
                c.close()
            ids = [a.split()[-1] for a in answers if a.startswith("250")]
            queued = {m["id"] for m in d.list()["messages"]}
            self.assertEqual([i for i in ids if i not in queued], [])
            self.assertEqual(len(queued), 5)
            st.wait_for(lambda: d.status()["smtp"]["memory_bytes"] == 0, 10, interval=0.2,
                        what="message memory given back")
            self.assertEqual(d.status()["smtp"]["memory_refused"], 2)
            metrics = d.ctl("metrics").check().out
            self.assertIn("sluice_smtp_memory_refused_total 2", metrics)
            self.assertIn("message memory full", d.stderr())
            out = d.ctl("status").check().out
            self.assertRegex(out, r"message memory max\s+40\.0 MiB")
            self.assertRegex(out, r"refused for memory\s+2\b")

    def test_delivery_bytes_in_flight(self):
        """queue.active_size bounds the message bytes handed to delivery
        threads: 12 messages of 300 KB to a slow receiver (each DATA is
        answered after 700 ms) never have more than 1 MB in flight, and all
        arrive."""
        sink = st.Sink("--no-starttls", "--slow-ms", "700")
        try:
            with st.Daemon(extra_conf="queue {\n    active_size = 1M;\n    scan_interval = 100ms;\n}\n",
                           routes={"example.test": "127.0.0.1:%d" % sink.port}) as d:
                body = b"Subject: 300k\r\n\r\n" + (b"x" * 998 + b"\r\n") * 300
                with d.smtp() as c:
                    for i in range(12):
                        c.sendmail("s@sender.example", ["slow+%d@example.test" % i], body)
                peak, t0 = 0, time.monotonic()
                while len(sink.messages()) < 12 and time.monotonic() - t0 < 60:
                    q = d.status()["queue"]
                    peak = max(peak, q["active_bytes"])
                    time.sleep(0.05)
                self.assertEqual(len(sink.messages()), 12)
                self.assertEqual(q["active_limit_bytes"], 1 << 20)
                self.assertGreater(peak, 300000)
                self.assertLessEqual(peak, 1 << 20)
                print("delivery: peak %d bytes in flight (limit 1 MiB), 12 x 300 KB delivered in "
                      "%.1fs" % (peak, time.monotonic() - t0), file=sys.stderr)
        finally:
            sink.stop()

    def _release_sluiced(self):
        """The sluiced to run under ulimit -v: the build under test when it
        has no sanitizer, else the release build's (ASan reserves terabytes
        of address space, so a sanitizer build cannot run under a limit):
        $SLUICE_RELEASE_BUILD (make test sets it), else the build/ that
        CMake passes in SLUICE_RELEASE_BUILD_DEFAULT. Missing: the test
        fails (make build-daemon builds it)."""
        if not sanitizer_build():
            return st.SLUICED
        rel = (os.environ.get("SLUICE_RELEASE_BUILD")
               or os.environ.get("SLUICE_RELEASE_BUILD_DEFAULT"))
        if not rel:
            self.fail("the build under test has sanitizers and no release build is named: "
                      "set SLUICE_RELEASE_BUILD (make test does)")
        path = os.path.join(rel, "core/server/sluiced")
        if not os.access(path, os.X_OK):
            self.fail("%s is missing: make build-daemon" % path)
        return path

    def _big_load(self, d, n=30, mb=15):
        """n concurrent sessions of one mb-MB message each: the list of
        their answers, (code, queue id or None, recipient) (code 0: no
        answer at all)."""
        codes = []
        big = b"Subject: big\r\n\r\n" + (b"z" * 998 + b"\r\n") * (mb * 1000)

        def one(i):
            rcpt = "m%d@example.test" % i
            try:
                with d.smtp(timeout=120) as c:
                    c.ehlo("load.example")
                    steps = (lambda: c.mail("s@sender.example"),
                             lambda: c.rcpt(rcpt), lambda: c.data(big))
                    for step in steps:
                        code, text = step()
                        if code >= 300:
                            codes.append((code, None, rcpt))
                            return
                    m = re.search(rb"queued as ([0-9A-F]{16})", text)
                    codes.append((code, m.group(1).decode() if m else None, rcpt))
            except smtplib.SMTPResponseException as e:
                codes.append((e.smtp_code, None, rcpt))
            except (OSError, smtplib.SMTPException):
                codes.append((0, None, rcpt))
        threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        return codes

    @staticmethod
    def _vmsize(pid):
        with open("/proc/%d/status" % pid) as f:
            return int(re.search(r"VmSize:\s+(\d+)", f.read()).group(1)) * 1024

    def test_memory_limit(self):
        """Started under ulimit -v (prlimit --as), 256 MB above what it
        needs idle: the memory budgets shrink to fit, 30 concurrent 15 MB
        messages get 250 or 452 (never a dropped connection), the daemon
        lives, and every accepted message is delivered."""
        sluiced = self._release_sluiced()
        sink = st.Sink("--no-starttls")
        try:
            routes = {"example.test": "127.0.0.1:%d" % sink.port}
            extra = "    max_message_size = 20M;\n"
            with st.Daemon(smtp_extra=extra, routes=routes, sluiced=sluiced) as probe:
                idle = self._vmsize(probe.proc.pid)  # started: every thread is there
            limit = idle + (256 << 20)
            with st.Daemon(smtp_extra=extra, routes=routes, sluiced=sluiced,
                           wrapper=["prlimit", "--as=%d" % limit, "--"]) as d:
                st.wait_for(lambda: "smtp.max_memory capped at" in d.stderr(), 10,
                            what="the log line saying smtp.max_memory was capped")
                mem_limit = d.status()["smtp"]["memory_limit_bytes"]
                self.assertLessEqual(mem_limit, 80 << 20)
                answers = self._big_load(d)
                codes = [c for c, _, _ in answers]
                self.assertTrue(d.running(), "died under ulimit -v:\n" + d.stderr()[-3000:])
                self.assertTrue(all(c == 250 or 400 <= c < 500 for c in codes), codes)
                self.assertIn(250, codes)
                self.assertEqual(len(codes), 30)
                accepted = codes.count(250)
                msgs = sink.wait_messages(accepted, timeout=120)
                # every accepted message was delivered, each once
                got = sorted(m[0]["rcpts"][0] for m in msgs)
                self.assertEqual(got, sorted(r for c, _, r in answers if c == 250))
                self.assertTrue(self._accepts(d))
                print("ulimit -v %d MB (idle VmSize %d MB): smtp.max_memory %d MB; answers %s; "
                      "%d delivered" % (limit >> 20, idle >> 20, mem_limit >> 20,
                                        {c: codes.count(c) for c in set(codes)},
                                        len(sink.messages())), file=sys.stderr)
        finally:
            sink.stop()

    def test_memory_limit_lowered_while_running(self):
        """prlimit --as lowered under a running daemon (its budgets were set
        without a limit): the spool map cannot grow and bodies cannot be
        allocated; the answers are 4xx, the daemon lives, and every 250 is
        in the spool."""
        sluiced = self._release_sluiced()
        with st.Daemon(smtp_extra="    max_message_size = 20M;\n", sluiced=sluiced) as d:
            limit = self._vmsize(d.proc.pid) + (256 << 20)  # started: every thread is there
            st.run(["prlimit", "--pid", str(d.proc.pid), "--as=%d:%d" % (limit, limit)]).check()
            answers = self._big_load(d)
            codes = [c for c, _, _ in answers]
            self.assertEqual(len(codes), 30)
            self.assertTrue(d.running(), "crashed under the memory limit:\n" + d.stderr()[-3000:])
            self.assertTrue(all(c == 250 or 400 <= c < 500 for c in codes), codes)
            self.assertTrue(self._accepts(d))
            # every 250 is in the spool, by its queue id
            queued = {m["id"] for m in d.list()["messages"]}
            acked = [qid for c, qid, _ in answers if c == 250]
            self.assertTrue(all(acked), answers)
            self.assertEqual([q for q in acked if q not in queued], [])
            print("memory limit lowered at run time: %s" % {c: codes.count(c) for c in set(codes)},
                  file=sys.stderr)

if __name__ == "__main__":
    st.main()
