//! Watches: DynamoDB Streams (or polling where the table has no stream), plus timers for TTL
//! deadlines.
//!
//! One [`Hub`] per store handle reads the table's stream while at least one watch of the
//! handle is active, and tells every watch which keys changed; each watch re-reads its key or
//! subtree when one of them concerns it. So a handle is one stream reader however many
//! watches it runs (DynamoDB throttles more than about two readers per shard).

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use aws_sdk_dynamodbstreams::types::ShardIteratorType;
use kv_core::tasks::AbortOnDrop;
use kv_core::{
    Error, ReadOptions, Result, WatchSender, WatchStream, WatchTreeStream, key, spawn_watch, ttl,
};
use tokio::sync::broadcast;
use tokio::time::Instant;

use crate::item::{ATTR_SK, sdk_error};
use crate::store::Inner;

/// How often the shard list is re-read even when no shard closed.
const REDISCOVER: Duration = Duration::from_secs(30);
/// How many GetRecords calls one poll makes on a shard that keeps returning records.
const DRAIN_CALLS: usize = 8;
/// The longest pause between retries after a failure.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Events buffered per watch before it lags (a lagging watch simply re-reads).
const HUB_CAPACITY: usize = 256;

/// What the hub tells the watches.
#[derive(Debug, Clone)]
enum Event {
    /// These sort keys changed.
    Changed(Arc<Vec<String>>),
    /// Records may have been missed (the stream reader restarted): re-read.
    Resync,
    /// The stream cannot be read any more (permission revoked…).
    Failed(Error),
}

/// The handle's shared stream reader.
#[derive(Debug, Default)]
pub(crate) struct Hub {
    state: StdMutex<HubState>,
    /// Serialises starting the reader.
    starting: tokio::sync::Mutex<()>,
}

#[derive(Debug, Default)]
struct HubState {
    tx: Option<broadcast::Sender<Event>>,
    reader: Option<AbortOnDrop>,
    subscribers: usize,
}

/// A watch's registration with the hub; the reader stops when the last one is dropped.
struct Subscription {
    inner: Arc<Inner>,
    rx: broadcast::Receiver<Event>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut state = self
            .inner
            .hub
            .state
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        state.subscribers = state.subscribers.saturating_sub(1);
        if state.subscribers == 0 {
            state.tx = None;
            state.reader = None; // aborts the reader task
        }
    }
}

impl Hub {
    /// Registers a watch. When no reader runs, opens `LATEST` iterators on every shard
    /// before returning (so the watch's first read cannot miss a change) and starts one.
    async fn subscribe(inner: &Arc<Inner>, arn: &str) -> Result<Subscription> {
        let hub = &inner.hub;
        let _starting = hub.starting.lock().await;
        {
            let mut state = hub.state.lock().unwrap_or_else(|e| e.into_inner());
            let running = state.reader.as_ref().is_some_and(|r| !r.is_finished());
            if let (true, Some(tx)) = (running, &state.tx) {
                let rx = tx.subscribe();
                state.subscribers += 1;
                return Ok(Subscription {
                    inner: inner.clone(),
                    rx,
                });
            }
        }
        let cursors = Cursors::open(inner, arn).await?;
        let (tx, rx) = broadcast::channel(HUB_CAPACITY);
        let reader = inner.tasks.spawn_owned(read_stream(
            inner.clone(),
            arn.to_owned(),
            cursors,
            tx.clone(),
        ));
        let mut state = hub.state.lock().unwrap_or_else(|e| e.into_inner());
        state.tx = Some(tx);
        state.reader = Some(reader);
        state.subscribers += 1;
        Ok(Subscription {
            inner: inner.clone(),
            rx,
        })
    }
}

/// The hub's reader: polls every shard each interval and broadcasts the changed keys;
/// after a failure, reopens the stream with backoff and tells the watches to re-read.
async fn read_stream(
    inner: Arc<Inner>,
    arn: String,
    mut cursors: Cursors,
    tx: broadcast::Sender<Event>,
) {
    let interval = inner.config.poll_interval;
    loop {
        tokio::time::sleep(interval).await;
        let error = match cursors.poll(&inner).await {
            Ok(keys) => {
                if !keys.is_empty() && tx.send(Event::Changed(Arc::new(keys))).is_err() {
                    return;
                }
                continue;
            }
            Err(error) => error,
        };
        let mut error = error;
        let mut backoff = kv_core::Backoff::new(interval, MAX_BACKOFF);
        loop {
            if is_terminal(&error) {
                let _ = tx.send(Event::Failed(error));
                return;
            }
            tracing::debug!(%error, "dynamodb stream reader: reopening the stream");
            backoff.wait().await;
            match Cursors::open(&inner, &arn).await {
                Ok(reopened) => {
                    cursors = reopened;
                    if tx.send(Event::Resync).is_err() {
                        return;
                    }
                    break;
                }
                Err(next) => error = next,
            }
        }
    }
}

