//! `celeriac worker`: run the host as a service until SIGTERM / SIGINT.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use clap::Args;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

use super::CommonArgs;
use crate::config::{default_hostname, BackendUrl, BrokerUrl, FileConfig};
use crate::http::Status;
use crate::runtime::{cache::default_cache_dir, watcher, Runtime};
use crate::telemetry::Telemetry;
use crate::worker::{SharedRateLimits, Worker, WorkerConfig};
use crate::{backend, broker};

/// Seconds to an ETA beyond which a task is parked in the broker: short enough that a
/// burst of countdowns cannot hold a worker's reservations for long, long enough that
/// the usual retry countdown of a few seconds is simply held.
pub const DEFAULT_PARK_ETA_AFTER: f64 = 10.0;

/// `--park-eta-after`: 0 turns parking off.
fn park_after(seconds: f64) -> anyhow::Result<Option<std::time::Duration>> {
    if !seconds.is_finite() || seconds < 0.0 {
        anyhow::bail!("--park-eta-after {seconds} must be a number of seconds, 0 or more");
    }
    Ok((seconds > 0.0).then(|| std::time::Duration::from_secs_f64(seconds.max(1.0))))
}

/// The plugin folder when none is given.
pub const DEFAULT_PLUGINS: &str = "plugins.d";

#[derive(Debug, Args)]
pub struct WorkerArgs {
    /// Folder of plugin components (*.wasm, with optional NAME.toml manifests).
    #[arg(long, env = "CELERIAC_PLUGINS")]
    pub plugins: Option<PathBuf>,
    /// Queues to consume, comma separated (default: celery).
    #[arg(short = 'Q', long, env = "CELERIAC_QUEUES", value_delimiter = ',')]
    pub queues: Vec<String>,
    /// Task slots (default: the number of CPUs).
    #[arg(short = 'c', long, env = "CELERIAC_CONCURRENCY")]
    pub concurrency: Option<usize>,
    /// Node name (default: celeriac@HOST).
    #[arg(short = 'n', long, env = "CELERIAC_HOSTNAME")]
    pub hostname: Option<String>,
    /// Messages reserved per slot (Celery's default is 4). Unset: about 50 ms of work per
    /// slot, 16 to 128 messages on brokers the worker pulls from, 2 to 128 on RabbitMQ. Reserving
    /// ahead only happens while every running task is under a second old, so a large
    /// window keeps short tasks streaming without making long ones hold messages hostage.
    #[arg(long, env = "CELERIAC_PREFETCH_MULTIPLIER")]
    pub prefetch_multiplier: Option<usize>,
    /// Store name, args, kwargs, worker, retries and queue with results (Celery's result_extended).
    #[arg(long, env = "CELERIAC_RESULT_EXTENDED")]
    pub result_extended: bool,
    /// Send task events for monitors (`celery events`, Flower), as Celery's `-E`.
    /// Worker events (online, heartbeat, offline) are always sent.
    #[arg(short = 'E', long = "task-events", env = "CELERIAC_TASK_EVENTS")]
    pub task_events: bool,
    /// File that keeps revoked task ids across restarts, as Celery's `--statedb`.
    #[arg(long = "statedb", env = "CELERIAC_STATEDB")]
    pub state_db: Option<PathBuf>,
    /// Tasks whose ETA is more than this many seconds away are kept in the broker until
    /// then (RabbitMQ delay queues, a Redis sorted set) instead of by the worker, where
    /// they would hold a reservation and an unacked delivery (default 10; 0 never parks).
    #[arg(long, env = "CELERIAC_PARK_ETA_AFTER")]
    pub park_eta_after: Option<f64>,
    /// On SIGTERM, wait this many seconds for running tasks, then stop them and return
    /// their messages to the queue (default: wait as long as they take, as Celery does).
    #[arg(long, env = "CELERIAC_SHUTDOWN_TIMEOUT")]
    pub shutdown_timeout: Option<f64>,
    /// Send a trace span per task to this OpenTelemetry collector (OTLP over HTTP, e.g.
    /// http://127.0.0.1:4318). Off by default.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
    /// Address of the status port (/healthz, /readyz, /metrics), or `off`
    /// (default 127.0.0.1:8793; port 0 picks a free one).
    #[arg(long, env = "CELERIAC_HTTP")]
    pub http: Option<String>,
    /// Microseconds under which a task's runs count as short, so that it runs on the I/O
    /// thread instead of an executor thread (default 100; 0 never runs tasks there).
    #[arg(long, env = "CELERIAC_INLINE_BELOW")]
    pub inline_below: Option<u64>,
    /// Threads for broker and backend I/O and short tasks run in place (default 1). More
    /// drain a Redis queue faster on a busy worker (README, "Speed").
    #[arg(long, env = "CELERIAC_IO_THREADS", value_parser = clap::value_parser!(u16).range(1..=64))]
    pub io_threads: Option<u16>,
}

/// Where the status port listens when nothing says otherwise.
pub const DEFAULT_HTTP: &str = "127.0.0.1:8793";

