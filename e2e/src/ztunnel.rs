//! The real ztunnel in the loop: `ztunnel` built from upstream source (`make ztunnel`) runs as a
//! local process against the real istiod ([`crate::istiod`]), configured from the ztunnel
//! DaemonSet the operator applied.
//!
//! The DaemonSet's container is honoured as the kubelet would: its args; its env (field
//! references resolved); its volumes laid out under the process's working directory, since
//! ztunnel reads them by paths relative to `/` (`./var/run/secrets/...`): the root certificate
//! from the ConfigMap the volume names, and the projected ServiceAccount token requested with
//! the volume's own audience and expiry for the pod's ServiceAccount, bound to the
//! DaemonSet's pod on that node (kwok "runs" it), as the kubelet's token is. So istiod accepts
//! the connection only if what we rendered is right. What a pod has and a local process does not is
//! replaced, and only that: istiod's address becomes its loopback port (with the rendered host
//! name kept for TLS), the CNI socket moves into the working directory, and the admin and
//! stats ports are free loopback-chosen ones. Without istio-cni no pod traffic is redirected,
//! so ztunnel proxies nothing: what is proven is that it connects, is authorised, and receives
//! the ambient workloads (its `/config_dump`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail, ensure};
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, ServiceAccount, Volume};
use kube::Client;
use kube::api::{Api, PostParams};
use serde_json::{Value, json};

use crate::istiod::{Istiod, Startup, http_get, log_tail, non_loopback_peers, wait_answering};
use crate::{e2e_root, free_port, random_suffix};

/// `$E2E_ROOT/bin/ztunnel-<tag>/ztunnel`.
pub fn binary(tag: &str) -> PathBuf {
    e2e_root()
        .join("bin")
        .join(format!("ztunnel-{tag}"))
        .join("ztunnel")
}

/// `Ok` when ztunnel `tag` is built, else the reason and how to build it.
pub fn availability(tag: &str) -> Result<(), String> {
    let b = binary(tag);
    if b.is_file() {
        return Ok(());
    }
    Err(format!(
        "{} is not built; run `make ztunnel ZTUNNEL_SRC=<git clone of github.com/istio/ztunnel>` \
         (e2e/README.md, 'Real istiod')",
        b.display()
    ))
}

/// A running ztunnel; killed on drop.
pub struct Ztunnel {
    child: tokio::process::Child,
    admin_port: u16,
    dir: PathBuf,
    log: PathBuf,
}

impl Ztunnel {
    /// Starts the ztunnel of `daemonset` (as the operator applied it) against `istiod`, as
    /// `pod` (the DaemonSet's pod on a node, which kwok "runs": its name, node and a token
    /// bound to it, as the kubelet would give them), and waits until its admin endpoint answers.
    pub async fn start(
        admin: &Client,
        daemonset: &DaemonSet,
        pod_object: &Pod,
        istiod: &Istiod,
    ) -> Result<Ztunnel> {
        let name = daemonset.metadata.name.clone().unwrap_or_default();
        let namespace = daemonset.metadata.namespace.clone().unwrap_or_default();
        let pod = daemonset
            .spec
            .as_ref()
            .and_then(|s| s.template.spec.as_ref())
            .ok_or_else(|| anyhow!("DaemonSet {namespace}/{name} has no pod spec"))?;
        let [c] = pod.containers.as_slice() else {
            bail!("DaemonSet {namespace}/{name}: expected one container");
        };
        let image = c.image.clone().unwrap_or_default();
        let tag = image
            .rsplit_once(':')
            .map(|(_, t)| t.split('-').next().unwrap_or(t).to_string())
            .ok_or_else(|| anyhow!("ztunnel image {image:?} has no tag"))?;
        let bin = binary(&tag);
        ensure!(
            bin.is_file(),
            "{} missing: run `make ztunnel`",
            bin.display()
        );
        let sa = pod
            .service_account_name
            .clone()
            .unwrap_or_else(|| "default".into());
        let dir = std::env::temp_dir().join(format!("e2e-ztunnel-{}", random_suffix(6)));
        let pod_name = pod_object.metadata.name.clone().unwrap_or_default();
        let node = pod_object
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .ok_or_else(|| anyhow!("ztunnel pod {pod_name} is on no node"))?;

        // Volumes, where the container mounts them (relative to the working directory).
        let volumes = pod.volumes.clone().unwrap_or_default();
        let mut socket_dir = None;
        for m in c.volume_mounts.iter().flatten() {
            let at = dir.join(m.mount_path.trim_start_matches('/'));
            std::fs::create_dir_all(&at)?;
            let v = volumes
                .iter()
                .find(|v| v.name == m.name)
                .ok_or_else(|| anyhow!("volumeMount {} has no volume", m.name))?;
            if v.host_path.is_some() {
                socket_dir = Some(at.clone());
            }
            lay_out(admin, pod_object, &sa, v, &at).await?;
        }
        let socket_dir =
            socket_dir.ok_or_else(|| anyhow!("no hostPath volume for the CNI socket"))?;

        let mut env: Vec<(String, String)> = Vec::new();
        let mut istiod_host = None;
        for e in c.env.iter().flatten() {
            let value = match (
                &e.value,
                e.value_from.as_ref().and_then(|f| f.field_ref.as_ref()),
            ) {
                (Some(v), _) => v.clone(),
                (None, Some(f)) => match f.field_path.as_str() {
                    "metadata.name" => pod_name.clone(),
                    "metadata.namespace" => namespace.clone(),
                    "spec.serviceAccountName" => sa.clone(),
                    "spec.nodeName" => node.clone(),
                    "status.podIP" | "status.hostIP" => "127.0.0.1".into(),
                    other => bail!("env {} of {name}: unhandled fieldRef {other}", e.name),
                },
                // resourceFieldRef: left to ztunnel's defaults here.
                (None, None) => continue,
            };
            if e.name == "XDS_ADDRESS" {
                istiod_host = value.rsplit_once(':').map(|(h, _)| h.to_string());
            }
            env.push((e.name.clone(), value));
        }
        let istiod_host =
            istiod_host.ok_or_else(|| anyhow!("the ztunnel container has no XDS_ADDRESS"))?;
        // istiod is on a loopback port; TLS still checks the name we rendered (1.24+; the
        // ztunnel of 1.23 checks `localhost`, which the harness's istiod certificate names).
        let address = format!("https://localhost:{}", istiod.ports.secure_grpc);
        let admin_port = free_port()?;
        let stats_port = free_port()?;
        env.extend([
            ("XDS_ADDRESS".into(), address.clone()),
            ("CA_ADDRESS".into(), address),
            ("ALT_XDS_HOSTNAME".into(), istiod_host.clone()),
            ("ALT_CA_HOSTNAME".into(), istiod_host),
            (
                "INPOD_UDS".into(),
                socket_dir.join("ztunnel.sock").display().to_string(),
            ),
            (
                "PROXY_CONFIG".into(),
                json!({"proxyAdminPort": admin_port, "statusPort": stats_port, "proxyMetadata": {}})
                    .to_string(),
            ),
            // Its other listeners (readiness, stats) bind a wildcard: IPv4 only.
            ("IPV6_ENABLED".into(), "false".into()),
        ]);
        let args = c.args.clone().unwrap_or_default();
        let log = dir.join("ztunnel.log");
        let out = std::fs::File::create(&log)?;
        let child = tokio::process::Command::new(&bin)
            .args(&args)
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .envs(env)
            .current_dir(&dir)
            .stdout(std::process::Stdio::from(out.try_clone()?))
            .stderr(std::process::Stdio::from(out))
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let mut z = Ztunnel {
            child,
            admin_port,
            dir,
            log,
        };
        match wait_answering(
            &mut z.child,
            z.admin_port,
            "/config_dump",
            Duration::from_secs(60),
        )
        .await
        {
            Startup::Answering => Ok(z),
            Startup::Exited(status) => bail!(
                "ztunnel exited with {status}\n--- ztunnel log (last 40 lines):\n{}",
                z.log_tail(40)
            ),
            Startup::TimedOut => bail!(
                "ztunnel's admin port did not answer within 60 s\n--- ztunnel log (last 40 lines):\n{}",
                z.log_tail(40)
            ),
        }
    }

