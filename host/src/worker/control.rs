//! Remote control: the commands of `celery inspect` / `celery control`, answered with the
//! reply shapes Celery's worker gives (../shared/research/celery-wire.md §8), so Flower
//! and the Celery CLI work unchanged. Requests come over the broker's pidbox; the status
//! port's `/inspect/<command>` calls the same [`dispatch`].

use std::sync::Arc;

use serde_json::{json, Map, Value};

use super::{events, task, Shared};
use crate::broker::control::ControlBus;
use crate::config::redact;
use crate::protocol::time::seconds;
use crate::protocol::{Headers, Message};
use crate::runtime::manifest::parse_rate;

/// Answer requests from the broker until the worker stops.
pub(super) async fn serve(shared: Arc<Shared>, bus: Arc<dyn ControlBus>) {
    let mut requests = match bus.listen(&shared.config.hostname).await {
        Ok(requests) => requests,
        Err(err) => {
            tracing::error!(error = %err, "remote control unavailable: cannot listen for requests");
            return;
        }
    };
    loop {
        tokio::select! {
            request = requests.recv() => match request {
                Some(request) => handle(&shared, bus.as_ref(), request).await,
                None => return,
            },
            _ = task::stopped(shared.stopping.clone()) => return,
        }
    }
}

/// Run one request if it is addressed to this worker, and reply if a reply is wanted.
async fn handle(shared: &Arc<Shared>, bus: &dyn ControlBus, request: Message) {
    if let Some(clock) = request.headers.get("clock").and_then(Value::as_u64) {
        shared.clock.adjust(clock);
    }
    let body: Value = match serde_json::from_slice(&request.body) {
        Ok(Value::Object(body)) => Value::Object(body),
        _ => {
            tracing::warn!("ignoring a remote-control request that is not a JSON object");
            return;
        }
    };
    let hostname = shared.config.hostname.as_str();
    if !addressed_to(&body, hostname) {
        return;
    }
    let Some(method) = body.get("method").and_then(Value::as_str) else {
        tracing::warn!("ignoring a remote-control request without a method");
        return;
    };
    let empty = Map::new();
    let arguments = body.get("arguments").and_then(Value::as_object).unwrap_or(&empty);
    tracing::debug!(method, "remote control request");
    let reply = dispatch(shared, method, arguments).await;
    let ticket = body.get("ticket").and_then(Value::as_str);
    let reply_to = body
        .get("reply_to")
        .and_then(|r| Some((r.get("exchange")?.as_str()?, r.get("routing_key")?.as_str()?)));
    if let (Some(reply), Some(ticket), Some((exchange, routing_key))) = (reply, ticket, reply_to) {
        let mut headers = Headers::new();
        headers.insert("ticket", Value::from(ticket));
        headers.insert("clock", Value::from(shared.clock.forward()));
        let message = Message::json(&json!({ hostname: reply }), headers, exchange, routing_key, 1);
        if let Err(err) = bus.reply(routing_key, &message).await {
            tracing::warn!(method, error = %err, "cannot send a remote-control reply");
        }
    }
}

/// kombu's targeting: `destination` (a list of node names), else `pattern` with
/// `matcher` (`glob` or `pcre`), else everyone.
fn addressed_to(body: &Value, hostname: &str) -> bool {
    if let Some(destination) = body.get("destination").and_then(Value::as_array) {
        return destination.iter().any(|d| d.as_str() == Some(hostname));
    }
    let Some(pattern) = body.get("pattern").and_then(Value::as_str) else {
        return true;
    };
    match body.get("matcher").and_then(Value::as_str) {
        Some("pcre") => regex::Regex::new(pattern).is_ok_and(|re| re.is_match(hostname)),
        _ => glob_matches(pattern, hostname),
    }
}

