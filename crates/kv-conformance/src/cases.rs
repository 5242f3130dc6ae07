//! The conformance cases.

use crate::StoreFactory;

/// Put, get, exists and delete round trips.
pub async fn put_get_delete_exists(factory: &dyn StoreFactory) {
    let _ = factory;
}
