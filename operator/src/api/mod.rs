//! The `IstioInstall` API (`istioinstall.io/v1alpha1`): spec, status and CRD generation.
//!
//! Rules the API server can check alone (formats, names, uniqueness) live here as schema and CEL
//! rules, so a bad spec is refused at admission. Rules that need the bundled charts (does this
//! version exist, is this values key known) are checked by [`crate::validate`].

mod components;
mod schemas;
mod status;

pub use components::*;
pub use status::*;

use kube::{CustomResource, CustomResourceExt, KubeSchema};
use serde::{Deserialize, Serialize};

/// Field manager and `app.kubernetes.io/managed-by` value of everything this operator writes.
pub const MANAGER: &str = "istio-install-operator";
/// Annotation on an IstioInstall: `"true"` stops every write for it (a hand-made fix can stay
/// while it is investigated); deleting the install still uninstalls it.
pub const PAUSED_ANNOTATION: &str = "istioinstall.io/paused";
/// Annotation on an object the operator manages: `"true"` leaves that object as it is in the
/// cluster (no writes, no prune); its health still gates the install.
pub const IGNORE_ANNOTATION: &str = "istioinstall.io/ignore";
pub const GROUP: &str = "istioinstall.io";

/// Installs one Istio control plane (and its data plane components) from the upstream charts of
/// one Istio release. Change `version` to upgrade.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "istioinstall.io",
    version = "v1alpha1",
    kind = "IstioInstall",
    plural = "istioinstalls",
    shortname = "ii",
    category = "istio",
    status = "IstioInstallStatus",
    printcolumn = r#"{"name":"Version","type":"string","jsonPath":".spec.version"}"#,
    printcolumn = r#"{"name":"Installed","type":"string","jsonPath":".status.installedVersion"}"#,
    printcolumn = r#"{"name":"Profile","type":"string","jsonPath":".spec.profile"}"#,
    printcolumn = r#"{"name":"Revision","type":"string","jsonPath":".spec.revision","priority":1}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Status","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].message","priority":1}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct IstioInstallSpec {
    /// The Istio release to install: a minor such as `1.24` (the newest bundled patch of it) or an
    /// exact release such as `1.24.6`. Changing it upgrades the installation.
    #[schemars(length(min = 1, max = 32))]
    #[x_kube(validation = kube::core::Rule::new(
        "self.matches('^[0-9]+[.][0-9]+([.][0-9]+)?$')"
    ).message("version must be an Istio minor (1.24) or an exact release (1.24.6)"))]
    pub version: String,

    /// The installation profile of that release, as with `istioctl install --set profile=`:
    /// default, demo, minimal, empty, ambient, preview, stable, ... The API server accepts the
    /// profiles of every bundled release; the operator checks that the release has it. Defaults
    /// to `default`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 63))]
    #[x_kube(validation = profile_rule())]
    pub profile: Option<String>,

    /// Namespace of the control plane (istiod, and by default every other component).
    /// Defaults to `istio-system`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 63))]
    #[x_kube(validation = kube::core::Rule::new(
        "self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')"
    ).message("namespace must be a DNS label: lower-case letters, digits and '-', at most 63 characters"))]
    pub namespace: Option<String>,

    /// Control-plane revision (`istiod-<revision>`), for revision-based (canary) upgrades.
    /// Empty means the default revision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 63))]
    #[x_kube(validation = kube::core::Rule::new(
        "self == '' || self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')"
    ).message("revision must be a DNS label such as 1-24-6 (lower-case letters, digits and '-')"))]
    pub revision: Option<String>,

    /// Image registry for every component; overrides `values.global.hub`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hub: Option<String>,

    /// Image tag for every component; overrides `values.global.tag`. Defaults to the release.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,

    /// Helm values, exactly as passed to the upstream charts through IstioOperator `values`
    /// (`global`, `pilot`, `cni`, `ztunnel`, `gateways`, `sidecarInjectorWebhook`,
    /// `revisionTags`, `compatibilityVersion`, …). Unknown keys are rejected with the key named.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "free_form_object")]
    pub values: Option<serde_json::Value>,

    /// Mesh-wide configuration (the `mesh` key of the `istio` ConfigMap), merged over the
    /// release defaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schemas::mesh_config")]
    pub mesh_config: Option<serde_json::Value>,

    /// Which components to install, where, and Kubernetes-level overrides for each.
    /// Unset components follow the profile.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub components: Option<Components>,

    /// Waypoint proxies (Gateway API `Gateway`s of class `istio-waypoint`) for ambient mode.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    /// Unique by namespace and name (a list-map: the API server refuses duplicates).
    #[schemars(length(max = 256))]
    #[x_kube(merge_strategy = kube::core::ListMerge::Map(vec!["namespace".into(), "name".into()]))]
    pub waypoints: Vec<Waypoint>,
}

