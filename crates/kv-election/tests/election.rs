//! The election scenarios on all six backends, against the servers `scripts/servers` starts
//! (addresses from the `KV_TEST_*` variables, as for the conformance suites; a missing variable
//! fails the test, it never skips it).
//!
//! * `one_leader_at_a_time`: three candidates on three handles elect each other in turn; an
//!   independent in-process witness proves that no two believed they led at once, and that
//!   terms rose strictly in the order of the elections; an observer's terms rise too.
//! * `resign_hands_over`: the leader resigns, the waiting candidate is elected within the
//!   backend's `ttl_precision` + 1.5 s; the observer sees leader → (no leader) → new leader,
//!   each once, never the old term's proclaimed value for the new leader.
//! * `killed_leader_process`: a child process (this test binary, re-run) is elected and
//!   killed with SIGKILL; a waiting candidate takes over within TTL + `ttl_precision` + 1.5 s
//!   (+ two round trips as measured just before the kill, which a loaded server stretches);
//!   prints `ELECTION <backend> takeover_ms=…`. The embedded store allows one process per
//!   database: there the parent opens the database only after the child died (redb's file
//!   lock goes with the process), then campaigns; the time is still measured from the kill,
//!   and the dead leader's lock key expires at its deadline.
//! * `deleted_or_taken_over`: the lock key is deleted behind the leader's back: `lost()` fires
//!   within the renewal interval + 1.5 s (in practice a watch round trip), `proclaim` is
//!   refused with `NotLeader`, another candidate takes over, the old leader's `resign` does
//!   not disturb it.
//! * `observer_errors_and_drop`: an observer's stream ends with an `Err` item when its store
//!   handle fails (is closed), can be reopened, and dropping it (or a leadership) brings the
//!   handle's `background_tasks()` back down.
//! * `cancelled_campaigns`: campaigns abandoned while waiting or at random moments around
//!   their election (`campaign` is cancel-safe) leave nothing held and no background work.
//! * `docker_leadership_faults`: the two known faults of docker/leadership — the panic after a
//!   (second) resign on Consul, and a follower hanging forever when its watch fails — cannot
//!   happen here.

use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use kv_core::{Error, ReadOptions, Store};
use kv_election::{
    Election, ElectionError, ElectionOptions, Leader, LeaderState, LeaderStream, LeadershipStatus,
    Resigned,
};
use kv_test_support::child::ChildProcess;
use kv_test_support::env;
use rand::Rng;
use tokio::time::{Instant, sleep, timeout};

const CHILD_VAR: &str = "KV_ELECTION_CHILD";
const BACKEND_VAR: &str = "KV_ELECTION_BACKEND";
/// The DynamoDB namespace (or bolt directory) a child must use to reach the parent's store.
const SHARED_VAR: &str = "KV_ELECTION_SHARED";
const NAME_VAR: &str = "KV_ELECTION_NAME";
const TTL_VAR: &str = "KV_ELECTION_TTL_MS";

/// Extra time on top of a backend's TTL and TTL precision (scheduling, network).
const SLACK: Duration = Duration::from_millis(1500);
/// The longest wait for an event that should come at once.
const EVENT_TIMEOUT: Duration = Duration::from_secs(10);

async fn connect_backend(backend: &str, shared: &str) -> kv_core::Result<Arc<dyn Store>> {
    Ok(match backend {
        "etcd" => {
            let endpoints = env("KV_TEST_ETCD_ENDPOINTS");
            let config = kv_etcd::Config::builder()
                .endpoints(endpoints.split(',').map(str::trim))
                .build()?;
            Arc::new(kv_etcd::EtcdStore::connect(config).await?)
        }
        "consul" => {
            let config = kv_consul::Config::builder()
                .endpoint(env("KV_TEST_CONSUL_ADDR"))
                .build()?;
            Arc::new(kv_consul::ConsulStore::connect(config).await?)
        }
        "zookeeper" => {
            let config = kv_zookeeper::Config::builder()
                .endpoints([env("KV_TEST_ZOOKEEPER_ENDPOINTS")])
                .build()?;
            Arc::new(kv_zookeeper::ZookeeperStore::connect(config).await?)
        }
        "redis" => {
            let config = kv_redis::Config::from_url(&env("KV_TEST_REDIS_URL"))?;
            Arc::new(kv_redis::RedisStore::connect(config).await?)
        }
        "dynamodb" => {
            let var = |name: &str, default: &str| {
                std::env::var(name).unwrap_or_else(|_| default.to_owned())
            };
            let config = kv_dynamodb::Config::new("kv_election")
                .endpoint(env("KV_TEST_DYNAMODB_ENDPOINT"))
                .region(var("AWS_REGION", "us-east-1"))
                .static_credentials(
                    var("AWS_ACCESS_KEY_ID", "kvtest"),
                    var("AWS_SECRET_ACCESS_KEY", "kvtest"),
                )
                .namespace(shared)
                .create_table(true)
                .poll_interval(Duration::from_millis(100))
                .lock_retry_interval(Duration::from_millis(100));
            Arc::new(kv_dynamodb::DynamoStore::connect(config).await?)
        }
        "bolt" => Arc::new(kv_bolt::BoltStore::open(kv_bolt::Config::new(shared)).await?),
        other => panic!("unknown backend {other}"),
    })
}

/// One backend under test: how to connect, and a unique election name per scenario.
struct Backend {
    name: &'static str,
    shared: String,
    _dir: Option<tempfile::TempDir>,
}

