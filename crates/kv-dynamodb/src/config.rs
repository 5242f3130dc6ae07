//! [`Config`]: where the table is, how to reach it, and how the store behaves.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use kv_core::url::{decode_query_value, percent_decode};
use kv_core::{Error, Result};

/// How the store authenticates to DynamoDB.
#[non_exhaustive]
#[derive(Clone, Default, PartialEq, Eq)]
pub enum Credentials {
    /// The usual AWS credential chain (`aws_config::defaults`): environment variables,
    /// shared profile files, web identity, ECS/EC2 instance roles, SSO…
    #[default]
    Default,
    /// Fixed credentials (DynamoDB Local, tests, or keys handed over by a secret store).
    Static {
        /// `AWS_ACCESS_KEY_ID`.
        access_key_id: String,
        /// `AWS_SECRET_ACCESS_KEY`.
        secret_access_key: String,
        /// `AWS_SESSION_TOKEN`, for temporary credentials.
        session_token: Option<String>,
    },
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credentials::Default => f.write_str("Default"),
            Credentials::Static { access_key_id, .. } => f
                .debug_struct("Static")
                .field("access_key_id", access_key_id)
                .field("secret_access_key", &"<redacted>")
                .finish_non_exhaustive(),
        }
    }
}

/// TLS settings for the HTTPS connection to the endpoint.
///
/// By default the SDK's rustls client trusts the platform's root certificates. A custom CA
/// (a private DynamoDB-compatible endpoint, a TLS-terminating proxy) can be added.
#[non_exhaustive]
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsConfig {
    /// A PEM file with extra CA certificates to trust, on top of the platform roots.
    pub ca_file: Option<PathBuf>,
}

/// How watches learn about changes.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum WatchMode {
    /// DynamoDB Streams when the table has a stream, else polling (the default).
    #[default]
    Auto,
    /// Always poll: re-read the watched key or subtree every
    /// [`Config::poll_interval`]. For tables without a stream, or when Streams are not
    /// allowed; costs one read per watch per interval.
    Poll,
}

/// Everything [`DynamoStore::connect`](crate::DynamoStore::connect) needs.
///
/// Build it with [`Config::new`] and the builder methods, or from a URL with
/// [`Config::from_url`]:
///
/// ```
/// use std::time::Duration;
/// use kv_dynamodb::Config;
///
/// let config = Config::new("my-table")
///     .endpoint("http://127.0.0.1:28000")
///     .region("us-east-1")
///     .static_credentials("key", "secret")
///     .namespace("app")
///     .request_timeout(Duration::from_secs(3))
///     .create_table(true);
/// let same = Config::from_url(
///     "dynamodb://my-table?endpoint=http://127.0.0.1:28000&region=us-east-1\
///      &access_key_id=key&secret_access_key=secret&namespace=app&request_timeout_ms=3000\
///      &create_table=true",
/// )
/// .unwrap();
/// assert_eq!(config, same);
/// ```
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The table's name (3–255 characters of `[A-Za-z0-9_.-]`).
    pub table: String,
    /// An endpoint URL overriding the regional one (DynamoDB Local, a VPC endpoint, a proxy).
    pub endpoint: Option<String>,
    /// The AWS region; `None` uses the credential chain's (`AWS_REGION`, profile…).
    pub region: Option<String>,
    /// How to authenticate.
    pub credentials: Credentials,
    /// TLS settings (for `https://` endpoints).
    pub tls: TlsConfig,
    /// A key prefix: every key of this handle lives below `namespace/` in the table, and
    /// keys are reported relative to it. Empty (the default) means no prefix.
    pub namespace: String,
    /// Limit for establishing a TCP/TLS connection.
    pub connect_timeout: Duration,
    /// Limit for one whole call, retries included ([`Error::Timeout`] beyond it). Also how
    /// long a watch goes on retrying failures that waiting does not clear (its table deleted
    /// and not created again, …) before it ends with the error.
    pub request_timeout: Duration,
    /// How many attempts the SDK makes for a retryable failure (throttling, 5xx, network).
    pub max_attempts: u32,
    /// Create the table (with its stream and TTL) if it does not exist.
    pub create_table: bool,
    /// How watches learn about changes.
    pub watch_mode: WatchMode,
    /// How often a watch polls the table's stream (or the table, in [`WatchMode::Poll`]).
    pub poll_interval: Duration,
    /// How often a waiting `lock()` retries the conditional create.
    pub lock_retry_interval: Duration,
    /// With a stream: the longest a watch goes without re-reading its key or subtree when
    /// the stream reported nothing. A bound on how stale a watch can be if its stream reader
    /// misses records or stalls (one reader on DynamoDB Local was once seen to report
    /// nothing for over 15 s, cause unknown). A re-read that finds nothing new reports
    /// nothing (the watch drops a state equal to the last). Costs one read per watch per
    /// interval.
    pub watch_resync: Duration,
    /// How long a deletion's tombstone stays before DynamoDB's TTL removes it (it carries the
    /// key's version across delete and re-create; see the crate documentation).
    pub tombstone_ttl: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            table: String::new(),
            endpoint: None,
            region: None,
            credentials: Credentials::Default,
            tls: TlsConfig::default(),
            namespace: String::new(),
            connect_timeout: Duration::from_secs(3),
            request_timeout: Duration::from_secs(10),
            max_attempts: 3,
            create_table: false,
            watch_mode: WatchMode::Auto,
            poll_interval: Duration::from_millis(250),
            lock_retry_interval: Duration::from_millis(200),
            watch_resync: Duration::from_secs(5),
            tombstone_ttl: Duration::from_secs(24 * 3600),
        }
    }
}

