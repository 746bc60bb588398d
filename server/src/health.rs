//! The operator's HTTP endpoint, on the metrics listener (`metrics_listen`):
//!
//! * `GET /metrics`: the Prometheus exposition (relay metrics, process metrics,
//!   `sealpost_build_info`);
//! * `GET /healthz`: `200 ok` while the process serves HTTP at all (liveness);
//! * `GET /readyz`: `200 ready` when the relay accepts connections and its store answers
//!   a read within [`READY_STORE_TIMEOUT`]; `503` with the reason otherwise (before the
//!   stored trust state is loaded, during shutdown, or when the store fails or hangs).
//!
//! Anything else is `404`; a method other than `GET` or `HEAD` is `405`. The endpoint is
//! bounded like the QUIC side: at most [`MAX_HTTP_CONNECTIONS`] connections at once, each
//! closed after [`HTTP_CONNECTION_TIMEOUT`]. It carries no secrets: counts only.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Method, Request, Response, StatusCode};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::sync::{watch, Semaphore};
use tracing::{debug, warn};

/// Concurrent HTTP connections on the metrics listener.
pub const MAX_HTTP_CONNECTIONS: usize = 64;
/// Longest an HTTP connection may stay open (scrapes take milliseconds).
pub const HTTP_CONNECTION_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest the store may take to answer the readiness probe's read.
pub const READY_STORE_TIMEOUT: Duration = Duration::from_secs(2);

/// Where the relay is in its life, as `/readyz` reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Phase {
    /// Bound, loading and verifying the stored trust state.
    Starting = 0,
    /// Accepting connections.
    Serving = 1,
    /// Shutting down: no new connections.
    Stopping = 2,
}

/// The relay's phase, shared between the accept loop and the HTTP endpoint.
#[derive(Debug, Default)]
pub struct Lifecycle(AtomicU8);

impl Lifecycle {
    /// Move to `phase`.
    pub fn set(&self, phase: Phase) {
        self.0.store(phase as u8, Ordering::Release);
    }

    /// The current phase.
    pub fn get(&self) -> Phase {
        match self.0.load(Ordering::Acquire) {
            0 => Phase::Starting,
            1 => Phase::Serving,
            _ => Phase::Stopping,
        }
    }
}

/// A readiness probe of the store: `Ok` if it answered a read.
pub type StoreProbe =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>> + Send + Sync>;

/// What the endpoint needs.
#[derive(Clone)]
pub struct Health {
    /// Renders `/metrics`.
    pub metrics: PrometheusHandle,
    /// The relay's phase.
    pub lifecycle: Arc<Lifecycle>,
    /// Reads from the store.
    pub store: StoreProbe,
}

