#!/usr/bin/python3
"""8BITMIME, SMTPUTF8 and SIZE with DKIM, against a receiver we did not
write (aiosmtpd, tests/e2e/peer_smtp.py via st.Peer).

- A server without 8BITMIME gets a 7-bit copy (quoted-printable, RFC 6152
  3), checked with Python's email package (not sluice's code): every part
  decodes to what was submitted, 7-bit parts are byte for byte; DKIM signs
  the copy and dkimpy verifies it; what cannot be converted bounces 5.6.3.
- SMTPUTF8 is needed only by a copy whose envelope or header is not ASCII:
  an all-ASCII message flagged SMTPUTF8 is delivered without it, a UTF-8
  recipient bounces 5.6.7 alone; a server with SMTPUTF8 gets everything.
- SIZE counts the DKIM-Signature fields.
Run: SLUICE_BUILD=... /usr/bin/python3 tests/e2e/test_peers_mime.py
"""
import base64
import email
import email.policy
import os
import re
import shutil
import subprocess
import sys
import unittest

import dkim

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sluicetest as st  # noqa: E402

SENDER = "joe@example.com"


def split_signatures(raw):
    """(DKIM-Signature fields at the top, the rest)."""
    sigs, rest = [], raw
    while rest.startswith(b"DKIM-Signature:"):
        m = re.match(rb"DKIM-Signature:.*?\r\n(?![ \t])", rest, re.S)
        sigs.append(m.group(0))
        rest = rest[m.end():]
    return sigs, rest


def leaves(raw):
    """[(content type, transfer encoding, decoded bytes)] of every leaf part,
    as Python's email package reads raw."""
    msg = email.message_from_bytes(raw, policy=email.policy.compat32)
    out = []
    for part in msg.walk():
        if part.is_multipart() or part.get_content_maintype() == "message":
            continue
        out.append((part.get_content_type(), (part.get("Content-Transfer-Encoding") or
                                              "7bit").lower(),
                    part.get_payload(decode=True)))
    return out


