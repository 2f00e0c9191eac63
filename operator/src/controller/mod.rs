//! The controller: watches IstioInstalls and everything they own, and runs the pipeline
//! read → validate → render → plan → apply → status for one install at a time.
//!
//! Waiting never blocks a worker: a component that is still rolling out ends the reconcile with
//! a short requeue, and the watch on its Deployment or DaemonSet brings the install back as soon
//! as the rollout moves. Every reconcile re-reads the live objects and writes only what differs,
//! so a restarted operator resumes where the cluster is and sends no writes when nothing changed.

mod events;
pub mod leader;
mod uninstall;

use crate::api::{
    IGNORE_ANNOTATION, IstioInstall, IstioInstallStatus, MANAGER, PAUSED_ANNOTATION, Waypoint,
};
use crate::apply::{Applier, ApplyError};
use crate::plan::conflict::{Claimant, claims, find_conflict};
use crate::plan::ownership::{self, OtherInstall};
use crate::plan::{self, Health, ObjectKey, Owner, Plan, Step};
use crate::render::waypoints::{self, ENROLLED_BY_LABEL};
use crate::render::{self, INSTALL_LABEL};
use crate::status::{self, ComponentReport, Outcome, State};
use crate::telemetry::{ApiHealth, ComponentLabels, ErrorLabels, Fault, Metrics, ReconcileTimer};
use crate::upgrade::{self, Direction};
use crate::validate::{self, ComponentKind, ValidatedInstall};
use events::{EventType, EventWriter};
use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, DynamicObject, PartialObjectMeta, Patch, PatchParams};
use kube::runtime::controller::{Action, Config as ControllerConfig, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Finalizer that makes deletion of an IstioInstall uninstall in reverse order first.
pub const FINALIZER: &str = "istioinstall.io/uninstall";
/// Selector of everything the operator writes.
pub const MANAGED_SELECTOR: &str = "app.kubernetes.io/managed-by=istio-install-operator";
/// Field manager of the namespace enrolment labels (kept apart so removing them is exact).
const ENROLLMENT_MANAGER: &str = "istio-install-operator-enrollment";

const WHILE_PROGRESSING: Duration = Duration::from_secs(5);
const WHEN_READY: Duration = Duration::from_secs(300);
const WHEN_BLOCKED: Duration = Duration::from_secs(60);
/// Stalled on what another install holds: checked again soon, since a change to that install
/// (a revision tag or component moved to this one) frees it.
const WHEN_CONTESTED: Duration = Duration::from_secs(5);

/// Shared state of the reconcilers.
pub struct Context {
    pub applier: Applier,
    pub events: EventWriter,
    pub metrics: Arc<Metrics>,
    pub installs: Store<IstioInstall>,
    pub policy: validate::Policy,
    /// Consecutive failures per install, for exponential backoff.
    failures: Mutex<HashMap<String, u32>>,
    /// How the API server has been answering this controller's requests.
    api_health: ApiHealth,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Apply(#[from] ApplyError),
    #[error("{0}")]
    Kube(#[from] kube::Error),
    /// A bug met by this install's input; reported, never fatal to the process.
    #[error("internal error (please report it): {0}")]
    Panic(String),
}

impl Error {
    /// A stable category for metrics and event reasons.
    pub fn category(&self) -> &'static str {
        match self {
            Error::Apply(e) if e.is_forbidden() => "forbidden",
            Error::Apply(ApplyError::UnknownKind(_)) => "unknown-kind",
            Error::Apply(_) => "apply",
            Error::Kube(_) => "kube",
            Error::Panic(_) => "panic",
        }
    }
}

fn owner_of(ii: &IstioInstall) -> Owner {
    Owner {
        api_version: IstioInstall::api_version(&()).to_string(),
        kind: IstioInstall::kind(&()).to_string(),
        name: ii.name_any(),
        uid: ii.uid().unwrap_or_default(),
    }
}

/// One reconcile, with a panic caught and turned into an error of this install: whatever one
/// IstioInstall holds, the others go on being reconciled.
async fn reconcile(ii: Arc<IstioInstall>, ctx: Arc<Context>) -> Result<Action, Error> {
    use futures::FutureExt;
    match std::panic::AssertUnwindSafe(reconcile_one(ii.clone(), ctx))
        .catch_unwind()
        .await
    {
        Ok(result) => result,
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic".to_string());
            tracing::error!(install = %ii.name_any(), panic = %what, "reconcile panicked; retried with backoff");
            Err(Error::Panic(what))
        }
    }
}

async fn reconcile_one(ii: Arc<IstioInstall>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _timer = ReconcileTimer::start(&ctx.metrics);
    let result = if ii.metadata.deletion_timestamp.is_some() {
        uninstall::run(&ii, &ctx).await
    } else {
        install(&ii, &ctx).await
    };
    if result.is_ok() {
        ctx.failures
            .lock()
            .expect("not poisoned")
            .remove(&ii.name_any());
    } else if let Some(fault) = ctx.api_health.lasting_fault(API_FAULT_SHOWN_AFTER) {
        api_fault(&ii, &ctx, fault).await;
    }
    result
}

/// Requests that keep failing (429, 5xx, no answer) for this long are said in the status.
const API_FAULT_SHOWN_AFTER: Duration = Duration::from_secs(15);

/// Says in `Reconciling` why the install waits when the API server keeps failing our requests
/// (the logs alone would leave `kubectl get ii` silent). Best effort: the status write may
/// fail for the same reason.
async fn api_fault(ii: &IstioInstall, ctx: &Context, fault: Fault) {
    let reason = if fault.throttled() {
        "APIThrottled"
    } else {
        "APIUnavailable"
    };
    let outcome = Outcome {
        state: State::Progressing {
            reason: reason.into(),
            message: format!("{fault}; retrying with backoff"),
        },
        desired_version: ii.status.as_ref().and_then(|s| s.desired_version.clone()),
        components: vec![],
    };
    if let Err(e) = finish(ii, ctx, outcome).await {
        tracing::debug!(install = %ii.name_any(), error = %e, "could not report the API fault in the status");
    }
}

async fn install(ii: &IstioInstall, ctx: &Context) -> Result<Action, Error> {
    let name = ii.name_any();
    ensure_finalizer(ii, ctx).await?;
    if ii
        .annotations()
        .get(PAUSED_ANNOTATION)
        .is_some_and(|v| v == "true")
    {
        return paused(ii, ctx).await;
    }

    let validated = match validate::validate_with(&ii.spec, &ctx.policy) {
        Ok(v) => v,
        Err(e) => {
            stall(ii, ctx, "InvalidSpec", e.to_string(), None).await?;
            return Ok(Action::await_change());
        }
    };
    let desired_version = Some(validated.release.to_string());

    if let Some(message) = conflict(ii, &validated, ctx) {
        stall(ii, ctx, "Conflict", message, desired_version).await?;
        return Ok(Action::requeue(WHEN_CONTESTED));
    }

    let preflight = match preflight(ii, &validated, ctx).await {
        Ok(p) => p,
        Err(refusal) => {
            stall(ii, ctx, refusal.reason, refusal.message, desired_version).await?;
            return Ok(if refusal.cluster_side {
                Action::requeue(WHEN_BLOCKED)
            } else {
                Action::await_change()
            });
        }
    };
    if ii.status.as_ref().and_then(|s| s.desired_version.as_ref()) != desired_version.as_ref() {
        announce(ii, ctx, &preflight, &validated).await;
    }

    let mut rendered = match render::render(&validated, Some(&name)) {
        Ok(r) => r,
        Err(e) => {
            let reason = match e {
                render::RenderError::Boundary { .. } => "Refused",
                _ => "RenderFailed",
            };
            stall(ii, ctx, reason, e.to_string(), desired_version).await?;
            return Ok(Action::await_change());
        }
    };
    let gateway_api = ii.spec.waypoints.is_empty()
        || ctx
            .applier
            .serves("gateway.networking.k8s.io/v1", "Gateway")
            .await;
    if !gateway_api {
        rendered.retain(|r| r.component != ComponentKind::Waypoints);
    }
    let mut plan = plan::plan(rendered, &owner_of(ii));
    upgrade::order_steps(&mut plan.steps, &preflight.direction);
    ensure_namespaces(&plan, ctx).await?;

    let version = validated.release.to_string();
    let mut components = Vec::new();
    let mut waiting_for: Option<(String, String)> = None;
    for step in &plan.steps {
        if let Some((blocker, _)) = &waiting_for {
            components.push(ComponentReport {
                name: step.component_name.clone(),
                version: None,
                ready: false,
                message: Some(format!("waiting for {blocker}")),
            });
            continue;
        }
        let progress = match apply_step(step, &name, ctx).await {
            Ok(p) => p,
            Err(e) => {
                let (state, result) = step_failure(e, &step.component_name);
                // The failed component and those after it keep the versions the status had:
                // the next reconcile must decide the order from what was really applied.
                let message = match &state {
                    State::Progressing { message, .. } | State::Stalled { message, .. } => {
                        message.clone()
                    }
                    _ => String::new(),
                };
                let failed_at = components.len();
                for (i, rest) in plan.steps[failed_at..].iter().enumerate() {
                    components.push(ComponentReport {
                        name: rest.component_name.clone(),
                        version: None,
                        ready: false,
                        message: Some(if i == 0 {
                            message.clone()
                        } else {
                            format!("waiting for {}", step.component_name)
                        }),
                    });
                }
                finish(
                    ii,
                    ctx,
                    Outcome {
                        state,
                        desired_version,
                        components,
                    },
                )
                .await?;
                return result;
            }
        };
        ctx.metrics
            .component_ready
            .get_or_create(&ComponentLabels {
                install: name.clone(),
                component: step.component_name.clone(),
            })
            .set(i64::from(progress.is_none()));
        if let Some(message) = &progress {
            waiting_for = Some((step.component_name.clone(), message.clone()));
        }
        components.push(ComponentReport {
            name: step.component_name.clone(),
            version: Some(version.clone()),
            ready: progress.is_none(),
            message: progress,
        });
    }
    if !gateway_api {
        components.push(ComponentReport {
            name: "waypoints".into(),
            version: None,
            ready: false,
            message: Some(crate::bundle::missing_gateway_api_message()),
        });
    }

    let (state, action) = match (waiting_for, gateway_api) {
        (Some((component, message)), _) => {
            let (reason, message) = match &preflight.direction {
                Direction::Upgrade { from } => (
                    "Upgrading",
                    format!("{from} to {version}: {component}: {message}"),
                ),
                Direction::Downgrade { from } => (
                    "Downgrading",
                    format!("{from} to {version}: {component}: {message}"),
                ),
                _ => ("RollingOut", format!("{component}: {message}")),
            };
            (
                State::Progressing {
                    reason: reason.into(),
                    message,
                },
                Action::requeue(WHILE_PROGRESSING),
            )
        }
        (None, false) => (
            State::Stalled {
                reason: "MissingGatewayAPI".into(),
                message: crate::bundle::missing_gateway_api_message(),
            },
            Action::requeue(WHEN_BLOCKED),
        ),
        (None, true) => {
            // Only a fully healthy install is pruned: an upgrade never removes what still serves.
            prune(&plan, ii, ctx).await?;
            enrol_namespaces(&ii.spec.waypoints, &name, ctx).await?;
            (State::Ready, Action::requeue(WHEN_READY))
        }
    };
    finish(
        ii,
        ctx,
        Outcome {
            state,
            desired_version,
            components,
        },
    )
    .await?;
    Ok(action)
}

/// The upgrade preflight: is moving from what the status says is installed to `validated` a
/// supported path? Reads the cluster's Kubernetes version only when the release changes.
async fn preflight(
    ii: &IstioInstall,
    validated: &ValidatedInstall,
    ctx: &Context,
) -> Result<upgrade::Preflight, upgrade::Refusal> {
    let installed = upgrade::Installed::from_status(ii.status.as_ref());
    let kubernetes = if installed.direction_to(&validated.release) == Direction::Steady {
        None
    } else {
        match ctx.applier.client().apiserver_version().await {
            Ok(info) => upgrade::KubernetesVersion::parse(&info.major, &info.minor),
            Err(e) => {
                tracing::warn!(install = %ii.name_any(), error = %e, "cannot read the Kubernetes version; the preflight skips that check");
                None
            }
        }
    };
    upgrade::preflight(&installed, validated, kubernetes)
}

/// Events when a release change starts: which way it goes, in which order, and the known
/// hazards of the path.
async fn announce(
    ii: &IstioInstall,
    ctx: &Context,
    preflight: &upgrade::Preflight,
    validated: &ValidatedInstall,
) {
    let to = &validated.release;
    let note = match &preflight.direction {
        Direction::Upgrade { from } => Some((
            "Upgrading",
            format!(
                "upgrading in place from {from} to {to}: {}, each once the one before is rolled out",
                ComponentKind::order_in_words(false).join(", ")
            ),
        )),
        Direction::Downgrade { from } => Some((
            "Downgrading",
            format!(
                "downgrading in place from {from} to {to}: {}, so that the data plane is never newer than the control plane",
                ComponentKind::order_in_words(true).join(", ")
            ),
        )),
        _ => None,
    };
    if let Some((reason, note)) = note {
        publish(ctx, ii, EventType::Normal, reason, note).await;
    }
    for note in &preflight.notes {
        publish(ctx, ii, EventType::Warning, "UpgradeNote", note.clone()).await;
    }
}

/// Stops at an install-wide problem that needs a change of spec or cluster; components keep
/// the status they had.
async fn stall(
    ii: &IstioInstall,
    ctx: &Context,
    reason: &str,
    message: String,
    desired_version: Option<String>,
) -> Result<(), Error> {
    let state = State::Stalled {
        reason: reason.into(),
        message,
    };
    finish(
        ii,
        ctx,
        Outcome {
            state,
            desired_version,
            components: vec![],
        },
    )
    .await
}

/// What a failed step means for the install: an object held by another install or refused by
/// the API server stalls it (retried now and then); anything else is retried with backoff.
fn step_failure(e: StepError, component: &str) -> (State, Result<Action, Error>) {
    match e {
        // Later components are not touched until this one recovers; the watch on the
        // workload brings the install back when it does.
        StepError::RolloutFailed(message) => (
            State::Stalled {
                reason: "RolloutFailed".into(),
                message: format!("component {component}: {message}"),
            },
            Ok(Action::requeue(WHEN_BLOCKED)),
        ),
        StepError::Blocked(message) => (
            State::Stalled {
                reason: "ObjectConflict".into(),
                message,
            },
            Ok(Action::requeue(WHEN_CONTESTED)),
        ),
        StepError::Api(e) if !e.is_transient() => (
            State::Stalled {
                reason: if e.is_forbidden() {
                    "Forbidden"
                } else {
                    "ApplyRejected"
                }
                .into(),
                message: format!("component {component}: {e}"),
            },
            Ok(Action::requeue(WHEN_BLOCKED)),
        ),
        StepError::Api(e) => (
            State::Progressing {
                reason: "ApplyFailed".into(),
                message: format!("component {component}: {e} (retrying)"),
            },
            Err(e.into()),
        ),
    }
}

enum StepError {
    /// The object exists and belongs to someone else.
    Blocked(String),
    /// A rollout of this component will not finish without a change (its message).
    RolloutFailed(String),
    Api(ApplyError),
}

impl From<ApplyError> for StepError {
    fn from(e: ApplyError) -> Self {
        StepError::Api(e)
    }
}

/// Applies one component's objects (only those that differ from the cluster) and returns what
/// it still waits for, if anything.
async fn apply_step(
    step: &Step,
    install: &str,
    ctx: &Context,
) -> Result<Option<String>, StepError> {
    let mut waiting = None;
    // Reads go out together; writes then follow in the planned order.
    let keys: Vec<ObjectKey> = step.keys().collect();
    let lives = futures::future::try_join_all(keys.iter().map(|k| ctx.applier.get(k))).await?;
    for ((desired, key), live) in step.objects.iter().zip(keys).zip(lives) {
        // What an uninstalled install left behind on purpose (CRDs) is adopted, and so is what
        // another one let go of (a revision tag moved from one install to the other); what no
        // Istio install made is never taken over.
        let other = |holder: &str| match ctx.installs.get(&ObjectRef::new(holder)) {
            Some(o) if o.metadata.deletion_timestamp.is_none() => {
                match rendered_keys(&o, &ctx.policy) {
                    Some(keys) if keys.contains(&key) => OtherInstall::Renders,
                    Some(_) => OtherInstall::LetGo,
                    None => OtherInstall::Unknown,
                }
            }
            _ => OtherInstall::Absent,
        };
        ownership::may_write(live.as_ref(), install, other)
            .map_err(|why| StepError::Blocked(format!("{key} {why}")))?;
        let mut desired = desired.clone();
        let intent = plan::stamp_intent(&mut desired);
        plan::yield_co_owned(&mut desired, live.as_ref());
        let current = match live {
            Some(live) if plan::is_ignored(&live) => {
                tracing::info!(object = %key, "left as it is (annotation {IGNORE_ANNOTATION})");
                live
            }
            Some(live)
                if !plan::intent_changed(&live, &intent)
                    && !plan::needs_write(&desired, Some(&live)) =>
            {
                live
            }
            _ => {
                tracing::info!(object = %key, "applying");
                ctx.metrics.writes.inc();
                ctx.applier.apply(&desired).await?
            }
        };
        match plan::health(&current) {
            Health::Ready => {}
            Health::Progressing(m) => {
                waiting.get_or_insert(m);
            }
            Health::Failed(m) => return Err(StepError::RolloutFailed(m)),
        }
    }
    Ok(waiting)
}

/// Component namespaces are created when missing and never deleted (users' workloads may
/// live there too).
async fn ensure_namespaces(plan: &Plan, ctx: &Context) -> Result<(), Error> {
    for ns in &plan.namespaces {
        let key = ObjectKey {
            api_version: "v1".into(),
            kind: "Namespace".into(),
            namespace: None,
            name: ns.clone(),
        };
        if ctx.applier.get(&key).await?.is_none() {
            ctx.metrics.writes.inc();
            ctx.applier
                .apply(&json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}))
                .await?;
        }
    }
    Ok(())
}

