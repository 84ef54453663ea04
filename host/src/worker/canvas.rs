//! What a finished task sets off, as Celery's worker does it: the next step of its chain
//! and its `link` callbacks after a success, its `link_error` callbacks after a failure,
//! and a chord's body once its header is complete.
//!
//! Each is a signature dict from the message body (`{"task", "args", "kwargs", "options",
//! "immutable", "subtask_type"}`) turned into task messages. A plain signature is one
//! message; `celery.chain` (`kwargs.tasks`, in running order) becomes its first task
//! carrying the rest; `celery.group` (`kwargs.tasks`) one message per member sharing the
//! group id; `celery.chord` (`kwargs.header`, `kwargs.body`) its header tasks, each
//! carrying the body, after the chord is registered with the result backend. A chain
//! travels reversed in a message: the next step is the last element. The result goes
//! first in the next step's and the callbacks' arguments unless the signature is
//! immutable (`.si()`); an error callback gets the failed task's id, as Celery sends it
//! to an errback that is not a local Python function.

use serde_json::{Map, Value};

use crate::protocol::time::from_now;
use crate::protocol::TaskRequest;

/// Where unrouted follow-ups go, as Celery's `task_default_queue`.
pub const DEFAULT_QUEUE: &str = "celery";

/// What a finished task sets off, in the order it must happen.
pub enum Step {
    /// A task message to publish.
    Publish(FollowUp),
    /// A chord about to be started: register its size (or its unlock task) before its
    /// header tasks, which follow as `Publish` steps, can finish.
    StartChord(ChordStart),
}

/// A message to publish, and the queue its signature names, if it names one (else the
/// task's own queue from its plugin's manifest, else `DEFAULT_QUEUE`).
pub struct FollowUp {
    pub queue: Option<String>,
    pub request: TaskRequest,
}

/// A chord the worker starts itself (a chord inside a chain, or a chain step made of a
/// group followed by a task, which Celery's client turns into one).
pub struct ChordStart {
    pub group_id: String,
    /// The header tasks' ids, in order.
    pub header: Vec<String>,
    /// The body signature, run with the list of header results.
    pub body: Value,
    /// The task that started the chord, for the unlock task's lineage.
    pub parent: TaskRequest,
}

/// Why a step could not be sent; the caller logs it with the task's id.
#[derive(Debug, thiserror::Error)]
pub enum CanvasError {
    #[error("not a task signature: {0}")]
    Malformed(String),
    #[error("{0}")]
    Unsupported(String),
}

pub type Steps = Vec<Result<Step, CanvasError>>;

/// After `request` succeeded with `result`: its chain's next step, then its callbacks.
pub fn after_success(request: &TaskRequest, result: &Value) -> Steps {
    let mut out = Vec::new();
    if let Some(Value::Array(chain)) = &request.embed.chain {
        let mut rest = chain.clone();
        if let Some(next) = rest.pop() {
            out.extend(apply(request, &next, Some(result), rest));
        }
    }
    for callback in signatures(&request.embed.callbacks) {
        out.extend(apply(request, callback, Some(result), Vec::new()));
    }
    out
}

/// After `request` failed: its error callbacks, each given the failed task's id.
pub fn after_failure(request: &TaskRequest) -> Steps {
    let id = Value::String(request.id.clone());
    signatures(&request.embed.errbacks)
        .flat_map(|errback| apply(request, errback, Some(&id), Vec::new()))
        .collect()
}

/// A chord's body, run as a child of the header task that completed it, with the list
/// of header results as its first argument.
pub fn chord_body(last_header: &TaskRequest, body: &Value, results: Vec<Value>) -> Steps {
    apply(last_header, body, Some(&Value::Array(results)), Vec::new())
}

