//! ZooKeeper through `zookeeper-client`, with kombu's layout (kazoo's queue recipe) so
//! Python clients with `zookeeper://HOST:PORT/VHOST` reach the same queues:
//!
//! - a queue is the znode `/<vhost>/<queue>` (vhost `/` gives `/<queue>`);
//! - a message is a persistent sequential child `entry-PPP-<sequence>` holding the kombu
//!   JSON envelope, where `PPP` is `9 - priority` in three digits, so children sorted by
//!   name come highest priority first, then oldest first.
//!
//! kazoo's consumer deletes an entry when it reads it, so a worker that dies loses what it
//! held. Here a worker *claims* an entry with an ephemeral znode `/<vhost>/<queue>.claims/<entry>`
//! and deletes the entry only when the task's result is stored. A claim lives as long as
//! the worker's ZooKeeper session: when a worker dies, its session expires (after the
//! session timeout) and its entries become available to the next worker. Producers see
//! nothing different. A kombu (Python) consumer on the same queue does not know about
//! claims and may take a claimed entry.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::Mutex;
use zookeeper_client as zk;

use super::virtual_transport::{seconds_option, Store, StoreTag, Taken};
use super::BrokerError;

/// kazoo's entry prefix.
const ENTRY_PREFIX: &str = "entry-";
/// How long ZooKeeper keeps a dead worker's claims (transport option `session_timeout`).
const DEFAULT_SESSION_TIMEOUT: Duration = Duration::from_secs(10);

fn op(err: zk::Error) -> BrokerError {
    BrokerError::Operation(format!("zookeeper: {err}"))
}

/// The znode of a queue: kombu's `os.path.join('/' + vhost.strip('/'), queue)`.
pub fn queue_path(vhost: &str, queue: &str) -> String {
    let vhost = vhost.trim_matches('/');
    if vhost.is_empty() {
        format!("/{queue}")
    } else {
        format!("/{vhost}/{queue}")
    }
}

/// The name prefix of an entry of `priority` (0–9; higher runs first).
fn entry_prefix(priority: u8) -> String {
    format!("{ENTRY_PREFIX}{:03}-", 9 - priority.min(9))
}

/// A taken message: its entry's path (the claim is the same name under `.claims`).
fn claim_path(entry_path: &str) -> Option<String> {
    let (queue, entry) = entry_path.rsplit_once('/')?;
    Some(format!("{queue}.claims/{entry}"))
}

pub struct ZookeeperStore {
    /// `HOST:PORT[,HOST:PORT…]`.
    cluster: String,
    vhost: String,
    session_timeout: Duration,
    /// Replaced when the session ends (its claims are gone then, and so is the client).
    client: Mutex<zk::Client>,
}

impl ZookeeperStore {
    /// `rest` is what follows `zookeeper://`: `HOST[:PORT][,HOST[:PORT]…][/VHOST]`.
    pub async fn open(rest: &str, options: &HashMap<String, String>) -> Result<ZookeeperStore, BrokerError> {
        let (hosts, vhost) = rest.split_once('/').unwrap_or((rest, ""));
        let cluster = hosts
            .split(',')
            .filter(|h| !h.is_empty())
            .map(|h| {
                if h.contains(':') {
                    h.to_owned()
                } else {
                    format!("{h}:2181")
                }
            })
            .collect::<Vec<_>>()
            .join(",");
        let cluster = if cluster.is_empty() {
            "127.0.0.1:2181".to_owned()
        } else {
            cluster
        };
        let session_timeout = seconds_option(options, "session_timeout", DEFAULT_SESSION_TIMEOUT)?;
        let client = connect(&cluster, session_timeout).await?;
        Ok(ZookeeperStore {
            cluster,
            vhost: vhost.split('?').next().unwrap_or("").to_owned(),
            session_timeout,
            client: Mutex::new(client),
        })
    }

