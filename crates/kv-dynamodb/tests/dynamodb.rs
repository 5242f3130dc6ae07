//! What only the DynamoDB backend has: its storage layout, its limits (item size, batch
//! sizes, 1 MB pages), tombstones, table creation, Streams and polling watches, failure
//! modes. Runs against the DynamoDB Local server that `scripts/servers` starts.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::primitives::Blob;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType, PutRequest,
    ScalarAttributeType, TimeToLiveStatus, WriteRequest,
};
use bytes::Bytes;
use futures::StreamExt;
use kv_core::{Error, KvPair, LockOptions, ReadOptions, Store, WriteOptions, ttl};
use kv_dynamodb::{Config, DynamoStore, WatchMode};
use rand::Rng;

/// The table the tests below share (the 10,000-key test uses its own).
const TABLE: &str = "kv_backend_tests";

fn endpoint() -> String {
    std::env::var("KV_TEST_DYNAMODB_ENDPOINT").unwrap_or_else(|_| {
        panic!(
            "KV_TEST_DYNAMODB_ENDPOINT not set: run the README test command or \
             `eval \"$(scripts/servers env)\"`"
        )
    })
}

fn var(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

fn random(tag: &str) -> String {
    format!("{tag}-{:016x}", rand::rng().random::<u64>())
}

/// A configuration for the local server, table `table`, a fresh namespace.
fn config(table: &str) -> Config {
    Config::new(table)
        .endpoint(endpoint())
        .region(var("AWS_REGION", "us-east-1"))
        .static_credentials(
            var("AWS_ACCESS_KEY_ID", "kvtest"),
            var("AWS_SECRET_ACCESS_KEY", "kvtest"),
        )
        .namespace(random("ns"))
        .create_table(true)
        .poll_interval(Duration::from_millis(100))
        .lock_retry_interval(Duration::from_millis(100))
}

async fn store(config: Config) -> DynamoStore {
    DynamoStore::connect(config)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to DynamoDB Local: {e}"))
}

fn sort_key(config: &Config, key: &str) -> String {
    format!("{}/{key}", config.namespace)
}

fn partition(sk: &str) -> String {
    sk.split('/').next().unwrap().to_owned()
}

async fn raw_item(store: &DynamoStore, sk: &str) -> Option<HashMap<String, AttributeValue>> {
    store
        .client()
        .get_item()
        .table_name(&store.config().table)
        .key("pk", AttributeValue::S(partition(sk)))
        .key("sk", AttributeValue::S(sk.to_owned()))
        .consistent_read(true)
        .send()
        .await
        .expect("raw get_item")
        .item
}

fn n(item: &HashMap<String, AttributeValue>, name: &str) -> u64 {
    item[name].as_n().unwrap().parse().unwrap()
}

/// A watch on `dir/k` and a `watch_tree` on `dir`, both checked to start empty.
async fn empty_watches(
    store: &DynamoStore,
    dir: &str,
) -> (kv_core::WatchStream, kv_core::WatchTreeStream) {
    let mut watch = store
        .watch(&format!("{dir}/k"), ReadOptions::default())
        .await
        .unwrap();
    let mut tree = store.watch_tree(dir, ReadOptions::default()).await.unwrap();
    assert_eq!(next(&mut watch, "first").await, None);
    assert!(next(&mut tree, "first tree").await.is_empty());
    (watch, tree)
}

async fn next<S, T>(stream: &mut S, what: &str) -> T
where
    S: futures::Stream<Item = kv_core::Result<T>> + Unpin,
    T: std::fmt::Debug,
{
    match tokio::time::timeout(Duration::from_secs(6), stream.next()).await {
        Ok(Some(Ok(item))) => item,
        other => panic!("{what}: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_and_delete_tree_of_10000_keys() {
    const KEYS: usize = 10_000;
    let config = config("kv_backend_big");
    let store = store(config.clone()).await;
    // 10,000 items of 200 bytes: 2 MB, so listing needs several 1 MB Query pages.
    let value = vec![b'v'; 200];
    let started = Instant::now();
    let requests: Vec<WriteRequest> = (0..KEYS)
        .map(|i| {
            // Two levels, so both list(dir) and list(dir/sub) are exercised.
            let sk = sort_key(&config, &format!("big/g{:02}/k{i:05}", i % 10));
            let mut item = HashMap::new();
            item.insert("pk".to_owned(), AttributeValue::S(partition(&sk)));
            item.insert("sk".to_owned(), AttributeValue::S(sk));
            item.insert(
                "value".to_owned(),
                AttributeValue::B(Blob::new(value.clone())),
            );
            item.insert("version".to_owned(), AttributeValue::N((i + 1).to_string()));
            WriteRequest::builder()
                .put_request(PutRequest::builder().set_item(Some(item)).build().unwrap())
                .build()
        })
        .collect();
    let batches: Vec<Vec<WriteRequest>> = requests.chunks(25).map(<[_]>::to_vec).collect();
    let client = store.client().clone();
    futures::stream::iter(batches)
        .map(|mut batch| {
            let client = client.clone();
            let table = config.table.clone();
            async move {
                while !batch.is_empty() {
                    let out = client
                        .batch_write_item()
                        .request_items(&table, std::mem::take(&mut batch))
                        .send()
                        .await
                        .expect("batch_write_item");
                    batch = out
                        .unprocessed_items
                        .and_then(|mut m| m.remove(&table))
                        .unwrap_or_default();
                }
            }
        })
        .buffer_unordered(8)
        .collect::<Vec<()>>()
        .await;
    eprintln!(
        "wrote {KEYS} keys with BatchWriteItem in {:?}",
        started.elapsed()
    );
    // A neighbour that must survive: same partition, prefix of the directory name.
    store
        .put(
            "bigger/x",
            Bytes::from_static(b"keep"),
            WriteOptions::default(),
        )
        .await
        .unwrap();
    store
        .put(
            "big",
            Bytes::from_static(b"dir-key"),
            WriteOptions::default(),
        )
        .await
        .unwrap();

    let started = Instant::now();
    let all = store.list("big", ReadOptions::default()).await.unwrap();
    eprintln!("list of {} keys took {:?}", all.len(), started.elapsed());
    assert_eq!(all.len(), KEYS);
    assert!(all.windows(2).all(|w| w[0].key < w[1].key), "sorted");
    assert!(
        all.iter()
            .all(|p| p.key.starts_with("big/g") && p.value.len() == 200)
    );
    let sub = store.list("big/g03", ReadOptions::default()).await.unwrap();
    assert_eq!(sub.len(), KEYS / 10);
    assert!(sub.iter().all(|p| p.key.starts_with("big/g03/")));

    let started = Instant::now();
    store.delete_tree("big").await.unwrap();
    eprintln!(
        "delete_tree of {} keys took {:?}",
        KEYS + 1,
        started.elapsed()
    );
    assert!(
        store
            .list("big", ReadOptions::default())
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        store.get("big", ReadOptions::default()).await.unwrap(),
        None
    );
    assert_eq!(
        store
            .get("bigger/x", ReadOptions::default())
            .await
            .unwrap()
            .unwrap()
            .value,
        Bytes::from_static(b"keep")
    );
    // The tombstones kept the versions: a re-created key's index is above the old one.
    let again = store
        .atomic_put(
            "big/g00/k00000",
            Bytes::from_static(b"again"),
            None,
            WriteOptions::default(),
        )
        .await
        .unwrap();
    assert!(again.last_index > 1);
    store.delete_tree("").await.unwrap();
    assert!(
        store
            .list("", ReadOptions::default())
            .await
            .unwrap()
            .is_empty()
    );
    store.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn value_limit_is_just_below_the_item_limit() {
    let config = config(TABLE);
    let store = store(config.clone()).await;
    let caps = store.capabilities().clone();
    assert_eq!(caps.max_value_len, 400 * 1024 - 4 * 1024);
    assert_eq!(caps.max_key_len, 1024 - config.namespace.len() - 1);
    // The largest item we can write: longest key, largest value, a TTL, then a lock owner.
    let key: String = "k".repeat(caps.max_key_len);
    let value = Bytes::from(vec![7u8; caps.max_value_len]);
    store
        .put(
            &key,
            value.clone(),
            WriteOptions::with_ttl(Duration::from_secs(60)),
        )
        .await
        .expect("a value at the limit with the longest key and a TTL fits");
    assert_eq!(
        store
            .get(&key, ReadOptions::default())
            .await
            .unwrap()
            .unwrap()
            .value,
        value
    );
    store.delete(&key).await.unwrap();
    let mut lock = store
        .new_lock(
            &key,
            LockOptions::default()
                .value(value.clone())
                .ttl(Duration::from_secs(5)),
        )
        .await
        .unwrap();
    lock.lock().await.expect("a lock value at the limit fits");
    lock.unlock().await.unwrap();
    // One byte more is refused before anything is sent.
    let too_big = Bytes::from(vec![7u8; caps.max_value_len + 1]);
    assert!(matches!(
        store.put("small", too_big, WriteOptions::default()).await,
        Err(Error::ValueTooLarge { .. })
    ));
    assert!(matches!(
        store
            .put(&format!("{key}x"), Bytes::new(), WriteOptions::default())
            .await,
        Err(Error::InvalidKey { .. })
    ));
    // The server's limit is real: an item above 400 KB is refused by DynamoDB itself.
    let sk = sort_key(&config, "over");
    let refused = store
        .client()
        .put_item()
        .table_name(TABLE)
        .item("pk", AttributeValue::S(partition(&sk)))
        .item("sk", AttributeValue::S(sk))
        .item(
            "value",
            AttributeValue::B(Blob::new(vec![0u8; 400 * 1024 + 1])),
        )
        .send()
        .await;
    assert!(refused.is_err(), "DynamoDB accepted an item over 400 KB");
    store.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_layout_is_readable_by_other_clients() {
    let config = config(TABLE);
    let store = store(config.clone()).await;
    let value = Bytes::from_static(b"\x00plain\xffbytes");
    store
        .put(
            "app/conf",
            value.clone(),
            WriteOptions::with_ttl(Duration::from_secs(30)),
        )
        .await
        .unwrap();
    let pair = store
        .get("app/conf", ReadOptions::default())
        .await
        .unwrap()
        .unwrap();
    let sk = sort_key(&config, "app/conf");
    let item = raw_item(&store, &sk).await.expect("the raw item");
    assert_eq!(
        item["pk"].as_s().unwrap(),
        &config.namespace,
        "pk = first segment"
    );
    assert_eq!(item["sk"].as_s().unwrap(), &sk, "sk = the full key");
    assert_eq!(
        item["value"].as_b().unwrap().as_ref(),
        &value[..],
        "plain bytes"
    );
    assert_eq!(n(&item, "version"), pair.last_index);
    let deadline = n(&item, "deadline_ms");
    assert!(deadline > ttl::now_millis() + 20_000);
    assert_eq!(n(&item, "expires_at"), deadline.div_ceil(1000));
    // A plain put without TTL drops the deadline and the TTL attribute.
    store
        .put("app/conf", value.clone(), WriteOptions::default())
        .await
        .unwrap();
    let item = raw_item(&store, &sk).await.unwrap();
    assert!(!item.contains_key("deadline_ms") && !item.contains_key("expires_at"));

    // Another client writes an item in the same layout: we read it.
    let sk2 = sort_key(&config, "app/from-cli");
    store
        .client()
        .put_item()
        .table_name(TABLE)
        .item("pk", AttributeValue::S(partition(&sk2)))
        .item("sk", AttributeValue::S(sk2))
        .item("value", AttributeValue::B(Blob::new(b"hello".to_vec())))
        .item("version", AttributeValue::N("7".into()))
        .send()
        .await
        .unwrap();
    let got = store
        .get("app/from-cli", ReadOptions::default())
        .await
        .unwrap()
        .unwrap();
    assert_eq!((got.value.as_ref(), got.last_index), (&b"hello"[..], 7));
    // Even without a version (text value): last_index 1. CAS on it is refused (its writer
    // could rewrite it unnoticed), until a plain put gives it a version.
    let sk3 = sort_key(&config, "app/bare");
    store
        .client()
        .put_item()
        .table_name(TABLE)
        .item("pk", AttributeValue::S(partition(&sk3)))
        .item("sk", AttributeValue::S(sk3))
        .item("value", AttributeValue::S("text".into()))
        .send()
        .await
        .unwrap();
    let bare = store
        .get("app/bare", ReadOptions::default())
        .await
        .unwrap()
        .unwrap();
    assert_eq!((bare.value.as_ref(), bare.last_index), (&b"text"[..], 1));
    let refused = store
        .atomic_put(
            "app/bare",
            Bytes::from_static(b"v2"),
            Some(&bare),
            WriteOptions::default(),
        )
        .await;
    assert!(
        matches!(refused, Err(Error::NotSupported { .. })),
        "{refused:?}"
    );
    store
        .put(
            "app/bare",
            Bytes::from_static(b"v2"),
            WriteOptions::default(),
        )
        .await
        .unwrap();
    let versioned = store
        .get("app/bare", ReadOptions::default())
        .await
        .unwrap()
        .unwrap();
    let swapped = store
        .atomic_put(
            "app/bare",
            Bytes::from_static(b"v3"),
            Some(&versioned),
            WriteOptions::default(),
        )
        .await
        .unwrap();
    assert!(swapped.last_index > versioned.last_index);
    store.atomic_delete("app/bare", &swapped).await.unwrap();

    // A delete leaves a tombstone that keeps the version and expires a day later.
    let before = store
        .get("app/conf", ReadOptions::default())
        .await
        .unwrap()
        .unwrap();
    assert!(store.delete("app/conf").await.unwrap());
    let tomb = raw_item(&store, &sort_key(&config, "app/conf"))
        .await
        .unwrap();
    assert_eq!(tomb["deleted"], AttributeValue::Bool(true));
    assert!(!tomb.contains_key("value"));
    assert!(n(&tomb, "version") > before.last_index);
    let day = ttl::now_millis() / 1000 + 24 * 3600;
    assert!(n(&tomb, "expires_at").abs_diff(day) < 60);
    assert!(
        !store.delete("app/conf").await.unwrap(),
        "a tombstone is absent"
    );
    assert_eq!(
        store.get("app/conf", ReadOptions::default()).await.unwrap(),
        None
    );
    let keys: Vec<String> = store
        .list("app", ReadOptions::default())
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.key)
        .collect();
    assert_eq!(keys, ["app/from-cli"]);
    let again = store
        .atomic_put("app/conf", value.clone(), None, WriteOptions::default())
        .await
        .unwrap();
    assert!(again.last_index > n(&tomb, "version"));
    store.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_items_not_yet_removed_are_absent_everywhere() {
    let config = config(TABLE);
    let store = store(config.clone()).await;
    // An item whose deadline passed but that DynamoDB has not removed yet (its TTL
    // attribute is still in the future, as happens for up to days on AWS).
    let sk = sort_key(&config, "exp/k");
    let past = ttl::now_millis() - 1_000;
    store
        .client()
        .put_item()
        .table_name(TABLE)
        .item("pk", AttributeValue::S(partition(&sk)))
        .item("sk", AttributeValue::S(sk.clone()))
        .item("value", AttributeValue::B(Blob::new(b"stale".to_vec())))
        .item("version", AttributeValue::N("5".into()))
        .item("deadline_ms", AttributeValue::N(past.to_string()))
        .item(
            "expires_at",
            AttributeValue::N((past / 1000 + 3600).to_string()),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(
        store.get("exp/k", ReadOptions::default()).await.unwrap(),
        None
    );
    assert!(!store.exists("exp/k", ReadOptions::default()).await.unwrap());
    assert!(
        store
            .list("exp", ReadOptions::default())
            .await
            .unwrap()
            .is_empty()
    );
    let stale = KvPair::new("exp/k", "stale", 5);
    assert!(matches!(
        store.atomic_delete("exp/k", &stale).await,
        Err(Error::KeyNotFound { .. })
    ));
    assert!(matches!(
        store
            .atomic_put(
                "exp/k",
                Bytes::from_static(b"x"),
                Some(&stale),
                WriteOptions::default()
            )
            .await,
        Err(Error::KeyNotFound { .. })
    ));
    assert!(!store.delete("exp/k").await.unwrap());
    // Create-only treats it as absent, and the version still rises past it.
    let created = store
        .atomic_put(
            "exp/k",
            Bytes::from_static(b"new"),
            None,
            WriteOptions::default(),
        )
        .await
        .unwrap();
    assert!(created.last_index > 5);
    // A lock can be taken over a lock whose holder died, but only by lease observation: the
    // item (written by an older client: no `heartbeat`, no `lease_ms`) must stay unchanged
    // for the contender's own lease plus `ttl_precision`, whatever its `deadline_ms` says.
    let lock_sk = sort_key(&config, "exp/lock");
    store
        .client()
        .put_item()
        .table_name(TABLE)
        .item("pk", AttributeValue::S(partition(&lock_sk)))
        .item("sk", AttributeValue::S(lock_sk))
        .item("value", AttributeValue::B(Blob::new(b"dead".to_vec())))
        .item("version", AttributeValue::N("9".into()))
        .item("owner", AttributeValue::S("someone".into()))
        .item("deadline_ms", AttributeValue::N(past.to_string()))
        .send()
        .await
        .unwrap();
    let lease_ttl = Duration::from_secs(2);
    let mut lock = store
        .new_lock("exp/lock", LockOptions::default().ttl(lease_ttl))
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let lease = tokio::time::timeout(Duration::from_secs(10), lock.lock())
        .await
        .expect("a dead holder's lock is free")
        .unwrap();
    let waited = started.elapsed();
    let precision = store.capabilities().ttl_precision;
    assert!(
        waited >= lease_ttl + precision,
        "taken over after {waited:?}, before a whole lease was observed"
    );
    assert!(lease.fencing_token() > 9);
    lock.unlock().await.unwrap();
    store.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn table_creation_is_idempotent_and_enables_stream_and_ttl() {
    let table = random("kv_create");
    let base = config(&table);
    // A missing table without create_table is a configuration error.
    let missing = DynamoStore::connect(base.clone().create_table(false)).await;
    assert!(matches!(missing, Err(Error::Config(_))), "{missing:?}");
    // Four handles race to create it.
    let handles =
        futures::future::join_all((0..4).map(|_| DynamoStore::connect(base.clone()))).await;
    let stores: Vec<DynamoStore> = handles.into_iter().map(|h| h.expect("connect")).collect();
    assert!(stores.iter().all(DynamoStore::watches_use_streams));
    let client = stores[0].client().clone();
    let ttl_status = client
        .describe_time_to_live()
        .table_name(&table)
        .send()
        .await
        .unwrap();
    let ttl_description = ttl_status.time_to_live_description().unwrap();
    assert_eq!(ttl_description.attribute_name(), Some("expires_at"));
    assert!(matches!(
        ttl_description.time_to_live_status(),
        Some(TimeToLiveStatus::Enabled | TimeToLiveStatus::Enabling)
    ));
    // Connecting again to the existing table is fine too.
    let again = store(base.clone()).await;
    again
        .put("k", Bytes::from_static(b"v"), WriteOptions::default())
        .await
        .unwrap();
    for s in &stores {
        s.close().await.unwrap();
    }
    again.close().await.unwrap();
    client
        .delete_table()
        .table_name(&table)
        .send()
        .await
        .unwrap();

    // A table with another key schema is refused.
    let wrong = random("kv_wrong");
    client
        .create_table()
        .table_name(&wrong)
        .attribute_definitions(
            AttributeDefinition::builder()
                .attribute_name("id")
                .attribute_type(ScalarAttributeType::S)
                .build()
                .unwrap(),
        )
        .key_schema(
            KeySchemaElement::builder()
                .attribute_name("id")
                .key_type(KeyType::Hash)
                .build()
                .unwrap(),
        )
        .billing_mode(BillingMode::PayPerRequest)
        .send()
        .await
        .unwrap();
    let refused = DynamoStore::connect(config(&wrong)).await;
    assert!(matches!(refused, Err(Error::Config(_))), "{refused:?}");
    client
        .delete_table()
        .table_name(&wrong)
        .send()
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_stream_watches_poll() {
    // A table created by someone else without a stream: watches fall back to polling.
    let table = random("kv_nostream");
    let creator = store(config(TABLE)).await;
    let client = creator.client().clone();
    let attr = |name: &str| {
        AttributeDefinition::builder()
            .attribute_name(name)
            .attribute_type(ScalarAttributeType::S)
            .build()
            .unwrap()
    };
    let key = |name: &str, kind| {
        KeySchemaElement::builder()
            .attribute_name(name)
            .key_type(kind)
            .build()
            .unwrap()
    };
    client
        .create_table()
        .table_name(&table)
        .attribute_definitions(attr("pk"))
        .attribute_definitions(attr("sk"))
        .key_schema(key("pk", KeyType::Hash))
        .key_schema(key("sk", KeyType::Range))
        .billing_mode(BillingMode::PayPerRequest)
        .send()
        .await
        .unwrap();
    let cfg = config(&table).create_table(false);
    let watcher = store(cfg.clone()).await;
    let writer = store(cfg.clone()).await;
    assert!(!watcher.watches_use_streams());
    let (mut watch, mut tree) = empty_watches(&watcher, "w").await;
    writer
        .put("w/k", Bytes::from_static(b"1"), WriteOptions::default())
        .await
        .unwrap();
    assert_eq!(
        next(&mut watch, "put").await.unwrap().value,
        Bytes::from_static(b"1")
    );
    assert_eq!(next(&mut tree, "put tree").await.len(), 1);
    writer.delete("w/k").await.unwrap();
    assert_eq!(next(&mut watch, "delete").await, None);
    drop((watch, tree));
    watcher.close().await.unwrap();
    writer.close().await.unwrap();
    creator.close().await.unwrap();
    client
        .delete_table()
        .table_name(&table)
        .send()
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_watch_sees_another_handles_writes_and_polling_mode_too() {
    for mode in [WatchMode::Auto, WatchMode::Poll] {
        let cfg = config(TABLE).watch_mode(mode);
        let watcher = store(cfg.clone()).await;
        let writer = store(cfg.clone()).await;
        assert_eq!(watcher.watches_use_streams(), mode == WatchMode::Auto);
        let (mut watch, mut tree) = empty_watches(&watcher, "s").await;
        let started = Instant::now();
        writer
            .put("s/k", Bytes::from_static(b"1"), WriteOptions::default())
            .await
            .unwrap();
        let seen = next(&mut watch, "put").await.unwrap();
        eprintln!(
            "{mode:?}: a write by another handle seen after {:?}",
            started.elapsed()
        );
        assert_eq!(seen.value, Bytes::from_static(b"1"));
        assert_eq!(next(&mut tree, "put tree").await[0].key, "s/k");
        // A key outside the subtree (same partition) does not disturb it.
        writer
            .put("sx", Bytes::from_static(b"other"), WriteOptions::default())
            .await
            .unwrap();
        writer
            .put(
                "s/k",
                Bytes::from_static(b"2"),
                WriteOptions::with_ttl(Duration::from_secs(1)),
            )
            .await
            .unwrap();
        assert_eq!(
            next(&mut watch, "ttl put").await.unwrap().value,
            Bytes::from_static(b"2")
        );
        // Expiry is reported on time although no stream record comes for it.
        let started = Instant::now();
        assert_eq!(next(&mut watch, "expiry").await, None);
        assert!(
            started.elapsed() < Duration::from_millis(1_800),
            "{:?}",
            started.elapsed()
        );
        watcher.close().await.unwrap();
        writer.close().await.unwrap();
    }
}

/// A stream reader that reports nothing (here: one that polls once a minute) leaves no watch
/// staler than `watch_resync`; a re-read that finds nothing new reports nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_stream_leaves_no_watch_staler_than_the_resync_interval() {
    let resync = Duration::from_millis(800);
    let base = config(TABLE);
    let watcher = store(
        base.clone()
            .poll_interval(Duration::from_secs(60))
            .watch_resync(resync),
    )
    .await;
    let writer = store(base).await;
    assert!(watcher.watches_use_streams());
    let (mut watch, mut tree) = empty_watches(&watcher, "r").await;
    let bound = resync + Duration::from_secs(3);
    for round in 1..=3u8 {
        let value = Bytes::from(vec![b'0' + round]);
        writer
            .put("r/k", value.clone(), WriteOptions::default())
            .await
            .unwrap();
        let started = Instant::now();
        let seen = until(&mut watch, bound, "the watch", |p: &Option<KvPair>| {
            p.as_ref().is_some_and(|p| p.value == value)
        })
        .await;
        assert_eq!(seen.map(|p| p.value), Some(value.clone()));
        until(&mut tree, bound, "the tree watch", |pairs: &Vec<KvPair>| {
            pairs.len() == 1 && pairs[0].value == value
        })
        .await;
        eprintln!(
            "round {round}: seen after {:?} (resync {resync:?})",
            started.elapsed()
        );
    }
    // Several resyncs with nothing new: nothing is reported.
    let quiet = tokio::time::timeout(resync * 3, watch.next()).await;
    assert!(
        quiet.is_err(),
        "a re-read without a change reported {quiet:?}"
    );
    let quiet = tokio::time::timeout(resync, tree.next()).await;
    assert!(
        quiet.is_err(),
        "a re-read without a change reported {quiet:?}"
    );
    watcher.close().await.unwrap();
    writer.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn background_tasks_end_with_their_owners_and_on_close() {
    let store = Arc::new(store(config(TABLE)).await);
    assert_eq!(store.background_tasks(), 0);
    let watch = store.watch("bg/k", ReadOptions::default()).await.unwrap();
    let tree = store
        .watch_tree("bg", ReadOptions::default())
        .await
        .unwrap();
    let mut lock = store
        .new_lock(
            "bg/lock",
            LockOptions::default().ttl(Duration::from_secs(2)),
        )
        .await
        .unwrap();
    lock.lock().await.unwrap();
    // Two watches, their shared stream reader and one renewal (the acquisition task ends
    // right after `lock` returns).
    eventually(|| store.background_tasks() == 4).await;
    drop(watch);
    eventually(|| store.background_tasks() == 3).await;
    drop(lock);
    eventually(|| store.background_tasks() == 2).await;
    assert_eq!(
        store.get("bg/lock", ReadOptions::default()).await.unwrap(),
        None,
        "released"
    );
    let mut lock = store
        .new_lock("bg/lock", LockOptions::default())
        .await
        .unwrap();
    lock.lock().await.unwrap();
    let mut tree = tree;
    let other = self::store(store.config().clone()).await;
    store.close().await.unwrap();
    assert_eq!(store.background_tasks(), 0);
    assert!(matches!(tree.next().await, Some(Err(Error::Closed)) | None));
    assert_eq!(
        other.get("bg/lock", ReadOptions::default()).await.unwrap(),
        None
    );
    assert!(matches!(
        store.get("bg/k", ReadOptions::default()).await,
        Err(Error::Closed)
    ));
    other.close().await.unwrap();
}

async fn eventually(check: impl Fn() -> bool) {
    for _ in 0..100 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("not true within 2 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_endpoint_is_a_typed_error_quickly() {
    // Nothing listens: connection refused.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let dead = config(TABLE)
        .endpoint(format!("http://127.0.0.1:{port}"))
        .connect_timeout(Duration::from_millis(500))
        .request_timeout(Duration::from_secs(2))
        .max_attempts(1);
    let started = Instant::now();
    let result = DynamoStore::connect(dead).await;
    assert!(
        matches!(result, Err(Error::Unavailable { .. })),
        "{result:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(3));

    // Something accepts but never answers: a timeout, not a hang.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let mute = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    let silent = config(TABLE)
        .endpoint(format!("http://127.0.0.1:{port}"))
        .request_timeout(Duration::from_secs(1))
        .max_attempts(1);
    let started = Instant::now();
    let result = DynamoStore::connect(silent).await;
    assert!(matches!(result, Err(Error::Timeout { .. })), "{result:?}");
    assert!(started.elapsed() < Duration::from_secs(3));
    mute.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connects_from_a_url() {
    let url = format!(
        "dynamodb://{TABLE}?endpoint={}&region=us-east-1&access_key_id=kvtest\
         &secret_access_key=kvtest&namespace={}&create_table=true&poll_interval_ms=100",
        endpoint(),
        random("url")
    );
    let store = DynamoStore::connect(Config::from_url(&url).unwrap())
        .await
        .unwrap();
    store
        .put("a/b", Bytes::from_static(b"v"), WriteOptions::default())
        .await
        .unwrap();
    assert_eq!(
        store.list("", ReadOptions::default()).await.unwrap().len(),
        1
    );
    store.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_the_server_refuses_are_permission_denied() {
    // DynamoDB Local accepts any well-formed key but refuses access keys with characters
    // other than letters and digits, as AWS refuses unknown keys.
    let refused = config(TABLE).static_credentials("not-a-valid-key!", "secret");
    let result = DynamoStore::connect(refused).await;
    assert!(
        matches!(result, Err(Error::PermissionDenied { .. })),
        "{result:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_tree_up_to_100_keys_is_one_transaction_and_beyond_uses_batches() {
    let store = store(config(TABLE)).await;
    for (dir, count) in [("t100", 100), ("t101", 101)] {
        let store_ref = &store;
        let writes = (0..count).map(|i| async move {
            store_ref
                .put(
                    &format!("{dir}/k{i:03}"),
                    Bytes::from_static(b"v"),
                    WriteOptions::default(),
                )
                .await
        });
        for result in futures::future::join_all(writes).await {
            result.unwrap();
        }
        store
            .put(
                &format!("{dir}x"),
                Bytes::from_static(b"neighbour"),
                WriteOptions::default(),
            )
            .await
            .unwrap();
        assert_eq!(
            store.list(dir, ReadOptions::default()).await.unwrap().len(),
            count
        );
        // A watcher sees the transaction's effect as one snapshot.
        let mut tree = store.watch_tree(dir, ReadOptions::default()).await.unwrap();
        assert_eq!(next(&mut tree, "first").await.len(), count);
        store.delete_tree(dir).await.unwrap();
        assert!(
            store
                .list(dir, ReadOptions::default())
                .await
                .unwrap()
                .is_empty()
        );
        assert!(next(&mut tree, "after delete_tree").await.is_empty() || count > 100);
        assert!(
            store
                .exists(&format!("{dir}x"), ReadOptions::default())
                .await
                .unwrap()
        );
    }
    store.close().await.unwrap();
}

/// A TLS-terminating proxy in front of DynamoDB Local, with a certificate from a private CA
/// (`tests/tls/`, valid until 2125). Returns its port.
async fn tls_proxy() -> (u16, tokio::task::JoinHandle<()>) {
    use tokio_rustls::rustls::{
        self,
        pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    };
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/tls");
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(format!("{dir}/server.crt"))
            .unwrap()
            .collect::<std::result::Result<_, _>>()
            .unwrap();
    let key = PrivateKeyDer::from_pem_file(format!("{dir}/server.key")).unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
    let upstream = endpoint()
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let upstream = upstream.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(socket).await else {
                    return;
                };
                let Ok(mut plain) = tokio::net::TcpStream::connect(&upstream).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
            });
        }
    });
    (port, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_a_private_ca() {
    let (port, proxy) = tls_proxy().await;
    let ca = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/tls/ca.crt");
    let https = config(TABLE)
        .endpoint(format!("https://127.0.0.1:{port}"))
        .max_attempts(1)
        .request_timeout(Duration::from_secs(5));
    // Trusting the CA: everything works through TLS.
    let store = store(https.clone().ca_file(ca)).await;
    store
        .put(
            "tls/k",
            Bytes::from_static(b"secure"),
            WriteOptions::default(),
        )
        .await
        .unwrap();
    assert_eq!(
        store
            .get("tls/k", ReadOptions::default())
            .await
            .unwrap()
            .unwrap()
            .value,
        Bytes::from_static(b"secure")
    );
    store.close().await.unwrap();
    // Without it, the certificate is refused: a typed error, not a hang.
    let refused = DynamoStore::connect(https.clone()).await;
    assert!(
        matches!(refused, Err(Error::Unavailable { .. })),
        "{refused:?}"
    );
    // A CA file that cannot be read is a configuration error.
    let missing = DynamoStore::connect(https.ca_file("/nonexistent/ca.pem")).await;
    assert!(matches!(missing, Err(Error::Config(_))), "{missing:?}");
    proxy.abort();
}

/// A `previous` pair at `last_index` `u64::MAX` (no version lies above it, so no write of this
/// crate produced it) is a lost compare-and-swap like any other stale pair: `KeyModified` on a
/// live key, `KeyNotFound` on an absent one, never a panic. An item another client stored at
/// that version cannot be written over, and says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_previous_index_of_u64_max_is_a_conflict_not_a_panic() {
    let store = store(config(TABLE)).await;
    store
        .put("max/k", "v".into(), WriteOptions::default())
        .await
        .unwrap();
    let stale = KvPair::new("max/k", Bytes::from_static(b"v"), u64::MAX);
    let put = store
        .atomic_put("max/k", "w".into(), Some(&stale), WriteOptions::default())
        .await;
    assert!(matches!(put, Err(Error::KeyModified { .. })), "{put:?}");
    let delete = store.atomic_delete("max/k", &stale).await;
    assert!(
        matches!(delete, Err(Error::KeyModified { .. })),
        "{delete:?}"
    );
    let pair = store
        .get("max/k", ReadOptions::default())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(pair.value, "v", "untouched");
    assert!(pair.last_index < u64::MAX);

    // Absent: never written, and deleted (a tombstone).
    store.delete("max/k").await.unwrap();
    for key in ["max/absent", "max/k"] {
        let stale = KvPair::new(key, Bytes::from_static(b"v"), u64::MAX);
        let put = store
            .atomic_put(key, "w".into(), Some(&stale), WriteOptions::default())
            .await;
        assert!(
            matches!(put, Err(Error::KeyNotFound { .. })),
            "{key}: {put:?}"
        );
        let delete = store.atomic_delete(key, &stale).await;
        assert!(
            matches!(delete, Err(Error::KeyNotFound { .. })),
            "{key}: {delete:?}"
        );
        assert_eq!(store.get(key, ReadOptions::default()).await.unwrap(), None);
    }

    // Another client's item at version u64::MAX: readable, but no write can go above it.
    let sk = sort_key(store.config(), "max/foreign");
    store
        .client()
        .put_item()
        .table_name(&store.config().table)
        .item("pk", AttributeValue::S(partition(&sk)))
        .item("sk", AttributeValue::S(sk.clone()))
        .item("value", AttributeValue::B(Blob::new("foreign")))
        .item("version", AttributeValue::N(u64::MAX.to_string()))
        .send()
        .await
        .unwrap();
    let pair = store
        .get("max/foreign", ReadOptions::default())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(pair.last_index, u64::MAX);
    let put = store
        .put("max/foreign", "w".into(), WriteOptions::default())
        .await;
    assert!(matches!(put, Err(Error::Backend { .. })), "{put:?}");
    let put = store
        .atomic_put(
            "max/foreign",
            "w".into(),
            Some(&pair),
            WriteOptions::default(),
        )
        .await;
    assert!(matches!(put, Err(Error::Backend { .. })), "{put:?}");
    let delete = store.atomic_delete("max/foreign", &pair).await;
    assert!(matches!(delete, Err(Error::Backend { .. })), "{delete:?}");
    let delete = store.delete("max/foreign").await;
    assert!(matches!(delete, Err(Error::Backend { .. })), "{delete:?}");
    let delete = store.delete_tree("max").await;
    assert!(matches!(delete, Err(Error::Backend { .. })), "{delete:?}");
    assert_eq!(
        raw_item(&store, &sk).await.unwrap()["value"]
            .as_b()
            .unwrap()
            .as_ref(),
        b"foreign"
    );
    store
        .client()
        .delete_item()
        .table_name(&store.config().table)
        .key("pk", AttributeValue::S(partition(&sk)))
        .key("sk", AttributeValue::S(sk))
        .send()
        .await
        .unwrap();
    store.delete_tree("").await.unwrap();
    store.close().await.unwrap();
}

/// Reads `stream` until an item satisfies `wanted`, at most `bound`; panics on an `Err` item,
/// the end of the stream, or the bound.
async fn until<S, T>(stream: &mut S, bound: Duration, what: &str, wanted: impl Fn(&T) -> bool) -> T
where
    S: futures::Stream<Item = kv_core::Result<T>> + Unpin,
    T: std::fmt::Debug,
{
    let give_up = tokio::time::Instant::now() + bound;
    loop {
        match tokio::time::timeout_at(give_up, stream.next()).await {
            Ok(Some(Ok(item))) if wanted(&item) => return item,
            Ok(Some(Ok(_))) => continue,
            other => panic!("{what}: {other:?} within {bound:?}"),
        }
    }
}

/// Reads `stream` until its `Err` item, at most `bound`; panics on the end of the stream
/// without one, or the bound.
async fn until_error<S, T>(stream: &mut S, bound: Duration, what: &str) -> Error
where
    S: futures::Stream<Item = kv_core::Result<T>> + Unpin,
    T: std::fmt::Debug,
{
    let give_up = tokio::time::Instant::now() + bound;
    loop {
        match tokio::time::timeout_at(give_up, stream.next()).await {
            Ok(Some(Ok(_))) => continue,
            Ok(Some(Err(error))) => return error,
            other => panic!("{what}: {other:?} within {bound:?}, expected an Err item"),
        }
    }
}

/// A table deleted and created again under the same name has a new stream, with a new ARN:
/// the watches opened before follow it (they notice the old stream is gone, describe the
/// table again, re-read their state and go on on the new stream) and report what is written
/// next, instead of waiting forever on the old stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_follow_a_table_deleted_and_created_again() {
    let cfg = config(&random("kv_recreate")).request_timeout(Duration::from_secs(10));
    let store = store(cfg.clone()).await;
    assert!(store.watches_use_streams());
    store
        .put("r/k", "before".into(), WriteOptions::default())
        .await
        .unwrap();
    let mut watch = store.watch("r/k", ReadOptions::default()).await.unwrap();
    let mut tree = store.watch_tree("r", ReadOptions::default()).await.unwrap();
    assert_eq!(next(&mut watch, "first").await.unwrap().value, "before");
    assert_eq!(next(&mut tree, "first tree").await.len(), 1);

    let client = store.client().clone();
    client
        .delete_table()
        .table_name(&cfg.table)
        .send()
        .await
        .unwrap();
    // Created again exactly as the crate creates it (stream, TTL), by a second handle.
    let creator = DynamoStore::connect(cfg.clone()).await.unwrap();
    let pair = store
        .atomic_put("r/k", "after".into(), None, WriteOptions::default())
        .await
        .expect("the same handle writes to the new table");
    let bound = Duration::from_secs(15);
    let started = Instant::now();
    let seen = until(&mut watch, bound, "watch after re-creation", |state| {
        state.as_ref().is_some_and(|p| p.value == "after")
    })
    .await;
    eprintln!("the watch saw the write {:?} after it", started.elapsed());
    assert_eq!(seen, Some(pair.clone()));
    let snapshot = until(
        &mut tree,
        bound,
        "watch_tree after re-creation",
        |snapshot| snapshot.iter().any(|p| p.value == "after"),
    )
    .await;
    assert_eq!(snapshot, [pair]);
    // And they keep following the new stream.
    creator
        .put("r/k2", "more".into(), WriteOptions::default())
        .await
        .unwrap();
    until(
        &mut tree,
        bound,
        "watch_tree on the new stream",
        |snapshot| snapshot.len() == 2,
    )
    .await;
    creator.delete("r/k").await.unwrap();
    until(
        &mut watch,
        bound,
        "watch on the new stream",
        Option::is_none,
    )
    .await;

    drop((watch, tree));
    store.close().await.unwrap();
    creator.close().await.unwrap();
    client
        .delete_table()
        .table_name(&cfg.table)
        .send()
        .await
        .unwrap();
}

/// A table deleted for good: the watches do not wait forever, they end with an `Err` item
/// once it has been gone for about the request timeout (2 s here); so does a watch opened
/// after the deletion.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_end_with_an_error_when_their_table_stays_deleted() {
    let cfg = config(&random("kv_gone")).request_timeout(Duration::from_secs(2));
    let store = store(cfg.clone()).await;
    let mut watch = store.watch("g/k", ReadOptions::default()).await.unwrap();
    let mut tree = store.watch_tree("g", ReadOptions::default()).await.unwrap();
    assert_eq!(next(&mut watch, "first").await, None);
    assert!(next(&mut tree, "first tree").await.is_empty());
    store
        .client()
        .delete_table()
        .table_name(&cfg.table)
        .send()
        .await
        .unwrap();
    let bound = Duration::from_secs(15);
    let started = Instant::now();
    let error = until_error(&mut watch, bound, "watch of a deleted table").await;
    eprintln!("watch ended after {:?}: {error}", started.elapsed());
    assert!(!matches!(error, Error::Closed), "{error:?}");
    let error = until_error(&mut tree, bound, "watch_tree of a deleted table").await;
    assert!(!matches!(error, Error::Closed), "{error:?}");
    assert!(watch.next().await.is_none() && tree.next().await.is_none());
    let mut late = store.watch("g/k", ReadOptions::default()).await.unwrap();
    until_error(&mut late, bound, "watch opened after the deletion").await;
    drop(late);
    assert!(store.get("g/k", ReadOptions::default()).await.is_err());
    store.close().await.unwrap();
}

/// No key lies below a directory of `max_key_len` bytes (or one byte less): a child would be
/// longer than DynamoDB's 1024-byte sort key. `list` says so (empty, not a
/// ValidationException), `watch_tree` starts with the empty snapshot, and `delete_tree`
/// deletes the directory key itself; with and without a namespace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_and_watch_tree_of_directories_at_the_key_length_limit() {
    for namespace in [random("ns"), String::new()] {
        let store = store(config(TABLE).namespace(namespace.clone())).await;
        let max = store.capabilities().max_key_len;
        let head = random("lim");
        for len in [max, max - 1] {
            let dir = format!("{head}/{}", "d".repeat(len - head.len() - 1));
            assert_eq!(dir.len(), len);
            let what = format!("namespace {namespace:?}, directory of {len} bytes");
            store
                .put(&dir, "dir".into(), WriteOptions::default())
                .await
                .unwrap();
            let listed = store.list(&dir, ReadOptions::default()).await;
            assert!(
                listed.as_ref().is_ok_and(Vec::is_empty),
                "{what}: {listed:?}"
            );
            let mut tree = store
                .watch_tree(&dir, ReadOptions::default())
                .await
                .unwrap();
            assert!(next(&mut tree, &what).await.is_empty(), "{what}");
            drop(tree);
            store.delete_tree(&dir).await.unwrap();
            assert_eq!(store.get(&dir, ReadOptions::default()).await.unwrap(), None);
        }
        store.delete_tree(&head).await.unwrap();
        store.close().await.unwrap();
    }
}

/// Puts an item the way another program would: only the attributes given.
async fn put_raw(store: &DynamoStore, pk: &str, sk: &str, extra: &[(&str, AttributeValue)]) {
    let mut request = store
        .client()
        .put_item()
        .table_name(&store.config().table)
        .item("pk", AttributeValue::S(pk.to_owned()))
        .item("sk", AttributeValue::S(sk.to_owned()));
    for (name, value) in extra {
        request = request.item(*name, value.clone());
    }
    request.send().await.expect("raw put_item");
}

/// Items other programs wrote at sort keys that are no valid keys (`t//b`, `t/c/`, a control
/// character, a reserved `__kv` segment, `.`) or under a partition key that is not the sort
/// key's first segment (which `get` could never find) are not listed, not in `watch_tree`
/// snapshots, and `delete_tree` leaves them alone: it deletes exactly what `list` shows, plus
/// the directory key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_and_delete_tree_skip_items_whose_keys_break_the_key_rules() {
    // Without a namespace, on a table of its own: `list("")` is the table's Scan.
    let cfg = config(&random("kv_foreign")).namespace("");
    let store = store(cfg.clone()).await;
    let value = ("value", AttributeValue::S("foreign".into()));
    let version = ("version", AttributeValue::N("5".into()));
    let foreign = [
        ("t", "t//b"),
        ("t", "t/c/"),
        ("t", "t/bad\u{1}x"),
        ("t", "t/__kvx"),
        ("t", "t/./x"),
        ("t", "t/ok//deeper"),
        ("zz", "t/wrong-partition"),
    ];
    for (pk, sk) in foreign {
        put_raw(&store, pk, sk, &[value.clone(), version.clone()]).await;
    }
    for key in ["t", "t/ok", "t/ok/deep"] {
        store
            .put(key, "mine".into(), WriteOptions::default())
            .await
            .unwrap();
    }
    let keys = |pairs: &[KvPair]| pairs.iter().map(|p| p.key.clone()).collect::<Vec<_>>();
    let below = store.list("t", ReadOptions::default()).await.unwrap();
    assert_eq!(keys(&below), ["t/ok", "t/ok/deep"]);
    let all = store.list("", ReadOptions::default()).await.unwrap();
    assert_eq!(keys(&all), ["t", "t/ok", "t/ok/deep"]);
    for pair in &all {
        let got = store.get(&pair.key, ReadOptions::default()).await;
        assert_eq!(
            got.unwrap().as_ref(),
            Some(pair),
            "every listed key reads back"
        );
    }
    let mut tree = store.watch_tree("t", ReadOptions::default()).await.unwrap();
    assert_eq!(next(&mut tree, "watch_tree(t)").await, below);
    let mut root = store.watch_tree("", ReadOptions::default()).await.unwrap();
    assert_eq!(next(&mut root, "watch_tree(\"\")").await, all);
    drop((tree, root));

    store.delete_tree("t").await.unwrap();
    assert!(
        store
            .list("", ReadOptions::default())
            .await
            .unwrap()
            .is_empty()
    );
    for (pk, sk) in foreign {
        let item = store
            .client()
            .get_item()
            .table_name(&cfg.table)
            .key("pk", AttributeValue::S(pk.to_owned()))
            .key("sk", AttributeValue::S(sk.to_owned()))
            .consistent_read(true)
            .send()
            .await
            .unwrap()
            .item
            .unwrap_or_else(|| panic!("{sk:?} was deleted"));
        assert!(!item.contains_key("deleted"), "{sk:?} became a tombstone");
        assert_eq!(item["value"], value.1, "{sk:?}");
    }
    // Nothing was written where `get` would look for the item of the wrong partition.
    assert_eq!(raw_item(&store, "t/wrong-partition").await, None);
    store.delete_tree("").await.unwrap();
    store.close().await.unwrap();
    store
        .client()
        .delete_table()
        .table_name(&cfg.table)
        .send()
        .await
        .unwrap();
}

/// An item another program wrote, and rewrote, without a `version` attribute: nothing in it
/// changes on a rewrite, so no `last_index` can tell the two writes apart. A compare-and-swap
/// against it is refused with `NotSupported` (retrying would not help, unlike `KeyModified`)
/// so that a pair read before the rewrite can never win; a plain `put` gives the key a version,
/// and CAS works from then on. A foreign rewrite that drops the version again makes every
/// pair read before it stale (`KeyModified`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cas_on_an_item_without_a_version_never_succeeds_with_a_stale_pair() {
    let store = store(config(TABLE)).await;
    let sk = sort_key(store.config(), "cas/foreign");
    let pk = partition(&sk);
    let text = |t: &str| ("value", AttributeValue::S(t.to_owned()));
    put_raw(&store, &pk, &sk, &[text("v1")]).await;
    let stale = store
        .get("cas/foreign", ReadOptions::default())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stale.value, "v1");
    put_raw(&store, &pk, &sk, &[text("v2")]).await;
    let put = store
        .atomic_put(
            "cas/foreign",
            "mine".into(),
            Some(&stale),
            WriteOptions::default(),
        )
        .await;
    assert!(
        matches!(&put, Err(Error::NotSupported { operation, .. }) if operation.contains("version")),
        "{put:?}"
    );
    let delete = store.atomic_delete("cas/foreign", &stale).await;
    assert!(
        matches!(delete, Err(Error::NotSupported { .. })),
        "{delete:?}"
    );
    let current = store
        .get("cas/foreign", ReadOptions::default())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(current.value, "v2", "the foreign rewrite stands");
    // A fresh read does not help: the same index, the same refusal.
    let put = store
        .atomic_put(
            "cas/foreign",
            "mine".into(),
            Some(&current),
            WriteOptions::default(),
        )
        .await;
    assert!(matches!(put, Err(Error::NotSupported { .. })), "{put:?}");
    assert!(matches!(
        store
            .atomic_put("cas/foreign", "mine".into(), None, WriteOptions::default())
            .await,
        Err(Error::KeyExists { .. })
    ));

    // A plain put gives it a version: CAS works from then on.
    store
        .put("cas/foreign", "mine".into(), WriteOptions::default())
        .await
        .unwrap();
    let mine = store
        .get("cas/foreign", ReadOptions::default())
        .await
        .unwrap()
        .unwrap();
    let swapped = store
        .atomic_put(
            "cas/foreign",
            "swapped".into(),
            Some(&mine),
            WriteOptions::default(),
        )
        .await
        .unwrap();
    // Rewritten without a version again: the pair read before is stale.
    put_raw(&store, &pk, &sk, &[text("v3")]).await;
    let put = store
        .atomic_put(
            "cas/foreign",
            "late".into(),
            Some(&swapped),
            WriteOptions::default(),
        )
        .await;
    assert!(matches!(put, Err(Error::KeyModified { .. })), "{put:?}");
    let delete = store.atomic_delete("cas/foreign", &swapped).await;
    assert!(
        matches!(delete, Err(Error::KeyModified { .. })),
        "{delete:?}"
    );
    assert_eq!(
        raw_item(&store, &sk).await.unwrap()["value"],
        AttributeValue::S("v3".into())
    );
    // delete_tree still deletes such items.
    store.delete_tree("cas").await.unwrap();
    assert_eq!(
        store
            .get("cas/foreign", ReadOptions::default())
            .await
            .unwrap(),
        None
    );
    store.close().await.unwrap();
}

/// Attribute names of a raw item, sorted.
fn attribute_names(item: &HashMap<String, AttributeValue>) -> Vec<String> {
    let mut names: Vec<String> = item.keys().cloned().collect();
    names.sort();
    names
}

/// A transaction writes the very items `put` and `delete` write: same attributes, plain
/// value, `version` = the returned `last_index` = what `get` reports, a TTL only when asked
/// for (a put without TTL makes the key permanent again), tombstones for deletes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transaction_items_have_the_layout_of_put_and_delete() {
    use kv_core::{Condition, Transaction};
    let config = config(TABLE);
    let store = store(config.clone()).await;
    let ttl = WriteOptions::with_ttl(Duration::from_secs(30));
    store
        .put("lay/by-put", "v".into(), ttl.clone())
        .await
        .unwrap();
    store
        .put("lay/gone", "old".into(), WriteOptions::default())
        .await
        .unwrap();
    let gone = store
        .get("lay/gone", ReadOptions::default())
        .await
        .unwrap()
        .unwrap();
    let pairs = store
        .transaction(
            Transaction::new()
                .when(Condition::unchanged(&gone))
                .put("lay/by-txn", Bytes::from_static(b"\x00v\xff"), ttl.clone())
                .put("/lay/plain/", "p", WriteOptions::default())
                .delete("lay/gone")
                .delete("lay/never"),
        )
        .await
        .unwrap();
    assert_eq!(
        pairs.iter().map(|p| p.key.as_str()).collect::<Vec<_>>(),
        ["lay/by-txn", "lay/plain"],
        "one pair per put, in operation order, keys normalised"
    );
    let by_put = raw_item(&store, &sort_key(&config, "lay/by-put"))
        .await
        .unwrap();
    let by_txn = raw_item(&store, &sort_key(&config, "lay/by-txn"))
        .await
        .unwrap();
    assert_eq!(attribute_names(&by_txn), attribute_names(&by_put));
    assert_eq!(
        by_txn["pk"].as_s().unwrap(),
        &partition(&sort_key(&config, "lay/by-txn"))
    );
    assert_eq!(by_txn["value"].as_b().unwrap().as_ref(), b"\x00v\xff");
    assert_eq!(n(&by_txn, "version"), pairs[0].last_index);
    let deadline = n(&by_txn, "deadline_ms");
    assert!(deadline > ttl::now_millis() + 20_000);
    assert_eq!(n(&by_txn, "expires_at"), deadline.div_ceil(1000));
    let got = store
        .get("lay/by-txn", ReadOptions::default())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, pairs[0]);
    let plain = raw_item(&store, &sort_key(&config, "lay/plain"))
        .await
        .unwrap();
    assert_eq!(attribute_names(&plain), ["pk", "sk", "value", "version"]);

    // The delete is the tombstone `delete` writes, above the version it replaced.
    let tomb = raw_item(&store, &sort_key(&config, "lay/gone"))
        .await
        .unwrap();
    assert_eq!(tomb["deleted"], AttributeValue::Bool(true));
    assert!(!tomb.contains_key("value"));
    assert!(n(&tomb, "version") > gone.last_index);
    assert_eq!(
        store.get("lay/gone", ReadOptions::default()).await.unwrap(),
        None
    );
    // A delete of a key that never existed is fine and invisible.
    assert_eq!(
        store
            .get("lay/never", ReadOptions::default())
            .await
            .unwrap(),
        None
    );

    // A transactional put without TTL makes a TTL key permanent again; the next CAS (a
    // plain atomic_put) works on the pair it returned.
    let again = store
        .transaction(
            Transaction::new()
                .when(Condition::unchanged(&pairs[0]))
                .put("lay/by-txn", "w", WriteOptions::default()),
        )
        .await
        .unwrap();
    assert!(again[0].last_index > pairs[0].last_index);
    let item = raw_item(&store, &sort_key(&config, "lay/by-txn"))
        .await
        .unwrap();
    assert_eq!(attribute_names(&item), ["pk", "sk", "value", "version"]);
    let swapped = store
        .atomic_put(
            "lay/by-txn",
            "x".into(),
            Some(&again[0]),
            WriteOptions::default(),
        )
        .await
        .unwrap();
    assert!(swapped.last_index > again[0].last_index);
    store.delete_tree("").await.unwrap();
    store.close().await.unwrap();
}

/// The limits are DynamoDB's: 100 actions (one per key) and 4 MB of items, refused with
/// `InvalidOption` before anything is sent; a transaction at 100 operations, and one of ten
/// values at the value limit, go through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_beyond_dynamodb_limits_are_refused_before_sending() {
    use kv_core::Transaction;
    let store = store(config(TABLE)).await;
    let caps = store.capabilities().clone();
    assert!(caps.transactions);
    assert_eq!(caps.max_transaction_ops, 100);
    assert!(!caps.watch_tree_sees_whole_transactions);

    let hundred = (0..100).fold(Transaction::new(), |t, i| {
        t.put(format!("lim/k{i:03}"), "v", WriteOptions::default())
    });
    assert_eq!(store.transaction(hundred).await.unwrap().len(), 100);
    let too_many = (0..101).fold(Transaction::new(), |t, i| t.delete(format!("lim/k{i:03}")));
    let refused = store.transaction(too_many).await;
    assert!(
        matches!(refused, Err(Error::InvalidOption(_))),
        "{refused:?}"
    );
    assert_eq!(
        store
            .list("lim", ReadOptions::default())
            .await
            .unwrap()
            .len(),
        100,
        "nothing deleted"
    );

    // Eleven values of 390 KiB: each one fits an item, together they exceed 4 MB.
    let big = Bytes::from(vec![b'b'; 390 * 1024]);
    let over = (0..11).fold(Transaction::new(), |t, i| {
        t.put(format!("big/k{i}"), big.clone(), WriteOptions::default())
    });
    let refused = store.transaction(over).await;
    assert!(
        matches!(refused, Err(Error::InvalidOption(_))),
        "{refused:?}"
    );
    assert!(
        store
            .list("big", ReadOptions::default())
            .await
            .unwrap()
            .is_empty()
    );
    // Ten values at the value limit: below 4 MB, accepted by the server.
    let max = Bytes::from(vec![b'm'; caps.max_value_len]);
    let ten = (0..10).fold(Transaction::new(), |t, i| {
        t.put(format!("big/k{i}"), max.clone(), WriteOptions::default())
    });
    assert_eq!(store.transaction(ten).await.unwrap().len(), 10);
    store.delete_tree("").await.unwrap();
    store.close().await.unwrap();
}

/// The reasons come from the items DynamoDB returns with the cancellation (the state at
/// commit time), including items only this backend meets: expired items not yet removed,
/// tombstones, items of other clients without a version or at a version above our clock,
/// and at `u64::MAX`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transaction_reasons_come_from_the_state_at_commit_time() {
    use kv_core::{Condition, ConditionFailure, Transaction};
    let config = config(TABLE);
    let store = store(config.clone()).await;
    let pk = config.namespace.clone();
    let past = (ttl::now_millis() - 60_000).to_string();
    put_raw(
        &store,
        &pk,
        &sort_key(&config, "r/expired"),
        &[
            ("value", AttributeValue::B(Blob::new("x"))),
            ("version", AttributeValue::N("5".into())),
            ("deadline_ms", AttributeValue::N(past.clone())),
        ],
    )
    .await;
    store
        .put("r/live", "v".into(), WriteOptions::default())
        .await
        .unwrap();
    store
        .put("r/tomb", "v".into(), WriteOptions::default())
        .await
        .unwrap();
    store.delete("r/tomb").await.unwrap();
    let live = store
        .get("r/live", ReadOptions::default())
        .await
        .unwrap()
        .unwrap();

    let failure = |result: kv_core::Result<Vec<KvPair>>| match result {
        Err(Error::ConditionFailed { index, key, reason }) => (index, key, reason),
        other => panic!("expected ConditionFailed, got {other:?}"),
    };
    // Expired and tombstoned keys are absent; the first failing condition is reported.
    let txn = Transaction::new()
        .when(Condition::absent("r/expired"))
        .when(Condition::absent("r/tomb"))
        .when(Condition::index_equals("r/live", live.last_index))
        .when(Condition::exists("r/expired2"))
        .when(Condition::absent("r/live2"))
        .put("r/out", "o", WriteOptions::default());
    assert_eq!(
        failure(store.transaction(txn).await),
        (3, "r/expired2".to_owned(), ConditionFailure::KeyNotFound)
    );
    let txn = Transaction::new()
        .when(Condition::exists("r/live"))
        .when(Condition::index_equals("r/expired", 5))
        .put("r/expired", "o", WriteOptions::default());
    assert_eq!(
        failure(store.transaction(txn).await),
        (1, "r/expired".to_owned(), ConditionFailure::KeyNotFound)
    );
    let txn = Transaction::new()
        .when(Condition::index_equals("r/live", live.last_index + 1))
        .delete("r/live");
    assert_eq!(
        failure(store.transaction(txn).await),
        (0, "r/live".to_owned(), ConditionFailure::KeyModified)
    );
    let txn = Transaction::new().when(Condition::LockHeld {
        key: "r/live".into(),
        fencing_token: live.last_index - 1,
    });
    assert_eq!(
        failure(store.transaction(txn).await),
        (0, "r/live".to_owned(), ConditionFailure::LockLost)
    );
    assert_eq!(
        store.get("r/out", ReadOptions::default()).await.unwrap(),
        None,
        "nothing written by the failed transactions"
    );
    assert_eq!(
        store.get("r/live", ReadOptions::default()).await.unwrap(),
        Some(live.clone())
    );

    // Another client's item at a version above every clock: the version guard fails, the
    // transaction is sent again above it, and the key's index still rises.
    let ahead = u64::MAX / 2;
    put_raw(
        &store,
        &pk,
        &sort_key(&config, "r/ahead"),
        &[
            ("value", AttributeValue::B(Blob::new("a"))),
            ("version", AttributeValue::N(ahead.to_string())),
        ],
    )
    .await;
    let pairs = store
        .transaction(
            Transaction::new()
                .when(Condition::exists("r/ahead"))
                .put("r/ahead", "b", WriteOptions::default())
                .put("r/live", "w", WriteOptions::default()),
        )
        .await
        .unwrap();
    assert!(pairs[0].last_index > ahead);
    assert!(pairs[1].last_index > live.last_index);

    // An item without a version: a compare at its last_index 1 is refused as for
    // atomic_put; a lock condition on it fails.
    put_raw(
        &store,
        &pk,
        &sort_key(&config, "r/bare"),
        &[("value", AttributeValue::S("t".into()))],
    )
    .await;
    let bare = store
        .get("r/bare", ReadOptions::default())
        .await
        .unwrap()
        .unwrap();
    let refused = store
        .transaction(Transaction::new().when(Condition::unchanged(&bare)).put(
            "r/bare",
            "u",
            WriteOptions::default(),
        ))
        .await;
    assert!(
        matches!(refused, Err(Error::NotSupported { .. })),
        "{refused:?}"
    );
    let txn = Transaction::new().when(Condition::LockHeld {
        key: "r/bare".into(),
        fencing_token: 1,
    });
    assert_eq!(
        failure(store.transaction(txn).await),
        (0, "r/bare".to_owned(), ConditionFailure::LockLost)
    );

    // An item at u64::MAX: no write goes above it (as for put), a condition check is fine.
    put_raw(
        &store,
        &pk,
        &sort_key(&config, "r/max"),
        &[
            ("value", AttributeValue::B(Blob::new("m"))),
            ("version", AttributeValue::N(u64::MAX.to_string())),
        ],
    )
    .await;
    let refused = store
        .transaction(Transaction::new().put("r/max", "n", WriteOptions::default()))
        .await;
    assert!(matches!(refused, Err(Error::Backend { .. })), "{refused:?}");
    store
        .transaction(Transaction::new().when(Condition::index_equals("r/max", u64::MAX)))
        .await
        .unwrap();
    let stale = store
        .transaction(
            Transaction::new()
                .when(Condition::index_equals("r/live", u64::MAX))
                .put("r/live", "z", WriteOptions::default()),
        )
        .await;
    assert_eq!(
        failure(stale),
        (0, "r/live".to_owned(), ConditionFailure::KeyModified)
    );
    for key in ["r/max", "r/bare", "r/ahead"] {
        let sk = sort_key(&config, key);
        store
            .client()
            .delete_item()
            .table_name(&store.config().table)
            .key("pk", AttributeValue::S(partition(&sk)))
            .key("sk", AttributeValue::S(sk))
            .send()
            .await
            .unwrap();
    }
    store.delete_tree("").await.unwrap();
    store.close().await.unwrap();
}

