//! Redis replication is asynchronous; `wait_for_replicas` (`WAIT`) is the setting that makes a
//! write count only once replicas have it. Measured on the Sentinel deployment
//! `scripts/servers up redis-sentinel` runs (primary + 2 replicas + 3 Sentinels):
//!
//! * without `WAIT`: both replicas frozen (SIGSTOP), a write is acknowledged, the primary is
//!   killed (SIGKILL), the replicas resume and Sentinel promotes one — the acknowledged write
//!   is gone;
//! * with `WAIT 1`: the same sequence answers the write with `Timeout` (may have taken effect)
//!   instead of an acknowledgement;
//! * with `WAIT 1` and no frozen replica: every write acknowledged before, during and after a
//!   failover is still there afterwards.
//!
//! The killed member is restarted at the end of each test (it rejoins as a replica), also when
//! the test fails. The tests take turns: each one fails the deployment over.

use std::time::{Duration, Instant};

use bytes::Bytes;
use fred::prelude::ClientLike;
use kv_core::{Error, ReadOptions, Store, WriteOptions};
use kv_redis::{Config, RedisStore};
use kv_test_support::cluster::Cluster;

/// One failover at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Bound of each wait (failover, reconnection, replicas in sync).
const LIMIT: Duration = Duration::from_secs(60);

const REDIS_MEMBERS: [&str; 3] = ["1", "2", "3"];

/// Undoes what a test did to the deployment when dropped: resumes paused members, restarts
/// the killed one.
struct Repair {
    paused: Vec<String>,
    killed: Option<String>,
}

impl Drop for Repair {
    fn drop(&mut self) {
        let cluster = Cluster::REDIS_SENTINEL;
        for member in self.paused.drain(..) {
            cluster.resume(&member);
        }
        if let Some(member) = self.killed.take() {
            cluster.restart(&member);
        }
    }
}

fn config(wait: Option<u32>) -> Config {
    let url = kv_test_support::env("KV_TEST_REDIS_SENTINEL_URL");
    let n: u64 = rand::random();
    assert!(
        !url.contains('?'),
        "KV_TEST_REDIS_SENTINEL_URL has no query"
    );
    let url = match wait {
        Some(replicas) => format!("{url}?wait_replicas={replicas}&wait_timeout_ms=500"),
        None => url,
    };
    let mut config = Config::from_url(&url).expect("KV_TEST_REDIS_SENTINEL_URL parses");
    config.namespace = format!("sentinel-wait-{n:016x}/");
    config.request_timeout = Duration::from_secs(2);
    config
}

