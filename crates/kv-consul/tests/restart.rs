//! Failure modes that need a server this test may stop: a private Consul dev agent (the binary
//! `scripts/servers install consul` builds) on free ports, killed and restarted under a watch,
//! a waiting lock and a held lock. A dev agent keeps its state in memory: restarted, it comes
//! back empty, its indexes starting again near 0 — a server that lost its state.

use std::time::{Duration, Instant};

use futures::StreamExt;
use kv_consul::{Config, ConsulStore};
use kv_core::{Error, LockOptions, LockState, ReadOptions, Store, WriteOptions};

mod common;
use common::{Agent, free_port, temp_dir};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_and_locks_survive_or_report_a_server_restart() {
    let http = free_port();
    let agent = Agent::start(temp_dir("restart"), http, "").await;
    let config = Config::builder()
        .endpoint(format!("http://127.0.0.1:{http}"))
        .request_timeout(Duration::from_secs(2))
        .connect_timeout(Duration::from_millis(500))
        .watch_wait(Duration::from_secs(2))
        .build()
        .unwrap();
    let store = ConsulStore::connect(config.clone()).await.unwrap();
    let other = ConsulStore::connect(config).await.unwrap();
    assert_eq!(
        store.session_ttl_min(),
        Duration::from_secs(1),
        "read from the agent"
    );

    // Raise the index well above what a fresh agent will have.
    for i in 0..30 {
        store
            .put("filler", format!("{i}").into(), WriteOptions::default())
            .await
            .unwrap();
    }
    store
        .put("k", "before".into(), WriteOptions::default())
        .await
        .unwrap();
    let before = store
        .get("k", ReadOptions::default())
        .await
        .unwrap()
        .unwrap();
    let mut watch = store.watch("k", ReadOptions::default()).await.unwrap();
    assert_eq!(
        watch.next().await.unwrap().unwrap().unwrap().value,
        "before"
    );
    let mut held = store
        .new_lock("held", LockOptions::default().ttl(Duration::from_secs(2)))
        .await
        .unwrap();
    let lease = held.lock().await.unwrap();
    let mut blocker = other
        .new_lock("wanted", LockOptions::default().ttl(Duration::from_secs(2)))
        .await
        .unwrap();
    blocker.lock().await.unwrap();
    let mut waiter = store
        .new_lock("wanted", LockOptions::default().ttl(Duration::from_secs(2)))
        .await
        .unwrap();
    let waiting = tokio::spawn(async move {
        let lease = waiter.lock().await;
        (waiter, lease)
    });

    // The server goes away: the held lock is lost within its TTL, the watch stays quiet.
    let (dir, http) = agent.stop();
    let stopped = Instant::now();
    // Meanwhile, something that accepts connections and hangs up at once sits on the port:
    // it counts how often the background loops (watch, renewals, held-watches, the waiting
    // lock) retry. They back off; a hot loop would make thousands of attempts.
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", http))
        .await
        .unwrap();
    let counter = tokio::spawn(async move {
        let mut accepted = 0u32;
        let until = Instant::now() + Duration::from_secs(3);
        while let Ok(Ok((socket, _))) =
            tokio::time::timeout_at(until.into(), listener.accept()).await
        {
            accepted += 1;
            drop(socket);
        }
        accepted
    });
    let state = tokio::time::timeout(Duration::from_secs(4), lease.lost())
        .await
        .expect("lost signal while the server is gone");
    assert_eq!(state, LockState::Lost);
    assert!(
        stopped.elapsed() <= Duration::from_millis(2500),
        "{:?}",
        stopped.elapsed()
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(500), watch.next())
            .await
            .is_err(),
        "a broken connection is retried, not reported"
    );
    let error = store.get("k", ReadOptions::default()).await.unwrap_err();
    assert!(matches!(error, Error::Unavailable { .. }), "{error:?}");
    assert!(matches!(
        held.unlock().await,
        Err(Error::LockLost { .. }) | Err(Error::Unavailable { .. })
    ));

    let attempts = counter.await.unwrap();
    assert!(
        attempts < 100,
        "{attempts} connection attempts in 3 s: no back-off"
    );
    eprintln!("{attempts} connection attempts in 3 s while the server was down");

    // A fresh agent (empty, its indexes start again near 0) on the same port.
    let agent = Agent::start(dir, http, "").await;
    let writer = ConsulStore::connect(
        Config::builder()
            .endpoint(format!("http://127.0.0.1:{http}"))
            .build()
            .unwrap(),
    )
    .await
    .unwrap();
    writer
        .put("k", "after".into(), WriteOptions::default())
        .await
        .unwrap();
    let after = writer
        .get("k", ReadOptions::default())
        .await
        .unwrap()
        .unwrap();
    assert!(
        after.last_index < before.last_index,
        "the new agent's index went backwards"
    );
    // The new agent has none of the old state: the watch does not carry on with another
    // history, it ends with an error saying so.
    let ended = tokio::time::timeout(Duration::from_secs(10), watch.next())
        .await
        .expect("the watch ends once the handle notices the lost state");
    match ended {
        Some(Err(error)) => assert!(error.to_string().contains("lost its state"), "{error}"),
        other => panic!("the watch went on: {other:?}"),
    }
    assert!(watch.next().await.is_none(), "the error is the last item");
    // A new watch follows the new agent.
    let mut watch = store.watch("k", ReadOptions::default()).await.unwrap();
    let seen = watch.next().await.unwrap().unwrap().unwrap();
    assert_eq!(seen.value, "after");
    assert_eq!(seen.last_index, after.last_index);

    // The waiter acquires on the new agent (the blocker's key is gone with the old state).
    let (mut waiter, lease) = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("the waiting lock acquired after the restart")
        .unwrap();
    assert!(lease.unwrap().is_held());
    waiter.unlock().await.unwrap();
    drop(blocker);
    drop(watch);
    drop(held);
    Store::close(&store).await.unwrap();
    Store::close(&other).await.unwrap();
    Store::close(&writer).await.unwrap();
    assert_eq!(store.background_tasks(), 0);
    assert_eq!(other.background_tasks(), 0);
    drop(agent);
}

