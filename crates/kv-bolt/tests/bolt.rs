//! What only the embedded backend has: persistence across reopen, several handles on one
//! path, the on-disk layout, file-level failures, the background sweeper, the value limit.

use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use kv_bolt::{BoltStore, Config, Durability};
use kv_core::{Error, LockOptions, LockState, ReadOptions, Store, WriteOptions};
use tokio::time::{sleep, timeout};

#[path = "support/layout.rs"]
mod layout;
use layout::{
    ENTRIES, EXPIRY, OLD_DATA, OLD_META, STATE, be, has_old_tables, write_two_table_layout,
};

fn no_ttl() -> WriteOptions {
    WriteOptions::default()
}

async fn open(path: &Path) -> BoltStore {
    BoltStore::open(Config::new(path)).await.expect("open")
}

async fn index_of(store: &BoltStore, key: &str) -> u64 {
    store
        .get(key, ReadOptions::default())
        .await
        .unwrap()
        .expect(key)
        .last_index
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reopen_keeps_data_and_last_index_keeps_rising() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let store = open(&path).await;
    store.put("a/b", "one".into(), no_ttl()).await.unwrap();
    store.put("gone", "x".into(), no_ttl()).await.unwrap();
    let first = index_of(&store, "a/b").await;
    let gone = index_of(&store, "gone").await;
    assert!(store.delete("gone").await.unwrap());
    store.close().await.unwrap();

    let store = open(&path).await;
    let pair = store
        .get("a/b", ReadOptions::default())
        .await
        .unwrap()
        .expect("persisted");
    assert_eq!((&pair.value[..], pair.last_index), (&b"one"[..], first));
    assert_eq!(
        store.get("gone", ReadOptions::default()).await.unwrap(),
        None,
        "the delete persisted"
    );
    store.put("gone", "again".into(), no_ttl()).await.unwrap();
    let recreated = index_of(&store, "gone").await;
    assert!(
        recreated > gone && recreated > first,
        "{recreated} after {gone}/{first}"
    );
    store.put("a/b", "two".into(), no_ttl()).await.unwrap();
    let second = index_of(&store, "a/b").await;
    assert!(second > recreated);
    // Dropped without close: every write was already durable.
    drop(store);

    let store = open(&path).await;
    assert_eq!(index_of(&store, "a/b").await, second);
    store.put("a/b", "three".into(), no_ttl()).await.unwrap();
    assert!(index_of(&store, "a/b").await > second);
    store.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_handles_on_one_path_share_watches_and_locks() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let one = open(&path).await;
    let two = open(&path).await;
    assert_eq!(one.path().unwrap(), two.path().unwrap());

    let mut watch = one.watch("k", ReadOptions::default()).await.unwrap();
    assert_eq!(watch.next().await.unwrap().unwrap(), None);
    two.put("k", "from two".into(), no_ttl()).await.unwrap();
    let seen = timeout(Duration::from_secs(2), watch.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap()
        .expect("the put of the other handle");
    assert_eq!(&seen.value[..], b"from two");

    let mut tree = two.watch_tree("dir", ReadOptions::default()).await.unwrap();
    assert!(tree.next().await.unwrap().unwrap().is_empty());
    one.put("dir/x", "1".into(), no_ttl()).await.unwrap();
    let snapshot = timeout(Duration::from_secs(2), tree.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(snapshot.len(), 1);

    let mut mine = one
        .new_lock(
            "lock",
            LockOptions::default()
                .value("one")
                .ttl(Duration::from_secs(2)),
        )
        .await
        .unwrap();
    let lease = mine.lock().await.unwrap();
    assert_eq!(
        &two.get("lock", ReadOptions::default())
            .await
            .unwrap()
            .unwrap()
            .value[..],
        b"one"
    );
    let mut theirs = two
        .new_lock(
            "lock",
            LockOptions::default()
                .value("two")
                .ttl(Duration::from_secs(2)),
        )
        .await
        .unwrap();
    assert!(
        timeout(Duration::from_millis(300), theirs.lock())
            .await
            .is_err(),
        "held by the other handle"
    );
    let waiter = tokio::spawn(async move {
        let lease = theirs.lock().await.unwrap();
        (theirs, lease)
    });
    sleep(Duration::from_millis(100)).await;
    let released = Instant::now();
    mine.unlock().await.unwrap();
    let (mut theirs, their_lease) = timeout(Duration::from_secs(2), waiter)
        .await
        .unwrap()
        .unwrap();
    assert!(
        released.elapsed() < Duration::from_millis(500),
        "woken by the release"
    );
    assert!(their_lease.fencing_token() > lease.fencing_token());
    // Closing one handle releases its lock at once and leaves the other handle working.
    two.close().await.unwrap();
    assert_eq!(their_lease.state(), LockState::Released);
    assert!(matches!(theirs.unlock().await, Err(Error::Closed)));
    assert_eq!(one.get("lock", ReadOptions::default()).await.unwrap(), None);
    one.put("still", "works".into(), no_ttl()).await.unwrap();
    drop(watch);
    drop(tree);
    one.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_handle_stops_renewing_and_its_lock_expires() {
    let root = BoltStore::open(Config::temporary()).await.unwrap();
    let dying = root.handle().unwrap();
    let ttl = Duration::from_millis(600);
    let mut lock = dying
        .new_lock("l", LockOptions::default().ttl(ttl))
        .await
        .unwrap();
    let lease = lock.lock().await.unwrap();
    assert!(dying.background_tasks() >= 1, "renewal runs");
    // Kept held for several TTLs while the handle lives.
    sleep(ttl * 3).await;
    assert!(lease.is_held());
    assert!(
        root.get("l", ReadOptions::default())
            .await
            .unwrap()
            .is_some()
    );
    // The process "dies": its handle is dropped (renewal stops) while the `Lock` is kept,
    // so nothing releases the key: only the TTL frees it.
    let dropped = Instant::now();
    drop(dying);
    let mut next = root
        .new_lock("l", LockOptions::default().ttl(ttl))
        .await
        .unwrap();
    timeout(Duration::from_secs(3), next.lock())
        .await
        .expect("expired")
        .unwrap();
    let waited = dropped.elapsed();
    assert!(
        waited <= ttl + Duration::from_millis(400),
        "took over after {waited:?}"
    );
    assert_eq!(
        lease.state(),
        LockState::Lost,
        "the dead holder learns it lost the lock"
    );
    assert!(matches!(lock.unlock().await, Err(Error::LockLost { .. })));
    next.unlock().await.unwrap();
    root.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn background_tasks_end_at_close() {
    let root = BoltStore::open(Config::temporary()).await.unwrap();
    let store = root.handle().unwrap();
    let _w = store.watch("a", ReadOptions::default()).await.unwrap();
    let _t = store.watch_tree("", ReadOptions::default()).await.unwrap();
    let mut lock = store.new_lock("l", LockOptions::default()).await.unwrap();
    lock.lock().await.unwrap();
    // Two watch loops and one renewal (the acquiring task ends right after `lock` returns).
    let deadline = Instant::now() + Duration::from_secs(2);
    while store.background_tasks() != 3 {
        assert!(
            Instant::now() < deadline,
            "tasks: {}",
            store.background_tasks()
        );
        sleep(Duration::from_millis(5)).await;
    }
    store.close().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(2);
    while store.background_tasks() != 0 {
        assert!(
            Instant::now() < deadline,
            "tasks left: {}",
            store.background_tasks()
        );
        sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        root.get("l", ReadOptions::default()).await.unwrap(),
        None,
        "lock released at close"
    );
    assert_eq!(root.background_tasks(), 0);
    root.close().await.unwrap();
    assert!(matches!(root.handle(), Err(Error::Closed)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_keys_are_invisible_at_once_and_swept_in_the_background() {
    let store = BoltStore::open(Config::temporary()).await.unwrap();
    let observer = store.handle().unwrap();
    let ttl = Duration::from_millis(300);
    let before_write = Instant::now();
    store
        .put("t/x", "v".into(), WriteOptions::with_ttl(ttl))
        .await
        .unwrap();
    store
        .put("t/y", "v".into(), WriteOptions::with_ttl(ttl * 10))
        .await
        .unwrap();
    store.put("t/z", "v".into(), no_ttl()).await.unwrap();
    let mut watch = observer.watch("t/x", ReadOptions::default()).await.unwrap();
    assert!(watch.next().await.unwrap().unwrap().is_some());
    // Gone for readers at the deadline, to the millisecond.
    let gone = timeout(Duration::from_secs(2), watch.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(gone, None);
    let after = before_write.elapsed();
    // The deadline is whole milliseconds of the wall clock: allow 2 ms of rounding.
    assert!(
        after + Duration::from_millis(2) >= ttl && after < ttl + Duration::from_millis(150),
        "expiry seen after {after:?}"
    );
    assert_eq!(
        observer.get("t/x", ReadOptions::default()).await.unwrap(),
        None
    );
    // Physically removed by the sweeper shortly after.
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let stored = observer.stored_keys().await.unwrap();
        if !stored.contains(&"t/x".to_owned()) {
            assert_eq!(stored, ["t/y", "t/z"]);
            break;
        }
        assert!(Instant::now() < deadline, "not swept: {stored:?}");
        sleep(Duration::from_millis(20)).await;
    }
    // A write without TTL makes a key permanent again.
    store.put("t/y", "w".into(), no_ttl()).await.unwrap();
    sleep(ttl * 11).await;
    assert!(
        observer
            .get("t/y", ReadOptions::default())
            .await
            .unwrap()
            .is_some()
    );
    assert_eq!(observer.stored_keys().await.unwrap(), ["t/y", "t/z"]);
    store.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_keys_left_in_a_closed_database_are_swept_after_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let store = open(&path).await;
    store
        .put(
            "k",
            "v".into(),
            WriteOptions::with_ttl(Duration::from_millis(200)),
        )
        .await
        .unwrap();
    store.close().await.unwrap();
    sleep(Duration::from_millis(300)).await;
    let store = open(&path).await;
    assert_eq!(store.get("k", ReadOptions::default()).await.unwrap(), None);
    let deadline = Instant::now() + Duration::from_secs(2);
    while !store.stored_keys().await.unwrap().is_empty() {
        assert!(Instant::now() < deadline, "not swept after reopen");
        sleep(Duration::from_millis(20)).await;
    }
    store.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_up_to_16_mib() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let store = open(&path).await;
    let max = store.capabilities().max_value_len;
    assert_eq!(max, 16 * 1024 * 1024);
    let value: Bytes = (0..max).map(|i| (i % 251) as u8).collect::<Vec<_>>().into();
    let started = Instant::now();
    store.put("big", value.clone(), no_ttl()).await.unwrap();
    assert_eq!(
        store
            .get("big", ReadOptions::default())
            .await
            .unwrap()
            .unwrap()
            .value,
        value
    );
    println!("16 MiB put + get: {:?}", started.elapsed());
    assert!(matches!(
        store
            .put("big", Bytes::from(vec![0u8; max + 1]), no_ttl())
            .await,
        Err(Error::ValueTooLarge { .. })
    ));
    store.close().await.unwrap();
    let store = open(&path).await;
    assert_eq!(
        store
            .get("big", ReadOptions::default())
            .await
            .unwrap()
            .unwrap()
            .value,
        value
    );
    store.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_layout_is_readable_with_plain_redb() {
    use redb::ReadableDatabase;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let config = Config::builder()
        .path(&path)
        .namespace("app")
        .build()
        .unwrap();
    let store = BoltStore::open(config).await.unwrap();
    store
        .put("/conf/port/", "8080".into(), no_ttl())
        .await
        .unwrap();
    store
        .put(
            "session",
            "s".into(),
            WriteOptions::with_ttl(Duration::from_secs(60)),
        )
        .await
        .unwrap();
    let port = index_of(&store, "conf/port").await;
    let session = index_of(&store, "session").await;
    store.close().await.unwrap();

    let db = redb::Database::open(path.join("kv.redb")).unwrap();
    let txn = db.begin_read().unwrap();
    let entries = txn.open_table(ENTRIES).unwrap();
    let expiry = txn.open_table(EXPIRY).unwrap();
    let state = txn.open_table(STATE).unwrap();
    let raw = entries
        .get("app/conf/port")
        .unwrap()
        .unwrap()
        .value()
        .to_vec();
    assert_eq!(be(&raw[..8]), port);
    assert_eq!(be(&raw[8..16]), 0, "no TTL");
    assert_eq!(&raw[16..], b"8080");
    let raw = entries
        .get("app/session")
        .unwrap()
        .unwrap()
        .value()
        .to_vec();
    assert_eq!(be(&raw[..8]), session);
    let deadline = be(&raw[8..16]);
    assert!(deadline > kv_core::ttl::now_millis());
    assert_eq!(&raw[16..], b"s");
    let mut index_key = deadline.to_be_bytes().to_vec();
    index_key.extend_from_slice(b"app/session");
    assert!(expiry.get(index_key.as_slice()).unwrap().is_some());
    assert_eq!(state.get("seq").unwrap().unwrap().value(), session);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn databases_of_the_two_table_layout_are_moved_on_open() {
    use redb::ReadableDatabase;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    std::fs::create_dir_all(&path).unwrap();
    let file = path.join("kv.redb");
    let later = kv_core::ttl::now_millis() + 60_000;
    let gone = kv_core::ttl::now_millis() - 1;
    let big = vec![7u8; 200_000];
    write_two_table_layout(
        &file,
        &[
            ("conf/a", b"1", 3, 0),
            ("conf/b", big.as_slice(), 5, 0),
            ("conf/expired", b"x", 6, gone),
            ("session", b"s", 9, later),
        ],
        9,
    );

    let store = open(&path).await;
    let read = |key: &'static str| {
        let store = &store;
        async move { store.get(key, ReadOptions::default()).await.unwrap() }
    };
    let a = read("conf/a").await.unwrap();
    assert_eq!((&a.value[..], a.last_index), (&b"1"[..], 3));
    let b = read("conf/b").await.unwrap();
    assert_eq!((b.value.len(), b.last_index), (big.len(), 5));
    assert!(
        read("conf/expired").await.is_none(),
        "an expired key stays absent"
    );
    assert_eq!(read("session").await.unwrap().last_index, 9);
    let listed: Vec<_> = store
        .list("conf", ReadOptions::default())
        .await
        .unwrap()
        .into_iter()
        .map(|p| (p.key, p.last_index))
        .collect();
    assert_eq!(listed, [("conf/a".to_owned(), 3), ("conf/b".to_owned(), 5)]);
    // The commit counter carries on: the next write takes a higher index than any moved key
    // (10 or 11: the sweeper's removal of the expired key may commit first).
    store.put("conf/a", "2".into(), no_ttl()).await.unwrap();
    let rewritten = index_of(&store, "conf/a").await;
    assert!((10..=11).contains(&rewritten), "{rewritten}");
    // The moved TTL still expires: the sweeper finds it in kv/expiry.
    let lease = store
        .get("session", ReadOptions::default())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&lease.value[..], b"s");
    store.close().await.unwrap();

    assert!(!has_old_tables(&file), "the old tables are dropped");
    let db = redb::Database::open(&file).unwrap();
    let txn = db.begin_read().unwrap();
    let entries = txn.open_table(ENTRIES).unwrap();
    let raw = entries.get("session").unwrap().unwrap().value().to_vec();
    assert_eq!(
        (be(&raw[..8]), be(&raw[8..16]), &raw[16..]),
        (9, later, &b"s"[..])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_two_table_database_with_metadata_but_no_value_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    std::fs::create_dir_all(&path).unwrap();
    let file = path.join("kv.redb");
    write_two_table_layout(&file, &[("k", b"v", 1, 0)], 1);
    {
        let db = redb::Database::open(&file).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(OLD_DATA).unwrap().remove("k").unwrap();
        txn.commit().unwrap();
    }
    match BoltStore::open(Config::new(&path)).await {
        Err(Error::Config(message)) => assert!(message.contains("no value"), "{message}"),
        Err(other) => panic!("expected a Config error, got {other:?}"),
        Ok(_) => panic!("a corrupt old-layout database opened"),
    }
    // Nothing was changed: the old layout is still whole for whoever repairs it.
    let db = redb::Database::open(&file).unwrap();
    use redb::ReadableDatabase;
    let txn = db.begin_read().unwrap();
    assert!(
        txn.open_table(OLD_META)
            .unwrap()
            .get("k")
            .unwrap()
            .is_some()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespaces_are_isolated() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let a = BoltStore::open(
        Config::builder()
            .path(&path)
            .namespace("a")
            .build()
            .unwrap(),
    )
    .await
    .unwrap();
    let b = BoltStore::open(
        Config::from_url(&format!("bolt://{}?namespace=b", path.display())).unwrap(),
    )
    .await
    .unwrap();
    let root = open(&path).await;
    a.put("k", "a".into(), no_ttl()).await.unwrap();
    b.put("k", "b".into(), no_ttl()).await.unwrap();
    assert_eq!(
        &a.get("k", ReadOptions::default())
            .await
            .unwrap()
            .unwrap()
            .value[..],
        b"a"
    );
    let keys: Vec<_> = b
        .list("", ReadOptions::default())
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.key)
        .collect();
    assert_eq!(keys, ["k"]);
    let keys: Vec<_> = root
        .list("", ReadOptions::default())
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.key)
        .collect();
    assert_eq!(keys, ["a/k", "b/k"]);
    a.delete_tree("").await.unwrap();
    assert_eq!(
        root.list("", ReadOptions::default()).await.unwrap().len(),
        1
    );
    for s in [a, b, root] {
        s.close().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_locked_by_another_opener_is_unavailable() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    // A second redb instance on the file (what another process would hold): it owns the
    // file lock, which this process's registry does not know about.
    std::fs::create_dir_all(&path).unwrap();
    let other = redb::Database::create(path.join("kv.redb")).unwrap();
    let config = Config::builder()
        .path(&path)
        .lock_timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let started = Instant::now();
    let result = BoltStore::open(config.clone()).await;
    assert!(
        matches!(result, Err(Error::Unavailable { .. })),
        "{result:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(2));
    // Released while we wait: the open succeeds.
    let mut patient = config;
    patient.lock_timeout = Duration::from_secs(5);
    let opener = tokio::spawn(BoltStore::open(patient));
    sleep(Duration::from_millis(100)).await;
    drop(other);
    let store = timeout(Duration::from_secs(5), opener)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    store.put("k", "v".into(), no_ttl()).await.unwrap();
    store.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paths_that_cannot_hold_a_database_are_config_errors() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("plain-file");
    std::fs::write(&file, b"not a directory").unwrap();
    let result = BoltStore::open(Config::new(&file)).await;
    assert!(matches!(result, Err(Error::Config(_))), "{result:?}");
    let below_file = file.join("db");
    let result = BoltStore::open(Config::new(&below_file)).await;
    assert!(matches!(result, Err(Error::Config(_))), "{result:?}");
    // A directory that cannot be created (procfs): a typed error, whatever the user.
    let result = BoltStore::open(Config::new("/proc/self/kv-bolt-db")).await;
    assert!(
        matches!(
            result,
            Err(Error::Config(_)) | Err(Error::PermissionDenied { .. })
        ),
        "{result:?}"
    );
    let garbage = dir.path().join("garbage");
    std::fs::create_dir(&garbage).unwrap();
    std::fs::write(garbage.join("kv.redb"), vec![0x5Au8; 1 << 20]).unwrap();
    let result = BoltStore::open(Config::new(&garbage)).await;
    assert!(matches!(result, Err(Error::Config(_))), "{result:?}");
    assert!(
        matches!(result, Err(Error::Config(_)) | Err(Error::Backend { .. })),
        "{result:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_write_durability_and_url_config() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let url = format!(
        "bolt://{}?durability=every-write&timeout_ms=5000",
        path.display()
    );
    let config = Config::from_url(&url).unwrap();
    assert_eq!(config.durability, Durability::EveryWrite);
    assert!(!config.temporary);
    let store = BoltStore::open(config).await.unwrap();
    store.put("k", "v".into(), no_ttl()).await.unwrap();
    store
        .atomic_put("k2", "v".into(), None, no_ttl())
        .await
        .unwrap();
    store.delete("k2").await.unwrap();
    store.close().await.unwrap();
    let store = open(&path).await;
    assert!(
        store
            .get("k", ReadOptions::default())
            .await
            .unwrap()
            .is_some()
    );
    store.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_temporary_database_is_deleted_when_its_last_handle_goes() {
    // Without a path, a temporary database lives in memory: no file at all.
    let memory = BoltStore::open(Config::temporary()).await.unwrap();
    assert_eq!(memory.path().unwrap(), std::path::PathBuf::new());
    memory.put("k", "v".into(), no_ttl()).await.unwrap();
    memory.close().await.unwrap();

    let dir = tempfile::tempdir().unwrap();
    let config = Config::builder()
        .path(dir.path().join("db"))
        .temporary(true)
        .build()
        .unwrap();
    let store = BoltStore::open(config).await.unwrap();
    let other = store.handle().unwrap();
    let path = store.path().unwrap();
    store.put("k", "v".into(), no_ttl()).await.unwrap();
    assert!(path.exists());
    store.close().await.unwrap();
    assert!(
        other
            .get("k", ReadOptions::default())
            .await
            .unwrap()
            .is_some(),
        "the other handle still works"
    );
    assert!(path.exists());
    other.close().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(2);
    while path.exists() {
        assert!(Instant::now() < deadline, "{} left behind", path.display());
        sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_deliver_large_values_and_survive_lagging() {
    let store = BoltStore::open(Config::temporary()).await.unwrap();
    let writer = store.handle().unwrap();
    let mut watch = store.watch("w/big", ReadOptions::default()).await.unwrap();
    let mut tree = store.watch_tree("w", ReadOptions::default()).await.unwrap();
    assert_eq!(watch.next().await.unwrap().unwrap(), None);
    assert!(tree.next().await.unwrap().unwrap().is_empty());
    // Larger than what travels inside a change: the watchers re-read it.
    let big: Bytes = vec![7u8; 1024 * 1024].into();
    writer.put("w/big", big.clone(), no_ttl()).await.unwrap();
    let seen = timeout(Duration::from_secs(2), watch.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(seen.unwrap().value, big);
    let snapshot = timeout(Duration::from_secs(2), tree.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(snapshot.len(), 1);
    assert_eq!(snapshot[0].value, big);
    // Far more commits than the change channel holds, while nobody reads: the watchers
    // resynchronise and end on the final state.
    for i in 0..5000u32 {
        writer
            .put("w/n", i.to_string().into(), no_ttl())
            .await
            .unwrap();
    }
    writer.delete("w/big").await.unwrap();
    let last = index_of(&writer, "w/n").await;
    let mut final_key = None;
    while final_key.is_none() {
        let item = timeout(Duration::from_secs(2), watch.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if item.is_none() {
            final_key = Some(());
        }
    }
    loop {
        let snapshot = timeout(Duration::from_secs(2), tree.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if snapshot.len() == 1 && snapshot[0].last_index == last {
            assert_eq!(&snapshot[0].value[..], b"4999");
            break;
        }
    }
    drop((watch, tree));
    writer.close().await.unwrap();
    store.close().await.unwrap();
}
