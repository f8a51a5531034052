#!/usr/bin/python3
"""The tls_failure record (issue #14, docs/records.md): a TLS failure or a
TLS policy not met writes one record with the policy, what sluice did
about it and the reason, validated against its schema in docs/records.md.

- tls_policy verify and a server whose certificate nobody trusts (our sink
  with a generated self-signed one): policy "verify", action "deferred",
  a reason naming the certificate; nothing is delivered;
- tls_policy required and a server without STARTTLS: policy "required",
  action "deferred".

Env: SLUICE_BUILD (binaries), SLUICE_SRC.
"""
import os
import sys
import unittest

import jsonschema

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sluicetest as st  # noqa: E402
from test_records import load_schemas  # noqa: E402


class TlsFailureRecordTest(unittest.TestCase):

    def check_schema(self, rec):
        schemas, store = load_schemas()
        s = schemas["acct/tls_failure"]
        v = jsonschema.Draft202012Validator(
            s, resolver=jsonschema.RefResolver.from_schema(s, store=store))
        errors = list(v.iter_errors(rec))
        self.assertEqual(errors, [], rec)

    def run_case(self, sink_args, policy):
        tmp = st.make_tmpdir("tlsrec-")
        sink = st.Sink(*[a.replace("TMP", tmp) for a in sink_args])
        self.addCleanup(sink.stop)
        d = st.wire_daemon({"a.example": sink.port},
                           delivery='    tls_policy {\n        "a.example" = %s;\n    }\n'
                                    % policy)
        self.addCleanup(d.close)
        d.start()
        with d.smtp() as s:
            s.sendmail("sender@example.com", ["tina@a.example"],
                       "From: sender@example.com\r\n\r\nbody\r\n")
        st.wait_acct(d, "transient", "tina@a.example")
        recs = st.wait_acct(d, "tls_failure")
        d.stop()
        self.assertEqual(sink.messages(), [])
        return recs

    def test_verify_untrusted_certificate(self):
        recs = self.run_case(["--tls-generate", "TMP/tls"], "verify")
        r = recs[0]
        self.check_schema(r)
        self.assertEqual((r["policy"], r["action"], r["domain"], r["mx_ip"], r["vmta"]),
                         ("verify", "deferred", "a.example", "127.0.0.1", "default"))
        self.assertRegex(r["reason"], r"(?i)certificate")

    def test_required_without_starttls(self):
        recs = self.run_case(["--no-starttls"], "required")
        r = recs[0]
        self.check_schema(r)
        self.assertEqual((r["policy"], r["action"]), ("required", "deferred"))
        self.assertIn("STARTTLS not offered", r["reason"])


if __name__ == "__main__":
    st.main()
