use super::*;
use serde_json::json;

fn owner() -> Owner {
    Owner {
        api_version: "istioinstall.io/v1alpha1".into(),
        kind: "IstioInstall".into(),
        name: "mesh".into(),
        uid: "u1".into(),
    }
}

fn rendered(kind: &str, name: &str, component: ComponentKind) -> RenderedObject {
    RenderedObject {
        component,
        component_name: format!("{component:?}"),
        object: json!({"apiVersion": "v1", "kind": kind, "metadata": {"name": name, "namespace": "istio-system"}}),
    }
}

#[test]
fn crds_get_no_owner_reference() {
    let p = plan(
        vec![
            rendered(
                "CustomResourceDefinition",
                "x.istio.io",
                ComponentKind::Base,
            ),
            rendered("ServiceAccount", "istiod", ComponentKind::Pilot),
        ],
        &owner(),
    );
    assert_eq!(p.steps.len(), 2);
    assert!(p.steps[0].objects[0]["metadata"]["ownerReferences"].is_null());
    assert_eq!(
        p.steps[1].objects[0]["metadata"]["ownerReferences"][0]["uid"],
        "u1"
    );
    assert_eq!(p.namespaces, ["istio-system"]);
}

#[test]
fn unchanged_objects_need_no_write_despite_server_normalisation() {
    let desired = json!({"spec": {"resources": {"requests": {"memory": "2048Mi", "cpu": "500m"}}, "annotations": {}, "port": 80}});
    let live = json!({"spec": {"resources": {"requests": {"memory": "2Gi", "cpu": "500m"}}, "port": 80, "extra": 1}, "status": {"x": 1}});
    assert!(!needs_write(&desired, Some(&live)));
    let drifted =
        json!({"spec": {"resources": {"requests": {"memory": "1Gi", "cpu": "500m"}}, "port": 80}});
    assert!(needs_write(&desired, Some(&drifted)));
    assert!(needs_write(&desired, None));
}

#[test]
fn list_length_changes_need_a_write() {
    let desired = json!({"args": ["a", "b"]});
    assert!(needs_write(&desired, Some(&json!({"args": ["a"]}))));
    assert!(!needs_write(&desired, Some(&json!({"args": ["a", "b"]}))));
}

#[test]
fn quantities_parse() {
    assert_eq!(quantity_value("500m"), Some(0.5));
    assert_eq!(quantity_value("2Gi"), Some(2147483648.0));
    assert_eq!(quantity_value("1e3"), Some(1000.0));
    assert_eq!(quantity_value("istio"), None);
    assert_eq!(quantity_value("100%"), None);
}

#[test]
fn webhook_fields_taken_over_by_istiod_are_yielded() {
    let mut desired = json!({"kind": "ValidatingWebhookConfiguration", "webhooks": [
        {"name": "v", "failurePolicy": "Ignore", "clientConfig": {"service": {"name": "istiod"}}}]});
    let live = json!({"kind": "ValidatingWebhookConfiguration", "webhooks": [
        {"name": "v", "failurePolicy": "Fail", "clientConfig": {"caBundle": "Q0E=", "service": {"name": "istiod"}}}]});
    yield_co_owned(&mut desired, Some(&live));
    assert!(desired["webhooks"][0].get("failurePolicy").is_none());
    assert!(!needs_write(&desired, Some(&live)));
    // Before istiod has patched anything we keep our value.
    let mut fresh = json!({"kind": "ValidatingWebhookConfiguration", "webhooks": [{"name": "v", "failurePolicy": "Ignore"}]});
    yield_co_owned(&mut fresh, None);
    assert_eq!(fresh["webhooks"][0]["failurePolicy"], "Ignore");
}

#[test]
fn prune_keeps_planned_objects_crds_ignored_and_foreign_ones() {
    let p = plan(
        vec![rendered("ServiceAccount", "istiod", ComponentKind::Pilot)],
        &owner(),
    );
    let ours = |kind: &str, name: &str| json!({"apiVersion": "v1", "kind": kind, "metadata": {"name": name, "namespace": "istio-system", "ownerReferences": [{"uid": "u1"}]}});
    let live = vec![
        ours("ServiceAccount", "istiod"),
        ours("ServiceAccount", "ztunnel"),
        json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "other", "namespace": "istio-system", "ownerReferences": [{"uid": "u2"}]}}),
        json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition", "metadata": {"name": "x", "ownerReferences": [{"uid": "u1"}]}}),
        // Ours, no longer planned, but marked to be left alone.
        json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "kept", "namespace": "istio-system", "ownerReferences": [{"uid": "u1"}], "annotations": {"istioinstall.io/ignore": "true"}}}),
    ];
    let pruned: Vec<_> = prune_set(&p, &live, "u1")
        .into_iter()
        .map(|o| o["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(pruned, ["ztunnel"]);
}

#[test]
fn deployment_health_follows_rollout() {
    let mut d = json!({"kind": "Deployment", "metadata": {"name": "istiod", "namespace": "istio-system", "generation": 2},
        "spec": {"replicas": 2}, "status": {"observedGeneration": 1}});
    assert!(matches!(health(&d), Health::Progressing(m) if m.contains("generation 2")));
    d["status"] = json!({"observedGeneration": 2, "updatedReplicas": 2, "replicas": 3, "availableReplicas": 2});
    assert!(matches!(health(&d), Health::Progressing(m) if m.contains("old replicas")));
    d["status"]["replicas"] = json!(2);
    assert_eq!(health(&d), Health::Ready);
}

#[test]
fn daemonset_health_counts_nodes() {
    let ds = json!({"kind": "DaemonSet", "metadata": {"name": "ztunnel", "generation": 1},
        "status": {"observedGeneration": 1, "desiredNumberScheduled": 3, "updatedNumberScheduled": 3, "numberAvailable": 2}});
    assert_eq!(
        health(&ds),
        Health::Progressing("DaemonSet ztunnel: 2/3 pods available".into())
    );
}

#[test]
fn values_the_server_omits_need_no_write() {
    let desired = json!({"env": [{"name": "PLATFORM", "value": ""}], "readOnly": false, "n": 0});
    assert!(!needs_write(
        &desired,
        Some(&json!({"env": [{"name": "PLATFORM"}]}))
    ));
}

#[test]
fn a_rollout_past_its_deadline_has_failed_with_its_own_message() {
    let mut d = json!({"kind": "Deployment", "metadata": {"name": "istiod", "namespace": "istio-system", "generation": 3},
        "spec": {"replicas": 1}, "status": {"observedGeneration": 3, "updatedReplicas": 1, "replicas": 2, "availableReplicas": 1,
        "conditions": [{"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
            "message": "ReplicaSet \"istiod-5d9\" has timed out progressing."}]}});
    assert_eq!(
        health(&d),
        Health::Failed(
            "Deployment istio-system/istiod cannot roll out: ReplicaSet \"istiod-5d9\" has timed out progressing."
                .into()
        )
    );
    // A new generation the controller has not seen yet is a new rollout, not a failed one.
    d["metadata"]["generation"] = json!(4);
    assert!(matches!(health(&d), Health::Progressing(_)));
}
