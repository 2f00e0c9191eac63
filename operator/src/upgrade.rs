//! upgrade: what a change of `spec.version` means, decided before anything is applied. Pure: the
//! controller passes in the status (what is installed) and the cluster's Kubernetes version.
//!
//! Istio's supported paths (its upgrade and release-support pages):
//! - in place, a control plane moves one minor at a time, up or down (a two-minor jump is only
//!   supported as a revision-based upgrade: a second IstioInstall with its own `revision`);
//! - the data plane (istio-cni, ztunnel, gateways) is never newer than istiod: an upgrade
//!   applies istiod first, a downgrade applies it last;
//! - a release installs only on Kubernetes versions it supports (`minKubernetes` of the bundle);
//! - known hazards of a path (`upgradeNotes` of the bundle) are reported, not enforced.
//!
//! A refusal changes nothing: what runs keeps running at the installed version.

use crate::api::IstioInstallStatus;
use crate::bundle::Release;
use crate::plan::Step;
use crate::validate::ValidatedInstall;

/// Where the installed release is going.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Direction {
    /// Nothing installed yet.
    Install,
    /// The desired release is what is installed.
    Steady,
    Upgrade {
        from: Release,
    },
    /// A rollback, or a patch downgrade.
    Downgrade {
        from: Release,
    },
}

/// The preflight's answer for an accepted change.
#[derive(Debug, Clone, PartialEq)]
pub struct Preflight {
    pub direction: Direction,
    /// Hazards of this path worth a Warning event when it starts.
    pub notes: Vec<String>,
}

/// A change the operator will not make, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// A CamelCase reason for the Stalled condition.
    pub reason: &'static str,
    pub message: String,
    /// The cluster, not the spec, has to change (so it is worth checking again later).
    pub cluster_side: bool,
}

/// What the status says is installed: the release that last became Ready, and the release each
/// component was last applied at (they differ in the middle of an upgrade).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Installed {
    pub ready: Option<Release>,
    pub applied: Vec<Release>,
}

impl Installed {
    pub fn from_status(status: Option<&IstioInstallStatus>) -> Installed {
        let Some(status) = status else {
            return Installed::default();
        };
        Installed {
            ready: status.installed_version.as_deref().and_then(Release::parse),
            applied: status
                .components
                .iter()
                .filter_map(|c| c.version.as_deref().and_then(Release::parse))
                .collect(),
        }
    }

    /// Where moving to `to` goes from here.
    pub fn direction_to(&self, to: &Release) -> Direction {
        match self.baseline() {
            None => Direction::Install,
            Some(from) if from == to && self.applied.iter().all(|a| a <= to) => Direction::Steady,
            Some(from) if from < to => Direction::Upgrade { from: from.clone() },
            Some(from) => Direction::Downgrade {
                // A partly applied upgrade rolled back to where it started: from its newest part.
                from: self.applied.iter().max().unwrap_or(from).max(from).clone(),
            },
        }
    }

    /// The release the cluster is on: the last Ready one, else the newest applied one.
    fn baseline(&self) -> Option<&Release> {
        self.ready.as_ref().or_else(|| self.applied.iter().max())
    }
}

/// A Kubernetes `major.minor`, as `/version` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct KubernetesVersion {
    pub major: u32,
    pub minor: u32,
}

impl KubernetesVersion {
    /// Reads `"1"`/`"31+"` (the `+` some providers add) or `"1.28"`.
    pub fn parse(major: &str, minor: &str) -> Option<KubernetesVersion> {
        let number = |s: &str| s.trim_end_matches('+').parse::<u32>().ok();
        Some(KubernetesVersion {
            major: number(major)?,
            minor: number(minor)?,
        })
    }
    fn parse_dotted(s: &str) -> Option<KubernetesVersion> {
        let (major, minor) = s.split_once('.')?;
        KubernetesVersion::parse(major, minor)
    }
}

