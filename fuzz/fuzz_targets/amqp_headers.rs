//! An AMQP message: a header field table in AMQP's wire encoding (as lapin parses it off
//! the socket), then the body.
#![no_main]

use amq_protocol_types::parsing::parse_field_table;
use celeriac_protocol::amqp_table::{headers_to_table, table_to_headers};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok((body, table)) = parse_field_table(data) else {
        return;
    };
    let headers = table_to_headers(&table);
    // Headers the worker republishes (retries, chain steps) go out and come back the
    // same once they are JSON.
    let republished = table_to_headers(&headers_to_table(&headers));
    assert_eq!(table_to_headers(&headers_to_table(&republished)), republished);
    celeriac_fuzz::check_task_message(&celeriac_fuzz::json_message(headers, body));
});
