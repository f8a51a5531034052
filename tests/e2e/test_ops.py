#!/usr/bin/python3
"""End-to-end tests of the operator commands (docs/operations.md) against a
real sluiced, sluice-sink and sluice-source on loopback:
- queues / queue DOMAIN list destinations with their counts;
- suspend stops delivery for one domain only (another keeps flowing to the
  sink), resume restarts it; holds survive a restart; --for expires;
  suspend --all holds everything;
- retry delivers at once what a long retry schedule would keep for an hour;
- bounce --job removes exactly that job (admin_bounce records, DSNs), and
  an unfiltered bounce is refused without --yes;
- inspect shows the envelope, the recipients, attempts and last responses;
- reload applies a changed smtp.max_recipients without a restart, refuses a
  broken file with file:line and keeps the old configuration; SIGHUP too;
- log-rotate starts a new accounting file;
- metrics parse as Prometheus text and move; the HTTP /metrics listener.

Env: SLUICE_BUILD (binaries), SLUICE_SRC.
"""
import glob
import http.client
import json
import os
import re
import shutil
import signal
import smtplib
import subprocess
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sluicetest as st  # noqa: E402

# A sample line of the Prometheus text format: name{labels} value
PROM_SAMPLE = re.compile(r'^[a-zA-Z_:][a-zA-Z0-9_:]*(\{[a-zA-Z_][a-zA-Z0-9_]*="[^"\\]*"'
                         r'(,[a-zA-Z_][a-zA-Z0-9_]*="[^"\\]*")*\})? [-+]?[0-9.eE+-]+$')
PROM_META = re.compile(r'^# (HELP [a-zA-Z_:][a-zA-Z0-9_:]* .*|'
                       r'TYPE [a-zA-Z_:][a-zA-Z0-9_:]* (counter|gauge|histogram|summary|untyped))$')


def parse_prom(text):
    """{ 'name{labels}': float } of a Prometheus exposition; raises on a
    line that is not valid."""
    out = {}
    for line in text.splitlines():
        if not line:
            continue
        if line.startswith("#"):
            if not PROM_META.match(line):
                raise AssertionError("bad metadata line: %r" % line)
            continue
        if not PROM_SAMPLE.match(line):
            raise AssertionError("bad sample line: %r" % line)
        key, val = line.rsplit(" ", 1)
        out[key] = float(val)
    return out


def read(path):
    with open(path, errors="replace") as f:
        return f.read()


def send(d, rcpts, sender="sender@example.com", job=None):
    hdr = "X-Sluice-Job: %s\r\n" % job if job else ""
    msg = ("From: <%s>\r\nTo: <%s>\r\nSubject: ops\r\n%s\r\nbody\r\n" % (sender, rcpts[0], hdr))
    with d.smtp() as c:
        c.sendmail(sender, rcpts, msg.encode())


def acct(d, type_=None):
    return [r for r in d.accounting() if type_ is None or r.get("type") == type_]