impl std::fmt::Display for KubernetesVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// Decides whether moving from what is installed to `desired` is a supported path.
/// `kubernetes` is the cluster's version, when known.
pub fn preflight(
    installed: &Installed,
    desired: &ValidatedInstall,
    kubernetes: Option<KubernetesVersion>,
) -> Result<Preflight, Refusal> {
    let to = &desired.release;
    let direction = installed.direction_to(to);
    if let Direction::Upgrade { from } | Direction::Downgrade { from } = &direction {
        let minors_apart = if from.major == to.major {
            from.minor.abs_diff(to.minor)
        } else {
            u32::MAX
        };
        if minors_apart > 1 {
            let (verb, step) = if from < to {
                ("upgrade", format!("{}.{}", from.major, from.minor + 1))
            } else {
                (
                    "downgrade",
                    format!("{}.{}", from.major, from.minor.saturating_sub(1)),
                )
            };
            return Err(Refusal {
                reason: "UnsupportedVersionChange",
                message: format!(
                    "spec.version: an in-place {verb} moves one minor at a time, and {to} is \
                     {minors_apart} minors from the installed {from}; set spec.version to {step} \
                     first and change it again once the install is Ready, or install {to} as a \
                     new revision (another IstioInstall with spec.revision set)",
                ),
                cluster_side: false,
            });
        }
    }
    if direction != Direction::Steady
        && let Some(cluster) = kubernetes
        && let Some(min) = desired
            .bundle()
            .manifest
            .min_kubernetes
            .as_deref()
            .and_then(KubernetesVersion::parse_dotted)
        && cluster < min
    {
        return Err(Refusal {
            reason: "UnsupportedKubernetes",
            message: format!(
                "spec.version: Istio {} needs Kubernetes {min} or later and this cluster runs \
                 {cluster}; upgrade the cluster first, or choose an Istio release that supports it",
                desired.release.minor_string()
            ),
            cluster_side: true,
        });
    }
    let notes = match &direction {
        Direction::Upgrade { from } => notes_for(from, desired),
        _ => vec![],
    };
    Ok(Preflight { direction, notes })
}

/// The bundle's upgrade notes that apply to `from` → `desired`.
fn notes_for(from: &Release, desired: &ValidatedInstall) -> Vec<String> {
    let to = desired.release.to_string();
    desired
        .bundle()
        .manifest
        .upgrade_notes
        .iter()
        .filter(|n| n.from == from.minor_string() && from.minor != desired.release.minor)
        .filter(|n| n.releases.is_empty() || n.releases.contains(&to))
        .filter(|n| {
            n.if_component
                .as_deref()
                .is_none_or(|c| desired.components.iter().any(|k| k.kind.field() == c))
        })
        .filter(|n| {
            n.if_value.as_deref().is_none_or(|path| {
                path.split('.')
                    .try_fold(&desired.values, |v, key| v.get(key))
                    .is_some_and(|v| v == &serde_json::Value::Bool(true))
            })
        })
        .map(|n| n.message.clone())
        .collect()
}

