//! The per-database writer thread (which also sweeps expired keys) ends when the database's last handle goes. In its own test
//! binary so that no other test's database runs a writer meanwhile.

use std::time::{Duration, Instant};

use kv_bolt::{BoltStore, Config};
use kv_core::{Store, WriteOptions};

/// Threads of this process named `kv-bolt-writer` (Linux: /proc/self/task/*/comm).
fn writers() -> usize {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|name| name.trim() == "kv-bolt-writer")
        .count()
}

async fn wait_for_writers(expected: usize) {
    let deadline = Instant::now() + Duration::from_secs(3);
    while writers() != expected {
        assert!(
            Instant::now() < deadline,
            "{} writer threads, expected {expected}",
            writers()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_writer_thread_ends_with_the_last_handle() {
    if !std::path::Path::new("/proc/self/task").exists() {
        panic!("this test reads thread names from /proc (Linux)");
    }
    let dir = tempfile::tempdir().unwrap();
    let one = BoltStore::open(Config::new(dir.path().join("db")))
        .await
        .unwrap();
    let two = BoltStore::open(Config::new(dir.path().join("db")))
        .await
        .unwrap();
    let temp = BoltStore::open(Config::temporary()).await.unwrap();
    one.put(
        "k",
        "v".into(),
        WriteOptions::with_ttl(Duration::from_secs(60)),
    )
    .await
    .unwrap();
    wait_for_writers(2).await;
    one.close().await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        writers(),
        2,
        "the path's database stays open for the other handle"
    );
    drop(two);
    wait_for_writers(1).await;
    temp.close().await.unwrap();
    wait_for_writers(0).await;
}
