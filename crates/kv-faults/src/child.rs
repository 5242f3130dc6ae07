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

/// Runs the child's part: `hold` takes the lock at `$KV_FAULTS_KEY` with `$KV_FAULTS_TTL_MS`,
/// prints `locked <token>`, then `lost <state>` when the lease ends, and stays alive.
pub async fn run(store: Arc<dyn Store>, mode: &str) {
    let key = std::env::var(KEY_VAR).unwrap_or_else(|_| panic!("{KEY_VAR} not set"));
    let ttl_ms: u64 = std::env::var(TTL_VAR)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{TTL_VAR} not set"));
    match mode {
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
