//! The `istio-install-operator` binary: `render`, `crd` and `version` (and, later, `run`).

use clap::{Parser, Subcommand, ValueEnum};
use istio_install_operator::api::{IstioInstallSpec, crd_yaml};
use istio_install_operator::{bundle, render, validate, values};
use serde_json::Value;
use std::process::ExitCode;

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
    /// Print the Kubernetes objects an IstioInstall installs, in apply order.
    Render(RenderArgs),
    /// Print the IstioInstall CustomResourceDefinition.
    Crd,
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
        Command::Render(args) => run_render(args),
        Command::Crd => {
            print!("{}", crd_yaml());
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

/// Reads the input document: a whole IstioInstall or just its spec.
fn read_spec(file: Option<&str>) -> Result<(Value, Option<String>), String> {
    let Some(path) = file else {
        return Ok((Value::Object(Default::default()), None));
    };
    let text = if path == "-" {
        std::io::read_to_string(std::io::stdin()).map_err(|e| format!("reading stdin: {e}"))?
    } else {
        std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?
    };
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
    let validated = validate::validate(&spec).map_err(|e| e.to_string())?;
    let name = args.name.or(file_name);
    let objects = render::render(&validated, name.as_deref()).map_err(|e| e.to_string())?;
    match args.output {
        Output::Yaml => print!("{}", render::to_yaml(&objects)),
        Output::Json => println!("{}", render::to_json(&objects)),
    }
    Ok(())
}
