//! What only the etcd backend has: its limits, failure modes, storage layout, leases and
//! background tasks, against the live server named by `KV_TEST_ETCD_ENDPOINTS`.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use etcd_client::{Client, EventType, LeaseTimeToLiveOptions, WatchOptions};
use futures::StreamExt;
use kv_core::{
    Condition, ConditionFailure, Error, LockOptions, LockState, ReadOptions, Store, Transaction,
    WriteOptions,
};
use kv_etcd::{Config, DEFAULT_MAX_REQUEST_BYTES, EtcdStore};

fn endpoints() -> Vec<String> {
    let endpoints = std::env::var("KV_TEST_ETCD_ENDPOINTS").unwrap_or_else(|_| {
        panic!(
            "KV_TEST_ETCD_ENDPOINTS not set: run the README test command or `eval \"$(scripts/servers env)\"`"
        )
    });
    endpoints.split(',').map(|e| e.trim().to_owned()).collect()
}

/// A namespace no other test (or earlier run) uses.
fn unique(name: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("kvtest-etcd-{name}-{nanos}")
}

async fn store_in(namespace: &str) -> EtcdStore {
    let config = Config::builder()
        .endpoints(endpoints())
        .namespace(namespace)
        .build()
        .unwrap();
    EtcdStore::connect(config).await.unwrap()
}

async fn raw() -> Client {
    Client::connect(endpoints(), None).await.unwrap()
}

async fn raw_get(client: &mut Client, key: &str) -> Option<etcd_client::KeyValue> {
    client.get(key, None).await.unwrap().kvs().first().cloned()
}

/// The declared value limit is honest on both sides: a value at the limit fits even with the
/// longest key, a TTL lease and a conditional write; one byte more is refused before sending;
/// and the server really refuses requests above its default limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn value_size_limit() {
    let ns = unique("value-size");
    let store = store_in(&ns).await;
    let caps = store.capabilities().clone();
    assert!(caps.max_value_len < DEFAULT_MAX_REQUEST_BYTES);
    assert!(
        caps.max_value_len > 1_500_000,
        "max_value_len {}",
        caps.max_value_len
    );
    let long_key = format!("k/{}", "x".repeat(caps.max_key_len - 2));
    assert_eq!(long_key.len(), caps.max_key_len);
    let at_limit = Bytes::from(vec![7u8; caps.max_value_len]);
    store
        .put(
            &long_key,
            at_limit.clone(),
            WriteOptions::with_ttl(Duration::from_secs(30)),
        )
        .await
        .expect("a value at the limit with the longest key and a TTL");
    let read = store
        .get(&long_key, ReadOptions::default())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(read.value.len(), caps.max_value_len);
    store
        .atomic_put(
            &long_key,
            at_limit.clone(),
            Some(&read),
            WriteOptions::with_ttl(Duration::from_secs(30)),
        )
        .await
        .expect("a CAS write at the limit");
    let over = Bytes::from(vec![7u8; caps.max_value_len + 1]);
    let started = Instant::now();
    match store.put("other", over, WriteOptions::default()).await {
        Err(Error::ValueTooLarge { size, max, .. }) => {
            assert_eq!((size, max), (caps.max_value_len + 1, caps.max_value_len))
        }
        other => panic!("over the limit: {other:?}"),
    }
    assert!(
        started.elapsed() < Duration::from_millis(100),
        "refused locally"
    );
    assert!(!store.exists("other", ReadOptions::default()).await.unwrap());

    // The server's own limit is real: the same write through the raw client, a little above
    // etcd's default request limit, is refused by the server.
    let mut client = raw().await;
    let result = client
        .put(
            format!("{ns}/raw-too-big"),
            vec![1u8; DEFAULT_MAX_REQUEST_BYTES + 1],
            None,
        )
        .await;
    assert!(result.is_err(), "etcd accepted a request above its limit");
    store.delete_tree("").await.unwrap();
}

/// 3000 keys: listed completely and in order through several pages; delete_tree removes all
/// of them in one revision (one atomic transaction).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_trees_paginate_and_delete_atomically() {
    const KEYS: usize = 3000;
    let ns = unique("large-tree");
    let config = Config::builder()
        .endpoints(endpoints())
        .namespace(&ns)
        .page_size(250)
        .build()
        .unwrap();
    let store = EtcdStore::connect(config).await.unwrap();
    // Written concurrently, 64 at a time.
    futures::stream::iter(0..KEYS)
        .map(|i| {
            let store = &store;
            async move {
                store
                    .put(
                        &format!("tree/{:02}/{i:05}", i % 7),
                        format!("v{i}").into(),
                        WriteOptions::default(),
                    )
                    .await
                    .unwrap()
            }
        })
        .buffer_unordered(64)
        .collect::<Vec<()>>()
        .await;
    store
        .put("tree", "dir value".into(), WriteOptions::default())
        .await
        .unwrap();
    store
        .put("treeside/x", "sibling".into(), WriteOptions::default())
        .await
        .unwrap();

    let started = Instant::now();
    let listed = store.list("tree", ReadOptions::default()).await.unwrap();
    let list_time = started.elapsed();
    assert_eq!(listed.len(), KEYS, "every key across 12 pages");
    assert!(listed.windows(2).all(|w| w[0].key < w[1].key), "ascending");
    assert!(listed.iter().all(|p| p.key.starts_with("tree/")));
    let watched = store
        .watch_tree("tree", ReadOptions::default())
        .await
        .unwrap()
        .next()
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        watched, listed,
        "watch_tree's first snapshot pages the same way"
    );

    // Watch the raw range to see the revisions of the deletions.
    let mut client = raw().await;
    let now = client
        .get("x", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    let prefix = format!("{ns}/tree");
    let (_, mut events) = client
        .watch(
            prefix.clone(),
            Some(
                WatchOptions::new()
                    .with_prefix()
                    .with_start_revision(now + 1),
            ),
        )
        .await
        .unwrap()
        .split();
    let started = Instant::now();
    store.delete_tree("tree").await.unwrap();
    let delete_time = started.elapsed();
    let mut revisions = std::collections::BTreeSet::new();
    let mut deleted = 0;
    while deleted < KEYS + 1 {
        let response = tokio::time::timeout(Duration::from_secs(10), events.message())
            .await
            .expect("delete events")
            .unwrap()
            .unwrap();
        for event in response.events() {
            assert_eq!(event.event_type(), EventType::Delete);
            revisions.insert(event.kv().unwrap().mod_revision());
            deleted += 1;
        }
    }
    assert_eq!(revisions.len(), 1, "one revision: the delete is atomic");
    assert!(
        store
            .list("tree", ReadOptions::default())
            .await
            .unwrap()
            .is_empty()
    );
    assert!(!store.exists("tree", ReadOptions::default()).await.unwrap());
    assert_eq!(
        store.list("", ReadOptions::default()).await.unwrap().len(),
        1,
        "the sibling stays"
    );
    eprintln!("3000 keys: list {list_time:?}, delete_tree {delete_time:?}");
    store.delete_tree("").await.unwrap();
}

