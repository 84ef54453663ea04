//! The worker's own HTTP port, for every broker: `/healthz` (the process answers),
//! `/readyz` (it is consuming), `/metrics` (Prometheus). On 127.0.0.1 by default; nothing
//! it serves holds a secret.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use crate::metrics::Metrics;

/// What the endpoints report, shared with the worker.
#[derive(Default)]
pub struct Status {
    pub metrics: Metrics,
    /// Set once the worker consumes, cleared when it starts shutting down.
    pub ready: AtomicBool,
}

/// Bind `addr` and serve in the background; returns the bound address (port 0 picks one).
pub async fn serve(addr: SocketAddr, status: Arc<Status>) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(status);
    tokio::spawn(async move {
        if let Err(err) = axum::serve(listener, app).await {
            tracing::error!(error = %err, "HTTP status port stopped");
        }
    });
    Ok(bound)
}

async fn readyz(State(status): State<Arc<Status>>) -> impl IntoResponse {
    if status.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not consuming\n")
    }
}

async fn metrics(State(status): State<Arc<Status>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        status.metrics.encode(),
    )
}
