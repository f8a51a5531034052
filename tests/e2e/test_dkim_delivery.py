#!/usr/bin/python3
"""DKIM at delivery, end to end: sluiced signs what it delivers.

Real processes on loopback: sluiced with a dkim { } section (fresh RSA-2048
and Ed25519 keys from `openssl genpkey`), delivering through a static route
to $SLUICE_BUILD/bench/sluice-sink --store. What the sink stored is checked
with dkimpy (python3-dkim), whose DNS answers are TXT records derived from
the private keys by openssl, not by sluice. Covered: RSA + Ed25519 on one
message, three recipients signed once and delivered once, an 8-bit body, a
1 MiB body, the ESP domain's second signature, no signature without a key,
key files refused at start-up (world-readable, missing, not PEM) with
"file:line: dkim.keys.D.S: key /path: why" and at reload (the running
keys stay), and `sluiced --dkim-sign`.
Run: SLUICE_BUILD=... /usr/bin/python3 tests/e2e/test_dkim_delivery.py
"""
import base64
import json
import os
import re
import shutil
import subprocess
import sys
import unittest

import dkim

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sluicetest as st  # noqa: E402

FAST_QUEUE = 'queue {\n    retry = "1s,1s,2s";\n    retry_jitter = 0;\n    scan_interval = 100ms;\n}\n'


def split_signatures(raw):
    """(list of DKIM-Signature fields at the top, the rest)."""
    sigs, rest = [], raw
    while rest.startswith(b"DKIM-Signature:"):
        m = re.match(rb"DKIM-Signature:.*?\r\n(?![ \t])", rest, re.S)
        sigs.append(m.group(0))
        rest = rest[m.end():]
    return sigs, rest


def tag(sig, name):
    """A tag's value in a DKIM-Signature field, folding removed."""
    flat = re.sub(rb"\s+", b"", sig.split(b":", 1)[1])
    for part in flat.split(b";"):
        if part.startswith(name + b"="):
            return part[len(name) + 1:].decode()
    return None


def strip_received(raw):
    """The message without its first field (the daemon's Received)."""
    assert raw.startswith(b"Received:"), raw[:80]
    i = raw.index(b"\r\n") + 2
    while raw[i:i + 1] in (b" ", b"\t"):
        i = raw.index(b"\r\n", i) + 2
    return raw[i:]