/// The live objects this install owns: labelled as its own *and* pointing at its UID (labels
/// alone can be copied onto anyone's object).
async fn list_owned(ii: &IstioInstall, ctx: &Context) -> Result<Vec<Value>, Error> {
    let uid = ii.uid().unwrap_or_default();
    let selector = format!("{MANAGED_SELECTOR},{INSTALL_LABEL}={}", ii.name_any());
    let selector = selector.as_str();
    let lists = futures::future::join_all(
        crate::apply::prunable_kinds().map(|(api_version, kind)| async move {
            (kind, ctx.applier.list(api_version, kind, selector).await)
        }),
    )
    .await;
    let mut out = Vec::new();
    for (kind, list) in lists {
        // A list that fails (forbidden included) is an error: reading it as "nothing owned"
        // would end an uninstall with objects left behind.
        match list {
            Ok(items) => out.extend(items),
            Err(e) => {
                tracing::warn!(kind, error = %e, "cannot list owned objects");
                return Err(e.into());
            }
        }
    }
    out.retain(|o| {
        o["metadata"]["ownerReferences"]
            .as_array()
            .is_some_and(|refs| refs.iter().any(|r| r["uid"] == uid.as_str()))
    });
    Ok(out)
}

/// Install order of a component label value (unknown names are gateways).
pub(crate) fn component_rank(component: &str) -> usize {
    ComponentKind::from_label(component).install_rank()
}