impl Backend {
    fn new(name: &'static str) -> Self {
        let (shared, dir) = match name {
            "bolt" => {
                let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
                let path: PathBuf = dir.path().join("db");
                (path.display().to_string(), Some(dir))
            }
            _ => (format!("kve-{:016x}", rand::rng().random::<u64>()), None),
        };
        Backend {
            name,
            shared,
            _dir: dir,
        }
    }

    async fn connect(&self) -> Arc<dyn Store> {
        connect_backend(self.name, &self.shared)
            .await
            .unwrap_or_else(|e| panic!("{}: cannot connect: {e}", self.name))
    }

    fn single_process(&self) -> bool {
        self.name == "bolt"
    }

    fn child(&self, mode: &str, election: &str, ttl: Duration) -> ChildProcess {
        let mut command = Command::new(std::env::current_exe().expect("the test binary's path"));
        command
            .args([
                "--exact",
                "child_process",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_VAR, mode)
            .env(BACKEND_VAR, self.name)
            .env(SHARED_VAR, &self.shared)
            .env(NAME_VAR, election)
            .env(TTL_VAR, ttl.as_millis().to_string());
        ChildProcess::start(command)
    }
}

fn unique(scenario: &str) -> String {
    format!("election-{scenario}-{:016x}", rand::rng().random::<u64>())
}

/// The lock TTL of the scenarios: short, but at least 2 s (every backend's min_ttl fits) and
/// at least 3 × `ttl_precision` — the crate's documented minimum, below which a renewed lock
/// may look expired early to a reader whose expiry judgement is `ttl_precision` off
/// (DynamoDB: 4.5 s; etcd: 9 s).
fn test_ttl(store: &dyn Store) -> Duration {
    let caps = store.capabilities();
    caps.min_ttl
        .max(Duration::from_secs(2))
        .max(caps.ttl_precision * 3)
}

fn election(store: &Arc<dyn Store>, name: &str) -> Election {
    let ttl = test_ttl(&**store);
    Election::with_options(store.clone(), name, ElectionOptions::default().ttl(ttl))
        .unwrap_or_else(|e| panic!("election: {e}"))
}

fn leader(value: &str, term: u64) -> LeaderState {
    LeaderState::Leader(Leader {
        value: bytes::Bytes::copy_from_slice(value.as_bytes()),
        term,
    })
}

/// The next observed state, within `limit`; panics on an error, an end or a timeout.
async fn next_state(stream: &mut LeaderStream, limit: Duration, what: &str) -> LeaderState {
    match timeout(limit, stream.next()).await {
        Ok(Some(Ok(state))) => state,
        Ok(Some(Err(e))) => panic!("{what}: the observer failed: {e}"),
        Ok(None) => panic!("{what}: the observer ended"),
        Err(_) => panic!("{what}: no state within {limit:?}"),
    }
}

/// Every state the observer reports within `window`.
async fn drain(stream: &mut LeaderStream, window: Duration) -> Vec<LeaderState> {
    let mut seen = Vec::new();
    let deadline = Instant::now() + window;
    while let Ok(Some(item)) = tokio::time::timeout_at(deadline, stream.next()).await {
        seen.push(item.unwrap_or_else(|e| panic!("the observer failed: {e}")));
    }
    seen
}

/// Waits until `check` holds (polled every 20 ms), panicking after `limit`.
async fn eventually(limit: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !check() {
        assert!(Instant::now() < deadline, "{what} within {limit:?}");
        sleep(Duration::from_millis(20)).await;
    }
}

/// An independent witness of who believes it leads: records entries and exits on one clock.
#[derive(Default, Clone)]
struct Witness {
    state: Arc<Mutex<WitnessState>>,
}

#[derive(Default)]
struct WitnessState {
    inside: Option<usize>,
    terms: Vec<(usize, u64)>,
    overlaps: Vec<(usize, usize)>,
}

impl Witness {
    fn enter(&self, candidate: usize, term: u64) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(other) = s.inside {
            s.overlaps.push((candidate, other));
        }
        s.inside = Some(candidate);
        s.terms.push((candidate, term));
    }

    fn leave(&self, candidate: usize) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if s.inside == Some(candidate) {
            s.inside = None;
        }
    }

    fn elections(&self) -> usize {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .terms
            .len()
    }

    /// The terms in election order, after checking exclusivity and strictly rising terms.
    fn check(&self) -> Vec<u64> {
        let s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        assert!(
            s.overlaps.is_empty(),
            "two leaders at once (newcomer, incumbent): {:?}",
            s.overlaps
        );
        for pair in s.terms.windows(2) {
            assert!(
                pair[1].1 > pair[0].1,
                "term {} (candidate {}) does not rise above {} (candidate {})",
                pair[1].1,
                pair[1].0,
                pair[0].1,
                pair[0].0
            );
        }
        s.terms.iter().map(|(_, t)| *t).collect()
    }
}

