//! # kv-bench: the side-by-side benchmark
//!
//! For every backend (etcd, Consul, ZooKeeper, Redis, DynamoDB Local and the embedded redb
//! store), in ONE run on the same servers, interleaved in rounds:
//!
//! * **ours**: every operation through `kv_core::Store` (a handle from `kv::connect`);
//! * **raw**: the client library the backend wraps, doing the same work the simplest correct
//!   way (see [`raw`]);
//! * **valkeyrie** (Go) through the driver in `bench/valkeyrie` (stores that are not compiled
//!   in are reported as such);
//! * **redis-benchmark** for Redis `GET`/`SET`: the server's ceiling.
//!
//! Operations: get, put, exists, delete, atomic_put (uncontended, and contended by 8 clients),
//! list of 1,000 keys in a namespace of 10,000, watch latency (put on one handle → item on
//! another), lock acquire + release, transaction (2 conditioned puts); each at concurrency 1
//! (p50/p99 latency) and 64 (throughput, one shared handle).
//!
//! `scripts/bench` builds everything and runs it; `kv-bench --help` lists the options;
//! `kv-bench --smoke` runs a few operations of every case on every backend (no files written
//! unless asked), which the crate's test does.

mod bench;
mod external;
mod layers;
mod ours;
mod raw;
mod report;
mod target;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bench::{Op, Stats, Window};
use external::Driver;
use ours::Ours;

const HELP: &str = "\
kv-bench: ours vs the raw clients vs valkeyrie vs redis-benchmark, on the live servers

