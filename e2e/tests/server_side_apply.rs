//! Server-side apply tracks field managers and reports conflicts between them.

use anyhow::Result;
use istio_install_e2e::{TestNamespace, apply, client, expect_api_error};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use serde_json::json;

fn cm(value: &str) -> serde_json::Value {
    json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "shared"},
        "data": {"key": value},
    })
}

#[tokio::test]
async fn two_field_managers_conflict_unless_forced() -> Result<()> {
    let client = client().await?;
    let ns = TestNamespace::create(&client, "e2e-ssa").await?;
    let cms: Api<ConfigMap> = ns.api();

    apply(&cms, "shared", &cm("from-alice"), "alice", false).await?;
    // Applying the same value is shared ownership, not a conflict.
    apply(&cms, "shared", &cm("from-alice"), "carol", false).await?;

    let status = expect_api_error(
        apply(&cms, "shared", &cm("from-bob"), "bob", false).await,
        409,
    )?;
    assert_eq!(status.reason, "Conflict");
    assert!(
        status.message.contains(".data.key") && status.message.contains("alice"),
        "conflict names the field and its manager: {}",
        status.message
    );
    let current = cms.get("shared").await?;
    assert_eq!(
        current
            .data
            .as_ref()
            .and_then(|d| d.get("key"))
            .map(String::as_str),
        Some("from-alice"),
        "a rejected apply changes nothing"
    );

    let forced = apply(&cms, "shared", &cm("from-bob"), "bob", true).await?;
    assert_eq!(
        forced
            .data
            .as_ref()
            .and_then(|d| d.get("key"))
            .map(String::as_str),
        Some("from-bob")
    );
    let managers: Vec<String> = forced
        .metadata
        .managed_fields
        .unwrap_or_default()
        .into_iter()
        .filter(|m| {
            m.fields_v1
                .as_ref()
                .is_some_and(|f| f.0.pointer("/f:data/f:key").is_some())
        })
        .filter_map(|m| m.manager)
        .collect();
    assert_eq!(managers, vec!["bob".to_string()], "bob took the field over");

    ns.delete().await
}
