//! Redis Cluster (`KV_TEST_REDIS_CLUSTER_URL`, `scripts/servers up redis-cluster`): the shared
//! conformance suite, and what only a cluster has — keys on every primary listed, deleted and
//! watched, transactions confined to one hash slot. (The failover test is in
//! `cluster_failover.rs`: it kills a primary, which would disturb these tests if they shared a
//! test binary and so ran at the same time.)

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kv_core::{Error, ReadOptions, Result, Store, Transaction, WriteOptions};
use kv_redis::{Config, RedisStore, Topology};

const URL_VAR: &str = "KV_TEST_REDIS_CLUSTER_URL";

/// Independent handles on the cluster.
struct Factory {
    config: Config,
}

impl Factory {
    /// The conformance suite's transactions name several keys of one case; a cluster runs a
    /// transaction on one hash slot only, so the suite's namespace carries a hash tag (the
    /// documented way to co-locate keys). The tests below use untagged namespaces, whose keys
    /// spread over every primary.
    fn conformance() -> Self {
        let url = kv_test_support::env(URL_VAR);
        let mut config = Config::from_url(&url).expect("KV_TEST_REDIS_CLUSTER_URL parses");
        assert_eq!(
            config.topology,
            Topology::Cluster,
            "{URL_VAR} is a redis+cluster:// URL"
        );
        config.namespace = "conformance{cluster}/".into();
        Factory { config }
    }
}

#[async_trait::async_trait]
impl kv_conformance::StoreFactory for Factory {
    async fn connect(&self) -> Result<Arc<dyn Store>> {
        Ok(Arc::new(RedisStore::connect(self.config.clone()).await?))
    }
}

mod conformance {
    use super::Factory;
    kv_conformance::conformance_tests!(Factory::conformance());
}

/// A handle whose namespace (no hash tag) is new: its keys hash all over the cluster.
async fn spread_store(case: &str) -> RedisStore {
    let n: u64 = rand::random();
    let url = kv_test_support::env(URL_VAR);
    let mut config = Config::from_url(&url).expect("KV_TEST_REDIS_CLUSTER_URL parses");
    config.namespace = format!("{case}-{n:016x}/");
    RedisStore::connect(config)
        .await
        .expect("connect to the Redis Cluster")
}

