#!/usr/bin/python3
"""The HTTP injection API (POST /api/inject/v1, docs/http-api.md), checked
from the outside with Python's http.client and email packages:

- a 1,000-recipient request with per-recipient substitutions arrives at the
  sink as 1,000 messages that Python's email package parses back: the
  substituted subject (RFC 2047), text (quoted-printable), HTML (escaped
  values), the attachment's bytes, To, Message-ID, Date, no line over 998;
- recipients without substitutions share one message;
- every malformed request in a table gets its status, stable error code
  and field, and nothing is queued;
- kill -9 right after a 200 loses none of the acknowledged messages;
- the spool's high water refuses an injection with 503 and Retry-After
  when SMTP answers 452 for the same reason; the per-client rate gives 429.

Env: SLUICE_BUILD (binaries), SLUICE_SRC.
"""
import base64
import email
import email.policy
import os
import sys
import threading
import unittest

import jsonschema

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sluicetest as st  # noqa: E402
from test_records import load_schemas  # noqa: E402

SCHEMAS, STORE = load_schemas()


def check_answer(status, ans):
    """Validate an injection answer against docs/records.md's schema."""
    name = "http/inject" if status == 200 else "http/error"
    registry = jsonschema.RefResolver.from_schema(SCHEMAS[name], store=STORE)
    jsonschema.Draft202012Validator(SCHEMAS[name], resolver=registry).validate(ans)

INJ = "tok-inject-0123456789abcdef"
READ = "tok-read-0123456789abcdef"
ATTACHMENT = bytes(range(256)) * 20  # every byte value, 5 KiB
LONG_SUBJECT = "Ünïcödé sübjéct, lóng enough to need several encoded words " * 4


def builder(**kw):
    c = {"from": {"email": "news@s.example", "name": "Ñews Désk"},
         "subject": "Hello {{ first }} – ünïcode",
         "text_body": "Dear {{ first }},\nyour code is {{ code }}.\n" + "x" * 120 + "\n",
         "html_body": "<p>Dear {{ first }}, code <b>{{ code }}</b></p>",
         "headers": {"X-Campaign": "{{ campaign }}"}}
    c.update(kw)
    return c


def crlf(text):
    """A decoded body with the message's CRLF line ends as "\\n"."""
    return text.replace("\r\n", "\n")


