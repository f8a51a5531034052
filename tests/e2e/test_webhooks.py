#!/usr/bin/python3
"""Webhooks (issue #14, docs/events.md): the event stream of the spool
POSTed to an HTTPS receiver we run here (tests/e2e/sluicetest.py's
WebhookReceiver: Python's http.server with its own certificate, which is
the CA sluice is given), that checks every signature and fails on
command.

- healthy: every delivery record of 2,000 messages arrives exactly once,
  in order (the sequences of the batches follow each other), signed, over
  kept-alive connections;
- the endpoint answers 500 for a while, then comes back: every record
  arrives at least once, and the duplicates are only records of batches
  that were answered 500 (a 503 with Retry-After is waited for);
- a 400 parks the batch: a webhook_parked record, `sluicectl events` and
  the metrics say so, the stream goes on, and `events unpark` sends it
  again.

Env: SLUICE_BUILD (binaries), SLUICE_SRC.
"""
import os
import re
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sluicetest as st  # noqa: E402

SECRET = "whsec-0123456789abcdef"


def send_many(d, n, domain="example.test", per_conn=500):
    """n messages of one recipient each, several per connection."""
    sent = []
    i = 0
    while i < n:
        with d.smtp(timeout=120) as s:
            for _ in range(min(per_conn, n - i)):
                rcpt = "u%d@%s" % (i, domain)
                s.sendmail("sender@example.com", [rcpt],
                           "From: sender@example.com\r\nMessage-ID: <m%d@example.com>\r\n"
                           "Subject: hook %d\r\n\r\nbody\r\n" % (i, i))
                sent.append(rcpt)
                i += 1
    return sent


def seqs_follow(reqs):
    """The 2xx requests' sequence ranges follow each other without a gap
    or an overlap."""
    ok = [q["sequence"] for q in reqs if 200 <= q["status"] < 300]
    for a, b in zip(ok, ok[1:]):
        if b[0] != a[1] + 1:
            return False
    return True


