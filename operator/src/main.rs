//! The `istio-install-operator` binary: `run`, `render`, `convert`, `crd` and `version`.

use clap::{Parser, Subcommand, ValueEnum};
use istio_install_operator::api::{IstioInstall, IstioInstallSpec, crd_helm_template, crd_yaml};
use istio_install_operator::{
    bundle, client, controller, migrate, render, telemetry, validate, values,
};
use serde_json::Value;
use std::process::ExitCode;
use std::sync::Arc;

#[derive(Parser)]
#[command(
    name = "istio-install-operator",
    version,
    about = "Installs and upgrades Istio from one IstioInstall resource"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the operator: reconcile IstioInstalls in the cluster of the current kubeconfig
    /// (or the in-cluster ServiceAccount).
    Run(RunArgs),
    /// Print the Kubernetes objects an IstioInstall installs, in apply order.
    Render(RenderArgs),
    /// Convert IstioOperator resources (istioctl's, or Istio's removed in-cluster operator's)
    /// into IstioInstalls; what does not carry over is listed on stderr.
    Convert(ConvertArgs),
    /// Print the IstioInstall CustomResourceDefinition.
    Crd(GenerateArgs),
    /// Print the operator's least-privilege RBAC (manifests/rbac.yaml), generated from the
    /// kinds it writes and the roles of the bundled Istio charts.
    Rbac(GenerateArgs),
    /// Print the operator version and the bundled Istio releases.
    Version,
}

#[derive(clap::Args)]
struct RenderArgs {
    /// An IstioInstall (or a bare spec) as YAML or JSON; `-` reads stdin.
    #[arg(short = 'f', long = "filename")]
    file: Option<String>,
    /// Istio version (`1.24` or `1.24.6`); overrides the file's spec.version.
    #[arg(long = "version")]
    version: Option<String>,
    /// Profile; overrides the file's spec.profile.
    #[arg(long)]
    profile: Option<String>,
    /// Set a spec field by path, like istioctl: `--set values.global.hub=quay.io/istio`,
    /// `--set meshConfig.accessLogFile=/dev/stdout`, `--set components.cni.enabled=true`.
    /// Paths not starting with a spec field are taken as `values.` paths.
    #[arg(long = "set", value_name = "PATH=VALUE")]
    set: Vec<String>,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Yaml)]
    output: Output,
    /// Name recorded in the `istioinstall.io/install` label (defaults to the file's metadata.name).
    #[arg(long)]
    name: Option<String>,
    /// Accept the reserved namespaces, as an operator started with the same flag does.
    #[arg(long, default_value_t = false)]
    allow_reserved_namespaces: bool,
}

#[derive(clap::Args)]
struct GenerateArgs {
    /// Print it as a template of the operator's Helm chart (manifests/chart/templates/).
    #[arg(long)]
    helm: bool,
}

#[derive(clap::Args)]
struct ConvertArgs {
    /// One or more IstioOperator documents as YAML; `-` reads stdin.
    #[arg(short = 'f', long = "filename")]
    file: String,
    /// The Istio release the IstioOperator runs (`istioctl version`); needed unless its
    /// spec.tag names a bundled release.
    #[arg(long = "version")]
    version: Option<String>,
}

#[derive(clap::Args)]
struct RunArgs {
    /// Address of the /livez, /readyz and /metrics endpoints.
    #[arg(long, env = "METRICS_ADDR", default_value = "0.0.0.0:8080")]
    metrics_addr: std::net::SocketAddr,
    /// Hold a Lease before reconciling, so several replicas are safe.
    #[arg(long, env = "LEADER_ELECT", default_value_t = true, action = clap::ArgAction::Set)]
    leader_elect: bool,
    /// Namespace of the leader-election Lease (the operator's own namespace).
    #[arg(long, env = "POD_NAMESPACE", default_value = "istio-install-operator")]
    lease_namespace: String,
    /// Name of the leader-election Lease.
    #[arg(long, default_value = "istio-install-operator")]
    lease_name: String,
    /// IstioInstalls reconciled at the same time.
    #[arg(long, env = "CONCURRENCY", default_value_t = 4)]
    concurrency: u16,
    /// Log as JSON lines.
    #[arg(long, env = "LOG_JSON", default_value_t = false)]
    log_json: bool,
    /// Let IstioInstalls put objects in (and enrol) the reserved namespaces: kube-system,
    /// kube-public, kube-node-lease and the operator's own.
    #[arg(long, env = "ALLOW_RESERVED_NAMESPACES", default_value_t = false)]
    allow_reserved_namespaces: bool,
    /// The only namespaces IstioInstalls may use (control plane, components, gateways,
    /// waypoints, enrolment), comma-separated; by default any but the reserved ones.
    #[arg(long, env = "ALLOWED_NAMESPACES", value_delimiter = ',')]
    allowed_namespaces: Vec<String>,
}

