#!/usr/bin/python3
"""End-to-end tests of MTA-STS (RFC 8461) at delivery (delivery/mta_sts.c).

Real processes on loopback only: sluiced, sluice-sink (with a certificate
for the MX host names signed by a test CA made here with openssl, or
without STARTTLS), dnsmasq on a free loopback port serving the MX, A and
_mta-sts TXT records of .test domains (every other .test name is NXDOMAIN,
nothing is forwarded: no real domain is ever resolved), and a small HTTPS
server (ssl + http.server) serving the policies at
https://mta-sts.<domain>:<port>/.well-known/mta-sts.txt with a certificate
from the same CA; delivery.mta_sts_port points at it and delivery.ca_file
at the CA. Assertions are on what the sink stored, the accounting log and
the operational log.

Cases: enforce + matching MX + valid certificate (delivered over TLS);
enforce + MX not in the policy (deferred 4.7.5); enforce + no STARTTLS
(deferred, never plaintext); enforce + certificate for another name
(deferred 4.7.5); testing + no STARTTLS (delivered, warned); no TXT record
(opportunistic as before); policy id changed in DNS (the new policy is
fetched); a cached policy past its max_age (fetched again, same id); a
failed fetch (delivered without a policy); a policy served with a
certificate the CA did not sign (not trusted: delivered without it); a
policy host that never answers (held for the 10 s fetch timeout, then
delivered); an explicit tls_policy entry wins (no fetch at all);
delivery.mta_sts = false.
Every process started here is stopped by pid before the test ends.
"""
import http.server
import os
import re
import shutil
import socket
import ssl
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sluicetest as st  # noqa: E402

FAST_QUEUE = 'queue {\n    retry = "1s,1s,2s";\n    retry_jitter = 0;\n    scan_interval = 100ms;\n}\n'

# domain -> (TXT id or None, policy text or None (404), MX host names)
ENFORCE = "version: STSv1\r\nmode: enforce\r\nmx: %s\r\nmax_age: 86400\r\n"
TESTING = "version: STSv1\nmode: testing\nmx: %s\nmax_age: 86400\n"


# ------------------------------------------------------------------ helpers

class TestCA:
    """A CA (openssl) in dir and certificates it signs."""

    def __init__(self, dirname):
        self.dir = dirname
        self.cert = os.path.join(dirname, "ca.crt")
        self.key = os.path.join(dirname, "ca.key")
        st.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2", "-subj",
                "/CN=sluice test CA", "-addext", "basicConstraints=critical,CA:TRUE",
                "-addext", "keyUsage=critical,keyCertSign,cRLSign",
                "-keyout", self.key, "-out", self.cert], timeout=60).check()

    def issue(self, name, dns_names):
        """A certificate for dns_names (subjectAltName), signed by the CA."""
        key = os.path.join(self.dir, name + ".key")
        csr = os.path.join(self.dir, name + ".csr")
        crt = os.path.join(self.dir, name + ".crt")
        ext = os.path.join(self.dir, name + ".ext")
        with open(ext, "w") as f:
            f.write("subjectAltName=%s\nbasicConstraints=critical,CA:FALSE\n"
                    "extendedKeyUsage=serverAuth\n" % ",".join("DNS:" + n for n in dns_names))
        st.run(["openssl", "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                "-nodes", "-subj", "/CN=" + dns_names[0], "-keyout", key, "-out", csr],
               timeout=60).check()
        st.run(["openssl", "x509", "-req", "-in", csr, "-CA", self.cert, "-CAkey", self.key,
                "-CAcreateserial", "-days", "2", "-extfile", ext, "-out", crt],
               timeout=60).check()
        return crt, key


class PolicyServer:
    """HTTPS on 127.0.0.1:port serving policies[domain] for Host
    mta-sts.<domain> (404 when None or absent); counts requests per domain."""

    def __init__(self, cert, key, policies):
        self.policies = dict(policies)
        self.counts = {}
        self.lock = threading.Lock()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                host = (self.headers.get("Host") or "").split(":")[0].lower()
                dom = host[len("mta-sts."):] if host.startswith("mta-sts.") else host
                with outer.lock:
                    outer.counts[dom] = outer.counts.get(dom, 0) + 1
                    text = outer.policies.get(dom)
                if self.path != "/.well-known/mta-sts.txt" or text is None:
                    self.send_error(404)
                    return
                body = text.encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.1},
                                       daemon=True)
        self.thread.start()

    def count(self, domain):
        with self.lock:
            return self.counts.get(domain, 0)

    def set_policy(self, domain, text):
        with self.lock:
            self.policies[domain] = text

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