    /// The session's client, or a new session's when the last one ended.
    async fn client(&self) -> Result<zk::Client, BrokerError> {
        let mut client = self.client.lock().await;
        if client.state().is_terminated() {
            tracing::warn!(cluster = %self.cluster, "ZooKeeper session ended; opening a new one");
            *client = connect(&self.cluster, self.session_timeout).await?;
        }
        Ok(client.clone())
    }

    fn queue_path(&self, queue: &str) -> String {
        queue_path(&self.vhost, queue)
    }

    /// Claim and read up to `max` entries of one queue, oldest of the highest priority
    /// first. Also returns every entry seen, claimed or not.
    async fn take_from(
        &self,
        client: &zk::Client,
        queue: &str,
        max: usize,
    ) -> Result<(Vec<Taken>, HashSet<String>), BrokerError> {
        let path = self.queue_path(queue);
        let mut entries = match client.list_children(&path).await {
            Ok(entries) => entries,
            Err(zk::Error::NoNode) => return Ok(Default::default()),
            Err(err) => return Err(op(err)),
        };
        if entries.is_empty() {
            return Ok(Default::default());
        }
        entries.sort();
        let seen: HashSet<String> = entries.iter().cloned().collect();
        let claims_path = format!("{path}.claims");
        let claimed: HashSet<String> = match client.list_children(&claims_path).await {
            Ok(claims) => claims.into_iter().collect(),
            Err(zk::Error::NoNode) => HashSet::new(),
            Err(err) => return Err(op(err)),
        };
        let claim = zk::CreateMode::Ephemeral.with_acls(zk::Acls::anyone_all());
        let mut taken = Vec::new();
        for entry in entries.into_iter().filter(|e| !claimed.contains(e)) {
            if taken.len() >= max {
                break;
            }
            let entry_path = format!("{path}/{entry}");
            match client.create(&format!("{claims_path}/{entry}"), &[], &claim).await {
                Ok(_) => {}
                Err(zk::Error::NodeExists) => continue, // another worker was quicker
                Err(zk::Error::NoNode) => {
                    ensure_path(client, &claims_path).await?;
                    continue; // claimed on the next round
                }
                Err(err) => return Err(op(err)),
            }
            match client.get_data(&entry_path).await {
                Ok((data, _)) => taken.push(Taken {
                    queue: queue.to_owned(),
                    tag: entry_path,
                    payload: String::from_utf8_lossy(&data).into_owned(),
                    // A dead worker's claim vanishes with its session, leaving no trace.
                    redelivered: false,
                    deferred_writes: None,
                }),
                Err(zk::Error::NoNode) => {
                    // Taken by a kombu consumer meanwhile: let go of the claim.
                    let _ = client.delete(&format!("{claims_path}/{entry}"), None).await;
                }
                Err(err) => return Err(op(err)),
            }
        }
        Ok((taken, seen))
    }
}

async fn connect(cluster: &str, session_timeout: Duration) -> Result<zk::Client, BrokerError> {
    zk::Client::connector()
        .with_session_timeout(session_timeout)
        .with_connection_timeout(Duration::from_secs(5))
        .connect(cluster)
        .await
        .map_err(|e| BrokerError::Connection(format!("cannot connect to ZooKeeper at {cluster}: {e}")))
}

/// `mkdir -p` with persistent nodes.
async fn ensure_path(client: &zk::Client, path: &str) -> Result<(), BrokerError> {
    client
        .mkdir(path, &zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all()))
        .await
        .map_err(op)
}

#[async_trait]
impl Store for ZookeeperStore {
    async fn declare(&self, queue: &str) -> Result<(), BrokerError> {
        let client = self.client().await?;
        let path = self.queue_path(queue);
        ensure_path(&client, &path).await?;
        ensure_path(&client, &format!("{path}.claims")).await
    }

    async fn put(&self, queue: &str, payload: &str, priority: u8) -> Result<(), BrokerError> {
        let client = self.client().await?;
        let path = self.queue_path(queue);
        let entry = format!("{path}/{}", entry_prefix(priority));
        let sequential = zk::CreateMode::PersistentSequential.with_acls(zk::Acls::anyone_all());
        match client.create(&entry, payload.as_bytes(), &sequential).await {
            Err(zk::Error::NoNode) => {
                ensure_path(&client, &path).await?;
                client
                    .create(&entry, payload.as_bytes(), &sequential)
                    .await
                    .map_err(op)?;
            }
            other => {
                other.map_err(op)?;
            }
        }
        Ok(())
    }

