//! The multi-node clusters `scripts/servers` runs (`scripts/servers up --cluster`), seen from a
//! test: which members there are, which one leads, and SIGKILL / SIGSTOP / SIGCONT / restart of
//! one named member.
//!
//! Every call runs `scripts/servers <command> <cluster> [member]`, so the script stays the one
//! place that knows how each cluster is laid out; a failing command fails the test with the
//! script's output.
//!
//! | cluster | members | leader |
//! | --- | --- | --- |
//! | `etcd-cluster` | `1` `2` `3` | the Raft leader |
//! | `zookeeper-cluster` | `1` `2` `3` | the ensemble's leader |
//! | `consul-cluster` | `1` `2` `3` (servers), `agent` (the client agent stores talk to) | the Raft leader |
//! | `redis-sentinel` | `1` `2` `3` (Redis), `sentinel-1` … `sentinel-3` | the current primary |
//! | `redis-cluster` | `1` … `6` | with a slot argument, the primary serving it; else the primary of slot 0 |
//! | `nats-cluster` | `1` `2` `3` | the JetStream meta leader; with a stream name, that stream's leader |

use std::path::PathBuf;
use std::process::Command;

/// One cluster `scripts/servers` started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cluster {
    name: &'static str,
}

impl Cluster {
    /// The 3-member etcd cluster.
    pub const ETCD: Cluster = Cluster::named("etcd-cluster");
    /// The 3-node ZooKeeper ensemble.
    pub const ZOOKEEPER: Cluster = Cluster::named("zookeeper-cluster");
    /// The 3-server Consul cluster and its client agent.
    pub const CONSUL: Cluster = Cluster::named("consul-cluster");
    /// One Redis primary, two replicas and three Sentinels.
    pub const REDIS_SENTINEL: Cluster = Cluster::named("redis-sentinel");
    /// A Redis Cluster of three primaries with one replica each.
    pub const REDIS_CLUSTER: Cluster = Cluster::named("redis-cluster");
    /// Three NATS servers with JetStream in one cluster.
    pub const NATS: Cluster = Cluster::named("nats-cluster");

    /// A cluster by its `scripts/servers` name.
    pub const fn named(name: &'static str) -> Cluster {
        Cluster { name }
    }

    /// Its `scripts/servers` name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Every member's name.
    pub fn members(&self) -> Vec<String> {
        self.run(&["members"])
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect()
    }

    /// The member that leads now (see the table above).
    pub fn leader(&self) -> String {
        self.run(&["leader"]).trim().to_owned()
    }

    /// The member leading `what`: a Redis Cluster slot, a NATS stream.
    pub fn leader_of(&self, what: &str) -> String {
        self.run(&["leader", what]).trim().to_owned()
    }

    /// SIGKILL of `member`; it stays dead until [`Cluster::restart`].
    pub fn kill(&self, member: &str) {
        self.run(&["kill", member]);
    }

    /// SIGSTOP of `member`; it stays frozen until [`Cluster::resume`].
    pub fn pause(&self, member: &str) {
        self.run(&["pause", member]);
    }

    /// SIGCONT of a paused `member`.
    pub fn resume(&self, member: &str) {
        self.run(&["resume", member]);
    }

    /// Starts a killed `member` again with its data and waits until it answers.
    pub fn restart(&self, member: &str) {
        self.run(&["restart", member]);
    }

    fn run(&self, args: &[&str]) -> String {
        let (command, rest) = args.split_first().expect("a command");
        let output = Command::new(servers_script())
            .arg(command)
            .arg(self.name)
            .args(rest)
            .output()
            .unwrap_or_else(|e| panic!("run scripts/servers {command} {}: {e}", self.name));
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(
            output.status.success(),
            "scripts/servers {} {} {} failed ({}):\n{stdout}\n{}",
            command,
            self.name,
            rest.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        stdout
    }
}

/// `scripts/servers` of this checkout.
fn servers_script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/servers")
}
