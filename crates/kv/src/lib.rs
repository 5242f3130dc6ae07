//! # kv: one entry point, the store chosen at run time
//!
//! [`connect`] turns a URL — read from a configuration file, a flag or an environment
//! variable — into an [`Arc<dyn Store>`](Store). The URL's scheme picks the backend; the whole
//! URL then goes, unchanged, to that backend's own `Config::from_url`, so every option the
//! backend's URL accepts (namespace, TLS files, credentials, timeouts) works here too.
//!
//! ```no_run
//! # async fn demo() -> kv::Result<()> {
//! use kv::{ReadOptions, WriteOptions};
//!
//! let store = kv::connect("etcd://127.0.0.1:2379/app?request_timeout=2s").await?;
//! store.put("config/port", "8080".into(), WriteOptions::default()).await?;
//! let pair = store.get("config/port", ReadOptions::default()).await?;
//! # let _ = pair;
//! // Or: $KV_STORE, else an embedded database in ./.kv
//! let store = kv::connect_from_env().await?;
//! # let _ = store;
//! # Ok(())
//! # }
//! ```
//!
//! ## Schemes and cargo features
//!
//! One cargo feature per backend; `bolt` (the embedded store) is on by default and `full`
//! turns every backend on. A URL whose backend's feature is off is an [`Error::Config`]
//! naming the feature to enable, never a panic. [`schemes`] lists what this build accepts,
//! [`all_schemes`] every scheme with its backend and feature.
//!
//! | scheme | backend crate | feature |
//! | --- | --- | --- |
//! | `etcd://`, `etcds://` | `kv-etcd` | `etcd` |
//! | `consul://`, `consul+https://` | `kv-consul` | `consul` |
//! | `zookeeper://`, `zk://`, `zookeeper+tls://`, `zks://` | `kv-zookeeper` | `zookeeper` |
//! | `redis://`, `rediss://`, `redis+sentinel://`, `rediss+sentinel://`, `redis+cluster://`, `rediss+cluster://` | `kv-redis` | `redis` |
//! | `dynamodb://` | `kv-dynamodb` | `dynamodb` |
//! | `nats://`, `tls://` | `kv-nats` | `nats` |
//! | `bolt:`, `sled:` | `kv-bolt` | `bolt` |
//!
//! `http://` and `https://`, which `kv-etcd` and `kv-consul` both accept on their own, are
//! refused here because they do not say which store is meant. The options of every scheme are
//! in the crate's `SCHEMES.md`, generated from the backends' `Config::from_url` docs.
//!
//! ## The contract
//!
//! Everything an application needs from `kv-core` is re-exported ([`Store`], [`Error`],
//! [`KvPair`], [`Transaction`], …), and the backend crates of the enabled features are
//! re-exported as `kv::etcd`, `kv::consul`, `kv::zookeeper`, `kv::redis`, `kv::bolt`,
//! `kv::dynamodb` and `kv::nats` for their typed `Config` builders. An application that wants one backend only can keep
//! depending on that crate alone.

#![warn(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

use std::sync::Arc;

pub use kv_core;
pub use kv_core::{
    Bytes, Capabilities, Condition, ConditionFailure, Error, KvPair, Lock, LockLease, LockOptions,
    LockState, Operation, ReadOptions, Result, Store, Transaction, WatchStream, WatchTreeStream,
    WriteOptions,
};

/// The etcd v3 backend (`kv-etcd`), for its typed [`Config`](kv_etcd::Config).
#[cfg(feature = "etcd")]
pub use kv_etcd as etcd;

/// The Consul backend (`kv-consul`), for its typed [`Config`](kv_consul::Config).
#[cfg(feature = "consul")]
pub use kv_consul as consul;

/// The ZooKeeper backend (`kv-zookeeper`), for its typed [`Config`](kv_zookeeper::Config).
#[cfg(feature = "zookeeper")]
pub use kv_zookeeper as zookeeper;

/// The Redis backend (`kv-redis`), for its typed [`Config`](kv_redis::Config).
#[cfg(feature = "redis")]
pub use kv_redis as redis;

/// The NATS JetStream KV backend (`kv-nats`), for its typed [`Config`](kv_nats::Config).
#[cfg(feature = "nats")]
pub use kv_nats as nats;

/// The embedded backend on redb (`kv-bolt`), for its typed [`Config`](kv_bolt::Config).
#[cfg(feature = "bolt")]
pub use kv_bolt as bolt;

/// The DynamoDB backend (`kv-dynamodb`), for its typed [`Config`](kv_dynamodb::Config).
#[cfg(feature = "dynamodb")]
pub use kv_dynamodb as dynamodb;

/// The environment variable [`connect_from_env`] reads.
pub const STORE_ENV: &str = "KV_STORE";

