//! The benchmark never rots: `kv-bench --smoke` runs a few operations of every case on every
//! backend (the live servers `scripts/servers` starts, as every other live test), through
//! ours, the raw clients, the valkeyrie driver (when Go is there) and redis-benchmark, and
//! renders the report and chart. No timing is asserted.

use std::path::PathBuf;
use std::process::Command;

fn require(name: &str) {
    assert!(
        std::env::var(name).is_ok(),
        "{name} is not set: run `eval \"$(scripts/servers env)\"` first (scripts/test does)"
    );
}

fn go_driver(dir: &std::path::Path) -> Option<PathBuf> {
    let go = std::env::var("KV_BENCH_GO").unwrap_or_else(|_| "/usr/local/go/bin/go".into());
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../bench/valkeyrie");
    let bin = dir.join("valkeyrie-bench");
    let status = Command::new(go)
        .current_dir(&src)
        .args(["build", "-o"])
        .arg(&bin)
        .arg(".")
        .status()
        .ok()?;
    status.success().then_some(bin)
}

#[test]
fn smoke_run_covers_every_case() {
    for v in [
        "KV_TEST_ETCD_ENDPOINTS",
        "KV_TEST_CONSUL_ADDR",
        "KV_TEST_ZOOKEEPER_ENDPOINTS",
        "KV_TEST_REDIS_URL",
        "KV_TEST_DYNAMODB_ENDPOINT",
    ] {
        require(v);
    }
    let dir = std::env::temp_dir().join(format!("kv-bench-smoke-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let md = dir.join("benchmarks.md");
    let svg = dir.join("benchmarks.svg");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kv-bench"));
    cmd.arg("--smoke")
        .arg("--out")
        .arg(&md)
        .arg("--svg")
        .arg(&svg);
    match go_driver(&dir) {
        Some(bin) => {
            cmd.arg("--valkeyrie").arg(bin);
        }
        None => eprintln!("Go driver not built: valkeyrie not exercised"),
    }
    let out = cmd.output().expect("kv-bench runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "kv-bench --smoke failed:\n{stderr}");
    let report = std::fs::read_to_string(&md).unwrap();
    for section in [
        "## etcd",
        "## Consul",
        "## ZooKeeper",
        "## Redis",
        "## DynamoDB Local",
        "## embedded (redb)",
        "## Method",
    ] {
        assert!(
            report.contains(section),
            "report lacks {section}:\n{report}"
        );
    }
    for op in [
        "| get |",
        "| list |",
        "| watch (c=1) |",
        "| lock |",
        "| transaction |",
    ] {
        assert!(report.contains(op), "summary lacks {op}");
    }
    let chart = std::fs::read_to_string(&svg).unwrap();
    assert!(chart.starts_with("<svg") && chart.trim_end().ends_with("</svg>"));
    let _ = std::fs::remove_dir_all(&dir);
}
