//! Locks: a queue of ephemeral sequential tickets (each waiter watches only its predecessor),
//! then the key itself written with a TTL marker renewed in the background.
//!
//! Every acquisition creates, in the transaction that writes the key, an ephemeral *owner
//! node* below the new marker, named uniquely for that acquisition. A marker cannot be
//! deleted while it has a child, so while the owner node exists the marker at that path is
//! the one this acquisition created; whoever replaces or deletes the key deletes the owner
//! node in the same transaction. Hence a renewal is one multi-op,
//! `[check(owner node), setData(marker)]`, that the server refuses unless this very
//! acquisition still owns the key: a late renewal can never touch a later holder's marker
//! (data versions restart at 0 with every new marker, so a version check alone could).
//! The child also makes the server's TTL sweeper unable to delete a fresh marker at a path
//! it had listed as expired just before (it deletes by path and only skips nodes with
//! children).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use kv_core::{
    Acquired, CancellationToken, Error, HeldLock, LeaseNotifier, Lock, LockBackend, LockOptions,
    LockState, Result,
};
use zookeeper_client as zk;

use crate::store::{BACKEND, Inner, LOCKS_DIR, OWNER_PREFIX, map_zk};

const TICKET_PREFIX: &str = "__kvlock-";

/// Numbers the acquisitions of this process, for unique owner node names.
static ACQUISITIONS: AtomicU64 = AtomicU64::new(0);

/// A fresh owner node name: the session (unique among live sessions; the node is ephemeral,
/// so it never outlives it) and this process's acquisition number, so that no later
/// acquisition, by anyone, can create a node of the same name.
fn owner_name(client: &zk::Client) -> String {
    format!(
        "{OWNER_PREFIX}{:016x}-{}",
        client.session_id().0 as u64,
        ACQUISITIONS.fetch_add(1, Ordering::Relaxed)
    )
}

