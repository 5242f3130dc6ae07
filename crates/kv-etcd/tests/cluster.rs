//! The shared conformance suite against the 3-member etcd cluster of
//! `scripts/servers up etcd-cluster` (`KV_TEST_ETCD_CLUSTER_ENDPOINTS`), every handle given all
//! three members.

use std::sync::Arc;

use kv_core::{Result, Store};

/// The cluster's configuration; each `connect` opens a new handle (own gRPC channel).
struct EtcdCluster(kv_etcd::Config);

#[async_trait::async_trait]
impl kv_conformance::StoreFactory for EtcdCluster {
    async fn connect(&self) -> Result<Arc<dyn Store>> {
        Ok(Arc::new(kv_etcd::EtcdStore::connect(self.0.clone()).await?))
    }
}

fn cluster() -> EtcdCluster {
    let endpoints = kv_test_support::env("KV_TEST_ETCD_CLUSTER_ENDPOINTS");
    let hosts: Vec<&str> = endpoints
        .split(',')
        .map(|e| e.trim().trim_start_matches("http://"))
        .collect();
    let url = format!("etcd://{}", hosts.join(","));
    EtcdCluster(kv_etcd::Config::from_url(&url).unwrap_or_else(|e| panic!("{url}: {e}")))
}

kv_conformance::conformance_tests!(cluster());
