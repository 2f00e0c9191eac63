//! Leader election and API server faults, end to end: real `istio-install-operator run`
//! processes (two replicas, one paused with SIGSTOP), an API server cut off behind a TCP proxy,
//! API Priority and Fairness rejecting the operator's requests with 429, and a Lease namespace
//! that does not exist yet.
//!
//! Like `operator.rs`, these scenarios own cluster-wide components, so they run one at a time
//! (a lock; test binaries themselves run one after the other) and leave no IstioInstall behind.

use anyhow::{Context as _, Result, anyhow, bail};
use futures::{StreamExt, TryStreamExt};
use istio_install_e2e::operator::{
    OPERATOR_NS, Operator, apply_install, condition, installs, prepare, remove_all_installs,
    wait_install,
};
use istio_install_e2e::{
    TcpProxy, apply_file, client, eventually, kubeconfig_path, repo_path, unique_name,
    wait_deployment_rolled_out,
};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::Client;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams,
};
use kube::runtime::WatchStreamExt;
use serde_json::json;
use std::path::Path;
use std::time::Duration;

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const WRITES: &str = "istio_install_operator_api_write_requests_total";

/// Ready, and the status is about `generation`.
fn ready_at(ii: &DynamicObject, generation: i64) -> bool {
    condition(ii, "Ready").is_some_and(|c| c["status"] == "True")
        && ii.data["status"]["observedGeneration"] == generation
}

/// No IstioInstall left from an earlier (failed) run: an operator of its own uninstalls them.
async fn clean_slate(admin: &Client, kubeconfig: &Path) -> Result<()> {
    let op = Operator::spawn(kubeconfig, &["--leader-elect=false"]).await?;
    remove_all_installs(admin).await.with_context(|| op.log())
}

/// The mesh config the operator rendered into the `istio` ConfigMap.
async fn mesh_config(c: &Client) -> Result<String> {
    let cms: Api<ConfigMap> = Api::namespaced(c.clone(), "istio-system");
    Ok(cms
        .get("istio")
        .await?
        .data
        .and_then(|d| d.get("mesh").cloned())
        .unwrap_or_default())
}

/// (b) The leader is paused (SIGSTOP) for 25 s while the spec changes. The follower takes over
/// once the lease has expired by its own clock and converges the install; the paused leader,
/// continued, sends no write (its fence closed before its lease could expire), steps down and
/// stays up and ready as a follower. Readiness does not depend on leadership: both replicas are
/// ready throughout, which is what lets a rolling update of the operator's Deployment proceed.
#[tokio::test]
async fn a_paused_leader_is_fenced_and_the_other_replica_converges() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let admin = client().await?;
    let kubeconfig = prepare(&admin).await?;
    clean_slate(&admin, &kubeconfig).await?;
    let lease = unique_name("e2e-leader");
    let args = [
        "--leader-elect=true",
        "--lease-name",
        &lease,
        "--lease-namespace",
        OPERATOR_NS,
    ];
    let a = Operator::spawn(&kubeconfig, &args).await?;
    eventually(Duration::from_secs(60), "replica a leads", || async {
        Ok(a.leads().await)
    })
    .await?;
    let b = Operator::spawn(&kubeconfig, &args).await?;
    eventually(
        Duration::from_secs(60),
        "replica b, a follower, is ready",
        || async { Ok(b.ready().await) },
    )
    .await?;
    assert!(!b.leads().await, "one leader");
    assert!(a.ready().await, "the leader is ready");

    let generation = apply_install(
        &admin,
        "fenced",
        json!({"version": "1.24", "profile": "minimal"}),
    )
    .await?;
    wait_install(&admin, "fenced", "Ready", |ii| ready_at(ii, generation)).await?;
    // The leader's last writes for the install are done once its writes stop moving.
    let mut before = a.metric(WRITES).await?;
    loop {
        tokio::time::sleep(Duration::from_secs(3)).await;
        let now = a.metric(WRITES).await?;
        if now == before {
            break;
        }
        before = now;
    }
    assert!(before > 0.0, "the leader installed it");

    a.signal("STOP").await?;
    let changed = apply_install(
        &admin,
        "fenced",
        json!({"version": "1.24", "profile": "minimal", "meshConfig": {"accessLogFile": "/dev/stdout"}}),
    )
    .await?;
    tokio::time::sleep(Duration::from_secs(25)).await;
    a.signal("CONT").await?;

    wait_install(&admin, "fenced", "Ready with the change", |ii| {
        ready_at(ii, changed)
    })
    .await?;
    assert!(
        mesh_config(&admin).await?.contains("/dev/stdout"),
        "the change is applied"
    );
    eventually(
        Duration::from_secs(30),
        "b leads and a has stepped down",
        || async { Ok(b.leads().await && !a.leads().await) },
    )
    .await?;
    // Give a's controller, continued, every chance to act on what it saw before the pause.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let after = a.metric(WRITES).await.with_context(|| a.log())?;
    assert_eq!(
        after,
        before,
        "the paused leader wrote after its lease had expired; log:\n{}",
        a.log()
    );
    assert!(
        a.ready().await && b.ready().await,
        "both replicas stay ready"
    );
    remove_all_installs(&admin).await?;
    Ok(())
}

