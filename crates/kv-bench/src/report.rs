//! The report: `docs/benchmarks.md` (tables, ratios, machine, versions, method) and an SVG
//! chart drawn here (no plotting tool needed).

use std::fmt::Write as _;
use std::time::Duration;

use crate::bench::{Op, Stats};
use crate::{Impl, Options, Results};

/// Where and with what the run happened.
pub struct Meta {
    /// CPU model and count, memory.
    pub machine: String,
    /// Load average at start and end.
    pub load: String,
    /// Tool and server versions.
    pub versions: Vec<(String, String)>,
    /// Wall time of the run.
    pub elapsed: Duration,
}

async fn cmd(program: &str, args: &[&str]) -> String {
    match tokio::process::Command::new(program)
        .args(args)
        .output()
        .await
    {
        Ok(o) => String::from_utf8_lossy(&o.stdout)
            .lines()
            .next()
            .unwrap_or("")
            .trim()
            .to_owned(),
        Err(_) => "not found".into(),
    }
}

async fn tcp_ask(addr: &str, request: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let go = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        s.write_all(request).await.ok()?;
        let mut buf = vec![0; 8192];
        let n = s.read(&mut buf).await.ok()?;
        Some(String::from_utf8_lossy(&buf[..n]).into_owned())
    };
    tokio::time::timeout(Duration::from_secs(3), go)
        .await
        .ok()
        .flatten()
        .unwrap_or_default()
}

fn lock_version(lock: &str, name: &str) -> String {
    let needle = format!("name = \"{name}\"\nversion = \"");
    lock.find(&needle)
        .map(|i| {
            let rest = &lock[i + needle.len()..];
            rest[..rest.find('"').unwrap_or(0)].to_owned()
        })
        .unwrap_or_else(|| "?".into())
}

impl Meta {
    /// Gathers machine facts and versions.
    pub async fn collect(o: &Options, elapsed: Duration, load_start: &str, load_end: &str) -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let model = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split(':').nth(1))
            .unwrap_or("?")
            .trim()
            .to_owned();
        let cpus = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0);
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let mem_gib = meminfo
            .lines()
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<f64>().ok())
            .map(|kb| kb / 1024.0 / 1024.0)
            .unwrap_or(0.0);
        let load = |s: &str| s.split_whitespace().take(3).collect::<Vec<_>>().join(" ");
        let mut versions = vec![
            ("rustc".to_owned(), cmd("rustc", &["--version"]).await),
            (
                "go".to_owned(),
                cmd("/usr/local/go/bin/go", &["version"]).await,
            ),
            (
                "redis-benchmark".to_owned(),
                cmd("redis-benchmark", &["--version"]).await,
            ),
        ];
        let lock =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../Cargo.lock"))
                .unwrap_or_default();
        for c in [
            "etcd-client",
            "reqwest",
            "zookeeper-client",
            "fred",
            "redb",
            "aws-sdk-dynamodb",
            "tokio",
        ] {
            versions.push((format!("crate {c}"), lock_version(&lock, c)));
        }
        let http = reqwest::Client::new();
        let get_json = |url: String| {
            let http = http.clone();
            async move {
                match http.get(url).timeout(Duration::from_secs(3)).send().await {
                    Ok(r) => r.json::<serde_json::Value>().await.unwrap_or_default(),
                    Err(_) => serde_json::Value::Null,
                }
            }
        };
        for b in &o.backends {
            let v = match b.as_str() {
                "etcd" => {
                    let ep = std::env::var("KV_TEST_ETCD_ENDPOINTS").unwrap_or_default();
                    let ep = ep.split(',').next().unwrap_or("").to_owned();
                    get_json(format!("{ep}/version")).await["etcdserver"]
                        .as_str()
                        .map(|v| format!("etcd {v}"))
                }
                "consul" => {
                    let addr = std::env::var("KV_TEST_CONSUL_ADDR").unwrap_or_default();
                    get_json(format!("{addr}/v1/agent/self")).await["Config"]["Version"]
                        .as_str()
                        .map(|v| format!("Consul {v}"))
                }
                "zookeeper" => {
                    let hp = std::env::var("KV_TEST_ZOOKEEPER_ENDPOINTS").unwrap_or_default();
                    let hp = hp.split(',').next().unwrap_or("").to_owned();
                    let r = tcp_ask(&hp, b"srvr").await;
                    r.lines()
                        .next()
                        .filter(|l| l.contains("version"))
                        .map(|l| l.replace("Zookeeper version: ", "ZooKeeper "))
                }
                "redis" => {
                    let url = std::env::var("KV_TEST_REDIS_URL").unwrap_or_default();
                    let hp = url
                        .trim_start_matches("redis://")
                        .split('/')
                        .next()
                        .unwrap_or("")
                        .to_owned();
                    let r = tcp_ask(&hp, b"*2\r\n$4\r\nINFO\r\n$6\r\nserver\r\n").await;
                    r.lines()
                        .find(|l| l.starts_with("redis_version:"))
                        .map(|l| format!("Redis {}", l.trim_start_matches("redis_version:").trim()))
                }
                "dynamodb" => Some("DynamoDB Local (reports no version)".into()),
                "bolt" => Some(format!("redb {} (embedded)", lock_version(&lock, "redb"))),
                _ => None,
            };
            versions.push((format!("server {b}"), v.unwrap_or_else(|| "?".into())));
        }
        Meta {
            machine: format!("{model}, {cpus} CPUs, {mem_gib:.0} GiB RAM"),
            load: format!("{} at start, {} at end", load(load_start), load(load_end)),
            versions,
            elapsed,
        }
    }
}