    async fn take(&self, queues: &[String], max: usize, block: Duration) -> Result<Vec<Taken>, BrokerError> {
        let client = self.client().await?;
        let mut first_seen = None;
        for queue in queues {
            let (taken, seen) = self.take_from(&client, queue, max).await?;
            if !taken.is_empty() {
                return Ok(taken);
            }
            first_seen.get_or_insert(seen);
        }
        // Nothing to take: sleep until the first queue changes (the virtual transport
        // rotates the order) or `block` passes. Entries seen just now are claimed by
        // other workers; one that arrived since is taken at once.
        let Some(queue) = queues.first().filter(|_| !block.is_zero()) else {
            return Ok(Vec::new());
        };
        let seen = first_seen.unwrap_or_default();
        match client.list_and_watch_children(&self.queue_path(queue)).await {
            Ok((children, _)) if children.iter().any(|c| !seen.contains(c)) => {}
            Ok((_, watcher)) => {
                let _ = tokio::time::timeout(block, watcher.changed()).await;
            }
            Err(zk::Error::NoNode) => tokio::time::sleep(block).await,
            Err(err) => return Err(op(err)),
        }
        Ok(self.take_from(&client, queue, max).await?.0)
    }

    async fn delete(&self, tag: &StoreTag) -> Result<(), BrokerError> {
        let client = self.client().await?;
        match client.delete(tag, None).await {
            Ok(()) | Err(zk::Error::NoNode) => {}
            Err(err) => return Err(op(err)),
        }
        if let Some(claim) = claim_path(tag) {
            match client.delete(&claim, None).await {
                Ok(()) | Err(zk::Error::NoNode) => {}
                Err(err) => return Err(op(err)),
            }
        }
        Ok(())
    }

    async fn restore(&self, tag: &StoreTag) -> Result<(), BrokerError> {
        let client = self.client().await?;
        let Some(claim) = claim_path(tag) else { return Ok(()) };
        match client.delete(&claim, None).await {
            Ok(()) | Err(zk::Error::NoNode) => Ok(()),
            Err(err) => Err(op(err)),
        }
    }

    async fn renew(&self, _tags: &[StoreTag]) -> Result<(), BrokerError> {
        Ok(()) // claims live as long as the session, which the client keeps alive
    }

    async fn restore_expired(&self, _timeout: Duration) -> Result<u64, BrokerError> {
        Ok(0) // ZooKeeper drops a dead worker's claims when its session expires
    }

    async fn purge(&self, queue: &str) -> Result<u64, BrokerError> {
        let client = self.client().await?;
        let path = self.queue_path(queue);
        let entries = match client.list_children(&path).await {
            Ok(entries) => entries,
            Err(zk::Error::NoNode) => return Ok(0),
            Err(err) => return Err(op(err)),
        };
        let mut purged = 0;
        for entry in entries {
            match client.delete(&format!("{path}/{entry}"), None).await {
                Ok(()) => purged += 1,
                Err(zk::Error::NoNode) => {}
                Err(err) => return Err(op(err)),
            }
        }
        Ok(purged)
    }

    fn default_visibility_timeout(&self) -> Duration {
        self.session_timeout
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_follow_kombu() {
        assert_eq!(queue_path("/", "celery"), "/celery");
        assert_eq!(queue_path("", "celery"), "/celery");
        assert_eq!(queue_path("myvhost", "celery"), "/myvhost/celery");
        assert_eq!(entry_prefix(0), "entry-009-");
        assert_eq!(entry_prefix(7), "entry-002-");
        assert_eq!(entry_prefix(200), "entry-000-");
        assert_eq!(
            claim_path("/v/celery/entry-009-0000000042").as_deref(),
            Some("/v/celery.claims/entry-009-0000000042")
        );
    }
}
