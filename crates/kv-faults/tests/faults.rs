//! The fault scenarios on all six backends, against the servers `scripts/servers` starts (their
//! addresses come from the `KV_TEST_*` variables, as for the conformance suites; a missing
//! variable fails the test). Process scenarios re-run this test binary as a child process
//! (the `child_process` entry below) that connects to the same store.

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use kv_core::{Result, Store};
use kv_faults::{Target, runtime};
use rand::Rng;

const BACKEND_VAR: &str = "KV_FAULTS_BACKEND";
/// The DynamoDB namespace (or bolt directory) a child must use to reach the parent's store.
const SHARED_VAR: &str = "KV_FAULTS_SHARED";

use kv_test_support::env;

/// The request timeout of the handles on a private server (the restart scenarios).
const PRIVATE_REQUEST_TIMEOUT: Duration = Duration::from_secs(3);

/// Where `backend` is and how long its requests may take: the shared server of the
/// `KV_TEST_*` variable, or a private one.
struct Address<'a> {
    private: Option<&'a str>,
}

impl Address<'_> {
    fn of(&self, var: &str) -> String {
        self.private.map_or_else(|| env(var), str::to_owned)
    }

    fn timeout(&self) -> Option<Duration> {
        self.private.map(|_| PRIVATE_REQUEST_TIMEOUT)
    }
}

/// Connects to `backend`; `shared` is the DynamoDB namespace or the bolt directory;
/// `private` the address of a private server instead of the shared one.
async fn connect_backend(
    backend: &str,
    shared: &str,
    private: Option<&str>,
) -> Result<Arc<dyn Store>> {
    let at = Address { private };
    Ok(match backend {
        "etcd" => {
            let endpoints = at.of("KV_TEST_ETCD_ENDPOINTS");
            let mut config =
                kv_etcd::Config::builder().endpoints(endpoints.split(',').map(str::trim));
            if let Some(limit) = at.timeout() {
                config = config.request_timeout(limit).connect_timeout(limit);
            }
            Arc::new(kv_etcd::EtcdStore::connect(config.build()?).await?)
        }
        "consul" => {
            let mut config = kv_consul::Config::builder().endpoint(at.of("KV_TEST_CONSUL_ADDR"));
            if let Some(limit) = at.timeout() {
                config = config.request_timeout(limit).connect_timeout(limit);
            }
            Arc::new(kv_consul::ConsulStore::connect(config.build()?).await?)
        }
        "zookeeper" => {
            let mut config =
                kv_zookeeper::Config::builder().endpoints([at.of("KV_TEST_ZOOKEEPER_ENDPOINTS")]);
            if let Some(limit) = at.timeout() {
                config = config.request_timeout(limit).connect_timeout(limit);
            }
            Arc::new(kv_zookeeper::ZookeeperStore::connect(config.build()?).await?)
        }
        "redis" => {
            let mut config = kv_redis::Config::from_url(&at.of("KV_TEST_REDIS_URL"))?;
            if let Some(limit) = at.timeout() {
                config.request_timeout = limit;
                config.connect_timeout = limit;
            }
            Arc::new(kv_redis::RedisStore::connect(config).await?)
        }
        "dynamodb" => {
            let var = |name: &str, default: &str| {
                std::env::var(name).unwrap_or_else(|_| default.to_owned())
            };
            let mut config = kv_dynamodb::Config::new("kv_faults")
                .endpoint(at.of("KV_TEST_DYNAMODB_ENDPOINT"))
                .region(var("AWS_REGION", "us-east-1"))
                .static_credentials(
                    var("AWS_ACCESS_KEY_ID", "kvtest"),
                    var("AWS_SECRET_ACCESS_KEY", "kvtest"),
                )
                .namespace(shared)
                .create_table(true)
                .poll_interval(Duration::from_millis(100))
                .lock_retry_interval(Duration::from_millis(100));
            if let Some(limit) = at.timeout() {
                config = config.request_timeout(limit).connect_timeout(limit);
            }
            Arc::new(kv_dynamodb::DynamoStore::connect(config).await?)
        }
        "nats" => {
            let mut url = format!(
                "{}?namespace={shared}",
                at.of("KV_TEST_NATS_URL").trim_end_matches('/')
            );
            if let Some(limit) = at.timeout() {
                let ms = limit.as_millis();
                url.push_str(&format!("&request_timeout_ms={ms}&connect_timeout_ms={ms}"));
            }
            Arc::new(kv_nats::NatsStore::connect(kv_nats::Config::from_url(&url)?).await?)
        }
        "bolt" => Arc::new(kv_bolt::BoltStore::open(kv_bolt::Config::new(shared)).await?),
        other => panic!("unknown backend {other}"),
    })
}

