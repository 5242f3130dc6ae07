//! The embedded store's on-disk layout as plain redb sees it, shared by the test binaries:
//! the tables of today's layout, and a writer of the two-table layout of earlier builds.
#![allow(dead_code)]

use std::path::Path;

pub const ENTRIES: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("kv/entries");
pub const EXPIRY: redb::TableDefinition<&[u8], ()> = redb::TableDefinition::new("kv/expiry");
pub const STATE: redb::TableDefinition<&str, u64> = redb::TableDefinition::new("kv/state");
/// The two tables of the layout before kv/entries.
pub const OLD_DATA: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("kv/data");
pub const OLD_META: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("kv/meta");

pub fn be(raw: &[u8]) -> u64 {
    u64::from_be_bytes(raw.try_into().unwrap())
}

/// Writes a database in the two-table layout of earlier builds, as they did: values in
/// kv/data, `last_index` ‖ deadline in kv/meta, the TTL index and the commit counter.
pub fn write_two_table_layout(file: &Path, keys: &[(&str, &[u8], u64, u64)], seq: u64) {
    let db = redb::Database::create(file).unwrap();
    let txn = db.begin_write().unwrap();
    {
        let mut data = txn.open_table(OLD_DATA).unwrap();
        let mut meta = txn.open_table(OLD_META).unwrap();
        let mut expiry = txn.open_table(EXPIRY).unwrap();
        let mut state = txn.open_table(STATE).unwrap();
        for (key, value, index, deadline) in keys {
            data.insert(*key, *value).unwrap();
            let mut header = index.to_be_bytes().to_vec();
            header.extend_from_slice(&deadline.to_be_bytes());
            meta.insert(*key, header.as_slice()).unwrap();
            if *deadline != 0 {
                let mut index_key = deadline.to_be_bytes().to_vec();
                index_key.extend_from_slice(key.as_bytes());
                expiry.insert(index_key.as_slice(), ()).unwrap();
            }
        }
        state.insert("seq", seq).unwrap();
    }
    txn.commit().unwrap();
}

/// Whether the database file still holds a table of the two-table layout.
pub fn has_old_tables(file: &Path) -> bool {
    use redb::{ReadableDatabase, TableHandle};
    let db = redb::Database::open(file).unwrap();
    let tables: Vec<String> = db
        .begin_read()
        .unwrap()
        .list_tables()
        .unwrap()
        .map(|t| t.name().to_owned())
        .collect();
    tables.iter().any(|t| t == "kv/data" || t == "kv/meta")
}
