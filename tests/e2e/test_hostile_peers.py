#!/usr/bin/python3
"""Hostile receiving side: sluiced delivering to servers that misbehave.

One daemon, short delivery timeouts (2 s each) and a fast retry schedule;
each recipient domain is routed to its own HostileServer (hostile_server.py)
playing one fault on its first connection (or on all of them). For every
case the accounting log must show the right outcome within the configured
timeouts (a transient record with the reason, a bounce for a 5xx, a
delivery for a slow but correct server), the message must then be
delivered when the server behaves (nothing lost), a TLS failure under the
opportunistic policy must fall back to plaintext and say so in the log, a
certificate mismatch under "verify" must defer and never deliver, and the
daemon's memory (VmRSS, sampled all along) must stay bounded although one
server sends a 10 MB reply line.
"""
import os
import re
import shutil
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sluicetest as st  # noqa: E402
from hostile_server import HostileServer  # noqa: E402

TIMEOUT = 2  # every delivery timeout, seconds
TIMEOUTS = "".join("    %s = %ds;\n" % (k, TIMEOUT) for k in (
    "connect_timeout", "greeting_timeout", "ehlo_timeout", "starttls_timeout", "mail_timeout",
    "rcpt_timeout", "data_timeout", "data_block_timeout", "data_done_timeout"))
QUEUE = ('queue {\n    retry = "1s,1s,2s";\n    retry_jitter = 0;\n'
         '    scan_interval = 200ms;\n}\n')
RSS_LIMIT_MB = 48  # growth allowed over the baseline (a 10 MB line buffered would exceed it)


def vm_rss_kb(pid):
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


class RssSampler:
    """Samples a process's VmRSS every 50 ms in a thread; .peak in KiB."""

    def __init__(self, pid):
        self.pid, self.peak, self.stopping = pid, 0, False
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        while not self.stopping:
            self.peak = max(self.peak, vm_rss_kb(self.pid))
            time.sleep(0.05)

    def stop(self):
        self.stopping = True
        self.thread.join(2)
        return self.peak


def make_cert(dirname, cn, san):
    """A self-signed certificate for cn with subjectAltName san: (cert, key)."""
    cert, key = os.path.join(dirname, cn + ".crt"), os.path.join(dirname, cn + ".key")
    st.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            "-subj", "/CN=" + cn, "-addext", "subjectAltName=" + san,
            "-keyout", key, "-out", cert], timeout=60).check()
    return cert, key


def daemon_conf(d, routes, delivery_extra="", top=""):
    """The Daemon's generated config with our delivery block and fast queue."""
    text = d.default_conf("info")
    route_lines = "".join('        "%s" = "%s";\n' % kv for kv in routes.items())
    text = re.sub(r"delivery \{.*\}\n", "", text, flags=re.S)  # the generated block is last
    text += ("delivery {\n    smarthost = \"127.0.0.1:%d\";\n%s%s    routes {\n%s    }\n}\n"
             % (d.closed_port, TIMEOUTS, delivery_extra, route_lines)) + QUEUE + top
    with open(d.conf_path, "w") as f:
        f.write(text)


def acct(d, type_=None, rcpt=None):
    return [r for r in d.accounting()
            if (type_ is None or r.get("type") == type_)
            and (rcpt is None or r.get("recipient") == rcpt)]


