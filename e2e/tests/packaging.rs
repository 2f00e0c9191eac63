//! How platform teams install the operator (issue #12), end to end on the local control plane:
//!
//! - the OCI image `make image` writes: its config and layer, and the binary taken from it run
//!   with the image's own dynamic loader and libraries against the cluster;
//! - the Helm chart (manifests/chart) with real Helm v4: lint, `template` validated by the API
//!   server, install, upgrade to a chart whose CRD changed, uninstall keeping the CRD and every
//!   IstioInstall; its RBAC equals manifests/rbac.yaml;
//! - the README's install paths (Helm and `kubectl apply -k`), run as written;
//! - the GitOps health verdicts, computed by Flux's library (kstatus) and by Argo CD's Lua
//!   interpreter running manifests/gitops/argocd-health.lua (e2e/tools/cmd/gitopshealth), on the
//!   live IstioInstall at every phase: installing, Ready, Stalled, upgrading, uninstalling;
//! - every metric the dashboard and the alerts use, in a running operator's /metrics.
//!
//! These tests own the cluster-wide objects (the CRD, the `istio-install-operator` namespace,
//! ClusterRole and Helm release): one at a time (a lock), each from a cluster without them.

use anyhow::{Context as _, Result, anyhow, bail, ensure};
use istio_install_e2e::operator::installs;
use istio_install_e2e::{
    DEFAULT_TIMEOUT, ServiceAccountAccess, apply_crd_file, client, e2e_root, eventually,
    kubeconfig_path, kubectl_path, kwok_nodes, parse_yaml_documents, read_yaml_documents,
    repo_path, unique_name, wait_deployment_rolled_out,
};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Node};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Client;
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams};
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
const NS: &str = "istio-install-operator";
const RELEASE: &str = "istio-install-operator";
const CRD: &str = "istioinstalls.istioinstall.io";
const PHASE_TIMEOUT: Duration = Duration::from_secs(240);

// ---------------------------------------------------------------------------------------------
// tools

fn helm_path() -> Result<PathBuf> {
    let env = std::fs::read_to_string(repo_path("e2e/versions.env"))?;
    let version = env
        .lines()
        .find_map(|l| l.strip_prefix("HELM_VERSION="))
        .ok_or_else(|| anyhow!("HELM_VERSION missing in e2e/versions.env"))?;
    let p = e2e_root().join(format!("bin/helm-{version}/helm"));
    ensure!(p.is_file(), "{} missing: run `make helm`", p.display());
    Ok(p)
}

fn tool(name: &str) -> Result<PathBuf> {
    let p = e2e_root().join("bin/e2e-tools").join(name);
    ensure!(
        p.is_file(),
        "{} missing: run `make e2e-binaries`",
        p.display()
    );
    Ok(p)
}

/// The image layout `make image` writes (`IMAGE_LAYOUT`, as in the Makefile).
fn image_layout() -> PathBuf {
    if let Some(p) = std::env::var_os("IMAGE_LAYOUT").filter(|v| !v.is_empty()) {
        return PathBuf::from(p);
    }
    std::env::var_os("CARGO_TARGET_DIR")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_path("target"))
        .join("image/istio-install-operator")
}

/// Helm's own state (cache, config, data) in a directory of the test, so no user setting and
/// no repository index takes part.
fn helm_home() -> PathBuf {
    let dir = std::env::temp_dir().join("istio-install-e2e-helm-home");
    let _ = std::fs::create_dir_all(&dir);
    dir
}

/// Runs a command with the admin kubeconfig; its stdout, or an error with its stderr.
fn run(cmd: &mut Command, stdin: Option<&str>) -> Result<String> {
    let home = helm_home();
    cmd.env("KUBECONFIG", kubeconfig_path())
        .env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_DATA_HOME", home.join("data"))
        .current_dir(repo_path(""))
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let what = format!("{cmd:?}");
    let mut child = cmd.spawn().with_context(|| format!("starting {what}"))?;
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .expect("piped")
            .write_all(input.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!(
            "{what} failed ({}):\n{}\n{stdout}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(stdout)
}

fn helm(args: &[&str]) -> Result<String> {
    run(Command::new(helm_path()?).args(args), None)
}

fn kubectl(args: &[&str], stdin: Option<&str>) -> Result<String> {
    run(Command::new(kubectl_path()?).args(args), stdin)
}

// ---------------------------------------------------------------------------------------------
// the cluster's operator objects

/// A cluster without the operator: no Helm release, no IstioInstall (finalizers dropped: no
/// operator runs here), no CRD, no namespace, ClusterRole or ClusterRoleBinding of the operator.
async fn clean_slate(admin: &Client) -> Result<()> {
    let _ = helm(&[
        "uninstall",
        RELEASE,
        "-n",
        NS,
        "--ignore-not-found",
        "--wait",
    ]);
    let crds: Api<CustomResourceDefinition> = Api::all(admin.clone());
    if crds.get_opt(CRD).await?.is_some() {
        let api = installs(admin);
        for ii in api.list(&Default::default()).await?.items {
            let name = ii.metadata.name.clone().unwrap_or_default();
            api.patch(
                &name,
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"finalizers": null}})),
            )
            .await?;
            let _ = api.delete(&name, &DeleteParams::default()).await;
        }
        let _ = crds.delete(CRD, &DeleteParams::default()).await;
    }
    let roles: Api<ClusterRole> = Api::all(admin.clone());
    let _ = roles.delete(RELEASE, &DeleteParams::default()).await;
    let bindings: Api<ClusterRoleBinding> = Api::all(admin.clone());
    let _ = bindings.delete(RELEASE, &DeleteParams::default()).await;
    let namespaces: Api<Namespace> = Api::all(admin.clone());
    let _ = namespaces.delete(NS, &DeleteParams::default()).await;
    eventually(
        DEFAULT_TIMEOUT,
        "the operator's CRD and namespace are gone",
        || async {
            Ok(crds.get_opt(CRD).await?.is_none() && namespaces.get_opt(NS).await?.is_none())
        },
    )
    .await
}

