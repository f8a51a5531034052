#!/usr/bin/python3
"""Write the canonicalization golden files from an independent implementation.

Each CASE.in is a stored message. The references are produced with dkimpy's
canonicalization (python3-dkim), not with sluice's code:
  CASE.hsimple.ref / CASE.hrelaxed.ref  every header field, canonicalized, in order
  CASE.bsimple.ref / CASE.brelaxed.ref  the canonicalized body
Cases named lf_* hold bare LF line ends; SMTP sends them as CRLF
(smtp_dot_stuff), so their references are made from the CRLF form.
Run: /usr/bin/python3 gen_refs.py  (from this directory)
"""
import glob
import os
import re

from dkim import rfc822_parse
from dkim.canonicalization import Relaxed, Simple

CRLF = b"\r\n"

CASES = {
    "empty_body": b"From: a@example.com\r\nSubject: nothing\r\n\r\n",
    "no_final_crlf": b"From: a@example.com\r\nSubject: x\r\n\r\nline one\r\nlast line",
    "trailing_ws_lines": (b"From: a@example.com\r\nSubject: ws\r\n\r\n"
                          b"text with trailing space   \r\n"
                          b"tab at end\t\r\n"
                          b"   \r\n"
                          b"\t \t\r\n"
                          b"middle\r\n"
                          b" \r\n"
                          b"\t\r\n"),
    "trailing_empty_lines": (b"From: a@example.com\r\nSubject: blank\r\n\r\n"
                             b"\r\nfirst (after an empty line)\r\n\r\n\r\nsecond\r\n"
                             b"\r\n\r\n\r\n\r\n"),
    "folded_headers": (b"From: \"Folded\r\n Name\" <a@example.com>\r\n"
                       b"Subject: a subject\r\n\tthat is folded   \r\n  twice\r\n"
                       b"To: x@example.net,\r\n\ty@example.net\r\n"
                       b"\r\nbody\r\n"),
    "repeated_headers": (b"Received: from c by b; Mon, 1 Jan 2024 00:00:02 +0000\r\n"
                         b"Received: from b by a; Mon, 1 Jan 2024 00:00:01 +0000\r\n"
                         b"From: a@example.com\r\n"
                         b"To: one@example.net\r\n"
                         b"Subject: not spaced\r\n"
                         b"TO: two@example.net\r\n"
                         b"Received: from a by z; Mon, 1 Jan 2024 00:00:00 +0000\r\n"
                         b"\r\nbody\r\n"),
    "wsp_runs": (b"From:   a@example.com  \r\n"
                 b"Subject:\t tabs \t and   spaces\t\r\n"
                 b"X-Empty:\r\n"
                 b"X-Spaces:    \r\n"
                 b"\r\n"
                 b"  leading spaces\r\n"
                 b"a  b\t\tc \t d\r\n"
                 b"\t\tindented with tabs\r\n"),
    "eightbit": (b"From: =?utf-8?q?J=C3=B6rg?= <j@example.com>\r\n"
                 b"Subject: caf\xc3\xa9  cr\xe8me\r\n"
                 b"X-Latin1: \xe9t\xe9\r\n"
                 b"\r\n"
                 b"Gr\xc3\xbc\xc3\x9fe  aus  K\xc3\xb6ln \r\n"
                 b"\xff\xfe binary-ish \x80\x81\r\n"
                 b"\xa0non-breaking\xa0space is not WSP\xa0\r\n"),
    "lf_bare_newlines": (b"From: a@example.com\nSubject: bare\n\tLF folded\n\n"
                         b"unix  line \nanother\n\n\n"),
    "bare_cr": b"From: a@example.com\r\nSubject: cr\r\n\r\na\rb\r\nend\r\r\n",
}


def header_refs(msg):
    headers, body = rfc822_parse(msg)
    simple = b"".join(n + b":" + v for n, v in Simple.canonicalize_headers(headers))
    relaxed = b"".join(n + b":" + v for n, v in Relaxed.canonicalize_headers(headers))
    return simple, relaxed, body


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    for name, data in CASES.items():
        with open(os.path.join(here, name + ".in"), "wb") as f:
            f.write(data)
        wire = data
        if name.startswith("lf_"):
            wire = re.sub(rb"\r?\n", CRLF, data)
        hs, hr, body = header_refs(wire)
        out = {
            "hsimple": hs,
            "hrelaxed": hr,
            "bsimple": Simple.canonicalize_body(body),
            "brelaxed": Relaxed.canonicalize_body(body),
        }
        for kind, ref in out.items():
            with open(os.path.join(here, "%s.%s.ref" % (name, kind)), "wb") as f:
                f.write(ref)
    print("wrote", len(CASES), "cases")


if __name__ == "__main__":
    main()
