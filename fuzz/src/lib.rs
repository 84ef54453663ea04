//! What every fuzz target checks once it has a broker-neutral message: decoding never
//! panics, and a task the worker would publish again (a retry, a chain step) decodes to
//! what it encoded.

use celeriac_protocol::{Headers, Message, TaskRequest};

/// A JSON message with these headers and body, as any broker hands it over.
pub fn json_message(headers: Headers, body: &[u8]) -> Message {
    Message {
        body: body.to_vec(),
        content_type: "application/json".into(),
        content_encoding: "utf-8".into(),
        headers,
        ..Message::default()
    }
}

pub fn check_task_message(message: &Message) {
    let Ok(decoded) = TaskRequest::decode(message) else {
        return;
    };
    // The first re-encoding may fill in defaults (an origin, an empty reply_to); from
    // then on encode → decode must be exact.
    let republished = republish(&decoded);
    assert_eq!(republish(&republished), republished);
}

fn republish(request: &TaskRequest) -> TaskRequest {
    let envelope = request.encode().to_envelope_json();
    let message = Message::from_envelope_json(&envelope).expect("the worker's own envelope decodes");
    TaskRequest::decode(&message).expect("the worker's own task message decodes")
}
