//! decide: the pure core of a reconcile. From the install's plan and what the controller
//! observed (live objects, namespaces, what the other installs claim), it says what to do next:
//! either the writes of one component (then the controller observes their answers and asks
//! again), or how the reconcile settles (the next status, the prunes, the namespace labels,
//! when to look again). No I/O and no clock here: the same inputs give the same decision, so
//! every situation is a table-driven test (`decide/tests.rs`).
//!
//! ```text
//! controller: observe ──► decide ──► Apply(one component) ──► apply/ ──► observe answers ─┐
//!                           ▲                                                            │
//!                           └────────────────────────────────────────────────────────────┘
//!                         └─► Settle(status, prunes, enrolments, next look) ──► apply/
//! ```

use crate::json::at;
use crate::plan::claims::Claims;
use crate::plan::ownership::may_write;
use crate::plan::{self, Health, ObjectKey, Plan};
use crate::render::waypoints::ENROLLED_BY_LABEL;
use crate::status::{ComponentReport, Outcome, State};
use crate::upgrade::Direction;
use crate::validate::ComponentKind;
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::time::Duration;

#[cfg(test)]
mod tests;

/// While a component rolls out (the watch on it usually comes first).
pub const WHILE_PROGRESSING: Duration = Duration::from_secs(5);
/// A Ready install is looked at again now and then, to repair drift a watch could miss.
pub const WHEN_READY: Duration = Duration::from_secs(300);
/// Stalled on something only a change of spec or cluster fixes.
pub const WHEN_BLOCKED: Duration = Duration::from_secs(60);
/// Stalled on what another install holds: checked again soon, since a change to that install
/// (a revision tag or component moved to this one) frees it.
pub const WHEN_CONTESTED: Duration = Duration::from_secs(5);

/// What the install wants, once validated, rendered and planned.
pub struct Input<'a> {
    /// The IstioInstall's name and UID.
    pub install: &'a str,
    pub uid: &'a str,
    /// Components in the order they are applied (already ordered for a downgrade).
    pub plan: &'a Plan,
    /// The exact release being applied.
    pub release: &'a str,
    pub direction: &'a Direction,
    /// Why the waypoints cannot be applied (the Gateway API is not served), if so.
    pub missing_gateway_api: Option<&'a str>,
    /// Namespace labels the waypoints ask for: (namespace, labels).
    pub enrolments: &'a [(String, Value)],
    pub claims: &'a Claims,
}

/// What the controller saw (and what happened to the writes of this reconcile so far).
#[derive(Debug, Default, Clone)]
pub struct Observed {
    /// Live objects of the plan's keys; a key not here does not exist.
    pub live: HashMap<ObjectKey, Value>,
    /// Existing namespaces and their labels.
    pub namespaces: HashMap<String, Value>,
    /// Live objects labelled as this install's and carrying its UID (what prune looks at;
    /// those the plan has may be left out).
    pub owned: Vec<Value>,
    /// Planned keys whose live object the controller vouches for: unchanged (same
    /// resourceVersion) since it was found to match the same intent, so not compared again.
    pub in_sync: HashSet<ObjectKey>,
    /// Steps (indexes into the plan) written in this reconcile: each is written at most once,
    /// so a field the API server never echoes back cannot make a reconcile loop.
    pub applied: HashSet<usize>,
    /// The write that failed in this reconcile, if any.
    pub failure: Option<WriteFailure>,
}