/// Waits until the primary reports both replicas `online`, so that each run starts from a
/// deployment whose replicas can be promoted.
async fn wait_for_synced_replicas(store: &RedisStore) {
    let started = Instant::now();
    loop {
        let info: String = store
            .client()
            .info(Some(fred::types::InfoKind::Replication))
            .await
            .unwrap_or_default();
        let online = info
            .lines()
            .filter(|l| l.starts_with("slave") && l.contains("state=online"))
            .count();
        if info.contains("role:master") && online == 2 {
            return;
        }
        assert!(
            started.elapsed() < LIMIT,
            "the primary has not 2 replicas in sync:\n{info}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until Sentinel names another primary than `old`, then until `store` reads `key`
/// again; returns what it read and the time since `since`.
async fn after_failover(
    store: &RedisStore,
    old: &str,
    key: &str,
    since: Instant,
) -> (Option<Bytes>, Duration) {
    let cluster = Cluster::REDIS_SENTINEL;
    loop {
        let now = tokio::task::spawn_blocking(move || cluster.leader())
            .await
            .unwrap();
        if now != old && REDIS_MEMBERS.contains(&now.as_str()) {
            break;
        }
        assert!(since.elapsed() < LIMIT, "no failover within {LIMIT:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    loop {
        match store.get(key, ReadOptions::default()).await {
            Ok(found) => return (found.map(|p| p.value), since.elapsed()),
            Err(error) if error.is_transient() => {
                assert!(
                    since.elapsed() < LIMIT,
                    "the store does not read again: {error}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(error) => panic!("read after the failover: {error}"),
        }
    }
}

/// Freezes both replicas, writes `key`, kills the primary, resumes the replicas, waits for
/// the failover; returns the write's result and what the key reads afterwards.
async fn write_while_replicas_frozen(
    wait: Option<u32>,
) -> (kv_core::Result<()>, Option<Bytes>, Repair) {
    let cluster = Cluster::REDIS_SENTINEL;
    let store = RedisStore::connect(config(wait))
        .await
        .expect("connect through Sentinel");
    wait_for_synced_replicas(&store).await;
    let primary = cluster.leader();
    let replicas: Vec<String> = REDIS_MEMBERS
        .iter()
        .filter(|m| **m != primary)
        .map(|m| m.to_string())
        .collect();
    let mut repair = Repair {
        paused: Vec::new(),
        killed: None,
    };
    for replica in &replicas {
        cluster.pause(replica);
        repair.paused.push(replica.clone());
    }
    // A frozen replica's kernel still receives the replication stream into its socket buffer
    // and reads it on SIGCONT: the primary must also drop its replica links, so that the
    // write stays in the primary alone ("the primary dies before its replicas copy it").
    let dropped: i64 = store
        .client()
        .custom(
            fred::types::CustomCommand::new_static(
                "CLIENT",
                fred::types::ClusterHash::Random,
                false,
            ),
            vec!["KILL", "TYPE", "replica"],
        )
        .await
        .expect("CLIENT KILL TYPE replica");
    assert_eq!(dropped, 2, "the primary had two replica links");
    let written = store
        .put("k", "acknowledged?".into(), WriteOptions::default())
        .await;
    let killed_at = Instant::now();
    cluster.kill(&primary);
    repair.killed = Some(primary.clone());
    for replica in repair.paused.drain(..) {
        cluster.resume(&replica);
    }
    let (value, took) = after_failover(&store, &primary, "k", killed_at).await;
    eprintln!(
        "wait={wait:?}: write {written:?}; after the failover ({took:?}) the key reads {value:?}"
    );
    store.close().await.unwrap();
    (written, value, repair)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_wait_an_acknowledged_write_is_lost_in_a_failover() {
    let _turn = SERIAL.lock().await;
    let (written, value, repair) = write_while_replicas_frozen(None).await;
    written.expect("without WAIT the primary acknowledges the write");
    assert_eq!(
        value, None,
        "the acknowledged write never reached a replica, so the promoted one lacks it"
    );
    drop(repair);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_wait_the_same_write_is_not_acknowledged() {
    let _turn = SERIAL.lock().await;
    let (written, _value, repair) = write_while_replicas_frozen(Some(1)).await;
    assert!(
        matches!(written, Err(Error::Timeout { .. })),
        "no replica confirmed: Timeout (may have taken effect), not {written:?}"
    );
    drop(repair);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_wait_no_acknowledged_write_is_lost_in_a_failover() {
    let _turn = SERIAL.lock().await;
    let cluster = Cluster::REDIS_SENTINEL;
    let store = RedisStore::connect(config(Some(1)))
        .await
        .expect("connect through Sentinel");
    wait_for_synced_replicas(&store).await;
    let primary = cluster.leader();
    let mut repair = Repair {
        paused: Vec::new(),
        killed: None,
    };
    // A writer puts k0, k1, … one after the other, through the failover, and remembers
    // which writes were acknowledged.
    let writer = {
        let store = store.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let (mut acknowledged, mut uncertain) = (Vec::new(), 0);
            let mut i = 0;
            while started.elapsed() < Duration::from_secs(12) {
                let key = format!("k{i}");
                match store
                    .put(&key, format!("v{i}").into(), WriteOptions::default())
                    .await
                {
                    Ok(()) => {
                        acknowledged.push(i);
                        // A few thousand keys, not tens of thousands.
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                    Err(error) if error.is_transient() => {
                        uncertain += 1;
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    Err(error) => panic!("put {key}: {error}"),
                }
                i += 1;
            }
            (acknowledged, uncertain)
        })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    let killed_at = Instant::now();
    cluster.kill(&primary);
    repair.killed = Some(primary.clone());
    let (_, took) = after_failover(&store, &primary, "k0", killed_at).await;
    let (acknowledged, uncertain) = writer.await.unwrap();
    let mut lost = Vec::new();
    for i in &acknowledged {
        let key = format!("k{i}");
        match store.get(&key, ReadOptions::default()).await.unwrap() {
            Some(pair) if pair.value == format!("v{i}") => {}
            other => lost.push((key, other.map(|p| p.value))),
        }
    }
    eprintln!(
        "WAIT 1: {} writes acknowledged, {uncertain} answered with a transient error, {} lost; \
         failover took {took:?}",
        acknowledged.len(),
        lost.len()
    );
    assert!(
        acknowledged.len() > 10,
        "the writer made progress: {acknowledged:?}"
    );
    assert!(lost.is_empty(), "acknowledged writes lost: {lost:?}");
    store.close().await.unwrap();
    let mut cleanup = config(None);
    cleanup.namespace = store.config().namespace.clone();
    cleanup.request_timeout = Duration::from_secs(30);
    let cleanup = RedisStore::connect(cleanup).await.unwrap();
    cleanup.delete_tree("").await.unwrap();
    cleanup.close().await.unwrap();
    drop(repair);
}
