//! Mutation tests: the conformance suite itself must have teeth.
//!
//! A case that would pass on a backend that ignores its inputs is not a test. Here every case
//! is run against a [`Mutant`]: a [`Store`] that delegates to a real `kv-bolt` handle but
//! breaks exactly ONE rule of the `kv-core` contract, chosen by [`Kind`] (`get` drops the
//! value, `list` is not path-aware, `atomic_put` ignores the index, the TTL is ignored, watches
//! never report deletions, locks are not exclusive, `close` does nothing…). For each mutant
//! the case(s) guarding that rule are run on their own tokio runtime and must FAIL (panic),
//! and the panic must come from the assertion about that rule (its message contains an
//! expected fragment), not from some unrelated breakage. The control test runs the same cases
//! on the unmutated wrapper ([`Kind::None`]) and requires them to pass, so every failure below
//! is caused by its mutation and not by the wrapper.
//!
//! Expected panics are silenced (a panic hook that stays quiet on the threads running a
//! mutant); the control run prints its panics as usual.

use std::cell::Cell;
use std::collections::HashMap;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use futures::future::{self, LocalBoxFuture};
use futures::stream::{self, StreamExt};
use futures::{FutureExt, SinkExt};
use kv_bolt::{BoltStore, Config};
use kv_conformance::StoreFactory;
use kv_conformance::cases;
use kv_core::{
    Acquired, CancellationToken, Capabilities, Condition, ConditionFailure, Error, HeldLock,
    KvPair, LeaseNotifier, Lock, LockBackend, LockOptions, LockState, Operation, ReadOptions,
    Result, Store, TaskSet, Transaction, WatchStream, WatchTreeStream, WriteOptions,
};
use tokio::sync::OnceCell;

/// The one rule a [`Mutant`] breaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// No mutation: plain delegation (the control).
    None,
    /// No mutation either, but locks go through the same bridge as [`Kind::UnlockLeavesValue`]
    /// (the control for that bridge).
    BridgedLocks,
    /// `get` returns the pair with an empty value.
    GetEmptyValue,
    /// `get` reports the key as the caller spelled it, not normalised.
    GetKeyNotNormalised,
    /// `exists` is always true.
    ExistsAlwaysTrue,
    /// `delete` of an absent key reports `Ok(true)`.
    DeleteAbsentIsTrue,
    /// `delete` removes the whole subtree below the key too.
    DeleteIsRecursive,
    /// `list(dir)` includes `dir` itself.
    ListIncludesDirectory,
    /// `list("abc")` is a raw string prefix: it also returns `abcd/x` and `abc-y`.
    ListRawPrefix,
    /// `list` returns the keys in reverse order.
    ListUnsorted,
    /// `delete_tree(dir)` deletes everything below `dir` but leaves `dir` itself.
    DeleteTreeKeepsDirectory,
    /// `delete_tree("abc")` is a raw string prefix: it also deletes `abcx/keep`.
    DeleteTreeRawPrefix,
    /// `atomic_put` ignores `previous`: a plain put.
    CasIgnoresPrevious,
    /// `atomic_put(k, v, None)` overwrites an existing key.
    CreateOnlyOverwrites,
    /// `atomic_put` with a stale index reports `KeyNotFound` instead of `KeyModified`.
    CasStaleIsNotFound,
    /// `atomic_put` returns the previous index instead of the new one.
    CasReturnsOldIndex,
    /// `atomic_delete` ignores the index.
    AtomicDeleteIgnoresIndex,
    /// `put` ignores the TTL.
    PutIgnoresTtl,
    /// `atomic_put` ignores the TTL.
    AtomicPutIgnoresTtl,
    /// A `put` without TTL on a key that has one keeps the old deadline.
    PutKeepsOldTtl,
    /// TTLs outside `min_ttl..=max_ttl` are clamped instead of rejected.
    TtlRangeUnchecked,
    /// `last_index` is always 1.
    ConstantLastIndex,
    /// `watch` never reports a deletion (`None` after the first item).
    WatchDropsDeletions,
    /// `watch` skips the initial state.
    WatchSkipsInitialState,
    /// A `watch` stream ends silently instead of with `Err(Closed)`.
    WatchEndsSilently,
    /// `watch` forwards through a task that outlives the dropped stream.
    WatchLeaksItsTask,
    /// `watch_tree` emits the first snapshot, then nothing.
    WatchTreeFirstOnly,
    /// Capabilities declare `watch: false` but `watch` works.
    DeclaresNoWatch,
    /// Keys are not validated: `a//b` is quietly written as `a/b`.
    InvalidKeysAccepted,
    /// Capabilities declare half the real value limit, which is not enforced.
    ValueLimitUnchecked,
    /// `new_lock` locks a different key per handle: every client "holds" it.
    LockNotExclusive,
    /// `unlock` leaves the lock's value behind at the key.
    UnlockLeavesValue,
    /// `background_tasks` is always 0.
    BackgroundTasksZero,
    /// `close` does nothing.
    CloseIsNoop,
    /// `transaction` writes its operations without checking any condition.
    TxnIgnoresConditions,
    /// `transaction` checks every condition but the last.
    TxnSkipsLastCondition,
    /// `transaction` checks the conditions with reads, then applies the operations one by
    /// one: not atomic.
    TxnOneByOne,
    /// `transaction` treats "lock held" as "lock key exists" (any holder will do).
    TxnLockHeldIsExists,
    /// A failed condition is always reported as `KeyModified`.
    TxnWrongReason,
}