/// A chord whose header failed: the body's id, where its failure is stored, and the
/// body's error callbacks, each given that id.
pub fn failed_body(last_header: &TaskRequest, body: &Value) -> (Option<String>, Steps) {
    let options = body.get("options");
    let body_id = options
        .and_then(|o| o.get("task_id"))
        .and_then(Value::as_str)
        .map(str::to_owned);
    let failed = Value::String(body_id.clone().unwrap_or_default());
    let errbacks = options.and_then(|o| o.get("link_error")).cloned();
    let steps = signatures(&errbacks)
        .flat_map(|errback| apply(last_header, errback, Some(&failed), Vec::new()))
        .collect();
    (body_id, steps)
}

fn signatures(list: &Option<Value>) -> impl Iterator<Item = &Value> {
    list.as_ref().and_then(Value::as_array).into_iter().flatten()
}

/// The messages for one signature of any kind, run as a child of `parent` with `first`
/// prepended to its arguments (unless immutable) and `chain` (message order) to follow.
fn apply(parent: &TaskRequest, signature: &Value, first: Option<&Value>, chain: Vec<Value>) -> Steps {
    let kind = signature.get("subtask_type").and_then(Value::as_str);
    let result = match kind {
        None => plain(parent, signature, first, chain).map(|step| vec![Ok(Step::Publish(step))]),
        Some("chain") => return apply_chain(parent, signature, first, chain),
        Some("group") if chain.is_empty() => group(parent, signature, first),
        Some("group") => Err(CanvasError::Unsupported(
            "a group followed by more steps (Celery's client makes that a chord)".into(),
        )),
        Some("chord") => chord(parent, signature, first, chain),
        Some(other) => Err(CanvasError::Unsupported(format!(
            "{other} signatures are not supported"
        ))),
    };
    result.unwrap_or_else(|err| vec![Err(err)])
}

/// `celery.chain`: its first task runs now and carries the others, then `chain`.
fn apply_chain(parent: &TaskRequest, signature: &Value, first: Option<&Value>, mut chain: Vec<Value>) -> Steps {
    let tasks = match member_list(signature, "tasks") {
        Ok(tasks) => tasks,
        Err(err) => return vec![Err(err)],
    };
    let Some((head, rest)) = tasks.split_first() else {
        return Vec::new();
    };
    chain.extend(rest.iter().rev().cloned());
    apply(parent, head, immutable_or(signature, first), chain)
}

/// `celery.group`: every member gets the group's id, its index and the same arguments.
fn group(
    parent: &TaskRequest,
    signature: &Value,
    first: Option<&Value>,
) -> Result<Vec<Result<Step, CanvasError>>, CanvasError> {
    let group_id = group_id(signature);
    let first = immutable_or(signature, first);
    members(signature, &group_id, None)?
        .iter()
        .map(|member| plain(parent, member, first, Vec::new()).map(|step| Ok(Step::Publish(step))))
        .collect()
}

/// `celery.chord`: the header tasks, each carrying the body, after a `StartChord`. What
/// was to follow the chord follows its body.
fn chord(
    parent: &TaskRequest,
    signature: &Value,
    first: Option<&Value>,
    chain: Vec<Value>,
) -> Result<Vec<Result<Step, CanvasError>>, CanvasError> {
    let malformed = || CanvasError::Malformed(crate::protocol::repr::repr(signature));
    let kwargs = signature.get("kwargs").ok_or_else(malformed)?;
    let header = kwargs.get("header").ok_or_else(malformed)?;
    let mut body = kwargs
        .get("body")
        .filter(|b| b.is_object())
        .ok_or_else(malformed)?
        .clone();
    let body_options = options_mut(&mut body).ok_or_else(malformed)?;
    if !chain.is_empty() {
        body_options.insert("chain".into(), Value::Array(chain));
    }
    // The size travels with the body for backends that keep no count of their own (rpc).
    body_options.insert("chord_size".into(), header_len(header).into());
    let group_id = header
        .get("options")
        .and_then(|o| o.get("task_id"))
        .and_then(Value::as_str)
        .map_or_else(|| group_id(signature), str::to_owned);
    let first = immutable_or(signature, first);
    let header = members(header, &group_id, Some(&body))?
        .iter()
        .map(|member| plain(parent, member, first, Vec::new()))
        .collect::<Result<Vec<_>, _>>()?;
    let start = ChordStart {
        group_id,
        header: header.iter().map(|step| step.request.id.clone()).collect(),
        body,
        parent: parent.clone(),
    };
    Ok(std::iter::once(Step::StartChord(start))
        .chain(header.into_iter().map(Step::Publish))
        .map(Ok)
        .collect())
}

