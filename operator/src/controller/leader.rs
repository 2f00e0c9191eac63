//! Leader election on a `coordination.k8s.io/v1` Lease, with a write fence, so that two replicas
//! never write at once.
//!
//! - The leader renews every [`RENEW_EVERY`] on a client of its own (no retries, every attempt
//!   given up after [`RENEW_DEADLINE`], far less than the lease), so a renewal can neither queue
//!   behind reconcile requests nor outlive the lease.
//! - [`Fence`]: writes are allowed only until `start of the last successful renewal + lease −
//!   FENCE_MARGIN`, by this process's monotonic clock. The client that carries every write checks
//!   it per request (`crate::client`), so a leader that is paused, partitioned or slow stops
//!   writing before its lease can expire anywhere, and resumes only once it has renewed again.
//! - Followers never compare the holder's `renewTime` with their own wall clock (clock skew): they
//!   take over once the lease record has not changed for `leaseDurationSeconds +
//!   TAKEOVER_MARGIN` of their own monotonic clock since they first saw it (client-go does the
//!   same). Every write of the Lease carries the resourceVersion read, so of two takers one wins.
//! - Losing the lease stops the controller and makes this replica a follower again (the process
//!   stays up, ready, and serves its metrics); shutting down releases the lease at once.
//!
//! Why not a crate: kube-leader-election says itself that it has no fencing and decides expiry
//! from timestamps on wall clocks; kube-lease-manager and kube-coordinate also judge expiry from
//! `renewTime` against the local wall clock (with a tolerated skew) and report leadership as a
//! state that changes after the fact. None gives a deadline, known before the lease can expire,
//! until which writing is safe, which is what the fence needs; the election itself is ~150 lines.

use crate::telemetry::{Metrics, Readiness, Role};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::Client;
use kube::api::{Api, ObjectMeta, PostParams};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How long a lease lasts without renewal (written into the Lease).
pub const LEASE_DURATION: Duration = Duration::from_secs(15);
/// How often the leader renews (and a follower looks).
const RENEW_EVERY: Duration = Duration::from_secs(2);
/// One renewal or acquisition attempt (read + write) gives up after this.
pub const RENEW_DEADLINE: Duration = Duration::from_secs(5);
/// The leader stops writing this long before its lease could expire.
const FENCE_MARGIN: Duration = Duration::from_secs(5);
/// A follower waits this much longer than the lease before taking over.
const TAKEOVER_MARGIN: Duration = Duration::from_secs(3);
/// A problem already logged is logged again after this long (it is retried every few seconds).
const LOG_AGAIN_AFTER: Duration = Duration::from_secs(30);

/// Whether this replica may write now. Cheap to clone and to check; all clones share the state.
#[derive(Clone)]
pub struct Fence(Arc<FenceState>);

struct FenceState {
    origin: Instant,
    /// Nanoseconds after `origin` until which writes are allowed (0: closed).
    open_until: AtomicU64,
    always_open: bool,
}

impl Fence {
    /// A fence that always allows writes (no leader election: one replica by configuration).
    pub fn always_open() -> Fence {
        Fence::new(true)
    }

    /// A closed fence, opened by leader election.
    pub fn closed() -> Fence {
        Fence::new(false)
    }

    fn new(always_open: bool) -> Fence {
        Fence(Arc::new(FenceState {
            origin: Instant::now(),
            open_until: AtomicU64::new(0),
            always_open,
        }))
    }

    fn nanos(&self, t: Instant) -> u64 {
        u64::try_from(t.saturating_duration_since(self.0.origin).as_nanos()).unwrap_or(u64::MAX)
    }

    /// Whether a write sent now is safe.
    pub fn allows_writes(&self) -> bool {
        self.0.always_open || self.nanos(Instant::now()) < self.0.open_until.load(Ordering::SeqCst)
    }

    /// Allows writes until `deadline` (never moves an open fence backwards).
    fn open_until(&self, deadline: Instant) {
        self.0
            .open_until
            .fetch_max(self.nanos(deadline), Ordering::SeqCst);
    }

    pub fn close(&self) {
        self.0.open_until.store(0, Ordering::SeqCst);
    }

    #[cfg(test)]
    pub(crate) fn open_for_test(&self) {
        self.open_until(Instant::now() + Duration::from_secs(600));
    }
}

/// What an attempt found out.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Held {
    ByMe,
    By(String),
}

/// What a replica does after reading the Lease.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Decision {
    Create,
    Renew,
    /// Take it over (free, or unchanged for longer than its duration plus a margin).
    Take,
    Wait {
        holder: String,
    },
}