class WebhookTest(unittest.TestCase):

    def setUp(self):
        self.recv = st.WebhookReceiver(SECRET)
        self.addCleanup(self.recv.stop)
        self.sink = st.Sink()
        self.addCleanup(self.sink.stop)

    def daemon(self, types=("delivery",), batch=100, extra=""):
        d = st.Daemon(routes={"example.test": "127.0.0.1:%d" % self.sink.port},
                      extra_conf=st.webhook_conf("crm", self.recv.url, SECRET, self.recv.cert,
                                                 types=types, batch=batch, extra=extra))
        self.addCleanup(d.close)
        d.start()
        return d

    def test_healthy_every_record_exactly_once_in_order(self):
        d = self.daemon()
        sent = send_many(d, 2000)
        st.wait_for(lambda: len(self.recv.ok_records()) >= 2000, 150,
                    what="2,000 delivery records at the receiver")
        time.sleep(0.5)  # anything more would be a duplicate: give it the time to show
        recs = self.recv.ok_records()
        self.assertEqual(sorted(r["recipient"] for r in recs), sorted(sent))
        self.assertEqual({r["type"] for r in recs}, {"delivery"})
        reqs = self.recv.all_requests()
        self.assertEqual(self.recv.bad_signatures, 0)
        self.assertTrue(all(q["status"] == 200 for q in reqs), reqs[:3])
        self.assertTrue(seqs_follow(reqs), [q["sequence"] for q in reqs])
        self.assertTrue(all(len(q["records"]) <= 100 for q in reqs))
        # the same records as the accounting log, in its order
        acct = [(r["msgid"], r["recipient"]) for r in d.accounting() if r["type"] == "delivery"]
        self.assertEqual([(r["msgid"], r["recipient"]) for r in recs], acct)
        # HTTP/1.1 keep-alive: far fewer connections than requests
        self.assertLess(len({q["connection"] for q in reqs}), len(reqs) / 4)
        ev = d.ctl("events", json=True).check().data
        w = ev["webhooks"][0]
        self.assertEqual((w["name"], w["lag_records"], w["in_flight"], w["parked"]),
                         ("crm", 0, 0, []))
        self.assertEqual(w["cursor"], ev["head"])

    def test_500_then_back_at_least_once_duplicates_only_retried(self):
        d = self.daemon(types=None, batch=50,
                        extra="retry_initial = 100ms; retry_max = 400ms;")
        self.recv.set_status(500)
        sent = send_many(d, 300)
        st.wait_for(lambda: sum(1 for q in self.recv.all_requests() if q["status"] == 500) >= 5,
                    60, what="five refused requests")
        ev = d.ctl("events", json=True).check().data["webhooks"][0]
        self.assertGreater(ev["lag_records"], 0)
        self.assertIn("HTTP 500", ev["last_error"])
        human = d.ctl("events").check().out
        self.assertRegex(human, r"crm\s+\d+\s+[1-9]\d*\s+\d+\s+\d+\s+0\s+\d+\s+HTTP 500")
        # a 503 with Retry-After: 2 s is honoured before the next try
        self.recv.set_status(503, retry_after=2)
        n503 = len(self.recv.all_requests())
        st.wait_for(lambda: any(q["status"] == 503 for q in self.recv.all_requests()[n503:]), 30,
                    what="a 503")
        self.recv.set_status(200)
        want = {r["recipient"] for r in d.accounting() if r["type"] == "delivery"}
        st.wait_for(lambda: len(want) == 300 and want <= {r.get("recipient") for r in
                                                          self.recv.ok_records()}, 120,
                    what="every delivery record after the endpoint came back")
        reqs = self.recv.all_requests()
        t503 = [q["time"] for q in reqs if q["status"] == 503][0]
        after = [q["time"] for q in reqs if q["time"] > t503]
        self.assertTrue(after and after[0] - t503 >= 1.8, (t503, after[:1]))
        # every record of the log arrived; a record that came more than once
        # was in a batch that was answered with an error
        acct = [(r["type"], r["msgid"], r.get("recipient"), r["time"]) for r in d.accounting()
                if r["type"] in ("received", "delivery")]
        got = {}
        for q in reqs:
            for r in q["records"]:
                k = (r["type"], r["msgid"], r.get("recipient"), r["time"])
                got.setdefault(k, []).append(q["status"])
        for k in acct:
            self.assertIn(k, got)
            self.assertEqual(sum(1 for s in got[k] if s == 200), 1, (k, got[k]))
        dups = [k for k, v in got.items() if len(v) > 1]
        self.assertTrue(dups)
        self.assertTrue(all(any(s != 200 for s in got[k]) for k in dups))
        self.assertTrue(seqs_follow(reqs))
        self.assertEqual(sorted(r["recipient"] for r in d.accounting() if r["type"] == "delivery"),
                         sorted(sent))

    def test_400_parks_the_batch_and_unpark_sends_it_again(self):
        d = self.daemon(batch=5)
        self.recv.fail_next = [400]
        send_many(d, 12)
        st.wait_for(lambda: any(r["type"] == "webhook_parked" for r in d.accounting()), 60,
                    what="the webhook_parked record")
        parked = [r for r in d.accounting() if r["type"] == "webhook_parked"]
        self.assertEqual(len(parked), 1)
        self.assertEqual((parked[0]["webhook"], parked[0]["http_status"]), ("crm", 400))
        first, last = parked[0]["first"], parked[0]["last"]
        # the stream goes on past the parked batch
        st.wait_for(lambda: len(self.recv.ok_records()) >= 7, 60, what="the rest of the stream")
        ev = d.ctl("events", json=True).check().data["webhooks"][0]
        self.assertEqual(ev["parked"], [{"first": first, "last": last}])
        self.assertEqual(ev["parked_batches"], 1)
        self.assertIn("HTTP 400", ev["last_error"])
        human = d.ctl("events").check().out
        self.assertIn("parked: records %d-%d (sluicectl events unpark crm)" % (first, last), human)
        metrics = d.ctl("metrics").check().out
        self.assertRegex(metrics, r'sluice_webhook_parked_batches\{webhook="crm"\} 1\b')
        self.assertRegex(metrics, r'sluice_webhook_parked_total\{webhook="crm"\} 1\b')
        before = len(self.recv.ok_records())
        out = d.ctl("events", "unpark", "crm").check().out
        self.assertIn("unparked: 1 batches sent again", out)
        st.wait_for(lambda: d.ctl("events", json=True).check().data["webhooks"][0]["parked"]
                    == [], 30, what="the parked batch sent")
        recs = self.recv.ok_records()
        self.assertEqual(len(recs), 12)
        self.assertEqual(sorted(r["recipient"] for r in recs),
                         sorted("u%d@example.test" % i for i in range(12)))
        self.assertGreater(len(recs), before)
        bad = d.ctl("events", "unpark", "nosuch")
        self.assertNotEqual(bad.rc, 0)
        self.assertIn('no webhook "nosuch"', bad.out + bad.err)


if __name__ == "__main__":
    st.main()
