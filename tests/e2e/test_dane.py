#!/usr/bin/python3
"""End-to-end tests of DANE for SMTP (RFC 7672) at delivery
(delivery/dane.c, core/base/dns.c, core/base/tls.c).

Real processes on loopback only: sluiced with delivery.dnssec =
"trust-ad" pointed at st.FakeDns (a Python DNS responder: MX, A and TLSA
records, the AD bit set for the zones given as secure, and only to a
query with the EDNS0 DO bit, as a validating resolver does); receivers
are aiosmtpd peers (st.Peer) on 127.0.0.x addresses sharing one port
(delivery.port), presenting certificates made here with the openssl
command line: a test CA (DANE-TA), leaf certificates (DANE-EE), one for
another name, one expired.

Assertions are on what the peers received, on the accounting records
(tls_policy, tls_failure, status) and on the questions the DNS saw.
"""
import os
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sluicetest as st  # noqa: E402
from test_delivery import acct, make_daemon, send, wait_acct  # noqa: E402

FAST_QUEUE = ('queue {\n    retry = "1s,1s,2s";\n    retry_jitter = 0;\n    scan_interval = 100ms;\n'
              '    dsn = false;\n}\n')

EXPIRED = ("20200101000000Z", "20200201000000Z")


class DaneBase(unittest.TestCase):
    """Certificates, peers on 127.0.0.x:port, FakeDns zones and a daemon
    with trust-ad (also used by test_tlsrpt.py); no test of its own."""

    @classmethod
    def setUpClass(cls):
        cls.tmp = st.make_tmpdir("dane-ca-")
        cls.ca = st.DaneCA(cls.tmp)
        ca = cls.ca
        # mx.d.test and friends: one certificate per use
        cls.good = ca.issue("good", ["mx1.d.test", "mx2.d.test"])
        cls.other = ca.issue("other", ["other.example"])
        cls.expired = ca.issue("expired", ["mx1.d.test"], *EXPIRED)
        # one port on several loopback addresses: the MX hosts' port
        cls.port = st.free_port("127.0.0.2")

    def setUp(self):
        self.cleanups = []

    def tearDown(self):
        for fn in reversed(self.cleanups):
            try:
                fn()
            except Exception:
                pass

    def peer(self, ip, cert=None, **kw):
        """A peer on ip:port, with STARTTLS and cert's chain when cert (the
        (crt, key, chain) of DaneCA.issue) is given."""
        if cert is not None:
            kw["starttls"] = "%s:%s" % (cert[2], cert[1])
        p = st.Peer(prefix="dane-peer-", listen="%s:%d" % (ip, self.port), **kw)
        self.cleanups.append(lambda: p.stop(check=False))
        return p

    def dns(self, records, **kw):
        d = st.FakeDns(records, **kw)
        self.cleanups.append(d.stop)
        return d

    def daemon(self, dns, extra="", dnssec="trust-ad", top="", queue=FAST_QUEUE):
        d = make_daemon(delivery='    resolvers = "127.0.0.1:%d";\n    port = %d;\n'
                        '    dnssec = %s;\n%s' % (dns.port, self.port, dnssec, extra),
                        queue=queue + top)
        self.cleanups.append(d.cleanup)
        d.start()
        return d

    def tlsa_name(self, host):
        return "_%d._tcp.%s" % (self.port, host)

    def zone(self, domain, mx, tlsa=None, extra=None):
        """Records of domain: MX hosts [(pref, host, ip)], TLSA per host."""
        r = {(domain, "MX"): [(p, h) for p, h, _ in mx]}
        for _, h, ip in mx:
            r[(h, "A")] = [ip]
        for h, recs in (tlsa or {}).items():
            r[(self.tlsa_name(h), "TLSA")] = recs
        r.update(extra or {})
        return r


