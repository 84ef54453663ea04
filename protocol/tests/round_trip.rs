//! Every valid message survives encode → decode unchanged: task requests through kombu's
//! JSON envelope (Redis, SQS, ZooKeeper, SQLite), Celery's headers through an AMQP field
//! table, and result metas. Integers stay within i64: AMQP field tables have no wider type.

use celeriac_protocol::amqp_table::{headers_to_table, table_to_headers};
use celeriac_protocol::{DeliveryInfo, Embed, Message, State, TaskRequest, TaskResult};
use chrono::{DateTime, TimeZone, Utc};
use proptest::prelude::*;
use serde_json::{Map, Value};

/// Any JSON value a Python client could send: integers within i64, finite floats, any
/// Unicode text, nested a few levels deep.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("JSON has no NaN or infinity", |f| f.is_finite())
            .prop_map(Value::from),
        any::<String>().prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec((any::<String>(), inner), 0..4)
                .prop_map(|pairs| Value::Object(pairs.into_iter().collect())),
        ]
    })
}

fn json_object() -> impl Strategy<Value = Map<String, Value>> {
    prop::collection::vec((any::<String>(), json_value()), 0..4).prop_map(|pairs| pairs.into_iter().collect())
}

/// A timestamp with microseconds, the precision Celery's ISO strings carry.
fn timestamp() -> impl Strategy<Value = DateTime<Utc>> {
    (0i64..4_102_444_800, 0u32..1_000_000)
        .prop_map(|(secs, micros)| Utc.timestamp_opt(secs, micros * 1000).single().unwrap_or_default())
}

fn text() -> impl Strategy<Value = String> {
    "[A-Za-z0-9_.@:-]{1,40}"
}

fn non_null() -> impl Strategy<Value = Option<Value>> {
    prop::option::of(json_value().prop_filter("null means absent", |v| !v.is_null()))
}

fn finite() -> impl Strategy<Value = Option<f64>> {
    prop::option::of(0.0f64..1e9)
}

prop_compose! {
    fn task_request()(
        id in text(), name in text(), args in prop::collection::vec(json_value(), 0..4),
        kwargs in json_object(),
        embed in (non_null(), non_null(), non_null(), non_null()),
        eta in prop::option::of(timestamp()), expires in prop::option::of(timestamp()),
        retries in any::<u32>(), time_limit in (finite(), finite()),
        root_id in text(), parent_id in prop::option::of(text()), group in prop::option::of(text()),
        group_index in prop::option::of(0..=i64::MAX as u64), origin in text(), ignore_result in any::<bool>(),
        reply_to in text(), correlation_id in text(), priority in any::<u8>(),
        routing_key in text(), extra in prop::collection::vec(("x_[a-z]{1,10}", json_value()), 0..3),
    ) -> TaskRequest {
        let (callbacks, errbacks, chain, chord) = embed;
        TaskRequest {
            id, name, args, kwargs,
            embed: Embed { callbacks, errbacks, chain, chord },
            eta, expires, retries, time_limit, root_id, parent_id, group, group_index,
            origin: Some(origin), ignore_result, reply_to: Some(reply_to), correlation_id, priority,
            delivery_info: DeliveryInfo { exchange: String::new(), routing_key },
            extra_headers: extra.into_iter().collect(),
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn task_requests_survive_the_kombu_envelope(request in task_request()) {
        let envelope = request.encode().to_envelope_json();
        let message = Message::from_envelope_json(&envelope).unwrap();
        prop_assert_eq!(TaskRequest::decode(&message).unwrap(), request);
    }

    #[test]
    fn celery_headers_survive_an_amqp_field_table(request in task_request()) {
        let headers = request.encode().headers;
        prop_assert_eq!(table_to_headers(&headers_to_table(&headers)), headers);
    }

    #[test]
    fn result_metas_survive_a_round_trip(
        task_id in text(), state in prop::sample::select(vec![State::Success, State::Failure, State::Retry, State::Revoked, State::Started]),
        result in json_value(), traceback in prop::option::of(any::<String>()),
        date_done in prop::option::of(timestamp()), children in prop::collection::vec(json_value(), 0..3),
        parent_id in prop::option::of(text()), group_id in prop::option::of(text()),
    ) {
        let stored = TaskResult {
            task_id, state, result, traceback, date_done, children, parent_id, group_id,
            extended: None, reply_to: None,
        };
        let meta: Value = serde_json::from_str(&stored.to_meta().to_string()).unwrap();
        prop_assert_eq!(TaskResult::from_meta(&meta).unwrap(), stored);
    }
}