/// The operator's own Deployment (manifests/deployment.yaml, 2 replicas) rolls out a new pod
/// template. On kwok pods never run, so the probes are not exercised here (kwok reports every
/// pod Ready): this shows the strategy and the manifests work on a real API server, and the test
/// above shows the part kwok cannot, that a standby replica's `/readyz` is 200.
#[tokio::test]
async fn the_operators_own_deployment_rolls_out_with_two_replicas() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let admin = client().await?;
    prepare(&admin).await?;
    apply_file(
        &admin,
        &repo_path("manifests/deployment.yaml"),
        None,
        "e2e-test",
    )
    .await?;
    let deployments: Api<Deployment> = Api::namespaced(admin.clone(), OPERATOR_NS);
    let scale = json!({"spec": {"replicas": 2}});
    deployments
        .patch(OPERATOR_NS, &PatchParams::default(), &Patch::Merge(&scale))
        .await?;
    wait_deployment_rolled_out(&deployments, OPERATOR_NS, Duration::from_secs(120)).await?;
    let d = deployments.get(OPERATOR_NS).await?;
    let spec = d.spec.clone().unwrap_or_default();
    let rolling = spec
        .strategy
        .and_then(|s| s.rolling_update)
        .ok_or_else(|| anyhow!("a RollingUpdate strategy"))?;
    assert_eq!(
        serde_json::to_value(&rolling.max_unavailable)?,
        json!(0),
        "never fewer ready replicas than asked for"
    );
    let container = &spec.template.spec.unwrap_or_default().containers[0];
    let probe = container
        .readiness_probe
        .as_ref()
        .and_then(|p| p.http_get.as_ref())
        .ok_or_else(|| anyhow!("a readiness probe"))?;
    assert_eq!(probe.path.as_deref(), Some("/readyz"));

    let roll = json!({"spec": {"template": {"metadata": {"annotations": {"e2e.istioinstall.io/rolled": unique_name("r")}}}}});
    deployments
        .patch(OPERATOR_NS, &PatchParams::default(), &Patch::Merge(&roll))
        .await?;
    wait_deployment_rolled_out(&deployments, OPERATOR_NS, Duration::from_secs(120)).await?;
    deployments
        .delete(OPERATOR_NS, &DeleteParams::foreground())
        .await?;
    Ok(())
}

/// (f) `run` with a Lease namespace that does not exist: an error naming it (and the fix) is
/// logged within seconds and `/readyz` says why; once the namespace exists, it leads and
/// converges an install. Runs with the admin kubeconfig, as a new user trying the README would.
#[tokio::test]
async fn a_missing_lease_namespace_is_named_and_the_operator_leads_once_it_exists() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let admin = client().await?;
    let kubeconfig = prepare(&admin).await?;
    clean_slate(&admin, &kubeconfig).await?;
    let ns = unique_name("e2e-lease");
    let op = Operator::spawn(
        &kubeconfig_path(),
        &["--leader-elect=true", "--lease-namespace", &ns],
    )
    .await?;
    let named = |log: &str| {
        log.lines()
            .any(|l| l.contains("ERROR") && l.contains(&ns) && l.contains("does not exist"))
    };
    eventually(
        Duration::from_secs(10),
        "an error naming the missing Lease namespace",
        || async { Ok(named(&op.log())) },
    )
    .await
    .with_context(|| op.log())?;
    let (code, body) = op.get("/readyz").await?;
    assert_eq!(code, 503, "{body}");
    assert!(
        body.contains(&ns) && body.contains("--lease-namespace"),
        "{body}"
    );

    let namespaces: Api<Namespace> = Api::all(admin.clone());
    let namespace: Namespace = serde_json::from_value(
        json!({"metadata": {"name": ns, "labels": {"e2e.istioinstall.io/test": "true"}}}),
    )?;
    namespaces
        .create(&PostParams::default(), &namespace)
        .await?;
    eventually(Duration::from_secs(60), "the operator leads", || async {
        Ok(op.leads().await && op.ready().await)
    })
    .await
    .with_context(|| op.log())?;
    let generation = apply_install(
        &admin,
        "lease-ns",
        json!({"version": "1.24", "profile": "minimal"}),
    )
    .await?;
    wait_install(&admin, "lease-ns", "Ready", |ii| ready_at(ii, generation)).await?;
    remove_all_installs(&admin).await?;
    namespaces.delete(&ns, &DeleteParams::default()).await?;
    Ok(())
}

