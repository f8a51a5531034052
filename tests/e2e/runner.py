#!/usr/bin/python3
"""Runs one end-to-end test file for ctest: runner.py tests/e2e/test_x.py [Class.test ...]

Every test file goes through sluicetest.main(), whatever its own
`if __name__ == "__main__"` says: exit 0 only when every test ran and
passed, 1 on a failure (or when the file has no test), 77 when a test was
skipped (ctest's SKIP_RETURN_CODE: shown as "Skipped", never "Passed"),
and a watchdog that fails the file cleanly before ctest's TIMEOUT
(SLUICE_TEST_TIMEOUT) instead of leaving its daemons behind.
"""
import importlib.util
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import sluicetest as st  # noqa: E402


def load(path):
    name = os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # a test file may import another (test_delivery's helpers)
    spec.loader.exec_module(mod)
    return mod


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit("usage: runner.py TEST_FILE [Class.test ...]")
    path = os.path.abspath(sys.argv[1])
    mod = load(path)
    st.main(module=mod, argv=[path] + sys.argv[2:])