/// Three candidates, each on its own handle, campaign repeatedly; each leads for a moment,
/// proclaims, and resigns. Exactly one leader at any instant, terms strictly rising.
async fn one_leader_at_a_time(backend: &Backend) {
    const CANDIDATES: usize = 3;
    const ELECTIONS: usize = 9;
    let name = unique("one-leader");
    let witness = Witness::default();
    let observer_store = backend.connect().await;
    let mut observer = election(&observer_store, &name)
        .observe()
        .await
        .unwrap_or_else(|e| panic!("observe: {e}"));
    let first = next_state(&mut observer, EVENT_TIMEOUT, "the first state").await;
    assert_eq!(
        first,
        LeaderState::NoLeader,
        "a fresh election has no leader"
    );
    // Each state with when it arrived: a failure says how long the observer was silent.
    let observed: Arc<Mutex<Vec<(Instant, LeaderState)>>> = Arc::default();
    let observing = {
        let observed = observed.clone();
        tokio::spawn(async move {
            while let Some(item) = observer.next().await {
                match item {
                    Ok(state) => observed
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push((Instant::now(), state)),
                    Err(e) => panic!("the observer failed: {e}"),
                }
            }
        })
    };
    let mut tasks = Vec::new();
    for id in 0..CANDIDATES {
        let store = backend.connect().await;
        let witness = witness.clone();
        let name = name.clone();
        tasks.push(tokio::spawn(async move {
            let election = election(&store, &name);
            let mut terms = 0;
            while witness.elections() < ELECTIONS {
                let mut leadership = timeout(Duration::from_secs(30), election.campaign(format!("c{id}")))
                    .await
                    .unwrap_or_else(|_| panic!("candidate {id} was never elected"))
                    .unwrap_or_else(|e| panic!("candidate {id}: campaign: {e}"));
                witness.enter(id, leadership.term());
                terms += 1;
                leadership
                    .proclaim(format!("c{id}-term{}", leadership.term()))
                    .await
                    .unwrap_or_else(|e| panic!("candidate {id}: proclaim: {e}"));
                let hold = Duration::from_millis(rand::rng().random_range(20..120));
                tokio::select! {
                    _ = sleep(hold) => {}
                    status = leadership.lost() => panic!("candidate {id} lost its leadership unexpectedly: {status:?}"),
                }
                witness.leave(id);
                let resigned = leadership
                    .resign()
                    .await
                    .unwrap_or_else(|e| panic!("candidate {id}: resign: {e}"));
                assert_eq!(resigned, Resigned::Resigned);
            }
            let _ = store.close().await;
            terms
        }));
    }
    let mut total = 0;
    for task in tasks {
        total += task
            .await
            .unwrap_or_else(|e| panic!("a candidate panicked: {e}"));
    }
    let terms = witness.check();
    assert_eq!(total, terms.len());
    assert!(terms.len() >= ELECTIONS);
    // Everyone resigned: the observer ends on "no leader" (a stream may deliver it late).
    let all_resigned = Instant::now();
    let ends_without_leader = || {
        observed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .last()
            .is_some_and(|(_, state)| *state == LeaderState::NoLeader)
    };
    while !ends_without_leader() {
        if all_resigned.elapsed() >= EVENT_TIMEOUT {
            // Say whether the store or the observer is behind: what a fresh handle lists.
            let witness_store = backend.connect().await;
            let listed = witness_store.list(&name, ReadOptions::default()).await;
            let last: Vec<_> = observed
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .rev()
                .take(3)
                .map(|(at, state)| {
                    format!(
                        "{state:?} {:?} before the end",
                        all_resigned.saturating_duration_since(*at)
                    )
                })
                .collect();
            panic!(
                "the observer reports no leader {EVENT_TIMEOUT:?} after the last resignation; \
                 its last states (newest first): {last:?}; observer task finished: {}; \
                 a fresh handle lists: {listed:?}",
                observing.is_finished()
            );
        }
        sleep(Duration::from_millis(20)).await;
    }
    observing.abort();
    let observed: Vec<LeaderState> = observed
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .map(|(_, state)| state.clone())
        .collect();
    // The observer's terms rise (it may coalesce, never reorder), and each is a real election.
    let mut last = 0;
    for state in &observed {
        if let LeaderState::Leader(l) = state {
            assert!(
                l.term >= last,
                "the observer went back from term {last} to {}",
                l.term
            );
            assert!(
                terms.contains(&l.term),
                "the observer reported term {} nobody won",
                l.term
            );
            last = l.term;
        }
    }
    let _ = observer_store.close().await;
    println!(
        "ELECTION {} elections={} observed_states={} witness_overlaps=0",
        backend.name,
        terms.len(),
        observed.len()
    );
}

