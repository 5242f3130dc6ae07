//! What only the Consul backend has: its storage layout as other clients see it, its limits,
//! its failure modes and its background tasks. Runs against the live agent named by
//! `KV_TEST_CONSUL_ADDR`.

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use kv_consul::{Config, ConsulStore, MAX_TRANSACTION_OPS, MAX_VALUE_LEN};
use kv_core::{
    Condition, ConditionFailure, Error, LockOptions, LockState, ReadOptions, Store, Transaction,
    WriteOptions,
};
use serde_json::Value as Json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn address() -> String {
    std::env::var("KV_TEST_CONSUL_ADDR").unwrap_or_else(|_| {
        panic!("KV_TEST_CONSUL_ADDR not set: run the README test command or `eval \"$(scripts/servers env)\"`")
    })
}

fn unique(name: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("kv-consul-test-{name}-{nanos:x}")
}

async fn store_with_prefix(prefix: &str) -> ConsulStore {
    let config = Config::builder()
        .endpoint(address())
        .namespace(prefix)
        .build()
        .unwrap();
    ConsulStore::connect(config).await.unwrap()
}

/// Percent-encodes a key the way any HTTP client would.
fn encode(key: &str) -> String {
    key.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// A plain HTTP client, as another program would use Consul.
struct Raw {
    http: reqwest::Client,
    base: String,
}

impl Raw {
    fn new() -> Raw {
        Raw {
            http: reqwest::Client::new(),
            base: address(),
        }
    }

    async fn get_raw(&self, key: &str) -> Option<Bytes> {
        let r = self
            .http
            .get(format!("{}/v1/kv/{}?raw", self.base, encode(key)))
            .send()
            .await
            .unwrap();
        if r.status() == 404 {
            return None;
        }
        assert!(r.status().is_success(), "{}", r.status());
        Some(r.bytes().await.unwrap())
    }

    async fn entry(&self, key: &str) -> Option<Json> {
        let r = self
            .http
            .get(format!("{}/v1/kv/{}", self.base, encode(key)))
            .send()
            .await
            .unwrap();
        if r.status() == 404 {
            return None;
        }
        let mut entries: Vec<Json> = r.json().await.unwrap();
        Some(entries.remove(0))
    }

    async fn put_raw(&self, key: &str, value: impl Into<reqwest::Body>) -> bool {
        let r = self
            .http
            .put(format!("{}/v1/kv/{}", self.base, encode(key)))
            .body(value)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{}", r.status());
        r.json::<bool>().await.unwrap()
    }

    /// Writes keys through `/v1/txn`, which takes any key (`/v1/kv` redirects `a//b`), 64
    /// per transaction, with the value `foreign`.
    async fn set_raw(&self, keys: &[String]) {
        for chunk in keys.chunks(64) {
            let ops: Vec<Json> = chunk
                .iter()
                .map(|k| serde_json::json!({ "KV": { "Verb": "set", "Key": k, "Value": "Zm9yZWlnbg==" } }))
                .collect();
            let r = self
                .http
                .put(format!("{}/v1/txn", self.base))
                .json(&ops)
                .send()
                .await
                .unwrap();
            assert!(r.status().is_success(), "{}", r.status());
        }
    }

    /// Every stored key that starts with `prefix`, sorted.
    async fn keys(&self, prefix: &str) -> Vec<String> {
        let r = self
            .http
            .get(format!("{}/v1/kv/{}?keys", self.base, encode(prefix)))
            .send()
            .await
            .unwrap();
        if r.status() == 404 {
            return Vec::new();
        }
        let mut keys: Vec<String> = r.json().await.unwrap();
        keys.sort();
        keys
    }

    /// Deletes every key that starts with `prefix`.
    async fn delete_prefix(&self, prefix: &str) {
        let r = self
            .http
            .delete(format!("{}/v1/kv/{}?recurse", self.base, encode(prefix)))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{}", r.status());
    }

    async fn session(&self, id: &str) -> Option<Json> {
        let r = self
            .http
            .get(format!("{}/v1/session/info/{id}", self.base))
            .send()
            .await
            .unwrap();
        let mut sessions: Vec<Json> = r.json().await.unwrap_or_default();
        (!sessions.is_empty()).then(|| sessions.remove(0))
    }
}

#[tokio::test]
async fn values_are_plain_bytes_under_plain_keys() {
    let p = unique("layout");
    let store = store_with_prefix(&p).await;
    let raw = Raw::new();
    let binary: Vec<u8> = (0..=255u8).collect();
    store
        .put("dir/bin", binary.clone().into(), WriteOptions::default())
        .await
        .unwrap();
    assert_eq!(raw.get_raw(&format!("{p}/dir/bin")).await.unwrap(), binary);
    let entry = raw.entry(&format!("{p}/dir/bin")).await.unwrap();
    assert_eq!(entry["Flags"], 0, "no metadata for a key without TTL");
    assert!(entry["Session"].is_null());

    // Keys with characters that need escaping in URLs are stored literally.
    let odd = "sp ace/q?m#h%p/ü😀";
    store
        .put(odd, "odd".into(), WriteOptions::default())
        .await
        .unwrap();
    assert_eq!(raw.get_raw(&format!("{p}/{odd}")).await.unwrap(), "odd");

    // What another client writes is read as it is.
    assert!(raw.put_raw(&format!("{p}/other"), "from curl").await);
    let pair = store
        .get("other", ReadOptions::default())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(pair.value, "from curl");
    let entry = raw.entry(&format!("{p}/other")).await.unwrap();
    assert_eq!(pair.last_index, entry["ModifyIndex"].as_u64().unwrap());

    // Raw keys that are not valid normalised keys, and reserved segments, are not listed.
    assert!(raw.put_raw(&format!("{p}/dir/"), "folder marker").await);
    assert!(raw.put_raw(&format!("{p}/dir/__kvinternal"), "x").await);
    let keys: Vec<String> = store
        .list("", ReadOptions::default())
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.key)
        .collect();
    assert_eq!(keys, vec!["dir/bin", "other", odd]);

    // The namespace bounds delete_tree("").
    raw.put_raw(&format!("{p}-sibling"), "outside").await;
    store.delete_tree("").await.unwrap();
    assert_eq!(raw.get_raw(&format!("{p}/dir/bin")).await, None);
    assert_eq!(
        raw.get_raw(&format!("{p}-sibling")).await.unwrap(),
        "outside"
    );
    let other = store_with_prefix(&format!("{p}-sibling")).await;
    assert!(
        other
            .list("", ReadOptions::default())
            .await
            .unwrap()
            .is_empty()
    );
    // It leaves the keys `list` does not show.
    assert_eq!(
        raw.keys(&format!("{p}/")).await,
        [format!("{p}/dir/"), format!("{p}/dir/__kvinternal")]
    );
    Store::close(&store).await.unwrap();
    Store::close(&other).await.unwrap();
    raw.delete_prefix(&format!("{p}/")).await;
    reqwest::Client::new()
        .delete(format!("{}/v1/kv/{p}-sibling", address()))
        .send()
        .await
        .unwrap();
}