async fn prune(plan: &Plan, ii: &IstioInstall, ctx: &Context) -> Result<(), Error> {
    let live = list_owned(ii, ctx).await?;
    let mut doomed = plan::prune_set(plan, &live, &ii.uid().unwrap_or_default());
    doomed.sort_by_key(|o| {
        std::cmp::Reverse(component_rank(
            o["metadata"]["labels"][render::COMPONENT_LABEL]
                .as_str()
                .unwrap_or_default(),
        ))
    });
    // What another install renders is handed over, not deleted: it adopts the object as it is,
    // so a moved revision tag never goes missing in between.
    let wanted = if doomed.is_empty() {
        HashMap::new()
    } else {
        wanted_by_others(ii, ctx)
    };
    for o in doomed {
        let key = ObjectKey::of(o);
        if let Some(other) = wanted.get(&key) {
            tracing::info!(object = %key, to = %other, "handing over, not pruning");
            continue;
        }
        tracing::info!(object = %key, "pruning");
        ctx.metrics.writes.inc();
        ctx.applier.delete(&key).await?;
        publish(
            ctx,
            ii,
            EventType::Normal,
            "Pruned",
            format!("deleted {key}, no longer part of the install"),
        )
        .await;
    }
    Ok(())
}

/// A paused install: nothing is written for it. The status keeps what it said (with the
/// `observedGeneration` it had, so a spec changed meanwhile reads as not yet applied) plus a
/// `Paused` condition.
async fn paused(ii: &IstioInstall, ctx: &Context) -> Result<Action, Error> {
    let mut next = ii.status.clone().unwrap_or_default();
    let already = status::condition_of(&next, "Paused").is_some_and(|c| c.status == "True");
    if !already {
        next.conditions.retain(|c| c.type_ != "Paused");
        next.conditions.push(k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
            type_: "Paused".into(),
            status: "True".into(),
            reason: "Paused".into(),
            message: format!(
                "reconciliation is paused by the annotation {PAUSED_ANNOTATION}; remove it to resume"
            ),
            observed_generation: ii.metadata.generation,
            last_transition_time: Time(k8s_openapi::jiff::Timestamp::now()),
        });
        publish(
            ctx,
            ii,
            EventType::Normal,
            "Paused",
            format!("paused by the annotation {PAUSED_ANNOTATION}: no writes until it is removed"),
        )
        .await;
        write_status(ii, ctx, &next).await?;
    }
    Ok(Action::await_change())
}

