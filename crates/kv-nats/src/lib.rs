//! # kv-nats: the `kv-core` contract on NATS JetStream KV
//!
//! (crate docs: see below)

mod config;
mod lock;
mod store;
mod subject;
mod watch;

pub use config::{
    Auth, Config, ConfigBuilder, DEFAULT_BUCKET, DEFAULT_MAX_VALUE_LEN, Storage, TlsConfig,
};
pub use kv_core;
pub use store::{MAX_SUBJECT_LEN, NatsStore};
