"""`make upstream-reference`: renders every case of e2e/reference/cases.yaml with the upstream
Istio charts at the case's tag, by real Helm, and writes e2e/reference/<case>.json.

A case is rendered as a Helm install of the components the IstioOperator profile names, which is
what this operator does (the shape istioctl uses, the objects a Helm user gets). Read from
istio/istio at 1.24.6: operator/pkg/render/manifest.go (MergeInputs,
translateIstioOperatorToHelm, applyComponentValuesToHelmValues) and
operator/pkg/component/component.go. Written here:
- components: the upstream `manifests/profiles/default.yaml` at the tag with the requested
  profile merged over it (maps merge key by key, lists replace), then the user's `components`;
- values: default.yaml's `values` with the requested profile's over them, but without
  default.yaml's `defaultRevision: ""` (it hands the default-revision webhooks to istioctl's own
  step after the install, WebhooksToDeploy in operator/pkg/install/install.go, where a Helm
  install keeps them in the base chart), the
  published hub and tag (Istio's release tooling stamps docker.io/istio and the tag into the
  charts it publishes), then spec.hub/tag/revision as values.global.hub/global.tag/revision,
  spec.meshConfig merged into values.meshConfig, and the user's values last;
- one chart per enabled component, each given all values (ztunnel's flattened as istioctl does:
  `ztunnel.*` at the top, plus global and the top-level scalars); a gateway gets its name and,
  when the spec gives one, its labels. Chart.yaml version/appVersion are stamped with the tag, as
  the release tooling does. Component enablement is not copied into values
  (istioctl sets values.pilot.cni.enabled from components.cni; Helm users set it themselves, and
  so do the cases).
The release name is istioctl's ("istio"); every chart renders in its component's namespace; the
Kubernetes version Helm is told is istioctl's without a cluster, 1.<MinK8SVersion>.0
(operator/pkg/helm/helm.go, istioctl/pkg/install/k8sversion/version.go at the tag).
With --check, writes nothing: renders every case and fails on any byte that differs from the
committed digest (the drift test), and on a committed digest that no case makes.
usage: python3 -m reftool.generate --istio-src DIR --helm BIN [--out DIR | --check] [case ...]
"""
import argparse
import copy
import glob
import json
import os
import re
import subprocess
import sys
import tempfile

import yaml

from . import normalise

HERE = os.path.dirname(os.path.abspath(__file__))
REFERENCE_DIR = os.path.join(os.path.dirname(HERE), "reference")
PUBLISHED_HUB = "docker.io/istio"
RELEASE_NAME = "istio"
MIN_K8S_FILE = "istioctl/pkg/install/k8sversion/version.go"

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
    """{"metadata":..., "spec": {"components", "values"}}: what gets rendered for this spec."""
    profile = spec.get("profile") or "default"
    if "namespace" in spec:
        raise ValueError("cases set no spec.namespace (istioctl reads none; use values.global.istioNamespace)")
    default = load_yaml(os.path.join(manifests, "profiles", "default.yaml"))
    chosen = load_yaml(os.path.join(manifests, "profiles", f"{profile}.yaml")) if profile != "default" else {}
    components = merge(get(default, "spec.components", {}), get(chosen, "spec.components", {}))
    components = merge(components, spec.get("components") or {})
    # default.yaml's values under the profile's (istioctl's profiles are overlays of default.yaml;
    # 1.25 sets ztunnel.resourceName there), except defaultRevision (see above).
    base_values = {k: v for k, v in get(default, "spec.values", {}).items() if k != "defaultRevision"}
    vals = merge(base_values, get(chosen, "spec.values", {}))
    vals = merge(vals, {"global": {"hub": PUBLISHED_HUB, "tag": tag}})
    for src, dst in (("hub", "global.hub"), ("tag", "global.tag"), ("revision", "revision")):
        if spec.get(src) not in (None, ""):
            set_path(vals, dst, spec[src])
    if isinstance(spec.get("meshConfig"), dict):
        vals["meshConfig"] = merge(vals.get("meshConfig") or {}, spec["meshConfig"])
    vals = merge(vals, spec.get("values") or {})
    ns = get(vals, "global.istioNamespace") or "istio-system"
    return {"metadata": {"namespace": ns}, "spec": {"components": components, "values": vals}}


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
    dst = os.path.join(work, tag)
    if not os.path.isdir(dst):
        os.makedirs(dst)
        archive = subprocess.run(["git", "--git-dir", git_dir(istio_src), "archive", tag, "manifests"],
                                 capture_output=True, check=False)
        if archive.returncode != 0:
            raise RuntimeError(f"ISTIO_SRC={istio_src}: no tag {tag} ({archive.stderr.decode().strip()}); "
                               "fetch a newer github:istio/istio")
        subprocess.run(["tar", "-x", "-C", dst], input=archive.stdout, check=True)
        stamp_chart_versions(os.path.join(dst, "manifests", "charts"), tag)
    return os.path.join(dst, "manifests")


def stamp_chart_versions(charts, tag):
    """The release tooling's other substitution: Chart.yaml `version`/`appVersion` (1.0.0 in git)
    become the release; charts label their objects with them (app.kubernetes.io/version)."""
    for root, _, files in os.walk(charts):
        if "Chart.yaml" in files:
            path = os.path.join(root, "Chart.yaml")
            with open(path) as f:
                text = f.read()
            text = re.sub(r"^(version|appVersion):.*$", lambda m: f"{m.group(1)}: {tag}", text, flags=re.M)
            with open(path, "w") as f:
                f.write(text)


def git_dir(istio_src):
    return os.path.join(istio_src, ".git") if os.path.exists(os.path.join(istio_src, ".git")) else istio_src


def kube_version(istio_src, tag):
    """What istioctl tells Helm the cluster runs when it has no cluster: 1.<MinK8SVersion>.0."""
    res = subprocess.run(["git", "--git-dir", git_dir(istio_src), "show", f"{tag}:{MIN_K8S_FILE}"],
                         capture_output=True, text=True)
    m = re.search(r"MinK8SVersion\s*=\s*(\d+)", res.stdout)
    if res.returncode != 0 or not m:
        raise RuntimeError(f"no MinK8SVersion in {MIN_K8S_FILE} at {tag} of ISTIO_SRC={istio_src}")
    return f"1.{m.group(1)}.0"


def load_cases():
    with open(os.path.join(REFERENCE_DIR, "cases.yaml")) as f:
        return yaml.safe_load(f)["cases"]


def render_case(name, case, istio_src, helm, work):
    spec = case["spec"]
    tag = str(spec["version"])
    manifests = extract_manifests(istio_src, tag, work)
    charts = plan(manifests, tag, spec)
    kube = kube_version(istio_src, tag)
    objects = {}
    for c in charts:
        text = helm_template(helm, os.path.join(manifests, "charts", c["chart"]), c["namespace"], c["values"],
                             kube, work)
        objects = normalise.digest(text, c["namespace"], into=objects)
    return {
        "case": name,
        "about": case.get("about", ""),
        "tag": tag,
        "profile": spec.get("profile") or "default",
        "spec": spec,
        "kubeVersion": kube,
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
