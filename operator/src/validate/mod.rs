//! validate: an `IstioInstallSpec` in, a [`ValidatedInstall`] out (resolved release, merged
//! values, the components to install). Pure; every error names the field, what was expected and
//! what was found.

use crate::api::{GatewayComponentSpec, IstioInstallSpec, KubernetesOverrides, Waypoint};
use crate::bundle::{self, Bundle, Release};
use crate::json::at;
use crate::values::{self, ValuesError};
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::BTreeMap;

pub mod meshconfig;
mod quantity;

/// The kinds of component. The one place that knows their order: an install or upgrade goes
/// in the declared order (the control plane before the data plane), a downgrade takes the data
/// plane back first ([`ComponentKind::downgrade_rank`]), uninstall goes in reverse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ComponentKind {
    Base,
    Pilot,
    Cni,
    Ztunnel,
    IngressGateway,
    EgressGateway,
    /// Gateway API waypoints from `spec.waypoints` (rendered by the operator, not a chart).
    Waypoints,
}

impl ComponentKind {
    /// The template folder of this component under `charts/<minor>/templates/`.
    pub fn template_dir(self) -> &'static str {
        match self {
            ComponentKind::Base => "base",
            ComponentKind::Pilot => "istiod",
            ComponentKind::Cni => "cni",
            ComponentKind::Ztunnel => "ztunnel",
            ComponentKind::IngressGateway | ComponentKind::EgressGateway => "gateway",
            ComponentKind::Waypoints => "waypoints",
        }
    }
    pub fn field(self) -> &'static str {
        match self {
            ComponentKind::Base => "base",
            ComponentKind::Pilot => "pilot",
            ComponentKind::Cni => "cni",
            ComponentKind::Ztunnel => "ztunnel",
            ComponentKind::IngressGateway => "ingressGateways",
            ComponentKind::EgressGateway => "egressGateways",
            ComponentKind::Waypoints => "waypoints",
        }
    }
    /// Position in install (and upgrade) order.
    pub fn install_rank(self) -> usize {
        match self {
            ComponentKind::Base => 0,
            ComponentKind::Pilot => 1,
            ComponentKind::Cni => 2,
            ComponentKind::Ztunnel => 3,
            ComponentKind::IngressGateway | ComponentKind::EgressGateway => 4,
            ComponentKind::Waypoints => 5,
        }
    }

    /// Position in downgrade order: the data plane goes back before the control plane, so it
    /// is never newer than istiod (the CRDs stay first, waypoints last).
    pub fn downgrade_rank(self) -> usize {
        match self {
            ComponentKind::Base => 0,
            ComponentKind::IngressGateway | ComponentKind::EgressGateway => 1,
            ComponentKind::Ztunnel => 2,
            ComponentKind::Cni => 3,
            ComponentKind::Pilot => 4,
            ComponentKind::Waypoints => 5,
        }
    }

    /// The kind of a component from the value of its component label (`base`, `pilot`, `cni`,
    /// `ztunnel`, `waypoints`, or a gateway's name).
    pub fn from_label(label: &str) -> ComponentKind {
        match label {
            "base" => ComponentKind::Base,
            "pilot" => ComponentKind::Pilot,
            "cni" => ComponentKind::Cni,
            "ztunnel" => ComponentKind::Ztunnel,
            "waypoints" => ComponentKind::Waypoints,
            _ => ComponentKind::IngressGateway,
        }
    }

    /// How people call it in messages.
    pub fn display_name(self) -> &'static str {
        match self {
            ComponentKind::Base => "the CRDs",
            ComponentKind::Pilot => "istiod",
            ComponentKind::Cni => "istio-cni",
            ComponentKind::Ztunnel => "ztunnel",
            ComponentKind::IngressGateway | ComponentKind::EgressGateway => "the gateways",
            ComponentKind::Waypoints => "the waypoints",
        }
    }

    /// The data-plane and control-plane components in the order a direction applies them, for
    /// messages: "istiod, istio-cni, ztunnel, the gateways".
    pub fn order_in_words(downgrade: bool) -> Vec<&'static str> {
        let mut kinds = [
            ComponentKind::Pilot,
            ComponentKind::Cni,
            ComponentKind::Ztunnel,
            ComponentKind::IngressGateway,
        ];
        if downgrade {
            kinds.sort_by_key(|k| k.downgrade_rank());
        }
        kinds.iter().map(|k| k.display_name()).collect()
    }

    /// Cluster-wide components: at most one IstioInstall may own each.
    pub fn is_cluster_wide(self) -> bool {
        matches!(
            self,
            ComponentKind::Base | ComponentKind::Cni | ComponentKind::Ztunnel
        )
    }
}

