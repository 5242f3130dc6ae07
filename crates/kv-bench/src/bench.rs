//! The workloads and their measurement: one generic loop per operation, run the same way on
//! every [`Target`], so ours and the raw client do the same work.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::target::{Cas, Target};

/// The operations measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Op {
    /// `get` of an existing key.
    Get,
    /// `put` (overwrite) of a 64-byte value.
    Put,
    /// `exists` of an existing key.
    Exists,
    /// `delete` of a key just written (only the delete is timed).
    Delete,
    /// `atomic_put` on the worker's own key, previous from the last write.
    Cas,
    /// read + `atomic_put` on ONE key shared by 8 clients (a lost race counts as done).
    CasContended,
    /// `list` of 1,000 keys in a namespace of 10,000.
    List,
    /// put on one handle → item on another handle's watch.
    Watch,
    /// lock acquire + release.
    Lock,
    /// transaction: 2 puts, each conditioned on its key's version.
    Txn,
}

impl Op {
    /// Every op, in report order.
    pub const ALL: [Op; 10] = [
        Op::Get,
        Op::Put,
        Op::Exists,
        Op::Delete,
        Op::Cas,
        Op::CasContended,
        Op::List,
        Op::Watch,
        Op::Lock,
        Op::Txn,
    ];

    /// Short name (also the Go driver's op name).
    pub fn name(self) -> &'static str {
        match self {
            Op::Get => "get",
            Op::Put => "put",
            Op::Exists => "exists",
            Op::Delete => "delete",
            Op::Cas => "atomic_put",
            Op::CasContended => "atomic_put_contended",
            Op::List => "list",
            Op::Watch => "watch",
            Op::Lock => "lock",
            Op::Txn => "transaction",
        }
    }

    /// True for the ops whose windows write nothing (see `main.rs`, `settle`).
    pub fn is_read_only(self) -> bool {
        matches!(self, Op::Get | Op::Exists | Op::List)
    }

    /// The concurrencies this op runs at.
    pub fn concurrencies(self) -> &'static [usize] {
        match self {
            Op::CasContended => &[8],
            Op::Watch => &[1],
            _ => &[1, 64],
        }
    }
}

/// The result of one measurement window.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    /// Completed operations.
    pub ops: u64,
    /// Failed operations.
    pub errors: u64,
    /// Conditional writes that lost a race (contended CAS).
    pub conflicts: u64,
    /// Operations per second over the window.
    pub ops_per_sec: f64,
    /// Median latency, µs.
    pub p50_us: f64,
    /// 99th percentile latency, µs.
    pub p99_us: f64,
    /// The first error seen, if any.
    pub first_error: Option<String>,
}

/// How long and how much to measure.
#[derive(Debug, Clone)]
pub struct Window {
    /// Measured time.
    pub duration: Duration,
    /// Stop after this many operations (smoke mode).
    pub max_ops: Option<u64>,
}

/// A fixed 64-byte value.
pub fn value64() -> Bytes {
    Bytes::from_static(&[b'v'; 64])
}

/// A unique value of about 64 bytes (conditional writes: raw Redis compares values).
fn unique_value(w: usize, i: u64, nonce: u64) -> Bytes {
    Bytes::from(format!("{nonce:016x}-{w:04}-{i:012}-{:->28}", ""))
}

/// Number of keys `get`/`exists` read from (written by the fixture).
pub const FIXTURE_KEYS: usize = 100;

/// Writes what the reads need: [`FIXTURE_KEYS`] keys under `fixture/`, and the list
/// namespace: `listns/listed/…` (`list_n` keys) and `listns/other/…` (the rest of `ns_n`).
pub async fn fixture<T: Target>(t: &Arc<T>, list_n: usize, ns_n: usize) -> Result<(), String> {
    let mut keys: Vec<String> = (0..FIXTURE_KEYS)
        .map(|i| format!("fixture/k{i:03}"))
        .collect();
    for i in 0..ns_n {
        let dir = if i < list_n { "listed" } else { "other" };
        keys.push(format!("listns/{dir}/k{i:06}"));
    }
    let keys = Arc::new(keys);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..64 {
        let (t, keys, next) = (t.clone(), keys.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(k) = keys.get(i) else { return Ok(()) };
                let mut tries = 0;
                while let Err(e) = t.put(k, value64()).await {
                    tries += 1;
                    if tries == 5 {
                        return Err(format!("fixture put {k}: {e}"));
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }));
    }
    for task in tasks {
        task.await.map_err(|e| e.to_string())??;
    }
    Ok(())
}

