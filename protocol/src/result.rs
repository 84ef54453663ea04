//! Task results as Celery stores them: states, the result meta dict and exceptions.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{json, Map, Value};

use super::time::{parse_iso, to_iso};

/// A task state, with Celery's spelling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    Pending,
    Received,
    Started,
    Retry,
    Success,
    Failure,
    Revoked,
    Rejected,
    /// A state reported by a task itself through `update-state`, e.g. `PROGRESS`.
    Custom(String),
}

impl State {
    pub fn as_str(&self) -> &str {
        match self {
            State::Pending => "PENDING",
            State::Received => "RECEIVED",
            State::Started => "STARTED",
            State::Retry => "RETRY",
            State::Success => "SUCCESS",
            State::Failure => "FAILURE",
            State::Revoked => "REVOKED",
            State::Rejected => "REJECTED",
            State::Custom(s) => s,
        }
    }

    pub fn parse(text: &str) -> State {
        match text {
            "PENDING" => State::Pending,
            "RECEIVED" => State::Received,
            "STARTED" => State::Started,
            "RETRY" => State::Retry,
            "SUCCESS" => State::Success,
            "FAILURE" => State::Failure,
            "REVOKED" => State::Revoked,
            "REJECTED" => State::Rejected,
            other => State::Custom(other.to_owned()),
        }
    }

    /// SUCCESS, FAILURE and REVOKED: the states `AsyncResult.get()` returns on.
    pub fn is_ready(&self) -> bool {
        matches!(self, State::Success | State::Failure | State::Revoked)
    }

    /// States whose `result` holds an exception.
    pub fn carries_exception(&self) -> bool {
        matches!(self, State::Failure | State::Revoked | State::Retry)
    }
}

/// An exception as Celery's JSON serializer encodes it.
#[derive(Debug, Clone, PartialEq)]
pub struct ExceptionInfo {
    pub exc_type: String,
    pub exc_module: String,
    pub exc_message: Vec<Value>,
}

impl ExceptionInfo {
    pub fn new(exc_type: &str, exc_module: &str, message: impl Into<String>) -> ExceptionInfo {
        ExceptionInfo {
            exc_type: exc_type.to_owned(),
            exc_module: exc_module.to_owned(),
            exc_message: vec![Value::String(message.into())],
        }
    }

    pub fn to_value(&self) -> Value {
        json!({
            "exc_type": self.exc_type,
            "exc_message": self.exc_message,
            "exc_module": self.exc_module,
        })
    }

    pub fn from_value(value: &Value) -> Option<ExceptionInfo> {
        let exc_type = value.get("exc_type")?.as_str()?.to_owned();
        let exc_module = value
            .get("exc_module")
            .and_then(Value::as_str)
            .unwrap_or("builtins")
            .to_owned();
        let exc_message = match value.get("exc_message") {
            Some(Value::Array(items)) => items.clone(),
            Some(other) => vec![other.clone()],
            None => Vec::new(),
        };
        Some(ExceptionInfo {
            exc_type,
            exc_module,
            exc_message,
        })
    }

    /// `ZeroDivisionError('division by zero')`, as Python prints it.
    pub fn repr(&self) -> String {
        let args: Vec<String> = self.exc_message.iter().map(super::repr::repr).collect();
        format!("{}({})", self.exc_type, args.join(", "))
    }
}

/// `result_extended` fields.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Extended {
    pub name: String,
    pub args: Vec<Value>,
    pub kwargs: Map<String, Value>,
    pub worker: String,
    pub retries: u32,
    pub queue: String,
    /// What running the task used (`{"runtime", "cpu_time", "peak_memory"}`), beyond
    /// Celery's fields; stored as `usage` where the meta is a free-form dict.
    pub usage: Option<Value>,
}

/// The result meta dict as Celery writes it, key for key.
#[derive(Serialize)]
struct Meta<'a> {
    status: &'a str,
    result: &'a Value,
    traceback: Option<&'a str>,
    children: &'a [Value],
    date_done: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    group_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    parent_id: Option<&'a str>,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    extended: Option<ExtendedMeta<'a>>,
    task_id: &'a str,
}

/// `result_extended`'s keys.
#[derive(Serialize)]
struct ExtendedMeta<'a> {
    name: &'a str,
    args: &'a [Value],
    kwargs: &'a Map<String, Value>,
    worker: &'a str,
    retries: u32,
    queue: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<&'a Value>,
}

/// One stored task state: what every result backend writes and reads.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskResult {
    pub task_id: String,
    pub state: State,
    /// The return value; for FAILURE / REVOKED / RETRY the exception dict.
    pub result: Value,
    pub traceback: Option<String>,
    pub date_done: Option<DateTime<Utc>>,
    pub children: Vec<Value>,
    pub parent_id: Option<String>,
    pub group_id: Option<String>,
    /// Boxed: most results have none, and a result is moved through several futures.
    pub extended: Option<Box<Extended>>,
    /// Where the sender waits for this result (the `rpc://` backend's reply queue).
    pub reply_to: Option<ReplyTo>,
}

