//! The server itself dies: SIGKILL of a private server under live clients (writes acknowledged,
//! a lock held, a guarded write, a watch open), calls during the outage, then the server
//! started again with its data or from empty.

use std::sync::Arc;
use std::time::Duration;

use kv_core::{
    Error, KvPair, LockOptions, LockState, ReadOptions, Store, Transaction, WriteOptions,
};
use kv_test_support::server::PrivateServer;
use tokio::time::{Instant, sleep, timeout};

use crate::Target;
use crate::observe::{Seen, WatchEnd, WatchLog, recover as recover_within};
use crate::report::Report;

/// How long the server stays dead.
const OUTAGE: Duration = Duration::from_secs(2);
/// How long a restarted server may take until a client's `get` succeeds again (JVM start,
/// Consul's leader election, client back-off).
const RECOVERY_LIMIT: Duration = Duration::from_secs(60);
/// How long a watch may take to report a change after recovery.
const EVENT_TIMEOUT: Duration = Duration::from_secs(15);
/// Extra time on top of a call's own timeout, a TTL and its precision.
const SLACK: Duration = Duration::from_millis(2500);

/// Which outage writes ended in `Timeout` (their outcome is unknown).
#[derive(Default)]
struct Unknown {
    put: bool,
    cas: bool,
    txn: bool,
}

fn value(pair: &Option<KvPair>) -> Option<&[u8]> {
    pair.as_ref().map(|p| p.value.as_ref())
}