/// Watches one key: `Some(pair)` / `None` states.
pub(crate) fn watch_key(inner: Arc<Inner>, key: String, options: ReadOptions) -> WatchStream {
    let full = inner.full_key(&key);
    let tasks = inner.tasks.clone();
    let inner2 = inner.clone();
    spawn_watch(&tasks, move |tx| async move {
        let matches = {
            let full = full.clone();
            move |sk: &str| sk == full
        };
        let read = move |consistent: bool| {
            let inner = inner.clone();
            let full = full.clone();
            async move {
                let item = inner.read_live(&full, consistent).await?;
                let deadline = item.as_ref().and_then(|i| i.deadline_ms);
                Ok((item.and_then(|i| inner.pair(i)), deadline))
            }
        };
        run(inner2, tx, options.consistent, matches, read).await;
    })
}

/// Watches a subtree: full sorted snapshots.
pub(crate) fn watch_tree(
    inner: Arc<Inner>,
    directory: String,
    options: ReadOptions,
) -> WatchTreeStream {
    let prefix = if directory.is_empty() {
        inner.ns_prefix.clone()
    } else {
        key::child_prefix(&inner.full_key(&directory))
    };
    let tasks = inner.tasks.clone();
    let inner2 = inner.clone();
    spawn_watch(&tasks, move |tx| async move {
        let matches = move |sk: &str| sk.starts_with(&prefix) && sk.len() > prefix.len();
        let read = move |consistent: bool| {
            let inner = inner.clone();
            let directory = directory.clone();
            async move {
                let items = inner.list_items(&directory, consistent).await?;
                let deadline = items.iter().filter_map(|i| i.deadline_ms).min();
                Ok((inner.pairs(items), deadline))
            }
        };
        run(inner2, tx, options.consistent, matches, read).await;
    })
}

/// Errors after which retrying is pointless: the stream ends with them.
fn is_terminal(error: &Error) -> bool {
    matches!(
        error,
        Error::PermissionDenied { .. } | Error::Config(_) | Error::Closed
    )
}

/// The shared watch loop: sessions that end with an error are retried with backoff, or end
/// the stream when the error is terminal.
async fn run<T, M, R, Fut>(
    inner: Arc<Inner>,
    tx: WatchSender<T>,
    first_consistent: bool,
    matches: M,
    read: R,
) where
    T: Clone + PartialEq + Send + Sync + 'static,
    M: Fn(&str) -> bool + Send + Sync,
    R: Fn(bool) -> Fut + Send + Sync,
    Fut: Future<Output = Result<(T, Option<u64>)>> + Send,
{
    let poll_interval = inner.config.poll_interval;
    let mut backoff = kv_core::Backoff::new(poll_interval, MAX_BACKOFF);
    let mut consistent = first_consistent;
    loop {
        let error = match session(&inner, &tx, &mut consistent, &mut backoff, &matches, &read).await
        {
            Ok(()) => return,
            Err(error) => error,
        };
        if is_terminal(&error) {
            tx.fail(error);
            return;
        }
        tracing::debug!(%error, "dynamodb watch: resynchronising");
        tokio::select! {
            _ = tokio::time::sleep(backoff.next_delay()) => {}
            _ = tx.closed() => return,
        }
    }
}

/// One session: subscribe to the stream (before reading, so nothing is missed), read and
/// publish the state, then re-read whenever a changed key concerns the watch, a TTL deadline
/// of the published state passes, or (without a stream) every poll interval. `Ok` when the
/// stream was dropped.
async fn session<T, M, R, Fut>(
    inner: &Arc<Inner>,
    tx: &WatchSender<T>,
    consistent: &mut bool,
    backoff: &mut kv_core::Backoff,
    matches: &M,
    read: &R,
) -> Result<()>
where
    T: Clone + PartialEq + Send + Sync + 'static,
    M: Fn(&str) -> bool + Send + Sync,
    R: Fn(bool) -> Fut + Send + Sync,
    Fut: Future<Output = Result<(T, Option<u64>)>> + Send,
{
    let poll_interval = inner.config.poll_interval;
    let mut subscription = match &inner.stream_arn {
        Some(arn) => Some(Hub::subscribe(inner, arn).await?),
        None => None,
    };
    let (state, mut deadline) = read(*consistent).await?;
    if !tx.send(state) {
        return Ok(());
    }
    // Later reads follow a change: they must see it.
    *consistent = true;
    backoff.reset();
    loop {
        // Without a stream, every interval may hide a change; with one, only TTL deadlines
        // need a timer.
        let mut wake = Instant::now()
            + if subscription.is_some() {
                Duration::from_secs(3600)
            } else {
                poll_interval
            };
        if let Some(deadline) = deadline {
            let until =
                Duration::from_millis(deadline.saturating_sub(ttl::now_millis()).saturating_add(1));
            wake = wake.min(Instant::now() + until);
        }
        let changed = match &mut subscription {
            Some(subscription) => tokio::select! {
                _ = tokio::time::sleep_until(wake) => false,
                _ = tx.closed() => return Ok(()),
                event = subscription.rx.recv() => match event {
                    Ok(Event::Changed(keys)) => keys.iter().any(|sk| matches(sk)),
                    Ok(Event::Resync) | Err(broadcast::error::RecvError::Lagged(_)) => true,
                    Ok(Event::Failed(error)) => return Err(error),
                    Err(broadcast::error::RecvError::Closed) => {
                        return Err(Error::unavailable(
                            crate::item::BACKEND,
                            "the stream reader stopped",
                        ));
                    }
                },
            },
            None => tokio::select! {
                _ = tokio::time::sleep_until(wake) => true,
                _ = tx.closed() => return Ok(()),
            },
        };
        if changed || deadline.is_some_and(ttl::is_expired) {
            let (state, next) = read(true).await?;
            deadline = next;
            if !tx.send(state) {
                return Ok(());
            }
        }
    }
}