#[tokio::test]
async fn ttl_deadline_lives_in_flags_and_reads_filter_before_consul_deletes() {
    let p = unique("ttl-flags");
    let store = store_with_prefix(&p).await;
    let raw = Raw::new();
    let full = format!("{p}/k");
    let started = Instant::now();
    let before = kv_core::ttl::now_millis();
    store
        .put(
            "k",
            "v".into(),
            WriteOptions::with_ttl(Duration::from_secs(1)),
        )
        .await
        .unwrap();
    let entry = raw.entry(&full).await.unwrap();
    let flags = entry["Flags"].as_u64().unwrap();
    assert_eq!(flags >> 48, 0x4B56, "tagged deadline");
    let deadline = flags & ((1 << 48) - 1);
    // In the server's time, as the handle estimates it from `Date` headers (1 s resolution:
    // within half a second plus half a round trip); the agent runs on this machine's clock.
    let error = 600;
    assert!(
        deadline + error >= before + 1000 && deadline <= kv_core::ttl::now_millis() + 1000 + error,
        "deadline {deadline}, written at {before}"
    );
    let session = entry["Session"]
        .as_str()
        .expect("held by a TTL session")
        .to_owned();
    let info = raw.session(&session).await.unwrap();
    assert_eq!(info["Behavior"], "delete");
    assert_eq!(
        raw.get_raw(&full).await.unwrap(),
        "v",
        "plain value beside the metadata"
    );

    // Past the TTL (within `ttl_precision`: the handle's estimate of the server's clock may
    // be refined between the write and the read) our readers see nothing, while Consul
    // (session TTL ≥ 1 s, invalidated at twice that) still holds the entry for a while.
    let precision = store.capabilities().ttl_precision;
    tokio::time::sleep(Duration::from_millis(1000).saturating_sub(started.elapsed())).await;
    while store
        .get("k", ReadOptions::default())
        .await
        .unwrap()
        .is_some()
    {
        assert!(
            started.elapsed() < Duration::from_millis(1000) + precision,
            "still visible {:?} after a write with a 1 s TTL",
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        store
            .list("", ReadOptions::default())
            .await
            .unwrap()
            .is_empty()
    );
    let still_there = raw.entry(&full).await.is_some();
    let checked_at = started.elapsed();
    if checked_at < Duration::from_millis(1900) {
        assert!(
            still_there,
            "Consul had not deleted it yet at {checked_at:?}"
        );
    }
    // Consul deletes it itself when the session is invalidated.
    let limit = Instant::now() + Duration::from_secs(10);
    while raw.entry(&full).await.is_some() {
        assert!(Instant::now() < limit, "Consul never deleted the TTL key");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        raw.session(&session).await.is_none(),
        "the TTL session is gone"
    );
    Store::close(&store).await.unwrap();
}

#[tokio::test]
async fn put_without_ttl_detaches_the_session() {
    let p = unique("detach");
    let store = store_with_prefix(&p).await;
    let raw = Raw::new();
    store
        .put(
            "k",
            "short".into(),
            WriteOptions::with_ttl(Duration::from_secs(1)),
        )
        .await
        .unwrap();
    store
        .put("k", "forever".into(), WriteOptions::default())
        .await
        .unwrap();
    let entry = raw.entry(&format!("{p}/k")).await.unwrap();
    assert!(entry["Session"].is_null());
    assert_eq!(entry["Flags"], 0);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        store
            .get("k", ReadOptions::default())
            .await
            .unwrap()
            .unwrap()
            .value,
        "forever",
        "the old TTL session did not delete the permanent value"
    );
    store.delete_tree("").await.unwrap();
    Store::close(&store).await.unwrap();
}

#[tokio::test]
async fn overwriting_a_held_lock_key_loses_the_lock_and_keeps_the_value() {
    let p = unique("lock-overwrite");
    let holder = store_with_prefix(&p).await;
    let other = store_with_prefix(&p).await;
    let raw = Raw::new();
    let mut lock = holder
        .new_lock(
            "l",
            LockOptions::default()
                .value("mine")
                .ttl(Duration::from_secs(2)),
        )
        .await
        .unwrap();
    let lease = lock.lock().await.unwrap();
    let entry = raw.entry(&format!("{p}/l")).await.unwrap();
    let session = entry["Session"].as_str().unwrap().to_owned();
    assert_eq!(raw.session(&session).await.unwrap()["Behavior"], "delete");
    assert_eq!(raw.session(&session).await.unwrap()["LockDelay"], 0);
    assert_eq!(
        lease.fencing_token(),
        entry["ModifyIndex"].as_u64().unwrap()
    );

    other
        .put("l", "theirs".into(), WriteOptions::default())
        .await
        .unwrap();
    let state = tokio::time::timeout(Duration::from_secs(3), lease.lost())
        .await
        .unwrap();
    assert_eq!(state, LockState::Lost);
    assert!(matches!(lock.unlock().await, Err(Error::LockLost { .. })));
    // The release destroyed the holder's session, which no longer held the key.
    assert_eq!(
        other
            .get("l", ReadOptions::default())
            .await
            .unwrap()
            .unwrap()
            .value,
        "theirs"
    );
    other.delete_tree("").await.unwrap();
    Store::close(&holder).await.unwrap();
    Store::close(&other).await.unwrap();
}

#[tokio::test]
async fn a_dead_holder_loses_the_key_within_its_ttl() {
    // A holder that stops renewing: simulated by a session made like ours and never renewed.
    let p = unique("dead-holder");
    let store = store_with_prefix(&p).await;
    let http = reqwest::Client::new();
    let base = address();
    let created: Json = http
        .put(format!("{base}/v1/session/create"))
        .body(r#"{"TTL":"1s","Behavior":"delete","LockDelay":"0s","NodeChecks":[]}"#)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = created["ID"].as_str().unwrap();
    let acquired: bool = http
        .put(format!("{base}/v1/kv/{p}/l?acquire={id}"))
        .body("dead")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(acquired);
    let started = Instant::now();
    let mut lock = store
        .new_lock("l", LockOptions::default().ttl(Duration::from_secs(2)))
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(4), lock.lock())
        .await
        .expect("the dead holder's key vanished")
        .unwrap();
    assert!(
        started.elapsed() <= Duration::from_millis(2700),
        "{:?}",
        started.elapsed()
    );
    lock.unlock().await.unwrap();
    Store::close(&store).await.unwrap();
}

