//! Store URLs for `kv::connect`, built from the `KV_TEST_*` variables `scripts/servers env`
//! prints: the same servers every backend's own tests use.

#![allow(dead_code)]

use rand::Rng;

/// A fresh random name, so that runs never see each other's keys.
pub fn unique(tag: &str) -> String {
    format!("{tag}-{:016x}", rand::rng().random::<u64>())
}

/// The URL of the live `backend` server, every key under the namespace `namespace`.
pub fn url(backend: &str, namespace: &str) -> String {
    kv_test_support::store_url(backend, namespace)
}

/// Every backend.
#[allow(unused_imports)]
pub use kv_test_support::BACKENDS;
