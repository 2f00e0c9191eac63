//! The controller: watches IstioInstalls and everything they own, and runs the pipeline
//! read → validate → render → plan → apply → status for one install at a time.
//!
//! Waiting never blocks a worker: a component that is still rolling out ends the reconcile with
//! a short requeue, and the watch on its Deployment or DaemonSet brings the install back as soon
//! as the rollout moves. Every reconcile re-reads the live objects and writes only what differs,
//! so a restarted operator resumes where the cluster is and sends no writes when nothing changed.

pub mod leader;
mod observe;
mod uninstall;

use crate::api::{IstioInstall, IstioInstallStatus, MANAGER, PAUSED_ANNOTATION};
use crate::apply::events::{EventType, EventWriter};
use crate::apply::{Applier, ApplyError};
use crate::decide::{self, Decision, Next, Observed, Settlement, WriteFailure, Writes};
use crate::plan::claims::{Claims, Held, OtherInstallClaims};
use crate::plan::{self, ObjectKey, Owner, conflict};
use crate::render::waypoints;
use crate::render::{self, INSTALL_LABEL};
use crate::status::{self, Outcome, State};
use crate::telemetry::{ApiHealth, ComponentLabels, ErrorLabels, Fault, Metrics, ReconcileTimer};
use crate::upgrade::{self, Direction};
use crate::validate::{self, ComponentKind, ValidatedInstall};
use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::Api;
use kube::runtime::controller::{Action, Config as ControllerConfig, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use serde_json::json;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Finalizer that makes deletion of an IstioInstall uninstall in reverse order first.
pub const FINALIZER: &str = "istioinstall.io/uninstall";
/// Selector of everything the operator writes.
pub const MANAGED_SELECTOR: &str = "app.kubernetes.io/managed-by=istio-install-operator";

/// Shared state of the reconcilers.
pub struct Context {
    pub applier: Applier,
    pub events: EventWriter,
    pub metrics: Arc<Metrics>,
    pub installs: Store<IstioInstall>,
    pub policy: validate::Policy,
    /// The watch caches every reconcile observes from.
    caches: observe::Caches,
    /// What each install holds, by UID: (generation, claims), so other installs are rendered
    /// once per generation, not on every reconcile.
    held: Mutex<HashMap<String, (i64, Arc<Held>)>>,
    /// What each install's last reconciles found, by UID (see `Memo`).
    memos: Mutex<HashMap<String, Memo>>,
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
    use tracing::Instrument;
    // Every log line of this reconcile names the install.
    let span = tracing::info_span!("reconcile", install = %ii.name_any());
    match std::panic::AssertUnwindSafe(reconcile_one(ii.clone(), ctx))
        .catch_unwind()
        .instrument(span)
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
            .unwrap_or_else(std::sync::PoisonError::into_inner)
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
    if !ii.finalizers().iter().any(|f| f == FINALIZER) {
        ctx.applier.add_finalizer(ii, FINALIZER).await?;
    }
    if ii
        .annotations()
        .get(PAUSED_ANNOTATION)
        .is_some_and(|v| v == "true")
    {
        return paused(ii, ctx).await;
    }

    // read → validate (memoised per generation: the spec is all it depends on)
    let uid = ii.uid().unwrap_or_default();
    let generation = ii.metadata.generation.unwrap_or(0);
    let memoised = ctx.memo(&uid, generation, |m| m.validated.clone());
    let validated = match memoised {
        Some(v) => v,
        None => match validate::validate_with(&ii.spec, &ctx.policy) {
            Ok(v) => {
                let v = Arc::new(v);
                ctx.remember(&uid, generation, |m| m.validated = Some(v.clone()));
                v
            }
            Err(e) => {
                stall(ii, ctx, "InvalidSpec", e.to_string(), None).await?;
                return Ok(Action::await_change());
            }
        },
    };
    let desired_version = Some(validated.release.to_string());
    let claims = ctx.claims_of_others(ii);
    if let Some(message) = claims.conflict(&name, created(ii), conflict::claims(&validated)) {
        stall(ii, ctx, "Conflict", message, desired_version).await?;
        return Ok(Action::requeue(decide::WHEN_CONTESTED));
    }
    let preflight = match preflight(ii, &validated, ctx).await {
        Ok(p) => p,
        Err(refusal) => {
            stall(ii, ctx, refusal.reason, refusal.message, desired_version).await?;
            return Ok(if refusal.cluster_side {
                Action::requeue(decide::WHEN_BLOCKED)
            } else {
                Action::await_change()
            });
        }
    };
    if ii.status.as_ref().and_then(|s| s.desired_version.as_ref()) != desired_version.as_ref() {
        announce(ii, ctx, &preflight, &validated).await;
    }

    // → render → plan (memoised per generation and the two facts the plan also depends on)
    let gateway_api = ii.spec.waypoints.is_empty()
        || ctx
            .applier
            .serves("gateway.networking.k8s.io/v1", "Gateway")
            .await;
    let shape = PlanShape {
        downgrade: matches!(preflight.direction, Direction::Downgrade { .. }),
        gateway_api,
    };
    let memoised = ctx.memo(&uid, generation, |m| {
        m.plan
            .as_ref()
            .filter(|(s, _)| *s == shape)
            .map(|(_, p)| p.clone())
    });
    let plan = match memoised {
        Some(plan) => plan,
        None => {
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
            if !gateway_api {
                rendered.retain(|r| r.component != ComponentKind::Waypoints);
            }
            let mut plan = plan::plan(rendered, &owner_of(ii));
            upgrade::order_steps(&mut plan.steps, &preflight.direction);
            for step in &mut plan.steps {
                for object in &mut step.objects {
                    plan::stamp_intent(object);
                }
            }
            let plan = Arc::new(plan);
            ctx.remember(&uid, generation, |m| m.plan = Some((shape, plan.clone())));
            plan
        }
    };
    let enrolments = waypoints::enrolments(&ii.spec.waypoints, &name);
    let release = validated.release.to_string();
    let missing_gateway_api = (!gateway_api).then(crate::bundle::missing_gateway_api_message);
    let input = decide::Input {
        install: &name,
        uid: &uid,
        plan: &plan,
        release: &release,
        direction: &preflight.direction,
        missing_gateway_api: missing_gateway_api.as_deref(),
        enrolments: &enrolments,
        claims: &claims,
    };

    // → decide ⇄ apply, one component at a time, then settle
    let mut observed = observe::observe(ii, &plan, &enrolments, ctx).await?;
    observed.in_sync = ctx.in_sync(&uid, &plan, &observed);
    let mut write_error = None;
    let settlement = loop {
        match decide::decide(&input, &observed) {
            Decision::Apply(writes) => {
                observed.applied.insert(writes.step);
                if let Err(e) = execute(&writes, &mut observed, ctx).await {
                    observed.failure = Some(WriteFailure {
                        step: writes.step,
                        transient: e.is_transient(),
                        forbidden: e.is_forbidden(),
                        message: e.to_string(),
                    });
                    write_error = Some(e);
                }
            }
            Decision::Settle(settlement) => break settlement,
        }
    };
    for c in &settlement.outcome.components {
        ctx.metrics
            .component_ready
            .get_or_create(&ComponentLabels {
                install: name.clone(),
                component: c.name.clone(),
            })
            .set(i64::from(c.ready));
    }
    if settlement.outcome.state == State::Ready {
        ctx.remember_in_sync(&uid, &plan, &observed);
    }
    settle(ii, ctx, &settlement).await?;
    finish(ii, ctx, settlement.outcome).await?;
    match (settlement.next, write_error) {
        (Next::Backoff, Some(e)) => Err(e.into()),
        (Next::After(after), _) => Ok(Action::requeue(after)),
        (Next::Backoff, None) => Ok(Action::requeue(decide::WHILE_PROGRESSING)),
    }
}

/// Writes one component's objects (namespaces first) and records the API server's answers as
/// the observed state.
async fn execute(
    writes: &Writes,
    observed: &mut Observed,
    ctx: &Context,
) -> Result<(), ApplyError> {
    for ns in &writes.namespaces {
        let live = ctx.applier.create_namespace(ns).await?;
        observed
            .namespaces
            .insert(ns.clone(), crate::apply::labels_of(&live));
    }
    for desired in &writes.objects {
        let key = ObjectKey::of(desired);
        tracing::info!(object = %key, "applying");
        let live = ctx.applier.apply(desired).await?;
        observed.live.insert(key, live);
    }
    Ok(())
}

/// Carries out what a settled reconcile decided besides its status: prunes (with an Event
/// each) and namespace labels.
async fn settle(ii: &IstioInstall, ctx: &Context, s: &Settlement) -> Result<(), Error> {
    for note in &s.notes {
        tracing::warn!(install = %ii.name_any(), "{note}");
    }
    for (key, other) in &s.handovers {
        tracing::info!(object = %key, to = %other, "handing over, not pruning");
    }
    for key in &s.prunes {
        tracing::info!(object = %key, "pruning");
        ctx.applier.delete(key).await?;
        publish(
            ctx,
            ii,
            EventType::Normal,
            "Pruned",
            format!("deleted {key}, no longer part of the install"),
        )
        .await;
    }
    for (ns, labels) in &s.enrol {
        ctx.applier.set_namespace_labels(ns, labels).await?;
    }
    for ns in &s.unenrol {
        ctx.applier.set_namespace_labels(ns, &json!({})).await?;
    }
    Ok(())
}

fn created(ii: &IstioInstall) -> i64 {
    ii.metadata
        .creation_timestamp
        .as_ref()
        .map(|t| t.0.as_second())
        .unwrap_or(i64::MAX)
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

fn resource_version(live: &serde_json::Value) -> Option<&str> {
    crate::json::at(live, &["metadata", "resourceVersion"]).as_str()
}

/// What a plan depends on besides the spec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PlanShape {
    downgrade: bool,
    gateway_api: bool,
}

/// What the controller remembers of one install between reconciles, valid for one generation
/// of its spec: validating and rendering an unchanged spec again would give the same answer.
#[derive(Default)]
struct Memo {
    generation: i64,
    validated: Option<Arc<ValidatedInstall>>,
    /// The plan, each object stamped with its intent digest.
    plan: Option<(PlanShape, Arc<plan::Plan>)>,
    /// Planned objects found to match their intent at a resourceVersion: (resourceVersion,
    /// intent) by key. Kept across generations: the intent says which spec it matched.
    in_sync: HashMap<ObjectKey, (String, String)>,
}

impl Context {
    fn memo<T>(
        &self,
        uid: &str,
        generation: i64,
        read: impl FnOnce(&Memo) -> Option<T>,
    ) -> Option<T> {
        let memos = self
            .memos
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        memos
            .get(uid)
            .filter(|m| m.generation == generation)
            .and_then(read)
    }

    fn remember(&self, uid: &str, generation: i64, write: impl FnOnce(&mut Memo)) {
        let mut memos = self
            .memos
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Installs that are gone are forgotten.
        let installs = self.installs.state();
        memos.retain(|u, _| u == uid || installs.iter().any(|i| i.uid().as_deref() == Some(u)));
        let memo = memos.entry(uid.to_string()).or_default();
        if memo.generation != generation {
            memo.generation = generation;
            memo.validated = None;
            memo.plan = None;
        }
        write(memo);
    }

    /// The planned keys whose live object is unchanged since it matched the same intent.
    fn in_sync(
        &self,
        uid: &str,
        plan: &plan::Plan,
        observed: &Observed,
    ) -> std::collections::HashSet<ObjectKey> {
        let memos = self
            .memos
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some(memo) = memos.get(uid) else {
            return Default::default();
        };
        plan.steps
            .iter()
            .flat_map(|s| &s.objects)
            .filter_map(|desired| {
                let key = ObjectKey::of(desired);
                let live = observed.live.get(&key)?;
                let (rv, intent) = memo.in_sync.get(&key)?;
                (resource_version(live) == Some(rv.as_str())
                    && plan::intent_of(desired) == Some(intent.as_str()))
                .then_some(key)
            })
            .collect()
    }

    /// Records every planned object as matching its intent at its current resourceVersion
    /// (called when a reconcile settled Ready: nothing was left to write).
    fn remember_in_sync(&self, uid: &str, plan: &plan::Plan, observed: &Observed) {
        let mut memos = self
            .memos
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let memo = memos.entry(uid.to_string()).or_default();
        memo.in_sync.clear();
        for desired in plan.steps.iter().flat_map(|s| &s.objects) {
            let key = ObjectKey::of(desired);
            let (Some(live), Some(intent)) = (observed.live.get(&key), plan::intent_of(desired))
            else {
                continue;
            };
            if let Some(rv) = resource_version(live) {
                memo.in_sync
                    .insert(key, (rv.to_string(), intent.to_string()));
            }
        }
    }

    /// What every other install claims now. Each install is validated and rendered once per
    /// generation (memoised), not once per contested object.
    fn claims_of_others(&self, ii: &IstioInstall) -> Claims {
        let me = ii.name_any();
        let installs = self.installs.state();
        let mut memo = self
            .held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        memo.retain(|uid, _| {
            installs
                .iter()
                .any(|o| o.uid().as_deref() == Some(uid.as_str()))
        });
        let mut others = Vec::new();
        for other in installs.iter().filter(|o| o.name_any() != me) {
            let uid = other.uid().unwrap_or_default();
            let generation = other.metadata.generation.unwrap_or(0);
            let held = match memo.get(&uid) {
                Some((g, held)) if *g == generation => held.clone(),
                _ => {
                    let held = Arc::new(held_by(other, &self.policy));
                    memo.insert(uid, (generation, held.clone()));
                    held
                }
            };
            others.push(OtherInstallClaims {
                name: other.name_any(),
                created: created(other),
                deleting: other.metadata.deletion_timestamp.is_some(),
                held,
            });
        }
        Claims::new(others)
    }
}

/// What an install's spec claims: its components and the keys of the objects it renders.
fn held_by(ii: &IstioInstall, policy: &validate::Policy) -> Held {
    let Ok(v) = validate::validate_with(&ii.spec, policy) else {
        return Held::default();
    };
    let objects = render::render(&v, ii.metadata.name.as_deref())
        .ok()
        .map(|objects| objects.iter().map(|o| ObjectKey::of(&o.object)).collect());
    Held {
        components: Some(conflict::claims(&v)),
        objects,
    }
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
    // next_status always sets Ready; an Event is published when it changed.
    if let Some(ready) = status::condition_of(&next, status::READY)
        && before.as_ref()
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
    Ok(ctx.applier.write_status(ii, status).await?)
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
    let mut failures = ctx
        .failures
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
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
    let controller = Controller::new(installs, watcher::Config::default().any_semantic())
        .with_config(ControllerConfig::default().concurrency(opts.concurrency));
    let store = controller.store();
    let applier = Applier::new(request.clone(), metrics.writes.clone());
    // One watch per kind of the table (an optional kind whose CRD is missing is watched once it
    // is served). Each fills the cache reconciles observe from, and wakes the install its
    // objects belong to.
    let mut kinds = Vec::new();
    let mut later = Vec::new();
    for kind in crate::kinds::watched() {
        if kind.optional && !applier.serves(kind.api_version, kind.kind).await {
            tracing::info!(
                kind = kind.kind,
                "not served by the API server; watched once it is"
            );
            later.push(kind);
            continue;
        }
        kinds.push(kind);
    }
    let (caches, streams) = observe::Caches::start(&client, &kinds, &later);
    let mut controller = controller;
    for (ar, stream) in streams {
        controller = controller.watches_stream_with(stream, by_install_label, ar);
    }
    let ctx = Arc::new(Context {
        applier,
        events: EventWriter::new(request, MANAGER, std::env::var("POD_NAME").ok()),
        metrics: metrics.clone(),
        installs: store.clone(),
        policy: opts.policy,
        caches,
        held: Mutex::new(HashMap::new()),
        memos: Mutex::new(HashMap::new()),
        failures: Mutex::new(HashMap::new()),
        api_health: request_health,
    });
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
