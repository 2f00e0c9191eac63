//! status: what happened in a reconcile → the next `IstioInstallStatus`. Pure and deterministic:
//! the same outcome gives the same status (transition times only move when a status flips), so
//! writing it does not retrigger the controller forever.
//!
//! Conditions follow kstatus: `Ready` (True only when every component is rolled out at the
//! desired version), `Reconciling` (True while work is under way), `Stalled` (True when progress
//! needs a change of the spec or of the cluster: invalid spec, conflict, missing dependency).

use crate::api::{ComponentStatus, IstioInstallStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

pub const READY: &str = "Ready";
pub const RECONCILING: &str = "Reconciling";
pub const STALLED: &str = "Stalled";

/// Where the install stands after a reconcile.
#[derive(Debug, Clone, PartialEq)]
pub enum State {
    /// Every component is applied and healthy.
    Ready,
    /// Applying or waiting for a rollout; `reason` is a CamelCase word, `message` says what.
    Progressing { reason: String, message: String },
    /// Cannot progress until the spec (or the cluster) changes.
    Stalled { reason: String, message: String },
    /// The IstioInstall is being deleted.
    Uninstalling { message: String },
}

/// A component as observed in this reconcile.
#[derive(Debug, Clone, PartialEq)]
pub struct ComponentReport {
    pub name: String,
    /// The release applied in this reconcile; None when the component was not reached (it
    /// keeps the version the status had, which the upgrade preflight reads).
    pub version: Option<String>,
    pub ready: bool,
    pub message: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub state: State,
    /// The exact release spec.version resolved to (None when the spec is invalid).
    pub desired_version: Option<String>,
    /// Components in install order; empty means "keep what the status says" (e.g. invalid spec).
    pub components: Vec<ComponentReport>,
}

fn condition(
    type_: &str,
    status: bool,
    reason: &str,
    message: &str,
    generation: i64,
    now: &Time,
) -> Condition {
    Condition {
        type_: type_.to_string(),
        status: if status { "True" } else { "False" }.to_string(),
        reason: reason.to_string(),
        message: message.to_string(),
        observed_generation: Some(generation),
        last_transition_time: now.clone(),
    }
}

/// Computes the next status from the previous one and this reconcile's outcome.
pub fn next_status(
    prev: Option<&IstioInstallStatus>,
    generation: i64,
    outcome: &Outcome,
    now: Time,
) -> IstioInstallStatus {
    let prev = prev.cloned().unwrap_or_default();
    let (ready, reconciling, stalled) = match &outcome.state {
        State::Ready => (
            condition(
                READY,
                true,
                "Installed",
                "every component is rolled out and available",
                generation,
                &now,
            ),
            condition(RECONCILING, false, "Installed", "", generation, &now),
            condition(STALLED, false, "Installed", "", generation, &now),
        ),
        State::Progressing { reason, message } => (
            condition(READY, false, reason, message, generation, &now),
            condition(RECONCILING, true, reason, message, generation, &now),
            condition(STALLED, false, reason, "", generation, &now),
        ),
        State::Stalled { reason, message } => (
            condition(READY, false, reason, message, generation, &now),
            condition(RECONCILING, false, reason, "", generation, &now),
            condition(STALLED, true, reason, message, generation, &now),
        ),
        State::Uninstalling { message } => (
            condition(READY, false, "Uninstalling", message, generation, &now),
            condition(RECONCILING, true, "Uninstalling", message, generation, &now),
            condition(STALLED, false, "Uninstalling", "", generation, &now),
        ),
    };
    let conditions = [ready, reconciling, stalled]
        .into_iter()
        .map(|mut c| {
            if let Some(old) = prev.conditions.iter().find(|o| o.type_ == c.type_)
                && old.status == c.status
            {
                c.last_transition_time = old.last_transition_time.clone();
            }
            c
        })
        .collect();
    let components =
        if outcome.components.is_empty() && matches!(outcome.state, State::Stalled { .. }) {
            prev.components.clone()
        } else {
            outcome
                .components
                .iter()
                .map(|c| {
                    let old = prev.components.iter().find(|o| o.name == c.name);
                    let last_transition_time = match old {
                        Some(o) if o.ready == c.ready => o.last_transition_time.clone(),
                        _ => Some(now.clone()),
                    };
                    ComponentStatus {
                        name: c.name.clone(),
                        version: c
                            .version
                            .clone()
                            .or_else(|| old.and_then(|o| o.version.clone())),
                        ready: c.ready,
                        message: c.message.clone(),
                        last_transition_time,
                    }
                })
                .collect()
        };
    let installed_version = match (&outcome.state, &outcome.desired_version) {
        (State::Ready, Some(v)) => Some(v.clone()),
        _ => prev.installed_version.clone(),
    };
    IstioInstallStatus {
        observed_generation: Some(generation),
        conditions,
        installed_version,
        desired_version: outcome.desired_version.clone().or(prev.desired_version),
        components,
    }
}

/// The `Ready` condition of a status, if any.
pub fn condition_of<'a>(status: &'a IstioInstallStatus, type_: &str) -> Option<&'a Condition> {
    status.conditions.iter().find(|c| c.type_ == type_)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: i64) -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(s).unwrap())
    }

    fn report(ready: bool) -> Vec<ComponentReport> {
        vec![ComponentReport {
            name: "pilot".into(),
            version: Some("1.24.6".into()),
            ready,
            message: None,
        }]
    }

    #[test]
    fn ready_sets_installed_version_and_kstatus_conditions() {
        let out = Outcome {
            state: State::Ready,
            desired_version: Some("1.24.6".into()),
            components: report(true),
        };
        let s = next_status(None, 3, &out, t(10));
        assert_eq!(s.observed_generation, Some(3));
        assert_eq!(s.installed_version.as_deref(), Some("1.24.6"));
        assert_eq!(condition_of(&s, READY).unwrap().status, "True");
        assert_eq!(condition_of(&s, RECONCILING).unwrap().status, "False");
        assert_eq!(
            condition_of(&s, STALLED).unwrap().observed_generation,
            Some(3)
        );
    }

    #[test]
    fn same_outcome_gives_the_same_status() {
        let out = Outcome {
            state: State::Progressing {
                reason: "Rollout".into(),
                message: "waiting".into(),
            },
            desired_version: Some("1.24.6".into()),
            components: report(false),
        };
        let first = next_status(None, 1, &out, t(10));
        let second = next_status(Some(&first), 1, &out, t(99));
        assert_eq!(first, second);
    }

    #[test]
    fn transition_time_moves_only_on_a_flip() {
        let progressing = Outcome {
            state: State::Progressing {
                reason: "Rollout".into(),
                message: "w".into(),
            },
            desired_version: Some("1.24.6".into()),
            components: report(false),
        };
        let ready = Outcome {
            state: State::Ready,
            desired_version: Some("1.24.6".into()),
            components: report(true),
        };
        let a = next_status(None, 1, &progressing, t(10));
        let b = next_status(Some(&a), 1, &ready, t(20));
        assert_eq!(condition_of(&b, READY).unwrap().last_transition_time, t(20));
        assert_eq!(b.components[0].last_transition_time, Some(t(20)));
    }

    #[test]
    fn stalled_keeps_the_installed_version_and_components() {
        let ready = Outcome {
            state: State::Ready,
            desired_version: Some("1.23.6".into()),
            components: report(true),
        };
        let a = next_status(None, 1, &ready, t(10));
        let bad = Outcome {
            state: State::Stalled {
                reason: "InvalidSpec".into(),
                message: "spec.version: …".into(),
            },
            desired_version: None,
            components: vec![],
        };
        let b = next_status(Some(&a), 2, &bad, t(20));
        assert_eq!(b.installed_version.as_deref(), Some("1.23.6"));
        assert_eq!(b.components, a.components);
        assert_eq!(condition_of(&b, STALLED).unwrap().status, "True");
        assert_eq!(condition_of(&b, READY).unwrap().message, "spec.version: …");
    }
}