/// Cursors on every shard of a table's stream.
struct Cursors {
    arn: String,
    /// Open iterators by shard id.
    iterators: HashMap<String, String>,
    /// Every shard id seen (read from or skipped because it predates the watch).
    known: HashSet<String>,
    last_discovery: Instant,
}

impl Cursors {
    /// LATEST iterators on every open shard: changes from now on.
    async fn open(inner: &Inner, arn: &str) -> Result<Self> {
        let mut cursors = Cursors {
            arn: arn.to_owned(),
            iterators: HashMap::new(),
            known: HashSet::new(),
            last_discovery: Instant::now(),
        };
        for (shard, open) in cursors.shards(inner).await? {
            cursors.known.insert(shard.clone());
            if open {
                let iterator = cursors
                    .iterator(inner, &shard, ShardIteratorType::Latest)
                    .await?;
                if let Some(iterator) = iterator {
                    cursors.iterators.insert(shard, iterator);
                }
            }
        }
        Ok(cursors)
    }

    /// Every shard of the stream, with whether it is still open.
    async fn shards(&self, inner: &Inner) -> Result<Vec<(String, bool)>> {
        let mut shards = Vec::new();
        let mut start: Option<String> = None;
        loop {
            let out = inner
                .streams
                .describe_stream()
                .stream_arn(&self.arn)
                .set_exclusive_start_shard_id(start.take())
                .send()
                .await
                .map_err(|e| sdk_error("describe_stream", inner.timeout(), e))?;
            let Some(description) = out.stream_description() else {
                break;
            };
            for shard in description.shards() {
                if let Some(id) = shard.shard_id() {
                    let open = shard
                        .sequence_number_range()
                        .is_none_or(|r| r.ending_sequence_number().is_none());
                    shards.push((id.to_owned(), open));
                }
            }
            match description.last_evaluated_shard_id() {
                Some(last) => start = Some(last.to_owned()),
                None => break,
            }
        }
        Ok(shards)
    }

    async fn iterator(
        &self,
        inner: &Inner,
        shard: &str,
        kind: ShardIteratorType,
    ) -> Result<Option<String>> {
        let out = inner
            .streams
            .get_shard_iterator()
            .stream_arn(&self.arn)
            .shard_id(shard)
            .shard_iterator_type(kind)
            .send()
            .await
            .map_err(|e| sdk_error("get_shard_iterator", inner.timeout(), e))?;
        Ok(out.shard_iterator().map(str::to_owned))
    }

    /// Reads new records on every shard; returns the sort keys they concern.
    async fn poll(&mut self, inner: &Inner) -> Result<Vec<String>> {
        let mut changed = Vec::new();
        let mut closed_any = false;
        let shards: Vec<String> = self.iterators.keys().cloned().collect();
        for shard in shards {
            let Some(mut iterator) = self.iterators.remove(&shard) else {
                continue;
            };
            let mut open = true;
            for _ in 0..DRAIN_CALLS {
                let out = inner
                    .streams
                    .get_records()
                    .shard_iterator(&iterator)
                    .send()
                    .await
                    .map_err(|e| sdk_error("get_records", inner.timeout(), e))?;
                changed.extend(out.records().iter().filter_map(|record| {
                    record
                        .dynamodb()
                        .and_then(|r| r.keys())
                        .and_then(|keys| keys.get(ATTR_SK))
                        .and_then(|sk| sk.as_s().ok())
                        .cloned()
                }));
                match out.next_shard_iterator() {
                    Some(next) => iterator = next.to_owned(),
                    None => {
                        open = false;
                        break;
                    }
                }
                if out.records().is_empty() {
                    break;
                }
            }
            if open {
                self.iterators.insert(shard, iterator);
            } else {
                closed_any = true;
            }
        }
        if closed_any || self.last_discovery.elapsed() >= REDISCOVER {
            self.discover(inner).await?;
        }
        Ok(changed)
    }

    /// Picks up shards created since the watch started (children of closed shards), read
    /// from their beginning.
    async fn discover(&mut self, inner: &Inner) -> Result<()> {
        self.last_discovery = Instant::now();
        for (shard, _) in self.shards(inner).await? {
            if self.known.insert(shard.clone())
                && let Some(iterator) = self
                    .iterator(inner, &shard, ShardIteratorType::TrimHorizon)
                    .await?
            {
                self.iterators.insert(shard, iterator);
            }
        }
        Ok(())
    }
}
