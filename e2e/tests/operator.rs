//! The operator end to end: a real `istio-install-operator run` process, under its own
//! least-privilege ServiceAccount (manifests/rbac.yaml), against the local control plane.
//!
//! IstioInstalls own cluster-wide components, so these scenarios run one at a time (a shared
//! lock) and each leaves the cluster without IstioInstalls.

use anyhow::{Context as _, Result, bail};
use istio_install_e2e::operator::{
    INSTALL_TIMEOUT, Operator, apply_install, condition, installs, is_ready_at, operator_binary,
    prepare, remove_all_installs, wait_install, wait_ready_at,
};
use istio_install_e2e::{ServiceAccountAccess, client, eventually};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Client;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams,
};
use serde_json::{Value, json};
use std::time::Duration;

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// One scenario at a time (the lock), an admin client, a running operator, and no IstioInstall
/// left from before.
struct Scenario {
    admin: Client,
    op: Operator,
    _serial: tokio::sync::MutexGuard<'static, ()>,
}

impl Scenario {
    async fn begin() -> Result<Scenario> {
        let serial = SERIAL.lock().await;
        let admin = client().await?;
        let op = Operator::start(&admin).await?;
        remove_all_installs(&admin).await?;
        Ok(Scenario {
            admin,
            op,
            _serial: serial,
        })
    }
}

async fn rolled_out(c: &Client) -> Result<(Vec<Deployment>, Vec<DaemonSet>)> {
    let deps: Api<Deployment> = Api::namespaced(c.clone(), "istio-system");
    let dss: Api<DaemonSet> = Api::namespaced(c.clone(), "istio-system");
    Ok((
        deps.list(&ListParams::default()).await?.items,
        dss.list(&ListParams::default()).await?.items,
    ))
}

#[tokio::test]
async fn ambient_install_reaches_ready_and_self_heals() -> Result<()> {
    let Scenario { admin, op, _serial } = Scenario::begin().await?;

    apply_install(
        &admin,
        "ambient",
        json!({"version": "1.24", "profile": "ambient"}),
    )
    .await?;
    let ii = wait_ready_at(&admin, "ambient", "1.24.6").await?;
    let names: Vec<&str> = ii.data["status"]["components"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["base", "pilot", "cni", "ztunnel"]);
    let (deps, dss) = rolled_out(&admin).await?;
    assert!(
        deps.iter()
            .any(|d| d.metadata.name.as_deref() == Some("istiod"))
    );
    for ds in &dss {
        let s = ds.status.clone().unwrap_or_default();
        assert_eq!(
            s.number_available.unwrap_or(0),
            s.desired_number_scheduled,
            "{:?}",
            ds.metadata.name
        );
        assert!(
            s.desired_number_scheduled >= 3,
            "DaemonSets run on every kwok node"
        );
    }

    // Deleting an owned object is reverted.
    let deployments: Api<Deployment> = Api::namespaced(admin.clone(), "istio-system");
    let old_uid = deployments.get("istiod").await?.metadata.uid;
    deployments
        .delete("istiod", &DeleteParams::default())
        .await?;
    eventually(Duration::from_secs(60), "istiod is recreated", || async {
        Ok(deployments
            .get_opt("istiod")
            .await?
            .is_some_and(|d| d.metadata.uid != old_uid))
    })
    .await?;

    // Editing an owned object is reverted (another manager changes a field we own).
    let edit = json!({"spec": {"template": {"spec": {"containers": [{"name": "discovery", "image": "example.invalid/tampered:1"}]}}}});
    deployments
        .patch("istiod", &PatchParams::default(), &Patch::Strategic(&edit))
        .await?;
    eventually(
        Duration::from_secs(60),
        "the istiod image is restored",
        || async {
            let d = deployments.get("istiod").await?;
            let image = d.spec.unwrap().template.spec.unwrap().containers[0]
                .image
                .clone()
                .unwrap_or_default();
            Ok(image.ends_with("pilot:1.24.6-distroless"))
        },
    )
    .await?;

    // Disabling a component prunes it.
    apply_install(&admin, "ambient", json!({"version": "1.24", "profile": "ambient", "components": {"ztunnel": {"enabled": false}}})).await?;
    let dss: Api<DaemonSet> = Api::namespaced(admin.clone(), "istio-system");
    eventually(
        INSTALL_TIMEOUT,
        "the ztunnel DaemonSet is pruned",
        || async { Ok(dss.get_opt("ztunnel").await?.is_none()) },
    )
    .await?;
    wait_install(&admin, "ambient", "Ready again without ztunnel", |ii| {
        is_ready_at(ii, "1.24.6")
    })
    .await?;

    remove_all_installs(&admin).await?;
    drop(op);
    Ok(())
}

#[tokio::test]
async fn default_profile_installs_and_uninstall_keeps_user_config() -> Result<()> {
    let Scenario { admin, op, _serial } = Scenario::begin().await?;

    apply_install(
        &admin,
        "sidecar",
        json!({"version": "1.23.6", "profile": "default"}),
    )
    .await?;
    wait_ready_at(&admin, "sidecar", "1.23.6").await?;
    let deployments: Api<Deployment> = Api::namespaced(admin.clone(), "istio-system");
    assert!(deployments.get_opt("istio-ingressgateway").await?.is_some());

    // A user's VirtualService, stored before the uninstall, must survive it.
    let vs_resource = ApiResource {
        group: "networking.istio.io".into(),
        version: "v1".into(),
        api_version: "networking.istio.io/v1".into(),
        kind: "VirtualService".into(),
        plural: "virtualservices".into(),
    };
    let vss: Api<DynamicObject> = Api::namespaced_with(admin.clone(), "default", &vs_resource);
    let vs: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
        "metadata": {"name": "reviews", "namespace": "default"},
        "spec": {"hosts": ["reviews"], "http": [{"route": [{"destination": {"host": "reviews"}}]}]}
    }))?;
    let _ = vss.delete("reviews", &DeleteParams::default()).await;
    vss.create(&PostParams::default(), &vs).await?;

    remove_all_installs(&admin).await?;
    assert!(
        deployments.get_opt("istiod").await?.is_none(),
        "istiod is uninstalled"
    );
    assert!(
        deployments.get_opt("istio-ingressgateway").await?.is_none(),
        "the gateway is uninstalled"
    );
    let crds: Api<CustomResourceDefinition> = Api::all(admin.clone());
    assert!(
        crds.get_opt("virtualservices.networking.istio.io")
            .await?
            .is_some(),
        "CRDs are kept"
    );
    assert!(
        vss.get_opt("reviews").await?.is_some(),
        "the VirtualService is kept"
    );
    vss.delete("reviews", &DeleteParams::default()).await?;
    drop(op);
    Ok(())
}

#[tokio::test]
async fn invalid_and_conflicting_specs_stall_without_touching_the_running_mesh() -> Result<()> {
    let Scenario { admin, op, _serial } = Scenario::begin().await?;

    apply_install(
        &admin,
        "first",
        json!({"version": "1.24", "profile": "minimal"}),
    )
    .await?;
    wait_install(&admin, "first", "Ready", |ii| is_ready_at(ii, "1.24.6")).await?;
    let deployments: Api<Deployment> = Api::namespaced(admin.clone(), "istio-system");
    let before = deployments.get("istiod").await?.metadata.resource_version;

    // Refused at admission by the CRD's CEL rule.
    let err = apply_install(
        &admin,
        "first",
        json!({"version": "latest", "profile": "minimal"}),
    )
    .await
    .unwrap_err();
    assert!(
        format!("{err:#}").contains("must be an Istio minor"),
        "{err:#}"
    );

    // Accepted by the schema, refused by the operator: Stalled, naming the field.
    apply_install(
        &admin,
        "first",
        json!({"version": "1.99", "profile": "minimal"}),
    )
    .await?;
    let ii = wait_install(&admin, "first", "Stalled on the unknown version", |ii| {
        condition(ii, "Stalled").is_some_and(|c| c["status"] == "True")
            && ii.data["status"]["observedGeneration"] == ii.metadata.generation.unwrap_or(-1)
    })
    .await?;
    let message = condition(&ii, "Stalled").unwrap()["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        message.starts_with("spec.version: \"1.99\" is not bundled"),
        "{message}"
    );
    assert_eq!(
        ii.data["status"]["installedVersion"], "1.24.6",
        "the installed version is still reported"
    );
    assert_eq!(
        deployments.get("istiod").await?.metadata.resource_version,
        before,
        "istiod was not touched"
    );

    // Back to a good spec, then a second install claiming the same control plane.
    apply_install(
        &admin,
        "first",
        json!({"version": "1.24", "profile": "minimal"}),
    )
    .await?;
    wait_install(&admin, "first", "Ready again", |ii| {
        is_ready_at(ii, "1.24.6")
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    apply_install(
        &admin,
        "second",
        json!({"version": "1.24", "profile": "minimal"}),
    )
    .await?;
    let second = wait_install(&admin, "second", "Stalled by the conflict", |ii| {
        condition(ii, "Stalled").is_some_and(|c| c["status"] == "True")
    })
    .await?;
    let message = condition(&second, "Stalled").unwrap()["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        message.contains("already managed by IstioInstall \"first\""),
        "{message}"
    );
    let first = installs(&admin).get("first").await?;
    assert!(
        is_ready_at(&first, "1.24.6"),
        "the first install is unaffected"
    );

    remove_all_installs(&admin).await?;
    drop(op);
    Ok(())
}

