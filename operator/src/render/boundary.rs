//! The security boundary: what an IstioInstall can make the operator write. Whoever may write
//! an IstioInstall is not trusted with more than an Istio install, so the final objects (after
//! templates, Kubernetes overrides and overlays) are checked here, in one place, before anything
//! is planned or applied:
//!
//! - only kinds of the table of kinds that a bundle renders, with the table's `apiVersion`;
//! - namespaced objects only in the install's namespaces (control plane, components, gateways,
//!   waypoints); cluster-scoped ones carry no namespace;
//! - the ownership labels say what the renderer stamped, and no object brings owner references
//!   of its own (the planner adds the only one);
//! - a RoleBinding or ClusterRoleBinding refers to a role of this same install and binds only
//!   ServiceAccounts in the install's namespaces.
//!
//! Overlays are checked where they are applied ([`check_overlay`]): they cannot touch RBAC
//! objects or CRDs at all, cannot change an object's identity or ownership, and cannot redirect
//! a webhook's `clientConfig` (the API server would send every pod to it).

use super::{COMPONENT_LABEL, INSTALL_LABEL, RenderError, RenderedObject};
use crate::api::MANAGER;
use crate::json::at;
use crate::kinds::{self, Scope};
use serde_json::Value;
use std::collections::HashSet;

const RBAC_GROUP: &str = "rbac.authorization.k8s.io";

fn object_name(o: &Value) -> String {
    let kind = o["kind"].as_str().unwrap_or("object");
    let name = at(o, &["metadata", "name"]).as_str().unwrap_or_default();
    match at(o, &["metadata", "namespace"]).as_str() {
        Some(ns) => format!("{kind} {ns}/{name}"),
        None => format!("{kind} {name}"),
    }
}

fn refusal(component: &str, o: &Value, field: &str, message: String) -> RenderError {
    RenderError::Boundary {
        component: component.to_string(),
        object: object_name(o),
        field: field.to_string(),
        message,
    }
}

/// Checks every rendered object against the boundary. `namespaces` are the install's own;
/// `owner` is the IstioInstall's name when there is one.
pub fn check(
    objects: &[RenderedObject],
    namespaces: &[String],
    owner: Option<&str>,
) -> Result<(), RenderError> {
    let roles: HashSet<(&str, Option<&str>, &str)> = objects
        .iter()
        .filter(|o| matches!(o.kind(), "Role" | "ClusterRole"))
        .map(|o| (o.kind(), o.namespace(), o.name()))
        .collect();
    for r in objects {
        let o = &r.object;
        let component = r.component_name.as_str();
        let kind = r.kind();
        let Some(row) = kinds::lookup(kind).filter(|k| k.rendered) else {
            return Err(refusal(
                component,
                o,
                "kind",
                format!("{kind:?} is not a kind an Istio install renders"),
            ));
        };
        if o["apiVersion"] != row.api_version {
            return Err(refusal(
                component,
                o,
                "apiVersion",
                format!(
                    "expected {:?} for a {kind}, found {}",
                    row.api_version, o["apiVersion"]
                ),
            ));
        }
        match (row.scope, r.namespace()) {
            (Scope::Cluster, Some(ns)) => {
                return Err(refusal(
                    component,
                    o,
                    "metadata.namespace",
                    format!("a {kind} is cluster-scoped; found namespace {ns:?}"),
                ));
            }
            (Scope::Namespaced, ns) if !ns.is_some_and(|ns| namespaces.iter().any(|n| n == ns)) => {
                return Err(refusal(
                    component,
                    o,
                    "metadata.namespace",
                    format!(
                        "{} is not a namespace of this install (expected one of {})",
                        ns.map_or("no namespace".to_string(), |n| format!("{n:?}")),
                        namespaces.join(", ")
                    ),
                ));
            }
            _ => {}
        }
        let labels = at(o, &["metadata", "labels"]);
        let expected = [
            ("app.kubernetes.io/managed-by", Some(MANAGER)),
            (COMPONENT_LABEL, Some(component)),
            (INSTALL_LABEL, owner),
        ];
        for (label, want) in expected {
            if labels[label].as_str() != want {
                return Err(refusal(
                    component,
                    o,
                    &format!("metadata.labels[{label}]"),
                    format!(
                        "ownership labels are the operator's: expected {want:?}, found {}",
                        labels[label]
                    ),
                ));
            }
        }
        if !at(o, &["metadata", "ownerReferences"]).is_null() {
            return Err(refusal(
                component,
                o,
                "metadata.ownerReferences",
                "owner references are the operator's; remove them".into(),
            ));
        }
        if matches!(kind, "RoleBinding" | "ClusterRoleBinding") {
            check_binding(r, &roles, namespaces)?;
        }
    }
    Ok(())
}