class OpsTest(unittest.TestCase):
    # Every daemon is stopped with SIGTERM at the end of its test and must
    # exit 0 without a sanitizer report (Daemon.close), every sink too: the
    # reload, bounce, retry, metrics and log-rotate paths are checked at exit.

    def daemon(self, routes=None, queue="", control="", smtp_extra="", start=True):
        d = st.Daemon(routes=routes, smtp_extra=smtp_extra)
        text = d.default_conf("info", smtp_extra)
        if control:
            text = text.replace("control {\n", "control {\n" + control, 1)
        text += queue
        with open(d.conf_path, "w") as f:
            f.write(text)
        self.addCleanup(d.close)
        if start:
            d.start()
        return d

    def sink(self, port=0):
        s = st.Sink("--no-starttls", port=port, prefix="ops-sink-")
        self.addCleanup(s.stop)
        return s

    def ctl_json(self, d, *args):
        r = d.ctl(*args, json=True)
        self.assertEqual(r.rc, 0, r)
        self.assertTrue(r.data["ok"], r)
        return r.data

    # -- queues / queue / inspect

    def test_queues_and_inspect(self):
        d = self.daemon()  # example.test / example.com go to a closed port: deferred
        send(d, ["a1@example.test", "a2@example.test", "b1@example.com"])
        send(d, ["a3@Example.TEST"])
        st.wait_for(lambda: len(acct(d, "transient")) >= 4, 20, what="4 deferrals")
        q = self.ctl_json(d, "queues")
        doms = {x["domain"]: x for x in q["domains"]}
        self.assertEqual(doms["example.test"]["queued"], 3)
        self.assertEqual(doms["example.test"]["messages"], 2)
        self.assertEqual(doms["example.test"]["deferred"], 3)
        self.assertEqual(doms["example.com"]["queued"], 1)
        self.assertEqual(q["total_domains"], 2)
        self.assertEqual(q["total_recipients"], 4)
        self.assertEqual(q["domains"][0]["domain"], "example.test")  # most queued first
        self.assertTrue(doms["example.test"]["last_text"])  # e.g. "connect: refused"
        self.assertGreater(st.unix_time(doms["example.test"]["oldest"]), time.time() - 120)

        r = d.ctl("queues").check()
        self.assertRegex(r.out, r"(?m)^DOMAIN\s+QUEUED\s+MSGS\s+IN-FLIGHT\s+DEFERRED")
        self.assertRegex(r.out, r"(?m)^example\.test\s+3\s+2\s+0\s+3\s")
        self.assertIn("2 domains, 4 recipients queued", r.out)
        r = d.ctl("queues", "--limit", "1").check()
        self.assertNotRegex(r.out, r"(?m)^example\.com")
        self.assertIn("top 1 shown", r.out)

        one = self.ctl_json(d, "queue", "EXAMPLE.com")["domain"]
        self.assertEqual((one["domain"], one["queued"], one["deferred"]), ("example.com", 1, 1))
        r = d.ctl("queue", "example.test").check()
        self.assertRegex(r.out, r"(?m)^queued:\s+3 recipients in 2 messages$")
        self.assertRegex(r.out, r"(?m)^last response: \S")
        none = self.ctl_json(d, "queue", "nowhere.example")["domain"]
        self.assertEqual(none["queued"], 0)
        self.assertEqual(d.ctl("queue").rc, st.CTL_USAGE)

        # inspect: envelope, recipients, attempts and last response
        msgid = d.list()["messages"][0]["id"]
        r = d.ctl("inspect", msgid).check()
        self.assertRegex(r.out, r"(?m)^sender:\s+sender@example.com$")
        self.assertIn("recipients (3):", r.out)
        self.assertRegex(r.out, r"(?m)^  a1@example.test .*attempts=1")
        self.assertRegex(r.out, r"(?m)^      last response: \S")

    def test_queues_many_recipients_in_chunks(self):
        # More recipients than one chunk of the cursor walk (65536), held.
        d = self.daemon()
        self.ctl_json(d, "suspend", "--all")
        r = st.run([st.SOURCE, "-s", "127.0.0.1:%d" % d.smtp_port, "-n", "700", "-r", "100",
                    "-d", "7", "-c", "4", "-S", "300", "-f", "src@example.com"], timeout=120)
        self.assertEqual(r.rc, 0, r)
        t0 = time.monotonic()
        q = self.ctl_json(d, "queues")
        elapsed = time.monotonic() - t0
        self.assertEqual(q["total_recipients"], 70000)
        self.assertEqual(q["total_domains"], 7)
        for x in q["domains"]:
            self.assertEqual(x["queued"], 10000, x)
            self.assertEqual(x["in_flight"], 0, x)
            self.assertTrue(x["suspended"], x)
        self.assertLess(elapsed, 10, "queues took %.1fs for 70,000 recipients" % elapsed)
        # bounce one domain: 10,000 recipients over several batches
        dom = q["domains"][3]["domain"]
        b = self.ctl_json(d, "bounce", "--domain", dom)
        self.assertEqual(b["bounced"], 10000)
        q = self.ctl_json(d, "queues", "--limit", "100")
        doms = {x["domain"]: x["queued"] for x in q["domains"]}
        self.assertNotIn(dom, doms)
        self.assertEqual(sum(v for k, v in doms.items() if k != "example.com"), 60000)
        self.assertEqual(len(acct(d, "admin_bounce")), 10000)
        self.assertEqual(d.request({"cmd": "check"})["consistent"], True)

    # -- suspend / resume

    def test_suspend_one_domain_other_flows(self):
        sink = self.sink()
        routes = {"a.example": "127.0.0.1:%d" % sink.port, "b.example": "127.0.0.1:%d" % sink.port}
        d = self.daemon(routes=routes, queue='queue {\n    scan_interval = 100ms;\n}\n')
        r = d.ctl("suspend", "a.example").check()
        self.assertIn("domain a.example until resumed", r.out)
        send(d, ["x@a.example"])
        send(d, ["y@b.example"])
        # x is due before y: without the hold the scan that dispatched y
        # would have dispatched x as well
        st.wait_for(lambda: "y@b.example" in sink.rcpts(), 20, what="b.example delivered")
        one = self.ctl_json(d, "queue", "a.example")["domain"]
        self.assertEqual((one["queued"], one["in_flight"], one["suspended"]), (1, 0, True))
        st.wait_for(lambda: d.status()["queue"]["messages"] == 1, 10, what="y's outcome")
        self.assertNotIn("x@a.example", sink.rcpts())
        self.assertEqual([h["name"] for h in self.ctl_json(d, "suspended")["holds"]],
                         ["a.example"])
        # the hold survives a restart: z, sent after the restart, is
        # delivered, x still is not
        d.stop()
        d.start()
        send(d, ["z@b.example"])
        st.wait_for(lambda: "z@b.example" in sink.rcpts(), 20, what="b.example delivered")
        one = self.ctl_json(d, "queue", "a.example")["domain"]
        self.assertEqual((one["queued"], one["in_flight"], one["suspended"]), (1, 0, True))
        self.assertNotIn("x@a.example", sink.rcpts())
        self.assertEqual([h["name"] for h in self.ctl_json(d, "suspended")["holds"]],
                         ["a.example"])
        r = d.ctl("resume", "a.example").check()
        self.assertIn("1 hold removed", r.out)
        self.assertIn("no delivery is suspended", r.out)
        st.wait_for(lambda: "x@a.example" in sink.rcpts(), 20, what="a.example delivered")
        self.assertEqual(d.ctl("suspend").rc, st.CTL_USAGE)
        self.assertEqual(d.ctl("suspend", "a.example", "--job", "j").rc, st.CTL_USAGE)

    def test_suspend_all_job_and_expiry(self):
        sink = self.sink()
        routes = {"a.example": "127.0.0.1:%d" % sink.port}
        d = self.daemon(routes=routes, queue='queue {\n    scan_interval = 100ms;\n}\n')
        self.ctl_json(d, "suspend", "--all")
        send(d, ["x1@a.example"])
        # Nothing flows under --all, so nothing can show the order of events:
        # an absence window of ten scans (scan_interval 100ms), after which
        # the recipient must still be queued and not in flight.
        time.sleep(1.0)
        one = self.ctl_json(d, "queue", "a.example")["domain"]
        self.assertEqual((one["queued"], one["in_flight"], one["suspended"]), (1, 0, True))
        self.assertEqual(sink.rcpts(), [])
        t_resume = time.time()
        self.ctl_json(d, "resume", "--all")
        st.wait_for(lambda: "x1@a.example" in sink.rcpts(), 20, what="delivery after resume")
        self.assertGreater(sink.messages()[0][0]["time"], t_resume)
        # a job hold, with an end time
        self.ctl_json(d, "suspend", "--job", "j7", "--for", "3s")
        send(d, ["x2@a.example"], job="j7")
        send(d, ["x3@a.example"], job="other")
        st.wait_for(lambda: "x3@a.example" in sink.rcpts(), 20, what="the other job")
        self.assertNotIn("x2@a.example", sink.rcpts())
        st.wait_for(lambda: "x2@a.example" in sink.rcpts(), 20, what="the hold expiring")
        self.assertEqual(self.ctl_json(d, "suspended")["holds"], [])

    # -- retry

    def test_retry_delivers_now(self):
        port = st.free_port()
        d = self.daemon(routes={"a.example": "127.0.0.1:%d" % port},
                        queue='queue {\n    retry = "1h";\n    scan_interval = 100ms;\n}\n')
        send(d, ["x@a.example"])
        st.wait_for(lambda: acct(d, "transient"), 20, what="the first attempt to fail")
        sink = self.sink(port)  # the destination is back
        # the schedule says: in an hour (checked where it is kept, not by
        # waiting to see nothing happen)
        msg = d.list()["messages"][0]["id"]
        rcpt = d.request({"cmd": "inspect", "id": msg})["message"]["recipients"][0]
        self.assertEqual(rcpt["attempts"], 1)
        self.assertGreater(st.unix_time(rcpt["next_attempt"]) - time.time(), 3000)
        self.assertEqual(sink.rcpts(), [])
        self.assertEqual(self.ctl_json(d, "retry", "other.example")["rescheduled"], 0)
        r = d.ctl("retry", "a.example").check()
        self.assertIn("1 deferred recipient due now", r.out)
        st.wait_for(lambda: "x@a.example" in sink.rcpts(), 20, what="delivery after retry")
        self.assertEqual(d.ctl("retry").rc, st.CTL_USAGE)
        self.assertEqual(self.ctl_json(d, "retry", "--all")["rescheduled"], 0)

    # -- bounce

    def test_bounce_by_job(self):
        d = self.daemon()
        send(d, ["j1a@example.test"], job="j1")
        send(d, ["j1b@example.test", "j1c@example.test"], job="j1")
        send(d, ["j2a@example.test"], job="j2")
        st.wait_for(lambda: len(acct(d, "transient")) >= 4, 20, what="4 deferrals")
        # no filter: refused without --yes, nothing removed
        r = d.ctl("bounce")
        self.assertEqual(r.rc, st.CTL_REFUSED, r)
        self.assertIn("--yes", r.err)
        self.assertEqual(d.status()["queue"]["recipients"], 4)
        r = d.ctl("bounce", "--job", "j1").check()
        self.assertIn("3 recipients bounced", r.out)
        ab = acct(d, "admin_bounce")
        self.assertEqual(sorted(x["recipient"] for x in ab),
                         ["j1a@example.test", "j1b@example.test", "j1c@example.test"])
        self.assertTrue(all(x["job"] == "j1" for x in ab))
        msgs = d.list()["messages"]
        self.assertEqual([m["job"] for m in msgs if m["job"]], ["j2"])
        # the DSNs of the normal bounce path: one per message, from <>
        dsns = [m for m in msgs if m["sender"] == ""]
        self.assertEqual(len(dsns), 2)
        self.assertEqual(d.request({"cmd": "check"})["consistent"], True)
        # --older-than keeps what is younger
        self.assertEqual(self.ctl_json(d, "bounce", "--older-than", "1h")["bounced"], 0)
        # everything, confirmed
        b = self.ctl_json(d, "bounce", "--yes")
        self.assertEqual(b["bounced"], 3)  # j2a + the two DSNs (no DSN for a DSN)
        msgs = d.list()["messages"]  # only j2a's DSN, newer than the request
        self.assertEqual([(m["sender"], m["job"]) for m in msgs], [("", None)])

    # -- reload

    def test_reload(self):
        d = self.daemon(smtp_extra="    max_recipients = 2;\n")
        text = read(d.conf_path)

        def rcpt_ok(n):
            with d.smtp() as c:
                c.ehlo("t.example")
                c.mail("s@example.com")
                codes = [c.rcpt("r%d@example.test" % i)[0] for i in range(n)]
                c.rset()
            return codes

        self.assertEqual(rcpt_ok(3)[2] // 100, 4)
        with open(d.conf_path, "w") as f:
            f.write(text.replace("max_recipients = 2;", "max_recipients = 5;")
                    .replace('listen = "127.0.0.1:%d"' % d.smtp_port,
                             'listen = "127.0.0.1:%d"' % st.free_port()))
        r = self.ctl_json(d, "reload")
        self.assertIn("smtp.max_recipients", r["applied"])
        self.assertIn("smtp.listen", r["needs_restart"])
        self.assertEqual(rcpt_ok(3), [250, 250, 250])  # without a restart, same port
        # a broken file: refused with file:line, the running config stays
        with open(d.conf_path, "w") as f:
            f.write(text.replace("max_recipients = 2;", "max_recipients = 1;\n    bogus = 1;"))
        r = d.ctl("reload")
        self.assertEqual(r.rc, st.CTL_REFUSED, r)
        self.assertRegex(r.err, re.escape(d.conf_path) + r":\d+: .*bogus")
        self.assertIn("unchanged", r.err)
        self.assertEqual(rcpt_ok(5), [250] * 5)
        self.assertEqual(rcpt_ok(6)[5] // 100, 4)
        # SIGHUP does the same
        with open(d.conf_path, "w") as f:
            f.write(text)  # max_recipients = 2
        n0 = d.stderr().count("config reloaded from")
        d.proc.send_signal(signal.SIGHUP)
        st.wait_for(lambda: d.stderr().count("config reloaded from") > n0, 10,
                    what="the SIGHUP reload log line")
        self.assertEqual(rcpt_ok(3)[2] // 100, 4)

    def test_reload_applies_the_queue_settings(self):
        """queue.* is read by the queue thread at run time: a reload changes
        the retry schedule of the next deferral; spool.path needs a restart
        and the running spool stays in use."""
        d = self.daemon(queue='queue {\n    retry = "1h";\n    retry_jitter = 0;\n'
                              '    scan_interval = 100ms;\n}\n')
        text = read(d.conf_path)

        def next_in(qid):
            def rcpt():
                return d.request({"cmd": "inspect", "id": qid})["message"]["recipients"][0]
            st.wait_for(lambda: rcpt()["attempts"] >= 1, 20, what="a first delivery attempt")
            r = rcpt()
            return st.unix_time(r["next_attempt"]) - time.time()

        send(d, ["before@example.test"])
        first = d.list()["messages"][0]["id"]
        self.assertGreater(next_in(first), 3000)  # retry = 1h
        with open(d.conf_path, "w") as f:
            f.write(text.replace('retry = "1h";', 'retry = "30s";')
                    .replace("path = \"%s\"" % d.spool, "path = \"%s-new\"" % d.spool))
        r = self.ctl_json(d, "reload")
        self.assertIn("queue.retry", r["applied"])
        self.assertIn("spool.path", r["needs_restart"])
        st.wait_for(lambda: "queue: configuration reloaded" in d.stderr(), 10,
                    what="the queue's reload log line")
        send(d, ["after@example.test"])
        second = [m["id"] for m in d.list()["messages"] if m["id"] != first][0]
        self.assertLess(next_in(second), 40)  # the new schedule
        self.assertGreater(next_in(first), 3000)  # already scheduled: unchanged
        self.assertFalse(os.path.exists(d.spool + "-new"))
        self.assertEqual(len(d.list()["messages"]), 2)

    def test_reload_reroutes_delivery(self):
        """delivery.* is read by the delivery threads at run time: a reload
        that moves a domain to another host sends the next message there,
        even with a pooled connection to the old host still open; threads
        and resolvers need a restart."""
        a, b = self.sink(), self.sink()
        d = self.daemon(routes={"example.test": "127.0.0.1:%d" % a.port}, start=False)
        text = read(d.conf_path).replace("delivery {\n", "delivery {\n    idle_time = 60s;\n", 1)
        with open(d.conf_path, "w") as f:
            f.write(text)
        d.start()
        send(d, ["first@example.test"])
        a.wait_messages(1)
        self.assertEqual(d.status()["delivery"]["connections_current"], 1)  # pooled, idle
        with open(d.conf_path, "w") as f:
            f.write(text.replace("127.0.0.1:%d" % a.port, "127.0.0.1:%d" % b.port)
                    .replace("idle_time = 60s;", "idle_time = 60s;\n    threads = 3;\n"
                             "    connect_timeout = 7s;"))
        r = self.ctl_json(d, "reload")
        self.assertIn("delivery.routes", r["applied"])
        self.assertIn("delivery.connect_timeout", r["applied"])
        self.assertIn("delivery.threads", r["needs_restart"])
        st.wait_for(lambda: "delivery: configuration reloaded" in d.stderr(), 10,
                    what="the delivery threads' reload log line")
        send(d, ["second@example.test"])
        self.assertEqual(b.wait_messages(1)[0][0]["rcpts"], ["second@example.test"])
        d.wait_queue(0)  # every outcome known: nothing more will be sent
        self.assertEqual(len(a.messages()), 1)  # not through the old pooled connection
        self.assertEqual(len(b.messages()), 1)

    # -- log-rotate

    def test_log_rotate(self):
        d = self.daemon()
        send(d, ["a@example.test"])
        st.wait_for(lambda: acct(d, "received"), 10, what="received record")
        d.ctl("log-rotate").check()
        st.wait_for(lambda: glob.glob(os.path.join(d.acct_dir, "acct-*.jsonl")), 10,
                    what="a rotated accounting file")
        send(d, ["b@example.test"])
        cur = os.path.join(d.acct_dir, "acct.jsonl")
        st.wait_for(lambda: os.path.exists(cur) and "b@example.test" in read(cur), 10,
                    what="the new file to get records")
        old = glob.glob(os.path.join(d.acct_dir, "acct-*.jsonl"))[0]
        self.assertIn("a@example.test", read(old))
        self.assertNotIn("b@example.test", read(old))

    # -- metrics

    def test_metrics(self):
        sink = self.sink()
        d = self.daemon(routes={"a.example": "127.0.0.1:%d" % sink.port},
                        queue='queue {\n    scan_interval = 100ms;\n}\n')
        m0 = parse_prom(d.ctl("metrics").check().out)
        for k in ('sluice_queue_messages', 'sluice_smtp_messages_total{result="accepted"}',
                  'sluice_queue_outcomes_total{type="delivery"}',
                  'sluice_delivered_time_in_queue_seconds_bucket{le="+Inf"}',
                  'sluice_delivered_time_in_queue_seconds_count', 'sluice_smtp_connections_open',
                  'sluice_delivery_recipients_total{outcome="delivered"}'):
            self.assertIn(k, m0)
        send(d, ["x@a.example"])
        send(d, ["y@a.example"])
        st.wait_for(lambda: len(sink.rcpts()) == 2, 20, what="2 deliveries")
        st.wait_for(lambda: d.status()["queue"]["messages"] == 0, 10, what="empty queue")
        m1 = parse_prom(d.ctl("metrics").check().out)
        acc = 'sluice_smtp_messages_total{result="accepted"}'
        self.assertEqual(m1[acc] - m0[acc], 2)
        dl = 'sluice_queue_outcomes_total{type="delivery"}'
        self.assertEqual(m1[dl] - m0[dl], 2)
        self.assertEqual(m1['sluice_delivered_time_in_queue_seconds_count'], 2)
        self.assertEqual(m1['sluice_delivered_time_in_queue_seconds_bucket{le="+Inf"}'], 2)
        self.assertEqual(m1['sluice_delivered_time_in_queue_seconds_bucket{le="10.0"}'], 2)
        dr = 'sluice_delivery_recipients_total{outcome="delivered"}'
        self.assertEqual(m1[dr] - m0[dr], 2)
        js = self.ctl_json(d, "metrics")
        self.assertIn("# TYPE sluice_queue_messages gauge", js["metrics"])

    def test_http_metrics(self):
        port = st.free_port()
        d = self.daemon(control='    http_metrics = "127.0.0.1:%d";\n' % port)
        st.wait_for_port("127.0.0.1", port, 10)

        def get(method, path):
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            c.request(method, path)
            r = c.getresponse()
            body = r.read().decode()
            c.close()
            return r, body

        r, body = get("GET", "/metrics")
        self.assertEqual(r.status, 200)
        self.assertTrue(r.getheader("Content-Type").startswith("text/plain; version=0.0.4"))
        self.assertEqual(r.getheader("Connection"), "close")
        m0 = parse_prom(body)
        send(d, ["a@example.test"])
        m1 = parse_prom(get("GET", "/metrics?x=1")[1])
        self.assertEqual(m1["sluice_queue_received_messages_total"]
                         - m0["sluice_queue_received_messages_total"], 1)
        self.assertEqual(get("GET", "/")[0].status, 404)
        self.assertEqual(get("POST", "/metrics")[0].status, 405)
        # a port taken: start-up fails with a clear message
        d.stop()
        with st.socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            s.listen(1)
            busy = s.getsockname()[1]
            d2 = self.daemon(control='    http_metrics = "127.0.0.1:%d";\n' % busy, start=False)
            p = subprocess.run([st.SLUICED, "-c", d2.conf_path], capture_output=True, text=True,
                               timeout=30, cwd=d2.dir)
            self.assertEqual(p.returncode, 1, p)
            self.assertIn("http_metrics 127.0.0.1:%d" % busy, p.stderr)


if __name__ == "__main__":
    st.main()
