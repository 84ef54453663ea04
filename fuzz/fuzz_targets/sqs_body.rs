//! An SQS message body: kombu's envelope, base64-encoded again (or not, from other clients).
#![no_main]

use celeriac_protocol::envelope::from_sqs_body;
use celeriac_protocol::Message;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(body) = std::str::from_utf8(data) {
        if let Ok(message) = Message::from_envelope_json(&from_sqs_body(body)) {
            celeriac_fuzz::check_task_message(&message);
        }
    }
});
