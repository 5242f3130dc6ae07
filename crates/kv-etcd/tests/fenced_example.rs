//! Runs the `fenced_job_runner` example (built by `cargo test` with the crate's other
//! targets) against the shared etcd: the paused former leader's write must be refused.

use std::path::PathBuf;
use std::process::Command;

fn example(name: &str) -> PathBuf {
    // target/<profile>/deps/<this test> → target/<profile>/examples/<name>
    let exe = std::env::current_exe().expect("the test binary's path");
    let profile = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>/deps");
    let path = profile.join("examples").join(name);
    assert!(
        path.is_file(),
        "{} is missing: run this test through `cargo test -p kv-etcd`, which builds the examples",
        path.display()
    );
    path
}

#[test]
fn the_paused_leader_is_refused() {
    let endpoints = kv_test_support::env("KV_TEST_ETCD_ENDPOINTS");
    let host = endpoints
        .split(',')
        .next()
        .and_then(|e| e.split_once("://").map(|(_, h)| h.to_owned()))
        .expect("an endpoint like http://127.0.0.1:23790");
    let url = format!("etcd://{host}/fenced-example-{}", std::process::id());
    let output = Command::new(example("fenced_job_runner"))
        .arg(&url)
        .output()
        .expect("run the example");
    let stdout = String::from_utf8_lossy(&output.stdout);
    println!("{stdout}");
    assert!(output.status.success(), "the example failed: {stdout}");
    assert!(stdout.contains("A: write refused"), "{stdout}");
    assert!(stdout.contains("OK: the paused former leader's write was refused"));
}