class MimeCase(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        cls.keydir = st.make_tmpdir("wire-dkim-")
        cls.key = os.path.join(cls.keydir, "rsa.pem")
        subprocess.run(["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt",
                        "rsa_keygen_bits:2048", "-out", cls.key], check=True,
                       stderr=subprocess.DEVNULL)
        os.chmod(cls.key, 0o600)
        der = subprocess.run(["openssl", "pkey", "-in", cls.key, "-pubout", "-outform", "DER"],
                             check=True, capture_output=True).stdout
        cls.dns = {b"sel._domainkey.example.com.": b"v=DKIM1; k=rsa; p=" +
                   base64.b64encode(der)}

    @classmethod
    def tearDownClass(cls):
        if not st.keep_tmp():
            shutil.rmtree(cls.keydir, ignore_errors=True)

    def setUp(self):
        self.cleanups = []

    def tearDown(self):
        for fn in reversed(self.cleanups):
            try:
                fn()
            except Exception:
                pass

    def peer(self, **kw):
        p = st.Peer(**kw)
        self.cleanups.append(lambda: p.stop(check=False))
        return p

    def daemon(self, peer, sign=False):
        conf = ('dkim {\n    keys {\n        "example.com" { sel = "%s"; }\n    }\n}\n'
                % self.key) if sign else ""
        d = st.wire_daemon({"a.example": peer.port}, extra_conf=conf)
        self.cleanups.append(d.cleanup)
        d.start()
        return d

    def dnsfunc(self, name, timeout=5):
        return self.dns.get(name)

    def verify(self, raw):
        sigs, rest = split_signatures(raw)
        self.assertEqual(len(sigs), 1, raw[:2000])
        self.assertTrue(dkim.DKIM(raw).verify(idx=0, dnsfunc=self.dnsfunc),
                        "dkimpy rejected the signature:\n%r" % raw[:3000])
        return rest


TEXT_8BIT = ("Grüße aus Köln — 10 €.\r\n"
             "Une ligne très longue " + "é" * 60 + " fin.\r\n"
             ".Un point au début\r\n"
             "trailing space \r\n").encode()


def text_message(subject="8bit", headers=b"", body=TEXT_8BIT):
    return st.wire_message(SENDER, "ann@a.example", subject=subject, body=body,
                           headers=b"MIME-Version: 1.0\r\nContent-Type: text/plain; "
                                   b"charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n"
                                   + headers)


MULTIPART = (b"MIME-Version: 1.0\r\n"
             b"Content-Type: multipart/alternative; boundary=\"b-1\"\r\n",
             b"Preamble.\r\n"
             b"--b-1\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n"
             b"Plain ASCII part.\r\n"
             b"--b-1\r\nContent-Type: text/html; charset=utf-8\r\n"
             b"Content-Transfer-Encoding: 8bit\r\n\r\n"
             + "<p>Ça va très bien.</p>\r\n".encode() +
             b"--b-1\r\nContent-Type: image/png\r\nContent-Transfer-Encoding: base64\r\n\r\n"
             b"iVBORw0KGgo=\r\n"
             b"--b-1--\r\n")


class EightBitMime(MimeCase):
    """Finding 6: 8-bit content to a server without 8BITMIME is converted
    (or bounced 5.6.3), never sent raw."""

    def test_text_8bit_converted_to_quoted_printable(self):
        p = self.peer(no_8bitmime=True)
        d = self.daemon(p)
        msg = text_message()
        st.wire_submit(d, ["ann@a.example"], msg, frm=SENDER, mail_options=["BODY=8BITMIME"])
        rec, raw = p.wait_messages(1)[0]
        self.assertFalse(any(b >= 0x80 for b in raw), raw)
        self.assertNotIn("BODY=8BITMIME", rec["mail_params"])
        got = st.strip_received(raw)
        # the header as submitted, the transfer encoding replaced in place
        hdr, _, body = got.partition(b"\r\n\r\n")
        want_hdr = msg.partition(b"\r\n\r\n")[0].replace(
            b"Content-Transfer-Encoding: 8bit", b"Content-Transfer-Encoding: quoted-printable")
        self.assertEqual(hdr, want_hdr)
        self.assertEqual(leaves(got), [("text/plain", "quoted-printable", TEXT_8BIT)])
        for line in body.split(b"\r\n"):
            self.assertLessEqual(len(line), 76)
        a = st.wait_acct(d, "delivery", "ann@a.example")[0]
        self.assertEqual(a["code"], 250)
        d.stop()

    def test_multipart_each_8bit_leaf_converted(self):
        p = self.peer(no_8bitmime=True)
        d = self.daemon(p)
        msg = st.wire_message(SENDER, "ann@a.example", subject="multipart", headers=MULTIPART[0],
                              body=MULTIPART[1])
        st.wire_submit(d, ["ann@a.example"], msg, frm=SENDER, mail_options=["BODY=8BITMIME"])
        _, raw = p.wait_messages(1)[0]
        got = st.strip_received(raw)
        self.assertFalse(any(b >= 0x80 for b in got))
        self.assertEqual(leaves(got), [
            # (the line break before a boundary belongs to the boundary)
            ("text/plain", "7bit", b"Plain ASCII part."),
            ("text/html", "quoted-printable", "<p>Ça va très bien.</p>".encode()),
            ("image/png", "base64", base64.b64decode(b"iVBORw0KGgo=")),
        ])
        # the 7-bit parts and the structure around them are byte for byte
        self.assertIn(b"Preamble.\r\n--b-1\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n"
                      b"Plain ASCII part.\r\n--b-1\r\n", got)
        self.assertTrue(got.endswith(b"--b-1\r\nContent-Type: image/png\r\n"
                                     b"Content-Transfer-Encoding: base64\r\n\r\n"
                                     b"iVBORw0KGgo=\r\n--b-1--\r\n"), got[-300:])
        d.stop()

    def test_converted_copy_is_dkim_signed_and_verifies(self):
        p = self.peer(no_8bitmime=True)
        d = self.daemon(p, sign=True)
        msg = st.wire_message(SENDER, "ann@a.example", subject="signed", headers=MULTIPART[0],
                              body=MULTIPART[1])
        st.wire_submit(d, ["ann@a.example"], msg, frm=SENDER, mail_options=["BODY=8BITMIME"])
        rec, raw = p.wait_messages(1)[0]
        self.assertFalse(any(b >= 0x80 for b in raw))
        rest = self.verify(raw)
        self.assertEqual(leaves(st.strip_received(rest))[1][2],
                         "<p>Ça va très bien.</p>".encode())
        # SIZE= announced what was sent (signature included)
        self.assertIn("SIZE=%d" % len(raw), rec["mail_params"])
        d.stop()

    def test_unconvertible_bounces_5_6_3(self):
        p = self.peer(no_8bitmime=True)
        d = self.daemon(p)
        # 8-bit bytes inside a part that says base64: no faithful 7-bit form
        msg = st.wire_message(SENDER, "ann@a.example", subject="bad",
                              headers=b"MIME-Version: 1.0\r\nContent-Type: text/plain\r\n"
                                      b"Content-Transfer-Encoding: base64\r\n",
                              body="wül=\r\n".encode())
        st.wire_submit(d, ["ann@a.example", "bob@a.example"], msg, frm=SENDER,
                       mail_options=["BODY=8BITMIME"])
        for r in st.wait_acct(d, "bounce", n=2):
            self.assertEqual(r["status"], "5.6.3", r)
            self.assertIn("does not offer 8BITMIME: 8-bit characters in a part encoded base64",
                          r["text"])
        self.assertEqual(p.messages(), [])
        d.stop()

    def test_server_with_8bitmime_gets_the_bytes_as_submitted(self):
        p = self.peer()
        d = self.daemon(p)
        msg = text_message()
        # declared, and undeclared: both go with BODY=8BITMIME, unchanged
        st.wire_submit(d, ["ann@a.example"], msg, frm=SENDER, mail_options=["BODY=8BITMIME"])
        st.wire_submit(d, ["bob@a.example"], msg, frm=SENDER)
        msgs = p.wait_messages(2)
        for rec, raw in msgs:
            self.assertIn("BODY=8BITMIME", rec["mail_params"])
            self.assertEqual(st.strip_received(raw), msg)
        d.stop()


class SmtpUtf8(MimeCase):
    """Finding 5 and SMTPUTF8 end to end."""

    UTF8_RCPT = "jösé@a.example"

    def submit(self, d, rcpts, msg):
        st.wire_submit(d, rcpts, msg, frm=SENDER, mail_options=["SMTPUTF8", "BODY=8BITMIME"])

    def test_ascii_copy_goes_to_a_server_without_smtputf8(self):
        p = self.peer()
        d = self.daemon(p)
        msg = st.wire_message(SENDER, "ann@a.example", subject="ascii list message")
        self.submit(d, ["ann@a.example", self.UTF8_RCPT, "bob@a.example"], msg)
        rec, raw = p.wait_messages(1)[0]
        self.assertEqual([r["addr"] for r in rec["rcpts"]], ["ann@a.example", "bob@a.example"])
        self.assertNotIn("SMTPUTF8", rec["mail_params"])
        self.assertEqual(st.strip_received(raw), msg)
        b = st.wait_acct(d, "bounce", self.UTF8_RCPT)[0]
        self.assertEqual(b["status"], "5.6.7", b)
        self.assertIn("non-ASCII recipient address", b["text"])
        st.wait_acct(d, "delivery", n=2)
        self.assertEqual(len(st.acct_records(d, "bounce")), 1)
        d.stop()

    def test_non_ascii_header_bounces_every_recipient(self):
        p = self.peer()
        d = self.daemon(p)
        msg = st.wire_message(SENDER, "ann@a.example", subject="Grüße")
        self.submit(d, ["ann@a.example", "bob@a.example"], msg)
        for r in st.wait_acct(d, "bounce", n=2):
            self.assertEqual(r["status"], "5.6.7", r)
            self.assertIn("non-ASCII header fields", r["text"])
        self.assertEqual(p.messages(), [])
        d.stop()

    def test_smtputf8_end_to_end(self):
        p = self.peer(smtputf8=True)
        d = self.daemon(p)
        msg = st.wire_message(SENDER, self.UTF8_RCPT, subject="Grüße",
                              body="Schöne Grüße.\r\n".encode())
        self.submit(d, [self.UTF8_RCPT, "ann@a.example"], msg)
        rec, raw = p.wait_messages(1)[0]
        self.assertEqual(sorted(r["addr"] for r in rec["rcpts"]),
                         sorted([self.UTF8_RCPT, "ann@a.example"]))
        self.assertIn("SMTPUTF8", rec["mail_params"])
        self.assertEqual(st.strip_received(raw), msg)
        st.wait_acct(d, "delivery", n=2)
        d.stop()


class SizeWithDkim(MimeCase):
    """Finding 7: the size compared with SIZE includes the signature."""

    def test_signature_tips_the_message_over_the_limit(self):
        msg = st.wire_message(SENDER, "ann@a.example", subject="size", body=b"z" * 600 + b"\r\n")
        # the stored message is the submitted one plus a Received field of
        # about 200 bytes; an RSA-2048 signature adds about 500
        limit = len(msg) + 350
        p = self.peer(size=limit, wire=True)
        d = self.daemon(p, sign=True)
        st.wire_submit(d, ["ann@a.example"], msg, frm=SENDER)
        b = st.wait_acct(d, "bounce", "ann@a.example")[0]
        self.assertEqual(b["status"], "5.3.4", b)
        m = re.match(r"message size (\d+) exceeds size limit (\d+) of server ", b["text"])
        self.assertTrue(m, b)
        self.assertEqual(int(m.group(2)), limit)
        self.assertGreater(int(m.group(1)), limit)
        d.stop()
        self.assertNotIn(b"MAIL FROM", b"".join(p.wires()))


if __name__ == "__main__":
    unittest.main()
