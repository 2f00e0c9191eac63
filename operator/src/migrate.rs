//! migrate: an IstioOperator (install.istio.io/v1alpha1, what `istioctl install` and Istio's
//! removed in-cluster operator read) → the equivalent IstioInstall. Pure.
//!
//! The IstioInstall API keeps IstioOperator's shape (`profile`, `hub`, `tag`, `revision`,
//! `values`, `meshConfig`, `components` with `k8s` overrides and overlays), so most fields carry
//! over as they are. What does not is reported, field by field, with what to do instead; nothing
//! is dropped silently. The operator then adopts the running objects in place (server-side
//! apply takes over their fields; nothing is deleted and re-created).

use crate::api::IstioInstallSpec;
use crate::bundle;
use crate::json::at;
use serde_json::{Map, Value, json};

/// One converted IstioOperator.
#[derive(Debug, Clone, PartialEq)]
pub struct Converted {
    /// The IstioInstall, ready to apply.
    pub install: Value,
    /// Fields that were not carried over, and what to do about each.
    pub notes: Vec<String>,
}

/// Kubernetes overrides an IstioInstall component takes as they are.
const K8S_FIELDS: &[&str] = &[
    "resources",
    "replicaCount",
    "hpaSpec",
    "podDisruptionBudget",
    "nodeSelector",
    "tolerations",
    "affinity",
    "env",
    "podAnnotations",
    "serviceAnnotations",
    "priorityClassName",
    "securityContext",
    "strategy",
    "service",
    "overlays",
];

/// Converts one IstioOperator document. `version` is the Istio release it runs (an
/// IstioOperator does not say; `spec.tag` is used when it names a bundled release).
pub fn convert(iop: &Value, version: Option<&str>) -> Result<Converted, String> {
    if iop["apiVersion"] != "install.istio.io/v1alpha1" || iop["kind"] != "IstioOperator" {
        return Err(format!(
            "expected an IstioOperator (apiVersion install.istio.io/v1alpha1), found kind {} of {}",
            iop["kind"], iop["apiVersion"]
        ));
    }
    let name = at(iop, &["metadata", "name"]).as_str().unwrap_or("istio");
    let empty = Map::new();
    let source = iop["spec"].as_object().unwrap_or(&empty);
    let mut notes = Vec::new();
    let mut spec = Map::new();

    let tag = source.get("tag").and_then(tag_text);
    let version = match (version, tag.as_deref().and_then(release_of_tag)) {
        (Some(v), _) => v.to_string(),
        (None, Some(release)) => release,
        (None, None) => {
            return Err(format!(
                "IstioOperator {name}: spec.tag {} does not name a bundled Istio release, so the \
                 release it runs is unknown; pass --version with the release the cluster runs \
                 (`istioctl version` shows it), e.g. --version 1.23.6",
                tag.as_deref()
                    .map_or("(unset)".to_string(), |t| format!("{t:?}"))
            ));
        }
    };
    spec.insert("version".into(), json!(version));

    for (key, value) in source {
        match key.as_str() {
            "profile" | "hub" | "namespace" | "revision" => {
                spec.insert(key.clone(), value.clone());
            }
            "tag" => {
                // A tag that is just the release is what the release installs anyway.
                if tag.as_deref() != Some(version.as_str()) {
                    spec.insert("tag".into(), value.clone());
                }
            }
            "meshConfig" => {
                spec.insert("meshConfig".into(), value.clone());
            }
            "values" => {
                merge_into(&mut spec, "values", value.clone());
            }
            "compatibilityVersion" => {
                merge_into(&mut spec, "values", json!({"compatibilityVersion": value}));
            }
            "components" => {
                let components = convert_components(value, &mut spec, &mut notes);
                if !components.is_empty() {
                    spec.insert("components".into(), Value::Object(components));
                }
            }
            "unvalidatedValues" => notes.push(
                "spec.unvalidatedValues: not carried over; an IstioInstall checks every value, so \
                 move each one into spec.values (an unknown key is then reported by name)"
                    .into(),
            ),
            "installPackagePath" => notes.push(
                "spec.installPackagePath: not carried over; the charts are built into the \
                 operator (spec.version picks them)"
                    .into(),
            ),
            "resourceSuffix" => notes.push(
                "spec.resourceSuffix: not carried over (deprecated by Istio); use spec.revision"
                    .into(),
            ),
            "addonComponents" => notes.push(
                "spec.addonComponents: not carried over; addons (Prometheus, Grafana, Kiali, …) \
                 were removed from Istio's installer in 1.8: install them separately"
                    .into(),
            ),
            other => notes.push(format!(
                "spec.{other}: not carried over; IstioInstall has no such field"
            )),
        }
    }

    let spec_value = Value::Object(spec);
    // The result must be an IstioInstall the API server accepts.
    serde_json::from_value::<IstioInstallSpec>(spec_value.clone())
        .map_err(|e| format!("IstioOperator {name}: the converted spec is not valid: {e}"))?;
    Ok(Converted {
        install: json!({
            "apiVersion": "istioinstall.io/v1alpha1",
            "kind": "IstioInstall",
            "metadata": {"name": name},
            "spec": spec_value,
        }),
        notes,
    })
}