#[tokio::test]
async fn restarts_resume_and_an_unchanged_install_gets_no_writes() -> Result<()> {
    let Scenario { admin, op, _serial } = Scenario::begin().await?;

    // Killed mid-install: the next process finishes the same install.
    apply_install(
        &admin,
        "resume",
        json!({"version": "1.24", "profile": "ambient"}),
    )
    .await?;
    let deployments: Api<Deployment> = Api::namespaced(admin.clone(), "istio-system");
    eventually(INSTALL_TIMEOUT, "istiod exists", || async {
        Ok(deployments.get_opt("istiod").await?.is_some())
    })
    .await?;
    op.kill().await?;
    let op = Operator::start(&admin).await?;
    wait_install(&admin, "resume", "Ready after the restart", |ii| {
        is_ready_at(ii, "1.24.6")
    })
    .await?;
    drop(op);

    // A fresh process on an unchanged, Ready install reconciles it and writes nothing.
    let op = Operator::start(&admin).await?;
    eventually(
        Duration::from_secs(60),
        "the restarted operator reconciled the install",
        || async { Ok(op.metric("istio_install_operator_reconciles_total").await? >= 1.0) },
    )
    .await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        op.metric("istio_install_operator_write_requests_total")
            .await?,
        0.0
    );

    // Once its watch caches are filled, a no-op reconcile reads nothing from the API server
    // either: every reconcile set off by touching the install's metadata is answered from them.
    let reads = op
        .metric("istio_install_operator_api_read_requests_total")
        .await?;
    for i in 0..5 {
        let before = op.metric("istio_install_operator_reconciles_total").await?;
        installs(&admin)
            .patch(
                "resume",
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"annotations": {"e2e.istioinstall.io/poke": i.to_string()}}})),
            )
            .await?;
        eventually(
            Duration::from_secs(30),
            "a reconcile after the poke",
            || async { Ok(op.metric("istio_install_operator_reconciles_total").await? > before) },
        )
        .await?;
    }
    assert_eq!(
        op.metric("istio_install_operator_api_read_requests_total")
            .await?
            - reads,
        0.0,
        "no-op reconciles sent read requests"
    );
    assert_eq!(
        op.metric("istio_install_operator_write_requests_total")
            .await?,
        0.0
    );

    remove_all_installs(&admin).await?;
    drop(op);
    Ok(())
}

#[tokio::test]
async fn waypoints_need_the_gateway_api_and_enrol_their_namespace() -> Result<()> {
    let Scenario { admin, op, _serial } = Scenario::begin().await?;
    let crds: Api<CustomResourceDefinition> = Api::all(admin.clone());
    if crds
        .get_opt("gateways.gateway.networking.k8s.io")
        .await?
        .is_some()
    {
        crds.delete(
            "gateways.gateway.networking.k8s.io",
            &DeleteParams::default(),
        )
        .await?;
        eventually(
            Duration::from_secs(60),
            "the Gateway CRD is gone",
            || async {
                Ok(crds
                    .get_opt("gateways.gateway.networking.k8s.io")
                    .await?
                    .is_none())
            },
        )
        .await?;
    }
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(admin.clone());
    let ns: k8s_openapi::api::core::v1::Namespace =
        serde_json::from_value(json!({"metadata": {"name": "bookinfo"}}))?;
    let _ = namespaces.create(&PostParams::default(), &ns).await;

    let spec = json!({"version": "1.24", "profile": "ambient",
        "waypoints": [{"namespace": "bookinfo", "for": "all", "enrollNamespace": true}]});
    apply_install(&admin, "wp", spec).await?;
    let ii = wait_install(&admin, "wp", "Stalled for the missing Gateway API", |ii| {
        condition(ii, "Stalled")
            .is_some_and(|c| c["status"] == "True" && c["reason"] == "MissingGatewayAPI")
    })
    .await?;
    let message = condition(&ii, "Stalled").unwrap()["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        message.contains("gateways.gateway.networking.k8s.io"),
        "{message}"
    );

    // The Gateway API arrives (a minimal stand-in for its CRD); the waypoint is created.
    let gateway_crd: CustomResourceDefinition = serde_json::from_value(json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "gateways.gateway.networking.k8s.io",
            "annotations": {"api-approved.kubernetes.io": "https://github.com/kubernetes-sigs/gateway-api/pull/2466"}},
        "spec": {"group": "gateway.networking.k8s.io", "scope": "Namespaced",
            "names": {"plural": "gateways", "singular": "gateway", "kind": "Gateway", "listKind": "GatewayList"},
            "versions": [{"name": "v1", "served": true, "storage": true, "subresources": {"status": {}},
                "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}]}
    }))?;
    crds.create(&PostParams::default(), &gateway_crd).await?;
    let gw_resource = ApiResource {
        group: "gateway.networking.k8s.io".into(),
        version: "v1".into(),
        api_version: "gateway.networking.k8s.io/v1".into(),
        kind: "Gateway".into(),
        plural: "gateways".into(),
    };
    let gateways: Api<DynamicObject> =
        Api::namespaced_with(admin.clone(), "bookinfo", &gw_resource);
    eventually(Duration::from_secs(120), "the waypoint Gateway exists", || async {
        // Nudge a reconcile (a new CRD is not one of the watched objects).
        let nudge = json!({"metadata": {"annotations": {"e2e/nudge": format!("{:?}", std::time::Instant::now())}}});
        installs(&admin).patch("wp", &PatchParams::default(), &Patch::Merge(&nudge)).await?;
        Ok(gateways.get_opt("waypoint").await?.is_some())
    })
    .await?;
    let gw = gateways.get("waypoint").await?;
    assert_eq!(gw.data["spec"]["gatewayClassName"], "istio-waypoint");
    assert_eq!(gw.data["spec"]["listeners"][0]["protocol"], "HBONE");
    assert_eq!(
        gw.metadata.labels.as_ref().unwrap()["istio.io/waypoint-for"],
        "all"
    );

    // istiod would program it; nothing runs in this cluster, so the test plays istiod.
    let programmed = json!({"status": {"conditions": [{"type": "Programmed", "status": "True", "reason": "Programmed",
        "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z"}]}});
    gateways
        .patch_status(
            "waypoint",
            &PatchParams::default(),
            &Patch::Merge(&programmed),
        )
        .await?;
    wait_install(&admin, "wp", "Ready with the waypoint", |ii| {
        is_ready_at(ii, "1.24.6")
    })
    .await?;
    eventually(Duration::from_secs(30), "bookinfo is enrolled", || async {
        let labels = namespaces
            .get("bookinfo")
            .await?
            .metadata
            .labels
            .unwrap_or_default();
        Ok(
            labels.get("istio.io/dataplane-mode").map(String::as_str) == Some("ambient")
                && labels.get("istio.io/use-waypoint").map(String::as_str) == Some("waypoint"),
        )
    })
    .await?;

    // Removing the waypoint prunes the Gateway and takes the labels off again.
    apply_install(
        &admin,
        "wp",
        json!({"version": "1.24", "profile": "ambient"}),
    )
    .await?;
    eventually(
        Duration::from_secs(60),
        "the waypoint is pruned and bookinfo unenrolled",
        || async {
            let labels = namespaces
                .get("bookinfo")
                .await?
                .metadata
                .labels
                .unwrap_or_default();
            Ok(gateways.get_opt("waypoint").await?.is_none()
                && !labels.contains_key("istio.io/use-waypoint"))
        },
    )
    .await?;

    remove_all_installs(&admin).await?;
    crds.delete(
        "gateways.gateway.networking.k8s.io",
        &DeleteParams::default(),
    )
    .await?;
    drop(op);
    Ok(())
}