/// A task's `reply_to` queue and `correlation_id`, for backends that answer by message.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplyTo {
    pub queue: String,
    pub correlation_id: String,
}

impl TaskResult {
    pub fn new(task_id: &str, state: State, result: Value) -> TaskResult {
        TaskResult {
            task_id: task_id.to_owned(),
            date_done: state.is_ready().then(Utc::now),
            state,
            result,
            traceback: None,
            children: Vec::new(),
            parent_id: None,
            group_id: None,
            extended: None,
            reply_to: None,
        }
    }

    pub fn failure(task_id: &str, exc: &ExceptionInfo, traceback: Option<String>) -> TaskResult {
        let mut result = TaskResult::new(task_id, State::Failure, exc.to_value());
        result.traceback = traceback;
        result
    }

    /// The exception held by a FAILURE / REVOKED / RETRY result.
    pub fn exception(&self) -> Option<ExceptionInfo> {
        if self.state.carries_exception() {
            ExceptionInfo::from_value(&self.result)
        } else {
            None
        }
    }

    /// Celery's result meta dict (Redis, RPC and other key/value backends).
    pub fn to_meta(&self) -> Value {
        // Serializing these borrowed fields cannot fail.
        serde_json::to_value(self.meta()).unwrap_or(Value::Null)
    }

    /// [`TaskResult::to_meta`] as JSON text, written straight from the fields (a result
    /// store does this for every task; going through a `Value` cost a copy of each field).
    pub fn meta_json(&self) -> String {
        serde_json::to_string(&self.meta()).unwrap_or_default()
    }

    /// The meta dict's fields, in Celery's order.
    fn meta(&self) -> Meta<'_> {
        Meta {
            status: self.state.as_str(),
            result: &self.result,
            traceback: self.traceback.as_deref(),
            children: &self.children,
            date_done: self.date_done.map(to_iso),
            group_id: self.group_id.as_deref(),
            parent_id: self.parent_id.as_deref(),
            extended: self.extended.as_ref().map(|ext| ExtendedMeta {
                name: &ext.name,
                args: &ext.args,
                kwargs: &ext.kwargs,
                worker: &ext.worker,
                retries: ext.retries,
                queue: &ext.queue,
                usage: ext.usage.as_ref(),
            }),
            task_id: &self.task_id,
        }
    }

    /// Read a meta dict back.
    pub fn from_meta(meta: &Value) -> Option<TaskResult> {
        Some(TaskResult {
            task_id: meta.get("task_id")?.as_str()?.to_owned(),
            state: State::parse(meta.get("status")?.as_str()?),
            result: meta.get("result").cloned().unwrap_or(Value::Null),
            traceback: meta.get("traceback").and_then(Value::as_str).map(str::to_owned),
            date_done: meta.get("date_done").and_then(Value::as_str).and_then(parse_iso),
            children: meta
                .get("children")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default(),
            parent_id: meta.get("parent_id").and_then(Value::as_str).map(str::to_owned),
            group_id: meta.get("group_id").and_then(Value::as_str).map(str::to_owned),
            extended: None,
            reply_to: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meta_round_trips_and_has_celery_keys() {
        let exc = ExceptionInfo::new("ZeroDivisionError", "builtins", "division by zero");
        let result = TaskResult::failure("abc", &exc, Some("tb".into()));
        let meta = result.to_meta();
        for key in ["status", "result", "traceback", "children", "date_done", "task_id"] {
            assert!(meta.get(key).is_some(), "missing {key}");
        }
        assert_eq!(meta["result"]["exc_module"], "builtins");
        let back = TaskResult::from_meta(&meta).unwrap();
        assert_eq!(back.exception().unwrap(), exc);
        assert_eq!(exc.repr(), "ZeroDivisionError('division by zero')");
    }

    #[test]
    fn meta_json_is_celerys_dict_key_for_key() {
        let mut result = TaskResult::new("abc", State::Success, json!(5));
        result.date_done = None;
        assert_eq!(
            result.meta_json(),
            r#"{"status":"SUCCESS","result":5,"traceback":null,"children":[],"date_done":null,"task_id":"abc"}"#
        );
        result.group_id = Some("g".into());
        result.parent_id = Some("p".into());
        result.extended = Some(Box::new(Extended {
            name: "math.add".into(),
            args: vec![json!(2), json!(3)],
            kwargs: Map::new(),
            worker: "w@h".into(),
            retries: 1,
            queue: "celery".into(),
            usage: Some(json!({"runtime": 0.5})),
        }));
        assert_eq!(
            result.meta_json(),
            concat!(
                r#"{"status":"SUCCESS","result":5,"traceback":null,"children":[],"date_done":null,"#,
                r#""group_id":"g","parent_id":"p","name":"math.add","args":[2,3],"kwargs":{},"worker":"w@h","#,
                r#""retries":1,"queue":"celery","usage":{"runtime":0.5},"task_id":"abc"}"#
            )
        );
        assert_eq!(result.to_meta().to_string(), result.meta_json());
    }
}
