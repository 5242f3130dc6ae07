//! # kv-faults: the contract's promises, tried under faults
//!
//! The conformance suite ([`kv-conformance`]) proves each call's behaviour on a healthy store.
//! This crate tries the promises coordination users rely on while things go wrong, on every
//! backend, and checks the *histories* the clients record rather than single outcomes:
//!
//! | scenario | fault | checked |
//! | --- | --- | --- |
//! | [`scenarios::register_under_cancellation`] | several clients on one key, every call cut short by a random `timeout` now and then | the history is linearizable ([`linearizability`], Wing–Gong with Lowe's memoisation; a call cut short may or may not have taken effect); a watcher's states never go backwards and end on the final value |
//! | [`scenarios::locks_under_cancellation`] | several clients contend for one lock; `lock()` cut short at random moments, some holders dropped instead of unlocked | no two holders at once (an independent witness), fencing tokens strictly rising in acquisition order, no task left, the lock free at the end |
//! | [`scenarios::killed_holder`] | a real child process holding the lock is killed with SIGKILL | the next holder gets the lock within TTL + precision and a higher fencing token |
//! | [`scenarios::paused_holder`] | a real child process holding the lock is stopped (SIGSTOP) for longer than its TTL, then continued | another client takes the lock meanwhile with a higher token; the resumed holder's lease reports the loss promptly |
//! | [`restart::server_restart`] | a private server killed with SIGKILL under live clients (acknowledged writes, a held lock, a guarded write, an open watch), then started again with its data or from empty | calls during the outage fail transiently within the request timeout; clients recover alone; no acknowledged write lost when the data survives; the lock never has two holders, tokens rise when the data survives, the old holder's guarded write is refused; the watch reaches the new state or ends with an `Err`, never silent |
//!
//! | [`failover::failover`] | one member of a real cluster (`scripts/servers up --cluster`) killed or paused — its leader, or the member the clients use — under CAS increments, a held lock with a contender, watches on a key and a subtree, a TTL key | failing calls fail transiently within the request timeout and the same handles recover (figure: recovery time); the counter equals the acknowledged increments (Redis without `WAIT`: the loss measured); never two holders, tokens rising; the watches reach the final value or end with an `Err`; the TTL key expires on time |
//!
//! The embedded store has no server to kill: its process crashes are the killed-holder
//! scenario and `kv-bolt`'s own crash test (a writer SIGKILLed right after acknowledged writes).
//!
//! Each scenario is a public async function, like the conformance cases, taking a [`Target`]
//! (independent handles to one store, and a way to start a child process on it); each
//! prints its figures as one `FAULTS …` line and, with `KV_FAULTS_REPORT=<file>`, appends them
//! to that file, from which `scripts/reliability` writes `docs/reliability.md`.
//!
//! The length of each scenario is `KV_FAULTS_SECS` seconds (default 4): short in the test
//! command, as long as you like for a soak (`KV_FAULTS_SECS=120 scripts/reliability`).
//!
//! [`kv-conformance`]: https://docs.rs/kv-conformance

pub mod child;
pub mod failover;
pub mod history;
pub mod linearizability;
pub mod locks;
mod observe;
pub mod report;
pub mod restart;
pub mod scenarios;

use std::process::Command;
use std::sync::Arc;

use kv_core::{Result, Store};

/// The store under test, as the scenarios reach it.
#[async_trait::async_trait]
pub trait Target: Send + Sync + 'static {
    /// The backend's short name (`etcd`, `bolt`…), for reports.
    fn name(&self) -> &'static str;

    /// A new independent handle (own connection, session, tasks) to the store.
    async fn connect(&self) -> Result<Arc<dyn Store>>;

    /// A command that starts a child process which connects to the same store and runs
    /// [`child::run`] with `mode` (the test binary re-running itself, usually).
    fn child(&self, mode: &str) -> Command;

    /// True when only one process at a time can open the store (an embedded database): the
    /// process scenarios then connect only after the child has died, and the paused-holder
    /// scenario does not apply.
    fn single_process(&self) -> bool {
        false
    }
}

/// How long each scenario runs: `KV_FAULTS_SECS`, default 4 s.
pub fn scenario_length() -> std::time::Duration {
    let secs = std::env::var("KV_FAULTS_SECS")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(4);
    std::time::Duration::from_secs(secs.max(1))
}

/// The runtime each scenario test runs on: two workers, like the machine the suite targets.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}
