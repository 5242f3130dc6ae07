//! # kv-election: leader election on any kv-core store
//!
//! Campaign, resign, proclaim and observe on any [`Arc<dyn Store>`](kv_core::Store) — etcd,
//! Consul, ZooKeeper, Redis, DynamoDB or the embedded store — built only on the contract's
//! [locks](kv_core::lock), [watches](kv_core::Store::watch_tree) and
//! [guarded writes](kv_core::LockLease::guarded_put). There is no backend-specific code here:
//! what the contract guarantees on every backend, the election guarantees on every backend.
//!
//! ```no_run
//! # async fn demo(store: std::sync::Arc<dyn kv_core::Store>) -> kv_election::Result<()> {
//! use futures::StreamExt;
//! use kv_election::{Election, LeaderState};
//!
//! let election = Election::new(store, "services/scheduler/leader")?;
//!
//! // A candidate: waits until elected (cancel-safe: wrap it in a timeout or a select!).
//! let mut leadership = election.campaign("node-1:8080").await?;
//! let term = leadership.term(); // the fencing token: pass it to what you protect
//! leadership.proclaim("node-1:9090").await?; // refused (NotLeader) once leadership is gone
//! tokio::select! {
//!     _ = leadership.lost() => { /* step down at once: no longer guaranteed to lead */ }
//!     _ = tokio::time::sleep(std::time::Duration::from_secs(60)) => {
//!         leadership.resign().await?; // idempotent, never panics, also after a loss
//!     }
//! }
//!
//! // An observer: the current state first, then every change, deduplicated.
//! let mut states = election.observe().await?;
//! while let Some(state) = states.next().await {
//!     match state? {
//!         LeaderState::Leader(leader) => println!("leader {:?} (term {})", leader.value, leader.term),
//!         LeaderState::NoLeader => println!("no leader"),
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! ## Layout in the store
//!
//! An election named `E` uses two keys below the directory `E`:
//!
//! | key | what | written by |
//! | --- | --- | --- |
//! | `E/lock` | the election's lock; while held, its value is the leader's value at election | [`Lock::lock`](kv_core::Lock::lock) (renewed in the background) |
//! | `E/value` | `<term>\n<value>`: the value last proclaimed, with the term it was proclaimed in | [`Leadership::proclaim`], as a guarded write ([`LockLease::guarded_put`](kv_core::LockLease::guarded_put)) |
//!
//! The **term** is the lock's fencing token: the lock key's `last_index` at acquisition,
//! which strictly rises with every election on every backend. The lock key itself is never
//! written by this crate after acquisition (that would change its `last_index` and break
//! [`Condition::LockHeld`](kv_core::Condition::LockHeld); on some backends writing a lock key
//! breaks the lock). Other keys below `E` are ignored.
//!
//! ## What each part guarantees
//!
//! * [`Election::campaign`] waits until this candidate holds the lock. It is cancel-safe
//!   (built on [`Lock::lock`](kv_core::Lock::lock)): dropping the future stops the wait, and
//!   a lock granted at that very moment is released in the background.
//! * [`Leadership::lost`] completes the moment leadership can no longer be guaranteed: the
//!   lock's lease ended (renewal failed for a whole TTL, the store was closed), or a watch on
//!   the lock key saw it deleted or taken over — which is noticed within a watch round trip,
//!   not only at the next renewal.
//! * [`Leadership::proclaim`] changes the published value without an election. It is one
//!   transaction conditioned on the lock still being held by this term
//!   ([`Condition::LockHeld`](kv_core::Condition::LockHeld)): a leader that lost its lock —
//!   even one paused past its TTL that has not noticed yet — is refused with
//!   [`ElectionError::NotLeader`] and writes nothing.
//! * [`Leadership::resign`] releases the lock and removes the proclaimed value (only if it is
//!   still this term's). It is idempotent, never panics, and works after a loss too; the same
//!   [`Election`] can campaign again at once.
//! * [`Election::observe`] derives [`LeaderState`]s from a [`watch_tree`](kv_core::Store::watch_tree)
//!   of `E`: the leader is the lock key's holder, its term the lock key's `last_index`, its
//!   value the proclaimed one when `E/value` carries that same term, else the lock's value
//!   (so an observer never shows a previous term's value for a new leader). The first item
//!   is the current state; equal consecutive states are sent once; a store error is an `Err`
//!   item and the last one (the stream never ends silently and never hangs on a dead watch);
//!   dropping the stream stops its watch at once. Like every watch, it coalesces for a slow
//!   reader: a short "no leader" between two terms may be skipped, never reordered.
//!
//! ## Background work
//!
//! A [`Leadership`] runs the lock's renewal and one watch on the lock key (both counted by
//! the store's [`background_tasks`](kv_core::Store::background_tasks)); resigning, dropping
//! it or closing the store stops both. An observer's stream runs one `watch_tree`, stopped
//! when the stream is dropped. Nothing else is spawned.
//!
//! ## Try it
//!
//! `cargo run -p kv-election --example election` runs three candidates and an observer on a
//! temporary embedded database (no server) and prints every transition, then shows a leader
//! whose lock key is deleted behind its back: `lost()` fires, `proclaim` is refused.
//!
//! ## Defaults and the failover time they imply
//!
//! [`ElectionOptions::default`] uses a lock TTL of [`DEFAULT_TTL`] (15 s), renewed every
//! [`renew_interval`](kv_core::lock::renew_interval)`(ttl)` = 5 s, so two renewals in a row
//! may fail before the leader gives up. A leader that resigns (or whose process exits
//! cleanly, which closes its store) hands over at once: the next candidate is elected within
//! a watch round trip (waiting DynamoDB candidates poll, every `lock_retry_interval`, 200 ms
//! by default). A leader that **crashes** or is partitioned is replaced after its lock
//! expires: at most `ttl + ttl_precision` after its last renewal.
//!
//! | backend | `ttl_precision` | failover after a crash, default TTL 15 s | shortest recommended TTL (≥ `min_ttl`, ≥ 3 × `ttl_precision`) → failover |
//! | --- | --- | --- | --- |
//! | etcd | 3 s (leases rounded up to whole seconds, Raft revocation) | ≤ 18 s | 9 s → ≤ 12 s |
//! | Consul | 1.25 s | ≤ 16.25 s when the agent's `session_ttl_min` ≤ 7.5 s; else up to `2 × session_ttl_min` + 1.25 s (21.25 s with Consul's default 10 s) | 3.75 s → ≤ 5 s (needs `session_ttl_min` ≤ 1.875 s) |
//! | ZooKeeper | 0.5 s | ≤ 15.5 s | 1.5 s → ≤ 2 s |
//! | Redis | 0.1 s | ≤ 15.1 s | 0.3 s → ≤ 0.4 s |
//! | DynamoDB | 1.5 s (a contender takes over a whole lease after it first saw the lock unchanged) | ≤ 16.5 s | 4.5 s → ≤ 6 s |
//! | embedded (redb) | 0.1 s | ≤ 15.1 s (a crashed process's database reopens at once; its lock key expires at its deadline) | 0.3 s → ≤ 0.4 s |
//!
//! **Choose a TTL of at least 3 × `ttl_precision`** (and at least the backend's `min_ttl`):
//! the lock is renewed every `ttl / 3`, so a healthy leader's deadline is always at least
//! `2/3 × ttl` ahead, and a reader (a guarded [`proclaim`](Leadership::proclaim), an
//! observer, the leader's own watch) whose expiry judgement is up to `ttl_precision` early
//! must never see it expired. That is 4.5 s on DynamoDB, 3.75 s on Consul and 9 s on etcd
//! (where the precision is rounding and Raft latency, so shorter TTLs are only late, never
//! early); the default 15 s fits every backend. [`Election::with_options`] logs a warning
//! (`tracing`) below it.
//!
//! The measured figures (`ELECTION <backend> takeover_ms=…`) are printed by this crate's
//! tests: `cargo test -p kv-election -- --nocapture`. A shorter TTL fails over faster but
//! loses leadership after a shorter stall (GC pause, network blip): `ttl / 3` is the longest
//! renewal round trip tolerated twice in a row.
//!
//! ## Compared with other libraries
//!
//! * etcd's `concurrency.Election` has no "no leader" event for observers (its `Observe`
//!   only reports leaders) and its `Proclaim` rewrites the leader key; here observers see
//!   [`LeaderState::NoLeader`] and proclaiming never touches the lock.
//! * docker/leadership panicked when a candidate resigned twice on Consul (a channel closed
//!   twice) and let a follower hang forever when its watch failed; [`Leadership::resign`] is
//!   idempotent and a watch failure is an `Err` item (both tested on every backend).
//! * Curator's `LeaderLatch` and client-go's `leaderelection` give no fencing token; here
//!   every term is one, and [`Leadership::proclaim`] is itself fenced.