/// What the other e2e tests expect to find: the repository's CRD.
async fn restore_crd(admin: &Client) -> Result<()> {
    apply_crd_file(admin, &repo_path("crds/istioinstall.io_istioinstalls.yaml")).await?;
    Ok(())
}

fn docs_by_kind_name(docs: &[Value]) -> Vec<(String, String, Value)> {
    let mut out: Vec<(String, String, Value)> = docs
        .iter()
        .map(|d| {
            (
                d["kind"].as_str().unwrap_or_default().to_string(),
                d["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                d.clone(),
            )
        })
        .collect();
    out.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
    out
}

/// The chart's RBAC (release `istio-install-operator` in its namespace) against
/// manifests/rbac.yaml: the same objects, names, namespaces, rules, bindings; the chart's labels
/// include the manifest's (Helm adds its own).
fn assert_rbac_equals_manifest(rendered: &[Value]) -> Result<()> {
    const RBAC_KINDS: [&str; 5] = [
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
    ];
    let strip = |mut d: Value| -> (Value, Value) {
        let labels = d["metadata"]
            .as_object_mut()
            .and_then(|m| m.remove("labels"))
            .unwrap_or(Value::Null);
        (d, labels)
    };
    let chart: Vec<Value> = rendered
        .iter()
        .filter(|d| RBAC_KINDS.contains(&d["kind"].as_str().unwrap_or_default()))
        .cloned()
        .collect();
    let manifest = read_yaml_documents(&repo_path("manifests/rbac.yaml"))?;
    let (chart, manifest) = (docs_by_kind_name(&chart), docs_by_kind_name(&manifest));
    let names = |l: &[(String, String, Value)]| -> Vec<String> {
        l.iter().map(|(k, n, _)| format!("{k}/{n}")).collect()
    };
    ensure!(
        names(&chart) == names(&manifest),
        "RBAC objects: the chart renders {:?}, manifests/rbac.yaml has {:?}",
        names(&chart),
        names(&manifest)
    );
    for ((kind, name, c), (_, _, m)) in chart.into_iter().zip(manifest) {
        let (c, c_labels) = strip(c);
        let (m, m_labels) = strip(m);
        ensure!(
            c == m,
            "{kind} {name}: the chart renders\n{c:#}\nmanifests/rbac.yaml has\n{m:#}"
        );
        for (k, v) in m_labels.as_object().into_iter().flatten() {
            ensure!(
                c_labels.get(k) == Some(v),
                "{kind} {name}: label {k}={v} of manifests/rbac.yaml missing in the chart's {c_labels}"
            );
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// the chart

#[tokio::test]
async fn the_chart_lints_renders_what_the_api_server_accepts_and_its_rbac_is_the_manifests()
-> Result<()> {
    let _serial = SERIAL.lock().await;
    let admin = client().await?;
    let out = helm(&["lint", "--strict", "manifests/chart"])?;
    ensure!(out.contains("0 chart(s) failed"), "{out}");

    // Defaults: the RBAC is manifests/rbac.yaml's, the CRD is the repository's and kept.
    let rendered = helm(&["template", RELEASE, "manifests/chart", "-n", NS])?;
    let docs = parse_yaml_documents(&rendered)?;
    assert_rbac_equals_manifest(&docs)?;
    let crd = docs
        .iter()
        .find(|d| d["kind"] == "CustomResourceDefinition")
        .ok_or_else(|| anyhow!("no CRD in the chart"))?;
    ensure!(crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep");
    let repo_crd = &read_yaml_documents(&repo_path("crds/istioinstall.io_istioinstalls.yaml"))?[0];
    ensure!(
        crd["spec"] == repo_crd["spec"],
        "the chart's CRD spec differs from crds/"
    );
    let kinds: BTreeSet<&str> = docs.iter().filter_map(|d| d["kind"].as_str()).collect();
    ensure!(
        kinds
            == BTreeSet::from([
                "ClusterRole",
                "ClusterRoleBinding",
                "CustomResourceDefinition",
                "Deployment",
                "Role",
                "RoleBinding",
                "ServiceAccount"
            ]),
        "default kinds: {kinds:?}"
    );

    // Every value the issue lists reaches the Deployment.
    let values = r#"
replicas: 2
image: {repository: registry.example.com/iio, digest: "sha256:0000000000000000000000000000000000000000000000000000000000000000"}
resources: {requests: {cpu: 50m, memory: 64Mi}, limits: {memory: 256Mi}}
leaderElection: {enabled: false}
logFormat: text
namespaces: {allowed: [istio-system, bookinfo], allowReserved: true}
nodeSelector: {kubernetes.io/os: linux}
tolerations: [{key: dedicated, operator: Equal, value: platform, effect: NoSchedule}]
affinity: {nodeAffinity: {requiredDuringSchedulingIgnoredDuringExecution: {nodeSelectorTerms: [{matchExpressions: [{key: type, operator: In, values: [kwok]}]}]}}}
priorityClassName: system-cluster-critical
extraLabels: {team: platform}
metrics: {service: {enabled: true}, serviceMonitor: {enabled: true}, prometheusRule: {enabled: true}, dashboard: {enabled: true}}
sample: {enabled: true}
"#;
    let values_file = std::env::temp_dir().join(format!("{}.yaml", unique_name("chart-values")));
    std::fs::write(&values_file, values)?;
    let values_path = values_file.to_string_lossy().into_owned();
    let rendered = helm(&[
        "template",
        RELEASE,
        "manifests/chart",
        "-n",
        NS,
        "-f",
        &values_path,
    ])?;
    let docs = parse_yaml_documents(&rendered)?;
    let find = |kind: &str| -> Result<&Value> {
        docs.iter()
            .find(|d| d["kind"] == kind)
            .ok_or_else(|| anyhow!("no {kind} rendered"))
    };
    let dep = find("Deployment")?;
    let pod = &dep["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    ensure!(dep["spec"]["replicas"] == 2);
    ensure!(
        container["image"]
            == "registry.example.com/iio@sha256:0000000000000000000000000000000000000000000000000000000000000000"
    );
    ensure!(container["resources"]["limits"]["memory"] == "256Mi");
    let args: Vec<&str> = container["args"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    for want in [
        "--leader-elect=false",
        "--log-json=false",
        "--allowed-namespaces=istio-system,bookinfo",
        "--allow-reserved-namespaces",
    ] {
        ensure!(args.contains(&want), "{want} not in {args:?}");
    }
    ensure!(pod["nodeSelector"]["kubernetes.io/os"] == "linux");
    ensure!(pod["tolerations"][0]["key"] == "dedicated");
    ensure!(pod["affinity"]["nodeAffinity"].is_object());
    ensure!(pod["priorityClassName"] == "system-cluster-critical");
    ensure!(
        pod["securityContext"]["runAsUser"] == 65532
            && pod["securityContext"]["runAsNonRoot"] == true
    );
    ensure!(container["securityContext"]["readOnlyRootFilesystem"] == true);
    for d in &docs {
        ensure!(
            d["metadata"]["labels"]["team"] == "platform",
            "{} {} lacks the extra label",
            d["kind"],
            d["metadata"]["name"]
        );
    }
    let rule = find("PrometheusRule")?;
    let alerts = &read_yaml_documents(&repo_path("manifests/chart/monitoring/alerts.yaml"))?[0];
    ensure!(
        rule["spec"] == alerts["spec"],
        "the PrometheusRule is not monitoring/alerts.yaml"
    );
    let dashboard = find("ConfigMap")?;
    let json_text = dashboard["data"]["istio-install-operator.json"]
        .as_str()
        .unwrap_or_default();
    let committed: Value = serde_json::from_str(&std::fs::read_to_string(repo_path(
        "manifests/chart/monitoring/dashboard.json",
    ))?)?;
    ensure!(serde_json::from_str::<Value>(json_text)? == committed);
    ensure!(find("ServiceMonitor")?["spec"]["endpoints"][0]["port"] == "http-metrics");
    let sample = find("IstioInstall")?;
    ensure!(sample["metadata"]["annotations"]["helm.sh/hook"] == "post-install");

    // A bad value is refused by name.
    let err = helm(&[
        "template",
        RELEASE,
        "manifests/chart",
        "--set",
        "logFormat=yaml",
    ])
    .expect_err("logFormat=yaml must fail");
    ensure!(
        err.to_string()
            .contains("logFormat: expected json or text, found \"yaml\""),
        "{err}"
    );

    // The API server accepts every object (dry run). The prometheus-operator kinds are left
    // out: the local cluster does not serve them (checked above against the committed files).
    clean_slate(&admin).await?;
    restore_crd(&admin).await?;
    kubectl(&["create", "namespace", NS], None)?;
    let served: Vec<String> = docs
        .iter()
        .filter(|d| {
            !matches!(
                d["kind"].as_str(),
                Some("ServiceMonitor" | "PrometheusRule")
            )
        })
        .map(|d| serde_json::to_string(d).expect("JSON"))
        .collect();
    let out = kubectl(
        &["apply", "--server-side", "--dry-run=server", "-f", "-"],
        Some(&served.join("\n")),
    )?;
    for kind in [
        "customresourcedefinition",
        "deployment",
        "service",
        "configmap",
        "istioinstall",
        "clusterrole",
    ] {
        ensure!(
            out.lines()
                .any(|l| l.starts_with(kind) && l.ends_with("(server dry run)")),
            "{kind} not accepted:\n{out}"
        );
    }
    let _ = std::fs::remove_file(values_file);
    clean_slate(&admin).await?;
    restore_crd(&admin).await
}

/// The chart's CRD with one more spec field, `e2eProbe`, and a new chart version.
fn chart_with_a_changed_crd(dir: &Path) -> Result<()> {
    let src = repo_path("manifests/chart");
    run(
        Command::new("cp").args([
            "-r",
            &format!("{}/.", src.display()),
            &dir.to_string_lossy(),
        ]),
        None,
    )?;
    let chart = std::fs::read_to_string(dir.join("Chart.yaml"))?;
    std::fs::write(
        dir.join("Chart.yaml"),
        chart.replace("\nversion: 0.1.0\n", "\nversion: 0.1.1-e2e\n"),
    )?;
    let mut crd =
        read_yaml_documents(&repo_path("crds/istioinstall.io_istioinstalls.yaml"))?.remove(0);
    let spec = crd
        .pointer_mut("/spec/versions/0/schema/openAPIV3Schema/properties/spec/properties")
        .and_then(Value::as_object_mut)
        .ok_or_else(|| anyhow!("the CRD has no spec properties"))?;
    spec.insert(
        "e2eProbe".into(),
        json!({"type": "string", "description": "added by the chart upgrade test"}),
    );
    crd["metadata"]["annotations"] = json!({"helm.sh/resource-policy": "keep"});
    std::fs::write(
        dir.join("templates/crd.yaml"),
        format!("{}\n", serde_json::to_string(&crd)?),
    )?;
    Ok(())
}

async fn apply_probe(admin: &Client, name: &str) -> Result<DynamicObject> {
    let obj: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "istioinstall.io/v1alpha1", "kind": "IstioInstall",
        "metadata": {"name": name},
        "spec": {"version": "1.24", "profile": "minimal", "e2eProbe": "kept"},
    }))?;
    Ok(installs(admin)
        .patch(name, &PatchParams::apply("e2e-test"), &Patch::Apply(&obj))
        .await?)
}

#[tokio::test]
async fn helm_installs_upgrades_to_a_changed_crd_and_uninstalls_keeping_the_crd_and_installs()
-> Result<()> {
    let _serial = SERIAL.lock().await;
    let admin = client().await?;
    clean_slate(&admin).await?;
    helm(&[
        "install",
        RELEASE,
        "manifests/chart",
        "-n",
        NS,
        "--create-namespace",
        "--set",
        "sample.enabled=true",
        "--wait",
        "--timeout",
        "3m",
    ])?;
    let deployments: Api<Deployment> = Api::namespaced(admin.clone(), NS);
    wait_deployment_rolled_out(&deployments, RELEASE, DEFAULT_TIMEOUT).await?;
    let api = installs(&admin);
    let sample = api
        .get("mesh")
        .await
        .context("the chart's sample IstioInstall")?;
    ensure!(sample.data["spec"]["profile"] == "ambient");

    // Before the upgrade the served schema has no such field: server-side apply refuses it.
    let err = apply_probe(&admin, "e2e-probe")
        .await
        .expect_err("spec.e2eProbe is not in the chart's CRD yet");
    ensure!(
        format!("{err:#}").contains(".spec.e2eProbe: field not declared in schema"),
        "{err:#}"
    );

    let dir = std::env::temp_dir().join(unique_name("chart-upgrade"));
    std::fs::create_dir_all(&dir)?;
    chart_with_a_changed_crd(&dir)?;
    helm(&[
        "upgrade",
        RELEASE,
        &dir.to_string_lossy(),
        "-n",
        NS,
        "--wait",
        "--timeout",
        "3m",
    ])?;
    let crds: Api<CustomResourceDefinition> = Api::all(admin.clone());
    let crd = serde_json::to_value(crds.get(CRD).await?)?;
    ensure!(
        crd.pointer("/spec/versions/0/schema/openAPIV3Schema/properties/spec/properties/e2eProbe")
            .is_some(),
        "helm upgrade did not upgrade the CRD"
    );
    // The new schema is served: the field is accepted and kept.
    eventually(
        DEFAULT_TIMEOUT,
        "the upgraded schema keeps spec.e2eProbe",
        || async { Ok(apply_probe(&admin, "e2e-probe").await?.data["spec"]["e2eProbe"] == "kept") },
    )
    .await?;
    let sample = api.get("mesh").await?;
    ensure!(
        sample.data["spec"]["profile"] == "ambient",
        "the upgrade changed the sample"
    );
    let out = helm(&["list", "-n", NS, "-o", "json"])?;
    ensure!(out.contains("0.1.1-e2e"), "{out}");

    helm(&["uninstall", RELEASE, "-n", NS, "--wait"])?;
    ensure!(
        crds.get_opt(CRD).await?.is_some(),
        "helm uninstall deleted the CRD"
    );
    for name in ["mesh", "e2e-probe"] {
        ensure!(
            api.get_opt(name).await?.is_some(),
            "helm uninstall deleted IstioInstall {name}"
        );
    }
    ensure!(deployments.get_opt(RELEASE).await?.is_none());
    let roles: Api<ClusterRole> = Api::all(admin.clone());
    ensure!(roles.get_opt(RELEASE).await?.is_none());
    let _ = std::fs::remove_dir_all(&dir);
    clean_slate(&admin).await?;
    restore_crd(&admin).await
}

// ---------------------------------------------------------------------------------------------
// the README's install paths

/// The ```bash blocks of the README between `heading` and the next heading of the same level.
fn readme_blocks(heading: &str) -> Result<Vec<String>> {
    let readme = std::fs::read_to_string(repo_path("README.md"))?;
    let level = heading.split(' ').next().unwrap_or("#");
    let start = readme
        .find(&format!("\n{heading}\n"))
        .ok_or_else(|| anyhow!("README.md has no heading {heading:?}"))?;
    let rest = &readme[start + heading.len() + 2..];
    let end = rest
        .match_indices(&format!("\n{level} "))
        .map(|(i, _)| i)
        .next()
        .unwrap_or(rest.len());
    let section = &rest[..end];
    let mut blocks = Vec::new();
    let mut parts = section.split("```");
    parts.next();
    while let (Some(block), _) = (parts.next(), parts.next()) {
        if let Some(code) = block.strip_prefix("bash\n") {
            blocks.push(code.to_string());
        }
    }
    ensure!(!blocks.is_empty(), "no ```bash block under {heading:?}");
    Ok(blocks)
}

/// Runs README commands as written, in the repository root, with the built helm and kubectl
/// first on PATH.
fn run_readme(block: &str) -> Result<String> {
    let path = format!(
        "{}:{}:/usr/bin:/bin",
        helm_path()?.parent().expect("dir").display(),
        kubectl_path()?.parent().expect("dir").display()
    );
    run(
        Command::new("bash")
            .args(["-euo", "pipefail", "-c", block])
            .env("PATH", path),
        None,
    )
}

async fn assert_operator_installed(admin: &Client) -> Result<()> {
    let crds: Api<CustomResourceDefinition> = Api::all(admin.clone());
    ensure!(crds.get_opt(CRD).await?.is_some(), "no CRD");
    let deployments: Api<Deployment> = Api::namespaced(admin.clone(), NS);
    wait_deployment_rolled_out(&deployments, RELEASE, DEFAULT_TIMEOUT).await?;
    let roles: Api<ClusterRole> = Api::all(admin.clone());
    let role = serde_json::to_value(roles.get(RELEASE).await?)?;
    let manifest = read_yaml_documents(&repo_path("manifests/rbac.yaml"))?;
    let want = manifest
        .iter()
        .find(|d| d["kind"] == "ClusterRole")
        .ok_or_else(|| anyhow!("no ClusterRole in manifests/rbac.yaml"))?;
    ensure!(
        role["rules"] == want["rules"],
        "the ClusterRole's rules differ"
    );
    Ok(())
}

#[tokio::test]
async fn the_readme_install_paths_work_as_written() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let admin = client().await?;

    clean_slate(&admin).await?;
    let helm_blocks = readme_blocks("### With Helm")?;
    run_readme(&helm_blocks[0])?;
    assert_operator_installed(&admin).await?;
    for block in &helm_blocks[1..] {
        run_readme(block)?;
    }
    let crds: Api<CustomResourceDefinition> = Api::all(admin.clone());
    ensure!(
        crds.get_opt(CRD).await?.is_some(),
        "the README's Helm uninstall removed the CRD"
    );

    clean_slate(&admin).await?;
    let kustomize_blocks = readme_blocks("### With kubectl apply -k")?;
    run_readme(&kustomize_blocks[0])?;
    assert_operator_installed(&admin).await?;
    for block in &kustomize_blocks[1..] {
        run_readme(block)?;
    }
    clean_slate(&admin).await?;
    restore_crd(&admin).await
}

// ---------------------------------------------------------------------------------------------
// the image, the operator taken from it, and the GitOps readers

/// A blob of the layout by digest.
fn blob(layout: &Path, digest: &str) -> PathBuf {
    layout.join("blobs").join(digest.replacen(':', "/", 1))
}

fn read_json(path: &Path) -> Result<Value> {
    serde_json::from_str(
        &std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?,
    )
    .with_context(|| format!("parsing {}", path.display()))
}

/// Checks the image and unpacks its layer into `root`; returns the image config.
fn unpack_image(root: &Path) -> Result<Value> {
    let layout = image_layout();
    let index = read_json(&layout.join("index.json"))
        .with_context(|| format!("no image at {} (run `make image`)", layout.display()))?;
    let manifest = read_json(&blob(
        &layout,
        index["manifests"][0]["digest"].as_str().unwrap_or_default(),
    ))?;
    ensure!(manifest["mediaType"] == "application/vnd.oci.image.manifest.v1+json");
    let config = read_json(&blob(
        &layout,
        manifest["config"]["digest"].as_str().unwrap_or_default(),
    ))?;
    let layers = manifest["layers"].as_array().cloned().unwrap_or_default();
    ensure!(
        layers.len() == 1,
        "one layer expected, found {}",
        layers.len()
    );
    let layer = blob(&layout, layers[0]["digest"].as_str().unwrap_or_default());
    let size = std::fs::metadata(&layer)
        .with_context(|| format!("{} (run `make image`)", layer.display()))?
        .len();
    eprintln!("image layer: {size} bytes compressed");
    let listing = run(
        Command::new("tar").args(["-tvzf", &layer.to_string_lossy()]),
        None,
    )?;
    let files: Vec<&str> = listing
        .lines()
        .filter(|l| !l.starts_with('d'))
        .filter_map(|l| l.split_whitespace().last())
        .collect();
    for f in &files {
        ensure!(
            *f == "usr/local/bin/istio-install-operator"
                || f.starts_with("lib/x86_64-linux-gnu/")
                || *f == "lib64/ld-linux-x86-64.so.2",
            "unexpected file in the image: {f}"
        );
    }
    ensure!(
        !files
            .iter()
            .any(|f| f.ends_with("/sh") || f.ends_with("bash")),
        "the image has a shell: {files:?}"
    );
    std::fs::create_dir_all(root)?;
    run(
        Command::new("tar").args([
            "-xzf",
            &layer.to_string_lossy(),
            "--no-same-owner",
            "-C",
            &root.to_string_lossy(),
        ]),
        None,
    )?;
    Ok(config)
}

/// The operator from the image: the image's dynamic loader runs the image's binary with the
/// image's libraries only (`--library-path`, an empty environment), since a chroot or a
/// container runtime is not available to an unprivileged test. What it maps is checked.
struct ImageOperator {
    child: tokio::process::Child,
    port: u16,
}

impl ImageOperator {
    async fn start(root: &Path, kubeconfig: &Path) -> Result<ImageOperator> {
        let port = istio_install_e2e::free_port()?;
        let log = std::fs::File::create(
            std::env::temp_dir().join(format!("istio-install-operator-image-{port}.log")),
        )?;
        let child = tokio::process::Command::new(root.join("lib64/ld-linux-x86-64.so.2"))
            .arg("--library-path")
            .arg(root.join("lib/x86_64-linux-gnu"))
            .arg(root.join("usr/local/bin/istio-install-operator"))
            .args([
                "run",
                "--leader-elect=true",
                "--metrics-addr",
                &format!("127.0.0.1:{port}"),
            ])
            .env_clear()
            .env("KUBECONFIG", kubeconfig)
            .env("POD_NAMESPACE", NS)
            .env("POD_NAME", "image-operator")
            .env("RUST_LOG", "info")
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .context("starting the image's operator")?;
        Ok(ImageOperator { child, port })
    }

    async fn get(&self, path: &str) -> Result<(u16, String)> {
        istio_install_e2e::operator::http_get(self.port, path).await
    }

    /// Every file the process maps comes from the image.
    fn check_maps(&self, root: &Path) -> Result<()> {
        let pid = self
            .child
            .id()
            .ok_or_else(|| anyhow!("the operator exited"))?;
        let maps = std::fs::read_to_string(format!("/proc/{pid}/maps"))?;
        let root = std::fs::canonicalize(root)?;
        let mut files = BTreeSet::new();
        for line in maps.lines() {
            if let Some(path) = line
                .split_whitespace()
                .nth(5)
                .filter(|p| p.starts_with('/'))
            {
                files.insert(path.to_string());
            }
        }
        ensure!(files.len() >= 4, "too few mapped files: {files:?}");
        for f in &files {
            ensure!(
                Path::new(f).starts_with(&root),
                "the operator maps {f}, which is not from the image ({})",
                root.display()
            );
        }
        Ok(())
    }
}

#[derive(Debug, PartialEq)]
struct Verdicts {
    kstatus: String,
    argocd: String,
    messages: String,
}

/// Flux's (kstatus) and Argo CD's (the Lua script) verdicts on the live object.
fn verdicts(obj: &DynamicObject) -> Result<Verdicts> {
    let out = run(
        Command::new(tool("gitopshealth")?).args([
            "--lua",
            &repo_path("manifests/gitops/argocd-health.lua").to_string_lossy(),
        ]),
        Some(&serde_json::to_string(obj)?),
    )?;
    let v: Value = serde_json::from_str(&out)?;
    Ok(Verdicts {
        kstatus: v["kstatus"]["status"].as_str().unwrap_or_default().into(),
        argocd: v["argocd"]["status"].as_str().unwrap_or_default().into(),
        messages: format!(
            "kstatus: {:?}; argocd: {:?}",
            v["kstatus"]["message"], v["argocd"]["message"]
        ),
    })
}

fn condition<'a>(ii: &'a DynamicObject, type_: &str) -> Option<&'a Value> {
    ii.data["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
}

fn is_true(ii: &DynamicObject, type_: &str) -> bool {
    condition(ii, type_).is_some_and(|c| c["status"] == "True")
}

fn observed(ii: &DynamicObject) -> bool {
    ii.data["status"]["observedGeneration"] == ii.metadata.generation.unwrap_or(-1)
}

/// Waits until the install is in the phase `is_phase` describes, then asserts both readers'
/// verdicts on that same object.
async fn expect_phase(
    api: &Api<DynamicObject>,
    name: &str,
    phase: &str,
    is_phase: impl Fn(&DynamicObject) -> bool,
    kstatus: &str,
    argocd: &str,
) -> Result<()> {
    let mut last = None;
    let deadline = tokio::time::Instant::now() + PHASE_TIMEOUT;
    let obj = loop {
        let obj = api.get(name).await?;
        if is_phase(&obj) {
            break obj;
        }
        if tokio::time::Instant::now() > deadline {
            bail!(
                "{name} never reached the phase {phase}; last status: {:#}",
                last.map(|o: DynamicObject| o.data["status"].clone())
                    .unwrap_or_default()
            );
        }
        last = Some(obj);
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let v = verdicts(&obj)?;
    eprintln!(
        "phase {phase}: kstatus {}, argocd {} ({})",
        v.kstatus, v.argocd, v.messages
    );
    ensure!(
        v.kstatus == kstatus && v.argocd == argocd,
        "phase {phase}: expected kstatus {kstatus} and Argo CD {argocd}, found kstatus {} and Argo CD {} ({}); status: {:#}",
        v.kstatus,
        v.argocd,
        v.messages,
        obj.data["status"]
    );
    Ok(())
}

async fn label_node(admin: &Client, node: &str, key: &str, value: Option<&str>) -> Result<()> {
    let nodes: Api<Node> = Api::all(admin.clone());
    nodes
        .patch(
            node,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {key: value}}})),
        )
        .await?;
    Ok(())
}