/// The answer to one request (a plain function of the path, the method and the state).
pub async fn respond(health: &Health, method: &Method, path: &str) -> (StatusCode, String) {
    if method != Method::GET && method != Method::HEAD {
        return (StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n".into());
    }
    match path {
        "/metrics" => (StatusCode::OK, crate::metrics::render(&health.metrics)),
        "/healthz" => (StatusCode::OK, "ok\n".into()),
        "/readyz" => match health.lifecycle.get() {
            Phase::Starting => (
                StatusCode::SERVICE_UNAVAILABLE,
                "not ready: starting (verifying the stored trust state)\n".into(),
            ),
            Phase::Stopping => (
                StatusCode::SERVICE_UNAVAILABLE,
                "not ready: shutting down\n".into(),
            ),
            Phase::Serving => {
                match tokio::time::timeout(READY_STORE_TIMEOUT, (health.store)()).await {
                    Ok(Ok(())) => (StatusCode::OK, "ready\n".into()),
                    Ok(Err(e)) => (
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!("not ready: the store failed: {e}\n"),
                    ),
                    Err(_) => (
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!(
                            "not ready: the store did not answer within {} s\n",
                            READY_STORE_TIMEOUT.as_secs()
                        ),
                    ),
                }
            }
        },
        _ => (
            StatusCode::NOT_FOUND,
            "not found: /metrics, /healthz, /readyz\n".into(),
        ),
    }
}

/// Serve HTTP/1.1 on `listener` until `stop` turns true.
pub async fn serve(
    listener: tokio::net::TcpListener,
    health: Health,
    mut stop: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(MAX_HTTP_CONNECTIONS));
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.changed() => return,
        };
        let (stream, peer): (tokio::net::TcpStream, SocketAddr) = match accepted {
            Ok(a) => a,
            Err(e) => {
                warn!(error = %e, "metrics listener: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            debug!(peer = %peer, "metrics listener: too many connections, closing one");
            continue;
        };
        let health = health.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let health = health.clone();
                async move {
                    let (status, body) = respond(&health, req.method(), req.uri().path()).await;
                    let body = if req.method() == Method::HEAD {
                        String::new()
                    } else {
                        body
                    };
                    let content_type = if req.uri().path() == "/metrics" {
                        "text/plain; version=0.0.4; charset=utf-8"
                    } else {
                        "text/plain; charset=utf-8"
                    };
                    Response::builder()
                        .status(status)
                        .header(hyper::header::CONTENT_TYPE, content_type)
                        .body(Full::new(Bytes::from(body)))
                }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            let conn = hyper::server::conn::http1::Builder::new().serve_connection(io, service);
            match tokio::time::timeout(HTTP_CONNECTION_TIMEOUT, conn).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => debug!(peer = %peer, error = %e, "metrics connection ended"),
                Err(_) => debug!(peer = %peer, "metrics connection timed out"),
            }
            drop(permit);
        });
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn health(store: StoreProbe) -> Health {
        Health {
            metrics: metrics_exporter_prometheus::PrometheusBuilder::new()
                .build_recorder()
                .handle(),
            lifecycle: Arc::new(Lifecycle::default()),
            store,
        }
    }

    fn answering(result: Result<(), String>) -> StoreProbe {
        Arc::new(move || {
            let r = result.clone();
            Box::pin(async move { r })
        })
    }

    #[tokio::test]
    async fn readiness_follows_the_phase_and_the_store() {
        let h = health(answering(Ok(())));
        let (code, body) = respond(&h, &Method::GET, "/readyz").await;
        assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("starting"), "{body}");
        h.lifecycle.set(Phase::Serving);
        assert_eq!(
            respond(&h, &Method::GET, "/readyz").await,
            (StatusCode::OK, "ready\n".to_owned())
        );
        h.lifecycle.set(Phase::Stopping);
        let (code, body) = respond(&h, &Method::GET, "/readyz").await;
        assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("shutting down"), "{body}");
        // Liveness does not depend on either.
        assert_eq!(
            respond(&h, &Method::GET, "/healthz").await,
            (StatusCode::OK, "ok\n".to_owned())
        );

        let failing = health(answering(Err("disk I/O error".into())));
        failing.lifecycle.set(Phase::Serving);
        let (code, body) = respond(&failing, &Method::GET, "/readyz").await;
        assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("disk I/O error"), "{body}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_store_that_hangs_is_not_ready() {
        let hanging: StoreProbe = Arc::new(|| Box::pin(std::future::pending()));
        let h = health(hanging);
        h.lifecycle.set(Phase::Serving);
        let (code, body) = respond(&h, &Method::GET, "/readyz").await;
        assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("did not answer"), "{body}");
    }

    #[tokio::test]
    async fn other_paths_and_methods_are_refused() {
        let h = health(answering(Ok(())));
        assert_eq!(
            respond(&h, &Method::GET, "/").await.0,
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            respond(&h, &Method::POST, "/metrics").await.0,
            StatusCode::METHOD_NOT_ALLOWED
        );
        assert_eq!(
            respond(&h, &Method::HEAD, "/healthz").await.0,
            StatusCode::OK
        );
    }
}
