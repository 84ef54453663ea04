//! The Redis result backend's batched store, on the real Redis (127.0.0.1:6379, db 0):
//! what one write keeps, replaces and publishes. Task ids are fresh UUIDs; the test
//! deletes its keys after.

use celeriac::backend::redis::{RedisBackend, TASK_KEY_PREFIX};
use celeriac::backend::ResultBackend;
use celeriac::protocol::{ExceptionInfo, State, TaskResult};
use futures_util::StreamExt;
use redis::AsyncCommands;
use serde_json::json;

const URL: &str = "redis://127.0.0.1:6379/0";

fn key(id: &str) -> String {
    format!("{TASK_KEY_PREFIX}{id}")
}

#[tokio::test]
async fn a_batch_stores_and_publishes_each_result_but_never_replaces_a_success() {
    let backend = RedisBackend::open(URL, 3600).await.unwrap();
    let client = redis::Client::open(URL).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let ids: Vec<String> = (0..4).map(|_| uuid::Uuid::new_v4().to_string()).collect();
    // Before the batch: a SUCCESS (a redelivered copy's run finished first), a STARTED,
    // something that is not a result meta, and nothing.
    backend
        .store(&TaskResult::new(&ids[0], State::Success, json!(1)))
        .await
        .unwrap();
    backend
        .store(&TaskResult::new(&ids[1], State::Started, json!(null)))
        .await
        .unwrap();
    let _: () = conn.set(key(&ids[2]), "not json").await.unwrap();
    let mut pubsub = client.get_async_pubsub().await.unwrap();
    for id in &ids {
        pubsub.subscribe(key(id)).await.unwrap();
    }

    let failed = ExceptionInfo::new("ValueError", "builtins", "late copy");
    let batch = vec![
        TaskResult::failure(&ids[0], &failed, None),
        TaskResult::new(&ids[1], State::Success, json!(2)),
        TaskResult::new(&ids[2], State::Success, json!(3)),
        TaskResult::new(&ids[3], State::Success, json!(4)),
    ];
    backend.store_many(&batch).await.unwrap();
    backend.store_many(&[]).await.unwrap();

    let first = backend.get(&ids[0]).await.unwrap().unwrap();
    assert_eq!((first.state, first.result), (State::Success, json!(1)));
    for (id, value) in ids[1..].iter().zip([2, 3, 4]) {
        let stored = backend.get(id).await.unwrap().unwrap();
        assert_eq!((stored.state, stored.result), (State::Success, json!(value)), "{id}");
        let ttl: i64 = conn.ttl(key(id)).await.unwrap();
        assert!((1..=3600).contains(&ttl), "{id}: ttl {ttl}");
    }

    // Published in order: the three stored, then a marker of ours; nothing for the kept SUCCESS.
    let _: () = conn.publish(key(&ids[0]), "marker").await.unwrap();
    let mut messages = pubsub.on_message();
    let mut published = Vec::new();
    loop {
        let message = messages.next().await.unwrap();
        let payload: String = message.get_payload().unwrap();
        if payload == "marker" {
            break;
        }
        published.push(message.get_channel_name().to_owned());
    }
    assert_eq!(published, ids[1..].iter().map(|id| key(id)).collect::<Vec<_>>());

    for id in &ids {
        let _: () = conn.del(key(id)).await.unwrap();
    }
}
