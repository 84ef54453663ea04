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
    // The ack is written in the background; closing waits for it.
    broker.close().await.unwrap();
    let left: usize = t.conn.hlen(format!("{p}unacked")).await.unwrap();
    assert_eq!(left, 0);
    t.cleanup().await;
}

#[tokio::test]
async fn expired_messages_are_restored_marked_redelivered() {
    let mut t = Prefixed::new().await;
    let store = RedisStore::open(URL, &t.options).await.unwrap();
    let published = task("math.add", 0).to_envelope_json();
    store.put("celery", &published, 0).await.unwrap();
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
    let published: Value = serde_json::from_str(&published).unwrap();
    assert_eq!(
        envelope["properties"]["delivery_tag"], published["properties"]["delivery_tag"],
        "the envelope comes back as it was published"
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

/// Each taken message is recorded under a tag of the worker's own, so two messages that
/// share a publisher's `delivery_tag` (kombu's pitfall: the second overwrites the first's
/// entry) are both kept, by the pop script and by BRPOP's path alike; each entry holds the
/// envelope as it came, to be restored to the queue it was taken from.
#[tokio::test]
async fn messages_are_recorded_under_tags_of_the_workers_own() {
    let mut t = Prefixed::new().await;
    let store = RedisStore::open(URL, &t.options).await.unwrap();
    let same_tag = r#"{"body": "W10=", "headers": {"id": "N"}, "properties": {"delivery_tag": "reused"}}"#;
    // Compact, with whitespace around it: the script and BRPOP's path each get one.
    let compact = |n: &str| same_tag.replace('N', n).replace(": ", ":").replace(", ", ",");
    let payloads = [
        same_tag.replace('N', "1"),
        format!(" \t{}\r\n", compact("2")),
        format!("\n{}\n", compact("3")),
    ];
    let queues = ["celery".to_owned()];
    for payload in &payloads[..2] {
        store.put("celery", payload, 0).await.unwrap();
    }
    let mut taken = store.take(&queues, 2, Duration::ZERO).await.unwrap();
    // The last one arrives while the store waits in BRPOP.
    let (brpopped, ()) = tokio::join!(store.take(&queues, 2, Duration::from_secs(5)), async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        store.put("celery", &payloads[2], 0).await.unwrap();
    });
    let brpopped = brpopped.unwrap();
    assert!(brpopped[0].deferred_writes.is_some(), "not taken by BRPOP");
    taken.extend(brpopped);
    assert_eq!(taken.len(), 3);
    // BRPOP's record is written in the background, a millisecond later at most.
    let mut recorded: HashMap<String, String> = HashMap::new();
    for _ in 0..100 {
        recorded = t.conn.hgetall(format!("{}unacked", t.prefix)).await.unwrap();
        if recorded.len() == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(recorded.len(), 3, "{recorded:?}");
    for (taken, published) in taken.iter().zip(&payloads) {
        assert_eq!(&taken.payload, published);
        let entry: Value = serde_json::from_str(&recorded[&taken.tag]).unwrap();
        let envelope: Value = serde_json::from_str(published).unwrap();
        assert_eq!(entry, serde_json::json!([envelope, "", "celery"]));
    }
    t.cleanup().await;
}

#[tokio::test]
async fn the_unacked_index_is_a_skiplist_from_the_first_message() {
    let mut t = Prefixed::new().await;
    let store = RedisStore::open(URL, &t.options).await.unwrap();
    let queues = ["celery".to_owned()];
    store
        .put("celery", &task("math.add", 0).to_envelope_json(), 0)
        .await
        .unwrap();
    let taken = store.take(&queues, 1, Duration::ZERO).await.unwrap();
    assert_eq!(taken.len(), 1);
    // A listpack (short members) would cost every ZADD a scan of the whole set.
    let encoding: String = redis::cmd("OBJECT")
        .arg("ENCODING")
        .arg(format!("{}unacked_index", t.prefix))
        .query_async(&mut t.conn)
        .await
        .unwrap();
    assert_eq!(
        encoding, "skiplist",
        "tags are no longer than this Redis' zset-max-listpack-value"
    );
    t.cleanup().await;
}
