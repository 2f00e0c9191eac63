//! Deployments and DaemonSets really roll out on the kwok nodes (scheduler + KCM + kwok stages),
//! including a rolling update of the pod template.

use std::collections::BTreeSet;

use anyhow::{Result, ensure};
use istio_install_e2e::{
    DEFAULT_TIMEOUT, TestNamespace, client, condition_status, eventually, kwok_nodes,
    wait_daemonset_rolled_out, wait_deployment_rolled_out,
};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use serde_json::json;

fn workload(kind: &str, name: &str, image: &str, replicas: Option<i32>) -> serde_json::Value {
    let mut spec = json!({
        "selector": {"matchLabels": {"app": name}},
        "template": {
            "metadata": {"labels": {"app": name}},
            "spec": {"containers": [{"name": "app", "image": image}]}
        }
    });
    if let Some(r) = replicas {
        spec["replicas"] = json!(r);
    }
    json!({
        "apiVersion": "apps/v1",
        "kind": kind,
        "metadata": {"name": name},
        "spec": spec,
    })
}

fn image_patch(image: &str) -> Patch<serde_json::Value> {
    Patch::Strategic(json!({
        "spec": {"template": {"spec": {"containers": [{"name": "app", "image": image}]}}}
    }))
}

/// The pods with `app=<name>`, once all of them run `image` and there are `count` of them;
/// checks each one is Running and Ready on a kwok node.
async fn wait_pods(pods: &Api<Pod>, name: &str, image: &str, count: usize) -> Result<Vec<Pod>> {
    let lp = ListParams::default().labels(&format!("app={name}"));
    let what = format!("{count} pods of {name} running {image}, old ones gone");
    eventually(DEFAULT_TIMEOUT, &what, || async {
        let items = pods.list(&lp).await?.items;
        Ok(items.len() == count
            && items.iter().all(|p| {
                let spec_image = p
                    .spec
                    .as_ref()
                    .and_then(|s| s.containers.first())
                    .and_then(|c| c.image.as_deref());
                spec_image == Some(image)
                    && p.metadata.deletion_timestamp.is_none()
                    && condition_status(p, "Ready").as_deref() == Some("True")
            }))
    })
    .await?;
    let items = pods.list(&lp).await?.items;
    for p in &items {
        let status = p.status.as_ref().expect("pod status");
        assert_eq!(status.phase.as_deref(), Some("Running"));
        assert!(status.pod_ip.is_some(), "kwok assigns a pod IP");
        let node = p.spec.as_ref().and_then(|s| s.node_name.clone());
        assert!(
            node.as_deref().is_some_and(|n| n.starts_with("kwok-node-")),
            "scheduled on a kwok node: {node:?}"
        );
    }
    Ok(items)
}

#[tokio::test]
async fn deployment_rolls_out_and_rolling_update_completes() -> Result<()> {
    let client = client().await?;
    let ns = TestNamespace::create(&client, "e2e-deploy").await?;
    let api: Api<Deployment> = ns.api();
    let pods: Api<Pod> = ns.api();

    let d: Deployment = serde_json::from_value(workload(
        "Deployment",
        "web",
        "example.invalid/web:v1",
        Some(3),
    ))?;
    api.create(&PostParams::default(), &d).await?;
    let d = wait_deployment_rolled_out(&api, "web", DEFAULT_TIMEOUT).await?;
    assert_eq!(d.status.as_ref().and_then(|s| s.ready_replicas), Some(3));
    assert_eq!(condition_status(&d, "Available").as_deref(), Some("True"));
    wait_pods(&pods, "web", "example.invalid/web:v1", 3).await?;

    // Rolling update: a new pod template makes a second ReplicaSet that takes over.
    let gen_before = d.metadata.generation.unwrap_or_default();
    api.patch(
        "web",
        &PatchParams::default(),
        &image_patch("example.invalid/web:v2"),
    )
    .await?;
    let d = wait_deployment_rolled_out(&api, "web", DEFAULT_TIMEOUT).await?;
    assert!(d.metadata.generation.unwrap_or_default() > gen_before);
    assert_eq!(d.status.as_ref().and_then(|s| s.updated_replicas), Some(3));
    wait_pods(&pods, "web", "example.invalid/web:v2", 3).await?;

    let rss: Api<ReplicaSet> = ns.api();
    let rs = rss
        .list(&ListParams::default().labels("app=web"))
        .await?
        .items;
    assert_eq!(rs.len(), 2, "old and new ReplicaSet");
    let mut sizes: Vec<i32> = rs
        .iter()
        .map(|r| r.spec.as_ref().and_then(|s| s.replicas).unwrap_or_default())
        .collect();
    sizes.sort();
    assert_eq!(
        sizes,
        vec![0, 3],
        "old ReplicaSet scaled to 0, new one to 3"
    );

    ns.delete().await
}

#[tokio::test]
async fn daemonset_rolls_out_on_every_node_and_rolling_update_completes() -> Result<()> {
    let client = client().await?;
    let nodes = kwok_nodes(&client).await?.len();
    ensure!(
        nodes >= 3,
        "the harness makes at least 3 kwok nodes, found {nodes}"
    );
    let ns = TestNamespace::create(&client, "e2e-ds").await?;
    let api: Api<DaemonSet> = ns.api();
    let pods: Api<Pod> = ns.api();

    let ds: DaemonSet = serde_json::from_value(workload(
        "DaemonSet",
        "agent",
        "example.invalid/agent:v1",
        None,
    ))?;
    api.create(&PostParams::default(), &ds).await?;
    let ds = wait_daemonset_rolled_out(&api, "agent", DEFAULT_TIMEOUT).await?;
    let status = ds.status.as_ref().expect("status");
    assert_eq!(status.desired_number_scheduled as usize, nodes);
    assert_eq!(status.number_ready as usize, nodes);
    let placed = wait_pods(&pods, "agent", "example.invalid/agent:v1", nodes).await?;
    let distinct: BTreeSet<_> = placed
        .iter()
        .filter_map(|p| p.spec.as_ref().and_then(|s| s.node_name.clone()))
        .collect();
    assert_eq!(distinct.len(), nodes, "one pod per node");

    api.patch(
        "agent",
        &PatchParams::default(),
        &image_patch("example.invalid/agent:v2"),
    )
    .await?;
    let ds = wait_daemonset_rolled_out(&api, "agent", DEFAULT_TIMEOUT).await?;
    let status = ds.status.as_ref().expect("status");
    assert_eq!(
        status.updated_number_scheduled.unwrap_or_default() as usize,
        nodes
    );
    wait_pods(&pods, "agent", "example.invalid/agent:v2", nodes).await?;

    ns.delete().await
}
