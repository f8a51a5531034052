#!/usr/bin/python3
"""An HTTP injection's messages go to the queue thread as one batch
(queue_submit_batch, docs/http-api.md "Durability"); the 200 comes only
once every one of them is committed and synced, even when the batch spans
several write transactions (spool.commit_batch = 300 here, so a request of
1,000 personalised recipients is four transactions).

- kill -9 the moment the 200 of a 1,000-recipient request arrives, start
  again: the queue lists exactly the 1,000 acknowledged message ids, the
  accounting log has their 1,000 "received" records, and once delivery
  resumes the sink gets each of the 1,000 recipients exactly once, each
  with its own substituted body;
- requests on several connections at once, each answered with its own
  message ids and counts, none lost or shared after a kill -9.

Env: SLUICE_BUILD (binaries), SLUICE_SRC.
"""
import os
import re
import sys
import threading
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sluicetest as st  # noqa: E402

INJ = "tok-inject-0123456789abcdef"


def request(tag, n):
    rc = [{"email": "%s-%04d@example.test" % (tag, i),
           "substitutions": {"code": "%s/%d" % (tag, i)}} for i in range(n)]
    return {"envelope_sender": "bounces@s.example", "recipients": rc,
            "content": {"from": {"email": "news@s.example"}, "subject": "batch {{ code }}",
                        "text_body": "code={{ code }}\n" + "filler line\n" * 300}}


def daemon(http_port, sink_port):
    """A daemon whose spool commits at most 300 messages per transaction."""
    d = st.Daemon(routes={"example.test": "127.0.0.1:%d" % sink_port},
                  extra_conf=st.http_conf(http_port, "    max_body = 4M;\n"))
    with open(d.conf_path) as f:
        conf = f.read()
    assert "    map_size = 64M;\n" in conf
    with open(d.conf_path, "w") as f:
        f.write(conf.replace("    map_size = 64M;\n", "    map_size = 256M;\n    commit_batch = 300;\n"))
    return d


class HttpBatchDurable(unittest.TestCase):
    def setUp(self):
        self.sink = st.Sink()
        self.addCleanup(self.sink.stop)
        self.port = st.free_port()
        self.d = daemon(self.port, self.sink.port)
        self.addCleanup(self.d.cleanup)
        self.d.start()
        # delivery held (a hold survives the restart): what is queued is
        # what the spool kept, and nothing is delivered before the kill
        self.d.ctl("suspend", "--all").check()

    def restart_and_deliver(self, acked, want):
        """After the kill -9: the queue holds exactly the acknowledged ids,
        the accounting log has their "received" records with the wanted
        recipients, then every recipient reaches the sink once."""
        self.d.start()
        listing = self.d.request({"cmd": "list", "limit": 1000000}, timeout=60)
        queued = {m["id"] for m in listing["messages"]}
        self.assertEqual(len(queued), len(acked))
        self.assertEqual(queued, set(acked), "the spool after kill -9 != the acknowledged ids")
        received = [r for r in self.d.accounting() if r["type"] == "received"]
        self.assertEqual(sorted(r["msgid"] for r in received), sorted(acked))
        self.assertEqual(sorted(a for r in received for a in r["rcpts"]), sorted(want))
        self.d.ctl("resume", "--all").check()
        msgs = self.sink.wait_messages(len(want), timeout=180)
        got = []
        for env, raw in msgs:
            rc = env.get("rcpts") or env.get("rcpt")
            rc = rc if isinstance(rc, list) else [rc]
            self.assertEqual(len(rc), 1)
            tag, i = re.match(r"(\w+)-(\d+)@", rc[0]).groups()
            self.assertIn(b"\r\ncode=%s/%d\r\n" % (tag.encode(), int(i)), raw)
            got.append(rc[0])
        self.assertEqual(sorted(got), sorted(want), "each recipient exactly once")
        self.d.stop()

    def test_kill9_right_after_the_200_of_1000(self):
        s, _, ans = st.http_json(self.port, "POST", "/api/inject/v1", request("one", 1000),
                                 INJ, timeout=120)
        self.d.kill9()
        self.assertEqual(s, 200, ans)
        self.assertEqual((ans["success_count"], ans["fail_count"]), (1000, 0))
        self.assertEqual(len(set(ans["message_ids"])), 1000)
        self.restart_and_deliver(ans["message_ids"],
                                 ["one-%04d@example.test" % i for i in range(1000)])

    def test_concurrent_requests_then_kill9(self):
        answers, errors = {}, []

        def client(tag):
            try:
                s, _, ans = st.http_json(self.port, "POST", "/api/inject/v1",
                                         request(tag, 400), INJ, timeout=120)
            except Exception as e:  # noqa: BLE001 - reported below
                errors.append((tag, repr(e)))
                return
            if s != 200:
                errors.append((tag, s, ans))
            else:
                answers[tag] = ans
        ts = [threading.Thread(target=client, args=(t,)) for t in ("a", "b", "c", "d")]
        for t in ts:
            t.start()
        for t in ts:
            t.join(150)
        self.d.kill9()
        self.assertEqual(errors, [])
        acked, want = [], []
        for tag, ans in answers.items():
            self.assertEqual((ans["success_count"], ans["fail_count"]), (400, 0))
            self.assertEqual(len(ans["message_ids"]), 400)
            acked.extend(ans["message_ids"])
            want.extend("%s-%04d@example.test" % (tag, i) for i in range(400))
        self.assertEqual(len(set(acked)), 1600, "a message id in two answers")
        self.restart_and_deliver(acked, want)

if __name__ == "__main__":
    st.main()
