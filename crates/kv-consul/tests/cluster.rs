//! The kv-conformance suite against the Consul cluster of `scripts/servers up consul-cluster`:
//! its client agent (`KV_TEST_CONSUL_CLUSTER_ADDR`) first, the three servers' HTTP APIs
//! (`KV_TEST_CONSUL_CLUSTER_SERVER_ADDRS`) behind it as fallbacks.

use std::sync::Arc;

use kv_core::{Result, Store};
use kv_test_support::env;

/// The agent and servers, in the order a handle tries them.
struct ConsulCluster(Vec<String>);

#[async_trait::async_trait]
impl kv_conformance::StoreFactory for ConsulCluster {
    async fn connect(&self) -> Result<Arc<dyn Store>> {
        let config = self
            .0
            .iter()
            .fold(kv_consul::Config::builder(), |config, endpoint| {
                config.endpoint(endpoint.clone())
            })
            .build()?;
        Ok(Arc::new(kv_consul::ConsulStore::connect(config).await?))
    }
}

fn cluster() -> ConsulCluster {
    let servers = env("KV_TEST_CONSUL_CLUSTER_SERVER_ADDRS");
    let agent = env("KV_TEST_CONSUL_CLUSTER_ADDR");
    let endpoints = std::iter::once(agent.as_str())
        .chain(servers.split(','))
        .map(|e| e.trim().to_owned())
        .filter(|e| !e.is_empty())
        .collect();
    ConsulCluster(endpoints)
}

kv_conformance::conformance_tests!(cluster());