/// The median of the rounds, metric by metric.
pub fn median(v: &[Stats]) -> Option<Stats> {
    let measured: Vec<&Stats> = v.iter().filter(|s| s.ops > 0).collect();
    if measured.is_empty() {
        return None;
    }
    let med = |f: &dyn Fn(&Stats) -> f64| {
        let mut x: Vec<f64> = measured.iter().map(|s| f(s)).collect();
        x.sort_by(|a, b| a.total_cmp(b));
        x[x.len() / 2]
    };
    Some(Stats {
        ops: v.iter().map(|s| s.ops).sum(),
        errors: v.iter().map(|s| s.errors).sum(),
        conflicts: v.iter().map(|s| s.conflicts).sum(),
        ops_per_sec: med(&|s| s.ops_per_sec),
        p50_us: med(&|s| s.p50_us),
        p99_us: med(&|s| s.p99_us),
        first_error: v.iter().find_map(|s| s.first_error.clone()),
    })
}

fn get(r: &Results, b: &str, op: Op, c: usize, i: Impl) -> Option<Stats> {
    r.runs
        .get(&(b.to_owned(), op, c, i))
        .and_then(|v| median(v))
}

fn errors(r: &Results, b: &str, op: Op, c: usize, i: Impl) -> u64 {
    r.runs
        .get(&(b.to_owned(), op, c, i))
        .map(|v| v.iter().map(|s| s.errors).sum())
        .unwrap_or(0)
}

fn rate(x: f64) -> String {
    if x >= 10_000.0 {
        format!("{:.0}k", x / 1000.0)
    } else if x >= 100.0 {
        format!("{x:.0}")
    } else {
        format!("{x:.1}")
    }
}

fn us(x: f64) -> String {
    if x >= 10_000.0 {
        format!("{:.1} ms", x / 1000.0)
    } else {
        format!("{x:.0} µs")
    }
}

fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => {
            let r = a / b;
            let s = format!("{r:.2}");
            if r < 0.95 { format!("**{s}**") } else { s }
        }
        _ => "—".into(),
    }
}

/// The ratio shown in the summary and the chart: throughput for every case but watch, where
/// it is the inverse of the p50 latency (raw p50 / ours p50).
pub fn headline(r: &Results, b: &str, op: Op, c: usize, against: Impl) -> Option<f64> {
    let ours = get(r, b, op, c, Impl::Ours)?;
    let other = get(r, b, op, c, against)?;
    if op == Op::Watch {
        (ours.p50_us > 0.0).then(|| other.p50_us / ours.p50_us)
    } else {
        (other.ops_per_sec > 0.0).then(|| ours.ops_per_sec / other.ops_per_sec)
    }
}

const NAMES: [(&str, &str); 6] = [
    ("etcd", "etcd"),
    ("consul", "Consul"),
    ("zookeeper", "ZooKeeper"),
    ("redis", "Redis"),
    ("dynamodb", "DynamoDB Local"),
    ("bolt", "embedded (redb)"),
];

fn pretty(b: &str) -> &str {
    NAMES
        .iter()
        .find(|(k, _)| *k == b)
        .map(|(_, v)| *v)
        .unwrap_or(b)
}

fn op_label(op: Op, c: usize) -> String {
    format!("{} c={c}", op.name())
}

