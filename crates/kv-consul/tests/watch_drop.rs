//! Dropped watches give their HTTP connection back at once. A test binary of its own: it counts
//! this process's TCP connections to the agent, which other tests running beside it would
//! disturb. Runs against the live agent named by `KV_TEST_CONSUL_ADDR`.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use futures::StreamExt;
use kv_consul::{Config, ConsulStore};
use kv_core::{ReadOptions, Store, WriteOptions};

fn address() -> String {
    std::env::var("KV_TEST_CONSUL_ADDR").unwrap_or_else(|_| {
        panic!("KV_TEST_CONSUL_ADDR not set: run the README test command or `eval \"$(scripts/servers env)\"`")
    })
}

fn unique(name: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("kv-consul-test-{name}-{nanos:x}")
}

/// The port of `http://host:port`.
fn agent_port() -> u16 {
    let address = address();
    address
        .trim_end_matches('/')
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in KV_TEST_CONSUL_ADDR={address}"))
}

/// This process's established TCP connections to `port`: the entries of `/proc/self/net/tcp`
/// (and `tcp6`) with that remote port and state `01`, whose socket inode is one of this
/// process's file descriptors (the table lists every socket of the network namespace).
fn connections_to(port: u16) -> usize {
    let ours: HashSet<String> = std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
        .filter_map(|target| {
            let target = target.to_string_lossy().into_owned();
            Some(
                target
                    .strip_prefix("socket:[")?
                    .strip_suffix(']')?
                    .to_owned(),
            )
        })
        .collect();
    let port = format!("{port:04X}");
    ["/proc/self/net/tcp", "/proc/self/net/tcp6"]
        .iter()
        .filter_map(|table| std::fs::read_to_string(table).ok())
        .flat_map(|table| {
            table
                .lines()
                .skip(1)
                .map(|line| line.split_whitespace().map(str::to_owned).collect())
                .collect::<Vec<Vec<String>>>()
        })
        .filter(|fields| {
            // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
            fields.len() > 9
                && fields[2].rsplit(':').next() == Some(port.as_str())
                && fields[3] == "01"
                && ours.contains(&fields[9])
        })
        .count()
}

async fn first<S, T>(stream: &mut S, what: &str) -> T
where
    S: futures::Stream<Item = T> + Unpin,
{
    match tokio::time::timeout(Duration::from_secs(10), stream.next()).await {
        Ok(Some(item)) => item,
        Ok(None) => panic!("{what}: stream ended"),
        Err(_) => panic!("{what}: nothing within 10 s"),
    }
}

/// Sockets of the whole network namespace (any process) that the agent listening on `port`
/// still holds for a client that already closed its side (`CLOSE_WAIT`, state `08`).
fn agent_side_close_wait(port: u16) -> usize {
    let port = format!("{port:04X}");
    ["/proc/self/net/tcp", "/proc/self/net/tcp6"]
        .iter()
        .filter_map(|table| std::fs::read_to_string(table).ok())
        .map(|table| {
            table
                .lines()
                .skip(1)
                .filter(|line| {
                    let fields: Vec<&str> = line.split_whitespace().collect();
                    fields.len() > 3
                        && fields[1].rsplit(':').next() == Some(port.as_str())
                        && fields[3] == "08"
                })
                .count()
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_watches_close_their_connections_at_once() {
    const CYCLES: usize = 300;
    // Connections a handle without a live watch keeps: the pool's idle ones (measured: at
    // most 2). A dropped watch that kept its connection would add one per watch.
    const IDLE_MAX: usize = 4;
    // Far below Consul's 200 connections per client address.
    const BOUND: usize = 50;
    let port = agent_port();
    // The agent keeps serving a blocking query whose client went away, and counts its
    // connection against `limits.http_max_conns_per_client` (200), until the query's wait
    // ends (hashicorp/consul#8524): with the default 10 s wait, 100 cycles of two dropped
    // watches exhaust what it grants this address, whatever the client does. With 1 s the
    // dropped queries end long before.
    let config = Config::builder()
        .endpoint(address())
        .namespace(unique("watch-drop"))
        .watch_wait(Duration::from_secs(1))
        .build()
        .unwrap();
    let store = ConsulStore::connect(config).await.unwrap();
    store
        .put("d/k", "v".into(), WriteOptions::default())
        .await
        .unwrap();
    let started = Instant::now();
    let (mut peak, mut slowest) = (0, Duration::ZERO);
    for cycle in 0..CYCLES {
        let mut watch = store.watch("d/k", ReadOptions::default()).await.unwrap();
        let mut tree = store.watch_tree("d", ReadOptions::default()).await.unwrap();
        assert!(first(&mut watch, "watch").await.unwrap().is_some());
        assert_eq!(first(&mut tree, "watch_tree").await.unwrap().len(), 1);
        // Let both loops send their blocking query, so that the drop cuts a request in flight.
        tokio::time::sleep(Duration::from_millis(10)).await;
        let busy = connections_to(port);
        peak = peak.max(busy);
        assert!(
            busy < BOUND,
            "cycle {cycle}: {busy} connections to the agent"
        );
        drop(watch);
        drop(tree);
        // Both tasks end, and their connections close, at once.
        let dropped = Instant::now();
        loop {
            let open = connections_to(port);
            if open <= IDLE_MAX && store.background_tasks() == 0 {
                break;
            }
            assert!(
                dropped.elapsed() < Duration::from_secs(1),
                "cycle {cycle}: 1 s after the drop, {open} connections to the agent are \
                 still open and {} watch tasks still run",
                store.background_tasks()
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        slowest = slowest.max(dropped.elapsed());
    }
    eprintln!(
        "{CYCLES} watch + watch_tree open/drop cycles in {:?}: at most {peak} connections \
         open, each drop closed its connections within {slowest:?}; the agent still holds \
         {} connections in CLOSE_WAIT",
        started.elapsed(),
        agent_side_close_wait(port)
    );
    // The agent still takes requests from this address at once (no 429 from its per-client
    // connection limit).
    let started = Instant::now();
    store
        .put("d/k", "after".into(), WriteOptions::default())
        .await
        .unwrap();
    let pair = store
        .get("d/k", ReadOptions::default())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(pair.value, "after");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "put + get took {:?}",
        started.elapsed()
    );
    let open = connections_to(port);
    assert!(
        open <= IDLE_MAX,
        "{open} connections to the agent after the loop"
    );
    store.delete_tree("").await.unwrap();
    store.close().await.unwrap();
}
