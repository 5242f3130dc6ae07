//! # kv-dynamodb
//!
//! (documentation below)

mod config;
mod item;
mod lock;
mod store;
mod table;
mod watch;

pub use config::{Config, Credentials, TlsConfig, WatchMode};
pub use store::DynamoStore;
