#!/usr/bin/python3
"""DKIM signatures made by sluice, checked by two independent verifiers.

Messages are signed by $SLUICE_BUILD/bench/dkim-bench (`sign`, a thin CLI over
dkim_sign_file()) with fresh RSA-2048 and Ed25519 keys from `openssl genpkey`,
then verified without any DNS:
  * dkimpy (python3-dkim): dkim.DKIM(msg).verify(idx=i, dnsfunc=...) with the
    public key records derived by openssl (not by sluice);
  * OpenDKIM's libopendkim (the library behind opendkim-testmsg), through
    ctypes with its DKIM_QUERY_FILE key source. (opendkim-testmsg itself
    cannot be pointed at a key file and, in Debian 12's build, fails every
    message with "dkim_chunk(): Syntax error".) Each signature is checked
    alone, with the other DKIM-Signature fields removed.
Run: SLUICE_BUILD=... /usr/bin/python3 tests/e2e/test_dkim_verify.py
"""
import base64
import ctypes
import os
import re
import shutil
import subprocess
import sys
import unittest

import dkim

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sluicetest as st  # noqa: E402

BUILD = st.BUILD
TOOL = os.path.join(BUILD, "bench", "dkim-bench")

CRLF = b"\r\n"


def crlf(text):
    return re.sub(rb"\r?\n", CRLF, text)


def message(body=b"Hello there.\r\n", extra=b"", frm=b"Joe <joe@example.com>"):
    return (b"Received: from app (app [10.0.0.1]) by mta; Mon, 1 Jan 2024 00:00:00 +0000\r\n"
            b"From: " + frm + b"\r\n"
            b"To: Suzie <suzie@example.net>\r\n"
            b"Subject: Is dinner\r\n ready?\r\n"
            b"Date: Mon, 1 Jan 2024 00:00:00 +0000\r\n"
            b"Message-ID: <1@example.com>\r\n"
            b"MIME-Version: 1.0\r\n"
            b"Content-Type: text/plain; charset=utf-8\r\n"
            b"List-Unsubscribe: <https://example.com/u/1>\r\n"
            b"List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n" + extra + b"\r\n" + body)


class OpenDKIM:
    """libopendkim's verifier with keys from a file (DKIM_QUERY_FILE)."""
    OP_SETOPT, OPTS_QUERYMETHOD, OPTS_QUERYINFO, QUERY_FILE = 1, 6, 7, 1

    def __init__(self, keyfile):
        lib = ctypes.CDLL("libopendkim.so.11")
        lib.dkim_init.restype = ctypes.c_void_p
        lib.dkim_init.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
        lib.dkim_verify.restype = ctypes.c_void_p
        lib.dkim_verify.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p,
                                    ctypes.POINTER(ctypes.c_int)]
        lib.dkim_options.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int,
                                     ctypes.c_void_p, ctypes.c_size_t]
        lib.dkim_chunk.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t]
        lib.dkim_eom.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
        lib.dkim_free.argtypes = [ctypes.c_void_p]
        lib.dkim_close.argtypes = [ctypes.c_void_p]
        self.lib = lib
        self.h = lib.dkim_init(None, None)
        qm = ctypes.c_int(self.QUERY_FILE)
        lib.dkim_options(self.h, self.OP_SETOPT, self.OPTS_QUERYMETHOD, ctypes.byref(qm),
                         ctypes.sizeof(qm))
        self._path = ctypes.create_string_buffer(keyfile.encode())
        lib.dkim_options(self.h, self.OP_SETOPT, self.OPTS_QUERYINFO, self._path,
                         len(keyfile) + 1)

    def verify(self, msg):
        """0 (DKIM_STAT_OK) when the message's one signature verifies."""
        st = ctypes.c_int(0)
        d = self.lib.dkim_verify(self.h, b"e2e", None, ctypes.byref(st))
        rc = self.lib.dkim_chunk(d, msg, len(msg))
        if rc == 0:
            rc = self.lib.dkim_chunk(d, None, 0)
        if rc == 0:
            rc = self.lib.dkim_eom(d, None)
        self.lib.dkim_free(d)
        return rc

    def close(self):
        self.lib.dkim_close(self.h)