/// Shell-style `*` and `?`, as Python's `fnmatch` for node names.
fn glob_matches(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    // matches[j]: the pattern so far matches the first j characters of text.
    let mut matches = vec![false; t.len() + 1];
    matches[0] = true;
    for c in p {
        let mut next = vec![false; t.len() + 1];
        for j in 0..=t.len() {
            next[j] = match c {
                '*' => matches[j] || (j > 0 && next[j - 1]),
                '?' => j > 0 && matches[j - 1],
                c => j > 0 && matches[j - 1] && t[j - 1] == c,
            };
        }
        matches = next;
    }
    matches[t.len()]
}

fn ok(text: impl Into<String>) -> Option<Value> {
    Some(json!({ "ok": text.into() }))
}

fn error(text: impl Into<String>) -> Option<Value> {
    Some(json!({ "error": text.into() }))
}

/// One id or a list of ids, as `revoke` and `query_task` accept them.
fn ids(value: Option<&Value>) -> Vec<String> {
    match value {
        Some(Value::String(id)) => vec![id.clone()],
        Some(Value::Array(ids)) => ids.iter().filter_map(Value::as_str).map(str::to_owned).collect(),
        _ => Vec::new(),
    }
}

/// Run a command; `None` when it sends no reply (`shutdown`).
pub(super) async fn dispatch(shared: &Arc<Shared>, method: &str, arguments: &Map<String, Value>) -> Option<Value> {
    let hostname = shared.config.hostname.as_str();
    let arg = |name: &str| arguments.get(name);
    let text = |name: &str| arg(name).and_then(Value::as_str).unwrap_or("");
    match method {
        "ping" => ok("pong"),
        "stats" => Some(stats(shared)),
        "active" => Some(json!(shared
            .tracker
            .active(hostname, arg("safe").and_then(Value::as_bool).unwrap_or(false)))),
        "reserved" => Some(json!(shared.tracker.reserved(hostname))),
        "scheduled" => Some(json!(shared.tracker.scheduled(hostname))),
        "revoked" => Some(json!(shared.revoked.list())),
        "registered" | "dump_tasks" => Some(registered(shared, arg("taskinfoitems"))),
        "active_queues" => Some(Value::Array(shared.queues().iter().map(|q| queue_info(q)).collect())),
        "query_task" => Some(Value::Object(shared.tracker.query(&ids(arg("ids")), hostname))),
        "clock" => Some(json!({ "clock": shared.clock.now() })),
        "hello" if text("from_node") == hostname => None,
        "hello" => Some(json!({ "revoked": shared.revoked.list(), "clock": shared.clock.forward() })),
        "report" => ok(report(shared)),
        "conf" => Some(conf(shared)),
        "heartbeat" => {
            events::heartbeat(shared, "worker-heartbeat", 5.0).await;
            Some(Value::Null)
        }
        "memsample" | "memdump" => Some(Value::Null),
        "enable_events" => match shared.events.set_task_events(true) {
            true => ok("task events enabled"),
            false => ok("task events already enabled"),
        },
        "disable_events" => match shared.events.set_task_events(false) {
            true => ok("task events disabled"),
            false => ok("task events already disabled"),
        },
        "shutdown" => {
            tracing::warn!("remote control: shutdown requested");
            shared.stop.send_replace(true);
            None
        }
        "revoke" => revoke(
            shared,
            &ids(arg("task_id")),
            arg("terminate").and_then(Value::as_bool).unwrap_or(false),
        ),
        "rate_limit" => rate_limit(shared, text("task_name"), arg("rate_limit")),
        "time_limit" => {
            let task = text("task_name");
            if shared.runtime.registry.lookup(task).is_none() {
                tracing::error!(task, "time limit change for an unknown task");
                return error("unknown task");
            }
            let limit = |name: &str| arg(name).and_then(Value::as_f64).filter(|v| *v > 0.0).and_then(seconds);
            shared.overrides.set_time_limits(task, limit("hard"), limit("soft"));
            tracing::info!(task, hard = ?limit("hard"), soft = ?limit("soft"), "new time limits");
            ok("time limits set successfully")
        }
        "pool_grow" | "pool_shrink" => {
            let n = arg("n").and_then(Value::as_u64).unwrap_or(1) as usize;
            if method == "pool_grow" {
                shared.grow(n);
                ok("pool will grow")
            } else {
                shared.shrink(n);
                ok("pool will shrink")
            }
        }
        "add_consumer" => {
            let queue = text("queue");
            if queue.is_empty() {
                return error("add_consumer needs a queue");
            }
            match shared.add_queue(queue).await {
                Ok(true) => ok(format!("add consumer {queue}")),
                Ok(false) => ok(format!("already consuming from {queue:?}")),
                Err(err) => error(format!("cannot consume from {queue}: {err}")),
            }
        }
        "cancel_consumer" => {
            let queue = text("queue");
            match shared.cancel_queue(queue).await {
                Ok(_) => ok(format!("no longer consuming from {queue}")),
                Err(err) => error(format!("cannot stop consuming from {queue}: {err}")),
            }
        }
        "autoscale" => {
            error("autoscale is not supported: Celeriac's pool has a fixed size (use pool_grow / pool_shrink)")
        }
        "pool_restart" => error("pool_restart is not needed: Celeriac reloads a plugin when its .wasm file changes"),
        other => error(format!("KeyError('{other}')")),
    }
}

