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
