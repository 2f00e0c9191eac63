"""`make upstream-reference`: renders every case of e2e/reference/cases.yaml with the upstream
Istio charts at the case's tag, by real Helm, and writes e2e/reference/<case>.json.

How upstream renders an IstioInstall spec is how `istioctl install` (1.24) turns the same
IstioOperator spec into Helm values (istio/istio operator/pkg/render/manifest.go at 1.24.x:
MergeInputs, translateIstioOperatorToHelm, applyComponentValuesToHelmValues; component list in
operator/pkg/component/component.go). Written here from reading that code:
- the upstream `manifests/profiles/default.yaml` at the tag, the requested profile merged over it
  (maps merge key by key, lists replace), then the published hub/tag (Istio's release tooling
  stamps docker.io/istio and the tag into the charts it publishes; istioctl does the same);
- the user's spec merged over that; spec.hub/tag/revision become values.global.hub/global.tag/
  revision, spec.meshConfig merges into values.meshConfig; values.pilot.enabled and
  values.pilot.cni.enabled follow components.pilot/cni; the user's values win at the end;
- one chart per enabled component, each given all values (ztunnel's flattened: `ztunnel.*` at
  the top, plus global and the top-level scalars); a gateway gets its name and labels.
The release name is istioctl's ("istio"); every chart renders in its component's namespace.
With --check, writes nothing: renders every case and fails on any byte that differs from the
committed digest (the drift test), and on a committed digest that no case makes.
usage: python3 -m reftool.generate --istio-src DIR --helm BIN [--out DIR | --check] [case ...]
"""
import argparse
import copy
import glob
import json
import os
import subprocess
import sys
import tempfile

import yaml

from . import normalise

HERE = os.path.dirname(os.path.abspath(__file__))
REFERENCE_DIR = os.path.join(os.path.dirname(HERE), "reference")
PUBLISHED_HUB = "docker.io/istio"
RELEASE_NAME = "istio"
# What Helm is told the cluster is: the Kubernetes version of the local control plane
# (e2e/versions.env), so that capability checks in the charts do not depend on Helm's build.
KUBE_VERSION_KEY = "K8S_VERSION"

# (spec key, chart directory under manifests/charts, values root, default on, several, flatten)
COMPONENTS = [
    ("base", "base", "global", True, False, False),
    ("pilot", "istio-control/istio-discovery", "pilot", True, False, False),
    ("ingressGateways", "gateways/istio-ingress", "gateways.istio-ingressgateway", True, True, False),
    ("egressGateways", "gateways/istio-egress", "gateways.istio-egressgateway", False, True, False),
    ("cni", "istio-cni", "cni", False, False, False),
    ("ztunnel", "ztunnel", "ztunnel", False, False, True),
]


def merge(base, over):
    """istioctl's merge: maps key by key, anything else (lists included) replaced."""
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def get(m, path, default=None):
    for k in path.split("."):
        if not isinstance(m, dict) or k not in m:
            return default
        m = m[k]
    return m


def set_path(m, path, value):
    *parents, last = path.split(".")
    for k in parents:
        if not isinstance(m.get(k), dict):
            m[k] = {}
        m = m[k]
    m[last] = value


def load_yaml(path):
    with open(path) as f:
        return yaml.safe_load(f) or {}


