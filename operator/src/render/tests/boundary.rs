//! The security boundary on whole renders: what overlays, values and names cannot make the
//! operator write.

use super::*;

fn refusal(yaml: &str) -> String {
    let spec: IstioInstallSpec = serde_saphyr::from_str(yaml).expect("test spec parses");
    let v = validate(&spec).unwrap_or_else(|e| panic!("{e}"));
    match render(&v, Some("test")) {
        Ok(_) => panic!("rendered, but the boundary should refuse:\n{yaml}"),
        Err(e) => e.to_string(),
    }
}

fn overlay(kind: &str, name: &str, path: &str, value: &str) -> String {
    format!(
        "version: '1.24'\nprofile: minimal\ncomponents:\n  pilot:\n    k8s:\n      overlays:\n      - kind: {kind}\n        name: {name}\n        patches:\n        - path: {path}\n          value: {value}\n"
    )
}

#[test]
fn an_overlay_cannot_rebind_istiod_to_cluster_admin() {
    let e = refusal(&overlay(
        "ClusterRoleBinding",
        "istiod-clusterrole-istio-system",
        "roleRef.name",
        "cluster-admin",
    ));
    assert!(e.contains("pilot"), "{e}");
    assert!(
        e.contains("ClusterRoleBinding") && e.contains("cannot be patched by overlays"),
        "{e}"
    );
    let e = refusal(&overlay(
        "ClusterRole",
        "istiod-clusterrole-istio-system",
        "rules[0].verbs",
        "['*']",
    ));
    assert!(e.contains("ClusterRole"), "{e}");
}

#[test]
fn an_overlay_cannot_change_identity_or_ownership() {
    for (path, value, field) in [
        ("kind", "DaemonSet", "kind"),
        ("apiVersion", "apps/v1beta1", "apiVersion"),
        ("metadata.name", "other", "metadata.name"),
        ("metadata.namespace", "kube-system", "metadata.namespace"),
        ("metadata.labels", "{app: mine}", "ownership labels"),
        (
            "metadata.ownerReferences",
            "[{apiVersion: v1, kind: Namespace, name: x, uid: u}]",
            "ownerReferences",
        ),
    ] {
        let e = refusal(&overlay("Deployment", "istiod", path, value));
        assert!(e.contains(field), "{path}: {e}");
        assert!(e.contains("pilot"), "{path}: {e}");
    }
    // A map where one was expected is refused, not a crash.
    let e = refusal(&overlay("Deployment", "istiod", "metadata", "oops"));
    assert!(e.contains("metadata"), "{e}");
}

#[test]
fn an_overlay_cannot_redirect_a_webhook() {
    let e = refusal(&overlay(
        "MutatingWebhookConfiguration",
        "istio-sidecar-injector",
        "webhooks[0].clientConfig",
        "{url: 'https://attacker.example/inject'}",
    ));
    assert!(e.contains("clientConfig"), "{e}");
}

#[test]
fn ordinary_overlays_still_work() {
    let objs = render_spec(&overlay(
        "Deployment",
        "istiod",
        "spec.template.spec.containers.[name:discovery].args[1]",
        "--monitoringAddr=:15015",
    ));
    let d = find(&objs, "Deployment", "istiod");
    assert_eq!(
        d["spec"]["template"]["spec"]["containers"][0]["args"][1],
        "--monitoringAddr=:15015"
    );
}

#[test]
fn every_bundle_renders_inside_the_boundary() {
    // Every release and profile, with the features that add objects: the boundary refuses
    // nothing the charts render.
    for release in crate::bundle::releases() {
        let (_, bundle) = crate::bundle::resolve(&release.to_string()).expect("bundled");
        for profile in bundle.profiles() {
            let spec = json!({
                "version": release.to_string(), "profile": profile, "revision": "canary",
                "values": {"revisionTags": ["prod"], "cni": {"provider": "multus"}},
                "components": {"cni": {"enabled": true},
                    "ingressGateways": [{"name": "edge", "namespace": "edge-ns", "enabled": true}],
                    "egressGateways": [{"name": "out", "enabled": true}]},
                "waypoints": [{"namespace": "bookinfo", "useFromNamespaces": ["reviews"]}],
            });
            let spec: IstioInstallSpec = serde_json::from_value(spec).expect("spec");
            let Ok(v) = validate(&spec) else { continue };
            if let Err(e) = render(&v, Some("test")) {
                assert!(
                    !matches!(e, RenderError::Boundary { .. }),
                    "{release} {profile}: {e}"
                );
            }
        }
    }
}

