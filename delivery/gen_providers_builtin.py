#!/usr/bin/python3
"""Regenerate delivery/providers_builtin.c from config/providers.conf.

The unit test delivery_shaping_test checks that the two are equal; run
  /usr/bin/python3 delivery/gen_providers_builtin.py
from the source directory after editing config/providers.conf."""
import os
import sys

src = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
text = open(os.path.join(src, "config", "providers.conf"), encoding="utf-8").read()
out = ["/* generated from config/providers.conf by delivery/gen_providers_builtin.py:",
       " * do not edit (tests/unit/delivery_shaping_test.c checks they are equal) */",
       '#include "delivery/shaping_int.h"', "",
       "/* one C string line per line of the file */",
       "/* clang-format off */",
       "const char shp_builtin_text[] ="]
for line in text.splitlines(keepends=True):
    esc = line.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    out.append('    "%s"' % esc)
out[-1] += ";"
out.append("/* clang-format on */")
open(os.path.join(src, "delivery", "providers_builtin.c"), "w").write("\n".join(out) + "\n")
