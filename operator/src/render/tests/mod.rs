//! Render tests: each checks one values combination against what the upstream charts of that
//! release render for it (expectations written from the charts' documented behaviour).

use super::*;
use crate::api::IstioInstallSpec;
use crate::validate::validate;

pub(crate) fn render_spec(yaml: &str) -> Vec<RenderedObject> {
    let spec: IstioInstallSpec = serde_saphyr::from_str(yaml).expect("test spec parses");
    let v = validate(&spec).unwrap_or_else(|e| panic!("{e}"));
    render(&v, Some("test")).unwrap_or_else(|e| panic!("{e}"))
}

pub(crate) fn find<'a>(objs: &'a [RenderedObject], kind: &str, name: &str) -> &'a Value {
    &objs
        .iter()
        .find(|o| o.kind() == kind && o.name() == name)
        .unwrap_or_else(|| {
            panic!(
                "no {kind} {name} in {:?}",
                objs.iter()
                    .map(|o| format!("{}/{}", o.kind(), o.name()))
                    .collect::<Vec<_>>()
            )
        })
        .object
}

#[test]
fn every_object_is_labelled_with_component_and_owner() {
    for o in render_spec("version: '1.24'\n") {
        let labels = &o.object["metadata"]["labels"];
        assert_eq!(
            labels[COMPONENT_LABEL],
            o.component_name.as_str(),
            "{}/{}",
            o.kind(),
            o.name()
        );
        assert_eq!(labels[INSTALL_LABEL], "test");
        assert_eq!(labels["app.kubernetes.io/managed-by"], MANAGER);
    }
}

#[test]
fn namespaced_objects_get_the_component_namespace() {
    let objs = render_spec("version: '1.23'\nnamespace: mesh\n");
    let sa = find(&objs, "ServiceAccount", "istio-reader-service-account");
    assert_eq!(sa["metadata"]["namespace"], "mesh");
}

#[test]
fn documents_split_on_separator_lines_only() {
    let docs: Vec<_> = split_documents("a: 1\n---\nb: '---'\n---\n\n").collect();
    assert_eq!(docs, ["a: 1\n", "b: '---'\n"]);
}

// One module per component; each checks values combinations of that component.
mod base;
mod cni;
mod gateway;
mod injection;
mod istiod;
mod ztunnel;

/// Every template's output for `spec`, by template name, before parsing.
fn template_texts(spec: &str) -> Vec<(String, String)> {
    let spec: IstioInstallSpec = serde_saphyr::from_str(spec).expect("test spec parses");
    let install = validate(&spec).unwrap_or_else(|e| panic!("{e}"));
    let values = minijinja::Value::from(Serde(&install.values));
    let bundle = install.bundle();
    let mut out = Vec::new();
    for component in &install.components {
        let ctx = context(&install, component, &values);
        let dir = format!("templates/{}/", component.kind.template_dir());
        for (path, _) in bundle.files_under(&dir) {
            if path.contains("/files/") || !path.ends_with(".yaml") {
                continue;
            }
            let name = format!("{}/{path}", bundle.minor);
            let text = environment()
                .get_template(&name)
                .and_then(|t| t.render(&ctx))
                .unwrap_or_else(|e| panic!("{name}: {e:#}"));
            out.push((name, text));
        }
    }
    out
}

/// Value sets that reach most branches of the templates.
const VALUE_SETS: &[&str] = &[
    "",
    "revision: canary\nvalues: {revisionTags: [prod, stable]}\n",
    "values: {global: {platform: openshift, variant: debug, hub: example.com/istio, tag: t1}, \
     pilot: {env: {A: 'b: c', B: '1'}, autoscaleEnabled: false}}\n\
     meshConfig: {accessLogFile: /dev/stdout, defaultConfig: {holdApplicationUntilProxyStarts: true}}\n",
    "components:\n  ingressGateways: [{name: edge, namespace: edge, enabled: true, \
     k8s: {replicaCount: 3, env: [{name: X, value: 'y'}]}}]\n  \
     egressGateways: [{name: istio-egressgateway, enabled: true}]\n  \
     cni: {enabled: true}\n",
    "values: {global: {istioNamespace: mesh}, cni: {repair: {enabled: false}, ambient: {dnsCapture: true}}, \
     ztunnel: {resources: {requests: {cpu: 50m}}}, base: {excludedCRDs: [wasmplugins.extensions.istio.io]}}\n",
];

