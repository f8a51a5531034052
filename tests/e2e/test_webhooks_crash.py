#!/usr/bin/python3
"""Webhooks across a kill -9 (issue #14, docs/events.md): the stream's
position is in the spool, so sluiced killed while it sends loses no event.

A receiver that answers slowly keeps the stream busy; sluiced is killed
with SIGKILL once part of it has arrived, then started again on the same
spool. Every delivery record of the accounting log (before and after the
kill) reaches the receiver: the stream goes on from the cursor the spool
kept. Duplicates are allowed (at least once): only batches the receiver
got but whose acknowledgement was not yet in the spool come again.

Env: SLUICE_BUILD (binaries), SLUICE_SRC.
"""
import os
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sluicetest as st  # noqa: E402
from test_webhooks import SECRET, send_many  # noqa: E402


class WebhookCrashTest(unittest.TestCase):

    def test_kill9_during_the_stream_loses_none(self):
        recv = st.WebhookReceiver(SECRET)
        self.addCleanup(recv.stop)
        sink = st.Sink()
        self.addCleanup(sink.stop)
        recv.delay = 0.3  # three batches a second at most: the stream lags behind delivery
        d = st.Daemon(routes={"example.test": "127.0.0.1:%d" % sink.port},
                      extra_conf=st.webhook_conf("crm", recv.url, SECRET, recv.cert,
                                                 types=["delivery"], batch=10,
                                                 max_latency="100ms"))
        self.addCleanup(d.close)
        d.start()
        sent = send_many(d, 600)
        st.wait_for(lambda: len(st.acct_records(d, "delivery")) >= 600, 120,
                    what="600 deliveries")
        st.wait_for(lambda: len(recv.ok_records()) >= 100, 60, what="part of the stream")
        self.assertLess(len(recv.ok_records()), 600)  # killed in the middle of it
        d.kill9()
        before = len(recv.ok_records())
        recv.delay = 0
        d.start()
        want = {(r["msgid"], r["recipient"]) for r in st.acct_records(d, "delivery")}
        self.assertEqual({r for _, r in want}, set(sent))
        st.wait_for(lambda: want <= {(r["msgid"], r["recipient"]) for r in recv.ok_records()},
                    120, what="every delivery record after the restart")
        self.assertGreater(len(recv.ok_records()), before)
        self.assertEqual(recv.bad_signatures, 0)
        st.wait_for(lambda: d.ctl("events", json=True).check().data["webhooks"][0]
                    ["lag_records"] == 0, 30, what="the cursor at the head of the stream")


if __name__ == "__main__":
    st.main()
