#!/usr/bin/python3
"""End-to-end tests of TLSRPT (RFC 8460) collection (queue/tlsrpt.c): the
counters per policy domain and UTC day that delivery threads report and the
queue thread keeps in the spool, and `sluicectl tlsrpt`.

The setting is test_dane.py's (FakeDns with AD per zone, aiosmtpd peers on
127.0.0.x with certificates from a test CA). A run delivers to a DANE host
that matches (tlsa, successful), one that does not (tlsa, failed:
validation-failure), a host without STARTTLS behind a TLSA record (tlsa,
failed: starttls-not-supported) and an insecure domain with opportunistic
TLS (no-policy-found, successful); the counters must say exactly that,
before and after a restart.
"""
import os
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sluicetest as st  # noqa: E402
from test_dane import DaneBase  # noqa: E402
from test_delivery import send, wait_acct  # noqa: E402
from test_records import load_schemas  # noqa: E402

# deferred recipients are not tried again during a test: each session counts once
SLOW_QUEUE = ('queue {\n    retry = "1h";\n    retry_jitter = 0;\n    scan_interval = 100ms;\n'
              '    dsn = false;\n}\n')
TLSRPT = ('reports {\n    tlsrpt {\n        organization = "Sluice Test Org";\n'
          '        contact = "mailto:tlsrpt@s.example";\n    }\n}\n')


def st_validate(schema, store, doc):
    import warnings
    import jsonschema
    with warnings.catch_warnings():  # RefResolver, as test_records.py uses it
        warnings.simplefilter("ignore", DeprecationWarning)
        jsonschema.Draft202012Validator(
            schema, resolver=jsonschema.RefResolver.from_schema(schema, store=store)
        ).validate(doc)


def policies(answer):
    """{(domain, policy type): (successful, failed, {(result, mx, ip): count})}."""
    out = {}
    for d in answer["domains"]:
        for p in d["policies"]:
            out[(d["domain"], p["policy_type"])] = (
                p["successful"], p["failed"],
                {(f["result_type"], f["receiving_mx_hostname"], f["receiving_ip"]): f["count"]
                 for f in p["failures"]})
    return out


def reasons(answer):
    """{(domain, result type): failure_reason}."""
    return {(d["domain"], f["result_type"]): f["failure_reason"]
            for d in answer["domains"] for p in d["policies"] for f in p["failures"]}


class TlsrptCountersTest(DaneBase):

    def run_mix(self):
        """Peers, DNS and a daemon with reports.tlsrpt on; sends the four
        messages and waits for their records. Returns (daemon, dns)."""
        self.good = self.peer("127.0.0.2", self.__class__.good)
        self.plain = self.peer("127.0.0.3")
        self.opp = self.peer("127.0.0.4", self.__class__.other)
        ok = [(3, 1, 1, st.tlsa_data(self.__class__.good[0], 1, 1))]
        bad = [(3, 1, 1, "00" * 32)]
        recs = {}
        recs.update(self.zone("ok.test", [(10, "mx1.d.test", "127.0.0.2")], {"mx1.d.test": ok}))
        recs.update(self.zone("bad.test", [(10, "mx2.d.test", "127.0.0.2")], {"mx2.d.test": bad}))
        recs.update(self.zone("plain.test", [(10, "mx3.d.test", "127.0.0.3")],
                              {"mx3.d.test": ok}))
        recs.update(self.zone("opp.test", [(10, "mx.opp.test", "127.0.0.4")]))
        dns = self.dns(recs, secure={"ok.test", "bad.test", "plain.test", "d.test"})
        d = self.daemon(dns, top=TLSRPT, queue=SLOW_QUEUE)
        for r in ("a@ok.test", "b@bad.test", "c@plain.test", "d@opp.test"):
            send(d, [r])
        wait_acct(d, "delivery", "a@ok.test")
        wait_acct(d, "transient", "b@bad.test")
        wait_acct(d, "transient", "c@plain.test")
        wait_acct(d, "delivery", "d@opp.test")
        return d, dns

    def expected(self):
        return {
            ("ok.test", "tlsa"): (1, 0, {}),
            ("bad.test", "tlsa"): (0, 1, {("validation-failure", "mx2.d.test", "127.0.0.2"): 1}),
            ("plain.test", "tlsa"): (0, 1, {("starttls-not-supported", "mx3.d.test",
                                            "127.0.0.3"): 1}),
            ("opp.test", "no-policy-found"): (1, 0, {}),
        }

    def test_counters_and_restart(self):
        d, _ = self.run_mix()
        ans = d.request({"cmd": "tlsrpt"})
        self.assertTrue(ans["ok"], ans)
        schemas, store = load_schemas()  # docs/records.md, ctl/tlsrpt
        st_validate(schemas["ctl/tlsrpt"], store, ans)
        self.assertRegex(ans["day"], r"^\d{4}-\d{2}-\d{2}$")
        self.assertEqual(policies(ans), self.expected())
        why = reasons(ans)
        self.assertEqual(why[("plain.test", "starttls-not-supported")], "STARTTLS not offered")
        self.assertRegex(why[("bad.test", "validation-failure")], r"^DANE: certificate verify: .*TLSA")
        out = d.ctl("tlsrpt").check().out
        self.assertIn("TLSRPT counters of %s" % ans["day"], out)
        self.assertRegex(out, r"bad\.test\s+tlsa\s+0\s+1")
        self.assertIn("validation-failure", out)
        self.assertIn("mx2.d.test[127.0.0.2] 1", out)
        # another day: nothing; a bad day: refused with a reason
        other = d.request({"cmd": "tlsrpt", "day": "2001-01-01"})
        self.assertEqual((other["ok"], other["domains"]), (True, []))
        r = d.ctl("tlsrpt", "yesterday")
        self.assertNotEqual(r.rc, 0)
        self.assertIn("YYYY-MM-DD", r.err + r.out)
        # kept in the spool: the same counters after a restart
        d.stop()
        d.start()
        self.assertEqual(policies(d.request({"cmd": "tlsrpt"})), self.expected())
        d.stop()

    def test_off_by_default(self):
        """Without reports.tlsrpt nothing is counted."""
        p = self.peer("127.0.0.2", self.__class__.good)
        ok = [(3, 1, 1, st.tlsa_data(self.__class__.good[0], 1, 1))]
        dns = self.dns(self.zone("ok.test", [(10, "mx1.d.test", "127.0.0.2")],
                                 {"mx1.d.test": ok}), secure={"ok.test", "d.test"})
        d = self.daemon(dns)
        send(d, ["a@ok.test"])
        wait_acct(d, "delivery", "a@ok.test")
        self.assertEqual(d.request({"cmd": "tlsrpt"})["domains"], [])
        self.assertEqual(len(p.messages()), 1)
        d.stop()


if __name__ == "__main__":
    st.main()
