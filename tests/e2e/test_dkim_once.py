#!/usr/bin/python3
"""DKIM: a message is signed once, whatever its number of destination
domains and attempts (issue 18, dkim_sign_once).

sluiced signs with RSA-2048 and Ed25519 keys (fresh, `openssl genpkey`) and
delivers one message to two domains, each an aiosmtpd peer
(tests/e2e/peer_smtp.py). The second domain's peer answers the first RCPT
with 451, so that domain gets the message on a retry at least a second
after the first signing. What the peers stored must carry the same
DKIM-Signature fields byte for byte (same t=, same b=: signed once, the
retry did not sign again), and dkimpy (python3-dkim) must verify both
copies with DNS answers made by openssl from the private keys.
Run: SLUICE_BUILD=... /usr/bin/python3 tests/e2e/test_dkim_once.py
"""
import os
import sys
import unittest

import dkim

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sluicetest as st  # noqa: E402
import test_dkim_delivery as tdd  # noqa: E402


class DkimOnce(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        tdd.DkimDelivery.setUpClass.__func__(cls)

    @classmethod
    def tearDownClass(cls):
        tdd.DkimDelivery.tearDownClass.__func__(cls)

    def dnsfunc(self, name, timeout=5):
        return self.records.get(name)

    def peer(self, **kw):
        p = st.Peer(prefix="dkim-once-", **kw)
        self.addCleanup(p.stop)
        return p

    def test_two_domains_and_a_retry_get_one_signing(self):
        pa = self.peer()
        pb = self.peer(rcpt_reply=["*@b.example=1:451 4.3.0 try again later"])
        d = st.Daemon(routes={"a.example": "127.0.0.1:%d" % pa.port,
                              "b.example": "127.0.0.1:%d" % pb.port},
                      extra_conf=tdd.DkimDelivery.dkim_conf(self) + tdd.FAST_QUEUE)
        self.addCleanup(d.close)
        d.start()
        frm, rcpts = "joe@example.com", ["bob@a.example", "ann@b.example"]
        sent = tdd.message(frm, rcpts, b"Hello  there,\t\r\nsigned once. \r\n\r\n")
        with d.smtp(timeout=60) as c:
            c.sendmail(frm, rcpts, sent)
        got = st.wait_for(lambda: len(pa.messages()) >= 1 and len(pb.messages()) >= 1
                          and (pa.messages(), pb.messages()), 60,
                          what="the message at both peers")
        d.wait_queue(0)
        (ra, raw_a), (rb, raw_b) = got[0][0], got[1][0]
        self.assertEqual([r["addr"] for r in ra["rcpts"]], ["bob@a.example"])
        self.assertEqual([r["addr"] for r in rb["rcpts"]], ["ann@b.example"])
        # b.example was refused once, then delivered on its retry
        trans = [r for r in d.accounting() if r.get("type") == "transient"]
        self.assertEqual([r["recipient"] for r in trans], ["ann@b.example"], trans)
        sigs_a, rest_a = tdd.split_signatures(raw_a)
        sigs_b, rest_b = tdd.split_signatures(raw_b)
        self.assertEqual(len(sigs_a), 2, raw_a[:2000])
        self.assertEqual(tdd.strip_received(rest_a), sent)
        self.assertEqual(tdd.strip_received(rest_b), sent)
        # the retry came at least a second later: a new signing would have a
        # later t=; the same fields mean the message was signed once
        self.assertEqual(sigs_b, sigs_a)
        for raw in (raw_a, raw_b):
            for i in range(len(sigs_a)):
                self.assertTrue(dkim.DKIM(raw).verify(idx=i, dnsfunc=self.dnsfunc),
                                "dkimpy rejected signature %d: %r" % (i, raw[:2000]))
        d.stop()


if __name__ == "__main__":
    st.main()