/// The leader resigns: the waiting candidate is elected within the backend's slack; the
/// observer sees leader → (no leader) → new leader, each once.
async fn resign_hands_over(backend: &Backend) {
    let name = unique("resign");
    let a_store = backend.connect().await;
    let b_store = backend.connect().await;
    let o_store = backend.connect().await;
    let precision = a_store.capabilities().ttl_precision;
    let a = election(&a_store, &name);
    let b = election(&b_store, &name);
    let mut observer = election(&o_store, &name)
        .observe()
        .await
        .unwrap_or_else(|e| panic!("observe: {e}"));
    assert_eq!(
        next_state(&mut observer, EVENT_TIMEOUT, "first").await,
        LeaderState::NoLeader
    );
    let mut leadership_a = a.campaign("A").await.unwrap_or_else(|e| panic!("A: {e}"));
    let term_a = leadership_a.term();
    assert_eq!(
        next_state(&mut observer, EVENT_TIMEOUT, "A elected").await,
        leader("A", term_a)
    );
    leadership_a
        .proclaim("A2")
        .await
        .unwrap_or_else(|e| panic!("A proclaim: {e}"));
    assert_eq!(leadership_a.value(), "A2");
    assert_eq!(
        next_state(&mut observer, EVENT_TIMEOUT, "A proclaimed").await,
        leader("A2", term_a)
    );
    let b_campaign = tokio::spawn({
        let b = b.clone();
        async move {
            let leadership = b.campaign("B").await;
            (leadership, Instant::now())
        }
    });
    // B is waiting (and, on DynamoDB, has seen A's lock).
    sleep(Duration::from_millis(500)).await;
    assert!(!b_campaign.is_finished(), "B was elected while A led");
    assert!(leadership_a.is_leader());
    let resigned_at = Instant::now();
    assert_eq!(
        leadership_a
            .resign()
            .await
            .unwrap_or_else(|e| panic!("resign: {e}")),
        Resigned::Resigned
    );
    assert_eq!(leadership_a.status(), LeadershipStatus::Resigned);
    let bound = precision + SLACK;
    let (leadership_b, elected_at) = timeout(bound + EVENT_TIMEOUT, b_campaign)
        .await
        .unwrap_or_else(|_| panic!("{}: B was never elected after A resigned", backend.name))
        .unwrap_or_else(|e| panic!("B's task: {e}"));
    let mut leadership_b = leadership_b.unwrap_or_else(|e| panic!("B: {e}"));
    let handover = elected_at.duration_since(resigned_at);
    assert!(
        handover <= bound,
        "{}: B was elected {handover:?} after A resigned (bound {bound:?})",
        backend.name
    );
    let term_b = leadership_b.term();
    assert!(term_b > term_a, "term {term_b} after {term_a}");
    // The observer: (no leader) then B with B's own value — never A2 for term B — each once.
    let mut seen = Vec::new();
    let deadline = Instant::now() + EVENT_TIMEOUT;
    while seen.last() != Some(&leader("B", term_b)) {
        let left = deadline.saturating_duration_since(Instant::now());
        seen.push(next_state(&mut observer, left, "B elected").await);
    }
    seen.extend(drain(&mut observer, Duration::from_millis(500)).await);
    assert!(
        seen == vec![LeaderState::NoLeader, leader("B", term_b)]
            || seen == vec![leader("B", term_b)],
        "{}: after A resigned the observer saw {seen:?}",
        backend.name
    );
    assert_eq!(
        b.leader().await.unwrap_or_else(|e| panic!("leader: {e}")),
        leader("B", term_b)
    );
    assert_eq!(
        leadership_b
            .resign()
            .await
            .unwrap_or_else(|e| panic!("resign: {e}")),
        Resigned::Resigned
    );
    assert_eq!(
        next_state(&mut observer, EVENT_TIMEOUT, "B resigned").await,
        LeaderState::NoLeader
    );
    println!(
        "ELECTION {} handover_ms={} bound_ms={}",
        backend.name,
        handover.as_millis(),
        bound.as_millis()
    );
    drop(observer);
    for store in [a_store, b_store, o_store] {
        let _ = store.close().await;
    }
}

/// A child process is elected and killed with SIGKILL: a waiting candidate takes over within
/// TTL + ttl_precision + slack.
async fn killed_leader_process(backend: &Backend) {
    let name = unique("killed");
    // The TTL and precision, from a handle that the embedded store must close before the
    // child opens the database.
    let (ttl, precision) = {
        let probe = backend.connect().await;
        let figures = (test_ttl(&*probe), probe.capabilities().ttl_precision);
        let _ = probe.close().await;
        figures
    };
    let mut child = backend.child("lead", &name, ttl);
    let child_term: u64 = child
        .expect("elected ", Duration::from_secs(30))
        .await
        .parse()
        .unwrap_or_else(|e| panic!("the child's term: {e}"));
    let (store, killed, mut observer, campaign, rtt) = if backend.single_process() {
        // One process per database: the parent opens it once the child is dead.
        child.kill();
        let killed = Instant::now();
        let store = backend.connect().await;
        let rtt = round_trip(&store, &name).await;
        let observer = election(&store, &name)
            .observe()
            .await
            .unwrap_or_else(|e| panic!("observe: {e}"));
        let parent = election(&store, &name);
        let campaign =
            tokio::spawn(async move { (parent.campaign("parent").await, Instant::now()) });
        (store, killed, observer, campaign, rtt)
    } else {
        let store = backend.connect().await;
        let mut observer = election(&store, &name)
            .observe()
            .await
            .unwrap_or_else(|e| panic!("observe: {e}"));
        assert_eq!(
            next_state(&mut observer, EVENT_TIMEOUT, "the child leads").await,
            leader("child-proclaimed", child_term),
            "{}: the observer does not show the child's proclaimed value",
            backend.name
        );
        let parent = election(&store, &name);
        let campaign =
            tokio::spawn(async move { (parent.campaign("parent").await, Instant::now()) });
        sleep(Duration::from_millis(300)).await;
        assert!(!campaign.is_finished(), "elected while the child led");
        let rtt = round_trip(&store, &name).await;
        child.kill();
        (store, Instant::now(), observer, campaign, rtt)
    };
    // TTL + precision + slack, plus two round trips as this machine serves them now (the
    // last renewal seen, the acquiring write): a loaded server stretches those, not the TTL.
    let bound = ttl + precision + SLACK + rtt * 2;
    let (leadership, elected_at) = timeout(bound + EVENT_TIMEOUT, campaign)
        .await
        .unwrap_or_else(|_| panic!("{}: nobody took over from the killed leader", backend.name))
        .unwrap_or_else(|e| panic!("campaign task: {e}"));
    let mut leadership = leadership.unwrap_or_else(|e| panic!("campaign: {e}"));
    let takeover = elected_at.duration_since(killed);
    println!(
        "ELECTION {} takeover_ms={} ttl_ms={} round_trip_ms={} bound_ms={}",
        backend.name,
        takeover.as_millis(),
        ttl.as_millis(),
        rtt.as_millis(),
        bound.as_millis()
    );
    assert!(
        takeover <= bound,
        "{}: took over {takeover:?} after the leader was killed (TTL {ttl:?} + precision {precision:?} + {SLACK:?} + 2 × round trip {rtt:?})",
        backend.name
    );
    assert!(
        leadership.term() > child_term,
        "term {} after the killed leader's {child_term}",
        leadership.term()
    );
    // The observer ends on the new leader, with its own value, and never goes back.
    let mut seen = Vec::new();
    let deadline = Instant::now() + EVENT_TIMEOUT;
    while seen.last() != Some(&leader("parent", leadership.term())) {
        let left = deadline.saturating_duration_since(Instant::now());
        seen.push(next_state(&mut observer, left, "the new leader").await);
    }
    let allowed = [
        leader("child-proclaimed", child_term),
        LeaderState::NoLeader,
        leader("parent", leadership.term()),
    ];
    let positions: Vec<usize> =
        seen.iter()
            .map(|s| {
                allowed.iter().position(|a| a == s).unwrap_or_else(|| {
                    panic!("{}: unexpected state {s:?} in {seen:?}", backend.name)
                })
            })
            .collect();
    assert!(
        positions.windows(2).all(|w| w[0] < w[1]),
        "{}: the observer saw {seen:?}",
        backend.name
    );
    assert_eq!(
        leadership
            .resign()
            .await
            .unwrap_or_else(|e| panic!("resign: {e}")),
        Resigned::Resigned
    );
    drop(observer);
    let _ = store.close().await;
}

