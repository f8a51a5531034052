#!/usr/bin/python3
"""Traffic-shaping limits README and docs/shaping.md promise that no other
test checked, end to end (sluiced -> sluice-sink):

- max_messages_per_connection, from delivery { } and from a provider:
  with one connection at a time, each carries exactly that many;
- connection_rate: connections are opened no faster than the rate;
- the provider-wide total_max_connections, total_message_rate and
  total_connection_rate across the virtual MTAs of a pool (each one's own
  limit would allow more);
- the pool a message leaves from: X-Sluice-Pool (removed before delivery),
  the SMTP AUTH user's pool (pool_users), the header winning over the
  user, an unknown pool name falling back to the default with a warning.

Rates are checked with what a token bucket guarantees whatever the load
(the k-th event not before start + (k - 2) / rate): a slow machine can make
them later, never earlier. What the sink saw (client address, EHLO name,
connection numbers, connect times in its --log, concurrency in its
summary) and the accounting log are the evidence.
"""
import json
import os
import shutil
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sluicetest as st  # noqa: E402
from test_delivery import FAST_QUEUE  # noqa: E402
from test_shaping import check_not_faster, inject  # noqa: E402

VMTAS = ('virtual_mtas {\n'
         '  a { source = "127.0.0.2"; ehlo = "a.sluice.test"; }\n'
         '  b { source = "127.0.0.3"; ehlo = "b.sluice.test"; }\n'
         '  c { source = "127.0.0.4"; ehlo = "c.sluice.test"; }\n'
         '}\n')
PASSWORD = "pool secret"