/// A store that delegates to a real `kv-bolt` handle but breaks the rule [`Kind`] names.
#[derive(Debug)]
struct Mutant {
    inner: Arc<BoltStore>,
    kind: Kind,
    caps: Capabilities,
    /// For [`Kind::PutKeepsOldTtl`]: the deadline each key was last given.
    deadlines: Mutex<HashMap<String, Instant>>,
    /// For [`Kind::UnlockLeavesValue`]: the tasks of this wrapper's own locks.
    lock_tasks: TaskSet,
}

impl Mutant {
    fn new(inner: BoltStore, kind: Kind) -> Self {
        let mut caps = inner.capabilities().clone();
        match kind {
            Kind::DeclaresNoWatch => caps.watch = false,
            Kind::ValueLimitUnchecked => caps.max_value_len /= 2,
            _ => {}
        }
        Mutant {
            inner: Arc::new(inner),
            kind,
            caps,
            deadlines: Mutex::new(HashMap::new()),
            lock_tasks: TaskSet::new(),
        }
    }

    /// The key handed to the inner store: [`Kind::InvalidKeysAccepted`] "repairs" it.
    fn key(&self, key: &str) -> String {
        if self.kind != Kind::InvalidKeysAccepted {
            return key.to_owned();
        }
        let mut repaired = String::with_capacity(key.len());
        for c in key.chars() {
            if !(c == '/' && repaired.ends_with('/')) {
                repaired.push(c);
            }
        }
        repaired
    }

    fn pair(&self, mut pair: KvPair) -> KvPair {
        if self.kind == Kind::ConstantLastIndex {
            pair.last_index = 1;
        }
        pair
    }

    fn ttl(&self, options: WriteOptions) -> WriteOptions {
        match (self.kind, options.ttl) {
            (Kind::TtlRangeUnchecked, Some(ttl)) => {
                WriteOptions::with_ttl(ttl.clamp(self.caps.min_ttl, self.caps.max_ttl))
            }
            _ => options,
        }
    }

    /// The keys `list` would give under a raw string prefix: `abc` matches `abcd/x`.
    async fn raw_prefix_matches(&self, directory: &str) -> Result<Vec<KvPair>> {
        let dir = self.caps.check_directory(directory)?;
        let parent = dir.rsplit_once('/').map_or("", |(parent, _)| parent);
        let mut pairs = self.inner.list(parent, ReadOptions::default()).await?;
        pairs.retain(|p| p.key.starts_with(&dir));
        Ok(pairs)
    }
}

#[async_trait]
impl Store for Mutant {
    fn capabilities(&self) -> &Capabilities {
        &self.caps
    }