#[tokio::test]
async fn value_size_limit() {
    let p = unique("limit");
    let store = store_with_prefix(&p).await;
    assert_eq!(store.capabilities().max_value_len, MAX_VALUE_LEN);
    let at_limit = Bytes::from(vec![7u8; MAX_VALUE_LEN]);
    store
        .put(
            "big",
            at_limit.clone(),
            WriteOptions::with_ttl(Duration::from_secs(30)),
        )
        .await
        .unwrap();
    let pair = store
        .get("big", ReadOptions::default())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(pair.value, at_limit);
    let swapped = store
        .atomic_put(
            "big",
            at_limit.clone(),
            Some(&pair),
            WriteOptions::default(),
        )
        .await
        .unwrap();
    assert!(swapped.last_index > pair.last_index);
    // The worst case for the transaction's size: the longest key, every byte escaped in
    // JSON, over an existing TTL key (condition + unlock + lock: the key three times).
    let long_key = "\"".repeat(store.capabilities().max_key_len);
    for ttl in [Duration::from_secs(30), Duration::from_secs(31)] {
        store
            .put(&long_key, at_limit.clone(), WriteOptions::with_ttl(ttl))
            .await
            .unwrap();
    }
    store
        .put(&long_key, at_limit.clone(), WriteOptions::default())
        .await
        .unwrap();
    assert_eq!(
        store
            .get(&long_key, ReadOptions::default())
            .await
            .unwrap()
            .unwrap()
            .value,
        at_limit
    );
    let over = Bytes::from(vec![7u8; MAX_VALUE_LEN + 1]);
    assert!(matches!(
        store.put("big2", over, WriteOptions::default()).await,
        Err(Error::ValueTooLarge { .. })
    ));
    // Consul itself takes up to 512 KiB through the plain KV endpoint: such values, written
    // by other clients, are read in full.
    let raw = Raw::new();
    let huge = vec![1u8; 512 * 1024];
    assert!(raw.put_raw(&format!("{p}/huge"), huge.clone()).await);
    assert_eq!(
        store
            .get("huge", ReadOptions::default())
            .await
            .unwrap()
            .unwrap()
            .value
            .len(),
        huge.len()
    );
    store.delete_tree("").await.unwrap();
    Store::close(&store).await.unwrap();
}

#[tokio::test]
async fn dead_endpoint_is_unavailable_quickly_and_failover_works() {
    let started = Instant::now();
    let config = Config::builder()
        .endpoint("http://127.0.0.1:1")
        .connect_timeout(Duration::from_millis(500))
        .build()
        .unwrap();
    let error = ConsulStore::connect(config).await.unwrap_err();
    assert!(matches!(error, Error::Unavailable { .. }), "{error:?}");
    assert!(started.elapsed() < Duration::from_secs(2));

    // A black-holed address (nothing answers the SYN) times out at the connect timeout.
    let started = Instant::now();
    let config = Config::builder()
        .endpoint("http://10.255.255.1:8500")
        .connect_timeout(Duration::from_millis(300))
        .request_timeout(Duration::from_millis(600))
        .build()
        .unwrap();
    let error = ConsulStore::connect(config).await.unwrap_err();
    assert!(error.is_transient(), "{error:?}");
    assert!(started.elapsed() < Duration::from_secs(3));

    let config = Config::builder()
        .endpoint("http://127.0.0.1:1")
        .endpoint(address())
        .build()
        .unwrap();
    let store = ConsulStore::connect(config).await.unwrap();
    let k = format!("{}/k", unique("failover"));
    store
        .put(&k, "v".into(), WriteOptions::default())
        .await
        .unwrap();
    assert!(store.delete(&k).await.unwrap());
    Store::close(&store).await.unwrap();
}

#[tokio::test]
async fn a_server_error_is_typed_not_a_panic() {
    // An unknown datacenter makes Consul answer 500 "No path to datacenter" to every call.
    let config = Config::builder()
        .endpoint(address())
        .datacenter("no-such-dc")
        .build()
        .unwrap();
    let error = ConsulStore::connect(config).await.unwrap_err();
    assert!(matches!(error, Error::Unavailable { .. }), "{error:?}");
    assert!(
        error.to_string().contains("No path to datacenter"),
        "{error}"
    );
}

#[tokio::test]
async fn the_acl_token_is_sent_with_every_request() {
    // The dev agent runs without ACLs (any token is accepted), so check the header itself:
    // a one-shot listener records the first request and answers like /v1/status/leader.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        let mut buffer = vec![0u8; 4096];
        let n = socket.read(&mut buffer).await.unwrap();
        let body = "\"127.0.0.1:8300\"";
        let reply = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        socket.write_all(reply.as_bytes()).await.unwrap();
        String::from_utf8_lossy(&buffer[..n]).to_string()
    });
    let config = Config::from_url(&format!(
        "consul://127.0.0.1:{port}?token=s3cr3t-token&session_ttl_min=1s"
    ))
    .unwrap();
    let store = ConsulStore::connect(config).await.unwrap();
    let request = server.await.unwrap().to_ascii_lowercase();
    assert!(request.starts_with("get /v1/status/leader"), "{request}");
    assert!(
        request.contains("x-consul-token: s3cr3t-token"),
        "{request}"
    );
    Store::close(&store).await.unwrap();
}

