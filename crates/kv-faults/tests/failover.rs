//! The failover scenarios on every networked backend's cluster (`scripts/servers up --cluster`;
//! addresses from the `KV_TEST_*_CLUSTER_*` variables — a missing one fails the test): the
//! leader killed, the leader paused, and the member the clients use killed. Clusters run in
//! parallel, the scenarios of one cluster one after another (a mutex each); every member a
//! scenario kills or pauses is brought back even when it fails (`FaultGuard`).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kv_core::{Result, Store};
use kv_faults::failover::{Fault, FaultKind, Victim, failover};
use kv_faults::{Target, runtime};
use kv_test_support::cluster::Cluster;
use kv_test_support::env;
use rand::Rng;

/// Every handle's request and connect timeout.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);

/// How a cluster's handles are made.
#[derive(Clone)]
enum Backend {
    Etcd,
    ZooKeeper,
    Consul,
    /// Redis Sentinel, `wait_replicas` when set.
    RedisSentinel(Option<u32>),
    /// Redis Cluster with this hash tag as the namespace (every key in one slot).
    RedisCluster(String),
    /// NATS with this bucket.
    Nats(String),
}

struct ClusterTarget {
    backend: Backend,
}

#[async_trait::async_trait]
impl Target for ClusterTarget {
    fn name(&self) -> &'static str {
        match self.backend {
            Backend::Etcd => "etcd",
            Backend::ZooKeeper => "zookeeper",
            Backend::Consul => "consul",
            Backend::RedisSentinel(_) | Backend::RedisCluster(_) => "redis",
            Backend::Nats(_) => "nats",
        }
    }

    async fn connect(&self) -> Result<Arc<dyn Store>> {
        let ms = REQUEST_TIMEOUT.as_millis();
        Ok(match &self.backend {
            Backend::Etcd => {
                let endpoints = env("KV_TEST_ETCD_CLUSTER_ENDPOINTS");
                let config = kv_etcd::Config::builder()
                    .endpoints(endpoints.split(',').map(str::trim))
                    .request_timeout(REQUEST_TIMEOUT)
                    .connect_timeout(REQUEST_TIMEOUT)
                    .build()?;
                Arc::new(kv_etcd::EtcdStore::connect(config).await?)
            }
            Backend::ZooKeeper => {
                let config = kv_zookeeper::Config::builder()
                    .endpoints([env("KV_TEST_ZOOKEEPER_CLUSTER_ENDPOINTS")])
                    .request_timeout(REQUEST_TIMEOUT)
                    .connect_timeout(REQUEST_TIMEOUT)
                    .build()?;
                Arc::new(kv_zookeeper::ZookeeperStore::connect(config).await?)
            }
            Backend::Consul => {
                // The client agent first, the servers' HTTP APIs behind it: when the agent
                // dies, the handle goes on with a server.
                let mut config = kv_consul::Config::builder()
                    .endpoint(env("KV_TEST_CONSUL_CLUSTER_ADDR"))
                    .request_timeout(REQUEST_TIMEOUT)
                    .connect_timeout(REQUEST_TIMEOUT);
                for server in env("KV_TEST_CONSUL_CLUSTER_SERVER_ADDRS").split(',') {
                    config = config.endpoint(server.trim());
                }
                Arc::new(kv_consul::ConsulStore::connect(config.build()?).await?)
            }
            Backend::RedisSentinel(wait) => {
                let mut url = format!(
                    "{}?request_timeout_ms={ms}&connect_timeout_ms={ms}",
                    env("KV_TEST_REDIS_SENTINEL_URL")
                );
                if let Some(n) = wait {
                    url.push_str(&format!("&wait_replicas={n}"));
                }
                Arc::new(kv_redis::RedisStore::connect(kv_redis::Config::from_url(&url)?).await?)
            }
            Backend::RedisCluster(tag) => {
                let url = format!(
                    "{}/?namespace=%7B{tag}%7D&request_timeout_ms={ms}&connect_timeout_ms={ms}",
                    env("KV_TEST_REDIS_CLUSTER_URL").trim_end_matches('/')
                );
                Arc::new(kv_redis::RedisStore::connect(kv_redis::Config::from_url(&url)?).await?)
            }
            Backend::Nats(bucket) => {
                let url = format!(
                    "{}?bucket={bucket}&replicas=3&request_timeout_ms={ms}&connect_timeout_ms={ms}",
                    env("KV_TEST_NATS_CLUSTER_URL").trim_end_matches('/')
                );
                Arc::new(kv_nats::NatsStore::connect(kv_nats::Config::from_url(&url)?).await?)
            }
        })
    }

    fn child(&self, _mode: &str) -> std::process::Command {
        unreachable!("the failover scenarios start no child process")
    }
}

