//! Distributed locks: the user-facing [`Lock`], and what a backend implements
//! ([`LockBackend`], [`HeldLock`]) plus the shared renewal loop ([`keep_alive`]).
//!
//! # The lock contract (every backend)
//!
//! * [`Store::new_lock`](crate::Store::new_lock) returns an unheld [`Lock`]; nothing is sent.
//! * [`Lock::lock`] waits until the lock is acquired. Acquiring means the lock's key did not
//!   exist and now holds [`LockOptions::value`](crate::LockOptions), bound to a lease of
//!   [`LockOptions::ttl`](crate::LockOptions) that the holder renews in the background. While
//!   held, every client's `get(key)` returns that value. A key that exists for any other
//!   reason (a plain `put`) keeps the lock unavailable until it is deleted.
//! * `lock` is cancel-safe: dropping its future (or a `tokio::time::timeout` around it) stops
//!   the wait, and a lock acquired at that very moment is released in the background.
//! * The returned [`LockLease`] carries a *fencing token*: the key's `last_index` at
//!   acquisition, which strictly rises with every acquisition of that key on every backend.
//!   Pass it to the resource you protect so it can refuse a stale holder.
//! * [`LockLease::lost`] completes when the lock stops being held: it expired because renewal
//!   failed for a whole TTL, someone deleted or overwrote the key, the store was closed, or it
//!   was unlocked. [`LockLease::state`] says which.
//! * [`Lock::unlock`] deletes the key if this holder still owns it. It returns
//!   [`Error::LockLost`] if the lock had been lost meanwhile, [`Error::LockNotHeld`] if it was
//!   not locked. The same `Lock` can be locked again afterwards. `unlock` is cancel-safe too:
//!   cut short at any point, it still releases the lock in the background.
//! * Locking a `Lock` that is already held is [`Error::LockAlreadyHeld`].
//! * A held lock whose `Lock` is dropped is released in the background: the release counts in
//!   [`Store::background_tasks`](crate::Store::background_tasks) until the server has
//!   answered. [`Store::close`](crate::Store::close) releases every lock of the handle before
//!   returning, and waits for the releases of dropped locks still in flight.
//! * After release or expiry the key is gone: a lock never leaves its value behind (so the
//!   next `lock` is not blocked by a stale value).

use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex as StdMutex, Weak};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{Mutex, oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};
use crate::tasks::TaskSet;

/// Where an acquisition stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockState {
    /// This holder owns the lock.
    Held,
    /// Released on purpose: `unlock`, the `Lock` dropped, or the store closed.
    Released,
    /// Lost involuntarily: renewal failed past the TTL, or the key was deleted or taken over.
    Lost,
}

/// One acquisition of a lock: its fencing token and its lost signal. Cheap to clone.
#[derive(Clone)]
pub struct LockLease {
    key: Arc<str>,
    fencing_token: u64,
    state: watch::Receiver<LockState>,
}

impl fmt::Debug for LockLease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LockLease")
            .field("key", &self.key)
            .field("fencing_token", &self.fencing_token)
            .field("state", &self.state())
            .finish()
    }
}

impl LockLease {
    /// The lock's normalised key (empty on a lease a backend made, until [`Lock::lock`]
    /// hands it out).
    pub fn key(&self) -> &str {
        &self.key
    }

    /// A number that strictly rises with every acquisition of this key, on every backend.
    pub fn fencing_token(&self) -> u64 {
        self.fencing_token
    }

    /// The acquisition's state now.
    pub fn state(&self) -> LockState {
        *self.state.borrow()
    }

    /// True while held.
    pub fn is_held(&self) -> bool {
        self.state() == LockState::Held
    }

    /// Completes when the lock is no longer held, and says why.
    pub async fn lost(&self) -> LockState {
        let mut rx = self.state.clone();
        match rx.wait_for(|s| *s != LockState::Held).await {
            Ok(state) => *state,
            // The notifier is gone without a verdict: nobody can vouch for the lock any more.
            Err(_) => LockState::Lost,
        }
    }
}

