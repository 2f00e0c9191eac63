"""Turns a multi-document manifest into a digest: {"Kind/namespace/name": object}, keeping what
an installed object means and dropping what only says who rendered it.

Dropped, on every object and pod template:
- labels and annotations that name the packaging tool: Helm's (release, chart, heritage,
  helm.sh/*, app.kubernetes.io/instance|managed-by|part-of), istioctl's (install.operator.istio.io/*,
  operator.istio.io/managed|version) and this project's (istioinstall.io/*), checksums;
- empty values (null, {}, []): Helm templates and our renderer differ in writing them, the API
  server treats them alike.
Reduced:
- CustomResourceDefinitions to group, names, scope and per version name/served/storage/
  subresources (the schemas are generated upstream from the API protos; held elsewhere);
- the sidecar injector ConfigMap: `config` parsed, with only the *names* of its templates (their
  bodies are this project's own writing, tested by the injection tests), `values` parsed as JSON
  with `pilot.cni` reduced to the keys the injection templates read and three keys whose default
  reads like their absence dropped at that default (see _injector_values);
- the mesh ConfigMap: `mesh` and `meshNetworks` parsed, so YAML formatting does not count.
"""
import json

import yaml

TOOL_LABELS = {
    "release", "heritage", "chart", "helm.sh/chart",
    "app.kubernetes.io/instance", "app.kubernetes.io/managed-by", "app.kubernetes.io/part-of",
    "install.operator.istio.io/owning-resource", "install.operator.istio.io/owning-resource-namespace",
    "operator.istio.io/managed", "operator.istio.io/version",
}
TOOL_PREFIXES = ("helm.sh/", "meta.helm.sh/", "checksum/", "kubectl.kubernetes.io/", "istioinstall.io/")
CLUSTER_SCOPED = {
    "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition", "MutatingWebhookConfiguration",
    "ValidatingWebhookConfiguration", "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding",
    "Namespace", "PriorityClass", "GatewayClass", "StorageClass",
}
DEFAULT_NAMESPACE = "istio-system"


def _is_empty(v):
    return v is None or v == {} or v == []


def prune(o):
    """Drops empty values, recursively (an emptied map or list goes too)."""
    if isinstance(o, dict):
        out = {}
        for k, v in o.items():
            v = prune(v)
            if not _is_empty(v):
                out[k] = v
        return out
    if isinstance(o, list):
        return [prune(v) for v in o]
    return o


def _tool_key(k):
    return k in TOOL_LABELS or k.startswith(TOOL_PREFIXES)


def _metadata(meta, cluster_scoped, namespace=None):
    meta = dict(meta or {})
    if not cluster_scoped and namespace and not meta.get("namespace"):
        meta["namespace"] = namespace  # where `kubectl apply -n` / `helm install -n` puts it
    for k in ("creationTimestamp", "resourceVersion", "uid", "generation", "managedFields", "ownerReferences"):
        meta.pop(k, None)
    if cluster_scoped:
        meta.pop("namespace", None)
    for field in ("labels", "annotations"):
        if isinstance(meta.get(field), dict):
            # Label values are strings to the API server; YAML may have read 1.24 as a number.
            meta[field] = {k: str(v) for k, v in meta[field].items() if not _tool_key(k)}
    return meta


def _crd(obj):
    spec = obj.get("spec") or {}
    return {
        "apiVersion": obj.get("apiVersion"),
        "kind": obj["kind"],
        "metadata": {"name": (obj.get("metadata") or {}).get("name")},
        "spec": {
            "group": spec.get("group"),
            "names": spec.get("names"),
            "scope": spec.get("scope"),
            "versions": [
                {k: v.get(k) for k in ("name", "served", "storage", "subresources")}
                for v in spec.get("versions") or []
            ],
        },
    }


def _parse(text, loader):
    try:
        return loader(text)
    except (ValueError, yaml.YAMLError):
        return text  # kept as text: a difference still shows


