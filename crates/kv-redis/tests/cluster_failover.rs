//! Redis Cluster failover (`scripts/servers up redis-cluster`): the primary serving a watched
//! key is killed (SIGKILL); its replica takes over. Writes fail with a transient error while
//! the slot has no primary and succeed again on the same handle; `watch` and `watch_tree`
//! deliver the final state (or end with an `Err`), never hang. The killed member is restarted
//! at the end (it rejoins as a replica), also when the test fails.

use std::time::{Duration, Instant};

use futures::StreamExt;
use kv_core::{ReadOptions, Store, WriteOptions};
use kv_redis::{Config, RedisStore};
use kv_test_support::cluster::Cluster;

/// How long the cluster may take to promote a replica and the watches to catch up.
const RECOVERY_LIMIT: Duration = Duration::from_secs(30);

/// Restarts the killed member when dropped, so a failing test leaves the cluster whole.
struct RestartOnDrop {
    cluster: Cluster,
    member: Option<String>,
}

impl Drop for RestartOnDrop {
    fn drop(&mut self) {
        if let Some(member) = self.member.take() {
            self.cluster.restart(&member);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_survive_a_primary_failover() {
    let url = kv_test_support::env("KV_TEST_REDIS_CLUSTER_URL");
    let n: u64 = rand::random();
    let mut config = Config::from_url(&url).expect("KV_TEST_REDIS_CLUSTER_URL parses");
    config.namespace = format!("failover-{n:016x}/");
    config.request_timeout = Duration::from_secs(2);
    let cluster = Cluster::REDIS_CLUSTER;
    run(
        config,
        |slot| cluster.leader_of(&slot.to_string()),
        |member| {
            cluster.kill(member);
            RestartOnDrop {
                cluster,
                member: Some(member.to_owned()),
            }
        },
    )
    .await;
}

/// The scenario: `leader_of(slot)` names the primary of a slot, `kill(member)` kills it and
/// returns what restarts it when dropped.
pub async fn run<G>(config: Config, leader_of: impl Fn(u16) -> String, kill: impl Fn(&str) -> G) {
    let store = RedisStore::connect(config.clone()).await.expect("connect");
    let watcher = RedisStore::connect(config).await.expect("connect");
    let keys: Vec<String> = (0..30).map(|i| format!("dir/k{i:02}")).collect();
    for key in &keys {
        store
            .put(key, "before".into(), WriteOptions::default())
            .await
            .unwrap();
    }
    let victim_key = &keys[0];
    let slot = fred::util::redis_keyslot(store.value_key(victim_key).as_bytes());
    let mut tree = watcher
        .watch_tree("dir", ReadOptions::default())
        .await
        .unwrap();
    let mut watch = watcher
        .watch(victim_key, ReadOptions::default())
        .await
        .unwrap();
    let all = |snapshot: &[kv_core::KvPair], value: &str| {
        snapshot.len() == keys.len() && snapshot.iter().all(|p| p.value == value)
    };
    let first = tree.next().await.unwrap().unwrap();
    assert!(all(&first, "before"), "{first:?}");
    assert_eq!(
        watch.next().await.unwrap().unwrap().unwrap().value,
        "before"
    );

    // A replica that has not finished syncing (e.g. a member restarted by an earlier test)
    // refuses to fail over (`cluster-replica-validity-factor`): start from a replica in sync.
    wait_for_a_synced_replica(&store, slot).await;
    let member = leader_of(slot);
    let killed_at = Instant::now();
    let restart = kill(&member);
    eprintln!("killed member {member}, primary of slot {slot}");

    // Writes: transient errors while the slot has no primary, then success on this handle.
    let mut transient = 0;
    for key in &keys {
        loop {
            match store
                .put(key, "after".into(), WriteOptions::default())
                .await
            {
                Ok(()) => break,
                Err(error) if error.is_transient() => {
                    transient += 1;
                    assert!(
                        killed_at.elapsed() < RECOVERY_LIMIT,
                        "writes still fail {RECOVERY_LIMIT:?} after the kill: {error}"
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(error) => panic!("a write failed with a non-transient error: {error}"),
            }
        }
    }
    let writable = killed_at.elapsed();
    eprintln!("writes succeed again {writable:?} after the kill ({transient} transient errors)");

    // The watches: the final state, or an Err that ends the stream.
    let tree_outcome = tokio::time::timeout(RECOVERY_LIMIT, async {
        loop {
            match tree.next().await {
                Some(Ok(snapshot)) if all(&snapshot, "after") => return "final state",
                Some(Ok(_)) => {}
                Some(Err(error)) => {
                    eprintln!("watch_tree ended with {error}");
                    assert!(tree.next().await.is_none(), "an Err ends the stream");
                    return "Err";
                }
                None => panic!("watch_tree ended without an Err"),
            }
        }
    })
    .await
    .expect("watch_tree delivers the final state or an Err, never hangs");
    let key_outcome = tokio::time::timeout(RECOVERY_LIMIT, async {
        loop {
            match watch.next().await {
                Some(Ok(Some(pair))) if pair.value == "after" => return "final state",
                Some(Ok(_)) => {}
                Some(Err(error)) => {
                    eprintln!("watch ended with {error}");
                    assert!(watch.next().await.is_none(), "an Err ends the stream");
                    return "Err";
                }
                None => panic!("watch ended without an Err"),
            }
        }
    })
    .await
    .expect("watch delivers the final state or an Err, never hangs");
    eprintln!(
        "watch_tree: {tree_outcome}, watch: {key_outcome}, {:?} after the kill",
        killed_at.elapsed()
    );

    // The same handles keep working.
    assert_eq!(
        watcher
            .list("dir", ReadOptions::default())
            .await
            .unwrap()
            .len(),
        keys.len()
    );
    store.delete_tree("dir").await.unwrap();
    drop((tree, watch));
    watcher.close().await.unwrap();
    store.close().await.unwrap();
    drop(restart);
}

/// Waits (bounded) until the primary of `slot` reports a replica `online` (in sync).
async fn wait_for_a_synced_replica(store: &RedisStore, slot: u16) {
    use fred::prelude::ClientLike;
    let options = fred::types::config::Options {
        cluster_hash: Some(fred::types::ClusterHash::Custom(slot)),
        ..Default::default()
    };
    let started = Instant::now();
    loop {
        let info: String = store
            .client()
            .with_options(&options)
            .info(Some(fred::types::InfoKind::Replication))
            .await
            .unwrap_or_default();
        if info
            .lines()
            .any(|l| l.starts_with("slave") && l.contains("state=online"))
        {
            return;
        }
        assert!(
            started.elapsed() < RECOVERY_LIMIT,
            "the primary of slot {slot} has no replica in sync:\n{info}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
