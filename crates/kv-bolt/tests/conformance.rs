//! The shared conformance suite against the embedded backend. No server is needed: each test
//! gets its own temporary database, and every `connect()` opens a new independent handle
//! (own tasks, own locks) on that one database, as a second process would.

use std::sync::Arc;

use kv_bolt::{BoltStore, Config};
use kv_core::{Result, Store};
use tokio::sync::OnceCell;

/// One temporary database per test; independent handles on it.
struct Factory {
    root: OnceCell<BoltStore>,
}

impl Factory {
    fn new() -> Self {
        Factory {
            root: OnceCell::new(),
        }
    }
}

#[async_trait::async_trait]
impl kv_conformance::StoreFactory for Factory {
    async fn connect(&self) -> Result<Arc<dyn Store>> {
        let root = self
            .root
            .get_or_try_init(|| BoltStore::open(Config::temporary()))
            .await?;
        Ok(Arc::new(root.handle()?))
    }
}

kv_conformance::conformance_tests!(Factory::new());
