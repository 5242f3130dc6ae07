//! Locks: a queue of ephemeral sequential tickets (each waiter watches only its predecessor),
//! then the key itself written with a TTL marker renewed in the background.

use std::sync::Arc;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use kv_core::{
    Acquired, CancellationToken, Error, HeldLock, LeaseNotifier, Lock, LockBackend, LockOptions,
    Result,
};
use zookeeper_client as zk;

use crate::store::{BACKEND, Inner, LOCKS_DIR, map_zk};

const TICKET_PREFIX: &str = "__kvlock-";

/// Builds the user-facing lock.
pub(crate) fn new_lock(inner: Arc<Inner>, key: String, options: LockOptions) -> Lock {
    let tasks = inner.tasks.clone();
    let backend = ZkLock {
        inner,
        key: key.clone(),
        value: options.value,
        ttl: options.ttl,
    };
    Lock::new(key, Arc::new(backend), tasks)
}

#[derive(Debug)]
struct ZkLock {
    inner: Arc<Inner>,
    key: String,
    value: Bytes,
    ttl: Duration,
}

/// Where the queue of `key`'s waiters lives.
fn queue_path(inner: &Inner, key: &str) -> String {
    format!(
        "{}/{LOCKS_DIR}/{}",
        inner.root,
        crate::store::encode_key(key)
    )
}

fn ticket_sequence(name: &str) -> Option<i64> {
    name.strip_prefix(TICKET_PREFIX)?.parse().ok()
}

impl ZkLock {
    /// Takes a ticket in the queue; returns its full path.
    async fn enqueue(&self, client: &zk::Client) -> Result<String> {
        let inner = &self.inner;
        let queue = queue_path(inner, &self.key);
        let prefix = format!("{queue}/{TICKET_PREFIX}");
        let options = inner.options(zk::CreateMode::EphemeralSequential);
        for _ in 0..16 {
            match inner
                .timed("lock", client.create(&prefix, &[], &options))
                .await?
            {
                Ok((_, sequence)) => return Ok(format!("{prefix}{sequence}")),
                Err(zk::Error::NoNode) => {
                    let dir = inner.options(zk::CreateMode::Container);
                    inner.request("lock", client.mkdir(&queue, &dir)).await?;
                }
                Err(e) => return Err(map_zk(e, "lock", inner.config.request_timeout)),
            }
        }
        Err(Error::backend(
            BACKEND,
            "lock: the queue directory keeps vanishing",
        ))
    }

    /// Waits until `ticket` is first in its queue.
    async fn wait_turn(
        &self,
        client: &zk::Client,
        ticket: &str,
        abandon: &CancellationToken,
    ) -> Result<()> {
        let inner = &self.inner;
        let queue = queue_path(inner, &self.key);
        let mine = ticket
            .rsplit('/')
            .next()
            .and_then(ticket_sequence)
            .unwrap_or(i64::MAX);
        loop {
            let mut tickets: Vec<(i64, String)> = inner
                .request("lock", client.list_children(&queue))
                .await?
                .into_iter()
                .filter_map(|name| ticket_sequence(&name).map(|seq| (seq, name)))
                .collect();
            tickets.sort();
            if !tickets.iter().any(|(seq, _)| *seq == mine) {
                return Err(Error::unavailable(
                    BACKEND,
                    "the lock ticket vanished (session lost)",
                ));
            }
            let Some((_, predecessor)) = tickets.iter().rev().find(|(seq, _)| *seq < mine) else {
                return Ok(());
            };
            let predecessor = format!("{queue}/{predecessor}");
            let (stat, watcher) = inner
                .request("lock", client.check_and_watch_stat(&predecessor))
                .await?;
            if stat.is_none() {
                continue;
            }
            tokio::select! {
                _ = watcher.changed() => {}
                _ = abandon.cancelled() => return Err(Error::Closed),
            }
        }
    }

