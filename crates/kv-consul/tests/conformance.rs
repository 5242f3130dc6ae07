//! The kv-conformance suite against the live Consul agent named by `KV_TEST_CONSUL_ADDR`.

use std::sync::Arc;

use kv_consul::{Config, ConsulStore};
use kv_core::{Result, Store};

struct Factory {
    address: String,
}

impl Factory {
    fn from_env() -> Self {
        let address = std::env::var("KV_TEST_CONSUL_ADDR").unwrap_or_else(|_| {
            panic!(
                "KV_TEST_CONSUL_ADDR not set: run the README test command or `eval \"$(scripts/servers env)\"`"
            )
        });
        Factory { address }
    }
}

#[async_trait::async_trait]
impl kv_conformance::StoreFactory for Factory {
    async fn connect(&self) -> Result<Arc<dyn Store>> {
        let config = Config::builder().endpoint(self.address.clone()).build()?;
        Ok(Arc::new(ConsulStore::connect(config).await?))
    }
}

kv_conformance::conformance_tests!(Factory::from_env());
