#!/usr/bin/python3
"""Smoke test of sluice-source against a real sluiced on loopback.

1. 300 messages, 5 connections, 2 recipients each over 3 domains, with
   --ids: exit 0, 300 distinct queue ids, and the daemon's queue holds
   exactly those messages, each with 2 recipients user<N>@d<K>.example,
   100 messages per domain, 600 distinct recipients.
2. 50 more messages over STARTTLS (-T): exit 0, 50 new ids, all queued.
3. Failure paths: a usage error exits 2; a port where nothing listens
   gives exit 1, 0 accepted, within a bounded time.

The recipient domains are routed to a closed loopback port (sluicetest's
Daemon), so that delivery defers and every message stays queued.
"""
import json
import os
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sluicetest as st  # noqa: E402

DOMAINS = ["d0.example", "d1.example", "d2.example"]


def source(args, timeout=120):
    return st.run([st.SOURCE] + [str(a) for a in args], timeout=timeout)


def read_ids(path):
    with open(path) as f:
        return [l.strip() for l in f if l.strip()]


class SourceSmoke(unittest.TestCase):
    def daemon(self):
        d = st.Daemon()
        d.routes = {dom: "127.0.0.1:%d" % d.closed_port for dom in DOMAINS}
        with open(d.conf_path, "w") as f:
            f.write(d.default_conf())
        return d

    def queued(self, d):
        lst = d.list(limit=10000)
        self.assertTrue(lst.get("ok"), lst)
        return {m["id"]: m for m in lst["messages"]}, lst

    def test_plain_then_starttls(self):
        with self.daemon() as d:
            ids_file = os.path.join(d.dir, "ids")
            addr = "127.0.0.1:%d" % d.smtp_port
            r = source(["-s", addr, "-n", 300, "-c", 5, "-r", 2, "-d", 3, "--ids", ids_file,
                        "--json", "-t", 60])
            self.assertEqual(r.rc, 0, r)
            summary = json.loads(r.out)
            self.assertEqual(summary["accepted"], 300, summary)
            self.assertEqual(summary["sent"], 300, summary)
            self.assertEqual(
                summary["temp_failed"] + summary["perm_failed"] + summary["errors"], 0, summary)
            self.assertGreater(summary["lat_max_ms"], 0.0)
            self.assertGreaterEqual(summary["lat_max_ms"], summary["lat_p50_ms"])
            self.assertGreater(summary["bytes"], 300 * 4500)

            ids = read_ids(ids_file)
            self.assertEqual(len(ids), 300)
            self.assertEqual(len(set(ids)), 300, "queue ids are not distinct")

            msgs, lst = self.queued(d)
            self.assertEqual(set(msgs), set(ids))
            self.assertEqual(lst["total"], 300)
            self.assertEqual(d.status()["queue"]["messages"], 300)

            # The source's envelope: 2 recipients per message, one domain per
            # message, the 3 domains in equal shares, every recipient distinct.
            per_domain = {}
            rcpts = set()
            for m in msgs.values():
                addrs = [x["addr"] for x in m["recipients"]]
                self.assertEqual(len(addrs), 2, m)
                doms = {a.split("@")[1] for a in addrs}
                self.assertEqual(len(doms), 1, m)
                for a in addrs:
                    self.assertRegex(a, r"^user\d+@d[0-2]\.example$")
                    rcpts.add(a)
                dom = doms.pop()
                per_domain[dom] = per_domain.get(dom, 0) + 1
                self.assertEqual(m["sender"], "bench@source.example")
                self.assertGreater(m["size"], 4500, m)
                self.assertLess(m["size"], 6000, m)
            self.assertEqual(per_domain, {dom: 100 for dom in DOMAINS})
            self.assertEqual(len(rcpts), 600)

            # STARTTLS: 50 more, appended to the same ids file.
            tls0 = d.status()["smtp"]["tls_sessions"]
            r = source(["-s", addr, "-n", 50, "-c", 2, "-T", "--ids", ids_file, "--json",
                        "-t", 60])
            self.assertEqual(r.rc, 0, r)
            self.assertEqual(json.loads(r.out)["accepted"], 50)
            ids2 = read_ids(ids_file)
            self.assertEqual(len(ids2), 350)
            self.assertEqual(len(set(ids2)), 350)
            msgs, _ = self.queued(d)
            self.assertEqual(set(msgs), set(ids2))
            status = d.status()
            self.assertEqual(status["queue"]["messages"], 350)
            # -T: each of the 2 connections did STARTTLS (the first run, none)
            self.assertEqual(tls0, 0)
            self.assertEqual(status["smtp"]["tls_sessions"], 2)

    def test_failures_are_reported(self):
        # A usage error is exit 2.
        self.assertEqual(source(["-c", "0"]).rc, 2)
        self.assertEqual(source(["-n", "x"]).rc, 2)
        # Nothing listening: exit 1, nothing accepted, bounded in time.
        t0 = time.time()
        r = source(["-s", "127.0.0.1:%d" % st.free_port(), "-n", 10, "-c", 2, "--json"])
        self.assertEqual(r.rc, 1, r)
        self.assertEqual(json.loads(r.out)["accepted"], 0)
        self.assertLess(time.time() - t0, 30)


if __name__ == "__main__":
    st.main()
