#!/usr/bin/python3
"""The backlog bound of the event stream (issue #14, docs/events.md,
events.max_backlog / events.max_backlog_age).

A webhook whose endpoint answers 500 falls behind; with a small bound the
spool keeps at most that many records (plus the batch in flight), the
oldest go unsent, and an events_dropped record, `sluicectl events` and
sluice_events_dropped_total say which and how many (what a POST in flight
covers is kept until its answer, so the spool comes down to the bound
once it failed). When the endpoint
comes back, the records that were kept arrive. The webhook takes only
`delivery` records, so the stream's sequences number the delivery records
of the accounting file one by one (a fresh spool starts at 1): every
record is either received (byte for byte the file's, in its batch's
sequence range) or inside a reported dropped range, never both.

Env: SLUICE_BUILD (binaries), SLUICE_SRC.
"""
import os
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sluicetest as st  # noqa: E402
from test_records import load_schemas  # noqa: E402
from test_webhooks import SECRET, send_many  # noqa: E402

import jsonschema  # noqa: E402


def events_conf(recv, bound, batch=10):
    """An events section with a bound and one webhook taking deliveries."""
    return ("events {\n    %s\n    webhooks {\n        crm {\n"
            '            url = "%s";\n            secret = "%s";\n            ca_file = "%s";\n'
            '            types = ["delivery"];\n            batch = %d;\n'
            "            max_latency = 100ms;\n            retry_initial = 100ms;\n"
            "            retry_max = 300ms;\n        }\n    }\n}\n"
            % (bound, recv.url, SECRET, recv.cert, batch))


class BacklogTest(unittest.TestCase):

    def setUp(self):
        self.recv = st.WebhookReceiver(SECRET)
        self.addCleanup(self.recv.stop)
        self.sink = st.Sink()
        self.addCleanup(self.sink.stop)

    def daemon(self, bound):
        d = st.Daemon(routes={"example.test": "127.0.0.1:%d" % self.sink.port},
                      extra_conf=events_conf(self.recv, bound)
                      + "queue {\n    scan_interval = 200ms;\n}\n")
        self.addCleanup(d.close)
        d.start()
        return d

    def dropped(self, d):
        schemas, store = load_schemas()
        sch = schemas["acct/events_dropped"]
        recs = [r for r in d.accounting() if r["type"] == "events_dropped"]
        for r in recs:
            jsonschema.Draft202012Validator(
                sch, resolver=jsonschema.RefResolver.from_schema(sch, store=store)).validate(r)
        return recs

    def check_partition(self, d, n):
        """Every delivery record of the file was received or reported
        dropped, exactly one of the two."""
        deliveries = [r for r in d.accounting() if r["type"] == "delivery"]
        self.assertEqual(len(deliveries), n)
        got = {}
        for q in self.recv.all_requests():
            if 200 <= q["status"] < 300:
                a, b = q["sequence"]
                self.assertEqual(q["records"], deliveries[a - 1:b], (a, b))
                for s in range(a, b + 1):
                    self.assertNotIn(s, got)
                    got[s] = True
        gone = set()
        for r in self.dropped(d):
            self.assertEqual(r["webhook"], "crm")
            self.assertEqual(r["count"], r["last"] - r["first"] + 1, r)
            rng = set(range(r["first"], r["last"] + 1))
            self.assertFalse(rng & gone, r)
            gone |= rng
        self.assertFalse(gone & set(got))
        self.assertEqual(gone | set(got), set(range(1, n + 1)))
        return len(gone)

    def test_count_bound_drops_the_oldest_and_says_so(self):
        self.recv.set_status(500)
        d = self.daemon("max_backlog = 40;")
        send_many(d, 150, per_conn=50)
        st.wait_for(lambda: sum(1 for r in d.accounting() if r["type"] == "delivery") == 150, 120,
                    what="150 deliveries")
        # what a POST in flight covers is kept until its answer; then the
        # spool holds the bound exactly (the newest 40)
        st.wait_for(lambda: d.ctl("events", json=True).check().data["stored"] == 40, 30,
                    what="the stream down to the bound")
        ev = d.ctl("events", json=True).check().data
        wh = ev["webhooks"][0]
        self.assertEqual((ev["head"], wh["cursor"], wh["lag_records"], wh["dropped_records"]),
                         (150, 110, 40, 110), ev)
        n = 110
        self.assertEqual(sum(r["count"] for r in self.dropped(d)), n)
        self.assertTrue(all(r["reason"] == "max_backlog" for r in self.dropped(d)))
        human = d.ctl("events").check().out
        self.assertIn("stream head: 150, stored: 40", human)
        self.assertIn("dropped: %d records unsent" % n, human)
        self.assertRegex(d.ctl("metrics").check().out,
                         r'sluice_events_dropped_total\{webhook="crm"\} %d\b' % n)
        # the endpoint comes back: what was kept arrives
        self.recv.set_status(200)
        st.wait_for(lambda: d.ctl("events", json=True).check().data["webhooks"][0]["lag_records"]
                    == 0, 60, what="the webhook caught up")
        self.assertEqual(self.check_partition(d, 150), n)
        self.assertEqual(len(self.recv.ok_records()), 150 - n)
        self.assertEqual(self.recv.bad_signatures, 0)

    def test_age_bound_drops_what_is_too_old(self):
        self.recv.set_status(500)
        d = self.daemon("max_backlog_age = 2s;")
        send_many(d, 20, per_conn=20)
        st.wait_for(lambda: sum(r["count"] for r in self.dropped(d)) == 20, 60,
                    what="the 20 records dropped by age")
        self.assertTrue(all(r["reason"] == "max_backlog_age" for r in self.dropped(d)))
        self.assertEqual(d.ctl("events", json=True).check().data["stored"], 0)
        self.recv.set_status(200)
        sent = send_many(d, 5, per_conn=5)
        st.wait_for(lambda: len(self.recv.ok_records()) == 5, 60, what="the 5 new records")
        self.assertEqual(sorted(r["recipient"] for r in self.recv.ok_records()), sorted(sent))
        self.assertEqual(self.check_partition(d, 25), 20)


if __name__ == "__main__":
    st.main()