/// A dead endpoint is a typed error within the connect timeout, not a hang or a panic.
#[tokio::test(flavor = "current_thread")]
async fn dead_endpoint_is_unavailable_quickly() {
    let config = Config::builder()
        .endpoint("http://127.0.0.1:1")
        .connect_timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    let started = Instant::now();
    match EtcdStore::connect(config).await {
        Err(Error::Unavailable { .. } | Error::Timeout { .. }) => {}
        other => panic!("dead endpoint: {other:?}"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
    match EtcdStore::connect_url("etcd://127.0.0.1:1?connect_timeout=500ms").await {
        Err(e) if e.is_transient() => {}
        other => panic!("dead endpoint by URL: {other:?}"),
    }
}

/// A request to a server that stopped answering times out with `Timeout`. Simulated with a
/// listener that accepts connections and never answers.
#[tokio::test(flavor = "current_thread")]
async fn silent_server_times_out() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let hold = tokio::spawn(async move {
        let mut sockets = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            sockets.push(socket);
        }
    });
    let config = Config::builder()
        .endpoint(format!("http://{address}"))
        .connect_timeout(Duration::from_millis(500))
        .build()
        .unwrap();
    let started = Instant::now();
    let result = EtcdStore::connect(config).await;
    assert!(
        matches!(result, Err(ref e) if e.is_transient()),
        "silent server: {result:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(2));
    hold.abort();
}

/// Plain keys and bytes: the raw client (and etcdctl) read what the store writes, the store
/// reads what they write; the namespace is a plain key prefix; TTLs are leases rounded up to
/// whole seconds; a write without TTL detaches the lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_layout_is_plain_etcd() {
    let ns = unique("layout");
    let store = store_in(&ns).await;
    let mut client = raw().await;

    store
        .put(
            "a/b",
            Bytes::from_static(b"\x00\xffbytes"),
            WriteOptions::default(),
        )
        .await
        .unwrap();
    let kv = raw_get(&mut client, &format!("{ns}/a/b"))
        .await
        .expect("plain key");
    assert_eq!(kv.value(), b"\x00\xffbytes", "plain value bytes");
    assert_eq!(kv.lease(), 0);
    let pair = store
        .get("a/b", ReadOptions::default())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        pair.last_index,
        kv.mod_revision() as u64,
        "last_index is mod_revision"
    );

    client
        .put(format!("{ns}/from/raw"), "written by etcdctl's peers", None)
        .await
        .unwrap();
    assert_eq!(
        store
            .get("from/raw", ReadOptions::default())
            .await
            .unwrap()
            .unwrap()
            .value,
        "written by etcdctl's peers"
    );

    // etcdctl itself, if installed (it is wherever scripts/servers installed etcd).
    let key = format!("{ns}/a/b");
    let etcdctl = tokio::task::spawn_blocking(move || {
        std::process::Command::new("etcdctl")
            .arg(format!("--endpoints={}", endpoints()[0]))
            .args(["get", "--print-value-only", &key])
            .output()
    })
    .await
    .unwrap()
    .expect("etcdctl is installed with the etcd server (Debian etcd-client)");
    assert!(etcdctl.status.success());
    assert_eq!(etcdctl.stdout, b"\x00\xffbytes\n");

    // TTL: a lease of the TTL rounded up to whole seconds.
    store
        .put(
            "ttl",
            "v".into(),
            WriteOptions::with_ttl(Duration::from_millis(2500)),
        )
        .await
        .unwrap();
    let written = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let kv = raw_get(&mut client, &format!("{ns}/ttl")).await.unwrap();
    assert_ne!(kv.lease(), 0, "bound to a lease");
    // The lease ID is negative (etcd never chooses one) and carries the deadline, Unix
    // milliseconds, in bits 20-61.
    assert!(kv.lease() < 0, "lease ID {:x}", kv.lease());
    let deadline = (kv.lease() as u64 >> 20) & ((1 << 42) - 1);
    assert!(
        deadline.abs_diff(written + 2500) < 1000,
        "deadline {deadline} for a write at {written} with a 2.5 s TTL"
    );
    let lease = client
        .lease_time_to_live(kv.lease(), Some(LeaseTimeToLiveOptions::new().with_keys()))
        .await
        .unwrap();
    assert_eq!(lease.granted_ttl(), 3, "2.5 s rounds up to 3 s");
    assert_eq!(lease.keys().len(), 1, "one lease per TTL write");
    store
        .put("ttl", "permanent".into(), WriteOptions::default())
        .await
        .unwrap();
    let kv = raw_get(&mut client, &format!("{ns}/ttl")).await.unwrap();
    assert_eq!(kv.lease(), 0, "a write without TTL detaches the lease");

    // The namespace isolates: another namespace sees nothing, the root sees only its own.
    let other = store_in(&format!("{ns}-other")).await;
    other
        .put("a/b", "other".into(), WriteOptions::default())
        .await
        .unwrap();
    let keys: Vec<String> = store
        .list("", ReadOptions::default())
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.key)
        .collect();
    assert_eq!(keys, ["a/b", "from/raw", "ttl"]);
    store.delete_tree("").await.unwrap();
    assert_eq!(
        other
            .get("a/b", ReadOptions::default())
            .await
            .unwrap()
            .unwrap()
            .value,
        "other",
        "delete_tree(\"\") stays in its namespace"
    );
    // Foreign keys that break the key rules are never listed.
    client
        .put(format!("{ns}-other/x/__kvlock"), "internal", None)
        .await
        .unwrap();
    client
        .put(format!("{ns}-other/x//y"), "odd", None)
        .await
        .unwrap();
    assert_eq!(
        other.list("", ReadOptions::default()).await.unwrap().len(),
        1
    );
    client
        .delete(
            format!("{ns}-other/"),
            Some(etcd_client::DeleteOptions::new().with_prefix()),
        )
        .await
        .unwrap();
}