/// A signature's `options`, made an object if it is missing or is something else.
fn options_mut(signature: &mut Value) -> Option<&mut Map<String, Value>> {
    let options = signature
        .as_object_mut()?
        .entry("options")
        .or_insert_with(|| Value::Object(Map::new()));
    if !options.is_object() {
        *options = Value::Object(Map::new());
    }
    options.as_object_mut()
}

/// How many tasks a chord header has.
fn header_len(header: &Value) -> usize {
    match header {
        Value::Array(tasks) => tasks.len(),
        _ => header["kwargs"]["tasks"].as_array().map_or(0, Vec::len),
    }
}

/// A group's id: its own frozen `task_id`, else a new one.
fn group_id(signature: &Value) -> String {
    let options = signature.get("options");
    options
        .and_then(|o| o.get("task_id").or_else(|| o.get("group_id")))
        .and_then(Value::as_str)
        .map_or_else(|| uuid::Uuid::new_v4().to_string(), str::to_owned)
}

/// A group's member signatures with `group_id`, `group_index` and (for a chord header)
/// `chord` set in their options. Members must be plain tasks.
fn members(group: &Value, group_id: &str, chord: Option<&Value>) -> Result<Vec<Value>, CanvasError> {
    let mut tasks = match group {
        // A chord header may be a bare list of signatures.
        Value::Array(tasks) => tasks.clone(),
        _ => member_list(group, "tasks")?,
    };
    for (index, task) in tasks.iter_mut().enumerate() {
        if task.get("subtask_type").is_some_and(|kind| !kind.is_null()) {
            return Err(CanvasError::Unsupported(
                "groups and chords whose members are not plain tasks are not supported".into(),
            ));
        }
        let options = options_mut(task).ok_or_else(|| CanvasError::Malformed(crate::protocol::repr::repr(group)))?;
        options.insert("group_id".into(), Value::String(group_id.to_owned()));
        if options.get("group_index").is_none_or(Value::is_null) {
            options.insert("group_index".into(), index.into());
        }
        if let Some(chord) = chord {
            options.insert("chord".into(), chord.clone());
        }
    }
    Ok(tasks)
}

/// `kwargs[key]` of a chain or group signature: a list of signatures.
fn member_list(signature: &Value, key: &str) -> Result<Vec<Value>, CanvasError> {
    match signature.get("kwargs").and_then(|k| k.get(key)) {
        Some(Value::Array(tasks)) => Ok(tasks.clone()),
        _ => Err(CanvasError::Malformed(crate::protocol::repr::repr(signature))),
    }
}

/// No arguments are passed into an immutable chain, group or chord.
fn immutable_or<'a>(signature: &Value, first: Option<&'a Value>) -> Option<&'a Value> {
    let immutable = signature.get("immutable").and_then(Value::as_bool).unwrap_or(false);
    first.filter(|_| !immutable)
}

