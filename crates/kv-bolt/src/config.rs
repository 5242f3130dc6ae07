//! Configuration of an embedded database: where it lives, its namespace, durability, limits.

use std::path::{Path, PathBuf};
use std::time::Duration;

use kv_core::url::{decode_query_value, percent_decode};
use kv_core::{Error, Result};

/// When written data reaches the disk.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// Commits reach the disk at this period: a write call returns before its data is on
    /// disk, and a crash (of the process or the machine) loses the acknowledged writes of at
    /// most the last period, lock acquisitions included — so a fencing token may then be
    /// handed out twice. For caches and scratch data only.
    Periodic(Duration),
    /// Every write call returns only after its commit is on disk (`fsync`). Concurrent writes
    /// share one commit and one `fsync`, so throughput grows with concurrency. The default:
    /// an acknowledged write, lock or fencing token survives any crash, as with BoltDB.
    #[default]
    EveryWrite,
}

/// How to open an embedded database. Build it with [`Config::new`], [`Config::temporary`],
/// [`Config::builder`] or [`Config::from_url`].
///
/// ```
/// use std::time::Duration;
/// use kv_bolt::{Config, Durability};
///
/// let config = Config::builder()
///     .path("/var/lib/myapp/kv")
///     .namespace("myapp")
///     .durability(Durability::EveryWrite)
///     .timeout(Duration::from_secs(5))
///     .build()
///     .unwrap();
/// assert_eq!(config, Config::from_url("bolt:///var/lib/myapp/kv?namespace=myapp&durability=every-write&timeout_ms=5000").unwrap());
/// ```
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The database directory (created if missing; the data is the file `kv.redb` inside).
    /// `None` only for a temporary database, which is then held in memory.
    pub path: Option<PathBuf>,
    /// Delete the database's files when its last handle is closed or dropped.
    pub temporary: bool,
    /// A key prefix: every key is stored as `namespace/key` and reported relative to it.
    /// Normalised like a directory; empty = no prefix.
    pub namespace: String,
    /// When writes reach the disk.
    pub durability: Durability,
    /// redb's page cache size in bytes.
    pub cache_capacity: u64,
    /// The time limit of every call (→ [`Error::Timeout`]).
    pub timeout: Duration,
    /// How long opening waits for a database locked by another process (→
    /// [`Error::Unavailable`] after it).
    pub lock_timeout: Duration,
}

impl Config {
    /// A persistent database in directory `path`, with the defaults.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Config {
            path: Some(path.into()),
            temporary: false,
            ..Self::temporary()
        }
    }

    /// A temporary database in a fresh directory, deleted when its last handle goes. Share it
    /// between handles with [`BoltStore::handle`](crate::BoltStore::handle).
    pub fn temporary() -> Self {
        Config {
            path: None,
            temporary: true,
            namespace: String::new(),
            durability: Durability::default(),
            cache_capacity: 64 * 1024 * 1024,
            timeout: Duration::from_secs(10),
            lock_timeout: Duration::from_secs(5),
        }
    }

    /// A builder, starting from a temporary database.
    pub fn builder() -> ConfigBuilder {
        ConfigBuilder {
            config: Self::temporary(),
            explicit_temporary: None,
        }
    }

    /// Parses `bolt:///absolute/path?option=value&…`, `bolt:relative/path?…` or
    /// `bolt://memory` (a temporary database in memory); the scheme `sled:` is still accepted
    /// as an alias, for URLs written for earlier versions.
    ///
    /// Options: `namespace`, `temporary` (`true`/`false`), `durability` (`every-write` or
    /// `periodic`), `flush_every_ms`, `cache_capacity` (bytes), `timeout_ms`,
    /// `lock_timeout_ms`. Percent-escapes are decoded.
    pub fn from_url(url: &str) -> Result<Self> {
        let rest = url
            .strip_prefix("bolt:")
            .or_else(|| url.strip_prefix("sled:"))
            .ok_or_else(|| Error::Config(format!("{url:?}: expected a bolt: or sled: URL")))?;
        let (location, query) = match rest.split_once('?') {
            Some((l, q)) => (l, Some(q)),
            None => (rest, None),
        };
        let mut builder = Config::builder();
        let path = if let Some(after) = location.strip_prefix("//") {
            let (authority, path) = match after.find('/') {
                Some(i) => (&after[..i], &after[i..]),
                None => (after, ""),
            };
            match authority {
                "" | "localhost" => {}
                "memory" | "temp" | "temporary" if path.is_empty() => {}
                other => {
                    return Err(Error::Config(format!(
                        "{url:?}: unexpected host {other:?} (use bolt:///absolute/path or bolt://memory)"
                    )));
                }
            }
            path.to_owned()
        } else {
            location.to_owned()
        };
        let path = percent_decode(&path).map_err(|e| Error::Config(format!("{url:?}: {e}")))?;
        if !path.is_empty() {
            builder = builder.path(path);
        }
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let value =
                decode_query_value(value).map_err(|e| Error::Config(format!("{url:?}: {e}")))?;
            let number = |what: &str| -> Result<u64> {
                value.parse::<u64>().map_err(|_| {
                    Error::Config(format!(
                        "{url:?}: {what} must be a whole number, not {value:?}"
                    ))
                })
            };
            builder = match name {
                "namespace" | "prefix" => builder.namespace(value.clone()),
                "temporary" => builder.temporary(match value.as_str() {
                    "" | "true" | "1" | "yes" => true,
                    "false" | "0" | "no" => false,
                    other => {
                        return Err(Error::Config(format!(
                            "{url:?}: temporary must be true or false, not {other:?}"
                        )));
                    }
                }),
                "durability" => builder.durability(match value.as_str() {
                    "every-write" | "every_write" | "sync" => Durability::EveryWrite,
                    "periodic" => Durability::Periodic(Duration::from_millis(500)),
                    other => {
                        return Err(Error::Config(format!(
                            "{url:?}: durability must be every-write or periodic, not {other:?}"
                        )));
                    }
                }),
                "flush_every_ms" => {
                    builder.durability(Durability::Periodic(Duration::from_millis(number(name)?)))
                }
                "cache_capacity" => builder.cache_capacity(number(name)?),
                "timeout_ms" => builder.timeout(Duration::from_millis(number(name)?)),
                "lock_timeout_ms" => builder.lock_timeout(Duration::from_millis(number(name)?)),
                other => {
                    return Err(Error::Config(format!("{url:?}: unknown option {other:?}")));
                }
            };
        }
        builder.build()
    }

    /// The stored-key prefix of this namespace: `""` or `"namespace/"`.
    pub(crate) fn key_prefix(&self) -> String {
        kv_core::key::child_prefix(&self.namespace)
    }
}

