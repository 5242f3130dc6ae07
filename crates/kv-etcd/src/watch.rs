//! The watch loops behind `watch` and `watch_tree`.
//!
//! One loop serves both: it reads the current state at revision `R` and publishes it, then
//! opens an etcd watch on the same key or range starting at `R + 1`, so no change between the
//! read and the watch is missed. Every event is applied to a local copy of the state, and the
//! state is published once per etcd revision (a transaction that touches several keys, like
//! `delete_tree`, is one change). If the gRPC stream breaks, the watch is reopened (with
//! backoff) from the last seen revision + 1. If etcd compacted that revision away, the loop
//! logs a warning and resynchronises from a fresh read: the stream then carries the current
//! state (and nothing in between was lost that the current state does not reflect).

use std::collections::BTreeMap;
use std::time::Duration;

use etcd_client::{EventType, GetOptions, WatchOptions, WatchResponse};
use kv_core::{Error, KvPair, Result, WatchSender};
use tokio::time::Instant;

use crate::client::{Inner, header_revision};
use crate::lease;

/// What is watched: one stored key, or the stored range `[start, end)`.
#[derive(Debug, Clone)]
pub(crate) enum Mode {
    Key(Vec<u8>),
    Tree(Vec<u8>, Vec<u8>),
}

/// A watched key as the loop knows it: the pair it publishes and the key's lease, whose
/// deadline (for the TTL leases of this crate) the loop enforces itself.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub(crate) pair: KvPair,
    pub(crate) lease: i64,
}

/// The watched keys by user key.
pub(crate) type State = BTreeMap<String, Entry>;

/// The state a watch publishes, built from the watched keys in key order.
pub(crate) trait Snapshot: Clone + PartialEq + Send + Sync + 'static {
    fn from_map(map: &State) -> Self;
}

impl Snapshot for Option<KvPair> {
    fn from_map(map: &State) -> Self {
        map.values().next().map(|entry| entry.pair.clone())
    }
}

impl Snapshot for Vec<KvPair> {
    fn from_map(map: &State) -> Self {
        map.values().map(|entry| entry.pair.clone()).collect()
    }
}

/// Errors after which retrying cannot help: the stream ends with them.
fn is_fatal(error: &Error) -> bool {
    matches!(
        error,
        Error::PermissionDenied { .. } | Error::Config(_) | Error::Closed
    )
}

/// Adds a stored key/value to the state, unless it is not a user key or it is expired (its
/// lease then goes to `expired`).
fn insert(inner: &Inner, map: &mut State, kv: &etcd_client::KeyValue, expired: &mut Vec<i64>) {
    let Some(key) = inner.to_key(kv.key()) else {
        return;
    };
    if lease::is_expired(&inner.clock, kv.lease()) {
        expired.push(kv.lease());
        map.remove(&key);
    } else if let Some(pair) = inner.to_pair(kv) {
        map.insert(
            key,
            Entry {
                pair,
                lease: kv.lease(),
            },
        );
    }
}

/// Drops the entries whose TTL lease is past its deadline; returns their leases.
fn drop_expired(inner: &Inner, map: &mut State) -> Vec<i64> {
    let mut expired = Vec::new();
    map.retain(|_, entry| {
        let gone = lease::is_expired(&inner.clock, entry.lease);
        if gone {
            expired.push(entry.lease);
        }
        !gone
    });
    expired
}

/// When the next entry expires (the earliest deadline of the TTL leases of this crate in the
/// state, when the earliest the server's time can be reaches it), as a timer instant. While
/// the server's time is unknown, a check again a little later.
fn next_expiry(inner: &Inner, map: &State) -> Option<Instant> {
    let at = map.values().filter_map(|e| lease::expiry(e.lease)).min()?;
    let wait = match inner.clock.now() {
        Some(now) => at.saturating_sub(u64::try_from(now.earliest).unwrap_or(0)),
        None => UNKNOWN_TIME_RECHECK.as_millis() as u64,
    };
    Some(Instant::now() + Duration::from_millis(wait))
}

