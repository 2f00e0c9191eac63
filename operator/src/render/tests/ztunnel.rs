//! Render tests of the ztunnel component: the istiod it follows, image, environment, scheduling
//! and the 1.23/1.24 differences.

use super::cni::{nodes_only, render_nodes};
use super::{find, render_spec};
use crate::render::RenderedObject;
use crate::validate::validate;
use serde_json::Value;

fn daemonset(objs: &[RenderedObject]) -> &Value {
    find(objs, "DaemonSet", "ztunnel")
}

fn container(objs: &[RenderedObject]) -> &Value {
    &daemonset(objs)["spec"]["template"]["spec"]["containers"][0]
}

/// Every env entry of that name (a name must appear at most once).
fn env_all<'a>(objs: &'a [RenderedObject], name: &str) -> Vec<&'a Value> {
    container(objs)["env"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["name"] == name)
        .collect()
}

/// The value of env variable `name`, if set exactly once.
fn env<'a>(objs: &'a [RenderedObject], name: &str) -> Option<&'a str> {
    let all = env_all(objs, name);
    assert!(all.len() <= 1, "{name} set {} times", all.len());
    all.first().map(|e| e["value"].as_str().unwrap_or_default())
}

#[test]
fn ambient_profile_points_ztunnel_at_istiod() {
    for version in ["1.23.6", "1.24.6"] {
        let objs = render_nodes(&format!("version: {version}\nprofile: ambient"));
        let names: Vec<String> = objs
            .iter()
            .filter(|o| o.component_name == "ztunnel")
            .map(|o| format!("{}/{}", o.kind(), o.name()))
            .collect();
        assert_eq!(names, ["ServiceAccount/ztunnel", "DaemonSet/ztunnel"]);
        assert_eq!(
            container(&objs)["image"],
            format!("docker.io/istio/ztunnel:{version}-distroless")
        );
        assert_eq!(
            env(&objs, "CA_ADDRESS"),
            Some("istiod.istio-system.svc:15012")
        );
        assert_eq!(
            env(&objs, "XDS_ADDRESS"),
            Some("istiod.istio-system.svc:15012")
        );
        assert_eq!(env(&objs, "ISTIO_META_ENABLE_HBONE"), Some("true"));
        assert_eq!(env(&objs, "ISTIO_META_CLUSTER_ID"), Some("Kubernetes"));
        assert_eq!(env(&objs, "RUST_LOG"), Some("info"));
        assert_eq!(env(&objs, "TERMINATION_GRACE_PERIOD_SECONDS"), Some("30"));
        let strategy = &daemonset(&objs)["spec"]["updateStrategy"]["rollingUpdate"];
        assert_eq!(
            (
                strategy["maxSurge"].as_i64(),
                strategy["maxUnavailable"].as_i64()
            ),
            (Some(1), Some(0))
        );
        assert!(
            daemonset(&objs)["metadata"]["annotations"]
                .get("istio.io/rev")
                .is_none()
        );
    }
}

#[test]
fn revision_selects_the_istiod_of_that_revision() {
    let objs = render_nodes("version: '1.24'\nprofile: ambient\nrevision: 1-24-6");
    assert_eq!(
        env(&objs, "CA_ADDRESS"),
        Some("istiod-1-24-6.istio-system.svc:15012")
    );
    assert_eq!(
        env(&objs, "XDS_ADDRESS"),
        Some("istiod-1-24-6.istio-system.svc:15012")
    );
    for o in [daemonset(&objs), find(&objs, "ServiceAccount", "ztunnel")] {
        assert_eq!(o["metadata"]["annotations"]["istio.io/rev"], "1-24-6");
    }
    assert_eq!(
        daemonset(&objs)["spec"]["template"]["metadata"]["annotations"]["istio.io/rev"],
        "1-24-6"
    );
    // The selector never changes (it is immutable).
    assert_eq!(
        daemonset(&objs)["spec"]["selector"]["matchLabels"],
        serde_json::json!({"app": "ztunnel"})
    );
}

#[test]
fn istiod_is_found_in_the_control_plane_namespace() {
    let objs = render_spec(&nodes_only(
        "version: '1.24'\nprofile: ambient\nnamespace: mesh",
        "ztunnel: {enabled: true, namespace: kube-system}",
    ));
    assert_eq!(daemonset(&objs)["metadata"]["namespace"], "kube-system");
    assert_eq!(env(&objs, "CA_ADDRESS"), Some("istiod.mesh.svc:15012"));
    let objs = render_nodes(
        "version: '1.24'\nvalues: {ztunnel: {caAddress: 'ca.example:443', istioNamespace: other}}",
    );
    assert_eq!(env(&objs, "CA_ADDRESS"), Some("ca.example:443"));
    assert_eq!(env(&objs, "XDS_ADDRESS"), Some("istiod.other.svc:15012"));
    let objs = render_nodes("version: '1.24'\nvalues: {ztunnel: {xdsAddress: 'x:15012'}}");
    assert_eq!(env(&objs, "XDS_ADDRESS"), Some("x:15012"));
    // Like the chart's flattened globals: global.caAddress when ztunnel has none.
    let objs = render_nodes("version: '1.23'\nvalues: {global: {caAddress: 'g:1'}}");
    assert_eq!(env(&objs, "CA_ADDRESS"), Some("g:1"));
    assert_eq!(
        env(&objs, "XDS_ADDRESS"),
        Some("istiod.istio-system.svc:15012")
    );
}