/// The backend's side of a [`LockLease`]: renewal loops report loss through it.
#[derive(Debug, Clone)]
pub struct LeaseNotifier {
    tx: Arc<watch::Sender<LockState>>,
}

impl LeaseNotifier {
    /// A notifier and the lease it controls, for an acquisition with `fencing_token`.
    pub fn new(fencing_token: u64) -> (Self, LockLease) {
        let (tx, rx) = watch::channel(LockState::Held);
        (
            LeaseNotifier { tx: Arc::new(tx) },
            LockLease {
                key: Arc::from(""),
                fencing_token,
                state: rx,
            },
        )
    }

    /// Marks the lock lost (no effect once it has ended).
    pub fn lost(&self) {
        self.end(LockState::Lost);
    }

    /// Marks the lock released (no effect once it has ended).
    pub fn released(&self) {
        self.end(LockState::Released);
    }

    fn end(&self, state: LockState) {
        self.tx.send_if_modified(|s| {
            if *s == LockState::Held {
                *s = state;
                true
            } else {
                false
            }
        });
    }

    /// True while held.
    pub fn is_held(&self) -> bool {
        *self.tx.borrow() == LockState::Held
    }

    /// Completes when the lock has ended, for whatever reason: renewal loops select on it.
    pub async fn ended(&self) {
        let mut rx = self.tx.subscribe();
        let _ = rx.wait_for(|s| *s != LockState::Held).await;
    }
}

/// A successful acquisition, as a backend reports it.
#[derive(Debug)]
pub struct Acquired {
    /// The key's `last_index` after the acquiring write.
    pub fencing_token: u64,
    /// The notifier the backend's renewal loop reports loss through.
    pub notifier: LeaseNotifier,
    /// The lease the user gets (made together with `notifier`).
    pub lease: LockLease,
    /// Releases the lock.
    pub held: Box<dyn HeldLock>,
}

/// What a backend implements to offer locks; [`Lock`] adds the state machine, cancel-safety
/// and bookkeeping on top, identically for every backend.
#[async_trait]
pub trait LockBackend: Send + Sync + fmt::Debug + 'static {
    /// Waits until the lock's key is absent, creates it with the lock's value bound to a lease
    /// of the lock's TTL, starts background renewal (on the store's [`TaskSet`], reporting
    /// loss through the notifier) and returns the acquisition. Must return promptly, with any
    /// error, once `abandon` is cancelled while waiting.
    async fn acquire(&self, abandon: CancellationToken) -> Result<Acquired>;
}

/// A held lock, as the backend represents it.
#[async_trait]
pub trait HeldLock: Send + Sync + fmt::Debug {
    /// Stops renewal and deletes the key if this holder still owns it. Must not fail because
    /// the lock was already lost; report only failures to reach the server.
    async fn release(self: Box<Self>) -> Result<()>;
}

/// What a held lock's owner and the store's registry share: taken by whoever releases first.
type SlotContent = Option<(LeaseNotifier, Box<dyn HeldLock>)>;
type Slot = Arc<Mutex<SlotContent>>;

/// Locks currently held through one store handle, so that closing the handle releases them.
#[derive(Debug, Default, Clone)]
pub(crate) struct HeldRegistry {
    slots: Arc<StdMutex<Vec<Weak<Mutex<SlotContent>>>>>,
}

impl HeldRegistry {
    fn register(&self, slot: &Slot) {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        slots.retain(|w| w.strong_count() > 0);
        slots.push(Arc::downgrade(slot));
    }

