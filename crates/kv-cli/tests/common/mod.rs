//! Store URLs for `kv --store` (the same as crates/kv/tests/common), built from the `KV_TEST_*` variables `scripts/servers env`
//! prints: the same servers every backend's own tests use.

#![allow(dead_code)]

use rand::Rng;

/// A fresh random name, so that runs never see each other's keys.
pub fn unique(tag: &str) -> String {
    format!("{tag}-{:016x}", rand::rng().random::<u64>())
}

fn host_ports(list: &str) -> String {
    list.split(',')
        .map(|e| {
            let e = e.trim();
            e.strip_prefix("http://").unwrap_or(e).trim_end_matches('/')
        })
        .collect::<Vec<_>>()
        .join(",")
}

fn with_query(url: &str, query: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}{query}")
}

/// The URL of the live `backend` server (named as in `kv::Scheme::backend`), every key under
/// the namespace `namespace`; for `bolt`, a database in a new temporary directory.
pub fn url(backend: &str, namespace: &str) -> String {
    let env = kv_test_support::env;
    match backend {
        "etcd" => format!(
            "etcd://{}/{namespace}",
            host_ports(&env("KV_TEST_ETCD_ENDPOINTS"))
        ),
        "consul" => format!(
            "consul://{}/{namespace}",
            host_ports(&env("KV_TEST_CONSUL_ADDR"))
        ),
        "zookeeper" => format!(
            "zk://{}/{namespace}",
            host_ports(&env("KV_TEST_ZOOKEEPER_ENDPOINTS"))
        ),
        "redis" => with_query(
            env("KV_TEST_REDIS_URL").trim_end_matches('/'),
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
            let dir = kv_test_support::temp_dir(namespace);
            format!("bolt:{}", dir.join("db").display())
        }
        other => panic!("no test server for {other}"),
    }
}

/// The six backends.
pub const BACKENDS: [&str; 6] = ["etcd", "consul", "zookeeper", "redis", "dynamodb", "bolt"];

/// The `kv` binary with no `KV_STORE` inherited, run in `dir`.
pub fn kv_in(dir: &std::path::Path) -> assert_cmd::Command {
    let mut cmd = assert_cmd::Command::new(env!("CARGO_BIN_EXE_kv"));
    cmd.env_remove("KV_STORE").current_dir(dir);
    cmd.timeout(std::time::Duration::from_secs(60));
    cmd
}

/// The `kv` binary on the store `url`.
pub fn kv(url: &str) -> assert_cmd::Command {
    let mut cmd = assert_cmd::Command::new(env!("CARGO_BIN_EXE_kv"));
    cmd.env("KV_STORE", url);
    cmd.timeout(std::time::Duration::from_secs(60));
    cmd
}

/// Runs `cmd`, checks its exit code, returns (stdout, stderr).
pub fn run(cmd: &mut assert_cmd::Command, code: i32) -> (String, String) {
    let output = cmd.output().expect("run kv");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(
        output.status.code(),
        Some(code),
        "{cmd:?}\nstdout: {stdout}\nstderr: {stderr}"
    );
    (stdout, stderr)
}

/// The path of the `kv` binary, for `std::process::Command` (background processes).
pub fn kv_path() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_BIN_EXE_kv"))
}
