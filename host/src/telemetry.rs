//! OpenTelemetry tracing, off unless `--otlp-endpoint` is given: one span per task run,
//! exported over OTLP/HTTP (JSON) to a collector.
//!
//! The spans of one Celery workflow form one trace without any header propagation:
//! Celery ids are UUIDs, so the trace id is the workflow's `root_id` and a task's span id
//! is the low 64 bits of its own id, its parent span the low 64 bits of its `parent_id`.
//! A chain of tasks run by several workers thus shows as one tree in Jaeger or Tempo.

use std::cell::Cell;
use std::time::{Duration, SystemTime};

use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceId, TraceState, Tracer, TracerProvider,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::trace::{IdGenerator, RandomIdGenerator, SdkTracer, SdkTracerProvider};
use opentelemetry_sdk::Resource;

/// What a finished task reports to its span.
pub struct TaskSpan<'a> {
    pub task_id: &'a str,
    pub root_id: &'a str,
    pub parent_id: Option<&'a str>,
    pub name: &'a str,
    pub plugin: &'a str,
    pub hostname: &'a str,
    pub queue: &'a str,
    pub retries: u32,
    pub state: &'a str,
    /// The exception's repr, for a failed task.
    pub error: Option<String>,
    pub wall: Duration,
    pub cpu: Duration,
    pub peak_memory: usize,
}

pub struct Telemetry {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
}

thread_local! {
    /// The ids the next span started on this thread takes (see [`CeleryIds`]).
    static NEXT_IDS: Cell<Option<(TraceId, SpanId)>> = const { Cell::new(None) };
}

/// Ids from Celery's task ids where one is set for this thread, random ones otherwise.
/// (The SDK takes span ids only from its generator; this is how a span gets its task's.)
#[derive(Debug)]
struct CeleryIds;

impl IdGenerator for CeleryIds {
    fn new_trace_id(&self) -> TraceId {
        NEXT_IDS
            .with(Cell::get)
            .map(|(trace, _)| trace)
            .unwrap_or_else(|| RandomIdGenerator::default().new_trace_id())
    }

    fn new_span_id(&self) -> SpanId {
        NEXT_IDS
            .with(Cell::get)
            .map(|(_, span)| span)
            .unwrap_or_else(|| RandomIdGenerator::default().new_span_id())
    }
}

fn uuid_bytes(id: &str) -> Option<[u8; 16]> {
    uuid::Uuid::parse_str(id).ok().map(|u| u.into_bytes())
}

fn trace_id_of(id: &str) -> Option<TraceId> {
    uuid_bytes(id).map(TraceId::from_bytes)
}

fn span_id_of(id: &str) -> Option<SpanId> {
    let bytes = uuid_bytes(id)?;
    let mut low = [0u8; 8];
    low.copy_from_slice(&bytes[8..]);
    Some(SpanId::from_bytes(low))
}

/// The OTLP traces URL for a collector's base URL (`http://collector:4318`).
fn traces_url(endpoint: &str) -> String {
    let endpoint = endpoint.trim_end_matches('/');
    if endpoint.ends_with("/v1/traces") {
        endpoint.to_owned()
    } else {
        format!("{endpoint}/v1/traces")
    }
}

impl Telemetry {
    /// Export to the collector at `endpoint`; `service` names this worker's spans.
    pub fn start(endpoint: &str, service: &str) -> anyhow::Result<Telemetry> {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpJson)
            .with_endpoint(traces_url(endpoint))
            .build()?;
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_id_generator(CeleryIds)
            .with_resource(Resource::builder().with_service_name(service.to_owned()).build())
            .build();
        let tracer = provider.tracer("celeriac");
        Ok(Telemetry { provider, tracer })
    }

    /// Record one task run as a finished span.
    pub fn task(&self, task: &TaskSpan<'_>) {
        let end = SystemTime::now();
        let trace = trace_id_of(task.root_id).or_else(|| trace_id_of(task.task_id));
        let parent = match (trace, task.parent_id.and_then(span_id_of)) {
            (Some(trace), Some(parent)) => Context::new().with_remote_span_context(SpanContext::new(
                trace,
                parent,
                TraceFlags::SAMPLED,
                true,
                TraceState::default(),
            )),
            _ => Context::new(),
        };
        let mut attributes = vec![
            KeyValue::new("celery.task_id", task.task_id.to_owned()),
            KeyValue::new("celery.task_name", task.name.to_owned()),
            KeyValue::new("celery.state", task.state.to_owned()),
            KeyValue::new("celery.hostname", task.hostname.to_owned()),
            KeyValue::new("celery.queue", task.queue.to_owned()),
            KeyValue::new("celery.retries", i64::from(task.retries)),
            KeyValue::new("celeriac.plugin", task.plugin.to_owned()),
            KeyValue::new("celeriac.cpu_time", task.cpu.as_secs_f64()),
            KeyValue::new("celeriac.peak_memory", task.peak_memory as i64),
        ];
        if let Some(root) = Some(task.root_id).filter(|r| !r.is_empty()) {
            attributes.push(KeyValue::new("celery.root_id", root.to_owned()));
        }
        if let Some(parent) = task.parent_id {
            attributes.push(KeyValue::new("celery.parent_id", parent.to_owned()));
        }
        let builder = self
            .tracer
            .span_builder(task.name.to_owned())
            .with_kind(SpanKind::Consumer)
            .with_start_time(end - task.wall)
            .with_attributes(attributes);
        let ids = trace.zip(span_id_of(task.task_id));
        NEXT_IDS.with(|next| next.set(ids));
        let span = builder.start_with_context(&self.tracer, &parent);
        NEXT_IDS.with(|next| next.set(None));
        let cx = Context::new().with_span(span);
        let span = cx.span();
        if let Some(error) = &task.error {
            span.set_status(Status::error(error.clone()));
        }
        span.end_with_timestamp(end);
    }

    /// Send what is buffered; called once, when the worker stops.
    pub fn shutdown(&self) {
        if let Err(err) = self.provider.shutdown() {
            tracing::warn!(error = %err, "cannot flush the last trace spans");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn celery_ids_become_trace_and_span_ids() {
        let id = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0";
        assert_eq!(trace_id_of(id).unwrap().to_string(), "0f1e2d3c4b5a69788796a5b4c3d2e1f0");
        assert_eq!(span_id_of(id).unwrap().to_string(), "8796a5b4c3d2e1f0");
        assert!(span_id_of("not-a-uuid").is_none());
        assert_eq!(traces_url("http://c:4318/"), "http://c:4318/v1/traces");
        assert_eq!(traces_url("http://c:4318/v1/traces"), "http://c:4318/v1/traces");
    }
}
