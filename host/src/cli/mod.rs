//! The command line: one file per subcommand. Every flag can also come from the
//! environment (named beside it in `--help`) or from the TOML file given by `--config`;
//! flags beat the environment, which beats the file.

mod call;
mod control;
mod logging;
mod plugin_build;
mod plugin_new;
mod plugins;
mod purge;
mod result;
mod worker;

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};

use crate::config::{parse_transport_options, BackendUrl, BrokerUrl, FileConfig, DEFAULT_URL};

#[derive(Debug, Parser)]
#[command(
    name = "celeriac",
    version,
    about = "Run Celery tasks as sandboxed WebAssembly components"
)]
pub struct Cli {
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub struct CommonArgs {
    /// TOML config file; its keys mirror these flags.
    #[arg(long, global = true, env = "CELERIAC_CONFIG")]
    pub config: Option<PathBuf>,
    /// Broker URL (default: the embedded SQLite file sqlite://celeriac.db).
    #[arg(short = 'b', long, global = true, env = "CELERY_BROKER_URL")]
    pub broker: Option<String>,
    /// Result backend URL (default: the embedded SQLite file sqlite://celeriac.db).
    #[arg(long, global = true, env = "CELERY_RESULT_BACKEND")]
    pub result_backend: Option<String>,
    /// A broker transport option, KEY=VALUE, as Celery's broker_transport_options (repeatable).
    #[arg(long = "broker-transport-option", global = true, value_name = "KEY=VALUE")]
    pub broker_transport_options: Vec<String>,
    /// Seconds to keep results in backends that expire them (Celery's result_expires; 0 keeps them).
    #[arg(long, global = true, env = "CELERIAC_RESULT_EXPIRES")]
    pub result_expires: Option<u64>,
    /// Log format: text or json.
    #[arg(long, global = true, env = "CELERIAC_LOG_FORMAT")]
    pub log_format: Option<String>,
    /// Log level (error, warn, info, debug, trace) or a tracing filter; RUST_LOG also works.
    #[arg(short = 'l', long, global = true, env = "CELERIAC_LOGLEVEL", default_value = "info")]
    pub loglevel: String,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the worker until SIGTERM / SIGINT.
    Worker(worker::WorkerArgs),
    /// Publish one task in Celery's format.
    Call(call::CallArgs),
    /// Read a task's result from the backend.
    Result(result::ResultArgs),
    /// List, check plugins.
    Plugins(plugins::PluginsArgs),
    /// Drop the messages waiting in queues.
    Purge(purge::PurgeArgs),
    /// Ask workers (Celeriac or Celery) about their state: ping, stats, active, registered, …
    Inspect(control::ControlArgs),
    /// Tell workers to act: shutdown, revoke, rate_limit, time_limit, add_consumer, …
    Control(control::ControlArgs),
}

/// Broker, backend and options, resolved from flags, environment and file.
pub struct Connection {
    /// The URLs as given (they may hold passwords: show them through `redact`).
    pub broker_url: String,
    pub backend_url: String,
    pub broker: BrokerUrl,
    pub backend: BackendUrl,
    pub transport_options: HashMap<String, String>,
    /// Seconds a stored result is kept (0: forever), where the backend can expire keys.
    pub result_expires: u64,
}

impl CommonArgs {
    pub fn file(&self) -> anyhow::Result<FileConfig> {
        match &self.config {
            Some(path) => Ok(FileConfig::load(path)?),
            None => Ok(FileConfig::default()),
        }
    }

    pub fn connection(&self, file: &FileConfig) -> anyhow::Result<Connection> {
        let broker = self
            .broker
            .clone()
            .or_else(|| file.broker.clone())
            .unwrap_or_else(|| DEFAULT_URL.into());
        let backend = self
            .result_backend
            .clone()
            .or_else(|| file.result_backend.clone())
            .unwrap_or_else(|| DEFAULT_URL.into());
        let mut transport_options = file.transport_options();
        transport_options.extend(parse_transport_options(&self.broker_transport_options)?);
        Ok(Connection {
            broker: BrokerUrl::parse(&broker)?,
            backend: BackendUrl::parse(&backend)?,
            broker_url: broker,
            backend_url: backend,
            transport_options,
            result_expires: self
                .result_expires
                .or(file.result_expires)
                .unwrap_or(crate::backend::DEFAULT_RESULT_EXPIRES),
        })
    }
}

/// Run a parsed command line; errors are printed for a person to act on.
pub fn run(cli: Cli) -> ExitCode {
    match run_inner(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run_inner(cli: Cli) -> anyhow::Result<ExitCode> {
    let file = cli.common.file()?;
    let format = cli.common.log_format.clone().or_else(|| file.log_format.clone());
    logging::init(&cli.common.loglevel, format.as_deref())?;
    // Guests run on executor threads of their own (worker::executor), short ones in place
    // (runtime::inline). Broker and backend I/O, the worker loop included, runs on one
    // thread unless a worker is given more (`--io-threads`, README "Speed"): a second
    // drained Redis faster on 2 cores. A multi-thread runtime starts the last task spawned
    // first and lets its threads steal tasks, so the worker loop receives each delivery and
    // queues it for a slot before it spawns its handler (worker/task.rs, `receive`).
    let io_threads = match &cli.command {
        Command::Worker(args) => match args.io_threads.or(file.io_threads).unwrap_or(1) {
            // The flag's range, which clap checks for the flag and the environment only.
            threads @ 1..=64 => usize::from(threads),
            threads => anyhow::bail!("io_threads = {threads} in the config file: give 1 to 64"),
        },
        _ => 1,
    };
    let runtime = if io_threads == 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(io_threads)
            .thread_name("celeriac-io")
            .enable_all()
            .build()
    }
    .context("cannot start the async runtime")?;
    // The command runs as a task of the runtime, not in `block_on`: polled on the main
    // thread, the worker loop would hand every batch of messages to the I/O threads and back.
    let command = runtime.spawn(async move {
        match cli.command {
            Command::Worker(args) => worker::run(&cli.common, &file, args).await,
            Command::Call(args) => call::run(&cli.common, &file, args).await,
            Command::Result(args) => result::run(&cli.common, &file, args).await,
            Command::Plugins(args) => plugins::run(&file, args).await,
            Command::Purge(args) => purge::run(&cli.common, &file, args).await,
            Command::Inspect(args) | Command::Control(args) => control::run(&cli.common, &file, args).await,
        }
    });
    runtime.block_on(command).context("the command stopped on a panic")?
}
