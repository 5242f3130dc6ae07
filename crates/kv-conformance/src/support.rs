//! Small helpers shared by the cases: unique prefixes, connections, bounded waits.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use kv_core::{Capabilities, Error, KvPair, ReadOptions, Store, WriteOptions};
use rand::Rng;

use crate::StoreFactory;

/// How long a watch may take to report a change before the case fails.
pub const EVENT_TIMEOUT: Duration = Duration::from_secs(6);

/// Extra time allowed on top of a backend's declared TTL precision (network, scheduling).
pub const TTL_SLACK: Duration = Duration::from_millis(700);

/// A prefix no other case (or earlier run) uses: `conformance-<case>-<random>`.
pub fn unique_prefix(case: &str) -> String {
    let n: u64 = rand::rng().random();
    format!("conformance-{case}-{n:016x}")
}

/// Opens a handle or fails the case with the reason.
pub async fn connect(factory: &dyn StoreFactory) -> Arc<dyn Store> {
    match factory.connect().await {
        Ok(store) => store,
        Err(error) => panic!("cannot connect to the store under test: {error}"),
    }
}

/// What every lock case starts from: two handles on the store under test (one to lock with,
/// one to look from), the first handle's capabilities, a fresh key and the first handle's
/// background task count before the case.
pub struct LockCase {
    /// The handle the case locks with.
    pub store: Arc<dyn Store>,
    /// A second handle: another client, to check what the first one left.
    pub other: Arc<dyn Store>,
    /// `store`'s capabilities.
    pub caps: Capabilities,
    /// A key no other case or run uses: `<unique prefix>/<leaf>`.
    pub key: String,
    /// `store.background_tasks()` before the case.
    pub baseline: usize,
}

/// Sets up a lock case named `case`, or `None` when the store declares no locks (the case
/// then has nothing to check).
pub async fn lock_case(factory: &dyn StoreFactory, case: &str, leaf: &str) -> Option<LockCase> {
    let store = connect(factory).await;
    let other = connect(factory).await;
    if lacks(&*store, &[Capability::Locks]).await {
        return None;
    }
    Some(LockCase {
        caps: store.capabilities().clone(),
        key: format!("{}/{leaf}", unique_prefix(case)),
        baseline: store.background_tasks(),
        store,
        other,
    })
}

/// The TTL the cases use for keys: short, but within the backend's range.
pub fn key_ttl(caps: &Capabilities) -> Duration {
    caps.min_ttl.max(Duration::from_secs(1))
}

/// The TTL the cases use for locks.
pub fn lock_ttl(caps: &Capabilities) -> Duration {
    caps.min_ttl.max(Duration::from_secs(2))
}

/// The longest a key with `ttl` may stay visible.
pub fn expiry_bound(caps: &Capabilities, ttl: Duration) -> Duration {
    ttl + caps.ttl_precision + TTL_SLACK
}

/// `put` that must succeed.
pub async fn put(store: &dyn Store, key: &str, value: &str) {
    store
        .put(key, value.to_owned().into(), WriteOptions::default())
        .await
        .unwrap_or_else(|e| panic!("put {key}: {e}"));
}

/// `get` that must succeed.
pub async fn get(store: &dyn Store, key: &str) -> Option<KvPair> {
    store
        .get(key, ReadOptions::default())
        .await
        .unwrap_or_else(|e| panic!("get {key}: {e}"))
}

/// `get` of a key that must exist; returns its pair.
pub async fn get_some(store: &dyn Store, key: &str) -> KvPair {
    get(store, key)
        .await
        .unwrap_or_else(|| panic!("{key} should exist"))
}

/// `list` that must succeed; returns the keys.
pub async fn list_keys(store: &dyn Store, dir: &str) -> Vec<String> {
    store
        .list(dir, ReadOptions::default())
        .await
        .unwrap_or_else(|e| panic!("list {dir}: {e}"))
        .into_iter()
        .map(|p| p.key)
        .collect()
}

/// The next item of a stream within [`EVENT_TIMEOUT`], or the case fails.
pub async fn next_item<S, T>(stream: &mut S, what: &str) -> T
where
    S: Stream<Item = T> + Unpin,
{
    match tokio::time::timeout(EVENT_TIMEOUT, stream.next()).await {
        Ok(Some(item)) => item,
        Ok(None) => panic!("{what}: the stream ended"),
        Err(_) => panic!("{what}: nothing within {EVENT_TIMEOUT:?}"),
    }
}

/// Reads items until one satisfies `accept`, failing after `limit`.
pub async fn until_item<S, T, F>(stream: &mut S, limit: Duration, what: &str, mut accept: F) -> T
where
    S: Stream<Item = T> + Unpin,
    F: FnMut(&T) -> bool,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, stream.next()).await {
            Ok(Some(item)) if accept(&item) => return item,
            Ok(Some(_)) => continue,
            Ok(None) => panic!("{what}: the stream ended"),
            Err(_) => panic!("{what}: not seen within {limit:?}"),
        }
    }
}