/// The server's minimum lease TTL is what the store declares; a 1 s grant on etcd 3.4 with
/// default settings becomes 2 s, and keys expire within the declared precision.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn min_ttl_is_the_servers_and_expiry_is_on_time() {
    let ns = unique("min-ttl");
    let store = store_in(&ns).await;
    let caps = store.capabilities().clone();
    let mut client = raw().await;
    let granted = client.lease_grant(1, None).await.unwrap();
    assert_eq!(caps.min_ttl, Duration::from_secs(granted.ttl() as u64));
    client.lease_revoke(granted.id()).await.unwrap();
    assert!(matches!(
        store
            .put(
                "k",
                "v".into(),
                WriteOptions::with_ttl(caps.min_ttl - Duration::from_millis(1))
            )
            .await,
        Err(Error::InvalidOption(_))
    ));
    // A whole-second TTL and one just above (rounded up to the next second: the worst case).
    let ttls = [caps.min_ttl, caps.min_ttl + Duration::from_millis(100)];
    let started = Instant::now();
    for (i, ttl) in ttls.iter().enumerate() {
        store
            .put(&format!("k{i}"), "v".into(), WriteOptions::with_ttl(*ttl))
            .await
            .unwrap();
    }
    let mut gone = [None, None];
    while gone.iter().any(Option::is_none) {
        for (i, ttl) in ttls.iter().enumerate() {
            if gone[i].is_some() {
                continue;
            }
            let elapsed = started.elapsed();
            if store
                .exists(&format!("k{i}"), ReadOptions::default())
                .await
                .unwrap()
            {
                assert!(
                    elapsed < *ttl + caps.ttl_precision,
                    "a {ttl:?} key still visible after {elapsed:?}"
                );
            } else {
                assert!(elapsed >= *ttl, "a {ttl:?} key expired early: {elapsed:?}");
                gone[i] = Some(elapsed);
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for (ttl, gone) in ttls.iter().zip(gone) {
        eprintln!("a {ttl:?} key was gone after {:?}", gone.unwrap());
    }
}

/// Revoking a held lock's lease (what etcd does when the holder's renewals stop) deletes the
/// key and fires the lost signal at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_the_lease_fires_lost_at_once() {
    let ns = unique("lease-lost");
    let store = store_in(&ns).await;
    let mut lock = store
        .new_lock(
            "l",
            LockOptions::default()
                .value("holder")
                .ttl(Duration::from_secs(10)),
        )
        .await
        .unwrap();
    let lease = lock.lock().await.unwrap();
    let mut client = raw().await;
    let kv = raw_get(&mut client, &format!("{ns}/l")).await.unwrap();
    assert_eq!(kv.value(), b"holder");
    assert_eq!(kv.mod_revision() as u64, lease.fencing_token());
    let granted = client
        .lease_time_to_live(kv.lease(), None)
        .await
        .unwrap()
        .granted_ttl();
    assert_eq!(granted, 10, "the lock's lease has the lock TTL");
    let started = Instant::now();
    client.lease_revoke(kv.lease()).await.unwrap();
    let state = tokio::time::timeout(Duration::from_secs(2), lease.lost())
        .await
        .expect("lost fires at once, long before the 10 s TTL");
    assert_eq!(state, LockState::Lost);
    eprintln!(
        "lost signal {:?} after the lease was revoked",
        started.elapsed()
    );
    assert!(matches!(lock.unlock().await, Err(Error::LockLost { .. })));
    // Someone else overwriting the key also counts as lost.
    let lease = lock.lock().await.unwrap();
    client
        .put(format!("{ns}/l"), "intruder", None)
        .await
        .unwrap();
    assert_eq!(
        tokio::time::timeout(Duration::from_secs(2), lease.lost())
            .await
            .expect("lost on overwrite"),
        LockState::Lost
    );
    assert!(matches!(lock.unlock().await, Err(Error::LockLost { .. })));
    assert_eq!(
        raw_get(&mut client, &format!("{ns}/l"))
            .await
            .unwrap()
            .value(),
        b"intruder",
        "unlock never deletes someone else's key"
    );
    store.delete_tree("").await.unwrap();
    store.close().await.unwrap();
}

/// Every background task ends with its owner: a dropped watch stream, a dropped held lock
/// (released in the background: its key and lease go away), and the closed store. Lock
/// leases are revoked on release, not left to expire.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn background_tasks_end_with_their_owners() {
    let ns = unique("tasks");
    let store = store_in(&ns).await;
    let mut client = raw().await;
    assert_eq!(store.background_tasks(), 0);

    let mut watch = store.watch("w", ReadOptions::default()).await.unwrap();
    let mut tree = store.watch_tree("", ReadOptions::default()).await.unwrap();
    watch.next().await.unwrap().unwrap();
    tree.next().await.unwrap().unwrap();
    assert_eq!(store.background_tasks(), 2);
    drop(watch);
    drop(tree);
    wait_for(|| store.background_tasks() == 0, "watch tasks end on drop").await;

    let mut lock = store
        .new_lock("l", LockOptions::default().ttl(Duration::from_secs(30)))
        .await
        .unwrap();
    lock.lock().await.unwrap();
    let lease_id = raw_get(&mut client, &format!("{ns}/l"))
        .await
        .unwrap()
        .lease();
    wait_for(
        || store.background_tasks() == 1,
        "one holder task per held lock",
    )
    .await;
    drop(lock);
    wait_for(
        || store.background_tasks() == 0,
        "the holder task ends on drop",
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(3);
    while raw_get(&mut client, &format!("{ns}/l")).await.is_some() {
        assert!(Instant::now() < deadline, "a dropped lock is released");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let ttl = client
        .lease_time_to_live(lease_id, None)
        .await
        .unwrap()
        .ttl();
    assert_eq!(ttl, -1, "the released lock's lease is revoked");

    // Closing: locks released and leases revoked, watches ended, tasks gone.
    let mut lock = store
        .new_lock("l2", LockOptions::default().ttl(Duration::from_secs(30)))
        .await
        .unwrap();
    lock.lock().await.unwrap();
    let lease_id = raw_get(&mut client, &format!("{ns}/l2"))
        .await
        .unwrap()
        .lease();
    let mut watch = store.watch("w", ReadOptions::default()).await.unwrap();
    watch.next().await.unwrap().unwrap();
    wait_for(|| store.background_tasks() == 2, "a holder and a watch").await;
    store.close().await.unwrap();
    assert!(matches!(watch.next().await, Some(Err(Error::Closed))));
    wait_for(|| store.background_tasks() == 0, "no task after close").await;
    assert!(raw_get(&mut client, &format!("{ns}/l2")).await.is_none());
    let ttl = client
        .lease_time_to_live(lease_id, None)
        .await
        .unwrap()
        .ttl();
    assert_eq!(ttl, -1, "close revoked the lock's lease");
    client
        .delete(
            format!("{ns}/"),
            Some(etcd_client::DeleteOptions::new().with_prefix()),
        )
        .await
        .unwrap();
}

async fn wait_for(mut check: impl FnMut() -> bool, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(3);
    while !check() {
        assert!(Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Nothing blocks the runtime: the whole API on a single-threaded runtime, with a ticker task
/// that must keep running while calls are in flight.
#[tokio::test(flavor = "current_thread")]
async fn works_on_a_single_threaded_runtime() {
    let ns = unique("current-thread");
    let store = store_in(&ns).await;
    let ticks = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let ticker = {
        let ticks = ticks.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(10)).await;
                ticks.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        })
    };
    let mut watch = store.watch("k", ReadOptions::default()).await.unwrap();
    assert_eq!(watch.next().await.unwrap().unwrap(), None);
    let mut lock = store
        .new_lock("lock", LockOptions::default().ttl(Duration::from_secs(3)))
        .await
        .unwrap();
    lock.lock().await.unwrap();
    for i in 0..20 {
        store
            .put("k", format!("{i}").into(), WriteOptions::default())
            .await
            .unwrap();
    }
    let last = loop {
        let pair = watch.next().await.unwrap().unwrap().unwrap();
        if pair.value == "19" {
            break pair;
        }
    };
    assert_eq!(
        store
            .get("k", ReadOptions::stale())
            .await
            .unwrap()
            .map(|p| p.last_index),
        Some(last.last_index)
    );
    tokio::time::sleep(Duration::from_secs(2)).await; // a renewal happens meanwhile
    assert!(lock.lease().unwrap().is_held());
    lock.unlock().await.unwrap();
    assert!(ticks.load(std::sync::atomic::Ordering::Relaxed) > 100);
    ticker.abort();
    store.delete_tree("").await.unwrap();
    store.close().await.unwrap();
}

/// A store connected from a URL with a namespace reads back through a builder-made store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn url_and_builder_agree() {
    let ns = unique("url");
    let url = format!(
        "{}/{ns}?request_timeout=3s&page_size=2",
        endpoints()[0].replace("http://", "etcd://")
    );
    let by_url = EtcdStore::connect_url(&url).await.unwrap();
    assert_eq!(by_url.config().namespace, ns);
    for k in ["a", "b", "c", "d", "e"] {
        by_url
            .put(k, k.into(), WriteOptions::default())
            .await
            .unwrap();
    }
    let by_builder = store_in(&ns).await;
    let listed = by_builder.list("", ReadOptions::default()).await.unwrap();
    assert_eq!(listed.len(), 5);
    assert_eq!(
        by_url.list("", ReadOptions::default()).await.unwrap(),
        listed
    );
    by_url.delete_tree("").await.unwrap();
}

/// What etcd 3.4 (Debian 12's server, the one CI runs) lacks of etcd-client's API: the
/// RangeStream RPC behind `KvClient::get_stream` (etcd 3.7) is unimplemented, which is why
/// `list` pages with `limit` + `more` instead. Progress requests (3.4+) work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_etcd_3_4_lacks() {
    let mut client = raw().await;
    let version = client.status().await.unwrap().version().to_owned();
    eprintln!("etcd server version {version}");
    let minor: u32 = version.split('.').nth(1).unwrap().parse().unwrap();
    let streamed = async {
        let mut stream = client.kv_client().get_stream("x", None).await?;
        stream.message().await
    }
    .await;
    if minor < 7 {
        match streamed {
            Err(etcd_client::Error::GRpcStatus(status)) => {
                assert_eq!(status.code(), tonic::Code::Unimplemented, "{status:?}")
            }
            other => panic!("RangeStream on etcd {version}: {other:?}"),
        }
    } else {
        streamed.expect("RangeStream exists from etcd 3.7");
    }
    let (mut requests, mut responses) = client
        .watch("x", Some(WatchOptions::new()))
        .await
        .unwrap()
        .split();
    assert!(responses.message().await.unwrap().unwrap().created());
    requests.request_progress().await.unwrap();
    let progress = tokio::time::timeout(Duration::from_secs(5), responses.message())
        .await
        .expect("a progress notification")
        .unwrap()
        .unwrap();
    assert!(progress.events().is_empty() && progress.header().unwrap().revision() > 0);
}

