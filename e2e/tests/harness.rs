//! The harness itself: the cluster is the pinned version with Ready, untainted kwok nodes, and
//! test namespaces are cleaned up on drop.

use anyhow::Result;
use istio_install_e2e::{
    DEFAULT_TIMEOUT, TEST_NAMESPACE_LABEL, TestNamespace, client, condition_status, eventually,
    k8s_version, kwok_nodes,
};
use k8s_openapi::api::core::v1::Namespace;
use kube::Api;

#[tokio::test]
async fn cluster_runs_the_pinned_version_with_ready_untainted_nodes() -> Result<()> {
    let client = client().await?;
    let info = client.apiserver_version().await?;
    assert_eq!(info.git_version, k8s_version()?);
    let nodes = kwok_nodes(&client).await?;
    assert!(
        nodes.len() >= 3,
        "at least 3 kwok nodes, got {}",
        nodes.len()
    );
    for n in &nodes {
        assert_eq!(condition_status(n, "Ready").as_deref(), Some("True"));
        let taints = n.spec.as_ref().and_then(|s| s.taints.clone());
        assert!(taints.unwrap_or_default().is_empty(), "untainted");
    }
    Ok(())
}

#[tokio::test]
async fn test_namespace_is_deleted_when_dropped() -> Result<()> {
    let client = client().await?;
    let ns = TestNamespace::create(&client, "e2e-drop").await?;
    let name = ns.name().to_string();
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let created = namespaces.get(&name).await?;
    assert_eq!(
        created
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(TEST_NAMESPACE_LABEL))
            .map(String::as_str),
        Some("true")
    );
    drop(ns);
    eventually(DEFAULT_TIMEOUT, "namespace terminating or gone", || async {
        Ok(match namespaces.get_opt(&name).await? {
            None => true,
            Some(n) => n.metadata.deletion_timestamp.is_some(),
        })
    })
    .await
}
