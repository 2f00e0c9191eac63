//! The `istio-install-operator` command line: output on success, one clear message and exit
//! code 2 on bad input.

use std::process::{Command, Output};

fn run(args: &[&str], stdin: Option<&str>) -> Output {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_istio-install-operator"))
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("the binary runs");
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    }
    drop(child.stdin.take());
    child.wait_with_output().unwrap()
}

#[test]
fn render_prints_the_objects_in_apply_order() {
    let out = run(
        &["render", "--version", "1.24", "--profile", "ambient"],
        None,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let kinds: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("kind: "))
        .collect();
    assert_eq!(kinds.first(), Some(&"CustomResourceDefinition"));
    assert!(kinds.contains(&"DaemonSet"));
}

#[test]
fn render_reads_an_istioinstall_from_stdin_and_takes_sets() {
    let doc = "apiVersion: istioinstall.io/v1alpha1\nkind: IstioInstall\nmetadata: {name: mesh}\nspec: {version: 1.23.6, profile: minimal}\n";
    let out = run(
        &[
            "render",
            "-f",
            "-",
            "--set",
            "pilot.env.FOO=bar",
            "-o",
            "json",
        ],
        Some(doc),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let istiod = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["kind"] == "Deployment")
        .unwrap();
    assert_eq!(
        istiod["metadata"]["labels"]["istioinstall.io/install"],
        "mesh"
    );
    let env = istiod["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()
        .unwrap();
    assert!(
        env.iter()
            .any(|e| e["name"] == "FOO" && e["value"] == "bar")
    );
}

#[test]
fn bad_input_gets_one_message_and_exit_code_2() {
    for (args, expected) in [
        (
            vec!["render", "--version", "1.99"],
            "spec.version: \"1.99\" is not bundled",
        ),
        (
            vec![
                "render",
                "--version",
                "1.24",
                "--set",
                "pilot.replicaCont=2",
            ],
            "spec.values.pilot.replicaCont: unknown key",
        ),
        (
            vec!["render", "--version", "1.23", "--profile", "remote"],
            "spec.profile: \"remote\" is not a profile of Istio 1.23",
        ),
        (vec!["render"], "spec.version is required"),
    ] {
        let out = run(&args, None);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8(out.stderr).unwrap();
        assert!(
            err.starts_with("error: ") && err.contains(expected),
            "{args:?}: {err}"
        );
        assert_eq!(err.lines().count(), 1, "one message: {err}");
        assert!(out.stdout.is_empty());
    }
}

#[test]
fn crd_and_version_print() {
    let out = run(&["crd"], None);
    assert!(
        String::from_utf8(out.stdout)
            .unwrap()
            .contains("name: istioinstalls.istioinstall.io")
    );
    let out = run(&["version"], None);
    assert!(String::from_utf8(out.stdout).unwrap().contains("1.24.6"));
}

#[test]
fn convert_turns_istio_operators_into_istio_installs() {
    let iops = "apiVersion: install.istio.io/v1alpha1\nkind: IstioOperator\nmetadata: {name: main}\n\
                spec: {profile: default, tag: 1.23.6, components: {pilot: {k8s: {readinessProbe: {}}}}}\n\
                ---\n\
                apiVersion: install.istio.io/v1alpha1\nkind: IstioOperator\nmetadata: {name: gateways}\n\
                spec: {profile: empty, components: {ingressGateways: [{name: edge, enabled: true}]}}\n";
    let out = run(&["convert", "-f", "-", "--version", "1.23.6"], Some(iops));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(stdout.matches("kind: IstioInstall").count(), 2, "{stdout}");
    assert!(stdout.contains("name: main") && stdout.contains("name: gateways"));
    assert!(stdout.contains("version: \"1.23.6\""), "{stdout}");
    assert!(
        stderr.contains("IstioOperator main: spec.components.pilot.k8s.readinessProbe"),
        "{stderr}"
    );

    // Not an IstioOperator, or no way to tell the release: one message, exit code 2.
    for (input, message) in [
        (
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n",
            "expected an IstioOperator",
        ),
        (
            "apiVersion: install.istio.io/v1alpha1\nkind: IstioOperator\nspec: {profile: demo}\n",
            "pass --version",
        ),
    ] {
        let out = run(&["convert", "-f", "-"], Some(input));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.contains(message), "{stderr}");
    }
}

