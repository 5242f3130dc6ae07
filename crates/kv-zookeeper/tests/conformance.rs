//! The shared conformance suite against the live ZooKeeper server named by
//! `KV_TEST_ZOOKEEPER_ENDPOINTS`.

use std::sync::Arc;

use kv_core::{Result, Store};
use kv_zookeeper::{Config, ZookeeperStore};

/// Connects a new handle (its own ZooKeeper session) per call.
struct Factory {
    config: Config,
}

impl Factory {
    fn from_env() -> Self {
        let endpoints = std::env::var("KV_TEST_ZOOKEEPER_ENDPOINTS").unwrap_or_else(|_| {
            panic!(
                "KV_TEST_ZOOKEEPER_ENDPOINTS not set: run the README test command or `eval \"$(scripts/servers env)\"`"
            )
        });
        let config = Config::builder()
            .endpoints([endpoints])
            .build()
            .expect("KV_TEST_ZOOKEEPER_ENDPOINTS is a comma-separated list of host:port");
        Factory { config }
    }
}

#[async_trait::async_trait]
impl kv_conformance::StoreFactory for Factory {
    async fn connect(&self) -> Result<Arc<dyn Store>> {
        Ok(Arc::new(
            ZookeeperStore::connect(self.config.clone()).await?,
        ))
    }
}

// WORKAROUND: `kv_conformance::conformance_tests!` does not compile at this kv-conformance
// revision (`crate = "$crate::__private::tokio"`: `$crate` is not expanded inside a string
// literal). Same expansion, same case list (copied from the macro), plain `#[tokio::test]`.
macro_rules! cases {
    ($($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let factory = Factory::from_env();
                kv_conformance::cases::$case(&factory).await;
            }
        )*
    };
}

cases!(
    put_get_delete_exists,
    values_are_binary_safe,
    special_characters_in_keys,
    last_index_rises_on_every_write,
    key_is_also_a_directory,
    list_is_recursive_sorted_and_path_aware,
    delete_tree_scope,
    atomic_put_create_only,
    atomic_put_compare_and_swap,
    atomic_delete_outcomes,
    cas_race_loses_no_update,
    invalid_keys_are_rejected,
    oversized_values_are_rejected,
    ttl_expires_for_every_reader,
    ttl_range_is_checked,
    watch_reports_every_change,
    watch_missing_key,
    watch_sees_expiry,
    watch_burst_ends_on_final_value,
    watch_tree_snapshots,
    watch_tree_missing_directory_and_expiry,
    dropping_a_watch_stops_its_task,
    lock_unlock_relock,
    lock_waits_for_release,
    lock_renewal_keeps_it_held,
    lock_contenders_never_overlap,
    lock_lost_when_key_deleted,
    close_releases_everything,
    capabilities_are_honest,
);
