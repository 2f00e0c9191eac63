//! The operator's own RBAC (`manifests/rbac.yaml`, printed by `istio-install-operator rbac`),
//! generated from what the operator does and what the bundles render, so that it holds exactly
//! what an Istio install needs:
//!
//! - its own resource, Events, and the Lease of leader election;
//! - the verbs the table of kinds needs on every kind it writes;
//! - every permission the roles of the bundled charts grant. The operator has neither
//!   `escalate` nor `bind`: the API server lets it create a role or binding only when it holds
//!   every permission in it, so whatever an IstioInstall says, it cannot make the operator grant
//!   more than the operator has (and that is no more than the charts grant).
//!
//! Left out on purpose: permissions that only some value sets render and that would give the
//! operator power far beyond an Istio install's usual needs — approving certificate requests for
//! Kubernetes signers (`values.global.pilotCertProvider: kubernetes` or `EXTERNAL_CA`) and the
//! group of a custom `MCS_API_GROUP`. An install using them is `Stalled` with the API server's
//! refusal until a cluster admin grants the operator those permissions.

use crate::api::IstioInstallSpec;
use crate::kinds::KINDS;
use crate::render;
use crate::validate;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};

/// One RBAC policy rule.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Rule {
    pub groups: Vec<String>,
    pub resources: Vec<String>,
    pub names: Vec<String>,
    pub verbs: Vec<String>,
}

impl Rule {
    fn from_value(v: &Value) -> Rule {
        let list = |key: &str| -> Vec<String> {
            v[key]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|s| s.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default()
        };
        Rule {
            groups: list("apiGroups"),
            resources: list("resources"),
            names: list("resourceNames"),
            verbs: list("verbs"),
        }
    }

    /// Single permissions: (group, resource, name or "", verb).
    fn atoms(&self) -> impl Iterator<Item = (String, String, String, String)> + '_ {
        let names: Vec<String> = if self.names.is_empty() {
            vec![String::new()]
        } else {
            self.names.clone()
        };
        self.groups.iter().flat_map(move |g| {
            let names = names.clone();
            self.resources.iter().flat_map(move |r| {
                let names = names.clone();
                names.into_iter().flat_map(move |n| {
                    self.verbs
                        .iter()
                        .map(move |v| (g.clone(), r.clone(), n.clone(), v.clone()))
                })
            })
        })
    }

    /// Whether this rule grants a single permission, as the API server's escalation check
    /// reads it: a `*` in the holder's rule covers anything, a `*` asked for is covered only by
    /// a `*`; a rule without resourceNames covers every name.
    fn covers(&self, (g, r, n, v): &(String, String, String, String)) -> bool {
        let has = |list: &[String], x: &str| list.iter().any(|i| i == "*" || i == x);
        has(&self.groups, g)
            && has(&self.resources, r)
            && has(&self.verbs, v)
            && (self.names.is_empty() || (!n.is_empty() && self.names.iter().any(|i| i == n)))
    }
}

/// Whether `rules` together grant the permission.
pub fn granted(rules: &[Rule], atom: &(String, String, String, String)) -> bool {
    rules.iter().any(|r| r.covers(atom))
}

/// The value sets whose roles the operator must be able to grant: every profile of every
/// bundled release, plus the options that add RBAC rules.
fn rbac_cases() -> Vec<IstioInstallSpec> {
    let features = [
        json!({}),
        json!({"global": {"istiod": {"enableAnalysis": true}}, "pilot": {"taint": {"enabled": true}}}),
        json!({"cni": {"repair": {"enabled": true, "repairPods": false, "deletePods": true}}}),
        json!({"cni": {"repair": {"enabled": true, "repairPods": false, "deletePods": false, "labelPods": true}}}),
        json!({"global": {"platform": "openshift"}}),
    ];
    let mut out = Vec::new();
    for release in crate::bundle::releases() {
        let bundle = crate::bundle::bundles()
            .iter()
            .find(|b| b.minor == release.minor_string());
        let Some(bundle) = bundle else { continue };
        for profile in bundle.profiles() {
            for values in &features {
                let spec = json!({
                    "version": release.to_string(),
                    "profile": profile,
                    "values": values,
                    "components": {"cni": {"enabled": true}, "ztunnel": {"enabled": profile != "remote"}},
                });
                if let Ok(spec) = serde_json::from_value(spec) {
                    out.push(spec);
                }
            }
        }
    }
    out
}

/// Calls `f` with every rule of every Role and ClusterRole the bundles render for
/// [`rbac_cases`], and where it came from (cases the bundle refuses, such as a platform it does
/// not know, are skipped).
fn for_each_bundle_rule(mut f: impl FnMut(&IstioInstallSpec, &str, &render::RenderedObject, Rule)) {
    for spec in rbac_cases() {
        let Ok(v) = validate::validate(&spec) else {
            continue;
        };
        let Ok(objects) = render::render(&v, None) else {
            continue;
        };
        for o in objects
            .iter()
            .filter(|o| matches!(o.kind(), "Role" | "ClusterRole"))
        {
            for r in o
                .object
                .get("rules")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                f(&spec, &v.profile, o, Rule::from_value(r));
            }
        }
    }
}

