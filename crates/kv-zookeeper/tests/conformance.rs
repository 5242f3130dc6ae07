//! The shared conformance suite against the live ZooKeeper server named by
//! `KV_TEST_ZOOKEEPER_ENDPOINTS`.

use std::sync::Arc;

use kv_core::{Result, Store};
use kv_zookeeper::{Config, ZookeeperStore};

/// Connects a new handle (its own ZooKeeper session) per call.
struct Factory {
    config: Config,
}

impl Factory {
    fn from_env() -> Self {
        let endpoints = std::env::var("KV_TEST_ZOOKEEPER_ENDPOINTS").unwrap_or_else(|_| {
            panic!(
                "KV_TEST_ZOOKEEPER_ENDPOINTS not set: run the README test command or `eval \"$(scripts/servers env)\"`"
            )
        });
        let config = Config::builder()
            .endpoints([endpoints])
            .build()
            .expect("KV_TEST_ZOOKEEPER_ENDPOINTS is a comma-separated list of host:port");
        Factory { config }
    }
}

#[async_trait::async_trait]
impl kv_conformance::StoreFactory for Factory {
    async fn connect(&self) -> Result<Arc<dyn Store>> {
        Ok(Arc::new(
            ZookeeperStore::connect(self.config.clone()).await?,
        ))
    }
}

kv_conformance::conformance_tests!(Factory::from_env());
