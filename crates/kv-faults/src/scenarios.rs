//! The fault scenarios. Each runs against a [`Target`], panics (fails) on the first broken
//! promise with a description, and returns (and emits) its [`Report`].

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::StreamExt;
use kv_core::{Error, KvPair, LockOptions, ReadOptions, Store, WriteOptions};
use kv_test_support::child::ChildProcess;
use rand::Rng;
use tokio::time::{Instant, sleep, timeout};

use crate::child::{KEY_VAR, TTL_VAR, WAIT_VAR};
use crate::history::{Call, Outcome, Recorder};
use crate::linearizability;
use crate::locks::Witness;
use crate::report::Report;
use crate::{Target, scenario_length};

/// How long a watch may take to show a change, or a lock to be granted when free.
const EVENT_TIMEOUT: Duration = Duration::from_secs(10);
/// Extra time on top of a backend's TTL and TTL precision (scheduling, network).
const SLACK: Duration = Duration::from_millis(1500);
/// The search budget of the linearizability check.
const CHECK_BUDGET: u64 = 20_000_000;

fn unique(scenario: &str) -> String {
    format!("faults-{scenario}-{:016x}", rand::rng().random::<u64>())
}

async fn connect(target: &dyn Target) -> Arc<dyn Store> {
    target
        .connect()
        .await
        .unwrap_or_else(|e| panic!("{}: cannot connect: {e}", target.name()))
}

fn lock_ttl(store: &dyn Store) -> Duration {
    store.capabilities().min_ttl.max(Duration::from_secs(2))
}

fn text(pair: &KvPair) -> String {
    String::from_utf8_lossy(&pair.value).into_owned()
}