/// A short text summary for the terminal (the ops measured; ours' and raw's median ops/s too).
pub fn summary(r: &Results, o: &Options) -> String {
    let mut s = String::from(
        "backend       op                          ours/raw  ours/valkeyrie    ours ops/s     raw ops/s\n",
    );
    for b in &o.backends {
        for &op in o.ops() {
            for &c in op.concurrencies() {
                let f = |x: Option<f64>| x.map(|v| format!("{v:.2}")).unwrap_or_else(|| "—".into());
                let rate = |i| {
                    get(r, b, op, c, i)
                        .map(|st| format!("{:.0}", st.ops_per_sec))
                        .unwrap_or_else(|| "—".into())
                };
                let _ = writeln!(
                    s,
                    "{:<13} {:<27} {:>8}  {:>14}  {:>12}  {:>12}",
                    b,
                    op_label(op, c),
                    f(headline(r, b, op, c, Impl::Raw)),
                    f(headline(r, b, op, c, Impl::Valkeyrie)),
                    rate(Impl::Ours),
                    rate(Impl::Raw),
                );
            }
        }
    }
    s
}

/// The Markdown report.
pub fn markdown(r: &Results, o: &Options, m: &Meta) -> String {
    let mut s = String::new();
    let w = &mut s;
    let _ = writeln!(w, "# Benchmarks: ours vs the raw clients vs valkeyrie\n");
    let _ = writeln!(
        w,
        "Generated by `scripts/bench` (the `kv-bench` crate) on {}; do not edit by hand. \
         Chart: [benchmarks.svg](benchmarks.svg).\n",
        if o.smoke {
            "a SMOKE run (a few operations per case: the figures mean nothing)"
        } else {
            "this machine"
        }
    );
    let _ = writeln!(
        w,
        "> **Noisy figures.** This machine has 2 cores shared with other engineers compiling while \
         the run went on (load average {}). Read the **ratios** (each pair measured back to back, \
         medians of interleaved rounds), not the absolute figures.\n",
        m.load
    );
    let _ = writeln!(w, "## Summary: ours / raw client, ours / valkeyrie\n");
    let _ = writeln!(
        w,
        "Throughput ratios (ops/s of ours ÷ ops/s of the other) at concurrency 64 (8 for contended \
         CAS) and 1; for watch, the inverse latency ratio (their p50 ÷ our p50). Below 0.95 in \
         **bold**. — = not measured (see the notes below).\n"
    );
    let _ = writeln!(
        w,
        "Where a ratio stays below the target, the measured cause (what our call sends that the \
         raw call does not, which contract promise needs it, and what each layer costs) is in \
         [costs/](costs/): one file per backend, written from measurements like this run's.\n"
    );
    let _ = writeln!(
        w,
        "| backend | op | ours/raw c=64 | ours/raw c=1 | ours/valkeyrie c=64 | ours/valkeyrie c=1 |"
    );
    let _ = writeln!(w, "| --- | --- | --- | --- | --- | --- |");
    for b in &o.backends {
        for op in Op::ALL {
            let cs = op.concurrencies();
            let hi = *cs.last().expect("a concurrency");
            let one = |c: usize, i: Impl| {
                headline(r, b, op, c, i)
                    .map(|v| {
                        if v < 0.95 {
                            format!("**{v:.2}**")
                        } else {
                            format!("{v:.2}")
                        }
                    })
                    .unwrap_or_else(|| "—".into())
            };
            let lo = |i: Impl| {
                if cs.contains(&1) && hi != 1 {
                    one(1, i)
                } else {
                    "—".into()
                }
            };
            let hi_label = if hi == 64 {
                String::new()
            } else {
                format!(" (c={hi})")
            };
            let _ = writeln!(
                w,
                "| {} | {}{hi_label} | {} | {} | {} | {} |",
                pretty(b),
                op.name(),
                one(hi, Impl::Raw),
                lo(Impl::Raw),
                one(hi, Impl::Valkeyrie),
                lo(Impl::Valkeyrie)
            );
        }
    }
    let _ = writeln!(w);

    for b in &o.backends {
        let (ln, nn) = r.list_sizes.get(b).copied().unwrap_or((0, 0));
        let _ = writeln!(w, "## {}\n", pretty(b));
        let _ = writeln!(
            w,
            "list: {ln} keys listed in a namespace of {nn}{}.\n",
            if b == "dynamodb" && ln < 1000 {
                " (scaled down: DynamoDB Local is server-bound; `--dynamodb-list-keys`)"
            } else {
                ""
            }
        );
        let _ = writeln!(
            w,
            "| op | c | ours ops/s | ours p50 | ours p99 | raw ops/s | raw p50 | raw p99 | valkeyrie ops/s | valkeyrie p50 | ours/raw | ours/valkeyrie | errors ours/raw/vk |"
        );
        let _ = writeln!(
            w,
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
        );
        for op in Op::ALL {
            for &c in op.concurrencies() {
                let ours = get(r, b, op, c, Impl::Ours);
                let raw = get(r, b, op, c, Impl::Raw);
                let vk = get(r, b, op, c, Impl::Valkeyrie);
                let f = |s: &Option<Stats>, g: &dyn Fn(&Stats) -> String| {
                    s.as_ref().map(g).unwrap_or_else(|| "—".into())
                };
                let hr = headline(r, b, op, c, Impl::Raw);
                let hv = headline(r, b, op, c, Impl::Valkeyrie);
                let _ = writeln!(
                    w,
                    "| {}{} | {c} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {}/{}/{} |",
                    op.name(),
                    match (&ours, op) {
                        (Some(s), Op::CasContended) if s.ops > 0 => format!(
                            " ({:.0} % lost races)",
                            100.0 * s.conflicts as f64 / s.ops as f64
                        ),
                        _ => String::new(),
                    },
                    f(&ours, &|s| rate(s.ops_per_sec)),
                    f(&ours, &|s| us(s.p50_us)),
                    f(&ours, &|s| us(s.p99_us)),
                    f(&raw, &|s| rate(s.ops_per_sec)),
                    f(&raw, &|s| us(s.p50_us)),
                    f(&raw, &|s| us(s.p99_us)),
                    f(&vk, &|s| rate(s.ops_per_sec)),
                    f(&vk, &|s| us(s.p50_us)),
                    ratio(hr, Some(1.0)),
                    ratio(hv, Some(1.0)),
                    errors(r, b, op, c, Impl::Ours),
                    errors(r, b, op, c, Impl::Raw),
                    errors(r, b, op, c, Impl::Valkeyrie),
                );
            }
        }
        if b == "redis" && !r.redis_benchmark.is_empty() {
            let _ = writeln!(
                w,
                "\n`redis-benchmark` (the server's ceiling, 64-byte values, 100 keys; median of rounds):\n"
            );
            let _ = writeln!(w, "| command | c | ops/s | p50 | ours ÷ redis-benchmark |");
            let _ = writeln!(w, "| --- | --- | --- | --- | --- |");
            for c in [1usize, 64] {
                for (cmdname, op) in [("GET", Op::Get), ("SET", Op::Put)] {
                    if let Some(v) = r.redis_benchmark.get(&(c, cmdname)) {
                        let mut rps: Vec<f64> = v.iter().map(|x| x.0).collect();
                        let mut p50: Vec<f64> = v.iter().map(|x| x.1).collect();
                        rps.sort_by(|a, b| a.total_cmp(b));
                        p50.sort_by(|a, b| a.total_cmp(b));
                        let ours = get(r, b, op, c, Impl::Ours).map(|s| s.ops_per_sec);
                        let _ = writeln!(
                            w,
                            "| {cmdname} | {c} | {} | {} | {} |",
                            rate(rps[rps.len() / 2]),
                            us(p50[p50.len() / 2]),
                            ratio(ours, Some(rps[rps.len() / 2]))
                        );
                    }
                }
            }
        }
        let mut errs = Vec::new();
        for op in Op::ALL {
            for &c in op.concurrencies() {
                for i in [Impl::Ours, Impl::Raw, Impl::Valkeyrie] {
                    if let Some(e) = r
                        .runs
                        .get(&(b.clone(), op, c, i))
                        .and_then(|v| v.iter().find_map(|s| s.first_error.clone()))
                    {
                        errs.push(format!(
                            "{} c={c} {:?}: {}",
                            op.name(),
                            i,
                            e.chars()
                                .take(200)
                                .collect::<String>()
                                .replace('|', "/")
                                .replace('\n', " ")
                        ));
                    }
                }
            }
        }
        if !errs.is_empty() {
            let _ = writeln!(w, "\nFirst error of each case that had any:\n");
            for e in errs {
                let _ = writeln!(w, "* {e}");
            }
        }
        let _ = writeln!(w);
    }

    let _ = writeln!(w, "## valkeyrie (Go)\n");
    if o.valkeyrie.is_none() {
        let _ = writeln!(w, "Not run (`--valkeyrie` not given).\n");
    }
    let mut un: Vec<_> = r.valkeyrie_unavailable.iter().collect();
    un.sort();
    for (b, why) in un {
        let _ = writeln!(w, "* {}: not measured: {why}", pretty(b));
    }
    let mut missing: Vec<_> = r.valkeyrie_unsupported.iter().collect();
    missing.sort_by_key(|((b, op), _)| (b.clone(), *op));
    for ((b, op), why) in missing {
        let _ = writeln!(
            w,
            "* {} {}: not in valkeyrie's store: {why}",
            pretty(b),
            op.name()
        );
    }
    let _ = writeln!(
        w,
        "\nThe driver (`bench/valkeyrie`) depends on `github.com/kvtools/valkeyrie` v1.0.0, which \
         the Go module proxy serves. Each store module (`github.com/kvtools/etcdv3`, `consul`, \
         `zookeeper`, `redis`, `boltdb`, `dynamodb`) is wired in by a file behind a build tag of \
         its name. `scripts/bench` takes each module from the proxy; where the proxy refuses one, \
         from a local copy of its source named by `KV_BENCH_VALKEYRIE_SRC` (its newest release \
         tag, wired in by a `replace` directive in a scratch copy of the driver; the module's own \
         dependencies still come from the proxy). Where each store came from in this run:\n"
    );
    match o
        .valkeyrie_sources
        .as_ref()
        .map(|path| (path, std::fs::read_to_string(path)))
    {
        Some((_, Ok(text))) => {
            for line in text.lines().filter(|l| !l.trim().is_empty()) {
                let _ = writeln!(w, "* {}", line.trim());
            }
        }
        Some((path, Err(e))) => {
            let _ = writeln!(w, "* (could not read {}: {e})", path.display());
        }
        None => {
            let _ = writeln!(w, "* (not recorded: `--valkeyrie-sources` not given)");
        }
    }
    let _ = writeln!(w);
    if !r.notes.is_empty() {
        let _ = writeln!(w, "Other notes:\n");
        for n in &r.notes {
            let _ = writeln!(w, "* {n}");
        }
        let _ = writeln!(w);
    }

    let _ = writeln!(w, "## Method\n");
    let _ = writeln!(
        w,
        "* Release build of `kv-bench`; one process drives ours (`kv::connect`, every call through \
           `Store`) and the raw client library of each backend; valkeyrie runs in the Go driver as \
           a separate process on the same servers; `redis-benchmark` gives Redis's ceiling.\n\
         * Each case runs on ONE shared handle/client with 1 or 64 concurrent tasks (8 for \
           contended CAS; watch at 1) for {} ms after an unrecorded {} ms warm-up; {} round(s), the \
           order of ours/raw/valkeyrie rotating each round and case; every figure is the median over \
           the rounds (ops/s and latencies separately).\n\
         * On etcd, every window that only reads (get, exists, list) starts, on every side, after \
           etcd's read buffer is settled (a lease granted and revoked between two 150 ms pauses): \
           etcd 3.4 copies that buffer at its full capacity on every read, so reads that follow a \
           burst of writes run 2-3 times slower (docs/costs/etcd.md).\n\
         * On DynamoDB Local, after each valkeyrie window the next window waits until three reads \
           in a row answer within twice their quiet latency: valkeyrie's list is a Scan of its \
           whole table whose calls time out at c=64, and the server goes on running the abandoned \
           Scans after the driver exits.\n\
         * Values are 64 bytes. get/exists read 100 existing keys; put overwrites 100 keys per \
           task; delete deletes a key just written (latency: the delete alone; ops/s: put + delete pairs, \
           the same for every implementation); atomic_put CASes the \
           task's own key with the version from its previous write; contended: 8 tasks read then CAS \
           ONE key, a lost race counting as a completed attempt; list reads every key and value of \
           one directory; watch: a put on the shared handle, timed until the item arrives on a second \
           handle's watch; lock: new lock + acquire + release on the task's own key; transaction: two \
           puts each conditioned on its key's version from the previous commit.\n\
         * The raw side (see `crates/kv-bench/src/raw.rs`) does the same work the simplest correct \
           way: etcd `Range`/`Put`/`Txn`, lease + `Txn` lock; Consul `GET`/`PUT`/`DELETE /v1/kv`, \
           `/v1/txn` cas verbs, session + `?acquire`, blocking query; ZooKeeper getData/setData/\
           versions/multi, ephemeral-node lock, persistent watch; Redis GET/SET/EXISTS/DEL, a \
           compare-old-value Lua script for CAS and transactions, SCAN+MGET, SET NX PX + \
           compare-and-DEL; redb read/write transactions (writes on `spawn_blocking`, value with a \
           version prefix, one commit per write, `Durability::Immediate` like ours); DynamoDB \
           consistent GetItem, PutItem, conditional PutItem, TransactWriteItems, Query. Raw watch \
           is not measured on redb (no watch) and DynamoDB (Streams, polled).\n\
         * Full run: {:.0} s wall time.\n",
        o.duration.as_millis(),
        o.warmup.as_millis(),
        o.rounds,
        m.elapsed.as_secs_f64()
    );
    let _ = writeln!(w, "## Machine and versions\n");
    let _ = writeln!(w, "* {}", m.machine);
    let _ = writeln!(w, "* load average: {}", m.load);
    for (k, v) in &m.versions {
        let _ = writeln!(w, "* {k}: {v}");
    }
    s
}