#[tokio::test]
async fn health_endpoints_and_leader_election() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let admin = client().await?;
    let op = Operator::start(&admin).await?;
    let (code, body) = op.get("/livez").await?;
    assert_eq!(code, 200, "{body}");
    let (_, metrics) = op.get("/metrics").await?;
    assert!(
        metrics.contains("istio_install_operator_reconcile_duration_seconds"),
        "{metrics}"
    );
    drop(op);

    // Two replicas with leader election: exactly one leads; both are ready (a standby replica
    // is healthy, and readiness must not wait for leadership or a rolling update deadlocks).
    let kubeconfig = prepare(&admin).await?;
    let a = Operator::spawn(&kubeconfig, &["--leader-elect=true"]).await?;
    let b = Operator::spawn(&kubeconfig, &["--leader-elect=true"]).await?;
    let leaders = || async {
        let mut n = 0.0;
        for op in [&a, &b] {
            n += op
                .metric("istio_install_operator_leader")
                .await
                .unwrap_or(0.0);
        }
        n
    };
    eventually(
        Duration::from_secs(60),
        "one replica leads, both are ready",
        || async {
            let ready = [a.get("/readyz").await, b.get("/readyz").await]
                .into_iter()
                .filter(|r| r.as_ref().is_ok_and(|(code, _)| *code == 200))
                .count();
            Ok(ready == 2 && leaders().await == 1.0)
        },
    )
    .await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(leaders().await, 1.0, "still exactly one leader");
    Ok(())
}

/// Every image change of the workloads in istio-system, as (resourceVersion, workload, image).
/// etcd revisions grow with every write, so sorting by them gives the order the writes happened
/// in, across the Deployment and DaemonSet watches.
type Rollouts = std::sync::Arc<std::sync::Mutex<Vec<(u64, String, String)>>>;

/// The (metadata, first container image) of every change to the workloads of kind `K` in
/// istio-system.
fn workload_images<K>(
    c: &Client,
    template: fn(&K) -> Option<&k8s_openapi::api::core::v1::PodTemplateSpec>,
) -> futures::stream::BoxStream<
    'static,
    Result<(kube::api::ObjectMeta, Option<String>), kube::runtime::watcher::Error>,
>
where
    K: kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + 'static,
{
    use futures::StreamExt;
    use kube::runtime::{WatchStreamExt, watcher};
    watcher(
        Api::<K>::namespaced(c.clone(), "istio-system"),
        watcher::Config::default(),
    )
    .applied_objects()
    .map(move |w| {
        w.map(|w| {
            let image =
                template(&w).and_then(|t| t.spec.as_ref()?.containers.first()?.image.clone());
            (w.meta().clone(), image)
        })
    })
    .boxed()
}

fn record_rollouts(c: &Client) -> (Rollouts, tokio::task::JoinHandle<()>) {
    use futures::StreamExt;
    let seen: Rollouts = Default::default();
    let deployments = workload_images::<Deployment>(c, |d| d.spec.as_ref().map(|s| &s.template));
    let daemonsets = workload_images::<DaemonSet>(c, |d| d.spec.as_ref().map(|s| &s.template));
    let record = seen.clone();
    let task = tokio::spawn(async move {
        let mut both = futures::stream::select(deployments, daemonsets);
        let mut last = std::collections::HashMap::new();
        while let Some(event) = both.next().await {
            let Ok((meta, Some(image))) = event else {
                continue;
            };
            let name = meta.name.unwrap_or_default();
            if last.get(&name) != Some(&image) {
                last.insert(name.clone(), image.clone());
                let rv = meta
                    .resource_version
                    .unwrap_or_default()
                    .parse()
                    .unwrap_or(0);
                record.lock().unwrap().push((rv, name, image));
            }
        }
    });
    (seen, task)
}

/// The workloads in the order they started running images tagged `tag`.
fn rollout_order(rollouts: &Rollouts, tag: &str) -> Vec<String> {
    let mut changes: Vec<_> = rollouts
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, _, image)| image.contains(&format!(":{tag}")))
        .cloned()
        .collect();
    changes.sort();
    let mut order: Vec<String> = Vec::new();
    for (_, name, _) in changes {
        if !order.contains(&name) {
            order.push(name);
        }
    }
    order
}

/// The reasons and notes of the Events about IstioInstall `name` seen since `since`.
async fn install_events(
    c: &Client,
    name: &str,
    since: k8s_openapi::jiff::Timestamp,
) -> Result<Vec<(String, String)>> {
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::all(c.clone());
    Ok(events
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|e| {
            let last = e
                .series
                .as_ref()
                .map(|s| s.last_observed_time.0)
                .or(e.event_time.as_ref().map(|t| t.0));
            e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name)
                && e.regarding.as_ref().and_then(|r| r.kind.as_deref()) == Some("IstioInstall")
                && last.is_some_and(|t| t >= since)
        })
        .map(|e| (e.reason.unwrap_or_default(), e.note.unwrap_or_default()))
        .collect())
}

#[tokio::test]
async fn in_place_upgrade_and_downgrade_follow_istios_order() -> Result<()> {
    let Scenario { admin, op, _serial } = Scenario::begin().await?;
    let (rollouts, watch) = record_rollouts(&admin);
    let name = "upgrade";
    let start = k8s_openapi::jiff::Timestamp::now();

    apply_install(
        &admin,
        name,
        json!({"version": "1.23", "profile": "ambient"}),
    )
    .await?;
    wait_ready_at(&admin, name, "1.23.6").await?;

    // Up to 1.24.0: istiod first, then istio-cni, then ztunnel, each after the one before is
    // rolled out; the known hazards of 1.23 → 1.24.0 are announced.
    apply_install(
        &admin,
        name,
        json!({"version": "1.24.0", "profile": "ambient"}),
    )
    .await?;
    let ii = wait_ready_at(&admin, name, "1.24.0").await?;
    for c in ii.data["status"]["components"].as_array().unwrap() {
        assert_eq!(c["version"], "1.24.0", "{c}");
    }
    assert_eq!(
        rollout_order(&rollouts, "1.24.0"),
        ["istiod", "istio-cni-node", "ztunnel"]
    );
    let events = install_events(&admin, name, start).await?;
    assert!(
        events
            .iter()
            .any(|(r, n)| r == "Upgrading" && n.contains("from 1.23.6 to 1.24.0")),
        "{events:#?}"
    );
    for hazard in ["istio/istio#54145", "istio/istio#53883"] {
        assert!(
            events
                .iter()
                .any(|(r, n)| r == "UpgradeNote" && n.contains(hazard)),
            "{hazard}: {events:#?}"
        );
    }

    // Back to 1.23.6: the data plane first and istiod last, so the data plane is never newer
    // than the control plane.
    apply_install(
        &admin,
        name,
        json!({"version": "1.23.6", "profile": "ambient"}),
    )
    .await?;
    wait_install(&admin, name, "Ready at 1.23.6 again", |ii| {
        is_ready_at(ii, "1.23.6")
    })
    .await?;
    let back: Vec<String> = {
        // Only the changes after the upgrade: the first 1.23.6 images are the install's.
        let upgraded_at = rollouts
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, _, image)| image.contains(":1.24.0"))
            .map(|(rv, _, _)| *rv)
            .max()
            .unwrap_or(0);
        let after: Rollouts = std::sync::Arc::new(std::sync::Mutex::new(
            rollouts
                .lock()
                .unwrap()
                .iter()
                .filter(|(rv, _, _)| *rv > upgraded_at)
                .cloned()
                .collect(),
        ));
        rollout_order(&after, "1.23.6")
    };
    assert_eq!(back, ["ztunnel", "istio-cni-node", "istiod"]);
    let events = install_events(&admin, name, start).await?;
    assert!(
        events
            .iter()
            .any(|(r, n)| r == "Downgrading" && n.contains("from 1.24.0 to 1.23.6")),
        "{events:#?}"
    );

    watch.abort();
    remove_all_installs(&admin).await?;
    drop(op);
    Ok(())
}

