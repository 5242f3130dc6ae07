//! What only the ZooKeeper backend has: its storage layout as other clients see it, TTL nodes
//! the server has not swept yet, multi-op atomicity of `delete_tree`, its limits, its failure
//! modes, session expiry, and background tasks ending.

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use kv_core::{Error, LockOptions, LockState, ReadOptions, Store, WriteOptions};
use kv_zookeeper::{Config, MAX_VALUE_LEN, ZookeeperStore};
use zookeeper_client as zk;

fn endpoints() -> String {
    std::env::var("KV_TEST_ZOOKEEPER_ENDPOINTS").unwrap_or_else(|_| {
        panic!(
            "KV_TEST_ZOOKEEPER_ENDPOINTS not set: run the README test command or `eval \"$(scripts/servers env)\"`"
        )
    })
}

fn unique(name: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("zk-{name}-{nanos:x}")
}

/// A store in its own namespace, so that zxid arithmetic and raw inspection are not disturbed.
async fn store_in(namespace: &str) -> ZookeeperStore {
    let config = Config::builder()
        .endpoints([endpoints()])
        .namespace(namespace)
        .build()
        .unwrap();
    ZookeeperStore::connect(config).await.unwrap()
}

async fn raw() -> zk::Client {
    zk::Client::connect(&endpoints()).await.unwrap()
}

/// Serialises the tests that count zxids (every write anywhere on the server bumps them).
static ZXID_GATE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn layout_is_plain_for_other_clients() {
    let ns = unique("layout");
    let store = store_in(&ns).await;
    let zk = raw().await;
    store
        .put("a/b", "plain value".into(), WriteOptions::default())
        .await
        .unwrap();
    store
        .put("a", "parent value".into(), WriteOptions::default())
        .await
        .unwrap();
    store
        .put("emoji/😀", "smile".into(), WriteOptions::default())
        .await
        .unwrap();

    // The value is the node's data, byte for byte (what `zkCli get /<ns>/a/b` prints).
    let (data, stat) = zk.get_data(&format!("/{ns}/a/b")).await.unwrap();
    assert_eq!(data, b"plain value");
    let pair = store
        .get("a/b", ReadOptions::default())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        pair.last_index, stat.mzxid as u64,
        "last_index is the node's mzxid"
    );
    // The marker beside the value says "written"; a parent keeps its own value.
    let (marker, marker_stat) = zk.get_data(&format!("/{ns}/a/b/__kv")).await.unwrap();
    assert!(marker.is_empty(), "a permanent key's marker is empty");
    assert_eq!(
        marker_stat.czxid, stat.mzxid,
        "the marker is re-created by every write"
    );
    assert_eq!(
        zk.get_data(&format!("/{ns}/a")).await.unwrap().0,
        b"parent value"
    );
    let mut children = zk.list_children(&format!("/{ns}/a")).await.unwrap();
    children.sort();
    assert_eq!(children, ["__kv", "b"]);
    // Characters ZooKeeper refuses are escaped in the node name only.
    assert_eq!(
        zk.get_data(&format!("/{ns}/emoji/\u{241A}01F600"))
            .await
            .unwrap()
            .0,
        b"smile"
    );
    assert_eq!(
        store.list("emoji", ReadOptions::default()).await.unwrap()[0].key,
        "emoji/😀"
    );

    // Deleting the parent key keeps the child and clears the parent's data.
    assert!(store.delete("a").await.unwrap());
    assert_eq!(store.get("a", ReadOptions::default()).await.unwrap(), None);
    assert_eq!(zk.get_data(&format!("/{ns}/a")).await.unwrap().0, b"");
    assert_eq!(
        store
            .get("a/b", ReadOptions::default())
            .await
            .unwrap()
            .unwrap()
            .value,
        Bytes::from("plain value")
    );
    // A plain ZooKeeper node without a marker (written by another client) is not a key of
    // ours, but a node another client writes the marker for is.
    zk.create(
        &format!("/{ns}/foreign"),
        b"x",
        &zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all()),
    )
    .await
    .unwrap();
    assert_eq!(
        store.get("foreign", ReadOptions::default()).await.unwrap(),
        None
    );
    zk.create(
        &format!("/{ns}/foreign/__kv"),
        b"",
        &zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all()),
    )
    .await
    .unwrap();
    assert_eq!(
        store
            .get("foreign", ReadOptions::default())
            .await
            .unwrap()
            .unwrap()
            .value,
        Bytes::from("x")
    );
    store.delete_tree("").await.unwrap();
    assert!(
        zk.list_children(&format!("/{ns}"))
            .await
            .unwrap()
            .is_empty()
    );
    store.close().await.unwrap();
}

/// A plain put over every state a key can be in writes the same layout: an overwrite of a
/// key of ours (one multi-op, no read first), a create, a key whose marker holds a lock's
/// owner (the lock is lost, the owner node goes), a node another program wrote without a
/// marker (it becomes a key), a TTL key made permanent and a permanent key given a TTL.
/// After each, the value is the node's data, `last_index` its `mzxid`, and the marker a
/// fresh one with no children.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_writes_one_layout_over_every_state() {
    let ns = unique("put-states");
    let store = store_in(&ns).await;
    let zk = raw().await;
    let check = |key: &'static str, value: &'static str| {
        let (store, zk, ns) = (&store, &zk, &ns);
        async move {
            let (data, stat) = zk.get_data(&format!("/{ns}/{key}")).await.unwrap();
            assert_eq!(data, value.as_bytes(), "{key}: the node's data");
            let (_, marker) = zk.get_data(&format!("/{ns}/{key}/__kv")).await.unwrap();
            assert_eq!(marker.czxid, stat.mzxid, "{key}: a fresh marker");
            assert!(marker_children(zk, ns, key).await.is_empty(), "{key}");
            let pair = store
                .get(key, ReadOptions::default())
                .await
                .unwrap()
                .unwrap_or_else(|| panic!("{key} is visible"));
            assert_eq!(pair.value, Bytes::from(value));
            assert_eq!(pair.last_index, stat.mzxid as u64);
            pair.last_index
        }
    };
    let put = |key: &'static str, value: &'static str, options: WriteOptions| {
        let store = &store;
        async move { store.put(key, value.into(), options).await.unwrap() }
    };

    // Create, then overwrite: the index rises each time.
    put("plain", "1", WriteOptions::default()).await;
    let first = check("plain", "1").await;
    put("plain", "2", WriteOptions::default()).await;
    let second = check("plain", "2").await;
    assert!(second > first);

    // A locked key: the put releases the lock (its owner node under the marker goes).
    let mut lock = store
        .new_lock("locked", LockOptions::default().value("held"))
        .await
        .unwrap();
    let lease = lock.lock().await.unwrap();
    assert!(!marker_children(&zk, &ns, "locked").await.is_empty());
    put("locked", "overwritten", WriteOptions::default()).await;
    check("locked", "overwritten").await;
    tokio::time::timeout(Duration::from_secs(6), lease.lost())
        .await
        .expect("the holder learns its lock is gone");

    // Another program's node without a marker becomes a key.
    zk.create(
        &format!("/{ns}/foreign"),
        b"theirs",
        &zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all()),
    )
    .await
    .unwrap();
    put("foreign", "ours", WriteOptions::default()).await;
    check("foreign", "ours").await;

    // A TTL key made permanent stays; a permanent key given a TTL goes.
    let ttl = WriteOptions::with_ttl(Duration::from_secs(2));
    put("was-ttl", "short", ttl.clone()).await;
    put("was-ttl", "permanent", WriteOptions::default()).await;
    put("gets-ttl", "permanent", WriteOptions::default()).await;
    put("gets-ttl", "short", ttl).await;
    check("gets-ttl", "short").await;
    tokio::time::sleep(Duration::from_secs(2) + store.capabilities().ttl_precision).await;
    check("was-ttl", "permanent").await;
    assert_eq!(
        store.get("gets-ttl", ReadOptions::default()).await.unwrap(),
        None,
        "the TTL given by the overwrite holds"
    );
    drop(lock);
    store.delete_tree("").await.unwrap();
    store.close().await.unwrap();
}

