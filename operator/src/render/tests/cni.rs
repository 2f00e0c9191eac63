//! Render tests of the cni component (istio-cni node agent): objects per profile, values,
//! platforms and the patch-level differences of the 1.23 and 1.24 charts.

use super::{find, render_spec};
use crate::render::RenderedObject;
use crate::validate::{ComponentKind, validate};
use serde_json::Value;

/// `spec` with the control plane and gateways off and `nodes` (the cni and ztunnel entries of
/// `components`) as given, so only the node components' templates matter.
pub(super) fn nodes_only(spec: &str, nodes: &str) -> String {
    format!(
        "{spec}\ncomponents: {{base: {{enabled: false}}, pilot: {{enabled: false}}, ingressGateways: [{{name: istio-ingressgateway, enabled: false}}], egressGateways: [{{name: istio-egressgateway, enabled: false}}], {nodes}}}\n"
    )
}

/// Renders istio-cni and ztunnel only.
pub(super) fn render_nodes(spec: &str) -> Vec<RenderedObject> {
    render_spec(&nodes_only(
        spec,
        "cni: {enabled: true}, ztunnel: {enabled: true}",
    ))
}

fn names(objs: &[RenderedObject], component: &str) -> Vec<String> {
    let mut n: Vec<String> = objs
        .iter()
        .filter(|o| o.component_name == component)
        .map(|o| format!("{}/{}", o.kind(), o.name()))
        .collect();
    n.sort();
    n
}

fn daemonset(objs: &[RenderedObject]) -> &Value {
    find(objs, "DaemonSet", "istio-cni-node")
}

fn container(objs: &[RenderedObject]) -> &Value {
    &daemonset(objs)["spec"]["template"]["spec"]["containers"][0]
}

fn config(objs: &[RenderedObject]) -> &Value {
    &find(objs, "ConfigMap", "istio-cni-config")["data"]
}

fn host_path<'a>(objs: &'a [RenderedObject], volume: &str) -> Option<&'a str> {
    daemonset(objs)["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == volume)
        .and_then(|v| v["hostPath"]["path"].as_str())
}