/// How long one read of the election takes now (the server's current round trip).
async fn round_trip(store: &Arc<dyn Store>, name: &str) -> Duration {
    let started = Instant::now();
    election(store, name)
        .leader()
        .await
        .unwrap_or_else(|e| panic!("leader: {e}"));
    started.elapsed()
}

/// The lock key is deleted behind the leader's back: `lost()` fires promptly, `proclaim` is
/// refused, another candidate takes over and the old leader's resign does not disturb it.
async fn deleted_or_taken_over(backend: &Backend) {
    let name = unique("deleted");
    let a_store = backend.connect().await;
    let b_store = backend.connect().await;
    let ttl = test_ttl(&*a_store);
    let precision = a_store.capabilities().ttl_precision;
    let a = election(&a_store, &name);
    let b = election(&b_store, &name);
    let mut leadership_a = a.campaign("A").await.unwrap_or_else(|e| panic!("A: {e}"));
    let term_a = leadership_a.term();
    leadership_a
        .proclaim("A2")
        .await
        .unwrap_or_else(|e| panic!("proclaim: {e}"));
    // An operator (or a bug) deletes the lock key.
    let deleted_at = Instant::now();
    assert!(
        b_store
            .delete(b.lock_key())
            .await
            .unwrap_or_else(|e| panic!("delete: {e}")),
        "the lock key existed"
    );
    let lost_bound = kv_core::lock::renew_interval(ttl) + SLACK;
    let status = timeout(lost_bound, leadership_a.lost())
        .await
        .unwrap_or_else(|_| {
            panic!(
                "{}: the leader did not notice its key's deletion within {lost_bound:?}",
                backend.name
            )
        });
    let noticed = deleted_at.elapsed();
    assert_eq!(status, LeadershipStatus::Lost);
    assert!(!leadership_a.is_leader());
    match leadership_a.proclaim("A3").await {
        Err(ElectionError::NotLeader { term, .. }) => assert_eq!(term, term_a),
        other => panic!("{}: a lost leader's proclaim gave {other:?}", backend.name),
    }
    // Another candidate takes over.
    let bound = ttl + precision + SLACK;
    let mut leadership_b = timeout(bound + EVENT_TIMEOUT, b.campaign("B"))
        .await
        .unwrap_or_else(|_| panic!("{}: B was never elected", backend.name))
        .unwrap_or_else(|e| panic!("B: {e}"));
    let term_b = leadership_b.term();
    assert!(term_b > term_a);
    // The old leader is refused still, and its resign leaves B alone.
    assert!(matches!(
        leadership_a.proclaim("A4").await,
        Err(ElectionError::NotLeader { .. })
    ));
    assert_eq!(
        leadership_a
            .resign()
            .await
            .unwrap_or_else(|e| panic!("resign: {e}")),
        Resigned::AlreadyLost
    );
    leadership_b
        .proclaim("B2")
        .await
        .unwrap_or_else(|e| panic!("B proclaim: {e}"));
    sleep(Duration::from_millis(200)).await;
    assert!(
        leadership_b.is_leader(),
        "B lost its leadership to A's resign"
    );
    assert_eq!(
        a.leader().await.unwrap_or_else(|e| panic!("leader: {e}")),
        leader("B2", term_b)
    );
    // Taken over while still believing to lead: A campaigns again, B's key is replaced under
    // it (deleted, and A elected at once): B notices, and its proclaim is refused.
    let b_signal = leadership_b.signal();
    b_store
        .delete(b.lock_key())
        .await
        .unwrap_or_else(|e| panic!("delete: {e}"));
    let mut leadership_a2 = timeout(bound + EVENT_TIMEOUT, a.campaign("A-again"))
        .await
        .unwrap_or_else(|_| panic!("{}: A was never re-elected", backend.name))
        .unwrap_or_else(|e| panic!("A again: {e}"));
    assert!(leadership_a2.term() > term_b);
    assert_eq!(
        timeout(lost_bound, b_signal.ended())
            .await
            .unwrap_or_else(|_| panic!("{}: B did not notice the takeover", backend.name)),
        LeadershipStatus::Lost
    );
    assert!(matches!(
        leadership_b.proclaim("B3").await,
        Err(ElectionError::NotLeader { .. })
    ));
    assert_eq!(
        leadership_b
            .resign()
            .await
            .unwrap_or_else(|e| panic!("resign: {e}")),
        Resigned::AlreadyLost
    );
    assert!(leadership_a2.is_leader());
    assert_eq!(
        leadership_a2
            .resign()
            .await
            .unwrap_or_else(|e| panic!("resign: {e}")),
        Resigned::Resigned
    );
    println!(
        "ELECTION {} lost_after_delete_ms={} bound_ms={}",
        backend.name,
        noticed.as_millis(),
        lost_bound.as_millis()
    );
    let _ = a_store.close().await;
    let _ = b_store.close().await;
}