class DaneTest(DaneBase):

    # ---------------------------------------------------------------- cases

    def test_dane_ee_match_delivers_and_do_bit_sent(self):
        """DANE-EE(3) SPKI SHA-256 matching the certificate: delivered over
        TLS, the record says tls_policy "dane"; the MX, A and TLSA questions
        carried the DO bit. The certificate is expired and for other names:
        RFC 7672 3.1.1, DANE-EE ignores both."""
        p = self.peer("127.0.0.2", self.expired)
        tl = [(3, 1, 1, st.tlsa_data(self.expired[0], 1, 1))]
        dns = self.dns(self.zone("ee.test", [(10, "mx1.d.test", "127.0.0.2")],
                                 {"mx1.d.test": tl}), secure={"ee.test", "d.test"})
        d = self.daemon(dns)
        send(d, ["a@ee.test"])
        rec = wait_acct(d, "delivery", "a@ee.test")[0]
        self.assertEqual(rec["tls_policy"], "dane", rec)
        self.assertIsNone(rec["tls_failure"], rec)
        self.assertRegex(rec["tls"], r"^TLSv1\.[23]$")
        self.assertEqual(len(p.messages()), 1)
        for q in [("ee.test", "MX"), ("mx1.d.test", "A"), (self.tlsa_name("mx1.d.test"), "TLSA")]:
            self.assertIn(q, dns.do_queries)
        self.assertIn("tls_policy=dane", d.stderr())
        d.stop()

    def test_dane_ee_mismatch_defers(self):
        """A DANE-EE digest that matches nothing: deferred 4.7.5, never
        delivered in plaintext, the record names the failure."""
        p = self.peer("127.0.0.2", self.good)
        tl = [(3, 1, 1, "00" * 32)]
        dns = self.dns(self.zone("bad.test", [(10, "mx1.d.test", "127.0.0.2")],
                                 {"mx1.d.test": tl}), secure={"bad.test", "d.test"})
        d = self.daemon(dns)
        send(d, ["a@bad.test"])
        rec = wait_acct(d, "transient", "a@bad.test")[0]
        self.assertEqual(rec["status"], "4.7.5", rec)
        self.assertEqual(rec["tls_policy"], "dane", rec)
        self.assertEqual(rec["tls_failure"], "validation-failure", rec)
        self.assertIn("DANE", rec["text"])
        # and one tls_failure record for the refused connection (docs/records.md)
        tf = [r for r in acct(d, "tls_failure") if r["mx"] == "mx1.d.test"]
        self.assertTrue(tf, acct(d))
        self.assertEqual((tf[0]["policy"], tf[0]["action"], tf[0]["domain"]),
                         ("dane", "deferred", "bad.test"), tf[0])
        self.assertEqual(p.messages(), [])
        self.assertEqual(acct(d, "delivery"), [])
        d.stop()

    def test_dane_ta_chain_delivers(self):
        """DANE-TA(2) on the CA certificate (selector 0, SHA2-512): the
        server's chain leads to it and the leaf names the MX host."""
        p = self.peer("127.0.0.2", self.good)
        tl = [(2, 0, 2, st.tlsa_data(self.ca.cert, 0, 2)), (1, 1, 1, "11" * 32)]
        dns = self.dns(self.zone("ta.test", [(10, "mx1.d.test", "127.0.0.2")],
                                 {"mx1.d.test": tl}), secure={"ta.test", "d.test"})
        d = self.daemon(dns)
        send(d, ["a@ta.test"])
        rec = wait_acct(d, "delivery", "a@ta.test")[0]
        self.assertEqual(rec["tls_policy"], "dane", rec)
        self.assertEqual(len(p.messages()), 1)
        d.stop()

    def test_dane_ta_name_mismatch_and_expired_defer(self):
        """DANE-TA checks names and dates (RFC 7672 3.2.2): a chain to the
        trust anchor whose leaf names another host, or has expired, is
        refused: 4.7.5 with certificate-host-mismatch / certificate-expired."""
        tl = [(2, 1, 1, st.tlsa_data(self.ca.cert, 1, 1))]
        for cert, dom, failure in ((self.other, "name.test", "certificate-host-mismatch"),
                                   (self.expired, "old.test", "certificate-expired")):
            p = self.peer("127.0.0.2", cert)
            dns = self.dns(self.zone(dom, [(10, "mx1.d.test", "127.0.0.2")],
                                     {"mx1.d.test": tl}), secure={dom, "d.test"})
            d = self.daemon(dns)
            send(d, ["a@" + dom])
            rec = wait_acct(d, "transient", "a@" + dom)[0]
            self.assertEqual((rec["status"], rec["tls_failure"]), ("4.7.5", failure), rec)
            self.assertEqual(p.messages(), [])
            d.stop()
            p.stop(check=False)

    def test_no_starttls_next_mx(self):
        """The first MX offers no STARTTLS behind a TLSA record: it gets no
        MAIL (never plaintext) and the next MX, also DANE, takes the
        message. Alone, such a host defers 4.7.5 starttls-not-supported."""
        plain = self.peer("127.0.0.2", wire=True)
        good = self.peer("127.0.0.3", self.good)
        tl = [(3, 1, 1, st.tlsa_data(self.good[0], 1, 1))]
        recs = self.zone("two.test", [(10, "mx1.d.test", "127.0.0.2"),
                                      (20, "mx2.d.test", "127.0.0.3")],
                         {"mx1.d.test": tl, "mx2.d.test": tl})
        recs.update(self.zone("one.test", [(10, "mx1.d.test", "127.0.0.2")]))
        dns = self.dns(recs, secure={"two.test", "one.test", "d.test"})
        d = self.daemon(dns)
        send(d, ["a@two.test"])
        rec = wait_acct(d, "delivery", "a@two.test")[0]
        self.assertEqual((rec["mx"], rec["tls_policy"]), ("mx2.d.test", "dane"), rec)
        self.assertEqual(len(good.messages()), 1)
        self.assertEqual(plain.messages(), [])
        for w in plain.wires():
            self.assertNotIn(b"MAIL FROM", w)
        self.assertIn("STARTTLS not offered", d.stderr())
        send(d, ["b@one.test"])
        rec = wait_acct(d, "transient", "b@one.test")[0]
        self.assertEqual((rec["status"], rec["tls_policy"], rec["tls_failure"]),
                         ("4.7.5", "dane", "starttls-not-supported"), rec)
        self.assertEqual(plain.messages(), [])
        d.stop()

    def test_insecure_zone_is_opportunistic(self):
        """The same TLSA record without the AD bit (an unsigned zone): no
        DANE, the default policy (opportunistic) - a peer without STARTTLS
        gets the message in plaintext."""
        p = self.peer("127.0.0.2")
        tl = [(3, 1, 1, "00" * 32)]
        recs = self.zone("plain.test", [(10, "mx1.d.test", "127.0.0.2")], {"mx1.d.test": tl})
        # a signed domain whose MX host's address is not secure (RFC 7672
        # 2.2.2): its TLSA record, even a secure one, does not count
        recs.update(self.zone("sec.test", [(10, "mx1.insec.test", "127.0.0.2")],
                              {"mx1.insec.test": tl}))
        dns = self.dns(recs, secure={"sec.test", self.tlsa_name("mx1.insec.test")})
        d = self.daemon(dns)
        send(d, ["a@plain.test"])
        rec = wait_acct(d, "delivery", "a@plain.test")[0]
        self.assertEqual((rec["tls_policy"], rec["tls"]), ("opportunistic", None), rec)
        # an insecure MX answer: no TLSA question at all
        self.assertEqual(dns.count(self.tlsa_name("mx1.d.test"), "TLSA"), 0)
        send(d, ["b@sec.test"])
        rec = wait_acct(d, "delivery", "b@sec.test")[0]
        self.assertEqual((rec["tls_policy"], rec["tls"]), ("opportunistic", None), rec)
        self.assertEqual(dns.count(self.tlsa_name("mx1.insec.test"), "TLSA"), 1)
        self.assertEqual(len(p.messages()), 2)
        d.stop()

    def test_unusable_tlsa_and_off(self):
        """Only PKIX usages (0, 1) or a bad digest length: no usable record,
        opportunistic (RFC 7672 2.2). dnssec = off: no DO bit, no TLSA
        question."""
        p = self.peer("127.0.0.2")
        tl = [(1, 1, 1, "00" * 32), (0, 0, 1, "00" * 32), (3, 1, 1, "00" * 31)]
        recs = self.zone("pkix.test", [(10, "mx1.d.test", "127.0.0.2")], {"mx1.d.test": tl})
        dns = self.dns(recs, secure={"pkix.test", "d.test"})
        d = self.daemon(dns)
        send(d, ["a@pkix.test"])
        rec = wait_acct(d, "delivery", "a@pkix.test")[0]
        self.assertEqual(rec["tls_policy"], "opportunistic", rec)
        d.stop()
        dns2 = self.dns(recs, secure={"pkix.test", "d.test"})
        d = self.daemon(dns2, dnssec="off")
        send(d, ["b@pkix.test"])
        wait_acct(d, "delivery", "b@pkix.test")
        self.assertEqual(dns2.do_queries, [])
        self.assertEqual(dns2.count(self.tlsa_name("mx1.d.test"), "TLSA"), 0)
        self.assertEqual(len(p.messages()), 2)
        d.stop()

    def test_tlsa_servfail_defers_host(self):
        """A TLSA lookup that fails (SERVFAIL, as a bogus answer looks) in a
        signed zone: that host is not used (4.7.5 dnssec-invalid), never
        contacted in plaintext; the next MX (with a good record) is."""
        bad = self.peer("127.0.0.2", wire=True)
        good = self.peer("127.0.0.3", self.good)
        tl = [(3, 1, 1, st.tlsa_data(self.good[0], 1, 1))]
        recs = self.zone("sf.test", [(10, "mx1.d.test", "127.0.0.2"),
                                     (20, "mx2.d.test", "127.0.0.3")], {"mx2.d.test": tl})
        recs.update(self.zone("sf1.test", [(10, "mx1.d.test", "127.0.0.2")]))
        dns = self.dns(recs, secure={"sf.test", "sf1.test", "d.test"},
                       servfail={self.tlsa_name("mx1.d.test")})
        d = self.daemon(dns)
        send(d, ["a@sf.test"])
        rec = wait_acct(d, "delivery", "a@sf.test")[0]
        self.assertEqual(rec["mx"], "mx2.d.test", rec)
        self.assertEqual(len(good.messages()), 1)
        send(d, ["b@sf1.test"])
        rec = wait_acct(d, "transient", "b@sf1.test")[0]
        self.assertEqual((rec["status"], rec["tls_failure"]), ("4.7.5", "dnssec-invalid"), rec)
        self.assertEqual(bad.messages(), [])
        self.assertEqual(bad.wires(), [])  # never connected to
        d.stop()

    def test_dane_wins_over_mta_sts(self):
        """A domain with an MTA-STS policy in enforce mode whose MX host
        has a DANE-EE record and an expired certificate: PKIX (MTA-STS)
        would refuse it, DANE accepts it, and DANE wins for that host (RFC
        8461 2): delivered, tls_policy "dane", mta_sts "enforce". The same
        domain without the AD bit (no DANE): MTA-STS defers 4.7.5 with
        tls_failure certificate-expired and tls_policy "mta-sts"."""
        from test_mta_sts import ENFORCE, PolicyServer
        sts_cert = self.ca.issue("sts", ["mta-sts.both.test", "mta-sts.sts.test"])
        pol = ENFORCE % "mx1.d.test"
        https = PolicyServer(sts_cert[0], sts_cert[1], {"both.test": pol, "sts.test": pol})
        self.cleanups.append(https.stop)
        p = self.peer("127.0.0.2", self.expired)
        tl = [(3, 1, 1, st.tlsa_data(self.expired[0], 1, 1))]
        recs = self.zone("both.test", [(10, "mx1.d.test", "127.0.0.2")], {"mx1.d.test": tl})
        recs.update(self.zone("sts.test", [(10, "mx1.d.test", "127.0.0.2")]))
        for dom in ("both.test", "sts.test"):
            recs[("_mta-sts." + dom, "TXT")] = ["v=STSv1; id=p1"]
            recs[("mta-sts." + dom, "A")] = ["127.0.0.1"]
        dns = self.dns(recs, secure={"both.test", "d.test"})
        d = self.daemon(dns, extra='    ca_file = "%s";\n    mta_sts_port = %d;\n'
                        % (self.ca.cert, https.port))
        send(d, ["a@both.test"])
        rec = wait_acct(d, "delivery", "a@both.test")[0]
        self.assertEqual((rec["tls_policy"], rec["mta_sts"]), ("dane", "enforce"), rec)
        self.assertEqual(len(p.messages()), 1)
        self.assertEqual(https.count("both.test"), 1)  # the policy was fetched all the same
        send(d, ["b@sts.test"])
        rec = wait_acct(d, "transient", "b@sts.test")[0]
        self.assertEqual((rec["status"], rec["tls_policy"], rec["mta_sts"], rec["tls_failure"]),
                         ("4.7.5", "mta-sts", "enforce", "certificate-expired"), rec)
        self.assertEqual(len(p.messages()), 1)
        d.stop()

    def test_config_refuses_remote_resolver(self):
        """trust-ad with a resolver that is not on loopback is refused at
        load, unless forced; without resolvers too."""
        d = st.Daemon()
        self.cleanups.append(d.cleanup)
        base = d.default_conf()
        cases = [('delivery {\n    resolvers = "192.0.2.1";\n    dnssec = trust-ad;\n}\n',
                  "is not on loopback"),
                 ('delivery {\n    dnssec = trust-ad;\n}\n', "needs delivery.resolvers"),
                 ('delivery {\n    dnssec = maybe;\n}\n', 'expected "off" or "trust-ad"')]
        for extra, want in cases:
            with open(d.conf_path, "w") as f:
                f.write(base.replace("delivery {\n", extra.rstrip("}\n") + "\n", 1))
            r = st.run([st.SLUICED, "-c", d.conf_path, "--check-config"])
            self.assertNotEqual(r.rc, 0, extra)
            self.assertIn(want, r.err + r.out, extra)
        with open(d.conf_path, "w") as f:
            f.write(base.replace("delivery {\n", 'delivery {\n    resolvers = "192.0.2.1";\n'
                                 '    dnssec = trust-ad;\n    dnssec_force = true;\n', 1))
        r = st.run([st.SLUICED, "-c", d.conf_path, "--check-config"])
        self.assertEqual(r.rc, 0, r.err)


if __name__ == "__main__":
    st.main()
