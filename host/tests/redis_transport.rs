//! The Redis store's keys, checked on the real Redis (127.0.0.1:6379, db 0). Each test
//! isolates itself with a `global_keyprefix` of its own and deletes its keys after.

use std::collections::HashMap;
use std::time::Duration;

use celeriac::broker::redis::RedisStore;
use celeriac::broker::virtual_transport::{Store, VirtualBroker};
use celeriac::broker::Broker;
use celeriac::protocol::TaskRequest;
use futures_util::StreamExt;
use redis::AsyncCommands;
use serde_json::Value;

const URL: &str = "redis://127.0.0.1:6379/0";

struct Prefixed {
    prefix: String,
    options: HashMap<String, String>,
    conn: redis::aio::MultiplexedConnection,
}

impl Prefixed {
    async fn new() -> Prefixed {
        let prefix = format!("celeriac-test-{}:", uuid::Uuid::new_v4());
        let options = HashMap::from([("global_keyprefix".to_owned(), prefix.clone())]);
        let conn = redis::Client::open(URL)
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        Prefixed { prefix, options, conn }
    }

    async fn keys(&mut self) -> Vec<String> {
        let mut keys: Vec<String> = self.conn.keys(format!("{}*", self.prefix)).await.unwrap();
        keys.sort();
        keys
    }

    async fn cleanup(mut self) {
        for key in self.keys().await {
            let _: () = self.conn.del(key).await.unwrap();
        }
    }
}

fn task(name: &str, priority: u8) -> celeriac::protocol::Message {
    let mut request = TaskRequest::new(name, vec![Value::from(1)], Default::default());
    request.delivery_info.routing_key = "celery".into();
    request.priority = priority;
    request.encode()
}