/// What a successful write of the key returns to `acquire`.
struct Taken {
    /// The acquiring write's stat (`mzxid` = the fencing token).
    stat: zk::Stat,
    /// The name of the owner node created below the marker.
    owner: String,
    /// When the acquiring transaction was sent: the marker's `mtime` is not earlier.
    written_at: tokio::time::Instant,
}

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

    /// First in line: waits until the key is absent, then writes it with a TTL marker and an
    /// owner node below it, in one transaction (which also deletes an expired predecessor's
    /// marker and owner node).
    async fn take_key(&self, client: &zk::Client, abandon: &CancellationToken) -> Result<Taken> {
        let inner = &self.inner;
        let owner = owner_name(client);
        loop {
            match inner
                .write_key(
                    client,
                    &self.key,
                    &self.value,
                    Some(self.ttl),
                    crate::store::Expect::Absent,
                    Some(&owner),
                )
                .await
            {
                Ok((stat, written_at)) => {
                    return Ok(Taken {
                        stat,
                        owner,
                        written_at,
                    });
                }
                Err(Error::KeyExists { .. }) => {}
                Err(e) => return Err(e),
            }
            // Someone holds the key (another lock, or a plain put): wait until it goes. Its
            // deadline is on the server's clock, and must have passed even at the low end of
            // this handle's estimate of it (see `clock.rs`).
            let state = inner.read_key(client, &self.key).await?;
            if !state.blocks_lock() {
                continue;
            }
            let deadline = state.lock_deadline();
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
                tokio::time::sleep(inner.clock.now().until(deadline, true)).await;
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
        let (taken, generation) = loop {
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
                Ok(taken) => break (taken, generation),
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
        let Taken {
            stat,
            owner,
            written_at,
        } = taken;
        let fencing_token = stat.mzxid as u64;
        let (notifier, lease) = LeaseNotifier::new(fencing_token);
        let held = Arc::new(Held {
            inner: inner.clone(),
            key: self.key.clone(),
            owner: stat.mzxid,
            owner_path: inner.marker_child_path(&self.key, &owner),
            marker_path: inner.marker_path(&self.key),
            generation,
            ttl: self.ttl,
            renewed_at: StdMutex::new(written_at),
            data: crate::store::marker_data(Some(self.ttl)),
        });
        let renewer = held.clone();
        let watcher = held.clone();
        let ttl = self.ttl;
        let task_notifier = notifier.clone();
        let task_lease = lease.clone();
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
            if task_lease.state() == LockState::Lost {
                watcher.abandon().await;
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

/// An acquired lock: the key's marker was created by the write whose zxid is `owner`,
/// together with the ephemeral node at `owner_path` below it.
#[derive(Debug)]
struct Held {
    inner: Arc<Inner>,
    key: String,
    owner: i64,
    /// The owner node: while it exists, the marker is this acquisition's.
    owner_path: String,
    marker_path: String,
    generation: u64,
    ttl: Duration,
    /// When the last successful renewal (or the acquiring write) was sent: the marker's
    /// `mtime` is not earlier, so the key is visible until at least this plus the TTL.
    renewed_at: StdMutex<tokio::time::Instant>,
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

    /// One renewal: touches the marker (its mtime is what the TTL counts from), in one
    /// multi-op that the server refuses unless this acquisition's owner node still exists,
    /// i.e. unless the marker is still the one this acquisition created.
    async fn renew(&self) -> Result<bool> {
        let inner = &self.inner;
        let renewed_at = *self.renewed_at.lock().unwrap_or_else(|e| e.into_inner());
        if renewed_at.elapsed() >= self.ttl {
            // The process did not run for a whole TTL (stopped, suspended): the key may have
            // expired, so readers may have seen it gone. Do not bring it back.
            tracing::warn!(key = %self.key, "no renewal for a whole TTL: the lock is lost");
            return Ok(false);
        }
        let client = inner.client().await?;
        if inner.generation() != self.generation {
            tracing::warn!(key = %self.key, "the ZooKeeper session expired: the lock is lost");
            return Ok(false);
        }
        let mut writer = client.new_multi_writer();
        let build = (|| {
            writer.add_check_version(&self.owner_path, -1)?;
            writer.add_set_data(&self.marker_path, &self.data, None)
        })();
        build.map_err(|e| Error::backend(BACKEND, e))?;
        let started = tokio::time::Instant::now();
        match inner.timed("renew", writer.commit()).await? {
            Ok(results) => {
                *self.renewed_at.lock().unwrap_or_else(|e| e.into_inner()) = started;
                // The answer carries the server's clock: a free sample.
                if let Some(stat) = results.into_iter().find_map(|r| match r {
                    zk::MultiWriteResult::SetData { stat } => Some(stat),
                    _ => None,
                }) {
                    inner.clock.record_write(started, stat.mtime);
                }
                Ok(true)
            }
            // The owner node is gone: the key was deleted or overwritten (a takeover after
            // expiry deletes it with the expired marker), or the session ended.
            Err(zk::Error::NoNode) => Ok(false),
            Err(e) => Err(map_zk(e, "renew", inner.config.request_timeout)),
        }
    }

    /// After the lock was lost: deletes this acquisition's owner node if it is still there
    /// (nobody took the key over), so that the server can sweep the expired marker. Only
    /// ever touches this acquisition's own node. Best effort.
    async fn abandon(&self) {
        let inner = &self.inner;
        if inner.generation() != self.generation {
            return; // The node went with its session.
        }
        let Ok(client) = inner.current_client() else {
            return;
        };
        match inner
            .timed("unlock", client.delete(&self.owner_path, None))
            .await
        {
            Ok(Ok(()) | Err(zk::Error::NoNode)) => {}
            Ok(Err(error)) => tracing::debug!(%error, "could not remove a lost lock's owner node"),
            Err(error) => tracing::debug!(%error, "could not remove a lost lock's owner node"),
        }
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
                    // Reconnected, maybe to another member: zookeeper-client 0.11 does not
                    // register persistent watches again there, so watch again, then check
                    // what happened meanwhile.
                    zk::SessionState::SyncConnected | zk::SessionState::ConnectedReadOnly => {
                        if let Ok(again) = inner
                            .request("watch", client.watch(&path, zk::AddWatchMode::Persistent))
                            .await
                        {
                            watcher = again;
                        }
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

    /// Deletes the key, its marker and the owner node in one transaction, if the marker is
    /// still this acquisition's.
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
