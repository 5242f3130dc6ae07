//! The child process's side of the process scenarios. The test binary re-runs itself with
//! [`MODE_VAR`] set; its child entry point connects to the store under test and calls [`run`],
//! which reports on stdout, one line per event, until the process is killed.

use std::sync::Arc;
use std::time::Duration;

use kv_core::{LockOptions, LockState, Store};

/// The environment variable carrying the child's mode (`hold`).
pub const MODE_VAR: &str = "KV_FAULTS_CHILD";
/// The environment variable carrying the lock key.
pub const KEY_VAR: &str = "KV_FAULTS_KEY";
/// The environment variable carrying the lock TTL in milliseconds.
pub const TTL_VAR: &str = "KV_FAULTS_TTL_MS";

/// The environment variable carrying how long `try-lock` waits, in milliseconds.
pub const WAIT_VAR: &str = "KV_FAULTS_WAIT_MS";

/// Runs the child's part, printing one line per event, then stays alive until killed. Every
/// mode first prints `clock <unix ms>` (its wall clock, skewed or not).
///
/// * `hold` takes the lock at `$KV_FAULTS_KEY` with `$KV_FAULTS_TTL_MS`, prints
///   `locked <token>`, then `ended <state>` when the lease ends.
/// * `try-lock` waits up to `$KV_FAULTS_WAIT_MS` for that lock: `try-lock acquired <token>` or
///   `try-lock busy`.
/// * `read` prints `read present` or `read absent` for the key.
pub async fn run(store: Arc<dyn Store>, mode: &str) {
    let key = std::env::var(KEY_VAR).unwrap_or_else(|_| panic!("{KEY_VAR} not set"));
    let ttl_ms: u64 = std::env::var(TTL_VAR)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{TTL_VAR} not set"));
    let clock = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    println!("clock {clock}");
    match mode {
        "try-lock" => {
            let wait: u64 = std::env::var(WAIT_VAR)
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{WAIT_VAR} not set"));
            let mut lock = store
                .new_lock(
                    &key,
                    LockOptions::default()
                        .value("skewed")
                        .ttl(Duration::from_millis(ttl_ms)),
                )
                .await
                .unwrap_or_else(|e| panic!("child: new_lock: {e}"));
            match tokio::time::timeout(Duration::from_millis(wait), lock.lock()).await {
                Ok(Ok(lease)) => println!("try-lock acquired {}", lease.fencing_token()),
                Ok(Err(error)) => panic!("child: lock: {error}"),
                Err(_) => println!("try-lock busy"),
            }
            std::future::pending::<()>().await;
        }
        "read" => {
            let found = store
                .get(&key, kv_core::ReadOptions::default())
                .await
                .unwrap_or_else(|e| panic!("child: get: {e}"));
            println!(
                "read {}",
                if found.is_some() { "present" } else { "absent" }
            );
            std::future::pending::<()>().await;
        }
        "hold" => {
            let mut lock = store
                .new_lock(
                    &key,
                    LockOptions::default()
                        .value("child")
                        .ttl(Duration::from_millis(ttl_ms)),
                )
                .await
                .unwrap_or_else(|e| panic!("child: new_lock: {e}"));
            let lease = lock
                .lock()
                .await
                .unwrap_or_else(|e| panic!("child: lock: {e}"));
            println!("locked {}", lease.fencing_token());
            let state = lease.lost().await;
            let state = match state {
                LockState::Held => "held",
                LockState::Released => "released",
                LockState::Lost => "lost",
            };
            println!("ended {state}");
            // Stay alive (and keep the handle open) until killed.
            std::future::pending::<()>().await;
        }
        other => panic!("unknown child mode {other:?}"),
    }
}
