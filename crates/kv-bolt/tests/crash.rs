//! Crash safety with real processes: a child process (this test binary, re-run in child mode)
//! writes to a database and reports every acknowledged write on stdout; the parent SIGKILLs it
//! at a random moment, reopens the database and checks that nothing acknowledged was lost and
//! that fencing tokens keep rising. With the default durability.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use kv_bolt::{BoltStore, Config};
use kv_core::{Error, LockOptions, ReadOptions, Store, WriteOptions};
use rand::Rng;

#[path = "support/layout.rs"]
mod layout;

const CHILD_MODE: &str = "KV_BOLT_CRASH_CHILD";
const CHILD_PATH: &str = "KV_BOLT_CRASH_PATH";
/// How many kill-and-reopen rounds each scenario runs.
const ROUNDS: usize = 8;

/// Starts this test binary as a child running `mode` on the database at `path`.
fn spawn_child(mode: &str, path: &Path) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_process",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_MODE, mode)
        .env(CHILD_PATH, path)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// The child's stdout lines that start with `tag`, as they arrive.
fn lines(child: &mut Child, tag: &'static str) -> mpsc::Receiver<Vec<u64>> {
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            // The test harness may print its own words before ours on the first line.
            if let Some((_, rest)) = line.split_once(tag) {
                let numbers = rest
                    .split_whitespace()
                    .filter_map(|n| n.parse().ok())
                    .collect();
                if tx.send(numbers).is_err() {
                    return;
                }
            }
        }
    });
    rx
}