#[tokio::test]
async fn in_place_upgrade_to_1_25_follows_istios_order_one_minor_at_a_time() -> Result<()> {
    let Scenario { admin, op, _serial } = Scenario::begin().await?;
    let (rollouts, watch) = record_rollouts(&admin);
    let name = "upgrade-1-25";
    let start = k8s_openapi::jiff::Timestamp::now();

    apply_install(
        &admin,
        name,
        json!({"version": "1.24.6", "profile": "ambient"}),
    )
    .await?;
    wait_ready_at(&admin, name, "1.24.6").await?;

    // Up to 1.25.5, the bundle added without Rust: the same order and preflight as 1.23 → 1.24,
    // and the hazard 1.25's upgrade notes name (DNS capture on only for pods started after).
    apply_install(
        &admin,
        name,
        json!({"version": "1.25", "profile": "ambient"}),
    )
    .await?;
    let ii = wait_ready_at(&admin, name, "1.25.5").await?;
    for c in ii.data["status"]["components"].as_array().unwrap() {
        assert_eq!(c["version"], "1.25.5", "{c}");
    }
    assert_eq!(
        rollout_order(&rollouts, "1.25.5"),
        ["istiod", "istio-cni-node", "ztunnel"]
    );
    let events = install_events(&admin, name, start).await?;
    assert!(
        events
            .iter()
            .any(|(r, n)| r == "Upgrading" && n.contains("from 1.24.6 to 1.25.5")),
        "{events:#?}"
    );
    assert!(
        events.iter().any(|(r, n)| r == "UpgradeNote"
            && n.contains("values.cni.ambient.reconcileIptablesOnStartup")),
        "{events:#?}"
    );
    // 1.25's objects, not 1.24's: istio-cni's ambient role may read its own DaemonSet.
    let roles: Api<k8s_openapi::api::rbac::v1::ClusterRole> = Api::all(admin.clone());
    let ambient = roles.get("istio-cni-ambient").await?;
    assert!(
        ambient.rules.unwrap_or_default().iter().any(|r| {
            r.resources.as_deref() == Some(&["daemonsets".to_string()][..])
                && r.resource_names.as_deref() == Some(&["istio-cni-node".to_string()][..])
        }),
        "istio-cni-ambient lacks the 1.25 rule"
    );

    // Two minors down in one step is refused, naming the minor in between; nothing changes.
    apply_install(
        &admin,
        name,
        json!({"version": "1.23.6", "profile": "ambient"}),
    )
    .await?;
    let ii = wait_install(&admin, name, "Stalled on 1.25.5 → 1.23.6", |ii| {
        condition(ii, "Stalled")
            .is_some_and(|c| c["status"] == "True" && c["reason"] == "UnsupportedVersionChange")
    })
    .await?;
    let message = condition(&ii, "Stalled").unwrap()["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        message.contains("set spec.version to 1.24 first"),
        "{message}"
    );
    assert_eq!(ii.data["status"]["installedVersion"], "1.25.5");
    let (deployments, daemonsets) = rolled_out(&admin).await?;
    let images: Vec<String> = deployments
        .iter()
        .filter_map(|d| {
            d.spec
                .as_ref()?
                .template
                .spec
                .as_ref()?
                .containers
                .first()?
                .image
                .clone()
        })
        .chain(daemonsets.iter().filter_map(|d| {
            d.spec
                .as_ref()?
                .template
                .spec
                .as_ref()?
                .containers
                .first()?
                .image
                .clone()
        }))
        .collect();
    assert!(
        !images.is_empty() && images.iter().all(|i| i.contains(":1.25.5")),
        "{images:?}"
    );

    watch.abort();
    remove_all_installs(&admin).await?;
    drop(op);
    Ok(())
}

/// Runs the operator binary's CLI; returns stdout and stderr, failing on a non-zero exit.
async fn cli(args: &[&str]) -> Result<(String, String)> {
    let out = tokio::process::Command::new(operator_binary())
        .args(args)
        .output()
        .await?;
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    if !out.status.success() {
        bail!("istio-install-operator {args:?}: {}\n{stderr}", out.status);
    }
    Ok((stdout, stderr))
}

#[tokio::test]
async fn an_istio_operator_install_is_converted_and_adopted_in_place() -> Result<()> {
    let Scenario { admin, op, _serial } = Scenario::begin().await?;
    let dir = std::env::temp_dir().join(istio_install_e2e::unique_name("iop"));
    std::fs::create_dir_all(&dir)?;
    let iop_file = dir.join("iop.yaml");
    std::fs::write(
        &iop_file,
        "apiVersion: install.istio.io/v1alpha1\nkind: IstioOperator\n\
         metadata: {name: installed-state, namespace: istio-system}\n\
         spec:\n  profile: minimal\n  tag: 1.23.6\n  meshConfig: {accessLogFile: /dev/stdout}\n  \
         components:\n    pilot: {k8s: {resources: {requests: {cpu: 250m}}, readinessProbe: {periodSeconds: 5}}}\n",
    )?;

    // The IstioOperator becomes an IstioInstall; what cannot carry over is named.
    let (converted, notes) = cli(&["convert", "-f", iop_file.to_str().unwrap()]).await?;
    assert!(
        notes.contains("spec.components.pilot.k8s.readinessProbe: not carried over"),
        "{notes}"
    );
    let converted_file = dir.join("install.yaml");
    std::fs::write(&converted_file, &converted)?;

    // What istioctl installed from it: the same objects, under istioctl's field manager and
    // labels, without the operator's.
    let (rendered, _) = cli(&[
        "render",
        "-f",
        converted_file.to_str().unwrap(),
        "-o",
        "json",
    ])
    .await?;
    let rendered: Value = serde_json::from_str(&rendered)?;
    admin_namespace(&admin, "istio-system").await?;
    for item in rendered["items"].as_array().unwrap() {
        let mut item = item.clone();
        let labels = item["metadata"]["labels"].as_object_mut().unwrap();
        for ours in [
            "app.kubernetes.io/managed-by",
            "istioinstall.io/component",
            "istioinstall.io/install",
        ] {
            labels.remove(ours);
        }
        labels.insert("operator.istio.io/managed".into(), json!("Reconcile"));
        istio_install_e2e::apply_manifest(&admin, &item, Some("istio-system"), "istio-operator")
            .await?;
    }
    let deployments: Api<Deployment> = Api::namespaced(admin.clone(), "istio-system");
    let before = deployments.get("istiod").await?;

    // The operator takes the running install over in place.
    let install = istio_install_e2e::parse_yaml_documents(&converted)?.remove(0);
    istio_install_e2e::apply_manifest(&admin, &install, None, "e2e-test").await?;
    wait_ready_at(&admin, "installed-state", "1.23.6").await?;
    let after = deployments.get("istiod").await?;
    assert_eq!(
        after.metadata.uid, before.metadata.uid,
        "adopted, not re-created"
    );
    assert_eq!(
        after.metadata.generation, before.metadata.generation,
        "nothing in the pod template changed, so nothing restarted"
    );
    let labels = after.metadata.labels.clone().unwrap_or_default();
    assert_eq!(labels["istioinstall.io/install"], "installed-state");
    let owner = &after.metadata.owner_references.clone().unwrap_or_default()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str()),
        ("IstioInstall", "installed-state")
    );
    let container = &after.spec.unwrap().template.spec.unwrap().containers[0];
    let requests = container.resources.clone().unwrap().requests.unwrap();
    assert_eq!(
        requests["cpu"].0, "250m",
        "the IstioOperator's k8s overrides carried over"
    );

    remove_all_installs(&admin).await?;
    drop(op);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// Creates a namespace if it is missing.
async fn admin_namespace(c: &Client, name: &str) -> Result<()> {
    let namespace = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}});
    istio_install_e2e::apply_manifest(c, &namespace, None, "e2e-test").await?;
    Ok(())
}