/// A write the API server refused or did not answer.
#[derive(Debug, Clone, PartialEq)]
pub struct WriteFailure {
    pub step: usize,
    /// Retrying later can help (429, 5xx, no answer) as opposed to a refused object.
    pub transient: bool,
    pub forbidden: bool,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Write one component's objects (namespaces first), then observe and decide again.
    Apply(Writes),
    /// Nothing more to write in this reconcile.
    Settle(Settlement),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Writes {
    pub step: usize,
    /// Namespaces to create first (never deleted: users' workloads may live there too).
    pub namespaces: Vec<String>,
    /// Objects to server-side apply, in order.
    pub objects: Vec<Value>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Settlement {
    pub outcome: Outcome,
    /// Owned objects the plan no longer has, to delete in this order (reverse install order).
    pub prunes: Vec<ObjectKey>,
    /// Objects this install no longer renders but another one does: left for it to adopt.
    pub handovers: Vec<(ObjectKey, String)>,
    /// Namespace labels to set: (namespace, labels).
    pub enrol: Vec<(String, Value)>,
    /// Namespaces whose enrolment labels (set by this install) are to be taken off.
    pub unenrol: Vec<String>,
    /// Things worth a log line that change nothing (a waypoint namespace that does not exist).
    pub notes: Vec<String>,
    pub next: Next,
}

impl Settlement {
    /// A status to write and when to look again; nothing to prune, hand over or (un)enrol.
    fn status(outcome: Outcome, next: Next) -> Settlement {
        Settlement {
            outcome,
            prunes: vec![],
            handovers: vec![],
            enrol: vec![],
            unenrol: vec![],
            notes: vec![],
            next,
        }
    }
}

/// When to reconcile again.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Next {
    After(Duration),
    /// The failed write is reported as an error: retried with exponential backoff.
    Backoff,
}

/// How one component stands against what is live.
enum StepState {
    /// These objects differ from the cluster (or are missing).
    Write(Vec<Value>),
    /// An object exists and belongs to someone else.
    Blocked(String),
    Health(Health),
}

/// The next thing to do for an install.
pub fn decide(input: &Input, observed: &Observed) -> Decision {
    let mut components = Vec::new();
    let mut waiting: Option<(String, String)> = None;
    for (i, step) in input.plan.steps.iter().enumerate() {
        if let Some((blocker, _)) = &waiting {
            components.push(report(step, None, false, format!("waiting for {blocker}")));
            continue;
        }
        if let Some(f) = observed.failure.as_ref().filter(|f| f.step == i) {
            return failed(input, components, i, write_failure(f, &step.component_name));
        }
        match step_state(i, step, input, observed) {
            StepState::Write(objects) => {
                return Decision::Apply(Writes {
                    step: i,
                    namespaces: missing_namespaces(input.plan, observed),
                    objects,
                });
            }
            StepState::Blocked(message) => {
                let state = State::Stalled {
                    reason: "ObjectConflict".into(),
                    message,
                };
                return failed(input, components, i, (state, Next::After(WHEN_CONTESTED)));
            }
            StepState::Health(Health::Failed(message)) => {
                // Later components are not touched until this one recovers; the watch on the
                // workload brings the install back when it does.
                let state = State::Stalled {
                    reason: "RolloutFailed".into(),
                    message: format!("component {}: {message}", step.component_name),
                };
                return failed(input, components, i, (state, Next::After(WHEN_BLOCKED)));
            }
            StepState::Health(Health::Progressing(message)) => {
                waiting = Some((step.component_name.clone(), message.clone()));
                components.push(report(step, Some(input.release), false, message));
            }
            StepState::Health(Health::Ready) => components.push(ComponentReport {
                name: step.component_name.clone(),
                version: Some(input.release.to_string()),
                ready: true,
                message: None,
            }),
        }
    }
    if let Some(message) = input.missing_gateway_api {
        components.push(ComponentReport {
            name: "waypoints".into(),
            version: None,
            ready: false,
            message: Some(message.to_string()),
        });
    }
    let mut settlement = Settlement::status(
        Outcome {
            state: State::Ready,
            desired_version: Some(input.release.to_string()),
            components,
        },
        Next::After(WHEN_READY),
    );
    match (waiting, input.missing_gateway_api) {
        (Some((component, message)), _) => {
            let release = input.release;
            let (reason, message) = match input.direction {
                Direction::Upgrade { from } => (
                    "Upgrading",
                    format!("{from} to {release}: {component}: {message}"),
                ),
                Direction::Downgrade { from } => (
                    "Downgrading",
                    format!("{from} to {release}: {component}: {message}"),
                ),
                _ => ("RollingOut", format!("{component}: {message}")),
            };
            settlement.outcome.state = State::Progressing {
                reason: reason.into(),
                message,
            };
            settlement.next = Next::After(WHILE_PROGRESSING);
        }
        (None, Some(message)) => {
            settlement.outcome.state = State::Stalled {
                reason: "MissingGatewayAPI".into(),
                message: message.to_string(),
            };
            settlement.next = Next::After(WHEN_BLOCKED);
        }
        (None, None) => {
            // Only a fully healthy install is pruned: an upgrade never removes what still serves.
            let (prunes, handovers) = prunes(input, observed);
            settlement.prunes = prunes;
            settlement.handovers = handovers;
            let (enrol, unenrol, notes) = enrolments(input, observed);
            settlement.enrol = enrol;
            settlement.unenrol = unenrol;
            settlement.notes = notes;
        }
    }
    Decision::Settle(settlement)
}

fn report(
    step: &plan::Step,
    version: Option<&str>,
    ready: bool,
    message: String,
) -> ComponentReport {
    ComponentReport {
        name: step.component_name.clone(),
        version: version.map(str::to_string),
        ready,
        message: Some(message),
    }
}

/// Compares one component's objects with what is live: what to write, or how healthy it is.
fn step_state(i: usize, step: &plan::Step, input: &Input, observed: &Observed) -> StepState {
    let mut writes = Vec::new();
    let mut lives = Vec::new();
    for desired in &step.objects {
        let key = ObjectKey::of(desired);
        let live = observed.live.get(&key);
        // What an uninstalled install left behind on purpose (CRDs) is adopted, and so is what
        // another one let go of (a revision tag moved from one install to the other); what no
        // Istio install made is never taken over.
        if let Err(why) = may_write(live, input.install, |holder| {
            input.claims.holder(holder, &key)
        }) {
            return StepState::Blocked(format!("{key} {why}"));
        }
        if let Some(live) = live
            && (plan::is_ignored(live) || observed.in_sync.contains(&key))
        {
            lives.push(live);
            continue;
        }
        let mut desired = desired.clone();
        // A memoised plan comes stamped already.
        let intent = match plan::intent_of(&desired) {
            Some(intent) => intent.to_string(),
            None => plan::stamp_intent(&mut desired),
        };
        plan::yield_co_owned(&mut desired, live);
        match live {
            Some(live)
                if observed.applied.contains(&i)
                    || (!plan::intent_changed(live, &intent)
                        && !plan::needs_write(&desired, Some(live))) =>
            {
                lives.push(live)
            }
            _ => writes.push(desired),
        }
    }
    if !writes.is_empty() && !observed.applied.contains(&i) {
        return StepState::Write(writes);
    }
    if !writes.is_empty() {
        // Written in this reconcile, yet not in the answers: wait for the watch to show it.
        return StepState::Health(Health::Progressing(format!(
            "waiting for {} to appear",
            writes
                .first()
                .map(|w| ObjectKey::of(w).to_string())
                .unwrap_or_default()
        )));
    }
    let mut health = Health::Ready;
    for live in lives {
        match plan::health(live) {
            Health::Ready => {}
            Health::Failed(m) => return StepState::Health(Health::Failed(m)),
            Health::Progressing(m) => {
                if health == Health::Ready {
                    health = Health::Progressing(m);
                }
            }
        }
    }
    StepState::Health(health)
}

fn missing_namespaces(plan: &Plan, observed: &Observed) -> Vec<String> {
    plan.namespaces
        .iter()
        .filter(|ns| !observed.namespaces.contains_key(*ns))
        .cloned()
        .collect()
}

/// What a refused or unanswered write means: a refusal stalls the install (retried now and
/// then), anything else is retried with backoff.
fn write_failure(f: &WriteFailure, component: &str) -> (State, Next) {
    if f.transient {
        return (
            State::Progressing {
                reason: "ApplyFailed".into(),
                message: format!("component {component}: {} (retrying)", f.message),
            },
            Next::Backoff,
        );
    }
    (
        State::Stalled {
            reason: if f.forbidden {
                "Forbidden"
            } else {
                "ApplyRejected"
            }
            .into(),
            message: format!("component {component}: {}", f.message),
        },
        Next::After(WHEN_BLOCKED),
    )
}

/// Settles on a failed component: it and those after it keep the versions the status had, so
/// the next reconcile decides the order from what was really applied.
fn failed(
    input: &Input,
    mut components: Vec<ComponentReport>,
    at: usize,
    (state, next): (State, Next),
) -> Decision {
    let message = match &state {
        State::Progressing { message, .. } | State::Stalled { message, .. } => message.clone(),
        _ => String::new(),
    };
    let failed_name = input
        .plan
        .steps
        .get(at)
        .map(|s| s.component_name.clone())
        .unwrap_or_default();
    for (i, rest) in input.plan.steps.iter().skip(at).enumerate() {
        let message = if i == 0 {
            message.clone()
        } else {
            format!("waiting for {failed_name}")
        };
        components.push(report(rest, None, false, message));
    }
    Decision::Settle(Settlement::status(
        Outcome {
            state,
            desired_version: Some(input.release.to_string()),
            components,
        },
        next,
    ))
}

fn component_of(o: &Value) -> ComponentKind {
    ComponentKind::from_label(
        at(o, &["metadata", "labels", crate::render::COMPONENT_LABEL])
            .as_str()
            .unwrap_or_default(),
    )
}

/// Owned objects the plan no longer holds, last installed first; what another install renders
/// is handed over, not deleted (it adopts the object as it is, so a moved revision tag never
/// goes missing in between).
fn prunes(input: &Input, observed: &Observed) -> (Vec<ObjectKey>, Vec<(ObjectKey, String)>) {
    let mut doomed = plan::prune_set(input.plan, &observed.owned, input.uid);
    doomed.sort_by_key(|o| std::cmp::Reverse(component_of(o).install_rank()));
    let mut prunes = Vec::new();
    let mut handovers = Vec::new();
    for o in doomed {
        let key = ObjectKey::of(o);
        match input.claims.wanted_by(&key) {
            Some(other) => handovers.push((key, other.to_string())),
            None => prunes.push(key),
        }
    }
    (prunes, handovers)
}

/// Namespace labels for ambient mode and waypoint use; labels this install set on namespaces
/// no waypoint asks for any more are taken off.
fn enrolments(
    input: &Input,
    observed: &Observed,
) -> (Vec<(String, Value)>, Vec<String>, Vec<String>) {
    let mut enrol = Vec::new();
    let mut notes = Vec::new();
    for (ns, labels) in input.enrolments {
        match observed.namespaces.get(ns) {
            None => notes.push(format!(
                "waypoint namespace {ns} does not exist; not enrolled"
            )),
            Some(live) if plan::needs_write(labels, Some(live)) => {
                enrol.push((ns.clone(), labels.clone()))
            }
            Some(_) => {}
        }
    }
    let mut unenrol: Vec<String> = observed
        .namespaces
        .iter()
        .filter(|(_, labels)| labels[ENROLLED_BY_LABEL] == input.install)
        .filter(|(ns, _)| !input.enrolments.iter().any(|(n, _)| n == *ns))
        .map(|(ns, _)| ns.clone())
        .collect();
    unenrol.sort();
    (enrol, unenrol, notes)
}

/// One pass of an uninstall (deletion of the IstioInstall), from what it owns.
#[derive(Debug, Clone, PartialEq)]
pub enum UninstallStep {
    /// Delete the objects of the last installed component that remains.
    Delete {
        component: String,
        keys: Vec<ObjectKey>,
    },
    /// Everything is gone but what is kept (annotation `istioinstall.io/ignore`): release those
    /// (their owner reference to the install is removed, so the garbage collector keeps them),
    /// take the enrolment labels off, then remove the finalizer.
    Finish { release: Vec<Value> },
}

/// The next pass of an uninstall: reverse install order (waypoints, gateways, ztunnel, cni,
/// istiod, base), one component per pass. Deletion does not wait for health, and an object
/// already being deleted (held by someone else's finalizer, say) counts as gone.
pub fn uninstall(owned: Vec<Value>) -> UninstallStep {
    let (kept, owned): (Vec<_>, Vec<_>) = owned
        .into_iter()
        .filter(|o| at(o, &["metadata", "deletionTimestamp"]).is_null())
        .partition(plan::is_ignored);
    let last = owned.iter().map(|o| component_of(o).install_rank()).max();
    let Some(rank) = last else {
        return UninstallStep::Finish { release: kept };
    };
    let doomed: Vec<&Value> = owned
        .iter()
        .filter(|o| component_of(o).install_rank() == rank)
        .collect();
    let component = doomed
        .first()
        .and_then(|o| at(o, &["metadata", "labels", crate::render::COMPONENT_LABEL]).as_str())
        .unwrap_or_default()
        .to_string();
    UninstallStep::Delete {
        component,
        keys: doomed.into_iter().map(ObjectKey::of).collect(),
    }
}
