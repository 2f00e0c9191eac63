//! Render tests of the base component: CRDs, the default validator, the stable-channel policy
//! and the reader ServiceAccount.

use super::{find, render_spec};
use crate::api::IstioInstallSpec;
use crate::render::RenderedObject;
use crate::validate::validate;
use serde_json::Value;

const CRDS: [&str; 14] = [
    "authorizationpolicies.security.istio.io",
    "destinationrules.networking.istio.io",
    "envoyfilters.networking.istio.io",
    "gateways.networking.istio.io",
    "peerauthentications.security.istio.io",
    "proxyconfigs.networking.istio.io",
    "requestauthentications.security.istio.io",
    "serviceentries.networking.istio.io",
    "sidecars.networking.istio.io",
    "telemetries.telemetry.istio.io",
    "virtualservices.networking.istio.io",
    "wasmplugins.extensions.istio.io",
    "workloadentries.networking.istio.io",
    "workloadgroups.networking.istio.io",
];

fn crd_names(objs: &[RenderedObject]) -> Vec<&str> {
    let mut names: Vec<&str> = objs
        .iter()
        .filter(|o| o.kind() == "CustomResourceDefinition")
        .map(|o| o.name())
        .collect();
    names.sort_unstable();
    names
}

/// (name, served, storage) of each version of a CRD.
fn versions(crd: &Value) -> Vec<(String, bool, bool)> {
    crd["spec"]["versions"]
        .as_array()
        .expect("versions")
        .iter()
        .map(|v| {
            (
                v["name"].as_str().unwrap().to_string(),
                v["served"].as_bool().unwrap(),
                v["storage"].as_bool().unwrap(),
            )
        })
        .collect()
}

fn v(name: &str, storage: bool) -> (String, bool, bool) {
    (name.to_string(), true, storage)
}

#[test]
fn both_minors_render_the_fourteen_crds_with_their_versions() {
    for version in ["1.23", "1.24"] {
        let objs = render_spec(&format!("version: '{version}'\n"));
        assert_eq!(crd_names(&objs), CRDS, "{version}");

        let dr = find(&objs, "CustomResourceDefinition", CRDS[1]);
        assert_eq!(
            versions(dr),
            [v("v1", false), v("v1alpha3", false), v("v1beta1", true)]
        );
        let names = &dr["spec"]["names"];
        assert_eq!(names["kind"], "DestinationRule");
        assert_eq!(names["listKind"], "DestinationRuleList");
        assert_eq!(names["singular"], "destinationrule");
        assert_eq!(names["shortNames"], serde_json::json!(["dr"]));
        assert_eq!(
            names["categories"],
            serde_json::json!(["istio-io", "networking-istio-io"])
        );
        assert_eq!(dr["spec"]["scope"], "Namespaced");

        let telemetry = find(&objs, "CustomResourceDefinition", CRDS[9]);
        assert_eq!(versions(telemetry), [v("v1", false), v("v1alpha1", true)]);
        let wasm = find(&objs, "CustomResourceDefinition", CRDS[11]);
        assert_eq!(versions(wasm), [v("v1alpha1", true)]);
        assert!(wasm["spec"]["names"]["shortNames"].is_null());

        for name in CRDS {
            let crd = find(&objs, "CustomResourceDefinition", name);
            for version in crd["spec"]["versions"].as_array().unwrap() {
                assert!(version["subresources"]["status"].is_object(), "{name}");
                let schema = &version["schema"]["openAPIV3Schema"];
                assert_eq!(schema["type"], "object", "{name}");
                for part in ["spec", "status"] {
                    assert_eq!(
                        schema["properties"][part]["x-kubernetes-preserve-unknown-fields"], true,
                        "{name} {part}"
                    );
                }
            }
        }
    }
}

#[test]
fn printer_columns_follow_upstream_order() {
    let objs = render_spec("version: '1.24'\n");
    let columns = |name: &str| -> Vec<String> {
        let crd = find(&objs, "CustomResourceDefinition", name);
        crd["spec"]["versions"][0]["additionalPrinterColumns"]
            .as_array()
            .map(|cs| {
                cs.iter()
                    .map(|c| format!("{}={}", c["name"].as_str().unwrap(), c["jsonPath"]))
                    .collect()
            })
            .unwrap_or_default()
    };
    assert_eq!(
        columns("serviceentries.networking.istio.io"),
        [
            "Hosts=\".spec.hosts\"",
            "Location=\".spec.location\"",
            "Resolution=\".spec.resolution\"",
            "Age=\".metadata.creationTimestamp\""
        ]
    );
    assert_eq!(
        columns("workloadentries.networking.istio.io"),
        [
            "Age=\".metadata.creationTimestamp\"",
            "Address=\".spec.address\""
        ]
    );
    assert!(columns("gateways.networking.istio.io").is_empty());
}

#[test]
fn spec_became_required_on_more_kinds_in_1_24() {
    let required = |version: &str, name: &str| {
        let objs = render_spec(&format!("version: '{version}'\n"));
        let crd = find(&objs, "CustomResourceDefinition", name);
        crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["required"]
            == serde_json::json!(["spec"])
    };
    assert!(!required("1.23", "serviceentries.networking.istio.io"));
    assert!(required("1.24", "serviceentries.networking.istio.io"));
    assert!(required("1.23", "workloadentries.networking.istio.io"));
}

