#!/usr/bin/python3
"""sluiced under a service manager: the sd_notify protocol of systemd's
Type=notify (core/server/notify.c, docs/operations.md "Deploying").

A datagram socket stands in for systemd's ($NOTIFY_SOCKET):
- READY=1 comes once the spool is open and the SMTP listener and control
  socket accept connections (not before: a unit ordered after sluiced
  may inject at once);
- a reload, by `sluicectl reload` (the unit's ExecReload) or SIGHUP, is
  RELOADING=1 with MONOTONIC_USEC (CLOCK_MONOTONIC, which systemd 253
  requires) then READY=1, also when the new file is refused;
- shutdown begins with STOPPING=1.

Env: SLUICE_BUILD (binaries), SLUICE_SRC.
"""
import os
import signal
import socket
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sluicetest as st  # noqa: E402


def mono_us():
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


class Notify(unittest.TestCase):
    def setUp(self):
        self.d = st.Daemon()
        self.ns = st.NotifySocket(self.d.dir)
        self.d.env = self.ns.env()

    def tearDown(self):
        self.ns.close()
        self.d.cleanup()

    def test_ready_once_it_accepts_mail(self):
        d = self.d
        d.start(wait=False)
        m = self.ns.wait("READY", "1", timeout=120)
        # at READY=1, without waiting: both accept, and SMTP answers 220
        self.assertTrue(st.unix_connectable(d.ctl_socket), "control socket not up at READY=1")
        with socket.create_connection((d.smtp_host, d.smtp_port), timeout=30) as c:
            self.assertTrue(c.recv(512).startswith(b"220 "))
        self.assertIn("running", m.get("STATUS", ""))
        # nothing claimed readiness before that
        first = self.ns.messages.index(m)
        self.assertEqual([x for x in self.ns.messages[:first] if "READY" in x], [])
        d.swaks().check()
        d.stop()

    def check_reload(self, do_reload, refused=False):
        t0 = mono_us()
        do_reload()
        m = self.ns.wait("RELOADING", "1", timeout=60)
        r = self.ns.wait("READY", "1", timeout=60)
        t1 = mono_us()
        self.assertIn("MONOTONIC_USEC", m)
        self.assertTrue(t0 <= int(m["MONOTONIC_USEC"]) <= t1,
                        "MONOTONIC_USEC %s is not CLOCK_MONOTONIC between %d and %d"
                        % (m["MONOTONIC_USEC"], t0, t1))
        self.assertEqual("refused" in r.get("STATUS", ""), refused, r)

    def test_reload_and_stop(self):
        d = self.d
        d.start(wait=False)
        self.ns.wait("READY", "1", timeout=120)
        # the unit's ExecReload: synchronous, the answer comes after READY=1
        self.check_reload(lambda: d.ctl("reload").check())
        # SIGHUP, as `kill -HUP $MAINPID` would
        self.check_reload(lambda: d.proc.send_signal(signal.SIGHUP))
        # a refused file: still RELOADING=1 ... READY=1, and exit 1
        with open(d.conf_path, "a") as f:
            f.write("\nno_such_key = 1;\n")
        self.check_reload(lambda: self.assertEqual(d.ctl("reload").rc, st.CTL_REFUSED),
                          refused=True)
        d.proc.send_signal(signal.SIGTERM)
        self.ns.wait("STOPPING", "1", timeout=60)
        self.assertEqual(d.wait(60), 0)
        d.check_clean_exit()


if __name__ == "__main__":
    unittest.main()
