//! The real istiod in the loop: `pilot-discovery` built from upstream source (`make istiod`)
//! runs as a local process in place of the istiod pods, and the tests play the API server's part
//! for admission webhooks (the local API server keeps them off: it would dial the fictional
//! Service and pod addresses).
//!
//! * [`availability`]: the cached binaries (and Helm plus the upstream source for comparisons),
//!   or the one-line reason the real-istiod tests are skipped.
//! * [`Istiod::start`]: one process per istiod Deployment the operator applied: that Deployment's
//!   image tag picks the binary, its args and env are used as they are (field references resolved
//!   as the kubelet would), every listener is moved to 127.0.0.1, and it runs under its own
//!   ServiceAccount's token (so the RBAC the operator applied is what it gets).
//! * [`Admission`]: decides from the operator's Mutating/ValidatingWebhookConfigurations which
//!   webhooks an object is sent to (rules, namespace and object selectors), maps each webhook's
//!   Service to the istiod process whose pods it selects, POSTs the AdmissionReview over TLS
//!   trusted through the webhook's `caBundle`, and applies the returned JSONPatch.
//! * [`UpstreamConfig`]: the `istio` and `istio-sidecar-injector` ConfigMaps rendered at test time
//!   by real Helm from the fetched upstream chart, given to a second istiod as files.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail, ensure};
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, RuleWithOperations, ValidatingWebhookConfiguration,
    WebhookClientConfig,
};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::Client;
use kube::api::{Api, DynamicObject, ListParams, PostParams};
use kube::discovery::ApiResource;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::{ServiceAccountAccess, e2e_root, free_port, random_suffix};

/// The newest patch of each bundled minor: what `make istiod` builds.
pub const TAGS: [&str; 3] = ["1.23.6", "1.24.6", "1.25.5"];

/// `$E2E_ROOT/bin/istiod-<tag>/pilot-discovery`.
pub fn binary(tag: &str) -> PathBuf {
    e2e_root()
        .join("bin")
        .join(format!("istiod-{tag}"))
        .join("pilot-discovery")
}

/// The upstream source tree of a tag, as `make istiod` extracted it.
pub fn source(tag: &str) -> PathBuf {
    e2e_root().join("src").join(format!("istio-{tag}"))
}

/// The Helm built by `e2e/build-binaries.sh helm` (`$E2E_ROOT/bin/helm-<version>/helm`).
pub fn helm() -> Option<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(e2e_root().join("bin"))
        .ok()?
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("helm-"))
        .map(|e| e.path().join("helm"))
        .filter(|p| p.is_file())
        .collect();
    found.sort();
    found.pop()
}

