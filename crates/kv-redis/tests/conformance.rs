//! The shared conformance suite against the live Redis server named by `KV_TEST_REDIS_URL`.

use std::sync::Arc;

use kv_core::{Result, Store};
use kv_redis::{Config, RedisStore};

/// Connects a new handle (own connections) per call.
struct Factory {
    config: Config,
}

impl Factory {
    fn from_env() -> Self {
        let url = std::env::var("KV_TEST_REDIS_URL").unwrap_or_else(|_| {
            panic!(
                "KV_TEST_REDIS_URL not set: run the README test command or `eval \"$(scripts/servers env)\"`"
            )
        });
        let config = Config::from_url(&url).expect("KV_TEST_REDIS_URL is a redis:// URL");
        Factory { config }
    }
}

#[async_trait::async_trait]
impl kv_conformance::StoreFactory for Factory {
    async fn connect(&self) -> Result<Arc<dyn Store>> {
        Ok(Arc::new(RedisStore::connect(self.config.clone()).await?))
    }
}

kv_conformance::conformance_tests!(Factory::from_env());
