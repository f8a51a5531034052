#!/usr/bin/python3
"""End-to-end tests of TLSRPT reports (RFC 8460; queue/tlsrpt_send.c).

After test_tlsrpt.py's run (a DANE host that matches, one that does not,
one without STARTTLS, an opportunistic host), `sluicectl tlsrpt send
--now` sends the reports: st.FakeDns serves the `_smtp._tls` TXT records
(mailto: and https: URIs, an invalid one, none); the mail reports are
delivered through the queue to an aiosmtpd peer (the MX of rua.test), the
HTTPS ones POSTed to a Python HTTPS server with a certificate of the test
CA (delivery.ca_file). Each report, gunzipped, is checked against the JSON
schema of RFC 8460 section 4 (written out below) and its counts against
what the run did; the mail against section 5.3 (multipart/report,
report-type=tlsrpt, application/tlsrpt+gzip, the Subject and TLS-Report-*
fields) and DKIM-signed by the sender domain's key.
"""
import email
import email.policy
import gzip
import http.server
import json
import os
import ssl
import subprocess
import sys
import threading
import unittest
import warnings

import jsonschema

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sluicetest as st  # noqa: E402
from test_tlsrpt import SLOW_QUEUE  # noqa: E402
from test_dane import DaneBase  # noqa: E402
from test_delivery import send, wait_acct  # noqa: E402

