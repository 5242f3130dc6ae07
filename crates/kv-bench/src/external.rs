//! The programs run beside ours: valkeyrie through the Go driver (`bench/valkeyrie`) and
//! `redis-benchmark`.

use std::path::Path;
use std::time::Duration;

use crate::bench::{Op, Stats};

/// valkeyrie's store name for one of our backends.
pub fn valkeyrie_store(backend: &str) -> &'static str {
    match backend {
        "etcd" => "etcdv3",
        "consul" => "consul",
        "zookeeper" => "zookeeper",
        "redis" => "redis",
        "bolt" => "boltdb",
        "dynamodb" => "dynamodb",
        _ => "unknown",
    }
}

/// What the driver answered.
pub enum Driver {
    /// Measured.
    Measured(Stats),
    /// The store is not compiled into the driver (or the op does not exist there): why.
    Unavailable(String),
    /// Ran but failed: why.
    Failed(String),
}

/// Which server the Go driver runs against, with the list fixture's sizes (the same as ours).
pub struct DriverTarget<'a> {
    /// kv-bench's backend name.
    pub backend: &'a str,
    /// The server's address as valkeyrie wants it.
    pub endpoint: &'a str,
    /// Keys in the listed directory.
    pub list_keys: usize,
    /// Keys in the whole namespace, the listed ones included.
    pub namespace_keys: usize,
}

/// Runs the Go driver once.
pub async fn valkeyrie(
    bin: &Path,
    target: &DriverTarget<'_>,
    op: Op,
    conc: usize,
    duration: Duration,
    max_ops: Option<u64>,
) -> Driver {
    let DriverTarget {
        backend,
        endpoint,
        list_keys,
        namespace_keys,
    } = *target;
    if op == Op::Txn {
        return Driver::Unavailable("valkeyrie has no transactions".into());
    }
    let mut cmd = tokio::process::Command::new(bin);
    cmd.arg("-store")
        .arg(valkeyrie_store(backend))
        .arg("-endpoint")
        .arg(endpoint)
        .arg("-op")
        .arg(op.name())
        .arg("-concurrency")
        .arg(conc.to_string())
        .arg("-duration")
        .arg(format!("{}ms", duration.as_millis()))
        .arg("-max-ops")
        .arg(max_ops.unwrap_or(0).to_string())
        .arg("-list-keys")
        .arg(list_keys.to_string())
        .arg("-namespace-keys")
        .arg(namespace_keys.to_string())
        .kill_on_drop(true);
    let out = match tokio::time::timeout(duration + Duration::from_secs(120), cmd.output()).await {
        Ok(Ok(out)) => out,
        Ok(Err(e)) => return Driver::Unavailable(format!("cannot run {}: {e}", bin.display())),
        Err(_) => return Driver::Failed("driver timed out".into()),
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let Ok(v) = serde_json::from_str::<serde_json::Value>(text.trim()) else {
        return Driver::Failed(format!(
            "driver printed no JSON: {} {}",
            text.trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    };
    if let Some(err) = v["error"].as_str() {
        return if v["unavailable"].as_bool().unwrap_or(false) {
            Driver::Unavailable(err.to_owned())
        } else {
            Driver::Failed(err.to_owned())
        };
    }
    Driver::Measured(Stats {
        ops: v["ops"].as_u64().unwrap_or(0),
        errors: v["errors"].as_u64().unwrap_or(0),
        conflicts: 0,
        ops_per_sec: v["ops_per_sec"].as_f64().unwrap_or(0.0),
        p50_us: v["p50_us"].as_f64().unwrap_or(0.0),
        p99_us: v["p99_us"].as_f64().unwrap_or(0.0),
        first_error: v["first_error"].as_str().map(str::to_owned),
    })
}

/// `redis-benchmark` for GET and SET at `conc` clients: `[(GET ops/s, p50 µs), (SET …)]`.
pub async fn redis_benchmark(
    host: &str,
    port: &str,
    conc: usize,
    requests: u64,
) -> Result<[(f64, f64); 2], String> {
    let out = tokio::process::Command::new("redis-benchmark")
        .args([
            "-h", host, "-p", port, "-t", "get,set", "-d", "64", "-r", "100", "--csv",
        ])
        .arg("-c")
        .arg(conc.to_string())
        .arg("-n")
        .arg(requests.to_string())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| format!("redis-benchmark: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut get = None;
    let mut set = None;
    for line in text.lines() {
        let cols: Vec<&str> = line.split(',').map(|c| c.trim_matches('"')).collect();
        if cols.len() < 5 {
            continue;
        }
        let rps: f64 = cols[1].parse().unwrap_or(0.0);
        let p50_ms: f64 = cols[4].parse().unwrap_or(0.0);
        match cols[0] {
            "GET" => get = Some((rps, p50_ms * 1000.0)),
            "SET" => set = Some((rps, p50_ms * 1000.0)),
            _ => {}
        }
    }
    match (get, set) {
        (Some(g), Some(s)) => Ok([g, s]),
        _ => Err(format!("redis-benchmark printed no GET/SET lines: {text}")),
    }
}
