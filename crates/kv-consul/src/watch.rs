//! Watch loops on blocking queries.
//!
//! Each loop holds the last raw answer and its `X-Consul-Index`, publishes the state it
//! stands for (filtered by TTL deadlines), then issues the next blocking query
//! (`?index=N&wait=…`). The query returns when the key (or the prefix) changes, or unchanged
//! after the wait; an unchanged state is not re-published (the `WatchSender` drops equal
//! states). While a TTL key is visible, a timer armed at its deadline republishes the state
//! without it, even if Consul deletes it later. An index that goes below the highest one the
//! query has answered is judged first (`Client::confirm_loss`): if the server lost its state
//! (a restarted dev agent, a restored snapshot), the watch ends with an error, as every watch
//! of the handle does once any of its requests notices the loss; otherwise (tombstones reaped
//! under a listed prefix, a lagging server answering a stale read) the index is reset to 0
//! (one non-blocking read). Errors back off exponentially from 100 ms to 5 s; permission
//! errors end the stream. Dropping the stream aborts the task, and with it the in-flight HTTP
//! request: hyper sees the response future dropped and closes the connection (it cannot go
//! back to the pool mid-request). The agent, though, holds its end until the query's wait is
//! over (see the crate docs).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use kv_core::{Error, KvPair, Result, WatchSender, WatchStream, WatchTreeStream, spawn_watch};

use crate::client::{Entry, EpochGuard};
use crate::store::{Inner, deadline_of, is_live};

const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// How long until the next deadline among entries visible at server time `now`, when the
/// state must be recomputed: measured on the handle's estimate of the server's clock.
fn next_expiry<'a>(
    inner: &Inner,
    now: u64,
    entries: impl Iterator<Item = &'a Entry>,
) -> Option<Duration> {
    entries
        .filter(|e| is_live(e, now))
        .filter_map(|e| deadline_of(e.flags))
        .min()
        .map(|deadline| inner.client.clock.until(deadline))
}

/// Sleeps for `wait` (a local, monotonic duration), or forever when there is none.
async fn sleep_for(wait: Option<Duration>) {
    match wait {
        Some(wait) => tokio::time::sleep(wait).await,
        None => std::future::pending().await,
    }
}

/// True for errors that retrying cannot cure.
pub(crate) fn is_terminal(error: &Error) -> bool {
    matches!(
        error,
        Error::PermissionDenied { .. } | Error::Config(_) | Error::Closed
    )
}

/// The shared loop: `fetch(index)` runs one (blocking) query, `project` turns the raw answer
/// into the published state plus how long until it must be recomputed (a TTL deadline).
///
/// `seen` is the highest index this query has answered. An answer below it (after a
/// resync, or a blocking query that returned a lower index) is judged by `verify(seen)`
/// before anything is published: it declares a server that lost its state on the handle's
/// [`Epoch`](crate::client::Epoch). Whoever notices it, the watch then ends with the
/// epoch's error instead of publishing states of another history; otherwise (a listing's
/// tombstones were reaped, a stale read came from a lagging server) the lower index is
/// taken as it is.
async fn run<R, T, F, Fut, V, VFut, P>(
    tx: WatchSender<T>,
    mut raw: R,
    mut index: u64,
    mut guard: EpochGuard,
    mut fetch: F,
    mut verify: V,
    project: P,
) where
    T: Clone + PartialEq + Send + Sync + 'static,
    F: FnMut(u64) -> Fut,
    Fut: Future<Output = Result<(R, u64)>>,
    V: FnMut(u64) -> VFut,
    VFut: Future<Output = Result<()>>,
    P: Fn(&R) -> (T, Option<Duration>),
{
    let mut backoff = kv_core::Backoff::new(BACKOFF_MIN, BACKOFF_MAX);
    let mut seen = index;
    loop {
        if guard.is_over() {
            tx.fail(guard.error());
            return;
        }
        let (state, deadline) = project(&raw);
        if !tx.send(state) {
            return;
        }
        let failure = tokio::select! {
            result = fetch(index) => match result {
                Ok((new_raw, new_index)) => {
                    let verified = if new_index < seen {
                        verify(seen).await
                    } else {
                        Ok(())
                    };
                    match verified {
                        Ok(()) => {
                            backoff.reset();
                            raw = new_raw;
                            // After a fall that is not a lost state (if it is, the loop ends
                            // at the top): re-read plainly, and follow the lower index.
                            index = if new_index < seen { 0 } else { new_index };
                            seen = new_index;
                            None
                        }
                        Err(error) => Some(error),
                    }
                }
                Err(error) => Some(error),
            },
            // A TTL deadline passed: publish the state without the expired key(s).
            _ = sleep_for(deadline) => None,
            // Another request of this handle found that the server lost its state.
            _ = guard.over() => None,
            _ = tx.closed() => return,
        };
        match failure {
            None => {}
            Some(error) if is_terminal(&error) => {
                tx.fail(error);
                return;
            }
            Some(error) => {
                let delay = backoff.next_delay();
                tracing::debug!(%error, ?delay, "Consul watch query failed, retrying");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = tx.closed() => return,
                }
                // Resynchronise with a plain read first.
                index = 0;
            }
        }
    }
}