/// The keys of the objects an install renders now; `None` when its spec does not validate or
/// render (then it keeps what it holds).
fn rendered_keys(
    ii: &IstioInstall,
    policy: &validate::Policy,
) -> Option<std::collections::HashSet<ObjectKey>> {
    let v = validate::validate_with(&ii.spec, policy).ok()?;
    render::render(&v, ii.metadata.name.as_deref())
        .ok()
        .map(|objects| objects.iter().map(|o| ObjectKey::of(&o.object)).collect())
}

/// Objects other installs (not being deleted) render, by key → install name.
fn wanted_by_others(ii: &IstioInstall, ctx: &Context) -> HashMap<ObjectKey, String> {
    let me = ii.name_any();
    let mut wanted = HashMap::new();
    for other in ctx.installs.state() {
        if other.name_any() == me || other.metadata.deletion_timestamp.is_some() {
            continue;
        }
        for key in rendered_keys(&other, &ctx.policy).unwrap_or_default() {
            wanted.insert(key, other.name_any());
        }
    }
    wanted
}

/// Labels namespaces for ambient mode and waypoint use, and takes the labels off namespaces no
/// waypoint asks for any more (only the labels this operator set).
async fn enrol_namespaces(
    waypoints: &[Waypoint],
    install: &str,
    ctx: &Context,
) -> Result<(), Error> {
    let wanted = waypoints::enrolments(waypoints, install);
    let enrolled = ctx
        .applier
        .list("v1", "Namespace", &format!("{ENROLLED_BY_LABEL}={install}"))
        .await?;
    let client = ctx.applier.client().clone();
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client);
    let params = PatchParams::apply(ENROLLMENT_MANAGER).force();
    for (ns, labels) in &wanted {
        let Some(live) = namespaces.get_opt(ns).await? else {
            tracing::warn!(namespace = %ns, "waypoint namespace does not exist; not enrolled");
            continue;
        };
        let live_labels = serde_json::to_value(&live.metadata.labels).unwrap_or_default();
        if plan::needs_write(labels, Some(&live_labels)) {
            ctx.metrics.writes.inc();
            let patch = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns, "labels": labels}});
            namespaces.patch(ns, &params, &Patch::Apply(&patch)).await?;
        }
    }
    for o in enrolled {
        let ns = o["metadata"]["name"].as_str().unwrap_or_default();
        if !wanted.iter().any(|(n, _)| n == ns) {
            ctx.metrics.writes.inc();
            let patch = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}});
            namespaces.patch(ns, &params, &Patch::Apply(&patch)).await?;
        }
    }
    Ok(())
}