/// How soon a watch holding TTL keys looks again while the server's time is unknown.
const UNKNOWN_TIME_RECHECK: Duration = Duration::from_secs(1);

/// Reads the current state; returns it and the revision it was read at. Expired keys are
/// left out and their leases revoked.
async fn read(inner: &Inner, mode: &Mode, consistent: bool) -> Result<(State, i64)> {
    let mut map = BTreeMap::new();
    let mut expired = Vec::new();
    let revision = match mode {
        Mode::Key(key) => {
            let mut options = GetOptions::new();
            if !consistent {
                options = options.with_serializable();
            }
            let mut kv = inner.kv.clone();
            let response = inner
                .call("watch", kv.get(key.clone(), Some(options)))
                .await?;
            for kv in response.kvs() {
                insert(inner, &mut map, kv, &mut expired);
            }
            header_revision(response.header())
        }
        Mode::Tree(start, end) => {
            let (kvs, revision) = inner
                .range_all(start.clone(), end.clone(), consistent, false, "watch_tree")
                .await?;
            for kv in &kvs {
                insert(inner, &mut map, kv, &mut expired);
            }
            revision
        }
    };
    lease::revoke_all(inner, expired).await;
    Ok((map, revision))
}

/// Opens an etcd watch on `mode` from `start_revision`.
async fn open(inner: &Inner, mode: &Mode, start_revision: i64) -> Result<etcd_client::WatchStream> {
    let (key, options) = match mode {
        Mode::Key(key) => (key.clone(), WatchOptions::new()),
        Mode::Tree(start, end) => (start.clone(), WatchOptions::new().with_range(end.clone())),
    };
    let options = options.with_start_revision(start_revision);
    let mut client = inner.watch.clone();
    inner.call("watch", client.watch(key, Some(options))).await
}

/// The loop's etcd watch: open, or closed and to be (re)opened at an instant.
enum Connection {
    Open(Box<etcd_client::WatchStream>),
    Closed { reopen_at: Instant },
}

/// What woke the loop up.
enum Step {
    Opened(Box<etcd_client::WatchStream>),
    OpenFailed(Error),
    Message(Result<Option<WatchResponse>, etcd_client::Error>),
    Expiry,
}

/// Waits for the connection's next step. Cancel-safe: the loop drops it when an entry
/// expires first (an interrupted open is started again, a stream loses nothing).
async fn next_step(
    inner: &Inner,
    mode: &Mode,
    next_revision: i64,
    connection: &mut Connection,
) -> Step {
    match connection {
        Connection::Open(stream) => Step::Message(stream.message().await),
        Connection::Closed { reopen_at } => {
            tokio::time::sleep_until(*reopen_at).await;
            match open(inner, mode, next_revision).await {
                Ok(stream) => Step::Opened(Box::new(stream)),
                Err(error) => Step::OpenFailed(error),
            }
        }
    }
}

/// The loop: runs until the stream is dropped (the task is then aborted), the store is closed
/// (likewise) or a fatal error ends the stream.
pub(crate) async fn run<T: Snapshot>(
    inner: Inner,
    mode: Mode,
    consistent: bool,
    tx: WatchSender<T>,
) {
    run_from(inner, mode, consistent, tx, None).await
}