/// `LockHeld` compares the lock item's version (the fencing token, which renewals leave
/// alone) and its deadline on the server's clock: a holder whose lock was deleted and
/// re-acquired, or whose lock item expired without being taken over yet, is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guarded_writes_follow_the_lock_item_on_the_server() {
    let config = config(TABLE);
    let a = store(config.clone()).await;
    let b = store(config.clone()).await;
    let ttl = Duration::from_secs(3);
    let mut lock_a = a
        .new_lock("fence/lock", LockOptions::default().ttl(ttl).value("a"))
        .await
        .unwrap();
    let lease_a = lock_a.lock().await.unwrap();
    lease_a
        .guarded_put(&a, "fence/data", "a1", WriteOptions::default())
        .await
        .unwrap();
    // Renewals (every TTL/3) change the heartbeat and the deadline, not the token.
    let sk = sort_key(&config, "fence/lock");
    let before = raw_item(&a, &sk).await.unwrap();
    tokio::time::sleep(ttl / 2 + Duration::from_millis(500)).await;
    let after = raw_item(&a, &sk).await.unwrap();
    assert_ne!(n(&before, "heartbeat"), n(&after, "heartbeat"), "renewed");
    assert_eq!(n(&after, "version"), lease_a.fencing_token());
    let pair = lease_a
        .guarded_put(&a, "fence/data", "a2", WriteOptions::default())
        .await
        .unwrap();
    assert_eq!(pair.value, "a2");

    // Another handle deletes the lock key and B takes the lock: A is fenced off.
    assert!(b.delete("fence/lock").await.unwrap());
    let mut lock_b = b
        .new_lock("fence/lock", LockOptions::default().ttl(ttl).value("b"))
        .await
        .unwrap();
    let lease_b = lock_b.lock().await.unwrap();
    assert!(lease_b.fencing_token() > lease_a.fencing_token());
    let refused = lease_a
        .guarded_put(&a, "fence/data", "a3", WriteOptions::default())
        .await;
    assert!(
        matches!(refused, Err(Error::LockLost { .. })),
        "{refused:?}"
    );
    let refused = lease_a.guarded_delete(&a, "fence/data").await;
    assert!(
        matches!(refused, Err(Error::LockLost { .. })),
        "{refused:?}"
    );
    assert_eq!(
        b.get("fence/data", ReadOptions::default())
            .await
            .unwrap()
            .unwrap()
            .value,
        "a2"
    );
    lease_b
        .guarded_put(&b, "fence/data", "b1", WriteOptions::default())
        .await
        .unwrap();

    // A lock item whose holder stopped renewing, expired on the server's clock but not
    // taken over or removed yet: the acquisition it records no longer holds the lock.
    let dead = 7_000_000_000_000_000;
    let lock_item = |deadline: u64| {
        vec![
            ("value", AttributeValue::B(Blob::new("d"))),
            ("version", AttributeValue::N(dead.to_string())),
            ("owner", AttributeValue::S("0123456789abcdef".into())),
            ("heartbeat", AttributeValue::N("4".into())),
            ("lease_ms", AttributeValue::N("3000".into())),
            ("deadline_ms", AttributeValue::N(deadline.to_string())),
        ]
    };
    let dead_sk = sort_key(&config, "fence/dead");
    let held = kv_core::Transaction::new()
        .when(kv_core::Condition::LockHeld {
            key: "fence/dead".into(),
            fencing_token: dead,
        })
        .put("fence/other", "d", WriteOptions::default());
    put_raw(
        &a,
        &partition(&dead_sk),
        &dead_sk,
        &lock_item(ttl::now_millis() + 60_000),
    )
    .await;
    a.transaction(held.clone()).await.unwrap();
    put_raw(
        &a,
        &partition(&dead_sk),
        &dead_sk,
        &lock_item(ttl::now_millis() - 1_000),
    )
    .await;
    let refused = a.transaction(held).await;
    assert!(
        matches!(
            refused,
            Err(Error::ConditionFailed {
                index: 0,
                reason: kv_core::ConditionFailure::LockLost,
                ..
            })
        ),
        "{refused:?}"
    );
    drop((lease_a, lease_b));
    let _ = lock_a.unlock().await;
    let _ = lock_b.unlock().await;
    a.delete_tree("").await.unwrap();
    a.close().await.unwrap();
    b.close().await.unwrap();
}