#[derive(Clone, Copy, ValueEnum)]
enum Output {
    Yaml,
    Json,
}

const SPEC_FIELDS: &[&str] = &[
    "version",
    "profile",
    "namespace",
    "revision",
    "hub",
    "tag",
    "values",
    "meshConfig",
    "components",
    "waypoints",
];

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => run_operator(args),
        Command::Render(args) => run_render(args),
        Command::Convert(args) => run_convert(args),
        // The CRD's schema is made from every bundle: none may be broken.
        Command::Crd(args) => bundles_load()
            .and_then(|()| {
                if args.helm {
                    crd_helm_template()
                } else {
                    crd_yaml()
                }
            })
            .map(|crd| print!("{crd}")),
        Command::Rbac(args) => {
            if args.helm {
                print!("{}", istio_install_operator::rbac::helm_template());
            } else {
                print!("{}", istio_install_operator::rbac::manifest());
            }
            Ok(())
        }
        Command::Version => {
            println!("istio-install-operator {}", env!("CARGO_PKG_VERSION"));
            let releases: Vec<String> = bundle::releases().iter().map(|r| r.to_string()).collect();
            println!("bundled Istio releases: {}", releases.join(", "));
            Ok(())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::from(2)
        }
    }
}

/// Every bundle loads and parses whole; otherwise the files that do not, by name.
fn bundles_load() -> Result<(), String> {
    let broken = bundle::load_errors();
    if broken.is_empty() {
        return Ok(());
    }
    Err(format!(
        "the chart bundles do not load ({} problem(s)): {}",
        broken.len(),
        broken.join("; ")
    ))
}

fn run_operator(args: RunArgs) -> Result<(), String> {
    telemetry::init_logging(args.log_json);
    // A file of the bundles that does not parse is a defect of the build (or of
    // ISTIO_INSTALL_CHARTS_DIR): refused here, before anything is watched or applied, rather
    // than as one failed install after another.
    bundles_load()?;
    let runtime =
        tokio::runtime::Runtime::new().map_err(|e| format!("starting the runtime: {e}"))?;
    runtime.block_on(async move {
        let no_client = |e: &dyn std::fmt::Display| {
            format!("no Kubernetes client (KUBECONFIG or in-cluster config): {e}")
        };
        let config = kube::Config::infer().await.map_err(|e| no_client(&e))?;
        let metrics = Arc::new(telemetry::Metrics::default());
        let ready = telemetry::Readiness::default();
        let fence = if args.leader_elect {
            controller::leader::Fence::closed()
        } else {
            metrics.leader.set(1);
            controller::leader::Fence::always_open()
        };
        let request_health = telemetry::ApiHealth::default();
        let clients = client::build(
            config,
            fence.clone(),
            metrics.clone(),
            request_health.clone(),
            ready.watches().clone(),
        )
        .map_err(|e| no_client(&e))?;
        let listener = tokio::net::TcpListener::bind(args.metrics_addr)
            .await
            .map_err(|e| format!("--metrics-addr {}: {e}", args.metrics_addr))?;
        let server = tokio::spawn(telemetry::serve(listener, metrics.clone(), ready.clone()));
        let conditions = tokio::spawn(telemetry::watch_install_conditions(
            clients.watch.clone(),
            metrics.clone(),
        ));
        let controller_clients = || controller::Clients {
            watch: clients.watch.clone(),
            request: clients.request.clone(),
            request_health: request_health.clone(),
        };
        let policy = if args.allow_reserved_namespaces {
            validate::Policy::allow_all()
        } else {
            validate::Policy::reserving(&args.lease_namespace)
        }
        .allowing_only(&args.allowed_namespaces);
        let opts = || controller::RunOptions {
            concurrency: args.concurrency,
            policy: policy.clone(),
        };
        let result = if args.leader_elect {
            let identity = std::env::var("POD_NAME")
                .unwrap_or_else(|_| format!("{}-{}", hostname(), std::process::id()));
            let mut elector = controller::leader::LeaderElector::new(
                clients.lease.clone(),
                &args.lease_namespace,
                &args.lease_name,
                identity,
                fence.clone(),
                ready.clone(),
                metrics.clone(),
            );
            tracing::info!(lease = %args.lease_name, namespace = %args.lease_namespace, "waiting for leadership");
            // Lead while holding the lease; follow (and stay up, ready and scrapable) after losing it.
            loop {
                tokio::select! {
                    () = elector.acquire() => {}
                    () = shutdown_signal() => break Ok(()),
                }
                let run = controller::run(controller_clients(), metrics.clone(), ready.clone(), opts());
                tokio::select! {
                    result = run => {
                        elector.release().await;
                        break result;
                    }
                    () = elector.hold() => {
                        // The fence is closed already; dropping the controller cancels its work.
                        ready.set(false);
                    }
                }
            }
        } else {
            controller::run(controller_clients(), metrics, ready, opts()).await
        };
        server.abort();
        conditions.abort();
        result.map_err(|e| e.to_string())
    })
}

