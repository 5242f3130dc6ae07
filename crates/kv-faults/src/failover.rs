//! A member of a real multi-node cluster dies (SIGKILL) or freezes (SIGSTOP) — its leader, or
//! the member a client is connected to — while clients run CAS increments, hold a lock against
//! a contender, watch a key and a subtree, and keep a TTL key. The clusters are the ones
//! `scripts/servers up --cluster` starts, driven through [`kv_test_support::cluster::Cluster`].

use std::sync::{Arc, Mutex};
use std::time::Duration;

use kv_core::{
    Error, KvPair, Lock, LockLease, LockOptions, LockState, ReadOptions, Store, WriteOptions,
};
use kv_test_support::cluster::Cluster;
use rand::Rng;
use tokio::sync::watch;
use tokio::time::{Instant, sleep, timeout};

use crate::Target;
use crate::observe::{Seen, WatchEnd, WatchLog, recover};
use crate::report::Report;

/// What happens to the member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    /// SIGKILL; the member is restarted with its data once the clients have recovered.
    Kill,
    /// SIGSTOP; continued (SIGCONT) once the clients have recovered, or after
    /// [`PAUSE_LIMIT`] if they recover only when it is back.
    Pause,
}

/// Which member.
#[derive(Clone)]
pub enum Victim {
    /// Whoever leads the cluster when the fault starts (`scripts/servers leader`).
    Leader,
    /// The leader of one slot or stream (`scripts/servers leader NAME WHAT`).
    LeaderOf(String),
    /// A named member (the one the clients are connected to).
    Member(String),
    /// The member this function names when the fault starts, once the scenario's handles are
    /// connected (blocking; e.g. the member serving most of their connections).
    Find(Arc<dyn Fn() -> String + Send + Sync>),
}

impl std::fmt::Debug for Victim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Victim::Leader => f.write_str("Leader"),
            Victim::LeaderOf(what) => write!(f, "LeaderOf({what})"),
            Victim::Member(member) => write!(f, "Member({member})"),
            Victim::Find(_) => f.write_str("Find(..)"),
        }
    }
}

/// One fault: what happens, to whom, and the scenario's name in reports.
#[derive(Debug, Clone)]
pub struct Fault {
    /// Kill or pause.
    pub kind: FaultKind,
    /// The member it hits.
    pub victim: Victim,
    /// The scenario's name in reports (`kill_leader`, `pause_leader`, `kill_client_member`).
    pub label: &'static str,
}

/// How long a paused member stays frozen at most while waiting for the clients to recover.
pub const PAUSE_LIMIT: Duration = Duration::from_secs(15);
/// How long the clients may take to succeed again after the fault.
const RECOVERY_LIMIT: Duration = Duration::from_secs(45);
/// Extra time on top of a call's own timeout, a TTL and its precision.
const SLACK: Duration = Duration::from_millis(2500);
/// How long a watch may take to report the final state.
const EVENT_TIMEOUT: Duration = Duration::from_secs(15);
/// Healthy operation before the fault and after the member is back.
const STEADY: Duration = Duration::from_millis(1500);
/// How long one attempt of the contender's `lock()` may wait.
const CONTEND: Duration = Duration::from_millis(800);

/// Undoes a fault when dropped: resumes a paused member, restarts a killed one — also when
/// the scenario fails half-way, so that the next scenario finds a whole cluster.
pub struct FaultGuard {
    cluster: Cluster,
    member: String,
    kind: FaultKind,
    active: bool,
}

impl FaultGuard {
    /// Applies `kind` to `member` (blocking: it runs `scripts/servers`).
    pub fn apply(cluster: Cluster, member: &str, kind: FaultKind) -> FaultGuard {
        match kind {
            FaultKind::Kill => cluster.kill(member),
            FaultKind::Pause => cluster.pause(member),
        }
        FaultGuard {
            cluster,
            member: member.to_owned(),
            kind,
            active: true,
        }
    }

    /// Brings the member back now (blocking). A failed restart is tried once more after a
    /// pause (a member that just died may still hold its port or files a moment).
    pub fn undo(&mut self) {
        if std::mem::take(&mut self.active) {
            match self.kind {
                FaultKind::Kill => {
                    let first = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        self.cluster.restart(&self.member)
                    }));
                    if first.is_err() {
                        std::thread::sleep(Duration::from_secs(2));
                        self.cluster.restart(&self.member);
                    }
                }
                FaultKind::Pause => self.cluster.resume(&self.member),
            }
        }
    }
}