/// One component to install.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidatedComponent {
    pub kind: ComponentKind,
    /// `base`, `pilot`, `cni`, `ztunnel`, or the gateway name.
    pub name: String,
    pub namespace: String,
    /// Gateway pod labels (gateways only).
    pub labels: BTreeMap<String, String>,
    pub k8s: Option<KubernetesOverrides>,
}

/// Everything render needs, resolved and checked.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidatedInstall {
    pub release: Release,
    /// The bundle of `release`'s minor.
    bundle: &'static Bundle,
    pub profile: String,
    /// Control-plane namespace.
    pub namespace: String,
    /// "" for the default revision.
    pub revision: String,
    /// Fully merged values (chart defaults < chart profile < compatibility < platform < user).
    pub values: Value,
    /// Enabled components, in install order (a `Waypoints` component when `waypoints` is not
    /// empty).
    pub components: Vec<ValidatedComponent>,
    /// `spec.waypoints`, checked.
    pub waypoints: Vec<Waypoint>,
}

impl ValidatedInstall {
    /// Every namespace the install puts objects in: the control plane's, each component's and
    /// each waypoint's.
    pub fn namespaces(&self) -> Vec<String> {
        let mut out = vec![self.namespace.clone()];
        // With multus, istio-cni's NetworkAttachmentDefinition lives in `default`, as the
        // chart has it.
        if self.components.iter().any(|c| c.kind == ComponentKind::Cni)
            && at(&self.values, &["cni", "provider"]) == "multus"
        {
            out.push("default".to_string());
        }
        let all = self
            .components
            .iter()
            .map(|c| &c.namespace)
            .chain(self.waypoints.iter().map(|w| &w.namespace));
        for ns in all {
            if !out.contains(ns) {
                out.push(ns.clone());
            }
        }
        out
    }

    pub fn bundle(&self) -> &'static Bundle {
        self.bundle
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ValidationError {
    #[error(transparent)]
    Version(#[from] bundle::BundleError),
    #[error(
        "spec.profile: {found:?} is not a profile of Istio {minor}; expected one of {expected}"
    )]
    UnknownProfile {
        found: String,
        minor: String,
        expected: String,
    },
    #[error("spec.{0}")]
    Values(#[from] ValuesError),
    #[error(
        "spec.values.{key}: {found:?} is not supported by Istio {minor}; expected one of {expected}"
    )]
    UnsupportedChoice {
        key: &'static str,
        found: String,
        minor: String,
        expected: String,
    },
    #[error("spec.{field}: {message}")]
    Invalid { field: String, message: String },
    /// A file of the embedded bundle does not parse: a defect of the build, not of the spec.
    #[error(
        "{0}; this is a defect of this build of the operator (or of ISTIO_INSTALL_CHARTS_DIR, when set), not of the spec"
    )]
    Bundle(String),
}

/// The shape of `profiles/<name>.yaml`.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ProfileFile {
    #[serde(default)]
    components: ProfileComponents,
    #[serde(default)]
    values: Value,
    #[serde(default)]
    mesh_config: Value,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ProfileComponents {
    #[serde(default)]
    base: bool,
    #[serde(default)]
    pilot: bool,
    #[serde(default)]
    cni: bool,
    #[serde(default)]
    ztunnel: bool,
    #[serde(default)]
    ingress_gateways: Vec<GatewayComponentSpec>,
    #[serde(default)]
    egress_gateways: Vec<GatewayComponentSpec>,
}

fn dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// Namespaces no install may put gateways or waypoints in, or enrol, unless the operator is
/// started with `--allow-reserved-namespaces`: the Kubernetes system namespaces and the
/// operator's own. (The control plane, istio-cni and ztunnel may go to kube-system: GKE and
/// OpenShift installs need it.)
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    pub reserved_namespaces: Vec<String>,
    /// When not empty, the only namespaces an install may use (`--allowed-namespaces`).
    pub allowed_namespaces: Vec<String>,
}