def send(d, rcpt, subject="mta-sts test"):
    msg = ("From: <sender@s.test>\r\nTo: <%s>\r\nSubject: %s\r\n"
           "Date: Fri, 27 Nov 2026 07:00:00 +0000\r\nMessage-ID: <%s.%f@s.test>\r\n\r\nHello.\r\n"
           % (rcpt, subject, rcpt.replace("@", "."), time.time()))
    with d.smtp() as c:
        c.sendmail("sender@s.test", [rcpt], msg.encode())


def acct(d, type_, rcpt):
    return [r for r in d.accounting() if r.get("type") == type_ and r.get("recipient") == rcpt]


def wait_acct(d, type_, rcpt, n=1, timeout=30):
    return st.wait_for(lambda: len(acct(d, type_, rcpt)) >= n and acct(d, type_, rcpt), timeout,
                       what="%d %s record(s) for %s" % (n, type_, rcpt))


def sink_rcpts(sink):
    return [r for env, _ in sink.messages() for r in env["rcpts"]]


# ------------------------------------------------------------------ tests

class MtaStsTest(unittest.TestCase):
    # domain: (TXT id or None, policy or None, MX host)
    DOMAINS = {
        "a.test": ("a1", ENFORCE % "mx.a.test", "mx.a.test"),
        "b.test": ("b1", ENFORCE % "mx.elsewhere.test", "mx.b.test"),
        "c.test": ("c1", ENFORCE % "*.c.test", "mx.c.test"),
        "d.test": ("d1", TESTING % "mx.d.test", "mx.d.test"),
        "e.test": (None, None, "mx.e.test"),
        "f.test": ("f1", ENFORCE % "mx.f.test", "mx.f.test"),
        "g.test": ("g1", ENFORCE % "mx.g.test", "mx.g.test"),
        "h.test": ("h1", None, "mx.h.test"),
        "i.test": ("i1", ENFORCE % "mx.elsewhere.test", "mx.i.test"),
        "j.test": ("j1", (ENFORCE % "mx.j.test").replace("max_age: 86400", "max_age: 2"),
                   "mx.j.test"),
        "k.test": ("k1", ENFORCE % "mx.elsewhere.test", "mx.k.test"),
    }

    @classmethod
    def setUpClass(cls):
        cls.tmp = st.make_tmpdir("mta-sts-")
        cls.ca = TestCA(cls.tmp)
        # the MX certificate names every MX host but g.test's
        cls.mx_cert = cls.ca.issue("mx", [v[2] for k, v in sorted(cls.DOMAINS.items())
                                          if k != "g.test"])
        cls.web_cert = cls.ca.issue("web", ["mta-sts." + k for k in sorted(cls.DOMAINS)])
        cls.https = PolicyServer(*cls.web_cert, {k: v[1] for k, v in cls.DOMAINS.items()})
        cls.ids = {k: v[0] for k, v in cls.DOMAINS.items()}
        cls.dns = st.Dnsmasq(*cls.dns_opts())

    @classmethod
    def dns_opts(cls):
        opts = ["--local=/test/"]  # other .test names: NXDOMAIN, nothing upstream
        for dom, (_, _, mx) in sorted(cls.DOMAINS.items()):
            opts += ["--mx-host=%s,%s,10" % (dom, mx), "--host-record=%s,127.0.0.1" % mx,
                     "--host-record=mta-sts.%s,127.0.0.1" % dom]
            if cls.ids[dom] is not None:
                # two character-strings: the record is their concatenation
                opts.append("--txt-record=_mta-sts.%s,v=STSv1;,id=%s" % (dom, cls.ids[dom]))
        opts.append("--txt-record=_mta-sts.a.test,v=spf1 -all")  # another record: ignored
        return opts

    @classmethod
    def tearDownClass(cls):
        cls.dns.stop()
        cls.https.stop()
        if not st.keep_tmp():
            shutil.rmtree(cls.tmp, ignore_errors=True)

    def sink(self, *args):
        s = st.Sink(*args, prefix="sts-sink-")
        self.addCleanup(s.stop)
        return s

    def tls_sink(self):
        return self.sink("--tls-cert", self.mx_cert[0], "--tls-key", self.mx_cert[1])

    def daemon(self, sink, extra="", https_port=None):
        d = st.Daemon(routes={}, log_level="info")
        text = d.default_conf("info")
        text = re.sub(r"\n\s*smarthost\s*=[^;\n]*;", "", text)  # MX only
        text = text.replace("delivery {\n", "delivery {\n"
                            '    resolvers = "127.0.0.1:%d";\n    port = %d;\n'
                            '    ca_file = "%s";\n    mta_sts_port = %d;\n%s'
                            % (self.dns.port, sink.port, self.ca.cert,
                               https_port or self.https.port, extra), 1)
        with open(d.conf_path, "w") as f:
            f.write(text + FAST_QUEUE)
        self.addCleanup(d.close)
        d.start()
        return d

    def assert_never_delivered(self, d, sink, rcpt, status="4.7.5", words="MTA-STS"):
        """Three attempts (retry 1s,1s,2s) each deferred with status: the
        retries did not fall back to plaintext or to another MX either."""
        recs = wait_acct(d, "transient", rcpt, n=3)
        for r in recs:
            self.assertEqual(r["status"], status, r)
            self.assertIn(words, r["text"])
        self.assertNotIn(rcpt, sink_rcpts(sink))
        self.assertEqual(acct(d, "delivery", rcpt), [])
        return recs

    # (a)
    def test_enforce_matching_mx_delivered_over_verified_tls(self):
        sink = self.tls_sink()
        d = self.daemon(sink)
        send(d, "alice@a.test")
        env, _ = sink.wait_messages(1)[0]
        self.assertEqual(env["rcpts"], ["alice@a.test"])
        self.assertTrue(env.get("tls"), env)
        rec = wait_acct(d, "delivery", "alice@a.test")[0]
        self.assertTrue(rec["tls"].startswith("TLSv1."), rec)
        self.assertEqual(rec["mx"], "mx.a.test")
        self.assertEqual(rec["mta_sts"], "enforce")
        self.assertEqual(self.https.count("a.test"), 1)
        log = d.stderr()
        self.assertRegex(log, r"to=<alice@a\.test> relay=mx\.a\.test\[127\.0\.0\.1\]:\d+ "
                              r"tls=TLSv1\.\d mta_sts=enforce dsn=2\.\d\.\d status=sent")
        self.assertIn("MTA-STS policy id=a1 mode=enforce", log)
        d.stop()

    # (b)
    def test_enforce_mx_not_in_policy_defers(self):
        sink = self.tls_sink()
        d = self.daemon(sink)
        send(d, "bob@b.test")
        rec = wait_acct(d, "transient", "bob@b.test")[0]
        self.assertEqual(rec["status"], "4.7.5")
        self.assertIn("MTA-STS: no MX host matches the policy", rec["text"])
        self.assertEqual(rec["mta_sts"], "enforce")
        self.assert_never_delivered(d, sink, "bob@b.test", words="no MX host matches")
        d.stop()

    # (c) and (d): a sink without STARTTLS
    def test_enforce_without_starttls_defers_and_testing_delivers(self):
        sink = self.sink("--no-starttls")
        d = self.daemon(sink)
        send(d, "carol@c.test")
        rec = wait_acct(d, "transient", "carol@c.test")[0]
        self.assertEqual(rec["status"], "4.7.5")
        self.assertIn("MTA-STS", rec["text"])
        self.assertIn("STARTTLS not offered", rec["text"])
        send(d, "dan@d.test")
        env, _ = sink.wait_messages(1)[0]
        self.assertEqual(env["rcpts"], ["dan@d.test"])
        self.assertFalse(env.get("tls"))
        rec = wait_acct(d, "delivery", "dan@d.test")[0]
        self.assertFalse(rec["tls"])
        self.assertEqual(rec["mta_sts"], "testing")
        log = d.stderr()
        self.assertRegex(log, r"warn .*d\.test: MTA-STS testing id=d1: mx\.d\.test: "
                              r"STARTTLS not offered \(enforce mode would defer\)")
        self.assertRegex(log, r"to=<dan@d\.test> .* tls=none mta_sts=testing .*status=sent")
        # c.test was never sent in plaintext, not even on a retry
        self.assert_never_delivered(d, sink, "carol@c.test", words="STARTTLS not offered")
        self.assertEqual(sink_rcpts(sink), ["dan@d.test"])
        d.stop()

    # (g): enforce checks the MX certificate's name (PKIX)
    def test_enforce_certificate_for_another_name_defers(self):
        sink = self.tls_sink()
        d = self.daemon(sink)
        send(d, "gus@g.test")
        rec = wait_acct(d, "transient", "gus@g.test")[0]
        self.assertEqual(rec["status"], "4.7.5")
        self.assertIn("MTA-STS", rec["text"])
        self.assert_never_delivered(d, sink, "gus@g.test")
        d.stop()

    # (e), (h), (i): no policy in force, delivered opportunistically
    def test_no_policy_delivers_as_before(self):
        sink = self.tls_sink()
        d = self.daemon(sink, '    tls_policy {\n        "i.test" = opportunistic;\n    }\n')
        for r in ("erin@e.test", "hal@h.test", "ivy@i.test"):
            send(d, r)
        sink.wait_messages(3)
        self.assertEqual(sorted(sink_rcpts(sink)), ["erin@e.test", "hal@h.test", "ivy@i.test"])
        for r in ("erin@e.test", "hal@h.test", "ivy@i.test"):
            rec = wait_acct(d, "delivery", r)[0]
            self.assertTrue(rec["tls"].startswith("TLSv1."), rec)  # opportunistic TLS
            self.assertIsNone(rec["mta_sts"])
        log = d.stderr()
        self.assertNotIn("mta_sts=", log)
        # h.test: the fetch failed (404) -> as if no policy
        self.assertRegex(log, r"h\.test: MTA-STS policy fetch \(id=h1\) failed: .*HTTP status 404")
        self.assertEqual(self.https.count("h.test"), 1)
        # i.test: the explicit tls_policy entry wins, nothing is fetched
        self.assertEqual(self.https.count("i.test"), 0)
        self.assertEqual(self.https.count("e.test"), 0)
        d.stop()

    # max_age: a cached policy is used until it expires, then fetched again
    # although the id in DNS did not change (RFC 8461 5.1)
    def test_policy_fetched_again_after_max_age(self):
        sink = self.tls_sink()
        d = self.daemon(sink)
        send(d, "jo@j.test")
        sink.wait_messages(1)
        rec = wait_acct(d, "delivery", "jo@j.test")[0]
        self.assertEqual(rec["mta_sts"], "enforce")
        self.assertEqual(self.https.count("j.test"), 1)
        fetched_by = time.monotonic()  # the fetch happened before this
        self.assertIn("MTA-STS policy id=j1 mode=enforce max_age=2", d.stderr())
        # Same id, a policy that would refuse j.test's MX: only a new fetch
        # can see it. The wait is the policy's lifetime (max_age 2 s) plus
        # the cached route's (1 s): what is tested is the expiry itself.
        self.https.set_policy("j.test", ENFORCE % "mx.elsewhere.test")
        self.addCleanup(self.https.set_policy, "j.test", self.DOMAINS["j.test"][1])
        time.sleep(max(0.0, fetched_by + 2 + 1.5 - time.monotonic()))
        send(d, "jo2@j.test")
        rec = wait_acct(d, "transient", "jo2@j.test")[0]
        self.assertEqual(rec["status"], "4.7.5")
        self.assertIn("no MX host matches", rec["text"])
        self.assertEqual(self.https.count("j.test"), 2)
        self.assertNotIn("jo2@j.test", sink_rcpts(sink))
        d.stop()

    # the policy host's certificate is not signed by a CA sluice trusts: the
    # policy is not trusted (RFC 8461 3.3), the domain is delivered as if it
    # had none (k.test's policy would refuse its MX)
    def test_untrusted_policy_certificate_is_not_used(self):
        own = st.make_tmpdir("sts-untrusted-")
        self.addCleanup(shutil.rmtree, own, True)
        cert, key = st.make_cert(own, "mta-sts.k.test")  # self-signed, the right name
        untrusted = PolicyServer(cert, key, {"k.test": self.DOMAINS["k.test"][1]})
        self.addCleanup(untrusted.stop)
        sink = self.tls_sink()
        d = self.daemon(sink, https_port=untrusted.port)
        send(d, "kim@k.test")
        sink.wait_messages(1)
        rec = wait_acct(d, "delivery", "kim@k.test")[0]
        self.assertIsNone(rec["mta_sts"])
        self.assertTrue(rec["tls"].startswith("TLSv1."), rec)
        self.assertRegex(d.stderr(), r"k\.test: MTA-STS policy fetch \(id=k1\) failed: .*"
                                     r"certificate")
        self.assertEqual(acct(d, "transient", "kim@k.test"), [])
        d.stop()

    # a policy host that accepts and never answers: the destination is held
    # for the fetch timeout (10 s), then delivered without a policy
    def test_silent_policy_host_times_out(self):
        silent = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        self.addCleanup(silent.close)
        sink = self.tls_sink()
        d = self.daemon(sink, https_port=silent.getsockname()[1])
        t0 = time.monotonic()
        send(d, "al@a.test")
        sink.wait_messages(1, timeout=30)
        held = time.monotonic() - t0
        self.assertGreater(held, 9.0)
        self.assertLess(held, 25.0)
        self.assertRegex(d.stderr(), r"a\.test: MTA-STS policy fetch \(id=a1\) failed: timed out; "
                                     r"delivering without a policy")
        rec = wait_acct(d, "delivery", "al@a.test")[0]
        self.assertTrue(rec["tls"].startswith("TLSv1."), rec)
        d.stop()

    # delivery.mta_sts = false: no lookup, b.test's enforce policy is ignored
    def test_feature_off(self):
        sink = self.tls_sink()
        before = self.https.count("b.test")
        d = self.daemon(sink, "    mta_sts = false;\n")
        send(d, "bea@b.test")
        sink.wait_messages(1)
        rec = wait_acct(d, "delivery", "bea@b.test")[0]
        self.assertTrue(rec["tls"].startswith("TLSv1."), rec)
        self.assertEqual(self.https.count("b.test"), before)
        self.assertNotIn("MTA-STS", d.stderr())
        d.stop()

    # (f)
    def test_policy_id_change_fetches_the_new_policy(self):
        sink = self.tls_sink()
        d = self.daemon(sink)
        send(d, "fay@f.test")
        sink.wait_messages(1)
        wait_acct(d, "delivery", "fay@f.test")
        self.assertEqual(self.https.count("f.test"), 1)
        # the route (DNS TTL 0: kept 1 s) is looked up again, same id:
        # the cached policy serves, no new fetch. (The wait is the route's
        # lifetime in the cache: what is tested here is a timer.)
        time.sleep(1.5)
        send(d, "fay2@f.test")
        sink.wait_messages(2)
        wait_acct(d, "delivery", "fay2@f.test")
        self.assertEqual(self.https.count("f.test"), 1)
        # a new policy (no MX of f.test allowed) under a new id
        self.https.set_policy("f.test", ENFORCE % "mx.elsewhere.test")
        type(self).ids["f.test"] = "f2"
        self.dns.restart(*self.dns_opts())

        def restore():
            self.https.set_policy("f.test", self.DOMAINS["f.test"][1])
            type(self).ids["f.test"] = self.DOMAINS["f.test"][0]
            self.dns.restart(*self.dns_opts())
        self.addCleanup(restore)
        time.sleep(1.5)  # the cached route expires (see above)
        send(d, "fay3@f.test")
        rec = wait_acct(d, "transient", "fay3@f.test")[0]
        self.assertEqual(rec["status"], "4.7.5")
        self.assertIn("no MX host matches", rec["text"])
        self.assertEqual(self.https.count("f.test"), 2)
        self.assertIn("MTA-STS policy id=f2 mode=enforce", d.stderr())
        self.assertNotIn("fay3@f.test", sink_rcpts(sink))
        d.stop()


if __name__ == "__main__":
    st.main()