    async fn put(&self, key: &str, value: Bytes, options: WriteOptions) -> Result<()> {
        let key = self.key(key);
        let options = match self.kind {
            Kind::PutIgnoresTtl => WriteOptions::default(),
            Kind::PutKeepsOldTtl => {
                let normalized = self.caps.check_key(&key)?;
                let mut deadlines = self.deadlines.lock().unwrap();
                match options.ttl {
                    Some(ttl) => {
                        deadlines.insert(normalized, Instant::now() + ttl);
                        options
                    }
                    None => match deadlines.get(&normalized) {
                        Some(deadline) if *deadline > Instant::now() => {
                            let left = *deadline - Instant::now();
                            WriteOptions::with_ttl(left.max(self.caps.min_ttl))
                        }
                        _ => options,
                    },
                }
            }
            _ => self.ttl(options),
        };
        self.inner.put(&key, value, options).await
    }

    async fn get(&self, key: &str, options: ReadOptions) -> Result<Option<KvPair>> {
        let pair = self.inner.get(&self.key(key), options).await?;
        Ok(pair.map(|mut pair| {
            match self.kind {
                Kind::GetEmptyValue => pair.value = Bytes::new(),
                Kind::GetKeyNotNormalised => pair.key = key.to_owned(),
                _ => {}
            }
            self.pair(pair)
        }))
    }

    async fn delete(&self, key: &str) -> Result<bool> {
        let key = self.key(key);
        match self.kind {
            Kind::DeleteAbsentIsTrue => self.inner.delete(&key).await.map(|_| true),
            Kind::DeleteIsRecursive => {
                let existed = self.inner.exists(&key, ReadOptions::default()).await?;
                self.inner.delete_tree(&key).await?;
                Ok(existed)
            }
            _ => self.inner.delete(&key).await,
        }
    }

    async fn exists(&self, key: &str, options: ReadOptions) -> Result<bool> {
        let exists = self.inner.exists(&self.key(key), options).await?;
        Ok(exists || self.kind == Kind::ExistsAlwaysTrue)
    }

    async fn list(&self, directory: &str, options: ReadOptions) -> Result<Vec<KvPair>> {
        let directory = self.key(directory);
        let mut pairs = match self.kind {
            Kind::ListRawPrefix => {
                let dir = self.caps.check_directory(&directory)?;
                let mut pairs = self.raw_prefix_matches(&directory).await?;
                pairs.retain(|p| p.key != dir);
                pairs
            }
            _ => self.inner.list(&directory, options).await?,
        };
        match self.kind {
            Kind::ListIncludesDirectory => {
                let dir = self.caps.check_directory(&directory)?;
                if !dir.is_empty()
                    && let Some(own) = self.inner.get(&dir, ReadOptions::default()).await?
                {
                    pairs.insert(0, own);
                }
            }
            Kind::ListUnsorted => pairs.reverse(),
            _ => {}
        }
        Ok(pairs.into_iter().map(|p| self.pair(p)).collect())
    }

    async fn delete_tree(&self, directory: &str) -> Result<()> {
        let directory = self.key(directory);
        match self.kind {
            Kind::DeleteTreeKeepsDirectory => {
                for pair in self.inner.list(&directory, ReadOptions::default()).await? {
                    self.inner.delete(&pair.key).await?;
                }
                Ok(())
            }
            Kind::DeleteTreeRawPrefix => {
                for pair in self.raw_prefix_matches(&directory).await? {
                    self.inner.delete_tree(&pair.key).await?;
                }
                Ok(())
            }
            _ => self.inner.delete_tree(&directory).await,
        }
    }

    async fn atomic_put(
        &self,
        key: &str,
        value: Bytes,
        previous: Option<&KvPair>,
        options: WriteOptions,
    ) -> Result<KvPair> {
        let key = self.key(key);
        let options = match self.kind {
            Kind::AtomicPutIgnoresTtl => WriteOptions::default(),
            _ => self.ttl(options),
        };
        let plain_put = match self.kind {
            Kind::CasIgnoresPrevious => true,
            Kind::CreateOnlyOverwrites => previous.is_none(),
            _ => false,
        };
        if plain_put {
            self.inner.put(&key, value, options).await?;
            let pair = self.inner.get(&key, ReadOptions::default()).await?;
            return pair.ok_or_else(|| Error::KeyNotFound { key });
        }
        match self.inner.atomic_put(&key, value, previous, options).await {
            Err(Error::KeyModified { key }) if self.kind == Kind::CasStaleIsNotFound => {
                Err(Error::KeyNotFound { key })
            }
            Ok(mut pair) => {
                if let (Kind::CasReturnsOldIndex, Some(previous)) = (self.kind, previous) {
                    pair.last_index = previous.last_index;
                }
                Ok(self.pair(pair))
            }
            other => other,
        }
    }

