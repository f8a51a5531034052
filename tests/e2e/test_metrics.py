#!/usr/bin/python3
"""The metrics exposition read by parsers we did not write.

Debian's python3-prometheus-client has two independent parsers: the
Prometheus text format (0.0.4) one and the stricter OpenMetrics 1.0 one
(clashing family names, canonical histogram bounds, # EOF). A run delivers,
bounces and defers through a configured provider and through destinations
that are providers of their own, then:
- /metrics (text and, asked with Accept, OpenMetrics), `sluicectl metrics`
  and `sluicectl metrics --openmetrics` parse with both parsers;
- no gauge is named like a counter without its _total;
- the time-in-queue histogram's _sum is in float seconds: sub-second
  deliveries add to it, and the sub-second buckets count them;
- per provider and virtual MTA series exist, count what was delivered, and
  their provider label takes only configured names and "other" however
  many destinations there are;
- every family exported is documented in docs/operations.md, and every
  family documented there is exported.

Env: SLUICE_BUILD (binaries), SLUICE_SRC.
"""
import http.client
import os
import re
import sys
import unittest

from prometheus_client.openmetrics import parser as om_parser
from prometheus_client import parser as text_parser

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sluicetest as st  # noqa: E402

SHAPING = """
virtual_mtas { v1 { source = "127.0.0.1"; } v2 { source = "127.0.0.2"; } }
pools { main { members = [v1, v2]; } }
default_pool = main;
providers { peerprov { domains = ["example.test"]; } }
"""
OWN_DOMAINS = ["own%d.test" % i for i in range(12)]  # each a provider of its own


def families(text, om=False):
    """{family name: Metric} with the parser of that format (raises on
    what it refuses)."""
    parse = om_parser.text_string_to_metric_families if om else \
        text_parser.text_string_to_metric_families
    out = {}
    for f in parse(text):
        if f.name in out:
            raise AssertionError("family %s twice" % f.name)
        out[f.name] = f
    return out


def value(fams, family, sample, **labels):
    for s in fams[family].samples:
        if s.name == sample and s.labels == labels:
            return s.value
    raise KeyError("%s%r" % (sample, labels))


