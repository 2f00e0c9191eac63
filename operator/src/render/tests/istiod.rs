//! Render tests of the istiod component.

use super::super::{RenderedObject, render};
use super::{find, render_spec};
use crate::api::IstioInstallSpec;
use crate::validate::validate;
use serde_json::Value;

/// Only the istiod component of `version`, with `rest` (more spec fields) appended.
fn istiod_spec(version: &str, rest: &str) -> String {
    format!(
        "version: '{version}'\ncomponents:\n  base: {{enabled: false}}\n  cni: {{enabled: false}}\n  \
         ztunnel: {{enabled: false}}\n  ingressGateways: [{{name: istio-ingressgateway, enabled: false}}]\n  \
         egressGateways: [{{name: istio-egressgateway, enabled: false}}]\n{rest}"
    )
}

fn istiod(version: &str, rest: &str) -> Vec<RenderedObject> {
    render_spec(&istiod_spec(version, rest))
}

fn try_istiod(version: &str, rest: &str) -> Result<Vec<RenderedObject>, String> {
    let spec: IstioInstallSpec =
        serde_saphyr::from_str(&istiod_spec(version, rest)).expect("test spec parses");
    let v = validate(&spec).map_err(|e| e.to_string())?;
    render(&v, Some("test")).map_err(|e| e.to_string())
}

fn names(objs: &[RenderedObject]) -> Vec<String> {
    objs.iter()
        .map(|o| format!("{}/{}", o.kind(), o.name()))
        .collect()
}

fn container(objs: &[RenderedObject], deployment: &str) -> Value {
    find(objs, "Deployment", deployment)["spec"]["template"]["spec"]["containers"][0].clone()
}

/// The istiod container's env as (name, value) pairs; `valueFrom` entries have no value.
fn env(objs: &[RenderedObject], deployment: &str) -> Vec<(String, Option<String>)> {
    container(objs, deployment)["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["name"].as_str().unwrap().to_string(),
                e["value"].as_str().map(str::to_string),
            )
        })
        .collect()
}

fn env_value(objs: &[RenderedObject], deployment: &str, name: &str) -> Option<String> {
    env(objs, deployment)
        .into_iter()
        .find(|(n, _)| n == name)
        .and_then(|(_, v)| v)
}

fn mesh(objs: &[RenderedObject], name: &str) -> Value {
    let text = find(objs, "ConfigMap", name)["data"]["mesh"]
        .as_str()
        .unwrap()
        .to_string();
    serde_saphyr::from_str(&text).unwrap()
}