    async fn transaction(&self, txn: Transaction) -> Result<Vec<KvPair>> {
        let (conditions, operations) = txn.into_parts();
        let rebuild = |conditions: Vec<Condition>| {
            let txn = conditions
                .into_iter()
                .fold(Transaction::new(), Transaction::when);
            operations.iter().cloned().fold(txn, Transaction::operation)
        };
        match self.kind {
            Kind::TxnIgnoresConditions => self.inner.transaction(rebuild(Vec::new())).await,
            Kind::TxnSkipsLastCondition => {
                let mut conditions = conditions;
                conditions.pop();
                self.inner.transaction(rebuild(conditions)).await
            }
            Kind::TxnLockHeldIsExists => {
                let conditions = conditions
                    .into_iter()
                    .map(|c| match c {
                        Condition::LockHeld { key, .. } => Condition::exists(key),
                        other => other,
                    })
                    .collect();
                self.inner.transaction(rebuild(conditions)).await
            }
            Kind::TxnWrongReason => match self.inner.transaction(rebuild(conditions)).await {
                Err(Error::ConditionFailed { index, key, .. }) => Err(Error::ConditionFailed {
                    index,
                    key,
                    reason: ConditionFailure::KeyModified,
                }),
                other => other,
            },
            Kind::TxnOneByOne => {
                let checked = self.caps.check_transaction(rebuild(conditions))?;
                let mut current = HashMap::new();
                for condition in checked.conditions() {
                    let index = self
                        .inner
                        .get(condition.key(), ReadOptions::default())
                        .await?
                        .map(|p| p.last_index);
                    current.insert(condition.key().to_owned(), index);
                }
                if let Some(error) = checked.first_failure(|k| current.get(k).copied().flatten()) {
                    return Err(error);
                }
                let mut pairs = Vec::new();
                for operation in checked.operations() {
                    match operation {
                        Operation::Put {
                            key,
                            value,
                            options,
                        } => {
                            let pair = self
                                .inner
                                .atomic_put(key, value.clone(), None, options.clone())
                                .await;
                            let pair = match pair {
                                Ok(pair) => pair,
                                Err(Error::KeyExists { .. }) => {
                                    self.inner.put(key, value.clone(), options.clone()).await?;
                                    self.inner
                                        .get(key, ReadOptions::default())
                                        .await?
                                        .ok_or_else(|| Error::KeyNotFound { key: key.clone() })?
                                }
                                Err(e) => return Err(e),
                            };
                            pairs.push(pair);
                        }
                        Operation::Delete { key } => {
                            self.inner.delete(key).await?;
                        }
                        _ => unreachable!("no other operation exists"),
                    }
                }
                Ok(pairs)
            }
            _ => self.inner.transaction(rebuild(conditions)).await,
        }
    }

    async fn atomic_delete(&self, key: &str, previous: &KvPair) -> Result<()> {
        let key = self.key(key);
        if self.kind == Kind::AtomicDeleteIgnoresIndex {
            return match self.inner.delete(&key).await? {
                true => Ok(()),
                false => Err(Error::KeyNotFound { key }),
            };
        }
        self.inner.atomic_delete(&key, previous).await
    }

    async fn watch(&self, key: &str, options: ReadOptions) -> Result<WatchStream> {
        let events = self.inner.watch(&self.key(key), options).await?;
        Ok(match self.kind {
            Kind::WatchDropsDeletions => events
                .enumerate()
                .filter_map(|(i, item)| {
                    future::ready((i == 0 || !matches!(item, Ok(None))).then_some(item))
                })
                .boxed(),
            Kind::WatchSkipsInitialState => events.skip(1).boxed(),
            Kind::WatchEndsSilently => events
                .take_while(|item| future::ready(item.is_ok()))
                .boxed(),
            Kind::WatchLeaksItsTask => {
                // The forwarder only notices the dropped stream when it next has an item
                // to forward: until then it keeps the inner watch (and its task) alive.
                let (mut tx, rx) = futures::channel::mpsc::channel(1);
                let mut events = events;
                tokio::spawn(async move {
                    while let Some(item) = events.next().await {
                        if tx.send(item).await.is_err() {
                            break;
                        }
                    }
                });
                rx.boxed()
            }
            _ => events,
        })
    }

