//! `watch` and `watch_tree`: one ordered push consumer per stream, delivering the last message
//! of every matching subject first (the current state), then every new message.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::DeliverPolicy;
use futures::StreamExt;
use kv_core::{Backoff, Error, KvPair, WatchSender, WatchStream, WatchTreeStream, spawn_watch};

use crate::store::{Inner, Record};

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
    loop {
        if tx.is_closed() {
            return;
        }
        let consumer = match inner.ordered(&filter, DeliverPolicy::LastPerSubject).await {
            Ok(consumer) => consumer,
            Err(error @ (Error::PermissionDenied { .. } | Error::Config(_))) => {
                tx.fail(error);
                return;
            }
            Err(error) => {
                tracing::debug!(%error, "watch: cannot create the consumer, retrying");
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
        loop {
            let message = tokio::select! {
                message = messages.next() => message,
                _ = tx.closed() => return,
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
