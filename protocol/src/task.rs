//! Celery task messages: decode protocol v2 (and v1, and v2 headers with a v1 body) into a
//! [`TaskRequest`], and encode a request as a v2 message exactly as a Celery client does.

use chrono::{DateTime, Utc};
use serde_json::{json, Map, Value};

use super::body::Body;
use super::envelope::{DeliveryInfo, Message, Properties};
use super::headers::Headers;
use super::repr::{repr, repr_args, write_python_layout};
use super::time::{parse_iso, to_iso};

/// Why a message could not be understood. The worker rejects such a message.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ProtocolError {
    #[error("malformed envelope: {0}")]
    Envelope(String),
    #[error("content type {0:?} is not accepted (only application/json)")]
    ContentType(String),
    #[error("compressed messages ({0}) are not supported")]
    Compression(String),
    #[error("body is not JSON: {0}")]
    Body(String),
    #[error("unknown message format: {0}")]
    Format(String),
}

/// `embed`, the third element of a v2 body: links and workflow steps.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Embed {
    pub callbacks: Option<Value>,
    pub errbacks: Option<Value>,
    pub chain: Option<Value>,
    pub chord: Option<Value>,
}

impl Embed {
    fn from_value(value: Option<&Value>) -> Embed {
        let field = |key: &str| value.and_then(|v| v.get(key)).filter(|v| !v.is_null()).cloned();
        Embed {
            callbacks: field("callbacks"),
            errbacks: field("errbacks"),
            chain: field("chain"),
            chord: field("chord"),
        }
    }

    fn to_value(&self) -> Value {
        json!({
            "callbacks": self.callbacks,
            "errbacks": self.errbacks,
            "chain": self.chain,
            "chord": self.chord,
        })
    }
}

/// One task to run, whatever protocol version and broker it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskRequest {
    pub id: String,
    pub name: String,
    pub args: Vec<Value>,
    pub kwargs: Map<String, Value>,
    pub embed: Embed,
    pub eta: Option<DateTime<Utc>>,
    pub expires: Option<DateTime<Utc>>,
    pub retries: u32,
    /// `(hard, soft)` seconds, in the order of Celery's `timelimit` header.
    pub time_limit: (Option<f64>, Option<f64>),
    pub root_id: String,
    pub parent_id: Option<String>,
    pub group: Option<String>,
    pub group_index: Option<u64>,
    pub origin: Option<String>,
    pub ignore_result: bool,
    pub reply_to: Option<String>,
    pub correlation_id: String,
    pub priority: u8,
    pub delivery_info: DeliveryInfo,
    /// Headers this host does not interpret, kept so a republished message carries them.
    pub extra_headers: Map<String, Value>,
}

/// The headers this host reads, found in one pass over a message's headers (a lookup
/// each would scan them again); the ones it does not know are kept as they came, so a
/// republished message carries them. A `task` header makes the message protocol v2.
#[derive(Default)]
struct V2Headers<'a> {
    compression: Option<&'a Value>,
    id: Option<&'a Value>,
    task: Option<&'a Value>,
    eta: Option<&'a Value>,
    expires: Option<&'a Value>,
    group: Option<&'a Value>,
    group_index: Option<&'a Value>,
    retries: Option<&'a Value>,
    timelimit: Option<&'a Value>,
    root_id: Option<&'a Value>,
    parent_id: Option<&'a Value>,
    origin: Option<&'a Value>,
    ignore_result: Option<&'a Value>,
    unknown: Map<String, Value>,
}

impl<'a> V2Headers<'a> {
    fn read(headers: &'a Headers) -> V2Headers<'a> {
        let mut found = V2Headers::default();
        for (name, value) in headers.iter() {
            let slot = match name {
                "compression" => &mut found.compression,
                "id" => &mut found.id,
                "task" => &mut found.task,
                "eta" => &mut found.eta,
                "expires" => &mut found.expires,
                "group" => &mut found.group,
                "group_index" => &mut found.group_index,
                "retries" => &mut found.retries,
                "timelimit" => &mut found.timelimit,
                "root_id" => &mut found.root_id,
                "parent_id" => &mut found.parent_id,
                "origin" => &mut found.origin,
                "ignore_result" => &mut found.ignore_result,
                // Celery's own, rebuilt by `encode` rather than read.
                "lang"
                | "shadow"
                | "argsrepr"
                | "kwargsrepr"
                | "replaced_task_nesting"
                | "stamped_headers"
                | "stamps" => continue,
                _ => {
                    found.unknown.insert(name.to_owned(), value.clone());
                    continue;
                }
            };
            *slot = Some(value);
        }
        found
    }
}

/// A header's value if it is a string.
fn text(value: Option<&Value>) -> Option<String> {
    value.and_then(Value::as_str).map(str::to_owned)
}

impl TaskRequest {
    /// A new request for `name`, as `send_task(name, args, kwargs)` would build it.
    pub fn new(name: &str, args: Vec<Value>, kwargs: Map<String, Value>) -> TaskRequest {
        let id = uuid::Uuid::new_v4().to_string();
        TaskRequest {
            root_id: id.clone(),
            correlation_id: id.clone(),
            id,
            name: name.to_owned(),
            args,
            kwargs,
            embed: Embed::default(),
            eta: None,
            expires: None,
            retries: 0,
            time_limit: (None, None),
            parent_id: None,
            group: None,
            group_index: None,
            origin: None,
            ignore_result: false,
            reply_to: None,
            priority: 0,
            delivery_info: DeliveryInfo::default(),
            extra_headers: Map::new(),
        }
    }

