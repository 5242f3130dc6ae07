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

use etcd_client::{EventType, GetOptions, WatchOptions};
use kv_core::{Error, KvPair, Result, WatchSender};

use crate::client::{Inner, header_revision};

/// What is watched: one stored key, or the stored range `[start, end)`.
#[derive(Debug, Clone)]
pub(crate) enum Mode {
    Key(Vec<u8>),
    Tree(Vec<u8>, Vec<u8>),
}

/// The state a watch publishes, built from the watched keys in key order.
pub(crate) trait Snapshot: Clone + PartialEq + Send + Sync + 'static {
    fn from_map(map: &BTreeMap<String, KvPair>) -> Self;
}

impl Snapshot for Option<KvPair> {
    fn from_map(map: &BTreeMap<String, KvPair>) -> Self {
        map.values().next().cloned()
    }
}

impl Snapshot for Vec<KvPair> {
    fn from_map(map: &BTreeMap<String, KvPair>) -> Self {
        map.values().cloned().collect()
    }
}

/// Errors after which retrying cannot help: the stream ends with them.
fn is_fatal(error: &Error) -> bool {
    matches!(
        error,
        Error::PermissionDenied { .. } | Error::Config(_) | Error::Closed
    )
}

/// Reads the current state; returns it and the revision it was read at.
async fn read(
    inner: &Inner,
    mode: &Mode,
    consistent: bool,
) -> Result<(BTreeMap<String, KvPair>, i64)> {
    let mut map = BTreeMap::new();
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
            for pair in response.kvs().iter().filter_map(|kv| inner.to_pair(kv)) {
                map.insert(pair.key.clone(), pair);
            }
            header_revision(response.header())
        }
        Mode::Tree(start, end) => {
            let (kvs, revision) = inner
                .range_all(start.clone(), end.clone(), consistent, "watch_tree")
                .await?;
            for pair in kvs.iter().filter_map(|kv| inner.to_pair(kv)) {
                map.insert(pair.key.clone(), pair);
            }
            revision
        }
    };
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
pub(crate) async fn run_from<T: Snapshot>(
    inner: Inner,
    mode: Mode,
    consistent: bool,
    tx: WatchSender<T>,
    mut resume: Option<(BTreeMap<String, KvPair>, i64)>,
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
        if !tx.send(T::from_map(&map)) {
            return;
        }
        let mut next_revision = revision + 1;
        loop {
            let mut stream = match open(&inner, &mode, next_revision).await {
                Ok(stream) => stream,
                Err(error) if is_fatal(&error) => return tx.fail(error),
                Err(error) => {
                    tracing::debug!(%error, "watch: opening the etcd watch failed, retrying");
                    backoff.wait().await;
                    continue;
                }
            };
            loop {
                let response = match stream.message().await {
                    Ok(Some(response)) => response,
                    Ok(None) => {
                        tracing::debug!("watch: the etcd watch stream ended, reopening");
                        break;
                    }
                    Err(error) => {
                        tracing::debug!(%error, "watch: the etcd watch stream broke, reopening");
                        break;
                    }
                };
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
                    break;
                }
                backoff.reset();
                let mut pending: Option<i64> = None;
                for event in response.events() {
                    let Some(kv) = event.kv() else { continue };
                    let event_revision = kv.mod_revision();
                    if pending.is_some_and(|r| r != event_revision) && !tx.send(T::from_map(&map)) {
                        return;
                    }
                    pending = Some(event_revision);
                    next_revision = next_revision.max(event_revision + 1);
                    let Some(key) = inner.to_key(kv.key()) else {
                        continue;
                    };
                    match event.event_type() {
                        EventType::Put => {
                            if let Some(pair) = inner.to_pair(kv) {
                                map.insert(key, pair);
                            }
                        }
                        EventType::Delete => {
                            map.remove(&key);
                        }
                    }
                }
                if pending.is_some() && !tx.send(T::from_map(&map)) {
                    return;
                }
            }
            backoff.wait().await;
        }
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
        state.insert("k".to_owned(), first.clone());
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
