//! Locks: the lock is its key, created only when absent, with a TTL deadline renewed in the
//! background. Waiters sleep on the change broadcast (and on the holder's deadline).

use std::fmt;
use std::sync::{Arc, Weak};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use kv_core::ttl::deadline_millis;
use kv_core::{
    Acquired, CancellationToken, Error, HeldLock, LeaseNotifier, LockBackend, LockOptions, Result,
};
use tokio::sync::broadcast::{self, error::RecvError};

use crate::engine::{Change, Engine};
use crate::store::Handle;
use crate::watch::instant_of;

/// One lock of one handle (what `kv_core::Lock` drives).
pub(crate) struct BoltLock {
    handle: Weak<Handle>,
    /// The stored key.
    full: String,
    value: Bytes,
    ttl: Duration,
}

impl fmt::Debug for BoltLock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BoltLock")
            .field("key", &self.full)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl BoltLock {
    pub(crate) fn new(handle: &Arc<Handle>, full: String, options: LockOptions) -> Self {
        BoltLock {
            handle: Arc::downgrade(handle),
            full,
            value: options.value,
            ttl: options.ttl,
        }
    }
}

/// Waits for any change of `key` (or a lag, after which the caller re-checks).
async fn changed(rx: &mut broadcast::Receiver<Arc<Change>>, key: &str) {
    loop {
        match rx.recv().await {
            Ok(change) if change.updates.iter().any(|(k, _)| k == key) => return,
            Ok(_) => continue,
            Err(RecvError::Lagged(_)) => return,
            Err(RecvError::Closed) => std::future::pending().await,
        }
    }
}

#[async_trait]
impl LockBackend for BoltLock {
    async fn acquire(&self, abandon: CancellationToken) -> Result<Acquired> {
        let (engine, tasks, timeout) = {
            let handle = self.handle.upgrade().ok_or(Error::Closed)?;
            (
                handle.engine()?,
                handle.tasks.clone(),
                handle.config.timeout,
            )
        };
        // Subscribe first: a release between our attempt and our wait still wakes us.
        let mut rx = engine.subscribe();
        let index = loop {
            let (key, value, deadline) = (
                self.full.clone(),
                self.value.clone(),
                deadline_millis(self.ttl),
            );
            let attempt = engine
                .write(timeout, "lock", move |b| b.try_lock(key, value, deadline))
                .await?;
            let holder_deadline = match attempt {
                Ok(index) => break index,
                Err(holder_deadline) => holder_deadline,
            };
            tokio::select! {
                _ = abandon.cancelled() => return Err(Error::Closed),
                _ = changed(&mut rx, &self.full) => {}
                _ = tokio::time::sleep_until(instant_of(holder_deadline)), if holder_deadline != 0 => {}
            }
        };
        let (notifier, lease) = LeaseNotifier::new(index);
        tasks.spawn(renewal(
            engine.clone(),
            timeout,
            self.full.clone(),
            index,
            self.ttl,
            notifier.clone(),
            rx,
        ));
        Ok(Acquired {
            fencing_token: index,
            notifier,
            lease,
            held: Box::new(BoltHeld {
                engine,
                timeout,
                full: self.full.clone(),
                index,
            }),
        })
    }
}

/// Renews the deadline every `ttl / 3` and marks the lock lost as soon as anyone else
/// deletes or rewrites its key.
async fn renewal(
    engine: Arc<Engine>,
    timeout: Duration,
    full: String,
    index: u64,
    ttl: Duration,
    notifier: LeaseNotifier,
    mut rx: broadcast::Receiver<Arc<Change>>,
) {
    let renew = {
        let engine = engine.clone();
        let full = full.clone();
        move || {
            let engine = engine.clone();
            let key = full.clone();
            async move {
                let deadline = deadline_millis(ttl);
                engine
                    .write(timeout, "lock renewal", move |b| {
                        b.renew(key, index, deadline)
                    })
                    .await
            }
        }
    };
    let ownership = async {
        loop {
            let still_ours = match rx.recv().await {
                // Changes up to our acquisition are history (the previous holder's release…).
                Ok(change) if change.seq <= index => continue,
                Ok(change) => change
                    .updates
                    .iter()
                    .filter(|(k, _)| *k == full)
                    .all(|(_, u)| u.index() == Some(index)),
                Err(RecvError::Lagged(_)) => {
                    let key = full.clone();
                    match engine.get(&key) {
                        Ok((entry, _)) => entry.is_some_and(|e| e.index == index),
                        // Renewal decides on failures.
                        Err(_) => true,
                    }
                }
                Err(RecvError::Closed) => std::future::pending().await,
            };
            if !still_ours {
                tracing::debug!(key = %full, "kv-bolt: lock key deleted or taken over");
                notifier.lost();
                return;
            }
        }
    };
    // Cancelled (the handle was dropped without `close`): nobody renews any more, so the
    // lock is as good as lost; say so now rather than leave the lease "held" forever. No
    // effect when the lock already ended (released, lost).
    struct LostOnDrop(LeaseNotifier);
    impl Drop for LostOnDrop {
        fn drop(&mut self) {
            self.0.lost();
        }
    }
    let _lost_on_drop = LostOnDrop(notifier.clone());
    tokio::select! {
        _ = kv_core::lock::keep_alive(ttl, notifier.clone(), renew) => {}
        _ = ownership => {}
        _ = notifier.ended() => {}
    }
}

/// A held lock: deletes the key on release if it still carries our acquisition's index.
struct BoltHeld {
    engine: Arc<Engine>,
    timeout: Duration,
    full: String,
    index: u64,
}

impl fmt::Debug for BoltHeld {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BoltHeld")
            .field("key", &self.full)
            .field("index", &self.index)
            .finish()
    }
}

#[async_trait]
impl HeldLock for BoltHeld {
    async fn release(self: Box<Self>) -> Result<()> {
        let BoltHeld {
            engine,
            timeout,
            full,
            index,
        } = *self;
        engine
            .write(timeout, "unlock", move |b| b.release(full, index))
            .await?;
        Ok(())
    }
}
