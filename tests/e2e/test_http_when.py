#!/usr/bin/python3
"""The HTTP injection API's `deferred_until` and `priority`, and the HTTP
request metrics (docs/http-api.md, docs/operations.md):

- a message injected with deferred_until a few seconds ahead is queued
  (200 after the commit), not delivered before that time, then delivered;
  one in the past goes at once;
- priority moves a message ahead in the queue's order: with delivery
  suspended, bulk mail injected first and a priority message last, the
  priority one is delivered first after `resume --all` (one connection);
- GET /metrics shows sluice_http_requests_total by path and code and the
  duration histogram, counting the requests this test made.

Checked from the outside: the sink's arrival times and order, the
accounting records, the metrics text. Env: SLUICE_BUILD, SLUICE_SRC.
"""
import datetime
import os
import re
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sluicetest as st  # noqa: E402
from test_delivery import FAST_QUEUE  # noqa: E402

INJ = "tok-inject-0123456789abcdef"
READ = "tok-read-0123456789abcdef"


def rfc3339(t):
    return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).strftime(
        "%Y-%m-%dT%H:%M:%SZ")


def body(rcpt, **kw):
    b = {"envelope_sender": "s@s.example", "recipients": [{"email": rcpt}],
         "content": {"from": {"email": "s@s.example"}, "subject": rcpt, "text_body": "hi\n"}}
    b.update(kw)
    return b


class HttpWhen(unittest.TestCase):
    def setUp(self):
        self.sink = st.Sink()
        self.addCleanup(self.sink.stop)
        self.http_port = st.free_port()
        shaping = os.path.join(st.make_tmpdir("http-when-"), "shaping.conf")
        with open(shaping, "w") as f:  # one connection: the order is the queue's
            f.write('providers { w { domains = ["example.test"]; max_connections = 1; } }\n')
        self.d = st.Daemon(routes={"example.test": "127.0.0.1:%d" % self.sink.port})
        self.addCleanup(self.d.close)
        text = re.sub(r"\n\s*smarthost\s*=[^;\n]*;", '\n    shaping = "%s";' % shaping,
                      self.d.default_conf())
        with open(self.d.conf_path, "w") as f:
            f.write(text + st.http_conf(self.http_port) + FAST_QUEUE)
        self.d.start()

    def inject(self, b):
        s, _, ans = st.http_json(self.http_port, "POST", "/api/inject/v1", b, INJ)
        self.assertEqual(s, 200, ans)
        return ans

    def arrivals(self):
        return {m[0]["rcpts"][0] if isinstance(m[0].get("rcpts"), list) else m[0]["rcpt"]:
                m[0]["time"] for m in self.sink.messages()}

    def test_deferred_until(self):
        t0 = time.time()
        when = int(t0) + 4
        self.inject(body("later@example.test", deferred_until=rfc3339(when)))
        self.inject(body("now@example.test", deferred_until=rfc3339(t0 - 3600)))
        self.sink.wait_messages(1, timeout=30)
        got = self.arrivals()
        self.assertIn("now@example.test", got)
        if time.time() < when:  # still before its time: not delivered
            self.assertNotIn("later@example.test", got)
        self.sink.wait_messages(2, timeout=60)
        got = self.arrivals()
        self.assertGreaterEqual(got["later@example.test"], when)

    def test_priority_goes_first(self):
        self.assertEqual(self.d.ctl("suspend", "--all").rc, 0)
        for i in range(5):
            self.inject(body("bulk%d@example.test" % i))
        self.inject(body("urgent@example.test", priority=10))
        self.assertEqual(self.d.ctl("resume", "--all").rc, 0)
        msgs = self.sink.wait_messages(6, timeout=60)
        order = [m[0]["rcpts"][0] if isinstance(m[0].get("rcpts"), list) else m[0]["rcpt"]
                 for m in msgs]
        self.assertEqual(order[0], "urgent@example.test", order)

    def test_request_metrics(self):
        self.inject(body("m@example.test"))
        st.http_json(self.http_port, "POST", "/api/inject/v1", {"recipients": []}, INJ)
        st.http_json(self.http_port, "GET", "/nowhere", None, INJ)
        s, _, text = st.http_call(self.http_port, "GET", "/metrics", None, READ)
        self.assertEqual(s, 200)
        text = text.decode()

        def val(pat):
            m = re.search(r"(?m)^" + pat + r" (\S+)$", text)
            return float(m.group(1)) if m else None
        self.assertEqual(val(r'sluice_http_requests_total\{path="/api/inject/v1",code="200"\}'), 1)
        self.assertEqual(val(r'sluice_http_requests_total\{path="/api/inject/v1",code="422"\}'), 1)
        self.assertEqual(val(r'sluice_http_requests_total\{path="other",code="404"\}'), 1)
        self.assertEqual(val(r'sluice_http_request_duration_seconds_count\{path="/api/inject/v1"\}'),
                         2)
        self.assertEqual(val(r'sluice_http_request_duration_seconds_bucket'
                             r'\{path="/api/inject/v1",le="\+Inf"\}'), 2)
        self.assertGreater(val(r'sluice_http_request_duration_seconds_sum'
                               r'\{path="/api/inject/v1"\}'), 0)


if __name__ == "__main__":
    st.main()
