//! The shared conformance suite against the 3-server NATS cluster of
//! `scripts/servers up nats-cluster` (`KV_TEST_NATS_CLUSTER_URL`), in a bucket of its own
//! whose stream has 3 replicas.

use std::sync::Arc;

use kv_core::{Result, Store};

/// The cluster's configuration; each `connect` opens a new connection.
struct NatsCluster(kv_nats::Config);

#[async_trait::async_trait]
impl kv_conformance::StoreFactory for NatsCluster {
    async fn connect(&self) -> Result<Arc<dyn Store>> {
        Ok(Arc::new(kv_nats::NatsStore::connect(self.0.clone()).await?))
    }
}

fn cluster() -> NatsCluster {
    let servers = kv_test_support::env("KV_TEST_NATS_CLUSTER_URL");
    let url = format!(
        "{}?bucket=conformance&replicas=3",
        servers.trim_end_matches('/')
    );
    NatsCluster(kv_nats::Config::from_url(&url).unwrap_or_else(|e| panic!("{url}: {e}")))
}

kv_conformance::conformance_tests!(cluster());