/// `revoke`: remember the ids (checked when a task arrives and before it starts) and,
/// with `terminate`, stop those running here.
fn revoke(shared: &Shared, ids: &[String], terminate: bool) -> Option<Value> {
    shared.revoked.add_all(ids);
    if terminate {
        let terminated: Vec<&str> = ids
            .iter()
            .filter(|id| shared.tracker.terminate(id))
            .map(String::as_str)
            .collect();
        if terminated.is_empty() {
            return ok("terminate: tasks unknown");
        }
        tracing::info!(tasks = ?terminated, "terminating");
        return ok(format!("terminate: {}", terminated.join(", ")));
    }
    let quoted: Vec<String> = ids.iter().map(|id| format!("'{id}'")).collect();
    tracing::info!(tasks = ?ids, "tasks flagged as revoked");
    ok(format!("tasks {{{}}} flagged as revoked", quoted.join(", ")))
}

fn rate_limit(shared: &Shared, task: &str, rate: Option<&Value>) -> Option<Value> {
    let text = match rate {
        Some(Value::String(text)) => text.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => "0".to_owned(),
    };
    let per_second = match parse_rate(&text) {
        Ok(per_second) => per_second,
        Err(err) => return error(format!("Invalid rate limit string: {err}")),
    };
    if shared.runtime.registry.lookup(task).is_none() {
        tracing::error!(task, "rate limit change for an unknown task");
        return error("unknown task");
    }
    shared.overrides.set_rate_limit(task, per_second);
    tracing::info!(task, rate = %text, "new rate limit");
    match per_second {
        None => ok("rate limit disabled successfully"),
        Some(_) => ok("new rate limit set successfully"),
    }
}