/// `Ok` when the real-istiod tests can run for `tags`, else the reason and how to enable them
/// (printed as the one `SKIPPED real istiod: …` line).
pub fn availability(tags: &[&str]) -> Result<(), String> {
    let enable = "run `make istiod` with ISTIO_SRC, ISTIO_API_SRC and ISTIO_CLIENT_GO_SRC (e2e/README.md, 'Real istiod')";
    for t in tags {
        let b = binary(t);
        if !b.is_file() {
            return Err(format!("{} is not built; {enable}", b.display()));
        }
        let chart = source(t).join("manifests/charts/istio-control/istio-discovery");
        if !chart.is_dir() {
            return Err(format!(
                "no upstream chart at {}; {enable}",
                chart.display()
            ));
        }
    }
    if helm().is_none() {
        return Err(format!(
            "no Helm under {}/bin/helm-*; run `e2e/build-binaries.sh helm`",
            e2e_root().display()
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// the istiod process

/// Loopback ports of one istiod.
#[derive(Debug, Clone, Copy)]
pub struct Ports {
    /// `--httpAddr`: /ready, /debug.
    pub http: u16,
    /// `--grpcAddr` (plaintext xDS).
    pub grpc: u16,
    /// `--secureGRPCAddr` (xDS over mTLS).
    pub secure_grpc: u16,
    /// `--httpsAddr`: the webhooks (`/inject`, `/validate`).
    pub https: u16,
    /// `--monitoringAddr`: /metrics.
    pub monitoring: u16,
    /// `--ctrlz_port`: ControlZ, istiod's introspection page.
    pub ctrlz: u16,
}

/// A running `pilot-discovery`; killed on drop.
pub struct Istiod {
    child: tokio::process::Child,
    pub tag: String,
    pub revision: String,
    pub namespace: String,
    /// Labels of the Deployment's pods: a webhook Service that selects them reaches this process.
    pub pod_labels: BTreeMap<String, String>,
    /// Container port of the webhook listener in the Deployment (15017).
    pub webhook_container_port: i32,
    pub ports: Ports,
    /// Working directory: relative paths istiod reads (mesh, injection files) and writes (certs).
    pub dir: PathBuf,
    pub log: PathBuf,
}

/// How istiod is fed: what the operator applied (ConfigMaps in the cluster), or upstream's
/// ConfigMaps given as the files istiod prefers when present.
pub enum Config<'a> {
    Cluster,
    Files(&'a UpstreamConfig),
}

impl Istiod {
    /// Starts the istiod of `deployment` (as the operator applied it) and waits until `/ready`.
    pub async fn start(
        admin: &Client,
        deployment: &Deployment,
        config: Config<'_>,
    ) -> Result<Istiod> {
        let name = deployment.metadata.name.clone().unwrap_or_default();
        let namespace = deployment.metadata.namespace.clone().unwrap_or_default();
        let spec = deployment
            .spec
            .as_ref()
            .and_then(|s| s.template.spec.as_ref())
            .ok_or_else(|| anyhow!("Deployment {namespace}/{name} has no pod spec"))?;
        let pod_labels = deployment
            .spec
            .as_ref()
            .and_then(|s| s.template.metadata.as_ref())
            .and_then(|m| m.labels.clone())
            .unwrap_or_default();
        let c = spec
            .containers
            .iter()
            .find(|c| c.name == "discovery")
            .ok_or_else(|| {
                anyhow!("Deployment {namespace}/{name} has no container \"discovery\"")
            })?;
        let image = c.image.clone().unwrap_or_default();
        let tag =
            image_tag(&image).ok_or_else(|| anyhow!("discovery image {image:?} has no tag"))?;
        // A variant (e.g. -distroless) is the same binary.
        let release = tag.split('-').next().unwrap_or(&tag).to_string();
        let bin = binary(&release);
        ensure!(
            bin.is_file(),
            "{} missing for image {image}: run `make istiod`",
            bin.display()
        );
        let webhook_container_port = c
            .ports
            .iter()
            .flatten()
            .find(|p| p.container_port == 15017)
            .map(|p| p.container_port)
            .ok_or_else(|| anyhow!("discovery container of {name} does not expose 15017"))?;

        let sa_name = spec
            .service_account_name
            .clone()
            .unwrap_or_else(|| "default".into());
        let sa = ServiceAccountAccess::create(admin, &namespace, &sa_name).await?;

        let dir = std::env::temp_dir().join(format!("e2e-istiod-{}-{}", name, random_suffix(6)));
        std::fs::create_dir_all(&dir)?;
        if let Config::Files(up) = &config {
            up.write_files(&dir)?;
        }
        let pod_name = format!("{name}-e2e-{}", random_suffix(5));
        let mut env: Vec<(String, String)> = Vec::new();
        let mut revision = String::new();
        for e in c.env.iter().flatten() {
            let value = if let Some(v) = &e.value {
                Some(v.clone())
            } else if let Some(from) = &e.value_from {
                if let Some(f) = &from.field_ref {
                    match f.field_path.as_str() {
                        "metadata.name" => Some(pod_name.clone()),
                        "metadata.namespace" => Some(namespace.clone()),
                        "spec.serviceAccountName" => Some(sa_name.clone()),
                        "status.podIP" | "status.hostIP" => Some("127.0.0.1".into()),
                        "spec.nodeName" => Some("e2e-local".into()),
                        other => bail!("env {} of {name}: unhandled fieldRef {other}", e.name),
                    }
                } else {
                    // resourceFieldRef (GOMAXPROCS, GOMEMLIMIT): left to the Go runtime here.
                    None
                }
            } else {
                None
            };
            if let Some(v) = value {
                if e.name == "REVISION" {
                    revision = v.clone();
                }
                env.push((e.name.clone(), v));
            }
        }
        // Its serving certificate also names localhost: a local ztunnel reaches it there (the
        // ztunnel of 1.23 checks the address's own host name; 1.24+ take ALT_XDS_HOSTNAME).
        if !env.iter().any(|(k, _)| k == "ISTIOD_CUSTOM_HOST") {
            env.push(("ISTIOD_CUSTOM_HOST".into(), "localhost".into()));
        }
        // A free port can be taken between the probe and istiod's bind (an outgoing loopback
        // connection's ephemeral port): then istiod exits at once, and is started again on
        // other ports.
        let mut attempt = 0;
        loop {
            attempt += 1;
            let ports = Ports {
                http: free_port()?,
                grpc: free_port()?,
                secure_grpc: free_port()?,
                https: free_port()?,
                monitoring: free_port()?,
                ctrlz: free_port()?,
            };
            let mut args: Vec<String> = c.args.clone().unwrap_or_default();
            // Later flags win: every listener on loopback, whatever the Deployment says.
            args.extend([
                format!("--httpAddr=127.0.0.1:{}", ports.http),
                format!("--grpcAddr=127.0.0.1:{}", ports.grpc),
                format!("--secureGRPCAddr=127.0.0.1:{}", ports.secure_grpc),
                format!("--httpsAddr=127.0.0.1:{}", ports.https),
                format!("--monitoringAddr=127.0.0.1:{}", ports.monitoring),
                // ControlZ's fixed default port (9876) would clash between two istiods.
                "--ctrlz_address=127.0.0.1".to_string(),
                format!("--ctrlz_port={}", ports.ctrlz),
                format!("--kubeconfig={}", sa.kubeconfig.display()),
            ]);
            let log = dir.join("istiod.log");
            let out = std::fs::File::create(&log)?;
            let child = tokio::process::Command::new(&bin)
                .args(&args)
                .env_clear()
                .env("PATH", "/usr/bin:/bin")
                .env("HOME", &dir)
                .envs(env.clone())
                .current_dir(&dir)
                .stdout(std::process::Stdio::from(out.try_clone()?))
                .stderr(std::process::Stdio::from(out))
                .kill_on_drop(true)
                .spawn()
                .with_context(|| format!("starting {}", bin.display()))?;
            let mut istiod = Istiod {
                child,
                tag: release.clone(),
                revision: revision.clone(),
                namespace: namespace.clone(),
                pod_labels: pod_labels.clone(),
                webhook_container_port,
                ports,
                dir: dir.clone(),
                log,
            };
            let started = tokio::time::Instant::now();
            match wait_answering(
                &mut istiod.child,
                istiod.ports.http,
                "/ready",
                Duration::from_secs(90),
            )
            .await
            {
                Startup::Answering => {
                    eprintln!("istiod {} ready after {:?}", istiod.tag, started.elapsed());
                    return Ok(istiod);
                }
                Startup::Exited(_)
                    if attempt < 3 && istiod.log_text().contains("address already in use") =>
                {
                    eprintln!("istiod {}: a port was taken meanwhile; again", istiod.tag);
                }
                Startup::Exited(status) => bail!(
                    "istiod exited with {status}\n--- istiod log (last 40 lines):\n{}",
                    istiod.log_tail(40)
                ),
                Startup::TimedOut => bail!(
                    "istiod not ready after 90 s\n--- istiod log (last 40 lines):\n{}",
                    istiod.log_tail(40)
                ),
            }
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn log_tail(&self, n: usize) -> String {
        log_tail(&self.log, n)
    }

    /// Error lines of the log (istiod logs `<time>\terror\t<scope>\t<message>`).
    pub fn error_lines(&self) -> Vec<String> {
        self.log_text()
            .lines()
            .filter(|l| l.split('\t').nth(1) == Some("error"))
            .map(str::to_string)
            .collect()
    }

    /// The version the running binary reports on its debug endpoint.
    pub async fn version(&self) -> Result<String> {
        let out = tokio::process::Command::new(binary(&self.tag))
            .args(["version", "-s"])
            .output()
            .await?;
        let text = String::from_utf8_lossy(&out.stdout);
        Ok(text
            .trim()
            .trim_start_matches("client version:")
            .trim()
            .to_string())
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Remote addresses of this process's TCP connections that are not loopback (must be none).
    pub fn non_loopback_peers(&self) -> Vec<String> {
        self.pid().map(non_loopback_peers).unwrap_or_default()
    }

    /// Kills the process and removes its working directory (kept when a test fails instead,
    /// with the log and the certificates, for a look).
    pub async fn stop(mut self) -> Result<()> {
        self.child.kill().await?;
        let _ = std::fs::remove_dir_all(&self.dir);
        Ok(())
    }
}

/// How a just-started process came up.
pub enum Startup {
    Answering,
    Exited(std::process::ExitStatus),
    TimedOut,
}

/// Polls `path` on 127.0.0.1:`port` every 250 ms until it answers 200, `child` exits or
/// `within` has passed. By hand, not `eventually`: each round also checks that the process lives.
pub async fn wait_answering(
    child: &mut tokio::process::Child,
    port: u16,
    path: &str,
    within: Duration,
) -> Startup {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Startup::Exited(status);
        }
        if http_get(port, path).await.is_ok_and(|(c, _)| c == 200) {
            return Startup::Answering;
        }
        if tokio::time::Instant::now() > deadline {
            return Startup::TimedOut;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The last `n` lines of the log file at `path` (empty when unreadable).
pub fn log_tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines
        .get(lines.len().saturating_sub(n)..)
        .unwrap_or_default()
        .join("\n")
}

/// Remote addresses of process `pid`'s TCP connections that are not loopback (must be none).
pub fn non_loopback_peers(pid: u32) -> Vec<String> {
    let out = std::process::Command::new("ss")
        .args(["-Htnp", "state", "all"])
        .output();
    let Ok(out) = out else { return vec![] };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(&format!("pid={pid},")))
        .filter_map(|l| l.split_whitespace().nth(4).map(str::to_string))
        .filter(|peer| {
            let host = peer.rsplit_once(':').map(|(h, _)| h).unwrap_or(peer);
            let host = host.trim_start_matches('[').trim_end_matches(']');
            !(host == "*" || host.starts_with("127.") || host == "::1" || host == "0.0.0.0")
        })
        .collect()
}

/// The namespace an error line of istiod's namespace controller is about (its work-queue key):
/// `… error handling <namespace>, retrying …<TAB>controller=namespace controller`.
pub fn namespace_controller_key(line: &str) -> Option<&str> {
    if !line.contains("controller=namespace controller") {
        return None;
    }
    let (_, rest) = line.split_once("error handling ")?;
    rest.split_once(',').map(|(key, _)| key.trim())
}

/// `hub/name:tag` → `tag` (a digest has no tag).
fn image_tag(image: &str) -> Option<String> {
    let last = image.rsplit('/').next()?;
    last.split_once(':').map(|(_, t)| t.to_string())
}

/// A plain HTTP/1.0 GET on loopback.
pub async fn http_get(port: u16, path: &str) -> Result<(u16, String)> {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
        .await?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await?;
    split_response(&raw)
}

fn split_response(raw: &[u8]) -> Result<(u16, String)> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow!("malformed HTTP response: {text:.200}"))?;
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| anyhow!("no status in {head:.200}"))?;
    Ok((code, body.to_string()))
}

/// POSTs JSON over TLS to 127.0.0.1:`port`, trusting only `ca_pem` and checking the
/// certificate for `server_name` (the Service DNS name the API server would use).
pub async fn https_post(
    port: u16,
    server_name: &str,
    ca_pem: &[u8],
    path: &str,
    body: &Value,
) -> Result<(u16, String)> {
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::{self, pki_types::CertificateDer, pki_types::ServerName};
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem) {
        roots.add(cert.context("caBundle PEM")?)?;
    }
    ensure!(!roots.is_empty(), "the caBundle holds no certificate");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let name = ServerName::try_from(server_name.to_string())?;
    let mut tls = connector
        .connect(name, tcp)
        .await
        .with_context(|| format!("TLS to the webhook as {server_name}"))?;
    let payload = serde_json::to_vec(body)?;
    // HTTP/1.0: Go answers without chunked encoding and closes the connection.
    let head = format!(
        "POST {path} HTTP/1.0\r\nHost: {server_name}\r\nContent-Type: application/json\r\nAccept: application/json\r\nContent-Length: {}\r\n\r\n",
        payload.len()
    );
    tls.write_all(head.as_bytes()).await?;
    tls.write_all(&payload).await?;
    tls.flush().await?;
    let mut raw = Vec::new();
    match tls.read_to_end(&mut raw).await {
        Ok(_) => {}
        // Go closes without close_notify; the body is complete by then.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !raw.is_empty() => {}
        Err(e) => return Err(e.into()),
    }
    split_response(&raw)
}

// ---------------------------------------------------------------------------------------------
// admission, as the API server would do it

/// What the API server would do with one object at admission.
#[derive(Debug, Clone)]
pub struct Admitted {
    /// The object after every mutating webhook's patch.
    pub object: Value,
    /// `<configuration>/<webhook>` of every webhook the object was sent to, in call order.
    pub called: Vec<String>,
    /// Refusals (`allowed: false`) with their messages.
    pub denied: Vec<(String, String)>,
}

/// Which kind of object, as the webhook rules see it.
#[derive(Debug, Clone)]
pub struct Target {
    pub group: String,
    pub version: String,
    pub resource: String,
    pub kind: String,
}

impl Target {
    pub fn pod() -> Target {
        Target {
            group: String::new(),
            version: "v1".into(),
            resource: "pods".into(),
            kind: "Pod".into(),
        }
    }
    pub fn virtual_service() -> Target {
        Target {
            group: "networking.istio.io".into(),
            version: "v1".into(),
            resource: "virtualservices".into(),
            kind: "VirtualService".into(),
        }
    }
}

/// Plays the API server's admission for the webhooks the operator applied.
pub struct Admission<'a> {
    pub client: &'a Client,
    pub istiods: Vec<&'a Istiod>,
}

/// Every webhook of every configuration of kind `$kind`, in the order the API server calls
/// them: configurations by name, each one's webhooks in order. A macro because the mutating and
/// validating webhook types have the same fields but no trait in common.
macro_rules! webhooks {
    ($client:expr, $kind:ty) => {{
        let configs: Api<$kind> = Api::all($client.clone());
        let mut list = configs.list(&ListParams::default()).await?.items;
        list.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        list.into_iter()
            .flat_map(|c| {
                let cname = c.metadata.name.clone().unwrap_or_default();
                c.webhooks
                    .unwrap_or_default()
                    .into_iter()
                    .map(move |w| Hook {
                        id: format!("{cname}/{}", w.name),
                        client_config: w.client_config,
                        rules: w.rules.unwrap_or_default(),
                        namespace_selector: w.namespace_selector,
                        object_selector: w.object_selector,
                        failure_policy: w.failure_policy,
                    })
            })
            .collect::<Vec<Hook>>()
    }};
}

struct Hook {
    id: String,
    client_config: WebhookClientConfig,
    rules: Vec<RuleWithOperations>,
    namespace_selector: Option<LabelSelector>,
    object_selector: Option<LabelSelector>,
    failure_policy: Option<String>,
}

impl Admission<'_> {
    /// Runs the mutating webhooks on `object` (a CREATE in `namespace`), starting from the
    /// object as the API server has it before webhooks (a dry-run create: defaults and built-in
    /// admission applied). Returns the patched object; nothing is created.
    pub async fn mutate(
        &self,
        target: &Target,
        namespace: &str,
        object: &Value,
    ) -> Result<Admitted> {
        let defaulted = self.dry_run_create(target, namespace, object).await?;
        self.mutate_defaulted(target, namespace, defaulted).await
    }

    /// [`Admission::mutate`] from an object already as the API server has it before webhooks
    /// (from [`Admission::dry_run_create`]), so that two runs see the very same input.
    pub async fn mutate_defaulted(
        &self,
        target: &Target,
        namespace: &str,
        defaulted: Value,
    ) -> Result<Admitted> {
        let hooks = webhooks!(self.client, MutatingWebhookConfiguration);
        self.run(hooks, target, namespace, defaulted, true).await
    }

    /// Runs the validating webhooks on `object` (a CREATE in `namespace`).
    pub async fn validate(
        &self,
        target: &Target,
        namespace: &str,
        object: &Value,
    ) -> Result<Admitted> {
        let hooks = webhooks!(self.client, ValidatingWebhookConfiguration);
        let mut obj = object.clone();
        if obj["metadata"]["namespace"].is_null() {
            obj["metadata"]["namespace"] = json!(namespace);
        }
        self.run(hooks, target, namespace, obj, false).await
    }

    async fn run(
        &self,
        hooks: Vec<Hook>,
        target: &Target,
        namespace: &str,
        mut object: Value,
        mutating: bool,
    ) -> Result<Admitted> {
        let ns: Api<Namespace> = Api::all(self.client.clone());
        let ns_labels = ns.get(namespace).await?.metadata.labels.unwrap_or_default();
        let obj_labels: BTreeMap<String, String> =
            serde_json::from_value(object["metadata"]["labels"].clone()).unwrap_or_default();
        let mut out = Admitted {
            object: Value::Null,
            called: vec![],
            denied: vec![],
        };
        for hook in hooks {
            if !hook.rules.iter().any(|r| rule_matches(r, target)) {
                continue;
            }
            if !selector_matches(hook.namespace_selector.as_ref(), &ns_labels)?
                || !selector_matches(hook.object_selector.as_ref(), &obj_labels)?
            {
                continue;
            }
            out.called.push(hook.id.clone());
            let review = json!({
                "apiVersion": "admission.k8s.io/v1",
                "kind": "AdmissionReview",
                "request": {
                    "uid": format!("e2e-{}", random_suffix(12)),
                    "kind": {"group": target.group, "version": target.version, "kind": target.kind},
                    "resource": {"group": target.group, "version": target.version, "resource": target.resource},
                    "requestKind": {"group": target.group, "version": target.version, "kind": target.kind},
                    "requestResource": {"group": target.group, "version": target.version, "resource": target.resource},
                    "name": object["metadata"]["name"],
                    "namespace": namespace,
                    "operation": "CREATE",
                    "userInfo": {"username": "e2e-admin", "groups": ["system:masters", "system:authenticated"]},
                    "object": object,
                    "oldObject": null,
                    "dryRun": false,
                    "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"},
                }
            });
            let response = match self.call(&hook, &review).await {
                Ok(r) => r,
                Err(e) if hook.failure_policy.as_deref() == Some("Ignore") => {
                    out.denied
                        .push((hook.id.clone(), format!("call failed (ignored): {e:#}")));
                    continue;
                }
                Err(e) => return Err(e.context(format!("calling webhook {}", hook.id))),
            };
            let resp = &response["response"];
            if resp["allowed"] != json!(true) {
                out.denied.push((
                    hook.id.clone(),
                    resp["status"]["message"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                ));
                continue;
            }
            if mutating && let Some(p) = resp["patch"].as_str() {
                ensure!(
                    resp["patchType"] == "JSONPatch",
                    "webhook {} answered patchType {}",
                    hook.id,
                    resp["patchType"]
                );
                use base64::Engine as _;
                let bytes = base64::engine::general_purpose::STANDARD.decode(p)?;
                let patch: json_patch::Patch = serde_json::from_slice(&bytes)
                    .with_context(|| format!("patch of {}", hook.id))?;
                json_patch::patch(&mut object, &patch)
                    .with_context(|| format!("applying the patch of {}", hook.id))?;
            }
        }
        out.object = object;
        Ok(out)
    }

    /// The API server's call: Service → the istiod process it selects, TLS trusted by caBundle.
    async fn call(&self, hook: &Hook, review: &Value) -> Result<Value> {
        let cc = &hook.client_config;
        ensure!(
            cc.url.is_none(),
            "webhook {} uses a URL; only Services are expected",
            hook.id
        );
        let svc_ref = cc
            .service
            .as_ref()
            .ok_or_else(|| anyhow!("webhook {} has no service", hook.id))?;
        let ca = cc
            .ca_bundle
            .as_ref()
            .map(|b| b.0.clone())
            .filter(|b| !b.is_empty())
            .ok_or_else(|| {
                anyhow!(
                    "webhook {} has an empty caBundle (istiod patches it)",
                    hook.id
                )
            })?;
        let services: Api<Service> = Api::namespaced(self.client.clone(), &svc_ref.namespace);
        let svc = services.get(&svc_ref.name).await.with_context(|| {
            format!(
                "Service {}/{} of webhook {}",
                svc_ref.namespace, svc_ref.name, hook.id
            )
        })?;
        let spec = svc.spec.clone().unwrap_or_default();
        let selector = spec.selector.clone().unwrap_or_default();
        let port = svc_ref.port.unwrap_or(443);
        let sp = spec
            .ports
            .iter()
            .flatten()
            .find(|p| p.port == port)
            .ok_or_else(|| {
                anyhow!(
                    "Service {} has no port {port} (webhook {})",
                    svc_ref.name,
                    hook.id
                )
            })?;
        let target_port = match &sp.target_port {
            Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(p)) => *p,
            None => port,
            Some(other) => bail!(
                "Service {} port {port}: named targetPort {other:?} not handled",
                svc_ref.name
            ),
        };
        let istiod = self
            .istiods
            .iter()
            .find(|i| {
                i.namespace == svc_ref.namespace
                    && !selector.is_empty()
                    && selector.iter().all(|(k, v)| i.pod_labels.get(k) == Some(v))
            })
            .ok_or_else(|| {
                anyhow!(
                    "webhook {} → Service {}/{} selects {selector:?}: no running istiod has those pod labels",
                    hook.id,
                    svc_ref.namespace,
                    svc_ref.name
                )
            })?;
        ensure!(
            target_port == istiod.webhook_container_port,
            "Service {} port {port} targets {target_port}, istiod's webhook listens on {}",
            svc_ref.name,
            istiod.webhook_container_port
        );
        let path = svc_ref.path.clone().unwrap_or_else(|| "/".into());
        let server_name = format!("{}.{}.svc", svc_ref.name, svc_ref.namespace);
        let (code, body) = https_post(istiod.ports.https, &server_name, &ca, &path, review).await?;
        ensure!(
            code == 200,
            "webhook {} answered HTTP {code}: {body:.500}",
            hook.id
        );
        Ok(serde_json::from_str(&body)?)
    }

    /// The object as the API server would store it (defaults, built-in admission; webhooks are
    /// off), without storing it. Server-set metadata of `object` is dropped first.
    pub async fn dry_run_create(
        &self,
        target: &Target,
        namespace: &str,
        object: &Value,
    ) -> Result<Value> {
        let mut object = object.clone();
        if let Some(m) = object["metadata"].as_object_mut() {
            for k in [
                "uid",
                "resourceVersion",
                "creationTimestamp",
                "managedFields",
                "generation",
            ] {
                m.remove(k);
            }
        }
        if let Some(o) = object.as_object_mut() {
            o.remove("status");
        }
        let ar = ApiResource {
            group: target.group.clone(),
            version: target.version.clone(),
            api_version: if target.group.is_empty() {
                target.version.clone()
            } else {
                format!("{}/{}", target.group, target.version)
            },
            kind: target.kind.clone(),
            plural: target.resource.clone(),
        };
        let api: Api<DynamicObject> = Api::namespaced_with(self.client.clone(), namespace, &ar);
        let obj: DynamicObject = serde_json::from_value(object)?;
        let pp = PostParams {
            dry_run: true,
            ..Default::default()
        };
        Ok(serde_json::to_value(api.create(&pp, &obj).await?)?)
    }
}

