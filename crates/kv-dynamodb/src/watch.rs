//! Watches: DynamoDB Streams (or polling where the table has no stream), plus timers for TTL
//! deadlines.
//!
//! One [`Hub`] per store handle reads the table's stream while at least one watch of the
//! handle is active, and tells every watch which keys changed; each watch re-reads its key or
//! subtree when one of them concerns it. So a handle is one stream reader however many
//! watches it runs (DynamoDB throttles more than about two readers per shard).
//!
//! A table deleted and created again (or a DynamoDB Local restarted in memory, then the
//! table created again) has a new stream with a new ARN, and the old stream never speaks
//! again: it is gone (`ResourceNotFoundException`), or disabled with its last shards closed
//! and no children. The reader treats every failure, a stream without open shards, and a
//! table whose `LatestStreamArn` is another stream (checked every [`REDISCOVER`]) the same
//! way: it describes the table again, opens its current stream and makes every watch re-read
//! its state. Failures that waiting does not clear (the table missing, a request DynamoDB
//! refuses) end the watches with an `Err` item once they have lasted longer than the request
//! timeout; unreachable servers are retried for as long as it takes. A watch never waits
//! silently on a stream that will not speak again.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use aws_sdk_dynamodb::types::TableStatus;
use aws_sdk_dynamodbstreams::types::ShardIteratorType;
use kv_core::tasks::AbortOnDrop;
use kv_core::{
    Backoff, Error, ReadOptions, Result, WatchSender, WatchStream, WatchTreeStream, key,
    spawn_watch,
};
use tokio::sync::broadcast;
use tokio::time::Instant;

use crate::item::{ATTR_SK, BACKEND, sdk_error};
use crate::store::Inner;
use crate::table;