impl Drop for FaultGuard {
    fn drop(&mut self) {
        // A second panic while unwinding would abort the test binary: report it instead.
        let undone = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.undo()));
        if undone.is_err() {
            eprintln!(
                "could not bring {} member {} back after the scenario",
                self.cluster.name(),
                self.member
            );
        }
    }
}

/// One call of the CAS client, as recorded.
#[derive(Debug, Clone)]
struct Call {
    started: Instant,
    took: Duration,
    outcome: Outcome,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    Acked,
    /// A CAS refused because the value moved (a write of unknown outcome landed).
    Conflict,
    /// A write that failed transiently: it may or may not have taken effect.
    UnknownWrite,
    /// A read that failed transiently.
    Transient,
    Failed(String),
}

/// The lock's acquisitions, by both parties, in order.
#[derive(Default)]
struct LockBook {
    acquisitions: Vec<(Instant, &'static str, u64)>,
    overlaps: Vec<String>,
    errors: Vec<String>,
    /// Lock errors that are neither transient nor `LockLost`.
    fatal: Vec<String>,
    holder_losses: usize,
}

/// Kills or pauses one member of `cluster` under live clients of `target`, then brings it back.
/// Checked:
///
/// * every call that fails fails with `Unavailable`/`Timeout` within
///   `request_timeout` + 2.5 s, and the same handle succeeds again (figure: recovery, from the
///   fault to the first acknowledged CAS started after it);
/// * the CAS counter ends equal to the acknowledged increments, plus at most the increments
///   whose outcome was unknown (`Timeout`/`Unavailable`); with `durable == false` (Redis without `WAIT`) an
///   acknowledged increment lost in the failover is measured and reported instead of failing;
/// * the lock, held by one handle and wanted by a contender: whoever acquires it finds the
///   other's lease not `Held` (the holder's `lost()` fired first), and fencing tokens strictly
///   rise over all acquisitions; with `durable == false` a lock acquisition, an acknowledged
///   write like the increments, may be lost too: two holders and falling tokens are counted
///   and reported instead;
/// * a watch on the counter and a `watch_tree` on its directory reach the final value, or end
///   with an `Err` — never silent;
/// * a TTL key written before the fault is gone within its TTL + precision + slack, counted
///   from the write or, when the fault kept the store from answering, from the recovery.
pub async fn failover(
    target: &dyn Target,
    cluster: Cluster,
    fault: Fault,
    request_timeout: Duration,
    durable: bool,
) -> Report {
    let name = cluster.name();
    let connect = || async {
        let store = target
            .connect()
            .await
            .unwrap_or_else(|e| panic!("{name}: cannot connect: {e}"));
        if let Err(e) = recover(&store, RECOVERY_LIMIT).await {
            panic!("{name}: the cluster does not answer: {e:?}");
        }
        store
    };
    let writer = connect().await;
    let holder = connect().await;
    let contender = connect().await;
    let watcher = connect().await;
    let dir = format!("failover-{:08x}", rand::rng().random::<u32>());
    let counter = format!("{dir}/counter");
    let lock_key = format!("{dir}-lock");
    let ttl_key = format!("{dir}-ttl");
    let caps = writer.capabilities().clone();

    // Before: the counter, a TTL key, watches, the lock taken.
    writer
        .atomic_put(&counter, "0".into(), None, WriteOptions::default())
        .await
        .unwrap_or_else(|e| panic!("{name}: create the counter: {e}"));
    let ttl = caps.min_ttl.max(Duration::from_secs(3));
    let ttl_written = Instant::now();
    if caps.ttl {
        writer
            .put(&ttl_key, "expires".into(), WriteOptions::with_ttl(ttl))
            .await
            .unwrap_or_else(|e| panic!("{name}: put with TTL: {e}"));
    }
    let key_stream = watcher
        .watch(&counter, ReadOptions::default())
        .await
        .unwrap_or_else(|e| panic!("{name}: watch: {e}"));
    let (key_log, key_task) = WatchLog::follow(key_stream);
    let tree_stream = watcher
        .watch_tree(&dir, ReadOptions::default())
        .await
        .unwrap_or_else(|e| panic!("{name}: watch_tree: {e}"));
    let (tree_log, tree_task) = WatchLog::follow(tree_stream);
    let is_zero = |p: &Option<KvPair>| p.as_ref().is_some_and(|p| p.value == "0");
    assert_eq!(
        key_log.wait_for(EVENT_TIMEOUT, is_zero).await,
        WatchEnd::Reached,
        "{name}: the watch's first state"
    );

    let (stop_tx, stop_rx) = watch::channel(false);
    let calls: Arc<Mutex<Vec<Call>>> = Arc::default();
    let cas_task = tokio::spawn(increment(
        writer.clone(),
        counter.clone(),
        calls.clone(),
        stop_rx.clone(),
    ));
    let book: Arc<Mutex<LockBook>> = Arc::default();
    let holder_lease: Arc<Mutex<Option<LockLease>>> = Arc::default();
    let contender_lease: Arc<Mutex<Option<LockLease>>> = Arc::default();
    let lock_ttl = caps.min_ttl.max(Duration::from_secs(3));
    let holder_task = tokio::spawn(hold(
        holder.clone(),
        lock_key.clone(),
        lock_ttl,
        Party {
            name: "holder",
            mine: holder_lease.clone(),
            other: contender_lease.clone(),
            book: book.clone(),
            stop: stop_rx.clone(),
        },
    ));
    let contender_task = tokio::spawn(contend(
        contender.clone(),
        lock_key.clone(),
        lock_ttl,
        Party {
            name: "contender",
            mine: contender_lease.clone(),
            other: holder_lease.clone(),
            book: book.clone(),
            stop: stop_rx.clone(),
        },
    ));
    sleep(STEADY).await;

    // The fault.
    let victim = fault.victim.clone();
    let (member, mut guard) = tokio::task::spawn_blocking(move || {
        let member = match victim {
            Victim::Leader => cluster.leader(),
            Victim::LeaderOf(what) => cluster.leader_of(&what),
            Victim::Member(member) => member,
            Victim::Find(find) => find(),
        };
        let guard = FaultGuard::apply(cluster, &member, fault.kind);
        (member, guard)
    })
    .await
    .expect("scripts/servers");
    let faulted = Instant::now();
    eprintln!("{name}: {} member {member}", fault.label);

    // Wait for the clients to recover: without the member when it is dead, and while it is
    // frozen up to PAUSE_LIMIT (after that it is continued and the clients must recover then).
    let recovered_at = |calls: &[Call]| {
        calls
            .iter()
            .find(|c| c.started >= faulted && c.outcome == Outcome::Acked)
            .map(|c| c.started + c.took)
    };
    let first_limit = match fault.kind {
        FaultKind::Kill => RECOVERY_LIMIT,
        FaultKind::Pause => PAUSE_LIMIT,
    };
    let mut recovered = None;
    while recovered.is_none() && faulted.elapsed() < first_limit {
        sleep(Duration::from_millis(50)).await;
        recovered = recovered_at(&calls.lock().unwrap_or_else(|e| e.into_inner()));
    }
    let recovered_while_down = recovered.is_some();
    if fault.kind == FaultKind::Kill && recovered_while_down {
        // Some healthy operation without the member before it comes back.
        sleep(STEADY).await;
    }
    // Bring the member back (the Drop would, too, but the run goes on with it back).
    let mut guard = tokio::task::spawn_blocking(move || {
        guard.undo();
        guard
    })
    .await
    .expect("scripts/servers");
    let back = Instant::now();
    while recovered.is_none() && back.elapsed() < RECOVERY_LIMIT {
        sleep(Duration::from_millis(50)).await;
        recovered = recovered_at(&calls.lock().unwrap_or_else(|e| e.into_inner()));
    }
    let Some(recovered) = recovered else {
        let calls = calls.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let failures: Vec<_> = calls.iter().filter(|c| c.started >= faulted).collect();
        panic!(
            "{name}: no CAS acknowledged within {:?} of the fault and {RECOVERY_LIMIT:?} of the member coming back; calls since the fault: {:?}",
            first_limit,
            failures.iter().rev().take(5).collect::<Vec<_>>()
        );
    };
    let recovery = recovered - faulted;
    sleep(STEADY).await;
    stop_tx.send_replace(true);
    let acked_by_task = cas_task.await.expect("the CAS task");
    let bound = Duration::from_secs(20);
    for (task, what) in [(holder_task, "holder"), (contender_task, "contender")] {
        timeout(bound, task)
            .await
            .unwrap_or_else(|_| panic!("{name}: the lock's {what} did not stop within {bound:?}"))
            .unwrap_or_else(|e| panic!("{name}: the lock's {what} task: {e}"));
    }

    let mut report = Report::new(name, fault.label);
    report
        .add("member", &member)
        .add("recovery_ms", recovery.as_millis())
        .add("recovered_while_down", recovered_while_down);

    // Calls: failures transient and bounded.
    let calls = calls.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let call_bound = request_timeout + SLACK;
    let mut failed = 0;
    let mut slowest = Duration::ZERO;
    let mut unknown = 0;
    for call in &calls {
        match &call.outcome {
            Outcome::Acked | Outcome::Conflict => continue,
            Outcome::Failed(error) => {
                panic!("{name}: a call failed with a non-transient error: {error}")
            }
            Outcome::UnknownWrite => unknown += 1,
            Outcome::Transient => {}
        }
        failed += 1;
        slowest = slowest.max(call.took);
        assert!(
            call.took <= call_bound,
            "{name}: a call failing after the fault took {:?}, more than the request timeout {request_timeout:?} + {SLACK:?}",
            call.took
        );
    }
    report
        .add("failed_calls", failed)
        .add("slowest_failure_ms", slowest.as_millis());

    // The counter on the same handle.
    let last = writer
        .get(&counter, ReadOptions::default())
        .await
        .unwrap_or_else(|e| panic!("{name}: read the counter on the same handle: {e}"))
        .unwrap_or_else(|| panic!("{name}: the counter is gone"));
    let value: u64 = std::str::from_utf8(&last.value)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{name}: the counter holds {:?}", last.value));
    let lost = acked_by_task.saturating_sub(value);
    let extra = value.saturating_sub(acked_by_task);
    report
        .add("acknowledged", acked_by_task)
        .add("unknown_outcome", unknown)
        .add("counter", value)
        .add("lost", lost)
        .add("unknown_applied", extra.min(unknown));
    if durable {
        assert_eq!(
            lost, 0,
            "{name}: {lost} acknowledged increments lost (counter {value}, acknowledged {acked_by_task})"
        );
    }
    assert!(
        extra <= unknown,
        "{name}: the counter is {value}, above the {acked_by_task} acknowledged increments plus the {unknown} of unknown outcome: an increment applied twice"
    );

    // The lock.
    let book = std::mem::take(&mut *book.lock().unwrap_or_else(|e| e.into_inner()));
    assert!(
        book.fatal.is_empty(),
        "{name}: lock calls failed with non-transient errors: {:?}",
        book.fatal
    );
    let tokens: Vec<u64> = book.acquisitions.iter().map(|(_, _, t)| *t).collect();
    let token_falls = tokens.windows(2).filter(|w| w[0] >= w[1]).count();
    // An acquisition is an acknowledged write: where those may be lost (Redis without
    // `WAIT`), so may the lock. A frozen primary that resumes runs the commands queued on
    // it, a lock acquisition among them, before Sentinel demotes it, while the new primary
    // grants the same lock: measured there, never allowed where writes are durable.
    report
        .add("lock_overlaps", book.overlaps.len())
        .add("token_falls", token_falls);
    if durable {
        assert!(
            book.overlaps.is_empty(),
            "{name}: two holders at once: {:?}",
            book.overlaps
        );
        assert_eq!(
            token_falls,
            0,
            "{name}: fencing tokens not strictly rising over the acquisitions {:?}",
            book.acquisitions
                .iter()
                .map(|(at, who, t)| (at.saturating_duration_since(faulted), *who, *t))
                .collect::<Vec<_>>()
        );
    } else if !book.overlaps.is_empty() {
        eprintln!(
            "{name}: two holders at once (not durable: measured): {:?}",
            book.overlaps
        );
    }
    assert!(
        !book.acquisitions.is_empty(),
        "{name}: nobody ever got the lock"
    );
    let takeovers = book
        .acquisitions
        .iter()
        .filter(|(_, who, _)| *who == "contender")
        .count();
    report
        .add("lock_acquisitions", book.acquisitions.len())
        .add("holder_lost", book.holder_losses)
        .add("contender_took_over", takeovers)
        .add("lock_errors", book.errors.len())
        .add("token_first", tokens.first().copied().unwrap_or(0))
        .add("token_last", tokens.last().copied().unwrap_or(0));

    // The watches: the final value, or an Err; never silent.
    let final_value = last.value.clone();
    let key_end = key_log
        .wait_for(EVENT_TIMEOUT, |p| {
            p.as_ref().is_some_and(|p| p.value == final_value)
        })
        .await;
    let tree_end = tree_log
        .wait_for(EVENT_TIMEOUT, |pairs| {
            pairs.iter().any(|p| p.value == final_value)
        })
        .await;
    let seen = |items: Vec<(Instant, String)>| {
        let last: Vec<_> = items
            .iter()
            .rev()
            .take(2)
            .map(|(at, item)| (at.checked_duration_since(faulted), item.clone()))
            .collect();
        format!(
            "{} items, the last ones (time since the fault, item): {last:?}",
            items.len()
        )
    };
    let key_seen = seen(key_log.described());
    let tree_seen = seen(tree_log.described());
    for (end, what, items) in [
        (&key_end, "watch", key_seen),
        (&tree_end, "watch_tree", tree_seen),
    ] {
        assert_ne!(
            *end,
            WatchEnd::Silent,
            "{name}: the {what} stayed silent after the failover (the counter is {value}); {items}"
        );
    }
    let outcome = |end: &WatchEnd| match end {
        WatchEnd::Reached => "continued",
        _ => "ended_with_error",
    };
    report
        .add("watch", outcome(&key_end))
        .add("watch_tree", outcome(&tree_end));
    // The counter only grows: a watch that shows it going down reports a history that was
    // rolled back (an acknowledged write lost) or states out of order.
    let counts: Vec<u64> = key_log
        .items()
        .into_iter()
        .filter_map(|(_, seen)| match seen {
            Seen::State(Some(pair)) => std::str::from_utf8(&pair.value).ok()?.parse().ok(),
            _ => None,
        })
        .collect();
    let backwards = counts.windows(2).filter(|w| w[1] < w[0]).count();
    report.add("watch_backwards", backwards);
    if durable {
        assert_eq!(
            backwards, 0,
            "{name}: the watch saw the counter go down {backwards} times"
        );
    }
    key_task.abort();
    tree_task.abort();

    // The TTL key: gone on time, counted from the write or from the recovery.
    if caps.ttl {
        let deadline = ttl_written.max(recovered) + ttl + caps.ttl_precision + SLACK;
        let gone_at = loop {
            match writer.get(&ttl_key, ReadOptions::default()).await {
                Ok(None) => break Instant::now(),
                Ok(Some(_)) if Instant::now() < deadline => {}
                Ok(Some(_)) => panic!(
                    "{name}: the TTL key ({ttl:?}) still exists {:?} after its write ({:?} after the recovery)",
                    ttl_written.elapsed(),
                    recovered.elapsed()
                ),
                Err(e) => panic!("{name}: read the TTL key: {e}"),
            }
            sleep(Duration::from_millis(100)).await;
        };
        report.add(
            "ttl_gone_after_ms",
            gone_at.duration_since(ttl_written).as_millis(),
        );
    }

    guard.undo();
    for store in [&writer, &holder, &contender, &watcher] {
        let _ = store.close().await;
    }
    report.emit();
    report
}

/// The CAS client: read, increment, compare-and-swap, until stopped. Returns how many
/// increments were acknowledged.
async fn increment(
    store: Arc<dyn Store>,
    key: String,
    calls: Arc<Mutex<Vec<Call>>>,
    mut stop: watch::Receiver<bool>,
) -> u64 {
    let mut acked = 0;
    let record = |started: Instant, outcome: Outcome| {
        calls.lock().unwrap_or_else(|e| e.into_inner()).push(Call {
            started,
            took: started.elapsed(),
            outcome,
        });
    };
    while !*stop.borrow() {
        let started = Instant::now();
        let current = match store.get(&key, ReadOptions::default()).await {
            Ok(Some(pair)) => pair,
            Ok(None) => {
                record(started, Outcome::Failed("the counter vanished".into()));
                return acked;
            }
            Err(e) => {
                record(started, classify(&e, false));
                pause_after_failure(&mut stop).await;
                continue;
            }
        };
        let n: u64 = std::str::from_utf8(&current.value)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let started = Instant::now();
        match store
            .atomic_put(
                &key,
                (n + 1).to_string().into(),
                Some(&current),
                WriteOptions::default(),
            )
            .await
        {
            Ok(_) => {
                acked += 1;
                record(started, Outcome::Acked);
            }
            Err(e) => {
                record(started, classify(&e, true));
                pause_after_failure(&mut stop).await;
            }
        }
    }
    acked
}

fn classify(error: &Error, write: bool) -> Outcome {
    match error {
        Error::KeyModified { .. } | Error::KeyExists { .. } | Error::KeyNotFound { .. } => {
            Outcome::Conflict
        }
        // A cluster member that dies or loses its leadership while a write is in flight
        // cannot say whether the write committed: whichever transient error the client saw
        // (a timeout, a reset connection, "leader changed"), the outcome is unknown.
        e if write && e.is_transient() => Outcome::UnknownWrite,
        e if e.is_transient() => Outcome::Transient,
        e => Outcome::Failed(format!("{e:?}")),
    }
}

/// A short breath after a failed call, so a dead member is not hammered.
async fn pause_after_failure(stop: &mut watch::Receiver<bool>) {
    let _ = timeout(Duration::from_millis(50), stop.wait_for(|s| *s)).await;
}

/// One side of the lock: its own lease, the other side's, the shared book.
struct Party {
    name: &'static str,
    mine: Arc<Mutex<Option<LockLease>>>,
    other: Arc<Mutex<Option<LockLease>>>,
    book: Arc<Mutex<LockBook>>,
    stop: watch::Receiver<bool>,
}

impl Party {
    /// Books an acquisition; the other side must not be holding at this moment.
    fn acquired(&self, lease: &LockLease) {
        let other = self.other.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let mut book = self.book.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(other) = other.filter(|o| o.state() == LockState::Held) {
            book.overlaps.push(format!(
                "{} got token {} while the other's lease {} still says Held",
                self.name,
                lease.fencing_token(),
                other.fencing_token()
            ));
        }
        book.acquisitions
            .push((Instant::now(), self.name, lease.fencing_token()));
        *self.mine.lock().unwrap_or_else(|e| e.into_inner()) = Some(lease.clone());
    }

