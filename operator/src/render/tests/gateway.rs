//! Render tests of the classic ingress/egress gateways.

use super::{find, render_spec};
use serde_json::{Value, json};

fn proxy(deployment: &Value) -> &Value {
    &deployment["spec"]["template"]["spec"]["containers"][0]
}

fn env<'a>(deployment: &'a Value, name: &str) -> Option<&'a Value> {
    proxy(deployment)["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == name)
        .map(|e| &e["value"])
}

fn container_ports(deployment: &Value) -> Vec<u64> {
    proxy(deployment)["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["containerPort"].as_u64().unwrap())
        .collect()
}

#[test]
fn default_profile_has_the_ingress_gateway() {
    for version in ["1.23", "1.24"] {
        let objs = render_spec(&format!("version: '{version}'\n"));
        let svc = find(&objs, "Service", "istio-ingressgateway");
        assert_eq!(svc["spec"]["type"], "LoadBalancer");
        let ports: Vec<_> = svc["spec"]["ports"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                (
                    p["port"].as_u64().unwrap(),
                    p["targetPort"].as_u64().unwrap(),
                )
            })
            .collect();
        assert_eq!(ports, [(15021, 15021), (80, 8080), (443, 8443)]);
        let selector = json!({"app": "istio-ingressgateway", "istio": "ingressgateway"});
        assert_eq!(svc["spec"]["selector"], selector);

        let dep = find(&objs, "Deployment", "istio-ingressgateway");
        assert_eq!(dep["spec"]["selector"]["matchLabels"], selector);
        assert!(dep["spec"]["replicas"].is_null(), "the HPA owns replicas");
        assert_eq!(
            proxy(dep)["image"],
            format!("docker.io/istio/proxyv2:{version}.6")
        );
        assert_eq!(container_ports(dep), [15021, 8080, 8443, 15090]);
        assert_eq!(
            dep["spec"]["template"]["spec"]["serviceAccountName"],
            "istio-ingressgateway-service-account"
        );
        assert_eq!(
            env(dep, "CA_ADDR").unwrap(),
            "istiod.istio-system.svc:15012"
        );

        let hpa = find(&objs, "HorizontalPodAutoscaler", "istio-ingressgateway");
        assert_eq!(
            (
                hpa["spec"]["minReplicas"].as_u64(),
                hpa["spec"]["maxReplicas"].as_u64()
            ),
            (Some(1), Some(5))
        );
        let pdb = find(&objs, "PodDisruptionBudget", "istio-ingressgateway");
        assert_eq!(pdb["spec"]["minAvailable"], 1);
        find(
            &objs,
            "ServiceAccount",
            "istio-ingressgateway-service-account",
        );
        let rb = find(&objs, "RoleBinding", "istio-ingressgateway-sds");
        assert_eq!(
            rb["subjects"][0]["name"],
            "istio-ingressgateway-service-account"
        );
        find(&objs, "Role", "istio-ingressgateway-sds");
    }
}

#[test]
fn recommended_labels_are_a_1_24_addition() {
    let objs = render_spec("version: '1.23'\n");
    let dep = find(&objs, "Deployment", "istio-ingressgateway");
    assert!(dep["metadata"]["labels"]["app.kubernetes.io/name"].is_null());
    let objs = render_spec("version: '1.24'\n");
    let dep = find(&objs, "Deployment", "istio-ingressgateway");
    assert_eq!(
        dep["metadata"]["labels"]["app.kubernetes.io/name"],
        "istio-ingressgateway"
    );
    assert_eq!(
        dep["metadata"]["labels"]["app.kubernetes.io/version"],
        "1.24.6"
    );
}

#[test]
fn an_extra_ingress_gateway_gets_its_own_name_and_namespace() {
    let objs = render_spec(
        "version: '1.24'\ncomponents: {ingressGateways: [{name: edge, namespace: edge}]}\n",
    );
    // The profile's gateway stays.
    find(&objs, "Deployment", "istio-ingressgateway");

    let dep = find(&objs, "Deployment", "edge");
    assert_eq!(dep["metadata"]["namespace"], "edge");
    let selector = json!({"app": "edge", "istio": "edge"});
    assert_eq!(dep["spec"]["selector"]["matchLabels"], selector);
    assert_eq!(
        dep["spec"]["template"]["spec"]["serviceAccountName"],
        "edge-service-account"
    );
    assert_eq!(
        env(dep, "ISTIO_META_OWNER").unwrap(),
        "kubernetes://apis/apps/v1/namespaces/edge/deployments/edge"
    );
    // The control plane is still found in its own namespace.
    assert_eq!(
        env(dep, "CA_ADDR").unwrap(),
        "istiod.istio-system.svc:15012"
    );
    assert_eq!(
        dep["spec"]["template"]["metadata"]["labels"]["service.istio.io/canonical-name"],
        "edge"
    );

    let svc = find(&objs, "Service", "edge");
    assert_eq!(svc["metadata"]["namespace"], "edge");
    assert_eq!(svc["spec"]["selector"], selector);
    for (kind, name) in [
        ("ServiceAccount", "edge-service-account"),
        ("Role", "edge-sds"),
        ("RoleBinding", "edge-sds"),
        ("HorizontalPodAutoscaler", "edge"),
        ("PodDisruptionBudget", "edge"),
    ] {
        assert_eq!(find(&objs, kind, name)["metadata"]["namespace"], "edge");
    }
}

