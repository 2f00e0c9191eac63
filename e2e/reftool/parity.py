"""`make parity`: renders the spec of every e2e/reference/<case>.json with the project's
`render` CLI and compares the result with the case's upstream digest, field by field.
Prints per case the share of equal fields and the first differences; ends with
`parity: N passed, N failed`. With cross-check directories (independent references made
elsewhere), one more check per directory says whether the project's digests agree with it; for
a directory that is absent, a SKIPPED line.
usage: python3 -m reftool.parity OPERATOR_BIN [--cross-check DIR ...] [case ...]
"""
import glob
import json
import os
import subprocess
import sys
import tempfile

from . import compare, normalise

HERE = os.path.dirname(os.path.abspath(__file__))
REFERENCE_DIR = os.path.join(os.path.dirname(HERE), "reference")


def render(operator, spec, work):
    path = os.path.join(work, "spec.json")
    with open(path, "w") as f:
        json.dump(spec, f)
    res = subprocess.run([operator, "render", "-f", path], capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"render failed (exit {res.returncode}): {res.stderr.strip()}")
    return normalise.digest(res.stdout)


def check_case(operator, path, work, out):
    with open(path) as f:
        ref = json.load(f)
    name = ref["case"]
    try:
        act = render(operator, ref["spec"], work)
    except (RuntimeError, ValueError) as e:
        out(f"parity {name}: FAILED: {e}")
        return False
    res = compare.compare(ref["objects"], act)
    if res.ok:
        out(f"parity {name}: {res.summary()}")
        return True
    out(f"parity {name}: FAILED: {res.summary()}")
    for line in res.details(12):
        out(line)
    return False


def cross_check(cross_dir, ref_dir, out):
    """Each digest of cross_dir against the project's digest with the same spec."""
    ours = {}
    for path in glob.glob(os.path.join(ref_dir, "*.json")):
        with open(path) as f:
            doc = json.load(f)
        ours[json.dumps(doc["spec"], sort_keys=True)] = doc
    agree, problems = 0, []
    theirs = sorted(glob.glob(os.path.join(cross_dir, "*.json")))
    for path in theirs:
        with open(path) as f:
            doc = json.load(f)
        mine = ours.get(json.dumps(doc.get("spec"), sort_keys=True))
        if mine is None:
            problems.append(f"  {os.path.basename(path)}: no case of e2e/reference has its spec {doc.get('spec')}")
            continue
        # Both sides through the project's normaliser, so that only content can differ.
        theirs_objs = {k: normalise.normalise(v) for k, v in doc["objects"].items()}
        res = compare.compare(theirs_objs, mine["objects"])
        if res.ok:
            agree += 1
        else:
            problems.append(f"  {os.path.basename(path)} vs {mine['case']}: {res.summary()}")
            problems += ["  " + line for line in res.details(6)]
    if not theirs:
        out(f"parity cross-check: FAILED: no digests in {cross_dir}")
        return False
    if problems:
        out(f"parity cross-check: FAILED: {agree}/{len(theirs)} digests of {cross_dir} agree with e2e/reference")
        for line in problems:
            out(line)
        return False
    out(f"parity cross-check: {agree}/{len(theirs)} digests of {cross_dir} agree with e2e/reference")
    return True


def main(argv, out=print):
    if not argv or argv[0].startswith("-"):
        out(__doc__.strip().splitlines()[-1])
        return 2
    operator, rest = argv[0], argv[1:]
    cross_dirs = []
    while "--cross-check" in rest:
        i = rest.index("--cross-check")
        cross_dirs.append(rest[i + 1])
        rest = rest[:i] + rest[i + 2:]
    ref_dir = os.environ.get("REFERENCE_DIR", REFERENCE_DIR)
    if not os.access(operator, os.X_OK):
        out(f"parity: no operator binary at {operator} (run make build)")
        return 2
    paths = [os.path.join(ref_dir, f"{c}.json") for c in rest] or sorted(glob.glob(os.path.join(ref_dir, "*.json")))
    passed = failed = 0
    with tempfile.TemporaryDirectory(prefix="parity-") as work:
        for path in paths:
            if check_case(operator, path, work, out):
                passed += 1
            else:
                failed += 1
    for cross_dir in cross_dirs:
        if os.path.isdir(cross_dir):
            if cross_check(cross_dir, ref_dir, out):
                passed += 1
            else:
                failed += 1
        else:
            out(f"SKIPPED parity cross-check: no independent reference at {cross_dir} "
                "(optional; a folder of upstream digests made elsewhere enables it)")
    out(f"parity: {passed} passed, {failed} failed")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