/// SIGTERM or Ctrl-C (the controller has its own handler while it runs).
async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = term => {}
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "operator".into())
}

/// Reads the input document: a whole IstioInstall or just its spec.
fn read_spec(file: Option<&str>) -> Result<(Value, Option<String>), String> {
    let Some(path) = file else {
        return Ok((Value::Object(Default::default()), None));
    };
    let text = read_text(path)?;
    let doc = bundle::parse_yaml(&text).map_err(|e| format!("{path}: not YAML: {e}"))?;
    if doc.get("kind").is_some() {
        if doc["kind"] != "IstioInstall" {
            return Err(format!(
                "{path}: expected kind IstioInstall, found {}",
                doc["kind"]
            ));
        }
        let name = doc["metadata"]["name"].as_str().map(String::from);
        return Ok((doc.get("spec").cloned().unwrap_or_default(), name));
    }
    Ok((doc, None))
}

fn read_text(path: &str) -> Result<String, String> {
    if path == "-" {
        std::io::read_to_string(std::io::stdin()).map_err(|e| format!("reading stdin: {e}"))
    } else {
        std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))
    }
}

/// Prints one IstioInstall per IstioOperator, notes on stderr. Every result is validated against
/// the bundled charts, as the operator would; a failure names the field and exits with 2 (after
/// printing, so the output can be fixed by hand).
fn run_convert(args: ConvertArgs) -> Result<(), String> {
    let text = read_text(&args.file)?;
    let mut failures = Vec::new();
    let mut out = String::new();
    for doc in render::split_documents(&text) {
        let iop = bundle::parse_yaml(doc).map_err(|e| format!("{}: not YAML: {e}", args.file))?;
        if iop.is_null() {
            continue;
        }
        let converted = migrate::convert(&iop, args.version.as_deref())?;
        let name = converted.install["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        for note in &converted.notes {
            eprintln!("note: IstioOperator {name}: {note}");
        }
        let spec: IstioInstallSpec = serde_json::from_value(converted.install["spec"].clone())
            .map_err(|e| format!("IstioOperator {name}: {e}"))?;
        if let Err(e) = validate::validate(&spec) {
            failures.push(format!(
                "IstioOperator {name}: the IstioInstall does not validate: {e}"
            ));
        }
        // Typed, so the fields come out in the API's order (version first).
        let install = IstioInstall::new(&name, spec);
        out.push_str("---\n");
        out.push_str(&serde_saphyr::to_string(&install).map_err(|e| format!("writing YAML: {e}"))?);
    }
    print!("{out}");
    if failures.is_empty() {
        Ok(())
    } else {
        Err(failures.join("\nerror: "))
    }
}

fn run_render(args: RenderArgs) -> Result<(), String> {
    let (mut spec, file_name) = read_spec(args.file.as_deref())?;
    if let Some(v) = args.version {
        values::set_path(&mut spec, "version", Value::String(v))?;
    }
    if let Some(p) = args.profile {
        values::set_path(&mut spec, "profile", Value::String(p))?;
    }
    for s in &args.set {
        let (path, raw) = s
            .split_once('=')
            .ok_or_else(|| format!("--set {s:?}: expected PATH=VALUE"))?;
        let head = path.split(['.', '[']).next().unwrap_or_default();
        let path = if SPEC_FIELDS.contains(&head) {
            path.to_string()
        } else {
            format!("values.{path}")
        };
        values::set_path(&mut spec, &path, values::parse_set_value(raw))?;
    }
    if spec.get("version").is_none() {
        return Err(
            "spec.version is required (in the file or with --version), e.g. --version 1.24".into(),
        );
    }
    let spec: IstioInstallSpec = serde_json::from_value(spec)
        .map_err(|e| format!("the IstioInstall spec does not match the API: {e}"))?;
    let policy = if args.allow_reserved_namespaces {
        validate::Policy::allow_all()
    } else {
        validate::Policy::default()
    };
    let validated = validate::validate_with(&spec, &policy).map_err(|e| e.to_string())?;
    let name = args.name.or(file_name);
    let objects = render::render(&validated, name.as_deref()).map_err(|e| e.to_string())?;
    match args.output {
        Output::Yaml => print!("{}", render::to_yaml(&objects)?),
        Output::Json => println!("{}", render::to_json(&objects)?),
    }
    Ok(())
}