/// Runs `read` until no loss of state was declared while it ran, and returns its answer with
/// a guard of the generation it belongs to: a watch's first state never comes from a history
/// that was found lost meanwhile.
async fn initial_read<R, F, Fut>(inner: &Inner, mut read: F) -> Result<(R, EpochGuard)>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<R>>,
{
    loop {
        let guard = inner.client.epoch.guard();
        let answer = read().await?;
        if !guard.is_over() {
            return Ok((answer, guard));
        }
    }
}

/// `Store::watch`: reads the current state now (so that the first item is the state when
/// `watch` returned), then follows it in a background task.
pub(crate) async fn watch_key(
    inner: Arc<Inner>,
    key: String,
    consistent: bool,
) -> Result<WatchStream> {
    let full = inner.full(&key);
    let ((entry, index), guard) =
        initial_read(&inner, || inner.client.kv_get(&full, consistent, None)).await?;
    let stream = spawn_watch(&inner.tasks.clone(), move |tx| async move {
        let wait = inner.client.watch_wait;
        let generation = guard.generation();
        let fetch = |index: u64| {
            let client = inner.client.clone();
            let full = full.clone();
            async move { client.kv_get(&full, consistent, Some((index, wait))).await }
        };
        let verify = |seen: u64| {
            let client = inner.client.clone();
            let full = full.clone();
            async move { client.confirm_loss(&full, true, seen, generation).await }
        };
        let project = |entry: &Option<Entry>| -> (Option<KvPair>, Option<Duration>) {
            let now = inner.server_now();
            let pair = entry.as_ref().and_then(|e| inner.pair_at(e, now));
            (pair, next_expiry(&inner, now, entry.iter()))
        };
        run(tx, entry, index, guard, fetch, verify, project).await;
    });
    Ok(stream)
}