    async fn watch_tree(&self, directory: &str, options: ReadOptions) -> Result<WatchTreeStream> {
        let snapshots = self.inner.watch_tree(&self.key(directory), options).await?;
        Ok(match self.kind {
            Kind::WatchTreeFirstOnly => snapshots.take(1).chain(stream::pending()).boxed(),
            _ => snapshots,
        })
    }

    async fn new_lock(&self, key: &str, options: LockOptions) -> Result<Lock> {
        let key = self.key(key);
        match self.kind {
            Kind::LockNotExclusive => {
                static HANDLE: AtomicU64 = AtomicU64::new(0);
                let key = self.caps.check_key(&key)?;
                let n = HANDLE.fetch_add(1, Ordering::Relaxed);
                self.inner.new_lock(&format!("{key}.{n}"), options).await
            }
            Kind::UnlockLeavesValue | Kind::BridgedLocks => {
                self.lock_tasks.ensure_open()?;
                let key = self.caps.check_key(&key)?;
                let value = options.value.clone();
                let lock = self.inner.new_lock(&key, options).await?;
                let backend = LeakyLock {
                    store: self.inner.clone(),
                    key: key.clone(),
                    value,
                    lock: Arc::new(tokio::sync::Mutex::new(lock)),
                    leave_value: self.kind == Kind::UnlockLeavesValue,
                };
                Ok(Lock::new(key, Arc::new(backend), self.lock_tasks.clone()))
            }
            _ => self.inner.new_lock(&key, options).await,
        }
    }

    async fn close(&self) -> Result<()> {
        match self.kind {
            Kind::CloseIsNoop => Ok(()),
            _ => {
                self.lock_tasks.close(Duration::from_secs(5)).await;
                self.inner.close().await
            }
        }
    }

    fn background_tasks(&self) -> usize {
        match self.kind {
            Kind::BackgroundTasksZero => 0,
            _ => self.inner.background_tasks() + self.lock_tasks.running(),
        }
    }
}

/// For [`Kind::UnlockLeavesValue`]: the real lock, whose release then writes the lock's value
/// back, as a backend that forgets to delete the key on unlock would leave it. With
/// `leave_value: false` ([`Kind::BridgedLocks`]) it is a faithful bridge.
#[derive(Debug)]
struct LeakyLock {
    store: Arc<BoltStore>,
    key: String,
    value: Bytes,
    lock: Arc<tokio::sync::Mutex<Lock>>,
    leave_value: bool,
}

#[async_trait]
impl LockBackend for LeakyLock {
    async fn acquire(&self, abandon: CancellationToken) -> Result<Acquired> {
        let mut lock = self.lock.clone().lock_owned().await;
        let inner_lease = tokio::select! {
            lease = lock.lock() => lease?,
            _ = abandon.cancelled() => return Err(Error::Closed),
        };
        drop(lock);
        let (notifier, lease) = LeaseNotifier::new(inner_lease.fencing_token());
        let watcher = notifier.clone();
        tokio::spawn(async move {
            tokio::select! {
                state = inner_lease.lost() => match state {
                    LockState::Lost => watcher.lost(),
                    _ => watcher.released(),
                },
                _ = watcher.ended() => {}
            }
        });
        Ok(Acquired {
            fencing_token: lease.fencing_token(),
            notifier,
            lease,
            held: Box::new(LeakyHeld {
                store: self.store.clone(),
                key: self.key.clone(),
                value: self.value.clone(),
                lock: self.lock.clone(),
                leave_value: self.leave_value,
            }),
        })
    }
}

#[derive(Debug)]
struct LeakyHeld {
    store: Arc<BoltStore>,
    key: String,
    value: Bytes,
    lock: Arc<tokio::sync::Mutex<Lock>>,
    leave_value: bool,
}