/// A holder that dies without unlocking (its process is gone: here its runtime is shut down
/// with the lock neither released nor dropped) loses the lock within its TTL: etcd expires
/// the lease and another client acquires it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_holder_loses_the_lock_within_its_ttl() {
    let ns = unique("dead-holder");
    let ttl = Duration::from_secs(2);
    let holder_ns = ns.clone();
    let dead_token = tokio::task::spawn_blocking(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let token = runtime.block_on(async {
            let store = store_in(&holder_ns).await;
            let mut lock = store
                .new_lock("l", LockOptions::default().value("dead").ttl(ttl))
                .await
                .unwrap();
            let token = lock.lock().await.unwrap().fencing_token();
            // Neither unlocked nor dropped: a crash.
            std::mem::forget(lock);
            std::mem::forget(store);
            token
        });
        runtime.shutdown_background();
        token
    })
    .await
    .unwrap();
    let died = Instant::now();
    let store = store_in(&ns).await;
    let caps = store.capabilities().clone();
    assert_eq!(
        store
            .get("l", ReadOptions::default())
            .await
            .unwrap()
            .unwrap()
            .value,
        "dead",
        "still held right after the crash"
    );
    let mut lock = store
        .new_lock("l", LockOptions::default().ttl(ttl))
        .await
        .unwrap();
    let lease = tokio::time::timeout(
        ttl + caps.ttl_precision + Duration::from_secs(1),
        lock.lock(),
    )
    .await
    .expect("the dead holder's lock expires within its TTL")
    .unwrap();
    let taken_after = died.elapsed();
    assert!(lease.fencing_token() > dead_token);
    eprintln!("a dead holder's {ttl:?} lock was taken over after {taken_after:?}");
    lock.unlock().await.unwrap();
    store.delete_tree("").await.unwrap();
}

