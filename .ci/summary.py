"""Reads the log of a `make test` run and its exit status; prints what failed and one line
`tests: N passed, N failed, N skipped`. Exits non-zero when the run failed, and a failed run
never reads "0 failed": a failure the log does not itemise (a crash, a build error) counts as one.

Counted:
- cargo's `test result: ... N passed; N failed; N ignored` (ignored = skipped); a `SKIPPED ...`
  line printed inside a cargo test run is a test that returned early: skipped, not passed;
- `<suite>: N passed, N failed` lines of the project's scripts (parity, script tests, drift);
- every other `SKIPPED <what>: <why>` line: one skipped check.
usage: python3 .ci/summary.py LOG EXIT_STATUS
"""
import re
import sys

CARGO = re.compile(r"^test result: \w+\. (\d+) passed; (\d+) failed; (\d+) ignored")
CARGO_RUNNING = re.compile(r"^running \d+ tests?$")
SUITE = re.compile(r"^(parity|script tests|upstream reference drift): (\d+) passed, (\d+) failed\b")
SKIPPED = re.compile(r"^SKIPPED [^:]+:")
FAILURE = [
    re.compile(r"^test (\S+) \.\.\. FAILED$"),  # cargo
    re.compile(r"^(parity [^:]+): FAILED"),  # a parity case or the cross-check
    re.compile(r"^(script test \S+): FAILED"),
    re.compile(r"^(upstream reference drift [^:]*): FAILED"),
    re.compile(r"^make(?:\[\d+\])?: \*\*\* \[[^\]]*: ([\w.-]+)\] Error \d+"),  # the make target
]


def summarise(lines, status):
    passed = failed = skipped = 0
    in_cargo = False
    cargo_skips = 0
    what = []
    for line in lines:
        line = line.rstrip("\n")
        if CARGO_RUNNING.match(line):
            in_cargo, cargo_skips = True, 0
            continue
        m = CARGO.match(line)
        if m:
            p, f, i = map(int, m.groups())
            passed += p - cargo_skips
            failed += f
            skipped += i + cargo_skips
            in_cargo = False
            continue
        m = SUITE.match(line)
        if m:
            passed += int(m.group(2))
            failed += int(m.group(3))
            continue
        if SKIPPED.match(line):
            if in_cargo:
                cargo_skips += 1
            else:
                skipped += 1
            continue
        for pat in FAILURE:
            m = pat.match(line)
            if m:
                what.append(m.group(1))
                break
    if status != 0 and failed == 0:
        failed = 1  # the run failed without a counted test failing: a build or setup error
    out = []
    if status != 0 or failed:
        targets = sorted(set(what), key=what.index)
        out.append("FAILED: " + (", ".join(targets) if targets else f"make test exited {status}"))
    out.append(f"tests: {passed} passed, {failed} failed, {skipped} skipped")
    return out, (status if status != 0 else (1 if failed else 0))


def main(argv):
    if len(argv) != 2:
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 2
    with open(argv[0], errors="replace") as f:
        out, code = summarise(f, int(argv[1]))
    print("\n".join(out))
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