/// `Store::watch_tree`: like [`watch_key`] on a `?recurse` listing of `prefix`.
pub(crate) async fn watch_tree(
    inner: Arc<Inner>,
    directory: String,
    prefix: String,
    consistent: bool,
) -> Result<WatchTreeStream> {
    let ((entries, index), guard) =
        initial_read(&inner, || inner.client.kv_list(&prefix, consistent, None)).await?;
    let stream = spawn_watch(&inner.tasks.clone(), move |tx| async move {
        let wait = inner.client.watch_wait;
        let generation = guard.generation();
        let fetch = |index: u64| {
            let client = inner.client.clone();
            let prefix = prefix.clone();
            async move {
                client
                    .kv_list(&prefix, consistent, Some((index, wait)))
                    .await
            }
        };
        let verify = |seen: u64| {
            let client = inner.client.clone();
            let prefix = prefix.clone();
            async move { client.confirm_loss(&prefix, false, seen, generation).await }
        };
        let project = |entries: &Vec<Entry>| -> (Vec<KvPair>, Option<Duration>) {
            let now = inner.server_now();
            let snapshot = inner.snapshot_at(&directory, entries, now);
            let relevant = entries.iter().filter(|e| {
                inner
                    .relative(&e.key)
                    .is_some_and(|k| kv_core::key::is_descendant(&directory, &k))
            });
            (snapshot, next_expiry(&inner, now, relevant))
        };
        run(tx, entries, index, guard, fetch, verify, project).await;
    });
    Ok(stream)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc as StdArc, Mutex};

    use futures::StreamExt;
    use kv_core::TaskSet;
    use tokio::time::Instant;

    use crate::client::Epoch;

    /// The loop's index bookkeeping and back-off, driven by scripted answers.
    #[tokio::test]
    async fn resets_backwards_indexes_backs_off_and_stops_on_terminal_errors() {
        let tasks = TaskSet::new();
        let calls: StdArc<Mutex<Vec<(u64, Instant)>>> = StdArc::default();
        type Script = StdArc<Mutex<Vec<Result<(u32, u64)>>>>;
        let script: Script = StdArc::new(Mutex::new(vec![
            Ok((2, 10)),                                           // a change
            Ok((2, 5)),                                            // index went backwards
            Err(Error::unavailable("consul", "connection reset")), // transient
            Err(Error::unavailable("consul", "connection reset")), // transient again
            Ok((3, 12)),
            Err(Error::PermissionDenied {
                backend: "consul",
                message: "ACL not found".into(),
            }),
        ]));
        let recorded = calls.clone();
        let verified: StdArc<Mutex<Vec<u64>>> = StdArc::default();
        let verifications = verified.clone();
        let epoch = StdArc::new(Epoch::new());
        let guard = epoch.guard();
        let mut stream = kv_core::spawn_watch(&tasks, move |tx| async move {
            let fetch = move |index: u64| {
                recorded.lock().unwrap().push((index, Instant::now()));
                let next = script.lock().unwrap().remove(0);
                async move { next }
            };
            // The store is healthy: the lower index is legitimate.
            let verify = move |seen: u64| {
                verifications.lock().unwrap().push(seen);
                async { Ok(()) }
            };
            run(tx, 1u32, 7, guard, fetch, verify, |state: &u32| {
                (*state, None)
            })
            .await;
        });
        let mut items = Vec::new();
        while let Some(item) = stream.next().await {
            items.push(item);
        }
        assert!(matches!(
            items.last(),
            Some(Err(Error::PermissionDenied { .. }))
        ));
        let values: Vec<u32> = items
            .iter()
            .filter_map(|i| i.as_ref().ok().copied())
            .collect();
        // Coalesced as the reader's pace allows (the terminal error may even replace the last
        // state), never backwards.
        assert!(values.windows(2).all(|w| w[0] < w[1]), "{values:?}");
        assert!(values.iter().all(|v| (1..=3).contains(v)), "{values:?}");
        let calls = calls.lock().unwrap();
        let indexes: Vec<u64> = calls.iter().map(|(i, _)| *i).collect();
        // 7 (initial), 10 (after the change), 0 (after going backwards), 0 (after an error,
        // resync with a plain read), 0 (again), 12.
        assert_eq!(indexes, [7, 10, 0, 0, 0, 12]);
        let gap = |a: usize, b: usize| calls[b].1 - calls[a].1;
        let no_pause = gap(1, 2);
        assert!(
            no_pause < Duration::from_millis(50),
            "paused {no_pause:?} after a good answer"
        );
        assert!(
            gap(2, 3) >= Duration::from_millis(100),
            "back-off after an error"
        );
        assert!(gap(3, 4) >= Duration::from_millis(200), "doubled");
        // Only the fall from 10 to 5 was judged; 12 after 5 is a rise again.
        assert_eq!(*verified.lock().unwrap(), [10]);
        assert_eq!(epoch.generation(), 0);
        assert_eq!(tasks.running(), 0);
    }

    /// A lower index that turns out to be a lost server state ends the watch with the
    /// epoch's error, without publishing the state of the other history; so does a loss
    /// noticed by another request of the handle while the watch waits.
    #[tokio::test]
    async fn a_lost_server_state_ends_the_watch() {
        let tasks = TaskSet::new();
        let epoch = StdArc::new(Epoch::new());
        let guard = epoch.guard();
        let judge = epoch.clone();
        let mut stream = kv_core::spawn_watch(&tasks, move |tx| async move {
            let script = StdArc::new(Mutex::new(vec![Ok((2u32, 120u64)), Ok((99, 24))]));
            let fetch = move |_index: u64| {
                let next = script.lock().unwrap().remove(0);
                async move { next }
            };
            let verify = move |seen: u64| {
                judge.declare(0, seen, 24);
                async { Ok(()) }
            };
            run(tx, 1u32, 100, guard, fetch, verify, |state: &u32| {
                (*state, None)
            })
            .await;
        });
        let mut items = Vec::new();
        while let Some(item) = stream.next().await {
            items.push(item);
        }
        let values: Vec<u32> = items
            .iter()
            .filter_map(|i| i.as_ref().ok().copied())
            .collect();
        assert!(
            !values.contains(&99),
            "published a state of the lost history: {values:?}"
        );
        let error = items.last().unwrap().as_ref().unwrap_err().to_string();
        assert!(error.contains("lost its state"), "{error}");
        assert!(error.contains("from 120 to 24"), "{error}");
        assert_eq!(epoch.generation(), 1);

        // Noticed elsewhere while this watch waits in a blocking query.
        let guard = epoch.guard();
        let mut stream = kv_core::spawn_watch(&tasks, move |tx| async move {
            let fetch = |_index: u64| std::future::pending::<Result<(u32, u64)>>();
            let verify = |_seen: u64| async { Ok(()) };
            run(tx, 1u32, 30, guard, fetch, verify, |state: &u32| {
                (*state, None)
            })
            .await;
        });
        assert_eq!(stream.next().await.unwrap().unwrap(), 1);
        // A stale answer does not count, an exact one below the highest index does.
        let mark = epoch.mark();
        epoch.observe(mark, 40);
        epoch.check(epoch.mark(), 45);
        assert_eq!(epoch.generation(), 1);
        epoch.check(epoch.mark(), 3);
        let item = tokio::time::timeout(Duration::from_secs(1), stream.next())
            .await
            .expect("the watch ends at once");
        let error = item.unwrap().unwrap_err().to_string();
        assert!(error.contains("from 45 to 3"), "{error}");
        assert_eq!(epoch.generation(), 2);
        // An answer to a request sent before the loss neither raises the new floor nor
        // declares another loss.
        epoch.check(mark, 1);
        epoch.observe(mark, 1000);
        epoch.check(epoch.mark(), 5);
        assert_eq!(epoch.generation(), 2);
        assert_eq!(tasks.running(), 0);
    }
}
