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

// `kv_conformance::conformance_tests!` does not compile at the moment (its
// `crate = "$crate::__private::tokio"` attribute: `$crate` is not expanded inside a string
// literal), so the same expansion is written out here, with the same case list.
macro_rules! cases {
    ($($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let factory = Factory::from_env();
                kv_conformance::cases::$case(&factory).await;
            }
        )*

        /// The cases this file runs.
        const LOCAL_CASES: &[&str] = &[$(stringify!($case)),*];
    };
}

/// Fails when the suite's macro lists cases this copy does not run (or the other way round).
#[test]
fn the_local_case_list_is_the_suites() {
    let source = include_str!("../../kv-conformance/src/lib.rs");
    let start = source
        .find("@cases $factory;")
        .expect("the case list in kv-conformance's macro")
        + "@cases $factory;".len();
    let end = start + source[start..].find(')').expect("the end of the case list");
    let suite: Vec<&str> = source[start..end]
        .split(',')
        .map(str::trim)
        .filter(|case| !case.is_empty())
        .collect();
    assert_eq!(
        LOCAL_CASES,
        suite.as_slice(),
        "update the list below from kv-conformance"
    );
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
