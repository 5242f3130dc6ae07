//! What needs a server of its own: a private etcd (the same `etcd` binary that
//! `scripts/servers` installs) on free ports, per test: stopped and restarted (failure modes),
//! with authentication enabled, with mutual TLS.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use kv_core::{Error, LockOptions, ReadOptions, Store, WriteOptions};
use kv_etcd::{Config, EtcdStore};

/// A private single-member etcd; killed (by its own pid) when dropped.
struct PrivateEtcd {
    child: Option<Child>,
    data: PathBuf,
    client_port: u16,
    peer_port: u16,
    /// Extra server flags (TLS).
    extra: Vec<String>,
    scheme: &'static str,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl PrivateEtcd {
    fn start() -> Self {
        Self::start_with("http", Vec::new())
    }

    fn start_with(scheme: &'static str, extra: Vec<String>) -> Self {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let mut etcd = PrivateEtcd {
            child: None,
            data: std::env::temp_dir().join(format!("kv-etcd-restart-{nanos}")),
            client_port: free_port(),
            peer_port: free_port(),
            extra,
            scheme,
        };
        etcd.spawn();
        etcd
    }

    fn url(&self) -> String {
        format!("{}://127.0.0.1:{}", self.scheme, self.client_port)
    }

    fn spawn(&mut self) {
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let child = Command::new("etcd")
            .args(["--name", "restart-test", "--data-dir"])
            .arg(&self.data)
            .args(["--listen-client-urls", &self.url()])
            .args(["--advertise-client-urls", &self.url()])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("restart-test={peer}")])
            .args(["--initial-cluster-state", "new", "--unsafe-no-fsync"])
            .args(&self.extra)
            .args([
                "--logger",
                "zap",
                "--log-outputs",
                "stderr",
                "--log-level",
                "error",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect(
                "cannot run `etcd`: install the server with `scripts/servers install etcd` \
                 (Debian etcd-server)",
            );
        self.child = Some(child);
    }

    /// Waits until the server accepts connections.
    async fn ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        if self.scheme == "https" {
            while std::net::TcpStream::connect(("127.0.0.1", self.client_port)).is_err() {
                assert!(Instant::now() < deadline, "private etcd did not start");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            return;
        }
        loop {
            let attempt = async {
                let mut client = etcd_client::Client::connect([self.url()], None).await?;
                client.get("ready", None).await
            };
            if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_millis(500), attempt).await {
                return;
            }
            assert!(Instant::now() < deadline, "private etcd did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for PrivateEtcd {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.data);
    }
}

async fn connect(url: &str) -> EtcdStore {
    let config = Config::builder()
        .endpoint(url)
        .request_timeout(Duration::from_secs(1))
        .connect_timeout(Duration::from_secs(2))
        .keep_alive(Some(Duration::from_secs(5)))
        .build()
        .unwrap();
    EtcdStore::connect(config).await.unwrap()
}

/// While the server is down, calls fail with a transient error within the request timeout;
/// watches survive the outage, resume from the last seen revision and report what changed
/// meanwhile; a lock with a TTL longer than the outage stays held; after a restart
/// everything works on the same handle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_and_locks_survive_a_server_restart() {
    let mut etcd = PrivateEtcd::start();
    etcd.ready().await;
    let store = connect(&etcd.url()).await;
    store
        .put("k", "before".into(), WriteOptions::default())
        .await
        .unwrap();
    let mut watch = store.watch("k", ReadOptions::default()).await.unwrap();
    let mut tree = store.watch_tree("", ReadOptions::default()).await.unwrap();
    let first = watch.next().await.unwrap().unwrap().unwrap();
    assert_eq!(first.value, "before");
    assert_eq!(tree.next().await.unwrap().unwrap().len(), 1);
    let mut lock = store
        .new_lock("lock", LockOptions::default().ttl(Duration::from_secs(20)))
        .await
        .unwrap();
    let lease = lock.lock().await.unwrap();

    etcd.stop();
    let started = Instant::now();
    let down = store.get("k", ReadOptions::default()).await;
    assert!(
        matches!(down, Err(ref e) if e.is_transient()),
        "server down: {down:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "within the timeout"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;

    etcd.spawn();
    etcd.ready().await;
    // Changes made by someone else right after the restart, before the watch reconnects.
    let other = connect(&etcd.url()).await;
    other
        .put("k", "during".into(), WriteOptions::default())
        .await
        .unwrap();
    other
        .put("added", "x".into(), WriteOptions::default())
        .await
        .unwrap();
    let item = tokio::time::timeout(Duration::from_secs(15), watch.next())
        .await
        .expect("the watch resumes after the restart")
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(item.value, "during");
    assert!(item.last_index > first.last_index);
    let snapshot = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            let s = tree.next().await.unwrap().unwrap();
            if s.iter().any(|p| p.key == "added") {
                return s;
            }
        }
    })
    .await
    .expect("the tree watch resumes");
    let keys: Vec<_> = snapshot.iter().map(|p| p.key.as_str()).collect();
    assert_eq!(keys, ["added", "k", "lock"]);
    assert!(lease.is_held(), "a 20 s lock survives a short outage");
    other
        .put("k", "after".into(), WriteOptions::default())
        .await
        .unwrap();
    let item = tokio::time::timeout(Duration::from_secs(5), watch.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(item.value, "after");
    lock.unlock().await.expect("unlock after the restart");
    assert!(!other.exists("lock", ReadOptions::default()).await.unwrap());
    store.close().await.unwrap();
    assert!(matches!(watch.next().await, Some(Err(Error::Closed))));
    tasks_end(&store).await;
    other.close().await.unwrap();
}