/// Kills the server (SIGKILL) under live clients and starts it again, `keep_data` or from an
/// empty data directory. Checked:
///
/// * during the outage every call fails with a transient error ([`Error::Unavailable`] /
///   [`Error::Timeout`]) within the configured request timeout plus slack — never `Ok` (a
///   dead server cannot confirm anything), never a hang, never a panic;
/// * the clients recover by themselves once the server is back (figure: recovery time);
/// * with its data: every acknowledged write is there, with the `last_index` a CAS can use;
/// * the lock: a contender gets it only after the old holder's lease stopped saying `Held`;
///   its token is above the old one when the data survived (a data loss may restart the
///   server's counters: reported as `token_reset`); the old holder's guarded write is refused
///   either way;
/// * the watch: after recovery it reaches the new state or ends with an `Err`; it never
///   stays silent, and with the data kept its states never go backwards.
///
/// `request_timeout` is what the target's handles were configured with.
pub async fn server_restart(
    target: &dyn Target,
    server: &mut PrivateServer,
    keep_data: bool,
    request_timeout: Duration,
) -> Report {
    let name = target.name();
    let scenario = if keep_data {
        "server_restart_with_data"
    } else {
        "server_restart_without_data"
    };
    // The first handle waits for the fresh server to answer; the others then connect at once.
    let writer = wait_until_ready(name, connect_when_up(target).await).await;
    let connect = || async {
        target
            .connect()
            .await
            .unwrap_or_else(|e| panic!("{name}: cannot connect to the private server: {e}"))
    };
    let holder = connect().await;
    let watcher = connect().await;
    let contender = connect().await;
    let dir = "restart";
    let key = |i: usize| format!("{dir}/k{i}");
    let (cas_key, lock_key, fenced_key) = (
        format!("{dir}/cas"),
        format!("{dir}/lock"),
        format!("{dir}/fenced"),
    );

    // Before: acknowledged writes, a CAS chain, a held lock with a guarded write, a watch.
    for i in 0..5 {
        writer
            .put(
                &key(i),
                format!("before-{i}").into(),
                WriteOptions::default(),
            )
            .await
            .unwrap_or_else(|e| panic!("{name}: put before the kill: {e}"));
    }
    // Raise the watched key's index well above what a server restarted from empty reaches in
    // this scenario, so that a history restarting low shows as indexes going backwards.
    for round in 0..40 {
        writer
            .put(
                &key(0),
                format!("warm-up {round}").into(),
                WriteOptions::default(),
            )
            .await
            .unwrap_or_else(|e| panic!("{name}: put before the kill: {e}"));
    }
    writer
        .put(&key(0), "before-0".into(), WriteOptions::default())
        .await
        .unwrap_or_else(|e| panic!("{name}: put before the kill: {e}"));
    let mut acked = writer
        .atomic_put(&cas_key, "0".into(), None, WriteOptions::default())
        .await
        .unwrap_or_else(|e| panic!("{name}: create before the kill: {e}"));
    for n in 1..=2 {
        acked = writer
            .atomic_put(
                &cas_key,
                n.to_string().into(),
                Some(&acked),
                WriteOptions::default(),
            )
            .await
            .unwrap_or_else(|e| panic!("{name}: CAS before the kill: {e}"));
    }
    let caps = holder.capabilities().clone();
    let ttl = caps.min_ttl.max(Duration::from_secs(2));
    let mut lock = holder
        .new_lock(&lock_key, LockOptions::default().value("first").ttl(ttl))
        .await
        .unwrap_or_else(|e| panic!("{name}: new_lock: {e}"));
    let lease = lock
        .lock()
        .await
        .unwrap_or_else(|e| panic!("{name}: lock before the kill: {e}"));
    let token_before = lease.fencing_token();
    if caps.transactions {
        lease
            .guarded_put(
                &*holder,
                &fenced_key,
                "first holder",
                WriteOptions::default(),
            )
            .await
            .unwrap_or_else(|e| panic!("{name}: guarded write before the kill: {e}"));
    }
    let stream = watcher
        .watch(&key(0), ReadOptions::default())
        .await
        .unwrap_or_else(|e| panic!("{name}: watch: {e}"));
    let (watch_log, watch_task) = WatchLog::follow(stream);
    assert_eq!(
        watch_log
            .wait_for(EVENT_TIMEOUT, |s| value(s) == Some(b"before-0"))
            .await,
        WatchEnd::Reached,
        "{name}: the watch's first state"
    );

    // The server dies; calls during the outage fail, transiently and in bounded time.
    server.kill();
    let killed = Instant::now();
    let call_bound = request_timeout + SLACK;
    let mut outage_calls = 0;
    let mut longest_failure = Duration::ZERO;
    // Writes cut off by `Timeout` may or may not take effect (the contract); the ones refused
    // as `Unavailable` must never show up later.
    let mut unknown = Unknown::default();
    while killed.elapsed() < OUTAGE || outage_calls < 6 {
        let started = Instant::now();
        let (what, outcome): (&str, kv_core::Result<()>) = match outage_calls % 6 {
            0 => (
                "get",
                writer
                    .get(&key(1), ReadOptions::default())
                    .await
                    .map(|_| ()),
            ),
            1 => (
                "put",
                writer
                    .put(&key(1), "during the outage".into(), WriteOptions::default())
                    .await,
            ),
            2 => (
                "list",
                writer.list(dir, ReadOptions::default()).await.map(|_| ()),
            ),
            3 => (
                "delete_tree",
                writer.delete_tree(&format!("{dir}/nothing")).await,
            ),
            4 => (
                "atomic_put",
                writer
                    .atomic_put(&cas_key, "x".into(), Some(&acked), WriteOptions::default())
                    .await
                    .map(|_| ()),
            ),
            _ => (
                "transaction",
                if caps.transactions {
                    writer
                        .transaction(Transaction::new().delete(key(2)))
                        .await
                        .map(|_| ())
                } else {
                    writer
                        .exists(&key(2), ReadOptions::default())
                        .await
                        .map(|_| ())
                },
            ),
        };
        let took = started.elapsed();
        if matches!(outcome, Err(Error::Timeout { .. })) {
            match what {
                "put" => unknown.put = true,
                "atomic_put" => unknown.cas = true,
                "transaction" => unknown.txn = true,
                _ => {}
            }
        }
        match outcome {
            Err(e) if e.is_transient() => {}
            Err(e) => {
                panic!("{name}: {what} during the outage failed with a non-transient error: {e:?}")
            }
            Ok(()) => panic!("{name}: {what} succeeded while the server was dead"),
        }
        assert!(
            took <= call_bound,
            "{name}: {what} during the outage took {took:?}, more than the request timeout {request_timeout:?} + {SLACK:?}"
        );
        longest_failure = longest_failure.max(took);
        outage_calls += 1;
    }

    // The server comes back; the clients must recover by themselves.
    server.start_again(keep_data);
    let restarted = Instant::now();
    let (writer, reconnected) = match recover(&writer).await {
        Ok(()) => (writer, false),
        // Only a server that lost its data may leave a handle unable to go on (DynamoDB
        // Local's table is gone): then a new handle must work, and the old ones must still
        // fail cleanly below (lock lost, watch ended).
        Err(error) if !keep_data && !error.is_transient() => {
            let fresh = wait_until_ready(name, connect_when_up(target).await).await;
            (fresh, true)
        }
        Err(error) => panic!(
            "{name}: the store did not recover within {RECOVERY_LIMIT:?} of the server restarting: {error:?}"
        ),
    };
    let recovery = restarted.elapsed();

    let mut report = Report::new(name, scenario);
    report
        .add("outage_calls", outage_calls)
        .add("outage_longest_failure_ms", longest_failure.as_millis())
        .add("recovery_ms", recovery.as_millis())
        .add("new_handle_needed", reconnected);

    if keep_data {
        let mut lost = 0;
        let mut late = 0;
        for i in 0..5 {
            let got = writer.get(&key(i), ReadOptions::default()).await.unwrap();
            let late_write = match i {
                1 if unknown.put => Some(&b"during the outage"[..]),
                _ => None,
            };
            match value(&got) {
                Some(v) if v == format!("before-{i}").as_bytes() => {}
                None if i == 2 && unknown.txn => late += 1,
                Some(v) if Some(v) == late_write => late += 1,
                other => {
                    lost += 1;
                    eprintln!(
                        "{name}: k{i} after the restart: {:?}",
                        other.map(String::from_utf8_lossy)
                    );
                }
            }
        }
        let cas = writer
            .get(&cas_key, ReadOptions::default())
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("{name}: the acknowledged CAS chain is gone"));
        if cas != acked {
            assert!(
                unknown.cas && cas.value == "x",
                "{name}: the CAS key after the restart is {cas:?}, neither the acknowledged {acked:?} nor a CAS that timed out during the outage"
            );
            late += 1;
        } else {
            writer
                .atomic_put(&cas_key, "3".into(), Some(&acked), WriteOptions::default())
                .await
                .unwrap_or_else(|e| panic!("{name}: CAS with the pre-restart pair: {e}"));
        }
        assert_eq!(
            lost, 0,
            "{name}: {lost} acknowledged writes lost, or writes refused as Unavailable applied later, in a restart with data"
        );
        report
            .add("acknowledged_lost", lost)
            .add("timed_out_writes_applied_later", late);
    } else {
        let gone = writer.get(&key(1), ReadOptions::default()).await.unwrap();
        assert!(
            gone.is_none(),
            "{name}: the data survived a restart from an empty directory: {gone:?}"
        );
    }

    // The lock: a contender may only get it once the old lease no longer says Held.
    let bound = ttl + caps.ttl_precision + SLACK;
    let mut contender_lock = contender
        .new_lock(&lock_key, LockOptions::default().value("second").ttl(ttl))
        .await
        .unwrap();
    let wait_started = Instant::now();
    let (new_lease, holder_outcome) =
        match timeout(bound + EVENT_TIMEOUT, contender_lock.lock()).await {
            Ok(Ok(new_lease)) => {
                let old_state = lease.state();
                assert_ne!(
                    old_state,
                    LockState::Held,
                    "{name}: a contender got the lock while the old holder's lease still says Held"
                );
                (new_lease, "lost")
            }
            Ok(Err(e)) => panic!("{name}: the contender's lock failed: {e}"),
            Err(_) => {
                // Still held: legitimate only if the old holder really holds it on the server.
                assert!(
                    keep_data && lease.is_held(),
                    "{name}: the lock is neither free nor held after the restart (lease {:?})",
                    lease.state()
                );
                let on_server = writer
                    .get(&lock_key, ReadOptions::default())
                    .await
                    .unwrap()
                    .unwrap_or_else(|| panic!("{name}: held lease, but no lock key on the server"));
                assert_eq!(
                    on_server.last_index, token_before,
                    "{name}: the held lock's key"
                );
                lock.unlock()
                    .await
                    .unwrap_or_else(|e| panic!("{name}: unlock of the surviving lock: {e}"));
                let new_lease = timeout(EVENT_TIMEOUT, contender_lock.lock())
                    .await
                    .unwrap_or_else(|_| panic!("{name}: the lock is not free after unlock"))
                    .unwrap_or_else(|e| panic!("{name}: lock after unlock: {e}"));
                (new_lease, "kept")
            }
        };
    let reacquire = wait_started.elapsed();
    let token_after = new_lease.fencing_token();
    if keep_data {
        assert!(
            token_after > token_before,
            "{name}: fencing token {token_after} after a restart with data, not above {token_before}"
        );
    }
    if caps.transactions {
        let refused = lease
            .guarded_put(
                &*holder,
                &fenced_key,
                "stale holder",
                WriteOptions::default(),
            )
            .await;
        assert!(
            matches!(refused, Err(Error::LockLost { .. })),
            "{name}: the old holder's guarded write after the restart: {refused:?} (tokens {token_before} → {token_after})"
        );
        new_lease
            .guarded_put(
                &*contender,
                &fenced_key,
                "second holder",
                WriteOptions::default(),
            )
            .await
            .unwrap_or_else(|e| panic!("{name}: the new holder's guarded write: {e}"));
    }
    report
        .add("holder_after_restart", holder_outcome)
        .add("reacquire_ms", reacquire.as_millis())
        .add("token_before", token_before)
        .add("token_after", token_after)
        .add("token_reset", token_after <= token_before);

    // The watch: reaches the new state or ends with an error; never silent.
    writer
        .put(&key(0), "after".into(), WriteOptions::default())
        .await
        .unwrap();
    let end = watch_log
        .wait_for(EVENT_TIMEOUT, |s| value(s) == Some(b"after"))
        .await;
    let watch_outcome = match &end {
        WatchEnd::Reached => "continued",
        WatchEnd::Failed(_) => "ended_with_error",
        WatchEnd::Silent => panic!(
            "{name}: the watch stayed silent after the restart: {:?}",
            watch_log.items()
        ),
    };
    // A watch that goes on must never report an older index than before, data or no data:
    // one whose server restarted its counters has to end with an `Err` instead.
    if watch_log.ended_with_error().is_none() {
        let indexes: Vec<u64> = watch_log
            .items()
            .into_iter()
            .filter_map(|(_, seen)| match seen {
                Seen::State(Some(pair)) => Some(pair.last_index),
                _ => None,
            })
            .collect();
        assert!(
            indexes.windows(2).all(|w| w[0] <= w[1]),
            "{name}: the watch went on with indexes going backwards (the server lost its data, the watch must end with an Err): {indexes:?}"
        );
    }
    report.add("watch", watch_outcome);
    watch_task.abort();
    let _ = contender_lock.unlock().await;
    for store in [&writer, &holder, &watcher, &contender] {
        let _ = store.close().await;
    }
    report.emit();
    report
}

/// Connects once the fresh server accepts clients.
async fn connect_when_up(target: &dyn Target) -> Arc<dyn Store> {
    let started = Instant::now();
    loop {
        match target.connect().await {
            Ok(store) => return store,
            Err(_) if started.elapsed() < RECOVERY_LIMIT => {
                sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!(
                "{}: cannot connect to the private server within {RECOVERY_LIMIT:?}: {e}",
                target.name()
            ),
        }
    }
}

/// Retries a cheap read until it succeeds (transient errors only) or fails for good.
async fn recover(store: &Arc<dyn Store>) -> kv_core::Result<()> {
    recover_within(store, RECOVERY_LIMIT).await
}

/// [`recover`], or the scenario fails.
async fn wait_until_ready(name: &str, store: Arc<dyn Store>) -> Arc<dyn Store> {
    if let Err(error) = recover(&store).await {
        panic!("{name}: the store does not answer: {error:?}");
    }
    store
}