/// A lock key written with a TTL whose deadline has passed is free at once, though etcd still
/// keeps its lease (granted for the TTL rounded up to whole seconds, and ended on etcd's own
/// schedule): `lock` finds the expired holder in its transaction, revokes its lease and takes
/// the key, long before etcd would have ended that lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_key_past_its_ttl_deadline_is_taken_at_once() {
    let ns = unique("lock-expired-holder");
    let store = store_in(&ns).await;
    let mut client = raw().await;
    // The handle narrows its estimate of the server's clock over its first probes; a wide
    // estimate would judge the deadline late.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let written = Instant::now();
    // The shortest TTL etcd allows, just over 2 s: etcd grants 3 s for it and ends the lease
    // no earlier than that, so only our own revocation can free the key before 3 s.
    store
        .put(
            "l",
            "old".into(),
            WriteOptions::with_ttl(Duration::from_millis(2001)),
        )
        .await
        .unwrap();
    let old = raw_get(&mut client, &format!("{ns}/l"))
        .await
        .expect("the TTL key is stored");
    let mut lock = store
        .new_lock("l", LockOptions::default().value("new"))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(2100).saturating_sub(written.elapsed())).await;
    // No `get` in between: a read would revoke the expired lease itself. Short attempts
    // (cancel-safe) until the deadline has passed by the handle's clock estimate.
    let lease = loop {
        if let Ok(acquired) = tokio::time::timeout(Duration::from_millis(100), lock.lock()).await {
            break acquired.unwrap();
        }
        assert!(
            written.elapsed() < Duration::from_millis(2900),
            "not taken {:?} after the write",
            written.elapsed()
        );
    };
    let taken_after = written.elapsed();
    assert!(
        taken_after < Duration::from_millis(2950),
        "taken {taken_after:?} after the write: etcd's 3 s lease had to end first"
    );
    assert!(lease.fencing_token() > old.mod_revision() as u64);
    let ttl = client
        .lease_time_to_live(old.lease(), None)
        .await
        .unwrap()
        .ttl();
    assert_eq!(ttl, -1, "the expired holder's lease was revoked");
    assert_eq!(
        raw_get(&mut client, &format!("{ns}/l"))
            .await
            .unwrap()
            .value(),
        b"new"
    );
    eprintln!("a lock over a key past its TTL deadline was taken after {taken_after:?}");
    lock.unlock().await.unwrap();
    store.close().await.unwrap();
}

/// A stored key, printable and exact (non-UTF-8 bytes escaped).
fn shown(key: &[u8]) -> String {
    key.escape_ascii().to_string()
}

/// The stored keys under `prefix`, sorted, as [`shown`].
async fn raw_keys(client: &mut Client, prefix: &str) -> Vec<String> {
    let response = client
        .get(
            prefix,
            Some(
                etcd_client::GetOptions::new()
                    .with_prefix()
                    .with_keys_only(),
            ),
        )
        .await
        .unwrap();
    response.kvs().iter().map(|kv| shown(kv.key())).collect()
}

async fn list_keys(store: &EtcdStore, directory: &str) -> Vec<String> {
    store
        .list(directory, ReadOptions::default())
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.key)
        .collect()
}

/// `delete_tree(dir)` deletes exactly the keys `list(dir)` shows plus `dir` itself, in one
/// transaction (one revision): stored keys that break the key rules, written by other
/// programs, stay wherever they sort (between valid keys too), and so do keys outside `dir`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_tree_deletes_exactly_what_list_shows() {
    let ns = unique("delete-tree-exact");
    let store = store_in(&ns).await;
    let mut client = raw().await;
    for key in [
        "dir", "dir/a", "dir/a/b", "dir/b/c", "dir/z", "dira/x", "other/x",
    ] {
        store
            .put(key, "mine".into(), WriteOptions::default())
            .await
            .unwrap();
    }
    let foreign: [&[u8]; 9] = [
        b"dir/",
        b"dir//x",
        b"dir/./y",
        b"dir/a/",
        b"dir/b//d",
        b"dir/bad\xff",
        b"dir/x/__kvlock",
        b"dir/z/",
        b"dir/z//",
    ];
    for key in foreign {
        client
            .put([format!("{ns}/").as_bytes(), key].concat(), "foreign", None)
            .await
            .unwrap();
    }
    let listed = list_keys(&store, "dir").await;
    assert_eq!(listed, ["dir/a", "dir/a/b", "dir/b/c", "dir/z"]);

    let now = client
        .get("x", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    let (_, mut events) = client
        .watch(
            format!("{ns}/"),
            Some(
                WatchOptions::new()
                    .with_prefix()
                    .with_start_revision(now + 1),
            ),
        )
        .await
        .unwrap()
        .split();
    store.delete_tree("dir").await.unwrap();
    let mut deleted = Vec::new();
    let mut revisions = std::collections::BTreeSet::new();
    while deleted.len() < listed.len() + 1 {
        let response = tokio::time::timeout(Duration::from_secs(5), events.message())
            .await
            .expect("delete events")
            .unwrap()
            .unwrap();
        for event in response.events() {
            assert_eq!(event.event_type(), EventType::Delete);
            let kv = event.kv().unwrap();
            revisions.insert(kv.mod_revision());
            deleted.push(shown(kv.key()));
        }
    }
    assert_eq!(revisions.len(), 1, "one revision: the delete is atomic");
    let mut expected: Vec<String> = std::iter::once("dir")
        .chain(listed.iter().map(String::as_str))
        .map(|k| format!("{ns}/{k}"))
        .collect();
    expected.sort();
    deleted.sort();
    assert_eq!(deleted, expected, "the listed keys and the directory key");

    let mut left = raw_keys(&mut client, &format!("{ns}/")).await;
    let mut expected: Vec<String> = foreign
        .iter()
        .map(|k| shown(&[format!("{ns}/").as_bytes(), k].concat()))
        .chain(["dira/x", "other/x"].map(|k| format!("{ns}/{k}")))
        .collect();
    left.sort();
    expected.sort();
    assert_eq!(left, expected, "every key list(dir) did not show is left");
    client
        .delete(
            format!("{ns}/"),
            Some(etcd_client::DeleteOptions::new().with_prefix()),
        )
        .await
        .unwrap();
}