def merged_operator(manifests, tag, spec):
    """The IstioOperator istioctl would build from this spec (as a plain map)."""
    profile = spec.get("profile") or "default"
    iop = load_yaml(os.path.join(manifests, "profiles", "default.yaml"))
    if profile != "default":
        iop = merge(iop, load_yaml(os.path.join(manifests, "profiles", f"{profile}.yaml")))
    iop = merge(iop, {"spec": {"hub": PUBLISHED_HUB, "tag": tag}})
    user = {k: copy.deepcopy(v) for k, v in spec.items()
            if k in ("profile", "hub", "tag", "revision", "meshConfig", "values", "components")}
    if "namespace" in spec:
        raise ValueError("cases set values.global.istioNamespace, not spec.namespace (istioctl reads no spec.namespace)")
    iop = merge(iop, {"spec": user})
    s = iop["spec"]
    vals = s.setdefault("values", {})
    for src, dst in (("hub", "global.hub"), ("tag", "global.tag"), ("revision", "revision")):
        if s.get(src) not in (None, ""):
            set_path(vals, dst, s[src])
    if isinstance(s.get("meshConfig"), dict):
        vals["meshConfig"] = merge(vals.get("meshConfig") or {}, s["meshConfig"])
    set_path(vals, "pilot.enabled", bool(get(s, "components.pilot.enabled", False)))
    set_path(vals, "pilot.cni.enabled", bool(get(s, "components.cni.enabled", False)))
    if get(vals, "global.istioNamespace"):
        iop.setdefault("metadata", {})["namespace"] = get(vals, "global.istioNamespace")
    if isinstance(spec.get("values"), dict):
        s["values"] = merge(vals, spec["values"])
    return iop


def component_specs(iop, name, default_on, several, alt_enabled):
    """[(gateway name or None, namespace, component spec)] of one component, enabled ones only."""
    ns = get(iop, "metadata.namespace") or "istio-system"
    on = default_on or alt_enabled
    comp = get(iop, f"spec.components.{name}")
    if comp is None:
        return [(None, ns, {})] if on else []
    items = comp if several else [comp]
    out = []
    for c in items:
        if c.get("enabled", True) is False and not alt_enabled:
            continue
        out.append((c.get("name"), c.get("namespace") or ns, c))
    return out


def chart_values(iop, root, flatten, gateway):
    vals = copy.deepcopy(iop["spec"]["values"])
    if gateway is not None:
        name, comp = gateway
        set_path(vals, f"{root}.name", name)
        if comp.get("label") is not None:
            set_path(vals, f"{root}.labels", comp["label"])
    if flatten and isinstance(vals.get(root), dict):
        flat = {"global": vals.get("global")}
        flat.update({k: v for k, v in vals.items() if not isinstance(v, dict)})
        flat.update(vals[root])
        vals = flat
    return vals


def plan(manifests, tag, spec):
    """[{chart, namespace, values}] in istioctl's component order."""
    iop = merged_operator(manifests, tag, spec)
    out = []
    for name, chart, root, default_on, several, flatten in COMPONENTS:
        alt = bool(get(iop, f"spec.values.{root}.enabled", False)) if several else False
        for gw_name, ns, comp in component_specs(iop, name, default_on, several, alt):
            gateway = (gw_name or root.split(".")[1], comp) if several else None
            out.append({"chart": chart, "namespace": ns, "values": chart_values(iop, root, flatten, gateway)})
    return out


def helm_template(helm, chart_dir, namespace, values, kube_version, work):
    vf = os.path.join(work, "values.json")
    with open(vf, "w") as f:
        json.dump(values, f)
    cmd = [helm, "template", RELEASE_NAME, chart_dir, "--namespace", namespace, "--values", vf,
           "--include-crds", "--kube-version", kube_version]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"helm template {chart_dir} failed: {res.stderr.strip()}")
    return res.stdout


def extract_manifests(istio_src, tag, work):
    """`manifests/` of the tag, from a git directory or a checkout, into work/<tag>."""
    git_dir = os.path.join(istio_src, ".git") if os.path.exists(os.path.join(istio_src, ".git")) else istio_src
    dst = os.path.join(work, tag)
    if not os.path.isdir(dst):
        os.makedirs(dst)
        archive = subprocess.run(["git", "--git-dir", git_dir, "archive", tag, "manifests"],
                                 capture_output=True, check=False)
        if archive.returncode != 0:
            raise RuntimeError(f"ISTIO_SRC={istio_src}: no tag {tag} ({archive.stderr.decode().strip()}); "
                               "fetch a newer github:istio/istio")
        subprocess.run(["tar", "-x", "-C", dst], input=archive.stdout, check=True)
    return os.path.join(dst, "manifests")


