//! Private servers a test may crash: the same binaries `scripts/servers` installs, started on
//! free loopback ports with their own data directory, killed with SIGKILL and started again
//! with their data or from empty.
//!
//! Every server keeps its data on disk so that "restart with data" means what it says:
//! etcd's data directory, Consul in server mode (not `-dev`) with a data directory, ZooKeeper's
//! snapshots and transaction log, Redis with an append-only file synced on every write, and
//! DynamoDB Local on a database file instead of in memory. "Without data" deletes that
//! directory before starting again, as a server replaced by a new machine would be.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use crate::{free_ports, servers_cache, temp_dir};

/// Which server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ServerKind {
    /// etcd v3 (Debian's `etcd` binary).
    Etcd,
    /// Consul, one server agent (the binary `scripts/servers` builds).
    Consul,
    /// ZooKeeper standalone (Debian's jars, started with `java`).
    ZooKeeper,
    /// Redis (Debian's `redis-server`).
    Redis,
    /// DynamoDB Local (the jar `scripts/servers` installs).
    DynamoDb,
    /// NATS with JetStream (the `nats-server` binary `scripts/servers` builds).
    Nats,
}

impl ServerKind {
    /// The backend's short name, as in `Capabilities::backend`.
    pub fn name(self) -> &'static str {
        match self {
            ServerKind::Etcd => "etcd",
            ServerKind::Consul => "consul",
            ServerKind::ZooKeeper => "zookeeper",
            ServerKind::Redis => "redis",
            ServerKind::DynamoDb => "dynamodb",
            ServerKind::Nats => "nats",
        }
    }
}

/// A private server process; killed, and its directory removed, when dropped.
#[derive(Debug)]
pub struct PrivateServer {
    kind: ServerKind,
    dir: PathBuf,
    /// The client port first, then whatever else the server listens on.
    ports: Vec<u16>,
    child: Option<Child>,
    starts: u32,
}

impl PrivateServer {
    /// Starts a `kind` server on free ports. Does not wait until it answers: clients connect
    /// with their own retries, and tests poll for readiness through the store.
    pub fn start(kind: ServerKind) -> Self {
        let dir = temp_dir(&format!("private-{}", kind.name()));
        let ports = free_ports(match kind {
            ServerKind::Etcd => 2,
            ServerKind::Consul => 4,
            _ => 1,
        });
        let mut server = PrivateServer {
            kind,
            dir,
            ports,
            child: None,
            starts: 0,
        };
        server.spawn();
        server
    }

    /// Which server this is.
    pub fn kind(&self) -> ServerKind {
        self.kind
    }

    /// The client address in the form the `KV_TEST_*` variable of its backend takes:
    /// `http://127.0.0.1:P` (etcd, Consul, DynamoDB), `127.0.0.1:P` (ZooKeeper),
    /// `redis://127.0.0.1:P`, `nats://127.0.0.1:P`.
    pub fn address(&self) -> String {
        let port = self.ports[0];
        match self.kind {
            ServerKind::ZooKeeper => format!("127.0.0.1:{port}"),
            ServerKind::Redis => format!("redis://127.0.0.1:{port}"),
            ServerKind::Nats => format!("nats://127.0.0.1:{port}"),
            _ => format!("http://127.0.0.1:{port}"),
        }
    }

    /// The server's process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills the server with SIGKILL (no chance to flush or say goodbye) and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same ports: with the data it had when it was killed, or
    /// (`keep_data == false`) from an empty data directory.
    pub fn start_again(&mut self, keep_data: bool) {
        self.kill();
        if !keep_data {
            let data = self.data_dir();
            let _ = std::fs::remove_dir_all(&data);
        }
        self.spawn();
    }

