//! Store URLs for `kv --store` (the same as crates/kv/tests/common), built from the `KV_TEST_*` variables `scripts/servers env`
//! prints: the same servers every backend's own tests use.

#![allow(dead_code)]

use rand::Rng;

/// A fresh random name, so that runs never see each other's keys.
pub fn unique(tag: &str) -> String {
    format!("{tag}-{:016x}", rand::rng().random::<u64>())
}

/// The URL of the live `backend` server, every key under the namespace `namespace`.
pub fn url(backend: &str, namespace: &str) -> String {
    kv_test_support::store_url(backend, namespace)
}

/// Every backend.
#[allow(unused_imports)]
pub use kv_test_support::BACKENDS;

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