/// The embedded store [`connect_from_env`] opens when [`STORE_ENV`] is unset: a database in
/// the folder `.kv` of the current directory.
pub const DEFAULT_STORE_URL: &str = "bolt:.kv";

/// One URL scheme: which backend serves it and which cargo feature of this crate compiles
/// that backend in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scheme {
    /// The scheme, lower case, without `:` (`"etcds"`, `"redis+sentinel"`).
    pub scheme: &'static str,
    /// The backend's name, as in [`Capabilities::backend`] (`"etcd"`, `"bolt"`…).
    pub backend: &'static str,
    /// The backend crate (`"kv-etcd"`).
    pub crate_name: &'static str,
    /// The cargo feature of this crate that enables the backend.
    pub feature: &'static str,
    /// Whether that feature is on in this build.
    pub enabled: bool,
}

macro_rules! scheme {
    ($scheme:literal, $backend:literal) => {
        Scheme {
            scheme: $scheme,
            backend: $backend,
            crate_name: concat!("kv-", $backend),
            feature: $backend,
            enabled: cfg!(feature = $backend),
        }
    };
}

const SCHEMES: &[Scheme] = &[
    scheme!("etcd", "etcd"),
    scheme!("etcds", "etcd"),
    scheme!("consul", "consul"),
    scheme!("consul+https", "consul"),
    scheme!("zookeeper", "zookeeper"),
    scheme!("zk", "zookeeper"),
    scheme!("zookeeper+tls", "zookeeper"),
    scheme!("zks", "zookeeper"),
    scheme!("redis", "redis"),
    scheme!("rediss", "redis"),
    scheme!("redis+sentinel", "redis"),
    scheme!("rediss+sentinel", "redis"),
    scheme!("redis+cluster", "redis"),
    scheme!("rediss+cluster", "redis"),
    scheme!("dynamodb", "dynamodb"),
    scheme!("nats", "nats"),
    scheme!("tls", "nats"),
    scheme!("bolt", "bolt"),
    scheme!("sled", "bolt"),
];

/// Every scheme [`connect`] knows, whether or not its backend is compiled in (see
/// [`Scheme::enabled`]).
pub fn all_schemes() -> &'static [Scheme] {
    SCHEMES
}

/// The schemes this build accepts: those whose backend feature is enabled.
///
/// ```
/// // `bolt` is a default feature.
/// assert!(kv::schemes().contains(&"bolt"));
/// ```
pub fn schemes() -> Vec<&'static str> {
    SCHEMES
        .iter()
        .filter(|s| s.enabled)
        .map(|s| s.scheme)
        .collect()
}

/// The [`Scheme`] a URL names, or the [`Error::Config`] [`connect`] would return for a
/// malformed URL or an unknown scheme. Says nothing about whether the backend is compiled in
/// (see [`Scheme::enabled`]).
///
/// ```
/// assert_eq!(kv::scheme_of("etcds://10.0.0.1:2379").unwrap().backend, "etcd");
/// assert!(matches!(kv::scheme_of("ftp://x"), Err(kv::Error::Config(_))));
/// ```
pub fn scheme_of(url: &str) -> Result<&'static Scheme> {
    let url = url.trim();
    let Some((name, _)) = url.split_once(':') else {
        return Err(Error::Config(format!(
            "malformed store URL {url:?}: expected scheme://… or bolt:path (schemes: {})",
            known_list()
        )));
    };
    let valid = name.starts_with(|c: char| c.is_ascii_alphabetic())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    if !valid {
        return Err(Error::Config(format!(
            "malformed store URL {url:?}: {name:?} is not a URL scheme"
        )));
    }
    let lower = name.to_ascii_lowercase();
    if lower == "http" || lower == "https" {
        return Err(Error::Config(format!(
            "ambiguous store URL {url:?}: {lower}:// could be etcd or Consul; write etcd://, \
             etcds://, consul:// or consul+https://"
        )));
    }
    SCHEMES.iter().find(|s| s.scheme == lower).ok_or_else(|| {
        Error::Config(format!(
            "unknown store URL scheme {name:?} in {url:?} (known: {})",
            known_list()
        ))
    })
}

