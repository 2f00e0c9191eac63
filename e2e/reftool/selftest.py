"""The script tests (reftool and the CI summary), run by `make unit`. Prints one line per
failing test and `script tests: N passed, N failed` (counted by .ci/summary.py).
usage: python3 e2e/reftool/selftest.py"""
import os
import sys
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))


def main():
    suite = unittest.defaultTestLoader.discover(os.path.join(HERE, "tests"), top_level_dir=os.path.dirname(HERE))
    result = unittest.TextTestRunner(stream=sys.stderr, verbosity=1).run(suite)
    bad = result.failures + result.errors
    for test, _ in bad:
        print(f"script test {test.id()}: FAILED")
    skipped = len(result.skipped)
    print(f"script tests: {result.testsRun - len(bad) - skipped} passed, {len(bad)} failed")
    return 0 if not bad else 1


if __name__ == "__main__":
    sys.exit(main())