#[tokio::test]
async fn background_tasks_end_with_their_owners_and_on_close() {
    let p = unique("tasks");
    let store = store_with_prefix(&p).await;
    assert_eq!(store.background_tasks(), 0);
    let watch = store.watch("k", ReadOptions::default()).await.unwrap();
    let tree = store.watch_tree("", ReadOptions::default()).await.unwrap();
    let mut lock = store
        .new_lock("l", LockOptions::default().ttl(Duration::from_secs(2)))
        .await
        .unwrap();
    lock.lock().await.unwrap();
    assert_eq!(
        store.background_tasks(),
        3,
        "two watch loops and one renewal"
    );
    // The watches sit in 10 s blocking queries: dropping them must not wait those out.
    drop(watch);
    drop(tree);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(store.background_tasks(), 1);
    drop(lock);
    let limit = Instant::now() + Duration::from_secs(2);
    while store.background_tasks() > 0 {
        assert!(Instant::now() < limit, "renewal survived its lock");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        store.get("l", ReadOptions::default()).await.unwrap(),
        None,
        "dropped lock released"
    );

    let mut watch = store.watch("k", ReadOptions::default()).await.unwrap();
    assert_eq!(watch.next().await.unwrap().unwrap(), None);
    let mut lock = store
        .new_lock("l", LockOptions::default().ttl(Duration::from_secs(2)))
        .await
        .unwrap();
    lock.lock().await.unwrap();
    assert_eq!(store.background_tasks(), 2);
    let started = Instant::now();
    Store::close(&store).await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(store.background_tasks(), 0);
    assert!(matches!(watch.next().await, Some(Err(Error::Closed))));
    let other = store_with_prefix(&p).await;
    assert_eq!(
        other.get("l", ReadOptions::default()).await.unwrap(),
        None,
        "close released the lock"
    );
    assert!(matches!(
        store.get("k", ReadOptions::default()).await,
        Err(Error::Closed)
    ));
    Store::close(&other).await.unwrap();
}

#[tokio::test]
async fn delete_tree_is_one_transaction() {
    let p = unique("tree");
    let store = store_with_prefix(&p).await;
    for k in ["d", "d/a", "d/b/c", "dx"] {
        store
            .put(k, "v".into(), WriteOptions::default())
            .await
            .unwrap();
    }
    let mut tree = store.watch_tree("", ReadOptions::default()).await.unwrap();
    assert_eq!(tree.next().await.unwrap().unwrap().len(), 4);
    store.delete_tree("d").await.unwrap();
    let after: Vec<String> = tree
        .next()
        .await
        .unwrap()
        .unwrap()
        .into_iter()
        .map(|p| p.key)
        .collect();
    assert_eq!(after, vec!["dx"], "one snapshot: every key went at once");
    store.delete_tree("").await.unwrap();
    Store::close(&store).await.unwrap();
}

/// `delete_tree(dir)` deletes exactly what `list(dir)` shows, plus `dir`: keys that other
/// programs wrote under it and that break the key rules (`list` skips them) stay, next to
/// valid keys, TTL keys and a held lock's key, which go; in one transaction, since the keys
/// fit in one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_tree_deletes_what_list_shows_and_leaves_what_it_hides() {
    let p = unique("tree-foreign");
    let store = store_with_prefix(&p).await;
    let raw = Raw::new();
    for k in ["d", "d/a", "d/a/b", "d/a/b/c", "d/c/d", "d/z", "dx", "d!"] {
        store
            .put(k, "v".into(), WriteOptions::default())
            .await
            .unwrap();
    }
    store
        .put(
            "d/ttl",
            "t".into(),
            WriteOptions::with_ttl(Duration::from_secs(60)),
        )
        .await
        .unwrap();
    let mut lock = store
        .new_lock(
            "d/lock",
            LockOptions::default().ttl(Duration::from_secs(10)),
        )
        .await
        .unwrap();
    let lease = lock.lock().await.unwrap();
    let foreign: Vec<String> = [
        "d/",
        "d//x",
        "d/a/",
        "d/a//b",
        "d/__kvforeign",
        "d/c/__kv",
        "d/a/b/__kvlock/1",
        "d/./x",
        "d/tab\tkey",
        "d/nbsp\u{a0}key",
    ]
    .iter()
    .map(|k| format!("{p}/{k}"))
    .chain([format!("{p}/d/{}", "x".repeat(1100))])
    .collect();
    raw.set_raw(&foreign).await;
    // Raw keys that are valid are ordinary keys: listed, and deleted.
    raw.set_raw(&[format!("{p}/d/raw/valid")]).await;
    let listed: Vec<String> = store
        .list("d", ReadOptions::default())
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.key)
        .collect();
    assert_eq!(
        listed,
        [
            "d/a",
            "d/a/b",
            "d/a/b/c",
            "d/c/d",
            "d/lock",
            "d/raw/valid",
            "d/ttl",
            "d/z"
        ]
    );

    let mut tree = store.watch_tree("", ReadOptions::default()).await.unwrap();
    assert_eq!(tree.next().await.unwrap().unwrap().len(), 11);
    store.delete_tree("d").await.unwrap();
    let after: Vec<String> = tree
        .next()
        .await
        .unwrap()
        .unwrap()
        .into_iter()
        .map(|p| p.key)
        .collect();
    assert_eq!(
        after,
        ["d!", "dx"],
        "one snapshot: every listed key went at once"
    );
    assert!(
        store
            .list("d", ReadOptions::default())
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(store.get("d", ReadOptions::default()).await.unwrap(), None);
    let state = tokio::time::timeout(Duration::from_secs(5), lease.lost())
        .await
        .expect("the lock's key was deleted: lost");
    assert_eq!(state, LockState::Lost);
    // What is left is exactly the foreign keys, untouched, and the siblings.
    let mut expected = foreign.clone();
    expected.extend([format!("{p}/d!"), format!("{p}/dx")]);
    expected.sort();
    assert_eq!(raw.keys(&format!("{p}/")).await, expected);
    assert_eq!(raw.get_raw(&format!("{p}/d/")).await.unwrap(), "foreign");
    assert_eq!(
        raw.get_raw(&format!("{p}/d/__kvforeign")).await.unwrap(),
        "foreign"
    );

    // The whole namespace: the same.
    store.delete_tree("").await.unwrap();
    assert!(
        store
            .list("", ReadOptions::default())
            .await
            .unwrap()
            .is_empty()
    );
    let mut foreign_sorted = foreign.clone();
    foreign_sorted.sort();
    assert_eq!(raw.keys(&format!("{p}/")).await, foreign_sorted);
    assert_eq!(store.state_losses(), 0);
    drop(tree);
    drop(lock);
    Store::close(&store).await.unwrap();
    raw.delete_prefix(&format!("{p}/")).await;
}