    /// True while the process runs (false once it exited on its own or was killed).
    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Everything the server printed, over all its starts (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn spawn(&mut self) {
        let data = self.data_dir();
        std::fs::create_dir_all(&data).unwrap_or_else(|e| panic!("create {}: {e}", data.display()));
        self.starts += 1;
        let mut command = match self.kind {
            ServerKind::Etcd => self.etcd(&data),
            ServerKind::Consul => self.consul(&data),
            ServerKind::ZooKeeper => self.zookeeper(&data),
            ServerKind::Redis => self.redis(&data),
            ServerKind::DynamoDb => self.dynamodb(&data),
            ServerKind::Nats => self.nats(&data),
        };
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.dir.join("server.log"))
            .unwrap_or_else(|e| panic!("open the server log: {e}"));
        let child = command
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone the log handle"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start the private {} server ({command:?}): {e}",
                    self.kind.name()
                )
            });
        self.child = Some(child);
    }

    fn etcd(&self, data: &Path) -> Command {
        let client = format!("http://127.0.0.1:{}", self.ports[0]);
        let peer = format!("http://127.0.0.1:{}", self.ports[1]);
        let mut command = Command::new("etcd");
        command
            .args(["--name", "kvtest", "--data-dir"])
            .arg(data)
            .args([
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
            ])
            .args([
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
            ])
            .args(["--initial-cluster", &format!("kvtest={peer}")])
            .args(["--initial-cluster-state", "new", "--logger", "zap"])
            .args(["--log-outputs", "stderr"]);
        command
    }

    fn consul(&self, data: &Path) -> Command {
        let [http, server, serf_lan, serf_wan] =
            [self.ports[0], self.ports[1], self.ports[2], self.ports[3]];
        // Server mode with a data directory (`-dev` keeps everything in memory).
        let hcl = format!(
            r#"node_name = "kvtest-private"
datacenter = "dc1"
data_dir = "{}"
server = true
bootstrap_expect = 1
bind_addr = "127.0.0.1"
client_addr = "127.0.0.1"
advertise_addr = "127.0.0.1"
disable_update_check = true
log_level = "WARN"
session_ttl_min = "1s"
ports {{
  http = {http}
  https = -1
  dns = -1
  grpc = -1
  grpc_tls = -1
  server = {server}
  serf_lan = {serf_lan}
  serf_wan = {serf_wan}
}}
"#,
            data.display()
        );
        let config = self.dir.join("consul.hcl");
        std::fs::write(&config, hcl).expect("write consul.hcl");
        let mut command = Command::new(consul_binary());
        command
            .arg("agent")
            .arg(format!("-config-file={}", config.display()));
        command
    }

    fn zookeeper(&self, data: &Path) -> Command {
        let conf = self.dir.join("conf");
        std::fs::create_dir_all(&conf).expect("create the ZooKeeper conf directory");
        let cfg = format!(
            "tickTime=500\nminSessionTimeout=1000\nmaxSessionTimeout=60000\ninitLimit=10\n\
             syncLimit=5\ndataDir={}\nclientPort={}\nclientPortAddress=127.0.0.1\n\
             maxClientCnxns=0\nadmin.enableServer=false\nextendedTypesEnabled=true\n\
             autopurge.purgeInterval=0\n",
            data.display(),
            self.ports[0]
        );
        std::fs::write(conf.join("zoo.cfg"), cfg).expect("write zoo.cfg");
        let mut classpath = conf.display().to_string();
        for jar in [
            "zookeeper",
            "netty-codec",
            "netty-resolver",
            "netty-transport-native-unix-common",
            "slf4j-simple",
        ] {
            let path = PathBuf::from(format!("/usr/share/java/{jar}.jar"));
            assert!(
                path.is_file(),
                "missing {}: run `scripts/servers install zookeeper`",
                path.display()
            );
            classpath.push(':');
            classpath.push_str(&path.display().to_string());
        }
        let tmp = self.dir.join("tmp");
        std::fs::create_dir_all(&tmp).expect("create the JVM temporary directory");
        let mut command = Command::new("java");
        command
            .args(["-Xmx256m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1"])
            .arg(format!("-Djava.io.tmpdir={}", tmp.display()))
            .args([
                "-Dzookeeper.extendedTypesEnabled=true",
                "-Dznode.container.checkIntervalMs=500",
                "-Dzookeeper.admin.enableServer=false",
                "-Dorg.slf4j.simpleLogger.defaultLogLevel=warn",
            ])
            .args([
                "-cp",
                &classpath,
                "org.apache.zookeeper.server.ZooKeeperServerMain",
            ])
            .arg(conf.join("zoo.cfg"));
        command
    }

    fn redis(&self, data: &Path) -> Command {
        let mut command = Command::new("redis-server");
        command
            .args(["--bind", "127.0.0.1", "--port", &self.ports[0].to_string()])
            .arg("--dir")
            .arg(data)
            // Every acknowledged write is in the append-only file before the reply.
            .args([
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
            ])
            .args(["--daemonize", "no", "--protected-mode", "yes"])
            .args(["--notify-keyspace-events", "KEA"]);
        command
    }

    fn dynamodb(&self, data: &Path) -> Command {
        let home = dynamodb_local_home();
        let dist = subdirectory(&home, "dynamodb_local_")
            .unwrap_or_else(|| panic!("no dynamodb_local_* directory in {}", home.display()));
        let tmp = self.dir.join("tmp");
        std::fs::create_dir_all(&tmp).expect("create the JVM temporary directory");
        let classpath = format!(
            "{}:{}:{}/*",
            home.join("launcher").display(),
            dist.join("DynamoDBLocal.jar").display(),
            dist.join("DynamoDBLocal_lib").display()
        );
        let mut command = Command::new("java");
        command
            .args(["-Xmx256m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1"])
            .arg(format!("-Djava.io.tmpdir={}", tmp.display()))
            .arg(format!(
                "-Dsqlite4java.library.path={}",
                dist.join("DynamoDBLocal_lib").display()
            ))
            .args(["-cp", &classpath, "BindLoopback", "-dbPath"])
            .arg(data)
            .args(["-sharedDb", "-port", &self.ports[0].to_string()])
            .arg("-disableTelemetry");
        command
    }
}