async fn merge_spec(api: &Api<DynamicObject>, name: &str, spec: Value) -> Result<()> {
    api.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": spec})),
    )
    .await?;
    Ok(())
}

/// Metric names a PromQL expression uses (the `istio_install_operator_` ones).
fn metric_names(expr: &str, out: &mut BTreeSet<String>) {
    let bytes = expr.as_bytes();
    let mut i = 0;
    while let Some(pos) = expr[i..].find("istio_install_operator_") {
        let start = i + pos;
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
            end += 1;
        }
        out.insert(expr[start..end].to_string());
        i = end;
    }
}

/// Every metric the dashboard and the alerts use.
fn monitoring_metric_names() -> Result<BTreeSet<String>> {
    let mut names = BTreeSet::new();
    let dashboard = read_json(&repo_path("manifests/chart/monitoring/dashboard.json"))?;
    for panel in dashboard["panels"].as_array().into_iter().flatten() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            metric_names(target["expr"].as_str().unwrap_or_default(), &mut names);
        }
    }
    for var in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        metric_names(var["definition"].as_str().unwrap_or_default(), &mut names);
    }
    let alerts = &read_yaml_documents(&repo_path("manifests/chart/monitoring/alerts.yaml"))?[0];
    for group in alerts["spec"]["groups"].as_array().into_iter().flatten() {
        for rule in group["rules"].as_array().into_iter().flatten() {
            metric_names(rule["expr"].as_str().unwrap_or_default(), &mut names);
        }
    }
    ensure!(names.len() >= 8, "too few metrics found: {names:?}");
    Ok(names)
}

