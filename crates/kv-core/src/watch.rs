//! Watch plumbing shared by every backend.
//!
//! A backend writes a watch as a loop that pushes the *current state* (the key's pair or
//! `None`, or the subtree's listing) into a [`WatchSender`]. [`spawn_watch`] runs that loop on
//! the store's [`TaskSet`] and returns the stream the user reads. The channel keeps only the
//! latest state, so:
//!
//! * a consumer that keeps up sees every change, one item each;
//! * a consumer that falls behind sees the intermediate states coalesced, never a stale state
//!   after a newer one, and always ends on the latest state;
//! * equal consecutive states are sent once;
//! * dropping the stream aborts the loop at once;
//! * a loop that ends without calling [`WatchSender::fail`] (the store was closed) yields
//!   `Err(Error::Closed)`: a stream never ends without saying why.

use std::future::Future;

use futures::stream::{self, BoxStream, StreamExt};
use tokio::sync::watch;

use crate::error::{Error, Result};
use crate::tasks::{AbortOnDrop, TaskSet};
use crate::types::KvPair;

/// The stream returned by [`Store::watch`](crate::Store::watch): `Some(pair)` while the key
/// exists, `None` while it does not.
pub type WatchStream = BoxStream<'static, Result<Option<KvPair>>>;

/// The stream returned by [`Store::watch_tree`](crate::Store::watch_tree): full snapshots of
/// the subtree, shaped like [`Store::list`](crate::Store::list).
pub type WatchTreeStream = BoxStream<'static, Result<Vec<KvPair>>>;

#[derive(Debug, Clone)]
enum Slot<T> {
    Pending,
    Value(T),
    Failed(Error),
}

/// The producing end of a watch, held by the backend's loop.
#[derive(Debug)]
pub struct WatchSender<T> {
    tx: watch::Sender<Slot<T>>,
}

impl<T: Clone + PartialEq + Send + Sync + 'static> WatchSender<T> {
    /// Publishes the current state; a state equal to the last one is dropped. Returns `false`
    /// when the stream was dropped, so the loop can stop.
    pub fn send(&self, state: T) -> bool {
        self.tx.send_if_modified(|slot| match slot {
            Slot::Value(current) if *current == state => false,
            Slot::Failed(_) => false,
            _ => {
                *slot = Slot::Value(state);
                true
            }
        });
        !self.tx.is_closed()
    }

    /// Ends the stream with `error` as its last item.
    pub fn fail(self, error: Error) {
        self.tx.send_replace(Slot::Failed(error));
    }

    /// True once the stream was dropped.
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }

    /// Completes when the stream is dropped.
    pub async fn closed(&self) {
        self.tx.closed().await
    }
}

impl<T> Drop for WatchSender<T> {
    fn drop(&mut self) {
        self.tx.send_if_modified(|slot| {
            if matches!(slot, Slot::Failed(_)) {
                false
            } else {
                *slot = Slot::Failed(Error::Closed);
                true
            }
        });
    }
}

/// Runs `run` on `tasks` with a fresh [`WatchSender`] and returns the consuming stream.
/// Dropping the stream aborts the task.
pub fn spawn_watch<T, F, Fut>(tasks: &TaskSet, run: F) -> BoxStream<'static, Result<T>>
where
    T: Clone + PartialEq + Send + Sync + 'static,
    F: FnOnce(WatchSender<T>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = watch::channel(Slot::Pending);
    let task = tasks.spawn_owned(run(WatchSender { tx }));
    receiver_stream(rx, task)
}

struct Reader<T> {
    rx: watch::Receiver<Slot<T>>,
    _task: AbortOnDrop,
    done: bool,
}

fn receiver_stream<T>(
    rx: watch::Receiver<Slot<T>>,
    task: AbortOnDrop,
) -> BoxStream<'static, Result<T>>
where
    T: Clone + Send + Sync + 'static,
{
    let reader = Reader {
        rx,
        _task: task,
        done: false,
    };
    stream::unfold(reader, |mut reader| async move {
        if reader.done {
            return None;
        }
        loop {
            reader.rx.changed().await.ok()?;
            let slot = reader.rx.borrow_and_update().clone();
            match slot {
                Slot::Pending => continue,
                Slot::Value(value) => return Some((Ok(value), reader)),
                Slot::Failed(error) => {
                    reader.done = true;
                    return Some((Err(error), reader));
                }
            }
        }
    })
    .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn coalesces_dedupes_and_ends_with_an_error() {
        let tasks = TaskSet::new();
        let (go_tx, go_rx) = tokio::sync::oneshot::channel::<()>();
        let mut stream = spawn_watch(&tasks, |tx: WatchSender<u32>| async move {
            tx.send(1);
            tx.send(1);
            let _ = go_rx.await;
            for i in 2..=5 {
                tx.send(i);
            }
        });
        assert_eq!(stream.next().await.unwrap().unwrap(), 1);
        go_tx.send(()).unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        // The loop ended after sending 5: the stream reports Closed after or instead of 5.
        let rest: Vec<_> = stream.collect().await;
        assert!(matches!(rest.last(), Some(Err(Error::Closed))));
        assert!(rest.len() <= 2);
    }

    #[tokio::test]
    async fn dropping_the_stream_stops_the_task() {
        let tasks = TaskSet::new();
        let stream = spawn_watch(&tasks, |tx: WatchSender<u32>| async move {
            tx.send(1);
            futures::future::pending::<()>().await;
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(tasks.running(), 1);
        drop(stream);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(tasks.running(), 0);
    }
}