#![warn(missing_docs)]

use std::fmt;
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::{self, BoxStream};
use kv_core::{
    Error, KvPair, Lock, LockLease, LockOptions, LockState, ReadOptions, Store, WatchStream,
    WriteOptions,
};
use tokio::sync::watch;

/// The default lock TTL of an election: 15 s (renewed every 5 s). See the
/// [crate documentation](crate#defaults-and-the-failover-time-they-imply) for the failover time
/// it implies on each backend.
pub const DEFAULT_TTL: Duration = Duration::from_secs(15);

/// The name of the lock key below the election's directory.
pub const LOCK_KEY: &str = "lock";
/// The name of the proclaimed-value key below the election's directory.
pub const VALUE_KEY: &str = "value";

/// Why an election call failed.
#[non_exhaustive]
#[derive(Debug, Clone, thiserror::Error)]
pub enum ElectionError {
    /// The leadership is over (lost or resigned): the call was refused and nothing was
    /// written.
    #[error("not the leader of {election} any more (term {term})")]
    NotLeader {
        /// The election's directory.
        election: String,
        /// The term that ended.
        term: u64,
    },
    /// The store failed (unreachable, timed out, closed, invalid key…).
    #[error(transparent)]
    Store(#[from] Error),
}

/// `Result` with [`ElectionError`].
pub type Result<T, E = ElectionError> = std::result::Result<T, E>;

/// How an [`Election`] campaigns.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ElectionOptions {
    /// The lock's TTL: how long a crashed or partitioned leader stays leader for the others.
    /// Renewed in the background every [`renew_interval`](kv_core::lock::renew_interval)`(ttl)`.
    /// Default [`DEFAULT_TTL`]. Must be within the backend's `min_ttl..=max_ttl`.
    pub ttl: Duration,
}