/// The chart: ours / raw for every backend and op (the summary's headline ratios).
pub fn svg(r: &Results, o: &Options) -> String {
    let row_h = 14.0;
    let label_w = 210.0;
    let bar_w = 420.0;
    let max_ratio = 1.5;
    let mut rows: Vec<(String, Option<f64>, bool)> = Vec::new(); // (label, ratio, is_header)
    for b in &o.backends {
        rows.push((pretty(b).to_owned(), None, true));
        for op in Op::ALL {
            let c = *op.concurrencies().last().expect("a concurrency");
            rows.push((op_label(op, c), headline(r, b, op, c, Impl::Raw), false));
        }
    }
    let height = 60.0 + rows.len() as f64 * row_h + 30.0;
    let width = label_w + bar_w + 80.0;
    let x_of = |v: f64| label_w + bar_w * (v.min(max_ratio) / max_ratio);
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="10" y="20" font-size="14" font-weight="bold">ours ÷ raw client (throughput at c=64; watch: latency)</text>"#
    );
    let _ = writeln!(
        s,
        r##"<text x="10" y="38" fill="#555">kv-bench; medians of interleaved rounds on a noisy shared 2-core machine; 1.0 = as fast as the raw client</text>"##
    );
    let top = 50.0;
    for (i, (label, v, header)) in rows.iter().enumerate() {
        let y = top + i as f64 * row_h;
        if *header {
            let _ = writeln!(
                s,
                r#"<text x="10" y="{}" font-weight="bold">{label}</text>"#,
                y + 11.0
            );
            continue;
        }
        let _ = writeln!(s, r#"<text x="24" y="{}">{label}</text>"#, y + 11.0);
        match v {
            Some(v) => {
                let color = if *v >= 0.95 {
                    "#2e7d32"
                } else if *v >= 0.5 {
                    "#f9a825"
                } else {
                    "#c62828"
                };
                let _ = writeln!(
                    s,
                    r#"<rect x="{label_w}" y="{}" width="{:.1}" height="{}" fill="{color}"/>"#,
                    y + 2.0,
                    (x_of(*v) - label_w).max(1.0),
                    row_h - 4.0
                );
                let _ = writeln!(
                    s,
                    r#"<text x="{:.1}" y="{}">{v:.2}</text>"#,
                    x_of(*v) + 4.0,
                    y + 11.0
                );
            }
            None => {
                let _ = writeln!(
                    s,
                    r##"<text x="{}" y="{}" fill="#888">n/a</text>"##,
                    label_w + 4.0,
                    y + 11.0
                );
            }
        }
    }
    let bottom = top + rows.len() as f64 * row_h;
    for (v, dash) in [(0.95, "4,3"), (1.0, "")] {
        let x = x_of(v);
        let _ = writeln!(
            s,
            r##"<line x1="{x:.1}" y1="{top}" x2="{x:.1}" y2="{bottom}" stroke="#333" stroke-dasharray="{dash}"/>"##
        );
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{}" text-anchor="middle">{v}</text>"#,
            x,
            bottom + 14.0
        );
    }
    let _ = writeln!(
        s,
        r#"<text x="{label_w}" y="{}" text-anchor="middle">0</text>"#,
        bottom + 14.0
    );
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">≥{max_ratio}</text>"#,
        label_w + bar_w,
        bottom + 14.0
    );
    let _ = writeln!(s, "</svg>");
    s
}