/// `registered`: task names, each followed by the asked-for attributes that are set
/// (`math.add [rate_limit=10/s]`).
fn registered(shared: &Shared, items: Option<&Value>) -> Value {
    let items: Vec<&str> = items
        .and_then(Value::as_array)
        .map(|items| items.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let names = shared.runtime.registry.task_names();
    let described = names.into_iter().map(|name| {
        let Some(plugin) = shared.runtime.registry.lookup(&name) else {
            return name;
        };
        let limits = &plugin.manifest.limits;
        let options = plugin.manifest.tasks.get(&name);
        let attributes: Vec<String> = items
            .iter()
            .filter_map(|item| {
                let value = match *item {
                    "rate_limit" => options.and_then(|o| o.rate_limit.clone()),
                    "time_limit" => limits.time_limit.map(|v| v.to_string()),
                    "soft_time_limit" => limits.soft_time_limit.map(|v| v.to_string()),
                    "max_retries" => options.and_then(|o| o.max_retries).map(|v| v.to_string()),
                    _ => None,
                }?;
                Some(format!("{item}={value}"))
            })
            .collect();
        if attributes.is_empty() {
            name
        } else {
            format!("{name} [{}]", attributes.join(" "))
        }
    });
    Value::Array(described.map(Value::from).collect())
}

/// A queue as kombu describes it in `active_queues`: Celery's default declaration.
fn queue_info(queue: &str) -> Value {
    json!({
        "name": queue,
        "exchange": {"name": queue, "type": "direct", "arguments": null, "durable": true,
                     "passive": false, "auto_delete": false, "delivery_mode": null, "no_declare": false},
        "routing_key": queue, "queue_arguments": null, "binding_arguments": null,
        "consumer_arguments": null, "durable": true, "exclusive": false, "auto_delete": false,
        "no_ack": false, "alias": null, "bindings": [], "no_declare": null, "expires": null,
        "message_ttl": null, "max_length": null, "max_length_bytes": null, "max_priority": null,
    })
}

/// `stats`, with the keys Flower's worker page reads.
fn stats(shared: &Shared) -> Value {
    let concurrency = shared.concurrency();
    json!({
        "total": shared.tracker.totals_json(),
        "pid": std::process::id(),
        "clock": shared.clock.now().to_string(),
        "uptime": shared.started.elapsed().as_secs(),
        "pool": {
            "implementation": "celeriac:WasmExecutors",
            "max-concurrency": concurrency,
            "processes": [std::process::id()],
            "max-tasks-per-child": "N/A",
            "put-guarded-by-semaphore": false,
            "timeouts": [0, 0],
            "writes": {"total": 0, "avg": "0.00%", "all": "", "raw": "", "strategy": "fair",
                       "inqueues": {"total": 0, "active": 0}},
        },
        "broker": broker_info(&shared.config.broker_url),
        "prefetch_count": if shared.broker.sends_ahead() {
            shared.window.get()
        } else {
            shared.gate.capacity()
        },
        "rusage": rusage(),
        "sw_ident": "celeriac",
        "sw_ver": env!("CARGO_PKG_VERSION"),
    })
}

/// kombu's `Connection.info()` for a broker URL, without the password.
fn broker_info(url: &str) -> Value {
    let Ok(parsed) = url::Url::parse(url) else {
        return json!({ "transport": url.split(':').next().unwrap_or("") });
    };
    let scheme = parsed.scheme();
    let transport = match scheme {
        "amqp" | "amqps" | "pyamqp" => "amqp",
        "redis" | "rediss" | "redis+socket" | "redis+unix" | "unix" => "redis",
        other => other,
    };
    let virtual_host = match transport {
        "amqp" => match parsed.path().trim_start_matches('/') {
            "" => "/".to_owned(),
            vhost => percent_encoding::percent_decode_str(vhost)
                .decode_utf8_lossy()
                .into_owned(),
        },
        _ => parsed.path().trim_start_matches('/').to_owned(),
    };
    json!({
        "hostname": parsed.host_str(),
        "userid": Some(parsed.username()).filter(|u| !u.is_empty()),
        "virtual_host": virtual_host,
        "port": parsed.port(),
        "insist": false,
        "ssl": matches!(scheme, "amqps" | "rediss"),
        "transport": transport,
        "connect_timeout": 4,
        "transport_options": {},
        "login_method": null,
        "uri_prefix": null,
        "heartbeat": 120.0,
        "failover_strategy": "round-robin",
        "alternates": [],
    })
}

/// `getrusage(RUSAGE_SELF)` as Python's `resource.getrusage` reports it.
fn rusage() -> Value {
    // SAFETY: getrusage only writes into the struct we pass.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return Value::from("N/A");
    }
    let time = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    json!({
        "utime": time(usage.ru_utime), "stime": time(usage.ru_stime),
        "maxrss": usage.ru_maxrss, "ixrss": usage.ru_ixrss, "idrss": usage.ru_idrss,
        "isrss": usage.ru_isrss, "minflt": usage.ru_minflt, "majflt": usage.ru_majflt,
        "nswap": usage.ru_nswap, "inblock": usage.ru_inblock, "oublock": usage.ru_oublock,
        "msgsnd": usage.ru_msgsnd, "msgrcv": usage.ru_msgrcv, "nsignals": usage.ru_nsignals,
        "nvcsw": usage.ru_nvcsw, "nivcsw": usage.ru_nivcsw,
    })
}

