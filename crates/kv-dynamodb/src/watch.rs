//! Watches: DynamoDB Streams (or polling where the table has no stream), plus timers for TTL
//! deadlines.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_dynamodbstreams::types::ShardIteratorType;
use kv_core::{
    Error, ReadOptions, Result, WatchSender, WatchStream, WatchTreeStream, key,
    spawn_watch, ttl,
};
use tokio::time::Instant;

use crate::item::{ATTR_SK, sdk_error};
use crate::store::Inner;

/// How often the shard list is re-read even when no shard closed.
const REDISCOVER: Duration = Duration::from_secs(30);
/// How many GetRecords calls one poll makes on a shard that keeps returning records.
const DRAIN_CALLS: usize = 8;
/// The longest pause between retries after a failure.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

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
async fn run<T, M, R, Fut>(inner: Arc<Inner>, tx: WatchSender<T>, first_consistent: bool, matches: M, read: R)
where
    T: Clone + PartialEq + Send + Sync + 'static,
    M: Fn(&str) -> bool + Send + Sync,
    R: Fn(bool) -> Fut + Send + Sync,
    Fut: Future<Output = Result<(T, Option<u64>)>> + Send,
{
    let poll_interval = inner.config.poll_interval;
    let mut backoff = poll_interval;
    let mut consistent = first_consistent;
    loop {
        let error = match session(&inner, &tx, &mut consistent, &mut backoff, &matches, &read).await {
            Ok(()) => return,
            Err(error) => error,
        };
        if is_terminal(&error) {
            tx.fail(error);
            return;
        }
        tracing::debug!(%error, "dynamodb watch: resynchronising");
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = tx.closed() => return,
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// One session: open stream cursors (before reading, so nothing is missed), read and
/// publish the state, then poll; re-read when a record concerns the watched keys or a TTL
/// deadline of the published state passes. `Ok` when the stream was dropped.
async fn session<T, M, R, Fut>(
    inner: &Inner,
    tx: &WatchSender<T>,
    consistent: &mut bool,
    backoff: &mut Duration,
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
    let mut cursors = match &inner.stream_arn {
        Some(arn) => Some(Cursors::open(inner, arn).await?),
        None => None,
    };
    let (state, mut deadline) = read(*consistent).await?;
    if !tx.send(state) {
        return Ok(());
    }
    // Later reads follow a change record: they must see it.
    *consistent = true;
    *backoff = poll_interval;
    loop {
        let mut wake = Instant::now() + poll_interval;
        if let Some(deadline) = deadline {
            let until =
                Duration::from_millis(deadline.saturating_sub(ttl::now_millis()).saturating_add(1));
            wake = wake.min(Instant::now() + until);
        }
        tokio::select! {
            _ = tokio::time::sleep_until(wake) => {}
            _ = tx.closed() => return Ok(()),
        }
        let changed = match &mut cursors {
            Some(cursors) => cursors.poll(inner, matches).await?,
            // Polling fallback: every interval may hide a change.
            None => true,
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

    /// Reads new records on every shard; true when one concerns a watched key.
    async fn poll<M: Fn(&str) -> bool>(&mut self, inner: &Inner, matches: &M) -> Result<bool> {
        let mut changed = false;
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
                changed |= out.records().iter().any(|record| {
                    record
                        .dynamodb()
                        .and_then(|r| r.keys())
                        .and_then(|keys| keys.get(ATTR_SK))
                        .and_then(|sk| sk.as_s().ok())
                        .is_some_and(|sk| matches(sk))
                });
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