/// More deletions than one transaction holds (Consul's limit is 64 operations): 70 keys,
/// each next to a hidden key, take 71 deletions by name, sent in two transactions.
#[tokio::test]
async fn delete_tree_beyond_one_transaction_still_leaves_hidden_keys() {
    const NODES: usize = 70;
    let p = unique("tree-foreign-large");
    let store = store_with_prefix(&p).await;
    let raw = Raw::new();
    let valid: Vec<String> = (0..NODES).map(|i| format!("{p}/m/{i:02}/k")).collect();
    let hidden: Vec<String> = (0..NODES).map(|i| format!("{p}/m/{i:02}//h")).collect();
    raw.set_raw(&valid).await;
    raw.set_raw(&hidden).await;
    store
        .put("m", "dir".into(), WriteOptions::default())
        .await
        .unwrap();
    assert_eq!(
        store.list("m", ReadOptions::default()).await.unwrap().len(),
        NODES
    );
    store.delete_tree("m").await.unwrap();
    assert!(
        store
            .list("", ReadOptions::default())
            .await
            .unwrap()
            .is_empty()
    );
    let mut hidden = hidden;
    hidden.sort();
    assert_eq!(raw.keys(&format!("{p}/")).await, hidden);
    Store::close(&store).await.unwrap();
    raw.delete_prefix(&format!("{p}/")).await;
}

#[tokio::test]
async fn large_trees_list_and_delete_in_one_call() {
    const KEYS: usize = 400;
    let p = unique("large-tree");
    let store = store_with_prefix(&p).await;
    let started = Instant::now();
    futures::stream::iter(0..KEYS)
        .map(|i| {
            let store = &store;
            async move {
                store
                    .put(
                        &format!("t/{:03}/{i}", i % 17),
                        format!("{i}").into(),
                        WriteOptions::default(),
                    )
                    .await
                    .unwrap()
            }
        })
        .buffer_unordered(16)
        .collect::<Vec<()>>()
        .await;
    let wrote = started.elapsed();
    let listed = store.list("t", ReadOptions::default()).await.unwrap();
    assert_eq!(listed.len(), KEYS);
    assert!(listed.windows(2).all(|w| w[0].key < w[1].key), "sorted");
    let started = Instant::now();
    store.delete_tree("t").await.unwrap();
    let deleted = started.elapsed();
    assert!(
        store
            .list("", ReadOptions::default())
            .await
            .unwrap()
            .is_empty()
    );
    eprintln!("{KEYS} puts: {wrote:?}; delete_tree of {KEYS} keys in one transaction: {deleted:?}");
    Store::close(&store).await.unwrap();
}

/// Writes one raw entry through `/v1/txn` with these `Flags`; returns its `ModifyIndex`.
async fn set_raw_with_flags(key: &str, value: &[u8], flags: u64) -> u64 {
    use base64::Engine;
    let op = serde_json::json!([{ "KV": {
        "Verb": "set",
        "Key": key,
        "Value": base64::engine::general_purpose::STANDARD.encode(value),
        "Flags": flags,
    }}]);
    let r: Json = reqwest::Client::new()
        .put(format!("{}/v1/txn", address()))
        .json(&op)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    r["Results"][0]["KV"]["ModifyIndex"].as_u64().unwrap()
}

/// A key written by a transaction is stored exactly as `put` stores it: the plain value, the
/// same `Flags` (0, or the tagged deadline), a TTL key held by its own `kv-rs ttl <key>`
/// session with `Behavior=delete`, a plain key detached from any session; the returned
/// `last_index` is the entry's `ModifyIndex`, and rewriting the same value still raises it.
#[tokio::test]
async fn transaction_writes_keys_exactly_like_put() {
    let p = unique("txn-layout");
    let store = store_with_prefix(&p).await;
    let raw = Raw::new();
    let ttl = WriteOptions::with_ttl(Duration::from_secs(30));
    store
        .put("put/plain", "v".into(), WriteOptions::default())
        .await
        .unwrap();
    store.put("put/ttl", "v".into(), ttl.clone()).await.unwrap();
    let pairs = store
        .transaction(
            Transaction::new()
                .put("txn/plain", "v", WriteOptions::default())
                .put("txn/ttl", "v", ttl.clone()),
        )
        .await
        .unwrap();
    for (pair, by_put) in pairs.iter().zip(["put/plain", "put/ttl"]) {
        let entry = raw.entry(&format!("{p}/{}", pair.key)).await.unwrap();
        let reference = raw.entry(&format!("{p}/{by_put}")).await.unwrap();
        assert_eq!(
            raw.get_raw(&format!("{p}/{}", pair.key)).await.unwrap(),
            "v"
        );
        assert_eq!(pair.last_index, entry["ModifyIndex"].as_u64().unwrap());
        let flags = entry["Flags"].as_u64().unwrap();
        let reference_flags = reference["Flags"].as_u64().unwrap();
        assert_eq!(flags >> 47, reference_flags >> 47, "same Flags layout");
        match (entry["Session"].as_str(), reference["Session"].as_str()) {
            (None, None) => assert_eq!(flags, 0),
            (Some(session), Some(reference_session)) => {
                let info = raw.session(session).await.unwrap();
                let reference_info = raw.session(reference_session).await.unwrap();
                assert_eq!(info["Name"], format!("kv-rs ttl {}", pair.key));
                assert_eq!(info["Behavior"], reference_info["Behavior"]);
                assert_eq!(info["TTL"], reference_info["TTL"]);
                assert_eq!(info["LockDelay"], reference_info["LockDelay"]);
                // Both deadlines about 30 s from now.
                let diff = (flags & ((1 << 47) - 1)).abs_diff(reference_flags & ((1 << 47) - 1));
                assert!(diff < 2000, "deadlines {diff} ms apart");
            }
            other => panic!("a put and a transaction's put differ: {other:?}"),
        }
    }

    // The same value again: Consul would skip the write, the rewrite marker makes it one.
    let again = store
        .transaction(Transaction::new().put("txn/plain", "v", WriteOptions::default()))
        .await
        .unwrap();
    assert!(again[0].last_index > pairs[0].last_index);
    let entry = raw.entry(&format!("{p}/txn/plain")).await.unwrap();
    assert_eq!(again[0].last_index, entry["ModifyIndex"].as_u64().unwrap());
    assert_eq!(
        store
            .get("txn/plain", ReadOptions::default())
            .await
            .unwrap()
            .unwrap(),
        again[0]
    );

    // Without a TTL, the TTL key becomes plain and permanent: detached from its session.
    let session = raw.entry(&format!("{p}/txn/ttl")).await.unwrap()["Session"]
        .as_str()
        .unwrap()
        .to_owned();
    store
        .transaction(Transaction::new().put("txn/ttl", "kept", WriteOptions::default()))
        .await
        .unwrap();
    let entry = raw.entry(&format!("{p}/txn/ttl")).await.unwrap();
    assert!(entry["Session"].is_null());
    assert_eq!(entry["Flags"], 0);
    // Destroying the old session (as its expiry would) leaves the key.
    reqwest::Client::new()
        .put(format!("{}/v1/session/destroy/{session}", address()))
        .send()
        .await
        .unwrap();
    assert_eq!(raw.get_raw(&format!("{p}/txn/ttl")).await.unwrap(), "kept");

    // A TTL put over a TTL key: the old session lets go, a new one holds it.
    store
        .put("put/ttl", "again".into(), ttl.clone())
        .await
        .unwrap();
    let old = raw.entry(&format!("{p}/put/ttl")).await.unwrap()["Session"]
        .as_str()
        .unwrap()
        .to_owned();
    store
        .transaction(Transaction::new().put("put/ttl", "new", ttl))
        .await
        .unwrap();
    let entry = raw.entry(&format!("{p}/put/ttl")).await.unwrap();
    let new = entry["Session"].as_str().unwrap();
    assert_ne!(new, old);
    assert_eq!(entry["Flags"].as_u64().unwrap() >> 48, 0x4B56);
    store.delete_tree("").await.unwrap();
    Store::close(&store).await.unwrap();
}