/// The operator's own namespace when none is configured.
pub const OPERATOR_NAMESPACE: &str = "istio-install-operator";

impl Policy {
    /// The reserved namespaces, with `operator_namespace` as the operator's own.
    pub fn reserving(operator_namespace: &str) -> Policy {
        let mut reserved: Vec<String> = ["kube-system", "kube-public", "kube-node-lease"]
            .map(String::from)
            .to_vec();
        if !reserved.iter().any(|r| r == operator_namespace) {
            reserved.push(operator_namespace.to_string());
        }
        Policy {
            reserved_namespaces: reserved,
            allowed_namespaces: Vec::new(),
        }
    }

    /// The same policy, accepting only `namespaces` (sorted; none: any namespace).
    pub fn allowing_only(mut self, namespaces: &[String]) -> Policy {
        let mut allowed = namespaces.to_vec();
        allowed.sort();
        allowed.dedup();
        self.allowed_namespaces = allowed;
        self
    }

    /// Nothing reserved (`--allow-reserved-namespaces`).
    pub fn allow_all() -> Policy {
        Policy {
            reserved_namespaces: Vec::new(),
            allowed_namespaces: Vec::new(),
        }
    }

    /// Checks a namespace named at `field` is a namespace name, and an allowed one.
    fn check_dns_label(&self, field: &str, ns: &str) -> Result<(), ValidationError> {
        if !dns_label(ns) {
            return Err(ValidationError::Invalid {
                field: field.to_string(),
                message: format!("expected a namespace name (a DNS label), found {ns:?}"),
            });
        }
        if !self.allowed_namespaces.is_empty() && !self.allowed_namespaces.iter().any(|a| a == ns) {
            return Err(ValidationError::Invalid {
                field: field.to_string(),
                message: format!(
                    "{ns:?} is not among the namespaces this operator may install into ({}); use one of them, or add it to the operator's --allowed-namespaces",
                    self.allowed_namespaces.join(", ")
                ),
            });
        }
        Ok(())
    }

    /// Checks a namespace named at `field`: a DNS label, not reserved.
    fn check_namespace(&self, field: &str, ns: &str) -> Result<(), ValidationError> {
        self.check_dns_label(field, ns)?;
        if self.reserved_namespaces.iter().any(|r| r == ns) {
            return Err(ValidationError::Invalid {
                field: field.to_string(),
                message: format!(
                    "{ns:?} is reserved (the Kubernetes system namespaces and the operator's own: {}); use another namespace, or start the operator with --allow-reserved-namespaces",
                    self.reserved_namespaces.join(", ")
                ),
            });
        }
        Ok(())
    }
}

impl Default for Policy {
    fn default() -> Policy {
        Policy::reserving(OPERATOR_NAMESPACE)
    }
}

/// Validates a spec against the bundled releases, with the default [`Policy`].
pub fn validate(spec: &IstioInstallSpec) -> Result<ValidatedInstall, ValidationError> {
    validate_with(spec, &Policy::default())
}

