//! Helpers for end-to-end tests against the local control plane started by `e2e/cluster.sh up`
//! (etcd, kube-apiserver with RBAC, kube-controller-manager, kube-scheduler, kwok fake nodes).
//!
//! * [`client`]: an admin [`Client`] from the harness kubeconfig ([`kubeconfig_path`]).
//! * [`TestNamespace`]: a namespace with a random suffix, deleted at the end of the test.
//! * [`wait_for`], [`wait_deployment_rolled_out`], [`wait_daemonset_rolled_out`],
//!   [`wait_condition`], [`wait_deleted`]: polling waits with a timeout and a useful error.
//! * [`ServiceAccountAccess::create`]: a ServiceAccount plus a kubeconfig (TokenRequest token)
//!   for a restricted client or a child process that must run under that account's RBAC.
//! * [`apply`], [`apply_file`], [`apply_crd_file`]: server-side apply of typed objects or YAML.
//! * [`api_error`], [`expect_api_error`]: the HTTP code and message of an API rejection.
//!
//! Every client built here refuses a kubeconfig whose server is not a loopback address, so a
//! stray `KUBECONFIG` can never point the tests at a real cluster.

pub mod istiod;
pub mod operator;
pub mod ztunnel;

use std::collections::hash_map::RandomState;
use std::fmt::Debug;
use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail, ensure};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Namespace, Node, ServiceAccount};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::core::{GroupVersionKind, Status};
use kube::discovery::Scope;
use kube::{Client, Config, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

/// Field manager used by the helpers when a test does not choose one.
pub const FIELD_MANAGER: &str = "istio-install-e2e";
/// Label put on every namespace made by [`TestNamespace`].
pub const TEST_NAMESPACE_LABEL: &str = "e2e.istioinstall.io/test";
/// A generous default for waits: rollouts on kwok take a few seconds, CI machines are slow.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);
const POLL: Duration = Duration::from_millis(250);

// ---------------------------------------------------------------------------------------------
// paths and clients

/// The repository root (the parent of this crate). `cargo test` sets CARGO_MANIFEST_DIR for the
/// test process too; that one wins, since a build reused from another checkout of the same
/// sources (one target directory shared by worktrees) carries that checkout's path.
pub fn repo_root() -> PathBuf {
    let manifest_dir = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    manifest_dir
        .parent()
        .expect("e2e crate lives inside the repository")
        .to_path_buf()
}

/// A path relative to the repository root, e.g. `repo_path("crds/istioinstall.io_istioinstalls.yaml")`.
pub fn repo_path(relative: impl AsRef<Path>) -> PathBuf {
    repo_root().join(relative)
}

/// `$E2E_ROOT`, default `/var/tmp/istio-install-operator-e2e` (as in the Makefile and cluster.sh).
pub fn e2e_root() -> PathBuf {
    std::env::var_os("E2E_ROOT")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp/istio-install-operator-e2e"))
}

/// The admin kubeconfig of the harness: `$E2E_KUBECONFIG`, else the first entry of `$KUBECONFIG`,
/// else `$E2E_ROOT/run/admin.kubeconfig` (written by `e2e/cluster.sh up`).
pub fn kubeconfig_path() -> PathBuf {
    if let Some(p) = std::env::var_os("E2E_KUBECONFIG").filter(|v| !v.is_empty()) {
        return PathBuf::from(p);
    }
    if let Some(first) = std::env::var_os("KUBECONFIG")
        .and_then(|v| std::env::split_paths(&v).find(|p| !p.as_os_str().is_empty()))
    {
        return first;
    }
    e2e_root().join("run").join("admin.kubeconfig")
}

/// The Kubernetes version pinned in `e2e/versions.env` (e.g. `v1.34.4`).
pub fn k8s_version() -> Result<String> {
    let env = repo_path("e2e/versions.env");
    let text =
        std::fs::read_to_string(&env).with_context(|| format!("reading {}", env.display()))?;
    text.lines()
        .find_map(|l| l.trim().strip_prefix("K8S_VERSION="))
        .map(|v| v.trim().trim_matches('"').to_string())
        .ok_or_else(|| anyhow!("K8S_VERSION missing in {}", env.display()))
}

/// The kubectl built by `e2e/build-binaries.sh` (`$E2E_ROOT/bin/<version>/kubectl`).
pub fn kubectl_path() -> Result<PathBuf> {
    let p = e2e_root().join("bin").join(k8s_version()?).join("kubectl");
    ensure!(
        p.is_file(),
        "{} missing: run `make e2e-binaries`",
        p.display()
    );
    Ok(p)
}

/// A client for the harness cluster, as the admin user (`system:masters`).
pub async fn client() -> Result<Client> {
    let path = kubeconfig_path();
    client_from_kubeconfig(&path).await.with_context(|| {
        format!(
            "no client for {} (is the cluster up? run `make e2e-up`)",
            path.display()
        )
    })
}

/// A client from an explicit kubeconfig file (e.g. [`ServiceAccountAccess::kubeconfig`]).
/// Fails unless the server is on a loopback address.
pub async fn client_from_kubeconfig(path: &Path) -> Result<Client> {
    let kubeconfig =
        Kubeconfig::read_from(path).with_context(|| format!("reading {}", path.display()))?;
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .with_context(|| format!("loading {}", path.display()))?;
    ensure_loopback(&config)?;
    Ok(Client::try_from(config)?)
}

fn ensure_loopback(config: &Config) -> Result<()> {
    let host = config.cluster_url.host().unwrap_or_default();
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let loopback = host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .map(|ip| ip.is_loopback())
            .unwrap_or(false);
    ensure!(
        loopback,
        "refusing to run e2e tests against {}: only a loopback API server is allowed",
        config.cluster_url
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// names

/// `len` random characters from `[a-z0-9]`, different on every call.
/// A loopback port free at the time of asking (another process may still take it before
/// the caller binds it).
pub fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

pub fn random_suffix(len: usize) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut out = String::with_capacity(len);
    while out.len() < len {
        let mut h = RandomState::new().build_hasher();
        h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
        h.write_u32(std::process::id());
        h.write_u128(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or_default(),
        );
        let mut x = h.finish();
        for _ in 0..12 {
            if out.len() == len {
                break;
            }
            out.push(ALPHABET[(x % 36) as usize] as char);
            x /= 36;
        }
    }
    out
}

/// `<prefix>-<6 random chars>`, made a valid DNS label (lowercase, at most 63 characters).
pub fn unique_name(prefix: &str) -> String {
    let mut p: String = prefix
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    p.truncate(56);
    let p = p.trim_matches('-');
    let p = if p.is_empty() { "e2e" } else { p };
    format!("{p}-{}", random_suffix(6))
}

// ---------------------------------------------------------------------------------------------
// namespaces

/// A namespace for one test: `<prefix>-<random>`, labelled [`TEST_NAMESPACE_LABEL`].
///
/// Deleted by [`TestNamespace::delete`] or, best-effort, on drop (also when the test panics).
/// Set `E2E_KEEP_NAMESPACES=1` to keep them for debugging.
pub struct TestNamespace {
    client: Client,
    name: String,
    deleted: bool,
}

impl TestNamespace {
    /// Creates the namespace and waits for its `default` ServiceAccount (pods need it).
    pub async fn create(client: &Client, prefix: &str) -> Result<Self> {
        let name = unique_name(prefix);
        let ns: Namespace = serde_json::from_value(json!({
            "metadata": {"name": name, "labels": {TEST_NAMESPACE_LABEL: "true"}}
        }))?;
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .with_context(|| format!("creating namespace {name}"))?;
        let this = Self {
            client: client.clone(),
            name,
            deleted: false,
        };
        let sas: Api<ServiceAccount> = this.api();
        wait_for(
            &sas,
            "default",
            DEFAULT_TIMEOUT,
            "ServiceAccount exists",
            |_| true,
        )
        .await?;
        Ok(this)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// An `Api` for a namespaced kind in this namespace.
    pub fn api<K>(&self) -> Api<K>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as Resource>::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), &self.name)
    }

    /// Deletes the namespace (does not wait for it to be gone).
    pub async fn delete(mut self) -> Result<()> {
        self.deleted = true;
        delete_namespace(&self.client, &self.name).await
    }
}

