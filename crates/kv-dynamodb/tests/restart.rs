//! What needs a server this test may stop: a private in-memory DynamoDB Local (the jar and
//! loopback launcher `scripts/servers install dynamodb` caches) on a free port, restarted
//! under the watches of a handle. The shared server is never touched.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures::StreamExt;
use kv_core::{ReadOptions, Store, WriteOptions};
use kv_dynamodb::{Config, DynamoStore};

use kv_test_support::free_port;
use kv_test_support::server::dynamodb_local_home;

fn subdirectory(parent: &Path, prefix: &str) -> Option<PathBuf> {
    std::fs::read_dir(parent)
        .ok()?
        .filter_map(|entry| entry.ok())
        .find(|entry| entry.file_name().to_string_lossy().starts_with(prefix))
        .map(|entry| entry.path())
}

/// A private in-memory DynamoDB Local, launched as `scripts/servers` launches the shared one;
/// killed (by its own pid) when dropped.
struct PrivateDynamo {
    child: Option<Child>,
    port: u16,
    tmp: PathBuf,
}

impl PrivateDynamo {
    fn start() -> Self {
        let port = free_port();
        let tmp = std::env::temp_dir().join(format!("kv-dynamodb-restart-{port}"));
        let mut server = PrivateDynamo {
            child: None,
            port,
            tmp,
        };
        server.spawn();
        server
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn spawn(&mut self) {
        let home = dynamodb_local_home();
        let dist = subdirectory(&home, "dynamodb_local_").expect("DynamoDBLocal.jar's directory");
        std::fs::create_dir_all(&self.tmp).unwrap();
        let classpath = format!(
            "{}:{}:{}/*",
            home.join("launcher").display(),
            dist.join("DynamoDBLocal.jar").display(),
            dist.join("DynamoDBLocal_lib").display()
        );
        let child = Command::new("java")
            .args(["-Xmx256m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1"])
            .arg(format!("-Djava.io.tmpdir={}", self.tmp.display()))
            .arg(format!(
                "-Dsqlite4java.library.path={}",
                dist.join("DynamoDBLocal_lib").display()
            ))
            .args(["-cp", &classpath, "BindLoopback", "-inMemory", "-sharedDb"])
            .args(["-port", &self.port.to_string(), "-disableTelemetry"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting java");
        self.child = Some(child);
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn restart(&mut self) {
        self.stop();
        self.spawn();
    }
}

impl Drop for PrivateDynamo {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.tmp);
    }
}

fn config(endpoint: String) -> Config {
    Config::new("kv_restart")
        .endpoint(endpoint)
        .region("us-east-1")
        .static_credentials("kvtest", "kvtest")
        .namespace("ns")
        .create_table(true)
        .request_timeout(Duration::from_secs(10))
        .poll_interval(Duration::from_millis(100))
}

/// Connects (creating the table) once the server answers, within a minute (a JVM start).
async fn connect_when_up(config: Config) -> DynamoStore {
    let give_up = Instant::now() + Duration::from_secs(60);
    loop {
        match DynamoStore::connect(config.clone()).await {
            Ok(store) => return store,
            Err(error) if Instant::now() < give_up => {
                let _ = error;
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(error) => panic!("the private DynamoDB Local did not come up: {error}"),
        }
    }
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

/// DynamoDB Local restarted in memory under open watches: the table, and so its stream, is
/// gone; created again it has a new stream. The watches retry while the server is down,
/// then find the new stream, re-read (the key is gone) and report the next write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_follow_an_in_memory_dynamodb_local_restart() {
    let mut server = PrivateDynamo::start();
    let store = connect_when_up(config(server.endpoint())).await;
    assert!(store.watches_use_streams());
    store
        .put("w/k", "before".into(), WriteOptions::default())
        .await
        .unwrap();
    let mut watch = store.watch("w/k", ReadOptions::default()).await.unwrap();
    let mut tree = store.watch_tree("w", ReadOptions::default()).await.unwrap();
    let bound = Duration::from_secs(15);
    until(&mut watch, bound, "first", |s| {
        s.as_ref().is_some_and(|p| p.value == "before")
    })
    .await;
    until(&mut tree, bound, "first tree", |s: &Vec<_>| s.len() == 1).await;

    server.restart();
    // The table is created again, the way the crate creates it, by a second handle.
    let creator = connect_when_up(config(server.endpoint())).await;
    let started = Instant::now();
    until(
        &mut watch,
        bound,
        "watch after the restart",
        Option::is_none,
    )
    .await;
    until(
        &mut tree,
        bound,
        "watch_tree after the restart",
        Vec::is_empty,
    )
    .await;
    eprintln!(
        "the watches re-read {:?} after the table was back",
        started.elapsed()
    );
    store
        .put("w/k", "after".into(), WriteOptions::default())
        .await
        .expect("the same handle writes to the new table");
    until(
        &mut watch,
        bound,
        "watch of a write after the restart",
        |s| s.as_ref().is_some_and(|p| p.value == "after"),
    )
    .await;
    until(
        &mut tree,
        bound,
        "watch_tree of a write after the restart",
        |s| s.len() == 1 && s[0].value == "after",
    )
    .await;
    drop((watch, tree));
    store.close().await.unwrap();
    creator.close().await.unwrap();
    assert_eq!(store.background_tasks(), 0);
}