/// Validates a spec against the bundled releases and the operator's policy.
pub fn validate_with(
    spec: &IstioInstallSpec,
    policy: &Policy,
) -> Result<ValidatedInstall, ValidationError> {
    let (release, bundle) = bundle::resolve(&spec.version)?;
    let minor = bundle.minor.clone();
    let profile = spec.profile.clone().unwrap_or_else(|| "default".into());
    let profiles = bundle.profiles();
    if !profiles.contains(&profile) {
        return Err(ValidationError::UnknownProfile {
            found: profile,
            minor,
            expected: profiles.join(", "),
        });
    }
    let profile_path = format!("profiles/{profile}.yaml");
    let profile_file: ProfileFile = serde_json::from_value(
        bundle
            .yaml(&profile_path)
            .map_err(ValidationError::Bundle)?
            .unwrap_or_default(),
    )
    .map_err(|e| {
        ValidationError::Bundle(format!("charts/{}: {e}", bundle.source(&profile_path)))
    })?;

    let namespace = spec
        .namespace
        .clone()
        .unwrap_or_else(|| "istio-system".into());
    policy.check_dns_label("namespace", &namespace)?;

    // User layer: the profile's values, then spec.values, then the spec-level shortcuts.
    let defaults = bundle.default_values().map_err(ValidationError::Bundle)?;
    let mut user = profile_file.values;
    if user.is_null() {
        user = json!({});
    }
    if let Some(v) = &spec.values {
        if !v.is_object() {
            return Err(ValidationError::Invalid {
                field: "values".into(),
                message: "expected a map".into(),
            });
        }
        values::check_known(v, &defaults, "values", &minor)?;
        if let Some(m) = v.get("meshConfig") {
            check_mesh_config(bundle, m, "values.meshConfig")?;
        }
        check_values_resources(v, "values")?;
        values::merge(&mut user, v.clone());
    }
    let mut mesh = profile_file.mesh_config;
    if mesh.is_null() {
        mesh = json!({});
    }
    if let Some(m) = &spec.mesh_config {
        if !m.is_object() {
            return Err(ValidationError::Invalid {
                field: "meshConfig".into(),
                message: "expected a map".into(),
            });
        }
        check_mesh_config(bundle, m, "meshConfig")?;
        values::merge(&mut mesh, m.clone());
    }
    if mesh.as_object().is_some_and(|m| !m.is_empty()) {
        values::merge(&mut user, json!({ "meshConfig": mesh }));
    }
    if let Some(hub) = &spec.hub {
        values::merge(&mut user, json!({"global": {"hub": hub}}));
    }
    if let Some(tag) = &spec.tag {
        values::merge(&mut user, json!({"global": {"tag": tag}}));
    }
    let revision = match (
        &spec.revision,
        user.pointer("/revision").and_then(Value::as_str),
    ) {
        (Some(r), Some(v)) if !v.is_empty() && r != v => {
            return Err(ValidationError::Invalid {
                field: "revision".into(),
                message: format!("{r:?} contradicts values.revision {v:?}; set only one of them"),
            });
        }
        (Some(r), _) => r.clone(),
        (None, Some(v)) => v.to_string(),
        (None, None) => String::new(),
    };
    if !revision.is_empty() && !dns_label(&revision) {
        return Err(ValidationError::Invalid {
            field: "revision".into(),
            message: format!("expected a DNS label such as 1-24-6, found {revision:?}"),
        });
    }
    values::merge(
        &mut user,
        json!({"revision": revision, "global": {"istioNamespace": namespace}}),
    );

    // Chart layers, in the order the upstream charts apply them.
    let mut merged = defaults;
    values::merge(
        &mut merged,
        json!({"global": {"hub": bundle.manifest.hub, "tag": release.to_string()}}),
    );
    // Each choice must be one the bundle lists; its layer (values/<prefix>-<choice>/) applies.
    let manifest = &bundle.manifest;
    for (key, pointer, prefix, choices) in [
        ("profile", "/profile", "profile", &manifest.chart_profiles),
        (
            "compatibilityVersion",
            "/compatibilityVersion",
            "compatibility",
            &manifest.compatibility_versions,
        ),
        (
            "global.platform",
            "/global/platform",
            "platform",
            &manifest.platforms,
        ),
    ] {
        let choice = user.pointer(pointer).and_then(Value::as_str).unwrap_or("");
        if choice.is_empty() {
            continue;
        }
        if !choices.iter().any(|c| c == choice) {
            return Err(ValidationError::UnsupportedChoice {
                key,
                found: choice.to_string(),
                minor,
                expected: choices.join(", "),
            });
        }
        if let Some(layer) = bundle
            .layer(&format!("{prefix}-{choice}"))
            .map_err(ValidationError::Bundle)?
        {
            values::merge(&mut merged, layer);
        }
    }
    values::merge(&mut merged, user);
    check_log_levels(&merged)?;

    let mut components = select_components(spec, &profile_file.components, &namespace)?;
    for c in &components {
        let field = match c.kind {
            ComponentKind::IngressGateway | ComponentKind::EgressGateway => {
                format!("components.{}[{}].namespace", c.kind.field(), c.name)
            }
            _ => format!("components.{}.namespace", c.kind.field()),
        };
        // The control plane, istio-cni and ztunnel may live in kube-system (GKE and OpenShift
        // need it); gateways, waypoints and enrolment may not touch a reserved namespace.
        if matches!(
            c.kind,
            ComponentKind::IngressGateway | ComponentKind::EgressGateway
        ) {
            policy.check_namespace(&field, &c.namespace)?;
        } else {
            policy.check_dns_label(&field, &c.namespace)?;
        }
    }
    for (i, w) in spec.waypoints.iter().enumerate() {
        policy.check_namespace(&format!("waypoints[{i}].namespace"), &w.namespace)?;
        if !dns_label(&w.name) {
            return Err(ValidationError::Invalid {
                field: format!("waypoints[{i}].name"),
                message: format!("expected a DNS label, found {:?}", w.name),
            });
        }
        for (j, ns) in w.use_from_namespaces.iter().enumerate() {
            policy.check_namespace(&format!("waypoints[{i}].useFromNamespaces[{j}]"), ns)?;
        }
    }
    if !spec.waypoints.is_empty() {
        components.push(ValidatedComponent {
            kind: ComponentKind::Waypoints,
            name: ComponentKind::Waypoints.field().to_string(),
            namespace: namespace.clone(),
            labels: BTreeMap::new(),
            k8s: None,
        });
    }
    Ok(ValidatedInstall {
        release,
        bundle,
        profile,
        namespace,
        revision,
        values: merged,
        components,
        waypoints: spec.waypoints.clone(),
    })
}