/// An entry past its deadline that Consul has not removed yet counts as absent for
/// conditions, exactly as for reads: `absent` holds, `exists` fails, and a lock key in that
/// state is a lost lock.
#[tokio::test]
async fn expired_entries_count_as_absent_in_conditions() {
    let p = unique("txn-expired");
    let store = store_with_prefix(&p).await;
    let expired = (0x4B56u64 << 48) | 1_000; // a deadline in 1970
    let index = set_raw_with_flags(&format!("{p}/gone"), b"old", expired).await;
    let lock_index = set_raw_with_flags(&format!("{p}/lock"), b"", expired).await;
    kv_conformance::support::assert_condition_failed(
        store
            .transaction(Transaction::new().when(Condition::exists("gone")))
            .await,
        "an expired key fails Exists",
        0,
        "gone",
        ConditionFailure::KeyNotFound,
    );
    kv_conformance::support::assert_condition_failed(
        store
            .transaction(
                Transaction::new()
                    .when(Condition::LockHeld {
                        key: "lock".into(),
                        fencing_token: lock_index,
                    })
                    .put("gone", "fenced", WriteOptions::default()),
            )
            .await,
        "a lock past its deadline is lost",
        0,
        "lock",
        ConditionFailure::LockLost,
    );
    let pairs = store
        .transaction(Transaction::new().when(Condition::absent("gone")).put(
            "gone",
            "new",
            WriteOptions::default(),
        ))
        .await
        .unwrap();
    assert!(pairs[0].last_index > index);
    assert_eq!(
        Raw::new().get_raw(&format!("{p}/gone")).await.unwrap(),
        "new"
    );
    store.delete_tree("").await.unwrap();
    Store::close(&store).await.unwrap();
}

/// The declared limit holds in the worst case: every item a TTL put over a key held by
/// another session is two Consul operations, so `MAX_TRANSACTION_OPS` of them are exactly
/// Consul's 64. One more is refused before anything is sent.
#[tokio::test]
async fn the_transaction_limit_is_safe_in_the_worst_case() {
    let p = unique("txn-limit");
    let store = store_with_prefix(&p).await;
    let raw = Raw::new();
    assert_eq!(
        store.capabilities().max_transaction_ops,
        MAX_TRANSACTION_OPS
    );
    assert_eq!(MAX_TRANSACTION_OPS * 2, 64, "Consul's maxTxnOps");
    let ttl = WriteOptions::with_ttl(Duration::from_secs(30));
    let keys: Vec<String> = (0..MAX_TRANSACTION_OPS)
        .map(|i| format!("k{i:02}"))
        .collect();
    let first = keys.iter().fold(Transaction::new(), |t, k| {
        t.put(k.as_str(), "first", ttl.clone())
    });
    store.transaction(first).await.unwrap();
    let sessions = |entries: Vec<Option<Json>>| -> Vec<String> {
        entries
            .into_iter()
            .map(|e| e.unwrap()["Session"].as_str().unwrap().to_owned())
            .collect()
    };
    let mut before = Vec::new();
    for k in &keys {
        before.push(raw.entry(&format!("{p}/{k}")).await);
    }
    let before = sessions(before);
    let second = keys.iter().fold(Transaction::new(), |t, k| {
        t.put(k.as_str(), "second", ttl.clone())
    });
    let pairs = store
        .transaction(second)
        .await
        .expect("64 Consul operations fit");
    assert_eq!(pairs.len(), MAX_TRANSACTION_OPS);
    let mut after = Vec::new();
    for k in &keys {
        after.push(raw.entry(&format!("{p}/{k}")).await);
    }
    let after = sessions(after);
    assert!(
        before.iter().zip(&after).all(|(b, a)| a != b),
        "new sessions"
    );

    let over = keys
        .iter()
        .fold(Transaction::new(), |t, k| {
            t.put(k.as_str(), "third", WriteOptions::default())
        })
        .delete("one-more");
    assert!(matches!(
        store.transaction(over).await,
        Err(Error::InvalidOption(_))
    ));
    for k in &keys {
        assert_eq!(raw.get_raw(&format!("{p}/{k}")).await.unwrap(), "second");
    }
    store.delete_tree("").await.unwrap();
    Store::close(&store).await.unwrap();
}

/// Values travel in base64 inside one `/v1/txn` body, which Consul caps at 512 KiB
/// (`txn_max_req_len`): values that cannot fit together are refused before anything is sent,
/// one value of `MAX_VALUE_LEN` fits.
#[tokio::test]
async fn a_transaction_larger_than_consul_accepts_is_refused_before_sending() {
    let p = unique("txn-body");
    let store = store_with_prefix(&p).await;
    let big = Bytes::from(vec![7u8; MAX_VALUE_LEN]);
    let result = store
        .transaction(
            Transaction::new()
                .put("a", big.clone(), WriteOptions::default())
                .put("b", big.clone(), WriteOptions::default()),
        )
        .await;
    assert!(matches!(result, Err(Error::InvalidOption(_))), "{result:?}");
    assert!(
        store
            .list("", ReadOptions::default())
            .await
            .unwrap()
            .is_empty()
    );
    let pairs = store
        .transaction(Transaction::new().when(Condition::absent("a")).put(
            "a",
            big.clone(),
            WriteOptions::with_ttl(Duration::from_secs(30)),
        ))
        .await
        .unwrap();
    assert_eq!(pairs[0].value.len(), MAX_VALUE_LEN);
    assert_eq!(
        Raw::new().get_raw(&format!("{p}/a")).await.unwrap(),
        big,
        "read back in full"
    );
    store.delete_tree("").await.unwrap();
    Store::close(&store).await.unwrap();
}