async fn delete_namespace(client: &Client, name: &str) -> Result<()> {
    match Api::<Namespace>::all(client.clone())
        .delete(name, &DeleteParams::background())
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if api_error(&e).map(|s| s.code) == Some(404) => Ok(()),
        Err(e) => Err(e).with_context(|| format!("deleting namespace {name}")),
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        if self.deleted || std::env::var_os("E2E_KEEP_NAMESPACES").is_some() {
            return;
        }
        // The test's runtime is (or is about to be) blocked here and the client's background
        // tasks live on it, so delete from a fresh runtime with a fresh client on another thread.
        let name = self.name.clone();
        let result = std::thread::spawn(move || -> Result<()> {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async {
                let client = client().await?;
                tokio::time::timeout(Duration::from_secs(15), delete_namespace(&client, &name))
                    .await
                    .map_err(|_| anyhow!("timed out deleting namespace {name}"))?
            })
        })
        .join();
        match result {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("warning: cleaning up namespace {}: {e:#}", self.name),
            Err(_) => eprintln!("warning: cleaning up namespace {} panicked", self.name),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// waits

/// Polls `name` until `cond` holds; returns the object that satisfied it. Fails after `timeout`
/// with `what` and the last state seen.
pub async fn wait_for<K, F>(
    api: &Api<K>,
    name: &str,
    timeout: Duration,
    what: &str,
    mut cond: F,
) -> Result<K>
where
    K: Resource + Clone + DeserializeOwned + Serialize + Debug,
    F: FnMut(&K) -> bool,
{
    let deadline = Instant::now() + timeout;
    let mut last: Option<K> = None;
    loop {
        match api.get_opt(name).await {
            Ok(Some(obj)) => {
                if cond(&obj) {
                    return Ok(obj);
                }
                last = Some(obj);
            }
            Ok(None) => last = None,
            Err(e) if Instant::now() < deadline => {
                eprintln!("wait_for {name}: transient error: {e}");
            }
            Err(e) => return Err(e).context(format!("waiting for {name}: {what}")),
        }
        if Instant::now() >= deadline {
            let state = match &last {
                Some(o) => serde_json::to_string_pretty(o).unwrap_or_default(),
                None => "<not found>".to_string(),
            };
            bail!(
                "timed out after {timeout:?} waiting for {}/{name}: {what}\nlast state: {state}",
                api.resource_url(),
            );
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Polls `check` until it returns `Ok(true)`; fails after `timeout` naming `what` and the last
/// error `check` returned, if any.
pub async fn eventually<F, Fut>(timeout: Duration, what: &str, mut check: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<bool>>,
{
    let deadline = Instant::now() + timeout;
    let mut last_err = None;
    loop {
        match check().await {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(e) => last_err = Some(e),
        }
        if Instant::now() >= deadline {
            return Err(match last_err {
                Some(e) => e.context(format!("timed out after {timeout:?}: {what}")),
                None => anyhow!("timed out after {timeout:?}: {what}"),
            });
        }
        tokio::time::sleep(POLL).await;
    }
}

/// The fake nodes made by `cluster.sh up` (label `type=kwok`).
pub async fn kwok_nodes(client: &Client) -> Result<Vec<Node>> {
    let nodes: Api<Node> = Api::all(client.clone());
    Ok(nodes
        .list(&ListParams::default().labels("type=kwok"))
        .await?
        .items)
}

/// Waits until the object is gone (or was replaced by one with another UID).
pub async fn wait_deleted<K>(api: &Api<K>, name: &str, uid: &str, timeout: Duration) -> Result<()>
where
    K: Resource + Clone + DeserializeOwned + Debug,
{
    let deadline = Instant::now() + timeout;
    loop {
        match api.get_opt(name).await? {
            None => return Ok(()),
            Some(o) if o.meta().uid.as_deref() != Some(uid) => return Ok(()),
            Some(o) => {
                if Instant::now() >= deadline {
                    bail!(
                        "timed out after {timeout:?} waiting for deletion of {name}; finalizers {:?}, deletionTimestamp {:?}",
                        o.meta().finalizers,
                        o.meta().deletion_timestamp
                    );
                }
            }
        }
        tokio::time::sleep(POLL).await;
    }
}

/// `status.conditions[type == cond_type].status`, for any object with standard conditions.
pub fn condition_status<K: Serialize>(obj: &K, cond_type: &str) -> Option<String> {
    let v = serde_json::to_value(obj).ok()?;
    v.pointer("/status/conditions")?
        .as_array()?
        .iter()
        .find(|c| c.get("type").and_then(Value::as_str) == Some(cond_type))?
        .get("status")?
        .as_str()
        .map(str::to_string)
}

/// Waits until `status.conditions` has `cond_type` with `status` (e.g. `"True"`).
pub async fn wait_condition<K>(
    api: &Api<K>,
    name: &str,
    cond_type: &str,
    status: &str,
    timeout: Duration,
) -> Result<K>
where
    K: Resource + Clone + DeserializeOwned + Serialize + Debug,
{
    let what = format!("condition {cond_type}={status}");
    wait_for(api, name, timeout, &what, |o| {
        condition_status(o, cond_type).as_deref() == Some(status)
    })
    .await
}

/// `kubectl rollout status` semantics: the controller saw the latest spec, every replica is
/// updated and available, and no old replica is left.
pub fn deployment_rolled_out(d: &Deployment) -> bool {
    let Some(status) = &d.status else {
        return false;
    };
    let generation = d.metadata.generation.unwrap_or_default();
    if status.observed_generation.unwrap_or_default() < generation {
        return false;
    }
    let wanted = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let updated = status.updated_replicas.unwrap_or_default();
    updated == wanted
        && status.replicas.unwrap_or_default() == updated
        && status.available_replicas.unwrap_or_default() == updated
}

/// `kubectl rollout status` semantics for DaemonSets: every desired pod is updated and available.
pub fn daemonset_rolled_out(ds: &DaemonSet) -> bool {
    let Some(status) = &ds.status else {
        return false;
    };
    let generation = ds.metadata.generation.unwrap_or_default();
    if status.observed_generation.unwrap_or_default() < generation {
        return false;
    }
    let desired = status.desired_number_scheduled;
    status.updated_number_scheduled.unwrap_or_default() == desired
        && status.number_available.unwrap_or_default() == desired
        && status.number_ready == desired
}

/// Waits for a Deployment rollout to complete; fails early on `ProgressDeadlineExceeded`.
pub async fn wait_deployment_rolled_out(
    api: &Api<Deployment>,
    name: &str,
    timeout: Duration,
) -> Result<Deployment> {
    let d = wait_for(api, name, timeout, "rollout complete", |d| {
        deployment_rolled_out(d) || progress_deadline_exceeded(d)
    })
    .await?;
    ensure!(
        !progress_deadline_exceeded(&d) || deployment_rolled_out(&d),
        "deployment {name} exceeded its progress deadline"
    );
    Ok(d)
}

fn progress_deadline_exceeded(d: &Deployment) -> bool {
    d.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| {
            cs.iter().any(|c| {
                c.type_ == "Progressing" && c.reason.as_deref() == Some("ProgressDeadlineExceeded")
            })
        })
}

/// Waits for a DaemonSet rollout to complete.
pub async fn wait_daemonset_rolled_out(
    api: &Api<DaemonSet>,
    name: &str,
    timeout: Duration,
) -> Result<DaemonSet> {
    wait_for(api, name, timeout, "rollout complete", daemonset_rolled_out).await
}

// ---------------------------------------------------------------------------------------------
// API errors

/// The API server's `Status` if `err` is an API rejection (403, 404, 409, 422, ...).
pub fn api_error(err: &kube::Error) -> Option<&Status> {
    match err {
        kube::Error::Api(status) => Some(status),
        _ => None,
    }
}

/// Asserts that `result` is an API rejection with HTTP `code`; returns its `Status`
/// (for checks on `message` / `reason`).
pub fn expect_api_error<T: Debug>(result: kube::Result<T>, code: u16) -> Result<Status> {
    match result {
        Ok(v) => bail!("expected HTTP {code}, but the request succeeded: {v:?}"),
        Err(kube::Error::Api(status)) if status.code == code => Ok(*status),
        Err(e) => bail!("expected HTTP {code}, got: {e:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// server-side apply

/// Server-side apply of `obj` (typed object or `serde_json::Value` with apiVersion/kind) as
/// `manager`; `force` takes over conflicting fields.
pub async fn apply<K, P>(
    api: &Api<K>,
    name: &str,
    obj: &P,
    manager: &str,
    force: bool,
) -> kube::Result<K>
where
    K: Resource + Clone + DeserializeOwned + Debug,
    P: Serialize + Debug,
{
    let mut params = PatchParams::apply(manager);
    if force {
        params = params.force();
    }
    api.patch(name, &params, &Patch::Apply(obj)).await
}

/// Every non-empty document of a (multi-document) YAML file, as JSON values.
pub fn read_yaml_documents(path: &Path) -> Result<Vec<Value>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    parse_yaml_documents(&text).with_context(|| format!("parsing {}", path.display()))
}

/// Every non-empty document of a YAML string, as JSON values.
pub fn parse_yaml_documents(text: &str) -> Result<Vec<Value>> {
    let docs: Vec<Value> = serde_saphyr::from_multiple(text)?;
    Ok(docs.into_iter().filter(|d| !d.is_null()).collect())
}

/// Server-side applies one manifest of any kind (found by discovery). Namespaced objects go to
/// their own `metadata.namespace`, else to `default_namespace`.
pub async fn apply_manifest(
    client: &Client,
    doc: &Value,
    default_namespace: Option<&str>,
    manager: &str,
) -> Result<DynamicObject> {
    let api_version = doc
        .get("apiVersion")
        .and_then(Value::as_str)
        .ok_or_else(|| anyhow!("manifest without apiVersion"))?;
    let kind = doc
        .get("kind")
        .and_then(Value::as_str)
        .ok_or_else(|| anyhow!("manifest without kind"))?;
    let name = doc
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .ok_or_else(|| anyhow!("{kind} without metadata.name"))?;
    let (group, version) = match api_version.split_once('/') {
        Some((g, v)) => (g, v),
        None => ("", api_version),
    };
    let gvk = GroupVersionKind::gvk(group, version, kind);
    let (resource, caps) = kube::discovery::pinned_kind(client, &gvk)
        .await
        .with_context(|| format!("discovering {api_version} {kind}"))?;
    let api: Api<DynamicObject> = if caps.scope == Scope::Namespaced {
        let ns = doc
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .or(default_namespace)
            .ok_or_else(|| anyhow!("{kind} {name} is namespaced but has no namespace"))?;
        Api::namespaced_with(client.clone(), ns, &resource)
    } else {
        Api::all_with(client.clone(), &resource)
    };
    let params = PatchParams::apply(manager).force();
    api.patch(name, &params, &Patch::Apply(doc))
        .await
        .with_context(|| format!("applying {kind} {name}"))
}

/// Server-side applies every document of a YAML file (see [`apply_manifest`]).
pub async fn apply_file(
    client: &Client,
    path: &Path,
    default_namespace: Option<&str>,
    manager: &str,
) -> Result<Vec<DynamicObject>> {
    let mut out = Vec::new();
    for doc in read_yaml_documents(path)? {
        out.push(apply_manifest(client, &doc, default_namespace, manager).await?);
    }
    Ok(out)
}

/// Server-side applies a CRD file (one or more CRDs) and waits until each is `Established`.
pub async fn apply_crd_file(client: &Client, path: &Path) -> Result<Vec<CustomResourceDefinition>> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let mut out = Vec::new();
    for doc in read_yaml_documents(path)? {
        let crd: CustomResourceDefinition = serde_json::from_value(doc)
            .with_context(|| format!("{} is not a CustomResourceDefinition", path.display()))?;
        let name = crd.name_any();
        apply(&api, &name, &crd, FIELD_MANAGER, true)
            .await
            .with_context(|| format!("applying CRD {name}"))?;
        out.push(wait_condition(&api, &name, "Established", "True", DEFAULT_TIMEOUT).await?);
    }
    ensure!(!out.is_empty(), "{} holds no CRD", path.display());
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// restricted ServiceAccounts

/// A ServiceAccount with a bound token and a kubeconfig that authenticates as it, so a test (or a
/// child process started with `KUBECONFIG=<kubeconfig>`) runs under that account's RBAC only.
#[derive(Clone, Debug)]
pub struct ServiceAccountAccess {
    pub namespace: String,
    pub name: String,
    /// The TokenRequest token (bearer token).
    pub token: String,
    /// Kubeconfig file with the token, the harness CA and server, default namespace `namespace`.
    pub kubeconfig: PathBuf,
}

impl ServiceAccountAccess {
    /// Creates the ServiceAccount if it does not exist, requests a token valid for 24 h and writes
    /// `<dir of the admin kubeconfig>/sa-kubeconfigs/<namespace>.<name>.kubeconfig`.
    pub async fn create(admin: &Client, namespace: &str, name: &str) -> Result<Self> {
        let sas: Api<ServiceAccount> = Api::namespaced(admin.clone(), namespace);
        let sa: ServiceAccount = serde_json::from_value(json!({"metadata": {"name": name}}))?;
        match sas.create(&PostParams::default(), &sa).await {
            Ok(_) => {}
            Err(e) if api_error(&e).map(|s| s.code) == Some(409) => {}
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("creating ServiceAccount {namespace}/{name}"));
            }
        }
        let request = TokenRequest {
            spec: TokenRequestSpec {
                audiences: vec![],
                expiration_seconds: Some(24 * 3600),
                ..Default::default()
            },
            ..Default::default()
        };
        let token = sas
            .create_token_request(name, &PostParams::default(), &request)
            .await
            .with_context(|| format!("TokenRequest for {namespace}/{name}"))?
            .status
            .map(|s| s.token)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| anyhow!("TokenRequest for {namespace}/{name} returned no token"))?;

        let admin_path = kubeconfig_path();
        let dir = admin_path
            .parent()
            .map(|p| p.join("sa-kubeconfigs"))
            .unwrap_or_else(|| std::env::temp_dir().join("istio-install-e2e-sa-kubeconfigs"));
        std::fs::create_dir_all(&dir)?;
        let kubeconfig = dir.join(format!("{namespace}.{name}.kubeconfig"));
        write_token_kubeconfig(&admin_path, &kubeconfig, namespace, name, &token)?;
        Ok(Self {
            namespace: namespace.to_string(),
            name: name.to_string(),
            token,
            kubeconfig,
        })
    }

    /// `system:serviceaccount:<namespace>:<name>`, the user name RBAC sees.
    pub fn username(&self) -> String {
        format!("system:serviceaccount:{}:{}", self.namespace, self.name)
    }

    /// A client that authenticates as this ServiceAccount.
    pub async fn client(&self) -> Result<Client> {
        client_from_kubeconfig(&self.kubeconfig).await
    }
}

fn write_token_kubeconfig(
    admin_path: &Path,
    out: &Path,
    namespace: &str,
    sa: &str,
    token: &str,
) -> Result<()> {
    let admin = Kubeconfig::read_from(admin_path)
        .with_context(|| format!("reading {}", admin_path.display()))?;
    let context_name = admin
        .current_context
        .clone()
        .ok_or_else(|| anyhow!("{} has no current-context", admin_path.display()))?;
    let cluster_name = admin
        .contexts
        .iter()
        .find(|c| c.name == context_name)
        .and_then(|c| c.context.as_ref())
        .map(|c| c.cluster.clone())
        .ok_or_else(|| anyhow!("context {context_name} not found"))?;
    let cluster = admin
        .clusters
        .iter()
        .find(|c| c.name == cluster_name)
        .and_then(|c| c.cluster.clone())
        .ok_or_else(|| anyhow!("cluster {cluster_name} not found"))?;
    let user = format!("{namespace}.{sa}");
    let doc = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "e2e", "cluster": serde_json::to_value(&cluster)?}],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": "e2e", "context": {"cluster": "e2e", "user": user, "namespace": namespace}}],
        "current-context": "e2e",
    });
    let text = serde_saphyr::to_string(&doc)?;
    write_private(out, text.as_bytes())
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// an API server that goes away