    /// Decode a message; v2 if it has a `task` header, else a v1 body.
    pub fn decode(message: &Message) -> Result<TaskRequest, ProtocolError> {
        let headers = V2Headers::read(&message.headers);
        if let Some(compression) = headers.compression.and_then(Value::as_str) {
            return Err(ProtocolError::Compression(compression.to_owned()));
        }
        if message.content_type != "application/json" {
            return Err(ProtocolError::ContentType(message.content_type.clone()));
        }
        let body: Body = serde_json::from_slice(&message.body).map_err(|e| ProtocolError::Body(e.to_string()))?;
        if headers.task.is_some() {
            decode_v2(message, headers, body)
        } else {
            decode_v1(message, body)
        }
    }

    /// Encode as a protocol v2 message with JSON body, the way Celery 5 publishes it.
    pub fn encode(&self) -> Message {
        let mut headers = Headers::new();
        headers.insert("lang", "py".into());
        headers.insert("task", self.name.clone().into());
        headers.insert("id", self.id.clone().into());
        headers.insert("shadow", Value::Null);
        headers.insert("eta", self.eta.map(to_iso).into());
        headers.insert("expires", self.expires.map(to_iso).into());
        headers.insert("group", self.group.clone().into());
        headers.insert("group_index", self.group_index.into());
        headers.insert("retries", self.retries.into());
        headers.insert("timelimit", json!([self.time_limit.0, self.time_limit.1]));
        headers.insert("root_id", self.root_id.clone().into());
        headers.insert("parent_id", self.parent_id.clone().into());
        headers.insert("argsrepr", repr_args(&self.args).into());
        headers.insert("kwargsrepr", repr(&Value::Object(self.kwargs.clone())).into());
        headers.insert("origin", self.origin.clone().unwrap_or_else(default_origin).into());
        headers.insert("ignore_result", self.ignore_result.into());
        headers.insert("replaced_task_nesting", 0.into());
        headers.insert("stamped_headers", Value::Null);
        headers.insert("stamps", json!({}));
        for (k, v) in &self.extra_headers {
            headers.insert_if_absent(k, || v.clone());
        }
        let body = json!([self.args, self.kwargs, self.embed.to_value()]);
        Message {
            body: python_json(&body).into_bytes(),
            content_type: "application/json".into(),
            content_encoding: "utf-8".into(),
            headers,
            properties: Properties {
                correlation_id: Some(self.correlation_id.clone()),
                reply_to: Some(self.reply_to.clone().unwrap_or_default()),
                delivery_mode: 2,
                priority: self.priority,
                delivery_info: self.delivery_info.clone(),
            },
        }
    }

