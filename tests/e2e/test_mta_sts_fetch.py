#!/usr/bin/python3
"""End-to-end tests of the MTA-STS policy fetch (delivery/sts_fetch.c on
core/base/http_client.c, libcurl on the delivery thread's loop), as an
operator sees them: what the sink received, the accounting log's mta_sts
and the operational log's reason for a failed fetch.

Real processes on loopback: sluiced, sluice-sink with a certificate for
the MX host names from a test CA, dnsmasq serving the MX, A and
_mta-sts TXT records of .test domains (nothing forwarded), and an HTTPS
server (ssl + http.server) answering each policy host its own way: a
chunked body (accepted), a body over 64 KiB, a redirect (not followed), a
text/html body, and a certificate from a CA that delivery.ca_file does not
name (the fetch refuses it). Each domain's policy would be enforce with an
MX host that does not match: a policy that is applied defers 4.7.5, one
that is refused leaves the domain delivered as without a policy.
Every process started here is stopped by pid before the test ends.
"""
import http.server
import os
import re
import shutil
import ssl
import sys
import threading
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sluicetest as st  # noqa: E402
from test_mta_sts import TestCA, FAST_QUEUE, send, wait_acct  # noqa: E402

# enforce, and no MX of the domain allowed: applied -> 4.7.5, refused -> delivered
POLICY = "version: STSv1\r\nmode: enforce\r\nmx: mx.elsewhere.test\r\nmax_age: 86400\r\n"

# domain -> how its policy host answers
HOW = {
    "chunk.test": "chunked",
    "large.test": "large",
    "moved.test": "redirect",
    "html.test": "html",
    "rogue.test": "plain",  # served with a certificate of another CA (second server)
}


class Policies:
    """HTTPS on 127.0.0.1 (a free port), answering per Host. Counts requests."""

    def __init__(self, cert, key):
        self.counts = {}
        self.lock = threading.Lock()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):
                host = (self.headers.get("Host") or "").split(":")[0].lower()
                dom = host[len("mta-sts."):] if host.startswith("mta-sts.") else host
                with outer.lock:
                    outer.counts[dom] = outer.counts.get(dom, 0) + 1
                how = HOW.get(dom, "plain")
                body = POLICY.encode()
                if how == "redirect":
                    self.send_response(301)
                    self.send_header("Location", "https://mta-sts.chunk.test/.well-known/mta-sts.txt")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if how == "large":
                    body = body + b"# " + b"x" * (64 * 1024) + b"\r\n"
                self.send_response(200)
                self.send_header("Content-Type", "text/html" if how == "html" else "text/plain")
                if how == "chunked":
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    for i in range(0, len(body), 20):
                        part = body[i:i + 20]
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
                    self.wfile.write(b"0\r\n\r\n")
                    return
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
        self.thread = threading.Thread(target=self.httpd.serve_forever,
                                       kwargs={"poll_interval": 0.1}, daemon=True)
        self.thread.start()

    def count(self, domain):
        with self.lock:
            return self.counts.get(domain, 0)

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(10)


