"""`make render-baseline`: renders every bundled release x IstioOperator profile, plus a few value
sets per minor, with the project's `render` CLI, and compares a digest of each output (the JSON
list: objects, their order and every value) with e2e/render-baseline.json.

It guards chart restructurings (shared templates, relative imports, data moved into bundle.yaml):
a change that should not change what is rendered must leave every digest as it was. A case the
file does not have yet (a new minor) is listed, not failed; `--write` records the current
output (review the diff of render-baseline.json: it says which cases changed).
usage: python3 -m reftool.renders OPERATOR_BIN [--write]
"""
import concurrent.futures
import glob
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile

import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
BASELINE = os.path.join(REPO, "e2e", "render-baseline.json")

# Value sets rendered on every release: the branches the profiles alone do not reach. Each
# compatibility version and platform a bundle accepts is rendered on its newest patch too.
VALUE_SETS = {
    "multus": {"profile": "ambient", "values": {"cni": {"provider": "multus"}}},
    "openshift": {"profile": "ambient", "values": {"global": {"platform": "openshift"}}},
    "openshift-sidecar": {"profile": "default", "components": {"cni": {"enabled": True}},
                          "values": {"global": {"platform": "openshift"}}},
    "waypoint": {"profile": "ambient",
                 "waypoints": [{"namespace": "bookinfo", "for": "service", "enrollNamespace": True}]},
    "gateways": {"profile": "demo",
                 "components": {"ingressGateways": [{"name": "istio-ingressgateway"},
                                                    {"name": "edge", "namespace": "edge",
                                                     "label": {"istio": "edge"}}],
                                "egressGateways": [{"name": "istio-egressgateway"}]},
                 "values": {"gateways": {"istio-ingressgateway": {"type": "ClusterIP", "autoscaleMax": 3}}}},
    "revision": {"profile": "default", "revision": "canary",
                 "values": {"revisionTags": ["prod"], "pilot": {"replicaCount": 2, "autoscaleEnabled": False}}},
    "cni-sidecar": {"profile": "minimal", "components": {"cni": {"enabled": True}},
                    "values": {"pilot": {"cni": {"enabled": True}}}},
    "dual-stack": {"profile": "ambient", "values": {"cni": {"ambient": {"ipv6": True}},
                                                    "pilot": {"ipFamilyPolicy": "RequireDualStack"}}},
    "analysis": {"profile": "default", "values": {"global": {"istiod": {"enableAnalysis": True}}}},
    "coredump": {"profile": "default", "values": {"global": {"proxy": {"enableCoreDump": True}}}},
    "cni-env": {"profile": "ambient", "values": {"cni": {"env": {"EXTRA": "1"}}}},
}


def bundle_profiles(minor_dir, manifest):
    """The IstioOperator profiles of a minor: bundle.yaml's `profiles`, else its profiles/ folder."""
    if manifest.get("profiles"):
        return list(manifest["profiles"])
    return sorted(os.path.basename(p)[:-len(".yaml")] for p in glob.glob(os.path.join(minor_dir, "profiles", "*.yaml")))


def cases():
    """{name: spec}, for every bundled minor (a folder of charts/ with a bundle.yaml)."""
    out = {}
    for path in sorted(glob.glob(os.path.join(REPO, "charts", "*", "bundle.yaml"))):
        minor_dir = os.path.dirname(path)
        with open(path) as f:
            manifest = yaml.safe_load(f)
        releases = manifest["releases"]
        for release in releases:
            for profile in bundle_profiles(minor_dir, manifest):
                out[f"{release}-{profile}"] = {"version": release, "profile": profile}
        for release in releases:
            for name, spec in VALUE_SETS.items():
                out[f"{release}-{name}"] = dict(spec, version=release)
        newest = releases[-1]
        for v in manifest.get("compatibilityVersions") or []:
            out[f"{newest}-compatibility-{v}"] = {"version": newest, "profile": "ambient",
                                                  "values": {"compatibilityVersion": v}}
        for p in manifest.get("platforms") or []:
            out[f"{newest}-platform-{p}"] = {"version": newest, "profile": "ambient",
                                             "values": {"global": {"platform": p}}}
    return out


def render(operator, name, spec, work):
    path = os.path.join(work, f"{name}.json")
    with open(path, "w") as f:
        json.dump({"apiVersion": "istioinstall.io/v1alpha1", "kind": "IstioInstall",
                   "metadata": {"name": "mesh"}, "spec": spec}, f)
    res = subprocess.run([operator, "render", "-f", path, "-o", "json"], capture_output=True, text=True)
    if res.returncode != 0:
        # Which file the template is in may move (common/ or a minor); the message may not.
        return "error: " + re.sub(r" \(template charts/[^)]*\)", "", res.stderr.strip())
    items = json.loads(res.stdout)["items"]
    canonical = json.dumps(items, sort_keys=True, separators=(",", ":"))
    return f"{len(items)} objects sha256:{hashlib.sha256(canonical.encode()).hexdigest()}"


def main(argv, out=print):
    if not argv or argv[0].startswith("-"):
        out(__doc__.strip().splitlines()[-1])
        return 2
    operator, write = argv[0], "--write" in argv[1:]
    if not os.access(operator, os.X_OK):
        out(f"render-baseline: no operator binary at {operator} (run make build)")
        return 2
    todo = cases()
    with tempfile.TemporaryDirectory(prefix="renders-") as work, \
            concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        futures = {name: pool.submit(render, operator, name, spec, work) for name, spec in todo.items()}
        got = {name: f.result() for name, f in futures.items()}
    errors = [n for n, d in got.items() if d.startswith("error")]
    if write:
        with open(BASELINE, "w") as f:
            json.dump(got, f, indent=1, sort_keys=True)
            f.write("\n")
        out(f"render-baseline: wrote {len(got)} digests to {os.path.relpath(BASELINE, REPO)}"
            f" ({len(errors)} renders failed)")
        return 0
    with open(BASELINE) as f:
        base = json.load(f)
    same = [n for n in got if base.get(n) == got[n]]
    changed = [n for n in got if n in base and base[n] != got[n]]
    new = [n for n in got if n not in base]
    gone = [n for n in base if n not in got]
    for n in changed:
        out(f"render-baseline {n}: CHANGED: was {base[n]}, now {got[n]}")
    for n in gone:
        out(f"render-baseline {n}: MISSING: in render-baseline.json but no longer a case")
    for n in new:
        out(f"render-baseline {n}: new case ({got[n]}), not in render-baseline.json")
    out(f"render-baseline: {len(same)} same, {len(changed)} changed, {len(gone)} missing, {len(new)} new")
    return 0 if not changed and not gone else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