class ShapingLimits(unittest.TestCase):

    def setUp(self):
        self.tmp = st.make_tmpdir("shaping-limits-")
        if not st.keep_tmp():
            self.addCleanup(shutil.rmtree, self.tmp, True)

    def sink(self, *args):
        """A sink with an event log (sink.log): connect times."""
        log = os.path.join(self.tmp, "sink-events.jsonl")
        s = st.Sink("--no-starttls", "--log", log, *args, prefix="limits-sink-")
        s.log = log
        self.addCleanup(s.stop)
        return s

    def daemon(self, routes, shaping, delivery="", smtp_extra=""):
        path = os.path.join(self.tmp, "shaping.conf")
        with open(path, "w") as f:
            f.write(shaping)
        d = st.Daemon(routes=routes, smtp_extra=smtp_extra)
        text = d.default_conf("info", smtp_extra)
        text = text.replace("delivery {\n", 'delivery {\n    shaping = "%s";\n%s'
                            % (path, delivery), 1) + FAST_QUEUE
        with open(d.conf_path, "w") as f:
            f.write(text)
        os.chmod(d.conf_path, 0o600)  # may hold a password hash
        self.addCleanup(d.close)
        d.start()
        return d

    @staticmethod
    def connects(sink, n):
        """The times of the sink's first n connect events (its --log is
        flushed every second)."""
        def read():
            with open(sink.log) as f:
                ev = [json.loads(l) for l in f if l.endswith("\n")]
            t = sorted(e["time"] for e in ev if e["event"] == "connect")
            return len(t) >= n and t
        return st.wait_for(read, 15, what="%d connect events in the sink's log" % n)

    # -- messages per connection

    def test_max_messages_per_connection(self):
        """One connection at a time, so that each one carries as many
        messages as it may: 10 messages are 3+3+3+1 under delivery's
        max_messages_per_connection = 3, and 2+2+2+2+2 under a provider's
        max_messages_per_connection = 2."""
        sink = self.sink()
        route = "127.0.0.1:%d" % sink.port
        d = self.daemon({"plain.test": route, "capped.test": route},
                        'providers { capped { domains = ["capped.test"];\n'
                        '  max_messages_per_connection = 2; } }\n',
                        delivery="    max_messages_per_connection = 3;\n"
                                 "    max_connections_per_destination = 1;\n")
        inject(d, 10, "plain.test", local="p")
        inject(d, 10, "capped.test", local="c")
        msgs = sink.wait_messages(20, timeout=60)
        d.wait_queue(0)
        for dom, want in (("plain.test", [3, 3, 3, 1]), ("capped.test", [2, 2, 2, 2, 2])):
            per_conn = {}
            for env, _ in msgs:
                if env["rcpts"][0].endswith("@" + dom):
                    per_conn[env["conn"]] = per_conn.get(env["conn"], 0) + 1
            self.assertEqual(sorted(per_conn.values(), reverse=True), want, (dom, per_conn))

    # -- connection rate

    def test_connection_rate(self):
        """connection_rate = 2/s, one message per connection: the sink sees
        the connections no faster than 2/s (10 of them take at least 3.5 s;
        unthrottled they come within a second)."""
        sink = self.sink()
        d = self.daemon({"cr.test": "127.0.0.1:%d" % sink.port},
                        'providers { cr { domains = ["cr.test"]; connection_rate = "2/s";\n'
                        '  max_messages_per_connection = 1; } }\n')
        t0 = time.time()
        inject(d, 10, "cr.test")
        sink.wait_messages(10, timeout=60)
        times = self.connects(sink, 10)
        self.assertEqual(len(times), 10)
        check_not_faster(self, times, 2, t0, "connection_rate 2/s")

    # -- provider totals across virtual MTAs

    def test_total_max_connections(self):
        """Two virtual MTAs, max_connections = 3 each, total 4: the sink
        (replies 300 ms slow) never sees more than 4 at once, sees 4, and
        sees both source addresses."""
        summary = os.path.join(self.tmp, "summary.json")
        sink = self.sink("--slow-ms", "300", "--summary", summary)
        d = self.daemon({"tot.test": "127.0.0.1:%d" % sink.port},
                        VMTAS + 'pools { ab { members = [a, b]; } }\ndefault_pool = ab;\n'
                        'providers { tot { domains = ["tot.test"]; max_connections = 3;\n'
                        '  total_max_connections = 4; } }\n')
        inject(d, 30, "tot.test", local="slow+")  # slow+N: the sink's slow fault
        msgs = sink.wait_messages(30, timeout=90)
        d.wait_queue(0)
        self.assertEqual({m[0]["client_ip"] for m in msgs}, {"127.0.0.2", "127.0.0.3"})
        d.stop()
        sink.stop()
        with open(summary) as f:
            s = json.load(f)
        self.assertEqual(s["messages"], 30)
        # the premise: slow replies (300 ms each), so 30 messages over 4
        # connections took at least 7 x 300 ms
        self.assertGreaterEqual(s["last_message_time"] - s["first_message_time"], 7 * 0.3, s)
        self.assertEqual(s["concurrent_max"], 4, s)

    def test_total_message_rate(self):
        """Two virtual MTAs at 20/s each, total_message_rate 5/s: the 16
        messages take at least 2.6 s, from both addresses (20/s each would
        need well under a second)."""
        sink = self.sink()
        d = self.daemon({"tmr.test": "127.0.0.1:%d" % sink.port},
                        VMTAS + 'pools { ab { members = [a, b]; } }\ndefault_pool = ab;\n'
                        'providers { tmr { domains = ["tmr.test"]; message_rate = "20/s";\n'
                        '  total_message_rate = "5/s"; } }\n')
        t0 = time.time()
        inject(d, 16, "tmr.test")
        msgs = sink.wait_messages(16, timeout=60)
        self.assertEqual({m[0]["client_ip"] for m in msgs}, {"127.0.0.2", "127.0.0.3"})
        check_not_faster(self, [m[0]["time"] for m in msgs], 5, t0, "total_message_rate 5/s")

    def test_total_connection_rate(self):
        """Two virtual MTAs, connection_rate 20/s each, total 2/s, one
        message per connection: 10 connections take at least 3.5 s."""
        sink = self.sink()
        d = self.daemon({"tcr.test": "127.0.0.1:%d" % sink.port},
                        VMTAS + 'pools { ab { members = [a, b]; } }\ndefault_pool = ab;\n'
                        'providers { tcr { domains = ["tcr.test"]; connection_rate = "20/s";\n'
                        '  total_connection_rate = "2/s"; max_messages_per_connection = 1; } }\n')
        t0 = time.time()
        inject(d, 10, "tcr.test")
        msgs = sink.wait_messages(10, timeout=60)
        self.assertEqual({m[0]["client_ip"] for m in msgs}, {"127.0.0.2", "127.0.0.3"})
        check_not_faster(self, self.connects(sink, 10), 2, t0, "total_connection_rate 2/s")

    # -- choosing the pool

    def test_pool_by_header_and_by_auth_user(self):
        hashed = st.run(["openssl", "passwd", "-6", PASSWORD]).check().out.strip()
        sink = self.sink()
        d = self.daemon({"pool.test": "127.0.0.1:%d" % sink.port},
                        VMTAS + 'pools {\n  pa { members = [a]; }\n  pb { members = [b]; }\n'
                        '  pc { members = [c]; }\n}\ndefault_pool = pa;\n'
                        'pool_users { alice = pb; }\n',
                        smtp_extra='    auth {\n        users {\n            alice = "%s";\n'
                                   '        }\n    }\n' % hashed)
        login = ("alice", PASSWORD)
        inject(d, 2, "pool.test", local="default")
        inject(d, 2, "pool.test", local="header", pool="pc")
        inject(d, 2, "pool.test", local="user", login=login)
        inject(d, 2, "pool.test", local="both", pool="pc", login=login)
        inject(d, 2, "pool.test", local="unknown", pool="nosuch")
        msgs = sink.wait_messages(10, timeout=60)
        d.wait_queue(0)
        want = {"default": ("127.0.0.2", "a.sluice.test"),   # default_pool
                "header": ("127.0.0.4", "c.sluice.test"),    # X-Sluice-Pool
                "user": ("127.0.0.3", "b.sluice.test"),      # pool_users
                "both": ("127.0.0.4", "c.sluice.test"),      # the header wins
                "unknown": ("127.0.0.2", "a.sluice.test")}   # unknown: the default
        for env, raw in msgs:
            kind = env["rcpts"][0].split("@")[0].rstrip("0123456789")
            self.assertEqual((env["client_ip"], env["helo"]), want[kind], env)
            self.assertNotIn(b"x-sluice-pool", raw.lower())  # removed before delivery
        self.assertEqual(sorted(m[0]["rcpts"][0] for m in msgs),
                         sorted("%s%d@pool.test" % (k, i) for k in want for i in range(2)))
        self.assertRegex(d.stderr(), r"(?i)warn.*pool.*nosuch")


if __name__ == "__main__":
    st.main()