/// Orders the steps for the direction: a downgrade rolls the data plane back before istiod so
/// that it is never newer than the control plane (CRDs stay first, waypoints stay last: istiod
/// deploys them). Other directions keep the install order.
pub fn order_steps(steps: &mut [Step], direction: &Direction) {
    if !matches!(direction, Direction::Downgrade { .. }) {
        return;
    }
    steps.sort_by_key(|s| s.component.downgrade_rank());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::IstioInstallSpec;
    use crate::validate::validate;

    fn desired(yaml: &str) -> ValidatedInstall {
        let spec: IstioInstallSpec = serde_saphyr::from_str(yaml).expect("spec parses");
        validate(&spec).expect("valid")
    }

    fn installed(ready: Option<&str>, applied: &[&str]) -> Installed {
        Installed {
            ready: ready.map(|r| Release::parse(r).unwrap()),
            applied: applied.iter().map(|r| Release::parse(r).unwrap()).collect(),
        }
    }

    fn release(s: &str) -> Release {
        Release::parse(s).unwrap()
    }

    const K8S_1_34: Option<KubernetesVersion> = Some(KubernetesVersion {
        major: 1,
        minor: 34,
    });

    #[test]
    fn directions_follow_the_installed_release() {
        let to_1_24 = desired("version: 1.24.6\n");
        let cases = [
            (installed(None, &[]), Direction::Install),
            (installed(Some("1.24.6"), &["1.24.6"]), Direction::Steady),
            (
                installed(Some("1.23.6"), &["1.23.6"]),
                Direction::Upgrade {
                    from: release("1.23.6"),
                },
            ),
            (installed(Some("1.24.6"), &[]), Direction::Steady),
            // Never Ready, partly applied: from the newest applied part.
            (
                installed(None, &["1.23.2", "1.23.2"]),
                Direction::Upgrade {
                    from: release("1.23.2"),
                },
            ),
        ];
        for (current, want) in cases {
            let got = preflight(&current, &to_1_24, K8S_1_34).expect("accepted");
            assert_eq!(got.direction, want, "{current:?}");
        }
        let to_1_23 = desired("version: 1.23.6\n");
        let got = preflight(&installed(Some("1.24.6"), &["1.24.6"]), &to_1_23, K8S_1_34);
        assert_eq!(
            got.unwrap().direction,
            Direction::Downgrade {
                from: release("1.24.6")
            }
        );
        // An upgrade to 1.24 rolled back half-way: istiod is already on 1.24, so it is a
        // downgrade (istiod goes back last), though the last Ready release is the target.
        let got = preflight(
            &installed(Some("1.23.6"), &["1.23.6", "1.24.6", "1.23.6"]),
            &to_1_23,
            K8S_1_34,
        );
        assert_eq!(
            got.unwrap().direction,
            Direction::Downgrade {
                from: release("1.24.6")
            }
        );
    }

    #[test]
    fn an_in_place_change_of_more_than_one_minor_is_refused_naming_the_next_step() {
        let to_1_24 = desired("version: 1.24.6\n");
        let refusal = preflight(&installed(Some("1.22.5"), &["1.22.5"]), &to_1_24, K8S_1_34)
            .expect_err("two minors");
        assert_eq!(refusal.reason, "UnsupportedVersionChange");
        assert!(!refusal.cluster_side);
        assert!(
            refusal
                .message
                .contains("1.24.6 is 2 minors from the installed 1.22.5")
                && refusal.message.contains("set spec.version to 1.23 first"),
            "{}",
            refusal.message
        );
        let to_1_23 = desired("version: 1.23.6\n");
        let refusal = preflight(&installed(Some("1.25.1"), &[]), &to_1_23, K8S_1_34)
            .expect_err("two minors down");
        assert!(
            refusal.message.contains("in-place downgrade")
                && refusal.message.contains("set spec.version to 1.24 first"),
            "{}",
            refusal.message
        );
        // Mid-upgrade to 1.24 (istiod applied), the next minor is still two away from 1.23.
        let refusal = preflight(
            &installed(Some("1.22.5"), &["1.23.6", "1.22.5"]),
            &to_1_24,
            K8S_1_34,
        )
        .expect_err("from the last Ready release");
        assert_eq!(refusal.reason, "UnsupportedVersionChange");
    }

    #[test]
    fn the_bundled_minors_upgrade_one_at_a_time_with_their_notes() {
        // 1.23 → 1.25 skips 1.24: refused, naming it.
        let to_1_25 = desired("version: 1.25.5\nprofile: ambient\n");
        let refusal = preflight(&installed(Some("1.23.6"), &["1.23.6"]), &to_1_25, K8S_1_34)
            .expect_err("two minors");
        assert_eq!(refusal.reason, "UnsupportedVersionChange");
        assert!(
            refusal.message.contains("set spec.version to 1.24 first"),
            "{}",
            refusal.message
        );
        // 1.24 → 1.25 is an upgrade, and 1.25's note on DNS capture applies to ambient.
        let got = preflight(&installed(Some("1.24.6"), &["1.24.6"]), &to_1_25, K8S_1_34)
            .expect("one minor");
        assert_eq!(
            got.direction,
            Direction::Upgrade {
                from: release("1.24.6")
            }
        );
        assert!(
            got.notes
                .iter()
                .any(|n| n.contains("reconcileIptablesOnStartup")),
            "{:?}",
            got.notes
        );
        // Without istio-cni (sidecar mode), or with DNS capture off, it does not.
        for spec in [
            "version: 1.25.5\nprofile: default\n",
            "version: 1.25.5\nprofile: ambient\nvalues: {cni: {ambient: {dnsCapture: false}}}\n",
        ] {
            let got = preflight(
                &installed(Some("1.24.6"), &["1.24.6"]),
                &desired(spec),
                K8S_1_34,
            )
            .expect("one minor");
            assert!(got.notes.is_empty(), "{spec}: {:?}", got.notes);
        }
        // 1.25 needs Kubernetes 1.29.
        let k8s_1_28 = Some(KubernetesVersion {
            major: 1,
            minor: 28,
        });
        let refusal = preflight(&installed(Some("1.24.6"), &["1.24.6"]), &to_1_25, k8s_1_28)
            .expect_err("too old");
        assert_eq!(refusal.reason, "UnsupportedKubernetes");
    }

    #[test]
    fn a_cluster_older_than_the_release_supports_is_refused_until_it_is_upgraded() {
        let to_1_24 = desired("version: 1.24.6\n");
        let k8s = |minor| Some(KubernetesVersion { major: 1, minor });
        let refusal = preflight(&installed(None, &[]), &to_1_24, k8s(27)).expect_err("too old");
        assert_eq!(refusal.reason, "UnsupportedKubernetes");
        assert!(refusal.cluster_side);
        assert!(
            refusal
                .message
                .contains("Istio 1.24 needs Kubernetes 1.28 or later and this cluster runs 1.27"),
            "{}",
            refusal.message
        );
        assert!(preflight(&installed(None, &[]), &to_1_24, k8s(28)).is_ok());
        assert!(
            preflight(
                &installed(None, &[]),
                &desired("version: 1.23.6\n"),
                k8s(27)
            )
            .is_ok()
        );
        // A steady install is left alone on a cluster it no longer supports; unknown: allowed.
        assert!(preflight(&installed(Some("1.24.6"), &[]), &to_1_24, k8s(27)).is_ok());
        assert!(preflight(&installed(None, &[]), &to_1_24, None).is_ok());
        assert_eq!(
            KubernetesVersion::parse("1", "31+"),
            Some(KubernetesVersion {
                major: 1,
                minor: 31
            })
        );
    }

    #[test]
    fn upgrade_notes_follow_the_path_the_release_and_the_install() {
        let from_1_23 = installed(Some("1.23.6"), &["1.23.6"]);
        let notes = |yaml: &str| {
            preflight(&from_1_23, &desired(yaml), K8S_1_34)
                .expect("accepted")
                .notes
        };
        // 1.24.0 sidecar: only the gateway Deployment selector hazard.
        let sidecar = notes("version: 1.24.0\n");
        assert_eq!(sidecar.len(), 1, "{sidecar:?}");
        assert!(sidecar[0].contains("istio/istio#54145"));
        // 1.24.0 ambient adds the waypoint hazard, and DNS capture the restart hazard.
        let ambient = notes("version: 1.24.0\nprofile: ambient\n");
        assert!(ambient.iter().any(|n| n.contains("#53883")), "{ambient:?}");
        let dns = notes(
            "version: 1.24.0\nprofile: ambient\nvalues: {cni: {ambient: {dnsCapture: true}}}\n",
        );
        assert!(dns.iter().any(|n| n.contains("ztunnel#1360")), "{dns:?}");
        // 1.24.3 and later: nothing known.
        assert!(notes("version: 1.24.3\nprofile: ambient\n").is_empty());
        // Patch upgrades within 1.24 carry no 1.23 notes.
        let within = preflight(
            &installed(Some("1.24.0"), &[]),
            &desired("version: 1.24.2\n"),
            K8S_1_34,
        )
        .unwrap();
        assert!(within.notes.is_empty());
    }

    #[test]
    fn a_downgrade_rolls_the_data_plane_back_before_istiod() {
        let install = desired(
            "version: 1.23.6\nprofile: ambient\ncomponents: {ingressGateways: [{name: istio-ingressgateway, enabled: true}]}\n",
        );
        let rendered = crate::render::render(&install, Some("t")).expect("renders");
        let owner = crate::plan::Owner {
            api_version: "istioinstall.io/v1alpha1".into(),
            kind: "IstioInstall".into(),
            name: "t".into(),
            uid: "u".into(),
        };
        let order = |direction: Direction| {
            let mut plan = crate::plan::plan(rendered.clone(), &owner);
            order_steps(&mut plan.steps, &direction);
            plan.steps
                .iter()
                .map(|s| s.component_name.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(
            order(Direction::Upgrade {
                from: release("1.22.5")
            }),
            ["base", "pilot", "cni", "ztunnel", "istio-ingressgateway"]
        );
        assert_eq!(
            order(Direction::Downgrade {
                from: release("1.24.6")
            }),
            ["base", "istio-ingressgateway", "ztunnel", "cni", "pilot"]
        );
    }
}
