//! Operations: structured logs, Prometheus metrics, and the `/livez`, `/readyz`, `/metrics`
//! endpoints (hyper's HTTP/1.1 server, already in the tree through kube).

mod api_health;
pub use api_health::{Answer, ApiHealth, Fault};

use bytes::Bytes;
use http_body_util::Full;
use hyper::StatusCode;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;
use tokio::net::TcpListener;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// A stable error category (never an object name: bounded cardinality).
    pub category: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ComponentLabels {
    pub install: String,
    pub component: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct InstallConditionLabels {
    pub install: String,
    /// Ready, Reconciling, Stalled or Paused.
    pub condition: String,
}

/// The error categories of `reconcile_errors` (as `controller::Error::category` names them),
/// created at 0 so that the series exist before the first error: a rate over an absent series is
/// no data, not 0, and would hide the alert's ratio.
const ERROR_CATEGORIES: [&str; 5] = ["forbidden", "unknown-kind", "apply", "kube", "panic"];

/// The conditions `install_condition` reports (kstatus's three, and the pause switch).
const REPORTED_CONDITIONS: [&str; 4] = ["Ready", "Reconciling", "Stalled", "Paused"];

/// The operator's metrics.
pub struct Metrics {
    pub registry: Registry,
    pub reconciles: Counter,
    pub failures: Family<ErrorLabels, Counter>,
    pub duration: Histogram,
    pub component_ready: Family<ComponentLabels, Gauge>,
    /// 1 while an install's condition is True (what the dashboard counts and the Stalled alert
    /// reads); set by [`Metrics::record_install_status`].
    pub install_condition: Family<InstallConditionLabels, Gauge>,
    pub writes: Counter,
    /// Write requests the client sent (every POST, PUT, PATCH and DELETE but the Lease's).
    pub api_writes: Counter,
    /// Read requests (GET, LIST) the request client sent; watches are not counted. A no-op
    /// reconcile reads from the watch caches and sends none.
    pub api_reads: Counter,
    /// Writes refused because this replica's leadership was not confirmed (see `leader::Fence`).
    pub fenced_writes: Counter,
    /// 1 while this replica holds the leader-election lease (or runs without leader election).
    pub leader: Gauge,
    /// Start times of the reconciles under way, for `/livez`.
    in_flight: std::sync::Mutex<std::collections::HashMap<u64, Instant>>,
    next_reconcile: std::sync::atomic::AtomicU64,
}

/// Keeps `install_condition` equal to the conditions the IstioInstalls' status shows, from a
/// watch of its own (on every replica, leader or not: what the API says, as `kubectl get`
/// shows it). Runs until the process ends; the watcher retries with backoff on errors.
pub async fn watch_install_conditions(client: kube::Client, metrics: Arc<Metrics>) {
    use futures::StreamExt;
    use kube::runtime::{WatchStreamExt, watcher};
    let api: kube::Api<crate::api::IstioInstall> = kube::Api::all(client);
    // Installs with series, and those the current (re-)list has shown.
    let mut recorded = std::collections::BTreeSet::new();
    let mut seen = std::collections::BTreeSet::new();
    let stream = watcher(api, watcher::Config::default()).default_backoff();
    futures::pin_mut!(stream);
    while let Some(event) = stream.next().await {
        let Ok(event) = event else { continue };
        match event {
            watcher::Event::Init => seen.clear(),
            watcher::Event::InitApply(ii) | watcher::Event::Apply(ii) => {
                let name = kube::ResourceExt::name_any(&ii);
                metrics.record_install_status(&name, &ii.status.unwrap_or_default());
                recorded.insert(name.clone());
                seen.insert(name);
            }
            watcher::Event::Delete(ii) => {
                let name = kube::ResourceExt::name_any(&ii);
                metrics.forget_install(&name);
                recorded.remove(&name);
            }
            // A re-list: forget what it no longer holds.
            watcher::Event::InitDone => {
                for gone in recorded.difference(&seen) {
                    metrics.forget_install(gone);
                }
                recorded = seen.clone();
            }
        }
    }
}

/// A reconcile never waits (it requeues instead) and the API client times out well before
/// this, so one still running after this long means the controller is stuck: `/livez` fails
/// and the kubelet restarts the operator, which resumes from the cluster's state.
pub const STUCK_AFTER: std::time::Duration = std::time::Duration::from_secs(600);

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("istio_install_operator");
        let reconciles = Counter::default();
        let failures = Family::<ErrorLabels, Counter>::default();
        // Fine below 10 ms: a no-op reconcile answered from the caches takes a few ms.
        let duration = Histogram::new([
            0.0005, 0.001, 0.002, 0.003, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            10.0,
        ]);
        let component_ready = Family::<ComponentLabels, Gauge>::default();
        let install_condition = Family::<InstallConditionLabels, Gauge>::default();
        for category in ERROR_CATEGORIES {
            failures
                .get_or_create(&ErrorLabels {
                    category: category.to_string(),
                })
                .inc_by(0);
        }
        let writes = Counter::default();
        let api_writes = Counter::default();
        let fenced_writes = Counter::default();
        let api_reads = Counter::default();
        let leader = Gauge::default();
        registry.register(
            "api_write_requests",
            "Write requests sent to the API server, counted by the client (events included, the leader-election Lease not)",
            api_writes.clone(),
        );
        registry.register(
            "api_read_requests",
            "Read requests (GET, LIST) sent to the API server outside the watches",
            api_reads.clone(),
        );
        registry.register(
            "fenced_writes",
            "Writes refused because this replica's leadership was not confirmed",
            fenced_writes.clone(),
        );
        registry.register(
            "leader",
            "1 while this replica leads (or runs without leader election)",
            leader.clone(),
        );
        registry.register("reconciles", "Reconciles run", reconciles.clone());
        registry.register(
            "reconcile_errors",
            "Reconciles that failed, by error category",
            failures.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Duration of a reconcile",
            duration.clone(),
        );
        registry.register(
            "component_ready",
            "1 when a component is rolled out and available",
            component_ready.clone(),
        );
        registry.register(
            "install_condition",
            "1 while the IstioInstall's condition (Ready, Reconciling, Stalled, Paused) is True",
            install_condition.clone(),
        );
        registry.register(
            "write_requests",
            "Write requests (apply, delete, status) sent to the API server",
            writes.clone(),
        );
        Metrics {
            registry,
            reconciles,
            failures,
            duration,
            component_ready,
            install_condition,
            writes,
            api_writes,
            api_reads,
            fenced_writes,
            leader,
            in_flight: Default::default(),
            next_reconcile: Default::default(),
        }
    }
}