#[tokio::test]
async fn a_canary_revision_takes_over_a_revision_tag_without_a_gap() -> Result<()> {
    use futures::StreamExt;
    use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
    use kube::runtime::watcher;
    let Scenario { admin, op, _serial } = Scenario::begin().await?;

    // The running mesh: 1.23, with the revision tag `prod` that namespaces select.
    apply_install(
        &admin,
        "stable",
        json!({"version": "1.23", "profile": "default", "values": {"revisionTags": ["prod"]}}),
    )
    .await?;
    wait_ready_at(&admin, "stable", "1.23.6").await?;

    // The canary: 1.24 as revision 1-24 next to it; the CRDs and the gateway stay with stable.
    let canary = |tags: Value| {
        json!({"version": "1.24", "profile": "default", "revision": "1-24",
               "values": {"revisionTags": tags},
               "components": {"base": {"enabled": false},
                              "ingressGateways": [{"name": "istio-ingressgateway", "enabled": false}]}})
    };
    apply_install(&admin, "canary", canary(json!([]))).await?;
    wait_ready_at(&admin, "canary", "1.24.6").await?;

    let webhooks: Api<MutatingWebhookConfiguration> = Api::all(admin.clone());
    let tag = "istio-revision-tag-prod";
    let before = webhooks.get(tag).await?;
    // Any deletion of the tag's webhook during the move would leave new pods uninjected.
    let deletions = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let watch = {
        let deletions = deletions.clone();
        let stream = watcher(
            webhooks.clone(),
            watcher::Config::default().fields(&format!("metadata.name={tag}")),
        );
        tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream);
            while let Some(event) = stream.next().await {
                if let Ok(watcher::Event::Delete(_)) = event {
                    deletions.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
            }
        })
    };

    // The move: the canary asks for the tag (and waits, stalled, naming the holder), then
    // stable lets go of it; the canary adopts the webhook as it is and points it at istiod-1-24.
    apply_install(&admin, "canary", canary(json!(["prod"]))).await?;
    wait_install(&admin, "canary", "stalled on the tag stable holds", |ii| {
        condition(ii, "Stalled").is_some_and(|c| {
            c["status"] == "True"
                && c["reason"] == "ObjectConflict"
                && c["message"]
                    .as_str()
                    .unwrap_or_default()
                    .contains("IstioInstall stable")
        })
    })
    .await?;
    apply_install(
        &admin,
        "stable",
        json!({"version": "1.23", "profile": "default", "values": {"revisionTags": []}}),
    )
    .await?;
    wait_install(&admin, "canary", "Ready with the tag", |ii| {
        is_ready_at(ii, "1.24.6")
    })
    .await?;
    let after = webhooks.get(tag).await?;
    assert_eq!(
        after.metadata.uid, before.metadata.uid,
        "handed over, not re-created"
    );
    let service = after.webhooks.unwrap()[0]
        .client_config
        .service
        .clone()
        .unwrap()
        .name;
    assert_eq!(service, "istiod-1-24");
    assert_eq!(
        after.metadata.labels.unwrap()["istioinstall.io/install"],
        "canary"
    );
    wait_install(&admin, "stable", "still Ready without the tag", |ii| {
        is_ready_at(ii, "1.23.6")
    })
    .await?;
    watch.abort();
    assert_eq!(
        deletions.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "the tag's webhook was never deleted"
    );

    // The CRDs, the default validator and the gateway move the same way: the canary asks for
    // them (stalled on stable's claim), stable lets go, the canary adopts them in place.
    let deployments: Api<Deployment> = Api::namespaced(admin.clone(), "istio-system");
    let gateway_before = deployments.get("istio-ingressgateway").await?;
    let full_canary = json!({"version": "1.24", "profile": "default", "revision": "1-24",
                             "values": {"revisionTags": ["prod"]}});
    apply_install(&admin, "canary", full_canary).await?;
    wait_install(&admin, "canary", "stalled on stable's claims", |ii| {
        condition(ii, "Stalled").is_some_and(|c| c["status"] == "True" && c["reason"] == "Conflict")
    })
    .await?;
    apply_install(
        &admin,
        "stable",
        json!({"version": "1.23", "profile": "default",
               "components": {"base": {"enabled": false},
                              "ingressGateways": [{"name": "istio-ingressgateway", "enabled": false}]}}),
    )
    .await?;
    wait_install(&admin, "canary", "Ready with base and the gateway", |ii| {
        is_ready_at(ii, "1.24.6")
            && ii.data["status"]["components"]
                .as_array()
                .is_some_and(|c| c.iter().any(|c| c["name"] == "base"))
    })
    .await?;

    // The old revision goes; what the canary took over stays.
    installs(&admin)
        .delete("stable", &DeleteParams::default())
        .await?;
    eventually(INSTALL_TIMEOUT, "stable is uninstalled", || async {
        Ok(installs(&admin).get_opt("stable").await?.is_none())
    })
    .await?;
    assert!(
        deployments.get_opt("istiod").await?.is_none(),
        "the 1.23 istiod is gone"
    );
    // Garbage collection has had its chance to act on anything still owned by stable.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let gateway = deployments.get("istio-ingressgateway").await?;
    assert_eq!(
        gateway.metadata.uid, gateway_before.metadata.uid,
        "the gateway was handed over"
    );
    let owners: Vec<String> = gateway
        .metadata
        .owner_references
        .unwrap_or_default()
        .into_iter()
        .map(|o| o.name)
        .collect();
    assert_eq!(owners, ["canary"]);
    assert_eq!(webhooks.get(tag).await?.metadata.uid, before.metadata.uid);
    wait_install(&admin, "canary", "Ready after stable is gone", |ii| {
        is_ready_at(ii, "1.24.6")
    })
    .await?;

    remove_all_installs(&admin).await?;
    drop(op);
    Ok(())
}

#[tokio::test]
async fn pause_and_ignore_leave_a_hand_made_fix_in_place() -> Result<()> {
    let Scenario { admin, op, _serial } = Scenario::begin().await?;
    apply_install(
        &admin,
        "mesh",
        json!({"version": "1.24", "profile": "minimal"}),
    )
    .await?;
    wait_install(&admin, "mesh", "Ready", |ii| is_ready_at(ii, "1.24.6")).await?;
    let deployments: Api<Deployment> = Api::namespaced(admin.clone(), "istio-system");
    let image = |d: &Deployment| {
        d.spec
            .as_ref()
            .unwrap()
            .template
            .spec
            .as_ref()
            .unwrap()
            .containers[0]
            .image
            .clone()
            .unwrap_or_default()
    };
    let hotfix = json!({"spec": {"template": {"spec": {"containers": [
        {"name": "discovery", "image": "example.invalid/pilot:hotfix"}]}}}});
    let api = installs(&admin);
    let patch = |body: Value| {
        let api = api.clone();
        async move {
            api.patch("mesh", &PatchParams::default(), &Patch::Merge(&body))
                .await
        }
    };

    // Paused: a hand-made change stays, the status says why, and nothing is written.
    patch(json!({"metadata": {"annotations": {"istioinstall.io/paused": "true"}}})).await?;
    wait_install(&admin, "mesh", "Paused", |ii| {
        condition(ii, "Paused").is_some_and(|c| c["status"] == "True")
    })
    .await?;
    deployments
        .patch(
            "istiod",
            &PatchParams::default(),
            &Patch::Strategic(&hotfix),
        )
        .await?;
    // A spec change is not applied either (and observedGeneration says so).
    patch(json!({"spec": {"values": {"pilot": {"env": {"PAUSED_TEST": "1"}}}}})).await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        image(&deployments.get("istiod").await?),
        "example.invalid/pilot:hotfix"
    );
    let ii = installs(&admin).get("mesh").await?;
    assert_ne!(
        ii.data["status"]["observedGeneration"],
        json!(ii.metadata.generation)
    );

    // Resumed: the install is made whole again.
    patch(json!({"metadata": {"annotations": {"istioinstall.io/paused": null}}})).await?;
    wait_install(&admin, "mesh", "Ready again", |ii| {
        is_ready_at(ii, "1.24.6") && condition(ii, "Paused").is_none()
    })
    .await?;
    eventually(Duration::from_secs(30), "the image is restored", || async {
        Ok(image(&deployments.get("istiod").await?).contains("istio/pilot:1.24.6"))
    })
    .await?;

    // One object marked to be left alone: the rest of the install is still reconciled.
    let ignore = json!({"metadata": {"annotations": {"istioinstall.io/ignore": "true"}}});
    deployments
        .patch("istiod", &PatchParams::default(), &Patch::Merge(&ignore))
        .await?;
    deployments
        .patch(
            "istiod",
            &PatchParams::default(),
            &Patch::Strategic(&hotfix),
        )
        .await?;
    patch(json!({"spec": {"values": {"pilot": {"env": {"IGNORED_TEST": "1"}}}}})).await?;
    wait_install(&admin, "mesh", "Ready with istiod left alone", |ii| {
        is_ready_at(ii, "1.24.6")
    })
    .await?;
    assert_eq!(
        image(&deployments.get("istiod").await?),
        "example.invalid/pilot:hotfix"
    );

    // Uninstall leaves the object marked to be left alone, released from the install (no owner
    // reference, so the garbage collector keeps it too).
    remove_all_installs(&admin).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let kept = deployments.get("istiod").await?;
    assert!(
        kept.metadata
            .owner_references
            .unwrap_or_default()
            .is_empty()
    );
    deployments
        .delete("istiod", &DeleteParams::default())
        .await?;
    drop(op);
    Ok(())
}

/// What an admin would see with `kubectl auth can-i VERB RESOURCE --as USER`.
async fn can_i(
    admin: &Client,
    user: &str,
    verb: &str,
    group: &str,
    resource: &str,
) -> Result<bool> {
    let review = json!({
        "apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
        "spec": {"user": user, "groups": ["system:serviceaccounts", "system:authenticated"],
                 "resourceAttributes": {"verb": verb, "group": group, "resource": resource}},
    });
    let ar = ApiResource {
        group: "authorization.k8s.io".into(),
        version: "v1".into(),
        api_version: "authorization.k8s.io/v1".into(),
        kind: "SubjectAccessReview".into(),
        plural: "subjectaccessreviews".into(),
    };
    let api: Api<DynamicObject> = Api::all_with(admin.clone(), &ar);
    let answer = api
        .create(&PostParams::default(), &serde_json::from_value(review)?)
        .await?;
    Ok(answer.data["status"]["allowed"] == true)
}

fn stalled_message(ii: &DynamicObject) -> Option<String> {
    condition(ii, "Stalled")
        .filter(|c| c["status"] == "True")
        .filter(|_| ii.data["status"]["observedGeneration"] == ii.metadata.generation.unwrap_or(-1))
        .and_then(|c| c["message"].as_str().map(String::from))
}