/// Every rule of every Role and ClusterRole the bundles render for [`rbac_cases`].
pub fn bundle_rules() -> Vec<Rule> {
    let mut rules = BTreeSet::new();
    for_each_bundle_rule(|_, _, _, rule| {
        rules.insert(rule);
    });
    rules.into_iter().collect()
}

/// Rules for what the operator itself does: its resource, Events, and the kinds it writes.
fn own_rules() -> Vec<(String, Rule)> {
    let rule = |groups: &[&str], resources: &[&str], verbs: &[&str]| Rule {
        groups: groups.iter().map(|s| s.to_string()).collect(),
        resources: resources.iter().map(|s| s.to_string()).collect(),
        names: vec![],
        verbs: verbs.iter().map(|s| s.to_string()).collect(),
    };
    let mut out = vec![
        (
            "The custom resource itself: watch it, add/remove the uninstall finalizer, report status.".to_string(),
            rule(&["istioinstall.io"], &["istioinstalls"], &["get", "list", "watch", "patch", "update"]),
        ),
        (String::new(), rule(&["istioinstall.io"], &["istioinstalls/status"], &["get", "patch", "update"])),
        (String::new(), rule(&["istioinstall.io"], &["istioinstalls/finalizers"], &["update"])),
        (
            "Kubernetes Events on IstioInstalls.".to_string(),
            rule(&["events.k8s.io"], &["events"], &["create", "patch"]),
        ),
    ];
    // The kinds of the table, grouped by API group and verbs.
    let mut by_group: BTreeMap<(&str, &[&str]), Vec<&str>> = BTreeMap::new();
    for k in KINDS {
        by_group
            .entry((k.group(), k.verbs()))
            .or_default()
            .push(k.plural);
    }
    let mut first = true;
    for ((group, verbs), resources) in by_group {
        let why = if first {
            "What the operator writes: every kind of its table of kinds (operator/src/kinds.rs). CRDs and namespaces are never deleted.".to_string()
        } else {
            String::new()
        };
        first = false;
        out.push((why, rule(&[group], &resources, verbs)));
    }
    out
}

/// The permissions the bundles' roles grant that the operator's own rules do not already
/// hold, compacted into few rules (resources grouped by API group, names and verbs).
fn grant_rules(own: &[Rule]) -> Vec<Rule> {
    // (group, names) -> resource -> verbs
    let mut need: BTreeMap<(String, Vec<String>), BTreeMap<String, BTreeSet<String>>> =
        BTreeMap::new();
    for rule in bundle_rules() {
        for atom in rule.atoms() {
            if granted(own, &atom) {
                continue;
            }
            let (g, r, n, v) = atom;
            let names = if n.is_empty() { vec![] } else { vec![n] };
            need.entry((g, names))
                .or_default()
                .entry(r)
                .or_default()
                .insert(v);
        }
    }
    let mut out = Vec::new();
    for ((group, names), resources) in need {
        let mut by_verbs: BTreeMap<BTreeSet<String>, Vec<String>> = BTreeMap::new();
        for (resource, verbs) in resources {
            by_verbs.entry(verbs).or_default().push(resource);
        }
        for (verbs, resources) in by_verbs {
            out.push(Rule {
                groups: vec![group.clone()],
                resources,
                names: names.clone(),
                verbs: verbs.into_iter().collect(),
            });
        }
    }
    out
}

/// The operator's ClusterRole rules, with the comment of each section.
pub fn cluster_role_rules() -> Vec<(String, Rule)> {
    let mut out = own_rules();
    let own: Vec<Rule> = out.iter().map(|(_, r)| r.clone()).collect();
    let mut first = true;
    for rule in grant_rules(&own) {
        let why = if first {
            "What the roles of the bundled Istio charts grant (istiod, istio-cni, ztunnel, gateways, the reader). Without `escalate` or `bind`, the operator can create a role only when it holds every permission in it, so it holds these. Generated: `istio-install-operator rbac`.".to_string()
        } else {
            String::new()
        };
        first = false;
        out.push((why, rule));
    }
    out
}

fn flow(list: &[String]) -> String {
    let items: Vec<String> = list.iter().map(|s| format!("{s:?}")).collect();
    format!("[{}]", items.join(", "))
}

/// Names and labels of the RBAC objects: literal for `manifests/rbac.yaml`, Helm expressions for
/// the chart's template (so both come from this one source).
struct Names<'a> {
    /// The ServiceAccount, ClusterRole and ClusterRoleBinding.
    name: &'a str,
    /// The operator's namespace (ServiceAccount, leader-election Role).
    namespace: &'a str,
    /// The `labels:` value, starting after `labels:` (a newline and indented lines).
    labels: &'a str,
    /// The header comment.
    header: &'a str,
}