impl Config {
    /// A configuration for `table` with the defaults: the usual credential chain and region,
    /// the regional endpoint, no namespace, no table creation.
    pub fn new(table: impl Into<String>) -> Self {
        Config {
            table: table.into(),
            ..Config::default()
        }
    }

    /// Overrides the endpoint URL (e.g. `http://127.0.0.1:28000` for DynamoDB Local).
    pub fn endpoint(mut self, endpoint: impl Into<String>) -> Self {
        self.endpoint = Some(endpoint.into());
        self
    }

    /// Sets the region.
    pub fn region(mut self, region: impl Into<String>) -> Self {
        self.region = Some(region.into());
        self
    }

    /// Uses fixed credentials instead of the credential chain.
    pub fn static_credentials(
        mut self,
        access_key_id: impl Into<String>,
        secret_access_key: impl Into<String>,
    ) -> Self {
        self.credentials = Credentials::Static {
            access_key_id: access_key_id.into(),
            secret_access_key: secret_access_key.into(),
            session_token: None,
        };
        self
    }

    /// Sets the credentials.
    pub fn credentials(mut self, credentials: Credentials) -> Self {
        self.credentials = credentials;
        self
    }

    /// Sets the TLS settings.
    pub fn tls(mut self, tls: TlsConfig) -> Self {
        self.tls = tls;
        self
    }