impl Metrics {
    /// Records the conditions of a status just written for `install`.
    pub fn record_install_status(&self, install: &str, status: &crate::api::IstioInstallStatus) {
        for condition in REPORTED_CONDITIONS {
            let value = status
                .conditions
                .iter()
                .any(|c| c.type_ == condition && c.status == "True");
            self.install_condition
                .get_or_create(&InstallConditionLabels {
                    install: install.to_string(),
                    condition: condition.to_string(),
                })
                .set(i64::from(value));
        }
    }

    /// Drops the series of an install that is gone (no stale Stalled after a delete).
    pub fn forget_install(&self, install: &str) {
        for condition in REPORTED_CONDITIONS {
            self.install_condition.remove(&InstallConditionLabels {
                install: install.to_string(),
                condition: condition.to_string(),
            });
        }
    }

    /// How long the oldest reconcile under way has been running.
    pub fn oldest_reconcile(&self) -> Option<std::time::Duration> {
        let in_flight = self.in_flight();
        in_flight.values().min().map(Instant::elapsed)
    }

    /// `/livez`: healthy unless a reconcile has been running for longer than `stuck_after`.
    pub fn liveness(&self, stuck_after: std::time::Duration) -> Result<(), String> {
        match self.oldest_reconcile() {
            Some(age) if age > stuck_after => Err(format!(
                "a reconcile has been running for {} s; the controller is stuck\n",
                age.as_secs()
            )),
            _ => Ok(()),
        }
    }

