#!/usr/bin/python3
"""`sluicectl events replay NAME --since TIME [--until TIME]` (issue #14,
docs/events.md): the records of the accounting files (rotated and
current) in the time range are POSTed to the webhook again, signed, marked
X-Sluice-Replay: 1, in batches of their own; the live stream's cursor does
not move. Checked against the HTTPS receiver of tests/e2e/sluicetest.py
(it verifies every signature): the replayed records are the file's
records of the range, byte for byte as JSON, in file order.

Env: SLUICE_BUILD (binaries), SLUICE_SRC.
"""
import datetime
import os
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sluicetest as st  # noqa: E402
from test_records import load_schemas  # noqa: E402
from test_webhooks import SECRET  # noqa: E402

import jsonschema  # noqa: E402


def send(d, prefix, n):
    with d.smtp(timeout=60) as s:
        for i in range(n):
            s.sendmail("sender@example.com", ["%s%d@example.test" % (prefix, i)],
                       "From: sender@example.com\r\nSubject: replay %d\r\n\r\nbody\r\n" % i)


def now_rfc3339():
    t = datetime.datetime.now(datetime.timezone.utc)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + "%03dZ" % (t.microsecond // 1000)


class ReplayTest(unittest.TestCase):

    def setUp(self):
        self.recv = st.WebhookReceiver(SECRET)
        self.addCleanup(self.recv.stop)
        self.sink = st.Sink()
        self.addCleanup(self.sink.stop)

    def daemon(self, fmt=None):
        d = st.Daemon(routes={"example.test": "127.0.0.1:%d" % self.sink.port},
                      extra_conf=st.webhook_conf("crm", self.recv.url, SECRET, self.recv.cert,
                                                 types=("delivery",), batch=4))
        if fmt:
            with open(d.conf_path) as f:
                conf = f.read()
            with open(d.conf_path, "w") as f:
                f.write(conf.replace("log {\n", "log {\n    accounting_format = %s;\n" % fmt, 1))
        self.addCleanup(d.close)
        d.start()
        return d

    def answer(self, d, request):
        """A control answer, checked against docs/records.md's ctl/events."""
        ans = st.strict_json(st.ctl_raw(d.ctl_socket, request))
        schemas, store = load_schemas()
        sch = schemas["ctl/events"]
        jsonschema.Draft202012Validator(
            sch, resolver=jsonschema.RefResolver.from_schema(sch, store=store)).validate(ans)
        return ans

    def replayed(self):
        return [q for q in self.recv.all_requests() if q["replay"] is not None]

    def replay_state(self, d):
        return d.ctl("events", json=True).check().data["webhooks"][0]["replay"]

    def deliveries(self, d):
        return [r for r in d.accounting() if r["type"] == "delivery"]

    def test_since_and_until_send_the_files_records_again(self):
        d = self.daemon()
        send(d, "a", 6)
        st.wait_for(lambda: len(self.recv.ok_records()) == 6, 60, what="6 live records")
        since = now_rfc3339()
        time.sleep(0.05)
        send(d, "b", 5)
        st.wait_for(lambda: len(self.recv.ok_records()) == 11, 60, what="11 live records")
        until = now_rfc3339()
        time.sleep(0.05)
        d.ctl("log-rotate").check()  # the range spans a rotated file and the current one
        send(d, "c", 4)
        st.wait_for(lambda: len(self.recv.ok_records()) == 15, 60, what="15 live records")
        self.assertGreaterEqual(len(os.listdir(d.acct_dir)), 2)
        live = d.ctl("events", json=True).check().data["webhooks"][0]
        self.assertIsNone(live["replay"])

        self.recv.delay = 1.0  # the replay runs a while: a second one is refused meanwhile
        out = d.ctl("events", "replay", "crm", "--since", since).check().out
        self.assertRegex(out, r"replay to crm started: records from %s to \S+Z" % since)
        busy = d.ctl("events", "replay", "crm", "--since", since)
        self.assertNotEqual(busy.rc, 0)
        self.assertIn('a replay to "crm" is running', busy.out + busy.err)
        st.wait_for(lambda: self.replay_state(d)["state"] == "done", 60, what="the replay done")
        self.recv.delay = 0
        want = [r for r in self.deliveries(d) if r["recipient"][0] in "bc"]
        self.assertEqual(len(want), 9)
        reqs = self.replayed()
        self.assertTrue(all(q["replay"] == "1" and q["status"] == 200 for q in reqs), reqs)
        self.assertTrue(all(len(q["records"]) <= 4 for q in reqs))
        self.assertEqual([r for q in reqs for r in q["records"]], want)
        self.assertEqual(self.recv.bad_signatures, 0)
        rp = self.answer(d, {"cmd": "events"})["webhooks"][0]["replay"]
        self.assertEqual((rp["sent_records"], rp["files"], rp["files_read"], rp["last_error"]),
                         (9, 2, 2, None), rp)
        human = d.ctl("events").check().out
        self.assertIn("replay: done, records from %s" % since, human)
        self.assertIn(": 9 sent, file 2 of 2", human)
        # the live stream did not move: nothing new, nothing sent twice
        ev = d.ctl("events", json=True).check().data["webhooks"][0]
        self.assertEqual((ev["cursor"], ev["lag_records"], ev["sent_records"]),
                         (live["cursor"], 0, live["sent_records"]))
        self.assertEqual(len(self.recv.ok_records()), 15)

        # --until: the range ends there (and unix seconds are a time too)
        n = len(self.replayed())
        ans = self.answer(d, {"cmd": "events", "replay": "crm", "since": since, "until": until})
        self.assertEqual(ans["replay_started"], {"webhook": "crm", "since": since, "until": until})
        st.wait_for(lambda: self.replay_state(d)["state"] == "done" and
                    self.replay_state(d)["until"] == until, 60, what="the second replay done")
        got = [r for q in self.replayed()[n:] for r in q["records"]]
        self.assertEqual(got, [r for r in want if r["recipient"][0] == "b"])
        n = len(self.replayed())
        t = int(time.time())  # before this daemon started: nothing to send
        d.ctl("events", "replay", "crm", "--since", str(t - 3600), "--until", str(t - 1800)).check()
        st.wait_for(lambda: self.replay_state(d)["state"] == "done" and
                    self.replay_state(d)["sent_records"] == 0, 60, what="an empty replay done")
        self.assertEqual(len(self.replayed()), n)

    def test_bad_requests_are_refused_clearly(self):
        d = self.daemon()
        r = d.ctl("events", "replay", "nosuch", "--since", "2026-01-01T00:00:00Z")
        self.assertNotEqual(r.rc, 0)
        self.assertIn('no webhook "nosuch"', r.out + r.err)
        r = d.ctl("events", "replay", "crm", "--since", "yesterday")
        self.assertNotEqual(r.rc, 0)
        self.assertIn("expected a time as 2026-12-02T17:00:00Z or unix seconds", r.out + r.err)
        r = d.ctl("events", "replay", "crm", "--since", "2026-01-02T00:00:00Z",
                  "--until", "2026-01-01T00:00:00Z")
        self.assertNotEqual(r.rc, 0)
        self.assertIn("--until is before --since", r.out + r.err)
        r = d.ctl("events", "replay", "crm")
        self.assertEqual(r.rc, 2)
        self.assertIn("replay NAME --since TIME", r.err)
        self.assertIsNone(self.replay_state(d))

    def test_pmta_csv_only_is_refused(self):
        d = self.daemon(fmt="pmta-csv")
        r = d.ctl("events", "replay", "crm", "--since", "2026-01-01T00:00:00Z")
        self.assertNotEqual(r.rc, 0)
        self.assertIn("log.accounting_format is pmta-csv: replay reads the JSON lines files",
                      r.out + r.err)


if __name__ == "__main__":
    st.main()