/// The clusters, each with the lock that runs its scenarios one at a time.
const CLUSTERS: [Cluster; 6] = [
    Cluster::ETCD,
    Cluster::ZOOKEEPER,
    Cluster::CONSUL,
    Cluster::REDIS_SENTINEL,
    Cluster::REDIS_CLUSTER,
    Cluster::NATS,
];
static SERIAL: [Mutex<()>; 6] = [const { Mutex::new(()) }; 6];

/// Runs one scenario, after the previous one on the same cluster (a failed one, which
/// poisons the lock, does not stop the next). `Victim::Leader` means, on Redis Cluster, the
/// primary of the scenario's slot and on NATS the leader of the bucket's stream.
fn run(backend: Backend, kind: FaultKind, victim: Victim, label: &'static str, durable: bool) {
    let cluster = match backend {
        Backend::Etcd => Cluster::ETCD,
        Backend::ZooKeeper => Cluster::ZOOKEEPER,
        Backend::Consul => Cluster::CONSUL,
        Backend::RedisSentinel(_) => Cluster::REDIS_SENTINEL,
        Backend::RedisCluster(_) => Cluster::REDIS_CLUSTER,
        Backend::Nats(_) => Cluster::NATS,
    };
    let victim = match (&backend, victim) {
        (Backend::RedisCluster(tag), Victim::Leader) => Victim::LeaderOf(slot(tag).to_string()),
        (Backend::Nats(bucket), Victim::Leader) => Victim::LeaderOf(format!("KV_{bucket}")),
        (_, victim) => victim,
    };
    let index = CLUSTERS
        .iter()
        .position(|c| *c == cluster)
        .expect("a cluster");
    let _one_at_a_time = SERIAL[index].lock().unwrap_or_else(|e| e.into_inner());
    runtime().block_on(async {
        let target = ClusterTarget { backend };
        let fault = Fault {
            kind,
            victim,
            label,
        };
        failover(&target, cluster, fault, REQUEST_TIMEOUT, durable).await;
    });
}

