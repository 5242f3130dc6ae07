//! # kv-zookeeper: the kv-core contract on Apache ZooKeeper
//!
//! (full documentation below is filled in later)

mod config;
mod lock;
mod store;
mod watch;

pub use config::{Config, ConfigBuilder, Credentials, TlsConfig};
pub use store::{MAX_VALUE_LEN, ZookeeperStore};
