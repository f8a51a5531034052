#!/usr/bin/python3
"""The HTTP API's operator side (docs/http-api.md), from the outside:

- /api/admin/v1/<verb> answers with the control socket's JSON for the same
  request; read verbs take a read token, changing verbs an admin one (403
  otherwise), an unknown verb is 404; a suspend made over HTTP is what
  `sluicectl suspended` shows;
- GET /metrics on the API port needs a read token and parses;
- HTTP basic against smtp.auth.users may inject, a wrong password is 401;
- curl injects over HTTPS (http.tls = true, smtp.tls's certificate);
- `sluiced --hash-token` prints a token whose entry the daemon accepts.

Env: SLUICE_BUILD (binaries), SLUICE_SRC.
"""
import base64
import json
import os
import re
import ssl
import subprocess
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sluicetest as st  # noqa: E402

INJ = "tok-inject-0123456789abcdef"
READ = "tok-read-0123456789abcdef"
ADMIN = "tok-admin-0123456789abcdef"
SIMPLE = {"envelope_sender": "s@s.example", "recipients": [{"email": "a@example.test"}],
          "content": {"from": {"email": "s@s.example"}, "subject": "x", "text_body": "x"}}


def alice_hash():
    """crypt(3) SHA-512 of "s3cret", as an operator makes one."""
    r = st.run(["openssl", "passwd", "-6", "-salt", "abcdefgh", "s3cret"])
    return r.out.strip()


