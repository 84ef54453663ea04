//! The codecs against bytes written by the real Celery library
//! (`tests/fixtures/make_fixtures.py` made them; see its docstring).

use celeriac::backend::sql::{pickle, unpickle_or_json};
use celeriac::protocol::task::python_json;
use celeriac::protocol::{Message, ProtocolError, TaskRequest};
use serde_json::{json, Value};

fn fixture(name: &str) -> Value {
    let path = format!("{}/../tests/fixtures/celery/{name}.json", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap()
}

fn decode(name: &str) -> (TaskRequest, Message, Value) {
    let f = fixture(name);
    let message = Message::from_envelope_json(f["payload"].as_str().unwrap()).unwrap();
    let request = TaskRequest::decode(&message).unwrap();
    (request, message, f["expect"].clone())
}

fn check_common(request: &TaskRequest, expect: &Value) {
    assert_eq!(request.id, expect["id"].as_str().unwrap());
    assert_eq!(request.name, expect["name"].as_str().unwrap());
    assert_eq!(Value::Array(request.args.clone()), expect["args"]);
    assert_eq!(Value::Object(request.kwargs.clone()), expect["kwargs"]);
}

#[test]
fn v2_plain_message() {
    let (request, _, expect) = decode("v2_add");
    check_common(&request, &expect);
    assert_eq!(request.retries, 0);
    assert_eq!(request.root_id, request.id);
    assert_eq!(request.time_limit, (None, None));
    assert_eq!(request.queue(), "celery");
    assert!(request.eta.is_none() && request.expires.is_none());
    assert!(request.reply_to.is_some(), "Celery always sends reply_to");
}

#[test]
fn v2_message_with_every_option() {
    let (request, _, expect) = decode("v2_options");
    check_common(&request, &expect);
    assert_eq!(
        request.time_limit,
        (Some(60.0), Some(50.0)),
        "timelimit is [hard, soft]"
    );
    assert_eq!(request.priority, 5);
    assert!(request.eta.is_some() && request.expires.is_some());
    assert!(request.expires > request.eta);
    assert_eq!(request.queue(), "other");
    assert_eq!(request.extra_headers["x-custom"], expect["custom_header"]);
}

#[test]
fn v2_chain_keeps_the_remaining_steps() {
    let (request, _, expect) = decode("v2_chain");
    check_common(&request, &expect);
    let chain = request.embed.chain.as_ref().and_then(Value::as_array).unwrap();
    assert_eq!(chain.len() as u64, expect["chain_len"].as_u64().unwrap());
    // The next step is the last element.
    assert_eq!(chain.last().unwrap()["task"], expect["next_task"]);
}

#[test]
fn v1_message() {
    let (request, _, expect) = decode("v1_add");
    check_common(&request, &expect);
    assert_eq!(request.retries, 0);
}

#[test]
fn encoding_matches_celery_byte_for_byte_in_the_body_and_key_for_key_in_headers() {
    let (request, celery_message, _) = decode("v2_add");
    let ours = request.encode();
    assert_eq!(
        String::from_utf8(ours.body.clone()).unwrap(),
        String::from_utf8(celery_message.body.clone()).unwrap()
    );
    let mut our_keys: Vec<&str> = ours.headers.names().collect();
    let mut their_keys: Vec<&str> = celery_message.headers.names().collect();
    our_keys.sort();
    their_keys.sort();
    assert_eq!(our_keys, their_keys);
    for key in [
        "task",
        "id",
        "root_id",
        "argsrepr",
        "kwargsrepr",
        "retries",
        "timelimit",
    ] {
        assert_eq!(ours.headers.get(key), celery_message.headers.get(key), "header {key}");
    }
}

#[test]
fn every_fixture_round_trips_through_our_encoder() {
    for name in ["v2_add", "v2_options", "v2_chain", "v1_add"] {
        let (request, _, _) = decode(name);
        let envelope = request.encode().to_envelope_json();
        let mut again = TaskRequest::decode(&Message::from_envelope_json(&envelope).unwrap()).unwrap();
        // Celery always sends `origin`; a v1 message has none, so the encoder supplies one.
        if request.origin.is_none() {
            again.origin = None;
        }
        assert_eq!(again, request, "{name}");
    }
}

#[test]
fn python_separators() {
    assert_eq!(
        python_json(&json!([[2, 3], {}, {"a": null}])),
        r#"[[2, 3], {}, {"a": null}]"#
    );
}

#[test]
fn reads_the_pickles_celery_writes_and_writes_ones_it_reads_back() {
    let f = fixture("pickles");
    for (name, case) in f["cases"].as_object().unwrap() {
        let bytes = hex::decode(case["hex"].as_str().unwrap()).unwrap();
        let value = unpickle_or_json(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(value, case["value"], "{name}");
        assert_eq!(
            unpickle_or_json(&pickle(&value)).unwrap(),
            case["value"],
            "{name} round trip"
        );
    }
}

#[test]
fn compressed_messages_are_refused_by_name() {
    for name in ["v2_add", "v1_add"] {
        let (_, mut message, _) = decode(name);
        message.headers.insert("compression", json!("application/x-gzip"));
        assert_eq!(
            TaskRequest::decode(&message),
            Err(ProtocolError::Compression("application/x-gzip".into())),
            "{name}"
        );
    }
}

#[test]
fn malformed_messages_are_errors_not_panics() {
    let (_, good, _) = decode("v2_add");
    let bodies: [&[u8]; 6] = [
        b"",
        b"not json",
        b"[[2, 3], {}]",
        b"{\"args\": 5}",
        b"[1, 2, 3]",
        b"[[], [], {}]",
    ];
    for body in bodies {
        let mut message = good.clone();
        message.body = body.to_vec();
        assert!(
            TaskRequest::decode(&message).is_err(),
            "{:?}",
            String::from_utf8_lossy(body)
        );
    }
    let mut message = good.clone();
    message.headers.insert("eta", json!("next tuesday"));
    assert!(TaskRequest::decode(&message).is_err());
    let mut message = good;
    message.content_type = "application/x-python-serialize".into();
    assert!(TaskRequest::decode(&message).is_err());
}
