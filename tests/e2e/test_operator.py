#!/usr/bin/python3
"""Running sluiced as an operator does (docs/operations.md):

- `resume` of something not suspended exits 1 for a domain, a job and a
  provider alike, `resume --all` exits 0.

Env: SLUICE_BUILD (binaries), SLUICE_SRC.
"""
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sluicetest as st  # noqa: E402

VERSION_RE = r"^%s \d+\.\d+\.\d+\n$"


class Cli(unittest.TestCase):
    def test_resume_of_what_is_not_suspended(self):
        with st.Daemon() as d:
            for args, what in ((["a.example"], 'domain "a.example" is not suspended'),
                               (["--job", "j1"], 'job "j1" is not suspended'),
                               (["--provider", "p.example"],
                                'provider "p.example" is not suspended')):
                r = d.ctl("resume", *args)
                self.assertEqual(r.rc, st.CTL_REFUSED, (args, r))
                self.assertIn(what, r.err)
            # suspended, then resumed: 0; resumed again: 1, like the first time
            for args in (["a.example"], ["--job", "j1"], ["--provider", "p.example"]):
                d.ctl("suspend", *args).check()
                d.ctl("resume", *args).check()
                self.assertEqual(d.ctl("resume", *args).rc, st.CTL_REFUSED, args)
            # --all means "nothing held afterwards": fine with nothing held
            r = d.ctl("resume", "--all", json=True).check()
            self.assertEqual(r.data["resumed"], 0)


if __name__ == "__main__":
    unittest.main(verbosity=2)