fn known_list() -> String {
    SCHEMES
        .iter()
        .map(|s| s.scheme)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Connects to the store `url` names and returns it as a shared [`Store`].
///
/// The scheme picks the backend ([`all_schemes`]); the URL is then parsed by that backend's
/// own `Config::from_url` and the store opened with its `connect`. Errors:
///
/// * [`Error::Config`] for a malformed URL, an unknown scheme, a scheme whose backend feature
///   is off (the message names the feature), or options the backend rejects;
/// * whatever the backend's `connect` returns: [`Error::Unavailable`] or [`Error::Timeout`]
///   for a server that cannot be reached, [`Error::PermissionDenied`] for wrong credentials…
pub async fn connect(url: &str) -> Result<Arc<dyn Store>> {
    let scheme = scheme_of(url)?;
    ensure_enabled(scheme)?;
    let url = url.trim();
    let store: Arc<dyn Store> = match scheme.backend {
        #[cfg(feature = "etcd")]
        "etcd" => Arc::new(kv_etcd::EtcdStore::connect(kv_etcd::Config::from_url(url)?).await?),
        #[cfg(feature = "consul")]
        "consul" => {
            Arc::new(kv_consul::ConsulStore::connect(kv_consul::Config::from_url(url)?).await?)
        }
        #[cfg(feature = "zookeeper")]
        "zookeeper" => Arc::new(
            kv_zookeeper::ZookeeperStore::connect(kv_zookeeper::Config::from_url(url)?).await?,
        ),
        #[cfg(feature = "redis")]
        "redis" => Arc::new(kv_redis::RedisStore::connect(kv_redis::Config::from_url(url)?).await?),
        #[cfg(feature = "bolt")]
        "bolt" => Arc::new(kv_bolt::BoltStore::open(kv_bolt::Config::from_url(url)?).await?),
        #[cfg(feature = "dynamodb")]
        "dynamodb" => {
            Arc::new(kv_dynamodb::DynamoStore::connect(kv_dynamodb::Config::from_url(url)?).await?)
        }
        #[cfg(feature = "nats")]
        "nats" => Arc::new(kv_nats::NatsStore::connect(kv_nats::Config::from_url(url)?).await?),
        other => {
            return Err(Error::Config(format!(
                "the {other} backend is not compiled in"
            )));
        }
    };
    Ok(store)
}

/// `Ok` when `scheme`'s backend is compiled in, else the [`Error::Config`] naming the feature
/// to enable.
fn ensure_enabled(scheme: &Scheme) -> Result<()> {
    if scheme.enabled {
        return Ok(());
    }
    Err(Error::Config(format!(
        "the {} backend is not compiled in: enable the cargo feature \"{}\" of the kv crate \
         (or \"full\") to use {}: URLs",
        scheme.backend, scheme.feature, scheme.scheme
    )))
}

/// The URL [`connect_from_env`] uses: `$KV_STORE` when set and not empty, else
/// [`DEFAULT_STORE_URL`] (an embedded database in `./.kv`).
pub fn url_from_env() -> String {
    std::env::var(STORE_ENV)
        .ok()
        .filter(|v| !v.trim().is_empty())
        .unwrap_or_else(|| DEFAULT_STORE_URL.to_owned())
}

/// Connects to the store named by `$KV_STORE`, or, when it is unset, to an embedded database
/// in the folder `.kv` of the current directory (created if missing; needs the `bolt`
/// feature, a default one). The embedded store admits one process per database at a time.
pub async fn connect_from_env() -> Result<Arc<dyn Store>> {
    connect(&url_from_env()).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scheme_lookup() {
        assert_eq!(scheme_of("ZK://h:1").unwrap().backend, "zookeeper");
        assert_eq!(scheme_of("bolt:.kv").unwrap().backend, "bolt");
        assert_eq!(scheme_of("rediss+sentinel://h/s").unwrap().backend, "redis");
        for bad in ["", "localhost", "1abc://x", "a b://x", "/tmp/x"] {
            assert!(matches!(scheme_of(bad), Err(Error::Config(_))), "{bad}");
        }
        let Err(Error::Config(message)) = scheme_of("http://127.0.0.1:2379") else {
            panic!("http accepted")
        };
        assert!(message.contains("ambiguous"), "{message}");
        let Err(Error::Config(message)) = scheme_of("mongodb://x") else {
            panic!("mongodb accepted")
        };
        assert!(message.contains("unknown"), "{message}");
    }

    /// The check `connect` makes, on a scheme whose feature is off (with `--all-features`
    /// none is; `tests/features.rs` runs the real call in a build without them).
    #[test]
    fn a_disabled_feature_is_a_config_error_naming_it() {
        let off = Scheme {
            enabled: false,
            ..*scheme_of("etcds://h:1").unwrap()
        };
        let Err(Error::Config(message)) = ensure_enabled(&off) else {
            panic!("a disabled backend was accepted")
        };
        assert!(message.contains("feature \"etcd\""), "{message}");
    }

    #[test]
    fn every_backend_has_a_feature_and_the_list_is_consistent() {
        for s in all_schemes() {
            assert_eq!(s.feature, s.backend);
            assert_eq!(s.crate_name, format!("kv-{}", s.backend));
            assert_eq!(schemes().contains(&s.scheme), s.enabled);
        }
    }
}