/// Several clients read, write, delete and compare-and-swap ONE key while some of their calls
/// are cut short by a random `timeout` (the call may or may not have taken effect). The
/// history must be linearizable; a watcher's states must never go backwards and must end on
/// the final value.
pub async fn register_under_cancellation(target: &dyn Target) -> Report {
    const CLIENTS: usize = 5;
    let key = format!("{}/k", unique("register"));
    let recorder = Recorder::new();
    let mut stores = Vec::new();
    for _ in 0..CLIENTS {
        stores.push(connect(target).await);
    }
    let observer = connect(target).await;

    // The watcher: every state it sees, in order.
    let seen: Arc<std::sync::Mutex<Vec<Option<KvPair>>>> = Arc::default();
    let watch_failed: Arc<std::sync::Mutex<Option<String>>> = Arc::default();
    let mut stream = observer
        .watch(&key, ReadOptions::default())
        .await
        .unwrap_or_else(|e| panic!("watch: {e}"));
    let watcher = {
        let seen = seen.clone();
        let failed = watch_failed.clone();
        tokio::spawn(async move {
            while let Some(item) = stream.next().await {
                match item {
                    Ok(state) => seen.lock().unwrap_or_else(|e| e.into_inner()).push(state),
                    Err(error) => {
                        *failed.lock().unwrap_or_else(|e| e.into_inner()) = Some(error.to_string());
                        return;
                    }
                }
            }
        })
    };

    let until = Instant::now() + scenario_length();
    let cut_short = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let mut clients = Vec::new();
    for (client, store) in stores.iter().cloned().enumerate() {
        let recorder = recorder.clone();
        let key = key.clone();
        let cut_short = cut_short.clone();
        let errors = errors.clone();
        clients.push(tokio::spawn(async move {
            let mut last: Option<KvPair> = None;
            let mut n = 0u64;
            while Instant::now() < until {
                n += 1;
                let value = format!("c{client}-{n}");
                let (cut, limit) = {
                    let mut rng = rand::rng();
                    if rng.random_bool(0.12) {
                        (true, Duration::from_micros(rng.random_range(0..20_000)))
                    } else {
                        (false, Duration::from_secs(30))
                    }
                };
                let choice = rand::rng().random_range(0..100);
                let invoked = recorder.now();
                let (call, outcome) = match choice {
                    0..=29 => {
                        let result = timeout(limit, store.get(&key, ReadOptions::default())).await;
                        let outcome = match result {
                            Ok(Ok(pair)) => {
                                let read = pair.as_ref().map(text);
                                last = pair;
                                Outcome::Read(read)
                            }
                            Ok(Err(_)) => {
                                errors.fetch_add(1, Ordering::Relaxed);
                                Outcome::Unknown
                            }
                            Err(_) => Outcome::Unknown,
                        };
                        (Call::Get, outcome)
                    }
                    30..=49 => {
                        let result = timeout(
                            limit,
                            store.put(&key, value.clone().into(), WriteOptions::default()),
                        )
                        .await;
                        let outcome = match result {
                            Ok(Ok(())) => Outcome::Written,
                            Ok(Err(_)) => {
                                errors.fetch_add(1, Ordering::Relaxed);
                                Outcome::Unknown
                            }
                            Err(_) => Outcome::Unknown,
                        };
                        (Call::Put(value), outcome)
                    }
                    50..=59 => {
                        let outcome = match timeout(limit, store.delete(&key)).await {
                            Ok(Ok(existed)) => Outcome::Deleted(existed),
                            Ok(Err(_)) => {
                                errors.fetch_add(1, Ordering::Relaxed);
                                Outcome::Unknown
                            }
                            Err(_) => Outcome::Unknown,
                        };
                        (Call::Delete, outcome)
                    }
                    60..=89 => {
                        let expected = last.as_ref().map(text);
                        let result = timeout(
                            limit,
                            store.atomic_put(
                                &key,
                                value.clone().into(),
                                last.as_ref(),
                                WriteOptions::default(),
                            ),
                        )
                        .await;
                        let outcome = match result {
                            Ok(Ok(pair)) => {
                                last = Some(pair);
                                Outcome::Written
                            }
                            Ok(Err(
                                Error::KeyExists { .. }
                                | Error::KeyNotFound { .. }
                                | Error::KeyModified { .. },
                            )) => Outcome::Refused,
                            Ok(Err(_)) => {
                                errors.fetch_add(1, Ordering::Relaxed);
                                Outcome::Unknown
                            }
                            Err(_) => Outcome::Unknown,
                        };
                        (
                            Call::CasPut {
                                expected,
                                new: value,
                            },
                            outcome,
                        )
                    }
                    _ => {
                        let Some(previous) = last.clone() else {
                            continue;
                        };
                        let result = timeout(limit, store.atomic_delete(&key, &previous)).await;
                        let outcome = match result {
                            Ok(Ok(())) => Outcome::Written,
                            Ok(Err(Error::KeyNotFound { .. } | Error::KeyModified { .. })) => {
                                Outcome::Refused
                            }
                            Ok(Err(_)) => {
                                errors.fetch_add(1, Ordering::Relaxed);
                                Outcome::Unknown
                            }
                            Err(_) => Outcome::Unknown,
                        };
                        (
                            Call::CasDelete {
                                expected: text(&previous),
                            },
                            outcome,
                        )
                    }
                };
                if cut && outcome == Outcome::Unknown {
                    cut_short.fetch_add(1, Ordering::Relaxed);
                }
                recorder.record(client, call, invoked, outcome);
            }
        }));
    }
    // Meanwhile another handle opens watches on the key and its directory and drops them at
    // random moments (while opening, before or after the first item): no task may be left.
    let churner = connect(target).await;
    let churn_baseline = churner.background_tasks();
    let churn = {
        let churner = churner.clone();
        let key = key.clone();
        tokio::spawn(async move {
            let dir = key
                .rsplit_once('/')
                .map(|(d, _)| d.to_owned())
                .unwrap_or_default();
            let (mut opened, mut cut) = (0u64, 0u64);
            while Instant::now() < until {
                let (limit, items, tree) = {
                    let mut rng = rand::rng();
                    (
                        Duration::from_micros(rng.random_range(0..30_000)),
                        rng.random_range(0..3usize),
                        rng.random_bool(0.5),
                    )
                };
                let watched = timeout(limit, async {
                    if tree {
                        let mut stream = churner.watch_tree(&dir, ReadOptions::default()).await?;
                        for _ in 0..items {
                            if stream.next().await.is_none() {
                                break;
                            }
                        }
                    } else {
                        let mut stream = churner.watch(&key, ReadOptions::default()).await?;
                        for _ in 0..items {
                            if stream.next().await.is_none() {
                                break;
                            }
                        }
                    }
                    Ok::<(), Error>(())
                })
                .await;
                opened += 1;
                match watched {
                    Ok(Ok(())) => {}
                    Ok(Err(error)) => panic!("watch: {error}"),
                    Err(_) => cut += 1,
                }
                // Gentle on servers that keep a dropped watch's request until it times out.
                sleep(Duration::from_millis(100)).await;
            }
            (opened, cut)
        })
    };
    for client in clients {
        client
            .await
            .unwrap_or_else(|e| panic!("a client panicked: {e}"));
    }
    let (watches_opened, watches_cut) = churn
        .await
        .unwrap_or_else(|e| panic!("the watch churn panicked: {e}"));
    let deadline = Instant::now() + Duration::from_secs(5);
    while churner.background_tasks() > churn_baseline {
        assert!(
            Instant::now() < deadline,
            "{}: {} watch tasks left after dropping every watch (baseline {churn_baseline})",
            target.name(),
            churner.background_tasks()
        );
        sleep(Duration::from_millis(20)).await;
    }
    let _ = churner.close().await;
    // Calls cut short may still land: give them a moment, then read the final state.
    sleep(Duration::from_millis(300)).await;
    let invoked = recorder.now();
    let last_state = observer
        .get(&key, ReadOptions::default())
        .await
        .unwrap_or_else(|e| panic!("final get: {e}"));
    recorder.record(
        CLIENTS,
        Call::Get,
        invoked,
        Outcome::Read(last_state.as_ref().map(text)),
    );

    let ops = recorder.ops();
    let started = std::time::Instant::now();
    let verdict = match linearizability::check(None, &ops, CHECK_BUDGET) {
        Ok(verdict) => verdict,
        Err(inconclusive) => panic!(
            "{}: the linearizability check gave up after {} steps on {} operations",
            target.name(),
            inconclusive.explored,
            ops.len()
        ),
    };
    let check_time = started.elapsed();
    if !verdict.linearizable {
        // Keep the evidence: one operation per line, in invocation order.
        let path = std::env::temp_dir().join(format!(
            "kv-faults-{}-{:08x}.history",
            target.name(),
            rand::rng().random::<u32>()
        ));
        let mut sorted = ops.clone();
        sorted.sort_by_key(|o| o.invoked);
        let text: String = sorted
            .iter()
            .map(|o| {
                format!(
                    "{:>12?} {:>12?} client {} {:?} -> {:?}\n",
                    o.invoked, o.completed, o.client, o.call, o.outcome
                )
            })
            .collect();
        let saved = std::fs::write(&path, text).is_ok();
        panic!(
            "{}: the history of {} operations is not linearizable: {} ({})",
            target.name(),
            ops.len(),
            verdict.explanation.unwrap_or_default(),
            if saved {
                format!("history saved to {}", path.display())
            } else {
                "the history could not be saved".to_owned()
            }
        );
    }

    // The watcher ends on the final state, never going backwards on the way.
    let deadline = Instant::now() + EVENT_TIMEOUT;
    loop {
        if let Some(error) = watch_failed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
        {
            panic!("{}: the watch ended with an error: {error}", target.name());
        }
        let latest = seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .last()
            .cloned();
        let reached = match (&latest, &last_state) {
            (Some(Some(a)), Some(b)) => a.last_index == b.last_index && a.value == b.value,
            (Some(None), None) => true,
            _ => false,
        };
        if reached {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{}: the watch never reached the final state {last_state:?} (last seen {latest:?})",
            target.name()
        );
        sleep(Duration::from_millis(20)).await;
    }
    watcher.abort();
    let states = seen.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let mut highest = 0;
    for state in states.iter().flatten() {
        assert!(
            state.last_index >= highest,
            "{}: the watch went backwards: index {} after {highest}",
            target.name(),
            state.last_index
        );
        highest = state.last_index;
    }
    for store in stores.iter().chain([&observer]) {
        let _ = store.close().await;
    }

    let unknown = ops.iter().filter(|o| o.outcome == Outcome::Unknown).count();
    let mut report = Report::new(target.name(), "register_under_cancellation");
    report
        .add("operations", ops.len())
        .add("cut_short", cut_short.load(Ordering::Relaxed))
        .add("unknown_outcome", unknown)
        .add("errors", errors.load(Ordering::Relaxed))
        .add("linearizable", "yes")
        .add("check_steps", verdict.explored)
        .add("check_ms", check_time.as_millis())
        .add("watch_states", states.len())
        .add("watch_backwards", 0)
        .add("watches_dropped", watches_opened)
        .add("watches_cut_short", watches_cut)
        .add("watch_tasks_left", 0);
    report.emit();
    report
}