fn conflict(ii: &IstioInstall, v: &ValidatedInstall, ctx: &Context) -> Option<String> {
    let created = |i: &IstioInstall| {
        i.metadata
            .creation_timestamp
            .as_ref()
            .map(|t| t.0.as_second())
            .unwrap_or(i64::MAX)
    };
    let me = Claimant {
        name: &ii.metadata.name.clone().unwrap_or_default(),
        created: created(ii),
        claims: claims(v),
    };
    let installs = ctx.installs.state();
    let others: Vec<Claimant> = installs
        .iter()
        .filter(|o| o.metadata.deletion_timestamp.is_none())
        .filter_map(|o| {
            let v = validate::validate_with(&o.spec, &ctx.policy).ok()?;
            Some(Claimant {
                name: o.metadata.name.as_deref().unwrap_or_default(),
                created: created(o),
                claims: claims(&v),
            })
        })
        .collect();
    find_conflict(&me, &others).map(|(owner, claim)| {
        format!("{claim} is already managed by IstioInstall {owner:?}; disable it here (spec.components) or delete one of the two installs")
    })
}

async fn ensure_finalizer(ii: &IstioInstall, ctx: &Context) -> Result<(), Error> {
    if ii.finalizers().iter().any(|f| f == FINALIZER) {
        return Ok(());
    }
    let api: Api<IstioInstall> = Api::all(ctx.applier.client().clone());
    let mut finalizers = ii.finalizers().to_vec();
    finalizers.push(FINALIZER.to_string());
    // The resourceVersion makes this fail rather than clobber a concurrent change.
    let patch =
        json!({"metadata": {"finalizers": finalizers, "resourceVersion": ii.resource_version()}});
    ctx.metrics.writes.inc();
    api.patch(
        &ii.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await?;
    Ok(())
}

/// Writes the status (only when it changed) and publishes an Event when the state changed.
async fn finish(ii: &IstioInstall, ctx: &Context, outcome: Outcome) -> Result<(), Error> {
    let generation = ii.metadata.generation.unwrap_or(0);
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let prev = ii.status.as_ref();
    let next = status::next_status(prev, generation, &outcome, now);
    if prev == Some(&next) {
        return Ok(());
    }
    let before = prev
        .and_then(|s| status::condition_of(s, status::READY))
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()));
    let ready = status::condition_of(&next, status::READY).expect("always set");
    if before.as_ref()
        != Some(&(
            ready.status.clone(),
            ready.reason.clone(),
            ready.message.clone(),
        ))
    {
        let (type_, reason) = match &outcome.state {
            State::Ready => (EventType::Normal, "Ready".to_string()),
            State::Progressing { reason, .. } if reason == "ApplyFailed" => {
                (EventType::Warning, reason.clone())
            }
            State::Progressing { reason, .. } => (EventType::Normal, reason.clone()),
            State::Stalled { reason, .. } => (EventType::Warning, reason.clone()),
            State::Uninstalling { .. } => (EventType::Normal, "Uninstalling".to_string()),
        };
        let note = if ready.message.is_empty() {
            ready.reason.clone()
        } else {
            ready.message.clone()
        };
        publish(ctx, ii, type_, &reason, note).await;
    }
    write_status(ii, ctx, &next).await
}

