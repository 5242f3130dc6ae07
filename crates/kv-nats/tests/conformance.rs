//! The shared conformance suite against the live NATS server named by `KV_TEST_NATS_URL`.

use std::sync::Arc;

use kv_core::{Result, Store};
use kv_nats::{Config, NatsStore};

/// Connects a new handle (own connection) per call.
struct Factory {
    config: Config,
}

impl Factory {
    fn from_env() -> Self {
        let url = std::env::var("KV_TEST_NATS_URL").unwrap_or_else(|_| {
            panic!(
                "KV_TEST_NATS_URL not set: run the README test command or `eval \"$(scripts/servers env)\"`"
            )
        });
        let config = Config::from_url(&url).expect("KV_TEST_NATS_URL is a nats:// URL");
        Factory { config }
    }
}

#[async_trait::async_trait]
impl kv_conformance::StoreFactory for Factory {
    async fn connect(&self) -> Result<Arc<dyn Store>> {
        Ok(Arc::new(NatsStore::connect(self.config.clone()).await?))
    }
}

kv_conformance::conformance_tests!(Factory::from_env());