impl Default for ElectionOptions {
    fn default() -> Self {
        ElectionOptions { ttl: DEFAULT_TTL }
    }
}

impl ElectionOptions {
    /// Sets the lock TTL.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// How often the leader renews its lock: `ttl / 3`.
    pub fn renew_interval(&self) -> Duration {
        kv_core::lock::renew_interval(self.ttl)
    }
}

/// One election on one store: campaign as a candidate with [`campaign`](Election::campaign),
/// watch who leads with [`observe`](Election::observe). Cheap to clone; clones share the store
/// handle.
#[derive(Clone)]
pub struct Election {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn Store>,
    name: String,
    lock_key: String,
    value_key: String,
    options: ElectionOptions,
}

impl fmt::Debug for Election {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Election")
            .field("name", &self.inner.name)
            .field("backend", &self.inner.store.capabilities().backend)
            .field("options", &self.inner.options)
            .finish()
    }
}

impl Election {
    /// The election named `name` (a directory: its keys are `name/lock` and `name/value`) with
    /// the default options. Fails with [`Error::InvalidKey`] for a bad name and
    /// [`Error::NotSupported`] on a store without locks, watches or transactions.
    pub fn new(store: Arc<dyn Store>, name: &str) -> Result<Self> {
        Self::with_options(store, name, ElectionOptions::default())
    }

    /// The election named `name` with `options`; also checks the TTL against the backend's
    /// range ([`Error::InvalidOption`]).
    pub fn with_options(
        store: Arc<dyn Store>,
        name: &str,
        options: ElectionOptions,
    ) -> Result<Self> {
        let caps = store.capabilities();
        for (supported, operation) in [
            (caps.locks, "new_lock"),
            (caps.watch, "watch"),
            (caps.watch_tree, "watch_tree"),
            (caps.transactions, "transaction"),
        ] {
            if !supported {
                return Err(caps.unsupported(operation).into());
            }
        }
        let name = caps.check_key(name)?;
        let lock_key = caps.check_key(&format!("{name}/{LOCK_KEY}"))?;
        let value_key = caps.check_key(&format!("{name}/{VALUE_KEY}"))?;
        caps.check_lock(&lock_key, &LockOptions::default().ttl(options.ttl))?;
        if options.ttl < caps.ttl_precision * 3 {
            tracing::warn!(
                ttl = ?options.ttl,
                ttl_precision = ?caps.ttl_precision,
                backend = caps.backend,
                "an election TTL below 3 × the backend's ttl_precision may report a healthy leader lost"
            );
        }
        Ok(Election {
            inner: Arc::new(Inner {
                store,
                name,
                lock_key,
                value_key,
                options,
            }),
        })
    }

