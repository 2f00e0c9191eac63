//! `components.<c>.k8s`: Kubernetes-level overrides applied to a component's rendered objects.

use crate::api::KubernetesOverrides;
use crate::json::{at, at_mut};
use crate::overlay;
use crate::values::merge;
use serde_json::{Value, json};

fn main_container(pod: &mut Value) -> Option<&mut serde_json::Map<String, Value>> {
    pod.get_mut("containers")
        .and_then(|c| c.get_mut(0))
        .and_then(Value::as_object_mut)
}

fn first_mut<'a>(objects: &'a mut [Value], kinds: &[&str]) -> Option<&'a mut Value> {
    objects
        .iter_mut()
        .find(|o| kinds.contains(&at(o, &["kind"]).as_str().unwrap_or_default()))
}

// String maps (node selector, annotations): serializing one cannot fail.
fn to_value(t: &std::collections::BTreeMap<String, String>) -> Value {
    Value::Object(t.iter().map(|(k, v)| (k.clone(), json!(v))).collect())
}

pub(super) fn apply_overrides(
    objects: &mut [Value],
    k8s: &KubernetesOverrides,
) -> Result<(), String> {
    let has_hpa = objects
        .iter()
        .any(|o| at(o, &["kind"]) == "HorizontalPodAutoscaler");
    if let Some(workload) = first_mut(objects, &["Deployment", "DaemonSet"]) {
        let is_deployment = at(workload, &["kind"]) == "Deployment";
        let pod = at_mut(workload, &["spec", "template", "spec"])?;
        if let Some(r) = &k8s.resources
            && let Some(c) = main_container(pod)
        {
            c.insert("resources".into(), r.clone());
        }
        if !k8s.env.is_empty()
            && let Some(c) = main_container(pod)
        {
            let env = c.entry("env").or_insert_with(|| json!([]));
            let list = env
                .as_array_mut()
                .ok_or("the main container's env is not a list")?;
            for e in &k8s.env {
                let v = e.clone();
                match list
                    .iter_mut()
                    .find(|x| at(x, &["name"]) == at(&v, &["name"]))
                {
                    Some(slot) => *slot = v,
                    None => list.push(v),
                }
            }
        }
        let set = |pod: &mut Value, key: &str, v: Value| at_mut(pod, &[key]).map(|p| *p = v);
        if let Some(ns) = &k8s.node_selector {
            set(pod, "nodeSelector", to_value(ns))?;
        }
        if let Some(t) = &k8s.tolerations {
            set(pod, "tolerations", Value::Array(t.clone()))?;
        }
        if let Some(a) = &k8s.affinity {
            set(pod, "affinity", a.clone())?;
        }
        if let Some(p) = &k8s.priority_class_name {
            set(pod, "priorityClassName", json!(p))?;
        }
        if let Some(s) = &k8s.security_context {
            set(pod, "securityContext", s.clone())?;
        }
        if let Some(a) = &k8s.pod_annotations {
            merge(
                at_mut(workload, &["spec", "template", "metadata", "annotations"])?,
                to_value(a),
            );
        }
        if let Some(s) = &k8s.strategy {
            let key = if is_deployment {
                "strategy"
            } else {
                "updateStrategy"
            };
            merge(at_mut(workload, &["spec", key])?, s.clone());
        }
        // An HPA owns the replica count; setting it too would make the two fight.
        if let (Some(n), true, false) = (k8s.replica_count, is_deployment, has_hpa) {
            *at_mut(workload, &["spec", "replicas"])? = json!(n);
        }
    }
    if let Some(svc) = first_mut(objects, &["Service"]) {
        if let Some(a) = &k8s.service_annotations {
            merge(at_mut(svc, &["metadata", "annotations"])?, to_value(a));
        }
        if let Some(s) = &k8s.service {
            merge(at_mut(svc, &["spec"])?, s.clone());
        }
    }
    if let (Some(h), Some(hpa)) = (
        &k8s.hpa_spec,
        first_mut(objects, &["HorizontalPodAutoscaler"]),
    ) {
        merge(at_mut(hpa, &["spec"])?, h.clone());
    }
    if let (Some(p), Some(pdb)) = (
        &k8s.pod_disruption_budget,
        first_mut(objects, &["PodDisruptionBudget"]),
    ) {
        // minAvailable and maxUnavailable exclude each other: setting one drops the other.
        let spec = at_mut(pdb, &["spec"])?;
        for (set, other) in [
            ("minAvailable", "maxUnavailable"),
            ("maxUnavailable", "minAvailable"),
        ] {
            if p.get(set).is_some() {
                spec.as_object_mut().map(|m| m.remove(other));
            }
        }
        merge(spec, p.clone());
    }
    for o in &k8s.overlays {
        let target = objects
            .iter_mut()
            .find(|x| {
                at(x, &["kind"]) == o.kind.as_str()
                    && at(x, &["metadata", "name"]) == o.name.as_str()
                    && o.api_version
                        .as_ref()
                        .is_none_or(|v| at(x, &["apiVersion"]) == v.as_str())
            })
            .ok_or_else(|| {
                format!(
                    "overlays: no {} named {:?} in this component",
                    o.kind, o.name
                )
            })?;
        // Checked after each patch, so a refusal names the patch that made it.
        for (i, p) in o.patches.iter().enumerate() {
            super::boundary::check_overlay(target, |target| {
                overlay::apply_patch(target, &p.path, p.value.as_ref())
            })
            .map_err(|e| {
                format!(
                    "overlays[{} {}].patches[{i}] (path {:?}): {e}",
                    o.kind, o.name, p.path
                )
            })?;
        }
    }
    Ok(())
}
