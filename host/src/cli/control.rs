//! `celeriac inspect` and `celeriac control`: the client side of remote control, speaking
//! to Celeriac and Celery workers alike, as `celery inspect` / `celery control` do.
//!
//! Positional arguments follow Celery's CLI: `control rate_limit math.add 10/s`,
//! `control revoke ID…`, `control time_limit math.add SOFT HARD`, `inspect query_task ID…`.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::Args;
use serde_json::{json, Map, Value};

use super::CommonArgs;
use crate::broker::control::{self, PIDBOX_EXCHANGE, REPLY_EXCHANGE};
use crate::config::FileConfig;
use crate::protocol::time::{seconds, unix_now};
use crate::protocol::{Headers, Message};

#[derive(Debug, Args)]
pub struct ControlArgs {
    /// The command: ping, stats, active, registered, … (inspect); shutdown, revoke,
    /// rate_limit, time_limit, add_consumer, … (control).
    pub method: String,
    /// The command's arguments, in the order Celery's CLI takes them.
    pub arguments: Vec<String>,
    /// Only these workers (comma separated node names).
    #[arg(short = 'd', long, value_delimiter = ',')]
    pub destination: Vec<String>,
    /// Seconds to wait for replies.
    #[arg(short = 't', long, default_value = "1.0")]
    pub timeout: f64,
    /// With `revoke`: also stop the task if it is running.
    #[arg(long)]
    pub terminate: bool,
    /// Print the replies as one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// The request's `arguments` from Celery-style positional arguments.
fn arguments(method: &str, given: &[String], terminate: bool) -> anyhow::Result<Map<String, Value>> {
    let at = |i: usize, what: &str| -> anyhow::Result<String> {
        given.get(i).cloned().with_context(|| format!("{method} needs {what}"))
    };
    let number = |text: String| -> Value { text.parse::<f64>().map(Value::from).unwrap_or(Value::Null) };
    let value = match method {
        "revoke" => json!({"task_id": given, "terminate": terminate, "signal": "SIGTERM"}),
        "query_task" => json!({"ids": given}),
        "active" => json!({"safe": null}),
        "registered" => json!({"taskinfoitems": given}),
        "conf" => json!({"with_defaults": false}),
        "rate_limit" => json!({"task_name": at(0, "a task name")?, "rate_limit": at(1, "a rate (10/s)")?}),
        "time_limit" => json!({
            "task_name": at(0, "a task name")?,
            "soft": number(at(1, "a soft limit in seconds")?),
            "hard": given.get(2).cloned().map(number),
        }),
        "pool_grow" | "pool_shrink" => json!({"n": given.first().and_then(|n| n.parse::<u64>().ok()).unwrap_or(1)}),
        "add_consumer" => json!({
            "queue": at(0, "a queue")?,
            "exchange": given.get(1),
            "exchange_type": given.get(2).map(String::as_str).unwrap_or("direct"),
            "routing_key": given.get(3),
        }),
        "cancel_consumer" => json!({"queue": at(0, "a queue")?}),
        _ if !given.is_empty() => bail!("{method} takes no arguments"),
        _ => json!({}),
    };
    Ok(value.as_object().cloned().unwrap_or_default())
}

/// Commands whose workers never answer: no point waiting for replies.
fn silent(method: &str) -> bool {
    method == "shutdown"
}

pub async fn run(common: &CommonArgs, file: &FileConfig, args: ControlArgs) -> anyhow::Result<ExitCode> {
    let connection = common.connection(file)?;
    let Some(bus) = control::open(&connection.broker, &connection.transport_options).await? else {
        bail!("this broker has no remote control (only RabbitMQ and Redis do); use the worker's status port: /inspect/<command>");
    };
    let timeout = seconds(args.timeout).context("--timeout must be a positive number of seconds")?;
    let client_id = uuid::Uuid::new_v4().to_string();
    let ticket = uuid::Uuid::new_v4().to_string();
    let destination = (!args.destination.is_empty()).then(|| args.destination.clone());
    let mut headers = Headers::new();
    headers.insert("clock", Value::from(1));
    headers.insert("expires", Value::from(unix_now() + timeout.as_secs_f64()));
    let body = json!({
        "method": args.method,
        "arguments": arguments(&args.method, &args.arguments, args.terminate)?,
        "destination": destination,
        "pattern": null,
        "matcher": null,
        "ticket": ticket,
        "reply_to": {"exchange": REPLY_EXCHANGE, "routing_key": client_id},
    });
    let request = Message::json(&body, headers, PIDBOX_EXCHANGE, "", 2);
    let wait = if silent(&args.method) { Duration::ZERO } else { timeout };
    let limit = destination.as_ref().map(Vec::len);
    let replies = bus.broadcast(&request, &client_id, wait, limit).await?;
    let mut merged = Map::new();
    for reply in replies {
        if reply.headers.get("ticket").and_then(Value::as_str) != Some(ticket.as_str()) {
            continue;
        }
        if let Ok(Value::Object(one)) = serde_json::from_slice::<Value>(&reply.body) {
            merged.extend(one);
        }
    }
    if args.json {
        println!("{}", Value::Object(merged.clone()));
    } else {
        for (node, reply) in &merged {
            let text = match reply.get("ok").or_else(|| reply.get("error")) {
                Some(Value::String(text)) => text.clone(),
                _ => serde_json::to_string_pretty(reply).unwrap_or_default(),
            };
            let verdict = if reply.get("error").is_some() { "ERROR" } else { "OK" };
            println!("-> {node}: {verdict}");
            for line in text.lines() {
                println!("    {line}");
            }
        }
        if !silent(&args.method) {
            let n = merged.len();
            println!("\n{n} {} online.", if n == 1 { "node" } else { "nodes" });
        }
    }
    if merged.is_empty() && !silent(&args.method) {
        eprintln!("Error: No nodes replied within time constraint");
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}
