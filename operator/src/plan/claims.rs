//! What the other IstioInstalls hold, as typed claims decided from observed state: the
//! components each one claims (for the conflict check) and the objects each one renders (for
//! writes over a live object and for handing an object over instead of pruning it).
//!
//! The controller builds [`Held`] once per generation of each install (rendering is the
//! expensive part) and gives the planner a [`Claims`] snapshot; everything here is pure.

use super::ObjectKey;
use super::conflict::{Claimant, find_conflict};
use super::ownership::OtherInstall;
use std::collections::HashSet;
use std::sync::Arc;

/// What one install claims, from its spec at one generation.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Held {
    /// Its component claims (`conflict::claims`); None when its spec does not validate.
    pub components: Option<Vec<String>>,
    /// The keys of the objects it renders; None when its spec does not validate or render
    /// (then it keeps whatever it holds until it is fixed or deleted).
    pub objects: Option<HashSet<ObjectKey>>,
}

/// Another install as the planner sees it.
#[derive(Debug, Clone)]
pub struct OtherInstallClaims {
    pub name: String,
    /// Seconds since the epoch of its `metadata.creationTimestamp`.
    pub created: i64,
    /// Being deleted: what it leaves behind may be adopted, and it contests nothing.
    pub deleting: bool,
    pub held: Arc<Held>,
}

/// The claims of every other install, at one moment.
#[derive(Debug, Clone, Default)]
pub struct Claims {
    others: Vec<OtherInstallClaims>,
}

impl Claims {
    pub fn new(others: Vec<OtherInstallClaims>) -> Claims {
        Claims { others }
    }

    fn live(&self) -> impl Iterator<Item = &OtherInstallClaims> {
        self.others.iter().filter(|o| !o.deleting)
    }

    /// The first component `me` claims that an older install already holds, as a message
    /// naming that install and what to do.
    pub fn conflict(&self, me: &str, created: i64, claims: Vec<String>) -> Option<String> {
        let me = Claimant {
            name: me,
            created,
            claims,
        };
        let others: Vec<Claimant> = self
            .live()
            .filter_map(|o| {
                Some(Claimant {
                    name: &o.name,
                    created: o.created,
                    claims: o.held.components.clone()?,
                })
            })
            .collect();
        find_conflict(&me, &others).map(|(owner, claim)| {
            format!("{claim} is already managed by IstioInstall {owner:?}; disable it here (spec.components) or delete one of the two installs")
        })
    }

    /// What the install named `holder` (from a live object's install label) means for `key`.
    pub fn holder(&self, holder: &str, key: &ObjectKey) -> OtherInstall {
        match self.live().find(|o| o.name == holder) {
            None => OtherInstall::Absent,
            Some(o) => match &o.held.objects {
                None => OtherInstall::Unknown,
                Some(keys) if keys.contains(key) => OtherInstall::Renders,
                Some(_) => OtherInstall::LetGo,
            },
        }
    }

    /// The install (not being deleted) that renders `key` too, if any: an object this one no
    /// longer renders is handed over to it rather than pruned.
    pub fn wanted_by(&self, key: &ObjectKey) -> Option<&str> {
        self.live()
            .find(|o| o.held.objects.as_ref().is_some_and(|k| k.contains(key)))
            .map(|o| o.name.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> ObjectKey {
        ObjectKey {
            api_version: "v1".into(),
            kind: "ConfigMap".into(),
            namespace: Some("istio-system".into()),
            name: name.into(),
        }
    }

    fn other(name: &str, created: i64, deleting: bool, held: Held) -> OtherInstallClaims {
        OtherInstallClaims {
            name: name.into(),
            created,
            deleting,
            held: Arc::new(held),
        }
    }

    fn renders(components: &[&str], objects: &[&str]) -> Held {
        Held {
            components: Some(components.iter().map(|c| c.to_string()).collect()),
            objects: Some(objects.iter().map(|o| key(o)).collect()),
        }
    }

    #[test]
    fn holder_of_an_object() {
        let claims = Claims::new(vec![
            other("a", 1, false, renders(&[], &["istio"])),
            other("broken", 2, false, Held::default()),
            other("gone", 3, true, renders(&[], &["istio"])),
        ]);
        assert_eq!(claims.holder("a", &key("istio")), OtherInstall::Renders);
        assert_eq!(claims.holder("a", &key("other")), OtherInstall::LetGo);
        assert_eq!(
            claims.holder("broken", &key("istio")),
            OtherInstall::Unknown
        );
        assert_eq!(claims.holder("gone", &key("istio")), OtherInstall::Absent);
        assert_eq!(claims.holder("nobody", &key("istio")), OtherInstall::Absent);
        assert_eq!(claims.wanted_by(&key("istio")), Some("a"));
        assert_eq!(claims.wanted_by(&key("other")), None);
    }

    #[test]
    fn the_older_install_keeps_a_contested_component() {
        let claims = Claims::new(vec![
            other("old", 1, false, renders(&["istiod"], &[])),
            other("deleting", 0, true, renders(&["cni"], &[])),
        ]);
        let m = claims
            .conflict("new", 5, vec!["cni".into(), "istiod".into()])
            .expect("istiod is held by the older install");
        assert!(
            m.starts_with("istiod is already managed by IstioInstall \"old\""),
            "{m}"
        );
        // The newer one does not stop the older one.
        let claims = Claims::new(vec![other("new", 5, false, renders(&["istiod"], &[]))]);
        assert_eq!(claims.conflict("old", 1, vec!["istiod".into()]), None);
    }
}
