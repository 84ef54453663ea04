//! What a finished task sets off, as Celery's worker does it: the next step of its chain
//! and its `link` callbacks after a success, its `link_error` callbacks after a failure.
//!
//! Each is a signature dict from the message body (`{"task", "args", "kwargs", "options",
//! "immutable", "subtask_type"}`) turned into a task message. A chain travels reversed:
//! the next step is the last element, and it carries the rest as its own chain. The
//! result goes first in the next step's and the callbacks' arguments unless the signature
//! is immutable (`.si()`); an error callback gets the failed task's id, as Celery sends
//! it to an errback that is not a local Python function.

use serde_json::{Map, Value};

use crate::protocol::time::from_now;
use crate::protocol::{DeliveryInfo, TaskRequest};

/// Where unrouted follow-ups go, as Celery's `task_default_queue`.
const DEFAULT_QUEUE: &str = "celery";

/// A message to publish, and its queue.
pub struct FollowUp {
    pub queue: String,
    pub request: TaskRequest,
}

/// Why a step could not be sent; the caller logs it with the task's id.
#[derive(Debug, thiserror::Error)]
pub enum CanvasError {
    #[error("not a task signature: {0}")]
    Malformed(String),
    #[error("{0} signatures inside a chain or link are not supported yet")]
    Unsupported(String),
}

/// After `request` succeeded with `result`: its chain's next step, then its callbacks.
pub fn after_success(request: &TaskRequest, result: &Value) -> Vec<Result<FollowUp, CanvasError>> {
    let mut out = Vec::new();
    if let Some(Value::Array(chain)) = &request.embed.chain {
        let mut rest = chain.clone();
        if let Some(next) = rest.pop() {
            out.push(follow_up(request, &next, Some(result.clone())).map(|mut step| {
                step.request.embed.chain = (!rest.is_empty()).then_some(Value::Array(rest));
                step
            }));
        }
    }
    for callback in signatures(&request.embed.callbacks) {
        out.push(follow_up(request, callback, Some(result.clone())));
    }
    out
}

/// After `request` failed: its error callbacks, each given the failed task's id.
pub fn after_failure(request: &TaskRequest) -> Vec<Result<FollowUp, CanvasError>> {
    signatures(&request.embed.errbacks)
        .map(|errback| follow_up(request, errback, Some(Value::String(request.id.clone()))))
        .collect()
}

fn signatures(list: &Option<Value>) -> impl Iterator<Item = &Value> {
    list.as_ref().and_then(Value::as_array).into_iter().flatten()
}