/// Several clients contend for one lock; their `lock()` calls are cut short at random moments
/// (before, while and right after the server grants the lock), and some holders drop their
/// `Lock` instead of unlocking. An independent witness sees no two holders at once and
/// strictly rising fencing tokens; afterwards no task is left and the lock is free.
pub async fn locks_under_cancellation(target: &dyn Target) -> Report {
    const CLIENTS: usize = 4;
    let key = format!("{}/lock", unique("locks"));
    let witness = Witness::new();
    let mut stores = Vec::new();
    for _ in 0..CLIENTS {
        stores.push(connect(target).await);
    }
    let ttl = lock_ttl(&*stores[0]);
    let baselines: Vec<usize> = stores.iter().map(|s| s.background_tasks()).collect();
    let until = Instant::now() + scenario_length();
    let counters: Arc<[AtomicU64; 5]> = Arc::new(Default::default());
    const ACQUIRED: usize = 0;
    const CANCELLED: usize = 1;
    const ERRORS: usize = 2;
    const DROPPED: usize = 3;
    const LOST_WHILE_HELD: usize = 4;
    let mut clients = Vec::new();
    for (client, store) in stores.iter().cloned().enumerate() {
        let key = key.clone();
        let witness = witness.clone();
        let counters = counters.clone();
        clients.push(tokio::spawn(async move {
            let options = LockOptions::default().value(format!("c{client}")).ttl(ttl);
            let mut lock = store
                .new_lock(&key, options.clone())
                .await
                .unwrap_or_else(|e| panic!("new_lock: {e}"));
            while Instant::now() < until {
                // A third of the attempts are cut short after a random time, a third after a
                // random number of scheduler yields (finer than the timer), a third wait.
                let (limit, yields) = {
                    let mut rng = rand::rng();
                    match rng.random_range(0..3) {
                        0 => (Duration::from_micros(rng.random_range(0..25_000)), None),
                        1 => (Duration::ZERO, Some(rng.random_range(0..300u32))),
                        _ => (Duration::from_secs(30), None),
                    }
                };
                let cut_short = async {
                    match yields {
                        Some(n) => {
                            for _ in 0..n {
                                tokio::task::yield_now().await;
                            }
                        }
                        None => sleep(limit).await,
                    }
                };
                let outcome = tokio::select! {
                    biased;
                    _ = cut_short => Err(()),
                    result = lock.lock() => Ok(result),
                };
                match outcome {
                    Ok(Ok(lease)) => {
                        counters[ACQUIRED].fetch_add(1, Ordering::Relaxed);
                        witness.enter(client, lease.fencing_token());
                        let hold = rand::rng().random_range(0..4);
                        sleep(Duration::from_millis(hold)).await;
                        if !lease.is_held() {
                            counters[LOST_WHILE_HELD].fetch_add(1, Ordering::Relaxed);
                        }
                        witness.leave(client);
                        if rand::rng().random_bool(0.2) {
                            // Dropped while held: released in the background.
                            counters[DROPPED].fetch_add(1, Ordering::Relaxed);
                            lock = store
                                .new_lock(&key, options.clone())
                                .await
                                .unwrap_or_else(|e| panic!("new_lock: {e}"));
                        } else {
                            match lock.unlock().await {
                                Ok(()) | Err(Error::LockLost { .. }) => {}
                                Err(error) => panic!("unlock: {error}"),
                            }
                        }
                    }
                    Ok(Err(error)) => {
                        counters[ERRORS].fetch_add(1, Ordering::Relaxed);
                        eprintln!("client {client}: lock failed: {error}");
                    }
                    Err(_) => {
                        counters[CANCELLED].fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    for client in clients {
        client
            .await
            .unwrap_or_else(|e| panic!("a client panicked: {e}"));
    }
    let holdings = witness
        .check()
        .unwrap_or_else(|violation| panic!("{}: {violation}", target.name()));
    assert!(holdings > 0, "{}: nobody ever got the lock", target.name());
    let lost = counters[LOST_WHILE_HELD].load(Ordering::Relaxed);
    assert_eq!(
        lost,
        0,
        "{}: {lost} holders lost the lock while holding it briefly",
        target.name()
    );

    // No task is left behind on any handle.
    let deadline = Instant::now() + Duration::from_secs(5);
    for (store, baseline) in stores.iter().zip(&baselines) {
        while store.background_tasks() > *baseline {
            assert!(
                Instant::now() < deadline,
                "{}: {} background tasks left (baseline {baseline})",
                target.name(),
                store.background_tasks()
            );
            sleep(Duration::from_millis(20)).await;
        }
    }
    // And the lock is free: a newcomer gets it at once.
    let newcomer = connect(target).await;
    let mut lock = newcomer
        .new_lock(&key, LockOptions::default().ttl(ttl))
        .await
        .unwrap_or_else(|e| panic!("new_lock: {e}"));
    let started = Instant::now();
    let lease = timeout(EVENT_TIMEOUT, lock.lock())
        .await
        .unwrap_or_else(|_| panic!("{}: the lock stayed held after the storm", target.name()))
        .unwrap_or_else(|e| panic!("lock: {e}"));
    let free_after = started.elapsed();
    let last_token = witness.holdings().last().map(|h| h.token).unwrap_or(0);
    assert!(
        lease.fencing_token() > last_token,
        "{}: the newcomer's token {} is not above {last_token}",
        target.name(),
        lease.fencing_token()
    );
    lock.unlock()
        .await
        .unwrap_or_else(|e| panic!("unlock: {e}"));
    for store in stores.iter().chain([&newcomer]) {
        let _ = store.close().await;
    }

    let mut report = Report::new(target.name(), "locks_under_cancellation");
    report
        .add("acquisitions", counters[ACQUIRED].load(Ordering::Relaxed))
        .add("cancelled", counters[CANCELLED].load(Ordering::Relaxed))
        .add("dropped_holders", counters[DROPPED].load(Ordering::Relaxed))
        .add("errors", counters[ERRORS].load(Ordering::Relaxed))
        .add("overlaps", 0)
        .add("token_violations", 0)
        .add("newcomer_wait_ms", free_after.as_millis());
    report.emit();
    report
}

/// A child process started by a scenario, with its stdout lines.
/// Starts the target's child process for `mode`, on `key` with `ttl` and the extra `env`.
fn child_process(
    target: &dyn Target,
    mode: &str,
    key: &str,
    ttl: Duration,
    env: &[(&str, String)],
) -> ChildProcess {
    let mut command = target.child(mode);
    for (name, value) in env {
        command.env(name, value);
    }
    command
        .env(KEY_VAR, key)
        .env(TTL_VAR, ttl.as_millis().to_string());
    ChildProcess::start(command)
}

/// A child process takes the lock and is killed with SIGKILL: the next holder gets it within
/// TTL + precision, with a higher fencing token. Three rounds on one key.
pub async fn killed_holder(target: &dyn Target) -> Report {
    const ROUNDS: usize = 3;
    let key = format!("{}/lock", unique("killed"));
    let mut store = if target.single_process() {
        None
    } else {
        Some(connect(target).await)
    };
    let (ttl, precision) = {
        let probe = match &store {
            Some(store) => store.clone(),
            None => connect(target).await,
        };
        let caps = (lock_ttl(&*probe), probe.capabilities().ttl_precision);
        if store.is_none() {
            let _ = probe.close().await;
        }
        caps
    };
    let bound = ttl + precision + SLACK;
    let mut longest = Duration::ZERO;
    let mut last_token = 0;
    for round in 0..ROUNDS {
        let mut child = child_process(target, "hold", &key, ttl, &[]);
        let token: u64 = child
            .expect("locked ", Duration::from_secs(30))
            .await
            .parse()
            .unwrap_or_else(|e| panic!("the child's token: {e}"));
        assert!(
            token > last_token,
            "round {round}: token {token} after {last_token}"
        );
        child.kill();
        let killed = Instant::now();
        if store.is_none() {
            store = Some(connect(target).await);
        }
        let Some(handle) = store.clone() else {
            unreachable!("connected above")
        };
        let mut lock = handle
            .new_lock(&key, LockOptions::default().value("parent").ttl(ttl))
            .await
            .unwrap_or_else(|e| panic!("new_lock: {e}"));
        let lease = timeout(bound + EVENT_TIMEOUT, lock.lock())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "{} round {round}: the killed holder's lock never became free",
                    target.name()
                )
            })
            .unwrap_or_else(|e| panic!("lock: {e}"));
        let waited = killed.elapsed();
        assert!(
            waited <= bound,
            "{} round {round}: the lock of a killed holder became free after {waited:?}, more than TTL {ttl:?} + precision {precision:?} + {SLACK:?}",
            target.name()
        );
        assert!(
            lease.fencing_token() > token,
            "{} round {round}: the next holder's token {} is not above the killed holder's {token}",
            target.name(),
            lease.fencing_token()
        );
        last_token = lease.fencing_token();
        longest = longest.max(waited);
        lock.unlock()
            .await
            .unwrap_or_else(|e| panic!("unlock: {e}"));
        if target.single_process()
            && let Some(store) = store.take()
        {
            let _ = store.close().await;
        }
    }
    if let Some(store) = store {
        let _ = store.close().await;
    }
    let mut report = Report::new(target.name(), "killed_holder");
    report
        .add("kills", ROUNDS)
        .add("lock_ttl_ms", ttl.as_millis())
        .add("longest_reacquire_ms", longest.as_millis())
        .add("bound_ms", bound.as_millis())
        .add("token_violations", 0);
    report.emit();
    report
}

/// A child process takes the lock and is stopped (SIGSTOP) for longer than the TTL; another
/// client takes the lock meanwhile, with a higher token. When the child continues (SIGCONT),
/// its lease must report the loss promptly (one renewal interval plus a round trip).
pub async fn paused_holder(target: &dyn Target) -> Report {
    let mut report = Report::new(target.name(), "paused_holder");
    if target.single_process() {
        // Only one process can open the database: nobody else can take the lock while the
        // holder is paused, so there is nothing to check.
        report.add("applicable", "no (one process per database)");
        report.emit();
        return report;
    }
    let key = format!("{}/lock", unique("paused"));
    let store = connect(target).await;
    let ttl = lock_ttl(&*store);
    let precision = store.capabilities().ttl_precision;
    let child = child_process(target, "hold", &key, ttl, &[]);
    let token: u64 = child
        .expect("locked ", Duration::from_secs(30))
        .await
        .parse()
        .unwrap_or_else(|e| panic!("the child's token: {e}"));
    child.signal("STOP");
    let stopped = Instant::now();
    let mut lock = store
        .new_lock(&key, LockOptions::default().value("parent").ttl(ttl))
        .await
        .unwrap_or_else(|e| panic!("new_lock: {e}"));
    let bound = ttl + precision + SLACK;
    let lease = timeout(bound + EVENT_TIMEOUT, lock.lock())
        .await
        .unwrap_or_else(|_| {
            panic!(
                "{}: the paused holder's lock never became free",
                target.name()
            )
        })
        .unwrap_or_else(|e| panic!("lock: {e}"));
    let takeover = stopped.elapsed();
    assert!(
        takeover <= bound,
        "{}: the paused holder's lock became free after {takeover:?} (bound {bound:?})",
        target.name()
    );
    assert!(
        lease.fencing_token() > token,
        "{}: the new holder's token {} is not above the paused holder's {token}",
        target.name(),
        lease.fencing_token()
    );
    // Keep it paused past its TTL for sure, then let it run again.
    if stopped.elapsed() < ttl + precision {
        sleep(ttl + precision - stopped.elapsed()).await;
    }
    child.signal("CONT");
    let resumed = Instant::now();
    let ended = child.expect("ended ", ttl + SLACK + EVENT_TIMEOUT).await;
    let noticed = resumed.elapsed();
    assert_eq!(
        ended,
        "lost",
        "{}: the paused holder's lease ended as {ended:?}, not lost",
        target.name()
    );
    let renew_bound = ttl / 3 + SLACK;
    assert!(
        noticed <= renew_bound,
        "{}: the resumed holder believed it held the lock for {noticed:?} after resuming (bound {renew_bound:?})",
        target.name()
    );
    assert!(
        lease.is_held(),
        "{}: the new holder lost the lock",
        target.name()
    );
    lock.unlock()
        .await
        .unwrap_or_else(|e| panic!("unlock: {e}"));
    drop(child);
    let _ = store.close().await;
    report
        .add("applicable", "yes")
        .add("lock_ttl_ms", ttl.as_millis())
        .add("takeover_ms", takeover.as_millis())
        .add("stale_after_resume_ms", noticed.as_millis())
        .add("token_violations", 0);
    report.emit();
    report
}

/// Where Debian's libfaketime lives.
const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

/// The environment that runs a child with its wall clock moved by `skew_secs` (monotonic time
/// untouched, so its timers still work).
fn skewed_env(skew_secs: i64) -> Vec<(&'static str, String)> {
    vec![
        ("LD_PRELOAD", LIBFAKETIME.to_owned()),
        ("FAKETIME", format!("{skew_secs:+}s")),
        ("DONT_FAKE_MONOTONIC", "1".to_owned()),
    ]
}

fn unix_ms() -> i128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i128)
        .unwrap_or(0)
}

/// Starts a child with a skewed clock and checks that the skew took effect.
async fn skewed_child(
    target: &dyn Target,
    mode: &str,
    key: &str,
    ttl: Duration,
    skew_secs: i64,
    extra: &[(&str, String)],
) -> ChildProcess {
    let mut env = skewed_env(skew_secs);
    env.extend(extra.iter().cloned());
    let child = child_process(target, mode, key, ttl, &env);
    let clock: i128 = child
        .expect("clock ", Duration::from_secs(30))
        .await
        .parse()
        .unwrap_or_else(|e| panic!("the child's clock: {e}"));
    let measured = (clock - unix_ms()) as f64 / 1000.0;
    assert!(
        (measured - skew_secs as f64).abs() < 5.0,
        "libfaketime did not move the child's clock by {skew_secs} s (measured {measured:.1} s): is Debian's libfaketime installed?"
    );
    child
}

/// Clients whose wall clocks are 30 s ahead of or behind the others' must neither steal a
/// live lock, nor see a live TTL key as expired, nor see an expired one as live: expiry must
/// not depend on clients agreeing on the time.
pub async fn skewed_clocks(target: &dyn Target) -> Report {
    let mut report = Report::new(target.name(), "skewed_clocks");
    if target.single_process() {
        // One process per database: there is no second client whose clock could differ.
        report.add("applicable", "no (one process per database)");
        report.emit();
        return report;
    }
    const SKEW: i64 = 30;
    let base = unique("skew");
    let store = connect(target).await;
    let caps = store.capabilities().clone();
    let ttl = lock_ttl(&*store);

    // 1. A held, renewed lock: children 30 s ahead and behind must not get it. A theft is the
    // child acquiring while the holder's lease still says Held; if the holder's renewals could
    // not get through within the TTL (a server slowed down by a loaded machine), its lease
    // ends first and the child's acquisition is a legitimate expiry, not a theft: that round
    // is tried again (three times at most).
    let lock_key = format!("{base}/lock");
    let wait = ttl * 2 + caps.ttl_precision;
    let mut stolen = 0;
    let mut expired_under_load = 0;
    for skew in [SKEW, -SKEW] {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let key = format!("{lock_key}-{skew:+}-{attempt}");
            let mut lock = store
                .new_lock(&key, LockOptions::default().value("holder").ttl(ttl))
                .await
                .unwrap_or_else(|e| panic!("new_lock: {e}"));
            let lease = timeout(EVENT_TIMEOUT, lock.lock())
                .await
                .unwrap_or_else(|_| panic!("{}: a free lock was not granted", target.name()))
                .unwrap_or_else(|e| panic!("lock: {e}"));
            let child = skewed_child(
                target,
                "try-lock",
                &key,
                ttl,
                skew,
                &[(WAIT_VAR, wait.as_millis().to_string())],
            )
            .await;
            let outcome = child.expect("try-lock ", wait + EVENT_TIMEOUT).await;
            if outcome == "busy" {
                assert!(
                    lease.is_held(),
                    "{}: the holder lost its lock while nobody took it",
                    target.name()
                );
                lock.unlock()
                    .await
                    .unwrap_or_else(|e| panic!("unlock: {e}"));
                break;
            }
            if lease.is_held() {
                stolen += 1;
            }
            assert_eq!(
                stolen,
                0,
                "{}: a client with its clock {skew:+} s off took a lock held (and renewed) by another ({outcome})",
                target.name()
            );
            expired_under_load += 1;
            assert!(
                attempt < 3,
                "{}: the holder's renewals did not get through within the TTL {ttl:?} in three tries",
                target.name()
            );
            drop(child);
            let _ = lock.unlock().await;
        }
    }

    // 2. A TTL key just written is live for a client 30 s ahead...
    let key_ttl = caps.min_ttl.max(Duration::from_secs(6));
    let ttl_key = format!("{base}/ttl");
    store
        .put(&ttl_key, "v".into(), WriteOptions::with_ttl(key_ttl))
        .await
        .unwrap_or_else(|e| panic!("put: {e}"));
    let written = Instant::now();
    let ahead = skewed_child(target, "read", &ttl_key, ttl, SKEW, &[]).await;
    let seen_ahead = ahead.expect("read ", EVENT_TIMEOUT).await;
    let read_at = written.elapsed();
    if read_at < key_ttl {
        assert_eq!(
            seen_ahead,
            "present",
            "{}: a client with its clock {SKEW:+} s off saw a live TTL key ({key_ttl:?}, read {read_at:?} after the write) as expired",
            target.name()
        );
    }
    // ...and gone, once expired, for a client 30 s behind.
    let gone_by = key_ttl + caps.ttl_precision + SLACK;
    if written.elapsed() < gone_by {
        sleep(gone_by - written.elapsed()).await;
    }
    let behind = skewed_child(target, "read", &ttl_key, ttl, -SKEW, &[]).await;
    let seen_behind = behind.expect("read ", EVENT_TIMEOUT).await;
    assert_eq!(
        seen_behind,
        "absent",
        "{}: a client with its clock {} s off still saw a TTL key ({key_ttl:?}) {:?} after it was written",
        target.name(),
        -SKEW,
        written.elapsed()
    );
    drop((ahead, behind));
    let _ = store.close().await;
    report
        .add("applicable", "yes")
        .add("skew_s", format!("±{SKEW}"))
        .add("locks_stolen", stolen)
        .add("holder_expired_under_load", expired_under_load)
        .add("live_key_seen_expired", 0)
        .add("expired_key_seen_live", 0);
    report.emit();
    report
}