/// The Redis Cluster slot of a hash tag (CRC16/XMODEM modulo 16384).
fn slot(tag: &str) -> u16 {
    let mut crc: u16 = 0;
    for byte in tag.bytes() {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc % 16384
}

/// Asks a plain-text server on `127.0.0.1:port`: sends `request`, returns the whole answer.
fn ask(port: u16, request: &str) -> String {
    let mut stream = TcpStream::connect(("127.0.0.1", port))
        .unwrap_or_else(|e| panic!("connect to 127.0.0.1:{port}: {e}"));
    stream
        .set_read_timeout(Some(Duration::from_secs(3)))
        .expect("read timeout");
    stream
        .write_all(request.as_bytes())
        .unwrap_or_else(|e| panic!("write to 127.0.0.1:{port}: {e}"));
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer
}

/// The member whose busiest client connection has made the most requests, among
/// `(member, requests)` pairs: the CAS client's member (it calls far more than the other
/// handles of the scenario).
fn busiest(counts: Vec<(String, u64)>) -> String {
    eprintln!("the busiest client connection's requests, per member: {counts:?}");
    counts
        .into_iter()
        .max_by_key(|(_, n)| *n)
        .map(|(member, _)| member)
        .expect("members")
}

/// The first number after `label` in `text`.
fn number_after(text: &str, label: &str) -> Option<u64> {
    let rest = text.split(label).nth(1)?.trim_start();
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// The ZooKeeper member the CAS client's session is on (the client picks one at random), from
/// the `cons` four-letter word: the connection that received the most requests, watchers aside.
fn zookeeper_client_member() -> String {
    let endpoints = env("KV_TEST_ZOOKEEPER_CLUSTER_ENDPOINTS");
    let counts = endpoints
        .split(',')
        .enumerate()
        .map(|(i, endpoint)| {
            let port: u16 = endpoint
                .trim()
                .rsplit(':')
                .next()
                .and_then(|p| p.parse().ok())
                .unwrap_or_else(|| panic!("a host:port in {endpoints}"));
            let answer = ask(port, "cons");
            // A watching session is sent notifications besides its replies: skip those.
            let most = answer
                .lines()
                .filter_map(|line| {
                    let received = number_after(line, "recved=")?;
                    (number_after(line, "sent=")? <= received).then_some(received)
                })
                .max()
                .unwrap_or(0);
            ((i + 1).to_string(), most)
        })
        .collect();
    busiest(counts)
}

/// The NATS server the CAS client is connected to (the client picks one at random), from each
/// server's monitoring endpoint (ports 24431..24433 of the cluster contract): the connection
/// that sent the most messages.
fn nats_client_member() -> String {
    let counts = (1..=3u16)
        .map(|i| {
            let port = 24430 + i;
            let answer = ask(
                port,
                "GET /connz?sort=msgs_from&limit=1 HTTP/1.0\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
            );
            let most = number_after(&answer, "\"in_msgs\":").unwrap_or(0);
            (i.to_string(), most)
        })
        .collect();
    busiest(counts)
}

/// One test per line: `name: backend, kill or pause, victim, acknowledged writes durable`.
macro_rules! failover_tests {
    ($($(#[$doc:meta])* $name:ident: $backend:expr, $kind:ident, $victim:expr, $durable:expr;)*) => {
        $(
            $(#[$doc])*
            #[test]
            fn $name() {
                run($backend, FaultKind::$kind, $victim, stringify!($name), $durable);
            }
        )*
    };
}

/// A Redis Cluster namespace that is one hash tag: every key of the scenario in one slot.
fn redis_cluster() -> Backend {
    Backend::RedisCluster(format!("fo{:08x}", rand::rng().random::<u32>()))
}

/// A NATS bucket of its own, created with 3 replicas.
fn nats() -> Backend {
    Backend::Nats("failover".into())
}

mod etcd {
    use super::*;

    failover_tests! {
        kill_leader: Backend::Etcd, Kill, Victim::Leader, true;
        pause_leader: Backend::Etcd, Pause, Victim::Leader, true;
        /// The client talks to its first endpoint, member 1, first.
        kill_client_member: Backend::Etcd, Kill, Victim::Member("1".into()), true;
    }
}

mod zookeeper {
    use super::*;

    failover_tests! {
        kill_leader: Backend::ZooKeeper, Kill, Victim::Leader, true;
        pause_leader: Backend::ZooKeeper, Pause, Victim::Leader, true;
        kill_client_member: Backend::ZooKeeper, Kill, Victim::Find(Arc::new(zookeeper_client_member)), true;
    }
}

mod consul {
    use super::*;

    failover_tests! {
        kill_leader: Backend::Consul, Kill, Victim::Leader, true;
        pause_leader: Backend::Consul, Pause, Victim::Leader, true;
        /// The client agent the handles use first dies; they go on through the servers.
        kill_client_member: Backend::Consul, Kill, Victim::Member("agent".into()), true;
    }
}

/// The primary is both the leader and the member the clients use. Without `WAIT`, an
/// acknowledged write the replicas had not copied may be lost, and a lock granted twice:
/// measured, not failed.
mod redis_sentinel {
    use super::*;

    failover_tests! {
        kill_leader: Backend::RedisSentinel(None), Kill, Victim::Leader, false;
        pause_leader: Backend::RedisSentinel(None), Pause, Victim::Leader, false;
        /// With `WAIT` for one replica nothing acknowledged may be lost, a lock neither.
        kill_leader_wait: Backend::RedisSentinel(Some(1)), Kill, Victim::Leader, true;
        /// The frozen primary resumes and runs what was queued on it before Sentinel demotes
        /// it; with `WAIT` none of that counts (its replicas follow the new primary).
        pause_leader_wait: Backend::RedisSentinel(Some(1)), Pause, Victim::Leader, true;
    }
}

/// The primary of the keys' slot is both the leader and the member the clients use for them.
mod redis_cluster {
    use super::*;

    failover_tests! {
        kill_leader: redis_cluster(), Kill, Victim::Leader, false;
        pause_leader: redis_cluster(), Pause, Victim::Leader, false;
    }
}

/// The leader of the bucket's stream, and the server most of the connections use.
mod nats {
    use super::*;

    failover_tests! {
        kill_leader: nats(), Kill, Victim::Leader, true;
        pause_leader: nats(), Pause, Victim::Leader, true;
        kill_client_member: nats(), Kill, Victim::Find(Arc::new(nats_client_member)), true;
    }
}

#[test]
fn slot_of_known_keys() {
    // Figures from the Redis Cluster specification's examples.
    assert_eq!(slot("123456789"), 0x31C3);
    assert_eq!(slot("foo"), 12182);
}