#[async_trait]
impl HeldLock for LeakyHeld {
    async fn release(self: Box<Self>) -> Result<()> {
        let _ = self.lock.lock().await.unlock().await;
        if !self.leave_value {
            return Ok(());
        }
        self.store
            .put(&self.key, self.value.clone(), WriteOptions::default())
            .await
    }
}

/// One temporary database per case run; every `connect()` is a new handle on it, wrapped.
struct MutantFactory {
    root: OnceCell<BoltStore>,
    kind: Kind,
}

#[async_trait]
impl StoreFactory for MutantFactory {
    async fn connect(&self) -> Result<Arc<dyn Store>> {
        let root = self
            .root
            .get_or_try_init(|| BoltStore::open(Config::temporary()))
            .await?;
        Ok(Arc::new(Mutant::new(root.handle()?, self.kind)))
    }
}

/// A conformance case as a function pointer.
type Case = for<'a> fn(&'a dyn StoreFactory) -> LocalBoxFuture<'a, ()>;

/// `(name, case)` for a case of `kv_conformance::cases`.
macro_rules! case {
    ($name:ident) => {
        (
            stringify!($name),
            (|f| cases::$name(f).boxed_local()) as Case,
        )
    };
}

thread_local! {
    /// Set on the threads running a mutant: their (expected) panics are not printed.
    static QUIET: Cell<bool> = const { Cell::new(false) };
}

fn install_quiet_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let default = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if !QUIET.with(Cell::get) {
                default(info);
            }
        }));
    });
}

/// Runs `case` against a fresh database wrapped as `kind`, on its own runtime: `Err` with the
/// panic message if the case failed.
fn run_case(kind: Kind, case: Case) -> std::result::Result<(), String> {
    install_quiet_hook();
    let quiet = !matches!(kind, Kind::None | Kind::BridgedLocks);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .on_thread_start(move || QUIET.with(|q| q.set(quiet)))
        .build()
        .expect("cannot start a tokio runtime");
    let factory = MutantFactory {
        root: OnceCell::new(),
        kind,
    };
    QUIET.with(|q| q.set(quiet));
    let outcome = panic::catch_unwind(AssertUnwindSafe(|| runtime.block_on(case(&factory))));
    QUIET.with(|q| q.set(false));
    runtime.shutdown_timeout(Duration::from_secs(2));
    drop(factory);
    outcome.map_err(|payload| {
        payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "a panic without a message".to_owned())
    })
}

/// Runs every case (in parallel, one thread and runtime each) against the mutant `kind`, and
/// requires each to fail with a message containing its expected fragment (or one of several,
/// separated by `|`).
fn assert_caught(kind: Kind, expectations: &[((&str, Case), &str)]) {
    let outcomes: Vec<_> = std::thread::scope(|scope| {
        let running: Vec<_> = expectations
            .iter()
            .map(|&((name, case), fragment)| {
                (name, fragment, scope.spawn(move || run_case(kind, case)))
            })
            .collect();
        running
            .into_iter()
            .map(|(name, fragment, thread)| (name, fragment, thread.join().unwrap()))
            .collect()
    });
    let mut missed = Vec::new();
    for (name, fragment, outcome) in outcomes {
        match outcome {
            Ok(()) => missed.push(format!("{name} PASSED on mutant {kind:?}")),
            Err(message) if fragment.split('|').any(|f| message.contains(f)) => {
                println!("{kind:?} caught by {name}: {message}");
            }
            Err(message) => missed.push(format!(
                "{name} failed on mutant {kind:?}, but not on the rule it guards \
                 (expected {fragment:?}): {message}"
            )),
        }
    }
    assert!(missed.is_empty(), "{}", missed.join("\n"));
}