#[tokio::test]
async fn keys_follow_kombu_with_a_global_prefix() {
    let mut t = Prefixed::new().await;
    let broker = VirtualBroker::start(RedisStore::open(URL, &t.options).await.unwrap(), &t.options).unwrap();
    broker.declare(&["celery".to_owned()]).await.unwrap();
    broker.publish("celery", &task("math.add", 0)).await.unwrap();
    broker.publish("celery", &task("math.add", 5)).await.unwrap();
    let p = &t.prefix.clone();
    // The lease keeper's sweep may hold `unacked_mutex` for a moment; it is not a queue key.
    let mut keys = t.keys().await;
    keys.retain(|k| !k.ends_with("unacked_mutex"));
    assert_eq!(
        keys,
        [
            format!("{p}_kombu.binding.celery"),
            format!("{p}_kombu.binding_permanent.celery"),
            format!("{p}celery"),
            format!("{p}celery\x06\x163"),
        ]
    );
    let members: Vec<String> = t.conn.smembers(format!("{p}_kombu.binding.celery")).await.unwrap();
    assert_eq!(members, ["celery\x06\x16\x06\x16celery"]);

    let got = broker
        .receive(&["celery".to_owned()], 1, Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(got.len(), 1);
    let unacked: HashMap<String, String> = t.conn.hgetall(format!("{p}unacked")).await.unwrap();
    let entry: Value = serde_json::from_str(unacked.values().next().unwrap()).unwrap();
    assert!(entry[0].is_object(), "kombu stores the envelope itself: {entry}");
    assert_eq!((entry[1].as_str(), entry[2].as_str()), (Some(""), Some("celery")));
    let indexed: Vec<String> = t.conn.zrange(format!("{p}unacked_index"), 0, -1).await.unwrap();
    assert_eq!(indexed.len(), 1);

    broker.ack(&got[0]).await.unwrap();
    let left: usize = t.conn.hlen(format!("{p}unacked")).await.unwrap();
    assert_eq!(left, 0);
    t.cleanup().await;
}

#[tokio::test]
async fn expired_messages_are_restored_marked_redelivered() {
    let mut t = Prefixed::new().await;
    let store = RedisStore::open(URL, &t.options).await.unwrap();
    store
        .put("celery", &task("math.add", 0).to_envelope_json(), 0)
        .await
        .unwrap();
    let taken = store
        .take(&["celery".to_owned()], 10, Duration::ZERO)
        .await
        .unwrap()
        .remove(0);
    assert_eq!(taken.queue, "celery");
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(store.restore_expired(Duration::from_millis(1)).await.unwrap(), 1);
    let p = t.prefix.clone();
    let back: Vec<String> = t.conn.lrange(format!("{p}celery"), 0, -1).await.unwrap();
    let envelope: Value = serde_json::from_str(&back[0]).unwrap();
    assert_eq!(envelope["headers"]["redelivered"], true);
    assert_eq!(envelope["properties"]["delivery_info"]["redelivered"], true);
    assert_eq!(
        envelope["properties"]["delivery_tag"].as_str(),
        Some(taken.tag.as_str())
    );
    let left: usize = t.conn.hlen(format!("{p}unacked")).await.unwrap();
    assert_eq!(left, 0);
    // A renewed lease is not restored.
    let again = store
        .take(&["celery".to_owned()], 10, Duration::ZERO)
        .await
        .unwrap()
        .remove(0);
    tokio::time::sleep(Duration::from_millis(300)).await;
    store.renew(std::slice::from_ref(&again.tag)).await.unwrap();
    assert_eq!(store.restore_expired(Duration::from_millis(200)).await.unwrap(), 0);
    t.cleanup().await;
}

#[tokio::test]
async fn fanout_is_a_publish_on_kombus_channel() {
    let t = Prefixed::new().await;
    let broker = VirtualBroker::start(RedisStore::open(URL, &t.options).await.unwrap(), &t.options).unwrap();
    let mut pubsub = redis::Client::open(URL).unwrap().get_async_pubsub().await.unwrap();
    pubsub.psubscribe(format!("{}/0.celeryev/*", t.prefix)).await.unwrap();
    broker
        .publish_fanout("celeryev", "worker.heartbeat", &task("event", 0))
        .await
        .unwrap();
    let message = tokio::time::timeout(Duration::from_secs(5), pubsub.on_message().next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        message.get_channel_name(),
        format!("{}/0.celeryev/worker.heartbeat", t.prefix)
    );
    let payload: String = message.get_payload().unwrap();
    let envelope: Value = serde_json::from_str(&payload).unwrap();
    assert_eq!(envelope["headers"]["task"], "event");
    t.cleanup().await;
}

/// The pop script records each message under the `delivery_tag` of its envelope's own
/// `properties`, wherever they sit among the envelope's keys and whatever decoy a header
/// holds (a nested `properties` object, or the words in a string).
#[tokio::test]
async fn messages_are_recorded_under_their_own_tag_whatever_the_key_order() {
    let mut t = Prefixed::new().await;
    let store = RedisStore::open(URL, &t.options).await.unwrap();
    let properties = |tag: &str| {
        format!(r#"{{"delivery_tag": "{tag}", "delivery_info": {{"exchange": "", "routing_key": "celery"}}}}"#)
    };
    let decoy = r#"{"stamps": {"properties": {"delivery_tag": "decoy"}}, "argsrepr": "\"properties\": {\"delivery_tag\": \"decoy\"}"}"#;
    let layouts = [
        // kombu's order, properties last.
        (
            "last",
            format!(
                r#"{{"body": "W10=", "headers": {decoy}, "properties": {}}}"#,
                properties("last")
            ),
        ),
        // properties first, the decoy after them.
        (
            "first",
            format!(
                r#"{{"properties": {}, "body": "W10=", "headers": {decoy}}}"#,
                properties("first")
            ),
        ),
        // compact, with trailing whitespace.
        (
            "compact",
            format!(
                "{{\"headers\":{decoy},\"properties\":{}}}\n",
                properties("compact").replace(' ', "")
            ),
        ),
    ];
    for (_, payload) in &layouts {
        store.put("celery", payload, 0).await.unwrap();
    }
    let taken = store.take(&["celery".to_owned()], 10, Duration::ZERO).await.unwrap();
    let tags: Vec<&str> = taken.iter().map(|taken| taken.tag.as_str()).collect();
    assert_eq!(tags, ["last", "first", "compact"]);
    let mut recorded: Vec<String> = t.conn.hkeys(format!("{}unacked", t.prefix)).await.unwrap();
    recorded.sort();
    assert_eq!(recorded, ["compact", "first", "last"]);
    t.cleanup().await;
}
