//! `watch` and `watch_tree`: one ordered push consumer per stream, delivering the last message
//! of every matching subject first (the current state), then every new message.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::DeliverPolicy;
use futures::StreamExt;
use kv_core::{
    Backoff, Error, KvPair, Result, WatchSender, WatchStream, WatchTreeStream, spawn_watch,
};

use crate::store::{Inner, Record, timeout};

/// How long a watch may be quiet before it checks that its stream is still the same one.
const HISTORY_CHECK: Duration = Duration::from_secs(3);

/// The first limit of a watch's own requests (stream info, consumer creation) when it
/// (re)starts. Only the stream's leader answers them, and while the stream has none (its
/// server down, its replicas electing) the server leaves them unanswered: a watch whose resync
/// began during an outage, waiting the whole request timeout per request, stayed silent that
/// long after the stream was back (`a_watch_resyncing_during_an_outage_catches_up`). Each
/// failed try doubles the limit, up to the request timeout, so a slow server still gets its time.
const FIRST_TRY: Duration = Duration::from_millis(500);

/// `request`, ended with `Timeout` after `limit`.
async fn within<T>(limit: Duration, request: impl Future<Output = Result<T>>) -> Result<T> {
    tokio::time::timeout(limit, request)
        .await
        .unwrap_or_else(|_| Err(timeout("watch: stream request", limit)))
}

/// True when the stream now is not the one first seen (created at another time) or its last
/// sequence is below one already delivered.
fn history_lost(first: (i128, u64), now: (i128, u64), highest: u64) -> bool {
    now.0 != first.0 || now.1 < highest
}

/// Watches one key's subject.
pub(crate) fn watch_key(inner: Arc<Inner>, key: String, subject: String) -> WatchStream {
    let tasks = inner.tasks.clone();
    spawn_watch(&tasks, move |tx: WatchSender<Option<KvPair>>| async move {
        follow(inner, subject, tx, move |state| state.get(&key).cloned()).await
    })
}

/// Watches every subject below a directory.
pub(crate) fn watch_tree(inner: Arc<Inner>, filter: String) -> WatchTreeStream {
    let tasks = inner.tasks.clone();
    spawn_watch(&tasks, move |tx: WatchSender<Vec<KvPair>>| async move {
        follow(inner, filter, tx, |state| state.values().cloned().collect()).await
    })
}

/// The loop: (re)creates the consumer, rebuilds the state from the last message of every
/// subject, publishes it once complete, then applies and publishes every change. A broken
/// consumer (the ordered consumer's own recovery failed: server gone for long, stream
/// recreated) starts over from a fresh snapshot after a back-off.
async fn follow<T, F>(inner: Arc<Inner>, filter: String, tx: WatchSender<T>, view: F)
where
    T: Clone + PartialEq + Send + Sync + 'static,
    F: Fn(&BTreeMap<String, KvPair>) -> T + Send,
{
    let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(2));
    // The bucket's stream as this watch first saw it, and the highest sequence delivered: a
    // stream created anew (a server restarted without its data, the bucket deleted and made
    // again) restarts its sequences low, and the ordered consumer would wait silently for
    // sequences that come much later, if ever. The watch ends with an `Err` instead.
    let mut origin = None;
    let mut highest = 0u64;
    let request_timeout = inner.config.request_timeout;
    let mut limit = FIRST_TRY.min(request_timeout);
    loop {
        if tx.is_closed() {
            return;
        }
        match (origin, within(limit, inner.stream_identity()).await) {
            (_, Err(error @ Error::Config(_))) => {
                tx.fail(error);
                return;
            }
            (None, Ok(identity)) => origin = Some(identity),
            (Some(first), Ok(now)) if history_lost(first, now, highest) => {
                tx.fail(inner.history_lost_error());
                return;
            }
            _ => {}
        }
        let ordered = inner.ordered(&filter, DeliverPolicy::LastPerSubject);
        let consumer = match within(limit, ordered).await {
            Ok(consumer) => consumer,
            Err(error @ (Error::PermissionDenied { .. } | Error::Config(_))) => {
                tx.fail(error);
                return;
            }
            Err(error) => {
                tracing::debug!(%error, "watch: cannot create the consumer, retrying");
                limit = limit.saturating_mul(2).min(request_timeout);
                backoff.wait().await;
                continue;
            }
        };
        let mut state = BTreeMap::new();
        let mut current = consumer.cached_info().num_pending == 0;
        if current && !tx.send(view(&state)) {
            return;
        }
        let mut messages = match consumer.messages().await {
            Ok(messages) => messages,
            Err(error) => {
                tracing::debug!(%error, "watch: cannot subscribe, retrying");
                backoff.wait().await;
                continue;
            }
        };
        backoff.reset();
        limit = FIRST_TRY.min(request_timeout);
        loop {
            let message = tokio::select! {
                message = messages.next() => message,
                _ = tx.closed() => return,
                // Quiet for a while: make sure the stream is still the one being followed.
                _ = tokio::time::sleep(HISTORY_CHECK) => {
                    let identity = within(HISTORY_CHECK.min(request_timeout), inner.stream_identity());
                    if let (Some(first), Ok(now)) = (origin, identity.await)
                        && history_lost(first, now, highest)
                    {
                        tx.fail(inner.history_lost_error());
                        return;
                    }
                    continue;
                }
            };
            let message = match message {
                Some(Ok(message)) => message,
                Some(Err(error)) => {
                    tracing::debug!(%error, "watch: consumer failed, resynchronising");
                    break;
                }
                None => break,
            };
            let Ok(info) = message.info() else { continue };
            let (seq, pending) = (info.stream_sequence, info.pending);
            highest = highest.max(seq);
            if let Some(key) = inner.key_of(&message.message.subject) {
                match inner.record_of(
                    &key,
                    seq,
                    message.message.headers.as_ref(),
                    &message.message.payload,
                ) {
                    Record::Live(pair) => {
                        state.insert(key, pair);
                    }
                    Record::Gone(_) => {
                        state.remove(&key);
                    }
                }
            }
            if !current && pending == 0 {
                current = true;
            }
            if current && !tx.send(view(&state)) {
                return;
            }
        }
        backoff.wait().await;
    }
}