/// An observer's stream reports a store failure as an `Err` item and ends; it can be reopened;
/// dropping it (or a leadership) stops its background work.
async fn observer_errors_and_drop(backend: &Backend) {
    let name = unique("observer");
    let l_store = backend.connect().await;
    let o_store = backend.connect().await;
    let o_baseline = o_store.background_tasks();
    let l_baseline = l_store.background_tasks();
    let observed = election(&o_store, &name);
    let mut stream = observed
        .observe()
        .await
        .unwrap_or_else(|e| panic!("observe: {e}"));
    assert_eq!(
        next_state(&mut stream, EVENT_TIMEOUT, "first").await,
        LeaderState::NoLeader
    );
    assert!(
        o_store.background_tasks() > o_baseline,
        "observing runs a watch"
    );
    let leadership = election(&l_store, &name)
        .campaign("L")
        .await
        .unwrap_or_else(|e| panic!("campaign: {e}"));
    let term = leadership.term();
    assert_eq!(
        next_state(&mut stream, EVENT_TIMEOUT, "elected").await,
        leader("L", term)
    );
    // Dropping the stream stops its watch.
    drop(stream);
    eventually(
        EVENT_TIMEOUT,
        "dropping the observer stops its watch",
        || o_store.background_tasks() == o_baseline,
    )
    .await;
    // Reopened: the current state first.
    let mut stream = observed
        .observe()
        .await
        .unwrap_or_else(|e| panic!("observe: {e}"));
    assert_eq!(
        next_state(&mut stream, EVENT_TIMEOUT, "reopened").await,
        leader("L", term)
    );
    // The store fails under it (the handle is closed): an Err item, then the end. Never a
    // silent end, never a hang.
    o_store
        .close()
        .await
        .unwrap_or_else(|e| panic!("close: {e}"));
    match timeout(EVENT_TIMEOUT, stream.next()).await {
        Ok(Some(Err(ElectionError::Store(Error::Closed)))) => {}
        other => panic!(
            "{}: after a store failure the observer gave {other:?}",
            backend.name
        ),
    }
    assert!(
        timeout(EVENT_TIMEOUT, stream.next())
            .await
            .unwrap_or_else(|_| panic!("the stream hangs after its error"))
            .is_none(),
        "the error is the last item"
    );
    // Observing on the closed handle fails at once.
    assert!(matches!(
        timeout(EVENT_TIMEOUT, observed.observe()).await,
        Ok(Err(ElectionError::Store(Error::Closed)))
    ));
    // Reopened on a new handle: goes on with the current state.
    let o2_store = backend.connect().await;
    let mut stream = election(&o2_store, &name)
        .observe()
        .await
        .unwrap_or_else(|e| panic!("observe: {e}"));
    assert_eq!(
        next_state(&mut stream, EVENT_TIMEOUT, "on a new handle").await,
        leader("L", term)
    );
    // Dropping a leadership without resigning releases the lock and stops its work.
    assert!(l_store.background_tasks() > l_baseline);
    drop(leadership);
    eventually(
        EVENT_TIMEOUT,
        "dropping a leadership stops its work",
        || l_store.background_tasks() == l_baseline,
    )
    .await;
    assert_eq!(
        next_state(&mut stream, EVENT_TIMEOUT, "released by drop").await,
        LeaderState::NoLeader
    );
    drop(stream);
    let _ = l_store.close().await;
    let _ = o2_store.close().await;
}