/// The primaries (`host:port`) serving `keys` (full Redis keys), as the client's cluster
/// layout says.
fn primaries_of(store: &RedisStore, keys: &[String]) -> BTreeSet<String> {
    use fred::prelude::ClusterInterface;
    let state = store
        .client()
        .cached_cluster_state()
        .expect("a cluster client knows the layout");
    keys.iter()
        .map(|k| {
            let slot = fred::util::redis_keyslot(k.as_bytes());
            let server = state.get_server(slot).expect("every slot is served");
            format!("{}:{}", server.host, server.port)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_on_every_primary_are_listed_deleted_and_watched() {
    let store = spread_store("spread").await;
    // A second handle on the same namespace.
    let watcher = RedisStore::connect(store.config().clone()).await.unwrap();
    let keys: Vec<String> = (0..60).map(|i| format!("dir/k{i:02}")).collect();
    let full: Vec<String> = keys.iter().map(|k| store.value_key(k)).collect();
    let primaries = primaries_of(&store, &full);
    assert!(
        primaries.len() >= 3,
        "60 keys should land on every one of the 3 primaries, got {primaries:?}"
    );

    let mut tree = watcher
        .watch_tree("dir", ReadOptions::default())
        .await
        .expect("watch_tree on a cluster");
    let first = tokio::time::timeout(Duration::from_secs(10), tree.next())
        .await
        .expect("the first snapshot arrives")
        .expect("the stream is open")
        .expect("the first snapshot is no error");
    assert!(first.is_empty());

    for key in &keys {
        store
            .put(key, format!("v-{key}").into(), WriteOptions::default())
            .await
            .unwrap();
    }
    // Every key, from every primary, reaches the watch.
    let complete = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let snapshot = tree.next().await.expect("open").expect("no error");
            if snapshot.len() == keys.len() {
                return snapshot;
            }
        }
    })
    .await
    .expect("watch_tree shows all 60 keys");
    for (pair, key) in complete.iter().zip(&keys) {
        assert_eq!(&pair.key, key);
        assert_eq!(pair.value, format!("v-{key}"));
    }

    let listed = watcher.list("dir", ReadOptions::default()).await.unwrap();
    assert_eq!(
        listed.iter().map(|p| p.key.clone()).collect::<Vec<_>>(),
        keys,
        "list reads every primary"
    );

    store.delete_tree("dir").await.unwrap();
    assert!(
        watcher
            .list("dir", ReadOptions::default())
            .await
            .unwrap()
            .is_empty(),
        "delete_tree reaches every primary"
    );
    for key in &full {
        let exists: i64 = fred::prelude::KeysInterface::exists(store.client(), key.as_str())
            .await
            .unwrap();
        assert_eq!(exists, 0, "{key} is gone");
    }
    tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let snapshot = tree.next().await.expect("open").expect("no error");
            if snapshot.is_empty() {
                return;
            }
        }
    })
    .await
    .expect("watch_tree sees every deletion");
    drop(tree);
    watcher.close().await.unwrap();
    store.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_and_locks_on_every_primary() {
    let store = spread_store("keys").await;
    let other = RedisStore::connect(store.config().clone()).await.unwrap();
    // One key per primary.
    let mut chosen: Vec<String> = Vec::new();
    let mut seen = BTreeSet::new();
    for i in 0..200 {
        let key = format!("w{i}");
        let primary = primaries_of(&store, &[store.value_key(&key)]);
        if seen.insert(primary.into_iter().next().unwrap()) {
            chosen.push(key);
        }
    }
    assert!(chosen.len() >= 3, "keys for 3 primaries: {chosen:?}");
    for key in &chosen {
        let mut watch = other.watch(key, ReadOptions::default()).await.unwrap();
        assert_eq!(watch.next().await.unwrap().unwrap(), None);
        store
            .put(key, "x".into(), WriteOptions::default())
            .await
            .unwrap();
        let seen = tokio::time::timeout(Duration::from_secs(10), watch.next())
            .await
            .unwrap_or_else(|_| panic!("the watch of {key} sees the put"))
            .unwrap()
            .unwrap()
            .expect("present");
        assert_eq!(seen.value, "x");

        // A waiting locker is woken by the release, wherever the key lives.
        let lock_key = format!("{key}-lock");
        let mut held = store
            .new_lock(&lock_key, kv_core::LockOptions::default())
            .await
            .unwrap();
        let token = held.lock().await.unwrap().fencing_token();
        let waiter = other
            .new_lock(&lock_key, kv_core::LockOptions::default())
            .await
            .unwrap();
        let waiting = tokio::spawn(async move {
            let mut waiter = waiter;
            let acquired = waiter.lock().await.map(|a| a.fencing_token());
            (waiter, acquired)
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        held.unlock().await.unwrap();
        let (mut waiter, acquired) = tokio::time::timeout(Duration::from_secs(10), waiting)
            .await
            .expect("the waiter gets the lock")
            .unwrap();
        assert!(acquired.unwrap() > token, "fencing tokens rise");
        waiter.unlock().await.unwrap();
    }
    other.close().await.unwrap();
    store.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_stay_in_one_slot() {
    let store = spread_store("txn").await;
    assert!(store.capabilities().transaction_keys_share_a_shard);
    // Keys sharing a hash tag share a slot: committed.
    let done = store
        .transaction(
            Transaction::new()
                .put(
                    "orders/{42}/total",
                    bytes::Bytes::from("10"),
                    WriteOptions::default(),
                )
                .put(
                    "orders/{42}/lines",
                    bytes::Bytes::from("1"),
                    WriteOptions::default(),
                ),
        )
        .await
        .expect("a one-slot transaction commits");
    assert_eq!(done.len(), 2);
    // Keys in two slots: refused before anything is sent.
    let (a, b) = ("plain/a", "plain/b");
    assert_ne!(
        fred::util::redis_keyslot(store.value_key(a).as_bytes()),
        fred::util::redis_keyslot(store.value_key(b).as_bytes())
    );
    let refused = store
        .transaction(
            Transaction::new()
                .put(a, bytes::Bytes::from("1"), WriteOptions::default())
                .put(b, bytes::Bytes::from("2"), WriteOptions::default()),
        )
        .await;
    assert!(
        matches!(refused, Err(Error::InvalidOption(_))),
        "{refused:?}"
    );
    for key in [a, b] {
        assert!(
            store
                .get(key, ReadOptions::default())
                .await
                .unwrap()
                .is_none()
        );
    }
    store.delete_tree("").await.unwrap();
    store.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_list_with_a_dead_node_still_connects() {
    // The first seed refuses connections; discovery goes on with the others.
    let url = kv_test_support::env(URL_VAR);
    let rest = url
        .strip_prefix("redis+cluster://")
        .expect("a redis+cluster:// URL");
    let dead = kv_test_support::free_port();
    let store = RedisStore::connect_url(&format!("redis+cluster://127.0.0.1:{dead},{rest}"))
        .await
        .expect("a dead seed is skipped");
    store
        .put("seed-check", "ok".into(), WriteOptions::default())
        .await
        .unwrap();
    assert!(store.delete("seed-check").await.unwrap());
    store.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_for_replicas_on_every_primary() {
    let url = kv_test_support::env(URL_VAR);
    let n: u64 = rand::random();
    // Each primary has one replica: WAIT 1 confirms every write, wherever its slot is.
    let store = RedisStore::connect_url(&format!(
        "{url}?namespace=wait-{n:016x}&wait_replicas=1&wait_timeout_ms=2000"
    ))
    .await
    .unwrap();
    for i in 0..12 {
        let key = format!("k{i}");
        store
            .put(&key, "v".into(), WriteOptions::default())
            .await
            .unwrap();
        let pair = store
            .get(&key, ReadOptions::default())
            .await
            .unwrap()
            .unwrap();
        store
            .atomic_put(&key, "w".into(), Some(&pair), WriteOptions::default())
            .await
            .unwrap();
    }
    let mut lock = store
        .new_lock("lock", kv_core::LockOptions::default())
        .await
        .unwrap();
    lock.lock().await.unwrap();
    lock.unlock().await.unwrap();
    store.delete_tree("").await.unwrap();
    store.close().await.unwrap();

    // Two replicas never confirm: the write took effect on the primary, the call says
    // Timeout (may have taken effect).
    let store = RedisStore::connect_url(&format!(
        "{url}?namespace=wait2-{n:016x}&wait_replicas=2&wait_timeout_ms=200"
    ))
    .await
    .unwrap();
    let outcome = store.put("k", "v".into(), WriteOptions::default()).await;
    assert!(matches!(outcome, Err(Error::Timeout { .. })), "{outcome:?}");
    assert!(
        store.delete("k").await.is_err(),
        "the delete is not confirmed either"
    );
    store.close().await.unwrap();
    let cleanup = RedisStore::connect_url(&format!("{url}?namespace=wait2-{n:016x}"))
        .await
        .unwrap();
    cleanup.delete_tree("").await.unwrap();
    cleanup.close().await.unwrap();
}
