//! kube-controller-manager's garbage collector removes dependents of deleted owners.

use anyhow::Result;
use istio_install_e2e::{
    DEFAULT_TIMEOUT, TestNamespace, client, eventually, wait_deleted, wait_deployment_rolled_out,
};
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use serde_json::json;

#[tokio::test]
async fn deleting_an_owner_configmap_collects_its_dependent() -> Result<()> {
    let client = client().await?;
    let ns = TestNamespace::create(&client, "e2e-gc-cm").await?;
    let cms: Api<ConfigMap> = ns.api();

    let owner: ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": "owner"}, "data": {"role": "owner"}}))?;
    let owner = cms.create(&PostParams::default(), &owner).await?;
    let dependent: ConfigMap = serde_json::from_value(json!({
        "metadata": {
            "name": "dependent",
            "ownerReferences": [{
                "apiVersion": "v1", "kind": "ConfigMap",
                "name": owner.name_any(), "uid": owner.uid().expect("uid"),
            }]
        },
        "data": {"role": "dependent"}
    }))?;
    let dependent = cms.create(&PostParams::default(), &dependent).await?;
    // An unrelated ConfigMap must survive.
    let bystander: ConfigMap = serde_json::from_value(json!({"metadata": {"name": "bystander"}}))?;
    cms.create(&PostParams::default(), &bystander).await?;

    cms.delete("owner", &DeleteParams::background()).await?;
    wait_deleted(
        &cms,
        "dependent",
        &dependent.uid().expect("uid"),
        DEFAULT_TIMEOUT,
    )
    .await?;
    assert!(cms.get_opt("bystander").await?.is_some());

    ns.delete().await
}

#[tokio::test]
async fn foreground_deletion_of_a_deployment_removes_replicasets_and_pods() -> Result<()> {
    let client = client().await?;
    let ns = TestNamespace::create(&client, "e2e-gc-deploy").await?;
    let deployments: Api<Deployment> = ns.api();
    let rss: Api<ReplicaSet> = ns.api();
    let pods: Api<Pod> = ns.api();

    let d: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "doomed"},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "doomed"}},
            "template": {
                "metadata": {"labels": {"app": "doomed"}},
                "spec": {"containers": [{"name": "app", "image": "example.invalid/doomed:v1"}]}
            }
        }
    }))?;
    let d = deployments.create(&PostParams::default(), &d).await?;
    wait_deployment_rolled_out(&deployments, "doomed", DEFAULT_TIMEOUT).await?;
    let lp = ListParams::default().labels("app=doomed");
    assert_eq!(rss.list(&lp).await?.items.len(), 1);
    assert_eq!(pods.list(&lp).await?.items.len(), 2);

    deployments
        .delete("doomed", &DeleteParams::foreground())
        .await?;
    // With foreground propagation the Deployment only goes once its dependents are gone.
    wait_deleted(
        &deployments,
        "doomed",
        &d.uid().expect("uid"),
        DEFAULT_TIMEOUT,
    )
    .await?;
    eventually(DEFAULT_TIMEOUT, "ReplicaSets and pods gone", || async {
        Ok(rss.list(&lp).await?.items.is_empty() && pods.list(&lp).await?.items.is_empty())
    })
    .await?;

    ns.delete().await
}