/// `conf`: the worker's settings under Celery's names (URLs without passwords).
fn conf(shared: &Shared) -> Value {
    let config = &shared.config;
    json!({
        "broker_url": redact(&config.broker_url),
        "result_backend": redact(&config.backend_url),
        "worker_concurrency": shared.concurrency(),
        "worker_prefetch_multiplier": config.prefetch_multiplier.unwrap_or(super::window::DEFAULT_PREFETCH_MULTIPLIER),
        "worker_send_task_events": shared.events.task_events_enabled(),
        "result_extended": config.result_extended,
        "task_queues": shared.queues(),
        "task_acks_late": true,
    })
}

/// `report`: what a bug report needs, as Celery's `bugreport`.
fn report(shared: &Shared) -> String {
    let mut lines = vec![
        format!("software -> celeriac:{} (wasmtime 48.0.8)", env!("CARGO_PKG_VERSION")),
        format!(
            "platform -> system:{} arch:{}",
            std::env::consts::OS,
            std::env::consts::ARCH
        ),
        format!("broker_url: {}", redact(&shared.config.broker_url)),
        format!("result_backend: {}", redact(&shared.config.backend_url)),
        format!("queues: {}", shared.queues().join(", ")),
        format!("concurrency: {}", shared.concurrency()),
    ];
    for plugin in shared.runtime.registry.plugins() {
        let tasks: Vec<&str> = plugin.tasks.iter().map(|t| t.name.as_str()).collect();
        lines.push(format!(
            "plugin {} (celeriac:task@{}, sha256 {}): {}",
            plugin.name,
            plugin.wit_version,
            &plugin.digest[..plugin.digest.len().min(12)],
            tasks.join(", ")
        ));
    }
    lines.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targeting_follows_kombu() {
        let everyone = json!({"method": "ping", "destination": null});
        assert!(addressed_to(&everyone, "w1@h"));
        let listed = json!({"destination": ["w1@h", "w2@h"]});
        assert!(addressed_to(&listed, "w2@h") && !addressed_to(&listed, "w3@h"));
        let glob = json!({"pattern": "w*@h", "matcher": "glob"});
        assert!(addressed_to(&glob, "w9@h") && !addressed_to(&glob, "x@h"));
        let pcre = json!({"pattern": "^w[12]@", "matcher": "pcre"});
        assert!(addressed_to(&pcre, "w1@h") && !addressed_to(&pcre, "w3@h"));
    }

    #[test]
    fn glob_handles_stars_and_marks() {
        assert!(glob_matches("*", ""));
        assert!(glob_matches("a?c*", "abcdef"));
        assert!(!glob_matches("a?c", "ac"));
    }

    #[test]
    fn broker_info_has_no_password() {
        let info = broker_info("amqp://guest:secret@127.0.0.1:5672/%2Ftest");
        assert_eq!(info["virtual_host"], "/test");
        assert_eq!(info["userid"], "guest");
        assert_eq!(info["transport"], "amqp");
        assert!(!info.to_string().contains("secret"));
        assert_eq!(broker_info("redis://127.0.0.1:6379/3")["virtual_host"], "3");
    }
}