/// docker/leadership's known faults cannot happen here: (1) a candidate panicked on Consul
/// when it resigned (a channel closed twice) — here resign is idempotent, works after a loss,
/// and the candidate campaigns again; (2) a follower hung forever when its watch failed —
/// here a waiting candidate and an observer whose store fails both return an error promptly.
async fn docker_leadership_faults(backend: &Backend) {
    let name = unique("docker");
    let store = backend.connect().await;
    let other = backend.connect().await;
    let election_a = election(&store, &name);
    // (1) Resign twice, proclaim after resigning, campaign again.
    let mut first = election_a
        .campaign("A")
        .await
        .unwrap_or_else(|e| panic!("campaign: {e}"));
    let term1 = first.term();
    assert_eq!(
        first
            .resign()
            .await
            .unwrap_or_else(|e| panic!("resign: {e}")),
        Resigned::Resigned
    );
    assert_eq!(
        first
            .resign()
            .await
            .unwrap_or_else(|e| panic!("resign again: {e}")),
        Resigned::AlreadyResigned
    );
    assert_eq!(
        timeout(EVENT_TIMEOUT, first.lost())
            .await
            .unwrap_or_else(|_| panic!("lost() hangs after resign")),
        LeadershipStatus::Resigned
    );
    assert!(matches!(
        first.proclaim("after").await,
        Err(ElectionError::NotLeader { .. })
    ));
    drop(first);
    let mut second = election_a
        .campaign("A")
        .await
        .unwrap_or_else(|e| panic!("again: {e}"));
    assert!(second.term() > term1);
    // Resign after a loss, twice.
    other
        .delete(election_a.lock_key())
        .await
        .unwrap_or_else(|e| panic!("delete: {e}"));
    timeout(EVENT_TIMEOUT, second.lost())
        .await
        .unwrap_or_else(|_| panic!("the loss was not noticed"));
    assert_eq!(
        second
            .resign()
            .await
            .unwrap_or_else(|e| panic!("resign after loss: {e}")),
        Resigned::AlreadyLost
    );
    assert_eq!(
        second
            .resign()
            .await
            .unwrap_or_else(|e| panic!("resign again: {e}")),
        Resigned::AlreadyLost
    );
    drop(second);
    // Resign racing with the store being closed, and after it.
    let mut third = election_a
        .campaign("A")
        .await
        .unwrap_or_else(|e| panic!("third: {e}"));
    // (2) A follower waits on another handle; its handle fails: it returns, it does not hang.
    let follower_store = backend.connect().await;
    let follower = election(&follower_store, &name);
    let mut follower_observer = follower
        .observe()
        .await
        .unwrap_or_else(|e| panic!("observe: {e}"));
    assert_eq!(
        next_state(&mut follower_observer, EVENT_TIMEOUT, "follower sees A").await,
        leader("A", third.term())
    );
    let waiting = tokio::spawn({
        let follower = follower.clone();
        async move { follower.campaign("F").await.map(|l| l.term()) }
    });
    sleep(Duration::from_millis(300)).await;
    assert!(
        !waiting.is_finished(),
        "the follower was elected while A led"
    );
    follower_store
        .close()
        .await
        .unwrap_or_else(|e| panic!("close: {e}"));
    match timeout(EVENT_TIMEOUT, waiting).await {
        Ok(Ok(Err(ElectionError::Store(Error::Closed)))) => {}
        other => panic!(
            "{}: a waiting follower whose store failed gave {other:?}",
            backend.name
        ),
    }
    match timeout(EVENT_TIMEOUT, follower_observer.next()).await {
        Ok(Some(Err(_))) => {}
        other => panic!("{}: the follower's observer gave {other:?}", backend.name),
    }
    assert!(third.is_leader());
    // The leader's own store closes: leadership is lost, resign still never panics.
    store.close().await.unwrap_or_else(|e| panic!("close: {e}"));
    assert_eq!(
        timeout(EVENT_TIMEOUT, third.lost())
            .await
            .unwrap_or_else(|_| panic!("closing the store did not end the leadership")),
        LeadershipStatus::Lost
    );
    assert!(matches!(
        third.proclaim("closed").await,
        Err(ElectionError::NotLeader { .. })
    ));
    assert_eq!(
        third
            .resign()
            .await
            .unwrap_or_else(|e| panic!("resign after close: {e}")),
        Resigned::AlreadyLost
    );
    assert_eq!(
        third
            .resign()
            .await
            .unwrap_or_else(|e| panic!("resign after close: {e}")),
        Resigned::AlreadyLost
    );
    assert!(matches!(
        election_a.campaign("closed").await,
        Err(ElectionError::Store(Error::Closed))
    ));
    drop(third);
    let _ = other.close().await;
}

