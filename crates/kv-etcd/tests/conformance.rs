//! The shared conformance suite against the live etcd server named by `KV_TEST_ETCD_ENDPOINTS`.

use std::sync::Arc;

use kv_core::{Result, Store};
use kv_etcd::{Config, EtcdStore};

/// Connects a new handle (own gRPC connection) per call.
struct Factory {
    config: Config,
}

impl Factory {
    fn from_env() -> Self {
        let endpoints = std::env::var("KV_TEST_ETCD_ENDPOINTS").unwrap_or_else(|_| {
            panic!(
                "KV_TEST_ETCD_ENDPOINTS not set: run the README test command or `eval \"$(scripts/servers env)\"`"
            )
        });
        let config = Config::builder()
            .endpoints(
                endpoints
                    .split(',')
                    .map(str::trim)
                    .filter(|e| !e.is_empty()),
            )
            .build()
            .expect("KV_TEST_ETCD_ENDPOINTS is a comma-separated list of etcd client URLs");
        Factory { config }
    }
}

#[async_trait::async_trait]
impl kv_conformance::StoreFactory for Factory {
    async fn connect(&self) -> Result<Arc<dyn Store>> {
        Ok(Arc::new(EtcdStore::connect(self.config.clone()).await?))
    }
}

kv_conformance::conformance_tests!(Factory::from_env());