    /// Releases every registered lock (each bounded by `limit`).
    pub(crate) async fn release_all(&self, limit: Duration) {
        let slots: Vec<_> = {
            let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
            std::mem::take(&mut *slots)
        };
        for slot in slots.iter().filter_map(Weak::upgrade) {
            // Waiting for the slot also waits for an `unlock` or a dropped lock's release in
            // flight (they keep it locked until the server answers); the limit bounds both.
            let release = async {
                let mut content = slot.lock().await;
                match content.take() {
                    Some((notifier, held)) => {
                        notifier.released();
                        held.release().await
                    }
                    None => Ok(()),
                }
            };
            if let Err(error) = tokio::time::timeout(limit, release).await.unwrap_or(Ok(())) {
                tracing::warn!(%error, "releasing a lock while closing the store failed");
            }
        }
    }
}

/// A distributed lock on one key. See the [module documentation](self) for the contract.
pub struct Lock {
    key: String,
    backend: Arc<dyn LockBackend>,
    tasks: TaskSet,
    held: Option<(LockLease, Slot)>,
}

impl fmt::Debug for Lock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lock")
            .field("key", &self.key)
            .field("lease", &self.held.as_ref().map(|(lease, _)| lease))
            .finish()
    }
}

impl Lock {
    /// An unheld lock on the normalised `key`; for backends' `new_lock`.
    pub fn new(key: String, backend: Arc<dyn LockBackend>, tasks: TaskSet) -> Self {
        Lock {
            key,
            backend,
            tasks,
            held: None,
        }
    }

    /// The lock's normalised key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The current acquisition, if any (it may have been lost since: check its state).
    pub fn lease(&self) -> Option<&LockLease> {
        self.held.as_ref().map(|(lease, _)| lease)
    }

    /// Waits until the lock is acquired. Cancel-safe. Bound the wait with
    /// `tokio::time::timeout`.
    pub async fn lock(&mut self) -> Result<LockLease> {
        self.tasks.ensure_open()?;
        if let Some((lease, _)) = &self.held {
            if lease.is_held() {
                return Err(Error::LockAlreadyHeld {
                    key: self.key.clone(),
                });
            }
            // The previous acquisition was lost: clean up what is left of it first.
            if let Some((_, slot)) = self.held.take() {
                release_slot(&slot).await.ok();
            }
        }
        let (tx, rx) = oneshot::channel();
        let abandon = CancellationToken::new();
        let backend = self.backend.clone();
        let abandoned = abandon.clone();
        let tasks = self.tasks.clone();
        let acquiring = self.tasks.spawn(async move {
            let result = backend.acquire(abandoned).await;
            // From here on the acquisition releases itself wherever it is dropped: in this
            // task if the caller is gone, inside the channel if the caller goes away before
            // reading it, or in the caller's future if that is cancelled before returning.
            let result = result.map(|acquired| Handover::new(acquired, tasks));
            let _ = tx.send(result);
        });
        let _abandon_on_drop = abandon.drop_guard();
        let handover = rx.await.map_err(|_| Error::Closed)??;
        // The task ends right after handing the lock over; wait for that so that
        // `background_tasks()` no longer counts it when `lock` returns. Cancelled here, the
        // handover is dropped and releases the lock.
        let _ = acquiring.await;
        let Some((mut lease, notifier, held)) = handover.take() else {
            return Err(Error::Closed);
        };
        lease.key = Arc::from(self.key.as_str());
        let slot: Slot = Arc::new(Mutex::new(Some((notifier, held))));
        self.tasks.locks().register(&slot);
        self.held = Some((lease.clone(), slot));
        Ok(lease)
    }

