//! What only the Redis backend has: its storage layout (read back with a plain client), its
//! limits, its failure modes (dead endpoint, notifications switched off, a server restart under
//! a watch) and the life of its background tasks. Runs against `KV_TEST_REDIS_URL`; the tests
//! that need a server in a particular state start their own private `redis-server` on a free
//! port and stop it (by its pid) afterwards.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use fred::prelude::{ClientLike, HashesInterface, KeysInterface};
use futures::StreamExt;
use kv_core::{Error, KvPair, LockOptions, LockState, ReadOptions, Store, WriteOptions};
use kv_redis::{Config, RedisStore};
use rand::Rng;

fn url() -> String {
    std::env::var("KV_TEST_REDIS_URL").unwrap_or_else(|_| {
        panic!(
            "KV_TEST_REDIS_URL not set: run the README test command or `eval \"$(scripts/servers env)\"`"
        )
    })
}

fn unique(case: &str) -> String {
    let n: u64 = rand::rng().random();
    format!("redis-{case}-{n:016x}")
}

async fn store_with_prefix(prefix: &str) -> RedisStore {
    let config = Config::from_url(&url()).unwrap();
    let config = Config::builder()
        .endpoints(config.endpoints.clone())
        .namespace(prefix)
        .build()
        .unwrap();
    RedisStore::connect(config).await.expect("connect")
}

async fn next<S, T>(stream: &mut S, what: &str) -> T
where
    S: futures::Stream<Item = T> + Unpin,
{
    match tokio::time::timeout(Duration::from_secs(6), stream.next()).await {
        Ok(Some(item)) => item,
        Ok(None) => panic!("{what}: stream ended"),
        Err(_) => panic!("{what}: nothing within 6 s"),
    }
}

