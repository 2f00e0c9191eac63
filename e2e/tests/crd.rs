//! The IstioInstall CRD from `crds/` installs with server-side apply and its schema validation is
//! enforced by the API server.

use anyhow::Result;
use istio_install_e2e::{
    DEFAULT_TIMEOUT, apply_crd_file, client, expect_api_error, repo_path, unique_name, wait_deleted,
};
use kube::api::{Api, DeleteParams, DynamicObject, PostParams};
use kube::core::GroupVersionKind;
use kube::{ResourceExt, discovery};
use serde_json::json;

const CRD_FILE: &str = "crds/istioinstall.io_istioinstalls.yaml";

#[tokio::test]
async fn istioinstall_crd_is_established_and_validates_the_version() -> Result<()> {
    let client = client().await?;
    let crds = apply_crd_file(&client, &repo_path(CRD_FILE)).await?;
    assert!(
        crds.iter()
            .any(|c| c.metadata.name.as_deref() == Some("istioinstalls.istioinstall.io")),
        "{CRD_FILE} defines istioinstalls.istioinstall.io"
    );

    let gvk = GroupVersionKind::gvk("istioinstall.io", "v1alpha1", "IstioInstall");
    let (resource, caps) = discovery::pinned_kind(&client, &gvk).await?;
    assert_eq!(
        caps.scope,
        discovery::Scope::Cluster,
        "IstioInstall is cluster-scoped"
    );
    let api: Api<DynamicObject> = Api::all_with(client.clone(), &resource);

    let invalid_name = unique_name("e2e-invalid");
    let invalid: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "istioinstall.io/v1alpha1",
        "kind": "IstioInstall",
        "metadata": {"name": invalid_name},
        "spec": {"version": "banana"},
    }))?;
    let status = expect_api_error(api.create(&PostParams::default(), &invalid).await, 422)?;
    assert_eq!(status.reason, "Invalid");
    assert!(
        status.message.contains("must be an Istio minor"),
        "rejection explains the version rule: {}",
        status.message
    );

    let valid_name = unique_name("e2e-valid");
    let valid: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "istioinstall.io/v1alpha1",
        "kind": "IstioInstall",
        "metadata": {"name": valid_name},
        "spec": {"version": "1.24", "profile": "ambient"},
    }))?;
    let created = api.create(&PostParams::default(), &valid).await?;
    assert_eq!(created.data["spec"]["version"], json!("1.24"));
    api.delete(&valid_name, &DeleteParams::background()).await?;
    // No operator runs in this test, so nothing holds a finalizer on it.
    wait_deleted(
        &api,
        &valid_name,
        &created.uid().expect("uid"),
        DEFAULT_TIMEOUT,
    )
    .await?;
    Ok(())
}