    /// Releases the lock. [`Error::LockLost`] if it had been lost meanwhile (the key is
    /// cleaned up all the same), [`Error::LockNotHeld`] if it was not locked.
    ///
    /// Cancel-safe: the release runs in a task of the handle, so an `unlock` whose future is
    /// dropped (a `timeout` around it) still finishes releasing the lock in the background,
    /// like a dropped [`Lock`].
    pub async fn unlock(&mut self) -> Result<()> {
        let Some((lease, slot)) = self.held.take() else {
            return Err(Error::LockNotHeld {
                key: self.key.clone(),
            });
        };
        mark_released(&slot);
        let (tx, rx) = oneshot::channel();
        let release = async move {
            let _ = tx.send(release_slot(&slot).await);
        };
        if self.tasks.is_closed() {
            tokio::spawn(release);
        } else {
            self.tasks.spawn(release);
        }
        // A task cancelled by `close` drops the sender: the close released the lock.
        let released = rx.await.unwrap_or(Ok(false));
        if lease.state() == LockState::Lost {
            // Losing the lock is the news; a failed clean-up of a lost lock is not.
            return Err(Error::LockLost {
                key: self.key.clone(),
            });
        }
        match released? {
            true => Ok(()),
            // The store was closed, which released the lock already.
            false => Err(Error::Closed),
        }
    }
}

/// Ends the slot's lease as released at once, before the release reaches the server: a lease
/// the caller gave up must not read `Held` while the background release runs. (A slot locked
/// right now is being released by someone else, who marks it.)
fn mark_released(slot: &Slot) {
    if let Ok(content) = slot.try_lock()
        && let Some((notifier, _)) = content.as_ref()
    {
        notifier.released();
    }
}

/// Releases what the slot holds; `Ok(false)` if it was empty.
async fn release_slot(slot: &Slot) -> Result<bool> {
    // The slot stays locked until the server has answered, so that a `close` running at the
    // same time (which releases every registered slot) waits for this release instead of
    // finding the slot empty and returning while the key still exists.
    let mut content = slot.lock().await;
    let Some((notifier, held)) = content.take() else {
        return Ok(false);
    };
    notifier.released();
    held.release().await?;
    Ok(true)
}

/// An acquisition on its way from the acquiring task to the caller of [`Lock::lock`]. If it is
/// dropped before [`take`](Handover::take) (the caller gave up at any point after the server
/// granted the lock), it releases the lock in the background, so that a cancelled `lock()`
/// never leaves a lock held by nobody.
struct Handover {
    acquired: Option<Acquired>,
    tasks: TaskSet,
}

impl Handover {
    fn new(acquired: Acquired, tasks: TaskSet) -> Self {
        Handover {
            acquired: Some(acquired),
            tasks,
        }
    }

    fn take(mut self) -> Option<(LockLease, LeaseNotifier, Box<dyn HeldLock>)> {
        let acquired = self.acquired.take()?;
        Some((acquired.lease, acquired.notifier, acquired.held))
    }
}

impl Drop for Handover {
    fn drop(&mut self) {
        let Some(acquired) = self.acquired.take() else {
            return;
        };
        acquired.notifier.released();
        let held = acquired.held;
        let release = async move {
            if let Err(error) = held.release().await {
                tracing::warn!(%error, "releasing a lock whose acquisition was cancelled failed");
            }
        };
        // Counted among the handle's tasks (so `close` waits for it); a closed handle has
        // cancelled its tasks, so the release then runs on its own.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::warn!(
                "a cancelled lock acquisition was dropped outside a runtime: it stays held until its TTL runs out"
            );
            return;
        };
        if self.tasks.is_closed() {
            runtime.spawn(release);
        } else {
            self.tasks.spawn(release);
        }
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        let Some((_, slot)) = self.held.take() else {
            return;
        };
        mark_released(&slot);
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::warn!(
                key = %self.key,
                "a held lock was dropped outside a runtime: it stays held until its TTL runs out"
            );
            return;
        };
        let release = async move {
            if let Err(error) = release_slot(&slot).await {
                tracing::warn!(%error, "releasing a dropped lock failed");
            }
        };
        // Counted among the handle's tasks until the server has answered, so
        // `background_tasks()` shows the release in flight; `close` waits for it through the
        // slot. A closed handle released the lock already, so the task finds the slot empty.
        if self.tasks.is_closed() {
            runtime.spawn(release);
        } else {
            self.tasks.spawn(release);
        }
    }
}