/// Every case the mutants below use: the unmutated wrapper passes them all.
#[test]
fn control_unmutated_wrapper_passes_every_case_used() {
    let all = [
        case!(put_get_delete_exists),
        case!(values_are_binary_safe),
        case!(last_index_rises_on_every_write),
        case!(key_is_also_a_directory),
        case!(list_is_recursive_sorted_and_path_aware),
        case!(delete_tree_scope),
        case!(atomic_put_create_only),
        case!(atomic_put_compare_and_swap),
        case!(atomic_delete_outcomes),
        case!(cas_race_loses_no_update),
        case!(invalid_keys_are_rejected),
        case!(oversized_values_are_rejected),
        case!(ttl_expires_for_every_reader),
        case!(ttl_range_is_checked),
        case!(watch_reports_every_change),
        case!(watch_missing_key),
        case!(watch_tree_snapshots),
        case!(dropping_a_watch_stops_its_task),
        case!(lock_unlock_relock),
        case!(lock_waits_for_release),
        case!(lock_contenders_never_overlap),
        case!(close_releases_everything),
        case!(capabilities_are_honest),
        case!(txn_all_or_nothing),
        case!(txn_commits_every_operation),
        case!(txn_bank_transfer_keeps_the_sum),
        case!(txn_fenced_write_refused_after_takeover),
        case!(txn_watch_sees_one_change_per_transaction),
    ];
    let failures: Vec<String> = std::thread::scope(|scope| {
        let running: Vec<_> = all
            .iter()
            .map(|&(name, case)| (name, scope.spawn(move || run_case(Kind::None, case))))
            .collect();
        running
            .into_iter()
            .filter_map(|(name, thread)| {
                thread
                    .join()
                    .unwrap()
                    .err()
                    .map(|message| format!("{name}: {message}"))
            })
            .collect()
    });
    assert!(
        failures.is_empty(),
        "the unmutated wrapper must pass:\n{}",
        failures.join("\n")
    );
}

/// The lock bridge behind [`Kind::UnlockLeavesValue`], without the leak, passes the lock
/// cases: that mutant is caught for the value it leaves, not for the bridge.
#[test]
fn control_bridged_locks_pass_the_lock_cases() {
    for (name, case) in [
        case!(lock_unlock_relock),
        case!(lock_waits_for_release),
        case!(close_releases_everything),
    ] {
        if let Err(message) = run_case(Kind::BridgedLocks, case) {
            panic!("{name} fails on the unmutated lock bridge: {message}");
        }
    }
}

/// One `#[test]` per mutant: `name: Kind => [case: "expected panic fragment", …]`. The
/// fragment names the assertion that must fire, so a mutant cannot "pass" by breaking the
/// case somewhere unrelated.
macro_rules! mutants {
    ($($test:ident: $kind:ident => [$($case:ident: $fragment:literal),+ $(,)?];)+) => {
        $(
            #[test]
            fn $test() {
                assert_caught(Kind::$kind, &[$((case!($case), $fragment)),+]);
            }
        )+
    };
}