/// The specs issue #11 found accepted although istiod or the API server refuses them later.
#[test]
fn specs_istiod_or_the_api_server_would_refuse_are_refused_naming_the_field() {
    let head = "apiVersion: istioinstall.io/v1alpha1\nkind: IstioInstall\nmetadata: {name: mesh}\n";
    for (spec, expected) in [
        (
            "spec: {version: '1.24', meshConfig: {accessLogFile: 42}}",
            "spec.meshConfig.accessLogFile: expected a string, found the number 42",
        ),
        (
            "spec: {version: '1.23', components: {pilot: {k8s: {resources: {requests: {cpu: lots}}}}}}",
            "spec.components.pilot.k8s.resources.requests.cpu: \"lots\" is not a Kubernetes quantity",
        ),
        (
            "spec: {version: '1.24', components: {ingressGateways: [{name: gw}, {name: gw}]}}",
            "spec.components.ingressGateways[1].name: \"gw\" is also the name of components.ingressGateways[0]",
        ),
    ] {
        let out = run(&["render", "-f", "-"], Some(&format!("{head}{spec}\n")));
        assert_eq!(out.status.code(), Some(2), "{spec}");
        let err = String::from_utf8(out.stderr).unwrap();
        assert!(err.contains(expected), "{spec}: {err}");
    }
    let out = run(
        &[
            "render",
            "--version",
            "1.24",
            "--set",
            "meshConfig.accessLogFile=42",
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("spec.meshConfig.accessLogFile: expected a string"),
        "{err}"
    );
}

/// A copy of `charts/` in a fresh temporary folder, for `ISTIO_INSTALL_CHARTS_DIR`.
fn charts_copy(name: &str) -> std::path::PathBuf {
    fn copy(from: &std::path::Path, to: &std::path::Path) {
        std::fs::create_dir_all(to).unwrap();
        for e in std::fs::read_dir(from).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                copy(&e.path(), &to.join(e.file_name()));
            } else {
                std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
            }
        }
    }
    let to = std::env::temp_dir().join(format!("cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&to);
    copy(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts"),
        &to,
    );
    to
}

/// A bundle file that does not parse (here through `ISTIO_INSTALL_CHARTS_DIR`; in a binary, a
/// defect of the build) is an error naming the file, never a panic: `render` of that minor
/// fails, other minors render, and `run` and `crd` refuse to start.
#[test]
fn a_broken_bundle_file_is_named_and_run_refuses_to_start() {
    let charts = charts_copy("broken");
    std::fs::write(charts.join("1.24/meshconfig.yaml"), "root: [\n").unwrap();
    let with_charts = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_istio-install-operator"))
            .args(args)
            .env("ISTIO_INSTALL_CHARTS_DIR", &charts)
            .env("KUBECONFIG", "/nonexistent")
            .output()
            .unwrap()
    };
    let named = |out: &Output| {
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(err.contains("charts/1.24/meshconfig.yaml: "), "{err}");
        assert!(!err.contains("panicked"), "{err}");
        err
    };
    // The schema is read when there is a meshConfig to check.
    let err = named(&with_charts(&[
        "render",
        "--version",
        "1.24",
        "--set",
        "meshConfig.accessLogFile=/dev/stdout",
    ]));
    assert!(err.contains("defect of this build"), "{err}");
    let other = with_charts(&["render", "--version", "1.23", "--profile", "default"]);
    assert!(
        other.status.success(),
        "{}",
        String::from_utf8_lossy(&other.stderr)
    );
    let err = named(&with_charts(&["run"]));
    assert!(err.contains("the chart bundles do not load"), "{err}");
    named(&with_charts(&["crd"]));
    std::fs::remove_dir_all(&charts).unwrap();
}