#[derive(Default)]
struct WorkerOut {
    lat_ns: Vec<u64>,
    errors: u64,
    conflicts: u64,
    first_error: Option<String>,
}

impl WorkerOut {
    fn err(&mut self, e: String) {
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(e);
        }
    }
}

/// Runs `op` at `conc` workers sharing `t` for one window; keys under `base/`.
pub async fn measure<T: Target>(
    t: &Arc<T>,
    op: Op,
    conc: usize,
    base: &str,
    window: &Window,
) -> Stats {
    let nonce = rand::random::<u64>();
    // Shared per-window state.
    let watch_rx = if op == Op::Watch {
        let key = format!("{base}/watched");
        if let Err(e) = t.put(&key, value64()).await {
            return failed(e);
        }
        match t.watch(&key).await {
            Ok(Some(rx)) => Some(Arc::new(tokio::sync::Mutex::new(rx))),
            Ok(None) => return Stats::default(),
            Err(e) => return failed(e),
        }
    } else {
        None
    };
    if op == Op::CasContended {
        let key = format!("{base}/hot");
        if let Ok(None) = t.get(&key).await
            && let Err(e) = t.cas(&key, unique_value(0, 0, nonce), None).await
        {
            return failed(e);
        }
    }
    // Every worker first picks up its keys' state (untimed), then all start together.
    let barrier = Arc::new(tokio::sync::Barrier::new(conc + 1));
    let budget = Arc::new(std::sync::atomic::AtomicI64::new(
        window.max_ops.map(|n| n as i64).unwrap_or(i64::MAX),
    ));
    let mut tasks = Vec::with_capacity(conc);
    for w in 0..conc {
        let t = t.clone();
        let base = base.to_owned();
        let budget = budget.clone();
        let watch_rx = watch_rx.clone();
        let barrier = barrier.clone();
        let duration = window.duration;
        tasks.push(tokio::spawn(async move {
            let mut out = WorkerOut::default();
            let mut prev: Option<T::Ver> = None;
            let mut prev2: Option<(T::Ver, T::Ver)> = None;
            // Untimed: pick up the state of the worker's own CAS/transaction keys.
            match op {
                Op::Cas => prev = t.get(&format!("{base}/cas/w{w}")).await.ok().flatten(),
                Op::Txn => {
                    let a = t.get(&format!("{base}/txn/w{w}/a")).await.ok().flatten();
                    let b = t.get(&format!("{base}/txn/w{w}/b")).await.ok().flatten();
                    prev2 = a.zip(b);
                }
                _ => {}
            }
            barrier.wait().await;
            let deadline = Instant::now() + duration;
            let mut i: u64 = 0;
            while Instant::now() < deadline
                && budget.fetch_sub(1, std::sync::atomic::Ordering::Relaxed) > 0
            {
                // An op that completes without waiting (an embedded read) never yields: the
                // task would hold its worker thread for its whole window, and the 64 tasks
                // would run one after another. Yield whenever tokio's cooperative budget is
                // spent, as a server task would, so the workers interleave.
                tokio::task::consume_budget().await;
                i += 1;
                let mut t0 = Instant::now();
                let r: Result<(), String> = match op {
                    Op::Get => t
                        .get(&format!(
                            "fixture/k{:03}",
                            (w * 7 + i as usize) % FIXTURE_KEYS
                        ))
                        .await
                        .and_then(|v| v.map(drop).ok_or_else(|| "fixture key missing".into())),
                    Op::Exists => t
                        .exists(&format!(
                            "fixture/k{:03}",
                            (w * 7 + i as usize) % FIXTURE_KEYS
                        ))
                        .await
                        .and_then(|v| {
                            if v {
                                Ok(())
                            } else {
                                Err("fixture key missing".into())
                            }
                        }),
                    Op::Put => {
                        // A new value each time: a store may skip rewriting an identical
                        // value (Consul does), and ours must not (every write raises the index).
                        t.put(
                            &format!("{base}/put/w{w}/k{}", i % 100),
                            unique_value(w, i, nonce),
                        )
                        .await
                    }
                    Op::Delete => {
                        let key = format!("{base}/del/w{w}/k{}", i % 100);
                        match t.put(&key, value64()).await {
                            Ok(()) => {
                                t0 = Instant::now();
                                t.delete(&key).await.and_then(|d| {
                                    if d {
                                        Ok(())
                                    } else {
                                        Err("delete: key was absent".into())
                                    }
                                })
                            }
                            Err(e) => Err(e),
                        }
                    }
                    Op::Cas => {
                        let key = format!("{base}/cas/w{w}");
                        match t.cas(&key, unique_value(w, i, nonce), prev.as_ref()).await {
                            Ok(Cas::Done(v)) => {
                                prev = Some(v);
                                Ok(())
                            }
                            Ok(Cas::Conflict) => {
                                prev = t.get(&key).await.ok().flatten();
                                Err("uncontended CAS conflicted".into())
                            }
                            Err(e) => Err(e),
                        }
                    }
                    Op::CasContended => {
                        let key = format!("{base}/hot");
                        match t.get(&key).await {
                            Ok(cur) => {
                                match t.cas(&key, unique_value(w, i, nonce), cur.as_ref()).await {
                                    Ok(Cas::Done(_)) => Ok(()),
                                    Ok(Cas::Conflict) => {
                                        out.conflicts += 1;
                                        Ok(())
                                    }
                                    Err(e) => Err(e),
                                }
                            }
                            Err(e) => Err(e),
                        }
                    }
                    Op::List => t.list("listns/listed").await.map(drop),
                    Op::Lock => t.lock_cycle(&format!("{base}/lock/w{w}")).await,
                    Op::Txn => {
                        let (a, b) = (format!("{base}/txn/w{w}/a"), format!("{base}/txn/w{w}/b"));
                        let p = prev2.as_ref().map(|(x, y)| (x, y));
                        match t.txn(&a, &b, p, unique_value(w, i, nonce)).await {
                            Ok(Cas::Done(v)) => {
                                prev2 = Some(v);
                                Ok(())
                            }
                            Ok(Cas::Conflict) => {
                                let x = t.get(&a).await.ok().flatten();
                                let y = t.get(&b).await.ok().flatten();
                                prev2 = x.zip(y);
                                Err("uncontended transaction conflicted".into())
                            }
                            Err(e) => Err(e),
                        }
                    }
                    Op::Watch => {
                        let rx = watch_rx.as_ref().expect("watch receiver");
                        let mut rx = rx.lock().await;
                        while rx.try_recv().is_ok() {}
                        t0 = Instant::now();
                        match t
                            .put(&format!("{base}/watched"), unique_value(w, i, nonce))
                            .await
                        {
                            Ok(()) => match tokio::time::timeout(Duration::from_secs(5), rx.recv())
                                .await
                            {
                                Ok(Some(())) => Ok(()),
                                Ok(None) => Err("watch ended".into()),
                                Err(_) => Err("no watch event within 5 s".into()),
                            },
                            Err(e) => Err(e),
                        }
                    }
                };
                match r {
                    Ok(()) => out.lat_ns.push(t0.elapsed().as_nanos() as u64),
                    Err(e) => {
                        out.err(e);
                        // A failing server must not turn the loop into a busy spin.
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                }
            }
            out
        }));
    }
    barrier.wait().await;
    let start = Instant::now();
    let mut lat = Vec::new();
    let mut stats = Stats::default();
    for task in tasks {
        match task.await {
            Ok(out) => {
                lat.extend(out.lat_ns);
                stats.errors += out.errors;
                stats.conflicts += out.conflicts;
                if stats.first_error.is_none() {
                    stats.first_error = out.first_error;
                }
            }
            Err(e) => {
                stats.errors += 1;
                stats.first_error.get_or_insert(e.to_string());
            }
        }
    }
    let secs = start.elapsed().as_secs_f64();
    lat.sort_unstable();
    stats.ops = lat.len() as u64;
    stats.ops_per_sec = stats.ops as f64 / secs.max(1e-9);
    stats.p50_us = percentile(&lat, 0.50);
    stats.p99_us = percentile(&lat, 0.99);
    stats
}

fn failed(e: String) -> Stats {
    Stats {
        errors: 1,
        first_error: Some(e),
        ..Stats::default()
    }
}

fn percentile(sorted_ns: &[u64], p: f64) -> f64 {
    if sorted_ns.is_empty() {
        return 0.0;
    }
    let i = ((sorted_ns.len() - 1) as f64 * p).round() as usize;
    sorted_ns[i] as f64 / 1000.0
}