/// Issue 9 (a): overlays and values cannot make the operator grant more than an Istio install,
/// nor write outside the install's namespaces; each refusal is Stalled naming what and where.
#[tokio::test]
async fn a_hostile_spec_cannot_grant_more_or_write_elsewhere() -> Result<()> {
    let Scenario { admin, op, _serial } = Scenario::begin().await?;
    let istiod = "system:serviceaccount:istio-system:istiod";
    let overlay = |kind: &str, name: &str, path: &str, value: Value| {
        json!({"version": "1.24", "profile": "minimal", "components": {"pilot": {"k8s": {"overlays": [
            {"kind": kind, "name": name, "patches": [{"path": path, "value": value}]}]}}}})
    };
    let cases = [
        (
            "rebind",
            overlay(
                "ClusterRoleBinding",
                "istiod-clusterrole-istio-system",
                "roleRef.name",
                json!("cluster-admin"),
            ),
            vec![
                "spec.components.pilot",
                "overlays[ClusterRoleBinding istiod-clusterrole-istio-system]",
                "cannot be patched by overlays",
            ],
        ),
        (
            "kind",
            overlay("Deployment", "istiod", "kind", json!("DaemonSet")),
            vec![
                "spec.components.pilot",
                "overlays[Deployment istiod]",
                "kind cannot be changed",
            ],
        ),
        (
            "move",
            overlay(
                "ConfigMap",
                "istio",
                "metadata.namespace",
                json!("kube-system"),
            ),
            vec![
                "spec.components.pilot",
                "overlays[ConfigMap istio]",
                "metadata.namespace cannot be changed",
            ],
        ),
        (
            "inject",
            json!({"version": "1.24", "profile": "ambient", "values": {"cni": {"logging": {"level":
                "info\n---\napiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata: {name: pwned}\nroleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: cluster-admin}\nsubjects: [{kind: ServiceAccount, name: istiod, namespace: istio-system}]\n"}}}}),
            vec!["spec.values.cni.logging.level", "expected log levels"],
        ),
    ];
    for (name, spec, words) in cases {
        apply_install(&admin, name, spec).await?;
        let ii = wait_install(&admin, name, "Stalled by the boundary", |ii| {
            stalled_message(ii).is_some()
        })
        .await?;
        let message = stalled_message(&ii).unwrap_or_default();
        for w in words {
            assert!(message.contains(w), "{name}: {w:?} not in {message:?}");
        }
        assert!(
            !can_i(&admin, istiod, "*", "*", "*").await?,
            "{name}: istiod's ServiceAccount must not be cluster-admin"
        );
        let crbs: Api<k8s_openapi::api::rbac::v1::ClusterRoleBinding> = Api::all(admin.clone());
        assert!(crbs.get_opt("pwned").await?.is_none(), "{name}");
        let kube_system: Api<k8s_openapi::api::core::v1::ConfigMap> =
            Api::namespaced(admin.clone(), "kube-system");
        assert!(kube_system.get_opt("istio").await?.is_none(), "{name}");
        installs(&admin)
            .delete(name, &DeleteParams::default())
            .await?;
        remove_all_installs(&admin).await?;
    }
    drop(op);
    Ok(())
}

/// Issue 9 (b) and (c): uninstall deletes only what the install owns (by UID), and an existing
/// object no Istio install made is never taken over.
#[tokio::test]
async fn uninstall_and_adoption_never_touch_what_is_not_ours() -> Result<()> {
    let Scenario { admin, op, _serial } = Scenario::begin().await?;
    // A user's ConfigMap wearing our labels (copied from one of ours), with no owner reference.
    let user_cm = json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "users-own", "namespace": "istio-system", "labels": {
            "app.kubernetes.io/managed-by": "istio-install-operator", "istioinstall.io/install": "mesh"}},
        "data": {"mine": "yes"}});
    admin_namespace(&admin, "istio-system").await?;
    istio_install_e2e::apply_manifest(&admin, &user_cm, None, "e2e-test").await?;
    // A Service of a user's in the namespace a gateway will be put in, with the gateway's name.
    admin_namespace(&admin, "edge-ns").await?;
    let user_svc = json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "edge", "namespace": "edge-ns", "labels": {"app": "users-own"}},
        "spec": {"ports": [{"port": 80}]}});
    istio_install_e2e::apply_manifest(&admin, &user_svc, None, "e2e-test").await?;
    let services: Api<k8s_openapi::api::core::v1::Service> =
        Api::namespaced(admin.clone(), "edge-ns");
    let before = services.get("edge").await?.metadata.resource_version;

    apply_install(
        &admin,
        "mesh",
        json!({"version": "1.24", "profile": "minimal",
        "components": {"ingressGateways": [{"name": "edge", "namespace": "edge-ns"}]}}),
    )
    .await?;
    let ii = wait_install(&admin, "mesh", "Stalled on the user's Service", |ii| {
        stalled_message(ii).is_some()
    })
    .await?;
    let message = stalled_message(&ii).unwrap_or_default();
    assert!(
        message.contains("Service edge-ns/edge")
            && message.contains("not created by an Istio install")
            && message.contains("istioinstall.io/adopt"),
        "{message}"
    );
    assert_eq!(
        services.get("edge").await?.metadata.resource_version,
        before,
        "left untouched"
    );

    // Without the gateway the install becomes Ready; uninstall keeps the user's ConfigMap.
    apply_install(
        &admin,
        "mesh",
        json!({"version": "1.24", "profile": "minimal"}),
    )
    .await?;
    wait_install(&admin, "mesh", "Ready", |ii| is_ready_at(ii, "1.24.6")).await?;
    remove_all_installs(&admin).await?;
    let configmaps: Api<k8s_openapi::api::core::v1::ConfigMap> =
        Api::namespaced(admin.clone(), "istio-system");
    assert!(
        configmaps.get_opt("users-own").await?.is_some(),
        "the user's ConfigMap survives"
    );
    assert!(configmaps.get_opt("istio").await?.is_none(), "ours is gone");
    assert_eq!(
        services.get("edge").await?.metadata.resource_version,
        before
    );
    configmaps
        .delete("users-own", &DeleteParams::default())
        .await?;
    services.delete("edge", &DeleteParams::default()).await?;
    drop(op);
    Ok(())
}

