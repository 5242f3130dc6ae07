//! The shared conformance suite through Redis Sentinel (`KV_TEST_REDIS_SENTINEL_URL`,
//! `scripts/servers up redis-sentinel`): the store finds the primary through the Sentinels.

use std::sync::Arc;

use kv_core::{Result, Store};
use kv_redis::{Config, RedisStore, Topology};

/// Independent handles through the Sentinels.
struct Factory {
    config: Config,
}

impl Factory {
    fn from_env() -> Self {
        let url = kv_test_support::env("KV_TEST_REDIS_SENTINEL_URL");
        let config = Config::from_url(&url).expect("KV_TEST_REDIS_SENTINEL_URL parses");
        assert!(
            matches!(config.topology, Topology::Sentinel { .. }),
            "KV_TEST_REDIS_SENTINEL_URL is a redis+sentinel:// URL"
        );
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