    /// First in line: waits until the key is absent, then writes it with a TTL marker.
    async fn take_key(&self, client: &zk::Client, abandon: &CancellationToken) -> Result<zk::Stat> {
        let inner = &self.inner;
        loop {
            match inner
                .write_key(
                    client,
                    &self.key,
                    &self.value,
                    Some(self.ttl),
                    crate::store::Expect::Absent,
                )
                .await
            {
                Ok(stat) => return Ok(stat),
                Err(Error::KeyExists { .. }) => {}
                Err(e) => return Err(e),
            }
            // Someone holds the key (another lock, or a plain put): wait until it goes.
            let state = inner.read_key(client, &self.key).await?;
            if !state.visible() {
                continue;
            }
            let deadline = state.deadline();
            let marker = inner.marker_path(&self.key);
            let (stat, watcher) = inner
                .request("lock", client.check_and_watch_stat(&marker))
                .await?;
            if stat.is_none() {
                continue;
            }
            let timer = async {
                if deadline == 0 {
                    std::future::pending::<()>().await;
                }
                let wait = deadline.saturating_sub(kv_core::ttl::now_millis()) + 1;
                tokio::time::sleep(Duration::from_millis(wait)).await;
            };
            tokio::select! {
                _ = watcher.changed() => {}
                _ = timer => {}
                _ = abandon.cancelled() => return Err(Error::Closed),
            }
        }
    }

    async fn remove_ticket(&self, client: &zk::Client, ticket: &str) {
        match self
            .inner
            .timed("unlock", client.delete(ticket, None))
            .await
        {
            Ok(Ok(()) | Err(zk::Error::NoNode)) => {}
            Ok(Err(error)) => tracing::debug!(%error, "could not remove a lock ticket"),
            Err(error) => tracing::debug!(%error, "could not remove a lock ticket"),
        }
    }
}

#[async_trait]
impl LockBackend for ZkLock {
    async fn acquire(&self, abandon: CancellationToken) -> Result<Acquired> {
        let inner = &self.inner;
        let (stat, generation) = loop {
            let client = inner.client().await?;
            let generation = inner.generation();
            let ticket = self.enqueue(&client).await?;
            let outcome = async {
                self.wait_turn(&client, &ticket, &abandon).await?;
                self.take_key(&client, &abandon).await
            }
            .await;
            // The key is the guard from now on; the ticket only ordered the waiters.
            self.remove_ticket(&client, &ticket).await;
            match outcome {
                Ok(stat) => break (stat, generation),
                // The session expired while waiting (the ticket went with it): queue again
                // on a new session.
                Err(error)
                    if error.is_transient()
                        && !abandon.is_cancelled()
                        && matches!(
                            client.state(),
                            zk::SessionState::Expired | zk::SessionState::Closed
                        ) =>
                {
                    tracing::info!(%error, key = %self.key, "session lost while waiting for a lock: queueing again");
                }
                Err(error) => return Err(error),
            }
        };
        let fencing_token = stat.mzxid as u64;
        let (notifier, lease) = LeaseNotifier::new(fencing_token);
        let held = Arc::new(Held {
            inner: inner.clone(),
            key: self.key.clone(),
            owner: stat.mzxid,
            marker_version: AtomicI32::new(0),
            generation,
            data: crate::store::marker_data(Some(self.ttl)),
        });
        let renewer = held.clone();
        let watcher = held.clone();
        let ttl = self.ttl;
        let task_notifier = notifier.clone();
        inner.tasks.spawn(async move {
            let renew = kv_core::lock::keep_alive(ttl, task_notifier.clone(), move || {
                let renewer = renewer.clone();
                async move { renewer.renew().await }
            });
            tokio::select! {
                _ = renew => {}
                _ = watcher.watch_for_loss(&task_notifier) => {}
                _ = task_notifier.ended() => {}
            }
        });
        Ok(Acquired {
            fencing_token,
            notifier,
            lease,
            held: Box::new(HeldHandle(held)),
        })
    }
}

/// An acquired lock: the key's marker was created by the write whose zxid is `owner`.
#[derive(Debug)]
struct Held {
    inner: Arc<Inner>,
    key: String,
    owner: i64,
    marker_version: AtomicI32,
    generation: u64,
    /// The marker's data (its TTL), rewritten by every renewal.
    data: Vec<u8>,
}

impl Held {
    /// The marker's stat if it is still the one this holder created.
    async fn owned_marker(&self, client: &zk::Client) -> Result<Option<zk::Stat>> {
        let state = self.inner.read_key(client, &self.key).await?;
        Ok(state
            .marker
            .map(|m| m.stat)
            .filter(|m| m.czxid == self.owner && state.node.is_some()))
    }