fn tag_text(tag: &Value) -> Option<String> {
    match tag {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// `1.23.6` or `1.23.6-distroless` → `1.23.6` when that release is bundled.
fn release_of_tag(tag: &str) -> Option<String> {
    let release = tag.split('-').next()?;
    bundle::releases()
        .iter()
        .any(|r| r.to_string() == release)
        .then(|| release.to_string())
}

fn merge_into(spec: &mut Map<String, Value>, key: &str, value: Value) {
    let slot = spec.entry(key).or_insert_with(|| json!({}));
    crate::values::merge(slot, value);
}

/// `spec.components`: carried over field by field; per-component hub and tag become the Helm
/// values istioctl would have set.
fn convert_components(
    components: &Value,
    spec: &mut Map<String, Value>,
    notes: &mut Vec<String>,
) -> Map<String, Value> {
    let mut out = Map::new();
    let Some(components) = components.as_object() else {
        return out;
    };
    for (name, component) in components {
        let path = format!("spec.components.{name}");
        match name.as_str() {
            "base" | "pilot" | "cni" | "ztunnel" => {
                let values_key = match name.as_str() {
                    "base" => None,
                    other => Some(other),
                };
                if let Some(c) = convert_component(component, &path, values_key, spec, notes) {
                    out.insert(name.clone(), c);
                }
            }
            "ingressGateways" | "egressGateways" => {
                let gateways: Vec<Value> = component
                    .as_array()
                    .into_iter()
                    .flatten()
                    .enumerate()
                    .filter_map(|(i, g)| {
                        let path = format!("{path}[{i}]");
                        let mut c = convert_component(g, &path, None, spec, notes)?;
                        for key in ["name", "label"] {
                            if let (Some(v), Some(c)) = (g.get(key), c.as_object_mut()) {
                                c.insert(key.into(), v.clone());
                            }
                        }
                        Some(c)
                    })
                    .collect();
                if !gateways.is_empty() {
                    out.insert(name.clone(), Value::Array(gateways));
                }
            }
            "istiodRemote" => {
                if component["enabled"] == true {
                    notes.push(format!(
                        "{path}: not carried over; for a remote cluster use profile: remote"
                    ));
                }
            }
            other => notes.push(format!(
                "{path}: not carried over; IstioInstall has no component {other:?}"
            )),
        }
    }
    out
}

fn convert_component(
    component: &Value,
    path: &str,
    values_key: Option<&str>,
    spec: &mut Map<String, Value>,
    notes: &mut Vec<String>,
) -> Option<Value> {
    let source = component.as_object()?;
    let mut out = Map::new();
    for (key, value) in source {
        match key.as_str() {
            "enabled" | "namespace" => {
                out.insert(key.clone(), value.clone());
            }
            "name" | "label" => {}
            "hub" | "tag" => match values_key {
                Some(values_key) => {
                    merge_into(spec, "values", json!({values_key: {key: value}}));
                }
                None => notes.push(format!(
                    "{path}.{key}: not carried over; the gateways use the install's hub and \
                     tag (spec.hub, spec.tag), or set the image with an overlay"
                )),
            },
            "k8s" => {
                let mut k8s = Map::new();
                for (field, v) in value.as_object().into_iter().flatten() {
                    if K8S_FIELDS.contains(&field.as_str()) {
                        k8s.insert(field.clone(), v.clone());
                    } else {
                        // Where the field lives in the workload, for the overlay that sets it.
                        let target = match field.as_str() {
                            "readinessProbe" | "livenessProbe" | "startupProbe"
                            | "imagePullPolicy" | "volumeMounts" | "lifecycle" => {
                                format!("spec.template.spec.containers[0].{field}")
                            }
                            _ => format!("spec.template.spec.{field}"),
                        };
                        notes.push(format!(
                            "{path}.k8s.{field}: not carried over; set it with an overlay on the \
                             component's Deployment or DaemonSet (path {target})"
                        ));
                    }
                }
                if !k8s.is_empty() {
                    out.insert("k8s".into(), Value::Object(k8s));
                }
            }
            "spec" => notes.push(format!(
                "{path}.spec: not carried over; that form was removed from IstioOperator in 1.6 \
                 (use k8s)"
            )),
            other => notes.push(format!("{path}.{other}: not carried over; no such field")),
        }
    }
    Some(Value::Object(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iop(spec: Value) -> Value {
        json!({"apiVersion": "install.istio.io/v1alpha1", "kind": "IstioOperator",
               "metadata": {"name": "installed-state", "namespace": "istio-system"}, "spec": spec})
    }

    #[test]
    fn the_iop_shape_carries_over_and_the_tag_gives_the_release() {
        let converted = convert(
            &iop(json!({
                "profile": "ambient", "tag": "1.23.6", "hub": "docker.io/istio", "revision": "1-23",
                "meshConfig": {"accessLogFile": "/dev/stdout"},
                "values": {"pilot": {"env": {"A": "b"}}},
                "compatibilityVersion": "1.22",
                "components": {
                    "pilot": {"k8s": {"replicaCount": 2, "resources": {"requests": {"cpu": "1"}}},
                              "hub": "example.com/istio"},
                    "cni": {"enabled": true, "namespace": "kube-system"},
                    "ingressGateways": [{"name": "edge", "enabled": true, "namespace": "edge",
                                         "label": {"app": "edge"}, "k8s": {"service": {"type": "NodePort"}}}],
                },
            })),
            None,
        )
        .expect("converts");
        assert_eq!(converted.notes, Vec::<String>::new());
        assert_eq!(
            converted.install,
            json!({
                "apiVersion": "istioinstall.io/v1alpha1", "kind": "IstioInstall",
                "metadata": {"name": "installed-state"},
                "spec": {
                    "version": "1.23.6", "profile": "ambient", "hub": "docker.io/istio",
                    "revision": "1-23", "meshConfig": {"accessLogFile": "/dev/stdout"},
                    "values": {"pilot": {"env": {"A": "b"}, "hub": "example.com/istio"},
                               "compatibilityVersion": "1.22"},
                    "components": {
                        "pilot": {"k8s": {"replicaCount": 2, "resources": {"requests": {"cpu": "1"}}}},
                        "cni": {"enabled": true, "namespace": "kube-system"},
                        "ingressGateways": [{"name": "edge", "enabled": true, "namespace": "edge",
                                             "label": {"app": "edge"}, "k8s": {"service": {"type": "NodePort"}}}],
                    },
                },
            })
        );
        // The converted spec validates against the bundle.
        let spec: IstioInstallSpec =
            serde_json::from_value(converted.install["spec"].clone()).unwrap();
        crate::validate::validate(&spec).expect("valid");
    }

    #[test]
    fn what_does_not_carry_over_is_reported_by_field() {
        let converted = convert(
            &iop(json!({
                "tag": "1.24.6-distroless",
                "installPackagePath": "/charts",
                "unvalidatedValues": {"x": 1},
                "addonComponents": {"grafana": {"enabled": true}},
                "components": {
                    "pilot": {"k8s": {"readinessProbe": {"periodSeconds": 5}}},
                    "ingressGateways": [{"name": "istio-ingressgateway", "tag": "1.24.5"}],
                    "telemetry": {"enabled": true},
                },
            })),
            None,
        )
        .expect("converts");
        assert_eq!(converted.install["spec"]["version"], "1.24.6");
        // A tag with a variant is kept: it says more than the release.
        assert_eq!(converted.install["spec"]["tag"], "1.24.6-distroless");
        let notes = converted.notes.join("\n");
        for field in [
            "spec.installPackagePath",
            "spec.unvalidatedValues",
            "spec.addonComponents",
            "spec.components.pilot.k8s.readinessProbe",
            "spec.components.ingressGateways[0].tag",
            "spec.components.telemetry",
        ] {
            assert!(notes.contains(field), "{field} missing from:\n{notes}");
        }
    }

    #[test]
    fn the_release_must_be_known() {
        let err = convert(&iop(json!({"profile": "default"})), None).expect_err("no version");
        assert!(err.contains("pass --version"), "{err}");
        let converted = convert(&iop(json!({"tag": "my-build"})), Some("1.23.6")).unwrap();
        assert_eq!(converted.install["spec"]["version"], "1.23.6");
        assert_eq!(converted.install["spec"]["tag"], "my-build");
        let err = convert(&json!({"apiVersion": "v1", "kind": "ConfigMap"}), None).unwrap_err();
        assert!(err.contains("expected an IstioOperator"), "{err}");
    }
}