    /// The queue this request arrived on (its routing key on the default exchange).
    pub fn queue(&self) -> &str {
        &self.delivery_info.routing_key
    }
}

fn default_origin() -> String {
    let host = gethostname::gethostname().to_string_lossy().into_owned();
    format!("gen{}@{host}", std::process::id())
}

/// JSON with Python's separators (`", "` and `": "`), as kombu writes message bodies.
pub fn python_json(value: &Value) -> String {
    let mut out = String::new();
    let scalar = |value: &Value, out: &mut String| out.push_str(&value.to_string());
    let key = |key: &str, out: &mut String| out.push_str(&Value::String(key.to_owned()).to_string());
    write_python_layout(value, &mut out, scalar, key);
    out
}

fn decode_v2(message: &Message, h: V2Headers<'_>, body: Body) -> Result<TaskRequest, ProtocolError> {
    let (args, kwargs, embed) = match body {
        Body::Parts { args, kwargs, embed } => (args, kwargs, embed),
        // A v2 header set with a v1-style body dict ("hybrid"), which Celery accepts.
        Body::Other(Value::Object(map)) => (
            map.get("args").cloned().unwrap_or(json!([])),
            map.get("kwargs").cloned().unwrap_or(json!({})),
            Embed::from_value(Some(&Value::Object(map))),
        ),
        Body::Array(length) => {
            return Err(ProtocolError::Format(format!(
                "body must be [args, kwargs, embed], got an array of {length}"
            )))
        }
        Body::Other(other) => return Err(ProtocolError::Format(format!("body must be an array, got {other}"))),
    };
    let id = text(h.id).ok_or_else(|| ProtocolError::Format("missing `id` header".into()))?;
    let name = text(h.task).ok_or_else(|| ProtocolError::Format("`task` header is not a string".into()))?;
    build(
        message,
        Fields {
            id: id.clone(),
            name,
            args,
            kwargs,
            embed,
            eta: h.eta,
            expires: h.expires,
            retries: h.retries,
            timelimit: h.timelimit,
            root_id: text(h.root_id).unwrap_or(id),
            parent_id: text(h.parent_id),
            group: text(h.group),
            group_index: h.group_index.and_then(Value::as_u64),
            origin: text(h.origin),
            ignore_result: h.ignore_result.and_then(Value::as_bool).unwrap_or(false),
            extra_headers: h.unknown,
        },
    )
}

fn decode_v1(message: &Message, body: Body) -> Result<TaskRequest, ProtocolError> {
    let Body::Other(Value::Object(map)) = body else {
        return Err(ProtocolError::Format(
            "no `task` header and the body is not a v1 task dict".into(),
        ));
    };
    let name = map
        .get("task")
        .and_then(Value::as_str)
        .ok_or_else(|| ProtocolError::Format("no `task` header and no `task` in the body".into()))?
        .to_owned();
    let id = map
        .get("id")
        .and_then(Value::as_str)
        .ok_or_else(|| ProtocolError::Format("v1 body has no `id`".into()))?
        .to_owned();
    let group = map
        .get("group")
        .or_else(|| map.get("taskset"))
        .and_then(Value::as_str)
        .map(str::to_owned);
    build(
        message,
        Fields {
            id: id.clone(),
            name,
            args: map.get("args").cloned().unwrap_or(json!([])),
            kwargs: map.get("kwargs").cloned().unwrap_or(json!({})),
            embed: Embed::from_value(Some(&Value::Object(map.clone()))),
            eta: map.get("eta"),
            expires: map.get("expires"),
            retries: map.get("retries"),
            timelimit: map.get("timelimit"),
            root_id: id,
            parent_id: None,
            group,
            group_index: map.get("group_index").and_then(Value::as_u64),
            origin: None,
            ignore_result: false,
            extra_headers: Map::new(),
        },
    )
}

/// The fields both protocol versions carry, before they are checked.
struct Fields<'a> {
    id: String,
    name: String,
    args: Value,
    kwargs: Value,
    embed: Embed,
    eta: Option<&'a Value>,
    expires: Option<&'a Value>,
    retries: Option<&'a Value>,
    timelimit: Option<&'a Value>,
    root_id: String,
    parent_id: Option<String>,
    group: Option<String>,
    group_index: Option<u64>,
    origin: Option<String>,
    ignore_result: bool,
    extra_headers: Map<String, Value>,
}

fn build(message: &Message, f: Fields<'_>) -> Result<TaskRequest, ProtocolError> {
    let Value::Array(args) = f.args else {
        return Err(ProtocolError::Format(format!("args must be a list, got {}", f.args)));
    };
    let kwargs = match f.kwargs {
        Value::Object(map) => map,
        Value::Null => Map::new(),
        other => return Err(ProtocolError::Format(format!("kwargs must be a dict, got {other}"))),
    };
    if f.id.is_empty() || f.name.is_empty() {
        return Err(ProtocolError::Format("empty task id or name".into()));
    }
    let time_limit = match f.timelimit {
        Some(Value::Array(pair)) => (
            pair.first().and_then(Value::as_f64),
            pair.get(1).and_then(Value::as_f64),
        ),
        _ => (None, None),
    };
    Ok(TaskRequest {
        correlation_id: message
            .properties
            .correlation_id
            .clone()
            .unwrap_or_else(|| f.id.clone()),
        id: f.id,
        name: f.name,
        args,
        kwargs,
        embed: f.embed,
        eta: datetime(f.eta, "eta")?,
        expires: datetime(f.expires, "expires")?,
        retries: f.retries.and_then(Value::as_u64).unwrap_or(0).min(u32::MAX as u64) as u32,
        time_limit,
        root_id: f.root_id,
        parent_id: f.parent_id,
        group: f.group,
        group_index: f.group_index,
        origin: f.origin,
        ignore_result: f.ignore_result,
        reply_to: message.properties.reply_to.clone(),
        priority: message.properties.priority,
        delivery_info: message.properties.delivery_info.clone(),
        extra_headers: f.extra_headers,
    })
}

fn datetime(value: Option<&Value>, what: &str) -> Result<Option<DateTime<Utc>>, ProtocolError> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => parse_iso(s)
            .map(Some)
            .ok_or_else(|| ProtocolError::Format(format!("`{what}` is not an ISO 8601 datetime: {s:?}"))),
        Some(other) => Err(ProtocolError::Format(format!("`{what}` must be a string, got {other}"))),
    }
}