    /// The metrics in Prometheus' text format. Writing to a String cannot fail; should the
    /// encoder fail anyway, the scrape gets what was written so far and the error is logged.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!(error = %e, "encoding the metrics");
        }
        out
    }

    /// The in-flight reconciles. A poisoned lock only means a panic elsewhere while it was
    /// held (a reconcile's panic is caught); the map is still whole, so carry on with it.
    fn in_flight(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<u64, Instant>> {
        self.in_flight
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Observes a reconcile's duration when dropped, and keeps it on the in-flight list until then.
pub struct ReconcileTimer<'a> {
    metrics: &'a Metrics,
    start: Instant,
    id: u64,
}

impl<'a> ReconcileTimer<'a> {
    pub fn start(metrics: &'a Metrics) -> Self {
        metrics.reconciles.inc();
        let id = metrics.next_reconcile.fetch_add(1, Ordering::Relaxed);
        let start = Instant::now();
        metrics.in_flight().insert(id, start);
        ReconcileTimer { metrics, start, id }
    }
}

impl Drop for ReconcileTimer<'_> {
    fn drop(&mut self) {
        self.metrics.in_flight().remove(&self.id);
        self.metrics
            .duration
            .observe(self.start.elapsed().as_secs_f64());
    }
}

/// What leader election says about this replica, for `/readyz`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Role {
    /// No leader election: the only replica.
    #[default]
    Single,
    /// Reading the Lease for the first time.
    Starting,
    Leading,
    /// Another replica leads; this one stands by (and is ready: readiness never depends on
    /// leadership, or a rolling update of the operator's Deployment could never make progress).
    Following(String),
    /// Leader election cannot make progress; the message names the problem and the fix.
    Failing(String),
}

/// How long a watch may keep failing before `/readyz` says so.
pub const WATCH_FAILING_FOR: std::time::Duration = std::time::Duration::from_secs(60);

/// Shared readiness: the controller's watches have synced and none has been failing for longer
/// than [`WATCH_FAILING_FOR`], and leader election works (leading or standing by).
#[derive(Clone, Default)]
pub struct Readiness(Arc<ReadinessState>);

#[derive(Default)]
struct ReadinessState {
    synced: AtomicBool,
    role: std::sync::Mutex<Role>,
    watches: ApiHealth,
}