fn check_binding(
    r: &RenderedObject,
    roles: &HashSet<(&str, Option<&str>, &str)>,
    namespaces: &[String],
) -> Result<(), RenderError> {
    let o = &r.object;
    let component = r.component_name.as_str();
    let role_ref = &o["roleRef"];
    let role_kind = role_ref["kind"].as_str().unwrap_or_default();
    let role_name = role_ref["name"].as_str().unwrap_or_default();
    let role_ns = if role_kind == "Role" {
        r.namespace()
    } else {
        None
    };
    let known = role_ref["apiGroup"] == RBAC_GROUP
        && (role_kind == "ClusterRole" || (role_kind == "Role" && r.kind() == "RoleBinding"))
        && roles.contains(&(role_kind, role_ns, role_name));
    if !known {
        return Err(refusal(
            component,
            o,
            "roleRef",
            format!(
                "a binding may refer only to a role this install renders; found {role_kind} {role_name:?}"
            ),
        ));
    }
    let subjects = o["subjects"].as_array().map(Vec::as_slice).unwrap_or(&[]);
    for (i, s) in subjects.iter().enumerate() {
        let ns = s["namespace"]
            .as_str()
            .or(r.namespace())
            .unwrap_or_default();
        let name = s["name"].as_str().unwrap_or_default();
        // Istio's bindings name the ServiceAccounts of its components (the reader's may come
        // from another install's base); never a user, a group or another namespace's account.
        if s["kind"] != "ServiceAccount" || !namespaces.iter().any(|n| n == ns) {
            return Err(refusal(
                component,
                o,
                &format!("subjects[{i}]"),
                format!(
                    "a binding may name only ServiceAccounts in this install's namespaces ({}); found {} {ns}/{name}",
                    namespaces.join(", "),
                    s["kind"].as_str().unwrap_or("(no kind)")
                ),
            ));
        }
    }
    Ok(())
}

/// What an overlay may not change on the object it patches.
struct Identity {
    api_version: Value,
    kind: Value,
    name: Value,
    namespace: Value,
    labels: [Value; 3],
    owner_references: Value,
    webhook_clients: Vec<Value>,
}

impl Identity {
    fn of(o: &Value) -> Identity {
        let m = &o["metadata"];
        Identity {
            api_version: o["apiVersion"].clone(),
            kind: o["kind"].clone(),
            name: m["name"].clone(),
            namespace: m["namespace"].clone(),
            labels: [
                at(m, &["labels", "app.kubernetes.io/managed-by"]).clone(),
                at(m, &["labels", COMPONENT_LABEL]).clone(),
                at(m, &["labels", INSTALL_LABEL]).clone(),
            ],
            owner_references: m["ownerReferences"].clone(),
            webhook_clients: o["webhooks"]
                .as_array()
                .map(|hooks| hooks.iter().map(|h| h["clientConfig"].clone()).collect())
                .unwrap_or_default(),
        }
    }

    /// The first protected field that differs, if any.
    fn changed_field(&self, after: &Identity) -> Option<&'static str> {
        if self.api_version != after.api_version {
            Some("apiVersion")
        } else if self.kind != after.kind {
            Some("kind")
        } else if self.name != after.name {
            Some("metadata.name")
        } else if self.namespace != after.namespace {
            Some("metadata.namespace")
        } else if self.labels != after.labels {
            Some("metadata.labels (ownership labels)")
        } else if self.owner_references != after.owner_references {
            Some("metadata.ownerReferences")
        } else if self.webhook_clients != after.webhook_clients {
            Some("webhooks[].clientConfig")
        } else {
            None
        }
    }
}

/// Kinds overlays may not patch at all: RBAC (its rules, roleRef and subjects are the chart's)
/// and CRDs (a conversion webhook or a changed schema reaches every user of the API).
fn overlay_forbidden(kind: &str) -> bool {
    kinds::lookup(kind).is_some_and(|k| k.group() == RBAC_GROUP)
        || kind == "CustomResourceDefinition"
}

/// Applies `patch` to `target` as an overlay, refusing what the boundary forbids. Errors are
/// phrased for `spec.components.<c>.k8s.overlays`.
pub fn check_overlay(
    target: &mut Value,
    patch: impl FnOnce(&mut Value) -> Result<(), String>,
) -> Result<(), String> {
    let kind = target["kind"].as_str().unwrap_or_default().to_string();
    if overlay_forbidden(&kind) {
        return Err(format!(
            "a {kind} cannot be patched by overlays (RBAC and CRDs are rendered as the chart of the release has them); remove this overlay"
        ));
    }
    let before = Identity::of(target);
    patch(target)?;
    if let Some(field) = before.changed_field(&Identity::of(target)) {
        return Err(format!(
            "{field} cannot be changed by overlays (it is what the operator owns and checks); remove the patch that changes it"
        ));
    }
    Ok(())
}
