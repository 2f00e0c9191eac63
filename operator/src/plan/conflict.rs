//! Two IstioInstalls must not manage the same thing. Each install claims what it would own;
//! the older install (by creation time, then name) keeps a contested claim and the newer one is
//! told who owns it.

use crate::validate::{ComponentKind, ValidatedInstall};

/// What an install claims, in words a person can act on.
pub fn claims(v: &ValidatedInstall) -> Vec<String> {
    let mut out = Vec::new();
    for c in &v.components {
        match c.kind {
            ComponentKind::Base => {
                out.push("the Istio CRDs and default validator (components.base)".to_string())
            }
            ComponentKind::Cni => out.push("the istio-cni node agent (components.cni)".to_string()),
            ComponentKind::Ztunnel => {
                out.push("the ztunnel node proxy (components.ztunnel)".to_string())
            }
            ComponentKind::Pilot => out.push(format!(
                "istiod revision {:?} in namespace {}",
                if v.revision.is_empty() {
                    "default"
                } else {
                    &v.revision
                },
                c.namespace
            )),
            ComponentKind::IngressGateway | ComponentKind::EgressGateway => {
                out.push(format!("gateway {}/{}", c.namespace, c.name))
            }
            ComponentKind::Waypoints => {}
        }
    }
    out
}

/// An install as the conflict check sees it.
pub struct Claimant<'a> {
    pub name: &'a str,
    /// Seconds since the epoch of `metadata.creationTimestamp`.
    pub created: i64,
    pub claims: Vec<String>,
}

/// The first claim of `me` that an older install already holds: (that install, the claim).
pub fn find_conflict<'a>(
    me: &Claimant<'_>,
    others: &'a [Claimant<'a>],
) -> Option<(&'a str, String)> {
    others
        .iter()
        .filter(|o| o.name != me.name && (o.created, o.name) < (me.created, me.name))
        .find_map(|o| {
            me.claims
                .iter()
                .find(|c| o.claims.contains(c))
                .map(|c| (o.name, c.clone()))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_older_install_keeps_its_claims() {
        let first = Claimant {
            name: "a",
            created: 1,
            claims: vec!["cni".into(), "x".into()],
        };
        let second = Claimant {
            name: "b",
            created: 2,
            claims: vec!["cni".into()],
        };
        let all = [
            Claimant {
                name: "a",
                created: 1,
                claims: first.claims.clone(),
            },
            Claimant {
                name: "b",
                created: 2,
                claims: second.claims.clone(),
            },
        ];
        assert_eq!(find_conflict(&second, &all), Some(("a", "cni".to_string())));
        assert_eq!(find_conflict(&first, &all), None);
    }

    #[test]
    fn same_creation_time_is_decided_by_name() {
        let all = [
            Claimant {
                name: "a",
                created: 1,
                claims: vec!["c".into()],
            },
            Claimant {
                name: "b",
                created: 1,
                claims: vec!["c".into()],
            },
        ];
        assert!(find_conflict(&all[1], &all).is_some());
        assert!(find_conflict(&all[0], &all).is_none());
    }
}