    /// The election's normalised name (its directory).
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The lock key (`name/lock`).
    pub fn lock_key(&self) -> &str {
        &self.inner.lock_key
    }

    /// The proclaimed-value key (`name/value`).
    pub fn value_key(&self) -> &str {
        &self.inner.value_key
    }

    /// The options.
    pub fn options(&self) -> &ElectionOptions {
        &self.inner.options
    }

    /// The store handle.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.inner.store
    }

    /// Campaigns with `value` and waits until elected; returns the term's [`Leadership`].
    ///
    /// Cancel-safe: dropping the future (a `tokio::time::timeout`, a `select!`) stops the
    /// wait, and a lock granted at that very moment is released in the background. Fails
    /// with [`Error::Closed`] when the store is closed while waiting (a waiting candidate
    /// never hangs on a dead handle), and with the store's error when it cannot campaign.
    /// Campaigning again after a term ended (resigned or lost) is fine; two campaigns of the
    /// same process on one election simply compete like two candidates.
    pub async fn campaign(&self, value: impl Into<Bytes>) -> Result<Leadership> {
        let inner = &self.inner;
        let value = value.into();
        let mut lock = inner
            .store
            .new_lock(
                &inner.lock_key,
                LockOptions::default()
                    .value(value.clone())
                    .ttl(inner.options.ttl),
            )
            .await?;
        let lease = lock.lock().await?;
        // From here on, a cancelled campaign drops `lock`, which releases it in the background.
        let watch = match inner
            .store
            .watch(&inner.lock_key, ReadOptions::default())
            .await
        {
            Ok(stream) => Some(stream),
            Err(Error::Closed) => return Err(Error::Closed.into()),
            Err(error) => {
                tracing::warn!(%error, election = %inner.name, "cannot watch the lock key: a deletion is noticed at the next renewal only");
                None
            }
        };
        let (status_tx, status) = watch::channel(LeadershipStatus::Leader);
        let status_tx = Arc::new(status_tx);
        let monitor = Monitor(tokio::spawn(monitor(
            lease.clone(),
            watch,
            status_tx.clone(),
        )));
        Ok(Leadership {
            election: self.clone(),
            lock: Some(lock),
            lease,
            status_tx,
            status,
            value: StdMutex::new(value),
            proclaimed: StdMutex::new(None),
            monitor: Some(monitor),
        })
    }

    /// The current state, read once (a `list` of the election's directory).
    pub async fn leader(&self) -> Result<LeaderState> {
        let snapshot = self
            .inner
            .store
            .list(&self.inner.name, ReadOptions::default())
            .await?;
        Ok(derive(
            &snapshot,
            &self.inner.lock_key,
            &self.inner.value_key,
        ))
    }

    /// A stream of leadership states: the current one first, then one per change (a new
    /// leader, a proclaimed value, no leader), never twice the same in a row. A store error
    /// is an `Err` item, always the last one; the stream never ends without one. Dropping it
    /// stops its watch at once. Reopen it (on this or another handle) to go on after an
    /// error.
    pub async fn observe(&self) -> Result<LeaderStream> {
        let tree = self
            .inner
            .store
            .watch_tree(&self.inner.name, ReadOptions::default())
            .await?;
        let lock_key = self.inner.lock_key.clone();
        let value_key = self.inner.value_key.clone();
        struct Observing {
            tree: kv_core::WatchTreeStream,
            last: Option<LeaderState>,
            done: bool,
        }
        let start = Observing {
            tree,
            last: None,
            done: false,
        };
        Ok(stream::unfold(start, move |mut at| {
            let lock_key = lock_key.clone();
            let value_key = value_key.clone();
            async move {
                if at.done {
                    return None;
                }
                loop {
                    match at.tree.next().await {
                        Some(Ok(snapshot)) => {
                            let state = derive(&snapshot, &lock_key, &value_key);
                            if at.last.as_ref() == Some(&state) {
                                continue;
                            }
                            at.last = Some(state.clone());
                            return Some((Ok(state), at));
                        }
                        Some(Err(error)) => {
                            at.done = true;
                            return Some((Err(error.into()), at));
                        }
                        None => {
                            // The contract says a watch ends with an Err; never end silently.
                            at.done = true;
                            return Some((Err(Error::Closed.into()), at));
                        }
                    }
                }
            }
        })
        .boxed())
    }
}