async fn write_status(
    ii: &IstioInstall,
    ctx: &Context,
    status: &IstioInstallStatus,
) -> Result<(), Error> {
    let api: Api<IstioInstall> = Api::all(ctx.applier.client().clone());
    let patch = json!({
        "apiVersion": IstioInstall::api_version(&()),
        "kind": IstioInstall::kind(&()),
        "status": status,
    });
    ctx.metrics.writes.inc();
    api.patch_status(
        &ii.name_any(),
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    Ok(())
}

async fn publish(ctx: &Context, ii: &IstioInstall, type_: EventType, reason: &str, note: String) {
    let regarding = ii.object_ref(&());
    if let Err(e) = ctx
        .events
        .publish(&regarding, type_, reason, "Reconcile", &note)
        .await
    {
        tracing::warn!(error = %e, "could not publish an event");
    }
}

fn error_policy(ii: Arc<IstioInstall>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics
        .failures
        .get_or_create(&ErrorLabels {
            category: error.category().to_string(),
        })
        .inc();
    let mut failures = ctx.failures.lock().expect("not poisoned");
    let n = failures.entry(ii.name_any()).or_insert(0);
    *n = n.saturating_add(1);
    // 1 s, 2 s, 4 s … capped at 5 minutes.
    let delay = Duration::from_secs(1u64 << (*n - 1).min(8)).min(Duration::from_secs(300));
    tracing::warn!(install = %ii.name_any(), error = %error, retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}

/// Maps an owned object's event to its IstioInstall, by our install label.
fn by_install_label<K: Resource>(obj: K) -> Option<ObjectRef<IstioInstall>> {
    obj.labels()
        .get(INSTALL_LABEL)
        .map(|name| ObjectRef::new(name))
}

/// Options of `run`.
pub struct RunOptions {
    pub concurrency: u16,
    /// What installs may do beyond the defaults (reserved namespaces).
    pub policy: validate::Policy,
}

/// How long a request (anything but a watch) may wait for the API server's answer.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// The operator's API clients (`crate::client`): one for watches (no read timeout: they stream),
/// one for every other request (read timeout [`REQUEST_TIMEOUT`], writes fenced by leader
/// election), and the record of how the API server answers the latter.
pub struct Clients {
    pub watch: Client,
    pub request: Client,
    pub request_health: ApiHealth,
}

/// Runs the controller until a shutdown signal. `ready` is set once the watches have synced.
pub async fn run(
    clients: Clients,
    metrics: Arc<Metrics>,
    ready: crate::telemetry::Readiness,
    opts: RunOptions,
) -> anyhow::Result<()> {
    let Clients {
        watch: client,
        request,
        request_health,
    } = clients;
    let installs: Api<IstioInstall> = Api::all(client.clone());
    if let Err(e) = installs
        .list(&kube::api::ListParams::default().limit(1))
        .await
    {
        anyhow::bail!(
            "cannot list IstioInstalls ({e}); is the CRD installed? `istio-install-operator crd | kubectl apply -f -`"
        );
    }
    let wc = || {
        watcher::Config::default()
            .labels(MANAGED_SELECTOR)
            .any_semantic()
    };
    let controller = Controller::new(installs, watcher::Config::default().any_semantic())
        .with_config(ControllerConfig::default().concurrency(opts.concurrency));
    let store = controller.store();
    let ctx = Arc::new(Context {
        applier: Applier::new(request.clone()),
        events: EventWriter::new(request, MANAGER, std::env::var("POD_NAME").ok()),
        metrics: metrics.clone(),
        installs: store.clone(),
        policy: opts.policy,
        failures: Mutex::new(HashMap::new()),
        api_health: request_health,
    });
    // One metadata watch per kind of the table that the API server serves (an optional kind
    // whose CRD is missing is skipped; the periodic recheck covers what it would have woken).
    let mut controller = controller;
    for kind in crate::kinds::watched() {
        let ar = crate::apply::api_resource(kind);
        if kind.optional && !ctx.applier.serves(kind.api_version, kind.kind).await {
            tracing::info!(
                kind = kind.kind,
                "not served by the API server; not watched"
            );
            continue;
        }
        let api = Api::<PartialObjectMeta<DynamicObject>>::all_with(client.clone(), &ar);
        controller = controller.watches_with(api, ar, wc(), by_install_label);
    }
    let readiness = {
        let store = store.clone();
        async move {
            // The store's readiness signal wakes only its latest waiter (the controller's own
            // runner), so poll it again now and then instead of waiting once.
            loop {
                match tokio::time::timeout(Duration::from_millis(200), store.wait_until_ready())
                    .await
                {
                    Ok(Ok(())) => {
                        ready.set(true);
                        tracing::info!("watches synced; ready");
                        return;
                    }
                    Ok(Err(_)) => return,
                    Err(_) => {}
                }
            }
        }
    };
    tokio::spawn(readiness);
    controller
        .shutdown_on_signal()
        .run(reconcile, error_policy, ctx)
        .for_each(|res| async move {
            match res {
                Ok((obj, _)) => tracing::debug!(install = %obj.name, "reconciled"),
                Err(kube::runtime::controller::Error::ObjectNotFound(_)) => {}
                Err(e) => tracing::debug!(error = %e, "controller event"),
            }
        })
        .await;
    tracing::info!("controller stopped");
    Ok(())
}