fn webhook_names(mwc: &Value) -> Vec<&str> {
    mwc["webhooks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["name"].as_str().unwrap())
        .collect()
}

#[test]
fn default_revision_objects_and_selectors() {
    for version in ["1.23", "1.24"] {
        let objs = istiod(version, "");
        let dep = find(&objs, "Deployment", "istiod");
        assert_eq!(dep["spec"]["selector"]["matchLabels"]["istio"], "pilot");
        assert_eq!(dep["metadata"]["labels"]["istio.io/rev"], "default");
        let svc = find(&objs, "Service", "istiod");
        assert_eq!(svc["spec"]["selector"]["istio"], "pilot");
        let mwc = find(
            &objs,
            "MutatingWebhookConfiguration",
            "istio-sidecar-injector",
        );
        assert_eq!(
            webhook_names(mwc),
            [
                "rev.namespace.sidecar-injector.istio.io",
                "rev.object.sidecar-injector.istio.io",
                "namespace.sidecar-injector.istio.io",
                "object.sidecar-injector.istio.io"
            ]
        );
        find(
            &objs,
            "ValidatingWebhookConfiguration",
            "istio-validator-istio-system",
        );
        find(&objs, "HorizontalPodAutoscaler", "istiod");
        find(&objs, "ClusterRole", "istiod-clusterrole-istio-system");
        find(
            &objs,
            "ClusterRole",
            "istiod-gateway-controller-istio-system",
        );
        find(
            &objs,
            "ClusterRole",
            "istio-reader-clusterrole-istio-system",
        );
    }
}

#[test]
fn revision_names_selectors_labels_and_webhooks() {
    let objs = istiod("1.24", "revision: canary\n");
    let all = names(&objs);
    for expected in [
        "Deployment/istiod-canary",
        "Service/istiod-canary",
        "ServiceAccount/istiod-canary",
        "ConfigMap/istio-canary",
        "ConfigMap/istio-sidecar-injector-canary",
        "HorizontalPodAutoscaler/istiod-canary",
        "PodDisruptionBudget/istiod-canary",
        "Role/istiod-canary",
        "RoleBinding/istiod-canary",
        "ClusterRole/istiod-clusterrole-canary-istio-system",
        "ClusterRoleBinding/istiod-gateway-controller-canary-istio-system",
        "ClusterRole/istio-reader-clusterrole-canary-istio-system",
        "MutatingWebhookConfiguration/istio-sidecar-injector-canary",
        "ValidatingWebhookConfiguration/istio-validator-canary-istio-system",
    ] {
        assert!(all.contains(&expected.to_string()), "{expected} in {all:?}");
    }
    let dep = find(&objs, "Deployment", "istiod-canary");
    assert_eq!(
        dep["spec"]["selector"]["matchLabels"],
        serde_json::json!({"app": "istiod", "istio.io/rev": "canary"})
    );
    let pod_labels = &dep["spec"]["template"]["metadata"]["labels"];
    assert_eq!(pod_labels["istio"], "istiod");
    assert_eq!(pod_labels["istio.io/rev"], "canary");
    assert_eq!(
        dep["spec"]["template"]["spec"]["serviceAccountName"],
        "istiod-canary"
    );
    assert_eq!(
        env_value(&objs, "istiod-canary", "REVISION").as_deref(),
        Some("canary")
    );
    let svc = find(&objs, "Service", "istiod-canary");
    assert_eq!(
        svc["spec"]["selector"],
        serde_json::json!({"app": "istiod", "istio.io/rev": "canary"})
    );
    // A revision only answers its own istio.io/rev label, and calls its own Service.
    let mwc = find(
        &objs,
        "MutatingWebhookConfiguration",
        "istio-sidecar-injector-canary",
    );
    assert_eq!(
        webhook_names(mwc),
        [
            "rev.namespace.sidecar-injector.istio.io",
            "rev.object.sidecar-injector.istio.io"
        ]
    );
    assert_eq!(
        mwc["webhooks"][0]["clientConfig"]["service"]["name"],
        "istiod-canary"
    );
    assert_eq!(
        mwc["webhooks"][0]["namespaceSelector"]["matchExpressions"][0]["values"][0],
        "canary"
    );
    let vwc = find(
        &objs,
        "ValidatingWebhookConfiguration",
        "istio-validator-canary-istio-system",
    );
    assert_eq!(
        vwc["webhooks"][0]["objectSelector"]["matchExpressions"][0]["values"][0],
        "canary"
    );
    assert_eq!(
        mesh(&objs, "istio-canary")["defaultConfig"]["discoveryAddress"],
        "istiod-canary.istio-system.svc:15012"
    );
}

#[test]
fn revision_tags_get_their_own_webhooks() {
    let objs = istiod(
        "1.24",
        "revision: 1-24-6\nvalues:\n  revisionTags: [default, prod]\n",
    );
    let default_tag = find(
        &objs,
        "MutatingWebhookConfiguration",
        "istio-revision-tag-default",
    );
    assert_eq!(default_tag["metadata"]["labels"]["istio.io/tag"], "default");
    assert_eq!(default_tag["metadata"]["labels"]["istio.io/rev"], "1-24-6");
    // The "default" tag also takes over the legacy selectors.
    assert_eq!(webhook_names(default_tag).len(), 4);
    let prod = find(
        &objs,
        "MutatingWebhookConfiguration",
        "istio-revision-tag-prod",
    );
    assert_eq!(
        webhook_names(prod),
        [
            "rev.namespace.sidecar-injector.istio.io",
            "rev.object.sidecar-injector.istio.io"
        ]
    );
    let hook = &prod["webhooks"][1];
    assert_eq!(hook["clientConfig"]["service"]["name"], "istiod-1-24-6");
    assert_eq!(
        hook["objectSelector"]["matchExpressions"][1]["values"][0],
        "prod"
    );
    // The charts render the tags with the reinvocation policy of the revision's webhooks.
    assert_eq!(hook["reinvocationPolicy"], "Never");
}

#[test]
fn compatibility_version_1_23_on_1_24_restores_the_old_defaults() {
    let plain = istiod("1.24", "");
    let compat = istiod("1.24", "values:\n  compatibilityVersion: '1.23'\n");
    let before: Vec<_> = env(&plain, "istiod");
    let added: Vec<_> = env(&compat, "istiod")
        .into_iter()
        .filter(|e| !before.contains(e))
        .collect();
    let mut expected: Vec<(String, Option<String>)> = [
        "ENABLE_ENHANCED_DESTINATIONRULE_MERGE",
        "ENABLE_INBOUND_RETRY_POLICY",
        "EXCLUDE_UNSAFE_503_FROM_DEFAULT_RETRY",
        "PILOT_UNIFIED_SIDECAR_SCOPE",
        "PREFER_DESTINATIONRULE_TLS_FOR_EXTERNAL_SERVICES",
    ]
    .iter()
    .map(|n| (n.to_string(), Some("false".to_string())))
    .collect();
    let mut added_sorted = added.clone();
    added_sorted.sort();
    expected.sort();
    assert_eq!(added_sorted, expected);
    assert_eq!(
        mesh(&compat, "istio")["defaultConfig"]["proxyMetadata"],
        serde_json::json!({
            "ENABLE_DEFERRED_STATS_CREATION": "false",
            "BYPASS_OVERLOAD_MANAGER_FOR_STATIC_LISTENERS": "false"
        })
    );
    assert!(
        mesh(&plain, "istio")["defaultConfig"]
            .get("proxyMetadata")
            .is_none()
    );
}

#[test]
fn platform_openshift_trusts_ztunnel_in_kube_system_on_1_24() {
    let objs = istiod("1.24", "values:\n  global: {platform: openshift}\n");
    assert_eq!(
        env_value(&objs, "istiod", "PLATFORM").as_deref(),
        Some("openshift")
    );
    assert_eq!(
        env_value(&objs, "istiod", "CA_TRUSTED_NODE_ACCOUNTS").as_deref(),
        Some("kube-system/ztunnel")
    );
    let plain = istiod("1.24", "");
    assert_eq!(env_value(&plain, "istiod", "PLATFORM").as_deref(), Some(""));
    assert_eq!(
        env_value(&plain, "istiod", "CA_TRUSTED_NODE_ACCOUNTS").as_deref(),
        Some("istio-system/ztunnel")
    );
    // 1.23 has no platform layer: only PLATFORM changes.
    let old = istiod("1.23", "values:\n  global: {platform: openshift}\n");
    assert_eq!(
        env_value(&old, "istiod", "PLATFORM").as_deref(),
        Some("openshift")
    );
    assert_eq!(
        env_value(&old, "istiod", "CA_TRUSTED_NODE_ACCOUNTS").as_deref(),
        Some("istio-system/ztunnel")
    );
}

#[test]
fn trusted_ztunnel_namespace_and_explicit_env_override() {
    let objs = istiod(
        "1.24",
        "values:\n  pilot: {trustedZtunnelNamespace: istio-ztunnel}\n",
    );
    assert_eq!(
        env_value(&objs, "istiod", "CA_TRUSTED_NODE_ACCOUNTS").as_deref(),
        Some("istio-ztunnel/ztunnel")
    );
    let objs = istiod(
        "1.24",
        "values:\n  pilot: {env: {CA_TRUSTED_NODE_ACCOUNTS: 'a/b,c/d'}}\n",
    );
    let entries: Vec<_> = env(&objs, "istiod")
        .into_iter()
        .filter(|(n, _)| n == "CA_TRUSTED_NODE_ACCOUNTS")
        .collect();
    assert_eq!(
        entries,
        [(
            "CA_TRUSTED_NODE_ACCOUNTS".to_string(),
            Some("a/b,c/d".to_string())
        )]
    );
}

#[test]
fn image_from_hub_tag_variant_and_full_reference() {
    let image = |version: &str, rest: &str| {
        container(&istiod(version, rest), "istiod")["image"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(image("1.24.6", ""), "docker.io/istio/pilot:1.24.6");
    assert_eq!(image("1.23.6", ""), "docker.io/istio/pilot:1.23.6");
    assert_eq!(
        image("1.24.6", "hub: quay.io/me\ntag: t1\n"),
        "quay.io/me/pilot:t1"
    );
    assert_eq!(
        image(
            "1.24.6",
            "values:\n  pilot: {hub: reg.local/istio, tag: '1.24.5', variant: debug}\n  global: {variant: distroless}\n"
        ),
        "reg.local/istio/pilot:1.24.5-debug"
    );
    assert_eq!(
        image("1.23.6", "values:\n  global: {variant: distroless}\n"),
        "docker.io/istio/pilot:1.23.6-distroless"
    );
    assert_eq!(
        image("1.24.6", "values:\n  pilot: {image: custom-pilot}\n"),
        "docker.io/istio/custom-pilot:1.24.6"
    );
    assert_eq!(
        image(
            "1.24.6",
            "values:\n  pilot: {image: 'quay.io/x/pilot@sha256:abc', tag: ignored}\n"
        ),
        "quay.io/x/pilot@sha256:abc"
    );
}

#[test]
fn resources_merge_over_the_defaults() {
    let objs = istiod(
        "1.24",
        "values:\n  pilot:\n    resources: {requests: {cpu: '1'}, limits: {cpu: '2', memory: 4Gi}}\n",
    );
    assert_eq!(
        container(&objs, "istiod")["resources"],
        serde_json::json!({
            "requests": {"cpu": "1", "memory": "2048Mi"},
            "limits": {"cpu": "2", "memory": "4Gi"}
        })
    );
    // Defaults: requests only, no empty limits.
    assert_eq!(
        container(&istiod("1.23", ""), "istiod")["resources"],
        serde_json::json!({"requests": {"cpu": "500m", "memory": "2048Mi"}})
    );
}

#[test]
fn pilot_env_is_rendered_as_strings() {
    for version in ["1.23", "1.24"] {
        let objs = istiod(
            version,
            "values:\n  pilot:\n    env: {PILOT_ENABLE_ALPHA_GATEWAY_API: true, PILOT_PUSH_THROTTLE: 200, NAME: x}\n    traceSampling: 0.5\n",
        );
        assert_eq!(
            env_value(&objs, "istiod", "PILOT_ENABLE_ALPHA_GATEWAY_API").as_deref(),
            Some("true")
        );
        assert_eq!(
            env_value(&objs, "istiod", "PILOT_PUSH_THROTTLE").as_deref(),
            Some("200")
        );
        assert_eq!(env_value(&objs, "istiod", "NAME").as_deref(), Some("x"));
        assert_eq!(
            env_value(&objs, "istiod", "PILOT_TRACE_SAMPLING").as_deref(),
            Some("0.5")
        );
    }
    // A name istiod sets itself is replaced, not duplicated (server-side apply keys env by name).
    let objs = istiod("1.24", "values:\n  pilot: {env: {CLUSTER_ID: east}}\n");
    let cluster_ids: Vec<_> = env(&objs, "istiod")
        .into_iter()
        .filter(|(n, _)| n == "CLUSTER_ID")
        .collect();
    assert_eq!(
        cluster_ids,
        [("CLUSTER_ID".to_string(), Some("east".to_string()))]
    );
    // traceSampling 1.0 is "1", as the charts print it.
    assert_eq!(
        env_value(&istiod("1.24", ""), "istiod", "PILOT_TRACE_SAMPLING").as_deref(),
        Some("1")
    );
}

#[test]
fn gateway_deployment_controller_can_be_switched_off() {
    let objs = istiod(
        "1.24",
        "values:\n  pilot: {env: {PILOT_ENABLE_GATEWAY_API_DEPLOYMENT_CONTROLLER: false}}\n",
    );
    assert!(
        !names(&objs)
            .iter()
            .any(|n| n.contains("istiod-gateway-controller"))
    );
}

#[test]
fn mesh_config_merges_over_the_computed_defaults() {
    let objs = istiod(
        "1.24",
        "meshConfig:\n  accessLogFile: /dev/stdout\n  defaultConfig: {holdApplicationUntilProxyStarts: true}\n  defaultProviders: {tracing: [otel]}\n",
    );
    let m = mesh(&objs, "istio");
    assert_eq!(m["accessLogFile"], "/dev/stdout");
    assert_eq!(m["defaultConfig"]["holdApplicationUntilProxyStarts"], true);
    assert_eq!(
        m["defaultConfig"]["discoveryAddress"],
        "istiod.istio-system.svc:15012"
    );
    assert_eq!(m["trustDomain"], "cluster.local");
    assert_eq!(m["rootNamespace"], "istio-system");
    assert_eq!(m["enablePrometheusMerge"], true);
    // Providers chosen by the user replace the prometheus default.
    assert_eq!(
        m["defaultProviders"],
        serde_json::json!({"tracing": ["otel"]})
    );

    let ambient = istiod("1.24", "profile: ambient\n");
    let m = mesh(&ambient, "istio");
    assert_eq!(
        m["defaultConfig"]["proxyMetadata"]["ISTIO_META_ENABLE_HBONE"],
        "true"
    );
    assert_eq!(m["defaultConfig"]["image"]["imageType"], "distroless");
    assert_eq!(
        env_value(&ambient, "istiod", "PILOT_ENABLE_AMBIENT").as_deref(),
        Some("true")
    );
}

#[test]
fn autoscale_off_sets_replicas_and_drops_the_hpa() {
    for version in ["1.23", "1.24"] {
        let objs = istiod(
            version,
            "values:\n  pilot: {autoscaleEnabled: false, replicaCount: 3}\n",
        );
        assert_eq!(find(&objs, "Deployment", "istiod")["spec"]["replicas"], 3);
        assert!(
            !names(&objs)
                .iter()
                .any(|n| n.starts_with("HorizontalPodAutoscaler/"))
        );

        let objs = istiod(version, "");
        assert!(
            find(&objs, "Deployment", "istiod")["spec"]
                .get("replicas")
                .is_none()
        );
        let hpa = find(&objs, "HorizontalPodAutoscaler", "istiod");
        assert_eq!(hpa["spec"]["minReplicas"], 1);
        assert_eq!(hpa["spec"]["maxReplicas"], 5);
    }
}

#[test]
fn pod_scheduling_values_reach_the_pod() {
    let objs = istiod(
        "1.24",
        "values:\n  pilot:\n    nodeSelector: {pool: infra}\n    tolerations: [{key: dedicated, operator: Exists}]\n    podAnnotations: {a: b}\n    podLabels: {team: mesh}\n    affinity: {podAntiAffinity: {}}\n",
    );
    let tmpl = &find(&objs, "Deployment", "istiod")["spec"]["template"];
    assert_eq!(tmpl["spec"]["nodeSelector"]["pool"], "infra");
    let tolerations = tmpl["spec"]["tolerations"].as_array().unwrap();
    assert_eq!(tolerations.len(), 2);
    assert_eq!(tolerations[0]["key"], "cni.istio.io/not-ready");
    assert_eq!(tolerations[1]["key"], "dedicated");
    assert_eq!(tmpl["metadata"]["annotations"]["a"], "b");
    assert_eq!(
        tmpl["metadata"]["annotations"]["prometheus.io/scrape"],
        "true"
    );
    assert_eq!(tmpl["metadata"]["labels"]["team"], "mesh");
    assert!(tmpl["spec"]["affinity"].get("podAntiAffinity").is_some());
}

#[test]
fn log_as_json_and_config_validation_off() {
    let objs = istiod(
        "1.23",
        "values:\n  global: {logAsJson: true, configValidation: false}\n",
    );
    let args = container(&objs, "istiod")["args"].clone();
    assert!(args.as_array().unwrap().contains(&"--log_as_json".into()));
    assert!(
        !names(&objs)
            .iter()
            .any(|n| n.starts_with("ValidatingWebhookConfiguration/"))
    );
}

#[test]
fn injector_config_holds_the_templates_and_policy() {
    let objs = istiod(
        "1.24",
        "values:\n  sidecarInjectorWebhook:\n    templates: {hello: 'metadata: {labels: {hello: world}}'}\n    neverInjectSelector: [{matchLabels: {skip: 'yes'}}]\n",
    );
    let cm = find(&objs, "ConfigMap", "istio-sidecar-injector");
    let config: Value = serde_saphyr::from_str(cm["data"]["config"].as_str().unwrap()).unwrap();
    assert_eq!(config["policy"], "enabled");
    assert_eq!(config["defaultTemplates"], serde_json::json!(["sidecar"]));
    let mut templates: Vec<_> = config["templates"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    templates.sort();
    assert_eq!(
        templates,
        [
            "gateway",
            "grpc-agent",
            "grpc-simple",
            "hello",
            "kube-gateway",
            "sidecar",
            "waypoint"
        ]
    );
    assert_eq!(
        config["neverInjectSelector"][0]["matchLabels"]["skip"],
        "yes"
    );
    let values: Value = serde_json::from_str(cm["data"]["values"].as_str().unwrap()).unwrap();
    assert_eq!(values["global"]["hub"], "docker.io/istio");
    assert_eq!(values["pilot"]["cni"]["enabled"], false);
}

#[test]
fn remote_profile_keeps_webhooks_and_points_at_the_remote_istiod() {
    let objs = istiod(
        "1.24",
        "profile: remote\nvalues:\n  global: {remotePilotAddress: istiod.example.com}\n  revisionTags: [prod]\n",
    );
    let all = names(&objs);
    for gone in [
        "Deployment/istiod",
        "ConfigMap/istio",
        "ConfigMap/istio-sidecar-injector",
        "HorizontalPodAutoscaler/istiod",
        "ServiceAccount/istiod",
    ] {
        assert!(!all.contains(&gone.to_string()), "{gone} in {all:?}");
    }
    let svc = find(&objs, "Service", "istiod");
    assert_eq!(svc["spec"]["type"], "ExternalName");
    assert_eq!(svc["spec"]["externalName"], "istiod.example.com");
    find(
        &objs,
        "MutatingWebhookConfiguration",
        "istio-sidecar-injector",
    );
    // 1.24.6 renders revision tags in remote clusters too.
    find(
        &objs,
        "MutatingWebhookConfiguration",
        "istio-revision-tag-prod",
    );

    let by_ip = istiod(
        "1.24",
        "profile: remote\nvalues:\n  global: {remotePilotAddress: 10.1.2.3}\n",
    );
    let ep = find(&by_ip, "Endpoints", "istiod");
    assert_eq!(ep["subsets"][0]["addresses"][0]["ip"], "10.1.2.3");
    assert!(
        find(&by_ip, "Service", "istiod")["spec"]
            .get("type")
            .is_none()
    );
}

#[test]
fn stable_profile_adds_admission_policies() {
    let objs = istiod("1.24", "profile: stable\nrevision: r1\n");
    let vap = find(
        &objs,
        "ValidatingAdmissionPolicy",
        "stable-channel-policy-r1-istio-system.istio.io",
    );
    assert_eq!(
        vap["spec"]["matchConstraints"]["objectSelector"]["matchExpressions"][0]["values"][0],
        "r1"
    );
    let binding = find(
        &objs,
        "ValidatingAdmissionPolicyBinding",
        "stable-channel-policy-binding-r1-istio-system.istio.io",
    );
    assert_eq!(
        binding["spec"]["policyName"],
        "stable-channel-policy-r1-istio-system.istio.io"
    );
}

#[test]
fn jwks_extra_root_ca_is_mounted() {
    let objs = istiod("1.23", "values:\n  pilot: {jwksResolverExtraRootCA: PEM}\n");
    let cm = find(&objs, "ConfigMap", "pilot-jwks-extra-cacerts");
    assert_eq!(cm["data"]["extra.pem"], "PEM");
    let volumes = &find(&objs, "Deployment", "istiod")["spec"]["template"]["spec"]["volumes"];
    assert!(
        volumes
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v["configMap"]["name"] == "pilot-jwks-extra-cacerts")
    );
}

#[test]
fn version_specific_shapes() {
    // 1.24 labels objects with app.kubernetes.io/*, names the container ports and grants status
    // writes on Services; 1.23 does none of that.
    let new = istiod("1.24", "");
    let old = istiod("1.23", "");
    assert_eq!(
        find(&new, "Service", "istiod")["metadata"]["labels"]["app.kubernetes.io/version"],
        "1.24.6"
    );
    assert!(
        find(&old, "Service", "istiod")["metadata"]["labels"]
            .get("app.kubernetes.io/version")
            .is_none()
    );
    assert_eq!(
        container(&new, "istiod")["ports"].as_array().unwrap().len(),
        5
    );
    assert_eq!(
        container(&old, "istiod")["ports"].as_array().unwrap().len(),
        3
    );
    let has_services_status = |objs: &[RenderedObject]| {
        find(objs, "ClusterRole", "istiod-clusterrole-istio-system")["rules"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["resources"][0] == "services/status")
    };
    assert!(has_services_status(&new));
    assert!(!has_services_status(&old));
}

#[test]
fn control_plane_outside_istio_system_names_its_webhooks() {
    let objs = render_spec(&format!(
        "{}namespace: mesh\n",
        istiod_spec("1.24", "values:\n  revisionTags: [prod]\n")
    ));
    find(
        &objs,
        "MutatingWebhookConfiguration",
        "istio-sidecar-injector-mesh",
    );
    find(
        &objs,
        "MutatingWebhookConfiguration",
        "istio-revision-tag-prod-mesh",
    );
    find(
        &objs,
        "ValidatingWebhookConfiguration",
        "istio-validator-mesh",
    );
    assert_eq!(mesh(&objs, "istio")["rootNamespace"], "mesh");
}

#[test]
fn impossible_values_fail_naming_the_key() {
    let err = try_istiod(
        "1.24",
        "values:\n  global: {pilotCertProvider: kubernetes}\n",
    )
    .unwrap_err();
    assert!(err.contains("values.global.pilotCertProvider"), "{err}");
    let err = try_istiod(
        "1.24",
        "meshConfig:\n  defaultConfig: {tracing: {stackdriver: {debug: true}}}\n",
    )
    .unwrap_err();
    assert!(
        err.contains("values.meshConfig.defaultConfig.tracing.stackdriver"),
        "{err}"
    );
    // Labels istiod is selected by cannot be replaced.
    let err = try_istiod("1.23", "values:\n  pilot: {podLabels: {istio: x}}\n").unwrap_err();
    assert!(err.contains("values.pilot.podLabels.istio"), "{err}");
    // An unknown pilot key is refused by name before rendering.
    let err = try_istiod("1.23", "values:\n  pilot: {autoscaleEnable: false}\n").unwrap_err();
    assert!(err.contains("spec.values.pilot.autoscaleEnable"), "{err}");
}

#[test]
fn openshift_chart_profiles_of_1_23() {
    let objs = istiod("1.23", "values:\n  profile: openshift-ambient\n");
    assert_eq!(
        env_value(&objs, "istiod", "PLATFORM").as_deref(),
        Some("openshift")
    );
    for name in [
        "PILOT_ENABLE_AMBIENT",
        "PILOT_ENABLE_SENDING_HBONE",
        "PILOT_ENABLE_SIDECAR_LISTENING_HBONE",
    ] {
        assert_eq!(
            env_value(&objs, "istiod", name).as_deref(),
            Some("true"),
            "{name}"
        );
    }
    assert_eq!(
        container(&objs, "istiod")["image"],
        "docker.io/istio/pilot:1.23.6-distroless"
    );
    let cm = find(&objs, "ConfigMap", "istio-sidecar-injector");
    let values: Value = serde_json::from_str(cm["data"]["values"].as_str().unwrap()).unwrap();
    assert_eq!(
        values["pilot"]["cni"],
        serde_json::json!({"enabled": true, "provider": "multus"})
    );
}

#[test]
fn compatibility_version_1_20_on_1_23() {
    let objs = istiod("1.23", "values:\n  compatibilityVersion: '1.20'\n");
    assert_eq!(
        env_value(&objs, "istiod", "ENABLE_EXTERNAL_NAME_ALIAS").as_deref(),
        Some("false")
    );
    assert_eq!(
        env_value(
            &objs,
            "istiod",
            "PERSIST_OLDEST_FIRST_HEURISTIC_FOR_VIRTUAL_SERVICE_HOST_MATCHING"
        )
        .as_deref(),
        Some("true")
    );
    assert_eq!(
        mesh(&objs, "istio")["defaultConfig"]["tracing"]["zipkin"]["address"],
        "zipkin.istio-system:9411"
    );
}