/// Expiry is judged on the server's clock: the handle measures it at connect with a probe
/// that leaves nothing behind. (Against the local test server the offset is about zero; the
/// kv-faults `skewed_clocks` scenario runs clients whose clocks are 30 s off.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_clock_is_measured_without_leftovers() {
    let ns = unique("clock");
    let store = store_in(&ns).await;
    let (offset, error) = store
        .server_clock_offset()
        .expect("the server's clock is sampled at connect");
    assert!((1..1000).contains(&error), "error bound {error} ms");
    assert!(
        offset.unsigned_abs() <= error + 1000,
        "the local server's clock is {offset} ms off"
    );
    let zk = raw().await;
    assert!(
        zk.list_children(&format!("/{ns}"))
            .await
            .unwrap()
            .is_empty(),
        "the clock probe leaves no node behind"
    );
    store.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttl_is_enforced_before_the_server_sweeps() {
    let ns = unique("ttl");
    let store = store_in(&ns).await;
    let zk = raw().await;
    store
        .put(
            "k",
            "short".into(),
            WriteOptions::with_ttl(Duration::from_secs(1)),
        )
        .await
        .unwrap();
    let (ttl, _) = zk.get_data(&format!("/{ns}/k/__kv")).await.unwrap();
    assert_eq!(ttl, b"1000", "a TTL marker records its TTL in milliseconds");
    // A child below the marker stops the server from ever deleting it (a TTL node is only
    // swept when childless): the node stays, and readers must still treat the key as gone.
    zk.create(
        &format!("/{ns}/k/__kv/pin"),
        b"",
        &zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all()),
    )
    .await
    .unwrap();
    let mut watch = store.watch("k", ReadOptions::default()).await.unwrap();
    assert!(watch.next().await.unwrap().unwrap().is_some());
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(
        zk.check_stat(&format!("/{ns}/k/__kv"))
            .await
            .unwrap()
            .is_some(),
        "not swept"
    );
    assert_eq!(store.get("k", ReadOptions::default()).await.unwrap(), None);
    assert!(
        store
            .list("", ReadOptions::default())
            .await
            .unwrap()
            .is_empty()
    );
    let expired = tokio::time::timeout(Duration::from_secs(1), watch.next())
        .await
        .unwrap();
    assert_eq!(
        expired.unwrap().unwrap(),
        None,
        "the watch timer reports the expiry"
    );
    // An expired key is absent for writers too, and a write makes it permanent again.
    assert!(matches!(
        store
            .atomic_delete("k", &kv_core::KvPair::new("k", "short", 1))
            .await,
        Err(Error::KeyNotFound { .. })
    ));
    zk.delete(&format!("/{ns}/k/__kv/pin"), None).await.unwrap();
    store
        .put("k", "forever".into(), WriteOptions::default())
        .await
        .unwrap();
    let (ttl, _) = zk.get_data(&format!("/{ns}/k/__kv")).await.unwrap();
    assert!(ttl.is_empty(), "permanent again");
    // The server sweeps a TTL marker once it is unmodified for its TTL.
    store
        .put(
            "swept",
            "v".into(),
            WriteOptions::with_ttl(Duration::from_secs(1)),
        )
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while zk
        .check_stat(&format!("/{ns}/swept/__kv"))
        .await
        .unwrap()
        .is_some()
    {
        assert!(
            Instant::now() < deadline,
            "the server never swept the TTL node"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    store.close().await.unwrap();
}

/// The zxid a fresh write gets now (every transaction on the server takes the next zxid).
async fn probe(store: &ZookeeperStore) -> u64 {
    store
        .put("probe", "p".into(), WriteOptions::default())
        .await
        .unwrap();
    store
        .get("probe", ReadOptions::default())
        .await
        .unwrap()
        .unwrap()
        .last_index
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_tree_is_one_transaction() {
    let ns = unique("atomic");
    let _gate = ZXID_GATE.lock().await;
    for (ops, expect_transactions) in [(1000usize, 1u64), (10, 0)] {
        let config = Config::builder()
            .endpoints([endpoints()])
            .namespace(&ns)
            .max_ops_per_multi(ops)
            .build()
            .unwrap();
        let store = ZookeeperStore::connect(config).await.unwrap();
        for i in 0..20 {
            store
                .put(
                    &format!("tree/d{}/k{i}", i % 4),
                    "v".into(),
                    WriteOptions::default(),
                )
                .await
                .unwrap();
        }
        store
            .put("tree", "root".into(), WriteOptions::default())
            .await
            .unwrap();
        // 20 keys + 20 markers + 4 directories + the tree key and its marker = 46 znodes.
        let batches = 46u64.div_ceil(ops as u64);
        let mut seen = Vec::new();
        // Other tests write concurrently on the same server: retry until a quiet window.
        for _ in 0..20 {
            let before = probe(&store).await;
            store.delete_tree("tree").await.unwrap();
            let after = probe(&store).await;
            seen.push(after - before);
            if after - before == batches + 1 {
                break;
            }
            for i in 0..20 {
                store
                    .put(
                        &format!("tree/d{}/k{i}", i % 4),
                        "v".into(),
                        WriteOptions::default(),
                    )
                    .await
                    .unwrap();
            }
            store
                .put("tree", "root".into(), WriteOptions::default())
                .await
                .unwrap();
        }
        assert!(
            seen.contains(&(batches + 1)),
            "delete_tree of 46 znodes with {ops} ops per multi took {batches} transaction(s); zxid gaps seen: {seen:?}"
        );
        if expect_transactions == 1 {
            assert_eq!(batches, 1);
        }
        assert!(
            store
                .list("", ReadOptions::default())
                .await
                .unwrap()
                .iter()
                .all(|p| p.key == "probe")
        );
        store.delete_tree("").await.unwrap();
        store.close().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn value_limit_is_the_servers() {
    let ns = unique("limit");
    let store = store_in(&ns).await;
    assert_eq!(store.capabilities().max_value_len, MAX_VALUE_LEN);
    let at_limit = Bytes::from(vec![7u8; MAX_VALUE_LEN]);
    store
        .put("big", at_limit.clone(), WriteOptions::default())
        .await
        .unwrap();
    store
        .atomic_put(
            "big2",
            at_limit.clone(),
            None,
            WriteOptions::with_ttl(Duration::from_secs(30)),
        )
        .await
        .unwrap();
    // Listing reads many nodes per multi-read: responses far above jute.maxbuffer are fine.
    for i in 3..=12 {
        store
            .put(
                &format!("big{i}"),
                at_limit.clone(),
                WriteOptions::default(),
            )
            .await
            .unwrap();
    }
    let listed = store.list("", ReadOptions::default()).await.unwrap();
    assert_eq!(listed.len(), 12);
    assert!(listed.iter().all(|p| p.value.len() == MAX_VALUE_LEN));
    assert!(matches!(
        store
            .put(
                "big",
                vec![0u8; MAX_VALUE_LEN + 1].into(),
                WriteOptions::default()
            )
            .await,
        Err(Error::ValueTooLarge { .. })
    ));
    // The declared limit is close to the server's: a raw write of 1 MiB is refused by the
    // server's jute.maxbuffer (the connection is dropped).
    let zk = raw().await;
    let refused = tokio::time::timeout(
        Duration::from_secs(10),
        zk.create(
            &format!("/{ns}/raw-too-big"),
            &vec![0u8; 1024 * 1024],
            &zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all()),
        ),
    )
    .await;
    assert!(
        !matches!(refused, Ok(Ok(_))),
        "the server accepted 1 MiB: raise MAX_VALUE_LEN"
    );
    store.delete_tree("").await.unwrap();
    store.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_endpoints_give_typed_errors_in_time() {
    // Nothing listens on port 1: refused at once.
    let refused = Config::builder()
        .endpoint("127.0.0.1:1")
        .connect_timeout(Duration::from_secs(3))
        .build()
        .unwrap();
    let started = Instant::now();
    let error = ZookeeperStore::connect(refused).await.unwrap_err();
    assert!(
        matches!(error, Error::Unavailable { .. } | Error::Timeout { .. }),
        "refused: {error:?}"
    );
    assert!(error.is_transient());
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    // A port that accepts but never answers the handshake: the connect timeout applies.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let config = Config::builder()
        .endpoint(format!("127.0.0.1:{port}"))
        .connect_timeout(Duration::from_millis(800))
        .build()
        .unwrap();
    let started = Instant::now();
    let error = ZookeeperStore::connect(config).await.unwrap_err();
    assert!(error.is_transient(), "silent: {error:?}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    drop(silent);
    // Bad settings are configuration errors, not connection attempts.
    let missing_ca = Config::from_url("zks://127.0.0.1:1?ca_file=/nonexistent/ca.pem").unwrap();
    assert!(matches!(
        ZookeeperStore::connect(missing_ca).await,
        Err(Error::Config(_))
    ));
    assert!(matches!(
        Config::from_url("zk://h:1/zookeeper"),
        Err(Error::Config(_))
    ));
    assert!(matches!(Config::builder().build(), Err(Error::Config(_))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_expiry_loses_locks_and_resumes_watches() {
    let ns = unique("expiry");
    let store = store_in(&ns).await;
    let other = store_in(&ns).await;
    let mut lock = store
        .new_lock(
            "lock",
            LockOptions::default()
                .value("me")
                .ttl(Duration::from_secs(30)),
        )
        .await
        .unwrap();
    let lease = lock.lock().await.unwrap();
    let mut watch = store
        .watch("watched", ReadOptions::default())
        .await
        .unwrap();
    assert_eq!(watch.next().await.unwrap().unwrap(), None);
    let mut tree = store
        .watch_tree("dir", ReadOptions::default())
        .await
        .unwrap();
    assert!(tree.next().await.unwrap().unwrap().is_empty());
    let session = store.session_id();

    store.expire_session_for_tests().await.unwrap();
    let state = tokio::time::timeout(Duration::from_secs(10), lease.lost())
        .await
        .unwrap();
    assert_eq!(
        state,
        LockState::Lost,
        "session expiry fires the lost signal"
    );

    // The store replaces the session on its next call, and the watches resume on it.
    other
        .put("watched", "after".into(), WriteOptions::default())
        .await
        .unwrap();
    other
        .put("dir/x", "after".into(), WriteOptions::default())
        .await
        .unwrap();
    let seen = tokio::time::timeout(Duration::from_secs(10), watch.next())
        .await
        .unwrap();
    assert_eq!(seen.unwrap().unwrap().unwrap().value, Bytes::from("after"));
    let seen = tokio::time::timeout(Duration::from_secs(10), tree.next())
        .await
        .unwrap();
    assert_eq!(seen.unwrap().unwrap().len(), 1);
    assert_ne!(store.session_id(), session, "a new session");
    assert_eq!(
        store
            .get("watched", ReadOptions::default())
            .await
            .unwrap()
            .unwrap()
            .value,
        Bytes::from("after")
    );
    // The lost lock is cleaned up by unlock, and can be taken again.
    assert!(matches!(lock.unlock().await, Err(Error::LockLost { .. })));
    assert_eq!(
        other.get("lock", ReadOptions::default()).await.unwrap(),
        None
    );
    let again = tokio::time::timeout(Duration::from_secs(5), lock.lock())
        .await
        .unwrap()
        .unwrap();
    assert!(again.fencing_token() > lease.fencing_token());
    lock.unlock().await.unwrap();
    store.delete_tree("").await.unwrap();
    store.close().await.unwrap();
    other.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_queue_is_fifo_and_lives_outside_the_tree() {
    let ns = unique("queue");
    let holder = store_in(&ns).await;
    let zk = raw().await;
    let mut first = holder.new_lock("q", LockOptions::default()).await.unwrap();
    first.lock().await.unwrap();
    // Three waiters, queued in order; each gets the lock in its turn.
    let order = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut waiters = Vec::new();
    for i in 0..3 {
        let store = store_in(&ns).await;
        let order = order.clone();
        waiters.push(tokio::spawn(async move {
            let mut lock = store.new_lock("q", LockOptions::default()).await.unwrap();
            lock.lock().await.unwrap();
            order.lock().unwrap().push(i);
            tokio::time::sleep(Duration::from_millis(50)).await;
            lock.unlock().await.unwrap();
            store.close().await.unwrap();
        }));
        // Let each waiter take its ticket before the next one.
        let queue = format!("/{ns}/__kvlocks/q");
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let tickets = zk.list_children(&queue).await.unwrap_or_default();
            if tickets.len() == i + 1 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "waiter {i} never queued: {tickets:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    // The queue is not part of the user's tree.
    let listed: Vec<String> = holder
        .list("", ReadOptions::default())
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.key)
        .collect();
    assert_eq!(listed, ["q"]);
    first.unlock().await.unwrap();
    for waiter in waiters {
        tokio::time::timeout(Duration::from_secs(10), waiter)
            .await
            .unwrap()
            .unwrap();
    }
    assert_eq!(
        *order.lock().unwrap(),
        [0, 1, 2],
        "first come, first served"
    );
    holder.delete_tree("").await.unwrap();
    holder.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn background_tasks_end_with_their_owners() {
    let ns = unique("tasks");
    let store = store_in(&ns).await;
    assert_eq!(store.background_tasks(), 0);
    let mut lock = store.new_lock("l", LockOptions::default()).await.unwrap();
    lock.lock().await.unwrap();
    let watch = store.watch("w", ReadOptions::default()).await.unwrap();
    let tree = store.watch_tree("", ReadOptions::default()).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(3);
    while store.background_tasks() != 3 {
        assert!(
            Instant::now() < deadline,
            "{} tasks, not 3 (a renewal, two watches)",
            store.background_tasks()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(watch);
    drop(tree);
    drop(lock);
    let deadline = Instant::now() + Duration::from_secs(3);
    while store.background_tasks() != 0 {
        assert!(
            Instant::now() < deadline,
            "{} tasks left",
            store.background_tasks()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        store.get("l", ReadOptions::default()).await.unwrap(),
        None,
        "dropped lock released"
    );
    // Closing stops what is still running.
    let mut lock = store.new_lock("l", LockOptions::default()).await.unwrap();
    lock.lock().await.unwrap();
    let _watch = store.watch("w", ReadOptions::default()).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(3);
    while store.background_tasks() != 2 {
        assert!(
            Instant::now() < deadline,
            "{} tasks, not 2",
            store.background_tasks()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    store.close().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(3);
    while store.background_tasks() != 0 {
        assert!(
            Instant::now() < deadline,
            "{} tasks left after close",
            store.background_tasks()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_and_watches_on_the_same_key_share_the_session() {
    let ns = unique("shared");
    let store = store_in(&ns).await;
    let intruder = store_in(&ns).await;
    let ttl = Duration::from_secs(30);
    let mut lock = store
        .new_lock("k", LockOptions::default().value("held").ttl(ttl))
        .await
        .unwrap();
    let lease = lock.lock().await.unwrap();
    // The user's own watches on the key and on its parent, from the same session as the
    // lock's loss watch; dropping them must not disarm the lock's.
    let mut watch = store.watch("k", ReadOptions::default()).await.unwrap();
    assert_eq!(
        watch.next().await.unwrap().unwrap().unwrap().last_index,
        lease.fencing_token()
    );
    let mut tree = store.watch_tree("", ReadOptions::default()).await.unwrap();
    assert_eq!(tree.next().await.unwrap().unwrap().len(), 1);
    drop(watch);
    drop(tree);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(intruder.delete("k").await.unwrap());
    // Renewal would notice only after ttl/3 = 10 s: the loss watch reports it at once.
    let state = tokio::time::timeout(Duration::from_secs(3), lease.lost())
        .await
        .expect("the loss watch still works after the user's watches were dropped");
    assert_eq!(state, LockState::Lost);
    assert!(matches!(lock.unlock().await, Err(Error::LockLost { .. })));
    store.close().await.unwrap();
    intruder.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_lock_sees_a_plain_key_expire() {
    let ns = unique("waitttl");
    let store = store_in(&ns).await;
    // A plain TTL key blocks the lock until it expires; the waiter wakes at the deadline even
    // if the server has not swept the key yet.
    store
        .put(
            "k",
            "plain".into(),
            WriteOptions::with_ttl(Duration::from_secs(1)),
        )
        .await
        .unwrap();
    let started = Instant::now();
    let mut lock = store
        .new_lock("k", LockOptions::default().value("lock"))
        .await
        .unwrap();
    let lease = tokio::time::timeout(Duration::from_secs(5), lock.lock())
        .await
        .unwrap()
        .unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "{:?}",
        started.elapsed()
    );
    assert!(
        started.elapsed() < Duration::from_millis(1900),
        "{:?}",
        started.elapsed()
    );
    let pair = store
        .get("k", ReadOptions::default())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (pair.value, pair.last_index),
        (Bytes::from("lock"), lease.fencing_token())
    );
    lock.unlock().await.unwrap();
    store.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_credentials_are_denied() {
    let ns = unique("auth");
    let with = |user: &str| {
        Config::builder()
            .endpoints([endpoints()])
            .namespace(&ns)
            .credentials(user, "secret")
            .build()
            .unwrap()
    };
    let owner = ZookeeperStore::connect(with("owner")).await.unwrap();
    owner
        .put("private", "mine".into(), WriteOptions::default())
        .await
        .unwrap();
    // Nodes are created with CREATOR_ALL_ACL: another digest identity may not read them.
    let stranger = ZookeeperStore::connect(with("stranger")).await.unwrap();
    let denied = stranger
        .get("private", ReadOptions::default())
        .await
        .unwrap_err();
    assert!(
        matches!(denied, Error::PermissionDenied { .. }),
        "{denied:?}"
    );
    let denied = stranger
        .put("other", "x".into(), WriteOptions::default())
        .await
        .unwrap_err();
    assert!(
        matches!(denied, Error::PermissionDenied { .. }),
        "{denied:?}"
    );
    assert_eq!(
        owner
            .get("private", ReadOptions::default())
            .await
            .unwrap()
            .unwrap()
            .value,
        Bytes::from("mine")
    );
    owner.delete_tree("").await.unwrap();
    owner.close().await.unwrap();
    stranger.close().await.unwrap();
}

/// A TCP proxy to the server that the test can cut and restore, to break connections, or
/// pause and resume, to hold the bytes in flight (as a stopped process or a congested network
/// would) and deliver them late, in order, on the same connection.
struct Proxy {
    port: u16,
    open: std::sync::Arc<std::sync::atomic::AtomicBool>,
    cut: std::sync::Arc<tokio::sync::Notify>,
    paused: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

/// Copies one direction of a proxied connection, holding the bytes while the proxy is paused.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut paused: tokio::sync::watch::Receiver<bool>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if paused.wait_for(|paused| !*paused).await.is_err() {
            break;
        }
        if to.write_all(&buffer[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

impl Proxy {
    async fn start(target: String) -> Proxy {
        use std::sync::atomic::Ordering;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let open = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let cut = std::sync::Arc::new(tokio::sync::Notify::new());
        let (paused, _) = tokio::sync::watch::channel(false);
        let (open2, cut2, paused2) = (open.clone(), cut.clone(), paused.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((inbound, _)) = listener.accept().await else {
                    return;
                };
                if !open2.load(Ordering::SeqCst) {
                    continue; // dropped: the client sees the connection closed
                }
                let target = target.clone();
                let cut = cut2.clone();
                let paused = paused2.clone();
                tokio::spawn(async move {
                    let Ok(outbound) = tokio::net::TcpStream::connect(&target).await else {
                        return;
                    };
                    let (from_client, to_client) = inbound.into_split();
                    let (from_server, to_server) = outbound.into_split();
                    let both = async {
                        tokio::join!(
                            pump(from_client, to_server, paused.subscribe()),
                            pump(from_server, to_client, paused.subscribe()),
                        )
                    };
                    tokio::select! {
                        _ = both => {}
                        _ = cut.notified() => {}
                    }
                });
            }
        });
        Proxy {
            port,
            open,
            cut,
            paused,
            task,
        }
    }

    fn cut(&self) {
        self.open.store(false, std::sync::atomic::Ordering::SeqCst);
        self.cut.notify_waiters();
    }

    fn restore(&self) {
        self.open.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Holds every byte in flight, both ways, on every connection, until `resume`.
    fn pause(&self) {
        self.paused.send_replace(true);
    }

    fn resume(&self) {
        self.paused.send_replace(false);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_connection_fails_calls_in_time_and_watches_catch_up() {
    let ns = unique("outage");
    let proxy = Proxy::start(endpoints().split(',').next().unwrap().to_owned()).await;
    let config = Config::builder()
        .endpoint(format!("127.0.0.1:{}", proxy.port))
        .namespace(&ns)
        .session_timeout(Duration::from_secs(20))
        .request_timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let store = ZookeeperStore::connect(config).await.unwrap();
    let direct = store_in(&ns).await;
    let mut watch = store.watch("k", ReadOptions::default()).await.unwrap();
    assert_eq!(watch.next().await.unwrap().unwrap(), None);

    proxy.cut();
    let started = Instant::now();
    let error = store.get("k", ReadOptions::default()).await.unwrap_err();
    assert!(error.is_transient(), "{error:?}");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    // Written while the watcher's connection is down: ZooKeeper does not replay it.
    direct
        .put("k", "during the outage".into(), WriteOptions::default())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;

    proxy.restore();
    let caught_up = tokio::time::timeout(Duration::from_secs(15), watch.next())
        .await
        .expect("the watch catches up after the reconnection");
    assert_eq!(
        caught_up.unwrap().unwrap().unwrap().value,
        Bytes::from("during the outage")
    );
    assert_eq!(
        store
            .get("k", ReadOptions::default())
            .await
            .unwrap()
            .unwrap()
            .value,
        Bytes::from("during the outage")
    );
    direct.delete_tree("").await.unwrap();
    store.close().await.unwrap();
    direct.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_ends_the_session_at_once() {
    let ns = unique("session");
    let holder = store_in(&ns).await;
    let waiter = std::sync::Arc::new(store_in(&ns).await);
    let zk = raw().await;
    let mut held = holder.new_lock("l", LockOptions::default()).await.unwrap();
    held.lock().await.unwrap();
    let waiting = {
        let waiter = waiter.clone();
        tokio::spawn(async move {
            let mut lock = waiter.new_lock("l", LockOptions::default()).await.unwrap();
            lock.lock().await.map(|_| ())
        })
    };
    let queue = format!("/{ns}/__kvlocks/l");
    let deadline = Instant::now() + Duration::from_secs(5);
    while zk
        .list_children(&queue)
        .await
        .unwrap_or_default()
        .is_empty()
    {
        assert!(Instant::now() < deadline, "the waiter never queued");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Closing the waiter's store ends its wait, its task, and its session: the ephemeral
    // ticket disappears at once, not after the session timeout (10 s).
    waiter.close().await.unwrap();
    let result = tokio::time::timeout(Duration::from_secs(3), waiting)
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(result, Err(Error::Closed)), "{result:?}");
    assert_eq!(waiter.background_tasks(), 0);
    let deadline = Instant::now() + Duration::from_secs(2);
    while !zk
        .list_children(&queue)
        .await
        .unwrap_or_default()
        .is_empty()
    {
        assert!(
            Instant::now() < deadline,
            "the closed store's session lives on"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    held.unlock().await.unwrap();
    holder.close().await.unwrap();
}

/// The children of `key`'s marker: the owner node of the acquisition holding it, if any.
async fn marker_children(zk: &zk::Client, ns: &str, key: &str) -> Vec<String> {
    zk.list_children(&format!("/{ns}/{key}/__kv"))
        .await
        .unwrap_or_default()
}

/// A holder whose renewal is delayed in the network past its TTL (a stopped process, a
/// congested link) while another client takes the lock over: when the stale renewal finally
/// reaches the server, it must not touch the new holder's marker. Marker data versions restart
/// at 0 with every new marker, so a renewal conditioned only on the version the old holder
/// last saw (0) would succeed on the new holder's marker and rewrite its TTL (an ABA).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_renewal_cannot_touch_the_next_holders_lock() {
    let ns = unique("stale");
    let proxy = Proxy::start(endpoints().split(',').next().unwrap().to_owned()).await;
    let config = Config::builder()
        .endpoint(format!("127.0.0.1:{}", proxy.port))
        .namespace(&ns)
        .session_timeout(Duration::from_secs(20))
        .request_timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let old = ZookeeperStore::connect(config).await.unwrap();
    let new = store_in(&ns).await;
    let observer = store_in(&ns).await;
    let zk = raw().await;

    // The old holder: a 1 s lease, renewed every 333 ms. Its first renewal is held in the
    // network, so the version it conditions on is still its marker's first (0).
    let mut old_lock = old
        .new_lock(
            "k",
            LockOptions::default()
                .value("old")
                .ttl(Duration::from_secs(1)),
        )
        .await
        .unwrap();
    let old_lease = old_lock.lock().await.unwrap();
    proxy.pause();
    let state = tokio::time::timeout(Duration::from_secs(5), old_lease.lost())
        .await
        .expect("renewals failing for a whole TTL end the old lease");
    assert_eq!(state, LockState::Lost);

    // The new holder takes the expired lock over: a fresh marker, data version 0 again.
    let long = Duration::from_secs(30);
    let mut new_lock = new
        .new_lock("k", LockOptions::default().value("new").ttl(long))
        .await
        .unwrap();
    let new_lease = tokio::time::timeout(Duration::from_secs(5), new_lock.lock())
        .await
        .expect("the expired lock is free")
        .unwrap();
    assert!(new_lease.fencing_token() > old_lease.fencing_token());

    // The old holder's renewal reaches the server now. A request on the same connection
    // after it is answered only once the server has processed it.
    proxy.resume();
    tokio::time::timeout(
        Duration::from_secs(10),
        old.get("k", ReadOptions::default()),
    )
    .await
    .expect("the old holder's connection works again")
    .unwrap();
    let (data, _) = zk.get_data(&format!("/{ns}/k/__kv")).await.unwrap();
    assert_eq!(
        String::from_utf8_lossy(&data),
        "30000",
        "the stale renewal rewrote the new holder's marker (its TTL)"
    );

    // Past the old holder's 1 s TTL: the new holder's key must still be there, and its lock
    // still taken.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let pair = observer
        .get("k", ReadOptions::default())
        .await
        .unwrap()
        .expect("the new holder's key expired early");
    assert_eq!(
        (pair.value, pair.last_index),
        (Bytes::from("new"), new_lease.fencing_token())
    );
    assert!(new_lease.is_held(), "the new holder lost the lock");
    let mut third = observer
        .new_lock("k", LockOptions::default().value("third"))
        .await
        .unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(1000), third.lock())
            .await
            .is_err(),
        "a third client got the lock while the new holder holds it"
    );
    assert_eq!(old_lease.state(), LockState::Lost);

    // The layout: one ephemeral owner node below the marker, the new holder's.
    let owners = marker_children(&zk, &ns, "k").await;
    assert_eq!(owners.len(), 1, "{owners:?}");
    assert!(owners[0].starts_with("__kvowner-"), "{owners:?}");
    let (_, stat) = zk
        .get_data(&format!("/{ns}/k/__kv/{}", owners[0]))
        .await
        .unwrap();
    assert_eq!(Some(stat.ephemeral_owner), new.session_id());
    // Hidden from readers.
    let listed: Vec<String> = observer
        .list("", ReadOptions::default())
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.key)
        .collect();
    assert_eq!(listed, ["k"]);

    assert!(matches!(
        old_lock.unlock().await,
        Err(Error::LockLost { .. })
    ));
    assert!(
        new_lease.is_held(),
        "the old holder's unlock released the new holder's lock"
    );
    new_lock.unlock().await.unwrap();
    // The emptied key node goes with the server's container sweep (every 500 ms here).
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while zk.check_stat(&format!("/{ns}/k")).await.unwrap().is_some() {
        assert!(
            std::time::Instant::now() < deadline,
            "unlock leaves nothing behind"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    old.close().await.unwrap();
    new.close().await.unwrap();
    observer.close().await.unwrap();
}

/// ZooKeeper sweeps an expired TTL node by *path*: the sweeper lists its candidates, then
/// deletes them one by one (about 6 ms apart) without re-checking their TTL, so a new marker
/// created at an expired marker's path between the listing and the delete would be deleted
/// too, and the new holder would lose a lock it just took. A lock's marker always has a child
/// (its owner node), which makes that delete fail. Many locks taken over at staggered times
/// around their predecessors' expiry, spread over more than one sweep period (500 ms on the
/// test server), make the race near certain without that protection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn takeovers_at_expiry_survive_the_servers_ttl_sweep() {
    const KEYS: usize = 40;
    let ns = unique("sweep");
    let store = std::sync::Arc::new(store_in(&ns).await);
    let zk = raw().await;
    let ttl = Duration::from_secs(1);
    for i in 0..KEYS {
        store
            .put(
                &format!("k{i}"),
                "plain".into(),
                WriteOptions::with_ttl(ttl),
            )
            .await
            .unwrap();
    }
    let expired = Instant::now() + ttl;
    let mut takers = Vec::new();
    for i in 0..KEYS {
        let store = store.clone();
        takers.push(tokio::spawn(async move {
            tokio::time::sleep_until((expired + Duration::from_millis(15 * i as u64)).into()).await;
            let mut lock = store
                .new_lock(
                    &format!("k{i}"),
                    LockOptions::default()
                        .value("lock")
                        .ttl(Duration::from_secs(5)),
                )
                .await
                .unwrap();
            let lease = tokio::time::timeout(Duration::from_secs(5), lock.lock())
                .await
                .expect("the expired key frees the lock")
                .unwrap();
            (lock, lease)
        }));
    }
    let mut locks = Vec::new();
    for taker in takers {
        locks.push(taker.await.unwrap());
    }
    // Two more sweeps.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let lost: Vec<usize> = (0..KEYS).filter(|&i| !locks[i].1.is_held()).collect();
    assert!(
        lost.is_empty(),
        "locks lost right after being taken: {lost:?}"
    );
    let listed = store.list("", ReadOptions::default()).await.unwrap();
    assert_eq!(listed.len(), KEYS);
    assert!(listed.iter().all(|p| p.value == "lock"));
    for (mut lock, _) in locks {
        lock.unlock().await.unwrap();
    }
    assert!(
        store
            .list("", ReadOptions::default())
            .await
            .unwrap()
            .is_empty()
    );
    for i in 0..KEYS {
        assert!(
            marker_children(&zk, &ns, &format!("k{i}")).await.is_empty(),
            "an owner node outlived its lock"
        );
    }
    store.close().await.unwrap();
}

/// A holder whose whole process stops for longer than its TTL (SIGSTOP, a VM freeze; here its
/// runtime's only thread is blocked) while nobody takes the lock: when it runs again, its
/// lease ends as lost and it does not bring back the key readers have seen expire; its owner
/// node goes, so the server sweeps the expired key as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_frozen_past_its_ttl_does_not_revive_its_lock() {
    let ns = unique("frozen");
    let observer = store_in(&ns).await;
    let zk = raw().await;
    let (lease_tx, lease_rx) = tokio::sync::oneshot::channel();
    let (freeze_tx, freeze_rx) = tokio::sync::oneshot::channel::<()>();
    let (end_tx, end_rx) = tokio::sync::oneshot::channel::<()>();
    let holder = {
        let ns = ns.clone();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let store = store_in(&ns).await;
                let mut lock = store
                    .new_lock(
                        "k",
                        LockOptions::default()
                            .value("frozen")
                            .ttl(Duration::from_secs(1)),
                    )
                    .await
                    .unwrap();
                let lease = lock.lock().await.unwrap();
                lease_tx.send(lease).unwrap();
                freeze_rx.await.unwrap();
                // Nothing on this runtime runs meanwhile: no renewal, no timer.
                std::thread::sleep(Duration::from_millis(1600));
                end_rx.await.unwrap();
                drop(lock);
                store.close().await.unwrap();
            });
        })
    };
    let lease = lease_rx.await.unwrap();
    freeze_tx.send(()).unwrap();
    let frozen = Instant::now();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(
        observer.get("k", ReadOptions::default()).await.unwrap(),
        None,
        "expired while its holder is frozen"
    );
    let state = tokio::time::timeout(Duration::from_secs(3), lease.lost())
        .await
        .expect("the resumed holder reports the loss");
    assert_eq!(state, LockState::Lost);
    assert!(frozen.elapsed() >= Duration::from_millis(1600));
    // It stays gone: the resumed holder does not renew an expired lock.
    for _ in 0..10 {
        assert_eq!(
            observer.get("k", ReadOptions::default()).await.unwrap(),
            None,
            "the resumed holder brought its expired key back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Its owner node is gone, so the server sweeps the marker, then the key's node.
    let deadline = Instant::now() + Duration::from_secs(10);
    while zk.check_stat(&format!("/{ns}/k")).await.unwrap().is_some() {
        assert!(
            Instant::now() < deadline,
            "the expired lock is never swept: {:?}",
            marker_children(&zk, &ns, "k").await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    end_tx.send(()).unwrap();
    tokio::task::spawn_blocking(move || holder.join().unwrap())
        .await
        .unwrap();
    observer.close().await.unwrap();
}

/// `delete_tree` deletes exactly the keys `list` shows (and the directory's own key): znodes
/// other programs wrote into the namespace (plain nodes without a marker, names that do not
/// decode to a valid key segment, nodes below a key) stay, with the nodes leading to them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_tree_leaves_other_programs_nodes() {
    // A character kv-core refuses in keys but ZooKeeper accepts in paths.
    assert!(kv_core::key::normalize_key("x\u{378}").is_err());
    let persistent = zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all());
    let zk = raw().await;
    for directory in ["dir", ""] {
        let ns = unique("foreign");
        let store = store_in(&ns).await;
        let prefix = kv_core::key::child_prefix(directory);
        let keys: Vec<String> = ["k1", "sub/k2", "host/k3", "deep/a/b/k4", "😀"]
            .iter()
            .map(|k| format!("{prefix}{k}"))
            .chain((!directory.is_empty()).then(|| directory.to_owned()))
            .collect();
        // A plain node with data that holds one of our keys below it.
        let dir_path = if directory.is_empty() {
            format!("/{ns}")
        } else {
            format!("/{ns}/{directory}")
        };
        zk.mkdir(&format!("{dir_path}/host"), &persistent)
            .await
            .unwrap();
        zk.set_data(&format!("{dir_path}/host"), b"theirs", None)
            .await
            .unwrap();
        for key in &keys {
            store
                .put(key, "v".into(), WriteOptions::default())
                .await
                .unwrap();
        }
        let foreign: Vec<String> = [
            // A plain node next to the keys, with and without data.
            "plain",
            "sub/empty-plain",
            // Below a key: the key goes, its node stays.
            "k1/child",
            // Deep below parent-only nodes of ours.
            "deep/a/theirs",
            "host",
            // Names that decode to `a/` (hence `a//b`), a forbidden character, a reserved
            // name and a non-canonical escape: not keys, even with a marker below them.
            "a\u{241A}00002F",
            "a\u{241A}00002F/b",
            "a\u{241A}00002F/b/__kv",
            "x\u{378}",
            "x\u{378}/__kv",
            "__kvtheirs",
            "\u{241A}000041",
            "\u{241A}000041/__kv",
        ]
        .iter()
        .map(|name| format!("{dir_path}/{name}"))
        .collect();
        for path in &foreign {
            if zk.check_stat(path).await.unwrap().is_none() {
                zk.mkdir(path, &persistent).await.unwrap();
            }
            if path.ends_with("/plain") {
                zk.set_data(path, b"plain", None).await.unwrap();
            }
        }

        let mut expected: Vec<String> = keys
            .iter()
            .filter(|k| kv_core::key::is_descendant(directory, k))
            .cloned()
            .collect();
        expected.sort();
        let listed: Vec<String> = store
            .list(directory, ReadOptions::default())
            .await
            .unwrap()
            .into_iter()
            .map(|p| p.key)
            .collect();
        assert_eq!(listed, expected, "list shows only our keys");

        store.delete_tree(directory).await.unwrap();
        assert!(
            store
                .list(directory, ReadOptions::default())
                .await
                .unwrap()
                .is_empty(),
            "delete_tree({directory:?}) left keys"
        );
        for key in &keys {
            assert_eq!(
                store.get(key, ReadOptions::default()).await.unwrap(),
                None,
                "{key} survived delete_tree({directory:?})"
            );
        }
        for path in &foreign {
            assert!(
                zk.check_stat(path).await.unwrap().is_some(),
                "delete_tree({directory:?}) removed {path}, which another program wrote"
            );
        }
        assert_eq!(
            zk.get_data(&format!("{dir_path}/host")).await.unwrap().0,
            b"theirs"
        );
        assert_eq!(
            zk.get_data(&format!("{dir_path}/plain")).await.unwrap().0,
            b"plain"
        );
        // Nothing of ours is left where nothing foreign is below.
        assert_eq!(
            zk.check_stat(&format!("{dir_path}/host/k3")).await.unwrap(),
            None
        );
        // Deleting again is a no-op.
        store.delete_tree(directory).await.unwrap();
        assert!(
            zk.check_stat(&format!("{dir_path}/k1/child"))
                .await
                .unwrap()
                .is_some()
        );
        store.close().await.unwrap();
    }
}

/// A transaction's keys are written exactly like `put` writes them (value as the node's
/// data, the marker beside it with the TTL as its data, `last_index` = the node's mzxid), all
/// in ONE ZooKeeper transaction (one zxid for every key), and a delete inside a transaction
/// leaves the same emptied node as `delete`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transaction_writes_the_layout_of_put_in_one_zxid() {
    use kv_core::{Condition, Transaction};
    let ns = unique("txn-layout");
    let store = store_in(&ns).await;
    let zk = raw().await;
    let caps = store.capabilities();
    assert!(caps.transactions);
    assert_eq!(caps.max_transaction_ops, kv_zookeeper::MAX_TRANSACTION_OPS);
    assert!(caps.watch_tree_sees_whole_transactions);

    store
        .put("gone", "old".into(), WriteOptions::default())
        .await
        .unwrap();
    let ttl = Duration::from_secs(30);
    let pairs = store
        .transaction(
            Transaction::new()
                .when(Condition::absent("a/b"))
                .when(Condition::exists("gone"))
                .put("a/b", "first", WriteOptions::with_ttl(ttl))
                .put("c", "second", WriteOptions::default())
                .delete("gone"),
        )
        .await
        .unwrap();
    assert_eq!(pairs.len(), 2);
    assert_eq!((pairs[0].key.as_str(), pairs[1].key.as_str()), ("a/b", "c"));
    assert_eq!(
        pairs[0].last_index, pairs[1].last_index,
        "one multi-op: one zxid for every key"
    );

    let (data, stat) = zk.get_data(&format!("/{ns}/a/b")).await.unwrap();
    assert_eq!(data, b"first");
    assert_eq!(stat.mzxid as u64, pairs[0].last_index);
    let (marker, marker_stat) = zk.get_data(&format!("/{ns}/a/b/__kv")).await.unwrap();
    assert_eq!(
        marker, b"30000",
        "the marker records the TTL, as put's does"
    );
    assert_eq!(marker_stat.czxid, stat.mzxid);
    let (marker, _) = zk.get_data(&format!("/{ns}/c/__kv")).await.unwrap();
    assert!(marker.is_empty(), "a permanent key's marker is empty");
    // The deleted key: marker gone, node emptied (as `delete` leaves it).
    let (data, _) = zk.get_data(&format!("/{ns}/gone")).await.unwrap();
    assert!(data.is_empty());
    assert!(matches!(
        zk.get_data(&format!("/{ns}/gone/__kv")).await,
        Err(zk::Error::NoNode)
    ));

    // What the rest of the API sees is what a put would have left.
    let got = store
        .get("a/b", ReadOptions::default())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, pairs[0]);
    assert!(
        store
            .get("gone", ReadOptions::default())
            .await
            .unwrap()
            .is_none()
    );
    let listed = store.list("", ReadOptions::default()).await.unwrap();
    assert_eq!(listed, vec![pairs[0].clone(), pairs[1].clone()]);
    // The index a transaction returns is what the next CAS compares.
    let next = store
        .atomic_put(
            "a/b",
            "third".into(),
            Some(&pairs[0]),
            WriteOptions::default(),
        )
        .await
        .unwrap();
    assert!(next.last_index > pairs[0].last_index);
    // A transactional put without TTL makes the key permanent again.
    store
        .transaction(Transaction::new().put("a/b", "fourth", WriteOptions::default()))
        .await
        .unwrap();
    let (marker, _) = zk.get_data(&format!("/{ns}/a/b/__kv")).await.unwrap();
    assert!(marker.is_empty());

    // Absent keys below missing parents are checked without leaving a node behind.
    store
        .transaction(
            Transaction::new()
                .when(Condition::absent("deep/er/key"))
                .delete("other/missing/key"),
        )
        .await
        .unwrap();
    for path in ["deep", "other"] {
        assert!(
            zk.check_stat(&format!("/{ns}/{path}"))
                .await
                .unwrap()
                .is_none(),
            "/{ns}/{path} was left behind"
        );
    }
    // A failing transaction leaves no trace either (nothing created, nothing changed).
    let failed = store
        .transaction(Transaction::new().when(Condition::absent("c")).put(
            "new/x",
            "v",
            WriteOptions::default(),
        ))
        .await;
    assert!(matches!(
        failed,
        Err(Error::ConditionFailed { index: 0, .. })
    ));
    assert!(
        zk.check_stat(&format!("/{ns}/new"))
            .await
            .unwrap()
            .is_none()
    );

    store.delete_tree("").await.unwrap();
    store.close().await.unwrap();
}

/// The count limit does not bound the request's bytes: a transaction whose multi-op would be
/// larger than the server's `jute.maxbuffer` is refused before anything is sent (the server
/// would drop the connection), while one full-size value still fits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transaction_over_the_servers_request_limit_is_refused_before_sending() {
    use kv_core::{Condition, Transaction};
    let ns = unique("txn-limit");
    let store = store_in(&ns).await;
    let zk = raw().await;
    let half = Bytes::from(vec![1u8; MAX_VALUE_LEN / 2 + 30_000]);
    let refused = store
        .transaction(
            Transaction::new()
                .put("x", half.clone(), WriteOptions::default())
                .put("y", half.clone(), WriteOptions::default()),
        )
        .await;
    assert!(
        matches!(refused, Err(Error::InvalidOption(_))),
        "{refused:?}"
    );
    assert!(zk.check_stat(&format!("/{ns}/x")).await.unwrap().is_none());
    // The handle is still connected (nothing was sent that the server would refuse).
    let full = Bytes::from(vec![2u8; MAX_VALUE_LEN]);
    let long_key = format!("k/{}", "n".repeat(1000));
    let pairs = store
        .transaction(
            Transaction::new()
                .when(Condition::absent(&long_key))
                .when(Condition::absent("other"))
                .put(
                    &long_key,
                    full.clone(),
                    WriteOptions::with_ttl(Duration::from_secs(60)),
                )
                .delete("z"),
        )
        .await
        .unwrap();
    assert_eq!(pairs[0].value.len(), MAX_VALUE_LEN);
    // Many small operations with long keys fit as well.
    let many = (0..kv_zookeeper::MAX_TRANSACTION_OPS).fold(Transaction::new(), |t, i| {
        t.put(
            format!("m/{i:03}{}", "x".repeat(1000)),
            "v",
            WriteOptions::default(),
        )
    });
    assert_eq!(
        store.transaction(many).await.unwrap().len(),
        kv_zookeeper::MAX_TRANSACTION_OPS
    );
    let too_many = (0..=kv_zookeeper::MAX_TRANSACTION_OPS)
        .fold(Transaction::new(), |t, i| t.delete(format!("m/{i}")));
    assert!(matches!(
        store.transaction(too_many).await,
        Err(Error::InvalidOption(_))
    ));
    store.delete_tree("").await.unwrap();
    store.close().await.unwrap();
}

/// `LockHeld` compares the lock key's mzxid with the fencing token: renewals (which only
/// touch the marker) keep it; a takeover by another client after the key was deleted
/// changes it; an expired lock key the server has not swept yet counts as lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guarded_writes_follow_the_lock_on_the_server() {
    use kv_core::{Condition, ConditionFailure, Transaction};
    let ns = unique("txn-fence");
    let a = store_in(&ns).await;
    let b = store_in(&ns).await;
    let other = store_in(&ns).await;
    let options = || {
        LockOptions::default()
            .ttl(Duration::from_secs(2))
            .value("holder")
    };
    let mut lock_a = a.new_lock("leader", options()).await.unwrap();
    let lease_a = lock_a.lock().await.unwrap();
    lease_a
        .guarded_put(&a, "data", "from a", WriteOptions::default())
        .await
        .unwrap();
    // Several renewals later the token still matches.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    assert_eq!(lease_a.state(), LockState::Held);
    lease_a
        .guarded_put(&a, "data", "from a again", WriteOptions::default())
        .await
        .unwrap();

    // Another handle deletes the lock key; B takes the lock.
    assert!(other.delete("leader").await.unwrap());
    let mut lock_b = b.new_lock("leader", options()).await.unwrap();
    let lease_b = tokio::time::timeout(Duration::from_secs(10), lock_b.lock())
        .await
        .unwrap()
        .unwrap();
    assert!(lease_b.fencing_token() > lease_a.fencing_token());
    let refused = lease_a
        .guarded_put(&a, "data", "stale", WriteOptions::default())
        .await;
    assert!(
        matches!(&refused, Err(Error::LockLost { key }) if key == "leader"),
        "{refused:?}"
    );
    assert_eq!(
        other
            .get("data", ReadOptions::default())
            .await
            .unwrap()
            .unwrap()
            .value,
        "from a again"
    );
    lease_b
        .guarded_put(&b, "data", "from b", WriteOptions::default())
        .await
        .unwrap();
    assert!(matches!(
        lease_a.guarded_delete(&a, "data").await,
        Err(Error::LockLost { .. })
    ));
    lock_b.unlock().await.unwrap();
    assert!(matches!(
        lease_b
            .guarded_put(&b, "data", "late", WriteOptions::default())
            .await,
        Err(Error::LockLost { .. })
    ));

    // An expired key whose TTL marker the server has not swept yet is not held, whatever its
    // index. (A child below the marker stops the server from sweeping it, as in
    // `ttl_is_enforced_before_the_server_sweeps`; the test servers sweep every 500 ms.)
    let expiring = other
        .atomic_put(
            "expiring",
            "v".into(),
            None,
            WriteOptions::with_ttl(Duration::from_secs(1)),
        )
        .await
        .unwrap();
    let zk = raw().await;
    zk.create(
        &format!("/{ns}/expiring/__kv/pin"),
        b"",
        &zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all()),
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(1_300)).await;
    assert!(
        zk.check_stat(&format!("/{ns}/expiring/__kv"))
            .await
            .unwrap()
            .is_some(),
        "not swept"
    );
    let failed = other
        .transaction(
            Transaction::new()
                .when(Condition::LockHeld {
                    key: "expiring".into(),
                    fencing_token: expiring.last_index,
                })
                .put("data", "x", WriteOptions::default()),
        )
        .await;
    assert!(
        matches!(
            &failed,
            Err(Error::ConditionFailed { index: 0, key, reason: ConditionFailure::LockLost })
                if key == "expiring"
        ),
        "{failed:?}"
    );
    zk.delete(&format!("/{ns}/expiring/__kv/pin"), None)
        .await
        .unwrap();

    for store in [a, b, other] {
        store.delete_tree("").await.ok();
        store.close().await.unwrap();
    }
}

/// `watch_tree` must never report a snapshot holding part of a transaction, also when the
/// transaction's keys sit at different depths (a walk reads level by level, in several
/// requests) and another writer keeps rewriting a key in the tree.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_tree_never_reports_part_of_a_transaction_across_levels() {
    whole_transactions_in_watch_tree(40, 8, true, 60).await;
}

/// The same for a tree too big to read in one request (300 keys of 950 bytes: the fallback
/// that walks the tree and then checks every node unchanged). Nothing else writes: a walk
/// disturbed by any write is redone, so constant noise would keep it from ever finishing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_tree_of_a_big_tree_never_reports_part_of_a_transaction() {
    whole_transactions_in_watch_tree(300, 950, false, 16).await;
}

/// The transactions come in pairs: the second follows the first after 0/8 to 7/8 of the time
/// the watch last took to report one, so it lands at varied points of the read the first one
/// started; then the writer waits until the
/// watch reports the pair's second state before it writes the next pair. So the test proves
/// the same on a fast or a loaded machine (with a fixed pace, a loaded machine's walk of the
/// big tree outlasted every gap between transactions: only the first and last snapshots were
/// reported, and the test failed for seeing too little).
async fn whole_transactions_in_watch_tree(
    siblings: usize,
    name_len: usize,
    noise: bool,
    rounds: usize,
) {
    use kv_core::Transaction;
    let ns = unique("txn-tree");
    let writer = store_in(&ns).await;
    let noisy = store_in(&ns).await;
    let watcher = store_in(&ns).await;
    let keys = ["t/a", "t/deep/b", "t/deep/er/c", "t/deep/er/est/d"];
    // Siblings: more nodes per level, more requests per walk.
    let names: Vec<String> = (0..siblings)
        .map(|i| format!("t/deep/er/{i:03}{}", "s".repeat(name_len)))
        .collect();
    for chunk in names.chunks(100) {
        let txn = chunk.iter().fold(Transaction::new(), |t, k| {
            t.put(k.clone(), "s", WriteOptions::default())
        });
        writer.transaction(txn).await.unwrap();
    }
    let mut tree = watcher
        .watch_tree("t", ReadOptions::default())
        .await
        .unwrap();
    assert_eq!(tree.next().await.unwrap().unwrap().len(), siblings);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let noise_task = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut i = 0u64;
            while noise && !stop.load(std::sync::atomic::Ordering::Relaxed) {
                noisy
                    .put(
                        "t/deep/noise",
                        i.to_string().into(),
                        WriteOptions::default(),
                    )
                    .await
                    .unwrap();
                i += 1;
            }
            noisy.close().await.unwrap();
        })
    };
    // The last round the watch reported.
    let (reported, mut caught_up) = tokio::sync::watch::channel(None::<usize>);
    let writes = {
        let stop = stop.clone();
        tokio::spawn(async move {
            // How long the watch took to report a transaction (measured on each pair).
            let mut reading = Duration::from_millis(20);
            for round in 0..rounds {
                let txn = keys.iter().fold(Transaction::new(), |t, k| {
                    t.put(*k, round.to_string(), WriteOptions::default())
                });
                writer.transaction(txn).await.unwrap();
                if round % 2 == 0 && round + 1 < rounds {
                    // The next one lands at a different point of the read this one started.
                    let eighths = (round / 2 % 8) as u32;
                    tokio::time::sleep(reading * eighths / 8).await;
                    continue;
                }
                // The watch must reach the latest state; it is not paced by a clock.
                let written = std::time::Instant::now();
                tokio::time::timeout(
                    Duration::from_secs(20),
                    caught_up.wait_for(|seen| *seen == Some(round)),
                )
                .await
                .expect("the watch never reported the latest transaction")
                .expect("the watch loop ended");
                reading = written.elapsed();
            }
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            writer
        })
    };
    let last = (rounds - 1).to_string();
    let mut snapshots = 1;
    loop {
        let snapshot = tokio::time::timeout(Duration::from_secs(20), tree.next())
            .await
            .expect("the final state was never reported")
            .expect("the stream ended")
            .unwrap();
        snapshots += 1;
        let values: Vec<&Bytes> = snapshot
            .iter()
            .filter(|p| keys.contains(&p.key.as_str()))
            .map(|p| &p.value)
            .collect();
        assert!(
            values.is_empty()
                || (values.len() == keys.len() && values.iter().all(|v| *v == values[0])),
            "a snapshot with part of a transaction: {values:?}"
        );
        if let Some(round) = values.first().and_then(|v| std::str::from_utf8(v).ok()) {
            reported.send_replace(Some(round.parse().unwrap()));
        }
        if values.first().is_some_and(|v| **v == *last.as_bytes()) {
            break;
        }
    }
    // The initial snapshot, then at least the state of every pair.
    assert!(
        snapshots > rounds / 2,
        "the watch saw too little to prove anything: {snapshots} snapshots"
    );
    let writer = writes.await.unwrap();
    noise_task.await.unwrap();
    drop(tree);
    writer.delete_tree("").await.unwrap();
    writer.close().await.unwrap();
    watcher.close().await.unwrap();
}

/// `watch_tree` reads deep trees too (its snapshot read does not take one round per level).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_tree_reads_deep_trees_whole() {
    use kv_core::Transaction;
    let ns = unique("txn-deep");
    let store = store_in(&ns).await;
    let deep: String = (0..40).map(|i| format!("l{i}/")).collect::<String>() + "leaf";
    store
        .put(&deep, "0".into(), WriteOptions::default())
        .await
        .unwrap();
    let mut tree = store
        .watch_tree("l0", ReadOptions::default())
        .await
        .unwrap();
    let first = tokio::time::timeout(Duration::from_secs(10), tree.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].key, deep);
    store
        .transaction(
            Transaction::new()
                .put(&deep, "1", WriteOptions::default())
                .put("l0/top", "1", WriteOptions::default()),
        )
        .await
        .unwrap();
    let next = tokio::time::timeout(Duration::from_secs(10), tree.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let values: Vec<(&str, &[u8])> = next
        .iter()
        .map(|p| (p.key.as_str(), p.value.as_ref()))
        .collect();
    assert_eq!(
        values,
        vec![(deep.as_str(), &b"1"[..]), ("l0/top", &b"1"[..])]
    );
    drop(tree);
    store.delete_tree("").await.unwrap();
    store.close().await.unwrap();
}

/// `list` lists a node's children only when its stat counts a child besides its marker. Every
/// shape where that count matters: leaves, keys that are parents, parent-only nodes, a deep
/// chain, TTL keys, locked keys (the owner node is below the marker, not the key), another
/// program's node with and without data holding a key of ours below it, an invalid name, and
/// a directory wider than one multi-read (129 keys).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_walks_every_shape_of_tree() {
    let persistent = zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all());
    let ns = unique("listshape");
    let store = store_in(&ns).await;
    let zk = raw().await;
    let plain = WriteOptions::default();
    let ttl = WriteOptions::with_ttl(Duration::from_secs(60));
    let mut expected: Vec<(String, String)> = Vec::new();
    let mut written: Vec<(String, WriteOptions)> = vec![
        ("a".into(), plain.clone()),
        ("a/b".into(), plain.clone()),
        ("a/b/c".into(), ttl.clone()),
        ("only/parent/k".into(), plain.clone()),
        ("d1/d2/d3/d4/d5/d6/leaf".into(), plain.clone()),
        ("t".into(), ttl.clone()),
        ("t/u".into(), plain.clone()),
    ];
    written.extend((0..129).map(|i| (format!("wide/k{i:03}"), plain.clone())));
    for (key, options) in written {
        store.put(&key, key.clone().into(), options).await.unwrap();
        expected.push((key.clone(), key));
    }
    // Locked keys: a leaf and one with a key below it.
    let mut lock_leaf = store.new_lock("lk", LockOptions::default()).await.unwrap();
    lock_leaf.lock().await.unwrap();
    let mut lock_parent = store.new_lock("lp", LockOptions::default()).await.unwrap();
    lock_parent.lock().await.unwrap();
    store
        .put("lp/m", "lp/m".into(), plain.clone())
        .await
        .unwrap();
    for (key, value) in [("lk", ""), ("lp", ""), ("lp/m", "lp/m")] {
        expected.push((key.to_owned(), value.to_owned()));
    }
    // Another program's nodes: one with data below a key (a key of ours below it, made
    // visible by a marker created by hand), an empty one, a name that is no key segment.
    zk.create(&format!("/{ns}/a/theirs"), b"x", &persistent)
        .await
        .unwrap();
    zk.create(&format!("/{ns}/a/theirs/k"), b"v", &persistent)
        .await
        .unwrap();
    zk.create(&format!("/{ns}/a/theirs/k/__kv"), b"", &persistent)
        .await
        .unwrap();
    expected.push(("a/theirs/k".to_owned(), "v".to_owned()));
    zk.mkdir(&format!("/{ns}/empty/plain"), &persistent)
        .await
        .unwrap();
    zk.create(&format!("/{ns}/a/b/x\u{378}"), b"x", &persistent)
        .await
        .unwrap();
    // A written key's node left empty by a delete is not listed.
    store.put("gone", "v".into(), plain.clone()).await.unwrap();
    store.delete("gone").await.unwrap();
    expected.sort();
    for directory in ["", "a", "wide", "d1/d2"] {
        let listed = store.list(directory, ReadOptions::default()).await.unwrap();
        let prefix = kv_core::key::child_prefix(directory);
        let want: Vec<(String, String)> = expected
            .iter()
            .filter(|(k, _)| k.starts_with(&prefix))
            .cloned()
            .collect();
        let got: Vec<(String, String)> = listed
            .iter()
            .map(|p| {
                (
                    p.key.clone(),
                    String::from_utf8_lossy(&p.value).into_owned(),
                )
            })
            .collect();
        assert_eq!(got, want, "list {directory:?}");
        for pair in &listed {
            let read = store.get(&pair.key, ReadOptions::default()).await.unwrap();
            assert_eq!(
                read.map(|p| p.last_index),
                Some(pair.last_index),
                "{}",
                pair.key
            );
        }
    }
    lock_leaf.unlock().await.unwrap();
    lock_parent.unlock().await.unwrap();
    store.delete_tree("").await.unwrap();
    store.close().await.unwrap();
}

/// A lock with nobody queued and the key free takes the key without a ticket, in one
/// multi-op that also creates the queue directory, and its release deletes that directory
/// again. A waiter's ticket already in the queue makes it queue behind it, even though the
/// key is free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_takes_the_key_without_a_ticket_only_when_nobody_is_queued() {
    let persistent = zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all());
    let ns = unique("fastlock");
    let store = store_in(&ns).await;
    let zk = raw().await;
    // The key's node exists without a marker and the queues' parent exists (a container the
    // server could sweep otherwise): the state the fast path needs.
    store
        .put("k", "v".into(), WriteOptions::default())
        .await
        .unwrap();
    store.delete("k").await.unwrap();
    zk.create(&format!("/{ns}/__kvlocks"), b"", &persistent)
        .await
        .unwrap();
    let queue = format!("/{ns}/__kvlocks/k");
    let mut lock = store.new_lock("k", LockOptions::default()).await.unwrap();
    let lease = lock.lock().await.unwrap();
    let (children, stat) = zk.get_children(&queue).await.unwrap();
    assert!(children.is_empty());
    assert_eq!(stat.cversion, 0, "no ticket was ever created in the queue");
    let pair = store
        .get("k", ReadOptions::default())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(pair.last_index, lease.fencing_token());
    lock.unlock().await.unwrap();
    assert_eq!(
        zk.check_stat(&queue).await.unwrap(),
        None,
        "the release deleted the queue it created"
    );
    assert_eq!(store.get("k", ReadOptions::default()).await.unwrap(), None);

    // A ticket already queued (a waiter that has not acted yet) comes first.
    zk.create(&queue, b"", &persistent).await.unwrap();
    let ticket_options = zk::CreateMode::EphemeralSequential.with_acls(zk::Acls::anyone_all());
    let (_, sequence) = zk
        .create(&format!("{queue}/__kvlock-"), b"", &ticket_options)
        .await
        .unwrap();
    let waiter = {
        let store = store_in(&ns).await;
        tokio::spawn(async move {
            let mut lock = store.new_lock("k", LockOptions::default()).await.unwrap();
            let token = lock.lock().await.unwrap().fencing_token();
            lock.unlock().await.unwrap();
            store.close().await.unwrap();
            token
        })
    };
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(!waiter.is_finished(), "took the lock past a queued ticket");
    assert_eq!(store.get("k", ReadOptions::default()).await.unwrap(), None);
    zk.delete(&format!("{queue}/__kvlock-{sequence}"), None)
        .await
        .unwrap();
    let token = tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .expect("the waiter took the lock once the ticket before it went")
        .unwrap();
    assert!(token > lease.fencing_token());
    store.delete_tree("").await.unwrap();
    store.close().await.unwrap();
}

/// Several handles locking one key in a loop: whichever path each acquisition takes (no
/// ticket, a ticket and the one-multi take, the read-then-write take), never two holders at
/// once, fencing tokens rise in the order of acquisitions, and nothing is left queued.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contended_locks_exclude_each_other_on_every_path() {
    let ns = unique("lockrace");
    let holders = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let tokens = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for _ in 0..3 {
        let store = store_in(&ns).await;
        let (holders, tokens) = (holders.clone(), tokens.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..8 {
                let mut lock = store.new_lock("c", LockOptions::default()).await.unwrap();
                let lease = lock.lock().await.unwrap();
                assert_eq!(
                    holders.fetch_add(1, std::sync::atomic::Ordering::SeqCst),
                    0,
                    "two holders at once"
                );
                tokens.lock().unwrap().push(lease.fencing_token());
                tokio::time::sleep(Duration::from_millis(5)).await;
                holders.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                lock.unlock().await.unwrap();
            }
            store.close().await.unwrap();
        }));
    }
    for task in tasks {
        tokio::time::timeout(Duration::from_secs(30), task)
            .await
            .expect("the lock loop finished")
            .unwrap();
    }
    let tokens = tokens.lock().unwrap().clone();
    assert_eq!(tokens.len(), 24);
    assert!(
        tokens.windows(2).all(|w| w[0] < w[1]),
        "tokens rise with each acquisition: {tokens:?}"
    );
    let store = store_in(&ns).await;
    assert_eq!(store.get("c", ReadOptions::default()).await.unwrap(), None);
    let zk = raw().await;
    let queued = zk
        .list_children(&format!("/{ns}/__kvlocks/c"))
        .await
        .unwrap_or_default();
    assert!(queued.is_empty(), "tickets left: {queued:?}");
    store.delete_tree("").await.unwrap();
    store.close().await.unwrap();
}
