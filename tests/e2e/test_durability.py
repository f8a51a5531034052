"""Durability: inject under load, kill -9 the daemon in the middle, restart,
and check that every message the client saw acknowledged with 250 is in the
spool (ids from sluice-source --ids against `sluicectl list` after the
restart), and that the spool passes the integrity check."""
import os
import subprocess
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sluicetest as st  # noqa: E402


class Durability(unittest.TestCase):
    def test_kill9_loses_nothing_acknowledged(self):
        d = st.Daemon()
        ids_file = os.path.join(d.dir, "ids")
        try:
            d.start()
            src = subprocess.Popen([st.SOURCE, "-s", "127.0.0.1:%d" % d.smtp_port,
                                    "-n", "200000", "-S", "2048", "-c", "20", "-r", "2",
                                    "-d", "10", "-t", "60", "--ids", ids_file],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            # kill once a good number of messages were acknowledged
            st.wait_for(lambda: os.path.exists(ids_file) and os.path.getsize(ids_file) > 17 * 2000,
                        timeout=60, what="2000 acknowledged messages")
            d.kill9()
            src.wait(timeout=60)  # it stops when the daemon dies
            with open(ids_file) as f:
                acked = [l.strip() for l in f if l.strip()]
            self.assertGreater(len(acked), 2000)
            self.assertEqual(len(acked), len(set(acked)), "duplicate queue ids")

            r = st.run([st.SLUICED, "-c", d.conf_path, "--check-spool"], timeout=60)
            self.assertEqual(r.rc, 0, r.out + r.err)

            d.start()
            listing = d.request({"cmd": "list", "limit": 1000000}, timeout=60)
            self.assertTrue(listing["ok"], listing)
            queued = {m["id"] for m in listing["messages"]}
            missing = [i for i in acked if i not in queued]
            self.assertEqual(missing, [], "%d acknowledged messages lost" % len(missing))
            st_ = d.status()["queue"]
            self.assertEqual(st_["messages"], len(queued))
            self.assertEqual(st_["recipients"], 2 * len(queued))
            chk = d.request({"cmd": "check"}, timeout=60)
            self.assertTrue(chk.get("ok"), chk)
            d.stop()
        finally:
            d.cleanup()


if __name__ == "__main__":
    st.main()