impl Readiness {
    /// Whether the controller's watches have synced (reset when the controller stops).
    pub fn set(&self, ready: bool) {
        self.0.synced.store(ready, Ordering::SeqCst)
    }
    pub fn get(&self) -> bool {
        self.check().is_ok()
    }
    pub fn set_role(&self, role: Role) {
        *self.0.role.lock().unwrap_or_else(|e| e.into_inner()) = role;
    }
    pub fn role(&self) -> Role {
        self.0
            .role
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
    /// The record of the watch requests (fed by the watch client's layer).
    pub fn watches(&self) -> &ApiHealth {
        &self.0.watches
    }

    /// `Ok(what)` when ready, else `Err(why not)`.
    pub fn check(&self) -> Result<String, String> {
        let running = match self.role() {
            Role::Failing(why) => return Err(why),
            Role::Starting => return Err("reading the leader-election Lease".into()),
            Role::Following(holder) => {
                return Ok(format!("standing by; the leader is {holder}"));
            }
            Role::Single => "running",
            Role::Leading => "leading",
        };
        if !self.0.synced.load(Ordering::SeqCst) {
            return Err(format!("{running}; the watches have not synced yet"));
        }
        if let Some(fault) = self.0.watches.lasting_fault(WATCH_FAILING_FOR) {
            return Err(format!("{running}; a watch is failing: {fault}"));
        }
        Ok(running.to_string())
    }
}

fn respond(path: &str, metrics: &Metrics, ready: &Readiness) -> (StatusCode, String) {
    match path {
        "/livez" => match metrics.liveness(STUCK_AFTER) {
            Ok(()) => (StatusCode::OK, "ok\n".to_string()),
            Err(why) => (StatusCode::SERVICE_UNAVAILABLE, why),
        },
        "/readyz" => match ready.check() {
            Ok(what) => (StatusCode::OK, format!("ok: {what}\n")),
            Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")),
        },
        "/metrics" => (StatusCode::OK, metrics.encode()),
        _ => (StatusCode::NOT_FOUND, "not found\n".to_string()),
    }
}

/// A connection is closed after this long whatever it does (a scraper reconnects).
const CONNECTION_LIFETIME: std::time::Duration = std::time::Duration::from_secs(120);
/// A client has this long to send a request's headers.
const HEADER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Serves `/livez`, `/readyz` and `/metrics` on `listener` until the process ends, with hyper's
/// HTTP/1.1 server: each connection on its own task (a slow or stuck client holds only its own
/// connection, and only until the header timeout), malformed requests get 400, keep-alive works.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>, ready: Readiness) {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "serving /livez, /readyz and /metrics");
    }
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors, say: wait a little rather than spin or stop serving.
                tracing::warn!(error = %e, "accepting a connection failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let (metrics, ready) = (metrics.clone(), ready.clone());
        let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
            let (code, body) = respond(req.uri().path(), &metrics, &ready);
            let mut response = hyper::Response::new(Full::new(Bytes::from(body)));
            *response.status_mut() = code;
            response.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            std::future::ready(Ok::<_, std::convert::Infallible>(response))
        });
        tokio::spawn(async move {
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            if let Ok(Err(e)) = tokio::time::timeout(CONNECTION_LIFETIME, connection).await {
                tracing::debug!(error = %e, "metrics connection");
            }
        });
    }
}