/// Every `resources` map in the values (`pilot.resources`, `global.proxy.resources`,
/// `gateways.<name>.resources`, …): its requests and limits must be Kubernetes quantities.
fn check_values_resources(v: &Value, path: &str) -> Result<(), ValidationError> {
    let Value::Object(m) = v else {
        return Ok(());
    };
    for (k, child) in m {
        let p = format!("{path}.{k}");
        if k == "resources" {
            quantity::check_resources(child).map_err(|(sub, message)| {
                ValidationError::Invalid {
                    field: format!("{p}.{sub}"),
                    message,
                }
            })?;
        } else if path != "values" || k != "meshConfig" {
            check_values_resources(child, &p)?;
        }
    }
    Ok(())
}

/// `meshConfig` against the MeshConfig fields and types of the bundled release.
fn check_mesh_config(bundle: &Bundle, m: &Value, field: &str) -> Result<(), ValidationError> {
    meshconfig::schema(bundle)
        .map_err(ValidationError::Bundle)?
        .check(m)
        .map_err(|e| ValidationError::Invalid {
            field: if e.path.is_empty() {
                field.to_string()
            } else {
                format!("{field}.{}", e.path)
            },
            message: format!("{} (MeshConfig of Istio {})", e.message, bundle.minor),
        })
}