/// The parts of a Lease the decision needs.
#[derive(Debug, Clone, PartialEq, Eq)]
struct LeaseView {
    holder: Option<String>,
    duration: Duration,
    /// Changes whenever the holder renews or the lease changes hands.
    record: String,
}

impl LeaseView {
    fn of(lease: &Lease) -> LeaseView {
        let spec = lease.spec.clone().unwrap_or_default();
        let seconds = spec
            .lease_duration_seconds
            .and_then(|s| u64::try_from(s).ok())
            .unwrap_or(LEASE_DURATION.as_secs());
        LeaseView {
            holder: spec.holder_identity.clone().filter(|h| !h.is_empty()),
            duration: Duration::from_secs(seconds),
            record: format!(
                "{:?}/{:?}/{:?}",
                spec.holder_identity,
                spec.renew_time.map(|t| t.0.to_string()),
                spec.lease_transitions
            ),
        }
    }
}

/// When this replica first saw the current lease record, by its own monotonic clock.
#[derive(Debug, Clone)]
struct Observed {
    record: String,
    at: Instant,
}

/// The pure decision: `observed` must already reflect `lease` (see [`observe`]).
fn decide(me: &str, lease: Option<&LeaseView>, observed: &Observed, now: Instant) -> Decision {
    let Some(lease) = lease else {
        return Decision::Create;
    };
    match &lease.holder {
        None => Decision::Take,
        Some(h) if h == me => Decision::Renew,
        Some(h) => {
            if now.saturating_duration_since(observed.at) > lease.duration + TAKEOVER_MARGIN {
                Decision::Take
            } else {
                Decision::Wait { holder: h.clone() }
            }
        }
    }
}

/// Updates what we observed: the time is reset whenever the record changes.
fn observe(prev: Option<Observed>, lease: Option<&LeaseView>, now: Instant) -> Observed {
    let record = lease.map(|l| l.record.clone()).unwrap_or_default();
    match prev {
        Some(p) if p.record == record => p,
        _ => Observed { record, at: now },
    }
}

pub struct LeaderElector {
    api: Api<Lease>,
    namespace: String,
    name: String,
    identity: String,
    fence: Fence,
    readiness: Readiness,
    metrics: Arc<Metrics>,
    observed: Option<Observed>,
    last_problem: Option<(String, Instant)>,
}

fn now_micro() -> MicroTime {
    MicroTime(k8s_openapi::jiff::Timestamp::now())
}

impl LeaderElector {
    /// `client` should be used for nothing else (see the module comment); `fence` is the one
    /// the request client checks.
    pub fn new(
        client: Client,
        namespace: &str,
        name: &str,
        identity: String,
        fence: Fence,
        readiness: Readiness,
        metrics: Arc<Metrics>,
    ) -> Self {
        LeaderElector {
            api: Api::namespaced(client, namespace),
            namespace: namespace.to_string(),
            name: name.to_string(),
            identity,
            fence,
            readiness,
            metrics,
            observed: None,
            last_problem: None,
        }
    }

    /// Waits until this replica holds the lease (the fence is then open).
    pub async fn acquire(&mut self) {
        self.readiness.set_role(Role::Starting);
        loop {
            match self.attempt().await {
                Ok(Held::ByMe) => {
                    self.became_leader();
                    return;
                }
                Ok(Held::By(holder)) => {
                    self.resolved();
                    self.readiness.set_role(Role::Following(holder));
                }
                Err(problem) => self.report(problem),
            }
            tokio::time::sleep(RENEW_EVERY).await;
        }
    }

    /// Keeps renewing; returns once another replica holds the lease (the fence is closed then).
    /// While renewals fail the fence closes on its own deadline, and opens again on the next
    /// successful renewal if nobody took over meanwhile.
    pub async fn hold(&mut self) {
        loop {
            tokio::time::sleep(RENEW_EVERY).await;
            match self.attempt().await {
                Ok(Held::ByMe) => {
                    if self.last_problem.is_some() {
                        self.became_leader();
                    }
                }
                Ok(Held::By(holder)) => {
                    self.fence.close();
                    self.metrics.leader.set(0);
                    tracing::error!(lease = %self.name, namespace = %self.namespace, %holder, "lost the lease to another replica; stopping the controller and following");
                    self.readiness.set_role(Role::Following(holder));
                    return;
                }
                Err(problem) => self.report(problem),
            }
        }
    }

    fn became_leader(&mut self) {
        self.resolved();
        self.metrics.leader.set(1);
        self.readiness.set_role(Role::Leading);
        tracing::info!(lease = %self.name, namespace = %self.namespace, identity = %self.identity, "leading");
    }

