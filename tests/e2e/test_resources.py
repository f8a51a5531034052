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
* Memory: the daemon runs under a virtual memory limit (prlimit --as) and
  gets big messages on many connections: it may refuse some (4xx) but must
  not crash. ASan reserves terabytes of address space, so this case is
  skipped in sanitizer builds (the reason is printed); tests/soak/run runs
  it against the release build. It is marked as an expected failure (a
  known gap, see test_memory_limit).
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
    @unittest.skipUnless(os.geteuid() == 0, "mounting a tmpfs needs root")
    def test_disk_full(self):
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
            r = st.run([st.SLUICED, "-c", d.conf_path, "--check-spool"], timeout=120)
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
        with st.Daemon() as d:
            time.sleep(0.5)
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

    # Known gap: reception now refuses a body it cannot allocate (452 4.3.1)
    # instead of aborting, but the next xmalloc elsewhere (headers, delivery,
    # TLS) still aborts once the address space is used up, because nothing
    # bounds the bytes buffered by all sessions together. Remove this
    # decorator once reception has such a budget (docs/reliability.md).
    @unittest.expectedFailure
    def test_memory_limit(self):
        san = sanitizer_build()
        if san:
            self.skipTest("ulimit -v is impossible under -fsanitize=%s (the sanitizer reserves "
                          "terabytes of address space); tests/soak/run covers it on the "
                          "release build" % san)
        with st.Daemon(smtp_extra="    max_message_size = 20M;\n") as d:
            time.sleep(0.5)
            with open("/proc/%d/status" % d.proc.pid) as f:
                vm = int(re.search(r"VmSize:\s+(\d+)", f.read()).group(1))
            limit = (vm + 256 * 1024) * 1024  # 256 MB over what it uses now
            st.run(["prlimit", "--pid", str(d.proc.pid), "--as=%d:%d" % (limit, limit)]).check()
            codes = []
            big = b"Subject: big\r\n\r\n" + (b"z" * 998 + b"\r\n") * 15000  # 15 MB

            def one(i):
                try:
                    with d.smtp(timeout=60) as c:
                        c.sendmail("s@sender.example", ["m%d@example.test" % i], big)
                    codes.append(250)
                except smtplib.SMTPResponseException as e:
                    codes.append(e.smtp_code)
                except (OSError, smtplib.SMTPException):
                    codes.append(0)
            threads = [threading.Thread(target=one, args=(i,)) for i in range(30)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(120)
            self.assertTrue(d.running(), "crashed under the memory limit:\n" + d.stderr()[-3000:])
            self.assertTrue(all(c == 250 or 400 <= c < 500 or c == 0 for c in codes), codes)
            self.assertTrue(self._accepts(d))
            print("memory limit: %s" % {c: codes.count(c) for c in set(codes)}, file=sys.stderr)


if __name__ == "__main__":
    unittest.main(verbosity=2)
