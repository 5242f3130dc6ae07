//! The benchmark never rots: `kv-bench --smoke` runs a few operations of every case on every
//! backend (the live servers `scripts/servers` starts, as every other live test), through
//! ours, the raw clients, the valkeyrie driver and redis-benchmark, and renders the report
//! and chart. No timing is asserted. Go is required (the test command needs it for the
//! servers too): a driver that does not build fails the test.

use std::path::PathBuf;
use std::process::Command;

fn go_driver(dir: &std::path::Path) -> PathBuf {
    let go = std::env::var("KV_BENCH_GO").unwrap_or_else(|_| "/usr/local/go/bin/go".into());
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../bench/valkeyrie");
    let bin = dir.join("valkeyrie-bench");
    let status = Command::new(&go)
        .current_dir(&src)
        .args(["build", "-o"])
        .arg(&bin)
        .arg(".")
        .status()
        .unwrap_or_else(|e| panic!("cannot run {go} (set KV_BENCH_GO): {e}"));
    assert!(
        status.success(),
        "the valkeyrie driver does not build with {go}"
    );
    bin
}

/// Fails (never skips) when a server's address is not set.
fn require_servers() {
    for v in [
        "KV_TEST_ETCD_ENDPOINTS",
        "KV_TEST_CONSUL_ADDR",
        "KV_TEST_ZOOKEEPER_ENDPOINTS",
        "KV_TEST_REDIS_URL",
        "KV_TEST_DYNAMODB_ENDPOINT",
    ] {
        kv_test_support::env(v);
    }
}

#[test]
fn smoke_run_covers_every_case() {
    require_servers();
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
    cmd.arg("--valkeyrie").arg(go_driver(&dir));
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

/// `kv-bench --layers --smoke` prices every layer of get, exists and put on every backend: a
/// row per backend, op and concurrency, each with a figure for every variant.
#[test]
fn layers_smoke_run_has_every_row() {
    require_servers();
    let md = std::env::temp_dir().join(format!("kv-bench-layers-{}.md", std::process::id()));
    let out = Command::new(env!("CARGO_BIN_EXE_kv-bench"))
        .args(["--layers", "--smoke", "--out"])
        .arg(&md)
        .output()
        .expect("kv-bench runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "kv-bench --layers failed:\n{stderr}");
    let table = std::fs::read_to_string(&md).unwrap();
    let _ = std::fs::remove_file(&md);
    for backend in ["etcd", "consul", "zookeeper", "redis", "dynamodb", "bolt"] {
        for op in ["get", "exists", "put"] {
            for c in [1, 64] {
                let row = table
                    .lines()
                    .find(|l| l.starts_with(&format!("| {backend} | {op} | {c} |")))
                    .unwrap_or_else(|| panic!("no row for {backend} {op} c={c}:\n{table}"));
                let figures: Vec<&str> = row.split('|').map(str::trim).skip(4).take(4).collect();
                for figure in figures {
                    let ops: f64 = figure.parse().unwrap_or_else(|_| panic!("{row}"));
                    assert!(ops > 0.0, "a variant measured nothing: {row}");
                }
            }
        }
    }
}
