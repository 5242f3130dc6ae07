//! The whole conformance suite once through `kv::connect`, on the live Redis server named by
//! `KV_TEST_REDIS_URL`: the indirection (URL → scheme → backend → `Arc<dyn Store>`) loses
//! nothing of the contract.

#![cfg(feature = "redis")]

mod common;

use std::sync::Arc;

use kv::{Result, Store};

/// Each `connect()` is a new `kv::connect` of the same URL: a new handle, own connections.
struct Factory {
    url: String,
}

#[async_trait::async_trait]
impl kv_conformance::StoreFactory for Factory {
    async fn connect(&self) -> Result<Arc<dyn Store>> {
        kv::connect(&self.url).await
    }
}

kv_conformance::conformance_tests!(Factory {
    url: common::url("redis", &common::unique("kvconf")),
});
