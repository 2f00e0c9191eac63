//! No input stops the operator: random overlays (paths and values), values trees with values
//! of any type at every known key, and random Kubernetes overrides go through validate, render
//! and plan, which answer with an error or a plan — never a panic.

use istio_install_operator::api::IstioInstallSpec;
use istio_install_operator::plan::{self, Owner};
use istio_install_operator::{bundle, render, validate};
use proptest::prelude::*;
use serde_json::{Value, json};

/// Any JSON value, a few levels deep.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        (-1e6f64..1e6).prop_map(|f| json!(f)),
        "[a-z:/._ -]{0,12}".prop_map(Value::String),
        Just(json!("")),
        Just(json!("\n---\n")),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-zA-Z]{1,6}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Overlay paths built from the segments real paths use, and some that make no sense.
fn any_path() -> impl Strategy<Value = String> {
    let segment = prop_oneof![
        Just("metadata".to_string()),
        Just("spec".to_string()),
        Just("template".to_string()),
        Just("containers".to_string()),
        Just("[0]".to_string()),
        Just("[7]".to_string()),
        Just("[name:discovery]".to_string()),
        Just("kind".to_string()),
        Just("labels".to_string()),
        Just("name".to_string()),
        Just("webhooks".to_string()),
        Just("rules".to_string()),
        "[a-z]{1,5}",
    ];
    prop::collection::vec(segment, 1..6).prop_map(|s| s.join("."))
}

fn any_target() -> impl Strategy<Value = (String, String)> {
    prop_oneof![
        Just(("Deployment".to_string(), "istiod".to_string())),
        Just(("ConfigMap".to_string(), "istio".to_string())),
        Just(("Service".to_string(), "istiod".to_string())),
        Just((
            "MutatingWebhookConfiguration".to_string(),
            "istio-sidecar-injector".to_string()
        )),
        Just((
            "ClusterRole".to_string(),
            "istiod-clusterrole-istio-system".to_string()
        )),
        ("[A-Z][a-z]{2,8}", "[a-z]{1,8}"),
    ]
}

/// validate → render → plan; only an answer matters, not which one.
fn pipeline(spec: Value) {
    let Ok(spec) = serde_json::from_value::<IstioInstallSpec>(spec) else {
        return;
    };
    let Ok(v) = validate::validate(&spec) else {
        return;
    };
    let Ok(objects) = render::render(&v, Some("fuzz")) else {
        return;
    };
    let owner = Owner {
        api_version: "istioinstall.io/v1alpha1".into(),
        kind: "IstioInstall".into(),
        name: "fuzz".into(),
        uid: "u".into(),
    };
    let p = plan::plan(objects, &owner);
    for step in &p.steps {
        for o in &step.objects {
            let _ = plan::health(o);
        }
    }
}

/// Paths of every leaf of the 1.24 defaults, to give wrong types to known keys.
fn known_paths() -> Vec<String> {
    fn walk(v: &Value, prefix: &str, out: &mut Vec<String>) {
        match v {
            Value::Object(m) if !m.is_empty() => {
                for (k, v) in m {
                    if !k.contains('.') {
                        walk(
                            v,
                            &if prefix.is_empty() {
                                k.clone()
                            } else {
                                format!("{prefix}.{k}")
                            },
                            out,
                        );
                    }
                }
            }
            _ => out.push(prefix.to_string()),
        }
    }
    let (_, bundle) = bundle::resolve("1.24.6").expect("bundled");
    let mut out = Vec::new();
    walk(&bundle.default_values().unwrap(), "", &mut out);
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn random_overlays_never_panic(
        (kind, name) in any_target(),
        patches in prop::collection::vec((any_path(), prop::option::of(any_json())), 1..4),
        version in prop_oneof![Just("1.23"), Just("1.24")],
    ) {
        let patches: Vec<Value> = patches
            .into_iter()
            .map(|(path, value)| match value {
                Some(v) => json!({"path": path, "value": v}),
                None => json!({"path": path}),
            })
            .collect();
        pipeline(json!({"version": version, "profile": "minimal", "components": {"pilot": {"k8s": {
            "overlays": [{"kind": kind, "name": name, "patches": patches}]}}}}));
    }

    #[test]
    fn any_value_at_any_known_key_never_panics(
        picks in prop::collection::vec((0usize..10_000, any_json()), 1..4),
        profile in prop_oneof![Just("default"), Just("ambient"), Just("demo")],
    ) {
        let paths = known_paths();
        let mut values = json!({});
        for (i, v) in picks {
            let path = &paths[i % paths.len()];
            let _ = istio_install_operator::values::set_path(&mut values, path, v);
        }
        pipeline(json!({"version": "1.24", "profile": profile, "values": values}));
    }

    #[test]
    fn random_kubernetes_overrides_never_panic(
        fields in prop::collection::btree_map(prop::sample::select(vec![
            "resources", "env", "nodeSelector", "tolerations", "affinity", "service", "strategy",
            "hpaSpec", "podDisruptionBudget", "podAnnotations", "replicaCount",
            "serviceAnnotations", "securityContext", "priorityClassName",
        ]), any_json(), 1..5),
        component in prop_oneof![Just("pilot"), Just("cni"), Just("ztunnel")],
    ) {
        let k8s: serde_json::Map<String, Value> =
            fields.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        pipeline(json!({"version": "1.24", "profile": "ambient", "components": {component: {"k8s": k8s}}}));
    }
}