class HttpAdmin(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.port = st.free_port()
        cls.d = st.Daemon(extra_conf=st.http_conf(cls.port),
                          smtp_extra='    auth { users { alice = "%s"; } }\n' % alice_hash())
        os.chmod(cls.d.conf_path, 0o640)  # it holds password hashes
        cls.d.start()

    @classmethod
    def tearDownClass(cls):
        cls.d.close()

    def call(self, method, verb, body=None, token=READ):
        return st.http_json(self.port, method, "/api/admin/v1/" + verb, body, token)

    def test_read_verbs_answer_like_the_control_socket(self):
        s, h, ans = self.call("GET", "status")
        self.assertEqual(s, 200, ans)
        ctl = self.d.request({"cmd": "status"})
        self.assertEqual(set(ans), set(ctl))
        self.assertEqual(ans["hostname"], "sluice.test")
        self.assertEqual(ans["pid"], ctl["pid"])
        s, _, ans = self.call("POST", "list", {"limit": 5})
        self.assertEqual(s, 200, ans)
        self.assertEqual(set(ans), set(self.d.request({"cmd": "list", "limit": 5})))
        # the admin scope includes read
        self.assertEqual(self.call("GET", "queues", token=ADMIN)[0], 200)

    def test_changing_verbs_need_admin(self):
        body = {"domain": "held.example"}
        s, _, ans = self.call("POST", "suspend", body, token=READ)
        self.assertEqual((s, ans["error"]["code"]), (403, "forbidden"))
        s, _, ans = self.call("POST", "suspend", body, token=INJ)
        self.assertEqual(s, 403)
        self.assertNotIn("held.example", self.d.ctl("suspended").out)
        s, _, ans = self.call("POST", "suspend", body, token=ADMIN)
        self.assertEqual(s, 200, ans)
        self.assertTrue(ans["ok"])
        self.assertIn("held.example", self.d.ctl("suspended").out)
        s, _, ans = self.call("POST", "resume", body, token=ADMIN)
        self.assertEqual(s, 200, ans)
        self.assertNotIn("held.example", self.d.ctl("suspended").out)
        # a handler's own refusal is the control socket's answer, with 422
        s, _, ans = self.call("POST", "inspect", {"id": "not-an-id"})
        self.assertEqual(s, 422, ans)
        self.assertEqual(ans["ok"], False)
        self.assertEqual(ans, self.d.request({"cmd": "inspect", "id": "not-an-id"}))

    def test_unknown_verbs_and_methods(self):
        s, _, ans = self.call("GET", "nosuchverb", token=ADMIN)
        self.assertEqual((s, ans["error"]["code"]), (404, "unknown_verb"))
        s, _, ans = self.call("GET", "nosuchverb", token=READ)  # unknown = admin scope
        self.assertEqual(s, 403)
        s, h, ans = self.call("DELETE", "status")
        self.assertEqual((s, ans["error"]["code"]), (405, "method_not_allowed"))
        self.assertEqual(h["allow"], "GET, POST")
        s, _, ans = st.http_json(self.port, "GET", "/nothing", token=READ)
        self.assertEqual((s, ans["error"]["code"]), (404, "not_found"))
        s, _, ans = st.http_json(self.port, "GET", "/api/inject/v1", token=INJ)
        self.assertEqual(s, 405)

    def test_metrics_needs_read(self):
        s, _, _ = st.http_call(self.port, "GET", "/metrics")
        self.assertEqual(s, 401)
        s, _, _ = st.http_call(self.port, "GET", "/metrics", token=INJ)
        self.assertEqual(s, 403)
        s, h, body = st.http_call(self.port, "GET", "/metrics", token=READ)
        self.assertEqual(s, 200)
        self.assertTrue(h["content-type"].startswith("text/plain; version=0.0.4"))
        from prometheus_client import parser
        names = {f.name for f in parser.text_string_to_metric_families(body.decode())}
        self.assertIn("sluice_queue_messages", names)

    def test_basic_auth_against_smtp_users(self):
        good = "Basic " + base64.b64encode(b"alice:s3cret").decode()
        bad = "Basic " + base64.b64encode(b"alice:wrong").decode()
        s, _, ans = st.http_json(self.port, "POST", "/api/inject/v1", SIMPLE,
                                 headers={"Authorization": good})
        self.assertEqual(s, 200, ans)
        self.assertEqual(ans["success_count"], 1)
        # the accounting record names the user, as for SMTP AUTH
        rec = st.wait_for(lambda: [r for r in self.d.accounting() if r["type"] == "received"
                                   and r["msgid"] == ans["message_ids"][0]], 30,
                          what="the received record")
        self.assertEqual((rec[0]["auth_user"], rec[0]["client_ip"]), ("alice", "127.0.0.1"))
        s, h, ans = st.http_json(self.port, "POST", "/api/inject/v1", SIMPLE,
                                 headers={"Authorization": bad})
        self.assertEqual((s, ans["error"]["code"]), (401, "unauthorized"))
        # basic grants inject only
        s, _, _ = st.http_json(self.port, "GET", "/api/admin/v1/status",
                               headers={"Authorization": good})
        self.assertEqual(s, 403)


class HttpTokensReload(unittest.TestCase):
    def test_reload_changes_tokens_at_once(self):
        port = st.free_port()
        old, new = "tok-old-0123456789abcdef", "tok-new-0123456789abcdef"
        d = st.Daemon(extra_conf=st.http_conf(port, tokens={old: "read"}))
        self.addCleanup(d.close)
        d.start()
        self.assertEqual(st.http_call(port, "GET", "/api/admin/v1/status", token=old)[0], 200)
        self.assertEqual(st.http_call(port, "GET", "/api/admin/v1/status", token=new)[0], 401)
        with open(d.conf_path) as f:
            conf = f.read()
        with open(d.conf_path, "w") as f:
            f.write(conf.replace(st.http_conf(port, tokens={old: "read"}),
                                 st.http_conf(port, tokens={new: "read"})))
        r = d.ctl("--json", "reload")
        self.assertEqual(r.rc, 0, r.err)
        self.assertIn("http.tokens", json.loads(r.out)["applied"])
        self.assertEqual(st.http_call(port, "GET", "/api/admin/v1/status", token=new)[0], 200)
        self.assertEqual(st.http_call(port, "GET", "/api/admin/v1/status", token=old)[0], 401)


class HttpTlsAndTools(unittest.TestCase):
    def test_curl_over_https_and_hash_token(self):
        r = st.run([st.SLUICED, "--hash-token", "inject,read"])
        self.assertEqual(r.rc, 0, r.err)
        m = re.search(r"^token: ([0-9a-f]{64})$", r.out, re.M)
        e = re.search(r'^http\.tokens entry: name = "(inject,read:[0-9a-f]{64})";$', r.out, re.M)
        self.assertTrue(m and e, r.out)
        bad = st.run([st.SLUICED, "--hash-token", "root"])
        self.assertEqual(bad.rc, 2)
        port = st.free_port()
        conf = ('http {\n    listen = "127.0.0.1:%d";\n    tls = true;\n'
                '    tokens { platform = "%s"; }\n}\n' % (port, e.group(1)))
        d = st.Daemon(extra_conf=conf)
        self.addCleanup(d.close)
        d.start()
        body = json.dumps(SIMPLE)
        out = subprocess.run(
            ["curl", "-sS", "--cacert", d.cert, "--resolve", "sluice.test:%d:127.0.0.1" % port,
             "-H", "Authorization: Bearer " + m.group(1), "-H", "Content-Type: application/json",
             "--data-binary", body, "-w", "\n%{http_code}",
             "https://sluice.test:%d/api/inject/v1" % port],
            capture_output=True, text=True, timeout=60)
        self.assertEqual(out.returncode, 0, out.stderr)
        text, code = out.stdout.rsplit("\n", 1)
        self.assertEqual(code, "200", text)
        ans = json.loads(text)
        self.assertEqual(ans["success_count"], 1)
        listing = d.request({"cmd": "list"})
        self.assertEqual([x["id"] for x in listing["messages"]], ans["message_ids"])
        # the stored message says it came over HTTPS
        raw = d.request({"cmd": "inspect", "id": ans["message_ids"][0]})
        self.assertTrue(raw["ok"], raw)
        self.assertIn("proto=http", d.stderr())
        # plain HTTP to the TLS port gets no answer
        ctx = ssl.create_default_context(cafile=d.cert)
        ctx.check_hostname = False
        s, _, ans = st.http_json(port, "GET", "/api/admin/v1/status", token=m.group(1),
                                 tls_context=ctx)
        self.assertEqual(s, 200, ans)
        with self.assertRaises(Exception):
            st.http_call(port, "GET", "/api/admin/v1/status", token=m.group(1), timeout=5)


if __name__ == "__main__":
    st.main()