/// `campaign` is cancel-safe: a campaign abandoned while waiting, or at any moment around its
/// election, leaves nothing held: the next candidate is elected within the backend's slack,
/// and the abandoning handle's background work goes back down.
async fn cancelled_campaigns(backend: &Backend) {
    let name = unique("cancelled");
    let a_store = backend.connect().await;
    let b_store = backend.connect().await;
    let precision = a_store.capabilities().ttl_precision;
    let b_baseline = b_store.background_tasks();
    let a = election(&a_store, &name);
    let b = election(&b_store, &name);
    let started = Instant::now();
    let mut leadership = a.campaign("A").await.unwrap_or_else(|e| panic!("A: {e}"));
    // Cancel around the time an uncontended campaign takes: before, during and after.
    let typical = started.elapsed().as_micros().max(1000) as u64;
    assert!(
        timeout(Duration::from_millis(300), b.campaign("B"))
            .await
            .is_err(),
        "B was elected while A led"
    );
    leadership
        .resign()
        .await
        .unwrap_or_else(|e| panic!("resign: {e}"));
    let mut elected = 0;
    for _ in 0..6 {
        let delay = Duration::from_micros(rand::rng().random_range(0..typical * 3 / 2));
        if let Ok(result) = timeout(delay, b.campaign("B")).await {
            // Elected before the deadline: dropping the leadership releases it.
            result.unwrap_or_else(|e| panic!("B: {e}"));
            elected += 1;
        }
    }
    let bound = precision + SLACK;
    let started = Instant::now();
    let mut leadership = timeout(bound + EVENT_TIMEOUT, a.campaign("A again"))
        .await
        .unwrap_or_else(|_| {
            panic!(
                "{}: a cancelled campaign left the election held",
                backend.name
            )
        })
        .unwrap_or_else(|e| panic!("A again: {e}"));
    let waited = started.elapsed();
    assert!(
        waited <= bound,
        "{}: elected {waited:?} after the cancelled campaigns (bound {bound:?})",
        backend.name
    );
    eventually(EVENT_TIMEOUT, "cancelled campaigns stop their work", || {
        b_store.background_tasks() == b_baseline
    })
    .await;
    leadership
        .resign()
        .await
        .unwrap_or_else(|e| panic!("resign: {e}"));
    println!(
        "ELECTION {} cancelled_campaigns=6 elected_before_cancel={elected} next_elected_ms={}",
        backend.name,
        waited.as_millis()
    );
    let _ = a_store.close().await;
    let _ = b_store.close().await;
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

/// The child process's entry: does nothing when run as a plain test. In mode `lead` it is
/// elected, proclaims `child-proclaimed`, prints `elected <term>` and waits to be killed.
#[test]
fn child_process() {
    let Ok(mode) = std::env::var(CHILD_VAR) else {
        return;
    };
    assert_eq!(mode, "lead", "unknown child mode");
    let backend = env(BACKEND_VAR);
    let shared = env(SHARED_VAR);
    let name = env(NAME_VAR);
    let ttl = Duration::from_millis(env(TTL_VAR).parse().expect("a TTL in ms"));
    runtime().block_on(async move {
        let store = connect_backend(&backend, &shared)
            .await
            .unwrap_or_else(|e| panic!("child: cannot connect to {backend}: {e}"));
        let election = Election::with_options(store, &name, ElectionOptions::default().ttl(ttl))
            .unwrap_or_else(|e| panic!("child: {e}"));
        let leadership = election
            .campaign("child")
            .await
            .unwrap_or_else(|e| panic!("child: campaign: {e}"));
        leadership
            .proclaim("child-proclaimed")
            .await
            .unwrap_or_else(|e| panic!("child: proclaim: {e}"));
        println!("elected {}", leadership.term());
        std::future::pending::<()>().await;
    });
}

/// Runs a scenario with a time limit, so that no test can hang.
async fn bounded(name: &str, scenario: impl std::future::Future<Output = ()>) {
    timeout(Duration::from_secs(120), scenario)
        .await
        .unwrap_or_else(|_| panic!("{name}: the scenario took over 120 s"));
}

macro_rules! election_tests {
    ($($backend:ident),* $(,)?) => {
        $(
            mod $backend {
                use super::*;

                #[test]
                fn one_leader_at_a_time() {
                    let backend = Backend::new(stringify!($backend));
                    runtime().block_on(bounded(backend.name, super::one_leader_at_a_time(&backend)));
                }

                #[test]
                fn resign_hands_over() {
                    let backend = Backend::new(stringify!($backend));
                    runtime().block_on(bounded(backend.name, super::resign_hands_over(&backend)));
                }

                #[test]
                fn killed_leader_process() {
                    let backend = Backend::new(stringify!($backend));
                    runtime().block_on(bounded(backend.name, super::killed_leader_process(&backend)));
                }

                #[test]
                fn deleted_or_taken_over() {
                    let backend = Backend::new(stringify!($backend));
                    runtime().block_on(bounded(backend.name, super::deleted_or_taken_over(&backend)));
                }

                #[test]
                fn observer_errors_and_drop() {
                    let backend = Backend::new(stringify!($backend));
                    runtime().block_on(bounded(backend.name, super::observer_errors_and_drop(&backend)));
                }

                #[test]
                fn cancelled_campaigns() {
                    let backend = Backend::new(stringify!($backend));
                    runtime().block_on(bounded(backend.name, super::cancelled_campaigns(&backend)));
                }

                #[test]
                fn docker_leadership_faults() {
                    let backend = Backend::new(stringify!($backend));
                    runtime().block_on(bounded(backend.name, super::docker_leadership_faults(&backend)));
                }
            }
        )*
    };
}

election_tests!(bolt, etcd, consul, zookeeper, redis, dynamodb);

/// NATS JetStream KV has no transactions, so no guarded writes: an election there would
/// have to proclaim without fencing. `Election::new` refuses it with `NotSupported` instead
/// of offering a weaker election under the same name.
#[test]
fn nats_declines_elections_without_guarded_writes() {
    runtime().block_on(async {
        let url = format!(
            "{}?namespace=kvelect-{:016x}",
            kv_test_support::env("KV_TEST_NATS_URL").trim_end_matches('/'),
            rand::rng().random::<u64>()
        );
        let store: Arc<dyn Store> = Arc::new(
            kv_nats::NatsStore::connect(kv_nats::Config::from_url(&url).unwrap())
                .await
                .unwrap(),
        );
        assert!(!store.capabilities().transactions);
        match Election::new(store.clone(), "jobs") {
            Err(kv_election::ElectionError::Store(kv_core::Error::NotSupported { .. })) => {}
            other => panic!("an election on NATS: {:?}", other.map(|_| ())),
        }
        store.close().await.unwrap();
    });
}