    /// Trusts the CA certificates in this PEM file (on top of the platform roots).
    pub fn ca_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.tls.ca_file = Some(path.into());
        self
    }

    /// Sets the key namespace (a `/`-separated prefix; checked by `connect`).
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = namespace.into();
        self
    }

    /// Sets the connect timeout.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Sets the per-call timeout.
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Sets how many attempts the SDK makes (1 = no retry).
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts.max(1);
        self
    }

    /// Creates the table if missing.
    pub fn create_table(mut self, create: bool) -> Self {
        self.create_table = create;
        self
    }

    /// Sets the watch mode.
    pub fn watch_mode(mut self, mode: WatchMode) -> Self {
        self.watch_mode = mode;
        self
    }

    /// Sets the watch poll interval.
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval;
        self
    }

    /// Sets the lock retry interval.
    pub fn lock_retry_interval(mut self, interval: Duration) -> Self {
        self.lock_retry_interval = interval;
        self
    }

    /// Sets the longest a stream watch goes without re-reading ([`Config::watch_resync`]).
    pub fn watch_resync(mut self, interval: Duration) -> Self {
        self.watch_resync = interval;
        self
    }

    /// Sets how long tombstones are kept.
    pub fn tombstone_ttl(mut self, ttl: Duration) -> Self {
        self.tombstone_ttl = ttl;
        self
    }

    /// Parses `dynamodb://TABLE?param=value&…`.
    ///
    /// Parameters (all optional, values percent-decoded): `endpoint`, `region`,
    /// `access_key_id` + `secret_access_key` (+ `session_token`), `namespace`, `ca_file`,
    /// `connect_timeout_ms`, `request_timeout_ms`, `max_attempts`, `create_table`
    /// (`true`/`false`), `watch` (`auto`/`poll`), `poll_interval_ms`,
    /// `lock_retry_interval_ms`, `watch_resync_ms`, `tombstone_ttl_s`. Unknown parameters are an error.
    pub fn from_url(url: &str) -> Result<Self> {
        let rest = url
            .strip_prefix("dynamodb://")
            .ok_or_else(|| Error::Config(format!("{url:?}: expected a dynamodb:// URL")))?;
        let (table, query) = match rest.split_once('?') {
            Some((table, query)) => (table, query),
            None => (rest, ""),
        };
        let table = percent_decode(table.trim_end_matches('/')).map_err(Error::Config)?;
        if table.is_empty() {
            return Err(Error::Config(format!("{url:?}: the table name is missing")));
        }
        let mut config = Config::new(table);
        let mut access_key = None;
        let mut secret_key = None;
        let mut token = None;
        for param in query.split('&').filter(|p| !p.is_empty()) {
            let (name, value) = param.split_once('=').unwrap_or((param, ""));
            let value = decode_query_value(value).map_err(Error::Config)?;
            let millis = |value: &str| -> Result<Duration> {
                value
                    .parse::<u64>()
                    .map(Duration::from_millis)
                    .map_err(|_| Error::Config(format!("{name}={value:?} is not a number")))
            };
            match name {
                "endpoint" => config.endpoint = Some(value),
                "region" => config.region = Some(value),
                "access_key_id" => access_key = Some(value),
                "secret_access_key" => secret_key = Some(value),
                "session_token" => token = Some(value),
                "namespace" | "prefix" => config.namespace = value,
                "ca_file" => config.tls.ca_file = Some(PathBuf::from(value)),
                "connect_timeout_ms" => config.connect_timeout = millis(&value)?,
                "request_timeout_ms" => config.request_timeout = millis(&value)?,
                "poll_interval_ms" => config.poll_interval = millis(&value)?,
                "lock_retry_interval_ms" => config.lock_retry_interval = millis(&value)?,
                "watch_resync_ms" => config.watch_resync = millis(&value)?,
                "tombstone_ttl_s" => {
                    config.tombstone_ttl = Duration::from_secs(value.parse().map_err(|_| {
                        Error::Config(format!("tombstone_ttl_s={value:?} is not a number"))
                    })?)
                }
                "max_attempts" => {
                    config.max_attempts = value
                        .parse::<u32>()
                        .map_err(|_| {
                            Error::Config(format!("max_attempts={value:?} is not a number"))
                        })?
                        .max(1)
                }
                "create_table" => {
                    config.create_table = match value.as_str() {
                        "true" | "1" | "" => true,
                        "false" | "0" => false,
                        _ => {
                            return Err(Error::Config(format!(
                                "create_table={value:?}: expected true or false"
                            )));
                        }
                    }
                }
                "watch" => {
                    config.watch_mode = match value.as_str() {
                        "auto" | "streams" => WatchMode::Auto,
                        "poll" => WatchMode::Poll,
                        _ => {
                            return Err(Error::Config(format!(
                                "watch={value:?}: expected auto or poll"
                            )));
                        }
                    }
                }
                _ => return Err(Error::Config(format!("unknown URL parameter {name:?}"))),
            }
        }
        match (access_key, secret_key) {
            (Some(access_key_id), Some(secret_access_key)) => {
                config.credentials = Credentials::Static {
                    access_key_id,
                    secret_access_key,
                    session_token: token,
                }
            }
            (None, None) if token.is_none() => {}
            _ => {
                return Err(Error::Config(
                    "access_key_id and secret_access_key must be given together".into(),
                ));
            }
        }
        Ok(config)
    }

    /// Checks what can be checked without a server.
    pub(crate) fn validate(&self) -> Result<()> {
        let name_ok = (3..=255).contains(&self.table.len())
            && self
                .table
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.');
        if !name_ok {
            return Err(Error::Config(format!(
                "table name {:?}: 3 to 255 characters of A-Z a-z 0-9 _ - . expected",
                self.table
            )));
        }
        if self.request_timeout.is_zero() || self.connect_timeout.is_zero() {
            return Err(Error::Config("timeouts must be positive".into()));
        }
        if self.poll_interval.is_zero()
            || self.lock_retry_interval.is_zero()
            || self.watch_resync.is_zero()
        {
            return Err(Error::Config("poll intervals must be positive".into()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls() {
        let c = Config::from_url(
            "dynamodb://t_1?endpoint=http%3A%2F%2F127.0.0.1%3A28000&region=us-east-1&watch=poll\
             &poll_interval_ms=100&max_attempts=1&create_table&watch_resync_ms=1500",
        )
        .unwrap();
        assert_eq!(c.watch_resync, Duration::from_millis(1500));
        assert_eq!(c.table, "t_1");
        assert_eq!(c.endpoint.as_deref(), Some("http://127.0.0.1:28000"));
        assert_eq!(c.watch_mode, WatchMode::Poll);
        assert_eq!(c.poll_interval, Duration::from_millis(100));
        assert_eq!(c.max_attempts, 1);
        assert!(c.create_table);
        assert!(Config::from_url("redis://x").is_err());
        assert!(Config::from_url("dynamodb://?region=x").is_err());
        assert!(Config::from_url("dynamodb://tbl?bogus=1").is_err());
        assert!(Config::from_url("dynamodb://tbl?access_key_id=a").is_err());
        assert!(Config::new("ab").validate().is_err());
        assert!(Config::new("a b c").validate().is_err());
        assert!(Config::new("abc").validate().is_ok());
    }

    #[test]
    fn debug_hides_the_secret() {
        let c = Config::new("tbl").static_credentials("AKID", "very-secret");
        let text = format!("{c:?}");
        assert!(text.contains("AKID"));
        assert!(!text.contains("very-secret"));
    }
}
