//! # kv-conformance: the contract of `kv-core`, executable
//!
//! Every case is a public async function taking a [`StoreFactory`], which yields independent
//! handles (own connection, own session) to one live store. Cases work under their own unique
//! key prefix, so all of them run in parallel against one server. The
//! [`conformance_tests!`] macro expands every case into one `#[tokio::test]` for a backend.
//!
//! ```ignore
//! struct MyFactory;
//! #[async_trait::async_trait]
//! impl kv_conformance::StoreFactory for MyFactory {
//!     async fn connect(&self) -> kv_core::Result<std::sync::Arc<dyn kv_core::Store>> { todo!() }
//! }
//! kv_conformance::conformance_tests!(MyFactory);
//! ```

use std::sync::Arc;

use async_trait::async_trait;
use kv_core::{Result, Store};

pub mod cases;

/// Yields independent handles to one store: each call opens a new connection or session,
/// as a second process would.
#[async_trait]
pub trait StoreFactory: Send + Sync + 'static {
    /// A new handle to the same store.
    async fn connect(&self) -> Result<Arc<dyn Store>>;
}

/// Expands into one `#[tokio::test]` per conformance case, each building its factory with
/// `$factory` (an expression evaluated once per test).
#[macro_export]
macro_rules! conformance_tests {
    ($factory:expr) => {
        $crate::conformance_tests!(@cases $factory;
            put_get_delete_exists
        );
    };
    (@cases $factory:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let factory = $factory;
                $crate::cases::$case(&factory).await;
            }
        )*
    };
}
