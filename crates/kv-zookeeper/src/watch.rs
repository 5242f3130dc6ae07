//! `watch` and `watch_tree`: persistent (recursive) watches, a re-read after every event, a
//! timer for TTL deadlines, and a new session after expiry.

use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use kv_core::{Error, KvPair, Result, WatchSender, WatchStream, WatchTreeStream, spawn_watch};
use zookeeper_client as zk;

use crate::store::{CLOCK_PREFIX, Inner, LOCKS_DIR, MARKER};

const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

type Reader<T> = for<'a> fn(&'a Inner, &'a zk::Client, &'a str) -> BoxFuture<'a, Result<(T, u64)>>;

/// Watches one key.
pub(crate) fn watch_key(inner: Arc<Inner>, key: String) -> WatchStream {
    let tasks = inner.tasks.clone();
    let path = inner.node_path(&key);
    let read: Reader<Option<KvPair>> = |inner, client, key| {
        Box::pin(async move {
            let state = inner.read_key(client, key).await?;
            Ok((state.pair(key), state.deadline()))
        })
    };
    spawn_watch(&tasks, move |tx| {
        run(inner, path, zk::AddWatchMode::Persistent, key, tx, read)
    })
}

/// Watches a subtree.
pub(crate) fn watch_tree(inner: Arc<Inner>, directory: String) -> WatchTreeStream {
    let tasks = inner.tasks.clone();
    let path = inner.node_path(&directory);
    let read: Reader<Vec<KvPair>> = |inner, client, directory| {
        Box::pin(async move {
            let found = inner.snapshot_with_deadlines(client, directory).await?;
            let deadline = found
                .iter()
                .map(|(_, d)| *d)
                .filter(|d| *d != 0)
                .min()
                .unwrap_or(0);
            Ok((found.into_iter().map(|(pair, _)| pair).collect(), deadline))
        })
    };
    spawn_watch(&tasks, move |tx| {
        run(
            inner,
            path,
            zk::AddWatchMode::PersistentRecursive,
            directory,
            tx,
            read,
        )
    })
}

/// What the loop does after a failure.
enum Next {
    Retry,
    Stop,
}

/// Terminal errors end the stream; transient ones are retried with backoff.
fn triage<T: Clone + PartialEq + Send + Sync + 'static>(
    error: Error,
    tx: &mut Option<WatchSender<T>>,
) -> Next {
    match error {
        Error::Closed => Next::Stop,
        Error::PermissionDenied { .. } | Error::Config(_) => {
            if let Some(tx) = tx.take() {
                tx.fail(error);
            }
            Next::Stop
        }
        error => {
            tracing::debug!(%error, "watch: retrying after a failure");
            Next::Retry
        }
    }
}

/// True for events that cannot change what the watch reports: lock renewals (data writes to
/// a marker), lock owner nodes (below a marker; created and deleted with it, or with their
/// session, which changes nothing readers see) and lock queues.
fn irrelevant(inner: &Inner, event: &zk::WatchedEvent) -> bool {
    if event.event_type == zk::EventType::NodeDataChanged
        && event.path.ends_with(&format!("/{MARKER}"))
    {
        return true;
    }
    let Some(rest) = event
        .path
        .strip_prefix(&inner.root)
        .and_then(|rest| rest.strip_prefix('/'))
    else {
        return false;
    };
    rest.starts_with(LOCKS_DIR)
        || rest.starts_with(CLOCK_PREFIX)
        || rest.contains(&format!("/{MARKER}/"))
}

/// What an event means for the loop.
enum Action {
    /// Nothing that can change the state.
    Ignore,
    /// Read the state again.
    Reread,
    /// The session ended (expired) or reconnected: take the current session (a new one if
    /// it expired), watch again, read again. The watcher must not be polled again (it panics
    /// after a terminal event).
    NewSession,
    /// The credentials were rejected: end the stream.
    Fail,
}

