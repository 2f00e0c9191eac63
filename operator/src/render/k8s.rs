//! `components.<c>.k8s`: Kubernetes-level overrides applied to a component's rendered objects.

// Not yet converted to the no-panic lint (see lib.rs).
#![cfg_attr(
    not(test),
    allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::indexing_slicing,
        clippy::panic
    )
)]

use crate::api::KubernetesOverrides;
use crate::overlay;
use crate::values::merge;
use serde_json::{Value, json};

fn first_mut<'a>(objects: &'a mut [Value], kinds: &[&str]) -> Option<&'a mut Value> {
    objects
        .iter_mut()
        .find(|o| kinds.contains(&o["kind"].as_str().unwrap_or_default()))
}

fn to_value<T: serde::Serialize>(t: &T) -> Value {
    serde_json::to_value(t).expect("API types serialize")
}

pub(super) fn apply_overrides(
    objects: &mut [Value],
    k8s: &KubernetesOverrides,
) -> Result<(), String> {
    let has_hpa = objects
        .iter()
        .any(|o| o["kind"] == "HorizontalPodAutoscaler");
    if let Some(workload) = first_mut(objects, &["Deployment", "DaemonSet"]) {
        let is_deployment = workload["kind"] == "Deployment";
        let pod = &mut workload["spec"]["template"]["spec"];
        if let Some(r) = &k8s.resources
            && let Some(c) = pod["containers"].get_mut(0)
        {
            c["resources"] = r.clone();
        }
        if !k8s.env.is_empty()
            && let Some(c) = pod["containers"].get_mut(0)
        {
            let env = c
                .as_object_mut()
                .expect("container is a map")
                .entry("env")
                .or_insert_with(|| json!([]));
            let list = env
                .as_array_mut()
                .ok_or("the main container's env is not a list")?;
            for e in &k8s.env {
                let v = e.clone();
                match list.iter_mut().find(|x| x["name"] == v["name"]) {
                    Some(slot) => *slot = v,
                    None => list.push(v),
                }
            }
        }
        if let Some(ns) = &k8s.node_selector {
            pod["nodeSelector"] = to_value(ns);
        }
        if let Some(t) = &k8s.tolerations {
            pod["tolerations"] = Value::Array(t.clone());
        }
        if let Some(a) = &k8s.affinity {
            pod["affinity"] = a.clone();
        }
        if let Some(p) = &k8s.priority_class_name {
            pod["priorityClassName"] = json!(p);
        }
        if let Some(s) = &k8s.security_context {
            pod["securityContext"] = s.clone();
        }
        if let Some(a) = &k8s.pod_annotations {
            merge(
                &mut workload["spec"]["template"]["metadata"]["annotations"],
                to_value(a),
            );
        }
        if let Some(s) = &k8s.strategy {
            let key = if is_deployment {
                "strategy"
            } else {
                "updateStrategy"
            };
            merge(&mut workload["spec"][key], s.clone());
        }
        // An HPA owns the replica count; setting it too would make the two fight.
        if let (Some(n), true, false) = (k8s.replica_count, is_deployment, has_hpa) {
            workload["spec"]["replicas"] = json!(n);
        }
    }
    if let Some(svc) = first_mut(objects, &["Service"]) {
        if let Some(a) = &k8s.service_annotations {
            merge(&mut svc["metadata"]["annotations"], to_value(a));
        }
        if let Some(s) = &k8s.service {
            merge(&mut svc["spec"], s.clone());
        }
    }
    if let (Some(h), Some(hpa)) = (
        &k8s.hpa_spec,
        first_mut(objects, &["HorizontalPodAutoscaler"]),
    ) {
        merge(&mut hpa["spec"], h.clone());
    }
    if let (Some(p), Some(pdb)) = (
        &k8s.pod_disruption_budget,
        first_mut(objects, &["PodDisruptionBudget"]),
    ) {
        // minAvailable and maxUnavailable exclude each other: setting one drops the other.
        let spec = &mut pdb["spec"];
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
                x["kind"] == o.kind.as_str()
                    && x["metadata"]["name"] == o.name.as_str()
                    && o.api_version
                        .as_ref()
                        .is_none_or(|v| x["apiVersion"] == v.as_str())
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