/// The message for one plain task signature.
fn plain(
    parent: &TaskRequest,
    signature: &Value,
    first: Option<&Value>,
    chain: Vec<Value>,
) -> Result<FollowUp, CanvasError> {
    let malformed = || CanvasError::Malformed(crate::protocol::repr::repr(signature));
    let map = signature.as_object().ok_or_else(malformed)?;
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
    if let Some(first) = immutable_or(signature, first) {
        args.insert(0, first.clone());
    }
    let empty = Map::new();
    let options = map.get("options").and_then(Value::as_object).unwrap_or(&empty);
    let text = |key: &str| options.get(key).and_then(Value::as_str).map(str::to_owned);
    let seconds = |key: &str| options.get(key).and_then(Value::as_f64);
    let present = |key: &str| options.get(key).filter(|v| !v.is_null()).cloned();

    let mut request = TaskRequest::new(name, args, kwargs);
    if let Some(id) = text("task_id") {
        request.correlation_id = id.clone();
        request.id = id;
    }
    request.root_id = parent.root_id.clone();
    request.parent_id = Some(parent.id.clone());
    request.reply_to = text("reply_to");
    request.group = text("group_id");
    request.group_index = options.get("group_index").and_then(Value::as_u64);
    request.priority = options.get("priority").and_then(Value::as_u64).unwrap_or(0).min(255) as u8;
    request.time_limit = (seconds("time_limit"), seconds("soft_time_limit"));
    request.eta = seconds("countdown").and_then(from_now);
    request.expires = seconds("expires").and_then(from_now);
    request.embed.callbacks = present("link");
    request.embed.errbacks = present("link_error");
    request.embed.chord = present("chord");
    // What follows: the chain handed down, else one the signature carries (a chord's
    // body keeps what came after the chord in its `chain` option).
    request.embed.chain = if chain.is_empty() {
        present("chain")
    } else {
        Some(Value::Array(chain))
    };
    let queue = text("queue").or_else(|| text("routing_key"));
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

    fn published(steps: Steps) -> Vec<FollowUp> {
        steps
            .into_iter()
            .filter_map(|step| match step.unwrap() {
                Step::Publish(follow_up) => Some(follow_up),
                Step::StartChord(_) => None,
            })
            .collect()
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
        let step = published(after_success(&request, &json!(2))).remove(0);
        assert_eq!(step.queue.as_deref(), Some("q2"));
        let next = step.request;
        assert_eq!((next.id.as_str(), next.args.clone()), ("t2", vec![json!(2), json!(10)]));
        assert_eq!(next.root_id, "root");
        assert_eq!(next.parent_id.as_deref(), Some(request.id.as_str()));
        assert_eq!(next.reply_to.as_deref(), Some("r"));
        assert_eq!(next.embed.chain, Some(json!([last])));
    }

    #[test]
    fn immutable_callbacks_keep_their_args_and_errbacks_get_the_task_id() {
        let mut callback = sig("math.echo", json!(["x"]), json!({}));
        callback["immutable"] = json!(true);
        let request = parent(json!({"callbacks": [callback], "errbacks": [sig("math.echo", json!([]), json!({}))]}));
        let calls = published(after_success(&request, &json!(5)));
        assert_eq!(calls.len(), 1);
        assert_eq!(
            (calls[0].queue.as_deref(), calls[0].request.args.clone()),
            (None, vec![json!("x")])
        );
        let errback = published(after_failure(&request)).remove(0);
        assert_eq!(errback.request.args, vec![json!(request.id)]);
    }

    #[test]
    fn a_group_step_sends_every_member_with_the_group_id_and_its_index() {
        let group = json!({"task": "celery.group", "subtask_type": "group", "args": [], "options": {"task_id": "g1"},
            "kwargs": {"tasks": [sig("math.add", json!([1]), json!({"task_id": "a"})), sig("math.add", json!([2]), json!({"task_id": "b"}))]}});
        let members = published(after_success(&parent(json!({"chain": [group]})), &json!(2)));
        let seen: Vec<_> = members
            .iter()
            .map(|m| {
                (
                    m.request.id.as_str(),
                    m.request.group.as_deref(),
                    m.request.group_index,
                    m.request.args.clone(),
                )
            })
            .collect();
        assert_eq!(
            seen,
            vec![
                ("a", Some("g1"), Some(0), vec![json!(2), json!(1)]),
                ("b", Some("g1"), Some(1), vec![json!(2), json!(2)])
            ]
        );
    }

    #[test]
    fn a_chord_step_starts_the_chord_and_hands_what_follows_to_its_body() {
        let then = sig("math.add", json!([3]), json!({"task_id": "then"}));
        let header = json!({"task": "celery.group", "subtask_type": "group", "args": [], "options": {"task_id": "g"},
            "kwargs": {"tasks": [sig("math.add", json!([1]), json!({"task_id": "h0"})), sig("math.add", json!([2]), json!({"task_id": "h1"}))]}});
        let body = sig("math.tsum", json!([]), json!({"task_id": "body"}));
        let chord = json!({"task": "celery.chord", "subtask_type": "chord", "args": [], "options": {"task_id": "g"},
            "kwargs": {"header": header, "body": body, "kwargs": {}}});
        let mut steps = after_success(&parent(json!({"chain": [then.clone(), chord]})), &json!(2)).into_iter();
        let Some(Ok(Step::StartChord(start))) = steps.next() else {
            panic!("the chord must be registered before its header is sent")
        };
        assert_eq!(
            (start.group_id.as_str(), start.header.clone()),
            ("g", vec!["h0".to_owned(), "h1".to_owned()])
        );
        assert_eq!(start.body["options"]["chain"], json!([then]));
        let header = published(steps.collect());
        assert_eq!(header.len(), 2);
        assert_eq!(header[1].request.args, vec![json!(2), json!(2)]);
        assert_eq!(header[1].request.group_index, Some(1));
        assert_eq!(header[1].request.embed.chord, Some(start.body.clone()));

        // The body, once the header is done, carries the rest of the outer chain.
        let body = published(chord_body(&header[1].request, &start.body, vec![json!(3), json!(4)])).remove(0);
        assert_eq!(
            (body.request.id.as_str(), body.request.args.clone()),
            ("body", vec![json!([3, 4])])
        );
        assert_eq!(body.request.embed.chain, Some(json!([then])));
    }

    #[test]
    fn a_chain_signature_runs_its_first_task_with_the_others_reversed_behind_it() {
        let chain = json!({"task": "celery.chain", "subtask_type": "chain", "args": [], "options": {},
            "kwargs": {"tasks": [sig("math.tsum", json!([]), json!({"task_id": "s"})), sig("math.add", json!([5]), json!({"task_id": "a"})), sig("math.add", json!([6]), json!({"task_id": "b"}))]}});
        let first = published(chord_body(&parent(json!({})), &chain, vec![json!(1)])).remove(0);
        assert_eq!(
            (first.request.id.as_str(), first.request.args.clone()),
            ("s", vec![json!([1])])
        );
        let ids: Vec<_> = first
            .request
            .embed
            .chain
            .unwrap()
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["options"]["task_id"].clone())
            .collect();
        assert_eq!(ids, vec![json!("b"), json!("a")]);
    }

    #[test]
    fn a_chord_whose_body_options_are_not_an_object_is_still_sent() {
        let header = json!([sig("math.add", json!([1]), json!({"task_id": "h"}))]);
        let body = json!({"task": "math.tsum", "args": [], "kwargs": {}, "options": "oops"});
        let chord = json!({"task": "celery.chord", "subtask_type": "chord", "args": [], "options": 7,
            "kwargs": {"header": header, "body": body}});
        let then = sig("math.add", json!([2]), json!({}));
        let steps = after_success(&parent(json!({"chain": [then, chord]})), &json!(1));
        assert_eq!(published(steps).len(), 1);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let odd = json!({"task": "x", "subtask_type": "xmap", "args": [], "kwargs": {}});
        let bad_group = json!({"task": "celery.group", "subtask_type": "group", "kwargs": {"tasks": 7}});
        let request = parent(json!({"callbacks": [odd, bad_group, 42, {"task": "x", "args": "no"}]}));
        let calls = after_success(&request, &json!(1));
        assert_eq!(calls.len(), 4);
        assert!(matches!(calls[0], Err(CanvasError::Unsupported(_))));
        assert!(calls[1..].iter().all(|c| matches!(c, Err(CanvasError::Malformed(_)))));
    }
}