/// A waypoint proxy for ambient mode.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Waypoint {
    /// Namespace of the waypoint.
    #[schemars(length(min = 1, max = 63))]
    #[x_kube(validation = kube::core::Rule::new("self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')")
        .message("waypoint namespace must be a DNS label"))]
    pub namespace: String,
    /// Name of the waypoint Gateway. Defaults to `waypoint`.
    #[serde(default = "default_waypoint_name")]
    #[schemars(length(max = 63))]
    #[x_kube(validation = kube::core::Rule::new("self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')")
        .message("waypoint name must be a DNS label"))]
    pub name: String,
    /// Traffic the waypoint handles: service (default), workload, all or none.
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "for")]
    #[x_kube(validation = kube::core::Rule::new("self in ['service', 'workload', 'all', 'none']")
        .message("waypoint 'for' must be one of service, workload, all, none"))]
    pub for_traffic: Option<String>,
    /// Which namespaces may use the waypoint: Same (default), All, or Selector.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = kube::core::Rule::new("self in ['Same', 'All', 'Selector']")
        .message("allowedNamespaces must be one of Same, All, Selector"))]
    pub allowed_namespaces: Option<String>,
    /// Label selector of the namespaces allowed with `allowedNamespaces: Selector`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector>,
    /// Enrol the waypoint's namespace in ambient mode (`istio.io/dataplane-mode=ambient`) and
    /// point it at this waypoint (`istio.io/use-waypoint`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enroll_namespace: Option<bool>,
    /// Other namespaces to enrol in ambient mode and point at this waypoint
    /// (`istio.io/use-waypoint-namespace` when it is not their own).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub use_from_namespaces: Vec<String>,
}

/// The CRD's rule for `spec.profile`: any profile of a bundled minor (from each `bundle.yaml`),
/// so `kubectl apply` refuses a typo. Whether the release asked for has that profile is checked
/// by validate, which knows the release.
fn profile_rule() -> kube::core::Rule {
    let profiles = crate::bundle::all_profiles();
    let quoted: Vec<String> = profiles.iter().map(|p| format!("'{p}'")).collect();
    kube::core::Rule::new(format!("self in [{}]", quoted.join(", "))).message(
        kube::core::Message::Message(format!("profile must be one of {}", profiles.join(", "))),
    )
}

fn default_waypoint_name() -> String {
    "waypoint".to_string()
}

pub(crate) fn free_form_object(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true
    })
}

// Typed in Rust (so a bad value is reported by field), free-form in the CRD: inlining the full
// Kubernetes schemas of Affinity, EnvVar, … six times over would make the CRD too large for
// client-side `kubectl apply` (its last-applied annotation is limited to 256 KiB).
pub(crate) fn free_form_list(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "array",
        "items": { "type": "object", "x-kubernetes-preserve-unknown-fields": true }
    })
}

pub(crate) fn free_form_any(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({ "x-kubernetes-preserve-unknown-fields": true })
}

/// Rust doc comments wrap at 100 columns; `kubectl explain` re-wraps, so the source line
/// breaks would show as ragged lines. Paragraph breaks are kept.
fn unwrap_descriptions(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m.iter_mut() {
                match v {
                    serde_json::Value::String(s) if k == "description" => {
                        *s = s
                            .split("\n\n")
                            .map(|p| p.split('\n').map(str::trim).collect::<Vec<_>>().join(" "))
                            .collect::<Vec<_>>()
                            .join("\n\n");
                    }
                    _ => unwrap_descriptions(v),
                }
            }
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(unwrap_descriptions),
        _ => {}
    }
}

