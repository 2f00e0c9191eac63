//! Waypoints are ours, not a chart's: each `spec.waypoints[]` entry becomes a Gateway API
//! `Gateway` of class `istio-waypoint` (what `istioctl waypoint apply` creates), which istiod
//! turns into a proxy Deployment and Service.

use crate::api::Waypoint;
use serde_json::{Map, Value, json};

/// Label on namespaces that a waypoint entry enrolled in ambient mode.
pub const ENROLLED_BY_LABEL: &str = "istioinstall.io/enrolled-by";

pub fn waypoint_name(w: &Waypoint) -> &str {
    &w.name
}

/// The Gateway object of one waypoint.
pub fn gateway(w: &Waypoint, revision: &str) -> Value {
    let mut labels = Map::new();
    labels.insert(
        "istio.io/waypoint-for".into(),
        json!(w.for_traffic.as_deref().unwrap_or("service")),
    );
    if !revision.is_empty() {
        labels.insert("istio.io/rev".into(), json!(revision));
    }
    let allowed = match w.allowed_namespaces.as_deref() {
        Some("All") => Some(json!({"namespaces": {"from": "All"}})),
        Some("Selector") => Some(
            json!({"namespaces": {"from": "Selector", "selector": w.namespace_selector.clone().unwrap_or_default()}}),
        ),
        _ => None,
    };
    let mut listener = json!({"name": "mesh", "port": 15008, "protocol": "HBONE"});
    if let (Some(allowed), Some(l)) = (allowed, listener.as_object_mut()) {
        l.insert("allowedRoutes".into(), allowed);
    }
    json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "Gateway",
        "metadata": {"name": waypoint_name(w), "namespace": w.namespace, "labels": labels},
        "spec": {"gatewayClassName": "istio-waypoint", "listeners": [listener]},
    })
}

/// Namespace label sets for enrolment: the waypoint's own namespace (if asked) and the
/// namespaces that use it from elsewhere.
pub fn enrolments(waypoints: &[Waypoint], owner: &str) -> Vec<(String, Value)> {
    let mut out: Vec<(String, Value)> = Vec::new();
    for w in waypoints {
        let mut add = |ns: &str, cross: bool| {
            let mut labels = Map::new();
            labels.insert("istio.io/dataplane-mode".into(), json!("ambient"));
            labels.insert("istio.io/use-waypoint".into(), json!(waypoint_name(w)));
            labels.insert(ENROLLED_BY_LABEL.into(), json!(owner));
            if cross {
                labels.insert("istio.io/use-waypoint-namespace".into(), json!(w.namespace));
            }
            let labels = Value::Object(labels);
            if !out.iter().any(|(n, _)| n == ns) {
                out.push((ns.to_string(), labels));
            }
        };
        if w.enroll_namespace.unwrap_or(false) {
            add(&w.namespace, false);
        }
        for ns in &w.use_from_namespaces {
            add(ns, ns != &w.namespace);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waypoint_gateway_has_the_hbone_listener() {
        let w = Waypoint {
            namespace: "app".into(),
            name: "waypoint".into(),
            for_traffic: Some("all".into()),
            allowed_namespaces: Some("All".into()),
            ..Default::default()
        };
        let g = gateway(&w, "");
        assert_eq!(g["metadata"]["name"], "waypoint");
        assert_eq!(g["spec"]["gatewayClassName"], "istio-waypoint");
        assert_eq!(g["spec"]["listeners"][0]["port"], 15008);
        assert_eq!(g["spec"]["listeners"][0]["protocol"], "HBONE");
        assert_eq!(g["metadata"]["labels"]["istio.io/waypoint-for"], "all");
        assert_eq!(
            g["spec"]["listeners"][0]["allowedRoutes"]["namespaces"]["from"],
            "All"
        );
    }

    #[test]
    fn cross_namespace_use_names_the_waypoint_namespace() {
        let w = Waypoint {
            namespace: "shared".into(),
            name: "wp".into(),
            enroll_namespace: Some(true),
            use_from_namespaces: vec!["a".into()],
            ..Default::default()
        };
        let e = enrolments(&[w], "mesh");
        assert_eq!(e.len(), 2);
        assert_eq!(e[0].1["istio.io/use-waypoint"], "wp");
        assert!(e[0].1.get("istio.io/use-waypoint-namespace").is_none());
        assert_eq!(e[1].0, "a");
        assert_eq!(e[1].1["istio.io/use-waypoint-namespace"], "shared");
    }
}