/// The renewal period for a lease of `ttl`: a third of it, so two renewals can fail before
/// the lease runs out.
pub fn renew_interval(ttl: Duration) -> Duration {
    ttl / 3
}

/// The shared renewal loop. Calls `renew` every [`renew_interval`]; `Ok(true)` means renewed,
/// `Ok(false)` means the lock is no longer ours (deleted or taken over) and marks it lost at
/// once; errors are retried until no renewal has succeeded for a whole TTL (measured from the
/// start of the last successful request), then the lock is marked lost — before the server
/// can hand it to someone else. Returns when the lock ends.
pub async fn keep_alive<F, Fut>(ttl: Duration, notifier: LeaseNotifier, mut renew: F)
where
    F: FnMut() -> Fut + Send,
    Fut: Future<Output = Result<bool>> + Send,
{
    let interval = renew_interval(ttl);
    let mut last_success = Instant::now();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = notifier.ended() => return,
        }
        let attempt_started = Instant::now();
        let outcome = tokio::select! {
            outcome = tokio::time::timeout(interval, renew()) => outcome,
            _ = notifier.ended() => return,
        };
        match outcome {
            Ok(Ok(true)) => last_success = attempt_started,
            Ok(Ok(false)) => {
                tracing::debug!("lock taken over or deleted: marking it lost");
                notifier.lost();
                return;
            }
            Ok(Err(error)) => tracing::debug!(%error, "lock renewal failed"),
            Err(_) => tracing::debug!("lock renewal timed out"),
        }
        if last_success.elapsed() + interval >= ttl {
            tracing::warn!("lock renewal failed for a whole TTL: marking it lost");
            notifier.lost();
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A lock "server" in memory whose release takes `delay`: enough to widen the window
    /// between a dropped lock's release starting and finishing.
    #[derive(Debug)]
    struct SlowBackend {
        held: Arc<AtomicUsize>,
        delay: Duration,
    }

    #[derive(Debug)]
    struct SlowHeld {
        held: Arc<AtomicUsize>,
        delay: Duration,
    }

    #[async_trait]
    impl LockBackend for SlowBackend {
        async fn acquire(&self, _abandon: CancellationToken) -> Result<Acquired> {
            self.held.fetch_add(1, Ordering::SeqCst);
            let (notifier, lease) = LeaseNotifier::new(1);
            Ok(Acquired {
                fencing_token: 1,
                notifier,
                lease,
                held: Box::new(SlowHeld {
                    held: self.held.clone(),
                    delay: self.delay,
                }),
            })
        }
    }

    #[async_trait]
    impl HeldLock for SlowHeld {
        async fn release(self: Box<Self>) -> Result<()> {
            tokio::time::sleep(self.delay).await;
            self.held.fetch_sub(1, Ordering::SeqCst);
            Ok(())
        }
    }

    /// Waits, at most 3 s, until no task of `tasks` runs and no lock is held; a test then
    /// asserts on what it finds, so a release that never ends fails instead of hanging.
    async fn settle(tasks: &TaskSet, held: &AtomicUsize) {
        let deadline = Instant::now() + Duration::from_secs(3);
        while (held.load(Ordering::SeqCst) > 0 || tasks.running() > 0) && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    fn slow_lock(tasks: &TaskSet, held: &Arc<AtomicUsize>, delay: Duration) -> Lock {
        let backend = Arc::new(SlowBackend {
            held: held.clone(),
            delay,
        });
        Lock::new("k".into(), backend, tasks.clone())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_dropped_locks_release_counts_as_a_task_until_it_is_done() {
        let tasks = TaskSet::new();
        let held = Arc::new(AtomicUsize::new(0));
        let mut lock = slow_lock(&tasks, &held, Duration::from_millis(200));
        lock.lock().await.unwrap();
        assert_eq!(tasks.running(), 0);
        drop(lock);
        assert_eq!(tasks.running(), 1, "the release in flight is counted");
        settle(&tasks, &held).await;
        assert_eq!(tasks.running(), 0);
        assert_eq!(
            held.load(Ordering::SeqCst),
            0,
            "released once the count is back"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn close_waits_for_releases_of_dropped_locks_already_in_flight() {
        for delay_before_close in [0, 1, 5, 20, 50] {
            let tasks = TaskSet::new();
            let held = Arc::new(AtomicUsize::new(0));
            let mut locks = Vec::new();
            for _ in 0..3 {
                let mut lock = slow_lock(&tasks, &held, Duration::from_millis(100));
                lock.lock().await.unwrap();
                locks.push(lock);
            }
            drop(locks);
            // Lets the releases start (and take their slots) before `close` runs.
            tokio::time::sleep(Duration::from_millis(delay_before_close)).await;
            tasks.close(Duration::from_secs(5)).await;
            assert_eq!(
                held.load(Ordering::SeqCst),
                0,
                "close returned with a release still in flight ({delay_before_close} ms)"
            );
            assert_eq!(tasks.running(), 0);
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_cancelled_unlock_still_releases() {
        let tasks = TaskSet::new();
        let held = Arc::new(AtomicUsize::new(0));
        let mut lock = slow_lock(&tasks, &held, Duration::from_millis(100));
        for cut in [0, 1, 20, 50, 90] {
            lock.lock().await.unwrap();
            let unlock = tokio::time::timeout(Duration::from_millis(cut), lock.unlock()).await;
            assert!(unlock.is_err(), "cut short after {cut} ms");
            assert!(
                lock.lease().is_none(),
                "a cancelled unlock leaves the Lock unheld"
            );
            settle(&tasks, &held).await;
            assert_eq!(tasks.running(), 0);
            assert_eq!(
                held.load(Ordering::SeqCst),
                0,
                "released after a cut at {cut} ms"
            );
        }
        lock.lock().await.unwrap();
        lock.unlock().await.unwrap();
        assert_eq!(held.load(Ordering::SeqCst), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_close_cut_short_still_releases_every_lock_and_stops_every_task() {
        for cut in [0, 1, 30, 150] {
            let tasks = TaskSet::new();
            let held = Arc::new(AtomicUsize::new(0));
            let mut locks = Vec::new();
            for _ in 0..3 {
                let mut lock = slow_lock(&tasks, &held, Duration::from_millis(100));
                lock.lock().await.unwrap();
                locks.push(lock);
            }
            let forever = tasks.spawn(std::future::pending());
            let closed = tokio::time::timeout(
                Duration::from_millis(cut),
                tasks.close(Duration::from_secs(5)),
            )
            .await;
            assert!(closed.is_err(), "cut short after {cut} ms");
            assert!(tasks.is_closed());
            settle(&tasks, &held).await;
            assert_eq!(
                held.load(Ordering::SeqCst),
                0,
                "every lock released (cut at {cut} ms)"
            );
            assert_eq!(tasks.running(), 0, "every task stopped (cut at {cut} ms)");
            assert!(forever.await.is_ok(), "stopped by the close, not aborted");
            for lock in &locks {
                assert_eq!(lock.lease().unwrap().state(), LockState::Released);
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn close_bounds_the_wait_for_a_release_in_flight() {
        let tasks = TaskSet::new();
        let held = Arc::new(AtomicUsize::new(0));
        let mut lock = slow_lock(&tasks, &held, Duration::from_secs(30));
        lock.lock().await.unwrap();
        drop(lock);
        tokio::time::sleep(Duration::from_millis(20)).await;
        let started = Instant::now();
        tasks.close(Duration::from_millis(200)).await;
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(tasks.running(), 0);
    }
}
