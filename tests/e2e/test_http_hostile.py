#!/usr/bin/python3
"""The HTTP API against clients that misbehave (docs/http-api.md): none
crashes the daemon or leaves it unable to stop cleanly (every Daemon here
must exit 0 without a sanitizer report).

- a client that disconnects right after sending a 500-recipient injection:
  the messages are committed all the same (as an SMTP client that goes
  before the 250), and the daemon keeps answering;
- a client that disconnects while an admin request waits for the queue
  thread;
- garbage instead of HTTP, a head that never ends, a body shorter than its
  Content-Length: the connection is closed (400 or the timeout), nothing
  queued; of pipelined requests the first is answered;
- SIGTERM while injections are in flight: each client gets its 200 or a
  refusal, never a 200 for messages that are not in the spool after the
  restart.

Env: SLUICE_BUILD (binaries), SLUICE_SRC.
"""
import json
import os
import socket
import sys
import threading
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sluicetest as st  # noqa: E402

INJ = "tok-inject-0123456789abcdef"
READ = "tok-read-0123456789abcdef"


def inject_body(n, tag):
    return json.dumps({
        "envelope_sender": "s@s.example",
        "recipients": [{"email": "%s%d@example.test" % (tag, i), "substitutions": {"i": i}}
                       for i in range(n)],
        "content": {"from": {"email": "s@s.example"}, "subject": "n {{ i }}",
                    "text_body": "body {{ i }}\n"}}).encode()


def raw_request(port, data, read=True, timeout=30):
    """Send raw bytes; return what comes back until the server closes (or
    b"" when read is False: the client closes at once)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        s.sendall(data)
        if not read:
            return b""
        out = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return out
            out += chunk
    finally:
        s.close()


def post(path, body, token, extra=b""):
    return (b"POST %s HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n%s\r\n"
            % (path.encode(), token.encode(), len(body), extra)) + body


class HttpHostile(unittest.TestCase):
    def daemon(self, extra=""):
        port = st.free_port()
        d = st.Daemon(extra_conf=st.http_conf(port, extra))
        self.addCleanup(d.close)
        d.start()
        return d, port

    def test_disconnect_after_sending_an_injection(self):
        d, port = self.daemon()
        raw_request(port, post("/api/inject/v1", inject_body(500, "gone"), INJ), read=False)
        # committed all the same: 500 messages, the log says so
        d.wait_queue(500, timeout=60)
        # an admin request whose client goes while the queue thread works
        raw_request(port, post("/api/admin/v1/list", b'{"limit": 1000}', READ), read=False)
        s, _, ans = st.http_json(port, "GET", "/api/admin/v1/status", token=READ)
        self.assertEqual(s, 200, ans)
        self.assertEqual(ans["queue"]["messages"], 500)

    def test_garbage_and_truncated_requests(self):
        d, port = self.daemon("    timeout = 2s;\n")
        out = raw_request(port, b"\x16\x03\x01 this is not HTTP\r\n\r\n")
        self.assertTrue(out == b"" or out.startswith(b"HTTP/1.1 400"), out[:100])
        # a body shorter than its Content-Length: the timeout closes it
        body = inject_body(3, "short")
        req = post("/api/inject/v1", body, INJ)[:-10]
        out = raw_request(port, req, timeout=30)
        self.assertNotIn(b"200 OK", out)
        # a head that never ends
        out = raw_request(port, b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: 1\r\n", timeout=30)
        self.assertNotIn(b"200 OK", out)
        # pipelined requests: the first is answered, those behind it are
        # answered in order or not at all (h2o 2.2.5 does not always read
        # past an answer that came later: docs/http-api.md), and the
        # connection ends by http.timeout at the latest
        get = b"GET /api/admin/v1/%s HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n\r\n"
        two = (get % (b"status", READ.encode()) + get % (b"nosuch", READ.encode()) +
               b"GET /x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        out = raw_request(port, two)
        codes = [line.split(b" ")[1] for line in out.split(b"\r\n") if line.startswith(b"HTTP/1.1 ")]
        self.assertEqual(codes, [b"200", b"403", b"404"][:len(codes)], out)
        self.assertGreaterEqual(len(codes), 1, out)
        self.assertEqual(d.status()["queue"]["messages"], 0)

    def test_sigterm_with_injections_in_flight(self):
        d, port = self.daemon()
        results, lock = [], threading.Lock()

        def client(k):
            try:
                s, _, ans = st.http_json(port, "POST", "/api/inject/v1",
                                         json.loads(inject_body(200, "t%d-" % k)), INJ,
                                         timeout=60)
            except Exception as e:  # closed by the shutdown: not acknowledged
                s, ans = None, repr(e)
            with lock:
                results.append((s, ans))
        ts = [threading.Thread(target=client, args=(k,)) for k in range(6)]
        for t in ts:
            t.start()
        st.wait_for(lambda: d.status()["queue"]["received"] > 0 or len(results) == 6, 60,
                    what="a first commit")
        d.stop()  # exit 0, no sanitizer report
        for t in ts:
            t.join(60)
        self.assertEqual(len(results), 6)
        acked = [i for s, ans in results if s == 200 for i in ans["message_ids"]]
        for s, ans in results:
            self.assertIn(s, (200, 503, None), ans)
        d.start()
        listing = d.request({"cmd": "list", "limit": 100000}, timeout=60)
        queued = {m["id"] for m in listing["messages"]}
        self.assertEqual([i for i in acked if i not in queued], [])


if __name__ == "__main__":
    st.main()
