//! The shared conformance suite against the 3-node ZooKeeper ensemble of
//! `scripts/servers up zookeeper-cluster` (`KV_TEST_ZOOKEEPER_CLUSTER_ENDPOINTS`), every
//! session given the whole connect string.

use std::sync::Arc;

use kv_core::{Result, Store};

/// The ensemble's configuration; each `connect` opens a new session.
struct Ensemble(kv_zookeeper::Config);

#[async_trait::async_trait]
impl kv_conformance::StoreFactory for Ensemble {
    async fn connect(&self) -> Result<Arc<dyn Store>> {
        let store = kv_zookeeper::ZookeeperStore::connect(self.0.clone()).await?;
        Ok(Arc::new(store))
    }
}

fn ensemble() -> Ensemble {
    let Ok(hosts) = std::env::var("KV_TEST_ZOOKEEPER_CLUSTER_ENDPOINTS") else {
        panic!(
            "KV_TEST_ZOOKEEPER_CLUSTER_ENDPOINTS not set: `scripts/servers up zookeeper-cluster`, then `eval \"$(scripts/servers env)\"`"
        );
    };
    let url = format!("zookeeper://{}", hosts.trim());
    Ensemble(kv_zookeeper::Config::from_url(&url).unwrap_or_else(|e| panic!("{url}: {e}")))
}

kv_conformance::conformance_tests!(ensemble());