fn select_components(
    spec: &IstioInstallSpec,
    profile: &ProfileComponents,
    namespace: &str,
) -> Result<Vec<ValidatedComponent>, ValidationError> {
    let user = spec.components.clone().unwrap_or_default();
    let mut out = Vec::new();
    let singles = [
        (ComponentKind::Base, profile.base, &user.base),
        (ComponentKind::Pilot, profile.pilot, &user.pilot),
        (ComponentKind::Cni, profile.cni, &user.cni),
        (ComponentKind::Ztunnel, profile.ztunnel, &user.ztunnel),
    ];
    for (kind, on_by_profile, user_spec) in singles {
        let enabled = user_spec
            .as_ref()
            .and_then(|c| c.enabled)
            .unwrap_or(on_by_profile);
        if enabled {
            out.push(ValidatedComponent {
                kind,
                name: kind.field().to_string(),
                namespace: user_spec
                    .as_ref()
                    .and_then(|c| c.namespace.clone())
                    .unwrap_or_else(|| namespace.to_string()),
                labels: BTreeMap::new(),
                k8s: user_spec.as_ref().and_then(|c| c.k8s.clone()),
            });
        }
    }
    for (kind, from_profile, from_user) in [
        (
            ComponentKind::IngressGateway,
            &profile.ingress_gateways,
            &user.ingress_gateways,
        ),
        (
            ComponentKind::EgressGateway,
            &profile.egress_gateways,
            &user.egress_gateways,
        ),
    ] {
        // The CRD makes these lists maps keyed by name; the CLI reads files the API server
        // never saw, so the same rule is checked here.
        for (i, g) in from_user.iter().enumerate() {
            if let Some(first) = from_user.iter().take(i).position(|p| p.name == g.name) {
                return Err(ValidationError::Invalid {
                    field: format!("components.{}[{i}].name", kind.field()),
                    message: format!(
                        "{:?} is also the name of components.{}[{first}]; gateway names must be unique",
                        g.name,
                        kind.field()
                    ),
                });
            }
        }
        // Gateways merge by name: a user entry overrides the profile's entry of that name.
        let mut merged: Vec<GatewayComponentSpec> = from_profile.clone();
        for g in from_user {
            match merged.iter_mut().find(|p| p.name == g.name) {
                Some(p) => {
                    p.enabled = g.enabled.or(p.enabled);
                    p.namespace = g.namespace.clone().or(p.namespace.take());
                    p.label = g.label.clone().or(p.label.take());
                    p.k8s = g.k8s.clone().or(p.k8s.take());
                }
                None => merged.push(g.clone()),
            }
        }
        for (i, g) in merged.into_iter().enumerate() {
            if !g.enabled.unwrap_or(true) {
                continue;
            }
            if !dns_label(&g.name) {
                return Err(ValidationError::Invalid {
                    field: format!("components.{}[{i}].name", kind.field()),
                    message: format!("expected a DNS label, found {:?}", g.name),
                });
            }
            let labels = g.label.clone().unwrap_or_else(|| {
                let short = g.name.strip_prefix("istio-").unwrap_or(&g.name).to_string();
                BTreeMap::from([
                    ("app".to_string(), g.name.clone()),
                    ("istio".to_string(), short),
                ])
            });
            out.push(ValidatedComponent {
                kind,
                name: g.name.clone(),
                namespace: g.namespace.clone().unwrap_or_else(|| namespace.to_string()),
                labels,
                k8s: g.k8s.clone(),
            });
        }
    }
    // An ingress and an egress gateway of one name in one namespace would render the same
    // Deployment and Service.
    let gateways: Vec<&ValidatedComponent> = out
        .iter()
        .filter(|c| {
            matches!(
                c.kind,
                ComponentKind::IngressGateway | ComponentKind::EgressGateway
            )
        })
        .collect();
    for (i, g) in gateways.iter().enumerate() {
        if let Some(other) = gateways
            .iter()
            .take(i)
            .find(|o| o.name == g.name && o.namespace == g.namespace)
        {
            return Err(ValidationError::Invalid {
                field: format!("components.{}", g.kind.field()),
                message: format!(
                    "gateway {:?} in namespace {:?} is also one of components.{}; gateway names must be unique per namespace",
                    g.name,
                    g.namespace,
                    other.kind.field()
                ),
            });
        }
    }
    for c in &out {
        if let Some(k8s) = &c.k8s {
            check_kubernetes_types(k8s, &format!("components.{}.k8s", c.kind.field()))?;
        }
        let overlays = c
            .k8s
            .as_ref()
            .map(|k| k.overlays.as_slice())
            .unwrap_or_default();
        for (i, o) in overlays.iter().enumerate() {
            for (j, p) in o.patches.iter().enumerate() {
                if let Err(e) = crate::overlay::parse_path(&p.path) {
                    return Err(ValidationError::Invalid {
                        field: format!(
                            "components.{}.k8s.overlays[{i}].patches[{j}].path",
                            c.kind.field()
                        ),
                        message: e,
                    });
                }
            }
        }
    }
    Ok(out)
}

/// Log levels end up on command lines and in environment variables: they are words, scopes and
/// levels (`default:info`, `misc:error`, `info,ztunnel::proxy=debug`), never free text.
fn check_log_levels(values: &Value) -> Result<(), ValidationError> {
    const LEVELS: &[&str] = &[
        "global.logging.level",
        "cni.logging.level",
        "ztunnel.logLevel",
        "global.proxy.logLevel",
        "global.proxy.componentLogLevel",
        "gateways.istio-ingressgateway.logging.level",
        "gateways.istio-egressgateway.logging.level",
    ];
    for path in LEVELS {
        let pointer = format!("/{}", path.replace('.', "/"));
        let Some(level) = values.pointer(&pointer).and_then(Value::as_str) else {
            continue;
        };
        let ok = level
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-:,=.".contains(&b));
        if !ok || level.len() > 1024 {
            return Err(ValidationError::Invalid {
                field: format!("values.{path}"),
                message: format!(
                    "expected log levels such as \"default:info\" or \"info,ztunnel=debug\" (letters, digits and _-:,=.), found {:?}",
                    level.chars().take(80).collect::<String>()
                ),
            });
        }
    }
    Ok(())
}

