//! The operator's three API clients, built from one kubeconfig:
//!
//! - **requests** (every read and write of a reconcile, events included): a 30 s read timeout;
//!   at most 3 quick retries of a 429/503/504 (kube's default policy retries 15 times with
//!   backoff up to minutes, which hid a throttled API server inside one request); and the
//!   [`Guard`] layer, nearest the wire so that each retry is checked too: it refuses any write
//!   while the leader-election [`Fence`] is closed, counts the writes sent, and records every
//!   answer in an [`ApiHealth`] that the controller reports in the install's status.
//! - **watches**: no read timeout (they stream) and no hidden retries (the watcher backs off on
//!   its own); its [`Guard`] records answers for `/readyz`.
//! - **lease**: used only by leader election, no retries, short timeouts, so a renewal never
//!   waits behind reconcile traffic or outlives the lease.

use crate::controller::REQUEST_TIMEOUT;
use crate::controller::leader::{Fence, RENEW_DEADLINE};
use crate::telemetry::{Answer, ApiHealth, Metrics};
use http::{Method, Request, Response};
use kube::client::ClientBuilder;
use kube::client::retry::RetryPolicy;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tower::retry::RetryLayer;
use tower::{BoxError, Layer, Service};

pub struct Clients {
    pub request: kube::Client,
    pub watch: kube::Client,
    pub lease: kube::Client,
}

/// Builds the three clients. `fence` guards the request client's writes; `requests` and
/// `watches` record how the API server answers them.
pub fn build(
    config: kube::Config,
    fence: Fence,
    metrics: Arc<Metrics>,
    requests: ApiHealth,
    watches: ApiHealth,
) -> Result<Clients, kube::Error> {
    let mut request_config = config.clone();
    request_config.read_timeout = Some(REQUEST_TIMEOUT);
    request_config.reset_reader_on_write = true;
    request_config.default_retry = false;
    let retry = RetryPolicy::new(Duration::from_millis(200), Duration::from_secs(2), 3, true)
        .map_err(|e| kube::Error::Service(e.into()))?;
    let request = ClientBuilder::try_from(request_config)?
        .with_layer(&GuardLayer {
            fence: Some(fence),
            metrics: Some(metrics),
            health: requests,
            watch: false,
        })
        // Retry needs a clonable service; the buffer makes one (kube's Client buffers too).
        .with_layer(&tower::buffer::BufferLayer::new(1024))
        .with_layer(&RetryLayer::new(retry))
        .build();

    let mut watch_config = config.clone();
    watch_config.default_retry = false;
    let watch = ClientBuilder::try_from(watch_config)?
        .with_layer(&GuardLayer {
            fence: None,
            metrics: None,
            health: watches,
            watch: true,
        })
        .build();

    let mut lease_config = config;
    lease_config.default_retry = false;
    lease_config.connect_timeout = Some(RENEW_DEADLINE);
    lease_config.read_timeout = Some(RENEW_DEADLINE);
    lease_config.write_timeout = Some(RENEW_DEADLINE);
    let lease = kube::Client::try_from(lease_config)?;
    Ok(Clients {
        request,
        watch,
        lease,
    })
}

/// The error a refused write gives (`kube::Error::Service` around it): the reconcile fails and
/// is retried with backoff, like any other transient error.
#[derive(Debug, thiserror::Error)]
#[error(
    "write refused: this replica's leadership is not confirmed (its Lease could not be renewed in time or another replica leads); retried once it leads again"
)]
pub struct Fenced;

#[derive(Clone)]
pub struct GuardLayer {
    fence: Option<Fence>,
    metrics: Option<Arc<Metrics>>,
    health: ApiHealth,
    /// Watches count any status but 2xx as a failure.
    watch: bool,
}

impl<S> Layer<S> for GuardLayer {
    type Service = Guard<S>;
    fn layer(&self, inner: S) -> Guard<S> {
        Guard {
            inner,
            layer: self.clone(),
        }
    }
}

pub struct Guard<S> {
    inner: S,
    layer: GuardLayer,
}