def split_signatures(signed):
    """(list of DKIM-Signature fields, rest of the message)."""
    sigs = []
    rest = signed
    while rest.startswith(b"DKIM-Signature:"):
        m = re.match(rb"DKIM-Signature:.*?\r\n(?![ \t])", rest, re.S)
        sigs.append(m.group(0))
        rest = rest[m.end():]
    return sigs, rest


class DkimVerify(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        if not os.access(TOOL, os.X_OK):
            raise RuntimeError("%s is not built: add dkim-bench to bench/CMakeLists.txt" % TOOL)
        cls.dir = st.make_tmpdir("dkim_e2e.")
        cls.rsa = os.path.join(cls.dir, "rsa.pem")
        cls.ed = os.path.join(cls.dir, "ed.pem")
        cls.esp = os.path.join(cls.dir, "esp.pem")
        subprocess.run(["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt",
                        "rsa_keygen_bits:2048", "-out", cls.rsa], check=True,
                       stderr=subprocess.DEVNULL)
        subprocess.run(["openssl", "genpkey", "-algorithm", "ED25519", "-out", cls.ed], check=True)
        subprocess.run(["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt",
                        "rsa_keygen_bits:2048", "-out", cls.esp], check=True,
                       stderr=subprocess.DEVNULL)
        for k in (cls.rsa, cls.ed, cls.esp):
            os.chmod(k, 0o600)
        # Public key records, derived with openssl, not with sluice.
        cls.records = {
            b"rsa._domainkey.example.com.": b"v=DKIM1; k=rsa; p=" + cls.spki(cls.rsa),
            b"ed._domainkey.example.com.": b"v=DKIM1; k=ed25519; p=" +
            base64.b64encode(base64.b64decode(cls.spki(cls.ed))[-32:]),
            b"esp._domainkey.esp.example.": b"v=DKIM1; k=rsa; p=" + cls.spki(cls.esp),
        }
        keyfile = os.path.join(cls.dir, "keys.txt")
        with open(keyfile, "wb") as f:
            for name, rec in cls.records.items():
                f.write(name.rstrip(b".") + b" " + rec + b"\n")
        cls.odkim = OpenDKIM(keyfile)

    @classmethod
    def tearDownClass(cls):
        cls.odkim.close()
        shutil.rmtree(cls.dir, ignore_errors=True)

    @staticmethod
    def spki(path):
        der = subprocess.run(["openssl", "pkey", "-in", path, "-pubout", "-outform", "DER"],
                             check=True, capture_output=True).stdout
        return base64.b64encode(der)

    def dnsfunc(self, name, timeout=5):
        return self.records.get(name)

    def sign(self, msg, *args, keys=("rsa", "ed"), expect_sigs=None):
        cmd = [TOOL, "sign"]
        paths = {"rsa": ("example.com", self.rsa), "ed": ("example.com", self.ed),
                 "esp": ("esp.example", self.esp)}
        for k in keys:
            cmd += ["-k", "%s:%s:%s" % (paths[k][0], k, paths[k][1])]
        cmd += list(args)
        p = subprocess.run(cmd, input=msg, capture_output=True, timeout=60)
        self.assertEqual(p.returncode, 0, p.stderr.decode(errors="replace"))
        self.assertTrue(p.stdout.endswith(msg))
        sigs, _ = split_signatures(p.stdout)
        if expect_sigs is not None:
            self.assertEqual(len(sigs), expect_sigs, p.stdout[:2000])
        return p.stdout

    def verify_all(self, signed, wire=None):
        """Every signature verifies with dkimpy and with OpenDKIM."""
        wire = signed if wire is None else wire
        sigs, rest = split_signatures(wire)
        self.assertTrue(sigs)
        d = dkim.DKIM(wire)
        for i, sig in enumerate(sigs):
            self.assertTrue(d.verify(idx=i, dnsfunc=self.dnsfunc),
                            "dkimpy rejected signature %d: %r" % (i, sig))
            self.assertEqual(self.odkim.verify(sig + rest), 0,
                             "OpenDKIM rejected signature %d: %r" % (i, sig))
        return sigs

    def dkimpy_ok(self, wire, idx):
        try:
            return dkim.DKIM(wire).verify(idx=idx, dnsfunc=self.dnsfunc)
        except dkim.DKIMException:
            return False

    def assert_fails(self, wire):
        sigs, rest = split_signatures(wire)
        for i, sig in enumerate(sigs):
            self.assertFalse(self.dkimpy_ok(wire, i), "dkimpy accepted %d" % i)
            self.assertNotEqual(self.odkim.verify(sig + rest), 0, "OpenDKIM accepted %d" % i)

    # ------------------------------------------------------------ cases

    def test_single_rsa_and_ed25519_relaxed(self):
        for alg, key in (("rsa-sha256", "rsa"), ("ed25519-sha256", "ed")):
            signed = self.sign(message(), keys=(key,), expect_sigs=1)
            sigs = self.verify_all(signed)
            self.assertIn(b"a=" + alg.encode(), sigs[0])
            self.assertIn(b"c=relaxed/relaxed", sigs[0])
            self.assertIn(b"d=example.com", sigs[0])
            self.assertNotIn(b"l=", sigs[0])
            for line in sigs[0].split(CRLF):
                self.assertLessEqual(len(line), 78)

    def test_simple_simple(self):
        signed = self.sign(message(b"Body  with   spaces \r\n\r\n"), "-c", "simple/simple",
                           expect_sigs=2)
        sigs = self.verify_all(signed)
        self.assertIn(b"c=simple/simple", sigs[0])
        # simple/simple does not survive re-spacing of the body
        self.assert_fails(signed.replace(b"Body  with", b"Body with"))

    def test_mixed_canonicalization(self):
        signed = self.sign(message(b"x  y\r\n"), "-c", "relaxed/simple", expect_sigs=2)
        self.verify_all(signed)
        signed = self.sign(message(b"x  y\r\n"), "-c", "simple/relaxed", expect_sigs=2)
        self.verify_all(signed)

    def test_double_signature_and_esp_domain(self):
        signed = self.sign(message(), "-e", "@from", "-e", "esp.example",
                           keys=("rsa", "ed", "esp"), expect_sigs=3)
        sigs = self.verify_all(signed)
        self.assertIn(b"a=ed25519-sha256", sigs[0])
        self.assertIn(b"a=rsa-sha256", sigs[1])
        self.assertIn(b"d=esp.example", sigs[2])
        # one body hash for all three (same body canonicalization)
        bhs = {re.search(rb"bh=([^;]+);", s.replace(b"\r\n\t", b"")).group(1) for s in sigs}
        self.assertEqual(len(bhs), 1)
        self.assert_fails(signed.replace(b"Hello there.", b"Hello there!"))

    def test_no_key_for_from_domain_esp_still_signs(self):
        msg = message(frm=b"someone@nokey.example")
        signed = self.sign(msg, "-e", "@from", "-e", "esp.example", keys=("rsa", "esp"),
                           expect_sigs=1)
        sigs = self.verify_all(signed)
        self.assertIn(b"d=esp.example", sigs[0])

    def test_eight_bit_body(self):
        body = ("Grüße aus Köln — ça va?\r\n".encode() + b"\xe9t\xe9 latin-1 \xff\r\n" +
                "日本語のテキスト\r\n".encode())
        signed = self.sign(message(body, extra="X-Name: Jörg\r\n".encode()), expect_sigs=2)
        self.verify_all(signed)

    def test_one_mib_body(self):
        line = b"0123456789 abcdefghij  ABCDEFGHIJ\t klmnopqrst uvwxyz  \r\n"
        body = line * (1024 * 1024 // len(line) + 1)
        self.assertGreater(len(body), 1024 * 1024)
        for c in ("relaxed/relaxed", "simple/simple"):
            signed = self.sign(message(body), "-c", c, expect_sigs=2)
            self.verify_all(signed)
        self.assert_fails(signed[:-10] + b"XXXXXXXX\r\n")

    def test_body_edge_cases(self):
        cases = [b"", b"no final crlf", b"trailing ws   \r\n \t \r\n\r\n\r\n",
                 b"\r\n\r\n", b"  leading\r\n\tand tabs\t\t here\r\n"]
        for body in cases:
            for c in ("relaxed/relaxed", "simple/simple"):
                with self.subTest(body=body, canon=c):
                    signed = self.sign(message(body), "-c", c, expect_sigs=2)
                    # SMTP ends DATA with CRLF: smtp_dot_stuff adds a missing one
                    wire = signed if signed.endswith(CRLF) else signed + CRLF
                    self.verify_all(signed if body else wire, wire=wire)

    def test_repeated_headers(self):
        extra = (b"To: second@example.net\r\n"
                 b"Received: from b by c; Mon, 1 Jan 2024 00:00:01 +0000\r\n"
                 b"Cc: one@example.net\r\nCc: two@example.net\r\n")
        signed = self.sign(message(extra=extra), expect_sigs=2)
        sigs = self.verify_all(signed)
        h = re.search(rb"h=([^;]+);", sigs[0].replace(b"\r\n\t", b"")).group(1)
        self.assertEqual(h.count(b"to"), 2)
        self.assertEqual(h.count(b"cc"), 2)
        # changing the upper of two signed To fields breaks the signature
        self.assert_fails(signed.replace(b"To: Suzie", b"To: Eve"))

    def test_oversigned_from(self):
        signed = self.sign(message(), expect_sigs=2)
        sigs = self.verify_all(signed)
        h = re.search(rb"h=([^;]+);", sigs[0].replace(b"\r\n\t", b"")).group(1)
        self.assertTrue(h.startswith(b"from:") and h.endswith(b":from"), h)
        # A second From added after signing breaks verification.
        sigs, rest = split_signatures(signed)
        forged = b"".join(sigs) + b"From: Evil <evil@attacker.example>\r\n" + rest
        self.assert_fails(forged)
        # Control: without over-signing OpenDKIM accepts the same forgery (dkimpy
        # over-verifies From on its own), so the check above is what
        # over-signing buys.
        plain = self.sign(message(), "-O", "", expect_sigs=2)
        sigs, rest = split_signatures(plain)
        self.assertNotIn(b":from;", sigs[0].replace(b"\r\n\t", b""))
        forged = sigs[0] + b"From: Evil <evil@attacker.example>\r\n" + rest
        self.assertEqual(self.odkim.verify(forged), 0)

    def test_bare_lf_message(self):
        """Stored with bare LF; the wire (smtp_dot_stuff) carries CRLF."""
        msg = message(b"line one  \nline two\n\n").replace(CRLF, b"\n")
        signed = self.sign(msg, expect_sigs=2)
        self.verify_all(signed, wire=crlf(signed))

    def test_expiry_and_timestamp(self):
        signed = self.sign(message(), "-x", "86400", keys=("ed",), expect_sigs=1)
        sig = split_signatures(signed)[0][0].replace(b"\r\n\t", b" ")
        t = int(re.search(rb"t=(\d+);", sig).group(1))
        x = int(re.search(rb"x=(\d+);", sig).group(1))
        self.assertEqual(x - t, 86400)
        self.verify_all(signed)

    def test_world_readable_key_refused(self):
        bad = os.path.join(self.dir, "open.pem")
        shutil.copy(self.ed, bad)
        os.chmod(bad, 0o644)
        p = subprocess.run([TOOL, "sign", "-k", "example.com:x:" + bad], input=message(),
                           capture_output=True, timeout=30)
        self.assertEqual(p.returncode, 2)
        self.assertIn(("key %s: is readable by others (chmod 600)" % bad).encode(), p.stderr)
        self.assertEqual(p.stdout, b"")

    def test_dns_record_matches_openssl(self):
        for sel, path in (("rsa", self.rsa), ("ed", self.ed)):
            p = subprocess.run([TOOL, "dns", "-k", "example.com:%s:%s" % (sel, path)],
                               capture_output=True, check=True, timeout=30)
            self.assertEqual(p.stdout.strip(),
                             self.records[("%s._domainkey.example.com." % sel).encode()])


if __name__ == "__main__":
    st.main()