#[test]
fn reserved_namespaces_are_refused_unless_allowed() {
    for yaml in [
        "version: '1.24'\ncomponents:\n  ingressGateways:\n  - {name: gw, namespace: kube-public}\n",
        "version: '1.24'\ncomponents:\n  egressGateways:\n  - {name: gw, namespace: kube-system}\n",
        "version: '1.24'\nwaypoints:\n- {namespace: istio-install-operator}\n",
        "version: '1.24'\nwaypoints:\n- {namespace: bookinfo, useFromNamespaces: [kube-system]}\n",
    ] {
        let spec: IstioInstallSpec = serde_saphyr::from_str(yaml).expect("spec");
        let e = validate(&spec).expect_err(yaml).to_string();
        assert!(
            e.contains("is reserved") && e.contains("--allow-reserved-namespaces"),
            "{e}"
        );
        assert!(
            crate::validate::validate_with(&spec, &crate::validate::Policy::allow_all()).is_ok(),
            "{yaml}"
        );
    }
}

#[test]
fn only_allowed_namespaces_are_accepted_when_a_list_is_given() {
    let policy = crate::validate::Policy::default()
        .allowing_only(&["istio-system".into(), "bookinfo".into()]);
    let ok = "version: '1.24'\nprofile: ambient\nwaypoints:\n- {namespace: bookinfo}\n";
    let spec: IstioInstallSpec = serde_saphyr::from_str(ok).expect("spec");
    assert!(crate::validate::validate_with(&spec, &policy).is_ok());
    for (yaml, field) in [
        ("version: '1.24'\nnamespace: mesh\n", "namespace"),
        (
            "version: '1.24'\ncomponents:\n  cni: {enabled: true, namespace: kube-system}\n",
            "components.cni.namespace",
        ),
        (
            "version: '1.24'\ncomponents:\n  ingressGateways:\n  - {name: gw, namespace: edge}\n",
            "components.ingressGateways[gw].namespace",
        ),
        (
            "version: '1.24'\nwaypoints:\n- {namespace: shop}\n",
            "waypoints[0].namespace",
        ),
        (
            "version: '1.24'\nwaypoints:\n- {namespace: bookinfo, useFromNamespaces: [shop]}\n",
            "waypoints[0].useFromNamespaces[0]",
        ),
    ] {
        let spec: IstioInstallSpec = serde_saphyr::from_str(yaml).expect("spec");
        let e = crate::validate::validate_with(&spec, &policy)
            .expect_err(yaml)
            .to_string();
        assert!(
            e.contains(field)
                && e.contains("not among the namespaces")
                && e.contains("bookinfo, istio-system")
                && e.contains("--allowed-namespaces"),
            "{yaml}: {e}"
        );
        assert!(crate::validate::validate(&spec).is_ok(), "{yaml}");
    }
}

#[test]
fn waypoints_are_rendered_with_the_install() {
    let objs =
        render_spec("version: '1.24'\nprofile: ambient\nwaypoints:\n- {namespace: bookinfo}\n");
    let gw = find(&objs, "Gateway", "waypoint");
    assert_eq!(gw["metadata"]["namespace"], "bookinfo");
    assert_eq!(gw["metadata"]["labels"][COMPONENT_LABEL], "waypoints");
    assert_eq!(gw["metadata"]["labels"][INSTALL_LABEL], "test");
    assert_eq!(gw["spec"]["gatewayClassName"], "istio-waypoint");
}

#[test]
fn every_rendered_kind_is_in_the_table_of_kinds() {
    for release in crate::bundle::releases() {
        let (_, bundle) = crate::bundle::resolve(&release.to_string()).expect("bundled");
        for profile in bundle.profiles() {
            for values in [
                json!({}),
                json!({"cni": {"provider": "multus"}, "global": {"platform": "openshift"}}),
            ] {
                let spec = json!({"version": release.to_string(), "profile": profile, "values": values,
                    "components": {"cni": {"enabled": true}}, "waypoints": [{"namespace": "w"}]});
                let spec: IstioInstallSpec = serde_json::from_value(spec).expect("spec");
                let Ok(v) = validate(&spec) else { continue };
                let Ok(objs) = render(&v, None) else { continue };
                for o in objs {
                    assert!(
                        crate::kinds::lookup_exact(
                            o.object["apiVersion"].as_str().unwrap_or(""),
                            o.kind()
                        )
                        .is_some_and(|k| k.rendered),
                        "{release} {profile}: {} {} has no row in the table of kinds",
                        o.object["apiVersion"],
                        o.kind()
                    );
                }
            }
        }
    }
}

#[test]
fn istio_cni_and_ztunnel_may_live_in_kube_system() {
    // GKE and OpenShift installs put the node agents there.
    let objs = render_spec(
        "version: '1.24'\nprofile: ambient\ncomponents:\n  cni: {namespace: kube-system}\n  ztunnel: {namespace: kube-system}\n",
    );
    assert_eq!(
        find(&objs, "DaemonSet", "ztunnel")["metadata"]["namespace"],
        "kube-system"
    );
}
