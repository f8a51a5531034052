#!/usr/bin/python3
"""Check the size rules of docs/architecture.md on the sources.

    tests/arch/sizes.py [DIR ...]       (default: the directories listed below)

- No source file over FILE_MAX lines, except the files in FILE_EXEMPT (each
  with its reason there).
- No function body over FN_MAX lines unless the comment above the function
  says why, in a line that starts with "Long:" (for instance
  " * Long: one switch over the RFC 5321 states, read top to bottom").

A function is found the way the project writes one (STYLE.md, Linux
braces): its opening brace alone at the start of a line, after a line that
ends its parameter list, and its closing brace alone at the start of a
line. Exit status 0 when both rules hold, 1 with the offenders otherwise.
"""
import os
import re
import sys

SRC = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DIRS = ["queue", "config", "core/server", "core/base", "dkim", "bench"]
FILE_MAX = 1400
FN_MAX = 120
FILE_EXEMPT = {
    # the SMTP server's state machine, read top to bottom next to RFC 5321
    "core/server/smtp_server.c",
    # the test sink: one file a tester reads whole, with every scripted fault
    "bench/sink.c",
}
NAME = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*\(")


def functions(lines):
    """(name, first line, body lines, comment above) of each function."""
    out = []
    i = 0
    while i < len(lines):
        if lines[i].rstrip() == "{" and i > 0 and lines[i - 1].rstrip().endswith(")"):
            # the signature: back to the line that starts at column 0
            s = i - 1
            while s > 0 and (lines[s][:1] in (" ", "\t") or lines[s].strip() == ""):
                s -= 1
            m = NAME.search(lines[s])
            name = m.group(1) if m else "?"
            # the comment block right above the signature
            c = s - 1
            comment = []
            while c >= 0 and (lines[c].lstrip().startswith(("/*", "*", "//"))):
                comment.append(lines[c])
                c -= 1
            j = i + 1
            while j < len(lines) and lines[j].rstrip() != "}":
                j += 1
            out.append((name, s + 1, j - i - 1, comment))
            i = j
        i += 1
    return out


def main():
    dirs = sys.argv[1:] or DIRS
    problems = []
    for d in dirs:
        for root, _, names in os.walk(os.path.join(SRC, d)):
            for n in sorted(names):
                if not n.endswith((".c", ".h")):
                    continue
                path = os.path.join(root, n)
                rel = os.path.relpath(path, SRC)
                with open(path, encoding="utf-8", errors="replace") as f:
                    lines = f.read().split("\n")
                if len(lines) > FILE_MAX and rel not in FILE_EXEMPT:
                    problems.append(f"{rel}: {len(lines)} lines (at most {FILE_MAX})")
                for name, line, body, comment in functions(lines):
                    if body <= FN_MAX:
                        continue
                    if any(re.match(r"\s*(/\*|\*|//)\s*Long:", c) for c in comment):
                        continue
                    problems.append(f"{rel}:{line}: {name}() is {body} lines (at most {FN_MAX}"
                                    " without a \"Long:\" comment saying why)")
    for p in problems:
        print(p, file=sys.stderr)
    if not problems:
        print(f"sizes: ok (files <= {FILE_MAX} lines but {', '.join(sorted(FILE_EXEMPT))};"
              f" functions <= {FN_MAX} lines or a \"Long:\" comment) in {', '.join(dirs)}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