fn classify(inner: &Inner, event: &zk::WatchedEvent) -> Action {
    if event.event_type == zk::EventType::Session {
        return match event.session_state {
            zk::SessionState::Disconnected => Action::Ignore,
            zk::SessionState::AuthFailed => Action::Fail,
            zk::SessionState::Expired | zk::SessionState::Closed => Action::NewSession,
            // Reconnected, maybe to another member: events may have been lost meanwhile
            // (ZOOKEEPER-4698), and zookeeper-client 0.11 does not register persistent watches
            // again on the new connection (its `resend_watches` sends only the one-shot
            // lists), so the watch would go silent. Watch again, then read again.
            _ => Action::NewSession,
        };
    }
    if irrelevant(inner, event) {
        Action::Ignore
    } else {
        Action::Reread
    }
}

fn auth_failed() -> Error {
    Error::PermissionDenied {
        backend: crate::store::BACKEND,
        message: "the server rejected the credentials".into(),
    }
}

async fn run<T>(
    inner: Arc<Inner>,
    path: String,
    mode: zk::AddWatchMode,
    target: String,
    tx: WatchSender<T>,
    read: Reader<T>,
) where
    T: Clone + PartialEq + Send + Sync + 'static,
{
    let mut tx = Some(tx);
    let mut backoff = kv_core::Backoff::new(MIN_BACKOFF, MAX_BACKOFF);
    let epoch = inner.history_epoch();
    'session: loop {
        let Some(sender) = tx.as_ref() else { return };
        if sender.is_closed() {
            return;
        }
        let client = match inner.client().await {
            Ok(client) => client,
            Err(error) => match triage(error, &mut tx) {
                Next::Stop => return,
                Next::Retry => {
                    backoff.wait().await;
                    continue 'session;
                }
            },
        };
        // The server lost its history since this watch started: its states would restart
        // low, so the watch ends instead of going on silently in a new history.
        if inner.history_epoch() != epoch {
            if let Some(tx) = tx.take() {
                tx.fail(inner.history_lost_error());
            }
            return;
        }
        // The watch is in place before the first read, so no change can slip in between.
        let mut watcher = match inner.request("watch", client.watch(&path, mode)).await {
            Ok(watcher) => watcher,
            Err(error) => match triage(error, &mut tx) {
                Next::Stop => return,
                Next::Retry => {
                    backoff.wait().await;
                    continue 'session;
                }
            },
        };
        loop {
            let (state, deadline) = match read(&inner, &client, &target).await {
                Ok(read) => read,
                Err(error) => match triage(error, &mut tx) {
                    Next::Stop => return,
                    Next::Retry => {
                        backoff.wait().await;
                        if matches!(
                            client.state(),
                            zk::SessionState::Expired
                                | zk::SessionState::Closed
                                | zk::SessionState::AuthFailed
                        ) {
                            continue 'session;
                        }
                        continue;
                    }
                },
            };
            backoff.reset();
            let Some(sender) = tx.as_ref() else { return };
            if !sender.send(state) {
                return;
            }
            // Wait for something that may change the state: an event, or a TTL deadline.
            loop {
                let timer = async {
                    if deadline == 0 {
                        std::future::pending::<()>().await;
                    }
                    // The deadline is on the server's clock (see `clock.rs`).
                    tokio::time::sleep(inner.clock.now().until(deadline, false)).await;
                };
                tokio::select! {
                    event = watcher.changed() => {
                        match classify(&inner, &event) {
                            Action::Ignore => continue,
                            Action::NewSession => continue 'session,
                            Action::Fail => {
                                if let Some(tx) = tx.take() {
                                    tx.fail(auth_failed());
                                }
                                return;
                            }
                            Action::Reread => {}
                        }
                        // Coalesce the events already queued (a write is several events:
                        // data, marker deleted, marker created): one read covers them all.
                        while let Some(event) = watcher.changed().now_or_never() {
                            match classify(&inner, &event) {
                                Action::Ignore | Action::Reread => {}
                                Action::NewSession => continue 'session,
                                Action::Fail => {
                                    if let Some(tx) = tx.take() {
                                        tx.fail(auth_failed());
                                    }
                                    return;
                                }
                            }
                        }
                        break;
                    }
                    _ = timer => break,
                    _ = sender.closed() => return,
                }
            }
        }
    }
}