/// The fast reader of template output must read every document every release renders exactly
/// as the full YAML parser does, and must not hand the public cases' documents to it.
#[test]
fn template_output_reads_the_same_with_the_fast_reader_and_yaml_rust2() {
    let mut documents = 0;
    let mut fallbacks = Vec::new();
    for release in bundle::releases() {
        let minor = release.minor_string();
        for profile in &bundle::profiles_by_minor()[&minor] {
            for (set, extra) in VALUE_SETS.iter().enumerate() {
                let spec = format!("version: {release}\nprofile: {profile}\n{extra}");
                let Ok(parsed) = serde_saphyr::from_str::<IstioInstallSpec>(&spec) else {
                    panic!("value set {set} does not parse");
                };
                if validate(&parsed).is_err() {
                    continue;
                }
                for (name, text) in template_texts(&spec) {
                    for doc in split_documents(&text) {
                        documents += 1;
                        let full = parse_template_yaml(doc);
                        match template_yaml::parse(doc) {
                            Ok(fast) => assert_eq!(
                                Ok(&fast),
                                full.as_ref(),
                                "{name} ({release} {profile}, value set {set}):\n{doc}"
                            ),
                            Err(_) => {
                                fallbacks.push(format!("{name} ({release} {profile} set {set})"))
                            }
                        }
                    }
                }
            }
        }
    }
    assert!(documents > 5000, "only {documents} documents");
    assert!(fallbacks.is_empty(), "left to yaml-rust2: {fallbacks:#?}");
}

#[test]
fn merge_filter_deep_merges_and_a_null_removes_the_key() {
    let merged = environment()
        .render_str(
            r#"{{ {"a": {"x": 1, "y": 2}, "b": 1, "keep": "k"} | merge({"a": {"y": 3, "z": 4}, "b": none, "c": [1]}) | tojson }}"#,
            (),
        )
        .expect("renders");
    let merged: Value = serde_json::from_str(&merged).expect("JSON");
    assert_eq!(
        merged,
        json!({"a": {"x": 1, "y": 3, "z": 4}, "keep": "k", "c": [1]})
    );
    // Anything but two maps: the overlay replaces.
    let replaced = environment()
        .render_str(r#"{{ {"a": 1} | merge([2]) | tojson }}"#, ())
        .expect("renders");
    assert_eq!(replaced, "[2]");
}
mod boundary;
mod hostile;

#[test]
fn release_at_least_takes_the_entry_of_the_release_minor_or_the_newest() {
    let check = |release: &str, call: &str| -> Result<bool, String> {
        let text = environment()
            .render_str(
                &format!("{{{{ {call} | tojson }}}}"),
                minijinja::context! { release => minijinja::context! { version => release } },
            )
            .map_err(|e| format!("{e:#}"))?;
        Ok(text == "true")
    };
    for (release, call, expected) in [
        ("1.24.0", r#"release_at_least("1.24")"#, true),
        ("1.23.6", r#"release_at_least("1.24")"#, false),
        ("1.25.0", r#"release_at_least("1.24.3")"#, true),
        ("1.24.4", r#"release_at_least("1.24.5", "1.25.2")"#, false),
        ("1.24.5", r#"release_at_least("1.24.5", "1.25.2")"#, true),
        ("1.25.1", r#"release_at_least("1.24.5", "1.25.2")"#, false),
        ("1.25.2", r#"release_at_least("1.24.5", "1.25.2")"#, true),
        ("1.26.0", r#"release_at_least("1.24.5", "1.25.2")"#, true),
        ("1.23.6", r#"release_at_least("1.24.5", "1.25.2")"#, false),
    ] {
        assert_eq!(check(release, call), Ok(expected), "{release}: {call}");
    }
    for bad in [
        r#"release_at_least("one")"#,
        r#"release_at_least("1.25.2", "1.24.5")"#,
        "release_at_least()",
    ] {
        let err = check("1.24.6", bad).unwrap_err();
        assert!(
            err.contains("expected minors (1.25) or releases (1.25.1)"),
            "{bad}: {err}"
        );
    }
}