# In the injector's `values`, keys whose default (false, "") reads like their absence: upstream's
# istiod chart has no default for them (its injection templates read them absent), this
# project's carries one (its injection templates read every value through a default it holds).
ABSENT_WHEN_DEFAULT = {
    ("global", "proxy", "capNetBindService"): False,
    ("global", "proxy", "holdApplicationUntilProxyStarts"): False,
    ("global", "platform"): "",
}


def _injector_values(values):
    """`pilot.cni` reduced to what the injection templates read (`enabled`, `provider`): upstream
    1.24's istiod chart copies its whole top-level `cni` there (templates/istiod-injector-configmap.yaml),
    so whatever a chart profile or istioctl's all-charts values put under `cni` for the istio-cni
    chart (`ambient.enabled`, `resources`) shows up too, unread. ABSENT_WHEN_DEFAULT dropped at their default."""
    if not isinstance(values, dict):
        return values
    values = json.loads(json.dumps(values))  # a copy to edit
    cni = (values.get("pilot") or {}).get("cni") if isinstance(values.get("pilot"), dict) else None
    if isinstance(cni, dict):
        values["pilot"]["cni"] = {k: v for k, v in cni.items() if k in ("enabled", "provider")}
    for (*parents, last), default in ABSENT_WHEN_DEFAULT.items():
        m = values
        for k in parents:
            m = m.get(k) if isinstance(m, dict) else None
        if isinstance(m, dict) and last in m and m[last] == default and type(m[last]) is type(default):
            del m[last]
    return values


def _configmap(obj):
    # Fields already parsed (a digest normalised again) stay as they are.
    data = dict(obj.get("data") or {})
    if "config" in data and "values" in data:  # the sidecar injector
        cfg = _parse(data["config"], yaml.safe_load) if isinstance(data["config"], str) else data["config"]
        if isinstance(cfg, dict) and isinstance(cfg.get("templates"), dict):
            cfg = dict(cfg, templates=sorted(cfg["templates"]))
        data["config"] = cfg
        if isinstance(data["values"], str):
            data["values"] = _parse(data["values"], json.loads)
        data["values"] = _injector_values(data["values"])
    for k in ("mesh", "meshNetworks"):
        if isinstance(data.get(k), str):
            data[k] = _parse(data[k], yaml.safe_load)
    obj["data"] = data
    return obj


def normalise(obj, namespace=DEFAULT_NAMESPACE):
    """One object; a namespaced object without a namespace goes to `namespace`."""
    kind = obj["kind"]
    if kind == "CustomResourceDefinition":
        return prune(_crd(obj))
    o = dict(obj)
    o["metadata"] = _metadata(o.get("metadata"), kind in CLUSTER_SCOPED, namespace)
    spec = o.get("spec")
    if isinstance(spec, dict) and isinstance(spec.get("template"), dict):
        tmpl = dict(spec["template"])
        if "metadata" in tmpl:
            tmpl["metadata"] = _metadata(tmpl["metadata"], True)
        o["spec"] = dict(spec, template=tmpl)
    if kind == "ConfigMap":
        o = _configmap(o)
    return prune(o)


def key(obj, namespace=DEFAULT_NAMESPACE):
    kind = obj["kind"]
    meta = obj.get("metadata") or {}
    ns = "" if kind in CLUSTER_SCOPED else (meta.get("namespace") or namespace)
    return f"{kind}/{ns}/{meta.get('name')}"


def objects(text):
    """Every object of a multi-document YAML (or JSON) text; Lists are unpacked."""
    for doc in yaml.safe_load_all(text):
        if not isinstance(doc, dict) or not doc.get("kind"):
            continue
        if doc["kind"].endswith("List") and isinstance(doc.get("items"), list):
            yield from (it for it in doc["items"] if isinstance(it, dict) and it.get("kind"))
        else:
            yield doc


def digest(text, namespace=DEFAULT_NAMESPACE, into=None):
    """The digest of a manifest whose objects without a namespace go to `namespace`, added to
    `into` when given. Two objects with one key is an error (a renderer bug)."""
    out = dict(into or {})
    for obj in objects(text):
        k = key(obj, namespace)
        if k in out:
            raise ValueError(f"{k} appears twice in the manifest")
        out[k] = normalise(obj, namespace)
    return dict(sorted(out.items()))
