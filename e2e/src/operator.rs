//! The operator as the e2e tests run it: a real `istio-install-operator run` process under its
//! own least-privilege ServiceAccount (manifests/rbac.yaml), and the IstioInstalls it works on.
//!
//! * [`prepare`]: the CRD, the operator's namespace and RBAC, and its ServiceAccount's
//!   kubeconfig.
//! * [`Operator`]: a running process (killed on drop) with its `/livez`, `/readyz` and
//!   `/metrics` on a loopback port, and its log in a file.
//! * [`installs`], [`apply_install`], [`wait_install`], [`remove_all_installs`], [`condition`]:
//!   IstioInstalls as the tests read and write them.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail, ensure};
use kube::Client;
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::{ServiceAccountAccess, apply_crd_file, apply_file, eventually, repo_path};

/// The operator's namespace and ServiceAccount name (manifests/namespace.yaml, rbac.yaml).
pub const OPERATOR_NS: &str = "istio-install-operator";
/// How long an install may take to converge (or to be uninstalled) on a loaded machine.
pub const INSTALL_TIMEOUT: Duration = Duration::from_secs(240);
/// The field manager the tests write IstioInstalls and manifests with.
pub const TEST_MANAGER: &str = "e2e-test";

/// The operator binary: `$OPERATOR_BIN`, else `$CARGO_TARGET_DIR/release/istio-install-operator`
/// (what `make build` makes), else the repository's `target/`.
pub fn operator_binary() -> PathBuf {
    if let Ok(p) = std::env::var("OPERATOR_BIN") {
        return PathBuf::from(p);
    }
    std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| repo_path("target"))
        .join("release/istio-install-operator")
}

/// Applies the CRD, the operator's namespace and RBAC; returns a kubeconfig of its
/// ServiceAccount.
pub async fn prepare(admin: &Client) -> Result<PathBuf> {
    apply_crd_file(admin, &repo_path("crds/istioinstall.io_istioinstalls.yaml")).await?;
    apply_file(
        admin,
        &repo_path("manifests/namespace.yaml"),
        None,
        TEST_MANAGER,
    )
    .await?;
    apply_file(admin, &repo_path("manifests/rbac.yaml"), None, TEST_MANAGER).await?;
    Ok(
        ServiceAccountAccess::create(admin, OPERATOR_NS, OPERATOR_NS)
            .await?
            .kubeconfig,
    )
}

/// A running `istio-install-operator run`; killed on drop.
pub struct Operator {
    pub child: tokio::process::Child,
    /// Loopback port of `/livez`, `/readyz` and `/metrics`.
    pub port: u16,
    /// stdout and stderr of the process.
    pub log: PathBuf,
}

impl Operator {
    /// [`prepare`], then an operator without leader election, once it reports ready.
    pub async fn start(admin: &Client) -> Result<Operator> {
        let kubeconfig = prepare(admin).await?;
        let op = Operator::spawn(&kubeconfig, &["--leader-elect=false"]).await?;
        eventually(
            Duration::from_secs(60),
            "the operator reports ready",
            || async { Ok(op.ready().await) },
        )
        .await
        .with_context(|| op.log())?;
        Ok(op)
    }

    /// Starts `run` with `args` under `kubeconfig`, without waiting for it. The Lease's
    /// namespace is whatever `args` say (`POD_NAMESPACE` is not inherited).
    pub async fn spawn(kubeconfig: &Path, args: &[&str]) -> Result<Operator> {
        let port = crate::free_port()?;
        let log = std::env::temp_dir().join(format!("istio-install-operator-{port}.log"));
        let file = std::fs::File::create(&log)?;
        let bin = operator_binary();
        let child = tokio::process::Command::new(&bin)
            .arg("run")
            .args(["--metrics-addr", &format!("127.0.0.1:{port}")])
            .args(args)
            .env("KUBECONFIG", kubeconfig)
            .env_remove("POD_NAMESPACE")
            .env_remove("POD_NAME")
            .env("RUST_LOG", "info")
            .stdout(Stdio::from(file.try_clone()?))
            .stderr(Stdio::from(file))
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {} (run `make build`)", bin.display()))?;
        Ok(Operator { child, port, log })
    }

    pub fn pid(&self) -> Result<u32> {
        self.child
            .id()
            .ok_or_else(|| anyhow!("the operator has exited; log:\n{}", self.log()))
    }

    /// Sends a signal to this process (by its PID: only the process this test started).
    pub async fn signal(&self, sig: &str) -> Result<()> {
        let status = tokio::process::Command::new("kill")
            .args([format!("-{sig}"), self.pid()?.to_string()])
            .status()
            .await?;
        ensure!(status.success(), "kill -{sig} failed");
        Ok(())
    }