/// Checks the Kubernetes-typed overrides against their Kubernetes types.
fn check_kubernetes_types(k8s: &KubernetesOverrides, field: &str) -> Result<(), ValidationError> {
    use k8s_openapi::api::core::v1::{
        Affinity, EnvVar, PodSecurityContext, ResourceRequirements, Toleration,
    };
    fn check<T: serde::de::DeserializeOwned>(
        v: &Value,
        field: String,
        what: &str,
    ) -> Result<(), ValidationError> {
        serde_json::from_value::<T>(v.clone())
            .map(|_| ())
            .map_err(|e| ValidationError::Invalid {
                field,
                message: format!("expected a Kubernetes {what}: {e}"),
            })
    }
    if let Some(r) = &k8s.resources {
        // Quantities may be written as numbers (cpu: 1); Kubernetes reads them as strings.
        let r = quantities_as_strings(r);
        check::<ResourceRequirements>(&r, format!("{field}.resources"), "ResourceRequirements")?;
        // k8s-openapi's Quantity takes any string; the API server does not.
        quantity::check_resources(&r).map_err(|(sub, message)| ValidationError::Invalid {
            field: format!("{field}.resources.{sub}"),
            message,
        })?;
    }
    for (i, t) in k8s.tolerations.iter().flatten().enumerate() {
        check::<Toleration>(t, format!("{field}.tolerations[{i}]"), "Toleration")?;
    }
    if let Some(a) = &k8s.affinity {
        check::<Affinity>(a, format!("{field}.affinity"), "Affinity")?;
    }
    for (i, e) in k8s.env.iter().enumerate() {
        check::<EnvVar>(
            e,
            format!("{field}.env[{i}]"),
            "EnvVar (name, value or valueFrom)",
        )?;
    }
    if let Some(s) = &k8s.security_context {
        check::<PodSecurityContext>(s, format!("{field}.securityContext"), "PodSecurityContext")?;
    }
    Ok(())
}

