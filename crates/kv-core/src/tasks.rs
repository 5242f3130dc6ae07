//! Background tasks owned by a store handle, and the handle's open/closed state.
//!
//! Every watch loop, lock renewal and keep-alive a backend runs is spawned through its
//! [`TaskSet`], so that [`Store::close`](crate::Store::close) can stop all of them at once and
//! [`Store::background_tasks`](crate::Store::background_tasks) can prove that none leaked.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};
use crate::lock::HeldRegistry;

/// A counted, cancellable set of background tasks plus the closed flag of a store handle.
/// Cloning shares the set.
#[derive(Debug, Clone, Default)]
pub struct TaskSet {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    running: AtomicUsize,
    closed: AtomicBool,
    shutdown: CancellationToken,
    locks: HeldRegistry,
}

/// Decrements the running count when the task's future is dropped, whether it finished,
/// was aborted or was cancelled.
struct Running(Arc<Inner>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, Ordering::SeqCst);
    }
}

impl TaskSet {
    /// An empty, open set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Spawns `future` on the current tokio runtime. It stops at its next await point when the
    /// set is closed, or when the returned handle is aborted.
    pub fn spawn<F>(&self, future: F) -> JoinHandle<()>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.inner.running.fetch_add(1, Ordering::SeqCst);
        let guard = Running(self.inner.clone());
        let shutdown = self.inner.shutdown.clone();
        tokio::spawn(async move {
            let _guard = guard;
            tokio::select! {
                _ = future => {}
                _ = shutdown.cancelled() => {}
            }
        })
    }

    /// Spawns `future` and returns a guard that aborts it when dropped: the way a stream or a
    /// lock ties a task's life to its owner.
    pub fn spawn_owned<F>(&self, future: F) -> AbortOnDrop
    where
        F: Future<Output = ()> + Send + 'static,
    {
        AbortOnDrop(self.spawn(future))
    }

    /// How many tasks are running now.
    pub fn running(&self) -> usize {
        self.inner.running.load(Ordering::SeqCst)
    }

    /// Closes the handle: later [`ensure_open`](Self::ensure_open) calls fail, every lock
    /// acquired through it is released (each within `release_limit`), then every task is
    /// cancelled, and `close` returns once they have stopped (waiting at most 1 s), so that
    /// [`running`](Self::running) is 0 afterwards. Idempotent. Backends call it first in `close`, then shut their client down;
    /// their [`HeldLock::release`](crate::HeldLock::release) must therefore work on a closed
    /// set.
    ///
    /// Cancel-safe: the closing runs in a task of its own, so a `close` cut short (a `timeout`
    /// around it) still releases the locks and stops the tasks in the background.
    pub async fn close(&self, release_limit: std::time::Duration) {
        self.inner.closed.store(true, Ordering::SeqCst);
        let inner = self.inner.clone();
        let closing = async move {
            inner.locks.release_all(release_limit).await;
            inner.shutdown.cancel();
            // Cancelled tasks stop at their next poll; wait for that (bounded) so that a
            // closed handle reports no background task.
            let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(1);
            while inner.running.load(Ordering::SeqCst) > 0 && tokio::time::Instant::now() < deadline
            {
                tokio::time::sleep(std::time::Duration::from_millis(2)).await;
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                let _ = runtime.spawn(closing).await;
            }
            Err(_) => closing.await,
        }
    }

    pub(crate) fn locks(&self) -> &HeldRegistry {
        &self.inner.locks
    }

    /// True once [`close`](Self::close) was called.
    pub fn is_closed(&self) -> bool {
        self.inner.closed.load(Ordering::SeqCst)
    }

    /// `Err(Error::Closed)` once the handle is closed: the first line of every store call.
    pub fn ensure_open(&self) -> Result<()> {
        if self.is_closed() {
            Err(Error::Closed)
        } else {
            Ok(())
        }
    }

    /// A token cancelled when the set is closed, for loops that want to finish cleanly.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.inner.shutdown.clone()
    }
}

/// Aborts the task when dropped.
#[derive(Debug)]
pub struct AbortOnDrop(JoinHandle<()>);

impl AbortOnDrop {
    /// True when the task has ended.
    pub fn is_finished(&self) -> bool {
        self.0.is_finished()
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
