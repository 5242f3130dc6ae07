//! The kv-conformance suite against the DynamoDB Local server that `scripts/servers` starts.

use std::sync::Arc;
use std::time::Duration;

use kv_conformance::StoreFactory;
use kv_core::{Result, Store};
use kv_dynamodb::{Config, DynamoStore};
use rand::Rng;

/// The table every case of this test binary shares (each test gets its own namespace).
const TABLE: &str = "kv_conformance";

/// Connects new handles to one namespace of the shared conformance table.
struct Factory {
    config: Config,
}

impl Factory {
    fn from_env() -> Self {
        let endpoint = std::env::var("KV_TEST_DYNAMODB_ENDPOINT").unwrap_or_else(|_| {
            panic!(
                "KV_TEST_DYNAMODB_ENDPOINT not set: run the README test command or \
                 `eval \"$(scripts/servers env)\"`"
            )
        });
        let var =
            |name: &str, default: &str| std::env::var(name).unwrap_or_else(|_| default.to_owned());
        let namespace = format!("kvt-{:016x}", rand::rng().random::<u64>());
        let config = Config::new(TABLE)
            .endpoint(endpoint)
            .region(var("AWS_REGION", "us-east-1"))
            .static_credentials(
                var("AWS_ACCESS_KEY_ID", "kvtest"),
                var("AWS_SECRET_ACCESS_KEY", "kvtest"),
            )
            .namespace(namespace)
            .create_table(true)
            .poll_interval(Duration::from_millis(100))
            .lock_retry_interval(Duration::from_millis(100));
        Factory { config }
    }
}

#[async_trait::async_trait]
impl StoreFactory for Factory {
    async fn connect(&self) -> Result<Arc<dyn Store>> {
        Ok(Arc::new(DynamoStore::connect(self.config.clone()).await?))
    }
}

kv_conformance::conformance_tests!(Factory::from_env());
