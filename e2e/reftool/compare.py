"""Compares two digests field by field, in both directions: a field only the reference has, only
the actual render has, or that differs, each counts once.

Fields are leaf paths. Lists of maps that all carry a distinct `name` (containers, env, ports,
volumes, webhooks) are keyed by name, since their order means nothing to Kubernetes; other lists
of maps by position. Lists of scalars are one field; RBAC verbs/resources/apiGroups and capability
add/drop lists compare as sets (the API server treats them as sets), others in order.
usage: python3 -m reftool.compare REFERENCE.json ACTUAL.json|ACTUAL.yaml [--limit N]
"""
import json
import sys

from . import normalise

SET_LISTS = {"verbs", "resources", "apiGroups", "resourceNames", "add", "drop", "operations", "apiVersions"}


def leaves(o, path=()):
    """(path, value) for every leaf; a path is a tuple of keys, `[name]` or `[index]`."""
    if isinstance(o, dict):
        for k, v in o.items():
            yield from leaves(v, path + (str(k),))
    elif isinstance(o, list):
        if all(not isinstance(x, (dict, list)) for x in o):
            vals = [json.dumps(x, sort_keys=True) for x in o]
            if path and path[-1] in SET_LISTS:
                vals.sort()
            yield path, "[" + ", ".join(vals) + "]"
            return
        names = [x.get("name") if isinstance(x, dict) else None for x in o]
        by_name = all(isinstance(n, str) for n in names) and len(set(names)) == len(names)
        for i, v in enumerate(o):
            yield from leaves(v, path + (f"[{names[i] if by_name else i}]",))
    else:
        yield path, json.dumps(o, sort_keys=True)


def compare_object(ref, act):
    """(equal field count, field count, [(path, want, got)]) for one object."""
    r, a = dict(leaves(ref)), dict(leaves(act))
    fields = sorted(set(r) | set(a))
    diffs = [(p, r.get(p), a.get(p)) for p in fields if r.get(p) != a.get(p)]
    return len(fields) - len(diffs), len(fields), diffs


class Result:
    def __init__(self):
        self.missing, self.extra, self.diffs = [], [], []  # diffs: (object key, path, want, got)
        self.equal = self.total = 0
        self.objects_ref = self.objects_equal = 0

    @property
    def ok(self):
        return not self.missing and not self.extra and not self.diffs

    @property
    def share(self):
        return 100.0 * self.equal / self.total if self.total else 100.0

    def summary(self):
        return (f"objects {self.objects_equal}/{self.objects_ref} equal, fields {self.equal}/{self.total} "
                f"equal ({self.share:.1f}%), {len(self.missing)} missing, {len(self.extra)} extra")

    def details(self, limit=10):
        """The first differences, one line each."""
        out = [f"  - missing {k}" for k in self.missing] + [f"  + extra {k}" for k in self.extra]
        for k, p, want, got in self.diffs:
            out.append(f"  ~ {k}: {'.'.join(p)}: want {want if want is not None else '(absent)'}, "
                       f"got {got if got is not None else '(absent)'}")
        return out[:limit] + ([f"  ... {len(out) - limit} more"] if len(out) > limit else [])


def compare(ref, act):
    """Compares two digests ({key: object})."""
    res = Result()
    res.objects_ref = len(ref)
    res.missing = sorted(set(ref) - set(act))
    res.extra = sorted(set(act) - set(ref))
    for k in res.missing:
        res.total += sum(1 for _ in leaves(ref[k]))
    for k in res.extra:
        res.total += sum(1 for _ in leaves(act[k]))
    for k in sorted(set(ref) & set(act)):
        eq, total, diffs = compare_object(ref[k], act[k])
        res.equal += eq
        res.total += total
        res.objects_equal += not diffs
        res.diffs += [(k, p, w, g) for p, w, g in diffs]
    return res


def load_digest(path):
    """A digest from a reference file ({"objects": ...}), a bare digest, or a YAML manifest."""
    with open(path) as f:
        text = f.read()
    if path.endswith(".json"):
        data = json.loads(text)
        if isinstance(data, dict) and "objects" in data:
            return data["objects"]
        if isinstance(data, dict) and "kind" not in data:
            return data
    return normalise.digest(text)


def main(argv):
    args = [a for a in argv if not a.startswith("--")]
    limit = int(argv[argv.index("--limit") + 1]) if "--limit" in argv else 20
    if "--limit" in argv:
        args.remove(str(limit))
    if len(args) != 2:
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 2
    res = compare(load_digest(args[0]), load_digest(args[1]))
    print("\n".join(res.details(limit)))
    print(res.summary())
    return 0 if res.ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
