//! Leader election on any kv-core store (being built).