class HostilePeers(unittest.TestCase):
    # (domain, mode, bad_conns, with certificate)
    CASES = [
        ("silent.test", "silent", 1, False),
        ("trickle.test", "trickle", None, False),
        ("late.test", "late", 1, False),
        ("endless.test", "endless", 1, False),
        ("hugeline.test", "hugeline", 1, False),
        ("garbage.test", "garbage", 1, False),
        ("tlsstall.test", "tls_stall", None, True),
        ("tlsfail.test", "tls_fail", None, True),
        ("reset.test", "reset_mid_data", 1, False),
        ("refuse.test", "data_5xx", None, False),
        ("mismatch.test", "normal", None, True),
    ]

    def test_hostile_receivers(self):
        tmp = st.make_tmpdir("hostile-peers-")
        servers, d, sampler = {}, None, None
        try:
            cert, key = make_cert(tmp, "wrong.test", "DNS:wrong.test")
            # the control case: the same policy, the right name (the route's host)
            good_cert, good_key = make_cert(tmp, "127.0.0.1", "DNS:127.0.0.1,IP:127.0.0.1")
            for dom, mode, bad, tls in self.CASES:
                servers[dom] = HostileServer(mode, bad, cert if tls else None,
                                             key if tls else None, trickle_s=0.004, late_s=4)
            servers["verified.test"] = HostileServer("normal", None, good_cert, good_key)
            bundle = os.path.join(tmp, "ca.pem")
            with open(bundle, "w") as f:
                for pem in (cert, good_cert):
                    with open(pem) as g:
                        f.write(g.read())
            servers["bounces.test"] = HostileServer("normal")  # DSNs go here
            d = st.Daemon()
            routes = {dom: "127.0.0.1:%d" % s.port for dom, s in servers.items()}
            daemon_conf(d, routes, '    ca_file = "%s";\n    tls_policy {\n'
                        '        "mismatch.test" = verify;\n        "verified.test" = verify;\n'
                        '    }\n' % bundle)
            d.start()  # returns once every thread has started: the baseline
            base_kb = vm_rss_kb(d.proc.pid)
            sampler = RssSampler(d.proc.pid)

            t0 = time.monotonic()
            with d.smtp() as c:
                for dom in [c_[0] for c_ in self.CASES] + ["verified.test"]:
                    c.sendmail("sender@bounces.test", ["u@" + dom],
                               b"From: <sender@bounces.test>\r\nTo: <u@" + dom.encode() +
                               b">\r\nSubject: hostile " + dom.encode() + b"\r\n\r\nbody\r\n")

            # -- the first outcome of each case, within the timeouts
            limit = 3 * TIMEOUT + 6  # a 2 s timeout, retries at 1 s, slack for ASan
            transient_cases = {  # domain: (status, what the text must say)
                "silent.test": ("4.4.2", "timeout in state GREETING"),
                "late.test": ("4.4.2", "timeout in state GREETING"),
                "endless.test": ("4.4.2", "timeout in state EHLO"),  # a line every 10 ms
                "hugeline.test": ("4.4.2", "reply too long"),
                "garbage.test": ("4.4.2", "malformed reply"),
                "reset.test": ("4.4.2", "connection lost during DATA"),
                "mismatch.test": ("4.7.5", "certificate verify failed"),
            }
            for dom, (status, words) in transient_cases.items():
                recs = st.wait_for(lambda: acct(d, "transient", "u@" + dom), limit,
                                   what="a transient record for " + dom)
                self.assertEqual(recs[0]["status"], status, recs[0])
                self.assertIn(words, recs[0]["text"], recs[0])
            self.assertLess(time.monotonic() - t0, limit + 5)
            bounce = st.wait_for(lambda: acct(d, "bounce", "u@refuse.test"), limit,
                                 what="the 554 bounce")[0]
            self.assertTrue(bounce["status"].startswith("5.7."), bounce)

            # -- then every case but the refused and the mismatched is delivered
            delivered = [dom for dom, _, _, _ in self.CASES
                         if dom not in ("refuse.test", "mismatch.test")] + ["verified.test"]
            for dom in delivered:
                st.wait_for(lambda: acct(d, "delivery", "u@" + dom), 40,
                            what="the delivery to " + dom)
                self.assertEqual(servers[dom].message_count(), 1, dom)
            # opportunistic TLS fell back to plaintext, and the log says so
            for dom in ("tlsstall.test", "tlsfail.test"):
                self.assertGreaterEqual(servers[dom].starttls, 1, dom)
                self.assertFalse(servers[dom].messages[0]["tls"], dom)
                self.assertRegex(d.stderr(), r"%s: TLS with .* failed .*retrying without TLS"
                                 % re.escape(dom))
            self.assertTrue(servers["verified.test"].messages[0]["tls"])
            # the DSN for the refused message reached the sender's domain
            st.wait_for(lambda: servers["bounces.test"].message_count() >= 1, 30,
                        what="the DSN")
            self.assertIn(b"multipart/report", servers["bounces.test"].messages[0]["data"])
            st.check_dsn(servers["bounces.test"].messages[0]["data"])  # RFC 3464
            # verify + wrong name: deferred again, never delivered
            st.wait_for(lambda: len(acct(d, "transient", "u@mismatch.test")) >= 2, 20,
                        what="a second deferral for the mismatch")
            self.assertEqual(servers["mismatch.test"].message_count(), 0)
            self.assertEqual(acct(d, "delivery", "u@mismatch.test"), [])
            st.wait_for(lambda: d.status()["queue"]["messages"] == 1, 20,
                        what="only the mismatched message left in the queue")

            peak = sampler.stop()
            grew_mb = (peak - base_kb) / 1024.0
            print("hostile peers: %d cases, VmRSS %d KiB -> peak %d KiB (+%.1f MB)"
                  % (len(self.CASES), base_kb, peak, grew_mb), file=sys.stderr)
            self.assertLess(grew_mb, RSS_LIMIT_MB)
            self.assertTrue(d.running(), "the daemon died")
            d.stop()
        finally:
            if sampler:
                sampler.stop()
            for s in servers.values():
                s.stop()
            if d:
                d.cleanup()
            if not st.keep_tmp():
                shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    st.main()