/// [`run`], optionally resuming from a state already published at a revision (instead of
/// reading it first): what the loop does after a broken connection. Tests use it to resume
/// from a compacted revision.
///
/// Besides etcd's events, the loop enforces the deadlines of the keys it holds (see
/// [`crate::lease`]): a timer fires at the earliest one (plus the clock tolerance), drops the
/// expired keys, publishes the state and revokes their leases, whether or not the server is
/// reachable at that moment.
pub(crate) async fn run_from<T: Snapshot>(
    inner: Inner,
    mode: Mode,
    consistent: bool,
    tx: WatchSender<T>,
    mut resume: Option<(State, i64)>,
) {
    let mut backoff = kv_core::Backoff::default();
    'resync: loop {
        let read = match resume.take() {
            Some(state) => Ok(state),
            None => read(&inner, &mode, consistent).await,
        };
        let (mut map, revision) = match read {
            Ok(read) => read,
            Err(error) if is_fatal(&error) => return tx.fail(error),
            Err(error) => {
                tracing::debug!(%error, "watch: reading the current state failed, retrying");
                backoff.wait().await;
                continue 'resync;
            }
        };
        let expired = drop_expired(&inner, &mut map);
        if !tx.send(T::from_map(&map)) {
            return;
        }
        lease::revoke_all(&inner, expired).await;
        let mut next_revision = revision + 1;
        let mut connection = Connection::Closed {
            reopen_at: Instant::now(),
        };
        loop {
            let expiry = next_expiry(&inner, &map);
            let timer = async move {
                match expiry {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            let step = tokio::select! {
                step = next_step(&inner, &mode, next_revision, &mut connection) => step,
                () = timer => Step::Expiry,
            };
            let response = match step {
                Step::Expiry => {
                    let expired = drop_expired(&inner, &mut map);
                    if !expired.is_empty() {
                        if !tx.send(T::from_map(&map)) {
                            return;
                        }
                        lease::revoke_all(&inner, expired).await;
                    }
                    continue;
                }
                Step::Opened(stream) => {
                    connection = Connection::Open(stream);
                    continue;
                }
                Step::OpenFailed(error) if is_fatal(&error) => return tx.fail(error),
                Step::OpenFailed(error) => {
                    tracing::debug!(%error, "watch: opening the etcd watch failed, retrying");
                    connection = reopen_later(&mut backoff);
                    continue;
                }
                Step::Message(Ok(Some(response))) => response,
                Step::Message(Ok(None)) => {
                    tracing::debug!("watch: the etcd watch stream ended, reopening");
                    connection = reopen_later(&mut backoff);
                    continue;
                }
                Step::Message(Err(error)) => {
                    tracing::debug!(%error, "watch: the etcd watch stream broke, reopening");
                    connection = reopen_later(&mut backoff);
                    continue;
                }
            };
            // Every response carries the server's current revision; below one this watch has
            // already seen, the server lost its history (restarted from an empty data
            // directory, restored from an older snapshot). Waiting for the revisions to catch
            // up would leave the watch silent, so it ends here.
            let server_revision = header_revision(response.header());
            if server_revision > 0
                && server_revision < next_revision - 1
                && history_lost(&inner, &mode, next_revision - 1).await
            {
                return tx.fail(Error::backend(
                    crate::client::BACKEND,
                    format!(
                        "the etcd server lost its history: its revision went backwards from {} \
                         to {server_revision} (a member restarted without its data, or a restored \
                         snapshot); this watch belongs to the lost history (watch again), and \
                         fencing tokens start low again",
                        next_revision - 1
                    ),
                ));
            }
            if response.compact_revision() > 0 {
                tracing::warn!(
                    compact_revision = response.compact_revision(),
                    wanted = next_revision,
                    "etcd compacted the revisions a watch needed: resynchronising from a fresh read"
                );
                continue 'resync;
            }
            if response.canceled() && response.cancel_reason().contains("permission denied") {
                return tx.fail(Error::PermissionDenied {
                    backend: crate::client::BACKEND,
                    message: response.cancel_reason().to_owned(),
                });
            }
            if response.canceled() {
                tracing::debug!(
                    reason = response.cancel_reason(),
                    "watch: etcd cancelled the watch, reopening"
                );
                connection = reopen_later(&mut backoff);
                continue;
            }
            backoff.reset();
            let mut pending: Option<i64> = None;
            let mut expired = Vec::new();
            for event in response.events() {
                let Some(kv) = event.kv() else { continue };
                let event_revision = kv.mod_revision();
                if pending.is_some_and(|r| r != event_revision) && !tx.send(T::from_map(&map)) {
                    return;
                }
                pending = Some(event_revision);
                next_revision = next_revision.max(event_revision + 1);
                match event.event_type() {
                    EventType::Put => insert(&inner, &mut map, kv, &mut expired),
                    EventType::Delete => {
                        if let Some(key) = inner.to_key(kv.key()) {
                            map.remove(&key);
                        }
                    }
                }
            }
            if pending.is_some() && !tx.send(T::from_map(&map)) {
                return;
            }
            lease::revoke_all(&inner, expired).await;
        }
    }
}

/// Confirms a revision below `seen` with a linearizable read (a member that lags behind the
/// one the watch read from answers with a lower revision for a moment; a linearizable read
/// waits until it caught up). True when the server's revision is still below `seen`.
async fn history_lost(inner: &Inner, mode: &Mode, seen: i64) -> bool {
    match read(inner, mode, true).await {
        Ok((_, revision)) => revision < seen,
        // Unreachable again: decide on the next response.
        Err(_) => false,
    }
}

/// A closed connection to reopen after the next back-off delay.
fn reopen_later(backoff: &mut kv_core::Backoff) -> Connection {
    Connection::Closed {
        reopen_at: Instant::now() + backoff.next_delay(),
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use futures::StreamExt;
    use kv_core::{ReadOptions, Store, TaskSet, WriteOptions};

    use super::*;
    use crate::{Config, EtcdStore};

    async fn store() -> EtcdStore {
        let endpoints = std::env::var("KV_TEST_ETCD_ENDPOINTS").unwrap_or_else(|_| {
            panic!(
                "KV_TEST_ETCD_ENDPOINTS not set: run the README test command or `eval \"$(scripts/servers env)\"`"
            )
        });
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let config = Config::builder()
            .endpoints(endpoints.split(','))
            .namespace(format!("kvtest-etcd-compaction-{nanos}"))
            .build()
            .unwrap();
        EtcdStore::connect(config).await.unwrap()
    }

    async fn next(
        stream: &mut futures::stream::BoxStream<'static, Result<Option<KvPair>>>,
    ) -> Result<Option<KvPair>> {
        tokio::time::timeout(Duration::from_secs(5), stream.next())
            .await
            .expect("an item in time")
            .expect("stream open")
    }

    /// A watch that resumes from a revision etcd has compacted away resynchronises from a
    /// fresh read: the stream carries on with the current state and later changes, it does
    /// not end.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn compaction_forces_a_resync_not_an_end() {
        let store = store().await;
        let inner = store.inner().unwrap();
        store
            .put("k", "v1".into(), WriteOptions::default())
            .await
            .unwrap();
        let first = store
            .get("k", ReadOptions::default())
            .await
            .unwrap()
            .unwrap();
        for value in ["v2", "v3"] {
            store
                .put("k", value.into(), WriteOptions::default())
                .await
                .unwrap();
        }
        let mut kv = inner.kv.clone();
        let now = header_revision(kv.get("any", None).await.unwrap().header());
        kv.compact(now, None).await.unwrap();

        // Resume as after a broken connection: state v1 published at its revision, which is
        // now compacted.
        let tasks = TaskSet::new();
        let mut state = BTreeMap::new();
        state.insert(
            "k".to_owned(),
            Entry {
                pair: first.clone(),
                lease: 0,
            },
        );
        let resume = Some((state, first.last_index as i64));
        let mode = Mode::Key(inner.full_key("k"));
        let loop_inner = inner.clone();
        let mut stream = kv_core::spawn_watch(&tasks, move |tx| {
            run_from::<Option<KvPair>>(loop_inner, mode, true, tx, resume)
        });
        assert_eq!(next(&mut stream).await.unwrap(), Some(first));
        let resynced = next(&mut stream).await.unwrap().unwrap();
        assert_eq!(resynced.value, "v3", "the fresh read after compaction");
        store
            .put("k", "v4".into(), WriteOptions::default())
            .await
            .unwrap();
        let after = next(&mut stream).await.unwrap().unwrap();
        assert_eq!(after.value, "v4", "the watch goes on after the resync");
        assert!(after.last_index > resynced.last_index);
        drop(stream);
        store.delete_tree("").await.unwrap();
        store.close().await.unwrap();
    }
}