pub async fn run(common: &CommonArgs, file: &FileConfig, args: WorkerArgs) -> anyhow::Result<ExitCode> {
    let connection = common.connection(file)?;
    let plugins = args
        .plugins
        .or_else(|| file.plugins.clone())
        .unwrap_or_else(|| DEFAULT_PLUGINS.into());
    let concurrency = args
        .concurrency
        .or(file.concurrency)
        .unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1))
        .max(1);
    let queues = if !args.queues.is_empty() {
        args.queues
    } else {
        file.queues.clone().unwrap_or_else(|| vec!["celery".into()])
    };
    let config = WorkerConfig {
        hostname: args
            .hostname
            .or_else(|| file.hostname.clone())
            .unwrap_or_else(default_hostname),
        queues,
        concurrency,
        prefetch_multiplier: args.prefetch_multiplier.or(file.prefetch_multiplier),
        result_extended: args.result_extended || file.result_extended.unwrap_or(false),
        task_events: args.task_events || file.task_events.unwrap_or(false),
        broker_url: connection.broker_url.clone(),
        backend_url: connection.backend_url.clone(),
        state_db: args.state_db.or_else(|| file.statedb.clone()),
        park_eta_after: park_after(
            args.park_eta_after
                .or(file.park_eta_after)
                .unwrap_or(DEFAULT_PARK_ETA_AFTER),
        )?,
        shutdown_timeout: match args.shutdown_timeout.or(file.shutdown_timeout) {
            Some(s) if s.is_finite() && s >= 0.0 => Some(std::time::Duration::from_secs_f64(s)),
            Some(s) => anyhow::bail!("--shutdown-timeout {s} must be a number of seconds, 0 or more"),
            None => None,
        },
    };

    let mut runtime = Runtime::new(concurrency, default_cache_dir())?;
    if let Some(micros) = args.inline_below.or(file.inline_below) {
        runtime = runtime.with_inline_below(std::time::Duration::from_micros(micros));
    }
    let runtime = Arc::new(runtime);
    let stamps = runtime.load_dir(&plugins)?;
    if runtime.registry.task_names().is_empty() {
        tracing::warn!(plugins = %plugins.display(), "no tasks loaded yet; drop .wasm files into the plugin folder");
    }
    tokio::spawn(watcher::watch(runtime.clone(), plugins.clone(), stamps));

    let (broker, control) = broker::open_with_control(&connection.broker, &connection.transport_options)
        .await
        .context("cannot open the broker")?;
    let backend = backend::open(&connection.backend, connection.result_expires, &connection.broker)
        .await
        .context("cannot open the result backend")?;

    let status = Arc::new(Status::default());
    let http = args
        .http
        .or_else(|| file.http.clone())
        .unwrap_or_else(|| DEFAULT_HTTP.to_owned());
    if http != "off" {
        let addr: SocketAddr = http
            .parse()
            .with_context(|| format!("--http {http:?} is not HOST:PORT (or off)"))?;
        // A second worker on the same machine finds the port taken: it runs without one.
        match crate::http::serve(addr, status.clone()).await {
            Ok(bound) => {
                tracing::info!(address = %bound, "status port on http://{bound} (/healthz, /readyz, /metrics, /events, /inspect/COMMAND)")
            }
            Err(err) => tracing::warn!(address = %addr, error = %err, "status port unavailable; running without it"),
        }
    }

    let telemetry = match args.otlp_endpoint.or_else(|| file.otlp_endpoint.clone()) {
        None => None,
        Some(endpoint) => {
            // The exporter's blocking HTTP client must not be built on an async thread.
            let service = config.hostname.clone();
            let started = tokio::task::spawn_blocking(move || Telemetry::start(&endpoint, &service)).await?;
            Some(Arc::new(started.context("cannot start OpenTelemetry tracing")?))
        }
    };
    let stop = Arc::new(watch::channel(false).0);
    tokio::spawn(handle_signals(stop.clone()));
    let shared_rate_limits = match (&connection.broker, &connection.backend) {
        (BrokerUrl::Redis(url), _) | (_, BackendUrl::Redis(url)) => match SharedRateLimits::connect(url).await {
            Ok(limits) => Some(Arc::new(limits)),
            Err(err) => {
                tracing::warn!(error = %err, "rate limits across workers are off: cannot reach Redis");
                None
            }
        },
        _ => None,
    };
    let worker = Worker {
        config,
        broker,
        backend,
        control,
        runtime,
        status,
        telemetry,
        shared_rate_limits,
    };
    worker.run(stop).await?;
    Ok(ExitCode::SUCCESS)
}

/// First SIGTERM / SIGINT: warm shutdown. Second: stop at once; late-acked messages
/// are redelivered by the broker.
async fn handle_signals(stop: Arc<watch::Sender<bool>>) {
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        tracing::error!("cannot install signal handlers; stop the worker with SIGKILL");
        return;
    };
    tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
    tracing::info!("shutdown requested (again to stop at once)");
    stop.send_replace(true);
    tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
    tracing::warn!("cold shutdown: stopping now; unacknowledged messages will be delivered again");
    std::process::exit(1);
}