class MetricsTest(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        cls.peer = st.Peer(rcpt_reply=["bad*@example.test=550 5.1.1 no such user",
                                       "soft*@example.test=450 4.2.0 try later"])
        peer = "127.0.0.1:%d" % cls.peer.port
        routes = {"example.test": peer, "example.com": peer}
        routes.update({d: peer for d in OWN_DOMAINS})
        cls.http_port = st.free_port()
        cls.d = st.Daemon(routes=routes,
                          extra_conf='queue {\n    scan_interval = 100ms;\n}\n')
        try:
            shaping = os.path.join(cls.d.dir, "shaping.conf")
            with open(shaping, "w") as f:
                f.write(SHAPING)
            with open(cls.d.conf_path) as f:
                conf = f.read()
            conf = conf.replace("delivery {\n", 'delivery {\n    shaping = "%s";\n' % shaping, 1)
            conf = conf.replace("control {\n", 'control {\n    http_metrics = "127.0.0.1:%d";\n'
                                % cls.http_port, 1)
            with open(cls.d.conf_path, "w") as f:
                f.write(conf)
            cls.d.start()
            st.wait_for_port("127.0.0.1", cls.http_port, 10)
            rcpts = ["ok%d@example.test" % i for i in range(6)] + ["bad1@example.test",
                                                                   "soft1@example.test"]
            rcpts += ["x@" + d for d in OWN_DOMAINS]
            with cls.d.smtp() as s:
                for r in rcpts:
                    s.sendmail("sender@example.com", [r], "Subject: m\r\n\r\nbody\r\n")
            want = len(rcpts)

            def done():
                n = sum(1 for r in cls.d.accounting()
                        if r["type"] in ("delivery", "bounce", "transient")
                        and r["sender"] != "")
                return n >= want
            st.wait_for(done, 60, interval=0.2, what="an outcome for every recipient")
            st.wait_for(lambda: len(cls.peer.rcpts()) >= 6 + len(OWN_DOMAINS) + 1, 60,
                        what="the deliveries and the DSN at the peer")
        except Exception:
            cls.tearDownClass()
            raise

    @classmethod
    def tearDownClass(cls):
        try:
            if cls.d.running():
                cls.d.stop()
        finally:
            cls.d.cleanup()
            cls.peer.stop()

    def http_get(self, accept=None):
        c = http.client.HTTPConnection("127.0.0.1", self.http_port, timeout=30)
        c.request("GET", "/metrics", headers={"Accept": accept} if accept else {})
        r = c.getresponse()
        body = r.read().decode("utf-8")
        c.close()
        self.assertEqual(r.status, 200)
        return r.getheader("Content-Type"), body

    def test_both_parsers_accept_every_form(self):
        ctype, text = self.http_get()
        self.assertTrue(ctype.startswith("text/plain; version=0.0.4"), ctype)
        families(text)
        # what Prometheus 2.x sends
        ctype, om = self.http_get("application/openmetrics-text;version=1.0.0,"
                                  "application/openmetrics-text;version=0.0.1;q=0.75,"
                                  "text/plain;version=0.0.4;q=0.5,*/*;q=0.1")
        self.assertTrue(ctype.startswith("application/openmetrics-text; version=1.0.0"), ctype)
        self.assertTrue(om.endswith("# EOF\n"))
        fo = families(om, om=True)
        r = self.d.ctl("metrics").check()
        families(r.out)
        r = self.d.ctl("metrics", "--openmetrics").check()
        fo2 = families(r.out, om=True)
        self.assertEqual(set(fo), set(fo2))
        self.assertEqual(fo["sluice_build"].type, "info")
        self.assertEqual(fo["sluice_provider_recipients"].type, "counter")

    def test_no_gauge_is_named_like_a_counter(self):
        _, text = self.http_get()
        types = dict(re.findall(r"(?m)^# TYPE (\S+) (\S+)$", text))
        clashes = [(n, n + "_total") for n, t in types.items()
                   if n + "_total" in types and types[n + "_total"] == "counter"]
        self.assertEqual(clashes, [])
        for name in ("sluice_smtp_connections_open", "sluice_delivery_connections_open"):
            self.assertEqual(types.get(name), "gauge", name)

    def test_time_in_queue_sum_is_in_float_seconds(self):
        _, text = self.http_get()
        h = "sluice_delivered_time_in_queue_seconds"

        def sample(suffix, le=None):
            lab = '{le="%s"}' % le if le else ""
            m = re.search(r"(?m)^%s%s%s (\S+)$" % (h, suffix, re.escape(lab)), text)
            self.assertIsNotNone(m, h + suffix + lab)
            return float(m.group(1))
        count, total = sample("_count"), sample("_sum")
        self.assertGreaterEqual(count, 6 + len(OWN_DOMAINS) + 1)  # and the DSN
        # every one went out within seconds on loopback: the sum is above 0
        # (whole seconds made it 0) and below count x the bucket they are in
        self.assertGreater(total, 0.0)
        self.assertEqual(sample("_bucket", "+Inf"), count)
        self.assertEqual(sample("_bucket", "10.0"), count)
        self.assertLess(total, 10.0 * count)
        for le in ("0.05", "0.1", "0.25", "0.5", "1.0"):  # the sub-second buckets
            sample("_bucket", le)

    def test_per_provider_and_vmta_series(self):
        fams = families(self.http_get()[1])
        fam = "sluice_provider_recipients"
        samples = [s for s in fams[fam].samples if s.name == fam + "_total"]
        providers = {s.labels["provider"] for s in samples}
        vmtas = {s.labels["vmta"] for s in samples}
        # bounded: configured names and "other", not one label per domain
        self.assertEqual(providers, {"peerprov", "other"})
        self.assertEqual(vmtas, {"v1", "v2"})

        def total(provider, outcome):
            return sum(s.value for s in samples
                       if s.labels["provider"] == provider and s.labels["outcome"] == outcome)
        self.assertEqual(total("peerprov", "delivered"), 6)
        # the own*.test destinations and the DSN to example.com
        self.assertEqual(total("other", "delivered"), len(OWN_DOMAINS) + 1)
        delivered = value(fams, "sluice_delivery_recipients", "sluice_delivery_recipients_total",
                          outcome="delivered")
        self.assertEqual(total("peerprov", "delivered") + total("other", "delivered"), delivered)
        for f in ("sluice_provider_connections_open", "sluice_provider_backoff_queues"):
            labels = {(s.labels["provider"], s.labels["vmta"]) for s in fams[f].samples}
            self.assertEqual(labels, {(p, v) for p in ("peerprov", "other")
                                      for v in ("v1", "v2")}, f)
        self.assertEqual({s.labels["provider"] for s in fams["sluice_provider_suspended"].samples},
                         {"peerprov", "other"})

    def test_suspended_provider_shows(self):
        r = self.d.ctl("suspend", "--provider", "peerprov", "--for", "10m")
        self.assertEqual(r.rc, 0, r.err)
        try:
            fams = families(self.http_get()[1])
            self.assertEqual(value(fams, "sluice_provider_suspended", "sluice_provider_suspended",
                                   provider="peerprov"), 1)
        finally:
            self.assertEqual(self.d.ctl("resume", "--provider", "peerprov").rc, 0)
        fams = families(self.http_get()[1])
        self.assertEqual(value(fams, "sluice_provider_suspended", "sluice_provider_suspended",
                               provider="peerprov"), 0)

    def test_every_family_is_documented(self):
        with open(os.path.join(st.SRC, "docs", "operations.md")) as f:
            doc = f.read()
        section = doc[doc.index("## Metrics"):]
        section = section[:section.find("\n## ", 5)] if "\n## " in section[5:] else section
        documented = set()
        for row in re.findall(r"(?m)^\| (`sluice_[^|]*)\|", section):
            documented.update(re.findall(r"`(sluice_[a-z_]+)", row))
        _, text = self.http_get()
        exported = set(re.findall(r"(?m)^# TYPE (\S+) ", text))
        self.assertEqual(exported - documented, set(), "exported, not in docs/operations.md")
        self.assertEqual(documented - exported, set(), "in docs/operations.md, not exported")


if __name__ == "__main__":
    unittest.main()