USAGE: kv-bench [OPTIONS]   (servers: eval \"$(scripts/servers env)\"; or run scripts/bench)

  --smoke               a few operations per case, every backend, 1 round; no files unless --out/--svg
  --rounds N            interleaved rounds, medians reported (default 3)
  --duration-ms N       measured time per case and implementation (default 700)
  --warmup-ms N         unrecorded warm-up before each measurement (default 200; none on DynamoDB Local)
  --backends LIST       comma-separated subset of etcd,consul,zookeeper,redis,dynamodb,bolt
  --ops LIST            comma-separated subset of get,put,exists,delete,atomic_put,
                        atomic_put_contended,list,watch,lock,transaction (default: all)
  --list-keys N         keys listed (default 1000), in a namespace of --namespace-keys (10000)
  --dynamodb-list-keys N   the same for DynamoDB Local, which is server-bound at ~20-40 ops/s (default 50, namespace 10x)
  --valkeyrie PATH      the Go driver built from bench/valkeyrie (omitted: valkeyrie not run)
  --valkeyrie-sources FILE  where each valkeyrie store module came from, one line per store
                        (scripts/bench writes it), quoted in the report
  --no-redis-benchmark  skip redis-benchmark
  --out FILE            write the Markdown report (docs/benchmarks.md)
  --svg FILE            write the chart (docs/benchmarks.svg)
  --layers              instead: price our per-call layers on top of each raw client
                        (raw, +timer, +wrapper, ours) for get, exists and put; the
                        Markdown table goes to stdout and to --out
";

/// Options of one run.
#[derive(Debug, Clone)]
pub struct Options {
    smoke: bool,
    rounds: usize,
    duration: Duration,
    warmup: Duration,
    backends: Vec<String>,
    /// The ops measured (default: every op), so one op can be compared before/after quickly.
    ops: Vec<Op>,
    list_keys: usize,
    namespace_keys: usize,
    dynamodb_list_keys: usize,
    valkeyrie: Option<PathBuf>,
    /// Lines saying where each valkeyrie store module came from (written by `scripts/bench`).
    valkeyrie_sources: Option<PathBuf>,
    redis_benchmark: bool,
    out: Option<PathBuf>,
    svg: Option<PathBuf>,
    /// `--layers`: the per-call layer probe instead of the benchmark.
    layers: bool,
}

impl Options {
    /// The ops this run measures.
    pub fn ops(&self) -> &[Op] {
        &self.ops
    }
}

fn parse_args() -> Result<Options, String> {
    let mut o = Options {
        smoke: false,
        rounds: 3,
        duration: Duration::from_millis(700),
        warmup: Duration::from_millis(200),
        backends: ["etcd", "consul", "zookeeper", "redis", "dynamodb", "bolt"]
            .map(String::from)
            .to_vec(),
        ops: Op::ALL.to_vec(),
        list_keys: 1000,
        namespace_keys: 10_000,
        dynamodb_list_keys: 50,
        valkeyrie: None,
        valkeyrie_sources: None,
        redis_benchmark: true,
        out: None,
        svg: None,
        layers: false,
    };
    let mut args = std::env::args().skip(1);
    let mut rounds_set = false;
    while let Some(a) = args.next() {
        let mut val = || args.next().ok_or_else(|| format!("{a} needs a value"));
        let num = |s: String| s.parse::<u64>().map_err(|e| format!("{s}: {e}"));
        match a.as_str() {
            "--smoke" => o.smoke = true,
            "--rounds" => {
                o.rounds = num(val()?)?.max(1) as usize;
                rounds_set = true;
            }
            "--duration-ms" => o.duration = Duration::from_millis(num(val()?)?),
            "--warmup-ms" => o.warmup = Duration::from_millis(num(val()?)?),
            "--backends" => o.backends = val()?.split(',').map(|s| s.trim().to_owned()).collect(),
            "--ops" => {
                o.ops = val()?
                    .split(',')
                    .map(|s| {
                        let s = s.trim();
                        Op::ALL
                            .into_iter()
                            .find(|op| op.name() == s)
                            .ok_or_else(|| format!("--ops: unknown op {s}"))
                    })
                    .collect::<Result<_, _>>()?
            }
            "--list-keys" => o.list_keys = num(val()?)? as usize,
            "--namespace-keys" => o.namespace_keys = num(val()?)? as usize,
            "--dynamodb-list-keys" => o.dynamodb_list_keys = num(val()?)? as usize,
            "--valkeyrie" => o.valkeyrie = Some(PathBuf::from(val()?)),
            "--valkeyrie-sources" => o.valkeyrie_sources = Some(PathBuf::from(val()?)),
            "--no-redis-benchmark" => o.redis_benchmark = false,
            "--out" => o.out = Some(PathBuf::from(val()?)),
            "--svg" => o.svg = Some(PathBuf::from(val()?)),
            "--layers" => o.layers = true,
            "-h" | "--help" => {
                print!("{HELP}");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other}\n\n{HELP}")),
        }
    }
    if o.smoke {
        if !rounds_set {
            o.rounds = 1;
        }
        o.warmup = Duration::ZERO;
        o.duration = Duration::from_secs(10);
        o.list_keys = 10;
        o.namespace_keys = 100;
        o.dynamodb_list_keys = 10;
    }
    Ok(o)
}

fn env(name: &str) -> Result<String, String> {
    std::env::var(name).map_err(|_| {
        format!("{name} is not set: run `eval \"$(scripts/servers env)\"` (or scripts/bench)")
    })
}

fn host_ports(list: &str) -> String {
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
}

/// The raw client of a backend.
enum RawAny {
    Etcd(Arc<raw::RawEtcd>),
    Consul(Arc<raw::RawConsul>),
    Zk(Arc<raw::RawZk>),
    Redis(Arc<raw::RawRedis>),
    Redb(Arc<raw::RawRedb>),
    Dynamo(Arc<raw::RawDynamo>),
}

impl RawAny {
    /// Deletes what the raw client wrote, so that runs do not pile keys up on the servers
    /// (the embedded store's files go with the run's temporary directory).
    async fn clear(&self) -> Result<(), String> {
        match self {
            RawAny::Etcd(t) => t.clear().await,
            RawAny::Consul(t) => t.clear().await,
            RawAny::Zk(t) => t.clear().await,
            RawAny::Redis(t) => t.clear().await,
            RawAny::Redb(_) => Ok(()),
            RawAny::Dynamo(t) => t.clear().await,
        }
    }
}

/// Everything opened for one backend.
struct Backend {
    name: String,
    ours: Arc<Ours>,
    raw: RawAny,
    /// valkeyrie's endpoint for this backend.
    endpoint: String,
    list_keys: usize,
    namespace_keys: usize,
    /// DynamoDB Local's read latency after the fixture (see [`dynamodb_drain`]).
    quiet_read: Option<Duration>,
}

async fn open_backend(
    name: &str,
    run: &str,
    o: &Options,
    tmp: &std::path::Path,
) -> Result<Backend, String> {
    let ns = format!("kvbench-{run}");
    let rawp = format!("kvbenchraw-{run}");
    let (url, raw, endpoint) = match name {
        "etcd" => {
            let eps = env("KV_TEST_ETCD_ENDPOINTS")?;
            let hp = host_ports(&eps);
            let raw = raw::RawEtcd::connect(&eps, &rawp).await?;
            (format!("etcd://{hp}/{ns}"), RawAny::Etcd(Arc::new(raw)), hp)
        }
        "consul" => {
            let addr = env("KV_TEST_CONSUL_ADDR")?;
            let raw = raw::RawConsul::connect(&addr, &rawp).await?;
            let hp = host_ports(&addr);
            (
                format!("consul://{hp}/{ns}"),
                RawAny::Consul(Arc::new(raw)),
                hp,
            )
        }
        "zookeeper" => {
            let hp = host_ports(&env("KV_TEST_ZOOKEEPER_ENDPOINTS")?);
            let raw = raw::RawZk::connect(&hp, &rawp).await?;
            (format!("zk://{hp}/{ns}"), RawAny::Zk(Arc::new(raw)), hp)
        }
        "redis" => {
            let url = env("KV_TEST_REDIS_URL")?;
            let url = url.trim_end_matches('/').to_owned();
            let raw = raw::RawRedis::connect(&url, &rawp).await?;
            let hp = url
                .trim_start_matches("redis://")
                .split('/')
                .next()
                .unwrap_or("")
                .to_owned();
            let sep = if url.contains('?') { '&' } else { '?' };
            (
                format!("{url}{sep}namespace={ns}"),
                RawAny::Redis(Arc::new(raw)),
                hp,
            )
        }
        "dynamodb" => {
            let ep = env("KV_TEST_DYNAMODB_ENDPOINT")?;
            let var = |n: &str, d: &str| std::env::var(n).unwrap_or_else(|_| d.to_owned());
            let table = "kv_bench";
            let raw = raw::RawDynamo::connect(&ep, table, &rawp).await?;
            (
                format!(
                    "dynamodb://{table}?endpoint={ep}&region={}&access_key_id={}&secret_access_key={}&create_table=true&namespace={ns}",
                    var("AWS_REGION", "us-east-1"),
                    var("AWS_ACCESS_KEY_ID", "kvtest"),
                    var("AWS_SECRET_ACCESS_KEY", "kvtest")
                ),
                RawAny::Dynamo(Arc::new(raw)),
                ep,
            )
        }
        "bolt" => {
            let raw = raw::RawRedb::open(&tmp.join("raw.redb"))?;
            (
                format!("bolt:{}", tmp.join("ours.redb").display()),
                RawAny::Redb(Arc::new(raw)),
                tmp.join("valkeyrie.bolt").display().to_string(),
            )
        }
        other => return Err(format!("unknown backend {other}")),
    };
    let ours = Arc::new(Ours::connect(&url).await?);
    let (list_keys, namespace_keys) = if name == "dynamodb" {
        (o.dynamodb_list_keys, o.dynamodb_list_keys * 10)
    } else {
        (o.list_keys, o.namespace_keys)
    };
    Ok(Backend {
        name: name.to_owned(),
        ours,
        raw,
        endpoint,
        list_keys,
        namespace_keys,
        quiet_read: None,
    })
}

async fn on_raw(raw: &RawAny, op: Op, conc: usize, base: &str, w: &Window) -> Stats {
    match raw {
        RawAny::Etcd(t) => bench::measure(t, op, conc, base, w).await,
        RawAny::Consul(t) => bench::measure(t, op, conc, base, w).await,
        RawAny::Zk(t) => bench::measure(t, op, conc, base, w).await,
        RawAny::Redis(t) => bench::measure(t, op, conc, base, w).await,
        RawAny::Redb(t) => bench::measure(t, op, conc, base, w).await,
        RawAny::Dynamo(t) => bench::measure(t, op, conc, base, w).await,
    }
}

/// How long one consistent read of a fixture key takes on DynamoDB Local (`None` elsewhere).
async fn dynamodb_read_latency(raw: &RawAny) -> Option<Duration> {
    use crate::target::Target;
    let RawAny::Dynamo(t) = raw else { return None };
    let start = Instant::now();
    t.get("fixture/k000").await.ok()?;
    Some(start.elapsed())
}

/// DynamoDB Local's read latency while nothing else runs: the median of 11 reads.
async fn dynamodb_quiet_latency(raw: &RawAny) -> Option<Duration> {
    let mut samples = Vec::new();
    for _ in 0..11 {
        samples.push(dynamodb_read_latency(raw).await?);
    }
    samples.sort();
    Some(samples[samples.len() / 2])
}

/// After a valkeyrie window on DynamoDB Local: waits until the server is quiet again.
///
/// valkeyrie's `List` is a Scan of its whole table under a 10 s timeout; at c=64 its calls
/// time out, the driver exits, and DynamoDB Local goes on working through the abandoned
/// Scans, so whichever window came next ran on a busy server (ours, in every round of the
/// list case at c=64, by the rotation: 0.14-0.49 of raw in full runs against 0.74-0.79 without
/// valkeyrie). Waits until three reads in a row answer within twice the quiet latency plus
/// 2 ms, at most 60 s; returns how long it waited.
async fn dynamodb_drain(raw: &RawAny, quiet: Duration) -> Duration {
    let limit = quiet * 2 + Duration::from_millis(2);
    let started = Instant::now();
    let mut calm = 0;
    while calm < 3 && started.elapsed() < Duration::from_secs(60) {
        match dynamodb_read_latency(raw).await {
            Some(latency) if latency <= limit => calm += 1,
            _ => {
                calm = 0;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    if calm < 3 {
        eprintln!("    dynamodb: still busy 60 s after valkeyrie's window");
    }
    started.elapsed()
}

/// Before a window that only reads: on etcd, leaves the server's read buffer empty
/// ([`raw::RawEtcd::settle`]), so that every side reads from the same server state whatever
/// was written before it. The Go driver does the same after its own setup writes.
async fn settle(raw: &RawAny, op: Op) {
    if let (RawAny::Etcd(t), true) = (raw, op.is_read_only())
        && let Err(err) = t.settle().await
    {
        eprintln!("    etcd: settling before {} failed: {err}", op.name());
    }
}

async fn raw_fixture(raw: &RawAny, list_n: usize, ns_n: usize) -> Result<(), String> {
    match raw {
        RawAny::Etcd(t) => bench::fixture(t, list_n, ns_n).await,
        RawAny::Consul(t) => bench::fixture(t, list_n, ns_n).await,
        RawAny::Zk(t) => bench::fixture(t, list_n, ns_n).await,
        RawAny::Redis(t) => bench::fixture(t, list_n, ns_n).await,
        RawAny::Redb(t) => bench::fixture(t, list_n, ns_n).await,
        RawAny::Dynamo(t) => bench::fixture(t, list_n, ns_n).await,
    }
}

/// Which implementation a figure belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Impl {
    /// Through `Store`.
    Ours,
    /// The raw client.
    Raw,
    /// valkeyrie (Go).
    Valkeyrie,
}

/// Every figure of a run.
#[derive(Default)]
pub struct Results {
    /// (backend, op, concurrency, implementation) → one `Stats` per round.
    pub runs: HashMap<(String, Op, usize, Impl), Vec<Stats>>,
    /// backend → why valkeyrie was not measured there.
    pub valkeyrie_unavailable: HashMap<String, String>,
    /// (backend, op) → why valkeyrie's store does not have that op.
    pub valkeyrie_unsupported: HashMap<(String, Op), String>,
    /// redis-benchmark: (concurrency, "GET"/"SET") → (ops/s, p50 µs) per round.
    pub redis_benchmark: HashMap<(usize, &'static str), Vec<(f64, f64)>>,
    /// Problems met outside measurements.
    pub notes: Vec<String>,
    /// (backend) → (listed keys, namespace keys).
    pub list_sizes: HashMap<String, (usize, usize)>,
}

#[tokio::main]
async fn main() {
    let o = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    if o.layers {
        if let Err(e) = run_layers(&o).await {
            eprintln!("kv-bench --layers: {e}");
            std::process::exit(1);
        }
        return;
    }
    match run(&o).await {
        Ok(failures) if failures == 0 || !o.smoke => {}
        Ok(failures) => {
            eprintln!("smoke: {failures} case(s) measured nothing or left keys behind");
            std::process::exit(1);
        }
        Err(e) => {
            eprintln!("kv-bench: {e}");
            std::process::exit(1);
        }
    }
}

/// What a run (the benchmark or `--layers`) starts from.
struct RunStart {
    started: Instant,
    /// `/proc/loadavg` at the start.
    load_start: String,
    /// Names this run's keys and files apart from any other run's.
    run_id: String,
    /// Scratch directory for the embedded stores' files.
    tmp: PathBuf,
    /// The measured window.
    window: Window,
    /// The unrecorded warm-up window.
    warm: Window,
}

impl RunStart {
    fn new(o: &Options) -> Result<Self, String> {
        let run_id = format!("{:08x}", rand::random::<u32>());
        let tmp = std::env::temp_dir().join(format!("kv-bench-{run_id}"));
        std::fs::create_dir_all(&tmp).map_err(|e| e.to_string())?;
        Ok(Self {
            started: Instant::now(),
            load_start: std::fs::read_to_string("/proc/loadavg").unwrap_or_default(),
            run_id,
            tmp,
            window: Window {
                duration: o.duration,
                max_ops: o.smoke.then_some(3),
            },
            warm: Window {
                duration: o.warmup,
                max_ops: None,
            },
        })
    }
}

async fn run(o: &Options) -> Result<usize, String> {
    let RunStart {
        started,
        load_start,
        run_id,
        tmp,
        window,
        warm,
    } = RunStart::new(o)?;
    let mut results = Results::default();
    let mut backends = Vec::new();
    for name in &o.backends {
        eprintln!(
            "[{:>5.0}s] {name}: connecting and writing fixtures",
            started.elapsed().as_secs_f64()
        );
        let mut b = open_backend(name, &run_id, o, &tmp).await?;
        bench::fixture(&b.ours, b.list_keys, b.namespace_keys)
            .await
            .map_err(|e| format!("{name} (ours) fixture: {e}"))?;
        raw_fixture(&b.raw, b.list_keys, b.namespace_keys)
            .await
            .map_err(|e| format!("{name} (raw) fixture: {e}"))?;
        b.quiet_read = dynamodb_quiet_latency(&b.raw).await;
        results
            .list_sizes
            .insert(name.clone(), (b.list_keys, b.namespace_keys));
        backends.push(b);
    }
    let impls = [Impl::Ours, Impl::Raw, Impl::Valkeyrie];
    for round in 0..o.rounds {
        for b in &backends {
            eprintln!(
                "[{:>5.0}s] round {}/{}: {}",
                started.elapsed().as_secs_f64(),
                round + 1,
                o.rounds,
                b.name
            );
            let base = format!("r{round}");
            for &op in &o.ops {
                for &conc in op.concurrencies() {
                    for k in 0..impls.len() {
                        // Rotate the order each round so no implementation always goes first.
                        let which = impls[(k + round + op as usize) % impls.len()];
                        if which != Impl::Valkeyrie {
                            settle(&b.raw, op).await;
                        }
                        let stats = match which {
                            Impl::Ours => {
                                if !warm.duration.is_zero() && b.name != "dynamodb" {
                                    bench::measure(&b.ours, op, conc, &base, &warm).await;
                                }
                                bench::measure(&b.ours, op, conc, &base, &window).await
                            }
                            Impl::Raw => {
                                if !warm.duration.is_zero() && b.name != "dynamodb" {
                                    on_raw(&b.raw, op, conc, &base, &warm).await;
                                }
                                on_raw(&b.raw, op, conc, &base, &window).await
                            }
                            Impl::Valkeyrie => {
                                let Some(bin) = &o.valkeyrie else { continue };
                                if results.valkeyrie_unavailable.contains_key(&b.name) {
                                    continue;
                                }
                                let target = external::DriverTarget {
                                    backend: &b.name,
                                    endpoint: &b.endpoint,
                                    list_keys: b.list_keys,
                                    namespace_keys: b.namespace_keys,
                                };
                                match external::valkeyrie(
                                    bin,
                                    &target,
                                    op,
                                    conc,
                                    o.duration,
                                    window.max_ops,
                                )
                                .await
                                {
                                    Driver::Measured(s) => s,
                                    Driver::Unavailable(why) if op == Op::Txn => {
                                        let _ = why;
                                        continue;
                                    }
                                    // The store is not in the driver at all: skip it from now on.
                                    Driver::Unavailable(why)
                                        if why.contains("not compiled in")
                                            || why.starts_with("cannot run") =>
                                    {
                                        results.valkeyrie_unavailable.insert(b.name.clone(), why);
                                        continue;
                                    }
                                    // Only this op is missing from valkeyrie's store.
                                    Driver::Unavailable(why) => {
                                        results
                                            .valkeyrie_unsupported
                                            .insert((b.name.clone(), op), why);
                                        continue;
                                    }
                                    Driver::Failed(why) => Stats {
                                        errors: 1,
                                        first_error: Some(why),
                                        ..Stats::default()
                                    },
                                }
                            }
                        };
                        if which == Impl::Valkeyrie
                            && let Some(quiet) = b.quiet_read
                        {
                            let waited = dynamodb_drain(&b.raw, quiet).await;
                            if waited > Duration::from_secs(1) {
                                eprintln!(
                                    "    dynamodb {} c={conc}: waited {:.1} s for DynamoDB \
                                     Local to finish valkeyrie's abandoned requests",
                                    op.name(),
                                    waited.as_secs_f64()
                                );
                            }
                        }
                        if let Some(err) = &stats.first_error {
                            eprintln!(
                                "    {} {} c={conc} {:?}: {} errors, first: {}",
                                b.name,
                                op.name(),
                                which,
                                stats.errors,
                                err.chars().take(300).collect::<String>()
                            );
                        }
                        results
                            .runs
                            .entry((b.name.clone(), op, conc, which))
                            .or_default()
                            .push(stats);
                    }
                }
            }
        }
        if o.redis_benchmark && o.backends.iter().any(|b| b == "redis") {
            let url = env("KV_TEST_REDIS_URL")?;
            let hp = url
                .trim_start_matches("redis://")
                .split('/')
                .next()
                .unwrap_or("")
                .to_owned();
            let (host, port) = hp.rsplit_once(':').unwrap_or((hp.as_str(), "6379"));
            for conc in [1usize, 64] {
                let n = if o.smoke {
                    100
                } else {
                    (o.duration.as_millis() as u64 * if conc == 1 { 10 } else { 60 }).max(1000)
                };
                match external::redis_benchmark(host, port, conc, n).await {
                    Ok([get, set]) => {
                        results
                            .redis_benchmark
                            .entry((conc, "GET"))
                            .or_default()
                            .push(get);
                        results
                            .redis_benchmark
                            .entry((conc, "SET"))
                            .or_default()
                            .push(set);
                    }
                    Err(e) => results.notes.push(e),
                }
            }
        }
    }
    // A failure to clean up counts like a case that measured nothing (the smoke run fails).
    let mut failures = 0;
    for b in &backends {
        for dir in ["fixture", "listns"]
            .into_iter()
            .map(String::from)
            .chain((0..o.rounds).map(|r| format!("r{r}")))
        {
            let _ = b.ours.store.delete_tree(&dir).await;
        }
        let _ = b.ours.store.close().await;
        if let Err(err) = b.raw.clear().await {
            let note = format!("{}: the raw client's keys were not deleted: {err}", b.name);
            eprintln!("{note}");
            results.notes.push(note);
            failures += 1;
        }
    }
    let _ = std::fs::remove_dir_all(&tmp);
    let elapsed = started.elapsed();
    let load_end = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();

    // Smoke: every case of ours and raw must have completed at least one operation.
    for b in &o.backends {
        for &op in &o.ops {
            for &conc in op.concurrencies() {
                for which in [Impl::Ours, Impl::Raw] {
                    let ok = results
                        .runs
                        .get(&(b.clone(), op, conc, which))
                        .is_some_and(|v| v.iter().any(|s| s.ops > 0));
                    let na =
                        which == Impl::Raw && op == Op::Watch && (b == "bolt" || b == "dynamodb");
                    if !ok && !na {
                        eprintln!(
                            "no operation completed: {b} {} c={conc} {which:?}",
                            op.name()
                        );
                        failures += 1;
                    }
                }
            }
        }
    }
    let meta = report::Meta::collect(o, elapsed, &load_start, &load_end).await;
    let md = report::markdown(&results, o, &meta);
    println!("{}", report::summary(&results, o));
    if let Some(path) = &o.out {
        std::fs::write(path, md).map_err(|e| format!("{}: {e}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    if let Some(path) = &o.svg {
        std::fs::write(path, report::svg(&results, o))
            .map_err(|e| format!("{}: {e}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    eprintln!("done in {:.0} s", elapsed.as_secs_f64());
    Ok(failures)
}

/// `--layers`: see [`layers`].
async fn run_layers(o: &Options) -> Result<(), String> {
    let RunStart {
        started,
        load_start,
        run_id,
        tmp,
        window,
        warm,
    } = RunStart::new(o)?;
    let mut rows = Vec::new();
    for name in &o.backends {
        eprintln!(
            "[{:>5.0}s] {name}: connecting and writing fixtures",
            started.elapsed().as_secs_f64()
        );
        let b = open_backend(name, &run_id, o, &tmp).await?;
        bench::fixture(&b.ours, 0, 0).await?;
        raw_fixture(&b.raw, 0, 0).await?;
        for op in layers::OPS {
            for conc in [64, 1] {
                let mut figures: [Vec<f64>; 4] = Default::default();
                for round in 0..o.rounds {
                    let base = format!("layers{round}");
                    if round == 0 && !o.smoke {
                        // Warm every variant once, unrecorded.
                        on_layers(&b, op, conc, &base, &warm, round).await;
                    }
                    let stats = on_layers(&b, op, conc, &base, &window, round).await;
                    for (i, s) in stats.iter().enumerate() {
                        if let Some(err) = &s.first_error {
                            return Err(format!(
                                "{name} {} c={conc} {}: {err}",
                                op.name(),
                                layers::VARIANTS[i]
                            ));
                        }
                        figures[i].push(s.ops_per_sec);
                    }
                }
                let medians = figures.map(|mut v| {
                    v.sort_by(f64::total_cmp);
                    v[v.len() / 2]
                });
                eprintln!(
                    "[{:>5.0}s] {name} {} c={conc}: {medians:.0?}",
                    started.elapsed().as_secs_f64(),
                    op.name()
                );
                rows.push((name.clone(), op, conc, medians));
            }
        }
        for dir in std::iter::once("fixture".to_owned())
            .chain((0..o.rounds).map(|round| format!("layers{round}")))
        {
            let _ = b.ours.store.delete_tree(&dir).await;
        }
        let _ = b.ours.store.close().await;
        if let Err(err) = b.raw.clear().await {
            eprintln!("{name}: the raw client's keys were not deleted: {err}");
        }
    }
    let _ = std::fs::remove_dir_all(&tmp);
    let load_end = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mut md = format!(
        "Generated by `scripts/bench --layers` (`kv-bench --layers`): ops/s, medians of {} \
         interleaved rounds of {} ms per variant; load average {} at start, {} at end.\n\n\
         | backend | op | c | raw | +timer | +wrapper | ours | +timer/raw | +wrapper/raw | ours/raw | ours/+wrapper |\n\
         | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n",
        o.rounds,
        o.duration.as_millis(),
        load_start
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" "),
        load_end
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" "),
    );
    for (name, op, conc, [raw, timer, wrapper, ours]) in &rows {
        let ratio = |a: f64, b: f64| {
            if b > 0.0 {
                format!("{:.2}", a / b)
            } else {
                "—".into()
            }
        };
        md.push_str(&format!(
            "| {name} | {} | {conc} | {raw:.0} | {timer:.0} | {wrapper:.0} | {ours:.0} | {} | {} | {} | {} |\n",
            op.name(),
            ratio(*timer, *raw),
            ratio(*wrapper, *raw),
            ratio(*ours, *raw),
            ratio(*ours, *wrapper),
        ));
    }
    println!("{md}");
    if let Some(path) = &o.out {
        std::fs::write(path, &md).map_err(|e| format!("{}: {e}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

async fn on_layers(
    b: &Backend,
    op: Op,
    conc: usize,
    base: &str,
    w: &Window,
    rotation: usize,
) -> [Stats; 4] {
    let ours = &b.ours;
    match &b.raw {
        RawAny::Etcd(t) => layers::round(t, ours, op, conc, base, w, rotation).await,
        RawAny::Consul(t) => layers::round(t, ours, op, conc, base, w, rotation).await,
        RawAny::Zk(t) => layers::round(t, ours, op, conc, base, w, rotation).await,
        RawAny::Redis(t) => layers::round(t, ours, op, conc, base, w, rotation).await,
        RawAny::Redb(t) => layers::round(t, ours, op, conc, base, w, rotation).await,
        RawAny::Dynamo(t) => layers::round(t, ours, op, conc, base, w, rotation).await,
    }
}