impl PrivateServer {
    fn nats(&self, data: &Path) -> Command {
        let mut command = Command::new(nats_binary());
        command
            .args(["--addr", "127.0.0.1", "--port", &self.ports[0].to_string()])
            .args([
                "--jetstream",
                "--server_name",
                "kvtest-private",
                "--store_dir",
            ])
            .arg(data);
        command
    }
}

impl Drop for PrivateServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The Consul binary: `KV_TEST_CONSUL_BIN`, else the one `scripts/servers` built into its cache.
pub fn consul_binary() -> PathBuf {
    if let Ok(bin) = std::env::var("KV_TEST_CONSUL_BIN") {
        return PathBuf::from(bin);
    }
    let cache = servers_cache();
    std::fs::read_dir(&cache)
        .ok()
        .into_iter()
        .flatten()
        .filter_map(|entry| entry.ok())
        .filter(|entry| entry.file_name().to_string_lossy().starts_with("consul-v"))
        .map(|entry| entry.path().join("consul"))
        .find(|bin| bin.is_file())
        .unwrap_or_else(|| {
            panic!(
                "no Consul binary under {}: run `scripts/servers install consul` or set KV_TEST_CONSUL_BIN",
                cache.display()
            )
        })
}

/// The nats-server binary: `KV_TEST_NATS_BIN`, else the one `scripts/servers` built into its
/// cache.
pub fn nats_binary() -> PathBuf {
    if let Ok(bin) = std::env::var("KV_TEST_NATS_BIN") {
        return PathBuf::from(bin);
    }
    let cache = servers_cache();
    std::fs::read_dir(&cache)
        .ok()
        .into_iter()
        .flatten()
        .filter_map(|entry| entry.ok())
        .filter(|entry| entry.file_name().to_string_lossy().starts_with("nats-server-v"))
        .map(|entry| entry.path().join("nats-server"))
        .find(|bin| bin.is_file())
        .unwrap_or_else(|| {
            panic!(
                "no nats-server binary under {}: run `scripts/servers install nats` or set KV_TEST_NATS_BIN",
                cache.display()
            )
        })
}

/// DynamoDB Local's directory: `KV_TEST_DYNAMODB_LOCAL_HOME`, else the one `scripts/servers`
/// installed into its cache.
pub fn dynamodb_local_home() -> PathBuf {
    if let Ok(home) = std::env::var("KV_TEST_DYNAMODB_LOCAL_HOME") {
        return PathBuf::from(home);
    }
    let cache = servers_cache();
    subdirectory(&cache, "dynamodb-local-npm-")
        .filter(|home| home.join("launcher/BindLoopback.class").is_file())
        .unwrap_or_else(|| {
            panic!(
                "no DynamoDB Local under {}: run `scripts/servers install dynamodb` or set \
                 KV_TEST_DYNAMODB_LOCAL_HOME",
                cache.display()
            )
        })
}

fn subdirectory(parent: &Path, prefix: &str) -> Option<PathBuf> {
    std::fs::read_dir(parent)
        .ok()?
        .filter_map(|entry| entry.ok())
        .find(|entry| entry.file_name().to_string_lossy().starts_with(prefix))
        .map(|entry| entry.path())
}