/// Initialises logging: `RUST_LOG` filter (default info), text or JSON lines.
pub fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,kube=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false);
    if json {
        builder.json().flatten_event(true).init();
    } else {
        builder.init();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn install_conditions_are_gauges_per_install_and_go_with_the_install() {
        let metrics = Metrics::default();
        let condition = |type_: &str, status: &str| {
            serde_json::from_value(serde_json::json!({"type": type_, "status": status, "reason": "R", "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z"})).unwrap()
        };
        let status = crate::api::IstioInstallStatus {
            conditions: vec![
                condition("Ready", "False"),
                condition("Reconciling", "False"),
                condition("Stalled", "True"),
            ],
            ..Default::default()
        };
        metrics.record_install_status("mesh", &status);
        let text = metrics.encode();
        for (condition, value) in [
            ("Ready", 0),
            ("Reconciling", 0),
            ("Stalled", 1),
            ("Paused", 0),
        ] {
            let line = format!(
                "istio_install_operator_install_condition{{install=\"mesh\",condition=\"{condition}\"}} {value}"
            );
            assert!(text.contains(&line), "{line} not in\n{text}");
        }
        metrics.forget_install("mesh");
        assert!(!metrics.encode().contains("install=\"mesh\""));
    }

    #[test]
    fn every_error_category_is_exposed_at_zero_before_any_error() {
        let text = Metrics::default().encode();
        for category in ERROR_CATEGORIES {
            let line = format!(
                "istio_install_operator_reconcile_errors_total{{category=\"{category}\"}} 0"
            );
            assert!(text.contains(&line), "{line} not in\n{text}");
        }
    }

    #[test]
    fn liveness_fails_only_while_a_reconcile_outlives_the_limit() {
        let metrics = Metrics::default();
        assert!(metrics.liveness(Duration::ZERO).is_ok(), "nothing running");
        let timer = ReconcileTimer::start(&metrics);
        std::thread::sleep(Duration::from_millis(2));
        assert!(metrics.liveness(Duration::from_secs(60)).is_ok());
        let stuck = metrics.liveness(Duration::from_millis(1)).unwrap_err();
        assert!(stuck.contains("the controller is stuck"), "{stuck}");
        drop(timer);
        assert!(metrics.liveness(Duration::ZERO).is_ok(), "finished");
    }

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    /// Reads one HTTP/1.1 response (headers and a content-length body) from `s`.
    async fn read_response(s: &mut TcpStream) -> String {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let text = String::from_utf8_lossy(&buf).to_string();
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let len = head
                    .lines()
                    .find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case("content-length")
                            .then(|| v.trim().parse::<usize>().ok())?
                    })
                    .unwrap_or(0);
                if body.len() >= len {
                    return text;
                }
            }
            let n = s.read(&mut chunk).await.expect("read");
            if n == 0 {
                return String::from_utf8_lossy(&buf).to_string();
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    }

    async fn get(addr: std::net::SocketAddr, path: &str) -> String {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes())
            .await
            .expect("write");
        read_response(&mut s).await
    }

    #[tokio::test]
    async fn slow_and_malformed_clients_cannot_block_the_endpoints() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let metrics = Arc::new(Metrics::default());
        let ready = Readiness::default();
        let server = tokio::spawn(serve(listener, metrics, ready));
        // Bounds the test, not the server's speed: a blocked endpoint fails instead of hanging.
        let bound = Duration::from_secs(20);

        // Clients that connect and stall mid-request, and one that never sends anything.
        let mut stalled = Vec::new();
        for _ in 0..50 {
            let mut s = TcpStream::connect(addr).await.expect("connect");
            s.write_all(b"GET /livez HTTP/1.1\r\nhost:")
                .await
                .expect("write");
            stalled.push(s);
        }
        stalled.push(TcpStream::connect(addr).await.expect("connect"));

        // Garbage gets 400, not a hang and not a 404 guessed from it.
        let mut bad = TcpStream::connect(addr).await.expect("connect");
        bad.write_all(b"\x16\x03\x01\x00\xa5garbage\r\n\r\n")
            .await
            .expect("write");
        let answer = tokio::time::timeout(bound, read_response(&mut bad))
            .await
            .expect("an answer to garbage");
        assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");

        let livez = tokio::time::timeout(bound, get(addr, "/livez"))
            .await
            .expect("/livez answers while others stall");
        assert!(
            livez.starts_with("HTTP/1.1 200") && livez.ends_with("ok\n"),
            "{livez}"
        );
        let metrics_page = tokio::time::timeout(bound, get(addr, "/metrics"))
            .await
            .expect("/metrics answers while others stall");
        assert!(
            metrics_page.contains("istio_install_operator_reconciles_total"),
            "{metrics_page}"
        );

        // A request that arrives in pieces is still one request.
        let mut slow = TcpStream::connect(addr).await.expect("connect");
        for piece in ["GET /li", "vez HTTP/1.1\r\nho", "st: x\r\n", "\r\n"] {
            slow.write_all(piece.as_bytes()).await.expect("write");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let answer = tokio::time::timeout(bound, read_response(&mut slow))
            .await
            .expect("an answer");
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

        // Keep-alive: a second request on the same connection (what Prometheus does).
        slow.write_all(b"GET /readyz HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .expect("write");
        let answer = tokio::time::timeout(bound, read_response(&mut slow))
            .await
            .expect("a second answer on the same connection");
        assert!(
            answer.starts_with("HTTP/1.1 503"),
            "not synced yet: {answer}"
        );
        drop(stalled);
        server.abort();
    }

    #[test]
    fn readiness_does_not_depend_on_leadership_but_says_why_not() {
        let ready = Readiness::default();
        assert!(ready.check().is_err(), "not synced");
        ready.set(true);
        assert_eq!(ready.check(), Ok("running".into()));
        ready.set_role(Role::Following("op-a".into()));
        ready.set(false);
        assert!(
            ready.check().is_ok_and(|m| m.contains("op-a")),
            "a follower is ready"
        );
        ready.set_role(Role::Failing("namespace \"x\" does not exist".into()));
        assert!(ready.check().is_err_and(|m| m.contains("\"x\"")));
        ready.set_role(Role::Leading);
        assert!(ready.check().is_err(), "leading, not synced");
        ready.set(true);
        assert!(ready.check().is_ok());
    }
}