    fn resolved(&mut self) {
        if self.last_problem.take().is_some() {
            tracing::info!(lease = %self.name, namespace = %self.namespace, "leader election works again");
        }
    }

    /// Logs a problem (an error at once, then again every 30 s while it lasts) and shows it in
    /// `/readyz`. Leader election goes on retrying.
    fn report(&mut self, problem: String) {
        let now = Instant::now();
        let again = match &self.last_problem {
            Some((last, at)) => last != &problem || now.duration_since(*at) >= LOG_AGAIN_AFTER,
            None => true,
        };
        if again {
            tracing::error!(lease = %self.name, namespace = %self.namespace, "{problem}");
            self.last_problem = Some((problem.clone(), now));
        }
        if !self.fence.allows_writes() {
            self.metrics.leader.set(0);
        }
        self.readiness.set_role(Role::Failing(problem));
    }

    /// One read (and maybe one write) of the Lease, within [`RENEW_DEADLINE`].
    async fn attempt(&mut self) -> Result<Held, String> {
        let sent = Instant::now();
        match tokio::time::timeout(RENEW_DEADLINE, self.exchange(sent)).await {
            Ok(result) => result,
            Err(_) => Err(format!(
                "leader election: the API server did not answer within {} s (Lease {}/{}); retrying",
                RENEW_DEADLINE.as_secs(),
                self.namespace,
                self.name
            )),
        }
    }