/// The CRD as YAML, exactly as committed under `crds/`.
pub fn crd_yaml() -> Result<String, String> {
    let mut crd = serde_json::to_value(IstioInstall::crd())
        .map_err(|e| format!("serializing the CRD: {e}"))?;
    unwrap_descriptions(&mut crd);
    let mut out = String::from("# Generated by `istio-install-operator crd`; do not edit.\n");
    out.push_str(&serde_saphyr::to_string(&crd).map_err(|e| format!("serializing the CRD: {e}"))?);
    Ok(out)
}

/// `manifests/chart/templates/crd.yaml`: the same CRD as a Helm template, because Helm installs
/// a chart's `crds/` folder once and never upgrades it, while templates are upgraded. Annotated
/// `helm.sh/resource-policy: keep`, so `helm uninstall` leaves it (and every IstioInstall) in
/// place; `crds.install: false` leaves it out for clusters that manage the CRD elsewhere.
pub fn crd_helm_template() -> Result<String, String> {
    let mut crd = serde_json::to_value(IstioInstall::crd())
        .map_err(|e| format!("serializing the CRD: {e}"))?;
    unwrap_descriptions(&mut crd);
    let name = crd
        .pointer("/metadata/name")
        .and_then(|n| n.as_str())
        .ok_or("the CRD has no name")?
        .to_string();
    let spec = serde_json::json!({ "spec": crd.get("spec") });
    let spec = serde_saphyr::to_string(&spec).map_err(|e| format!("serializing the CRD: {e}"))?;
    Ok(format!(
        "# Generated by `istio-install-operator crd --helm`; do not edit (a test fails when it drifts).\n\
         {{{{- if .Values.crds.install }}}}\n\
         apiVersion: apiextensions.k8s.io/v1\n\
         kind: CustomResourceDefinition\n\
         metadata:\n  name: {name}\n  \
         annotations:\n    helm.sh/resource-policy: keep\n  \
         labels:\n    {{{{- include \"istio-install-operator.labels\" . | nindent 4 }}}}\n\
         {spec}{{{{- end }}}}\n"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chart_is_versioned_with_the_operator() {
        let chart = include_str!("../../../manifests/chart/Chart.yaml");
        let version = env!("CARGO_PKG_VERSION");
        for line in [
            format!("\nversion: {version}\n"),
            format!("\nappVersion: \"{version}\"\n"),
        ] {
            assert!(
                chart.contains(&line),
                "manifests/chart/Chart.yaml: expected {:?} (the operator's version), set it there",
                line.trim()
            );
        }
    }

    #[test]
    fn the_charts_crd_template_is_the_generated_one() {
        let committed = include_str!("../../../manifests/chart/templates/crd.yaml");
        assert!(
            Ok(committed.to_string()) == crd_helm_template(),
            "manifests/chart/templates/crd.yaml is stale: run `make generate` and commit it"
        );
    }

    #[test]
    fn committed_crd_matches_the_rust_types() {
        let committed = include_str!("../../../crds/istioinstall.io_istioinstalls.yaml");
        assert!(
            committed == crd_yaml().unwrap(),
            "crds/istioinstall.io_istioinstalls.yaml is stale: run `make crds` and commit it"
        );
        // kustomize reads nothing outside the kustomization's folder, so manifests/ has its own.
        assert!(
            Ok(include_str!("../../../manifests/crd.yaml").to_string()) == crd_yaml(),
            "manifests/crd.yaml is stale: run `make crds` and commit it"
        );
    }

    #[test]
    fn the_crd_profile_rule_lists_every_bundled_profile() {
        let committed = include_str!("../../../crds/istioinstall.io_istioinstalls.yaml");
        for b in crate::bundle::bundles() {
            for p in b.profiles() {
                assert!(
                    committed.contains(&format!("'{p}'")),
                    "charts/{}/bundle.yaml has profile {p}, which the committed CRD's profile \
                     rule lacks: run `make crds` and commit it",
                    b.minor
                );
            }
        }
    }

    #[test]
    fn crd_is_cluster_scoped_with_short_name() {
        let crd = IstioInstall::crd();
        assert_eq!(crd.spec.scope, "Cluster");
        assert_eq!(crd.spec.names.short_names, Some(vec!["ii".to_string()]));
    }
}