    /// `/config_dump` of the admin endpoint.
    pub async fn config_dump(&self) -> Result<Value> {
        let (code, body) = http_get(self.admin_port, "/config_dump").await?;
        ensure!(code == 200, "config_dump answered {code}: {body}");
        Ok(serde_json::from_str(&body)?)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn log_tail(&self, n: usize) -> String {
        log_tail(&self.log, n)
    }

    /// Remote addresses of its TCP connections that are not loopback (must be none).
    pub fn non_loopback_peers(&self) -> Vec<String> {
        self.child.id().map(non_loopback_peers).unwrap_or_default()
    }

    /// Kills the process and removes its working directory.
    pub async fn stop(mut self) -> Result<()> {
        self.child.kill().await?;
        let _ = std::fs::remove_dir_all(&self.dir);
        Ok(())
    }
}

/// Writes what volume `v` of `pod` holds into `at`: a ConfigMap's keys, a projected
/// ServiceAccount token (requested with the volume's audience and expiry, bound to the pod as
/// the kubelet's is: istiod reads the pod from it), or nothing (emptyDir, hostPath).
async fn lay_out(admin: &Client, pod: &Pod, sa: &str, v: &Volume, at: &Path) -> Result<()> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or_default();
    if let Some(cm) = &v.config_map {
        let cms: Api<ConfigMap> = Api::namespaced(admin.clone(), ns);
        // istiod publishes its root certificate into every namespace once it is up.
        let mut data = None;
        for _ in 0..120 {
            if let Some(found) = cms.get_opt(&cm.name).await? {
                data = found.data;
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        let data = data.ok_or_else(|| anyhow!("ConfigMap {ns}/{} never appeared", cm.name))?;
        for (k, text) in data {
            std::fs::write(at.join(k), text)?;
        }
    }
    if let Some(p) = &v.projected {
        for s in p.sources.iter().flatten() {
            let Some(t) = &s.service_account_token else {
                bail!(
                    "volume {}: only ServiceAccount token projections are laid out",
                    v.name
                );
            };
            let sas: Api<ServiceAccount> = Api::namespaced(admin.clone(), ns);
            let request = TokenRequest {
                spec: TokenRequestSpec {
                    audiences: t.audience.clone().into_iter().collect(),
                    expiration_seconds: t.expiration_seconds,
                    bound_object_ref: Some(BoundObjectReference {
                        api_version: Some("v1".into()),
                        kind: Some("Pod".into()),
                        name: pod.metadata.name.clone(),
                        uid: pod.metadata.uid.clone(),
                    }),
                },
                ..Default::default()
            };
            let token = sas
                .create_token_request(sa, &PostParams::default(), &request)
                .await
                .with_context(|| format!("TokenRequest for {ns}/{sa}"))?
                .status
                .map(|s| s.token)
                .ok_or_else(|| anyhow!("TokenRequest for {ns}/{sa} returned no token"))?;
            std::fs::write(at.join(&t.path), token)?;
        }
    }
    Ok(())
}