class HttpInject(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.sink = st.Sink()
        cls.http_port = st.free_port()
        cls.d = st.Daemon(routes={"example.test": "127.0.0.1:%d" % cls.sink.port},
                          extra_conf=st.http_conf(cls.http_port, "    max_body = 1M;\n"))
        cls.d.start()

    @classmethod
    def tearDownClass(cls):
        try:
            cls.d.close()
        finally:
            cls.sink.stop()

    def inject(self, body, token=INJ, **kw):
        s, h, ans = st.http_json(self.http_port, "POST", "/api/inject/v1", body, token, **kw)
        check_answer(s, ans)
        return s, h, ans

    def test_1000_recipients_with_substitutions(self):
        n = 1000
        rcpts = [{"email": "u%04d@example.test" % i, "name": "User %d" % i,
                  "substitutions": {"first": "Ann <%d> & \"co\"" % i, "code": i * 7}}
                 for i in range(n)]
        body = {"envelope_sender": "bounces@s.example", "recipients": rcpts,
                "substitutions": {"campaign": "spring"},
                "content": builder(attachments=[{
                    "content_type": "application/octet-stream", "file_name": "data.bin",
                    "base64": base64.b64encode(ATTACHMENT).decode()}])}
        status, _, ans = self.inject(body)
        self.assertEqual(status, 200, ans)
        self.assertEqual((ans["success_count"], ans["fail_count"]), (n, 0))
        self.assertEqual((ans["failed_recipients"], ans["errors"]), ([], []))
        self.assertEqual(len(set(ans["message_ids"])), n)
        msgs = self.sink.wait_messages(n, timeout=240)
        by_rcpt = {}
        for env, raw in msgs:
            rc = env.get("rcpts") or env.get("rcpt")
            rc = rc if isinstance(rc, list) else [rc]
            self.assertEqual(len(rc), 1, "one recipient per personalised message")
            by_rcpt[rc[0]] = raw
        self.assertEqual(sorted(by_rcpt), sorted(r["email"] for r in rcpts))
        for i in range(n):
            raw = by_rcpt["u%04d@example.test" % i]
            for line in raw.split(b"\r\n"):
                self.assertLessEqual(len(line), 998)
            m = email.message_from_bytes(raw, policy=email.policy.default)
            first = "Ann <%d> & \"co\"" % i
            self.assertEqual(str(m["Subject"]), "Hello %s – ünïcode" % first)
            self.assertEqual(m["To"].addresses[0].addr_spec, "u%04d@example.test" % i)
            self.assertEqual(m["To"].addresses[0].display_name, "User %d" % i)
            self.assertEqual(m["From"].addresses[0].display_name, "Ñews Désk")
            self.assertEqual(str(m["X-Campaign"]), "spring")
            self.assertIsNotNone(m["Date"].datetime)
            self.assertRegex(str(m["Message-ID"]), r"^<[0-9A-F]{16}\.\d+@sluice\.test>$")
            self.assertEqual(m.get_content_type(), "multipart/mixed")
            alt, att = m.get_payload()
            self.assertEqual(alt.get_content_type(), "multipart/alternative")
            text, html = alt.get_payload()
            self.assertEqual(crlf(text.get_content()),
                             "Dear %s,\nyour code is %d.\n%s\n" % (first, i * 7, "x" * 120))
            self.assertEqual(crlf(html.get_content()),
                             "<p>Dear Ann &lt;%d&gt; &amp; &quot;co&quot;, code <b>%d</b></p>\n"
                             % (i, i * 7))
            self.assertEqual(text["Content-Transfer-Encoding"], "7bit")
            self.assertEqual(att.get_filename(), "data.bin")
            self.assertEqual(att.get_content(), ATTACHMENT)

    def test_shared_message_when_nothing_differs(self):
        rcpts = [{"email": "shared%d@example.test" % i} for i in range(3)]
        body = {"envelope_sender": "s@s.example", "recipients": rcpts,
                "content": {"from": {"email": "s@s.example"}, "subject": LONG_SUBJECT,
                            "text_body": "Ünïcode body\n",
                            "headers": {"X-Words": " ".join(["word"] * 100)}}}
        status, _, ans = self.inject(body)
        self.assertEqual(status, 200, ans)
        self.assertEqual(ans["success_count"], 3)
        self.assertEqual(len(ans["message_ids"]), 1)

        def got():
            for env, raw in self.sink.messages():
                rc = env.get("rcpts") or []
                if "shared0@example.test" in rc:
                    return env, raw
            return None
        env, raw = st.wait_for(got, 60, what="the shared message")
        self.assertEqual(sorted(env["rcpts"]), sorted(r["email"] for r in rcpts))
        m = email.message_from_bytes(raw, policy=email.policy.default)
        self.assertEqual(str(m["To"]), "undisclosed-recipients:;")
        # long headers: RFC 2047 words and folding keep every header line
        # within 78 columns (RFC 5322 §2.1.1), and they parse back whole
        self.assertEqual(str(m["Subject"]), LONG_SUBJECT)
        self.assertEqual(str(m["X-Words"]), " ".join(["word"] * 100))
        head = raw.split(b"\r\n\r\n", 1)[0]
        for line in head.split(b"\r\n")[2:]:  # after the Received header
            self.assertLessEqual(len(line), 78, line)
        self.assertEqual(m["Content-Transfer-Encoding"], "quoted-printable")
        self.assertEqual(crlf(m.get_content()), "Ünïcode body\n")

    def test_raw_content_with_substitution(self):
        body = {"envelope_sender": "s@s.example",
                "recipients": [{"email": "raw@example.test", "substitutions": {"who": "Bob"}}],
                "content": "From: s@s.example\nTo: raw@example.test\nSubject: raw\n\n"
                           "Hi {{ who }} from {{ where | default(\"here\") }}\n"}
        status, _, ans = self.inject(body)
        self.assertEqual(status, 200, ans)

        def got():
            for env, raw in self.sink.messages():
                if env.get("rcpts") == ["raw@example.test"]:
                    return raw
            return None
        raw = st.wait_for(got, 60, what="the raw message")
        m = email.message_from_bytes(raw, policy=email.policy.default)
        self.assertEqual(crlf(m.get_content()), "Hi Bob from here\n")
        self.assertIsNotNone(m["Message-ID"])
        self.assertIsNotNone(m["Date"])
        self.assertNotIn(b"\n", raw.replace(b"\r\n", b""), "bare LF")

    def test_bad_requests_queue_nothing(self):
        before = self.d.status()["queue"]["received"]
        ok_rcpt = [{"email": "x@example.test"}]
        good = {"envelope_sender": "s@s.example", "recipients": ok_rcpt,
                "content": {"from": {"email": "s@s.example"}, "text_body": "hi"}}

        def variant(**kw):
            b = dict(good)
            b.update(kw)
            return {k: v for k, v in b.items() if v is not None}
        big = "y" * (1024 * 1024 + 16 * 1024)  # over max_body, under h2o's own limit
        table = [
            # name, body, token, content type, status, code, field
            ("not json", "{nope", INJ, "application/json", 400, "bad_json", None),
            ("trailing garbage", '{"a":1} x', INJ, "application/json", 400, "bad_json", None),
            ("not an object", [1, 2], INJ, "application/json", 422, "wrong_type", None),
            ("no sender", variant(envelope_sender=None), INJ, "application/json", 422,
             "missing_field", "envelope_sender"),
            ("no recipients", variant(recipients=None), INJ, "application/json", 422,
             "missing_field", "recipients"),
            ("empty recipients", variant(recipients=[]), INJ, "application/json", 422,
             "missing_field", "recipients"),
            ("no content", variant(content=None), INJ, "application/json", 422,
             "missing_field", "content"),
            ("bad sender", variant(envelope_sender="no-at-sign"), INJ, "application/json",
             422, "bad_address", "envelope_sender"),
            ("bad recipient", variant(recipients=ok_rcpt + [{"email": "a b@c"}]), INJ,
             "application/json", 422, "bad_address", "recipients[1].email"),
            ("recipients not a list", variant(recipients="x@example.test"), INJ,
             "application/json", 422, "wrong_type", "recipients"),
            ("email a number", variant(recipients=[{"email": 5}]), INJ, "application/json",
             422, "wrong_type", "recipients[0].email"),
            ("unknown field", variant(sendr="x"), INJ, "application/json", 422,
             "unknown_field", "sendr"),
            ("unknown recipient field", variant(recipients=[{"email": "x@example.test",
                                                             "nmae": "x"}]),
             INJ, "application/json", 422, "unknown_field", "recipients[0].nmae"),
            ("substitution an object", variant(substitutions={"a": {"b": 1}}), INJ,
             "application/json", 422, "wrong_type", "substitutions.a"),
            # a recipient's fields checked after its address (the path is
            # formatted only for an error: these pin each field's name)
            ("recipient substitution a list",
             variant(recipients=ok_rcpt * 2 + [{"email": "y@example.test",
                                                "substitutions": {"code": [1]}}]),
             INJ, "application/json", 422, "wrong_type", "recipients[2].substitutions.code"),
            ("recipient name with a newline",
             variant(recipients=ok_rcpt + [{"email": "y@example.test", "name": "a\nBcc: b"}]),
             INJ, "application/json", 422, "bad_value", "recipients[1].name"),
            ("recipient not an object", variant(recipients=ok_rcpt + ["y@example.test"]), INJ,
             "application/json", 422, "wrong_type", "recipients[1]"),
            ("recipient without email", variant(recipients=ok_rcpt * 3 + [{"name": "n"}]), INJ,
             "application/json", 422, "missing_field", "recipients[3].email"),
            ("undefined placeholder",
             variant(content={"from": {"email": "s@s.example"}, "subject": "{{ nope }}",
                              "text_body": "hi"}),
             INJ, "application/json", 422, "undefined_placeholder", "content.subject"),
            ("bad placeholder",
             variant(content={"from": {"email": "s@s.example"}, "text_body": "{{ a b }}"}),
             INJ, "application/json", 422, "bad_template", "content.text_body"),
            ("no body", variant(content={"from": {"email": "s@s.example"}}), INJ,
             "application/json", 422, "missing_field", "content.text_body"),
            ("no from", variant(content={"text_body": "x"}), INJ, "application/json", 422,
             "missing_field", "content.from"),
            ("header with a newline",
             variant(content={"from": {"email": "s@s.example"}, "text_body": "x",
                              "headers": {"X-A": "a\r\nBcc: evil@x.test"}}),
             INJ, "application/json", 422, "bad_header", "content.headers.X-A"),
            ("reserved header",
             variant(content={"from": {"email": "s@s.example"}, "text_body": "x",
                              "headers": {"Content-Type": "text/html"}}),
             INJ, "application/json", 422, "reserved_header", "content.headers.Content-Type"),
            ("bad base64",
             variant(content={"from": {"email": "s@s.example"}, "text_body": "x",
                              "attachments": [{"content_type": "text/plain",
                                               "base64": "!!!"}]}),
             INJ, "application/json", 422, "bad_base64", "content.attachments[0].base64"),
            ("raw without a header", variant(content="just text"), INJ, "application/json",
             422, "bad_content", "content"),
            ("too many recipients",
             variant(recipients=[{"email": "r%d@example.test" % i} for i in range(10001)]),
             INJ, "application/json", 422, "too_many_recipients", "recipients"),
            ("deferred_until past queue.max_age", variant(deferred_until="2099-01-01T00:00:00Z"),
             INJ, "application/json", 422, "bad_value", "deferred_until"),
            ("deferred_until not RFC 3339", variant(deferred_until="tomorrow"), INJ,
             "application/json", 422, "bad_value", "deferred_until"),
            ("priority out of range", variant(priority=101), INJ, "application/json", 422,
             "bad_value", "priority"),
            ("priority a string", variant(priority="high"), INJ, "application/json", 422,
             "wrong_type", "priority"),
            ("oversized", '{"envelope_sender": "%s"}' % big, INJ, "application/json", 413,
             "body_too_large", None),
            ("wrong media type", good, INJ, "text/plain", 415, "unsupported_media_type", None),
            ("no token", good, None, "application/json", 401, "unauthorized", None),
            ("unknown token", good, "tok-nobody", "application/json", 401, "unauthorized",
             None),
            ("wrong scope", good, READ, "application/json", 403, "forbidden", None),
        ]
        for name, body, token, ctype, status, code, field in table:
            with self.subTest(name):
                s, h, ans = self.inject(body, token, ctype=ctype)
                self.assertEqual(s, status, ans)
                self.assertEqual(h.get("content-type"), "application/json")
                self.assertEqual(set(ans), {"error"})
                self.assertEqual(ans["error"]["code"], code, ans)
                self.assertEqual(ans["error"]["field"], field, ans)
                self.assertTrue(ans["error"]["message"])
                if status == 401:
                    self.assertIn("Bearer", h.get("www-authenticate", ""))
        self.assertEqual(self.d.status()["queue"]["received"], before, "something was queued")
        s, _, ans = self.inject(good, ctype="application/json; charset=utf-8")
        self.assertEqual(s, 200, ans)  # and the daemon still works


class HttpInjectKill9(unittest.TestCase):
    def test_kill9_after_200_loses_nothing(self):
        port = st.free_port()
        d = st.Daemon(extra_conf=st.http_conf(port))
        self.addCleanup(d.cleanup)
        d.start()
        acked, errors = [], []
        stop = threading.Event()

        def client():
            i = 0
            while not stop.is_set() and i < 2000:
                rc = [{"email": "k%d-%d@example.test" % (i, j), "substitutions": {"n": j}}
                      for j in range(20)]
                body = {"envelope_sender": "s@s.example", "recipients": rc,
                        "content": {"from": {"email": "s@s.example"},
                                    "text_body": "n={{ n }}\n"}}
                try:
                    s, _, ans = st.http_json(port, "POST", "/api/inject/v1", body, INJ,
                                             timeout=30)
                except Exception:  # the daemon died mid-request: not acknowledged
                    return
                if s != 200:
                    errors.append((s, ans))
                    return
                acked.extend(ans["message_ids"])
                i += 1
        t = threading.Thread(target=client)
        t.start()
        st.wait_for(lambda: len(acked) >= 200 or not t.is_alive(), 120,
                    what="200 acknowledged messages")
        d.kill9()
        stop.set()
        t.join(60)
        self.assertEqual(errors, [])
        self.assertGreaterEqual(len(acked), 200)
        d.start()
        listing = d.request({"cmd": "list", "limit": 1000000}, timeout=60)
        queued = {m["id"] for m in listing["messages"]}
        missing = [i for i in acked if i not in queued]
        self.assertEqual(missing, [], "%d acknowledged messages lost" % len(missing))
        d.stop()


class HttpBackpressure(unittest.TestCase):
    def test_high_water_503_like_smtp_452_and_rate_429(self):
        port = st.free_port()
        d = st.Daemon(extra_conf=st.http_conf(port, extra="    rate_per_ip = 3;\n"))
        with open(d.conf_path) as f:
            conf = f.read()
        conf = conf.replace("    map_size = 64M;\n",
                            "    map_size = 16M;\n    max_size = 16M;\n    high_water = 1;\n")
        with open(d.conf_path, "w") as f:
            f.write(conf)
        self.addCleanup(d.close)
        d.start()
        big = {"envelope_sender": "s@s.example", "recipients": [{"email": "b@example.test"}],
               "content": {"from": {"email": "s@s.example"}, "text_body": "z" * 400000}}
        s, _, ans = st.http_json(port, "POST", "/api/inject/v1", big, INJ)
        self.assertEqual(s, 200, ans)
        # the spool is now over 1 % of 16M: SMTP says 452 at MAIL ...
        with d.smtp() as c:
            c.ehlo()
            code, _ = c.mail("s@s.example")
            self.assertEqual(code, 452)
        # ... and HTTP 503 with Retry-After; nothing more is queued
        s, h, ans = st.http_json(port, "POST", "/api/inject/v1", big, INJ)
        self.assertEqual(s, 503, ans)
        self.assertEqual(ans["error"]["code"], "spool_full")
        self.assertGreater(int(h["retry-after"]), 0)
        self.assertEqual(d.status()["queue"]["messages"], 1)
        # 3 requests a second per client: the burst runs out at once
        codes = [st.http_call(port, "GET", "/api/admin/v1/status", token=READ)[0]
                 for _ in range(6)]
        self.assertIn(429, codes)
        s, h, _ = st.http_call(port, "GET", "/api/admin/v1/status", token=READ)
        if s == 429:
            self.assertEqual(h.get("retry-after"), "1")


if __name__ == "__main__":
    st.main()