    async fn exchange(&mut self, sent: Instant) -> Result<Held, String> {
        let lease = self
            .api
            .get_opt(&self.name)
            .await
            .map_err(|e| self.explain("get", &e))?;
        let view = lease.as_ref().map(LeaseView::of);
        let observed = observe(self.observed.take(), view.as_ref(), sent);
        let decision = decide(&self.identity, view.as_ref(), &observed, Instant::now());
        self.observed = Some(observed);
        let creating = matches!(decision, Decision::Create);
        let written = match (decision, lease) {
            (Decision::Wait { holder }, _) => return Ok(Held::By(holder)),
            (Decision::Create, _) | (_, None) => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.name.clone()),
                        namespace: Some(self.namespace.clone()),
                        ..Default::default()
                    },
                    spec: Some(self.spec(None)),
                };
                self.api.create(&PostParams::default(), &lease).await
            }
            (decision, Some(mut lease)) => {
                let prev = lease.spec.take();
                let transitions = prev.as_ref().and_then(|s| s.lease_transitions).unwrap_or(0);
                let mut spec = self.spec(prev.as_ref().and_then(|s| s.acquire_time.clone()));
                if decision == Decision::Take {
                    spec.lease_transitions = Some(transitions.saturating_add(1));
                    spec.acquire_time = Some(now_micro());
                    tracing::info!(lease = %self.name, previous = ?prev.and_then(|s| s.holder_identity), "taking over the lease");
                } else {
                    spec.lease_transitions = Some(transitions);
                }
                lease.spec = Some(spec);
                // The resourceVersion read makes this fail if anyone changed it meanwhile.
                self.api
                    .replace(&self.name, &PostParams::default(), &lease)
                    .await
            }
        };
        match written {
            Ok(_) => {
                self.fence
                    .open_until(sent + LEASE_DURATION.saturating_sub(FENCE_MARGIN));
                Ok(Held::ByMe)
            }
            Err(kube::Error::Api(s)) if s.code == 409 => Err(format!(
                "leader election: Lease {}/{} changed while we wrote it; reading it again",
                self.namespace, self.name
            )),
            Err(e) => Err(self.explain(if creating { "create" } else { "update" }, &e)),
        }
    }

    fn spec(&self, acquired: Option<MicroTime>) -> LeaseSpec {
        let seconds = i32::try_from(LEASE_DURATION.as_secs()).unwrap_or(i32::MAX);
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(seconds),
            acquire_time: acquired.or_else(|| Some(now_micro())),
            renew_time: Some(now_micro()),
            lease_transitions: Some(0),
            ..Default::default()
        }
    }

    /// Names the problem and the fix: a missing namespace, a missing permission, or else the
    /// API server's own words.
    fn explain(&self, doing: &str, e: &kube::Error) -> String {
        let (ns, name) = (&self.namespace, &self.name);
        match e {
            // Creating in a namespace that does not exist is the only 404 of a create.
            kube::Error::Api(s) if s.code == 404 && doing == "create" => format!(
                "leader election cannot start: the Lease's namespace {ns:?} does not exist ({}). Create it (`kubectl create namespace {ns}`), or pass --lease-namespace (env POD_NAMESPACE) naming an existing namespace, or --leader-elect=false for a single replica",
                s.message
            ),
            kube::Error::Api(s) if s.code == 403 => format!(
                "leader election cannot proceed: no permission on leases.coordination.k8s.io in namespace {ns:?} (needs get, create and update; manifests/rbac.yaml has the Role): {}",
                s.message
            ),
            kube::Error::Api(s) => format!(
                "leader election: {doing} of Lease {ns}/{name} failed: {} ({}); retrying",
                s.message, s.code
            ),
            other => {
                format!("leader election: {doing} of Lease {ns}/{name} failed: {other}; retrying")
            }
        }
    }

    /// Gives the lease up (after the controller has stopped) so a successor need not wait.
    pub async fn release(&self) {
        self.fence.close();
        self.metrics.leader.set(0);
        let release = async {
            if let Ok(Some(mut lease)) = self.api.get_opt(&self.name).await
                && let Some(spec) = lease.spec.as_mut()
                && spec.holder_identity.as_deref() == Some(self.identity.as_str())
            {
                spec.holder_identity = None;
                let _ = self
                    .api
                    .replace(&self.name, &PostParams::default(), &lease)
                    .await;
            }
        };
        let _ = tokio::time::timeout(RENEW_DEADLINE, release).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(holder: Option<&str>, record: &str) -> LeaseView {
        LeaseView {
            holder: holder.map(String::from),
            duration: Duration::from_secs(15),
            record: record.into(),
        }
    }

    #[test]
    fn a_follower_takes_over_only_after_the_record_is_unchanged_for_longer_than_the_lease() {
        let t0 = Instant::now();
        let l = lease(Some("a"), "r1");
        // However old renewTime is, a replica that has just looked waits the whole lease: it
        // cannot know whether the holder's clock agrees with its own.
        let seen = observe(None, Some(&l), t0);
        let wait = Decision::Wait { holder: "a".into() };
        assert_eq!(decide("b", Some(&l), &seen, t0), wait);
        assert_eq!(decide("b", Some(&l), &seen, t0 + l.duration), wait);
        let seen = observe(Some(seen), Some(&l), t0 + l.duration);
        assert_eq!(
            decide("b", Some(&l), &seen, t0 + l.duration + TAKEOVER_MARGIN),
            wait,
            "the margin is waited for too"
        );
        let later = t0 + l.duration + TAKEOVER_MARGIN + Duration::from_millis(1);
        assert_eq!(decide("b", Some(&l), &seen, later), Decision::Take);
        // A renewal (new record) starts the wait again.
        let renewed = lease(Some("a"), "r2");
        let seen = observe(Some(seen), Some(&renewed), later);
        assert_eq!(decide("b", Some(&renewed), &seen, later), wait);
    }

    #[test]
    fn own_free_and_missing_leases() {
        let t0 = Instant::now();
        let mine = lease(Some("a"), "r");
        let seen = observe(None, Some(&mine), t0);
        assert_eq!(decide("a", Some(&mine), &seen, t0), Decision::Renew);
        let free = lease(None, "r");
        assert_eq!(decide("b", Some(&free), &seen, t0), Decision::Take);
        assert_eq!(decide("b", None, &seen, t0), Decision::Create);
    }

    #[test]
    fn the_leader_stops_writing_before_any_follower_may_take_over() {
        // The fence runs from when the renewal was *sent*; a follower's wait starts no earlier
        // than when it *saw* that renewal. So the fence closes at least this long before any
        // takeover, whatever the latencies.
        let gap = (LEASE_DURATION + TAKEOVER_MARGIN).saturating_sub(LEASE_DURATION - FENCE_MARGIN);
        assert!(gap >= Duration::from_secs(5), "{gap:?}");
        assert!(RENEW_DEADLINE < LEASE_DURATION - FENCE_MARGIN);
        assert!(RENEW_EVERY * 2 + RENEW_DEADLINE <= LEASE_DURATION - FENCE_MARGIN);
    }

    #[test]
    fn the_fence_opens_until_its_deadline_and_closes() {
        let fence = Fence::closed();
        assert!(!fence.allows_writes());
        fence.open_until(Instant::now() + Duration::from_secs(60));
        assert!(fence.allows_writes());
        fence.open_until(Instant::now());
        assert!(fence.allows_writes(), "never moved backwards");
        fence.close();
        assert!(!fence.allows_writes());
        fence.open_until(Instant::now() - Duration::from_millis(1));
        assert!(!fence.allows_writes(), "a deadline in the past");
        assert!(Fence::always_open().allows_writes());
        let clone = fence.clone();
        fence.open_until(Instant::now() + Duration::from_secs(60));
        assert!(clone.allows_writes(), "clones share the state");
    }
}