/// A server that lost its state (a dev agent restarted: in-memory, it comes back empty and its
/// indexes start again near 0) is noticed, not papered over: handle A holds a lock and
/// watches a key, handle C watches a tree; after the restart both watches end with an error
/// and A's lock is lost within 10 s — through the loss being noticed, not through the lock's
/// own checks: its TTL (60 s) and the blocking query on its key (`watch_wait` 30 s) are far
/// longer. Then B takes the lock, with a fencing token lower than A's (tokens start low
/// again: documented), and A goes on working in the new history.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_lost_its_state_ends_watches_and_locks() {
    let http = free_port();
    let agent = Agent::start(temp_dir("state-loss"), http, "").await;
    let config = Config::builder()
        .endpoint(format!("http://127.0.0.1:{http}"))
        .request_timeout(Duration::from_secs(2))
        .connect_timeout(Duration::from_millis(500))
        .watch_wait(Duration::from_secs(30))
        .build()
        .unwrap();
    let a = ConsulStore::connect(config.clone()).await.unwrap();
    let b = ConsulStore::connect(config.clone()).await.unwrap();
    let c = ConsulStore::connect(config).await.unwrap();

    // Raise the index well above what the fresh agent will reach.
    for i in 0..30 {
        a.put("filler", format!("{i}").into(), WriteOptions::default())
            .await
            .unwrap();
    }
    let mut lock = a
        .new_lock("lock", LockOptions::default().ttl(Duration::from_secs(60)))
        .await
        .unwrap();
    let lease = lock.lock().await.unwrap();
    a.put("watched", "before".into(), WriteOptions::default())
        .await
        .unwrap();
    let mut watch = a.watch("watched", ReadOptions::default()).await.unwrap();
    assert_eq!(
        watch.next().await.unwrap().unwrap().unwrap().value,
        "before"
    );
    c.put("dir/x", "before".into(), WriteOptions::default())
        .await
        .unwrap();
    let mut tree = c.watch_tree("dir", ReadOptions::default()).await.unwrap();
    assert_eq!(tree.next().await.unwrap().unwrap().len(), 1);
    assert!(
        b.get("lock", ReadOptions::default())
            .await
            .unwrap()
            .is_some(),
        "B sees A's lock"
    );
    assert_eq!(a.state_losses(), 0);

    let (dir, http) = agent.stop();
    let agent = Agent::start(dir, http, "").await;
    let restarted = Instant::now();

    // A's watch ends with an error, never with a state of the new history.
    let item = tokio::time::timeout(Duration::from_secs(10), watch.next())
        .await
        .expect("A's watch reports the lost state within 10 s");
    match item {
        Some(Err(error)) => {
            let message = error.to_string();
            assert!(message.contains("lost its state"), "{message}");
            assert!(message.contains("went backwards"), "{message}");
        }
        other => panic!("A's watch went on with the new agent's state: {other:?}"),
    }
    assert!(watch.next().await.is_none(), "the error is the last item");
    // A's lock is lost.
    let state = tokio::time::timeout(
        Duration::from_secs(10).saturating_sub(restarted.elapsed()),
        lease.lost(),
    )
    .await
    .expect("A's lease reports the loss within 10 s");
    assert_eq!(state, LockState::Lost);
    // C's tree watch too (a listing's index may fall on a healthy store, when tombstones are
    // reaped: C checks the store's own index before concluding).
    let item = tokio::time::timeout(Duration::from_secs(10), tree.next())
        .await
        .expect("C's tree watch reports the lost state within 10 s");
    match item {
        Some(Err(error)) => assert!(error.to_string().contains("lost its state"), "{error}"),
        other => panic!("C's tree watch went on with the new agent's state: {other:?}"),
    }
    eprintln!(
        "watches ended and lock lost {:?} after the restart",
        restarted.elapsed()
    );
    assert_eq!(a.state_losses(), 1);
    assert_eq!(c.state_losses(), 1);
    assert!(matches!(lock.unlock().await, Err(Error::LockLost { .. })));

    // B takes the lock; its fencing token is lower than A's was.
    let mut lock_b = b
        .new_lock("lock", LockOptions::default().ttl(Duration::from_secs(60)))
        .await
        .unwrap();
    let lease_b = tokio::time::timeout(Duration::from_secs(10), lock_b.lock())
        .await
        .expect("B takes the lock")
        .unwrap();
    assert!(
        lease_b.fencing_token() < lease.fencing_token(),
        "{} after {}: fencing tokens start low again after a lost state",
        lease_b.fencing_token(),
        lease.fencing_token()
    );
    assert!(lease_b.is_held());

    // A works on in the new history: a new watch follows it, and locks can be taken again.
    let mut watch = a.watch("watched", ReadOptions::default()).await.unwrap();
    assert_eq!(watch.next().await.unwrap().unwrap(), None);
    a.put("watched", "after".into(), WriteOptions::default())
        .await
        .unwrap();
    let item = tokio::time::timeout(Duration::from_secs(5), watch.next())
        .await
        .expect("the new watch follows the new agent");
    assert_eq!(item.unwrap().unwrap().unwrap().value, "after");
    lock_b.unlock().await.unwrap();
    let lease = tokio::time::timeout(Duration::from_secs(10), lock.lock())
        .await
        .expect("A takes the lock again")
        .unwrap();
    assert!(lease.is_held());
    assert_eq!(a.state_losses(), 1, "one loss, noticed once");
    lock.unlock().await.unwrap();

    drop(watch);
    drop(tree);
    for store in [&a, &b, &c] {
        Store::close(store).await.unwrap();
        assert_eq!(store.background_tasks(), 0);
    }
    drop(agent);
}