#[test]
fn a_disabled_ingress_gateway_renders_nothing() {
    let objs = render_spec(
        "version: '1.23'\ncomponents: {ingressGateways: [{name: istio-ingressgateway, enabled: false}]}\n",
    );
    assert!(
        !objs
            .iter()
            .any(|o| o.name().starts_with("istio-ingressgateway")),
        "{:?}",
        objs.iter().map(|o| o.name()).collect::<Vec<_>>()
    );
}

#[test]
fn hub_tag_and_variant_pick_the_proxy_image() {
    let objs = render_spec(
        "version: '1.24'\nhub: quay.io/me\ntag: 1.24.6-patched\nvalues: {global: {variant: distroless}}\n",
    );
    let dep = find(&objs, "Deployment", "istio-ingressgateway");
    assert_eq!(
        proxy(dep)["image"],
        "quay.io/me/proxyv2:1.24.6-patched-distroless"
    );

    let objs = render_spec(
        "version: '1.24'\nvalues: {global: {proxy: {image: registry.example/envoy:v1}}}\n",
    );
    let dep = find(&objs, "Deployment", "istio-ingressgateway");
    assert_eq!(proxy(dep)["image"], "registry.example/envoy:v1");
}

#[test]
fn resources_replicas_env_and_scheduling_come_from_values() {
    let objs = render_spec(
        r#"version: '1.24'
values:
  gateways:
    istio-ingressgateway:
      autoscaleEnabled: false
      replicaCount: 3
      resources:
        requests: {cpu: 1, memory: 1Gi}
        limits: null
      env: {MY_FLAG: true}
      podAnnotations: {team: edge}
      serviceAnnotations: {service.beta.kubernetes.io/aws-load-balancer-type: nlb}
      nodeSelector: {disk: ssd}
      tolerations: [{key: dedicated, operator: Exists}]
      type: NodePort
"#,
    );
    let dep = find(&objs, "Deployment", "istio-ingressgateway");
    assert_eq!(dep["spec"]["replicas"], 3);
    assert_eq!(
        proxy(dep)["resources"],
        json!({"requests": {"cpu": 1, "memory": "1Gi"}})
    );
    assert_eq!(env(dep, "MY_FLAG").unwrap(), "true");
    let pod = &dep["spec"]["template"];
    assert_eq!(pod["metadata"]["annotations"]["team"], "edge");
    assert_eq!(
        pod["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
            [0]["matchExpressions"],
        json!([{"key": "disk", "operator": "In", "values": ["ssd"]}])
    );
    assert_eq!(
        pod["spec"]["tolerations"],
        json!([{"key": "dedicated", "operator": "Exists"}])
    );
    assert!(
        !objs
            .iter()
            .any(|o| o.kind() == "HorizontalPodAutoscaler" && o.name() == "istio-ingressgateway")
    );
    let svc = find(&objs, "Service", "istio-ingressgateway");
    assert_eq!(svc["spec"]["type"], "NodePort");
    assert_eq!(
        svc["metadata"]["annotations"]["service.beta.kubernetes.io/aws-load-balancer-type"],
        "nlb"
    );
}

#[test]
fn demo_profile_adds_the_egress_gateway_and_demo_ports() {
    let objs = render_spec("version: '1.24'\nprofile: demo\n");
    let svc = find(&objs, "Service", "istio-egressgateway");
    assert_eq!(svc["spec"]["type"], "ClusterIP");
    assert_eq!(
        svc["spec"]["selector"],
        json!({"app": "istio-egressgateway", "istio": "egressgateway"})
    );
    let egress = find(&objs, "Deployment", "istio-egressgateway");
    assert_eq!(
        egress["metadata"]["labels"]["operator.istio.io/component"],
        "EgressGateways"
    );
    assert_eq!(container_ports(egress), [8080, 8443, 15090]);
    assert_eq!(
        proxy(egress)["resources"]["requests"],
        json!({"cpu": "10m", "memory": "40Mi"})
    );
    find(&objs, "Role", "istio-egressgateway-sds");
    find(&objs, "PodDisruptionBudget", "istio-egressgateway");
    assert!(
        !objs
            .iter()
            .any(|o| o.kind() == "HorizontalPodAutoscaler" && o.name().ends_with("gateway")),
        "demo turns autoscaling off"
    );

    let ingress = find(&objs, "Deployment", "istio-ingressgateway");
    assert_eq!(
        container_ports(ingress),
        [15021, 8080, 8443, 31400, 15443, 15090]
    );
    let svc = find(&objs, "Service", "istio-ingressgateway");
    assert_eq!(svc["spec"]["ports"].as_array().unwrap().len(), 5);
}

#[test]
fn a_revision_labels_the_gateway_and_points_it_at_its_istiod() {
    let objs = render_spec("version: '1.24'\nrevision: canary\n");
    let dep = find(&objs, "Deployment", "istio-ingressgateway");
    assert_eq!(dep["metadata"]["labels"]["istio.io/rev"], "canary");
    let pod = &dep["spec"]["template"];
    assert_eq!(pod["metadata"]["labels"]["istio.io/rev"], "canary");
    assert_eq!(pod["metadata"]["annotations"]["istio.io/rev"], "canary");
    assert_eq!(
        pod["metadata"]["labels"]["service.istio.io/canonical-revision"],
        "canary"
    );
    assert_eq!(
        env(dep, "CA_ADDR").unwrap(),
        "istiod-canary.istio-system.svc:15012"
    );
    let config = pod["spec"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "config-volume")
        .unwrap();
    assert_eq!(config["configMap"]["name"], "istio-canary");
    let role = find(&objs, "Role", "istio-ingressgateway-sds");
    assert_eq!(role["metadata"]["labels"]["istio.io/rev"], "canary");
}

#[test]
fn an_injection_template_makes_a_skeleton_for_the_injector() {
    let objs = render_spec(
        "version: '1.24'\nvalues: {gateways: {istio-ingressgateway: {injectionTemplate: gateway}}}\n",
    );
    let dep = find(&objs, "Deployment", "istio-ingressgateway");
    assert_eq!(proxy(dep)["image"], "auto");
    let meta = &dep["spec"]["template"]["metadata"];
    assert_eq!(meta["annotations"]["inject.istio.io/templates"], "gateway");
    assert_eq!(meta["labels"]["sidecar.istio.io/inject"], "true");
    assert!(
        meta["labels"]["istio.io/rev"].is_null(),
        "the default revision's injector picks it"
    );
    assert!(env(dep, "CA_ADDR").is_none());
}

#[test]
fn run_as_root_drops_the_hardening() {
    let objs = render_spec(
        "version: '1.23'\nvalues: {gateways: {istio-ingressgateway: {runAsRoot: true}}}\n",
    );
    let dep = find(&objs, "Deployment", "istio-ingressgateway");
    assert!(dep["spec"]["template"]["spec"]["securityContext"].is_null());
    assert!(proxy(dep)["securityContext"].is_null());
    assert!(env(dep, "ISTIO_META_UNPRIVILEGED_POD").is_none());
}

#[test]
fn core_dumps_are_a_1_23_option() {
    let objs = render_spec("version: '1.23'\nvalues: {global: {proxy: {enableCoreDump: true}}}\n");
    let dep = find(&objs, "Deployment", "istio-ingressgateway");
    let init = &dep["spec"]["template"]["spec"]["initContainers"][0];
    assert_eq!(init["name"], "enable-core-dump");
    assert_eq!(init["image"], "docker.io/istio/proxyv2:1.23.6");
    assert_eq!(init["securityContext"]["privileged"], true);
}

#[test]
fn openshift_picks_the_user_id() {
    let objs = render_spec("version: '1.24'\nvalues: {global: {platform: openshift}}\n");
    let dep = find(&objs, "Deployment", "istio-ingressgateway");
    assert_eq!(
        dep["spec"]["template"]["spec"]["securityContext"],
        json!({"runAsNonRoot": true})
    );
}

#[test]
fn a_custom_service_is_left_to_the_user() {
    let objs = render_spec(
        "version: '1.24'\nvalues: {gateways: {istio-ingressgateway: {customService: true}}}\n",
    );
    assert!(
        !objs
            .iter()
            .any(|o| o.kind() == "Service" && o.name() == "istio-ingressgateway")
    );
    let objs = render_spec(
        "version: '1.24'\nvalues: {gateways: {istio-ingressgateway: {ingressPorts: [{port: 9000, name: extra}]}}}\n",
    );
    let svc = find(&objs, "Service", "istio-ingressgateway");
    assert_eq!(
        svc["spec"]["ports"][3],
        json!({"port": 9000, "name": "extra"})
    );
}