/// The child's side: runs until killed.
#[test]
fn child_process() {
    let Ok(mode) = std::env::var(CHILD_MODE) else {
        // Run as a plain test: nothing to do.
        return;
    };
    let path = std::env::var(CHILD_PATH).unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let started = std::time::Instant::now();
        if mode == "open" {
            println!("migration 0");
        }
        let store = BoltStore::open(Config::new(&path)).await.unwrap();
        match mode.as_str() {
            // Opening moves a database of the old layout; say when it is done and how long it
            // took, then idle until killed.
            "open" => {
                println!("migration 1 {}", started.elapsed().as_millis());
                std::future::pending::<()>().await;
            }
            "cas" => loop {
                let current = store.get("counter", ReadOptions::default()).await.unwrap();
                let n: u64 = current
                    .as_ref()
                    .map(|p| std::str::from_utf8(&p.value).unwrap().parse().unwrap())
                    .unwrap_or(0);
                let written = store
                    .atomic_put(
                        "counter",
                        (n + 1).to_string().into(),
                        current.as_ref(),
                        WriteOptions::default(),
                    )
                    .await
                    .unwrap();
                println!("ack {} {}", n + 1, written.last_index);
            },
            "lock" => {
                let mut lock = store
                    .new_lock(
                        "the-lock",
                        LockOptions::default().ttl(Duration::from_secs(1)),
                    )
                    .await
                    .unwrap();
                let lease = lock.lock().await.unwrap();
                println!("locked {}", lease.fencing_token());
                // Keep writing, so the kill lands while the engine is busy.
                for i in 0u64.. {
                    store
                        .put("noise", i.to_string().into(), WriteOptions::default())
                        .await
                        .unwrap();
                }
            }
            other => panic!("unknown child mode {other}"),
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let mut last_acked = (0u64, 0u64);
    for round in 0..ROUNDS {
        let mut child = spawn_child("cas", &path);
        let acks = lines(&mut child, "ack ");
        let kill_after = rand::rng().random_range(1..300);
        let mut seen = 0;
        while seen < kill_after {
            let ack = acks
                .recv_timeout(Duration::from_secs(20))
                .unwrap_or_else(|e| panic!("round {round}: the child stopped acknowledging: {e}"));
            last_acked = (ack[0], ack[1]);
            seen += 1;
        }
        child.kill().unwrap();
        child.wait().unwrap();
        // Lines already written before the kill were acknowledged too.
        while let Ok(ack) = acks.recv_timeout(Duration::from_millis(200)) {
            last_acked = (ack[0], ack[1]);
        }
        let store = BoltStore::open(Config::new(&path)).await.unwrap();
        let pair = store
            .get("counter", ReadOptions::default())
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("round {round}: the counter is gone after the crash"));
        let n: u64 = std::str::from_utf8(&pair.value).unwrap().parse().unwrap();
        assert!(
            n >= last_acked.0 && pair.last_index >= last_acked.1,
            "round {round}: acknowledged write {last_acked:?} lost: found {n} at index {}",
            pair.last_index
        );
        store.close().await.unwrap();
    }
    println!(
        "acknowledged_writes_survive_sigkill: {ROUNDS} kills, last acknowledged counter {}",
        last_acked.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_killed_after_acquiring_never_repeats_its_token() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let mut last_token = 0;
    for round in 0..ROUNDS {
        let mut child = spawn_child("lock", &path);
        let locked = lines(&mut child, "locked ");
        let token = locked
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|e| panic!("round {round}: the child never locked: {e}"))[0];
        // Killed right after acquiring (a random few milliseconds later at most).
        std::thread::sleep(Duration::from_millis(rand::rng().random_range(0..5)));
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(
            token > last_token,
            "round {round}: token {token} after {last_token}"
        );
        let store = BoltStore::open(Config::new(&path)).await.unwrap();
        let mut lock = store
            .new_lock(
                "the-lock",
                LockOptions::default().ttl(Duration::from_secs(1)),
            )
            .await
            .unwrap();
        // The dead holder's lease runs out within its TTL (1 s) plus the sweeper's precision.
        let lease = tokio::time::timeout(Duration::from_secs(5), lock.lock())
            .await
            .unwrap_or_else(|_| panic!("round {round}: the dead holder's lock never expired"))
            .unwrap();
        assert!(
            lease.fencing_token() > token,
            "round {round}: the next holder got token {} after the killed holder's {token}",
            lease.fencing_token()
        );
        last_token = lease.fencing_token();
        lock.unlock().await.unwrap();
        store.close().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_held_by_a_live_process_is_refused_then_taken_after_its_death() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let mut child = spawn_child("cas", &path);
    let acks = lines(&mut child, "ack ");
    acks.recv_timeout(Duration::from_secs(20)).unwrap();
    let config = Config::builder()
        .path(&path)
        .lock_timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let refused = BoltStore::open(config.clone()).await;
    assert!(
        matches!(refused, Err(Error::Unavailable { .. })),
        "{refused:?}"
    );
    child.kill().unwrap();
    child.wait().unwrap();
    let store = BoltStore::open(config).await.unwrap();
    assert!(
        store
            .get("counter", ReadOptions::default())
            .await
            .unwrap()
            .is_some()
    );
    store.close().await.unwrap();
}

/// Keys of the old-layout database the migration test moves: enough that moving them takes
/// tens of milliseconds, so that random kills land inside the move.
const MIGRATED_KEYS: u64 = 6_000;

fn old_layout_keys() -> Vec<(String, Vec<u8>, u64, u64)> {
    (0..MIGRATED_KEYS)
        .map(|i| (format!("k/{i:05}"), vec![(i % 251) as u8; 512], i + 1, 0))
        .collect()
}

/// A fresh database of the two-table layout of earlier builds, at `path`.
fn write_old_layout(path: &Path, keys: &[(String, Vec<u8>, u64, u64)]) {
    std::fs::create_dir_all(path).unwrap();
    let refs: Vec<(&str, &[u8], u64, u64)> = keys
        .iter()
        .map(|(k, v, i, d)| (k.as_str(), v.as_slice(), *i, *d))
        .collect();
    layout::write_two_table_layout(&path.join("kv.redb"), &refs, MIGRATED_KEYS);
}

/// Opening a database of the old layout moves it in one write transaction. A process killed
/// at any moment of that move must leave a database that opens with every key, value and
/// index (the old layout whole, or the new one whole), never a mix or a loss.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_during_the_layout_migration_loses_nothing() {
    let keys = old_layout_keys();

    // How long a whole move takes in a child, to aim the kills.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    write_old_layout(&path, &keys);
    let mut child = spawn_child("open", &path);
    let steps = lines(&mut child, "migration ");
    let move_ms = loop {
        let step = steps
            .recv_timeout(Duration::from_secs(60))
            .expect("the calibrating child never finished opening");
        if step[0] == 1 {
            break step[1];
        }
    };
    child.kill().unwrap();
    child.wait().unwrap();

    let mut interrupted = 0;
    for round in 0..ROUNDS {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        write_old_layout(&path, &keys);
        let mut child = spawn_child("open", &path);
        let steps = lines(&mut child, "migration ");
        let first = steps
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|e| panic!("round {round}: the child never started opening: {e}"));
        assert_eq!(first, [0]);
        let delay = rand::rng().random_range(0..=move_ms * 3 / 2 + 1);
        std::thread::sleep(Duration::from_millis(delay));
        child.kill().unwrap();
        child.wait().unwrap();
        // No "done" line: the kill landed before the open returned.
        let finished = std::iter::from_fn(|| steps.recv_timeout(Duration::from_millis(200)).ok())
            .any(|step| step[0] == 1);
        if !finished {
            interrupted += 1;
        }

        let store = BoltStore::open(Config::new(&path)).await.unwrap();
        let listed = store.list("k", ReadOptions::default()).await.unwrap();
        assert_eq!(
            listed.len() as u64,
            MIGRATED_KEYS,
            "round {round} (killed after {delay} ms, finished: {finished}): keys lost"
        );
        for (pair, (key, value, index, _)) in listed.iter().zip(&keys) {
            assert_eq!(
                (pair.key.as_str(), &pair.value[..], pair.last_index),
                (key.as_str(), value.as_slice(), *index),
                "round {round} (killed after {delay} ms): a key changed"
            );
        }
        store.close().await.unwrap();
        assert!(
            !layout::has_old_tables(&path.join("kv.redb")),
            "round {round}: the old tables are still there after a complete open"
        );
    }
    println!(
        "a_kill_during_the_layout_migration_loses_nothing: a move takes {move_ms} ms; \
         {interrupted} of {ROUNDS} kills landed before the open returned"
    );
    assert!(
        interrupted > 0,
        "no kill landed inside the move ({move_ms} ms): the test did not test the crash"
    );
}