fn rule_matches(r: &RuleWithOperations, t: &Target) -> bool {
    let any = |list: &Option<Vec<String>>, v: &str| {
        list.as_ref()
            .is_some_and(|l| l.iter().any(|x| x == "*" || x == v))
    };
    any(&r.operations, "CREATE")
        && any(&r.api_groups, &t.group)
        && any(&r.api_versions, &t.version)
        && any(&r.resources, &t.resource)
}

/// A Kubernetes label selector (nil matches everything, as for webhooks).
pub fn selector_matches(
    sel: Option<&LabelSelector>,
    labels: &BTreeMap<String, String>,
) -> Result<bool> {
    let Some(sel) = sel else { return Ok(true) };
    for (k, v) in sel.match_labels.iter().flatten() {
        if labels.get(k) != Some(v) {
            return Ok(false);
        }
    }
    for e in sel.match_expressions.iter().flatten() {
        let values = e.values.clone().unwrap_or_default();
        let have = labels.get(&e.key);
        let ok = match e.operator.as_str() {
            "In" => have.is_some_and(|v| values.contains(v)),
            "NotIn" => have.is_none_or(|v| !values.contains(v)),
            "Exists" => have.is_some(),
            "DoesNotExist" => have.is_none(),
            other => bail!("unknown selector operator {other}"),
        };
        if !ok {
            return Ok(false);
        }
    }
    Ok(true)
}

