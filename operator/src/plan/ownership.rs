//! Who may write an object that already exists. An install writes over a live object only when
//! it is its own, when another install let go of it, or when it belongs to an Istio install
//! made by other means (istioctl, Istio's Helm charts) and is being taken over. Anything else —
//! a ConfigMap a gateway's name happens to collide with, an object in a namespace a user owns —
//! is left untouched and the install is stopped with a message naming it.

use crate::api::MANAGER;
use crate::json::at;
use crate::render::INSTALL_LABEL;
use serde_json::Value;

/// Annotation on an existing object that lets an IstioInstall take it over although no Istio
/// install created it.
pub const ADOPT_ANNOTATION: &str = "istioinstall.io/adopt";

/// What the controller knows of the install that holds an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OtherInstall {
    /// Gone, or being deleted: what it left behind may be adopted.
    Absent,
    /// It still renders this object.
    Renders,
    /// It no longer renders this object (a revision tag moved, say).
    LetGo,
    /// Its spec does not validate or render now: it keeps every object it holds until it is
    /// fixed or deleted.
    Unknown,
}

/// Whether `install` may write over `live` (None: it does not exist). `other` answers for the
/// install named in the live object's install label. The error says whose the object is and
/// what to do.
pub fn may_write(
    live: Option<&Value>,
    install: &str,
    other: impl Fn(&str) -> OtherInstall,
) -> Result<(), String> {
    let Some(live) = live else { return Ok(()) };
    let meta = &live["metadata"];
    let labels = &meta["labels"];
    if labels["app.kubernetes.io/managed-by"] == MANAGER {
        let Some(holder) = labels[INSTALL_LABEL].as_str().filter(|h| *h != install) else {
            return Ok(());
        };
        return match other(holder) {
            OtherInstall::Absent | OtherInstall::LetGo => Ok(()),
            OtherInstall::Renders => Err(format!(
                "is managed by IstioInstall {holder}; remove it from one of the two installs"
            )),
            OtherInstall::Unknown => Err(format!(
                "is managed by IstioInstall {holder}, whose spec is invalid now; it keeps what it holds until it is fixed or deleted"
            )),
        };
    }
    if at(meta, &["annotations", ADOPT_ANNOTATION]) == "true" || made_by_an_istio_install(live) {
        return Ok(());
    }
    Err(format!(
        "exists and was not created by an Istio install; it is left untouched. Rename or remove the component that renders it, delete the object, or annotate it {ADOPT_ANNOTATION}=true to let this install take it over"
    ))
}

/// istioctl and Istio's in-cluster operator label what they install; Helm annotates what a
/// release installs (Istio's charts are installed that way).
fn made_by_an_istio_install(live: &Value) -> bool {
    let meta = &live["metadata"];
    let labels = meta["labels"].as_object();
    // istioctl labels every object with `operator.istio.io/managed`, `operator.istio.io/component`
    // and `install.operator.istio.io/owning-resource`.
    let istioctl = labels.is_some_and(|l| {
        l.keys().any(|k| {
            k.starts_with("install.operator.istio.io/") || k.starts_with("operator.istio.io/")
        })
    });
    let helm = !at(meta, &["annotations", "meta.helm.sh/release-name"]).is_null()
        || at(meta, &["labels", "app.kubernetes.io/managed-by"]) == "Helm";
    istioctl || helm
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn object(labels: Value, annotations: Value) -> Value {
        json!({"metadata": {"name": "x", "labels": labels, "annotations": annotations}})
    }

    fn nobody(_: &str) -> OtherInstall {
        OtherInstall::Absent
    }

    #[test]
    fn a_new_object_or_our_own_is_written() {
        assert!(may_write(None, "mesh", nobody).is_ok());
        let ours = object(
            json!({"app.kubernetes.io/managed-by": MANAGER, INSTALL_LABEL: "mesh"}),
            json!({}),
        );
        assert!(may_write(Some(&ours), "mesh", nobody).is_ok());
    }

    #[test]
    fn a_foreign_object_is_left_alone_unless_annotated() {
        let foreign = object(json!({"app": "mine"}), json!({}));
        let e = may_write(Some(&foreign), "mesh", nobody).unwrap_err();
        assert!(e.contains("not created by an Istio install"), "{e}");
        assert!(e.contains(ADOPT_ANNOTATION), "{e}");
        let allowed = object(json!({}), json!({ADOPT_ANNOTATION: "true"}));
        assert!(may_write(Some(&allowed), "mesh", nobody).is_ok());
    }

    #[test]
    fn istioctl_and_helm_installs_are_taken_over() {
        let istioctl = object(
            json!({"install.operator.istio.io/owning-resource": "installed-state"}),
            json!({}),
        );
        let helm = object(json!({}), json!({"meta.helm.sh/release-name": "istiod"}));
        let managed = object(json!({"operator.istio.io/managed": "Reconcile"}), json!({}));
        assert!(may_write(Some(&managed), "mesh", nobody).is_ok());
        assert!(may_write(Some(&istioctl), "mesh", nobody).is_ok());
        assert!(may_write(Some(&helm), "mesh", nobody).is_ok());
    }

    #[test]
    fn another_install_keeps_what_it_renders_and_what_it_cannot_render() {
        let theirs = object(
            json!({"app.kubernetes.io/managed-by": MANAGER, INSTALL_LABEL: "first"}),
            json!({}),
        );
        for (state, ok) in [
            (OtherInstall::Absent, true),
            (OtherInstall::LetGo, true),
            (OtherInstall::Renders, false),
            (OtherInstall::Unknown, false),
        ] {
            assert_eq!(
                may_write(Some(&theirs), "second", |name| {
                    assert_eq!(name, "first");
                    state
                })
                .is_ok(),
                ok,
                "{state:?}"
            );
        }
    }
}