/// `LockHeld` compares the lock key's `ModifyIndex`, which renewals leave alone: a guarded
/// write works after several renewals, and is refused once the lock's session ends (as its
/// expiry would end it: Consul deletes the key) and after another client acquired it.
#[tokio::test]
async fn guarded_writes_survive_renewals_and_stop_when_the_session_ends() {
    let p = unique("txn-fenced");
    let a = store_with_prefix(&p).await;
    let b = store_with_prefix(&p).await;
    let raw = Raw::new();
    let options = LockOptions::default().ttl(Duration::from_secs(2));
    let mut lock_a = a.new_lock("leader", options.clone()).await.unwrap();
    let lease_a = lock_a.lock().await.unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await; // three renewals
    let entry = raw.entry(&format!("{p}/leader")).await.unwrap();
    assert_eq!(
        entry["ModifyIndex"].as_u64().unwrap(),
        lease_a.fencing_token()
    );
    lease_a
        .guarded_put(&a, "job", "by a", WriteOptions::default())
        .await
        .expect("still held after renewals");

    // The session ends (expiry, or an operator destroys it): Consul deletes the lock key.
    let session = entry["Session"].as_str().unwrap();
    reqwest::Client::new()
        .put(format!("{}/v1/session/destroy/{session}", address()))
        .send()
        .await
        .unwrap();
    assert!(matches!(
        lease_a
            .guarded_put(&a, "job", "by a, stale", WriteOptions::default())
            .await,
        Err(Error::LockLost { .. })
    ));
    let mut lock_b = b.new_lock("leader", options).await.unwrap();
    let lease_b = tokio::time::timeout(Duration::from_secs(5), lock_b.lock())
        .await
        .unwrap()
        .unwrap();
    assert!(lease_b.fencing_token() > lease_a.fencing_token());
    assert!(matches!(
        lease_a
            .guarded_put(&a, "job", "by a, stale", WriteOptions::default())
            .await,
        Err(Error::LockLost { .. })
    ));
    assert_eq!(raw.get_raw(&format!("{p}/job")).await.unwrap(), "by a");
    lease_b
        .guarded_put(&b, "job", "by b", WriteOptions::default())
        .await
        .unwrap();
    assert_eq!(raw.get_raw(&format!("{p}/job")).await.unwrap(), "by b");
    lock_b.unlock().await.unwrap();
    let _ = lock_a.unlock().await;
    a.delete_tree("").await.unwrap();
    Store::close(&a).await.unwrap();
    Store::close(&b).await.unwrap();
}

/// `Flags` with a deadline in 1970.
const EXPIRED: u64 = (0x4B56u64 << 48) | 1_000;