#[test]
fn image_from_component_values_then_globals() {
    let objs = render_nodes("version: '1.24'\nprofile: ambient\nhub: quay.io/g\ntag: t9");
    assert_eq!(container(&objs)["image"], "quay.io/g/ztunnel:t9-distroless");
    let objs = render_nodes(
        "version: '1.23'\nprofile: ambient\nvalues: {ztunnel: {hub: my.io, tag: '1.23.6-fix', variant: debug, imagePullPolicy: IfNotPresent}}",
    );
    assert_eq!(container(&objs)["image"], "my.io/ztunnel:1.23.6-fix-debug");
    assert_eq!(container(&objs)["imagePullPolicy"], "IfNotPresent");
    let objs = render_nodes("version: '1.24'\nvalues: {ztunnel: {image: 'reg.io/zt@sha256:abc'}}");
    assert_eq!(container(&objs)["image"], "reg.io/zt@sha256:abc");
    let objs = render_nodes("version: '1.24'");
    assert_eq!(container(&objs)["image"], "docker.io/istio/ztunnel:1.24.6");
}

#[test]
fn proxy_metadata_and_env_become_environment_without_duplicates() {
    let objs = render_nodes(
        "version: '1.24'\nprofile: ambient\nmeshConfig: {defaultConfig: {proxyMetadata: {ISTIO_META_DNS_CAPTURE: 'true', ISTIO_META_ENABLE_HBONE: 'false'}}}\nvalues: {ztunnel: {env: {MY_VAR: 5, RUST_LOG: debug, ISTIO_META_DNS_CAPTURE: 'false'}}}",
    );
    assert_eq!(env(&objs, "ISTIO_META_ENABLE_HBONE"), Some("false"));
    assert_eq!(env(&objs, "ISTIO_META_DNS_CAPTURE"), Some("false"));
    assert_eq!(env(&objs, "MY_VAR"), Some("5"));
    assert_eq!(env(&objs, "RUST_LOG"), Some("debug"));
    // The preview chart profile turns DNS capture on through the same metadata.
    let objs = render_nodes("version: '1.24'\nvalues: {profile: preview}");
    assert_eq!(env(&objs, "ISTIO_META_DNS_CAPTURE"), Some("true"));
    // Sidecar profiles have no ambient metadata.
    let objs = render_nodes("version: '1.24'");
    assert_eq!(env(&objs, "ISTIO_META_ENABLE_HBONE"), None);
}

#[test]
fn logging_cluster_and_grace_period() {
    let objs = render_nodes(
        "version: '1.24'\nvalues: {ztunnel: {logLevel: 'info,access=debug', terminationGracePeriodSeconds: 60}, global: {multiCluster: {clusterName: east}, logAsJson: true}}",
    );
    assert_eq!(env(&objs, "RUST_LOG"), Some("info,access=debug"));
    assert_eq!(env(&objs, "LOG_FORMAT"), Some("json"));
    assert_eq!(env(&objs, "ISTIO_META_CLUSTER_ID"), Some("east"));
    assert_eq!(env(&objs, "TERMINATION_GRACE_PERIOD_SECONDS"), Some("60"));
    assert_eq!(
        daemonset(&objs)["spec"]["template"]["spec"]["terminationGracePeriodSeconds"],
        60
    );
    let objs = render_nodes(
        "version: '1.24'\nvalues: {ztunnel: {multiCluster: {clusterName: west}}, global: {multiCluster: {clusterName: east}}}",
    );
    assert_eq!(env(&objs, "ISTIO_META_CLUSTER_ID"), Some("west"));
    assert_eq!(env(&objs, "LOG_FORMAT"), None);
    // JSON logs are a 1.24 value.
    let spec =
        serde_saphyr::from_str("version: '1.23'\nvalues: {ztunnel: {logAsJson: true}}\n").unwrap();
    let err = validate(&spec).unwrap_err().to_string();
    assert!(err.contains("values.ztunnel.logAsJson"), "{err}");
}