fn quantities_as_strings(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, v)| (k.clone(), quantities_as_strings(v)))
                .collect(),
        ),
        Value::Number(n) => Value::String(n.to_string()),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(yaml: &str) -> IstioInstallSpec {
        serde_saphyr::from_str(yaml).unwrap()
    }

    #[test]
    fn ambient_profile_enables_the_node_agents() {
        let v = validate(&spec("version: '1.24'\nprofile: ambient\n")).unwrap();
        let kinds: Vec<_> = v.components.iter().map(|c| c.kind).collect();
        assert_eq!(
            kinds,
            [
                ComponentKind::Base,
                ComponentKind::Pilot,
                ComponentKind::Cni,
                ComponentKind::Ztunnel
            ]
        );
        assert_eq!(v.release.to_string(), "1.24.6");
    }

    #[test]
    fn default_profile_has_the_ingress_gateway() {
        let v = validate(&spec("version: 1.23.6\n")).unwrap();
        assert!(
            v.components
                .iter()
                .any(|c| c.name == "istio-ingressgateway")
        );
    }

    #[test]
    fn unknown_profile_lists_the_known_ones() {
        let err = validate(&spec("version: '1.23'\nprofile: remote\n"))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(
                "spec.profile: \"remote\" is not a profile of Istio 1.23; expected one of"
            ),
            "{err}"
        );
    }

    #[test]
    fn unknown_values_key_is_named() {
        let err = validate(&spec(
            "version: '1.24'\nvalues: {pilot: {replicaCont: 2}}\n",
        ))
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("spec.values.pilot.replicaCont: unknown key for Istio 1.24"),
            "{err}"
        );
        assert!(err.contains("replicaCount"), "{err}");
    }

    #[test]
    fn unsupported_compatibility_version_is_named() {
        let err = validate(&spec(
            "version: '1.24'\nvalues: {compatibilityVersion: '1.20'}\n",
        ))
        .unwrap_err()
        .to_string();
        assert!(
            err.contains(
                "spec.values.compatibilityVersion: \"1.20\" is not supported by Istio 1.24"
            ),
            "{err}"
        );
    }

    #[test]
    fn spec_shortcuts_land_in_values() {
        let v = validate(&spec(
            "version: '1.24'\nhub: quay.io/me\ntag: t1\nrevision: canary\n",
        ))
        .unwrap();
        assert_eq!(v.values["global"]["hub"], "quay.io/me");
        assert_eq!(v.values["global"]["tag"], "t1");
        assert_eq!(v.values["revision"], "canary");
        assert_eq!(v.revision, "canary");
    }

    #[test]
    fn kubernetes_typed_overrides_are_checked_by_field() {
        let err = validate(&spec(
            "version: '1.24'\ncomponents:\n  pilot:\n    k8s:\n      tolerations: [{key: a, tolerationSeconds: soon}]\n",
        ))
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with(
                "spec.components.pilot.k8s.tolerations[0]: expected a Kubernetes Toleration"
            ),
            "{err}"
        );
        assert!(validate(&spec("version: '1.24'\ncomponents:\n  pilot:\n    k8s:\n      resources: {requests: {cpu: 1}}\n")).is_ok());
    }

    #[test]
    fn accepted_bad_specs_from_issue_11_are_refused_naming_the_field() {
        let err = |y: &str| validate(&spec(y)).unwrap_err().to_string();
        let e = err("version: '1.24'\nmeshConfig: {accessLogFile: 42}\n");
        assert_eq!(
            e,
            "spec.meshConfig.accessLogFile: expected a string, found the number 42 (MeshConfig of Istio 1.24)"
        );
        let e = err("version: '1.23'\nvalues: {meshConfig: {defaultConfig: {concurrency: two}}}\n");
        assert!(
            e.starts_with("spec.values.meshConfig.defaultConfig.concurrency: expected"),
            "{e}"
        );
        let e = err(
            "version: '1.24'\ncomponents:\n  pilot:\n    k8s:\n      resources: {requests: {cpu: lots}}\n",
        );
        assert!(
            e.starts_with(
                "spec.components.pilot.k8s.resources.requests.cpu: \"lots\" is not a Kubernetes quantity"
            ),
            "{e}"
        );
        let e = err(
            "version: '1.24'\nvalues: {global: {proxy: {resources: {limits: {memory: 1GB}}}}}\n",
        );
        assert!(
            e.starts_with("spec.values.global.proxy.resources.limits.memory: \"1GB\" is not"),
            "{e}"
        );
        let e = err(
            "version: '1.24'\ncomponents:\n  ingressGateways:\n  - {name: edge}\n  - {name: edge, namespace: other}\n",
        );
        assert!(
            e.starts_with("spec.components.ingressGateways[1].name: \"edge\" is also the name of components.ingressGateways[0]"),
            "{e}"
        );
        let e = err(
            "version: '1.24'\ncomponents:\n  ingressGateways:\n  - {name: gw}\n  egressGateways:\n  - {name: gw}\n",
        );
        assert!(
            e.starts_with("spec.components.egressGateways: gateway \"gw\" in namespace \"istio-system\" is also one of components.ingressGateways"),
            "{e}"
        );
    }

    #[test]
    fn gateways_merge_by_name_with_the_profile() {
        let v = validate(&spec(
            "version: '1.24'\ncomponents:\n  ingressGateways:\n  - {name: istio-ingressgateway, enabled: false}\n  - {name: edge, namespace: edge-ns}\n",
        ))
        .unwrap();
        let gws: Vec<_> = v
            .components
            .iter()
            .filter(|c| c.kind == ComponentKind::IngressGateway)
            .collect();
        assert_eq!(gws.len(), 1);
        assert_eq!(
            (gws[0].name.as_str(), gws[0].namespace.as_str()),
            ("edge", "edge-ns")
        );
        assert_eq!(gws[0].labels["istio"], "edge");
    }
}