    /// One renewal: touches the marker (its mtime is what the TTL counts from).
    async fn renew(&self) -> Result<bool> {
        let inner = &self.inner;
        let client = inner.client().await?;
        if inner.generation() != self.generation {
            tracing::warn!(key = %self.key, "the ZooKeeper session expired: the lock is lost");
            return Ok(false);
        }
        let marker = inner.marker_path(&self.key);
        for _ in 0..4 {
            let version = self.marker_version.load(Ordering::SeqCst);
            match inner
                .timed("renew", client.set_data(&marker, &self.data, Some(version)))
                .await?
            {
                Ok(stat) => {
                    if stat.czxid != self.owner {
                        return Ok(false);
                    }
                    self.marker_version.store(stat.version, Ordering::SeqCst);
                    return Ok(true);
                }
                Err(zk::Error::NoNode) => return Ok(false),
                Err(zk::Error::BadVersion) => match self.owned_marker(&client).await? {
                    Some(stat) => self.marker_version.store(stat.version, Ordering::SeqCst),
                    None => return Ok(false),
                },
                Err(e) => return Err(map_zk(e, "renew", inner.config.request_timeout)),
            }
        }
        Ok(true)
    }

    /// Marks the lock lost as soon as the key is deleted or overwritten, or the session
    /// expires (faster than the next renewal would notice).
    async fn watch_for_loss(&self, notifier: &LeaseNotifier) {
        let inner = &self.inner;
        let Ok(client) = inner.client().await else {
            return std::future::pending().await;
        };
        let path = inner.node_path(&self.key);
        let Ok(mut watcher) = inner
            .request("watch", client.watch(&path, zk::AddWatchMode::Persistent))
            .await
        else {
            return std::future::pending().await;
        };
        loop {
            let event = watcher.changed().await;
            if event.event_type == zk::EventType::Session {
                match event.session_state {
                    zk::SessionState::Expired
                    | zk::SessionState::Closed
                    | zk::SessionState::AuthFailed => {
                        if !inner.tasks.is_closed() {
                            tracing::warn!(key = %self.key, "the ZooKeeper session ended: the lock is lost");
                            notifier.lost();
                        }
                        return;
                    }
                    _ => continue,
                }
            }
            match self.owned_marker(&client).await {
                Ok(Some(_)) => {}
                Ok(None) => {
                    notifier.lost();
                    return;
                }
                // Transient: the renewal loop decides.
                Err(_) => {}
            }
        }
    }

    async fn release(&self) -> Result<()> {
        let inner = &self.inner;
        let client = inner.client().await?;
        let owner = self.owner;
        inner
            .delete_key(
                &client,
                &self.key,
                |state| match &state.marker {
                    Some(m) if m.stat.czxid == owner => Ok(()),
                    _ => Err(Error::KeyModified { key: String::new() }),
                },
                false,
            )
            .await
            .map(|_| ())
            .or_else(|e| match e {
                // Not ours any more: nothing to release.
                Error::KeyModified { .. } => Ok(()),
                e => Err(e),
            })
    }
}

#[derive(Debug)]
struct HeldHandle(Arc<Held>);

#[async_trait]
impl HeldLock for HeldHandle {
    async fn release(self: Box<Self>) -> Result<()> {
        self.0.release().await
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn escapes_what_zookeeper_refuses() {
        use crate::store::{decode_name, encode_key};
        for key in [
            "plain/key",
            "ünï😀",
            "\u{241A}x",
            "a😀b/c\u{241A}",
            "\u{10FFFF}",
        ] {
            let encoded = encode_key(key);
            assert!(encoded.chars().all(|c| (c as u32) <= 0xFFFF), "{encoded}");
            let decoded: Vec<String> = encoded.split('/').map(decode_name).collect();
            assert_eq!(decoded.join("/"), key);
        }
        assert_eq!(encode_key("plain/key"), "plain/key");
        assert_eq!(decode_name("x\u{241A}zz"), "x\u{241A}zz");
    }

    #[test]
    fn parses_tickets() {
        assert_eq!(super::ticket_sequence("__kvlock-0000000042"), Some(42));
        assert_eq!(super::ticket_sequence("b"), None);
    }
}