/// `manifests/rbac.yaml`: the ServiceAccount, the ClusterRole and its binding, and the Role of
/// leader election.
pub fn manifest() -> String {
    render_manifest(&Names {
        name: "istio-install-operator",
        namespace: "istio-install-operator",
        labels: "\n    app.kubernetes.io/name: istio-install-operator",
        header: "# Least privilege for istio-install-operator. Generated by `istio-install-operator rbac`\n# from the operator's table of kinds and the roles of the bundled Istio charts; a test fails when\n# it drifts. No `escalate`, no `bind`; `*` only where a bundled Istio role itself has it.\n",
    })
}

/// `manifests/chart/templates/rbac.yaml`: the same objects as [`manifest`], named after the Helm
/// release and in its namespace. With the release `istio-install-operator` in the namespace
/// `istio-install-operator` it renders the objects of `manifests/rbac.yaml` (plus Helm's labels).
pub fn helm_template() -> String {
    render_manifest(&Names {
        name: "{{ include \"istio-install-operator.fullname\" . }}",
        namespace: "{{ .Release.Namespace }}",
        labels: "\n    {{- include \"istio-install-operator.labels\" . | nindent 4 }}",
        header: "# Generated by `istio-install-operator rbac --helm` from the source of manifests/rbac.yaml\n# (operator/src/rbac.rs); do not edit. A test fails when it drifts.\n",
    })
}

fn render_manifest(n: &Names) -> String {
    let Names {
        name,
        namespace,
        labels,
        header,
    } = n;
    let mut rules = String::new();
    for (why, r) in cluster_role_rules() {
        for line in textwrap(&why, 96) {
            rules.push_str(&format!("# {line}\n"));
        }
        rules.push_str(&format!("- apiGroups: {}\n", flow(&r.groups)));
        rules.push_str(&format!("  resources: {}\n", flow(&r.resources)));
        if !r.names.is_empty() {
            rules.push_str(&format!("  resourceNames: {}\n", flow(&r.names)));
        }
        rules.push_str(&format!("  verbs: {}\n", flow(&r.verbs)));
    }
    format!(
        r#"{header}apiVersion: v1
kind: ServiceAccount
metadata:
  name: {name}
  namespace: {namespace}
  labels:{labels}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: {name}
  labels:{labels}
rules:
{rules}---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: {name}
  labels:{labels}
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: ClusterRole
  name: {name}
subjects:
- kind: ServiceAccount
  name: {name}
  namespace: {namespace}
---
# Leader election: one Lease in the operator's own namespace.
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata:
  name: {name}-leader-election
  namespace: {namespace}
  labels:{labels}
rules:
- apiGroups: ["coordination.k8s.io"]
  resources: ["leases"]
  verbs: ["get", "create", "update"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata:
  name: {name}-leader-election
  namespace: {namespace}
  labels:{labels}
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: Role
  name: {name}-leader-election
subjects:
- kind: ServiceAccount
  name: {name}
  namespace: {namespace}
"#
    )
}

/// Greedy word wrap for the comments.
fn textwrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = Vec::new();
    let mut line = String::new();
    for word in text.split_whitespace() {
        if !line.is_empty() && line.len() + 1 + word.len() > width {
            lines.push(std::mem::take(&mut line));
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    if !line.is_empty() {
        lines.push(line);
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_committed_manifest_is_the_generated_one() {
        let committed = include_str!("../../manifests/rbac.yaml");
        assert!(
            committed == manifest(),
            "manifests/rbac.yaml is out of date: run `istio-install-operator rbac > manifests/rbac.yaml`"
        );
    }

    #[test]
    fn the_charts_rbac_template_is_the_generated_one() {
        let committed = include_str!("../../manifests/chart/templates/rbac.yaml");
        assert!(
            committed == helm_template(),
            "manifests/chart/templates/rbac.yaml is out of date: run `make generate` (istio-install-operator rbac --helm)"
        );
    }

    #[test]
    fn no_escalate_no_bind_and_no_wildcard_a_bundle_does_not_need() {
        let rules: Vec<Rule> = cluster_role_rules().into_iter().map(|(_, r)| r).collect();
        let bundle = bundle_rules();
        for r in &rules {
            assert!(
                !r.verbs.iter().any(|v| v == "escalate" || v == "bind"),
                "{r:?}"
            );
            assert!(!r.groups.iter().any(|g| g == "*"), "{r:?}");
            for atom in r.atoms() {
                let wildcard = atom.1 == "*" || atom.3 == "*";
                assert!(
                    !wildcard || granted(&bundle, &atom),
                    "{atom:?}: a wildcard no bundled role has"
                );
            }
        }
    }

    #[test]
    fn every_bundle_role_is_within_the_operators_cluster_role() {
        let rules: Vec<Rule> = cluster_role_rules().into_iter().map(|(_, r)| r).collect();
        let cases = rbac_cases();
        assert!(cases.len() > 50, "{} cases", cases.len());
        for_each_bundle_rule(|spec, profile, o, rule| {
            for atom in rule.atoms() {
                assert!(
                    granted(&rules, &atom),
                    "{} {} of {} {profile} needs {atom:?}, which the operator's ClusterRole lacks",
                    o.kind(),
                    o.name(),
                    spec.version,
                );
            }
        });
    }
}