/// The names /metrics declares: each family of a `# TYPE` line, with the series names a
/// Prometheus text exposition gives it (`_total` for a counter; `_bucket`, `_sum`, `_count` for a
/// histogram).
fn declared_series(body: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for line in body.lines() {
        let mut words = line.split_whitespace();
        if let (Some("#"), Some("TYPE"), Some(family), Some(kind)) =
            (words.next(), words.next(), words.next(), words.next())
        {
            let suffixes: &[&str] = match kind {
                "counter" => &["_total"],
                "histogram" => &["_bucket", "_sum", "_count"],
                _ => &[""],
            };
            for s in suffixes {
                out.insert(format!("{family}{s}"));
            }
        }
    }
    out
}

/// The series /metrics has samples of.
fn sampled_series(body: &str) -> BTreeSet<String> {
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_string)
        .collect()
}

#[tokio::test]
async fn the_image_runs_the_operator_and_flux_and_argo_cd_read_every_phase() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let admin = client().await?;
    let root = std::env::temp_dir().join(unique_name("image-root"));
    let config = unpack_image(&root)?;
    let c = &config["config"];
    ensure!(c["User"] == "65532:65532", "user: {}", c["User"]);
    ensure!(c["Entrypoint"] == json!(["/usr/local/bin/istio-install-operator"]));
    for label in [
        "org.opencontainers.image.source",
        "org.opencontainers.image.version",
        "org.opencontainers.image.licenses",
    ] {
        ensure!(
            c["Labels"][label].as_str().is_some_and(|v| !v.is_empty()),
            "label {label} missing: {}",
            c["Labels"]
        );
    }
    ensure!(c["Labels"]["org.opencontainers.image.licenses"] == "Apache-2.0");

    // The operator's ServiceAccount and RBAC come from the chart.
    clean_slate(&admin).await?;
    helm(&[
        "install",
        RELEASE,
        "manifests/chart",
        "-n",
        NS,
        "--create-namespace",
        "--wait",
        "--timeout",
        "3m",
    ])?;
    let sa = ServiceAccountAccess::create(&admin, NS, RELEASE).await?;
    let op = ImageOperator::start(&root, &sa.kubeconfig).await?;
    eventually(
        Duration::from_secs(60),
        "the image's operator is ready and leads",
        || async {
            let ready = op
                .get("/readyz")
                .await
                .map(|(c, _)| c == 200)
                .unwrap_or(false);
            let leads = op
                .get("/metrics")
                .await
                .map(|(_, b)| b.lines().any(|l| l == "istio_install_operator_leader 1"))
                .unwrap_or(false);
            Ok(ready && leads)
        },
    )
    .await?;
    op.check_maps(&root)?;

    let api = installs(&admin);
    let name = unique_name("gitops");
    let hold = "e2e.istioinstall.io/hold";
    let node = kwok_nodes(&admin)
        .await?
        .into_iter()
        .next()
        .and_then(|n| n.metadata.name)
        .ok_or_else(|| anyhow!("no kwok node"))?;
    let _ = label_node(&admin, &node, hold, None).await;

    // Installing: istiod cannot be scheduled until a node carries the label.
    let ii: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "istioinstall.io/v1alpha1", "kind": "IstioInstall",
        "metadata": {"name": name},
        "spec": {"version": "1.23", "profile": "minimal",
                 "components": {"pilot": {"k8s": {"nodeSelector": {hold: name}}}}},
    }))?;
    api.create(&Default::default(), &ii).await?;
    expect_phase(
        &api,
        &name,
        "installing",
        |o| observed(o) && is_true(o, "Reconciling") && !is_true(o, "Ready"),
        "InProgress",
        "Progressing",
    )
    .await?;

    // Ready.
    label_node(&admin, &node, hold, Some(&name)).await?;
    let ready_on = |minor: &'static str| {
        move |o: &DynamicObject| {
            observed(o)
                && is_true(o, "Ready")
                && o.data["status"]["installedVersion"]
                    .as_str()
                    .is_some_and(|v| v.starts_with(minor))
        }
    };
    expect_phase(
        &api,
        &name,
        "Ready",
        ready_on("1.23."),
        "Current",
        "Healthy",
    )
    .await?;

    // Stalled on a bad spec, then fixed.
    merge_spec(
        &api,
        &name,
        json!({"values": {"pilot": {"replicaCont": 2}}}),
    )
    .await?;
    expect_phase(
        &api,
        &name,
        "Stalled",
        |o| observed(o) && is_true(o, "Stalled"),
        "Failed",
        "Degraded",
    )
    .await?;
    merge_spec(&api, &name, json!({"values": null})).await?;
    expect_phase(
        &api,
        &name,
        "Ready again",
        ready_on("1.23."),
        "Current",
        "Healthy",
    )
    .await?;

    // Upgrading: the new istiod pods cannot be scheduled until the label is back.
    label_node(&admin, &node, hold, None).await?;
    merge_spec(&api, &name, json!({"version": "1.24"})).await?;
    expect_phase(
        &api,
        &name,
        "upgrading",
        |o| {
            observed(o)
                && condition(o, "Reconciling")
                    .is_some_and(|c| c["status"] == "True" && c["reason"] == "Upgrading")
        },
        "InProgress",
        "Progressing",
    )
    .await?;
    label_node(&admin, &node, hold, Some(&name)).await?;
    expect_phase(
        &api,
        &name,
        "Ready on 1.24",
        ready_on("1.24."),
        "Current",
        "Healthy",
    )
    .await?;

    // The dashboard's and the alerts' metrics, from the running operator.
    let (_, body) = op.get("/metrics").await?;
    let declared = declared_series(&body);
    let missing: Vec<String> = monitoring_metric_names()?
        .into_iter()
        .filter(|n| !declared.contains(n))
        .collect();
    ensure!(
        missing.is_empty(),
        "the dashboard or the alerts use metrics the operator does not expose: {missing:?}\n/metrics:\n{body}"
    );
    // What this scenario certainly produced has samples too.
    let sampled = sampled_series(&body);
    for name in [
        "istio_install_operator_reconciles_total",
        "istio_install_operator_reconcile_duration_seconds_bucket",
        "istio_install_operator_component_ready",
        "istio_install_operator_write_requests_total",
        "istio_install_operator_leader",
    ] {
        ensure!(
            sampled.contains(name),
            "no sample of {name} in /metrics:\n{body}"
        );
    }

    // Uninstalling: a finalizer of the test's keeps the object Terminating after the
    // operator's own uninstall is done.
    let finalizer = "e2e.istioinstall.io/hold";
    api.patch(
        &name,
        &PatchParams::default(),
        &Patch::Json::<()>(serde_json::from_value(json!([
            {"op": "add", "path": "/metadata/finalizers/-", "value": finalizer}
        ]))?),
    )
    .await?;
    api.delete(&name, &DeleteParams::default()).await?;
    expect_phase(
        &api,
        &name,
        "uninstalling",
        |o| o.metadata.deletion_timestamp.is_some(),
        "Terminating",
        "Progressing",
    )
    .await?;
    eventually(
        PHASE_TIMEOUT,
        "the operator finishes the uninstall",
        || async {
            let o = api.get(&name).await?;
            Ok(o.metadata.finalizers.as_deref() == Some(&[finalizer.to_string()][..]))
        },
    )
    .await?;
    api.patch(
        &name,
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await?;
    eventually(DEFAULT_TIMEOUT, "the IstioInstall is gone", || async {
        Ok(api.get_opt(&name).await?.is_none())
    })
    .await?;

    label_node(&admin, &node, hold, None).await?;
    drop(op);
    let _ = std::fs::remove_dir_all(&root);
    clean_slate(&admin).await?;
    restore_crd(&admin).await
}

#[test]
fn metric_names_are_read_from_promql() {
    let mut names = BTreeSet::new();
    metric_names(
        "sum by (le) (rate(istio_install_operator_reconcile_duration_seconds_bucket{job=~\"$job\"}[5m])) / istio_install_operator_leader",
        &mut names,
    );
    assert_eq!(
        names,
        BTreeSet::from([
            "istio_install_operator_leader".to_string(),
            "istio_install_operator_reconcile_duration_seconds_bucket".to_string()
        ])
    );
}