# RFC 8460 section 4.4, the report's fields as a JSON Schema: required
# where the RFC says so ("policy-string" and "mx-host" are optional,
# "failure-details" is there when there were failures)
RFC8460_SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "required": ["organization-name", "date-range", "contact-info", "report-id", "policies"],
    "properties": {
        "organization-name": {"type": "string", "minLength": 1},
        "date-range": {
            "type": "object", "required": ["start-datetime", "end-datetime"],
            "properties": {
                "start-datetime": {"type": "string", "format": "date-time",
                                   "pattern": r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$"},
                "end-datetime": {"type": "string", "format": "date-time",
                                 "pattern": r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$"}}},
        "contact-info": {"type": "string", "minLength": 1},
        "report-id": {"type": "string", "minLength": 1},
        "policies": {"type": "array", "minItems": 1, "items": {
            "type": "object", "required": ["policy", "summary"],
            "properties": {
                "policy": {
                    "type": "object", "required": ["policy-type", "policy-domain"],
                    "properties": {
                        "policy-type": {"enum": ["tlsa", "sts", "no-policy-found"]},
                        "policy-string": {"type": "array", "items": {"type": "string"}},
                        "policy-domain": {"type": "string", "minLength": 1},
                        "mx-host": {"type": "array", "items": {"type": "string"}}}},
                "summary": {
                    "type": "object",
                    "required": ["total-successful-session-count", "total-failure-session-count"],
                    "properties": {
                        "total-successful-session-count": {"type": "integer", "minimum": 0},
                        "total-failure-session-count": {"type": "integer", "minimum": 0}}},
                "failure-details": {"type": "array", "items": {
                    "type": "object", "required": ["result-type", "failed-session-count"],
                    "properties": {
                        "result-type": {"enum": [
                            "starttls-not-supported", "certificate-host-mismatch",
                            "certificate-expired", "certificate-not-trusted",
                            "validation-failure", "tlsa-invalid", "dnssec-invalid",
                            "dane-required", "sts-policy-fetch-error", "sts-policy-invalid",
                            "sts-webpki-invalid"]},
                        "sending-mta-ip": {"type": "string"},
                        "receiving-mx-hostname": {"type": "string"},
                        "receiving-mx-helo": {"type": "string"},
                        "receiving-ip": {"type": "string"},
                        "failed-session-count": {"type": "integer", "minimum": 1},
                        "additional-information": {"type": "string"},
                        "failure-reason-code": {"type": "string"}}}}}}}},
}

TLSRPT = ('reports {\n    tlsrpt {\n        organization = "Sluice Test Org";\n'
          '        contact = "mailto:tlsrpt@s.example";\n        sender = "tlsrpt@s.example";\n'
          '    }\n}\n')


class PostServer:
    """HTTPS on localhost:port: records (path, headers, body) of each POST."""

    def __init__(self, cert, key):
        self.posts = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n)
                outer.posts.append((self.path, dict(self.headers), body))
                self.send_response(201)
                self.send_header("Content-Length", "0")
                self.end_headers()

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

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


def check_report(test, raw, domain):
    """Gunzip, parse and validate one report; returns it."""
    rep = json.loads(gzip.decompress(raw))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        jsonschema.Draft202012Validator(
            RFC8460_SCHEMA, format_checker=jsonschema.FormatChecker()).validate(rep)
    test.assertEqual(rep["organization-name"], "Sluice Test Org")
    test.assertEqual(rep["contact-info"], "mailto:tlsrpt@s.example")
    for p in rep["policies"]:
        test.assertEqual(p["policy"]["policy-domain"], domain)
    return rep


class TlsrptReportTest(DaneBase):

    def test_reports_by_mail_and_https(self):
        ca = self.__class__.ca
        web = ca.issue("web", ["localhost"])
        srv = PostServer(web[0], web[1])
        self.cleanups.append(srv.stop)
        keydir = st.make_tmpdir("tlsrpt-dkim-")
        key = os.path.join(keydir, "sel1.pem")
        subprocess.run(["openssl", "genpkey", "-algorithm", "ED25519", "-out", key], check=True,
                       stderr=subprocess.DEVNULL)
        os.chmod(key, 0o600)
        good = self.peer("127.0.0.2", self.__class__.good)
        self.peer("127.0.0.3")
        rua = self.peer("127.0.0.5")
        ok = [(3, 1, 1, st.tlsa_data(self.__class__.good[0], 1, 1))]
        bad = [(3, 1, 1, "00" * 32)]
        recs = {}
        recs.update(self.zone("ok.test", [(10, "mx1.d.test", "127.0.0.2")], {"mx1.d.test": ok}))
        recs.update(self.zone("bad.test", [(10, "mx2.d.test", "127.0.0.2")], {"mx2.d.test": bad}))
        recs.update(self.zone("plain.test", [(10, "mx3.d.test", "127.0.0.3")],
                              {"mx3.d.test": ok}))
        recs.update(self.zone("rua.test", [(10, "mx.rua.test", "127.0.0.5")]))
        url = "https://localhost:%d/tlsrpt" % srv.port
        recs[("_smtp._tls.bad.test", "TXT")] = [
            "v=TLSRPTv1; rua=mailto:reports@rua.test,%s" % url, "v=spf1 -all"]
        recs[("_smtp._tls.ok.test", "TXT")] = ["v=TLSRPTv1;rua=mailto:ok-reports@rua.test"]
        recs[("_smtp._tls.plain.test", "TXT")] = ["v=TLSRPTv1; rua=ftp://x.test/"]
        dns = self.dns(recs, secure={"ok.test", "bad.test", "plain.test", "d.test"})
        dkim = ('dkim {\n    keys {\n        "s.example" { sel1 = "%s"; }\n    }\n}\n' % key)
        d = self.daemon(dns, extra='    ca_file = "%s";\n' % ca.cert, top=TLSRPT + dkim,
                        queue=SLOW_QUEUE)
        for r in ("a@ok.test", "b@bad.test", "c@plain.test"):
            send(d, [r])
        wait_acct(d, "delivery", "a@ok.test")
        wait_acct(d, "transient", "b@bad.test")
        wait_acct(d, "transient", "c@plain.test")
        self.assertEqual(len(good.messages()), 1)
        out = d.ctl("tlsrpt", "send", "--now").check().out
        self.assertIn("3 TLSRPT report(s) being sent", out)
        msgs = rua.wait_messages(2)
        st.wait_for(lambda: srv.posts, 20, what="the HTTPS report")
        by_rcpt = {}
        for rec, raw in msgs:
            by_rcpt[rec["rcpts"][0]["addr"]] = (rec, raw)
        self.assertEqual(set(by_rcpt), {"reports@rua.test", "ok-reports@rua.test"})
        reports = {}
        for addr, dom in (("reports@rua.test", "bad.test"), ("ok-reports@rua.test", "ok.test")):
            rec, raw = by_rcpt[addr]
            self.assertEqual(rec["mail_from"], "tlsrpt@s.example")
            m = email.message_from_bytes(raw, policy=email.policy.compat32)
            self.assertEqual(m.get_content_type(), "multipart/report")
            self.assertEqual(m.get_param("report-type"), "tlsrpt")
            self.assertEqual(m["TLS-Report-Domain"], dom)
            self.assertTrue(m["TLS-Report-Submitter"])
            self.assertRegex(m["Subject"], r"^Report Domain: %s Submitter: \S+ Report-ID: <.+>$"
                             % dom.replace(".", r"\."))
            self.assertIn("d=s.example", m["DKIM-Signature"].replace(" ", "").replace("\r\n", ""))
            parts = m.get_payload()
            self.assertEqual(parts[1].get_content_type(), "application/tlsrpt+gzip")
            self.assertTrue(parts[1].get_filename().endswith(".json.gz"))
            self.assertTrue(parts[1].get_filename().count("!") >= 3)
            reports[dom] = check_report(self, parts[1].get_payload(decode=True), dom)
        path, headers, body = srv.posts[0]
        self.assertEqual(path, "/tlsrpt")
        self.assertEqual(headers.get("Content-Type"), "application/tlsrpt+gzip")
        web_rep = check_report(self, body, "bad.test")
        self.assertEqual(web_rep, reports["bad.test"])  # the same report, both ways
        # counts: what the run did
        okp = reports["ok.test"]["policies"]
        self.assertEqual([(p["policy"]["policy-type"], p["summary"]) for p in okp],
                         [("tlsa", {"total-successful-session-count": 1,
                                    "total-failure-session-count": 0})])
        badp = reports["bad.test"]["policies"]
        self.assertEqual(len(badp), 1)
        self.assertEqual(badp[0]["summary"], {"total-successful-session-count": 0,
                                              "total-failure-session-count": 1})
        fd = badp[0]["failure-details"]
        self.assertRegex(fd[0].pop("failure-reason-code"), r"^DANE: certificate verify: .*TLSA")
        self.assertEqual(fd, [{
            "result-type": "validation-failure", "receiving-mx-hostname": "mx2.d.test",
            "receiving-ip": "127.0.0.2", "failed-session-count": 1}])
        for dom in ("bad.test", "ok.test"):
            self.assertRegex(d.stderr(), r"tlsrpt: %s: report \S+ queued as [0-9A-F]{16} to <"
                             % dom.replace(".", r"\."))
        self.assertIn("posted (HTTP 201)", d.stderr())
        # plain.test's record is no TLSRPT record: dropped, said so
        st.wait_for(lambda: "tlsrpt: plain.test: no usable _smtp._tls record" in d.stderr(), 10,
                    what="the dropped report logged")
        # sent reports leave the spool
        self.assertEqual(d.request({"cmd": "tlsrpt"})["domains"], [])
        d.stop()


if __name__ == "__main__":
    st.main()
