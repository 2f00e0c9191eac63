//! RBAC is really enforced, and a ServiceAccount token kubeconfig works for a client and for a
//! child process.

use anyhow::{Context, Result, ensure};
use istio_install_e2e::{
    DEFAULT_TIMEOUT, ServiceAccountAccess, TestNamespace, api_error, client, eventually,
    expect_api_error, kubectl_path,
};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{Api, ListParams, PostParams};
use serde_json::json;

#[tokio::test]
async fn service_account_without_permissions_is_forbidden_until_granted() -> Result<()> {
    let admin = client().await?;
    let ns = TestNamespace::create(&admin, "e2e-rbac").await?;
    let other = TestNamespace::create(&admin, "e2e-rbac-other").await?;
    let sa = ServiceAccountAccess::create(&admin, ns.name(), "restricted").await?;
    let restricted = sa.client().await?;

    let cms: Api<ConfigMap> = Api::namespaced(restricted.clone(), ns.name());
    let status = expect_api_error(cms.list(&ListParams::default()).await, 403)?;
    assert_eq!(status.reason, "Forbidden");
    assert!(
        status.message.contains(&sa.username()),
        "message names the ServiceAccount user: {}",
        status.message
    );
    let cm: ConfigMap = serde_json::from_value(json!({"metadata": {"name": "x"}}))?;
    expect_api_error(cms.create(&PostParams::default(), &cm).await, 403)?;
    let secrets: Api<Secret> = Api::namespaced(restricted.clone(), "kube-system");
    expect_api_error(secrets.list(&ListParams::default()).await, 403)?;

    // Grant configmap access in `ns` only.
    let role: Role = serde_json::from_value(json!({
        "metadata": {"name": "cm-editor"},
        "rules": [{"apiGroups": [""], "resources": ["configmaps"],
                   "verbs": ["get", "list", "create"]}]
    }))?;
    ns.api::<Role>()
        .create(&PostParams::default(), &role)
        .await?;
    let binding: RoleBinding = serde_json::from_value(json!({
        "metadata": {"name": "cm-editor"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "cm-editor"},
        "subjects": [{"kind": "ServiceAccount", "name": sa.name, "namespace": sa.namespace}]
    }))?;
    ns.api::<RoleBinding>()
        .create(&PostParams::default(), &binding)
        .await?;
    eventually(DEFAULT_TIMEOUT, "RoleBinding takes effect", || async {
        match cms.list(&ListParams::default()).await {
            Ok(_) => Ok(true),
            Err(e) if api_error(&e).map(|s| s.code) == Some(403) => Ok(false),
            Err(e) => Err(e.into()),
        }
    })
    .await?;
    cms.create(&PostParams::default(), &cm).await?;
    // The grant is namespaced: the other namespace stays forbidden.
    let other_cms: Api<ConfigMap> = Api::namespaced(restricted, other.name());
    expect_api_error(other_cms.list(&ListParams::default()).await, 403)?;

    // A child process with the ServiceAccount kubeconfig runs as that account.
    let kubectl = kubectl_path()?;
    let out = tokio::process::Command::new(&kubectl)
        .arg("--kubeconfig")
        .arg(&sa.kubeconfig)
        .args([
            "auth",
            "whoami",
            "-o",
            "jsonpath={.status.userInfo.username}",
        ])
        .output()
        .await
        .context("running kubectl auth whoami")?;
    ensure!(
        out.status.success(),
        "kubectl auth whoami failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), sa.username());
    for (ns_name, expected) in [(ns.name(), "yes"), (other.name(), "no")] {
        let out = tokio::process::Command::new(&kubectl)
            .arg("--kubeconfig")
            .arg(&sa.kubeconfig)
            .args(["auth", "can-i", "list", "configmaps", "-n", ns_name])
            .output()
            .await?;
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            expected,
            "can-i list configmaps in {ns_name}"
        );
    }

    other.delete().await?;
    ns.delete().await
}