#[test]
fn excluded_crds_are_left_out() {
    let objs = render_spec(
        "version: '1.24'\nvalues:\n  base:\n    excludedCRDs: [envoyfilters.networking.istio.io]\n",
    );
    let names = crd_names(&objs);
    assert_eq!(names.len(), 13);
    assert!(!names.contains(&"envoyfilters.networking.istio.io"));
}

#[test]
fn excluded_crds_is_a_1_24_value() {
    let spec: IstioInstallSpec =
        serde_saphyr::from_str("version: '1.23'\nvalues:\n  base:\n    excludedCRDs: []\n")
            .unwrap();
    let err = validate(&spec).unwrap_err().to_string();
    assert!(
        err.contains("values.base.excludedCRDs: unknown key for Istio 1.23"),
        "{err}"
    );
}

#[test]
fn istio_config_crds_can_be_turned_off() {
    for version in ["1.23", "1.24"] {
        let objs = render_spec(&format!(
            "version: '{version}'\nvalues:\n  base:\n    enableIstioConfigCRDs: false\n"
        ));
        assert!(crd_names(&objs).is_empty(), "{version}");
    }
}

#[test]
fn default_validator_fails_open_towards_the_default_istiod() {
    for version in ["1.23", "1.24"] {
        let objs = render_spec(&format!("version: '{version}'\n"));
        let vwc = find(
            &objs,
            "ValidatingWebhookConfiguration",
            "istiod-default-validator",
        );
        assert_eq!(vwc["metadata"]["labels"]["istio.io/rev"], "default");
        let hook = &vwc["webhooks"][0];
        assert_eq!(hook["name"], "validation.istio.io");
        assert_eq!(hook["failurePolicy"], "Ignore");
        assert_eq!(hook["sideEffects"], "None");
        let service = &hook["clientConfig"]["service"];
        assert_eq!(service["name"], "istiod");
        assert_eq!(service["namespace"], "istio-system");
        assert_eq!(service["path"], "/validate");
        assert_eq!(
            hook["rules"][0]["apiGroups"],
            serde_json::json!([
                "security.istio.io",
                "networking.istio.io",
                "telemetry.istio.io",
                "extensions.istio.io"
            ])
        );
    }
}

#[test]
fn default_validator_follows_default_revision() {
    let objs = render_spec("version: '1.24'\nnamespace: mesh\nvalues: {defaultRevision: canary}\n");
    let vwc = find(
        &objs,
        "ValidatingWebhookConfiguration",
        "istiod-default-validator",
    );
    assert_eq!(vwc["metadata"]["labels"]["istio.io/rev"], "canary");
    let service = &vwc["webhooks"][0]["clientConfig"]["service"];
    assert_eq!(service["name"], "istiod-canary");
    assert_eq!(service["namespace"], "mesh");

    let objs = render_spec("version: '1.24'\nvalues: {defaultRevision: ''}\n");
    assert!(!objs.iter().any(|o| o.name() == "istiod-default-validator"));
}

#[test]
fn default_validator_with_ca_bundle_fails_closed() {
    let objs = render_spec(
        "version: '1.23'\nvalues:\n  base:\n    validationCABundle: Y2E=\n    validationURL: https://istiod.example:15017/validate\n",
    );
    let vwc = find(
        &objs,
        "ValidatingWebhookConfiguration",
        "istiod-default-validator",
    );
    let hook = &vwc["webhooks"][0];
    assert_eq!(hook["failurePolicy"], "Fail");
    assert_eq!(hook["clientConfig"]["caBundle"], "Y2E=");
    assert_eq!(
        hook["clientConfig"]["url"],
        "https://istiod.example:15017/validate"
    );
    assert!(hook["clientConfig"]["service"].is_null());
}

#[test]
fn stable_profile_adds_the_admission_policy() {
    for version in ["1.23", "1.24"] {
        let objs = render_spec(&format!("version: '{version}'\nprofile: stable\n"));
        let vap = find(
            &objs,
            "ValidatingAdmissionPolicy",
            "stable-channel-default-policy.istio.io",
        );
        assert_eq!(vap["spec"]["failurePolicy"], "Fail");
        assert_eq!(vap["spec"]["validations"].as_array().unwrap().len(), 4);
        let binding = find(
            &objs,
            "ValidatingAdmissionPolicyBinding",
            "stable-channel-default-policy-binding.istio.io",
        );
        assert_eq!(
            binding["spec"]["policyName"],
            "stable-channel-default-policy.istio.io"
        );
        assert_eq!(
            binding["spec"]["validationActions"],
            serde_json::json!(["Deny"])
        );
    }
    let objs = render_spec("version: '1.24'\n");
    assert!(!objs.iter().any(|o| o.kind() == "ValidatingAdmissionPolicy"));
}

#[test]
fn reader_service_account_carries_pull_secrets() {
    let objs =
        render_spec("version: '1.24'\nvalues:\n  global:\n    imagePullSecrets: [regcred]\n");
    let sa = find(&objs, "ServiceAccount", "istio-reader-service-account");
    assert_eq!(
        sa["imagePullSecrets"],
        serde_json::json!([{"name": "regcred"}])
    );
    assert_eq!(sa["metadata"]["labels"]["app"], "istio-reader");
}