/// (e) The API server is cut off from the operator for 30 s (a paused TCP proxy) while the spec
/// changes and an owned object is deleted; then API Priority and Fairness rejects the operator's
/// requests on Deployments with 429 while the spec changes again. `Reconciling` says why the
/// install waits, and once the API server answers again everything converges: no change lost.
#[tokio::test]
async fn api_server_faults_lose_nothing_and_status_says_why() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let admin = client().await?;
    let kubeconfig = prepare(&admin).await?;
    clean_slate(&admin, &kubeconfig).await?;
    let proxy = TcpProxy::start().await?;
    let via_proxy = proxy.kubeconfig(&kubeconfig)?;
    let op = Operator::spawn(&via_proxy, &["--leader-elect=false"]).await?;
    eventually(Duration::from_secs(60), "the operator is ready", || async {
        Ok(op.ready().await)
    })
    .await
    .with_context(|| op.log())?;
    let spec = json!({"version": "1.24", "profile": "minimal"});
    let generation = apply_install(&admin, "faults", spec).await?;
    wait_install(&admin, "faults", "Ready", |ii| ready_at(ii, generation)).await?;

    // Unreachable for 30 s: a spec change and a deleted object meanwhile.
    proxy.set_open(false);
    let changed = apply_install(
        &admin,
        "faults",
        json!({"version": "1.24", "profile": "minimal", "meshConfig": {"accessLogFile": "/dev/stdout"}}),
    )
    .await?;
    let services: Api<k8s_openapi::api::core::v1::Service> =
        Api::namespaced(admin.clone(), "istio-system");
    services.delete("istiod", &DeleteParams::default()).await?;
    tokio::time::sleep(Duration::from_secs(30)).await;
    proxy.set_open(true);
    wait_install(&admin, "faults", "Ready after the outage", |ii| {
        ready_at(ii, changed)
    })
    .await
    .with_context(|| op.log())?;
    assert!(mesh_config(&admin).await?.contains("/dev/stdout"));
    eventually(
        Duration::from_secs(60),
        "the deleted Service is back",
        || async { Ok(services.get_opt("istiod").await?.is_some()) },
    )
    .await?;

    // 429s from API Priority and Fairness: a priority level with no queue (`Reject`) for the
    // operator's requests on Deployments and DaemonSets. With `nominalConcurrencyShares: 0` it
    // still runs one request at a time (v1.34 admits a request whenever none executes), so
    // the test holds that one seat itself, with requests that take long by design: a LIST at
    // a resourceVersion the watch cache has not reached (`NotOlderThan`) blocks for the
    // cache's 3 s before it fails, and holds the seat all along. A few of them take turns, so
    // the seat is free only for the instant between two, however loaded the machine is; every
    // other request of the operator's on Deployments is rejected at once.
    let flow = unique_name("e2e-reject");
    let reject = [
        json!({"apiVersion": "flowcontrol.apiserver.k8s.io/v1", "kind": "PriorityLevelConfiguration",
               "metadata": {"name": flow},
               "spec": {"type": "Limited", "limited": {"nominalConcurrencyShares": 0, "lendablePercent": 0,
                        "borrowingLimitPercent": 0, "limitResponse": {"type": "Reject"}}}}),
        json!({"apiVersion": "flowcontrol.apiserver.k8s.io/v1", "kind": "FlowSchema",
               "metadata": {"name": flow},
               "spec": {"priorityLevelConfiguration": {"name": flow}, "matchingPrecedence": 1000,
                        "distinguisherMethod": {"type": "ByUser"},
                        "rules": [{"subjects": [{"kind": "ServiceAccount",
                                                 "serviceAccount": {"namespace": OPERATOR_NS, "name": OPERATOR_NS}}],
                                   "resourceRules": [{"verbs": ["*"], "apiGroups": ["apps"],
                                                      "resources": ["deployments", "daemonsets"],
                                                      "namespaces": ["*"], "clusterScope": true}]}]}}),
    ];
    let file = std::env::temp_dir().join(format!("e2e-{flow}.yaml"));
    let text: String = reject.iter().map(|d| format!("---\n{d}\n")).collect();
    std::fs::write(&file, text)?;
    apply_file(&admin, &file, None, "e2e-test").await?;
    let hog_client = {
        let kc = kube::config::Kubeconfig::read_from(&kubeconfig)?;
        let mut config =
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await?;
        config.default_retry = false;
        Client::try_from(config)?
    };
    let now: u64 = Api::<Deployment>::all(admin.clone())
        .list_metadata(&ListParams::default().limit(1))
        .await?
        .metadata
        .resource_version
        .and_then(|rv| rv.parse().ok())
        .ok_or_else(|| anyhow!("a list without a resourceVersion"))?;
    let future = (now + 1_000_000_000).to_string();
    let busy = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let hogs: Vec<_> = (0..4)
        .map(|_| {
            let (c, busy, rv) = (hog_client.clone(), busy.clone(), future.clone());
            tokio::spawn(async move {
                let api: Api<Deployment> = Api::all(c);
                let lp = ListParams::default()
                    .at(&rv)
                    .matching(kube::api::VersionMatch::NotOlderThan);
                while busy.load(std::sync::atomic::Ordering::Relaxed) {
                    // 504 after holding the seat for 3 s, or 429 at once while another holds
                    // it: then a short pause, so the waiting ones do not spin.
                    if let Err(kube::Error::Api(s)) = api.list_metadata(&lp).await
                        && s.code == 429
                    {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            })
        })
        .collect();
    let throttled = apply_install(
        &admin,
        "faults",
        json!({"version": "1.24", "profile": "minimal", "meshConfig": {"accessLogFile": "/dev/stdout"},
               "values": {"pilot": {"env": {"E2E_THROTTLED": "yes"}}}}),
    )
    .await?;
    // Within a bound (lasting faults are reported after 15 s, a rejected write at once), not
    // after the minutes kube's default retries would keep a 429 to themselves.
    // Watched, not polled: the message lasts only until a retry gets through.
    let says_429 = |ii: &DynamicObject| {
        condition(ii, "Reconciling").is_some_and(|c| {
            c["status"] == "True"
                && c["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("429") || m.contains("TooManyRequests"))
        })
    };
    let seen = async {
        let config = kube::runtime::watcher::Config::default().fields("metadata.name=faults");
        let mut events = kube::runtime::watcher(installs(&admin), config)
            .applied_objects()
            .boxed();
        while let Some(ii) = events.try_next().await? {
            if says_429(&ii) {
                return Ok(ii);
            }
        }
        bail!("the watch ended")
    };
    let said = tokio::time::timeout(Duration::from_secs(60), seen)
        .await
        .map_err(|_| anyhow!("within 60 s, Reconciling never said 429"))
        .and_then(|r| r)
        .with_context(|| op.log());
    busy.store(false, std::sync::atomic::Ordering::Relaxed);
    for task in hogs {
        let _ = task.await;
    }
    for plural in ["flowschemas", "prioritylevelconfigurations"] {
        let api: Api<DynamicObject> = Api::all_with(
            admin.clone(),
            &ApiResource {
                group: "flowcontrol.apiserver.k8s.io".into(),
                version: "v1".into(),
                api_version: "flowcontrol.apiserver.k8s.io/v1".into(),
                kind: String::new(),
                plural: plural.into(),
            },
        );
        api.delete(&flow, &DeleteParams::default()).await?;
    }
    let said = said?;
    println!(
        "Reconciling while throttled: {}",
        condition(&said, "Reconciling").cloned().unwrap_or_default()
    );
    wait_install(&admin, "faults", "Ready once no longer throttled", |ii| {
        ready_at(ii, throttled)
    })
    .await?;
    let deployments: Api<Deployment> = Api::namespaced(admin.clone(), "istio-system");
    let istiod = serde_json::to_string(&deployments.get("istiod").await?)?;
    assert!(
        istiod.contains("E2E_THROTTLED"),
        "the change reached istiod"
    );
    remove_all_installs(&admin).await?;
    drop(proxy);
    Ok(())
}