/// The stream [`Election::observe`] returns.
pub type LeaderStream = BoxStream<'static, Result<LeaderState>>;

/// Who leads an election, as an observer sees it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum LeaderState {
    /// Nobody holds the election's lock.
    NoLeader,
    /// A leader holds it.
    Leader(Leader),
}

impl LeaderState {
    /// The leader, if any.
    pub fn leader(&self) -> Option<&Leader> {
        match self {
            LeaderState::Leader(leader) => Some(leader),
            LeaderState::NoLeader => None,
        }
    }
}

/// A leader and its published value.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Leader {
    /// The value last proclaimed in this term, or the value it campaigned with.
    pub value: Bytes,
    /// The term: the fencing token of the leader's lock, strictly rising across elections.
    pub term: u64,
}

/// Derives the state from a snapshot of the election's directory.
fn derive(snapshot: &[KvPair], lock_key: &str, value_key: &str) -> LeaderState {
    let Some(lock) = snapshot.iter().find(|p| p.key == lock_key) else {
        return LeaderState::NoLeader;
    };
    let term = lock.last_index;
    let value = snapshot
        .iter()
        .find(|p| p.key == value_key)
        .and_then(|p| decode_value(&p.value))
        .filter(|(proclaimed_in, _)| *proclaimed_in == term)
        .map(|(_, value)| value)
        .unwrap_or_else(|| lock.value.clone());
    LeaderState::Leader(Leader { value, term })
}

/// `<term>\n<value>`.
fn encode_value(term: u64, value: &[u8]) -> Bytes {
    let mut out = format!("{term}\n").into_bytes();
    out.extend_from_slice(value);
    Bytes::from(out)
}

fn decode_value(raw: &Bytes) -> Option<(u64, Bytes)> {
    let newline = raw.iter().position(|b| *b == b'\n')?;
    let term = std::str::from_utf8(&raw[..newline]).ok()?.parse().ok()?;
    Some((term, raw.slice(newline + 1..)))
}

/// Where a [`Leadership`] stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LeadershipStatus {
    /// Still the leader (as far as can be guaranteed).
    Leader,
    /// [`Leadership::resign`] was called.
    Resigned,
    /// Lost involuntarily: the lock expired (renewal failed for a whole TTL), was deleted or
    /// taken over, a guarded write found it gone, or the store was closed.
    Lost,
}

/// What [`Leadership::resign`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Resigned {
    /// This call ended the leadership and released the lock.
    Resigned,
    /// The leadership had already been lost; what was left of the lock was cleaned up.
    AlreadyLost,
    /// An earlier `resign` already did it: nothing to do.
    AlreadyResigned,
}

/// A clonable, `'static` view of a leadership's status, to hand to the tasks doing the
/// leader's work (they stop when [`ended`](LeadershipSignal::ended) completes).
#[derive(Debug, Clone)]
pub struct LeadershipSignal {
    term: u64,
    status: watch::Receiver<LeadershipStatus>,
}

impl LeadershipSignal {
    /// The term (fencing token).
    pub fn term(&self) -> u64 {
        self.term
    }

    /// The status now.
    pub fn status(&self) -> LeadershipStatus {
        *self.status.borrow()
    }

    /// True while still the leader.
    pub fn is_leader(&self) -> bool {
        self.status() == LeadershipStatus::Leader
    }

    /// Completes when the leadership ends (lost or resigned) and says how.
    pub async fn ended(&self) -> LeadershipStatus {
        let mut rx = self.status.clone();
        match rx.wait_for(|s| *s != LeadershipStatus::Leader).await {
            Ok(status) => *status,
            Err(_) => LeadershipStatus::Lost,
        }
    }
}

