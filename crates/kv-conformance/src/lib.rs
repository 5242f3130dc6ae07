//! # kv-conformance: the contract of `kv-core`, executable
//!
//! Every case is a public async function taking a [`StoreFactory`], which yields independent
//! handles (own connection, own session) to one live store. Cases work under their own unique
//! key prefix, so all of them run in parallel against one server. The
//! [`conformance_tests!`] macro expands every case into one `#[tokio::test]` for a backend.
//!
//! ## Running the suite on your own backend
//!
//! 1. Add `kv-conformance` (and `async-trait`) as dev-dependencies of your backend crate.
//! 2. Implement [`StoreFactory`]: every `connect()` returns a new, independent handle (its own
//!    connection, session, background tasks) to ONE store, as a second process would. Read the
//!    server address from an environment variable and panic with a clear message when it is
//!    missing: a conformance run must fail, never skip, without its server.
//! 3. Expand the cases with [`conformance_tests!`] in an integration test file
//!    (`tests/conformance.rs`); each case becomes one `#[test]` on its own multi-threaded tokio
//!    runtime, so `cargo test` runs them in parallel and reports them one by one.
//! 4. Declare honest [`Capabilities`](kv_core::Capabilities): the cases read them (TTL bounds,
//!    size limits) and check that every capability you declare unsupported really returns
//!    `NotSupported`.
//!
//! This example is compiled with the crate's tests; it is how `kv-bolt` runs the suite:
//!
//! ```no_run
//! use std::sync::Arc;
//!
//! use kv_bolt::{BoltStore, Config};
//! use kv_conformance::StoreFactory;
//! use kv_core::{Result, Store};
//! use tokio::sync::OnceCell;
//!
//! /// One temporary database per test, and independent handles on it.
//! struct Factory(OnceCell<BoltStore>);
//!
//! #[async_trait::async_trait]
//! impl StoreFactory for Factory {
//!     async fn connect(&self) -> Result<Arc<dyn Store>> {
//!         let root = self.0.get_or_try_init(|| BoltStore::open(Config::temporary())).await?;
//!         Ok(Arc::new(root.handle()?))
//!     }
//! }
//!
//! kv_conformance::conformance_tests!(Factory(OnceCell::new()));
//! # fn main() {}
//! ```

use std::sync::Arc;

use async_trait::async_trait;
use kv_core::{Result, Store};

pub mod cases;
pub mod support;

#[doc(hidden)]
pub mod __private {
    /// The runtime each generated test runs on: multi-threaded, like a real service.
    pub fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("cannot start a tokio runtime")
    }
}

/// Yields independent handles to one store: each call opens a new connection or session,
/// as a second process would.
#[async_trait]
pub trait StoreFactory: Send + Sync + 'static {
    /// A new handle to the same store.
    async fn connect(&self) -> Result<Arc<dyn Store>>;
}

/// Expands into one `#[tokio::test]` per conformance case, each building its factory with
/// `$factory` (an expression evaluated once per test). The caller needs no tokio dependency of
/// its own.
#[macro_export]
macro_rules! conformance_tests {
    ($factory:expr) => {
        $crate::conformance_tests!(@cases $factory;
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
            lock_cancelled_at_random_moments,
            unlock_cancelled_at_random_moments,
            lock_renewal_keeps_it_held,
            lock_contenders_never_overlap,
            lock_lost_when_key_deleted,
            close_releases_everything,
            capabilities_are_honest,
            txn_all_or_nothing,
            txn_commits_every_operation,
            txn_bank_transfer_keeps_the_sum,
            txn_fenced_write_refused_after_takeover,
            txn_watch_sees_one_change_per_transaction,
            txn_ttl_in_transactions,
            txn_limits_and_invalid_input,
        );
    };
    (@cases $factory:expr; $($case:ident),* $(,)?) => {
        $(
            #[test]
            fn $case() {
                $crate::__private::runtime().block_on(async {
                    let factory = $factory;
                    $crate::cases::$case(&factory).await;
                });
            }
        )*
    };
}