/// Builds a [`Config`]; [`build`](Self::build) validates it.
#[derive(Debug, Clone)]
#[must_use]
pub struct ConfigBuilder {
    config: Config,
    explicit_temporary: Option<bool>,
}

impl ConfigBuilder {
    /// The database directory. Setting a path makes the database persistent unless
    /// [`temporary`](Self::temporary) says otherwise.
    pub fn path(mut self, path: impl AsRef<Path>) -> Self {
        self.config.path = Some(path.as_ref().to_path_buf());
        self
    }

    /// Delete the files when the last handle goes.
    pub fn temporary(mut self, temporary: bool) -> Self {
        self.explicit_temporary = Some(temporary);
        self
    }

    /// The key prefix namespace.
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.config.namespace = namespace.into();
        self
    }

    /// When writes reach the disk.
    pub fn durability(mut self, durability: Durability) -> Self {
        self.config.durability = durability;
        self
    }

    /// redb's page cache size in bytes.
    pub fn cache_capacity(mut self, bytes: u64) -> Self {
        self.config.cache_capacity = bytes;
        self
    }

    /// The time limit of every call.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.config.timeout = timeout;
        self
    }

    /// How long opening waits for a database locked by another process.
    pub fn lock_timeout(mut self, timeout: Duration) -> Self {
        self.config.lock_timeout = timeout;
        self
    }

    /// Validates and returns the configuration: the namespace must follow the key rules, a
    /// non-temporary database needs a path, durations must be non-zero.
    pub fn build(self) -> Result<Config> {
        let mut config = self.config;
        config.temporary = self.explicit_temporary.unwrap_or(config.path.is_none());
        if !config.temporary && config.path.is_none() {
            return Err(Error::Config(
                "a persistent bolt database needs a path".into(),
            ));
        }
        config.namespace = kv_core::key::normalize_directory(&config.namespace)
            .map_err(|e| Error::Config(format!("invalid namespace: {e}")))?;
        if config.timeout.is_zero() {
            return Err(Error::Config("timeout must be greater than zero".into()));
        }
        if let Durability::Periodic(every) = config.durability
            && every.is_zero()
        {
            return Err(Error::Config(
                "the flush period must be greater than zero".into(),
            ));
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let c = Config::from_url("bolt:///tmp/x?namespace=/app/&durability=every-write").unwrap();
        assert_eq!(c.path.as_deref(), Some(Path::new("/tmp/x")));
        assert!(!c.temporary);
        assert_eq!(c.namespace, "app");
        assert_eq!(c.durability, Durability::EveryWrite);
        let c = Config::from_url("bolt://memory").unwrap();
        assert!(c.temporary && c.path.is_none());
        let c = Config::from_url("sled:data/kv?temporary=true&timeout_ms=20&flush_every_ms=100")
            .unwrap();
        assert!(c.temporary);
        assert_eq!(c.path.as_deref(), Some(Path::new("data/kv")));
        assert_eq!(c.timeout, Duration::from_millis(20));
        assert_eq!(
            c.durability,
            Durability::Periodic(Duration::from_millis(100))
        );
        let c = Config::from_url("bolt:///a%20b").unwrap();
        assert_eq!(c.path.as_deref(), Some(Path::new("/a b")));
        for bad in [
            "redis://x",
            "bolt://host/x",
            "bolt:///x?namespace=a//b",
            "bolt:///x?nope=1",
            "bolt:///x?timeout_ms=abc",
            "bolt:///x?timeout_ms=0",
            "bolt:///x?temporary=maybe",
            "bolt:///x%zz",
        ] {
            assert!(
                matches!(Config::from_url(bad), Err(Error::Config(_))),
                "{bad} accepted"
            );
        }
        assert!(Config::builder().temporary(false).build().is_err());
    }
}