    fn error(&self, error: &Error) {
        self.book
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .errors
            .push(format!("{}: {error}", self.name));
        if !error.is_transient() && !matches!(error, Error::LockLost { .. }) {
            self.book
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .fatal
                .push(format!("{}: {error:?}", self.name));
        }
    }

    async fn new_lock(&self, store: &dyn Store, key: &str, ttl: Duration) -> Option<Lock> {
        let options = LockOptions::default().value(self.name).ttl(ttl);
        store
            .new_lock(key, options)
            .await
            .map_err(|e| self.error(&e))
            .ok()
    }

    /// One bounded attempt at the lock ([`CONTEND`]); an error is booked and followed by a
    /// short breath.
    async fn try_lock(&self, lock: &mut Lock) -> Option<LockLease> {
        match timeout(CONTEND, lock.lock()).await {
            Ok(Ok(lease)) => {
                self.acquired(&lease);
                Some(lease)
            }
            Ok(Err(e)) => {
                self.error(&e);
                sleep(Duration::from_millis(100)).await;
                None
            }
            Err(_) => None,
        }
    }

    fn stopped(&self) -> bool {
        *self.stop.borrow()
    }
}

/// The holder: takes the lock, keeps it until it is lost (then takes it again) or the run ends.
async fn hold(store: Arc<dyn Store>, key: String, ttl: Duration, mut party: Party) {
    let Some(mut lock) = party.new_lock(&*store, &key, ttl).await else {
        return;
    };
    while !party.stopped() {
        if let Some(lease) = party.try_lock(&mut lock).await {
            tokio::select! {
                _ = lease.lost() => {
                    party.book.lock().unwrap_or_else(|e| e.into_inner()).holder_losses += 1;
                }
                _ = party.stop.wait_for(|s| *s) => {}
            }
        }
    }
    let _ = timeout(Duration::from_secs(10), lock.unlock()).await;
}

/// The contender: keeps asking for the lock; when it gets it, holds it briefly and gives it
/// back, so that the holder takes it again.
async fn contend(store: Arc<dyn Store>, key: String, ttl: Duration, party: Party) {
    let Some(mut lock) = party.new_lock(&*store, &key, ttl).await else {
        return;
    };
    while !party.stopped() {
        if party.try_lock(&mut lock).await.is_some() {
            sleep(Duration::from_millis(300)).await;
            match timeout(Duration::from_secs(10), lock.unlock()).await {
                Ok(Ok(())) | Ok(Err(Error::LockLost { .. })) => {}
                Ok(Err(e)) => party.error(&e),
                Err(_) => {}
            }
        }
    }
}