    /// SIGKILL: no graceful shutdown, as in a node failure.
    pub async fn kill(mut self) -> Result<()> {
        self.child.kill().await?;
        Ok(())
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// A GET on the operator's HTTP port: status code and the whole response.
    pub async fn get(&self, path: &str) -> Result<(u16, String)> {
        http_get(self.port, path).await
    }

    /// The value of an unlabelled metric.
    pub async fn metric(&self, name: &str) -> Result<f64> {
        let (_, body) = self.get("/metrics").await?;
        body.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .ok_or_else(|| anyhow!("metric {name} not found"))
    }

    pub async fn leads(&self) -> bool {
        self.metric("istio_install_operator_leader")
            .await
            .is_ok_and(|v| v == 1.0)
    }

    pub async fn ready(&self) -> bool {
        self.get("/readyz").await.is_ok_and(|(c, _)| c == 200)
    }
}

fn ii_resource() -> ApiResource {
    ApiResource {
        group: "istioinstall.io".into(),
        version: "v1alpha1".into(),
        api_version: "istioinstall.io/v1alpha1".into(),
        kind: "IstioInstall".into(),
        plural: "istioinstalls".into(),
    }
}

/// IstioInstalls (cluster-scoped) as dynamic objects.
pub fn installs(c: &Client) -> Api<DynamicObject> {
    Api::all_with(c.clone(), &ii_resource())
}

/// Server-side applies IstioInstall `name` with `spec`; returns its new generation.
pub async fn apply_install(c: &Client, name: &str, spec: Value) -> Result<i64> {
    let obj = json!({"apiVersion": "istioinstall.io/v1alpha1", "kind": "IstioInstall",
        "metadata": {"name": name}, "spec": spec});
    let obj: DynamicObject = serde_json::from_value(obj)?;
    let out = installs(c)
        .patch(
            name,
            &PatchParams::apply(TEST_MANAGER).force(),
            &Patch::Apply(&obj),
        )
        .await
        .with_context(|| format!("applying IstioInstall {name}"))?;
    Ok(out.metadata.generation.unwrap_or(0))
}

/// `status.conditions[type == type_]`.
pub fn condition<'a>(ii: &'a DynamicObject, type_: &str) -> Option<&'a Value> {
    ii.data["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
}

/// Ready, with a status about the current generation and `installedVersion` = `version`.
pub fn is_ready_at(ii: &DynamicObject, version: &str) -> bool {
    ready_at_generation(ii) && ii.data["status"]["installedVersion"] == version
}

/// Ready, with a status about the current generation.
pub fn ready_at_generation(ii: &DynamicObject) -> bool {
    condition(ii, "Ready").is_some_and(|c| c["status"] == "True")
        && ii.metadata.generation.is_some()
        && ii.data["status"]["observedGeneration"] == ii.metadata.generation.unwrap_or(-1)
}

/// Waits until IstioInstall `name` is Ready at `version` (see [`is_ready_at`]).
pub async fn wait_ready_at(c: &Client, name: &str, version: &str) -> Result<DynamicObject> {
    wait_install(c, name, &format!("Ready at {version}"), |ii| {
        is_ready_at(ii, version)
    })
    .await
}

/// Polls IstioInstall `name` until `check` holds (within [`INSTALL_TIMEOUT`]); fails naming
/// `what` with the last status.
pub async fn wait_install(
    c: &Client,
    name: &str,
    what: &str,
    check: impl Fn(&DynamicObject) -> bool,
) -> Result<DynamicObject> {
    wait_install_for(c, name, what, INSTALL_TIMEOUT, check).await
}

/// [`wait_install`] with a timeout of its own.
pub async fn wait_install_for(
    c: &Client,
    name: &str,
    what: &str,
    timeout: Duration,
    check: impl Fn(&DynamicObject) -> bool,
) -> Result<DynamicObject> {
    let api = installs(c);
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let ii = api.get(name).await?;
        if check(&ii) {
            return Ok(ii);
        }
        if tokio::time::Instant::now() > deadline {
            bail!(
                "IstioInstall {name}: timed out waiting until {what}; status: {}",
                serde_json::to_string_pretty(&ii.data["status"])?
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Deletes every IstioInstall and waits until their finalizers have run (an operator must be
/// running).
pub async fn remove_all_installs(c: &Client) -> Result<()> {
    let api = installs(c);
    for ii in api.list(&ListParams::default()).await? {
        let name = ii.metadata.name.clone().unwrap_or_default();
        let _ = api.delete(&name, &DeleteParams::default()).await;
    }
    eventually(
        INSTALL_TIMEOUT,
        "every IstioInstall is uninstalled",
        || async { Ok(api.list(&ListParams::default()).await?.items.is_empty()) },
    )
    .await
}

/// A GET on an operator's HTTP port on loopback (any operator process the tests run): status
/// code and the whole response, within 10 s.
pub async fn http_get(port: u16, path: &str) -> Result<(u16, String)> {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut out)).await??;
    let code = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok((code, out))
}