def kube_version():
    with open(os.path.join(os.path.dirname(HERE), "versions.env")) as f:
        for line in f:
            if line.startswith(KUBE_VERSION_KEY + "="):
                return line.split("=", 1)[1].strip()
    raise RuntimeError(f"no {KUBE_VERSION_KEY} in e2e/versions.env")


def load_cases():
    with open(os.path.join(REFERENCE_DIR, "cases.yaml")) as f:
        return yaml.safe_load(f)["cases"]


def render_case(name, case, istio_src, helm, work):
    spec = case["spec"]
    tag = str(spec["version"])
    manifests = extract_manifests(istio_src, tag, work)
    charts = plan(manifests, tag, spec)
    objects = {}
    for c in charts:
        text = helm_template(helm, os.path.join(manifests, "charts", c["chart"]), c["namespace"], c["values"],
                             kube_version(), work)
        objects = normalise.digest(text, c["namespace"], into=objects)
    return {
        "case": name,
        "about": case.get("about", ""),
        "tag": tag,
        "profile": spec.get("profile") or "default",
        "spec": spec,
        "charts": charts,
        "objects": objects,
    }


def dump(doc):
    return json.dumps(doc, indent=1, sort_keys=True, ensure_ascii=False) + "\n"


def check(istio_src, helm):
    """The drift test: every case rendered again must equal its committed digest byte for byte."""
    cases = load_cases()
    passed = failed = 0
    with tempfile.TemporaryDirectory(prefix="upstream-reference-") as work:
        for name in cases:
            path = os.path.join(REFERENCE_DIR, f"{name}.json")
            try:
                fresh = dump(render_case(name, cases[name], istio_src, helm, work))
            except (RuntimeError, ValueError) as e:
                print(f"upstream reference drift {name}: FAILED: {e}")
                failed += 1
                continue
            committed = open(path).read() if os.path.exists(path) else None
            if committed == fresh:
                passed += 1
                continue
            failed += 1
            if committed is None:
                print(f"upstream reference drift {name}: FAILED: e2e/reference/{name}.json is not committed "
                      "(run make upstream-reference)")
                continue
            from . import compare  # what changed, in the comparer's words
            res = compare.compare(json.loads(committed)["objects"], json.loads(fresh)["objects"])
            print(f"upstream reference drift {name}: FAILED: e2e/reference/{name}.json differs from a fresh "
                  f"render ({res.summary()}); run make upstream-reference and review the diff")
            print("\n".join(res.details(6)))
    for path in sorted(glob.glob(os.path.join(REFERENCE_DIR, "*.json"))):
        name = os.path.basename(path)[:-len(".json")]
        if name not in cases:
            print(f"upstream reference drift {name}: FAILED: e2e/reference/{name}.json has no case in cases.yaml")
            failed += 1
    print(f"upstream reference drift: {passed} passed, {failed} failed")
    return 0 if failed == 0 else 1


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--istio-src", required=True)
    ap.add_argument("--helm", required=True)
    ap.add_argument("--out", default=REFERENCE_DIR)
    ap.add_argument("--check", action="store_true", help="compare with the committed digests, write nothing")
    ap.add_argument("cases", nargs="*")
    a = ap.parse_args(argv)
    if a.check:
        return check(a.istio_src, a.helm)
    cases = load_cases()
    unknown = [c for c in a.cases if c not in cases]
    if unknown:
        print(f"upstream-reference: no case {', '.join(unknown)} in e2e/reference/cases.yaml", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="upstream-reference-") as work:
        for name in a.cases or list(cases):
            doc = render_case(name, cases[name], a.istio_src, a.helm, work)
            with open(os.path.join(a.out, f"{name}.json"), "w") as f:
                f.write(dump(doc))
            print(f"upstream-reference {name}: {len(doc['objects'])} objects")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
