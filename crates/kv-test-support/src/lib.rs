//! # kv-test-support: scaffolding shared by the test suites
//!
//! What every backend's tests and the fault suite would otherwise each repeat:
//!
//! * [`env`]: a required `KV_TEST_*` variable, failing the test (never skipping it) with the
//!   command that sets it;
//! * [`free_port`] / [`free_ports`] and [`temp_dir`];
//! * [`child::ChildProcess`]: a child process (usually the test binary re-run) whose output
//!   lines a test waits for, killed when dropped;
//! * [`cluster::Cluster`]: a member of a multi-node cluster `scripts/servers` runs, killed,
//!   paused or restarted by name, and its leader;
//! * [`server::PrivateServer`]: a private etcd, Consul, ZooKeeper, Redis or DynamoDB Local,
//!   started from the same binaries `scripts/servers` installs, on free loopback ports, that a
//!   test may kill with SIGKILL and start again with or without its data.
//!
//! No test here mocks a store: these are the real servers.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

pub mod child;
pub mod cluster;
pub mod server;

/// A required environment variable: its value, or a panic that says how to set it. A test
/// whose server is missing must fail, never pass silently.
pub fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} not set: run the README test command or `eval \"$(scripts/servers env)\"`")
    })
}

/// Every backend, by its `Capabilities::backend` name.
pub const BACKENDS: [&str; 7] = [
    "etcd",
    "consul",
    "zookeeper",
    "redis",
    "dynamodb",
    "nats",
    "bolt",
];

/// A store URL (for `kv::connect` or the `kv` tool's `--store`) of the live `backend` server
/// `scripts/servers` runs (read from its `KV_TEST_*` variable), every key under the namespace
/// `namespace`; for `bolt`, a database in a new temporary directory.
pub fn store_url(backend: &str, namespace: &str) -> String {
    let host_ports = |list: String| {
        list.split(',')
            .map(|e| {
                let e = e.trim();
                e.strip_prefix("http://")
                    .unwrap_or(e)
                    .trim_end_matches('/')
                    .to_owned()
            })
            .collect::<Vec<_>>()
            .join(",")
    };
    let with_query = |url: &str, query: &str| {
        let sep = if url.contains('?') { '&' } else { '?' };
        format!("{url}{sep}{query}")
    };
    match backend {
        "etcd" => format!(
            "etcd://{}/{namespace}",
            host_ports(env("KV_TEST_ETCD_ENDPOINTS"))
        ),
        "consul" => format!(
            "consul://{}/{namespace}",
            host_ports(env("KV_TEST_CONSUL_ADDR"))
        ),
        "zookeeper" => format!(
            "zk://{}/{namespace}",
            host_ports(env("KV_TEST_ZOOKEEPER_ENDPOINTS"))
        ),
        "redis" => with_query(
            env("KV_TEST_REDIS_URL").trim_end_matches('/'),
            &format!("namespace={namespace}"),
        ),
        "nats" => with_query(
            env("KV_TEST_NATS_URL").trim_end_matches('/'),
            &format!("namespace={namespace}"),
        ),
        "dynamodb" => {
            let var = |name: &str, default: &str| {
                std::env::var(name).unwrap_or_else(|_| default.to_owned())
            };
            format!(
                "dynamodb://kv_umbrella_tests?endpoint={}&region={}&access_key_id={}\
                 &secret_access_key={}&create_table=true&namespace={namespace}",
                env("KV_TEST_DYNAMODB_ENDPOINT"),
                var("AWS_REGION", "us-east-1"),
                var("AWS_ACCESS_KEY_ID", "kvtest"),
                var("AWS_SECRET_ACCESS_KEY", "kvtest"),
            )
        }
        "bolt" => {
            let dir = temp_dir(namespace);
            format!("bolt:{}", dir.join("db").display())
        }
        other => panic!("no test server for {other}"),
    }
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