class MtaStsFetchTest(unittest.TestCase):
    maxDiff = None

    @classmethod
    def setUpClass(cls):
        cls.tmp = st.make_tmpdir("mta-sts-fetch-")
        cls.ca = TestCA(os.path.join(cls.tmp))
        os.makedirs(os.path.join(cls.tmp, "rogue"))
        cls.rogue_ca = TestCA(os.path.join(cls.tmp, "rogue"))  # not delivery.ca_file
        cls.mx_cert = cls.ca.issue("mx", ["mx.%s" % d for d in sorted(HOW)])
        names = ["mta-sts." + d for d in sorted(HOW)]
        cls.web = Policies(*cls.ca.issue("web", names))
        cls.rogue = Policies(*cls.rogue_ca.issue("rogue", names))
        opts = ["--local=/test/"]
        for i, dom in enumerate(sorted(HOW)):
            opts += ["--mx-host=%s,mx.%s,10" % (dom, dom), "--host-record=mx.%s,127.0.0.1" % dom,
                     "--host-record=mta-sts.%s,127.0.0.1" % dom,
                     "--txt-record=_mta-sts.%s,v=STSv1; id=%s1" % (dom, dom.split(".")[0])]
        cls.dns = st.Dnsmasq(*opts)

    @classmethod
    def tearDownClass(cls):
        cls.dns.stop()
        cls.web.stop()
        cls.rogue.stop()
        if not st.keep_tmp():
            shutil.rmtree(cls.tmp, ignore_errors=True)

    def setUp(self):
        self.cleanups = []

    def tearDown(self):
        for fn in reversed(self.cleanups):
            try:
                fn()
            except Exception:
                pass

    def daemon(self, sink, https_port):
        d = st.Daemon(routes={}, log_level="info")
        text = d.default_conf("info")
        text = re.sub(r"\n\s*smarthost\s*=[^;\n]*;", "", text)  # MX only
        text = text.replace("delivery {\n", "delivery {\n"
                            '    resolvers = "127.0.0.1:%d";\n    port = %d;\n'
                            '    ca_file = "%s";\n    mta_sts_port = %d;\n'
                            % (self.dns.port, sink.port, self.ca.cert, https_port), 1)
        with open(d.conf_path, "w") as f:
            f.write(text + FAST_QUEUE)
        self.cleanups.append(d.cleanup)
        d.start()
        return d

    def sink(self):
        s = st.Sink("--tls-cert", self.mx_cert[0], "--tls-key", self.mx_cert[1],
                    prefix="sts-fetch-sink-")
        self.cleanups.append(s.stop)
        return s

    def test_chunked_policy_is_applied(self):
        sink = self.sink()
        d = self.daemon(sink, self.web.port)
        send(d, "cy@chunk.test")
        rec = wait_acct(d, "transient", "cy@chunk.test")[0]
        self.assertEqual(rec["status"], "4.7.5")
        self.assertEqual(rec["mta_sts"], "enforce")
        self.assertIn("no MX host matches", rec["text"])
        self.assertIn("MTA-STS policy id=chunk1 mode=enforce", d.stderr())
        d.stop()

    def test_refused_policies_leave_the_domain_without_one(self):
        sink = self.sink()
        chunk_before = self.web.count("chunk.test")
        d = self.daemon(sink, self.web.port)
        for r in ("lea@large.test", "mo@moved.test", "hal@html.test"):
            send(d, r)
        sink.wait_messages(3)
        for r in ("lea@large.test", "mo@moved.test", "hal@html.test"):
            rec = wait_acct(d, "delivery", r)[0]
            self.assertIsNone(rec["mta_sts"], rec)
            self.assertTrue(rec["tls"].startswith("TLSv1."), rec)
        log = d.stderr()
        self.assertRegex(log, r"large\.test: MTA-STS policy fetch \(id=large1\) failed: "
                              r".*larger than 65536 bytes; delivering without a policy")
        self.assertRegex(log, r"moved\.test: MTA-STS policy fetch \(id=moved1\) failed: "
                              r".*HTTP status 301 \(redirects are not followed")
        self.assertRegex(log, r"html\.test: MTA-STS policy fetch \(id=html1\) failed: "
                              r".*Content-Type \"text/html\" is not text/plain")
        self.assertEqual(self.web.count("chunk.test"), chunk_before)  # redirect not followed
        d.stop()

    def test_certificate_of_another_ca_is_refused(self):
        sink = self.sink()
        d = self.daemon(sink, self.rogue.port)
        send(d, "ro@rogue.test")
        sink.wait_messages(1)
        rec = wait_acct(d, "delivery", "ro@rogue.test")[0]
        self.assertIsNone(rec["mta_sts"], rec)
        self.assertEqual(self.rogue.count("rogue.test"), 0)  # no request without trust
        self.assertRegex(d.stderr(), r"rogue\.test: MTA-STS policy fetch \(id=rogue1\) failed: "
                                     r".*(certificate|SSL).*; delivering without a policy")
        d.stop()


if __name__ == "__main__":
    unittest.main(verbosity=2)