// ---------------------------------------------------------------------------------------------
// upstream's ConfigMaps, rendered by real Helm

/// The `istio` and `istio-sidecar-injector` ConfigMaps of the upstream chart.
#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    pub mesh: String,
    pub mesh_networks: String,
    pub injector_config: String,
    pub injector_values: String,
}

impl UpstreamConfig {
    /// `helm template` of upstream's istio-discovery chart at `tag` with `set` values.
    pub async fn render(
        tag: &str,
        namespace: &str,
        revision: &str,
        set: &[(&str, &str)],
    ) -> Result<UpstreamConfig> {
        let helm = helm().ok_or_else(|| anyhow!("no Helm built (e2e/build-binaries.sh helm)"))?;
        let chart = source(tag).join("manifests/charts/istio-control/istio-discovery");
        let mut cmd = tokio::process::Command::new(&helm);
        cmd.args(["template", "istiod"])
            .arg(&chart)
            .args(["--namespace", namespace]);
        let mut sets: Vec<String> = vec![format!("revision={revision}")];
        sets.extend(set.iter().map(|(k, v)| format!("{k}={v}")));
        for s in &sets {
            cmd.args(["--set", s]);
        }
        // Helm must never reach out: no repositories, no plugins, a private home.
        let home = std::env::temp_dir().join(format!("e2e-helm-{}", random_suffix(6)));
        cmd.env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("HOME", &home)
            .env("HELM_CACHE_HOME", home.join("cache"))
            .env("HELM_CONFIG_HOME", home.join("config"))
            .env("HELM_DATA_HOME", home.join("data"));
        let out = cmd
            .output()
            .await
            .with_context(|| format!("running {}", helm.display()))?;
        let _ = std::fs::remove_dir_all(&home);
        ensure!(
            out.status.success(),
            "helm template {}: {}",
            chart.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        let docs = crate::parse_yaml_documents(&String::from_utf8_lossy(&out.stdout))?;
        let suffix = if revision.is_empty() {
            String::new()
        } else {
            format!("-{revision}")
        };
        let cm = |name: String| -> Result<&Value> {
            docs.iter()
                .find(|d| d["kind"] == "ConfigMap" && d["metadata"]["name"] == name.as_str())
                .ok_or_else(|| anyhow!("upstream render has no ConfigMap {name}"))
        };
        let mesh_cm = cm(format!("istio{suffix}"))?;
        let inj = cm(format!("istio-sidecar-injector{suffix}"))?;
        let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
        Ok(UpstreamConfig {
            mesh: s(&mesh_cm["data"]["mesh"]),
            mesh_networks: s(&mesh_cm["data"]["meshNetworks"]),
            injector_config: s(&inj["data"]["config"]),
            injector_values: s(&inj["data"]["values"]),
        })
    }

    /// The files istiod reads instead of the ConfigMaps when they exist (paths relative to its
    /// working directory: `--meshConfig`, `--networksConfig`, the injection directory).
    fn write_files(&self, dir: &Path) -> Result<()> {
        let mesh = dir.join("etc/istio/config");
        let inject = dir.join("var/lib/istio/inject");
        std::fs::create_dir_all(&mesh)?;
        std::fs::create_dir_all(&inject)?;
        std::fs::write(mesh.join("mesh"), &self.mesh)?;
        std::fs::write(mesh.join("meshNetworks"), &self.mesh_networks)?;
        std::fs::write(inject.join("config"), &self.injector_config)?;
        std::fs::write(inject.join("values"), &self.injector_values)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors_follow_kubernetes_rules() {
        let labels: BTreeMap<String, String> =
            [("istio-injection".to_string(), "enabled".to_string())].into();
        let sel: LabelSelector = serde_json::from_value(json!({
            "matchExpressions": [{"key": "istio-injection", "operator": "In", "values": ["enabled"]},
                                 {"key": "istio.io/rev", "operator": "DoesNotExist"}]
        }))
        .unwrap();
        assert!(selector_matches(Some(&sel), &labels).unwrap());
        let sel: LabelSelector = serde_json::from_value(json!({
            "matchExpressions": [{"key": "istio-injection", "operator": "NotIn", "values": ["enabled"]}]
        }))
        .unwrap();
        assert!(!selector_matches(Some(&sel), &labels).unwrap());
        assert!(selector_matches(None, &labels).unwrap());
    }

    #[test]
    fn namespace_controller_errors_name_their_namespace() {
        let line = "2026-12-03T12:08:00.303679Z\terror\tcontrollers\terror handling e2e-gc-cm-oi7ygw, and retry budget exceeded: error when creating configmap istio-ca-root-cert: namespaces \"e2e-gc-cm-oi7ygw\" not found\tcontroller=namespace controller";
        assert_eq!(namespace_controller_key(line), Some("e2e-gc-cm-oi7ygw"));
        let other = "2026-12-03T12:08:49.204684Z\terror\tcontrollers\terror handling istiod-default-validator, retrying (retry count: 10): webhook is not ready, retry\tcontroller=validation";
        assert_eq!(namespace_controller_key(other), None);
    }

    #[test]
    fn image_tags() {
        assert_eq!(
            image_tag("docker.io/istio/pilot:1.24.6").as_deref(),
            Some("1.24.6")
        );
        assert_eq!(
            image_tag("localhost:5000/istio/pilot:1.24.6-distroless").as_deref(),
            Some("1.24.6-distroless")
        );
        assert_eq!(image_tag("localhost:5000/istio/pilot"), None);
    }
}