/// Holds `key` with a fresh 60 s session (`Behavior=delete`, as this crate's TTL sessions),
/// writing `Flags` as given.
async fn lock_raw_with_flags(key: &str, flags: u64) {
    let http = reqwest::Client::new();
    let session: Json = http
        .put(format!("{}/v1/session/create", address()))
        .json(&serde_json::json!({ "TTL": "60s", "Behavior": "delete", "LockDelay": "0s" }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let acquired: bool = http
        .put(format!(
            "{}/v1/kv/{}?acquire={}&flags={flags}",
            address(),
            encode(key),
            session["ID"].as_str().unwrap()
        ))
        .body("old")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(acquired);
}

/// A key's state for [`transaction_fast_path_agrees_with_the_contract_in_every_state`].
#[derive(Debug, Clone, Copy, PartialEq)]
enum KeyState {
    Absent,
    Present,
    /// A TTL key past its deadline that its session still holds (as between the deadline and
    /// the session's end, which comes up to twice the session TTL later).
    TtlExpired,
    /// Written by this handle, then overwritten by another client with a past deadline and
    /// no session: the only expired entry no session check can see.
    ForeignExpired,
    /// Held by another handle's lock.
    Locked,
    /// A live TTL key, held by its session.
    TtlLive,
}

/// Every condition kind, in every key state, with a put of the same key: the outcome is what
/// `Condition::evaluate` gives on the state readers see (an expired entry is absent), whether
/// the one-request fast path or the read-then-write path decided. A committed put leaves a
/// plain value that `get` returns with the reported index; a refused one leaves the entry
/// untouched. The handle reads every key first, so the fast path knows every version it may
/// trust and is tried wherever it can be.
#[tokio::test]
async fn transaction_fast_path_agrees_with_the_contract_in_every_state() {
    let p = unique("txn-fast-states");
    let store = store_with_prefix(&p).await;
    let holder = store_with_prefix(&p).await;
    let raw = Raw::new();
    let states = [
        KeyState::Absent,
        KeyState::Present,
        KeyState::TtlExpired,
        KeyState::ForeignExpired,
        KeyState::Locked,
        KeyState::TtlLive,
    ];
    let kinds = ["absent", "exists", "index", "stale-index", "lock-held"];
    let mut locks = Vec::new();
    let mut cases = Vec::new();
    for state in states {
        for kind in kinds {
            let key = format!("{state:?}-{kind}");
            match state {
                KeyState::Absent => {}
                KeyState::Present => store
                    .put(&key, "old".into(), WriteOptions::default())
                    .await
                    .unwrap(),
                KeyState::TtlExpired => lock_raw_with_flags(&format!("{p}/{key}"), EXPIRED).await,
                KeyState::ForeignExpired => {
                    store
                        .put(&key, "old".into(), WriteOptions::default())
                        .await
                        .unwrap();
                    // Noted by this handle as a version without deadline...
                    store.get(&key, ReadOptions::default()).await.unwrap();
                    // ...then replaced by an expired entry (a deadline in 1970).
                    set_raw_with_flags(&format!("{p}/{key}"), b"old", EXPIRED).await;
                }
                KeyState::Locked => {
                    let mut lock = holder.new_lock(&key, LockOptions::default()).await.unwrap();
                    lock.lock().await.unwrap();
                    locks.push(lock);
                }
                KeyState::TtlLive => store
                    .put(
                        &key,
                        "old".into(),
                        WriteOptions::with_ttl(Duration::from_secs(60)),
                    )
                    .await
                    .unwrap(),
            }
            cases.push((state, kind, key));
        }
    }
    for (state, kind, key) in cases {
        let full = format!("{p}/{key}");
        let before = raw.entry(&full).await;
        let stored = before.as_ref().map(|e| e["ModifyIndex"].as_u64().unwrap());
        assert_eq!(
            stored.is_some(),
            state != KeyState::Absent,
            "{key}: {before:?}"
        );
        if state == KeyState::TtlExpired {
            assert!(
                before.as_ref().unwrap()["Session"].is_string(),
                "{key}: still held"
            );
        }
        let live = match state {
            KeyState::Absent | KeyState::TtlExpired | KeyState::ForeignExpired => None,
            _ => stored,
        };
        // What this handle reads (and so may note) before the transaction.
        let read = store.get(&key, ReadOptions::default()).await.unwrap();
        assert_eq!(read.map(|p| p.last_index), live, "{key}");
        let index = stored.unwrap_or(1);
        let condition = match kind {
            "absent" => Condition::absent(key.as_str()),
            "exists" => Condition::exists(key.as_str()),
            "index" => Condition::index_equals(key.as_str(), index),
            "stale-index" => Condition::index_equals(key.as_str(), index - 1),
            _ => Condition::LockHeld {
                key: key.clone(),
                fencing_token: index,
            },
        };
        let expected = condition.evaluate(live);
        let result = store
            .transaction(Transaction::new().when(condition).put(
                key.as_str(),
                "new",
                WriteOptions::default(),
            ))
            .await;
        match expected {
            None => {
                let pairs = result.unwrap_or_else(|e| panic!("{key}: {e:?}"));
                let got = store
                    .get(&key, ReadOptions::default())
                    .await
                    .unwrap()
                    .unwrap();
                assert_eq!(got, pairs[0], "{key}");
                assert_eq!(got.value, "new", "{key}");
                let entry = raw.entry(&full).await.unwrap();
                assert!(entry["Session"].is_null(), "{key}: a plain value now");
                let flags = entry["Flags"].as_u64().unwrap();
                assert_eq!(
                    flags & ((1 << 47) - 1),
                    0,
                    "{key}: no deadline in {flags:#x}"
                );
            }
            Some(reason) => {
                kv_conformance::support::assert_condition_failed(result, &key, 0, &key, reason);
                let after = raw.entry(&full).await;
                assert_eq!(after, before, "{key}: nothing written");
            }
        }
    }
    for mut lock in locks {
        let _ = lock.unlock().await;
    }
    store.delete_tree("").await.unwrap();
    Store::close(&store).await.unwrap();
    Store::close(&holder).await.unwrap();
}

/// The common transactions are ONE request: a create over absent keys, a swap pinned to the
/// pairs it returned, a swap pinned to what `get` read, a guarded write under this handle's
/// lock, and a check of conditions only. A swap on a stale index takes the read-then-write
/// path (at least two requests) and fails there.
#[tokio::test]
async fn common_transactions_are_one_request() {
    let p = unique("txn-fast-count");
    let store = store_with_prefix(&p).await;
    let sent = store.requests_sent();
    let pairs = store
        .transaction(
            Transaction::new()
                .when(Condition::absent("a"))
                .when(Condition::absent("b"))
                .put("a", "1", WriteOptions::default())
                .put("b", "1", WriteOptions::default()),
        )
        .await
        .unwrap();
    requests_of(&store, "create", sent, 1);

    let sent = store.requests_sent();
    let pairs = store
        .transaction(
            Transaction::new()
                .when(Condition::unchanged(&pairs[0]))
                .when(Condition::unchanged(&pairs[1]))
                .put("a", "2", WriteOptions::default())
                .put("b", "2", WriteOptions::default()),
        )
        .await
        .unwrap();
    requests_of(&store, "swap on returned pairs", sent, 1);

    // The same values again, twice: each write still raises both indexes (Consul skips a
    // write that changes nothing), in one request.
    let mut pairs = pairs;
    for round in 0..2 {
        let sent = store.requests_sent();
        let again = store
            .transaction(
                Transaction::new()
                    .when(Condition::unchanged(&pairs[0]))
                    .when(Condition::unchanged(&pairs[1]))
                    .put("a", "2", WriteOptions::default())
                    .put("b", "2", WriteOptions::default()),
            )
            .await
            .unwrap();
        requests_of(&store, "swap to the same values", sent, 1);
        for (new, old) in again.iter().zip(&pairs) {
            assert!(
                new.last_index > old.last_index,
                "round {round}: {new:?} after {old:?}"
            );
            let read = store.get(&new.key, ReadOptions::default()).await.unwrap();
            assert_eq!(read.as_ref(), Some(new));
        }
        pairs = again;
    }

    let read = store
        .get("a", ReadOptions::default())
        .await
        .unwrap()
        .unwrap();
    let sent = store.requests_sent();
    let swapped = store
        .transaction(
            Transaction::new()
                .when(Condition::unchanged(&read))
                .put("a", "3", WriteOptions::default())
                .delete("b"),
        )
        .await
        .unwrap();
    requests_of(&store, "swap on a read pair, with a delete", sent, 1);

    let mut lock = store
        .new_lock("leader", LockOptions::default())
        .await
        .unwrap();
    let lease = lock.lock().await.unwrap();
    // The lock's tasks (renewal, held-watch) send requests of their own: count the guarded
    // write on a second handle that has only read the lock's key.
    let writer = store_with_prefix(&p).await;
    let lease_read = writer
        .get("leader", ReadOptions::default())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(lease_read.last_index, lease.fencing_token());
    let sent = writer.requests_sent();
    lease
        .guarded_put(&writer, "job", "done", WriteOptions::default())
        .await
        .unwrap();
    requests_of(&writer, "guarded write", sent, 1);
    lock.unlock().await.unwrap();

    let sent = store.requests_sent();
    store
        .transaction(
            Transaction::new()
                .when(Condition::absent("c"))
                .when(Condition::unchanged(&swapped[0])),
        )
        .await
        .unwrap_or_else(|e| panic!("{e:?}"));
    requests_of(&store, "conditions only", sent, 1);

    let sent = store.requests_sent();
    let stale = store
        .transaction(
            Transaction::new()
                .when(Condition::unchanged(&pairs[1]))
                .put("b", "4", WriteOptions::default()),
        )
        .await;
    kv_conformance::support::assert_condition_failed(
        stale,
        "b was deleted",
        0,
        "b",
        ConditionFailure::KeyNotFound,
    );
    assert!(store.requests_sent() - sent >= 2);
    store.delete_tree("").await.unwrap();
    Store::close(&writer).await.unwrap();
    Store::close(&store).await.unwrap();
}

fn requests_of(store: &ConsulStore, what: &str, before: u64, expected: u64) {
    let sent = store.requests_sent() - before;
    assert_eq!(sent, expected, "{what}: {sent} requests");
}