impl<S: Clone> Clone for Guard<S> {
    fn clone(&self) -> Self {
        Guard {
            inner: self.inner.clone(),
            layer: self.layer.clone(),
        }
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B, R> Service<Request<B>> for Guard<S>
where
    S: Service<Request<B>, Response = Response<R>, Error = BoxError>,
    S::Future: Send + 'static,
    R: Send + 'static,
{
    type Response = Response<R>;
    type Error = BoxError;
    type Future = BoxFuture<Result<Response<R>, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let write = !matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
        if write {
            if let Some(fence) = &self.layer.fence
                && !fence.allows_writes()
            {
                if let Some(m) = &self.layer.metrics {
                    m.fenced_writes.inc();
                }
                tracing::warn!(method = %req.method(), path = %req.uri().path(), "write refused: leadership not confirmed");
                return Box::pin(std::future::ready(Err(Fenced.into())));
            }
            if let Some(m) = &self.layer.metrics {
                m.api_writes.inc();
            }
        } else if !self.layer.watch
            && let Some(m) = &self.layer.metrics
        {
            m.api_reads.inc();
        }
        let what = format!("{} {}", req.method(), req.uri().path());
        let health = self.layer.health.clone();
        let watch = self.layer.watch;
        let response = self.inner.call(req);
        Box::pin(async move {
            let result = response.await;
            let answer = match &result {
                Ok(r) if watch => Answer::from_watch_status(r.status().as_u16()),
                Ok(r) => Answer::from_status(r.status().as_u16()),
                Err(e) => Answer::Unreachable(e.to_string()),
            };
            health.record(&what, answer);
            result
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::ServiceExt;

    fn request(method: Method, path: &str) -> Request<()> {
        Request::builder()
            .method(method)
            .uri(path)
            .body(())
            .expect("a request")
    }

    /// A stand-in for the API server that answers every request with `status`.
    fn server(status: u16) -> tower::util::BoxService<Request<()>, Response<()>, BoxError> {
        tower::util::BoxService::new(tower::service_fn(move |_req: Request<()>| async move {
            Ok::<_, BoxError>(
                Response::builder()
                    .status(status)
                    .body(())
                    .expect("a response"),
            )
        }))
    }

    #[tokio::test]
    async fn writes_pass_only_while_the_fence_is_open_and_are_counted() {
        let fence = Fence::closed();
        let metrics = Arc::new(Metrics::default());
        let layer = GuardLayer {
            fence: Some(fence.clone()),
            metrics: Some(metrics.clone()),
            health: ApiHealth::default(),
            watch: false,
        };
        let svc = layer.layer(server(200));
        let read = svc
            .oneshot(request(Method::GET, "/api/v1/namespaces"))
            .await;
        assert!(read.is_ok(), "reads are never fenced");
        for method in [Method::POST, Method::PUT, Method::PATCH, Method::DELETE] {
            let refused = layer
                .layer(server(200))
                .oneshot(request(
                    method.clone(),
                    "/apis/apps/v1/namespaces/x/deployments/y",
                ))
                .await;
            let e = refused.expect_err("a write while the fence is closed");
            assert!(e.is::<Fenced>(), "{method}: {e}");
        }
        assert_eq!(metrics.fenced_writes.get(), 4);
        assert_eq!(metrics.api_writes.get(), 0, "nothing was sent");

        fence.open_for_test();
        let sent = layer
            .layer(server(200))
            .oneshot(request(
                Method::PATCH,
                "/apis/apps/v1/namespaces/x/deployments/y",
            ))
            .await;
        assert!(sent.is_ok());
        assert_eq!(metrics.api_writes.get(), 1);
    }

    #[tokio::test]
    async fn throttled_and_failed_answers_are_recorded_per_path() {
        let health = ApiHealth::default();
        let layer = GuardLayer {
            fence: None,
            metrics: None,
            health: health.clone(),
            watch: false,
        };
        let path = "/apis/apps/v1/namespaces/x/deployments/y";
        let answer = layer
            .layer(server(429))
            .oneshot(request(Method::PATCH, path))
            .await
            .expect("the 429 is passed on");
        assert_eq!(answer.status(), 429);
        let fault = health.lasting_fault(Duration::ZERO).expect("recorded");
        assert!(fault.throttled() && fault.what.ends_with(path), "{fault}");
        layer
            .layer(server(404))
            .oneshot(request(Method::PATCH, path))
            .await
            .expect("answered");
        assert_eq!(
            health.lasting_fault(Duration::ZERO),
            None,
            "a 404 is an answer"
        );

        let watches = GuardLayer {
            fence: None,
            metrics: None,
            health: health.clone(),
            watch: true,
        };
        watches
            .layer(server(403))
            .oneshot(request(Method::GET, "/apis/apps/v1/deployments"))
            .await
            .expect("answered");
        assert!(
            health.lasting_fault(Duration::ZERO).is_some(),
            "a forbidden watch does not work"
        );
    }
}