def der_int(v):
    b = v.to_bytes(max(1, (v.bit_length() + 8) // 8), "big")
    n = len(b)
    return b"\x02" + (bytes([n]) if n < 128 else bytes([0x82, n >> 8, n & 0xff])) + b


def key_that_cannot_sign(good, path):
    """Write to path the RSA key of the PEM file good with its prime p set
    to 0 (PKCS#1 RSAPrivateKey, DER by hand). It parses as a 2048-bit RSA
    private key, so start-up accepts it, but OpenSSL fails every signature
    with it: a signing failure at run time."""
    text = subprocess.run(["openssl", "rsa", "-in", good, "-noout", "-text"], check=True,
                          capture_output=True, text=True).stdout

    def field(name):
        m = re.search(name + r":\s*\n((?:\s+[0-9a-f:]+\n)+)", text)
        return int(re.sub(r"[:\s]", "", m.group(1)), 16)
    ints = [0, field("modulus"), 65537, field("privateExponent"), 0, field("prime2"),
            field("exponent1"), field("exponent2"), field("coefficient")]
    self_check = re.search(r"publicExponent: (\d+)", text)
    assert self_check and int(self_check.group(1)) == 65537, text[:300]
    body = b"".join(der_int(v) for v in ints)
    der = b"\x30\x82" + len(body).to_bytes(2, "big") + body
    b64 = base64.b64encode(der).decode()
    with open(path, "w") as f:
        f.write("-----BEGIN RSA PRIVATE KEY-----\n%s\n-----END RSA PRIVATE KEY-----\n"
                % "\n".join(b64[i:i + 64] for i in range(0, len(b64), 64)))
    os.chmod(path, 0o600)


def message(frm, to, body, subject="dkim test"):
    return ("From: Joe <%s>\r\nTo: <%s>\r\nSubject: %s\r\n"
            "Date: Fri, 27 Nov 2026 07:00:00 +0000\r\nMessage-ID: <%s@example.com>\r\n"
            "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
            "Content-Transfer-Encoding: 8bit\r\n"
            "List-Unsubscribe: <https://example.com/u/1>\r\n"
            "List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n\r\n"
            % (frm, to[0], subject, subject.replace(" ", "-"))).encode() + body


class DkimDelivery(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        cls.dir = st.make_tmpdir("dkim-keys-")
        cls.keys = {}
        gen = {"rsa": ("RSA", "example.com"), "ed": ("ED25519", "example.com"),
               "esp": ("RSA", "esp.example")}
        cls.records = {}
        for sel, (alg, dom) in gen.items():
            path = os.path.join(cls.dir, sel + ".pem")
            cmd = ["openssl", "genpkey", "-algorithm", alg, "-out", path]
            if alg == "RSA":
                cmd[4:4] = ["-pkeyopt", "rsa_keygen_bits:2048"]
            subprocess.run(cmd, check=True, stderr=subprocess.DEVNULL)
            os.chmod(path, 0o600)
            cls.keys[sel] = path
            der = subprocess.run(["openssl", "pkey", "-in", path, "-pubout", "-outform", "DER"],
                                 check=True, capture_output=True).stdout
            if alg == "RSA":
                rec = b"v=DKIM1; k=rsa; p=" + base64.b64encode(der)
            else:  # RFC 8463: the raw 32-byte public key
                rec = b"v=DKIM1; k=ed25519; p=" + base64.b64encode(der[-32:])
            cls.records[("%s._domainkey.%s." % (sel, dom)).encode()] = rec

    @classmethod
    def tearDownClass(cls):
        if not st.keep_tmp():
            shutil.rmtree(cls.dir, ignore_errors=True)

    # -- helpers

    def dnsfunc(self, name, timeout=5):
        return self.records.get(name)

    def dkim_conf(self, esp=False, rsa=None, extra=""):
        return ('dkim {\n%s%s    keys {\n'
                '        "example.com" {\n'
                '            rsa = "%s";\n'
                '            ed = "%s";\n'
                '        }\n'
                '        "esp.example" { esp = "%s"; }\n'
                '    }\n}\n'
                % ('    esp_domain = "esp.example";\n' if esp else "", extra,
                   rsa or self.keys["rsa"], self.keys["ed"], self.keys["esp"]))

    def sink(self):
        s = st.Sink("--no-starttls", prefix="dkim-sink-")
        self.addCleanup(s.stop)
        return s

    def daemon(self, sink, dkim_conf, start=True):
        d = st.Daemon(routes={"a.example": "127.0.0.1:%d" % sink.port},
                      extra_conf=dkim_conf + FAST_QUEUE)
        self.addCleanup(d.close)
        if start:
            d.start()
        return d

    def send(self, d, rcpts, frm="joe@example.com", body=b"Hello.\r\n.dot line\r\nbye\r\n",
             eight_bit=False, subject="dkim test"):
        msg = message(frm, rcpts, body, subject)
        with d.smtp(timeout=60) as c:
            c.sendmail(frm, rcpts, msg, mail_options=["BODY=8BITMIME"] if eight_bit else [])
        return msg

    def verify(self, raw, want):
        """Every signature on top of raw verifies with dkimpy; returns the
        [(a=, d=, s=)] of the signatures, which must equal want (a set)."""
        sigs, _ = split_signatures(raw)
        got = []
        for i, sig in enumerate(sigs):
            ok = dkim.DKIM(raw).verify(idx=i, dnsfunc=self.dnsfunc)
            self.assertTrue(ok, "dkimpy rejected signature %d: %r" % (i, sig))
            got.append((tag(sig, b"a"), tag(sig, b"d"), tag(sig, b"s")))
        self.assertEqual(sorted(got), sorted(want), raw[:3000])
        return sigs

    def assert_unchanged(self, raw, sent):
        """Below the signatures and the Received field: the message as sent."""
        _, rest = split_signatures(raw)
        self.assertEqual(strip_received(rest), sent)

    BOTH = [("rsa-sha256", "example.com", "rsa"), ("ed25519-sha256", "example.com", "ed")]

    # -- delivery

    def test_rsa_and_ed25519_on_one_message(self):
        sink = self.sink()
        d = self.daemon(sink, self.dkim_conf())
        sent = self.send(d, ["bob@a.example"])
        env, raw = sink.wait_messages(1)[0]
        self.assertEqual(env["rcpts"], ["bob@a.example"])
        sigs = self.verify(raw, self.BOTH)
        self.assert_unchanged(raw, sent)
        for sig in sigs:
            self.assertEqual(tag(sig, b"c"), "relaxed/relaxed")
            self.assertIsNotNone(tag(sig, b"t"))
            self.assertIsNone(tag(sig, b"x"))
            h = tag(sig, b"h").split(":")
            self.assertEqual(h[0], "from")
            self.assertEqual(h.count("from"), 2)  # over-signed
            for f in ("list-unsubscribe", "list-unsubscribe-post", "subject", "message-id"):
                self.assertIn(f, h)
        # a changed body no longer verifies: the check above can fail
        tampered = raw.replace(b"Hello.", b"Hullo.")
        for i in range(len(sigs)):
            try:
                ok = dkim.DKIM(tampered).verify(idx=i, dnsfunc=self.dnsfunc)
            except dkim.DKIMException:
                ok = False
            self.assertFalse(ok, "dkimpy accepted a tampered body (signature %d)" % i)
        d.wait_queue(0)
        d.stop()

    def test_three_recipients_signed_once_delivered_once(self):
        sink = self.sink()
        d = self.daemon(sink, self.dkim_conf())
        rcpts = ["r1@a.example", "r2@a.example", "r3@a.example"]
        sent = self.send(d, rcpts)
        sink.wait_messages(1)
        d.wait_queue(0)  # every recipient has its outcome: nothing more will be sent
        msgs = sink.messages()
        self.assertEqual(len(msgs), 1, [m[0] for m in msgs])
        env, raw = msgs[0]
        self.assertEqual(sorted(env["rcpts"]), rcpts)
        self.verify(raw, self.BOTH)  # one set: two signatures, not six
        self.assert_unchanged(raw, sent)
        delivered = [r for r in d.accounting() if r.get("type") == "delivery"]
        self.assertEqual(sorted(r["recipient"] for r in delivered), rcpts)
        d.stop()

    def test_8bit_and_1mib_bodies(self):
        sink = self.sink()
        d = self.daemon(sink, self.dkim_conf(extra='    canonicalization = "relaxed/relaxed";\n'))
        body8 = ("Grüße aus Köln, ça va ? 日本語のテキスト\r\n"
                 "  trailing spaces and\ttabs   \r\n\r\n\r\n").encode("utf-8")
        sent8 = self.send(d, ["u8@a.example"], body=body8, eight_bit=True, subject="eight bit")
        line = b"0123456789 abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ \xc3\xa9\r\n"
        n = (1 << 20) // len(line) + 1  # lines starting with "." test the stuffing
        big = b"".join((b"." if i % 7 == 0 else b"") + line for i in range(n))[:1 << 20]
        big = big[:big.rindex(b"\r\n") + 2]
        self.assertGreater(len(big), (1 << 20) - 200)
        sentbig = self.send(d, ["big@a.example"], body=big, eight_bit=True, subject="one mib")
        msgs = sink.wait_messages(2, timeout=60)
        by_rcpt = {m[0]["rcpts"][0]: m[1] for m in msgs}
        self.verify(by_rcpt["u8@a.example"], self.BOTH)
        self.assert_unchanged(by_rcpt["u8@a.example"], sent8)
        self.verify(by_rcpt["big@a.example"], self.BOTH)
        self.assert_unchanged(by_rcpt["big@a.example"], sentbig)
        d.wait_queue(0)
        d.stop()

    def test_esp_domain_second_signature(self):
        sink = self.sink()
        d = self.daemon(sink, self.dkim_conf(esp=True))
        esp = ("rsa-sha256", "esp.example", "esp")
        self.send(d, ["c1@a.example"], frm="joe@example.com", subject="customer")
        self.send(d, ["c2@a.example"], frm="jane@other.example", subject="no key")
        self.send(d, ["c3@a.example"], frm="ops@esp.example", subject="esp itself")
        self.send(d, ["c4@a.example"], frm="news@mail.example.com", subject="subdomain")
        msgs = sink.wait_messages(4)
        by_rcpt = {m[0]["rcpts"][0]: m[1] for m in msgs}
        self.verify(by_rcpt["c1@a.example"], self.BOTH + [esp])
        self.verify(by_rcpt["c2@a.example"], [esp])
        self.verify(by_rcpt["c3@a.example"], [esp])  # From = ESP domain: not twice
        self.verify(by_rcpt["c4@a.example"], self.BOTH + [esp])  # parent domain's keys
        d.wait_queue(0)
        d.stop()

    def test_no_key_for_from_domain_is_delivered_unsigned(self):
        sink = self.sink()
        d = self.daemon(sink, self.dkim_conf())
        sent = self.send(d, ["n@a.example"], frm="jane@other.example")
        _, raw = sink.wait_messages(1)[0]
        self.assertEqual(split_signatures(raw)[0], [])
        self.assertEqual(strip_received(raw), sent)
        d.wait_queue(0)
        d.stop()

    def test_signing_failure_at_run_time_defers(self):
        """README: "a signing failure at run time defers, never sends
        unsigned". The RSA key loads (start-up and --check-config accept
        it) but cannot sign: every attempt defers 4.3.0 and nothing reaches
        the sink, not even with the Ed25519 signature alone; a reload with a
        good key in the same file sends it, signed twice."""
        sink = self.sink()
        path = os.path.join(self.dir, "cannot-sign.pem")
        key_that_cannot_sign(self.keys["rsa"], path)
        d = self.daemon(sink, self.dkim_conf(rsa=path))
        sent = self.send(d, ["held@a.example"])
        def deferrals():
            return [r for r in d.accounting()
                    if r.get("type") == "transient" and r["recipient"] == "held@a.example"]
        recs = st.wait_for(lambda: len(deferrals()) >= 3 and deferrals(), 30,
                           what="three deferred attempts")
        for r in recs:
            self.assertEqual(r["status"], "4.3.0", r)
            self.assertIn("DKIM signing failed", r["text"])
        self.assertEqual(sink.messages(), [])
        self.assertEqual([r for r in d.accounting() if r.get("type") == "delivery"], [])
        self.assertRegex(d.stderr(), r"dkim=failed .*not sent unsigned")
        self.assertEqual(d.status()["queue"]["messages"], 1)
        # the operator replaces the key and reloads: the message goes out signed
        shutil.copy(self.keys["rsa"], path)
        os.chmod(path, 0o600)
        r = d.request({"cmd": "reload"}, timeout=30)
        self.assertTrue(r.get("ok"), r)
        _, raw = sink.wait_messages(1, timeout=30)[0]
        self.verify(raw, self.BOTH)
        self.assert_unchanged(raw, sent)
        d.wait_queue(0)
        d.stop()

    # -- keys refused at start-up

    def conf_line(self, d, text):
        with open(d.conf_path) as f:
            for i, l in enumerate(f, 1):
                if text in l:
                    return i
        self.fail("%r not in %s" % (text, d.conf_path))

    def assert_refused(self, rsa_path, why):
        sink = self.sink()
        d = self.daemon(sink, self.dkim_conf(rsa=rsa_path), start=False)
        line = self.conf_line(d, 'rsa = "%s"' % rsa_path)
        want = "%s:%d: dkim.keys.example.com.rsa: key %s: %s" % (d.conf_path, line, rsa_path, why)
        r = st.run([st.SLUICED, "-c", d.conf_path, "--check-config"])
        self.assertEqual(r.rc, 2, r)
        self.assertIn(want, r.err)
        # and the daemon itself does not start
        p = subprocess.run([st.SLUICED, "-c", d.conf_path], capture_output=True, text=True,
                           timeout=30, cwd=d.dir)
        self.assertEqual(p.returncode, 2, p.stderr)
        self.assertIn(want, p.stderr)
        self.assertFalse(os.path.exists(d.ctl_socket))

    def test_world_readable_key_refused(self):
        path = os.path.join(self.dir, "open.pem")
        shutil.copy(self.keys["rsa"], path)
        os.chmod(path, 0o644)
        self.assert_refused(path, "is readable by others (chmod 600)")

    def test_missing_key_refused(self):
        self.assert_refused(os.path.join(self.dir, "missing.pem"), "No such file or directory")

    def test_not_a_key_refused(self):
        path = os.path.join(self.dir, "junk.pem")
        with open(path, "w") as f:
            f.write("-----BEGIN PRIVATE KEY-----\nnot base64\n-----END PRIVATE KEY-----\n")
        os.chmod(path, 0o600)
        self.assert_refused(path, "not a PEM private key")

    def test_good_config_checks_ok(self):
        sink = self.sink()
        d = self.daemon(sink, self.dkim_conf(esp=True), start=False)
        r = st.run([st.SLUICED, "-c", d.conf_path, "--check-config"])
        self.assertEqual(r.rc, 0, r)

    def test_reload_with_a_bad_key_is_refused_and_signing_goes_on(self):
        sink = self.sink()
        path = os.path.join(self.dir, "reload.pem")
        shutil.copy(self.keys["rsa"], path)
        os.chmod(path, 0o600)
        d = self.daemon(sink, self.dkim_conf(rsa=path))
        # only parsing the PEM finds this one (config/ checks files, not keys)
        with open(path, "w") as f:
            f.write("-----BEGIN PRIVATE KEY-----\nbroken\n-----END PRIVATE KEY-----\n")
        r = d.request({"cmd": "reload"}, timeout=30)
        self.assertFalse(r.get("ok"), r)
        self.assertIn("dkim.keys.example.com.rsa: key %s: not a PEM private key" % path,
                      json.dumps(r))
        # the keys in force were parsed at start-up: the broken file is not read again
        sent = self.send(d, ["after@a.example"])
        _, raw = sink.wait_messages(1)[0]
        self.verify(raw, self.BOTH)
        self.assert_unchanged(raw, sent)
        d.wait_queue(0)
        d.stop()

    # -- the operator's tool

    def test_dkim_sign_tool(self):
        sink = self.sink()
        d = self.daemon(sink, self.dkim_conf(esp=True), start=False)
        msg = message("joe@example.com", ["x@a.example"], "Größe\r\n".encode())
        path = os.path.join(d.dir, "m.eml")
        with open(path, "wb") as f:
            f.write(msg)
        p = subprocess.run([st.SLUICED, "-c", d.conf_path, "--dkim-sign", path],
                           capture_output=True, timeout=60)
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertTrue(p.stdout.endswith(msg))
        self.verify(p.stdout, self.BOTH + [("rsa-sha256", "esp.example", "esp")])
        self.assertIn(b"3 DKIM signature(s)", p.stderr)
        # stdin, and a From domain without a key and no ESP domain: exit 1
        d2 = self.daemon(sink, self.dkim_conf(), start=False)
        other = message("jane@other.example", ["x@a.example"], b"hi\r\n")
        p = subprocess.run([st.SLUICED, "-c", d2.conf_path, "--dkim-sign", "-"], input=other,
                           capture_output=True, timeout=60)
        self.assertEqual(p.returncode, 1, p.stderr)
        self.assertEqual(p.stdout, other)
        self.assertIn(b"0 DKIM signature(s)", p.stderr)


if __name__ == "__main__":
    st.main()
