//! kombu's JSON envelope, as the Redis, SQLite and ZooKeeper transports store a message.
#![no_main]

use celeriac_protocol::Message;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(message) = Message::from_envelope_json(text) {
            celeriac_fuzz::check_task_message(&message);
        }
    }
});
