//! `celeriac call`: publish one task exactly as a Celery client does.

use std::process::ExitCode;

use anyhow::Context as _;
use clap::Args;
use serde_json::{Map, Value};

use super::result::print_result;
use super::CommonArgs;
use crate::config::FileConfig;
use crate::protocol::time::{from_now, parse_iso, seconds};
use crate::protocol::TaskRequest;
use crate::{backend, broker};

#[derive(Debug, Args)]
pub struct CallArgs {
    /// Task name, e.g. math.add.
    pub task: String,
    /// Positional arguments; each is read as JSON, or taken as a string if it is not JSON.
    pub args: Vec<String>,
    /// Keyword arguments as a JSON object.
    #[arg(long)]
    pub kwargs: Option<String>,
    /// Queue to publish to.
    #[arg(short = 'Q', long, default_value = "celery")]
    pub queue: String,
    /// Run no earlier than this many seconds from now.
    #[arg(long)]
    pub countdown: Option<f64>,
    /// Run no earlier than this time (ISO 8601).
    #[arg(long)]
    pub eta: Option<String>,
    /// Discard the task if it has not started within this many seconds.
    #[arg(long)]
    pub expires: Option<f64>,
    /// Hard time limit in seconds.
    #[arg(long)]
    pub time_limit: Option<f64>,
    /// Soft time limit in seconds.
    #[arg(long)]
    pub soft_time_limit: Option<f64>,
    /// Wait for the result and print it.
    #[arg(long)]
    pub wait: bool,
    /// Seconds to wait with --wait.
    #[arg(long, default_value_t = 60.0)]
    pub timeout: f64,
}

fn parse_arg(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_owned()))
}

pub async fn run(common: &CommonArgs, file: &FileConfig, args: CallArgs) -> anyhow::Result<ExitCode> {
    let connection = common.connection(file)?;
    let kwargs: Map<String, Value> = match &args.kwargs {
        Some(text) => serde_json::from_str(text).context("--kwargs must be a JSON object")?,
        None => Map::new(),
    };
    let mut request = TaskRequest::new(&args.task, args.args.iter().map(|a| parse_arg(a)).collect(), kwargs);
    request.delivery_info.routing_key = args.queue.clone();
    request.eta = match (&args.eta, args.countdown) {
        (Some(text), _) => Some(parse_iso(text).with_context(|| format!("--eta {text:?} is not an ISO 8601 time"))?),
        (None, Some(secs)) => Some(from_now(secs.max(0.0)).context("--countdown must be a number of seconds")?),
        (None, None) => None,
    };
    request.expires = match args.expires {
        Some(secs) => Some(from_now(secs.max(0.0)).context("--expires must be a number of seconds")?),
        None => None,
    };
    request.time_limit = (args.time_limit, args.soft_time_limit);

    // With --wait the backend is opened first: an rpc:// backend names the reply queue.
    let backend = match args.wait {
        true => Some(backend::open(&connection.backend, connection.result_expires, &connection.broker).await?),
        false => None,
    };
    if let Some(backend) = &backend {
        if let Some(queue) = backend.reply_to().await? {
            request.reply_to = Some(queue);
        }
    }
    let broker = broker::open(&connection.broker, &connection.transport_options).await?;
    broker.declare(std::slice::from_ref(&args.queue)).await?;
    broker.publish(&args.queue, &request.encode()).await?;
    let Some(backend) = backend else {
        println!("{}", request.id);
        return Ok(ExitCode::SUCCESS);
    };
    let timeout = seconds(args.timeout).unwrap_or_default();
    let result = backend.wait(&request.id, timeout).await?;
    print_result(&request.id, result.as_ref(), timeout)
}
