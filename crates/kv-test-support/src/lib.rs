//! # kv-test-support: scaffolding shared by the test suites
//!
//! What every backend's tests and the fault suite would otherwise each repeat:
//!
//! * [`env`]: a required `KV_TEST_*` variable, failing the test (never skipping it) with the
//!   command that sets it;
//! * [`free_port`] / [`free_ports`] and [`temp_dir`];
//! * [`server::PrivateServer`]: a private etcd, Consul, ZooKeeper, Redis or DynamoDB Local,
//!   started from the same binaries `scripts/servers` installs, on free loopback ports, that a
//!   test may kill with SIGKILL and start again with or without its data.
//!
//! No test here mocks a store: these are the real servers.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

pub mod server;

/// A required environment variable: its value, or a panic that says how to set it. A test
/// whose server is missing must fail, never pass silently.
pub fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} not set: run the README test command or `eval \"$(scripts/servers env)\"`")
    })
}

/// A loopback port nothing listens on now.
pub fn free_port() -> u16 {
    free_ports(1)[0]
}

/// `n` distinct loopback ports nothing listens on now.
pub fn free_ports(n: usize) -> Vec<u16> {
    // Held open together so that the kernel hands out distinct ports.
    let held: Vec<_> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("bind a loopback port"))
        .collect();
    held.iter()
        .map(|l| l.local_addr().expect("a bound port").port())
        .collect()
}

/// A new empty directory under the system's temporary directory, named after `purpose`; the
/// caller removes it.
pub fn temp_dir(purpose: &str) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let dir =
        std::env::temp_dir().join(format!("kv-{purpose}-{}-{nanos:x}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    dir
}

/// Where `scripts/servers` caches what it builds or downloads: `KV_SERVERS_CACHE`, else
/// `~/.cache/kv-servers`.
pub fn servers_cache() -> PathBuf {
    std::env::var("KV_SERVERS_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/kv-servers")
        })
}
