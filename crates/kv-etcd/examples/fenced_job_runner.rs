//! A fenced job runner: the paused-leader scenario of Martin Kleppmann's "How to do
//! distributed locking", executed against a real etcd.
//!
//! Two worker processes run the same job: whoever holds the lock `jobs/leader` writes the
//! job's progress to `jobs/output`, every write guarded by the lock (`LockLease::guarded_put`:
//! the server commits it only while this acquisition still holds the lock). The example:
//!
//! 1. starts worker A, which takes the lock and writes;
//! 2. freezes A with SIGSTOP (a long GC pause, a VM migration…) for longer than the lock's TTL;
//! 3. starts worker B, which gets the lock once A's lease has expired, and writes;
//! 4. resumes A with SIGCONT. A still believes it is the leader and tries its next write: the
//!    server refuses it (`Error::LockLost`) and A steps down. B's work is intact.
//!
//! ```text
//! cargo run -p kv-etcd --example fenced_job_runner                   # etcd at $KV_TEST_ETCD_ENDPOINTS
//! cargo run -p kv-etcd --example fenced_job_runner -- etcd://127.0.0.1:2379
//! ```
//!
//! Exits with 0 when the stale leader was refused, 1 otherwise.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant};

use kv_core::{Error, LockOptions, ReadOptions, Store, WriteOptions};
use kv_etcd::{Config, EtcdStore};

const LOCK_KEY: &str = "jobs/leader";
const OUTPUT_KEY: &str = "jobs/output";
const LOCK_TTL: Duration = Duration::from_secs(2);
const STEP: Duration = Duration::from_millis(300);

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("worker") => worker(&args[1], &args[2]),
        url => coordinator(url.map(str::to_owned).unwrap_or_else(default_url)),
    }
}

fn default_url() -> String {
    let endpoint = std::env::var("KV_TEST_ETCD_ENDPOINTS")
        .ok()
        .and_then(|e| e.split(',').next().map(str::to_owned))
        .unwrap_or_else(|| "http://127.0.0.1:2379".to_owned());
    let host = endpoint
        .split_once("://")
        .map_or(endpoint.as_str(), |(_, h)| h);
    // Each run works in a namespace of its own.
    format!("etcd://{host}/fenced-job-runner-{}", std::process::id())
}

/// One worker: take the lock, then write progress under it until the server refuses.
fn worker(name: &str, url: &str) -> ExitCode {
    let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime");
    runtime.block_on(async {
        let store = match Config::from_url(url) {
            Ok(config) => EtcdStore::connect(config).await,
            Err(e) => Err(e),
        };
        let store = match store {
            Ok(store) => store,
            Err(e) => {
                println!("{name}: cannot connect: {e}");
                return ExitCode::from(2);
            }
        };
        let options = LockOptions::default().value(name.to_owned()).ttl(LOCK_TTL);
        let mut lock = store.new_lock(LOCK_KEY, options).await.expect("new_lock");
        let lease = lock.lock().await.expect("lock");
        println!("{name}: leader (fencing token {})", lease.fencing_token());
        for step in 1.. {
            tokio::time::sleep(STEP).await;
            let progress = format!("{name} step {step} (token {})", lease.fencing_token());
            match lease
                .guarded_put(&store, OUTPUT_KEY, progress, WriteOptions::default())
                .await
            {
                Ok(_) => println!("{name}: wrote step {step}"),
                Err(Error::LockLost { .. }) => {
                    println!("{name}: write refused, the lock is no longer mine: stepping down");
                    return ExitCode::SUCCESS;
                }
                Err(e) => {
                    println!("{name}: write failed: {e}");
                    return ExitCode::from(2);
                }
            }
        }
        ExitCode::SUCCESS
    })
}

/// A worker process and the lines it prints.
struct Worker {
    name: &'static str,
    child: Child,
    lines: Receiver<String>,
}

impl Worker {
    fn start(name: &'static str, url: &str) -> Worker {
        let mut child = Command::new(std::env::current_exe().expect("this program's path"))
            .args(["worker", name, url])
            .stdout(Stdio::piped())
            .spawn()
            .expect("start a worker");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Worker { name, child, lines }
    }

    /// Echoes the worker's lines until one contains `wanted`; the lines seen on the way.
    fn wait_for(&self, wanted: &str, limit: Duration) -> Result<Vec<String>, String> {
        let deadline = Instant::now() + limit;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    println!("  | {line}");
                    let found = line.contains(wanted);
                    seen.push(line);
                    if found {
                        return Ok(seen);
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    return Err(format!(
                        "{} did not print {wanted:?} within {limit:?}",
                        self.name
                    ));
                }
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(format!("{} exited before printing {wanted:?}", self.name));
                }
            }
        }
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([format!("-{signal}"), self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} {}", self.child.id());
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn coordinator(url: String) -> ExitCode {
    match run(&url) {
        Ok(()) => {
            println!(
                "OK: the paused former leader's write was refused; the new leader's work is intact"
            );
            ExitCode::SUCCESS
        }
        Err(why) => {
            println!("FAILED: {why}");
            ExitCode::from(1)
        }
    }
}

fn run(url: &str) -> Result<(), String> {
    println!("store: {url}");
    let a = Worker::start("A", url);
    a.wait_for("A: wrote step 1", Duration::from_secs(30))?;

    println!(
        "pausing A (SIGSTOP) for {:?}, longer than its lock's TTL",
        LOCK_TTL * 3
    );
    a.signal("STOP");
    let b = Worker::start("B", url);
    b.wait_for("B: leader", LOCK_TTL * 6)?;
    b.wait_for("B: wrote step 1", Duration::from_secs(10))?;
    std::thread::sleep((LOCK_TTL * 3).saturating_sub(LOCK_TTL));

    // What A printed before it froze is still in the pipe: take it out first.
    while let Ok(line) = a.lines.try_recv() {
        println!("  | {line}   (before the pause)");
    }
    println!("resuming A (SIGCONT): it still thinks it leads");
    a.signal("CONT");
    let after_resume = a.wait_for("refused", Duration::from_secs(10))?;
    if after_resume.iter().any(|line| line.contains("wrote")) {
        return Err("the paused leader's write was ACCEPTED after B took over".to_owned());
    }

    b.wait_for("B: wrote", Duration::from_secs(10))?;
    let output = read_output(url)?;
    if !output.starts_with("B ") {
        return Err(format!("{OUTPUT_KEY} holds {output:?}, not B's progress"));
    }
    println!("{OUTPUT_KEY} = {output:?}");
    Ok(())
}

fn read_output(url: &str) -> Result<String, String> {
    let runtime = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
    runtime.block_on(async {
        let config = Config::from_url(url).map_err(|e| e.to_string())?;
        let store = EtcdStore::connect(config)
            .await
            .map_err(|e| e.to_string())?;
        let pair = store
            .get(OUTPUT_KEY, ReadOptions::default())
            .await
            .map_err(|e| e.to_string())?
            .ok_or("no output written")?;
        store.delete_tree("").await.map_err(|e| e.to_string())?;
        let _ = store.close().await;
        Ok(String::from_utf8_lossy(&pair.value).into_owned())
    })
}