/// The message for one signature, run as a child of `parent` with `first` prepended to
/// its arguments (unless it is immutable).
fn follow_up(parent: &TaskRequest, signature: &Value, first: Option<Value>) -> Result<FollowUp, CanvasError> {
    let malformed = || CanvasError::Malformed(crate::protocol::repr::repr(signature));
    let map = signature.as_object().ok_or_else(malformed)?;
    if let Some(kind) = map.get("subtask_type").and_then(Value::as_str) {
        return Err(CanvasError::Unsupported(kind.to_owned()));
    }
    let name = map.get("task").and_then(Value::as_str).ok_or_else(malformed)?;
    let mut args = match map.get("args") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(args)) => args.clone(),
        Some(_) => return Err(malformed()),
    };
    let kwargs = match map.get("kwargs") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(kwargs)) => kwargs.clone(),
        Some(_) => return Err(malformed()),
    };
    let immutable = map.get("immutable").and_then(Value::as_bool).unwrap_or(false);
    if let (false, Some(first)) = (immutable, first) {
        args.insert(0, first);
    }
    let empty = Map::new();
    let options = map.get("options").and_then(Value::as_object).unwrap_or(&empty);
    let text = |key: &str| options.get(key).and_then(Value::as_str).map(str::to_owned);
    let seconds = |key: &str| options.get(key).and_then(Value::as_f64);

    let mut request = TaskRequest::new(name, args, kwargs);
    if let Some(id) = text("task_id") {
        request.correlation_id = id.clone();
        request.id = id;
    }
    request.root_id = parent.root_id.clone();
    request.parent_id = Some(parent.id.clone());
    request.reply_to = text("reply_to");
    request.group = text("group_id");
    request.priority = options.get("priority").and_then(Value::as_u64).unwrap_or(0).min(255) as u8;
    request.time_limit = (seconds("time_limit"), seconds("soft_time_limit"));
    request.eta = seconds("countdown").and_then(from_now);
    request.expires = seconds("expires").and_then(from_now);
    request.embed.callbacks = options.get("link").filter(|v| !v.is_null()).cloned();
    request.embed.errbacks = options.get("link_error").filter(|v| !v.is_null()).cloned();
    let queue = text("queue")
        .or_else(|| text("routing_key"))
        .unwrap_or_else(|| DEFAULT_QUEUE.to_owned());
    request.delivery_info = DeliveryInfo {
        exchange: String::new(),
        routing_key: queue.clone(),
    };
    Ok(FollowUp { queue, request })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parent(embed: Value) -> TaskRequest {
        let mut request = TaskRequest::new("math.add", vec![json!(1), json!(1)], Map::new());
        request.root_id = "root".into();
        request.embed.chain = embed.get("chain").cloned();
        request.embed.callbacks = embed.get("callbacks").cloned();
        request.embed.errbacks = embed.get("errbacks").cloned();
        request
    }

    fn sig(task: &str, args: Value, options: Value) -> Value {
        json!({"task": task, "args": args, "kwargs": {}, "options": options, "subtask_type": null, "immutable": false})
    }

    #[test]
    fn the_next_chain_step_gets_the_result_and_the_rest_of_the_chain() {
        let last = sig("math.add", json!([100]), json!({"task_id": "t3"}));
        let next = sig(
            "math.add",
            json!([10]),
            json!({"task_id": "t2", "queue": "q2", "reply_to": "r"}),
        );
        let request = parent(json!({"chain": [last.clone(), next]}));
        let steps = after_success(&request, &json!(2));
        let step = steps.into_iter().next().unwrap().unwrap();
        assert_eq!(step.queue, "q2");
        let next = step.request;
        assert_eq!((next.id.as_str(), next.args.clone()), ("t2", vec![json!(2), json!(10)]));
        assert_eq!(next.root_id, "root");
        assert_eq!(next.parent_id.as_deref(), Some(request.id.as_str()));
        assert_eq!(next.reply_to.as_deref(), Some("r"));
        assert_eq!(next.delivery_info.routing_key, "q2");
        assert_eq!(next.embed.chain, Some(json!([last])));
    }

    #[test]
    fn immutable_callbacks_keep_their_args_and_errbacks_get_the_task_id() {
        let mut callback = sig("math.echo", json!(["x"]), json!({}));
        callback["immutable"] = json!(true);
        let request = parent(json!({"callbacks": [callback], "errbacks": [sig("math.echo", json!([]), json!({}))]}));
        let calls = after_success(&request, &json!(5));
        assert_eq!(calls.len(), 1);
        let call = calls.into_iter().next().unwrap().unwrap();
        assert_eq!((call.queue.as_str(), call.request.args), ("celery", vec![json!("x")]));
        let errback = after_failure(&request).into_iter().next().unwrap().unwrap();
        assert_eq!(errback.request.args, vec![json!(request.id)]);
    }

    #[test]
    fn groups_and_garbage_are_errors_not_panics() {
        let mut group = sig("celery.group", json!([]), json!({}));
        group["subtask_type"] = json!("group");
        let request = parent(json!({"callbacks": [group, 42, {"task": "x", "args": "no"}]}));
        let calls = after_success(&request, &json!(1));
        assert_eq!(calls.len(), 3);
        assert!(matches!(calls[0], Err(CanvasError::Unsupported(_))));
        assert!(calls[1..].iter().all(|c| matches!(c, Err(CanvasError::Malformed(_)))));
    }
}