/// Issue 9 (d): an install whose spec became invalid keeps its claims; the contested install
/// does not adopt its istiod, and deleting that one leaves the istiod in place.
#[tokio::test]
async fn an_invalid_install_keeps_its_claims() -> Result<()> {
    let Scenario { admin, op, _serial } = Scenario::begin().await?;
    apply_install(
        &admin,
        "first",
        json!({"version": "1.24", "profile": "minimal"}),
    )
    .await?;
    wait_install(&admin, "first", "Ready", |ii| is_ready_at(ii, "1.24.6")).await?;
    let first_uid = installs(&admin).get("first").await?.metadata.uid;
    tokio::time::sleep(Duration::from_secs(1)).await;
    apply_install(
        &admin,
        "second",
        json!({"version": "1.24", "profile": "minimal"}),
    )
    .await?;
    wait_install(&admin, "second", "Stalled by the conflict", |ii| {
        stalled_message(ii).is_some()
    })
    .await?;

    // The first install's spec becomes invalid: it stalls, and keeps what it holds.
    apply_install(
        &admin,
        "first",
        json!({"version": "1.99", "profile": "minimal"}),
    )
    .await?;
    wait_install(&admin, "first", "Stalled", |ii| {
        stalled_message(ii).is_some()
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(8)).await;
    let deployments: Api<Deployment> = Api::namespaced(admin.clone(), "istio-system");
    let owner = |d: &Deployment| {
        d.metadata
            .owner_references
            .clone()
            .unwrap_or_default()
            .first()
            .map(|r| r.uid.clone())
    };
    let istiod = deployments.get("istiod").await?;
    assert_eq!(
        owner(&istiod),
        first_uid,
        "istiod still belongs to the first install"
    );
    let second = installs(&admin).get("second").await?;
    let message = stalled_message(&second).unwrap_or_default();
    assert!(message.contains("first"), "{message}");

    // Deleting the second install does not remove the first one's istiod.
    installs(&admin)
        .delete("second", &DeleteParams::default())
        .await?;
    eventually(INSTALL_TIMEOUT, "the second install is gone", || async {
        Ok(installs(&admin).get_opt("second").await?.is_none())
    })
    .await?;
    let istiod = deployments.get("istiod").await?;
    assert_eq!(owner(&istiod), first_uid);

    remove_all_installs(&admin).await?;
    drop(op);
    Ok(())
}

/// Issue 9, item 3: the operator's ClusterRole has no `escalate` or `bind`, yet it can create
/// every role and binding of every bundle, because it holds every permission in them. The API
/// server's escalation check is the judge: this creates them as the operator's ServiceAccount.
#[tokio::test]
async fn the_operator_can_grant_every_bundles_rbac_and_nothing_more() -> Result<()> {
    let Scenario { admin, op, _serial } = Scenario::begin().await?;
    drop(op);
    let sa =
        ServiceAccountAccess::create(&admin, "istio-install-operator", "istio-install-operator")
            .await?;
    let operator = sa.client().await?;
    admin_namespace(&admin, "istio-system").await?;
    let features = [
        "",
        "global.istiod.enableAnalysis=true,pilot.taint.enabled=true",
        "cni.repair.enabled=true,cni.repair.repairPods=false,cni.repair.deletePods=true",
        "global.platform=openshift",
    ];
    let mut created: Vec<(ApiResource, Option<String>, String)> = Vec::new();
    let mut checked = 0;
    for version in ["1.23.0", "1.23.6", "1.24.0", "1.24.6"] {
        for profile in ["default", "demo", "minimal", "ambient", "stable", "remote"] {
            for set in features {
                let mut args = vec![
                    "render",
                    "--version",
                    version,
                    "--profile",
                    profile,
                    "-o",
                    "json",
                    "--set",
                    "components.cni.enabled=true",
                ];
                let sets: Vec<String> = set
                    .split(',')
                    .filter(|s| !s.is_empty())
                    .map(String::from)
                    .collect();
                for s in &sets {
                    args.push("--set");
                    args.push(s);
                }
                // A release without that profile or platform refuses the case; that is fine.
                let Ok((out, _)) = cli(&args).await else {
                    continue;
                };
                let list: Value = serde_json::from_str(&out)?;
                let mut items: Vec<&Value> = list["items"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|o| {
                        matches!(
                            o["kind"].as_str(),
                            Some("Role" | "ClusterRole" | "RoleBinding" | "ClusterRoleBinding")
                        )
                    })
                    .collect();
                // Roles before the bindings that refer to them.
                items.sort_by_key(|o| o["kind"].as_str().unwrap_or_default().ends_with("Binding"));
                for o in items {
                    let kind = o["kind"].as_str().unwrap_or_default();
                    let ar = ApiResource {
                        group: "rbac.authorization.k8s.io".into(),
                        version: "v1".into(),
                        api_version: "rbac.authorization.k8s.io/v1".into(),
                        kind: kind.into(),
                        plural: format!("{}s", kind.to_lowercase()),
                    };
                    let ns = o["metadata"]["namespace"].as_str().map(String::from);
                    let name = o["metadata"]["name"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string();
                    let api: Api<DynamicObject> = match &ns {
                        Some(ns) => Api::namespaced_with(operator.clone(), ns, &ar),
                        None => Api::all_with(operator.clone(), &ar),
                    };
                    api.patch(
                        &name,
                        &PatchParams::apply("e2e-rbac").force(),
                        &Patch::Apply(o),
                    )
                    .await
                    .with_context(|| {
                        format!(
                            "{version} {profile} [{set}]: the operator may not create {kind} {name}"
                        )
                    })?;
                    checked += 1;
                    if !created
                        .iter()
                        .any(|(a, n, m)| a.kind == ar.kind && *n == ns && *m == name)
                    {
                        created.push((ar, ns, name));
                    }
                }
            }
        }
    }
    assert!(checked > 100, "only {checked} RBAC objects checked");

    // And nothing beyond: binding cluster-admin, or a role with a permission no chart has, is
    // refused by the API server's escalation check.
    let crbs: Api<k8s_openapi::api::rbac::v1::ClusterRoleBinding> = Api::all(operator.clone());
    let admin_binding = serde_json::from_value(json!({"metadata": {"name": "e2e-escalation"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
        "subjects": [{"kind": "ServiceAccount", "name": "default", "namespace": "default"}]}))?;
    let err = crbs
        .create(&PostParams::default(), &admin_binding)
        .await
        .unwrap_err();
    assert!(format!("{err}").contains("forbidden"), "{err}");
    let crs: Api<k8s_openapi::api::rbac::v1::ClusterRole> = Api::all(operator.clone());
    let wide = serde_json::from_value(json!({"metadata": {"name": "e2e-escalation"},
        "rules": [{"apiGroups": [""], "resources": ["pods/exec", "serviceaccounts/token"], "verbs": ["create"]}]}))?;
    let err = crs.create(&PostParams::default(), &wide).await.unwrap_err();
    assert!(format!("{err}").contains("forbidden"), "{err}");

    for (ar, ns, name) in created.iter().rev() {
        let api: Api<DynamicObject> = match ns {
            Some(ns) => Api::namespaced_with(admin.clone(), ns, ar),
            None => Api::all_with(admin.clone(), ar),
        };
        let _ = api.delete(name, &DeleteParams::default()).await;
    }
    Ok(())
}

/// Issue 13 (a): an overlay that puts a value where a map is expected (`metadata`) used to
/// panic in the planner and take the whole operator down with every install. It is refused
/// naming the patch; the same process keeps healing another install.
#[tokio::test]
async fn a_broken_overlay_stalls_its_install_and_nothing_else() -> Result<()> {
    let Scenario {
        admin,
        mut op,
        _serial,
    } = Scenario::begin().await?;
    let pid = op.child.id();
    apply_install(
        &admin,
        "healthy",
        json!({"version": "1.24", "profile": "minimal"}),
    )
    .await?;
    wait_install(&admin, "healthy", "Ready", |ii| is_ready_at(ii, "1.24.6")).await?;
    apply_install(&admin, "broken", json!({"version": "1.24", "profile": "minimal", "revision": "b",
        "components": {"base": {"enabled": false}, "pilot": {"k8s": {"overlays": [
            {"kind": "Deployment", "name": "istiod-b", "patches": [{"path": "metadata", "value": "oops"}]}]}}}})).await?;
    let ii = wait_install(&admin, "broken", "Stalled", |ii| {
        stalled_message(ii).is_some()
    })
    .await?;
    let message = stalled_message(&ii).unwrap_or_default();
    assert!(
        message.contains("overlays[Deployment istiod-b].patches[0] (path \"metadata\")"),
        "{message}"
    );

    // The other install still heals.
    let configmaps: Api<k8s_openapi::api::core::v1::ConfigMap> =
        Api::namespaced(admin.clone(), "istio-system");
    let old = configmaps.get("istio").await?.metadata.uid;
    configmaps.delete("istio", &DeleteParams::default()).await?;
    eventually(
        Duration::from_secs(60),
        "the mesh ConfigMap is restored",
        || async {
            Ok(configmaps
                .get_opt("istio")
                .await?
                .is_some_and(|c| c.metadata.uid != old))
        },
    )
    .await?;
    assert!(
        op.child.try_wait()?.is_none(),
        "the operator is still running"
    );
    assert_eq!(op.child.id(), pid, "the same process");

    remove_all_installs(&admin).await?;
    drop(op);
    Ok(())
}

/// Issue 13 (c): an istiod that cannot roll out (no node matches its nodeSelector, with a short
/// progress deadline) stalls the install naming pilot and the rollout's own message; the
/// components after it are not touched; fixing the spec recovers.
#[tokio::test]
async fn a_rollout_past_its_deadline_stalls_and_later_components_wait() -> Result<()> {
    let Scenario { admin, op, _serial } = Scenario::begin().await?;
    let base = json!({"version": "1.24", "profile": "ambient",
        "components": {"pilot": {"k8s": {"overlays": [{"kind": "Deployment", "name": "istiod",
            "patches": [{"path": "spec.progressDeadlineSeconds", "value": 10}]}]}}}});
    apply_install(&admin, "mesh", base.clone()).await?;
    wait_install(&admin, "mesh", "Ready", |ii| is_ready_at(ii, "1.24.6")).await?;
    let daemonsets: Api<DaemonSet> = Api::namespaced(admin.clone(), "istio-system");
    let ztunnel_generation = daemonsets.get("ztunnel").await?.metadata.generation;

    // istiod can no longer be scheduled, and ztunnel is changed in the same edit.
    let mut broken = base.clone();
    broken["components"]["pilot"]["k8s"]["nodeSelector"] = json!({"e2e.example/none": "nowhere"});
    broken["components"]["ztunnel"] = json!({"k8s": {"env": [{"name": "E2E_MARK", "value": "1"}]}});
    apply_install(&admin, "mesh", broken).await?;
    let ii = wait_install(&admin, "mesh", "Stalled on istiod's rollout", |ii| {
        stalled_message(ii)
            .is_some_and(|m| m.contains("RolloutFailed") || m.contains("cannot roll out"))
    })
    .await?;
    let message = stalled_message(&ii).unwrap_or_default();
    assert!(
        message.contains("component pilot") && message.contains("timed out progressing"),
        "{message}"
    );
    assert_eq!(
        condition(&ii, "Stalled").unwrap()["reason"],
        "RolloutFailed",
        "{message}"
    );
    assert_eq!(
        daemonsets.get("ztunnel").await?.metadata.generation,
        ztunnel_generation,
        "ztunnel is not touched while istiod cannot roll out"
    );

    // Fixed: istiod rolls out, then ztunnel gets its change.
    let mut fixed = base.clone();
    fixed["components"]["ztunnel"] = json!({"k8s": {"env": [{"name": "E2E_MARK", "value": "1"}]}});
    apply_install(&admin, "mesh", fixed).await?;
    wait_install(&admin, "mesh", "Ready again", |ii| {
        is_ready_at(ii, "1.24.6")
    })
    .await?;
    assert_ne!(
        daemonsets.get("ztunnel").await?.metadata.generation,
        ztunnel_generation
    );

    remove_all_installs(&admin).await?;
    drop(op);
    Ok(())
}

/// Refuses the operator's writes to one DaemonSet in istio-system with a
/// ValidatingAdmissionPolicy (built into the API server; no webhook): an error injected into
/// one step of the plan, lifted when the test says so.
struct RefusedWrites {
    admin: Client,
    name: String,
    workload: String,
}

impl RefusedWrites {
    const OPERATOR: &str = "system:serviceaccount:istio-install-operator:istio-install-operator";

    const PREFIX: &str = "e2e-refuse-";

    async fn start(admin: &Client, workload: &str) -> Result<RefusedWrites> {
        let name = istio_install_e2e::unique_name(&format!("{}{workload}", Self::PREFIX));
        let policy = json!({
            "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicy",
            "metadata": {"name": name},
            "spec": {"failurePolicy": "Fail",
                "matchConstraints": {"resourceRules": [{"apiGroups": ["apps"], "apiVersions": ["v1"],
                    "operations": ["CREATE", "UPDATE"], "resources": ["daemonsets"]}]},
                "matchConditions": [{"name": "operator",
                    "expression": format!("request.userInfo.username == '{}'", Self::OPERATOR)}],
                "validations": [{"expression": format!("object.metadata.name != '{workload}'"),
                    "message": format!("e2e: writes to {workload} are refused for now")}]}});
        let binding = json!({
            "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicyBinding",
            "metadata": {"name": name},
            "spec": {"policyName": name, "validationActions": ["Deny"]}});
        for doc in [policy, binding] {
            istio_install_e2e::apply_manifest(admin, &doc, None, "e2e-test").await?;
        }
        let this = RefusedWrites {
            admin: admin.clone(),
            name,
            workload: workload.to_string(),
        };
        this.wait_until(true).await?;
        Ok(this)
    }

    /// The API server loads policies asynchronously: a dry-run write as the operator tells
    /// when the refusal is (or is no longer) in force.
    async fn wait_until(&self, refused: bool) -> Result<()> {
        let op = ServiceAccountAccess::create(
            &self.admin,
            "istio-install-operator",
            "istio-install-operator",
        )
        .await?
        .client()
        .await?;
        let daemonsets: Api<DaemonSet> = Api::namespaced(op, "istio-system");
        let probe = json!({"metadata": {"labels": {"e2e.istioinstall.io/probe": "1"}}});
        let pp = PatchParams {
            dry_run: true,
            ..PatchParams::default()
        };
        eventually(
            Duration::from_secs(60),
            &format!("writes to {} refused: {refused}", self.workload),
            || async {
                Ok(
                    match daemonsets
                        .patch(&self.workload, &pp, &Patch::Merge(&probe))
                        .await
                    {
                        Ok(_) => !refused,
                        Err(kube::Error::Api(s)) if s.message.contains(&self.name) => refused,
                        Err(e) => return Err(e.into()),
                    },
                )
            },
        )
        .await
    }

    async fn lift(self) -> Result<()> {
        for api in Self::apis(&self.admin) {
            api.delete(&self.name, &DeleteParams::default()).await?;
        }
        self.wait_until(false).await
    }

    fn apis(admin: &Client) -> [Api<DynamicObject>; 2] {
        [
            "validatingadmissionpolicybindings",
            "validatingadmissionpolicies",
        ]
        .map(|plural| {
            let ar = ApiResource {
                group: "admissionregistration.k8s.io".into(),
                version: "v1".into(),
                api_version: "admissionregistration.k8s.io/v1".into(),
                kind: String::new(),
                plural: plural.into(),
            };
            Api::all_with(admin.clone(), &ar)
        })
    }

    /// Refusals a failed run left behind (a failing test does not lift its own).
    async fn lift_leftovers(admin: &Client) -> Result<()> {
        for api in Self::apis(admin) {
            for o in api.list_metadata(&ListParams::default()).await? {
                let name = o.metadata.name.unwrap_or_default();
                if name.starts_with(Self::PREFIX) {
                    api.delete(&name, &DeleteParams::default()).await?;
                }
            }
        }
        Ok(())
    }
}

/// The components' versions in the status, by name.
fn component_versions(ii: &DynamicObject) -> std::collections::BTreeMap<String, String> {
    ii.data["status"]["components"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            (
                c["name"].as_str().unwrap_or_default().to_string(),
                c["version"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

/// Issue 13 (d): an upgrade 1.23 → 1.24 stops half-way (writes to ztunnel refused: istiod and
/// istio-cni run 1.24), then is rolled back to 1.23, and mid-way through the rollback a step
/// fails (writes to istio-cni refused). The status keeps what each component really runs, so
/// once the error is gone the rollback goes on in rollback order: istio-cni, then istiod.
/// (Had the failure dropped istiod's version from the status, the next reconcile would read
/// the install as steady at 1.23.6 and roll istiod back first.)
#[tokio::test]
async fn an_error_mid_way_through_a_rollback_keeps_the_rollback_order() -> Result<()> {
    let Scenario { admin, op, _serial } = Scenario::begin().await?;
    RefusedWrites::lift_leftovers(&admin).await?;
    let (rollouts, watch) = record_rollouts(&admin);
    let name = "rollback";
    apply_install(
        &admin,
        name,
        json!({"version": "1.23.6", "profile": "ambient"}),
    )
    .await?;
    wait_ready_at(&admin, name, "1.23.6").await?;

    // Half an upgrade: istiod and istio-cni move to 1.24.6, ztunnel cannot.
    let ztunnel = RefusedWrites::start(&admin, "ztunnel").await?;
    apply_install(
        &admin,
        name,
        json!({"version": "1.24.6", "profile": "ambient"}),
    )
    .await?;
    let ii = wait_install(&admin, name, "stalled on ztunnel", |ii| {
        stalled_message(ii).is_some_and(|m| m.contains("component ztunnel"))
    })
    .await?;
    // Checked at the end, after the order (what a lost version would break).
    let half_way = component_versions(&ii);

    // Rolled back, and istio-cni, the second step of the rollback, fails. The refusal of
    // ztunnel stays until then: lifted before the operator has read the rollback, a retry
    // of the stalled step (any event on an owned object) could finish the upgrade first.
    let cni = RefusedWrites::start(&admin, "istio-cni-node").await?;
    apply_install(
        &admin,
        name,
        json!({"version": "1.23.6", "profile": "ambient"}),
    )
    .await?;
    let ii = wait_install(&admin, name, "stalled on istio-cni", |ii| {
        stalled_message(ii).is_some_and(|m| m.contains("component cni"))
    })
    .await?;
    let mid_rollback = component_versions(&ii);
    ztunnel.lift().await?;
    cni.lift().await?;
    wait_install(&admin, name, "Ready at 1.23.6 again", |ii| {
        is_ready_at(ii, "1.23.6")
    })
    .await?;

    let upgraded_at = rollouts
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, _, image)| image.contains(":1.24.6"))
        .map(|(rv, _, _)| *rv)
        .max()
        .unwrap_or(0);
    let after: Rollouts = std::sync::Arc::new(std::sync::Mutex::new(
        rollouts
            .lock()
            .unwrap()
            .iter()
            .filter(|(rv, _, _)| *rv > upgraded_at)
            .cloned()
            .collect(),
    ));
    assert_eq!(
        rollout_order(&after, "1.23.6"),
        ["istio-cni-node", "istiod"],
        "the rollback order (ztunnel never left 1.23.6)"
    );
    assert!(
        !rollout_order(&rollouts, "1.24.6").contains(&"ztunnel".to_string()),
        "ztunnel never ran 1.24.6"
    );
    // Each workload's version in the status is what it runs: a failed step dropped none.
    let workloads = |mut v: std::collections::BTreeMap<String, String>| {
        v.retain(|k, _| ["cni", "pilot", "ztunnel"].contains(&k.as_str()));
        v
    };
    let expected = |pilot: &str, cni: &str, ztunnel: &str| {
        [("cni", cni), ("pilot", pilot), ("ztunnel", ztunnel)]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<std::collections::BTreeMap<_, _>>()
    };
    assert_eq!(
        workloads(half_way),
        expected("1.24.6", "1.24.6", "1.23.6"),
        "the status half-way through the upgrade"
    );
    assert_eq!(
        workloads(mid_rollback),
        expected("1.24.6", "1.24.6", "1.23.6"),
        "the status when the rollback's istio-cni step failed"
    );

    watch.abort();
    remove_all_installs(&admin).await?;
    drop(op);
    Ok(())
}