/// A lock whose server stays away longer than its TTL is reported lost by the holder,
/// before etcd could hand it to anyone else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_is_lost_when_renewal_fails_for_a_whole_ttl() {
    let mut etcd = PrivateEtcd::start();
    etcd.ready().await;
    let store = connect(&etcd.url()).await;
    let ttl = store.capabilities().min_ttl.max(Duration::from_secs(2));
    let mut lock = store
        .new_lock("lock", LockOptions::default().ttl(ttl))
        .await
        .unwrap();
    let lease = lock.lock().await.unwrap();
    etcd.stop();
    let started = Instant::now();
    let state = tokio::time::timeout(ttl + Duration::from_secs(2), lease.lost())
        .await
        .expect("lost within the TTL");
    assert_eq!(state, kv_core::LockState::Lost);
    assert!(started.elapsed() <= ttl + Duration::from_millis(200));
    assert!(matches!(lock.unlock().await, Err(Error::LockLost { .. })));
    tasks_end(&store).await;
    store.close().await.unwrap();
}

async fn tasks_end(store: &EtcdStore) {
    let deadline = Instant::now() + Duration::from_secs(3);
    while store.background_tasks() > 0 {
        assert!(Instant::now() < deadline, "background tasks left");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// With authentication enabled on the server: wrong credentials are `PermissionDenied` at
/// connection, a user confined to a prefix works inside it (namespace = that prefix: every
/// call, watches and locks included) and gets `PermissionDenied` outside it, as a call error
/// and as a watch's last item.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_and_permissions() {
    use etcd_client::Permission;
    let etcd = PrivateEtcd::start();
    etcd.ready().await;
    let mut admin = etcd_client::Client::connect([etcd.url()], None)
        .await
        .unwrap();
    admin.user_add("root", "rootpw", None).await.unwrap();
    admin.role_add("root").await.unwrap();
    admin.user_grant_role("root", "root").await.unwrap();
    admin.user_add("app", "apppw", None).await.unwrap();
    admin.role_add("app-rw").await.unwrap();
    admin
        .role_grant_permission("app-rw", Permission::read_write("app/").with_prefix())
        .await
        .unwrap();
    admin.user_grant_role("app", "app-rw").await.unwrap();
    admin.auth_enable().await.unwrap();

    let config = |user: &str, password: &str, namespace: &str| {
        Config::builder()
            .endpoint(etcd.url())
            .credentials(user, password)
            .namespace(namespace)
            .connect_timeout(Duration::from_secs(3))
            .build()
            .unwrap()
    };
    let started = Instant::now();
    match EtcdStore::connect(config("app", "wrong", "app")).await {
        Err(Error::PermissionDenied { .. }) => {}
        other => panic!("wrong password: {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(2));
    match EtcdStore::connect(config("nobody", "x", "app")).await {
        Err(Error::PermissionDenied { .. }) => {}
        other => panic!("unknown user: {other:?}"),
    }

    let store = EtcdStore::connect(config("app", "apppw", "app"))
        .await
        .unwrap();
    store
        .put(
            "a/b",
            "v".into(),
            WriteOptions::with_ttl(Duration::from_secs(30)),
        )
        .await
        .unwrap();
    assert_eq!(
        store.list("", ReadOptions::default()).await.unwrap().len(),
        1
    );
    let mut watch = store.watch("a/b", ReadOptions::default()).await.unwrap();
    assert!(watch.next().await.unwrap().unwrap().is_some());
    let mut lock = store.new_lock("l", LockOptions::default()).await.unwrap();
    lock.lock().await.unwrap();
    lock.unlock().await.unwrap();
    store.delete_tree("a").await.unwrap();
    assert!(watch.next().await.unwrap().unwrap().is_none());

    let outside = EtcdStore::connect(config("app", "apppw", "other"))
        .await
        .unwrap();
    match outside.put("k", "v".into(), WriteOptions::default()).await {
        Err(Error::PermissionDenied { .. }) => {}
        other => panic!("write outside the permitted prefix: {other:?}"),
    }
    match outside.get("k", ReadOptions::default()).await {
        Err(Error::PermissionDenied { .. }) => {}
        other => panic!("read outside the permitted prefix: {other:?}"),
    }
    let mut denied = outside.watch("k", ReadOptions::default()).await.unwrap();
    let item = tokio::time::timeout(Duration::from_secs(5), denied.next())
        .await
        .expect("the watch reports the refusal")
        .unwrap();
    assert!(
        matches!(item, Err(Error::PermissionDenied { .. })),
        "watch outside the permitted prefix: {item:?}"
    );
    assert!(denied.next().await.is_none(), "the error is the last item");
    store.close().await.unwrap();
    outside.close().await.unwrap();
}

/// Writes a throw-away CA, a server certificate for 127.0.0.1 and a client certificate into
/// `dir` with the `openssl` command (servers.md §0.1).
fn make_certificates(dir: &std::path::Path) {
    std::fs::create_dir_all(dir).unwrap();
    let script = r#"
set -e
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=test-ca -keyout ca.key -out ca.crt
printf '%s\n' basicConstraints=CA:FALSE keyUsage=digitalSignature,keyEncipherment extendedKeyUsage=serverAuth,clientAuth subjectAltName=IP:127.0.0.1,DNS:localhost > server.ext
openssl req -newkey rsa:2048 -nodes -subj /CN=localhost -keyout server.key -out server.csr
openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 -extfile server.ext -out server.crt
printf '%s\n' basicConstraints=CA:FALSE keyUsage=digitalSignature,keyEncipherment extendedKeyUsage=clientAuth > client.ext
openssl req -newkey rsa:2048 -nodes -subj /CN=test-client -keyout client.key -out client.csr
openssl x509 -req -in client.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 -extfile client.ext -out client.crt
"#;
    let status = Command::new("bash")
        .args(["-c", script])
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("the `openssl` command is needed to make test certificates");
    assert!(status.success(), "making test certificates failed");
}

/// TLS with client certificates (mutual TLS): the CA and identity from files (as `from_url`
/// names them) or inline PEM; without a client certificate the server refuses the handshake,
/// which is a typed error, not a hang.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls() {
    use kv_etcd::{Pem, TlsConfig};
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let certs = std::env::temp_dir().join(format!("kv-etcd-certs-{nanos}"));
    let certs_for_blocking = certs.clone();
    tokio::task::spawn_blocking(move || make_certificates(&certs_for_blocking))
        .await
        .unwrap();
    let path = |name: &str| certs.join(name).to_str().unwrap().to_owned();
    let etcd = PrivateEtcd::start_with(
        "https",
        vec![
            "--cert-file".into(),
            path("server.crt"),
            "--key-file".into(),
            path("server.key"),
            "--trusted-ca-file".into(),
            path("ca.crt"),
            "--client-cert-auth".into(),
        ],
    );
    etcd.ready().await;

    let url = format!(
        "etcds://127.0.0.1:{}/secure?ca_file={}&cert_file={}&key_file={}&connect_timeout=5s",
        etcd.client_port,
        path("ca.crt"),
        path("client.crt"),
        path("client.key")
    );
    let store = EtcdStore::connect_url(&url)
        .await
        .expect("mutual TLS by URL");
    store
        .put("k", "over tls".into(), WriteOptions::default())
        .await
        .unwrap();

    let inline = TlsConfig::with_ca(Pem::Inline(std::fs::read(path("ca.crt")).unwrap()))
        .client_identity(
            Pem::Inline(std::fs::read(path("client.crt")).unwrap()),
            Pem::File(path("client.key").into()),
        );
    let config = Config::builder()
        .endpoint(format!("127.0.0.1:{}", etcd.client_port))
        .tls(inline)
        .namespace("secure")
        .build()
        .unwrap();
    let second = EtcdStore::connect(config).await.expect("mutual TLS inline");
    assert_eq!(
        second
            .get("k", ReadOptions::default())
            .await
            .unwrap()
            .unwrap()
            .value,
        "over tls"
    );

    let no_identity = Config::builder()
        .endpoint(etcd.url())
        .tls(TlsConfig::with_ca(Pem::File(path("ca.crt").into())))
        .connect_timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let started = Instant::now();
    match EtcdStore::connect(no_identity).await {
        Err(e) if e.is_transient() => {}
        other => panic!("no client certificate: {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(4));
    match EtcdStore::connect_url(&format!(
        "etcds://127.0.0.1:{}?ca_file=/nonexistent/ca.pem",
        etcd.client_port
    ))
    .await
    {
        Err(Error::Config(_)) => {}
        other => panic!("unreadable CA file: {other:?}"),
    }
    store.close().await.unwrap();
    second.close().await.unwrap();
    drop(etcd);
    let _ = std::fs::remove_dir_all(&certs);
}

/// Reads until `read` gives `Ok(false)` ("absent"), every 50 ms, for at most `limit` after
/// `since`; returns when it first did (errors, as while the server restarts, count as
/// "not yet").
async fn absent_after<F, Fut>(since: Instant, limit: Duration, mut read: F) -> Option<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = kv_core::Result<bool>>,
{
    while since.elapsed() < limit {
        if let Ok(false) = read().await {
            return Some(since.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

/// etcd 3.4 restores every lease to its full TTL when it restarts, so a TTL key written just
/// before a crash would stay a whole extra TTL. It must still be gone for every reader within
/// `ttl + ttl_precision` of its write: `get`, `exists`, `list`, watches opened before the crash
/// and after the restart, and then `delete` and create-only `atomic_put` treat it as absent
/// and the server itself has deleted it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttl_keys_expire_on_time_across_a_server_restart() {
    let mut etcd = PrivateEtcd::start();
    etcd.ready().await;
    let store = connect(&etcd.url()).await;
    let caps = store.capabilities().clone();
    let ttl = caps.min_ttl.max(Duration::from_secs(4));
    let bound = ttl + caps.ttl_precision + Duration::from_secs(1);

    let mut early_watch = store.watch("ttl/k", ReadOptions::default()).await.unwrap();
    assert_eq!(early_watch.next().await.unwrap().unwrap(), None);
    let mut early_tree = store
        .watch_tree("ttl", ReadOptions::default())
        .await
        .unwrap();
    assert!(early_tree.next().await.unwrap().unwrap().is_empty());

    let written = Instant::now();
    for key in ["ttl/k", "cas", "del"] {
        store
            .put(key, "v".into(), WriteOptions::with_ttl(ttl))
            .await
            .unwrap();
    }
    etcd.stop(); // SIGKILL right after the writes
    let killed = written.elapsed();
    // Any state after the initial one that lacks the key reports its expiry (the watch may
    // coalesce its appearance away: it happened during the outage).
    let early_watch = tokio::spawn(async move {
        loop {
            match early_watch.next().await {
                Some(Ok(None)) => return written.elapsed(),
                Some(Ok(Some(_))) => {}
                other => panic!("watch: {other:?}"),
            }
        }
    });
    let early_tree = tokio::spawn(async move {
        loop {
            match early_tree.next().await {
                Some(Ok(snapshot)) if snapshot.is_empty() => return written.elapsed(),
                Some(Ok(_)) => {}
                other => panic!("watch_tree: {other:?}"),
            }
        }
    });

    // A short outage, then the same data directory again: etcd restores the lease to its
    // full TTL, so on its own it would delete the key after about restart + TTL + 1 s.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    etcd.spawn();
    etcd.ready().await;
    let restarted = written.elapsed();
    assert!(
        restarted < ttl,
        "the restart took until {restarted:?}, past the TTL"
    );
    // Not expired early: the key is still there before its TTL.
    let mut late_watch = store.watch("ttl/k", ReadOptions::default()).await.unwrap();
    let first = tokio::time::timeout(Duration::from_secs(5), late_watch.next())
        .await
        .expect("the first state")
        .unwrap()
        .unwrap();
    assert!(
        first.is_some() || written.elapsed() >= ttl,
        "a {ttl:?} key gone {:?} after its write",
        written.elapsed()
    );
    let late_watch = tokio::spawn(async move {
        loop {
            match late_watch.next().await {
                Some(Ok(None)) => return written.elapsed(),
                Some(Ok(Some(_))) => {}
                other => panic!("watch: {other:?}"),
            }
        }
    });

    let limit = ttl * 2 + Duration::from_secs(10);
    let get = absent_after(written, limit, || async {
        Ok(store.get("ttl/k", ReadOptions::default()).await?.is_some())
    });
    let exists = absent_after(written, limit, || {
        store.exists("ttl/k", ReadOptions::stale())
    });
    let list = absent_after(written, limit, || async {
        Ok(!store.list("ttl", ReadOptions::default()).await?.is_empty())
    });
    let (get, exists, list) = tokio::join!(get, exists, list);
    let watched = |task: tokio::task::JoinHandle<Duration>| async {
        tokio::time::timeout(limit.saturating_sub(written.elapsed()), task)
            .await
            .ok()
            .map(Result::unwrap)
    };
    let (early_watch, early_tree, late_watch) = (
        watched(early_watch).await,
        watched(early_tree).await,
        watched(late_watch).await,
    );

    // Past `ttl + ttl_precision`, keys nobody read since are absent for writes too.
    tokio::time::sleep((ttl + caps.ttl_precision).saturating_sub(written.elapsed())).await;
    let deleted = store.delete("del").await;
    let created = store
        .atomic_put("cas", "new".into(), None, WriteOptions::default())
        .await;
    let mut raw = etcd_client::Client::connect([etcd.url()], None)
        .await
        .unwrap();
    let server_has = raw.get("ttl/k", None).await.unwrap().count();
    eprintln!(
        "a {ttl:?} key written before a SIGKILL at {killed:?}, restart at {restarted:?}: \
         gone for get after {get:?}, exists {exists:?}, list {list:?}, the watch opened \
         before the crash {early_watch:?}, watch_tree {early_tree:?}, the watch opened after \
         the restart {late_watch:?} (bound {bound:?})"
    );
    for (what, gone) in [
        ("get", get),
        ("exists", exists),
        ("list", list),
        ("the watch opened before the crash", early_watch),
        ("the watch_tree opened before the crash", early_tree),
        ("the watch opened after the restart", late_watch),
    ] {
        let gone = gone.unwrap_or_else(|| panic!("{what}: the key never went away"));
        assert!(
            gone <= bound,
            "{what}: a {ttl:?} key visible until {gone:?} after its write (bound {bound:?})"
        );
        assert!(
            gone >= ttl,
            "{what}: a {ttl:?} key gone early, after {gone:?}"
        );
    }
    assert_eq!(server_has, 0, "the server deleted the expired key");
    assert!(
        matches!(deleted, Ok(false)),
        "delete of an expired key: {deleted:?}"
    );
    created.expect("create-only atomic_put over an expired key");
    store.close().await.unwrap();
}

/// `delete_tree("")` on a store without namespace deletes exactly what `list("")` shows:
/// keys written by other programs that break the key rules (`/registry/…`, `a//b`, `a/`,
/// `__kv` segments, non-UTF-8) stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_tree_of_the_root_keeps_what_list_does_not_show() {
    let etcd = PrivateEtcd::start();
    etcd.ready().await;
    let store = connect(&etcd.url()).await;
    let mut raw = etcd_client::Client::connect([etcd.url()], None)
        .await
        .unwrap();
    for key in ["a", "a/b", "k", "registry/x"] {
        store
            .put(key, "mine".into(), WriteOptions::default())
            .await
            .unwrap();
    }
    let foreign: [&[u8]; 6] = [
        b"/registry/pods/x",
        b"a//b",
        b"a/",
        b"x/__kvlock/y",
        b"\xff\xfe",
        b"k/",
    ];
    for key in foreign {
        raw.put(key, "foreign", None).await.unwrap();
    }
    let listed: Vec<String> = store
        .list("", ReadOptions::default())
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.key)
        .collect();
    assert_eq!(listed, ["a", "a/b", "k", "registry/x"]);
    store.delete_tree("").await.unwrap();
    assert!(
        store
            .list("", ReadOptions::default())
            .await
            .unwrap()
            .is_empty()
    );
    let all = raw
        .get(
            vec![0],
            Some(
                etcd_client::GetOptions::new()
                    .with_all_keys()
                    .with_keys_only(),
            ),
        )
        .await
        .unwrap();
    // Printable and exact: non-UTF-8 bytes escaped.
    let mut left: Vec<String> = all
        .kvs()
        .iter()
        .map(|kv| kv.key().escape_ascii().to_string())
        .collect();
    let mut expected: Vec<String> = foreign
        .iter()
        .map(|k| k.escape_ascii().to_string())
        .collect();
    left.sort();
    expected.sort();
    assert_eq!(
        left, expected,
        "exactly the keys list never showed are left"
    );
    store.close().await.unwrap();
}