#[test]
fn scheduling_and_pod_metadata() {
    let objs = render_nodes(
        "version: '1.24'\nvalues: {ztunnel: {nodeSelector: {pool: mesh}, tolerations: [{key: only, operator: Exists}], podAnnotations: {a: b}, podLabels: {team: net}, labels: {l: v}, annotations: {n: m}, resources: {requests: {cpu: 1}, limits: {memory: 2Gi}}}}",
    );
    let pod = &daemonset(&objs)["spec"]["template"];
    assert_eq!(
        pod["spec"]["nodeSelector"],
        serde_json::json!({"kubernetes.io/os": "linux", "pool": "mesh"})
    );
    assert_eq!(
        pod["spec"]["tolerations"],
        serde_json::json!([{"key": "only", "operator": "Exists"}])
    );
    assert_eq!(pod["metadata"]["annotations"]["a"], "b");
    assert_eq!(
        pod["metadata"]["annotations"]["prometheus.io/port"],
        "15020"
    );
    assert_eq!(pod["metadata"]["labels"]["team"], "net");
    assert_eq!(pod["metadata"]["labels"]["app"], "ztunnel");
    assert_eq!(daemonset(&objs)["metadata"]["labels"]["l"], "v");
    assert_eq!(daemonset(&objs)["metadata"]["annotations"]["n"], "m");
    let res = &container(&objs)["resources"];
    assert_eq!(
        (
            res["requests"]["cpu"].as_i64(),
            res["requests"]["memory"].as_str()
        ),
        (Some(1), Some("512Mi"))
    );
    assert_eq!(res["limits"]["memory"], "2Gi");
    // Default tolerations: every taint.
    let objs = render_nodes("version: '1.24'");
    assert_eq!(
        daemonset(&objs)["spec"]["template"]["spec"]["tolerations"]
            .as_array()
            .unwrap()
            .len(),
        3
    );
    // The demo chart profile lists small ztunnel requests under `ztunnel.`, which the ztunnel
    // chart never reads: demo keeps the default requests (unlike istio-cni in 1.24).
    for version in ["1.23", "1.24"] {
        let objs = render_nodes(&format!("version: '{version}'\nprofile: demo"));
        assert_eq!(container(&objs)["resources"]["requests"]["memory"], "512Mi");
    }
}

#[test]
fn extra_volumes_and_pull_secrets() {
    let objs = render_nodes(
        "version: '1.24'\nvalues: {global: {imagePullSecrets: [g]}, ztunnel: {volumes: [{name: extra, emptyDir: {}}], volumeMounts: [{name: extra, mountPath: /x}]}}",
    );
    let vols = daemonset(&objs)["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .unwrap();
    assert!(vols.iter().any(|v| v["name"] == "extra"));
    assert!(vols.iter().any(|v| v["name"] == "cni-ztunnel-sock-dir"));
    let mounts = container(&objs)["volumeMounts"].as_array().unwrap();
    assert!(mounts.iter().any(|m| m["mountPath"] == "/x"));
    assert_eq!(
        find(&objs, "ServiceAccount", "ztunnel")["imagePullSecrets"][0]["name"],
        "g"
    );
    let objs = render_nodes(
        "version: '1.24'\nvalues: {global: {imagePullSecrets: [g]}, ztunnel: {imagePullSecrets: [z]}}",
    );
    assert_eq!(
        find(&objs, "ServiceAccount", "ztunnel")["imagePullSecrets"],
        serde_json::json!([{"name": "z"}])
    );
}

#[test]
fn openshift_gets_the_privileged_scc_and_spc_t() {
    for spec in [
        "version: '1.24'\nprofile: ambient\nvalues: {global: {platform: openshift}}",
        "version: '1.23'\nprofile: ambient\nvalues: {profile: openshift-ambient}",
    ] {
        let objs = render_nodes(spec);
        let role = find(&objs, "ClusterRole", "ztunnel");
        assert_eq!(role["rules"][0]["resourceNames"][0], "privileged", "{spec}");
        let binding = find(&objs, "ClusterRoleBinding", "ztunnel");
        assert_eq!(binding["subjects"][0]["namespace"], "istio-system");
        assert_eq!(
            container(&objs)["securityContext"]["seLinuxOptions"]["type"],
            "spc_t"
        );
        assert!(
            container(&objs)["image"]
                .as_str()
                .unwrap()
                .ends_with("-distroless")
        );
    }
    let objs = render_nodes("version: '1.24'\nprofile: ambient");
    assert!(
        !objs
            .iter()
            .any(|o| o.component_name == "ztunnel" && o.kind().starts_with("Cluster"))
    );
}

#[test]
fn privilege_escalation_is_declared_from_1_24() {
    let sc =
        |v: &str| container(&render_nodes(&format!("version: {v}")))["securityContext"].clone();
    assert_eq!(sc("1.23.6")["allowPrivilegeEscalation"], false);
    assert_eq!(sc("1.24.0")["allowPrivilegeEscalation"], true);
    assert_eq!(sc("1.24.0")["runAsGroup"], 1337);
    // Labels: 1.24 adds the version.
    let objs = render_nodes("version: 1.23.6");
    assert!(
        daemonset(&objs)["metadata"]["labels"]
            .get("app.kubernetes.io/version")
            .is_none()
    );
    let objs = render_nodes("version: 1.24.3");
    assert_eq!(
        daemonset(&objs)["metadata"]["labels"]["app.kubernetes.io/version"],
        "1.24.3"
    );
}

#[test]
fn ztunnel_alone_in_the_default_profile() {
    let objs = render_spec(&nodes_only("version: '1.24'", "ztunnel: {enabled: true}"));
    assert!(objs.iter().all(|o| o.component_name == "ztunnel"));
    daemonset(&objs);
}