fn has_mount(objs: &[RenderedObject], name: &str) -> bool {
    container(objs)["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .any(|m| m["name"] == name)
}

fn strings(v: &Value) -> Vec<&str> {
    v.as_array()
        .unwrap_or_else(|| panic!("not a list: {v}"))
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect()
}

#[test]
fn ambient_profile_renders_the_agent_with_ambient_redirection() {
    for version in ["1.23.6", "1.24.6"] {
        let objs = render_nodes(&format!("version: {version}\nprofile: ambient"));
        assert_eq!(
            names(&objs, "cni"),
            [
                "ClusterRole/istio-cni",
                "ClusterRole/istio-cni-ambient",
                "ClusterRole/istio-cni-repair-role",
                "ClusterRoleBinding/istio-cni",
                "ClusterRoleBinding/istio-cni-ambient",
                "ClusterRoleBinding/istio-cni-repair-rolebinding",
                "ConfigMap/istio-cni-config",
                "DaemonSet/istio-cni-node",
                "ServiceAccount/istio-cni",
            ],
            "{version}"
        );
        let pod = &daemonset(&objs)["spec"]["template"]["spec"];
        assert_eq!(pod["hostNetwork"], true, "{version}");
        assert_eq!(
            container(&objs)["image"],
            format!("docker.io/istio/install-cni:{version}-distroless")
        );
        assert!(has_mount(&objs, "cni-netns-dir") && has_mount(&objs, "cni-ztunnel-sock-dir"));
        let data = config(&objs);
        assert_eq!(data["AMBIENT_ENABLED"], "true");
        assert_eq!(data["AMBIENT_DNS_CAPTURE"], "false");
        assert_eq!(data["CURRENT_AGENT_VERSION"], version);
        assert_eq!(container(&objs)["args"][0], "--log_output_level=info");
    }
}

#[test]
fn sidecar_mode_agent_has_no_ambient_parts() {
    let objs = render_spec(&nodes_only("version: '1.24'", "cni: {enabled: true}"));
    assert!(
        !names(&objs, "cni")
            .iter()
            .any(|n| n.ends_with("istio-cni-ambient"))
    );
    let pod = &daemonset(&objs)["spec"]["template"]["spec"];
    assert!(pod.get("hostNetwork").is_none() && pod.get("dnsPolicy").is_none());
    assert!(!has_mount(&objs, "cni-netns-dir"));
    // repairPods (the default) still needs the host's /proc.
    assert!(has_mount(&objs, "cni-host-procfs"));
    assert_eq!(
        container(&objs)["image"],
        "docker.io/istio/install-cni:1.24.6"
    );
    assert_eq!(config(&objs)["AMBIENT_ENABLED"], "false");
}

#[test]
fn disabled_cni_renders_nothing() {
    let objs = render_spec(&nodes_only(
        "version: '1.24'\nprofile: ambient",
        "cni: {enabled: false}",
    ));
    assert!(names(&objs, "cni").is_empty());
    assert!(!objs.iter().any(|o| o.name().starts_with("istio-cni")));
    assert!(!names(&objs, "ztunnel").is_empty());
    // ...and the default profile has no agent at all.
    let spec = serde_saphyr::from_str("version: '1.23'\n").unwrap();
    let v = validate(&spec).unwrap();
    assert!(!v.components.iter().any(|c| c.kind == ComponentKind::Cni));
}

#[test]
fn revision_and_owner_label_every_object() {
    let objs = render_nodes(
        "version: '1.24'\nprofile: ambient\nrevision: canary\nvalues: {ownerName: mine}",
    );
    for o in objs.iter().filter(|o| o.component_name == "cni") {
        let labels = &o.object["metadata"]["labels"];
        assert_eq!(labels["istio.io/rev"], "canary", "{}", o.name());
        assert_eq!(labels["install.operator.istio.io/owning-resource"], "mine");
    }
    // Names do not change with the revision: there is one agent per cluster.
    daemonset(&objs);
}

#[test]
fn image_from_component_values_then_globals() {
    let objs = render_nodes(
        "version: 1.24.2\nprofile: ambient\nhub: quay.io/global\nvalues: {cni: {tag: t1, variant: debug}}",
    );
    assert_eq!(
        container(&objs)["image"],
        "quay.io/global/install-cni:t1-debug"
    );
    assert_eq!(config(&objs)["CURRENT_AGENT_VERSION"], "t1");

    let objs = render_nodes(
        "version: '1.24'\nvalues: {cni: {hub: my.io/x, image: cni-agent, pullPolicy: Always}, global: {variant: ''}}",
    );
    assert_eq!(container(&objs)["image"], "my.io/x/cni-agent:1.24.6");
    assert_eq!(container(&objs)["imagePullPolicy"], "Always");

    // A name with "/" is the whole reference.
    let objs = render_nodes("version: '1.23'\nvalues: {cni: {image: 'reg.io/a/b:c'}}");
    assert_eq!(container(&objs)["image"], "reg.io/a/b:c");
}

#[test]
fn resources_merge_over_the_defaults_and_demo_is_small() {
    let objs = render_nodes("version: '1.24'\nvalues: {cni: {resources: {limits: {memory: 1Gi}}}}");
    let r = &container(&objs)["resources"];
    assert_eq!(r["requests"]["cpu"], "100m");
    assert_eq!(r["limits"]["memory"], "1Gi");

    let objs = render_nodes("version: '1.24'\nprofile: demo");
    assert_eq!(container(&objs)["resources"]["requests"]["cpu"], "10m");
    assert_eq!(container(&objs)["resources"]["requests"]["memory"], "40Mi");
    assert!(container(&objs)["resources"].get("limits").is_none());
}

#[test]
fn host_directories_follow_values_and_platforms() {
    let objs = render_nodes(
        "version: '1.24'\nvalues: {cni: {cniBinDir: /b, cniConfDir: /c, cniNetnsDir: /n, cniConfFileName: 10-x.conflist}}",
    );
    assert_eq!(host_path(&objs, "cni-bin-dir"), Some("/b"));
    assert_eq!(host_path(&objs, "cni-net-dir"), Some("/c"));
    assert_eq!(host_path(&objs, "cni-netns-dir"), Some("/n"));
    assert_eq!(config(&objs)["CNI_CONF_NAME"], "10-x.conflist");

    let objs = render_nodes("version: '1.24'\nprofile: ambient\nvalues: {global: {platform: k3s}}");
    assert_eq!(
        host_path(&objs, "cni-bin-dir"),
        Some("/var/lib/rancher/k3s/data/current/bin/")
    );
    assert_eq!(
        host_path(&objs, "cni-net-dir"),
        Some("/var/lib/rancher/k3s/agent/etc/cni/net.d")
    );
    let objs = render_nodes("version: '1.24'\nvalues: {global: {platform: minikube}}");
    assert_eq!(
        host_path(&objs, "cni-netns-dir"),
        Some("/var/run/docker/netns")
    );
    assert_eq!(host_path(&objs, "cni-bin-dir"), Some("/opt/cni/bin"));
}

#[test]
fn openshift_uses_multus_the_privileged_scc_and_spc_t() {
    for spec in [
        "version: '1.24'\nprofile: ambient\nvalues: {global: {platform: openshift}}",
        "version: '1.23'\nprofile: ambient\nvalues: {profile: openshift-ambient}",
    ] {
        let objs = render_nodes(spec);
        let rules = find(&objs, "ClusterRole", "istio-cni")["rules"]
            .as_array()
            .unwrap()
            .clone();
        assert!(
            rules
                .iter()
                .any(|r| r["apiGroups"][0] == "security.openshift.io"
                    && r["resourceNames"][0] == "privileged"),
            "{spec}"
        );
        let nad = find(&objs, "NetworkAttachmentDefinition", "istio-cni");
        assert_eq!(nad["metadata"]["namespace"], "default");
        let data = config(&objs);
        assert_eq!(data["CHAINED_CNI_PLUGIN"], "false");
        assert_eq!(data["CNI_CONF_NAME"], "istio-cni.conf");
        assert_eq!(host_path(&objs, "cni-bin-dir"), Some("/var/lib/cni/bin"));
        assert_eq!(config(&objs)["AMBIENT_ENABLED"], "true");
    }
    let objs = render_nodes("version: '1.24'\nvalues: {global: {platform: openshift}}");
    assert_eq!(
        container(&objs)["securityContext"]["seLinuxOptions"]["type"],
        "spc_t"
    );
    // The default CNI needs neither.
    let objs = render_nodes("version: '1.24'");
    assert!(
        !objs
            .iter()
            .any(|o| o.kind() == "NetworkAttachmentDefinition")
    );
    assert_eq!(
        find(&objs, "ClusterRole", "istio-cni")["rules"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

#[test]
fn selinux_options_default_their_type_to_spc_t() {
    let objs = render_nodes("version: '1.24'\nvalues: {cni: {seLinuxOptions: {level: 's0'}}}");
    let se = &container(&objs)["securityContext"]["seLinuxOptions"];
    assert_eq!(
        (se["type"].as_str(), se["level"].as_str()),
        (Some("spc_t"), Some("s0"))
    );
    let objs = render_nodes("version: '1.24'\nvalues: {cni: {seLinuxOptions: {type: mine_t}}}");
    assert_eq!(
        container(&objs)["securityContext"]["seLinuxOptions"]["type"],
        "mine_t"
    );
    // 1.23 has no such value.
    let spec =
        serde_saphyr::from_str("version: '1.23'\nvalues: {cni: {seLinuxOptions: {type: spc_t}}}\n")
            .unwrap();
    let err = validate(&spec).unwrap_err().to_string();
    assert!(err.contains("values.cni.seLinuxOptions"), "{err}");
}

#[test]
fn patch_level_differences_of_the_1_24_chart() {
    let old = render_nodes("version: 1.24.0\nprofile: ambient");
    let new = render_nodes("version: 1.24.6\nprofile: ambient");
    let annotations =
        |o: &[RenderedObject]| daemonset(o)["spec"]["template"]["metadata"]["annotations"].clone();
    let caps =
        |o: &[RenderedObject]| container(o)["securityContext"]["capabilities"]["add"].clone();
    // dnsPolicy for the host network and the AppArmor annotation arrived in 1.24.1,
    assert!(
        daemonset(&old)["spec"]["template"]["spec"]
            .get("dnsPolicy")
            .is_none()
    );
    assert_eq!(
        daemonset(&new)["spec"]["template"]["spec"]["dnsPolicy"],
        "ClusterFirstWithHostNet"
    );
    assert!(
        annotations(&old)
            .get("container.apparmor.security.beta.kubernetes.io/install-cni")
            .is_none()
    );
    assert_eq!(
        annotations(&new)["container.apparmor.security.beta.kubernetes.io/install-cni"],
        "unconfined"
    );
    // DAC_OVERRIDE in 1.24.2,
    assert_eq!(
        strings(&caps(&old)),
        ["NET_ADMIN", "NET_RAW", "SYS_PTRACE", "SYS_ADMIN"]
    );
    assert!(strings(&caps(&new)).contains(&"DAC_OVERRIDE"));
    assert!(strings(&caps(&render_nodes("version: 1.24.2"))).contains(&"DAC_OVERRIDE"));
    // the EXCLUDE_NAMESPACES key and REPAIR_ENABLED from repair.enabled in 1.24.5.
    let spec = "profile: ambient\nvalues: {cni: {chained: false, excludeNamespaces: [a, b]}}";
    let old = render_nodes(&format!("version: 1.24.4\n{spec}"));
    let new = render_nodes(&format!("version: 1.24.5\n{spec}"));
    assert_eq!(config(&old)["EXCLUDED_NAMESPACES"], "a,b");
    assert!(config(&old).get("EXCLUDE_NAMESPACES").is_none());
    assert_eq!(config(&old)["REPAIR_ENABLED"], "false");
    assert_eq!(config(&new)["EXCLUDE_NAMESPACES"], "a,b");
    assert_eq!(config(&new)["REPAIR_ENABLED"], "true");
    // Not privileged in any 1.24; CNI_NET_DIR is gone.
    assert_eq!(container(&new)["securityContext"]["privileged"], false);
    assert!(config(&new).get("CNI_NET_DIR").is_none());
}

#[test]
fn patch_level_differences_of_the_1_23_chart() {
    let ports = |v: &str| container(&render_nodes(&format!("version: {v}")))["ports"].clone();
    assert!(ports("1.23.2").is_null());
    assert_eq!(ports("1.23.3")[0]["containerPort"], 15014);
    let spec = "values: {cni: {chained: false}}";
    let old = render_nodes(&format!("version: 1.23.5\n{spec}"));
    let new = render_nodes(&format!("version: 1.23.6\n{spec}"));
    assert_eq!(config(&old)["REPAIR_ENABLED"], "false");
    assert_eq!(config(&new)["REPAIR_ENABLED"], "true");
    // 1.23 never renamed the key, keeps CNI_NET_DIR, runs privileged, and has no 1.24 additions.
    assert_eq!(config(&new)["EXCLUDED_NAMESPACES"], "kube-system");
    assert_eq!(config(&new)["CNI_NET_DIR"], "/etc/cni/net.d");
    let c = container(&new);
    assert_eq!(c["securityContext"]["privileged"], true);
    assert_eq!(
        strings(&c["securityContext"]["capabilities"]["add"]),
        ["NET_ADMIN", "NET_RAW", "SYS_ADMIN"]
    );
    let amb = render_nodes("version: 1.23.6\nprofile: ambient");
    assert!(
        daemonset(&amb)["spec"]["template"]["spec"]
            .get("dnsPolicy")
            .is_none()
    );
    assert!(
        find(&amb, "ClusterRole", "istio-cni")["metadata"]["labels"]
            .get("app.kubernetes.io/name")
            .is_none()
    );
}

#[test]
fn env_adds_agent_settings_from_1_23_4() {
    let spec = "values: {cni: {env: {AMBIENT_IPV6: false, MY_FLAG: 3}}}";
    let objs = render_nodes(&format!("version: '1.24'\n{spec}"));
    let data = config(&objs);
    assert_eq!(data["MY_FLAG"], "3");
    // A key of the chart's own is replaced, not duplicated.
    assert_eq!(data["AMBIENT_IPV6"], "false");
    assert_eq!(
        config(&render_nodes(&format!("version: 1.23.4\n{spec}")))["MY_FLAG"],
        "3"
    );

    let spec = serde_saphyr::from_str(&nodes_only(
        &format!("version: 1.23.3\n{spec}"),
        "cni: {enabled: true}",
    ))
    .unwrap();
    let err = crate::render::render(&validate(&spec).unwrap(), None)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("values.cni.env") && err.contains("1.23.4"),
        "{err}"
    );
}

#[test]
fn repair_modes_decide_the_repair_rbac() {
    let rules = |values: &str| {
        let objs = render_nodes(&format!(
            "version: '1.24'\nvalues: {{cni: {{repair: {values}}}}}"
        ));
        find(&objs, "ClusterRole", "istio-cni-repair-role")["rules"].clone()
    };
    assert_eq!(rules("{}").as_array().unwrap().len(), 2);
    let delete = rules("{repairPods: false, deletePods: true}");
    assert_eq!(delete[2]["verbs"][0], "delete");
    let label = rules("{repairPods: false, labelPods: true}");
    assert_eq!(label[2]["resources"][0], "pods/status");

    let objs = render_nodes(
        "version: '1.24'\nvalues: {cni: {repair: {enabled: false, repairPods: false}}}",
    );
    assert!(
        !objs
            .iter()
            .any(|o| o.name().starts_with("istio-cni-repair"))
    );
    assert_eq!(config(&objs)["REPAIR_ENABLED"], "false");
    assert!(!has_mount(&objs, "cni-host-procfs"));
}

#[test]
fn log_level_from_cni_then_global() {
    let arg = |spec: &str| container(&render_nodes(spec))["args"].clone();
    assert_eq!(
        strings(&arg(
            "version: '1.24'\nvalues: {global: {logging: {level: 'default:debug'}, logAsJson: true}}"
        )),
        ["--log_output_level=debug", "--log_as_json"]
    );
    assert_eq!(
        strings(&arg(
            "version: '1.24'\nvalues: {global: {logging: {level: 'default:debug,ambient:info'}}, cni: {logging: {level: warn}}}"
        )),
        ["--log_output_level=warn"]
    );
    assert_eq!(
        strings(&arg(
            "version: '1.24'\nvalues: {global: {logging: {level: 'default:debug,ambient:info'}}}"
        )),
        ["--log_output_level=default:debug,ambient:info"]
    );
}

#[test]
fn resource_quota_and_another_namespace() {
    let objs = render_spec(&nodes_only(
        "version: '1.24'\nvalues: {cni: {resourceQuotas: {enabled: true, pods: 64}}}",
        "cni: {enabled: true, namespace: kube-system}",
    ));
    let quota = find(&objs, "ResourceQuota", "istio-cni-resource-quota");
    assert_eq!(quota["metadata"]["namespace"], "kube-system");
    assert_eq!(quota["spec"]["hard"]["pods"], "64");
    assert_eq!(
        quota["spec"]["scopeSelector"]["matchExpressions"][0]["values"][0],
        "system-node-critical"
    );
    let binding = find(&objs, "ClusterRoleBinding", "istio-cni");
    assert_eq!(binding["subjects"][0]["namespace"], "kube-system");
    assert_eq!(daemonset(&objs)["metadata"]["namespace"], "kube-system");
    assert!(
        !render_nodes("version: '1.24'")
            .iter()
            .any(|o| o.kind() == "ResourceQuota")
    );
}

#[test]
fn pod_annotations_affinity_and_pull_secrets() {
    let objs = render_nodes(
        "version: '1.24'\nvalues: {global: {imagePullSecrets: [s1]}, cni: {podAnnotations: {a: b}, affinity: {nodeAffinity: {x: 1}}, rollingMaxUnavailable: 20%}}",
    );
    let tmpl = &daemonset(&objs)["spec"]["template"];
    assert_eq!(tmpl["metadata"]["annotations"]["a"], "b");
    assert_eq!(
        tmpl["metadata"]["annotations"]["prometheus.io/port"],
        "15014"
    );
    assert_eq!(tmpl["spec"]["affinity"]["nodeAffinity"]["x"], 1);
    assert_eq!(
        daemonset(&objs)["spec"]["updateStrategy"]["rollingUpdate"]["maxUnavailable"],
        "20%"
    );
    assert_eq!(
        find(&objs, "ServiceAccount", "istio-cni")["imagePullSecrets"][0]["name"],
        "s1"
    );
}

#[test]
fn unknown_provider_is_refused_by_name() {
    let spec = serde_saphyr::from_str(&nodes_only(
        "version: '1.23'\nvalues: {cni: {provider: calico}}",
        "cni: {enabled: true}",
    ))
    .unwrap();
    let err = crate::render::render(&validate(&spec).unwrap(), None)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("values.cni.provider: expected default or multus, found calico"),
        "{err}"
    );
}