/// Polls `check` every 50 ms until it is true, failing after `limit`.
pub async fn eventually<F, Fut>(limit: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if check().await {
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("{what}: not true within {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Asserts that `result` is the error `matches` describes.
#[track_caller]
pub fn assert_err<T: std::fmt::Debug>(
    result: kv_core::Result<T>,
    what: &str,
    matches: impl Fn(&Error) -> bool,
) {
    match result {
        Err(ref e) if matches(e) => {}
        other => panic!("{what}: unexpected outcome {other:?}"),
    }
}

/// A capability a backend may declare absent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Capability {
    /// `watch`.
    Watch,
    /// `watch_tree`.
    WatchTree,
    /// `new_lock`.
    Locks,
    /// `WriteOptions::ttl`.
    Ttl,
    /// `Store::transaction`.
    Transactions,
}

/// True when the store declares one of `needed` unsupported — after checking that each such
/// call really fails with `NotSupported`, which is then the case's whole verdict. It prints a
/// `conformance: <backend> declares <call> unsupported` line, which `scripts/matrix` reads (run
/// with `--nocapture`) so that the feature matrix never shows such a call as working.
pub async fn lacks(store: &dyn Store, needed: &[Capability]) -> bool {
    let caps = store.capabilities().clone();
    let mut missing = false;
    for &capability in needed {
        let declared = match capability {
            Capability::Watch => caps.watch,
            Capability::WatchTree => caps.watch_tree,
            Capability::Locks => caps.locks,
            Capability::Ttl => caps.ttl,
            Capability::Transactions => caps.transactions,
        };
        if declared {
            continue;
        }
        missing = true;
        let key = format!("{}/k", unique_prefix("unsupported"));
        let outcome = match capability {
            Capability::Watch => store.watch(&key, ReadOptions::default()).await.map(|_| ()),
            Capability::WatchTree => store
                .watch_tree(&key, ReadOptions::default())
                .await
                .map(|_| ()),
            Capability::Locks => store
                .new_lock(&key, kv_core::LockOptions::default())
                .await
                .map(|_| ()),
            Capability::Ttl => {
                store
                    .put(
                        &key,
                        "v".into(),
                        WriteOptions::with_ttl(Duration::from_secs(30)),
                    )
                    .await
            }
            Capability::Transactions => store
                .transaction(kv_core::Transaction::new().delete(&key))
                .await
                .map(|_| ()),
        };
        assert_err(
            outcome,
            &format!("{capability:?} declared unsupported"),
            |e| matches!(e, Error::NotSupported { .. }),
        );
        println!(
            "conformance: {} declares {capability:?} unsupported",
            caps.backend
        );
    }
    missing
}

/// The `ConditionFailed` a transaction must fail with, or the case fails.
#[track_caller]
pub fn assert_condition_failed<T: std::fmt::Debug>(
    result: kv_core::Result<T>,
    what: &str,
    index: usize,
    key: &str,
    reason: kv_core::ConditionFailure,
) {
    match result {
        Err(Error::ConditionFailed {
            index: i,
            key: k,
            reason: r,
        }) if i == index && k == key && r == reason => {}
        other => panic!(
            "{what}: expected ConditionFailed {{ index: {index}, key: {key}, reason: {reason:?} }}, got {other:?}"
        ),
    }
}

/// A random moment to cut a call short, around the time the call typically takes: half the
/// time after a random delay up to twice `typical`, otherwise after a random number of
/// scheduler yields, which reaches below the timer's millisecond resolution (fast backends
/// answer in less).
#[derive(Debug, Clone, Copy)]
pub struct RandomCut {
    delay: Duration,
    yields: Option<u32>,
}

impl RandomCut {
    /// A fresh random moment for a call that typically takes `typical`.
    pub fn around(typical: Duration) -> Self {
        let mut rng = rand::rng();
        let span = (typical.as_micros() as u64 * 2).max(50);
        RandomCut {
            delay: Duration::from_micros(rng.random_range(0..=span)),
            yields: rng.random_bool(0.5).then(|| rng.random_range(0..100u32)),
        }
    }

    /// Completes at the chosen moment: race it against the call with a `biased` select.
    pub async fn elapsed(self) {
        match self.yields {
            Some(n) => {
                for _ in 0..n {
                    tokio::task::yield_now().await;
                }
            }
            None => tokio::time::sleep(self.delay).await,
        }
    }
}

impl std::fmt::Display for RandomCut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.yields {
            Some(n) => write!(f, "cut after {n} yields"),
            None => write!(f, "cut after {:?}", self.delay),
        }
    }
}