mutants! {
    get_returns_an_empty_value: GetEmptyValue => [
        put_get_delete_exists: "left: b\"\"",
        values_are_binary_safe: "value 1 round-trips",
    ];
    get_reports_the_key_unnormalised: GetKeyNotNormalised => [
        put_get_delete_exists: "the key comes back normalised",
    ];
    exists_is_always_true: ExistsAlwaysTrue => [
        put_get_delete_exists: "!store.exists(",
    ];
    delete_of_an_absent_key_reports_true: DeleteAbsentIsTrue => [
        put_get_delete_exists: "deleting an absent key is Ok(false)",
    ];
    delete_is_recursive: DeleteIsRecursive => [
        key_is_also_a_directory: "/d/c should exist",
    ];
    list_includes_the_directory_itself: ListIncludesDirectory => [
        list_is_recursive_sorted_and_path_aware: "list(dir)",
    ];
    list_is_a_raw_string_prefix: ListRawPrefix => [
        list_is_recursive_sorted_and_path_aware: "testListx/sibling",
    ];
    list_is_unsorted: ListUnsorted => [
        list_is_recursive_sorted_and_path_aware: "list(dir)",
    ];
    delete_tree_keeps_the_directory_key: DeleteTreeKeepsDirectory => [
        delete_tree_scope: "testDeleteTree deleted by delete_tree",
    ];
    delete_tree_is_a_raw_string_prefix: DeleteTreeRawPrefix => [
        delete_tree_scope: "testDeleteTreex/keep",
    ];
    atomic_put_ignores_previous: CasIgnoresPrevious => [
        atomic_put_compare_and_swap: "CAS with a stale index: unexpected outcome Ok",
        cas_race_loses_no_update: "no increment may be lost",
    ];
    create_only_atomic_put_overwrites: CreateOnlyOverwrites => [
        atomic_put_create_only: "create-only on an existing key",
    ];
    stale_atomic_put_reports_key_not_found: CasStaleIsNotFound => [
        atomic_put_compare_and_swap: "CAS with a stale index: unexpected outcome Err(KeyNotFound",
    ];
    atomic_put_returns_the_old_index: CasReturnsOldIndex => [
        atomic_put_compare_and_swap: "swapped.last_index > pair.last_index",
    ];
    atomic_delete_ignores_the_index: AtomicDeleteIgnoresIndex => [
        atomic_delete_outcomes: "stale atomic_delete",
    ];
    put_ignores_the_ttl: PutIgnoresTtl => [
        ttl_expires_for_every_reader: "expired for the reader",
    ];
    atomic_put_ignores_the_ttl: AtomicPutIgnoresTtl => [
        ttl_expires_for_every_reader: "atomic_put honours the TTL",
    ];
    put_without_ttl_keeps_the_old_ttl: PutKeepsOldTtl => [
        ttl_expires_for_every_reader: "expired keys are not listed",
    ];
    ttl_range_is_clamped_not_checked: TtlRangeUnchecked => [
        ttl_range_is_checked: "ttl below min_ttl",
    ];
    last_index_is_constant: ConstantLastIndex => [
        last_index_rises_on_every_write: "is not above",
    ];
    watch_never_reports_deletions: WatchDropsDeletions => [
        watch_reports_every_change: "a delete: nothing within",
    ];
    watch_skips_the_initial_state: WatchSkipsInitialState => [
        watch_missing_key: "initial state: nothing within",
        watch_reports_every_change: "initial state: nothing within",
    ];
    watch_ends_silently_on_close: WatchEndsSilently => [
        close_releases_everything: "the watch's last item: the stream ended",
    ];
    watch_task_outlives_its_stream: WatchLeaksItsTask => [
        dropping_a_watch_stops_its_task: "watch tasks end after drop",
    ];
    watch_tree_emits_only_the_first_snapshot: WatchTreeFirstOnly => [
        watch_tree_snapshots: "a child deleted: nothing within",
    ];
    watch_declared_unsupported_but_served: DeclaresNoWatch => [
        watch_reports_every_change: "Watch declared unsupported",
        capabilities_are_honest: "watch: unexpected outcome Ok",
    ];
    invalid_keys_are_repaired_not_rejected: InvalidKeysAccepted => [
        invalid_keys_are_rejected: "put \"a//b\": unexpected outcome Ok",
    ];
    value_limit_is_not_enforced: ValueLimitUnchecked => [
        oversized_values_are_rejected: "put over the limit",
    ];
    locks_are_not_exclusive: LockNotExclusive => [
        lock_waits_for_release: "a held lock blocks others",
        lock_contenders_never_overlap: "two holders at once|contended should exist",
    ];
    unlock_leaves_the_value_behind: UnlockLeavesValue => [
        lock_unlock_relock: "unlock deletes the lock's key at once",
    ];
    background_tasks_is_always_zero: BackgroundTasksZero => [
        dropping_a_watch_stops_its_task: "a live watch runs a task",
    ];
    close_does_nothing: CloseIsNoop => [
        close_releases_everything: "a closed handle holds no lock",
    ];
    transaction_ignores_its_conditions: TxnIgnoresConditions => [
        txn_all_or_nothing: "the last condition is stale",
    ];
    transaction_skips_its_last_condition: TxnSkipsLastCondition => [
        txn_all_or_nothing: "the last condition is stale",
    ];
    transaction_applies_operations_one_by_one: TxnOneByOne => [
        txn_bank_transfer_keeps_the_sum: "money was created or destroyed|the balances must be exactly",
        txn_watch_sees_one_change_per_transaction: "a snapshot with part of a transaction|each transaction is one change",
    ];
    transaction_lock_held_means_any_holder: TxnLockHeldIsExists => [
        txn_fenced_write_refused_after_takeover: "a token other than the holder's",
    ];
    transaction_reports_the_wrong_reason: TxnWrongReason => [
        txn_all_or_nothing: "Condition::Absent|KeyExists",
    ];
}
