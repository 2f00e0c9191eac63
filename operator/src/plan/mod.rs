//! plan: rendered objects + what is live → what to write, in which order, gated on what.
//! Pure: the controller feeds it live objects and carries out its answers.
//!
//! Ownership rules decided here:
//! - CRDs get no ownerReference, so neither garbage collection nor uninstall ever removes them
//!   (and with them every VirtualService a user stored).
//! - Fields that a co-owner manages at runtime are yielded: istiod writes `caBundle` into its
//!   webhooks and flips the validator's `failurePolicy` to `Fail`; once the live value differs
//!   from ours we stop sending it, so we never fight istiod.
//! - An HPA owns `replicas`; the templates never render it when autoscaling is on.

pub mod claims;
mod compare;
pub mod conflict;
mod health;
pub mod ownership;

pub use compare::{
    INTENT_LABEL, intent_changed, intent_of, needs_write, quantity_value, stamp_intent,
};
pub use health::{Health, health};

use crate::json::at;
use crate::render::{RenderedObject, is_cluster_scoped};
use crate::validate::ComponentKind;
use serde_json::{Value, json};

/// Identifies an object across the plan and the cluster.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    pub api_version: String,
    pub kind: String,
    pub namespace: Option<String>,
    pub name: String,
}

impl ObjectKey {
    pub fn of(obj: &Value) -> ObjectKey {
        let kind = obj["kind"].as_str().unwrap_or_default().to_string();
        ObjectKey {
            api_version: obj["apiVersion"].as_str().unwrap_or_default().to_string(),
            namespace: if is_cluster_scoped(&kind) {
                None
            } else {
                at(obj, &["metadata", "namespace"])
                    .as_str()
                    .map(String::from)
            },
            name: at(obj, &["metadata", "name"])
                .as_str()
                .unwrap_or_default()
                .to_string(),
            kind,
        }
    }
    /// The group of the apiVersion ("" for core).
    pub fn group(&self) -> &str {
        self.api_version
            .rsplit_once('/')
            .map(|(g, _)| g)
            .unwrap_or("")
    }
}

impl std::fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{} {ns}/{}", self.kind, self.name),
            None => write!(f, "{} {}", self.kind, self.name),
        }
    }
}

/// The owner every planned object points back to.
#[derive(Debug, Clone, PartialEq)]
pub struct Owner {
    pub api_version: String,
    pub kind: String,
    pub name: String,
    pub uid: String,
}

/// One component's objects, applied together, then gated on their health.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    pub component: ComponentKind,
    pub component_name: String,
    pub objects: Vec<Value>,
}

impl Step {
    pub fn keys(&self) -> impl Iterator<Item = ObjectKey> + '_ {
        self.objects.iter().map(ObjectKey::of)
    }
}

/// The ordered install plan.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Plan {
    pub steps: Vec<Step>,
    /// Namespaces the components live in; created when missing, never deleted.
    pub namespaces: Vec<String>,
}

impl Plan {
    pub fn keys(&self) -> impl Iterator<Item = ObjectKey> + '_ {
        self.steps.iter().flat_map(Step::keys)
    }
}

/// Groups rendered objects into ordered steps and stamps the owner reference.
pub fn plan(rendered: Vec<RenderedObject>, owner: &Owner) -> Plan {
    let mut plan = Plan::default();
    for r in rendered {
        let mut obj = r.object;
        // An object whose metadata is not a map has been refused by render's boundary already.
        if at(&obj, &["kind"]) != "CustomResourceDefinition"
            && let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut)
        {
            let owner_references = json!([{
                "apiVersion": owner.api_version,
                "kind": owner.kind,
                "name": owner.name,
                "uid": owner.uid,
                "controller": true,
                "blockOwnerDeletion": false,
            }]);
            meta.insert("ownerReferences".into(), owner_references);
        }
        if let Some(ns) = at(&obj, &["metadata", "namespace"]).as_str()
            && !plan.namespaces.iter().any(|n| n == ns)
        {
            plan.namespaces.push(ns.to_string());
        }
        match plan.steps.last_mut() {
            Some(step)
                if step.component_name == r.component_name && step.component == r.component =>
            {
                step.objects.push(obj)
            }
            _ => plan.steps.push(Step {
                component: r.component,
                component_name: r.component_name,
                objects: vec![obj],
            }),
        }
    }
    plan
}

/// Paths (relative to each item of `webhooks`) that istiod manages once it is running.
const WEBHOOK_CO_OWNED: &[&[&str]] = &[&["clientConfig", "caBundle"], &["failurePolicy"]];

/// Drops from `desired` the fields a co-owner has taken over in `live` (see module docs).
pub fn yield_co_owned(desired: &mut Value, live: Option<&Value>) {
    let kind = desired["kind"].as_str().unwrap_or_default();
    if kind != "ValidatingWebhookConfiguration" && kind != "MutatingWebhookConfiguration" {
        return;
    }
    let Some(live) = live else { return };
    let Some(hooks) = desired.get_mut("webhooks").and_then(Value::as_array_mut) else {
        return;
    };
    for hook in hooks {
        let name = hook["name"].as_str().unwrap_or_default().to_string();
        let live_hook = live["webhooks"]
            .as_array()
            .and_then(|l| l.iter().find(|h| h["name"] == name.as_str()));
        for path in WEBHOOK_CO_OWNED {
            let Some((last, parents)) = path.split_last() else {
                continue;
            };
            let live_value = live_hook
                .and_then(|h| parents.iter().try_fold(h, |v, p| v.get(*p)))
                .and_then(|v| v.get(*last));
            let Some(parent) = parents.iter().try_fold(&mut *hook, |v, p| v.get_mut(*p)) else {
                continue;
            };
            let Some(map) = parent.as_object_mut() else {
                continue;
            };
            let ours = map.get(*last);
            if live_value.is_some() && live_value != ours {
                map.remove(*last);
            }
        }
    }
}

/// Objects to delete: live objects labelled as ours and owned by this install's UID that the
/// plan no longer contains. CRDs are never pruned.
/// Whether a live object carries the annotation that tells the operator to leave it alone.
pub fn is_ignored(live: &Value) -> bool {
    at(
        live,
        &["metadata", "annotations", crate::api::IGNORE_ANNOTATION],
    ) == "true"
}

/// Whether a live object carries an owner reference to `uid`.
pub fn owned_by(live: &Value, uid: &str) -> bool {
    at(live, &["metadata", "ownerReferences"])
        .as_array()
        .is_some_and(|refs| refs.iter().any(|r| at(r, &["uid"]).as_str() == Some(uid)))
}

pub fn prune_set<'a>(plan: &Plan, live: &'a [Value], owner_uid: &str) -> Vec<&'a Value> {
    let wanted: std::collections::HashSet<ObjectKey> = plan
        .keys()
        .map(|k| ObjectKey {
            api_version: String::new(),
            ..k
        })
        .collect();
    live.iter()
        .filter(|o| o["kind"] != "CustomResourceDefinition")
        .filter(|o| !is_ignored(o))
        .filter(|o| owned_by(o, owner_uid))
        .filter(|o| {
            !wanted.contains(&ObjectKey {
                api_version: String::new(),
                ..ObjectKey::of(o)
            })
        })
        .collect()
}

#[cfg(test)]
mod tests;
