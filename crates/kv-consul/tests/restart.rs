//! Failure modes that need a server this test may stop: a private Consul dev agent (the binary
//! `scripts/servers install consul` builds) on free ports, killed and restarted under a watch,
//! a waiting lock and a held lock.

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
    let seen = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match watch.next().await {
                Some(Ok(Some(pair))) if pair.value == "after" => return pair,
                Some(Ok(_)) => continue,
                other => panic!("watch ended: {other:?}"),
            }
        }
    })
    .await
    .expect("the watch caught up with the new agent");
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
