//! A bounded stress run of the embedded engine: many concurrent writers on one database (new
//! keys, overwrites, compare-and-swap loops, deletes, TTL keys the sweeper expires, lock
//! cycles) plus readers, all through one handle. Every call must succeed: a single `Timeout`
//! or other error fails the run. It prints the throughput and the longest stretch in which no
//! call completed, so a stalling engine shows up even before calls time out.
//!
//! Short in the test command (`KV_BOLT_STRESS_SECS`, default 6 s); the long run is
//! `KV_BOLT_STRESS_SECS=60 cargo test --release -p kv-bolt --test stress -- --nocapture`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use kv_bolt::{BoltStore, Config};
use kv_core::{Error, LockOptions, ReadOptions, Store, WriteOptions};

const WRITERS: usize = 64;

/// `KV_BOLT_STRESS_MIX=puts` makes every call a `put` of a new or overwritten key (the
/// benchmark's write phase); the default mixes every kind of write.
fn puts_only() -> bool {
    std::env::var("KV_BOLT_STRESS_MIX").is_ok_and(|m| m == "puts")
}

fn run_for() -> Duration {
    let secs = std::env::var("KV_BOLT_STRESS_SECS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(6);
    Duration::from_secs(secs)
}

#[derive(Default)]
struct Counters {
    done: AtomicU64,
    /// Milliseconds since the start at which the latest call completed.
    last_done_ms: AtomicU64,
    longest_gap_ms: AtomicU64,
}

impl Counters {
    fn completed(&self, started: Instant) {
        self.done.fetch_add(1, Ordering::Relaxed);
        let now = started.elapsed().as_millis() as u64;
        let previous = self.last_done_ms.swap(now, Ordering::Relaxed);
        self.longest_gap_ms
            .fetch_max(now.saturating_sub(previous), Ordering::Relaxed);
    }
}

async fn writer(
    store: Arc<BoltStore>,
    id: usize,
    until: Instant,
    started: Instant,
    counters: Arc<Counters>,
) -> Result<(), (String, Error)> {
    let value = Bytes::from(vec![b'x'; 100]);
    let mut round = 0u64;
    let puts_only = puts_only();
    while Instant::now() < until {
        round += 1;
        let key = format!("stress/{id}/{}", round % 5000);
        let kind = if puts_only { 0 } else { round % 8 };
        let what = match kind {
            // New keys and overwrites.
            0..=2 => store
                .put(&key, value.clone(), WriteOptions::default())
                .await
                .map(|_| "put"),
            // Keys with a short TTL, for the sweeper.
            3 => store
                .put(
                    &format!("stress/ttl/{id}/{round}"),
                    value.clone(),
                    WriteOptions::with_ttl(Duration::from_millis(100)),
                )
                .await
                .map(|_| "put ttl"),
            // A compare-and-swap on a key every writer shares.
            4 => {
                let shared = format!("stress/shared/{}", round % 4);
                loop {
                    let current = store.get(&shared, ReadOptions::default()).await;
                    let current = current.map_err(|e| ("get".to_owned(), e))?;
                    match store
                        .atomic_put(
                            &shared,
                            value.clone(),
                            current.as_ref(),
                            WriteOptions::default(),
                        )
                        .await
                    {
                        Ok(_) => break Ok("cas"),
                        Err(Error::KeyExists { .. } | Error::KeyModified { .. }) => continue,
                        Err(Error::KeyNotFound { .. }) => continue,
                        Err(e) => break Err(e),
                    }
                }
            }
            5 => store.delete(&key).await.map(|_| "delete"),
            6 => store
                .list(&format!("stress/{id}"), ReadOptions::default())
                .await
                .map(|_| "list"),
            // A lock cycle every few rounds, on a key shared by eight writers.
            _ => {
                let mut lock = store
                    .new_lock(
                        &format!("stress/locks/{}", id % 8),
                        LockOptions::default().ttl(Duration::from_secs(2)),
                    )
                    .await
                    .map_err(|e| ("new_lock".to_owned(), e))?;
                lock.lock().await.map_err(|e| ("lock".to_owned(), e))?;
                lock.unlock().await.map(|_| "lock cycle")
            }
        };
        what.map_err(|e| (format!("writer {id} round {round}"), e))?;
        counters.completed(started);
    }
    Ok(())
}

#[test]
fn concurrent_writers_never_stall() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(
            BoltStore::open(Config::new(dir.path().join("db")))
                .await
                .unwrap(),
        );
        let counters = Arc::new(Counters::default());
        let started = Instant::now();
        let until = started + run_for();
        let writers: Vec<_> = (0..WRITERS)
            .map(|id| {
                tokio::spawn(writer(
                    store.clone(),
                    id,
                    until,
                    started,
                    counters.clone(),
                ))
            })
            .collect();
        let mut failures = Vec::new();
        for writer in writers {
            if let Err((what, error)) = writer.await.unwrap() {
                failures.push(format!("{what}: {error}"));
            }
        }
        let elapsed = started.elapsed();
        // A stall that lasted until the calls gave up counts too.
        counters.completed(started);
        let done = counters.done.load(Ordering::Relaxed) - 1;
        println!(
            "kv-bolt stress ({}): {WRITERS} writers, {done} calls in {elapsed:.1?} ({:.0} calls/s), longest stretch without a completed call {} ms, {} failed writers",
            if puts_only() { "puts" } else { "mixed" },
            done as f64 / elapsed.as_secs_f64(),
            counters.longest_gap_ms.load(Ordering::Relaxed),
            failures.len()
        );
        assert!(failures.is_empty(), "calls failed: {failures:#?}");
        assert!(done > 0, "no call completed");
        store.close().await.unwrap();
    });
}