struct Backend {
    name: &'static str,
    shared: String,
    /// The address of a private server, instead of the shared one.
    private: Option<String>,
    /// Keeps the bolt directory alive for the test's duration.
    _dir: Option<tempfile::TempDir>,
}

impl Backend {
    fn new(name: &'static str) -> Self {
        let (shared, dir) = match name {
            "bolt" => {
                let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
                let path: PathBuf = dir.path().join("db");
                (path.display().to_string(), Some(dir))
            }
            _ => (format!("kvf-{:016x}", rand::rng().random::<u64>()), None),
        };
        Backend {
            name,
            shared,
            private: None,
            _dir: dir,
        }
    }
}

#[async_trait::async_trait]
impl Target for Backend {
    fn name(&self) -> &'static str {
        self.name
    }

    async fn connect(&self) -> Result<Arc<dyn Store>> {
        connect_backend(self.name, &self.shared, self.private.as_deref()).await
    }

    fn child(&self, mode: &str) -> Command {
        let mut command = Command::new(std::env::current_exe().expect("the test binary's path"));
        command
            .args([
                "--exact",
                "child_process",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(kv_faults::child::MODE_VAR, mode)
            .env(BACKEND_VAR, self.name)
            .env(SHARED_VAR, &self.shared);
        command
    }

    fn single_process(&self) -> bool {
        self.name == "bolt"
    }
}

/// The child process's entry: does nothing when run as a plain test.
#[test]
fn child_process() {
    let Ok(mode) = std::env::var(kv_faults::child::MODE_VAR) else {
        return;
    };
    let backend = env(BACKEND_VAR);
    let shared = env(SHARED_VAR);
    runtime().block_on(async move {
        let store = connect_backend(&backend, &shared, None)
            .await
            .unwrap_or_else(|e| panic!("child: cannot connect to {backend}: {e}"));
        kv_faults::child::run(store, &mode).await;
    });
}

macro_rules! fault_tests {
    ($($backend:ident),* $(,)?) => {
        $(
            mod $backend {
                use super::*;

                #[test]
                fn register_under_cancellation() {
                    runtime().block_on(async {
                        let target = Backend::new(stringify!($backend));
                        kv_faults::scenarios::register_under_cancellation(&target).await;
                    });
                }

                #[test]
                fn locks_under_cancellation() {
                    runtime().block_on(async {
                        let target = Backend::new(stringify!($backend));
                        kv_faults::scenarios::locks_under_cancellation(&target).await;
                    });
                }

                #[test]
                fn killed_holder() {
                    runtime().block_on(async {
                        let target = Backend::new(stringify!($backend));
                        kv_faults::scenarios::killed_holder(&target).await;
                    });
                }

                #[test]
                fn skewed_clocks() {
                    runtime().block_on(async {
                        let target = Backend::new(stringify!($backend));
                        kv_faults::scenarios::skewed_clocks(&target).await;
                    });
                }

                #[test]
                fn paused_holder() {
                    runtime().block_on(async {
                        let target = Backend::new(stringify!($backend));
                        kv_faults::scenarios::paused_holder(&target).await;
                    });
                }
            }
        )*
    };
}

fault_tests!(bolt, etcd, consul, zookeeper, redis, dynamodb, nats);

/// The server-restart scenarios, on a private server of each networked backend (the embedded
/// store has no server: its crashes are `killed_holder` and kv-bolt's crash test).
macro_rules! restart_tests {
    ($($backend:ident => $kind:ident),* $(,)?) => {
        $(
            mod $backend {
                use super::*;
                use kv_test_support::server::{PrivateServer, ServerKind};

                fn run(keep_data: bool) {
                    runtime().block_on(async {
                        let mut server = PrivateServer::start(ServerKind::$kind);
                        let mut target = Backend::new(stringify!($backend));
                        target.private = Some(server.address());
                        kv_faults::restart::server_restart(
                            &target,
                            &mut server,
                            keep_data,
                            PRIVATE_REQUEST_TIMEOUT,
                        )
                        .await;
                    });
                }

                #[test]
                fn server_restart_with_data() {
                    run(true);
                }

                #[test]
                fn server_restart_without_data() {
                    run(false);
                }
            }
        )*
    };
}

mod restart {
    use super::*;

    restart_tests!(
        etcd => Etcd,
        consul => Consul,
        zookeeper => ZooKeeper,
        redis => Redis,
        dynamodb => DynamoDb,
        nats => Nats,
    );
}