/// More runs of listed keys (separated by foreign keys) than one etcd transaction may hold
/// (`--max-txn-ops`, 128 by default): still exactly the listed keys are deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_tree_with_more_runs_than_one_transaction_holds() {
    const RUNS: usize = 300;
    let ns = unique("delete-tree-runs");
    let store = store_in(&ns).await;
    let client = raw().await;
    store
        .put("dir", "dir".into(), WriteOptions::default())
        .await
        .unwrap();
    futures::stream::iter(0..RUNS)
        .map(|i| {
            let (store, mut client, ns) = (&store, client.clone(), &ns);
            async move {
                let key = format!("dir/k{i:04}");
                store
                    .put(&key, "mine".into(), WriteOptions::default())
                    .await
                    .unwrap();
                // `dir/k0001/` sorts between `dir/k0001` and `dir/k0002`.
                client
                    .put(format!("{ns}/{key}/"), "foreign", None)
                    .await
                    .unwrap();
            }
        })
        .buffer_unordered(32)
        .collect::<Vec<()>>()
        .await;
    assert_eq!(list_keys(&store, "dir").await.len(), RUNS);
    store.delete_tree("dir").await.unwrap();
    assert!(list_keys(&store, "dir").await.is_empty());
    assert!(!store.exists("dir", ReadOptions::default()).await.unwrap());
    let mut client = client;
    let left = raw_keys(&mut client, &format!("{ns}/")).await;
    assert_eq!(left.len(), RUNS, "every foreign key is left");
    assert!(left.iter().all(|k| k.ends_with('/')));
    client
        .delete(
            format!("{ns}/"),
            Some(etcd_client::DeleteOptions::new().with_prefix()),
        )
        .await
        .unwrap();
}

/// Foreign keys written into the tree while `delete_tree` runs (between its read and its
/// delete) are never deleted: the delete is guarded and redone if the tree changed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_tree_never_deletes_a_foreign_key_written_meanwhile() {
    const KEYS: usize = 200;
    let ns = unique("delete-tree-race");
    // Small pages: delete_tree's read takes several round trips, a window for the writer.
    let config = Config::builder()
        .endpoints(endpoints())
        .namespace(&ns)
        .page_size(10)
        .build()
        .unwrap();
    let store = EtcdStore::connect(config).await.unwrap();
    let client = raw().await;
    for round in 0..5 {
        let dir = format!("dir{round}");
        futures::stream::iter(0..KEYS)
            .map(|i| {
                let (store, dir) = (&store, &dir);
                async move {
                    store
                        .put(
                            &format!("{dir}/k{i:04}"),
                            "mine".into(),
                            WriteOptions::default(),
                        )
                        .await
                        .unwrap()
                }
            })
            .buffer_unordered(32)
            .collect::<Vec<()>>()
            .await;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writer = {
            let (mut client, stop) = (client.clone(), stop.clone());
            let prefix = format!("{ns}/{dir}");
            tokio::spawn(async move {
                let mut written = Vec::new();
                let mut i = 0;
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    // Inside the tree's range, between two listed keys, never listed itself.
                    let key = format!("{prefix}/k{:04}/{i}/", (i * 37) % KEYS);
                    client.put(key.clone(), "foreign", None).await.unwrap();
                    written.push(key);
                    i += 1;
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                written
            })
        };
        tokio::time::sleep(Duration::from_millis(5)).await;
        store.delete_tree(&dir).await.unwrap();
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let written = writer.await.unwrap();
        assert!(list_keys(&store, &dir).await.is_empty(), "round {round}");
        let mut client = client.clone();
        let mut left = raw_keys(&mut client, &format!("{ns}/{dir}/")).await;
        let mut written = written;
        left.sort();
        written.sort();
        assert_eq!(
            left.len(),
            written.len(),
            "round {round}: foreign keys written during delete_tree were deleted"
        );
        assert_eq!(left, written);
    }
    let mut client = client;
    client
        .delete(
            format!("{ns}/"),
            Some(etcd_client::DeleteOptions::new().with_prefix()),
        )
        .await
        .unwrap();
}