/// One term of leadership, returned by [`Election::campaign`].
///
/// Dropping it without [`resign`](Leadership::resign) releases the lock in the background
/// (like dropping a held [`Lock`]); closing the store releases it too.
pub struct Leadership {
    election: Election,
    lock: Option<Lock>,
    lease: LockLease,
    status_tx: Arc<watch::Sender<LeadershipStatus>>,
    status: watch::Receiver<LeadershipStatus>,
    value: StdMutex<Bytes>,
    proclaimed: StdMutex<Option<KvPair>>,
    monitor: Option<Monitor>,
}

impl fmt::Debug for Leadership {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Leadership")
            .field("election", &self.election.name())
            .field("term", &self.term())
            .field("status", &self.status())
            .finish()
    }
}

impl Leadership {
    /// The term: the lock's fencing token, strictly rising across elections on every backend.
    /// Pass it to the resources the leader acts on so they can refuse a former leader.
    pub fn term(&self) -> u64 {
        self.lease.fencing_token()
    }

    /// Same as [`term`](Leadership::term).
    pub fn fencing_token(&self) -> u64 {
        self.term()
    }

    /// The value published now (the campaign's, or the last one proclaimed).
    pub fn value(&self) -> Bytes {
        self.value.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The election.
    pub fn election(&self) -> &Election {
        &self.election
    }

    /// The lock's lease (for [`Condition::lock_held`](kv_core::Condition::lock_held) in your
    /// own transactions).
    pub fn lease(&self) -> &LockLease {
        &self.lease
    }

    /// The status now.
    pub fn status(&self) -> LeadershipStatus {
        *self.status.borrow()
    }

    /// True while still the leader.
    pub fn is_leader(&self) -> bool {
        self.status() == LeadershipStatus::Leader
    }

    /// Completes the moment leadership can no longer be guaranteed (the lock expired, was
    /// deleted or taken over, the store was closed) or was resigned, and says which.
    pub async fn lost(&self) -> LeadershipStatus {
        self.signal().ended().await
    }

    /// A clonable, `'static` view of the status, for tasks doing the leader's work.
    pub fn signal(&self) -> LeadershipSignal {
        LeadershipSignal {
            term: self.term(),
            status: self.status.clone(),
        }
    }

    fn not_leader(&self) -> ElectionError {
        ElectionError::NotLeader {
            election: self.election.name().to_owned(),
            term: self.term(),
        }
    }

    /// Publishes `value` as the leader's value without a new election. One transaction
    /// conditioned on the lock still being held by this term: refused with
    /// [`ElectionError::NotLeader`] (nothing written) once leadership is lost or resigned —
    /// also when this process has not noticed the loss yet (it then notices: [`lost`](Self::lost)
    /// completes). Other store failures are [`ElectionError::Store`]; the value may or may not
    /// have been published then, as for any failed write.
    pub async fn proclaim(&self, value: impl Into<Bytes>) -> Result<()> {
        if !self.is_leader() {
            return Err(self.not_leader());
        }
        let value = value.into();
        let store = &self.election.inner.store;
        match self
            .lease
            .guarded_put(
                &**store,
                &self.election.inner.value_key,
                encode_value(self.term(), &value),
                WriteOptions::default(),
            )
            .await
        {
            Ok(pair) => {
                *self.proclaimed.lock().unwrap_or_else(|e| e.into_inner()) = Some(pair);
                *self.value.lock().unwrap_or_else(|e| e.into_inner()) = value;
                Ok(())
            }
            Err(Error::LockLost { .. }) => {
                end(&self.status_tx, LeadershipStatus::Lost);
                Err(self.not_leader())
            }
            Err(error) => Err(error.into()),
        }
    }

    /// Steps down: releases the lock (observers see no leader, a waiting candidate is
    /// elected) and removes this term's proclaimed value. Idempotent and panic-free: after a
    /// loss it cleans up and returns [`Resigned::AlreadyLost`], a second call returns
    /// [`Resigned::AlreadyResigned`]. A store failure while releasing is returned as an error,
    /// but the leadership is over all the same (the lock then expires after its TTL). Not
    /// cancel-safe in the sense that a cancelled call may leave the key to expire by TTL
    /// instead of deleting it; the leadership is over either way.
    pub async fn resign(&mut self) -> Result<Resigned> {
        let Some(mut lock) = self.lock.take() else {
            return Ok(match self.status() {
                LeadershipStatus::Lost => Resigned::AlreadyLost,
                _ => Resigned::AlreadyResigned,
            });
        };
        let was_leader = end(&self.status_tx, LeadershipStatus::Resigned);
        // Stop watching the lock key before deleting it.
        self.monitor.take();
        let unlocked = lock.unlock().await;
        let proclaimed = self
            .proclaimed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(pair) = proclaimed {
            // Only if it is still this term's write: never a successor's.
            match self
                .election
                .inner
                .store
                .atomic_delete(&pair.key, &pair)
                .await
            {
                Ok(()) => {}
                Err(error) if error.is_conflict() => {}
                Err(error) => {
                    tracing::debug!(%error, "removing the proclaimed value failed (it is ignored by observers)");
                }
            }
        }
        match unlocked {
            Ok(()) if was_leader => Ok(Resigned::Resigned),
            // The lease had ended on its own (expired, taken over, store closed), noticed
            // or not yet.
            Ok(()) | Err(Error::LockLost { .. } | Error::LockNotHeld { .. } | Error::Closed) => {
                Ok(Resigned::AlreadyLost)
            }
            Err(error) => Err(error.into()),
        }
    }
}

/// Ends the status if it is still `Leader`; true if this call ended it.
fn end(tx: &watch::Sender<LeadershipStatus>, to: LeadershipStatus) -> bool {
    tx.send_if_modified(|status| {
        if *status == LeadershipStatus::Leader {
            *status = to;
            true
        } else {
            false
        }
    })
}

/// The task that watches over a term: it marks the leadership lost when the lease ends or
/// when the lock key is deleted or carries another acquisition. Aborted on drop.
struct Monitor(tokio::task::JoinHandle<()>);

impl Drop for Monitor {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn monitor(
    lease: LockLease,
    watch: Option<WatchStream>,
    status: Arc<watch::Sender<LeadershipStatus>>,
) {
    let token = lease.fencing_token();
    let key_gone = async move {
        if let Some(mut watch) = watch {
            while let Some(item) = watch.next().await {
                match item {
                    Ok(Some(pair)) if pair.last_index == token => {}
                    Ok(Some(pair)) => {
                        tracing::debug!(key = %pair.key, token, now = pair.last_index, "the election's lock was taken over");
                        return;
                    }
                    Ok(None) => {
                        tracing::debug!(token, "the election's lock key was deleted");
                        return;
                    }
                    // The watch failed: the lease's own renewal still reports a loss.
                    Err(error) => {
                        tracing::debug!(%error, "the lock key's watch ended");
                        break;
                    }
                }
            }
        }
        std::future::pending::<()>().await;
    };
    tokio::select! {
        state = lease.lost() => {
            if state != LockState::Held {
                end(&status, LeadershipStatus::Lost);
            }
        }
        () = key_gone => {
            end(&status, LeadershipStatus::Lost);
        }
    }
}

impl Drop for Leadership {
    fn drop(&mut self) {
        // The lock (if still here) releases itself in the background; the monitor is aborted.
        if self.lock.is_some() {
            end(&self.status_tx, LeadershipStatus::Resigned);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn value_encoding_round_trips() {
        let raw = encode_value(42, b"a\nb");
        assert_eq!(decode_value(&raw), Some((42, Bytes::from_static(b"a\nb"))));
        assert_eq!(decode_value(&Bytes::from_static(b"garbage")), None);
        assert_eq!(decode_value(&Bytes::from_static(b"x\ny")), None);
    }

    #[test]
    fn derives_the_state_from_a_snapshot() {
        let lock = KvPair::new("e/lock", "initial", 7);
        assert_eq!(derive(&[], "e/lock", "e/value"), LeaderState::NoLeader);
        let stale = KvPair::new("e/value", encode_value(5, b"old"), 6);
        assert_eq!(
            derive(&[lock.clone(), stale.clone()], "e/lock", "e/value"),
            LeaderState::Leader(Leader {
                value: "initial".into(),
                term: 7
            })
        );
        let current = KvPair::new("e/value", encode_value(7, b"new"), 8);
        assert_eq!(
            derive(&[lock, current], "e/lock", "e/value"),
            LeaderState::Leader(Leader {
                value: "new".into(),
                term: 7
            })
        );
        assert_eq!(derive(&[stale], "e/lock", "e/value"), LeaderState::NoLeader);
    }
}