async fn eventually<F, Fut>(limit: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !check().await {
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A private redis-server on a free port, stopped (by pid) and cleaned up on drop.
struct PrivateServer {
    child: Child,
    port: u16,
    dir: PathBuf,
    notify: String,
}

impl PrivateServer {
    fn free_port() -> u16 {
        TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    async fn start(notify: &str) -> Self {
        let port = Self::free_port();
        let dir = std::env::temp_dir().join(unique("server"));
        std::fs::create_dir_all(&dir).unwrap();
        let child = match std::panic::catch_unwind(|| Self::spawn(port, &dir, notify)) {
            Ok(child) => child,
            Err(panic) => {
                let _ = std::fs::remove_dir_all(&dir);
                std::panic::resume_unwind(panic);
            }
        };
        let mut server = PrivateServer {
            child,
            port,
            dir,
            notify: notify.to_owned(),
        };
        server.wait_ready().await;
        server
    }

    /// A Sentinel (`redis-server --sentinel`) monitoring `primary` as `mymaster`.
    async fn start_sentinel(primary: u16) -> Self {
        let port = Self::free_port();
        let dir = std::env::temp_dir().join(unique("sentinel"));
        std::fs::create_dir_all(&dir).unwrap();
        let conf = dir.join("sentinel.conf");
        std::fs::write(
            &conf,
            format!(
                "port {port}\nbind 127.0.0.1\nsentinel monitor mymaster 127.0.0.1 {primary} 1\n\
                 sentinel down-after-milliseconds mymaster 1000\n"
            ),
        )
        .unwrap();
        let child = Command::new("redis-server")
            .arg(&conf)
            .args(["--sentinel", "--daemonize", "no"])
            .arg("--dir")
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (scripts/servers install redis)");
        let mut server = PrivateServer {
            child,
            port,
            dir,
            notify: String::new(),
        };
        server.wait_ready().await;
        server
    }

    fn spawn(port: u16, dir: &std::path::Path, notify: &str) -> Child {
        Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(dir)
            .args(["--notify-keyspace-events", notify])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (scripts/servers install redis)")
    }

    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "private redis-server did not start"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops the server and starts a fresh one (empty: no persistence) on the same port.
    async fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        tokio::time::sleep(Duration::from_millis(300)).await;
        self.child = Self::spawn(self.port, &self.dir, &self.notify);
        self.wait_ready().await;
    }

    /// Sends `signal` (`STOP`, `CONT`) to the server process: a stopped server keeps its
    /// connections and accepts new ones, but answers nothing.
    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("kill(1)");
        assert!(status.success(), "kill -{signal} failed");
    }

    fn config(&self) -> Config {
        Config::builder()
            .endpoint(format!("127.0.0.1:{}", self.port))
            .connect_timeout(Duration::from_secs(2))
            .request_timeout(Duration::from_secs(2))
            .build()
            .unwrap()
    }
}

impl Drop for PrivateServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The metadata record at `meta_key`, split into its fields: index, digest, and the lock
/// owner if any. Panics unless it is the string form `<index> <sha1>[ <owner>]`.
async fn meta_record(raw: &fred::clients::Client, meta_key: &str) -> (u64, String, Option<String>) {
    let record: String = raw.get(meta_key).await.unwrap();
    let fields: Vec<&str> = record.split(' ').collect();
    assert!(
        (2..=3).contains(&fields.len()),
        "a metadata record has 2 or 3 fields: {record:?}"
    );
    assert_eq!(fields[1].len(), 40, "a SHA-1 in hex: {record:?}");
    assert!(
        fields[1].bytes().all(|b| b.is_ascii_hexdigit()),
        "{record:?}"
    );
    (
        fields[0].parse().unwrap(),
        fields[1].to_owned(),
        fields.get(2).map(|o| (*o).to_owned()),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_clients_read_the_plain_layout() {
    let ns = unique("layout");
    let store = store_with_prefix(&ns).await;
    let raw = store.client().clone();
    let value = Bytes::from_static(b"\x00\xffbinary \xc3\x28 value\n");
    store
        .put("a/b", value.clone(), WriteOptions::default())
        .await
        .unwrap();
    let pair = store
        .get("a/b", ReadOptions::default())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        pair.key, "a/b",
        "keys are reported relative to the namespace"
    );

    // The value is exactly the bytes, at the plain key.
    let value_key = format!("{ns}/a/b");
    assert_eq!(store.value_key("a/b"), value_key);
    let plain: Bytes = raw.get(&value_key).await.unwrap();
    assert_eq!(plain, value);
    // The server's own CLI sees the same bytes (`redis-cli GET`).
    let cli = Command::new("redis-cli")
        .args(["-u", &url(), "--no-raw", "GET", &value_key])
        .output()
        .expect("redis-cli");
    assert!(cli.status.success());
    assert_eq!(
        String::from_utf8_lossy(&cli.stdout).trim(),
        "\"\\x00\\xffbinary \\xc3( value\\n\""
    );
    // The version lives beside it, in the hash-tagged metadata key: one string record.
    let meta_key = format!("{ns}/__kv:meta:{{{ns}/a/b}}");
    assert_eq!(store.meta_key("a/b"), meta_key);
    let (index, digest, owner) = meta_record(&raw, &meta_key).await;
    assert_eq!((index, owner), (pair.last_index, None));
    let cli = Command::new("redis-cli")
        .args(["-u", &url(), "--raw", "GET", &meta_key])
        .output()
        .expect("redis-cli");
    assert_eq!(
        String::from_utf8_lossy(&cli.stdout).trim(),
        format!("{index} {digest}"),
        "redis-cli reads the record as written"
    );

    // TTL on both; a put without TTL makes both permanent again.
    store
        .put(
            "a/b",
            "t".into(),
            WriteOptions::with_ttl(Duration::from_secs(30)),
        )
        .await
        .unwrap();
    let (pv, pm): (i64, i64) = (
        raw.pttl(&value_key).await.unwrap(),
        raw.pttl(&meta_key).await.unwrap(),
    );
    assert!(pv > 29_000 && pm > 29_000, "pttl {pv} {pm}");
    store
        .put("a/b", "p".into(), WriteOptions::default())
        .await
        .unwrap();
    let (pv, pm): (i64, i64) = (
        raw.pttl(&value_key).await.unwrap(),
        raw.pttl(&meta_key).await.unwrap(),
    );
    assert_eq!((pv, pm), (-1, -1));

    // Deleting removes the metadata too.
    assert!(store.delete("a/b").await.unwrap());
    let n: i64 = raw
        .exists(vec![value_key.clone(), meta_key.clone()])
        .await
        .unwrap();
    assert_eq!(n, 0);

    // A value written by another client: readable (index 1), listable, CAS-able.
    let _: () = raw
        .set(format!("{ns}/foreign"), "from redis-cli", None, None, false)
        .await
        .unwrap();
    let foreign = store
        .get("foreign", ReadOptions::default())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(foreign.value, Bytes::from("from redis-cli"));
    assert_eq!(foreign.last_index, 1);
    let keys: Vec<String> = store
        .list("", ReadOptions::default())
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.key)
        .collect();
    assert_eq!(keys, ["foreign"], "metadata keys never show up");
    let next_pair = store
        .atomic_put(
            "foreign",
            "ours".into(),
            Some(&foreign),
            WriteOptions::default(),
        )
        .await
        .unwrap();
    assert!(next_pair.last_index > 1);
    store.delete_tree("").await.unwrap();
    store.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_index_rises_across_fast_delete_and_recreate() {
    let ns = unique("index");
    let store = store_with_prefix(&ns).await;
    let mut last = 0;
    for i in 0..300 {
        store
            .put("k", format!("{i}").into(), WriteOptions::default())
            .await
            .unwrap();
        let pair = store
            .get("k", ReadOptions::default())
            .await
            .unwrap()
            .unwrap();
        assert!(pair.last_index > last, "{} after {last}", pair.last_index);
        last = pair.last_index;
        store.delete("k").await.unwrap();
    }
    // Concurrent writers and deleters on one key: every successful write's index is unique
    // and they all rise in the order the server applied them (checked through CAS below).
    let a = store.clone();
    let b = store.clone();
    let writers = tokio::spawn(async move {
        for i in 0..200 {
            a.put("k", format!("{i}").into(), WriteOptions::default())
                .await
                .unwrap();
        }
    });
    let deleters = tokio::spawn(async move {
        for _ in 0..200 {
            b.delete("k").await.unwrap();
        }
    });
    writers.await.unwrap();
    deleters.await.unwrap();
    store
        .put("k", "end".into(), WriteOptions::default())
        .await
        .unwrap();
    let pair = store
        .get("k", ReadOptions::default())
        .await
        .unwrap()
        .unwrap();
    assert!(pair.last_index > last);
    store.delete_tree("").await.unwrap();
    store.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_values_and_the_configured_limit() {
    let ns = unique("limits");
    let store = store_with_prefix(&ns).await;
    assert_eq!(
        store.capabilities().max_value_len,
        kv_redis::REDIS_MAX_VALUE_LEN,
        "the default limit is Redis' own proto-max-bulk-len"
    );
    // 100 MiB round trip through the Lua write path.
    let size = 100 * 1024 * 1024;
    let big: Bytes = (0..size)
        .map(|i| (i % 251) as u8)
        .collect::<Vec<u8>>()
        .into();
    let started = Instant::now();
    store
        .put("big", big.clone(), WriteOptions::default())
        .await
        .unwrap();
    let back = store
        .get("big", ReadOptions::default())
        .await
        .unwrap()
        .unwrap();
    assert!(back.value == big, "100 MiB value came back altered");
    eprintln!("100 MiB put + get: {:?}", started.elapsed());
    store.delete("big").await.unwrap();
    store.close().await.unwrap();

    // A configured limit is enforced before anything is sent, at the exact boundary.
    let config = Config::builder()
        .endpoints(Config::from_url(&url()).unwrap().endpoints)
        .namespace(&ns)
        .max_value_len(1024)
        .build()
        .unwrap();
    let small = RedisStore::connect(config).await.unwrap();
    assert_eq!(small.capabilities().max_value_len, 1024);
    small
        .put("fits", vec![7u8; 1024].into(), WriteOptions::default())
        .await
        .unwrap();
    match small
        .put("over", vec![7u8; 1025].into(), WriteOptions::default())
        .await
    {
        Err(Error::ValueTooLarge {
            size: 1025,
            max: 1024,
            ..
        }) => {}
        other => panic!("unexpected {other:?}"),
    }
    assert!(
        small
            .get("over", ReadOptions::default())
            .await
            .unwrap()
            .is_none()
    );
    small.delete_tree("").await.unwrap();
    small.close().await.unwrap();
    // Above Redis' own limit is a configuration error.
    assert!(matches!(
        Config::builder()
            .max_value_len(kv_redis::REDIS_MAX_VALUE_LEN + 1)
            .build(),
        Err(Error::Config(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scan_batches_list_and_delete_tree() {
    let ns = unique("scan");
    let store = store_with_prefix(&ns).await;
    // More keys than one SCAN page (1000) and many read batches (64), plus glob characters.
    let keys: Vec<String> = (0..2500)
        .map(|i| format!("d*[x]/{:02}/k{i:05}", i % 37))
        .collect();
    futures::stream::iter(keys.clone())
        .map(|k| {
            let store = store.clone();
            async move {
                store
                    .put(&k, k.clone().into(), WriteOptions::default())
                    .await
            }
        })
        .buffer_unordered(64)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<kv_core::Result<Vec<_>>>()
        .unwrap();
    store
        .put("d*[x]", "dir itself".into(), WriteOptions::default())
        .await
        .unwrap();
    store
        .put(
            "dX[x]/not",
            "glob must not match".into(),
            WriteOptions::default(),
        )
        .await
        .unwrap();
    store
        .put("d*[x]x/n", "sibling".into(), WriteOptions::default())
        .await
        .unwrap();
    let started = Instant::now();
    let listed = store.list("d*[x]", ReadOptions::default()).await.unwrap();
    eprintln!("list of 2500 keys: {:?}", started.elapsed());
    let mut expected = keys.clone();
    expected.sort();
    assert_eq!(
        listed.iter().map(|p| p.key.clone()).collect::<Vec<_>>(),
        expected
    );
    assert!(listed.iter().all(|p| p.value == p.key.as_bytes()));
    let started = Instant::now();
    store.delete_tree("d*[x]").await.unwrap();
    eprintln!("delete_tree of 2501 keys: {:?}", started.elapsed());
    let rest: Vec<String> = store
        .list("", ReadOptions::default())
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.key)
        .collect();
    assert_eq!(rest, ["d*[x]x/n", "dX[x]/not"]);
    // No metadata left behind for the deleted keys.
    let raw = store.client().clone();
    let n: i64 = raw.exists(store.meta_key("d*[x]/00/k00000")).await.unwrap();
    assert_eq!(n, 0);
    store.delete_tree("").await.unwrap();
    store.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_endpoint_is_a_typed_error_not_a_hang() {
    // Nothing listens on a port we just released.
    let port = PrivateServer::free_port();
    let config = Config::builder()
        .endpoint(format!("127.0.0.1:{port}"))
        .connect_timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let started = Instant::now();
    match RedisStore::connect(config).await {
        Err(Error::Unavailable { .. }) => {}
        other => panic!("expected Unavailable, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(3));
    // A server that accepts connections but never answers: bounded by the timeouts.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming().flatten() {
            held.push(stream);
        }
    });
    let config = Config::builder()
        .endpoint(format!("127.0.0.1:{port}"))
        .connect_timeout(Duration::from_millis(500))
        .request_timeout(Duration::from_millis(500))
        .build()
        .unwrap();
    let started = Instant::now();
    match RedisStore::connect(config).await {
        Err(e @ Error::Timeout { .. }) => eprintln!("silent server: {e}"),
        other => panic!("expected Timeout, got {other:?}"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_going_away_gives_transient_errors_and_close_still_returns() {
    let server = PrivateServer::start("KA").await;
    let store = RedisStore::connect(server.config()).await.unwrap();
    store
        .put("k", "v".into(), WriteOptions::default())
        .await
        .unwrap();
    let mut watch = store.watch("k", ReadOptions::default()).await.unwrap();
    assert!(next(&mut watch, "first").await.unwrap().is_some());
    let mut lock = store.new_lock("l", LockOptions::default()).await.unwrap();
    lock.lock().await.unwrap();
    drop(server);
    let started = Instant::now();
    match store.get("k", ReadOptions::default()).await {
        Err(e) if e.is_transient() => eprintln!("server gone: {e} after {:?}", started.elapsed()),
        other => panic!("expected a transient error, got {other:?}"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    let started = Instant::now();
    store.close().await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "close took {:?}",
        started.elapsed()
    );
    assert_eq!(store.background_tasks(), 0);
    assert!(matches!(
        next(&mut watch, "closed").await,
        Err(Error::Closed)
    ));
}

/// Runs the calls a client makes during an outage and checks that each one fails, as a whole,
/// within `limit`: `get`, and `list` / `delete_tree`, which take several SCAN pages and read
/// or delete key by key.
async fn every_call_fails_within(store: &RedisStore, limit: Duration, outage: &str) {
    let started = Instant::now();
    let got = store.get("d/k0000", ReadOptions::default()).await;
    let took = started.elapsed();
    eprintln!("{outage}: get -> {got:?} after {took:?}");
    assert!(matches!(&got, Err(e) if e.is_transient()), "{outage}: get");
    assert!(took < limit, "{outage}: get took {took:?}");

    let started = Instant::now();
    let listed = store.list("d", ReadOptions::default()).await;
    let took = started.elapsed();
    eprintln!(
        "{outage}: list -> {:?} after {took:?}",
        listed.as_ref().map(Vec::len)
    );
    assert!(
        matches!(&listed, Err(e) if e.is_transient()),
        "{outage}: list"
    );
    assert!(took < limit, "{outage}: list took {took:?}");

    let started = Instant::now();
    let deleted = store.delete_tree("d").await;
    let took = started.elapsed();
    eprintln!("{outage}: delete_tree -> {deleted:?} after {took:?}");
    assert!(
        matches!(&deleted, Err(e) if e.is_transient()),
        "{outage}: delete_tree"
    );
    assert!(took < limit, "{outage}: delete_tree took {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_and_delete_tree_fail_within_one_request_timeout_during_an_outage() {
    let server = PrivateServer::start("KA").await;
    let request_timeout = Duration::from_secs(1);
    // One request timeout for the whole call, plus slack for scheduling (a debug build on a
    // busy machine).
    let limit = request_timeout + Duration::from_secs(2);
    let config = Config::builder()
        .endpoint(format!("127.0.0.1:{}", server.port))
        .connect_timeout(request_timeout)
        .request_timeout(request_timeout)
        .build()
        .unwrap();
    let store = RedisStore::connect(config).await.unwrap();
    // Enough keys for several SCAN pages and read batches.
    const KEYS: usize = 2500;
    futures::stream::iter(0..KEYS)
        .map(|i| {
            let store = &store;
            async move {
                store
                    .put(&format!("d/k{i:04}"), "v".into(), WriteOptions::default())
                    .await
            }
        })
        .buffer_unordered(64)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<kv_core::Result<Vec<()>>>()
        .unwrap();
    // Setup, not the point of the test: on a loaded machine a debug build may need more than
    // the 1 s limit for 2,500 reads, so try a few times.
    let s = &store;
    eventually(
        Duration::from_secs(10),
        "list of every key",
        || async move {
            s.list("d", ReadOptions::default())
                .await
                .is_ok_and(|l| l.len() == KEYS)
        },
    )
    .await;

    // A server that stops answering: the connection stays up, so only the time limits help.
    server.signal("STOP");
    every_call_fails_within(&store, limit, "stopped server").await;
    server.signal("CONT");
    let s = &store;
    eventually(
        Duration::from_secs(10),
        "list after the server resumed",
        || async move { s.list("d", ReadOptions::default()).await.is_ok() },
    )
    .await;

    // A server that is gone: fred reconnects in the background, calls must not wait for it.
    drop(server);
    every_call_fails_within(&store, limit, "killed server").await;
    store.close().await.unwrap();
}

/// Connections the server has now (`INFO clients`), minus the observer's own.
async fn client_count(observer: &RedisStore) -> i64 {
    let info: String = observer
        .client()
        .info(Some(fred::types::InfoKind::Clients))
        .await
        .unwrap();
    let connected = info
        .lines()
        .find_map(|l| l.strip_prefix("connected_clients:"))
        .unwrap()
        .trim()
        .parse::<i64>()
        .unwrap();
    connected - 1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_end_on_close_and_on_drop() {
    let server = PrivateServer::start("KA").await;
    let observer = RedisStore::connect(server.config()).await.unwrap();
    assert_eq!(client_count(&observer).await, 0);
    // close(): both connections (commands and subscriber) end.
    let store = RedisStore::connect(server.config()).await.unwrap();
    let watch = store.watch("k", ReadOptions::default()).await.unwrap();
    assert_eq!(client_count(&observer).await, 2);
    store.close().await.unwrap();
    drop(watch);
    let o = &observer;
    eventually(
        Duration::from_secs(5),
        "closed handle disconnects",
        || async move { client_count(o).await == 0 },
    )
    .await;
    // A handle dropped without close() disconnects too, once its watches and locks are gone.
    let store = RedisStore::connect(server.config()).await.unwrap();
    let watch = store.watch("k", ReadOptions::default()).await.unwrap();
    let mut lock = store.new_lock("l", LockOptions::default()).await.unwrap();
    lock.lock().await.unwrap();
    assert_eq!(client_count(&observer).await, 2);
    drop(watch);
    drop(lock);
    drop(store);
    eventually(
        Duration::from_secs(5),
        "dropped handle disconnects",
        || async move { client_count(o).await == 0 },
    )
    .await;
    assert!(
        observer
            .get("l", ReadOptions::default())
            .await
            .unwrap()
            .is_none(),
        "the dropped lock was released"
    );
    observer.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_topology() {
    let primary = PrivateServer::start("KA").await;
    let sentinel = PrivateServer::start_sentinel(primary.port).await;
    let url = format!(
        "redis+sentinel://127.0.0.1:{}/mymaster?prefix=s",
        sentinel.port
    );
    let store = RedisStore::connect(Config::from_url(&url).unwrap())
        .await
        .unwrap();
    let mut watch = store.watch("k", ReadOptions::default()).await.unwrap();
    assert_eq!(next(&mut watch, "first").await.unwrap(), None);
    store
        .put("k", "via sentinel".into(), WriteOptions::default())
        .await
        .unwrap();
    let pair = next(&mut watch, "put").await.unwrap().unwrap();
    assert_eq!(pair.value, "via sentinel");
    // It is the primary behind the sentinel that holds the plain value.
    let direct = RedisStore::connect(primary.config()).await.unwrap();
    let plain: String = direct.client().get("s/k").await.unwrap();
    assert_eq!(plain, "via sentinel");
    drop(watch);
    store.close().await.unwrap();
    direct.close().await.unwrap();
    drop(sentinel);
}

/// A throw-away CA, server and client certificates (servers.md §0.1).
fn make_certs(dir: &std::path::Path) {
    let script = r#"
set -e
openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj "/CN=test-ca" -keyout ca.key -out ca.crt
printf '%s\n' 'basicConstraints=CA:FALSE' 'keyUsage=digitalSignature,keyEncipherment' \
  'extendedKeyUsage=serverAuth,clientAuth' 'subjectAltName=IP:127.0.0.1,DNS:localhost' > server.ext
openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" -keyout server.key -out server.csr
openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 30 -extfile server.ext -out server.crt
printf '%s\n' 'basicConstraints=CA:FALSE' 'keyUsage=digitalSignature,keyEncipherment' \
  'extendedKeyUsage=clientAuth' > client.ext
openssl req -newkey rsa:2048 -nodes -subj "/CN=test-client" -keyout client.key -out client.csr
openssl x509 -req -in client.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 30 -extfile client.ext -out client.crt
"#;
    let status = Command::new("sh")
        .arg("-c")
        .arg(script)
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("openssl must be installed");
    assert!(status.success(), "making test certificates failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_a_private_ca_and_client_certificates() {
    let dir = std::env::temp_dir().join(unique("tls"));
    std::fs::create_dir_all(&dir).unwrap();
    let certs = dir.clone();
    tokio::task::spawn_blocking(move || make_certs(&certs))
        .await
        .unwrap();
    let port = PrivateServer::free_port();
    let child = Command::new("redis-server")
        .args([
            "--bind",
            "127.0.0.1",
            "--port",
            "0",
            "--tls-port",
            &port.to_string(),
        ])
        .arg("--tls-cert-file")
        .arg(dir.join("server.crt"))
        .arg("--tls-key-file")
        .arg(dir.join("server.key"))
        .arg("--tls-ca-cert-file")
        .arg(dir.join("ca.crt"))
        .args([
            "--tls-auth-clients",
            "yes",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .args(["--notify-keyspace-events", "KA"])
        .arg("--dir")
        .arg(&dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server must be installed");
    let mut server = PrivateServer {
        child,
        port,
        dir: dir.clone(),
        notify: "KA".into(),
    };
    server.wait_ready().await;
    let path = |name: &str| dir.join(name).display().to_string();
    let url = format!(
        "rediss://127.0.0.1:{port}?tls_ca_file={}&tls_cert_file={}&tls_key_file={}",
        path("ca.crt"),
        path("client.crt"),
        path("client.key")
    );
    let store = RedisStore::connect(Config::from_url(&url).unwrap())
        .await
        .expect("TLS with client certificate");
    let mut watch = store.watch("k", ReadOptions::default()).await.unwrap();
    assert_eq!(next(&mut watch, "first").await.unwrap(), None);
    store
        .put("k", "over tls".into(), WriteOptions::default())
        .await
        .unwrap();
    assert_eq!(
        next(&mut watch, "put").await.unwrap().unwrap().value,
        "over tls"
    );
    drop(watch);
    store.close().await.unwrap();
    // Without the client certificate the server refuses the handshake; without our CA the
    // client refuses the server: both are typed errors, not hangs.
    for url in [
        format!("rediss://127.0.0.1:{port}?tls_ca_file={}", path("ca.crt")),
        format!("rediss://127.0.0.1:{port}?connect_timeout_ms=2000"),
    ] {
        match RedisStore::connect(Config::from_url(&url).unwrap()).await {
            Err(e) if e.is_transient() => {}
            other => panic!("{url}: expected a transient error, got {other:?}"),
        }
    }
    // An unreadable CA file is a configuration error.
    let url = format!("rediss://127.0.0.1:{port}?tls_ca_file=/nonexistent/ca.pem");
    assert!(matches!(
        RedisStore::connect(Config::from_url(&url).unwrap()).await,
        Err(Error::Config(_))
    ));
    server.dir = dir;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_credentials_are_permission_denied() {
    let server = PrivateServer::start("KA").await;
    let raw = RedisStore::connect(server.config()).await.unwrap();
    let _: () = raw
        .client()
        .custom(
            fred::types::CustomCommand::new_static("CONFIG", None, false),
            vec!["SET", "requirepass", "s3cret"],
        )
        .await
        .unwrap();
    let bad = Config::builder()
        .endpoint(format!("127.0.0.1:{}", server.port))
        .password("wrong")
        .connect_timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    match RedisStore::connect(bad).await {
        Err(Error::PermissionDenied { .. }) => {}
        other => panic!("expected PermissionDenied, got {other:?}"),
    }
    let good = Config::from_url(&format!("redis://:s3cret@127.0.0.1:{}", server.port)).unwrap();
    let store = RedisStore::connect(good).await.unwrap();
    store
        .put("k", "v".into(), WriteOptions::default())
        .await
        .unwrap();
    store.close().await.unwrap();
    raw.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifications_off_is_a_clear_error() {
    let server = PrivateServer::start("").await;
    let store = RedisStore::connect(server.config()).await.unwrap();
    for result in [
        store.watch("k", ReadOptions::default()).await.map(|_| ()),
        store
            .watch_tree("d", ReadOptions::default())
            .await
            .map(|_| ()),
    ] {
        match result {
            Err(Error::Config(message)) => {
                assert!(message.contains("notify-keyspace-events"), "{message}")
            }
            other => panic!("expected a Config error, got {other:?}"),
        }
    }
    // Only the event classes but no keyspace channel: still refused.
    let _: () = store
        .client()
        .custom(
            fred::types::CustomCommand::new_static("CONFIG", None, false),
            vec!["SET", "notify-keyspace-events", "Eg$x"],
        )
        .await
        .unwrap();
    assert!(matches!(
        store.watch("k", ReadOptions::default()).await.map(|_| ()),
        Err(Error::Config(_))
    ));
    // Locks do not depend on notifications: waiters poll.
    let other = RedisStore::connect(
        Config::builder()
            .endpoint(format!("127.0.0.1:{}", server.port))
            .lock_poll_interval(Duration::from_millis(100))
            .build()
            .unwrap(),
    )
    .await
    .unwrap();
    let options = LockOptions::default().ttl(Duration::from_secs(2));
    let mut first = store.new_lock("l", options.clone()).await.unwrap();
    let mut second = other.new_lock("l", options).await.unwrap();
    let lease = first.lock().await.unwrap();
    let waiter = tokio::spawn(async move {
        let lease = second.lock().await.unwrap();
        (second, lease)
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiter.is_finished());
    first.unlock().await.unwrap();
    let (mut second, lease2) = tokio::time::timeout(Duration::from_secs(3), waiter)
        .await
        .expect("the waiter polls")
        .unwrap();
    assert!(lease2.fencing_token() > lease.fencing_token());
    second.unlock().await.unwrap();
    store.close().await.unwrap();
    other.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_resynchronise_after_a_server_restart() {
    let mut server = PrivateServer::start("KA").await;
    let store = RedisStore::connect(server.config()).await.unwrap();
    store
        .put("d/k", "v1".into(), WriteOptions::default())
        .await
        .unwrap();
    let mut watch = store.watch("d/k", ReadOptions::default()).await.unwrap();
    let mut tree = store.watch_tree("d", ReadOptions::default()).await.unwrap();
    assert_eq!(
        next(&mut watch, "first").await.unwrap().unwrap().value,
        "v1"
    );
    assert_eq!(next(&mut tree, "first").await.unwrap().len(), 1);
    // The restarted server is empty, and no notification says so: only the resync after the
    // reconnection can report it.
    server.restart().await;
    assert_eq!(next(&mut watch, "after restart").await.unwrap(), None);
    assert_eq!(
        next(&mut tree, "after restart").await.unwrap(),
        Vec::<KvPair>::new()
    );
    // And the watches are live again (re-subscribed).
    eventually(Duration::from_secs(10), "write after restart", || {
        let store = store.clone();
        async move {
            store
                .put("d/k", "v2".into(), WriteOptions::default())
                .await
                .is_ok()
        }
    })
    .await;
    assert_eq!(next(&mut watch, "v2").await.unwrap().unwrap().value, "v2");
    assert_eq!(next(&mut tree, "v2").await.unwrap()[0].value, "v2");
    drop((watch, tree));
    store.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_overwrite_loses_the_lock_at_once() {
    let ns = unique("takeover");
    let store = store_with_prefix(&ns).await;
    let mut lock = store
        .new_lock(
            "l",
            LockOptions::default()
                .value("holder")
                .ttl(Duration::from_secs(30)),
        )
        .await
        .unwrap();
    let lease = lock.lock().await.unwrap();
    let raw = store.client().clone();
    let value_key = store.value_key("l");
    let plain: String = raw.get(&value_key).await.unwrap();
    assert_eq!(plain, "holder", "the lock value is the plain value");
    let started = Instant::now();
    let _: () = raw
        .set(&value_key, "intruder", None, None, false)
        .await
        .unwrap();
    // With a 30 s TTL the next renewal is 10 s away: the keyspace event reports it.
    let state = tokio::time::timeout(Duration::from_secs(2), lease.lost())
        .await
        .expect("loss reported promptly");
    assert_eq!(state, LockState::Lost);
    eprintln!("takeover noticed after {:?}", started.elapsed());
    assert!(matches!(lock.unlock().await, Err(Error::LockLost { .. })));
    // Unlock did not delete the intruder's value.
    let plain: String = raw.get(&value_key).await.unwrap();
    assert_eq!(plain, "intruder");
    // Fencing tokens rise with every acquisition.
    store.delete("l").await.unwrap();
    let mut last = lease.fencing_token();
    for _ in 0..5 {
        let lease = lock.lock().await.unwrap();
        assert!(lease.fencing_token() > last);
        last = lease.fencing_token();
        lock.unlock().await.unwrap();
    }
    store.delete_tree("").await.unwrap();
    store.close().await.unwrap();
}

/// A foreign `SET key intruder PX 30000`: the same keyspace events (`set`, `expire`) as a
/// lock's own acquiring write.
async fn overwrite_with_ttl(raw: &fred::clients::Client, key: &str) {
    let _: () = raw
        .set(
            key,
            "intruder",
            Some(fred::types::Expiration::PX(30_000)),
            None,
            false,
        )
        .await
        .unwrap();
}

/// The holder skips the keyspace events of its own acquisition (`set`, `expire`) but never a
/// foreign write's, even one that reports the very same events right after them: an
/// overwrite `SET … PX` (and a plain `SET`, a `DEL`) sent the instant `lock` returns is
/// noticed at once, every time, long before the next renewal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_write_right_after_acquiring_is_noticed() {
    let ns = unique("right-after");
    let store = store_with_prefix(&ns).await;
    let raw = store.client().clone();
    let value_key = store.value_key("l");
    for round in 0..30 {
        let mut lock = store
            .new_lock("l", LockOptions::default().ttl(Duration::from_secs(30)))
            .await
            .unwrap();
        let lease = lock.lock().await.unwrap();
        match round % 3 {
            0 => {
                overwrite_with_ttl(&raw, &value_key).await;
            }
            1 => {
                let _: () = raw
                    .set(&value_key, "intruder", None, None, false)
                    .await
                    .unwrap();
            }
            _ => {
                let _: i64 = raw.del(&value_key).await.unwrap();
            }
        }
        let state = tokio::time::timeout(Duration::from_secs(5), lease.lost())
            .await
            .unwrap_or_else(|_| panic!("round {round}: the foreign write went unnoticed"));
        assert_eq!(state, LockState::Lost, "round {round}");
        assert!(matches!(lock.unlock().await, Err(Error::LockLost { .. })));
        let _: i64 = raw.del(&value_key).await.unwrap();
    }
    store.delete_tree("").await.unwrap();
    store.close().await.unwrap();
}

/// A new subscription is in force on the server when `watch` or `lock` returns: a plain
/// client's write sent that instant is heard. (fred reports a `SUBSCRIBE` done once it is
/// written, before the server has run it; a write landing in between went unheard, and a
/// lock holder took a foreign `SET … PX` for the events of its own acquisition.) Four tasks,
/// each subscribing afresh every round — on fresh keys, and on one key released and
/// subscribed again — so the server has other connections' work in between.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_right_after_subscribing_is_heard() {
    const ROUNDS: usize = 60;
    let ns = unique("fresh-subscription");
    let store = Arc::new(store_with_prefix(&ns).await);
    let mut tasks = Vec::new();
    for task in 0..4 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let raw = store.client().clone();
            for round in 0..ROUNDS {
                // Odd tasks reuse one key: the previous round's subscription is being released
                // (UNSUBSCRIBE) while this one subscribes.
                let key = if task % 2 == 0 {
                    format!("w{task}/{round}")
                } else {
                    format!("w{task}")
                };
                // Written before the watch's first item is taken: that item or a later one
                // reports it.
                let mut watch = store.watch(&key, ReadOptions::default()).await.unwrap();
                let _: () = raw
                    .set(
                        store.value_key(&key),
                        format!("v{round}"),
                        None,
                        None,
                        false,
                    )
                    .await
                    .unwrap();
                let mut seen = next(&mut watch, "first").await.unwrap().map(|p| p.value);
                let deadline = Instant::now() + Duration::from_secs(5);
                while seen.as_deref() != Some(format!("v{round}").as_bytes()) {
                    let left = deadline.saturating_duration_since(Instant::now());
                    match tokio::time::timeout(left, watch.next()).await {
                        Ok(Some(item)) => seen = item.unwrap().map(|p| p.value),
                        _ => panic!("task {task} round {round}: the watch missed the write"),
                    }
                }
                drop(watch);

                let lock_key = format!("l{task}/{round}");
                let mut lock = store
                    .new_lock(
                        &lock_key,
                        LockOptions::default().ttl(Duration::from_secs(30)),
                    )
                    .await
                    .unwrap();
                let lease = lock.lock().await.unwrap();
                overwrite_with_ttl(&raw, &store.value_key(&lock_key)).await;
                let state = tokio::time::timeout(Duration::from_secs(5), lease.lost())
                    .await
                    .unwrap_or_else(|_| {
                        panic!("task {task} round {round}: the lock missed the overwrite")
                    });
                assert_eq!(state, LockState::Lost);
                assert!(matches!(lock.unlock().await, Err(Error::LockLost { .. })));
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    // Foreign values count as keys of the namespace: this removes the intruders' too.
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
async fn background_tasks_end_with_their_owners_and_on_close() {
    let ns = unique("tasks");
    let store = Arc::new(store_with_prefix(&ns).await);
    assert_eq!(store.background_tasks(), 0);
    let watch = store.watch("k", ReadOptions::default()).await.unwrap();
    let tree = store.watch_tree("", ReadOptions::default()).await.unwrap();
    let mut lock = store
        .new_lock("l", LockOptions::default().ttl(Duration::from_secs(2)))
        .await
        .unwrap();
    lock.lock().await.unwrap();
    // Two watch loops and one renewal (the acquiring task ends right after `lock` returns).
    let s = store.clone();
    eventually(Duration::from_secs(2), "three tasks", move || {
        let s = s.clone();
        async move { s.background_tasks() == 3 }
    })
    .await;
    drop(watch);
    drop(tree);
    drop(lock);
    let s = store.clone();
    eventually(
        Duration::from_secs(3),
        "tasks end when owners drop",
        move || {
            let s = s.clone();
            async move { s.background_tasks() == 0 }
        },
    )
    .await;
    assert!(
        store
            .get("l", ReadOptions::default())
            .await
            .unwrap()
            .is_none(),
        "dropped lock released"
    );

    // close(): locks released, watches end with Closed, tasks 0, later calls Closed.
    let mut watch = store.watch("k", ReadOptions::default()).await.unwrap();
    assert_eq!(next(&mut watch, "first").await.unwrap(), None);
    let mut lock = store.new_lock("l", LockOptions::default()).await.unwrap();
    let lease = lock.lock().await.unwrap();
    let other = store_with_prefix(&ns).await;
    assert!(
        other
            .get("l", ReadOptions::default())
            .await
            .unwrap()
            .is_some()
    );
    store.close().await.unwrap();
    assert_eq!(store.background_tasks(), 0);
    assert!(matches!(
        next(&mut watch, "closed").await,
        Err(Error::Closed)
    ));
    assert_eq!(lease.state(), LockState::Released);
    assert!(
        other
            .get("l", ReadOptions::default())
            .await
            .unwrap()
            .is_none()
    );
    assert!(matches!(
        store.get("k", ReadOptions::default()).await,
        Err(Error::Closed)
    ));
    store.close().await.unwrap();
    other.delete_tree("").await.unwrap();
    other.close().await.unwrap();
}

/// A restarted Redis without persistence has forgotten every lock: a contender gets the key at
/// once, so the old holder must learn at once too, not at its next renewal (`ttl / 3`). The
/// reconnection itself is the signal: every held lock re-checks its key right away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_without_persistence_loses_held_locks_at_once() {
    let mut server = PrivateServer::start("KA").await;
    let a = RedisStore::connect(server.config()).await.unwrap();
    a.put("k", "before".into(), WriteOptions::default())
        .await
        .unwrap();
    let before = a
        .get("k", ReadOptions::default())
        .await
        .unwrap()
        .unwrap()
        .last_index;
    // A long TTL on purpose: the first renewal is 3.3 s after the acquisition.
    let ttl = Duration::from_secs(10);
    let mut lock_a = a
        .new_lock("l", LockOptions::default().value("a").ttl(ttl))
        .await
        .unwrap();
    let lease_a = lock_a.lock().await.unwrap();
    let acquired = Instant::now();

    server.restart().await;
    let restarted = Instant::now();
    // Nobody writes the key after the restart: no keyspace event can tell A, only the
    // reconnection can.
    let state = tokio::time::timeout(Duration::from_secs(1), lease_a.lost())
        .await
        .unwrap_or_else(|_| {
            panic!(
                "the holder still believes it holds the lock {:?} after the restart",
                restarted.elapsed()
            )
        });
    assert_eq!(state, LockState::Lost);
    let noticed = restarted.elapsed();
    eprintln!(
        "restart noticed {noticed:?} after the server was back ({:?} after the acquisition)",
        acquired.elapsed()
    );
    assert!(
        acquired.elapsed() < kv_core::lock::renew_interval(ttl),
        "noticed only at the renewal"
    );

    // The restarted server is empty: a contender takes the lock at once, with a higher
    // fencing token (the server clock, not the lost counter, orders them).
    let b = RedisStore::connect(server.config()).await.unwrap();
    let mut lock_b = b
        .new_lock("l", LockOptions::default().value("b").ttl(ttl))
        .await
        .unwrap();
    let lease_b = tokio::time::timeout(Duration::from_secs(1), lock_b.lock())
        .await
        .expect("the lock is free at once after the restart")
        .unwrap();
    assert!(
        lease_b.fencing_token() > lease_a.fencing_token(),
        "{} after {}",
        lease_b.fencing_token(),
        lease_a.fencing_token()
    );
    // Plain indexes keep rising across the restart too.
    b.put("k", "after".into(), WriteOptions::default())
        .await
        .unwrap();
    let after = b
        .get("k", ReadOptions::default())
        .await
        .unwrap()
        .unwrap()
        .last_index;
    assert!(after > before, "{after} after {before}");

    // A's unlock reports the loss and leaves B's lock alone.
    assert!(matches!(lock_a.unlock().await, Err(Error::LockLost { .. })));
    let held = b.get("l", ReadOptions::default()).await.unwrap().unwrap();
    assert_eq!(held.value, "b");
    assert!(lease_b.is_held());
    lock_b.unlock().await.unwrap();
    a.close().await.unwrap();
    b.close().await.unwrap();
}

/// Another program deletes a value key (leaving the metadata record behind) and writes it again,
/// or overwrites it in place: a CAS with a pair read before must fail, and the foreign value
/// reads with a fresh, higher index that CAS accepts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_writes_void_the_version() {
    let ns = unique("foreign");
    let store = store_with_prefix(&ns).await;
    let raw = store.client().clone();
    let value_key = store.value_key("k");
    let meta_key = store.meta_key("k");
    store
        .put("k", "ours".into(), WriteOptions::default())
        .await
        .unwrap();
    let old = store
        .get("k", ReadOptions::default())
        .await
        .unwrap()
        .unwrap();
    let mut watch = store.watch("k", ReadOptions::default()).await.unwrap();
    assert_eq!(next(&mut watch, "first").await.unwrap(), Some(old.clone()));

    // Plain DEL + SET by another client: the metadata record survives the DEL.
    let _: i64 = raw.del(&value_key).await.unwrap();
    assert_eq!(next(&mut watch, "foreign del").await.unwrap(), None);
    let n: i64 = raw.exists(&meta_key).await.unwrap();
    assert_eq!(n, 1, "a plain DEL leaves the metadata behind");
    let _: () = raw
        .set(&value_key, "theirs", None, None, false)
        .await
        .unwrap();
    let put = store
        .atomic_put("k", "mine".into(), Some(&old), WriteOptions::default())
        .await;
    assert!(matches!(put, Err(Error::KeyModified { .. })), "{put:?}");
    let delete = store.atomic_delete("k", &old).await;
    assert!(
        matches!(delete, Err(Error::KeyModified { .. })),
        "{delete:?}"
    );
    let plain: String = raw.get(&value_key).await.unwrap();
    assert_eq!(plain, "theirs", "the failed CAS wrote nothing");
    // The foreign value reads with a fresh index, and watchers see it rise.
    let theirs = store
        .get("k", ReadOptions::default())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(theirs.value, "theirs");
    assert!(
        theirs.last_index > old.last_index,
        "{} after {}",
        theirs.last_index,
        old.last_index
    );
    let seen = next(&mut watch, "foreign set").await.unwrap().unwrap();
    assert_eq!(seen, theirs);
    // That index is stable and valid for CAS.
    let again = store
        .get("k", ReadOptions::default())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(again.last_index, theirs.last_index);
    let mine = store
        .atomic_put("k", "mine".into(), Some(&theirs), WriteOptions::default())
        .await
        .unwrap();
    assert!(mine.last_index > theirs.last_index);
    assert_eq!(
        next(&mut watch, "our cas")
            .await
            .unwrap()
            .unwrap()
            .last_index,
        mine.last_index
    );

    // An overwrite in place (no DEL), even with a value of the same length.
    let _: () = raw
        .set(&value_key, "MINE", None, None, false)
        .await
        .unwrap();
    let put = store
        .atomic_put("k", "x".into(), Some(&mine), WriteOptions::default())
        .await;
    assert!(matches!(put, Err(Error::KeyModified { .. })), "{put:?}");
    let seen = next(&mut watch, "foreign overwrite")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(seen.value, "MINE");
    assert!(seen.last_index > mine.last_index);
    store.atomic_delete("k", &seen).await.unwrap();
    assert_eq!(next(&mut watch, "our delete").await.unwrap(), None);

    // A value no write of this crate ever touched (no metadata) reads with index 1; a CAS
    // with index 1 holds only while the value is still the one read.
    let _: () = raw
        .set(store.value_key("f"), "one", None, None, false)
        .await
        .unwrap();
    let first = store
        .get("f", ReadOptions::default())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.last_index, 1);
    let _: () = raw
        .set(store.value_key("f"), "two", None, None, false)
        .await
        .unwrap();
    let put = store
        .atomic_put("f", "x".into(), Some(&first), WriteOptions::default())
        .await;
    assert!(matches!(put, Err(Error::KeyModified { .. })), "{put:?}");
    let delete = store.atomic_delete("f", &first).await;
    assert!(
        matches!(delete, Err(Error::KeyModified { .. })),
        "{delete:?}"
    );
    let second = store
        .get("f", ReadOptions::default())
        .await
        .unwrap()
        .unwrap();
    assert_eq!((second.value.as_ref(), second.last_index), (&b"two"[..], 1));
    let ours = store
        .atomic_put("f", "ours".into(), Some(&second), WriteOptions::default())
        .await
        .unwrap();
    assert!(ours.last_index > 1);

    // Metadata of an earlier build without the value digest (a hash with only `v`) is void:
    // adopted on first read.
    let _: () = raw.del(store.meta_key("f")).await.unwrap();
    let _: () = raw
        .hset(store.meta_key("f"), ("v", ours.last_index.to_string()))
        .await
        .unwrap();
    let adopted = store
        .get("f", ReadOptions::default())
        .await
        .unwrap()
        .unwrap();
    assert!(adopted.last_index > ours.last_index);
    drop(watch);
    store.delete_tree("").await.unwrap();
    store.close().await.unwrap();
}

/// Earlier builds kept the metadata as a hash (`v` index, `h` digest, `o` lock owner) at the
/// same name. Such data keeps its index and its lock owner: reads, CAS, unlock and delete
/// follow it, and the next write replaces the hash with the string record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_hashes_of_earlier_builds_still_count() {
    let ns = unique("hash-meta");
    let store = store_with_prefix(&ns).await;
    let raw = store.client().clone();
    // Rewrites the record at `key` in the hash form, keeping its fields and TTL.
    let to_hash = |key: &'static str| {
        let (raw, meta) = (raw.clone(), store.meta_key(key));
        async move {
            let (index, digest, owner) = meta_record(&raw, &meta).await;
            let pttl: i64 = raw.pttl(&meta).await.unwrap();
            let _: () = raw.del(&meta).await.unwrap();
            let mut fields = vec![("v", index.to_string()), ("h", digest)];
            fields.extend(owner.map(|o| ("o", o)));
            let _: () = raw.hset(&meta, fields).await.unwrap();
            if pttl > 0 {
                let _: () = raw.pexpire(&meta, pttl, None).await.unwrap();
            }
            let kind: String = raw.r#type(&meta).await.unwrap();
            assert_eq!(kind, "hash");
            index
        }
    };

    let pair = store
        .atomic_put("k", "old layout".into(), None, WriteOptions::default())
        .await
        .unwrap();
    assert_eq!(to_hash("k").await, pair.last_index);
    assert_eq!(
        store.get("k", ReadOptions::default()).await.unwrap(),
        Some(pair.clone()),
        "the hash's index is the one reported"
    );
    let listed = store.list("", ReadOptions::default()).await.unwrap();
    assert_eq!(listed, std::slice::from_ref(&pair));
    let next = store
        .atomic_put(
            "k",
            "new layout".into(),
            Some(&pair),
            WriteOptions::default(),
        )
        .await
        .unwrap();
    assert!(next.last_index > pair.last_index);
    let (index, _, _) = meta_record(&raw, &store.meta_key("k")).await;
    assert_eq!(
        index, next.last_index,
        "the write replaced the hash with a record"
    );

    // A lock whose owner is recorded in the hash form stays its holder's.
    let mut lock = store
        .new_lock("l", LockOptions::default().ttl(Duration::from_secs(1)))
        .await
        .unwrap();
    let lease = lock.lock().await.unwrap();
    assert_eq!(to_hash("l").await, lease.fencing_token());
    // Several renewals (every ttl/3) read the owner from the hash.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(lease.is_held(), "renewals found the lock ours");
    lease
        .guarded_put(&store, "fenced", "x", WriteOptions::default())
        .await
        .unwrap();
    lock.unlock().await.unwrap();
    let n: i64 = raw
        .exists(vec![store.value_key("l"), store.meta_key("l")])
        .await
        .unwrap();
    assert_eq!(n, 0, "the holder's unlock removed both keys");

    // delete removes a hash-form metadata key with its value.
    store
        .put("d", "x".into(), WriteOptions::default())
        .await
        .unwrap();
    to_hash("d").await;
    assert!(store.delete("d").await.unwrap());
    let n: i64 = raw
        .exists(vec![store.value_key("d"), store.meta_key("d")])
        .await
        .unwrap();
    assert_eq!(n, 0);
    store.close().await.unwrap();
}

/// Subscriptions are counted per channel, and channels do not wait for each other: watches and
/// locks of a few keys, opened and dropped concurrently in random order, leave the handle's
/// subscriber connection subscribed to exactly the channels somebody still holds — as the
/// server itself reports (`PUBSUB NUMSUB`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_subscriptions_are_counted_per_channel() {
    let ns = unique("subs");
    let store = store_with_prefix(&ns).await;
    let raw = store.client().clone();
    let keys = ["k0", "k1", "k2", "k3"];
    let db: u8 = {
        let path = url().rsplit('/').next().unwrap_or_default().to_owned();
        path.split('?')
            .next()
            .unwrap_or_default()
            .parse()
            .unwrap_or(0)
    };
    let channel = |k: &str| format!("__keyspace@{db}__:{}", store.value_key(k));
    let numsub = |channels: Vec<String>| {
        let raw = raw.clone();
        async move {
            let reply: Vec<fred::types::Value> = raw
                .custom(
                    fred::types::CustomCommand::new_static("PUBSUB", None, false),
                    std::iter::once("NUMSUB".to_owned())
                        .chain(channels)
                        .collect::<Vec<_>>(),
                )
                .await
                .unwrap();
            reply
                .chunks(2)
                .map(|c| c[1].as_i64().unwrap())
                .collect::<Vec<i64>>()
        }
    };
    for round in 0..3 {
        // 40 holders of random keys; every other one is kept, the rest dropped at random times.
        let mut tasks = Vec::new();
        for n in 0..40 {
            let store = store.clone();
            let (key, pause) = {
                let mut rng = rand::rng();
                (
                    keys[rng.random_range(0..keys.len())],
                    rng.random_range(0..20),
                )
            };
            tasks.push(tokio::spawn(async move {
                let held: Box<dyn std::any::Any + Send> = if n % 3 == 0 {
                    let mut lock = store
                        .new_lock(&format!("{key}-lock"), LockOptions::default())
                        .await
                        .unwrap();
                    let lease = tokio::time::timeout(Duration::from_secs(20), lock.lock())
                        .await
                        .expect("lock within 20 s")
                        .unwrap();
                    tokio::time::sleep(Duration::from_millis(pause)).await;
                    drop(lease);
                    lock.unlock().await.unwrap();
                    Box::new(())
                } else {
                    let watch = store.watch(key, ReadOptions::default()).await.unwrap();
                    tokio::time::sleep(Duration::from_millis(pause)).await;
                    Box::new(watch)
                };
                (key, n % 2 == 0, held)
            }));
        }
        let mut kept = Vec::new();
        for task in tasks {
            let (key, keep, held) = task.await.unwrap();
            if keep && held.is::<kv_core::WatchStream>() {
                kept.push((key, held));
            }
        }
        let expected = |kept: &[(&str, Box<dyn std::any::Any + Send>)]| {
            keys.iter()
                .map(|k| i64::from(kept.iter().any(|(key, _)| key == k)))
                .chain(keys.iter().map(|_| 0))
                .collect::<Vec<i64>>()
        };
        let channels: Vec<String> = keys
            .iter()
            .map(|k| channel(k))
            .chain(keys.iter().map(|k| channel(&format!("{k}-lock"))))
            .collect();
        let want = expected(&kept);
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut got = numsub(channels.clone()).await;
        while got != want && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
            got = numsub(channels.clone()).await;
        }
        assert_eq!(got, want, "round {round}: subscribed channels");
        drop(kept);
        let none = vec![0; channels.len()];
        eventually(Duration::from_secs(10), "every channel released", || {
            let numsub = numsub(channels.clone());
            let none = none.clone();
            async move { numsub.await == none }
        })
        .await;
    }
    store.close().await.unwrap();
}

/// Keys other programs write into the namespace that are no store keys — names breaking the
/// key rules, other Redis types — are invisible to `list` and `watch_tree` alike, and
/// `delete_tree` leaves them alone; the crate's own metadata never shows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_delete_tree_and_watch_tree_agree_on_foreign_keys() {
    let ns = unique("agree");
    let store = store_with_prefix(&ns).await;
    let raw = store.client().clone();
    for key in ["d", "d/a", "d/b/c", "e/x"] {
        store
            .put(key, key.into(), WriteOptions::default())
            .await
            .unwrap();
    }
    let keys = |pairs: Vec<KvPair>| pairs.into_iter().map(|p| p.key).collect::<Vec<_>>();
    let mut tree = store.watch_tree("d", ReadOptions::default()).await.unwrap();
    assert_eq!(
        keys(next(&mut tree, "first").await.unwrap()),
        ["d/a", "d/b/c"]
    );

    // Written by someone else while the watch runs.
    let long = format!("{ns}/d/{}", "x".repeat(kv_core::key::MAX_KEY_LEN));
    let bad_names = [
        format!("{ns}/d//b"),
        format!("{ns}/d/"),
        format!("{ns}/d/./x"),
        format!("{ns}/d/../x"),
        format!("{ns}/d/__kvx"),
        format!("{ns}/d/tab\tx"),
        format!("{ns}//d/x"),
        long,
    ];
    for name in &bad_names {
        let _: () = raw.set(name, "foreign", None, None, false).await.unwrap();
    }
    let other_types = [format!("{ns}/d/hash"), format!("{ns}/e")];
    for name in &other_types {
        let _: () = raw.hset(name, ("f", "v")).await.unwrap();
    }
    let _: i64 = raw
        .custom(
            fred::types::CustomCommand::new_static("RPUSH", None, false),
            vec![format!("{ns}/d/list"), "item".to_owned()],
        )
        .await
        .unwrap();
    store
        .put("d/z", "last".into(), WriteOptions::default())
        .await
        .unwrap();
    // Every snapshot up to the one with d/z shows store keys only, and the watch lives on.
    let store_keys = ["d/a", "d/b/c", "d/z"];
    loop {
        let snapshot = keys(next(&mut tree, "after foreign writes").await.unwrap());
        assert!(
            snapshot.iter().all(|k| store_keys.contains(&k.as_str())),
            "{snapshot:?}"
        );
        if snapshot.len() == store_keys.len() {
            break;
        }
    }
    assert_eq!(
        keys(store.list("d", ReadOptions::default()).await.unwrap()),
        ["d/a", "d/b/c", "d/z"]
    );
    assert_eq!(
        keys(store.list("", ReadOptions::default()).await.unwrap()),
        ["d", "d/a", "d/b/c", "d/z", "e/x"],
        "metadata and foreign keys never show"
    );
    // A key of another type is no store value: reads see nothing, deletes leave it alone.
    assert_eq!(
        store.get("d/hash", ReadOptions::default()).await.unwrap(),
        None
    );
    assert!(
        !store
            .exists("d/hash", ReadOptions::default())
            .await
            .unwrap()
    );
    assert!(!store.delete("d/hash").await.unwrap());

    store.delete_tree("d").await.unwrap();
    store.delete_tree("e").await.unwrap();
    // delete_tree goes key by key: the watch may report some steps, then the empty tree.
    loop {
        let snapshot = keys(next(&mut tree, "deleted").await.unwrap());
        assert!(
            snapshot.iter().all(|k| store_keys.contains(&k.as_str())),
            "{snapshot:?}"
        );
        if snapshot.is_empty() {
            break;
        }
    }
    assert!(
        store
            .list("", ReadOptions::default())
            .await
            .unwrap()
            .is_empty()
    );
    for name in bad_names
        .iter()
        .chain(&other_types)
        .chain([&format!("{ns}/d/list")])
    {
        let n: i64 = raw.exists(name).await.unwrap();
        assert_eq!(n, 1, "delete_tree removed the foreign key {name:?}");
    }
    let n: i64 = raw.exists(store.meta_key("d/a")).await.unwrap();
    assert_eq!(n, 0, "the store's own keys and metadata are gone");
    drop(tree);
    let mut all = bad_names.to_vec();
    all.extend(other_types);
    all.push(format!("{ns}/d/list"));
    let _: i64 = raw.del(all).await.unwrap();
    store.delete_tree("").await.unwrap();
    store.close().await.unwrap();
}

/// A key written by a transaction is stored exactly like one written by `put`: the plain
/// value, and a metadata record with the same fields (the reported `last_index`, the same
/// digest for the same bytes), the same TTL on both keys, both removed by a
/// transaction's delete. Every other call then treats it like a put's key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_write_the_put_layout() {
    use kv_core::{Condition, Transaction};
    let ns = unique("txn-layout");
    let store = store_with_prefix(&ns).await;
    let raw = store.client().clone();
    let value = Bytes::from_static(b"\x00\xffsame bytes");
    store
        .put("by-put", value.clone(), WriteOptions::default())
        .await
        .unwrap();
    let pairs = store
        .transaction(
            Transaction::new()
                .when(Condition::absent("by-txn"))
                .put("by-txn", value.clone(), WriteOptions::default())
                .put(
                    "with-ttl",
                    "t",
                    WriteOptions::with_ttl(Duration::from_secs(30)),
                ),
        )
        .await
        .unwrap();
    assert_eq!(pairs.len(), 2);
    assert_eq!((pairs[0].key.as_str(), &pairs[0].value), ("by-txn", &value));

    let plain: Bytes = raw.get(store.value_key("by-txn")).await.unwrap();
    assert_eq!(plain, value);
    let (_, put_digest, put_owner) = meta_record(&raw, &store.meta_key("by-put")).await;
    let (txn_index, txn_digest, txn_owner) = meta_record(&raw, &store.meta_key("by-txn")).await;
    assert_eq!((put_owner, txn_owner), (None, None), "no owner field");
    assert_eq!(txn_digest, put_digest, "the same digest of the same bytes");
    assert_eq!(txn_index, pairs[0].last_index);
    assert_eq!(
        store.get("by-txn", ReadOptions::default()).await.unwrap(),
        Some(pairs[0].clone()),
        "get reports what the transaction returned"
    );
    let (pv, pm): (i64, i64) = (
        raw.pttl(store.value_key("with-ttl")).await.unwrap(),
        raw.pttl(store.meta_key("with-ttl")).await.unwrap(),
    );
    assert!(pv > 29_000 && pm > 29_000, "pttl {pv} {pm}");
    let (pv, pm): (i64, i64) = (
        raw.pttl(store.value_key("by-txn")).await.unwrap(),
        raw.pttl(store.meta_key("by-txn")).await.unwrap(),
    );
    assert_eq!((pv, pm), (-1, -1));

    // Its index serves the single-key CAS, and a put's index serves the transaction's.
    let cas = store
        .atomic_put(
            "by-txn",
            "cas".into(),
            Some(&pairs[0]),
            WriteOptions::default(),
        )
        .await
        .unwrap();
    let put_pair = store
        .get("by-put", ReadOptions::default())
        .await
        .unwrap()
        .unwrap();
    store
        .transaction(
            Transaction::new()
                .when(Condition::unchanged(&cas))
                .when(Condition::unchanged(&put_pair))
                .delete("by-txn")
                .put("with-ttl", "permanent", WriteOptions::default()),
        )
        .await
        .unwrap();
    let n: i64 = raw
        .exists(vec![store.value_key("by-txn"), store.meta_key("by-txn")])
        .await
        .unwrap();
    assert_eq!(n, 0, "a transaction's delete removes value and metadata");
    let (pv, pm): (i64, i64) = (
        raw.pttl(store.value_key("with-ttl")).await.unwrap(),
        raw.pttl(store.meta_key("with-ttl")).await.unwrap(),
    );
    assert_eq!(
        (pv, pm),
        (-1, -1),
        "a put without TTL makes the key permanent"
    );
    store.delete_tree("").await.unwrap();
    store.close().await.unwrap();
}

/// Conditions see values other programs wrote the way `get` and CAS do: a value replaced
/// behind the crate's back (plain `SET`) voids the index a caller holds, a value never written
/// through the crate exists with index 1, a key of another type is absent. A refused
/// transaction writes nothing, not even the metadata a `get` would adopt, and a metadata name
/// another program overwrote with something else counts as void, never half-applying one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transaction_conditions_follow_foreign_writes() {
    use kv_core::{Condition, ConditionFailure, Transaction};
    let ns = unique("txn-foreign");
    let store = store_with_prefix(&ns).await;
    let raw = store.client().clone();
    let pair = store
        .atomic_put("k", "ours".into(), None, WriteOptions::default())
        .await
        .unwrap();
    let _: () = raw
        .set(store.value_key("k"), "theirs", None, None, false)
        .await
        .unwrap();
    let meta_before = meta_record(&raw, &store.meta_key("k")).await;
    match store
        .transaction(
            Transaction::new()
                .when(Condition::absent("other"))
                .when(Condition::unchanged(&pair))
                .put("other", "x", WriteOptions::default()),
        )
        .await
    {
        Err(Error::ConditionFailed {
            index: 1,
            key,
            reason: ConditionFailure::KeyModified,
        }) => assert_eq!(key, "k"),
        other => panic!("expected KeyModified on condition 1, got {other:?}"),
    }
    let meta_after = meta_record(&raw, &store.meta_key("k")).await;
    assert_eq!(
        meta_before, meta_after,
        "a refused transaction writes nothing"
    );
    assert!(
        store
            .get("other", ReadOptions::default())
            .await
            .unwrap()
            .is_none(),
        "a refused transaction writes nothing"
    );
    // The adopted index (what get reports now) is the one the next transaction compares.
    let adopted = store
        .get("k", ReadOptions::default())
        .await
        .unwrap()
        .unwrap();
    assert!(adopted.last_index > pair.last_index);
    store
        .transaction(Transaction::new().when(Condition::unchanged(&adopted)).put(
            "k",
            "ours again",
            WriteOptions::default(),
        ))
        .await
        .unwrap();

    // Never written through this crate: exists, index 1.
    let _: () = raw
        .set(store.value_key("plain"), "p", None, None, false)
        .await
        .unwrap();
    store
        .transaction(Transaction::new().when(Condition::index_equals("plain", 1)))
        .await
        .unwrap();
    // A key of another type is no store value: absent.
    let _: () = raw
        .hset(store.value_key("a-hash"), ("f", "v"))
        .await
        .unwrap();
    store
        .transaction(Transaction::new().when(Condition::absent("a-hash")))
        .await
        .unwrap();
    let _: () = raw.del(store.value_key("a-hash")).await.unwrap();
    // A reserved metadata name another program overwrote (a string that is no record, a key
    // of another type): void metadata, which no write trips over. The transaction applies
    // whole and leaves well-formed records.
    let _: () = raw
        .set(store.meta_key("broken"), "not a record", None, None, false)
        .await
        .unwrap();
    let pushed = Command::new("redis-cli")
        .args([
            "-u",
            &url(),
            "RPUSH",
            &store.meta_key("listed"),
            "not a record",
        ])
        .output()
        .expect("redis-cli");
    assert!(pushed.status.success(), "{pushed:?}");
    let written = store
        .transaction(
            Transaction::new()
                .put("first", "1", WriteOptions::default())
                .put("broken", "2", WriteOptions::default())
                .put("listed", "3", WriteOptions::default()),
        )
        .await
        .unwrap();
    for (pair, name) in written.iter().zip(["first", "broken", "listed"]) {
        let (index, _, _) = meta_record(&raw, &store.meta_key(name)).await;
        assert_eq!(index, pair.last_index, "{name}");
        assert_eq!(
            store
                .get(name, ReadOptions::default())
                .await
                .unwrap()
                .as_ref(),
            Some(pair),
            "{name}"
        );
    }
    let _: () = raw.del(store.meta_key("broken")).await.unwrap();
    store.delete_tree("").await.unwrap();
    store.close().await.unwrap();
}

/// The size limit, duplicate keys and key rules are checked before anything is sent: with the
/// server frozen (SIGSTOP), an oversized transaction is refused at once while one of the
/// largest allowed size waits for the server and times out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_transactions_are_refused_before_sending() {
    use kv_core::Transaction;
    let server = PrivateServer::start("KA").await;
    let store = RedisStore::connect(server.config()).await.unwrap();
    let max = store.capabilities().max_transaction_ops;
    assert_eq!(max, kv_redis::store::MAX_TRANSACTION_OPS);
    let txn = |n: usize, tag: &str| {
        (0..n).fold(Transaction::new(), |t, i| {
            t.put(format!("{tag}/{i}"), "v", WriteOptions::default())
        })
    };
    server.signal("STOP");
    let started = Instant::now();
    match store.transaction(txn(max + 1, "big")).await {
        Err(Error::InvalidOption(message)) => assert!(message.contains("128"), "{message}"),
        other => panic!("expected InvalidOption, got {other:?}"),
    }
    match store
        .transaction(
            Transaction::new()
                .put("dup", "1", WriteOptions::default())
                .delete("/dup/"),
        )
        .await
    {
        Err(Error::InvalidOption(_)) => {}
        other => panic!("expected InvalidOption for a duplicate key, got {other:?}"),
    }
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "refused without a round trip"
    );
    match store.transaction(txn(max, "max")).await {
        Err(Error::Timeout { .. }) | Err(Error::Unavailable { .. }) => {}
        other => panic!("the largest allowed transaction is sent, got {other:?}"),
    }
    server.signal("CONT");
    // The server is back; the allowed size commits (its pairs in operation order), the
    // oversized one was never sent.
    eventually(
        Duration::from_secs(10),
        "the server answers again",
        || async { store.get("x", ReadOptions::default()).await.is_ok() },
    )
    .await;
    let pairs = store.transaction(txn(max, "again")).await.unwrap();
    let keys: Vec<String> = pairs.into_iter().map(|p| p.key).collect();
    let wanted: Vec<String> = (0..max).map(|i| format!("again/{i}")).collect();
    assert_eq!(keys, wanted);
    assert!(
        store
            .list("big", ReadOptions::default())
            .await
            .unwrap()
            .is_empty()
    );
    store.close().await.unwrap();
}

/// `Condition::LockHeld` compares the lock key's `last_index` with the fencing token on the
/// server: renewals keep it (they change only the TTL), a lock deleted by another handle or
/// expired behind the holder's back is lost, and a new holder's token is higher.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fenced_writes_follow_the_lock_on_the_server() {
    let ns = unique("txn-fence");
    let a_store = store_with_prefix(&ns).await;
    let b_store = store_with_prefix(&ns).await;
    let raw = a_store.client().clone();
    let options = LockOptions::default()
        .ttl(Duration::from_secs(1))
        .value("a");
    let mut a_lock = a_store.new_lock("leader", options).await.unwrap();
    let a_lease = a_lock.lock().await.unwrap();
    a_lease
        .guarded_put(&a_store, "job", "a-1", WriteOptions::default())
        .await
        .unwrap();
    // Past the first TTL, several renewals later, the token still matches.
    tokio::time::sleep(Duration::from_millis(1600)).await;
    assert!(a_lease.is_held());
    a_lease
        .guarded_put(&a_store, "job", "a-2", WriteOptions::default())
        .await
        .unwrap();

    // The key expires behind the holder's back (a foreign PEXPIRE of the value key): the
    // fenced write is refused even before the holder's lease notices.
    let _: () = raw
        .pexpire(a_store.value_key("leader"), 1, None)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    match a_lease
        .guarded_put(&a_store, "job", "a-stale", WriteOptions::default())
        .await
    {
        Err(Error::LockLost { key }) => assert_eq!(key, "leader"),
        other => panic!("expected LockLost, got {other:?}"),
    }
    let mut b_lock = b_store
        .new_lock("leader", LockOptions::default().value("b"))
        .await
        .unwrap();
    let b_lease = b_lock.lock().await.unwrap();
    assert!(b_lease.fencing_token() > a_lease.fencing_token());
    match a_lease
        .guarded_put(&a_store, "job", "a-stale", WriteOptions::default())
        .await
    {
        Err(Error::LockLost { .. }) => {}
        other => panic!("expected LockLost after the takeover, got {other:?}"),
    }
    let b_pair = b_lease
        .guarded_put(&b_store, "job", "b-1", WriteOptions::default())
        .await
        .unwrap();
    assert_eq!(
        a_store.get("job", ReadOptions::default()).await.unwrap(),
        Some(b_pair)
    );

    // Deleted by another handle: lost too, and the stale holder writes nothing.
    b_store.delete("leader").await.unwrap();
    match b_lease.guarded_delete(&b_store, "job").await {
        Err(Error::LockLost { .. }) => {}
        other => panic!("expected LockLost after a delete, got {other:?}"),
    }
    assert!(a_store.exists("job", ReadOptions::default()).await.unwrap());
    drop(a_lock);
    drop(b_lock);
    a_store.delete_tree("").await.unwrap();
    a_store.close().await.unwrap();
    b_store.close().await.unwrap();
}

/// Redis Cluster co-location: keys of one namespace tagged `{…}` share a slot; untagged keys
/// usually do not, and `transaction_slot` names the cross-slot pair with `InvalidOption`
/// (what a Cluster connection will answer). On one server such a transaction still commits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transaction_slots_for_redis_cluster() {
    use kv_core::{Condition, Transaction};
    let tagged = store_with_prefix(&format!("{}{{1}}", unique("slot"))).await;
    let txn = Transaction::new()
        .when(Condition::absent("x"))
        .put("a", "1", WriteOptions::default())
        .put("b/c", "2", WriteOptions::default());
    let slot = tagged.transaction_slot(&txn).unwrap();
    assert_eq!(slot, Some(fred::util::redis_keyslot(b"1")));
    assert_eq!(tagged.transaction_slot(&Transaction::new()).unwrap(), None);

    let ns = unique("slot");
    let plain = store_with_prefix(&ns).await;
    let same = Transaction::new()
        .put("orders/{42}/total", "1", WriteOptions::default())
        .put("orders/{42}/lines", "2", WriteOptions::default());
    // The namespace has no tag, so the key's own `{42}` decides.
    assert_eq!(
        plain.transaction_slot(&same).unwrap(),
        Some(fred::util::redis_keyslot(b"42"))
    );
    let slot = |key: &str| fred::util::redis_keyslot(plain.value_key(key).as_bytes());
    let a = "a";
    let b = (0..)
        .map(|i| format!("b{i}"))
        .find(|b| slot(b) != slot(a))
        .unwrap();
    let cross = Transaction::new().put(a, "1", WriteOptions::default()).put(
        &b,
        "2",
        WriteOptions::default(),
    );
    match plain.transaction_slot(&cross) {
        Err(Error::InvalidOption(message)) => {
            assert!(
                message.contains("hash tag") && message.contains(&b),
                "{message}"
            )
        }
        other => panic!("expected InvalidOption, got {other:?}"),
    }
    assert_eq!(plain.transaction(cross).await.unwrap().len(), 2);
    plain.delete_tree("").await.unwrap();
    tagged.close().await.unwrap();
    plain.close().await.unwrap();
}

/// `get` reads the value and its metadata with two plain commands, not atomically: every pair
/// it returns must still be one that existed. Writers replace and delete the key as fast as
/// they can while readers check each pair read against what was written at that index.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_without_a_script_never_mixes_two_writes() {
    use std::collections::HashMap;
    use std::sync::Mutex;
    let store = store_with_prefix(&unique("get-race")).await;
    let written: Arc<Mutex<HashMap<u64, Bytes>>> = Arc::default();
    let stop = Instant::now() + Duration::from_secs(2);
    let writer = {
        let (store, written) = (store.clone(), written.clone());
        tokio::spawn(async move {
            let mut n = 0u64;
            let mut previous: Option<KvPair> = None;
            while Instant::now() < stop {
                n += 1;
                if n.is_multiple_of(7) {
                    store.delete("k").await.unwrap();
                    previous = None;
                    continue;
                }
                // One writer: every CAS succeeds and tells the index it wrote.
                let value = Bytes::from(format!("value {n}"));
                let pair = store
                    .atomic_put(
                        "k",
                        value.clone(),
                        previous.as_ref(),
                        WriteOptions::default(),
                    )
                    .await
                    .unwrap();
                written.lock().unwrap().insert(pair.last_index, value);
                previous = Some(pair);
            }
            n
        })
    };
    let mut checked = 0;
    let mut last = 0;
    while Instant::now() < stop {
        if let Some(pair) = store.get("k", ReadOptions::default()).await.unwrap() {
            assert!(pair.last_index >= last, "indexes never go back");
            last = pair.last_index;
            if let Some(value) = written.lock().unwrap().get(&pair.last_index) {
                assert_eq!(
                    value, &pair.value,
                    "index {} with another write's value",
                    pair.last_index
                );
                checked += 1;
            }
        }
    }
    let writes = writer.await.unwrap();
    assert!(
        checked > 10,
        "{checked} reads checked against {writes} writes"
    );
    store.delete_tree("").await.unwrap();
    store.close().await.unwrap();
}