/// Keys bound to leases this crate did not grant for a TTL write are never treated as
/// expired, whatever their ID looks like: a server-chosen ID, a positive ID with bit 62 set
/// (as etcd's own IDs have for about half of all members) whose bits read as a deadline in
/// 1970, and a negative ID without the checksum. Reads neither hide them nor revoke their
/// lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_of_other_programs_are_never_filtered() {
    let ns = unique("foreign-leases");
    let store = store_in(&ns).await;
    let mut client = raw().await;
    let chosen = [(1i64 << 62) | (1 << 20), i64::MIN | (1 << 20) | 1];
    let mut leases = Vec::new();
    for id in chosen {
        // A leftover of an interrupted earlier run would make the grant fail.
        let _ = client.lease_revoke(id).await;
        let granted = client
            .lease_grant(60, Some(etcd_client::LeaseGrantOptions::new().with_id(id)))
            .await
            .unwrap();
        leases.push(granted.id());
    }
    leases.push(client.lease_grant(60, None).await.unwrap().id());
    for (i, id) in leases.iter().enumerate() {
        client
            .put(
                format!("{ns}/k{i}"),
                "foreign",
                Some(etcd_client::PutOptions::new().with_lease(*id)),
            )
            .await
            .unwrap();
    }
    for i in 0..leases.len() {
        let key = format!("k{i}");
        assert!(
            store
                .get(&key, ReadOptions::default())
                .await
                .unwrap()
                .is_some()
        );
        assert!(store.exists(&key, ReadOptions::default()).await.unwrap());
        let mut watch = store.watch(&key, ReadOptions::default()).await.unwrap();
        assert!(watch.next().await.unwrap().unwrap().is_some());
    }
    assert_eq!(list_keys(&store, "").await, ["k0", "k1", "k2"]);
    for id in leases {
        let ttl = client.lease_time_to_live(id, None).await.unwrap().ttl();
        assert!(ttl > 0, "lease {id:x} was revoked (ttl {ttl})");
        client.lease_revoke(id).await.unwrap();
    }
    store.close().await.unwrap();
}

/// A key written by a transaction is stored exactly like one written by `put`: the plain
/// value, `mod_revision` = the returned `last_index`, no lease without TTL (a TTL key written
/// again without TTL is detached from its lease), and with a TTL a lease of this crate whose
/// ID carries the deadline and whose granted TTL is the TTL rounded up. Puts with the same TTL
/// in one transaction share one lease; all keys of a transaction get one revision, which a raw
/// watch sees as one response.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transaction_keys_are_stored_like_puts() {
    let ns = unique("txn-layout");
    let store = store_in(&ns).await;
    let mut client = raw().await;
    store
        .put(
            "was-ttl",
            "v".into(),
            WriteOptions::with_ttl(Duration::from_secs(30)),
        )
        .await
        .unwrap();
    let (watcher, mut events) = client
        .watch(format!("{ns}/"), Some(WatchOptions::new().with_prefix()))
        .await
        .unwrap()
        .split();
    let ttl = WriteOptions::with_ttl(Duration::from_millis(2500));
    let written = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let pairs = store
        .transaction(
            Transaction::new()
                .when(Condition::absent("plain"))
                .put(
                    "plain",
                    Bytes::from_static(b"\x00\xffbytes"),
                    WriteOptions::default(),
                )
                .put("was-ttl", "permanent", WriteOptions::default())
                .put("ttl/a", "a", ttl.clone())
                .put("ttl/b", "b", ttl)
                .delete("never-was"),
        )
        .await
        .unwrap();
    assert_eq!(pairs.len(), 4);
    let revision = pairs[0].last_index;
    assert!(
        pairs.iter().all(|p| p.last_index == revision),
        "one revision"
    );

    let plain = raw_get(&mut client, &format!("{ns}/plain")).await.unwrap();
    assert_eq!(plain.value(), b"\x00\xffbytes");
    assert_eq!(plain.lease(), 0);
    assert_eq!(plain.mod_revision() as u64, revision);
    let was_ttl = raw_get(&mut client, &format!("{ns}/was-ttl"))
        .await
        .unwrap();
    assert_eq!(was_ttl.lease(), 0, "a put without TTL detaches the lease");
    let a = raw_get(&mut client, &format!("{ns}/ttl/a")).await.unwrap();
    let b = raw_get(&mut client, &format!("{ns}/ttl/b")).await.unwrap();
    assert!(a.lease() < 0, "a lease ID of this crate: {:x}", a.lease());
    assert_eq!(a.lease(), b.lease(), "one lease per TTL in a transaction");
    let deadline = (a.lease() as u64 >> 20) & ((1 << 42) - 1);
    assert!(
        deadline.abs_diff(written + 2500) < 1500,
        "deadline {deadline} for a write at {written} with a 2.5 s TTL"
    );
    let lease = client
        .lease_time_to_live(a.lease(), Some(LeaseTimeToLiveOptions::new().with_keys()))
        .await
        .unwrap();
    assert_eq!(lease.granted_ttl(), 3, "2.5 s rounds up to 3 s, as for put");
    assert_eq!(lease.keys().len(), 2);
    for pair in &pairs {
        assert_eq!(
            store
                .get(&pair.key, ReadOptions::default())
                .await
                .unwrap()
                .as_ref(),
            Some(pair)
        );
    }
    // The raw watch gets the whole transaction in one response, at one revision.
    let response = loop {
        let response = tokio::time::timeout(Duration::from_secs(5), events.message())
            .await
            .expect("the transaction's events")
            .unwrap()
            .unwrap();
        if !response.events().is_empty() {
            break response;
        }
    };
    let revisions: Vec<i64> = response
        .events()
        .iter()
        .map(|e| e.kv().unwrap().mod_revision())
        .collect();
    assert_eq!(revisions, vec![revision as i64; 4], "{revisions:?}");
    assert!(
        response
            .events()
            .iter()
            .all(|e| e.event_type() == EventType::Put)
    );
    drop(watcher);
    store.delete_tree("").await.unwrap();
    store.close().await.unwrap();
}

