//! Watch loops: fed by the database's in-process change broadcast, no polling.
//!
//! A watch subscribes to the broadcast, then reads the current state together with the index
//! of the last commit it reflects. Every later change with a higher index is applied to that
//! state in commit order, so each change yields exactly one new state and states never go
//! backwards. A TTL deadline in the state arms a timer: at the deadline the key leaves the
//! state (readers stop seeing it at that very moment, before the sweeper removes it). A
//! watcher that falls more than the channel's capacity behind re-reads the state.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use kv_core::ttl::{is_expired, now_millis};
use kv_core::{Error, KvPair, WatchSender, WatchStream, WatchTreeStream, spawn_watch};
use tokio::sync::broadcast::{self, error::RecvError};
use tokio::time::Instant;

use crate::engine::{Change, Engine, Entry, Update};
use crate::store::{Handle, blocking};

/// When a deadline (Unix ms) is reached, as a tokio instant; 1 ms late so that the wall
/// clock has passed it when the timer fires.
pub(crate) fn instant_of(deadline: u64) -> Instant {
    Instant::now() + Duration::from_millis(deadline.saturating_sub(now_millis()) + 1)
}

/// Sleeps until the earliest deadline, or forever when there is none.
async fn sleep_until_deadline(deadline: Option<u64>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(instant_of(d)).await,
        None => std::future::pending().await,
    }
}

/// Receives the next change with an index above `seen`; `None` after a lag (the caller
/// re-reads).
async fn next_change(rx: &mut broadcast::Receiver<Arc<Change>>, seen: u64) -> Option<Arc<Change>> {
    loop {
        match rx.recv().await {
            Ok(change) if change.seq > seen => return Some(change),
            Ok(_) => continue,
            Err(RecvError::Lagged(_)) => return None,
            // The engine holds the sender and we hold the engine: cannot happen.
            Err(RecvError::Closed) => std::future::pending().await,
        }
    }
}

fn to_pair(prefix: &str, key: &str, entry: &Entry) -> KvPair {
    KvPair {
        key: key.strip_prefix(prefix).unwrap_or(key).to_owned(),
        value: entry.value.clone(),
        last_index: entry.index,
    }
}

/// `watch(key)`; `full` is the stored key.
pub(crate) async fn watch_key(
    handle: &Handle,
    engine: Arc<Engine>,
    full: String,
) -> kv_core::Result<WatchStream> {
    let prefix = handle.prefix.clone();
    let mut rx = engine.subscribe();
    let read_key = full.clone();
    let (mut state, mut seen) = engine.get(&read_key)?;
    Ok(spawn_watch(
        &handle.tasks,
        move |tx: WatchSender<Option<KvPair>>| async move {
            loop {
                if state.as_ref().is_some_and(Entry::is_expired) {
                    state = None;
                }
                if !tx.send(state.as_ref().map(|e| to_pair(&prefix, &full, e))) {
                    return;
                }
                let deadline = state.as_ref().map(|e| e.deadline).filter(|d| *d != 0);
                let resync = tokio::select! {
                    _ = tx.closed() => return,
                    _ = sleep_until_deadline(deadline) => false,
                    change = next_change(&mut rx, seen) => match change {
                        Some(change) => {
                            seen = change.seq;
                            let mut resync = false;
                            for (key, update) in &change.updates {
                                if *key == full {
                                    match update {
                                        Update::Set(entry) => state = Some(entry.clone()),
                                        Update::Removed => state = None,
                                        Update::Large { .. } => resync = true,
                                    }
                                }
                            }
                            resync
                        }
                        // Lagged behind: re-read.
                        None => true,
                    },
                };
                if resync {
                    match engine.get(&full) {
                        Ok((entry, seq)) => {
                            state = entry;
                            seen = seq;
                        }
                        Err(error) => return fail(tx, error),
                    }
                }
            }
        },
    ))
}

/// `watch_tree(dir)`; `prefix` is the stored prefix of the directory's descendants.
pub(crate) async fn watch_tree(
    handle: &Handle,
    engine: Arc<Engine>,
    prefix: String,
) -> kv_core::Result<WatchTreeStream> {
    let timeout = handle.config.timeout;
    let namespace = handle.prefix.clone();
    let mut rx = engine.subscribe();
    let read_prefix = prefix.clone();
    let (entries, mut seen) = blocking(engine.clone(), timeout, "watch_tree", move |e| {
        e.list(&read_prefix)
    })
    .await?;
    let mut state: BTreeMap<String, Entry> = entries.into_iter().collect();
    Ok(spawn_watch(
        &handle.tasks,
        move |tx: WatchSender<Vec<KvPair>>| async move {
            loop {
                state.retain(|_, e| !is_expired(e.deadline));
                let snapshot = state
                    .iter()
                    .map(|(k, e)| to_pair(&namespace, k, e))
                    .collect();
                if !tx.send(snapshot) {
                    return;
                }
                let deadline = state.values().map(|e| e.deadline).filter(|d| *d != 0).min();
                let resync = tokio::select! {
                    _ = tx.closed() => return,
                    _ = sleep_until_deadline(deadline) => false,
                    change = next_change(&mut rx, seen) => match change {
                        Some(change) => {
                            seen = change.seq;
                            let mut resync = false;
                            for (key, update) in &change.updates {
                                if key.starts_with(prefix.as_str()) {
                                    match update {
                                        Update::Set(entry) => {
                                            state.insert(key.clone(), entry.clone());
                                        }
                                        Update::Removed => {
                                            state.remove(key);
                                        }
                                        Update::Large { .. } => resync = true,
                                    }
                                }
                            }
                            resync
                        }
                        // Lagged behind: re-read.
                        None => true,
                    },
                };
                if resync {
                    let read_prefix = prefix.clone();
                    match blocking(engine.clone(), timeout, "watch_tree", move |e| {
                        e.list(&read_prefix)
                    })
                    .await
                    {
                        Ok((entries, seq)) => {
                            state = entries.into_iter().collect();
                            seen = seq;
                        }
                        Err(error) => return fail(tx, error),
                    }
                }
            }
        },
    ))
}

fn fail<T: Clone + PartialEq + Send + Sync + 'static>(tx: WatchSender<T>, error: Error) {
    tracing::warn!(%error, "kv-bolt: a watch could not re-read the database");
    tx.fail(error);
}
