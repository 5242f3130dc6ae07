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

/// Why a waiter may take the key now, proven inside the multi-op that takes it.
#[derive(Clone, Copy)]
enum Turn<'a> {
    /// This ticket is first in the queue: the multi deletes it (it must still exist).
    Ticket(&'a str),
    /// Nobody is queued: the multi creates the queue directory at this path, which fails if
    /// it exists. Waiters that come later queue in it; the holder deletes it again on
    /// release if it is still empty.
    NoQueue(&'a str),
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
    /// Takes a ticket in the queue; returns its full path and the queue's tickets as listed
    /// right after it was created. The listing is sent before the creation's answer arrives
    /// (the session's requests are served in order, so it includes the new ticket): one round
    /// trip for both.
    async fn enqueue(&self, client: &zk::Client) -> Result<(String, Vec<String>)> {
        let inner = &self.inner;
        let queue = queue_path(inner, &self.key);
        let prefix = format!("{queue}/{TICKET_PREFIX}");
        let options = inner.options(zk::CreateMode::EphemeralSequential);
        for _ in 0..16 {
            let created = client.create(&prefix, &[], &options);
            let listed = client.list_children(&queue);
            let after = inner.config.request_timeout;
            let (created, listed) =
                tokio::time::timeout(after, async { tokio::join!(created, listed) })
                    .await
                    .map_err(|_| Error::Timeout {
                        backend: BACKEND,
                        operation: "lock",
                        after,
                    })?;
            match created {
                Ok((_, sequence)) => {
                    let ticket = format!("{prefix}{sequence}");
                    return match listed {
                        Ok(tickets) => Ok((ticket, tickets)),
                        // Unlikely (the queue was removed between the two): list it again.
                        Err(_) => {
                            let tickets =
                                inner.request("lock", client.list_children(&queue)).await?;
                            Ok((ticket, tickets))
                        }
                    };
                }
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

    /// Waits until `ticket` is first in its queue. True when the last listing showed it alone
    /// (nobody queued behind it then).
    async fn wait_turn(
        &self,
        client: &zk::Client,
        ticket: &str,
        listed: Vec<String>,
        abandon: &CancellationToken,
    ) -> Result<bool> {
        let inner = &self.inner;
        let queue = queue_path(inner, &self.key);
        let mine = ticket
            .rsplit('/')
            .next()
            .and_then(ticket_sequence)
            .unwrap_or(i64::MAX);
        let mut listed = Some(listed);
        loop {
            let names = match listed.take() {
                Some(names) => names,
                None => inner.request("lock", client.list_children(&queue)).await?,
            };
            let mut tickets: Vec<(i64, String)> = names
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
                return Ok(tickets.len() == 1);
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
    async fn take_key(
        &self,
        client: &zk::Client,
        ticket: &str,
        abandon: &CancellationToken,
    ) -> Result<(Taken, bool)> {
        let inner = &self.inner;
        let owner = owner_name(client);
        if let Some(taken) = self
            .take_absent_key(client, Turn::Ticket(ticket), &owner)
            .await?
        {
            return Ok((taken, true));
        }
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
                    let taken = Taken {
                        stat,
                        owner,
                        written_at,
                    };
                    return Ok((taken, false));
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

    /// The uncontended case in one multi-op, without reading the key first: the key's node
    /// exists and has no marker (a parent-only node, or the empty node a delete or unlock
    /// leaves until the server sweeps it). Sets the value, creates the TTL marker and the
    /// owner node, and (see [`Turn`]) deletes the ticket or creates the queue directory, all
    /// at once. Any other state fails the multi as a whole (`NoNode`: no node or parent yet,
    /// or the ticket is gone; `NodeExists`: a marker, live or expired, or a queue) and
    /// nothing is written: `Ok(None)`, the caller takes the general path.
    async fn take_absent_key(
        &self,
        client: &zk::Client,
        turn: Turn<'_>,
        owner: &str,
    ) -> Result<Option<Taken>> {
        let inner = &self.inner;
        let marker = inner.marker_path(&self.key);
        let mut writer = client.new_multi_writer();
        let build = (|| {
            writer.add_set_data(&inner.node_path(&self.key), &self.value, None)?;
            writer.add_create(
                &marker,
                &crate::store::marker_data(Some(self.ttl)),
                &inner.marker_options(Some(self.ttl)),
            )?;
            writer.add_create(
                &inner.marker_child_path(&self.key, owner),
                &[],
                &inner.options(zk::CreateMode::Ephemeral),
            )?;
            match turn {
                Turn::Ticket(ticket) => writer.add_delete(ticket, None),
                Turn::NoQueue(queue) => {
                    writer.add_create(queue, &[], &inner.options(zk::CreateMode::Container))
                }
            }
        })();
        build.map_err(|e| Error::backend(BACKEND, e))?;
        let sent_at = tokio::time::Instant::now();
        match inner.timed("lock", writer.commit()).await? {
            Ok(results) => Ok(Some(Taken {
                stat: inner.record_set_data(results, sent_at)?,
                owner: owner.to_owned(),
                written_at: sent_at,
            })),
            Err(zk::Error::NoNode | zk::Error::NodeExists) => Ok(None),
            Err(e) => Err(map_zk(e, "lock", inner.config.request_timeout)),
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
        let queue = queue_path(inner, &self.key);
        let (taken, generation, own_queue) = loop {
            let client = inner.client().await?;
            let generation = inner.generation();
            // Nobody queued and the key free: take it without a ticket (one round trip).
            let owner = owner_name(&client);
            if let Some(taken) = self
                .take_absent_key(&client, Turn::NoQueue(&queue), &owner)
                .await?
            {
                break (taken, generation, true);
            }
            let (ticket, listed) = self.enqueue(&client).await?;
            let outcome = async {
                let alone = self.wait_turn(&client, &ticket, listed, &abandon).await?;
                Ok::<_, Error>((self.take_key(&client, &ticket, &abandon).await?, alone))
            }
            .await;
            // The key is the guard from now on; the ticket only ordered the waiters. The
            // fast path deleted it in its multi-op already.
            if !matches!(outcome, Ok(((_, true), _))) {
                self.remove_ticket(&client, &ticket).await;
            }
            match outcome {
                // Alone in the queue: its release tries to delete the queue directory too, so
                // that the next lock finds no queue and takes the fast path.
                Ok(((taken, _), alone)) => break (taken, generation, alone),
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
            queue: own_queue.then_some(queue),
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
    /// The queue directory, when this holder created it (it took the key with nobody
    /// queued) or was alone in it: its release deletes it if nobody queued meanwhile, so that
    /// the next lock finds no queue and takes the key without a ticket.
    queue: Option<String>,
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
        // While the owner node exists the marker is this acquisition's (see the module
        // docs), so deleting the owner node first makes the rest safe without a read:
        // one multi-op. Refused as a whole when the owner node is gone (the lock was lost,
        // or the session changed) or something else is below the marker; then the key is
        // read and released only if the marker is still ours.
        if inner.generation() == self.generation {
            // First with the queue directory this holder created, then (someone queued, or
            // the directory is gone) without it.
            let queues = [self.queue.as_deref(), None];
            let tries = if self.queue.is_some() {
                &queues[..]
            } else {
                &queues[1..]
            };
            for queue in tries {
                let mut writer = client.new_multi_writer();
                let build = (|| {
                    writer.add_delete(&self.owner_path, None)?;
                    writer.add_delete(&self.marker_path, None)?;
                    // The node stays, emptied (see `delete_key`).
                    writer.add_set_data(&inner.node_path(&self.key), &[], None)?;
                    match queue {
                        Some(queue) => writer.add_delete(queue, None),
                        None => Ok(()),
                    }
                })();
                build.map_err(|e| Error::backend(BACKEND, e))?;
                match inner.timed("unlock", writer.commit()).await? {
                    Ok(_) => return Ok(()),
                    Err(zk::Error::NoNode | zk::Error::NotEmpty | zk::Error::BadVersion) => {}
                    Err(e) => return Err(map_zk(e, "unlock", inner.config.request_timeout)),
                }
            }
        }
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
