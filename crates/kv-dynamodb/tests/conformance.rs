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
        let var = |name: &str, default: &str| std::env::var(name).unwrap_or_else(|_| default.to_owned());
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

// WORKAROUND: `kv_conformance::conformance_tests!` does not compile at kv-conformance
// de4d450 (its `crate = "$crate::__private::tokio"` is a string, where `$crate` is not
// substituted). The same case list is expanded here, and `case_list_matches_the_suite`
// fails as soon as the suite's list changes, so nothing can be skipped silently.
macro_rules! local_cases {
    ($($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let factory = Factory::from_env();
                kv_conformance::cases::$case(&factory).await;
            }
        )*
        const LOCAL_CASES: &[&str] = &[$(stringify!($case)),*];
    };
}

#[test]
fn case_list_matches_the_suite() {
    let source = include_str!("../../kv-conformance/src/lib.rs");
    let start = source.find("@cases $factory;").expect("the macro's case list") + 16;
    let end = start + source[start..].find(");").expect("end of the case list");
    let suite: Vec<&str> = source[start..end]
        .split(',')
        .map(str::trim)
        .filter(|name| !name.is_empty())
        .collect();
    assert_eq!(suite, LOCAL_CASES, "update the case list in this file");
}
local_cases!(
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
