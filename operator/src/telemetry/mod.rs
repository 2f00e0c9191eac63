//! Operations: structured logs, Prometheus metrics, and the `/livez`, `/readyz`, `/metrics`
//! endpoints (a tiny HTTP/1.1 responder: three GET routes do not need a web framework).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
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

/// The operator's metrics.
pub struct Metrics {
    pub registry: Registry,
    pub reconciles: Counter,
    pub failures: Family<ErrorLabels, Counter>,
    pub duration: Histogram,
    pub component_ready: Family<ComponentLabels, Gauge>,
    pub writes: Counter,
    /// Start times of the reconciles under way, for `/livez`.
    in_flight: std::sync::Mutex<std::collections::HashMap<u64, Instant>>,
    next_reconcile: std::sync::atomic::AtomicU64,
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
        let duration = Histogram::new([
            0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ]);
        let component_ready = Family::<ComponentLabels, Gauge>::default();
        let writes = Counter::default();
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
            writes,
            in_flight: Default::default(),
            next_reconcile: Default::default(),
        }
    }
}

impl Metrics {
    /// How long the oldest reconcile under way has been running.
    pub fn oldest_reconcile(&self) -> Option<std::time::Duration> {
        let in_flight = self.in_flight.lock().expect("not poisoned");
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

    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("text encoding");
        out
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
        metrics
            .in_flight
            .lock()
            .expect("not poisoned")
            .insert(id, start);
        ReconcileTimer { metrics, start, id }
    }
}

impl Drop for ReconcileTimer<'_> {
    fn drop(&mut self) {
        self.metrics
            .in_flight
            .lock()
            .expect("not poisoned")
            .remove(&self.id);
        self.metrics
            .duration
            .observe(self.start.elapsed().as_secs_f64());
    }
}

/// Shared readiness: set once the controller's watches have synced (and we lead).
#[derive(Clone, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::SeqCst)
    }
    pub fn get(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// Serves `/livez`, `/readyz` and `/metrics` until the process ends.
pub async fn serve(
    addr: std::net::SocketAddr,
    metrics: Arc<Metrics>,
    ready: Readiness,
) -> std::io::Result<()> {
    let listener = TcpListener::bind(addr).await?;
    tracing::info!(%addr, "serving /livez, /readyz and /metrics");
    loop {
        let (mut conn, _) = listener.accept().await?;
        let (metrics, ready) = (metrics.clone(), ready.clone());
        tokio::spawn(async move {
            let mut buf = [0u8; 2048];
            let n =
                match tokio::time::timeout(std::time::Duration::from_secs(5), conn.read(&mut buf))
                    .await
                {
                    Ok(Ok(n)) => n,
                    _ => return,
                };
            let request = String::from_utf8_lossy(&buf[..n]);
            let path = request.split_whitespace().nth(1).unwrap_or("/");
            let (code, body) = match path {
                "/livez" => match metrics.liveness(STUCK_AFTER) {
                    Ok(()) => ("200 OK", "ok\n".to_string()),
                    Err(why) => ("503 Service Unavailable", why),
                },
                "/readyz" if ready.get() => ("200 OK", "ok\n".to_string()),
                "/readyz" => (
                    "503 Service Unavailable",
                    "watches not synced (or not the leader)\n".to_string(),
                ),
                "/metrics" => ("200 OK", metrics.encode()),
                _ => ("404 Not Found", "not found\n".to_string()),
            };
            let response = format!(
                "HTTP/1.1 {code}\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = conn.write_all(response.as_bytes()).await;
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
}
