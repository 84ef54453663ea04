//! The worker's own HTTP port, for every broker: `/healthz` (the process answers),
//! `/readyz` (it is consuming), `/metrics` (Prometheus), `/events` (the worker's and its
//! tasks' events as server-sent events, the same as on the broker's `celeryev`) and
//! `/inspect/<command>` (the read-only `celery inspect` commands, as JSON). On 127.0.0.1
//! by default; nothing it serves holds a secret, and nothing it serves changes the worker.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use std::collections::HashMap;
use std::convert::Infallible;

use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Json;
use axum::Router;
use futures_util::Stream;
use serde_json::{Map, Value};
use tokio::sync::broadcast::error::RecvError;

use crate::metrics::Metrics;
use crate::worker::Inspector;

/// What the endpoints report, shared with the worker.
#[derive(Default)]
pub struct Status {
    pub metrics: Metrics,
    /// Set once the worker consumes, cleared when it starts shutting down.
    pub ready: AtomicBool,
    /// Remote control and the event stream, once the worker runs.
    pub inspector: OnceLock<Inspector>,
}

/// Bind `addr` and serve in the background; returns the bound address (port 0 picks one).
pub async fn serve(addr: SocketAddr, status: Arc<Status>) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/events", get(events))
        .route("/inspect/{command}", get(inspect))
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

/// The `celery inspect` commands the port answers: those that only read.
const READ_ONLY: &[&str] = &[
    "ping",
    "stats",
    "active",
    "reserved",
    "scheduled",
    "revoked",
    "registered",
    "active_queues",
    "query_task",
    "conf",
    "report",
    "clock",
];

/// `/inspect/<command>?arg=value`: the reply `celery inspect <command> --json` prints for
/// this worker. Argument values are read as JSON where they parse (`safe=true`, `ids=["…"]`).
async fn inspect(
    State(status): State<Arc<Status>>,
    Path(command): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> axum::response::Response {
    if !READ_ONLY.contains(&command.as_str()) {
        let text = format!(
            "unknown or not read-only: {command}; try one of {}\n",
            READ_ONLY.join(", ")
        );
        return (StatusCode::NOT_FOUND, text).into_response();
    }
    let Some(inspector) = status.inspector.get() else {
        return (StatusCode::SERVICE_UNAVAILABLE, "the worker is starting\n").into_response();
    };
    let arguments: Map<String, Value> = query
        .into_iter()
        .map(|(key, value)| {
            let value = serde_json::from_str(&value).unwrap_or(Value::String(value));
            (key, value)
        })
        .collect();
    let reply = inspector.call(&command, &arguments).await.unwrap_or(Value::Null);
    let mut body = Map::new();
    body.insert(inspector.hostname().to_owned(), reply);
    Json(Value::Object(body)).into_response()
}

/// `/events`: every event from now on, one JSON object per server-sent event.
async fn events(State(status): State<Arc<Status>>) -> axum::response::Response {
    let Some(inspector) = status.inspector.get() else {
        return (StatusCode::SERVICE_UNAVAILABLE, "the worker is starting\n").into_response();
    };
    Sse::new(event_stream(inspector.events()))
        .keep_alive(KeepAlive::default())
        .into_response()
}

fn event_stream(receiver: tokio::sync::broadcast::Receiver<Arc<str>>) -> impl Stream<Item = Result<Event, Infallible>> {
    futures_util::stream::unfold(receiver, |mut receiver| async move {
        loop {
            match receiver.recv().await {
                Ok(event) => return Some((Ok(Event::default().data(&*event)), receiver)),
                // A reader too slow for the stream misses events rather than holding the worker up.
                Err(RecvError::Lagged(_)) => continue,
                Err(RecvError::Closed) => return None,
            }
        }
    })
}