/// A TCP proxy on 127.0.0.1 in front of the harness API server, which a test can pause:
/// [`TcpProxy::set_open`]`(false)` holds every byte in both directions and connects nothing new
/// (the API server stops answering whoever uses [`TcpProxy::kubeconfig`], as in a network
/// partition: requests time out, watches go silent); `true` lets everything through again. TLS passes through untouched (the serving certificate is for 127.0.0.1).
pub struct TcpProxy {
    port: u16,
    open: std::sync::Arc<tokio::sync::watch::Sender<bool>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl TcpProxy {
    /// Starts a proxy to the API server of the admin kubeconfig. It runs on a thread and runtime
    /// of its own, so it keeps forwarding whatever the test's runtime is doing.
    pub async fn start() -> Result<TcpProxy> {
        let config = Kubeconfig::read_from(kubeconfig_path())?;
        let server = config
            .clusters
            .first()
            .and_then(|c| c.cluster.as_ref())
            .and_then(|c| c.server.clone())
            .ok_or_else(|| anyhow!("the admin kubeconfig names no server"))?;
        let uri: http::Uri = server.parse()?;
        let target: std::net::SocketAddr = format!(
            "{}:{}",
            uri.host().unwrap_or_default(),
            uri.port_u16().unwrap_or(443)
        )
        .parse()?;
        ensure!(
            target.ip().is_loopback(),
            "only a loopback API server is proxied"
        );
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let port = listener.local_addr()?.port();
        let (open, _) = tokio::sync::watch::channel(true);
        let open = std::sync::Arc::new(open);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let shared = open.clone();
        std::thread::spawn(move || {
            runtime.block_on(async move {
                tokio::select! {
                    () = forward(listener, target, shared) => {}
                    _ = stopped => {}
                }
            })
        });
        Ok(TcpProxy {
            port,
            open,
            stop: Some(stop),
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Lets bytes through (`true`) or holds them (`false`).
    pub fn set_open(&self, open: bool) {
        self.open.send_replace(open);
    }

    /// A copy of `kubeconfig` whose server is this proxy (written next to it, mode 600).
    pub fn kubeconfig(&self, kubeconfig: &Path) -> Result<PathBuf> {
        let mut config = Kubeconfig::read_from(kubeconfig)?;
        for cluster in &mut config.clusters {
            if let Some(c) = cluster.cluster.as_mut() {
                c.server = Some(format!("https://127.0.0.1:{}", self.port));
            }
        }
        let out = kubeconfig.with_extension(format!("via-{}.kubeconfig", self.port));
        write_private(&out, serde_saphyr::to_string(&config)?.as_bytes())?;
        Ok(out)
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.set_open(false);
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// The proxy's loop. Connections are never reset: while paused, bytes are held (a connection
/// accepted meanwhile reaches the API server only once resumed), like a network partition.
async fn forward(
    listener: std::net::TcpListener,
    target: std::net::SocketAddr,
    open: std::sync::Arc<tokio::sync::watch::Sender<bool>>,
) {
    let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
        return;
    };
    loop {
        // A connection reset while queued fails its accept; the proxy goes on.
        let Ok((inbound, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let mut state = open.subscribe();
        tokio::spawn(async move {
            if state.wait_for(|open| *open).await.is_err() {
                return;
            }
            let Ok(outbound) = tokio::net::TcpStream::connect(target).await else {
                return;
            };
            let (in_read, in_write) = inbound.into_split();
            let (out_read, out_write) = outbound.into_split();
            tokio::join!(
                pump(in_read, out_write, state.clone()),
                pump(out_read, in_write, state)
            );
        });
    }
}

/// Copies one direction, holding each chunk while the proxy is paused.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut open: tokio::sync::watch::Receiver<bool>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if open.wait_for(|open| *open).await.is_err() || to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suffixes_are_dns_safe_and_differ() {
        let a = random_suffix(6);
        let b = random_suffix(6);
        assert_eq!(a.len(), 6);
        assert_ne!(a, b);
        assert!(
            a.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        );
        let n = unique_name("My_Test.Name");
        assert!(n.starts_with("my-test-name-"), "{n}");
        assert!(unique_name(&"x".repeat(100)).len() <= 63);
    }

    #[test]
    fn yaml_documents_skip_empty_ones() {
        let docs = parse_yaml_documents("---\na: 1\n---\n---\nb: [x]\n").unwrap();
        assert_eq!(docs, vec![json!({"a": 1}), json!({"b": ["x"]})]);
    }

    #[test]
    fn conditions_are_read_from_status() {
        let d: Deployment = serde_json::from_value(json!({
            "metadata": {"name": "d", "generation": 2},
            "spec": {"replicas": 2, "selector": {}, "template": {}},
            "status": {"observedGeneration": 2, "replicas": 2, "updatedReplicas": 2,
                       "availableReplicas": 2, "readyReplicas": 2,
                       "conditions": [{"type": "Available", "status": "True"}]}
        }))
        .unwrap();
        assert_eq!(condition_status(&d, "Available").as_deref(), Some("True"));
        assert!(deployment_rolled_out(&d));
        let mut old = d.clone();
        old.metadata.generation = Some(3);
        assert!(!deployment_rolled_out(&old));
    }
}