/// How often the shard list, and which stream is the table's current one, are re-read even
/// when nothing failed.
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
    /// Records may have been missed (the stream was reopened, maybe a new one): re-read.
    Resync,
    /// The stream cannot be read any more (permission revoked, the table gone…).
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
    /// Registers a watch. When no reader runs, opens `LATEST` iterators on every shard of
    /// the table's current stream before returning (so the watch's first read cannot miss a
    /// change) and starts one.
    async fn subscribe(inner: &Arc<Inner>) -> Result<Subscription> {
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
        let cursors = open_stream(inner).await?;
        let (tx, rx) = broadcast::channel(HUB_CAPACITY);
        let reader = inner
            .tasks
            .spawn_owned(read_stream(inner.clone(), cursors, tx.clone()));
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
/// when the stream fails or falls silent for good, reopens the table's current stream and
/// tells the watches to re-read, or tells them it gave up.
async fn read_stream(inner: Arc<Inner>, mut cursors: Cursors, tx: broadcast::Sender<Event>) {
    let interval = inner.config.poll_interval;
    loop {
        tokio::time::sleep(interval).await;
        let error = match cursors.poll(&inner).await {
            Ok(keys) => {
                if !keys.is_empty() && tx.send(Event::Changed(Arc::new(keys))).is_err() {
                    return;
                }
                match cursors.check(&inner).await {
                    Ok(()) => continue,
                    Err(error) => error,
                }
            }
            Err(error) => error,
        };
        match reopen(&inner, error).await {
            Ok(reopened) => {
                if reopened.arn != cursors.arn {
                    tracing::info!(
                        old = %cursors.arn,
                        new = %reopened.arn,
                        "dynamodb stream reader: the table has a new stream"
                    );
                }
                cursors = reopened;
                if tx.send(Event::Resync).is_err() {
                    return;
                }
            }
            Err(error) => {
                let _ = tx.send(Event::Failed(error));
                return;
            }
        }
    }
}

/// After a reader failure: waits with backoff, then opens the table's current stream (the
/// same one, or the new stream of a table created again). The error when the reader must
/// give up instead (see [`Failures`]).
async fn reopen(inner: &Inner, mut error: Error) -> Result<Cursors> {
    let mut backoff = Backoff::new(inner.config.poll_interval, MAX_BACKOFF);
    let mut failures = Failures::default();
    loop {
        if failures.fatal(inner, &error) {
            return Err(error);
        }
        tracing::debug!(%error, "dynamodb stream reader: reopening the stream");
        backoff.wait().await;
        match open_stream(inner).await {
            Ok(cursors) => return Ok(cursors),
            Err(next) => error = next,
        }
    }
}

/// The ARN of the table's current stream, from DescribeTable: after the table was created
/// again, not the one the handle started with. A missing table, one being deleted, or one
/// without a stream is an error.
async fn current_stream(inner: &Inner) -> Result<String> {
    let name = &inner.config.table;
    match table::describe(&inner.client, &inner.config).await? {
        None => Err(Error::backend(
            BACKEND,
            format!("table {name:?} does not exist (any more)"),
        )),
        Some(table) if table.table_status() == Some(&TableStatus::Deleting) => Err(Error::backend(
            BACKEND,
            format!("table {name:?} is being deleted"),
        )),
        Some(table) => table::stream_of(&table).ok_or_else(|| {
            Error::backend(BACKEND, format!("table {name:?} has no stream (any more)"))
        }),
    }
}

/// `LATEST` cursors on the table's current stream, which must have an open shard.
async fn open_stream(inner: &Inner) -> Result<Cursors> {
    let arn = current_stream(inner).await?;
    let cursors = Cursors::open(inner, &arn).await?;
    if cursors.iterators.is_empty() {
        return Err(no_open_shard(&arn));
    }
    Ok(cursors)
}

fn no_open_shard(arn: &str) -> Error {
    Error::backend(
        BACKEND,
        format!("stream {arn} has no open shard (its table was deleted or its stream disabled)"),
    )
}

/// Decides when a retry loop gives up: at once on a terminal error; on errors that waiting
/// does not clear (the table or its stream missing, a request DynamoDB refuses) once they
/// have lasted longer than the request timeout. Transient errors (server unreachable,
/// throttled, timed out) are retried for as long as it takes: the contract's watches catch
/// up after an outage.
#[derive(Debug, Default)]
struct Failures {
    /// Since when every failure has been a lasting one.
    lasting_since: Option<Instant>,
}

impl Failures {
    fn fatal(&mut self, inner: &Inner, error: &Error) -> bool {
        if is_terminal(error) {
            return true;
        }
        if error.is_transient() {
            self.lasting_since = None;
            return false;
        }
        let since = *self.lasting_since.get_or_insert_with(Instant::now);
        since.elapsed() >= inner.timeout()
    }

    fn reset(&mut self) {
        self.lasting_since = None;
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

/// The shared watch loop: subscribes to the stream (before reading, so nothing is missed),
/// reads and publishes the state, then re-reads whenever a changed key concerns the watch,
/// the stream was reopened, a TTL deadline of the published state passes, the stream said
/// nothing for [`Config::watch_resync`](crate::Config::watch_resync), or (without a stream)
/// every poll interval. A failed read or subscription is retried with backoff,
/// until [`Failures`] says to give up; the stream then ends with the error.
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
    let resync = inner.config.watch_resync;
    let streams = inner.stream_arn.is_some();
    let mut backoff = Backoff::new(poll_interval, MAX_BACKOFF);
    let mut failures = Failures::default();
    let mut consistent = first_consistent;
    let mut subscription: Option<Subscription> = None;
    // When to read the state next (`None`: when an event or a deadline says so).
    let mut read_at = Some(Instant::now());
    // The earliest TTL deadline (Unix ms) of what was published.
    let mut deadline: Option<u64> = None;
    loop {
        if read_at.is_some_and(|at| at <= Instant::now()) {
            read_at = None;
            let result = async {
                if streams && subscription.is_none() {
                    subscription = Some(Hub::subscribe(&inner).await?);
                }
                read(consistent).await
            }
            .await;
            match result {
                Ok((state, next)) => {
                    deadline = next;
                    if !tx.send(state) {
                        return;
                    }
                    // Later reads follow a change: they must see it.
                    consistent = true;
                    backoff.reset();
                    failures.reset();
                }
                Err(error) => {
                    if failures.fatal(&inner, &error) {
                        tx.fail(error);
                        return;
                    }
                    tracing::debug!(%error, "dynamodb watch: retrying");
                    read_at = Some(Instant::now() + backoff.next_delay());
                }
            }
        }
        // A pending retry is the next read. Else: without a stream, every interval may hide a
        // change; with one, only TTL deadlines need a timer.
        let wake = match read_at {
            Some(at) => at,
            None => {
                let idle = if subscription.is_some() {
                    resync
                } else {
                    poll_interval
                };
                let mut wake = Instant::now() + idle;
                if let Some(deadline) = deadline {
                    let until = Duration::from_millis(
                        deadline
                            .saturating_sub(inner.clock.now_ms())
                            .saturating_add(1),
                    );
                    wake = wake.min(Instant::now() + until);
                }
                wake
            }
        };
        let event = match &mut subscription {
            Some(subscription) => tokio::select! {
                _ = tokio::time::sleep_until(wake) => None,
                _ = tx.closed() => return,
                event = subscription.rx.recv() => Some(event),
            },
            None => tokio::select! {
                _ = tokio::time::sleep_until(wake) => None,
                _ = tx.closed() => return,
            },
        };
        let now = Instant::now();
        match event {
            // A retry, a deadline, a poll or the resync timer: read (a retry keeps its time).
            None => {
                read_at.get_or_insert(now);
            }
            Some(Ok(Event::Changed(keys))) => {
                if keys.iter().any(|sk| matches(sk)) {
                    read_at.get_or_insert(now);
                }
            }
            Some(Err(broadcast::error::RecvError::Lagged(_))) => {
                read_at.get_or_insert(now);
            }
            // The stream was reopened (maybe a new one, the table created again): read now,
            // even while a failed read waits for its retry.
            Some(Ok(Event::Resync)) => read_at = Some(now),
            Some(Ok(Event::Failed(error))) => {
                tx.fail(error);
                return;
            }
            // The reader stopped without a word (it cannot, short of a bug): start another.
            Some(Err(broadcast::error::RecvError::Closed)) => {
                subscription = None;
                read_at.get_or_insert_with(|| now + backoff.next_delay());
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
    /// When DescribeTable last confirmed that this is the table's current stream.
    last_table_check: Instant,
}

impl Cursors {
    /// LATEST iterators on every open shard: changes from now on.
    async fn open(inner: &Inner, arn: &str) -> Result<Self> {
        let mut cursors = Cursors {
            arn: arn.to_owned(),
            iterators: HashMap::new(),
            known: HashSet::new(),
            last_discovery: Instant::now(),
            last_table_check: Instant::now(),
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

    /// Fails when this stream will report nothing any more: none of its shards is open
    /// (the table was deleted or its stream disabled: the last shards closed without
    /// children), or, checked every [`REDISCOVER`], the table's current stream is another
    /// one (the table was created again).
    async fn check(&mut self, inner: &Inner) -> Result<()> {
        if self.iterators.is_empty() {
            return Err(no_open_shard(&self.arn));
        }
        if self.last_table_check.elapsed() >= REDISCOVER {
            self.last_table_check = Instant::now();
            let current = current_stream(inner).await?;
            if current != self.arn {
                return Err(Error::backend(
                    BACKEND,
                    format!("the table's stream is now {current}, not {}", self.arn),
                ));
            }
        }
        Ok(())
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