/// What the server's limits mean for a transaction: a transaction of one more operation
/// than declared is refused before anything is sent (the server itself refuses such a
/// `Txn`, proving the declared number is its limit); the values of one transaction share one
/// request, so two values that fit alone but not together are `InvalidOption` before
/// sending, while a guarded write of a value at the limit with the longest keys commits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transaction_limits_are_the_servers() {
    let ns = unique("txn-limits");
    let store = store_in(&ns).await;
    let mut client = raw().await;
    let caps = store.capabilities().clone();
    assert!(caps.transactions);
    assert_eq!(caps.max_transaction_ops, 128);
    assert!(caps.watch_tree_sees_whole_transactions);

    let over = (0..=caps.max_transaction_ops).fold(Transaction::new(), |t, i| {
        t.put(format!("k{i}"), "v", WriteOptions::default())
    });
    assert!(matches!(
        store.transaction(over).await,
        Err(Error::InvalidOption(_))
    ));
    let raw_over: Vec<etcd_client::TxnOp> = (0..=caps.max_transaction_ops)
        .map(|i| etcd_client::TxnOp::put(format!("{ns}/k{i}"), "v", None))
        .collect();
    let refused = client
        .txn(etcd_client::Txn::new().and_then(raw_over))
        .await
        .expect_err("etcd refuses a Txn over its --max-txn-ops");
    assert!(
        refused.to_string().contains("too many operations"),
        "{refused}"
    );
    assert!(raw_keys(&mut client, &format!("{ns}/")).await.is_empty());

    let long = |c: char| format!("{c}/{}", "x".repeat(caps.max_key_len - 2));
    // Two values that each fit, but not together: over etcd's request limit.
    let half = caps.max_value_len / 2 + 4096;
    assert!(2 * half > DEFAULT_MAX_REQUEST_BYTES);
    let together = Transaction::new()
        .put(long('a'), vec![1u8; half], WriteOptions::default())
        .put(long('b'), vec![2u8; half], WriteOptions::default());
    match store.transaction(together).await {
        Err(Error::InvalidOption(message)) => {
            assert!(message.contains(&long('b')), "{message}");
        }
        Err(other) => panic!("two values over one request: {other}"),
        Ok(pairs) => panic!(
            "two values over one request committed {} pairs",
            pairs.len()
        ),
    }
    let raw_together = etcd_client::Txn::new().and_then([
        etcd_client::TxnOp::put(format!("{ns}/{}", long('a')), vec![1u8; half], None),
        etcd_client::TxnOp::put(format!("{ns}/{}", long('b')), vec![2u8; half], None),
    ]);
    let refused = client
        .txn(raw_together)
        .await
        .expect_err("etcd refuses a request over its --max-request-bytes");
    assert!(refused.to_string().contains("too large"), "{refused}");
    assert!(raw_keys(&mut client, &format!("{ns}/")).await.is_empty());

    // The commonest shape at the limits: a lock-held condition and a put of the largest value,
    // every key as long as allowed, with a TTL.
    let mut lock = store
        .new_lock(&long('l'), LockOptions::default())
        .await
        .unwrap();
    let lease = lock.lock().await.unwrap();
    let pair = lease
        .guarded_put(
            &store,
            &long('v'),
            vec![3u8; caps.max_value_len],
            WriteOptions::with_ttl(Duration::from_secs(30)),
        )
        .await
        .expect("a guarded put of a value at the limit");
    assert_eq!(pair.value.len(), caps.max_value_len);
    lock.unlock().await.unwrap();
    store.delete_tree("").await.unwrap();
    store.close().await.unwrap();
}

/// `LockHeld` is checked on the server against the lock key's `mod_revision`: renewals (many
/// of them, over several TTLs) do not change it; a lock whose lease ends (revoked here, as an
/// expiry does: etcd deletes the key) is lost for fencing at once, before anyone re-acquires,
/// and after another client acquires it, the old holder's guarded writes are refused and
/// write nothing while the new holder's succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fencing_follows_the_lock_key_on_the_server() {
    let ns = unique("txn-fencing");
    let a = store_in(&ns).await;
    let b = store_in(&ns).await;
    let mut client = raw().await;
    let ttl = a.capabilities().min_ttl;
    let mut lock_a = a
        .new_lock("leader", LockOptions::default().value("a").ttl(ttl))
        .await
        .unwrap();
    let lease_a = lock_a.lock().await.unwrap();
    let first = lease_a
        .guarded_put(&a, "resource", "a1", WriteOptions::default())
        .await
        .unwrap();
    // Renewed every TTL/3: after two TTLs the key is still the acquisition's.
    tokio::time::sleep(ttl * 2).await;
    assert_eq!(lease_a.state(), LockState::Held);
    let second = lease_a
        .guarded_put(&a, "resource", "a2", WriteOptions::default())
        .await
        .expect("renewals do not change what is compared");
    assert!(second.last_index > first.last_index);

    // The lease ends on the server (as when it expires): etcd deletes the key.
    let kv = raw_get(&mut client, &format!("{ns}/leader")).await.unwrap();
    assert_eq!(kv.mod_revision() as u64, lease_a.fencing_token());
    client.lease_revoke(kv.lease()).await.unwrap();
    match lease_a
        .guarded_put(&a, "resource", "a3", WriteOptions::default())
        .await
    {
        Err(Error::LockLost { key }) => assert_eq!(key, "leader"),
        other => panic!("a guarded put after the lease ended: {other:?}"),
    }
    let mut lock_b = b
        .new_lock("leader", LockOptions::default().value("b").ttl(ttl))
        .await
        .unwrap();
    let lease_b = tokio::time::timeout(Duration::from_secs(10), lock_b.lock())
        .await
        .unwrap()
        .unwrap();
    assert!(lease_b.fencing_token() > lease_a.fencing_token());
    // The stale holder, through a transaction with more in it: nothing is written.
    let stale = Transaction::new()
        .when(Condition::exists("resource"))
        .when(Condition::lock_held(&lease_a))
        .put("resource", "a4", WriteOptions::default())
        .delete("other");
    match a.transaction(stale).await {
        Err(Error::ConditionFailed { index, key, reason }) => {
            assert_eq!(
                (index, key.as_str(), reason),
                (1, "leader", ConditionFailure::LockLost)
            );
        }
        other => panic!("the stale holder's transaction: {other:?}"),
    }
    assert!(matches!(
        lease_a.guarded_delete(&a, "resource").await,
        Err(Error::LockLost { .. })
    ));
    assert_eq!(
        b.get("resource", ReadOptions::default()).await.unwrap(),
        Some(second),
        "the stale holder wrote nothing"
    );
    let accepted = lease_b
        .guarded_put(&b, "resource", "b1", WriteOptions::default())
        .await
        .unwrap();
    assert_eq!(
        raw_get(&mut client, &format!("{ns}/resource"))
            .await
            .unwrap()
            .mod_revision() as u64,
        accepted.last_index
    );
    lock_b.unlock().await.unwrap();
    let _ = lock_a.unlock().await;
    a.delete_tree("").await.unwrap();
    a.close().await.unwrap();
    b.close().await.unwrap();
}
