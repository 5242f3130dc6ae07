//! Failure modes that need a server to go away: a private etcd (the same `etcd` binary that
//! `scripts/servers` installs) on free ports, stopped and restarted by the test.

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
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let mut etcd = PrivateEtcd {
            child: None,
            data: std::env::temp_dir().join(format!("kv-etcd-restart-{nanos}")),
            client_port: free_port(),
            peer_port: free_port(),
        };
        etcd.spawn();
        etcd
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
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

    /// Waits until the server answers a read.
    async fn ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
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
